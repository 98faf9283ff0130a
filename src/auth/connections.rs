//! Caps on concurrent long-lived connections (WebSockets): per org, in total, and for
//! connections that have not authenticated yet. A granted slot is an RAII guard: dropping it
//! frees the slot. Also the per-address limit on failed WebSocket auth frames.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::error::{ApiError, ErrorCode};

pub struct ConnectionLimiter {
    per_org_max: usize,
    total_max: usize,
    unauthenticated_max: usize,
    total: AtomicUsize,
    unauthenticated: AtomicUsize,
    per_org: DashMap<String, usize>,
}

/// One open connection; counted until dropped.
pub struct ConnectionSlot {
    limiter: Arc<ConnectionLimiter>,
    org: Option<String>,
    /// Counted against the unauthenticated cap until an org is assigned.
    unauthenticated: bool,
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
        })
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
        })
    }

    /// Charges an already counted slot to `org`.
    pub fn assign(&self, slot: &mut ConnectionSlot, org: &str) -> Result<(), ApiError> {
        if slot.org.is_some() {
            return Ok(());
        }
        let mut n = self.per_org.entry(org.to_string()).or_insert(0);
        if *n >= self.per_org_max {
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                "Too many WebSocket connections for this organization",
            )
            .with_details(format!(
                "at most {} open WebSocket connections per organization",
                self.per_org_max
            ))
            .with_spoken("There are too many open connections for your workspace.")
            .with_retry_after(5));
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
}
