//! `/companies`: list, create/upsert (unknown fields into `context`), get, update, delete.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Extension;
use serde::Serialize;
use serde_json::Value;

use super::{record_id, Deleted, CRM_PAGE_CAP};
use crate::app::AppState;
use crate::auth::Principal;
use crate::domain::Scope;
use crate::error::{ApiError, ApiResult};
use crate::http::envelope::{Created, Data, Paged};
use crate::http::extract::{ApiJson, QueryParams};
use crate::input::Fields;
use crate::store::companies::{self, Company, CompanyFields, CompanyFilter};

pub const MAX_BATCH: usize = 500;

/// `POST /companies` answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CompaniesCreated {
    pub companies: Vec<Company>,
    pub count: usize,
}

/// List companies.
#[utoipa::path(get, path = "/companies", tag = "companies", operation_id = "listCompanies",
    params(
        ("search" = Option<String>, Query, description = "Name or domain contains this text"),
        ("domain" = Option<String>, Query, description = "Only the company with this domain"),
        ("limit" = Option<u32>, Query, minimum = 1, description = "Page size (default 50, larger values are clamped to 200)"),
        ("offset" = Option<u64>, Query, minimum = 0, description = "Records to skip"),
    ),
    responses((status = 200, description = "A page of companies", body = crate::http::schemas::PageEnvelope<Company>)))]
pub async fn list(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    q: QueryParams,
) -> ApiResult<Paged<Company>> {
    p.require_any(&[Scope::Contacts])?;
    let page = q.page(CRM_PAGE_CAP)?;
    let filter = CompanyFilter {
        search: q.string("search"),
        domain: q.string("domain"),
    };
    let org = p.org_id.clone();
    Ok(Paged(
        app.store
            .read(move |c| companies::list(c, &org, &filter, page))
            .await?,
    ))
}

fn parse_create(body: &Value) -> ApiResult<(Vec<CompanyFields>, bool)> {
    let mut top = Fields::new("", body)?;
    let upsert = top.bool("upsert")?.unwrap_or(false);
    if let Some(items) = top.raw("companies") {
        let Value::Array(items) = items else {
            return Err(ApiError::validation("companies", "expected an array"));
        };
        if items.is_empty() || items.len() > MAX_BATCH {
            return Err(ApiError::validation(
                "companies",
                format!("must hold 1 to {MAX_BATCH} companies"),
            ));
        }
        let parsed = items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let mut f = Fields::new(format!("companies[{i}]"), v)?;
                CompanyFields::from_json(&mut f)
            })
            .collect::<ApiResult<Vec<_>>>()?;
        return Ok((parsed, upsert));
    }
    let mut f = Fields::new("", body)?;
    Ok((vec![CompanyFields::from_json(&mut f)?], upsert))
}

/// Create one company or a batch; fields not listed go into `context`.
#[utoipa::path(post, path = "/companies", tag = "companies", operation_id = "createCompanies",
    request_body = crate::http::schemas::CompaniesCreate,
    responses(
        (status = 201, description = "Created (or upserted)", body = crate::http::schemas::Envelope<CompaniesCreated>),
        (status = 409, description = "`DUPLICATE_RESOURCE`: a company with this domain exists (without `upsert`)"),
    ))]
pub async fn create(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Created<CompaniesCreated>> {
    p.require_any(&[Scope::Contacts])?;
    let (items, upsert) = parse_create(&body)?;
    let org = p.org_id.clone();
    let created = app
        .store
        .write_for(&org.clone(), move |tx| {
            companies::create_many(tx, &org, &items, upsert)
        })
        .await?;
    let count = created.len();
    Ok(Created(CompaniesCreated {
        companies: created,
        count,
    }))
}

/// One company.
#[utoipa::path(get, path = "/companies/{id}", tag = "companies", operation_id = "getCompany",
    params(("id" = String, Path, format = "uuid", description = "Company id")),
    responses(
        (status = 200, description = "The company", body = crate::http::schemas::Envelope<Company>),
        (status = 404, description = "`RESOURCE_NOT_FOUND`"),
    ))]
pub async fn get_one(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    Path(id): Path<String>,
) -> ApiResult<Data<Company>> {
    p.require_any(&[Scope::Contacts])?;
    let id = record_id(&id, "Company")?;
    let org = p.org_id.clone();
    Ok(Data(
        app.store
            .read(move |c| companies::require(c, &org, &id))
            .await?,
    ))
}

/// Update a company; fields not listed are merged into `context`.
#[utoipa::path(put, path = "/companies/{id}", tag = "companies", operation_id = "updateCompany",
    params(("id" = String, Path, format = "uuid", description = "Company id")),
    request_body = crate::http::schemas::CompanyUpdate,
    responses(
        (status = 200, description = "The updated company", body = crate::http::schemas::Envelope<Company>),
        (status = 404, description = "`RESOURCE_NOT_FOUND`"),
        (status = 409, description = "`DUPLICATE_RESOURCE`: another company has this domain"),
        (status = 422, description = "`VALIDATION_ERROR`: an invalid field, or the change would leave the company with neither name nor domain"),
    ))]
pub async fn update(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Data<Company>> {
    p.require_any(&[Scope::Contacts])?;
    let id = record_id(&id, "Company")?;
    let mut f = Fields::new("", &body)?;
    let fields = CompanyFields::from_json(&mut f)?;
    let org = p.org_id.clone();
    Ok(Data(
        app.store
            .write_for(&org.clone(), move |tx| {
                companies::update(tx, &org, &id, &fields)
            })
            .await?,
    ))
}

/// Delete a company.
#[utoipa::path(delete, path = "/companies/{id}", tag = "companies", operation_id = "deleteCompany",
    params(("id" = String, Path, format = "uuid", description = "Company id")),
    responses(
        (status = 200, description = "Deleted", body = crate::http::schemas::Envelope<Deleted>),
        (status = 404, description = "`RESOURCE_NOT_FOUND`"),
    ))]
pub async fn delete(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    Path(id): Path<String>,
) -> ApiResult<Data<Deleted>> {
    p.require_any(&[Scope::Contacts])?;
    let id = record_id(&id, "Company")?;
    let org = p.org_id.clone();
    let id2 = id.clone();
    if !app
        .store
        .write_for(&org.clone(), move |tx| companies::delete(tx, &org, &id2))
        .await?
    {
        return Err(ApiError::not_found("Company"));
    }
    Ok(Data(Deleted { deleted: true, id }))
}
