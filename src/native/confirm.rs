//! Questions and confirmations (DESIGN §6, §15): a dangerous plan is parked as a pending
//! action and asked about; `pendingActionId` + `confirmed` answers it. A pending action belongs
//! to the API key that asked; it executes at most once, whatever the idempotency keys of the
//! confirmations, concurrency or restarts: its settlement commits with the effect, and a
//! settled one only replays.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::plan::Plan;
use super::reply::{NativeReply, ReplyMode};
use super::request::{self, NativeRequest};
use super::timing::ServerTiming;
use super::{lower_first, speech, Bridge, Keep, Turn};
use crate::auth::Principal;
use crate::crm::{Effect, Execution, WriteRequest};
use crate::error::{ApiError, ErrorCode};
use crate::state::claims::Claim;
use crate::state::{expiry_ms, now_ms, PendingAction, PendingState, Record, Scope, Seal};
use crate::telemetry;

fn not_found(pid: &str) -> ApiError {
    ApiError::not_found("Pending action")
        .with_details(format!(
            "pendingActionId: no pending action '{}'",
            speech::snippet(pid, 64)
        ))
        .with_spoken("I couldn't find that request to confirm. Please ask again.")
}

fn cancelled() -> ApiError {
    ApiError::not_found("Pending action")
        .with_details("pendingActionId: that action was cancelled")
        .with_spoken("That request was cancelled, so there's nothing to confirm.")
}

fn expired(p: &PendingAction) -> ApiError {
    ApiError::new(ErrorCode::PendingActionExpired, "Pending action expired")
        .with_details(format!(
            "pendingActionId: expired at {}",
            p.expires_at_rfc3339()
        ))
        .with_spoken("That confirmation expired. Please ask me again.")
}

impl Bridge {
    pub(super) async fn confirm(
        &self,
        p: &Principal,
        req: &NativeRequest,
        pid: &str,
        timing: &mut ServerTiming,
    ) -> Turn {
        let turn = self.confirm_inner(p, req, pid, timing).await;
        telemetry::confirmation(match &turn.result {
            _ if turn.replayed => "duplicate",
            Ok(r) if r.data.get("cancelled") == Some(&Value::Bool(true)) => "cancelled",
            Ok(_) => "executed",
            Err(e) if e.code == ErrorCode::PendingActionExpired => "expired",
            Err(e) if e.code == ErrorCode::ResourceNotFound => "not_found",
            Err(_) => "failed",
        });
        turn
    }

    async fn confirm_inner(
        &self,
        p: &Principal,
        req: &NativeRequest,
        pid: &str,
        timing: &mut ServerTiming,
    ) -> Turn {
        let t = Instant::now();
        let found = self.state.pending(&p.org_id, &p.key_id, pid).await;
        timing.record("state", t.elapsed());
        let pending = match found {
            Ok(Some(pending)) => pending,
            Ok(None) => return Turn::rejected(not_found(pid)),
            Err(e) => return Turn::rejected(e),
        };
        if let Some(action) = &req.action {
            if let Err(e) = super::control::same_type(action, &pending) {
                return Turn::rejected(e);
            }
        }
        let derived = Scope::new(&p.org_id, &p.key_id, pending.confirmation_key());
        match pending.state {
            PendingState::Executed => return self.already_ran(p, req, &derived).await,
            PendingState::Cancelled => return Turn::rejected(cancelled()),
            PendingState::Open => {}
        }
        // DESIGN §21: a confirmation binds the action it names, or nothing runs. Checked only
        // while the action can still run: once it ran, resolving the action again would see
        // its own effect (already in the campaign), and a settled one only replays anyway.
        if let Some(action) = &req.action {
            let bound = self
                .check_binding(p, action, req.action_json_or_null(), &pending, timing)
                .await;
            if let Err(e) = bound {
                return Turn::rejected(e);
            }
        }
        // One fingerprint per pending action: every confirmation of it is the same request.
        let fingerprint = request::fingerprint(None, Some(&pending.id), Some(true));
        let wait = Duration::from_millis(self.cfg.idempotency_wait_ms);
        let t = Instant::now();
        let claim = self.claims.claim(&derived, fingerprint, wait).await;
        timing.record("idem", t.elapsed());
        let guard = match claim {
            Err(e) => return Turn::rejected(e),
            Ok(Claim::Replay(record)) => return self.replayed(p, req, &record).await,
            Ok(Claim::Owner(g)) => g,
            Ok(Claim::Reused(_) | Claim::ReusedRunning | Claim::InUse) => {
                return Turn::rejected(
                    ApiError::new(
                        ErrorCode::IdempotencyKeyInUse,
                        "This action is being confirmed right now",
                    )
                    .with_retry_after(1),
                )
            }
        };
        // Read again as the owner: a twin may have settled it while this one waited.
        let pending = match self.state.pending(&p.org_id, &p.key_id, pid).await {
            Ok(Some(pending)) => pending,
            Ok(None) => return Turn::rejected(not_found(pid)),
            Err(e) => return Turn::rejected(e),
        };
        match pending.state {
            PendingState::Executed => {
                guard.abandon();
                return self.already_ran(p, req, &derived).await;
            }
            PendingState::Cancelled => return Turn::rejected(cancelled()),
            PendingState::Open if pending.is_expired(now_ms()) => {
                return Turn::rejected(expired(&pending))
            }
            PendingState::Open => {}
        }
        // Settling or executing is this turn's first durable change.
        if let Err(e) = super::control::commit_point() {
            guard.abandon();
            return Turn::rejected(e);
        }
        if req.confirmed == Some(false) {
            return match self
                .state
                .settle_pending(&p.org_id, &pending.id, PendingState::Cancelled)
                .await
            {
                Ok(true) => {
                    guard.abandon();
                    Turn::answer(
                        Ok(cancelled_reply(&pending)),
                        Keep::Record { undo_id: None },
                    )
                }
                // Executed in the meantime (by another process on the same state).
                Ok(false) => {
                    guard.abandon();
                    self.already_ran(p, req, &derived).await
                }
                Err(e) => Turn::rejected(e),
            };
        }
        let ttl = Duration::from_secs(self.cfg.idempotency_ttl_secs);
        let seal = Seal {
            record: Some((derived.clone(), fingerprint, ttl)),
            settle: Some(pending.id.clone()),
            reply_key: Some(derived.name.clone()),
        };
        let write = WriteRequest {
            action_json: pending.action_json.clone(),
            transcript: req
                .transcript
                .clone()
                .or_else(|| pending.transcript.clone()),
            mode: req.execution_mode,
            effect: Effect::Keyed(derived.name.clone()),
            plan: pending.plan,
        };
        let executed = self.backend.execute(p, write, &seal, timing).await;
        match executed {
            Ok(Execution::Done(mut done)) => {
                seal.stamp(&mut done.reply);
                let result = Ok(done.reply);
                let Some(record) = seal.record_of(&result, done.undo_id.clone()) else {
                    return Turn::answer(result, Keep::Nothing);
                };
                if done.sealed {
                    self.state.remember(&derived, &record, ttl);
                } else {
                    self.record_settled(&derived, &record, ttl, &seal).await;
                }
                guard.finish(record);
                Turn::answer(
                    result,
                    Keep::Record {
                        undo_id: done.undo_id,
                    },
                )
            }
            Ok(Execution::AlreadyDone) => {
                guard.abandon();
                // Settled under the effect's lock by someone else: cancelled, or executed.
                match self.state.pending(&p.org_id, &p.key_id, pid).await {
                    Ok(Some(now)) if now.state == PendingState::Cancelled => {
                        Turn::rejected(cancelled())
                    }
                    _ => self.already_ran(p, req, &derived).await,
                }
            }
            // A final business answer (the campaign is no longer active, the contact is gone):
            // the pending action is settled with it, and later confirmations replay it.
            Err(e) if super::final_error(&e) => {
                let result = Err(e);
                if let Some(record) = seal.record_of(&result, None) {
                    self.record_settled(&derived, &record, ttl, &seal).await;
                    guard.finish(record);
                }
                Turn::answer(result, Keep::Record { undo_id: None })
            }
            Err(e) => Turn::rejected(e),
        }
    }

    /// Records a confirmation's outcome and settles its pending action, where the backend
    /// could not do it with the effect.
    async fn record_settled(&self, derived: &Scope, record: &Record, ttl: Duration, seal: &Seal) {
        if let Err(e) = self.state.record(derived, record, ttl).await {
            tracing::warn!(error = %e, "confirmation record not stored");
        }
        if let Some(pid) = &seal.settle {
            if let Err(e) = self
                .state
                .settle_pending(&derived.org, pid, PendingState::Executed)
                .await
            {
                tracing::warn!(error = %e, "pending action not settled");
            }
        }
    }

    /// A confirmation of an action that already ran: its outcome again, or, for
    /// `confirmed: false`, a `duplicate` saying it cannot be cancelled any more.
    async fn already_ran(&self, p: &Principal, req: &NativeRequest, derived: &Scope) -> Turn {
        match self.state.lookup(derived).await {
            Ok(Some(record)) => self.replayed(p, req, &record).await,
            Ok(None) => {
                // Executed, but its record has outlived retention.
                let mut r = NativeReply::new(
                    ReplyMode::Duplicate,
                    "I already did that.",
                    json!({ "already_executed": true }),
                );
                r.idempotency_key = Some(derived.name.clone());
                Turn {
                    result: Ok(r),
                    keep: Keep::Nothing,
                    replayed: true,
                }
            }
            Err(e) => Turn::rejected(e),
        }
    }

    async fn replayed(&self, p: &Principal, req: &NativeRequest, record: &Record) -> Turn {
        let mut result = self.replay(p, record).await;
        if req.confirmed == Some(false) {
            if let Ok(r) = &mut result {
                r.spoken_summary = speech::speakable(
                    "That already ran, so it can't be cancelled. Say undo to reverse it.",
                );
                if let Value::Object(m) = r.data.to_mut() {
                    m.insert("cancelled".into(), Value::Bool(false));
                    m.insert("already_executed".into(), Value::Bool(true));
                }
            }
        }
        Turn {
            result,
            keep: Keep::Nothing,
            replayed: true,
        }
    }
}

fn cancelled_reply(pending: &PendingAction) -> NativeReply {
    let question = pending.plan.question();
    let what = question.trim_end_matches('?');
    let mut r = NativeReply::result(
        format!("Okay, cancelled. I won't {}.", lower_first(what)),
        json!({ "cancelled": true, "action": pending.action_type() }),
    );
    r.ids = pending.plan.ids();
    r.ids
        .insert("pending_action_id".into(), json!(pending.id.clone()));
    r
}

impl Bridge {
    /// Parks a dangerous plan and asks the user to confirm it. The pending action and the
    /// ask's record are stored together, so a retried ask answers the same pending action.
    pub(super) async fn ask(
        &self,
        p: &Principal,
        req: &NativeRequest,
        plan: Plan,
        seal: &Seal,
        timing: &mut ServerTiming,
    ) -> Turn {
        let ttl = Duration::from_secs(self.cfg.pending_ttl_secs);
        let pending = PendingAction {
            id: uuid::Uuid::new_v4().to_string(),
            org_id: p.org_id.clone(),
            key_id: p.key_id.clone(),
            action_json: req.action_json_or_null().clone(),
            transcript: req.transcript.clone(),
            expires_at_ms: expiry_ms(ttl),
            state: PendingState::Open,
            plan,
        };
        let mut data = pending.plan.describe();
        if let Value::Object(m) = &mut data {
            m.insert("expires_in_seconds".into(), json!(ttl.as_secs()));
            if p.two_step {
                // Says why `confirmed: true` on this request was not enough.
                m.insert("confirmation_policy".into(), json!("two_step"));
            }
        }
        let mut reply = NativeReply::new(
            ReplyMode::ConfirmationRequired,
            pending.plan.question(),
            data,
        );
        reply.ids = pending.plan.ids();
        reply.pending_action_id = Some(pending.id.clone());
        reply.expires_at = Some(pending.expires_at_rfc3339());
        reply.audit_id = self
            .audit_separately(p, req, reply.mode.as_str(), &reply.ids, timing)
            .await;
        seal.stamp(&mut reply);
        let record = seal.record_of(&Ok(reply.clone()), None);
        let t = Instant::now();
        let stored = self
            .state
            .put_pending(
                &pending,
                seal.record
                    .as_ref()
                    .zip(record.as_ref())
                    .map(|((scope, _, ttl), r)| (scope, r, *ttl)),
            )
            .await;
        timing.record("state", t.elapsed());
        match (stored, record) {
            (Err(e), _) => Turn::rejected(e),
            (Ok(()), Some(record)) => Turn::answer(Ok(reply), Keep::Sealed(record)),
            (Ok(()), None) => Turn::answer(Ok(reply), Keep::Nothing),
        }
    }
}
