//! The Model Context Protocol endpoint at `/mcp` (DESIGN §19): the 17 native actions and
//! `confirm_pending_action` as MCP tools, for agent frameworks.
//!
//! Streamable HTTP through the official SDK (`rmcp`), stateless with JSON answers, so any
//! replica can serve any request. The SDK's service and the parsed `[mcp]` allow-lists are built
//! once, at start ([`Mcp`], kept in the app state). Before the SDK sees a request, [`serve`]
//! checks `Host` and `Origin` ([`origin`]), the API key (scope `native` or `chat`) and the org's
//! rate limit, and answers refusals in the service's JSON envelope.
//!
//! `/mcp` is a handler registered through `routes!` like every route, not an axum
//! `nest_service` mount: the project's route rule (`tests/integration/openapi.rs`) allows routes
//! only where their OpenAPI entry is declared, and a nested service would also answer under
//! `/mcp/` and `/mcp/{*rest}`, undocumented. The handler hands the whole request to the same
//! `StreamableHttpService::handle` a mount would call. A tool call then runs the same pipeline as
//! `POST /api/v1/native/outreachpilot` ([`server`]); [`tools`] holds the tool list and the
//! translations between tool calls and native requests.

pub mod origin;
pub mod server;
pub mod tools;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};

use self::origin::OriginPolicy;
use self::server::{Caller, PilotMcp};
use crate::app::AppState;
use crate::auth::rate_limit::RateDecision;
use crate::config::Config;
use crate::domain::Scope;
use crate::error::{ApiError, ErrorCode};
use crate::http::envelope::{error_body, json_response, REQUEST};
use crate::http::middleware::apply_rate_headers;
use crate::native::Bridge;

/// What `/mcp` needs besides the app: built once at start and kept in the app state, since
/// neither depends on the request.
pub struct Mcp {
    /// `[mcp] allowed_hosts` and `allowed_origins`, parsed.
    policy: OriginPolicy,
    /// The SDK's Streamable HTTP service. Stateless with JSON answers (no session manager, no
    /// server streams); per request it makes a [`PilotMcp`], a clone of the bridge handle. Its
    /// own `Host`/`Origin` checks are off because [`Mcp::check_origin`] runs first and answers
    /// in our envelope.
    service: StreamableHttpService<PilotMcp, NeverSessionManager>,
}

impl Mcp {
    /// Parses the allow-lists (an entry that cannot match anything is an error naming it) and
    /// builds the SDK's service over `bridge`.
    pub fn new(config: &Config, bridge: Arc<Bridge>) -> Result<Mcp, String> {
        let policy = OriginPolicy::new(&config.mcp)?;
        let sdk_config = StreamableHttpServerConfig::default()
            .with_legacy_session_mode(false)
            .with_json_response(true)
            .with_sse_keep_alive(None)
            .with_sse_retry(None)
            .disable_allowed_hosts()
            .disable_allowed_origins()
            .with_max_request_body_bytes(config.limits.max_body_bytes);
        let service = StreamableHttpService::new(
            move || {
                Ok(PilotMcp {
                    bridge: bridge.clone(),
                })
            },
            Arc::new(NeverSessionManager::default()),
            sdk_config,
        );
        Ok(Mcp { policy, service })
    }

    /// `Host` (or the URI's authority) and `Origin` against `[mcp]`.
    fn check_origin(&self, parts: &axum::http::request::Parts) -> Result<(), ApiError> {
        let host = parts.uri.authority().map(|a| a.as_str()).or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .map(|v| v.to_str().unwrap_or(""))
        });
        let origin = parts
            .headers
            .get(header::ORIGIN)
            .map(|v| v.to_str().unwrap_or(""));
        self.policy.check(host, origin)
    }
}

/// MCP over Streamable HTTP: one JSON-RPC message per `POST`, answered with JSON. `initialize`
/// (revisions 2025-06-18 and 2025-11-25) or `server/discover` (2026-07-28), `tools/list`, and
/// `tools/call` of the 17 actions and `confirm_pending_action`. Tool failures are results with
/// `isError: true`; protocol errors are JSON-RPC errors. `GET` and `DELETE` (sessions, server
/// streams) are not offered: the endpoint is stateless.
#[utoipa::path(post, path = "/mcp", tag = "mcp", operation_id = "mcp",
    request_body(content = Object, content_type = "application/json",
        description = "A JSON-RPC 2.0 request or notification. Send `Accept: application/json, text/event-stream`."),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The JSON-RPC response", body = Object),
        (status = 202, description = "A notification was accepted"),
        (status = 400, description = "A JSON-RPC error: an unsupported or mismatched `MCP-Protocol-Version`, or a 2026-07-28 request without its `_meta`", body = Object),
        (status = 401, description = "`MISSING_AUTH` or `INVALID_API_KEY`, with `WWW-Authenticate: Bearer`"),
        (status = 403, description = "`ORIGIN_NOT_ALLOWED` (a `Host` or browser `Origin` not allowed by `[mcp]`), `SCOPE_DENIED` (the key has neither `native` nor `chat`) or `PLAN_REQUIRED`"),
        (status = 406, description = "`VALIDATION_ERROR`: `Accept` must allow `application/json` and `text/event-stream`", body = Object),
        (status = 429, description = "`RATE_LIMITED`: over the org's request quota (every request counts, as on REST)"),
    ))]
pub async fn serve(State(app): State<AppState>, req: Request) -> Response {
    let mcp = &app.mcp;
    let started = REQUEST
        .try_with(|c| c.started)
        .unwrap_or_else(|_| Instant::now());
    let (mut parts, body) = req.into_parts();
    if let Err(e) = mcp.check_origin(&parts) {
        return e.into_response();
    }
    let t = Instant::now();
    let (principal, decision) = match admit(&app, &parts).await {
        Ok(x) => x,
        Err((e, decision)) => return refusal(e, decision.as_ref()),
    };
    tracing::Span::current().record("org_id", principal.org_id.as_str());
    parts.extensions.insert(Caller {
        principal,
        started,
        auth: t.elapsed(),
        // Only traces use it; the SDK runs the tool call outside this request's scope.
        request_id: crate::otel::enabled()
            .then(|| REQUEST.try_with(|c| c.request_id.clone()).ok())
            .flatten(),
    });
    let resp = mcp
        .service
        .handle(Request::from_parts(parts, body))
        .await
        .map(Body::new);
    let mut resp = envelope_transport_error(resp).await;
    apply_rate_headers(resp.headers_mut(), &decision);
    resp
}

/// The API key as on REST: the same key cache, scope `native` or `chat`, one request against
/// the org's quota (the window replicas share when state is in Redis). Bad credentials never
/// spend it.
async fn admit(
    app: &AppState,
    parts: &axum::http::request::Parts,
) -> Result<(Arc<crate::auth::Principal>, RateDecision), (ApiError, Option<RateDecision>)> {
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("\u{0}invalid"));
    let principal = app
        .auth
        .authenticate_header(authorization)
        .await
        .map_err(|e| (e, None))?;
    let decision = app
        .charge_shared(&principal, "mcp")
        .await
        .map_err(|(e, d)| (e, Some(d)))?;
    principal
        .require_any(&[Scope::Native, Scope::Chat])
        .map_err(|e| (e, Some(decision)))?;
    Ok((principal, decision))
}

fn refusal(e: ApiError, decision: Option<&RateDecision>) -> Response {
    let unauthenticated = e.status() == 401;
    let mut resp = e.into_response();
    if unauthenticated {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"pilot-bridge\""),
        );
    }
    if let Some(d) = decision {
        apply_rate_headers(resp.headers_mut(), d);
    }
    resp
}

/// The SDK answers transport-level refusals (wrong `Accept`, an oversized body, `GET` on a
/// stateless server) as plain text; like every error of this service they go out in the JSON
/// envelope, keeping the status MCP clients expect. JSON-RPC errors (already JSON) pass as they
/// are.
async fn envelope_transport_error(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if status.as_u16() < 400 || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    // The SDK's messages are one short line; read at most a little of it, and briefly.
    let limited = http_body_util::Limited::new(body, 1024);
    let text = match tokio::time::timeout(Duration::from_secs(1), limited.collect()).await {
        Ok(Ok(collected)) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        _ => String::new(),
    };
    // The SDK answers every body it cannot read as a JSON-RPC message with 415; a body that is
    // JSON but malformed is, as everywhere in this service, a 422 naming the problem. (Matched on
    // the SDK's wording; should that change, the answer stays a 415 envelope.)
    let text = text.trim();
    if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
        if let Some(problem) = text.strip_prefix("fail to deserialize request body") {
            let e = ApiError::validation(
                "body",
                format!(
                    "not a JSON-RPC 2.0 message ({})",
                    crate::text::clip(problem.trim(), 160)
                ),
            );
            return rebuilt(e.into_response(), &parts.headers);
        }
    }
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::NOT_FOUND => ErrorCode::ResourceNotFound,
        StatusCode::FORBIDDEN => ErrorCode::OriginNotAllowed,
        s if s.is_server_error() => ErrorCode::InternalError,
        _ => ErrorCode::ValidationError,
    };
    let message = match code {
        ErrorCode::InternalError => "Unexpected server error".to_string(),
        _ => crate::text::clip(text, 200),
    };
    let e = ApiError::new(code, "The MCP request was refused").with_details(message);
    rebuilt(json_response(status, &error_body(&e)), &parts.headers)
}

/// `fresh` with the SDK response's other headers (`Allow` on a 405, for one).
fn rebuilt(mut fresh: Response, sdk_headers: &axum::http::HeaderMap) -> Response {
    for (name, value) in sdk_headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            fresh.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fresh
}
