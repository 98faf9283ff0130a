//! `/companies`: list, create/upsert (unknown fields into `context`), get, update, delete.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Extension;
use serde_json::{json, Value};

use super::{record_id, CRM_PAGE_CAP};
use crate::app::AppState;
use crate::auth::Principal;
use crate::domain::Scope;
use crate::error::{ApiError, ApiResult};
use crate::http::envelope::{Created, Data, Paged};
use crate::http::extract::{ApiJson, QueryParams};
use crate::input::Fields;
use crate::store::companies::{self, Company, CompanyFields, CompanyFilter};

pub const MAX_BATCH: usize = 500;

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

pub async fn create(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Created<Value>> {
    p.require_any(&[Scope::Contacts])?;
    let (items, upsert) = parse_create(&body)?;
    let org = p.org_id.clone();
    let created = app
        .store
        .write(move |tx| companies::create_many(tx, &org, &items, upsert))
        .await?;
    let count = created.len();
    Ok(Created(json!({ "companies": created, "count": count })))
}

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
            .write(move |tx| companies::update(tx, &org, &id, &fields))
            .await?,
    ))
}

pub async fn delete(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    Path(id): Path<String>,
) -> ApiResult<Data<Value>> {
    p.require_any(&[Scope::Contacts])?;
    let id = record_id(&id, "Company")?;
    let org = p.org_id.clone();
    let id2 = id.clone();
    if !app
        .store
        .write(move |tx| companies::delete(tx, &org, &id2))
        .await?
    {
        return Err(ApiError::not_found("Company"));
    }
    Ok(Data(json!({ "deleted": true, "id": id })))
}
