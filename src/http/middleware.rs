//! Cross-cutting request handling: the request context and envelope safety net (outermost), and
//! authentication + rate limiting for `/api/v1` routes.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::envelope::{error_body, json_response, RequestContext, REQUEST};
use crate::app::AppState;
use crate::auth::rate_limit::RateDecision;
use crate::auth::Principal;
use crate::error::{ApiError, ErrorCode};
use crate::ids::new_request_id;

/// Gives every request an id, sets `X-Request-Id`, and rewrites any error response that is not
/// already our JSON envelope (axum's 404/405, a caught panic, …) into one.
pub async fn request_context(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let ctx = RequestContext {
        request_id: new_request_id(),
        started: Instant::now(),
    };
    let id = ctx.request_id.clone();
    let started = ctx.started;
    let method = req.method().clone();
    // Only an error reply quotes the path; a `Uri` copy shares its bytes.
    let uri = req.uri().clone();
    // The matched route template, never the raw path (ids would explode label cardinality).
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %method,
        route = %route,
        org_id = tracing::field::Empty,
        action = tracing::field::Empty,
        mode = tracing::field::Empty,
        outcome = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    let mut resp = REQUEST
        .scope(ctx.clone(), next.run(req).instrument(span.clone()))
        .await;
    if resp.status().as_u16() >= 400 && !is_json(resp.headers()) {
        resp = REQUEST
            .scope(ctx, async { envelope_for(resp, &method, uri.path()) })
            .await;
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    span.record("status", status);
    crate::telemetry::http_request(route, &method, status, elapsed);
    let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
    // The access line: method, route template, request id (from the span), status, elapsed.
    // Sampled by `access_log_sample`, since at full rate on the fast path it can cost more
    // than the request; failures are always logged.
    if status >= 500 {
        tracing::warn!(parent: &span, status, elapsed_ms, "request failed");
    } else if access_sampled(app.config.access_log_sample) {
        tracing::info!(parent: &span, status, elapsed_ms, "request");
    }
    resp
}

/// Whether this request's access line is logged: every one for 1, one in `n` for `n`, none
/// for 0. One counter for HTTP requests and WebSocket turns alike.
pub fn access_sampled(n: u32) -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEEN: AtomicU64 = AtomicU64::new(0);
    match n {
        0 => false,
        1 => true,
        n => SEEN
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(u64::from(n)),
    }
}

fn is_json(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

fn envelope_for(resp: Response, method: &axum::http::Method, path: &str) -> Response {
    let status = resp.status();
    let err = match status {
        StatusCode::NOT_FOUND => ApiError::new(ErrorCode::ResourceNotFound, "No such route")
            .with_details(format!("{method} {path} does not exist")),
        StatusCode::METHOD_NOT_ALLOWED => {
            ApiError::new(ErrorCode::MethodNotAllowed, "Method not allowed")
                .with_details(format!("{method} is not supported on {path}"))
        }
        StatusCode::PAYLOAD_TOO_LARGE => super::extract::payload_too_large(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ApiError::new(ErrorCode::UnsupportedMediaType, "Request body must be JSON")
        }
        s if s.is_server_error() => {
            tracing::error!(status = s.as_u16(), "non-envelope server error");
            ApiError::new(ErrorCode::InternalError, "Unexpected server error")
        }
        StatusCode::UNAUTHORIZED => ApiError::new(ErrorCode::MissingAuth, "Unauthorized"),
        _ => ApiError::new(ErrorCode::ValidationError, "Invalid request").with_details(format!(
            "{method} {path}: {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )),
    };
    // Any other client error (e.g. an undecodable path segment) is reported as
    // VALIDATION_ERROR, so it carries that code's status, as everywhere else.
    let status = if err.code == ErrorCode::ValidationError {
        StatusCode::from_u16(err.status()).unwrap_or(status)
    } else {
        status
    };
    let (mut parts, _) = resp.into_parts();
    parts.status = status;
    let fresh = json_response(status, &error_body(&err));
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let (_, body) = fresh.into_parts();
    Response::from_parts(parts, body)
}

/// Authenticates the caller and counts the request against the org's quota (see `App::admit`),
/// then adds the rate-limit headers to whatever the handler answers.
pub async fn api_auth(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let header_value = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("\u{0}invalid"));
    let (principal, decision) = match app.admit(header_value).await {
        Ok(x) => x,
        Err((e, decision)) => {
            let mut resp = e.into_response();
            if let Some(d) = decision {
                apply_rate_headers(resp.headers_mut(), &d);
            }
            return resp;
        }
    };
    tracing::Span::current().record("org_id", principal.org_id.as_str());
    req.extensions_mut().insert::<Arc<Principal>>(principal);
    let mut resp = next.run(req).await;
    apply_rate_headers(resp.headers_mut(), &decision);
    resp
}

/// Adds `X-RateLimit-Limit/Remaining/Reset` (nothing when the org is unlimited).
pub fn apply_rate_headers(h: &mut HeaderMap, d: &RateDecision) {
    if d.limit == 0 {
        return;
    }
    h.insert("x-ratelimit-limit", HeaderValue::from(d.limit));
    h.insert("x-ratelimit-remaining", HeaderValue::from(d.remaining));
    h.insert("x-ratelimit-reset", HeaderValue::from(d.reset_secs));
}
