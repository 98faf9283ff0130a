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

/// `direction` filter values.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum Direction {
    Inbound,
    Outbound,
    Internal,
}

/// Interaction history across contacts and campaigns, newest first.
#[utoipa::path(get, path = "/activity", tag = "feeds", operation_id = "listActivity",
    params(
        ("contact_id" = Option<String>, Query, description = "Only this contact's interactions"),
        ("campaign_id" = Option<String>, Query, description = "Only this campaign's interactions"),
        ("direction" = Option<Direction>, Query, description = "Only this direction"),
        ("channel" = Option<String>, Query, description = "Only this channel (email, linkedin, call, note, ...)"),
        ("since" = Option<String>, Query, format = DateTime, description = "Only interactions at or after this time (RFC 3339)"),
        ("include_notes" = Option<bool>, Query, description = "Include notes (default true)"),
        ("limit" = Option<u32>, Query, minimum = 1, description = "Page size (default 50, larger values are clamped to 100)"),
        ("offset" = Option<u64>, Query, minimum = 0, description = "Records to skip"),
    ),
    responses((status = 200, description = "A page of interactions", body = crate::http::schemas::PageEnvelope<Interaction>)))]
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
