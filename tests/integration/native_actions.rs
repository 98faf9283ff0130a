//! The Native Voice Bridge over HTTP, action by action (DESIGN §5, §7, §9): every one of the 17
//! action types end to end against the demo workspace with its effect cross-checked through
//! REST v1, reference resolution, send_message under each pilot mode, and the audit rules of
//! fast and standard mode.

use crate::common::native as native_common;

use std::time::Duration;

use native_common::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Reads

#[tokio::test]
async fn lookup_person_answers_with_the_contact() {
    let d = demo().await;
    let r = d
        .send(json!({
            "action": { "type": "lookup_person", "personName": "Sarah Chen", "company": "Notion" },
            "transcript": "Who is Sarah Chen at Notion?",
            "idempotencyKey": "voice-turn-01",
            "executionMode": "fast",
            "auditReadActions": false
        }))
        .await;
    let data = check_ok(&r);
    assert_eq!(data["mode"], "result");
    assert_eq!(
        data["spoken_summary"],
        "Sarah Chen is VP of Engineering at Notion. Status is qualified."
    );
    let id = d.contact_id("sarah.chen@notion.so").await;
    assert_eq!(data["ids"]["contact_id"], id.as_str());
    assert_eq!(data["data"]["contact"]["email"], "sarah.chen@notion.so");
    assert_eq!(data["data"]["company"]["domain"], "notion.so");
    assert_eq!(data["idempotency_key"], "voice-turn-01");
    assert!(data["audit_id"].is_null());
    assert!(data["candidates"].as_array().unwrap().is_empty());
    assert_eq!(data["performance"]["execution_mode"], "fast");
    let p = phases(&r);
    for phase in ["auth", "parse", "resolve"] {
        assert!(p.iter().any(|x| x == phase), "{phase} in {p:?}");
    }
    assert!(
        !p.iter().any(|x| x == "audit"),
        "no audit in fast mode: {p:?}"
    );
    eprintln!(
        "observed lookup_person server_elapsed_ms = {}",
        data["performance"]["server_elapsed_ms"]
    );
}

#[tokio::test]
async fn lookup_person_lists_a_new_note_first_in_recent_activity() {
    let d = demo().await;
    d.act(json!({ "type": "note_on_contact", "contactRef": "Sarah Chen", "note": "Likes tea." }))
        .await;
    let r = d
        .act(json!({ "type": "lookup_person", "personName": "Sarah Chen", "company": "Notion" }))
        .await;
    let recent = r["data"]["recent_activity"].clone();
    let recent = recent.as_array().expect("recent_activity is a list");
    assert!(recent.len() <= 3, "{recent:?}");
    assert_eq!(recent[0]["channel"], "note", "{recent:?}");
    assert_eq!(recent[0]["content"], "Likes tea.", "{recent:?}");
}

#[tokio::test]
async fn lookup_company_by_domain_name_and_id() {
    let d = demo().await;
    let a = d
        .act(json!({ "type": "lookup_company", "company": "notion.so" }))
        .await;
    assert_eq!(a["mode"], "result");
    assert_eq!(a["data"]["company"]["name"], "Notion");
    assert_eq!(a["data"]["contacts_total"], 2, "Sarah Chen and Priya Raman");
    let spoken = a["spoken_summary"].as_str().unwrap();
    assert!(
        spoken.starts_with("Notion is a productivity software company. You have 2 contacts there"),
        "{spoken}"
    );
    let company_id = a["ids"]["company_id"].as_str().unwrap().to_string();
    let rest =
        d.c.get_query("/companies", &[("domain", "notion.so")])
            .await;
    assert_eq!(rest.page()[0]["id"], company_id.as_str());

    let b = d
        .act(json!({ "type": "lookup_company", "company": "acme" }))
        .await;
    assert_eq!(b["data"]["company"]["domain"], "acme.com");
    let c = d
        .act(json!({ "type": "lookup_company", "companyId": company_id }))
        .await;
    assert_eq!(c["ids"]["company_id"], company_id.as_str());
}

#[tokio::test]
async fn recent_signals_filters_like_rest() {
    let d = demo().await;
    let a = d
        .act(json!({ "type": "recent_signals", "company": "Notion" }))
        .await;
    assert_eq!(a["mode"], "result");
    assert_eq!(a["data"]["total"], 2);
    let rest = d.c.get_query("/signals", &[("company", "Notion")]).await;
    assert_eq!(rest.total(), 2);
    let spoken = a["spoken_summary"].as_str().unwrap();
    assert!(
        spoken.starts_with("2 signals for Notion. Latest: "),
        "{spoken}"
    );

    let b = d
        .act(json!({ "type": "recent_signals", "minIntentScore": 80 }))
        .await;
    assert_eq!(b["data"]["total"], 1);
    assert_eq!(b["data"]["signals"][0]["intent_score"], 82);

    let c = d
        .act(json!({ "type": "recent_signals", "personName": "John Smith", "limit": 1 }))
        .await;
    assert_eq!(
        c["ids"]["contact_id"],
        d.contact_id("john@acme.com").await.as_str()
    );
    assert_eq!(c["data"]["signals"].as_array().unwrap().len(), 1);
    assert!(c["data"]["signals"][0]["title"]
        .as_str()
        .unwrap()
        .contains("Series B"));
}

#[tokio::test]
async fn campaign_stats_match_rest_audience_stats() {
    let d = demo().await;
    let id = d.campaign_id("Q4 Enterprise").await;
    for reference in [
        json!({ "campaignRef": "q4 enterprise" }),
        json!({ "campaignId": id }),
    ] {
        let mut action = reference;
        action["type"] = json!("campaign_stats");
        let a = d.act(action).await;
        assert_eq!(a["mode"], "result");
        assert_eq!(a["ids"]["campaign_id"], id.as_str());
        let rest = d.campaign(&id).await;
        for k in ["total", "active", "completed", "paused", "bounced"] {
            assert_eq!(
                a["data"]["audience_stats"][k], rest["audience_stats"][k],
                "audience_stats.{k}"
            );
        }
        assert_eq!(rest["audience_stats"]["total"], 21);
        assert_eq!(
            a["spoken_summary"],
            "Q4 Enterprise is paused with 21 people: 17 active, 2 completed and 2 bounced."
        );
    }
}

#[tokio::test]
async fn reply_inbox_lists_inbound_replies() {
    let d = demo().await;
    let all = d.act(json!({ "type": "reply_inbox" })).await;
    assert_eq!(all["mode"], "result");
    let inbound = d.activity(&[("direction", "inbound")]).await;
    assert_eq!(all["data"]["total"], inbound.len() as u64);
    assert_eq!(all["data"]["total"], 4);

    let unread = d
        .act(json!({ "type": "reply_inbox", "unreadOnly": true }))
        .await;
    assert_eq!(unread["data"]["total"], 3);
    let spoken = unread["spoken_summary"].as_str().unwrap();
    assert!(
        spoken.starts_with(
            "You have 3 unread replies. In the latest, Sarah Kim wrote: Happy to connect."
        ),
        "{spoken}"
    );

    let john = d
        .act(json!({ "type": "reply_inbox", "contactRef": "John Smith" }))
        .await;
    assert_eq!(john["data"]["total"], 1);
    assert!(john["data"]["replies"][0]["interaction"]["content"]
        .as_str()
        .unwrap()
        .contains("pricing for 50 seats"));
}

// ---------------------------------------------------------------------------------------------
// Writes without confirmation

#[tokio::test]
async fn note_on_contact_shows_up_in_rest_notes() {
    let d = demo().await;
    let sarah = d.contact_id("sarah.chen@notion.so").await;
    let before = d.notes(&sarah).await.len();
    let r = d
        .send(json!({
            "action": { "type": "note_on_contact", "contactRef": "Sarah Chen", "note": "Met after the demo. Follow up Friday." },
            "idempotencyKey": "debrief-1",
            "transcript": "Note on Sarah Chen: met after the demo, follow up Friday."
        }))
        .await;
    let a = check_ok(&r);
    assert_eq!(a["mode"], "result");
    assert_eq!(a["spoken_summary"], "Noted on Sarah Chen.");
    assert_eq!(a["idempotency_key"], "debrief-1");
    assert!(a["audit_id"].is_string());
    let p = phases(&r);
    for phase in ["auth", "parse", "idem", "resolve", "exec", "audit"] {
        assert!(p.iter().any(|x| x == phase), "{phase} in {p:?}");
    }
    let notes = d.notes(&sarah).await;
    assert_eq!(notes.len(), before + 1);
    assert_eq!(notes[0]["id"], a["ids"]["note_id"]);
    assert_eq!(notes[0]["content"], "Met after the demo. Follow up Friday.");
    assert_eq!(notes[0]["contact_id"], sarah.as_str());
    eprintln!(
        "observed note_on_contact server_elapsed_ms = {}",
        a["performance"]["server_elapsed_ms"]
    );
}

#[tokio::test]
async fn mark_status_executes_directly_unless_disqualifying() {
    let d = demo().await;
    let john = d.contact_id("john@acme.com").await;
    assert_eq!(d.contact(&john).await["status"], "new");
    let a = d
        .act(json!({ "type": "mark_status", "contactRef": "John Smith", "status": "interested" }))
        .await;
    assert_eq!(a["mode"], "result", "{a}");
    assert_eq!(a["ids"]["contact_id"], john.as_str());
    assert_eq!(a["data"]["previous_status"], "new");
    assert_eq!(d.contact(&john).await["status"], "interested");

    // Setting the status it already has is a spoken no-op. (A different spelling, since an
    // identical keyless write within the dedupe window would be answered as a duplicate.)
    let again = d
        .act(json!({ "type": "mark_status", "contactRef": "john smith", "status": "interested" }))
        .await;
    assert_eq!(again["mode"], "result");
    assert!(again["spoken_summary"]
        .as_str()
        .unwrap()
        .contains("already"));
}

#[tokio::test]
async fn draft_message_saves_a_draft() {
    let d = demo().await;
    let a = d
        .act(json!({
            "type": "draft_message", "contactRef": "John Smith", "channel": "linkedin",
            "instructions": "mention their Series B"
        }))
        .await;
    assert_eq!(a["mode"], "result");
    assert_eq!(
        a["spoken_summary"],
        "I drafted a LinkedIn message to John Smith."
    );
    assert!(a["ids"]["draft_id"].is_string());
    assert_eq!(a["data"]["draft"]["channel"], "linkedin");
    assert!(a["data"]["draft"]["body"]
        .as_str()
        .unwrap()
        .contains("Mention their Series B."));
    assert_eq!(d.rows("drafts", Some("draft")).await, 1);
    assert_eq!(d.rows("outbox", None).await, 0, "drafting sends nothing");
}

#[tokio::test]
async fn start_research_queues_a_job() {
    let d = demo().await;
    let a = d
        .act(json!({ "type": "start_research", "personName": "John Smith", "topic": "their Series B" }))
        .await;
    assert_eq!(a["mode"], "queued");
    assert!(a["ids"]["job_id"].is_string());
    assert_eq!(
        a["ids"]["contact_id"],
        d.contact_id("john@acme.com").await.as_str()
    );
    assert!(a["audit_id"].is_string());
    assert_eq!(d.rows("jobs", None).await, 1);

    // A company alone is enough.
    let b = d
        .act(json!({ "type": "start_research", "company": "Figma" }))
        .await;
    assert_eq!(b["mode"], "queued");
    assert!(b["ids"]["job_id"].is_string());
    assert_ne!(b["ids"]["job_id"], a["ids"]["job_id"]);
}

#[tokio::test]
async fn enrich_contact_queues_a_job_that_fills_the_company() {
    let d = demo().await;
    let created =
        d.c.post(
            "/contacts",
            json!({ "email": "dana@newco.io", "first_name": "Dana", "last_name": "Newman" }),
        )
        .await;
    let id = created.ok(201)["contacts"][0]["id"]
        .as_str()
        .expect("created contact id")
        .to_string();
    assert!(d.contact(&id).await["company"].is_null());

    let a = d
        .act(json!({ "type": "enrich_contact", "email": "dana@newco.io" }))
        .await;
    assert_eq!(a["mode"], "queued");
    assert!(a["ids"]["job_id"].is_string());
    assert_eq!(a["ids"]["contact_id"], id.as_str());
    // The worker runs the job after its short hold; the result is visible over REST.
    eventually(
        Duration::from_secs(8),
        "enrichment to fill the company",
        || async {
            let c = d.contact(&id).await;
            (c["company"] == "Newco").then_some(())
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Dangerous writes, confirmed

#[tokio::test]
async fn add_to_campaign_changes_audience_stats_after_confirmation() {
    let d = demo().await;
    let seed = d.campaign_id("Seed founders").await;
    let before = d.campaign(&seed).await["audience_stats"]["total"]
        .as_u64()
        .unwrap();
    let pid = d
        .ask(json!({ "type": "add_to_campaign", "contactRef": "Sarah Chen", "campaignRef": "Seed founders" }))
        .await;
    assert_eq!(
        d.campaign(&seed).await["audience_stats"]["total"],
        before,
        "nothing happens before the confirmation"
    );
    let r = d.confirm(&pid, true).await;
    let a = check_ok(&r);
    assert_eq!(a["mode"], "result");
    assert_eq!(a["spoken_summary"], "Sarah Chen is now in Seed founders.");
    for k in ["contact_id", "campaign_id", "audience_id"] {
        assert!(a["ids"][k].is_string(), "ids.{k}: {a}");
    }
    assert_eq!(
        d.campaign(&seed).await["audience_stats"]["total"],
        before + 1
    );
}

#[tokio::test]
async fn remove_from_campaign_changes_audience_stats_after_confirmation() {
    let d = demo().await;
    let seed = d.campaign_id("Seed founders").await;
    let before = d.campaign(&seed).await["audience_stats"]["total"]
        .as_u64()
        .unwrap();
    let a = d
        .ask_and_confirm(json!({ "type": "remove_from_campaign", "contactRef": "Priya Raman", "campaignRef": "Seed founders" }))
        .await;
    assert_eq!(a["mode"], "result");
    assert_eq!(
        a["spoken_summary"],
        "I removed Priya Raman from Seed founders."
    );
    assert_eq!(
        d.campaign(&seed).await["audience_stats"]["total"],
        before - 1
    );
    // Removing someone who is not in the campaign says so and asks nothing.
    let again = d
        .act(json!({ "type": "remove_from_campaign", "contactRef": "priya raman", "campaignRef": "Seed founders" }))
        .await;
    assert_eq!(again["mode"], "result");
    assert_eq!(
        again["spoken_summary"],
        "Priya Raman isn't in Seed founders."
    );
}

#[tokio::test]
async fn pause_and_resume_campaign_show_in_rest() {
    let d = demo().await;
    let seed = d.campaign_id("Seed founders").await;
    let q4 = d.campaign_id("Q4 Enterprise").await;
    let a = d
        .ask_and_confirm(json!({ "type": "pause_campaign", "campaignRef": "Seed founders" }))
        .await;
    assert_eq!(a["spoken_summary"], "I paused Seed founders.");
    assert_eq!(d.campaign(&seed).await["status"], "paused");

    let b = d
        .ask_and_confirm(json!({ "type": "resume_campaign", "campaignId": q4 }))
        .await;
    assert_eq!(b["spoken_summary"], "I resumed Q4 Enterprise.");
    assert_eq!(d.campaign(&q4).await["status"], "active");

    // A draft campaign can be neither paused nor resumed.
    let r = d
        .send(json!({ "action": { "type": "resume_campaign", "campaignRef": "Spring launch" } }))
        .await;
    check_err(&r, 400, "CAMPAIGN_NOT_ACTIVE");
}

#[tokio::test]
async fn book_meeting_appears_in_meeting_activity() {
    let d = demo().await;
    let john = d.contact_id("john@acme.com").await;
    assert!(d.activity(&[("channel", "meeting")]).await.is_empty());
    let pid = d
        .ask(json!({
            "type": "book_meeting", "contactRef": "John Smith",
            "startTime": "2030-12-01T15:00:00Z", "durationMinutes": 45
        }))
        .await;
    assert!(d.activity(&[("channel", "meeting")]).await.is_empty());
    let r = d.confirm(&pid, true).await;
    let a = check_ok(&r);
    assert_eq!(a["mode"], "result");
    assert_eq!(
        a["spoken_summary"],
        "Booked a 45 minute meeting with John Smith on Sunday, December 1, 2030 at 3:00 PM UTC."
    );
    assert!(a["ids"]["meeting_id"].is_string());
    let meetings = d
        .activity(&[("channel", "meeting"), ("contact_id", &john)])
        .await;
    assert_eq!(meetings.len(), 1);
    assert_eq!(meetings[0]["id"], a["ids"]["interaction_id"]);
    assert_eq!(d.contact(&john).await["status"], "meeting_booked");
}

// ---------------------------------------------------------------------------------------------
// send_message and pilot mode (DESIGN §7)

#[tokio::test]
async fn send_message_in_auto_mode_confirms_queues_and_delivers() {
    let d = demo_with(|c| c.native.outbox_hold_secs = 1, Some(0)).await;
    let john = d.contact_id("john@acme.com").await;
    let body = "Hi John, congratulations on the Series B. Worth a chat?";
    let outbound = || {
        let (d, john) = (&d, john.clone());
        async move {
            d.activity(&[
                ("contact_id", &john),
                ("direction", "outbound"),
                ("channel", "email"),
            ])
            .await
        }
    };
    let seeded = outbound().await.len();

    let ask = d
        .act(json!({ "type": "send_message", "contactRef": "John Smith", "body": body, "subject": "Series B" }))
        .await;
    assert_eq!(ask["mode"], "confirmation_required");
    assert_eq!(
        ask["spoken_summary"],
        "Send John Smith an email with the subject Series B, starting: Hi John, congratulations on the Series B. Worth a chat?"
    );
    assert_eq!(ask["data"]["body"], body);
    assert_eq!(d.rows("outbox", None).await, 0, "nothing queued before yes");

    let pid = ask["pending_action_id"].as_str().unwrap();
    let r = d.confirm(pid, true).await;
    let sent = check_ok(&r);
    assert_eq!(sent["mode"], "queued");
    assert!(sent["ids"]["message_id"].is_string());
    assert_eq!(
        sent["spoken_summary"],
        "Your email to John Smith about Series B is queued and goes out in 1 second."
    );
    assert_eq!(d.rows("outbox", Some("queued")).await, 1);

    let delivered = eventually(
        Duration::from_secs(5),
        "the message to be delivered",
        || async {
            let items = outbound().await;
            (items.len() > seeded).then_some(items)
        },
    )
    .await;
    assert_eq!(delivered[0]["content"], body);
    assert_eq!(delivered[0]["subject"], "Series B");
    assert_eq!(d.rows("outbox", Some("sent")).await, 1);
    assert_eq!(d.contact(&john).await["status"], "contacted");
}

#[tokio::test]
async fn send_message_in_review_mode_saves_a_draft() {
    let d = demo().await;
    d.set_pilot_mode("review").await;
    let a = d
        .act(json!({ "type": "send_message", "contactRef": "Sarah Chen", "body": "Hi Sarah, quick idea." }))
        .await;
    assert_eq!(a["mode"], "result", "review mode asks nothing: {a}");
    assert!(a["ids"]["draft_id"].is_string());
    assert!(a["ids"].get("message_id").is_none());
    assert_eq!(a["data"]["pilot_mode"], "review");
    assert_eq!(a["data"]["sent"], false);
    assert!(a["spoken_summary"].as_str().unwrap().contains("review"));
    assert_eq!(d.rows("drafts", Some("pending_review")).await, 1);
    assert_eq!(d.rows("outbox", None).await, 0);
}

#[tokio::test]
async fn send_message_in_off_mode_is_blocked_and_stores_nothing() {
    let d = demo().await;
    d.set_pilot_mode("off").await;
    for confirmed in [None, Some(true)] {
        let mut body = json!({ "action": { "type": "send_message", "contactRef": "Sarah Chen", "body": "Hi" } });
        if let Some(c) = confirmed {
            body["confirmed"] = json!(c);
        }
        let a = d.ok(body).await;
        assert_eq!(a["mode"], "result");
        assert!(a["spoken_summary"]
            .as_str()
            .unwrap()
            .starts_with("Pilot is off"));
        assert_eq!(a["data"]["sent"], false);
        assert!(a.get("pending_action_id").is_none());
    }
    assert_eq!(d.rows("outbox", None).await, 0);
    assert_eq!(d.rows("drafts", None).await, 0);
}

// ---------------------------------------------------------------------------------------------
// undo_last

#[tokio::test]
async fn undo_last_with_nothing_to_undo_says_so() {
    let d = demo().await;
    let a = d.act(json!({ "type": "undo_last" })).await;
    assert_eq!(a["mode"], "result");
    assert_eq!(a["spoken_summary"], "There's nothing to undo.");
    assert_eq!(a["data"]["undone"], false);
    assert!(a["audit_id"].is_string(), "undo_last is a write");
}

// ---------------------------------------------------------------------------------------------
// Resolution (DESIGN §5)

#[tokio::test]
async fn an_ambiguous_name_asks_which_one() {
    let d = demo().await;
    let a = d
        .act(json!({ "type": "lookup_person", "personName": "Sarah" }))
        .await;
    assert_eq!(a["mode"], "clarification_required");
    assert_eq!(
        a["spoken_summary"],
        "Which Sarah do you mean: Sarah Chen at Notion or Sarah Kim at Figma?"
    );
    let candidates = a["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 2);
    let mut names: Vec<&str> = candidates
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["Sarah Chen", "Sarah Kim"]);
    for c in candidates {
        assert!(c["id"].is_string() && c["company"].is_string() && c["title"].is_string());
    }
    // The client resends with the id it picked.
    let kim = candidates
        .iter()
        .find(|c| c["name"] == "Sarah Kim")
        .unwrap();
    let b = d
        .act(json!({ "type": "lookup_person", "contactRef": kim["id"] }))
        .await;
    assert_eq!(b["mode"], "result");
    assert_eq!(b["ids"]["contact_id"], kim["id"]);

    // A write with an ambiguous name stores nothing.
    let sarah_chen = d.contact_id("sarah.chen@notion.so").await;
    let notes_before = d.notes(&sarah_chen).await.len();
    let w = d
        .act(json!({ "type": "note_on_contact", "contactRef": "Sarah", "note": "Which one?" }))
        .await;
    assert_eq!(w["mode"], "clarification_required");
    assert_eq!(d.notes(&sarah_chen).await.len(), notes_before);
}

#[tokio::test]
async fn names_resolve_exactly_fuzzily_and_by_company() {
    let d = demo().await;
    let chen = d.contact_id("sarah.chen@notion.so").await;
    let kim = d.contact_id("sarah.kim@figma.com").await;
    let cases = [
        (json!({ "personName": "Sarah Chen" }), &chen),
        (json!({ "personName": "sarah chen" }), &chen),
        (json!({ "personName": "sara chen" }), &chen),
        (json!({ "personName": "SARAH CHÉN" }), &chen),
        (json!({ "personName": "Sarah", "company": "Figma" }), &kim),
        (
            json!({ "personName": "Sarah", "company": "notion.so" }),
            &chen,
        ),
        (json!({ "contactRef": "Sarah K" }), &kim),
        (json!({ "contactId": kim.clone() }), &kim),
        (json!({ "contactRef": chen.to_uppercase() }), &chen),
        (json!({ "email": "SARAH.KIM@figma.com" }), &kim),
        (json!({ "contactRef": "sarah.chen@notion.so" }), &chen),
    ];
    for (reference, want) in cases {
        let mut action = reference.clone();
        action["type"] = json!("lookup_person");
        let a = d.act(action).await;
        assert_eq!(a["mode"], "result", "{reference}: {a}");
        assert_eq!(a["ids"]["contact_id"], want.as_str(), "{reference}");
    }
}

#[tokio::test]
async fn a_different_last_name_is_not_a_typo() {
    let d = demo().await;
    let created =
        d.c.post(
            "/contacts",
            json!({ "email": "tobias@weber.dev", "first_name": "Tobias", "last_name": "Weber" }),
        )
        .await;
    let tobias = created.ok(201)["contacts"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for typo in ["Tobias Webber", "tobias weber", "Tobais Weber"] {
        let a = d
            .act(json!({ "type": "lookup_person", "personName": typo }))
            .await;
        assert_eq!(a["ids"]["contact_id"], tobias.as_str(), "{typo}");
    }
    // Sharing a first name is not enough: a write must never land on the wrong person.
    for other in ["Tobias Wagner", "Tobias Becker"] {
        let r = d
            .send(json!({ "action": { "type": "note_on_contact", "personName": other, "note": "Hi" } }))
            .await;
        let e = check_err(&r, 404, "RESOURCE_NOT_FOUND");
        assert_eq!(e["spoken_summary"], format!("I couldn't find {other}."));
    }
    assert!(d.notes(&tobias).await.is_empty());
}

#[tokio::test]
async fn unknown_references_are_not_found_with_a_spoken_summary() {
    let d = demo().await;
    let cases: [(Value, &str); 5] = [
        (
            json!({ "type": "lookup_person", "personName": "Nobody Anywhere" }),
            "I couldn't find Nobody Anywhere.",
        ),
        (
            json!({ "type": "lookup_person", "personName": "Sarah Chen", "company": "Acme" }),
            "I couldn't find Sarah Chen at Acme.",
        ),
        (
            json!({ "type": "lookup_person", "contactId": "00000000-0000-4000-8000-000000000000" }),
            "I couldn't find that contact.",
        ),
        (
            json!({ "type": "campaign_stats", "campaignRef": "Winter sale" }),
            "I couldn't find a campaign called Winter sale.",
        ),
        (
            json!({ "type": "note_on_contact", "email": "ghost@nowhere.dev", "note": "hi" }),
            "I couldn't find ghost@nowhere.dev.",
        ),
    ];
    for (action, spoken) in cases {
        let r = d.send(json!({ "action": action })).await;
        let e = check_err(&r, 404, "RESOURCE_NOT_FOUND");
        assert_eq!(e["spoken_summary"], spoken, "{action}");
    }
}

// ---------------------------------------------------------------------------------------------
// Fast mode and audit (DESIGN §9)

#[tokio::test]
async fn reads_are_audited_only_when_asked_writes_always() {
    let d = demo().await;
    let lookup = json!({ "type": "lookup_person", "personName": "John Smith" });
    let before = d.audit_count().await;

    let fast = d.ok(json!({ "action": lookup })).await;
    assert!(fast["audit_id"].is_null());
    assert_eq!(
        d.audit_count().await,
        before,
        "fast reads write no audit record"
    );

    let asked = d
        .ok(json!({ "action": lookup, "auditReadActions": true, "transcript": "Who is John?" }))
        .await;
    let id = asked["audit_id"].as_str().expect("audit id");
    let rec = d.audit_record(id).await.expect("audit record stored");
    assert_eq!(rec["action_type"], "lookup_person");
    assert_eq!(rec["transcript"], "Who is John?");
    assert_eq!(rec["execution_mode"], "fast");
    assert_eq!(rec["outcome"], "result");
    assert_eq!(rec["action"]["personName"], "John Smith");

    let standard = d
        .ok(json!({ "action": lookup, "executionMode": "standard" }))
        .await;
    assert_eq!(standard["performance"]["execution_mode"], "standard");
    let id = standard["audit_id"].as_str().expect("audit id");
    assert_eq!(
        d.audit_record(id).await.expect("record")["execution_mode"],
        "standard"
    );

    let write = d
        .act(json!({ "type": "note_on_contact", "contactRef": "John Smith", "note": "Audited" }))
        .await;
    let id = write["audit_id"].as_str().expect("writes are audited");
    let rec = d.audit_record(id).await.expect("record");
    assert_eq!(rec["action_type"], "note_on_contact");
    assert_eq!(rec["ids"]["note_id"], write["ids"]["note_id"]);
    assert_eq!(d.audit_count().await, before + 3);
}

// ---------------------------------------------------------------------------------------------
// Spoken summaries built from user content stay speakable (DESIGN §5)

#[tokio::test]
async fn spoken_summaries_never_read_out_urls_or_ids() {
    let d = demo().await;
    let sarah = d.contact_id("sarah.chen@notion.so").await;
    let hostile = "Pricing is here (https://evil.example/p) or www.evil.example, ref \
                   123e4567-e89b-12d3-a456-426614174000.";
    let org = pilot_bridge::demo::DEMO_ORG;
    let sarah2 = sarah.clone();
    d.s.store()
        .write(move |tx| {
            pilot_bridge::store::interactions::insert(
                tx,
                org,
                &pilot_bridge::store::interactions::NewInteraction {
                    contact_id: Some(&sarah2),
                    campaign_id: None,
                    direction: "inbound",
                    channel: "email",
                    subject: Some("Re: pricing"),
                    content: hostile,
                    metadata: json!({}),
                    is_read: false,
                    idempotency_key: None,
                    created_at: None,
                },
            )
        })
        .await
        .expect("insert reply");
    // check_ok and check_err reject URLs, ids and over-long summaries.
    let inbox = d.act(json!({ "type": "reply_inbox" })).await;
    assert!(inbox["spoken_summary"]
        .as_str()
        .unwrap()
        .contains("In the latest, Sarah Chen wrote: Pricing is here"));
    let research = d
        .act(json!({ "type": "start_research", "company": "Figma", "topic": "pricing (https://evil.example/pricing)" }))
        .await;
    assert_eq!(research["mode"], "queued");

    let long_email = format!("{}@example.com", "a".repeat(300));
    for action in [
        json!({ "type": "lookup_person", "personName": "Dana (https://evil.example)" }),
        json!({ "type": "lookup_person", "contactRef": "contact 123e4567-e89b-12d3-a456-426614174000" }),
        json!({ "type": "lookup_person", "email": long_email }),
        json!({ "type": "campaign_stats", "campaignRef": "http://campaigns.example/seed" }),
        json!({ "type": "lookup_company", "company": "https://nowhere.example" }),
    ] {
        let r = d.send(json!({ "action": action })).await;
        check_err(&r, 404, "RESOURCE_NOT_FOUND");
    }
}

#[tokio::test]
async fn send_message_can_send_a_saved_draft() {
    let d = demo().await;
    let draft = d
        .act(json!({ "type": "draft_message", "contactRef": "John Smith", "instructions": "ask about the Series B" }))
        .await;
    let draft_id = draft["ids"]["draft_id"].as_str().unwrap().to_string();
    let body = draft["data"]["draft"]["body"].as_str().unwrap().to_string();

    let sent = d
        .ask_and_confirm(
            json!({ "type": "send_message", "contactRef": "John Smith", "draftId": draft_id }),
        )
        .await;
    assert_eq!(sent["mode"], "queued");
    assert_eq!(sent["ids"]["draft_id"], draft_id.as_str());
    assert_eq!(sent["data"]["message"]["body"], body.as_str());
    assert_eq!(d.rows("drafts", Some("queued")).await, 1);
    assert_eq!(d.rows("outbox", Some("queued")).await, 1);

    for missing in ["00000000-0000-4000-8000-000000000000", "draft-1"] {
        let r = d
            .send(json!({ "action": { "type": "send_message", "contactRef": "John Smith", "draftId": missing } }))
            .await;
        let e = check_err(&r, 404, "RESOURCE_NOT_FOUND");
        assert_eq!(e["spoken_summary"], "I couldn't find that draft.");
    }

    // A draft written for one person is never sent to another.
    let for_john = d
        .act(json!({ "type": "draft_message", "contactRef": "John Smith", "subject": "For John" }))
        .await;
    let r = d
        .send(json!({ "action": { "type": "send_message", "contactRef": "Sarah Chen", "draftId": for_john["ids"]["draft_id"] } }))
        .await;
    let e = check_err(&r, 422, "VALIDATION_ERROR");
    assert_eq!(
        e["details"],
        "action.draftId: the draft was written for another contact"
    );
    assert_eq!(
        e["spoken_summary"],
        "That draft is for John Smith, not Sarah Chen."
    );
    assert_eq!(d.rows("outbox", None).await, 1);

    // In review mode a saved draft is handed over for review instead.
    let second = d
        .act(json!({ "type": "draft_message", "contactRef": "Sarah Chen" }))
        .await;
    d.set_pilot_mode("review").await;
    let reviewed = d
        .act(json!({ "type": "send_message", "contactRef": "Sarah Chen", "draftId": second["ids"]["draft_id"] }))
        .await;
    assert_eq!(reviewed["mode"], "result");
    assert_eq!(reviewed["ids"]["draft_id"], second["ids"]["draft_id"]);
    assert_eq!(d.rows("drafts", Some("pending_review")).await, 1);
    assert_eq!(d.rows("outbox", None).await, 1);
}

#[tokio::test]
async fn cached_reads_never_outlive_a_write() {
    let d = demo().await;
    let lookup = json!({ "type": "lookup_person", "personName": "John Smith" });
    let first = d.act(lookup.clone()).await;
    assert!(
        first["spoken_summary"]
            .as_str()
            .unwrap()
            .contains("Status is new"),
        "{first}"
    );
    // The same read again is answered from the cache (Server-Timing shows a cache phase).
    let again = d.send(json!({ "action": lookup.clone() })).await;
    assert!(
        again
            .header("server-timing")
            .unwrap_or("")
            .contains("cache;dur="),
        "{:?}",
        again.header("server-timing")
    );
    d.act(json!({ "type": "mark_status", "contactRef": "John Smith", "status": "interested" }))
        .await;
    let after = d.act(lookup).await;
    assert!(
        after["spoken_summary"]
            .as_str()
            .unwrap()
            .contains("Status is interested"),
        "{after}"
    );
}
