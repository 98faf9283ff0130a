//! The embedded store: one SQLite database (WAL) under the data directory.
//!
//! One writer connection serialises writes (SQLite allows one writer at a time anyway, and a
//! single connection avoids `SQLITE_BUSY` inside the process); a small pool of reader connections
//! serves reads concurrently thanks to WAL. Reads run on tokio's blocking pool via
//! [`Store::read`], or on the calling thread when a reader is free ([`Store::read_fast`]); the
//! server's writes queue for one writer thread that commits them in batches ([`writer`]).
//!
//! The per-table modules hold plain synchronous functions over a `&Connection`, so they compose
//! inside one transaction and are easy to unit-test.

pub mod audit;
pub mod campaigns;
pub mod companies;
pub mod contacts;
pub mod events;
pub mod generations;
pub mod interactions;
pub mod jobs;
pub mod keys;
pub mod native;
pub mod orgs;
pub mod schema;
pub mod signals;
pub mod wal;
pub mod webhooks;
mod writer;

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
    /// WAL size at which the background checkpointer resets the log even while writes go on
    /// (see [`wal`]); also SQLite's `journal_size_limit`, the size a reset log is cut back to.
    pub wal_reset_bytes: u64,
}

/// Default of [`StoreOptions::wal_reset_bytes`]: 64 MiB, so the log peaks far below 256 MiB
/// under sustained writes while resets (each a short pause of the writer) stay rare.
pub const DEFAULT_WAL_RESET_BYTES: u64 = 64 * 1024 * 1024;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durability: Durability::Normal,
            readers: 4,
            wal_reset_bytes: DEFAULT_WAL_RESET_BYTES,
        }
    }
}

struct Inner {
    path: PathBuf,
    /// The `-wal` file next to `path`.
    wal_path: PathBuf,
    wal_reset_bytes: u64,
    /// Bytes of one WAL frame: a page plus its 24-byte frame header.
    wal_frame_bytes: u64,
    writer: Mutex<Connection>,
    /// Runs WAL checkpoints off the request path.
    checkpointer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    /// Bumped after every commit through this store (the WAL checkpointer watches it).
    generation: std::sync::atomic::AtomicU64,
    /// Per-org write generations: read caches compare them to know whether anything of that
    /// org may have changed since they were filled.
    orgs: generations::OrgGenerations,
    /// The async writes' queue to the writer thread.
    queue: writer::WriteQueue,
    /// Set while a checkpoint waits for the writer mutex: the writer thread, which would
    /// otherwise take the mutex back as soon as it lets go of it, waits its turn instead.
    checkpoint_waiting: std::sync::atomic::AtomicBool,
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
    /// Opens the database of an existing data directory and applies migrations; a missing
    /// directory or database is an error and nothing is created. For commands that read or
    /// change records that must already exist (`keys list`, `org show`, ...).
    pub fn open_existing(data_dir: &Path, opts: &StoreOptions) -> anyhow::Result<Store> {
        if !data_dir.is_dir() {
            anyhow::bail!(
                "data directory {} does not exist (run `pilot-bridge serve --data-dir {}` or \
                 `pilot-bridge org create ORG --data-dir {}` first, or pass the right --data-dir)",
                data_dir.display(),
                data_dir.display(),
                data_dir.display()
            );
        }
        let path = data_dir.join(DB_FILE);
        if !path.is_file() {
            anyhow::bail!(
                "no pilot-bridge database in {} (expected {}); pass the right --data-dir",
                data_dir.display(),
                path.display()
            );
        }
        Self::open(data_dir, opts)
    }

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
        // When a checkpoint resets the log, the next commit cuts the file back to this size, so
        // one burst does not leave a huge file behind (the checkpointer truncates idle logs to 0).
        let limit = i64::try_from(opts.wal_reset_bytes).unwrap_or(i64::MAX);
        writer.pragma_update(None, "journal_size_limit", limit)?;
        let checkpointer = Connection::open_with_flags(&path, flags)?;
        configure(&checkpointer, opts.durability)?;
        checkpointer.pragma_update(None, "journal_size_limit", limit)?;
        // RESTART/TRUNCATE checkpoints wait for readers still on an older snapshot; SQLite's
        // default busy handler sleeps in steps of 1 ms and more, and the writer waits meanwhile.
        checkpointer.busy_handler(Some(wal::checkpoint_busy_handler))?;
        let mut readers = Vec::with_capacity(opts.readers.max(1));
        for _ in 0..opts.readers.max(1) {
            let r = Connection::open_with_flags(&path, flags)?;
            configure(&r, opts.durability)?;
            readers.push(Mutex::new(r));
        }
        let page_size: i64 = writer.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let mut wal_name = path.as_os_str().to_owned();
        wal_name.push("-wal");
        let (queue_tx, queue_rx) = std::sync::mpsc::channel();
        let inner = Arc::new(Inner {
            wal_path: PathBuf::from(wal_name),
            wal_reset_bytes: opts.wal_reset_bytes,
            wal_frame_bytes: u64::try_from(page_size).unwrap_or(4096) + 24,
            path,
            writer: Mutex::new(writer),
            checkpointer: Mutex::new(checkpointer),
            readers,
            next_reader: AtomicUsize::new(0),
            generation: std::sync::atomic::AtomicU64::new(0),
            orgs: generations::OrgGenerations::new(),
            queue: writer::WriteQueue::new(queue_tx),
            checkpoint_waiting: std::sync::atomic::AtomicBool::new(false),
        });
        writer::WriteQueue::start(Arc::downgrade(&inner), queue_rx)
            .context("cannot start the writer thread")?;
        Ok(Store { inner })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// A free reader, else waits for one.
    fn reader(&self) -> MutexGuard<'_, Connection> {
        self.free_reader().unwrap_or_else(|| {
            let n = self.inner.readers.len();
            let next = self.inner.next_reader.load(Ordering::Relaxed);
            lock(&self.inner.readers[next % n])
        })
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

    /// Runs `f` on the writer thread inside an immediate write transaction, possibly shared
    /// with other queued writes (see [`writer`]). Its changes are kept when `f` returns `Ok` and
    /// rolled back otherwise; the caller is answered only after the commit, so an acknowledged
    /// write is durable.
    pub async fn write<T, F>(&self, f: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> ApiResult<T> + Send + 'static,
    {
        self.inner.queue.write(writer::Touch::All, f).await
    }

    /// Runs `f` on a reader on the calling thread when one is free, else like [`Store::read`]
    /// on the blocking pool. For the native fast path's planning reads: a few index lookups
    /// (DESIGN §11: nothing there scans), tens of microseconds, for which handing the work to
    /// a pool thread and back (two thread wake-ups) cost more CPU than the lookups
    /// (`benches/README.md`, HTTP uncached). Never waits for a reader on the calling thread,
    /// which may be an async worker: with every reader busy (long REST listings), `f` goes to
    /// the pool.
    pub async fn read_fast<T, F>(&self, f: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> ApiResult<T> + Send + 'static,
    {
        // The reader's guard must be gone before the await (it is not `Send`).
        let f = match self.free_reader() {
            Some(conn) => return in_read_transaction(&conn, f),
            None => f,
        };
        self.read(f).await
    }

    /// A reader nobody holds, without waiting.
    fn free_reader(&self) -> Option<MutexGuard<'_, Connection>> {
        let n = self.inner.readers.len();
        let start = self.inner.next_reader.fetch_add(1, Ordering::Relaxed);
        (0..n).find_map(|i| self.inner.readers[(start + i) % n].try_lock().ok())
    }

    /// Runs `f` on a reader inside one read transaction: every query of `f` sees the same
    /// snapshot, and the shared lock is taken once rather than once per statement.
    pub fn read_sync<T>(&self, f: impl FnOnce(&Connection) -> ApiResult<T>) -> ApiResult<T> {
        in_read_transaction(&self.reader(), f)
    }

    /// Like [`Store::write`], on the calling thread. The write's org is not known, so every
    /// org's cached reads go stale; [`Store::write_sync_for`] names the org.
    pub fn write_sync<T>(&self, f: impl FnOnce(&Transaction<'_>) -> ApiResult<T>) -> ApiResult<T> {
        let out = self.commit(f)?;
        self.inner.orgs.bump_all();
        Ok(out)
    }

    /// Like [`Store::write`] for a write that changes records of `org` only: other orgs'
    /// cached reads stay warm.
    pub async fn write_for<T, F>(&self, org: &str, f: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> ApiResult<T> + Send + 'static,
    {
        self.inner
            .queue
            .write(writer::Touch::Org(org.to_string()), f)
            .await
    }

    /// [`Store::write_for`] on the calling thread.
    pub fn write_sync_for<T>(
        &self,
        org: &str,
        f: impl FnOnce(&Transaction<'_>) -> ApiResult<T>,
    ) -> ApiResult<T> {
        let out = self.commit(f)?;
        self.inner.orgs.bump(org);
        Ok(out)
    }

    /// Counts a write of `org` committed through [`Store::write_bookkeeping`] (several orgs in
    /// one transaction): its cached reads go stale.
    pub fn touched(&self, org: &str) {
        self.inner.orgs.bump(org);
    }

    fn commit<T>(&self, f: impl FnOnce(&Transaction<'_>) -> ApiResult<T>) -> ApiResult<T> {
        let mut conn = lock(&self.inner.writer);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        self.inner.generation.fetch_add(1, Ordering::Release);
        Ok(out)
    }

    /// The write generation of `org`: it changes after every committed write that may have
    /// changed the org's records (its own, or one of unknown org). Writes by other processes
    /// on the same file (the CLI) are not counted.
    pub fn org_generation(&self, org: &str) -> u64 {
        self.inner.orgs.get(org)
    }

    /// Like [`Store::write`] for bookkeeping that no cached read can show (when a key was last
    /// used, conversation state, audit records): it does not move any org's generation, so read
    /// caches stay warm. (The WAL checkpointer still sees it as activity.)
    pub async fn write_bookkeeping<T, F>(&self, f: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> ApiResult<T> + Send + 'static,
    {
        self.inner.queue.write(writer::Touch::Nothing, f).await
    }

    /// The number of commits through this store so far (a batch of queued writes is one), for
    /// the WAL checkpointer, which only compares it. Writes by other processes on the same file
    /// (the CLI) are not counted.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Copies the whole WAL into the database file and truncates the log to zero bytes, waiting
    /// briefly for in-flight writes and readers. For one-off tools (the CLI after a bulk
    /// import); the server's background checkpointer is [`wal::spawn`]. A log kept busy by
    /// another process's readers is left for that process's checkpointer: not an error.
    pub fn checkpoint_sync(&self) -> ApiResult<()> {
        let outcome = self.checkpoint(wal::Mode::Truncate)?;
        if outcome.busy {
            tracing::debug!("WAL checkpoint left unfinished: readers still use the log");
        }
        Ok(())
    }

    /// Runs one checkpoint in `mode`. `Passive` copies what it can without waiting for anyone;
    /// `Restart` and `Truncate` hold this store's writer for their duration (other writes wait
    /// on the mutex, not in SQLite's sleeping busy handler) and start the log over once every
    /// reader has moved past it.
    pub fn checkpoint(&self, mode: wal::Mode) -> ApiResult<wal::Outcome> {
        let started = std::time::Instant::now();
        let run = |conn: &Connection| -> rusqlite::Result<wal::Outcome> {
            conn.query_row(mode.pragma(), [], |r| {
                Ok(wal::Outcome {
                    busy: r.get::<_, i64>(0)? != 0,
                    log_frames: r.get(1)?,
                    checkpointed_frames: r.get(2)?,
                })
            })
        };
        let result = match mode {
            wal::Mode::Passive => run(&lock(&self.inner.checkpointer)),
            wal::Mode::Restart | wal::Mode::Truncate => {
                // Writer first, then checkpointer: the only order in which both are taken.
                self.inner.checkpoint_waiting.store(true, Ordering::Release);
                let writer = lock(&self.inner.writer);
                self.inner
                    .checkpoint_waiting
                    .store(false, Ordering::Release);
                let result = run(&lock(&self.inner.checkpointer));
                drop(writer);
                result
            }
        };
        wal::record(mode, result.as_ref().ok(), started.elapsed());
        Ok(result?)
    }

    /// Bytes of log in use when `outcome`'s checkpoint ran: its frames, a page and a frame
    /// header each. (The file can be larger: after a reset it keeps `journal_size_limit`.)
    pub fn log_bytes(&self, outcome: &wal::Outcome) -> u64 {
        u64::try_from(outcome.log_frames).unwrap_or(0) * self.inner.wal_frame_bytes
    }

    /// Current size in bytes of the database file and of its WAL (0 when the log is absent).
    /// Two `stat` calls: cheap enough for every tick of the checkpointer.
    pub fn file_sizes(&self) -> wal::FileSizes {
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        wal::FileSizes {
            db_bytes: size(&self.inner.path),
            wal_bytes: size(&self.inner.wal_path),
        }
    }

    /// See [`StoreOptions::wal_reset_bytes`].
    pub fn wal_reset_bytes(&self) -> u64 {
        self.inner.wal_reset_bytes
    }

    /// True when the database answers a trivial query (used by `/readyz`).
    pub async fn ping(&self) -> bool {
        self.read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
            .await
            .is_ok()
    }

    /// Whether writes can succeed: the writer connection answers and SQLite did not fall back
    /// to read-only (which it does silently when the file or directory is not writable).
    pub async fn writable(&self) -> bool {
        let store = self.clone();
        tokio::task::spawn_blocking(move || writable(&lock(&store.inner.writer)))
            .await
            .unwrap_or(false)
    }
}

/// Whether `conn` can write to its main database.
fn writable(conn: &Connection) -> bool {
    matches!(conn.is_readonly(rusqlite::MAIN_DB), Ok(false))
        && conn
            .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .is_ok()
}

/// Runs `f` on `conn` inside one read transaction.
fn in_read_transaction<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> ApiResult<T>,
) -> ApiResult<T> {
    if !conn.is_autocommit() {
        // Left open by a closure that panicked; start from a clean state.
        conn.prepare_cached("ROLLBACK")?.execute([])?;
    }
    conn.prepare_cached("BEGIN")?.execute([])?;
    let out = f(conn);
    // A read transaction has nothing to commit; ending it releases the snapshot.
    conn.prepare_cached("ROLLBACK")?.execute([])?;
    out
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
        match s.as_deref() {
            // What most JSON columns hold (no custom fields, no metadata): the same value
            // without running the parser, which a lookup would otherwise do for every record.
            Some("{}") => serde_json::Value::Object(serde_json::Map::new()),
            _ => s
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or(default),
        }
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
    fn a_fast_read_never_waits_for_a_reader_on_the_calling_thread() {
        let (_dir, store) = test_store();
        let held: Vec<_> = store.inner.readers.iter().map(lock).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let s = store.clone();
        let worker = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let read = tokio::spawn(async move {
                    s.read_fast(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
                        .await
                });
                // The runtime's only thread goes on running tasks while every reader is held:
                // the read waits on the blocking pool, not here.
                tokio::task::yield_now().await;
                let _ = tx.send("worker free");
                read.await.unwrap()
            })
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(5));
        drop(held);
        assert_eq!(got, Ok("worker free"));
        assert_eq!(worker.join().unwrap().unwrap(), 1);
    }

    #[test]
    fn fast_path_lookups_read_rows_in_index_order() {
        let (_dir, store) = test_store();
        let plans = store
            .read_sync(|c| {
                let mut out = Vec::new();
                for sql in [
                    "SELECT * FROM contacts WHERE org_id = ?1 AND name_norm = ?2 ORDER BY id LIMIT ?3",
                    // `contacts::by_exact_name_with_account`: the company by its primary key.
                    "SELECT c.*, a.* FROM contacts c
                       LEFT JOIN companies a ON a.id = c.account_id AND a.org_id = c.org_id
                      WHERE c.org_id = ?1 AND c.name_norm = ?2 ORDER BY c.id LIMIT ?3",
                    "SELECT c.id FROM campaign_audiences a JOIN campaigns c ON c.id = a.campaign_id
                      WHERE a.contact_id = ?1 AND a.org_id = ?2 AND a.status != 'removed'
                      ORDER BY a.added_at DESC",
                    "SELECT id FROM interactions WHERE org_id = ?1 AND contact_id = ?2
                      ORDER BY created_at DESC, id DESC LIMIT ?3",
                ] {
                    let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                    let n = stmt.parameter_count();
                    let args = ["o", "x", "3"].into_iter().take(n);
                    let steps = stmt
                        .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))?
                        .collect::<rusqlite::Result<Vec<_>>>()?;
                    out.push((sql, steps.join("; ")));
                }
                Ok(out)
            })
            .unwrap();
        assert!(
            plans[1]
                .1
                .contains("SEARCH a USING INDEX sqlite_autoindex_companies_1 (id=?)"),
            "{}",
            plans[1].1
        );
        for (sql, plan) in plans {
            assert!(!plan.contains("TEMP B-TREE"), "{sql}\n  {plan}");
            assert!(!plan.contains("SCAN"), "{sql}\n  {plan}");
        }
    }

    #[test]
    fn read_only_databases_are_not_writable() {
        let (dir, store) = test_store();
        assert!(writable(&lock(&store.inner.writer)));
        let ro =
            Connection::open_with_flags(dir.path().join(DB_FILE), OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        assert!(!writable(&ro));
    }

    #[test]
    fn open_existing_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = Store::open_existing(&missing, &StoreOptions::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(!missing.exists());
        let e = Store::open_existing(dir.path(), &StoreOptions::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains("no pilot-bridge database"), "{e}");
        assert!(!dir.path().join(DB_FILE).exists());
        drop(Store::open(dir.path(), &StoreOptions::default()).unwrap());
        assert!(Store::open_existing(dir.path(), &StoreOptions::default()).is_ok());
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
