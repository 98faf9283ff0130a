//! REST v1 `/campaigns`: list filters, get with `audience_stats`, PATCH, trigger (by contact id
//! and by email), status, CAMPAIGN_NOT_ACTIVE, and cross-org isolation.

use crate::common;

use common::{start, Client, TestServer};
use serde_json::{json, Value};

const MISSING: &str = "/campaigns/00000000-0000-7000-8000-000000000000";

async fn demo() -> (TestServer, Client) {
    let s = start().await;
    let c = s.demo_client().await;
    (s, c)
}

fn names(items: &[Value]) -> Vec<&str> {
    let mut n: Vec<&str> = items.iter().filter_map(|c| c["name"].as_str()).collect();
    n.sort_unstable();
    n
}

#[tokio::test]
async fn list_with_filters() {
    let (_s, c) = demo().await;
    let r = c.get("/campaigns").await;
    let all = r.page();
    assert_eq!(
        names(all),
        ["Q4 Enterprise", "Seed founders", "Spring launch"]
    );
    for camp in all {
        for k in [
            "id",
            "name",
            "status",
            "type",
            "campaign_mode",
            "config",
            "steps",
            "created_at",
            "updated_at",
        ] {
            assert!(camp.get(k).is_some(), "campaign lacks {k}");
        }
    }
    let r = c.get("/campaigns?status=active").await;
    assert_eq!(names(r.page()), ["Seed founders"]);
    let r = c.get("/campaigns?status=paused").await;
    assert_eq!(names(r.page()), ["Q4 Enterprise"]);
    let r = c.get("/campaigns?status=draft").await;
    assert_eq!(names(r.page()), ["Spring launch"]);
    let r = c.get("/campaigns?status=completed").await;
    assert!(r.page().is_empty());
    let r = c.get("/campaigns?type=multichannel").await;
    assert_eq!(names(r.page()), ["Q4 Enterprise"]);
    let r = c.get("/campaigns?type=email&status=draft").await;
    assert_eq!(names(r.page()), ["Spring launch"]);
    let r = c.get("/campaigns?type=email").await;
    assert_eq!(r.total(), 2);

    let r = c.get("/campaigns?status=running").await;
    r.err(422, "VALIDATION_ERROR");
    assert!(r.details().starts_with("status:"));

    let r = c.get("/campaigns?limit=999").await;
    assert_eq!(r.body["meta"]["limit"], 200);
    assert_eq!(r.page().len(), 3);
    let r = c.get("/campaigns?limit=1&offset=1").await;
    assert_eq!(r.page().len(), 1);
    assert_eq!(r.body["meta"]["has_more"], true);
    let r = c.get("/campaigns?offset=3").await;
    assert!(r.page().is_empty());
    assert_eq!(r.body["meta"]["has_more"], false);
    c.get("/campaigns?limit=0")
        .await
        .err(422, "VALIDATION_ERROR");
}

#[tokio::test]
async fn get_includes_audience_stats() {
    let (s, c) = demo().await;
    let q4 = s.campaign_id("demo", "Q4 Enterprise").await;
    let r = c.get(&format!("/campaigns/{q4}")).await;
    let data = r.ok(200);
    assert_eq!(data["id"], q4.as_str());
    assert_eq!(data["name"], "Q4 Enterprise");
    assert_eq!(data["status"], "paused");
    assert_eq!(data["type"], "multichannel");
    assert_eq!(
        data["audience_stats"],
        json!({"total": 21, "active": 17, "completed": 2, "paused": 0, "bounced": 2})
    );
    c.get(MISSING).await.err(404, "RESOURCE_NOT_FOUND");
    c.get("/campaigns/seed-founders")
        .await
        .err(404, "RESOURCE_NOT_FOUND");
}

#[tokio::test]
async fn status_has_the_audience_breakdown() {
    let (s, c) = demo().await;
    let seed = s.campaign_id("demo", "Seed founders").await;
    let r = c.get(&format!("/campaigns/{seed}/status")).await;
    assert_eq!(
        r.ok(200),
        &json!({
            "campaign_id": seed,
            "name": "Seed founders",
            "status": "active",
            "audience": {"total": 13, "active": 13, "completed": 0, "paused": 0,
                         "bounced": 0, "failed": 0}
        })
    );
    c.get(&format!("{MISSING}/status"))
        .await
        .err(404, "RESOURCE_NOT_FOUND");
}

#[tokio::test]
async fn patch_updates_given_fields() {
    let (s, c) = demo().await;
    let spring = s.campaign_id("demo", "Spring launch").await;
    let path = format!("/campaigns/{spring}");
    let before = c.get(&path).await.ok(200).clone();

    let r = c
        .patch(
            &path,
            json!({"name": "Spring launch 2027", "campaign_mode": "autopilot",
                   "config": {"daily_limit": 40}, "steps": [{"day": 0, "channel": "email"}]}),
        )
        .await;
    let after = r.ok(200).clone();
    assert_eq!(after["name"], "Spring launch 2027");
    assert_eq!(after["campaign_mode"], "autopilot");
    assert_eq!(after["config"], json!({"daily_limit": 40}));
    assert_eq!(after["steps"], json!([{"day": 0, "channel": "email"}]));
    assert_eq!(after["status"], before["status"]);
    assert_eq!(after["type"], before["type"]);
    assert_eq!(after["created_at"], before["created_at"]);
    assert!(after.get("audience_stats").is_none());
    let got = c.get(&path).await;
    assert_eq!(got.ok(200)["name"], "Spring launch 2027");
    assert_eq!(got.ok(200)["audience_stats"]["total"], 5);

    let r = c
        .patch(&path, json!({"status": "active", "type": "linkedin"}))
        .await;
    assert_eq!(r.ok(200)["status"], "active");
    assert_eq!(r.ok(200)["type"], "linkedin");
    assert_eq!(r.ok(200)["name"], "Spring launch 2027");
    let r = c.get("/campaigns?status=active").await;
    assert_eq!(r.total(), 2);

    for (body, details) in [
        (
            json!({"status": "running"}),
            "status: 'running' is not one of",
        ),
        (json!({"type": "sms"}), "type: must be one of"),
        (json!({"name": ""}), "name: must not be empty"),
        (json!({"steps": {"day": 1}}), "steps: expected an array"),
        (json!({"config": [1]}), "config: expected an object"),
        (json!({"colour": "blue"}), "colour: unknown field"),
    ] {
        let r = c.patch(&path, body).await;
        r.err(422, "VALIDATION_ERROR");
        assert!(r.details().starts_with(details), "{}", r.details());
    }
    assert_eq!(c.get(&path).await.ok(200)["type"], "linkedin");
    c.patch(MISSING, json!({"name": "x"}))
        .await
        .err(404, "RESOURCE_NOT_FOUND");
}

#[tokio::test]
async fn trigger_by_contact_id() {
    let (s, c) = demo().await;
    let seed = s.campaign_id("demo", "Seed founders").await;
    let sarah = s.contact_id("demo", "sarah.chen@notion.so").await;
    let path = format!("/campaigns/{seed}/trigger");

    let r = c.post(&path, json!({"contact_id": sarah})).await;
    let data = r.ok(200);
    assert_eq!(data["triggered"], true);
    assert_eq!(data["campaign_id"], seed.as_str());
    assert_eq!(data["contact_id"], sarah.as_str());
    assert_eq!(data["already_in_campaign"], false);
    let stats = c.get(&format!("/campaigns/{seed}")).await;
    assert_eq!(stats.ok(200)["audience_stats"]["total"], 14);
    assert_eq!(stats.ok(200)["audience_stats"]["active"], 14);

    // Again: nothing changes, and the reply says so.
    let r = c.post(&path, json!({"contact_id": sarah})).await;
    assert_eq!(r.ok(200)["already_in_campaign"], true);
    let status = c.get(&format!("/campaigns/{seed}/status")).await;
    assert_eq!(status.ok(200)["audience"]["total"], 14);

    let r = c.post(&path, json!({})).await;
    r.err(422, "VALIDATION_ERROR");
    assert!(r.details().starts_with("contact_id:"));
    c.post(
        &path,
        json!({"contact_id": "00000000-0000-7000-8000-000000000000"}),
    )
    .await
    .err(404, "RESOURCE_NOT_FOUND");
    c.post(&path, json!({"contact_id": "Sarah Chen"}))
        .await
        .err(404, "RESOURCE_NOT_FOUND");
    c.post(&path, json!({"contact_id": 7}))
        .await
        .err(422, "VALIDATION_ERROR");
    c.post(&format!("{MISSING}/trigger"), json!({"contact_id": sarah}))
        .await
        .err(404, "RESOURCE_NOT_FOUND");
}

#[tokio::test]
async fn trigger_by_email_creates_the_contact() {
    let (s, c) = demo().await;
    let seed = s.campaign_id("demo", "Seed founders").await;
    let path = format!("/campaigns/{seed}/trigger");

    let r = c
        .post(
            &path,
            json!({"email": "newbie@acme.com", "first_name": "Nia", "last_name": "Newbie"}),
        )
        .await;
    let data = r.ok(200);
    assert_eq!(data["triggered"], true);
    let id = data["contact_id"].as_str().expect("contact_id").to_string();
    let r = c.get(&format!("/contacts/{id}")).await;
    let contact = r.ok(200);
    assert_eq!(contact["email"], "newbie@acme.com");
    assert_eq!(contact["full_name"], "Nia Newbie");
    assert_eq!(contact["company"], "Acme", "linked by domain");
    assert!(contact["account_id"].is_string());
    assert_eq!(c.get("/contacts").await.total(), 207);

    // An existing contact found by email is reused, untouched.
    let john = s.contact_id("demo", "john@acme.com").await;
    let r = c
        .post(
            &path,
            json!({"email": "JOHN@acme.com", "first_name": "Johnny"}),
        )
        .await;
    assert_eq!(r.ok(200)["contact_id"], john.as_str());
    assert_eq!(r.ok(200)["already_in_campaign"], false);
    let r = c.get(&format!("/contacts/{john}")).await;
    assert_eq!(r.ok(200)["first_name"], "John");
    assert_eq!(c.get("/contacts").await.total(), 207);

    let r = c.post(&path, json!({"email": "bad-email"})).await;
    r.err(422, "VALIDATION_ERROR");
    assert!(r.details().starts_with("email:"));
    assert_eq!(
        c.get(&format!("/campaigns/{seed}/status")).await.ok(200)["audience"]["total"],
        15
    );
}

#[tokio::test]
async fn trigger_on_paused_or_draft_campaign_is_400() {
    let (s, c) = demo().await;
    let sarah = s.contact_id("demo", "sarah.chen@notion.so").await;
    for name in ["Q4 Enterprise", "Spring launch"] {
        let id = s.campaign_id("demo", name).await;
        let path = format!("/campaigns/{id}/trigger");
        let before = c.get(&format!("/campaigns/{id}")).await.ok(200)["audience_stats"].clone();
        c.post(&path, json!({"contact_id": sarah}))
            .await
            .err(400, "CAMPAIGN_NOT_ACTIVE");
        c.post(&path, json!({"email": "ghost@nowhere.io"}))
            .await
            .err(400, "CAMPAIGN_NOT_ACTIVE");
        let after = c.get(&format!("/campaigns/{id}")).await.ok(200)["audience_stats"].clone();
        assert_eq!(before, after, "{name}: audience changed");
    }
    // The refused trigger by email created no contact.
    let r = c
        .get_query("/contacts", &[("search", "ghost@nowhere.io")])
        .await;
    assert!(r.page().is_empty());

    // Completed campaigns refuse too; resuming makes triggering work.
    let q4 = s.campaign_id("demo", "Q4 Enterprise").await;
    c.patch(&format!("/campaigns/{q4}"), json!({"status": "completed"}))
        .await
        .ok(200);
    c.post(
        &format!("/campaigns/{q4}/trigger"),
        json!({"contact_id": sarah}),
    )
    .await
    .err(400, "CAMPAIGN_NOT_ACTIVE");
    c.patch(&format!("/campaigns/{q4}"), json!({"status": "active"}))
        .await
        .ok(200);
    let r = c
        .post(
            &format!("/campaigns/{q4}/trigger"),
            json!({"contact_id": sarah}),
        )
        .await;
    assert_eq!(r.ok(200)["triggered"], true);
}

#[tokio::test]
async fn other_orgs_campaigns_are_invisible() {
    let (s, a) = demo().await;
    let b = s.org_client("other").await;
    let seed = s.campaign_id("demo", "Seed founders").await;
    let path = format!("/campaigns/{seed}");
    b.get(&path).await.err(404, "RESOURCE_NOT_FOUND");
    b.get(&format!("{path}/status"))
        .await
        .err(404, "RESOURCE_NOT_FOUND");
    b.patch(&path, json!({"status": "paused"}))
        .await
        .err(404, "RESOURCE_NOT_FOUND");
    b.post(&format!("{path}/trigger"), json!({"email": "spy@other.io"}))
        .await
        .err(404, "RESOURCE_NOT_FOUND");
    assert_eq!(b.get("/campaigns").await.total(), 0);
    assert_eq!(b.get("/contacts").await.total(), 0);

    // B's contact cannot be put into A's campaign, nor A's contact into it by id from B.
    let r = b.post("/contacts", json!({"email": "mine@other.io"})).await;
    let mine = r.ok(201)["contacts"][0]["id"].as_str().unwrap().to_string();
    a.post(&format!("{path}/trigger"), json!({"contact_id": mine}))
        .await
        .err(404, "RESOURCE_NOT_FOUND");

    let r = a.get(&path).await;
    let data = r.ok(200);
    assert_eq!(data["status"], "active");
    assert_eq!(data["audience_stats"]["total"], 13);
}
