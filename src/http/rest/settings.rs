//! `GET/PATCH /settings`: the org's pilot mode (off | review | auto), as in the dashboard, and
//! its time zone (an IANA name), in which the bridge speaks times.

use std::sync::Arc;

use axum::extract::State;
use axum::Extension;
use serde::Serialize;
use serde_json::Value;

use crate::app::AppState;
use crate::auth::Principal;
use crate::domain::{PilotMode, Scope, TimeZone};
use crate::error::{ApiError, ApiResult};
use crate::http::envelope::Data;
use crate::http::extract::ApiJson;
use crate::input::Fields;
use crate::store::orgs;

/// The org's settings.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Settings {
    pub pilot_mode: PilotMode,
    /// IANA time zone in which times are spoken (default `UTC`).
    pub timezone: TimeZone,
}

fn read(c: &rusqlite::Connection, org: &str) -> ApiResult<Settings> {
    Ok(Settings {
        pilot_mode: orgs::pilot_mode(c, org)?,
        timezone: orgs::timezone(c, org)?,
    })
}

/// The org's pilot mode and time zone.
#[utoipa::path(get, path = "/settings", tag = "account", operation_id = "getSettings",
    responses((status = 200, description = "The settings", body = crate::http::schemas::Envelope<Settings>)))]
pub async fn get(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
) -> ApiResult<Data<Settings>> {
    p.require_any(&[Scope::Settings])?;
    let org = p.org_id.clone();
    Ok(Data(app.store.read(move |c| read(c, &org)).await?))
}

/// Change the pilot mode, the time zone, or both.
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
    let mode: Option<PilotMode> = f.parsed("pilot_mode")?;
    let zone: Option<TimeZone> = f.parsed("timezone")?;
    if let Some(k) = f.rest().keys().next() {
        return Err(ApiError::validation(
            k,
            "unknown setting; pilot_mode and timezone can be changed",
        ));
    }
    if mode.is_none() && zone.is_none() {
        return Err(ApiError::validation(
            "body",
            "nothing to change: send pilot_mode, timezone or both",
        ));
    }
    let org = p.org_id.clone();
    let settings = app
        .store
        .write_for(&org.clone(), move |tx| {
            if let Some(mode) = mode {
                orgs::set_pilot_mode(tx, &org, mode)?;
            }
            if let Some(zone) = zone {
                orgs::set_timezone(tx, &org, zone)?;
            }
            read(tx, &org)
        })
        .await?;
    Ok(Data(settings))
}
