//! Parsing and validating each of the 17 action types (request JSON already decoded).

mod common;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use pilot_bridge::native::request::NativeRequest;
use serde_json::json;

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    for (name, action) in common::sample_actions() {
        let body = json!({ "action": action, "idempotencyKey": "bench-1", "transcript": "bench" });
        g.bench_function(name, |b| {
            // The parser takes the body by value; each iteration gets a copy made outside the
            // timed part.
            b.iter_batched(
                || body.clone(),
                |body| NativeRequest::parse(black_box(body)).expect("valid"),
                BatchSize::SmallInput,
            )
        });
    }
    // From raw bytes, as the HTTP adapter sees a body.
    let raw = serde_json::to_vec(&common::lookup_body()).expect("json");
    g.bench_function("lookup_person_from_bytes", |b| {
        b.iter(|| {
            let v: serde_json::Value = serde_json::from_slice(black_box(&raw)).expect("json");
            NativeRequest::parse(v).expect("valid")
        })
    });
    g.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
