//! `POST /chat`: a message to the AI assistant, answered by `chat::Chat` (scope `chat`, one
//! credit per message).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use crate::app::AppState;
use crate::auth::Principal;
use crate::chat::{ChatReply, ChatRequest};
use crate::domain::Scope;
use crate::error::{ApiError, ApiResult};
use crate::http::envelope::Data;
use crate::http::extract::ApiJson;

const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Send a message; the assistant may run actions as tools. A dangerous action only asks: answer
/// "yes" or "no" in the same thread. With an `Idempotency-Key` header (or `idempotency_key` in
/// the body), a retry of the same message gets the first reply again, marked
/// `Idempotent-Replayed: true`, without running its tools or taking another credit.
#[utoipa::path(post, path = "/chat", tag = "chat", operation_id = "chat",
    request_body = ChatRequest,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "1-255 visible ASCII characters, scoped to the API key and kept 24 h \
            (`native.idempotency_ttl_secs`). The same key with the same `message` and \
            `thread_id` replays the first reply (no tool runs, no credit); with another body it \
            is `422 IDEMPOTENCY_KEY_REUSED`; while the first still runs, the retry waits for it \
            (up to `native.idempotency_wait_ms`), then gets `409 IDEMPOTENCY_KEY_IN_USE`. A \
            failed message (4xx before it ran, 5xx) stores nothing: retry with the same key.")),
    responses(
        (status = 200, description = "The answer; a replay carries `Idempotent-Replayed: true`",
            body = crate::http::schemas::Envelope<ChatReply>,
            headers(("Idempotent-Replayed" = String, description = "`true` on a replay of an earlier message with the same idempotency key"))),
        (status = 402, description = "`INSUFFICIENT_CREDITS`: no credits left"),
        (status = 403, description = "`SCOPE_DENIED`: the key lacks the `chat` scope; or `PLAN_REQUIRED`"),
        (status = 404, description = "`RESOURCE_NOT_FOUND`: no such thread for this API key"),
        (status = 409, description = "`IDEMPOTENCY_KEY_IN_USE` (with `Retry-After`): a message with this key is still running"),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`: the body is over the server's body limit (64 KiB by default), whatever the message length"),
        (status = 422, description = "`VALIDATION_ERROR` (empty message, a message over `chat.max_message_chars`, an unknown field, a malformed idempotency key) or `IDEMPOTENCY_KEY_REUSED`"),
        (status = 502, description = "`UPSTREAM_UNAVAILABLE`: the chat model failed"),
        (status = 504, description = "`UPSTREAM_UNAVAILABLE`: the chat model (with its tool calls) took longer than `chat.deadline_ms`"),
    ))]
pub async fn post(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ChatRequest>,
) -> ApiResult<Response> {
    p.require_any(&[Scope::Chat])?;
    let key = match headers.get(IDEMPOTENCY_KEY) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::validation(
                        "Idempotency-Key",
                        "must be 1 to 255 visible ASCII characters",
                    )
                })?
                .to_string(),
        ),
        None => None,
    };
    // In its own task: a client that hangs up does not stop a message halfway, so its claim
    // gets the reply (or is released) and a retry with the key replays instead of waiting out
    // the claim.
    // The request's id and span go with it, so its turns log and trace under this request.
    let turn = async move { app.chat.handle(p, req, key).await };
    let turn = tracing::Instrument::instrument(turn, tracing::Span::current());
    let answered = match crate::http::envelope::REQUEST.try_with(Clone::clone) {
        Ok(ctx) => tokio::spawn(crate::http::envelope::REQUEST.scope(ctx, turn)).await,
        Err(_) => tokio::spawn(turn).await,
    }
    .map_err(|e| ApiError::internal(format!("chat message failed: {e}")))??;
    let mut resp = Data(answered.reply).into_response();
    if answered.replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}
