//! The native reply (DESIGN §4) and the outcome of one turn as transports see it.

use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::timing::ServerTiming;
use crate::error::ApiError;

/// What kind of answer this is (DESIGN §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Candidate {
    pub id: String,
    pub name: String,
    pub company: Option<String>,
    pub title: Option<String>,
}

/// Server time of the turn against the latency target.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Performance {
    /// `fast` or `standard`.
    #[schema(value_type = String, examples("fast"))]
    pub execution_mode: &'static str,
    pub server_elapsed_ms: f64,
    pub target_ms: f64,
    pub within_target: bool,
}

/// The `data` of a successful native reply. Deserialisable because finished outcomes are stored
/// for replay (without `performance`, which belongs to each turn).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NativeReply {
    pub mode: ReplyMode,
    /// One or two plain sentences for a TTS engine (no ids, URLs or markdown).
    pub spoken_summary: String,
    /// Structured result; its fields depend on the action.
    #[schema(value_type = Object)]
    pub data: ReplyData,
    /// Ids of the records involved, e.g. `contact_id`, `campaign_id`, `draft_id`.
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub ids: Map<String, Value>,
    /// Only with `confirmation_required`: send it back with `confirmed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_action_id: Option<String>,
    /// Only with `confirmation_required`: when the pending action expires (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// With `clarification_required`: up to 5 matches to choose from.
    pub candidates: Vec<Candidate>,
    /// The effective idempotency key, if any.
    #[schema(required = true)]
    pub idempotency_key: Option<String>,
    /// The audit record written for this turn, or null when none was written.
    #[schema(required = true)]
    pub audit_id: Option<String>,
    /// Filled in last, when the total time is known.
    #[schema(required = true)]
    #[serde(skip_deserializing)]
    pub performance: Option<Performance>,
}

impl NativeReply {
    pub fn new(mode: ReplyMode, spoken: impl AsRef<str>, data: impl Into<ReplyData>) -> Self {
        NativeReply {
            mode,
            spoken_summary: super::speech::speakable(spoken.as_ref()),
            data: data.into(),
            ids: Map::new(),
            pending_action_id: None,
            expires_at: None,
            candidates: Vec::new(),
            idempotency_key: None,
            audit_id: None,
            performance: None,
        }
    }

    pub fn result(spoken: impl AsRef<str>, data: impl Into<ReplyData>) -> Self {
        Self::new(ReplyMode::Result, spoken, data)
    }

    pub fn with_id(mut self, name: &str, id: impl Into<String>) -> Self {
        self.ids.insert(name.to_string(), Value::String(id.into()));
        self
    }
}

/// A reply's `data`, shared by every copy of the reply: a cached read hands the same tree to
/// each hit instead of deep-copying it. Once [`ReplyData::compact`]ed, only its JSON text is
/// kept, so each hit writes those bytes instead of walking a tree again. A reply built
/// from typed records ([`ReplyData::of`]) starts as text alone; the tree is parsed from it only
/// if someone reads or changes it, which a plain read's answer never needs.
#[derive(Clone)]
pub struct ReplyData(Arc<SharedData>);

#[derive(Clone)]
struct SharedData {
    /// The tree; for data made from its text, filled from `json` on first use.
    value: OnceLock<Value>,
    /// The serialization of the value, when it was compacted or made from records; never out of
    /// date, since every mutable borrow clears it. At least one of the two is always set.
    json: Option<Box<RawValue>>,
}

impl ReplyData {
    pub fn new(value: Value) -> Self {
        ReplyData(Arc::new(SharedData {
            value: OnceLock::from(value),
            json: None,
        }))
    }

    /// Data serialized straight from typed records, without building a tree first.
    pub fn of<T: Serialize>(records: &T) -> Self {
        match serde_json::value::to_raw_value(records) {
            Ok(json) => ReplyData(Arc::new(SharedData {
                value: OnceLock::new(),
                json: Some(json),
            })),
            // Only maps with non-string keys fail, and no reply record has one.
            Err(e) => {
                tracing::error!(error = %e, "cannot serialize a reply's records");
                ReplyData::new(Value::Null)
            }
        }
    }

    /// Keeps only the JSON text (made now if there is none) and drops the tree, for a reply
    /// that a cache holds and serves many times: serving needs only the text, and the tree
    /// takes several times its memory. Whoever reads or changes the data later parses the text
    /// again.
    pub fn compact(&mut self) {
        if self.0.value.get().is_none() {
            return;
        }
        let json = match &self.0.json {
            Some(json) => json.clone(),
            None => match serde_json::value::to_raw_value(self.value()) {
                Ok(json) => json,
                Err(e) => {
                    tracing::error!(error = %e, "cannot serialize a reply's data");
                    return;
                }
            },
        };
        *self = ReplyData(Arc::new(SharedData {
            value: OnceLock::new(),
            json: Some(json),
        }));
    }

    /// The length of the data's JSON text.
    pub fn json_len(&self) -> usize {
        match &self.0.json {
            Some(json) => json.get().len(),
            None => self.value().to_string().len(),
        }
    }

    /// The value, for changing it: copied first if another reply shares it.
    pub fn to_mut(&mut self) -> &mut Value {
        let shared = Arc::make_mut(&mut self.0);
        let value = match shared.value.take() {
            Some(v) => v,
            None => parse(shared.json.as_deref()),
        };
        shared.json = None;
        shared.value = OnceLock::from(value);
        match shared.value.get_mut() {
            Some(v) => v,
            None => unreachable!("the cell was filled on the line above"),
        }
    }

    fn value(&self) -> &Value {
        self.0.value.get_or_init(|| parse(self.0.json.as_deref()))
    }
}

/// Reads back text this module serialized itself, so it always parses.
fn parse(json: Option<&RawValue>) -> Value {
    json.and_then(|raw| serde_json::from_str(raw.get()).ok())
        .unwrap_or(Value::Null)
}

impl Deref for ReplyData {
    type Target = Value;

    fn deref(&self) -> &Value {
        self.value()
    }
}

impl From<Value> for ReplyData {
    fn from(value: Value) -> Self {
        ReplyData::new(value)
    }
}

impl PartialEq<Value> for ReplyData {
    fn eq(&self, other: &Value) -> bool {
        self.value() == other
    }
}

impl std::fmt::Debug for ReplyData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.value().fmt(f)
    }
}

impl Serialize for ReplyData {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0.json {
            Some(raw) => raw.serialize(s),
            None => self.value().serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ReplyData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(ReplyData::new)
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

    /// The response envelope `{ ok, data | error, meta }` as JSON bytes. `meta` carries the
    /// request id, timestamp and server time; errors also carry `meta.performance`. For
    /// WebSocket frames, `frame` adds the client's `id` and `meta.server_timing`.
    pub fn envelope_bytes(&self, request_id: &str, frame: Option<FrameInfo<'_>>) -> Vec<u8> {
        let env = Envelope {
            id: frame.as_ref().and_then(|f| f.id),
            ok: self.result.is_ok(),
            data: self.result.as_ref().ok(),
            error: self.result.as_ref().err().map(ApiError::body),
            meta: Meta {
                request_id,
                timestamp: crate::ids::now_rfc3339(),
                server_elapsed_ms: self.performance.server_elapsed_ms,
                performance: self.result.is_err().then_some(&self.performance),
                server_timing: frame.as_ref().map(|_| self.server_timing.as_str()),
                idempotent_replayed: (frame.is_some() && self.replayed).then_some(true),
            },
        };
        serde_json::to_vec(&env).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot serialize a native reply");
            br#"{"ok":false,"error":{"code":"INTERNAL_ERROR","message":"Unexpected server error","details":"","docs_url":"/docs#internal_error","spoken_summary":"Something went wrong on my side. Please try again."}}"#.to_vec()
        })
    }
}

/// What a WebSocket reply frame adds to the envelope.
pub struct FrameInfo<'a> {
    /// The client's request id (absent when it could not be read).
    pub id: Option<&'a str>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a NativeReply>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<crate::error::ErrorBody<'a>>,
    meta: Meta<'a>,
}

#[derive(Serialize)]
struct Meta<'a> {
    request_id: &'a str,
    timestamp: String,
    server_elapsed_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    performance: Option<&'a Performance>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_timing: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotent_replayed: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compacted_data_serializes_as_the_value_and_a_change_drops_the_text() {
        let value = json!({"contact": {"name": "Sarah \"S\" Chen", "n": 1.5}, "list": [1, null]});
        let mut data = ReplyData::new(value.clone());
        let plain = serde_json::to_string(&data).unwrap();
        data.compact();
        assert!(data.0.json.is_some());
        assert!(data.0.value.get().is_none(), "the tree is dropped");
        assert_eq!(data.json_len(), plain.len());
        assert_eq!(serde_json::to_string(&data).unwrap(), plain);
        // The value serializer (MCP's structuredContent) reads the frozen text back.
        assert_eq!(serde_json::to_value(&data).unwrap(), value);

        // A copy shares the tree; changing it copies first, so the other copy is untouched.
        let shared = data.clone();
        assert!(Arc::ptr_eq(&shared.0, &data.0));
        data.to_mut()["undone"] = json!(true);
        assert!(data.0.json.is_none());
        assert_eq!(shared, value);
        assert_eq!(data["undone"], true);
        assert_eq!(
            serde_json::to_value(&data).unwrap()["undone"],
            json!(true),
            "the old text is not served after a change"
        );
    }

    #[test]
    fn data_made_from_records_is_their_text_until_it_is_read_or_changed() {
        #[derive(Serialize)]
        struct Person<'a> {
            name: &'a str,
            title: Option<&'a str>,
            tags: Vec<u8>,
        }
        let person = Person {
            name: "Sarah \"S\" Chen",
            title: None,
            tags: vec![1, 2],
        };
        let expected = json!({"name": "Sarah \"S\" Chen", "title": null, "tags": [1, 2]});
        let mut data = ReplyData::of(&person);
        assert!(
            data.0.value.get().is_none(),
            "no tree until someone reads it"
        );
        assert_eq!(
            serde_json::to_string(&data).unwrap(),
            serde_json::to_string(&expected).unwrap(),
            "the same bytes as the tree would give, in field order"
        );
        assert!(
            data.0.value.get().is_none(),
            "writing it out does not parse it"
        );
        assert_eq!(data["tags"][1], 2);
        assert_eq!(data, expected);

        let shared = data.clone();
        data.to_mut()["undone"] = json!(true);
        assert!(data.0.json.is_none());
        assert_eq!(shared, expected, "the other copy keeps the old text");
        assert_eq!(serde_json::to_value(&data).unwrap()["undone"], true);
    }

    #[test]
    fn a_reply_round_trips_through_its_stored_form() {
        let mut reply =
            NativeReply::result("Done.", json!({"x": [1, 2]})).with_id("contact_id", "c1");
        reply.data.compact();
        let stored = serde_json::to_string(&reply).unwrap();
        let back: NativeReply = serde_json::from_str(&stored).unwrap();
        assert_eq!(back.data, json!({"x": [1, 2]}));
        assert_eq!(back.ids["contact_id"], "c1");
    }
}
