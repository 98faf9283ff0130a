//! The replica-shared [`StateStore`] (DESIGN §16): conversation state in Redis, so several
//! gateways behind a plain load balancer agree on idempotency, pending actions, undo stacks and
//! the keyless dedupe window.
//!
//! Every key starts `pb:{ORG}:` — the braces are a Redis Cluster hash tag, so all keys of one
//! org live in one slot and the multi-key scripts below are legal on a cluster.
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `pb:{org}:rec:<len>:<key_id>:<name>` | string, PX = retention | a finished [`Record`] (JSON) |
//! | `pb:{org}:claim:<len>:<key_id>:<name>` | string, PX = lease | `<token> <fingerprint hex>` of the running owner |
//! | `pb:{org}:pending:<id>` | hash, PX = expiry + retention | a pending action and its state |
//! | `pb:{org}:pending-open` | sorted set | open pending ids by expiry (the gauge) |
//! | `pb:{org}:undo:<key_id>` | list, bounded, PX = retention | undo entries, newest first |
//! | `pb:{org}:undone:<id>` | string, PX = retention | `1` reverted / `0` left alone by `undo_last` |
//! | `pb:{org}:rate:<minute>` | counter, PX = 61 s | the org's requests in that wall-clock minute |
//! | `pb:{org}:gen` | counter, PX = 1 day | the org's read-cache generation (moves on every write) |
//! | `pb:{org}:keyless:<len>:<key_id>:<fp>` | string, PX = dedupe window | a keyless write's upstream identity |
//!
//! Expiry is Redis's own (`PX`), so [`StateStore::prune`] has nothing to do. Every operation is
//! bounded by a timeout that fits the turn budget; a failure is `STATE_UNAVAILABLE` (503,
//! `Retry-After`), and since claims fail with it, nothing executes while Redis is away.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashSet;
use redis::aio::ConnectionManager;
use redis::{RedisResult, Script};
use serde::{Deserialize, Serialize};

use super::{now_ms, Lease, PendingAction, PendingState, Record, Scope, StateStore, UndoEntry};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::native::plan::Plan;
use crate::native::undo::UndoOp;

/// Default longest wait for one Redis round trip (and for a new connection): a turn that meets
/// a dead Redis still answers well inside its 750 ms target (`state.redis_timeout_ms`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);

/// While Redis is unreachable, how often it is probed, so the connection is back before the
/// next turn needs it.
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Undo entries kept per API key; older ones fall off the list.
const UNDO_STACK: isize = 100;

/// Distinct orgs whose open pending actions this replica counts for the gauge.
const GAUGE_ORGS: usize = 10_000;

/// The 503 every Redis failure becomes. Writes fail closed with it; nothing executes.
pub fn unavailable(cause: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %cause, "shared state store (Redis) unavailable");
    ApiError::new(
        ErrorCode::StateUnavailable,
        "Conversation state store unavailable",
    )
    .with_details("the shared state store (Redis) did not answer; nothing was executed")
    .with_retry_after(1)
}

/// One connection to Redis shared by the state store and the rate limiter: a reconnecting
/// multiplexed connection with TCP_NODELAY, every call bounded by the configured timeout.
#[derive(Clone)]
pub struct RedisLink {
    inner: Arc<Link>,
}

struct Link {
    /// For the dedicated pub/sub connection of the event relay (`crate::event_relay`).
    client: redis::Client,
    conn: ConnectionManager,
    timeout: Duration,
    /// False after a failed call until one succeeds (logged once per outage).
    healthy: AtomicBool,
}

impl RedisLink {
    /// Prepares a connection to `url` without waiting for it: the server starts (not ready)
    /// while Redis is down, and reconnects on its own. Needs a Tokio runtime (for the probe
    /// that re-establishes the connection after an outage).
    pub fn connect(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        use redis::IntoConnectionInfo;
        let info = url
            .into_connection_info()
            .map_err(|e| anyhow::anyhow!("state.redis_url: {e}"))?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // One quick retry; after that the probe below (or the next call) tries again, so an
            // outage costs each call at most the timeout and recovery needs no restart.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        let link = RedisLink {
            inner: Arc::new(Link {
                client,
                conn,
                timeout,
                healthy: AtomicBool::new(true),
            }),
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&link.inner);
            rt.spawn(async move {
                loop {
                    tokio::time::sleep(PROBE_EVERY).await;
                    let Some(inner) = weak.upgrade() else {
                        return;
                    };
                    if !inner.healthy.load(Ordering::Acquire) {
                        RedisLink { inner }.ping().await;
                    }
                }
            });
        }
        Ok(link)
    }

    /// Runs one Redis call (built by `call` on a connection handle) under the timeout, with
    /// its latency and errors in the metrics. Failures are `STATE_UNAVAILABLE`.
    pub async fn call<T, F, Fut>(&self, operation: &'static str, call: F) -> ApiResult<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let started = Instant::now();
        let result = tokio::time::timeout(self.inner.timeout, call(self.inner.conn.clone())).await;
        let ok = matches!(result, Ok(Ok(_)));
        crate::telemetry::redis_operation(operation, started.elapsed(), ok);
        match result {
            Ok(Ok(v)) => {
                if !self.inner.healthy.swap(true, Ordering::AcqRel) {
                    tracing::info!("shared state store (Redis) answers again");
                }
                Ok(v)
            }
            Ok(Err(e)) => Err(self.failed(operation, e)),
            Err(_) => Err(self.failed(operation, "timed out")),
        }
    }

    fn failed(&self, operation: &'static str, cause: impl std::fmt::Display) -> ApiError {
        if self.inner.healthy.swap(false, Ordering::AcqRel) {
            unavailable(format!("{operation}: {cause}"))
        } else {
            // Already reported for this outage: keep the logs readable.
            ApiError::new(
                ErrorCode::StateUnavailable,
                "Conversation state store unavailable",
            )
            .with_details("the shared state store (Redis) did not answer; nothing was executed")
            .with_retry_after(1)
        }
    }

    /// A new dedicated pub/sub connection (subscribing takes a connection of its own), opened
    /// within the call timeout.
    pub async fn pubsub(&self) -> RedisResult<redis::aio::PubSub> {
        match tokio::time::timeout(self.inner.timeout, self.inner.client.get_async_pubsub()).await {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "pub/sub connection timed out",
            ))),
        }
    }

    /// The longest wait for one call.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// True when Redis answers a PING in time.
    pub async fn ping(&self) -> bool {
        self.call("ping", |mut c| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .is_ok()
    }
}

/// The `{org}` hash-tagged prefix of every key of an org.
/// The orgs that have ever parked a pending action, shared by all replicas, so expiries are
/// announced after a restart and whichever replica asked. (One key outside any org's slot; it
/// is only ever used by single-key commands, which Redis Cluster allows.)
const PENDING_ORGS_KEY: &str = "pb:pending-orgs";

fn prefix(org: &str) -> String {
    format!("pb:{{{org}}}:")
}

/// `<len>:<key_id>:<name>`: the length keeps (key_id, name) pairs apart whatever they contain.
fn scoped(scope: &Scope) -> String {
    format!("{}:{}:{}", scope.key_id.len(), scope.key_id, scope.name)
}

fn record_key(scope: &Scope) -> String {
    format!("{}rec:{}", prefix(&scope.org), scoped(scope))
}

fn claim_key(scope: &Scope) -> String {
    format!("{}claim:{}", prefix(&scope.org), scoped(scope))
}

fn pending_key(org: &str, id: &str) -> String {
    format!("{}pending:{id}", prefix(org))
}

fn open_set_key(org: &str) -> String {
    format!("{}pending-open", prefix(org))
}

fn undo_key(org: &str, key_id: &str) -> String {
    format!("{}undo:{key_id}", prefix(org))
}

fn undone_key(org: &str, id: &str) -> String {
    format!("{}undone:{id}", prefix(org))
}

/// The org's rate-window counter for the wall-clock minute `minute` (unix seconds / 60).
pub fn rate_key(org: &str, minute: i64) -> String {
    format!("{}rate:{minute}", prefix(org))
}

/// The org's read-cache generation.
fn generation_key(org: &str) -> String {
    format!("{}gen", prefix(org))
}

/// How long an org's generation outlives its last write. Far beyond any read cache's TTL
/// (at most a minute), so a counter that expired and starts over cannot meet an answer cached
/// under its old value.
const GENERATION_KEEP_MS: i64 = 24 * 3600 * 1000;

fn keyless_key(org: &str, key_id: &str, fingerprint: &[u8; 32]) -> String {
    format!(
        "{}keyless:{}:{key_id}:{}",
        prefix(org),
        key_id.len(),
        hex::encode(fingerprint)
    )
}

/// The identity stored under KEYS[1], or ARGV[1] stored for ARGV[2] ms when there is none.
static KEYLESS_EFFECT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
",
    )
});

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("unreadable {what} in Redis: {e}"))
}

/// Takes the lease unless a record is there: one round trip, and atomic, so a twin can never
/// see "no record" and "no claim" after the owner recorded and released.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local rec = redis.call('GET', KEYS[1])
if rec then return {'recorded', rec} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'granted', ''} end
local holder = redis.call('GET', KEYS[2])
return {'held', holder or ''}
",
    )
});

/// Extends the lease only while this attempt's token holds it (the holder is
/// `<token> <fingerprint>`).
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local h = redis.call('GET', KEYS[1])
if h and string.sub(h, 1, #ARGV[1] + 1) == ARGV[1] .. ' ' then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
    )
});

/// Drops the lease only while this attempt's token holds it (a lapsed lease may be another's).
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local h = redis.call('GET', KEYS[1])
if h and string.sub(h, 1, #ARGV[1] + 1) == ARGV[1] .. ' ' then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// Compare-and-set of a record: inserted only where none is live.
static RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
",
    )
});

/// Parks a pending action (and, with a third key, the ask's record) in one step.
static PUT_PENDING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('HSET', KEYS[1], 'key_id', ARGV[1], 'body', ARGV[2], 'state', 'open', 'expires_at', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
if KEYS[3] then redis.call('SET', KEYS[3], ARGV[6], 'NX', 'PX', ARGV[7]) end
return 1
",
    )
});

/// Settles a pending action once: only an `open` one changes, whoever asks first.
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[1], 'state') ~= 'open' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
",
    )
});

/// Takes the members of an org's open set whose expiry score is at most ARGV[1] (up to ARGV[2]
/// of them) out of the set and returns them: whoever removes a member announces its expiry, so
/// replicas sharing Redis announce each once.
static TAKE_EXPIRED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do redis.call('ZREM', KEYS[1], id) end
return ids
",
    )
});

/// A pending action from its stored hash fields.
fn pending_from_fields(
    org: &str,
    id: &str,
    fields: &std::collections::HashMap<String, String>,
) -> ApiResult<PendingAction> {
    let field = |name: &str| {
        fields
            .get(name)
            .ok_or_else(|| corrupt("pending action", format!("no {name}")))
    };
    let body: PendingBody =
        serde_json::from_str(field("body")?).map_err(|e| corrupt("pending action", e))?;
    let expires_at_ms = field("expires_at")?
        .parse::<i64>()
        .map_err(|e| corrupt("pending action", e))?;
    Ok(PendingAction {
        id: id.to_string(),
        org_id: org.to_string(),
        key_id: field("key_id")?.clone(),
        plan: body.plan,
        action_json: body.action,
        transcript: body.transcript,
        expires_at_ms,
        state: PendingState::parse(field("state")?)?,
    })
}

/// A pending action's body as stored (the state and owner sit in their own hash fields, so
/// settling never rewrites the body).
#[derive(Serialize, Deserialize)]
struct PendingBody {
    plan: Plan,
    action: serde_json::Value,
    transcript: Option<String>,
}

/// An undo entry as stored in a key's list.
#[derive(Serialize, Deserialize)]
struct StoredUndo {
    id: String,
    action_type: String,
    summary: String,
    op: serde_json::Value,
    created_at: String,
}

/// Conversation state shared by replicas through Redis. Cheap to clone.
#[derive(Clone)]
pub struct RedisState {
    link: RedisLink,
    /// How long undo entries, undo marks and settled pending actions are kept.
    retention: Duration,
    /// Orgs that parked pending actions through this replica, for the open-pending gauge.
    orgs: Arc<DashSet<String>>,
}

impl RedisState {
    pub fn new(link: RedisLink, retention: Duration) -> Self {
        RedisState {
            link,
            retention,
            orgs: Arc::new(DashSet::new()),
        }
    }

    pub fn link(&self) -> &RedisLink {
        &self.link
    }

    /// The stored hash of pending action `id` of `org` (empty when there is none).
    async fn pending_fields(
        &self,
        org: &str,
        id: &str,
    ) -> ApiResult<std::collections::HashMap<String, String>> {
        let key = pending_key(org, id);
        self.link
            .call("pending", |mut c| async move {
                redis::cmd("HGETALL").arg(key).query_async(&mut c).await
            })
            .await
    }
}

#[async_trait]
impl StateStore for RedisState {
    async fn lookup(&self, scope: &Scope) -> ApiResult<Option<Record>> {
        let key = record_key(scope);
        let raw: Option<String> = self
            .link
            .call("lookup", |mut c| async move {
                redis::cmd("GET").arg(key).query_async(&mut c).await
            })
            .await?;
        raw.map(|r| serde_json::from_str(&r).map_err(|e| corrupt("idempotency record", e)))
            .transpose()
    }

    async fn record(&self, scope: &Scope, record: &Record, ttl: Duration) -> ApiResult<bool> {
        let key = record_key(scope);
        let body = serde_json::to_string(record).map_err(ApiError::internal)?;
        let inserted: i64 = self
            .link
            .call("record", |mut c| async move {
                RECORD
                    .key(key)
                    .arg(body)
                    .arg(millis(ttl))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(inserted == 1)
    }

    async fn put_pending(
        &self,
        pending: &PendingAction,
        record: Option<(&Scope, &Record, Duration)>,
    ) -> ApiResult<()> {
        let body = serde_json::to_string(&PendingBody {
            plan: pending.plan.clone(),
            action: pending.action_json.clone(),
            transcript: pending.transcript.clone(),
        })
        .map_err(ApiError::internal)?;
        // Kept past its expiry for the retention, so a late confirmation hears "expired".
        let keep = (pending.expires_at_ms - now_ms()).max(0) + millis(self.retention);
        let record = match record {
            Some((scope, r, ttl)) => Some((
                record_key(scope),
                serde_json::to_string(r).map_err(ApiError::internal)?,
                millis(ttl),
            )),
            None => None,
        };
        let (pkey, okey) = (
            pending_key(&pending.org_id, &pending.id),
            open_set_key(&pending.org_id),
        );
        // Registered before anything is parked, once per org and process: the shared set only
        // grows by orgs, and an action is never parked in an org the expiry sweep does not know.
        if !self.orgs.contains(&pending.org_id) {
            let org = pending.org_id.clone();
            let _: i64 = self
                .link
                .call("put_pending", |mut c| async move {
                    redis::cmd("SADD")
                        .arg(PENDING_ORGS_KEY)
                        .arg(org)
                        .query_async(&mut c)
                        .await
                })
                .await?;
        }
        let (key_id, expires, id) = (
            pending.key_id.clone(),
            pending.expires_at_ms,
            pending.id.clone(),
        );
        let _: i64 = self
            .link
            .call("put_pending", |mut c| async move {
                let mut inv = PUT_PENDING.key(pkey);
                inv.key(okey)
                    .arg(key_id)
                    .arg(body)
                    .arg(expires)
                    .arg(keep)
                    .arg(id);
                if let Some((rkey, rbody, rttl)) = record {
                    inv.key(rkey).arg(rbody).arg(rttl);
                }
                inv.invoke_async(&mut c).await
            })
            .await?;
        if self.orgs.len() < GAUGE_ORGS {
            self.orgs.insert(pending.org_id.clone());
        }
        Ok(())
    }

    async fn pending(&self, org: &str, key_id: &str, id: &str) -> ApiResult<Option<PendingAction>> {
        let fields = self.pending_fields(org, id).await?;
        // Another key's pending action is not found, exactly like a missing one.
        if fields.get("key_id").map(String::as_str) != Some(key_id) {
            return Ok(None);
        }
        pending_from_fields(org, id, &fields).map(Some)
    }

    /// Walks the org's open set from the latest expiry down (one TTL for all, so the latest
    /// expiry is the newest question), a page at a time, to the first one of this key.
    async fn latest_open_pending(&self, org: &str, key_id: &str) -> ApiResult<Option<String>> {
        const PAGE: isize = 50;
        let okey = open_set_key(org);
        let now = now_ms();
        let mut offset: isize = 0;
        loop {
            let (okey2, from) = (okey.clone(), offset);
            let ids: Vec<String> = self
                .link
                .call("latest_open_pending", |mut c| async move {
                    redis::cmd("ZREVRANGEBYSCORE")
                        .arg(okey2)
                        .arg("+inf")
                        .arg(format!("({now}"))
                        .arg("LIMIT")
                        .arg(from)
                        .arg(PAGE)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            if ids.is_empty() {
                return Ok(None);
            }
            let keys: Vec<String> = ids.iter().map(|id| pending_key(org, id)).collect();
            let owners: Vec<(Option<String>, Option<String>)> = self
                .link
                .call("latest_open_pending", |mut c| async move {
                    let mut p = redis::pipe();
                    for k in &keys {
                        p.cmd("HMGET").arg(k).arg("key_id").arg("state");
                    }
                    p.query_async(&mut c).await
                })
                .await?;
            let found = ids.iter().zip(owners).find(|(_, (owner, state))| {
                owner.as_deref() == Some(key_id) && state.as_deref() == Some("open")
            });
            if let Some((id, _)) = found {
                return Ok(Some(id.clone()));
            }
            if ids.len() < PAGE as usize {
                return Ok(None);
            }
            offset += PAGE;
        }
    }

    async fn settle_pending(&self, org: &str, id: &str, to: PendingState) -> ApiResult<bool> {
        let (pkey, okey, id) = (pending_key(org, id), open_set_key(org), id.to_string());
        let settled: i64 = self
            .link
            .call("settle_pending", |mut c| async move {
                SETTLE
                    .key(pkey)
                    .key(okey)
                    .arg(to.as_str())
                    .arg(id)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(settled == 1)
    }

    async fn push_undo(&self, org: &str, key_id: &str, entry: &UndoEntry) -> ApiResult<()> {
        let stored = StoredUndo {
            id: entry.id.clone(),
            action_type: entry.action_type.clone(),
            summary: entry.summary.clone(),
            op: serde_json::to_value(&entry.op).map_err(ApiError::internal)?,
            created_at: entry.created_at.clone(),
        };
        let body = serde_json::to_string(&stored).map_err(ApiError::internal)?;
        let key = undo_key(org, key_id);
        let keep = millis(self.retention);
        self.link
            .call("push_undo", |mut c| async move {
                redis::pipe()
                    .atomic()
                    .lpush(&key, body)
                    .ignore()
                    .ltrim(&key, 0, UNDO_STACK - 1)
                    .ignore()
                    .pexpire(&key, keep)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
    }

    async fn latest_undo(
        &self,
        org: &str,
        key_id: &str,
        since: &str,
    ) -> ApiResult<Option<UndoEntry>> {
        let key = undo_key(org, key_id);
        let raw: Vec<String> = self
            .link
            .call("latest_undo", |mut c| async move {
                redis::cmd("LRANGE")
                    .arg(key)
                    .arg(0)
                    .arg(UNDO_STACK - 1)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        // Newest first; stop at the first entry older than the window.
        let mut candidates = Vec::new();
        for r in raw {
            let e: StoredUndo = serde_json::from_str(&r).map_err(|e| corrupt("undo entry", e))?;
            if e.created_at.as_str() < since {
                break;
            }
            candidates.push(e);
        }
        if candidates.is_empty() {
            return Ok(None);
        }
        let marks: Vec<String> = candidates.iter().map(|e| undone_key(org, &e.id)).collect();
        let used: Vec<Option<String>> = self
            .link
            .call("latest_undo", |mut c| async move {
                redis::cmd("MGET").arg(marks).query_async(&mut c).await
            })
            .await?;
        let Some(e) = candidates
            .into_iter()
            .zip(used)
            .find_map(|(e, used)| used.is_none().then_some(e))
        else {
            return Ok(None);
        };
        // An operation that cannot be read is an error: guessing could undo the wrong thing.
        let op: UndoOp = serde_json::from_value(e.op).map_err(|err| corrupt("undo entry", err))?;
        Ok(Some(UndoEntry {
            id: e.id,
            action_type: e.action_type,
            summary: e.summary,
            op,
            created_at: e.created_at,
        }))
    }

    async fn mark_undone(&self, org: &str, id: &str, reverted: bool) -> ApiResult<bool> {
        let key = undone_key(org, id);
        let keep = millis(self.retention);
        let set: Option<String> = self
            .link
            .call("mark_undone", |mut c| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(if reverted { "1" } else { "0" })
                    .arg("NX")
                    .arg("PX")
                    .arg(keep)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(set.is_some())
    }

    async fn is_undone(&self, org: &str, id: &str) -> ApiResult<bool> {
        let key = undone_key(org, id);
        let mark: Option<String> = self
            .link
            .call("is_undone", |mut c| async move {
                redis::cmd("GET").arg(key).query_async(&mut c).await
            })
            .await?;
        Ok(mark.as_deref() == Some("1"))
    }

    /// Approximate: the open pending actions of the orgs that asked through this replica since
    /// it started (each replica reports its own view; the sum over replicas double-counts orgs
    /// served by several).
    async fn open_pending(&self) -> ApiResult<u64> {
        let orgs: Vec<String> = self.orgs.iter().map(|o| o.key().clone()).collect();
        if orgs.is_empty() {
            return Ok(0);
        }
        let now = now_ms();
        let counts: Vec<u64> = self
            .link
            .call("open_pending", |mut c| async move {
                let mut p = redis::pipe();
                for org in &orgs {
                    let key = open_set_key(org);
                    // Expired members stay until their expiry is announced.
                    p.cmd("ZCOUNT").arg(&key).arg(format!("({now}")).arg("+inf");
                }
                p.query_async(&mut c).await
            })
            .await?;
        Ok(counts.into_iter().sum())
    }

    /// Every org that ever parked a pending action is looked at, by every replica, so an expiry
    /// is announced after a restart too; the script hands each one to one replica only.
    async fn take_expired_pending(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> ApiResult<Vec<PendingAction>> {
        let orgs: Vec<String> = self
            .link
            .call("take_expired", |mut c| async move {
                redis::cmd("SMEMBERS")
                    .arg(PENDING_ORGS_KEY)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let mut taken = Vec::new();
        for org in orgs {
            if taken.len() >= limit {
                break;
            }
            let key = open_set_key(&org);
            let room = limit - taken.len();
            let ids: Vec<String> = self
                .link
                .call("take_expired", |mut c| async move {
                    TAKE_EXPIRED
                        .key(key)
                        .arg(before_ms)
                        .arg(room)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            for id in ids {
                let fields = self.pending_fields(&org, &id).await?;
                // Settled meanwhile, or gone with its retention: nothing to announce.
                if fields.get("state").map(String::as_str) != Some("open") {
                    continue;
                }
                taken.push(pending_from_fields(&org, &id, &fields)?);
            }
        }
        Ok(taken)
    }

    /// Redis expires every key itself.
    async fn prune(&self) -> ApiResult<u64> {
        Ok(0)
    }

    /// Nothing to note: every lookup asks Redis, since another replica may record meanwhile
    /// only where none is (records never change once written, but a local copy would save a
    /// round trip only on replays).
    fn remember(&self, _scope: &Scope, _record: &Record, _ttl: Duration) {}

    async fn acquire(
        &self,
        scope: &Scope,
        token: &str,
        fingerprint: [u8; 32],
        lease: Duration,
    ) -> ApiResult<Lease> {
        let (rkey, ckey) = (record_key(scope), claim_key(scope));
        let holder = format!("{token} {}", hex::encode(fingerprint));
        let (what, value): (String, String) = self
            .link
            .call("acquire", |mut c| async move {
                ACQUIRE
                    .key(rkey)
                    .key(ckey)
                    .arg(holder)
                    .arg(millis(lease))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        match what.as_str() {
            "recorded" => serde_json::from_str(&value)
                .map(|r| Lease::Recorded(Box::new(r)))
                .map_err(|e| corrupt("idempotency record", e)),
            "granted" => Ok(Lease::Granted),
            _ => {
                let mut fp = [0u8; 32];
                let known = value
                    .split_once(' ')
                    .is_some_and(|(_, hex_fp)| hex::decode_to_slice(hex_fp, &mut fp).is_ok());
                Ok(Lease::Held(known.then_some(fp)))
            }
        }
    }

    async fn renew(&self, scope: &Scope, token: &str, lease: Duration) -> ApiResult<bool> {
        let (key, token) = (claim_key(scope), token.to_string());
        let renewed: i64 = self
            .link
            .call("renew", |mut c| async move {
                RENEW
                    .key(key)
                    .arg(token)
                    .arg(millis(lease))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(renewed == 1)
    }

    async fn release(&self, scope: &Scope, token: &str) -> ApiResult<()> {
        let (key, token) = (claim_key(scope), token.to_string());
        let _: i64 = self
            .link
            .call("release", |mut c| async move {
                RELEASE.key(key).arg(token).invoke_async(&mut c).await
            })
            .await?;
        Ok(())
    }

    fn shared(&self) -> bool {
        true
    }

    async fn ping(&self) -> bool {
        self.link.ping().await
    }

    async fn read_generation(&self, org: &str) -> ApiResult<u64> {
        let key = generation_key(org);
        let n: Option<u64> = self
            .link
            .call("read_generation", |mut c| async move {
                redis::cmd("GET").arg(key).query_async(&mut c).await
            })
            .await?;
        Ok(n.unwrap_or(0))
    }

    async fn bump_read_generation(&self, org: &str) -> ApiResult<()> {
        let key = generation_key(org);
        self.link
            .call("bump_generation", |mut c| async move {
                redis::pipe()
                    .atomic()
                    .incr(&key, 1)
                    .ignore()
                    .pexpire(&key, GENERATION_KEEP_MS)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
    }

    async fn keyless_effect(
        &self,
        org: &str,
        key_id: &str,
        fingerprint: [u8; 32],
        candidate: &str,
        window: Duration,
    ) -> ApiResult<Option<String>> {
        let (key, candidate) = (
            keyless_key(org, key_id, &fingerprint),
            candidate.to_string(),
        );
        let id: String = self
            .link
            .call("keyless_effect", |mut c| async move {
                KEYLESS_EFFECT
                    .key(key)
                    .arg(candidate)
                    .arg(millis(window))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(Some(id))
    }

    async fn append_event(
        &self,
        key_id: &str,
        body: &str,
        keep: Duration,
        max_len: usize,
    ) -> ApiResult<u64> {
        let (seq_key, journal_key) = (event_seq_key(key_id), journal_key(key_id));
        let body = body.to_string();
        let (now, keep) = (now_ms(), millis(keep));
        self.link
            .call("append_event", |mut c| async move {
                APPEND_EVENT
                    .key(seq_key)
                    .key(journal_key)
                    .arg(now)
                    .arg(keep)
                    .arg(max_len)
                    .arg(body)
                    .invoke_async(&mut c)
                    .await
            })
            .await
    }

    async fn events_after(
        &self,
        key_id: &str,
        after: u64,
        limit: usize,
    ) -> ApiResult<Vec<(u64, String)>> {
        let key = journal_key(key_id);
        let entries: Vec<(String, u64)> = self
            .link
            .call("events_after", |mut c| async move {
                redis::cmd("ZREVRANGEBYSCORE")
                    .arg(key)
                    .arg("+inf")
                    .arg(format!("({after}"))
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let now = now_ms();
        let mut out = Vec::with_capacity(entries.len());
        for (member, seq) in entries.into_iter().rev() {
            let (expires, body) = member
                .split_once('|')
                .ok_or_else(|| corrupt("journaled event", "no expiry prefix"))?;
            let expires: i64 = expires
                .parse()
                .map_err(|e| corrupt("journaled event expiry", e))?;
            if expires > now {
                out.push((seq, body.to_string()));
            }
        }
        Ok(out)
    }
}

/// The per-key event sequence counter. Events belong to an API key (an event does not know its
/// org), so the key id is the hash tag: counter and journal share a slot in Redis Cluster.
pub(crate) fn event_seq_key(key_id: &str) -> String {
    format!("pb:{{{key_id}}}:evseq")
}

/// The per-key event journal: a sorted set scored by seq; each member is
/// `<expiry ms, 13 digits>|<body>`, so trimming by time needs no decoding.
fn journal_key(key_id: &str) -> String {
    format!("pb:{{{key_id}}}:events")
}

/// Allocates the next seq of a key and journals the event under it, then trims the journal by
/// length and by time (oldest first, a bounded number per call). The counter has no expiry: a
/// seq is never reused, so a client resuming after an old seq can never skip new events.
static APPEND_EVENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local now = tonumber(ARGV[1])
local keep = tonumber(ARGV[2])
local max = tonumber(ARGV[3])
local seq = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], seq, string.format('%013d', now + keep) .. '|' .. ARGV[4])
local n = redis.call('ZCARD', KEYS[2])
if n > max then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, n - max - 1) end
for _ = 1, 100 do
  local first = redis.call('ZRANGE', KEYS[2], 0, 0)
  if not first[1] or tonumber(string.sub(first[1], 1, 13)) > now then break end
  redis.call('ZREM', KEYS[2], first[1])
end
redis.call('PEXPIRE', KEYS[2], keep)
return seq
",
    )
});

/// A throwaway `redis-server` on a free loopback port, for tests; killed when dropped.
#[cfg(test)]
pub(crate) mod test_server {
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    pub struct TestRedis {
        child: Child,
        pub port: u16,
    }

    impl TestRedis {
        /// `None` (with a notice) when `redis-server` is not installed; CI installs it.
        pub fn start() -> Option<TestRedis> {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .ok()?;
            let child = match Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
            {
                Ok(c) => c,
                Err(e) => {
                    eprintln!(
                        "SKIPPED: redis-server not available ({e}); install it to run this test"
                    );
                    return None;
                }
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(10));
            }
            Some(TestRedis { child, port })
        }

        pub fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/0", self.port)
        }
    }

    impl Drop for TestRedis {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_server::TestRedis;
    use super::*;
    use crate::native::reply::NativeReply;
    use crate::state::claims::{Claim, Claims};
    use crate::state::{expiry_ms, Outcome};

    fn rec(fp: u8, text: &str) -> Record {
        Record {
            fingerprint: [fp; 32],
            outcome: Outcome::Reply {
                reply: Box::new(NativeReply::result(text, serde_json::json!({ "n": fp }))),
            },
            undo_id: Some(format!("u{fp}")),
        }
    }

    fn state(redis: &TestRedis) -> RedisState {
        let link = RedisLink::connect(&redis.url(), DEFAULT_TIMEOUT).unwrap();
        RedisState::new(link, Duration::from_secs(3600))
    }

    #[tokio::test]
    async fn records_are_compare_and_set_per_key_and_expire() {
        let Some(redis) = TestRedis::start() else {
            return;
        };
        let s = state(&redis);
        let scope = Scope::new("o", "k", "turn-1");
        let ttl = Duration::from_secs(60);
        assert!(s.lookup(&scope).await.unwrap().is_none());
        assert!(s.record(&scope, &rec(1, "First."), ttl).await.unwrap());
        assert!(!s.record(&scope, &rec(2, "Second."), ttl).await.unwrap());
        let got = s.lookup(&scope).await.unwrap().unwrap();
        assert_eq!(got.fingerprint, [1; 32]);
        assert_eq!(got.undo_id.as_deref(), Some("u1"));
        // Another API key, another org: other scopes.
        assert!(s
            .lookup(&Scope::new("o", "k2", "turn-1"))
            .await
            .unwrap()
            .is_none());
        assert!(s
            .lookup(&Scope::new("o2", "k", "turn-1"))
            .await
            .unwrap()
            .is_none());
        // A key id that contains the separator cannot collide with another pair.
        let a = Scope::new("o", "k:x", "y");
        let b = Scope::new("o", "k", "x:y");
        assert!(s.record(&a, &rec(3, "A."), ttl).await.unwrap());
        assert!(s.lookup(&b).await.unwrap().is_none());
        // Records expire with their TTL and can then be written again.
        let short = Scope::new("o", "k", "short");
        assert!(s
            .record(&short, &rec(4, "Old."), Duration::from_millis(20))
            .await
            .unwrap());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(s.lookup(&short).await.unwrap().is_none());
        assert!(s.record(&short, &rec(5, "New."), ttl).await.unwrap());
        assert_eq!(s.prune().await.unwrap(), 0, "Redis expires keys itself");
    }

    #[tokio::test]
    async fn leases_are_exclusive_renewed_by_their_owner_and_give_way_to_the_record() {
        let Some(redis) = TestRedis::start() else {
            return;
        };
        let s = state(&redis);
        let scope = Scope::new("o", "k", "turn-1");
        let lease = Duration::from_secs(5);
        assert!(matches!(
            s.acquire(&scope, "t1", [1; 32], lease).await.unwrap(),
            Lease::Granted
        ));
        // Another replica sees it held, with the holder's fingerprint.
        assert!(matches!(
            s.acquire(&scope, "t2", [1; 32], lease).await.unwrap(),
            Lease::Held(Some(fp)) if fp == [1; 32]
        ));
        assert!(s.renew(&scope, "t1", lease).await.unwrap());
        assert!(!s.renew(&scope, "t2", lease).await.unwrap());
        // A stranger's release leaves the lease alone.
        s.release(&scope, "t2").await.unwrap();
        assert!(matches!(
            s.acquire(&scope, "t3", [1; 32], lease).await.unwrap(),
            Lease::Held(_)
        ));
        // Recorded, then released: everyone finds the record, nobody gets the lease.
        assert!(s
            .record(&scope, &rec(1, "Done."), Duration::from_secs(60))
            .await
            .unwrap());
        s.release(&scope, "t1").await.unwrap();
        assert!(matches!(
            s.acquire(&scope, "t4", [1; 32], lease).await.unwrap(),
            Lease::Recorded(r) if r.fingerprint == [1; 32]
        ));
        // A lapsed lease (its owner died) frees the scope.
        let other = Scope::new("o", "k", "turn-2");
        assert!(matches!(
            s.acquire(&other, "t5", [2; 32], Duration::from_millis(20))
                .await
                .unwrap(),
            Lease::Granted
        ));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(matches!(
            s.acquire(&other, "t6", [2; 32], lease).await.unwrap(),
            Lease::Granted
        ));
    }

    #[tokio::test]
    async fn twins_on_two_replicas_execute_once_and_replay() {
        let Some(redis) = TestRedis::start() else {
            return;
        };
        let (a, b) = (state(&redis), state(&redis));
        let (ca, cb) = (Claims::new(Arc::new(a.clone())), Claims::new(Arc::new(b)));
        let scope = Scope::new("o", "k", "turn-1");
        let wait = Duration::from_secs(5);
        let Claim::Owner(guard) = ca.claim(&scope, [1; 32], wait).await.unwrap() else {
            panic!("first claim owns the scope");
        };
        // A different request under the same key on the other replica: reused, at once.
        assert!(matches!(
            cb.claim(&scope, [2; 32], wait).await.unwrap(),
            Claim::ReusedRunning
        ));
        let twin = {
            let (cb, scope) = (cb.clone(), scope.clone());
            tokio::spawn(async move { cb.claim(&scope, [1; 32], wait).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!twin.is_finished(), "the twin waits while the owner runs");
        let r = rec(1, "Done.");
        assert!(a.record(&scope, &r, Duration::from_secs(60)).await.unwrap());
        guard.finish(r);
        assert!(matches!(twin.await.unwrap().unwrap(), Claim::Replay(_)));
        // An owner that gives up lets the other replica own the scope.
        let scope2 = Scope::new("o", "k", "turn-2");
        let Claim::Owner(g) = ca.claim(&scope2, [1; 32], wait).await.unwrap() else {
            panic!("owner");
        };
        let waiter = {
            let (cb, scope2) = (cb.clone(), scope2.clone());
            tokio::spawn(async move { cb.claim(&scope2, [1; 32], wait).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        g.abandon();
        assert!(matches!(waiter.await.unwrap().unwrap(), Claim::Owner(_)));
        // Still running after the wait: in use.
        let scope3 = Scope::new("o", "k", "turn-3");
        let _held = ca.claim(&scope3, [1; 32], wait).await.unwrap();
        assert!(matches!(
            cb.claim(&scope3, [1; 32], Duration::from_millis(100))
                .await
                .unwrap(),
            Claim::InUse
        ));
    }

    #[tokio::test]
    async fn pending_actions_belong_to_their_key_and_settle_once() {
        let Some(redis) = TestRedis::start() else {
            return;
        };
        let s = state(&redis);
        let p = PendingAction {
            transcript: Some("undo".into()),
            ..crate::state::test_pending("p1", "k", expiry_ms(Duration::from_secs(300)))
        };
        let ask = Scope::new("o", "k", "ask-1");
        s.put_pending(&p, Some((&ask, &rec(9, "Sure?"), Duration::from_secs(60))))
            .await
            .unwrap();
        assert_eq!(s.lookup(&ask).await.unwrap().unwrap().fingerprint, [9; 32]);
        assert!(s.pending("o", "k2", "p1").await.unwrap().is_none());
        assert!(s.pending("o2", "k", "p1").await.unwrap().is_none());
        let got = s.pending("o", "k", "p1").await.unwrap().unwrap();
        assert_eq!(got.state, PendingState::Open);
        assert_eq!(got.transcript.as_deref(), Some("undo"));
        assert_eq!(got.expires_at_ms, p.expires_at_ms);
        assert_eq!(s.open_pending().await.unwrap(), 1);
        // Settled once, whoever asks first; a second settle (another replica) loses.
        let (s1, s2) = (s.clone(), s.clone());
        let (x, y) = tokio::join!(
            s1.settle_pending("o", "p1", PendingState::Executed),
            s2.settle_pending("o", "p1", PendingState::Cancelled)
        );
        assert!(x.unwrap() ^ y.unwrap(), "exactly one settles");
        let got = s.pending("o", "k", "p1").await.unwrap().unwrap();
        assert_ne!(got.state, PendingState::Open);
        assert_eq!(s.open_pending().await.unwrap(), 0);
        assert!(!s
            .settle_pending("o", "missing", PendingState::Executed)
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn the_latest_open_pending_action_is_the_keys_own_newest() {
        let Some(redis) = TestRedis::start() else {
            return;
        };
        let s = state(&redis);
        let pending = |id: &str, key: &str, secs: u64| {
            crate::state::test_pending(id, key, expiry_ms(Duration::from_secs(secs)))
        };
        assert_eq!(s.latest_open_pending("o", "k").await.unwrap(), None);
        s.put_pending(&pending("old", "k", 100), None)
            .await
            .unwrap();
        s.put_pending(&pending("new", "k", 200), None)
            .await
            .unwrap();
        s.put_pending(&pending("other", "k2", 300), None)
            .await
            .unwrap();
        assert_eq!(
            s.latest_open_pending("o", "k").await.unwrap().as_deref(),
            Some("new")
        );
        assert!(s
            .settle_pending("o", "new", PendingState::Cancelled)
            .await
            .unwrap());
        assert_eq!(
            s.latest_open_pending("o", "k").await.unwrap().as_deref(),
            Some("old")
        );
        assert_eq!(s.latest_open_pending("o2", "k").await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_expired_open_pending_action_is_taken_once_across_replicas() {
        let Some(redis) = TestRedis::start() else {
            return;
        };
        let (a, b) = (state(&redis), state(&redis));
        let pending =
            |id: &str, expires_at_ms: i64| crate::state::test_pending(id, "k", expires_at_ms);
        let past = now_ms() - 10_000;
        // Both replicas asked in org "o": both look at it.
        a.put_pending(&pending("expired", past), None)
            .await
            .unwrap();
        a.put_pending(&pending("settled", past), None)
            .await
            .unwrap();
        b.put_pending(&pending("fresh", expiry_ms(Duration::from_secs(300))), None)
            .await
            .unwrap();
        assert!(a
            .settle_pending("o", "settled", PendingState::Cancelled)
            .await
            .unwrap());
        // Expired members still count as taken-or-not, never as open.
        assert_eq!(a.open_pending().await.unwrap(), 1);

        let now = now_ms();
        let (x, y) = tokio::join!(
            a.take_expired_pending(now, 10),
            b.take_expired_pending(now, 10)
        );
        let taken: Vec<String> = x
            .unwrap()
            .into_iter()
            .chain(y.unwrap())
            .map(|p| p.id)
            .collect();
        assert_eq!(
            taken,
            vec!["expired".to_string()],
            "announced once, by one replica"
        );
        // A replica that parked nothing (one restarted since) still sweeps the org.
        a.put_pending(&pending("expired-2", past), None)
            .await
            .unwrap();
        let restarted = state(&redis);
        let taken: Vec<String> = restarted
            .take_expired_pending(now, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(taken, vec!["expired-2".to_string()]);
        assert!(a.take_expired_pending(now, 10).await.unwrap().is_empty());
        // It stays readable: a late confirmation hears "expired", not "not found".
        let late = a.pending("o", "k", "expired").await.unwrap().unwrap();
        assert_eq!(late.state, PendingState::Open);
        assert!(late.is_expired(now));
    }

    #[tokio::test]
    async fn undo_entries_are_per_key_newest_first_and_marked_once() {
        let Some(redis) = TestRedis::start() else {
            return;
        };
        let s = state(&redis);
        let entry = |id: &str, created_at: &str| UndoEntry {
            id: id.into(),
            action_type: "note_on_contact".into(),
            summary: "The note is gone.".into(),
            op: UndoOp::DeleteNote {
                note_id: format!("n-{id}"),
            },
            created_at: created_at.into(),
        };
        s.push_undo("o", "k", &entry("u1", "2026-01-01T00:00:00.000Z"))
            .await
            .unwrap();
        s.push_undo("o", "k", &entry("u2", "2026-01-01T00:00:01.000Z"))
            .await
            .unwrap();
        assert!(s.latest_undo("o", "k2", "").await.unwrap().is_none());
        assert_eq!(s.latest_undo("o", "k", "").await.unwrap().unwrap().id, "u2");
        // Outside the window: nothing.
        assert!(s
            .latest_undo("o", "k", "2026-01-01T00:00:02.000Z")
            .await
            .unwrap()
            .is_none());
        assert!(!s.is_undone("o", "u2").await.unwrap());
        assert!(s.mark_undone("o", "u2", true).await.unwrap());
        assert!(!s.mark_undone("o", "u2", true).await.unwrap());
        assert!(s.is_undone("o", "u2").await.unwrap());
        // The next undo reaches the older entry; one left alone is used up but not undone.
        let next = s.latest_undo("o", "k", "").await.unwrap().unwrap();
        assert_eq!(next.id, "u1");
        assert!(matches!(next.op, UndoOp::DeleteNote { note_id } if note_id == "n-u1"));
        assert!(s.mark_undone("o", "u1", false).await.unwrap());
        assert!(!s.is_undone("o", "u1").await.unwrap());
        assert!(s.latest_undo("o", "k", "").await.unwrap().is_none());
        // The stack is bounded.
        for i in 0..(UNDO_STACK + 20) {
            s.push_undo(
                "o",
                "k3",
                &entry(&format!("b{i}"), "2026-01-01T00:00:00.000Z"),
            )
            .await
            .unwrap();
        }
        let len: i64 = s
            .link
            .call("test", |mut c| async move {
                redis::cmd("LLEN")
                    .arg(undo_key("o", "k3"))
                    .query_async(&mut c)
                    .await
            })
            .await
            .unwrap();
        assert_eq!(len, i64::try_from(UNDO_STACK).unwrap());
    }

    #[tokio::test]
    async fn read_generations_and_keyless_identities_are_shared() {
        let Some(redis) = TestRedis::start() else {
            return;
        };
        let (a, b) = (state(&redis), state(&redis));
        assert_eq!(b.read_generation("o").await.unwrap(), 0);
        a.bump_read_generation("o").await.unwrap();
        a.bump_read_generation("o").await.unwrap();
        assert_eq!(b.read_generation("o").await.unwrap(), 2);
        assert_eq!(b.read_generation("o2").await.unwrap(), 0, "per org");
        // The first replica's identity wins for the window; another key or request is apart.
        let window = Duration::from_millis(200);
        let first = a.keyless_effect("o", "k", [1; 32], "id-a", window);
        assert_eq!(first.await.unwrap().as_deref(), Some("id-a"));
        let again = b.keyless_effect("o", "k", [1; 32], "id-b", window);
        assert_eq!(again.await.unwrap().as_deref(), Some("id-a"));
        let other_key = b.keyless_effect("o", "k2", [1; 32], "id-c", window);
        assert_eq!(other_key.await.unwrap().as_deref(), Some("id-c"));
        let other_request = b.keyless_effect("o", "k", [2; 32], "id-d", window);
        assert_eq!(other_request.await.unwrap().as_deref(), Some("id-d"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let later = b.keyless_effect("o", "k", [1; 32], "id-e", window);
        assert_eq!(
            later.await.unwrap().as_deref(),
            Some("id-e"),
            "a new write after it"
        );
    }

    #[tokio::test]
    async fn every_key_of_an_org_shares_one_cluster_slot() {
        let scope = Scope::new("acme", "k", "n");
        for key in [
            record_key(&scope),
            claim_key(&scope),
            pending_key("acme", "p"),
            open_set_key("acme"),
            undo_key("acme", "k"),
            undone_key("acme", "u"),
            rate_key("acme", 1),
            generation_key("acme"),
            keyless_key("acme", "k", &[0; 32]),
        ] {
            assert!(key.starts_with("pb:{acme}:"), "{key}");
        }
    }

    #[tokio::test]
    async fn a_dead_redis_is_state_unavailable_and_recovery_is_automatic() {
        let Some(redis) = TestRedis::start() else {
            return;
        };
        let port = redis.port;
        let s = state(&redis);
        let scope = Scope::new("o", "k", "turn-1");
        assert!(s.ping().await);
        drop(redis);
        let e = s.lookup(&scope).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::StateUnavailable);
        assert_eq!(e.status(), 503);
        assert_eq!(e.retry_after, Some(1));
        let e = s
            .acquire(&scope, "t", [1; 32], Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::StateUnavailable);
        assert!(!s.ping().await);
        // Back on the same port: the same store works again without a restart.
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        struct Kill(std::process::Child);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let _back = Kill(child);
        let mut ok = false;
        for _ in 0..200 {
            if s.lookup(&scope).await.is_ok() {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(ok, "the store recovers once Redis is back");
        assert!(s.ping().await);
    }
}
