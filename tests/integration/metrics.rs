//! `/metrics`: Prometheus text that promtool accepts, with the documented metric names and no
//! org, key or raw-path labels.

use crate::common;

use std::io::Write;
use std::process::{Command, Stdio};

use pilot_bridge::domain::{Plan, Scope};
use serde_json::json;

#[tokio::test]
async fn metrics_are_exported_and_lint_clean() {
    let s = common::start().await;
    s.create_org("acme", Plan::Pro, Some(0)).await;
    let key = s.create_key("acme", Scope::ALL).await;
    let api = s.client(&key);
    let created = api
        .post(
            "/contacts",
            json!({ "email": "ada@acme.com", "first_name": "Ada" }),
        )
        .await;
    created.ok(201);
    let id = created.body["data"]["contacts"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    api.get(&format!("/contacts/{id}")).await.ok(200);
    api.post(
        "/native/outreachpilot",
        json!({ "action": { "type": "lookup_person", "email": "ada@acme.com" } }),
    )
    .await
    .ok(200);
    api.post("/native/outreachpilot", json!({ "action": { "type": "note_on_contact", "email": "ada@acme.com", "note": "hi" }, "idempotencyKey": "m1" })).await.ok(200);
    api.post("/native/outreachpilot", json!({ "action": { "type": "note_on_contact", "email": "ada@acme.com", "note": "hi" }, "idempotencyKey": "m1" })).await.ok(200);

    let text = reqwest::get(format!("{}/metrics", s.root))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "pilot_bridge_native_requests_total",
        "pilot_bridge_native_server_time_seconds_bucket",
        "pilot_bridge_http_requests_total",
        "pilot_bridge_http_request_duration_seconds_bucket",
        "pilot_bridge_idempotency_replays_total",
        "pilot_bridge_pending_actions",
        "pilot_bridge_websocket_connections",
        "pilot_bridge_backend_operation_duration_seconds_bucket",
        "pilot_bridge_audit_writes_total",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    // Sub-millisecond buckets exist, routes are templates, and nothing identifies an org or key.
    assert!(text.contains("le=\"0.00005\""));
    assert!(text.contains("route=\"/api/v1/contacts/{id}\""));
    assert!(!text.contains(&id));
    assert!(!text.contains("acme"));
    assert!(!text.contains(&key));

    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // CI installs promtool (Debian's prometheus package) and must run the check.
        Err(_) if std::env::var_os("CI").is_some() => panic!("promtool is not installed"),
        Err(_) => eprintln!("promtool not found; skipping the lint (CI runs it)"),
    }
}

#[tokio::test]
async fn a_metrics_listener_takes_metrics_off_the_main_port() {
    let s = common::start_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let at = s.server.metrics_addr.expect("metrics listener bound");
    assert_ne!(at, s.server.addr);

    // The main listener no longer serves it: 404 in the envelope.
    let main = reqwest::get(format!("{}/metrics", s.root)).await.unwrap();
    assert_eq!(main.status(), 404);
    let body: serde_json::Value = main.json().await.unwrap();
    assert_eq!(body["ok"], false);
    assert_eq!(body["error"]["code"], "RESOURCE_NOT_FOUND");

    // The metrics listener serves Prometheus text, and nothing else.
    let m = reqwest::get(format!("http://{at}/metrics")).await.unwrap();
    assert_eq!(m.status(), 200);
    assert!(m
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain")));
    assert!(m.text().await.unwrap().contains("pilot_bridge_"));
    let other = reqwest::get(format!("http://{at}/api/v1/contacts"))
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
}
