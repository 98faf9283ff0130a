//! `GET /credits`: balance, monthly allowance, plan and reset date.

use std::sync::Arc;

use axum::extract::State;
use axum::Extension;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::auth::Principal;
use crate::domain::Scope;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::http::envelope::Data;
use crate::store::orgs;

pub async fn get(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
) -> ApiResult<Data<Value>> {
    p.require_any(&[Scope::Credits])?;
    let org_id = p.org_id.clone();
    let org = app
        .store
        .read(move |c| orgs::get(c, &org_id))
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::OrgNotFound, "Organization deleted or invalid"))?;
    Ok(Data(json!({
        "credits_remaining": org.credits_remaining,
        "credits_monthly": org.credits_monthly,
        "plan_tier": org.plan,
        "credits_reset_at": org.credits_reset_at,
    })))
}
