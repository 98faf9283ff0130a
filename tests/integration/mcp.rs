//! `/mcp`: the Model Context Protocol endpoint, driven by the official Rust SDK's client
//! (`rmcp`, Streamable HTTP) against the real server on port 0, plus plain HTTP for what a
//! client SDK hides (the envelope of refusals, headers).
//!
//! Covers: the handshake at revisions 2025-06-18 and 2025-11-25 and `server/discover` at
//! 2026-07-28; the 18 tools with every annotation, and input schemas equal to the OpenAPI
//! document's action schemas; a read; ask and confirm exactly once, concurrent confirmations
//! included; tool failures as `isError` results; the `idempotencyKey` argument and the
//! keyless dedupe window; auth (401, 403 by scope) and `Origin`/`Host` checks (403) before any
//! MCP processing; and that another key cannot confirm someone's pending action.

use crate::common;
use crate::common::native as native_common;

use pilot_bridge::domain::{KeyPolicy, Plan, Scope};
use pilot_bridge::store::keys;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
    ProtocolVersion,
};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientLifecycleMode, ClientServiceExt, RoleClient, ServiceExt};
use serde_json::{json, Value};

use common::Resp;
use native_common::{demo, demo_with, Demo, KEY};

type Client = RunningService<RoleClient, ClientConfig>;

fn url(d: &Demo) -> String {
    format!("{}/mcp", d.s.root)
}

fn client_info(version: ProtocolVersion) -> ClientConfig {
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("pilot-bridge-tests", "1.0"),
    )
    .with_protocol_version(version)
}

/// The SDK's Streamable HTTP client transport (on its own reqwest), sending `key` as Bearer.
macro_rules! transport {
    ($url:expr, $key:expr) => {{
        let mut config = StreamableHttpClientTransportConfig::with_uri($url);
        if let Some(k) = $key {
            config = config.auth_header(k);
        }
        StreamableHttpClientTransport::from_config(config)
    }};
}

/// An SDK client that did the `initialize` handshake at `version`.
async fn connect_at(d: &Demo, key: &str, version: ProtocolVersion) -> Client {
    client_info(version)
        .serve(transport!(url(d), Some(key)))
        .await
        .expect("MCP client connects")
}

async fn connect(d: &Demo, key: &str) -> Client {
    connect_at(d, key, ProtocolVersion::V_2025_06_18).await
}

async fn call(c: &Client, name: &str, args: Value) -> CallToolResult {
    let Value::Object(args) = args else {
        panic!("arguments must be an object")
    };
    c.call_tool(CallToolRequestParams::new(name.to_string()).with_arguments(args))
        .await
        .expect("tools/call answers")
}

/// A successful result: not an error, the spoken sentence first, the reply as structured
/// content; returns the reply.
fn reply(r: &CallToolResult) -> Value {
    assert_eq!(r.is_error, Some(false), "{r:?}");
    let s = r.structured_content.clone().expect("structuredContent");
    let spoken = s["spoken_summary"].as_str().expect("spoken_summary");
    assert_eq!(r.content[0].as_text().expect("text block").text, spoken);
    // The same reply as JSON text, for clients that read only text.
    let text: Value = serde_json::from_str(&r.content[1].as_text().expect("json block").text)
        .expect("second block is JSON");
    assert_eq!(text, s);
    s
}

/// A failed call: `isError`, the spoken error first, `{"error": {...}}` with `code`.
fn failure(r: &CallToolResult, code: &str) -> Value {
    assert_eq!(r.is_error, Some(true), "{r:?}");
    let s = r.structured_content.clone().expect("structuredContent");
    let e = s["error"].clone();
    assert_eq!(e["code"], code, "{s}");
    let spoken = e["spoken_summary"].as_str().expect("spoken_summary");
    assert!(!spoken.is_empty() && spoken.chars().count() <= 200);
    assert_eq!(r.content[0].as_text().expect("text block").text, spoken);
    e
}

/// A raw JSON-RPC POST, as a client SDK would send it, with optional extra headers.
async fn post(d: &Demo, key: Option<&str>, headers: &[(&str, &str)], body: Value) -> Resp {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut req = http
        .post(url(d))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let r = req.json(&body).send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.expect("body");
    Resp {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

fn initialize(version: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": version, "capabilities": {},
        "clientInfo": {"name": "curl", "version": "1"}}})
}

#[tokio::test]
async fn lists_eighteen_tools_with_annotations_and_schemas() {
    let d = demo().await;
    let c = connect(&d, KEY).await;
    let info = c.peer_info().expect("server info");
    assert_eq!(info.protocol_version, ProtocolVersion::V_2025_06_18);
    assert_eq!(info.server_info.as_ref().unwrap().name, "pilot-bridge");
    assert!(info.capabilities.tools.is_some());
    let tools = c.list_all_tools().await.expect("tools/list");
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    let mut expected: Vec<&str> = pilot_bridge::native::action::ACTION_TYPES.to_vec();
    expected.push("confirm_pending_action");
    assert_eq!(names, expected);
    let tool = |n: &str| tools.iter().find(|t| t.name == n).unwrap();
    let hints = |n: &str| tool(n).annotations.clone().expect("annotations");
    for read in [
        "lookup_person",
        "lookup_company",
        "recent_signals",
        "campaign_stats",
        "reply_inbox",
    ] {
        assert_eq!(hints(read).read_only_hint, Some(true), "{read}");
    }
    for destructive in [
        "remove_from_campaign",
        "pause_campaign",
        "mark_status",
        "undo_last",
    ] {
        assert_eq!(
            hints(destructive).destructive_hint,
            Some(true),
            "{destructive}"
        );
    }
    for additive in ["add_to_campaign", "note_on_contact", "draft_message"] {
        assert_eq!(hints(additive).destructive_hint, Some(false), "{additive}");
    }
    assert_eq!(hints("pause_campaign").idempotent_hint, Some(true));
    assert_eq!(hints("send_message").idempotent_hint, Some(false));
    for t in &tools {
        let open = t.annotations.as_ref().unwrap().open_world_hint;
        assert_eq!(open, Some(t.name == "send_message"), "{}", t.name);
        let out = t.output_schema.as_ref().expect("outputSchema");
        assert_eq!(out["type"], "object", "{}", t.name);
        assert!(!t.to_string_lossy().contains("$ref"), "{}", t.name);
    }
    // Input schemas come from the action types: the reference groups and their rules.
    let add = &tool("add_to_campaign").input_schema;
    for field in [
        "contactRef",
        "personName",
        "campaignRef",
        "campaignId",
        "idempotencyKey",
    ] {
        assert!(add["properties"].get(field).is_some(), "{field}");
    }
    assert_eq!(add["additionalProperties"], false);
    let status = tool("mark_status").input_schema["properties"]["status"].to_string();
    assert!(status.contains("disqualified"), "{status}");
    // Every tool declares the `idempotencyKey` it accepts, reads included.
    for t in &tools {
        assert_eq!(
            t.input_schema["properties"]["idempotencyKey"]["type"], "string",
            "{}",
            t.name
        );
    }
    let confirm = &tool("confirm_pending_action").input_schema;
    assert_eq!(confirm["required"], json!(["pendingActionId", "confirmed"]));
    c.cancel().await.unwrap();
}

/// Every annotation of every tool, so that any one hint changing fails: (readOnlyHint,
/// destructiveHint, idempotentHint, openWorldHint). Reads state no destructive or idempotent
/// hint (the spec gives those meaning only when readOnlyHint is false).
#[tokio::test]
async fn every_annotation_of_every_tool() {
    let d = demo().await;
    let c = connect(&d, KEY).await;
    let tools = c.list_all_tools().await.expect("tools/list");
    let (t, f) = (Some(true), Some(false));
    let read = (t, None, None, f);
    let expected = [
        ("lookup_person", read),
        ("lookup_company", read),
        ("recent_signals", read),
        ("start_research", (f, f, f, f)),
        ("enrich_contact", (f, f, f, f)),
        ("add_to_campaign", (f, f, t, f)),
        ("remove_from_campaign", (f, t, t, f)),
        ("pause_campaign", (f, t, t, f)),
        ("resume_campaign", (f, f, t, f)),
        ("draft_message", (f, f, f, f)),
        ("send_message", (f, f, f, t)),
        ("campaign_stats", read),
        ("reply_inbox", read),
        ("book_meeting", (f, f, f, f)),
        ("mark_status", (f, t, t, f)),
        ("note_on_contact", (f, f, f, f)),
        ("undo_last", (f, t, f, f)),
        ("confirm_pending_action", (f, t, t, f)),
    ];
    assert_eq!(tools.len(), expected.len());
    for (name, hints) in expected {
        let tool = tools
            .iter()
            .find(|x| x.name == name)
            .unwrap_or_else(|| panic!("no tool {name}"));
        let a = tool.annotations.clone().expect("annotations");
        assert_eq!(
            (
                a.read_only_hint,
                a.destructive_hint,
                a.idempotent_hint,
                a.open_world_hint
            ),
            hints,
            "{name}"
        );
        assert_eq!(a.title.as_deref(), tool.title.as_deref(), "{name}");
    }
    c.cancel().await.unwrap();
}

/// `schema` with every `$ref` into `#/components/schemas/` replaced by its target, merged with
/// the keywords next to the `$ref` (OpenAPI 3.1 puts a property's `description` there).
fn inline_refs(schema: &Value, components: &Value) -> Value {
    match schema {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                let name = r.trim_start_matches("#/components/schemas/");
                let Some(Value::Object(target)) = components.get(name) else {
                    panic!("dangling {r}")
                };
                let mut merged = target.clone();
                merged.extend(
                    m.iter()
                        .filter(|(k, _)| *k != "$ref")
                        .map(|(k, v)| (k.clone(), v.clone())),
                );
                return inline_refs(&Value::Object(merged), components);
            }
            Value::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), inline_refs(v, components)))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(|v| inline_refs(v, components)).collect()),
        other => other.clone(),
    }
}

/// Each action tool's input schema, as served by `tools/list`, is the OpenAPI document's
/// `<Type>Action` schema, as served by `/openapi.json`, without `type` (the tool's name says
/// it), with references inlined and without the shared struct's title and description (the
/// tool has its own), plus the `idempotencyKey` argument that the native request carries next
/// to `action`.
#[tokio::test]
async fn tool_input_schemas_are_the_openapi_action_schemas_without_type() {
    let d = demo().await;
    let doc = d.s.root_client().get("/openapi.json").await.body;
    let components = &doc["components"]["schemas"];
    let c = connect(&d, KEY).await;
    let tools = c.list_all_tools().await.expect("tools/list");
    for ty in pilot_bridge::native::action::ACTION_TYPES {
        let pascal: String = ty
            .split('_')
            .map(|w| w[..1].to_ascii_uppercase() + &w[1..])
            .collect();
        let mut want = inline_refs(&components[format!("{pascal}Action")], components);
        assert_eq!(want["properties"]["type"]["const"], *ty, "{ty}");
        let obj = want.as_object_mut().expect("object schema");
        obj.remove("title");
        obj.remove("description");
        if let Some(props) = obj.get_mut("properties").and_then(Value::as_object_mut) {
            props.remove("type");
        }
        if let Some(required) = obj.get_mut("required").and_then(Value::as_array_mut) {
            required.retain(|r| r != "type");
            if required.is_empty() {
                obj.remove("required");
            }
        }
        let tool = tools.iter().find(|t| t.name == *ty).expect("tool");
        let mut got = Value::Object((*tool.input_schema).clone());
        let key = got["properties"]
            .as_object_mut()
            .and_then(|p| p.remove("idempotencyKey"));
        assert!(key.is_some(), "{ty} declares idempotencyKey");
        assert_eq!(got, want, "{ty}");
    }
    c.cancel().await.unwrap();
}

trait Lossy {
    fn to_string_lossy(&self) -> String;
}

impl Lossy for rmcp::model::Tool {
    fn to_string_lossy(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[tokio::test]
async fn serves_2025_11_25_and_discover_at_2026_07_28() {
    let d = demo().await;
    let c = connect_at(&d, KEY, ProtocolVersion::V_2025_11_25).await;
    assert_eq!(
        c.peer_info().unwrap().protocol_version,
        ProtocolVersion::V_2025_11_25
    );
    let r = reply(&call(&c, "lookup_person", json!({"personName": "Sarah Chen"})).await);
    assert_eq!(r["mode"], "result");
    c.cancel().await.unwrap();

    // 2026-07-28: no handshake; `server/discover`, then self-contained requests.
    let c = client_info(ProtocolVersion::V_2026_07_28)
        .serve_with_lifecycle(
            transport!(url(&d), Some(KEY)),
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("server/discover");
    let r = reply(&call(&c, "lookup_company", json!({"company": "notion.so"})).await);
    assert_eq!(r["mode"], "result");
    assert_eq!(c.list_all_tools().await.unwrap().len(), 18);
    c.cancel().await.unwrap();

    // Over plain HTTP, as in the README.
    let r = post(
        &d,
        Some(KEY),
        &[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "server/discover"),
        ],
        json!({"jsonrpc": "2.0", "id": 7, "method": "server/discover", "params": {"_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "curl", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {}}}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let versions = r.body["result"]["supportedVersions"].to_string();
    for v in ["2025-06-18", "2025-11-25", "2026-07-28"] {
        assert!(versions.contains(v), "{}", r.text);
    }
}

#[tokio::test]
async fn a_read_answers_with_the_native_reply() {
    let d = demo().await;
    let c = connect(&d, KEY).await;
    let r = reply(&call(&c, "lookup_person", json!({"personName": "Sarah Chen"})).await);
    assert_eq!(r["mode"], "result");
    assert_eq!(
        r["spoken_summary"],
        "Sarah Chen is VP of Engineering at Notion. Status is qualified."
    );
    assert_eq!(r["data"]["contact"]["email"], "sarah.chen@notion.so");
    assert!(r["ids"]["contact_id"].is_string());
    assert_eq!(r["performance"]["execution_mode"], "fast");
    // "Sarah" alone is ambiguous: a clarification with candidates, not an error.
    let r = reply(&call(&c, "lookup_person", json!({"personName": "Sarah"})).await);
    assert_eq!(r["mode"], "clarification_required");
    assert!(r["candidates"].as_array().unwrap().len() >= 2);
    c.cancel().await.unwrap();
}

async fn audience(c: &Client, campaign: &str) -> u64 {
    let r = reply(&call(c, "campaign_stats", json!({"campaignRef": campaign})).await);
    r["data"]["audience_stats"]["total"].as_u64().unwrap()
}

#[tokio::test]
async fn a_dangerous_tool_asks_and_a_confirmation_runs_it_exactly_once() {
    let d = demo().await;
    let c = connect(&d, KEY).await;
    let before = audience(&c, "Seed founders").await;
    let add = json!({"personName": "John Smith", "campaignRef": "Seed founders"});
    let asked = reply(&call(&c, "add_to_campaign", add.clone()).await);
    assert_eq!(asked["mode"], "confirmation_required", "{asked}");
    assert_eq!(asked["spoken_summary"], "Add John Smith to Seed founders?");
    assert!(asked["expires_at"].is_string());
    let pid = asked["pending_action_id"].as_str().unwrap().to_string();
    assert_eq!(
        audience(&c, "Seed founders").await,
        before,
        "asking changes nothing"
    );

    let yes = json!({"pendingActionId": pid, "confirmed": true});
    let done = reply(&call(&c, "confirm_pending_action", yes.clone()).await);
    assert_eq!(done["mode"], "result", "{done}");
    assert_eq!(
        done["idempotency_key"],
        format!("native:add_to_campaign:{pid}").as_str()
    );
    assert_eq!(audience(&c, "Seed founders").await, before + 1);

    // Confirming again, from a second client too, replays; nothing runs twice.
    let again = reply(&call(&c, "confirm_pending_action", yes.clone()).await);
    assert_eq!(again["mode"], "duplicate", "{again}");
    let other = connect_at(&d, KEY, ProtocolVersion::V_2025_11_25).await;
    let again = reply(&call(&other, "confirm_pending_action", yes).await);
    assert_eq!(again["mode"], "duplicate", "{again}");
    assert_eq!(audience(&c, "Seed founders").await, before + 1);

    // `confirmed: false` cancels an open one.
    let asked = reply(
        &call(
            &c,
            "pause_campaign",
            json!({"campaignRef": "Seed founders"}),
        )
        .await,
    );
    let pid = asked["pending_action_id"].as_str().unwrap();
    let no = reply(
        &call(
            &c,
            "confirm_pending_action",
            json!({"pendingActionId": pid, "confirmed": false}),
        )
        .await,
    );
    assert_eq!(no["mode"], "result", "{no}");
    let stats = reply(
        &call(
            &c,
            "campaign_stats",
            json!({"campaignRef": "Seed founders"}),
        )
        .await,
    );
    assert_eq!(stats["data"]["campaign"]["status"], "active");
    other.cancel().await.unwrap();
    c.cancel().await.unwrap();
}

/// Two clients, each with its own handshake, confirm the same pending action at the same time:
/// it runs once, and the other answer is the replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_double_confirmation_runs_once() {
    let d = demo().await;
    let john = d.contact_id("john@acme.com").await;
    let (a, b) = tokio::join!(
        connect(&d, KEY),
        connect_at(&d, KEY, ProtocolVersion::V_2025_11_25)
    );
    let asked = reply(
        &call(
            &a,
            "book_meeting",
            json!({"personName": "John Smith", "startTime": "2030-06-01T09:00:00Z"}),
        )
        .await,
    );
    assert_eq!(asked["mode"], "confirmation_required", "{asked}");
    let pid = asked["pending_action_id"].as_str().unwrap();
    let yes = json!({"pendingActionId": pid, "confirmed": true});
    let (ra, rb) = tokio::join!(
        call(&a, "confirm_pending_action", yes.clone()),
        call(&b, "confirm_pending_action", yes)
    );
    let mut modes = [reply(&ra), reply(&rb)].map(|r| {
        assert_eq!(
            r["idempotency_key"],
            format!("native:book_meeting:{pid}").as_str()
        );
        r["mode"].as_str().unwrap_or("").to_string()
    });
    modes.sort();
    assert_eq!(modes, ["duplicate", "result"]);
    let meetings = d
        .activity(&[("channel", "meeting"), ("contact_id", &john)])
        .await;
    assert_eq!(meetings.len(), 1, "exactly one meeting booked");
    assert_eq!(d.rows("meetings", None).await, 1);
    a.cancel().await.unwrap();
    b.cancel().await.unwrap();
}

#[tokio::test]
async fn failures_are_error_results_with_the_spoken_error() {
    let d = demo().await;
    let c = connect(&d, KEY).await;
    // Bad arguments: the field is named without the native request's `action.` prefix.
    let e = failure(
        &call(&c, "lookup_person", json!({"personNmae": "Sarah Chen"})).await,
        "VALIDATION_ERROR",
    );
    assert!(
        e["details"]
            .as_str()
            .unwrap()
            .starts_with("personNmae: unknown field; did you mean personName?"),
        "{e}"
    );
    let e = failure(
        &call(&c, "note_on_contact", json!({"personName": "Sarah Chen"})).await,
        "VALIDATION_ERROR",
    );
    assert_eq!(e["details"], "note: missing");
    let e = failure(
        &call(
            &c,
            "lookup_person",
            json!({"personName": "Sarah", "type": "undo_last"}),
        )
        .await,
        "VALIDATION_ERROR",
    );
    assert!(e["details"].as_str().unwrap().starts_with("type:"), "{e}");
    // Not found.
    failure(
        &call(
            &c,
            "lookup_person",
            json!({"personName": "Zebulon Quaxworth"}),
        )
        .await,
        "RESOURCE_NOT_FOUND",
    );
    // A paused campaign, refused before any question is asked.
    let e = failure(
        &call(
            &c,
            "add_to_campaign",
            json!({"personName": "John Smith", "campaignRef": "Q4 Enterprise"}),
        )
        .await,
        "CAMPAIGN_NOT_ACTIVE",
    );
    assert!(
        e["spoken_summary"]
            .as_str()
            .unwrap()
            .contains("Q4 Enterprise"),
        "{e}"
    );
    // The confirmation tool's own arguments.
    let e = failure(
        &call(&c, "confirm_pending_action", json!({"confirmed": true})).await,
        "VALIDATION_ERROR",
    );
    assert_eq!(e["details"], "pendingActionId: missing");
    failure(
        &call(
            &c,
            "confirm_pending_action",
            json!({"pendingActionId": "pa_doesnotexist", "confirmed": true}),
        )
        .await,
        "RESOURCE_NOT_FOUND",
    );
    let e = failure(
        &call(
            &c,
            "confirm_pending_action",
            json!({"pendingActionId": "pa_x", "confirmed": true, "action": {}}),
        )
        .await,
        "VALIDATION_ERROR",
    );
    assert!(e["details"]
        .as_str()
        .unwrap()
        .starts_with("action: unknown argument"));
    // An unknown tool is a protocol error, not a tool result.
    let unknown = c
        .call_tool(CallToolRequestParams::new("drop_database"))
        .await;
    assert!(unknown.is_err(), "{unknown:?}");
    c.cancel().await.unwrap();
}

#[tokio::test]
async fn idempotency_key_argument_and_the_keyless_dedupe_window() {
    let d = demo().await;
    let c = connect(&d, KEY).await;
    let keyed = json!({"personName": "Sarah Chen", "note": "Prefers mornings", "idempotencyKey": "mcp-turn-1"});
    let first = reply(&call(&c, "note_on_contact", keyed.clone()).await);
    assert_eq!(first["mode"], "result", "{first}");
    assert_eq!(first["idempotency_key"], "mcp-turn-1");
    let second = reply(&call(&c, "note_on_contact", keyed).await);
    assert_eq!(second["mode"], "duplicate", "{second}");
    assert_eq!(second["ids"], first["ids"]);
    // The same key for something else is refused.
    failure(
        &call(
            &c,
            "note_on_contact",
            json!({"personName": "Sarah Chen", "note": "Other", "idempotencyKey": "mcp-turn-1"}),
        )
        .await,
        "IDEMPOTENCY_KEY_REUSED",
    );
    // Without a key, an identical retry within the window is answered once.
    let keyless = json!({"personName": "John Smith", "note": "Call back Friday"});
    let first = reply(&call(&c, "note_on_contact", keyless.clone()).await);
    assert_eq!(first["mode"], "result");
    let retry = reply(&call(&c, "note_on_contact", keyless).await);
    assert_eq!(retry["mode"], "duplicate", "{retry}");
    // A malformed key is a validation error naming it.
    let e = failure(
        &call(
            &c,
            "note_on_contact",
            json!({"personName": "John Smith", "note": "x", "idempotencyKey": "has space"}),
        )
        .await,
        "VALIDATION_ERROR",
    );
    assert!(e["details"].as_str().unwrap().starts_with("idempotencyKey"));
    // A read takes the key as the native endpoint does: validated, echoed, never replayed.
    let read = json!({"personName": "Sarah Chen", "idempotencyKey": "mcp-read-1"});
    for _ in 0..2 {
        let r = reply(&call(&c, "lookup_person", read.clone()).await);
        assert_eq!(r["mode"], "result", "{r}");
        assert_eq!(r["idempotency_key"], "mcp-read-1");
    }
    let e = failure(
        &call(
            &c,
            "lookup_person",
            json!({"personName": "Sarah Chen", "idempotencyKey": "has space"}),
        )
        .await,
        "VALIDATION_ERROR",
    );
    assert!(e["details"].as_str().unwrap().starts_with("idempotencyKey"));
    c.cancel().await.unwrap();
}

/// A key of the demo org with the `two_step` policy (DESIGN §21).
async fn two_step_key(d: &Demo) -> String {
    let raw = d.s.create_key("demo", Scope::ALL).await;
    let r = raw.clone();
    d.s.store()
        .write(move |tx| {
            let (_, rec) = keys::find_by_hash(tx, &keys::hash_key(&r))?.expect("key row");
            keys::set_policy(tx, &rec.key_id, KeyPolicy::TwoStep)
        })
        .await
        .expect("set policy");
    raw
}

#[tokio::test]
async fn a_two_step_key_runs_a_dangerous_tool_only_through_confirm_pending_action() {
    let d = demo().await;
    let key = two_step_key(&d).await;
    let c = connect(&d, &key).await;
    let before = audience(&c, "Seed founders").await;
    let add = json!({"personName": "John Smith", "campaignRef": "Seed founders"});

    // A model confirming on its own: neither `confirmed` nor a pending id is an argument of an
    // action tool. Refused with a pointer to the confirmation tool; nothing is asked or run.
    for (arg, value) in [("confirmed", json!(true)), ("pendingActionId", json!("p"))] {
        let mut forced = add.clone();
        forced[arg] = value;
        let e = failure(
            &call(&c, "add_to_campaign", forced).await,
            "VALIDATION_ERROR",
        );
        let details = e["details"].as_str().unwrap();
        assert!(
            details.starts_with(&format!("{arg}: not an argument"))
                && details.contains("confirm_pending_action"),
            "{details}"
        );
    }
    assert_eq!(audience(&c, "Seed founders").await, before);

    // The tool asks, naming the policy; a retry replays the same question; nothing runs.
    let asked = reply(&call(&c, "add_to_campaign", add.clone()).await);
    assert_eq!(asked["mode"], "confirmation_required", "{asked}");
    assert_eq!(asked["data"]["confirmation_policy"], "two_step", "{asked}");
    let pid = asked["pending_action_id"].as_str().unwrap();
    let again = reply(&call(&c, "add_to_campaign", add).await);
    assert_eq!(again["mode"], "duplicate", "{again}");
    assert_eq!(again["pending_action_id"], pid, "{again}");
    assert_eq!(audience(&c, "Seed founders").await, before);

    // Only confirm_pending_action, with the pending id, runs it — once.
    let yes = json!({"pendingActionId": pid, "confirmed": true});
    let done = reply(&call(&c, "confirm_pending_action", yes.clone()).await);
    assert_eq!(done["mode"], "result", "{done}");
    assert_eq!(audience(&c, "Seed founders").await, before + 1);
    let replayed = reply(&call(&c, "confirm_pending_action", yes).await);
    assert_eq!(replayed["mode"], "duplicate", "{replayed}");
    assert_eq!(audience(&c, "Seed founders").await, before + 1);
    c.cancel().await.unwrap();
}

#[tokio::test]
async fn another_keys_pending_action_cannot_be_confirmed() {
    let d = demo().await;
    let other_key = d.s.create_key("demo", &[Scope::Native]).await;
    let mine = connect(&d, KEY).await;
    let theirs = connect(&d, &other_key).await;
    let asked = reply(
        &call(
            &mine,
            "add_to_campaign",
            json!({"personName": "John Smith", "campaignRef": "Seed founders"}),
        )
        .await,
    );
    let pid = asked["pending_action_id"].as_str().unwrap();
    let yes = json!({"pendingActionId": pid, "confirmed": true});
    failure(
        &call(&theirs, "confirm_pending_action", yes.clone()).await,
        "RESOURCE_NOT_FOUND",
    );
    failure(
        &call(
            &theirs,
            "confirm_pending_action",
            json!({"pendingActionId": pid, "confirmed": false}),
        )
        .await,
        "RESOURCE_NOT_FOUND",
    );
    // Still open for its owner.
    let done = reply(&call(&mine, "confirm_pending_action", yes).await);
    assert_eq!(done["mode"], "result", "{done}");
    mine.cancel().await.unwrap();
    theirs.cancel().await.unwrap();
}

#[tokio::test]
async fn credentials_are_checked_before_any_mcp_processing() {
    let d = demo().await;
    // The SDK client cannot even initialize without a key.
    let refused = client_info(ProtocolVersion::V_2025_06_18)
        .serve(transport!(url(&d), None::<&str>))
        .await;
    assert!(refused.is_err());

    let body = initialize("2025-06-18");
    let r = post(&d, None, &[], body.clone()).await;
    r.err(401, "MISSING_AUTH");
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    let r = post(
        &d,
        Some("op_live_notakey000000000000000000000000000"),
        &[],
        body.clone(),
    )
    .await;
    r.err(401, "INVALID_API_KEY");
    // Scope `native` or `chat`: other scopes are refused, even for a valid JSON-RPC message.
    let contacts_only =
        d.s.create_key("demo", &[Scope::Contacts, Scope::Campaigns])
            .await;
    let r = post(&d, Some(&contacts_only), &[], body.clone()).await;
    let e = r.err(403, "SCOPE_DENIED");
    assert!(e["details"].as_str().unwrap().contains("native"), "{e}");
    let chat_only = d.s.create_key("demo", &[Scope::Chat]).await;
    let r = post(&d, Some(&chat_only), &[], body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["result"]["protocolVersion"], "2025-06-18");
    // A free org has no API access.
    d.s.create_org("freeorg", Plan::Free, Some(0)).await;
    let free = d.s.create_key("freeorg", &[Scope::Native]).await;
    post(&d, Some(&free), &[], body)
        .await
        .err(403, "PLAN_REQUIRED");
}

#[tokio::test]
async fn the_org_rate_limit_counts_mcp_requests() {
    let d = demo_with(|_| {}, Some(2)).await;
    let body = initialize("2025-06-18");
    for remaining in ["1", "0"] {
        let r = post(&d, Some(KEY), &[], body.clone()).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.header("x-ratelimit-remaining"), Some(remaining));
    }
    let r = post(&d, Some(KEY), &[], body).await;
    r.err(429, "RATE_LIMITED");
    assert!(r.header("retry-after").is_some());
}

#[tokio::test]
async fn browser_origins_and_hosts_are_checked() {
    let d = demo().await;
    let own = format!("http://{}", d.s.server.addr);
    let body = initialize("2025-11-25");
    // Another site's page: refused before auth is even looked at.
    for key in [Some(KEY), None] {
        let r = post(
            &d,
            key,
            &[("origin", "http://evil.example.com")],
            body.clone(),
        )
        .await;
        let e = r.err(403, "ORIGIN_NOT_ALLOWED");
        assert!(e["details"].as_str().unwrap().starts_with("Origin:"), "{e}");
    }
    // DNS rebinding: the attacker's name in Host (and Origin).
    let r = post(
        &d,
        Some(KEY),
        &[
            ("host", "evil.example.com"),
            ("origin", "http://evil.example.com"),
        ],
        body.clone(),
    )
    .await;
    let e = r.err(403, "ORIGIN_NOT_ALLOWED");
    assert!(e["details"].as_str().unwrap().starts_with("Host:"), "{e}");
    // The server's own origin, and no Origin at all (non-browser clients), are served.
    let r = post(&d, Some(KEY), &[("origin", own.as_str())], body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = post(&d, Some(KEY), &[], body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Configured: a public host name and a web app's origin.
    let d = demo_with(
        |c| {
            c.mcp.allowed_hosts = vec!["mcp.example.com".into(), "127.0.0.1".into()];
            c.mcp.allowed_origins = vec!["https://app.example.com".into()];
        },
        Some(0),
    )
    .await;
    let r = post(
        &d,
        Some(KEY),
        &[
            ("host", "mcp.example.com"),
            ("origin", "https://app.example.com"),
        ],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = post(
        &d,
        Some(KEY),
        &[("origin", "https://other.example.com")],
        body.clone(),
    )
    .await;
    r.err(403, "ORIGIN_NOT_ALLOWED");
    let r = post(&d, Some(KEY), &[("host", "localhost")], body).await;
    r.err(403, "ORIGIN_NOT_ALLOWED");
}

#[tokio::test]
async fn transport_refusals_use_the_envelope() {
    let d = demo().await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    // No server-to-client stream on a stateless server.
    let r = http
        .get(url(&d))
        .header("authorization", format!("Bearer {KEY}"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "METHOD_NOT_ALLOWED");
    // `Accept` must allow JSON and SSE (Streamable HTTP).
    let r = http
        .post(url(&d))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .header("accept", "text/html")
        .body(initialize("2025-06-18").to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 406, "{body}");
    assert!(ct.starts_with("application/json"));
    assert_eq!(body["ok"], false);
    assert_eq!(body["error"]["code"], "VALIDATION_ERROR");
    // A body that is not a JSON-RPC message: 422 naming the body, as malformed JSON is
    // everywhere else.
    let r = post(&d, Some(KEY), &[], json!({"hello": "world"})).await;
    let e = r.err(422, "VALIDATION_ERROR");
    assert!(
        e["details"]
            .as_str()
            .unwrap()
            .starts_with("body: not a JSON-RPC 2.0 message"),
        "{e}"
    );
    // A body that is not JSON at all.
    let r = http
        .post(url(&d))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "VALIDATION_ERROR");
    // Another content type.
    let r = http
        .post(url(&d))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "text/plain")
        .header("accept", "application/json, text/event-stream")
        .body(initialize("2025-06-18").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "UNSUPPORTED_MEDIA_TYPE");
    // An unknown method is the protocol's own error, as JSON-RPC.
    let r = post(
        &d,
        Some(KEY),
        &[("mcp-protocol-version", "2025-06-18")],
        json!({"jsonrpc": "2.0", "id": 3, "method": "no/such"}),
    )
    .await;
    assert_eq!(r.body["error"]["code"], -32601, "{}", r.text);
}

#[tokio::test]
async fn openapi_lists_mcp() {
    let d = demo().await;
    let doc = d.s.root_client().get("/openapi.json").await.body;
    let op = &doc["paths"]["/mcp"]["post"];
    assert_eq!(op["operationId"], "mcp", "{op}");
    assert_eq!(op["security"], json!([{"bearer": []}]));
    for status in ["200", "401", "403", "429"] {
        assert!(op["responses"].get(status).is_some(), "{status}");
    }
}

#[tokio::test]
async fn oversized_bodies_are_refused_in_the_envelope() {
    let d = demo().await;
    let big = "x".repeat(70 * 1024);
    let r = post(
        &d,
        Some(KEY),
        &[("mcp-protocol-version", "2025-06-18")],
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "note_on_contact", "arguments": {"personName": "Sarah Chen", "note": big}}}),
    )
    .await;
    r.err(413, "PAYLOAD_TOO_LARGE");
}

#[tokio::test]
async fn tool_calls_are_native_turns_over_the_mcp_transport() {
    let d = demo().await;
    let c = connect(&d, KEY).await;
    reply(&call(&c, "lookup_person", json!({"personName": "Sarah Chen"})).await);
    c.cancel().await.unwrap();
    let text = d.s.root_client().get("/metrics").await.text;
    let counted = text.lines().any(|l| {
        l.starts_with("pilot_bridge_native_requests_total{")
            && l.contains("action=\"lookup_person\"")
            && l.contains("transport=\"mcp\"")
    });
    assert!(counted, "no MCP turn in /metrics");
}

#[tokio::test]
async fn upstream_mode_serves_the_same_tools() {
    let upstream = demo().await;
    let base_url = upstream.s.root.clone();
    let s = common::start_with(move |c| {
        c.backend = pilot_bridge::config::BackendKind::Upstream;
        c.upstream.base_url = base_url;
    })
    .await;
    let gateway = Demo {
        c: s.client(KEY),
        s,
    };
    let c = connect(&gateway, KEY).await;
    let r = reply(&call(&c, "lookup_person", json!({"personName": "Sarah Chen"})).await);
    assert_eq!(r["data"]["contact"]["email"], "sarah.chen@notion.so", "{r}");
    let asked = reply(
        &call(
            &c,
            "add_to_campaign",
            json!({"personName": "John Smith", "campaignRef": "Seed founders"}),
        )
        .await,
    );
    let pid = asked["pending_action_id"]
        .as_str()
        .expect("asked")
        .to_string();
    let yes = json!({"pendingActionId": pid, "confirmed": true});
    let done = reply(&call(&c, "confirm_pending_action", yes.clone()).await);
    assert_eq!(done["mode"], "result", "{done}");
    let again = reply(&call(&c, "confirm_pending_action", yes).await);
    assert_eq!(again["mode"], "duplicate", "{again}");
    failure(
        &call(
            &c,
            "lookup_person",
            json!({"personName": "Zebulon Quaxworth"}),
        )
        .await,
        "RESOURCE_NOT_FOUND",
    );
    c.cancel().await.unwrap();
}

#[tokio::test]
async fn an_expired_confirmation_is_an_error_result() {
    let d = demo_with(|c| c.native.pending_ttl_secs = 1, Some(0)).await;
    let c = connect(&d, KEY).await;
    let asked = reply(
        &call(
            &c,
            "pause_campaign",
            json!({"campaignRef": "Seed founders"}),
        )
        .await,
    );
    let pid = asked["pending_action_id"].as_str().unwrap().to_string();
    // Past the one-second lifetime of the pending action.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let e = failure(
        &call(
            &c,
            "confirm_pending_action",
            json!({"pendingActionId": pid, "confirmed": true}),
        )
        .await,
        "PENDING_ACTION_EXPIRED",
    );
    assert!(!e["spoken_summary"].as_str().unwrap().is_empty());
    let stats = reply(
        &call(
            &c,
            "campaign_stats",
            json!({"campaignRef": "Seed founders"}),
        )
        .await,
    );
    assert_eq!(stats["data"]["campaign"]["status"], "active");
    c.cancel().await.unwrap();
}
