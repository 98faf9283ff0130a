//! REST v1 `/contacts`: list filters and pagination, create (one, batch, upsert by email), get,
//! PUT with partial changes, delete, and cross-org isolation.

use crate::common;

use common::start;
use serde_json::{json, Value};

const MISSING: &str = "/contacts/00000000-0000-7000-8000-000000000000";

fn emails(items: &[Value]) -> Vec<&str> {
    items.iter().filter_map(|c| c["email"].as_str()).collect()
}

#[tokio::test]
async fn create_get_and_contact_shape() {
    let s = start().await;
    let c = s.org_client("acme").await;
    let r = c
        .post(
            "/contacts",
            json!({"email": "John@Acme.com", "first_name": "John", "last_name": "Smith",
                   "company": "Acme", "title": "CTO", "linkedin_url": "https://linkedin.com/in/js",
                   "shoe_size": 44}),
        )
        .await;
    let data = r.ok(201);
    assert_eq!(data["count"], 1);
    let created = &data["contacts"][0];
    let id = created["id"].as_str().expect("id");
    assert_eq!(created["email"], "John@Acme.com");
    assert_eq!(created["full_name"], "John Smith");
    assert_eq!(created["status"], "new");
    assert_eq!(created["custom_fields"], json!({"shoe_size": 44}));
    for k in [
        "account_id",
        "folder_id",
        "phone",
        "created_at",
        "updated_at",
    ] {
        assert!(created.get(k).is_some(), "contact lacks {k}");
    }
    let got = c.get(&format!("/contacts/{id}")).await;
    assert_eq!(got.ok(200), created);
    // Ids are case-insensitive UUIDs.
    let upper = c.get(&format!("/contacts/{}", id.to_uppercase())).await;
    assert_eq!(upper.ok(200)["id"], id);
    c.get(MISSING).await.err(404, "RESOURCE_NOT_FOUND");
}

#[tokio::test]
async fn create_validates_input() {
    let s = start().await;
    let c = s.org_client("acme").await;
    let cases = [
        (json!({"first_name": "No Email"}), "email: missing"),
        (
            json!({"email": "not-an-email"}),
            "email: 'not-an-email' is not a valid email address",
        ),
        (
            json!({"email": "a@b.io", "status": "vip"}),
            "status: 'vip' is not one of",
        ),
        (json!({"contacts": []}), "contacts: must not be empty"),
        (
            json!({"contacts": [{"email": "a@b.io"}, {"first_name": "x"}]}),
            "contacts[1].email: missing",
        ),
        (
            json!({"email": "a@b.io", "first_name": "x".repeat(201)}),
            "first_name: longer than 200",
        ),
    ];
    for (body, details) in cases {
        let r = c.post("/contacts", body).await;
        r.err(422, "VALIDATION_ERROR");
        assert!(
            r.details().starts_with(details),
            "{} vs {details}",
            r.details()
        );
    }
    let too_many: Vec<Value> = (0..501)
        .map(|i| json!({"email": format!("p{i}@x.io")}))
        .collect();
    let r = c.post("/contacts", json!({ "contacts": too_many })).await;
    r.err(422, "VALIDATION_ERROR");
    assert!(r.details().starts_with("contacts:"));
    assert_eq!(c.get("/contacts").await.total(), 0);
}

#[tokio::test]
async fn duplicate_email_is_409_unless_upsert() {
    let s = start().await;
    let c = s.org_client("acme").await;
    let first = c
        .post(
            "/contacts",
            json!({"email": "john@acme.com", "first_name": "John", "title": "CTO"}),
        )
        .await;
    let id = first.ok(201)["contacts"][0]["id"].clone();

    let dup = c
        .post(
            "/contacts",
            json!({"email": "JOHN@acme.com", "last_name": "Smith"}),
        )
        .await;
    let e = dup.err(409, "DUPLICATE_RESOURCE");
    assert!(e["details"]
        .as_str()
        .unwrap_or("")
        .to_lowercase()
        .contains("john@acme.com"));

    let up = c
        .post(
            "/contacts",
            json!({"email": "JOHN@acme.com", "last_name": "Smith", "upsert": true}),
        )
        .await;
    let data = up.ok(201);
    let merged = &data["contacts"][0];
    assert_eq!(merged["id"], id);
    assert_eq!(merged["full_name"], "John Smith");
    assert_eq!(
        merged["title"], "CTO",
        "upsert keeps fields it was not given"
    );
    assert!(
        merged["custom_fields"].get("upsert").is_none(),
        "upsert is a control field"
    );
    assert_eq!(c.get("/contacts").await.total(), 1);
}

#[tokio::test]
async fn batch_create_and_batch_upsert() {
    let s = start().await;
    let c = s.org_client("acme").await;
    let r = c
        .post(
            "/contacts",
            json!({"contacts": [
                {"email": "a@one.io", "first_name": "Ann"},
                {"email": "b@two.io", "first_name": "Ben"},
                {"email": "c@three.io", "first_name": "Cy"}
            ]}),
        )
        .await;
    let data = r.ok(201);
    assert_eq!(data["count"], 3);
    assert_eq!(
        emails(data["contacts"].as_array().unwrap()),
        ["a@one.io", "b@two.io", "c@three.io"]
    );

    // A batch with one duplicate fails as a whole: nothing of it is written.
    let r = c
        .post(
            "/contacts",
            json!({"contacts": [{"email": "new@four.io"}, {"email": "a@one.io"}]}),
        )
        .await;
    r.err(409, "DUPLICATE_RESOURCE");
    assert_eq!(c.get("/contacts").await.total(), 3);

    // With upsert the existing one is updated and the new one created.
    let r = c
        .post(
            "/contacts",
            json!({"upsert": true, "contacts": [
                {"email": "new@four.io", "first_name": "Dee"},
                {"email": "a@one.io", "title": "CEO"}
            ]}),
        )
        .await;
    let data = r.ok(201);
    assert_eq!(data["count"], 2);
    assert_eq!(data["contacts"][1]["first_name"], "Ann");
    assert_eq!(data["contacts"][1]["title"], "CEO");
    assert_eq!(c.get("/contacts").await.total(), 4);
}

#[tokio::test]
async fn put_changes_only_the_given_fields() {
    let s = start().await;
    let c = s.org_client("acme").await;
    let r = c
        .post(
            "/contacts",
            json!({"email": "sam@acme.com", "first_name": "Sam", "last_name": "Lee",
                   "company": "Acme", "title": "Engineer", "phone": "+1 555 0100",
                   "custom_fields": {"tier": "gold", "region": "EU"}}),
        )
        .await;
    let before = r.ok(201)["contacts"][0].clone();
    let path = format!("/contacts/{}", before["id"].as_str().unwrap());

    let r = c
        .put(
            &path,
            json!({"title": "VP of Sales", "status": "qualified"}),
        )
        .await;
    let after = r.ok(200).clone();
    assert_eq!(after["title"], "VP of Sales");
    assert_eq!(after["status"], "qualified");
    for k in [
        "id",
        "email",
        "first_name",
        "last_name",
        "company",
        "phone",
        "custom_fields",
        "created_at",
    ] {
        assert_eq!(after[k], before[k], "{k} changed");
    }
    assert_eq!(c.get(&path).await.ok(200), &after);

    // null clears a field; custom fields merge key by key.
    let r = c
        .put(
            &path,
            json!({"phone": null, "custom_fields": {"region": null, "seats": 5}}),
        )
        .await;
    let data = r.ok(200);
    assert_eq!(data["phone"], Value::Null);
    assert_eq!(data["title"], "VP of Sales");
    assert_eq!(data["custom_fields"], json!({"tier": "gold", "seats": 5}));

    // Invalid changes are refused and change nothing.
    for (body, details) in [
        (json!({"email": null}), "email: cannot be removed"),
        (json!({"status": "happy"}), "status: 'happy' is not one of"),
        (json!({"email": "nope"}), "email: 'nope' is not a valid"),
        (json!({"title": 3}), "title: expected a string"),
    ] {
        let r = c.put(&path, body).await;
        r.err(422, "VALIDATION_ERROR");
        assert!(r.details().starts_with(details), "{}", r.details());
    }
    assert_eq!(c.get(&path).await.ok(200)["title"], "VP of Sales");

    // Changing the email to another contact's email is a conflict.
    c.post("/contacts", json!({"email": "taken@acme.com"}))
        .await
        .ok(201);
    c.put(&path, json!({"email": "Taken@acme.com"}))
        .await
        .err(409, "DUPLICATE_RESOURCE");
    c.put(MISSING, json!({"title": "x"}))
        .await
        .err(404, "RESOURCE_NOT_FOUND");
}

#[tokio::test]
async fn delete_removes_the_contact() {
    let s = start().await;
    let c = s.org_client("acme").await;
    let r = c.post("/contacts", json!({"email": "gone@acme.com"})).await;
    let id = r.ok(201)["contacts"][0]["id"].as_str().unwrap().to_string();
    let path = format!("/contacts/{id}");
    let r = c.delete(&path).await;
    assert_eq!(r.ok(200), &json!({"deleted": true, "id": id}));
    c.get(&path).await.err(404, "RESOURCE_NOT_FOUND");
    c.delete(&path).await.err(404, "RESOURCE_NOT_FOUND");
    c.delete("/contacts/nonsense")
        .await
        .err(404, "RESOURCE_NOT_FOUND");
    assert_eq!(c.get("/contacts").await.total(), 0);
    // The email is free again.
    c.post("/contacts", json!({"email": "gone@acme.com"}))
        .await
        .ok(201);
}

#[tokio::test]
async fn list_filters() {
    let s = start().await;
    let c = s.demo_client().await;
    let all = c.get("/contacts").await;
    assert_eq!(all.total(), 206);

    let r = c.get_query("/contacts", &[("search", "sarah")]).await;
    let mut found = emails(r.page()).to_vec();
    found.sort_unstable();
    assert_eq!(found, ["sarah.chen@notion.so", "sarah.kim@figma.com"]);

    // Search matches names accent- and case-insensitively, companies and emails.
    let r = c.get_query("/contacts", &[("search", "SÁRAH CH")]).await;
    assert_eq!(emails(r.page()), ["sarah.chen@notion.so"]);
    let r = c.get_query("/contacts", &[("search", "john@acme")]).await;
    assert_eq!(emails(r.page()), ["john@acme.com"]);
    let r = c.get_query("/contacts", &[("search", "notion")]).await;
    assert!(r.page().iter().all(|x| x["company"] == "Notion"));
    assert_eq!(r.total(), 2);
    let r = c.get_query("/contacts", &[("search", "%")]).await;
    assert_eq!(r.total(), 0, "LIKE wildcards are literal");

    let r = c.get_query("/contacts", &[("status", "qualified")]).await;
    let items = r.page();
    assert!(!items.is_empty());
    assert!(items.iter().all(|x| x["status"] == "qualified"));
    assert!(emails(items).contains(&"sarah.chen@notion.so"));
    let r = c
        .get_query("/contacts", &[("status", "qualified"), ("search", "sarah")])
        .await;
    assert_eq!(emails(r.page()), ["sarah.chen@notion.so"]);

    let r = c.get_query("/contacts", &[("status", "vip")]).await;
    r.err(422, "VALIDATION_ERROR");
    assert!(r.details().starts_with("status:"));

    // folder_id
    let id = s.contact_id("demo", "john@acme.com").await;
    c.put(&format!("/contacts/{id}"), json!({"folder_id": "f-42"}))
        .await
        .ok(200);
    let r = c.get_query("/contacts", &[("folder_id", "f-42")]).await;
    assert_eq!(emails(r.page()), ["john@acme.com"]);
    let r = c.get_query("/contacts", &[("folder_id", "f-43")]).await;
    assert_eq!(r.total(), 0);
}

#[tokio::test]
async fn pagination_clamps_and_validates() {
    let s = start().await;
    let c = s.demo_client().await;

    let r = c.get("/contacts").await;
    assert_eq!(r.page().len(), 50, "default page size");
    assert_eq!(r.body["meta"]["limit"], 50);
    assert_eq!(r.body["meta"]["offset"], 0);
    assert_eq!(r.body["meta"]["has_more"], true);

    let r = c.get("/contacts?limit=500").await;
    assert_eq!(r.page().len(), 200);
    assert_eq!(r.body["meta"]["limit"], 200, "limit is clamped to the cap");
    assert_eq!(r.body["meta"]["has_more"], true);
    let first_page: Vec<Value> = r.page().iter().map(|x| x["id"].clone()).collect();

    let r = c.get("/contacts?limit=200&offset=200").await;
    let rest = r.page();
    assert_eq!(rest.len(), 6);
    assert_eq!(r.body["meta"]["has_more"], false);
    assert_eq!(r.body["meta"]["offset"], 200);
    assert!(rest.iter().all(|x| !first_page.contains(&x["id"])));

    let r = c.get("/contacts?limit=10&offset=5").await;
    let ids: Vec<Value> = r.page().iter().map(|x| x["id"].clone()).collect();
    assert_eq!(ids, first_page[5..15].to_vec(), "pages are stable slices");

    let r = c.get("/contacts?offset=1000").await;
    assert!(r.page().is_empty());
    assert_eq!(r.body["meta"]["has_more"], false);
    assert_eq!(r.body["meta"]["total"], 206);

    // A limit too large for any integer type is still just "above the cap".
    let r = c.get("/contacts?limit=99999999999999999999").await;
    assert_eq!(r.page().len(), 200);
    assert_eq!(r.body["meta"]["limit"], 200);
    let r = c.get("/contacts?offset=99999999999999999999").await;
    assert!(r.page().is_empty());
    assert_eq!(r.body["meta"]["has_more"], false);

    for (q, field) in [
        ("limit=0", "limit"),
        ("limit=-1", "limit"),
        ("limit=abc", "limit"),
        ("limit=1.5", "limit"),
        ("offset=-1", "offset"),
        ("offset=x", "offset"),
    ] {
        let r = c.get(&format!("/contacts?{q}")).await;
        r.err(422, "VALIDATION_ERROR");
        assert!(
            r.details().starts_with(&format!("{field}:")),
            "{q}: {}",
            r.details()
        );
    }
}

#[tokio::test]
async fn other_orgs_contacts_are_invisible() {
    let s = start().await;
    let a = s.demo_client().await;
    let b = s.org_client("other").await;
    let sarah = s.contact_id("demo", "sarah.chen@notion.so").await;
    let path = format!("/contacts/{sarah}");

    b.get(&path).await.err(404, "RESOURCE_NOT_FOUND");
    b.put(&path, json!({"title": "Hacked"}))
        .await
        .err(404, "RESOURCE_NOT_FOUND");
    b.delete(&path).await.err(404, "RESOURCE_NOT_FOUND");
    let r = b.get_query("/contacts", &[("search", "sarah")]).await;
    assert!(r.page().is_empty());
    assert_eq!(b.get("/contacts").await.total(), 0);

    // The same email may exist in both orgs; upserts stay in their own org.
    let r = b
        .post(
            "/contacts",
            json!({"email": "sarah.chen@notion.so", "title": "Other", "upsert": true}),
        )
        .await;
    assert_ne!(r.ok(201)["contacts"][0]["id"], sarah.as_str());

    let still = a.get(&path).await;
    let data = still.ok(200);
    assert_eq!(data["title"], "VP of Engineering");
    assert_eq!(data["status"], "qualified");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_of_one_email_make_one_contact() {
    let s = start().await;
    let c = s.org_client("acme").await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                c.post(
                    "/contacts",
                    json!({"email": "race@acme.com", "first_name": format!("R{i}")}),
                )
                .await
            })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        let r = t.await.expect("task");
        match r.status {
            201 => {
                r.ok(201);
                created += 1;
            }
            _ => {
                r.err(409, "DUPLICATE_RESOURCE");
            }
        }
    }
    assert_eq!(created, 1);
    assert_eq!(c.get("/contacts").await.total(), 1);
}
