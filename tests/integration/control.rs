//! Control no model can bypass (DESIGN §21), on the real server: two-step keys refusing
//! self-confirmation over HTTP and WebSocket (and from the CLI), confirmations bound to the
//! action they confirm, events replayed after a reconnect, and commit-aware cancellation.

use crate::common::native as native_common;
use crate::common::redis as redis_common;
use crate::common::ws as ws_common;

use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use native_common::*;
use pilot_bridge::demo;
use pilot_bridge::domain::{KeyPolicy, Scope};
use pilot_bridge::store::keys;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use ws_common::{next_json, send, Ws};

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

// ---------------------------------------------------------------------------------------------
// Events survive reconnects

/// Reads frames until `n` events arrived; fails on anything but events and progress frames.
async fn events(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < n {
        let v = next_json(ws).await;
        assert_eq!(v["type"], "event", "{v}");
        got.push(v);
    }
    got
}

/// Nothing more arrives for a while (a duplicate would).
async fn quiet(ws: &mut Ws, for_: Duration) {
    if let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(for_, ws.next()).await {
        panic!("unexpected frame {t}");
    }
}

fn seq(v: &Value) -> u64 {
    v["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("event without seq: {v}"))
}

async fn research(d: &Demo, company: &str, key: &str) -> String {
    let r = d
        .send(json!({ "action": { "type": "start_research", "company": company }, "idempotencyKey": key }))
        .await;
    let q = check_ok(&r);
    assert_eq!(q["mode"], "queued", "{q}");
    q["ids"]["job_id"].as_str().expect("job id").to_string()
}

#[tokio::test]
async fn an_event_finished_while_no_socket_was_open_is_replayed_on_connect() {
    let d = demo().await;
    let job = research(&d, "Notion", "r-1").await;
    // The job holds 3 s, then runs; no socket is open meanwhile.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut ws = connect(&d, KEY, "?resume_after=0").await;
    let e = events(&mut ws, 1).await.remove(0);
    assert_eq!(e["event"], "job.completed", "{e}");
    assert_eq!(e["data"]["job"]["id"], job.as_str());
    assert_eq!(seq(&e), 1);
    quiet(&mut ws, Duration::from_millis(500)).await;

    // Without resume_after, a session hears live events only.
    let mut fresh = connect(&d, KEY, "").await;
    quiet(&mut fresh, Duration::from_millis(500)).await;
}

async fn replay_in_order_without_duplicates(d: &Demo) {
    let mut ws = connect(d, KEY, "").await;
    research(d, "Notion", "r-1").await;
    let first = events(&mut ws, 1).await.remove(0);
    assert_eq!(seq(&first), 1, "{first}");
    drop(ws);

    // Two more finish while the client is away.
    research(d, "Acme", "r-2").await;
    research(d, "Figma", "r-3").await;
    let d2 = d;
    eventually(Duration::from_secs(20), "both jobs done", || async move {
        (d2.rows("jobs", Some("completed")).await >= 3).then_some(())
    })
    .await;

    // Resuming by auth frame after seq 1: 2 and 3 in order, then live ones, no duplicates.
    let url = format!("ws://{}/api/v1/native/outreachpilot/ws", d.s.server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    send(
        &mut ws,
        json!({ "type": "auth", "token": KEY, "resume_after": 1 }),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "auth_ok");
    let missed = events(&mut ws, 2).await;
    assert_eq!(missed.iter().map(seq).collect::<Vec<_>>(), vec![2, 3]);
    research(d, "Notion", "r-4").await;
    let live = events(&mut ws, 1).await.remove(0);
    assert_eq!(seq(&live), 4, "{live}");
    quiet(&mut ws, Duration::from_millis(500)).await;

    // The same replay again over the upgrade's query, from the start.
    let mut again = connect(d, KEY, "?resume_after=0").await;
    let all = events(&mut again, 4).await;
    assert_eq!(all.iter().map(seq).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    quiet(&mut again, Duration::from_millis(500)).await;
}

#[tokio::test]
async fn events_replay_in_order_without_duplicates_across_a_reconnect() {
    let d = demo().await;
    replay_in_order_without_duplicates(&d).await;
}

#[tokio::test]
async fn events_replay_from_the_redis_state_store_too() {
    let Some(redis) = redis_common::TestRedis::start() else {
        return;
    };
    let url = redis.url();
    let d = demo_with(
        move |c| {
            c.state.backend = pilot_bridge::config::StateBackend::Redis;
            c.state.redis_url = url;
        },
        Some(0),
    )
    .await;
    replay_in_order_without_duplicates(&d).await;
}

#[tokio::test]
async fn a_bad_resume_after_is_a_validation_error() {
    let d = demo().await;
    let url = format!(
        "ws://{}/api/v1/native/outreachpilot/ws?resume_after=soon",
        d.s.server.addr
    );
    let mut req = url.into_client_request().expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {KEY}").parse().expect("header"),
    );
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 422);
            let body: Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or(b"{}")).expect("json");
            assert_eq!(body["ok"], false);
            assert_eq!(body["error"]["code"], "VALIDATION_ERROR", "{body}");
            assert!(body["error"]["spoken_summary"].is_string(), "{body}");
            assert!(
                body["error"]["details"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("resume_after"),
                "{body}"
            );
        }
        other => panic!("expected a 422 refusal, got {other:?}"),
    }
    let url = format!("ws://{}/api/v1/native/outreachpilot/ws", d.s.server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    send(
        &mut ws,
        json!({ "type": "auth", "token": KEY, "resume_after": -3 }),
    )
    .await;
    let e = next_json(&mut ws).await;
    assert_eq!(e["error"]["code"], "VALIDATION_ERROR", "{e}");
    assert!(
        e["error"]["details"]
            .as_str()
            .unwrap_or("")
            .starts_with("resume_after"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// Commit-aware cancellation (the `not_started` case needs a slow upstream: tests/upstream.rs)

#[tokio::test]
async fn cancelling_a_finished_write_says_committed_and_an_unknown_id_says_unknown() {
    let d = demo().await;
    let mut ws = connect(&d, KEY, "").await;
    send(
        &mut ws,
        json!({ "id": "n1", "action": { "type": "note_on_contact", "contactRef": "Sarah Chen", "note": "Cancel me if you can." } }),
    )
    .await;
    let done = next_answer(&mut ws).await;
    assert_eq!(done["id"], "n1");
    assert_eq!(done["data"]["mode"], "result", "{done}");

    send(&mut ws, json!({ "type": "cancel", "id": "n1" })).await;
    assert_eq!(
        next_answer(&mut ws).await,
        json!({ "type": "cancelled", "id": "n1", "outcome": "committed" })
    );
    send(&mut ws, json!({ "type": "cancel", "id": "never-sent" })).await;
    assert_eq!(
        next_answer(&mut ws).await,
        json!({ "type": "cancelled", "id": "never-sent", "outcome": "unknown" })
    );
    // A read took no effect: once answered there is nothing of it to cancel.
    send(
        &mut ws,
        json!({ "id": "r1", "action": { "type": "lookup_person", "personName": "Sarah Chen" } }),
    )
    .await;
    assert_eq!(next_answer(&mut ws).await["id"], "r1");
    send(&mut ws, json!({ "type": "cancel", "id": "r1" })).await;
    assert_eq!(next_answer(&mut ws).await["outcome"], "unknown");

    // A cancel frame must name the request.
    send(&mut ws, json!({ "type": "cancel" })).await;
    let e = next_answer(&mut ws).await;
    assert_eq!(e["ok"], false, "{e}");
    assert_eq!(e["error"]["code"], "VALIDATION_ERROR", "{e}");
    assert!(
        e["error"]["details"]
            .as_str()
            .unwrap_or("")
            .starts_with("id"),
        "{e}"
    );
    // The note is there once: the cancel did not undo or repeat it.
    let sarah = d.contact_id("sarah.chen@notion.so").await;
    let notes = d.notes(&sarah).await;
    assert_eq!(
        notes
            .iter()
            .filter(|n| n["content"] == "Cancel me if you can.")
            .count(),
        1,
        "{notes:?}"
    );
}

// Two-step keys on the surfaces where a model or the words drive the turn.

#[tokio::test]
async fn a_two_step_key_on_chat_runs_a_dangerous_tool_only_after_the_users_later_yes() {
    let d = demo().await;
    let key = two_step_key(&d).await;
    let c = client_with_key(&d.s, &key);
    let before = audience(&d).await;

    let asked = c
        .post(
            "/chat",
            json!({ "message": "add Sarah Chen to Seed founders" }),
        )
        .await;
    let asked = asked.ok(200).clone();
    let call = &asked["tool_calls"][0];
    assert_eq!(call["result"]["mode"], "confirmation_required", "{asked}");
    assert_eq!(
        audience(&d).await,
        before,
        "nothing ran on the asking message"
    );
    let tid = asked["thread_id"].as_str().expect("thread").to_string();

    let yes = c
        .post("/chat", json!({ "message": "yes", "thread_id": tid }))
        .await;
    let yes = yes.ok(200).clone();
    assert_ne!(
        yes["tool_calls"][0]["result"]["mode"], "confirmation_required",
        "{yes}"
    );
    assert_ne!(audience(&d).await, before, "the user's yes ran it");
}

#[tokio::test]
async fn a_two_step_key_cannot_confirm_a_transcript_turn_in_the_same_request() {
    let d = demo().await;
    let key = two_step_key(&d).await;
    let c = client_with_key(&d.s, &key);
    let before = audience(&d).await;

    // `confirmed` sent with the words runs nothing (it is refused: a transcript turn is
    // confirmed by a later spoken yes).
    let r = d
        .send_as(
            &c,
            json!({ "transcript": "add Sarah Chen to Seed founders", "confirmed": true }),
        )
        .await;
    assert_ne!(r.status, 200, "{}", r.text);
    assert_eq!(audience(&d).await, before, "nothing ran");

    let r = d
        .send_as(
            &c,
            json!({ "transcript": "add Sarah Chen to Seed founders" }),
        )
        .await;
    let ask = check_ok(&r).clone();
    assert_eq!(ask["mode"], "confirmation_required", "{ask}");
    assert_eq!(audience(&d).await, before, "nothing ran on the first turn");
    let pid = ask["pending_action_id"].as_str().expect("pid").to_string();

    // The later spoken yes, naming the question, runs it.
    let yes = d
        .send_as(&c, json!({ "transcript": "yes", "pendingActionId": pid }))
        .await;
    let yes = check_ok(&yes);
    assert_ne!(yes["mode"], "confirmation_required", "{yes}");
    assert_ne!(audience(&d).await, before, "the later yes ran it");
}
