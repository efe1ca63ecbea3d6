//! The S3 object store (SPEC §7): objects at `<prefix>/<sha256>` in one
//! bucket shared by every replica, through the `object_store` crate.
//!
//! - [`staging`]: an upload is hashed as it arrives; a body smaller than
//!   `part_size` is held in memory and PUT (If-None-Match: *) only once
//!   its digest matched; a larger one streams as a multipart upload to its
//!   claimed final key, completed only once its digest matched, aborted
//!   otherwise. Part buffers and small bodies count against one semaphore
//!   of `buffer_limit` bytes.
//! - [`sweep`]: a multipart upload leaves a marker under
//!   `<prefix>/staging/` for as long as it is open (object_store cannot
//!   list multipart uploads), so that a crash leaves something the sweep
//!   finds and aborts.
//! - [`client`]: the client, with timeouts and retries short enough that
//!   an outage answers 503 within seconds; [`errors`]: its errors as
//!   [`StoreError`]s.
//!
//! Nothing here deletes an object except [`Objects::delete`] (the
//! collector's, under the gate).

mod client;
mod errors;
mod parts;
mod staging;
mod sweep;
#[cfg(test)]
mod tests;

use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry_proto::Sha256;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{ByteStream, Fut, Listed, ObjFut, Objects, Staged, Staging, StoreError, Swept};
use crate::config::S3Storage;
use errors::{plain_error, store_error, timed_out};

pub use client::builder_from_env;

/// How long `/readyz`'s probe (a PUT and a DELETE) may take before the
/// store counts as unreachable.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the start may wait for the bucket to answer.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a staging waits for room in the buffers before it fails as
/// unreachable (503: the store does not take bytes as fast as they come).
const BUFFER_WAIT: Duration = Duration::from_secs(30);

/// Persists of one batch running at once.
const PERSIST_AT_ONCE: usize = 8;

/// The S3 object store; cheap to clone.
#[derive(Clone)]
pub struct S3Objects {
    inner: Arc<Inner>,
}

/// What every staging task and persist shares.
pub(crate) struct Inner {
    /// Writes, listings, HEADs (a request timeout bounds each).
    s3: AmazonS3,
    /// GETs of objects: no overall timeout (a download of a large object
    /// may take long), an idle timeout instead.
    reader: AmazonS3,
    bucket: String,
    /// Without leading or trailing `/`; may be empty.
    prefix: String,
    /// For messages: the endpoint as configured, or "AWS".
    endpoint: String,
    part_size: u64,
    /// Room for part buffers and small bodies, in KiB (see
    /// [`staging::kib`]).
    buffers: Arc<Semaphore>,
    buffer_wait: Duration,
    /// The sweep never removes staging younger than this, whatever it is
    /// asked: the markers are shared by every replica, and a replica that
    /// starts sweeps "everything before my start", which would include
    /// other replicas' live uploads. Uploads rewrite their marker while they
    /// make progress ([`staging::MARKER_REFRESH`]).
    staging_floor: Duration,
    /// Set once the store answered a conditional PUT with 501: small
    /// objects are then PUT plainly (the same verified bytes under a
    /// content-addressed key, so overwriting is harmless).
    create_unsupported: AtomicBool,
}

impl S3Objects {
    /// The store for `cfg`, with the client `builder` (credentials and
    /// defaults; see [`builder_from_env`]).
    pub fn new(
        builder: object_store::aws::AmazonS3Builder,
        cfg: &S3Storage,
    ) -> Result<Self, StoreError> {
        let describe = describe(&cfg.bucket, &cfg.prefix);
        let (s3, reader, endpoint) = client::build(builder, cfg)
            .map_err(|e| store_error("configure S3 client for", &describe, e))?;
        let kib = staging::kib(cfg.buffer_limit).min(Semaphore::MAX_PERMITS as u64) as usize;
        Ok(Self {
            inner: Arc::new(Inner {
                s3,
                reader,
                bucket: cfg.bucket.clone(),
                prefix: cfg.prefix.clone(),
                endpoint,
                part_size: cfg.part_size,
                buffers: Arc::new(Semaphore::new(kib)),
                buffer_wait: BUFFER_WAIT,
                staging_floor: crate::store::collect::STAGING_IDLE,
                create_unsupported: AtomicBool::new(false),
            }),
        })
    }

    /// Test hooks: how long a staging waits for buffer room, and the
    /// youngest staging a sweep may remove.
    #[cfg(test)]
    fn with_limits(mut self, buffer_wait: Duration, staging_floor: Duration) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("not shared yet");
        inner.buffer_wait = buffer_wait;
        inner.staging_floor = staging_floor;
        self
    }
}

fn describe(bucket: &str, prefix: &str) -> String {
    match prefix.is_empty() {
        true => format!("s3://{bucket}"),
        false => format!("s3://{bucket}/{prefix}"),
    }
}

impl Inner {
    /// `<prefix>/<rest>`, or `<rest>` without a prefix.
    fn key(&self, rest: &str) -> Path {
        match self.prefix.is_empty() {
            true => Path::from(rest),
            false => Path::from(format!("{}/{rest}", self.prefix)),
        }
    }

    fn object_key(&self, sha256: &Sha256) -> Path {
        self.key(sha256.as_str())
    }

    /// The prefix a listing of objects asks for (`<prefix>/`, or none).
    fn list_prefix(&self) -> Option<String> {
        (!self.prefix.is_empty()).then(|| format!("{}/", self.prefix))
    }

    /// `s3://bucket/key`.
    fn locator(&self, key: &Path) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// The digest an object key names, or `None` for any other key.
    fn sha_of(&self, key: &Path) -> Option<Sha256> {
        let sha = Sha256::parse(key.filename()?).ok()?;
        (self.object_key(&sha) == *key).then_some(sha)
    }

    async fn stat(&self, sha256: &Sha256) -> Result<Option<u64>, StoreError> {
        let key = self.object_key(sha256);
        match self.s3.head(&key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error("stat", &self.locator(&key), e)),
        }
    }

    async fn read(&self, sha256: &Sha256) -> Result<ByteStream, StoreError> {
        let key = self.object_key(sha256);
        let at = self.locator(&key);
        let got = self
            .reader
            .get(&key)
            .await
            .map_err(|e| store_error("read", &at, e))?;
        let stream = got
            .into_stream()
            .map_err(move |e| errors::stream_error(&at, e));
        Ok(Box::pin(stream) as ByteStream)
    }

    /// PUT then DELETE a tiny probe under the staging prefix.
    async fn check(&self) -> Result<(), StoreError> {
        let key = self.key(&format!(
            "{}/readyz-{}",
            sweep::STAGING,
            staging::random_name()
        ));
        let at = self.locator(&key);
        let probe = async {
            self.s3
                .put(&key, PutPayload::from_static(b"ok"))
                .await
                .map_err(|e| store_error("write probe", &at, e))?;
            self.s3
                .delete(&key)
                .await
                .map_err(|e| store_error("delete probe", &at, e))
        };
        tokio::time::timeout(CHECK_TIMEOUT, probe)
            .await
            .unwrap_or_else(|_| Err(timed_out("write probe", &at, CHECK_TIMEOUT.as_secs())))
    }

    /// A listing of one key: the bucket exists, answers and lets us in.
    async fn prepare(&self) -> Result<(), StoreError> {
        let at = describe(&self.bucket, &self.prefix);
        let opts = PaginatedListOptions {
            max_keys: Some(1),
            ..Default::default()
        };
        let listed = tokio::time::timeout(
            PREPARE_TIMEOUT,
            self.s3.list_paginated(self.list_prefix().as_deref(), opts),
        )
        .await
        .unwrap_or_else(|_| {
            Err(object_store::Error::Generic {
                store: "S3",
                source: format!("no answer within {} s", PREPARE_TIMEOUT.as_secs()).into(),
            })
        });
        listed.map(|_| ()).map_err(|e| {
            let kind = errors::kind_of(&e);
            plain_error(
                "reach the bucket of",
                &at,
                kind,
                format!(
                    "{e} (endpoint {}; credentials from the AWS_* environment or an instance role)",
                    self.endpoint
                ),
            )
        })
    }

    /// Up to `limit` objects after `after`, in key order: pages of the
    /// bucket's listing with `/` as delimiter, so that the staging prefix
    /// is one "common prefix" and never an object.
    async fn list(&self, after: Option<&Sha256>, limit: usize) -> Result<Vec<Listed>, StoreError> {
        let prefix = self.list_prefix();
        let at = describe(&self.bucket, &self.prefix);
        let mut out = Vec::new();
        let mut page_token = None;
        while out.len() < limit {
            let opts = PaginatedListOptions {
                offset: after.map(|a| self.object_key(a).to_string()),
                delimiter: Some("/".into()),
                max_keys: Some((limit - out.len()).min(1000)),
                page_token: page_token.take(),
                ..Default::default()
            };
            let page = self
                .s3
                .list_paginated(prefix.as_deref(), opts)
                .await
                .map_err(|e| store_error("list", &at, e))?;
            out.extend(page.result.objects.into_iter().filter_map(|meta| {
                Some(Listed {
                    sha256: self.sha_of(&meta.location)?,
                    modified: SystemTime::from(meta.last_modified),
                })
            }));
            match page.page_token {
                Some(t) => page_token = Some(t),
                None => break,
            }
        }
        // S3 lists in key order; a store that did not would still give a
        // page in order.
        out.sort_by(|a, b| a.sha256.as_str().cmp(b.sha256.as_str()));
        out.truncate(limit);
        Ok(out)
    }

    /// One bulk delete; an object already gone is deleted.
    async fn delete(&self, shas: &[Sha256]) -> Result<(), StoreError> {
        let keys: Vec<object_store::Result<Path>> =
            shas.iter().map(|s| Ok(self.object_key(s))).collect();
        let mut results = self
            .s3
            .delete_stream(futures_util::stream::iter(keys).boxed());
        let mut first = None;
        while let Some(r) = results.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    let at = describe(&self.bucket, &self.prefix);
                    tracing::warn!(error = %e, store = at, "cannot delete an object");
                    first.get_or_insert_with(|| store_error("delete objects in", &at, e));
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Objects for S3Objects {
    fn describe(&self) -> String {
        describe(&self.inner.bucket, &self.inner.prefix)
    }

    fn locator(&self, sha256: &Sha256) -> String {
        self.inner.locator(&self.inner.object_key(sha256))
    }

    fn prepare(&self) -> ObjFut<'_, ()> {
        Box::pin(self.inner.prepare())
    }

    fn upkeep(&self, _shutdown: CancellationToken) -> Fut<'_, ()> {
        Box::pin(async {})
    }

    fn begin(&self, claimed: &Sha256, length: u64) -> Staging {
        staging::begin(self.inner.clone(), claimed.clone(), length)
    }

    fn persist(&self, batch: Vec<Staged>) -> Fut<'_, Vec<Result<(), StoreError>>> {
        Box::pin(async move {
            // `buffered` keeps the batch's order.
            futures_util::stream::iter(batch)
                .map(|staged| staging::persist(&self.inner, staged))
                .buffered(PERSIST_AT_ONCE)
                .collect()
                .await
        })
    }

    fn stat<'a>(&'a self, sha256: &'a Sha256) -> ObjFut<'a, Option<u64>> {
        Box::pin(self.inner.stat(sha256))
    }

    fn read<'a>(&'a self, sha256: &'a Sha256) -> ObjFut<'a, ByteStream> {
        Box::pin(self.inner.read(sha256))
    }

    fn free_bytes(&self) -> ObjFut<'_, Option<u64>> {
        Box::pin(async { Ok(None) })
    }

    fn check(&self) -> ObjFut<'_, ()> {
        Box::pin(self.inner.check())
    }

    fn list<'a>(&'a self, after: Option<&'a Sha256>, limit: usize) -> ObjFut<'a, Vec<Listed>> {
        Box::pin(self.inner.list(after, limit))
    }

    fn delete<'a>(&'a self, shas: &'a [Sha256]) -> ObjFut<'a, ()> {
        Box::pin(self.inner.delete(shas))
    }

    fn sweep_staging(&self, before: SystemTime, shutdown: CancellationToken) -> Fut<'_, Swept> {
        Box::pin(sweep::sweep(self.inner.clone(), before, shutdown))
    }

    fn parts(&self) -> Option<Arc<dyn super::PartStore>> {
        Some(parts::of(self))
    }
}

/// An error of kind `Other` for `op` on `at` (a broken invariant).
fn invariant(op: &'static str, at: &str, detail: &str) -> StoreError {
    plain_error(op, at, io::ErrorKind::Other, detail)
}
