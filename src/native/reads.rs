//! Read actions (DESIGN §2, §14): answered from a cache while nothing was written to the
//! caller's org since (its write generation), else resolved by the backend; audited only in
//! `standard` mode or when asked. Reads claim nothing and keep nothing.
//!
//! Generations are per org, so one org's writes leave other orgs' cached answers alone. With
//! replicas sharing a state store (Redis), a read also checks the org's generation there (one
//! GET), so a write through another replica is seen by this replica's next read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::plan::Step;
use super::reply::NativeReply;
use super::request::{ExecutionMode, NativeRequest};
use super::timing::ServerTiming;
use super::Bridge;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};

/// (org, request fingerprint) → the answer and the write generation it was read at.
pub(super) type ReadCache = moka::sync::Cache<(String, [u8; 32]), Arc<CachedRead>>;

pub(super) struct CachedRead {
    generation: Generation,
    reply: NativeReply,
}

/// An org's write generation: this process's count of the org's writes, and the count the
/// replicas share (0 without a shared store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Generation {
    local: u64,
    shared: u64,
}

/// Most cached read answers kept at once.
pub(super) const READ_CACHE_ENTRIES: u64 = 10_000;

/// A read cache holding answers for at most `ttl`.
pub(super) fn read_cache(ttl: Duration) -> ReadCache {
    moka::sync::Cache::builder()
        .max_capacity(READ_CACHE_ENTRIES)
        .time_to_live(ttl)
        .build()
}

impl Bridge {
    /// A read: from the cache when nothing was written since, else resolved by the backend.
    pub(super) async fn read(
        &self,
        p: &Principal,
        req: &NativeRequest,
        timing: &mut ServerTiming,
    ) -> ApiResult<NativeReply> {
        let Some(action) = &req.action else {
            return Err(ApiError::validation("action", "missing"));
        };
        let cache_key = (p.org_id.clone(), req.fingerprint);
        // Read before resolving: a write that lands meanwhile moves it, so an answer that may
        // predate the write is never served after it.
        let generation = match &self.read_cache {
            Some(_) => self.read_generation(&p.org_id, timing).await,
            None => None,
        };
        let cached = generation.and_then(|g| self.cached_read(&cache_key, g, timing));
        let mut reply = match cached {
            Some(reply) => reply,
            None => {
                let step = self
                    .backend
                    .plan(p, action, req.action_json_or_null(), timing)
                    .await?;
                let Step::Reply(mut reply) = step else {
                    return Err(ApiError::internal("a read planned a write"));
                };
                if let (Some(cache), Some(generation)) = (&self.read_cache, generation) {
                    // Serialized once here; every hit then copies bytes, not the tree, and
                    // the cache holds only the text.
                    reply.data.compact();
                    cache.insert(
                        cache_key,
                        Arc::new(CachedRead {
                            generation,
                            reply: reply.clone(),
                        }),
                    );
                }
                reply
            }
        };
        if req.execution_mode == ExecutionMode::Standard || req.audit_read_actions {
            reply.audit_id = self
                .audit_separately(p, req, reply.mode.as_str(), &reply.ids, timing)
                .await;
        }
        Ok(reply)
    }

    /// The org's write generation now. `None` when the shared one cannot be read (Redis
    /// away): the read then bypasses the cache, and still answers.
    async fn read_generation(&self, org: &str, timing: &mut ServerTiming) -> Option<Generation> {
        let local = self.backend.generation(org);
        if !self.backend.shared_generations() {
            return Some(Generation { local, shared: 0 });
        }
        let t = Instant::now();
        let shared = self.state.read_generation(org).await;
        timing.record("state", t.elapsed());
        shared.ok().map(|shared| Generation { local, shared })
    }

    /// A cached answer to the same read, if nothing was written to the org since.
    fn cached_read(
        &self,
        key: &(String, [u8; 32]),
        generation: Generation,
        timing: &mut ServerTiming,
    ) -> Option<NativeReply> {
        let cache = self.read_cache.as_ref()?;
        let t = Instant::now();
        let hit = cache
            .get(key)
            .filter(|c| c.generation == generation)
            .map(|c| c.reply.clone());
        if hit.is_some() {
            timing.record("cache", t.elapsed());
        }
        hit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Plan, Scope};
    use crate::native::reply::TurnOutcome;
    use crate::native::Transport;
    use serde_json::json;

    fn principal(org: &str) -> Arc<Principal> {
        Arc::new(Principal {
            org_id: org.into(),
            key_id: format!("key-{org}"),
            scopes: Scope::ALL.to_vec(),
            plan: Plan::Pro,
            rate_limit: None,
            upstream_key: None,
            two_step: false,
        })
    }

    async fn turn(bridge: &Arc<Bridge>, org: &str, body: serde_json::Value) -> TurnOutcome {
        bridge
            .handle(principal(org), body, ServerTiming::start(), Transport::Http)
            .await
    }

    fn from_cache(o: &TurnOutcome) -> bool {
        o.server_timing.contains("cache;dur=")
    }

    #[tokio::test]
    async fn one_orgs_writes_leave_another_orgs_cached_reads_in_place() {
        let (_dir, store) = crate::store::test_store();
        store.write_sync(|tx| crate::demo::seed(tx)).expect("seed");
        let cfg = crate::config::NativeConfig {
            read_cache_ms: 60_000,
            ..Default::default()
        };
        let bridge = Bridge::new(store.clone(), cfg);
        let lookup = json!({ "action": { "type": "lookup_person", "personName": "John Smith" } });
        let first = turn(&bridge, "demo", lookup.clone()).await;
        assert!(first.result.is_ok(), "{:?}", first.result.err());
        assert!(!from_cache(&first));
        assert!(from_cache(&turn(&bridge, "demo", lookup.clone()).await));

        // Writes of another org (a pipeline write commits through `write_for`): still cached.
        store
            .write_for("other", |_| Ok(()))
            .await
            .expect("other org's write");
        store.touched("other");
        assert!(from_cache(&turn(&bridge, "demo", lookup.clone()).await));
        // An audited read and an ask (a pending action) of the org itself: still cached.
        let audited = turn(
            &bridge,
            "demo",
            json!({ "action": { "type": "lookup_person", "personName": "Sarah Chen" },
                    "executionMode": "standard" }),
        )
        .await;
        assert!(audited.result.is_ok());
        let ask = turn(
            &bridge,
            "demo",
            json!({ "action": { "type": "pause_campaign", "campaignRef": "Seed founders" } }),
        )
        .await;
        assert_eq!(
            ask.result.as_ref().map(|r| r.mode.as_str()).ok(),
            Some("confirmation_required")
        );
        assert!(from_cache(&turn(&bridge, "demo", lookup.clone()).await));

        // The org's own write: the next read is fresh.
        let w = turn(
            &bridge,
            "demo",
            json!({ "action": { "type": "mark_status", "contactRef": "John Smith", "status": "interested" } }),
        )
        .await;
        assert!(w.result.is_ok(), "{:?}", w.result.err());
        let after = turn(&bridge, "demo", lookup.clone()).await;
        assert!(!from_cache(&after));
        let spoken = after.result.expect("read").spoken_summary;
        assert!(spoken.contains("Status is interested"), "{spoken}");
        // A write of unknown org (a bulk import) invalidates every org.
        assert!(from_cache(&turn(&bridge, "demo", lookup.clone()).await));
        store.write_sync(|_| Ok(())).expect("unscoped write");
        assert!(!from_cache(&turn(&bridge, "demo", lookup).await));
    }
}
