//! Server-pushed events (DESIGN §17): work that finishes after its turn was answered — a research
//! or enrichment job, a queued message going out or being cancelled, a confirmation expiring —
//! is announced to the open WebSocket sessions of the API key that started it.
//!
//! Producers call [`EventBus::publish`] after the change is committed; sessions call
//! [`EventBus::subscribe`] once authenticated. [`LocalEventHub`] delivers within this process:
//! one bounded tokio broadcast channel per API key that has a subscriber, removed when its last
//! subscriber goes. Several replicas need a bus that forwards between processes (Redis pub/sub):
//! it implements the same trait, publishing to the shared channel and feeding what it receives
//! into a [`LocalEventHub`] for its own sessions.

use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

/// The events a session can receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EventKind {
    /// A research or enrichment job finished; `data` holds the findings.
    #[serde(rename = "job.completed")]
    JobCompleted,
    /// A queued message left the outbox.
    #[serde(rename = "message.sent")]
    MessageSent,
    /// A queued message was cancelled before it went out.
    #[serde(rename = "message.cancelled")]
    MessageCancelled,
    /// A pending confirmation expired unanswered.
    #[serde(rename = "pending.expired")]
    PendingExpired,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::JobCompleted => "job.completed",
            EventKind::MessageSent => "message.sent",
            EventKind::MessageCancelled => "message.cancelled",
            EventKind::PendingExpired => "pending.expired",
        }
    }

    /// The kind named `name` (the wire spelling), if this version knows it.
    pub fn parse(name: &str) -> Option<EventKind> {
        [
            EventKind::JobCompleted,
            EventKind::MessageSent,
            EventKind::MessageCancelled,
            EventKind::PendingExpired,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
    }
}

/// One event for the sessions of one API key.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: EventKind,
    /// The API key that started the work; only its sessions receive the event.
    pub key_id: String,
    pub data: Value,
    /// One or two sentences a voice client can say as they are.
    pub spoken_summary: String,
}

/// An event as it goes out: the frame's JSON, rendered once for every session of the key.
#[derive(Debug)]
pub struct PublishedEvent {
    pub kind: EventKind,
    /// Its place in its key's journal (`crate::event_journal`); `None` when not journaled.
    pub seq: Option<u64>,
    /// `{"type":"event","event":…,"data":…,"spoken_summary":…,"meta":{…}}`
    pub frame: Bytes,
}

#[derive(Serialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    frame_type: &'static str,
    event: EventKind,
    data: &'a Value,
    spoken_summary: &'a str,
    meta: FrameMeta,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
}

#[derive(Serialize)]
struct FrameMeta {
    event_id: String,
    timestamp: String,
}

impl PublishedEvent {
    pub fn render(event: &Event) -> PublishedEvent {
        let json = Self::body(event);
        PublishedEvent {
            kind: event.kind,
            seq: None,
            frame: Bytes::from(json),
        }
    }

    /// The frame's JSON without a `seq`, as the event journal keeps it.
    pub fn body(event: &Event) -> Vec<u8> {
        let frame = Frame {
            frame_type: "event",
            event: event.kind,
            data: &event.data,
            spoken_summary: &event.spoken_summary,
            meta: FrameMeta {
                event_id: format!("evt_{}", uuid::Uuid::new_v4().simple()),
                timestamp: crate::ids::now_rfc3339(),
            },
            seq: None,
        };
        // Serialising a struct of strings and a `Value` cannot fail.
        serde_json::to_vec(&frame).unwrap_or_default()
    }

    /// A journaled event's frame: its stored `body` with its `seq`. `None` for a body this
    /// version cannot read (an event name it does not know).
    pub fn sequenced(body: &str, seq: u64) -> Option<PublishedEvent> {
        let mut frame: serde_json::Map<String, Value> = serde_json::from_str(body).ok()?;
        let kind = frame
            .get("event")
            .and_then(Value::as_str)
            .and_then(EventKind::parse)?;
        frame.insert("seq".into(), Value::from(seq));
        Some(PublishedEvent {
            kind,
            seq: Some(seq),
            frame: Bytes::from(serde_json::to_vec(&frame).ok()?),
        })
    }
}

/// The one field of a rendered frame a relayed event needs read back.
#[derive(serde::Deserialize)]
struct FrameKind<'a> {
    #[serde(borrow)]
    event: &'a str,
}

impl PublishedEvent {
    /// A frame rendered by another replica (`crate::event_relay`), kept as it came. `None` for
    /// one this version cannot read.
    pub fn from_frame(frame: String, seq: u64) -> Option<PublishedEvent> {
        let head: FrameKind<'_> = serde_json::from_str(&frame).ok()?;
        let kind = EventKind::parse(head.event)?;
        Some(PublishedEvent {
            kind,
            seq: Some(seq),
            frame: Bytes::from(frame),
        })
    }
}

/// Where events are published and subscribed to.
pub trait EventBus: Send + Sync {
    /// Delivers `event` to the current subscribers of its key; without any it is dropped (events
    /// are notifications for open sessions, not a durable feed).
    fn publish(&self, event: Event);
    /// Events for `key_id` from now on, until the subscription is dropped.
    fn subscribe(&self, key_id: &str) -> EventSubscription;
    /// API keys with at least one subscriber in this process.
    fn keys_with_subscribers(&self) -> usize;
}

type Channels = DashMap<String, broadcast::Sender<Arc<PublishedEvent>>>;

/// In-process delivery: a broadcast channel per API key with subscribers.
pub struct LocalEventHub {
    channels: Arc<Channels>,
    buffer: usize,
}

impl LocalEventHub {
    /// `buffer`: events kept per key for a subscriber that reads slowly; beyond that it skips
    /// the oldest.
    pub fn new(buffer: usize) -> Self {
        LocalEventHub {
            channels: Arc::new(DashMap::new()),
            buffer: buffer.max(1),
        }
    }
}

impl EventBus for LocalEventHub {
    fn publish(&self, event: Event) {
        let Some(tx) = self.channels.get(&event.key_id).map(|c| c.clone()) else {
            crate::telemetry::event_published(event.kind.as_str(), 0);
            return;
        };
        let published = Arc::new(PublishedEvent::render(&event));
        let delivered = tx.send(published).unwrap_or(0);
        crate::telemetry::event_published(event.kind.as_str(), delivered);
    }

    fn subscribe(&self, key_id: &str) -> EventSubscription {
        self.subscribe_local(key_id)
    }

    fn keys_with_subscribers(&self) -> usize {
        self.channels.len()
    }
}

impl LocalEventHub {
    /// Hands an already rendered event to the current subscribers of `key_id`.
    pub fn deliver(&self, key_id: &str, published: Arc<PublishedEvent>) {
        let kind = published.kind.as_str();
        let Some(tx) = self.channels.get(key_id).map(|c| c.clone()) else {
            crate::telemetry::event_published(kind, 0);
            return;
        };
        let delivered = tx.send(published).unwrap_or(0);
        crate::telemetry::event_published(kind, delivered);
    }

    /// True when `key_id` has a session subscribed in this process.
    pub fn has_subscribers(&self, key_id: &str) -> bool {
        self.channels.contains_key(key_id)
    }

    fn subscribe_local(&self, key_id: &str) -> EventSubscription {
        let rx = self
            .channels
            .entry(key_id.to_string())
            .or_insert_with(|| broadcast::channel(self.buffer).0)
            .subscribe();
        EventSubscription {
            rx,
            key_id: key_id.to_string(),
            channels: self.channels.clone(),
        }
    }
}

/// A session's stream of events. Dropping the last subscription of a key removes its channel,
/// so closed sessions leave nothing behind.
pub struct EventSubscription {
    rx: broadcast::Receiver<Arc<PublishedEvent>>,
    key_id: String,
    channels: Arc<Channels>,
}

impl EventSubscription {
    /// The next event; events this subscriber fell too far behind on are skipped (and counted).
    /// `None` only if the hub itself is gone.
    pub async fn recv(&mut self) -> Option<Arc<PublishedEvent>> {
        loop {
            match self.rx.recv().await {
                Ok(e) => return Some(e),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    crate::telemetry::events_skipped(n);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl Drop for EventSubscription {
    fn drop(&mut self) {
        // Our own receiver is still alive here, so "only ours left" is a count of one. The
        // check and the removal happen under the map's shard lock, which `subscribe` also takes,
        // so a session subscribing at the same moment either keeps the channel alive or makes
        // a new one.
        self.channels
            .remove_if(&self.key_id, |_, tx| tx.receiver_count() <= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(key: &str, kind: EventKind) -> Event {
        Event {
            kind,
            key_id: key.into(),
            data: json!({ "job": { "id": "j1" } }),
            spoken_summary: "Research on Notion is ready.".into(),
        }
    }

    #[tokio::test]
    async fn events_reach_only_the_subscribers_of_their_key() {
        let hub = LocalEventHub::new(8);
        let mut a1 = hub.subscribe("key_a");
        let mut a2 = hub.subscribe("key_a");
        let mut b = hub.subscribe("key_b");
        hub.publish(event("key_a", EventKind::JobCompleted));
        for sub in [&mut a1, &mut a2] {
            let e = sub.recv().await.unwrap();
            let v: Value = serde_json::from_slice(&e.frame).unwrap();
            assert_eq!(v["type"], "event");
            assert_eq!(v["event"], "job.completed");
            assert_eq!(v["data"]["job"]["id"], "j1");
            assert_eq!(v["spoken_summary"], "Research on Notion is ready.");
            assert!(v["meta"]["event_id"].as_str().unwrap().starts_with("evt_"));
            assert!(v["meta"]["timestamp"].is_string());
            assert!(v.get("id").is_none());
        }
        assert!(b.rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn channels_are_removed_with_their_last_subscriber() {
        let hub = LocalEventHub::new(8);
        let a1 = hub.subscribe("key_a");
        let a2 = hub.subscribe("key_a");
        assert_eq!(hub.keys_with_subscribers(), 1);
        drop(a1);
        assert_eq!(hub.keys_with_subscribers(), 1);
        drop(a2);
        assert_eq!(hub.keys_with_subscribers(), 0);
        // Publishing without subscribers creates nothing.
        hub.publish(event("key_a", EventKind::MessageSent));
        assert_eq!(hub.keys_with_subscribers(), 0);
    }

    #[tokio::test]
    async fn a_slow_subscriber_skips_the_oldest_events() {
        let hub = LocalEventHub::new(2);
        let mut a = hub.subscribe("key_a");
        for kind in [
            EventKind::JobCompleted,
            EventKind::MessageSent,
            EventKind::MessageCancelled,
        ] {
            hub.publish(event("key_a", kind));
        }
        assert_eq!(a.recv().await.unwrap().kind, EventKind::MessageSent);
        assert_eq!(a.recv().await.unwrap().kind, EventKind::MessageCancelled);
    }
}
