//! Resumable uploads' bytes in the bucket ([`PartStore`]): a multipart
//! upload on the claimed object key, opened when the upload is created,
//! and incomplete-part objects at `<prefix>/uploads/<id>/<random>` (outside
//! the listing of objects, which does not descend), a new name per write. The upload's
//! row in the index holds the multipart id and the parts' ETags, so that
//! any replica goes on with it; no staging marker is written (the row is
//! the record, and the upload reclaimer aborts expired ones).

use std::sync::Arc;
use std::time::SystemTime;

use futures_util::StreamExt;

use bytes::Bytes;
use ferry_proto::Sha256;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::errors::store_error;
use super::staging::{kib, Held};
use super::{Inner, S3Objects};
use crate::store::objects::{ObjFut, PartStore, Staged, StoreError};

/// Where the incomplete-part objects are, under the prefix.
const UPLOADS: &str = "uploads";

impl Inner {
    fn tail_key(&self, upload: &str) -> Path {
        self.key(&format!("{UPLOADS}/{upload}"))
    }
}

/// What a [`Staged`] resumable upload holds: completed by `persist`.
pub struct Resumed {
    pub key: Path,
    pub multipart: String,
    pub parts: Vec<String>,
}

impl Resumed {
    /// Completes the upload. An object already under the key holds the
    /// same verified bytes (its key is their digest): the upload is aborted
    /// instead of overwriting it. S3 forgets an upload once it is
    /// completed: one it no longer knows whose object is there with the
    /// right size was completed by an earlier attempt whose commit failed.
    /// After completing, the object's size is checked: a wrong one is a
    /// broken invariant, reported, never acknowledged.
    pub async fn complete(self, inner: &Inner, size: u64) -> Result<(), StoreError> {
        let at = inner.locator(&self.key);
        if let Some(there) = object_size(inner, &self.key, &at).await? {
            if there == size {
                if let Err(e) = inner.s3.abort_multipart(&self.key, &self.multipart).await {
                    tracing::warn!(error = %e, object = at, "cannot abort a resumable upload whose object is already stored");
                }
                return Ok(());
            }
        }
        let parts = self
            .parts
            .into_iter()
            .map(|content_id| PartId { content_id })
            .collect();
        match inner
            .s3
            .complete_multipart(&self.key, &self.multipart, parts)
            .await
        {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_error("complete multipart upload", &at, e)),
        }
        match object_size(inner, &self.key, &at).await? {
            Some(there) if there == size => Ok(()),
            there => Err(super::invariant(
                "complete multipart upload",
                &at,
                &format!("the object has {there:?} bytes where the upload has {size}"),
            )),
        }
    }
}

/// The size of the object at `key`, `None` when there is none.
async fn object_size(inner: &Inner, key: &Path, at: &str) -> Result<Option<u64>, StoreError> {
    match inner.s3.head(key).await {
        Ok(meta) => Ok(Some(meta.size)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(store_error("head", at, e)),
    }
}

impl PartStore for S3Objects {
    fn part_size(&self) -> u64 {
        self.inner.part_size
    }

    fn buffer(&self, bytes: u64) -> ObjFut<'_, Box<dyn std::any::Any + Send>> {
        Box::pin(async move {
            let at = super::describe(&self.inner.bucket, &self.inner.prefix);
            let permit = super::staging::buffer_permits(&self.inner, kib(bytes), &at).await?;
            Ok(Box::new(permit) as Box<dyn std::any::Any + Send>)
        })
    }

    fn open<'a>(&'a self, claimed: &'a Sha256) -> ObjFut<'a, String> {
        Box::pin(async move {
            let key = self.inner.object_key(claimed);
            self.inner
                .s3
                .create_multipart(&key)
                .await
                .map_err(|e| store_error("create multipart upload", &self.inner.locator(&key), e))
        })
    }

    fn put_part<'a>(
        &'a self,
        claimed: &'a Sha256,
        multipart: &'a str,
        index: usize,
        data: Vec<Bytes>,
    ) -> ObjFut<'a, String> {
        Box::pin(async move {
            let key = self.inner.object_key(claimed);
            let payload: PutPayload = data.into_iter().collect();
            self.inner
                .s3
                .put_part(&key, &multipart.to_owned(), index, payload)
                .await
                .map(|p| p.content_id)
                .map_err(|e| store_error("upload part of", &self.inner.locator(&key), e))
        })
    }

    fn put_tail<'a>(&'a self, upload: &'a str, data: Vec<Bytes>) -> ObjFut<'a, String> {
        Box::pin(async move {
            let name = format!("{upload}/{}", super::staging::random_name());
            let key = self.inner.tail_key(&name);
            let payload: PutPayload = data.into_iter().collect();
            self.inner
                .s3
                .put(&key, payload)
                .await
                .map_err(|e| store_error("put", &self.inner.locator(&key), e))?;
            Ok(name)
        })
    }

    fn get_tail<'a>(&'a self, name: &'a str) -> ObjFut<'a, Bytes> {
        Box::pin(async move {
            let key = self.inner.tail_key(name);
            let at = self.inner.locator(&key);
            let got = self
                .inner
                .reader
                .get(&key)
                .await
                .map_err(|e| store_error("get", &at, e))?;
            got.bytes().await.map_err(|e| store_error("read", &at, e))
        })
    }

    fn delete_tail<'a>(&'a self, name: &'a str) -> ObjFut<'a, ()> {
        Box::pin(async move {
            let key = self.inner.tail_key(name);
            match self.inner.s3.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(store_error("delete", &self.inner.locator(&key), e)),
            }
        })
    }

    fn list_tails(&self) -> ObjFut<'_, Vec<(String, String, SystemTime)>> {
        Box::pin(async move {
            let dir = self.inner.key(UPLOADS);
            let at = self.inner.locator(&dir);
            let mut out = Vec::new();
            let mut listing = self.inner.s3.list(Some(&dir));
            while let Some(meta) = listing.next().await {
                let meta = meta.map_err(|e| store_error("list", &at, e))?;
                let mut parts = meta.location.parts().rev();
                let (Some(name), Some(upload)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let upload = upload.as_ref().to_owned();
                out.push((
                    upload.clone(),
                    format!("{upload}/{}", name.as_ref()),
                    SystemTime::from(meta.last_modified),
                ));
            }
            Ok(out)
        })
    }

    fn abort<'a>(&'a self, claimed: &'a Sha256, multipart: &'a str) -> ObjFut<'a, ()> {
        Box::pin(async move {
            let key = self.inner.object_key(claimed);
            match self
                .inner
                .s3
                .abort_multipart(&key, &multipart.to_owned())
                .await
            {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(store_error(
                    "abort multipart upload",
                    &self.inner.locator(&key),
                    e,
                )),
            }
        })
    }

    fn staged(&self, sha256: &Sha256, multipart: &str, parts: Vec<String>, size: u64) -> Staged {
        Staged {
            sha256: sha256.clone(),
            size,
            held: Box::new(Held::Resumed(Resumed {
                key: self.inner.object_key(sha256),
                multipart: multipart.to_owned(),
                parts,
            })),
        }
    }
}

/// The store as a [`PartStore`], for [`crate::store::Objects::parts`].
pub fn of(store: &S3Objects) -> Arc<dyn PartStore> {
    Arc::new(store.clone())
}
