//! `/notes`: read contact notes and create one from a debrief, idempotently by
//! `idempotency_key` (kept in the database, so a retry after a restart is still recognised),
//! and delete one (an extension to the reference, used to undo a note made through a gateway).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Value};

use crate::http::schemas::{Envelope, NoteInput, PageEnvelope};

use super::{Deleted, FEED_PAGE_CAP};
use crate::app::AppState;
use crate::auth::Principal;
use crate::domain::Scope;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::http::envelope::{Created, Data, Paged};
use crate::http::extract::{ApiJson, QueryParams};
use crate::input::Fields;
use crate::store::interactions::{self, ActivityFilter, NewInteraction, Note};
use crate::store::{contacts, Page};
use crate::webhooks::{self, EventType};

/// Longest note accepted (DESIGN §5).
pub const MAX_NOTE_CHARS: usize = 10_000;

/// Notes on contacts, newest first.
#[utoipa::path(get, path = "/notes", tag = "feeds", operation_id = "listNotes",
    params(
        ("contact_id" = Option<String>, Query, description = "Only this contact's notes"),
        ("limit" = Option<u32>, Query, minimum = 1, description = "Page size (default 50, larger values are clamped to 100)"),
        ("offset" = Option<u64>, Query, minimum = 0, description = "Records to skip"),
    ),
    responses((status = 200, description = "A page of notes", body = PageEnvelope<Note>)))]
pub async fn list(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    q: QueryParams,
) -> ApiResult<Paged<Note>> {
    p.require_any(&[Scope::Contacts, Scope::Native])?;
    let page = q.page(FEED_PAGE_CAP)?;
    let filter = ActivityFilter {
        contact_id: q.string("contact_id"),
        channel: Some("note".into()),
        ..Default::default()
    };
    let org = p.org_id.clone();
    let page = app
        .store
        .read(move |c| interactions::list(c, &org, &filter, page))
        .await?;
    Ok(Paged(Page {
        items: page.items.into_iter().map(Note::from).collect(),
        total: page.total,
        limit: page.limit,
        offset: page.offset,
    }))
}

/// Add a note to a contact, idempotently by `idempotency_key`.
#[utoipa::path(post, path = "/notes", tag = "feeds", operation_id = "createNote",
    request_body = NoteInput,
    responses(
        (status = 201, description = "Created", body = Envelope<Note>),
        (status = 200, description = "A replay of an earlier request with the same `idempotency_key`", body = Envelope<Note>,
            headers(("Idempotent-Replayed" = String, description = "`true`"))),
        (status = 404, description = "`RESOURCE_NOT_FOUND`: no such contact"),
    ))]
pub async fn create(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Response> {
    p.require_any(&[Scope::Contacts, Scope::Native])?;
    let mut f = Fields::new("", &body)?;
    let contact_id = f.required_string("contact_id", 64)?;
    let note = f.required_string("note", MAX_NOTE_CHARS)?;
    let key = f
        .string("idempotency_key", 255)?
        .and_then(|p| p.into_option());
    let org = p.org_id.clone();
    let (note, replayed) = app
        .store
        .write_for(&org.clone(), move |tx| {
            if let Some(k) = &key {
                if let Some(existing) = interactions::find_by_idempotency_key(tx, &org, k)? {
                    if existing.channel == "note"
                        && existing.contact_id.as_deref() == Some(contact_id.as_str())
                        && existing.content == note
                    {
                        return Ok((Note::from(existing), true));
                    }
                    return Err(ApiError::new(
                        ErrorCode::IdempotencyKeyReused,
                        "idempotency_key was already used for a different request",
                    )
                    .with_details(format!("idempotency_key: '{k}' belongs to another note")));
                }
            }
            if !crate::ids::is_uuid(&contact_id) || contacts::get(tx, &org, &contact_id)?.is_none()
            {
                return Err(ApiError::not_found("Contact"));
            }
            let mut new = NewInteraction::note(&contact_id, &note, json!({ "source": "api" }));
            new.idempotency_key = key.as_deref();
            let note = Note::from(interactions::insert(tx, &org, &new)?);
            webhooks::emit(tx, &org, EventType::NoteCreated, &note)?;
            Ok((note, false))
        })
        .await?;
    if replayed {
        let mut resp = Data(note).into_response();
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        return Ok(resp);
    }
    Ok(Created(note).into_response())
}

/// `DELETE /notes/{id}`: removes a note. Not in the reference; a pilot-bridge gateway in
/// upstream mode uses it to carry out `undo_last` of a note.
#[utoipa::path(delete, path = "/notes/{id}", tag = "feeds", operation_id = "deleteNote",
    params(("id" = String, Path, format = "uuid", description = "Note id")),
    responses(
        (status = 200, description = "Deleted", body = Envelope<Deleted>),
        (status = 404, description = "`RESOURCE_NOT_FOUND`"),
    ))]
pub async fn delete(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    Path(id): Path<String>,
) -> ApiResult<Data<Deleted>> {
    p.require_any(&[Scope::Contacts, Scope::Native])?;
    let id = super::record_id(&id, "Note")?;
    let org = p.org_id.clone();
    let id2 = id.clone();
    let deleted = app
        .store
        .write_for(&org.clone(), move |tx| {
            interactions::delete_note(tx, &org, &id2)
        })
        .await?;
    if !deleted {
        return Err(ApiError::not_found("Note"));
    }
    Ok(Data(Deleted { deleted: true, id }))
}
