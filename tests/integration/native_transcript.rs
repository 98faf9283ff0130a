//! Transcript turns (DESIGN §19) over real HTTP: a body with only `transcript` is read by the
//! built-in intent parser and runs the same pipeline (`data.parsed_action` says what was
//! understood); "yes"/"no" answer a pending action, by id or the caller key's newest one;
//! nothing recognised asks with `data.reason: "unrecognized"`; dates are read in the org's
//! time zone.

use crate::common::native as native_common;

use native_common::*;
use pilot_bridge::domain::Scope;
use serde_json::json;

#[tokio::test]
async fn a_transcript_alone_runs_the_action_it_says() {
    let d = demo().await;
    let data = d
        .ok(json!({ "transcript": "Um, who is Sarah Chen at Notion?" }))
        .await;
    assert_eq!(data["mode"], "result", "{data}");
    assert_eq!(
        data["data"]["parsed_action"],
        json!({ "type": "lookup_person", "personName": "Sarah Chen", "company": "Notion" })
    );
    assert!(
        data["spoken_summary"]
            .as_str()
            .unwrap()
            .contains("VP of Engineering"),
        "{data}"
    );
    // A write, keyed: the note lands once, and a retry replays.
    let john = d.contact_id("john@acme.com").await;
    let before = d.notes(&john).await.len();
    let body = json!({
        "transcript": "note on John Smith: wants pricing by Friday",
        "idempotencyKey": "voice-note-1"
    });
    let first = d.ok(body.clone()).await;
    assert_eq!(first["mode"], "result", "{first}");
    assert_eq!(
        first["data"]["parsed_action"],
        json!({ "type": "note_on_contact", "contactRef": "John Smith", "note": "wants pricing by Friday" })
    );
    let again = d.ok(body).await;
    assert_eq!(again["mode"], "duplicate", "{again}");
    assert_eq!(again["data"]["parsed_action"]["type"], "note_on_contact");
    let notes = d.notes(&john).await;
    assert_eq!(notes.len(), before + 1);
    assert_eq!(notes[0]["content"], "wants pricing by Friday");
}

#[tokio::test]
async fn nothing_recognised_asks_with_a_hint() {
    let d = demo().await;
    let data = d.ok(json!({ "transcript": "play some jazz music" })).await;
    assert_eq!(data["mode"], "clarification_required", "{data}");
    assert_eq!(data["data"]["reason"], "unrecognized");
    assert!(data["data"].get("parsed_action").is_none(), "{data}");
    let spoken = data["spoken_summary"].as_str().unwrap();
    assert!(spoken.contains("You can say"), "{spoken}");
    // Understood, but a detail is missing: a question, naming the field.
    let data = d
        .ok(json!({ "transcript": "book a meeting with john smith tomorrow" }))
        .await;
    assert_eq!(data["mode"], "clarification_required", "{data}");
    assert_eq!(data["data"]["reason"], "incomplete");
    assert_eq!(data["data"]["field"], "action.startTime");
    assert_eq!(data["data"]["parsed_action"]["type"], "book_meeting");
    assert_eq!(data["spoken_summary"], "When should the meeting start?");
}

#[tokio::test]
async fn yes_with_an_id_confirms_and_no_without_one_cancels_the_newest() {
    let d = demo().await;
    let seed = d.campaign_id("Seed founders").await;
    let total = |c: serde_json::Value| c["audience_stats"]["total"].as_i64().unwrap();
    let before = total(d.campaign(&seed).await);
    let asked = d
        .ok(json!({ "transcript": "add sarah chen to the seed founders campaign" }))
        .await;
    assert_eq!(asked["mode"], "confirmation_required", "{asked}");
    assert_eq!(
        asked["data"]["parsed_action"],
        json!({ "type": "add_to_campaign", "contactRef": "sarah chen", "campaignRef": "seed founders" })
    );
    let pid = asked["pending_action_id"].as_str().unwrap().to_string();
    assert_eq!(total(d.campaign(&seed).await), before, "nothing before yes");
    let done = d
        .ok(json!({ "transcript": "Yes, do it.", "pendingActionId": pid }))
        .await;
    assert_ne!(done["mode"], "confirmation_required", "{done}");
    assert_eq!(
        done["idempotency_key"],
        format!("native:add_to_campaign:{pid}").as_str()
    );
    assert_eq!(total(d.campaign(&seed).await), before + 1);

    // "no" without an id: the newest open pending action of this key is cancelled.
    d.ok(json!({ "transcript": "resume q4 enterprise" })).await;
    let asked = d.ok(json!({ "transcript": "pause seed founders" })).await;
    assert_eq!(asked["mode"], "confirmation_required", "{asked}");
    let no = d.ok(json!({ "transcript": "no, cancel that" })).await;
    assert_eq!(no["data"]["cancelled"], true, "{no}");
    assert_eq!(d.campaign(&seed).await["status"], "active");
    // The older question (resume Q4 Enterprise) is now the newest open one: "yes" runs it.
    let q4 = d.campaign_id("Q4 Enterprise").await;
    assert_eq!(d.campaign(&q4).await["status"], "paused");
    let yes = d.ok(json!({ "transcript": "yeah go ahead" })).await;
    assert_ne!(yes["mode"], "confirmation_required", "{yes}");
    assert_eq!(d.campaign(&q4).await["status"], "active");
    // Nothing left to answer.
    let none = d.ok(json!({ "transcript": "yes" })).await;
    assert_eq!(none["mode"], "result", "{none}");
    assert_eq!(none["data"]["reason"], "nothing_pending");
}

#[tokio::test]
async fn yes_without_an_id_never_answers_another_keys_question() {
    let d = demo().await;
    let asked = d.ok(json!({ "transcript": "pause seed founders" })).await;
    assert_eq!(asked["mode"], "confirmation_required", "{asked}");
    let other =
        d.s.create_key(pilot_bridge::demo::DEMO_ORG, &[Scope::Native])
            .await;
    let other = d.s.client(&other);
    let r = d.send_as(&other, json!({ "transcript": "yes" })).await;
    let data = check_ok(&r);
    assert_eq!(data["data"]["reason"], "nothing_pending", "{data}");
    let seed = d.campaign_id("Seed founders").await;
    assert_eq!(d.campaign(&seed).await["status"], "active");
    // Nor by id.
    let pid = asked["pending_action_id"].as_str().unwrap();
    let r = d
        .send_as(
            &other,
            json!({ "transcript": "yes", "pendingActionId": pid }),
        )
        .await;
    check_err(&r, 404, "RESOURCE_NOT_FOUND");
}

#[tokio::test]
async fn a_pending_id_with_words_that_are_not_an_answer_is_refused() {
    let d = demo().await;
    let asked = d.ok(json!({ "transcript": "pause seed founders" })).await;
    let pid = asked["pending_action_id"].as_str().unwrap();
    let r = d
        .send(json!({ "transcript": "what's the weather", "pendingActionId": pid }))
        .await;
    let e = check_err(&r, 422, "VALIDATION_ERROR");
    assert!(
        e["details"].as_str().unwrap().starts_with("confirmed:"),
        "{e}"
    );
    assert_eq!(e["spoken_summary"], "Should I go ahead or cancel?");
    // A blank transcript is no turn at all.
    let r = d.send(json!({ "transcript": "   " })).await;
    let e = check_err(&r, 422, "VALIDATION_ERROR");
    assert_eq!(e["details"], "action: missing");
}

#[tokio::test]
async fn an_unknown_company_is_read_as_a_person_instead() {
    let d = demo().await;
    d.c.post(
        "/contacts",
        json!({"email": "zeb@quill.example.com", "first_name": "Zebulon", "last_name": "Quill"}),
    )
    .await
    .ok(201);
    let data = d.ok(json!({ "transcript": "tell me about zebulon" })).await;
    assert_eq!(data["mode"], "result", "{data}");
    assert_eq!(
        data["data"]["parsed_action"],
        json!({ "type": "lookup_person", "personName": "zebulon" })
    );
    // Neither reading names anything: the person reading's not-found stands.
    let r = d.send(json!({ "transcript": "tell me about qwxyz" })).await;
    check_err(&r, 404, "RESOURCE_NOT_FOUND");
}

#[tokio::test]
async fn spoken_dates_are_read_in_the_org_time_zone() {
    let d = demo().await;
    d.c.patch("/settings", json!({ "timezone": "America/New_York" }))
        .await
        .ok(200);
    let asked = d
        .ok(json!({ "transcript": "book a meeting with john smith tomorrow at 3pm" }))
        .await;
    assert_eq!(asked["mode"], "confirmation_required", "{asked}");
    let zone = chrono_tz::America::New_York;
    let tomorrow = chrono::Utc::now().with_timezone(&zone).date_naive() + chrono::Duration::days(1);
    let start = asked["data"]["parsed_action"]["startTime"]
        .as_str()
        .unwrap();
    let parsed = chrono::DateTime::parse_from_rfc3339(start).unwrap();
    let local = parsed.with_timezone(&zone);
    assert_eq!(local.date_naive(), tomorrow, "{start}");
    assert_eq!(local.format("%H:%M").to_string(), "15:00", "{start}");
    assert!(
        start.ends_with("-05:00") || start.ends_with("-04:00"),
        "{start}"
    );
}

#[tokio::test]
async fn names_are_matched_against_the_org_in_odd_word_orders() {
    let d = demo().await;
    let asked = d
        .ok(json!({ "transcript": "put smith john in founders seed" }))
        .await;
    assert_eq!(asked["mode"], "confirmation_required", "{asked}");
    assert_eq!(asked["spoken_summary"], "Add John Smith to Seed founders?");
    assert_eq!(
        asked["data"]["parsed_action"],
        json!({ "type": "add_to_campaign", "contactRef": "smith john", "campaignRef": "founders seed" })
    );
}

#[tokio::test]
async fn transcript_turns_work_over_websocket_too() {
    use futures_util::{SinkExt, StreamExt};
    let d = demo().await;
    let url = format!(
        "{}/api/v1/native/outreachpilot/ws",
        d.s.root.replace("http://", "ws://")
    );
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {KEY}").parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");
    let frame = json!({ "id": "t1", "transcript": "who is sarah chen" }).to_string();
    ws.send(tokio_tungstenite::tungstenite::Message::text(frame))
        .await
        .expect("send");
    let reply = loop {
        let msg = ws.next().await.expect("a frame").expect("read");
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("JSON");
            if v["id"] == "t1" {
                break v;
            }
        }
    };
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(
        reply["data"]["data"]["parsed_action"],
        json!({ "type": "lookup_person", "personName": "sarah chen" })
    );
}

#[tokio::test]
async fn a_long_hostile_transcript_gets_an_answer() {
    let d = demo().await;
    for filler in ["at ", "um ", "to ", "tomorrow "] {
        let mut text = "book a call with john ".to_string();
        while text.len() + filler.len() <= 10_000 {
            text.push_str(filler);
        }
        let r = d.send(json!({ "transcript": text })).await;
        assert!(
            r.status == 200 || r.status == 404 || r.status == 422,
            "{}: {}",
            r.status,
            r.text
        );
        r.check_common();
    }
}
