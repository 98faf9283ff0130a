//! `GET /activity`: interaction history across contacts and campaigns (notes included unless
//! `include_notes=false`).

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
use crate::store::interactions::{self, ActivityFilter, Interaction};

pub async fn list(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    q: QueryParams,
) -> ApiResult<Paged<Interaction>> {
    p.require_any(&[Scope::Contacts, Scope::Native])?;
    let page = q.page(FEED_PAGE_CAP)?;
    let direction = q.string("direction").map(|d| d.to_ascii_lowercase());
    if let Some(d) = &direction {
        if !["inbound", "outbound", "internal"].contains(&d.as_str()) {
            return Err(ApiError::validation(
                "direction",
                "must be inbound, outbound or internal",
            ));
        }
    }
    let filter = ActivityFilter {
        contact_id: q.string("contact_id"),
        campaign_id: q.string("campaign_id"),
        direction,
        channel: q.string("channel"),
        since: q.timestamp("since")?,
        include_notes: q.bool("include_notes")?.unwrap_or(true),
        unread_only: false,
    };
    let org = p.org_id.clone();
    Ok(Paged(
        app.store
            .read(move |c| interactions::list(c, &org, &filter, page))
            .await?,
    ))
}
