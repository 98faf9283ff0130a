//! AI chat, `POST /chat` (DESIGN §19): a message in a thread, answered by a provider that may
//! call the 17 actions as tools. Tools run through the native pipeline (confirmation,
//! idempotency, audit); a dangerous one only asks, the thread keeps the question, and the
//! user's next message — "yes" or "no" — answers it. The model never confirms.
//!
//! Each message costs one credit, taken atomically before the provider runs and given back
//! when no answer comes (provider failure). Threads live in SQLite with their last turns.

pub mod builtin;
pub mod idempotency;
pub mod openai;
pub mod store;
pub mod tools;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use self::store::Turn;
use self::tools::{ToolCall, ToolRunner};
use crate::auth::Principal;
use crate::config::{ChatConfig, ChatProvider};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::native::Bridge;
use crate::store::Store;
use crate::telemetry::names::{CHAT_MESSAGES, CHAT_TOOL_CALLS};

/// `POST /chat` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    /// What the user says: 1 to `chat.max_message_chars` characters (4,000 by default) once
    /// trimmed; blank or longer is a 422. The whole body must also fit the server's body limit
    /// (64 KiB by default; over it is a 413).
    #[schema(min_length = 1, max_length = 4000)]
    pub message: String,
    /// Continue this thread (from an earlier reply); omit to start one.
    pub thread_id: Option<String>,
    /// Makes a retry safe, like the `Idempotency-Key` header (send either, or both equal): a
    /// retry with the same key and body gets the first reply again without running or paying.
    /// Not part of the body the key is checked against.
    #[schema(pattern = "^[!-~]{1,255}$")]
    pub idempotency_key: Option<String>,
}

/// Tokens the provider counted for this message (the built-in provider counts words).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// `POST /chat` answer (stored as JSON for replay under an idempotency key).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatReply {
    /// What to tell the user.
    pub response: String,
    /// The thread, to send back with the next message.
    pub thread_id: String,
    /// The actions run for this message, in order.
    pub tool_calls: Vec<ToolCall>,
    pub model: String,
    pub usage: Usage,
}

/// A provider's answer to one message.
pub struct Answer {
    pub text: String,
    pub usage: Usage,
}

/// What a provider gets for one message.
pub struct Exchange<'a> {
    pub principal: &'a Principal,
    pub message: &'a str,
    /// Earlier turns of the thread, oldest first.
    pub history: &'a [Turn],
    pub tools: &'a mut ToolRunner,
}

/// Who answers: the built-in parser or an OpenAI-compatible model.
#[async_trait]
pub trait Provider: Send + Sync {
    fn model(&self) -> &str;
    async fn answer(&self, bridge: &Bridge, x: Exchange<'_>) -> ApiResult<Answer>;
}

/// The chat service behind `POST /chat`.
pub struct Chat {
    store: Store,
    bridge: Arc<Bridge>,
    cfg: ChatConfig,
    provider: Box<dyn Provider>,
}

const NOTHING_PENDING: &str = "There's nothing waiting for a yes or no in this conversation.";

/// How long past `chat.deadline_ms` an unanswered claim is still taken to be running.
const LEASE_MARGIN_MS: u64 = 30_000;

/// How often a retry polls for its running twin's reply.
const TWIN_POLL: Duration = Duration::from_millis(50);

/// How often a running message renews its claim: well inside the lease, so only a claim whose
/// process stopped renewing it (died, or stalled that long) is taken over.
const RENEW_EVERY: Duration = Duration::from_millis(LEASE_MARGIN_MS / 3);

/// Renews a running message's claim until dropped.
struct ClaimRenewal(tokio::task::JoinHandle<()>);

impl Drop for ClaimRenewal {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A reply, and whether it was replayed from an earlier request with the same key.
pub struct Answered {
    pub reply: ChatReply,
    pub replayed: bool,
}

/// The message's idempotency key: the `Idempotency-Key` header or the body's
/// `idempotency_key` (as `POST /notes` takes it); both must agree when both are sent.
fn idempotency_key(header: Option<String>, body: Option<String>) -> ApiResult<Option<String>> {
    let key = match (header, body) {
        (Some(h), Some(b)) if h != b => {
            return Err(ApiError::validation(
                "idempotency_key",
                "differs from the Idempotency-Key header",
            ))
        }
        (Some(k), _) | (None, Some(k)) => k,
        (None, None) => return Ok(None),
    };
    crate::native::request::validate_idempotency_key(&key).map_err(|_| {
        ApiError::validation(
            "Idempotency-Key",
            "must be 1 to 255 visible ASCII characters",
        )
    })?;
    Ok(Some(key))
}

fn in_use() -> ApiError {
    ApiError::new(
        ErrorCode::IdempotencyKeyInUse,
        "A message with this Idempotency-Key is still running",
    )
    .with_details("retry after it finishes to get its reply")
    .with_retry_after(1)
}

impl Chat {
    /// Builds the configured provider; `openai` needs the key its `api_key_env` names.
    pub fn new(store: Store, bridge: Arc<Bridge>, cfg: &ChatConfig) -> anyhow::Result<Self> {
        let provider: Box<dyn Provider> = match cfg.provider {
            ChatProvider::Builtin => Box::new(builtin::Builtin),
            ChatProvider::Openai => Box::new(openai::OpenAi::new(cfg)?),
        };
        Ok(Chat {
            store,
            bridge,
            cfg: cfg.clone(),
            provider,
        })
    }

    /// Answers one message; with an idempotency key (DESIGN §8, see [`idempotency`]) a retry
    /// of an answered message gets its reply again (`replayed`), running and charging nothing.
    pub async fn handle(
        &self,
        p: Arc<Principal>,
        req: ChatRequest,
        header_key: Option<String>,
    ) -> ApiResult<Answered> {
        let message = req.message.trim().to_string();
        if message.is_empty() {
            return Err(ApiError::validation("message", "must not be empty")
                .with_spoken("I didn't get a message."));
        }
        let max = self.cfg.max_message_chars as usize;
        if message.chars().count() > max {
            return Err(
                ApiError::validation("message", format!("longer than {max} characters"))
                    .with_spoken("That message is too long."),
            );
        }
        let claim = match idempotency_key(header_key, req.idempotency_key.clone())? {
            Some(name) => Some(idempotency::Claim::new(
                &p.org_id,
                &p.key_id,
                name,
                &req.message,
                req.thread_id.as_deref(),
            )),
            None => None,
        };
        let existing = match req.thread_id.as_deref() {
            Some(id) => Some(self.thread(&p, id).await?),
            None => None,
        };
        let fresh_id = match &existing {
            Some((thread, _)) => thread.id.clone(),
            None => crate::ids::new_id(),
        };
        // Tool calls run under `<prefix>:<n>`. A keyed message's prefix comes from the client's
        // key and body alone (not the thread, which a retry after a failure starts afresh), so
        // every attempt's calls replay the writes of the attempts before it.
        let mut owner = None;
        let (thread_id, key_prefix) = match &claim {
            Some(c) => match self.begin(c, &fresh_id).await? {
                idempotency::Begun::Run {
                    thread_id,
                    owner: held,
                } => {
                    owner = Some(held);
                    (thread_id, format!("chat:{}", c.message_id()))
                }
                idempotency::Begun::Replay(reply) => {
                    return Ok(Answered {
                        reply: *reply,
                        replayed: true,
                    })
                }
                idempotency::Begun::Running => return Err(in_use()),
            },
            None => {
                let org = p.org_id.clone();
                self.store
                    .write_bookkeeping(move |tx| store::charge(tx, &org))
                    .await?;
                let prefix = format!("chat:{fresh_id}:{}", crate::ids::new_id());
                (fresh_id, prefix)
            }
        };
        let held = claim.clone().zip(owner);
        let _renewal = held.clone().map(|(c, o)| self.renew_while_running(c, o));
        if existing.is_none() {
            self.prune_idle_threads().await;
        }
        let (pending, history) = match existing {
            Some((thread, turns)) => (thread.pending_action_id, turns),
            None => (None, Vec::new()),
        };
        let run = self
            .run(&p, &thread_id, key_prefix, message, pending, history)
            .await;
        let saved = match run {
            Ok((reply, turns, asked)) => self.save(&p, held.clone(), reply, turns, asked).await,
            Err(e) => Err(e),
        };
        match saved {
            Ok(reply) => Ok(Answered {
                reply,
                replayed: false,
            }),
            Err(e) => {
                // No answer: the credit goes back, and the key may be used again. Under a key,
                // only while this attempt still holds the claim: one that took it over runs on
                // the same credit.
                let org = p.org_id.clone();
                let undone = self
                    .store
                    .write_bookkeeping(move |tx| {
                        let ours = match &held {
                            Some((c, o)) => idempotency::release(tx, c, o)?,
                            None => true,
                        };
                        if ours {
                            store::refund(tx, &org)?;
                        }
                        Ok(())
                    })
                    .await;
                if let Err(undo) = undone {
                    tracing::warn!(error = %undo, "chat credit not refunded");
                }
                Err(e)
            }
        }
    }

    /// The thread `id` of this API key with its last turns; anyone else's is not found.
    async fn thread(&self, p: &Principal, id: &str) -> ApiResult<(store::Thread, Vec<Turn>)> {
        if id.is_empty() || id.chars().count() > 128 {
            return Err(ApiError::not_found("Thread"));
        }
        let (org, key, id2, n) = (
            p.org_id.clone(),
            p.key_id.clone(),
            id.to_string(),
            self.cfg.history_turns,
        );
        let found = self
            .store
            .read(move |c| {
                let Some(t) = store::thread(c, &org, &key, &id2)? else {
                    return Ok(None);
                };
                let turns = store::last_turns(c, &t.id, n)?;
                Ok(Some((t, turns)))
            })
            .await?;
        found.ok_or_else(|| {
            ApiError::not_found("Thread")
                .with_details(format!(
                    "thread_id: no thread '{}' for this API key",
                    crate::text::clip(id, 64)
                ))
                .with_spoken("I couldn't find that conversation.")
        })
    }

    /// Renews `owner`'s claim every [`RENEW_EVERY`] until the returned guard is dropped, so a
    /// message that runs long (a slow provider, a tool waiting on its twin) is not taken over.
    fn renew_while_running(&self, claim: idempotency::Claim, owner: String) -> ClaimRenewal {
        let store = self.store.clone();
        ClaimRenewal(tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                let (c, o, now) = (claim.clone(), owner.clone(), crate::state::now_ms());
                match store
                    .write_bookkeeping(move |tx| idempotency::renew(tx, &c, &o, now))
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => return,
                    // Retried at the next tick; the lease leaves room for a few misses.
                    Err(e) => tracing::warn!(error = %e, "chat claim not renewed"),
                }
            }
        }))
    }

    /// Claims the message's key (taking its credit), waiting up to
    /// `native.idempotency_wait_ms` for a twin that is still running.
    async fn begin(
        &self,
        claim: &idempotency::Claim,
        thread_id: &str,
    ) -> ApiResult<idempotency::Begun> {
        let native = self.bridge.config();
        let wait = Duration::from_millis(native.idempotency_wait_ms);
        let ttl_ms =
            i64::try_from(native.idempotency_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        // A running message renews its claim (see `renew_while_running`), so only a claim its
        // process stopped renewing is taken over.
        let lease_ms =
            i64::try_from(self.cfg.deadline_ms.saturating_add(LEASE_MARGIN_MS)).unwrap_or(i64::MAX);
        let started = Instant::now();
        loop {
            let (c, tid) = (claim.clone(), thread_id.to_string());
            let now = crate::state::now_ms();
            let begun = self
                .store
                .write_bookkeeping(move |tx| {
                    idempotency::begin(tx, &c, &tid, now, now.saturating_sub(ttl_ms), lease_ms)
                })
                .await?;
            if !matches!(begun, idempotency::Begun::Running) || started.elapsed() >= wait {
                return Ok(begun);
            }
            tokio::time::sleep(TWIN_POLL).await;
        }
    }

    /// Runs the message: the user's answer to the thread's open question, or the provider.
    async fn run(
        &self,
        p: &Arc<Principal>,
        thread_id: &str,
        key_prefix: String,
        message: String,
        pending: Option<String>,
        history: Vec<Turn>,
    ) -> ApiResult<(ChatReply, Vec<Turn>, Option<String>)> {
        let mut tools = ToolRunner::new(self.bridge.clone(), p.clone(), key_prefix, &message);
        let answer = match (pending.as_deref(), crate::intent::confirmation_of(&message)) {
            // The user's answer to the thread's open question: settled here, by the user's
            // words, without asking the model.
            (Some(pid), Some(yes)) => {
                let result = tools.answer_pending(pid, yes).await;
                Answer {
                    text: tools::spoken(&result).unwrap_or("Done.").to_string(),
                    usage: Usage::default(),
                }
            }
            _ => {
                let x = Exchange {
                    principal: p,
                    message: &message,
                    history: &history,
                    tools: &mut tools,
                };
                self.provider.answer(&self.bridge, x).await?
            }
        };
        // The thread keeps only a question asked by this message: anything else the user
        // said moves the conversation on.
        let asked = tools.asked.clone();
        let turns = vec![
            Turn {
                role: "user".into(),
                content: message,
            },
            Turn {
                role: "assistant".into(),
                content: answer.text.clone(),
            },
        ];
        metrics::counter!(CHAT_MESSAGES, "provider" => self.provider_label()).increment(1);
        metrics::counter!(CHAT_TOOL_CALLS, "provider" => self.provider_label())
            .increment(tools.calls.len() as u64);
        let reply = ChatReply {
            response: answer.text,
            thread_id: thread_id.to_string(),
            tool_calls: tools.calls,
            model: self.provider.model().to_string(),
            usage: answer.usage,
        };
        Ok((reply, turns, asked))
    }

    /// Saves the exchange in its thread and, under a key, the reply for replay: one
    /// transaction, so a stored reply always has its turns.
    async fn save(
        &self,
        p: &Principal,
        claim: Option<(idempotency::Claim, String)>,
        reply: ChatReply,
        turns: Vec<Turn>,
        asked: Option<String>,
    ) -> ApiResult<ChatReply> {
        let (org, key, keep) = (p.org_id.clone(), p.key_id.clone(), self.cfg.history_turns);
        self.store
            .write_bookkeeping(move |tx| {
                store::save_exchange(
                    tx,
                    &org,
                    &key,
                    &reply.thread_id,
                    &turns,
                    asked.as_deref(),
                    keep,
                )?;
                if let Some((c, owner)) = &claim {
                    idempotency::finish(tx, c, owner, &reply)?;
                }
                Ok(reply)
            })
            .await
    }

    /// Drops a few threads idle for longer than `chat.thread_ttl_days`, whoever owns them, when
    /// a thread starts: the table stays bounded without a timer. Best effort.
    async fn prune_idle_threads(&self) {
        let days = i64::from(self.cfg.thread_ttl_days);
        let before = crate::ids::to_rfc3339(chrono::Utc::now() - chrono::Duration::days(days));
        let pruned = self
            .store
            .write_bookkeeping(move |tx| store::prune_idle(tx, &before, 100))
            .await;
        if let Err(e) = pruned {
            tracing::warn!(error = %e, "pruning idle chat threads failed");
        }
    }

    fn provider_label(&self) -> &'static str {
        match self.cfg.provider {
            ChatProvider::Builtin => "builtin",
            ChatProvider::Openai => "openai",
        }
    }
}
