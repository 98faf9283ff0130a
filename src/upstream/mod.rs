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

/// Why an attempt got no HTTP answer.
enum Failure {
    Timeout,
    Connect(String),
    Breaker(breaker::Refused),
}

pub struct Upstream {
    http: reqwest::Client,
    /// `<base_url>/api/v1`, without a trailing slash.
    api_base: String,
    cfg: UpstreamConfig,
    breaker: Breaker,
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
        telemetry::upstream_breaker_open(false);
        Ok(Upstream {
            http,
            api_base: format!("{base}/api/v1"),
            breaker: Breaker::new(
                cfg.breaker_failure_threshold,
                Duration::from_millis(cfg.breaker_open_ms),
                Duration::from_millis(cfg.request_timeout_ms.max(cfg.turn_budget_ms)),
            ),
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.cfg
    }

    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
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
                Err(Failure::Breaker(_)) => false,
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
    pub async fn proxy(
        &self,
        method: Method,
        authorization: Option<&HeaderValue>,
        content_type: Option<&HeaderValue>,
        path_and_query: &str,
        body: Bytes,
    ) -> ApiResult<RawResponse> {
        if let Err(refused) = self.breaker.allow() {
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
        self.exchange("proxy", req).await.map_err(failure_error)
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
        let budget = deadline
            .remaining()
            .min(Duration::from_millis(self.cfg.request_timeout_ms));
        if budget < Duration::from_millis(1) {
            // Our own budget ran out: not the upstream's fault, and no probe slot is taken.
            return Err(Failure::Timeout);
        }
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
        self.exchange(op, req).await
    }

    /// Sends one request and reads its whole answer, recording the outcome in the metrics and
    /// the breaker.
    async fn exchange(
        &self,
        op: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<RawResponse, Failure> {
        let started = std::time::Instant::now();
        let result = async {
            let resp = req.send().await?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>(RawResponse {
                status,
                headers,
                body,
            })
        }
        .await;
        match result {
            Ok(r) => {
                self.record(op, r.status, started.elapsed());
                Ok(r)
            }
            Err(e) => {
                let f = classify(e);
                self.record_failure(op, &f, started.elapsed());
                Err(f)
            }
        }
    }

    fn record(&self, op: &'static str, status: StatusCode, elapsed: Duration) {
        let outcome = if status.is_server_error() {
            self.breaker.failure();
            "server_error"
        } else {
            self.breaker.success();
            if status == StatusCode::TOO_MANY_REQUESTS {
                "rate_limited"
            } else if status.is_client_error() {
                "client_error"
            } else {
                "ok"
            }
        };
        telemetry::upstream_request(op, outcome, elapsed);
    }

    fn record_failure(&self, op: &'static str, f: &Failure, elapsed: Duration) {
        self.breaker.failure();
        let outcome = match f {
            Failure::Timeout => "timeout",
            Failure::Connect(_) => "connect_error",
            Failure::Breaker(_) => "breaker_open",
        };
        telemetry::upstream_request(op, outcome, elapsed);
    }
}

fn classify(e: reqwest::Error) -> Failure {
    if e.is_timeout() {
        Failure::Timeout
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
        Failure::Timeout => ApiError::new(ErrorCode::UpstreamTimeout, "Upstream CRM timed out")
            .with_details("the upstream did not answer within the turn's time budget")
            .with_spoken("OutreachPilot is taking too long to answer. Please try again."),
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
