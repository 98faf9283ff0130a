//! The `openai` chat provider: any OpenAI-compatible `POST {base_url}/chat/completions` with
//! tool calling (OpenAI, vLLM, llama.cpp server, Ollama). The request carries the 17 actions'
//! JSON Schemas as tools; tool calls run through the native pipeline and their results go back
//! to the model. Bounded: at most `max_rounds` model calls (the last one may not call tools;
//! tool calls it makes anyway are ignored and the last tool's spoken summary answers) within
//! `deadline_ms` in all, tool runs included. Provider failures become our error codes: a timeout is
//! `UPSTREAM_TIMEOUT` (504), anything else `UPSTREAM_UNAVAILABLE` (502, with `Retry-After` when
//! the provider sent one); the provider's key never appears in an error.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{tools, Answer, Exchange, Provider, Usage};
use crate::config::ChatConfig;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::native::schema::action_inputs;
use crate::native::Bridge;

const SYSTEM_PROMPT: &str = "You are the assistant of a sales CRM, speaking with a salesperson. \
Use the tools to look things up and make changes. Tools that change something important only \
ask the user for confirmation: when a tool result has mode confirmation_required, tell the user \
its spoken_summary question and stop; the user answers in their next message. Never claim an \
action happened unless a tool result says so. Answer in one to three short plain sentences \
without markdown.";

/// Longest provider error message quoted in our error details.
const MAX_QUOTED: usize = 200;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallMessage>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    fn text(role: &str, content: &str) -> Self {
        Message {
            role: role.into(),
            content: Some(content.into()),
            tool_calls: None,
            tool_call_id: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolCallMessage {
    pub id: String,
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    pub function: FunctionCall,
}

fn function_kind() -> String {
    "function".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionCall {
    pub name: String,
    /// JSON text, as the API sends it.
    #[serde(default)]
    pub arguments: String,
}

#[derive(Debug, Serialize)]
struct ToolDef<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionDef<'a>,
}

#[derive(Debug, Serialize)]
struct FunctionDef<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a Value,
}

#[derive(Debug, Serialize)]
struct CompletionRequest<'a> {
    model: &'a str,
    messages: &'a [Message],
    tools: &'a [ToolDef<'a>],
    /// `auto`, or `none` on the last round so the model answers in words.
    tool_choice: &'static str,
}

#[derive(Debug, Deserialize)]
struct CompletionResponse {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<CompletionUsage>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    message: Message,
}

#[derive(Debug, Deserialize)]
struct CompletionUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[derive(Debug, Deserialize)]
struct ProviderError {
    error: ProviderErrorBody,
}

#[derive(Debug, Deserialize)]
struct ProviderErrorBody {
    #[serde(default)]
    message: String,
}

pub struct OpenAi {
    http: reqwest::Client,
    url: String,
    model: String,
    api_key: Option<String>,
    max_rounds: u32,
    deadline: Duration,
}

impl OpenAi {
    pub fn new(cfg: &ChatConfig) -> anyhow::Result<Self> {
        let api_key = match cfg.api_key_env.trim() {
            "" => None,
            name => Some(std::env::var(name).map_err(|_| {
                anyhow::anyhow!(
                    "chat.api_key_env names {name}, which is not set (set it, or set api_key_env = \"\" for a server that takes no key)"
                )
            })?),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(OpenAi {
            http,
            url: format!(
                "{}/chat/completions",
                cfg.base_url.trim().trim_end_matches('/')
            ),
            model: cfg.model.clone(),
            api_key,
            max_rounds: cfg.max_rounds.clamp(1, 4),
            deadline: Duration::from_millis(cfg.deadline_ms),
        })
    }

    async fn complete(
        &self,
        messages: &[Message],
        tools: &[ToolDef<'_>],
        tool_choice: &'static str,
        left: Duration,
    ) -> ApiResult<CompletionResponse> {
        let body = CompletionRequest {
            model: &self.model,
            messages,
            tools,
            tool_choice,
        };
        let mut req = self.http.post(&self.url).json(&body).timeout(left);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.map_err(transport_error)?;
        let status = resp.status();
        if !status.is_success() {
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let text = resp.text().await.unwrap_or_default();
            let said = serde_json::from_str::<ProviderError>(&text)
                .map(|e| e.error.message)
                .unwrap_or_default();
            let mut e = unavailable(format!(
                "chat provider answered HTTP {}{}",
                status.as_u16(),
                if said.is_empty() {
                    String::new()
                } else {
                    format!(": {}", crate::text::clip(&said, MAX_QUOTED))
                }
            ));
            if let Some(secs) = retry_after {
                e = e.with_retry_after(secs.min(3600));
            }
            return Err(e);
        }
        let bytes = resp.bytes().await.map_err(transport_error)?;
        serde_json::from_slice::<CompletionResponse>(&bytes)
            .map_err(|e| unavailable(format!("chat provider sent an unreadable answer: {e}")))
    }
}

fn unavailable(details: String) -> ApiError {
    ApiError::new(
        ErrorCode::UpstreamUnavailable,
        "The chat model is unavailable",
    )
    .with_details(details)
    .with_spoken("The assistant isn't available right now. Please try again.")
}

fn timed_out() -> ApiError {
    ApiError::new(ErrorCode::UpstreamTimeout, "The chat model took too long")
        .with_details("chat.deadline_ms passed before the model answered")
        .with_spoken("The assistant took too long to answer. Please try again.")
}

fn tool_timed_out(tool: &str) -> ApiError {
    ApiError::new(ErrorCode::UpstreamTimeout, "The chat model took too long")
        .with_details(format!(
            "chat.deadline_ms passed while the tool {} ran",
            crate::text::clip(tool, 64)
        ))
        .with_spoken("The assistant took too long to answer. Please try again.")
}

/// What is left of `deadline` since `started`; `None` once it has passed.
fn remaining(deadline: Duration, started: Instant) -> Option<Duration> {
    deadline
        .checked_sub(started.elapsed())
        .filter(|d| !d.is_zero())
}

fn transport_error(e: reqwest::Error) -> ApiError {
    if e.is_timeout() {
        timed_out()
    } else {
        // Without the URL: it may carry credentials in its user info.
        unavailable(format!("chat provider unreachable: {}", e.without_url()))
    }
}

/// A tool result as the model reads it: the reply, and for a question, who may answer it.
fn for_model(result: &Value) -> String {
    let mut shown = result.clone();
    if shown["mode"] == "confirmation_required" {
        shown["note"] = Value::String(
            "Not done yet. Ask the user this question; only the user's next message can confirm it."
                .into(),
        );
    }
    shown.to_string()
}

#[async_trait]
impl Provider for OpenAi {
    fn model(&self) -> &str {
        &self.model
    }

    async fn answer(&self, _bridge: &Bridge, x: Exchange<'_>) -> ApiResult<Answer> {
        let started = Instant::now();
        let defs: Vec<ToolDef<'_>> = action_inputs()
            .iter()
            .map(|t| ToolDef {
                kind: "function",
                function: FunctionDef {
                    name: t.ty,
                    description: t.description,
                    parameters: &t.schema,
                },
            })
            .collect();
        let mut messages = Vec::with_capacity(x.history.len() + 4);
        messages.push(Message::text("system", SYSTEM_PROMPT));
        for t in x.history {
            messages.push(Message::text(&t.role, &t.content));
        }
        messages.push(Message::text("user", x.message));
        let mut usage = Usage::default();
        let mut last_spoken: Option<String> = None;
        for round in 0..self.max_rounds {
            let left = remaining(self.deadline, started).ok_or_else(timed_out)?;
            let last = round + 1 == self.max_rounds;
            let resp = self
                .complete(&messages, &defs, if last { "none" } else { "auto" }, left)
                .await?;
            if let Some(u) = &resp.usage {
                usage.input_tokens += u.prompt_tokens;
                usage.output_tokens += u.completion_tokens;
            }
            let Some(choice) = resp.choices.into_iter().next() else {
                return Err(unavailable("chat provider sent no choices".into()));
            };
            let calls = choice
                .message
                .tool_calls
                .clone()
                .filter(|c| !c.is_empty() && !last);
            let Some(calls) = calls else {
                let text = choice
                    .message
                    .content
                    .filter(|t| !t.trim().is_empty())
                    .or(last_spoken)
                    .unwrap_or_else(|| "Done.".into());
                return Ok(Answer { text, usage });
            };
            messages.push(Message {
                role: "assistant".into(),
                content: choice.message.content.clone(),
                tool_calls: Some(calls.clone()),
                tool_call_id: None,
            });
            for call in calls {
                let arguments: Value = if call.function.arguments.trim().is_empty() {
                    Value::Object(Default::default())
                } else {
                    // Unreadable arguments run as none: the pipeline then names the missing
                    // field, and the model reads that in the tool result.
                    serde_json::from_str(&call.function.arguments).unwrap_or(Value::Null)
                };
                // The tool's share of the deadline is what is left of it. A native write runs
                // in its own task, so giving up here leaves it to finish with its idempotency
                // record: a retry under the same key replays it rather than repeating it.
                let left = remaining(self.deadline, started).ok_or_else(timed_out)?;
                let result =
                    tokio::time::timeout(left, x.tools.run(&call.function.name, arguments, None))
                        .await
                        .map_err(|_| tool_timed_out(&call.function.name))?;
                if let Some(s) = tools::spoken(&result) {
                    last_spoken = Some(s.to_string());
                }
                messages.push(Message {
                    role: "tool".into(),
                    content: Some(for_model(&result)),
                    tool_calls: None,
                    tool_call_id: Some(call.id),
                });
            }
        }
        // Unreachable with max_rounds ≥ 1: the last round forbids tool calls and returns.
        Err(unavailable("chat provider did not finish".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_question_tells_the_model_who_answers_it() {
        let shown = for_model(
            &serde_json::json!({"mode":"confirmation_required","spoken_summary":"Add X?"}),
        );
        assert!(shown.contains("only the user's next message"));
        let shown = for_model(&serde_json::json!({"mode":"result"}));
        assert!(!shown.contains("note"));
    }

    #[test]
    fn a_missing_key_variable_is_named_at_start() {
        let cfg = ChatConfig {
            provider: crate::config::ChatProvider::Openai,
            api_key_env: "PILOT_BRIDGE_TEST_SURELY_UNSET_KEY_VAR".into(),
            ..ChatConfig::default()
        };
        let e = OpenAi::new(&cfg).err().unwrap().to_string();
        assert!(e.contains("PILOT_BRIDGE_TEST_SURELY_UNSET_KEY_VAR"), "{e}");
        let cfg = ChatConfig {
            api_key_env: String::new(),
            base_url: "http://127.0.0.1:9/v1/".into(),
            ..cfg
        };
        let p = OpenAi::new(&cfg).unwrap();
        assert_eq!(p.url, "http://127.0.0.1:9/v1/chat/completions");
        assert!(p.api_key.is_none());
    }
}
