//! Table-driven tests of every action's sentences with ordinary, hostile, emoji, CJK and very
//! long names: each sentence is plain (no `<`, `>`, `&`), fits in a summary, and says the name
//! as a name.

use serde_json::json;

use super::campaigns::{stats_reply, status_set};
use super::contacts::{meeting_step_in, noted, status_marked};
use super::lookup::{inbox_reply, person_reply};
use super::messages::send_step;
use super::{clarify, Ambiguity};
use crate::domain::{CampaignStatus, Channel, ContactStatus, PilotMode, TimeZone};
use crate::native::action::BookMeeting;
use crate::native::plan::{Plan, Step};
use crate::native::reply::Candidate;
use crate::store::campaigns::{AudienceStats, Campaign};
use crate::store::contacts::Contact;
use crate::store::interactions::{Interaction, Note};

/// (as stored, as spoken).
const NAMES: &[(&str, &str)] = &[
    ("Sarah Chen", "Sarah Chen"),
    (r#"Eve<break time="5s"/> Tag & Co"#, "Eve Tag and Co"),
    (
        "Robert'); DROP TABLE contacts;--",
        "Robert'); DROP TABLE contacts;--",
    ),
    ("🚀 Rocket Rita", "🚀 Rocket Rita"),
    ("田中 太郎", "田中 太郎"),
    ("José\u{202E} Núñez\u{7}", "José Núñez"),
];

fn long_name() -> String {
    "Bartholomew ".repeat(30).trim().to_string()
}

fn contact(name: &str) -> Contact {
    serde_json::from_value(json!({
        "id": "0190c0de-0000-7000-8000-000000000001", "email": "x@acme.example",
        "first_name": name, "last_name": null, "full_name": name, "company": name,
        "title": name, "linkedin_url": null, "phone": null, "status": "new",
        "folder_id": null, "account_id": null
    }))
    .expect("contact")
}

fn campaign(name: &str, status: &str) -> Campaign {
    serde_json::from_value(json!({
        "id": "0190c0de-0000-7000-8000-000000000002", "name": name, "status": status
    }))
    .expect("campaign")
}

fn check(sentence: &str, spoken_name: &str) {
    let said = crate::native::speech::speakable(sentence);
    assert_eq!(said, sentence, "sentences are speakable as built");
    assert!(!said.contains(['<', '>', '&']), "{said}");
    assert!(
        said.chars().count() <= crate::native::speech::MAX_SPOKEN,
        "{said}"
    );
    let first_word = spoken_name.split_whitespace().next().unwrap_or("");
    assert!(
        said.contains(first_word),
        "{said:?} should name {spoken_name:?}"
    );
}

/// Every sentence a resolved contact or campaign can produce, for one name.
fn sentences(name: &str) -> Vec<String> {
    let c = contact(name);
    let mut out = vec![
        person_reply(c.clone(), None, json!([]), vec![]).spoken_summary,
        status_marked(&c, ContactStatus::New, ContactStatus::Qualified)
            .reply
            .spoken_summary,
        noted(
            &c,
            serde_json::from_value::<Note>(json!({
                "id": "n1", "contact_id": c.id, "content": name, "created_at": "", "metadata": {}
            }))
            .expect("note"),
        )
        .reply
        .spoken_summary,
    ];
    let stats = AudienceStats {
        total: 5,
        active: 3,
        completed: 0,
        paused: 0,
        bounced: 2,
        failed: None,
    };
    out.push(stats_reply(campaign(name, "draft"), stats).spoken_summary);
    out.push(
        status_set(
            campaign(name, "paused"),
            CampaignStatus::Active,
            CampaignStatus::Paused,
        )
        .reply
        .spoken_summary,
    );
    let inbound: Interaction = serde_json::from_value(json!({
        "id": "i1", "contact_id": c.id, "campaign_id": null, "direction": "inbound",
        "channel": "email", "subject": null, "content": format!("{name} says hi & <b>bye</b>"),
        "metadata": {}, "is_read": false, "created_at": ""
    }))
    .expect("interaction");
    out.push(
        inbox_reply(
            vec![(inbound, Some(c.clone()))],
            1,
            false,
            Default::default(),
        )
        .spoken_summary,
    );
    let plans = [
        Plan::AddToCampaign {
            contact: c.clone(),
            campaign: campaign(name, "active"),
        },
        Plan::RemoveFromCampaign {
            contact: c.clone(),
            campaign: campaign(name, "active"),
        },
        Plan::SetCampaignStatus {
            campaign: campaign(name, "active"),
            to: CampaignStatus::Paused,
        },
        Plan::SendMessage {
            contact: c.clone(),
            channel: Channel::Email,
            subject: Some(name.to_string()),
            body: format!("Hi {name}, {}", "more words ".repeat(40)),
            draft_id: None,
        },
        Plan::BookMeeting {
            contact: c.clone(),
            start_time: "2030-06-03T15:00:00+02:00".into(),
            duration_minutes: 30,
            title: name.to_string(),
        },
        Plan::MarkStatus {
            contact: c.clone(),
            status: ContactStatus::Disqualified,
        },
    ];
    for p in plans {
        out.push(crate::native::speech::speakable(&p.question()));
    }
    out
}

#[test]
fn every_sentence_is_plain_and_names_the_record() {
    for (stored, spoken) in NAMES {
        for s in sentences(stored) {
            check(&s, spoken);
        }
    }
    let long = long_name();
    for s in sentences(&long) {
        check(&s, "Bartholomew");
    }
}

#[test]
fn pilot_off_answers_in_data_and_speech() {
    let Step::Reply(r) = send_step(
        contact("John Smith"),
        Some(Channel::Email),
        None,
        Some("Hi".into()),
        None,
        PilotMode::Off,
    )
    .expect("step") else {
        panic!("pilot off answers at once")
    };
    assert_eq!(r.data["sent"], false);
    assert_eq!(r.data["reason"], "pilot_off");
    assert!(r
        .spoken_summary
        .starts_with("Pilot is off, so I didn't send anything."));
}

#[test]
fn clarifications_count_and_name_at_most_five() {
    let cand = |i: usize| Candidate {
        id: format!("id{i}"),
        name: format!("Uma Tester{i}"),
        company: Some(
            if i.is_multiple_of(2) {
                "A&B <Corp>"
            } else {
                "Figma"
            }
            .to_string(),
        ),
        title: None,
    };
    // (total found, spoken start)
    let table = [
        (2, "Which Uma do you mean: Uma Tester0 at A and B or Uma Tester1 at Figma?"),
        (
            3,
            "Which Uma do you mean: Uma Tester0 at A and B, Uma Tester1 at Figma, or Uma Tester2 at A and B?",
        ),
        (7, "There are 7 people called Uma; the first five are Uma Tester0"),
    ];
    for (total, start) in table {
        let r = clarify(
            "contactRef",
            "Uma",
            Ambiguity {
                candidates: (0..total.min(5)).map(cand).collect(),
                total,
            },
        );
        assert!(r.spoken_summary.starts_with(start), "{}", r.spoken_summary);
        assert_eq!(r.data["total_candidates"], total);
        assert!(r.candidates.len() <= 5);
        assert!(!r.spoken_summary.contains(['<', '>', '&']));
    }
    // A query that is not a name is not read back.
    let r = clarify(
        "campaignRef",
        "<script>x</script>",
        Ambiguity {
            candidates: (0..2).map(cand).collect(),
            total: 2,
        },
    );
    assert_eq!(
        r.spoken_summary,
        "Which campaign do you mean: Uma Tester0 or Uma Tester1?"
    );
}

#[test]
fn meetings_in_the_past_are_refused_and_future_ones_carry_the_org_offset() {
    let now = chrono::DateTime::parse_from_rfc3339("2026-11-29T10:00:00Z")
        .expect("time")
        .with_timezone(&chrono::Utc);
    let berlin: TimeZone = "Europe/Berlin".parse().expect("zone");
    let ask = |start: &str| BookMeeting {
        contact: Some("x".into()),
        company: None,
        start_time: Some(start.into()),
        duration_minutes: None,
        title: None,
    };
    let e = meeting_step_in(
        contact("Sarah Chen"),
        &ask("2020-03-02T15:00:00Z"),
        berlin,
        now,
    )
    .err()
    .expect("past");
    assert_eq!(e.code, crate::error::ErrorCode::ValidationError);
    assert_eq!(
        e.spoken_summary,
        "Monday, March 2, 2020 at 4:00 PM has already passed, so I can't book a meeting then. When should it be?"
    );
    let Ok(Step::Execute(Plan::BookMeeting { start_time, .. })) = meeting_step_in(
        contact("Sarah Chen"),
        &ask("2026-11-30T14:00:00Z"),
        berlin,
        now,
    ) else {
        panic!("a future meeting is planned")
    };
    assert_eq!(start_time, "2026-11-30T15:00:00+01:00");
    assert_eq!(
        crate::native::speech::when_rfc3339(&start_time, now),
        "tomorrow at 3:00 PM"
    );
}
