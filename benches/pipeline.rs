//! The bridge core in process (no HTTP): a read, a durable write with an idempotency key (and
//! the same write's effect alone, as the baseline of what durable state costs), a replay of
//! that write, and a confirm round of a dangerous action. Then (DESIGN §14, §16) the same keyed
//! write and read with the SQLite state store and with the Redis state store, in the same run,
//! against a `redis-server` on loopback started here (skipped with a notice without one).

mod common;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use pilot_bridge::native::timing::ServerTiming;
use pilot_bridge::native::{Bridge, Transport};
use serde_json::json;

fn pipeline(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (_dir, store) = common::demo_store();
    let principal = common::principal(&store);
    let bridge_store = store.clone();
    let bridge = Bridge::new(store, pilot_bridge::config::NativeConfig::default());
    let turn = |body: serde_json::Value| {
        let bridge = bridge.clone();
        let p = principal.clone();
        async move {
            let out = bridge
                .handle(p, body, ServerTiming::start(), Transport::Http)
                .await;
            assert!(out.result.is_ok(), "{:?}", out.result.err());
            out
        }
    };

    // The same turn with the read cache off: every lookup resolves in SQLite.
    let uncached = Bridge::new(
        bridge_store.clone(),
        pilot_bridge::config::NativeConfig {
            read_cache_ms: 0,
            ..Default::default()
        },
    );
    let mut g = c.benchmark_group("pipeline");
    // The floor under every SQLite step of a turn: one round trip to the blocking pool.
    g.bench_function("blocking_pool_hop", |b| {
        b.to_async(&rt)
            .iter(|| async { tokio::task::spawn_blocking(|| 1u8).await.is_ok() })
    });
    g.bench_function("lookup_person_uncached", |b| {
        b.to_async(&rt).iter(|| {
            let (bridge, p) = (uncached.clone(), principal.clone());
            async move {
                let out = bridge
                    .handle(
                        p,
                        common::lookup_body(),
                        ServerTiming::start(),
                        Transport::Http,
                    )
                    .await;
                assert!(out.result.is_ok());
            }
        })
    });
    // The SQLite work of a lookup alone, on the calling thread: what the blocking pool runs.
    let action = pilot_bridge::native::action::parse_action(&common::lookup_body()["action"])
        .expect("action");
    let plan_store = bridge_store.clone();
    g.bench_function("lookup_person_sql_only", |b| {
        b.iter(|| {
            plan_store
                .read_sync(|c| pilot_bridge::native::actions::plan(c, "demo", &action))
                .is_ok()
        })
    });
    g.bench_function("lookup_person", |b| {
        b.to_async(&rt).iter(|| turn(common::lookup_body()))
    });

    // What one durable write adds to the log, before timing it: bytes of WAL per keyed note
    // and per bare effect (each frame is one 4 KiB page plus a 24-byte header). Every dirty
    // page is written at commit, so this is the write's I/O cost.
    let wal_per_write = |label: &str, write: &dyn Fn(u64)| {
        bridge_store.checkpoint_sync().expect("checkpoint");
        let before = bridge_store.file_sizes().wal_bytes;
        for i in 0..200 {
            write(i);
        }
        let bytes = bridge_store.file_sizes().wal_bytes.saturating_sub(before) / 200;
        println!(
            "{label}: {bytes} bytes of WAL per write (~{} pages)",
            bytes / 4120
        );
    };
    let phases = std::sync::Mutex::new(std::collections::BTreeMap::<String, f64>::new());
    wal_per_write("note_on_contact_with_key", &|i| {
        let out = rt.block_on(turn(json!({ "action": { "type": "note_on_contact", "contactRef": "Sarah Chen", "note": "bench note" },
                                 "idempotencyKey": format!("wal-note-{i}") })));
        let mut phases = phases.lock().expect("phases");
        for part in out.server_timing.split(", ") {
            if let Some((name, ms)) = part.split_once(";dur=") {
                *phases.entry(name.to_string()).or_default() +=
                    ms.parse::<f64>().unwrap_or(0.0) / 200.0;
            }
        }
    });
    println!(
        "note_on_contact_with_key: mean ms per Server-Timing phase {:?}",
        phases.lock().expect("phases")
    );

    let mut n = 0u64;
    g.bench_function("note_on_contact_with_key", |b| {
        b.to_async(&rt).iter(|| {
            n += 1;
            turn(json!({ "action": { "type": "note_on_contact", "contactRef": "Sarah Chen", "note": "bench note" },
                         "idempotencyKey": format!("bench-note-{n}") }))
        })
    });

    // The same note's effect alone, on the calling thread, in one write transaction: the note,
    // no idempotency record, no undo entry, no audit. What the pipeline and durable state add
    // to a keyed write is the difference (same run, same database).
    let note_action = pilot_bridge::native::action::parse_action(
        &json!({ "type": "note_on_contact", "contactRef": "Sarah Chen", "note": "bench note" }),
    )
    .expect("action");
    let note_plan = match bridge_store
        .read_sync(|c| pilot_bridge::native::actions::plan(c, "demo", &note_action))
        .expect("plan")
    {
        pilot_bridge::native::plan::Step::Execute(plan) => plan,
        pilot_bridge::native::plan::Step::Reply(_) => panic!("a note plans a write"),
    };
    wal_per_write("note_on_contact_effect_only", &|_| {
        bridge_store
            .write_sync(|tx| {
                let ctx = pilot_bridge::native::actions::ExecCtx {
                    org: "demo",
                    key_id: &principal.key_id,
                    outbox_hold_secs: 30,
                    undo_window_secs: 600,
                };
                pilot_bridge::native::actions::execute(tx, &ctx, note_plan.clone()).map(|_| ())
            })
            .expect("effect");
    });
    g.bench_function("note_on_contact_effect_only", |b| {
        b.iter(|| {
            bridge_store
                .write_sync(|tx| {
                    let ctx = pilot_bridge::native::actions::ExecCtx {
                        org: "demo",
                        key_id: &principal.key_id,
                        outbox_hold_secs: 30,
                        undo_window_secs: 600,
                    };
                    pilot_bridge::native::actions::execute(tx, &ctx, note_plan.clone()).map(|_| ())
                })
                .is_ok()
        })
    });

    // The same write with a webhook subscription that wants its event: the event row and its
    // delivery row join the write's transaction (no delivery worker runs here).
    bridge_store
        .write_sync(|tx| {
            pilot_bridge::store::webhooks::insert(
                tx,
                pilot_bridge::demo::DEMO_ORG,
                "https://hooks.example.com/bench",
                &["note.created".to_string()],
                "whsec_YmVuY2g=",
            )
        })
        .expect("subscribe");
    g.bench_function("note_on_contact_with_key_and_webhook", |b| {
        b.to_async(&rt).iter(|| {
            n += 1;
            turn(json!({ "action": { "type": "note_on_contact", "contactRef": "Sarah Chen", "note": "bench note" },
                         "idempotencyKey": format!("bench-note-{n}") }))
        })
    });

    let replay = json!({ "action": { "type": "note_on_contact", "contactRef": "Sarah Chen", "note": "replayed" },
                         "idempotencyKey": "bench-replay" });
    rt.block_on(turn(replay.clone()));
    g.bench_function("replay", |b| b.to_async(&rt).iter(|| turn(replay.clone())));

    // Ask, then confirm; the membership is removed again outside the measured time.
    g.bench_function("confirm_round_add_to_campaign", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let asked = turn(json!({ "action": { "type": "add_to_campaign", "contactRef": "Sarah Chen", "campaignRef": "Seed founders" } })).await;
                    let pid = asked.result.as_ref().ok().and_then(|r| r.pending_action_id.clone()).expect("pending id");
                    turn(json!({ "pendingActionId": pid, "confirmed": true })).await;
                    total += t.elapsed();
                    turn(json!({ "action": { "type": "undo_last" } })).await;
                }
                total
            })
        })
    });
    g.finish();
}

/// A throwaway `redis-server` on a free loopback port; killed when dropped.
struct BenchRedis(std::process::Child, u16);

impl BenchRedis {
    fn start() -> Option<BenchRedis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .ok()?;
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(BenchRedis(child, port))
    }
}

impl Drop for BenchRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The same turns over the SQLite and the Redis state store, one after the other in this run:
/// a keyed `note_on_contact` (claim, execute, record, undo entry) and an uncached
/// `lookup_person`. Timed turn by turn; prints p50 and p99 per store and what Redis adds.
fn state_stores(_c: &mut Criterion) {
    let Some(redis) = BenchRedis::start() else {
        eprintln!("state_stores: SKIPPED, redis-server is not installed");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let turns: usize = common::env_or("STATE_BENCH_TURNS", 3_000);
    let cfg = pilot_bridge::config::NativeConfig {
        read_cache_ms: 0,
        ..Default::default()
    };
    let (_d1, sqlite_store) = common::demo_store();
    let (_d2, redis_store) = common::demo_store();
    let principal = common::principal(&sqlite_store);
    let redis_principal = common::principal(&redis_store);
    let sqlite = Bridge::new(sqlite_store, cfg.clone());
    let redis_bridge = rt.block_on(async {
        let url = format!("redis://127.0.0.1:{}/0", redis.1);
        let link = pilot_bridge::state::redis::RedisLink::connect(
            &url,
            pilot_bridge::state::redis::DEFAULT_TIMEOUT,
        )
        .expect("redis link");
        let retention = Bridge::state_retention(&cfg);
        let state =
            std::sync::Arc::new(pilot_bridge::state::redis::RedisState::new(link, retention));
        Bridge::embedded_with_state(redis_store, cfg.clone(), state)
    });
    let runs = [
        ("sqlite", sqlite, principal),
        ("redis", redis_bridge, redis_principal),
    ];
    let mut p50 = std::collections::HashMap::new();
    eprintln!("state_stores: {turns} turns each, in process, read cache off");
    for (case, body_of) in [
        ("note_on_contact_with_key", 0),
        ("lookup_person_uncached", 1),
    ] {
        for (name, bridge, p) in &runs {
            if *name == "redis" {
                redis_stats(&rt, redis.1, true);
            }
            let samples = rt.block_on(async {
                let mut ms = Vec::with_capacity(turns);
                for i in 0..turns + 100 {
                    let body = match body_of {
                        0 => json!({ "action": { "type": "note_on_contact", "contactRef": "Sarah Chen", "note": "bench note" },
                                     "idempotencyKey": format!("state-bench-{i}") }),
                        _ => common::lookup_body(),
                    };
                    let t = Instant::now();
                    let out = bridge
                        .handle(p.clone(), body, ServerTiming::start(), Transport::Http)
                        .await;
                    let elapsed = t.elapsed().as_secs_f64() * 1000.0;
                    assert!(out.result.is_ok(), "{:?}", out.result.err());
                    // The first 100 warm up connections and caches.
                    if i >= 100 {
                        ms.push(elapsed);
                    }
                }
                ms
            });
            let mut sorted = samples;
            sorted.sort_by(f64::total_cmp);
            let (a, b) = (
                common::percentile(&sorted, 0.5),
                common::percentile(&sorted, 0.99),
            );
            p50.insert((case, *name), a);
            eprintln!("state_stores/{case}/{name}: p50 {a:.3} ms, p99 {b:.3} ms");
            if *name == "redis" {
                let per_turn: Vec<String> = redis_stats(&rt, redis.1, false)
                    .into_iter()
                    .map(|(cmd, calls)| format!("{cmd} {:.1}", calls as f64 / (turns + 100) as f64))
                    .collect();
                eprintln!(
                    "state_stores/{case}/redis: Redis commands per turn: {}",
                    per_turn.join(", ")
                );
            }
        }
        let added = p50[&(case, "redis")] - p50[&(case, "sqlite")];
        eprintln!("state_stores/{case}: Redis adds {added:+.3} ms p50");
    }
}

/// Redis's own command counts (`INFO commandstats`), then reset when `reset`.
fn redis_stats(rt: &tokio::runtime::Runtime, port: u16, reset: bool) -> Vec<(String, u64)> {
    rt.block_on(async {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).expect("client");
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .expect("connection");
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut c)
            .await
            .expect("info");
        if reset {
            let _: () = redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .query_async(&mut c)
                .await
                .expect("resetstat");
        }
        // Lines like `cmdstat_evalsha:calls=9000,usec=...`.
        info.lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest
                    .strip_prefix("calls=")?
                    .split(',')
                    .next()?
                    .parse()
                    .ok()?;
                (name != "info" && !name.starts_with("config")).then(|| (name.to_string(), calls))
            })
            .collect()
    })
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = pipeline, state_stores
}
criterion_main!(benches);
