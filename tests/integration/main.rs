//! The integration tests, one module per area, in one test binary: each test binary links the
//! whole crate and its dependencies, so one binary instead of thirty keeps a clean build (CI)
//! minutes shorter. Each test starts its own server on port 0 with its own data directory.
//! `tests/long_uptime.rs` stays a binary of its own: it loads one server hard and reads
//! process-wide metrics, which other servers in the same process would disturb.
//!
//! Run one area with `cargo test --test integration native_ws::`.

mod common;

mod chat;
mod cli_and_durability;
mod control;
mod deploy_files;
mod envelope_and_auth;
mod examples;
mod hostile_input;
mod intent_accuracy;
mod mcp;
mod metrics;
mod native_actions;
mod native_confirmation;
mod native_errors;
mod native_idempotency;
mod native_speech;
mod native_state;
mod native_transcript;
mod native_ws;
mod openapi;
mod replicas;
mod rest_campaigns;
mod rest_companies;
mod rest_contacts;
mod rest_feeds;
mod rest_misc;
mod telemetry;
mod upstream;
mod upstream_hygiene;
mod webhooks;
