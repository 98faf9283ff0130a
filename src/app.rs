//! The shared application state every transport hands to the core: configuration, the store,
//! authentication and rate limiting, and the readiness flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::auth::rate_limit::RateLimiter;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::store::Store;

pub struct App {
    pub config: Config,
    pub store: Store,
    pub auth: Authenticator,
    pub limiter: RateLimiter,
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
    ) -> AppState {
        Arc::new(App {
            auth: Authenticator::new(store.clone(), &config.auth),
            limiter: RateLimiter::new(config.limits.default_rate_limit),
            config,
            store,
            metrics,
            ready: AtomicBool::new(false),
        })
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}
