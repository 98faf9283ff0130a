//! The Native Voice Bridge core: one transport-independent pipeline (DESIGN §2) that turns a
//! [`NativeRequest`] from an authenticated caller into a [`NativeReply`] — parse, idempotency,
//! resolve, confirmation gate / pilot mode, execute, audit, reply with timing. HTTP and WebSocket
//! adapters only translate their input and render the [`TurnOutcome`].
//!
//! The pipeline talks to two seams and never asks which implementation runs: a CRM
//! [`Backend`] (embedded store or upstream API) and a [`StateStore`] (durable idempotency
//! records, pending actions, undo entries). Reads live in `reads.rs`, questions and
//! confirmations in `confirm.rs`, replays in `replay.rs`.

pub mod action;
pub mod actions;
mod confirm;
pub mod control;
pub mod plan;
mod reads;
pub mod remote;
mod replay;
pub mod reply;
pub mod request;
pub mod resolve;
pub mod schema;
pub mod speech;
pub mod timing;
pub mod transcript;
pub mod undo;
pub mod workers;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use self::action::Action;
use self::plan::Step;
use self::reply::{NativeReply, Performance, ReplyMode, TurnOutcome};
use self::request::{ExecutionMode, NativeRequest};
use self::timing::{round_ms, ServerTiming};
use crate::auth::Principal;
use crate::config::NativeConfig;
use crate::crm::embedded::EmbeddedBackend;
use crate::crm::upstream::UpstreamBackend;
use crate::crm::{Backend, Effect, Execution, WriteRequest};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::state::claims::{Claim, ClaimGuard, Claims};
use crate::state::sqlite::SqliteState;
use crate::state::{Record, Scope, Seal, StateStore};
use crate::store::{audit, Store};
use crate::telemetry;
use crate::upstream::Upstream;

/// Which adapter a turn came through (a metrics label; the core behaves the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Http,
    WebSocket,
    /// A tool call of `POST /chat`.
    Chat,
    /// A tool call on `/mcp`.
    Mcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::WebSocket => "ws",
            Transport::Chat => "chat",
            Transport::Mcp => "mcp",
        }
    }
}

/// The bridge core. Cheap to share behind an `Arc`.
pub struct Bridge {
    backend: Box<dyn Backend>,
    state: Arc<dyn StateStore>,
    /// Requests running in this process, per idempotency scope.
    claims: Claims,
    cfg: NativeConfig,
    /// Answers of read actions by (org, request fingerprint), valid while the backend's write
    /// generation is unchanged (and for at most `read_cache_ms`). `None` when turned off.
    read_cache: Option<reads::ReadCache>,
}

/// What a turn leaves under its idempotency scope (DESIGN §8).
enum Keep {
    /// Nothing: clarifications, and errors raised before anything happened, which the client
    /// may retry with the same key.
    Nothing,
    /// Committed already, with the effect or with the pending action it asked about.
    Sealed(Record),
    /// To be recorded now, with the undo entry the write created.
    Record { undo_id: Option<String> },
    /// The scope was found taken while executing; this turn replayed what is there.
    Replayed(Record),
}

/// One turn's answer and what it leaves behind.
struct Turn {
    result: ApiResult<NativeReply>,
    keep: Keep,
    replayed: bool,
}

impl Turn {
    fn answer(result: ApiResult<NativeReply>, keep: Keep) -> Self {
        Turn {
            result,
            keep,
            replayed: false,
        }
    }

    /// An error raised before anything happened: nothing is kept.
    fn rejected(e: ApiError) -> Self {
        Turn::answer(Err(e), Keep::Nothing)
    }
}

/// Whether an error raised while executing is a final answer worth recording (a business
/// outcome) rather than a failure the client should retry (server, store or upstream trouble).
fn final_error(e: &ApiError) -> bool {
    !matches!(
        e.code,
        ErrorCode::InternalError
            | ErrorCode::UpstreamUnavailable
            | ErrorCode::UpstreamTimeout
            | ErrorCode::ServiceUnavailable
            | ErrorCode::StateUnavailable
            | ErrorCode::RateLimited
            | ErrorCode::IdempotencyKeyInUse
    )
}

impl Bridge {
    /// A bridge on the embedded store, with conversation state in the same database.
    pub fn new(store: Store, cfg: NativeConfig) -> Arc<Self> {
        let state = Arc::new(Self::sqlite_state(&store, &cfg));
        let backend = EmbeddedBackend::new(store, cfg.clone(), true);
        Self::with(Box::new(backend), state, cfg)
    }

    /// A bridge on the embedded store with conversation state elsewhere (Redis): nothing can
    /// be sealed in the effect's transaction, so records are written right after it.
    pub fn embedded_with_state(
        store: Store,
        cfg: NativeConfig,
        state: Arc<dyn StateStore>,
    ) -> Arc<Self> {
        let backend = EmbeddedBackend::new(store, cfg.clone(), false);
        Self::with(Box::new(backend), state, cfg)
    }

    /// A bridge in front of an upstream API. `store` holds no CRM records, only the gateway's
    /// conversation state; upstream read answers are cached for the upstream's `read_cache_ms`.
    pub fn upstream(store: Store, cfg: NativeConfig, client: Arc<Upstream>) -> Arc<Self> {
        let state: Arc<dyn StateStore> = Arc::new(Self::sqlite_state(&store, &cfg));
        Self::upstream_with_state(cfg, client, state)
    }

    /// A bridge in front of an upstream API with conversation state in `state`. With a store
    /// shared by replicas, cached answers also check the org's generation kept there, so a
    /// write through another replica invalidates them.
    pub fn upstream_with_state(
        mut cfg: NativeConfig,
        client: Arc<Upstream>,
        state: Arc<dyn StateStore>,
    ) -> Arc<Self> {
        cfg.read_cache_ms = client.config().read_cache_ms;
        let backend = UpstreamBackend::new(
            client,
            state.clone(),
            Duration::from_secs(cfg.undo_window_secs),
            Duration::from_secs(cfg.dedupe_window_secs.max(1)),
        );
        Self::with(Box::new(backend), state, cfg)
    }

    fn sqlite_state(store: &Store, cfg: &NativeConfig) -> SqliteState {
        SqliteState::new(
            store.clone(),
            cfg.idempotency_max_bytes,
            Self::state_retention(cfg),
        )
    }

    /// How long undo entries and settled pending actions are kept: as long as idempotency
    /// records, and at least long enough to outlive their window.
    pub fn state_retention(cfg: &NativeConfig) -> Duration {
        Duration::from_secs(
            cfg.idempotency_ttl_secs
                .max(cfg.undo_window_secs)
                .max(cfg.pending_ttl_secs + 3600),
        )
    }

    /// A bridge on any backend and state store.
    pub fn with(
        backend: Box<dyn Backend>,
        state: Arc<dyn StateStore>,
        cfg: NativeConfig,
    ) -> Arc<Self> {
        Arc::new(Bridge {
            backend,
            claims: Claims::new(state.clone()),
            state,
            read_cache: (cfg.read_cache_ms > 0)
                .then(|| reads::read_cache(Duration::from_millis(cfg.read_cache_ms))),
            cfg,
        })
    }

    /// Drops `org`'s cached read answers: something was written past the bridge (the REST
    /// proxy in upstream mode).
    pub async fn invalidate_reads(&self, org: &str) {
        self.backend.invalidate_reads(org).await;
    }

    /// The upstream client, in upstream mode.
    pub fn upstream_client(&self) -> Option<&Arc<Upstream>> {
        self.backend.upstream()
    }

    pub fn state(&self) -> &Arc<dyn StateStore> {
        &self.state
    }

    /// Pending actions still awaiting an answer.
    pub async fn open_pending(&self) -> ApiResult<u64> {
        self.state.open_pending().await
    }

    pub fn config(&self) -> &NativeConfig {
        &self.cfg
    }

    /// Runs one turn. Writes run in their own task, so a client that disconnects mid-request
    /// cannot cancel a write halfway: the effect and its idempotency record always complete
    /// together, and a retry with the same key replays instead of repeating the effect. Reads
    /// have nothing to protect and run inline, saving a task hand-off on the fast path.
    pub async fn handle(
        self: &Arc<Self>,
        principal: Arc<Principal>,
        body: Value,
        timing: ServerTiming,
        transport: Transport,
    ) -> TurnOutcome {
        // With traces on, the turn runs inside its root span, so upstream calls (and a write's
        // task, which takes the current span along) become its children.
        match timing.trace().map(|t| t.root().clone()) {
            Some(root) => {
                let turn = self.handle_turn(principal, body, timing, transport);
                tracing::Instrument::instrument(turn, root).await
            }
            None => self.handle_turn(principal, body, timing, transport).await,
        }
    }

    async fn handle_turn(
        self: &Arc<Self>,
        principal: Arc<Principal>,
        body: Value,
        mut timing: ServerTiming,
        transport: Transport,
    ) -> TurnOutcome {
        timing.annotate("org_id", principal.org_id.as_str());
        let parsed = timing.measure("parse", || NativeRequest::parse(body));
        let req = match parsed {
            Ok(r) => r,
            Err(e) => {
                return self.finish(
                    Err(e),
                    false,
                    timing,
                    ExecutionMode::Fast,
                    "unknown",
                    transport,
                )
            }
        };
        if req.needs_understanding() {
            return self
                .transcript_turn(principal, req, timing, transport)
                .await;
        }
        self.dispatch(principal, req, timing, transport).await
    }

    /// Runs a parsed request: a read inline, a write in its own task (see [`Bridge::handle`]).
    async fn dispatch(
        self: &Arc<Self>,
        principal: Arc<Principal>,
        req: NativeRequest,
        timing: ServerTiming,
        transport: Transport,
    ) -> TurnOutcome {
        let span = tracing::Span::current();
        if req.is_read() {
            return self.run(&principal, req, timing, transport).await;
        }
        let this = self.clone();
        let started = Instant::now();
        let mode = req.execution_mode;
        // The transport's cancel gate, if any, goes with the turn into its task.
        let gate = control::current_gate();
        let turn = async move {
            let run = this.run(&principal, req, timing, transport);
            match gate {
                Some(gate) => control::with_gate(gate, run).await,
                None => run.await,
            }
        };
        match tokio::spawn(tracing::Instrument::instrument(turn, span)).await {
            Ok(outcome) => outcome,
            Err(join_error) => {
                let e = ApiError::internal(format!("native turn failed: {join_error}"));
                let timing = ServerTiming::starting_at(started);
                self.finish(Err(e), false, timing, mode, "unknown", transport)
            }
        }
    }

    /// An outcome for a request rejected before the core ran (auth, rate limit, bad JSON), with
    /// the same timing fields as any other native reply.
    pub fn reject(
        &self,
        error: ApiError,
        timing: ServerTiming,
        transport: Transport,
    ) -> TurnOutcome {
        self.finish(
            Err(error),
            false,
            timing,
            ExecutionMode::Fast,
            "unknown",
            transport,
        )
    }

    async fn run(
        &self,
        principal: &Principal,
        req: NativeRequest,
        mut timing: ServerTiming,
        transport: Transport,
    ) -> TurnOutcome {
        let action = match (&req.action, &req.pending_action_id) {
            (_, Some(_)) => "confirmation",
            (Some(a), None) => a.type_name(),
            (None, None) => "unknown",
        };
        timing.annotate("action", action);
        timing.annotate("mode", req.execution_mode.as_str());
        let (result, replayed) = if req.is_read() {
            let mut r = self.read(principal, &req, &mut timing).await;
            if let Ok(reply) = &mut r {
                reply.idempotency_key = req.idempotency_key.clone();
            }
            (r, false)
        } else {
            self.write(principal, &req, &mut timing).await
        };
        if let Some(t) = timing.trace() {
            // The key the reply reports (a confirmation's derived one), else the client's.
            let key = match &result {
                Ok(r) => r.idempotency_key.as_deref(),
                Err(_) => None,
            };
            t.record_key(key.or(req.idempotency_key.as_deref()));
        }
        self.finish(
            result,
            replayed,
            timing,
            req.execution_mode,
            action,
            transport,
        )
    }

    fn finish(
        &self,
        mut result: Result<NativeReply, ApiError>,
        replayed: bool,
        mut timing: ServerTiming,
        mode: ExecutionMode,
        action: &'static str,
        transport: Transport,
    ) -> TurnOutcome {
        // Cancelled before its commit point: nothing changed, and the reply says only that.
        if control::was_cancelled() {
            result = Err(control::cancelled());
        }
        let outcome = match &result {
            Ok(r) => r.mode.as_str(),
            Err(e) => e.code.as_str(),
        };
        timing.annotate("outcome", outcome);
        if let Some(trace) = timing.take_trace() {
            let failed = result.as_ref().is_err_and(|e| e.status() >= 500);
            trace.finish(transport.as_str(), failed);
        }
        telemetry::native_turn(
            action,
            mode.as_str(),
            transport.as_str(),
            outcome,
            timing.total(),
        );
        let total_ms = round_ms(timing.total());
        let performance = Performance {
            execution_mode: mode.as_str(),
            server_elapsed_ms: total_ms,
            target_ms: self.cfg.target_ms,
            within_target: total_ms <= self.cfg.target_ms,
        };
        match &mut result {
            Ok(r) => r.performance = Some(performance.clone()),
            // Error sentences may quote what the user said (a name, an email): keep them
            // speakable like every reply — short, no URLs, no ids.
            Err(e) => e.spoken_summary = speech::speakable(&e.spoken_summary),
        }
        TurnOutcome {
            server_timing: timing.header_value(total_ms),
            result,
            replayed,
            timing,
            performance,
        }
    }

    /// The idempotency scope of a write and how long its record is kept: the client's key, or
    /// for a keyless write the dedupe window on its fingerprint. Both belong to the API key.
    fn scope_of(&self, p: &Principal, req: &NativeRequest) -> Option<(Scope, Duration)> {
        match (&req.idempotency_key, &req.action) {
            (Some(key), _) => Some((
                Scope::new(&p.org_id, &p.key_id, key.as_str()),
                Duration::from_secs(self.cfg.idempotency_ttl_secs),
            )),
            // "undo, undo" means two undos: undo_last is exempt from the keyless dedupe window.
            (None, Some(Action::UndoLast(_))) => None,
            (None, _) => Some((
                Scope::new(
                    &p.org_id,
                    &p.key_id,
                    format!("dedupe:{}", hex::encode(req.fingerprint)),
                ),
                Duration::from_secs(self.cfg.dedupe_window_secs.max(1)),
            )),
        }
    }

    /// A write or a confirmation: claim its scope, run it, keep what §8 says to keep.
    async fn write(
        &self,
        p: &Principal,
        req: &NativeRequest,
        timing: &mut ServerTiming,
    ) -> (ApiResult<NativeReply>, bool) {
        let scope = self.scope_of(p, req);
        let wait = Duration::from_millis(self.cfg.idempotency_wait_ms);
        let t = Instant::now();
        let claim = match &scope {
            Some((s, _)) => Some(self.claims.claim(s, req.fingerprint, wait).await),
            None => None,
        };
        timing.record("idem", t.elapsed());
        let guard = match claim {
            None => None,
            Some(Err(e)) => return (Err(e), false),
            Some(Ok(Claim::Owner(g))) => Some(g),
            Some(Ok(Claim::Replay(record))) => {
                telemetry::idempotency_replay();
                return (self.replay(p, &record).await, true);
            }
            // The reference tells clients to "reuse the same idempotency key" when confirming:
            // a key whose stored answer is the question about this very pending action is that
            // case, not a conflict. Exactly-once then rests on the derived confirmation key.
            Some(Ok(Claim::Reused(record))) if asked_with(&record, req) => None,
            Some(Ok(Claim::Reused(_) | Claim::ReusedRunning)) => {
                telemetry::idempotency_conflict("reused");
                return (Err(key_reused()), false);
            }
            Some(Ok(Claim::InUse)) => {
                telemetry::idempotency_conflict("in_use");
                return (
                    Err(ApiError::new(
                        ErrorCode::IdempotencyKeyInUse,
                        "A request with this idempotency key is still running",
                    )
                    .with_details("idempotencyKey: in flight; retry shortly")
                    .with_retry_after(1)),
                    false,
                );
            }
        };
        let seal = Seal {
            record: guard
                .as_ref()
                .zip(scope.as_ref())
                .map(|(g, (_, ttl))| (g.scope().clone(), req.fingerprint, *ttl)),
            settle: None,
            reply_key: req.idempotency_key.clone(),
        };
        let mut turn = match &req.pending_action_id {
            Some(pid) => self.confirm(p, req, pid, timing).await,
            None => self.run_action(p, req, &seal, timing).await,
        };
        if let Ok(reply) = &mut turn.result {
            seal.stamp(reply);
        }
        if let Some(guard) = guard {
            let t = Instant::now();
            self.keep(guard, &seal, &turn).await;
            timing.record("state", t.elapsed());
        }
        (turn.result, turn.replayed)
    }

    /// Leaves the turn's record under its scope and releases the claim.
    async fn keep(&self, guard: ClaimGuard, seal: &Seal, turn: &Turn) {
        let Some((scope, _, ttl)) = &seal.record else {
            return;
        };
        match &turn.keep {
            Keep::Nothing => guard.abandon(),
            Keep::Sealed(record) => {
                self.state.remember(scope, record, *ttl);
                guard.finish(record.clone());
            }
            Keep::Replayed(record) => guard.finish(record.clone()),
            Keep::Record { undo_id } => {
                let Some(record) = seal.record_of(&turn.result, undo_id.clone()) else {
                    return;
                };
                match self.state.record(scope, &record, *ttl).await {
                    Ok(true) => guard.finish(record),
                    // Someone recorded this scope meanwhile; theirs stands.
                    Ok(false) => guard.abandon(),
                    Err(e) => {
                        tracing::warn!(error = %e, "idempotency record not stored");
                        guard.abandon();
                    }
                }
            }
        }
    }

    /// A write action: resolve, then answer (no-op, clarification), ask, or execute.
    async fn run_action(
        &self,
        p: &Principal,
        req: &NativeRequest,
        seal: &Seal,
        timing: &mut ServerTiming,
    ) -> Turn {
        let Some(action) = &req.action else {
            return Turn::rejected(ApiError::validation("action", "missing"));
        };
        let step = match self
            .backend
            .plan(p, action, req.action_json_or_null(), timing)
            .await
        {
            Ok(step) => step,
            Err(e) => {
                // Not found, not active: nothing happened, so nothing is kept, but the
                // attempt is audited like every write.
                if final_error(&e) && e.code != ErrorCode::ValidationError {
                    self.audit_separately(p, req, e.code.as_str(), &Default::default(), timing)
                        .await;
                }
                return Turn::rejected(e);
            }
        };
        match step {
            Step::Reply(mut reply) => {
                reply.audit_id = self
                    .audit_separately(p, req, reply.mode.as_str(), &reply.ids, timing)
                    .await;
                // A clarification is free: the client answers it with the same key.
                let keep = match reply.mode {
                    ReplyMode::ClarificationRequired => Keep::Nothing,
                    _ => Keep::Record { undo_id: None },
                };
                Turn::answer(Ok(reply), keep)
            }
            // A two-step key's own `confirmed: true` does not count (DESIGN §21): only a later
            // request naming the pending action runs it.
            Step::Execute(plan)
                if plan.is_dangerous() && (req.confirmed != Some(true) || p.two_step) =>
            {
                if let Err(e) = control::commit_point() {
                    return Turn::rejected(e);
                }
                self.ask(p, req, plan, seal, timing).await
            }
            Step::Execute(plan) => {
                if let Err(e) = control::commit_point() {
                    return Turn::rejected(e);
                }
                let write = WriteRequest {
                    plan,
                    action_json: req.action_json_or_null().clone(),
                    transcript: req.transcript.clone(),
                    mode: req.execution_mode,
                    effect: match &req.idempotency_key {
                        Some(k) => Effect::Keyed(k.clone()),
                        None => Effect::Keyless(req.fingerprint),
                    },
                };
                self.execute(p, write, seal, timing).await
            }
        }
    }

    /// Runs a plan and says what to keep of it.
    async fn execute(
        &self,
        p: &Principal,
        write: WriteRequest,
        seal: &Seal,
        timing: &mut ServerTiming,
    ) -> Turn {
        match self.backend.execute(p, write, seal, timing).await {
            Ok(Execution::Done(executed)) => {
                let keep = match executed.sealed {
                    true => match seal.record_of(&Ok(executed.reply.clone()), executed.undo_id) {
                        Some(record) => Keep::Sealed(record),
                        None => Keep::Nothing,
                    },
                    false => Keep::Record {
                        undo_id: executed.undo_id,
                    },
                };
                Turn::answer(Ok(executed.reply), keep)
            }
            Ok(Execution::AlreadyDone) => match &seal.record {
                Some((scope, _, _)) => self.replay_scope(p, scope).await,
                None => Turn::rejected(ApiError::internal("execution refused without a seal")),
            },
            Err(e) if final_error(&e) => Turn::answer(Err(e), Keep::Record { undo_id: None }),
            Err(e) => Turn::rejected(e),
        }
    }

    /// Replays whatever another request recorded under `scope` (found while executing).
    async fn replay_scope(&self, p: &Principal, scope: &Scope) -> Turn {
        match self.state.lookup(scope).await {
            Ok(Some(record)) => {
                telemetry::idempotency_replay();
                Turn {
                    result: self.replay(p, &record).await,
                    keep: Keep::Replayed(record),
                    replayed: true,
                }
            }
            Ok(None) => Turn::rejected(
                ApiError::new(
                    ErrorCode::IdempotencyKeyInUse,
                    "This request is being handled by another server",
                )
                .with_retry_after(1),
            ),
            Err(e) => Turn::rejected(e),
        }
    }

    /// Writes an audit record outside an execution transaction (reads that ask for one,
    /// confirmation prompts, clarifications, no-op writes, failed writes).
    async fn audit_separately(
        &self,
        p: &Principal,
        req: &NativeRequest,
        outcome: &str,
        ids: &serde_json::Map<String, Value>,
        timing: &mut ServerTiming,
    ) -> Option<String> {
        let ids = Value::Object(ids.clone());
        let record = audit::AuditRecord {
            org_id: &p.org_id,
            key_id: &p.key_id,
            action_type: req
                .action
                .as_ref()
                .map(Action::type_name)
                .unwrap_or("confirmation"),
            action: req.action_json_or_null(),
            transcript: req.transcript.as_deref(),
            execution_mode: req.execution_mode.as_str(),
            outcome,
            ids: &ids,
            elapsed_ms: round_ms(timing.total()),
        };
        self.backend.audit(&record, timing).await
    }
}

/// True when `req` confirms a pending action and `record` is the `confirmation_required`
/// reply that created that pending action.
fn asked_with(record: &Record, req: &NativeRequest) -> bool {
    let Some(pid) = &req.pending_action_id else {
        return false;
    };
    matches!(&record.outcome, crate::state::Outcome::Reply { reply }
        if reply.mode == ReplyMode::ConfirmationRequired
            && reply.pending_action_id.as_deref() == Some(pid.as_str()))
}

fn key_reused() -> ApiError {
    ApiError::new(
        ErrorCode::IdempotencyKeyReused,
        "Idempotency key was already used for a different request",
    )
    .with_details("idempotencyKey: reused with a different action, pendingActionId or confirmed")
    .with_spoken("That request ID was already used for something else.")
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}
