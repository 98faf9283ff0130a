//! Pending dangerous actions awaiting confirmation (DESIGN §6). In memory by design: a pending
//! action lives for minutes and is tied to the process that asked the question.
//!
//! Expiry is judged with tokio's clock (so tests can pause time); entries stay in the map a while
//! after expiring so a late confirmation gets `PENDING_ACTION_EXPIRED` rather than "not found".

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::plan::Plan;

pub struct PendingAction {
    pub id: String,
    pub org_id: String,
    pub key_id: String,
    pub plan: Plan,
    /// The action as first sent, for the audit record of the confirmed execution.
    pub action_json: serde_json::Value,
    pub transcript: Option<String>,
    pub expires_at: Instant,
    /// RFC 3339 form of `expires_at`, as told to the client.
    pub expires_at_wall: String,
    cancelled: AtomicBool,
    /// Confirmed and its outcome stored: no longer awaiting an answer (it still replays).
    settled: AtomicBool,
}

impl PendingAction {
    pub fn action_type(&self) -> &'static str {
        self.plan.action_type()
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Marks the action as answered: it ran (or failed for good) and only replays from now on.
    pub fn settle(&self) {
        self.settled.store(true, Ordering::Release);
    }
}

pub enum Lookup {
    Open(Arc<PendingAction>),
    Expired(Arc<PendingAction>),
    Cancelled(Arc<PendingAction>),
    NotFound,
}

#[derive(Clone)]
pub struct PendingStore {
    ttl: Duration,
    entries: moka::sync::Cache<String, Arc<PendingAction>>,
}

/// How long an expired entry is remembered, to tell "expired" from "never existed".
const TOMBSTONE: Duration = Duration::from_secs(3600);

impl PendingStore {
    pub fn new(ttl: Duration) -> Self {
        PendingStore {
            ttl,
            entries: moka::sync::Cache::builder()
                .max_capacity(200_000)
                .time_to_live(ttl + TOMBSTONE)
                .build(),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn insert(
        &self,
        org_id: &str,
        key_id: &str,
        plan: Plan,
        action_json: serde_json::Value,
        transcript: Option<String>,
    ) -> Arc<PendingAction> {
        let wall = chrono::Utc::now()
            + chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::minutes(5));
        let p = Arc::new(PendingAction {
            id: uuid::Uuid::new_v4().to_string(),
            org_id: org_id.to_string(),
            key_id: key_id.to_string(),
            plan,
            action_json,
            transcript,
            expires_at: Instant::now() + self.ttl,
            expires_at_wall: crate::ids::to_rfc3339(wall),
            cancelled: AtomicBool::new(false),
            settled: AtomicBool::new(false),
        });
        self.entries.insert(p.id.clone(), p.clone());
        p
    }

    /// Finds a pending action of `org` (another org's id is reported as not found).
    pub fn get(&self, org_id: &str, id: &str) -> Lookup {
        match self.entries.get(id) {
            Some(p) if p.org_id == org_id => {
                if p.is_cancelled() {
                    Lookup::Cancelled(p)
                } else if Instant::now() >= p.expires_at {
                    Lookup::Expired(p)
                } else {
                    Lookup::Open(p)
                }
            }
            _ => Lookup::NotFound,
        }
    }

    /// Cancels an open action; false when it was already cancelled.
    pub fn cancel(&self, p: &PendingAction) -> bool {
        !p.cancelled.swap(true, Ordering::AcqRel)
    }

    /// Pending actions still awaiting an answer (for the gauge).
    pub fn open_count(&self) -> usize {
        let now = Instant::now();
        self.entries
            .iter()
            .filter(|(_, p)| {
                !p.is_cancelled() && !p.settled.load(Ordering::Acquire) && now < p.expires_at
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expires_after_ttl_and_isolates_orgs() {
        let s = PendingStore::new(Duration::from_secs(300));
        let p = s.insert("o", "k", Plan::UndoLast, serde_json::json!({}), None);
        assert!(matches!(s.get("o", &p.id), Lookup::Open(_)));
        assert!(matches!(s.get("other", &p.id), Lookup::NotFound));
        assert!(matches!(s.get("o", "nope"), Lookup::NotFound));
        tokio::time::advance(Duration::from_secs(299)).await;
        assert!(matches!(s.get("o", &p.id), Lookup::Open(_)));
        assert_eq!(s.open_count(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(matches!(s.get("o", &p.id), Lookup::Expired(_)));
        assert_eq!(s.open_count(), 0);
    }

    #[tokio::test]
    async fn cancel_once() {
        let s = PendingStore::new(Duration::from_secs(300));
        let p = s.insert("o", "k", Plan::UndoLast, serde_json::json!({}), None);
        assert!(s.cancel(&p));
        assert!(!s.cancel(&p));
        assert!(matches!(s.get("o", &p.id), Lookup::Cancelled(_)));
    }

    #[tokio::test]
    async fn settled_actions_are_not_awaiting_an_answer() {
        let s = PendingStore::new(Duration::from_secs(300));
        let p = s.insert("o", "k", Plan::UndoLast, serde_json::json!({}), None);
        assert_eq!(s.open_count(), 1);
        p.settle();
        assert_eq!(s.open_count(), 0);
        assert!(
            matches!(s.get("o", &p.id), Lookup::Open(_)),
            "it still replays"
        );
    }
}
