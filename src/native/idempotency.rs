//! Idempotency (DESIGN §8): one slot per (org, key) holding either "in flight" or the stored
//! outcome. Claiming is atomic, so of 100 concurrent requests with one key exactly one executes;
//! the rest wait for it and replay its answer. Memory is bounded by moka (TTL and total bytes).
//!
//! The same structure, with a short TTL and the request fingerprint as key, is the dedupe window
//! for writes sent without a key.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

#[derive(Debug, Clone)]
enum SlotState {
    InFlight,
    Done(Arc<StoredOutcome>),
    /// The owner gave up without a storable outcome (validation error, 5xx, crash): waiters
    /// retry the claim themselves.
    Abandoned,
}

#[derive(Debug)]
pub struct Slot {
    fingerprint: [u8; 32],
    state: watch::Sender<SlotState>,
    weight: AtomicU32,
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
    slots: moka::sync::Cache<SlotKey, Arc<Slot>>,
}

impl IdempotencyStore {
    pub fn new(ttl: Duration, max_bytes: u64) -> Self {
        IdempotencyStore {
            slots: moka::sync::Cache::builder()
                .time_to_live(ttl)
                .max_capacity(max_bytes)
                .weigher(|k: &SlotKey, v: &Arc<Slot>| {
                    let key = (k.0.len() + k.1.len()) as u32;
                    key.saturating_add(v.weight.load(Ordering::Relaxed))
                })
                .build(),
        }
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
            let fresh = Arc::new(Slot {
                fingerprint,
                state: watch::channel(SlotState::InFlight).0,
                weight: AtomicU32::new(256),
            });
            let entry = self
                .slots
                .entry(slot_key.clone())
                .or_insert_with(|| fresh.clone());
            if entry.is_fresh() {
                return Claim::Owner(ClaimGuard {
                    slots: self.slots.clone(),
                    key: slot_key,
                    slot: fresh,
                    finished: false,
                });
            }
            let existing = entry.into_value();
            if existing.fingerprint != fingerprint {
                return Claim::Reused;
            }
            let mut rx = existing.state.subscribe();
            let waited = tokio::time::timeout_at(
                deadline,
                rx.wait_for(|s| !matches!(s, SlotState::InFlight)),
            )
            .await;
            match waited {
                Ok(Ok(state)) => match &*state {
                    SlotState::Done(outcome) => return Claim::Replay(outcome.clone()),
                    _ => continue,
                },
                Ok(Err(_)) => continue,
                Err(_) => return Claim::InUse,
            }
        }
    }

    /// The stored outcome under `(org, key)`, if the request holding it has finished.
    pub fn peek(&self, org: &str, key: &str) -> Option<Arc<StoredOutcome>> {
        let slot = self.slots.get(&(org.to_string(), key.to_string()))?;
        let state = slot.state.borrow();
        match &*state {
            SlotState::Done(o) => Some(o.clone()),
            _ => None,
        }
    }

    /// Entries currently held (in flight or done), for diagnostics.
    pub fn len(&self) -> u64 {
        self.slots.run_pending_tasks();
        self.slots.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Ownership of a claimed key. Dropping it without `complete` releases the key (waiters retry),
/// so a failure or a panic never leaves a key stuck "in flight".
pub struct ClaimGuard {
    slots: moka::sync::Cache<SlotKey, Arc<Slot>>,
    key: SlotKey,
    slot: Arc<Slot>,
    finished: bool,
}

impl ClaimGuard {
    /// Stores the outcome for replay and wakes waiters.
    pub fn complete(mut self, outcome: StoredOutcome) {
        let outcome = Arc::new(outcome);
        self.slot.weight.store(outcome.weight(), Ordering::Relaxed);
        self.slot.state.send_replace(SlotState::Done(outcome));
        // Re-inserting the same slot makes moka re-weigh it with the stored size.
        self.slots.insert(self.key.clone(), self.slot.clone());
        self.finished = true;
    }

    /// Releases the key without storing anything (the client may retry with it).
    pub fn abandon(mut self) {
        self.release();
    }

    fn release(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        // Only remove our own slot: after expiry somebody else may hold the key already.
        if let Some(current) = self.slots.get(&self.key) {
            if Arc::ptr_eq(&current, &self.slot) {
                self.slots.invalidate(&self.key);
            }
        }
        self.slot.state.send_replace(SlotState::Abandoned);
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
                        owners.fetch_add(1, Ordering::SeqCst);
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
        assert_eq!(owners.load(Ordering::SeqCst), 1);
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
        s.slots.run_pending_tasks();
        assert!(s.slots.weighted_size() <= 64 * 1024);
        assert!(s.len() < 2000);
    }
}
