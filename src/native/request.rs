//! The native request (DESIGN §3): the same object arrives as an HTTP body or a WebSocket frame.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::action::{parse_action, Action};
use crate::error::{ApiError, ApiResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionMode {
    Fast,
    Standard,
}

impl ExecutionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionMode::Fast => "fast",
            ExecutionMode::Standard => "standard",
        }
    }
}

#[derive(Debug, Clone)]
pub struct NativeRequest {
    pub action: Option<Action>,
    /// The action as sent, for fingerprints and audit records.
    pub action_json: Option<Value>,
    pub transcript: Option<String>,
    pub idempotency_key: Option<String>,
    pub execution_mode: ExecutionMode,
    pub audit_read_actions: bool,
    pub pending_action_id: Option<String>,
    pub confirmed: Option<bool>,
    /// SHA-256 of the canonical JSON of `action`, `pendingActionId` and `confirmed`.
    pub fingerprint: [u8; 32],
}

impl NativeRequest {
    /// A transcript turn: only the words are there, the action or the yes/no is to be read
    /// from them.
    pub fn needs_understanding(&self) -> bool {
        self.action.is_none()
            && self.confirmed.is_none()
            && self
                .transcript
                .as_deref()
                .is_some_and(|t| !t.trim().is_empty())
    }

    /// This request with the action read from its transcript, validated like a sent one.
    pub fn with_action(&self, action_json: Value) -> ApiResult<NativeRequest> {
        let action = parse_action(&action_json)?;
        let mut req = self.clone();
        req.fingerprint = fingerprint(Some(&action_json), None, None);
        req.action = Some(action);
        req.action_json = Some(action_json);
        req.pending_action_id = None;
        Ok(req)
    }

    /// This request as the answer `confirmed` to pending action `pending_id`.
    pub fn with_confirmation(&self, pending_id: String, confirmed: bool) -> NativeRequest {
        let mut req = self.clone();
        req.fingerprint = fingerprint(None, Some(&pending_id), Some(confirmed));
        req.pending_action_id = Some(pending_id);
        req.confirmed = Some(confirmed);
        req
    }

    /// A read action (not a confirmation): nothing to claim, nothing to keep.
    pub fn is_read(&self) -> bool {
        self.pending_action_id.is_none() && self.action.as_ref().is_some_and(|a| a.is_read())
    }

    /// The action as sent, or JSON `null` on a bare confirmation.
    pub fn action_json_or_null(&self) -> &Value {
        static NULL: Value = Value::Null;
        self.action_json.as_ref().unwrap_or(&NULL)
    }
}

const MAX_TRANSCRIPT: usize = 10_000;

/// Every top-level field a request may carry (DESIGN §3); `id` is the WebSocket frame's request
/// id, which the socket adapter reads and leaves in the frame.
pub const TOP_LEVEL_FIELDS: &[&str] = &[
    "action",
    "transcript",
    "idempotencyKey",
    "executionMode",
    "auditReadActions",
    "pendingActionId",
    "confirmed",
    "id",
];

fn string_field(obj: &Map<String, Value>, key: &str) -> ApiResult<Option<String>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::validation(key, "expected a string")),
    }
}

fn bool_field(obj: &Map<String, Value>, key: &str) -> ApiResult<Option<bool>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::validation(key, "expected true or false")),
    }
}

/// 1–255 visible ASCII characters (DESIGN §3).
pub fn validate_idempotency_key(k: &str) -> ApiResult<()> {
    if k.is_empty() || k.len() > 255 || !k.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(ApiError::validation(
            "idempotencyKey",
            "must be 1 to 255 visible ASCII characters",
        ));
    }
    Ok(())
}

impl NativeRequest {
    /// Validates a request body. Unknown fields, top-level or inside `action`, are errors that
    /// name the field and suggest the known one it resembles: a mistyped `idempotency_key` must
    /// not let a write run without its key.
    pub fn parse(body: Value) -> ApiResult<NativeRequest> {
        let Value::Object(mut obj) = body else {
            return Err(ApiError::validation("body", "expected a JSON object"));
        };
        if let Some(unknown) = obj.keys().find(|k| !TOP_LEVEL_FIELDS.contains(&k.as_str())) {
            return Err(super::action::unknown_field(
                unknown,
                unknown,
                &TOP_LEVEL_FIELDS[..TOP_LEVEL_FIELDS.len() - 1],
            )
            .with_spoken(
                "Part of that request isn't something I understand, so I didn't run it.",
            ));
        }
        let transcript = string_field(&obj, "transcript")?;
        if transcript
            .as_ref()
            .is_some_and(|t| t.chars().count() > MAX_TRANSCRIPT)
        {
            return Err(ApiError::validation(
                "transcript",
                format!("longer than {MAX_TRANSCRIPT} characters"),
            ));
        }
        let idempotency_key = string_field(&obj, "idempotencyKey")?;
        if let Some(k) = &idempotency_key {
            validate_idempotency_key(k)?;
        }
        let execution_mode = match string_field(&obj, "executionMode")?.as_deref() {
            None | Some("fast") => ExecutionMode::Fast,
            Some("standard") => ExecutionMode::Standard,
            Some(other) => {
                return Err(ApiError::validation(
                    "executionMode",
                    format!(
                        "'{}' is not one of: fast, standard",
                        crate::text::clip(other, 32)
                    ),
                ))
            }
        };
        let audit_read_actions = bool_field(&obj, "auditReadActions")?.unwrap_or(false);
        let pending_action_id =
            string_field(&obj, "pendingActionId")?.filter(|s| !s.trim().is_empty());
        if pending_action_id
            .as_ref()
            .is_some_and(|p| p.chars().count() > 128)
        {
            return Err(ApiError::validation(
                "pendingActionId",
                "longer than 128 characters",
            ));
        }
        let confirmed = bool_field(&obj, "confirmed")?;
        let action_json = match obj.remove("action") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        };
        let action = action_json.as_ref().map(parse_action).transpose()?;
        // A transcript alone is a transcript turn: the intent parser supplies the action, or
        // the yes/no of a confirmation (DESIGN §19).
        let spoken = transcript.as_deref().is_some_and(|t| !t.trim().is_empty());
        if action.is_none() && pending_action_id.is_none() && !spoken {
            return Err(ApiError::validation("action", "missing")
                .with_spoken("I didn't get an action to run."));
        }
        if pending_action_id.is_some() && confirmed.is_none() && (action.is_some() || !spoken) {
            return Err(ApiError::validation(
                "confirmed",
                "missing: send true to execute or false to cancel",
            )
            .with_spoken("Should I go ahead or cancel?"));
        }
        let fingerprint = fingerprint(
            action_json.as_ref(),
            pending_action_id.as_deref(),
            confirmed,
        );
        Ok(NativeRequest {
            action,
            action_json,
            transcript,
            idempotency_key,
            execution_mode,
            audit_read_actions,
            pending_action_id,
            confirmed,
            fingerprint,
        })
    }
}

/// SHA-256 over the canonical JSON (sorted keys, no whitespace) of the fields that define what
/// the request does; `transcript` and `executionMode` do not count.
pub fn fingerprint(
    action: Option<&Value>,
    pending: Option<&str>,
    confirmed: Option<bool>,
) -> [u8; 32] {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"{\"action\":");
    match action {
        Some(a) => write_canonical(a, &mut buf),
        None => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b",\"confirmed\":");
    buf.extend_from_slice(match confirmed {
        Some(true) => b"true",
        Some(false) => b"false",
        None => b"null",
    });
    buf.extend_from_slice(b",\"pendingActionId\":");
    match pending {
        Some(p) => write_leaf(p, &mut buf),
        None => buf.extend_from_slice(b"null"),
    }
    buf.push(b'}');
    Sha256::digest(&buf).into()
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            // A map's keys are unique, so an unstable sort is deterministic.
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_leaf(k, out);
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(x, out);
            }
            out.push(b']');
        }
        other => write_leaf(other, out),
    }
}

/// A string or scalar exactly as serde_json writes it (fingerprints already stored were made
/// from that text, so it must not change).
fn write_leaf<T: serde::Serialize + ?Sized>(v: &T, out: &mut Vec<u8>) {
    // Writing a string or scalar into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_defaults() {
        let r =
            NativeRequest::parse(json!({"action":{"type":"undo_last"},"id":"frame-1"})).unwrap();
        assert_eq!(r.execution_mode, ExecutionMode::Fast);
        assert!(!r.audit_read_actions);
        assert!(r.idempotency_key.is_none());
    }

    #[test]
    fn unknown_top_level_fields_are_named_with_a_hint() {
        let e = |v: Value| {
            let e = NativeRequest::parse(v).unwrap_err();
            assert_eq!(e.code, crate::error::ErrorCode::ValidationError);
            assert!(!e.spoken_summary.contains('_'), "{}", e.spoken_summary);
            e.details.unwrap_or_default()
        };
        // (body, details)
        let table = [
            (
                json!({"action":{"type":"undo_last"},"idempotency_key":"k1"}),
                "idempotency_key: unknown field; did you mean idempotencyKey?",
            ),
            (
                json!({"action":{"type":"undo_last"},"pending_action_id":"p"}),
                "pending_action_id: unknown field; did you mean pendingActionId?",
            ),
            (
                json!({"action":{"type":"undo_last"},"confimed":true}),
                "confimed: unknown field; did you mean confirmed?",
            ),
            (
                json!({"action":{"type":"undo_last"},"client":"glasses"}),
                "client: unknown field; known fields: action, transcript, idempotencyKey, \
                 executionMode, auditReadActions, pendingActionId, confirmed",
            ),
        ];
        for (body, details) in table {
            assert_eq!(e(body), details);
        }
    }

    #[test]
    fn fingerprint_ignores_key_order_transcript_and_mode() {
        let a = NativeRequest::parse(json!({"action":{"type":"lookup_person","personName":"x","company":"y"},"transcript":"a"})).unwrap();
        let b = NativeRequest::parse(json!({"action":{"company":"y","personName":"x","type":"lookup_person"},"transcript":"b","executionMode":"standard"})).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        let c = NativeRequest::parse(json!({"action":{"type":"lookup_person","personName":"z"}}))
            .unwrap();
        assert_ne!(a.fingerprint, c.fingerprint);
    }

    #[test]
    fn rejects_bad_top_level_fields() {
        let e = |v: Value| {
            NativeRequest::parse(v)
                .unwrap_err()
                .details
                .unwrap_or_default()
        };
        assert_eq!(e(json!({})), "action: missing");
        assert_eq!(e(json!({"transcript":"  "})), "action: missing");
        assert_eq!(
            e(json!({"pendingActionId":"p","action":{"type":"undo_last"},"transcript":"yes"})),
            "confirmed: missing: send true to execute or false to cancel"
        );
        assert_eq!(
            e(json!({"action":{"type":"undo_last"},"idempotencyKey":""})),
            "idempotencyKey: must be 1 to 255 visible ASCII characters"
        );
        assert_eq!(
            e(json!({"action":{"type":"undo_last"},"idempotencyKey":"a b"})),
            "idempotencyKey: must be 1 to 255 visible ASCII characters"
        );
        assert!(
            e(json!({"action":{"type":"undo_last"},"idempotencyKey":"k".repeat(256)}))
                .starts_with("idempotencyKey")
        );
        assert!(
            e(json!({"action":{"type":"undo_last"},"executionMode":"turbo"}))
                .starts_with("executionMode")
        );
        assert_eq!(
            e(json!({"pendingActionId":"p"})),
            "confirmed: missing: send true to execute or false to cancel"
        );
        assert_eq!(
            e(json!({"action":{"type":"undo_last"},"confirmed":"yes"})),
            "confirmed: expected true or false"
        );
        assert_eq!(e(json!([1])), "body: expected a JSON object");
    }

    #[test]
    fn a_transcript_alone_is_read_later_with_the_same_fingerprint_as_sent() {
        let r =
            NativeRequest::parse(json!({"transcript":"undo that","idempotencyKey":"k"})).unwrap();
        assert!(r.needs_understanding());
        let read = r.with_action(json!({"type":"undo_last"})).unwrap();
        let sent = NativeRequest::parse(json!({"action":{"type":"undo_last"}})).unwrap();
        assert_eq!(read.fingerprint, sent.fingerprint);
        assert!(!read.needs_understanding());
        let yes = NativeRequest::parse(json!({"transcript":"yes","pendingActionId":"p"})).unwrap();
        assert!(yes.needs_understanding());
        let c = yes.with_confirmation("p".into(), true);
        let sent = NativeRequest::parse(json!({"pendingActionId":"p","confirmed":true})).unwrap();
        assert_eq!(c.fingerprint, sent.fingerprint);
    }

    #[test]
    fn key_accepts_visible_ascii() {
        assert!(validate_idempotency_key("voice-turn-01:~!").is_ok());
        assert!(validate_idempotency_key("naïve").is_err());
    }
}
