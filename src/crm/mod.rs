//! The CRM backend seam (DESIGN §15): where actions are resolved, executed and undone. The
//! pipeline (`native`) talks to a [`Backend`] and never asks which one runs: the embedded
//! SQLite store ([`embedded::EmbeddedBackend`]) or a remote REST v1 API
//! ([`upstream::UpstreamBackend`]).

pub mod embedded;
pub mod upstream;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::auth::Principal;
use crate::error::ApiResult;
use crate::native::action::Action;
use crate::native::plan::{Plan, Step};
use crate::native::reply::NativeReply;
use crate::native::request::ExecutionMode;
use crate::native::timing::ServerTiming;
use crate::state::Seal;
use crate::store::audit::AuditRecord;
use crate::upstream::Upstream;

/// A plan about to run, with what its audit record and the upstream need.
pub struct WriteRequest {
    pub plan: Plan,
    pub action_json: Value,
    pub transcript: Option<String>,
    pub mode: ExecutionMode,
    /// The logical write's identity, for the upstream's idempotency.
    pub effect: Effect,
}

/// Which logical write a plan is: named by the client's idempotency key or the derived
/// confirmation key, or, without either, by the request's fingerprint.
pub enum Effect {
    Keyed(String),
    Keyless([u8; 32]),
}

/// What an execution did.
pub struct Executed {
    pub reply: NativeReply,
    /// The undo entry this write created, if it can be undone.
    pub undo_id: Option<String>,
    /// True when the [`Seal`] was committed together with the effect; otherwise the pipeline
    /// records it now.
    pub sealed: bool,
}

/// The outcome of [`Backend::execute`]. Built once per write and consumed at once, so the size
/// difference between the variants costs nothing worth a heap allocation.
#[allow(clippy::large_enum_variant)]
pub enum Execution {
    Done(Executed),
    /// Checked under the effect's own lock: the seal's scope already holds a record, or its
    /// pending action is no longer open. Nothing ran; the caller replays what is there.
    AlreadyDone,
}

#[async_trait]
pub trait Backend: Send + Sync {
    /// `embedded` or `upstream`, for metrics.
    fn name(&self) -> &'static str;

    /// This process's write generation of `org`: it changes whenever a write may have changed
    /// the org's records, so the org's cached read answers are dropped.
    fn generation(&self, org: &str) -> u64;

    /// True when writes through other processes count too: the read cache then also checks
    /// the generation shared in the state store ([`StateStore::read_generation`]).
    fn shared_generations(&self) -> bool {
        false
    }

    /// Something was written past the bridge for `org` (the REST proxy in upstream mode).
    async fn invalidate_reads(&self, org: &str);

    /// The upstream client, when there is one (the REST proxy and readiness need it).
    fn upstream(&self) -> Option<&Arc<Upstream>> {
        None
    }

    /// The org's time zone, in which spoken dates of transcript turns are read (DESIGN §19).
    /// UTC where the backend cannot tell.
    async fn time_zone(&self, _org: &str) -> ApiResult<crate::domain::TimeZone> {
        Ok(crate::domain::TimeZone::UTC)
    }

    /// Resolves an action's references: a read's answer, a clarification, a no-op, or a plan.
    async fn plan(
        &self,
        p: &Principal,
        action: &Action,
        action_json: &Value,
        timing: &mut ServerTiming,
    ) -> ApiResult<Step>;

    /// Runs a plan (after confirmation when it is dangerous), audits it, and seals `seal` with
    /// the effect where the state store shares the backend's transaction.
    async fn execute(
        &self,
        p: &Principal,
        write: WriteRequest,
        seal: &Seal,
        timing: &mut ServerTiming,
    ) -> ApiResult<Execution>;

    /// Writes an audit record outside an execution (reads that ask for one, prompts,
    /// no-ops, failed writes). Best effort: returns the record's id, or `None`.
    async fn audit(&self, record: &AuditRecord<'_>, timing: &mut ServerTiming) -> Option<String>;
}
