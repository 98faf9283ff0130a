//! AI chat, `POST /chat` (DESIGN §19): a message in a thread, answered by a provider that may
//! call the 17 actions as tools. Tools run through the native pipeline (confirmation,
//! idempotency, audit); a dangerous one only asks, the thread keeps the question, and the
//! user's next message — "yes" or "no" — answers it. The model never confirms.
//!
//! Each message costs one credit, taken atomically before the provider runs and given back
//! when no answer comes (provider failure). Threads live in SQLite with their last turns.

pub mod builtin;
pub mod openai;
pub mod store;
pub mod tools;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use self::store::Turn;
use self::tools::{ToolCall, ToolRunner};
use crate::auth::Principal;
use crate::config::{ChatConfig, ChatProvider};
use crate::error::{ApiError, ApiResult};
use crate::native::Bridge;
use crate::store::Store;
use crate::telemetry::names::{CHAT_MESSAGES, CHAT_TOOL_CALLS};

/// `POST /chat` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    /// What the user says (1 to `chat.max_message_chars` characters, 4,000 by default).
    pub message: String,
    /// Continue this thread (from an earlier reply); omit to start one.
    pub thread_id: Option<String>,
}

/// Tokens the provider counted for this message (the built-in provider counts words).
#[derive(Debug, Clone, Copy, Default, Serialize, utoipa::ToSchema)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// `POST /chat` answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

    /// Answers one message.
    pub async fn handle(&self, p: Arc<Principal>, req: ChatRequest) -> ApiResult<ChatReply> {
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
        let (thread_id, pending, history) = match req.thread_id.as_deref() {
            Some(id) => {
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
                let Some((thread, turns)) = found else {
                    return Err(ApiError::not_found("Thread")
                        .with_details(format!(
                            "thread_id: no thread '{}' for this API key",
                            crate::text::clip(id, 64)
                        ))
                        .with_spoken("I couldn't find that conversation."));
                };
                (thread.id, thread.pending_action_id, turns)
            }
            None => {
                self.prune_idle_threads().await;
                (crate::ids::new_id(), None, Vec::new())
            }
        };
        let org = p.org_id.clone();
        self.store
            .write_bookkeeping(move |tx| store::charge(tx, &org))
            .await?;
        let message_id = crate::ids::new_id();
        let mut tools = ToolRunner::new(
            self.bridge.clone(),
            p.clone(),
            &thread_id,
            &message_id,
            &message,
        );
        let answered = match (pending.as_deref(), crate::intent::confirmation_of(&message)) {
            // The user's answer to the thread's open question: settled here, by the user's
            // words, without asking the model.
            (Some(pid), Some(yes)) => {
                let result = tools.answer_pending(pid, yes).await;
                Ok(Answer {
                    text: tools::spoken(&result).unwrap_or("Done.").to_string(),
                    usage: Usage::default(),
                })
            }
            _ => {
                let x = Exchange {
                    principal: &p,
                    message: &message,
                    history: &history,
                    tools: &mut tools,
                };
                self.provider.answer(&self.bridge, x).await
            }
        };
        let answer = match answered {
            Ok(a) => a,
            Err(e) => {
                let org = p.org_id.clone();
                if let Err(refund) = self
                    .store
                    .write_bookkeeping(move |tx| store::refund(tx, &org))
                    .await
                {
                    tracing::warn!(error = %refund, "chat credit not refunded");
                }
                return Err(e);
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
        let (org, key, tid, keep) = (
            p.org_id.clone(),
            p.key_id.clone(),
            thread_id.clone(),
            self.cfg.history_turns,
        );
        self.store
            .write_bookkeeping(move |tx| {
                store::save_exchange(tx, &org, &key, &tid, &turns, asked.as_deref(), keep)
            })
            .await?;
        metrics::counter!(CHAT_MESSAGES, "provider" => self.provider_label()).increment(1);
        metrics::counter!(CHAT_TOOL_CALLS, "provider" => self.provider_label())
            .increment(tools.calls.len() as u64);
        Ok(ChatReply {
            response: answer.text,
            thread_id,
            tool_calls: tools.calls,
            model: self.provider.model().to_string(),
            usage: answer.usage,
        })
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
