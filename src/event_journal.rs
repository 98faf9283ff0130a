//! Events that survive reconnects (DESIGN §21): every pushed event gets a `seq`, increasing per
//! API key, and is journaled in the state store (SQLite or Redis) for `[control]
//! event_retention_secs`, so a WebSocket session that authenticates with `resume_after` first
//! hears what it missed, in order, then live events.
//!
//! [`JournaledBus`] stands in front of the in-process [`LocalEventHub`]: `publish` hands the
//! event to one journaling task, which numbers and stores it, then delivers it to the open
//! sessions. One task keeps each key's events in seq order, and an event reaches a live session
//! only after it is in the journal, so a session that subscribes, then reads the journal, misses
//! nothing: what it reads twice it tells apart by seq.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::error::ApiResult;
use crate::events::{Event, EventBus, EventSubscription, LocalEventHub, PublishedEvent};
use crate::state::StateStore;

/// Events waiting for the journaling task; beyond this a burst is delivered live unjournaled
/// rather than held up (and counted in the logs).
const QUEUE: usize = 10_000;

/// How long and how much the journal keeps, per key.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub keep: Duration,
    pub max_len: usize,
}

/// Where a numbered event goes: this process's sessions ([`LocalEventHub`]), and with a store
/// shared by replicas, the other replicas' too (`crate::event_relay`).
pub trait Fanout: Send + Sync + 'static {
    fn fan_out(&self, key_id: &str, event: Arc<PublishedEvent>);
}

impl Fanout for LocalEventHub {
    fn fan_out(&self, key_id: &str, event: Arc<PublishedEvent>) {
        self.deliver(key_id, event);
    }
}

/// An [`EventBus`] that journals every event before delivering it.
pub struct JournaledBus {
    local: Arc<LocalEventHub>,
    tx: mpsc::Sender<Event>,
}

impl JournaledBus {
    /// Starts the journaling task on the current runtime; it ends when the bus is dropped.
    pub fn spawn(
        local: Arc<LocalEventHub>,
        state: Arc<dyn StateStore>,
        retention: Retention,
    ) -> Arc<Self> {
        let fanout: Arc<dyn Fanout> = local.clone();
        Self::spawn_with(local, fanout, state, retention)
    }

    /// Like [`spawn`](Self::spawn), handing each numbered event to `fanout` (which delivers to
    /// `local`'s sessions itself); events the store could not number go to `local` only.
    pub fn spawn_with(
        local: Arc<LocalEventHub>,
        fanout: Arc<dyn Fanout>,
        state: Arc<dyn StateStore>,
        retention: Retention,
    ) -> Arc<Self> {
        let (tx, mut rx) = mpsc::channel::<Event>(QUEUE);
        let hub = local.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let published = Arc::new(journal(state.as_ref(), &event, retention).await);
                match published.seq {
                    Some(_) => fanout.fan_out(&event.key_id, published),
                    None => hub.deliver(&event.key_id, published),
                }
            }
        });
        Arc::new(JournaledBus { local, tx })
    }
}

/// Numbers and stores `event`; when the store fails, the event still goes out live, without a
/// `seq` (open sessions hear it; a reconnecting one cannot replay it).
async fn journal(state: &dyn StateStore, event: &Event, retention: Retention) -> PublishedEvent {
    let body = PublishedEvent::body(event);
    let text = String::from_utf8_lossy(&body);
    match state
        .append_event(&event.key_id, &text, retention.keep, retention.max_len)
        .await
    {
        Ok(seq) => match PublishedEvent::sequenced(&text, seq) {
            Some(p) => p,
            None => PublishedEvent::render(event),
        },
        Err(e) => {
            tracing::warn!(error = %e, event = event.kind.as_str(), "event not journaled");
            PublishedEvent::render(event)
        }
    }
}

impl EventBus for JournaledBus {
    fn publish(&self, event: Event) {
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(
                mpsc::error::TrySendError::Full(event) | mpsc::error::TrySendError::Closed(event),
            ) => {
                tracing::warn!(
                    event = event.kind.as_str(),
                    "event journal queue full; delivered live only"
                );
                self.local.publish(event);
            }
        }
    }

    fn subscribe(&self, key_id: &str) -> EventSubscription {
        self.local.subscribe(key_id)
    }

    fn keys_with_subscribers(&self) -> usize {
        self.local.keys_with_subscribers()
    }
}

/// The journaled events of `key_id` after `after`, oldest first (at most `limit`, the newest).
pub async fn replay(
    state: &dyn StateStore,
    key_id: &str,
    after: u64,
    limit: usize,
) -> ApiResult<Vec<Arc<PublishedEvent>>> {
    let entries = state.events_after(key_id, after, limit).await?;
    Ok(entries
        .into_iter()
        .filter_map(|(seq, body)| PublishedEvent::sequenced(&body, seq).map(Arc::new))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKind;
    use crate::state::sqlite::SqliteState;
    use serde_json::{json, Value};

    fn event(key: &str, n: u32) -> Event {
        Event {
            kind: EventKind::JobCompleted,
            key_id: key.into(),
            data: json!({ "n": n }),
            spoken_summary: format!("Job {n} is done."),
        }
    }

    fn state() -> (tempfile::TempDir, Arc<dyn StateStore>) {
        let (dir, store) = crate::store::test_store();
        (
            dir,
            Arc::new(SqliteState::new(store, 0, Duration::from_secs(3600))),
        )
    }

    fn frame(p: &PublishedEvent) -> Value {
        serde_json::from_slice(&p.frame).expect("frame")
    }

    #[tokio::test]
    async fn events_are_numbered_per_key_journaled_and_delivered_in_order() {
        let (_dir, state) = state();
        let hub = Arc::new(LocalEventHub::new(16));
        let retention = Retention {
            keep: Duration::from_secs(600),
            max_len: 3,
        };
        let bus = JournaledBus::spawn(hub, state.clone(), retention);
        let mut live = bus.subscribe("k1");
        for n in 1..=4 {
            bus.publish(event("k1", n));
        }
        bus.publish(event("k2", 9));
        for want in 1..=4u64 {
            let got = live.recv().await.expect("event");
            assert_eq!(got.seq, Some(want));
            let v = frame(&got);
            assert_eq!(v["seq"], want);
            assert_eq!(v["data"]["n"], want);
            assert_eq!(v["type"], "event");
        }
        // The journal keeps the newest `max_len`, in order; another key counts on its own.
        let replayed = replay(state.as_ref(), "k1", 0, 100).await.expect("replay");
        let seqs: Vec<_> = replayed.iter().map(|p| p.seq).collect();
        assert_eq!(seqs, vec![Some(2), Some(3), Some(4)]);
        let after3 = replay(state.as_ref(), "k1", 3, 100).await.expect("replay");
        assert_eq!(after3.len(), 1);
        assert_eq!(frame(&after3[0])["data"]["n"], 4);
        let limited = replay(state.as_ref(), "k1", 0, 2).await.expect("replay");
        let seqs: Vec<_> = limited.iter().map(|p| p.seq).collect();
        assert_eq!(
            seqs,
            vec![Some(3), Some(4)],
            "the newest when over the limit"
        );
        let mut k2 = Vec::new();
        for _ in 0..50 {
            k2 = replay(state.as_ref(), "k2", 0, 10).await.expect("replay");
            if !k2.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(k2.len(), 1);
        assert_eq!(k2[0].seq, Some(1));
    }

    #[tokio::test]
    async fn expired_events_are_not_replayed_and_seqs_are_never_reused() {
        let (_dir, state) = state();
        let body = String::from_utf8(PublishedEvent::body(&event("k", 1))).expect("utf8");
        let s1 = state
            .append_event("k", &body, Duration::from_millis(1), 10)
            .await
            .expect("append");
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(replay(state.as_ref(), "k", 0, 10)
            .await
            .expect("replay")
            .is_empty());
        assert!(state.prune().await.expect("prune") >= 1);
        let s2 = state
            .append_event("k", &body, Duration::from_secs(60), 10)
            .await
            .expect("append");
        assert_eq!((s1, s2), (1, 2));
    }

    #[tokio::test]
    async fn the_redis_journal_numbers_trims_and_replays_like_sqlite() {
        use crate::state::redis::{test_server::TestRedis, RedisLink, RedisState};
        let Some(redis) = TestRedis::start() else {
            return;
        };
        let link = RedisLink::connect(&redis.url(), Duration::from_secs(2)).expect("link");
        let state: Arc<dyn StateStore> = Arc::new(RedisState::new(link, Duration::from_secs(3600)));
        let hub = Arc::new(LocalEventHub::new(16));
        let retention = Retention {
            keep: Duration::from_secs(600),
            max_len: 3,
        };
        let bus = JournaledBus::spawn(hub, state.clone(), retention);
        let mut live = bus.subscribe("k1");
        for n in 1..=4 {
            bus.publish(event("k1", n));
        }
        for want in 1..=4u64 {
            assert_eq!(live.recv().await.expect("event").seq, Some(want));
        }
        let replayed = replay(state.as_ref(), "k1", 0, 100).await.expect("replay");
        let got: Vec<_> = replayed
            .iter()
            .map(|p| (p.seq, frame(p)["data"]["n"].clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(2), json!(2)),
                (Some(3), json!(3)),
                (Some(4), json!(4))
            ]
        );
        let limited = replay(state.as_ref(), "k1", 2, 1).await.expect("replay");
        assert_eq!(
            limited.iter().map(|p| p.seq).collect::<Vec<_>>(),
            vec![Some(4)]
        );
        // Expired entries are neither replayed nor kept; the counter goes on.
        let body = String::from_utf8(PublishedEvent::body(&event("k3", 1))).expect("utf8");
        let s1 = state
            .append_event("k3", &body, Duration::from_millis(1), 10)
            .await
            .expect("append");
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(replay(state.as_ref(), "k3", 0, 10)
            .await
            .expect("replay")
            .is_empty());
        let s2 = state
            .append_event("k3", &body, Duration::from_secs(60), 10)
            .await
            .expect("append");
        assert_eq!((s1, s2), (1, 2));
        assert_eq!(
            replay(state.as_ref(), "k3", 0, 10)
                .await
                .expect("replay")
                .len(),
            1
        );
    }
}
