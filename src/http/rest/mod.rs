//! REST v1 handlers, one file per resource. Each checks its scope, reads its input through the
//! extractors in `http::extract`, and runs its store work off the async workers (reads on the
//! blocking pool, writes on the store's writer thread).

pub mod activity;
pub mod campaigns;
pub mod chat;
pub mod companies;
pub mod contacts;
pub mod credits;
pub mod jobs;
pub mod notes;
pub mod settings;
pub mod signals;
pub mod webhooks;

use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};

/// Page caps from the reference.
pub const CRM_PAGE_CAP: u32 = 200;
pub const FEED_PAGE_CAP: u32 = 100;

/// The REST v1 routes (relative to `/api/v1`). Each handler's `#[utoipa::path]` gives both its
/// route and its OpenAPI operation, so the two cannot disagree.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(contacts::list, contacts::create))
        .routes(routes!(
            contacts::get_one,
            contacts::update,
            contacts::delete
        ))
        .routes(routes!(companies::list, companies::create))
        .routes(routes!(
            companies::get_one,
            companies::update,
            companies::delete
        ))
        .routes(routes!(signals::list))
        .routes(routes!(activity::list))
        .routes(routes!(notes::list, notes::create))
        .routes(routes!(notes::delete))
        .routes(routes!(campaigns::list))
        .routes(routes!(campaigns::get_one, campaigns::update))
        .routes(routes!(campaigns::trigger))
        .routes(routes!(campaigns::status))
        .routes(routes!(credits::get))
        .routes(routes!(chat::post))
        .routes(routes!(jobs::get_one))
        .routes(routes!(settings::get, settings::update))
        .routes(routes!(webhooks::list, webhooks::create, webhooks::delete))
}

/// `{ deleted: true, id }`, the answer of every delete.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Deleted {
    /// Always true.
    pub deleted: bool,
    pub id: String,
}

/// Record ids are UUIDs; anything else cannot exist, so answer 404 without a query.
pub fn record_id(id: &str, what: &str) -> ApiResult<String> {
    if crate::ids::is_uuid(id) {
        Ok(id.to_ascii_lowercase())
    } else {
        Err(ApiError::not_found(what))
    }
}
