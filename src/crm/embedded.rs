//! The embedded backend: actions resolve on a reader connection and execute inside one write
//! transaction of the service's SQLite database, together with their undo entry, their audit
//! record and — where the state store is this same database — their idempotency record and
//! pending-action settlement.

use std::time::Instant;

use async_trait::async_trait;
use serde_json::Value;

use super::{Backend, Executed, Execution, WriteRequest};
use crate::auth::Principal;
use crate::config::NativeConfig;
use crate::error::ApiResult;
use crate::native::action::Action;
use crate::native::actions::{self, ExecCtx};
use crate::native::plan::Step;
use crate::native::timing::{round_ms, ServerTiming};
use crate::state::sqlite as state_rows;
use crate::state::{expiry_ms, now_ms, PendingState, Seal, UndoEntry};
use crate::store::{audit, Store};
use crate::telemetry;

pub struct EmbeddedBackend {
    store: Store,
    cfg: NativeConfig,
    /// The state store lives in this database: seals commit with the effect.
    seals: bool,
}

impl EmbeddedBackend {
    pub fn new(store: Store, cfg: NativeConfig, seals: bool) -> Self {
        EmbeddedBackend { store, cfg, seals }
    }
}

/// An audit record with owned fields, to cross onto the store's writer thread.
struct OwnedAudit {
    org_id: String,
    key_id: String,
    action_type: String,
    action: Value,
    transcript: Option<String>,
    execution_mode: String,
    outcome: String,
    ids: Value,
    elapsed_ms: f64,
}

impl OwnedAudit {
    fn of(r: &audit::AuditRecord<'_>) -> Self {
        OwnedAudit {
            org_id: r.org_id.to_string(),
            key_id: r.key_id.to_string(),
            action_type: r.action_type.to_string(),
            action: r.action.clone(),
            transcript: r.transcript.map(str::to_string),
            execution_mode: r.execution_mode.to_string(),
            outcome: r.outcome.to_string(),
            ids: r.ids.clone(),
            elapsed_ms: r.elapsed_ms,
        }
    }

    fn record(&self) -> audit::AuditRecord<'_> {
        audit::AuditRecord {
            org_id: &self.org_id,
            key_id: &self.key_id,
            action_type: &self.action_type,
            action: &self.action,
            transcript: self.transcript.as_deref(),
            execution_mode: &self.execution_mode,
            outcome: &self.outcome,
            ids: &self.ids,
            elapsed_ms: self.elapsed_ms,
        }
    }
}

#[async_trait]
impl Backend for EmbeddedBackend {
    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn time_zone(&self, org: &str) -> ApiResult<crate::domain::TimeZone> {
        let org = org.to_string();
        self.store
            .read(move |c| crate::store::orgs::timezone(c, &org))
            .await
    }

    fn generation(&self, org: &str) -> u64 {
        self.store.org_generation(org)
    }

    async fn invalidate_reads(&self, org: &str) {
        // The store counts its own commits; this is for writes around it.
        self.store.touched(org);
    }

    async fn plan(
        &self,
        p: &Principal,
        action: &Action,
        _action_json: &Value,
        timing: &mut ServerTiming,
    ) -> ApiResult<Step> {
        let org = p.org_id.clone();
        let action = action.clone();
        let t = Instant::now();
        // On this task's thread when a reader is free (see `Store::read_fast`).
        let step = self
            .store
            .read_fast(move |conn| actions::plan(conn, &org, &action))
            .await;
        timing.record("resolve", t.elapsed());
        telemetry::backend_operation("resolve", "embedded", t.elapsed());
        step
    }

    async fn execute(
        &self,
        p: &Principal,
        write: WriteRequest,
        seal: &Seal,
        timing: &mut ServerTiming,
    ) -> ApiResult<Execution> {
        let WriteRequest {
            plan,
            action_json,
            transcript,
            mode,
            ..
        } = write;
        let org = p.org_id.clone();
        let key_id = p.key_id.clone();
        let outbox_hold_secs = self.cfg.outbox_hold_secs;
        let undo_window_secs = self.cfg.undo_window_secs;
        let seal = self.seals.then(|| seal.clone());
        let sealed = seal.is_some();
        let elapsed_so_far = timing.total();
        let t = Instant::now();
        let result = self
            .store
            .write_for(&p.org_id, move |tx| {
                // The writer lock is held from here to the commit: nothing can record this
                // scope or settle this pending action between the check and the seal.
                if let Some(seal) = &seal {
                    if let Some((scope, _, _)) = &seal.record {
                        if state_rows::live_record(tx, scope, now_ms())?.is_some() {
                            return Ok(None);
                        }
                    }
                    if let Some(pid) = &seal.settle {
                        if state_rows::pending_state(tx, pid)? != Some(PendingState::Open) {
                            return Ok(None);
                        }
                    }
                }
                let ctx = ExecCtx {
                    org: &org,
                    key_id: &key_id,
                    outbox_hold_secs,
                    undo_window_secs,
                };
                let action_type = plan.action_type();
                let executed = actions::execute(tx, &ctx, plan)?;
                let audit_started = Instant::now();
                let undo_id = match executed.undo {
                    Some((summary, op)) => {
                        let entry = UndoEntry {
                            id: crate::ids::new_id(),
                            action_type: action_type.to_string(),
                            summary,
                            op,
                            created_at: crate::ids::now_rfc3339(),
                        };
                        state_rows::insert_undo(tx, &org, &key_id, &entry)?;
                        Some(entry.id)
                    }
                    None => None,
                };
                let mut reply = executed.reply;
                let audit_id = audit::insert(
                    tx,
                    &audit::AuditRecord {
                        org_id: &org,
                        key_id: &key_id,
                        action_type,
                        action: &action_json,
                        transcript: transcript.as_deref(),
                        execution_mode: mode.as_str(),
                        outcome: reply.mode.as_str(),
                        ids: &Value::Object(reply.ids.clone()),
                        elapsed_ms: round_ms(elapsed_so_far + audit_started.elapsed()),
                    },
                )?;
                reply.audit_id = Some(audit_id);
                if let Some(seal) = &seal {
                    seal.stamp(&mut reply);
                    if let (Some((scope, _, ttl)), Some(record)) = (
                        &seal.record,
                        seal.record_of(&Ok(reply.clone()), undo_id.clone()),
                    ) {
                        state_rows::insert_record(tx, scope, &record, expiry_ms(*ttl))?;
                    }
                    if let Some(pid) = &seal.settle {
                        state_rows::settle(tx, pid, PendingState::Executed)?;
                    }
                }
                Ok(Some((reply, undo_id, audit_started.elapsed())))
            })
            .await;
        let total = t.elapsed();
        telemetry::backend_operation("execute", "embedded", total);
        match result {
            Ok(Some((reply, undo_id, audit_time))) => {
                telemetry::audit_write();
                timing.record("exec", total.saturating_sub(audit_time));
                timing.record("audit", audit_time);
                Ok(Execution::Done(Executed {
                    reply,
                    undo_id,
                    sealed,
                }))
            }
            Ok(None) => {
                timing.record("exec", total);
                Ok(Execution::AlreadyDone)
            }
            Err(e) => {
                timing.record("exec", total);
                Err(e)
            }
        }
    }

    async fn audit(
        &self,
        record: &audit::AuditRecord<'_>,
        timing: &mut ServerTiming,
    ) -> Option<String> {
        let owned = OwnedAudit::of(record);
        let t = Instant::now();
        let r = self
            .store
            // No read answer shows audit records: other cached reads stay valid.
            .write_bookkeeping(move |tx| audit::insert(tx, &owned.record()))
            .await;
        timing.record("audit", t.elapsed());
        telemetry::backend_operation("audit", "embedded", t.elapsed());
        match r {
            Ok(id) => {
                telemetry::audit_write();
                Some(id)
            }
            Err(e) => {
                tracing::warn!(error = %e, "audit write failed");
                None
            }
        }
    }
}
