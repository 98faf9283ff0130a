//! The MCP tools: the 17 native actions plus `confirm_pending_action`, with their schemas and
//! annotations, and the two translations a tool call needs — arguments into a native request
//! body (the same object the HTTP endpoint reads), and the turn's outcome into a tool result.

use std::sync::{Arc, LazyLock};

use rmcp::model::{CallToolResult, ContentBlock, JsonObject, Tool, ToolAnnotations};
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::native::action::ACTION_TYPES;
use crate::native::reply::NativeReply;
use crate::native::schema;

/// The tool that answers a `confirmation_required` reply.
pub const CONFIRM_TOOL: &str = "confirm_pending_action";

/// The optional argument every tool accepts, as the native request's `idempotencyKey`.
const IDEMPOTENCY_KEY: &str = "idempotencyKey";

/// How a tool behaves, as MCP annotations say it (hints for clients, DESIGN §19).
struct Behaviour {
    /// Changes nothing (the five reads).
    read_only: bool,
    /// May remove or overwrite something (only meaningful for writes).
    destructive: bool,
    /// Calling it again with the same arguments has no further effect.
    idempotent: bool,
    /// Reaches beyond the CRM (sending a message to a person).
    open_world: bool,
}

const READ: Behaviour = Behaviour {
    read_only: true,
    destructive: false,
    idempotent: true,
    open_world: false,
};

const fn write(destructive: bool, idempotent: bool) -> Behaviour {
    Behaviour {
        read_only: false,
        destructive,
        idempotent,
        open_world: false,
    }
}

const ASKS: &str = " Asks first: the result has mode confirmation_required and a \
    pending_action_id; read the question to the user and call confirm_pending_action with \
    their answer.";

/// The tool behaviour of each action type. Idempotent: adding a member, removing one, pausing,
/// resuming and setting a status end in the same state when repeated; a second research job,
/// draft, message, meeting, note or undo is another effect.
fn behaviour(ty: &str) -> Option<Behaviour> {
    Some(match ty {
        "lookup_person" | "lookup_company" | "recent_signals" | "campaign_stats"
        | "reply_inbox" => READ,
        "start_research" | "enrich_contact" | "draft_message" | "book_meeting"
        | "note_on_contact" => write(false, false),
        "add_to_campaign" | "resume_campaign" => write(false, true),
        "remove_from_campaign" | "pause_campaign" | "mark_status" => write(true, true),
        "undo_last" => write(true, false),
        "send_message" => Behaviour {
            open_world: true,
            ..write(false, false)
        },
        _ => return None,
    })
}

/// Whether an action type always asks before it runs (send_message asks in auto pilot mode,
/// mark_status when disqualifying).
fn asks(ty: &str) -> bool {
    matches!(
        ty,
        "add_to_campaign"
            | "remove_from_campaign"
            | "pause_campaign"
            | "resume_campaign"
            | "send_message"
            | "book_meeting"
            | "mark_status"
    )
}

fn annotations(title: &str, b: &Behaviour) -> ToolAnnotations {
    let a = ToolAnnotations::with_title(title)
        .read_only(b.read_only)
        .open_world(b.open_world);
    if b.read_only {
        a
    } else {
        a.destructive(b.destructive).idempotent(b.idempotent)
    }
}

fn object(v: Value) -> Arc<JsonObject> {
    match v {
        Value::Object(m) => Arc::new(m),
        _ => Arc::new(Map::new()),
    }
}

/// `idempotencyKey` as a write (or the confirmation) uses it, or as a read does: the native
/// endpoint validates a read's key and echoes it in the reply, but stores and replays nothing.
fn idempotency_key_schema(read_only: bool) -> Value {
    let description = if read_only {
        "Optional: a key for this request (1 to 255 visible ASCII characters), echoed in the \
         reply as idempotency_key. Reads are not replayed, so it has no other effect."
    } else {
        "Optional: a key for this request (1 to 255 visible ASCII characters). A retry with \
         the same key replays the first answer instead of acting twice. Without one, identical \
         calls within a few seconds are answered once."
    };
    json!({
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "pattern": "^[!-~]+$",
        "description": description,
    })
}

/// The result schema: the native reply, or `{"error": {...}}` on a failed call.
fn output_schema() -> Value {
    let error = json!({
        "type": "object",
        "required": ["error"],
        "properties": { "error": {
            "type": "object",
            "required": ["code", "message", "details", "docs_url", "spoken_summary"],
            "properties": {
                "code": { "type": "string", "description": "A stable error code, e.g. RESOURCE_NOT_FOUND" },
                "message": { "type": "string" },
                "details": { "type": "string", "description": "For validation errors: the argument and the problem" },
                "docs_url": { "type": "string" },
                "spoken_summary": { "type": "string", "description": "A sentence to say to the user" }
            }
        } }
    });
    json!({
        "type": "object",
        "description": "The native reply (mode, spoken_summary, data, ids, pending_action_id, \
            ...), or, when isError is true, {\"error\": {code, message, details, docs_url, \
            spoken_summary}}.",
        "anyOf": [schema::reply_schema(), error],
    })
}

fn action_tool(ty: &'static str) -> Option<Tool> {
    let b = behaviour(ty)?;
    let input = schema::action_input(ty)?;
    let mut input_schema = input.schema.clone();
    // Every action accepts it, reads included: `native_body` passes it on for any tool, as the
    // native endpoint takes it with any action.
    if let Some(props) = input_schema["properties"].as_object_mut() {
        props.insert(IDEMPOTENCY_KEY.into(), idempotency_key_schema(b.read_only));
    }
    let description = if asks(ty) {
        format!("{}{ASKS}", input.description)
    } else {
        input.description.to_string()
    };
    Some(
        Tool::new(ty, description, object(input_schema))
            .with_title(input.title)
            .with_raw_output_schema(object(output_schema()))
            .with_annotations(annotations(input.title, &b)),
    )
}

fn confirm_tool() -> Tool {
    let input = json!({
        "type": "object",
        "required": ["pendingActionId", "confirmed"],
        "additionalProperties": false,
        "properties": {
            "pendingActionId": {
                "type": "string",
                "minLength": 1,
                "maxLength": 128,
                "description": "The pending_action_id of a confirmation_required result."
            },
            "confirmed": {
                "type": "boolean",
                "description": "true runs the action (once, however often it is confirmed); \
                    false cancels it. Send only what the user said."
            },
            IDEMPOTENCY_KEY: idempotency_key_schema(false),
        }
    });
    // Confirming runs what was asked, which may be a removal or a pause; confirming twice
    // replays the first answer.
    let title = "Confirm or cancel a pending action";
    let description = "Settle an action that asked for confirmation: confirmed true runs it, \
        false cancels it. A pending action can only be settled with the API key that asked for \
        it, and it expires after a few minutes.";
    Tool::new(CONFIRM_TOOL, description, object(input))
        .with_title(title)
        .with_raw_output_schema(object(output_schema()))
        .with_annotations(annotations(title, &write(true, true)))
}

static TOOLS: LazyLock<Vec<Tool>> = LazyLock::new(|| {
    ACTION_TYPES
        .iter()
        .filter_map(|ty| action_tool(ty))
        .chain(std::iter::once(confirm_tool()))
        .collect()
});

/// Every tool, in the reference's action order, `confirm_pending_action` last.
pub fn all() -> &'static [Tool] {
    &TOOLS
}

/// One tool by name.
pub fn find(name: &str) -> Option<&'static Tool> {
    TOOLS.iter().find(|t| t.name == name)
}

/// The native request body for a call of tool `name` (which [`find`] knows): the action's
/// arguments under `action` with its `type`, `idempotencyKey` at the top. Bad arguments are
/// errors naming the argument.
pub fn native_body(name: &str, args: Option<&JsonObject>) -> Result<Value, ApiError> {
    let empty = Map::new();
    let args = args.unwrap_or(&empty);
    let mut body = Map::new();
    if name == CONFIRM_TOOL {
        const KNOWN: [&str; 3] = ["pendingActionId", "confirmed", IDEMPOTENCY_KEY];
        if let Some(unknown) = args.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(ApiError::validation(
                &crate::text::clip(unknown, 64),
                format!("unknown argument; known: {}", KNOWN.join(", ")),
            ));
        }
        match args.get("pendingActionId") {
            None | Some(Value::Null) => {
                return Err(ApiError::validation("pendingActionId", "missing")
                    .with_spoken("I need to know which action to confirm."))
            }
            Some(Value::String(s)) if s.trim().is_empty() => {
                return Err(ApiError::validation("pendingActionId", "blank")
                    .with_spoken("I need to know which action to confirm."))
            }
            Some(_) => {}
        }
        body.extend(args.clone());
        return Ok(Value::Object(body));
    }
    let mut action = Map::new();
    action.insert("type".into(), Value::String(name.to_string()));
    for (k, v) in args {
        match k.as_str() {
            IDEMPOTENCY_KEY => {
                body.insert(k.clone(), v.clone());
            }
            // Only `confirm_pending_action` settles a question, with what the user answered:
            // an action tool never runs a dangerous action on the caller's own say-so, whatever
            // the key (DESIGN §19, §21).
            "confirmed" | "pendingActionId" => {
                return Err(ApiError::validation(
                    k,
                    format!(
                        "not an argument of {name}; a dangerous action answers with a question \
                         (mode confirmation_required), and {CONFIRM_TOOL} answers it"
                    ),
                )
                .with_spoken("I need to ask you before I do that."))
            }
            // The tool's name is the type; a `type` argument would contradict it.
            "type" => {
                return Err(ApiError::validation(
                    "type",
                    "unknown argument; the tool's name is the action type",
                ))
            }
            _ => {
                action.insert(k.clone(), v.clone());
            }
        }
    }
    body.insert("action".into(), Value::Object(action));
    Ok(Value::Object(body))
}

/// Validation details name fields as the native request nests them (`action.campaignRef`);
/// a tool's arguments are flat (`campaignRef`).
fn flat_details(mut e: ApiError) -> ApiError {
    if let Some(d) = &e.details {
        if let Some(rest) = d.strip_prefix("action.") {
            e.details = Some(rest.to_string());
        }
    }
    e
}

/// The tool result for a turn: the spoken sentence first (what a voice agent says), the reply
/// as JSON text for clients that show only text, and the reply as `structuredContent`.
/// Failures are results with `isError` and the spoken error.
pub fn tool_result(result: Result<&NativeReply, &ApiError>) -> CallToolResult {
    match result {
        Ok(reply) => {
            let value = serde_json::to_value(reply).unwrap_or(Value::Null);
            let mut r = CallToolResult::structured(value);
            r.content
                .insert(0, ContentBlock::text(reply.spoken_summary.clone()));
            r
        }
        Err(e) => {
            let e = flat_details(e.clone());
            let mut r = CallToolResult::structured_error(json!({ "error": e.to_json() }));
            r.content.insert(0, ContentBlock::text(e.spoken_summary));
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::request::NativeRequest;

    fn tool(name: &str) -> &'static Tool {
        find(name).unwrap()
    }

    #[test]
    fn eighteen_tools_with_the_annotations_of_their_kind() {
        assert_eq!(all().len(), 18);
        assert_eq!(all()[17].name, CONFIRM_TOOL);
        let hint = |name: &str| tool(name).annotations.clone().unwrap();
        for read in [
            "lookup_person",
            "lookup_company",
            "recent_signals",
            "campaign_stats",
            "reply_inbox",
        ] {
            assert_eq!(hint(read).read_only_hint, Some(true), "{read}");
            let key = &tool(read).input_schema["properties"][IDEMPOTENCY_KEY];
            assert_eq!(key["type"], "string", "{read}");
            assert!(key["description"]
                .as_str()
                .is_some_and(|d| d.contains("not replayed")));
        }
        for destructive in [
            "remove_from_campaign",
            "pause_campaign",
            "mark_status",
            "undo_last",
        ] {
            assert_eq!(
                hint(destructive).destructive_hint,
                Some(true),
                "{destructive}"
            );
        }
        for additive in [
            "start_research",
            "enrich_contact",
            "add_to_campaign",
            "draft_message",
            "send_message",
            "book_meeting",
            "note_on_contact",
        ] {
            assert_eq!(hint(additive).destructive_hint, Some(false), "{additive}");
            assert_eq!(hint(additive).read_only_hint, Some(false), "{additive}");
        }
        for t in all() {
            let open = t.annotations.as_ref().unwrap().open_world_hint;
            assert_eq!(open, Some(t.name == "send_message"), "{}", t.name);
            assert_eq!(t.output_schema.as_ref().unwrap()["type"], "object");
            assert_eq!(t.input_schema["type"], "object");
        }
        assert_eq!(hint("add_to_campaign").idempotent_hint, Some(true));
        assert_eq!(hint("note_on_contact").idempotent_hint, Some(false));
        assert_eq!(hint(CONFIRM_TOOL).idempotent_hint, Some(true));
    }

    #[test]
    fn arguments_become_the_native_request() {
        let args =
            json!({"personName": "Sarah Chen", "note": "Likes tea", "idempotencyKey": "k-1"});
        let body = native_body("note_on_contact", args.as_object()).unwrap();
        assert_eq!(
            body,
            json!({"action": {"type": "note_on_contact", "personName": "Sarah Chen", "note": "Likes tea"}, "idempotencyKey": "k-1"})
        );
        let req = NativeRequest::parse(body).unwrap();
        assert_eq!(req.idempotency_key.as_deref(), Some("k-1"));
        let read = native_body(
            "lookup_person",
            json!({"personName": "Sarah Chen", "idempotencyKey": "k-2"}).as_object(),
        )
        .unwrap();
        assert_eq!(
            read,
            json!({"action": {"type": "lookup_person", "personName": "Sarah Chen"}, "idempotencyKey": "k-2"})
        );
        let undo = native_body("undo_last", None).unwrap();
        assert_eq!(undo, json!({"action": {"type": "undo_last"}}));
        let confirm = native_body(
            CONFIRM_TOOL,
            json!({"pendingActionId": "p1", "confirmed": true}).as_object(),
        )
        .unwrap();
        assert_eq!(confirm, json!({"pendingActionId": "p1", "confirmed": true}));
    }

    #[test]
    fn bad_arguments_name_the_argument() {
        let e = |name: &str, args: Value| native_body(name, args.as_object()).unwrap_err();
        let typed = e("lookup_person", json!({"type": "undo_last"}));
        assert_eq!(
            typed.details.as_deref().unwrap().split(':').next(),
            Some("type")
        );
        let unknown = e(
            CONFIRM_TOOL,
            json!({"pendingActionId": "p", "confirmed": true, "x": 1}),
        );
        assert!(unknown.details.unwrap().starts_with("x: unknown argument"));
        for self_confirm in [
            json!({"contactId": "c", "campaignRef": "Seed", "confirmed": true}),
            json!({"contactId": "c", "campaignRef": "Seed", "pendingActionId": "p"}),
        ] {
            let refused = e("add_to_campaign", self_confirm);
            let details = refused.details.clone().unwrap_or_default();
            assert!(details.contains(CONFIRM_TOOL), "{details}");
            assert_eq!(refused.status(), 422);
        }
        let missing = e(CONFIRM_TOOL, json!({"confirmed": true}));
        assert_eq!(missing.details.as_deref(), Some("pendingActionId: missing"));
        assert_eq!(missing.status(), 422);
    }

    #[test]
    fn results_carry_the_spoken_sentence_and_the_structured_reply() {
        let reply = NativeReply::result("Sarah Chen is at Notion.", json!({"n": 1}));
        let r = tool_result(Ok(&reply));
        assert_eq!(r.is_error, Some(false));
        assert_eq!(
            r.content[0].as_text().unwrap().text,
            "Sarah Chen is at Notion."
        );
        let s = r.structured_content.unwrap();
        assert_eq!(s["mode"], "result");
        assert_eq!(s["data"]["n"], 1);
        let err = ApiError::validation("action.campaignRef", "missing");
        let r = tool_result(Err(&err));
        assert_eq!(r.is_error, Some(true));
        let s = r.structured_content.unwrap();
        assert_eq!(s["error"]["code"], "VALIDATION_ERROR");
        assert_eq!(s["error"]["details"], "campaignRef: missing");
        assert_eq!(r.content[0].as_text().unwrap().text, err.spoken_summary);
    }
}
