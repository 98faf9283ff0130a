//! `GET /api/v1/native/outreachpilot/ws`: the streaming twin of the native endpoint. A thin
//! adapter over the same `native::Bridge`: frames in, envelopes out, matched by the client's `id`.
//!
//! Protocol (see README "WebSocket"):
//! - auth: `Authorization: Bearer` on the upgrade, or a first frame `{"type":"auth","token":…}`
//!   within `auth_timeout_secs` (answered `{"type":"auth_ok"}`); failures close with 1008;
//! - request frame: the HTTP body plus `"id"`; reply frame: the HTTP envelope plus the same `id`
//!   and `meta.server_timing`; up to `max_in_flight` requests run concurrently, replies may come
//!   out of order;
//! - `{"type":"ping"}` → `{"type":"pong"}`; protocol pings every `ping_interval_secs`, and a peer
//!   silent for two intervals is closed;
//! - binary frames get an error frame (the connection stays open); oversized messages close with
//!   1009; a client that stops reading is disconnected once `outbound_queue` replies are waiting;
//! - server shutdown finishes in-flight requests, then closes with 1001.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};

use super::envelope::error_body_for;
use crate::app::AppState;
use crate::auth::connections::ConnectionSlot;
use crate::auth::Principal;
use crate::domain::Scope;
use crate::error::{ApiError, ErrorCode};
use crate::ids::new_request_id;
use crate::native::reply::FrameInfo;
use crate::native::timing::ServerTiming;
use crate::native::Transport;
use crate::telemetry;

/// The route template WebSocket turns are logged under.
const WS_ROUTE: &str = "/api/v1/native/outreachpilot/ws";

/// Small read buffer so idle connections stay cheap (tungstenite's default is 128 KiB); voice
/// frames are small, and larger ones are simply read in more steps.
const READ_BUFFER: usize = 2 * 1024;
/// Longest client-chosen request id.
const MAX_ID_LEN: usize = 128;
/// A write that cannot complete in this time means the peer stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Open the WebSocket twin of the native endpoint (protocol and frames: `docs/websocket.md`).
///
/// A standard RFC 6455 handshake (`Upgrade: websocket`, `Connection: Upgrade`,
/// `Sec-WebSocket-Key`, `Sec-WebSocket-Version: 13`). Credentials may come with the upgrade
/// (`Authorization: Bearer`, checked before upgrading) or in a first frame
/// `{"type":"auth","token":"op_live_..."}`. Request frames are the native request body plus a
/// client-chosen `id`; reply frames are the HTTP envelope plus that `id` and
/// `meta.server_timing`.
#[utoipa::path(get, path = "/native/outreachpilot/ws", tag = "native", operation_id = "nativeOutreachpilotWebSocket",
    responses(
        (status = 101, description = "Switching protocols: the connection speaks the frame protocol in docs/websocket.md"),
        (status = 422, description = "`VALIDATION_ERROR`: not a WebSocket upgrade request"),
        (status = 429, description = "`RATE_LIMITED`: the org has too many open WebSocket connections"),
        (status = 503, description = "`SERVICE_UNAVAILABLE`: the server has too many open WebSocket connections (with `Retry-After`)"),
    ))]
pub async fn upgrade(
    State(app): State<AppState>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return ApiError::validation("upgrade", rejection.body_text())
                .with_spoken("This endpoint needs a WebSocket connection.")
                .into_response()
        }
    };
    let mut slot = match app.ws_connections.acquire_total() {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    // Credentials on the upgrade request are checked before upgrading, so failures get the
    // plain HTTP 401/403 envelope.
    let credential = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(value) => {
            let value = value.to_str().unwrap_or("\u{0}invalid");
            match authorize(&app, Some(value), None).await {
                Ok(p) => {
                    if let Err(e) = app.ws_connections.assign(&mut slot, &p.org_id) {
                        return e.into_response();
                    }
                    // Kept to re-check the key on every frame (a revoked key must stop working).
                    let token = crate::auth::parse_bearer(value)
                        .unwrap_or_default()
                        .to_string();
                    Some((p, token))
                }
                Err(e) => return e.into_response(),
            }
        }
    };
    let cfg = &app.config.websocket;
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(cfg.max_message_bytes * 4)
        .max_message_size(cfg.max_message_bytes)
        .max_frame_size(cfg.max_message_bytes)
        .on_upgrade(move |socket| session(app, socket, credential, slot))
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

fn text(v: &Value) -> Message {
    Message::Text(v.to_string().into())
}

fn close_frame(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// An error frame: the error envelope plus the request's `id` when one could be read.
fn error_frame(e: &ApiError, id: Option<&str>, request_id: &str) -> Message {
    let mut v = error_body_for(e, request_id.to_string());
    if let (Some(id), Value::Object(m)) = (id, &mut v) {
        m.insert("id".into(), Value::String(id.to_string()));
    }
    text(&v)
}

async fn session(
    app: AppState,
    socket: WebSocket,
    credential: Option<(Arc<Principal>, String)>,
    mut slot: ConnectionSlot,
) {
    let cfg = app.config.websocket.clone();
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(cfg.outbound_queue);
    // The writer owns the sink; it ends after a close frame, a failed or stuck write, or when
    // every sender is gone.
    let writer = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            let closing = matches!(msg, Message::Close(_));
            telemetry::ws_frame("out", frame_kind(&msg));
            match tokio::time::timeout(WRITE_TIMEOUT, sink.send(msg)).await {
                Ok(Ok(())) if !closing => {}
                _ => break,
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    });

    // The principal is looked up again per frame; the connection keeps only the key.
    let token = match credential {
        Some((_, token)) => token,
        None => match wait_for_auth(&app, &mut stream, &out_tx, &mut slot).await {
            Some((_, token)) => token,
            None => {
                drop(out_tx);
                let _ = writer.await;
                return;
            }
        },
    };

    let in_flight = Arc::new(Semaphore::new(cfg.max_in_flight));
    // Set when a reply could not be queued: the client stopped reading.
    let stalled = Arc::new(tokio::sync::Notify::new());
    let ping_every = Duration::from_secs(cfg.ping_interval_secs);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut last_seen = Instant::now();
    let mut shutdown_rx = app.shutdown_signal();
    let shutdown = async move {
        let _ = shutdown_rx.wait_for(|s| *s).await;
    };
    tokio::pin!(shutdown);
    let ending: Ending = loop {
        tokio::select! {
            frame = stream.next() => {
                last_seen = Instant::now();
                if let Some(Ok(m)) = &frame {
                    telemetry::ws_frame("in", frame_kind(m));
                }
                match frame {
                    None => break Ending::PeerClosed,
                    Some(Err(e)) => {
                        let (code, reason) = read_error_close(&e);
                        break Ending::Close(code, reason);
                    }
                    Some(Ok(Message::Close(_))) => break Ending::PeerClosed,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Binary(_))) => {
                        let e = ApiError::new(ErrorCode::UnsupportedMediaType, "Binary frames are not supported")
                            .with_details("send JSON in text frames");
                        if out_tx.try_send(error_frame(&e, None, &new_request_id())).is_err() {
                            break Ending::Stalled;
                        }
                    }
                    Some(Ok(Message::Text(t))) => {
                        let received = Instant::now();
                        // The key is checked again on every frame through the auth cache (no
                        // database work while the verdict is cached), so a revoked key stops
                        // working on open connections as it does over HTTP.
                        let principal = match authorize(&app, None, Some(&token)).await {
                            Ok(p) => p,
                            Err(e) => {
                                let _ = out_tx.try_send(error_frame(&e, None, &new_request_id()));
                                break Ending::Close(close::POLICY, "credentials no longer valid");
                            }
                        };
                        let permit = match in_flight.clone().acquire_owned().await {
                            Ok(p) => p,
                            Err(_) => break Ending::Close(close::GOING_AWAY, "closing"),
                        };
                        let app = app.clone();
                        let out = out_tx.clone();
                        let stalled = stalled.clone();
                        tokio::spawn(async move {
                            let reply = handle_frame(&app, &principal, t.as_str(), received).await;
                            if let Some(reply) = reply {
                                if out.try_send(reply).is_err() {
                                    stalled.notify_one();
                                }
                            }
                            drop(permit);
                        });
                    }
                }
            }
            _ = stalled.notified() => break Ending::Stalled,
            _ = ping.tick() => {
                if last_seen.elapsed() > ping_every * 2 {
                    break Ending::Close(close::GOING_AWAY, "no activity");
                }
                if out_tx.try_send(Message::Ping(Vec::new().into())).is_err() {
                    break Ending::Stalled;
                }
            }
            () = &mut shutdown => {
                // Let requests already running finish and send their replies first.
                let max = u32::try_from(cfg.max_in_flight).unwrap_or(u32::MAX);
                let _ = tokio::time::timeout(Duration::from_secs(10), in_flight.acquire_many(max)).await;
                break Ending::Close(close::GOING_AWAY, "server shutting down");
            }
        }
    };
    let stalled_peer = matches!(ending, Ending::Stalled);
    if let Ending::Close(code, reason) = ending {
        // Queued behind pending replies, so they go out first.
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            out_tx.send(close_frame(code, reason)),
        )
        .await;
    }
    drop(out_tx);
    let mut writer = writer;
    if stalled_peer
        || tokio::time::timeout(Duration::from_secs(5), &mut writer)
            .await
            .is_err()
    {
        writer.abort();
    }
    drop(slot);
}

fn frame_kind(m: &Message) -> &'static str {
    match m {
        Message::Text(_) => "text",
        Message::Binary(_) => "binary",
        Message::Ping(_) => "ping",
        Message::Pong(_) => "pong",
        Message::Close(_) => "close",
    }
}

/// How a session ended.
enum Ending {
    /// The client closed (or the TCP connection went away).
    PeerClosed,
    /// We close with this code and reason.
    Close(u16, &'static str),
    /// The client stopped reading: there is no point queueing a close frame it will not read,
    /// so the socket is simply dropped.
    Stalled,
}

/// Maps a read error to a close code: oversized messages get 1009.
fn read_error_close(e: &axum::Error) -> (u16, &'static str) {
    let too_big = std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<tungstenite::Error>())
        .is_some_and(|t| matches!(t, tungstenite::Error::Capacity(_)))
        || e.to_string().contains("Space limit exceeded");
    if too_big {
        (close::TOO_BIG, "message too big")
    } else {
        (close::POLICY, "protocol error")
    }
}

/// Reads the first frame, which must be `{"type":"auth","token":"…"}`, within the auth timeout.
async fn wait_for_auth(
    app: &AppState,
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    out: &mpsc::Sender<Message>,
    slot: &mut ConnectionSlot,
) -> Option<(Arc<Principal>, String)> {
    let deadline = Duration::from_secs(app.config.websocket.auth_timeout_secs);
    let rid = new_request_id();
    let fail = |e: ApiError, id: Option<&str>| {
        let _ = out.try_send(error_frame(&e, id, &rid));
        let _ = out.try_send(close_frame(close::POLICY, "authentication required"));
    };
    let first = loop {
        match tokio::time::timeout(deadline, stream.next()).await {
            Err(_) => {
                fail(
                    ApiError::new(ErrorCode::MissingAuth, "No credentials received").with_details(
                        format!(
                            "send {{\"type\":\"auth\",\"token\":\"op_live_...\"}} within {} s",
                            deadline.as_secs()
                        ),
                    ),
                    None,
                );
                return None;
            }
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return None,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(Message::Binary(_)))) => {
                fail(
                    ApiError::new(ErrorCode::MissingAuth, "Expected an auth frame"),
                    None,
                );
                return None;
            }
            Ok(Some(Ok(Message::Text(t)))) => break t,
        }
    };
    let v: Value = serde_json::from_str(first.as_str()).unwrap_or(Value::Null);
    let id = v.get("id").and_then(Value::as_str).map(str::to_string);
    let token = match (
        v.get("type").and_then(Value::as_str),
        v.get("token").and_then(Value::as_str),
    ) {
        (Some("auth"), Some(t)) => t.to_string(),
        _ => {
            fail(
                ApiError::new(ErrorCode::MissingAuth, "Authenticate first").with_details(
                    "the first frame must be {\"type\":\"auth\",\"token\":\"op_live_...\"}",
                ),
                id.as_deref(),
            );
            return None;
        }
    };
    let principal = match authorize(app, None, Some(&token)).await {
        Ok(p) => p,
        Err(e) => {
            fail(e, id.as_deref());
            return None;
        }
    };
    if let Err(e) = app.ws_connections.assign(slot, &principal.org_id) {
        let _ = out.try_send(error_frame(&e, id.as_deref(), &rid));
        let _ = out.try_send(close_frame(close::TRY_AGAIN_LATER, "too many connections"));
        return None;
    }
    let mut ack = json!({ "type": "auth_ok", "org_id": principal.org_id });
    if let Some(id) = id {
        ack["id"] = Value::String(id);
    }
    let _ = out.try_send(text(&ack));
    Some((principal, token))
}

/// One text frame in, at most one frame out.
async fn handle_frame(
    app: &AppState,
    principal: &Arc<Principal>,
    raw: &str,
    received: Instant,
) -> Option<Message> {
    let request_id = new_request_id();
    let mut timing = ServerTiming::starting_at(received);
    let t = Instant::now();
    let parsed: Result<Value, ApiError> = crate::http::extract::parse_json(raw.as_bytes());
    let body = match parsed {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            return Some(error_frame(
                &ApiError::validation("frame", "expected a JSON object"),
                None,
                &request_id,
            ))
        }
        Err(e) => return Some(error_frame(&e, None, &request_id)),
    };
    match body.get("type").and_then(Value::as_str) {
        Some("ping") => {
            let mut pong = json!({ "type": "pong" });
            if let Some(id) = body.get("id") {
                pong["id"] = id.clone();
            }
            return Some(text(&pong));
        }
        Some("auth") => {
            // A repeated auth frame is checked like the first one; it cannot move the
            // connection to another organisation.
            let id = body.get("id").and_then(Value::as_str);
            let token = body.get("token").and_then(Value::as_str).unwrap_or("");
            return Some(match authorize(app, None, Some(token)).await {
                Ok(p) if p.org_id == principal.org_id => {
                    let mut ack = json!({ "type": "auth_ok", "org_id": principal.org_id });
                    if let Some(id) = id {
                        ack["id"] = Value::String(id.to_string());
                    }
                    text(&ack)
                }
                Ok(_) => error_frame(
                    &ApiError::validation(
                        "token",
                        "belongs to another organization than this connection",
                    ),
                    id,
                    &request_id,
                ),
                Err(e) => error_frame(&e, id, &request_id),
            });
        }
        _ => {}
    }
    let id = match body.get("id") {
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= MAX_ID_LEN => s.clone(),
        Some(Value::String(_)) => {
            return Some(error_frame(
                &ApiError::validation("id", format!("must be 1 to {MAX_ID_LEN} characters")),
                None,
                &request_id,
            ))
        }
        Some(_) => {
            return Some(error_frame(
                &ApiError::validation("id", "expected a string"),
                None,
                &request_id,
            ))
        }
        None => {
            return Some(error_frame(
                &ApiError::validation("id", "missing: every request frame needs a client id"),
                None,
                &request_id,
            ))
        }
    };
    timing.record("parse", t.elapsed());
    let outcome = match app.charge(principal, "ws") {
        Ok(_) => {
            app.bridge
                .handle(
                    principal.clone(),
                    Value::Object(body),
                    timing,
                    Transport::WebSocket,
                )
                .await
        }
        Err((e, _)) => app.bridge.reject(e, timing, Transport::WebSocket),
    };
    // The same access line as an HTTP request, one per turn.
    let status = outcome.status();
    let elapsed_ms = outcome.performance.server_elapsed_ms;
    if status >= 500 {
        tracing::warn!(request_id = %request_id, method = "WS", route = WS_ROUTE, status, elapsed_ms, "turn failed");
    } else if crate::http::middleware::access_sampled(app.config.access_log_sample) {
        tracing::info!(request_id = %request_id, method = "WS", route = WS_ROUTE, status, elapsed_ms, "turn");
    }
    let bytes = outcome.envelope_bytes(&request_id, Some(FrameInfo { id: Some(&id) }));
    // serde_json writes UTF-8, so this conversion cannot fail; an empty frame would be a bug.
    Some(Message::Text(
        String::from_utf8(bytes).unwrap_or_default().into(),
    ))
}
