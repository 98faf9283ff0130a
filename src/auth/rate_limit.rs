//! Per-org request quota: a fixed one-minute window per org, counted in memory, or — with the
//! Redis state backend — in Redis, so that replicas share one window and 60/min means 60 in all.
//!
//! A fixed window (rather than a token bucket such as `governor`'s GCRA) is what the contract's
//! headers describe: a limit, what is left of it, and the seconds until it resets. Shared windows
//! are wall-clock minutes, the same on every replica.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::state::redis::{rate_key, RedisLink};

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

/// Counts one request in the org's current minute unless the limit is reached; returns
/// {allowed 0/1, used}.
static SHARED_WINDOW: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used >= tonumber(ARGV[1]) then return {0, used} end
used = redis.call('INCR', KEYS[1])
if used == 1 then redis.call('PEXPIRE', KEYS[1], 61000) end
return {1, used}
",
    )
});

pub struct RateLimiter {
    default_limit: u32,
    windows: DashMap<String, Window>,
    /// Where replicas share their windows (state backend redis).
    shared: Option<RedisLink>,
}

impl RateLimiter {
    pub fn new(default_limit: u32) -> Self {
        RateLimiter {
            default_limit,
            windows: DashMap::new(),
            shared: None,
        }
    }

    /// A limiter whose windows live in Redis, shared by every replica using it.
    pub fn shared(default_limit: u32, link: RedisLink) -> Self {
        RateLimiter {
            shared: Some(link),
            ..RateLimiter::new(default_limit)
        }
    }

    /// Counts one request for `org` in the shared window when there is one. If Redis does not
    /// answer, this replica's own window decides (so reads keep their quota while writes fail
    /// closed on the state store).
    pub async fn check_shared(&self, org: &str, org_limit: Option<u32>) -> RateDecision {
        let Some(link) = &self.shared else {
            return self.check(org, org_limit);
        };
        let limit = org_limit.unwrap_or(self.default_limit);
        if limit == 0 {
            return self.check(org, Some(0));
        }
        let now = chrono::Utc::now().timestamp();
        let minute = now.div_euclid(60);
        let reset_secs = u64::try_from(60 - now.rem_euclid(60)).unwrap_or(60).max(1);
        let key = rate_key(org, minute);
        let counted: crate::error::ApiResult<(i64, i64)> = link
            .call("rate_limit", |mut c| async move {
                SHARED_WINDOW.key(key).arg(limit).invoke_async(&mut c).await
            })
            .await;
        match counted {
            Ok((allowed, used)) => RateDecision {
                allowed: allowed == 1,
                limit,
                remaining: limit.saturating_sub(u32::try_from(used).unwrap_or(u32::MAX)),
                reset_secs,
            },
            Err(_) => self.check(org, org_limit),
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
