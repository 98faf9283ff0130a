//! Helpers for the Native Voice Bridge tests: a demo server with a fixed key, a client for
//! `POST /api/v1/native/outreachpilot`, REST v1 cross-checks of effects, and the checks every
//! native reply must pass (DESIGN §4): the envelope, `Server-Timing` with phases whose `total`
//! equals `performance.server_elapsed_ms`, `X-Request-Id` equal to `meta.request_id`, and a
//! spoken summary a TTS engine can read as it is (≤ 200 characters, no URLs, no ids).
//!
//! Included from each native test file next to `mod common;` as
//! `#[path = "common/native.rs"] mod native_common;`.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use pilot_bridge::config::Config;
use pilot_bridge::demo;
use pilot_bridge::store::{audit, orgs};
use serde_json::{json, Value};

use crate::common::{self, Client, Resp, TestServer};

/// The demo key every native test uses (`demo::ensure_key` with a fixed value).
pub const KEY: &str = "op_live_NativeBridgeTests0123456789abcdefghijKLMN";
/// The native endpoint, relative to `/api/v1`.
pub const PATH: &str = "/native/outreachpilot";

/// Phase names the pipeline may report in `Server-Timing`.
const PHASES: &[&str] = &[
    "cache", "auth", "parse", "intent", "idem", "state", "resolve", "exec", "audit", "upstream",
    "total",
];

/// A running server with the demo workspace seeded and a client holding [`KEY`].
pub struct Demo {
    pub s: TestServer,
    /// Client for `/api/v1` with every scope (REST and native).
    pub c: Client,
}

/// The demo workspace with its rate limit turned off.
pub async fn demo() -> Demo {
    demo_with(|_| {}, Some(0)).await
}

/// The demo workspace on a server with an adjusted configuration and org rate limit
/// (`Some(0)`: off; `None`: leave the demo's 60/min).
pub async fn demo_with(adjust: impl FnOnce(&mut Config), rate_limit: Option<u32>) -> Demo {
    let s = common::start_with(adjust).await;
    s.store()
        .write(move |tx| {
            demo::seed(tx)?;
            if let Some(limit) = rate_limit {
                orgs::update(
                    tx,
                    demo::DEMO_ORG,
                    &orgs::OrgChanges {
                        rate_limit: Some(limit),
                        ..Default::default()
                    },
                )?;
            }
            demo::ensure_key(tx, Some(KEY))
        })
        .await
        .expect("seed demo");
    let c = s.client(KEY);
    Demo { s, c }
}

impl Demo {
    /// Posts `body` to the native endpoint as JSON.
    pub async fn send(&self, body: Value) -> Resp {
        self.c.post(PATH, body).await
    }

    /// Posts `body` with another client (another key, or none).
    pub async fn send_as(&self, client: &Client, body: Value) -> Resp {
        client.post(PATH, body).await
    }

    /// Sends `{"action": action}` and returns the checked reply's `data`.
    pub async fn act(&self, action: Value) -> Value {
        let r = self.send(json!({ "action": action })).await;
        check_ok(&r).clone()
    }

    /// Sends a request body, checks it succeeded and returns the reply's `data`.
    pub async fn ok(&self, body: Value) -> Value {
        let r = self.send(body).await;
        check_ok(&r).clone()
    }

    /// Confirms (`true`) or cancels (`false`) a pending action.
    pub async fn confirm(&self, pending_action_id: &str, confirmed: bool) -> Resp {
        self.send(json!({ "pendingActionId": pending_action_id, "confirmed": confirmed }))
            .await
    }

    /// Sends a dangerous action, asserts it only asked for confirmation, and returns the
    /// pending action id.
    pub async fn ask(&self, action: Value) -> String {
        let d = self.act(action).await;
        assert_eq!(d["mode"], "confirmation_required", "{d}");
        d["pending_action_id"]
            .as_str()
            .expect("pending_action_id")
            .to_string()
    }

    /// Sends a dangerous action, confirms it and returns the confirmed reply's `data`.
    /// The confirmed reply carries the derived key `native:<type>:<pending_action_id>`.
    pub async fn ask_and_confirm(&self, action: Value) -> Value {
        let ty = action["type"].as_str().unwrap_or("").to_string();
        let pid = self.ask(action).await;
        let r = self.confirm(&pid, true).await;
        let d = check_ok(&r).clone();
        assert_ne!(d["mode"], "duplicate", "{d}");
        assert_eq!(
            d["idempotency_key"],
            format!("native:{ty}:{pid}").as_str(),
            "{d}"
        );
        assert_eq!(d["ids"]["pending_action_id"], pid.as_str(), "{d}");
        assert!(
            d["audit_id"].is_string(),
            "confirmed writes are audited: {d}"
        );
        d
    }

    pub async fn contact_id(&self, email: &str) -> String {
        self.s.contact_id(demo::DEMO_ORG, email).await
    }

    pub async fn campaign_id(&self, name: &str) -> String {
        self.s.campaign_id(demo::DEMO_ORG, name).await
    }

    /// `GET /notes?contact_id=` (the newest first).
    pub async fn notes(&self, contact_id: &str) -> Vec<Value> {
        self.c
            .get_query("/notes", &[("contact_id", contact_id), ("limit", "100")])
            .await
            .page()
            .clone()
    }

    /// `GET /activity` with filters.
    pub async fn activity(&self, query: &[(&str, &str)]) -> Vec<Value> {
        let mut q = query.to_vec();
        q.push(("limit", "100"));
        self.c.get_query("/activity", &q).await.page().clone()
    }

    /// `GET /contacts/:id`.
    pub async fn contact(&self, id: &str) -> Value {
        self.c.get(&format!("/contacts/{id}")).await.ok(200).clone()
    }

    /// `GET /campaigns/:id` (with `audience_stats`).
    pub async fn campaign(&self, id: &str) -> Value {
        self.c
            .get(&format!("/campaigns/{id}"))
            .await
            .ok(200)
            .clone()
    }

    /// `PATCH /settings` pilot mode.
    pub async fn set_pilot_mode(&self, mode: &str) {
        let r = self
            .c
            .patch("/settings", json!({ "pilot_mode": mode }))
            .await;
        assert_eq!(r.ok(200)["pilot_mode"], mode);
    }

    /// The stored audit record `id` of the demo org.
    pub async fn audit_record(&self, id: &str) -> Option<Value> {
        let id = id.to_string();
        self.s
            .store()
            .read(move |c| audit::get(c, demo::DEMO_ORG, &id))
            .await
            .expect("read audit")
    }

    /// Rows of the demo org in one of the bridge's own tables (`drafts`, `outbox`, `meetings`,
    /// `jobs`), optionally with a given `status`: effects REST v1 does not expose.
    pub async fn rows(&self, table: &'static str, status: Option<&'static str>) -> i64 {
        assert!(["drafts", "outbox", "meetings", "jobs"].contains(&table));
        self.s
            .store()
            .read(move |c| {
                let sql = format!(
                    "SELECT count(*) FROM {table} WHERE org_id = ?1 AND (?2 IS NULL OR status = ?2)"
                );
                Ok(
                    c.query_row(&sql, rusqlite::params![demo::DEMO_ORG, status], |r| {
                        r.get::<_, i64>(0)
                    })?,
                )
            })
            .await
            .expect("count rows")
    }

    pub async fn audit_count(&self) -> i64 {
        self.s
            .store()
            .read(|c| audit::count(c, demo::DEMO_ORG))
            .await
            .expect("count audit")
    }
}

/// Polls `check` every 50 ms until it returns `Some`, failing after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts a successful native reply (HTTP 200) and everything DESIGN §4 promises about it;
/// returns `data`.
pub fn check_ok(r: &Resp) -> &Value {
    let data = r.ok(200);
    let obj = data
        .as_object()
        .unwrap_or_else(|| panic!("data is not an object: {}", r.text));
    for k in [
        "mode",
        "spoken_summary",
        "data",
        "ids",
        "candidates",
        "idempotency_key",
        "audit_id",
        "performance",
    ] {
        assert!(obj.contains_key(k), "data.{k} missing: {}", r.text);
    }
    let mode = data["mode"].as_str().expect("mode is a string");
    assert!(
        [
            "result",
            "confirmation_required",
            "clarification_required",
            "queued",
            "duplicate"
        ]
        .contains(&mode),
        "mode {mode}"
    );
    let asks = mode == "confirmation_required";
    // A replayed confirmation prompt keeps its pending action id, so the client can still answer.
    if mode != "duplicate" {
        assert_eq!(
            obj.contains_key("pending_action_id"),
            asks,
            "pending_action_id only with confirmation_required: {}",
            r.text
        );
    }
    assert_eq!(
        obj.contains_key("expires_at"),
        obj.contains_key("pending_action_id"),
        "{}",
        r.text
    );
    if asks {
        let pid = data["pending_action_id"].as_str().expect("pending id");
        assert!(!pid.is_empty());
        let exp = data["expires_at"].as_str().expect("expires_at");
        let exp = chrono::DateTime::parse_from_rfc3339(exp).expect("expires_at is RFC 3339");
        assert!(exp > chrono::Utc::now(), "expires_at is in the future");
    }
    let ids = data["ids"].as_object().expect("ids is an object");
    for (k, v) in ids {
        assert!(v.is_string(), "ids.{k} is not a string: {}", r.text);
    }
    assert!(data["candidates"].is_array(), "{}", r.text);
    // A transcript turn that was not understood (or lacks a detail) asks without candidates
    // and says why in `data.reason`.
    if mode == "clarification_required" && data["data"]["reason"].is_null() {
        assert!(!data["candidates"].as_array().unwrap().is_empty());
    }
    assert!(
        data["audit_id"].is_null() || data["audit_id"].is_string(),
        "{}",
        r.text
    );
    assert!(
        data["idempotency_key"].is_null() || data["idempotency_key"].is_string(),
        "{}",
        r.text
    );
    let perf = &data["performance"];
    let elapsed = perf["server_elapsed_ms"]
        .as_f64()
        .expect("server_elapsed_ms");
    check_performance(r, perf);
    assert_eq!(
        r.body["meta"]["server_elapsed_ms"].as_f64(),
        Some(elapsed),
        "meta.server_elapsed_ms equals performance.server_elapsed_ms"
    );
    check_server_timing(r, elapsed);
    check_spoken(data["spoken_summary"].as_str().expect("spoken_summary"));
    let replayed = r.header("idempotent-replayed") == Some("true");
    assert_eq!(
        replayed,
        mode == "duplicate",
        "Idempotent-Replayed goes with mode duplicate: {}",
        r.text
    );
    data
}

/// Asserts a native error reply with `status` and `code` and its timing; returns `error`.
pub fn check_err<'a>(r: &'a Resp, status: u16, code: &str) -> &'a Value {
    let e = r.err(status, code);
    let perf = &r.body["meta"]["performance"];
    check_performance(r, perf);
    let elapsed = perf["server_elapsed_ms"].as_f64().expect("elapsed");
    assert_eq!(r.body["meta"]["server_elapsed_ms"].as_f64(), Some(elapsed));
    check_server_timing(r, elapsed);
    check_spoken(e["spoken_summary"].as_str().expect("spoken_summary"));
    e
}

fn check_performance(r: &Resp, perf: &Value) {
    let mode = perf["execution_mode"].as_str().unwrap_or("");
    assert!(mode == "fast" || mode == "standard", "{}", r.text);
    let elapsed = perf["server_elapsed_ms"].as_f64().expect("elapsed ms");
    assert!(elapsed > 0.0, "server time is measured: {}", r.text);
    assert_eq!(perf["target_ms"].as_f64(), Some(750.0), "{}", r.text);
    assert_eq!(
        perf["within_target"].as_bool(),
        Some(elapsed <= 750.0),
        "{}",
        r.text
    );
}

/// `Server-Timing`: `name;dur=x.xxx` per phase, known short names, `total` last and equal to
/// the reported server time, phases adding up to no more than the total.
pub fn check_server_timing(r: &Resp, elapsed_ms: f64) {
    let st = r
        .header("server-timing")
        .unwrap_or_else(|| panic!("Server-Timing missing: {}", r.text));
    let mut metrics = Vec::new();
    for part in st.split(", ") {
        let (name, dur) = part
            .split_once(";dur=")
            .unwrap_or_else(|| panic!("bad Server-Timing metric {part:?} in {st:?}"));
        assert!(PHASES.contains(&name), "unknown phase {name:?} in {st:?}");
        let decimals = dur.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(decimals <= 3, "at most 3 decimals: {st:?}");
        let v: f64 = dur.parse().unwrap_or_else(|_| panic!("dur {dur:?}"));
        assert!(v >= 0.0);
        metrics.push((name, v));
    }
    let (last, total) = *metrics.last().expect("metrics");
    assert_eq!(last, "total", "total comes last: {st:?}");
    assert!(
        (total - elapsed_ms).abs() < 1e-9,
        "Server-Timing total {total} != server_elapsed_ms {elapsed_ms} ({st:?})"
    );
    let phases = &metrics[..metrics.len() - 1];
    assert!(
        phases.iter().any(|(n, _)| *n == "auth"),
        "auth phase: {st:?}"
    );
    let mut names: Vec<&str> = phases.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), phases.len(), "phases appear once: {st:?}");
    let sum: f64 = phases.iter().map(|(_, d)| d).sum();
    assert!(
        sum <= total + 0.001 * metrics.len() as f64,
        "phases ({sum}) exceed the total ({total}): {st:?}"
    );
}

/// Phase names in a response's `Server-Timing`, `total` excluded.
pub fn phases(r: &Resp) -> Vec<String> {
    r.header("server-timing")
        .unwrap_or("")
        .split(", ")
        .filter_map(|p| p.split_once(";dur=").map(|(n, _)| n.to_string()))
        .filter(|n| n != "total")
        .collect()
}

/// One or two plain sentences, ≤ 200 characters, no URLs, no ids, no markdown.
pub fn check_spoken(s: &str) {
    assert!(!s.trim().is_empty(), "spoken summary is empty");
    assert!(s.chars().count() <= 200, "spoken summary too long: {s:?}");
    assert!(!s.to_ascii_lowercase().contains("http"), "URL in {s:?}");
    assert!(!s.contains("op_live_"), "key in {s:?}");
    assert!(!contains_uuid(s), "id in spoken summary {s:?}");
    assert!(
        !s.contains(['*', '`', '#', '[', ']', '<', '>', '|', '&']),
        "markdown in {s:?}"
    );
}

/// Whether `s` contains an 8-4-4-4-12 hex id.
pub fn contains_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.windows(36).any(|w| {
        w.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
    })
}

/// A client for the demo org authenticating with another raw key.
pub fn client_with_key(s: &TestServer, key: &str) -> Client {
    s.client(key)
}
