//! Scale check (`harness = false`): lookup and write latency of the bridge core with 1k, 100k and
//! 1M contacts in the org, and the process's memory at each size. Exits non-zero when the p50
//! lookup time at the largest size is more than twice the one at 1k (DESIGN §14).
//!
//! `SCALE_SIZES=1000,100000` picks other sizes (default 1000,100000,1000000).

mod common;

use std::time::Instant;

use pilot_bridge::native::timing::ServerTiming;
use pilot_bridge::native::{Bridge, Transport};
use serde_json::json;

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
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
    let sizes: Vec<usize> = std::env::var("SCALE_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 100_000, 1_000_000]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut lookup_p50 = Vec::new();
    println!(
        "{:>9} {:>9} {:>14} {:>14} {:>14} {:>14} {:>12} {:>9}",
        "contacts",
        "gen s",
        "lookup p50 ms",
        "lookup p99 ms",
        "fuzzy p50 ms",
        "write p50 ms",
        "write p99 ms",
        "RSS MB"
    );
    for &n in &sizes {
        let (dir, store) = common::demo_store();
        let extra = n.saturating_sub(pilot_bridge::demo::GENERATED_CONTACTS + 6);
        let t = Instant::now();
        store
            .write_sync(|tx| pilot_bridge::demo::generate(tx, "demo", extra))
            .expect("generate");
        store.checkpoint_sync().expect("checkpoint");
        let gen_s = t.elapsed().as_secs_f64();
        let principal = common::principal(&store);
        // The read cache would answer repeated lookups without touching SQLite; turn it off to
        // measure the indexed lookups themselves.
        let bridge = Bridge::new(
            store,
            pilot_bridge::config::NativeConfig {
                read_cache_ms: 0,
                ..Default::default()
            },
        );
        let run = |body: serde_json::Value| {
            let bridge = bridge.clone();
            let p = principal.clone();
            rt.block_on(async move {
                let out = bridge
                    .handle(p, body, ServerTiming::start(), Transport::Http)
                    .await;
                assert!(out.result.is_ok(), "{:?}", out.result.err());
                out.performance.server_elapsed_ms
            })
        };
        let measure = |iters: usize, body: &dyn Fn(usize) -> serde_json::Value| {
            for i in 0..50 {
                run(body(i));
            }
            let mut v: Vec<f64> = (0..iters).map(|i| run(body(i + 1_000_000))).collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let lookups = measure(
            2_000,
            &|_| json!({ "action": { "type": "lookup_person", "personName": "Sarah Chen", "company": "Notion" } }),
        );
        let fuzzy = measure(
            1_000,
            &|_| json!({ "action": { "type": "lookup_person", "personName": "sara chen" } }),
        );
        let writes = measure(
            1_000,
            &|i| json!({ "action": { "type": "note_on_contact", "contactRef": "John Smith", "note": "scale" }, "idempotencyKey": format!("scale-{n}-{i}") }),
        );
        println!(
            "{n:>9} {gen_s:>9.1} {:>14.3} {:>14.3} {:>14.3} {:>14.3} {:>12.3} {:>9.0}",
            common::percentile(&lookups, 0.5),
            common::percentile(&lookups, 0.99),
            common::percentile(&fuzzy, 0.5),
            common::percentile(&writes, 0.5),
            common::percentile(&writes, 0.99),
            rss_mb()
        );
        lookup_p50.push(common::percentile(&lookups, 0.5));
        drop(bridge);
        drop(dir);
    }
    if let (Some(first), Some(last)) = (lookup_p50.first(), lookup_p50.last()) {
        let ratio = last / first;
        println!("lookup p50 ratio largest/smallest: {ratio:.2} (goal ≤ 2)");
        if ratio > 2.0 {
            std::process::exit(1);
        }
    }
}
