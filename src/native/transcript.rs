//! Transcript turns (DESIGN §19): a request that carries only what the user said. The built-in
//! intent parser reads it into the request a client would have sent — an action, or the yes/no
//! of a confirmation — and the turn then runs the same pipeline as any other. The reply says
//! what was understood (`data.parsed_action`), so a client can show or log it.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use super::reply::{NativeReply, ReplyMode, TurnOutcome};
use super::request::NativeRequest;
use super::timing::ServerTiming;
use super::{Bridge, Transport};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::intent::{self, Clock, Understanding};

/// What an utterance means (see [`Bridge::interpret`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Interpretation {
    /// An action object as a client would send it, and another reading of the same words.
    Action {
        action: Value,
        alternative: Option<Value>,
    },
    /// "yes" (true) or "no" (false).
    Confirm(bool),
    Unrecognized,
}

/// What a transcript turns into.
enum Reading {
    /// A request to run, with the action as understood (none for a confirmation) and another
    /// reading to try when the first names nothing.
    Run {
        req: Box<NativeRequest>,
        parsed: Option<Value>,
        alternative: Option<(Box<NativeRequest>, Value)>,
    },
    /// An answer without running anything: nothing recognised, nothing to confirm, or an
    /// action missing a detail.
    Answer(ApiResult<NativeReply>),
}

impl Bridge {
    /// Reads a transcript-only request and runs what it means.
    pub(super) async fn transcript_turn(
        self: &Arc<Self>,
        principal: Arc<Principal>,
        req: NativeRequest,
        mut timing: ServerTiming,
        transport: Transport,
    ) -> TurnOutcome {
        let t = Instant::now();
        let reading = self.read_transcript(&principal, &req).await;
        timing.record("intent", t.elapsed());
        match reading {
            Reading::Answer(result) => self.finish(
                result,
                false,
                timing,
                req.execution_mode,
                "transcript",
                transport,
            ),
            Reading::Run {
                req,
                parsed,
                alternative,
            } => {
                let mut outcome = self
                    .dispatch(principal.clone(), *req, timing, transport)
                    .await;
                let mut parsed = parsed;
                // "Tell me about Acme": no company called that, so maybe a person is.
                if let (Err(e), Some((alt, alt_parsed))) = (&outcome.result, alternative) {
                    if e.code == ErrorCode::ResourceNotFound {
                        let timing = outcome.timing.clone();
                        outcome = self.dispatch(principal, *alt, timing, transport).await;
                        parsed = Some(alt_parsed);
                    }
                }
                if let (Ok(reply), Some(parsed)) = (&mut outcome.result, parsed) {
                    with_parsed_action(reply, parsed);
                }
                outcome
            }
        }
    }

    /// What `text` means for this caller: an action (with spoken dates placed in the org's
    /// time zone, and another reading to try when the first names nothing), a yes or no, or
    /// nothing recognised.
    pub async fn interpret(&self, p: &Principal, text: &str) -> ApiResult<Interpretation> {
        Ok(match intent::understand(text) {
            Understanding::Unrecognized => Interpretation::Unrecognized,
            Understanding::Confirm(yes) => Interpretation::Confirm(yes),
            Understanding::Action(intent) => {
                let zone = if intent.needs_clock() {
                    self.backend.time_zone(&p.org_id).await?
                } else {
                    crate::domain::TimeZone::UTC
                };
                let clock = Clock::new(chrono::Utc::now(), zone.0);
                let (action, alternative) = intent.resolve(&clock);
                Interpretation::Action {
                    action: action.to_json(),
                    alternative: alternative.map(|a| a.to_json()),
                }
            }
        })
    }

    async fn read_transcript(&self, p: &Principal, req: &NativeRequest) -> Reading {
        let text = req.transcript.as_deref().unwrap_or_default();
        let understood = match &req.pending_action_id {
            // With an id, only a yes or a no can answer it.
            Some(_) => match intent::confirmation_of(text) {
                Some(yes) => Interpretation::Confirm(yes),
                None => {
                    return Reading::Answer(Err(ApiError::validation(
                        "confirmed",
                        "missing, and the transcript is not a yes or a no",
                    )
                    .with_spoken("Should I go ahead or cancel?")))
                }
            },
            None => match self.interpret(p, text).await {
                Ok(i) => i,
                Err(e) => return Reading::Answer(Err(e)),
            },
        };
        match understood {
            Interpretation::Unrecognized => Reading::Answer(Ok(unrecognized())),
            Interpretation::Confirm(yes) => self.voice_confirmation(p, req, yes).await,
            Interpretation::Action {
                action,
                alternative,
            } => {
                let req2 = match req.with_action(action.clone()) {
                    Ok(r) => r,
                    Err(e) if e.code == ErrorCode::ValidationError => {
                        return Reading::Answer(Ok(incomplete(&e, action)))
                    }
                    Err(e) => return Reading::Answer(Err(e)),
                };
                let alternative = alternative.and_then(|json| {
                    req.with_action(json.clone())
                        .ok()
                        .map(|r| (Box::new(r), json))
                });
                Reading::Run {
                    req: Box::new(req2),
                    parsed: Some(action),
                    alternative,
                }
            }
        }
    }

    /// "Yes" / "no": the pending action named by the request, or the caller key's newest open
    /// one.
    async fn voice_confirmation(&self, p: &Principal, req: &NativeRequest, yes: bool) -> Reading {
        let pending = match &req.pending_action_id {
            Some(id) => Some(id.clone()),
            None => match self.state.latest_open_pending(&p.org_id, &p.key_id).await {
                Ok(found) => found,
                Err(e) => return Reading::Answer(Err(e)),
            },
        };
        let Some(id) = pending else {
            let mut reply = NativeReply::result(
                "There's nothing waiting for a yes or no right now.",
                json!({ "reason": "nothing_pending", "confirmed": yes }),
            );
            reply.idempotency_key = req.idempotency_key.clone();
            return Reading::Answer(Ok(reply));
        };
        Reading::Run {
            req: Box::new(req.with_confirmation(id, yes)),
            parsed: None,
            alternative: None,
        }
    }
}

/// The reply to words that were not understood.
pub fn unrecognized() -> NativeReply {
    NativeReply::new(
        ReplyMode::ClarificationRequired,
        intent::HINT,
        json!({ "reason": "unrecognized" }),
    )
}

/// An action understood but missing a detail ("send John an email" without what it says):
/// a question for the user rather than an error, since the words were understood.
pub fn incomplete(e: &ApiError, parsed: Value) -> NativeReply {
    let field = e
        .details
        .as_deref()
        .and_then(|d| d.split(':').next())
        .unwrap_or("action")
        .to_string();
    let mut reply = NativeReply::new(
        ReplyMode::ClarificationRequired,
        &e.spoken_summary,
        json!({ "reason": "incomplete", "field": field }),
    );
    with_parsed_action(&mut reply, parsed);
    reply
}

/// Adds `parsed_action` to the reply's `data`.
fn with_parsed_action(reply: &mut NativeReply, parsed: Value) {
    match reply.data.to_mut() {
        Value::Object(m) => {
            m.insert("parsed_action".into(), parsed);
        }
        other => {
            let previous = std::mem::take(other);
            let mut m = serde_json::Map::new();
            if !previous.is_null() {
                m.insert("result".into(), previous);
            }
            m.insert("parsed_action".into(), parsed);
            *other = Value::Object(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsed_action_joins_any_data() {
        let mut r = NativeReply::result("Done.", json!({"a": 1}));
        with_parsed_action(&mut r, json!({"type": "undo_last"}));
        assert_eq!(
            r.data,
            json!({"a": 1, "parsed_action": {"type": "undo_last"}})
        );
        let mut r = NativeReply::result("Done.", Value::Null);
        with_parsed_action(&mut r, json!({"type": "undo_last"}));
        assert_eq!(r.data, json!({"parsed_action": {"type": "undo_last"}}));
    }

    #[test]
    fn an_incomplete_action_asks_for_the_missing_detail() {
        let e = ApiError::validation("action.body", "missing")
            .with_spoken("What should the message say?");
        let r = incomplete(&e, json!({"type": "send_message", "contactRef": "John"}));
        assert_eq!(r.mode, ReplyMode::ClarificationRequired);
        assert_eq!(r.data["field"], "action.body");
        assert_eq!(r.spoken_summary, "What should the message say?");
    }

    #[test]
    fn the_unrecognized_hint_is_speakable() {
        let r = unrecognized();
        assert!(
            r.spoken_summary.chars().count() <= 200,
            "{}",
            r.spoken_summary
        );
        assert_eq!(r.data["reason"], "unrecognized");
    }
}
