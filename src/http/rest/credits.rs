//! `GET /credits`: balance, monthly allowance, plan and reset date.

use std::sync::Arc;

use axum::extract::State;
use axum::Extension;
use serde::Serialize;

use crate::app::AppState;
use crate::auth::Principal;
use crate::domain::{Plan, Scope};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::http::envelope::Data;
use crate::store::orgs;

/// `GET /credits` answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Credits {
    pub credits_remaining: i64,
    pub credits_monthly: i64,
    pub plan_tier: Plan,
    /// When the balance resets (RFC 3339).
    pub credits_reset_at: String,
}

/// Credit balance, monthly allowance, plan and reset date.
#[utoipa::path(get, path = "/credits", tag = "account", operation_id = "getCredits",
    responses(
        (status = 200, description = "The balance", body = crate::http::schemas::Envelope<Credits>),
        (status = 404, description = "`ORG_NOT_FOUND`"),
    ))]
pub async fn get(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
) -> ApiResult<Data<Credits>> {
    p.require_any(&[Scope::Credits])?;
    let org_id = p.org_id.clone();
    let org = app
        .store
        .read(move |c| orgs::get(c, &org_id))
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::OrgNotFound, "Organization deleted or invalid"))?;
    Ok(Data(Credits {
        credits_remaining: org.credits_remaining,
        credits_monthly: org.credits_monthly,
        plan_tier: org.plan,
        credits_reset_at: org.credits_reset_at,
    }))
}
