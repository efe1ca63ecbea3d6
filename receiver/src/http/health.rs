//! `GET /healthz` (the process answers; touches no storage), `GET /readyz`
//! (the index answers a query and the storage takes a write) and
//! `GET /metrics` (Prometheus text format).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::SharedState;

pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

pub async fn readyz(State(state): State<SharedState>) -> Response {
    let mut problems = Vec::new();
    if let Err(e) = state.index.ping().await {
        tracing::warn!(error = %e, "readyz: index not usable");
        problems.push("index database not usable");
    }
    if let Err(e) = state.objects.check_writable().await {
        tracing::warn!(error = %e, "readyz: storage not writable");
        problems.push("object storage not writable");
    }
    if problems.is_empty() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not-ready", "detail": problems.join("; ")})),
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
