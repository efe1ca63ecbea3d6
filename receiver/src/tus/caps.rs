//! Caps on incomplete uploads, checked at creation: an upload holds disk
//! (or bucket) space and a record until it completes or expires, so a
//! device that creates uploads and never finishes them must not be able to
//! fill the receiver.
//!
//! - Per device, `max_open_uploads_per_device`: creating one more ends the
//!   device's oldest upload that no PATCH is writing (a device only ever
//!   needs a few at once, and its newest intent wins: an agent that lost
//!   its upload record makes a new one, and is not locked out for
//!   `upload_expiry`). When every one is being written, 429.
//! - In all, `max_open_uploads`: 503 with `Retry-After`.
//! - On the local disk, the bytes every open upload still expects plus this
//!   one's must fit in the free space: 507 (the bucket has no such limit).
//!
//! The counts are read, then the upload created: two creations at once may
//! pass a cap by one each. The caps bound a hostile device, not an exact
//! number.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferry_proto::Reply;

use crate::http::upload::RETRY_AFTER_SECS;
use crate::http::{reply, AppError, SharedState};
use crate::store::uploads::shared::{self as sh, Lease};
use crate::store::OpenUploads;

/// Checks the caps for a new upload of `length` bytes by `device`, ending
/// its oldest uploads as needed.
pub async fn admit(state: &SharedState, device: &str, length: u64) -> Result<(), Response> {
    check(state, device, length).await.map_err(|e| match e {
        Refused::App(e) => e.into_response(),
        Refused::Answer(r) => r,
    })
}

/// Why a creation is refused.
enum Refused {
    App(AppError),
    /// An answer of its own status (429).
    Answer(Response),
}

impl<E: Into<AppError>> From<E> for Refused {
    fn from(e: E) -> Self {
        Refused::App(e.into())
    }
}

async fn check(state: &SharedState, device: &str, length: u64) -> Result<(), Refused> {
    let open = match &state.parts {
        Some(_) => state.index.open_uploads(device).await?,
        None => state.uploads.open_uploads(device).await?,
    };
    let max = state.config.max_open_uploads;
    if open.count >= max as u64 {
        tracing::warn!(
            device,
            open = open.count,
            "max_open_uploads reached; resumable upload refused"
        );
        return Err(Refused::App(AppError(Reply::Overloaded {
            retry_after_secs: RETRY_AFTER_SECS,
            detail: format!(
                "the receiver has {} incomplete resumable uploads (max_open_uploads); retry later",
                open.count
            ),
        })));
    }
    if state.parts.is_none() {
        let free = state.objects.free_bytes().await?;
        if let Some(free) = free.filter(|f| open.pending.saturating_add(length) > *f) {
            tracing::warn!(
                device,
                free,
                pending = open.pending,
                length,
                "no room for one more resumable upload"
            );
            return Err(Refused::App(AppError(Reply::InsufficientStorage {
                detail: "the receiver does not have space for this upload beside the incomplete ones; try again later".into(),
            })));
        }
    }
    make_room(state, device, &open).await
}

/// Ends the device's oldest uploads until one more fits under its cap.
async fn make_room(state: &SharedState, device: &str, open: &OpenUploads) -> Result<(), Refused> {
    let cap = state.config.max_open_uploads_per_device;
    let mut over = (open.device.len() + 1).saturating_sub(cap);
    for (id, _) in &open.device {
        if over == 0 {
            break;
        }
        if end_idle(state, id).await? {
            state.metrics.uploads_evicted.inc();
            tracing::info!(
                upload = id,
                device,
                "oldest resumable upload ended: max_open_uploads_per_device"
            );
            over -= 1;
        }
    }
    if over == 0 {
        return Ok(());
    }
    let mut resp = reply(Reply::Overloaded {
        retry_after_secs: RETRY_AFTER_SECS,
        detail: format!(
            "this device has {} resumable uploads being written (max_open_uploads_per_device); retry later",
            open.device.len()
        ),
    });
    *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    Err(Refused::Answer(resp))
}

/// Ends upload `id` unless a PATCH is writing it; whether it ended.
async fn end_idle(state: &SharedState, id: &str) -> Result<bool, AppError> {
    if let Some(parts) = &state.parts {
        let Ok((lease, row)) = Lease::take(&state.index, id, Duration::ZERO).await? else {
            return Ok(false);
        };
        sh::remove(&state.index, parts.as_ref(), &row).await?;
        drop(lease);
        return Ok(true);
    }
    let live = state.uploads.live(id);
    let Ok(_held) = live.try_lock() else {
        return Ok(false);
    };
    state.uploads.remove(id).await?;
    Ok(true)
}
