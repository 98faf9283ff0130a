//! Requests running, per [`Scope`]: of several concurrent requests with one scope exactly one
//! owns it and executes; the others wait for its outcome (up to a deadline) and replay it.
//!
//! Two layers. In this process, a map of running requests lets twins wait on a channel. Across
//! processes, the owner also holds the store's lease ([`StateStore::acquire`]): with a store
//! shared by replicas (Redis) a twin on another replica finds the lease held and polls until the
//! record appears or its wait ends; the owner renews the lease while its effect runs and gives
//! it up after recording. The SQLite store grants every lease at once (one process per database).
//!
//! The store checks for a finished record and takes the lease in one atomic step, and an owner
//! records before it releases, so a twin that gets the lease after the owner finished sees the
//! record instead. Should a lease lapse while its owner still runs (a stalled renewal), the
//! store's compare-and-set on the record still keeps the first outcome; correctness after a
//! crash rests on the durable record.

use std::sync::Arc;
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::watch;

use super::{Lease, Record, Scope, StateStore};
use crate::error::ApiResult;

/// How long a cross-process lease lasts without renewal: a replica that dies mid-request holds
/// its scopes at most this long.
pub const LEASE: Duration = Duration::from_secs(6);

/// How often an owner renews its lease while the effect runs.
const RENEW_EVERY: Duration = Duration::from_secs(2);

/// How often a twin asks again while another process holds the lease.
const POLL_EVERY: Duration = Duration::from_millis(20);

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

/// The running requests, on one state store. Cheap to clone.
#[derive(Clone)]
pub struct Claims {
    store: Arc<dyn StateStore>,
    running: Arc<DashMap<Scope, Arc<Running>>>,
}

impl Claims {
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        Claims {
            store,
            running: Arc::new(DashMap::new()),
        }
    }

    /// Claims `scope` for a request with `fingerprint`, waiting up to `wait` for a twin. A
    /// store error (Redis unreachable) is returned as is: nobody executes without a claim.
    pub async fn claim(
        &self,
        scope: &Scope,
        fingerprint: [u8; 32],
        wait: Duration,
    ) -> ApiResult<Claim> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
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
                        lease: None,
                    };
                    return self.acquire(guard, fingerprint, deadline).await;
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

    /// As this process's candidate for `guard`'s scope (twins here wait on it), takes the
    /// store's lease, polling while another process holds it.
    async fn acquire(
        &self,
        mut guard: ClaimGuard,
        fingerprint: [u8; 32],
        deadline: tokio::time::Instant,
    ) -> ApiResult<Claim> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        loop {
            let found = self
                .store
                .acquire(&guard.scope, &token, fingerprint, LEASE)
                .await?;
            match found {
                Lease::Granted => {
                    if self.store.shared() {
                        guard.lease = Some(Leased::start(
                            self.store.clone(),
                            guard.scope.clone(),
                            token,
                        ));
                    }
                    return Ok(Claim::Owner(guard));
                }
                Lease::Recorded(record) => {
                    let record = Arc::new(*record);
                    // Twins here replay it too.
                    guard.publish(record.clone());
                    return Ok(if record.fingerprint == fingerprint {
                        Claim::Replay(record)
                    } else {
                        Claim::Reused(record)
                    });
                }
                Lease::Held(Some(theirs)) if theirs != fingerprint => {
                    return Ok(Claim::ReusedRunning)
                }
                Lease::Held(_) => {
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        return Ok(Claim::InUse);
                    }
                    tokio::time::sleep_until(deadline.min(now + POLL_EVERY)).await;
                }
            }
        }
    }

    /// Requests running in this process right now (diagnostics and tests).
    pub fn running(&self) -> usize {
        self.running.len()
    }
}

/// A cross-process lease held while the owner runs: renewed in the background, released when
/// the owner is done.
struct Leased {
    token: String,
    renewal: tokio::task::JoinHandle<()>,
}

impl Leased {
    fn start(store: Arc<dyn StateStore>, scope: Scope, token: String) -> Self {
        let t = token.clone();
        let renewal = tokio::spawn(async move {
            let mut tick = tokio::time::interval(RENEW_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                match store.renew(&scope, &t, LEASE).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!("idempotency lease lapsed while its request ran");
                        return;
                    }
                    // Redis away: keep trying; the record's compare-and-set still holds.
                    Err(_) => {}
                }
            }
        });
        Leased { token, renewal }
    }

    /// Stops renewing and gives the lease up, in the background (a guard is dropped in sync
    /// code; a lease that cannot be released lapses on its own).
    fn end(self, store: Arc<dyn StateStore>, scope: Scope) {
        self.renewal.abort();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let token = self.token;
            rt.spawn(async move {
                if let Err(e) = store.release(&scope, &token).await {
                    tracing::debug!(error = %e, "idempotency lease not released; it lapses");
                }
            });
        }
    }
}

/// Ownership of a claimed scope. Dropping it without `finish` releases the scope (waiters claim
/// again), so a failure or a panic never leaves a scope stuck "in flight".
pub struct ClaimGuard {
    claims: Claims,
    scope: Scope,
    running: Arc<Running>,
    finished: bool,
    lease: Option<Leased>,
}

impl ClaimGuard {
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Hands the recorded outcome to waiters and leaves the running map. Call it only once the
    /// record is in the store.
    pub fn finish(mut self, record: Record) {
        self.publish(Arc::new(record));
    }

    /// Releases the scope without an outcome (the client may retry with the same key).
    pub fn abandon(mut self) {
        self.release();
    }

    fn publish(&mut self, record: Arc<Record>) {
        self.leave();
        self.running
            .progress
            .send_replace(Progress::Finished(record));
        self.finished = true;
    }

    fn leave(&mut self) {
        let ours = &self.running;
        self.claims
            .running
            .remove_if(&self.scope, |_, current| Arc::ptr_eq(current, ours));
        if let Some(lease) = self.lease.take() {
            lease.end(self.claims.store.clone(), self.scope.clone());
        }
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
        let claims = Claims::new(Arc::new(state.clone()));
        let scope = Scope::new("o", "k", "turn-1");
        let wait = Duration::from_secs(5);
        let Claim::Owner(guard) = claims.claim(&scope, [1; 32], wait).await.unwrap() else {
            panic!("first claim owns the scope");
        };
        assert!(matches!(
            claims.claim(&scope, [2; 32], wait).await.unwrap(),
            Claim::ReusedRunning
        ));
        let twin = {
            let (claims, scope) = (claims.clone(), scope.clone());
            tokio::spawn(async move { claims.claim(&scope, [1; 32], wait).await })
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
            claims.claim(&other, [1; 32], wait).await.unwrap(),
            Claim::Owner(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_twin_still_running_after_the_wait_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let state = SqliteState::open_for_tests(dir.path(), 0);
        let claims = Claims::new(Arc::new(state.clone()));
        let scope = Scope::new("o", "k", "slow");
        let _owner = claims.claim(&scope, [1; 32], Duration::ZERO).await.unwrap();
        let c = claims.clone();
        let sc = scope.clone();
        let waiter =
            tokio::spawn(async move { c.claim(&sc, [1; 32], Duration::from_secs(5)).await });
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(matches!(waiter.await.unwrap().unwrap(), Claim::InUse));
    }

    #[tokio::test]
    async fn an_abandoned_claim_lets_a_waiter_own_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = SqliteState::open_for_tests(dir.path(), 0);
        let claims = Claims::new(Arc::new(state.clone()));
        let scope = Scope::new("o", "k", "k1");
        let wait = Duration::from_secs(5);
        let Claim::Owner(g) = claims.claim(&scope, [1; 32], wait).await.unwrap() else {
            panic!("owner");
        };
        let c = claims.clone();
        let sc = scope.clone();
        let waiter = tokio::spawn(async move { c.claim(&sc, [1; 32], wait).await });
        tokio::task::yield_now().await;
        drop(g);
        assert!(matches!(waiter.await.unwrap().unwrap(), Claim::Owner(_)));
    }
}
