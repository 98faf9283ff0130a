//! Shared set-up for the benches: a seeded demo workspace in a temp dir, a principal for it, and
//! the request bodies of a realistic voice session.

#![allow(dead_code)]

use std::sync::Arc;

use pilot_bridge::auth::Principal;
use pilot_bridge::config::Config;
use pilot_bridge::domain::{Plan, Scope};
use pilot_bridge::store::{orgs, Store, StoreOptions};
use serde_json::{json, Value};

pub const KEY: &str = "op_live_BenchKeyBenchKeyBenchKeyBenchKey000";

/// A demo workspace without rate limiting, in a fresh temp dir.
pub fn demo_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), &StoreOptions::default()).expect("store");
    store
        .write_sync(|tx| {
            pilot_bridge::demo::seed(tx)?;
            orgs::update(
                tx,
                "demo",
                &orgs::OrgChanges {
                    rate_limit: Some(0),
                    ..Default::default()
                },
            )?;
            pilot_bridge::demo::ensure_key(tx, Some(KEY))
        })
        .expect("seed");
    (dir, store)
}

pub fn config(dir: &tempfile::TempDir) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    c.limits.default_rate_limit = 0;
    c
}

pub fn principal(store: &Store) -> Arc<Principal> {
    let key_id = store
        .read_sync(|c| {
            Ok(pilot_bridge::store::keys::list(c, Some("demo"))?[0]
                .id
                .clone())
        })
        .expect("key id");
    Arc::new(Principal {
        org_id: "demo".into(),
        key_id,
        scopes: Scope::ALL.to_vec(),
        plan: Plan::Pro,
        rate_limit: Some(0),
        upstream_key: None,
        two_step: false,
    })
}

pub fn lookup_body() -> Value {
    json!({ "action": { "type": "lookup_person", "personName": "Sarah Chen", "company": "Notion" },
            "transcript": "Who is Sarah Chen at Notion?", "executionMode": "fast" })
}

/// One sample request per action type, in the reference's order.
pub fn sample_actions() -> Vec<(&'static str, Value)> {
    vec![
        (
            "lookup_person",
            json!({"type":"lookup_person","personName":"Sarah Chen","company":"Notion"}),
        ),
        (
            "lookup_company",
            json!({"type":"lookup_company","company":"notion.so"}),
        ),
        (
            "recent_signals",
            json!({"type":"recent_signals","company":"Notion","limit":5}),
        ),
        (
            "start_research",
            json!({"type":"start_research","company":"Acme","topic":"funding"}),
        ),
        (
            "enrich_contact",
            json!({"type":"enrich_contact","email":"john@acme.com"}),
        ),
        (
            "add_to_campaign",
            json!({"type":"add_to_campaign","contactRef":"Sarah Chen","campaignRef":"Seed founders"}),
        ),
        (
            "remove_from_campaign",
            json!({"type":"remove_from_campaign","contactRef":"Priya Raman","campaignRef":"Seed founders"}),
        ),
        (
            "pause_campaign",
            json!({"type":"pause_campaign","campaignRef":"Seed founders"}),
        ),
        (
            "resume_campaign",
            json!({"type":"resume_campaign","campaignRef":"Q4 Enterprise"}),
        ),
        (
            "draft_message",
            json!({"type":"draft_message","contactRef":"John Smith","instructions":"mention the Series B"}),
        ),
        (
            "send_message",
            json!({"type":"send_message","contactRef":"John Smith","body":"Congrats on the round!"}),
        ),
        (
            "campaign_stats",
            json!({"type":"campaign_stats","campaignRef":"Seed founders"}),
        ),
        (
            "reply_inbox",
            json!({"type":"reply_inbox","unreadOnly":true}),
        ),
        (
            "book_meeting",
            json!({"type":"book_meeting","contactRef":"Sarah Chen","startTime":"2026-12-01T15:00:00Z"}),
        ),
        (
            "mark_status",
            json!({"type":"mark_status","contactRef":"John Smith","status":"interested"}),
        ),
        (
            "note_on_contact",
            json!({"type":"note_on_contact","contactRef":"Sarah Chen","note":"Follow up Friday"}),
        ),
        ("undo_last", json!({"type":"undo_last"})),
    ]
}

/// The `p` quantile (0..=1) of an ascending slice, nearest rank; 0 for an empty one.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// A number from the environment variable `name`, or `default` when unset or unreadable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
