//! Upstream-mode overhead (`harness = false`): a gateway (`backend = "upstream"`) in front of an
//! embedded pilot-bridge, both on loopback in this process, paced turns over 8 connections. For
//! each action it prints the gateway's server time, the part spent waiting on the upstream (the
//! `upstream` phase of `Server-Timing`) and the difference — what the gateway itself adds,
//! which DESIGN/issue 6 want at ≤ 1 ms p99 — plus the same action sent straight to the
//! upstream's own native endpoint for comparison. The gateway's read cache is off, so every
//! read goes upstream.
//!
//! `UPSTREAM_TURNS` (default 4000) and `UPSTREAM_RATE` (default 200 turns/s) tune the run.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pilot_bridge::config::BackendKind;
use serde_json::{json, Value};

const CONNECTIONS: usize = 8;

fn turn(i: usize) -> (&'static str, Value) {
    let people = ["Sarah Chen", "John Smith", "Sarah Kim"];
    let who = people[i % people.len()];
    match i % 8 {
        0..=2 => (
            "lookup_person",
            json!({ "action": { "type": "lookup_person", "personName": who } }),
        ),
        3 => (
            "recent_signals",
            json!({ "action": { "type": "recent_signals", "company": "Notion" } }),
        ),
        4 => (
            "campaign_stats",
            json!({ "action": { "type": "campaign_stats", "campaignRef": "Seed founders" } }),
        ),
        5 => (
            "mark_status",
            json!({ "action": { "type": "mark_status", "contactRef": who, "status": if i % 16 < 8 { "interested" } else { "replied" } }, "idempotencyKey": format!("up-status-{i}") }),
        ),
        _ => (
            "note_on_contact",
            json!({ "action": { "type": "note_on_contact", "contactRef": who, "note": format!("debrief {i}") }, "idempotencyKey": format!("up-note-{i}") }),
        ),
    }
}

/// (action, server ms, upstream-phase ms)
type Sample = (&'static str, f64, f64);

fn upstream_phase(server_timing: &str) -> f64 {
    server_timing
        .split(", ")
        .filter_map(|p| p.split_once(";dur="))
        .filter(|(n, _)| *n == "upstream")
        .filter_map(|(_, d)| d.parse::<f64>().ok())
        .sum()
}

async fn run(url: String, turns: usize, rate: f64) -> Vec<Sample> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONNECTIONS)
        .build()
        .expect("client");
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = tokio::time::Instant::now();
    let mut workers = Vec::new();
    for _ in 0..CONNECTIONS {
        let (client, url, next) = (client.clone(), url.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= turns {
                    return out;
                }
                tokio::time::sleep_until(t0 + Duration::from_secs_f64(i as f64 / rate)).await;
                let (action, body) = turn(i);
                let resp = client
                    .post(&url)
                    .bearer_auth(common::KEY)
                    .json(&body)
                    .send()
                    .await
                    .expect("send");
                let st = resp
                    .headers()
                    .get("server-timing")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let v: Value = resp.json().await.expect("json");
                assert_eq!(v["ok"], true, "{v}");
                let ms = v["data"]["performance"]["server_elapsed_ms"]
                    .as_f64()
                    .expect("server_elapsed_ms");
                out.push((action, ms, upstream_phase(&st)));
            }
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    all
}

fn main() {
    let turns: usize = common::env_or("UPSTREAM_TURNS", 4_000);
    let rate: f64 = common::env_or("UPSTREAM_RATE", 200.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (up_dir, up_store) = common::demo_store();
        let upstream = pilot_bridge::server::start(common::config(&up_dir), Some(up_store))
            .await
            .expect("upstream");
        let gw_dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = common::config(&gw_dir);
        cfg.backend = BackendKind::Upstream;
        cfg.upstream.base_url = format!("http://{}", upstream.addr);
        cfg.upstream.read_cache_ms = 0;
        let gateway = pilot_bridge::server::start(cfg, None)
            .await
            .expect("gateway");

        let direct = run(
            format!("http://{}/api/v1/native/outreachpilot", upstream.addr),
            turns,
            rate,
        )
        .await;
        let via = run(
            format!("http://{}/api/v1/native/outreachpilot", gateway.addr),
            turns,
            rate,
        )
        .await;

        let mut direct_by: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for (a, ms, _) in direct {
            direct_by.entry(a).or_default().push(ms);
        }
        let mut via_by: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
        for (a, ms, up) in via {
            let e = via_by.entry(a).or_default();
            e.0.push(ms);
            e.1.push((ms - up).max(0.0));
        }
        println!(
            "\nupstream mode, {CONNECTIONS} connections, {turns} turns at {rate}/s, read cache off (ms):"
        );
        println!(
            "{:<16} {:>12} {:>12} {:>14} {:>14} {:>14} {:>14}",
            "action",
            "direct p50",
            "direct p99",
            "gateway p50",
            "gateway p99",
            "added p50",
            "added p99"
        );
        for (action, (mut total, mut added)) in via_by {
            total.sort_by(f64::total_cmp);
            added.sort_by(f64::total_cmp);
            let mut d = direct_by.remove(action).unwrap_or_default();
            d.sort_by(f64::total_cmp);
            println!(
                "{action:<16} {:>12.3} {:>12.3} {:>14.3} {:>14.3} {:>14.3} {:>14.3}",
                common::percentile(&d, 0.5),
                common::percentile(&d, 0.99),
                common::percentile(&total, 0.5),
                common::percentile(&total, 0.99),
                common::percentile(&added, 0.5),
                common::percentile(&added, 0.99),
            );
        }
        println!("(direct: the upstream's own native endpoint; added: gateway time outside the upstream phase)");
        gateway.shutdown().await;
        upstream.shutdown().await;
    });
}
