//! What the bridge says (DESIGN §20) over real HTTP: spoken summaries safe for TTS and SSML
//! whatever the names, hostile input never read back, counts and clarifications that say how
//! many, times in the org's time zone, outcomes in `data` as well as in speech, and request
//! parsing that is strict about unknown fields yet forgiving about how numbers and dates arrive.

use crate::common::native as native_common;

use chrono::{Datelike, Duration, Utc};
use native_common::*;
use proptest::prelude::*;
use serde_json::{json, Value};

/// Creates a contact through REST v1 and returns its id.
async fn create_contact(d: &Demo, body: Value) -> String {
    let r = d.c.post("/contacts", body).await;
    r.ok(201)["contacts"][0]["id"]
        .as_str()
        .expect("id")
        .to_string()
}

/// Sends an action and returns the spoken summary of whatever came back, success or error.
async fn spoken_of(d: &Demo, body: Value) -> (u16, String, Value) {
    let r = d.send(body).await;
    let spoken = if r.status == 200 {
        r.body["data"]["spoken_summary"].as_str().unwrap_or("")
    } else {
        r.body["error"]["spoken_summary"].as_str().unwrap_or("")
    };
    (r.status, spoken.to_string(), r.body.clone())
}

fn assert_ssml_safe(spoken: &str, context: &Value) {
    assert!(
        !spoken.contains(['<', '>', '&']),
        "markup in {spoken:?} for {context}"
    );
    assert!(
        !spoken.chars().any(char::is_control),
        "control character in {spoken:?}"
    );
    assert!(spoken.chars().count() <= 200, "too long: {spoken:?}");
}

// ---------------------------------------------------------------------------------------------
// Hostile and unusual names

#[tokio::test]
async fn markup_in_names_is_not_read_out() {
    let d = demo().await;
    let id = create_contact(
        &d,
        json!({ "first_name": "Eve<break time=\"5s\"/>", "last_name": "Tag & Co",
                "company": "A&B <Corp>", "email": "eve@ab.example" }),
    )
    .await;
    let data = d
        .act(json!({ "type": "lookup_person", "contactId": id }))
        .await;
    assert_eq!(
        data["spoken_summary"], "Eve Tag and Co works at A and B. Status is new.",
        "{data}"
    );
    // The record itself keeps what was typed; only speech is cleaned.
    assert_eq!(data["data"]["contact"]["company"], "A&B <Corp>");
}

#[tokio::test]
async fn hostile_references_are_never_echoed() {
    let d = demo().await;
    let r = d
        .send(json!({ "action": { "type": "lookup_person",
                                  "personName": "Robert'); DROP TABLE contacts;--" } }))
        .await;
    let e = check_err(&r, 404, "RESOURCE_NOT_FOUND");
    assert_eq!(e["spoken_summary"], "I couldn't find that contact.");
    let r = d
        .send(json!({ "action": { "type": "campaign_stats",
                                  "campaignId": "8f0c6f5e-6a44-4c43-9d5e-2d8a44b1a001" } }))
        .await;
    let e = check_err(&r, 404, "RESOURCE_NOT_FOUND");
    assert_eq!(e["spoken_summary"], "I couldn't find that campaign.");
    // A plain name is still said back, so the user hears what was misheard.
    let r = d
        .send(json!({ "action": { "type": "lookup_person", "personName": "Nobody Anywhere" } }))
        .await;
    let e = check_err(&r, 404, "RESOURCE_NOT_FOUND");
    assert_eq!(e["spoken_summary"], "I couldn't find Nobody Anywhere.");
}

#[tokio::test]
async fn one_letter_names_ask_for_more_instead_of_listing_people() {
    let d = demo().await;
    let r = d
        .send(json!({ "action": { "type": "lookup_person", "personName": "a" } }))
        .await;
    let e = check_err(&r, 422, "VALIDATION_ERROR");
    assert!(
        e["details"]
            .as_str()
            .unwrap()
            .starts_with("action.contactRef: too short to find a contact by name"),
        "{e}"
    );
    assert_eq!(
        e["spoken_summary"],
        "Which contact do you mean? I need more than one letter of the name."
    );
    let r = d
        .send(json!({ "action": { "type": "campaign_stats", "campaignRef": "s" } }))
        .await;
    check_err(&r, 422, "VALIDATION_ERROR");
}

#[tokio::test]
async fn emoji_cjk_and_long_names_are_spoken_plainly() {
    let d = demo().await;
    let cjk = create_contact(
        &d,
        json!({ "first_name": "太郎", "last_name": "田中", "company": "🚀 Rocket", "email": "taro@rocket.example" }),
    )
    .await;
    let data = d
        .act(json!({ "type": "lookup_person", "contactId": cjk }))
        .await;
    assert_eq!(
        data["spoken_summary"],
        "太郎 田中 works at 🚀 Rocket. Status is new."
    );
    let long = create_contact(
        &d,
        json!({ "first_name": "Bartholomew", "last_name": "Longname ".repeat(20).trim(),
                "title": "Chief ".repeat(30).trim(), "email": "bart@long.example" }),
    )
    .await;
    let data = d
        .act(json!({ "type": "lookup_person", "contactId": long }))
        .await;
    let spoken = data["spoken_summary"].as_str().unwrap();
    assert!(spoken.chars().count() <= 200, "{spoken}");
    assert!(spoken.ends_with("Status is new."), "{spoken}");
}

// ---------------------------------------------------------------------------------------------
// Counts, clarifications, quotes

#[tokio::test]
async fn clarification_says_how_many_and_names_five() {
    let d = demo().await;
    for i in 0..7 {
        create_contact(
            &d,
            json!({ "first_name": "Uma", "last_name": format!("Tester{}", (b'a' + i) as char),
                    "email": format!("uma{i}@uma.example") }),
        )
        .await;
    }
    // The demo workspace has generated Umas too: count them all.
    let total =
        d.c.get_query("/contacts", &[("search", "Uma"), ("limit", "200")])
            .await
            .page()
            .iter()
            .filter(|c| c["first_name"] == "Uma")
            .count();
    assert!(total >= 7);
    let data = d
        .act(json!({ "type": "lookup_person", "personName": "Uma" }))
        .await;
    assert_eq!(data["mode"], "clarification_required", "{data}");
    assert_eq!(data["candidates"].as_array().unwrap().len(), 5);
    assert_eq!(data["data"]["total_candidates"], total, "{data}");
    let spoken = data["spoken_summary"].as_str().unwrap();
    assert!(
        spoken.starts_with(&format!(
            "There are {total} people called Uma; the first five are "
        )),
        "{spoken}"
    );
    assert!(spoken.ends_with("Which one do you mean?"), "{spoken}");
    // Two people: named both, no count needed.
    let data = d
        .act(json!({ "type": "lookup_person", "personName": "Sarah" }))
        .await;
    assert_eq!(data["data"]["total_candidates"], 2);
    assert_eq!(
        data["spoken_summary"],
        "Which Sarah do you mean: Sarah Chen at Notion or Sarah Kim at Figma?"
    );
}

#[tokio::test]
async fn campaign_stats_agree_in_number_and_skip_zero_counts() {
    let d = demo().await;
    let data = d
        .act(json!({ "type": "campaign_stats", "campaignRef": "Spring launch" }))
        .await;
    let stats = &data["data"]["audience_stats"];
    let total = stats["total"].as_u64().unwrap();
    let spoken = data["spoken_summary"].as_str().unwrap();
    assert!(
        spoken.starts_with(&format!("Spring launch is a draft with {total} people")),
        "{spoken}"
    );
    assert!(
        !spoken.contains(" 0 "),
        "zero counts are left out: {spoken}"
    );
}

#[tokio::test]
async fn inbox_quotes_are_marked_as_theirs() {
    let d = demo().await;
    let data = d
        .act(json!({ "type": "reply_inbox", "personName": "Sarah Kim" }))
        .await;
    let spoken = data["spoken_summary"].as_str().unwrap();
    assert!(spoken.contains("Sarah Kim wrote: "), "{spoken}");
}

#[tokio::test]
async fn send_confirmation_says_subject_and_how_it_begins() {
    let d = demo().await;
    let data = d
        .act(json!({ "type": "send_message", "contactRef": "John Smith",
                     "subject": "Pilot & pricing", "body": "Hi John, here is the <b>deck</b>." }))
        .await;
    assert_eq!(data["mode"], "confirmation_required", "{data}");
    assert_eq!(
        data["spoken_summary"],
        "Send John Smith an email with the subject Pilot and pricing, starting: Hi John, here is the deck?"
    );
}

// ---------------------------------------------------------------------------------------------
// Outcomes in data

#[tokio::test]
async fn send_with_pilot_off_says_not_sent_in_data() {
    let d = demo().await;
    d.set_pilot_mode("off").await;
    let data = d
        .act(json!({ "type": "send_message", "contactRef": "John Smith", "body": "Hi" }))
        .await;
    assert_eq!(data["mode"], "result");
    assert_eq!(data["data"]["sent"], false);
    assert_eq!(data["data"]["reason"], "pilot_off");
    assert_eq!(d.rows("outbox", None).await, 0);
    d.set_pilot_mode("review").await;
    let data = d
        .act(json!({ "type": "send_message", "contactRef": "John Smith", "body": "Hello again" }))
        .await;
    assert_eq!(data["data"]["sent"], false);
    assert_eq!(data["data"]["reason"], "pilot_review");
}

#[tokio::test]
async fn no_op_writes_say_so_in_data() {
    let d = demo().await;
    let data = d
        .act(json!({ "type": "pause_campaign", "campaignRef": "Q4 Enterprise" }))
        .await;
    assert_eq!(data["data"]["changed"], false, "{data}");
    assert_eq!(data["data"]["reason"], "already_set");
    let data = d.act(json!({ "type": "undo_last" })).await;
    assert_eq!(data["data"]["undone"], false);
    assert_eq!(data["data"]["reason"], "nothing_to_undo");
}

// ---------------------------------------------------------------------------------------------
// Time zones and meetings

#[tokio::test]
async fn timezone_is_a_setting_validated_against_iana_names() {
    let d = demo().await;
    let s = d.c.get("/settings").await;
    assert_eq!(s.ok(200)["timezone"], "UTC");
    let r =
        d.c.patch("/settings", json!({ "timezone": "Europe/Berlin" }))
            .await;
    let data = r.ok(200);
    assert_eq!(data["timezone"], "Europe/Berlin");
    assert_eq!(data["pilot_mode"], "auto", "pilot mode left alone");
    let r =
        d.c.patch("/settings", json!({ "timezone": "Mars/Olympus_Mons" }))
            .await;
    let e = r.err(422, "VALIDATION_ERROR");
    assert!(
        e["details"]
            .as_str()
            .unwrap()
            .starts_with("timezone: 'Mars/Olympus_Mons' is not an IANA time zone name"),
        "{e}"
    );
    let r = d.c.patch("/settings", json!({})).await;
    r.err(422, "VALIDATION_ERROR");
    let r = d.c.patch("/settings", json!({ "time_zone": "UTC" })).await;
    r.err(422, "VALIDATION_ERROR");
    assert_eq!(
        d.c.get("/settings").await.ok(200)["timezone"],
        "Europe/Berlin"
    );
}

#[tokio::test]
async fn meetings_are_spoken_in_the_org_zone_with_weekday_and_year() {
    let d = demo().await;
    d.c.patch("/settings", json!({ "timezone": "Europe/Berlin" }))
        .await
        .ok(200);
    let next_year = Utc::now().year() + 1;
    // June: Berlin is on summer time (UTC+2), so 13:00Z is 3:00 PM there.
    let start = format!("{next_year}-06-03T13:00:00Z");
    let weekday = chrono::NaiveDate::from_ymd_opt(next_year, 6, 3)
        .unwrap()
        .format("%A")
        .to_string();
    let data = d
        .act(json!({ "type": "book_meeting", "contactRef": "Sarah Chen", "startTime": start }))
        .await;
    assert_eq!(data["mode"], "confirmation_required");
    assert_eq!(
        data["spoken_summary"],
        format!(
            "Book a 30 minute meeting with Sarah Chen on {weekday}, June 3, {next_year} at 3:00 PM?"
        )
    );
    let pid = data["pending_action_id"].as_str().unwrap();
    let r = d.confirm(pid, true).await;
    let done = check_ok(&r);
    assert_eq!(
        done["spoken_summary"],
        format!(
            "Booked a 30 minute meeting with Sarah Chen on {weekday}, June 3, {next_year} at 3:00 PM."
        )
    );
    // Stored in UTC.
    assert_eq!(
        done["data"]["meeting"]["start_time"]
            .as_str()
            .unwrap()
            .trim_end_matches(".000Z"),
        format!("{next_year}-06-03T13:00:00")
    );
}

#[tokio::test]
async fn tomorrow_is_said_as_tomorrow() {
    let d = demo().await;
    let start = (Utc::now() + Duration::days(1))
        .date_naive()
        .and_hms_opt(15, 0, 0)
        .unwrap()
        .and_utc()
        .to_rfc3339();
    let data = d
        .act(json!({ "type": "book_meeting", "contactRef": "John Smith", "startTime": start }))
        .await;
    assert_eq!(
        data["spoken_summary"],
        "Book a 30 minute meeting with John Smith tomorrow at 3:00 PM UTC?"
    );
}

#[tokio::test]
async fn meetings_in_the_past_are_refused_with_a_reason() {
    let d = demo().await;
    let r = d
        .send(
            json!({ "action": { "type": "book_meeting", "contactRef": "Sarah Chen",
                                  "startTime": "2020-03-02T15:00:00Z" } }),
        )
        .await;
    let e = check_err(&r, 422, "VALIDATION_ERROR");
    assert_eq!(
        e["details"],
        "action.startTime: 2020-03-02T15:00:00Z is in the past; a meeting must start in the future"
    );
    assert_eq!(
        e["spoken_summary"],
        "Monday, March 2, 2020 at 3:00 PM UTC has already passed, so I can't book a meeting then. When should it be?"
    );
    assert_eq!(d.rows("meetings", None).await, 0);
}

// ---------------------------------------------------------------------------------------------
// Strict and forgiving request parsing

#[tokio::test]
async fn unknown_top_level_fields_are_refused_with_a_hint() {
    let d = demo().await;
    let id = d.contact_id("sarah.chen@notion.so").await;
    let before = d.notes(&id).await.len();
    let r = d
        .send(json!({ "action": { "type": "note_on_contact", "contactRef": "Sarah Chen", "note": "hi" },
                      "idempotency_key": "turn-1" }))
        .await;
    let e = check_err(&r, 422, "VALIDATION_ERROR");
    assert_eq!(
        e["details"],
        "idempotency_key: unknown field; did you mean idempotencyKey?"
    );
    assert_eq!(d.notes(&id).await.len(), before, "nothing was written");
}

#[tokio::test]
async fn unknown_action_fields_hint_without_speaking_the_field() {
    let d = demo().await;
    let r = d
        .send(json!({ "action": { "type": "lookup_person", "person_name": "Sarah Chen" } }))
        .await;
    let e = check_err(&r, 422, "VALIDATION_ERROR");
    assert_eq!(
        e["details"],
        "action.person_name: unknown field; did you mean personName?"
    );
    let spoken = e["spoken_summary"].as_str().unwrap();
    assert!(!spoken.to_lowercase().contains("person"), "{spoken}");
}

#[tokio::test]
async fn numbers_as_strings_dates_and_big_limits_are_accepted() {
    let d = demo().await;
    let data = d
        .act(json!({ "type": "recent_signals", "limit": "2", "since": "2020-01-01" }))
        .await;
    assert!(
        data["data"]["signals"].as_array().unwrap().len() <= 2,
        "{data}"
    );
    let all = d
        .act(json!({ "type": "recent_signals", "limit": 100000 }))
        .await;
    let n = all["data"]["signals"].as_array().unwrap().len();
    assert!((2..=100).contains(&n), "{n}");
    let data = d
        .act(json!({ "type": "reply_inbox", "limit": 9999, "unreadOnly": "false" }))
        .await;
    assert_eq!(data["mode"], "result");
    // A date in the future leaves nothing.
    let none = d
        .act(json!({ "type": "recent_signals", "since": format!("{}-01-01", Utc::now().year() + 1) }))
        .await;
    assert_eq!(none["data"]["total"], 0, "{none}");
    for (bad, details) in [
        (json!({ "limit": "five" }), "action.limit: 'five' is not a whole number (such as 5)"),
        (json!({ "limit": 0 }), "action.limit: must be at least 1"),
        (json!({ "limit": -3 }), "action.limit: must not be negative"),
        (
            json!({ "since": "last week" }),
            "action.since: expected a date such as 2026-05-01 or an RFC 3339 time such as 2026-05-01T00:00:00Z",
        ),
    ] {
        let mut action = json!({ "type": "recent_signals" });
        for (k, v) in bad.as_object().unwrap() {
            action[k] = v.clone();
        }
        let r = d.send(json!({ "action": action })).await;
        let e = check_err(&r, 422, "VALIDATION_ERROR");
        assert_eq!(e["details"], details);
        for rust in ["u32", "i64", "Option", "struct"] {
            assert!(!e["details"].as_str().unwrap().contains(rust), "{e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Property: no action ever speaks markup, whatever the names

/// Fragments hostile or unusual names are made of.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("<break time=\"5s\"/>".to_string()),
        Just("&".to_string()),
        Just("&amp;".to_string()),
        Just("<".to_string()),
        Just(">".to_string()),
        Just("<speak>".to_string()),
        Just("</prosody".to_string()),
        Just("'); DROP TABLE contacts;--".to_string()),
        Just("\u{202E}".to_string()),
        Just("\u{7}".to_string()),
        Just("🚀".to_string()),
        Just("田中".to_string()),
        Just("https://evil.example/x".to_string()),
        Just(" ".to_string()),
        "[A-Za-z]{1,12}",
        "\\PC{1,8}",
    ]
}

fn hostile() -> impl Strategy<Value = String> {
    prop::collection::vec(fragment(), 1..6).prop_map(|parts| {
        let s: String = parts.concat();
        // REST keeps at most 200 characters per name field.
        s.chars().take(190).collect::<String>()
    })
}

#[test]
fn no_spoken_summary_carries_markup_whatever_the_names() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let d = rt.block_on(demo());
    let campaign = rt.block_on(d.campaign_id("Seed founders"));
    let config = ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let case = std::sync::atomic::AtomicU32::new(0);
    runner
        .run(
            &(hostile(), hostile(), hostile(), hostile()),
            |(first, company, title, campaign_name)| {
                let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                rt.block_on(async {
                    let id = create_contact(
                        &d,
                        json!({ "first_name": first, "last_name": "X", "company": company,
                                "title": title, "email": format!("p{n}@hostile.example") }),
                    )
                    .await;
                    // REST refuses a blank campaign name; a leading letter keeps it non-blank.
                    let campaign_name = format!("C{campaign_name}");
                    d.c.patch(&format!("/campaigns/{campaign}"), json!({ "name": campaign_name }))
                        .await
                        .ok(200);
                    let start = (Utc::now() + Duration::days(3)).to_rfc3339();
                    let actions = [
                        json!({ "type": "lookup_person", "contactId": id }),
                        json!({ "type": "lookup_person", "personName": first }),
                        json!({ "type": "lookup_company", "company": company }),
                        json!({ "type": "recent_signals", "company": company, "contactId": id }),
                        json!({ "type": "start_research", "contactId": id, "topic": title }),
                        json!({ "type": "enrich_contact", "contactId": id }),
                        json!({ "type": "add_to_campaign", "contactId": id, "campaignId": campaign }),
                        json!({ "type": "add_to_campaign", "contactId": id, "campaignId": campaign, "confirmed": true }),
                        json!({ "type": "remove_from_campaign", "contactId": id, "campaignRef": campaign_name }),
                        json!({ "type": "pause_campaign", "campaignId": campaign }),
                        json!({ "type": "resume_campaign", "campaignId": campaign }),
                        json!({ "type": "draft_message", "contactId": id, "subject": title, "instructions": company }),
                        json!({ "type": "send_message", "contactId": id, "subject": company, "body": title }),
                        json!({ "type": "campaign_stats", "campaignRef": campaign_name }),
                        json!({ "type": "reply_inbox", "contactId": id }),
                        json!({ "type": "book_meeting", "contactId": id, "startTime": start, "title": title }),
                        json!({ "type": "mark_status", "contactId": id, "status": "disqualified" }),
                        json!({ "type": "note_on_contact", "contactId": id, "note": title }),
                        json!({ "type": "undo_last" }),
                    ];
                    for mut action in actions {
                        let confirmed = action
                            .as_object_mut()
                            .and_then(|a| a.remove("confirmed"))
                            .is_some();
                        let mut body = json!({ "action": action });
                        if confirmed {
                            body["confirmed"] = json!(true);
                        }
                        let (status, spoken, reply) = spoken_of(&d, body).await;
                        assert!(status < 500, "{reply}");
                        assert_ssml_safe(&spoken, &reply);
                        if let Some(pid) = reply["data"]["pending_action_id"].as_str() {
                            let r = d.confirm(pid, true).await;
                            let s = r.body["data"]["spoken_summary"]
                                .as_str()
                                .or_else(|| r.body["error"]["spoken_summary"].as_str())
                                .unwrap_or("");
                            assert_ssml_safe(s, &r.body);
                        }
                    }
                });
                Ok(())
            },
        )
        .unwrap();
}
