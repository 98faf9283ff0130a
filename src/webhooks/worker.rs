//! The delivery worker. It polls the outbox for due deliveries, keeps at most one in flight
//! per subscription (a slow receiver delays only its own deliveries) and at most
//! `max_concurrency` in all, POSTs each one signed, and records the outcome: success, a retry
//! at the next step of the schedule (or later, when `Retry-After` asks), or `failed`.
//! Everything it knows lives in the database, so deliveries survive restarts; one that was in
//! flight when the process died is sent again (at least once; receivers dedupe on
//! `webhook-id`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use reqwest::Url;
use tokio::sync::Semaphore;

use super::signing::SigningKey;
use super::target;
use crate::config::WebhooksConfig;
use crate::error::ApiResult;
use crate::store::webhooks::{self, Attempt, Settled};
use crate::store::Store;

/// How often the worker looks for due deliveries.
const TICK: Duration = Duration::from_millis(200);
/// How often the queue-depth gauge is refreshed, in ticks.
const GAUGE_EVERY_TICKS: u32 = 5;
/// How often finished deliveries are pruned, and how long they are kept.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
const RETENTION_DAYS: i64 = 7;
/// The longest wait a receiver's `Retry-After` can ask for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Longest error text kept with a delivery.
const MAX_ERROR_CHARS: usize = 300;

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A 2xx answer.
    Succeeded(u16),
    /// 410 Gone: the receiver wants no more; the subscription is disabled.
    Gone,
    /// Any other answer, 3xx included, and how long the receiver asked us to wait.
    HttpError {
        status: u16,
        retry_after: Option<Duration>,
    },
    Timeout,
    Network(String),
    /// The SSRF guard refused the target.
    Refused(String),
    /// The stored URL or secret cannot be used.
    Invalid(String),
}

impl Outcome {
    /// The metric label (bounded).
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Succeeded(_) => "succeeded",
            Outcome::Gone => "gone",
            Outcome::HttpError { .. } => "http_error",
            Outcome::Timeout => "timeout",
            Outcome::Network(_) => "network_error",
            Outcome::Refused(_) => "refused",
            Outcome::Invalid(_) => "invalid",
        }
    }

    fn response_status(&self) -> Option<u16> {
        match self {
            Outcome::Succeeded(s) => Some(*s),
            Outcome::Gone => Some(410),
            Outcome::HttpError { status, .. } => Some(*status),
            _ => None,
        }
    }

    fn error(&self) -> Option<String> {
        let text = match self {
            Outcome::Succeeded(_) => return None,
            Outcome::Gone => "HTTP 410 Gone: subscription disabled".to_string(),
            Outcome::HttpError { status, .. } => format!("HTTP {status}"),
            Outcome::Timeout => "timed out".to_string(),
            Outcome::Network(e) => e.clone(),
            Outcome::Refused(e) => format!("target refused: {e}"),
            Outcome::Invalid(e) => e.clone(),
        };
        Some(text.chars().take(MAX_ERROR_CHARS).collect())
    }
}

/// What follows an attempt: `attempts_before` attempts had been made before it; the schedule
/// lists the wait before each retry. `Retry-After` can lengthen a wait, never shorten it.
pub fn settle(schedule: &[u64], attempts_before: u32, outcome: &Outcome, now_ms: i64) -> Settled {
    match outcome {
        Outcome::Succeeded(_) => Settled::Succeeded,
        Outcome::Gone => Settled::Failed,
        _ => {
            let Some(wait_secs) = schedule.get(attempts_before as usize) else {
                return Settled::Failed;
            };
            let mut wait = Duration::from_secs(*wait_secs);
            if let Outcome::HttpError {
                retry_after: Some(asked),
                ..
            } = outcome
            {
                wait = wait.max((*asked).min(MAX_RETRY_AFTER));
            }
            Settled::RetryAt(
                now_ms.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)),
            )
        }
    }
}

/// `Retry-After` as seconds or an HTTP date; a date in the past means no wait.
pub fn retry_after(headers: &HeaderMap, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

pub struct Worker {
    store: Store,
    client: reqwest::Client,
    schedule: Vec<u64>,
    allow_private: bool,
    max_concurrency: usize,
    permits: Arc<Semaphore>,
    /// Subscriptions with a delivery in flight.
    in_flight: Mutex<HashSet<String>>,
}

impl Worker {
    pub fn new(store: Store, config: &WebhooksConfig) -> anyhow::Result<Arc<Worker>> {
        Worker::with_lookup(store, config, Arc::new(target::SystemLookup))
    }

    /// Like [`Worker::new`], resolving target names with `lookup` instead of the system
    /// resolver (the SSRF guard still judges every address it returns).
    pub fn with_lookup(
        store: Store,
        config: &WebhooksConfig,
        lookup: Arc<dyn target::LookupHost>,
    ) -> anyhow::Result<Arc<Worker>> {
        let timeout = Duration::from_secs(config.timeout_secs);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would connect on our behalf, past the guard.
            .no_proxy()
            .pool_max_idle_per_host(2)
            .user_agent(concat!("pilot-bridge-webhooks/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(target::GuardedResolver::new(
                lookup,
                config.allow_private_targets,
            ))
            .build()?;
        Ok(Arc::new(Worker {
            store,
            client,
            schedule: config.retry_schedule_secs.clone(),
            allow_private: config.allow_private_targets,
            max_concurrency: config.max_concurrency,
            permits: Arc::new(Semaphore::new(config.max_concurrency)),
            in_flight: Mutex::new(HashSet::new()),
        }))
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // The set stays consistent whatever panicked while holding it (single inserts and
        // removes), so poisoning is no reason to stop delivering.
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts deliveries that are due, within the concurrency bounds.
    pub async fn dispatch_due(self: &Arc<Self>) -> ApiResult<usize> {
        if self.permits.available_permits() == 0 {
            return Ok(0);
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        // Enough rows to find work for every free slot past subscriptions already busy.
        let limit = self.max_concurrency * 4 + self.in_flight().len();
        let due = self
            .store
            .read(move |c| webhooks::due(c, now_ms, limit))
            .await?;
        let mut started = 0;
        for d in due {
            let permit = {
                let mut busy = self.in_flight();
                if busy.contains(&d.webhook_id) {
                    continue;
                }
                let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                    break;
                };
                busy.insert(d.webhook_id.clone());
                permit
            };
            started += 1;
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.deliver(d.seq).await {
                    tracing::warn!(error = %e, webhook_id = %d.webhook_id, "webhook delivery could not be recorded");
                }
                // Freed only after the outcome is committed, so the next poll cannot send the
                // same delivery again.
                me.in_flight().remove(&d.webhook_id);
                drop(permit);
            });
        }
        Ok(started)
    }

    /// Makes one attempt of delivery `seq` and records it.
    async fn deliver(&self, seq: i64) -> ApiResult<()> {
        let Some(a) = self.store.read(move |c| webhooks::attempt(c, seq)).await? else {
            return Ok(());
        };
        let started = Instant::now();
        let outcome = self.send(&a).await;
        crate::telemetry::webhook_delivery(outcome.label(), started.elapsed());
        let settled = settle(
            &self.schedule,
            a.attempts,
            &outcome,
            chrono::Utc::now().timestamp_millis(),
        );
        if !matches!(outcome, Outcome::Succeeded(_)) {
            tracing::info!(
                webhook_id = %a.webhook_id,
                event_id = %a.event_id,
                event_type = %a.event_type,
                attempt = a.attempts + 1,
                outcome = outcome.label(),
                error = outcome.error().unwrap_or_default(),
                gives_up = settled == Settled::Failed,
                "webhook delivery failed"
            );
        }
        let gone = outcome == Outcome::Gone;
        let (status, error) = (outcome.response_status(), outcome.error());
        let webhook_id = a.webhook_id.clone();
        self.store
            .write_bookkeeping(move |tx| {
                webhooks::record_attempt(tx, seq, status, error.as_deref(), &settled)?;
                if gone {
                    webhooks::disable(tx, &webhook_id)?;
                }
                Ok(())
            })
            .await
    }

    /// POSTs the event once.
    async fn send(&self, a: &Attempt) -> Outcome {
        let url = match Url::parse(&a.url) {
            Ok(u) => u,
            Err(e) => return Outcome::Invalid(format!("stored URL is not usable: {e}")),
        };
        if !self.allow_private {
            if let Err(r) = target::check_literal(&url) {
                return Outcome::Refused(r.to_string());
            }
        }
        let timestamp = chrono::Utc::now().timestamp();
        let mut req = self
            .client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", &a.event_id)
            .header("webhook-timestamp", timestamp.to_string());
        // Subscriptions registered before deliveries were signed may have no secret.
        if let Some(secret) = &a.secret {
            match SigningKey::from_secret(secret) {
                Ok(key) => {
                    req = req.header(
                        "webhook-signature",
                        key.sign(&a.event_id, timestamp, a.payload.as_bytes()),
                    )
                }
                Err(e) => return Outcome::Invalid(format!("stored secret is not usable: {e}")),
            }
        }
        match req.body(a.payload.clone()).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                if resp.status().is_success() {
                    Outcome::Succeeded(status)
                } else if status == 410 {
                    Outcome::Gone
                } else {
                    Outcome::HttpError {
                        status,
                        retry_after: retry_after(resp.headers(), chrono::Utc::now()),
                    }
                }
            }
            Err(e) => {
                if let Some(r) = target::refused_in(&e) {
                    Outcome::Refused(r.to_string())
                } else if e.is_timeout() {
                    Outcome::Timeout
                } else {
                    Outcome::Network(error_chain(&e))
                }
            }
        }
    }

    async fn refresh_gauge(&self) {
        match self.store.read(webhooks::queue_depth).await {
            Ok(n) => crate::telemetry::webhook_queue_depth(n),
            Err(e) => tracing::warn!(error = %e, "cannot count pending webhook deliveries"),
        }
    }

    async fn prune(&self) {
        let before =
            crate::ids::to_rfc3339(chrono::Utc::now() - chrono::Duration::days(RETENTION_DAYS));
        if let Err(e) = self
            .store
            .write_bookkeeping(move |tx| webhooks::prune(tx, &before))
            .await
        {
            tracing::warn!(error = %e, "pruning webhook deliveries failed");
        }
    }
}

/// An error and its causes on one line ("error sending request: connection refused").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// Spawns the delivery loop; it ends when `shutdown` fires. Deliveries still in flight then
/// finish on their own or, if the process exits first, are sent again after the restart.
pub fn spawn(
    worker: Arc<Worker>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u32 = 0;
        let mut last_prune = Instant::now();
        worker.prune().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            if let Err(e) = worker.dispatch_due().await {
                tracing::warn!(error = %e, "looking for due webhook deliveries failed");
            }
            if ticks.is_multiple_of(GAUGE_EVERY_TICKS) {
                worker.refresh_gauge().await;
            }
            ticks = ticks.wrapping_add(1);
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = Instant::now();
                worker.prune().await;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEDULE: &[u64] = &[5, 300];

    #[test]
    fn failures_follow_the_schedule_then_give_up() {
        let fail = Outcome::HttpError {
            status: 500,
            retry_after: None,
        };
        assert_eq!(settle(SCHEDULE, 0, &fail, 1_000), Settled::RetryAt(6_000));
        assert_eq!(
            settle(SCHEDULE, 1, &Outcome::Timeout, 1_000),
            Settled::RetryAt(301_000)
        );
        assert_eq!(settle(SCHEDULE, 2, &fail, 1_000), Settled::Failed);
        assert_eq!(settle(&[], 0, &fail, 1_000), Settled::Failed);
        assert_eq!(
            settle(SCHEDULE, 0, &Outcome::Succeeded(204), 1_000),
            Settled::Succeeded
        );
        assert_eq!(settle(SCHEDULE, 0, &Outcome::Gone, 1_000), Settled::Failed);
    }

    #[test]
    fn retry_after_lengthens_but_never_shortens_a_wait() {
        let asked = |secs| Outcome::HttpError {
            status: 429,
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(settle(SCHEDULE, 0, &asked(60), 0), Settled::RetryAt(60_000));
        assert_eq!(settle(SCHEDULE, 0, &asked(1), 0), Settled::RetryAt(5_000));
        assert_eq!(
            settle(SCHEDULE, 0, &asked(10 * 24 * 3600), 0),
            Settled::RetryAt(24 * 3600 * 1000),
            "capped at a day"
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:27:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(RETRY_AFTER, v.parse().unwrap());
            retry_after(&m, now)
        };
        assert_eq!(h("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            h("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(h("Wed, 21 Oct 2015 07:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(h("soon"), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn outcomes_say_what_happened() {
        assert_eq!(Outcome::Succeeded(200).error(), None);
        assert_eq!(
            Outcome::HttpError {
                status: 302,
                retry_after: None
            }
            .error()
            .as_deref(),
            Some("HTTP 302")
        );
        assert_eq!(Outcome::Gone.response_status(), Some(410));
        assert_eq!(Outcome::Timeout.response_status(), None);
        let long = Outcome::Network("x".repeat(1000));
        assert_eq!(long.error().unwrap().chars().count(), MAX_ERROR_CHARS);
    }
}
