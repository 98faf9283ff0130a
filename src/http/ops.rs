//! Operator endpoints outside `/api/v1`: liveness, readiness and Prometheus metrics (and, in
//! `http::openapi`, the OpenAPI document). None needs an API key.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::envelope::{json_response, meta};
use crate::app::AppState;
use crate::error::{ApiError, ErrorCode};

/// Alive as long as the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", operation_id = "healthz", security(()),
    responses((status = 200, description = "`{ status: \"ok\" }`", body = crate::http::schemas::Envelope<crate::http::schemas::Status>)))]
pub async fn healthz() -> Response {
    json_response(
        StatusCode::OK,
        &json!({ "ok": true, "data": { "status": "ok" }, "meta": meta() }),
    )
}

/// Ready once migrations ran and the listener is up, and while the database and the state store
/// (Redis, when shared by replicas) answer; not ready again as soon as shutdown begins.
#[utoipa::path(get, path = "/readyz", tag = "operations", operation_id = "readyz", security(()),
    responses(
        (status = 200, description = "`{ status: \"ready\" }`", body = crate::http::schemas::Envelope<crate::http::schemas::Status>),
        (status = 503, description = "`SERVICE_UNAVAILABLE`: starting, shutting down, the database does not answer or cannot be written, or the shared state store (Redis) does not answer"),
    ))]
pub async fn readyz(State(app): State<AppState>) -> Response {
    if app.is_ready()
        && app.store.ping().await
        && app.store.writable().await
        && app.bridge.state().ping().await
    {
        json_response(
            StatusCode::OK,
            &json!({ "ok": true, "data": { "status": "ready" }, "meta": meta() }),
        )
    } else {
        ApiError::new(ErrorCode::ServiceUnavailable, "Not ready").into_response()
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "metrics", security(()),
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String)))]
pub async fn metrics(State(app): State<AppState>) -> Response {
    // Gauges that are cheap to read at scrape time and costly to keep current per request.
    // (Open pending actions are counted by the state maintenance task, not per scrape.)
    crate::telemetry::ws_connections(app.ws_connections.open());
    let body = app.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
