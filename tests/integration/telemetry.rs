//! Per-turn traces over OTLP/HTTP (DESIGN §21), end to end: the real binary exports to a local
//! OTLP/HTTP receiver started here, and what arrives is decoded with the OTLP protobuf types.
//!
//! Two processes export to the same receiver: an embedded server (`serve --demo`, endpoint from
//! `PILOT_BRIDGE_OTLP_ENDPOINT`, batches every 100 ms), which is also the upstream of a gateway
//! (`backend = "upstream"`, endpoint and `service_name` from its config file, batches only every
//! minute, so its spans can only arrive through the flush at SIGTERM). Checked: one trace per
//! turn (HTTP, WebSocket frame, MCP tool call) with a root `native.turn` carrying transport, action, mode, outcome, request id and the
//! idempotency key's hash; a child span per phase; an `upstream.call` span with the upstream's
//! own request id; and that no API key, transcript, name, email, note text or raw idempotency
//! key is anywhere in the exported bytes.

use crate::common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::routing::post;
use futures_util::{SinkExt, StreamExt};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use common::Client;

const KEY: &str = pilot_bridge::cli::DEFAULT_DEMO_KEY;
const TRANSCRIPT: &str = "please add a note for Sarah Chen zebra-transcript-marker";
const NOTE: &str = "Prefers calls after lunch, quokka-note-marker";
const IDEM_KEY: &str = "turn-otlp-plain-key-1";

/// Everything the receiver was sent, as raw request bodies.
#[derive(Clone, Default)]
struct Receiver {
    bodies: Arc<Mutex<Vec<Bytes>>>,
}

impl Receiver {
    /// Serves `POST /v1/traces` on 127.0.0.1:0, answering as a collector does (200, an empty
    /// `ExportTraceServiceResponse`).
    async fn start() -> (Receiver, u16) {
        let r = Receiver::default();
        let bodies = r.bodies.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| {
                let bodies = bodies.clone();
                async move {
                    bodies.lock().expect("lock").push(body);
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (r, port)
    }

    fn raw(&self) -> Vec<u8> {
        self.bodies.lock().expect("lock").concat()
    }

    /// Every span received so far, flattened with its service name.
    fn spans(&self) -> Vec<Span> {
        let bodies = self.bodies.lock().expect("lock").clone();
        let mut out = Vec::new();
        for body in bodies {
            let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
            for rs in req.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .map(|r| attrs(&r.attributes))
                    .and_then(|a| a.get("service.name").cloned())
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for s in ss.spans {
                        out.push(Span {
                            service: service.clone(),
                            name: s.name.clone(),
                            trace_id: hex(&s.trace_id),
                            span_id: hex(&s.span_id),
                            parent: hex(&s.parent_span_id),
                            attrs: attrs(&s.attributes),
                            start: s.start_time_unix_nano,
                            end: s.end_time_unix_nano,
                        });
                    }
                }
            }
        }
        out
    }

    /// Polls (generously: CI is a loaded 2-core machine) until `found` picks something.
    async fn wait_for<T>(&self, what: &str, found: impl Fn(&[Span]) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(t) = found(&self.spans()) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} exported within 30 s; got {:#?}",
                self.spans()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attrs: HashMap<String, String>,
    start: u64,
    end: u64,
}

impl Span {
    fn attr(&self, k: &str) -> Option<&str> {
        self.attrs.get(k).map(String::as_str)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .filter_map(|kv| {
            let v = match kv.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => s.clone(),
                AnyValue::IntValue(i) => i.to_string(),
                AnyValue::BoolValue(b) => b.to_string(),
                AnyValue::DoubleValue(d) => d.to_string(),
                _ => return None,
            };
            Some((kv.key.clone(), v))
        })
        .collect()
}

/// A `serve` child with a clean `PILOT_BRIDGE_*` environment; killed when dropped.
struct Serve {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

use common::free_port;

impl Serve {
    async fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Serve {
        let port = free_port();
        let log = dir.join("serve.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pilot-bridge"));
        for (k, _) in std::env::vars() {
            if k.starts_with("PILOT_BRIDGE_") || k.starts_with("OTEL_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn serve");
        let mut s = Serve { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        loop {
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("serve exited with {status}: {}", s.log_text());
            }
            let ready = http
                .get(format!("http://127.0.0.1:{}/readyz", s.port))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "serve not ready: {}",
                s.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn client(&self) -> Client {
        Client::new(
            format!("http://127.0.0.1:{}/api/v1", self.port),
            Some(format!("Bearer {KEY}")),
        )
    }

    /// SIGTERM, then waits for a clean exit.
    async fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "still running 30 s after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "exit {status}: {}", self.log_text());
    }
}

/// A native turn that must succeed; returns the whole envelope (`data`, `meta`).
async fn native(c: &Client, body: Value) -> Value {
    let r = c.post("/native/outreachpilot", body).await;
    r.ok(200);
    r.body
}

fn request_id(reply: &Value) -> String {
    reply["meta"]["request_id"]
        .as_str()
        .expect("meta.request_id")
        .to_string()
}

/// The root span of the turn answered with `request_id`, from `service`.
fn turn<'a>(spans: &'a [Span], service: &str, request_id: &str) -> Option<&'a Span> {
    spans.iter().find(|s| {
        s.service == service && s.name == "native.turn" && s.attr("request_id") == Some(request_id)
    })
}

fn children<'a>(spans: &'a [Span], root: &Span) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.trace_id == root.trace_id && s.parent == root.span_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_export_traces_with_phases_upstream_ids_and_no_personal_data() {
    let (receiver, rport) = Receiver::start().await;
    let base = format!("http://127.0.0.1:{rport}");

    // The embedded server: endpoint from the environment (a base URL: /v1/traces is added).
    let edir = tempfile::tempdir().expect("tempdir");
    let embedded = Serve::start(
        edir.path(),
        &["--demo"],
        &[
            ("PILOT_BRIDGE_OTLP_ENDPOINT", base.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let c = embedded.client();

    let lookup = native(
        &c,
        json!({"action": {"type": "lookup_person", "personName": "Sarah Chen"}}),
    )
    .await;
    assert_eq!(lookup["data"]["mode"], "result", "{lookup}");
    let note = native(
        &c,
        json!({
            "action": {"type": "note_on_contact", "personName": "Sarah Chen", "note": NOTE},
            "transcript": TRANSCRIPT,
            "idempotencyKey": IDEM_KEY,
        }),
    )
    .await;
    assert_eq!(note["data"]["mode"], "result", "{note}");

    let (lookup_id, note_id) = (request_id(&lookup), request_id(&note));
    let (root, phases) = receiver
        .wait_for("embedded note turn with its phases", |spans| {
            let root = turn(spans, "pilot-bridge", &note_id)?;
            let phases: Vec<String> = children(spans, root)
                .iter()
                .map(|s| s.name.clone())
                .collect();
            ["auth", "parse", "idem", "resolve", "exec"]
                .iter()
                .all(|p| phases.iter().any(|n| n == p))
                .then(|| (root.clone(), phases))
        })
        .await;
    assert_eq!(root.attr("transport"), Some("http"), "{root:?}");
    assert_eq!(root.attr("action"), Some("note_on_contact"));
    assert_eq!(root.attr("mode"), Some("fast"));
    assert_eq!(root.attr("outcome"), Some("result"));
    let hash = hex(&Sha256::digest(IDEM_KEY.as_bytes())[..8]);
    assert_eq!(root.attr("idempotency_key_hash"), Some(hash.as_str()));
    assert!(root.parent.is_empty(), "a turn is its own trace: {root:?}");
    // Phases lie inside their turn.
    let spans = receiver.spans();
    for p in children(&spans, &root) {
        assert!(
            p.start >= root.start && p.end <= root.end && p.start <= p.end,
            "{p:?} outside {root:?}"
        );
    }
    assert!(phases.iter().any(|n| n == "state"), "{phases:?}");

    let read = receiver
        .wait_for("embedded lookup turn", |spans| {
            turn(spans, "pilot-bridge", &lookup_id).cloned()
        })
        .await;
    assert_eq!(read.attr("action"), Some("lookup_person"));
    assert_eq!(read.attr("outcome"), Some("result"));
    assert_eq!(read.attr("idempotency_key_hash"), None);
    assert_ne!(read.trace_id, root.trace_id, "one trace per turn");

    // A WebSocket frame and an MCP tool call are turns of their own transports.
    let url = format!(
        "ws://127.0.0.1:{}/api/v1/native/outreachpilot/ws",
        embedded.port
    );
    let mut req = url.into_client_request().expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {KEY}").parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");
    ws.send(Message::Text(
        json!({"id": "w1", "action": {"type": "lookup_company", "company": "Notion"}})
            .to_string()
            .into(),
    ))
    .await
    .expect("send");
    let frame = loop {
        let msg = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("frame in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).expect("json frame");
            if v["type"] != "progress" {
                break v;
            }
        }
    };
    assert_eq!(frame["id"], "w1", "{frame}");
    let ws_id = request_id(&frame);
    let ws_turn = receiver
        .wait_for("WebSocket turn", |spans| {
            turn(spans, "pilot-bridge", &ws_id).cloned()
        })
        .await;
    assert_eq!(ws_turn.attr("transport"), Some("ws"), "{ws_turn:?}");
    assert_eq!(ws_turn.attr("action"), Some("lookup_company"));
    let mcp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .post(format!("http://127.0.0.1:{}/mcp", embedded.port))
        .header("authorization", format!("Bearer {KEY}"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "campaign_stats", "arguments": {"campaignRef": "Seed founders"}}}),
        )
        .send()
        .await
        .expect("MCP call");
    assert_eq!(mcp.status(), 200);
    let mcp_id = mcp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id")
        .to_string();
    let mcp_turn = receiver
        .wait_for("MCP turn", |spans| {
            turn(spans, "pilot-bridge", &mcp_id).cloned()
        })
        .await;
    assert_eq!(mcp_turn.attr("transport"), Some("mcp"), "{mcp_turn:?}");
    assert_eq!(
        mcp_turn.attr("action"),
        Some("campaign_stats"),
        "{mcp_turn:?}"
    );
    assert_eq!(mcp_turn.attr("outcome"), Some("result"));

    // A refusal is a turn too, with its error code as the outcome.
    let r = Client::new(
        format!("http://127.0.0.1:{}/api/v1", embedded.port),
        Some("Bearer op_live_NotAKeyNotAKeyNotAKeyNotAKey000".into()),
    )
    .post(
        "/native/outreachpilot",
        json!({"action": {"type": "undo_last"}}),
    )
    .await;
    r.err(401, "INVALID_API_KEY");
    let refused_id = r.body["meta"]["request_id"]
        .as_str()
        .expect("request id")
        .to_string();
    let refused = receiver
        .wait_for("refused turn", |spans| {
            turn(spans, "pilot-bridge", &refused_id).cloned()
        })
        .await;
    assert_eq!(refused.attr("outcome"), Some("INVALID_API_KEY"));

    // The gateway: endpoint and service name from its config file; batches only every minute,
    // so what it exported arrives through the flush at shutdown.
    let gdir = tempfile::tempdir().expect("tempdir");
    let config = gdir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "backend = \"upstream\"\n[upstream]\nbase_url = \"http://127.0.0.1:{}\"\n\
             [telemetry]\notlp_endpoint = \"{base}/v1/traces\"\nservice_name = \"pb-gateway\"\n",
            embedded.port
        ),
    )
    .expect("config");
    let config = config.to_str().expect("utf-8 path").to_string();
    let mut gateway = Serve::start(
        gdir.path(),
        &["--config", &config],
        &[("OTEL_BSP_SCHEDULE_DELAY", "60000")],
    )
    .await;
    let via = native(
        &gateway.client(),
        json!({"action": {"type": "lookup_person", "personName": "Sarah Chen"}}),
    )
    .await;
    assert_eq!(via["data"]["mode"], "result", "{via}");
    let via_id = request_id(&via);
    assert!(
        receiver.spans().iter().all(|s| s.service != "pb-gateway"),
        "the gateway exported before its batch was due"
    );
    gateway.terminate().await;

    let (groot, calls) = receiver
        .wait_for("gateway turn with its upstream calls", |spans| {
            let root = turn(spans, "pb-gateway", &via_id)?;
            let calls: Vec<Span> = children(spans, root)
                .into_iter()
                .filter(|s| s.name == "upstream.call")
                .cloned()
                .collect();
            (!calls.is_empty()).then(|| (root.clone(), calls))
        })
        .await;
    assert_eq!(groot.attr("action"), Some("lookup_person"));
    assert_eq!(groot.attr("outcome"), Some("result"));
    for call in &calls {
        assert_eq!(
            call.attr("http.response.status_code"),
            Some("200"),
            "{call:?}"
        );
        assert_eq!(call.attr("outcome"), Some("ok"), "{call:?}");
        assert!(call.attr("upstream.operation").is_some(), "{call:?}");
        // The upstream's own request id (it names its requests `req_…`), not ours.
        let id = call
            .attr("upstream.request_id")
            .expect("upstream request id");
        assert!(id.starts_with("req_") && id != via_id, "{call:?}");
    }
    let spans = receiver.spans();
    assert!(
        children(&spans, &groot)
            .iter()
            .any(|s| s.name == "upstream"),
        "the upstream phase: {:?}",
        children(&spans, &groot)
    );

    // Nothing personal, and no secret, anywhere in what was exported.
    let raw = receiver.raw();
    let raw = String::from_utf8_lossy(&raw);
    for secret in [
        KEY,
        "Sarah",
        "sarah.chen@notion.so",
        "zebra-transcript-marker",
        "quokka-note-marker",
        IDEM_KEY,
        "Bearer",
    ] {
        assert!(!raw.contains(secret), "{secret:?} was exported");
    }
}
