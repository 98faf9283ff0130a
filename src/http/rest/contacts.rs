//! `/contacts`: list, create (one or many, with upsert by email), get, update, delete.

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
use crate::store::contacts::{self, ContactFields, ContactFilter};

/// Most contacts accepted in one create call.
pub const MAX_BATCH: usize = 500;

pub async fn list(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    q: QueryParams,
) -> ApiResult<Paged<contacts::Contact>> {
    p.require_any(&[Scope::Contacts])?;
    let page = q.page(CRM_PAGE_CAP)?;
    let filter = ContactFilter {
        status: q.contact_status("status")?,
        folder_id: q.string("folder_id"),
        search: q.string("search"),
    };
    let org = p.org_id.clone();
    let page = app
        .store
        .read(move |c| contacts::list(c, &org, &filter, page))
        .await?;
    Ok(Paged(page))
}

/// Reads `{ ...contact, upsert? }` or `{ contacts: [...], upsert? }`.
pub fn parse_create(body: &Value) -> ApiResult<(Vec<ContactFields>, bool)> {
    let mut top = Fields::new("", body)?;
    let upsert = top.bool("upsert")?.unwrap_or(false);
    if let Some(items) = top.raw("contacts") {
        let Value::Array(items) = items else {
            return Err(ApiError::validation("contacts", "expected an array"));
        };
        if items.is_empty() {
            return Err(ApiError::validation("contacts", "must not be empty"));
        }
        if items.len() > MAX_BATCH {
            return Err(ApiError::validation(
                "contacts",
                format!("at most {MAX_BATCH} contacts per request"),
            ));
        }
        let parsed = items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let mut f = Fields::new(format!("contacts[{i}]"), v)?;
                let c = ContactFields::from_json(&mut f)?;
                if c.email.is_none() {
                    return Err(ApiError::validation(
                        &format!("contacts[{i}].email"),
                        "missing",
                    ));
                }
                Ok(c)
            })
            .collect::<ApiResult<Vec<_>>>()?;
        return Ok((parsed, upsert));
    }
    let mut f = Fields::new("", body)?;
    let _ = f.bool("upsert")?;
    let c = ContactFields::from_json(&mut f)?;
    if !matches!(c.email, Some(crate::input::Patch::Set(_))) {
        return Err(ApiError::validation("email", "missing"));
    }
    Ok((vec![c], upsert))
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
        .write(move |tx| contacts::create_many(tx, &org, &items, upsert))
        .await?;
    let count = created.len();
    Ok(Created(json!({ "contacts": created, "count": count })))
}

pub async fn get_one(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    Path(id): Path<String>,
) -> ApiResult<Data<contacts::Contact>> {
    p.require_any(&[Scope::Contacts])?;
    let id = record_id(&id, "Contact")?;
    let org = p.org_id.clone();
    let c = app
        .store
        .read(move |c| contacts::require(c, &org, &id))
        .await?;
    Ok(Data(c))
}

pub async fn update(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Data<contacts::Contact>> {
    p.require_any(&[Scope::Contacts])?;
    let id = record_id(&id, "Contact")?;
    let mut f = Fields::new("", &body)?;
    let fields = ContactFields::from_json(&mut f)?;
    let org = p.org_id.clone();
    let c = app
        .store
        .write(move |tx| contacts::update(tx, &org, &id, &fields))
        .await?;
    Ok(Data(c))
}

pub async fn delete(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    Path(id): Path<String>,
) -> ApiResult<Data<Value>> {
    p.require_any(&[Scope::Contacts])?;
    let id = record_id(&id, "Contact")?;
    let org = p.org_id.clone();
    let id2 = id.clone();
    let deleted = app
        .store
        .write(move |tx| contacts::delete(tx, &org, &id2))
        .await?;
    if !deleted {
        return Err(ApiError::not_found("Contact"));
    }
    Ok(Data(json!({ "deleted": true, "id": id })))
}
