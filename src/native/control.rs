//! Control no model can bypass (DESIGN §21), the parts that live in the pipeline: a
//! confirmation that carries an `action` must name the very action it confirms (same type, same
//! records and values after resolution), and two-step keys never execute a dangerous action on
//! the request that first names it (the rule itself is one guard in `run_action`).

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
pub(crate) fn binding(plan: &Plan) -> Value {
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

fn mismatch(details: impl Into<String>) -> ApiError {
    ApiError::validation("action", details.into())
        .with_spoken("That doesn't match what I asked you to confirm, so I didn't do it.")
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
        if action.type_name() != pending.action_type() {
            return Err(ApiError::validation(
                "action.type",
                format!(
                    "'{}' does not match the pending action '{}'",
                    action.type_name(),
                    pending.action_type()
                ),
            )
            .with_spoken("That doesn't match what I asked you to confirm."));
        }
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
