//! `/contacts`: list, create (one or many, with upsert by email), get, update, delete.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Extension;
use serde::Serialize;
use serde_json::Value;

use super::{record_id, Deleted, CRM_PAGE_CAP};
use crate::app::AppState;
use crate::auth::Principal;
use crate::domain::{ContactStatus, Scope};
use crate::error::{ApiError, ApiResult};
use crate::http::envelope::{Created, Data, Paged};
use crate::http::extract::{ApiJson, QueryParams};
use crate::input::Fields;
use crate::store::contacts::{self, ContactFields, ContactFilter};
use crate::webhooks;

/// Most contacts accepted in one create call.
pub const MAX_BATCH: usize = 500;

/// `POST /contacts` answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ContactsCreated {
    pub contacts: Vec<contacts::Contact>,
    pub count: usize,
}

/// List contacts, newest first.
#[utoipa::path(get, path = "/contacts", tag = "contacts", operation_id = "listContacts",
    params(
        ("status" = Option<ContactStatus>, Query, description = "Only contacts with this status"),
        ("folder_id" = Option<String>, Query, description = "Only contacts in this folder"),
        ("search" = Option<String>, Query, description = "Name, email or company contains this text"),
        ("limit" = Option<u32>, Query, minimum = 1, description = "Page size (default 50, larger values are clamped to 200)"),
        ("offset" = Option<u64>, Query, minimum = 0, description = "Records to skip"),
    ),
    responses((status = 200, description = "A page of contacts", body = crate::http::schemas::PageEnvelope<contacts::Contact>)))]
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

/// Create one contact or a batch.
#[utoipa::path(post, path = "/contacts", tag = "contacts", operation_id = "createContacts",
    request_body = crate::http::schemas::ContactsCreate,
    responses(
        (status = 201, description = "Created (or upserted)", body = crate::http::schemas::Envelope<ContactsCreated>),
        (status = 409, description = "`DUPLICATE_RESOURCE`: a contact with this email exists (without `upsert`)"),
    ))]
pub async fn create(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Created<ContactsCreated>> {
    p.require_any(&[Scope::Contacts])?;
    let (items, upsert) = parse_create(&body)?;
    let org = p.org_id.clone();
    let created = app
        .store
        .write_for(&org.clone(), move |tx| {
            let rows = contacts::upsert_many(tx, &org, &items, upsert)?;
            for (contact, before) in &rows {
                match before {
                    None => webhooks::contact_created(tx, &org, contact)?,
                    Some(before) => webhooks::contact_changed(tx, &org, before, contact)?,
                }
            }
            Ok(rows.into_iter().map(|(c, _)| c).collect::<Vec<_>>())
        })
        .await?;
    let count = created.len();
    Ok(Created(ContactsCreated {
        contacts: created,
        count,
    }))
}

/// One contact.
#[utoipa::path(get, path = "/contacts/{id}", tag = "contacts", operation_id = "getContact",
    params(("id" = String, Path, format = "uuid", description = "Contact id")),
    responses(
        (status = 200, description = "The contact", body = crate::http::schemas::Envelope<contacts::Contact>),
        (status = 404, description = "`RESOURCE_NOT_FOUND`"),
    ))]
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

/// Update a contact: given fields change, a null or empty string clears a field.
#[utoipa::path(put, path = "/contacts/{id}", tag = "contacts", operation_id = "updateContact",
    params(("id" = String, Path, format = "uuid", description = "Contact id")),
    request_body = crate::http::schemas::ContactInput,
    responses(
        (status = 200, description = "The updated contact", body = crate::http::schemas::Envelope<contacts::Contact>),
        (status = 404, description = "`RESOURCE_NOT_FOUND`"),
        (status = 409, description = "`DUPLICATE_RESOURCE`: another contact has this email"),
    ))]
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
        .write_for(&org.clone(), move |tx| {
            let before = contacts::require(tx, &org, &id)?;
            let after = contacts::update(tx, &org, &id, &fields)?;
            webhooks::contact_changed(tx, &org, &before, &after)?;
            Ok(after)
        })
        .await?;
    Ok(Data(c))
}

/// Delete a contact.
#[utoipa::path(delete, path = "/contacts/{id}", tag = "contacts", operation_id = "deleteContact",
    params(("id" = String, Path, format = "uuid", description = "Contact id")),
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
    let id = record_id(&id, "Contact")?;
    let org = p.org_id.clone();
    let id2 = id.clone();
    let deleted = app
        .store
        .write_for(&org.clone(), move |tx| contacts::delete(tx, &org, &id2))
        .await?;
    if !deleted {
        return Err(ApiError::not_found("Contact"));
    }
    Ok(Data(Deleted { deleted: true, id }))
}
