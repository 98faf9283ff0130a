//! Idle WebSocket cost (`harness = false`): starts the release server as its own process, opens
//! 10,000 authenticated WebSocket connections that then stay idle, and reports the server's extra
//! resident memory (VmRSS) in total and per connection. Exits non-zero above 100 MB extra
//! (DESIGN §14). `WS_IDLE_CONNECTIONS` sets the count; `WS_IDLE_WRAPPER` names a program to run
//! the server under, e.g. `heaptrack` to see where the per-connection memory goes.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const KEY: &str = "op_live_IdleBenchKeyIdleBenchKeyIdleBench01";

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_string)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn main() {
    let n: usize = std::env::var("WS_IDLE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[websocket]\nmax_connections_per_org = 100000\nmax_connections = 100000\n",
    )
    .expect("config");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let server_bin = env!("CARGO_BIN_EXE_pilot-bridge");
    let mut command = match std::env::var("WS_IDLE_WRAPPER") {
        Ok(wrapper) if !wrapper.is_empty() => {
            let mut c = Command::new(wrapper);
            c.arg(server_bin);
            c
        }
        _ => Command::new(server_bin),
    };
    let child = command
        .args(["serve", "--demo", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .env("PILOT_BRIDGE_DEMO_KEY", KEY)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start server");
    let server = Server(child);
    let pid = server.0.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let url = format!("ws://127.0.0.1:{port}/api/v1/native/outreachpilot/ws");
        let connect = || async {
            let mut req = url.as_str().into_client_request().expect("request");
            req.headers_mut().insert("authorization", format!("Bearer {KEY}").parse().expect("header"));
            tokio_tungstenite::connect_async(req).await.map(|(ws, _)| ws)
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let warm = loop {
            match connect().await {
                Ok(ws) => break ws,
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("server did not come up: {e}"),
            }
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_mb(pid);
        let started = Instant::now();
        let mut sockets = Vec::with_capacity(n);
        for _ in 0..n {
            sockets.push(connect().await.expect("connect"));
        }
        let opened = started.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_mb(pid);
        let extra = after - before;
        println!("{n} idle WebSocket connections opened in {:.1} s", opened.as_secs_f64());
        println!("server RSS: {before:.1} MB before, {after:.1} MB after: {extra:.1} MB extra, {:.1} KB per connection", extra * 1024.0 / n as f64);
        println!("goal: 10,000 idle connections ≤ 100 MB extra");
        drop(sockets);
        drop(warm);
        drop(server);
        if n >= 10_000 && extra > 100.0 {
            std::process::exit(1);
        }
    });
}
