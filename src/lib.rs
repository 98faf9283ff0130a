//! pilot-bridge: a low-latency gateway that lets voice assistants, wearables and agent frameworks
//! drive an OutreachPilot-compatible sales CRM with structured actions.
//!
//! # Layout
//!
//! ```text
//! main.rs         thin binary: hands the process arguments to `cli`
//! cli.rs          serve | keys create/revoke/list | org create/set/show
//! config.rs       defaults + TOML file + PILOT_BRIDGE_* env + flags, validated once
//! server.rs       bind, serve, graceful shutdown (also used by the integration tests)
//! app.rs          AppState shared by every transport
//! error.rs        ApiError: stable code, HTTP status, details, spoken summary
//! domain.rs       closed vocabularies: plans, scopes, pilot modes, statuses
//! ids.rs text.rs  ids/timestamps; name normalisation for matching
//! input.rs        field-by-field JSON reading with field-path errors
//! auth/           API keys (SHA-256 lookup, cached verdicts), scopes, plans, rate limiting
//! native/         the bridge core: the pipeline (mod.rs), confirmation, replay, the 17 actions,
//!                 resolution, undo; knows neither HTTP nor which backend or state store runs
//! crm/            the CRM `Backend` trait: embedded (SQLite transaction per write) and
//!                 upstream (remote REST v1 API)
//! state/          the `StateStore` trait: durable idempotency records, pending actions, undo
//!                 entries, dedupe window (SQLite), and the per-process running claims
//! intent/         the built-in intent parser: an utterance → one of the 17 actions, or yes/no
//! chat/           POST /chat: threads, credits, tools through the native pipeline, providers
//!                 (builtin, OpenAI-compatible)
//! events.rs       server-pushed events per API key (job.completed, message.sent, …)
//! store/          embedded SQLite (WAL): schema migrations and one module per table family
//! upstream/       backend = "upstream": pooled reqwest client for a remote REST v1 API,
//!                 deadlines, read retries, circuit breaker, upstream error mapping
//! http/           axum transport: router, envelope, extractors, middleware, REST v1 handlers
//! mcp/            MCP at /mcp (rmcp, stateless): the actions as tools, Host/Origin checks
//! demo.rs         the demo workspace seeded by `serve --demo`
//! telemetry/      tracing subscriber, Prometheus recorder, cached handles of per-request series
//! otel.rs         per-turn OpenTelemetry traces over OTLP/HTTP (only with [telemetry] otlp_endpoint)
//! webhooks/       event outbox (`emit`), Standard Webhooks signing, SSRF guard, delivery worker
//! ```

#![forbid(unsafe_code)]

/// mimalloc instead of the system allocator: under concurrent load glibc's malloc spent about a
/// third of the CPU time of a native turn (measured with `perf` on `benches/http.rs`). Heap
/// profilers that hook malloc (heaptrack) see only the system allocator: build with
/// `--no-default-features` to profile.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod app;
pub mod auth;
pub mod chat;
pub mod cli;
pub mod config;
pub mod crm;
pub mod demo;
pub mod domain;
pub mod error;
pub mod event_journal;
pub mod event_relay;
pub mod events;
pub mod http;
pub mod ids;
pub mod input;
pub mod intent;
pub mod mcp;
pub mod native;
pub mod otel;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod upstream;
pub mod webhooks;

pub use app::{App, AppState};
pub use config::Config;
pub use http::build_router;
