//! Two-step confirmation of dangerous native writes (DESIGN §6): the seven dangerous actions ask
//! first and do nothing until confirmed; a confirmation executes exactly once (also under 20
//! concurrent confirmations) under the derived key `native:<type>:<pending_action_id>` and
//! replays afterwards; cancelling, unknown or foreign ids, type mismatches, one-step
//! confirmation, inactive campaigns and expiry.

use crate::common::native as native_common;

use std::time::Duration;

use futures_util::future::join_all;
use native_common::*;
use pilot_bridge::domain::{Plan, Scope};
use serde_json::{json, Value};

/// Everything a dangerous action of the demo can change, read back through REST v1 (and the
/// outbox/meetings tables REST does not expose).
async fn snapshot(d: &Demo) -> Value {
    let seed = d.campaign_id("Seed founders").await;
    let q4 = d.campaign_id("Q4 Enterprise").await;
    let john = d.contact_id("john@acme.com").await;
    let seed_c = d.campaign(&seed).await;
    json!({
        "seed_total": seed_c["audience_stats"]["total"],
        "seed_status": seed_c["status"],
        "q4_status": d.campaign(&q4).await["status"],
        "john_status": d.contact(&john).await["status"],
        "meetings": d.activity(&[("channel", "meeting")]).await.len(),
        "outbox": d.rows("outbox", None).await,
    })
}

#[tokio::test]
async fn the_seven_dangerous_writes_ask_then_execute_exactly_once() {
    let d = demo().await;
    // In an order where each still applies after the ones before it.
    let cases = [
        (
            json!({ "type": "send_message", "contactRef": "John Smith", "body": "Hi John" }),
            "Send John Smith an email, starting: Hi John?",
            "outbox",
        ),
        (
            json!({ "type": "add_to_campaign", "contactRef": "Sarah Chen", "campaignRef": "Seed founders" }),
            "Add Sarah Chen to Seed founders?",
            "seed_total",
        ),
        (
            json!({ "type": "remove_from_campaign", "contactRef": "Priya Raman", "campaignRef": "Seed founders" }),
            "Remove Priya Raman from Seed founders?",
            "seed_total",
        ),
        (
            json!({ "type": "book_meeting", "contactRef": "John Smith", "startTime": "2030-12-01T15:00:00Z" }),
            "Book a 30 minute meeting with John Smith on Sunday, December 1, 2030 at 3:00 PM UTC?",
            "meetings",
        ),
        (
            json!({ "type": "mark_status", "contactRef": "John Smith", "status": "disqualified" }),
            "Mark John Smith as disqualified?",
            "john_status",
        ),
        (
            json!({ "type": "resume_campaign", "campaignRef": "Q4 Enterprise" }),
            "Resume Q4 Enterprise?",
            "q4_status",
        ),
        (
            json!({ "type": "pause_campaign", "campaignRef": "Seed founders" }),
            "Pause Seed founders?",
            "seed_status",
        ),
    ];
    for (action, question, changes) in cases {
        let ty = action["type"].as_str().unwrap().to_string();
        let before = snapshot(&d).await;
        let asked = d
            .ok(json!({ "action": action, "idempotencyKey": format!("ask-{ty}") }))
            .await;
        assert_eq!(asked["mode"], "confirmation_required", "{ty}: {asked}");
        assert_eq!(asked["spoken_summary"], question, "{ty}");
        assert!(asked["audit_id"].is_string(), "{ty}: prompts are audited");
        let pid = asked["pending_action_id"].as_str().unwrap().to_string();
        let expires = chrono::DateTime::parse_from_rfc3339(asked["expires_at"].as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc);
        let ttl = expires - chrono::Utc::now();
        assert!(
            ttl > chrono::Duration::seconds(290) && ttl <= chrono::Duration::seconds(300),
            "{ty}: pending actions live 5 minutes, got {ttl}"
        );
        assert_eq!(
            snapshot(&d).await,
            before,
            "{ty}: no effect before confirmation"
        );
        assert_eq!(
            d.s.server.app.bridge.open_pending().await.unwrap(),
            1,
            "{ty}"
        );

        let r = d
            .send(json!({ "pendingActionId": pid, "confirmed": true, "transcript": "Yes." }))
            .await;
        let done = check_ok(&r);
        let derived = format!("native:{ty}:{pid}");
        assert!(
            done["mode"] == "result" || done["mode"] == "queued",
            "{ty}: {done}"
        );
        assert_eq!(done["idempotency_key"], derived.as_str(), "{ty}");
        assert!(done["audit_id"].is_string());
        let after = snapshot(&d).await;
        assert_ne!(after[changes], before[changes], "{ty}: the effect happened");

        // Confirming again — the same request, or under a fresh key — replays the result.
        for body in [
            json!({ "pendingActionId": pid, "confirmed": true }),
            json!({ "pendingActionId": pid, "confirmed": true, "idempotencyKey": format!("again-{ty}") }),
        ] {
            let r = d.send(body).await;
            let again = check_ok(&r);
            assert_eq!(again["mode"], "duplicate", "{ty}: {again}");
            assert_eq!(r.header("idempotent-replayed"), Some("true"));
            assert_eq!(again["idempotency_key"], derived.as_str());
            // True when it is spoken: it says the action ran earlier.
            assert_eq!(
                again["spoken_summary"],
                format!(
                    "I already did that: {}",
                    done["spoken_summary"].as_str().unwrap()
                )
            );
            assert_eq!(again["ids"], done["ids"]);
        }
        assert_eq!(snapshot(&d).await, after, "{ty}: executed exactly once");
        assert_eq!(
            d.s.server.app.bridge.open_pending().await.unwrap(),
            0,
            "{ty}: a confirmed action no longer awaits an answer"
        );
    }
}

#[tokio::test]
async fn mark_status_other_than_disqualified_needs_no_confirmation() {
    let d = demo().await;
    let john = d.contact_id("john@acme.com").await;
    for status in [
        "contacted",
        "replied",
        "interested",
        "qualified",
        "not_interested",
    ] {
        let a = d
            .act(json!({ "type": "mark_status", "contactRef": "John Smith", "status": status }))
            .await;
        assert_eq!(a["mode"], "result", "{status}: {a}");
        assert_eq!(d.contact(&john).await["status"], status);
    }
}

#[tokio::test]
async fn twenty_concurrent_confirmations_have_one_effect() {
    let d = demo().await;
    let john = d.contact_id("john@acme.com").await;
    let pid = d
        .ask(json!({ "type": "book_meeting", "contactRef": "John Smith", "startTime": "2030-06-01T09:00:00Z" }))
        .await;
    let bodies: Vec<Value> = (0..20)
        .map(|i| {
            if i % 2 == 0 {
                json!({ "pendingActionId": pid, "confirmed": true, "idempotencyKey": format!("yes-{i}") })
            } else {
                json!({ "pendingActionId": pid, "confirmed": true })
            }
        })
        .collect();
    let replies = join_all(bodies.into_iter().map(|b| d.send(b))).await;
    let mut executed = 0;
    for r in &replies {
        let data = check_ok(r);
        assert_eq!(
            data["idempotency_key"],
            format!("native:book_meeting:{pid}").as_str()
        );
        match data["mode"].as_str() {
            Some("result") => executed += 1,
            Some("duplicate") => {}
            other => panic!("unexpected mode {other:?}"),
        }
    }
    assert_eq!(executed, 1, "exactly one confirmation executed");
    let meetings = d
        .activity(&[("channel", "meeting"), ("contact_id", &john)])
        .await;
    assert_eq!(meetings.len(), 1, "exactly one meeting booked");
    assert_eq!(d.rows("meetings", None).await, 1);
}

#[tokio::test]
async fn confirmed_false_cancels_and_a_later_confirmation_is_not_found() {
    let d = demo().await;
    let seed = d.campaign_id("Seed founders").await;
    let before = d.campaign(&seed).await["audience_stats"]["total"].clone();
    let pid = d
        .ask(json!({ "type": "add_to_campaign", "contactRef": "Sarah Chen", "campaignRef": "Seed founders" }))
        .await;
    let r = d.confirm(&pid, false).await;
    let c = check_ok(&r);
    assert_eq!(c["mode"], "result");
    assert_eq!(
        c["spoken_summary"],
        "Okay, cancelled. I won't add Sarah Chen to Seed founders."
    );
    assert_eq!(c["data"]["cancelled"], true);
    let r = d.confirm(&pid, true).await;
    let e = check_err(&r, 404, "RESOURCE_NOT_FOUND");
    assert!(e["spoken_summary"].as_str().unwrap().contains("cancelled"));
    assert_eq!(d.campaign(&seed).await["audience_stats"]["total"], before);
    assert_eq!(d.s.server.app.bridge.open_pending().await.unwrap(), 0);
}

#[tokio::test]
async fn cancelling_after_execution_changes_nothing() {
    let d = demo().await;
    let seed = d.campaign_id("Seed founders").await;
    let pid = d
        .ask(json!({ "type": "pause_campaign", "campaignRef": "Seed founders" }))
        .await;
    assert_eq!(check_ok(&d.confirm(&pid, true).await)["mode"], "result");
    let r = d.confirm(&pid, false).await;
    let c = check_ok(&r);
    // Settled means settled: cancelling what already ran replays it and says so.
    assert_eq!(c["mode"], "duplicate");
    assert_eq!(
        c["spoken_summary"],
        "That already ran, so it can't be cancelled. Say undo to reverse it."
    );
    assert_eq!(c["data"]["cancelled"], false);
    assert_eq!(c["data"]["already_executed"], true);
    assert_eq!(d.campaign(&seed).await["status"], "paused");
}

#[tokio::test]
async fn unknown_and_foreign_pending_ids_are_not_found() {
    let d = demo().await;
    for pid in ["00000000-0000-4000-8000-000000000000", "not-a-pending-id"] {
        let r = d.confirm(pid, true).await;
        let e = check_err(&r, 404, "RESOURCE_NOT_FOUND");
        assert_eq!(
            e["spoken_summary"],
            "I couldn't find that request to confirm. Please ask again."
        );
    }

    let pid = d
        .ask(json!({ "type": "pause_campaign", "campaignRef": "Seed founders" }))
        .await;
    d.s.create_org("other", Plan::Pro, Some(0)).await;
    let other_key = d.s.create_key("other", Scope::ALL).await;
    let other = d.s.client(&other_key);
    for confirmed in [true, false] {
        let r = d
            .send_as(
                &other,
                json!({ "pendingActionId": pid, "confirmed": confirmed }),
            )
            .await;
        check_err(&r, 404, "RESOURCE_NOT_FOUND");
    }
    let seed = d.campaign_id("Seed founders").await;
    assert_eq!(d.campaign(&seed).await["status"], "active");
    // The owner can still confirm it.
    let r = d.confirm(&pid, true).await;
    assert_eq!(check_ok(&r)["mode"], "result");
    assert_eq!(d.campaign(&seed).await["status"], "paused");
}

#[tokio::test]
async fn a_confirmation_naming_another_action_type_is_rejected() {
    let d = demo().await;
    let seed = d.campaign_id("Seed founders").await;
    let before = d.campaign(&seed).await["audience_stats"]["total"].clone();
    let pid = d
        .ask(json!({ "type": "add_to_campaign", "contactRef": "Sarah Chen", "campaignRef": "Seed founders" }))
        .await;
    let r = d
        .send(json!({
            "pendingActionId": pid, "confirmed": true, "idempotencyKey": "mismatch",
            "action": { "type": "pause_campaign", "campaignRef": "Seed founders" }
        }))
        .await;
    let e = check_err(&r, 422, "VALIDATION_ERROR");
    assert_eq!(
        e["details"],
        "action.type: 'pause_campaign' does not match the pending action 'add_to_campaign'"
    );
    assert_eq!(d.campaign(&seed).await["status"], "active");
    assert_eq!(d.campaign(&seed).await["audience_stats"]["total"], before);

    // With the matching action (as the reference's example sends it) it executes.
    let r = d
        .send(json!({
            "pendingActionId": pid, "confirmed": true, "idempotencyKey": "voice-turn-02",
            "transcript": "Yes, confirm it.",
            "action": { "type": "add_to_campaign", "contactRef": "Sarah Chen", "campaignRef": "Seed founders" }
        }))
        .await;
    let ok = check_ok(&r);
    assert_eq!(ok["mode"], "result");
    assert_eq!(
        ok["idempotency_key"],
        format!("native:add_to_campaign:{pid}").as_str()
    );
    assert!(ok["ids"]["audience_id"].is_string());
    assert_ne!(d.campaign(&seed).await["audience_stats"]["total"], before);
}

#[tokio::test]
async fn confirmed_true_in_one_step_executes_directly() {
    let d = demo().await;
    let seed = d.campaign_id("Seed founders").await;
    let before = d.campaign(&seed).await["audience_stats"]["total"]
        .as_u64()
        .unwrap();
    let r = d
        .send(json!({
            "action": { "type": "add_to_campaign", "contactRef": "Sarah Chen", "campaignRef": "Seed founders" },
            "confirmed": true,
            "idempotencyKey": "one-step"
        }))
        .await;
    let a = check_ok(&r);
    assert_eq!(a["mode"], "result");
    assert_eq!(a["spoken_summary"], "Sarah Chen is now in Seed founders.");
    assert_eq!(a["idempotency_key"], "one-step");
    assert_eq!(
        d.campaign(&seed).await["audience_stats"]["total"],
        before + 1
    );
    assert_eq!(d.s.server.app.bridge.open_pending().await.unwrap(), 0);
}

#[tokio::test]
async fn adding_to_a_paused_or_draft_campaign_fails_before_asking() {
    let d = demo().await;
    for (campaign, spoken) in [
        (
            "Q4 Enterprise",
            "Q4 Enterprise is paused, so I can't add anyone to it.",
        ),
        (
            "Spring launch",
            "Spring launch is still a draft, so I can't add anyone to it.",
        ),
    ] {
        for confirmed in [None, Some(true)] {
            let mut body = json!({ "action": { "type": "add_to_campaign", "contactRef": "Sarah Chen", "campaignRef": campaign } });
            if let Some(c) = confirmed {
                body["confirmed"] = json!(c);
            }
            let r = d.send(body).await;
            let e = check_err(&r, 400, "CAMPAIGN_NOT_ACTIVE");
            assert_eq!(e["spoken_summary"], spoken);
        }
        let id = d.campaign_id(campaign).await;
        let rest =
            d.c.post(
                &format!("/campaigns/{id}/trigger"),
                json!({ "contact_id": d.contact_id("sarah.chen@notion.so").await }),
            )
            .await;
        rest.err(400, "CAMPAIGN_NOT_ACTIVE");
    }
    assert_eq!(
        d.s.server.app.bridge.open_pending().await.unwrap(),
        0,
        "no question was asked"
    );
}

#[tokio::test]
async fn a_confirmation_rechecks_records_that_changed_since_the_question() {
    let d = demo().await;
    let seed = d.campaign_id("Seed founders").await;
    let before = d.campaign(&seed).await["audience_stats"]["total"].clone();
    let pid = d
        .ask(json!({ "type": "add_to_campaign", "contactRef": "Sarah Chen", "campaignRef": "Seed founders" }))
        .await;
    let paused =
        d.c.patch(&format!("/campaigns/{seed}"), json!({ "status": "paused" }))
            .await;
    assert_eq!(paused.ok(200)["status"], "paused");
    let r = d.confirm(&pid, true).await;
    check_err(&r, 400, "CAMPAIGN_NOT_ACTIVE");
    assert!(r.header("idempotent-replayed").is_none());
    assert_eq!(d.campaign(&seed).await["audience_stats"]["total"], before);
    // The outcome of the pending action is settled: asking again replays it.
    let r = d
        .send(json!({ "pendingActionId": pid, "confirmed": true, "idempotencyKey": "retry" }))
        .await;
    check_err(&r, 400, "CAMPAIGN_NOT_ACTIVE");
    assert_eq!(r.header("idempotent-replayed"), Some("true"));

    // A contact deleted in between.
    let john = d.contact_id("john@acme.com").await;
    let pid = d
        .ask(json!({ "type": "book_meeting", "contactRef": "John Smith", "startTime": "2030-01-02T10:00:00Z" }))
        .await;
    d.c.delete(&format!("/contacts/{john}")).await.ok(200);
    let r = d.confirm(&pid, true).await;
    check_err(&r, 404, "RESOURCE_NOT_FOUND");
    assert_eq!(d.rows("meetings", None).await, 0);
}

#[tokio::test]
async fn an_expired_pending_action_cannot_be_confirmed() {
    let d = demo_with(|c| c.native.pending_ttl_secs = 1, Some(0)).await;
    let seed = d.campaign_id("Seed founders").await;
    let asked = d
        .act(json!({ "type": "pause_campaign", "campaignRef": "Seed founders" }))
        .await;
    assert_eq!(asked["data"]["expires_in_seconds"], 1);
    let pid = asked["pending_action_id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = d.confirm(pid, true).await;
    let e = check_err(&r, 410, "PENDING_ACTION_EXPIRED");
    assert_eq!(
        e["spoken_summary"],
        "That confirmation expired. Please ask me again."
    );
    assert_eq!(d.campaign(&seed).await["status"], "active");
}

#[tokio::test]
async fn confirming_with_the_key_that_asked_executes_once() {
    let d = demo().await;
    let seed = d.campaign_id("Seed founders").await;
    let before = d.campaign(&seed).await["audience_stats"]["total"]
        .as_u64()
        .unwrap();
    let action = json!({ "type": "add_to_campaign", "contactRef": "Sarah Chen", "campaignRef": "Seed founders" });
    let asked = d
        .ok(json!({ "action": action, "idempotencyKey": "voice-turn-01" }))
        .await;
    assert_eq!(asked["mode"], "confirmation_required");
    let pid = asked["pending_action_id"].as_str().unwrap().to_string();
    // The reference: "Reuse the same idempotency key to prevent duplicate writes."
    let confirm = json!({ "pendingActionId": pid, "confirmed": true, "idempotencyKey": "voice-turn-01", "action": action });
    let first = d.ok(confirm.clone()).await;
    assert_eq!(first["mode"], "result", "{first}");
    assert_eq!(
        first["idempotency_key"],
        format!("native:add_to_campaign:{pid}").as_str()
    );
    let again = d.send(confirm).await;
    assert_eq!(check_ok(&again)["mode"], "duplicate");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let after = d.campaign(&seed).await["audience_stats"]["total"]
        .as_u64()
        .unwrap();
    assert_eq!(after, before + 1);
}
