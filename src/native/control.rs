//! Control no model can bypass (DESIGN §21), the parts that live in the pipeline: a
//! confirmation that carries an `action` must name the very action it confirms (same type, same
//! records and values after resolution), and two-step keys never execute a dangerous action on
//! the request that first names it (the rule itself is one guard in `run_action`).
//!
//! Also the commit point of commit-aware cancellation: a transport that can cancel a turn (the
//! WebSocket `cancel` frame) runs it under a [`CommitGate`]; the pipeline passes the gate right
//! before the first durable change (parking a pending action, settling one, or handing a plan
//! to the backend, which is before any upstream write is sent). A cancel that wins the race
//! means the turn never changes anything and answers `CANCELLED`; one that loses means the
//! effect is under way and the turn's reply says what happened.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use serde_json::Value;

use super::action::Action;
use super::plan::{Plan, Step};
use super::timing::ServerTiming;
use super::Bridge;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::state::PendingAction;

/// What a plan will do, with the records it touches reduced to their ids: two plans with equal
/// bindings have the same effect. Record snapshots (a contact's status, a campaign's name) are
/// left out, since they may change between the question and the answer without changing what
/// the action does.
pub fn binding(plan: &Plan) -> Value {
    let mut v = serde_json::to_value(plan).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        for field in ["contact", "campaign"] {
            if let Some(record) = m.get_mut(field) {
                let id = record.get("id").cloned().unwrap_or(Value::Null);
                *record = id;
            }
        }
    }
    v
}

const OPEN: u8 = 0;
const CANCELLED: u8 = 1;
const COMMITTED: u8 = 2;

/// Where a cancellable turn stands: open, cancelled before its commit point, or past it.
#[derive(Debug, Default)]
pub struct CommitGate(AtomicU8);

/// What a cancel achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The turn will never change anything; it answers `CANCELLED`.
    NotStarted,
    /// The turn passed its commit point before the cancel: its effect happens.
    Committed,
}

impl CommitGate {
    pub fn new() -> Arc<Self> {
        Arc::new(CommitGate(AtomicU8::new(OPEN)))
    }

    /// Cancels the turn unless it already passed its commit point.
    pub fn cancel(&self) -> CancelOutcome {
        match self
            .0
            .compare_exchange(OPEN, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) | Err(CANCELLED) => CancelOutcome::NotStarted,
            Err(_) => CancelOutcome::Committed,
        }
    }

    /// Passes the commit point; false when the turn was cancelled first.
    fn commit(&self) -> bool {
        match self
            .0
            .compare_exchange(OPEN, COMMITTED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) | Err(COMMITTED) => true,
            Err(_) => false,
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire) == CANCELLED
    }

    pub fn is_committed(&self) -> bool {
        self.0.load(Ordering::Acquire) == COMMITTED
    }
}

tokio::task_local! {
    /// The gate of the turn running in this task, when its transport can cancel it. A task
    /// local rather than a parameter, so the pipeline's signatures stay those of a plain turn.
    static GATE: Arc<CommitGate>;
}

/// Runs `turn` under `gate`.
pub async fn with_gate<F: std::future::Future>(gate: Arc<CommitGate>, turn: F) -> F::Output {
    GATE.scope(gate, turn).await
}

/// The gate of the current turn, to carry into a task the turn spawns.
pub(super) fn current_gate() -> Option<Arc<CommitGate>> {
    GATE.try_with(Arc::clone).ok()
}

/// Passes the current turn's commit point: `Err(CANCELLED)` when it was cancelled first (then
/// nothing may change). Turns without a gate always pass.
pub(super) fn commit_point() -> ApiResult<()> {
    match current_gate() {
        Some(g) if !g.commit() => Err(cancelled()),
        _ => Ok(()),
    }
}

/// True when the current turn was cancelled before its commit point.
pub(super) fn was_cancelled() -> bool {
    current_gate().is_some_and(|g| g.is_cancelled())
}

pub(super) fn cancelled() -> ApiError {
    ApiError::new(
        crate::error::ErrorCode::Cancelled,
        "Request cancelled before it took effect",
    )
    .with_details("cancelled by a cancel frame; nothing was changed")
}

fn mismatch(details: impl Into<String>) -> ApiError {
    ApiError::validation("action", details.into())
        .with_spoken("That doesn't match what I asked you to confirm, so I didn't do it.")
}

/// A confirmation's `action` must at least be of the pending action's type.
pub(super) fn same_type(action: &Action, pending: &PendingAction) -> ApiResult<()> {
    if action.type_name() == pending.action_type() {
        return Ok(());
    }
    Err(ApiError::validation(
        "action.type",
        format!(
            "'{}' does not match the pending action '{}'",
            action.type_name(),
            pending.action_type()
        ),
    )
    .with_spoken("That doesn't match what I asked you to confirm."))
}

impl Bridge {
    /// Checks that `action`, carried by a confirmation, is the pending action: same type, and
    /// after resolving its references the same records and values. Anything else — another
    /// contact, a name that is now ambiguous or unknown — is refused with 422 and leaves the
    /// pending action open.
    pub(super) async fn check_binding(
        &self,
        p: &Principal,
        action: &Action,
        action_json: &Value,
        pending: &PendingAction,
        timing: &mut ServerTiming,
    ) -> ApiResult<()> {
        same_type(action, pending)?;
        let step = match self.backend.plan(p, action, action_json, timing).await {
            Ok(step) => step,
            // A field error in the carried action is the client's to fix; it names the field.
            Err(e) if e.code == crate::error::ErrorCode::ValidationError => return Err(e),
            Err(e) if super::final_error(&e) => {
                return Err(mismatch(format!(
                    "does not resolve to the pending action ({})",
                    e.message
                )))
            }
            // Store or upstream trouble: retryable, and nothing was decided.
            Err(e) => return Err(e),
        };
        match step {
            Step::Execute(plan) if binding(&plan) == binding(&pending.plan) => Ok(()),
            Step::Execute(_) => Err(mismatch(
                "its arguments resolve to other records or values than the pending action's",
            )),
            Step::Reply(_) => Err(mismatch(
                "does not resolve to one action like the pending one (ambiguous, or nothing to do)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::CampaignStatus;
    use crate::store::campaigns::Campaign;

    fn campaign(id: &str, status: CampaignStatus) -> Campaign {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": format!("Campaign {id}"), "status": status,
        }))
        .expect("campaign")
    }

    #[test]
    fn a_gate_is_cancelled_or_committed_once() {
        let g = CommitGate::new();
        assert_eq!(g.cancel(), CancelOutcome::NotStarted);
        assert!(!g.commit(), "a cancelled turn never commits");
        assert_eq!(g.cancel(), CancelOutcome::NotStarted);
        let g = CommitGate::new();
        assert!(g.commit());
        assert!(g.commit());
        assert_eq!(g.cancel(), CancelOutcome::Committed);
        assert!(g.is_committed() && !g.is_cancelled());
    }

    #[tokio::test]
    async fn the_commit_point_reads_the_gate_of_the_running_turn() {
        assert!(commit_point().is_ok(), "no gate: always passes");
        let g = CommitGate::new();
        g.cancel();
        let e = with_gate(g.clone(), async { commit_point() })
            .await
            .expect_err("cancelled");
        assert_eq!(e.code, crate::error::ErrorCode::Cancelled);
        assert!(with_gate(g, async { was_cancelled() }).await);
    }

    #[test]
    fn bindings_compare_records_by_id_and_values_exactly() {
        let pause = |id, status| Plan::SetCampaignStatus {
            campaign: campaign(id, status),
            to: CampaignStatus::Paused,
        };
        // A snapshot that changed since the question does not change what the action does.
        assert_eq!(
            binding(&pause("c1", CampaignStatus::Active)),
            binding(&pause("c1", CampaignStatus::Draft))
        );
        assert_ne!(
            binding(&pause("c1", CampaignStatus::Active)),
            binding(&pause("c2", CampaignStatus::Active))
        );
        let resume = Plan::SetCampaignStatus {
            campaign: campaign("c1", CampaignStatus::Active),
            to: CampaignStatus::Active,
        };
        assert_ne!(
            binding(&resume),
            binding(&pause("c1", CampaignStatus::Active))
        );
        assert_eq!(
            binding(&pause("c1", CampaignStatus::Active))["campaign"],
            "c1"
        );
    }
}
