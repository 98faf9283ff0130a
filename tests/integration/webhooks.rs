//! Webhook delivery (DESIGN §18) against real local HTTP receivers: Standard Webhooks
//! signatures checked by an implementation written here from the specification (and by the
//! published test vector, which it is shown to accept), native and REST writes, retries on a
//! compressed schedule with `Retry-After`, no redirects, 410 disabling a subscription,
//! `last_delivery`, generated secrets, the SSRF guard at registration and at delivery (DNS
//! rebinding through the production guard with an injected name lookup), a stalled receiver
//! not holding back others, subscription and org isolation, the event mapping, and a delivery
//! pending across `kill -9`.

use crate::common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::{Client, TestServer};
use hmac::{Hmac, Mac};
use pilot_bridge::config::{Config, WebhooksConfig};
use pilot_bridge::store::webhooks as store_webhooks;
use pilot_bridge::store::{orgs, Store, StoreOptions};
use pilot_bridge::webhooks::target::LookupHost;
use pilot_bridge::webhooks::worker::{self, Worker};
use pilot_bridge::webhooks::EventType;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::mpsc;

const NATIVE: &str = "/native/outreachpilot";

// ---- a receiver -------------------------------------------------------------------------------

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    id: String,
    timestamp: String,
    signature: String,
    content_type: String,
    body: String,
    at: Instant,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("the body is JSON")
    }
}

/// A scripted answer: status and extra headers.
type Answer = (u16, Vec<(&'static str, String)>);

/// A real HTTP server on 127.0.0.1 that records every request and answers from a script
/// (204 once the script is used up).
struct Receiver {
    addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<Received>,
    script: Arc<Mutex<VecDeque<Answer>>>,
    /// How long each request is held after it is recorded, before it is answered.
    stall: Arc<Mutex<Duration>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Receiver::serve(listener)
    }

    fn serve(listener: tokio::net::TcpListener) -> Receiver {
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::unbounded_channel();
        let script: Arc<Mutex<VecDeque<Answer>>> = Arc::default();
        let stall: Arc<Mutex<Duration>> = Arc::default();
        let (s, st) = (script.clone(), stall.clone());
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: String| {
                let (tx, s, st) = (tx.clone(), s.clone(), st.clone());
                async move {
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string()
                    };
                    let _ = tx.send(Received {
                        path: uri.path().to_string(),
                        id: h("webhook-id"),
                        timestamp: h("webhook-timestamp"),
                        signature: h("webhook-signature"),
                        content_type: h("content-type"),
                        body,
                        at: Instant::now(),
                    });
                    let hold = *st.lock().unwrap();
                    tokio::time::sleep(hold).await;
                    let (status, extra) = s.lock().unwrap().pop_front().unwrap_or((204, vec![]));
                    let mut resp = StatusCode::from_u16(status).unwrap().into_response();
                    for (k, v) in extra {
                        resp.headers_mut().insert(k, v.parse().unwrap());
                    }
                    resp
                }
            },
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            addr,
            rx,
            script,
            stall,
        }
    }

    /// Holds every request from now on for `d` before answering it.
    fn stall(&self, d: Duration) {
        *self.stall.lock().unwrap() = d;
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn answer(&self, answers: impl IntoIterator<Item = Answer>) {
        self.script.lock().unwrap().extend(answers);
    }

    /// The next request (20 s at most).
    async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(20), self.rx.recv())
            .await
            .expect("a delivery within 20 s")
            .expect("receiver open")
    }

    /// The next request of event type `t`, skipping others.
    async fn next_of(&mut self, t: &str) -> Received {
        loop {
            let r = self.next().await;
            if r.json()["type"] == t {
                return r;
            }
        }
    }

    /// Asserts that nothing arrives for `d`.
    async fn nothing_for(&mut self, d: Duration) {
        if let Ok(Some(r)) = tokio::time::timeout(d, self.rx.recv()).await {
            panic!("unexpected delivery: {} {}", r.path, r.body);
        }
    }
}

// ---- Standard Webhooks verification, written from the specification ----------------------------

/// The key of a secret: `whsec_` + base64 is decoded, anything else is raw bytes.
fn key_of(secret: &str) -> Vec<u8> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => STANDARD.decode(b64).expect("base64 secret"),
        None => secret.as_bytes().to_vec(),
    }
}

/// Checks a delivery as a Standard Webhooks consumer does: one of the space-separated
/// `v1,<base64>` signatures is the HMAC-SHA256 of `id.timestamp.body`, and the timestamp is
/// within `tolerance_secs` of `now` (unix seconds). Says why when it does not verify.
fn check_signature(
    secret: &str,
    r: &Received,
    now: i64,
    tolerance_secs: i64,
) -> Result<(), String> {
    let ts: i64 = r
        .timestamp
        .parse()
        .map_err(|_| format!("webhook-timestamp {:?} is not unix seconds", r.timestamp))?;
    if (now - ts).abs() > tolerance_secs {
        return Err(format!(
            "timestamp {ts} is not within {tolerance_secs} s of {now}"
        ));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(&key_of(secret)).expect("key");
    mac.update(format!("{}.{}.{}", r.id, r.timestamp, r.body).as_bytes());
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    let ok = r
        .signature
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| s == expected);
    if ok {
        Ok(())
    } else {
        Err(format!("signature {:?} does not verify", r.signature))
    }
}

/// Asserts that a delivery verifies now, with the specification's suggested five-minute
/// tolerance, and looks like one of ours.
fn verify(secret: &str, r: &Received) {
    assert!(r.id.starts_with("msg_"), "webhook-id {:?}", r.id);
    let now = chrono::Utc::now().timestamp();
    if let Err(e) = check_signature(secret, r, now, 300) {
        panic!("{e}");
    }
    assert!(r.content_type.starts_with("application/json"));
}

#[test]
fn the_verifier_accepts_the_published_vector_and_rejects_tampering() {
    // The specification's test vector (standard-webhooks, libraries' shared test), checked at
    // its own time: the test's verifier is shown to be right before it checks the server.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const AT: i64 = 1614265330;
    let vector = Received {
        path: String::new(),
        id: "msg_p5jXN8AQM9LWM0D4loKWxJek".into(),
        timestamp: AT.to_string(),
        signature: "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".into(),
        content_type: "application/json".into(),
        body: r#"{"test": 2432232314}"#.into(),
        at: Instant::now(),
    };
    assert_eq!(check_signature(SECRET, &vector, AT, 300), Ok(()));
    assert_eq!(check_signature(SECRET, &vector, AT + 299, 300), Ok(()));
    // Several signatures (a key rotation): one that verifies is enough.
    let mut rotated = vector.clone();
    rotated.signature = format!("v1,Zm9v {}", vector.signature);
    assert_eq!(check_signature(SECRET, &rotated, AT, 300), Ok(()));

    let tampered = |change: &dyn Fn(&mut Received)| {
        let mut r = vector.clone();
        change(&mut r);
        check_signature(SECRET, &r, AT, 300)
    };
    assert!(tampered(&|r| r.body = r#"{"test": 2432232315}"#.into()).is_err());
    assert!(tampered(&|r| r.id = "msg_p5jXN8AQM9LWM0D4loKWxJel".into()).is_err());
    assert!(tampered(&|r| r.timestamp = (AT + 1).to_string()).is_err());
    assert!(tampered(&|r| r.signature = r.signature.replace("v1,", "v2,")).is_err());
    assert!(tampered(&|r| r.signature = String::new()).is_err());
    assert!(
        check_signature("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSx", &vector, AT, 300).is_err(),
        "another key"
    );
    assert!(
        check_signature(SECRET, &vector, AT + 301, 300).is_err(),
        "too old"
    );
    assert!(
        check_signature(SECRET, &vector, AT - 301, 300).is_err(),
        "too far in the future"
    );
}

// ---- helpers -----------------------------------------------------------------------------------

/// A server that may deliver to loopback receivers, with a retry schedule.
async fn server(schedule: &[u64]) -> TestServer {
    let schedule = schedule.to_vec();
    common::start_with(move |c: &mut Config| {
        c.webhooks.allow_private_targets = true;
        c.webhooks.retry_schedule_secs = schedule;
    })
    .await
}

async fn subscribe(c: &Client, url: &str, events: &[&str], secret: Option<&str>) -> Value {
    let mut body = json!({ "url": url, "events": events });
    if let Some(s) = secret {
        body["secret"] = json!(s);
    }
    c.post("/webhooks", body).await.ok(201).clone()
}

/// Polls `GET /webhooks` until `done` holds for the subscription `id` (or it is gone, which
/// `done` sees as `Value::Null`); 20 s at most.
async fn wait_for_hook(c: &Client, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c.get("/webhooks").await;
        let list = r.ok(200)["webhooks"].as_array().expect("webhooks").clone();
        let hook = list
            .into_iter()
            .find(|w| w["id"] == id)
            .unwrap_or(Value::Null);
        if done(&hook) {
            return hook;
        }
        assert!(
            Instant::now() < deadline,
            "subscription never got there: {hook}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn native(c: &Client, action: Value) -> Value {
    c.post(NATIVE, json!({ "action": action, "confirmed": true }))
        .await
        .ok(200)
        .clone()
}

// ---- tests ---------------------------------------------------------------------------------------

#[tokio::test]
async fn native_and_rest_writes_are_delivered_signed() {
    let s = server(&[1]).await;
    let c = s.demo_client().await;
    let mut rx = Receiver::start().await;
    let secret = format!(
        "whsec_{}",
        STANDARD.encode(b"a thirty-two byte key for tests!")
    );
    let hook = subscribe(
        &c,
        &rx.url(),
        &["note.created", "contact.created"],
        Some(&secret),
    )
    .await;
    assert_eq!(hook["has_secret"], true);
    assert!(
        hook.get("secret").is_none(),
        "a given secret is never echoed"
    );
    assert_eq!(hook["last_delivery"], Value::Null);

    // A native write.
    let reply = native(
        &c,
        json!({ "type": "note_on_contact", "contactRef": "Sarah Chen", "note": "Loved the demo." }),
    )
    .await;
    let note_id = reply["ids"]["note_id"].as_str().expect("note id");
    let got = rx.next().await;
    verify(&secret, &got);
    assert_eq!(got.path, "/hook");
    let body = got.json();
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["type", "timestamp", "data"]);
    assert_eq!(body["type"], "note.created");
    assert!(chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).is_ok());
    // `data` is the note as REST v1 returns it.
    let notes = c.get("/notes?limit=1").await;
    assert_eq!(body["data"], notes.page()[0]);
    assert_eq!(body["data"]["id"], note_id);
    assert_eq!(body["data"]["content"], "Loved the demo.");
    let note_event = got.id.clone();

    // A REST write.
    let created = c
        .post(
            "/contacts",
            json!({ "email": "ada@lovelace.dev", "first_name": "Ada", "last_name": "Lovelace" }),
        )
        .await;
    let contact = created.ok(201)["contacts"][0].clone();
    let got = rx.next().await;
    verify(&secret, &got);
    let body = got.json();
    assert_eq!(body["type"], "contact.created");
    assert_eq!(body["data"], contact);
    assert_ne!(got.id, note_event, "every event has its own webhook-id");

    let hook = wait_for_hook(&c, hook["id"].as_str().unwrap(), |h| {
        h["last_delivery"]["status"] == "succeeded"
    })
    .await;
    let last = &hook["last_delivery"];
    assert_eq!(last["attempts"], 1);
    assert_eq!(last["response_status"], 204);
    assert!(chrono::DateTime::parse_from_rfc3339(last["at"].as_str().unwrap()).is_ok());
}

#[tokio::test]
async fn a_failure_is_retried_with_the_same_id_and_a_fresh_signature() {
    let s = server(&[1, 1]).await;
    let c = s.demo_client().await;
    let mut rx = Receiver::start().await;
    // A raw (non-whsec_) secret is used as bytes.
    let hook = subscribe(&c, &rx.url(), &["note.created"], Some("hmac_s3cret_value")).await;
    rx.answer([(500, vec![])]);
    native(
        &c,
        json!({ "type": "note_on_contact", "contactRef": "John Smith", "note": "Retry me." }),
    )
    .await;
    let first = rx.next().await;
    verify("hmac_s3cret_value", &first);
    let second = rx.next().await;
    verify("hmac_s3cret_value", &second);
    assert_eq!(second.id, first.id, "webhook-id is stable across retries");
    assert_eq!(second.body, first.body, "the body is the same");
    assert_ne!(
        second.timestamp, first.timestamp,
        "each attempt is stamped anew"
    );
    assert_ne!(second.signature, first.signature);
    assert!(
        second.at - first.at >= Duration::from_millis(900),
        "waited for the schedule"
    );
    let hook = wait_for_hook(&c, hook["id"].as_str().unwrap(), |h| {
        h["last_delivery"]["status"] == "succeeded"
    })
    .await;
    assert_eq!(hook["last_delivery"]["attempts"], 2);
    assert_eq!(hook["last_delivery"]["response_status"], 204);
}

#[tokio::test]
async fn retries_end_in_failed_and_redirects_are_failures() {
    let s = server(&[0, 0]).await;
    let c = s.demo_client().await;
    let mut rx = Receiver::start().await;
    let hook = subscribe(&c, &rx.url(), &["note.created"], None).await;
    let other = format!("http://{}/elsewhere", rx.addr);
    rx.answer([
        (302, vec![("location", other)]),
        (500, vec![]),
        (503, vec![]),
    ]);
    native(
        &c,
        json!({ "type": "note_on_contact", "contactRef": "John Smith", "note": "Never lands." }),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(
            rx.next().await.path,
            "/hook",
            "a redirect is never followed"
        );
    }
    rx.nothing_for(Duration::from_millis(1500)).await;
    let hook = wait_for_hook(&c, hook["id"].as_str().unwrap(), |h| {
        h["last_delivery"]["status"] == "failed"
    })
    .await;
    assert_eq!(hook["last_delivery"]["attempts"], 3);
    assert_eq!(hook["last_delivery"]["response_status"], 503);
    assert_eq!(hook["active"], true, "only a 410 disables a subscription");
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let s = server(&[0]).await;
    let c = s.demo_client().await;
    let mut rx = Receiver::start().await;
    subscribe(&c, &rx.url(), &["note.created"], None).await;
    rx.answer([(429, vec![("retry-after", "2".to_string())])]);
    native(
        &c,
        json!({ "type": "note_on_contact", "contactRef": "John Smith", "note": "Later, please." }),
    )
    .await;
    let first = rx.next().await;
    let second = rx.next().await;
    assert_eq!(second.id, first.id);
    assert!(
        second.at - first.at >= Duration::from_millis(1900),
        "retried after {:?}, before the 2 s asked for",
        second.at - first.at
    );
}

#[tokio::test]
async fn gone_disables_the_subscription() {
    let s = server(&[1]).await;
    let c = s.demo_client().await;
    let mut rx = Receiver::start().await;
    let hook = subscribe(&c, &rx.url(), &["note.created"], None).await;
    rx.answer([(410, vec![])]);
    let note = json!({ "type": "note_on_contact", "contactRef": "John Smith", "note": "Gone?" });
    native(&c, note.clone()).await;
    rx.next().await;
    let id = hook["id"].as_str().unwrap();
    // Still listed, so its owner sees why nothing arrives any more.
    let disabled = wait_for_hook(&c, id, |h| h["active"] == false).await;
    assert_eq!(disabled["last_delivery"]["status"], "failed");
    assert_eq!(disabled["last_delivery"]["response_status"], 410);
    native(
        &c,
        json!({ "type": "note_on_contact", "contactRef": "John Smith", "note": "Still there?" }),
    )
    .await;
    rx.nothing_for(Duration::from_millis(1500)).await;
    // Deleting it takes it out of the listing.
    c.delete(&format!("/webhooks?id={id}")).await.ok(200);
    wait_for_hook(&c, id, Value::is_null).await;
    c.delete(&format!("/webhooks?id={id}"))
        .await
        .err(404, "RESOURCE_NOT_FOUND");
}

#[tokio::test]
async fn last_delivery_is_the_latest_attempt_not_a_newer_queued_event() {
    let s = server(&[]).await;
    let c = s.demo_client().await;
    let mut rx = Receiver::start().await;
    let hook = subscribe(&c, &rx.url(), &["note.created"], None).await;
    let id = hook["id"].as_str().unwrap();
    rx.answer([(500, vec![])]);
    let note =
        |text: &str| json!({ "type": "note_on_contact", "contactRef": "John Smith", "note": text });
    native(&c, note("Fails for good.")).await;
    rx.next().await;
    wait_for_hook(&c, id, |h| h["last_delivery"]["status"] == "failed").await;
    // The next event's attempt is held by the receiver: queued, not yet answered.
    rx.stall(Duration::from_secs(30));
    native(&c, note("Queued behind it.")).await;
    rx.next().await;
    let hook = wait_for_hook(&c, id, |_| true).await;
    let last = &hook["last_delivery"];
    assert_eq!(last["status"], "failed", "{hook}");
    assert_eq!(last["attempts"], 1);
    assert_eq!(last["response_status"], 500);
}

#[tokio::test]
async fn a_stalled_receiver_does_not_hold_back_the_others() {
    let s = common::start_with(|c| {
        c.webhooks.allow_private_targets = true;
        c.webhooks.retry_schedule_secs = vec![1];
        c.webhooks.max_concurrency = 2;
        // Longer than this test waits: the stalled attempt stays in flight throughout.
        c.webhooks.timeout_secs = 60;
    })
    .await;
    let c = s.demo_client().await;
    let mut slow = Receiver::start().await;
    let mut fast = Receiver::start().await;
    slow.stall(Duration::from_secs(120));
    let slow_hook = subscribe(&c, &slow.url(), &["note.created"], None).await;
    subscribe(&c, &fast.url(), &["note.created"], None).await;
    for i in 0..4 {
        native(
            &c,
            json!({ "type": "note_on_contact", "contactRef": "John Smith", "note": format!("Note {i}") }),
        )
        .await;
    }
    let stalled = slow.next().await;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..4 {
        ids.insert(fast.next().await.id);
    }
    assert_eq!(ids.len(), 4, "every event reached the fast receiver");
    assert!(ids.contains(&stalled.id));
    // The slow subscription still has its first attempt in flight and nothing else sent.
    slow.nothing_for(Duration::from_millis(500)).await;
    let hook = wait_for_hook(&c, slow_hook["id"].as_str().unwrap(), |_| true).await;
    assert_eq!(hook["last_delivery"]["attempts"], 0, "{hook}");
    assert_eq!(hook["last_delivery"]["status"], "pending");
}

#[tokio::test]
async fn a_generated_secret_is_returned_once_and_verifies() {
    let s = server(&[1]).await;
    let c = s.demo_client().await;
    let mut rx = Receiver::start().await;
    let hook = subscribe(&c, &rx.url(), &["contact.created"], None).await;
    let secret = hook["secret"]
        .as_str()
        .expect("a generated secret")
        .to_string();
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(STANDARD.decode(&secret[6..]).expect("base64").len(), 32);
    assert_eq!(hook["has_secret"], true);
    let list = c.get("/webhooks").await;
    assert!(
        !list.text.contains(&secret),
        "listing never shows the secret"
    );
    assert!(list.ok(200)["webhooks"][0].get("secret").is_none());
    c.post("/contacts", json!({ "email": "grace@hopper.dev" }))
        .await
        .ok(201);
    let got = rx.next().await;
    verify(&secret, &got);
    assert_eq!(got.json()["data"]["email"], "grace@hopper.dev");
}

#[tokio::test]
async fn secrets_in_the_whsec_format_must_decode() {
    let s = server(&[1]).await;
    let c = s.demo_client().await;
    let r = c
        .post(
            "/webhooks",
            json!({ "url": "https://hooks.example.com/x", "events": ["note.created"], "secret": "whsec_not base64!" }),
        )
        .await;
    r.err(422, "VALIDATION_ERROR");
    assert!(
        r.details()
            .starts_with("secret: a whsec_ secret must be base64"),
        "{}",
        r.details()
    );
}

#[tokio::test]
async fn private_targets_are_refused_without_the_flag() {
    let s = common::start_with(|c| c.webhooks.retry_schedule_secs = vec![60]).await;
    let c = s.demo_client().await;
    let mut rx = Receiver::start().await;
    for (url, reason) in [
        (rx.url(), "loopback"),
        ("http://localhost:8080/hook".to_string(), "loopback"),
        ("http://[::1]/hook".to_string(), "loopback"),
        ("http://10.0.0.7/hook".to_string(), "private"),
        ("https://192.168.1.20/hook".to_string(), "private"),
        (
            "http://169.254.169.254/latest/meta-data".to_string(),
            "cloud metadata",
        ),
        ("http://169.254.10.1/".to_string(), "link-local"),
    ] {
        let r = c
            .post(
                "/webhooks",
                json!({ "url": url, "events": ["note.created"] }),
            )
            .await;
        r.err(422, "VALIDATION_ERROR");
        assert!(
            r.details().starts_with("url: ")
                && r.details().contains(&format!("a {reason} address")),
            "{url}: {}",
            r.details()
        );
    }
    assert_eq!(c.get("/webhooks").await.ok(200)["webhooks"], json!([]));

    // A subscription whose target turned private after registration (as a rebound DNS name
    // does) is refused at delivery: nothing reaches the receiver.
    let url = rx.url();
    let id = s
        .store()
        .write(move |tx| {
            pilot_bridge::store::webhooks::insert(
                tx,
                pilot_bridge::demo::DEMO_ORG,
                &url,
                &["note.created".to_string()],
                "whsec_c2VjcmV0",
            )
        })
        .await
        .expect("insert")
        .id;
    native(
        &c,
        json!({ "type": "note_on_contact", "contactRef": "John Smith", "note": "Internal?" }),
    )
    .await;
    let hook = wait_for_hook(&c, &id, |h| h["last_delivery"]["attempts"] == 1).await;
    assert_eq!(hook["last_delivery"]["status"], "pending", "retried later");
    assert_eq!(hook["last_delivery"]["response_status"], Value::Null);
    rx.nothing_for(Duration::from_millis(500)).await;
    let metrics = reqwest::get(format!("{}/metrics", s.root))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"pilot_bridge_webhook_deliveries_total{outcome="refused"}"#),
        "{metrics}"
    );
}

/// A name lookup that knows one name: what a DNS server under an attacker's control answers
/// for it once it has been rebound to an internal address.
struct PointAt {
    name: &'static str,
    ip: std::net::IpAddr,
}

impl LookupHost for PointAt {
    fn lookup(
        &self,
        host: String,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Vec<std::net::IpAddr>>> + Send>,
    > {
        let found = (host == self.name).then_some(vec![self.ip]);
        Box::pin(async move {
            found.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, host))
        })
    }
}

/// A store with one org subscribed to `note.created` at `url`, one note event queued, and a
/// delivery worker running on it whose name lookup answers `rebind.test` with 127.0.0.1.
async fn worker_resolving_rebind_test(
    url: &str,
    allow_private_targets: bool,
) -> (tempfile::TempDir, Store, tokio::sync::watch::Sender<bool>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let store = tokio::task::spawn_blocking(move || Store::open(&path, &StoreOptions::default()))
        .await
        .unwrap()
        .expect("store");
    let url = url.to_string();
    store
        .write(move |tx| {
            orgs::create(tx, &orgs::NewOrg::named("acme"))?;
            store_webhooks::insert(tx, "acme", &url, &["note.created".into()], SECRET)?;
            pilot_bridge::webhooks::emit(
                tx,
                "acme",
                EventType::NoteCreated,
                &json!({ "id": "n1", "content": "Rebound?" }),
            )
        })
        .await
        .expect("seed");
    let config = WebhooksConfig {
        allow_private_targets,
        retry_schedule_secs: vec![60],
        ..WebhooksConfig::default()
    };
    let lookup = Arc::new(PointAt {
        name: "rebind.test",
        ip: "127.0.0.1".parse().unwrap(),
    });
    let worker = Worker::with_lookup(store.clone(), &config, lookup).expect("worker");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    worker::spawn(worker, stopped);
    (dir, store, stop)
}

const SECRET: &str = "whsec_c2VjcmV0";

#[tokio::test]
async fn a_name_rebound_to_loopback_is_refused_at_delivery() {
    // A name (not `localhost`, not an IP literal, so only the resolver can catch it) that
    // resolves to the loopback address a real receiver listens on.
    let mut rx = Receiver::start().await;
    let url = format!("http://rebind.test:{}/hook", rx.addr.port());

    // With private targets allowed, the same worker, lookup and URL reach the receiver: the
    // name does lead there.
    let (_dir, _store, _stop) = worker_resolving_rebind_test(&url, true).await;
    let got = rx.next().await;
    verify(SECRET, &got);
    assert_eq!(got.json()["data"]["content"], "Rebound?");

    // Without the flag, the production worker's guard refuses the address at delivery.
    let (_dir, store, _stop) = worker_resolving_rebind_test(&url, false).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let (attempts, status, error) = loop {
        let row: (u32, String, Option<String>) = store
            .read(|c| {
                Ok(c.query_row(
                    "SELECT attempts, status, last_error FROM webhook_deliveries",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?)
            })
            .await
            .expect("read");
        if row.0 > 0 || Instant::now() > deadline {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(attempts, 1, "one attempt made");
    assert_eq!(status, "pending", "refused, to be retried on the schedule");
    assert_eq!(
        error.as_deref(),
        Some("target refused: rebind.test resolves to 127.0.0.1, a loopback address")
    );
    rx.nothing_for(Duration::from_millis(1000)).await;
    let listed = store
        .read(|c| store_webhooks::list(c, "acme"))
        .await
        .expect("list");
    let last = listed[0].last_delivery.as_ref().expect("last delivery");
    assert_eq!((last.attempts, last.response_status), (1, None));
}

#[tokio::test]
async fn only_subscribed_events_of_the_same_org_are_delivered() {
    let s = server(&[1]).await;
    let demo = s.demo_client().await;
    let other = s.org_client("other").await;
    let mut demo_rx = Receiver::start().await;
    let mut other_rx = Receiver::start().await;
    subscribe(&demo, &demo_rx.url(), &["contact.created"], None).await;
    subscribe(
        &other,
        &other_rx.url(),
        &["note.created", "contact.created", "contact.updated"],
        None,
    )
    .await;

    // Not subscribed to: no delivery.
    native(
        &demo,
        json!({ "type": "note_on_contact", "contactRef": "Sarah Chen", "note": "Unheard." }),
    )
    .await;
    // Subscribed to: delivered to this org's subscription only.
    demo.post("/contacts", json!({ "email": "only@demo.dev" }))
        .await
        .ok(201);
    let got = demo_rx.next().await;
    assert_eq!(got.json()["type"], "contact.created");
    assert_eq!(got.json()["data"]["email"], "only@demo.dev");
    demo_rx.nothing_for(Duration::from_millis(800)).await;
    other_rx.nothing_for(Duration::from_millis(200)).await;

    // The other org's own writes reach its own receiver.
    other
        .post("/contacts", json!({ "email": "mine@other.dev" }))
        .await
        .ok(201);
    assert_eq!(
        other_rx.next().await.json()["data"]["email"],
        "mine@other.dev"
    );
    demo_rx.nothing_for(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn writes_map_to_the_events_a_user_expects() {
    let s = common::start_with(|c| {
        c.webhooks.allow_private_targets = true;
        c.webhooks.retry_schedule_secs = vec![1];
        c.native.outbox_hold_secs = 1;
    })
    .await;
    let c = s.demo_client().await;
    let mut rx = Receiver::start().await;
    let list = c.get("/webhooks").await;
    let all: Vec<&str> = list.ok(200)["available_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(all.len(), 17);
    for e in [
        "job.completed",
        "message.cancelled",
        "contact.status_changed",
    ] {
        assert!(all.contains(&e), "{e}");
    }
    subscribe(&c, &rx.url(), &all, None).await;

    // pause_campaign → campaign.paused; undo_last → campaign.started.
    native(
        &c,
        json!({ "type": "pause_campaign", "campaignRef": "Seed founders" }),
    )
    .await;
    let got = rx.next().await.json();
    assert_eq!(got["type"], "campaign.paused");
    assert_eq!(got["data"]["name"], "Seed founders");
    assert_eq!(got["data"]["status"], "paused");
    native(&c, json!({ "type": "undo_last" })).await;
    let got = rx.next().await.json();
    assert_eq!(
        (got["type"].as_str(), got["data"]["status"].as_str()),
        (Some("campaign.started"), Some("active"))
    );

    // PATCH /campaigns/{id} with a status → its event; other changes → none.
    let id = s.campaign_id("demo", "Q4 Enterprise").await;
    c.patch(
        &format!("/campaigns/{id}"),
        json!({ "status": "completed" }),
    )
    .await
    .ok(200);
    let got = rx.next().await.json();
    assert_eq!(got["type"], "campaign.completed");
    assert_eq!(got["data"]["id"], id.as_str());

    // mark_status → contact.updated and contact.status_changed (with the previous status).
    native(
        &c,
        json!({ "type": "mark_status", "contactRef": "John Smith", "status": "interested" }),
    )
    .await;
    let updated = rx.next().await.json();
    assert_eq!(updated["type"], "contact.updated");
    assert_eq!(updated["data"]["status"], "interested");
    let changed = rx.next().await.json();
    assert_eq!(changed["type"], "contact.status_changed");
    assert_eq!(changed["data"]["previous_status"], "new");
    assert_eq!(changed["data"]["email"], "john@acme.com");

    // book_meeting → meeting.booked, and the status change it makes.
    let start = (chrono::Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    native(
        &c,
        json!({ "type": "book_meeting", "contactRef": "John Smith", "startTime": start }),
    )
    .await;
    let got = rx.next().await.json();
    assert_eq!(got["type"], "meeting.booked");
    assert_eq!(got["data"]["duration_minutes"], 30);
    assert_eq!(rx.next().await.json()["type"], "contact.updated");
    let got = rx.next().await.json();
    assert_eq!(got["type"], "contact.status_changed");
    assert_eq!(got["data"]["status"], "meeting_booked");

    // send_message (auto mode) → email.sent when the outbox delivers it; undone before → message.cancelled.
    native(
        &c,
        json!({ "type": "send_message", "contactRef": "Sarah Chen", "body": "Take it back." }),
    )
    .await;
    native(&c, json!({ "type": "undo_last" })).await;
    let got = rx.next().await.json();
    assert_eq!(got["type"], "message.cancelled");
    assert_eq!(got["data"]["status"], "cancelled");
    native(
        &c,
        json!({ "type": "send_message", "contactRef": "Sarah Chen", "body": "Hello there." }),
    )
    .await;
    let got = rx.next_of("email.sent").await.json();
    assert_eq!(got["data"]["content"], "Hello there.");
    assert_eq!(got["data"]["direction"], "outbound");

    // start_research → job.completed with the result.
    let reply = native(&c, json!({ "type": "start_research", "company": "Notion" })).await;
    let got = rx.next_of("job.completed").await.json();
    assert_eq!(got["data"]["id"], reply["ids"]["job_id"]);
    assert_eq!(got["data"]["status"], "completed");
    assert!(got["data"]["result"]["summary"].is_string());

    // PUT /contacts/{id} → contact.updated; an upsert that changes nothing → nothing.
    let ada = c
        .post(
            "/contacts",
            json!({ "email": "ada@lovelace.dev", "first_name": "Ada" }),
        )
        .await
        .ok(201)["contacts"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(rx.next().await.json()["type"], "contact.created");
    c.put(&format!("/contacts/{ada}"), json!({ "title": "Countess" }))
        .await
        .ok(200);
    let got = rx.next().await.json();
    assert_eq!(got["type"], "contact.updated");
    assert_eq!(got["data"]["title"], "Countess");
    c.post(
        "/contacts",
        json!({ "email": "ada@lovelace.dev", "first_name": "Ada", "upsert": true }),
    )
    .await
    .ok(201);
    rx.nothing_for(Duration::from_millis(800)).await;
}

/// Verifies `r` with the `standardwebhooks` Python library (the specification's reference
/// implementation, `pip install standardwebhooks`). `.ci/run` installs it, so under CI (`CI`
/// set) a missing library fails the test; elsewhere this says why it skips and gives `None`.
fn python_verifies(secret: &str, raw: bool, r: &Received) -> Option<bool> {
    let has_lib = Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_lib {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with standardwebhooks is needed in CI (.ci/run installs it)"
        );
        eprintln!("skipping the reference check: python3 cannot import standardwebhooks (pip install standardwebhooks)");
        return None;
    }
    // The library base64-decodes string secrets (with or without `whsec_`); raw secrets are
    // handed over as bytes, as its documentation says for non-base64 keys.
    let script = r#"
import json, sys
from standardwebhooks import Webhook
secret, raw, body, headers = sys.argv[1], sys.argv[2] == "raw", sys.argv[3], json.loads(sys.argv[4])
Webhook(secret.encode() if raw else secret).verify(body, headers)
"#;
    let headers = json!({
        "webhook-id": r.id,
        "webhook-timestamp": r.timestamp,
        "webhook-signature": r.signature,
    });
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            secret,
            if raw { "raw" } else { "whsec" },
            &r.body,
        ])
        .arg(headers.to_string())
        .output()
        .expect("run python3");
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    Some(out.status.success())
}

#[tokio::test]
async fn the_reference_python_verifier_accepts_deliveries() {
    let s = server(&[1]).await;
    let c = s.demo_client().await;
    let mut rx = Receiver::start().await;
    let generated = subscribe(&c, &rx.url(), &["note.created"], None).await["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let mut raw_rx = Receiver::start().await;
    subscribe(
        &c,
        &raw_rx.url(),
        &["note.created"],
        Some("plain text secret"),
    )
    .await;
    native(
        &c,
        json!({ "type": "note_on_contact", "contactRef": "Sarah Chen", "note": "Caf\u{e9} \"quoted\" <b>" }),
    )
    .await;
    let got = rx.next().await;
    let raw = raw_rx.next().await;
    verify(&generated, &got);
    verify("plain text secret", &raw);
    // When python_verifies skips it says why; this file's own verifier checked both above.
    if let (Some(a), Some(b)) = (
        python_verifies(&generated, false, &got),
        python_verifies("plain text secret", true, &raw),
    ) {
        assert!(a, "standardwebhooks rejected a whsec_ delivery");
        assert!(b, "standardwebhooks rejected a raw-secret delivery");
        let mut tampered = got.clone();
        tampered.body = tampered.body.replace("quoted", "QUOTED");
        assert_ne!(tampered.body, got.body);
        assert_eq!(python_verifies(&generated, false, &tampered), Some(false));
    }
}

// ---- kill -9 -------------------------------------------------------------------------------------

const KEY: &str = "op_live_WebhookDurabilityTests0123456789abcdefg";

/// `pilot-bridge serve --demo` as a child process on `port`, killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &Path, port: u16) -> Process {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pilot-bridge"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PILOT_BRIDGE_") {
            cmd.env_remove(k);
        }
    }
    let config = dir.join("webhooks.toml");
    std::fs::write(
        &config,
        "[webhooks]\nretry_schedule_secs = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n",
    )
    .expect("config");
    let log = std::fs::File::create(dir.join(format!("serve-{port}.log"))).expect("log");
    cmd.args(["serve", "--demo", "--demo-key", KEY, "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    Process(cmd.spawn().expect("spawn serve"))
}

async fn wait_ready(port: u16) {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
        {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("serve on {port} not ready");
}

use common::free_port;

#[tokio::test]
async fn a_pending_delivery_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    // The receiver's port, not listening yet: every attempt before the crash fails.
    let receiver_port = free_port();
    let port = free_port();
    let mut server = serve(dir.path(), port);
    wait_ready(port).await;
    let c = Client::new(
        format!("http://127.0.0.1:{port}/api/v1"),
        Some(format!("Bearer {KEY}")),
    );
    c.patch("/settings", json!({ "pilot_mode": "auto" }))
        .await
        .ok(200);
    let url = format!("http://127.0.0.1:{receiver_port}/hook");
    let hook = subscribe(&c, &url, &["note.created"], None).await;
    let secret = hook["secret"].as_str().unwrap().to_string();
    let contact = c.get("/contacts?search=John%20Smith").await.page()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let note = c
        .post(
            "/notes",
            json!({ "contact_id": contact, "note": "Survive the crash." }),
        )
        .await
        .ok(201)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let id = hook["id"].as_str().unwrap();
    wait_for_hook(&c, id, |h| {
        h["last_delivery"]["attempts"].as_u64() >= Some(1)
    })
    .await;

    // kill -9 with the delivery pending, then a receiver appears and the server restarts.
    server.0.kill().expect("kill -9");
    server.0.wait().expect("reap");
    drop(server);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", receiver_port))
        .await
        .expect("the receiver's port is free again");
    let mut rx = Receiver::serve(listener);
    let port2 = free_port();
    let _server = serve(dir.path(), port2);
    wait_ready(port2).await;
    let got = rx.next().await;
    verify(&secret, &got);
    assert_eq!(got.json()["type"], "note.created");
    assert_eq!(got.json()["data"]["id"], note.as_str());
    let c2 = Client::new(
        format!("http://127.0.0.1:{port2}/api/v1"),
        Some(format!("Bearer {KEY}")),
    );
    let hook = wait_for_hook(&c2, id, |h| h["last_delivery"]["status"] == "succeeded").await;
    assert!(hook["last_delivery"]["attempts"].as_u64() >= Some(2));
}
