//! Per-turn OpenTelemetry traces over OTLP/HTTP (DESIGN §21), on only when `[telemetry]
//! otlp_endpoint` is set.
//!
//! Each native turn is one trace. Its root span `native.turn` (a `tracing` span, exported by
//! `tracing-opentelemetry`) carries `transport`, `action`, `mode` (execution mode), `outcome`
//! (reply mode or error code), `request_id` and `idempotency_key_hash`. Under it:
//! - one span per Server-Timing phase (`auth`, `parse`, `idem`, `resolve`, `exec`, `audit`,
//!   `state`, `upstream`, …), made with the SDK's tracer from the very durations
//!   [`ServerTiming`] measures (one wall-clock read per phase places them), since a `tracing`
//!   span cannot be given a start time after the fact;
//! - one `upstream.call` span per request to an upstream API, live around the request, with
//!   the operation, the HTTP status and the upstream's own `X-Request-Id`.
//!
//! Nothing a user said or typed is exported: no API key, transcript, name, email or text, only
//! fixed tokens, request ids (ours and the upstream's), and the first 16 hex digits of the SHA-256 of the
//! idempotency key. Spans go to a batch exporter on its own thread; a turn never waits for it.
//!
//! With no endpoint nothing here runs: [`enabled`] is one relaxed atomic load, the spans'
//! target is switched off in the log filter, and no span or record is ever made.
//!
//! [`ServerTiming`]: crate::native::timing::ServerTiming

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use sha2::{Digest, Sha256};
use tracing::field::Empty;
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};
use tracing_subscriber::filter::{Filtered, Targets};
use tracing_subscriber::{Layer as _, Registry};

/// The `tracing` target of turn spans: only the trace exporter listens to it.
pub const TARGET: &str = "pilot_bridge::otel";

/// The longest a collector's answer may be (it is read only for its status).
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The longest one export may take, connection included.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

static ON: AtomicBool = AtomicBool::new(false);
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Whether traces are exported.
#[inline]
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The `tracing` layer that turns turn spans into OpenTelemetry spans (and nothing else).
pub type Layer = Filtered<OpenTelemetryLayer<Registry, SdkTracer>, Targets, Registry>;

/// The running exporter; [`Exporter::shutdown`] sends what is still queued.
pub struct Exporter {
    provider: SdkTracerProvider,
}

/// Starts the batch exporter posting OTLP protobuf to `url`, and returns the layer to add to
/// the subscriber. `rt` runs the HTTP requests (the batch processor's own thread has no
/// runtime).
pub fn start(
    url: &reqwest::Url,
    service_name: &str,
    rt: tokio::runtime::Handle,
) -> anyhow::Result<(Layer, Exporter)> {
    let http = reqwest::Client::builder()
        .timeout(EXPORT_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .user_agent(concat!("pilot-bridge/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot build the OTLP HTTP client")?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(ExportClient { http, rt })
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url.as_str())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .context("cannot build the OTLP span exporter")?;
    let resource = Resource::builder()
        .with_service_name(service_name.to_string())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("pilot-bridge");
    let _ = TRACER.set(tracer.clone());
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        // Source locations, thread names, levels and busy/idle times say nothing about a turn.
        .with_location(false)
        .with_threads(false)
        .with_level(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(Targets::new().with_target(TARGET, tracing::Level::TRACE));
    ON.store(true, Ordering::Relaxed);
    Ok((layer, Exporter { provider }))
}

impl Exporter {
    /// Stops exporting after sending every span still queued (bounded by the export timeout).
    pub async fn shutdown(self) {
        ON.store(false, Ordering::Relaxed);
        let provider = self.provider;
        // Shutting down blocks until the last batch is sent, and that request runs on this
        // runtime: wait on a blocking thread so the runtime's threads stay free to send it.
        let done = tokio::task::spawn_blocking(move || {
            provider.shutdown_with_timeout(EXPORT_TIMEOUT + Duration::from_secs(1))
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "trace exporter did not flush"),
            Err(e) => tracing::warn!(error = %e, "trace exporter did not flush"),
        }
    }
}

/// OTLP/HTTP requests through the service's reqwest, on the service's runtime.
#[derive(Debug)]
struct ExportClient {
    http: reqwest::Client,
    rt: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let http = self.http.clone();
        let (status, body) = self
            .rt
            .spawn(async move {
                let mut resp = http.execute(request).await?;
                let status = resp.status();
                let mut body = bytes::BytesMut::new();
                while let Some(chunk) = resp.chunk().await? {
                    if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok::<_, reqwest::Error>((status, body.freeze()))
            })
            .await??;
        Ok(Response::builder().status(status).body(body)?)
    }
}

/// The first 16 hex digits of the SHA-256 of an idempotency key: enough to find a key's turns
/// again, never the key itself (a client may put anything in it).
pub fn key_hash(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(&digest[..8])
}

/// One turn's trace: the root span and the request's log span it stands beside.
#[derive(Debug, Clone)]
pub struct TurnTrace {
    root: tracing::Span,
    /// The span that was current when the turn began (the HTTP request's, with its log
    /// fields): the pipeline records `action`, `mode` and `outcome` there too.
    outer: tracing::Span,
    /// No earlier than the root span's start: phases measured before it are laid from here.
    start: SystemTime,
}

impl TurnTrace {
    /// A new turn's trace, when traces are exported.
    pub fn begin() -> Option<Box<TurnTrace>> {
        if !enabled() {
            return None;
        }
        let outer = tracing::Span::current();
        let root = tracing::info_span!(
            target: TARGET,
            parent: None,
            "native.turn",
            transport = Empty,
            action = Empty,
            mode = Empty,
            outcome = Empty,
            request_id = Empty,
            idempotency_key_hash = Empty,
            otel.status_code = Empty,
        );
        // Our own request id (the service makes it; a client's is never taken over).
        if let Ok(id) = crate::http::envelope::REQUEST.try_with(|c| c.request_id.clone()) {
            root.record("request_id", id.as_str());
        }
        Some(Box::new(TurnTrace {
            root,
            outer,
            start: SystemTime::now(),
        }))
    }

    /// The turn's request id, for transports that make it themselves (WebSocket frames).
    pub fn record_request_id(&self, id: &str) {
        self.root.record("request_id", id);
    }

    /// The root span, to run the turn inside (upstream calls then become its children).
    pub fn root(&self) -> &tracing::Span {
        &self.root
    }

    /// Records a log field on the request's span and, when the root has it, on the root.
    pub fn record(&self, field: &'static str, value: &str) {
        self.outer.record(field, value);
        self.root.record(field, value);
    }

    /// A phase that just ended after `d`.
    pub fn phase(&self, name: &'static str, d: Duration) {
        let Some(tracer) = TRACER.get() else {
            return;
        };
        let now = SystemTime::now();
        // A phase measured before the root span began (MCP's auth, done by the HTTP guard; a
        // WebSocket frame's parse) is laid from the root's start, with its measured duration.
        let start = now.checked_sub(d).unwrap_or(now).max(self.start);
        let end = start.checked_add(d).unwrap_or(now);
        let cx = self.root.context();
        let mut span = tracer
            .span_builder(name)
            .with_start_time(start)
            .start_with_context(tracer, &cx);
        span.end_with_timestamp(end);
    }

    /// The turn's idempotency key, as a hash.
    pub fn record_key(&self, idempotency_key: Option<&str>) {
        if let Some(k) = idempotency_key {
            self.root
                .record("idempotency_key_hash", key_hash(k).as_str());
        }
    }

    /// The attributes known when the turn ends; `failed` marks a server-side failure.
    pub fn finish(&self, transport: &'static str, failed: bool) {
        self.root.record("transport", transport);
        if failed {
            self.root.record("otel.status_code", "error");
        }
    }
}

/// A span around one upstream request of a turn: a disabled one when traces are off or when
/// no turn runs (the key check of authentication comes before the turn's root is current).
pub fn upstream_span(operation: &'static str) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    let in_turn = tracing::Span::current()
        .metadata()
        .is_some_and(|m| m.target() == TARGET);
    if !in_turn {
        return tracing::Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "upstream.call",
        upstream.operation = operation,
        outcome = Empty,
        http.response.status_code = Empty,
        upstream.request_id = Empty,
        otel.status_code = Empty,
    )
}

/// What an upstream request came to: `outcome` as the upstream metrics name it, and when it
/// answered, its status and its own request id — the `X-Request-Id` header, else the envelope's
/// `meta.request_id` (the reference API's place for it).
pub fn upstream_answered(
    span: &tracing::Span,
    outcome: &'static str,
    answer: Option<(reqwest::StatusCode, &reqwest::header::HeaderMap, &[u8])>,
) {
    if span.is_disabled() {
        return;
    }
    span.record("outcome", outcome);
    if let Some((status, headers, body)) = answer {
        span.record("http.response.status_code", status.as_u16());
        let header = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Some(id) = header
            .or_else(|| envelope_request_id(body))
            .filter(|id| plausible_id(id))
        {
            span.record("upstream.request_id", id.as_str());
        }
    }
    if outcome != "ok" && outcome != "client_error" {
        span.record("otel.status_code", "error");
    }
}

/// `meta.request_id` of a JSON envelope.
fn envelope_request_id(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        meta: Option<Meta>,
    }
    #[derive(serde::Deserialize)]
    struct Meta {
        request_id: Option<String>,
    }
    serde_json::from_slice::<Envelope>(body)
        .ok()?
        .meta?
        .request_id
}

/// An id worth exporting: 1 to 128 visible ASCII characters.
fn plausible_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hashed_not_exported() {
        let h = key_hash("turn-1");
        assert_eq!(h.len(), 16);
        assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(h, key_hash("turn-2"));
        assert_eq!(h, key_hash("turn-1"));
        assert!(!h.contains("turn"));
    }

    #[test]
    fn upstream_request_ids_come_from_the_header_or_the_envelope() {
        assert_eq!(
            envelope_request_id(br#"{"ok":true,"data":{},"meta":{"request_id":"req_abc123"}}"#)
                .as_deref(),
            Some("req_abc123")
        );
        assert_eq!(envelope_request_id(b"not json"), None);
        assert_eq!(envelope_request_id(br#"{"meta":{}}"#), None);
        assert!(plausible_id("req_abc123"));
        assert!(!plausible_id(""));
        assert!(!plausible_id("has space"));
        assert!(!plausible_id(&"x".repeat(129)));
    }

    #[test]
    fn nothing_is_made_while_off() {
        assert!(!enabled());
        assert!(TurnTrace::begin().is_none());
        assert!(upstream_span("get_contact").is_disabled());
    }
}
