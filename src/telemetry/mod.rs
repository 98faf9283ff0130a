//! Logs (tracing, text or JSON, filtered by `RUST_LOG`) and metrics: the Prometheus recorder and
//! every metric name the service exports, in one place so names stay consistent.
//!
//! Naming follows Prometheus conventions: `pilot_bridge_` prefix, base units (`_seconds`),
//! `_total` on counters, and no org, key or raw-path labels (routes are the matched templates).

use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::{LogFormat, TelemetryConfig};

mod series;

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
    pub const WS_CLOSES: &str = "pilot_bridge_websocket_closes_total";
    pub const WS_AUTH_FAILURES: &str = "pilot_bridge_websocket_auth_failures_total";
    pub const WS_CANCELS: &str = "pilot_bridge_websocket_cancels_total";
    pub const EVENTS_PUBLISHED: &str = "pilot_bridge_events_published_total";
    pub const EVENTS_DELIVERED: &str = "pilot_bridge_events_delivered_total";
    pub const EVENTS_SKIPPED: &str = "pilot_bridge_events_skipped_total";
    pub const RATE_LIMITED: &str = "pilot_bridge_rate_limited_requests_total";
    pub const BACKEND_TIME: &str = "pilot_bridge_backend_operation_duration_seconds";
    pub const AUDIT_WRITES: &str = "pilot_bridge_audit_writes_total";
    pub const UPSTREAM_REQUESTS: &str = "pilot_bridge_upstream_requests_total";
    pub const UPSTREAM_DURATION: &str = "pilot_bridge_upstream_request_duration_seconds";
    pub const UPSTREAM_BREAKER_OPEN: &str = "pilot_bridge_upstream_breaker_open";
    pub const DB_BYTES: &str = "pilot_bridge_db_bytes";
    pub const DB_WAL_BYTES: &str = "pilot_bridge_db_wal_bytes";
    pub const DB_CHECKPOINTS: &str = "pilot_bridge_db_checkpoints_total";
    pub const DB_CHECKPOINT_DURATION: &str = "pilot_bridge_db_checkpoint_duration_seconds";
    pub const WEBHOOK_DELIVERIES: &str = "pilot_bridge_webhook_deliveries_total";
    pub const WEBHOOK_DELIVERY_DURATION: &str = "pilot_bridge_webhook_delivery_duration_seconds";
    pub const WEBHOOK_QUEUE_DEPTH: &str = "pilot_bridge_webhook_queue_depth";
    pub const REDIS_DURATION: &str = "pilot_bridge_redis_operation_duration_seconds";
    pub const REDIS_ERRORS: &str = "pilot_bridge_redis_errors_total";
    pub const EVENTS_RELAYED: &str = "pilot_bridge_events_relayed_total";
    pub const CHAT_MESSAGES: &str = "pilot_bridge_chat_messages_total";
    pub const CHAT_TOOL_CALLS: &str = "pilot_bridge_chat_tool_calls_total";
}

/// Buckets of webhook delivery attempts, which wait on someone else's server for up to the
/// 15 s timeout.
pub const WEBHOOK_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0,
];

/// Installs the global tracing subscriber. Logs go to stderr so stdout stays clean for the CLI's
/// machine-readable output (`keys create` prints only the key). With `[telemetry]
/// otlp_endpoint` set, turn traces are exported too (see `otel`); the returned exporter is to
/// be shut down last, so it sends what is still queued. `rt` runs the exporter's requests.
pub fn init_tracing(
    format: LogFormat,
    telemetry: &TelemetryConfig,
    rt: &tokio::runtime::Handle,
) -> anyhow::Result<Option<crate::otel::Exporter>> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Turn spans are for the trace exporter alone: never in log lines, and with no exporter
    // no layer wants them, so making one costs nothing.
    if let Ok(off) = format!("{}=off", crate::otel::TARGET).parse() {
        filter = filter.add_directive(off);
    }
    let (traces, exporter) = match telemetry.traces_url()? {
        Some(url) => {
            let (layer, exporter) = crate::otel::start(&url, &telemetry.service_name, rt.clone())?;
            (Some(layer), Some(exporter))
        }
        None => (None, None),
    };
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let registry = tracing_subscriber::registry().with(traces);
    let _ = match format {
        LogFormat::Text => registry.with(logs.with_filter(filter)).try_init(),
        LogFormat::Json => registry
            .with(
                logs.json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_filter(filter),
            )
            .try_init(),
    };
    Ok(exporter)
}

/// Installs the global Prometheus recorder (once per process) and returns its handle.
pub fn install_metrics() -> Option<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<PrometheusHandle>> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?
                // Full-name matchers take precedence over suffix ones.
                .set_buckets_for_metric(
                    Matcher::Full(names::WEBHOOK_DELIVERY_DURATION.into()),
                    WEBHOOK_BUCKETS,
                )
                .ok()?
                .install_recorder()
                .ok()?;
            describe();
            series::enable();
            spawn_upkeep(handle.clone());
            Some(handle)
        })
        .clone()
}

/// How often histogram samples are folded into their buckets between scrapes.
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// The recorder keeps every histogram sample until something drains it: a scrape, or this
/// upkeep. Without it, an instance nobody scrapes grew by every sample it took (about 5 MiB a
/// minute at 2,000 turns/s in the soak bench). A thread rather than a task, because the
/// recorder outlives any one runtime.
fn spawn_upkeep(handle: PrometheusHandle) {
    let started = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(METRICS_UPKEEP);
            handle.run_upkeep();
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histograms drain only when scraped");
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    use names::*;
    describe_counter!(
        WS_CANCELS,
        "WebSocket cancel frames by outcome (not_started, committed, unknown)."
    );
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
        WS_CLOSES,
        "WebSocket sessions ended, by close code sent or echoed and reason."
    );
    describe_counter!(
        WS_AUTH_FAILURES,
        "Failed WebSocket auth frames by outcome (refused: checked and wrong; limited: not checked)."
    );
    describe_counter!(
        EVENTS_PUBLISHED,
        "Live events published to this replica's subscribers, by event type."
    );
    describe_counter!(
        EVENTS_DELIVERED,
        "Live events handed to WebSocket sessions (one per subscribed session), by event type."
    );
    describe_counter!(
        EVENTS_SKIPPED,
        "Live events a slow WebSocket session skipped because its buffer was full."
    );
    describe_counter!(
        CHAT_MESSAGES,
        "POST /api/v1/chat messages answered, by provider."
    );
    describe_counter!(
        CHAT_TOOL_CALLS,
        "Tool calls run for chat messages, by provider."
    );
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
        DB_BYTES,
        Unit::Bytes,
        "Size of the SQLite database file (embedded store)."
    );
    describe_gauge!(
        DB_WAL_BYTES,
        Unit::Bytes,
        "Size of the SQLite write-ahead log file; restarted under load at storage.wal_reset_bytes, truncated to 0 when quiet."
    );
    describe_counter!(
        DB_CHECKPOINTS,
        "WAL checkpoints by mode (passive, restart, truncate) and result (ok, busy, error)."
    );
    describe_histogram!(
        DB_CHECKPOINT_DURATION,
        Unit::Seconds,
        "WAL checkpoint duration by mode; restart and truncate hold the writer for their duration."
    );
    describe_gauge!(
        UPSTREAM_BREAKER_OPEN,
        "1 while the upstream circuit breaker of a route class (turns, proxy) is open or probing, else 0 (upstream backend only)."
    );
    describe_counter!(
        WEBHOOK_DELIVERIES,
        "Webhook delivery attempts by outcome (succeeded, http_error, gone, timeout, network_error, refused, invalid)."
    );
    describe_histogram!(
        WEBHOOK_DELIVERY_DURATION,
        Unit::Seconds,
        "Duration of one webhook delivery attempt, until the receiver's status line or the error."
    );
    describe_gauge!(
        WEBHOOK_QUEUE_DEPTH,
        "Webhook deliveries waiting to be sent or retried."
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
    describe_counter!(
        EVENTS_RELAYED,
        "Live events relayed between replicas over Redis pub/sub, by outcome (state backend redis only)."
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
    let Some(hot) = series::hot() else {
        return;
    };
    hot.native_requests
        .get((action, execution_mode, transport, outcome), |&(a, m, t, o)| {
            counter!(names::NATIVE_REQUESTS, "action" => a, "mode" => m, "transport" => t, "outcome" => o)
        })
        .increment(1);
    hot.native_time
        .get((action, execution_mode, transport), |&(a, m, t)| {
            histogram!(names::NATIVE_SERVER_TIME, "action" => a, "mode" => m, "transport" => t)
        })
        .record(elapsed.as_secs_f64());
}

/// Records one HTTP request. Every label value comes from a fixed set, whatever the client
/// sends: `route` is a template of the router (or `unmatched`), `method` one of the nine
/// standard methods (or `other`), `status` a code the service answers with (or its class).
pub fn http_request(route: &str, method: &axum::http::Method, status: u16, elapsed: Duration) {
    let Some(hot) = series::hot() else {
        return;
    };
    let route = hot.route_label(route);
    let method = method_label(method);
    hot.http_requests
        .get(
            (route, method, status_label(status)),
            |&(r, m, s)| counter!(names::HTTP_REQUESTS, "route" => r, "method" => m, "status" => s),
        )
        .increment(1);
    hot.http_duration
        .get(
            (route, method),
            |&(r, m)| histogram!(names::HTTP_DURATION, "route" => r, "method" => m),
        )
        .record(elapsed.as_secs_f64());
}

/// A standard method's name, else `other` (methods are free-form tokens a client chooses).
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method as M;
    match *method {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::PATCH => "PATCH",
        M::DELETE => "DELETE",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        M::CONNECT => "CONNECT",
        M::TRACE => "TRACE",
        _ => "other",
    }
}

/// The status code for the codes this service answers with, else its class (`2xx` … `5xx`,
/// `other` outside 100–599).
pub fn status_label(status: u16) -> &'static str {
    let known = match status {
        101 => "101",
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        402 => "402",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        409 => "409",
        410 => "410",
        413 => "413",
        415 => "415",
        422 => "422",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => "",
    };
    if !known.is_empty() {
        return known;
    }
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "other",
    }
}

pub fn idempotency_replay() {
    counter!(names::IDEMPOTENCY_REPLAYS).increment(1);
}

/// Open (unexpired, unsettled) pending actions, as last counted by the state maintenance task.
pub fn pending_actions(n: usize) {
    gauge!(names::PENDING_ACTIONS).set(n as f64);
}

pub fn idempotency_conflict(kind: &'static str) {
    counter!(names::IDEMPOTENCY_CONFLICTS, "kind" => kind).increment(1);
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

/// A WebSocket session ended; `code` is the close code sent (or echoed), `reason` a fixed token.
pub fn ws_close(code: &'static str, reason: &'static str) {
    counter!(names::WS_CLOSES, "code" => code, "reason" => reason).increment(1);
}

/// A failed WebSocket auth frame; `outcome` is `refused` (checked and wrong) or `limited`
/// (not checked: too many failures from the connection or address).
pub fn ws_auth_failure(outcome: &'static str) {
    counter!(names::WS_AUTH_FAILURES, "outcome" => outcome).increment(1);
}

/// A WebSocket cancel frame was answered with `outcome`.
pub fn ws_cancel(outcome: &'static str) {
    counter!(names::WS_CANCELS, "outcome" => outcome).increment(1);
}

/// An event was published and handed to `subscribers` sessions.
pub fn event_published(event: &'static str, subscribers: usize) {
    counter!(names::EVENTS_PUBLISHED, "event" => event).increment(1);
    counter!(names::EVENTS_DELIVERED, "event" => event).increment(subscribers as u64);
}

/// Events a slow session skipped because its buffer overflowed.
pub fn events_skipped(n: u64) {
    counter!(names::EVENTS_SKIPPED).increment(n);
}

pub fn rate_limited(transport: &'static str) {
    counter!(names::RATE_LIMITED, "transport" => transport).increment(1);
}

pub fn backend_operation(operation: &'static str, backend: &'static str, elapsed: Duration) {
    let register = |&(o, b): &(&'static str, &'static str)| histogram!(names::BACKEND_TIME, "operation" => o, "backend" => b);
    // Every native turn records one (its resolve): a kept handle, not a registry lookup.
    let h = match series::hot() {
        Some(hot) => hot.backend_time.get((operation, backend), register),
        None => register(&(operation, backend)),
    };
    h.record(elapsed.as_secs_f64());
}

pub fn audit_write() {
    counter!(names::AUDIT_WRITES).increment(1);
}

pub fn upstream_request(operation: &'static str, outcome: &'static str, elapsed: Duration) {
    counter!(names::UPSTREAM_REQUESTS, "operation" => operation, "outcome" => outcome).increment(1);
    histogram!(names::UPSTREAM_DURATION, "operation" => operation).record(elapsed.as_secs_f64());
}

pub fn upstream_breaker_open(class: &'static str, open: bool) {
    gauge!(names::UPSTREAM_BREAKER_OPEN, "class" => class).set(if open { 1.0 } else { 0.0 });
}

pub fn db_sizes(db_bytes: u64, wal_bytes: u64) {
    gauge!(names::DB_BYTES).set(db_bytes as f64);
    gauge!(names::DB_WAL_BYTES).set(wal_bytes as f64);
}

/// Exports every checkpoint counter at 0 from the start, so rates and alerts see a series
/// before the first busy or failed checkpoint ever happens.
pub fn db_checkpoints_init() {
    for mode in ["passive", "restart", "truncate"] {
        for result in ["ok", "busy", "error"] {
            counter!(names::DB_CHECKPOINTS, "mode" => mode, "result" => result).increment(0);
        }
    }
}

pub fn db_checkpoint(mode: &'static str, result: &'static str, elapsed: Duration) {
    counter!(names::DB_CHECKPOINTS, "mode" => mode, "result" => result).increment(1);
    histogram!(names::DB_CHECKPOINT_DURATION, "mode" => mode).record(elapsed.as_secs_f64());
}

pub fn webhook_delivery(outcome: &'static str, elapsed: Duration) {
    counter!(names::WEBHOOK_DELIVERIES, "outcome" => outcome).increment(1);
    histogram!(names::WEBHOOK_DELIVERY_DURATION).record(elapsed.as_secs_f64());
}

pub fn webhook_queue_depth(n: u64) {
    gauge!(names::WEBHOOK_QUEUE_DEPTH).set(n as f64);
}

/// One Redis round trip of the shared state store (`operation` is a fixed name).
pub fn redis_operation(operation: &'static str, elapsed: Duration, ok: bool) {
    histogram!(names::REDIS_DURATION, "operation" => operation).record(elapsed.as_secs_f64());
    if !ok {
        counter!(names::REDIS_ERRORS, "operation" => operation).increment(1);
    }
}

/// One live event through the cross-replica relay. `outcome` is one of: `published`,
/// `publish_failed`, `received`, `duplicate`, `caught_up` (read from the journal to fill a gap).
pub fn event_relayed(outcome: &'static str) {
    counter!(names::EVENTS_RELAYED, "outcome" => outcome).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junk_methods_and_odd_statuses_map_to_fixed_labels() {
        for m in ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] {
            let method = axum::http::Method::from_bytes(m.as_bytes()).unwrap();
            assert_eq!(method_label(&method), m);
        }
        for junk in ["JUNK0", "get", "PROPFIND", "X"] {
            let method = axum::http::Method::from_bytes(junk.as_bytes()).unwrap();
            assert_eq!(method_label(&method), "other");
        }
        assert_eq!(status_label(404), "404");
        assert_eq!(status_label(418), "4xx");
        assert_eq!(status_label(299), "2xx");
        assert_eq!(status_label(999), "other");
    }
}
