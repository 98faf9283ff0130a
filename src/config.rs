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
    /// Directory holding the SQLite database.
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
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
    pub state: StateConfig,
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Interval of server protocol pings; a peer silent for two intervals is disconnected.
    pub ping_interval_secs: u64,
    /// Largest accepted frame/message; larger ones close the connection with 1009.
    pub max_message_bytes: usize,
    /// Requests one connection may have in flight; further frames wait (backpressure).
    pub max_in_flight: usize,
    /// Replies queued for a client that is not reading before it is disconnected.
    pub outbound_queue: usize,
    /// Time a client without an `Authorization` header has to send its auth frame.
    pub auth_timeout_secs: u64,
    /// Open connections allowed per org.
    pub max_connections_per_org: usize,
    /// Open connections allowed in total.
    pub max_connections: usize,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            ping_interval_secs: 20,
            max_message_bytes: 64 * 1024,
            max_in_flight: 32,
            outbound_queue: 64,
            auth_timeout_secs: 5,
            max_connections_per_org: 1_000,
            max_connections: 20_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            log_format: LogFormat::Text,
            shutdown_delay_ms: 0,
            limits: LimitsConfig::default(),
            storage: StorageConfig::default(),
            auth: AuthConfig::default(),
            native: NativeConfig::default(),
            websocket: WebSocketConfig::default(),
            backend: BackendKind::Embedded,
            upstream: UpstreamConfig::default(),
            state: StateConfig::default(),
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

    /// Rejects values that cannot work, with a message naming the setting.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.limits.max_body_bytes < 1024 {
            bail!("limits.max_body_bytes must be at least 1024");
        }
        if self.storage.readers == 0 || self.storage.readers > 64 {
            bail!("storage.readers must be between 1 and 64");
        }
        if self.auth.key_cache_ttl_secs > 60 {
            bail!(
                "auth.key_cache_ttl_secs must be at most 60 so revoked keys stop within a minute"
            );
        }
        if self.auth.negative_cache_ttl_ms > 1000 {
            bail!(
                "auth.negative_cache_ttl_ms must be at most 1000 so new keys work within a second"
            );
        }
        if self.native.target_ms.is_nan() || self.native.target_ms <= 0.0 {
            bail!("native.target_ms must be positive");
        }
        if self.websocket.ping_interval_secs == 0
            || self.websocket.max_in_flight == 0
            || self.websocket.outbound_queue == 0
        {
            bail!(
                "websocket.ping_interval_secs, max_in_flight and outbound_queue must be positive"
            );
        }
        if self.websocket.max_message_bytes < 1024 {
            bail!("websocket.max_message_bytes must be at least 1024");
        }
        if self.shutdown_delay_ms > 60_000 {
            bail!("shutdown_delay_ms must be at most 60000");
        }
        if self.native.pending_ttl_secs == 0 {
            bail!("native.pending_ttl_secs must be positive");
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
        let u = &self.upstream;
        if u.connect_timeout_ms == 0 || u.request_timeout_ms == 0 || u.turn_budget_ms == 0 {
            bail!("upstream.connect_timeout_ms, request_timeout_ms and turn_budget_ms must be positive");
        }
        if u.request_timeout_ms > u.turn_budget_ms {
            bail!("upstream.request_timeout_ms must not exceed upstream.turn_budget_ms");
        }
        if u.turn_budget_ms as f64 >= self.native.target_ms {
            bail!("upstream.turn_budget_ms must be below native.target_ms, so a turn that waited out its upstream budget still answers in time");
        }
        if u.retry_backoff_ms > 1_000 || u.read_retries > 5 {
            bail!("upstream.retry_backoff_ms must be at most 1000 and upstream.read_retries at most 5");
        }
        if u.breaker_failure_threshold == 0 {
            bail!("upstream.breaker_failure_threshold must be at least 1");
        }
        if u.key_cache_ttl_secs > 60 {
            bail!("upstream.key_cache_ttl_secs must be at most 60 so revoked keys stop within a minute");
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

    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            durability: self.storage.durability,
            readers: self.storage.readers,
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
