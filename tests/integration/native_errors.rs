//! Native endpoint errors (DESIGN §3, §4, §10): every rejection — auth, scope, plan, body,
//! validation, size, rate limit — uses the error envelope with a `spoken_summary`, and carries
//! `Server-Timing`, `meta.performance` and `X-Request-Id` like any other native reply.

use crate::common::native as native_common;

use native_common::*;
use pilot_bridge::domain::{Plan, Scope};
use reqwest::Method;
use serde_json::json;

fn lookup() -> serde_json::Value {
    json!({ "action": { "type": "lookup_person", "personName": "Sarah Chen" } })
}

#[tokio::test]
async fn missing_and_bad_keys_are_401() {
    let d = demo().await;
    let r = d.send_as(&d.s.anonymous(), lookup()).await;
    let e = check_err(&r, 401, "MISSING_AUTH");
    assert_eq!(
        e["spoken_summary"],
        "I'm not signed in to OutreachPilot. Please add an API key."
    );
    assert_eq!(phases(&r), ["auth"]);

    for auth in [
        "Bearer op_live_ThisKeyDoesNotExist0123456789abcdef",
        "Bearer nonsense",
        "Basic dXNlcjpwYXNz",
    ] {
        let client = d.c.with_authorization(Some(auth));
        let r = d.send_as(&client, lookup()).await;
        assert_eq!(r.status, 401, "{auth}: {}", r.text);
        let code = r.body["error"]["code"].as_str().unwrap_or("").to_string();
        assert!(
            code == "INVALID_API_KEY" || code == "MISSING_AUTH",
            "{auth}: {code}"
        );
        check_err(&r, 401, &code);
    }

    d.s.revoke_key(KEY).await;
    // The key cache may keep a revoked key alive for a little while (bounded by config).
    let client = d.c.clone();
    eventually(
        std::time::Duration::from_secs(15),
        "the revoked key to stop working",
        || {
            let (d, client) = (&d, client.clone());
            async move {
                let r = d.send_as(&client, lookup()).await;
                (r.status == 401).then(|| check_err(&r, 401, "INVALID_API_KEY").clone())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_key_without_native_or_chat_scope_is_403_and_chat_is_enough() {
    let d = demo().await;
    let narrow =
        d.s.create_key("demo", &[Scope::Contacts, Scope::Campaigns])
            .await;
    let r = d.send_as(&d.s.client(&narrow), lookup()).await;
    let e = check_err(&r, 403, "SCOPE_DENIED");
    assert_eq!(
        e["spoken_summary"],
        "This API key isn't allowed to do that."
    );

    for scopes in [&[Scope::Chat][..], &[Scope::Native][..]] {
        let key = d.s.create_key("demo", scopes).await;
        let r = d.send_as(&d.s.client(&key), lookup()).await;
        assert_eq!(check_ok(&r)["mode"], "result");
    }
}

#[tokio::test]
async fn a_free_plan_is_403_plan_required() {
    let d = demo().await;
    d.s.create_org("freebie", Plan::Free, Some(0)).await;
    let key = d.s.create_key("freebie", Scope::ALL).await;
    let r = d.send_as(&d.s.client(&key), lookup()).await;
    check_err(&r, 403, "PLAN_REQUIRED");
}

#[tokio::test]
async fn malformed_json_and_non_objects_are_422() {
    let d = demo().await;
    for raw in [
        &b"{\"action\": {\"type\": \"lookup_person\""[..],
        b"not json",
        b"",
        b"{\"action\":{\"type\":\"undo_last\"}}}",
    ] {
        let r =
            d.c.send(
                Method::POST,
                PATH,
                Some("application/json"),
                Some(raw.to_vec()),
            )
            .await;
        let e = check_err(&r, 422, "VALIDATION_ERROR");
        assert!(
            e["details"]
                .as_str()
                .unwrap()
                .starts_with("body: malformed JSON"),
            "{}",
            r.text
        );
        assert_eq!(e["spoken_summary"], "That request wasn't valid JSON.");
    }
    for (body, details) in [
        (json!([1, 2]), "body: expected a JSON object"),
        (json!({}), "action: missing"),
        (
            json!({ "action": "lookup_person" }),
            "action: expected an object with a type",
        ),
        (
            json!({ "action": { "personName": "x" } }),
            "action.type: missing",
        ),
        (
            json!({ "pendingActionId": "abc" }),
            "confirmed: missing: send true to execute or false to cancel",
        ),
        (
            json!({ "action": { "type": "undo_last" }, "executionMode": "turbo" }),
            "executionMode: 'turbo' is not one of: fast, standard",
        ),
        (
            json!({ "action": { "type": "undo_last" }, "idempotencyKey": "has space" }),
            "idempotencyKey: must be 1 to 255 visible ASCII characters",
        ),
    ] {
        let r = d.send(body.clone()).await;
        let e = check_err(&r, 422, "VALIDATION_ERROR");
        assert_eq!(e["details"], details, "{body}");
    }
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let d = demo().await;
    let body = serde_json::to_vec(&lookup()).unwrap();
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let r = d.c.send(Method::POST, PATH, ct, Some(body.clone())).await;
        let e = check_err(&r, 415, "UNSUPPORTED_MEDIA_TYPE");
        assert_eq!(e["spoken_summary"], "That request wasn't sent as JSON.");
    }
    let r =
        d.c.send(
            Method::POST,
            PATH,
            Some("application/json; charset=utf-8"),
            Some(body),
        )
        .await;
    check_ok(&r);
}

#[tokio::test]
async fn unknown_action_types_list_the_supported_ones() {
    let d = demo().await;
    let r = d.send(json!({ "action": { "type": "fly_to_moon" } })).await;
    let e = check_err(&r, 422, "VALIDATION_ERROR");
    let details = e["details"].as_str().unwrap();
    assert!(details.starts_with("action.type: unknown action 'fly_to_moon'; supported: "));
    for t in [
        "lookup_person",
        "lookup_company",
        "recent_signals",
        "start_research",
        "enrich_contact",
        "add_to_campaign",
        "remove_from_campaign",
        "pause_campaign",
        "resume_campaign",
        "draft_message",
        "send_message",
        "campaign_stats",
        "reply_inbox",
        "book_meeting",
        "mark_status",
        "note_on_contact",
        "undo_last",
    ] {
        assert!(details.contains(t), "{t} missing from {details}");
    }
    assert_eq!(e["spoken_summary"], "I can't do that kind of action yet.");
}

#[tokio::test]
async fn field_errors_name_the_field() {
    let d = demo().await;
    let cases = [
        (
            json!({ "type": "lookup_person", "personName": "Sarah Chen", "compnay": "Notion" }),
            "action.compnay: unknown field; did you mean company?",
            "One of the details in that request isn't something this action takes.",
        ),
        (
            json!({ "type": "add_to_campaign", "contactRef": "Sarah Chen" }),
            "action.campaignRef: missing",
            "I need a campaign name for that.",
        ),
        (
            json!({ "type": "note_on_contact", "contactRef": "Sarah Chen" }),
            "action.note: missing",
            "What should the note say?",
        ),
        (
            json!({ "type": "mark_status", "contactRef": "Sarah Chen" }),
            "action.status: missing",
            "Which status should I set?",
        ),
        (
            json!({ "type": "book_meeting", "contactRef": "Sarah Chen" }),
            "action.startTime: missing",
            "When should the meeting start?",
        ),
        (
            json!({ "type": "recent_signals", "limit": 0 }),
            "action.limit: must be at least 1",
            "I need to list at least one.",
        ),
    ];
    for (action, details, spoken) in cases {
        let r = d.send(json!({ "action": action })).await;
        let e = check_err(&r, 422, "VALIDATION_ERROR");
        assert_eq!(e["details"], details);
        assert_eq!(e["spoken_summary"], spoken);
        assert_eq!(e["docs_url"], "/docs#validation_error");
    }
    // Bad values name their field too.
    for (action, field) in [
        (
            json!({ "type": "mark_status", "contactRef": "x", "status": "vip" }),
            "action.status:",
        ),
        (
            json!({ "type": "recent_signals", "limit": "five" }),
            "action.limit:",
        ),
        (
            json!({ "type": "book_meeting", "contactRef": "x", "startTime": "tomorrow" }),
            "action.startTime:",
        ),
        (
            json!({ "type": "draft_message", "contactRef": "x", "channel": "fax" }),
            "action.channel:",
        ),
    ] {
        let r = d.send(json!({ "action": action })).await;
        let e = check_err(&r, 422, "VALIDATION_ERROR");
        assert!(
            e["details"].as_str().unwrap().starts_with(field),
            "{}",
            r.text
        );
    }
}

#[tokio::test]
async fn a_body_over_64_kib_is_413() {
    let d = demo().await;
    let big = json!({
        "action": { "type": "lookup_person", "personName": "Sarah Chen" },
        "transcript": "a".repeat(70 * 1024)
    });
    let r = d.send(big).await;
    let e = check_err(&r, 413, "PAYLOAD_TOO_LARGE");
    assert_eq!(e["spoken_summary"], "That request was too large for me.");
    // Just under the limit is fine (the transcript limit is checked separately).
    let fits = json!({
        "action": { "type": "note_on_contact", "contactRef": "Sarah Chen", "note": "b".repeat(9_000) },
        "transcript": "a".repeat(9_000)
    });
    assert_eq!(d.ok(fits).await["mode"], "result");
}

#[tokio::test]
async fn the_org_rate_limit_is_429_with_retry_after() {
    let d = demo_with(|_| {}, Some(3)).await;
    for remaining in ["2", "1", "0"] {
        let r = d.send(lookup()).await;
        check_ok(&r);
        assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some(remaining));
        // Bad keys never spend the org's quota.
        let bad =
            d.c.with_authorization(Some("Bearer op_live_NotARealKey00000000000000000000000"));
        assert_eq!(d.send_as(&bad, lookup()).await.status, 401);
    }
    let r = d.send(lookup()).await;
    let e = check_err(&r, 429, "RATE_LIMITED");
    assert!(!e["spoken_summary"].as_str().unwrap().is_empty());
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert!(r.header("x-ratelimit-reset").is_some());

    // A rate-limited write is not stored under its key: nothing ran.
    let r = d
        .send(json!({ "action": { "type": "note_on_contact", "contactRef": "Sarah Chen", "note": "x" }, "idempotencyKey": "limited" }))
        .await;
    check_err(&r, 429, "RATE_LIMITED");
}

#[tokio::test]
async fn every_reply_has_a_distinct_request_id() {
    let d = demo().await;
    let mut ids = std::collections::HashSet::new();
    for body in [
        lookup(),
        json!({}),
        json!({ "action": { "type": "lookup_person", "personName": "Nobody Anywhere" } }),
    ] {
        let r = d.send(body).await;
        r.check_common();
        assert!(ids.insert(r.header("x-request-id").unwrap().to_string()));
    }
}

#[tokio::test]
async fn unknown_fields_are_refused_at_every_level() {
    let d = demo().await;
    // Unknown top-level fields are refused (milestone 2): a typo must not drop a key.
    let r = d
        .send(json!({
            "action": { "type": "lookup_person", "personName": "Sarah Chen" },
            "client": "glasses"
        }))
        .await;
    let e = check_err(&r, 422, "VALIDATION_ERROR");
    assert!(
        e["details"]
            .as_str()
            .unwrap()
            .starts_with("client: unknown field; known fields: action, transcript"),
        "{e}"
    );

    // Two aliases of one field are a conflict, not a guess.
    let r = d
        .send(json!({ "action": { "type": "lookup_person", "personName": "Sarah Chen", "contactRef": "John Smith" } }))
        .await;
    let e = check_err(&r, 422, "VALIDATION_ERROR");
    assert!(
        e["details"]
            .as_str()
            .unwrap()
            .starts_with("action.contactRef: given twice"),
        "{}",
        r.text
    );

    let key255 = "k".repeat(255);
    let r = d
        .send(json!({ "action": { "type": "undo_last" }, "idempotencyKey": key255 }))
        .await;
    assert_eq!(check_ok(&r)["idempotency_key"], key255.as_str());
    let r = d
        .send(json!({ "action": { "type": "undo_last" }, "idempotencyKey": "k".repeat(256) }))
        .await;
    check_err(&r, 422, "VALIDATION_ERROR");

    let r = d
        .send(json!({ "action": { "type": "lookup_person", "personName": "Sarah Chen" }, "transcript": "t".repeat(10_001) }))
        .await;
    let e = check_err(&r, 422, "VALIDATION_ERROR");
    assert_eq!(e["details"], "transcript: longer than 10000 characters");

    let r = d
        .send(json!({ "action": { "type": "note_on_contact", "contactRef": "Sarah Chen", "note": "n".repeat(10_001) } }))
        .await;
    let e = check_err(&r, 422, "VALIDATION_ERROR");
    assert_eq!(e["details"], "action.note: longer than 10000 characters");
}
