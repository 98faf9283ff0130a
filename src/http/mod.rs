//! The HTTP transport: routing, the envelope, extractors and middleware. Thin by design — each
//! handler reads its input, calls the store or the native core, and renders the envelope.

pub mod envelope;
pub mod extract;
pub mod middleware;
pub mod native;
pub mod ops;
pub mod proxy;
pub mod rest;
pub mod ws;

use std::any::Any;

use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;

use crate::app::AppState;
use crate::error::{ApiError, ErrorCode};

/// The whole service: operator endpoints, REST v1 behind auth, the envelope safety net.
pub fn build_router(app: AppState) -> Router {
    let max_body = app.config.limits.max_body_bytes;
    let rest = if app.upstream().is_some() {
        // Upstream mode: REST v1 is the upstream's; the gateway forwards it untouched.
        Router::new().fallback(proxy::forward)
    } else {
        rest::router().route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            middleware::api_auth,
        ))
    };
    // The native endpoint authenticates inside its handler so auth time shows in Server-Timing.
    let api = rest
        .route("/native/outreachpilot", axum::routing::post(native::handle))
        .route("/native/outreachpilot/ws", get(ws::upgrade));
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .nest("/api/v1", api)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn(middleware::request_context))
        .with_state(app)
}

async fn not_found(uri: axum::http::Uri, method: axum::http::Method) -> Response {
    ApiError::new(ErrorCode::ResourceNotFound, "No such route")
        .with_details(format!("{method} {} does not exist", uri.path()))
        .into_response()
}

fn panic_response(err: Box<dyn Any + Send + 'static>) -> Response {
    let msg = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("panic");
    ApiError::internal(format!("handler panicked: {msg}")).into_response()
}
