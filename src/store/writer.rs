//! Group commit: the server's writes queue for one writer thread, which runs whatever is queued
//! in one transaction, each write in its own savepoint, and answers each write only after that
//! transaction commits.
//!
//! Why: before, every write took a blocking-pool thread that then waited on the writer mutex.
//! Under load those threads queued on the mutex (which is not fair, so a late arrival could
//! overtake an early one), and every write paid for its own commit. Here writes are served in
//! arrival order, and a burst of N writes costs one commit: pages that several of them touch
//! (index pages, the audit table's last page) are written to the log once instead of N times.
//!
//! Semantics are those of running the writes one after another: each sees the ones before it,
//! and one that fails rolls back to its savepoint without touching the others. What changes is
//! only that writes queued together become durable together; if that commit fails, every write
//! of the batch fails, and none was answered before. A write must therefore never end the
//! transaction itself (`COMMIT`, `ROLLBACK`, `RELEASE`): none does, and it would be reported
//! as failed.
//!
//! A batch stops taking writes after [`BATCH_BUDGET`] of work, so a slow write (a prune, a bulk
//! import) delays the writes queued before it by at most that much plus its own time.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Weak;
use std::time::{Duration, Instant};

use rusqlite::{Transaction, TransactionBehavior};
use tokio::sync::oneshot;

use super::{lock, Inner};
use crate::error::{ApiError, ApiResult};

/// At most this many writes share one transaction, so one commit's log append stays small
/// and the writes at the head of a long queue are not held back by the ones at its tail.
const MAX_BATCH: usize = 64;

/// A batch takes no further write once it has run this long: the writes already in it are
/// answered only at its commit.
const BATCH_BUDGET: Duration = Duration::from_millis(1);

/// Which orgs' read caches a committed write makes stale.
pub(super) enum Touch {
    /// Bookkeeping no cached read shows.
    Nothing,
    /// Records of one org.
    Org(String),
    /// Records of an org that is not known here: every org's cached reads go stale.
    All,
}

/// One queued write, type-erased so writes of any result type share the queue.
pub(super) trait QueuedWrite: Send {
    /// Runs the write inside the batch's transaction; true when its changes are to be kept.
    fn run(&mut self, tx: &Transaction<'_>) -> bool;
    /// Answers the caller once the batch is settled: `committed` is the batch's outcome.
    fn finish(self: Box<Self>, inner: &Inner, committed: Result<(), ApiError>);
}

struct Job<T, F> {
    work: Option<F>,
    out: Option<ApiResult<T>>,
    reply: oneshot::Sender<ApiResult<T>>,
    touch: Touch,
}

impl<T, F> QueuedWrite for Job<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Transaction<'_>) -> ApiResult<T> + Send + 'static,
{
    fn run(&mut self, tx: &Transaction<'_>) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        // A panicking write must not take the writer thread (and every later write) with it.
        let out = std::panic::catch_unwind(AssertUnwindSafe(|| work(tx)))
            .unwrap_or_else(|_| Err(ApiError::internal("a write panicked")));
        let keep = out.is_ok();
        self.out = Some(out);
        keep
    }

    fn finish(self: Box<Self>, inner: &Inner, committed: Result<(), ApiError>) {
        let out = match (committed, self.out) {
            // The batch failed before this write ran (the transaction could not start).
            (Err(e), None) => Err(e),
            (Ok(()), None) => Err(ApiError::internal("write dropped before it ran")),
            (Ok(()), Some(out)) => {
                if out.is_ok() {
                    // Before the answer: a read that follows it must not be served stale.
                    match &self.touch {
                        Touch::Nothing => {}
                        Touch::Org(org) => inner.orgs.bump(org),
                        Touch::All => inner.orgs.bump_all(),
                    }
                }
                out
            }
            (Err(e), Some(Ok(_))) => Err(e),
            (Err(_), Some(Err(own))) => Err(own),
        };
        // The caller may have gone (its request was cancelled); the write stands regardless.
        let _ = self.reply.send(out);
    }
}

/// The sending side of the queue, held by the store.
pub(super) struct WriteQueue {
    tx: Sender<Box<dyn QueuedWrite>>,
}

impl WriteQueue {
    /// Starts the writer thread for `inner`. The thread holds only a weak reference: it ends
    /// when the store is dropped (the queue's sender goes with it).
    pub(super) fn start(
        inner: Weak<Inner>,
        rx: Receiver<Box<dyn QueuedWrite>>,
    ) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || serve(&inner, &rx))
            .map(drop)
    }

    pub(super) fn new(tx: Sender<Box<dyn QueuedWrite>>) -> WriteQueue {
        WriteQueue { tx }
    }

    /// Queues `work`; the answer arrives after the commit of the transaction it ran in.
    pub(super) async fn write<T, F>(&self, touch: Touch, work: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> ApiResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Job {
            work: Some(work),
            out: None,
            reply,
            touch,
        });
        self.tx
            .send(job)
            .map_err(|_| ApiError::internal("the writer thread is gone"))?;
        answer
            .await
            .map_err(|_| ApiError::internal("the writer thread dropped a write"))?
    }
}

/// The writer thread: waits for a write, takes whatever else is queued, commits them together.
fn serve(inner: &Weak<Inner>, rx: &Receiver<Box<dyn QueuedWrite>>) {
    let mut queued: VecDeque<Box<dyn QueuedWrite>> = VecDeque::new();
    loop {
        if queued.is_empty() {
            match rx.recv() {
                Ok(job) => queued.push_back(job),
                Err(_) => return,
            }
        }
        while queued.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => queued.push_back(job),
                Err(_) => break,
            }
        }
        // Dropping the jobs drops their reply senders: their callers get an error.
        let Some(inner) = inner.upgrade() else {
            return;
        };
        // The thread must outlive any bug in one round: without it no write could ever be made
        // again. The writes of a round that panicked are dropped, and their callers get an error.
        let round = std::panic::catch_unwind(AssertUnwindSafe(|| {
            wait_for_checkpoint(&inner);
            let (done, committed) = run_batch(&inner, &mut queued, BATCH_BUDGET);
            for job in done {
                job.finish(&inner, committed.clone());
            }
        }));
        if round.is_err() {
            tracing::error!("the writer thread recovered from a panic; its batch failed");
            queued.clear();
        }
    }
}

/// Lets a checkpoint that waits for the writer mutex have it first: this thread would otherwise
/// take the mutex back right after letting go of it, and the log could not be reset.
fn wait_for_checkpoint(inner: &Inner) {
    while inner.checkpoint_waiting.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Runs queued writes in one transaction until the batch is full, has run for `budget`, the
/// queue is empty, or the transaction can no longer be trusted; returns the writes it ran and how their batch ended.
/// Writes it did not run stay queued for the next batch.
fn run_batch(
    inner: &Inner,
    queued: &mut VecDeque<Box<dyn QueuedWrite>>,
    budget: Duration,
) -> (Vec<Box<dyn QueuedWrite>>, Result<(), ApiError>) {
    let mut done = Vec::with_capacity(queued.len().min(MAX_BATCH));
    let mut conn = lock(&inner.writer);
    if !conn.is_autocommit() {
        // Left open by a failure this thread did not see through; start from a clean state.
        if let Err(e) = conn.execute_batch("ROLLBACK") {
            tracing::warn!(error = %e, "could not roll back the writer's open transaction");
        }
    }
    let started = Instant::now();
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            // The database is locked by another process past the busy timeout, or unusable:
            // the whole queue at hand fails now rather than waiting again one by one.
            done.extend(queued.drain(..));
            return (done, Err(e.into()));
        }
    };
    while done.len() < MAX_BATCH && (done.is_empty() || started.elapsed() < budget) {
        let Some(mut job) = queued.pop_front() else {
            break;
        };
        let settled = savepoint(&tx, Savepoint::Open).and_then(|()| {
            let keep = job.run(&tx);
            savepoint(
                &tx,
                if keep {
                    Savepoint::Keep
                } else {
                    Savepoint::Undo
                },
            )
        });
        done.push(job);
        if let Err(e) = settled {
            // SQLite rolled the whole transaction back (an I/O error, a full disk), or the
            // savepoint itself failed: the writes before this one are lost with it.
            drop(tx);
            return (done, Err(e));
        }
    }
    let committed = tx.commit().map_err(ApiError::from);
    if committed.is_ok() {
        inner.generation.fetch_add(1, Ordering::Release);
    }
    drop(conn);
    (done, committed)
}

/// The steps of one write's savepoint.
#[derive(Clone, Copy)]
enum Savepoint {
    Open,
    /// Keep the write's changes in the batch.
    Keep,
    /// Undo the write's changes, leaving the batch's other writes as they are.
    Undo,
}

fn savepoint(tx: &Transaction<'_>, step: Savepoint) -> ApiResult<()> {
    if tx.is_autocommit() {
        return Err(ApiError::internal(
            "the batch's transaction was rolled back under it",
        ));
    }
    let statements: &[&str] = match step {
        Savepoint::Open => &["SAVEPOINT queued_write"],
        Savepoint::Keep => &["RELEASE queued_write"],
        Savepoint::Undo => &["ROLLBACK TO queued_write", "RELEASE queued_write"],
    };
    for sql in statements {
        tx.prepare_cached(sql)?.execute([])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::error::ErrorCode;
    use crate::store::{test_store, Store};

    type Answer = oneshot::Receiver<ApiResult<i64>>;

    fn scratch() -> (tempfile::TempDir, Store) {
        let (dir, store) = test_store();
        store
            .write_sync(|tx| Ok(tx.execute_batch("CREATE TABLE scratch (x INTEGER)")?))
            .unwrap();
        (dir, store)
    }

    /// A job for `run_batch`, and the receiver of its answer.
    fn job<F>(work: F) -> (Box<dyn QueuedWrite>, Answer)
    where
        F: FnOnce(&Transaction<'_>) -> ApiResult<i64> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            work: Some(work),
            out: None,
            reply,
            touch: Touch::Nothing,
        };
        (Box::new(job), answer)
    }

    fn insert(x: i64) -> (Box<dyn QueuedWrite>, Answer) {
        job(move |tx| {
            tx.execute("INSERT INTO scratch (x) VALUES (?1)", [x])?;
            Ok(x)
        })
    }

    fn rows(store: &Store) -> Vec<i64> {
        store
            .read_sync(|c| {
                let mut st = c.prepare("SELECT x FROM scratch ORDER BY x")?;
                let xs = st.query_map([], |r| r.get(0))?;
                Ok(xs.collect::<Result<Vec<i64>, _>>()?)
            })
            .unwrap()
    }

    /// Runs one batch of `jobs` by hand and answers them, as the writer thread does, with a
    /// time budget no test machine reaches unless a test means it to.
    fn batch(store: &Store, jobs: Vec<Box<dyn QueuedWrite>>) -> VecDeque<Box<dyn QueuedWrite>> {
        batch_within(store, jobs, Duration::from_secs(60))
    }

    fn batch_within(
        store: &Store,
        jobs: Vec<Box<dyn QueuedWrite>>,
        budget: Duration,
    ) -> VecDeque<Box<dyn QueuedWrite>> {
        let mut queued: VecDeque<_> = jobs.into();
        let (done, committed) = run_batch(&store.inner, &mut queued, budget);
        for job in done {
            job.finish(&store.inner, committed.clone());
        }
        queued
    }

    #[test]
    fn a_failed_write_undoes_only_itself_and_the_batch_commits_once() {
        let (_dir, store) = scratch();
        let before = store.generation();
        let (a, a_answer) = insert(1);
        let (b, b_answer) = job(|tx| {
            tx.execute("INSERT INTO scratch (x) VALUES (2)", [])?;
            Err(ApiError::validation("x", "refused after its insert"))
        });
        let (c, c_answer) = job(|tx| {
            // Sees the write before it, not the undone one.
            Ok(tx.query_row("SELECT count(*) FROM scratch", [], |r| r.get(0))?)
        });
        let left = batch(&store, vec![a, b, c]);
        assert!(left.is_empty());
        assert_eq!(a_answer.blocking_recv().unwrap().unwrap(), 1);
        let refused = b_answer.blocking_recv().unwrap().unwrap_err();
        assert_eq!(refused.code, ErrorCode::ValidationError);
        assert_eq!(c_answer.blocking_recv().unwrap().unwrap(), 1);
        assert_eq!(rows(&store), vec![1]);
        assert_eq!(store.generation(), before + 1, "one commit for the batch");
    }

    #[test]
    fn a_write_that_ends_the_transaction_fails_its_batch_and_leaves_the_rest_queued() {
        let (_dir, store) = scratch();
        let (a, a_answer) = insert(1);
        let (b, b_answer) = job(|tx| {
            tx.execute_batch("ROLLBACK")?;
            Ok(0)
        });
        let (c, c_answer) = insert(3);
        let left = batch(&store, vec![a, b, c]);
        // The insert before it was lost with the transaction, so it is not acknowledged.
        assert!(a_answer.blocking_recv().unwrap().is_err());
        assert!(b_answer.blocking_recv().unwrap().is_err());
        assert_eq!(left.len(), 1, "the write after it waits for the next batch");
        assert!(batch(&store, left.into()).is_empty());
        assert_eq!(c_answer.blocking_recv().unwrap().unwrap(), 3);
        assert_eq!(rows(&store), vec![3]);
    }

    #[test]
    fn a_panicking_write_fails_alone() {
        let (_dir, store) = scratch();
        let (a, a_answer) = insert(1);
        let (b, b_answer) = job(|tx| {
            tx.execute("INSERT INTO scratch (x) VALUES (2)", [])?;
            panic!("a bug in one write");
        });
        let (c, c_answer) = insert(3);
        assert!(batch(&store, vec![a, b, c]).is_empty());
        assert!(a_answer.blocking_recv().unwrap().is_ok());
        let e = b_answer.blocking_recv().unwrap().unwrap_err();
        assert_eq!(e.code, ErrorCode::InternalError);
        assert!(c_answer.blocking_recv().unwrap().is_ok());
        assert_eq!(rows(&store), vec![1, 3]);
    }

    #[test]
    fn a_batch_never_takes_more_than_its_cap() {
        let (_dir, store) = scratch();
        let mut answers = Vec::new();
        let jobs = (0..MAX_BATCH as i64 + 5)
            .map(|x| {
                let (j, a) = insert(x);
                answers.push(a);
                j
            })
            .collect();
        let left = batch(&store, jobs);
        assert_eq!(left.len(), 5);
        assert_eq!(rows(&store).len(), MAX_BATCH);
        assert!(batch(&store, left.into()).is_empty());
        for a in answers {
            assert!(a.blocking_recv().unwrap().is_ok());
        }
    }

    #[test]
    fn a_slow_write_ends_its_batch() {
        let (_dir, store) = scratch();
        let (slow, slow_answer) = job(|tx| {
            std::thread::sleep(BATCH_BUDGET * 3);
            tx.execute("INSERT INTO scratch (x) VALUES (1)", [])?;
            Ok(1)
        });
        let (after, after_answer) = insert(2);
        let left = batch_within(&store, vec![slow, after], BATCH_BUDGET);
        assert_eq!(left.len(), 1, "the write after it waits for the next batch");
        assert_eq!(slow_answer.blocking_recv().unwrap().unwrap(), 1);
        assert!(batch(&store, left.into()).is_empty());
        assert_eq!(after_answer.blocking_recv().unwrap().unwrap(), 2);
    }

    #[test]
    fn a_batch_that_cannot_start_fails_its_writes_and_the_next_one_works() {
        let (_dir, store) = scratch();
        // Another connection holds the write lock past the writer's busy timeout.
        let other = rusqlite::Connection::open(store.path()).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        lock(&store.inner.writer)
            .busy_timeout(Duration::from_millis(10))
            .unwrap();
        let (a, a_answer) = insert(1);
        assert!(batch(&store, vec![a]).is_empty());
        let e = a_answer.blocking_recv().unwrap().unwrap_err();
        assert_eq!(e.code, ErrorCode::InternalError);
        other.execute_batch("ROLLBACK").unwrap();
        let (b, b_answer) = insert(2);
        assert!(batch(&store, vec![b]).is_empty());
        assert_eq!(b_answer.blocking_recv().unwrap().unwrap(), 2);
        assert_eq!(rows(&store), vec![2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_each_answered_after_their_commit() {
        let (_dir, store) = scratch();
        let before = store.org_generation("acme");
        let writes: Vec<_> = (0..400_i64)
            .map(|x| {
                let store = store.clone();
                tokio::spawn(async move {
                    let n = store
                        .write_for("acme", move |tx| {
                            tx.execute("INSERT INTO scratch (x) VALUES (?1)", [x])?;
                            Ok(x)
                        })
                        .await?;
                    // Answered after the commit: another connection sees it already, and
                    // the org's cached reads are already stale.
                    let seen: i64 = store.read_sync(move |c| {
                        Ok(
                            c.query_row("SELECT count(*) FROM scratch WHERE x = ?1", [n], |r| {
                                r.get(0)
                            })?,
                        )
                    })?;
                    assert_ne!(store.org_generation("acme"), before);
                    ApiResult::Ok(seen)
                })
            })
            .collect();
        for w in writes {
            assert_eq!(w.await.unwrap().unwrap(), 1);
        }
        assert_eq!(rows(&store), (0..400).collect::<Vec<_>>());
    }

    /// Liveness, not a proof of the hand-over: with or without `wait_for_checkpoint` the
    /// checkpoints got the mutex in tests here; this catches a deadlock or a starved checkpoint.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_checkpoint_gets_the_writer_under_a_steady_stream_of_writes() {
        let (_dir, store) = scratch();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let (store, stop, written) = (store.clone(), stop.clone(), written.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        store
                            .write_bookkeeping(|tx| {
                                Ok(tx.execute("INSERT INTO scratch (x) VALUES (1)", [])?)
                            })
                            .await
                            .unwrap();
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        // Once the stream is steady, the writer thread always has a next batch waiting.
        while written.load(Ordering::Relaxed) < 500 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let s = store.clone();
        let restarts = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            for _ in 0..20 {
                s.checkpoint(crate::store::wal::Mode::Restart).unwrap();
            }
            started.elapsed()
        });
        let before = written.load(Ordering::Relaxed);
        let took = tokio::time::timeout(Duration::from_secs(30), restarts)
            .await
            .expect("RESTART checkpoints finish while writes keep coming")
            .unwrap();
        let during = written.load(Ordering::Relaxed) - before;
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        assert!(during > 0, "the writes went on meanwhile");
        eprintln!("20 RESTART checkpoints took {took:?} beside {during} writes");
    }

    #[test]
    fn the_writer_thread_does_not_keep_the_store_alive() {
        let (dir, store) = scratch();
        let inner: std::sync::Weak<Inner> = Arc::downgrade(&store.inner);
        drop(store);
        // The writer thread may be between batches holding a strong reference for an instant.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while inner.upgrade().is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(inner.upgrade().is_none());
        drop(dir);
    }
}
