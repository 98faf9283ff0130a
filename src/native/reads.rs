//! Read actions (DESIGN §2, §14): answered from a cache while nothing was written through
//! the backend since (its write generation), else resolved by the backend; audited only in
//! `standard` mode or when asked. Reads claim nothing and keep nothing.

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
    generation: u64,
    reply: NativeReply,
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
        let mut reply = match self.cached_read(&cache_key, timing) {
            Some(reply) => reply,
            None => {
                let generation = self.backend.generation();
                let step = self
                    .backend
                    .plan(p, action, req.action_json_or_null(), timing)
                    .await?;
                let Step::Reply(reply) = step else {
                    return Err(ApiError::internal("a read planned a write"));
                };
                if let Some(cache) = &self.read_cache {
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

    /// A cached answer to the same read, if nothing was written through this server since.
    fn cached_read(
        &self,
        key: &(String, [u8; 32]),
        timing: &mut ServerTiming,
    ) -> Option<NativeReply> {
        let cache = self.read_cache.as_ref()?;
        let t = Instant::now();
        let hit = cache
            .get(key)
            .filter(|c| c.generation == self.backend.generation())
            .map(|c| c.reply.clone());
        if hit.is_some() {
            timing.record("cache", t.elapsed());
        }
        hit
    }
}
