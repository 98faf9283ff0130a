//! `GET /openapi.json`: an OpenAPI 3.1 document with all 17 native actions and the Bearer
//! scheme, and no route without its spec entry.
//!
//! How "no route without a spec entry" is guaranteed, and checked here:
//! 1. By construction: `http::routes()` registers every route through utoipa-axum's `routes!`,
//!    which takes method and path from each handler's `#[utoipa::path]`, so the router and the
//!    document are built from the same declarations. The one way around that is to register a
//!    route directly (`.route(...)`, `.route_service(...)`, `.nest_service(...)`, or an axum
//!    `Router` built outside `routes()`), so [`routes_are_only_registered_through_the_spec`]
//!    scans `src/` and fails on any such call.
//! 2. Against the running server: [`every_documented_operation_is_routed`] sends each
//!    documented (method, path) to a live server and fails when it reaches the 404 fallback or
//!    a 405, i.e. when the document names something the router does not serve.
//!
//! A scan of `.route("...")` strings alone would miss routes built in other ways; a live probe
//! alone cannot discover routes it does not know about. Together with (1) they close the loop.

use crate::common;

use std::path::Path;

use pilot_bridge::native::action::ACTION_TYPES;
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test]
async fn serves_an_openapi_3_1_document() {
    let s = common::start().await;
    let r = s.root_client().get("/openapi.json").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r
        .header("content-type")
        .unwrap_or("")
        .starts_with("application/json"));
    assert!(r.header("x-request-id").is_some());
    let doc = &r.body;
    let version = doc["openapi"].as_str().expect("openapi field");
    assert!(version.starts_with("3.1"), "openapi {version}");

    // All 17 actions in the tagged union, each with its `type` constant.
    let schemas = &doc["components"]["schemas"];
    let union = &schemas["NativeAction"];
    assert_eq!(union["discriminator"]["propertyName"], "type");
    let mapping = union["discriminator"]["mapping"]
        .as_object()
        .expect("mapping");
    assert_eq!(union["oneOf"].as_array().map(Vec::len), Some(17));
    assert_eq!(ACTION_TYPES.len(), 17);
    for t in ACTION_TYPES {
        let r = mapping[*t]
            .as_str()
            .unwrap_or_else(|| panic!("{t} not mapped"));
        let name = r.trim_start_matches("#/components/schemas/");
        assert_eq!(schemas[name]["properties"]["type"]["const"], *t);
    }
    // Contact aliases are documented on the actions that take a contact.
    let lookup = &schemas["LookupPersonAction"]["properties"];
    for alias in ["contactRef", "personName", "contactId", "email"] {
        assert!(lookup.get(alias).is_some(), "lookup_person lacks {alias}");
    }
    let native = &doc["paths"]["/api/v1/native/outreachpilot"]["post"];
    assert!(native["requestBody"].is_object());
    // What a transcript turn adds to the reply's data.
    let data = &schemas["NativeReply"]["properties"]["data"]["properties"];
    assert!(data["parsed_action"].is_object());
    assert!(data["reason"]["description"]
        .as_str()
        .is_some_and(|d| d.contains("`unrecognized`")));

    // POST /chat: the message's bounds, the idempotency header, every status it answers.
    let chat = &doc["paths"]["/api/v1/chat"]["post"];
    let message = &schemas["ChatRequest"]["properties"]["message"];
    assert_eq!(message["minLength"], 1);
    assert_eq!(message["maxLength"], 4000);
    let params = chat["parameters"].as_array().expect("chat parameters");
    assert!(params
        .iter()
        .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"));
    for status in [
        "200", "402", "403", "404", "409", "413", "422", "502", "504",
    ] {
        assert!(
            chat["responses"].get(status).is_some(),
            "POST /chat lacks {status}"
        );
    }
    assert!(chat["responses"]["200"]["headers"]
        .get("Idempotent-Replayed")
        .is_some());
    assert!(chat["responses"]["409"]["headers"]
        .get("Retry-After")
        .is_some());
    let e422 = &schemas["Error422"];
    assert!(e422.to_string().contains("IDEMPOTENCY_KEY_REUSED"));

    // The Bearer scheme, applied to /api/v1 and not to the operator endpoints.
    let bearer = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(bearer["type"], "http");
    assert_eq!(bearer["scheme"], "bearer");
    assert_eq!(
        doc["paths"]["/api/v1/contacts"]["get"]["security"],
        json!([{ "bearer": [] }])
    );
    assert_eq!(doc["paths"]["/healthz"]["get"]["security"], json!([{}]));

    // Errors and headers that middleware adds are declared.
    let list = &doc["paths"]["/api/v1/contacts"]["get"]["responses"];
    for status in ["200", "401", "403", "422", "429", "500"] {
        assert!(list.get(status).is_some(), "GET /contacts lacks {status}");
        assert!(list[status]["headers"].get("X-Request-Id").is_some());
    }
    assert!(list["429"]["headers"].get("Retry-After").is_some());
    assert!(list["200"]["headers"].get("X-RateLimit-Limit").is_some());
    let post = &doc["paths"]["/api/v1/contacts"]["post"]["responses"];
    for status in ["201", "409", "413", "415", "422"] {
        assert!(post.get(status).is_some(), "POST /contacts lacks {status}");
    }
    assert!(native["responses"]["200"]["headers"]
        .get("Server-Timing")
        .is_some());
    assert_eq!(
        schemas["Error401"]["properties"]["error"]["properties"]["code"]["enum"],
        json!(["MISSING_AUTH", "INVALID_API_KEY"])
    );
}

/// Every (method, path) in the document, with path parameters filled in.
fn operations(doc: &Value) -> Vec<(Method, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            let Ok(m) = method.to_ascii_uppercase().parse::<Method>() else {
                continue;
            };
            let concrete = path.replace("{id}", "0196b3a5-3c9e-7c5e-9b1a-3f4e5d6c7b8a");
            assert!(!concrete.contains('{'), "unfilled parameter in {path}");
            out.push((m, concrete));
        }
    }
    out
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let s = common::start().await;
    let c = s.demo_client().await;
    let doc = s.root_client().get("/openapi.json").await.body;
    let ops = operations(&doc);
    assert!(ops.len() >= 30, "only {} operations documented", ops.len());
    // Documented paths include `/api/v1`, so send from the root with the demo key.
    let client = common::Client::new(s.root.clone(), c.authorization.clone());
    for (method, path) in ops {
        let r = client
            .send(
                method.clone(),
                &path,
                Some("application/json"),
                Some(b"{}".to_vec()),
            )
            .await;
        let unrouted =
            r.status == 405 || (r.status == 404 && r.body["error"]["message"] == "No such route");
        assert!(
            !unrouted,
            "{method} {path} is documented but not routed: {} {}",
            r.status, r.text
        );
    }
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn routes_are_only_registered_through_the_spec() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // Calls that add a route without a `#[utoipa::path]`, and ways of building a router that
    // `http::routes()` would not see.
    let forbidden = [
        ".route(",
        ".route_service(",
        ".nest_service(",
        "routing::get",
        "routing::post",
        "routing::put",
        "routing::patch",
        "routing::delete",
        "routing::any",
        "routing::on(",
        "MethodRouter",
        "Router::new()",
    ];
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read source");
        // Unit-test modules may stand up throwaway servers (a fake upstream); they serve no
        // route of ours.
        let served = text.split("#[cfg(test)]").next().unwrap_or("");
        for (n, line) in served.lines().enumerate() {
            // (utoipa-axum's `OpenApiRouter` is the allowed way.)
            let code = line
                .split("//")
                .next()
                .unwrap_or("")
                .replace("OpenApiRouter", "");
            if forbidden.iter().any(|f| code.contains(f)) {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "routes must be registered with utoipa-axum's routes!() in http::routes() so that \
         /openapi.json documents them:\n{}",
        found.join("\n")
    );
    // And the one place that builds the router does go through `routes()`.
    let http = std::fs::read_to_string(src.join("http/mod.rs")).expect("read http/mod.rs");
    let build = &http[http.find("pub fn build_router").expect("build_router")..];
    assert!(build.contains("= routes(") && build.contains(".split_for_parts()"));
}

/// `GET /docs`: an HTML reference built from the document, offline, where every error's
/// `docs_url` lands on its code.
#[tokio::test]
async fn docs_page_resolves_every_docs_url() {
    let s = common::start().await;
    let r = s.root_client().get("/docs").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let page = r.text.clone();
    assert!(!page.contains("<script"), "no scripts");
    assert!(!page.contains("src=\"http") && !page.contains("href=\"http"));
    // A real error's docs_url, followed to its anchor.
    let e = s.anonymous().get("/contacts").await;
    let url = e.body["error"]["docs_url"].as_str().expect("docs_url");
    let (path, fragment) = url.split_once('#').expect("fragment");
    assert_eq!(path, "/docs");
    assert!(
        page.contains(&format!("id=\"{fragment}\"")),
        "{url} has no anchor"
    );
    for code in [
        "validation_error",
        "rate_limited",
        "upstream_unavailable",
        "pending_action_expired",
    ] {
        assert!(page.contains(&format!("id=\"{code}\"")), "{code}");
    }
    // Every documented path appears on the page.
    let doc = s.root_client().get("/openapi.json").await.body.clone();
    for path in doc["paths"].as_object().expect("paths").keys() {
        let escaped = path.replace('&', "&amp;");
        assert!(page.contains(&escaped), "{path} missing from /docs");
    }
}
