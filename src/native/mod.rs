//! The Native Voice Bridge core: one transport-independent pipeline (DESIGN §2) that turns a
//! [`NativeRequest`] from an authenticated caller into a [`NativeReply`] — parse, idempotency,
//! resolve, confirmation gate / pilot mode, execute, audit, reply with timing. HTTP and WebSocket
//! adapters only translate their input and render the [`TurnOutcome`].

pub mod action;
pub mod actions;
pub mod idempotency;
pub mod pending;
pub mod plan;
pub mod remote;
pub mod reply;
pub mod request;
pub mod resolve;
pub mod speech;
pub mod timing;
pub mod undo;
pub mod workers;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use self::action::Action;
use self::actions::ExecCtx;
use self::idempotency::{Claim, IdempotencyStore, StoredOutcome};
use self::pending::{Lookup, PendingStore};
use self::plan::{Plan, Step};
use self::reply::{NativeReply, Performance, ReplyMode, TurnOutcome};
use self::request::{ExecutionMode, NativeRequest};
use self::timing::{round_ms, ServerTiming};
use crate::auth::Principal;
use crate::config::NativeConfig;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::store::{audit, native as rows, Store};
use crate::telemetry;
use crate::upstream::Upstream;

/// Which adapter a turn came through (a metrics label; the core behaves the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Http,
    WebSocket,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::WebSocket => "ws",
        }
    }
}

/// The bridge core. Cheap to share behind an `Arc`.
pub struct Bridge {
    store: Store,
    backend: Backend,
    cfg: NativeConfig,
    idempotency: IdempotencyStore,
    dedupe: IdempotencyStore,
    pending: PendingStore,
    /// Answers of read actions by (org, request fingerprint), valid while the store's write
    /// generation is unchanged (and for at most `read_cache_ms`). `None` when turned off.
    read_cache: Option<ReadCache>,
}

/// Where actions run: the embedded store, or the upstream API.
enum Backend {
    Embedded,
    Upstream(UpstreamBackend),
}

/// What the gateway keeps for the upstream backend.
struct UpstreamBackend {
    client: Arc<Upstream>,
    /// The gateway's own undo stack (DESIGN: undo stays in the gateway).
    undo: remote::UndoStack,
    /// Writes sent upstream (or past the bridge): changes invalidate cached reads.
    writes: AtomicU64,
    /// Keyless writes' upstream effect ids for the dedupe window (see `keyless_effect`).
    keyless_effects: moka::sync::Cache<(String, [u8; 32]), String>,
}

impl UpstreamBackend {
    /// The upstream identity of a logical write. A keyless write keeps one id for the dedupe
    /// window: a retry after a failed attempt that may have landed upstream is the same write,
    /// while an identical write minutes later is a new one.
    fn effect(&self, p: &Principal, effect: &Effect) -> String {
        let logical = match effect {
            Effect::Keyed(k) => k.clone(),
            Effect::Keyless(fingerprint) => self
                .keyless_effects
                .get_with((p.org_id.clone(), *fingerprint), crate::ids::new_id),
        };
        remote::effect_key(&p.key_id, &logical)
    }
}

/// (org, request fingerprint) → the answer and the write generation it was read at.
type ReadCache = moka::sync::Cache<(String, [u8; 32]), Arc<CachedRead>>;

struct CachedRead {
    generation: u64,
    reply: NativeReply,
}

/// Most cached read answers kept at once.
const READ_CACHE_ENTRIES: u64 = 10_000;

/// Whether an outcome may be stored for replay (DESIGN §8): everything once execution began,
/// except validation, auth, rate-limit and server/upstream failures, which the client may retry.
fn storable(result: &Result<NativeReply, ApiError>) -> bool {
    match result {
        Ok(_) => true,
        Err(e) => matches!(
            e.code,
            ErrorCode::ResourceNotFound
                | ErrorCode::CampaignNotActive
                | ErrorCode::DuplicateResource
                | ErrorCode::PendingActionExpired
        ),
    }
}

fn replay(o: &StoredOutcome) -> Result<NativeReply, ApiError> {
    match &o.result {
        Ok(r) => {
            let mut r = r.clone();
            r.mode = ReplyMode::Duplicate;
            r.audit_id = None;
            r.performance = None;
            Ok(r)
        }
        Err(e) => Err(e.clone()),
    }
}

impl Bridge {
    /// A bridge on the embedded store.
    pub fn new(store: Store, cfg: NativeConfig) -> Arc<Self> {
        Self::build(store, cfg, Backend::Embedded)
    }

    /// A bridge in front of an upstream API. `store` still exists (the CLI's data directory) but
    /// holds none of the CRM's records; upstream read answers are cached for the upstream's
    /// `read_cache_ms`.
    pub fn upstream(store: Store, mut cfg: NativeConfig, client: Arc<Upstream>) -> Arc<Self> {
        cfg.read_cache_ms = client.config().read_cache_ms;
        let dedupe_window = Duration::from_secs(cfg.dedupe_window_secs.max(1));
        Self::build(
            store,
            cfg,
            Backend::Upstream(UpstreamBackend {
                keyless_effects: moka::sync::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(dedupe_window)
                    .build(),
                client,
                undo: remote::UndoStack::default(),
                writes: AtomicU64::new(0),
            }),
        )
    }

    fn build(store: Store, cfg: NativeConfig, backend: Backend) -> Arc<Self> {
        Arc::new(Bridge {
            backend,
            idempotency: IdempotencyStore::new(
                Duration::from_secs(cfg.idempotency_ttl_secs),
                cfg.idempotency_max_bytes,
            ),
            dedupe: IdempotencyStore::new(
                Duration::from_secs(cfg.dedupe_window_secs.max(1)),
                cfg.idempotency_max_bytes / 4,
            ),
            pending: PendingStore::new(Duration::from_secs(cfg.pending_ttl_secs)),
            read_cache: (cfg.read_cache_ms > 0).then(|| {
                moka::sync::Cache::builder()
                    .max_capacity(READ_CACHE_ENTRIES)
                    .time_to_live(Duration::from_millis(cfg.read_cache_ms))
                    .build()
            }),
            store,
            cfg,
        })
    }

    /// Changes whenever a write went through this process, so cached reads are dropped.
    fn generation(&self) -> u64 {
        match &self.backend {
            Backend::Embedded => self.store.generation(),
            Backend::Upstream(up) => up.writes.load(Ordering::Acquire),
        }
    }

    /// Drops cached read answers: something was written past the bridge (the REST proxy in
    /// upstream mode). The embedded store counts its own writes.
    pub fn invalidate_reads(&self) {
        if let Backend::Upstream(up) = &self.backend {
            up.writes.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The upstream client, in upstream mode.
    pub fn upstream_client(&self) -> Option<&Arc<Upstream>> {
        match &self.backend {
            Backend::Embedded => None,
            Backend::Upstream(up) => Some(&up.client),
        }
    }

    pub fn pending(&self) -> &PendingStore {
        &self.pending
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
        mut timing: ServerTiming,
        transport: Transport,
    ) -> TurnOutcome {
        let span = tracing::Span::current();
        span.record("org_id", principal.org_id.as_str());
        let parsed = timing.measure("parse", || NativeRequest::parse(&body));
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
        let is_read =
            req.pending_action_id.is_none() && req.action.as_ref().is_some_and(Action::is_read);
        if is_read {
            return self.run(&principal, req, timing, transport).await;
        }
        let this = self.clone();
        let started = Instant::now();
        let mode = req.execution_mode;
        let turn = async move { this.run(&principal, req, timing, transport).await };
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
        let span = tracing::Span::current();
        span.record("action", action);
        span.record("mode", req.execution_mode.as_str());
        let (result, replayed) = self.dispatch(principal, &req, &mut timing).await;
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
        timing: ServerTiming,
        mode: ExecutionMode,
        action: &'static str,
        transport: Transport,
    ) -> TurnOutcome {
        let outcome = match &result {
            Ok(r) => r.mode.as_str(),
            Err(e) => e.code.as_str(),
        };
        tracing::Span::current().record("outcome", outcome);
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

    async fn dispatch(
        &self,
        p: &Principal,
        req: &NativeRequest,
        timing: &mut ServerTiming,
    ) -> (Result<NativeReply, ApiError>, bool) {
        let is_read =
            req.pending_action_id.is_none() && req.action.as_ref().is_some_and(Action::is_read);
        if is_read {
            let mut r = self.run_action(p, req, timing).await;
            if let Ok(reply) = &mut r {
                reply.idempotency_key = req.idempotency_key.clone();
            }
            return (r, false);
        }
        let wait = Duration::from_millis(self.cfg.idempotency_wait_ms);
        let t = Instant::now();
        let claim = match (&req.idempotency_key, &req.action) {
            (Some(key), _) => Some(
                self.idempotency
                    .claim(&p.org_id, key, req.fingerprint, wait)
                    .await,
            ),
            // "undo, undo" means two undos: undo_last is exempt from the keyless dedupe window.
            (None, Some(Action::UndoLast(_))) => None,
            (None, _) => Some(
                self.dedupe
                    .claim(
                        &p.org_id,
                        &hex::encode(req.fingerprint),
                        req.fingerprint,
                        wait,
                    )
                    .await,
            ),
        };
        timing.record("idem", t.elapsed());
        let guard = match claim {
            None => None,
            Some(Claim::Owner(g)) => Some(g),
            Some(Claim::Replay(stored)) => {
                telemetry::idempotency_replay();
                return (replay(&stored), true);
            }
            // The reference tells clients to "reuse the same idempotency key" when confirming:
            // a key whose stored answer is the question about this very pending action is that
            // case, not a conflict. Exactly-once then rests on the derived confirmation key.
            Some(Claim::Reused) if self.asked_with_key(p, req) => None,
            Some(Claim::Reused) => {
                telemetry::idempotency_conflict("reused");
                return (
                Err(ApiError::new(
                    ErrorCode::IdempotencyKeyReused,
                    "Idempotency key was already used for a different request",
                )
                .with_details(
                    "idempotencyKey: reused with a different action, pendingActionId or confirmed",
                )
                .with_spoken("That request ID was already used for something else.")),
                false,
            );
            }
            Some(Claim::InUse) => {
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
        let (mut result, replayed) = if let Some(pid) = &req.pending_action_id {
            self.confirm(p, req, pid, timing).await
        } else {
            (self.run_action(p, req, timing).await, false)
        };
        if let Ok(reply) = &mut result {
            if reply.idempotency_key.is_none() {
                reply.idempotency_key = req.idempotency_key.clone();
            }
        }
        if let Some(g) = guard {
            if storable(&result) {
                g.complete(StoredOutcome {
                    result: result.clone(),
                });
            } else {
                g.abandon();
            }
        }
        (result, replayed)
    }

    /// An action request: resolve, then answer, ask, or execute.
    async fn run_action(
        &self,
        p: &Principal,
        req: &NativeRequest,
        timing: &mut ServerTiming,
    ) -> ApiResult<NativeReply> {
        let Some(action) = req.action.clone() else {
            return Err(ApiError::validation("action", "missing"));
        };
        let is_write = !action.is_read();
        let cache_key = (p.org_id.clone(), req.fingerprint);
        if !is_write {
            if let Some(reply) = self.cached_read(&cache_key, timing) {
                return self.finish_read(p, req, reply, timing).await;
            }
        }
        let generation = self.generation();
        let t = Instant::now();
        let step = match &self.backend {
            Backend::Embedded => {
                let org = p.org_id.clone();
                let step = self
                    .store
                    .read(move |conn| actions::plan(conn, &org, &action))
                    .await;
                timing.record("resolve", t.elapsed());
                telemetry::backend_operation("resolve", "embedded", t.elapsed());
                step
            }
            Backend::Upstream(up) => {
                let step = match remote_for(&up.client, p, timing.total()) {
                    Ok(r) => {
                        let action_json = req.action_json.clone().unwrap_or(Value::Null);
                        remote::plan(&r, &action, &action_json).await
                    }
                    Err(e) => Err(e),
                };
                timing.record("upstream", t.elapsed());
                telemetry::backend_operation("resolve", "upstream", t.elapsed());
                step
            }
        };
        if let (false, Ok(Step::Reply(reply)), Some(cache)) = (is_write, &step, &self.read_cache) {
            cache.insert(
                cache_key,
                Arc::new(CachedRead {
                    generation,
                    reply: reply.clone(),
                }),
            );
        }
        let step = match step {
            Ok(s) => s,
            Err(e) => {
                if is_write && storable(&Err(e.clone())) {
                    self.audit_separately(p, req, e.code.as_str(), &json!({}), timing)
                        .await;
                }
                return Err(e);
            }
        };
        match step {
            Step::Reply(mut reply) => {
                let audit_reads =
                    req.execution_mode == ExecutionMode::Standard || req.audit_read_actions;
                if is_write || audit_reads {
                    reply.audit_id = self
                        .audit_separately(
                            p,
                            req,
                            reply.mode.as_str(),
                            &Value::Object(reply.ids.clone()),
                            timing,
                        )
                        .await;
                }
                Ok(reply)
            }
            Step::Execute(plan) if plan.is_dangerous() && req.confirmed != Some(true) => {
                Ok(self.ask(p, req, plan, timing).await)
            }
            Step::Execute(plan) => {
                let write = WriteRequest {
                    plan,
                    action_json: req.action_json.clone().unwrap_or(Value::Null),
                    transcript: req.transcript.clone(),
                    mode: req.execution_mode,
                    effect: match &req.idempotency_key {
                        Some(k) => Effect::Keyed(k.clone()),
                        None => Effect::Keyless(req.fingerprint),
                    },
                };
                self.execute(p, write, timing).await
            }
        }
    }

    /// A cached answer to the same read, if nothing was written through this server since.
    fn cached_read(
        &self,
        key: &(String, [u8; 32]),
        timing: &mut ServerTiming,
    ) -> Option<NativeReply> {
        let cache = self.read_cache.as_ref()?;
        let t = Instant::now();
        let hit = cache
            .get(key)
            .filter(|c| c.generation == self.generation())
            .map(|c| c.reply.clone());
        if hit.is_some() {
            timing.record("cache", t.elapsed());
        }
        hit
    }

    /// Completes a read answered from the cache: audit when asked, as for any read.
    async fn finish_read(
        &self,
        p: &Principal,
        req: &NativeRequest,
        mut reply: NativeReply,
        timing: &mut ServerTiming,
    ) -> ApiResult<NativeReply> {
        if req.execution_mode == ExecutionMode::Standard || req.audit_read_actions {
            reply.audit_id = self
                .audit_separately(
                    p,
                    req,
                    reply.mode.as_str(),
                    &Value::Object(reply.ids.clone()),
                    timing,
                )
                .await;
        }
        Ok(reply)
    }

    /// Parks a dangerous plan and asks the user to confirm it.
    async fn ask(
        &self,
        p: &Principal,
        req: &NativeRequest,
        plan: Plan,
        timing: &mut ServerTiming,
    ) -> NativeReply {
        let question = plan.question();
        let ids = plan.ids();
        let mut data = plan.describe();
        let pending = self.pending.insert(
            &p.org_id,
            &p.key_id,
            plan,
            req.action_json.clone().unwrap_or(Value::Null),
            req.transcript.clone(),
        );
        telemetry::OpenPending::global().opened(&pending.id, pending.expires_at);
        if let Value::Object(m) = &mut data {
            m.insert(
                "expires_in_seconds".into(),
                json!(self.pending.ttl().as_secs()),
            );
        }
        let mut reply = NativeReply::new(ReplyMode::ConfirmationRequired, question, data);
        reply.ids = ids;
        reply.pending_action_id = Some(pending.id.clone());
        reply.expires_at = Some(pending.expires_at_wall.clone());
        let mut audit_ids = reply.ids.clone();
        audit_ids.insert("pending_action_id".into(), json!(pending.id));
        reply.audit_id = self
            .audit_separately(
                p,
                req,
                reply.mode.as_str(),
                &Value::Object(audit_ids),
                timing,
            )
            .await;
        reply
    }

    /// Executes a plan in one write transaction together with its undo entry and audit record,
    /// so either all three are durable or none is.
    async fn execute(
        &self,
        p: &Principal,
        write: WriteRequest,
        timing: &mut ServerTiming,
    ) -> ApiResult<NativeReply> {
        if let Backend::Upstream(up) = &self.backend {
            let t = Instant::now();
            let result = self.execute_remote(up, p, &write, timing.total()).await;
            // Whatever happened upstream may have changed records: drop cached reads.
            up.writes.fetch_add(1, Ordering::AcqRel);
            timing.record("upstream", t.elapsed());
            telemetry::backend_operation("execute", "upstream", t.elapsed());
            // Writes are always audited (DESIGN §9), failed ones included.
            let mut reply = match result {
                Ok(reply) => reply,
                Err(e) => {
                    self.audit_log(
                        p,
                        &write,
                        e.code.as_str(),
                        &Default::default(),
                        timing.total(),
                    );
                    return Err(e);
                }
            };
            let elapsed = timing.total();
            reply.audit_id =
                Some(self.audit_log(p, &write, reply.mode.as_str(), &reply.ids, elapsed));
            return Ok(reply);
        }
        let WriteRequest {
            plan,
            action_json,
            transcript,
            mode,
            ..
        } = write;
        let principal = p.clone();
        let cfg = self.cfg.clone();
        let elapsed_so_far = timing.total();
        let t = Instant::now();
        let result = self
            .store
            .write(move |tx| {
                let ctx = ExecCtx {
                    org: &principal.org_id,
                    key_id: &principal.key_id,
                    outbox_hold_secs: cfg.outbox_hold_secs,
                    undo_window_secs: cfg.undo_window_secs,
                };
                let action_type = plan.action_type();
                let executed = actions::execute(tx, &ctx, plan)?;
                let audit_started = Instant::now();
                if let Some((summary, op)) = &executed.undo {
                    rows::insert_undo(
                        tx,
                        ctx.org,
                        ctx.key_id,
                        action_type,
                        summary,
                        &undo::to_json(op),
                    )?;
                }
                let mut reply = executed.reply;
                let audit_id = audit::insert(
                    tx,
                    &audit::AuditRecord {
                        org_id: ctx.org,
                        key_id: ctx.key_id,
                        action_type,
                        action: &action_json,
                        transcript: transcript.as_deref(),
                        execution_mode: mode.as_str(),
                        outcome: reply.mode.as_str(),
                        ids: &Value::Object(reply.ids.clone()),
                        elapsed_ms: round_ms(elapsed_so_far + audit_started.elapsed()),
                    },
                )?;
                reply.audit_id = Some(audit_id);
                Ok((reply, audit_started.elapsed()))
            })
            .await;
        let total = t.elapsed();
        telemetry::backend_operation("execute", "embedded", total);
        match result {
            Ok((reply, audit_time)) => {
                telemetry::audit_write();
                timing.record("exec", total.saturating_sub(audit_time));
                timing.record("audit", audit_time);
                Ok(reply)
            }
            Err(e) => {
                timing.record("exec", total);
                Err(e)
            }
        }
    }

    /// Runs a plan against the upstream; `undo_last` uses the gateway's own undo stack.
    async fn execute_remote(
        &self,
        up: &UpstreamBackend,
        p: &Principal,
        write: &WriteRequest,
        elapsed: Duration,
    ) -> ApiResult<NativeReply> {
        let r = remote_for(&up.client, p, elapsed)?;
        if let Plan::UndoLast = write.plan {
            let window = Duration::from_secs(self.cfg.undo_window_secs);
            return remote::undo_last(&r, &up.undo, &p.org_id, &p.key_id, window).await;
        }
        let effect_key = up.effect(p, &write.effect);
        let ctx = remote::RemoteCtx {
            effect_key: &effect_key,
        };
        let action_type = write.plan.action_type();
        let executed = remote::execute(&r, &ctx, write.plan.clone()).await?;
        if let Some((summary, op)) = executed.undo {
            up.undo.push(&p.org_id, &p.key_id, action_type, summary, op);
        }
        Ok(executed.reply)
    }

    /// The audit record of a write in upstream mode (see [`audit_to_log`]).
    fn audit_log(
        &self,
        p: &Principal,
        write: &WriteRequest,
        outcome: &str,
        ids: &serde_json::Map<String, Value>,
        elapsed: Duration,
    ) -> String {
        audit_to_log(&audit::AuditRecord {
            org_id: &p.org_id,
            key_id: &p.key_id,
            action_type: write.plan.action_type(),
            action: &write.action_json,
            transcript: write.transcript.as_deref(),
            execution_mode: write.mode.as_str(),
            outcome,
            ids: &Value::Object(ids.clone()),
            elapsed_ms: round_ms(elapsed),
        })
    }

    /// True when `req` confirms a pending action and its idempotency key stored the
    /// `confirmation_required` reply that created that pending action.
    fn asked_with_key(&self, p: &Principal, req: &NativeRequest) -> bool {
        let (Some(pid), Some(key)) = (&req.pending_action_id, &req.idempotency_key) else {
            return false;
        };
        self.idempotency.peek(&p.org_id, key).is_some_and(|stored| {
            matches!(&stored.result, Ok(r) if r.mode == ReplyMode::ConfirmationRequired
                && r.pending_action_id.as_deref() == Some(pid.as_str()))
        })
    }

    /// A confirmation (`pendingActionId` + `confirmed`).
    async fn confirm(
        &self,
        p: &Principal,
        req: &NativeRequest,
        pid: &str,
        timing: &mut ServerTiming,
    ) -> (ApiResult<NativeReply>, bool) {
        let (outcome, replayed) = self
            .confirm_inner(p, req, pid, timing)
            .await
            .unwrap_or_else(|e| (Err(e), false));
        telemetry::confirmation(match &outcome {
            _ if replayed => "duplicate",
            Ok(r) if r.data.get("cancelled") == Some(&Value::Bool(true)) => "cancelled",
            Ok(_) => "executed",
            Err(e) if e.code == ErrorCode::PendingActionExpired => "expired",
            Err(e) if e.code == ErrorCode::ResourceNotFound => "not_found",
            Err(_) => "failed",
        });
        (outcome, replayed)
    }

    /// The confirmation flow; `Ok((outcome, true))` when the pending action had already run and
    /// its outcome (a reply or a stored business error) is replayed.
    async fn confirm_inner(
        &self,
        p: &Principal,
        req: &NativeRequest,
        pid: &str,
        timing: &mut ServerTiming,
    ) -> ApiResult<(ApiResult<NativeReply>, bool)> {
        let not_found = || {
            ApiError::not_found("Pending action")
                .with_details(format!(
                    "pendingActionId: no pending action '{}'",
                    speech::snippet(pid, 64)
                ))
                .with_spoken("I couldn't find that request to confirm. Please ask again.")
        };
        let cancelled = || {
            ApiError::not_found("Pending action")
                .with_details("pendingActionId: that action was cancelled")
                .with_spoken("That request was cancelled, so there's nothing to confirm.")
        };
        let pending = match self.pending.get(&p.org_id, pid) {
            Lookup::NotFound => return Err(not_found()),
            Lookup::Cancelled(_) => return Err(cancelled()),
            Lookup::Expired(pending) | Lookup::Open(pending) => pending,
        };
        if let Some(action) = &req.action {
            if action.type_name() != pending.action_type() {
                return Err(ApiError::validation(
                    "action.type",
                    format!(
                        "'{}' does not match the pending action '{}'",
                        action.type_name(),
                        pending.action_type()
                    ),
                )
                .with_spoken("That doesn't match what I asked you to confirm."));
            }
        }
        let derived = format!("native:{}:{}", pending.action_type(), pending.id);
        // One fingerprint per pending action: every confirmation of it is the same request.
        let fingerprint = request::fingerprint(None, Some(&pending.id), Some(true));
        let t = Instant::now();
        let wait = Duration::from_millis(self.cfg.idempotency_wait_ms);
        let claim = self
            .idempotency
            .claim(&p.org_id, &derived, fingerprint, wait)
            .await;
        timing.record("idem", t.elapsed());
        let guard = match claim {
            Claim::Replay(stored) => {
                if req.confirmed == Some(false) {
                    return Ok((
                        Ok(NativeReply::result(
                            "That was already done, so there's nothing to cancel.",
                            json!({ "cancelled": false }),
                        )
                        .with_id("pending_action_id", pending.id.clone())),
                        false,
                    ));
                }
                let mut r = replay(&stored);
                if let Ok(r) = &mut r {
                    r.idempotency_key = Some(derived);
                }
                return Ok((r, true));
            }
            // A cancellation may have run while this confirmation waited for the claim.
            Claim::Owner(g) if pending.is_cancelled() => {
                g.abandon();
                return Err(cancelled());
            }
            Claim::Owner(g) => g,
            Claim::Reused | Claim::InUse => {
                return Err(ApiError::new(
                    ErrorCode::IdempotencyKeyInUse,
                    "This action is being confirmed right now",
                )
                .with_retry_after(1))
            }
        };
        if tokio::time::Instant::now() >= pending.expires_at {
            guard.abandon();
            return Err(
                ApiError::new(ErrorCode::PendingActionExpired, "Pending action expired")
                    .with_details(format!(
                        "pendingActionId: expired at {}",
                        pending.expires_at_wall
                    ))
                    .with_spoken("That confirmation expired. Please ask me again."),
            );
        }
        if req.confirmed == Some(false) {
            // Cancel before releasing the claim, so a confirmation waiting for it sees the
            // cancellation once it gets the claim.
            self.pending.cancel(&pending);
            telemetry::OpenPending::global().closed(&pending.id);
            guard.abandon();
            let question = pending.plan.question();
            let what = question.trim_end_matches('?');
            let mut r = NativeReply::result(
                format!("Okay, cancelled. I won't {}.", lower_first(what)),
                json!({ "cancelled": true, "action": pending.action_type() }),
            );
            r.ids = pending.plan.ids();
            r.ids.insert("pending_action_id".into(), json!(pending.id));
            return Ok((Ok(r), false));
        }
        let transcript = req
            .transcript
            .clone()
            .or_else(|| pending.transcript.clone());
        let mut result = self
            .execute(
                p,
                WriteRequest {
                    plan: pending.plan.clone(),
                    action_json: pending.action_json.clone(),
                    transcript,
                    mode: req.execution_mode,
                    effect: Effect::Keyed(derived.clone()),
                },
                timing,
            )
            .await;
        if let Ok(r) = &mut result {
            r.idempotency_key = Some(derived);
            r.ids.insert("pending_action_id".into(), json!(pending.id));
        }
        if storable(&result) {
            guard.complete(StoredOutcome {
                result: result.clone(),
            });
            pending.settle();
            telemetry::OpenPending::global().closed(&pending.id);
        } else {
            guard.abandon();
        }
        Ok((result, false))
    }

    /// Writes an audit record outside an execution transaction (reads that ask for one,
    /// confirmation prompts, clarifications, no-op writes, failed writes). Best effort: a failed
    /// audit write is logged, not shown to the caller.
    async fn audit_separately(
        &self,
        p: &Principal,
        req: &NativeRequest,
        outcome: &str,
        ids: &Value,
        timing: &mut ServerTiming,
    ) -> Option<String> {
        if let Backend::Upstream(_) = &self.backend {
            return Some(audit_to_log(&audit::AuditRecord {
                org_id: &p.org_id,
                key_id: &p.key_id,
                action_type: req
                    .action
                    .as_ref()
                    .map(Action::type_name)
                    .unwrap_or("confirmation"),
                action: req.action_json.as_ref().unwrap_or(&Value::Null),
                transcript: req.transcript.as_deref(),
                execution_mode: req.execution_mode.as_str(),
                outcome,
                ids,
                elapsed_ms: round_ms(timing.total()),
            }));
        }
        let org = p.org_id.clone();
        let key = p.key_id.clone();
        let action_type = req
            .action
            .as_ref()
            .map(Action::type_name)
            .unwrap_or("confirmation")
            .to_string();
        let action = req.action_json.clone().unwrap_or(Value::Null);
        let transcript = req.transcript.clone();
        let mode = req.execution_mode;
        let outcome = outcome.to_string();
        let ids = ids.clone();
        let elapsed = round_ms(timing.total());
        let t = Instant::now();
        let r = self
            .store
            .write(move |tx| {
                audit::insert(
                    tx,
                    &audit::AuditRecord {
                        org_id: &org,
                        key_id: &key,
                        action_type: &action_type,
                        action: &action,
                        transcript: transcript.as_deref(),
                        execution_mode: mode.as_str(),
                        outcome: &outcome,
                        ids: &ids,
                        elapsed_ms: elapsed,
                    },
                )
            })
            .await;
        timing.record("audit", t.elapsed());
        telemetry::backend_operation("audit", "embedded", t.elapsed());
        match r {
            Ok(id) => {
                telemetry::audit_write();
                Some(id)
            }
            Err(e) => {
                tracing::warn!(error = %e, "audit write failed");
                None
            }
        }
    }
}

/// In upstream mode the records live upstream, so the audit trail is a structured log line
/// (target `pilot_bridge::audit`) with the fields the embedded store keeps; returns its id.
fn audit_to_log(r: &audit::AuditRecord<'_>) -> String {
    let id = crate::ids::new_id();
    tracing::info!(
        target: "pilot_bridge::audit",
        audit_id = %id,
        org_id = r.org_id,
        key_id = r.key_id,
        action_type = r.action_type,
        action = %r.action,
        transcript = r.transcript.unwrap_or(""),
        execution_mode = r.execution_mode,
        outcome = r.outcome,
        ids = %r.ids,
        elapsed_ms = r.elapsed_ms,
        "audit"
    );
    telemetry::audit_write();
    id
}

/// A plan about to run, with what its audit record and the upstream need.
struct WriteRequest {
    plan: Plan,
    action_json: Value,
    transcript: Option<String>,
    mode: ExecutionMode,
    /// The logical write's identity, for the upstream's idempotency.
    effect: Effect,
}

/// Which logical write a plan is: named by the client's idempotency key or the derived
/// confirmation key, or, without either, by the request's fingerprint. Only the upstream
/// backend turns it into a key (`UpstreamBackend::effect`); the embedded store needs none.
enum Effect {
    Keyed(String),
    Keyless([u8; 32]),
}

/// The caller's view of the upstream for one turn. The turn's upstream budget counts from the
/// request's arrival (`elapsed` ago), so key check, resolution and execution share one deadline.
fn remote_for<'a>(
    client: &'a Upstream,
    p: &'a Principal,
    elapsed: Duration,
) -> ApiResult<remote::Remote<'a>> {
    let token = p
        .upstream_key
        .as_ref()
        .ok_or_else(|| ApiError::internal("upstream backend without a caller key"))?;
    Ok(remote::Remote {
        up: client,
        token: token.expose(),
        deadline: client.turn_deadline_after(elapsed),
    })
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}
