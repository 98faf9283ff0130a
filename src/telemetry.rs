//! Logs (tracing, text or JSON, filtered by `RUST_LOG`) and metrics: the Prometheus recorder and
//! every metric name the service exports, in one place so names stay consistent.
//!
//! Naming follows Prometheus conventions: `pilot_bridge_` prefix, base units (`_seconds`),
//! `_total` on counters, and no org, key or raw-path labels (routes are the matched templates).

use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::LogFormat;

/// Histogram buckets in seconds, from 50 µs to 2.5 s, so sub-millisecond work is visible.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    0.75, 1.0, 2.5,
];

pub mod names {
    pub const NATIVE_REQUESTS: &str = "pilot_bridge_native_requests_total";
    pub const NATIVE_SERVER_TIME: &str = "pilot_bridge_native_server_time_seconds";
    pub const HTTP_REQUESTS: &str = "pilot_bridge_http_requests_total";
    pub const HTTP_DURATION: &str = "pilot_bridge_http_request_duration_seconds";
    pub const IDEMPOTENCY_REPLAYS: &str = "pilot_bridge_idempotency_replays_total";
    pub const IDEMPOTENCY_CONFLICTS: &str = "pilot_bridge_idempotency_conflicts_total";
    pub const PENDING_ACTIONS: &str = "pilot_bridge_pending_actions";
    pub const CONFIRMATIONS: &str = "pilot_bridge_confirmations_total";
    pub const WS_CONNECTIONS: &str = "pilot_bridge_websocket_connections";
    pub const WS_FRAMES: &str = "pilot_bridge_websocket_frames_total";
    pub const RATE_LIMITED: &str = "pilot_bridge_rate_limited_requests_total";
    pub const BACKEND_TIME: &str = "pilot_bridge_backend_operation_duration_seconds";
    pub const AUDIT_WRITES: &str = "pilot_bridge_audit_writes_total";
    pub const UPSTREAM_REQUESTS: &str = "pilot_bridge_upstream_requests_total";
    pub const UPSTREAM_DURATION: &str = "pilot_bridge_upstream_request_duration_seconds";
    pub const UPSTREAM_BREAKER_OPEN: &str = "pilot_bridge_upstream_breaker_open";
    pub const REDIS_DURATION: &str = "pilot_bridge_redis_operation_duration_seconds";
    pub const REDIS_ERRORS: &str = "pilot_bridge_redis_errors_total";
}

/// Installs the global tracing subscriber. Logs go to stderr so stdout stays clean for the CLI's
/// machine-readable output (`keys create` prints only the key).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}

/// Installs the global Prometheus recorder (once per process) and returns its handle.
pub fn install_metrics() -> Option<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<PrometheusHandle>> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?
                .install_recorder()
                .ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    use names::*;
    describe_counter!(NATIVE_REQUESTS, "Native bridge turns by action, execution mode, transport and outcome (reply mode or error code).");
    describe_histogram!(
        NATIVE_SERVER_TIME,
        Unit::Seconds,
        "Server time of a native turn, from request arrival to reply, by action, execution mode and transport."
    );
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests by matched route, method and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request duration by matched route and method."
    );
    describe_counter!(
        IDEMPOTENCY_REPLAYS,
        "Writes answered from the idempotency store instead of executing again."
    );
    describe_counter!(
        IDEMPOTENCY_CONFLICTS,
        "Idempotency keys reused with another request or still in flight, by kind."
    );
    describe_gauge!(
        PENDING_ACTIONS,
        "Dangerous actions waiting for confirmation."
    );
    describe_counter!(CONFIRMATIONS, "Confirmation requests by result.");
    describe_gauge!(WS_CONNECTIONS, "Open WebSocket connections.");
    describe_counter!(WS_FRAMES, "WebSocket frames by direction and kind.");
    describe_counter!(
        RATE_LIMITED,
        "Requests refused by the per-org rate limit, by transport."
    );
    describe_histogram!(
        BACKEND_TIME,
        Unit::Seconds,
        "CRM backend operation time by operation and backend."
    );
    describe_counter!(AUDIT_WRITES, "Audit records written.");
    describe_counter!(
        UPSTREAM_REQUESTS,
        "Requests to the upstream CRM API by operation and outcome (upstream backend only)."
    );
    describe_histogram!(
        UPSTREAM_DURATION,
        Unit::Seconds,
        "Upstream CRM request duration by operation (upstream backend only)."
    );
    describe_gauge!(
        UPSTREAM_BREAKER_OPEN,
        "1 while the upstream circuit breaker is open or probing, else 0 (upstream backend only)."
    );
    describe_histogram!(
        REDIS_DURATION,
        Unit::Seconds,
        "Redis round trips of the shared state store by operation (state backend redis only)."
    );
    describe_counter!(
        REDIS_ERRORS,
        "Redis operations that failed or timed out, by operation (state backend redis only)."
    );
}

/// Records one native turn.
pub fn native_turn(
    action: &'static str,
    execution_mode: &'static str,
    transport: &'static str,
    outcome: &'static str,
    elapsed: Duration,
) {
    counter!(names::NATIVE_REQUESTS, "action" => action, "mode" => execution_mode, "transport" => transport, "outcome" => outcome).increment(1);
    histogram!(names::NATIVE_SERVER_TIME, "action" => action, "mode" => execution_mode, "transport" => transport)
        .record(elapsed.as_secs_f64());
}

pub fn http_request(route: &str, method: &str, status: u16, elapsed: Duration) {
    counter!(names::HTTP_REQUESTS, "route" => route.to_string(), "method" => method.to_string(), "status" => status.to_string()).increment(1);
    histogram!(names::HTTP_DURATION, "route" => route.to_string(), "method" => method.to_string())
        .record(elapsed.as_secs_f64());
}

pub fn idempotency_replay() {
    counter!(names::IDEMPOTENCY_REPLAYS).increment(1);
}

pub fn idempotency_conflict(kind: &'static str) {
    counter!(names::IDEMPOTENCY_CONFLICTS, "kind" => kind).increment(1);
}

pub fn pending_actions(n: usize) {
    gauge!(names::PENDING_ACTIONS).set(n as f64);
}

pub fn confirmation(result: &'static str) {
    counter!(names::CONFIRMATIONS, "result" => result).increment(1);
}

pub fn ws_connections(n: usize) {
    gauge!(names::WS_CONNECTIONS).set(n as f64);
}

pub fn ws_frame(direction: &'static str, kind: &'static str) {
    counter!(names::WS_FRAMES, "direction" => direction, "kind" => kind).increment(1);
}

pub fn rate_limited(transport: &'static str) {
    counter!(names::RATE_LIMITED, "transport" => transport).increment(1);
}

pub fn backend_operation(operation: &'static str, backend: &'static str, elapsed: Duration) {
    histogram!(names::BACKEND_TIME, "operation" => operation, "backend" => backend)
        .record(elapsed.as_secs_f64());
}

pub fn audit_write() {
    counter!(names::AUDIT_WRITES).increment(1);
}

pub fn upstream_request(operation: &'static str, outcome: &'static str, elapsed: Duration) {
    counter!(names::UPSTREAM_REQUESTS, "operation" => operation, "outcome" => outcome).increment(1);
    histogram!(names::UPSTREAM_DURATION, "operation" => operation).record(elapsed.as_secs_f64());
}

pub fn upstream_breaker_open(open: bool) {
    gauge!(names::UPSTREAM_BREAKER_OPEN).set(if open { 1.0 } else { 0.0 });
}

/// One Redis round trip of the shared state store (`operation` is a fixed name).
pub fn redis_operation(operation: &'static str, elapsed: Duration, ok: bool) {
    histogram!(names::REDIS_DURATION, "operation" => operation).record(elapsed.as_secs_f64());
    if !ok {
        counter!(names::REDIS_ERRORS, "operation" => operation).increment(1);
    }
}
