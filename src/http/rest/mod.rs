//! REST v1 handlers, one file per resource. Each checks its scope, reads its input through the
//! extractors in `http::extract`, and runs its store work on the blocking pool.

pub mod activity;
pub mod campaigns;
pub mod companies;
pub mod contacts;
pub mod credits;
pub mod jobs;
pub mod notes;
pub mod settings;
pub mod signals;
pub mod webhooks;

use axum::routing::get;
use axum::Router;

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};

/// Page caps from the reference.
pub const CRM_PAGE_CAP: u32 = 200;
pub const FEED_PAGE_CAP: u32 = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/contacts", get(contacts::list).post(contacts::create))
        .route(
            "/contacts/{id}",
            get(contacts::get_one)
                .put(contacts::update)
                .delete(contacts::delete),
        )
        .route("/companies", get(companies::list).post(companies::create))
        .route(
            "/companies/{id}",
            get(companies::get_one)
                .put(companies::update)
                .delete(companies::delete),
        )
        .route("/signals", get(signals::list))
        .route("/activity", get(activity::list))
        .route("/notes", get(notes::list).post(notes::create))
        .route("/notes/{id}", axum::routing::delete(notes::delete))
        .route("/campaigns", get(campaigns::list))
        .route(
            "/campaigns/{id}",
            get(campaigns::get_one).patch(campaigns::update),
        )
        .route(
            "/campaigns/{id}/trigger",
            axum::routing::post(campaigns::trigger),
        )
        .route("/campaigns/{id}/status", get(campaigns::status))
        .route("/credits", get(credits::get))
        .route("/jobs/{id}", get(jobs::get_one))
        .route("/settings", get(settings::get).patch(settings::update))
        .route(
            "/webhooks",
            get(webhooks::list)
                .post(webhooks::create)
                .delete(webhooks::delete),
        )
}

/// Record ids are UUIDs; anything else cannot exist, so answer 404 without a query.
pub fn record_id(id: &str, what: &str) -> ApiResult<String> {
    if crate::ids::is_uuid(id) {
        Ok(id.to_ascii_lowercase())
    } else {
        Err(ApiError::not_found(what))
    }
}
