//! The built-in chat provider, model `pilot-bridge-builtin`: the intent parser reads the
//! message into one action, the action runs as a tool, and its spoken summary is the answer.
//! Offline and deterministic, so chat works on a fresh machine. Usage counts words.

use async_trait::async_trait;

use super::{tools, Answer, Exchange, Provider, Usage};
use crate::error::ApiResult;
use crate::intent::HINT;
use crate::native::transcript::Interpretation;
use crate::native::Bridge;

pub const MODEL: &str = "pilot-bridge-builtin";

pub struct Builtin;

/// Words in and out, the built-in provider's stand-in for tokens.
pub fn word_usage(input: &str, output: &str) -> Usage {
    Usage {
        input_tokens: input.split_whitespace().count() as u64,
        output_tokens: output.split_whitespace().count() as u64,
    }
}

#[async_trait]
impl Provider for Builtin {
    fn model(&self) -> &str {
        MODEL
    }

    async fn answer(&self, bridge: &Bridge, x: Exchange<'_>) -> ApiResult<Answer> {
        let text = match bridge.interpret(x.principal, x.message).await? {
            Interpretation::Unrecognized => HINT.to_string(),
            // A yes or no with no question open in this thread (answered before a provider
            // is asked when there is one).
            Interpretation::Confirm(_) => super::NOTHING_PENDING.to_string(),
            Interpretation::Action {
                action,
                alternative,
            } => {
                let name = action
                    .get("type")
                    .and_then(|t| t.as_str())
                    .unwrap_or_default()
                    .to_string();
                let result = x.tools.run(&name, action, alternative).await;
                tools::spoken(&result).unwrap_or("Done.").to_string()
            }
        };
        Ok(Answer {
            usage: word_usage(x.message, &text),
            text,
        })
    }
}
