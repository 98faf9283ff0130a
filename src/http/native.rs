//! `POST /api/v1/native/outreachpilot`: adapts HTTP to the bridge core — authenticate, read the
//! JSON body, hand it to `native::Bridge`, render the outcome with `Server-Timing`.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::envelope::REQUEST;
use super::extract::{json_bytes, parse_json_value};
use super::middleware::apply_rate_headers;
use crate::app::AppState;
use crate::auth::rate_limit::RateDecision;
use crate::domain::Scope;
use crate::native::reply::TurnOutcome;
use crate::native::timing::ServerTiming;
use crate::native::Transport;

/// Run one native action (or confirm or cancel a pending one). Every response carries
/// `Server-Timing`; a replay from the idempotency store carries `Idempotent-Replayed: true`.
#[utoipa::path(post, path = "/api/v1/native/outreachpilot", tag = "native", operation_id = "nativeOutreachpilot",
    request_body = crate::http::schemas::NativeRequestBody,
    responses(
        (status = 200, description = "A reply: `result`, `confirmation_required`, `clarification_required`, `queued` or `duplicate`", body = crate::http::schemas::NativeEnvelope),
        (status = 400, description = "`CAMPAIGN_NOT_ACTIVE`"),
        (status = 402, description = "`INSUFFICIENT_CREDITS`"),
        (status = 404, description = "`RESOURCE_NOT_FOUND`: a reference or pending action that does not exist (or `ORG_NOT_FOUND`)"),
        (status = 409, description = "`IDEMPOTENCY_KEY_IN_USE` (with `Retry-After`) or `DUPLICATE_RESOURCE`"),
        (status = 410, description = "`PENDING_ACTION_EXPIRED`"),
        (status = 503, description = "`SERVICE_UNAVAILABLE`: shutting down"),
    ))]
pub async fn handle(State(app): State<AppState>, req: Request) -> Response {
    let started = REQUEST
        .try_with(|c| c.started)
        .unwrap_or_else(|_| Instant::now());
    let mut timing = ServerTiming::starting_at(started);
    let t = Instant::now();
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("\u{0}invalid"));
    let admitted = app.admit(authorization).await;
    let admitted = admitted.and_then(
        |(p, d)| match p.require_any(&[Scope::Native, Scope::Chat]) {
            Ok(()) => Ok((p, d)),
            Err(e) => Err((e, Some(d))),
        },
    );
    timing.record("auth", t.elapsed());
    let (principal, decision) = match admitted {
        Ok(x) => x,
        Err((e, decision)) => {
            return render(
                &app.bridge.reject(e, timing, Transport::Http),
                decision.as_ref(),
            )
        }
    };
    let t = Instant::now();
    let body = match json_bytes(req, &())
        .await
        .and_then(|b| parse_json_value(&b))
    {
        Ok(v) => v,
        Err(e) => {
            timing.record("parse", t.elapsed());
            return render(
                &app.bridge.reject(e, timing, Transport::Http),
                Some(&decision),
            );
        }
    };
    timing.record("parse", t.elapsed());
    let outcome = app
        .bridge
        .handle(principal, body, timing, Transport::Http)
        .await;
    render(&outcome, Some(&decision))
}

fn render(outcome: &TurnOutcome, decision: Option<&RateDecision>) -> Response {
    let request_id = super::envelope::request_id();
    let status =
        StatusCode::from_u16(outcome.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        outcome.envelope_bytes(&request_id, None),
    )
        .into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&outcome.server_timing) {
        h.insert("server-timing", v);
    }
    if outcome.replayed {
        h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    if let Err(e) = &outcome.result {
        if let Some(secs) = e.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
    }
    if let Some(d) = decision {
        apply_rate_headers(h, d);
    }
    resp
}
