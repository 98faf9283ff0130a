//! `GET /api/v1/native/outreachpilot/ws`: the streaming twin of the native endpoint. A thin
//! adapter over the same `native::Bridge`: frames in, envelopes out, matched by the client's `id`
//! (protocol, frames and close codes: `docs/websocket.md`).
//!
//! - `mod.rs`: the upgrade: connection caps, credentials on the upgrade request, socket limits;
//! - `session.rs`: one connection's loop, writer, authentication by first frame, turns, events;
//! - `frames.rs`: close codes, read errors mapped to them, and the session's own small frames.

mod frames;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::rejection::ExtensionRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use futures_util::{FutureExt, StreamExt};

use crate::app::AppState;
use crate::auth::Principal;
use crate::domain::Scope;
use crate::error::ApiError;

/// Small read buffer so idle connections stay cheap (tungstenite's default is 128 KiB): every
/// open socket keeps it. Voice frames are a few hundred bytes; a larger frame grows the buffer
/// to its length once its header is read, and the buffer keeps that size.
const READ_BUFFER: usize = 512;

/// Replies are gathered up to this size before they are written to the socket: the session's
/// writer feeds every queued reply and then flushes, so a batch goes out in one write.
const WRITE_BUFFER: usize = 16 * 1024;

/// Open the WebSocket twin of the native endpoint (protocol and frames: `docs/websocket.md`).
///
/// A standard RFC 6455 handshake (`Upgrade: websocket`, `Connection: Upgrade`,
/// `Sec-WebSocket-Key`, `Sec-WebSocket-Version: 13`). Credentials may come with the upgrade
/// (`Authorization: Bearer`, checked before upgrading) or in a first frame
/// `{"type":"auth","token":"op_live_..."}`. Request frames are the native request body plus a
/// client-chosen `id`; reply frames are the HTTP envelope plus that `id` and
/// `meta.server_timing`. Frames without `id` are pushed by the server: `progress` for a slow
/// turn, `event` for work of this API key that finished later.
#[utoipa::path(get, path = "/api/v1/native/outreachpilot/ws", tag = "native", operation_id = "nativeOutreachpilotWebSocket",
    responses(
        (status = 101, description = "Switching protocols: the connection speaks the frame protocol in docs/websocket.md"),
        (status = 422, description = "`VALIDATION_ERROR`: not a WebSocket upgrade request, or `resume_after` is not a non-negative integer"),
        (status = 429, description = "`RATE_LIMITED`: the org has too many open WebSocket connections"),
        (status = 503, description = "`SERVICE_UNAVAILABLE`: the server has too many open WebSocket connections, or (without `Authorization`) too many that have not authenticated yet (with `Retry-After`)"),
    ))]
pub async fn upgrade(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    peer: Result<ConnectInfo<SocketAddr>, ExtensionRejection>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let upgraded_at = tokio::time::Instant::now();
    let peer = peer.ok().map(|ConnectInfo(addr)| addr.ip());
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return ApiError::validation("upgrade", rejection.body_text())
                .with_spoken("This endpoint needs a WebSocket connection.")
                .into_response()
        }
    };
    let resume_after = match resume_after(query.as_deref()) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    // Credentials on the upgrade request are checked before upgrading, so failures get the
    // plain HTTP 401/403 envelope. Without them the connection counts against the cap on
    // unauthenticated connections until its auth frame arrives.
    let (slot, credentials) = match headers.get(header::AUTHORIZATION) {
        None => match app.ws_connections.acquire_unauthenticated() {
            Ok(slot) => {
                let deadline =
                    upgraded_at + Duration::from_secs(app.config.websocket.auth_timeout_secs);
                (slot, session::Credentials::FirstFrame { deadline })
            }
            Err(e) => return e.into_response(),
        },
        Some(value) => {
            let mut slot = match app.ws_connections.acquire_total() {
                Ok(s) => s,
                Err(e) => return e.into_response(),
            };
            let value = value.to_str().unwrap_or("\u{0}invalid");
            let principal = match authorize(&app, Some(value), None).await {
                Ok(p) => p,
                Err(e) => return e.into_response(),
            };
            if let Err(e) = app.ws_connections.admit(&mut slot, &principal.org_id).await {
                return e.into_response();
            }
            // Kept to re-check the key on every frame (a revoked key must stop working).
            let token = crate::auth::parse_bearer(value)
                .unwrap_or_default()
                .to_string();
            (slot, session::Credentials::Header { principal, token })
        }
    };
    let cfg = &app.config.websocket;
    // No cap on the write buffer beyond one batch: replies of any size go out (a batch is
    // flushed before the next one is buffered, so this holds one batch at most).
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(cfg.max_message_bytes)
        .max_frame_size(cfg.max_message_bytes)
        // A plain closure returning the session's future (not an `async` block around it): the
        // block would keep its own moved-from copy of the socket and of every argument for the
        // connection's lifetime, in the task every idle socket keeps.
        .on_upgrade(move |socket| {
            let (sink, stream) = socket.split();
            session::run(app, sink, stream, credentials, slot, peer, resume_after).map(|_| ())
        })
}

/// `?resume_after=N` on the upgrade: replay the events after seq N first (DESIGN §21). Other
/// query parameters are left alone.
fn resume_after(query: Option<&str>) -> Result<Option<u64>, ApiError> {
    #[derive(serde::Deserialize)]
    struct Query {
        resume_after: Option<String>,
    }
    let Some(query) = query else {
        return Ok(None);
    };
    let parsed: Query = serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::validation("query", e.to_string()))?;
    parsed
        .resume_after
        .map(|v| {
            v.trim().parse::<u64>().map_err(|_| {
                ApiError::validation(
                    "resume_after",
                    "expected a non-negative integer (the last event seq the client has)",
                )
                .with_spoken("I couldn't read where to resume the events from.")
            })
        })
        .transpose()
}

/// Authenticates a header value or an auth frame's token, and checks the native scope.
async fn authorize(
    app: &AppState,
    header: Option<&str>,
    token: Option<&str>,
) -> Result<Arc<Principal>, ApiError> {
    let p = match token {
        Some(t) => app.auth.authenticate_token(t).await?,
        None => app.auth.authenticate_header(header).await?,
    };
    p.require_any(&[Scope::Native, Scope::Chat])?;
    Ok(p)
}
