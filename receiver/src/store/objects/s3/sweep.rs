//! Staging markers and their sweep.
//!
//! object_store cannot list a bucket's open multipart uploads, so each one
//! is announced by a marker, `<prefix>/staging/mp-<random>`, holding its
//! key and upload id (JSON), written right after the upload is created,
//! rewritten while it makes progress, deleted once it is completed or
//! aborted. A marker left behind (a crash, a failed abort) is found by the
//! sweep once idle: the upload is aborted, the marker deleted. Probes of
//! `/readyz` (`readyz-<random>`) left by a crash are deleted too. Nothing
//! under `staging/` is an object: the listing of objects never shows it.

use std::sync::Arc;
use std::time::SystemTime;

use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt};
use tokio_util::sync::CancellationToken;

use super::errors::{plain_error, store_error};
use super::staging::{random_name, Marker};
use super::Inner;
use crate::store::objects::{StoreError, Swept};

/// The folder of staging markers under the prefix.
pub const STAGING: &str = "staging";

/// Markers looked at per page of the sweep's listing.
const PAGE: usize = 1000;

/// A new marker's key.
pub fn marker_key(inner: &Inner) -> Path {
    inner.key(&format!("{STAGING}/mp-{}", random_name()))
}

/// Aborts the upload `id` on `key` (one already gone is fine), then
/// deletes its marker.
pub async fn abort(inner: &Inner, key: &Path, id: &str, marker: &Path) -> Result<(), StoreError> {
    match inner.s3.abort_multipart(key, &id.to_owned()).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => {
            return Err(store_error(
                "abort multipart upload",
                &inner.locator(key),
                e,
            ))
        }
    }
    delete_marker(inner, marker).await
}

async fn delete_marker(inner: &Inner, marker: &Path) -> Result<(), StoreError> {
    match inner.s3.delete(marker).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(store_error("delete", &inner.locator(marker), e)),
    }
}

/// Removes staging last written before `before` (and before the store's
/// floor, see `Inner::staging_floor`), a page at a time, until the listing
/// ends or `shutdown`.
pub async fn sweep(inner: Arc<Inner>, before: SystemTime, shutdown: CancellationToken) -> Swept {
    let floor = SystemTime::now()
        .checked_sub(inner.staging_floor)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let before = before.min(floor);
    let prefix = format!("{}/", inner.key(STAGING));
    let mut swept = Swept::default();
    let mut page_token = None;
    loop {
        if shutdown.is_cancelled() {
            return swept;
        }
        let opts = PaginatedListOptions {
            max_keys: Some(PAGE),
            page_token: page_token.take(),
            ..Default::default()
        };
        let page = match inner.s3.list_paginated(Some(&prefix), opts).await {
            Ok(p) => p,
            Err(e) => {
                let e = store_error("list", &format!("s3://{}/{prefix}", inner.bucket), e);
                tracing::warn!(error = %e, "cannot list staging markers");
                swept.failed += 1;
                return swept;
            }
        };
        for meta in page.result.objects {
            if shutdown.is_cancelled() {
                return swept;
            }
            if SystemTime::from(meta.last_modified) >= before {
                continue;
            }
            match remove(&inner, &meta).await {
                Ok(true) => swept.removed += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot remove abandoned staging");
                    swept.failed += 1;
                }
            }
        }
        match page.page_token {
            Some(t) => page_token = Some(t),
            None => return swept,
        }
    }
}

/// Removes one idle staging object: a marker's upload and the marker, or
/// a probe. `false` for a key that is not ours (left alone).
async fn remove(inner: &Inner, meta: &ObjectMeta) -> Result<bool, StoreError> {
    let name = meta.location.filename().unwrap_or("");
    if name.starts_with("readyz-") {
        return delete_marker(inner, &meta.location).await.map(|()| true);
    }
    if !name.starts_with("mp-") {
        return Ok(false);
    }
    let at = inner.locator(&meta.location);
    let body = match inner.s3.get(&meta.location).await {
        Ok(got) => got.bytes().await.map_err(|e| store_error("read", &at, e))?,
        // Deleted since it was listed: its upload was completed or aborted.
        Err(object_store::Error::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(store_error("read", &at, e)),
    };
    let marker: Marker = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => {
            // Written by us but unreadable (cut short): it names nothing to
            // abort, and an upload it named is aborted by the store's
            // lifecycle rule for incomplete uploads, if any.
            tracing::warn!(marker = at, error = %e, "an unreadable staging marker; deleting it");
            return delete_marker(inner, &meta.location).await.map(|()| true);
        }
    };
    let key = Path::parse(&marker.key).map_err(|e| {
        plain_error(
            "read",
            &at,
            std::io::ErrorKind::InvalidData,
            format!("the marker names an invalid key: {e}"),
        )
    })?;
    abort(inner, &key, &marker.upload_id, &meta.location).await?;
    tracing::info!(key = %key, marker = at, "aborted an abandoned multipart upload");
    Ok(true)
}
