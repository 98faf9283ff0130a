//! Shared helpers for the integration tests: an in-process server on port 0 with its own data
//! directory, orgs and keys created directly through the store, the demo workspace, and a small
//! JSON client whose responses check the envelope contract (DESIGN §4) as they are inspected.

#![allow(dead_code)]

pub mod native;
pub mod redis;
pub mod ws;

use std::time::Duration;

use pilot_bridge::config::Config;
use pilot_bridge::demo;
use pilot_bridge::domain::{Plan, Scope};
use pilot_bridge::server::{self, RunningServer};
use pilot_bridge::store::{campaigns, contacts, keys, orgs, Store};
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::Value;

/// A server running inside the test process, with its data directory.
pub struct TestServer {
    pub server: RunningServer,
    /// `http://127.0.0.1:PORT`
    pub root: String,
    pub dir: tempfile::TempDir,
}

/// Starts a server with default settings on 127.0.0.1:0 and a fresh data directory.
pub async fn start() -> TestServer {
    start_with(|_| {}).await
}

/// Like [`start`], letting the test adjust the configuration first.
pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    adjust(&mut config);
    let server = server::start(config, None).await.expect("server starts");
    let root = format!("http://{}", server.addr);
    TestServer { server, root, dir }
}

impl TestServer {
    pub fn store(&self) -> &Store {
        &self.server.app.store
    }

    /// A client for `/api/v1` authenticating with `key`.
    pub fn client(&self, key: &str) -> Client {
        Client::new(
            format!("{}/api/v1", self.root),
            Some(format!("Bearer {key}")),
        )
    }

    /// A client for `/api/v1` sending no `Authorization` header.
    pub fn anonymous(&self) -> Client {
        Client::new(format!("{}/api/v1", self.root), None)
    }

    /// A client for paths outside `/api/v1` (`/healthz`, `/metrics`, unknown routes).
    pub fn root_client(&self) -> Client {
        Client::new(self.root.clone(), None)
    }

    /// Creates an org with the given plan and rate limit (`Some(0)` = unlimited).
    pub async fn create_org(&self, id: &str, plan: Plan, rate_limit: Option<u32>) {
        let mut new = orgs::NewOrg::named(id);
        new.plan = plan;
        new.rate_limit = rate_limit;
        self.store()
            .write(move |tx| orgs::create(tx, &new))
            .await
            .expect("create org");
    }

    /// Creates a key for `org` with `scopes` and returns the raw key.
    pub async fn create_key(&self, org: &str, scopes: &[Scope]) -> String {
        let raw = keys::generate_raw_key();
        let (org, scopes, r) = (org.to_string(), scopes.to_vec(), raw.clone());
        self.store()
            .write(move |tx| keys::insert(tx, &org, "test", &scopes, &r))
            .await
            .expect("create key");
        raw
    }

    pub async fn revoke_key(&self, raw: &str) {
        let raw = raw.to_string();
        self.store()
            .write(move |tx| keys::revoke(tx, &raw))
            .await
            .expect("revoke key");
    }

    /// A pro org without rate limit and a client holding a key with every scope.
    pub async fn org_client(&self, id: &str) -> Client {
        self.create_org(id, Plan::Pro, Some(0)).await;
        let key = self.create_key(id, Scope::ALL).await;
        self.client(&key)
    }

    /// Seeds the demo workspace (org `demo`), turns its rate limit off, and returns a client
    /// with a key holding every scope.
    pub async fn demo_client(&self) -> Client {
        let key = self
            .store()
            .write(|tx| {
                demo::seed(tx)?;
                orgs::update(
                    tx,
                    demo::DEMO_ORG,
                    &orgs::OrgChanges {
                        rate_limit: Some(0),
                        ..Default::default()
                    },
                )?;
                demo::ensure_key(tx, None)
            })
            .await
            .expect("seed demo");
        self.client(&key)
    }

    /// Id of the contact of `org` with `email`.
    pub async fn contact_id(&self, org: &str, email: &str) -> String {
        let (org, email) = (org.to_string(), email.to_string());
        self.store()
            .read(move |c| contacts::find_by_email(c, &org, &email))
            .await
            .expect("read contact")
            .expect("contact exists")
            .id
    }

    /// Id of the campaign of `org` named exactly `name`.
    pub async fn campaign_id(&self, org: &str, name: &str) -> String {
        let (org, norm) = (org.to_string(), pilot_bridge::text::normalize(name));
        self.store()
            .read(move |c| campaigns::find_by_name(c, &org, &norm, false, 1))
            .await
            .expect("read campaign")
            .into_iter()
            .next()
            .expect("campaign exists")
            .id
    }
}

/// A JSON client with an optional `Authorization` header value.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub base: String,
    pub authorization: Option<String>,
}

impl Client {
    pub fn new(base: String, authorization: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .no_proxy()
            .build()
            .expect("http client");
        Client {
            http,
            base,
            authorization,
        }
    }

    /// The same client with another `Authorization` value (`None`: no header).
    pub fn with_authorization(&self, value: Option<&str>) -> Client {
        Client {
            authorization: value.map(str::to_string),
            ..self.clone()
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, None, None).await
    }

    /// GET with query parameters, URL-encoded by reqwest.
    pub async fn get_query(&self, path: &str, query: &[(&str, &str)]) -> Resp {
        let mut req = self.http.get(format!("{}{path}", self.base)).query(query);
        if let Some(a) = &self.authorization {
            req = req.header("authorization", a);
        }
        Resp::read(req.send().await.expect("request")).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.json(Method::POST, path, body).await
    }

    /// POST a JSON body with extra request headers (e.g. `Idempotency-Key`).
    pub async fn post_with_headers(
        &self,
        path: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).expect("serialise body"));
        if let Some(a) = &self.authorization {
            req = req.header("authorization", a);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        Resp::read(req.send().await.expect("request")).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Resp {
        self.json(Method::PUT, path, body).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Resp {
        self.json(Method::PATCH, path, body).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send(Method::DELETE, path, None, None).await
    }

    pub async fn json(&self, method: Method, path: &str, body: Value) -> Resp {
        let bytes = serde_json::to_vec(&body).expect("serialise body");
        self.send(method, path, Some("application/json"), Some(bytes))
            .await
    }

    /// Sends raw bytes with an optional content type.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Resp {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(a) = &self.authorization {
            req = req.header("authorization", a);
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        Resp::read(req.send().await.expect("request")).await
    }
}

/// A response: status, headers and the parsed JSON body (`Value::Null` when not JSON).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Resp {
    async fn read(r: reqwest::Response) -> Resp {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.expect("read body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            body,
            text,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Checks what every response shares: JSON content type, `meta.request_id` and
    /// `meta.timestamp`, and `X-Request-Id` equal to `meta.request_id`.
    pub fn check_common(&self) {
        let ct = self.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with("application/json"),
            "content type {ct:?} for {} {}",
            self.status,
            self.text
        );
        assert!(self.body.is_object(), "body is not JSON: {:?}", self.text);
        let rid = self.body["meta"]["request_id"]
            .as_str()
            .unwrap_or_else(|| panic!("meta.request_id missing: {}", self.text));
        assert!(rid.starts_with("req_"), "request id {rid}");
        assert_eq!(
            self.header("x-request-id"),
            Some(rid),
            "X-Request-Id header"
        );
        let ts = self.body["meta"]["timestamp"]
            .as_str()
            .unwrap_or_else(|| panic!("meta.timestamp missing: {}", self.text));
        assert!(
            chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
            "timestamp {ts} is not RFC 3339"
        );
    }

    /// Asserts a success envelope with `status` and returns `data`.
    pub fn ok(&self, status: u16) -> &Value {
        assert_eq!(
            self.status, status,
            "unexpected status, body: {}",
            self.text
        );
        self.check_common();
        assert_eq!(self.body["ok"], Value::Bool(true), "{}", self.text);
        assert!(self.body.get("error").is_none(), "{}", self.text);
        assert!(self.body.get("data").is_some(), "{}", self.text);
        &self.body["data"]
    }

    /// Asserts a 200 page envelope and returns its items.
    pub fn page(&self) -> &Vec<Value> {
        let data = self.ok(200);
        let meta = &self.body["meta"];
        for k in ["total", "limit", "offset"] {
            assert!(meta[k].is_u64(), "meta.{k} missing: {}", self.text);
        }
        assert!(meta["has_more"].is_boolean(), "{}", self.text);
        let items = data.as_array().expect("data is an array");
        let total = meta["total"].as_u64().unwrap_or(0);
        let offset = meta["offset"].as_u64().unwrap_or(0);
        assert!(items.len() as u64 <= meta["limit"].as_u64().unwrap_or(0));
        assert_eq!(
            meta["has_more"].as_bool(),
            Some(offset + (items.len() as u64) < total),
            "has_more disagrees with total/offset: {}",
            self.body["meta"]
        );
        items
    }

    /// `meta.total` of a page.
    pub fn total(&self) -> u64 {
        self.body["meta"]["total"].as_u64().expect("meta.total")
    }

    /// Asserts the full error envelope with `status` and `code`; returns the `error` object.
    pub fn err(&self, status: u16, code: &str) -> &Value {
        assert_eq!(
            self.status, status,
            "unexpected status, body: {}",
            self.text
        );
        self.check_common();
        assert_eq!(self.body["ok"], Value::Bool(false), "{}", self.text);
        assert!(self.body.get("data").is_none(), "{}", self.text);
        let e = &self.body["error"];
        assert_eq!(e["code"], code, "error code, body: {}", self.text);
        let obj = e.as_object().expect("error is an object");
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["code", "details", "docs_url", "message", "spoken_summary"],
            "error fields"
        );
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            self.text
        );
        assert!(
            e["details"].is_string(),
            "details must be a string: {}",
            self.text
        );
        assert_eq!(
            e["docs_url"],
            format!("/docs#{}", code.to_ascii_lowercase()),
            "docs_url"
        );
        let spoken = e["spoken_summary"].as_str().expect("spoken_summary");
        assert!(
            !spoken.is_empty() && spoken.chars().count() <= 200,
            "spoken summary {spoken:?}"
        );
        let meta = self.body["meta"].as_object().expect("meta");
        assert!(meta.contains_key("request_id") && meta.contains_key("timestamp"));
        e
    }

    /// `error.details` of an error response.
    pub fn details(&self) -> &str {
        self.body["error"]["details"].as_str().unwrap_or("")
    }
}

/// A loopback port that was free a moment ago, for a child process that must be told its
/// port up front (the in-process server binds port 0 itself).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}
