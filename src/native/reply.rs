//! The native reply (DESIGN §4) and the outcome of one turn as transports see it.

use serde::Serialize;
use serde_json::{Map, Value};

use super::timing::ServerTiming;
use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyMode {
    Result,
    ConfirmationRequired,
    ClarificationRequired,
    Queued,
    Duplicate,
}

impl ReplyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyMode::Result => "result",
            ReplyMode::ConfirmationRequired => "confirmation_required",
            ReplyMode::ClarificationRequired => "clarification_required",
            ReplyMode::Queued => "queued",
            ReplyMode::Duplicate => "duplicate",
        }
    }
}

/// One possible match offered when a reference is ambiguous.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub id: String,
    pub name: String,
    pub company: Option<String>,
    pub title: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Performance {
    pub execution_mode: &'static str,
    pub server_elapsed_ms: f64,
    pub target_ms: f64,
    pub within_target: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct NativeReply {
    pub mode: ReplyMode,
    pub spoken_summary: String,
    pub data: Value,
    pub ids: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_action_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    pub candidates: Vec<Candidate>,
    pub idempotency_key: Option<String>,
    pub audit_id: Option<String>,
    /// Filled in last, when the total time is known.
    pub performance: Option<Performance>,
}

impl NativeReply {
    pub fn new(mode: ReplyMode, spoken: impl AsRef<str>, data: Value) -> Self {
        NativeReply {
            mode,
            spoken_summary: super::speech::speakable(spoken.as_ref()),
            data,
            ids: Map::new(),
            pending_action_id: None,
            expires_at: None,
            candidates: Vec::new(),
            idempotency_key: None,
            audit_id: None,
            performance: None,
        }
    }

    pub fn result(spoken: impl AsRef<str>, data: Value) -> Self {
        Self::new(ReplyMode::Result, spoken, data)
    }

    pub fn with_id(mut self, name: &str, id: impl Into<String>) -> Self {
        self.ids.insert(name.to_string(), Value::String(id.into()));
        self
    }
}

/// What a turn produced, for the transport to render.
pub struct TurnOutcome {
    pub result: Result<NativeReply, ApiError>,
    /// True when the answer was replayed from the idempotency store (`Idempotent-Replayed`).
    pub replayed: bool,
    pub timing: ServerTiming,
    /// `performance` for error replies too.
    pub performance: Performance,
    /// The `Server-Timing` value, `total` equal to `performance.server_elapsed_ms`.
    pub server_timing: String,
}

impl TurnOutcome {
    /// The HTTP status of this outcome.
    pub fn status(&self) -> u16 {
        match &self.result {
            Ok(_) => 200,
            Err(e) => e.status(),
        }
    }

    /// The response envelope: `{ ok, data | error, meta }`. `meta` carries the request id,
    /// timestamp and server time; errors also carry `meta.performance`.
    pub fn envelope(&self, request_id: &str) -> Value {
        let mut meta = Map::new();
        meta.insert("request_id".into(), Value::String(request_id.to_string()));
        meta.insert("timestamp".into(), Value::String(crate::ids::now_rfc3339()));
        meta.insert(
            "server_elapsed_ms".into(),
            serde_json::json!(self.performance.server_elapsed_ms),
        );
        match &self.result {
            Ok(reply) => serde_json::json!({
                "ok": true,
                "data": serde_json::to_value(reply).unwrap_or(Value::Null),
                "meta": meta,
            }),
            Err(e) => {
                meta.insert(
                    "performance".into(),
                    serde_json::to_value(&self.performance).unwrap_or(Value::Null),
                );
                serde_json::json!({ "ok": false, "error": e.to_json(), "meta": meta })
            }
        }
    }
}
