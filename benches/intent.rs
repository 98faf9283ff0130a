//! The built-in intent parser (DESIGN §14, §19: ≤ 50 µs p99 per utterance): criterion timings
//! for a few typical utterances, then the p99 over every labelled utterance of
//! `tests/data/intents.jsonl` (parse, and placing dates on the calendar), printed at the end.

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pilot_bridge::intent::{understand, Clock, Understanding};

const DATA: &str = include_str!("../tests/data/intents.jsonl");

fn utterances() -> Vec<String> {
    DATA.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["text"].as_str().map(str::to_string))
        .collect()
}

fn read(text: &str, clock: &Clock) -> usize {
    match understand(text) {
        Understanding::Action(i) => i.resolve(clock).0.kind.len(),
        Understanding::Confirm(_) => 1,
        Understanding::Unrecognized => 0,
    }
}

fn intent(c: &mut Criterion) {
    let clock = Clock::new(chrono::Utc::now(), chrono_tz::America::New_York);
    let mut g = c.benchmark_group("intent");
    for (name, text) in [
        ("lookup", "um who is Sarah Chen at Notion"),
        (
            "add_to_campaign",
            "add john smith to the seed founders campaign",
        ),
        (
            "book_meeting",
            "book a 45 minute meeting with john smith next tuesday at 10am",
        ),
        ("note", "remember that John Smith prefers email"),
        ("unrecognized", "what's the weather like today"),
    ] {
        g.bench_function(name, |b| b.iter(|| read(black_box(text), &clock)));
    }
    g.finish();

    // p99 over the labelled set: each utterance read many times, every call timed.
    let all = utterances();
    let mut samples: Vec<Duration> = Vec::with_capacity(all.len() * 200);
    for _ in 0..200 {
        for t in &all {
            let start = Instant::now();
            black_box(read(black_box(t), &clock));
            samples.push(start.elapsed());
        }
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    println!(
        "intent parser over {} labelled utterances x 200: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs (target p99 <= 50 µs)",
        all.len(),
        at(0.50).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        at(1.0).as_secs_f64() * 1e6,
    );
}

criterion_group!(benches, intent);
criterion_main!(benches);
