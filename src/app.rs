//! The shared application state every transport hands to the core: configuration, the store,
//! the backend (embedded or upstream), authentication and rate limiting, and the readiness flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::auth::connections::{AuthFailureLimiter, ConnectionLimiter};
use crate::auth::rate_limit::{RateDecision, RateLimiter};
use crate::auth::{Authenticator, Principal};
use crate::config::{BackendKind, Config, StateBackend};
use crate::error::ApiError;
use crate::events::{EventBus, LocalEventHub};
use crate::native::Bridge;
use crate::state::redis::{RedisLink, RedisState};
use crate::state::StateStore;
use crate::store::Store;
use crate::upstream::Upstream;

pub struct App {
    pub config: Config,
    pub store: Store,
    pub auth: Authenticator,
    pub limiter: RateLimiter,
    pub bridge: Arc<Bridge>,
    /// `POST /chat`: threads, credits and the configured provider.
    pub chat: crate::chat::Chat,
    pub ws_connections: Arc<ConnectionLimiter>,
    /// Failed WebSocket auth frames per source address.
    pub ws_auth_failures: AuthFailureLimiter,
    /// Server-pushed events, per API key, for open WebSocket sessions.
    pub events: Arc<dyn EventBus>,
    /// `/mcp`: the SDK's service and the parsed `[mcp]` allow-lists.
    pub mcp: crate::mcp::Mcp,
    /// Flips to true when shutdown begins; long-lived connections watch it to close cleanly.
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Renders `/metrics`; `None` when no recorder is installed (some tests).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ready: AtomicBool,
}

pub type AppState = Arc<App>;

impl App {
    pub fn new(
        config: Config,
        store: Store,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> anyhow::Result<AppState> {
        // With Redis, conversation state and the rate windows are shared with other replicas.
        let redis = match config.state.backend {
            StateBackend::Sqlite => None,
            StateBackend::Redis => Some(RedisLink::connect(
                &config.state.redis_url,
                std::time::Duration::from_millis(config.state.redis_timeout_ms),
            )?),
        };
        let shared_state = redis.as_ref().map(|link| {
            let retention = Bridge::state_retention(&config.native);
            Arc::new(RedisState::new(link.clone(), retention)) as Arc<dyn StateStore>
        });
        let native = config.native.clone();
        let (auth, bridge) = match config.backend {
            BackendKind::Embedded => (
                Authenticator::new(store.clone(), &config.auth)
                    .with_two_step_keys(&config.control.two_step_key_ids),
                match shared_state {
                    Some(state) => Bridge::embedded_with_state(store.clone(), native, state),
                    None => Bridge::new(store.clone(), native),
                },
            ),
            BackendKind::Upstream => {
                let client = Arc::new(Upstream::new(&config.upstream)?);
                (
                    Authenticator::upstream(
                        client.clone(),
                        &config.auth,
                        config.upstream.key_cache_ttl_secs,
                    )
                    .with_two_step_keys(&config.control.two_step_key_ids),
                    match shared_state {
                        Some(state) => Bridge::upstream_with_state(native, client, state),
                        None => Bridge::upstream(store.clone(), native, client),
                    },
                )
            }
        };
        let limiter = match redis.clone() {
            Some(link) => RateLimiter::shared(config.limits.default_rate_limit, link),
            None => RateLimiter::new(config.limits.default_rate_limit),
        };
        let chat = crate::chat::Chat::new(store.clone(), bridge.clone(), &config.chat)?;
        let events = event_bus(&config, &bridge, redis.clone());
        let mcp = crate::mcp::Mcp::new(&config, bridge.clone()).map_err(anyhow::Error::msg)?;
        Ok(Arc::new(App {
            mcp,
            chat,
            auth,
            limiter,
            bridge,
            ws_connections: match redis {
                // The per-org cap counted across replicas (best effort).
                Some(link) => ConnectionLimiter::shared(
                    config.websocket.max_connections_per_org,
                    config.websocket.max_connections,
                    config.websocket.max_unauthenticated,
                    link,
                ),
                None => ConnectionLimiter::new(
                    config.websocket.max_connections_per_org,
                    config.websocket.max_connections,
                    config.websocket.max_unauthenticated,
                ),
            },
            ws_auth_failures: AuthFailureLimiter::new(
                config.websocket.max_auth_failures_per_address,
            ),
            events,
            shutdown: tokio::sync::watch::channel(false).0,
            config,
            store,
            metrics,
            ready: AtomicBool::new(false),
        }))
    }

    /// The upstream client when `backend = "upstream"`.
    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        self.bridge.upstream_client()
    }

    /// Authenticates a caller and counts the request against its org's quota. Bad credentials
    /// are rejected before the limiter, so they never spend an org's quota.
    pub async fn admit(
        &self,
        authorization: Option<&str>,
    ) -> Result<(Arc<Principal>, RateDecision), (ApiError, Option<RateDecision>)> {
        let principal = self
            .auth
            .authenticate_header(authorization)
            .await
            .map_err(|e| (e, None))?;
        let decision = self
            .charge_shared(&principal, "http")
            .await
            .map_err(|(e, d)| (e, Some(d)))?;
        Ok((principal, decision))
    }

    /// Like [`charge`](Self::charge), counted in the window shared by replicas when the state
    /// backend is Redis (this replica's own window if Redis does not answer).
    pub async fn charge_shared(
        &self,
        principal: &Principal,
        transport: &'static str,
    ) -> Result<RateDecision, (ApiError, RateDecision)> {
        let decision = self
            .limiter
            .check_shared(&principal.org_id, principal.rate_limit)
            .await;
        if decision.allowed {
            return Ok(decision);
        }
        crate::telemetry::rate_limited(transport);
        Err((crate::auth::rate_limit::rate_limited(&decision), decision))
    }

    /// Counts one request of an authenticated caller against its org's quota, over any
    /// transport (`transport` labels the metric). Over quota: the 429 error and the decision.
    /// This replica's window only; [`charge_shared`](Self::charge_shared) counts across replicas.
    pub fn charge(
        &self,
        principal: &Principal,
        transport: &'static str,
    ) -> Result<RateDecision, (ApiError, RateDecision)> {
        let decision = self.limiter.check(&principal.org_id, principal.rate_limit);
        if decision.allowed {
            return Ok(decision);
        }
        crate::telemetry::rate_limited(transport);
        Err((crate::auth::rate_limit::rate_limited(&decision), decision))
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Starts shutting down: not ready any more, and long-lived connections are told to close.
    pub fn begin_shutdown(&self) {
        self.set_ready(false);
        self.shutdown.send_replace(true);
    }

    /// Resolves once shutdown has begun.
    pub fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// Pushed events, journaled in the state store for `resume_after` (DESIGN §21), and relayed to
/// the other replicas over Redis pub/sub when the state is shared there. Without a runtime to
/// run the journaling task on (some unit tests build an `App` outside one), events are
/// delivered live only.
fn event_bus(config: &Config, bridge: &Arc<Bridge>, redis: Option<RedisLink>) -> Arc<dyn EventBus> {
    let local = Arc::new(LocalEventHub::new(config.websocket.event_buffer));
    if tokio::runtime::Handle::try_current().is_err() {
        return local;
    }
    let retention = crate::event_journal::Retention {
        keep: std::time::Duration::from_secs(config.control.event_retention_secs),
        max_len: config.control.max_replay_events,
    };
    let state = bridge.state().clone();
    match redis {
        Some(link) => {
            let relay = crate::event_relay::EventRelay::spawn(
                local.clone(),
                state.clone(),
                link,
                config.control.max_replay_events,
            );
            crate::event_journal::JournaledBus::spawn_with(local, relay, state, retention)
        }
        None => crate::event_journal::JournaledBus::spawn(local, state, retention),
    }
}
