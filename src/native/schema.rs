//! The 17 actions as tools for a model (chat, MCP): a name, a sentence saying what it does,
//! and a JSON Schema of its input, derived from the action types themselves (the same
//! `utoipa::ToSchema` derives the OpenAPI document is built from), with referenced types
//! inlined so each schema stands alone. Only the canonical field names are offered
//! (`contactRef`, `campaignRef`); the aliases a client may send are left out to keep a model's
//! choices few.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::{json, Value};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use super::action::{
    BookMeeting, CampaignOnly, ContactCampaign, ContactOnly, DraftMessage, LookupCompany,
    LookupPerson, MarkStatus, NoteOnContact, RecentSignals, ReplyInbox, SendMessage, StartResearch,
    UndoLast,
};

/// One action offered as a tool.
#[derive(Debug, Clone)]
pub struct ActionTool {
    /// The action type, used as the tool name.
    pub name: &'static str,
    pub description: &'static str,
    /// JSON Schema (draft 2020-12 subset) of the arguments: the action's fields without `type`.
    pub input_schema: Value,
    /// Reads change nothing.
    pub read_only: bool,
    /// Asks for the user's confirmation before it runs (for `mark_status`: when the status is
    /// `disqualified`; for `send_message`: in auto pilot mode).
    pub dangerous: bool,
}

fn derived<T: ToSchema>() -> (Value, Vec<(String, RefOr<Schema>)>) {
    let mut refs = Vec::new();
    T::schemas(&mut refs);
    (
        serde_json::to_value(<T as PartialSchema>::schema()).unwrap_or(Value::Null),
        refs,
    )
}

/// Replaces `{"$ref": "#/components/schemas/X"}` with X's schema, recursively.
fn inline(v: &mut Value, components: &HashMap<String, Value>, depth: u8) {
    if depth > 8 {
        return;
    }
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                if let Some(found) = r
                    .strip_prefix("#/components/schemas/")
                    .and_then(|name| components.get(name))
                {
                    let mut found = found.clone();
                    inline(&mut found, components, depth + 1);
                    m.remove("$ref");
                    if let Value::Object(f) = found {
                        for (k, x) in f {
                            m.entry(k).or_insert(x);
                        }
                    }
                }
            }
            for x in m.values_mut() {
                inline(x, components, depth + 1);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| inline(x, components, depth + 1)),
        _ => {}
    }
}

fn tool(
    name: &'static str,
    description: &'static str,
    (mut schema, refs): (Value, Vec<(String, RefOr<Schema>)>),
    required: &[&str],
) -> ActionTool {
    let components: HashMap<String, Value> = refs
        .into_iter()
        .filter_map(|(n, s)| serde_json::to_value(s).ok().map(|s| (n, s)))
        .collect();
    inline(&mut schema, &components, 0);
    if let Value::Object(m) = &mut schema {
        m.remove("required");
        if !required.is_empty() {
            m.insert("required".into(), json!(required));
        }
        m.insert("additionalProperties".into(), Value::Bool(false));
        m.entry("properties").or_insert_with(|| json!({}));
    }
    let read_only = matches!(
        name,
        "lookup_person" | "lookup_company" | "recent_signals" | "campaign_stats" | "reply_inbox"
    );
    let dangerous = matches!(
        name,
        "add_to_campaign"
            | "remove_from_campaign"
            | "pause_campaign"
            | "resume_campaign"
            | "send_message"
            | "book_meeting"
            | "mark_status"
    );
    ActionTool {
        name,
        description,
        input_schema: schema,
        read_only,
        dangerous,
    }
}

static TOOLS: LazyLock<Vec<ActionTool>> = LazyLock::new(|| {
    vec![
        tool(
            "lookup_person",
            "Look up a contact by name, email or id: title, company, status, latest activity.",
            derived::<LookupPerson>(),
            &["contactRef"],
        ),
        tool(
            "lookup_company",
            "Look up a company by name or domain: what it is, its contacts and recent signals.",
            derived::<LookupCompany>(),
            &[],
        ),
        tool(
            "recent_signals",
            "Recent buying signals, optionally for one company or contact, since a date.",
            derived::<RecentSignals>(),
            &[],
        ),
        tool(
            "start_research",
            "Start a background research job on a contact or a company.",
            derived::<StartResearch>(),
            &[],
        ),
        tool(
            "enrich_contact",
            "Start a background job that fills in a contact's missing details.",
            derived::<ContactOnly>(),
            &["contactRef"],
        ),
        tool(
            "add_to_campaign",
            "Add a contact to a campaign. Asks the user to confirm first.",
            derived::<ContactCampaign>(),
            &["contactRef", "campaignRef"],
        ),
        tool(
            "remove_from_campaign",
            "Remove a contact from a campaign. Asks the user to confirm first.",
            derived::<ContactCampaign>(),
            &["contactRef", "campaignRef"],
        ),
        tool(
            "pause_campaign",
            "Pause a campaign. Asks the user to confirm first.",
            derived::<CampaignOnly>(),
            &["campaignRef"],
        ),
        tool(
            "resume_campaign",
            "Resume a paused campaign. Asks the user to confirm first.",
            derived::<CampaignOnly>(),
            &["campaignRef"],
        ),
        tool(
            "draft_message",
            "Save a draft email or LinkedIn message to a contact for review.",
            derived::<DraftMessage>(),
            &["contactRef"],
        ),
        tool(
            "send_message",
            "Send an email or LinkedIn message to a contact, following the org's pilot mode \
             (off: not sent; review: saved as a draft; auto: asks the user to confirm).",
            derived::<SendMessage>(),
            &["contactRef"],
        ),
        tool(
            "campaign_stats",
            "How a campaign is doing: audience, sent, opened, replied.",
            derived::<CampaignOnly>(),
            &["campaignRef"],
        ),
        tool(
            "reply_inbox",
            "The latest inbound replies, optionally from one contact or only unread ones.",
            derived::<ReplyInbox>(),
            &[],
        ),
        tool(
            "book_meeting",
            "Book a meeting with a contact at an RFC 3339 start time. Asks the user to confirm first.",
            derived::<BookMeeting>(),
            &["contactRef", "startTime"],
        ),
        tool(
            "mark_status",
            "Set a contact's status. Disqualifying asks the user to confirm first.",
            derived::<MarkStatus>(),
            &["contactRef", "status"],
        ),
        tool(
            "note_on_contact",
            "Add a note to a contact.",
            derived::<NoteOnContact>(),
            &["contactRef", "note"],
        ),
        tool(
            "undo_last",
            "Undo the most recent change made with this API key in the last few minutes.",
            derived::<UndoLast>(),
            &[],
        ),
    ]
});

/// The 17 actions as tools, in the reference's order.
pub fn action_tool_schemas() -> &'static [ActionTool] {
    &TOOLS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::action::ACTION_TYPES;

    #[test]
    fn every_action_is_a_tool_with_a_standalone_schema() {
        let tools = action_tool_schemas();
        let names: Vec<&str> = tools.iter().map(|t| t.name).collect();
        assert_eq!(names, ACTION_TYPES);
        for t in tools {
            let text = t.input_schema.to_string();
            assert!(!text.contains("$ref"), "{}: {text}", t.name);
            assert_eq!(t.input_schema["type"], "object", "{}", t.name);
            assert_eq!(t.input_schema["additionalProperties"], false);
            let props = t.input_schema["properties"].as_object().unwrap();
            assert!(!props.contains_key("type"), "{}", t.name);
            assert!(!props.contains_key("confirmed"), "{}", t.name);
            for r in t.input_schema["required"].as_array().into_iter().flatten() {
                assert!(props.contains_key(r.as_str().unwrap()), "{}: {r}", t.name);
            }
        }
        let doc = crate::http::openapi::document();
        for t in tools {
            // What the OpenAPI document says must be given, with a required reference group
            // (`oneOf` of its aliases) read as its canonical name.
            let pascal: String = t
                .name
                .split('_')
                .map(|w| w[..1].to_ascii_uppercase() + &w[1..])
                .collect();
            let api = &doc["components"]["schemas"][format!("{pascal}Action")];
            let mut want: Vec<String> = api["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str())
                .filter(|r| *r != "type")
                .map(str::to_string)
                .collect();
            for group in api["allOf"].as_array().into_iter().flatten() {
                if let Some(first) = group["oneOf"][0]["required"][0].as_str() {
                    want.push(first.to_string());
                }
            }
            let mut got: Vec<String> = t.input_schema["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str().map(str::to_string))
                .collect();
            want.sort();
            got.sort();
            assert_eq!(
                got, want,
                "{}: tool and OpenAPI disagree on required fields",
                t.name
            );
        }
        let mark = &tools[14];
        assert!(mark.input_schema["properties"]["status"]
            .to_string()
            .contains("disqualified"));
        let add = &tools[5];
        assert!(add.dangerous && !add.read_only);
        assert!(add.input_schema["properties"]
            .as_object()
            .unwrap()
            .contains_key("campaignRef"));
    }
}
