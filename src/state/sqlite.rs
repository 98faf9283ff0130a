//! The embedded [`StateStore`]: conversation state in the service's SQLite database, behind a
//! bounded front cache of finished records.
//!
//! The row functions at the bottom take a plain connection so the embedded CRM backend can run
//! them inside the transaction of an effect: that is how a keyed write's record and a pending
//! action's settlement commit together with what they describe.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::{expiry_ms, now_ms, PendingAction, PendingState, Record, Scope, StateStore, UndoEntry};
use crate::error::{ApiError, ApiResult};
use crate::native::undo::UndoOp;
use crate::store::{native as rows, Store};

/// A finished record in the front cache, with its expiry (the cache's own TTL is only a bound).
struct Cached {
    record: Arc<Record>,
    expires_at_ms: i64,
}

/// Rows deleted per statement by the retention sweep, so one sweep never holds the writer
/// long enough to be felt by a turn.
const PRUNE_BATCH: i64 = 2_000;

#[derive(Clone)]
/// Its writes go through `Store::write_bookkeeping`: no read action shows conversation state,
/// so recording it must not empty the native read cache.
pub struct SqliteState {
    store: Store,
    /// Finished records by scope. Bounded by bytes with LRU eviction, which admits every new
    /// entry (moka's default TinyLFU may refuse one once full); forgetting one only costs a
    /// read of the table.
    front: moka::sync::Cache<Scope, Arc<Cached>>,
    /// How long undo entries and settled pending actions are kept.
    retention: Duration,
}

impl SqliteState {
    /// `front_bytes` bounds the front cache (0 turns it off); `retention` bounds how long undo
    /// entries and settled pending actions stay (records carry their own expiry).
    pub fn new(store: Store, front_bytes: u64, retention: Duration) -> Self {
        let front = moka::sync::Cache::builder()
            .max_capacity(front_bytes)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .weigher(|k: &Scope, v: &Arc<Cached>| {
                let key = k.org.len() + k.key_id.len() + k.name.len();
                let body = match &v.record.outcome {
                    super::Outcome::Reply { reply } => {
                        reply.spoken_summary.len() + reply.data.json_len() + 256
                    }
                    super::Outcome::Error { error } => {
                        error.message.len() + error.spoken_summary.len() + 128
                    }
                };
                u32::try_from(key + body).unwrap_or(u32::MAX)
            })
            .time_to_live(Duration::from_secs(24 * 3600))
            .build();
        SqliteState {
            store,
            front,
            retention,
        }
    }

    /// A state store on a fresh database in `dir` (unit tests).
    #[cfg(test)]
    pub fn open_for_tests(dir: &std::path::Path, front_bytes: u64) -> Self {
        let store = match Store::open(dir, &crate::store::StoreOptions::default()) {
            Ok(s) => s,
            Err(e) => panic!("test store: {e}"),
        };
        Self::new(store, front_bytes, Duration::from_secs(24 * 3600))
    }

    /// Notes a record that a backend committed with its effect, so the next lookup needs no
    /// read of the table.
    fn cache(&self, scope: &Scope, mut record: Record, expires_at_ms: i64) {
        // Held as text: the weigher counts text, and a tree takes several times that.
        if let super::Outcome::Reply { reply } = &mut record.outcome {
            reply.data.compact();
        }
        self.front.insert(
            scope.clone(),
            Arc::new(Cached {
                record: Arc::new(record),
                expires_at_ms,
            }),
        );
    }

    /// Front-cache entries (tests and diagnostics).
    pub fn cached_records(&self) -> u64 {
        self.front.run_pending_tasks();
        self.front.entry_count()
    }
}

// Most per-turn reads below are one indexed row each: they run on the calling thread when a
// reader is free (`Store::read_fast`), which costs less than the two thread wake-ups of a trip
// through the blocking pool.
#[async_trait]
impl StateStore for SqliteState {
    async fn lookup(&self, scope: &Scope) -> ApiResult<Option<Record>> {
        let now = now_ms();
        if let Some(c) = self.front.get(scope) {
            if c.expires_at_ms > now {
                return Ok(Some((*c.record).clone()));
            }
            self.front.invalidate(scope);
        }
        let s = scope.clone();
        let found = self
            .store
            .read_fast(move |conn| live_record(conn, &s, now))
            .await?;
        if let Some((record, expires_at_ms)) = &found {
            self.cache(scope, record.clone(), *expires_at_ms);
        }
        Ok(found.map(|(r, _)| r))
    }

    async fn record(&self, scope: &Scope, record: &Record, ttl: Duration) -> ApiResult<bool> {
        let expires_at = expiry_ms(ttl);
        let (s, r) = (scope.clone(), record.clone());
        let inserted = self
            .store
            .write_bookkeeping(move |tx| insert_record(tx, &s, &r, expires_at))
            .await?;
        if inserted {
            self.cache(scope, record.clone(), expires_at);
        }
        Ok(inserted)
    }

    async fn put_pending(
        &self,
        pending: &PendingAction,
        record: Option<(&Scope, &Record, Duration)>,
    ) -> ApiResult<()> {
        let p = pending.clone();
        let rec = record.map(|(s, r, ttl)| (s.clone(), r.clone(), expiry_ms(ttl)));
        let rec2 = rec.clone();
        self.store
            .write_bookkeeping(move |tx| {
                insert_pending(tx, &p)?;
                if let Some((s, r, expires_at)) = &rec2 {
                    insert_record(tx, s, r, *expires_at)?;
                }
                Ok(())
            })
            .await?;
        if let Some((s, r, expires_at)) = rec {
            self.cache(&s, r, expires_at);
        }
        Ok(())
    }

    async fn pending(&self, org: &str, key_id: &str, id: &str) -> ApiResult<Option<PendingAction>> {
        let (org, key_id, id) = (org.to_string(), key_id.to_string(), id.to_string());
        self.store
            .read_fast(move |conn| pending(conn, &org, &key_id, &id))
            .await
    }

    async fn latest_open_pending(&self, org: &str, key_id: &str) -> ApiResult<Option<String>> {
        let (org, key_id, now) = (org.to_string(), key_id.to_string(), now_ms());
        // Not `read_fast`: with none open, this walks every action the key still keeps.
        self.store
            .read(move |conn| {
                Ok(conn
                    .prepare_cached(
                        "SELECT id FROM pending_actions
                          WHERE org_id = ?1 AND key_id = ?2 AND state = 'open' AND expires_at > ?3
                          ORDER BY created_at DESC, rowid DESC LIMIT 1",
                    )?
                    .query_row(params![org, key_id, now], |r| r.get(0))
                    .optional()?)
            })
            .await
    }

    async fn settle_pending(&self, _org: &str, id: &str, to: PendingState) -> ApiResult<bool> {
        let id = id.to_string();
        self.store
            .write_bookkeeping(move |tx| settle(tx, &id, to))
            .await
    }

    async fn push_undo(&self, org: &str, key_id: &str, entry: &UndoEntry) -> ApiResult<()> {
        let (org, key_id, entry) = (org.to_string(), key_id.to_string(), entry.clone());
        self.store
            .write_bookkeeping(move |tx| insert_undo(tx, &org, &key_id, &entry))
            .await
    }

    async fn latest_undo(
        &self,
        org: &str,
        key_id: &str,
        since: &str,
    ) -> ApiResult<Option<UndoEntry>> {
        let (org, key_id, since) = (org.to_string(), key_id.to_string(), since.to_string());
        self.store
            .read_fast(move |conn| latest_undo(conn, &org, &key_id, &since))
            .await
    }

    async fn mark_undone(&self, _org: &str, id: &str, reverted: bool) -> ApiResult<bool> {
        let id = id.to_string();
        self.store
            .write_bookkeeping(move |tx| mark_undone(tx, &id, reverted))
            .await
    }

    async fn is_undone(&self, _org: &str, id: &str) -> ApiResult<bool> {
        let id = id.to_string();
        self.store.read_fast(move |conn| is_undone(conn, &id)).await
    }

    async fn open_pending(&self) -> ApiResult<u64> {
        let now = now_ms();
        self.store
            .read(move |conn| {
                let n: i64 = conn
                    .prepare_cached(
                        "SELECT COUNT(*) FROM pending_actions WHERE state = 'open' AND expires_at > ?1",
                    )?
                    .query_row([now], |r| r.get(0))?;
                Ok(u64::try_from(n).unwrap_or(0))
            })
            .await
    }

    fn remember(&self, scope: &Scope, record: &Record, ttl: Duration) {
        self.cache(scope, record.clone(), expiry_ms(ttl));
    }

    async fn take_expired_pending(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> ApiResult<Vec<PendingAction>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Asked every second: a read first, so a quiet database sees no write transaction.
        let any = self
            .store
            .read(move |conn| {
                Ok(conn
                    .prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM pending_actions
                          WHERE state = 'open' AND expires_at <= ?1 AND expiry_announced = 0)",
                    )?
                    .query_row([before_ms], |r| r.get::<_, bool>(0))?)
            })
            .await?;
        if !any {
            return Ok(Vec::new());
        }
        self.store
            .write_bookkeeping(move |tx| take_expired(tx, before_ms, limit))
            .await
    }

    async fn prune(&self) -> ApiResult<u64> {
        let now = now_ms();
        let keep_ms = i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
        let settled_before = now.saturating_sub(keep_ms);
        let undo_before = crate::ids::to_rfc3339(
            chrono::Utc::now()
                - chrono::Duration::from_std(self.retention).unwrap_or(chrono::Duration::days(1)),
        );
        self.store
            .write_bookkeeping(move |tx| {
                let mut n = tx
                    .prepare_cached(
                        "DELETE FROM idempotency_records WHERE (org_id, key_id, name) IN
                           (SELECT org_id, key_id, name FROM idempotency_records
                             WHERE expires_at <= ?1 LIMIT ?2)",
                    )?
                    .execute(params![now, PRUNE_BATCH])?;
                // A pending action stays past its expiry for the retention period, so a late
                // confirmation hears "expired" rather than "not found".
                n += tx
                    .prepare_cached(
                        "DELETE FROM pending_actions WHERE id IN
                           (SELECT id FROM pending_actions WHERE expires_at <= ?1 LIMIT ?2)",
                    )?
                    .execute(params![settled_before, PRUNE_BATCH])?;
                n += tx
                    .prepare_cached(
                        "DELETE FROM undo_entries WHERE id IN
                           (SELECT id FROM undo_entries WHERE created_at < ?1 LIMIT ?2)",
                    )?
                    .execute(params![undo_before, PRUNE_BATCH])?;
                n += tx
                    .prepare_cached(
                        "DELETE FROM event_journal WHERE rowid IN
                           (SELECT rowid FROM event_journal WHERE expires_ms <= ?1 LIMIT ?2)",
                    )?
                    .execute(params![now, PRUNE_BATCH])?;
                Ok(u64::try_from(n).unwrap_or(0))
            })
            .await
    }

    async fn append_event(
        &self,
        key_id: &str,
        body: &str,
        keep: Duration,
        max_len: usize,
    ) -> ApiResult<u64> {
        let (key_id, body) = (key_id.to_string(), body.to_string());
        let expires = super::expiry_ms(keep);
        let max_len = i64::try_from(max_len).unwrap_or(i64::MAX);
        self.store
            .write_bookkeeping(move |tx| {
                let seq: i64 = tx
                    .prepare_cached(
                        "INSERT INTO event_seq (key_id, last_seq) VALUES (?1, 1)
                         ON CONFLICT (key_id) DO UPDATE SET last_seq = last_seq + 1
                         RETURNING last_seq",
                    )?
                    .query_row([&key_id], |r| r.get(0))?;
                tx.prepare_cached(
                    "INSERT INTO event_journal (key_id, seq, frame, expires_ms) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![key_id, seq, body, expires])?;
                tx.prepare_cached("DELETE FROM event_journal WHERE key_id = ?1 AND seq <= ?2")?
                    .execute(params![key_id, seq.saturating_sub(max_len)])?;
                Ok(u64::try_from(seq).unwrap_or(0))
            })
            .await
    }

    async fn events_after(
        &self,
        key_id: &str,
        after: u64,
        limit: usize,
    ) -> ApiResult<Vec<(u64, String)>> {
        let key_id = key_id.to_string();
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let now = now_ms();
        self.store
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT seq, frame FROM event_journal
                      WHERE key_id = ?1 AND seq > ?2 AND expires_ms > ?3
                      ORDER BY seq DESC LIMIT ?4",
                )?;
                let rows = stmt.query_map(params![key_id, after, now, limit], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (seq, frame) = row?;
                    out.push((u64::try_from(seq).unwrap_or(0), frame));
                }
                out.reverse();
                Ok(out)
            })
            .await
    }
}

// ---- rows, usable inside a caller's transaction ------------------------------------------------

fn corrupt(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("unreadable {what}: {e}"))
}

/// The record under `scope` that is still live at `now` (unix ms), with its expiry.
pub fn live_record(conn: &Connection, scope: &Scope, now: i64) -> ApiResult<Option<(Record, i64)>> {
    let row = conn
        .prepare_cached(
            "SELECT fingerprint, outcome, undo_id, expires_at FROM idempotency_records
              WHERE org_id = ?1 AND key_id = ?2 AND name = ?3 AND expires_at > ?4",
        )?
        .query_row(params![scope.org, scope.key_id, scope.name, now], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .optional()?;
    let Some((fp, outcome, undo_id, expires_at)) = row else {
        return Ok(None);
    };
    let fingerprint: [u8; 32] = fp
        .try_into()
        .map_err(|_| corrupt("idempotency record", "fingerprint is not 32 bytes"))?;
    let outcome = serde_json::from_str(&outcome).map_err(|e| corrupt("idempotency record", e))?;
    Ok(Some((
        Record {
            fingerprint,
            outcome,
            undo_id,
        },
        expires_at,
    )))
}

/// Inserts `record` unless a live one holds the scope (an expired one is replaced). Returns
/// whether it was inserted.
pub fn insert_record(
    conn: &Connection,
    scope: &Scope,
    record: &Record,
    expires_at: i64,
) -> ApiResult<bool> {
    let outcome = serde_json::to_string(&record.outcome).map_err(ApiError::internal)?;
    let now = now_ms();
    let n = conn
        .prepare_cached(
            "INSERT INTO idempotency_records
                 (org_id, key_id, name, fingerprint, outcome, undo_id, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (org_id, key_id, name) DO UPDATE SET
                 fingerprint = excluded.fingerprint, outcome = excluded.outcome,
                 undo_id = excluded.undo_id, created_at = excluded.created_at,
                 expires_at = excluded.expires_at
             WHERE idempotency_records.expires_at <= excluded.created_at",
        )?
        .execute(params![
            scope.org,
            scope.key_id,
            scope.name,
            &record.fingerprint[..],
            outcome,
            record.undo_id,
            now,
            expires_at
        ])?;
    Ok(n == 1)
}

pub fn insert_pending(conn: &Connection, p: &PendingAction) -> ApiResult<()> {
    let plan = serde_json::to_string(&p.plan).map_err(ApiError::internal)?;
    conn.prepare_cached(
        "INSERT INTO pending_actions
             (id, org_id, key_id, plan, action, transcript, state, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        p.id,
        p.org_id,
        p.key_id,
        plan,
        p.action_json.to_string(),
        p.transcript,
        p.state.as_str(),
        now_ms(),
        p.expires_at_ms
    ])?;
    Ok(())
}

/// The pending action `id` of this org and API key; another key's is not found.
pub fn pending(
    conn: &Connection,
    org: &str,
    key_id: &str,
    id: &str,
) -> ApiResult<Option<PendingAction>> {
    let row = conn
        .prepare_cached(
            "SELECT plan, action, transcript, state, expires_at FROM pending_actions
              WHERE id = ?1 AND org_id = ?2 AND key_id = ?3",
        )?
        .query_row(params![id, org, key_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })
        .optional()?;
    let Some((plan, action, transcript, state, expires_at_ms)) = row else {
        return Ok(None);
    };
    Ok(Some(PendingAction {
        id: id.to_string(),
        org_id: org.to_string(),
        key_id: key_id.to_string(),
        plan: serde_json::from_str(&plan).map_err(|e| corrupt("pending action", e))?,
        action_json: serde_json::from_str(&action).map_err(|e| corrupt("pending action", e))?,
        transcript,
        expires_at_ms,
        state: PendingState::parse(&state)?,
    }))
}

/// Marks up to `limit` open pending actions that expired before `before_ms` as announced and
/// returns them; each is returned once.
pub fn take_expired(
    conn: &Connection,
    before_ms: i64,
    limit: i64,
) -> ApiResult<Vec<PendingAction>> {
    let rows = conn
        .prepare_cached(
            "UPDATE pending_actions SET expiry_announced = 1
              WHERE id IN (SELECT id FROM pending_actions
                            WHERE state = 'open' AND expires_at <= ?1 AND expiry_announced = 0
                            ORDER BY expires_at LIMIT ?2)
          RETURNING id, org_id, key_id",
        )?
        .query_map(params![before_ms, limit], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut taken = Vec::with_capacity(rows.len());
    for (id, org, key_id) in rows {
        if let Some(p) = pending(conn, &org, &key_id, &id)? {
            taken.push(p);
        }
    }
    Ok(taken)
}

/// Where pending action `id` stands now (inside a transaction: the value it will commit on).
pub fn pending_state(conn: &Connection, id: &str) -> ApiResult<Option<PendingState>> {
    let state: Option<String> = conn
        .prepare_cached("SELECT state FROM pending_actions WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    state.as_deref().map(PendingState::parse).transpose()
}

/// Settles an open pending action; false when it was not open.
pub fn settle(conn: &Connection, id: &str, to: PendingState) -> ApiResult<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE pending_actions SET state = ?2, settled_at = ?3 WHERE id = ?1 AND state = 'open'",
        )?
        .execute(params![id, to.as_str(), now_ms()])?;
    Ok(n == 1)
}

pub fn insert_undo(conn: &Connection, org: &str, key_id: &str, e: &UndoEntry) -> ApiResult<()> {
    let op = serde_json::to_value(&e.op).map_err(ApiError::internal)?;
    rows::insert_undo_with_id(conn, &e.id, org, key_id, &e.action_type, &e.summary, &op)
}

/// The newest entry of this key not yet undone, created at or after `since`. An entry whose
/// operation cannot be read is an error: guessing could undo the wrong thing.
pub fn latest_undo(
    conn: &Connection,
    org: &str,
    key_id: &str,
    since: &str,
) -> ApiResult<Option<UndoEntry>> {
    let Some(row) = rows::latest_undo(conn, org, key_id, since)? else {
        return Ok(None);
    };
    let op: UndoOp = serde_json::from_value(row.undo).map_err(|e| corrupt("undo entry", e))?;
    Ok(Some(UndoEntry {
        id: row.id,
        action_type: row.action_type,
        summary: row.summary,
        op,
        created_at: row.created_at,
    }))
}

/// Marks an entry used up; false when it already was.
pub fn mark_undone(conn: &Connection, id: &str, reverted: bool) -> ApiResult<bool> {
    rows::mark_undone(conn, id, reverted)
}

pub fn is_undone(conn: &Connection, id: &str) -> ApiResult<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT undone_at IS NOT NULL AND coalesce(reverted, 1) = 1 FROM undo_entries WHERE id = ?1",
        )?
        .query_row([id], |r| r.get::<_, bool>(0))
        .optional()?
        .unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::reply::NativeReply;
    use crate::state::Outcome;

    fn rec(fp: u8, text: &str) -> Record {
        Record {
            fingerprint: [fp; 32],
            outcome: Outcome::Reply {
                reply: Box::new(NativeReply::result(text, serde_json::json!({ "n": fp }))),
            },
            undo_id: None,
        }
    }

    fn spoken(r: &Record) -> String {
        match &r.outcome {
            Outcome::Reply { reply } => reply.spoken_summary.clone(),
            Outcome::Error { error } => error.spoken_summary.clone(),
        }
    }

    #[tokio::test]
    async fn records_are_compare_and_set_and_survive_a_zero_byte_front_cache() {
        let dir = tempfile::tempdir().unwrap();
        // No front cache at all: every lookup goes to the table.
        let s = SqliteState::open_for_tests(dir.path(), 0);
        let scope = Scope::new("o", "k", "turn-1");
        let ttl = Duration::from_secs(60);
        assert!(s.lookup(&scope).await.unwrap().is_none());
        assert!(s.record(&scope, &rec(1, "First."), ttl).await.unwrap());
        assert!(!s.record(&scope, &rec(2, "Second."), ttl).await.unwrap());
        let got = s.lookup(&scope).await.unwrap().unwrap();
        assert_eq!(got.fingerprint, [1; 32]);
        assert_eq!(spoken(&got), "First.");
        // The same name under another API key is another record.
        let other = Scope::new("o", "k2", "turn-1");
        assert!(s.lookup(&other).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_tiny_front_cache_forgets_but_the_table_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteState::open_for_tests(dir.path(), 2_000);
        let ttl = Duration::from_secs(60);
        for i in 0..300u32 {
            let scope = Scope::new("o", "k", format!("key-{i}"));
            assert!(s.record(&scope, &rec(7, "Noted."), ttl).await.unwrap());
        }
        assert!(s.cached_records() < 300, "the front cache is bounded");
        for i in 0..300u32 {
            let scope = Scope::new("o", "k", format!("key-{i}"));
            assert!(s.lookup(&scope).await.unwrap().is_some(), "record {i} kept");
        }
    }

    #[tokio::test]
    async fn an_expired_record_is_gone_and_replaceable_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteState::open_for_tests(dir.path(), 1 << 20);
        let scope = Scope::new("o", "k", "short");
        assert!(s
            .record(&scope, &rec(1, "Old."), Duration::from_millis(1))
            .await
            .unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(s.lookup(&scope).await.unwrap().is_none());
        assert!(s.prune().await.unwrap() >= 1);
        assert!(s
            .record(&scope, &rec(2, "New."), Duration::from_secs(60))
            .await
            .unwrap());
        assert_eq!(
            s.lookup(&scope).await.unwrap().unwrap().fingerprint,
            [2; 32]
        );
    }

    #[tokio::test]
    async fn an_expired_open_pending_action_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteState::open_for_tests(dir.path(), 1 << 20);
        let pending =
            |id: &str, expires_at_ms: i64| crate::state::test_pending(id, "k", expires_at_ms);
        let past = now_ms() - 10_000;
        s.put_pending(&pending("expired", past), None)
            .await
            .unwrap();
        s.put_pending(&pending("settled", past), None)
            .await
            .unwrap();
        s.put_pending(&pending("fresh", expiry_ms(Duration::from_secs(300))), None)
            .await
            .unwrap();
        assert!(s
            .settle_pending("o", "settled", PendingState::Cancelled)
            .await
            .unwrap());
        let now = now_ms();
        let taken: Vec<String> = s
            .take_expired_pending(now, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(taken, vec!["expired".to_string()]);
        assert!(s.take_expired_pending(now, 10).await.unwrap().is_empty());
        let late = s.pending("o", "k", "expired").await.unwrap().unwrap();
        assert_eq!(late.state, PendingState::Open);
    }

    #[tokio::test]
    async fn pending_actions_belong_to_their_key_and_settle_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteState::open_for_tests(dir.path(), 1 << 20);
        let p = PendingAction {
            transcript: Some("undo".into()),
            ..crate::state::test_pending("p1", "k", expiry_ms(Duration::from_secs(300)))
        };
        s.put_pending(&p, None).await.unwrap();
        assert!(s.pending("o", "k2", "p1").await.unwrap().is_none());
        assert!(s.pending("o2", "k", "p1").await.unwrap().is_none());
        let got = s.pending("o", "k", "p1").await.unwrap().unwrap();
        assert_eq!(got.state, PendingState::Open);
        assert_eq!(s.open_pending().await.unwrap(), 1);
        assert!(s
            .settle_pending("o", "p1", PendingState::Executed)
            .await
            .unwrap());
        assert!(!s
            .settle_pending("o", "p1", PendingState::Cancelled)
            .await
            .unwrap());
        let got = s.pending("o", "k", "p1").await.unwrap().unwrap();
        assert_eq!(got.state, PendingState::Executed);
        assert_eq!(s.open_pending().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn the_latest_open_pending_is_per_key_and_skips_settled_and_expired() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteState::open_for_tests(dir.path(), 1 << 20);
        let pending = |id: &str, key: &str, ttl_ms: u64| {
            crate::state::test_pending(id, key, expiry_ms(Duration::from_millis(ttl_ms)))
        };
        assert_eq!(s.latest_open_pending("o", "k").await.unwrap(), None);
        s.put_pending(&pending("a", "k", 300_000), None)
            .await
            .unwrap();
        s.put_pending(&pending("b", "k", 300_000), None)
            .await
            .unwrap();
        s.put_pending(&pending("c", "k2", 300_000), None)
            .await
            .unwrap();
        s.put_pending(&pending("gone", "k", 1), None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(
            s.latest_open_pending("o", "k").await.unwrap().as_deref(),
            Some("b")
        );
        assert_eq!(
            s.latest_open_pending("o", "k2").await.unwrap().as_deref(),
            Some("c")
        );
        assert_eq!(s.latest_open_pending("o2", "k").await.unwrap(), None);
        assert!(s
            .settle_pending("o", "b", PendingState::Cancelled)
            .await
            .unwrap());
        assert_eq!(
            s.latest_open_pending("o", "k").await.unwrap().as_deref(),
            Some("a")
        );
    }

    #[tokio::test]
    async fn an_unreadable_stored_state_is_an_error_not_a_default() {
        assert!(PendingState::parse("opne").is_err());
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteState::open_for_tests(dir.path(), 0);
        s.store
            .write(|tx| {
                rows::insert_undo_with_id(
                    tx,
                    "u1",
                    "o",
                    "k",
                    "mark_status",
                    "x",
                    &serde_json::json!({ "op": "no_such_op" }),
                )
            })
            .await
            .unwrap();
        assert!(s.latest_undo("o", "k", "").await.is_err());
    }

    #[tokio::test]
    async fn undo_entries_are_per_key_and_marked_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteState::open_for_tests(dir.path(), 0);
        let e = UndoEntry {
            id: "u1".into(),
            action_type: "note_on_contact".into(),
            summary: "The note is gone.".into(),
            op: UndoOp::DeleteNote {
                note_id: "n1".into(),
            },
            created_at: crate::ids::now_rfc3339(),
        };
        s.push_undo("o", "k", &e).await.unwrap();
        assert!(s.latest_undo("o", "k2", "").await.unwrap().is_none());
        assert_eq!(s.latest_undo("o", "k", "").await.unwrap().unwrap().id, "u1");
        assert!(!s.is_undone("o", "u1").await.unwrap());
        assert!(s.mark_undone("o", "u1", true).await.unwrap());
        assert!(!s.mark_undone("o", "u1", true).await.unwrap());
        assert!(s.is_undone("o", "u1").await.unwrap());
        assert!(s.latest_undo("o", "k", "").await.unwrap().is_none());
    }
}
