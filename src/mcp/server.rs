//! The MCP server behind `/mcp`: lists the tools and runs a tool call through the native
//! pipeline (`Bridge::handle`), as the authenticated caller the HTTP guard admitted.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, ListToolsResult,
    PaginatedRequestParams, ProtocolVersion, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};

use super::tools;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::native::timing::ServerTiming;
use crate::native::{Bridge, Transport};

/// Who is calling and since when, put into the HTTP request by the guard in `mcp::serve` and
/// read back here from the request parts the SDK hands to each handler.
#[derive(Clone)]
pub struct Caller {
    pub principal: Arc<Principal>,
    /// When the HTTP request arrived (the start of the turn's Server-Timing `total`).
    pub started: Instant,
    /// Time spent authenticating, reported as the turn's `auth` phase.
    pub auth: std::time::Duration,
    /// The HTTP request's id, kept when traces are exported (for the turn's root span).
    pub request_id: Option<String>,
}

const INSTRUCTIONS: &str = "pilot-bridge drives an OutreachPilot sales CRM. Each tool result \
    starts with a sentence to say to the user. Contacts may be named (\"Sarah Chen\"), given by \
    email or id; a result with mode clarification_required lists candidates: call again with \
    the chosen id. A result with mode confirmation_required is a question for the user: call \
    confirm_pending_action with its pending_action_id and the user's answer, never on your own.";

/// One per request (the transport is stateless); cheap to build: a handle on the bridge. (Not
/// the whole app state, which holds the SDK service that makes these.)
#[derive(Clone)]
pub struct PilotMcp {
    pub bridge: Arc<Bridge>,
}

impl ServerHandler for PilotMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(
                Implementation::new("pilot-bridge", env!("CARGO_PKG_VERSION"))
                    .with_title("pilot-bridge (OutreachPilot)"),
            )
            .with_instructions(INSTRUCTIONS)
    }

    /// Every revision the SDK speaks: 2025-06-18 and 2025-11-25 with the `initialize`
    /// handshake, 2026-07-28 with `server/discover`, and the older two for older clients.
    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(ProtocolVersion::KNOWN_VERSIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools::all().to_vec()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        tools::find(name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if tools::find(&request.name).is_none() {
            return Err(ErrorData::invalid_params(
                format!(
                    "unknown tool {:?}; tools/list names them",
                    crate::text::clip(&request.name, 64)
                ),
                None,
            ));
        }
        let caller = context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Caller>())
            .cloned();
        // The guard in `mcp::serve` admits every request before the SDK sees it; a call without
        // a caller means this handler was mounted without that guard.
        let Some(caller) = caller else {
            return Err(ErrorData::internal_error("caller not authenticated", None));
        };
        let mut timing = ServerTiming::starting_at(caller.started);
        if let (Some(trace), Some(id)) = (timing.trace(), &caller.request_id) {
            trace.record_request_id(id);
        }
        timing.record("auth", caller.auth);
        let bridge = &self.bridge;
        let outcome = match tools::native_body(&request.name, request.arguments.as_ref()) {
            Ok(body) => {
                bridge
                    .handle(caller.principal, body, timing, Transport::Mcp)
                    .await
            }
            Err(e) => bridge.reject(e, timing, Transport::Mcp),
        };
        let result = outcome.result.as_ref().map_err(|e: &ApiError| e);
        Ok(tools::tool_result(result).into())
    }
}
