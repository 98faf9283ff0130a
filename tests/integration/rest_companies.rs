//! REST v1 `/companies`: unknown fields into `context`, upsert by domain, partial PUT, delete
//! unlinking contacts, automatic linking of contacts by email domain, list filters, isolation.

use crate::common;

use common::start;
use serde_json::{json, Value};

const MISSING: &str = "/companies/00000000-0000-7000-8000-000000000000";

#[tokio::test]
async fn create_puts_unknown_fields_into_context() {
    let s = start().await;
    let c = s.org_client("acme").await;
    let r = c
        .post(
            "/companies",
            json!({"name": "Acme Corp", "domain": "https://www.Acme.com/about", "industry": "Software",
                   "size": 250, "hq": "Berlin", "founded": 1999, "tags": ["b2b"],
                   "context": {"source": "import"}}),
        )
        .await;
    let data = r.ok(201);
    assert_eq!(data["count"], 1);
    let co = &data["companies"][0];
    assert_eq!(co["name"], "Acme Corp");
    assert_eq!(co["domain"], "acme.com", "domains are normalised");
    assert_eq!(co["industry"], "Software");
    assert_eq!(co["size"], "250");
    assert_eq!(
        co["context"],
        json!({"source": "import", "hq": "Berlin", "founded": 1999, "tags": ["b2b"]})
    );
    for k in ["id", "created_at", "updated_at"] {
        assert!(co[k].is_string(), "company lacks {k}");
    }
    let got = c
        .get(&format!("/companies/{}", co["id"].as_str().unwrap()))
        .await;
    assert_eq!(got.ok(200), co);
    c.get(MISSING).await.err(404, "RESOURCE_NOT_FOUND");
}

#[tokio::test]
async fn create_validates_input() {
    let s = start().await;
    let c = s.org_client("acme").await;
    for (body, details) in [
        (
            json!({"industry": "Software"}),
            "body: name or domain is required",
        ),
        (
            json!({"domain": "not a domain"}),
            "domain: 'not a domain' is not a domain",
        ),
        (
            json!({"name": "A", "context": "x"}),
            "context: expected an object",
        ),
        (
            json!({"companies": []}),
            "companies: must hold 1 to 500 companies",
        ),
        (
            json!({"companies": [{"name": "A"}, {"industry": "x"}]}),
            "companies[1]: name or domain is required",
        ),
        (
            json!({"companies": [{"name": "A"}, {"name": 5}]}),
            "companies[1].name: expected a string",
        ),
    ] {
        let r = c.post("/companies", body).await;
        r.err(422, "VALIDATION_ERROR");
        assert_eq!(r.details(), details);
    }
    assert_eq!(c.get("/companies").await.total(), 0);
}

#[tokio::test]
async fn upsert_by_domain() {
    let s = start().await;
    let c = s.org_client("acme").await;
    let r = c
        .post(
            "/companies",
            json!({"name": "Acme", "domain": "acme.com", "industry": "Manufacturing", "hq": "Berlin"}),
        )
        .await;
    let first = r.ok(201)["companies"][0].clone();

    let r = c
        .post(
            "/companies",
            json!({"name": "Acme Inc", "domain": "ACME.com"}),
        )
        .await;
    let e = r.err(409, "DUPLICATE_RESOURCE");
    assert!(e["details"].as_str().unwrap_or("").contains("acme.com"));

    let r = c
        .post(
            "/companies",
            json!({"name": "Acme Inc", "domain": "www.acme.com", "tier": 1, "upsert": true}),
        )
        .await;
    let up = &r.ok(201)["companies"][0];
    assert_eq!(up["id"], first["id"]);
    assert_eq!(up["name"], "Acme Inc");
    assert_eq!(up["industry"], "Manufacturing", "upsert keeps other fields");
    assert_eq!(up["context"], json!({"hq": "Berlin", "tier": 1}));
    assert_eq!(c.get("/companies").await.total(), 1);

    // Batch: one new, one upserted.
    let r = c
        .post(
            "/companies",
            json!({"upsert": true, "companies": [
                {"name": "Globex", "domain": "globex.com"},
                {"domain": "acme.com", "size": "51-200"}
            ]}),
        )
        .await;
    let data = r.ok(201);
    assert_eq!(data["count"], 2);
    assert_eq!(data["companies"][1]["id"], first["id"]);
    assert_eq!(data["companies"][1]["size"], "51-200");
    assert_eq!(c.get("/companies").await.total(), 2);
}

#[tokio::test]
async fn put_changes_only_the_given_fields() {
    let s = start().await;
    let c = s.org_client("acme").await;
    let r = c
        .post(
            "/companies",
            json!({"name": "Acme", "domain": "acme.com", "industry": "Manufacturing",
                   "size": "1001-5000", "hq": "Berlin", "tier": 2}),
        )
        .await;
    let before = r.ok(201)["companies"][0].clone();
    let path = format!("/companies/{}", before["id"].as_str().unwrap());

    let r = c
        .put(
            &path,
            json!({"industry": "Robotics", "hq": null, "ceo": "Wile E."}),
        )
        .await;
    let after = r.ok(200).clone();
    assert_eq!(after["industry"], "Robotics");
    assert_eq!(after["context"], json!({"tier": 2, "ceo": "Wile E."}));
    for k in ["id", "name", "domain", "size", "created_at"] {
        assert_eq!(after[k], before[k], "{k} changed");
    }
    assert_eq!(c.get(&path).await.ok(200), &after);

    let r = c.put(&path, json!({"name": null, "domain": null})).await;
    r.err(422, "VALIDATION_ERROR");
    assert_eq!(r.details(), "body: a company needs a name or a domain");
    c.post(
        "/companies",
        json!({"name": "Globex", "domain": "globex.com"}),
    )
    .await
    .ok(201);
    c.put(&path, json!({"domain": "globex.com"}))
        .await
        .err(409, "DUPLICATE_RESOURCE");
    assert_eq!(c.get(&path).await.ok(200)["domain"], "acme.com");
    c.put(MISSING, json!({"name": "x"}))
        .await
        .err(404, "RESOURCE_NOT_FOUND");
}

#[tokio::test]
async fn contacts_link_to_companies_by_email_domain_in_both_orders() {
    let s = start().await;
    let c = s.org_client("acme").await;

    // Company first, then the contact.
    let r = c
        .post(
            "/companies",
            json!({"name": "Notion", "domain": "notion.so"}),
        )
        .await;
    let notion = r.ok(201)["companies"][0]["id"].clone();
    let r = c
        .post(
            "/contacts",
            json!({"email": "sarah@notion.so", "first_name": "Sarah"}),
        )
        .await;
    let sarah = r.ok(201)["contacts"][0].clone();
    assert_eq!(sarah["account_id"], notion);
    assert_eq!(sarah["company"], "Notion", "company name is filled in");

    // Contact first, then the company.
    let r = c
        .post(
            "/contacts",
            json!({"email": "kim@figma.com", "company": "Figma Inc."}),
        )
        .await;
    let kim = r.ok(201)["contacts"][0].clone();
    assert_eq!(kim["account_id"], Value::Null);
    let r = c.post("/contacts", json!({"email": "lee@figma.com"})).await;
    let lee = r.ok(201)["contacts"][0].clone();
    let r = c
        .post(
            "/companies",
            json!({"name": "Figma", "domain": "figma.com"}),
        )
        .await;
    let figma = r.ok(201)["companies"][0]["id"].clone();
    let kim = c
        .get(&format!("/contacts/{}", kim["id"].as_str().unwrap()))
        .await;
    let kim = kim.ok(200);
    assert_eq!(kim["account_id"], figma);
    assert_eq!(
        kim["company"], "Figma Inc.",
        "an existing company name is kept"
    );
    let lee = c
        .get(&format!("/contacts/{}", lee["id"].as_str().unwrap()))
        .await;
    assert_eq!(lee.ok(200)["account_id"], figma);
    assert_eq!(lee.ok(200)["company"], "Figma");

    // Other domains stay unlinked; changing an email moves the link.
    let r = c
        .post("/contacts", json!({"email": "x@elsewhere.io"}))
        .await;
    let x = r.ok(201)["contacts"][0].clone();
    assert_eq!(x["account_id"], Value::Null);
    let r = c
        .put(
            &format!("/contacts/{}", x["id"].as_str().unwrap()),
            json!({"email": "x@notion.so"}),
        )
        .await;
    assert_eq!(r.ok(200)["account_id"], notion);
}

#[tokio::test]
async fn delete_nulls_linked_contacts_account_id() {
    let s = start().await;
    let c = s.org_client("acme").await;
    let r = c
        .post("/companies", json!({"name": "Acme", "domain": "acme.com"}))
        .await;
    let co = r.ok(201)["companies"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c
        .post(
            "/contacts",
            json!({"contacts": [{"email": "a@acme.com"}, {"email": "b@acme.com"}]}),
        )
        .await;
    let ids: Vec<String> = r.ok(201)["contacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_string())
        .collect();
    for id in &ids {
        let r = c.get(&format!("/contacts/{id}")).await;
        assert_eq!(r.ok(200)["account_id"], co.as_str());
    }

    let r = c.delete(&format!("/companies/{co}")).await;
    assert_eq!(r.ok(200), &json!({"deleted": true, "id": co}));
    c.get(&format!("/companies/{co}"))
        .await
        .err(404, "RESOURCE_NOT_FOUND");
    c.delete(&format!("/companies/{co}"))
        .await
        .err(404, "RESOURCE_NOT_FOUND");
    for id in &ids {
        let r = c.get(&format!("/contacts/{id}")).await;
        let contact = r.ok(200);
        assert_eq!(
            contact["account_id"],
            Value::Null,
            "contact keeps existing, unlinked"
        );
        assert_eq!(contact["company"], "Acme");
    }
}

#[tokio::test]
async fn list_filters_and_pagination() {
    let s = start().await;
    let c = s.demo_client().await;
    let r = c.get("/companies?limit=1000").await;
    assert_eq!(r.page().len(), 15);
    assert_eq!(r.body["meta"]["limit"], 200);
    assert_eq!(r.body["meta"]["has_more"], false);

    let r = c.get_query("/companies", &[("domain", "acme.com")]).await;
    let items = r.page();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["name"], "Acme");
    let r = c
        .get_query("/companies", &[("domain", "https://www.NOTION.so")])
        .await;
    assert_eq!(r.page()[0]["name"], "Notion");
    let r = c.get_query("/companies", &[("domain", "nope.com")]).await;
    assert!(r.page().is_empty());

    let r = c.get_query("/companies", &[("search", "fig")]).await;
    assert_eq!(r.page().len(), 1);
    assert_eq!(r.page()[0]["domain"], "figma.com");
    let r = c.get_query("/companies", &[("search", "software")]).await;
    let mut names: Vec<&str> = r.page().iter().filter_map(|x| x["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["Figma", "Notion"], "search covers industry");

    let r = c.get("/companies?limit=4&offset=12").await;
    assert_eq!(r.page().len(), 3);
    assert_eq!(r.body["meta"]["has_more"], false);
    let r = c.get("/companies?limit=4&offset=4").await;
    assert_eq!(r.page().len(), 4);
    assert_eq!(r.body["meta"]["has_more"], true);
    let r = c.get("/companies?offset=99").await;
    assert!(r.page().is_empty());
    assert_eq!(r.body["meta"]["has_more"], false);
    c.get("/companies?limit=0")
        .await
        .err(422, "VALIDATION_ERROR");
    c.get("/companies?limit=-3")
        .await
        .err(422, "VALIDATION_ERROR");
    c.get("/companies?limit=ten")
        .await
        .err(422, "VALIDATION_ERROR");
}

#[tokio::test]
async fn other_orgs_companies_are_invisible() {
    let s = start().await;
    let a = s.demo_client().await;
    let b = s.org_client("other").await;
    let r = a.get_query("/companies", &[("domain", "notion.so")]).await;
    let notion = r.page()[0]["id"].as_str().unwrap().to_string();
    let path = format!("/companies/{notion}");

    b.get(&path).await.err(404, "RESOURCE_NOT_FOUND");
    b.put(&path, json!({"name": "Mine"}))
        .await
        .err(404, "RESOURCE_NOT_FOUND");
    b.delete(&path).await.err(404, "RESOURCE_NOT_FOUND");
    assert_eq!(b.get("/companies").await.total(), 0);
    let r = b.get_query("/companies", &[("domain", "notion.so")]).await;
    assert!(r.page().is_empty());

    // B's contact at notion.so is not linked to A's Notion; B's own Notion links only B's.
    let r = b.post("/contacts", json!({"email": "z@notion.so"})).await;
    let z = r.ok(201)["contacts"][0].clone();
    assert_eq!(z["account_id"], Value::Null);
    let r = b
        .post(
            "/companies",
            json!({"name": "Notion B", "domain": "notion.so"}),
        )
        .await;
    let b_notion = r.ok(201)["companies"][0]["id"].clone();
    let z = b
        .get(&format!("/contacts/{}", z["id"].as_str().unwrap()))
        .await;
    assert_eq!(z.ok(200)["account_id"], b_notion);
    let sarah = s.contact_id("demo", "sarah.chen@notion.so").await;
    let r = a.get(&format!("/contacts/{sarah}")).await;
    assert_eq!(r.ok(200)["account_id"], notion.as_str());
    let r = a.get(&path).await;
    assert_eq!(r.ok(200)["name"], "Notion");
}
