//! Handles of the series recorded on every request, kept by label values so the hot path does
//! not look them up in the registry each time (building the key, hashing it and searching the
//! registry cost more than the increment itself).
//!
//! Every label value here comes from a bounded set (actions, modes, transports, outcomes,
//! route templates, method and status labels), so the maps are bounded too. Handles are kept
//! only once the Prometheus recorder is installed: a handle taken before would belong to the
//! no-op recorder for good.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{OnceLock, RwLock};

use metrics::{Counter, Histogram};

/// Handles by label values, read-mostly: a new label set takes the write lock once.
pub(super) struct Series<K, H> {
    map: RwLock<HashMap<K, H>>,
}

impl<K: Hash + Eq, H: Clone> Series<K, H> {
    fn new() -> Self {
        Series {
            map: RwLock::new(HashMap::new()),
        }
    }

    /// The handle for `key`, registered by `register` the first time.
    pub(super) fn get(&self, key: K, register: impl FnOnce(&K) -> H) -> H {
        if let Ok(map) = self.map.read() {
            if let Some(h) = map.get(&key) {
                return h.clone();
            }
        }
        let h = register(&key);
        if let Ok(mut map) = self.map.write() {
            map.entry(key).or_insert_with(|| h.clone());
        }
        h
    }
}

/// The per-request series.
pub(super) struct Hot {
    /// (action, mode, transport, outcome)
    pub native_requests: Series<(&'static str, &'static str, &'static str, &'static str), Counter>,
    /// (action, mode, transport)
    pub native_time: Series<(&'static str, &'static str, &'static str), Histogram>,
    /// (route, method, status)
    pub http_requests: Series<(&'static str, &'static str, &'static str), Counter>,
    /// (route, method)
    pub http_duration: Series<(&'static str, &'static str), Histogram>,
    /// (operation, backend)
    pub backend_time: Series<(&'static str, &'static str), Histogram>,
    /// Route templates as `'static` strings, one copy per template the router has.
    routes: RwLock<HashMap<Box<str>, &'static str>>,
}

static HOT: OnceLock<Hot> = OnceLock::new();

/// Starts keeping handles; called once the recorder is installed.
pub(super) fn enable() {
    HOT.get_or_init(|| Hot {
        native_requests: Series::new(),
        native_time: Series::new(),
        http_requests: Series::new(),
        http_duration: Series::new(),
        backend_time: Series::new(),
        routes: RwLock::new(HashMap::new()),
    });
}

/// The cached handles, or `None` before the recorder is installed.
pub(super) fn hot() -> Option<&'static Hot> {
    HOT.get()
}

impl Hot {
    /// `route` as a `'static` string. Routes are the router's templates or `unmatched`, never
    /// a client's raw path, so at most one small string per template is ever kept.
    pub(super) fn route_label(&self, route: &str) -> &'static str {
        if let Ok(routes) = self.routes.read() {
            if let Some(r) = routes.get(route) {
                return r;
            }
        }
        match self.routes.write() {
            Ok(mut routes) => routes
                .entry(route.into())
                .or_insert_with(|| Box::leak(route.into())),
            // A poisoned lock (a panic while inserting) cannot have left a half-made entry;
            // count under a fixed label rather than keep a copy of each route per call.
            Err(_) => "unmatched",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_set_is_registered_once() {
        let series: Series<(&str, &str), u32> = Series::new();
        let mut registered = 0;
        for _ in 0..3 {
            series.get(("a", "b"), |_| {
                registered += 1;
                7
            });
        }
        assert_eq!(registered, 1);
        assert_eq!(series.get(("a", "c"), |_| 8), 8);
    }

    #[test]
    fn a_route_template_is_kept_once() {
        let hot = Hot {
            native_requests: Series::new(),
            native_time: Series::new(),
            http_requests: Series::new(),
            http_duration: Series::new(),
            backend_time: Series::new(),
            routes: RwLock::new(HashMap::new()),
        };
        let a = hot.route_label(&String::from("/api/v1/contacts/{id}"));
        let b = hot.route_label(&String::from("/api/v1/contacts/{id}"));
        assert!(std::ptr::eq(a, b));
        assert_eq!(hot.routes.read().map(|r| r.len()).unwrap_or(0), 1);
    }
}
