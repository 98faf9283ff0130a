//! `POST /chat`: a message to the AI assistant, answered by `chat::Chat` (scope `chat`, one
//! credit per message).

use std::sync::Arc;

use axum::extract::State;
use axum::Extension;

use crate::app::AppState;
use crate::auth::Principal;
use crate::chat::{ChatReply, ChatRequest};
use crate::domain::Scope;
use crate::error::ApiResult;
use crate::http::envelope::Data;
use crate::http::extract::ApiJson;

/// Send a message; the assistant may run actions as tools. A dangerous action only asks: answer
/// "yes" or "no" in the same thread.
#[utoipa::path(post, path = "/chat", tag = "chat", operation_id = "chat",
    request_body = ChatRequest,
    responses(
        (status = 200, description = "The answer", body = crate::http::schemas::Envelope<ChatReply>),
        (status = 402, description = "`INSUFFICIENT_CREDITS`: no credits left"),
        (status = 404, description = "`RESOURCE_NOT_FOUND`: no such thread for this API key"),
        (status = 422, description = "`VALIDATION_ERROR`: empty or too long message, unknown field"),
        (status = 502, description = "`UPSTREAM_UNAVAILABLE`: the chat model failed"),
        (status = 504, description = "`UPSTREAM_UNAVAILABLE`: the chat model took too long"),
    ))]
pub async fn post(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> ApiResult<Data<ChatReply>> {
    p.require_any(&[Scope::Chat])?;
    app.chat.handle(p, req).await.map(Data)
}
