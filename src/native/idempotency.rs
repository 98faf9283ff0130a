//! Idempotency (DESIGN §8): per (org, key), either a request in flight or its stored outcome.
//! Claiming is atomic, so of 100 concurrent requests with one key exactly one executes; the rest
//! wait for it and replay its answer.
//!
//! In-flight claims live in a map of their own that nothing evicts (it holds at most one entry
//! per running request); only finished outcomes go to the moka cache, bounded by TTL and total
//! bytes. So memory pressure can forget a finished answer early, but can never let a retry run a
//! write that is still executing a second time.
//!
//! The same structure, with a short TTL and the request fingerprint as key, is the dedupe window
//! for writes sent without a key.

use std::sync::Arc;
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::watch;

use super::reply::NativeReply;
use crate::error::ApiError;

/// A finished turn as stored for replay.
#[derive(Debug, Clone)]
pub struct StoredOutcome {
    pub result: Result<NativeReply, ApiError>,
}

impl StoredOutcome {
    fn weight(&self) -> u32 {
        let body = match &self.result {
            Ok(r) => serde_json::to_vec(r).map(|v| v.len()).unwrap_or(1024),
            Err(e) => e.message.len() + e.details.as_ref().map_or(0, String::len) + 128,
        };
        u32::try_from(body + 256).unwrap_or(u32::MAX)
    }
}

/// A finished request: its fingerprint and outcome.
#[derive(Debug)]
struct Done {
    fingerprint: [u8; 32],
    outcome: Arc<StoredOutcome>,
    weight: u32,
}

#[derive(Debug, Clone)]
enum Progress {
    Running,
    Finished(Arc<StoredOutcome>),
    /// The owner gave up without a storable outcome (validation error, 5xx, crash): waiters
    /// retry the claim themselves.
    Abandoned,
}

/// A request in flight; waiters watch `progress`.
#[derive(Debug)]
struct Running {
    fingerprint: [u8; 32],
    progress: watch::Sender<Progress>,
}

type SlotKey = (String, String);

/// What a claim found.
pub enum Claim {
    /// Nobody has this key: the caller executes and must `complete` or drop the guard.
    Owner(ClaimGuard),
    /// Finished before with the same fingerprint: replay this.
    Replay(Arc<StoredOutcome>),
    /// The key belongs to a different request.
    Reused,
    /// A twin is still executing after the wait.
    InUse,
}

#[derive(Clone)]
pub struct IdempotencyStore {
    running: Arc<DashMap<SlotKey, Arc<Running>>>,
    done: moka::sync::Cache<SlotKey, Arc<Done>>,
}

impl IdempotencyStore {
    pub fn new(ttl: Duration, max_bytes: u64) -> Self {
        IdempotencyStore {
            running: Arc::new(DashMap::new()),
            done: moka::sync::Cache::builder()
                .time_to_live(ttl)
                .max_capacity(max_bytes)
                .weigher(|k: &SlotKey, v: &Arc<Done>| {
                    let key = u32::try_from(k.0.len() + k.1.len()).unwrap_or(u32::MAX);
                    key.saturating_add(v.weight)
                })
                .build(),
        }
    }

    fn finished(&self, key: &SlotKey, fingerprint: &[u8; 32]) -> Option<Claim> {
        let done = self.done.get(key)?;
        Some(if done.fingerprint == *fingerprint {
            Claim::Replay(done.outcome.clone())
        } else {
            Claim::Reused
        })
    }

    /// Claims `(org, key)` for a request with `fingerprint`, waiting up to `wait` for an
    /// in-flight twin.
    pub async fn claim(
        &self,
        org: &str,
        key: &str,
        fingerprint: [u8; 32],
        wait: Duration,
    ) -> Claim {
        let deadline = tokio::time::Instant::now() + wait;
        let slot_key: SlotKey = (org.to_string(), key.to_string());
        loop {
            if let Some(claim) = self.finished(&slot_key, &fingerprint) {
                return claim;
            }
            let running = match self.running.entry(slot_key.clone()) {
                Entry::Occupied(e) => e.get().clone(),
                Entry::Vacant(e) => {
                    // Checked again under the entry lock: an owner stores its outcome before it
                    // leaves the running map, so a finish in between is seen here.
                    if let Some(claim) = self.finished(&slot_key, &fingerprint) {
                        return claim;
                    }
                    let running = Arc::new(Running {
                        fingerprint,
                        progress: watch::channel(Progress::Running).0,
                    });
                    e.insert(running.clone());
                    return Claim::Owner(ClaimGuard {
                        store: self.clone(),
                        key: slot_key,
                        running,
                        finished: false,
                    });
                }
            };
            if running.fingerprint != fingerprint {
                return Claim::Reused;
            }
            let mut rx = running.progress.subscribe();
            let waited =
                tokio::time::timeout_at(deadline, rx.wait_for(|p| !matches!(p, Progress::Running)))
                    .await;
            match waited {
                Ok(Ok(p)) => match &*p {
                    Progress::Finished(outcome) => return Claim::Replay(outcome.clone()),
                    _ => continue,
                },
                Ok(Err(_)) => continue,
                Err(_) => return Claim::InUse,
            }
        }
    }

    /// The stored outcome under `(org, key)`, if the request holding it has finished.
    pub fn peek(&self, org: &str, key: &str) -> Option<Arc<StoredOutcome>> {
        self.done
            .get(&(org.to_string(), key.to_string()))
            .map(|d| d.outcome.clone())
    }

    /// Finished entries currently held, for diagnostics.
    pub fn len(&self) -> u64 {
        self.done.run_pending_tasks();
        self.done.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.running.is_empty()
    }
}

/// Ownership of a claimed key. Dropping it without `complete` releases the key (waiters retry),
/// so a failure or a panic never leaves a key stuck "in flight".
pub struct ClaimGuard {
    store: IdempotencyStore,
    key: SlotKey,
    running: Arc<Running>,
    finished: bool,
}

impl ClaimGuard {
    /// Stores the outcome for replay and wakes waiters.
    pub fn complete(mut self, outcome: StoredOutcome) {
        let outcome = Arc::new(outcome);
        let done = Arc::new(Done {
            fingerprint: self.running.fingerprint,
            weight: outcome.weight(),
            outcome: outcome.clone(),
        });
        // Stored before leaving the running map, so no claimer can find neither.
        self.store.done.insert(self.key.clone(), done);
        self.leave_running();
        self.running
            .progress
            .send_replace(Progress::Finished(outcome));
        self.finished = true;
    }

    /// Releases the key without storing anything (the client may retry with it).
    pub fn abandon(mut self) {
        self.release();
    }

    fn leave_running(&self) {
        let ours = &self.running;
        self.store
            .running
            .remove_if(&self.key, |_, current| Arc::ptr_eq(current, ours));
    }

    fn release(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.leave_running();
        self.running.progress.send_replace(Progress::Abandoned);
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::reply::{NativeReply, ReplyMode};
    use serde_json::json;

    fn reply(s: &str) -> StoredOutcome {
        StoredOutcome {
            result: Ok(NativeReply::new(ReplyMode::Result, s, json!({}))),
        }
    }

    fn store() -> IdempotencyStore {
        IdempotencyStore::new(Duration::from_secs(60), 1 << 20)
    }

    #[tokio::test]
    async fn claim_complete_replay_and_reuse() {
        let s = store();
        let fp = [1; 32];
        let Claim::Owner(g) = s.claim("o", "k", fp, Duration::ZERO).await else {
            panic!("owner")
        };
        g.complete(reply("done"));
        match s.claim("o", "k", fp, Duration::ZERO).await {
            Claim::Replay(o) => assert_eq!(o.result.as_ref().unwrap().spoken_summary, "done"),
            _ => panic!("replay"),
        }
        assert!(matches!(
            s.claim("o", "k", [2; 32], Duration::ZERO).await,
            Claim::Reused
        ));
        // another org's identical key is a different entry
        assert!(matches!(
            s.claim("p", "k", fp, Duration::ZERO).await,
            Claim::Owner(_)
        ));
    }

    #[tokio::test]
    async fn abandoned_keys_can_be_claimed_again() {
        let s = store();
        let Claim::Owner(g) = s.claim("o", "k", [1; 32], Duration::ZERO).await else {
            panic!()
        };
        drop(g);
        assert!(matches!(
            s.claim("o", "k", [1; 32], Duration::ZERO).await,
            Claim::Owner(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_replay_or_give_up() {
        let s = store();
        let Claim::Owner(g) = s.claim("o", "k", [1; 32], Duration::ZERO).await else {
            panic!()
        };
        let s2 = s.clone();
        let waiter =
            tokio::spawn(async move { s2.claim("o", "k", [1; 32], Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        g.complete(reply("x"));
        assert!(matches!(waiter.await.unwrap(), Claim::Replay(_)));

        let Claim::Owner(_g2) = s.claim("o", "k2", [1; 32], Duration::ZERO).await else {
            panic!()
        };
        let t0 = tokio::time::Instant::now();
        assert!(matches!(
            s.claim("o", "k2", [1; 32], Duration::from_secs(5)).await,
            Claim::InUse
        ));
        assert!(t0.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_running_claim_survives_cache_pressure() {
        // A cache too small to hold anything: finished answers are forgotten at once, but a
        // request still running must keep its key.
        let s = IdempotencyStore::new(Duration::from_secs(60), 1);
        let Claim::Owner(g) = s.claim("o", "k", [1; 32], Duration::ZERO).await else {
            panic!()
        };
        for i in 0..100 {
            if let Claim::Owner(other) = s
                .claim("o", &format!("x{i}"), [2; 32], Duration::ZERO)
                .await
            {
                other.complete(reply("filler"));
            }
        }
        assert!(matches!(
            s.claim("o", "k", [1; 32], Duration::ZERO).await,
            Claim::InUse
        ));
        drop(g);
    }

    #[tokio::test]
    async fn one_owner_among_many_concurrent_claims() {
        let s = store();
        let owners = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let s = s.clone();
            let owners = owners.clone();
            tasks.push(tokio::spawn(async move {
                match s.claim("o", "k", [7; 32], Duration::from_secs(5)).await {
                    Claim::Owner(g) => {
                        owners.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        g.complete(reply("once"));
                        true
                    }
                    Claim::Replay(_) => true,
                    _ => false,
                }
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap());
        }
        assert_eq!(owners.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn memory_is_bounded() {
        let s = IdempotencyStore::new(Duration::from_secs(60), 64 * 1024);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for i in 0..2000 {
                if let Claim::Owner(g) = s
                    .claim("o", &format!("k{i}"), [1; 32], Duration::ZERO)
                    .await
                {
                    g.complete(reply(&"x".repeat(100)));
                }
            }
        });
        s.done.run_pending_tasks();
        assert!(s.done.weighted_size() <= 64 * 1024);
        assert!(s.len() < 2000);
        assert!(s.running.is_empty());
    }
}
