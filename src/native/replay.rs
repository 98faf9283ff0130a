//! Replays (DESIGN §8, §15): a recorded outcome answered again as `duplicate`, with a spoken
//! summary that is true when it is spoken — "I already did that: …", or, when the write was
//! undone since, "I did that earlier, but it was undone since." with `data.undone: true`.

use serde_json::Value;

use super::reply::{NativeReply, ReplyMode};
use super::speech;
use super::Bridge;
use crate::auth::Principal;
use crate::error::ApiResult;
use crate::state::{Outcome, PendingState, Record};

impl Bridge {
    pub(super) async fn replay(&self, p: &Principal, record: &Record) -> ApiResult<NativeReply> {
        let original = match &record.outcome {
            Outcome::Reply { reply } => reply,
            Outcome::Error { error } => return Err(error.to_api_error()),
        };
        let mut r: NativeReply = (**original).clone();
        r.mode = ReplyMode::Duplicate;
        r.audit_id = None;
        r.performance = None;
        if original.mode == ReplyMode::ConfirmationRequired {
            if let Some(spoken) = self.question_now(p, original).await {
                r.spoken_summary = spoken;
            }
            return Ok(r);
        }
        let undone = match &record.undo_id {
            // A replay must not fail because the undo log could not be read; it then says
            // what it did, as it always could.
            Some(id) => self
                .state
                .is_undone(&p.org_id, id)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "undo state unreadable during replay");
                    false
                }),
            None => false,
        };
        if undone {
            r.spoken_summary = "I did that earlier, but it was undone since.".to_string();
            if let Value::Object(m) = r.data.to_mut() {
                m.insert("undone".into(), Value::Bool(true));
            }
        } else {
            r.spoken_summary =
                speech::speakable(&format!("I already did that: {}", original.spoken_summary));
        }
        Ok(r)
    }

    /// What is true now of a replayed question: still open (ask again), or answered since.
    async fn question_now(&self, p: &Principal, asked: &NativeReply) -> Option<String> {
        let pid = asked.pending_action_id.as_deref()?;
        let pending = self.state.pending(&p.org_id, &p.key_id, pid).await.ok()??;
        Some(match pending.state {
            PendingState::Executed => "You confirmed that already, and it's done.".to_string(),
            PendingState::Cancelled => "You cancelled that earlier.".to_string(),
            PendingState::Open if pending.is_expired(crate::state::now_ms()) => {
                "That question expired. Please ask me again.".to_string()
            }
            PendingState::Open => return None,
        })
    }
}
