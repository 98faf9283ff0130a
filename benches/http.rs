//! End to end over loopback: the native endpoint (HTTP keep-alive and WebSocket, 1 and 32
//! connections) against a bare axum handler in the same process that parses the same request and
//! returns the same JSON — the physical limit of the stack. The throughput ratio native/bare is
//! the headline number (target ≥ 50% for `lookup_person` over HTTP).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message as AxMessage, WebSocket, WebSocketUpgrade};
use axum::routing::{get, post};
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The bare baseline: parse the body, answer a fixed envelope of the native reply's shape.
async fn bare_server(reply: Arc<Value>) -> SocketAddr {
    let http_reply = reply.clone();
    let app = Router::new()
        .route(
            "/native",
            post(move |body: axum::body::Bytes| {
                let reply = http_reply.clone();
                async move {
                    let _req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        serde_json::to_vec(&*reply).unwrap_or_default(),
                    )
                }
            }),
        )
        .route(
            "/ws",
            get(move |ws: WebSocketUpgrade| {
                let reply = reply.clone();
                async move { ws.on_upgrade(move |socket| bare_ws(socket, reply)) }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Same socket settings as pilot-bridge itself, so the comparison is fair.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn bare_ws(mut socket: WebSocket, reply: Arc<Value>) {
    while let Some(Ok(AxMessage::Text(t))) = socket.recv().await {
        let req: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
        let mut out = (*reply).clone();
        out["id"] = req["id"].clone();
        if socket
            .send(AxMessage::Text(out.to_string().into()))
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn ws_connect(url: &str, key: Option<&str>) -> Ws {
    let mut req = url.into_client_request().expect("request");
    if let Some(k) = key {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {k}").parse().expect("header"),
        );
    }
    // No Nagle on the client either: pipelined frames must not wait for delayed ACKs.
    tokio_tungstenite::connect_async_with_config(req, None, true)
        .await
        .expect("connect")
        .0
}

/// Sends `n` frames, then reads `n` replies.
async fn ws_round(ws: &mut Ws, frame: &str, n: usize) {
    for _ in 0..n {
        ws.send(Message::Text(frame.to_string().into()))
            .await
            .expect("send");
    }
    let mut got = 0;
    while got < n {
        match ws.next().await {
            Some(Ok(Message::Text(_))) => got += 1,
            Some(Ok(_)) => {}
            other => panic!("websocket ended: {other:?}"),
        }
    }
}

fn http(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (dir, store) = common::demo_store();
    let server = rt
        .block_on(pilot_bridge::server::start(
            common::config(&dir),
            Some(store),
        ))
        .expect("server");
    let native_url = format!("http://{}/api/v1/native/outreachpilot", server.addr);
    // A second server on the same data with the read cache off: every lookup runs the SQLite
    // resolution, the worst case for a read.
    let (dir2, store2) = common::demo_store();
    let mut uncached_cfg = common::config(&dir2);
    uncached_cfg.native.read_cache_ms = 0;
    let uncached = rt
        .block_on(pilot_bridge::server::start(uncached_cfg, Some(store2)))
        .expect("uncached server");
    let uncached_url = format!("http://{}/api/v1/native/outreachpilot", uncached.addr);
    let body = serde_json::to_vec(&common::lookup_body()).expect("json");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("client");

    let sample: Value = rt.block_on(async {
        client
            .post(&native_url)
            .bearer_auth(common::KEY)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json")
    });
    assert_eq!(sample["ok"], true, "{sample}");
    let bare_addr = rt.block_on(bare_server(Arc::new(sample)));
    let bare_url = format!("http://{bare_addr}/native");

    let send = |url: String, auth: bool| {
        let client = client.clone();
        let body = body.clone();
        async move {
            let mut req = client
                .post(url)
                .header("content-type", "application/json")
                .body(body);
            if auth {
                req = req.bearer_auth(common::KEY);
            }
            let resp = req.send().await.expect("send");
            assert!(resp.status().is_success());
            resp.bytes().await.expect("body");
        }
    };

    let mut g = c.benchmark_group("http_lookup_person");
    for conns in [1usize, 32] {
        g.throughput(Throughput::Elements(conns as u64));
        for (name, url, auth) in [
            ("bare", bare_url.clone(), false),
            ("native", native_url.clone(), true),
            ("native_uncached", uncached_url.clone(), true),
        ] {
            g.bench_function(format!("{name}/{conns}_conn"), |b| {
                b.to_async(&rt).iter(|| {
                    let futs: Vec<_> = (0..conns).map(|_| send(url.clone(), auth)).collect();
                    futures_util::future::join_all(futs)
                })
            });
        }
    }
    g.finish();

    let native_ws = format!("ws://{}/api/v1/native/outreachpilot/ws", server.addr);
    let bare_ws_url = format!("ws://{bare_addr}/ws");
    let mut frame = common::lookup_body();
    frame["id"] = Value::String("bench".into());
    let frame = frame.to_string();
    const PIPELINE: usize = 8;
    let mut g = c.benchmark_group("ws_lookup_person");
    for conns in [1usize, 32] {
        g.throughput(Throughput::Elements((conns * PIPELINE) as u64));
        for (name, url, key) in [
            ("bare", bare_ws_url.clone(), None),
            ("native", native_ws.clone(), Some(common::KEY)),
        ] {
            let sockets: Vec<Ws> = rt.block_on(async {
                let mut v = Vec::new();
                for _ in 0..conns {
                    v.push(ws_connect(&url, key).await);
                }
                v
            });
            let sockets = Arc::new(tokio::sync::Mutex::new(sockets));
            g.bench_function(format!("{name}/{conns}_conn_x{PIPELINE}_pipelined"), |b| {
                b.to_async(&rt).iter(|| {
                    let sockets = sockets.clone();
                    let frame = frame.clone();
                    async move {
                        let mut guard = sockets.lock().await;
                        let rounds = guard.iter_mut().map(|ws| ws_round(ws, &frame, PIPELINE));
                        futures_util::future::join_all(rounds).await;
                    }
                })
            });
        }
    }
    g.finish();
    rt.block_on(server.shutdown());
    rt.block_on(uncached.shutdown());
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = http
}
criterion_main!(benches);
