//! REST v1 feeds for briefing and debrief: `/signals`, `/activity` and `/notes` (filters, page
//! caps of 100, note creation with `idempotency_key` replay) and their isolation between orgs.

use crate::common;

use chrono::{Duration, FixedOffset, SecondsFormat, Utc};
use common::{start, Client, TestServer};
use pilot_bridge::domain::Scope;
use pilot_bridge::store::interactions::{self, NewInteraction};
use serde_json::{json, Value};

async fn demo() -> (TestServer, Client) {
    let s = start().await;
    let c = s.demo_client().await;
    (s, c)
}

fn ago(d: Duration) -> String {
    (Utc::now() - d).to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn field<'a>(items: &'a [Value], k: &str) -> Vec<&'a str> {
    items.iter().filter_map(|x| x[k].as_str()).collect()
}

fn assert_newest_first(items: &[Value], k: &str) {
    let times = field(items, k);
    assert_eq!(times.len(), items.len());
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "not newest first: {times:?}"
    );
}

#[tokio::test]
async fn signals_list_and_shape() {
    let (_s, c) = demo().await;
    let r = c.get("/signals").await;
    let items = r.page();
    assert_eq!(items.len(), 5);
    assert_newest_first(items, "detected_at");
    let mut keys: Vec<&str> = items[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "company",
            "contact_id",
            "content",
            "detected_at",
            "id",
            "intent_score",
            "platform",
            "status",
            "title",
            "type",
            "url"
        ]
    );
    assert_eq!(
        items[0]["title"],
        "Notion visited the pricing page three times"
    );
}

#[tokio::test]
async fn signals_filters() {
    let (s, c) = demo().await;
    let count = |q: Vec<(&'static str, String)>| {
        let c = c.clone();
        async move {
            let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = c.get_query("/signals", &q).await;
            r.page().clone()
        }
    };
    let week = ago(Duration::days(7));
    let items = count(vec![("since", week.clone())]).await;
    assert_eq!(items.len(), 4, "the Figma signal is 12 days old");
    assert!(items.iter().all(|x| x["company"] != "Figma"));
    assert_eq!(
        count(vec![("since", ago(Duration::days(1)))]).await.len(),
        2
    );
    // The same instant written with another offset means the same thing.
    let day_ago = (Utc::now() - Duration::days(1))
        .with_timezone(&FixedOffset::east_opt(5 * 3600).unwrap())
        .to_rfc3339_opts(SecondsFormat::Secs, false);
    assert!(day_ago.ends_with("+05:00"));
    assert_eq!(count(vec![("since", day_ago)]).await.len(), 2);

    let linked = count(vec![("platform", "linkedin".into())]).await;
    assert_eq!(linked.len(), 2);
    assert!(linked.iter().all(|x| x["platform"] == "linkedin"));
    assert_eq!(count(vec![("platform", "LinkedIn".into())]).await.len(), 2);
    assert_eq!(count(vec![("platform", "fax".into())]).await.len(), 0);

    assert_eq!(count(vec![("status", "new".into())]).await.len(), 5);
    assert_eq!(count(vec![("status", "dismissed".into())]).await.len(), 0);

    let sarah = s.contact_id("demo", "sarah.chen@notion.so").await;
    let items = count(vec![("contact_id", sarah.clone())]).await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["contact_id"], sarah.as_str());

    let items = count(vec![("company", "notion".into())]).await;
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|x| x["company"] == "Notion"));
    assert_eq!(count(vec![("company", "ACME".into())]).await.len(), 2);

    let items = count(vec![("min_intent_score", "70".into())]).await;
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|x| x["intent_score"].as_i64() >= Some(70)));
    assert_eq!(count(vec![("min_intent_score", "0".into())]).await.len(), 5);
    assert_eq!(
        count(vec![("min_intent_score", "100".into())]).await.len(),
        0
    );

    let items = count(vec![
        ("company", "acme".into()),
        ("min_intent_score", "60".into()),
        ("since", week),
    ])
    .await;
    assert_eq!(field(&items, "platform"), ["news"]);

    for (k, v) in [
        ("since", "yesterday"),
        ("since", "2026-13-01T00:00:00Z"),
        ("min_intent_score", "101"),
        ("min_intent_score", "-1"),
        ("min_intent_score", "high"),
    ] {
        let r = c.get_query("/signals", &[(k, v)]).await;
        r.err(422, "VALIDATION_ERROR");
        assert!(r.details().starts_with(&format!("{k}:")), "{}", r.details());
    }
}

#[tokio::test]
async fn signals_pagination() {
    let (_s, c) = demo().await;
    let r = c.get("/signals?limit=1000").await;
    assert_eq!(r.body["meta"]["limit"], 100, "signals cap at 100");
    assert_eq!(r.page().len(), 5);
    let r = c.get("/signals?limit=2&offset=2").await;
    assert_eq!(r.page().len(), 2);
    assert_eq!(r.body["meta"]["has_more"], true);
    assert_eq!(r.body["meta"]["total"], 5);
    let r = c.get("/signals?offset=5").await;
    assert!(r.page().is_empty());
    assert_eq!(r.body["meta"]["has_more"], false);
    for q in ["limit=0", "limit=-10", "limit=lots", "offset=-2"] {
        c.get(&format!("/signals?{q}"))
            .await
            .err(422, "VALIDATION_ERROR");
    }
}

#[tokio::test]
async fn activity_filters() {
    let (s, c) = demo().await;
    let r = c.get("/activity").await;
    let all = r.page();
    assert_eq!(all.len(), 8);
    assert_newest_first(all, "created_at");
    let mut keys: Vec<&str> = all[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "campaign_id",
            "channel",
            "contact_id",
            "content",
            "created_at",
            "direction",
            "id",
            "is_read",
            "metadata",
            "subject"
        ]
    );

    let sarah = s.contact_id("demo", "sarah.chen@notion.so").await;
    let r = c.get_query("/activity", &[("contact_id", &sarah)]).await;
    let items = r.page();
    assert_eq!(items.len(), 3);
    assert!(
        field(items, "channel").contains(&"note"),
        "notes are included by default"
    );
    let r = c
        .get_query(
            "/activity",
            &[("contact_id", &sarah), ("include_notes", "false")],
        )
        .await;
    let items = r.page();
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|x| x["channel"] == "email"));
    let r = c
        .get_query(
            "/activity",
            &[("contact_id", &sarah), ("include_notes", "true")],
        )
        .await;
    assert_eq!(r.page().len(), 3);
    let r = c
        .get_query("/activity", &[("include_notes", "false")])
        .await;
    assert_eq!(r.total(), 7);

    let seed = s.campaign_id("demo", "Seed founders").await;
    let r = c.get_query("/activity", &[("campaign_id", &seed)]).await;
    let items = r.page();
    assert_eq!(items.len(), 6);
    assert!(items.iter().all(|x| x["campaign_id"] == seed.as_str()));

    for (dir, n) in [
        ("inbound", 4),
        ("outbound", 3),
        ("internal", 1),
        ("INBOUND", 4),
    ] {
        let r = c.get_query("/activity", &[("direction", dir)]).await;
        assert_eq!(r.page().len(), n, "direction={dir}");
    }
    for (ch, n) in [("email", 6), ("linkedin", 1), ("note", 1)] {
        let r = c.get_query("/activity", &[("channel", ch)]).await;
        assert_eq!(r.page().len(), n, "channel={ch}");
    }
    let r = c
        .get_query(
            "/activity",
            &[("direction", "inbound"), ("channel", "email")],
        )
        .await;
    assert_eq!(r.page().len(), 3);

    let r = c
        .get_query("/activity", &[("since", &ago(Duration::hours(2)))])
        .await;
    let recent = r.page();
    assert_eq!(recent.len(), 3, "note, LinkedIn reply, Sarah's reply");

    for (k, v) in [
        ("direction", "sideways"),
        ("include_notes", "maybe"),
        ("since", "last week"),
        ("limit", "0"),
    ] {
        let r = c.get_query("/activity", &[(k, v)]).await;
        r.err(422, "VALIDATION_ERROR");
        assert!(r.details().starts_with(&format!("{k}:")), "{}", r.details());
    }
}

/// Writes `n` notes for one contact straight into the store.
async fn many_notes(s: &TestServer, org: &str, contact: &str, n: usize) {
    let (org, contact) = (org.to_string(), contact.to_string());
    s.store()
        .write(move |tx| {
            for i in 0..n {
                let text = format!("note {i}");
                interactions::insert(tx, &org, &NewInteraction::note(&contact, &text, json!({})))?;
            }
            Ok(())
        })
        .await
        .expect("insert notes");
}

#[tokio::test]
async fn feeds_clamp_limit_to_100() {
    let s = start().await;
    let c = s.org_client("acme").await;
    let r = c.post("/contacts", json!({"email": "busy@acme.com"})).await;
    let id = r.ok(201)["contacts"][0]["id"].as_str().unwrap().to_string();
    many_notes(&s, "acme", &id, 120).await;

    for path in ["/notes", "/activity"] {
        let r = c.get(&format!("{path}?limit=1000")).await;
        assert_eq!(r.page().len(), 100, "{path}");
        assert_eq!(r.body["meta"]["limit"], 100);
        assert_eq!(r.body["meta"]["total"], 120);
        assert_eq!(r.body["meta"]["has_more"], true);
        let r = c.get(&format!("{path}?limit=100&offset=100")).await;
        assert_eq!(r.page().len(), 20);
        assert_eq!(r.body["meta"]["has_more"], false);
        let r = c.get(&format!("{path}?offset=500")).await;
        assert!(r.page().is_empty());
        assert_eq!(r.body["meta"]["has_more"], false);
        let r = c.get(path).await;
        assert_eq!(r.page().len(), 50, "default page size");
        c.get(&format!("{path}?limit=-1"))
            .await
            .err(422, "VALIDATION_ERROR");
    }
}

#[tokio::test]
async fn notes_read_and_create() {
    let (s, c) = demo().await;
    let r = c.get("/notes").await;
    let items = r.page();
    assert_eq!(items.len(), 1);
    let mut keys: Vec<&str> = items[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["contact_id", "content", "created_at", "id", "metadata"]
    );

    let sarah = s.contact_id("demo", "sarah.chen@notion.so").await;
    let john = s.contact_id("demo", "john@acme.com").await;
    let r = c.get_query("/notes", &[("contact_id", &sarah)]).await;
    assert_eq!(r.page().len(), 1);
    let r = c.get_query("/notes", &[("contact_id", &john)]).await;
    assert!(r.page().is_empty());

    let r = c
        .post(
            "/notes",
            json!({"contact_id": john, "note": "  Met after demo. Follow up Friday.  "}),
        )
        .await;
    let note = r.ok(201).clone();
    assert!(r.header("idempotent-replayed").is_none());
    assert_eq!(note["contact_id"], john.as_str());
    assert_eq!(note["content"], "Met after demo. Follow up Friday.");
    assert!(note["metadata"].is_object());
    assert!(note["id"].is_string() && note["created_at"].is_string());

    let r = c.get_query("/notes", &[("contact_id", &john)]).await;
    assert_eq!(r.page(), &vec![note.clone()]);
    let r = c.get_query("/activity", &[("contact_id", &john)]).await;
    let act = r.page();
    let as_activity = act
        .iter()
        .find(|x| x["id"] == note["id"])
        .expect("in activity");
    assert_eq!(as_activity["channel"], "note");
    let r = c
        .get_query(
            "/activity",
            &[("contact_id", &john), ("include_notes", "false")],
        )
        .await;
    assert!(r.page().iter().all(|x| x["id"] != note["id"]));
    assert_eq!(c.get("/notes").await.total(), 2);

    // A key with only the native scope may write notes too.
    let native = s.create_key("demo", &[Scope::Native]).await;
    let r = s
        .client(&native)
        .post(
            "/notes",
            json!({"contact_id": sarah, "note": "From the glasses."}),
        )
        .await;
    r.ok(201);
}

#[tokio::test]
async fn note_validation() {
    let (s, c) = demo().await;
    let sarah = s.contact_id("demo", "sarah.chen@notion.so").await;
    for (body, details) in [
        (json!({"note": "x"}), "contact_id: missing"),
        (json!({"contact_id": sarah}), "note: missing"),
        (json!({"contact_id": sarah, "note": "   "}), "note: missing"),
        (
            json!({"contact_id": sarah, "note": "x".repeat(10_001)}),
            "note: longer than 10000",
        ),
        (
            json!({"contact_id": sarah, "note": "x", "idempotency_key": "k".repeat(256)}),
            "idempotency_key: longer than 255",
        ),
        (
            json!({"contact_id": sarah, "note": ["x"]}),
            "note: expected a string",
        ),
    ] {
        let r = c.post("/notes", body).await;
        r.err(422, "VALIDATION_ERROR");
        assert!(r.details().starts_with(details), "{}", r.details());
    }
    let r = c
        .post(
            "/notes",
            json!({"contact_id": sarah, "note": "x".repeat(10_000)}),
        )
        .await;
    r.ok(201);
    for id in ["00000000-0000-7000-8000-000000000000", "Sarah Chen"] {
        c.post("/notes", json!({"contact_id": id, "note": "x"}))
            .await
            .err(404, "RESOURCE_NOT_FOUND");
    }
}

#[tokio::test]
async fn note_idempotency_key_replays() {
    let (s, c) = demo().await;
    let sarah = s.contact_id("demo", "sarah.chen@notion.so").await;
    let john = s.contact_id("demo", "john@acme.com").await;
    let body =
        json!({"contact_id": sarah, "note": "Wants pricing.", "idempotency_key": "debrief-123"});

    let first = c.post("/notes", body.clone()).await;
    let note = first.ok(201).clone();
    assert!(first.header("idempotent-replayed").is_none());

    let again = c.post("/notes", body.clone()).await;
    assert_eq!(again.ok(200), &note, "replay returns the same note");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let r = c.get_query("/notes", &[("contact_id", &sarah)]).await;
    assert_eq!(r.total(), 2, "the seeded note and one new note");

    for other in [
        json!({"contact_id": sarah, "note": "Wants a discount.", "idempotency_key": "debrief-123"}),
        json!({"contact_id": john, "note": "Wants pricing.", "idempotency_key": "debrief-123"}),
    ] {
        let r = c.post("/notes", other).await;
        let e = r.err(422, "IDEMPOTENCY_KEY_REUSED");
        assert!(e["details"]
            .as_str()
            .unwrap_or("")
            .contains("idempotency_key"));
    }
    assert_eq!(c.get("/notes").await.total(), 2);

    // A failed attempt does not burn the key.
    let missing = json!({"contact_id": "00000000-0000-7000-8000-000000000000",
                         "note": "x", "idempotency_key": "retry-1"});
    c.post("/notes", missing)
        .await
        .err(404, "RESOURCE_NOT_FOUND");
    let r = c
        .post(
            "/notes",
            json!({"contact_id": john, "note": "x", "idempotency_key": "retry-1"}),
        )
        .await;
    r.ok(201);

    // Keys are per org: another org may use the same one.
    let b = s.org_client("other").await;
    let r = b.post("/contacts", json!({"email": "p@other.io"})).await;
    let p = r.ok(201)["contacts"][0]["id"].as_str().unwrap().to_string();
    let r = b
        .post(
            "/notes",
            json!({"contact_id": p, "note": "Wants pricing.", "idempotency_key": "debrief-123"}),
        )
        .await;
    assert_ne!(r.ok(201)["id"], note["id"]);
    assert!(r.header("idempotent-replayed").is_none());
}

#[tokio::test]
async fn other_orgs_feeds_are_invisible() {
    let (s, a) = demo().await;
    let b = s.org_client("other").await;
    let sarah = s.contact_id("demo", "sarah.chen@notion.so").await;
    let seed = s.campaign_id("demo", "Seed founders").await;
    for path in ["/signals", "/activity", "/notes"] {
        assert_eq!(b.get(path).await.total(), 0, "{path}");
        let r = b.get_query(path, &[("contact_id", &sarah)]).await;
        assert!(r.page().is_empty(), "{path}");
    }
    let r = b.get_query("/signals", &[("company", "notion")]).await;
    assert!(r.page().is_empty());
    let r = b.get_query("/activity", &[("campaign_id", &seed)]).await;
    assert!(r.page().is_empty());
    b.post("/notes", json!({"contact_id": sarah, "note": "Sneaky."}))
        .await
        .err(404, "RESOURCE_NOT_FOUND");
    let r = a.get_query("/notes", &[("contact_id", &sarah)]).await;
    assert_eq!(r.page().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_notes_with_one_idempotency_key_make_one_note() {
    let (s, c) = demo().await;
    let john = s.contact_id("demo", "john@acme.com").await;
    let body = json!({"contact_id": john, "note": "Once only.", "idempotency_key": "race-1"});
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (c, body) = (c.clone(), body.clone());
            tokio::spawn(async move { c.post("/notes", body).await })
        })
        .collect();
    let mut ids = Vec::new();
    let mut fresh = 0;
    for t in tasks {
        let r = t.await.expect("task");
        if r.status == 201 {
            fresh += 1;
            assert!(r.header("idempotent-replayed").is_none());
        } else {
            r.ok(200);
            assert_eq!(r.header("idempotent-replayed"), Some("true"));
        }
        ids.push(r.body["data"]["id"].clone());
    }
    assert_eq!(fresh, 1, "exactly one request created the note");
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    let r = c.get_query("/notes", &[("contact_id", &john)]).await;
    assert_eq!(r.page().len(), 1);
}
