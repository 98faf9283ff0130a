//! Per-org request quota: a fixed one-minute window per org, counted in memory.
//!
//! A fixed window (rather than a token bucket such as `governor`'s GCRA) is what the contract's
//! headers describe: a limit, what is left of it, and the seconds until it resets.

use std::time::{Duration, Instant};

use dashmap::DashMap;

const WINDOW: Duration = Duration::from_secs(60);

/// The outcome of counting one request, with the values for the `X-RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    /// 0 = unlimited (no headers are sent).
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the window resets (at least 1 while limited).
    pub reset_secs: u64,
}

/// The 429 for a rejected request.
pub fn rate_limited(d: &RateDecision) -> crate::error::ApiError {
    crate::error::ApiError::new(crate::error::ErrorCode::RateLimited, "Rate limit exceeded")
        .with_details(format!(
            "limit is {} requests per minute; retry in {} s",
            d.limit, d.reset_secs
        ))
        .with_retry_after(d.reset_secs)
}

struct Window {
    started: Instant,
    used: u32,
}

pub struct RateLimiter {
    default_limit: u32,
    windows: DashMap<String, Window>,
}

impl RateLimiter {
    pub fn new(default_limit: u32) -> Self {
        RateLimiter {
            default_limit,
            windows: DashMap::new(),
        }
    }

    /// Counts one request for `org` against `org_limit` (or the default). Rejected requests do
    /// not consume quota.
    pub fn check(&self, org: &str, org_limit: Option<u32>) -> RateDecision {
        self.check_at(org, org_limit, Instant::now())
    }

    fn check_at(&self, org: &str, org_limit: Option<u32>, now: Instant) -> RateDecision {
        let limit = org_limit.unwrap_or(self.default_limit);
        if limit == 0 {
            return RateDecision {
                allowed: true,
                limit: 0,
                remaining: 0,
                reset_secs: 0,
            };
        }
        let mut w = match self.windows.get_mut(org) {
            Some(w) => w,
            None => self.windows.entry(org.to_string()).or_insert(Window {
                started: now,
                used: 0,
            }),
        };
        if now.duration_since(w.started) >= WINDOW {
            w.started = now;
            w.used = 0;
        }
        let elapsed = now.duration_since(w.started);
        let reset_secs = (WINDOW - elapsed).as_secs_f64().ceil().max(1.0) as u64;
        if w.used >= limit {
            return RateDecision {
                allowed: false,
                limit,
                remaining: 0,
                reset_secs,
            };
        }
        w.used += 1;
        RateDecision {
            allowed: true,
            limit,
            remaining: limit - w.used,
            reset_secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_resets_and_isolates_orgs() {
        let rl = RateLimiter::new(3);
        let t0 = Instant::now();
        let d: Vec<_> = (0..4).map(|_| rl.check_at("a", None, t0)).collect();
        assert_eq!(
            d.iter().map(|d| d.remaining).collect::<Vec<_>>(),
            vec![2, 1, 0, 0]
        );
        assert!(!d[3].allowed);
        assert_eq!(d[3].reset_secs, 60);
        assert!(rl.check_at("b", None, t0).allowed);
        let later = rl.check_at("a", None, t0 + Duration::from_secs(61));
        assert!(later.allowed);
        assert_eq!(later.remaining, 2);
    }

    #[test]
    fn per_org_limits_and_off() {
        let rl = RateLimiter::new(1);
        let t0 = Instant::now();
        assert!(rl.check_at("a", Some(0), t0).allowed);
        assert!(rl.check_at("a", Some(0), t0).allowed);
        assert!(rl.check_at("b", Some(2), t0).allowed);
        assert!(rl.check_at("b", Some(2), t0).allowed);
        assert!(!rl.check_at("b", Some(2), t0).allowed);
        let half = rl.check_at("b", Some(2), t0 + Duration::from_millis(30_500));
        assert_eq!(half.reset_secs, 30);
    }
}
