//! Hostile input, by property: arbitrary JSON and bytes thrown at the native request parser, at
//! the native endpoint and the REST extractors of a real server, and at its WebSocket frame
//! handler. Nothing panics, nothing answers 5xx, and every rejection is our JSON envelope.

use crate::common::native as native_common;

use std::sync::OnceLock;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use native_common::{demo, Demo, KEY, PATH};
use pilot_bridge::native::action::ACTION_TYPES;
use pilot_bridge::native::request::NativeRequest;
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Field names the parsers know, so generated objects reach past the first unknown-field check.
const FIELDS: &[&str] = &[
    "action",
    "type",
    "id",
    "transcript",
    "idempotencyKey",
    "executionMode",
    "auditReadActions",
    "pendingActionId",
    "confirmed",
    "personName",
    "contactRef",
    "contactId",
    "email",
    "company",
    "companyId",
    "campaignRef",
    "campaignId",
    "note",
    "status",
    "since",
    "limit",
    "minIntentScore",
    "startTime",
    "durationMinutes",
    "channel",
    "body",
    "subject",
    "draftId",
    "unreadOnly",
    "topic",
    "first_name",
    "last_name",
    "content",
    "contact_id",
    "name",
    "pilot_mode",
    "timezone",
    "url",
    "events",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(FIELDS).prop_map(str::to_string),
        1 => "[a-zA-Z_]{0,12}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(ACTION_TYPES).prop_map(Value::from),
        ".{0,40}".prop_map(Value::String),
        "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
            .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Request-shaped objects: a known action type with arbitrary known and unknown fields.
fn native_request() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(ACTION_TYPES),
        prop::collection::vec((key(), json_value()), 0..6),
        prop::collection::vec((key(), json_value()), 0..4),
    )
        .prop_map(|(ty, action_fields, top)| {
            let mut action: Map<String, Value> = action_fields.into_iter().collect();
            action.insert("type".into(), json!(ty));
            let mut body: Map<String, Value> = top.into_iter().collect();
            body.insert("action".into(), Value::Object(action));
            Value::Object(body)
        })
}

/// One demo server for every case, on a runtime that outlives the cases.
struct Harness {
    rt: tokio::runtime::Runtime,
    demo: Demo,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let demo = rt.block_on(demo());
        Harness { rt, demo }
    })
}

/// A rejection is the error envelope with a code, a string `details` and something to say; a
/// success is the success envelope. Never a 5xx.
fn check_envelope(status: u16, content_type: &str, body: &[u8]) -> Result<(), TestCaseError> {
    prop_assert!(
        status < 500,
        "status {status}: {}",
        String::from_utf8_lossy(body)
    );
    prop_assert!(
        content_type.starts_with("application/json") || status == 204,
        "content type {content_type:?} with {status}"
    );
    if status == 204 {
        return Ok(());
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| TestCaseError::fail(format!("not JSON ({e}): {body:?}")))?;
    check_frame(&v, status >= 400)
}

fn check_frame(v: &Value, is_error: bool) -> Result<(), TestCaseError> {
    if is_error || v["ok"] == false {
        prop_assert_eq!(&v["ok"], &json!(false), "{}", v);
        let e = &v["error"];
        prop_assert!(e["code"].as_str().is_some_and(|c| !c.is_empty()), "{}", v);
        prop_assert_ne!(&e["code"], &json!("INTERNAL_ERROR"), "{}", v);
        prop_assert!(e["details"].is_string(), "{}", v);
        prop_assert!(
            e["spoken_summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{}",
            v
        );
    } else {
        prop_assert_eq!(&v["ok"], &json!(true), "{}", v);
    }
    prop_assert!(v["meta"]["request_id"].is_string(), "{}", v);
    Ok(())
}

/// Sends `body` with `method` to `path` under `/api/v1` and checks the answer.
fn exchange(method: reqwest::Method, path: &str, body: Vec<u8>) -> Result<(), TestCaseError> {
    let h = harness();
    let url = format!("{}/api/v1{path}", h.demo.s.root);
    let (status, ct, bytes) = h.rt.block_on(async move {
        let r = reqwest::Client::new()
            .request(method, url)
            .header("authorization", format!("Bearer {KEY}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (status, ct, r.bytes().await.expect("body"))
    });
    check_envelope(status, &ct, &bytes)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_native_parser_never_panics_and_rejects_as_a_client_error(v in json_value()) {
        if let Err(e) = NativeRequest::parse(v.clone()) {
            prop_assert!(e.status() < 500, "{:?}", e);
        }
    }

    #[test]
    fn the_native_parser_never_panics_on_request_shaped_objects(v in native_request()) {
        if let Err(e) = NativeRequest::parse(v.clone()) {
            prop_assert!(e.status() < 500, "{:?}", e);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_native_endpoint_answers_arbitrary_bytes_with_the_envelope(
        body in prop::collection::vec(any::<u8>(), 0..512)
    ) {
        exchange(reqwest::Method::POST, PATH, body)?;
    }

    #[test]
    fn the_native_endpoint_answers_arbitrary_json_with_the_envelope(v in json_value()) {
        exchange(reqwest::Method::POST, PATH, v.to_string().into_bytes())?;
    }

    #[test]
    fn the_native_endpoint_answers_request_shaped_json_with_the_envelope(v in native_request()) {
        exchange(reqwest::Method::POST, PATH, v.to_string().into_bytes())?;
    }

    #[test]
    fn rest_extractors_answer_arbitrary_json_with_the_envelope(
        route in prop::sample::select(&[
            ("POST", "/contacts"),
            ("PATCH", "/contacts/00000000-0000-4000-8000-000000000000"),
            ("POST", "/companies"),
            ("POST", "/notes"),
            ("POST", "/campaigns"),
            ("POST", "/webhooks"),
            ("PATCH", "/settings"),
        ][..]),
        v in json_value(),
    ) {
        let method = reqwest::Method::from_bytes(route.0.as_bytes()).expect("method");
        exchange(method, route.1, v.to_string().into_bytes())?;
    }

    #[test]
    fn rest_extractors_answer_arbitrary_bytes_with_the_envelope(
        body in prop::collection::vec(any::<u8>(), 0..256)
    ) {
        exchange(reqwest::Method::POST, "/contacts", body)?;
    }

    #[test]
    fn rest_queries_answer_arbitrary_parameters_with_the_envelope(
        path in prop::sample::select(&["/contacts", "/signals", "/activity", "/notes", "/campaigns"][..]),
        params in prop::collection::vec(
            (prop::sample::select(&["limit", "offset", "since", "status", "q", "min_intent_score", "unread_only", "contact_id"][..]),
             ".{0,20}"),
            0..4,
        ),
    ) {
        let query = serde_urlencoded::to_string(&params).expect("query");
        exchange(reqwest::Method::GET, &format!("{path}?{query}"), Vec::new())?;
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends `frame`, then a ping with `sentinel`, and checks every frame received until its pong:
/// each is a JSON envelope, an error frame or a protocol frame of ours.
async fn ws_round(ws: &mut Ws, frame: Message, sentinel: &str) -> Result<(), TestCaseError> {
    ws.send(frame).await.expect("send");
    ws.send(Message::Text(
        json!({ "type": "ping", "id": sentinel }).to_string().into(),
    ))
    .await
    .expect("send sentinel");
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .map_err(|_| TestCaseError::fail("no answer in time"))?
            .ok_or_else(|| TestCaseError::fail("connection closed"))?
            .map_err(|e| TestCaseError::fail(format!("read: {e}")))?;
        let text = match msg {
            Message::Text(t) => t,
            Message::Ping(_) | Message::Pong(_) => continue,
            other => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
        };
        let v: Value = serde_json::from_str(text.as_str())
            .map_err(|e| TestCaseError::fail(format!("frame is not JSON ({e}): {text}")))?;
        if v["type"] == "pong" && v["id"] == sentinel {
            return Ok(());
        }
        if v.get("ok").is_some() {
            check_frame(&v, false)?;
        } else {
            // Frames without the envelope are the protocol's own: pong, progress, cancelled,
            // events.
            prop_assert!(v["type"].is_string(), "{}", v);
        }
    }
}

fn ws_frame() -> impl Strategy<Value = Message> {
    prop_oneof![
        ".{0,200}".prop_map(|s| Message::Text(s.into())),
        json_value().prop_map(|v| Message::Text(v.to_string().into())),
        native_request().prop_map(|mut v| {
            v["id"] = json!("case");
            Message::Text(v.to_string().into())
        }),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| Message::Binary(b.into())),
    ]
}

#[test]
fn the_websocket_frame_handler_answers_arbitrary_frames_and_stays_open() {
    let h = harness();
    let url = format!(
        "ws://{}/api/v1/native/outreachpilot/ws",
        h.demo.s.server.addr
    );
    let ws = h.rt.block_on(async {
        let mut req = url.into_client_request().expect("request");
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {KEY}").parse().expect("header"),
        );
        tokio_tungstenite::connect_async(req)
            .await
            .expect("upgrade")
            .0
    });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 128,
        ..ProptestConfig::default()
    });
    // The runner takes an `Fn`; the one connection and the sentinel count live in cells.
    let ws = std::cell::RefCell::new(ws);
    let n = std::cell::Cell::new(0u32);
    runner
        .run(&ws_frame(), |frame| {
            n.set(n.get() + 1);
            let sentinel = format!("sentinel-{}", n.get());
            h.rt.block_on(ws_round(&mut ws.borrow_mut(), frame, &sentinel))
        })
        .expect("every frame answered with our envelope on an open socket");
}
