//! Tool calls of one chat message: each runs its action through the native pipeline (the same
//! resolution, confirmation gate, idempotency and audit as a client's request), under an
//! idempotency key of its own (see [`super::Chat`] for how the keys are made). A model cannot confirm anything: `confirmed` and
//! `pendingActionId` are stripped from its arguments, so a dangerous tool only ever asks.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::auth::Principal;
use crate::error::{ApiError, ErrorCode};
use crate::native::action::ACTION_TYPES;
use crate::native::reply::ReplyMode;
use crate::native::timing::ServerTiming;
use crate::native::{Bridge, Transport};

/// At most this many tool calls run per message, whatever the model asks for.
pub const MAX_CALLS_PER_MESSAGE: usize = 16;

/// One tool call as reported in the chat reply.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ToolCall {
    /// The action type (or `confirm_pending_action` for the user's yes or no).
    pub name: String,
    /// The arguments the call ran with.
    #[schema(value_type = Object)]
    pub arguments: Value,
    /// The native reply of the call (`mode`, `spoken_summary`, `data`, `ids`, ...), or
    /// `{"error": {...}}` when it failed.
    #[schema(value_type = Object)]
    pub result: Value,
}

/// Runs the tool calls of one message and remembers what they did.
pub struct ToolRunner {
    bridge: Arc<Bridge>,
    principal: Arc<Principal>,
    /// Prefix of each call's idempotency key (the call's index follows).
    key_prefix: String,
    /// The user's words, kept in each call's audit record.
    transcript: String,
    pub calls: Vec<ToolCall>,
    /// The pending action the last dangerous call asked about.
    pub asked: Option<String>,
}

/// A native outcome as a tool result: the reply, or its error.
fn result_of(outcome: &crate::native::reply::TurnOutcome) -> Value {
    match &outcome.result {
        Ok(reply) => serde_json::to_value(reply).unwrap_or(Value::Null),
        Err(e) => error_result(e),
    }
}

fn error_result(e: &ApiError) -> Value {
    json!({ "error": {
        "code": e.code.as_str(),
        "message": e.message,
        "details": e.details,
        "spoken_summary": e.spoken_summary,
    }})
}

impl ToolRunner {
    /// `key_prefix`: what each call's idempotency key starts with, `:<n>` following.
    pub fn new(
        bridge: Arc<Bridge>,
        principal: Arc<Principal>,
        key_prefix: String,
        transcript: &str,
    ) -> Self {
        ToolRunner {
            bridge,
            principal,
            key_prefix,
            transcript: transcript.to_string(),
            calls: Vec::new(),
            asked: None,
        }
    }

    /// Runs action `name` with `arguments` (a JSON object); with `alternative`, tries that
    /// reading instead when the first names nothing. Returns the result, also recorded.
    pub async fn run(&mut self, name: &str, arguments: Value, alternative: Option<Value>) -> Value {
        let n = self.calls.len();
        if n >= MAX_CALLS_PER_MESSAGE {
            return error_result(
                &ApiError::validation("tool_calls", "too many tool calls for one message")
                    .with_spoken("That took too many steps."),
            );
        }
        let Some(ty) = ACTION_TYPES.iter().find(|t| **t == name) else {
            let result = error_result(
                &ApiError::validation(
                    "tool",
                    format!("unknown tool '{}'", crate::text::clip(name, 64)),
                )
                .with_spoken("I tried something I can't do."),
            );
            self.calls.push(ToolCall {
                name: crate::text::clip(name, 64),
                arguments,
                result: result.clone(),
            });
            return result;
        };
        let arguments = model_arguments(ty, arguments);
        let mut outcome = self.run_action(n, arguments.clone()).await;
        let mut ran = arguments;
        if let (Err(e), Some(alt)) = (&outcome.result, alternative) {
            if e.code == ErrorCode::ResourceNotFound {
                let alt_ty = alt
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or(ty)
                    .to_string();
                let alt = model_arguments(&alt_ty, alt);
                outcome = self.run_action(n, alt.clone()).await;
                ran = alt;
            }
        }
        if let Ok(reply) = &outcome.result {
            if reply.mode == ReplyMode::ConfirmationRequired {
                self.asked = reply.pending_action_id.clone();
            }
        }
        let result = result_of(&outcome);
        let name = ran
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(ty)
            .to_string();
        let mut shown = ran;
        if let Value::Object(m) = &mut shown {
            m.remove("type");
        }
        self.calls.push(ToolCall {
            name,
            arguments: shown,
            result: result.clone(),
        });
        result
    }

    async fn run_action(&self, n: usize, action: Value) -> crate::native::reply::TurnOutcome {
        let body = json!({
            "action": action,
            "idempotencyKey": format!("{}:{n}", self.key_prefix),
            "transcript": self.transcript,
        });
        self.bridge
            .handle(
                self.principal.clone(),
                body,
                ServerTiming::start(),
                Transport::Chat,
            )
            .await
    }

    /// The user's yes or no to the thread's open question (never the model's).
    pub async fn answer_pending(&mut self, pending_action_id: &str, yes: bool) -> Value {
        let body = json!({
            "pendingActionId": pending_action_id,
            "confirmed": yes,
            "transcript": self.transcript,
        });
        let outcome = self
            .bridge
            .handle(
                self.principal.clone(),
                body,
                ServerTiming::start(),
                Transport::Chat,
            )
            .await;
        let result = result_of(&outcome);
        self.calls.push(ToolCall {
            name: "confirm_pending_action".into(),
            arguments: json!({ "pendingActionId": pending_action_id, "confirmed": yes }),
            result: result.clone(),
        });
        result
    }
}

/// The action object for type `ty` from a model's arguments: `type` set from the tool name,
/// and `confirmed` / `pendingActionId` dropped — a model may ask, never confirm.
fn model_arguments(ty: &str, arguments: Value) -> Value {
    let mut m = match arguments {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    for k in [
        "confirmed",
        "pendingActionId",
        "pending_action_id",
        "idempotencyKey",
    ] {
        m.remove(k);
    }
    m.insert("type".into(), Value::String(ty.to_string()));
    Value::Object(m)
}

/// What a tool result says aloud: its spoken summary, or its error's.
pub fn spoken(result: &Value) -> Option<&str> {
    result["spoken_summary"]
        .as_str()
        .or_else(|| result["error"]["spoken_summary"].as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_can_never_confirm() {
        let a = model_arguments(
            "add_to_campaign",
            json!({"contactRef":"x","campaignRef":"y","confirmed":true,"pendingActionId":"p","type":"undo_last"}),
        );
        assert_eq!(
            a,
            json!({"contactRef":"x","campaignRef":"y","type":"add_to_campaign"})
        );
        assert_eq!(
            model_arguments("undo_last", json!("junk")),
            json!({"type":"undo_last"})
        );
    }

    #[test]
    fn spoken_reads_replies_and_errors() {
        assert_eq!(spoken(&json!({"spoken_summary":"Done."})), Some("Done."));
        assert_eq!(
            spoken(&json!({"error":{"spoken_summary":"No."}})),
            Some("No.")
        );
        assert_eq!(spoken(&json!({})), None);
    }
}
