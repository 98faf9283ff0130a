//! Control no model can bypass (DESIGN §21), on the real server: two-step keys refusing
//! self-confirmation over HTTP and WebSocket (and from the CLI), confirmations bound to the
//! action they confirm, events replayed after a reconnect, and commit-aware cancellation.

mod common;
#[path = "common/native.rs"]
mod native_common;

use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use native_common::*;
use pilot_bridge::demo;
use pilot_bridge::domain::{KeyPolicy, Scope};
use pilot_bridge::store::keys;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const WAIT: Duration = Duration::from_secs(15);

fn add_sarah() -> Value {
    json!({ "type": "add_to_campaign", "contactRef": "Sarah Chen", "campaignRef": "Seed founders" })
}

/// A key of the demo org with the `two_step` policy, and a client holding it.
async fn two_step_key(d: &Demo) -> String {
    let raw = d.s.create_key(demo::DEMO_ORG, Scope::ALL).await;
    let r = raw.clone();
    d.s.store()
        .write(move |tx| {
            let (_, rec) = keys::find_by_hash(tx, &keys::hash_key(&r))?.expect("key row");
            keys::set_policy(tx, &rec.key_id, KeyPolicy::TwoStep)
        })
        .await
        .expect("set policy");
    raw
}

async fn audience(d: &Demo) -> Value {
    let seed = d.campaign_id("Seed founders").await;
    d.campaign(&seed).await["audience_stats"]["total"].clone()
}

async fn connect(d: &Demo, key: &str, query: &str) -> Ws {
    let url = format!(
        "ws://{}/api/v1/native/outreachpilot/ws{query}",
        d.s.server.addr
    );
    let mut req = url.into_client_request().expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("header"),
    );
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");
    assert_eq!(resp.status(), 101);
    ws
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .expect("send");
}

/// The next text frame as JSON (protocol pings are skipped).
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("frame in time")
            .expect("open")
            .expect("frame");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("json frame"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// The next frame that is not a `progress` frame.
async fn next_answer(ws: &mut Ws) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] != "progress" {
            return v;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Two-step keys

#[tokio::test]
async fn a_two_step_key_cannot_confirm_its_own_dangerous_action_over_http() {
    let d = demo().await;
    let key = two_step_key(&d).await;
    let c = client_with_key(&d.s, &key);
    let before = audience(&d).await;

    let r = d
        .send_as(
            &c,
            json!({ "action": add_sarah(), "confirmed": true, "idempotencyKey": "ts-1" }),
        )
        .await;
    let ask = check_ok(&r).clone();
    assert_eq!(ask["mode"], "confirmation_required", "{ask}");
    assert_eq!(ask["data"]["confirmation_policy"], "two_step", "{ask}");
    assert_eq!(audience(&d).await, before, "nothing ran on the first call");
    let pid = ask["pending_action_id"].as_str().expect("pid").to_string();

    // Retrying the self-confirmation changes nothing: the same key replays the same question.
    let again = d
        .send_as(
            &c,
            json!({ "action": add_sarah(), "confirmed": true, "idempotencyKey": "ts-1" }),
        )
        .await;
    let again = check_ok(&again);
    assert_eq!(again["pending_action_id"], pid.as_str(), "{again}");
    assert_eq!(audience(&d).await, before);

    // A later request naming the pending action runs it, once.
    let done = d
        .send_as(&c, json!({ "pendingActionId": pid, "confirmed": true }))
        .await;
    let done = check_ok(&done);
    assert_eq!(done["mode"], "result", "{done}");
    assert_ne!(audience(&d).await, before);

    // Keys without the policy behave as before: `confirmed: true` runs at once.
    let remove = json!({ "type": "remove_from_campaign", "contactRef": "Sarah Chen", "campaignRef": "Seed founders" });
    let r = d.send(json!({ "action": remove, "confirmed": true })).await;
    assert_eq!(check_ok(&r)["mode"], "result", "{}", r.text);
    assert_eq!(audience(&d).await, before);
}

#[tokio::test]
async fn a_two_step_key_cannot_confirm_its_own_dangerous_action_over_websocket() {
    let d = demo().await;
    let key = two_step_key(&d).await;
    let before = audience(&d).await;
    let mut ws = connect(&d, &key, "").await;
    send(
        &mut ws,
        json!({ "id": "1", "action": add_sarah(), "confirmed": true }),
    )
    .await;
    let ask = next_answer(&mut ws).await;
    assert_eq!(ask["id"], "1");
    assert_eq!(ask["data"]["mode"], "confirmation_required", "{ask}");
    assert_eq!(audience(&d).await, before);
    let pid = ask["data"]["pending_action_id"].as_str().expect("pid");
    send(
        &mut ws,
        json!({ "id": "2", "pendingActionId": pid, "confirmed": true }),
    )
    .await;
    let done = next_answer(&mut ws).await;
    assert_eq!(done["id"], "2");
    assert_eq!(done["data"]["mode"], "result", "{done}");
    assert_ne!(audience(&d).await, before);
}

#[tokio::test]
async fn two_step_keys_can_be_named_in_the_configuration() {
    // The route upstream mode relies on: keys live elsewhere, the gateway lists their ids.
    const ID: &str = "key-named-in-config";
    let d = demo_with(|c| c.control.two_step_key_ids = vec![ID.into()], Some(0)).await;
    let raw = keys::generate_raw_key();
    let r = raw.clone();
    d.s.store()
        .write(move |tx| {
            tx.execute(
                "INSERT INTO api_keys (id, org_id, name, key_hash, prefix, scopes, created_at)
                 VALUES (?1, 'demo', 'cfg', ?2, 'op_live_', 'native', '2026-01-01T00:00:00Z')",
                rusqlite::params![ID, &keys::hash_key(&r)[..]],
            )?;
            Ok(())
        })
        .await
        .expect("key row");
    let c = client_with_key(&d.s, &raw);
    let r = d
        .send_as(&c, json!({ "action": add_sarah(), "confirmed": true }))
        .await;
    assert_eq!(check_ok(&r)["mode"], "confirmation_required", "{}", r.text);
}

#[test]
fn keys_create_two_step_is_shown_by_keys_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pilot-bridge"));
        for (k, _) in std::env::vars() {
            if k.starts_with("PILOT_BRIDGE_") {
                cmd.env_remove(k);
            }
        }
        let out = cmd
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("run pilot-bridge");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    run(&["org", "create", "acme"]);
    let careful = run(&["keys", "create", "--org", "acme", "--two-step"]);
    let plain = run(&["keys", "create", "--org", "acme"]);
    let list = run(&["keys", "list", "--org", "acme"]);
    assert!(
        list.lines().next().unwrap_or("").contains("POLICY"),
        "{list}"
    );
    let row = |raw: &str| {
        list.lines()
            .find(|l| l.contains(&raw.trim()[..12]))
            .unwrap_or_else(|| panic!("no row for the key in {list}"))
            .to_string()
    };
    assert!(row(&careful).contains("two_step"), "{list}");
    assert!(row(&plain).contains("standard"), "{list}");
}

// ---------------------------------------------------------------------------------------------
// Confirmation binds the action

#[tokio::test]
async fn a_confirmation_with_swapped_arguments_is_refused_and_the_original_still_confirms() {
    let d = demo().await;
    let before = audience(&d).await;
    let pid = d.ask(add_sarah()).await;

    // The same type, but another contact: refused, nothing runs.
    let swapped = json!({ "type": "add_to_campaign", "contactRef": "John Smith", "campaignRef": "Seed founders" });
    let r = d
        .send(json!({ "pendingActionId": pid, "confirmed": true, "action": swapped }))
        .await;
    let e = check_err(&r, 422, "VALIDATION_ERROR");
    assert!(
        e["details"].as_str().unwrap_or("").starts_with("action"),
        "{e}"
    );
    assert_eq!(audience(&d).await, before);

    // Another type: refused too.
    let pause = json!({ "type": "pause_campaign", "campaignRef": "Seed founders" });
    let r = d
        .send(json!({ "pendingActionId": pid, "confirmed": true, "action": pause }))
        .await;
    check_err(&r, 422, "VALIDATION_ERROR");

    // An unknown name cannot be bound to the pending action either.
    let ghost = json!({ "type": "add_to_campaign", "contactRef": "Nobody Atall", "campaignRef": "Seed founders" });
    let r = d
        .send(json!({ "pendingActionId": pid, "confirmed": true, "action": ghost }))
        .await;
    check_err(&r, 422, "VALIDATION_ERROR");
    assert_eq!(audience(&d).await, before);

    // The pending action stayed open: the same action, named by email this time, confirms it.
    let same = json!({ "type": "add_to_campaign", "email": "sarah.chen@notion.so", "campaignRef": "Seed founders" });
    let r = d
        .send(json!({ "pendingActionId": pid, "confirmed": true, "action": same }))
        .await;
    let done = check_ok(&r);
    assert_eq!(done["mode"], "result", "{done}");
    assert_eq!(done["ids"]["pending_action_id"], pid.as_str());
    assert_ne!(audience(&d).await, before);
}
