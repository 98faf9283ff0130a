//! Keeping the write-ahead log bounded while readers and writers never stop.
//!
//! SQLite only starts the log over from its beginning when a checkpoint has copied every frame
//! and no reader still uses it. Under constant traffic a `PASSIVE` checkpoint copies frames but
//! that moment never comes, so the file grows without end (5 GB in 40 s was seen). The
//! background [`spawn`]ed task therefore, once per tick:
//!
//! - after a quiet spell, copies everything and truncates the log to zero bytes;
//! - while writes go on, copies what the last tick added (`PASSIVE`, which never blocks
//!   anyone). Copying little and often keeps each checkpoint's two `fsync`s small: one `fsync`
//!   of a 64 MiB log took 337 ms here, and on ext4 commits appending to the log stalled behind
//!   it for up to 75 ms;
//! - when that checkpoint reports a log of `wal_reset_bytes` or more, holds the writer for a
//!   short `RESTART`, which has only the frames written since to copy, and starts the log over.
//!   The file keeps its blocks (overwriting them is cheaper for the next writes than growing a
//!   file) and is cut back to `journal_size_limit` (the same size) by the next commit.
//!
//! The log's size is what the checkpoint reports (frames in use), never the file's size: after a
//! reset the file stays at `journal_size_limit` while holding few frames.
//!
//! It also publishes the database and WAL file sizes as gauges. Checkpoints never run inside a
//! request's commit (`wal_autocheckpoint = 0`): each fsyncs, which would land on one unlucky write.

use std::time::Duration;

use super::Store;
use crate::telemetry;

/// How often the file sizes are read and a checkpoint considered.
pub const TICK: Duration = Duration::from_millis(100);
/// Ticks without a write after which the log is truncated to zero bytes.
const QUIET_TICKS: u32 = 3;

/// The checkpoint flavours the store runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Copies what it can; never waits and never blocks anyone.
    Passive,
    /// Copies everything, waits for readers to leave the log, and starts it over from its
    /// beginning; the next commit cuts the file back to `journal_size_limit`.
    Restart,
    /// Like `Restart`, and truncates the file to zero bytes.
    Truncate,
}

impl Mode {
    pub(super) fn pragma(self) -> &'static str {
        match self {
            Mode::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
            Mode::Restart => "PRAGMA wal_checkpoint(RESTART)",
            Mode::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Mode::Passive => "passive",
            Mode::Restart => "restart",
            Mode::Truncate => "truncate",
        }
    }
}

/// What `PRAGMA wal_checkpoint` reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The checkpoint could not finish (a reader or another process held the log).
    pub busy: bool,
    /// Frames in the log when it ran (-1 when the database is not in WAL mode).
    pub log_frames: i64,
    /// Frames copied into the database file so far.
    pub checkpointed_frames: i64,
}

/// Sizes of the database file and its WAL, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileSizes {
    pub db_bytes: u64,
    pub wal_bytes: u64,
}

/// Busy handler of the checkpointer connection: a `TRUNCATE` waits for readers still on an
/// older snapshot (read transactions last micro- to milliseconds), checking every 100 µs rather
/// than SQLite's default sleeps of 1, 2, 5, 10 ms… while the writer is held. Gives up after
/// about 100 ms; the next tick tries again.
pub(super) fn checkpoint_busy_handler(attempts: i32) -> bool {
    if attempts >= 1_000 {
        return false;
    }
    std::thread::sleep(Duration::from_micros(100));
    true
}

pub(super) fn record(mode: Mode, outcome: Option<&Outcome>, elapsed: Duration) {
    let result = match outcome {
        None => "error",
        Some(o) if o.busy => "busy",
        Some(_) => "ok",
    };
    telemetry::db_checkpoint(mode.label(), result, elapsed);
}

/// What one tick decided to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Nothing,
    /// Writes since the last tick: copy them forward, then reset the log if it is large.
    CopyForward,
    /// Quiet: copy everything and truncate the file to zero bytes.
    Truncate,
}

/// The checkpointer's memory between ticks.
#[derive(Debug, Default)]
struct Policy {
    seen_generation: u64,
    copied_generation: u64,
    quiet_ticks: u32,
}

impl Policy {
    /// Starts as if after a quiet spell, so a log left by the previous run (or by migrations)
    /// is checkpointed and truncated at the first tick.
    fn new(generation: u64) -> Self {
        Policy {
            seen_generation: generation,
            copied_generation: generation,
            quiet_ticks: QUIET_TICKS,
        }
    }

    /// `wal_file_bytes` only tells whether a log file is there to truncate.
    fn decide(&mut self, generation: u64, wal_file_bytes: u64) -> Action {
        if generation == self.seen_generation {
            self.quiet_ticks = self.quiet_ticks.saturating_add(1);
        } else {
            self.quiet_ticks = 0;
            self.seen_generation = generation;
        }
        if wal_file_bytes == 0 {
            return Action::Nothing;
        }
        if self.quiet_ticks >= QUIET_TICKS {
            self.copied_generation = generation;
            return Action::Truncate;
        }
        if generation != self.copied_generation {
            self.copied_generation = generation;
            return Action::CopyForward;
        }
        Action::Nothing
    }
}

/// Copies forward without blocking; if the log then holds `reset_bytes` or more, holds the
/// writer for a `RESTART`, which has only the frames written meanwhile left to copy.
fn copy_forward(store: &Store, reset_bytes: u64) -> crate::error::ApiResult<Outcome> {
    let copied = store.checkpoint(Mode::Passive)?;
    if store.log_bytes(&copied) >= reset_bytes {
        return store.checkpoint(Mode::Restart);
    }
    Ok(copied)
}

/// Copies forward, then holds the writer for the final `TRUNCATE`.
fn truncate(store: &Store) -> crate::error::ApiResult<Outcome> {
    store.checkpoint(Mode::Passive)?;
    store.checkpoint(Mode::Truncate)
}

/// Spawns the checkpointer; it ends when `shutdown` fires.
pub fn spawn(
    store: Store,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut policy = Policy::new(store.generation());
        telemetry::db_checkpoints_init();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let sizes = store.file_sizes();
            telemetry::db_sizes(sizes.db_bytes, sizes.wal_bytes);
            let action = policy.decide(store.generation(), sizes.wal_bytes);
            if action == Action::Nothing {
                continue;
            }
            let s = store.clone();
            let done = tokio::task::spawn_blocking(move || match action {
                Action::CopyForward => copy_forward(&s, s.wal_reset_bytes()).map(Some),
                Action::Truncate => truncate(&s).map(Some),
                Action::Nothing => Ok(None),
            })
            .await;
            match done {
                Ok(Ok(Some(o))) if o.busy => {
                    tracing::debug!(?action, "WAL checkpoint busy; retrying next tick")
                }
                Ok(Ok(_)) => {
                    let sizes = store.file_sizes();
                    telemetry::db_sizes(sizes.db_bytes, sizes.wal_bytes);
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "WAL checkpoint failed"),
                Err(e) => tracing::warn!(error = %e, "WAL checkpoint task failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{test_store, StoreOptions};

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn policy_copies_forward_while_writes_go_on_and_truncates_when_quiet() {
        // A log found at start is truncated at the first tick.
        assert_eq!(Policy::new(0).decide(0, MIB), Action::Truncate);
        let mut p = Policy::new(0);
        // Writes every tick: each tick copies them forward.
        assert_eq!(p.decide(10, MIB), Action::CopyForward);
        assert_eq!(p.decide(20, 64 * MIB), Action::CopyForward);
        // A tick without writes has nothing to copy; the third truncates.
        assert_eq!(p.decide(20, 64 * MIB), Action::Nothing);
        assert_eq!(p.decide(20, 64 * MIB), Action::Nothing);
        assert_eq!(p.decide(20, 64 * MIB), Action::Truncate);
        // Nothing to do without a log file, quiet or not.
        assert_eq!(p.decide(20, 0), Action::Nothing);
        assert_eq!(p.decide(30, 0), Action::Nothing);
        assert_eq!(p.decide(30, MIB), Action::CopyForward);
    }

    /// After a reset the file keeps `journal_size_limit` bytes while holding few frames; the
    /// size that decides the next reset is the frames in use. (Deciding on the file size reset
    /// the log at every tick once it had first reached the reset size: two `fsync`s and a held
    /// writer ten times a second.)
    #[test]
    fn the_log_size_is_the_frames_in_use_not_the_file_size() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            wal_reset_bytes: MIB,
            ..StoreOptions::default()
        };
        let store = Store::open(dir.path(), &opts).unwrap();
        grow_wal(&store, 500);
        let before = store.checkpoint(Mode::Passive).unwrap();
        assert!(store.log_bytes(&before) > MIB, "{before:?}");
        assert!(!copy_forward(&store, MIB).unwrap().busy);
        // The first commit after the reset starts the log over and cuts the file back.
        grow_wal(&store, 1);
        assert!(store.file_sizes().wal_bytes >= MIB);
        let after = store.checkpoint(Mode::Passive).unwrap();
        assert!(store.log_bytes(&after) < 64 * 1024, "{after:?}");
    }

    fn grow_wal(store: &Store, rows: usize) {
        store
            .write_sync(|tx| {
                tx.execute_batch("CREATE TABLE IF NOT EXISTS filler (v BLOB)")?;
                for _ in 0..rows {
                    tx.execute("INSERT INTO filler VALUES (zeroblob(4000))", [])?;
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn truncate_copies_everything_and_empties_the_log() {
        let (_dir, store) = test_store();
        grow_wal(&store, 500);
        assert!(store.file_sizes().wal_bytes > MIB);
        let out = truncate(&store).unwrap();
        assert!(!out.busy);
        assert_eq!(store.file_sizes().wal_bytes, 0);
        assert!(store.file_sizes().db_bytes > 2 * MIB);
        let n: i64 = store
            .read_sync(|c| Ok(c.query_row("SELECT count(*) FROM filler", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(n, 500);
    }

    #[test]
    fn reset_succeeds_while_readers_and_a_writer_never_stop() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let (_dir, store) = test_store();
        grow_wal(&store, 10);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for _ in 0..2 {
            let (store, stop) = (store.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    store
                        .read_sync(|c| {
                            Ok(c.query_row("SELECT count(*) FROM filler", [], |r| {
                                r.get::<_, i64>(0)
                            })?)
                        })
                        .unwrap();
                }
            }));
        }
        {
            let (store, stop) = (store.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    grow_wal(&store, 20);
                }
            }));
        }
        // The claim is liveness: resets keep finishing while the load never stops. Each attempt
        // may report busy (a reader descheduled mid-transaction on a loaded CI machine holds the
        // log past the busy handler's 100 ms), so count successes over a generous number of
        // attempts instead of demanding them from a fixed handful.
        let mut resets = 0;
        let mut attempts = 0;
        while resets < 3 && attempts < 200 {
            attempts += 1;
            std::thread::sleep(Duration::from_millis(50));
            // A reset size of 0: every pass ends in a `RESTART`.
            let out = copy_forward(&store, 0).unwrap();
            if !out.busy {
                resets += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            resets, 3,
            "only {resets} resets finished in {attempts} attempts"
        );
        assert!(!truncate(&store).unwrap().busy);
        assert_eq!(store.file_sizes().wal_bytes, 0);
    }

    #[test]
    fn journal_size_limit_is_the_reset_size() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            wal_reset_bytes: 8 * MIB,
            ..StoreOptions::default()
        };
        let store = Store::open(dir.path(), &opts).unwrap();
        let limit: i64 = store
            .write_sync(|tx| Ok(tx.query_row("PRAGMA journal_size_limit", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(limit, (8 * MIB) as i64);
    }

    #[tokio::test]
    async fn the_task_publishes_sizes_and_truncates_after_a_quiet_spell() {
        let (_dir, store) = test_store();
        grow_wal(&store, 300);
        assert!(store.file_sizes().wal_bytes > 0);
        let (tx, rx) = tokio::sync::watch::channel(false);
        let task = spawn(store.clone(), rx);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.file_sizes().wal_bytes > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(TICK).await;
        }
        assert_eq!(store.file_sizes().wal_bytes, 0);
        tx.send(true).unwrap();
        task.await.unwrap();
    }
}
