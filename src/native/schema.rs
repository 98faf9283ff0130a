//! JSON Schemas of the 17 native actions and of the native reply, derived from the action types
//! (`native::action`, `native::reply`) and the rules `action::validate` applies, in one place
//! for every surface that describes them: the OpenAPI document (`http::openapi`), the MCP tools
//! (`mcp`) and the AI chat's tool list.

use std::sync::LazyLock;

use serde_json::{json, Map, Value};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use super::action::{self, ACTION_TYPES};
use super::reply::NativeReply;

/// Whitespace as `str::trim` sees it (Unicode `White_Space`), spelled out because `\\s`
/// differs between regex dialects (ECMA-262 has U+FEFF but not U+0085).
pub const WHITESPACE: &str =
    "\\t-\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";

/// A string that is not empty after trimming.
pub fn non_blank_pattern() -> String {
    format!("[^{WHITESPACE}]")
}

const CONTACT_ALIASES: [&str; 4] = ["contactRef", "personName", "contactId", "email"];
const CAMPAIGN_ALIASES: [&str; 2] = ["campaignRef", "campaignId"];

fn non_blank(base: &Value) -> Value {
    let mut s = json!({ "type": "string", "pattern": non_blank_pattern() });
    if let Some(max) = base.get("maxLength") {
        s["maxLength"] = max.clone();
    }
    if let Some(d) = base.get("description") {
        s["description"] = d.clone();
    }
    s
}

/// `schema` without its `null` alternative (a field that must be given).
fn non_null(schema: &Value) -> Value {
    let mut s = schema.clone();
    if let Some(types) = s["type"].as_array() {
        let kept: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
        s["type"] = if kept.len() == 1 {
            kept[0].clone()
        } else {
            Value::Array(kept)
        };
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(alts) = s.get(key).and_then(Value::as_array) {
            let kept: Vec<Value> = alts
                .iter()
                .filter(|a| a.get("type") != Some(&json!("null")))
                .cloned()
                .collect();
            if let (1, Some(obj)) = (kept.len(), s.as_object_mut()) {
                obj.remove(key);
                if let Some(only) = kept[0].as_object() {
                    obj.extend(only.clone());
                }
            } else {
                s[key] = Value::Array(kept);
            }
        }
    }
    s
}

fn required_one_of(names: &[&str]) -> Value {
    json!({ "oneOf": names.iter().map(|n| json!({ "required": [n] })).collect::<Vec<_>>() })
}

fn at_most_one_of(names: &[&str]) -> Value {
    let mut pairs = Vec::new();
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            pairs.push(json!({ "required": [a, b] }));
        }
    }
    json!({ "not": { "anyOf": pairs } })
}

/// How `native::action::validate` treats a reference group.
#[derive(Clone, Copy, PartialEq)]
enum Need {
    Required,
    Optional,
}

/// The action types, the struct each one reads, and what `validate` demands of it.
struct ActionRule {
    ty: &'static str,
    schema: &'static str,
    contact: Option<Need>,
    campaign: Option<Need>,
    /// Fields that must be present and not blank.
    required: &'static [&'static str],
    /// At least one of these must be present and not blank.
    any_of: &'static [&'static str],
}

const fn rule(ty: &'static str, schema: &'static str) -> ActionRule {
    ActionRule {
        ty,
        schema,
        contact: None,
        campaign: None,
        required: &[],
        any_of: &[],
    }
}

const ACTIONS: [ActionRule; 17] = [
    ActionRule {
        contact: Some(Need::Required),
        ..rule("lookup_person", "LookupPerson")
    },
    ActionRule {
        any_of: &["company", "companyId"],
        ..rule("lookup_company", "LookupCompany")
    },
    ActionRule {
        contact: Some(Need::Optional),
        ..rule("recent_signals", "RecentSignals")
    },
    ActionRule {
        contact: Some(Need::Optional),
        any_of: &["contactRef", "personName", "contactId", "email", "company"],
        ..rule("start_research", "StartResearch")
    },
    ActionRule {
        contact: Some(Need::Required),
        ..rule("enrich_contact", "ContactOnly")
    },
    ActionRule {
        contact: Some(Need::Required),
        campaign: Some(Need::Required),
        ..rule("add_to_campaign", "ContactCampaign")
    },
    ActionRule {
        contact: Some(Need::Required),
        campaign: Some(Need::Required),
        ..rule("remove_from_campaign", "ContactCampaign")
    },
    ActionRule {
        campaign: Some(Need::Required),
        ..rule("pause_campaign", "CampaignOnly")
    },
    ActionRule {
        campaign: Some(Need::Required),
        ..rule("resume_campaign", "CampaignOnly")
    },
    ActionRule {
        contact: Some(Need::Required),
        ..rule("draft_message", "DraftMessage")
    },
    ActionRule {
        contact: Some(Need::Required),
        any_of: &["body", "draftId"],
        ..rule("send_message", "SendMessage")
    },
    ActionRule {
        campaign: Some(Need::Required),
        ..rule("campaign_stats", "CampaignOnly")
    },
    ActionRule {
        contact: Some(Need::Optional),
        ..rule("reply_inbox", "ReplyInbox")
    },
    ActionRule {
        contact: Some(Need::Required),
        required: &["startTime"],
        ..rule("book_meeting", "BookMeeting")
    },
    ActionRule {
        contact: Some(Need::Required),
        required: &["status"],
        ..rule("mark_status", "MarkStatus")
    },
    ActionRule {
        contact: Some(Need::Required),
        required: &["note"],
        ..rule("note_on_contact", "NoteOnContact")
    },
    rule("undo_last", "UndoLast"),
];

/// Adds to an OpenAPI `components.schemas` map that holds the derived schemas of the action
/// structs: `LookupPersonAction`, ...: `type` plus the struct's fields (with the aliases serde
/// accepts), nothing else; and `NativeAction`, the union told apart by `type`. The structs'
/// own entries are removed, since only the per-type schemas are referenced.
pub fn add_action_schemas(schemas: &mut Value) {
    let mut refs = Vec::new();
    let mut mapping = Map::new();
    for rule in &ACTIONS {
        let base = schemas[rule.schema].clone();
        let name = format!("{}Action", pascal(rule.ty));
        let mut props = Map::new();
        props.insert("type".into(), json!({ "type": "string", "const": rule.ty }));
        let mut all_of = Vec::new();
        let base_props = base["properties"].as_object().cloned().unwrap_or_default();
        for (key, prop) in base_props {
            let group: Option<(&[&str], Option<Need>)> = if key == "contactRef" {
                Some((&CONTACT_ALIASES, rule.contact))
            } else if key == "campaignRef" {
                Some((&CAMPAIGN_ALIASES, rule.campaign))
            } else {
                None
            };
            match group {
                Some((aliases, need)) => {
                    let schema = if need == Some(Need::Required) {
                        all_of.push(required_one_of(aliases));
                        non_blank(&prop)
                    } else {
                        all_of.push(at_most_one_of(aliases));
                        prop.clone()
                    };
                    for a in aliases {
                        props.insert((*a).to_string(), schema.clone());
                    }
                }
                None if rule.required.contains(&key.as_str()) => {
                    let mut p = non_null(&prop);
                    if p["type"] == "string" && p.get("format").is_none() {
                        p["pattern"] = json!(non_blank_pattern());
                    }
                    props.insert(key, p);
                }
                None => {
                    props.insert(key, prop);
                }
            }
        }
        let mut required = vec![json!("type")];
        required.extend(rule.required.iter().map(|r| json!(r)));
        if !rule.any_of.is_empty() {
            all_of.push(json!({
                "anyOf": rule.any_of.iter().map(|f| json!({
                    "required": [f],
                    "properties": { *f: { "type": "string", "pattern": non_blank_pattern() } }
                })).collect::<Vec<_>>()
            }));
        }
        let mut schema = json!({
            "type": "object",
            "title": rule.ty,
            "required": required,
            "properties": props,
            "additionalProperties": false,
        });
        if let Some(d) = base.get("description") {
            schema["description"] = d.clone();
        }
        if !all_of.is_empty() {
            schema["allOf"] = Value::Array(all_of);
        }
        schemas[&name] = schema;
        let r = format!("#/components/schemas/{name}");
        refs.push(json!({ "$ref": r }));
        mapping.insert(rule.ty.to_string(), Value::String(r));
    }
    // Only the per-type schemas are referenced; the structs they came from stay out of the way.
    for rule in &ACTIONS {
        if let Some(m) = schemas.as_object_mut() {
            m.remove(rule.schema);
        }
    }
    schemas["NativeAction"] = json!({
        "description": format!(
            "One of the {} native actions, told apart by `type`. Unknown fields are rejected. \
             Contact references may be sent as `contactRef`, `personName`, `contactId` or \
             `email` (one of them); campaign references as `campaignRef` or `campaignId`.",
            ACTION_TYPES.len()
        ),
        "oneOf": refs,
        "discriminator": { "propertyName": "type", "mapping": mapping },
    });
}

fn pascal(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

// ---- self-contained schemas for tool-calling clients ---------------------------------------

/// One action's arguments as a tool-calling client sends them.
#[derive(Debug)]
pub struct ActionInput {
    /// The action type, which names the tool.
    pub ty: &'static str,
    /// A short human title ("Look up a person").
    pub title: &'static str,
    /// What the action does, in a sentence or two a model can choose by.
    pub description: &'static str,
    /// A JSON Schema (draft 2020-12) of the action's fields without `type`, with every
    /// reference inlined, so it stands on its own outside an OpenAPI document.
    pub schema: Value,
}

/// The 17 actions' argument schemas, in [`ACTION_TYPES`] order. The same derivation as the
/// OpenAPI document's `LookupPersonAction`, ... (see [`add_action_schemas`]), minus `type`.
pub fn action_inputs() -> &'static [ActionInput] {
    &ACTION_INPUTS
}

/// The argument schema of one action type.
pub fn action_input(ty: &str) -> Option<&'static ActionInput> {
    ACTION_INPUTS.iter().find(|a| a.ty == ty)
}

/// The native reply (`data` of a successful envelope) as a self-contained JSON Schema.
pub fn reply_schema() -> &'static Value {
    &REPLY_SCHEMA
}

static ACTION_INPUTS: LazyLock<Vec<ActionInput>> = LazyLock::new(|| {
    let mut components = derived_components();
    add_action_schemas(&mut components);
    ACTIONS
        .iter()
        .map(|rule| {
            let mut schema = components[format!("{}Action", pascal(rule.ty))].clone();
            if let Some(props) = schema["properties"].as_object_mut() {
                props.remove("type");
            }
            if let Some(required) = schema["required"].as_array_mut() {
                required.retain(|r| r != "type");
            }
            // An empty `required` is valid 2020-12 but refused by draft-04 validators some
            // tool-calling clients still use.
            if schema["required"].as_array().is_some_and(Vec::is_empty) {
                if let Some(obj) = schema.as_object_mut() {
                    obj.remove("required");
                }
            }
            let (title, description) = describe(rule.ty);
            if let Some(obj) = schema.as_object_mut() {
                // The struct's doc comment describes the struct (shared by several actions),
                // not the action.
                obj.remove("title");
                obj.remove("description");
            }
            inline_refs(&mut schema, &components, 0);
            ActionInput {
                ty: rule.ty,
                title,
                description,
                schema,
            }
        })
        .collect()
});

/// Title and description of each action type, for tool lists (MCP, AI chat).
fn describe(ty: &str) -> (&'static str, &'static str) {
    match ty {
        "lookup_person" => (
            "Look up a person",
            "Find a contact by name, email or id and say who they are: title, company, status.",
        ),
        "lookup_company" => (
            "Look up a company",
            "Find a company by name, domain or id and summarise it.",
        ),
        "recent_signals" => (
            "Recent buying signals",
            "List recent buying signals, optionally for one company or contact, newest first.",
        ),
        "start_research" => (
            "Start research",
            "Queue a research job on a contact or a company; the findings arrive later.",
        ),
        "enrich_contact" => (
            "Enrich a contact",
            "Queue an enrichment job that fills in a contact's missing fields.",
        ),
        "add_to_campaign" => (
            "Add to a campaign",
            "Add a contact to an active campaign's audience.",
        ),
        "remove_from_campaign" => (
            "Remove from a campaign",
            "Remove a contact from a campaign's audience.",
        ),
        "pause_campaign" => ("Pause a campaign", "Pause an active campaign."),
        "resume_campaign" => ("Resume a campaign", "Resume a paused campaign."),
        "draft_message" => (
            "Draft a message",
            "Write a draft email or LinkedIn message to a contact; nothing is sent.",
        ),
        "send_message" => (
            "Send a message",
            "Send a message to a contact, from a draft or a body, as the org's pilot mode \
             allows: off blocks sending, review saves a draft, auto sends after confirmation.",
        ),
        "campaign_stats" => (
            "Campaign statistics",
            "Say how a campaign is doing: status and audience counts.",
        ),
        "reply_inbox" => (
            "Reply inbox",
            "List the latest inbound replies, optionally from one contact or only unread ones.",
        ),
        "book_meeting" => (
            "Book a meeting",
            "Book a meeting with a contact at a given time (RFC 3339).",
        ),
        "mark_status" => (
            "Set a contact's status",
            "Set a contact's status (new, contacted, replied, interested, qualified, \
             meeting_booked, not_interested, disqualified).",
        ),
        "note_on_contact" => ("Add a note", "Add a note to a contact."),
        "undo_last" => (
            "Undo the last change",
            "Undo the most recent change made with this API key in the last minutes, and say \
             what was undone.",
        ),
        _ => ("", ""),
    }
}

static REPLY_SCHEMA: LazyLock<Value> = LazyLock::new(|| {
    let mut found = Vec::new();
    <NativeReply as ToSchema>::schemas(&mut found);
    let components = Value::Object(to_map(found));
    let mut schema = to_json(<NativeReply as PartialSchema>::schema());
    inline_refs(&mut schema, &components, 0);
    schema
});

/// The derived schemas of the action structs and of the types they refer to, keyed by name as
/// in an OpenAPI document's `components.schemas`.
fn derived_components() -> Value {
    let mut found: Vec<(String, RefOr<Schema>)> = Vec::new();
    macro_rules! derived {
        ($($t:ty),+ $(,)?) => {$(
            found.push((<$t as ToSchema>::name().into_owned(), <$t as PartialSchema>::schema()));
            <$t as ToSchema>::schemas(&mut found);
        )+};
    }
    derived!(
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
    );
    Value::Object(to_map(found))
}

fn to_map(found: Vec<(String, RefOr<Schema>)>) -> Map<String, Value> {
    found
        .into_iter()
        .map(|(name, schema)| (name, to_json(schema)))
        .collect()
}

fn to_json(schema: RefOr<Schema>) -> Value {
    // A derived schema is plain data; serialising it cannot fail short of a bug in the derive,
    // which the unit tests below would show as a missing schema.
    serde_json::to_value(schema).unwrap_or(Value::Null)
}

const REF_PREFIX: &str = "#/components/schemas/";

/// Replaces every `{"$ref": "#/components/schemas/X", ...}` with X's schema (siblings such as
/// `description` kept). Derived schemas do not refer to themselves; the depth bound only stops
/// a mistake from recursing forever.
fn inline_refs(v: &mut Value, components: &Value, depth: usize) {
    let target = v
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix(REF_PREFIX))
        .and_then(|name| components.get(name))
        .filter(|_| depth < 16)
        .cloned();
    if let (Some(Value::Object(mut merged)), Value::Object(m)) = (target, &mut *v) {
        m.remove("$ref");
        merged.extend(std::mem::take(m));
        *v = Value::Object(merged);
        inline_refs(v, components, depth + 1);
        return;
    }
    match v {
        Value::Object(m) => m
            .values_mut()
            .for_each(|x| inline_refs(x, components, depth)),
        Value::Array(a) => a.iter_mut().for_each(|x| inline_refs(x, components, depth)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(v: &Value) -> usize {
        match v {
            Value::Object(m) => {
                usize::from(m.contains_key("$ref")) + m.values().map(refs).sum::<usize>()
            }
            Value::Array(a) => a.iter().map(refs).sum(),
            _ => 0,
        }
    }

    #[test]
    fn every_action_has_a_self_contained_input_schema() {
        let inputs = action_inputs();
        let types: Vec<&str> = inputs.iter().map(|a| a.ty).collect();
        assert_eq!(types, ACTION_TYPES);
        for a in inputs {
            assert!(!a.title.is_empty() && !a.description.is_empty(), "{}", a.ty);
            assert_eq!(a.schema["type"], "object", "{}", a.ty);
            assert_eq!(a.schema["additionalProperties"], false, "{}", a.ty);
            assert!(a.schema["properties"].get("type").is_none(), "{}", a.ty);
            assert_eq!(refs(&a.schema), 0, "{}: {}", a.ty, a.schema);
        }
    }

    #[test]
    fn input_schemas_carry_the_validation_rules() {
        let add = &action_input("add_to_campaign").unwrap().schema;
        // One of the contact aliases and one of the campaign aliases must be given.
        assert_eq!(add["allOf"][0]["oneOf"][0]["required"][0], "contactRef");
        assert!(add["properties"]["personName"]["pattern"].is_string());
        assert!(add["properties"]["campaignId"].is_object());
        let mark = &action_input("mark_status").unwrap().schema;
        assert_eq!(mark["required"], json!(["status"]));
        // The status enum is inlined, not referenced.
        let status = mark["properties"]["status"].to_string();
        assert!(status.contains("disqualified"), "{status}");
        let undo = &action_input("undo_last").unwrap().schema;
        assert_eq!(undo["properties"], json!({}));
        assert!(undo.get("required").is_none(), "{undo}");
        assert!(action_input("no_such_action").is_none());
    }

    #[test]
    fn reply_schema_is_a_self_contained_object() {
        let s = reply_schema();
        assert_eq!(s["type"], "object");
        assert_eq!(refs(s), 0, "{s}");
        let mode = s["properties"]["mode"].to_string();
        assert!(mode.contains("confirmation_required"), "{mode}");
        let reply = NativeReply::result("Done.", json!({}));
        let v = serde_json::to_value(&reply).unwrap();
        for field in s["required"].as_array().unwrap() {
            assert!(v.get(field.as_str().unwrap()).is_some(), "{field} missing");
        }
    }
}
