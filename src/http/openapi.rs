//! `GET /openapi.json`: the OpenAPI 3.1 document of the whole service, generated from the code.
//!
//! Where each part comes from:
//! - paths and operations: the `#[utoipa::path]` on every handler, collected by
//!   [`super::routes`] — the same call that registers the routes, so a route without its entry
//!   cannot exist;
//! - schemas: derives on the real types (`domain`, `native::action`, `native::reply`, the REST
//!   answer types) and on the mirrors in [`super::schemas`];
//! - what is the same for many operations is added here, from the same facts the middleware
//!   uses: the error envelope of every status (codes from [`ErrorCode::ALL`]), the statuses that
//!   middleware can answer (auth, rate limit, body limit, content type, malformed JSON, panics),
//!   the response headers, and the Bearer scheme;
//! - the rules a derive cannot state ("one of `contactRef`, `personName`, `contactId` or
//!   `email`", "`action` or `pendingActionId`") are composed here from the derived parts, and
//!   follow `native::action::validate` and the REST handlers' field checks.

use std::sync::LazyLock;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use utoipa::OpenApi;

use crate::error::ErrorCode;
use crate::http::schemas;
use crate::native::action;
use crate::native::schema::{non_blank_pattern, WHITESPACE as WS};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "pilot-bridge",
        description = "Low-latency gateway for an OutreachPilot-compatible sales CRM: the Native \
            Voice Bridge (`POST /api/v1/native/outreachpilot` and its WebSocket twin) and REST v1. \
            Every JSON response uses the envelope `{ ok, data | error, meta }`; errors carry a \
            stable `code`, a `details` string and a `spoken_summary`."
    ),
    components(schemas(
        action::LookupPerson,
        action::LookupCompany,
        action::RecentSignals,
        action::StartResearch,
        action::ContactOnly,
        action::ContactCampaign,
        action::CampaignOnly,
        action::DraftMessage,
        action::SendMessage,
        action::ReplyInbox,
        action::BookMeeting,
        action::MarkStatus,
        action::NoteOnContact,
        action::UndoLast,
        schemas::Meta,
        schemas::ContactInput,
        crate::domain::ContactStatus,
        crate::domain::CampaignStatus,
        crate::http::rest::activity::Direction,
        schemas::CompanyInput,
    )),
    tags(
        (name = "native", description = "Native Voice Bridge: one endpoint, 17 typed actions"),
        (name = "contacts", description = "Contacts"),
        (name = "companies", description = "Companies (accounts)"),
        (name = "campaigns", description = "Campaigns and their audiences"),
        (name = "feeds", description = "Signals, activity and notes"),
        (name = "account", description = "Credits and settings"),
        (name = "chat", description = "AI chat with the 17 actions as tools"),
        (name = "webhooks", description = "Webhook subscriptions"),
        (name = "mcp", description = "Model Context Protocol (Streamable HTTP): the native actions as tools"),
        (name = "operations", description = "Health, readiness, metrics and this document; no API key"),
    )
)]
struct ApiDoc;

/// The document as JSON.
pub fn document() -> Value {
    let mut doc = ApiDoc::openapi();
    doc.merge(super::routes(|rest| rest).into_openapi());
    let mut v = serde_json::to_value(&doc).expect("the OpenAPI document serialises");
    finish(&mut v);
    v
}

static DOCUMENT: LazyLock<Vec<u8>> =
    LazyLock::new(|| serde_json::to_vec(&document()).expect("the OpenAPI document serialises"));

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", operation_id = "openapi",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
pub async fn serve() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_slice(),
    )
        .into_response()
}

// ---- finishing ------------------------------------------------------------------------------

const BEARER: &str = "bearer";

fn finish(doc: &mut Value) {
    fix_patterns(doc);
    let schemas = &mut doc["components"]["schemas"];
    error_schemas(schemas);
    crate::native::schema::add_action_schemas(schemas);
    request_schemas(schemas);
    native_reply_data(schemas);
    doc["components"]["securitySchemes"] = json!({
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "op_live_<random>",
            "description": "An API key: `Authorization: Bearer op_live_...`. Keys are created with \
                `pilot-bridge keys create`; `serve --demo` prints one."
        }
    });
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, op) in item.iter_mut() {
                if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                    finish_operation(path, op);
                }
            }
        }
    }
}

/// Codes answered with `status`.
fn codes_for(status: u16) -> Vec<&'static str> {
    let mut codes: Vec<&'static str> = ErrorCode::ALL
        .iter()
        .filter(|c| c.status() == status)
        .map(|c| c.as_str())
        .collect();
    // The safety net turns any non-envelope 5xx into INTERNAL_ERROR, keeping its status.
    if status >= 500 && !codes.contains(&"INTERNAL_ERROR") {
        codes.push("INTERNAL_ERROR");
    }
    codes.dedup();
    codes
}

fn error_schema_name(status: u16) -> String {
    format!("Error{status}")
}

/// `Error<status>`: the error envelope with the codes of that status.
fn error_schemas(schemas: &mut Value) {
    let mut statuses: Vec<u16> = ErrorCode::ALL.iter().map(|c| c.status()).collect();
    statuses.sort_unstable();
    statuses.dedup();
    for status in statuses {
        schemas[error_schema_name(status)] = json!({
            "type": "object",
            "description": format!("The error envelope of an HTTP {status}."),
            "required": ["ok", "error", "meta"],
            "properties": {
                "ok": { "const": false },
                "error": {
                    "type": "object",
                    "required": ["code", "message", "details", "docs_url", "spoken_summary"],
                    "properties": {
                        "code": { "type": "string", "enum": codes_for(status) },
                        "message": { "type": "string" },
                        "details": {
                            "type": "string",
                            "description": "More about the cause, e.g. the field path and the \
                                problem for validation errors (`action.campaignRef: missing`); \
                                empty when there is nothing to add."
                        },
                        "docs_url": { "type": "string" },
                        "spoken_summary": {
                            "type": "string",
                            "description": "A sentence a voice client can speak."
                        }
                    }
                },
                "meta": { "$ref": "#/components/schemas/Meta" }
            }
        });
    }
}

/// Request bodies with "this shape or that" rules (see `schemas::composed!`).
/// What a derive cannot say about the native reply's `data`: its fields depend on the action,
/// and a transcript turn (DESIGN §19) adds what was understood.
fn native_reply_data(schemas: &mut Value) {
    let description = schemas["NativeReply"]["properties"]["data"]["description"]
        .as_str()
        .unwrap_or("Structured result; its fields depend on the action.")
        .to_string();
    schemas["NativeReply"]["properties"]["data"] = json!({
        "type": "object",
        "description": description,
        "additionalProperties": true,
        "properties": {
            "parsed_action": {
                "type": "object",
                "required": ["type"],
                "properties": { "type": { "type": "string" } },
                "additionalProperties": true,
                "description": "Only on a transcript-only turn that was understood as an action:                     the action as a client would have sent it (`type` and its fields), names as                     spoken, before resolution."
            },
            "reason": {
                "type": "string",
                "description": "Why nothing (or not everything) happened. On a transcript-only                     turn: `unrecognized` (mode `clarification_required`, nothing understood; the                     spoken summary says what one can say), `incomplete` (understood, a detail                     missing; see `field`), `nothing_pending` (a yes or no with nothing open).                     Actions add their own, e.g. `already_in_campaign`, `pilot_off`."
            },
            "field": {
                "type": "string",
                "description": "With `reason: incomplete`: the missing field, e.g. `action.startTime`."
            }
        }
    });
}

fn request_schemas(schemas: &mut Value) {
    let pending_given = json!({
        "required": ["pendingActionId"],
        "properties": { "pendingActionId": { "type": "string", "pattern": non_blank_pattern() } }
    });
    let transcript_given = json!({
        "required": ["transcript"],
        "properties": { "transcript": { "type": "string", "pattern": non_blank_pattern() } }
    });
    schemas["NativeRequestBody"] = json!({
        "type": "object",
        "description": "The native request (DESIGN §3). Send an `action`; to answer a \
            `confirmation_required` reply send `pendingActionId` and `confirmed` (true executes, \
            false cancels). Or send only a `transcript` (DESIGN §19): the built-in intent parser \
            reads it into an action (the reply's `data.parsed_action`) or, for \"yes\"/\"no\", \
            into the answer to `pendingActionId` or to the key's newest open pending action.",
        "properties": {
            "action": { "anyOf": [{ "$ref": "#/components/schemas/NativeAction" }, { "type": "null" }] },
            "transcript": {
                "type": ["string", "null"], "maxLength": 10000,
                "description": "What the user said; stored in the audit record. Alone (no \
                    `action`, no `confirmed`), it is parsed for the action or the yes/no."
            },
            "idempotencyKey": {
                "type": ["string", "null"], "pattern": "^[!-~]{1,255}$",
                "description": "1-255 visible ASCII characters. A retry with the same key replays \
                    the first reply (`mode: duplicate`); the same key with another request is a 422."
            },
            "executionMode": {
                "enum": ["fast", "standard", null],
                "description": "`fast` (default) skips the audit record of reads; `standard` audits every action."
            },
            "auditReadActions": {
                "type": ["boolean", "null"],
                "description": "Audit reads even in fast mode (default false)."
            },
            "pendingActionId": {
                "type": ["string", "null"], "maxLength": 128,
                "description": "The `pending_action_id` of a `confirmation_required` reply."
            },
            "confirmed": {
                "type": ["boolean", "null"],
                "description": "With `pendingActionId`: true executes, false cancels. With an \
                    `action` alone: true runs a dangerous action in one step."
            }
        },
        "anyOf": [
            { "required": ["action"], "properties": { "action": { "$ref": "#/components/schemas/NativeAction" } } },
            pending_given.clone(),
            transcript_given.clone()
        ],
        "if": pending_given,
        "then": { "anyOf": [
            { "required": ["confirmed"], "properties": { "confirmed": { "type": "boolean" } } },
            transcript_given
        ] }
    });

    let contact_input = json!({ "$ref": "#/components/schemas/ContactInput" });
    let email_given = json!({
        "required": ["email"],
        "properties": { "email": { "type": "string", "pattern": email_pattern() } }
    });
    schemas["ContactsCreate"] = json!({
        "description": "One contact (`email` required), or `{ contacts: [...] }` (1 to 500, each \
            with `email`). `upsert: true` updates contacts whose email exists instead of failing.",
        "type": "object",
        "properties": { "upsert": { "type": ["boolean", "null"] } },
        "if": { "required": ["contacts"] },
        "then": {
            "properties": {
                "contacts": {
                    "type": "array", "minItems": 1, "maxItems": 500,
                    "items": { "allOf": [contact_input.clone(), email_given.clone()] }
                }
            }
        },
        "else": { "allOf": [contact_input.clone(), email_given.clone()] }
    });
    let company_input = json!({ "$ref": "#/components/schemas/CompanyInput" });
    let company_named = json!({
        "anyOf": [
            { "required": ["name"], "properties": { "name": { "type": "string", "pattern": non_blank_pattern() } } },
            { "required": ["domain"], "properties": { "domain": { "type": "string" } } }
        ]
    });
    schemas["CompaniesCreate"] = json!({
        "description": "One company (`name` or `domain` required), or `{ companies: [...] }` (1 \
            to 500). `upsert: true` updates companies whose domain exists instead of failing.",
        "type": "object",
        "properties": { "upsert": { "type": ["boolean", "null"] } },
        "if": { "required": ["companies"] },
        "then": {
            "properties": {
                "companies": {
                    "type": "array", "minItems": 1, "maxItems": 500,
                    "items": { "allOf": [company_input.clone(), company_named.clone()] }
                }
            }
        },
        "else": { "allOf": [company_input.clone(), company_named] }
    });
    let cleared =
        json!({ "anyOf": [{ "type": "null" }, { "type": "string", "pattern": blank_pattern() }] });
    schemas["CompanyUpdate"] = json!({
        "description": "The fields to change; fields not listed are merged into `context`. A \
            company keeps a name or a domain: clearing the last one is a 422.",
        "allOf": [company_input],
        "not": {
            "required": ["name", "domain"],
            "properties": { "name": cleared.clone(), "domain": cleared }
        }
    });
    if let Some(domain) = schemas["CompanyInput"]["properties"].get_mut("domain") {
        domain["pattern"] = json!(domain_pattern());
    }
    if let Some(email) = schemas["ContactInput"]["properties"].get_mut("email") {
        email["pattern"] = json!(email_pattern());
    }
    let contact_id_given = json!({
        "required": ["contact_id"],
        "properties": { "contact_id": { "type": "string", "pattern": non_blank_pattern() } }
    });
    schemas["TriggerInput"] = json!({
        "description": "`{ contact_id }` for an existing contact, or `{ email, first_name?, \
            last_name?, company?, ... }` to add a contact by email (created when new).",
        "type": "object",
        "properties": {
            "contact_id": { "type": ["string", "null"], "maxLength": 64, "description": "An existing contact's id" }
        },
        "if": contact_id_given,
        "else": { "allOf": [contact_input, email_given] }
    });
    if let Some(events) = schemas["WebhookInput"]["properties"].get_mut("events") {
        events["items"] = json!({
            "type": "string",
            "enum": crate::store::webhooks::AVAILABLE_EVENTS
        });
    }
}

/// A blank string, which the server reads as "not given" (or "clear" in a body).
fn blank_pattern() -> String {
    format!("^[{WS}]*$")
}

/// What `text::is_plausible_email` accepts (after trimming): one `@`, something before it, no
/// whitespace, and a domain with a dot that is not only trailing.
fn email_pattern() -> String {
    format!("^[{WS}]*[^{WS}@]+@[^{WS}@]*\\.[^{WS}@]*[^{WS}@.]\\.*[{WS}]*$")
}

/// A host with a dot, optionally as a URL and with `www.`, which `text::looks_like_domain`
/// accepts (stored normalised: `https://www.Acme.com/x` → `acme.com`). Stricter than the
/// server in one way: no whitespace inside the host.
fn domain_pattern() -> String {
    format!(
        "^[{WS}]*(?:[Hh][Tt][Tt][Pp][Ss]?://)?(?:[Ww][Ww][Ww]\\.)?[{WS}]*\
         [^{WS}./?#][^{WS}/?#]*\\.[^{WS}/?#]*[^{WS}./?#]\\.*[{WS}]*(?:[/?#][\\s\\S]*)?$"
    )
}

/// Query values the server reads as booleans (case-insensitive), or blank ("not given").
fn query_bool_pattern() -> String {
    format!("^[{WS}]*([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Yy][Ee][Ss]|[Nn][Oo]|1|0)?[{WS}]*$")
}

/// Derives write `pattern = "\\S"` for "not blank"; this spells it as the server means it.
fn fix_patterns(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if m.get("pattern").and_then(Value::as_str) == Some("\\S") {
                m.insert("pattern".into(), Value::String(non_blank_pattern()));
            }
            m.values_mut().for_each(fix_patterns);
        }
        Value::Array(a) => a.iter_mut().for_each(fix_patterns),
        _ => {}
    }
}

/// Query parameters are read leniently (`http::extract::QueryParams`): a blank value counts as
/// absent, booleans accept `yes`/`no`/`1`/`0`, and a number beyond the integer range saturates.
/// The schemas say so, so that documented-invalid values really are rejected.
fn lenient_query(schema: &Value) -> Value {
    let mut s = schema.clone();
    let blank = json!({ "type": "string", "pattern": blank_pattern() });
    if s["type"] == "integer" {
        if let Some(o) = s.as_object_mut() {
            o.remove("format");
        }
        return json!({ "anyOf": [s, blank] });
    }
    if s["type"] == "boolean" {
        return json!({ "anyOf": [s, { "type": "string", "pattern": query_bool_pattern() }] });
    }
    if s.get("$ref").is_some() || s.get("format").is_some() {
        return json!({ "anyOf": [s, blank] });
    }
    s
}

fn header(schema: Value, description: &str, required: bool) -> Value {
    json!({ "schema": schema, "description": description, "required": required })
}

/// Adds what every operation shares: error statuses from middleware, error bodies, headers and
/// security.
fn finish_operation(path: &str, op: &mut Value) {
    let is_api = path.starts_with("/api/v1/");
    let is_ws = path.ends_with("/ws");
    let is_native = path == "/api/v1/native/outreachpilot";
    let has_body = op.get("requestBody").is_some();
    let has_params = op["parameters"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query" || p["in"] == "path"));
    let mut add: Vec<(u16, &str)> = vec![(500, "`INTERNAL_ERROR`: an unexpected failure")];
    if is_api {
        add.push((401, "`MISSING_AUTH` or `INVALID_API_KEY`"));
        add.push((
            403,
            "`SCOPE_DENIED` (the key lacks the scope) or `PLAN_REQUIRED`",
        ));
        add.push((429, "`RATE_LIMITED`: over the org's request quota"));
        if !is_ws {
            add.push((
                502,
                "`UPSTREAM_UNAVAILABLE` (upstream mode): the backend failed",
            ));
            add.push((
                504,
                "`UPSTREAM_UNAVAILABLE` (upstream mode): the backend timed out",
            ));
        }
    }
    if has_body {
        add.push((
            413,
            "`PAYLOAD_TOO_LARGE`: the body is over the limit (64 KiB by default)",
        ));
        add.push((
            415,
            "`UNSUPPORTED_MEDIA_TYPE`: the body is not `application/json`",
        ));
    }
    if has_body || has_params {
        add.push((
            422,
            "`VALIDATION_ERROR`: malformed JSON or an invalid field; `details` names it",
        ));
    }
    if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
        for p in params.iter_mut().filter(|p| p["in"] == "query") {
            p["schema"] = lenient_query(&p["schema"]);
        }
    }
    let responses = &mut op["responses"];
    for (status, description) in add {
        let key = status.to_string();
        if responses.get(&key).is_none() {
            responses[&key] = json!({ "description": description });
        }
    }
    if is_native && responses.get("422").is_some() {
        responses["422"]["description"] = json!(
            "`VALIDATION_ERROR` (malformed JSON or an invalid field; `details` names it, e.g. \
             `action.campaignRef: missing`) or `IDEMPOTENCY_KEY_REUSED`"
        );
    }
    let Some(responses) = responses.as_object_mut() else {
        return;
    };
    for (status, resp) in responses.iter_mut() {
        let code: u16 = status.parse().unwrap_or(0);
        if code >= 400 && resp.get("content").is_none() {
            let envelope =
                json!({ "$ref": format!("#/components/schemas/{}", error_schema_name(code)) });
            // Native error replies also carry the server time and `performance` in `meta`
            // (all but a caught panic, which the generic safety net answers).
            let schema = if is_native && code != 500 {
                json!({ "allOf": [envelope, {
                    "properties": { "meta": { "$ref": "#/components/schemas/NativeMeta" } }
                }] })
            } else {
                envelope
            };
            resp["content"] = json!({ "application/json": { "schema": schema } });
        }
        let headers = resp
            .as_object_mut()
            .map(|r| r.entry("headers").or_insert_with(|| json!({})))
            .expect("a response is an object");
        headers["X-Request-Id"] = header(
            json!({ "type": "string" }),
            "The request id, also in `meta.request_id`",
            true,
        );
        if is_api && !is_ws {
            let int = json!({ "type": "integer", "minimum": 0 });
            headers["X-RateLimit-Limit"] = header(
                int.clone(),
                "Requests per minute allowed for the org (absent when unlimited)",
                false,
            );
            headers["X-RateLimit-Remaining"] =
                header(int.clone(), "Requests left in the current window", false);
            headers["X-RateLimit-Reset"] = header(int, "Seconds until the window resets", false);
        }
        match code {
            429 => {
                headers["Retry-After"] = header(
                    json!({ "type": "integer", "minimum": 0 }),
                    "Seconds to wait before retrying",
                    true,
                )
            }
            409 | 503 => {
                headers["Retry-After"] = header(
                    json!({ "type": "integer", "minimum": 0 }),
                    "Seconds to wait before retrying (with `IDEMPOTENCY_KEY_IN_USE` and when busy)",
                    false,
                )
            }
            _ => {}
        }
        if is_native {
            headers["Server-Timing"] = header(
                json!({ "type": "string" }),
                "W3C Server-Timing: one metric per pipeline phase and `total`, e.g. \
                 `auth;dur=0.012, parse;dur=0.004, exec;dur=0.081, total;dur=0.121`",
                false,
            );
            if code == 200 {
                headers["Idempotent-Replayed"] = header(
                    json!({ "type": "string", "enum": ["true"] }),
                    "`true` when the reply was replayed from the idempotency store",
                    false,
                );
            }
        }
    }
    if is_ws {
        // Credentials may also come in the first frame instead of on the upgrade.
        op["security"] = json!([{ BEARER: [] }, {}]);
    } else if is_api {
        op["security"] = json!([{ BEARER: [] }]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_is_complete() {
        let doc = document();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let text = doc.to_string();
        assert!(
            !text.contains("x-composed"),
            "a composed schema was not filled in"
        );
        let mapping = doc["components"]["schemas"]["NativeAction"]["discriminator"]["mapping"]
            .as_object()
            .unwrap();
        assert_eq!(mapping.len(), action::ACTION_TYPES.len());
        for t in action::ACTION_TYPES {
            assert!(mapping.contains_key(*t), "{t} missing from the union");
        }
        // Every `$ref` points at a schema that exists.
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(schemas.contains_key(name), "dangling $ref {name}");
        }
    }

    #[test]
    fn every_status_has_its_codes() {
        for c in ErrorCode::ALL {
            assert!(codes_for(c.status()).contains(&c.as_str()));
        }
    }
}
