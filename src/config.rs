//! Service configuration: built-in defaults, overridden by an optional TOML file, overridden by
//! `PILOT_BRIDGE_*` environment variables and command-line flags (the CLI layer applies those two,
//! clap giving flags precedence over env). Validated once at start-up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::store::{Durability, StoreOptions};

/// The commented default configuration shipped with the project; a test keeps it equal to
/// [`Config::default`].
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../deploy/pilot-bridge.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP/WebSocket listener binds.
    pub listen: SocketAddr,
    /// A second listener serving only `/metrics`; when set, the main listener answers
    /// `/metrics` with 404, so the scrape endpoint can stay off a public port.
    pub metrics_listen: Option<SocketAddr>,
    /// Directory holding the SQLite database.
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    /// Access lines at INFO (one per HTTP request and per WebSocket turn): 1 logs every one,
    /// N logs one in N, 0 turns them off. Errors (5xx) are logged at WARN regardless.
    pub access_log_sample: u32,
    /// After SIGTERM, how long the server keeps serving with `/readyz` answering 503 before it
    /// stops accepting and drains, so load balancers see it leave first.
    pub shutdown_delay_ms: u64,
    pub limits: LimitsConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
    pub native: NativeConfig,
    pub websocket: WebSocketConfig,
    /// Where the CRM lives: this process's SQLite store, or a remote REST v1 API.
    pub backend: BackendKind,
    pub upstream: UpstreamConfig,
    pub mcp: McpConfig,
    pub webhooks: WebhooksConfig,
    pub state: StateConfig,
    pub chat: ChatConfig,
    pub control: ControlConfig,
    pub telemetry: TelemetryConfig,
}

/// `[telemetry]`: per-turn OpenTelemetry traces (DESIGN §21).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/HTTP collector URL (`PILOT_BRIDGE_OTLP_ENDPOINT`); empty turns tracing off. A URL
    /// with no path gets `/v1/traces`, as the OTLP base endpoint does; any other path is used
    /// as it is.
    pub otlp_endpoint: String,
    /// `service.name` of the exported resource.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: String::new(),
            service_name: "pilot-bridge".to_string(),
        }
    }
}

impl TelemetryConfig {
    /// Applies `PILOT_BRIDGE_OTLP_ENDPOINT` over the file's value.
    pub fn apply_env(&mut self) {
        if let Ok(url) = std::env::var("PILOT_BRIDGE_OTLP_ENDPOINT") {
            self.otlp_endpoint = url.trim().to_string();
        }
    }

    /// The URL traces are posted to, when tracing is on.
    pub fn traces_url(&self) -> anyhow::Result<Option<reqwest::Url>> {
        let raw = self.otlp_endpoint.trim();
        if raw.is_empty() {
            return Ok(None);
        }
        let mut url = reqwest::Url::parse(raw)
            .with_context(|| format!("telemetry.otlp_endpoint {raw:?} is not a URL"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            bail!("telemetry.otlp_endpoint must be an http:// or https:// URL with a host");
        }
        if url.path() == "/" || url.path().is_empty() {
            url.set_path("/v1/traces");
        }
        Ok(Some(url))
    }
}

/// Control no model can bypass (DESIGN §21).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// Key ids (as `keys list` shows them, or in upstream mode `key_` plus the first 24 hex
    /// digits of the key's SHA-256) that get the `two_step` policy whatever the keys table
    /// says. In upstream mode keys live upstream, so this list is the only way to mark one.
    pub two_step_key_ids: Vec<String>,
    /// How long pushed WebSocket events are kept for `resume_after` replays.
    pub event_retention_secs: u64,
    /// Most events one `resume_after` replays (the newest ones win).
    pub max_replay_events: usize,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            two_step_key_ids: Vec::new(),
            event_retention_secs: 600,
            max_replay_events: 1_000,
        }
    }
}

/// Where conversation state (idempotency records, pending actions, undo entries, the dedupe
/// window) lives: the service's SQLite database, or Redis shared by replicas (DESIGN §16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    Sqlite,
    Redis,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    pub backend: StateBackend,
    /// `redis://[user:password@]host:port/db` or `unix:///path`; used when
    /// `backend = "redis"`. (No TLS: reach Redis over a private network.)
    pub redis_url: String,
    /// Longest wait for one Redis call or connection attempt; a write that meets it answers
    /// `503 STATE_UNAVAILABLE`.
    pub redis_timeout_ms: u64,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: StateBackend::Sqlite,
            redis_url: "redis://127.0.0.1:6379/0".to_string(),
            redis_timeout_ms: 250,
        }
    }
}

/// Who answers `POST /chat` (DESIGN §19).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatProvider {
    /// The built-in intent parser and spoken replies: offline, model `pilot-bridge-builtin`.
    Builtin,
    /// Any OpenAI-compatible `/v1/chat/completions` with tool calling.
    Openai,
}

/// `[chat]`: the AI chat endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatConfig {
    pub provider: ChatProvider,
    /// Base URL of the OpenAI-compatible API, up to and including `/v1`.
    pub base_url: String,
    /// Model name sent to the provider.
    pub model: String,
    /// Name of the environment variable holding the provider's API key; empty for servers that
    /// take none (a local llama.cpp server or Ollama).
    pub api_key_env: String,
    /// Model calls per message (tool rounds included), at most 4.
    pub max_rounds: u32,
    /// Total time a message may take with the provider, tool calls included.
    pub deadline_ms: u64,
    /// Turns of a thread kept and sent back to the model.
    pub history_turns: u32,
    /// Longest message accepted, in characters.
    pub max_message_chars: u32,
    /// A thread unused this long is deleted with its turns.
    pub thread_ttl_days: u32,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            provider: ChatProvider::Builtin,
            base_url: "https://api.openai.com/v1".into(),
            model: "gpt-4o-mini".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            max_rounds: 4,
            deadline_ms: 30_000,
            history_turns: 20,
            max_message_chars: 4_000,
            thread_ttl_days: 30,
        }
    }
}

impl ChatConfig {
    /// Rejects values that cannot work, naming the setting.
    pub fn validate(&self) -> anyhow::Result<()> {
        let ranges: &[(&str, u64, u64, u64)] = &[
            ("chat.max_rounds", self.max_rounds.into(), 1, 4),
            ("chat.deadline_ms", self.deadline_ms, 100, 300_000),
            ("chat.history_turns", self.history_turns.into(), 0, 200),
            (
                "chat.max_message_chars",
                self.max_message_chars.into(),
                1,
                32_000,
            ),
            (
                "chat.thread_ttl_days",
                self.thread_ttl_days.into(),
                1,
                3_650,
            ),
        ];
        for &(name, value, min, max) in ranges {
            if value < min || value > max {
                bail!("{name} must be between {min} and {max} (got {value})");
            }
        }
        if self.provider == ChatProvider::Openai {
            let url = self.base_url.trim();
            let parsed = reqwest::Url::parse(url)
                .with_context(|| format!("chat.base_url {url:?} is not a URL"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                bail!("chat.base_url must be http:// or https://");
            }
            if self.model.trim().is_empty() {
                bail!("chat.model is required when chat.provider = \"openai\"");
            }
        }
        Ok(())
    }
}

/// Which CRM backend serves the native bridge and REST v1 (DESIGN §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The embedded SQLite store under `data_dir`.
    Embedded,
    /// Another OutreachPilot-compatible REST v1 API at `upstream.base_url`.
    Upstream,
}

/// The remote API for `backend = "upstream"`. Defaults keep a fast-mode turn inside 750 ms even
/// when the upstream stalls: a turn's upstream work is cut at `turn_budget_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL of the upstream, e.g. `https://crm.example.com` (a trailing `/api/v1` is fine).
    pub base_url: String,
    /// Longest wait for a TCP (and TLS) connection.
    pub connect_timeout_ms: u64,
    /// Longest wait for one upstream request, start to last byte.
    pub request_timeout_ms: u64,
    /// Upstream time one native turn may spend in all, retries included.
    pub turn_budget_ms: u64,
    /// Extra attempts for idempotent reads that failed on the network or with a 5xx.
    pub read_retries: u32,
    /// Base of the jittered backoff between read attempts.
    pub retry_backoff_ms: u64,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failure_threshold: u32,
    /// How long the breaker stays open before one probe request may try again.
    pub breaker_open_ms: u64,
    /// How long an upstream read answer is reused (writes through the gateway invalidate it).
    pub read_cache_ms: u64,
    /// How long a key's verdict from the upstream is trusted (a revoked key stops within this).
    pub key_cache_ttl_secs: u64,
    /// Idle keep-alive connections kept per upstream host.
    pub pool_max_idle_per_host: usize,
    /// Largest upstream answer body read, in bytes; a larger one is refused with 502
    /// `UPSTREAM_UNAVAILABLE` instead of being buffered.
    pub max_response_bytes: u64,
}

/// Webhook delivery (DESIGN §18).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Seconds to wait before each retry of a failed delivery; after the last one the delivery
    /// is `failed`. A `Retry-After` from the receiver can only lengthen a wait.
    pub retry_schedule_secs: Vec<u64>,
    /// Deliver to (and accept registrations of) targets that resolve to loopback, private,
    /// link-local or cloud-metadata addresses. Off in production; `serve --demo` turns it on
    /// for that process.
    pub allow_private_targets: bool,
    /// Longest wait for one delivery attempt, connection included.
    pub timeout_secs: u64,
    /// Deliveries in flight at once, across all subscriptions (each subscription has at most
    /// one).
    pub max_concurrency: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            retry_schedule_secs: vec![5, 300, 1800, 7200, 18000, 36000, 36000],
            allow_private_targets: false,
            timeout_secs: 15,
            max_concurrency: 16,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests per minute per org when the org sets none; 0 turns rate limiting off.
    pub default_rate_limit: u32,
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `normal`: survives a killed process; `full`: fsync per commit, survives power loss.
    pub durability: Durability,
    /// Reader connections in the pool.
    pub readers: usize,
    /// WAL size in bytes at which the background checkpointer resets the log even while
    /// writes continue (a short pause of the writer); also the size a reset log is cut back to.
    pub wal_reset_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// How long a valid key's verdict is cached; bounds how late a revocation takes effect.
    pub key_cache_ttl_secs: u64,
    /// How long an unknown key's verdict is cached; bounds how late a new key starts working.
    pub negative_cache_ttl_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NativeConfig {
    /// Server-time target per turn, reported as `performance.target_ms`.
    pub target_ms: f64,
    /// Lifetime of a pending (unconfirmed) dangerous action.
    pub pending_ttl_secs: u64,
    /// How far back `undo_last` looks.
    pub undo_window_secs: u64,
    /// How long a request waits for an in-flight twin with the same idempotency key.
    pub idempotency_wait_ms: u64,
    /// How long completed idempotent replies are kept.
    pub idempotency_ttl_secs: u64,
    /// Upper bound on the idempotency cache, in bytes of stored replies.
    pub idempotency_max_bytes: u64,
    /// Identical keyless writes inside this window are answered as duplicates.
    pub dedupe_window_secs: u64,
    /// Hold before a queued message is delivered, so `undo_last` can still cancel it.
    pub outbox_hold_secs: u64,
    /// How long a read action's answer may be reused while nothing was written through this
    /// server; also the bound on staleness after writes by other processes. 0 turns it off.
    pub read_cache_ms: u64,
    /// Attempts a research or enrichment job gets before it is marked `failed`.
    pub job_max_attempts: u32,
    /// Wait before a failed job's second attempt; doubled after each further failure (at most
    /// ten minutes).
    pub job_retry_base_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Interval of server protocol pings; a peer silent for two intervals is disconnected.
    pub ping_interval_secs: u64,
    /// Largest accepted frame/message; larger ones close the connection with 1009.
    pub max_message_bytes: usize,
    /// Frames one connection may have running or waiting to be written; while that many are,
    /// the server stops reading the socket (backpressure).
    pub max_in_flight: usize,
    /// Frames queued for the socket writer; a reply waits for space here, it is never dropped.
    pub outbound_queue: usize,
    /// A write to the socket that makes no progress for this long disconnects the client.
    pub write_timeout_secs: u64,
    /// Time a client without an `Authorization` header has to send its auth frame, counted from
    /// the upgrade (pings do not extend it).
    pub auth_timeout_secs: u64,
    /// Open connections that have not authenticated yet, in total (their own cap, not an org's).
    pub max_unauthenticated: usize,
    /// Failed auth frames one connection may send before it is closed with 1008.
    pub max_auth_failures_per_connection: u32,
    /// Failed auth frames one source address may send per minute; beyond that its auth frames
    /// are refused unchecked (`RATE_LIMITED`, close 1008).
    pub max_auth_failures_per_address: u32,
    /// A `progress` frame goes out when a request's reply is not ready after this long; 0 = never.
    pub ack_after_ms: u64,
    /// Server-pushed events buffered per API key for a socket that reads slowly; a socket that
    /// falls further behind skips the oldest.
    pub event_buffer: usize,
    /// Open connections allowed per org.
    pub max_connections_per_org: usize,
    /// Open connections allowed in total.
    pub max_connections: usize,
    /// Conformance testing only: authenticated sessions echo data messages instead of running
    /// turns, so Autobahn|Testsuite's echo-based cases can complete (scripts/autobahn.py).
    /// Everything else (auth, flow control, close codes) is the production path. Never on in
    /// production.
    pub conformance_echo: bool,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            ping_interval_secs: 20,
            max_message_bytes: 64 * 1024,
            max_in_flight: 32,
            outbound_queue: 64,
            write_timeout_secs: 10,
            auth_timeout_secs: 5,
            max_unauthenticated: 1_000,
            max_auth_failures_per_connection: 3,
            max_auth_failures_per_address: 20,
            ack_after_ms: 300,
            event_buffer: 64,
            max_connections_per_org: 1_000,
            max_connections: 20_000,
            conformance_echo: false,
        }
    }
}

/// The MCP endpoint at `/mcp` (DESIGN §19): which `Host` and browser `Origin` headers it accepts
/// (protection against DNS rebinding and cross-site requests). Requests without `Origin` (every
/// non-browser client) are not affected by `allowed_origins`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpConfig {
    /// `Host` values served: `name` (any port) or `name:port`; `"*"` serves any host
    /// (`PILOT_BRIDGE_MCP_ALLOWED_HOSTS`, comma-separated).
    pub allowed_hosts: Vec<String>,
    /// Browser origins allowed besides the server's own (an `Origin` equal to an allowed
    /// `Host`): `scheme://host[:port]`, `:*` for any port, `"null"`, or `"*"` for any origin
    /// (`PILOT_BRIDGE_MCP_ALLOWED_ORIGINS`, comma-separated).
    pub allowed_origins: Vec<String>,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()],
            allowed_origins: Vec::new(),
        }
    }
}

impl McpConfig {
    /// Applies `PILOT_BRIDGE_MCP_ALLOWED_HOSTS` and `PILOT_BRIDGE_MCP_ALLOWED_ORIGINS`
    /// (comma-separated lists) over the file's values.
    pub fn apply_env(&mut self) {
        let list = |name: &str| {
            std::env::var(name).ok().map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
        };
        if let Some(hosts) = list("PILOT_BRIDGE_MCP_ALLOWED_HOSTS") {
            self.allowed_hosts = hosts;
        }
        if let Some(origins) = list("PILOT_BRIDGE_MCP_ALLOWED_ORIGINS") {
            self.allowed_origins = origins;
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_listen: None,
            data_dir: PathBuf::from("./data"),
            log_format: LogFormat::Text,
            access_log_sample: 1,
            shutdown_delay_ms: 0,
            limits: LimitsConfig::default(),
            storage: StorageConfig::default(),
            auth: AuthConfig::default(),
            native: NativeConfig::default(),
            websocket: WebSocketConfig::default(),
            backend: BackendKind::Embedded,
            upstream: UpstreamConfig::default(),
            mcp: McpConfig::default(),
            webhooks: WebhooksConfig::default(),
            state: StateConfig::default(),
            chat: ChatConfig::default(),
            control: ControlConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            base_url: String::new(),
            connect_timeout_ms: 200,
            request_timeout_ms: 300,
            turn_budget_ms: 650,
            read_retries: 1,
            retry_backoff_ms: 25,
            breaker_failure_threshold: 5,
            breaker_open_ms: 2_000,
            read_cache_ms: 500,
            key_cache_ttl_secs: 10,
            pool_max_idle_per_host: 64,
            max_response_bytes: 8 * 1024 * 1024,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            default_rate_limit: 60,
            max_body_bytes: 64 * 1024,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            durability: Durability::Normal,
            readers: 4,
            wal_reset_bytes: crate::store::DEFAULT_WAL_RESET_BYTES,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            key_cache_ttl_secs: 10,
            negative_cache_ttl_ms: 500,
        }
    }
}

impl Default for NativeConfig {
    fn default() -> Self {
        NativeConfig {
            target_ms: 750.0,
            pending_ttl_secs: 300,
            undo_window_secs: 600,
            idempotency_wait_ms: 5_000,
            idempotency_ttl_secs: 24 * 3600,
            idempotency_max_bytes: 64 * 1024 * 1024,
            dedupe_window_secs: 10,
            outbox_hold_secs: 30,
            read_cache_ms: 1000,
            job_max_attempts: 5,
            job_retry_base_ms: 1000,
        }
    }
}

impl Config {
    /// Defaults, overridden by `path` when given.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Config::from_toml(&text).with_context(|| format!("in config file {}", path.display()))
    }

    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        let cfg: Config = toml::from_str(text)?;
        Ok(cfg)
    }

    /// Rejects values that cannot work, with a message naming the setting: every duration and
    /// size has a range (a huge one would overflow a clock or an allocation later), and the
    /// upstream timings must fit inside a turn.
    pub fn validate(&self) -> anyhow::Result<()> {
        const KIB: u64 = 1024;
        const MIB: u64 = 1024 * KIB;
        const GIB: u64 = 1024 * MIB;
        const DAY_SECS: u64 = 86_400;
        let (l, st, a, n, w, u) = (
            &self.limits,
            &self.storage,
            &self.auth,
            &self.native,
            &self.websocket,
            &self.upstream,
        );
        let ranges: &[(&str, u64, u64, u64, &str)] = &[
            ("shutdown_delay_ms", self.shutdown_delay_ms, 0, 60_000, ""),
            (
                "limits.default_rate_limit",
                l.default_rate_limit.into(),
                0,
                1_000_000,
                "",
            ),
            (
                "limits.max_body_bytes",
                l.max_body_bytes as u64,
                KIB,
                64 * MIB,
                "",
            ),
            ("storage.readers", st.readers as u64, 1, 64, ""),
            (
                "storage.wal_reset_bytes",
                st.wal_reset_bytes,
                MIB,
                128 * MIB,
                " so the log peaks under the 256 MiB the WAL alert fires at",
            ),
            (
                "auth.key_cache_ttl_secs",
                a.key_cache_ttl_secs,
                0,
                60,
                " so revoked keys stop within a minute",
            ),
            (
                "auth.negative_cache_ttl_ms",
                a.negative_cache_ttl_ms,
                0,
                1_000,
                " so new keys work within a second",
            ),
            (
                "native.pending_ttl_secs",
                n.pending_ttl_secs,
                1,
                DAY_SECS,
                "",
            ),
            (
                "native.undo_window_secs",
                n.undo_window_secs,
                1,
                DAY_SECS,
                "",
            ),
            (
                "native.idempotency_wait_ms",
                n.idempotency_wait_ms,
                0,
                60_000,
                "",
            ),
            (
                "native.idempotency_ttl_secs",
                n.idempotency_ttl_secs,
                60,
                30 * DAY_SECS,
                "",
            ),
            (
                "native.idempotency_max_bytes",
                n.idempotency_max_bytes,
                0,
                16 * GIB,
                " (a front cache only: the database keeps every record)",
            ),
            (
                "native.dedupe_window_secs",
                n.dedupe_window_secs,
                0,
                3_600,
                "",
            ),
            (
                "native.outbox_hold_secs",
                n.outbox_hold_secs,
                0,
                DAY_SECS,
                "",
            ),
            ("native.read_cache_ms", n.read_cache_ms, 0, 60_000, ""),
            (
                "native.job_max_attempts",
                n.job_max_attempts.into(),
                1,
                100,
                "",
            ),
            (
                "native.job_retry_base_ms",
                n.job_retry_base_ms,
                10,
                600_000,
                "",
            ),
            (
                "websocket.ping_interval_secs",
                w.ping_interval_secs,
                1,
                3_600,
                "",
            ),
            (
                "websocket.max_message_bytes",
                w.max_message_bytes as u64,
                KIB,
                16 * MIB,
                "",
            ),
            (
                "websocket.max_in_flight",
                w.max_in_flight as u64,
                1,
                1_024,
                "",
            ),
            (
                "websocket.outbound_queue",
                w.outbound_queue as u64,
                1,
                65_536,
                "",
            ),
            (
                "websocket.auth_timeout_secs",
                w.auth_timeout_secs,
                1,
                300,
                "",
            ),
            (
                "websocket.max_connections_per_org",
                w.max_connections_per_org as u64,
                1,
                1_000_000,
                "",
            ),
            (
                "websocket.max_connections",
                w.max_connections as u64,
                1,
                1_000_000,
                "",
            ),
            (
                "websocket.write_timeout_secs",
                w.write_timeout_secs,
                1,
                3_600,
                "",
            ),
            (
                "websocket.max_unauthenticated",
                w.max_unauthenticated as u64,
                1,
                1_000_000,
                "",
            ),
            (
                "websocket.max_auth_failures_per_connection",
                u64::from(w.max_auth_failures_per_connection),
                1,
                1_000,
                "",
            ),
            (
                "websocket.max_auth_failures_per_address",
                u64::from(w.max_auth_failures_per_address),
                1,
                1_000_000,
                "",
            ),
            (
                "websocket.ack_after_ms",
                w.ack_after_ms,
                0,
                60_000,
                " (0 turns progress frames off)",
            ),
            (
                "websocket.event_buffer",
                w.event_buffer as u64,
                1,
                1_000_000,
                "",
            ),
            (
                "upstream.connect_timeout_ms",
                u.connect_timeout_ms,
                1,
                60_000,
                "",
            ),
            (
                "upstream.request_timeout_ms",
                u.request_timeout_ms,
                1,
                60_000,
                "",
            ),
            ("upstream.turn_budget_ms", u.turn_budget_ms, 1, 60_000, ""),
            ("upstream.read_retries", u.read_retries.into(), 0, 5, ""),
            (
                "upstream.retry_backoff_ms",
                u.retry_backoff_ms,
                0,
                1_000,
                "",
            ),
            (
                "upstream.breaker_failure_threshold",
                u.breaker_failure_threshold.into(),
                1,
                1_000,
                "",
            ),
            (
                "upstream.breaker_open_ms",
                u.breaker_open_ms,
                1,
                3_600_000,
                "",
            ),
            ("upstream.read_cache_ms", u.read_cache_ms, 0, 60_000, ""),
            (
                "upstream.key_cache_ttl_secs",
                u.key_cache_ttl_secs,
                0,
                60,
                " so revoked keys stop within a minute",
            ),
            (
                "upstream.pool_max_idle_per_host",
                u.pool_max_idle_per_host as u64,
                0,
                10_000,
                "",
            ),
            (
                "upstream.max_response_bytes",
                u.max_response_bytes,
                64 * KIB,
                GIB,
                "",
            ),
        ];
        let c = &self.control;
        let control: &[(&str, u64, u64, u64, &str)] = &[
            (
                "control.event_retention_secs",
                c.event_retention_secs,
                10,
                DAY_SECS,
                "",
            ),
            (
                "control.max_replay_events",
                c.max_replay_events as u64,
                1,
                100_000,
                "",
            ),
        ];
        for &(name, value, min, max, why) in ranges.iter().chain(control) {
            if value < min || value > max {
                bail!("{name} must be between {min} and {max}{why} (got {value})");
            }
        }
        self.chat.validate()?;
        // NaN fails both comparisons.
        if !(self.native.target_ms > 0.0 && self.native.target_ms <= 60_000.0) {
            bail!(
                "native.target_ms must be above 0 and at most 60000 (got {})",
                self.native.target_ms
            );
        }
        if self.backend == BackendKind::Upstream {
            let url = self.upstream.base_url.trim();
            if url.is_empty() {
                bail!("upstream.base_url is required when backend = \"upstream\"");
            }
            let parsed = reqwest::Url::parse(url)
                .with_context(|| format!("upstream.base_url {url:?} is not a URL"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                bail!("upstream.base_url must be http:// or https://");
            }
        }
        if u.request_timeout_ms > u.turn_budget_ms {
            bail!("upstream.request_timeout_ms must not exceed upstream.turn_budget_ms");
        }
        if u.turn_budget_ms as f64 >= self.native.target_ms {
            bail!("upstream.turn_budget_ms must be below native.target_ms, so a turn that waited out its upstream budget still answers in time");
        }
        crate::mcp::origin::OriginPolicy::new(&self.mcp).map_err(anyhow::Error::msg)?;
        let w = &self.webhooks;
        if w.retry_schedule_secs.len() > 20 {
            bail!("webhooks.retry_schedule_secs must hold at most 20 retries");
        }
        if w.retry_schedule_secs.iter().any(|s| *s > 7 * 24 * 3600) {
            bail!("webhooks.retry_schedule_secs entries must be at most 604800 (a week)");
        }
        if w.timeout_secs == 0 || w.timeout_secs > 60 {
            bail!("webhooks.timeout_secs must be between 1 and 60");
        }
        if w.max_concurrency == 0 || w.max_concurrency > 1024 {
            bail!("webhooks.max_concurrency must be between 1 and 1024");
        }
        if let Some(bad) = c
            .two_step_key_ids
            .iter()
            .find(|id| id.trim().is_empty() || id.len() > 128)
        {
            bail!("control.two_step_key_ids entries must be 1 to 128 characters (got {bad:?})");
        }
        self.telemetry.traces_url()?;
        let name = &self.telemetry.service_name;
        if name.trim().is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            bail!("telemetry.service_name must be 1 to 128 printable characters");
        }
        if self.state.backend == StateBackend::Redis {
            let url = self.state.redis_url.trim();
            let scheme_ok = url.starts_with("redis://") || url.starts_with("unix://");
            if !scheme_ok {
                bail!("state.redis_url must be a redis:// (or unix://) URL when state.backend = \"redis\"");
            }
            if self.state.redis_timeout_ms == 0 || self.state.redis_timeout_ms > 10_000 {
                bail!("state.redis_timeout_ms must be between 1 and 10000");
            }
        }
        Ok(())
    }

    /// How the background worker retries failed jobs.
    pub fn job_retry(&self) -> crate::store::jobs::RetryPolicy {
        crate::store::jobs::RetryPolicy {
            max_attempts: self.native.job_max_attempts,
            base_backoff: std::time::Duration::from_millis(self.native.job_retry_base_ms),
            max_backoff: std::time::Duration::from_secs(600),
        }
    }

    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            durability: self.storage.durability,
            readers: self.storage.readers,
            wal_reset_bytes: self.storage.wal_reset_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_default_file_matches_defaults() {
        let parsed = Config::from_toml(DEFAULT_CONFIG_TOML).unwrap();
        assert_eq!(parsed, Config::default());
        parsed.validate().unwrap();
    }

    #[test]
    fn control_settings_are_read_and_bounded() {
        let c = Config::from_toml(
            "[control]\ntwo_step_key_ids = [\"k1\"]\nevent_retention_secs = 60\n",
        )
        .unwrap();
        assert_eq!(c.control.two_step_key_ids, vec!["k1".to_string()]);
        assert_eq!(c.control.event_retention_secs, 60);
        assert_eq!(c.control.max_replay_events, 1_000);
        c.validate().unwrap();
        for bad in [
            "[control]\nevent_retention_secs = 1\n",
            "[control]\nmax_replay_events = 0\n",
            "[control]\ntwo_step_key_ids = [\" \"]\n",
        ] {
            let e = Config::from_toml(bad).unwrap().validate().unwrap_err();
            assert!(e.to_string().contains("control."), "{bad}: {e}");
        }
    }

    #[test]
    fn telemetry_settings_are_read_and_checked() {
        let c =
            Config::from_toml("[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\n").unwrap();
        c.validate().unwrap();
        let url = c.telemetry.traces_url().unwrap().unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(c.telemetry.service_name, "pilot-bridge");
        let full = TelemetryConfig {
            otlp_endpoint: "https://otel.example/custom/traces".into(),
            ..TelemetryConfig::default()
        };
        assert_eq!(
            full.traces_url().unwrap().unwrap().as_str(),
            "https://otel.example/custom/traces"
        );
        assert!(TelemetryConfig::default().traces_url().unwrap().is_none());
        for bad in [
            "[telemetry]\notlp_endpoint = \"collector:4318\"\n",
            "[telemetry]\notlp_endpoint = \"ftp://collector\"\n",
            "[telemetry]\nservice_name = \"\"\n",
        ] {
            let e = Config::from_toml(bad).unwrap().validate().unwrap_err();
            assert!(e.to_string().contains("telemetry."), "{bad}: {e}");
        }
    }

    #[test]
    fn partial_files_keep_other_defaults() {
        let c = Config::from_toml("listen = \"0.0.0.0:9000\"\n[limits]\ndefault_rate_limit = 0\n")
            .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.limits.default_rate_limit, 0);
        assert_eq!(c.limits.max_body_bytes, 65536);
        assert_eq!(c.native, NativeConfig::default());
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(Config::from_toml("listn = \"x\"").is_err());
        assert!(Config::from_toml("[limits]\nrate = 3").is_err());
    }

    #[test]
    fn huge_durations_are_refused_with_the_setting_and_its_range() {
        for (field, set) in [
            (
                "native.undo_window_secs",
                (|c: &mut Config| c.native.undo_window_secs = u64::MAX) as fn(&mut Config),
            ),
            ("native.outbox_hold_secs", |c| {
                c.native.outbox_hold_secs = u64::MAX
            }),
            ("native.pending_ttl_secs", |c| {
                c.native.pending_ttl_secs = u64::MAX
            }),
            ("native.idempotency_ttl_secs", |c| {
                c.native.idempotency_ttl_secs = u64::MAX
            }),
            ("websocket.max_message_bytes", |c| {
                c.websocket.max_message_bytes = usize::MAX
            }),
            ("upstream.breaker_open_ms", |c| {
                c.upstream.breaker_open_ms = u64::MAX
            }),
            ("storage.wal_reset_bytes", |c| c.storage.wal_reset_bytes = 0),
            ("upstream.max_response_bytes", |c| {
                c.upstream.max_response_bytes = 10
            }),
        ] {
            let mut c = Config::default();
            set(&mut c);
            let msg = c.validate().unwrap_err().to_string();
            assert!(
                msg.starts_with(&format!("{field} must be between")),
                "{msg}"
            );
        }
        let mut c = Config::default();
        c.native.target_ms = f64::NAN;
        assert!(c.validate().unwrap_err().to_string().contains("target_ms"));
    }

    mod random {
        use proptest::prelude::*;

        use super::*;

        /// Values that probe the edges: zero, one, plausible, and anything up to `u64::MAX`.
        fn num() -> impl Strategy<Value = u64> {
            prop_oneof![
                Just(0u64),
                Just(1),
                0u64..100_000,
                1_000_000u64..10_000_000_000,
                any::<u64>(),
                Just(u64::MAX),
            ]
        }

        /// The default configuration with a random subset of its numbers replaced.
        fn config() -> impl Strategy<Value = Config> {
            (
                prop::collection::vec(prop::option::weighted(0.04, num()), 56),
                prop::option::weighted(0.15, any::<f64>()),
                any::<bool>(),
                prop::option::weighted(0.15, prop::collection::vec(num(), 0..30)),
            )
                .prop_map(|(v, target, upstream, schedule)| {
                    let mut c = Config::default();
                    let mut it = v.into_iter();
                    let mut next = || it.next().flatten();
                    macro_rules! set {
                        ($($field:expr),* $(,)?) => {$(
                            if let Some(x) = next() {
                                $field = x.try_into().unwrap_or_default();
                            }
                        )*};
                    }
                    let (l, st, a, n, w, u) = (
                        &mut c.limits,
                        &mut c.storage,
                        &mut c.auth,
                        &mut c.native,
                        &mut c.websocket,
                        &mut c.upstream,
                    );
                    if let Some(x) = next() {
                        l.default_rate_limit = u32::try_from(x).unwrap_or(u32::MAX);
                    }
                    if let Some(x) = next() {
                        n.job_max_attempts = u32::try_from(x).unwrap_or(u32::MAX);
                    }
                    if let Some(x) = next() {
                        u.read_retries = u32::try_from(x).unwrap_or(u32::MAX);
                    }
                    if let Some(x) = next() {
                        u.breaker_failure_threshold = u32::try_from(x).unwrap_or(u32::MAX);
                    }
                    set!(
                        l.max_body_bytes,
                        st.readers,
                        st.wal_reset_bytes,
                        a.key_cache_ttl_secs,
                        a.negative_cache_ttl_ms,
                        n.pending_ttl_secs,
                        n.undo_window_secs,
                        n.idempotency_wait_ms,
                        n.idempotency_ttl_secs,
                        n.idempotency_max_bytes,
                        n.dedupe_window_secs,
                        n.outbox_hold_secs,
                        n.read_cache_ms,
                        n.job_retry_base_ms,
                        w.ping_interval_secs,
                        w.max_message_bytes,
                        w.max_in_flight,
                        w.outbound_queue,
                        w.auth_timeout_secs,
                        w.max_connections_per_org,
                        w.max_connections,
                        u.connect_timeout_ms,
                        u.request_timeout_ms,
                        u.turn_budget_ms,
                        u.retry_backoff_ms,
                        u.breaker_open_ms,
                        u.read_cache_ms,
                        u.key_cache_ttl_secs,
                        u.pool_max_idle_per_host,
                        u.max_response_bytes,
                        w.write_timeout_secs,
                        w.max_unauthenticated,
                        w.max_auth_failures_per_connection,
                        w.max_auth_failures_per_address,
                        w.ack_after_ms,
                        w.event_buffer,
                    );
                    let (ctl, chat, hooks) = (&mut c.control, &mut c.chat, &mut c.webhooks);
                    set!(
                        ctl.event_retention_secs,
                        ctl.max_replay_events,
                        chat.max_rounds,
                        chat.deadline_ms,
                        chat.history_turns,
                        chat.max_message_chars,
                        chat.thread_ttl_days,
                        hooks.timeout_secs,
                        hooks.max_concurrency,
                        c.state.redis_timeout_ms,
                    );
                    if let Some(s) = schedule {
                        c.webhooks.retry_schedule_secs = s;
                    }
                    if let Some(x) = next() {
                        c.shutdown_delay_ms = x;
                    }
                    if let Some(t) = target {
                        c.native.target_ms = t;
                    }
                    if upstream {
                        c.backend = BackendKind::Upstream;
                        c.upstream.base_url = "http://127.0.0.1:9".into();
                    }
                    c
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            /// `validate()` never panics and names the setting it refuses; whatever it accepts
            /// builds a running application state without panicking (huge durations used to
            /// overflow clocks in the caches and timers built from them).
            #[test]
            fn validate_refuses_clearly_and_what_it_accepts_can_start(c in config()) {
                match c.validate() {
                    Err(e) => {
                        let msg = e.to_string();
                        prop_assert!(msg.contains("must") || msg.contains("required"), "{}", msg);
                    }
                    Ok(()) => {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .unwrap();
                        let (_dir, store) = crate::store::test_store();
                        let _ = c.job_retry().backoff(u32::MAX);
                        // Started for real (its workers' timers are built from these
                        // settings) and asked once; the drain delay is not under test.
                        let mut c = c;
                        c.shutdown_delay_ms = 0;
                        let answer: Result<u16, String> = rt.block_on(async move {
                            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                                .await
                                .map_err(|e| e.to_string())?;
                            let server = crate::server::start_on(listener, c, store)
                                .await
                                .map_err(|e| e.to_string())?;
                            let url = format!("http://{}/healthz", server.addr);
                            let status = reqwest::get(url).await.map(|r| r.status().as_u16());
                            server.shutdown().await;
                            status.map_err(|e| e.to_string())
                        });
                        prop_assert_eq!(answer, Ok(200));
                    }
                }
            }
        }
    }

    #[test]
    fn state_section_parses_and_is_checked() {
        let c = Config::from_toml(
            "[state]\nbackend = \"redis\"\nredis_url = \"redis://10.0.0.5:6380/2\"\n",
        )
        .unwrap();
        assert_eq!(c.state.backend, StateBackend::Redis);
        assert_eq!(c.state.redis_url, "redis://10.0.0.5:6380/2");
        c.validate().unwrap();
        assert_eq!(Config::default().state.backend, StateBackend::Sqlite);
        assert!(Config::from_toml("[state]\nbackend = \"memcached\"\n").is_err());
        let mut bad = c.clone();
        bad.state.redis_url = "http://x".into();
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("redis_url"));
    }

    #[test]
    fn validation_names_the_setting() {
        let mut c = Config::default();
        c.auth.key_cache_ttl_secs = 3600;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("key_cache_ttl_secs"));
    }
}
