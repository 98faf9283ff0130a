//! The circuit breaker in front of the upstream: after enough consecutive failures it opens and
//! turns fail at once instead of waiting out timeouts; after a pause one probe request may try
//! again, and its outcome closes or re-opens the breaker.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is in flight since `since`; others are refused until it reports.
    HalfOpen {
        since: Instant,
    },
}

/// Breaker state shared by every upstream call of one route class (native turns, or the REST
/// pass-through) in the process.
#[derive(Debug)]
pub struct Breaker {
    /// The `class` label of its gauge: `turns` or `proxy`.
    class: &'static str,
    state: Mutex<State>,
    threshold: u32,
    open_for: Duration,
    /// A probe that never reports (its turn was cancelled) frees the half-open slot after this.
    probe_timeout: Duration,
}

/// Refused: the breaker is open for about this much longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub retry_in: Duration,
}

impl Breaker {
    pub fn new(
        class: &'static str,
        threshold: u32,
        open_for: Duration,
        probe_timeout: Duration,
    ) -> Self {
        crate::telemetry::upstream_breaker_open(class, false);
        Breaker {
            class,
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold: threshold.max(1),
            open_for,
            probe_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value, valid whatever a panicking holder was doing.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a request go out now?
    pub fn allow(&self) -> Result<(), Refused> {
        let now = Instant::now();
        let mut s = self.lock();
        match *s {
            State::Closed { .. } => Ok(()),
            State::Open { until } if now >= until => {
                *s = State::HalfOpen { since: now };
                Ok(())
            }
            State::Open { until } => Err(Refused {
                retry_in: until - now,
            }),
            State::HalfOpen { since } if now - since >= self.probe_timeout => {
                *s = State::HalfOpen { since: now };
                Ok(())
            }
            State::HalfOpen { .. } => Err(Refused {
                retry_in: self.open_for.min(Duration::from_secs(1)),
            }),
        }
    }

    /// The upstream answered (any status below 500).
    pub fn success(&self) {
        *self.lock() = State::Closed { failures: 0 };
        crate::telemetry::upstream_breaker_open(self.class, false);
    }

    /// The request ended without saying anything about the upstream (the turn's own budget ran
    /// out, or the gateway's pass-through timeout for slow requests fired): a closed breaker
    /// stays as it is, and a probe frees its slot at once so the next request may probe.
    pub fn inconclusive(&self) {
        let mut s = self.lock();
        if let State::HalfOpen { .. } = *s {
            *s = State::Open {
                until: Instant::now(),
            };
        }
    }

    /// The upstream failed: no connection, a timeout or a 5xx.
    pub fn failure(&self) {
        let now = Instant::now();
        let mut s = self.lock();
        let next = match *s {
            State::Closed { failures } if failures + 1 < self.threshold => State::Closed {
                failures: failures + 1,
            },
            State::Closed { .. } | State::HalfOpen { .. } => State::Open {
                until: now + self.open_for,
            },
            open @ State::Open { .. } => open,
        };
        let opened = matches!(next, State::Open { .. }) && !matches!(*s, State::Open { .. });
        *s = next;
        drop(s);
        if opened {
            tracing::warn!(
                class = self.class,
                open_ms = self.open_for.as_millis() as u64,
                "upstream circuit breaker opened"
            );
            crate::telemetry::upstream_breaker_open(self.class, true);
        }
    }

    pub fn is_open(&self) -> bool {
        !matches!(*self.lock(), State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new("turns", 3, Duration::from_secs(2), Duration::from_secs(1))
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_and_recovers_through_one_probe() {
        let b = breaker();
        b.failure();
        b.failure();
        assert!(b.allow().is_ok(), "two failures keep it closed");
        b.failure();
        let refused = b.allow().unwrap_err();
        assert!(refused.retry_in <= Duration::from_secs(2));
        assert!(b.is_open());

        tokio::time::advance(Duration::from_millis(2_001)).await;
        assert!(b.allow().is_ok(), "one probe after the pause");
        assert!(b.allow().is_err(), "only one probe at a time");
        b.success();
        assert!(!b.is_open());
        assert!(b.allow().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_and_a_lost_probe_frees_its_slot() {
        let b = breaker();
        for _ in 0..3 {
            b.failure();
        }
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(b.allow().is_ok());
        b.failure();
        assert!(b.allow().is_err(), "failed probe re-opens");

        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(b.allow().is_ok(), "probe goes out, then never reports");
        tokio::time::advance(Duration::from_millis(1_001)).await;
        assert!(
            b.allow().is_ok(),
            "a new probe may go after the probe timeout"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn inconclusive_outcomes_neither_open_nor_hold_the_probe() {
        let b = breaker();
        for _ in 0..10 {
            b.inconclusive();
        }
        assert!(!b.is_open(), "budget exhaustion never opens it");
        for _ in 0..3 {
            b.failure();
        }
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(b.allow().is_ok(), "the probe goes out");
        assert!(b.allow().is_err());
        b.inconclusive();
        assert!(b.allow().is_ok(), "its slot is free again at once");
        b.success();
        assert!(!b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_failure_count() {
        let b = breaker();
        b.failure();
        b.failure();
        b.success();
        b.failure();
        b.failure();
        assert!(b.allow().is_ok());
    }
}
