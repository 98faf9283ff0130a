//! `GET /signals`: buying signals, newest first, for briefing cards.

use std::sync::Arc;

use axum::extract::State;
use axum::Extension;

use super::FEED_PAGE_CAP;
use crate::app::AppState;
use crate::auth::Principal;
use crate::domain::Scope;
use crate::error::{ApiError, ApiResult};
use crate::http::envelope::Paged;
use crate::http::extract::QueryParams;
use crate::store::signals::{self, Signal, SignalFilter};

/// Buying signals, newest first.
#[utoipa::path(get, path = "/signals", tag = "feeds", operation_id = "listSignals",
    params(
        ("since" = Option<String>, Query, format = DateTime, description = "Only signals detected at or after this time (RFC 3339)"),
        ("platform" = Option<String>, Query, description = "Only signals from this platform"),
        ("status" = Option<String>, Query, description = "Only signals with this status"),
        ("contact_id" = Option<String>, Query, description = "Only signals for this contact"),
        ("company" = Option<String>, Query, description = "Only signals for this company"),
        ("min_intent_score" = Option<i64>, Query, minimum = 0, maximum = 100, description = "Lowest intent score"),
        ("limit" = Option<u32>, Query, minimum = 1, description = "Page size (default 50, larger values are clamped to 100)"),
        ("offset" = Option<u64>, Query, minimum = 0, description = "Records to skip"),
    ),
    responses((status = 200, description = "A page of signals", body = crate::http::schemas::PageEnvelope<Signal>)))]
pub async fn list(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    q: QueryParams,
) -> ApiResult<Paged<Signal>> {
    p.require_any(&[Scope::Contacts, Scope::Native])?;
    let page = q.page(FEED_PAGE_CAP)?;
    let min = q.i64("min_intent_score")?;
    if let Some(m) = min {
        if !(0..=100).contains(&m) {
            return Err(ApiError::validation(
                "min_intent_score",
                "must be between 0 and 100",
            ));
        }
    }
    let filter = SignalFilter {
        since: q.timestamp("since")?,
        platform: q.string("platform"),
        status: q.string("status"),
        contact_id: q.string("contact_id"),
        company: q.string("company"),
        min_intent_score: min,
    };
    let org = p.org_id.clone();
    Ok(Paged(
        app.store
            .read(move |c| signals::list(c, &org, &filter, page))
            .await?,
    ))
}
