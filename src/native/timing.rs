//! Per-turn phase timing, rendered as a W3C `Server-Timing` header value and as
//! `performance.server_elapsed_ms`.

use std::fmt::Write;
use std::time::{Duration, Instant};

use crate::otel::TurnTrace;

/// Phases recorded for one turn, in the order they ran.
#[derive(Debug, Clone)]
pub struct ServerTiming {
    started: Instant,
    phases: Vec<(&'static str, Duration)>,
    /// This turn's trace, only when traces are exported (`[telemetry] otlp_endpoint`); each
    /// recorded phase becomes one of its spans.
    trace: Option<Box<TurnTrace>>,
}

impl ServerTiming {
    /// Starts the clock; `started` is when the request reached the server.
    pub fn starting_at(started: Instant) -> Self {
        ServerTiming {
            started,
            phases: Vec::with_capacity(8),
            trace: TurnTrace::begin(),
        }
    }

    pub fn start() -> Self {
        Self::starting_at(Instant::now())
    }

    /// Adds `d` to phase `name` (phases that run twice are summed).
    pub fn record(&mut self, name: &'static str, d: Duration) {
        if let Some(t) = &self.trace {
            t.phase(name, d);
        }
        if let Some(p) = self.phases.iter_mut().find(|(n, _)| *n == name) {
            p.1 += d;
        } else {
            self.phases.push((name, d));
        }
    }

    /// Times `f` as phase `name`.
    pub fn measure<T>(&mut self, name: &'static str, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.record(name, t.elapsed());
        out
    }

    pub fn total(&self) -> Duration {
        self.started.elapsed()
    }

    /// `auth;dur=0.012, parse;dur=0.004, ..., total;dur=0.121` with `total` as given, so the header
    /// and `performance.server_elapsed_ms` carry the very same number.
    pub fn header_value(&self, total_ms: f64) -> String {
        let mut s = String::with_capacity(24 * (self.phases.len() + 1));
        for (name, d) in &self.phases {
            s.push_str(name);
            s.push_str(";dur=");
            push_ms(&mut s, d.as_secs_f64() * 1000.0);
            s.push_str(", ");
        }
        s.push_str("total;dur=");
        push_ms(&mut s, total_ms);
        s
    }

    /// The turn's trace, when traces are exported.
    pub fn trace(&self) -> Option<&TurnTrace> {
        self.trace.as_deref()
    }

    /// Takes the turn's trace out, so its root span ends when the turn does rather than when
    /// the last copy of this timing is dropped.
    pub fn take_trace(&mut self) -> Option<Box<TurnTrace>> {
        self.trace.take()
    }

    /// Records a log field of the turn (`org_id`, `action`, `mode`, `outcome`) on the
    /// current span, and on the trace's root when there is one.
    pub fn annotate(&self, field: &'static str, value: &str) {
        match &self.trace {
            None => {
                tracing::Span::current().record(field, value);
            }
            Some(t) => t.record(field, value),
        }
    }

    pub fn phase_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.phases.iter().map(|(n, _)| *n)
    }
}

/// `ms` with exactly three decimals (as `{:.3}` would write it), through integer formatting:
/// float formatting with a precision costs more than the rest of the header.
fn push_ms(s: &mut String, ms: f64) {
    // Saturating cast: a negative or NaN duration cannot happen, and would print 0.000.
    let us = (ms * 1000.0).round() as u64;
    let _ = write!(s, "{}.{:03}", us / 1000, us % 1000);
}

/// Milliseconds rounded to 3 decimals, as reported to clients.
pub fn round_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lists_phases_then_total() {
        let mut t = ServerTiming::start();
        t.record("auth", Duration::from_micros(12));
        t.record("exec", Duration::from_micros(81));
        t.record("exec", Duration::from_micros(19));
        assert_eq!(
            t.header_value(0.121),
            "auth;dur=0.012, exec;dur=0.100, total;dur=0.121"
        );
        assert_eq!(round_ms(Duration::from_nanos(1_234_567)), 1.235);
    }

    #[test]
    fn milliseconds_print_like_three_decimal_formatting() {
        for ms in [
            0.0,
            0.0004,
            0.0005,
            0.057,
            0.999_6,
            1.0,
            12.345,
            1234.5678,
            86_400_000.0,
        ] {
            let mut s = String::new();
            push_ms(&mut s, ms);
            assert_eq!(
                s,
                format!("{:.3}", (ms * 1000.0_f64).round() / 1000.0),
                "{ms}"
            );
        }
    }
}
