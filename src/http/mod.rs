//! The HTTP transport: routing, the envelope, extractors and middleware. Thin by design — each
//! handler reads its input, calls the store or the native core, and renders the envelope.

pub mod docs;
pub mod envelope;
pub mod extract;
pub mod middleware;
pub mod native;
pub mod openapi;
pub mod ops;
pub mod proxy;
pub mod rest;
pub mod schemas;
pub mod ws;

use std::any::Any;

use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::error::{ApiError, ErrorCode};

/// Every route of the service with its OpenAPI operation: operator endpoints, REST v1 (passed
/// through `guard_rest`, which adds authentication when serving, or swaps in the proxy in
/// upstream mode), the native endpoint and its WebSocket twin. Routes are only ever registered here, through `routes!`, which reads method
/// and path from each handler's `#[utoipa::path]`: a route cannot exist without its spec entry
/// (`tests/integration/openapi.rs` checks that nothing bypasses this).
pub fn routes(
    guard_rest: impl FnOnce(OpenApiRouter<AppState>) -> OpenApiRouter<AppState>,
) -> OpenApiRouter<AppState> {
    // The native endpoint authenticates inside its handler so auth time shows in Server-Timing.
    // Its routes sit at the top level with their full paths rather than inside the `/api/v1`
    // nest: a nested route strips the prefix from every request's URI (a copy per request).
    OpenApiRouter::new()
        .routes(routes!(native::handle))
        .routes(routes!(ws::upgrade))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(openapi::serve))
        .routes(routes!(docs::serve))
        .routes(routes!(crate::mcp::serve))
        .nest("/api/v1", guard_rest(rest::router()))
}

/// The whole service: the routes above, REST v1 behind auth, the envelope safety net.
pub fn build_router(app: AppState) -> Router {
    let max_body = app.config.limits.max_body_bytes;
    let upstream = app.upstream().is_some();
    let auth = axum::middleware::from_fn_with_state(app.clone(), middleware::api_auth);
    let (router, _spec) = routes(|rest| {
        if upstream {
            // Upstream mode: REST v1 is the upstream's (same contract, same document); the
            // gateway forwards it untouched.
            OpenApiRouter::new().fallback(proxy::forward)
        } else {
            rest.route_layer(auth)
        }
    })
    .split_for_parts();
    router
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            middleware::request_context,
        ))
        .with_state(app)
}

/// The router of the `metrics_listen` listener: `/metrics` and nothing else.
pub fn metrics_router(app: AppState) -> Router {
    let (router, _spec) = OpenApiRouter::new()
        .routes(routes!(ops::metrics))
        .split_for_parts();
    router
        .fallback(not_found)
        .layer(axum::Extension(ops::MetricsListener))
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
