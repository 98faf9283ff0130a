//! The Native Voice Bridge over WebSocket: auth at the door and in the first frame, request and
//! reply frames matched by id, pipelining under backpressure, malformed/binary/oversized frames,
//! RFC 6455 close codes, app pings, rate limiting per frame and of failed auth frames, the
//! absolute auth deadline and the unauthenticated cap, replies of any size, server-pushed events,
//! reconnect without double effects, and graceful shutdown with 1001.

use crate::common;
use crate::common::ws as ws_common;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use pilot_bridge::config::Config;
use pilot_bridge::demo;
use pilot_bridge::domain::{Plan, Scope};
use pilot_bridge::store::orgs;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data as OpData, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use ws_common::{next_json, send, Ws};

const KEY: &str = "op_live_WsTestKeyWsTestKeyWsTestKeyWsTest01";
const WAIT: Duration = Duration::from_secs(10);

async fn demo_server(adjust: impl FnOnce(&mut Config), rate_limit: u32) -> common::TestServer {
    let server = common::start_with(adjust).await;
    server
        .store()
        .write(move |tx| {
            demo::seed(tx)?;
            orgs::update(
                tx,
                demo::DEMO_ORG,
                &orgs::OrgChanges {
                    rate_limit: Some(rate_limit),
                    ..Default::default()
                },
            )?;
            demo::ensure_key(tx, Some(KEY))
        })
        .await
        .expect("seed demo");
    server
}

fn ws_url(s: &common::TestServer) -> String {
    format!("ws://{}/api/v1/native/outreachpilot/ws", s.server.addr)
}

async fn connect(s: &common::TestServer, key: Option<&str>) -> Ws {
    let mut req = ws_url(s).into_client_request().expect("request");
    if let Some(k) = key {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {k}").parse().expect("header"),
        );
    }
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");
    assert_eq!(resp.status(), 101);
    ws
}

/// Reads until a close frame and returns its code.
async fn close_code(ws: &mut Ws) -> (u16, Vec<Value>) {
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), seen),
            Some(Ok(Message::Close(None))) | None => return (0, seen),
            Some(Ok(Message::Text(t))) => {
                seen.push(serde_json::from_str(t.as_str()).unwrap_or(Value::Null))
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) => return (0, seen),
        }
    }
}

fn lookup(id: &str) -> Value {
    json!({ "id": id, "action": { "type": "lookup_person", "personName": "Sarah Chen" } })
}

#[tokio::test]
async fn header_auth_request_and_reply_frames() {
    let s = demo_server(|_| {}, 0).await;
    let mut ws = connect(&s, Some(KEY)).await;
    send(&mut ws, lookup("r1")).await;
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["id"], "r1");
    assert_eq!(reply["ok"], true);
    assert_eq!(reply["data"]["mode"], "result");
    assert!(reply["data"]["spoken_summary"]
        .as_str()
        .unwrap()
        .starts_with("Sarah Chen is VP of Engineering"));
    let timing = reply["meta"]["server_timing"]
        .as_str()
        .expect("server_timing");
    assert!(timing.contains("resolve;dur="), "{timing}");
    let total = reply["data"]["performance"]["server_elapsed_ms"]
        .as_f64()
        .unwrap();
    assert!(
        timing.ends_with(&format!("total;dur={total:.3}")),
        "{timing} vs {total}"
    );
    assert!(reply["meta"]["request_id"]
        .as_str()
        .unwrap()
        .starts_with("req_"));
}

#[tokio::test]
async fn first_frame_auth_then_requests() {
    let s = demo_server(|_| {}, 0).await;
    let mut ws = connect(&s, None).await;
    send(&mut ws, json!({ "type": "auth", "token": KEY })).await;
    let ack = next_json(&mut ws).await;
    assert_eq!(ack["type"], "auth_ok");
    send(&mut ws, lookup("a")).await;
    assert_eq!(next_json(&mut ws).await["data"]["mode"], "result");
}

#[tokio::test]
async fn bad_credentials_are_refused_before_or_after_upgrade() {
    let s = demo_server(|_| {}, 0).await;
    // Before the upgrade: plain 401 envelope.
    let mut req = ws_url(&s).into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", "Bearer op_live_nope".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 401);
            let body: Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or(b"{}")).unwrap();
            assert_eq!(body["error"]["code"], "INVALID_API_KEY");
        }
        other => panic!("expected 401, got {other:?}"),
    }
    // After the upgrade: error frame, then close 1008.
    let mut ws = connect(&s, None).await;
    send(&mut ws, json!({ "type": "auth", "token": "op_live_nope" })).await;
    let (code, frames) = close_code(&mut ws).await;
    assert_eq!(code, 1008);
    assert_eq!(frames[0]["error"]["code"], "INVALID_API_KEY");
    // A request before authenticating.
    let mut ws = connect(&s, None).await;
    send(&mut ws, lookup("x")).await;
    let (code, frames) = close_code(&mut ws).await;
    assert_eq!(code, 1008);
    assert_eq!(frames[0]["error"]["code"], "MISSING_AUTH");
    assert_eq!(frames[0]["id"], "x");
}

#[tokio::test]
async fn silent_unauthenticated_clients_are_closed_after_the_auth_timeout() {
    let s = demo_server(|c| c.websocket.auth_timeout_secs = 1, 0).await;
    let mut ws = connect(&s, None).await;
    let (code, frames) = close_code(&mut ws).await;
    assert_eq!(code, 1008);
    assert_eq!(frames[0]["error"]["code"], "MISSING_AUTH");
}

/// A client socket with a small receive buffer, so the server's writes back up quickly.
async fn connect_small_buffer(s: &common::TestServer) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(s.server.addr).await.unwrap();
    let mut req = ws_url(s).into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (ws, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    ws
}

#[tokio::test]
async fn pipelined_requests_all_get_their_own_reply() {
    // Small queues and a small client receive buffer: the server must wait for the client
    // rather than drop it while 200 replies (about 2 KB each) back up.
    let s = demo_server(
        |c| {
            c.websocket.outbound_queue = 4;
            c.websocket.max_in_flight = 4;
        },
        0,
    )
    .await;
    let mut ws = connect_small_buffer(&s).await;
    let n = 200;
    for i in 0..n {
        send(&mut ws, lookup(&format!("p{i}"))).await;
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..n {
        let r = next_json(&mut ws).await;
        assert_eq!(r["ok"], true, "{r}");
        assert!(seen.insert(r["id"].as_str().unwrap().to_string()));
    }
    assert_eq!(seen.len(), n);
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_connection_stays_open() {
    let s = demo_server(|_| {}, 0).await;
    let mut ws = connect(&s, Some(KEY)).await;
    ws.send(Message::Text("{not json".into())).await.unwrap();
    let e = next_json(&mut ws).await;
    assert_eq!(e["ok"], false);
    assert_eq!(e["error"]["code"], "VALIDATION_ERROR");

    send(&mut ws, json!({ "action": { "type": "undo_last" } })).await;
    let e = next_json(&mut ws).await;
    assert_eq!(e["error"]["code"], "VALIDATION_ERROR");
    assert!(e["error"]["details"].as_str().unwrap().starts_with("id:"));

    send(
        &mut ws,
        json!({ "id": "v1", "action": { "type": "add_to_campaign", "contactRef": "Sarah Chen" } }),
    )
    .await;
    let e = next_json(&mut ws).await;
    assert_eq!(e["id"], "v1");
    assert_eq!(e["error"]["details"], "action.campaignRef: missing");
    assert!(e["meta"]["server_timing"]
        .as_str()
        .unwrap()
        .contains("total;dur="));

    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    let e = next_json(&mut ws).await;
    assert_eq!(e["error"]["code"], "UNSUPPORTED_MEDIA_TYPE");

    send(&mut ws, json!({ "type": "ping", "id": "hb" })).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({ "type": "pong", "id": "hb" })
    );

    send(&mut ws, lookup("still-open")).await;
    assert_eq!(next_json(&mut ws).await["id"], "still-open");
}

#[tokio::test]
async fn oversized_messages_close_with_1009() {
    let s = demo_server(|_| {}, 0).await;
    let mut ws = connect(&s, Some(KEY)).await;
    let big = json!({ "id": "big", "action": { "type": "note_on_contact", "contactRef": "Sarah Chen", "note": "x".repeat(70 * 1024) } });
    let _ = ws.send(Message::Text(big.to_string().into())).await;
    let (code, _) = close_code(&mut ws).await;
    assert_eq!(code, 1009);
}

#[tokio::test]
async fn each_frame_counts_against_the_rate_limit() {
    let s = demo_server(|_| {}, 3).await;
    let mut ws = connect(&s, Some(KEY)).await;
    for i in 0..4 {
        send(&mut ws, lookup(&format!("r{i}"))).await;
    }
    let mut codes = Vec::new();
    for _ in 0..4 {
        let r = next_json(&mut ws).await;
        codes.push(r["error"]["code"].as_str().unwrap_or("OK").to_string());
    }
    assert_eq!(codes.iter().filter(|c| *c == "OK").count(), 3, "{codes:?}");
    assert_eq!(
        codes.iter().filter(|c| *c == "RATE_LIMITED").count(),
        1,
        "{codes:?}"
    );
    // The connection is not dropped.
    send(&mut ws, json!({ "type": "ping" })).await;
    assert_eq!(next_json(&mut ws).await["type"], "pong");
}

#[tokio::test]
async fn resending_after_reconnect_is_a_duplicate_not_a_second_effect() {
    let s = demo_server(|_| {}, 0).await;
    let note = json!({ "id": "n1", "idempotencyKey": "ws-note-1",
        "action": { "type": "note_on_contact", "contactRef": "John Smith", "note": "Call back Monday" } });
    let mut ws = connect(&s, Some(KEY)).await;
    send(&mut ws, note.clone()).await;
    // Drop the connection without reading the reply, as a client that lost its network would.
    drop(ws);
    let mut ws = connect(&s, Some(KEY)).await;
    send(&mut ws, note.clone()).await;
    let r = next_json(&mut ws).await;
    assert_eq!(r["ok"], true);
    let first_mode = r["data"]["mode"].as_str().unwrap().to_string();
    send(&mut ws, json!({ "id": "n2", "idempotencyKey": "ws-note-1",
        "action": { "type": "note_on_contact", "contactRef": "John Smith", "note": "Call back Monday" } })).await;
    let r2 = next_json(&mut ws).await;
    assert_eq!(r2["data"]["mode"], "duplicate");
    assert!(first_mode == "duplicate" || first_mode == "result");
    let notes = s.client(KEY).get_query("/notes", &[("limit", "100")]).await;
    let count = notes
        .ok(200)
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["content"] == "Call back Monday")
        .count();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn connections_per_org_are_capped() {
    let s = demo_server(|c| c.websocket.max_connections_per_org = 1, 0).await;
    let _first = connect(&s, Some(KEY)).await;
    let mut req = ws_url(&s).into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 429),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn key_without_native_scope_is_refused() {
    let s = demo_server(|_| {}, 0).await;
    s.create_org("other", Plan::Pro, Some(0)).await;
    let key = s.create_key("other", &[Scope::Contacts]).await;
    let mut req = ws_url(&s).into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001() {
    let s = demo_server(|_| {}, 0).await;
    let mut ws = connect(&s, Some(KEY)).await;
    send(&mut ws, lookup("before")).await;
    assert_eq!(next_json(&mut ws).await["id"], "before");
    let common::TestServer { server, dir, .. } = s;
    let stopping = tokio::spawn(server.shutdown());
    let (code, _) = close_code(&mut ws).await;
    assert_eq!(code, u16::from(CloseCode::Away));
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("shutdown finishes")
        .unwrap();
    drop(dir);
}

#[tokio::test]
async fn a_client_that_never_reads_is_disconnected_after_the_write_timeout() {
    let s = demo_server(
        |c| {
            c.websocket.outbound_queue = 4;
            c.websocket.max_in_flight = 4;
            c.websocket.write_timeout_secs = 1;
        },
        0,
    )
    .await;
    let mut ws = connect_small_buffer(&s).await;
    // Every frame replays the same stored 9 KB reply (one note, one key), so replies are big
    // and cheap; we never read them.
    let note = "n".repeat(9_000);
    let mut refused = false;
    for i in 0..2_000 {
        let frame = json!({ "id": format!("f{i}"), "idempotencyKey": "big-note",
            "action": { "type": "note_on_contact", "contactRef": "John Smith", "note": note } });
        let sent = tokio::time::timeout(
            Duration::from_secs(2),
            ws.send(Message::Text(frame.to_string().into())),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            refused = true;
            break;
        }
    }
    assert!(
        refused,
        "the server kept reading frames from a client that never reads its replies"
    );
    // The server lets go of the connection once a write made no progress for 1 s.
    let deadline = tokio::time::Instant::now() + WAIT;
    while s.server.app.ws_connections.open() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connection still counted as open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn silent_peers_are_closed_after_two_ping_intervals() {
    let s = demo_server(|c| c.websocket.ping_interval_secs = 1, 0).await;
    let mut ws = connect(&s, Some(KEY)).await;
    // Not reading means not answering the server's pings either.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let (code, _) = close_code(&mut ws).await;
    assert_eq!(code, 1001);
}

#[tokio::test]
async fn answering_pings_keeps_the_connection_open() {
    let s = demo_server(|c| c.websocket.ping_interval_secs = 1, 0).await;
    let mut ws = connect(&s, Some(KEY)).await;
    // Reading lets the client answer protocol pings automatically.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(3_500);
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(Ok(Message::Close(_)))) =
            tokio::time::timeout(Duration::from_millis(200), ws.next()).await
        {
            panic!("closed although the client answered pings");
        }
    }
    send(&mut ws, lookup("alive")).await;
    assert_eq!(next_json(&mut ws).await["id"], "alive");
}

#[tokio::test]
async fn a_revoked_key_stops_working_on_an_open_connection() {
    let s = demo_server(|c| c.auth.key_cache_ttl_secs = 1, 0).await;
    let key = s.create_key(demo::DEMO_ORG, Scope::ALL).await;
    let mut ws = connect(&s, Some(&key)).await;
    send(&mut ws, lookup("before")).await;
    assert_eq!(next_json(&mut ws).await["ok"], true);
    s.revoke_key(&key).await;
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    send(&mut ws, lookup("after")).await;
    let (code, frames) = close_code(&mut ws).await;
    assert_eq!(code, 1008);
    assert_eq!(frames[0]["error"]["code"], "INVALID_API_KEY");
}

#[tokio::test]
async fn a_second_auth_frame_is_checked_too() {
    let s = demo_server(|_| {}, 0).await;
    let mut ws = connect(&s, Some(KEY)).await;
    send(
        &mut ws,
        json!({ "type": "auth", "token": "op_live_forged", "id": "a2" }),
    )
    .await;
    let e = next_json(&mut ws).await;
    assert_eq!(e["id"], "a2");
    assert_eq!(e["error"]["code"], "INVALID_API_KEY");
    send(&mut ws, json!({ "type": "auth", "token": KEY, "id": "a3" })).await;
    assert_eq!(next_json(&mut ws).await["type"], "auth_ok");
    send(&mut ws, lookup("still-works")).await;
    assert_eq!(next_json(&mut ws).await["ok"], true);
}

// ---- RFC 6455 close codes ------------------------------------------------------------------

/// Sends a raw frame the tungstenite client would refuse to build as a message.
async fn send_raw(ws: &mut Ws, opcode: OpCode, payload: Vec<u8>) {
    let frame = Frame::message(payload, opcode, true);
    ws.send(Message::Frame(frame))
        .await
        .expect("send raw frame");
}

#[tokio::test]
async fn a_clients_close_is_echoed_with_its_code() {
    let s = demo_server(|_| {}, 0).await;
    for code in [CloseCode::Normal, CloseCode::Away, CloseCode::Library(4000)] {
        let mut ws = connect(&s, Some(KEY)).await;
        ws.send(Message::Close(Some(CloseFrame {
            code,
            reason: "bye".into(),
        })))
        .await
        .unwrap();
        let (echoed, _) = close_code(&mut ws).await;
        assert_eq!(echoed, u16::from(code));
    }
}

#[tokio::test]
async fn protocol_errors_close_with_1002_and_invalid_utf8_with_1007() {
    let s = demo_server(|_| {}, 0).await;

    let mut ws = connect(&s, Some(KEY)).await;
    send_raw(&mut ws, OpCode::Data(OpData::Reserved(3)), b"x".to_vec()).await;
    assert_eq!(close_code(&mut ws).await.0, 1002);

    let mut ws = connect(&s, Some(KEY)).await;
    send_raw(&mut ws, OpCode::Data(OpData::Continue), b"x".to_vec()).await;
    assert_eq!(close_code(&mut ws).await.0, 1002);

    let mut ws = connect(&s, Some(KEY)).await;
    send_raw(
        &mut ws,
        OpCode::Data(OpData::Text),
        vec![0xce, 0xba, 0xff, 0xfe],
    )
    .await;
    assert_eq!(close_code(&mut ws).await.0, 1007);

    // Before authenticating too.
    let mut ws = connect(&s, None).await;
    send_raw(&mut ws, OpCode::Data(OpData::Text), vec![0xff]).await;
    assert_eq!(close_code(&mut ws).await.0, 1007);
}

// ---- authentication --------------------------------------------------------------------------

#[tokio::test]
async fn pings_do_not_extend_the_auth_deadline() {
    let s = demo_server(|c| c.websocket.auth_timeout_secs = 1, 0).await;
    let mut ws = connect(&s, None).await;
    let started = tokio::time::Instant::now();
    let mut seen = Vec::new();
    let code = loop {
        assert!(
            started.elapsed() < WAIT,
            "an unauthenticated socket sending pings stayed open"
        );
        let _ = ws.send(Message::Ping(b"keepalive".to_vec().into())).await;
        match tokio::time::timeout(Duration::from_millis(300), ws.next()).await {
            Err(_) => continue,
            Ok(Some(Ok(Message::Text(t)))) => seen.push(serde_json::from_str::<Value>(&t).unwrap()),
            Ok(Some(Ok(Message::Close(Some(f))))) => break u16::from(f.code),
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("closed without a close frame: {other:?}"),
        }
    };
    assert_eq!(code, 1008);
    assert_eq!(seen[0]["ok"], false);
    assert_eq!(seen[0]["error"]["code"], "MISSING_AUTH");
    assert!(seen[0]["error"]["spoken_summary"].is_string());
    assert!(seen[0]["error"]["details"]
        .as_str()
        .unwrap()
        .contains("within 1 s"));
}

#[tokio::test]
async fn unauthenticated_sockets_have_their_own_cap() {
    let s = demo_server(|c| c.websocket.max_unauthenticated = 1, 0).await;
    let _waiting = connect(&s, None).await;
    match tokio_tungstenite::connect_async(ws_url(&s)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            assert!(resp.headers().get("retry-after").is_some());
            let body: Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or(b"{}")).unwrap();
            assert_eq!(body["ok"], false);
            assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE");
            assert!(body["error"]["spoken_summary"].is_string());
        }
        other => panic!("expected 503, got {other:?}"),
    }
    // Sockets with the key on the upgrade are not affected.
    let mut ws = connect(&s, Some(KEY)).await;
    send(&mut ws, lookup("ok")).await;
    assert_eq!(next_json(&mut ws).await["ok"], true);
}

#[tokio::test]
async fn failed_auth_frames_are_limited_per_address() {
    let s = demo_server(|c| c.websocket.max_auth_failures_per_address = 2, 0).await;
    for _ in 0..2 {
        let mut ws = connect(&s, None).await;
        send(&mut ws, json!({ "type": "auth", "token": "op_live_guess" })).await;
        let (code, frames) = close_code(&mut ws).await;
        assert_eq!(code, 1008);
        assert_eq!(frames[0]["error"]["code"], "INVALID_API_KEY");
    }
    // The address used up its failures: even the right key is not checked now.
    let mut ws = connect(&s, None).await;
    send(&mut ws, json!({ "type": "auth", "token": KEY, "id": "a" })).await;
    let (code, frames) = close_code(&mut ws).await;
    assert_eq!(code, 1008);
    assert_eq!(frames[0]["id"], "a");
    assert_eq!(frames[0]["ok"], false);
    assert_eq!(frames[0]["error"]["code"], "RATE_LIMITED");
    assert!(frames[0]["error"]["details"]
        .as_str()
        .unwrap()
        .contains("retry in"));
    // Keys on the upgrade request are still welcome.
    let mut ws = connect(&s, Some(KEY)).await;
    send(&mut ws, lookup("ok")).await;
    assert_eq!(next_json(&mut ws).await["ok"], true);
}

#[tokio::test]
async fn repeated_failed_auth_frames_close_the_connection() {
    let s = demo_server(|c| c.websocket.max_auth_failures_per_connection = 2, 0).await;
    let mut ws = connect(&s, Some(KEY)).await;
    send(
        &mut ws,
        json!({ "type": "auth", "token": "op_live_guess1", "id": "g1" }),
    )
    .await;
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["id"].as_str(), e["error"]["code"].as_str()),
        (Some("g1"), Some("INVALID_API_KEY"))
    );
    send(
        &mut ws,
        json!({ "type": "auth", "token": "op_live_guess2", "id": "g2" }),
    )
    .await;
    let (code, frames) = close_code(&mut ws).await;
    assert_eq!(code, 1008);
    assert_eq!(frames[0]["id"], "g2");
    assert_eq!(frames[0]["error"]["code"], "INVALID_API_KEY");
}

// ---- replies of any size ---------------------------------------------------------------------

#[tokio::test]
async fn a_reply_of_more_than_300_kib_goes_out() {
    let s = demo_server(|_| {}, 0).await;
    s.store()
        .write(|tx| {
            let content = "Notion is hiring platform engineers. ".repeat(110);
            for i in 0..100 {
                pilot_bridge::store::signals::insert(
                    tx,
                    demo::DEMO_ORG,
                    &pilot_bridge::store::signals::NewSignal {
                        contact_id: None,
                        company: Some("Notion"),
                        platform: "web",
                        signal_type: "hiring",
                        title: &format!("Hiring signal {i}"),
                        content: Some(&content),
                        url: None,
                        intent_score: 60,
                        detected_at: &pilot_bridge::ids::now_rfc3339(),
                    },
                )?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let mut ws = connect(&s, Some(KEY)).await;
    send(
        &mut ws,
        json!({ "id": "big", "action": { "type": "recent_signals", "company": "Notion", "limit": 100 } }),
    )
    .await;
    let msg = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let text = msg.into_text().unwrap();
    assert!(text.len() > 300 * 1024, "reply of {} bytes", text.len());
    let reply: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(reply["id"], "big");
    assert_eq!(reply["ok"], true);
    // The connection carries on.
    send(&mut ws, lookup("after")).await;
    assert_eq!(next_json(&mut ws).await["id"], "after");
}

// ---- server-pushed events --------------------------------------------------------------------

/// The next event frame, skipping replies and progress frames.
async fn next_event(ws: &mut Ws) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] == "event" {
            return v;
        }
    }
}

#[tokio::test]
async fn job_completed_and_message_events_reach_the_key_that_started_the_work() {
    let s = demo_server(|c| c.native.outbox_hold_secs = 1, 0).await;
    let other_key = s.create_key(demo::DEMO_ORG, Scope::ALL).await;
    let mut ws = connect(&s, Some(KEY)).await;
    let mut bystander = connect(&s, Some(&other_key)).await;

    send(
        &mut ws,
        json!({ "id": "r", "action": { "type": "start_research", "company": "Notion" } }),
    )
    .await;
    let queued = next_json(&mut ws).await;
    assert_eq!(queued["data"]["mode"], "queued", "{queued}");
    let job_id = queued["data"]["ids"]["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let e = next_event(&mut ws).await;
    assert_eq!(e["event"], "job.completed", "{e}");
    assert!(e.get("id").is_none());
    assert_eq!(e["data"]["job"]["id"], job_id.as_str());
    assert_eq!(e["data"]["job"]["kind"], "research");
    assert!(e["data"]["findings"]["signals"].is_array(), "{e}");
    let spoken = e["spoken_summary"].as_str().unwrap();
    assert!(
        spoken.starts_with("Research on Notion is ready: "),
        "{spoken}"
    );
    assert!(spoken.chars().count() <= 200);
    assert!(e["meta"]["timestamp"].is_string());

    // send_message in auto pilot mode: confirm, queue, and hear it go out.
    send(
        &mut ws,
        json!({ "id": "m", "action": { "type": "send_message", "contactRef": "Sarah Chen", "subject": "Hi", "body": "Quick follow-up on the demo." } }),
    )
    .await;
    let ask = next_json(&mut ws).await;
    let pending = ask["data"]["pending_action_id"]
        .as_str()
        .unwrap()
        .to_string();
    send(
        &mut ws,
        json!({ "id": "c", "pendingActionId": pending, "confirmed": true }),
    )
    .await;
    let queued = next_json(&mut ws).await;
    assert_eq!(queued["data"]["mode"], "queued", "{queued}");
    let message_id = queued["data"]["ids"]["message_id"]
        .as_str()
        .unwrap()
        .to_string();
    let e = next_event(&mut ws).await;
    assert_eq!(e["event"], "message.sent", "{e}");
    assert_eq!(e["data"]["message"]["id"], message_id.as_str());
    assert_eq!(e["data"]["message"]["status"], "sent");
    assert_eq!(e["spoken_summary"], "Your email to Sarah Chen went out.");

    // A second message, taken back with undo_last before it goes out.
    send(
        &mut ws,
        json!({ "id": "m2", "confirmed": true, "action": { "type": "send_message", "contactRef": "John Smith", "body": "See you Monday." } }),
    )
    .await;
    let queued = next_json(&mut ws).await;
    assert_eq!(queued["data"]["mode"], "queued", "{queued}");
    send(
        &mut ws,
        json!({ "id": "u", "action": { "type": "undo_last" } }),
    )
    .await;
    let undone = next_json(&mut ws).await;
    assert_eq!(undone["id"], "u", "{undone}");
    let e = next_event(&mut ws).await;
    assert_eq!(e["event"], "message.cancelled", "{e}");
    assert_eq!(e["data"]["message"]["status"], "cancelled");
    assert_eq!(
        e["spoken_summary"],
        "Your email to John Smith was cancelled before it went out."
    );

    // Another key of the same org heard none of it.
    send(&mut bystander, json!({ "type": "ping", "id": "b" })).await;
    assert_eq!(
        next_json(&mut bystander).await,
        json!({ "type": "pong", "id": "b" })
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), bystander.next())
            .await
            .is_err(),
        "another key's socket received an event"
    );
    // Closed sessions leave no channel behind.
    drop(ws);
    drop(bystander);
    let deadline = tokio::time::Instant::now() + WAIT;
    while s.server.app.ws_connections.open() > 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.server.app.events.keys_with_subscribers(), 0);
}

#[tokio::test]
async fn an_unanswered_confirmation_is_announced_once_when_it_expires() {
    let s = demo_server(|c| c.native.pending_ttl_secs = 1, 0).await;
    let mut ws = connect(&s, Some(KEY)).await;

    // One question left unanswered, one answered in time.
    send(
        &mut ws,
        json!({ "id": "ask", "action": { "type": "add_to_campaign", "contactRef": "Sarah Chen", "campaignRef": "Seed founders" } }),
    )
    .await;
    let ask = next_json(&mut ws).await;
    assert_eq!(ask["data"]["mode"], "confirmation_required", "{ask}");
    let unanswered = ask["data"]["pending_action_id"]
        .as_str()
        .unwrap()
        .to_string();
    send(
        &mut ws,
        json!({ "id": "ask2", "action": { "type": "pause_campaign", "campaignRef": "Seed founders" } }),
    )
    .await;
    let ask2 = next_json(&mut ws).await;
    let answered = ask2["data"]["pending_action_id"]
        .as_str()
        .unwrap()
        .to_string();
    send(
        &mut ws,
        json!({ "id": "no", "pendingActionId": answered, "confirmed": false }),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["id"], "no");

    let e = tokio::time::timeout(Duration::from_secs(10), next_event(&mut ws))
        .await
        .expect("pending.expired within 10 s");
    assert_eq!(e["event"], "pending.expired", "{e}");
    assert_eq!(e["data"]["pending_action_id"], unanswered.as_str());
    assert_eq!(e["data"]["action_type"], "add_to_campaign");
    assert_eq!(
        e["spoken_summary"],
        "The request to add Sarah Chen to Seed founders expired without a yes, so I didn't do it."
    );
    // Only once, and nothing for the question that was answered.
    assert!(
        tokio::time::timeout(Duration::from_millis(2_500), next_event(&mut ws))
            .await
            .is_err(),
        "a second pending.expired arrived"
    );
    // A late yes hears that it expired and executes nothing.
    send(
        &mut ws,
        json!({ "id": "late", "pendingActionId": unanswered, "confirmed": true }),
    )
    .await;
    let late = next_json(&mut ws).await;
    assert_eq!(late["id"], "late", "{late}");
    assert_ne!(late["data"]["mode"], "result", "{late}");
}
