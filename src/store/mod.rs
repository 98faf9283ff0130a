//! The embedded store: one SQLite database (WAL) under the data directory.
//!
//! One writer connection serialises writes (SQLite allows one writer at a time anyway, and a
//! single connection avoids `SQLITE_BUSY` inside the process); a small pool of reader connections
//! serves reads concurrently thanks to WAL. All SQLite work runs on tokio's blocking pool via
//! [`Store::read`] / [`Store::write`], never on the async worker threads.
//!
//! The per-table modules hold plain synchronous functions over a `&Connection`, so they compose
//! inside one transaction and are easy to unit-test.

pub mod audit;
pub mod campaigns;
pub mod companies;
pub mod contacts;
pub mod events;
pub mod interactions;
pub mod keys;
pub mod native;
pub mod orgs;
pub mod schema;
pub mod signals;
pub mod webhooks;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use crate::error::{ApiError, ApiResult};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "pilot-bridge.db";

/// How hard SQLite flushes on commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// WAL + `synchronous=NORMAL`: a commit is in the OS before we answer, so it survives the
    /// process being killed; a power cut can lose the last few commits.
    Normal,
    /// WAL + `synchronous=FULL`: fsync on every commit; survives power loss, costs latency.
    Full,
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub durability: Durability,
    pub readers: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durability: Durability::Normal,
            readers: 4,
        }
    }
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    /// Runs WAL checkpoints off the request path.
    checkpointer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    /// Bumped after every committed write through this store; caches of read results compare
    /// it to know whether anything may have changed since they were filled.
    generation: std::sync::atomic::AtomicU64,
}

/// Cheap to clone; all clones share the same connections.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding the lock leaves the connection usable (any open transaction was rolled
    // back when it was dropped), so poisoning is not a reason to stop serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn configure(conn: &Connection, durability: Durability) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        match durability {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        },
    )?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", -16_000)?; // 16 MB page cache per connection
    conn.set_prepared_statement_cache_capacity(128);
    // The bundled SQLite is built with STAT4, which re-compiles every statement whose bound
    // values could change the plan — i.e. nearly every cached statement on every call. A fixed
    // plan per statement (the query planner stability guarantee) keeps cached statements cached.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the database in `data_dir` and applies migrations.
    pub fn open(data_dir: &Path, opts: &StoreOptions) -> anyhow::Result<Store> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        let path = data_dir.join(DB_FILE);
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut writer = Connection::open_with_flags(&path, flags)
            .with_context(|| format!("cannot open {}", path.display()))?;
        configure(&writer, opts.durability)?;
        schema::migrate(&mut writer)?;
        // Checkpoints copy the WAL into the database file and fsync it; done inside a commit they
        // cost milliseconds on the request that happened to cross the threshold. The server
        // runs them in the background instead (see `checkpoint`).
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpointer = Connection::open_with_flags(&path, flags)?;
        configure(&checkpointer, opts.durability)?;
        let mut readers = Vec::with_capacity(opts.readers.max(1));
        for _ in 0..opts.readers.max(1) {
            let r = Connection::open_with_flags(&path, flags)?;
            configure(&r, opts.durability)?;
            readers.push(Mutex::new(r));
        }
        Ok(Store {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(writer),
                checkpointer: Mutex::new(checkpointer),
                readers,
                next_reader: AtomicUsize::new(0),
                generation: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        let n = self.inner.readers.len();
        let start = self.inner.next_reader.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            if let Ok(g) = self.inner.readers[(start + i) % n].try_lock() {
                return g;
            }
        }
        lock(&self.inner.readers[start % n])
    }

    /// Runs `f` on a reader connection, on the blocking pool.
    pub async fn read<T, F>(&self, f: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> ApiResult<T> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.read_sync(f))
            .await
            .map_err(ApiError::internal)?
    }

    /// Runs `f` inside one immediate write transaction, on the blocking pool. The transaction
    /// commits when `f` returns `Ok` and rolls back otherwise; the caller is answered only after
    /// the commit, so an acknowledged write is durable.
    pub async fn write<T, F>(&self, f: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> ApiResult<T> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.write_sync(f))
            .await
            .map_err(ApiError::internal)?
    }

    /// Runs `f` on a reader inside one read transaction: every query of `f` sees the same
    /// snapshot, and the shared lock is taken once rather than once per statement.
    pub fn read_sync<T>(&self, f: impl FnOnce(&Connection) -> ApiResult<T>) -> ApiResult<T> {
        let conn = self.reader();
        if !conn.is_autocommit() {
            // Left open by a closure that panicked; start from a clean state.
            conn.prepare_cached("ROLLBACK")?.execute([])?;
        }
        conn.prepare_cached("BEGIN")?.execute([])?;
        let out = f(&conn);
        // A read transaction has nothing to commit; ending it releases the snapshot.
        conn.prepare_cached("ROLLBACK")?.execute([])?;
        out
    }

    pub fn write_sync<T>(&self, f: impl FnOnce(&Transaction<'_>) -> ApiResult<T>) -> ApiResult<T> {
        let mut conn = lock(&self.inner.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        self.inner.generation.fetch_add(1, Ordering::Release);
        Ok(out)
    }

    /// The number of writes committed through this store so far (see `generation`). Writes by
    /// other processes on the same file (the CLI) are not counted.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Copies committed WAL pages into the database file without blocking readers or the
    /// writer (`PASSIVE`), so the WAL stays small. Called periodically by the server.
    pub fn checkpoint_sync(&self) -> ApiResult<()> {
        let conn = lock(&self.inner.checkpointer);
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// True when the database answers a trivial query (used by `/readyz`).
    pub async fn ping(&self) -> bool {
        self.read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
            .await
            .is_ok()
    }
}

/// Helpers shared by the table modules.
pub(crate) mod sql {
    use rusqlite::types::Value;

    use super::{Page, PageRequest};
    use crate::error::ApiResult;

    /// A WHERE clause assembled from optional filters, with positional parameters.
    #[derive(Default)]
    pub struct Filter {
        pub clauses: Vec<String>,
        pub params: Vec<Value>,
    }

    impl Filter {
        pub fn new(first: &str, v: impl Into<Value>) -> Self {
            let mut f = Filter::default();
            f.push(first, v);
            f
        }

        /// Adds `clause`, whose single `?` is bound to `v`.
        pub fn push(&mut self, clause: &str, v: impl Into<Value>) {
            self.clauses.push(clause.to_string());
            self.params.push(v.into());
        }

        pub fn push_raw(&mut self, clause: &str) {
            self.clauses.push(clause.to_string());
        }

        pub fn where_sql(&self) -> String {
            if self.clauses.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", self.clauses.join(" AND "))
            }
        }

        /// Counts the rows of `table` that match, and reads one page of them (`columns`, read
        /// with `from_row`), newest first by `order_col`, then by id.
        pub fn page<T>(
            &self,
            conn: &rusqlite::Connection,
            table: &str,
            columns: &str,
            order_col: &str,
            page: PageRequest,
            from_row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
        ) -> ApiResult<Page<T>> {
            let where_sql = self.where_sql();
            let params = || rusqlite::params_from_iter(self.params.iter());
            let total: i64 = conn
                .prepare_cached(&format!("SELECT count(*) FROM {table} {where_sql}"))?
                .query_row(params(), |r| r.get(0))?;
            // LIMIT and OFFSET are bound, not formatted in: every page of a listing then reuses
            // one cached statement instead of pushing the fast path's statements out of the cache.
            let sql = format!(
                "SELECT {columns} FROM {table} {where_sql} ORDER BY {order_col} DESC, id DESC LIMIT ? OFFSET ?"
            );
            let mut bound: Vec<rusqlite::types::Value> = self.params.clone();
            bound.push(i64::from(page.limit).into());
            bound.push(i64::try_from(page.offset).unwrap_or(i64::MAX).into());
            let mut stmt = conn.prepare_cached(&sql)?;
            let items = stmt
                .query_map(rusqlite::params_from_iter(bound.iter()), from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Page {
                items,
                total: total as u64,
                limit: page.limit,
                offset: page.offset,
            })
        }
    }

    /// Parses a JSON column, falling back to `default` for anything unreadable.
    pub fn json_col(s: Option<String>, default: serde_json::Value) -> serde_json::Value {
        s.and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(default)
    }

    /// Escapes `%`, `_` and `\` for a `LIKE ... ESCAPE '\'` pattern.
    pub fn like_escape(s: &str) -> String {
        let mut out = String::with_capacity(s.len() + 2);
        for c in s.chars() {
            if matches!(c, '%' | '_' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }
}

/// A page of rows plus the total that matched.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

impl<T> Page<T> {
    pub fn has_more(&self) -> bool {
        self.offset + (self.items.len() as u64) < self.total
    }
}

/// `limit` and `offset` after validation and clamping.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    pub limit: u32,
    pub offset: u64,
}

#[cfg(test)]
pub(crate) fn test_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), &StoreOptions::default()).expect("open store");
    (dir, store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_idempotent() {
        let (dir, store) = test_store();
        drop(store);
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let v: i64 = store
            .read_sync(|c| Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(v, schema::latest_version());
        let mode: String = store
            .read_sync(|c| Ok(c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn failed_write_rolls_back() {
        let (_dir, store) = test_store();
        let r: ApiResult<()> = store.write_sync(|tx| {
            orgs::create(tx, &orgs::NewOrg::named("acme"))?;
            Err(ApiError::validation("x", "forced"))
        });
        assert!(r.is_err());
        let found = store.read_sync(|c| orgs::get(c, "acme")).unwrap();
        assert!(found.is_none());
    }
}
