//! `GET /jobs/{id}`: status and result of a research or enrichment job started by the native
//! `start_research` / `enrich_contact` actions (an addition to the reference's REST surface).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Extension;

use super::record_id;
use crate::app::AppState;
use crate::auth::Principal;
use crate::domain::Scope;
use crate::error::{ApiError, ApiResult};
use crate::http::envelope::Data;
use crate::store::native::{self as rows, Job};

/// A research or enrichment job started by a native action.
#[utoipa::path(get, path = "/jobs/{id}", tag = "native", operation_id = "getJob",
    params(("id" = String, Path, format = "uuid", description = "Job id (`ids.job_id` of the native reply)")),
    responses(
        (status = 200, description = "The job", body = crate::http::schemas::Envelope<Job>),
        (status = 404, description = "`RESOURCE_NOT_FOUND`"),
    ))]
pub async fn get_one(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    Path(id): Path<String>,
) -> ApiResult<Data<Job>> {
    p.require_any(&[Scope::Contacts, Scope::Native])?;
    let id = record_id(&id, "Job")?;
    let org = p.org_id.clone();
    let job = app
        .store
        .read(move |c| rows::get_job(c, &org, &id))
        .await?
        .ok_or_else(|| ApiError::not_found("Job"))?;
    Ok(Data(job))
}
