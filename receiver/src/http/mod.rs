//! The HTTP surface: the shared state, the router, device authentication
//! and the middleware that every answer passes (protocol header, metrics).
//! One file per route group.

pub mod admin;
pub mod device;
pub mod error;
pub mod health;
pub mod page_auth;
pub mod slots;
pub mod status_page;
pub mod upload;

#[cfg(test)]
pub(crate) mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use ferry_proto::{headers, Reply};
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::metrics::{Metrics, RouteLabels};
use crate::store::commit::Committer;
use crate::store::objects::Objects;
use crate::store::{unix_now, Index};
use crate::tokens;
pub use error::{reply, AppError};

/// A device's `last_seen_at` is written at most this often: a write per
/// request would cost a durable commit per request for a column that is
/// only read by operators.
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// Shared by every request.
pub struct AppState {
    pub config: Arc<Config>,
    pub index: Arc<dyn Index>,
    pub objects: Arc<dyn Objects>,
    pub metrics: Arc<Metrics>,
    /// One permit per upload that reads a body.
    pub upload_slots: Arc<Semaphore>,
    /// The upload slots each device holds (`max_uploads_per_device`).
    pub device_slots: slots::DeviceSlots,
    /// The admin token, read from `admin_token_file` at start; `None`
    /// disables the admin API.
    pub admin_token: Option<String>,
    /// When each device's `last_seen_at` was last written by this process.
    touched: Mutex<HashMap<String, Instant>>,
    /// The commit stage every verified upload goes through.
    pub committer: Committer,
    /// The last `/readyz` probe, reused for a second.
    pub ready_cache: health::ReadyCache,
    /// Commits answered 412, tallied until the next flush.
    pub rejections: Arc<crate::rejected::Rejections>,
    /// Bytes and episodes stored per minute, the last hour.
    pub upload_rate: crate::rate::UploadRate,
    /// Resumable (tus) uploads in progress, under `<data_dir>/uploads`
    /// (with the local object store).
    pub uploads: Arc<crate::store::uploads::Uploads>,
    /// Where resumable uploads keep their bytes when the object store
    /// keeps them (S3); their state is then in the index.
    pub parts: Option<Arc<dyn crate::store::objects::PartStore>>,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    pub fn new(
        config: Arc<Config>,
        index: Arc<dyn Index>,
        objects: Arc<dyn Objects>,
        admin_token: Option<String>,
    ) -> Self {
        let metrics = Arc::new(Metrics::new());
        let uploads = Arc::new(crate::store::uploads::Uploads::new(
            config.data_dir.join("uploads"),
        ));
        Self {
            upload_slots: Arc::new(Semaphore::new(config.max_concurrent_uploads)),
            device_slots: slots::DeviceSlots::default(),
            committer: Committer::spawn(index.clone(), objects.clone(), metrics.commit.clone()),
            config,
            index,
            parts: objects.parts(),
            objects,
            metrics,
            admin_token,
            touched: Mutex::new(HashMap::new()),
            ready_cache: health::ReadyCache::default(),
            rejections: Arc::default(),
            upload_rate: crate::rate::UploadRate::default(),
            uploads,
        }
    }

    /// Records that a device was seen, writing at most once per
    /// [`TOUCH_INTERVAL`] per device, in the background.
    fn touch(self: &Arc<Self>, device: &str) {
        let now = Instant::now();
        {
            let mut touched = self.touched.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(last) = touched.get(device) {
                if now.duration_since(*last) < TOUCH_INTERVAL {
                    return;
                }
            }
            touched.insert(device.to_owned(), now);
        }
        let state = Arc::clone(self);
        let device = device.to_owned();
        tokio::spawn(async move {
            if let Err(e) = state.index.touch_device(&device, unix_now()).await {
                tracing::warn!(device, error = %e, "cannot record last_seen_at");
            }
        });
    }
}

/// Authenticates a device from `Authorization: Bearer <token>`: 401 without
/// a token or with an unknown one, 403 when the device is revoked.
pub async fn authenticate(state: &SharedState, headers: &HeaderMap) -> Result<String, AppError> {
    let hash = token_hash(headers)?;
    let device = state.index.device_by_token_hash(&hash).await?;
    admit(state, device, &hash)
}

/// The hash of the bearer token, or 401 when there is none.
pub fn token_hash(headers: &HeaderMap) -> Result<[u8; 32], AppError> {
    if headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err(AppError::unauthenticated(
            "exactly one `Authorization: Bearer <device token>` header is allowed",
        ));
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(tokens::bearer)
        .ok_or_else(|| {
            AppError::unauthenticated(
                "an `Authorization: Bearer <device token>` header is required",
            )
        })?;
    Ok(tokens::hash(token))
}

/// 401 for a token no device has.
pub fn unknown_token() -> AppError {
    AppError::unauthenticated("unknown device token")
}

/// The device name for the device the index found for a token hash: 401
/// when none, 403 when it is revoked.
pub fn admit(
    state: &SharedState,
    device: Option<crate::store::DeviceAuth>,
    hash: &[u8; 32],
) -> Result<String, AppError> {
    let device = device
        .filter(|d| tokens::hashes_equal(&d.token_hash, hash))
        .ok_or_else(unknown_token)?;
    if device.revoked {
        return Err(AppError(Reply::Forbidden {
            detail: format!(
                "device {} is revoked; ask the operator for a new token (`ferry-receiver devices add NAME`)",
                device.name
            ),
        }));
    }
    state.touch(&device.name);
    Ok(device.name)
}

/// The whole router.
pub fn router(state: SharedState) -> Router {
    build_router(state, false)
}

/// The router of a connection in the priority tier (`crate::admission`):
/// operator routes as usual, anything else 503 `overloaded`.
pub fn priority_router(state: SharedState) -> Router {
    build_router(state, true)
}

fn build_router(state: SharedState, priority_only: bool) -> Router {
    let routes = Router::new()
        .route("/", get(status_page::page))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/v1/whoami", get(device::whoami))
        .route("/v1/commits/{commit}", get(device::commit_check))
        .route(
            "/v1/episodes/{id}",
            put(upload::put_episode).head(upload::head_episode),
        )
        .route(
            "/v1/episodes/",
            put(upload::empty_id).head(upload::empty_id),
        )
        .nest("/v1/admin", admin::router());
    // The tus routes are merged before the fallbacks, so that their 404
    // and 405 answer JSON on these routes too.
    let routes = routes
        .merge(crate::tus::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    let routes = if priority_only {
        routes.layer(middleware::from_fn(shed_unless_priority))
    } else {
        routes
    };
    routes
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// In the priority tier: only what operators and orchestrators need;
/// devices are told to come back (their agents back off and retry).
async fn shed_unless_priority(req: Request, next: Next) -> Response {
    if crate::admission::is_priority_path(req.uri().path()) {
        return next.run(req).await;
    }
    let mut resp = reply(Reply::Overloaded {
        retry_after_secs: SHED_RETRY_AFTER_SECS,
        detail: "the receiver is at its connection limit; try again later".into(),
    });
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// `Retry-After` of a request shed at the connection limit.
const SHED_RETRY_AFTER_SECS: u64 = 5;

async fn not_found() -> AppError {
    AppError::not_found("no such route")
}

async fn method_not_allowed() -> AppError {
    AppError(Reply::MethodNotAllowed {
        detail: "method not allowed on this route".into(),
    })
}

/// The `method` label of a request: one of the methods HTTP defines, or
/// `other`. A client can send any token as a method; each distinct label
/// value would be a metrics series kept for the life of the process.
fn method_label(method: &Method) -> Option<&'static str> {
    Some(match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => return None,
    })
}

/// Adds `x-ferry-protocol` to every answer and counts it by route, method
/// and status. Every label value comes from a closed set: the router's own
/// route patterns (or `unmatched`), [`method_label`], and the status codes
/// this program answers with. A method outside the closed set is answered
/// 405 here, before routing.
async fn observe(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(req.method());
    let mut resp = match method {
        Some(_) => next.run(req).await,
        None => method_not_allowed().await.into_response(),
    };
    resp.headers_mut().insert(
        headers::PROTOCOL,
        HeaderValue::from_static(headers::PROTOCOL_VERSION),
    );
    state
        .metrics
        .requests
        .get_or_create(&RouteLabels {
            route,
            method: method.unwrap_or("other").to_owned(),
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}
