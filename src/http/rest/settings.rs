//! `GET/PATCH /settings`: the org's pilot mode (off | review | auto), as in the dashboard.

use std::sync::Arc;

use axum::extract::State;
use axum::Extension;
use serde::Serialize;
use serde_json::Value;

use crate::app::AppState;
use crate::auth::Principal;
use crate::domain::{PilotMode, Scope};
use crate::error::{ApiError, ApiResult};
use crate::http::envelope::Data;
use crate::http::extract::ApiJson;
use crate::input::Fields;
use crate::store::orgs;

/// The org's settings.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Settings {
    pub pilot_mode: PilotMode,
}

/// The org's pilot mode.
#[utoipa::path(get, path = "/settings", tag = "account", operation_id = "getSettings",
    responses((status = 200, description = "The settings", body = crate::http::schemas::Envelope<Settings>)))]
pub async fn get(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
) -> ApiResult<Data<Settings>> {
    p.require_any(&[Scope::Settings])?;
    let org = p.org_id.clone();
    let mode = app.store.read(move |c| orgs::pilot_mode(c, &org)).await?;
    Ok(Data(Settings { pilot_mode: mode }))
}

/// Change the pilot mode.
#[utoipa::path(patch, path = "/settings", tag = "account", operation_id = "updateSettings",
    request_body = crate::http::schemas::SettingsPatch,
    responses((status = 200, description = "The new settings", body = crate::http::schemas::Envelope<Settings>)))]
pub async fn update(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Data<Settings>> {
    p.require_any(&[Scope::Settings])?;
    let mut f = Fields::new("", &body)?;
    let mode: PilotMode = f
        .parsed("pilot_mode")?
        .ok_or_else(|| ApiError::validation("pilot_mode", "missing"))?;
    if let Some(k) = f.rest().keys().next() {
        return Err(ApiError::validation(
            k,
            "unknown setting; only pilot_mode can be changed",
        ));
    }
    let org = p.org_id.clone();
    app.store
        .write(move |tx| orgs::set_pilot_mode(tx, &org, mode))
        .await?;
    Ok(Data(Settings { pilot_mode: mode }))
}
