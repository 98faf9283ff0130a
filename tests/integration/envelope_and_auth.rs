//! The envelope on every response (framework rejections included), operator endpoints, API key
//! authentication, plans, scopes and per-org rate limiting (DESIGN §§1, 4, 10).

use crate::common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{start, start_with, TestServer};
use pilot_bridge::domain::{Plan, Scope};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn operator_endpoints_need_no_key() {
    let s = start().await;
    let root = s.root_client();
    let r = root.get("/healthz").await;
    assert_eq!(r.ok(200)["status"], "ok");
    let r = root.get("/readyz").await;
    assert_eq!(r.ok(200)["status"], "ready");
    let r = root.get("/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));
    // With a bogus key they still answer: no auth runs there.
    let r = root
        .with_authorization(Some("Bearer op_live_nope"))
        .get("/healthz")
        .await;
    r.ok(200);
}

#[tokio::test]
async fn request_ids_are_unique_and_echoed() {
    let s = start().await;
    let c = s.org_client("acme").await;
    let mut seen = HashSet::new();
    for _ in 0..5 {
        let r = c.get("/contacts").await;
        r.page();
        let id = r.header("x-request-id").expect("x-request-id").to_string();
        assert!(seen.insert(id), "request ids repeat");
    }
    let r = s.root_client().get("/nope").await;
    r.err(404, "RESOURCE_NOT_FOUND");
    assert!(seen.insert(r.header("x-request-id").unwrap_or("").to_string()));
}

#[tokio::test]
async fn unknown_routes_are_404_envelopes() {
    let s = start().await;
    let c = s.org_client("acme").await;
    let r = s.root_client().get("/nope").await;
    assert!(r.err(404, "RESOURCE_NOT_FOUND")["details"]
        .as_str()
        .unwrap_or("")
        .contains("/nope"));
    c.get("/nope").await.err(404, "RESOURCE_NOT_FOUND");
    c.get("/contacts/").await.err(404, "RESOURCE_NOT_FOUND");
    s.anonymous()
        .get("/no/such/thing")
        .await
        .err(404, "RESOURCE_NOT_FOUND");
    c.get("/contacts/not-a-uuid")
        .await
        .err(404, "RESOURCE_NOT_FOUND");
}

#[tokio::test]
async fn wrong_methods_are_405_envelopes() {
    let s = start().await;
    let c = s.org_client("acme").await;
    for (m, p) in [
        (Method::PATCH, "/contacts"),
        (Method::DELETE, "/contacts"),
        (Method::POST, "/signals"),
        (Method::PUT, "/webhooks"),
        (Method::DELETE, "/campaigns"),
        (
            Method::GET,
            "/campaigns/00000000-0000-0000-0000-000000000000/trigger",
        ),
    ] {
        let r = c.send(m.clone(), p, None, None).await;
        r.err(405, "METHOD_NOT_ALLOWED");
    }
    let r = s
        .root_client()
        .send(Method::DELETE, "/healthz", None, None)
        .await;
    r.err(405, "METHOD_NOT_ALLOWED");
    // The rewritten 405 keeps the Allow header.
    let r = c.send(Method::PATCH, "/contacts", None, None).await;
    let allow = r.header("allow").unwrap_or("").to_ascii_uppercase();
    assert!(
        allow.contains("GET") && allow.contains("POST"),
        "Allow: {allow}"
    );
}

#[tokio::test]
async fn undecodable_paths_are_422_validation_errors() {
    let s = start().await;
    let c = s.org_client("acme").await;
    // A path segment that is not UTF-8 cannot be read; the framework's 400 becomes our 422.
    let r = c.get("/contacts/%FF").await;
    r.err(422, "VALIDATION_ERROR");
    assert!(r.details().contains("/api/v1/contacts/"), "{}", r.details());
    c.put("/companies/%C3%28", json!({"name": "x"}))
        .await
        .err(422, "VALIDATION_ERROR");
}

#[tokio::test]
async fn body_errors_use_the_envelope() {
    let s = start().await;
    let c = s.org_client("acme").await;

    // Malformed JSON, including trailing garbage after a valid value.
    for body in [
        &b"{"[..],
        b"{\"email\": }",
        b"",
        b"{\"email\":\"a@b.io\"} trailing",
        b"{\"email\":\"a@b.io\"}}",
    ] {
        let r = c
            .send(
                Method::POST,
                "/contacts",
                Some("application/json"),
                Some(body.to_vec()),
            )
            .await;
        r.err(422, "VALIDATION_ERROR");
        assert!(
            r.details().starts_with("body: malformed JSON"),
            "{}",
            r.details()
        );
    }
    // Nesting beyond the parser's limit and bytes that are not UTF-8 are malformed too.
    for body in ["[".repeat(50_000).into_bytes(), vec![b'"', 0xff, b'"']] {
        let r = c
            .send(
                Method::POST,
                "/contacts",
                Some("application/json"),
                Some(body),
            )
            .await;
        r.err(422, "VALIDATION_ERROR");
        assert!(
            r.details().starts_with("body: malformed JSON"),
            "{}",
            r.details()
        );
    }
    // Nothing slipped through.
    assert_eq!(c.get("/contacts").await.total(), 0);

    // A JSON value that is not an object.
    let r = c.post("/contacts", json!([1, 2])).await;
    r.err(422, "VALIDATION_ERROR");
    assert_eq!(r.details(), "body: expected a JSON object");

    // Wrong or missing content type.
    for ct in [
        Some("text/plain"),
        None,
        Some("application/x-www-form-urlencoded"),
    ] {
        let r = c
            .send(
                Method::POST,
                "/contacts",
                ct,
                Some(br#"{"email":"a@b.io"}"#.to_vec()),
            )
            .await;
        r.err(415, "UNSUPPORTED_MEDIA_TYPE");
    }
    // A charset parameter is fine.
    let r = c
        .send(
            Method::POST,
            "/contacts",
            Some("application/json; charset=utf-8"),
            Some(br#"{"email":"a@b.io"}"#.to_vec()),
        )
        .await;
    r.ok(201);
}

#[tokio::test]
async fn bodies_over_64_kib_are_413() {
    let s = start().await;
    let c = s.org_client("acme").await;
    let limit = 64 * 1024;
    let filler = "x".repeat(limit);
    let big = format!(r#"{{"email":"big@b.io","notes":"{filler}"}}"#);
    assert!(big.len() > limit);
    let r = c
        .send(
            Method::POST,
            "/contacts",
            Some("application/json"),
            Some(big.into_bytes()),
        )
        .await;
    r.err(413, "PAYLOAD_TOO_LARGE");
    // Also for a body that is not even JSON.
    let r = c
        .send(
            Method::POST,
            "/notes",
            Some("application/json"),
            Some(vec![b'{'; limit + 1]),
        )
        .await;
    r.err(413, "PAYLOAD_TOO_LARGE");
    // Just under the limit is accepted.
    let filler = "y".repeat(limit - 200);
    let ok = format!(r#"{{"email":"fits@b.io","notes":"{filler}"}}"#);
    assert!(ok.len() < limit);
    let r = c
        .send(
            Method::POST,
            "/contacts",
            Some("application/json"),
            Some(ok.into_bytes()),
        )
        .await;
    r.ok(201);
}

#[tokio::test]
async fn wrong_json_types_name_the_field() {
    let s = start().await;
    let c = s.org_client("acme").await;
    let cases = [
        (
            "/contacts",
            json!({"email": 42}),
            "email: expected a string",
        ),
        (
            "/contacts",
            json!({"email": "a@b.io", "upsert": "yes"}),
            "upsert: expected true or false",
        ),
        (
            "/contacts",
            json!({"contacts": {"email": "a@b.io"}}),
            "contacts: expected an array",
        ),
        (
            "/contacts",
            json!({"contacts": [{"email": "a@b.io"}, {"email": "c@d.io", "first_name": 7}]}),
            "contacts[1].first_name: expected a string",
        ),
        (
            "/contacts",
            json!({"email": "a@b.io", "custom_fields": [1]}),
            "custom_fields: expected an object",
        ),
        (
            "/companies",
            json!({"name": ["Acme"]}),
            "name: expected a string",
        ),
        (
            "/companies",
            json!({"name": "Acme", "size": {"n": 3}}),
            "size: expected a string or a number",
        ),
        (
            "/notes",
            json!({"contact_id": 5, "note": "x"}),
            "contact_id: expected a string",
        ),
        (
            "/webhooks",
            json!({"url": "https://h.example/x", "events": "email.opened"}),
            "events: expected an array of event names",
        ),
    ];
    for (path, body, details) in cases {
        let r = c.post(path, body).await;
        r.err(422, "VALIDATION_ERROR");
        assert_eq!(r.details(), details, "POST {path}");
    }
    let r = c.patch("/settings", json!({"pilot_mode": 3})).await;
    r.err(422, "VALIDATION_ERROR");
    assert_eq!(r.details(), "pilot_mode: expected a string");
}

#[tokio::test]
async fn missing_and_bad_keys_are_401() {
    let s = start().await;
    let good = s.org_client("acme").await;
    let anon = s.anonymous();
    anon.get("/contacts").await.err(401, "MISSING_AUTH");
    anon.post("/contacts", json!({"email": "a@b.io"}))
        .await
        .err(401, "MISSING_AUTH");
    for value in [
        "Bearer op_live_nope",
        "Bearer op_live_0000000000000000000000000000000000000000",
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "op_live_nope",
    ] {
        let r = good.with_authorization(Some(value)).get("/contacts").await;
        r.err(401, "INVALID_API_KEY");
    }
    // The scheme is case-insensitive and surrounding spaces do not matter.
    let raw = good
        .authorization
        .clone()
        .unwrap_or_default()
        .trim_start_matches("Bearer ")
        .to_string();
    for value in [format!("bearer {raw}"), format!("BEARER   {raw}  ")] {
        good.with_authorization(Some(&value))
            .get("/credits")
            .await
            .ok(200);
    }
    let long = format!("Bearer op_live_{}", "a".repeat(600));
    good.with_authorization(Some(&long))
        .get("/contacts")
        .await
        .err(401, "INVALID_API_KEY");
    // The good key still works after all that.
    good.get("/contacts").await.page();
}

#[tokio::test]
async fn revoked_keys_stop_working() {
    // A revoked key that was never cached fails at once; a cached one within the cache TTL.
    let s = start_with(|c| c.auth.key_cache_ttl_secs = 1).await;
    s.create_org("acme", Plan::Pro, Some(0)).await;
    let never_used = s.create_key("acme", Scope::ALL).await;
    s.revoke_key(&never_used).await;
    s.client(&never_used)
        .get("/contacts")
        .await
        .err(401, "INVALID_API_KEY");

    let used = s.create_key("acme", Scope::ALL).await;
    let c = s.client(&used);
    c.get("/contacts").await.page();
    s.revoke_key(&used).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = c.get("/contacts").await;
        if r.status == 401 {
            r.err(401, "INVALID_API_KEY");
            break;
        }
        r.page();
        assert!(
            Instant::now() < deadline,
            "revoked key still works after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn free_plan_is_403_plan_required() {
    let s = start().await;
    s.create_org("cheap", Plan::Free, Some(0)).await;
    let key = s.create_key("cheap", Scope::ALL).await;
    let c = s.client(&key);
    for p in ["/contacts", "/signals", "/credits", "/settings"] {
        c.get(p).await.err(403, "PLAN_REQUIRED");
    }
    s.create_org("big", Plan::Scale, Some(0)).await;
    let key = s.create_key("big", Scope::ALL).await;
    s.client(&key).get("/credits").await.ok(200);
}

/// Which scopes each endpoint accepts (the reference's table; DESIGN §10).
fn endpoint_scopes() -> Vec<(Method, &'static str, Vec<Scope>)> {
    use Scope::*;
    let id = "00000000-0000-7000-8000-000000000000";
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    vec![
        (Method::GET, "/contacts", vec![Contacts]),
        (Method::POST, "/contacts", vec![Contacts]),
        (Method::GET, leak(format!("/contacts/{id}")), vec![Contacts]),
        (Method::PUT, leak(format!("/contacts/{id}")), vec![Contacts]),
        (
            Method::DELETE,
            leak(format!("/contacts/{id}")),
            vec![Contacts],
        ),
        (Method::GET, "/companies", vec![Contacts]),
        (Method::POST, "/companies", vec![Contacts]),
        (
            Method::GET,
            leak(format!("/companies/{id}")),
            vec![Contacts],
        ),
        (
            Method::PUT,
            leak(format!("/companies/{id}")),
            vec![Contacts],
        ),
        (
            Method::DELETE,
            leak(format!("/companies/{id}")),
            vec![Contacts],
        ),
        (Method::GET, "/signals", vec![Contacts, Native]),
        (Method::GET, "/activity", vec![Contacts, Native]),
        (Method::GET, "/notes", vec![Contacts, Native]),
        (Method::POST, "/notes", vec![Contacts, Native]),
        (Method::GET, "/campaigns", vec![Campaigns]),
        (
            Method::GET,
            leak(format!("/campaigns/{id}")),
            vec![Campaigns],
        ),
        (
            Method::PATCH,
            leak(format!("/campaigns/{id}")),
            vec![Campaigns],
        ),
        (
            Method::POST,
            leak(format!("/campaigns/{id}/trigger")),
            vec![Campaigns],
        ),
        (
            Method::GET,
            leak(format!("/campaigns/{id}/status")),
            vec![Campaigns],
        ),
        (Method::GET, "/credits", vec![Credits]),
        (Method::GET, "/settings", vec![Settings]),
        (Method::PATCH, "/settings", vec![Settings]),
        (Method::GET, "/webhooks", vec![Campaigns]),
        (Method::POST, "/webhooks", vec![Campaigns]),
        (Method::DELETE, "/webhooks?id=x", vec![Campaigns]),
    ]
}

#[tokio::test]
async fn every_endpoint_checks_its_scope() {
    let s = start().await;
    s.create_org("acme", Plan::Pro, Some(0)).await;
    let mut keys = Vec::new();
    for scope in Scope::ALL {
        keys.push((*scope, s.create_key("acme", &[*scope]).await));
    }
    // Writes below send `{}`: a 422 or 404 shows the scope check passed, a 403 that it failed.
    for (method, path, allowed) in endpoint_scopes() {
        for (scope, key) in &keys {
            let body = (method != Method::GET && method != Method::DELETE).then(|| b"{}".to_vec());
            let ct = body.as_ref().map(|_| "application/json");
            let r = s.client(key).send(method.clone(), path, ct, body).await;
            if allowed.contains(scope) {
                assert_ne!(
                    r.status, 403,
                    "{method} {path} refused scope {scope}: {}",
                    r.text
                );
                assert!(r.status < 500, "{method} {path}: {}", r.text);
            } else {
                let e = r.err(403, "SCOPE_DENIED");
                let details = e["details"].as_str().unwrap_or("");
                for a in &allowed {
                    assert!(details.contains(a.as_str()), "{details}");
                }
            }
        }
    }
}

#[tokio::test]
async fn native_scope_reads_feeds_but_not_contacts() {
    let s = start().await;
    s.demo_client().await;
    let key = s.create_key("demo", &[Scope::Native]).await;
    let c = s.client(&key);
    c.get("/contacts").await.err(403, "SCOPE_DENIED");
    c.get("/companies").await.err(403, "SCOPE_DENIED");
    assert!(!c.get("/signals").await.page().is_empty());
    assert!(!c.get("/activity").await.page().is_empty());
    assert!(!c.get("/notes").await.page().is_empty());
}

async fn limited(s: &TestServer, org: &str, limit: u32) -> common::Client {
    s.create_org(org, Plan::Pro, Some(limit)).await;
    let key = s.create_key(org, Scope::ALL).await;
    s.client(&key)
}

#[tokio::test]
async fn rate_limit_headers_and_429() {
    let s = start().await;
    let c = limited(&s, "acme", 3).await;
    for expected_remaining in [2, 1, 0] {
        let r = c.get("/contacts").await;
        r.page();
        assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(
            r.header("x-ratelimit-remaining"),
            Some(expected_remaining.to_string().as_str())
        );
        let reset: u64 = r
            .header("x-ratelimit-reset")
            .and_then(|v| v.parse().ok())
            .expect("x-ratelimit-reset");
        assert!((1..=60).contains(&reset), "reset {reset}");
    }
    let r = c.get("/contacts").await;
    r.err(429, "RATE_LIMITED");
    assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    // Every endpoint shares the org's quota, writes included.
    c.post("/contacts", json!({"email": "a@b.io"}))
        .await
        .err(429, "RATE_LIMITED");
    assert_eq!(c.get("/contacts").await.status, 429);

    // Other orgs are not affected.
    let other = limited(&s, "other", 3).await;
    let r = other.get("/credits").await;
    r.ok(200);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("2"));
}

#[tokio::test]
async fn error_responses_of_known_callers_carry_rate_headers() {
    let s = start().await;
    let c = limited(&s, "acme", 10).await;
    let r = c
        .get("/contacts/00000000-0000-7000-8000-000000000000")
        .await;
    r.err(404, "RESOURCE_NOT_FOUND");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("9"));
    let r = c.post("/contacts", json!({})).await;
    r.err(422, "VALIDATION_ERROR");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("8"));
}

#[tokio::test]
async fn bad_keys_do_not_spend_the_quota() {
    let s = start().await;
    let c = limited(&s, "acme", 2).await;
    let revoked = s.create_key("acme", Scope::ALL).await;
    s.revoke_key(&revoked).await;
    for _ in 0..5 {
        c.with_authorization(None)
            .get("/contacts")
            .await
            .err(401, "MISSING_AUTH");
        c.with_authorization(Some("Bearer op_live_nope"))
            .get("/contacts")
            .await
            .err(401, "INVALID_API_KEY");
        s.client(&revoked)
            .get("/contacts")
            .await
            .err(401, "INVALID_API_KEY");
    }
    let r = c.get("/contacts").await;
    r.page();
    assert_eq!(r.header("x-ratelimit-remaining"), Some("1"));
    c.get("/contacts").await.page();
    c.get("/contacts").await.err(429, "RATE_LIMITED");
}

#[tokio::test]
async fn server_default_rate_limit_applies_to_orgs_without_their_own() {
    let s = start_with(|c| c.limits.default_rate_limit = 2).await;
    s.create_org("acme", Plan::Pro, None).await;
    let key = s.create_key("acme", Scope::ALL).await;
    let c = s.client(&key);
    let r = c.get("/credits").await;
    r.ok(200);
    assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
    c.get("/credits").await.ok(200);
    c.get("/credits").await.err(429, "RATE_LIMITED");
    // An org with limit 0 is unlimited even though the server default is 2.
    let free = s.org_client("unlimited").await;
    for _ in 0..5 {
        let r = free.get("/credits").await;
        r.ok(200);
        assert!(r.header("x-ratelimit-limit").is_none());
    }
}
