//! Caps on concurrent long-lived connections (WebSockets), per org and in total. A granted slot
//! is an RAII guard: dropping it frees the slot.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::error::{ApiError, ErrorCode};

pub struct ConnectionLimiter {
    per_org_max: usize,
    total_max: usize,
    total: AtomicUsize,
    per_org: DashMap<String, usize>,
}

/// One open connection; counted until dropped.
pub struct ConnectionSlot {
    limiter: Arc<ConnectionLimiter>,
    org: Option<String>,
}

impl ConnectionLimiter {
    pub fn new(per_org_max: usize, total_max: usize) -> Arc<Self> {
        Arc::new(ConnectionLimiter {
            per_org_max,
            total_max,
            total: AtomicUsize::new(0),
            per_org: DashMap::new(),
        })
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
        Ok(())
    }

    /// Open connections in total.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.limiter.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(org) = &self.org {
            if let Some(mut n) = self.limiter.per_org.get_mut(org) {
                *n = n.saturating_sub(1);
            }
            self.limiter.per_org.remove_if(org, |_, n| *n == 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_org_and_total_and_frees_on_drop() {
        let l = ConnectionLimiter::new(1, 2);
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
