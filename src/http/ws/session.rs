//! One WebSocket session: the read loop, the writer task, authentication by first frame, turns,
//! pushed events and the closing handshake. Generic over the socket's `Sink` and `Stream`
//! halves, so the loop is unit-tested with channels.
//!
//! Flow control: every frame the session will write on a client's behalf (a reply, an error
//! frame, an event) holds one of `max_in_flight` permits from the moment its request is read
//! until the frame is written. With all permits out the loop stops reading the socket, so a
//! client that sends faster than it reads is slowed by TCP, never dropped. The writer gives up
//! only when one write makes no progress for `write_timeout_secs`.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, Utf8Bytes};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};

use super::authorize;
use super::frames::{self, close, ReadFailure};
use crate::app::AppState;
use crate::auth::connections::ConnectionSlot;
use crate::auth::Principal;
use crate::config::WebSocketConfig;
use crate::error::{ApiError, ErrorCode};
use crate::events::EventSubscription;
use crate::ids::new_request_id;
use crate::native::control::{self, CancelOutcome, CommitGate};
use crate::native::reply::FrameInfo;
use crate::native::timing::ServerTiming;
use crate::native::Transport;
use crate::telemetry;

/// The route template WebSocket turns are logged under.
const WS_ROUTE: &str = "/api/v1/native/outreachpilot/ws";

/// Longest client-chosen request id.
const MAX_ID_LEN: usize = 128;
/// How long the session waits for the client's answer to its close frame.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(3);
/// How long shutdown waits for running turns to send their replies.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);
/// Pings, pongs and close frames need room in the queue beside replies.
const CONTROL_ROOM: usize = 2;

/// A frame for the writer, with the in-flight permit it holds until it is written. Boxed: the
/// queue's first block of slots is allocated with the connection, and a slot holding a pointer
/// instead of the frame keeps that block at a few hundred bytes for every idle socket.
type Outgoing = Box<(Message, Option<OwnedSemaphorePermit>)>;

fn outgoing(msg: Message, permit: Option<OwnedSemaphorePermit>) -> Outgoing {
    Box::new((msg, permit))
}

/// How a turn asks its session to close (a revoked key, too many failed auth frames). The first
/// request wins; `notify` keeps a permit when the loop is not waiting, so none is lost.
#[derive(Default)]
struct EndSignal {
    ending: std::sync::OnceLock<Ending>,
    notify: Notify,
}

impl EndSignal {
    fn request(&self, ending: Ending) {
        if self.ending.set(ending).is_ok() {
            self.notify.notify_one();
        }
    }
}

/// Most frames fed to the socket before one flush: bounds how much a single write (and its
/// timeout) covers.
const WRITE_BATCH: usize = 32;

/// How the connection was authenticated when the session starts.
pub(super) enum Credentials {
    /// `Authorization` on the upgrade request, already checked and charged to the org.
    Header {
        principal: Arc<Principal>,
        token: String,
    },
    /// None yet: the first frame must be an auth frame, before `deadline`.
    FirstFrame { deadline: tokio::time::Instant },
}

/// What every turn of an authenticated session shares.
struct Authed {
    /// The raw key: checked again on every frame, so a revoked key stops working.
    token: String,
    org_id: String,
    /// Failed auth frames on this connection.
    auth_failures: AtomicU32,
    /// Requests of this connection that can still be cancelled, by client id.
    in_flight: Mutex<HashMap<String, Arc<CommitGate>>>,
    /// Ids of the latest finished requests that took effect, so a late cancel hears
    /// `committed` rather than `unknown`.
    committed: Mutex<VecDeque<String>>,
    /// Text frames read but not yet registered by their turn. A `cancel` frame waits until the
    /// frames read before it are registered, so it never misses a request sent just before it.
    unregistered: AtomicUsize,
    registered: Notify,
}

/// Finished committed request ids remembered per connection.
const COMMITTED_MEMORY: usize = 256;
/// Longest wait of a cancel frame for earlier frames to register (they only need parsing).
const REGISTRATION_WAIT: Duration = Duration::from_secs(1);

/// A text frame's place in `Authed::unregistered`, given back once its turn has registered
/// (or found it is not a request).
struct Registration<'a> {
    authed: &'a Authed,
    done: bool,
}

impl Registration<'_> {
    fn done(&mut self) {
        if !self.done {
            self.done = true;
            if self.authed.unregistered.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.authed.registered.notify_waiters();
            }
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.done();
    }
}

/// Why the read loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    /// The client sent a close frame; the protocol layer echoes it with the same code.
    PeerClosed,
    /// The TCP connection went away without a closing handshake.
    PeerGone,
    /// The writer gave up (a write made no progress for `write_timeout_secs`, or failed).
    WriterGone,
    /// We close with this code and reason.
    Close(u16, &'static str),
}

/// Runs a session to its end. `slot` is the connection's place under the connection caps; it
/// is released when this returns.
pub(super) async fn run<S, R>(
    app: AppState,
    sink: S,
    mut stream: R,
    credentials: Credentials,
    mut slot: ConnectionSlot,
    peer: Option<IpAddr>,
    resume_after: Option<u64>,
) -> Ending
where
    S: Sink<Message, Error = axum::Error> + Send + Unpin + 'static,
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    // Borrowed, not cloned: the session's future is kept for every idle socket.
    let cfg = &app.config.websocket;
    let write_timeout = Duration::from_secs(cfg.write_timeout_secs);
    let (out_tx, out_rx) = mpsc::channel::<Outgoing>(cfg.outbound_queue.max(1) + CONTROL_ROOM);
    let mut writer = tokio::spawn(write_loop(sink, out_rx, write_timeout));
    // Turns that find the key revoked ask the loop to close.
    let end = Arc::new(EndSignal::default());
    let in_flight = Arc::new(Semaphore::new(cfg.max_in_flight));
    let mut permit: Option<OwnedSemaphorePermit> = None;

    // Events are for the sessions of the key that started the work, from authentication on.
    // Subscribed before the journal is read, so nothing falls between the two; what arrives
    // both ways is told apart by seq (`Resume`).
    let mut resume = Resume::default();
    let (mut authed, auth_deadline, mut events) = match credentials {
        Credentials::Header { principal, token } => {
            let events = app.events.subscribe(&principal.key_id);
            if let Some(after) = resume_after {
                Box::pin(resume.load(&app, &principal.key_id, after, &out_tx)).await;
            }
            (Some(open(&principal, token)), None, Some(events))
        }
        Credentials::FirstFrame { deadline } => (None, Some(deadline), None),
    };

    // Boxed, and only for a connection still to authenticate.
    let mut auth_deadline = auth_deadline.map(|d| Box::pin(tokio::time::sleep_until(d)));
    let inline_from = tokio::runtime::Handle::current().metrics().num_workers();
    let ping_every = Duration::from_secs(cfg.ping_interval_secs);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut last_seen = tokio::time::Instant::now();
    let mut shutdown_rx = app.shutdown_signal();
    let shutdown = async move {
        let _ = shutdown_rx.wait_for(|s| *s).await;
    };
    tokio::pin!(shutdown);

    let ending = loop {
        if permit.is_none() {
            permit = in_flight.clone().try_acquire_owned().ok();
        }
        tokio::select! {
            biased;
            _ = &mut writer => break Ending::WriterGone,
            () = end.notify.notified() => match end.ending.get() {
                Some(ending) => break *ending,
                None => continue,
            },
            () = &mut shutdown => {
                // Let turns already running finish and their replies go out first.
                drop(permit.take());
                let all = u32::try_from(cfg.max_in_flight).unwrap_or(u32::MAX);
                let _ = Box::pin(tokio::time::timeout(SHUTDOWN_DRAIN, in_flight.acquire_many(all))).await;
                break Ending::Close(close::GOING_AWAY, "server shutting down");
            }
            () = sleep_until_opt(&mut auth_deadline) => {
                let e = ApiError::new(ErrorCode::MissingAuth, "No credentials received")
                    .with_details(format!(
                        "send {{\"type\":\"auth\",\"token\":\"op_live_...\"}} within {} s of connecting",
                        cfg.auth_timeout_secs
                    ));
                queue(&out_tx, frames::error_frame(&e, None, &new_request_id()), permit.take()).await;
                break Ending::Close(close::POLICY, "authentication required");
            }
            p = in_flight.clone().acquire_owned(), if permit.is_none() => {
                permit = p.ok();
            }
            frame = stream.next(), if permit.is_some() => {
                last_seen = tokio::time::Instant::now();
                let msg = match frame {
                    None => break Ending::PeerGone,
                    Some(Err(e)) => match frames::read_failure(&e) {
                        ReadFailure::Gone => break Ending::PeerGone,
                        ReadFailure::Close(code, reason) => break Ending::Close(code, reason),
                    },
                    Some(Ok(m)) => m,
                };
                telemetry::ws_frame("in", frames::kind(&msg));
                match msg {
                    Message::Close(_) => break Ending::PeerClosed,
                    Message::Ping(_) | Message::Pong(_) => {}
                    Message::Binary(_) if authed.is_none() => {
                        let e = ApiError::new(ErrorCode::MissingAuth, "Expected an auth frame")
                            .with_details("the first frame must be {\"type\":\"auth\",\"token\":\"op_live_...\"} in a text frame");
                        queue(&out_tx, frames::error_frame(&e, None, &new_request_id()), permit.take()).await;
                        break Ending::Close(close::POLICY, "authentication required");
                    }
                    Message::Binary(data) if cfg.conformance_echo => {
                        queue(&out_tx, Message::Binary(data), permit.take()).await;
                    }
                    Message::Text(text) if cfg.conformance_echo && authed.is_some() => {
                        queue(&out_tx, Message::Text(text), permit.take()).await;
                    }
                    Message::Binary(_) => {
                        let e = ApiError::new(ErrorCode::UnsupportedMediaType, "Binary frames are not supported")
                            .with_details("send JSON in text frames");
                        queue(&out_tx, frames::error_frame(&e, None, &new_request_id()), permit.take()).await;
                    }
                    Message::Text(text) => match &authed {
                        Some(a) => {
                            let a = a.clone();
                            a.unregistered.fetch_add(1, Ordering::AcqRel);
                            let spread = app.ws_connections.open() < inline_from;
                            let (app, out, end) = (app.clone(), out_tx.clone(), end.clone());
                            let permit = permit.take();
                            let received = Instant::now();
                            let work = async move {
                                if let Some(reply) = turn(&app, &a, text, received, &out, &end, peer).await {
                                    queue(&out, reply, permit).await;
                                }
                            };
                            // With at least as many open sockets as worker threads, every
                            // core has sessions to run, and a frame answered without waiting
                            // (a cached read, a ping, a bad frame) is cheapest done in this
                            // first poll, saving a task. With fewer, a task of its own lets a
                            // pipelining client's frames use the idle cores. A frame that waits
                            // (the database, upstream, a write's own task) goes on in its own
                            // task either way, so the session keeps reading meanwhile.
                            let mut work = Box::pin(work);
                            if spread || futures_util::poll!(work.as_mut()).is_pending() {
                                tokio::spawn(work);
                            }
                        }
                        // Boxed, like the other rare steps below: the session's future is kept
                        // for every idle socket, sized by its largest await.
                        None => match Box::pin(first_frame(&app, text.as_str(), &mut slot, peer)).await {
                            Ok((principal, token, reply, frame_resume)) => {
                                queue(&out_tx, reply, permit.take()).await;
                                let a = open(&principal, token);
                                events = Some(app.events.subscribe(&principal.key_id));
                                if let Some(after) = frame_resume.or(resume_after) {
                                    Box::pin(resume.load(&app, &principal.key_id, after, &out_tx)).await;
                                }
                                authed = Some(a);
                                auth_deadline = None;
                            }
                            Err((reply, code, reason)) => {
                                queue(&out_tx, reply, permit.take()).await;
                                break Ending::Close(code, reason);
                            }
                        },
                    },
                }
            }
            // Missed events first, in order; live ones wait in their channel meanwhile.
            () = std::future::ready(()), if permit.is_some() && !resume.backlog.is_empty() => {
                let text = resume
                    .backlog
                    .pop_front()
                    .and_then(|event| Utf8Bytes::try_from(event.frame.clone()).ok());
                if let Some(text) = text {
                    queue(&out_tx, Message::Text(text), permit.take()).await;
                }
            }
            Some(event) = next_event(&mut events), if permit.is_some() && resume.backlog.is_empty() => {
                if !resume.is_new(&event) {
                    continue;
                }
                if let Ok(text) = Utf8Bytes::try_from(event.frame.clone()) {
                    queue(&out_tx, Message::Text(text), permit.take()).await;
                }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > ping_every * 2 {
                    break Ending::Close(close::GOING_AWAY, "no activity");
                }
                // A full queue means the writer is busy; its write timeout covers a dead peer.
                let _ = out_tx.try_send(outgoing(Message::Ping(Default::default()), None));
            }
        }
    };
    drop(permit);
    drop(events);
    Box::pin(finish(ending, &mut stream, out_tx, writer, write_timeout)).await;
    drop(slot);
    ending
}

/// A `resume_after` replay (DESIGN §21): the journaled events the client missed, and the
/// highest seq sent, below which live events are duplicates of replayed ones.
#[derive(Default)]
struct Resume {
    backlog: std::collections::VecDeque<Arc<crate::events::PublishedEvent>>,
    sent_through: Option<u64>,
}

impl Resume {
    /// Reads the journal of `key_id` after `after`. A store that does not answer costs the
    /// replay, not the session: an error frame says so and live events go on.
    async fn load(
        &mut self,
        app: &AppState,
        key_id: &str,
        after: u64,
        out: &mpsc::Sender<Outgoing>,
    ) {
        self.sent_through = Some(after);
        let state = app.bridge.state();
        let limit = app.config.control.max_replay_events;
        match crate::event_journal::replay(state.as_ref(), key_id, after, limit).await {
            Ok(events) => {
                if let Some(last) = events.last().and_then(|e| e.seq) {
                    self.sent_through = Some(last.max(after));
                }
                self.backlog = events.into();
            }
            Err(e) => {
                let details = format!(
                    "resume_after: missed events could not be read ({}); live events follow",
                    e.message
                );
                let e = e.with_details(details);
                let _ = out
                    .send(outgoing(
                        frames::error_frame(&e, None, &new_request_id()),
                        None,
                    ))
                    .await;
            }
        }
    }

    /// False for a live event the replay already sent (or the client had before it resumed).
    fn is_new(&self, event: &crate::events::PublishedEvent) -> bool {
        match (self.sent_through, event.seq) {
            (Some(through), Some(seq)) => seq > through,
            _ => true,
        }
    }
}

fn open(principal: &Principal, token: String) -> Arc<Authed> {
    Arc::new(Authed {
        token,
        org_id: principal.org_id.clone(),
        auth_failures: AtomicU32::new(0),
        in_flight: Mutex::new(HashMap::new()),
        committed: Mutex::new(VecDeque::new()),
        unregistered: AtomicUsize::new(0),
        registered: Notify::new(),
    })
}

async fn sleep_until_opt(deadline: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match deadline {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn next_event(
    events: &mut Option<EventSubscription>,
) -> Option<Arc<crate::events::PublishedEvent>> {
    match events {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Hands a frame to the writer, waiting for room (never dropping it). Fails only when the writer
/// is gone, and then there is nobody to write to.
async fn queue(out: &mpsc::Sender<Outgoing>, msg: Message, permit: Option<OwnedSemaphorePermit>) {
    let _ = out.send(outgoing(msg, permit)).await;
}

/// Writes queued frames in order; a frame's permit is released once it is written. Ends after a
/// close frame, when every sender is gone, or when a write fails or makes no progress for
/// `write_timeout`.
async fn write_loop<S>(
    mut sink: S,
    mut rx: mpsc::Receiver<Outgoing>,
    write_timeout: Duration,
) -> Result<(), ()>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    let mut permits = Vec::new();
    while let Some(first) = rx.recv().await {
        // Frames already queued go out together: fed to the socket's buffer, then one flush
        // (one write to the peer) for the lot.
        let mut closing = false;
        let mut next = Some(first);
        let batch = async {
            let mut fed = 0;
            while let Some((msg, permit)) = next.take().map(|queued| *queued) {
                closing = matches!(msg, Message::Close(_));
                let kind = frames::kind(&msg);
                sink.feed(msg).await?;
                telemetry::ws_frame("out", kind);
                permits.extend(permit);
                fed += 1;
                if closing || fed == WRITE_BATCH {
                    break;
                }
                next = rx.try_recv().ok();
            }
            sink.flush().await
        };
        // Boxed while a batch is written: an idle writer then holds only its receiver.
        match Box::pin(tokio::time::timeout(write_timeout, batch)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return Err(()),
        }
        // Written: their turns' slots are free again.
        permits.clear();
        if closing {
            break;
        }
    }
    let _ = tokio::time::timeout(write_timeout, sink.close()).await;
    Ok(())
}

/// Ends the session: sends our close frame and waits for the client's answer, or completes the
/// client's closing handshake, then stops the writer.
async fn finish<R>(
    ending: Ending,
    stream: &mut R,
    out_tx: mpsc::Sender<Outgoing>,
    mut writer: tokio::task::JoinHandle<Result<(), ()>>,
    write_timeout: Duration,
) where
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    match ending {
        Ending::Close(code, reason) => {
            telemetry::ws_close(close::label(code), reason_label(reason));
            // Queued behind replies already waiting, so they go out first.
            let queued = tokio::time::timeout(
                write_timeout,
                out_tx.send(outgoing(frames::close_frame(code, reason), None)),
            )
            .await;
            drop(out_tx);
            if matches!(queued, Ok(Ok(()))) {
                // Read on until the client answers the close (or goes): the protocol layer then
                // ends the TCP connection from our side, as RFC 6455 §7.1.1 asks of servers.
                let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
                    while let Some(Ok(_)) = stream.next().await {}
                })
                .await;
            }
        }
        Ending::PeerClosed => {
            telemetry::ws_close("echo", "peer_closed");
            drop(out_tx);
            // Reading once more flushes the echoed close frame and ends the connection.
            let _ = tokio::time::timeout(CLOSE_HANDSHAKE, stream.next()).await;
        }
        Ending::PeerGone => {
            telemetry::ws_close("none", "peer_gone");
            drop(out_tx);
        }
        Ending::WriterGone => {
            telemetry::ws_close("none", "write_stalled");
            drop(out_tx);
            writer.abort();
            return;
        }
    }
    if tokio::time::timeout(CLOSE_HANDSHAKE, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

/// Close reasons as bounded metric labels.
fn reason_label(reason: &'static str) -> &'static str {
    match reason {
        "server shutting down" => "shutdown",
        "no activity" => "idle",
        "authentication required"
        | "credentials no longer valid"
        | "too many failed auth frames" => "auth",
        "too many connections" => "cap",
        "message too big" => "too_big",
        "invalid UTF-8" => "invalid_utf8",
        "protocol error" => "protocol",
        _ => "other",
    }
}

/// The fields of an auth or ping frame; anything else in the frame is ignored.
#[derive(Deserialize)]
struct ControlFrame {
    #[serde(rename = "type")]
    frame_type: Option<String>,
    token: Option<String>,
    id: Option<Value>,
    /// Replay the events after this seq before live ones (DESIGN §21).
    resume_after: Option<Value>,
}

/// The first frame of a connection without an `Authorization` header: it must authenticate.
/// On success: the principal, its token and the `auth_ok` frame. On failure: the error frame and
/// the close code.
async fn first_frame(
    app: &AppState,
    raw: &str,
    slot: &mut ConnectionSlot,
    peer: Option<IpAddr>,
) -> Result<(Arc<Principal>, String, Message, Option<u64>), (Message, u16, &'static str)> {
    let rid = new_request_id();
    let head: Option<ControlFrame> = serde_json::from_str(raw).ok();
    let id = head.as_ref().and_then(|h| h.id.as_ref());
    let id_str = id.and_then(Value::as_str);
    let refuse = |e: ApiError| {
        (
            frames::error_frame(&e, id_str, &rid),
            close::POLICY,
            "authentication required",
        )
    };
    let token = match head
        .as_ref()
        .map(|h| (h.frame_type.as_deref(), h.token.as_deref()))
    {
        Some((Some("auth"), Some(t))) => t,
        _ => {
            return Err(refuse(
                ApiError::new(ErrorCode::MissingAuth, "Authenticate first").with_details(
                    "the first frame must be {\"type\":\"auth\",\"token\":\"op_live_...\"}",
                ),
            ))
        }
    };
    let resume_after = match head.as_ref().and_then(|h| h.resume_after.as_ref()) {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) => Some(n),
            None => {
                return Err(refuse(ApiError::validation(
                    "resume_after",
                    "expected a non-negative integer (the last event seq the client has)",
                )))
            }
        },
    };
    let principal = match checked_auth(app, token, peer).await {
        Ok(p) => p,
        Err(e) => return Err(refuse(e)),
    };
    if let Err(e) = app.ws_connections.admit(slot, &principal.org_id).await {
        return Err((
            frames::error_frame(&e, id_str, &rid),
            close::TRY_AGAIN_LATER,
            "too many connections",
        ));
    }
    let ok = frames::auth_ok(&principal.org_id, id);
    Ok((principal, token.to_string(), ok, resume_after))
}

/// Checks an auth frame's token, unless its source address already failed too often; counts
/// failures per address.
async fn checked_auth(
    app: &AppState,
    token: &str,
    peer: Option<IpAddr>,
) -> Result<Arc<Principal>, ApiError> {
    if let Some(ip) = peer {
        if let Err(retry) = app.ws_auth_failures.check(ip) {
            telemetry::ws_auth_failure("limited");
            return Err(
                ApiError::new(ErrorCode::RateLimited, "Too many failed auth frames")
                    .with_details(format!(
                    "at most {} failed auth frames per minute from one address; retry in {retry} s",
                    app.config.websocket.max_auth_failures_per_address
                ))
                    .with_spoken("Too many sign-in attempts. Please wait a minute.")
                    .with_retry_after(retry),
            );
        }
    }
    let result = authorize(app, None, Some(token)).await;
    if let (Err(e), Some(ip)) = (&result, peer) {
        if frames::is_definitive_auth_failure(e.code) {
            telemetry::ws_auth_failure("refused");
            app.ws_auth_failures.record_failure(ip);
        }
    }
    result
}

/// One text frame of an authenticated session in, at most one frame out.
async fn turn(
    app: &AppState,
    authed: &Authed,
    raw: Utf8Bytes,
    received: Instant,
    out: &mpsc::Sender<Outgoing>,
    end: &EndSignal,
    peer: Option<IpAddr>,
) -> Option<Message> {
    let mut registration = Registration {
        authed,
        done: false,
    };
    let request_id = new_request_id();
    let t = Instant::now();
    let parsed: Result<Value, ApiError> = crate::http::extract::parse_json_value(raw.as_bytes());
    let body = match parsed {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            return Some(frames::error_frame(
                &ApiError::validation("frame", "expected a JSON object"),
                None,
                &request_id,
            ))
        }
        Err(e) => return Some(frames::error_frame(&e, None, &request_id)),
    };
    let frame_type = body.get("type").and_then(Value::as_str);
    if frame_type == Some("ping") {
        // A keepalive touches nothing, so it needs no fresh verdict on the key (and keeps
        // answering while the key source is unreachable).
        return Some(frames::pong(body.get("id")));
    }
    let id_str = body.get("id").and_then(Value::as_str);
    // The key is checked again on every frame through the auth cache (no database work while
    // the verdict is cached), so a revoked key stops working on open connections as over HTTP.
    // Only a verdict on the key ends the session; failing to get one (store or upstream down)
    // is an error frame like any other transient failure.
    let principal = match authorize(app, None, Some(&authed.token)).await {
        Ok(p) => p,
        Err(e) if frames::is_definitive_auth_failure(e.code) => {
            let _ = out
                .send(outgoing(frames::error_frame(&e, id_str, &request_id), None))
                .await;
            end.request(Ending::Close(close::POLICY, "credentials no longer valid"));
            return None;
        }
        Err(e) => return Some(frames::error_frame(&e, id_str, &request_id)),
    };
    if frame_type == Some("auth") {
        return reauth(app, authed, &body, &request_id, out, end, peer).await;
    }
    if frame_type == Some("cancel") {
        registration.done();
        return Some(cancel(authed, &body, &request_id).await);
    }
    let id = match body.get("id") {
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= MAX_ID_LEN => {
            Value::String(s.clone())
        }
        Some(Value::String(_)) => {
            return Some(frames::error_frame(
                &ApiError::validation("id", format!("must be 1 to {MAX_ID_LEN} characters")),
                None,
                &request_id,
            ))
        }
        Some(_) => {
            return Some(frames::error_frame(
                &ApiError::validation("id", "expected a string"),
                None,
                &request_id,
            ))
        }
        None => {
            return Some(frames::error_frame(
                &ApiError::validation("id", "missing: every request frame needs a client id"),
                None,
                &request_id,
            ))
        }
    };
    // Only now is this frame a turn (not a ping, auth or cancel frame, nor refused before it
    // reached the pipeline): its timing, and its trace when traces are exported, start here
    // with the clock at the frame's arrival.
    let mut timing = ServerTiming::starting_at(received);
    if let Some(trace) = timing.trace() {
        trace.record_request_id(&request_id);
    }
    timing.record("parse", t.elapsed());
    let gate = CommitGate::new();
    let key = id.as_str().unwrap_or_default().to_string();
    lock(&authed.in_flight).insert(key.clone(), gate.clone());
    registration.done();
    let outcome = match app.charge(&principal, "ws") {
        Ok(_) => {
            let work = control::with_gate(
                gate.clone(),
                app.bridge.handle(
                    principal.clone(),
                    Value::Object(body),
                    timing,
                    Transport::WebSocket,
                ),
            );
            with_progress(work, &app.config.websocket, &id, out).await
        }
        // Under the gate too: a cancel that won the race is answered CANCELLED, as promised.
        Err((e, _)) => {
            let reject = async { app.bridge.reject(e, timing, Transport::WebSocket) };
            control::with_gate(gate.clone(), reject).await
        }
    };
    finished(authed, key, &gate);
    // The same access line as an HTTP request, one per turn.
    let status = outcome.status();
    let elapsed_ms = outcome.performance.server_elapsed_ms;
    if status >= 500 {
        tracing::warn!(request_id = %request_id, method = "WS", route = WS_ROUTE, status, elapsed_ms, "turn failed");
    } else if crate::http::middleware::access_sampled(app.config.access_log_sample) {
        tracing::info!(request_id = %request_id, method = "WS", route = WS_ROUTE, status, elapsed_ms, "turn");
    }
    let bytes = outcome.envelope_bytes(&request_id, Some(FrameInfo { id: id.as_str() }));
    // serde_json writes UTF-8, so this conversion cannot fail.
    Utf8Bytes::try_from(bytes).ok().map(Message::Text)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one still holds consistent data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A request's turn ended: it can no longer be cancelled; if it took effect, a late cancel
/// still hears `committed`.
fn finished(authed: &Authed, key: String, gate: &Arc<CommitGate>) {
    {
        let mut in_flight = lock(&authed.in_flight);
        if in_flight.get(&key).is_some_and(|g| Arc::ptr_eq(g, gate)) {
            in_flight.remove(&key);
        }
    }
    if gate.is_committed() {
        let mut committed = lock(&authed.committed);
        if committed.len() >= COMMITTED_MEMORY {
            committed.pop_front();
        }
        committed.push_back(key);
    }
}

/// `{"type":"cancel","id":X}` (DESIGN §21): cancels request X of this connection if it has not
/// passed its commit point, and says which way it went.
async fn cancel(
    authed: &Authed,
    body: &serde_json::Map<String, Value>,
    request_id: &str,
) -> Message {
    let id = match body.get("id") {
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= MAX_ID_LEN => s.clone(),
        _ => {
            return frames::error_frame(
                &ApiError::validation(
                    "id",
                    format!("a cancel frame names the request to cancel: a string of 1 to {MAX_ID_LEN} characters"),
                ),
                None,
                request_id,
            )
        }
    };
    // Frames read before this one may still be registering.
    let _ = tokio::time::timeout(REGISTRATION_WAIT, async {
        loop {
            let notified = authed.registered.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if authed.unregistered.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    })
    .await;
    let gate = lock(&authed.in_flight).get(&id).cloned();
    let outcome = match gate.map(|g| g.cancel()) {
        Some(CancelOutcome::NotStarted) => "not_started",
        Some(CancelOutcome::Committed) => "committed",
        None if lock(&authed.committed).contains(&id) => "committed",
        None => "unknown",
    };
    telemetry::ws_cancel(outcome);
    frames::cancelled(&id, outcome)
}

/// Runs a turn; if it is not done after `ack_after_ms`, a `progress` frame goes out once so a
/// voice client can speak filler instead of silence.
async fn with_progress<F: std::future::Future>(
    work: F,
    cfg: &WebSocketConfig,
    id: &Value,
    out: &mpsc::Sender<Outgoing>,
) -> F::Output {
    if cfg.ack_after_ms == 0 {
        return work.await;
    }
    tokio::pin!(work);
    tokio::select! {
        biased;
        done = &mut work => done,
        () = tokio::time::sleep(Duration::from_millis(cfg.ack_after_ms)) => {
            let _ = out.send(outgoing(frames::progress(id), None)).await;
            work.await
        }
    }
}

/// An auth frame on an authenticated connection: checked like the first one, but it cannot move
/// the connection to another organisation. After `max_auth_failures_per_connection` failures
/// the connection is closed with 1008.
async fn reauth(
    app: &AppState,
    authed: &Authed,
    body: &serde_json::Map<String, Value>,
    request_id: &str,
    out: &mpsc::Sender<Outgoing>,
    end: &EndSignal,
    peer: Option<IpAddr>,
) -> Option<Message> {
    let id = body.get("id");
    let id_str = id.and_then(Value::as_str);
    let token = body.get("token").and_then(Value::as_str).unwrap_or("");
    let e = match checked_auth(app, token, peer).await {
        Ok(p) if p.org_id == authed.org_id => return Some(frames::auth_ok(&authed.org_id, id)),
        Ok(_) => ApiError::validation(
            "token",
            "belongs to another organization than this connection",
        ),
        Err(e) => e,
    };
    let reply = frames::error_frame(&e, id_str, request_id);
    let failures = authed.auth_failures.fetch_add(1, Ordering::AcqRel) + 1;
    if failures < app.config.websocket.max_auth_failures_per_connection {
        return Some(reply);
    }
    // The error frame goes out before the close the loop will queue.
    let _ = out.send(outgoing(reply, None)).await;
    end.request(Ending::Close(close::POLICY, "too many failed auth frames"));
    None
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::{Context, Poll};

    use futures_util::stream;
    use tungstenite::error::{CapacityError, ProtocolError};

    use super::*;
    use crate::app::App;
    use crate::config::Config;
    use crate::domain::{Plan, Scope};

    fn app(adjust: impl FnOnce(&mut Config)) -> (tempfile::TempDir, AppState) {
        let (dir, store) = crate::store::test_store();
        let mut config = Config::default();
        adjust(&mut config);
        (dir, App::new(config, store, None).expect("app"))
    }

    fn header_credentials() -> Credentials {
        Credentials::Header {
            principal: Arc::new(Principal {
                org_id: "o".into(),
                key_id: "k".into(),
                scopes: Scope::ALL.to_vec(),
                plan: Plan::Pro,
                rate_limit: Some(0),
                upstream_key: None,
                two_step: false,
            }),
            token: "op_live_unused".into(),
        }
    }

    /// A sink that hands every written frame to a channel.
    fn channel_sink(
        tx: mpsc::UnboundedSender<Message>,
    ) -> Pin<Box<dyn Sink<Message, Error = axum::Error> + Send>> {
        Box::pin(futures_util::sink::unfold(
            tx,
            |tx, msg: Message| async move {
                tx.send(msg)
                    .map_err(|_| axum::Error::new(std::io::Error::other("reader gone")))?;
                Ok::<_, axum::Error>(tx)
            },
        ))
    }

    /// A peer that never reads: no write ever completes.
    struct StuckSink;

    impl Sink<Message> for StuckSink {
        type Error = axum::Error;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
            Poll::Pending
        }
        fn start_send(self: Pin<&mut Self>, _: Message) -> Result<(), axum::Error> {
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
            Poll::Pending
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
            Poll::Pending
        }
    }

    fn close_code(m: &Message) -> Option<u16> {
        match m {
            Message::Close(Some(f)) => Some(f.code),
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn read_errors_close_with_their_rfc6455_code() {
        let cases = [
            (
                tungstenite::Error::Protocol(ProtocolError::NonZeroReservedBits),
                1002,
            ),
            (tungstenite::Error::Utf8("bad".into()), 1007),
            (
                tungstenite::Error::Capacity(CapacityError::MessageTooLong {
                    size: 2,
                    max_size: 1,
                }),
                1009,
            ),
        ];
        for (error, code) in cases {
            let (_dir, app) = app(|_| {});
            let slot = app.ws_connections.acquire_total().unwrap();
            let (tx, mut rx) = mpsc::unbounded_channel();
            let frames = stream::iter(vec![Err(axum::Error::new(error))]);
            let ending = run(
                app,
                channel_sink(tx),
                frames,
                header_credentials(),
                slot,
                None,
                None,
            )
            .await;
            assert!(
                matches!(ending, Ending::Close(c, _) if c == code),
                "{ending:?}"
            );
            let mut written = Vec::new();
            while let Some(m) = rx.recv().await {
                written.push(m);
            }
            assert_eq!(
                written.last().and_then(close_code),
                Some(code),
                "{written:?}"
            );
        }
    }

    /// Every idle socket keeps its session's future: rare steps are boxed so it stays small.
    #[tokio::test]
    async fn the_session_future_stays_small() {
        let (_dir, app) = app(|_| {});
        let slot = app.ws_connections.acquire_unauthenticated().unwrap();
        let (tx, _rx) = mpsc::unbounded_channel();
        let session = run(
            app.clone(),
            channel_sink(tx),
            Box::pin(stream::pending::<Result<Message, axum::Error>>()),
            Credentials::FirstFrame {
                deadline: tokio::time::Instant::now(),
            },
            slot,
            None,
            None,
        );
        let size = std::mem::size_of_val(&session);
        let (_otx, orx) = mpsc::channel::<Outgoing>(1);
        let (wtx, _wrx) = mpsc::unbounded_channel();
        let writer = write_loop(channel_sink(wtx), orx, Duration::from_secs(1));
        let writer_size = std::mem::size_of_val(&writer);
        // Measured: 1,464 and 240 bytes (debug build). Before boxing the rare steps, the
        // session was 4 KiB of the 13.8 KB an idle socket cost.
        assert!(size <= 2048, "session future is {size} bytes");
        assert!(writer_size <= 512, "writer future is {writer_size} bytes");
    }

    #[tokio::test(start_paused = true)]
    async fn pings_do_not_extend_the_auth_deadline() {
        let (_dir, app) = app(|c| c.websocket.auth_timeout_secs = 5);
        let slot = app.ws_connections.acquire_unauthenticated().unwrap();
        let started = tokio::time::Instant::now();
        // A ping every 0.7 s, for ever.
        let pings = stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            Some((Ok(Message::Ping(Default::default())), ()))
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        let deadline = started + Duration::from_secs(5);
        let ending = run(
            app.clone(),
            channel_sink(tx),
            Box::pin(pings),
            Credentials::FirstFrame { deadline },
            slot,
            None,
            None,
        )
        .await;
        assert_eq!(ending, Ending::Close(1008, "authentication required"));
        let closed_after = started.elapsed();
        assert!(closed_after >= Duration::from_secs(5), "{closed_after:?}");
        assert!(closed_after < Duration::from_secs(5) + CLOSE_HANDSHAKE + Duration::from_secs(1));
        let error = rx.recv().await.unwrap();
        let Message::Text(t) = error else {
            panic!("{error:?}")
        };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        assert_eq!(v["error"]["code"], "MISSING_AUTH");
        assert_eq!(rx.recv().await.as_ref().and_then(close_code), Some(1008));
        assert_eq!(app.ws_connections.unauthenticated(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_never_reads_stops_being_read_and_is_dropped_after_the_write_timeout() {
        let (_dir, app) = app(|c| {
            c.websocket.max_in_flight = 2;
            c.websocket.write_timeout_secs = 10;
        });
        let slot = app.ws_connections.acquire_total().unwrap();
        let read = Arc::new(AtomicUsize::new(0));
        let counter = read.clone();
        // An endless supply of binary frames, each answered with an error frame.
        let frames = stream::repeat_with(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(Message::Binary(vec![1].into()))
        });
        let started = tokio::time::Instant::now();
        let ending = run(
            app.clone(),
            StuckSink,
            frames,
            header_credentials(),
            slot,
            None,
            None,
        )
        .await;
        assert_eq!(ending, Ending::WriterGone);
        // Reading stopped once `max_in_flight` answers were waiting to be written.
        assert_eq!(read.load(Ordering::SeqCst), 2);
        assert!(started.elapsed() >= Duration::from_secs(10));
        assert_eq!(app.ws_connections.open(), 0);
    }
}
