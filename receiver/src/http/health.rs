//! `GET /healthz` (the process answers; touches no storage), `GET /readyz`
//! (the index answers a query and the storage takes a write) and
//! `GET /metrics` (Prometheus text format).

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_proto::reply::{Health, HealthStatus};

use super::SharedState;

pub async fn healthz() -> Response {
    Json(Health::new(HealthStatus::Ok)).into_response()
}

/// How long a readiness probe's result is reused. `/readyz` needs no
/// token and its probe writes and syncs a file: probes more often than
/// this, from anyone, cost nothing more.
const READY_PROBE_TTL: Duration = Duration::from_secs(1);

/// The last readiness probe and when it ran; one probe runs at a time and
/// concurrent requests share its result.
#[derive(Default)]
pub struct ReadyCache(tokio::sync::Mutex<Option<(Instant, Vec<&'static str>)>>);

async fn ready_problems(state: &SharedState) -> Vec<&'static str> {
    let mut last = state.ready_cache.0.lock().await;
    if let Some((at, problems)) = &*last {
        if at.elapsed() < READY_PROBE_TTL {
            return problems.clone();
        }
    }
    let mut problems = Vec::new();
    if let Err(e) = state.index.ping().await {
        tracing::warn!(error = %e, "readyz: index not usable");
        problems.push("index database not usable");
    }
    if let Err(e) = state.objects.check().await {
        tracing::warn!(error = %e, "readyz: storage not writable");
        problems.push("object storage not writable");
    }
    *last = Some((Instant::now(), problems.clone()));
    problems
}

pub async fn readyz(State(state): State<SharedState>) -> Response {
    let problems = ready_problems(&state).await;
    if problems.is_empty() {
        Json(Health::new(HealthStatus::Ready)).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                detail: Some(problems.join("; ")),
                status: HealthStatus::NotReady,
            }),
        )
            .into_response()
    }
}

pub async fn metrics(State(state): State<SharedState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}
