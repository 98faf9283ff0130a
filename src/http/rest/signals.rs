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
