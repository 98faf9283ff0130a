//! Conversation state that never forgets (DESIGN §8, §15), on the real server: exactly one
//! effect per key under a tiny memory bound, a restart between write and retry and between ask
//! and confirm, settled pending actions that only replay, ownership per API key, truthful
//! replays after an undo, compare-and-set undo, and the re-check of pilot mode at confirmation.
//! (Restarts of the real binary, with SIGTERM and kill -9, are in `cli_and_durability.rs`.)

use crate::common;
use crate::common::native as native_common;

use std::time::Duration;

use futures_util::future::join_all;
use native_common::{check_ok, demo, demo_with, Demo, KEY, PATH};
use pilot_bridge::domain::Scope;
use serde_json::{json, Value};

async fn second_key(d: &Demo) -> common::Client {
    let raw = d.s.create_key("demo", Scope::ALL).await;
    d.s.client(&raw)
}

fn note(contact: &str, text: &str) -> Value {
    json!({ "type": "note_on_contact", "contactRef": contact, "note": text })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_memory_bound_still_gives_one_effect_per_key() {
    // One byte of front cache: every record lives in the database only.
    let d = demo_with(|c| c.native.idempotency_max_bytes = 1, Some(0)).await;
    let sarah = d.contact_id("sarah.chen@notion.so").await;
    let n = 300;
    for i in 0..n {
        let body = json!({ "action": note("Sarah Chen", &format!("keyed note {i}")),
                           "idempotencyKey": format!("tiny-{i}") });
        let r = d.send(body).await;
        assert_eq!(check_ok(&r)["mode"], "result");
    }
    for i in 0..n {
        let body = json!({ "action": note("Sarah Chen", &format!("keyed note {i}")),
                           "idempotencyKey": format!("tiny-{i}") });
        let r = d.send(body).await;
        let data = check_ok(&r);
        assert_eq!(data["mode"], "duplicate", "retry {i}: {data}");
        assert_eq!(r.header("idempotent-replayed"), Some("true"));
    }
    let count: i64 =
        d.s.store()
            .read(move |c| {
                Ok(c.query_row(
                    "SELECT COUNT(*) FROM interactions WHERE contact_id = ?1 AND content LIKE 'keyed note %'",
                    [&sarah],
                    |r| r.get(0),
                )?)
            })
            .await
            .unwrap();
    assert_eq!(count, n as i64, "exactly one note per key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_keys_and_pending_actions() {
    let d = demo().await;
    let dir = d.s.dir.path().to_path_buf();
    let body = json!({ "action": note("Sarah Chen", "before the restart"), "idempotencyKey": "restart-1" });
    let first = check_ok(&d.send(body.clone()).await).clone();
    let pid = d
        .ask(json!({ "type": "add_to_campaign", "contactRef": "Sarah Kim", "campaignRef": "Seed founders" }))
        .await;
    // Stop this server and start another on the same data directory.
    let Demo { s, .. } = d;
    let common::TestServer {
        server, dir: tmp, ..
    } = s;
    server.shutdown().await;
    let config = pilot_bridge::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.clone(),
        ..Default::default()
    };
    let server = pilot_bridge::server::start(config, None).await.unwrap();
    let c = common::Client::new(
        format!("http://{}/api/v1", server.addr),
        Some(format!("Bearer {KEY}")),
    );
    let again = c.post(PATH, body).await;
    let again_data = check_ok(&again);
    assert_eq!(again_data["mode"], "duplicate", "{again_data}");
    assert_eq!(again_data["ids"]["note_id"], first["ids"]["note_id"]);
    let confirmed = c
        .post(PATH, json!({ "pendingActionId": pid, "confirmed": true }))
        .await;
    let data = check_ok(&confirmed);
    assert_eq!(data["mode"], "result", "{data}");
    assert_eq!(data["spoken_summary"], "Sarah Kim is now in Seed founders.");
    let twice = c
        .post(PATH, json!({ "pendingActionId": pid, "confirmed": true }))
        .await;
    assert_eq!(check_ok(&twice)["mode"], "duplicate");
    server.shutdown().await;
    drop(tmp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_means_settled() {
    let d = demo().await;
    let pid = d
        .ask(json!({ "type": "add_to_campaign", "contactRef": "Sarah Kim", "campaignRef": "Seed founders" }))
        .await;
    // 32 concurrent confirmations, each with its own idempotency key: one execution.
    let replies = join_all((0..32).map(|i| {
        let d = &d;
        let pid = pid.clone();
        async move {
            d.send(json!({ "pendingActionId": pid, "confirmed": true, "idempotencyKey": format!("c-{i}") }))
                .await
        }
    }))
    .await;
    let modes: Vec<String> = replies
        .iter()
        .map(|r| check_ok(r)["mode"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        modes.iter().filter(|m| *m == "result").count(),
        1,
        "{modes:?}"
    );
    assert_eq!(
        modes.iter().filter(|m| *m == "duplicate").count(),
        31,
        "{modes:?}"
    );
    let audits: i64 =
        d.s.store()
            .read(|c| {
                Ok(c.query_row(
                    "SELECT COUNT(*) FROM audit_log WHERE action_type = 'add_to_campaign' AND outcome = 'result'",
                    [],
                    |r| r.get(0),
                )?)
            })
            .await
            .unwrap();
    assert_eq!(audits, 1, "one execution");
    // Cancelling what already ran: duplicate, and it says so.
    let r = d.confirm(&pid, false).await;
    let data = check_ok(&r);
    assert_eq!(data["mode"], "duplicate", "{data}");
    assert_eq!(data["data"]["cancelled"], false);
    assert!(
        data["spoken_summary"]
            .as_str()
            .unwrap()
            .contains("already ran"),
        "{data}"
    );
}

#[tokio::test]
async fn a_clarification_does_not_use_up_the_key() {
    let d = demo().await;
    let r = d
        .send(json!({ "action": note("Sarah", "which one?"), "idempotencyKey": "clarify-1" }))
        .await;
    let data = check_ok(&r);
    assert_eq!(data["mode"], "clarification_required", "{data}");
    let kim = d.contact_id("sarah.kim@figma.com").await;
    // The same key, now with the chosen contact: the action runs.
    let r = d
        .send(
            json!({ "action": { "type": "note_on_contact", "contactId": kim, "note": "which one?" },
                      "idempotencyKey": "clarify-1" }),
        )
        .await;
    let data = check_ok(&r);
    assert_eq!(data["mode"], "result", "{data}");
    // And it is now bound to that request.
    let r = d
        .send(json!({ "action": note("Sarah", "which one?"), "idempotencyKey": "clarify-1" }))
        .await;
    r.err(422, "IDEMPOTENCY_KEY_REUSED");
}

#[tokio::test]
async fn a_replay_after_an_undo_says_it_was_undone() {
    let d = demo().await;
    let body = json!({ "action": note("Sarah Chen", "undo me"), "idempotencyKey": "undone-1" });
    check_ok(&d.send(body.clone()).await);
    let replay = check_ok(&d.send(body.clone()).await).clone();
    assert_eq!(replay["mode"], "duplicate");
    assert!(
        replay["spoken_summary"]
            .as_str()
            .unwrap()
            .starts_with("I already did that: "),
        "{replay}"
    );
    let undo = d.act(json!({ "type": "undo_last" })).await;
    assert_eq!(undo["data"]["undone"], true, "{undo}");
    let replay = check_ok(&d.send(body).await).clone();
    assert_eq!(replay["mode"], "duplicate");
    assert_eq!(replay["data"]["undone"], true, "{replay}");
    assert_eq!(
        replay["spoken_summary"],
        "I did that earlier, but it was undone since."
    );

    // The same for a confirmed action replayed with the key that asked for it.
    let ask = d
        .send(json!({ "action": { "type": "add_to_campaign", "contactRef": "Sarah Kim", "campaignRef": "Seed founders" },
                      "idempotencyKey": "add-kim" }))
        .await;
    let pid = check_ok(&ask)["pending_action_id"]
        .as_str()
        .unwrap()
        .to_string();
    let confirm = json!({ "pendingActionId": pid, "confirmed": true, "idempotencyKey": "add-kim" });
    assert_eq!(check_ok(&d.send(confirm.clone()).await)["mode"], "result");
    d.act(json!({ "type": "undo_last" })).await;
    let replay = check_ok(&d.send(confirm).await).clone();
    assert_eq!(replay["mode"], "duplicate", "{replay}");
    assert_eq!(replay["data"]["undone"], true, "{replay}");
    let kim = d.contact_id("sarah.kim@figma.com").await;
    let seed = d.campaign_id("Seed founders").await;
    let members =
        d.c.get_query(&format!("/campaigns/{seed}/contacts"), &[("limit", "200")])
            .await;
    if members.status == 200 {
        assert!(
            !members
                .page()
                .iter()
                .any(|m| m["id"] == kim.as_str() || m["contact_id"] == kim.as_str()),
            "undone add is not replayed back in"
        );
    }
}

#[tokio::test]
async fn state_belongs_to_the_api_key() {
    let d = demo().await;
    let other = second_key(&d).await;
    let sarah = d.contact_id("sarah.chen@notion.so").await;
    // Another key of the same org cannot confirm this key's pending action.
    let pid = d
        .ask(json!({ "type": "add_to_campaign", "contactRef": "Sarah Kim", "campaignRef": "Seed founders" }))
        .await;
    let r = d
        .send_as(&other, json!({ "pendingActionId": pid, "confirmed": true }))
        .await;
    let e = r.err(404, "RESOURCE_NOT_FOUND");
    assert!(e["spoken_summary"].is_string());
    // Two devices numbering their turns alike do not collide.
    let before = d.notes(&sarah).await.len();
    for client in [&d.c, &other] {
        let r = d
            .send_as(
                client,
                json!({ "action": note("Sarah Chen", "turn one"), "idempotencyKey": "turn-1" }),
            )
            .await;
        assert_eq!(check_ok(&r)["mode"], "result");
    }
    // Identical keyless notes from two keys are two notes; from one key, one.
    for client in [&d.c, &other, &d.c] {
        check_ok(
            &d.send_as(client, json!({ "action": note("Sarah Chen", "keyless") }))
                .await,
        );
    }
    assert_eq!(d.notes(&sarah).await.len(), before + 4);
    // undo_last undoes the caller key's own last write.
    let undo = check_ok(
        &d.send_as(&other, json!({ "action": { "type": "undo_last" } }))
            .await,
    )
    .clone();
    assert_eq!(undo["data"]["undone"], true);
    assert_eq!(d.notes(&sarah).await.len(), before + 3);
}

#[tokio::test]
async fn undo_leaves_a_status_someone_changed_since() {
    let d = demo().await;
    let john = d.contact_id("john@acme.com").await;
    let marked = d
        .act(json!({ "type": "mark_status", "contactRef": "John Smith", "status": "qualified" }))
        .await;
    assert_eq!(marked["mode"], "result");
    let r =
        d.c.put(&format!("/contacts/{john}"), json!({ "status": "replied" }))
            .await;
    r.ok(200);
    let undo = d.act(json!({ "type": "undo_last" })).await;
    assert_eq!(undo["data"]["undone"], false, "{undo}");
    assert!(
        undo["spoken_summary"].as_str().unwrap().contains("replied"),
        "{undo}"
    );
    assert_eq!(d.contact(&john).await["status"], "replied");

    // Without an intervening change the undo reverts it.
    d.act(json!({ "type": "mark_status", "contactRef": "John Smith", "status": "interested" }))
        .await;
    let undo = d.act(json!({ "type": "undo_last" })).await;
    assert_eq!(undo["data"]["undone"], true, "{undo}");
    assert_eq!(d.contact(&john).await["status"], "replied");
}

#[tokio::test]
async fn a_confirmation_re_checks_pilot_mode() {
    let d = demo().await;
    let pid = d
        .ask(json!({ "type": "send_message", "contactRef": "Sarah Chen", "body": "Quick hello", "subject": "Hi" }))
        .await;
    d.set_pilot_mode("off").await;
    let r = d.confirm(&pid, true).await;
    let data = check_ok(&r);
    assert_eq!(data["mode"], "result", "{data}");
    assert_eq!(data["data"]["sent"], false, "{data}");
    assert_eq!(data["data"]["reason"], "pilot_off", "{data}");
    assert!(data["ids"].get("message_id").is_none(), "{data}");
    let queued: i64 =
        d.s.store()
            .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?))
            .await
            .unwrap();
    assert_eq!(queued, 0, "nothing was queued");
}

#[tokio::test]
async fn a_confirmation_re_checks_the_campaign_and_settles_with_the_error() {
    let d = demo().await;
    let pid = d
        .ask(json!({ "type": "add_to_campaign", "contactRef": "John Smith", "campaignRef": "Seed founders" }))
        .await;
    let seed = d.campaign_id("Seed founders").await;
    d.c.patch(&format!("/campaigns/{seed}"), json!({ "status": "paused" }))
        .await
        .ok(200);
    let r = d.confirm(&pid, true).await;
    let e = r.err(400, "CAMPAIGN_NOT_ACTIVE");
    assert!(e["spoken_summary"].is_string());
    // Settled with that answer: confirming again replays it rather than trying again.
    d.c.patch(&format!("/campaigns/{seed}"), json!({ "status": "active" }))
        .await
        .ok(200);
    d.confirm(&pid, true).await.err(400, "CAMPAIGN_NOT_ACTIVE");
}

#[tokio::test(start_paused = false)]
async fn an_expired_pending_action_is_expired_not_found() {
    let d = demo_with(|c| c.native.pending_ttl_secs = 1, Some(0)).await;
    let pid = d
        .ask(json!({ "type": "pause_campaign", "campaignRef": "Seed founders" }))
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    d.confirm(&pid, true)
        .await
        .err(410, "PENDING_ACTION_EXPIRED");
}
