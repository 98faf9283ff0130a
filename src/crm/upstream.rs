//! The upstream backend (`backend = "upstream"`): actions run against a remote REST v1 API
//! (`native::remote`); undo entries live in the gateway's state store, since the upstream does
//! not know which key made which write through the gateway; audit records are log lines.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;

use super::{Backend, Effect, Executed, Execution, WriteRequest};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::native::action::Action;
use crate::native::plan::{Plan, Step};
use crate::native::timing::{round_ms, ServerTiming};
use crate::native::{remote, undo};
use crate::state::{Seal, StateStore, UndoEntry};
use crate::store::audit;
use crate::store::generations::OrgGenerations;
use crate::telemetry;
use crate::upstream::Upstream;

pub struct UpstreamBackend {
    client: Arc<Upstream>,
    /// Undo entries per API key (DESIGN: undo stays in the gateway).
    state: Arc<dyn StateStore>,
    undo_window: Duration,
    /// Writes sent upstream (or past the bridge) per org: they invalidate the org's cached
    /// reads. With a shared state store the count in Redis covers other replicas' writes.
    writes: OrgGenerations,
    /// Keyless writes' upstream effect ids for the dedupe window (see `effect`).
    keyless_effects: moka::sync::Cache<(String, [u8; 32]), String>,
    dedupe_window: Duration,
}

impl UpstreamBackend {
    pub fn new(
        client: Arc<Upstream>,
        state: Arc<dyn StateStore>,
        undo_window: Duration,
        dedupe_window: Duration,
    ) -> Self {
        UpstreamBackend {
            client,
            state,
            undo_window,
            writes: OrgGenerations::new(),
            dedupe_window,
            keyless_effects: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(dedupe_window)
                .build(),
        }
    }

    /// The upstream identity of a logical write. A keyless write keeps one id for the dedupe
    /// window: a retry after a failed attempt that may have landed upstream is the same write,
    /// while an identical write minutes later is a new one.
    /// With a state store shared by replicas the id is kept there, so a retry that lands on
    /// another replica reaches the upstream as the same write too.
    async fn effect(&self, p: &Principal, effect: &Effect) -> ApiResult<String> {
        let logical = match effect {
            Effect::Keyed(k) => k.clone(),
            Effect::Keyless(fingerprint) if self.state.shared() => {
                let candidate = crate::ids::new_id();
                self.state
                    .keyless_effect(
                        &p.org_id,
                        &p.key_id,
                        *fingerprint,
                        &candidate,
                        self.dedupe_window,
                    )
                    .await?
                    .unwrap_or(candidate)
            }
            Effect::Keyless(fingerprint) => self
                .keyless_effects
                .get_with((p.key_id.clone(), *fingerprint), crate::ids::new_id),
        };
        Ok(remote::effect_key(&p.key_id, &logical))
    }

    /// Counts a write of `org`: here, and in the state store for the other replicas. A
    /// store that does not answer cannot be told; the write happened, so it is only logged
    /// (other replicas' cached answers then live out their `read_cache_ms`).
    async fn wrote(&self, org: &str) {
        self.writes.bump(org);
        if self.state.shared() {
            if let Err(e) = self.state.bump_read_generation(org).await {
                tracing::warn!(error = %e, "shared read-cache generation not bumped");
            }
        }
    }

    /// The caller's view of the upstream for one turn. The turn's upstream budget counts from
    /// the request's arrival (`elapsed` ago), so key check, resolution and execution share one
    /// deadline.
    fn remote<'a>(&'a self, p: &'a Principal, elapsed: Duration) -> ApiResult<remote::Remote<'a>> {
        let token = p
            .upstream_key
            .as_ref()
            .ok_or_else(|| ApiError::internal("upstream backend without a caller key"))?;
        Ok(remote::Remote {
            up: &self.client,
            token: token.expose(),
            deadline: self.client.turn_deadline_after(elapsed),
        })
    }

    async fn run(
        &self,
        p: &Principal,
        write: &WriteRequest,
        elapsed: Duration,
    ) -> ApiResult<Executed> {
        let r = self.remote(p, elapsed)?;
        if let Plan::UndoLast = write.plan {
            return self.undo_last(&r, p).await;
        }
        let effect_key = self.effect(p, &write.effect).await?;
        let ctx = remote::RemoteCtx {
            effect_key: &effect_key,
        };
        let action_type = write.plan.action_type();
        let executed = remote::execute(&r, &ctx, write.plan.clone()).await?;
        let undo_id = match executed.undo {
            Some((summary, op)) => {
                let entry = UndoEntry {
                    id: crate::ids::new_id(),
                    action_type: action_type.to_string(),
                    summary,
                    op,
                    created_at: crate::ids::now_rfc3339(),
                };
                // The effect happened upstream; failing to remember its undo must not turn
                // the answer into an error that invites a retry.
                match self.state.push_undo(&p.org_id, &p.key_id, &entry).await {
                    Ok(()) => Some(entry.id),
                    Err(e) => {
                        tracing::warn!(error = %e, "undo entry not stored");
                        None
                    }
                }
            }
            None => None,
        };
        Ok(Executed {
            reply: executed.reply,
            undo_id,
            sealed: false,
        })
    }

    /// `undo_last`: reverses the newest undoable write this key made through the gateway
    /// inside the window, answered as in embedded mode.
    async fn undo_last(&self, r: &remote::Remote<'_>, p: &Principal) -> ApiResult<Executed> {
        let since = undo::undo_since(self.undo_window);
        let Some(entry) = self.state.latest_undo(&p.org_id, &p.key_id, &since).await? else {
            return Ok(Executed {
                reply: undo::nothing_to_undo(),
                undo_id: None,
                sealed: false,
            });
        };
        // Keyed by the entry, not the request: a retry after a lost answer reaches the
        // upstream as the same undo, never as a second one.
        let entry_key = remote::effect_key(&p.key_id, &format!("undo:{}", entry.id));
        let applied = remote::undo(r, &entry_key, &entry.op, &entry.summary).await?;
        self.state
            .mark_undone(&p.org_id, &entry.id, applied.reverted)
            .await?;
        Ok(Executed {
            reply: undo::undone_reply(entry, applied),
            undo_id: None,
            sealed: false,
        })
    }
}

#[async_trait]
impl Backend for UpstreamBackend {
    fn name(&self) -> &'static str {
        "upstream"
    }

    fn generation(&self, org: &str) -> u64 {
        self.writes.get(org)
    }

    fn shared_generations(&self) -> bool {
        self.state.shared()
    }

    async fn invalidate_reads(&self, org: &str) {
        self.wrote(org).await;
    }

    fn upstream(&self) -> Option<&Arc<Upstream>> {
        Some(&self.client)
    }

    async fn plan(
        &self,
        p: &Principal,
        action: &Action,
        action_json: &Value,
        timing: &mut ServerTiming,
    ) -> ApiResult<Step> {
        let t = Instant::now();
        let step = match self.remote(p, timing.total()) {
            Ok(r) => remote::plan(&r, action, action_json).await,
            Err(e) => Err(e),
        };
        timing.record("upstream", t.elapsed());
        telemetry::backend_operation("resolve", "upstream", t.elapsed());
        step
    }

    async fn execute(
        &self,
        p: &Principal,
        write: WriteRequest,
        _seal: &Seal,
        timing: &mut ServerTiming,
    ) -> ApiResult<Execution> {
        let t = Instant::now();
        let result = self.run(p, &write, timing.total()).await;
        // Whatever happened upstream may have changed records: drop the org's cached reads.
        self.wrote(&p.org_id).await;
        timing.record("upstream", t.elapsed());
        telemetry::backend_operation("execute", "upstream", t.elapsed());
        let record = |outcome: &str, ids: &serde_json::Map<String, Value>| {
            audit_to_log(&audit::AuditRecord {
                org_id: &p.org_id,
                key_id: &p.key_id,
                action_type: write.plan.action_type(),
                action: &write.action_json,
                transcript: write.transcript.as_deref(),
                execution_mode: write.mode.as_str(),
                outcome,
                ids: &Value::Object(ids.clone()),
                elapsed_ms: round_ms(timing.total()),
            })
        };
        // Writes are always audited (DESIGN §9), failed ones included.
        match result {
            Ok(mut executed) => {
                executed.reply.audit_id =
                    Some(record(executed.reply.mode.as_str(), &executed.reply.ids));
                Ok(Execution::Done(executed))
            }
            Err(e) => {
                record(e.code.as_str(), &Default::default());
                Err(e)
            }
        }
    }

    async fn audit(
        &self,
        record: &audit::AuditRecord<'_>,
        _timing: &mut ServerTiming,
    ) -> Option<String> {
        Some(audit_to_log(record))
    }
}

/// In upstream mode the records live upstream, so the audit trail is a structured log line
/// (target `pilot_bridge::audit`) with the fields the embedded store keeps; returns its id.
fn audit_to_log(r: &audit::AuditRecord<'_>) -> String {
    let id = crate::ids::new_id();
    // What the user said and the action's text (notes, message bodies) are personal data:
    // only at DEBUG, never in the INFO line a log shipper keeps.
    tracing::info!(
        target: "pilot_bridge::audit",
        audit_id = %id,
        org_id = r.org_id,
        key_id = r.key_id,
        action_type = r.action_type,
        execution_mode = r.execution_mode,
        outcome = r.outcome,
        ids = %r.ids,
        elapsed_ms = r.elapsed_ms,
        "audit"
    );
    tracing::debug!(
        target: "pilot_bridge::audit",
        audit_id = %id,
        action = %r.action,
        transcript = r.transcript.unwrap_or(""),
        "audit content"
    );
    telemetry::audit_write();
    id
}
