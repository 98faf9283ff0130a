//! Idempotency of native writes (DESIGN §8) and `undo_last` (DESIGN §5), over HTTP: replays,
//! key reuse, 100 concurrent twins, stored business errors, unstored validation errors, reads,
//! the keyless dedupe window, and undo scoped to the calling key.

use crate::common::native as native_common;

use std::time::Duration;

use futures_util::future::join_all;
use native_common::*;
use pilot_bridge::demo::DEMO_ORG;
use pilot_bridge::domain::{Plan, Scope};
use serde_json::json;

fn note(contact: &str, text: &str) -> serde_json::Value {
    json!({ "type": "note_on_contact", "contactRef": contact, "note": text })
}

// ---------------------------------------------------------------------------------------------
// Idempotency keys

#[tokio::test]
async fn same_key_same_body_replays_without_a_second_effect() {
    let d = demo().await;
    let sarah = d.contact_id("sarah.chen@notion.so").await;
    let before = d.notes(&sarah).await.len();
    let body = json!({ "action": note("Sarah Chen", "Wants a pilot in May."), "idempotencyKey": "debrief-123" });
    let r1 = d.send(body.clone()).await;
    let first = check_ok(&r1).clone();
    assert_eq!(first["mode"], "result");
    assert!(r1.header("idempotent-replayed").is_none());

    // A retry with another transcript and execution mode is the same request.
    let mut retry = body.clone();
    retry["transcript"] = json!("note on sarah chen: wants a pilot in may");
    retry["executionMode"] = json!("standard");
    for b in [body, retry] {
        let r = d.send(b).await;
        let again = check_ok(&r);
        assert_eq!(again["mode"], "duplicate");
        assert_eq!(r.header("idempotent-replayed"), Some("true"));
        assert_eq!(
            again["spoken_summary"],
            format!(
                "I already did that: {}",
                first["spoken_summary"].as_str().unwrap()
            )
        );
        assert_eq!(again["data"], first["data"]);
        assert_eq!(again["ids"], first["ids"]);
        assert_eq!(again["idempotency_key"], "debrief-123");
    }
    assert_eq!(d.notes(&sarah).await.len(), before + 1);
}

#[tokio::test]
async fn same_key_different_body_is_rejected() {
    let d = demo().await;
    let sarah = d.contact_id("sarah.chen@notion.so").await;
    let before = d.notes(&sarah).await.len();
    d.ok(json!({ "action": note("Sarah Chen", "First"), "idempotencyKey": "k-1" }))
        .await;
    for other in [
        json!({ "action": note("Sarah Chen", "Second"), "idempotencyKey": "k-1" }),
        json!({ "action": note("Sarah Chen", "First"), "idempotencyKey": "k-1", "confirmed": true }),
    ] {
        let r = d.send(other).await;
        let e = check_err(&r, 422, "IDEMPOTENCY_KEY_REUSED");
        assert_eq!(
            e["spoken_summary"],
            "That request ID was already used for something else."
        );
    }
    assert_eq!(d.notes(&sarah).await.len(), before + 1);
}

#[tokio::test]
async fn one_hundred_concurrent_twins_write_one_note() {
    let d = demo().await;
    let john = d.contact_id("john@acme.com").await;
    let before = d.notes(&john).await.len();
    let body = json!({ "action": note("John Smith", "Call back after the board meeting."), "idempotencyKey": "flood-1" });
    let replies = join_all((0..100).map(|_| d.send(body.clone()))).await;
    let mut fresh = 0;
    for r in &replies {
        let data = check_ok(r);
        match data["mode"].as_str() {
            Some("result") => fresh += 1,
            Some("duplicate") => {}
            other => panic!("unexpected mode {other:?}"),
        }
        assert_eq!(data["idempotency_key"], "flood-1");
    }
    assert_eq!(fresh, 1);
    let notes = d.notes(&john).await;
    assert_eq!(notes.len(), before + 1, "exactly one note");
    let ids: std::collections::HashSet<String> = replies
        .iter()
        .map(|r| {
            r.body["data"]["ids"]["note_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "every reply names the same note");
}

#[tokio::test]
async fn a_not_found_while_resolving_is_not_kept_under_the_key() {
    let d = demo().await;
    let body = json!({ "action": note("Nadia Quell", "Hello"), "idempotencyKey": "nf-1" });
    let r = d.send(body.clone()).await;
    check_err(&r, 404, "RESOURCE_NOT_FOUND");
    assert!(r.header("idempotent-replayed").is_none());

    // Nothing happened, so nothing was kept (DESIGN §8): once the contact exists, the same
    // key runs the note.
    let created =
        d.c.post(
            "/contacts",
            json!({ "email": "nadia@quell.dev", "first_name": "Nadia", "last_name": "Quell" }),
        )
        .await;
    let nadia = created.ok(201)["contacts"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = d.send(body.clone()).await;
    assert_eq!(check_ok(&r)["mode"], "result");
    assert_eq!(d.notes(&nadia).await.len(), 1);
    let r = d.send(body).await;
    assert_eq!(check_ok(&r)["mode"], "duplicate");
    assert_eq!(d.notes(&nadia).await.len(), 1);
}

#[tokio::test]
async fn validation_errors_are_not_stored() {
    let d = demo().await;
    let sarah = d.contact_id("sarah.chen@notion.so").await;
    let before = d.notes(&sarah).await.len();
    let bad_bodies = [
        json!({ "action": { "type": "note_on_contact", "contactRef": "Sarah Chen" }, "idempotencyKey": "fix-me" }),
        json!({ "action": { "type": "note_on_contact", "contactRef": "Sarah Chen", "note": "x", "nte": "x" }, "idempotencyKey": "fix-me" }),
        // Caught after the key was claimed, while resolving the reference.
        json!({ "action": note("!!!", "Fine"), "idempotencyKey": "fix-me" }),
    ];
    for bad in bad_bodies {
        let r = d.send(bad).await;
        check_err(&r, 422, "VALIDATION_ERROR");
        assert!(r.header("idempotent-replayed").is_none());
    }
    let fixed = d
        .ok(json!({ "action": note("Sarah Chen", "Fine"), "idempotencyKey": "fix-me" }))
        .await;
    assert_eq!(fixed["mode"], "result");
    assert_eq!(d.notes(&sarah).await.len(), before + 1);
}

#[tokio::test]
async fn reads_echo_the_key_and_are_not_cached() {
    let d = demo().await;
    let john = d.contact_id("john@acme.com").await;
    let body = json!({ "action": { "type": "lookup_person", "personName": "John Smith" }, "idempotencyKey": "read-1" });
    let a = d.ok(body.clone()).await;
    assert_eq!(a["mode"], "result");
    assert_eq!(a["idempotency_key"], "read-1");
    assert!(a["spoken_summary"]
        .as_str()
        .unwrap()
        .ends_with("Status is new."));

    let put =
        d.c.put(
            &format!("/contacts/{john}"),
            json!({ "status": "interested" }),
        )
        .await;
    assert_eq!(put.ok(200)["status"], "interested");
    let r = d.send(body).await;
    let b = check_ok(&r);
    assert_eq!(b["mode"], "result", "reads are not replayed");
    assert!(r.header("idempotent-replayed").is_none());
    assert!(b["spoken_summary"]
        .as_str()
        .unwrap()
        .ends_with("Status is interested."));

    // The key was not taken by the read: a write may still use it.
    let w = d
        .ok(json!({ "action": note("John Smith", "Keyed"), "idempotencyKey": "read-1" }))
        .await;
    assert_eq!(w["mode"], "result");
}

#[tokio::test]
async fn another_orgs_identical_key_is_a_different_entry() {
    let d = demo().await;
    d.s.create_org("other", Plan::Pro, Some(0)).await;
    let other = d.s.client(&d.s.create_key("other", Scope::ALL).await);
    let body = json!({ "action": note("Sarah Chen", "Shared key"), "idempotencyKey": "shared" });
    assert_eq!(d.ok(body.clone()).await["mode"], "result");
    // The other org has no Sarah Chen: its request runs (and fails) instead of replaying ours.
    let r = d.send_as(&other, body).await;
    check_err(&r, 404, "RESOURCE_NOT_FOUND");
}

#[tokio::test]
async fn keyless_identical_writes_inside_the_window_are_duplicates() {
    let d = demo_with(|c| c.native.dedupe_window_secs = 1, Some(0)).await;
    let sarah = d.contact_id("sarah.chen@notion.so").await;
    let before = d.notes(&sarah).await.len();
    let body = json!({ "action": note("Sarah Chen", "Voice retry"), "transcript": "one" });
    assert_eq!(d.ok(body.clone()).await["mode"], "result");
    let mut retry = body.clone();
    retry["transcript"] = json!("two");
    let r = d.send(retry).await;
    let dup = check_ok(&r);
    assert_eq!(dup["mode"], "duplicate");
    assert_eq!(r.header("idempotent-replayed"), Some("true"));
    assert!(dup["idempotency_key"].is_null());
    assert_eq!(d.notes(&sarah).await.len(), before + 1);

    // A different write is not a duplicate.
    assert_eq!(
        d.act(note("Sarah Chen", "Another thing")).await["mode"],
        "result"
    );
    assert_eq!(d.notes(&sarah).await.len(), before + 2);

    // After the window the same words are a new request.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(d.ok(body).await["mode"], "result");
    assert_eq!(d.notes(&sarah).await.len(), before + 3);
}

// ---------------------------------------------------------------------------------------------
// undo_last

#[tokio::test]
async fn undo_last_is_exempt_from_the_dedupe_window() {
    let d = demo().await;
    let sarah = d.contact_id("sarah.chen@notion.so").await;
    let before = d.notes(&sarah).await.len();
    d.act(note("Sarah Chen", "One")).await;
    d.act(note("Sarah Chen", "Two")).await;
    assert_eq!(d.notes(&sarah).await.len(), before + 2);
    for _ in 0..2 {
        let u = d.act(json!({ "type": "undo_last" })).await;
        assert_eq!(u["mode"], "result", "{u}");
        assert_eq!(u["data"]["undone"], true, "{u}");
        assert_eq!(
            u["spoken_summary"],
            "Undone. I deleted the note on Sarah Chen."
        );
    }
    assert_eq!(d.notes(&sarah).await.len(), before);
    let u = d.act(json!({ "type": "undo_last" })).await;
    assert_eq!(u["spoken_summary"], "There's nothing to undo.");
}

#[tokio::test]
async fn undo_last_reverses_the_newest_write_first() {
    let d = demo().await;
    let john = d.contact_id("john@acme.com").await;
    let seed = d.campaign_id("Seed founders").await;
    let seed_total = d.campaign(&seed).await["audience_stats"]["total"].clone();
    let notes_before = d.notes(&john).await.len();

    d.act(note("John Smith", "Undo me last")).await;
    d.ask_and_confirm(json!({ "type": "add_to_campaign", "contactRef": "John Smith", "campaignRef": "Seed founders" }))
        .await;
    d.act(json!({ "type": "mark_status", "contactRef": "John Smith", "status": "interested" }))
        .await;
    assert_ne!(
        d.campaign(&seed).await["audience_stats"]["total"],
        seed_total
    );
    assert_eq!(d.contact(&john).await["status"], "interested");

    let u = d.act(json!({ "type": "undo_last" })).await;
    assert_eq!(u["spoken_summary"], "Undone. John Smith is back to new.");
    assert_eq!(u["data"]["undone_action"], "mark_status");
    assert_eq!(d.contact(&john).await["status"], "new");
    assert_eq!(d.notes(&john).await.len(), notes_before + 1);

    let u = d.act(json!({ "type": "undo_last" })).await;
    assert_eq!(
        u["spoken_summary"],
        "Undone. John Smith is out of Seed founders again."
    );
    assert_eq!(
        d.campaign(&seed).await["audience_stats"]["total"],
        seed_total
    );

    let u = d.act(json!({ "type": "undo_last" })).await;
    assert_eq!(u["data"]["undone_action"], "note_on_contact");
    assert_eq!(d.notes(&john).await.len(), notes_before);

    let u = d.act(json!({ "type": "undo_last" })).await;
    assert_eq!(u["data"]["undone"], false);
}

#[tokio::test]
async fn undo_last_cancels_a_queued_message_and_resumes_a_paused_campaign() {
    let d = demo().await;
    let seed = d.campaign_id("Seed founders").await;
    d.ask_and_confirm(json!({ "type": "pause_campaign", "campaignRef": "Seed founders" }))
        .await;
    let sent = d
        .ask_and_confirm(
            json!({ "type": "send_message", "contactRef": "Sarah Chen", "body": "Hi Sarah" }),
        )
        .await;
    assert_eq!(sent["mode"], "queued");
    assert_eq!(d.rows("outbox", Some("queued")).await, 1);

    let u = d.act(json!({ "type": "undo_last" })).await;
    assert_eq!(
        u["spoken_summary"],
        "Undone. I cancelled the email to Sarah Chen before it went out."
    );
    assert_eq!(d.rows("outbox", Some("queued")).await, 0);
    assert_eq!(d.rows("outbox", Some("cancelled")).await, 1);

    assert_eq!(d.campaign(&seed).await["status"], "paused");
    let u = d.act(json!({ "type": "undo_last" })).await;
    assert_eq!(
        u["spoken_summary"],
        "Undone. Seed founders is running again."
    );
    assert_eq!(d.campaign(&seed).await["status"], "active");
}

#[tokio::test]
async fn undo_last_only_undoes_the_callers_own_writes() {
    let d = demo().await;
    let sarah = d.contact_id("sarah.chen@notion.so").await;
    let before = d.notes(&sarah).await.len();
    let second_key = d.s.create_key(DEMO_ORG, Scope::ALL).await;
    let other = d.s.client(&second_key);

    let r = d
        .send_as(
            &other,
            json!({ "action": note("Sarah Chen", "From the glasses") }),
        )
        .await;
    assert_eq!(check_ok(&r)["mode"], "result");
    assert_eq!(d.notes(&sarah).await.len(), before + 1);

    let u = d.act(json!({ "type": "undo_last" })).await;
    assert_eq!(u["spoken_summary"], "There's nothing to undo.");
    assert_eq!(
        d.notes(&sarah).await.len(),
        before + 1,
        "not this key's note"
    );

    let r = d
        .send_as(&other, json!({ "action": { "type": "undo_last" } }))
        .await;
    assert_eq!(check_ok(&r)["data"]["undone"], true);
    assert_eq!(d.notes(&sarah).await.len(), before);
}

#[tokio::test]
async fn a_twin_still_running_after_the_wait_is_409_in_use() {
    let d = demo_with(|c| c.native.idempotency_wait_ms = 200, Some(0)).await;
    let john = d.contact_id("john@acme.com").await;
    let before = d.notes(&john).await.len();
    // Hold the database writer so the first request stays in flight.
    let store = d.s.store().clone();
    let (held, holding) = tokio::sync::oneshot::channel();
    let blocker = tokio::spawn(async move {
        store
            .write(move |_| {
                let _ = held.send(());
                std::thread::sleep(Duration::from_millis(2000));
                Ok(())
            })
            .await
    });
    holding.await.expect("writer held");
    let body = json!({ "action": note("John Smith", "Slow write"), "idempotencyKey": "slow-1" });
    let (a, b) = tokio::join!(d.send(body.clone()), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        d.send(body.clone()).await
    });
    blocker.await.unwrap().unwrap();
    // Whichever arrived second waited 200 ms for the other, then gave up.
    let (done, busy) = if a.status == 200 { (a, b) } else { (b, a) };
    assert_eq!(check_ok(&done)["mode"], "result");
    let e = check_err(&busy, 409, "IDEMPOTENCY_KEY_IN_USE");
    assert_eq!(
        e["spoken_summary"],
        "I'm still working on that request. Please try again in a moment."
    );
    assert_eq!(busy.header("retry-after"), Some("1"));
    // Retrying after it finished replays it.
    let r = d.send(body).await;
    assert_eq!(check_ok(&r)["mode"], "duplicate");
    assert_eq!(d.notes(&john).await.len(), before + 1);
}

#[tokio::test]
async fn undo_last_cancels_queued_research_and_reverts_an_enrichment() {
    let d = demo().await;
    let research = d
        .act(json!({ "type": "start_research", "contactRef": "John Smith" }))
        .await;
    assert_eq!(research["mode"], "queued");
    let u = d.act(json!({ "type": "undo_last" })).await;
    assert_eq!(
        u["spoken_summary"],
        "Undone. I cancelled the research on John Smith."
    );
    assert_eq!(d.rows("jobs", Some("cancelled")).await, 1);

    let created =
        d.c.post(
            "/contacts",
            json!({ "email": "dana@newco.io", "first_name": "Dana", "last_name": "Newman" }),
        )
        .await;
    let dana = created.ok(201)["contacts"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let enrich = d
        .act(json!({ "type": "enrich_contact", "email": "dana@newco.io" }))
        .await;
    assert_eq!(enrich["mode"], "queued");
    eventually(Duration::from_secs(8), "the enrichment to run", || async {
        (d.contact(&dana).await["company"] == "Newco").then_some(())
    })
    .await;
    let u = d.act(json!({ "type": "undo_last" })).await;
    assert_eq!(
        u["spoken_summary"],
        "Undone. Dana Newman's details are back to what they were."
    );
    assert!(d.contact(&dana).await["company"].is_null());
}
