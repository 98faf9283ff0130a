//! Requests running in this process, per [`Scope`]: of several concurrent requests with one
//! scope exactly one owns it and executes; the others wait for its outcome (up to a deadline)
//! and replay it. A claim is memory by nature — it dies with its process — so correctness after
//! a crash rests on the durable record, which the owner's effect commits with it.
//!
//! A claimer asks the store for a finished record, takes a slot here, and asks the store again.
//! An owner publishes its record to the store before it leaves the running map, so a claimer
//! cannot miss both. Across processes sharing one database, the store's compare-and-set under
//! the effect's own lock is what holds (a second execution's seal finds the record and replays).

use std::sync::Arc;
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::watch;

use super::{Record, Scope, StateStore};
use crate::error::ApiResult;

#[derive(Debug, Clone)]
enum Progress {
    Running,
    Finished(Arc<Record>),
    /// The owner gave up without a storable outcome (validation error, 5xx, crash): waiters
    /// claim again themselves.
    Abandoned,
}

#[derive(Debug)]
struct Running {
    fingerprint: [u8; 32],
    progress: watch::Sender<Progress>,
}

/// What a claim found.
pub enum Claim {
    /// Nobody has this scope: the caller executes and must `finish` or drop the guard.
    Owner(ClaimGuard),
    /// Finished before with the same fingerprint: replay this.
    Replay(Arc<Record>),
    /// The scope holds a different request.
    Reused(Arc<Record>),
    /// A twin with another fingerprint is running right now.
    ReusedRunning,
    /// A twin is still executing after the wait.
    InUse,
}

/// The running requests of this process. Cheap to clone.
#[derive(Clone, Default)]
pub struct Claims {
    running: Arc<DashMap<Scope, Arc<Running>>>,
}

impl Claims {
    /// Claims `scope` for a request with `fingerprint`, waiting up to `wait` for a twin.
    pub async fn claim(
        &self,
        store: &dyn StateStore,
        scope: &Scope,
        fingerprint: [u8; 32],
        wait: Duration,
    ) -> ApiResult<Claim> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(found) = store.lookup(scope).await? {
                let found = Arc::new(found);
                return Ok(if found.fingerprint == fingerprint {
                    Claim::Replay(found)
                } else {
                    Claim::Reused(found)
                });
            }
            let running = match self.running.entry(scope.clone()) {
                Entry::Occupied(e) => e.get().clone(),
                Entry::Vacant(e) => {
                    let running = Arc::new(Running {
                        fingerprint,
                        progress: watch::channel(Progress::Running).0,
                    });
                    e.insert(running.clone());
                    let guard = ClaimGuard {
                        claims: self.clone(),
                        scope: scope.clone(),
                        running,
                        finished: false,
                    };
                    // An owner records before it leaves the map, so a twin that finished
                    // between the lookup above and this slot is in the store now. (Dropping the
                    // guard releases the slot and wakes anyone who queued behind it.)
                    if let Some(found) = store.lookup(scope).await? {
                        drop(guard);
                        let found = Arc::new(found);
                        return Ok(if found.fingerprint == fingerprint {
                            Claim::Replay(found)
                        } else {
                            Claim::Reused(found)
                        });
                    }
                    return Ok(Claim::Owner(guard));
                }
            };
            if running.fingerprint != fingerprint {
                return Ok(Claim::ReusedRunning);
            }
            let mut rx = running.progress.subscribe();
            let waited =
                tokio::time::timeout_at(deadline, rx.wait_for(|p| !matches!(p, Progress::Running)))
                    .await;
            match waited {
                Ok(Ok(p)) => match &*p {
                    Progress::Finished(record) => return Ok(Claim::Replay(record.clone())),
                    _ => continue,
                },
                // The owner's guard went away without a word: claim again.
                Ok(Err(_)) => continue,
                Err(_) => return Ok(Claim::InUse),
            }
        }
    }

    /// Requests running right now (diagnostics and tests).
    pub fn running(&self) -> usize {
        self.running.len()
    }
}

/// Ownership of a claimed scope. Dropping it without `finish` releases the scope (waiters claim
/// again), so a failure or a panic never leaves a scope stuck "in flight".
pub struct ClaimGuard {
    claims: Claims,
    scope: Scope,
    running: Arc<Running>,
    finished: bool,
}

impl ClaimGuard {
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Hands the recorded outcome to waiters and leaves the running map. Call it only once the
    /// record is in the store.
    pub fn finish(mut self, record: Record) {
        self.leave();
        self.running
            .progress
            .send_replace(Progress::Finished(Arc::new(record)));
        self.finished = true;
    }

    /// Releases the scope without an outcome (the client may retry with the same key).
    pub fn abandon(mut self) {
        self.release();
    }

    fn leave(&self) {
        let ours = &self.running;
        self.claims
            .running
            .remove_if(&self.scope, |_, current| Arc::ptr_eq(current, ours));
    }

    fn release(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.leave();
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
    use crate::native::reply::NativeReply;
    use crate::state::sqlite::SqliteState;
    use crate::state::Outcome;

    fn record(fp: u8) -> Record {
        Record {
            fingerprint: [fp; 32],
            outcome: Outcome::Reply {
                reply: Box::new(NativeReply::result("Done.", serde_json::json!({}))),
            },
            undo_id: None,
        }
    }

    #[tokio::test]
    async fn one_owner_twins_wait_and_replay_others_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let state = SqliteState::open_for_tests(dir.path(), 0);
        let claims = Claims::default();
        let scope = Scope::new("o", "k", "turn-1");
        let wait = Duration::from_secs(5);
        let Claim::Owner(guard) = claims.claim(&state, &scope, [1; 32], wait).await.unwrap() else {
            panic!("first claim owns the scope");
        };
        assert!(matches!(
            claims.claim(&state, &scope, [2; 32], wait).await.unwrap(),
            Claim::ReusedRunning
        ));
        let twin = {
            let (claims, state, scope) = (claims.clone(), state.clone(), scope.clone());
            tokio::spawn(async move { claims.claim(&state, &scope, [1; 32], wait).await })
        };
        tokio::task::yield_now().await;
        let r = record(1);
        assert!(state.record(&scope, &r, wait * 100).await.unwrap());
        guard.finish(r);
        assert!(matches!(twin.await.unwrap().unwrap(), Claim::Replay(_)));
        assert_eq!(claims.running(), 0);
        // Another API key's identical name is another scope.
        let other = Scope::new("o", "k2", "turn-1");
        assert!(matches!(
            claims.claim(&state, &other, [1; 32], wait).await.unwrap(),
            Claim::Owner(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_twin_still_running_after_the_wait_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let state = SqliteState::open_for_tests(dir.path(), 0);
        let claims = Claims::default();
        let scope = Scope::new("o", "k", "slow");
        let _owner = claims
            .claim(&state, &scope, [1; 32], Duration::ZERO)
            .await
            .unwrap();
        let c = claims.clone();
        let (st, sc) = (state.clone(), scope.clone());
        let waiter =
            tokio::spawn(async move { c.claim(&st, &sc, [1; 32], Duration::from_secs(5)).await });
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(matches!(waiter.await.unwrap().unwrap(), Claim::InUse));
    }

    #[tokio::test]
    async fn an_abandoned_claim_lets_a_waiter_own_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = SqliteState::open_for_tests(dir.path(), 0);
        let claims = Claims::default();
        let scope = Scope::new("o", "k", "k1");
        let wait = Duration::from_secs(5);
        let Claim::Owner(g) = claims.claim(&state, &scope, [1; 32], wait).await.unwrap() else {
            panic!("owner");
        };
        let c = claims.clone();
        let (st, sc) = (state.clone(), scope.clone());
        let waiter = tokio::spawn(async move { c.claim(&st, &sc, [1; 32], wait).await });
        tokio::task::yield_now().await;
        drop(g);
        assert!(matches!(waiter.await.unwrap().unwrap(), Claim::Owner(_)));
    }
}
