//! Per-org write generations for read caches (DESIGN §14): a cached read answer of org X stays
//! valid while X's generation is unchanged, so a write of one org no longer empties every other
//! org's cache. A write whose org is not known (a CLI import, a multi-org sweep not yet scoped)
//! bumps the epoch, which every org's generation includes.
//!
//! Lock-free to read in the common case: a sharded map lookup and two atomic loads.

use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

/// Write counts per org plus one epoch for writes of unknown org.
#[derive(Default)]
pub struct OrgGenerations {
    epoch: AtomicU64,
    /// One counter per org that ever wrote through this process (orgs are few and long-lived).
    orgs: DashMap<String, AtomicU64>,
}

impl OrgGenerations {
    pub fn new() -> Self {
        Self::default()
    }

    /// The current generation of `org`. Both parts only grow, so their sum changes whenever
    /// either does.
    pub fn get(&self, org: &str) -> u64 {
        let own = self
            .orgs
            .get(org)
            .map(|g| g.load(Ordering::Acquire))
            .unwrap_or(0);
        own.wrapping_add(self.epoch.load(Ordering::Acquire))
    }

    /// A write of `org` committed: its cached reads are stale.
    pub fn bump(&self, org: &str) {
        if let Some(g) = self.orgs.get(org) {
            g.fetch_add(1, Ordering::AcqRel);
            return;
        }
        self.orgs
            .entry(org.to_string())
            .or_default()
            .fetch_add(1, Ordering::AcqRel);
    }

    /// A write of unknown org committed: every org's cached reads are stale.
    pub fn bump_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_moves_only_its_own_org_and_the_epoch_moves_all() {
        let g = OrgGenerations::new();
        let (a0, b0) = (g.get("a"), g.get("b"));
        g.bump("a");
        assert_ne!(g.get("a"), a0);
        assert_eq!(g.get("b"), b0, "org b is untouched by org a's write");
        let (a1, b1) = (g.get("a"), g.get("b"));
        g.bump_all();
        assert_ne!(g.get("a"), a1);
        assert_ne!(g.get("b"), b1);
        assert_ne!(g.get("never-wrote"), 0);
    }
}
