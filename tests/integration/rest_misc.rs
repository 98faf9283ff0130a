//! REST v1 `/credits`, `/settings` (pilot mode) and `/webhooks` (list with available events,
//! register, deactivate by `?id=`), including isolation between orgs.

use crate::common;

use common::start;
use pilot_bridge::domain::Plan;
use serde_json::{json, Value};

#[tokio::test]
async fn credits_shape() {
    let s = start().await;
    let c = s.org_client("acme").await;
    let r = c.get("/credits").await;
    let data = r.ok(200);
    let mut keys: Vec<&str> = data
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "credits_monthly",
            "credits_remaining",
            "credits_reset_at",
            "plan_tier"
        ]
    );
    assert_eq!(data["plan_tier"], "pro");
    assert_eq!(data["credits_monthly"], 5000);
    assert_eq!(data["credits_remaining"], 5000);
    let reset = data["credits_reset_at"].as_str().unwrap();
    let reset = chrono::DateTime::parse_from_rfc3339(reset).expect("RFC 3339");
    assert!(reset > chrono::Utc::now(), "reset date is in the future");

    s.create_org("big", Plan::Scale, Some(0)).await;
    let key = s.create_key("big", pilot_bridge::domain::Scope::ALL).await;
    let r = s.client(&key).get("/credits").await;
    assert_eq!(r.ok(200)["plan_tier"], "scale");
    assert_eq!(r.ok(200)["credits_monthly"], 50000);
}

#[tokio::test]
async fn settings_pilot_mode() {
    let s = start().await;
    let a = s.org_client("acme").await;
    let b = s.org_client("other").await;
    assert_eq!(
        a.get("/settings").await.ok(200),
        &json!({"pilot_mode": "review", "timezone": "UTC"})
    );

    for mode in ["off", "auto", "review", "auto"] {
        let r = a.patch("/settings", json!({ "pilot_mode": mode })).await;
        assert_eq!(r.ok(200), &json!({ "pilot_mode": mode, "timezone": "UTC" }));
        assert_eq!(a.get("/settings").await.ok(200)["pilot_mode"], mode);
    }
    assert_eq!(
        b.get("/settings").await.ok(200)["pilot_mode"],
        "review",
        "per org"
    );

    for (body, details) in [
        (
            json!({"pilot_mode": "manual"}),
            "pilot_mode: 'manual' is not one of: off, review, auto",
        ),
        (
            json!({"pilot_mode": "AUTO "}),
            "pilot_mode: 'AUTO' is not one of",
        ),
        (json!({"pilot_mode": null}), "pilot_mode: must not be null"),
        (json!({}), "body: nothing to change"),
        (
            json!({"pilot_mode": "off", "theme": "dark"}),
            "theme: unknown setting",
        ),
    ] {
        let r = a.patch("/settings", body).await;
        r.err(422, "VALIDATION_ERROR");
        assert!(r.details().starts_with(details), "{}", r.details());
    }
    assert_eq!(
        a.get("/settings").await.ok(200)["pilot_mode"],
        "auto",
        "unchanged"
    );

    let s2 = start().await;
    let demo = s2.demo_client().await;
    assert_eq!(demo.get("/settings").await.ok(200)["pilot_mode"], "auto");
}

fn webhook_ids(list: &Value) -> Vec<&str> {
    list["webhooks"]
        .as_array()
        .expect("webhooks array")
        .iter()
        .filter_map(|w| w["id"].as_str())
        .collect()
}

#[tokio::test]
async fn webhooks_register_list_deactivate() {
    let s = start().await;
    let c = s.org_client("acme").await;
    let r = c.get("/webhooks").await;
    let data = r.ok(200);
    assert_eq!(data["webhooks"], json!([]));
    let events: Vec<&str> = data["available_events"]
        .as_array()
        .expect("available_events")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for e in [
        "email.opened",
        "campaign.completed",
        "contact.created",
        "email.replied",
    ] {
        assert!(events.contains(&e), "{e} missing from {events:?}");
    }

    let r = c
        .post(
            "/webhooks",
            json!({"url": "https://hooks.example.com/op", "events": ["email.opened", "campaign.completed"],
                   "secret": "hmac_s3cret_value"}),
        )
        .await;
    let hook = r.ok(201).clone();
    assert!(
        !r.text.contains("hmac_s3cret_value"),
        "the secret is never returned"
    );
    assert_eq!(hook["url"], "https://hooks.example.com/op");
    assert_eq!(
        hook["events"],
        json!(["email.opened", "campaign.completed"])
    );
    assert_eq!(hook["has_secret"], true);
    assert_eq!(hook["active"], true);
    let id = hook["id"].as_str().unwrap().to_string();

    let r = c
        .post(
            "/webhooks",
            json!({"url": "http://hooks.example.net/x", "events": ["email.opened", "email.clicked", "email.opened"]}),
        )
        .await;
    let mut second = r.ok(201).clone();
    // Without a secret the server generates one and shows it this once.
    let generated = second["secret"]
        .as_str()
        .expect("generated secret")
        .to_string();
    assert!(generated.starts_with("whsec_"));
    second.as_object_mut().unwrap().remove("secret");
    assert_eq!(second["has_secret"], true);
    assert_eq!(
        second["events"],
        json!(["email.opened", "email.clicked"]),
        "duplicate events are dropped"
    );

    let r = c.get("/webhooks").await;
    let list = r.ok(200);
    assert!(!r.text.contains("hmac_s3cret_value"));
    assert_eq!(
        webhook_ids(list),
        [id.as_str(), second["id"].as_str().unwrap()]
    );
    assert!(!r.text.contains(&generated));
    assert_eq!(list["webhooks"][0], hook);
    assert_eq!(list["webhooks"][1], second);
    assert_eq!(hook["last_delivery"], Value::Null);

    let r = c.delete(&format!("/webhooks?id={id}")).await;
    assert_eq!(r.ok(200)["deleted"], true);
    let r = c.get("/webhooks").await;
    assert_eq!(webhook_ids(r.ok(200)), [second["id"].as_str().unwrap()]);
    c.delete(&format!("/webhooks?id={id}"))
        .await
        .err(404, "RESOURCE_NOT_FOUND");
    c.delete("/webhooks?id=00000000-0000-7000-8000-000000000000")
        .await
        .err(404, "RESOURCE_NOT_FOUND");
    c.delete("/webhooks?id=nope")
        .await
        .err(404, "RESOURCE_NOT_FOUND");
    for q in ["", "?id=", "?other=1"] {
        let r = c.delete(&format!("/webhooks{q}")).await;
        r.err(422, "VALIDATION_ERROR");
        assert!(r.details().starts_with("id:"), "{}", r.details());
    }
}

#[tokio::test]
async fn webhook_validation() {
    let s = start().await;
    let c = s.org_client("acme").await;
    for (body, details) in [
        (json!({"events": ["email.opened"]}), "url: missing"),
        (
            json!({"url": "ftp://files.example.com", "events": ["email.opened"]}),
            "url: must be an http:// or https:// URL",
        ),
        (
            json!({"url": "https:///nohost", "events": ["email.opened"]}),
            "url: must be an http:// or https:// URL",
        ),
        (json!({"url": "https://h.example.com"}), "events: missing"),
        (
            json!({"url": "https://h.example.com", "events": []}),
            "events: must not be empty",
        ),
        (
            json!({"url": "https://h.example.com", "events": ["email.opened", "email.exploded"]}),
            "events[1]: unknown event 'email.exploded'",
        ),
        (
            json!({"url": "https://h.example.com", "events": [5]}),
            "events[0]: expected a string",
        ),
        (
            json!({"url": "https://h.example.com", "events": ["email.opened"], "secret": 12}),
            "secret: expected a string",
        ),
    ] {
        let r = c.post("/webhooks", body).await;
        r.err(422, "VALIDATION_ERROR");
        assert!(r.details().starts_with(details), "{}", r.details());
    }
    assert_eq!(c.get("/webhooks").await.ok(200)["webhooks"], json!([]));
}

#[tokio::test]
async fn other_orgs_webhooks_are_invisible() {
    let s = start().await;
    let a = s.org_client("acme").await;
    let b = s.org_client("other").await;
    let r = a
        .post(
            "/webhooks",
            json!({"url": "https://a.example.com/h", "events": ["meeting.booked"]}),
        )
        .await;
    let id = r.ok(201)["id"].as_str().unwrap().to_string();
    assert_eq!(b.get("/webhooks").await.ok(200)["webhooks"], json!([]));
    b.delete(&format!("/webhooks?id={id}"))
        .await
        .err(404, "RESOURCE_NOT_FOUND");
    let r = a.get("/webhooks").await;
    assert_eq!(webhook_ids(r.ok(200)), [id.as_str()]);

    // Settings and credits are per org as well.
    a.patch("/settings", json!({"pilot_mode": "off"}))
        .await
        .ok(200);
    assert_eq!(b.get("/settings").await.ok(200)["pilot_mode"], "review");
}
