//! Live events across replicas (DESIGN §16, §17): with the Redis state store, an event
//! journaled on one replica reaches the open sessions of its API key on every replica, once and
//! in seq order.
//!
//! The journal (`crate::event_journal`, kept in Redis) stays the source of truth; pub/sub only
//! carries "key K has event N, and this is its frame". Each replica:
//!
//! - publishes every event it journals on one channel, [`CHANNEL`], after handing it to its own
//!   sessions;
//! - keeps one dedicated subscriber connection to that channel (reconnecting by itself) and
//!   passes on the events of keys that have a session here, skipping its own;
//! - runs every delivery, local or relayed, through one task that remembers the highest seq
//!   delivered per key: a repeated or older seq is dropped, and a jump (an event from another
//!   replica overtook an earlier one, or the subscriber missed some while Redis was away) is
//!   filled from the journal first. After each (re)subscription every watched key is caught up
//!   from the journal the same way.
//!
//! One channel rather than one per org or key: an event knows its API key, not its org; a
//! replica subscribes once however many sessions it holds (no SUBSCRIBE per socket); and classic
//! pub/sub reaches every node of a Redis Cluster whatever the channel's slot, so a hash tag
//! would buy nothing. The price is that every replica receives every event and drops those of
//! keys without a session here after one map lookup; events are rare (finished jobs, sent
//! messages, expiries).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::event_journal::Fanout;
use crate::events::{LocalEventHub, PublishedEvent};
use crate::state::redis::RedisLink;
use crate::state::StateStore;

/// The pub/sub channel every replica publishes its journaled events on.
pub const CHANNEL: &str = "pb:events";

/// Deliveries waiting for the relay task; beyond this a relayed event is dropped (a session
/// resuming with `resume_after` still reads it from the journal).
const QUEUE: usize = 10_000;

/// Subscriber reconnect backoff while Redis is away.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// How often the subscriber connection is pinged, so a silently dead one is replaced.
const PING_EVERY: Duration = Duration::from_secs(5);

/// Relay rounds between sweeps of per-key state whose sessions have all gone.
const SWEEP_EVERY: u32 = 1024;

/// What goes over the channel.
#[derive(Serialize, Deserialize)]
struct Wire {
    /// The publishing replica, which delivered the event to its own sessions already.
    origin: String,
    key: String,
    seq: u64,
    /// The rendered frame, `seq` included.
    frame: String,
}

enum Job {
    /// Journaled here: deliver, then publish.
    Local(String, Arc<PublishedEvent>),
    /// Published by another replica.
    Remote(String, Arc<PublishedEvent>),
    /// The subscription is (re)established: catch every watched key up from the journal.
    Resync,
}

/// The [`Fanout`] of a replica sharing Redis: delivers here and to the other replicas.
pub struct EventRelay {
    tx: mpsc::Sender<Job>,
    hub: Arc<LocalEventHub>,
}

impl EventRelay {
    /// Starts the relay task and the subscriber on the current runtime; both end when the
    /// relay is dropped. `catch_up` bounds the events read from the journal to fill one gap.
    pub fn spawn(
        hub: Arc<LocalEventHub>,
        state: Arc<dyn StateStore>,
        link: RedisLink,
        catch_up: usize,
    ) -> Arc<Self> {
        let origin = uuid::Uuid::new_v4().simple().to_string();
        let (tx, rx) = mpsc::channel(QUEUE);
        let gate = Gate {
            hub: hub.clone(),
            state,
            link: link.clone(),
            origin: origin.clone(),
            last: HashMap::new(),
            catch_up: catch_up.max(1),
        };
        tokio::spawn(gate.run(rx));
        tokio::spawn(subscribe(link, origin, hub.clone(), tx.downgrade()));
        Arc::new(EventRelay { tx, hub })
    }
}

impl Fanout for EventRelay {
    fn fan_out(&self, key_id: &str, event: Arc<PublishedEvent>) {
        if let Err(e) = self.tx.try_send(Job::Local(key_id.to_string(), event)) {
            // The relay is swamped: this replica's sessions still hear it; other replicas'
            // sessions find it in the journal when they resume.
            tracing::warn!("event relay queue full; event delivered on this replica only");
            if let Job::Local(key, event) = e.into_inner() {
                self.hub.deliver(&key, event);
            }
        }
    }
}

/// The relay task's state: per key with a session here, the highest seq delivered.
struct Gate {
    hub: Arc<LocalEventHub>,
    state: Arc<dyn StateStore>,
    link: RedisLink,
    origin: String,
    last: HashMap<String, u64>,
    catch_up: usize,
}

impl Gate {
    async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut rounds: u32 = 0;
        while let Some(job) = rx.recv().await {
            match job {
                Job::Local(key, event) => {
                    self.admit(&key, event.clone()).await;
                    self.publish(&key, &event).await;
                }
                Job::Remote(key, event) => {
                    crate::telemetry::event_relayed("received");
                    self.admit(&key, event).await;
                }
                Job::Resync => self.resync().await,
            }
            rounds = rounds.wrapping_add(1);
            if rounds.is_multiple_of(SWEEP_EVERY) {
                let hub = &self.hub;
                self.last.retain(|key, _| hub.has_subscribers(key));
            }
        }
    }

    /// Delivers `event` to this replica's sessions of `key` unless they had it, after any
    /// events between the last delivered one and it.
    async fn admit(&mut self, key: &str, event: Arc<PublishedEvent>) {
        let Some(seq) = event.seq else {
            self.hub.deliver(key, event);
            return;
        };
        if !self.hub.has_subscribers(key) {
            self.last.remove(key);
            return;
        }
        match self.last.get(key).copied() {
            Some(last) if seq <= last => {
                crate::telemetry::event_relayed("duplicate");
                return;
            }
            Some(last) if seq > last + 1 => self.fill(key, last, seq).await,
            _ => {}
        }
        if self.last.get(key).is_some_and(|&last| seq <= last) {
            return;
        }
        self.hub.deliver(key, event);
        self.last.insert(key.to_string(), seq);
    }

    /// Delivers the journaled events of `key` after `last` and before `before` (all of them
    /// when `before` is `None`). A journal that does not answer leaves the gap: sessions that
    /// resume with `resume_after` read it later.
    async fn fill(&mut self, key: &str, last: u64, before: u64) {
        match crate::event_journal::replay(self.state.as_ref(), key, last, self.catch_up).await {
            Ok(events) => {
                for event in events {
                    let Some(seq) = event.seq else { continue };
                    if seq <= self.last.get(key).copied().unwrap_or(0) || seq >= before {
                        continue;
                    }
                    crate::telemetry::event_relayed("caught_up");
                    self.hub.deliver(key, event);
                    self.last.insert(key.to_string(), seq);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "event relay: missed events could not be read");
            }
        }
    }

    /// After a (re)subscription: what was journaled meanwhile for the keys watched here. A
    /// counter below what was delivered means Redis lost its data (restarted without
    /// persistence): the key starts over from there, so new events are not taken for repeats.
    async fn resync(&mut self) {
        let hub = &self.hub;
        self.last.retain(|key, _| hub.has_subscribers(key));
        let watched: Vec<(String, u64)> = self.last.iter().map(|(k, v)| (k.clone(), *v)).collect();
        for (key, last) in watched {
            let seq_key = crate::state::redis::event_seq_key(&key);
            let counter: ApiCounter = self
                .link
                .call("event_relay", |mut c| async move {
                    redis::cmd("GET").arg(seq_key).query_async(&mut c).await
                })
                .await;
            let last = match counter {
                Ok(Some(now)) if now >= last => last,
                Ok(now) => {
                    let now = now.unwrap_or(0);
                    self.last.insert(key.clone(), now);
                    now
                }
                Err(_) => continue,
            };
            self.fill(&key, last, u64::MAX).await;
        }
    }

    /// Tells the other replicas. Failing costs them the live event, not the journal entry.
    async fn publish(&self, key: &str, event: &PublishedEvent) {
        let Some(seq) = event.seq else { return };
        let Ok(frame) = std::str::from_utf8(&event.frame) else {
            return;
        };
        let wire = Wire {
            origin: self.origin.clone(),
            key: key.to_string(),
            seq,
            frame: frame.to_string(),
        };
        let Ok(payload) = serde_json::to_string(&wire) else {
            return;
        };
        let sent = self
            .link
            .call("event_publish", |mut c| async move {
                redis::cmd("PUBLISH")
                    .arg(CHANNEL)
                    .arg(payload)
                    .query_async::<i64>(&mut c)
                    .await
            })
            .await;
        crate::telemetry::event_relayed(match sent {
            Ok(_) => "published",
            Err(_) => "publish_failed",
        });
    }
}

type ApiCounter = crate::error::ApiResult<Option<u64>>;

/// The subscriber: one dedicated connection to [`CHANNEL`], re-established whenever it drops,
/// until the relay is gone.
async fn subscribe(
    link: RedisLink,
    origin: String,
    hub: Arc<LocalEventHub>,
    relay: mpsc::WeakSender<Job>,
) {
    let mut backoff = RECONNECT_MIN;
    let mut reported = false;
    loop {
        if relay.upgrade().is_none() {
            return;
        }
        match listen(&link, &origin, &hub, &relay).await {
            Ok(Listen::RelayGone) => return,
            Ok(Listen::Lost) => {
                backoff = RECONNECT_MIN;
                reported = false;
                tracing::warn!("event relay: subscription lost; reconnecting");
            }
            Err(e) => {
                if !reported {
                    tracing::warn!(error = %e, "event relay: cannot subscribe; retrying");
                    reported = true;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

enum Listen {
    /// The connection ended or stopped answering pings.
    Lost,
    RelayGone,
}

/// Subscribes once and relays until the connection is lost.
async fn listen(
    link: &RedisLink,
    origin: &str,
    hub: &LocalEventHub,
    relay: &mpsc::WeakSender<Job>,
) -> redis::RedisResult<Listen> {
    let (mut sink, mut stream) = link.pubsub().await?.split();
    match tokio::time::timeout(link.timeout(), sink.subscribe(CHANNEL)).await {
        Ok(r) => r?,
        Err(_) => return Ok(Listen::Lost),
    }
    tracing::debug!("event relay subscribed");
    // Whatever was journaled while this replica was not listening.
    match relay.upgrade() {
        Some(tx) => {
            let _ = tx.send(Job::Resync).await;
        }
        None => return Ok(Listen::RelayGone),
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else { return Ok(Listen::Lost) };
                let Some(tx) = relay.upgrade() else { return Ok(Listen::RelayGone) };
                if let Some((key, event)) = incoming(msg.get_payload_bytes(), origin, hub) {
                    if tx.try_send(Job::Remote(key, event)).is_err() {
                        tracing::warn!("event relay queue full; a relayed event was dropped");
                    }
                }
            }
            _ = ping.tick() => {
                if relay.upgrade().is_none() {
                    return Ok(Listen::RelayGone);
                }
                if !alive(&mut sink, link.timeout()).await {
                    return Ok(Listen::Lost);
                }
            }
        }
    }
}

/// True when the subscribed connection answers a PING within `wait`. (Subscribed, Redis
/// answers `["pong", ""]`, not `PONG`: any answer counts.)
async fn alive(sink: &mut redis::aio::PubSubSink, wait: Duration) -> bool {
    let pong = tokio::time::timeout(wait, sink.ping::<redis::Value>()).await;
    matches!(pong, Ok(Ok(_)))
}

/// A message from the channel worth relaying: another replica's, for a key with a session
/// here, readable by this version.
fn incoming(
    payload: &[u8],
    origin: &str,
    hub: &LocalEventHub,
) -> Option<(String, Arc<PublishedEvent>)> {
    let wire: Wire = match serde_json::from_slice(payload) {
        Ok(w) => w,
        Err(e) => {
            tracing::debug!(error = %e, "event relay: unreadable message ignored");
            return None;
        }
    };
    if wire.origin == origin || !hub.has_subscribers(&wire.key) {
        return None;
    }
    let event = PublishedEvent::from_frame(wire.frame, wire.seq)?;
    Some((wire.key, Arc::new(event)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_journal::{JournaledBus, Retention};
    use crate::events::{Event, EventBus, EventKind, EventSubscription};
    use crate::state::redis::test_server::TestRedis;
    use crate::state::redis::RedisState;
    use serde_json::{json, Value};
    use std::time::Instant;

    /// One replica: its own hub, state handle and relay on the shared Redis.
    fn replica(url: &str) -> Arc<JournaledBus> {
        let link = RedisLink::connect(url, Duration::from_secs(2)).expect("link");
        let state: Arc<dyn StateStore> =
            Arc::new(RedisState::new(link.clone(), Duration::from_secs(3600)));
        let hub = Arc::new(LocalEventHub::new(64));
        let relay = EventRelay::spawn(hub.clone(), state.clone(), link, 100);
        let retention = Retention {
            keep: Duration::from_secs(600),
            max_len: 100,
        };
        JournaledBus::spawn_with(hub, relay, state, retention)
    }

    fn event(key: &str, n: u32) -> Event {
        Event {
            kind: EventKind::JobCompleted,
            key_id: key.into(),
            data: json!({ "n": n }),
            spoken_summary: format!("Job {n} is done."),
        }
    }

    async fn subscribers(url: &str) -> i64 {
        let link = RedisLink::connect(url, Duration::from_secs(2)).expect("link");
        let r: ApiResultNumsub = link
            .call("test", |mut c| async move {
                redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(CHANNEL)
                    .query_async(&mut c)
                    .await
            })
            .await;
        r.ok().map(|(_, n)| n).unwrap_or(0)
    }

    type ApiResultNumsub = crate::error::ApiResult<(String, i64)>;

    async fn wait_subscribed(url: &str, n: i64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while subscribers(url).await < n {
            assert!(Instant::now() < deadline, "relays did not subscribe");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The next event's (seq, data.n), within a generous deadline.
    async fn next(sub: &mut EventSubscription) -> (u64, u64) {
        let e = tokio::time::timeout(Duration::from_secs(20), sub.recv())
            .await
            .expect("an event in time")
            .expect("hub alive");
        let v: Value = serde_json::from_slice(&e.frame).expect("frame");
        assert_eq!(v["seq"], json!(e.seq.expect("seq")));
        (e.seq.expect("seq"), v["data"]["n"].as_u64().expect("n"))
    }

    async fn nothing_more(sub: &mut EventSubscription) {
        let more = tokio::time::timeout(Duration::from_millis(300), sub.recv()).await;
        assert!(more.is_err(), "no further event");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_reach_other_replicas_once_in_order_and_gaps_are_filled_from_the_journal() {
        let Some(redis) = TestRedis::start() else {
            return;
        };
        let url = redis.url();
        let (a, b) = (replica(&url), replica(&url));
        let mut on_a = a.subscribe("k");
        let mut on_b = b.subscribe("k");
        let mut other_key = b.subscribe("k2");
        wait_subscribed(&url, 2).await;
        for n in 1..=3 {
            a.publish(event("k", n));
        }
        for want in 1..=3u64 {
            assert_eq!(
                next(&mut on_a).await,
                (want, want),
                "the producer's own session"
            );
            assert_eq!(
                next(&mut on_b).await,
                (want, want),
                "another replica's session"
            );
        }
        nothing_more(&mut on_b).await;
        nothing_more(&mut other_key).await;

        // Seq 4 journaled but never published (a message lost while Redis was away): the
        // next event through B's relay brings it first, in order.
        let link = RedisLink::connect(&url, Duration::from_secs(2)).expect("link");
        let state = RedisState::new(link, Duration::from_secs(3600));
        let body = String::from_utf8(PublishedEvent::body(&event("k", 4))).expect("utf8");
        let seq = state
            .append_event("k", &body, Duration::from_secs(600), 100)
            .await
            .expect("append");
        assert_eq!(seq, 4);
        a.publish(event("k", 5));
        assert_eq!(next(&mut on_b).await, (4, 4));
        assert_eq!(next(&mut on_b).await, (5, 5));
        nothing_more(&mut on_b).await;

        // Events produced on B reach A too, continuing the key's seq. (A's own relay filled
        // the same gap before delivering 5.)
        b.publish(event("k", 6));
        assert_eq!(next(&mut on_a).await, (4, 4));
        assert_eq!(next(&mut on_a).await, (5, 5));
        assert_eq!(next(&mut on_a).await, (6, 6));
    }

    #[tokio::test]
    async fn a_subscribed_connection_passes_the_liveness_ping() {
        let Some(redis) = TestRedis::start() else {
            return;
        };
        let link = RedisLink::connect(&redis.url(), Duration::from_secs(2)).expect("link");
        let (mut sink, _stream) = link.pubsub().await.expect("pubsub").split();
        sink.subscribe(CHANNEL).await.expect("subscribe");
        assert!(alive(&mut sink, Duration::from_secs(2)).await);
        drop(redis);
        assert!(!alive(&mut sink, Duration::from_secs(2)).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delivery_resumes_after_a_redis_outage() {
        let Some(redis) = TestRedis::start() else {
            return;
        };
        let (url, port) = (redis.url(), redis.port);
        let (a, b) = (replica(&url), replica(&url));
        let mut on_b = b.subscribe("k");
        wait_subscribed(&url, 2).await;
        a.publish(event("k", 1));
        a.publish(event("k", 2));
        assert_eq!(next(&mut on_b).await, (1, 1));
        assert_eq!(next(&mut on_b).await, (2, 2));

        drop(redis);
        // While Redis is away the event is not journaled: A's own sessions would hear it, B's
        // cannot. Nothing panics or blocks.
        a.publish(event("k", 3));
        tokio::time::sleep(Duration::from_millis(300)).await;

        // Back, empty (no persistence): the counter starts over at 1, below what B delivered,
        // and B's relay must not take the new events for repeats.
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("restart redis-server");
        struct Kill(std::process::Child);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let _back = Kill(child);
        wait_subscribed(&url, 2).await;
        // The journaling task may still be retrying its way back: publish until one arrives.
        let deadline = Instant::now() + Duration::from_secs(20);
        let got = loop {
            a.publish(event("k", 10));
            if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(500), on_b.recv()).await
            {
                break e;
            }
            assert!(Instant::now() < deadline, "delivery did not resume");
        };
        let v: Value = serde_json::from_slice(&got.frame).expect("frame");
        assert_eq!(v["data"]["n"], 10);
        assert!(got.seq.is_some(), "journaled again");
    }
}
