//! The client for a remote OutreachPilot-compatible REST v1 API (`backend = "upstream"`): one
//! pooled reqwest client, per-turn deadlines, retries with jittered backoff for idempotent reads
//! only, a circuit breaker, and the upstream's error envelopes mapped onto our [`ApiError`]s.
//!
//! It knows HTTP and the REST v1 wire format, nothing about native actions; those live in
//! `native::upstream`.

pub mod breaker;

use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::time::Instant;
use tracing::Instrument;

use self::breaker::Breaker;
use crate::config::UpstreamConfig;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::telemetry;

/// How long a REST v1 request proxied as a whole may take (bulk imports are slower than turns).
const PROXY_TIMEOUT: Duration = Duration::from_secs(10);

/// The point in time by which a turn's upstream work must be done.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn after(d: Duration) -> Self {
        Deadline(Instant::now() + d)
    }

    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }
}

/// An upstream answer as received, for the REST proxy.
#[derive(Debug)]
pub struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What checking a key against the upstream said.
#[derive(Debug, Clone)]
pub enum KeyCheck {
    /// The key works; `native` says whether it may use the native bridge (scope `native` or
    /// `chat`).
    Valid { native: bool },
    /// The upstream refused the key (401, 403 plan, 404 org): cacheable.
    Refused(ApiError),
}

/// Why an attempt got no usable HTTP answer.
enum Failure {
    /// The upstream did not answer within its own `request_timeout_ms`: its fault.
    Timeout,
    /// Our side's time ran out first (the turn's budget, or the pass-through's limit for slow
    /// requests): says nothing about the upstream's health.
    OutOfTime,
    Connect(String),
    Breaker(breaker::Refused),
    /// The answer's body was larger than `max_response_bytes`.
    TooLarge {
        limit: u64,
    },
}

/// Which breaker a request belongs to: native turns must keep working while someone's slow
/// REST bulk import struggles, and the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RouteClass {
    Turns,
    Proxy,
}

/// Percent-encodes `id` for use as one path segment of an upstream URL: everything but RFC 3986
/// unreserved characters is escaped, so an id taken from upstream data (or from a client) cannot
/// add segments (`/`, `..`), a query (`?`) or a fragment (`#`).
pub fn path_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') {
            out.push(char::from(b));
        } else if b == b'.' && !(id == "." || id == "..") {
            out.push('.');
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub struct Upstream {
    http: reqwest::Client,
    /// `<base_url>/api/v1`, without a trailing slash.
    api_base: String,
    cfg: UpstreamConfig,
    /// Native turns (reads, writes, key checks).
    breaker: Breaker,
    /// The REST v1 pass-through.
    proxy_breaker: Breaker,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(30))
            // A redirect would turn a POST into a GET and lose the write; an upstream that
            // redirects is misconfigured and should say so.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("pilot-bridge/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let base = cfg.base_url.trim().trim_end_matches('/');
        let base = base.strip_suffix("/api/v1").unwrap_or(base);
        Ok(Upstream {
            http,
            api_base: format!("{base}/api/v1"),
            breaker: Breaker::new(
                "turns",
                cfg.breaker_failure_threshold,
                Duration::from_millis(cfg.breaker_open_ms),
                Duration::from_millis(cfg.request_timeout_ms.max(cfg.turn_budget_ms)),
            ),
            proxy_breaker: Breaker::new(
                "proxy",
                cfg.breaker_failure_threshold,
                Duration::from_millis(cfg.breaker_open_ms),
                PROXY_TIMEOUT,
            ),
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.cfg
    }

    /// Whether the breaker of native turns is open (the pass-through has its own).
    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    fn breaker(&self, class: RouteClass) -> &Breaker {
        match class {
            RouteClass::Turns => &self.breaker,
            RouteClass::Proxy => &self.proxy_breaker,
        }
    }

    /// A deadline for one native turn's upstream work.
    pub fn turn_deadline(&self) -> Deadline {
        Deadline::after(Duration::from_millis(self.cfg.turn_budget_ms))
    }

    /// The deadline of a turn that began `elapsed` ago.
    pub fn turn_deadline_after(&self, elapsed: Duration) -> Deadline {
        Deadline::after(Duration::from_millis(self.cfg.turn_budget_ms).saturating_sub(elapsed))
    }

    /// `GET path?query`, retried on network errors and 5xx while the deadline allows. Returns
    /// the whole envelope (`data` and `meta`).
    pub async fn get(
        &self,
        op: &'static str,
        token: &str,
        path: &str,
        query: &[(&str, String)],
        deadline: Deadline,
    ) -> ApiResult<Value> {
        let mut attempt = 0u32;
        loop {
            let r = self
                .attempt(op, Method::GET, token, path, query, None, deadline)
                .await;
            let retryable = match &r {
                Err(Failure::Timeout | Failure::Connect(_)) => true,
                Ok(resp) => resp.status.is_server_error(),
                Err(Failure::Breaker(_) | Failure::OutOfTime | Failure::TooLarge { .. }) => false,
            };
            if retryable && attempt < self.cfg.read_retries {
                let backoff = self.backoff(attempt);
                // Only retry when a useful attempt still fits in the budget.
                if deadline.remaining() > backoff + Duration::from_millis(20) {
                    attempt += 1;
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            }
            return into_json(r);
        }
    }

    /// A write (`POST`/`PUT`/`PATCH`/`DELETE`) with a JSON body. Never retried here: a write
    /// whose answer was lost may have happened, and only the caller's idempotency key can make
    /// trying again safe.
    pub async fn send(
        &self,
        op: &'static str,
        method: Method,
        token: &str,
        path: &str,
        body: &(impl serde::Serialize + ?Sized),
        deadline: Deadline,
    ) -> ApiResult<Value> {
        let bytes = Bytes::from(serde_json::to_vec(body).map_err(ApiError::internal)?);
        into_json(
            self.attempt(op, method, token, path, &[], Some(bytes), deadline)
                .await,
        )
    }

    /// Checks a key against the upstream with an empty native request: the upstream
    /// authenticates it and checks the native scope before it reads the body, so the answer
    /// says both whether the key works and whether it may use the native bridge (a 422 for the
    /// missing action means yes). Scopes of every other call are the upstream's to enforce.
    pub async fn check_key(&self, token: &str) -> ApiResult<KeyCheck> {
        let deadline = self.turn_deadline();
        let probe = self
            .send(
                "key_check",
                Method::POST,
                token,
                "/native/outreachpilot",
                &Value::Object(Default::default()),
                deadline,
            )
            .await;
        match probe {
            Ok(_) => Ok(KeyCheck::Valid { native: true }),
            Err(e) if e.code == ErrorCode::ScopeDenied => Ok(KeyCheck::Valid { native: false }),
            Err(e)
                if matches!(
                    e.code,
                    ErrorCode::InvalidApiKey
                        | ErrorCode::MissingAuth
                        | ErrorCode::PlanRequired
                        | ErrorCode::OrgNotFound
                ) =>
            {
                Ok(KeyCheck::Refused(e))
            }
            Err(e) if e.code == ErrorCode::ValidationError => Ok(KeyCheck::Valid { native: true }),
            // A 404 (no such route) or any other 4xx means the base URL points at something
            // that is not an OutreachPilot API.
            Err(e) if e.code != ErrorCode::RateLimited && e.status() < 500 => Err(ApiError::new(
                ErrorCode::UpstreamUnavailable,
                "Upstream CRM answered the key check unexpectedly",
            )
            .with_details(format!("{}: check upstream.base_url", e.code.as_str()))
            .with_spoken("I can't reach OutreachPilot right now. Please try again in a moment.")),
            Err(e) => Err(e),
        }
    }

    /// Forwards a REST v1 request as it came (path relative to `/api/v1`, with its query).
    /// Its timeout is the gateway's limit for slow requests (bulk imports), not a sign of an
    /// unhealthy upstream, so it does not count against the breaker.
    pub async fn proxy(
        &self,
        method: Method,
        authorization: Option<&HeaderValue>,
        content_type: Option<&HeaderValue>,
        path_and_query: &str,
        body: Bytes,
    ) -> ApiResult<RawResponse> {
        if let Err(refused) = self.proxy_breaker.allow() {
            return Err(breaker_error(refused));
        }
        let url = format!("{}{}", self.api_base, path_and_query);
        let mut req = self.http.request(method, url).timeout(PROXY_TIMEOUT);
        if let Some(a) = authorization {
            req = req.header(AUTHORIZATION, a.clone());
        }
        if let Some(c) = content_type {
            req = req.header(CONTENT_TYPE, c.clone());
        }
        if !body.is_empty() {
            req = req.body(body);
        }
        self.exchange("proxy", RouteClass::Proxy, req, false)
            .await
            .map_err(failure_error)
    }

    /// The upstream's URL prefix of REST v1 (`<base_url>/api/v1`), to turn its absolute
    /// `Location` headers into ours.
    pub fn api_base(&self) -> &str {
        &self.api_base
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.cfg.retry_backoff_ms.max(1) << attempt.min(4);
        let jitter = rand::thread_rng().gen_range(0..=base);
        Duration::from_millis(base + jitter)
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        op: &'static str,
        method: Method,
        token: &str,
        path: &str,
        query: &[(&str, String)],
        body: Option<Bytes>,
        deadline: Deadline,
    ) -> Result<RawResponse, Failure> {
        let own_timeout = Duration::from_millis(self.cfg.request_timeout_ms);
        let remaining = deadline.remaining();
        if remaining < Duration::from_millis(1) {
            // Our own budget ran out: not the upstream's fault, and no probe slot is taken.
            return Err(Failure::OutOfTime);
        }
        // A timeout is the upstream's fault only when it had its full request timeout; cut
        // shorter by what is left of the turn, it is ours.
        let full_time = remaining >= own_timeout;
        let budget = remaining.min(own_timeout);
        self.breaker.allow().map_err(Failure::Breaker)?;
        let mut req = self
            .http
            .request(method, format!("{}{}", self.api_base, path))
            .timeout(budget)
            .bearer_auth(token);
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(b) = body {
            req = req
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(b);
        }
        self.exchange(op, RouteClass::Turns, req, full_time).await
    }

    /// Sends one request and reads its answer (at most `max_response_bytes` of body), recording
    /// the outcome in the metrics and in the breaker of `class`. `timeout_is_upstreams` says
    /// whether a timeout of this request would be the upstream's fault. A request dropped
    /// half-way (the caller went away) records nothing.
    async fn exchange(
        &self,
        op: &'static str,
        class: RouteClass,
        mut req: reqwest::RequestBuilder,
        timeout_is_upstreams: bool,
    ) -> Result<RawResponse, Failure> {
        if let Some(id) = current_request_id() {
            // The upstream logs it next to its own id: one request, traceable across both.
            req = req.header("x-request-id", id);
        }
        let span = crate::otel::upstream_span(op);
        let started = std::time::Instant::now();
        let limit = self.cfg.max_response_bytes;
        let result = async {
            let mut resp = req
                .send()
                .await
                .map_err(|e| classify(e, timeout_is_upstreams))?;
            let status = resp.status();
            let headers = resp.headers().clone();
            if resp.content_length().is_some_and(|n| n > limit) {
                return Err(Failure::TooLarge { limit });
            }
            // Read chunk by chunk so an endless or huge body stops at the cap, not in memory.
            let mut body = bytes::BytesMut::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| classify(e, timeout_is_upstreams))?
            {
                if (body.len() + chunk.len()) as u64 > limit {
                    return Err(Failure::TooLarge { limit });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(RawResponse {
                status,
                headers,
                body: body.freeze(),
            })
        }
        .instrument(span.clone())
        .await;
        match result {
            Ok(r) => {
                let outcome = self.record(op, class, r.status, started.elapsed());
                crate::otel::upstream_answered(
                    &span,
                    outcome,
                    Some((r.status, &r.headers, &r.body)),
                );
                Ok(r)
            }
            Err(f) => {
                let outcome = self.record_failure(op, class, &f, started.elapsed());
                crate::otel::upstream_answered(&span, outcome, None);
                Err(f)
            }
        }
    }

    /// Counts an answer; returns its outcome label.
    fn record(
        &self,
        op: &'static str,
        class: RouteClass,
        status: StatusCode,
        elapsed: Duration,
    ) -> &'static str {
        let breaker = self.breaker(class);
        let outcome = if status.is_server_error() {
            breaker.failure();
            "server_error"
        } else {
            breaker.success();
            if status == StatusCode::TOO_MANY_REQUESTS {
                "rate_limited"
            } else if status.is_client_error() {
                "client_error"
            } else {
                "ok"
            }
        };
        telemetry::upstream_request(op, outcome, elapsed);
        outcome
    }

    /// Only what the upstream caused counts against the breaker: no connection, and its own
    /// request timeout. Our budget running out, and an answer too large for us (the upstream
    /// is alive and answering), are inconclusive. Returns the outcome label.
    fn record_failure(
        &self,
        op: &'static str,
        class: RouteClass,
        f: &Failure,
        elapsed: Duration,
    ) -> &'static str {
        let breaker = self.breaker(class);
        let outcome = match f {
            Failure::Timeout => {
                breaker.failure();
                "timeout"
            }
            Failure::Connect(_) => {
                breaker.failure();
                "connect_error"
            }
            Failure::OutOfTime => {
                breaker.inconclusive();
                "out_of_time"
            }
            Failure::TooLarge { .. } => {
                breaker.inconclusive();
                "too_large"
            }
            Failure::Breaker(_) => "breaker_open",
        };
        telemetry::upstream_request(op, outcome, elapsed);
        outcome
    }
}

/// The id of the request being served, when there is one (HTTP and WebSocket turns run inside
/// its scope).
fn current_request_id() -> Option<HeaderValue> {
    crate::http::envelope::REQUEST
        .try_with(|c| HeaderValue::from_str(&c.request_id).ok())
        .ok()
        .flatten()
}

fn classify(e: reqwest::Error, timeout_is_upstreams: bool) -> Failure {
    if e.is_timeout() {
        if timeout_is_upstreams {
            Failure::Timeout
        } else {
            Failure::OutOfTime
        }
    } else {
        // Connection refused or reset, DNS, a body cut short: the upstream is not answering.
        // The URL is left out of the message: its query may hold a name or an email.
        Failure::Connect(e.without_url().to_string())
    }
}

fn breaker_error(refused: breaker::Refused) -> ApiError {
    let secs = refused.retry_in.as_secs_f64().ceil().max(1.0) as u64;
    ApiError::new(
        ErrorCode::UpstreamUnavailable,
        "Upstream CRM is unavailable",
    )
    .with_details(format!(
        "circuit breaker open after repeated upstream failures; next attempt in {} ms",
        refused.retry_in.as_millis()
    ))
    .with_spoken("I can't reach OutreachPilot right now. Please try again in a moment.")
    .with_retry_after(secs)
}

fn failure_error(f: Failure) -> ApiError {
    match f {
        Failure::Timeout | Failure::OutOfTime => {
            ApiError::new(ErrorCode::UpstreamTimeout, "Upstream CRM timed out")
                .with_details("the upstream did not answer within the turn's time budget")
                .with_spoken("OutreachPilot is taking too long to answer. Please try again.")
        }
        Failure::TooLarge { limit } => {
            tracing::warn!(limit, "upstream answer over the size limit");
            ApiError::new(
                ErrorCode::UpstreamUnavailable,
                "Upstream CRM sent an answer that is too large",
            )
            .with_details(format!(
                "the upstream's answer exceeds upstream.max_response_bytes ({limit} bytes)"
            ))
            .with_spoken("OutreachPilot sent more than I can handle. Please narrow the request.")
        }
        Failure::Connect(cause) => {
            tracing::warn!(error = %cause, "upstream unreachable");
            ApiError::new(
                ErrorCode::UpstreamUnavailable,
                "Upstream CRM is unreachable",
            )
            .with_details("could not connect to the upstream API")
            .with_spoken("I can't reach OutreachPilot right now. Please try again in a moment.")
        }
        Failure::Breaker(refused) => breaker_error(refused),
    }
}

fn into_json(r: Result<RawResponse, Failure>) -> ApiResult<Value> {
    let resp = r.map_err(failure_error)?;
    let body: Option<Value> = serde_json::from_slice(&resp.body).ok();
    if resp.status.is_success() {
        return body.ok_or_else(|| {
            ApiError::new(
                ErrorCode::UpstreamUnavailable,
                "Upstream CRM sent an unreadable answer",
            )
            .with_details("the upstream's 2xx body is not JSON")
        });
    }
    Err(upstream_error(resp.status, &resp.headers, body.as_ref()))
}

/// Maps an upstream error answer onto ours: the upstream's own code when we know it, else one
/// chosen by status; 5xx always becomes `UPSTREAM_UNAVAILABLE` (502); 429 keeps `Retry-After`.
pub fn upstream_error(status: StatusCode, headers: &HeaderMap, body: Option<&Value>) -> ApiError {
    let err = body.and_then(|b| b.get("error"));
    let text = |k: &str| err.and_then(|e| e.get(k)).and_then(Value::as_str);
    if status.is_server_error() {
        return ApiError::new(
            ErrorCode::UpstreamUnavailable,
            "Upstream CRM failed to answer",
        )
        .with_details(format!(
            "upstream answered {}{}",
            status.as_u16(),
            text("code").map(|c| format!(" {c}")).unwrap_or_default()
        ))
        .with_spoken("OutreachPilot had a problem with that. Please try again shortly.");
    }
    let code = text("code")
        .and_then(ErrorCode::from_wire)
        .filter(|c| {
            !matches!(
                c,
                ErrorCode::UpstreamUnavailable | ErrorCode::UpstreamTimeout
            )
        })
        .unwrap_or(match status.as_u16() {
            401 => ErrorCode::InvalidApiKey,
            403 => ErrorCode::ScopeDenied,
            404 => ErrorCode::ResourceNotFound,
            405 => ErrorCode::MethodNotAllowed,
            408 => ErrorCode::UpstreamTimeout,
            409 => ErrorCode::DuplicateResource,
            410 => ErrorCode::PendingActionExpired,
            413 => ErrorCode::PayloadTooLarge,
            415 => ErrorCode::UnsupportedMediaType,
            429 => ErrorCode::RateLimited,
            _ => ErrorCode::ValidationError,
        });
    let mut e = ApiError::new(
        code,
        text("message").unwrap_or("Upstream refused the request"),
    );
    if let Some(d) = text("details").filter(|d| !d.is_empty()) {
        e = e.with_details(d);
    }
    if let Some(s) = text("spoken_summary").filter(|s| !s.is_empty()) {
        e = e.with_spoken(s);
    }
    if code == ErrorCode::RateLimited {
        let secs = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(1);
        e = e.with_retry_after(secs);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn upstream_errors_keep_known_codes_and_retry_after() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("17"));
        let body = json!({"ok": false, "error": {"code": "RATE_LIMITED", "message": "slow down", "details": ""}});
        let e = upstream_error(StatusCode::TOO_MANY_REQUESTS, &h, Some(&body));
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert_eq!(e.retry_after, Some(17));
        assert_eq!(e.message, "slow down");

        let body = json!({"ok": false, "error": {"code": "CAMPAIGN_NOT_ACTIVE", "message": "Campaign is paused"}});
        let e = upstream_error(StatusCode::BAD_REQUEST, &HeaderMap::new(), Some(&body));
        assert_eq!(e.code, ErrorCode::CampaignNotActive);
    }

    #[test]
    fn unknown_or_missing_codes_fall_back_to_the_status() {
        let e = upstream_error(StatusCode::UNAUTHORIZED, &HeaderMap::new(), None);
        assert_eq!(e.code, ErrorCode::InvalidApiKey);
        let body = json!({"error": {"code": "SOMETHING_NEW"}});
        let e = upstream_error(StatusCode::NOT_FOUND, &HeaderMap::new(), Some(&body));
        assert_eq!(e.code, ErrorCode::ResourceNotFound);
        let e = upstream_error(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new(), None);
        assert_eq!(e.code, ErrorCode::UpstreamUnavailable);
        assert_eq!(e.status(), 502);
    }

    #[test]
    fn path_segments_cannot_add_segments_queries_or_fragments() {
        assert_eq!(path_segment("3f2b-AZ_09~x.y"), "3f2b-AZ_09~x.y");
        assert_eq!(path_segment("../admin"), "..%2Fadmin");
        assert_eq!(path_segment(".."), "%2E%2E");
        assert_eq!(path_segment("."), "%2E");
        assert_eq!(path_segment("a?b#c d%"), "a%3Fb%23c%20d%25");
        assert_eq!(path_segment("é"), "%C3%A9");
        assert_eq!(path_segment(""), "");
    }

    /// A real local HTTP server that answers every request after `delay`, with `status`.
    async fn slow_server(delay: Duration, status: u16) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(move || async move {
            tokio::time::sleep(delay).await;
            (
                axum::http::StatusCode::from_u16(status).unwrap(),
                [(CONTENT_TYPE, "application/json")],
                r#"{"ok":true,"data":{}}"#,
            )
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        url
    }

    fn client(base_url: String) -> Upstream {
        Upstream::new(&UpstreamConfig {
            base_url,
            request_timeout_ms: 200,
            turn_budget_ms: 600,
            read_retries: 0,
            breaker_failure_threshold: 2,
            ..Default::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn running_out_of_our_own_budget_never_opens_the_breaker() {
        let up = client(slow_server(Duration::from_millis(400), 200).await);
        for _ in 0..4 {
            // 50 ms left of the turn: the request is cut by our budget, not the upstream's
            // request timeout.
            let e = up
                .get(
                    "t",
                    "k",
                    "/contacts",
                    &[],
                    Deadline::after(Duration::from_millis(50)),
                )
                .await
                .unwrap_err();
            assert_eq!(e.code, ErrorCode::UpstreamTimeout);
        }
        assert!(!up.breaker_open());
        // With the full request timeout to spare, the upstream is the slow one: it counts.
        for _ in 0..2 {
            let e = up
                .get("t", "k", "/contacts", &[], up.turn_deadline())
                .await
                .unwrap_err();
            assert_eq!(e.code, ErrorCode::UpstreamTimeout);
        }
        assert!(up.breaker_open());
    }

    #[tokio::test]
    async fn pass_through_failures_do_not_open_the_breaker_of_turns() {
        let up = client(slow_server(Duration::ZERO, 503).await);
        // The threshold is 2.
        for _ in 0..2 {
            let r = up
                .proxy(Method::GET, None, None, "/contacts", Bytes::new())
                .await
                .unwrap();
            assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        }
        assert!(up.proxy_breaker.is_open(), "5xx count for the pass-through");
        assert!(!up.breaker_open(), "turns keep their own breaker");
        let e = up
            .proxy(Method::GET, None, None, "/contacts", Bytes::new())
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::UpstreamUnavailable);
    }

    #[tokio::test]
    async fn a_caller_that_goes_away_records_nothing() {
        let up = client(slow_server(Duration::from_millis(300), 200).await);
        for _ in 0..4 {
            let call = up.get("t", "k", "/contacts", &[], up.turn_deadline());
            let _ = tokio::time::timeout(Duration::from_millis(20), call).await;
        }
        assert!(!up.breaker_open());
    }

    #[test]
    fn base_url_may_carry_the_api_prefix() {
        for base in [
            "http://127.0.0.1:9",
            "http://127.0.0.1:9/",
            "http://127.0.0.1:9/api/v1",
        ] {
            let cfg = UpstreamConfig {
                base_url: base.into(),
                ..Default::default()
            };
            let up = Upstream::new(&cfg).unwrap();
            assert_eq!(up.api_base, "http://127.0.0.1:9/api/v1");
        }
    }
}
