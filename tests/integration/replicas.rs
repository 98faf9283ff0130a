//! Replicas sharing Redis (DESIGN §16): three gateways in upstream mode with
//! `[state] backend = "redis"`, in this process, in front of one embedded upstream, behind a
//! loopback round-robin TCP proxy with no session affinity (every request opens a new
//! connection, so consecutive requests land on different replicas). Effects are counted on the
//! upstream itself. A real `redis-server` runs per test; without the binary the tests print a
//! notice and pass (CI installs it). `/mcp` is checked here too: stateless, so a confirmation
//! needs no affinity to the replica that asked.

use crate::common;
use crate::common::native as native_common;
use crate::common::redis as redis_common;
use crate::common::ws as ws_common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestServer;
use futures_util::{SinkExt, StreamExt};
use native_common::{demo_with, Demo, KEY, PATH};
use pilot_bridge::config::{BackendKind, Config, StateBackend};
use pilot_bridge::events::{Event, EventKind};
use redis_common::TestRedis;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use ws_common::Ws;

/// A round-robin TCP forwarder: each accepted connection goes to the next replica.
async fn round_robin(replicas: Vec<SocketAddr>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("addr");
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let i = next.fetch_add(1, Ordering::Relaxed) % replicas.len();
            let target = replicas[i];
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    addr
}

/// A JSON client that opens a new connection per request (no pooling), so a load balancer in
/// front spreads consecutive requests.
#[derive(Clone)]
struct Http {
    http: reqwest::Client,
}

struct Reply {
    status: u16,
    body: Value,
    retry_after: Option<String>,
    server_timing: String,
}

impl Http {
    fn new() -> Self {
        Http {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("client"),
        }
    }

    async fn native(&self, root: &str, body: Value) -> Reply {
        let r = self
            .http
            .post(format!("{root}/api/v1{PATH}"))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        let retry_after = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let server_timing = r
            .headers()
            .get("server-timing")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body: Value = r.json().await.expect("json body");
        Reply {
            status,
            body,
            retry_after,
            server_timing,
        }
    }

    async fn get_status(&self, url: &str, key: Option<&str>) -> u16 {
        let mut req = self.http.get(url);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req.send().await.expect("request").status().as_u16()
    }
}

fn mode(r: &Reply) -> &str {
    r.body["data"]["mode"].as_str().unwrap_or("")
}

/// The embedded upstream and three Redis-backed gateways in front of it.
struct Topology {
    upstream: Demo,
    gateways: Vec<TestServer>,
    lb: String,
    http: Http,
}

impl Topology {
    async fn start(redis: &TestRedis) -> Topology {
        Self::start_with(redis, |_| {}).await
    }

    /// Like `start`, with `adjust` applied to each gateway's configuration last.
    async fn start_with(redis: &TestRedis, adjust: impl Fn(&mut Config)) -> Topology {
        let upstream = demo_with(|_| {}, Some(0)).await;
        let mut gateways = Vec::new();
        for _ in 0..3 {
            let (base, url) = (upstream.s.root.clone(), redis.url());
            let adjust = &adjust;
            gateways.push(
                common::start_with(move |c| {
                    c.backend = BackendKind::Upstream;
                    c.upstream.base_url = base;
                    c.state.backend = StateBackend::Redis;
                    c.state.redis_url = url;
                    // 100 concurrent turns on a debug build and a shared CI machine: generous
                    // upstream budgets, so a slow upstream does not mask what is tested here.
                    c.native.target_ms = 20_000.0;
                    c.upstream.turn_budget_ms = 15_000;
                    c.upstream.request_timeout_ms = 15_000;
                    c.upstream.connect_timeout_ms = 5_000;
                    c.state.redis_timeout_ms = 5_000;
                    adjust(c);
                })
                .await,
            );
        }
        let lb = round_robin(gateways.iter().map(|g| g.server.addr).collect()).await;
        Topology {
            upstream,
            gateways,
            lb: format!("http://{lb}"),
            http: Http::new(),
        }
    }

    fn replica(&self, i: usize) -> &str {
        &self.gateways[i].root
    }

    /// Notes on a contact with this exact content, counted on the upstream.
    async fn notes(&self, contact: &str, content: &str) -> usize {
        let d = &self.upstream;
        let id = d.s.contact_id(pilot_bridge::demo::DEMO_ORG, contact).await;
        let r =
            d.c.get_query("/notes", &[("contact_id", &id), ("limit", "100")])
                .await;
        r.page().iter().filter(|n| n["content"] == content).count()
    }

    /// A campaign's audience size, counted on the upstream.
    async fn campaign_audience(&self, name: &str) -> u64 {
        let r = self
            .upstream
            .c
            .get_query("/campaigns", &[("limit", "100")])
            .await;
        let c = r.page().iter().find(|c| c["name"] == name).cloned();
        let id = c.expect("campaign")["id"]
            .as_str()
            .expect("campaign id")
            .to_string();
        let one = self.upstream.c.get(&format!("/campaigns/{id}")).await;
        one.ok(200)["audience_stats"]["total"]
            .as_u64()
            .expect("audience total")
    }

    async fn campaign_status(&self, name: &str) -> String {
        let r = self
            .upstream
            .c
            .get_query("/campaigns", &[("limit", "100")])
            .await;
        let c = r.page().iter().find(|c| c["name"] == name).cloned();
        c.expect("campaign")["status"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_idempotency_confirmations_undo_and_dedupe() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let t = Topology::start(&redis).await;

    // 100 concurrent same-key writes spread over the replicas: one effect upstream, every
    // reply a result or a duplicate of it.
    let text = "Replicated note.";
    let body = json!({ "action": { "type": "note_on_contact", "contactRef": "john@acme.com", "note": text },
                       "idempotencyKey": "replicas-100" });
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (http, lb, body) = (t.http.clone(), t.lb.clone(), body.clone());
        tasks.push(tokio::spawn(async move { http.native(&lb, body).await }));
    }
    let mut results = 0;
    for task in tasks {
        let r = task.await.expect("task");
        assert_eq!(r.status, 200, "{}", r.body);
        match mode(&r) {
            "result" => results += 1,
            "duplicate" => {}
            other => panic!("unexpected mode {other}: {}", r.body),
        }
    }
    assert_eq!(results, 1, "exactly one replica executed");
    assert_eq!(t.notes("john@acme.com", text).await, 1);

    // Identical keyless writes sent to each replica within the window: one effect.
    let keyless = json!({ "action": { "type": "note_on_contact", "contactRef": "john@acme.com", "note": "Keyless on every replica." } });
    let mut modes = Vec::new();
    for i in 0..3 {
        let r = t.http.native(t.replica(i), keyless.clone()).await;
        assert_eq!(r.status, 200, "{}", r.body);
        modes.push(mode(&r).to_string());
    }
    assert_eq!(modes, ["result", "duplicate", "duplicate"]);
    assert_eq!(
        t.notes("john@acme.com", "Keyless on every replica.").await,
        1
    );

    // A pending action asked on replica 1, confirmed on replica 2 (executed once), confirmed
    // again on replica 3 (duplicate).
    let ask = t
        .http
        .native(
            t.replica(0),
            json!({ "action": { "type": "pause_campaign", "campaignRef": "Seed founders" } }),
        )
        .await;
    assert_eq!(mode(&ask), "confirmation_required", "{}", ask.body);
    let pid = ask.body["data"]["pending_action_id"]
        .as_str()
        .expect("pending id")
        .to_string();
    assert_eq!(t.campaign_status("Seed founders").await, "active");
    let confirm = json!({ "pendingActionId": pid, "confirmed": true });
    let r = t.http.native(t.replica(1), confirm.clone()).await;
    assert_eq!(mode(&r), "result", "{}", r.body);
    assert_eq!(t.campaign_status("Seed founders").await, "paused");
    let r = t.http.native(t.replica(2), confirm).await;
    assert_eq!(mode(&r), "duplicate", "{}", r.body);

    // undo_last on replica 3 undoes the caller's last write, made through replica 2.
    let r = t
        .http
        .native(t.replica(2), json!({ "action": { "type": "undo_last" } }))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["data"]["data"]["undone"], true, "{}", r.body);
    assert_eq!(t.campaign_status("Seed founders").await, "active");
    // And the next undo on replica 1 reaches the keyless note, then the keyed one.
    let r = t
        .http
        .native(t.replica(0), json!({ "action": { "type": "undo_last" } }))
        .await;
    assert_eq!(r.body["data"]["data"]["undone"], true, "{}", r.body);
    assert_eq!(
        t.notes("john@acme.com", "Keyless on every replica.").await,
        0
    );
    // Once the keyed note is undone as well, its replay on another replica says so.
    let r = t
        .http
        .native(t.replica(1), json!({ "action": { "type": "undo_last" } }))
        .await;
    assert_eq!(r.body["data"]["data"]["undone"], true, "{}", r.body);
    let r = t.http.native(t.replica(2), body.clone()).await;
    assert_eq!(mode(&r), "duplicate", "{}", r.body);
    assert_eq!(r.body["data"]["data"]["undone"], true, "{}", r.body);
    drop(t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_redis_writes_fail_closed_reads_answer_and_recovery_is_automatic() {
    let Some(mut redis) = TestRedis::start() else {
        return;
    };
    let t = Topology::start(&redis).await;
    for i in 0..3 {
        let ready = format!("{}/readyz", t.replica(i));
        assert_eq!(t.http.get_status(&ready, None).await, 200);
    }
    redis.stop();
    let text = "Written while Redis was down.";
    for i in 0..3 {
        let r = t
            .http
            .native(
                t.replica(i),
                json!({ "action": { "type": "note_on_contact", "contactRef": "john@acme.com", "note": text },
                        "idempotencyKey": format!("down-{i}") }),
            )
            .await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.body["ok"], false);
        assert_eq!(r.body["error"]["code"], "STATE_UNAVAILABLE", "{}", r.body);
        assert!(r.body["error"]["spoken_summary"]
            .as_str()
            .is_some_and(|s| !s.is_empty()));
        assert_eq!(r.retry_after.as_deref(), Some("1"));
        // Keyless too: nothing executes without a claim.
        let r = t
            .http
            .native(
                t.replica(i),
                json!({ "action": { "type": "note_on_contact", "contactRef": "john@acme.com", "note": text } }),
            )
            .await;
        assert_eq!(r.body["error"]["code"], "STATE_UNAVAILABLE", "{}", r.body);
        // Reads still answer.
        let r = t
            .http
            .native(
                t.replica(i),
                json!({ "action": { "type": "lookup_person", "personName": "John Smith" } }),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let ready = format!("{}/readyz", t.replica(i));
        assert_eq!(t.http.get_status(&ready, None).await, 503);
    }
    assert_eq!(t.notes("john@acme.com", text).await, 0, "no effect");

    // Redis back: writes work again without restarting anything.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = json!({ "action": { "type": "note_on_contact", "contactRef": "john@acme.com", "note": text },
                       "idempotencyKey": "after-recovery" });
    loop {
        let r = t.http.native(t.replica(0), body.clone()).await;
        if r.status == 200 {
            assert_eq!(mode(&r), "result", "{}", r.body);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes did not recover: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(t.notes("john@acme.com", text).await, 1);
    // Every replica reconnects by itself and is ready again.
    for i in 0..3 {
        let ready = format!("{}/readyz", t.replica(i));
        while t.http.get_status(&ready, None).await != 200 {
            assert!(Instant::now() < deadline, "replica {i} not ready again");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_org_quota_holds_in_total_across_replicas() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    // Three servers whose org allows 6 requests a minute, sharing their windows in Redis.
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let url = redis.url();
        replicas.push(
            demo_with(
                move |c| {
                    c.state.backend = StateBackend::Redis;
                    c.state.redis_url = url;
                },
                Some(6),
            )
            .await,
        );
    }
    let lb = round_robin(replicas.iter().map(|d| d.s.server.addr).collect()).await;
    let http = Http::new();
    // Windows are wall-clock minutes: start early in one so the loop stays inside it.
    let second = chrono::Utc::now().timestamp().rem_euclid(60);
    if second > 50 {
        tokio::time::sleep(Duration::from_secs(u64::try_from(61 - second).unwrap_or(1))).await;
    }
    let mut allowed = 0;
    let mut limited = 0;
    for _ in 0..15 {
        match http
            .get_status(&format!("http://{lb}/api/v1/contacts"), Some(KEY))
            .await
        {
            200 => allowed += 1,
            429 => limited += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(
        allowed, 6,
        "the org's 6/min holds over all replicas together"
    );
    assert_eq!(limited, 9);
}

// ---- live events, read cache and connection caps across replicas ---------------------------

/// The tenant a key is to a gateway in upstream mode (its org and key id).
fn tenant() -> String {
    pilot_bridge::auth::upstream_tenant(&format!("Bearer {KEY}")).expect("tenant")
}

fn ws_url(root: &str) -> String {
    format!(
        "{}/api/v1/native/outreachpilot/ws",
        root.replacen("http", "ws", 1)
    )
}

/// A socket on `root` authenticated by header; `Err` with the HTTP status and body when the
/// upgrade is refused.
async fn try_socket(root: &str) -> Result<Ws, (u16, Value)> {
    let mut req = ws_url(root).into_client_request().expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {KEY}").parse().expect("header"),
    );
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = serde_json::from_slice(resp.body().as_deref().unwrap_or(b"{}"))
                .unwrap_or(Value::Null);
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("connect: {e}"),
    }
}

async fn socket(root: &str) -> Ws {
    match try_socket(root).await {
        Ok(ws) => ws,
        Err((status, body)) => panic!("upgrade refused: {status} {body}"),
    }
}

/// The next event frame within `wait`, skipping anything else; `None` when none came.
async fn next_event(ws: &mut Ws, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()??;
        if let Ok(Message::Text(t)) = msg {
            let v: Value = serde_json::from_str(t.as_str()).expect("json frame");
            if v["type"] == "event" {
                return Some(v);
            }
        }
    }
}

/// Waits until every gateway's event relay is subscribed (they connect in the background).
async fn relays_subscribed(redis: &TestRedis, n: i64) {
    let client = redis::Client::open(redis.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, subs): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(pilot_bridge::event_relay::CHANNEL)
            .query_async(&mut conn)
            .await
            .expect("numsub");
        if subs >= n {
            return;
        }
        assert!(Instant::now() < deadline, "relays not subscribed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn research_done(n: u32) -> Event {
    Event {
        kind: EventKind::JobCompleted,
        key_id: tenant(),
        data: json!({ "job": { "id": format!("job-{n}"), "type": "research" }, "n": n }),
        spoken_summary: format!("Research {n} is ready."),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_reach_the_keys_socket_on_another_replica_once_and_in_order() {
    let Some(mut redis) = TestRedis::start() else {
        return;
    };
    let t = Topology::start_with(&redis, |c| c.native.pending_ttl_secs = 1).await;
    relays_subscribed(&redis, 3).await;
    let mut ws = socket(t.replica(1)).await;

    // A confirmation asked over HTTP on replica 1 expires unanswered; whichever replica's
    // sweep takes it, the socket on replica 2 hears it once.
    let ask = t
        .http
        .native(
            t.replica(0),
            json!({ "action": { "type": "pause_campaign", "campaignRef": "Seed founders" } }),
        )
        .await;
    assert_eq!(mode(&ask), "confirmation_required", "{}", ask.body);
    let pid = ask.body["data"]["pending_action_id"].clone();
    let e = next_event(&mut ws, Duration::from_secs(30))
        .await
        .expect("pending.expired");
    assert_eq!(e["event"], "pending.expired", "{e}");
    assert_eq!(e["data"]["pending_action_id"], pid);
    assert!(e["spoken_summary"].as_str().is_some_and(|s| !s.is_empty()));
    let first_seq = e["seq"].as_u64().expect("seq");

    // Upstream-mode gateways do not run jobs themselves (the upstream does), so research
    // results are handed to replica 1's event bus directly: they reach replica 2's socket in
    // seq order, each once; one produced on replica 3 afterwards follows them.
    for n in 1..=3 {
        t.gateways[0].server.app.events.publish(research_done(n));
    }
    let mut seqs = Vec::new();
    for n in 1..=4u64 {
        if n == 4 {
            t.gateways[2].server.app.events.publish(research_done(4));
        }
        let e = next_event(&mut ws, Duration::from_secs(30))
            .await
            .expect("job.completed");
        assert_eq!(e["event"], "job.completed", "{e}");
        assert_eq!(e["data"]["n"], n, "{e}");
        assert_eq!(e["spoken_summary"], format!("Research {n} is ready."));
        assert!(e.get("id").is_none());
        seqs.push(e["seq"].as_u64().expect("seq"));
    }
    assert_eq!(
        seqs,
        (first_seq + 1..=first_seq + 4).collect::<Vec<_>>(),
        "one seq per event, in order"
    );
    assert!(
        next_event(&mut ws, Duration::from_millis(500))
            .await
            .is_none(),
        "nothing twice"
    );

    // A Redis outage neither closes nor wedges the socket: it still answers turns.
    redis.stop();
    send_lookup(&mut ws, "during-outage").await;
    assert_eq!(reply_to(&mut ws, "during-outage").await["ok"], true);
    redis.restart();
    relays_subscribed(&redis, 3).await;
    // Live delivery resumes once the relays are back (the journaling task may need a few
    // tries after the restart).
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        t.gateways[0].server.app.events.publish(research_done(9));
        if let Some(e) = next_event(&mut ws, Duration::from_millis(500)).await {
            break e;
        }
        assert!(Instant::now() < deadline, "delivery did not resume");
    };
    assert_eq!(after["data"]["n"], 9, "{after}");
    drop(ws);
}

async fn send_lookup(ws: &mut Ws, id: &str) {
    ws_common::send(
        ws,
        json!({ "id": id, "action": { "type": "lookup_person", "personName": "John Smith" } }),
    )
    .await;
}

/// The reply to request `id`, skipping events and progress frames.
async fn reply_to(ws: &mut Ws, id: &str) -> Value {
    loop {
        let v = ws_common::next_json(ws).await;
        if v["id"] == id && v["type"] != "progress" {
            return v;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_through_one_replica_is_seen_by_the_next_cached_read_on_another() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    // Cached answers would otherwise live a minute.
    let t = Topology::start_with(&redis, |c| c.upstream.read_cache_ms = 60_000).await;
    let lookup = json!({ "action": { "type": "lookup_person", "personName": "John Smith" } });
    let first = t.http.native(t.replica(1), lookup.clone()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(
        first.body["data"]["spoken_summary"]
            .as_str()
            .is_some_and(|s| s.contains("Status is new")),
        "{}",
        first.body
    );
    let again = t.http.native(t.replica(1), lookup.clone()).await;
    assert!(
        again.server_timing.contains("cache;dur="),
        "the read cache is on with Redis: {}",
        again.server_timing
    );

    // A native write through replica 1 …
    let r = t
        .http
        .native(
            t.replica(0),
            json!({ "action": { "type": "mark_status", "contactRef": "John Smith", "status": "interested" },
                    "idempotencyKey": "cache-gen-1" }),
        )
        .await;
    assert_eq!(mode(&r), "result", "{}", r.body);
    // … is seen by replica 2's next read.
    let after = t.http.native(t.replica(1), lookup.clone()).await;
    assert!(
        after.body["data"]["spoken_summary"]
            .as_str()
            .is_some_and(|s| s.contains("Status is interested")),
        "{}",
        after.body
    );
    assert!(!after.server_timing.contains("cache;dur="));

    // So is a REST write proxied through replica 3.
    let id = after.body["data"]["ids"]["contact_id"]
        .as_str()
        .expect("contact id")
        .to_string();
    let _ = t.http.native(t.replica(1), lookup.clone()).await;
    let put = t
        .http
        .http
        .put(format!("{}/api/v1/contacts/{id}", t.replica(2)))
        .bearer_auth(KEY)
        .json(&json!({ "title": "Chief Replica Officer" }))
        .send()
        .await
        .expect("put");
    assert_eq!(put.status().as_u16(), 200);
    let after = t.http.native(t.replica(1), lookup).await;
    assert_eq!(
        after.body["data"]["data"]["contact"]["title"], "Chief Replica Officer",
        "{}",
        after.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_per_org_socket_cap_holds_across_replicas_and_a_close_frees_a_slot() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let t = Topology::start_with(&redis, |c| c.websocket.max_connections_per_org = 2).await;
    let mut a = socket(t.replica(0)).await;
    let _b = socket(t.replica(1)).await;
    // Replica 3 has no socket of this org, but the org has two across the replicas.
    match try_socket(t.replica(2)).await {
        Err((status, body)) => {
            assert_eq!(status, 429, "{body}");
            assert_eq!(body["ok"], false);
            assert_eq!(body["error"]["code"], "RATE_LIMITED", "{body}");
            assert!(body["error"]["spoken_summary"]
                .as_str()
                .is_some_and(|s| !s.is_empty()));
        }
        Ok(_) => panic!("a third socket of the org was accepted"),
    }
    // Closing one frees a slot for any replica (the release is asynchronous: poll).
    a.send(Message::Close(None)).await.expect("close");
    while a.next().await.is_some() {}
    let deadline = Instant::now() + Duration::from_secs(30);
    let _c = loop {
        match try_socket(t.replica(2)).await {
            Ok(ws) => break ws,
            Err((429, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err((status, body)) => panic!("slot not freed: {status} {body}"),
        }
    };
}

type McpClient = RunningService<RoleClient, ClientConfig>;

/// An `rmcp` client that did its own `initialize` with the replica at `root`.
async fn mcp_client(root: &str) -> McpClient {
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("{root}/mcp")).auth_header(KEY),
    );
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("replicas-test", "1.0"),
    )
    .serve(transport)
    .await
    .expect("MCP client connects")
}

/// A tool call's native reply (`structuredContent`), after checking it is not an error result.
async fn mcp_call(c: &McpClient, name: &str, args: Value) -> Value {
    let Value::Object(args) = args else {
        panic!("arguments must be an object")
    };
    let r: CallToolResult = c
        .call_tool(CallToolRequestParams::new(name.to_string()).with_arguments(args))
        .await
        .expect("tools/call answers");
    assert_eq!(r.is_error, Some(false), "{r:?}");
    r.structured_content.expect("structuredContent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mcp_asks_on_one_replica_and_is_confirmed_on_another_once_without_sessions() {
    let Some(redis) = TestRedis::start() else {
        return;
    };
    let t = Topology::start(&redis).await;

    // No replica hands out a session: neither the handshake nor a tool call carries
    // `Mcp-Session-Id`, so nothing ties a client to the replica it first reached.
    let post = |root: &str, version: Option<&str>, body: Value| {
        let mut req = t
            .http
            .http
            .post(format!("{root}/mcp"))
            .bearer_auth(KEY)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(v) = version {
            req = req.header("mcp-protocol-version", v);
        }
        req.send()
    };
    for i in 0..3 {
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "curl", "version": "1"}}});
        let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "campaign_stats", "arguments": {"campaignRef": "Seed founders"}}});
        for (version, body) in [(None, init), (Some("2025-06-18"), call)] {
            let r = post(t.replica(i), version, body).await.expect("request");
            assert_eq!(r.status().as_u16(), 200, "replica {i}");
            assert!(
                r.headers().get("mcp-session-id").is_none(),
                "replica {i} sent Mcp-Session-Id"
            );
            let answer: Value = r.json().await.expect("JSON-RPC answer");
            assert!(answer["result"].is_object(), "replica {i}: {answer}");
        }
    }

    // A dangerous tool asked on replica 1 (its own handshake) changes nothing yet.
    let before = t.campaign_audience("Seed founders").await;
    let a = mcp_client(t.replica(0)).await;
    let asked = mcp_call(
        &a,
        "add_to_campaign",
        json!({"personName": "John Smith", "campaignRef": "Seed founders"}),
    )
    .await;
    assert_eq!(asked["mode"], "confirmation_required", "{asked}");
    let pid = asked["pending_action_id"]
        .as_str()
        .expect("pending id")
        .to_string();
    assert_eq!(t.campaign_audience("Seed founders").await, before);

    // Confirmed on replicas 2 and 3 at once, each client with its own handshake: one runs it,
    // the other replays; the upstream sees one new member.
    let (b, c) = tokio::join!(mcp_client(t.replica(1)), mcp_client(t.replica(2)));
    let yes = json!({"pendingActionId": pid, "confirmed": true});
    let (rb, rc) = tokio::join!(
        mcp_call(&b, "confirm_pending_action", yes.clone()),
        mcp_call(&c, "confirm_pending_action", yes.clone())
    );
    let mut modes = [&rb, &rc].map(|r| r["mode"].as_str().unwrap_or("").to_string());
    modes.sort();
    assert_eq!(modes, ["duplicate", "result"], "{rb} {rc}");
    assert_eq!(t.campaign_audience("Seed founders").await, before + 1);
    // Back on the replica that asked: a replay, still one effect.
    let again = mcp_call(&a, "confirm_pending_action", yes).await;
    assert_eq!(again["mode"], "duplicate", "{again}");
    assert_eq!(t.campaign_audience("Seed founders").await, before + 1);
    for client in [a, b, c] {
        client.cancel().await.expect("client closes");
    }
}
