//! Keeping the write-ahead log bounded while readers and writers never stop.
//!
//! SQLite only starts the log over from its beginning when a checkpoint has copied every frame
//! and no reader still uses it. Under constant traffic a `PASSIVE` checkpoint copies frames but
//! that moment never comes, so the file grows without end (5 GB in 40 s was seen). The
//! background [`spawn`]ed task therefore:
//!
//! - after a quiet spell, copies everything and truncates the log to zero bytes;
//! - under load, once the log reaches `wal_reset_bytes`, copies what it can without blocking
//!   (`PASSIVE`), then holds the writer for a short `RESTART` that copies the few frames added
//!   meanwhile and starts the log over. The file keeps its blocks (overwriting them is cheaper
//!   for the next writes than growing a file) and is cut back to `journal_size_limit` (the same
//!   size) by the next commit;
//! - between resets, runs `PASSIVE` every few thousand writes so a reset has little left to copy.
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
/// Writes after which a `PASSIVE` checkpoint copies the log forward even under load.
const PASSIVE_AFTER_WRITES: u64 = 2_000;

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
    /// Copy forward without blocking anyone.
    Passive,
    /// Under load: copy, then start the log over (`PASSIVE`, then a short `RESTART`).
    Reset,
    /// Quiet: copy everything and truncate the file to zero bytes.
    Truncate,
}

/// The checkpointer's memory between ticks.
#[derive(Debug, Default)]
struct Policy {
    seen_generation: u64,
    passive_generation: u64,
    quiet_ticks: u32,
}

impl Policy {
    /// Starts as if after a quiet spell, so a log left by the previous run (or by migrations)
    /// is checkpointed and truncated at the first tick.
    fn new(generation: u64) -> Self {
        Policy {
            seen_generation: generation,
            passive_generation: generation,
            quiet_ticks: QUIET_TICKS,
        }
    }

    fn decide(&mut self, generation: u64, wal_bytes: u64, reset_bytes: u64) -> Action {
        if generation == self.seen_generation {
            self.quiet_ticks = self.quiet_ticks.saturating_add(1);
        } else {
            self.quiet_ticks = 0;
            self.seen_generation = generation;
        }
        if wal_bytes == 0 {
            return Action::Nothing;
        }
        if self.quiet_ticks >= QUIET_TICKS {
            self.passive_generation = generation;
            return Action::Truncate;
        }
        if wal_bytes >= reset_bytes {
            self.passive_generation = generation;
            return Action::Reset;
        }
        if generation.saturating_sub(self.passive_generation) >= PASSIVE_AFTER_WRITES {
            self.passive_generation = generation;
            return Action::Passive;
        }
        Action::Nothing
    }
}

/// Copies forward without blocking, then holds the writer for the final `last` checkpoint,
/// which has only the frames written meanwhile left to copy. Each checkpoint that copies
/// fsyncs, and commits stall behind an fsync of the log, so a reset runs two and no more.
fn reset(store: &Store, last: Mode) -> crate::error::ApiResult<Outcome> {
    store.checkpoint(Mode::Passive)?;
    store.checkpoint(last)
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
            let action =
                policy.decide(store.generation(), sizes.wal_bytes, store.wal_reset_bytes());
            if action == Action::Nothing {
                continue;
            }
            let s = store.clone();
            let done = tokio::task::spawn_blocking(move || match action {
                Action::Reset => reset(&s, Mode::Restart).map(Some),
                Action::Truncate => reset(&s, Mode::Truncate).map(Some),
                Action::Passive => s.checkpoint(Mode::Passive).map(Some),
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
    fn policy_resets_when_quiet_or_large_and_copies_forward_in_between() {
        // A log found at start is truncated at the first tick.
        assert_eq!(Policy::new(0).decide(0, MIB, 64 * MIB), Action::Truncate);
        let mut p = Policy::new(0);
        // Writes every tick, small log: nothing until enough writes for a passive pass.
        assert_eq!(p.decide(10, MIB, 64 * MIB), Action::Nothing);
        assert_eq!(p.decide(1_500, MIB, 64 * MIB), Action::Nothing);
        assert_eq!(p.decide(2_100, 2 * MIB, 64 * MIB), Action::Passive);
        assert_eq!(p.decide(2_200, 2 * MIB, 64 * MIB), Action::Nothing);
        // The log reached the reset size under load.
        assert_eq!(p.decide(2_300, 64 * MIB, 64 * MIB), Action::Reset);
        // Quiet: the third tick without a write truncates.
        assert_eq!(p.decide(2_300, MIB, 64 * MIB), Action::Nothing);
        assert_eq!(p.decide(2_300, MIB, 64 * MIB), Action::Nothing);
        assert_eq!(p.decide(2_300, MIB, 64 * MIB), Action::Truncate);
        // Nothing to do with an empty log, quiet or not.
        assert_eq!(p.decide(2_300, 0, 64 * MIB), Action::Nothing);
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
    fn reset_copies_everything_and_empties_the_log() {
        let (_dir, store) = test_store();
        grow_wal(&store, 500);
        assert!(store.file_sizes().wal_bytes > MIB);
        let out = reset(&store, Mode::Truncate).unwrap();
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
            let out = reset(&store, Mode::Restart).unwrap();
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
        assert!(!reset(&store, Mode::Truncate).unwrap().busy);
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
