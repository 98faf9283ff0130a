//! Soak (`harness = false`): minutes of mixed HTTP + WebSocket traffic against the server
//! binary of the same build (release under `cargo bench`) running as its own process: reads, keyless and keyed writes (with replays),
//! confirmations of dangerous actions, and undos. Every 10 s it prints the server's RSS, the WAL
//! and database sizes, the interval's request count and client-side p50/p99, and the errors so
//! far. It exits non-zero when any request fails (a non-200 answer, an `ok: false` frame, a
//! transport error), when the WAL ever exceeds 256 MiB or is not back under 64 MiB soon after
//! the load, or when memory keeps growing through the second half of the run (a least-squares
//! slope above 0.5 MiB/min).
//!
//! `SOAK_SECS` (default 600), `SOAK_HTTP` HTTP workers (default 6), `SOAK_WS` WebSocket
//! connections (default 2).

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const MIB: f64 = 1024.0 * 1024.0;
const REPORT_EVERY: Duration = Duration::from_secs(10);
const WAL_PEAK_LIMIT: f64 = 256.0 * MIB;
const WAL_SETTLED_LIMIT: f64 = 64.0 * MIB;
/// Largest RSS growth through the second half of a run, in MiB per minute.
const RSS_SLOPE_LIMIT: f64 = 0.5;

/// The least-squares slope of `(seconds, MiB)` samples, in MiB per minute.
fn slope_per_minute(samples: &[(f64, f64)]) -> f64 {
    let n = samples.len() as f64;
    let (mt, mr) = samples
        .iter()
        .fold((0.0, 0.0), |(t, r), &(st, sr)| (t + st / n, r + sr / n));
    let (cov, var) = samples.iter().fold((0.0, 0.0), |(c, v), &(t, r)| {
        (c + (t - mt) * (r - mr), v + (t - mt) * (t - mt))
    });
    if var == 0.0 {
        0.0
    } else {
        cov / var * 60.0
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn file_bytes(p: &PathBuf) -> f64 {
    std::fs::metadata(p).map(|m| m.len() as f64).unwrap_or(0.0)
}

/// What the workers share: latencies of the current interval, counters, and the first errors.
#[derive(Default)]
struct Stats {
    latencies_ms: Mutex<Vec<f64>>,
    requests: AtomicU64,
    errors: AtomicU64,
    first_errors: Mutex<Vec<String>>,
}

impl Stats {
    fn record(&self, started: Instant, outcome: Result<(), String>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut l) = self.latencies_ms.lock() {
            l.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        if let Err(e) = outcome {
            self.errors.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut f) = self.first_errors.lock() {
                if f.len() < 10 {
                    f.push(e);
                }
            }
        }
    }
}

/// A native reply over HTTP that is not a 200 `ok: true` envelope is an error.
async fn native(http: &reqwest::Client, url: &str, body: Value) -> Result<Value, String> {
    let r = http
        .post(url)
        .header("authorization", format!("Bearer {}", common::KEY))
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("transport: {e}"))?;
    let status = r.status().as_u16();
    let v: Value = r.json().await.map_err(|e| format!("body: {e}"))?;
    if status != 200 || v["ok"] != true {
        return Err(format!("{status}: {v}"));
    }
    Ok(v["data"].clone())
}

/// One HTTP worker's endless mix, until `stop`.
async fn http_worker(w: usize, url: String, stats: Arc<Stats>, stop: Arc<AtomicBool>) {
    let http = reqwest::Client::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let started = Instant::now();
        let outcome = match n % 20 {
            // Keyless write, each one different (identical ones would be deduplicated).
            0..=2 => native(
                &http,
                &url,
                json!({ "action": { "type": "note_on_contact",
                "contactRef": "Sarah Chen", "note": format!("soak w{w} n{n}") } }),
            )
            .await
            .map(drop),
            // Keyed write, then its replay.
            3 => {
                let body = json!({ "action": { "type": "note_on_contact", "contactRef": "John Smith",
                    "note": format!("keyed w{w} n{n}") }, "idempotencyKey": format!("soak-{w}-{n}") });
                match native(&http, &url, body.clone()).await {
                    Ok(_) => native(&http, &url, body).await.and_then(|d| {
                        if d["mode"] == "duplicate" {
                            Ok(())
                        } else {
                            Err(format!("replay answered {}", d["mode"]))
                        }
                    }),
                    Err(e) => Err(e),
                }
            }
            // A dangerous action: asked, then confirmed.
            4 => {
                let asked = native(
                    &http,
                    &url,
                    json!({ "action": { "type": "mark_status",
                    "contactRef": "John Smith", "status": "disqualified" } }),
                )
                .await;
                match asked {
                    // Another worker may have disqualified him already: then there is nothing
                    // to confirm and the answer says so.
                    Ok(d) if d["mode"] != "confirmation_required" => Ok(()),
                    Ok(d) => match d["pending_action_id"].as_str() {
                        Some(pid) => native(
                            &http,
                            &url,
                            json!({ "pendingActionId": pid, "confirmed": true }),
                        )
                        .await
                        .map(drop),
                        None => Err(format!("no pending action: {d}")),
                    },
                    Err(e) => Err(e),
                }
            }
            5 => native(&http, &url, json!({ "action": { "type": "undo_last" } }))
                .await
                .map(drop),
            6 => native(
                &http,
                &url,
                json!({ "action": { "type": "campaign_stats",
                "campaignRef": "Seed founders" } }),
            )
            .await
            .map(drop),
            _ => native(&http, &url, common::lookup_body()).await.map(drop),
        };
        stats.record(started, outcome);
    }
}

/// One WebSocket connection: a lookup or a keyless note per frame, one at a time.
async fn ws_worker(w: usize, url: String, stats: Arc<Stats>, stop: Arc<AtomicBool>) {
    let mut req = url.as_str().into_client_request().expect("ws request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", common::KEY).parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("ws upgrade");
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let id = format!("ws{w}-{n}");
        let action = if n.is_multiple_of(4) {
            json!({ "type": "note_on_contact", "contactRef": "Sarah Chen", "note": format!("ws w{w} n{n}") })
        } else {
            json!({ "type": "lookup_person", "personName": "John Smith" })
        };
        let started = Instant::now();
        let sent = ws
            .send(Message::Text(
                json!({ "id": id, "action": action }).to_string().into(),
            ))
            .await;
        let outcome = match sent {
            Err(e) => Err(format!("ws send: {e}")),
            Ok(()) => loop {
                match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                        // A `progress` frame ("One moment.") only says the answer is coming.
                        if v["id"] != id.as_str() || v["type"] == "progress" {
                            continue;
                        }
                        break if v["ok"] == true {
                            Ok(())
                        } else {
                            Err(format!("ws frame: {v}"))
                        };
                    }
                    Ok(Some(Ok(_))) => continue,
                    other => break Err(format!("ws read: {other:?}")),
                }
            },
        };
        let failed = outcome.is_err();
        stats.record(started, outcome);
        if failed {
            return;
        }
    }
}

fn main() {
    let secs: u64 = common::env_or("SOAK_SECS", 600);
    let http_workers: usize = common::env_or("SOAK_HTTP", 6);
    let ws_workers: usize = common::env_or("SOAK_WS", 2);

    let (dir, store) = common::demo_store();
    drop(store);
    let db = dir.path().join("pilot-bridge.db");
    let wal = dir.path().join("pilot-bridge.db-wal");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_pilot-bridge"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start server"),
    );
    let pid = server.0.id();
    let root = format!("http://127.0.0.1:{port}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let failed = rt.block_on(async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::get(format!("{root}/readyz"))
            .await
            .map_or(true, |r| r.status() != 200)
        {
            assert!(Instant::now() < deadline, "server did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        let native_url = format!("{root}/api/v1/native/outreachpilot");
        for w in 0..http_workers {
            tasks.push(tokio::spawn(http_worker(w, native_url.clone(), stats.clone(), stop.clone())));
        }
        let ws_url = format!("ws://127.0.0.1:{port}/api/v1/native/outreachpilot/ws");
        for w in 0..ws_workers {
            tasks.push(tokio::spawn(ws_worker(w, ws_url.clone(), stats.clone(), stop.clone())));
        }
        println!(
            "soak: {secs} s, {http_workers} HTTP workers + {ws_workers} WebSocket connections against {} (pid {pid})",
            env!("CARGO_BIN_EXE_pilot-bridge")
        );
        println!("{:>6} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9} {:>7}", "t (s)", "RSS MiB", "WAL MiB", "DB MiB", "req", "req/s", "p50 ms", "p99 ms", "errors");
        let started = Instant::now();
        let mut rss_samples: Vec<(f64, f64)> = Vec::new();
        let mut wal_peak: f64 = 0.0;
        let mut last_requests = 0;
        let mut next_report = started + REPORT_EVERY;
        while started.elapsed() < Duration::from_secs(secs) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            wal_peak = wal_peak.max(file_bytes(&wal));
            if Instant::now() < next_report {
                continue;
            }
            next_report += REPORT_EVERY;
            let mut lat = std::mem::take(&mut *stats.latencies_ms.lock().expect("latencies"));
            lat.sort_by(f64::total_cmp);
            let requests = stats.requests.load(Ordering::Relaxed);
            let t = started.elapsed().as_secs_f64();
            let rss = rss_mib(pid);
            rss_samples.push((t, rss));
            println!(
                "{:>6.0} {:>9.1} {:>9.1} {:>9.1} {:>8} {:>8.0} {:>9.2} {:>9.2} {:>7}",
                t,
                rss,
                file_bytes(&wal) / MIB,
                file_bytes(&db) / MIB,
                requests - last_requests,
                (requests - last_requests) as f64 / REPORT_EVERY.as_secs_f64(),
                common::percentile(&lat, 0.5),
                common::percentile(&lat, 0.99),
                stats.errors.load(Ordering::Relaxed)
            );
            last_requests = requests;
        }
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        // After the load: the WAL must come back down within seconds (a quiet spell truncates
        // it to nothing).
        let settle = Instant::now();
        let mut wal_after = file_bytes(&wal);
        while wal_after > 0.0 && settle.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            wal_after = file_bytes(&wal);
        }
        let errors = stats.errors.load(Ordering::Relaxed);
        println!(
            "total {} requests, {errors} errors; WAL peak {:.1} MiB, {:.1} MiB {:.1} s after the load",
            stats.requests.load(Ordering::Relaxed),
            wal_peak / MIB,
            wal_after / MIB,
            settle.elapsed().as_secs_f64()
        );
        for e in stats.first_errors.lock().expect("errors").iter() {
            println!("error: {e}");
        }
        let mut failed = Vec::new();
        if errors > 0 {
            failed.push(format!("{errors} requests failed"));
        }
        if wal_peak > WAL_PEAK_LIMIT {
            failed.push(format!("WAL peaked at {:.1} MiB (limit 256)", wal_peak / MIB));
        }
        if wal_after > WAL_SETTLED_LIMIT {
            failed.push(format!("WAL still {:.1} MiB after the load (limit 64)", wal_after / MIB));
        }
        // Memory: caches fill during the first half; through the second half RSS must level
        // off. The least-squares slope of the second half's samples must stay under
        // RSS_SLOPE_LIMIT, so a steady leak of that size fails a 10-minute run.
        if rss_samples.len() >= 6 {
            let second_half = &rss_samples[rss_samples.len() / 2..];
            let slope = slope_per_minute(second_half);
            let (mid, last) = (second_half[0].1, rss_samples[rss_samples.len() - 1].1);
            println!(
                "RSS {mid:.1} MiB at half time, {last:.1} MiB at the end; second-half slope {slope:+.2} MiB/min"
            );
            if slope > RSS_SLOPE_LIMIT {
                failed.push(format!(
                    "RSS kept growing through the second half: {slope:+.2} MiB/min ({mid:.1} -> {last:.1} MiB)"
                ));
            }
        }
        for f in &failed {
            println!("FAILED: {f}");
        }
        !failed.is_empty()
    });
    drop(server);
    drop(dir);
    if failed {
        std::process::exit(1);
    }
}
