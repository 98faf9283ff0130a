//! Conversation state (DESIGN §8, §15): idempotency records, pending actions, undo entries and
//! the keyless dedupe window, behind one [`StateStore`] trait so the pipeline never knows where
//! they live.
//!
//! # What holds which promise
//!
//! - The store is the durable copy. A record is never dropped before its retention ends; the
//!   embedded implementation ([`sqlite::SqliteState`]) keeps everything in the service's SQLite
//!   database, and the embedded CRM backend commits a keyed write's record and a pending
//!   action's settlement in the same transaction as the effect ([`Seal`]).
//! - [`claims::Claims`] holds the requests running in this process, so a twin waits for the
//!   first instead of executing; it is memory by nature (a claim dies with its process). A store
//!   shared by replicas ([`redis::RedisState`]) adds a lease on each claim ([`StateStore::acquire`])
//!   so a twin on another replica waits too; the SQLite store grants every lease at once, since
//!   only one process uses its database.
//! - The store's front cache is memory too: bounded, admitting every new entry (LRU), and never
//!   the only copy.
//!
//! Recording is a compare-and-set (`record` inserts only where no live record exists), so a
//! replica-shared implementation can offer the same guarantee with one atomic operation.

pub mod claims;
pub mod redis;
pub mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::native::plan::Plan;
use crate::native::reply::NativeReply;
use crate::native::undo::UndoOp;

/// Who an idempotency record belongs to: (org, API key, name). `name` is the client's
/// idempotency key, `dedupe:<fingerprint>` for a keyless write, or the derived confirmation key
/// `native:<type>:<pending id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    pub org: String,
    pub key_id: String,
    pub name: String,
}

impl Scope {
    pub fn new(org: &str, key_id: &str, name: impl Into<String>) -> Self {
        Scope {
            org: org.to_string(),
            key_id: key_id.to_string(),
            name: name.into(),
        }
    }
}

/// An error outcome as stored for replay.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredError {
    pub code: String,
    pub message: String,
    pub details: Option<String>,
    pub spoken_summary: String,
}

impl From<&ApiError> for StoredError {
    fn from(e: &ApiError) -> Self {
        StoredError {
            code: e.code.as_str().to_string(),
            message: e.message.clone(),
            details: e.details.clone(),
            spoken_summary: e.spoken_summary.clone(),
        }
    }
}

impl StoredError {
    /// The error again; a code this build does not know (a record written by a newer one) is
    /// an internal error rather than a guess.
    pub fn to_api_error(&self) -> ApiError {
        match ErrorCode::from_wire(&self.code) {
            Some(code) => {
                let mut e = ApiError::new(code, self.message.clone())
                    .with_spoken(self.spoken_summary.clone());
                e.details = self.details.clone();
                e
            }
            None => ApiError::internal(format!("stored outcome has unknown code {}", self.code)),
        }
    }
}

/// A finished turn as stored for replay.
// Short-lived and moved rarely; boxing the reply would cost an allocation per turn.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    Reply { reply: Box<NativeReply> },
    Error { error: StoredError },
}

impl Outcome {
    pub fn of(result: &ApiResult<NativeReply>) -> Self {
        match result {
            Ok(reply) => Outcome::Reply {
                reply: Box::new(reply.clone()),
            },
            Err(e) => Outcome::Error { error: e.into() },
        }
    }
}

/// What is kept under a [`Scope`]: the request's fingerprint, its outcome, and the undo entry
/// the write created (so a replay can tell whether it was undone since).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    #[serde(with = "hex_fingerprint")]
    pub fingerprint: [u8; 32],
    pub outcome: Outcome,
    pub undo_id: Option<String>,
}

mod hex_fingerprint {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(f: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(f))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

/// Where a pending action stands. Settling is one-way: `Open` becomes `Executed` or
/// `Cancelled` exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingState {
    Open,
    Executed,
    Cancelled,
}

impl PendingState {
    pub fn as_str(self) -> &'static str {
        match self {
            PendingState::Open => "open",
            PendingState::Executed => "executed",
            PendingState::Cancelled => "cancelled",
        }
    }

    /// Strict: a stored value this build does not know is an error, never a default.
    pub fn parse(s: &str) -> ApiResult<Self> {
        match s {
            "open" => Ok(PendingState::Open),
            "executed" => Ok(PendingState::Executed),
            "cancelled" => Ok(PendingState::Cancelled),
            other => Err(ApiError::internal(format!(
                "unreadable pending action state '{other}'"
            ))),
        }
    }
}

/// A dangerous action parked until its API key confirms it (DESIGN §6).
#[derive(Debug, Clone)]
pub struct PendingAction {
    pub id: String,
    pub org_id: String,
    pub key_id: String,
    pub plan: Plan,
    /// The action as first sent, for the audit record of the confirmed execution.
    pub action_json: serde_json::Value,
    pub transcript: Option<String>,
    /// Wall-clock expiry, unix milliseconds (it must mean the same after a restart).
    pub expires_at_ms: i64,
    pub state: PendingState,
}

impl PendingAction {
    pub fn action_type(&self) -> &'static str {
        self.plan.action_type()
    }

    pub fn expires_at_rfc3339(&self) -> String {
        chrono::DateTime::from_timestamp_millis(self.expires_at_ms)
            .map(crate::ids::to_rfc3339)
            .unwrap_or_default()
    }

    pub fn is_expired(&self, now_ms: i64) -> bool {
        now_ms >= self.expires_at_ms
    }

    /// The derived idempotency key of its confirmation (DESIGN §6).
    pub fn confirmation_key(&self) -> String {
        format!("native:{}:{}", self.action_type(), self.id)
    }
}

/// An open pending `undo_last` of org `o` for the state stores' unit tests.
#[cfg(test)]
pub(crate) fn test_pending(id: &str, key_id: &str, expires_at_ms: i64) -> PendingAction {
    PendingAction {
        id: id.into(),
        org_id: "o".into(),
        key_id: key_id.into(),
        plan: crate::native::plan::Plan::UndoLast,
        action_json: serde_json::json!({ "type": "undo_last" }),
        transcript: None,
        expires_at_ms,
        state: PendingState::Open,
    }
}

/// How to reverse one write, owned by the API key that made it (DESIGN §5, §15).
#[derive(Debug, Clone)]
pub struct UndoEntry {
    pub id: String,
    pub action_type: String,
    /// What undoing it means, spoken after "Undone.".
    pub summary: String,
    pub op: UndoOp,
    pub created_at: String,
}

/// What an execution must record atomically with its effect. A backend that commits the
/// effect in the state store's own database seals it in the same transaction; any other
/// backend reports `sealed: false` and the pipeline records it right after.
#[derive(Debug, Clone)]
pub struct Seal {
    /// Where the outcome is recorded, with the request's fingerprint and retention.
    pub record: Option<(Scope, [u8; 32], Duration)>,
    /// A pending action settled as executed by this write.
    pub settle: Option<String>,
    /// The idempotency key the reply reports (the client's, or the derived confirmation key).
    pub reply_key: Option<String>,
}

impl Seal {
    /// Nothing to record (reads, `undo_last` without a key).
    pub fn none() -> Self {
        Seal {
            record: None,
            settle: None,
            reply_key: None,
        }
    }

    /// Puts on `reply` what the caller is told about this write's identity, before it is
    /// recorded, so a replay says the same.
    pub fn stamp(&self, reply: &mut NativeReply) {
        if reply.idempotency_key.is_none() {
            reply.idempotency_key = self.reply_key.clone();
        }
        if let Some(id) = &self.settle {
            reply.ids.insert(
                "pending_action_id".into(),
                serde_json::Value::String(id.clone()),
            );
        }
    }

    /// The record of `result` under this seal.
    pub fn record_of(
        &self,
        result: &ApiResult<NativeReply>,
        undo_id: Option<String>,
    ) -> Option<Record> {
        self.record.as_ref().map(|(_, fingerprint, _)| Record {
            fingerprint: *fingerprint,
            outcome: Outcome::of(result),
            undo_id,
        })
    }
}

/// What [`StateStore::acquire`] found under a scope.
#[derive(Debug)]
pub enum Lease {
    /// A finished record: replay it (or report the key reused), never execute.
    Recorded(Box<Record>),
    /// The caller holds the scope until it records, releases, or stops renewing.
    Granted,
    /// Another process holds the scope for a request with this fingerprint (`None` when the
    /// holder's lease ended while looking).
    Held(Option<[u8; 32]>),
}

/// Why recording lost: someone else's outcome is already there (another process, or a twin
/// whose claim this one never saw).
#[derive(Debug)]
pub struct AlreadyRecorded;

/// The durable conversation state. Async and free of storage types, so a replica-shared
/// implementation (Redis) can stand behind the same seam.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// The live record under `scope`, if any.
    async fn lookup(&self, scope: &Scope) -> ApiResult<Option<Record>>;

    /// Stores `record` under `scope` for `ttl` unless a live record is there already
    /// (compare-and-set); `Ok(false)` when one was.
    async fn record(&self, scope: &Scope, record: &Record, ttl: Duration) -> ApiResult<bool>;

    /// Parks a pending action; with `record`, also stores the ask's outcome (a retried ask
    /// answers the same pending action) in the same step.
    async fn put_pending(
        &self,
        pending: &PendingAction,
        record: Option<(&Scope, &Record, Duration)>,
    ) -> ApiResult<()>;

    /// The pending action `id` if it belongs to this org and API key.
    async fn pending(&self, org: &str, key_id: &str, id: &str) -> ApiResult<Option<PendingAction>>;

    /// The id of this API key's newest pending action that is still open and unexpired: what
    /// a spoken "yes" without an id answers (DESIGN §19).
    async fn latest_open_pending(&self, org: &str, key_id: &str) -> ApiResult<Option<String>>;

    /// Settles an open pending action of `org` (compare-and-set on `Open`); false when it was
    /// settled already.
    async fn settle_pending(&self, org: &str, id: &str, to: PendingState) -> ApiResult<bool>;

    /// Records how to undo a write.
    async fn push_undo(&self, org: &str, key_id: &str, entry: &UndoEntry) -> ApiResult<()>;

    /// The newest entry of this key not yet undone, created at or after `since` (RFC 3339).
    async fn latest_undo(
        &self,
        org: &str,
        key_id: &str,
        since: &str,
    ) -> ApiResult<Option<UndoEntry>>;

    /// Marks an entry used up by `undo_last` (compare-and-set); `reverted` says whether its
    /// effect was undone or left alone because the world had moved on. False when it already
    /// was used up.
    async fn mark_undone(&self, org: &str, id: &str, reverted: bool) -> ApiResult<bool>;

    /// True when the effect behind undo entry `id` of `org` has been undone.
    async fn is_undone(&self, org: &str, id: &str) -> ApiResult<bool>;

    /// Open (unexpired, unsettled) pending actions, for the gauge.
    async fn open_pending(&self) -> ApiResult<u64>;

    /// Takes up to `limit` pending actions that are still open and expired before `before_ms`
    /// (unix ms) and were not taken yet, so their expiry is announced once (the `pending.expired`
    /// event) however many processes share the store. They stay stored: a late confirmation
    /// still hears "expired".
    async fn take_expired_pending(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> ApiResult<Vec<PendingAction>>;

    /// Deletes what has outlived its retention; returns how many rows went.
    async fn prune(&self) -> ApiResult<u64>;

    /// Notes a record that a backend committed together with its effect (see [`Seal`]), so
    /// the next lookup can skip the durable read. Writes nothing.
    fn remember(&self, scope: &Scope, record: &Record, ttl: Duration);

    /// Takes the cross-process lease on `scope` for the request `fingerprint`, unless a record
    /// is there already. `token` names this attempt for [`renew`](Self::renew) and
    /// [`release`](Self::release). A store used by one process only grants at once: its
    /// in-process [`claims::Claims`] are the whole story.
    async fn acquire(
        &self,
        scope: &Scope,
        _token: &str,
        _fingerprint: [u8; 32],
        _lease: Duration,
    ) -> ApiResult<Lease> {
        Ok(match self.lookup(scope).await? {
            Some(record) => Lease::Recorded(Box::new(record)),
            None => Lease::Granted,
        })
    }

    /// Extends a lease this attempt holds; false when it is not held by `token` any more.
    async fn renew(&self, _scope: &Scope, _token: &str, _lease: Duration) -> ApiResult<bool> {
        Ok(true)
    }

    /// Gives a lease up (only if `token` still holds it).
    async fn release(&self, _scope: &Scope, _token: &str) -> ApiResult<()> {
        Ok(())
    }

    /// True when several processes share this store: leases need renewing, and nothing cached
    /// in one process (read answers) can be trusted to see another's writes.
    fn shared(&self) -> bool {
        false
    }

    /// Whether the store answers right now (readiness).
    async fn ping(&self) -> bool {
        true
    }

    /// The read-cache generation of `org` shared by the replicas (DESIGN §16): it moves on
    /// every write of the org through any of them. A store used by one process keeps none
    /// (its process counts its own writes) and answers 0.
    async fn read_generation(&self, _org: &str) -> ApiResult<u64> {
        Ok(0)
    }

    /// Counts a write of `org` in the shared read-cache generation.
    async fn bump_read_generation(&self, _org: &str) -> ApiResult<()> {
        Ok(())
    }

    /// The upstream identity of a keyless write (API key `key_id`, request `fingerprint`)
    /// for the dedupe `window`: the one chosen first by any process sharing the store, else
    /// `candidate`, which is then kept for the window. `None` from a store used by one
    /// process: the caller keeps the identity itself.
    async fn keyless_effect(
        &self,
        _org: &str,
        _key_id: &str,
        _fingerprint: [u8; 32],
        _candidate: &str,
        _window: Duration,
    ) -> ApiResult<Option<String>> {
        Ok(None)
    }

    /// Appends a pushed event to the journal of API key `key_id` (DESIGN §21) and returns its
    /// sequence number: 1, 2, 3, … per key, never reused, also after the journal emptied.
    /// `body` is opaque to the store. The entry is kept for `keep`, and at most `max_len`
    /// entries are kept per key.
    async fn append_event(
        &self,
        key_id: &str,
        body: &str,
        keep: Duration,
        max_len: usize,
    ) -> ApiResult<u64>;

    /// The journaled events of `key_id` with a sequence number above `after`, oldest first; at
    /// most `limit`, the newest ones when more are kept (the first returned seq then says how
    /// many were skipped).
    async fn events_after(
        &self,
        key_id: &str,
        after: u64,
        limit: usize,
    ) -> ApiResult<Vec<(u64, String)>>;
}

/// Milliseconds since the epoch, by the wall clock (records outlive the process).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `ttl` from now, in unix milliseconds.
pub fn expiry_ms(ttl: Duration) -> i64 {
    now_ms().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

/// How often expired state is swept and the open-pending gauge refreshed.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(5);

/// How often expired confirmations are looked for, so `pending.expired` follows the expiry
/// within about a second.
const EXPIRY_CHECK_EVERY: Duration = Duration::from_secs(1);

/// A confirmation is announced as expired only this long after its expiry: a confirmation that
/// passed the expiry check just before may still be executing (a turn ends well inside this).
const EXPIRY_GRACE_MS: i64 = 2_000;

/// Expired confirmations announced per check, at most.
const EXPIRY_BATCH: usize = 100;

/// Spawns the state maintenance loop: announces confirmations that expired unanswered
/// (`pending.expired`, to the sessions of the key that was asked), prunes what outlived its
/// retention (in small batches, so a sweep never holds the writer for long) and keeps the
/// open-pending gauge current, so a `/metrics` scrape reads a number instead of counting. Ends
/// when `shutdown` fires.
pub fn spawn_maintenance(
    state: std::sync::Arc<dyn StateStore>,
    events: std::sync::Arc<dyn crate::events::EventBus>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EXPIRY_CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let sweep_every = (MAINTENANCE_EVERY.as_millis() / EXPIRY_CHECK_EVERY.as_millis()).max(1);
        let mut ticks: u128 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                // Shutdown, or the sender is gone: either way, stop.
                _ = shutdown.changed() => return,
            }
            announce_expired(state.as_ref(), events.as_ref()).await;
            // The sweep and the gauge run on the first tick and every `sweep_every` after it.
            ticks += 1;
            if !(ticks - 1).is_multiple_of(sweep_every) {
                continue;
            }
            match state.prune().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(rows = n, "pruned expired conversation state"),
                Err(e) => tracing::warn!(error = %e, "pruning conversation state failed"),
            }
            match state.open_pending().await {
                Ok(n) => {
                    crate::telemetry::pending_actions(usize::try_from(n).unwrap_or(usize::MAX))
                }
                Err(e) => tracing::warn!(error = %e, "counting pending actions failed"),
            }
        }
    })
}

/// Publishes `pending.expired` for each confirmation that expired unanswered since the last
/// check. The store hands each one out once, so replicas sharing it do not announce twice.
async fn announce_expired(state: &dyn StateStore, events: &dyn crate::events::EventBus) {
    let before = now_ms().saturating_sub(EXPIRY_GRACE_MS);
    match state.take_expired_pending(before, EXPIRY_BATCH).await {
        Ok(expired) => {
            for pending in expired {
                events.publish(expired_event(&pending));
            }
        }
        Err(e) => tracing::warn!(error = %e, "looking for expired confirmations failed"),
    }
}

/// The `pending.expired` event of a confirmation nobody answered.
pub fn expired_event(pending: &PendingAction) -> crate::events::Event {
    let question = pending.plan.question();
    // "Add Sarah Chen to Seed founders?" reads as "the request to add Sarah Chen to Seed
    // founders"; a question with more in it (a message preview) is not repeated.
    let spoken = match question.strip_suffix('?') {
        Some(q) if !q.contains(['?', ':', '"']) => {
            let mut chars = q.chars();
            let first = chars.next().map(|c| c.to_lowercase().collect::<String>());
            format!(
                "The request to {}{} expired without a yes, so I didn't do it.",
                first.unwrap_or_default(),
                chars.as_str()
            )
        }
        _ => "A request waiting for your yes expired, so I didn't do it.".to_string(),
    };
    crate::events::Event {
        kind: crate::events::EventKind::PendingExpired,
        key_id: pending.key_id.clone(),
        data: serde_json::json!({
            "pending_action_id": pending.id,
            "action_type": pending.action_type(),
            "action": pending.plan.describe(),
            "expired_at": pending.expires_at_rfc3339(),
        }),
        spoken_summary: spoken,
    }
}
