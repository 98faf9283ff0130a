//! Caps on concurrent long-lived connections (WebSockets): per org, in total, and for
//! connections that have not authenticated yet. A granted slot is an RAII guard: dropping it
//! frees the slot. Also the per-address limit on failed WebSocket auth frames.
//!
//! With the Redis state store the per-org cap holds across replicas, best effort
//! ([`SharedConnections`]): each authenticated connection is a member of its org's sorted set
//! in Redis, scored by a lease this process renews while the connection is open. Closing
//! removes it; a crashed replica's members age out when their lease lapses. While Redis does
//! not answer, each replica enforces the cap on its own connections only.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::LazyLock;

use dashmap::DashMap;
use redis::Script;

use crate::error::{ApiError, ErrorCode};
use crate::state::redis::RedisLink;

pub struct ConnectionLimiter {
    per_org_max: usize,
    total_max: usize,
    unauthenticated_max: usize,
    total: AtomicUsize,
    unauthenticated: AtomicUsize,
    per_org: DashMap<String, usize>,
    /// The per-org counts shared by replicas, when the state is in Redis.
    shared: Option<SharedConnections>,
}

/// One open connection; counted until dropped.
pub struct ConnectionSlot {
    limiter: Arc<ConnectionLimiter>,
    org: Option<String>,
    /// Counted against the unauthenticated cap until an org is assigned.
    unauthenticated: bool,
    /// Its member id in the org's shared set, when it was counted there.
    shared_id: Option<String>,
}

impl ConnectionLimiter {
    pub fn new(per_org_max: usize, total_max: usize, unauthenticated_max: usize) -> Arc<Self> {
        Arc::new(ConnectionLimiter {
            per_org_max,
            total_max,
            unauthenticated_max,
            total: AtomicUsize::new(0),
            unauthenticated: AtomicUsize::new(0),
            per_org: DashMap::new(),
            shared: None,
        })
    }

    /// Like [`new`](Self::new), with the per-org cap counted across the replicas sharing
    /// `link`. Starts the lease renewal on the current runtime (when there is one); it ends
    /// with the limiter.
    pub fn shared(
        per_org_max: usize,
        total_max: usize,
        unauthenticated_max: usize,
        link: RedisLink,
    ) -> Arc<Self> {
        Self::shared_with_lease(per_org_max, total_max, unauthenticated_max, link, LEASE)
    }

    fn shared_with_lease(
        per_org_max: usize,
        total_max: usize,
        unauthenticated_max: usize,
        link: RedisLink,
        lease: Duration,
    ) -> Arc<Self> {
        let limiter = Arc::new(ConnectionLimiter {
            per_org_max,
            total_max,
            unauthenticated_max,
            total: AtomicUsize::new(0),
            unauthenticated: AtomicUsize::new(0),
            per_org: DashMap::new(),
            shared: Some(SharedConnections {
                link,
                open: Arc::new(DashMap::new()),
                lease_ms: i64::try_from(lease.as_millis()).unwrap_or(i64::MAX),
            }),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(renew_leases(Arc::downgrade(&limiter), lease / 3));
        }
        limiter
    }

    /// Charges a counted slot to `org`: against this process's count, and with replicas
    /// against the count they share. If Redis does not answer, the local cap alone applies.
    pub async fn admit(&self, slot: &mut ConnectionSlot, org: &str) -> Result<(), ApiError> {
        if slot.org.is_some() {
            return Ok(());
        }
        let Some(shared) = &self.shared else {
            return self.assign(slot, org);
        };
        let id = crate::ids::new_id();
        match shared.join(org, &id, self.per_org_max).await {
            Ok(true) => {}
            Ok(false) => return Err(self.org_full()),
            Err(e) => {
                tracing::warn!(error = %e, "shared connection count unavailable; local cap only");
                return self.assign(slot, org);
            }
        }
        shared.open.insert(id.clone(), org.to_string());
        slot.shared_id = Some(id);
        if let Err(e) = self.assign(slot, org) {
            if let Some(id) = slot.shared_id.take() {
                shared.leave(org, id);
            }
            return Err(e);
        }
        Ok(())
    }

    fn org_full(&self) -> ApiError {
        ApiError::new(
            ErrorCode::RateLimited,
            "Too many WebSocket connections for this organization",
        )
        .with_details(format!(
            "at most {} open WebSocket connections per organization",
            self.per_org_max
        ))
        .with_spoken("There are too many open connections for your workspace.")
        .with_retry_after(5)
    }

    /// Takes a slot for a connection that will authenticate after the upgrade: it counts in the
    /// total and against the unauthenticated cap until [`ConnectionLimiter::assign`] charges it
    /// to an org.
    pub fn acquire_unauthenticated(self: &Arc<Self>) -> Result<ConnectionSlot, ApiError> {
        let prev = self.unauthenticated.fetch_add(1, Ordering::AcqRel);
        if prev >= self.unauthenticated_max {
            self.unauthenticated.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::new(
                ErrorCode::ServiceUnavailable,
                "Too many unauthenticated WebSocket connections",
            )
            .with_details(format!(
                "the server allows {} WebSocket connections that have not authenticated yet; send the key in the Authorization header",
                self.unauthenticated_max
            ))
            .with_spoken("The service is busy right now. Please try again shortly.")
            .with_retry_after(5));
        }
        match self.acquire_total() {
            Ok(mut slot) => {
                slot.unauthenticated = true;
                Ok(slot)
            }
            Err(e) => {
                self.unauthenticated.fetch_sub(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }

    /// Takes a slot in the total budget (before the caller's org is known).
    pub fn acquire_total(self: &Arc<Self>) -> Result<ConnectionSlot, ApiError> {
        let prev = self.total.fetch_add(1, Ordering::AcqRel);
        if prev >= self.total_max {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::new(
                ErrorCode::ServiceUnavailable,
                "Too many open WebSocket connections",
            )
            .with_details(format!(
                "the server allows {} WebSocket connections",
                self.total_max
            ))
            .with_spoken("The service is busy right now. Please try again shortly.")
            .with_retry_after(5));
        }
        Ok(ConnectionSlot {
            limiter: self.clone(),
            org: None,
            unauthenticated: false,
            shared_id: None,
        })
    }

    /// Charges an already counted slot to `org`.
    pub fn assign(&self, slot: &mut ConnectionSlot, org: &str) -> Result<(), ApiError> {
        if slot.org.is_some() {
            return Ok(());
        }
        let mut n = self.per_org.entry(org.to_string()).or_insert(0);
        if *n >= self.per_org_max {
            return Err(self.org_full());
        }
        *n += 1;
        slot.org = Some(org.to_string());
        if std::mem::take(&mut slot.unauthenticated) {
            self.unauthenticated.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Open connections in total.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Open connections that have not authenticated yet.
    pub fn unauthenticated(&self) -> usize {
        self.unauthenticated.load(Ordering::Acquire)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.limiter.total.fetch_sub(1, Ordering::AcqRel);
        if self.unauthenticated {
            self.limiter.unauthenticated.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(org) = &self.org {
            if let Some(mut n) = self.limiter.per_org.get_mut(org) {
                *n = n.saturating_sub(1);
            }
            self.limiter.per_org.remove_if(org, |_, n| *n == 0);
            if let (Some(shared), Some(id)) = (&self.limiter.shared, self.shared_id.take()) {
                shared.leave(org, id);
            }
        }
    }
}

/// How long a connection counts in its org's shared set without being renewed: a replica that
/// crashed stops renewing, and its connections stop counting after this. Each process renews
/// the leases of its open connections three times per lease.
const LEASE: Duration = Duration::from_secs(30);

/// Per-org connection counts in Redis: `pb:{org}:ws`, a sorted set of connection ids scored
/// by lease expiry (unix ms).
struct SharedConnections {
    link: RedisLink,
    /// This process's counted connections: id → org, for renewal.
    open: Arc<DashMap<String, String>>,
    lease_ms: i64,
}

fn shared_key(org: &str) -> String {
    format!("pb:{{{org}}}:ws")
}

/// Drops lapsed members, then adds ARGV[3] with expiry ARGV[2] unless ARGV[4] members are
/// live already; 1 when added.
static JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
",
    )
});

impl SharedConnections {
    async fn join(&self, org: &str, id: &str, max: usize) -> crate::error::ApiResult<bool> {
        let (key, id) = (shared_key(org), id.to_string());
        let now = crate::state::now_ms();
        let added: i64 = self
            .link
            .call("ws_join", |mut c| async move {
                JOIN.key(key)
                    .arg(now)
                    .arg(now.saturating_add(self.lease_ms))
                    .arg(id)
                    .arg(max)
                    .arg(self.lease_ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(added == 1)
    }

    /// Frees a connection's place, in the background (called from `Drop`). If Redis does not
    /// answer, the member lapses with its lease.
    fn leave(&self, org: &str, id: String) {
        self.open.remove(&id);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (link, key) = (self.link.clone(), shared_key(org));
        rt.spawn(async move {
            let _ = link
                .call("ws_leave", |mut c| async move {
                    redis::cmd("ZREM")
                        .arg(key)
                        .arg(id)
                        .query_async::<i64>(&mut c)
                        .await
                })
                .await;
        });
    }
}

/// Renews the leases of this process's open connections every `every`, in one pipeline,
/// until the limiter is gone. `ZADD XX` renews only members still present.
async fn renew_leases(limiter: std::sync::Weak<ConnectionLimiter>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(limiter) = limiter.upgrade() else {
            return;
        };
        let Some(shared) = &limiter.shared else {
            return;
        };
        let open: Vec<(String, String)> = shared
            .open
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        if open.is_empty() {
            continue;
        }
        let lease_ms = shared.lease_ms;
        let expiry = crate::state::now_ms().saturating_add(lease_ms);
        let renewed = shared
            .link
            .call("ws_renew", |mut c| async move {
                let mut p = redis::pipe();
                for (id, org) in &open {
                    let key = shared_key(org);
                    p.cmd("ZADD")
                        .arg(&key)
                        .arg("XX")
                        .arg(expiry)
                        .arg(id)
                        .ignore();
                    p.cmd("PEXPIRE").arg(&key).arg(lease_ms).ignore();
                }
                p.query_async::<()>(&mut c).await
            })
            .await;
        if let Err(e) = renewed {
            tracing::debug!(error = %e, "connection leases not renewed");
        }
    }
}

/// Counts failed WebSocket auth frames per source address in a fixed one-minute window, so a
/// client cannot try keys at the speed of its socket.
pub struct AuthFailureLimiter {
    per_minute: u32,
    windows: DashMap<IpAddr, (Instant, u32)>,
}

const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked before stale windows are swept; bounds the map under a scan.
const AUTH_FAILURE_SWEEP_AT: usize = 10_000;

impl AuthFailureLimiter {
    pub fn new(per_minute: u32) -> Self {
        AuthFailureLimiter {
            per_minute,
            windows: DashMap::new(),
        }
    }

    /// `Err` with the seconds until the window resets when `addr` used up its failures.
    pub fn check(&self, addr: IpAddr) -> Result<(), u64> {
        self.check_at(addr, Instant::now())
    }

    fn check_at(&self, addr: IpAddr, now: Instant) -> Result<(), u64> {
        match self.windows.get(&addr) {
            Some(w) if now.duration_since(w.0) < AUTH_FAILURE_WINDOW && w.1 >= self.per_minute => {
                let left = AUTH_FAILURE_WINDOW - now.duration_since(w.0);
                Err(left.as_secs().max(1))
            }
            _ => Ok(()),
        }
    }

    /// Counts one failed auth frame from `addr`.
    pub fn record_failure(&self, addr: IpAddr) {
        self.record_failure_at(addr, Instant::now())
    }

    fn record_failure_at(&self, addr: IpAddr, now: Instant) {
        if self.windows.len() >= AUTH_FAILURE_SWEEP_AT {
            self.windows
                .retain(|_, w| now.duration_since(w.0) < AUTH_FAILURE_WINDOW);
        }
        let mut w = self.windows.entry(addr).or_insert((now, 0));
        if now.duration_since(w.0) >= AUTH_FAILURE_WINDOW {
            *w = (now, 0);
        }
        w.1 = w.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthenticated_connections_have_their_own_cap() {
        let l = ConnectionLimiter::new(10, 10, 1);
        let mut a = l.acquire_unauthenticated().unwrap();
        assert_eq!(
            l.acquire_unauthenticated().err().map(|e| e.code),
            Some(ErrorCode::ServiceUnavailable)
        );
        // Header-authenticated connections are not affected.
        let b = l.acquire_total().unwrap();
        assert_eq!(l.unauthenticated(), 1);
        l.assign(&mut a, "o").unwrap();
        assert_eq!(l.unauthenticated(), 0);
        let c = l.acquire_unauthenticated().unwrap();
        assert_eq!(l.open(), 3);
        drop((a, b, c));
        assert_eq!((l.open(), l.unauthenticated()), (0, 0));
    }

    #[test]
    fn failed_auth_frames_are_limited_per_address_and_window() {
        let l = AuthFailureLimiter::new(2);
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let t0 = Instant::now();
        assert!(l.check_at(a, t0).is_ok());
        l.record_failure_at(a, t0);
        l.record_failure_at(a, t0);
        assert_eq!(l.check_at(a, t0 + Duration::from_secs(50)), Err(10));
        assert!(l.check_at(b, t0).is_ok());
        assert!(l.check_at(a, t0 + AUTH_FAILURE_WINDOW).is_ok());
        l.record_failure_at(a, t0 + AUTH_FAILURE_WINDOW);
        assert!(l.check_at(a, t0 + AUTH_FAILURE_WINDOW).is_ok());
    }

    #[test]
    fn caps_per_org_and_total_and_frees_on_drop() {
        let l = ConnectionLimiter::new(1, 2, 2);
        let mut a = l.acquire_total().unwrap();
        l.assign(&mut a, "o").unwrap();
        let mut b = l.acquire_total().unwrap();
        assert_eq!(
            l.assign(&mut b, "o").unwrap_err().code,
            ErrorCode::RateLimited
        );
        assert_eq!(
            l.acquire_total().err().map(|e| e.code),
            Some(ErrorCode::ServiceUnavailable)
        );
        drop(a);
        l.assign(&mut b, "o").unwrap();
        drop(b);
        assert_eq!(l.open(), 0);
        assert!(l.per_org.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_per_org_cap_is_shared_by_replicas_and_lapses_with_a_dead_one() {
        use crate::state::redis::test_server::TestRedis;
        let Some(redis) = TestRedis::start() else {
            return;
        };
        let replica = |lease: Duration| {
            let link = RedisLink::connect(&redis.url(), Duration::from_secs(2)).unwrap();
            ConnectionLimiter::shared_with_lease(2, 100, 100, link, lease)
        };
        let (a, b) = (replica(LEASE), replica(LEASE));
        let mut a1 = a.acquire_total().unwrap();
        a.admit(&mut a1, "o").await.unwrap();
        let mut b1 = b.acquire_total().unwrap();
        b.admit(&mut b1, "o").await.unwrap();
        // B has one socket of org "o" itself, but the org has two over both replicas.
        let mut b2 = b.acquire_total().unwrap();
        let e = b.admit(&mut b2, "o").await.unwrap_err();
        assert_eq!((e.code, e.status()), (ErrorCode::RateLimited, 429));
        assert_eq!(e.retry_after, Some(5));
        assert!(!e.spoken_summary.is_empty());
        // Another org is counted on its own.
        let mut other = b.acquire_total().unwrap();
        b.admit(&mut other, "o2").await.unwrap();
        // Closing on A frees the place for B (the release runs in the background).
        drop(a1);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while b.admit(&mut b2, "o").await.is_err() {
            assert!(std::time::Instant::now() < deadline, "slot not freed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop((b1, b2, other));

        // A replica that dies without closing: its sockets stop counting once their lease
        // lapses (here 300 ms).
        let c = replica(Duration::from_millis(300));
        let mut c1 = c.acquire_total().unwrap();
        c.admit(&mut c1, "o3").await.unwrap();
        let mut c2 = c.acquire_total().unwrap();
        c.admit(&mut c2, "o3").await.unwrap();
        // Dead: it neither closes its sockets nor renews their leases.
        std::mem::forget((c1, c2));
        if let Some(shared) = &c.shared {
            shared.open.clear();
        }
        let mut d1 = b.acquire_total().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while b.admit(&mut d1, "o3").await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "lapsed leases still count"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn without_redis_each_replica_applies_the_cap_alone() {
        // Nothing listens on port 1: every Redis call fails at once.
        let link = RedisLink::connect("redis://127.0.0.1:1/0", Duration::from_millis(200)).unwrap();
        let l = ConnectionLimiter::shared(1, 10, 10, link);
        let mut a = l.acquire_total().unwrap();
        l.admit(&mut a, "o").await.unwrap();
        let mut b = l.acquire_total().unwrap();
        assert_eq!(
            l.admit(&mut b, "o").await.unwrap_err().code,
            ErrorCode::RateLimited
        );
    }
}
