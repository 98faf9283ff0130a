//! `/campaigns`: list, get with `audience_stats`, PATCH, trigger (add a contact, creating it by
//! email if needed) and status with the audience breakdown.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Extension;
use serde::Serialize;
use serde_json::Value;

use super::{record_id, CRM_PAGE_CAP};
use crate::app::AppState;
use crate::auth::Principal;
use crate::domain::{CampaignStatus, Scope};
use crate::error::{ApiError, ApiResult};
use crate::http::envelope::{Data, Paged};
use crate::http::extract::{ApiJson, QueryParams};
use crate::input::{Fields, Patch};
use crate::store::campaigns::{self, AudienceStats, Campaign, CampaignChanges, CampaignFilter};
use crate::store::contacts::{self, ContactFields};
use crate::webhooks;

/// A campaign with its audience counts.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CampaignWithStats {
    #[serde(flatten)]
    pub campaign: Campaign,
    pub audience_stats: AudienceStats,
}

/// List campaigns.
#[utoipa::path(get, path = "/campaigns", tag = "campaigns", operation_id = "listCampaigns",
    params(
        ("status" = Option<CampaignStatus>, Query, description = "Only campaigns with this status"),
        ("type" = Option<String>, Query, description = "Only campaigns of this type (email, linkedin, multichannel, call)"),
        ("limit" = Option<u32>, Query, minimum = 1, description = "Page size (default 50, larger values are clamped to 200)"),
        ("offset" = Option<u64>, Query, minimum = 0, description = "Records to skip"),
    ),
    responses((status = 200, description = "A page of campaigns", body = crate::http::schemas::PageEnvelope<Campaign>)))]
pub async fn list(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    q: QueryParams,
) -> ApiResult<Paged<Campaign>> {
    p.require_any(&[Scope::Campaigns])?;
    let page = q.page(CRM_PAGE_CAP)?;
    let status = q
        .str("status")
        .map(|s| {
            s.parse::<CampaignStatus>()
                .map_err(|e| ApiError::validation("status", e))
        })
        .transpose()?;
    let filter = CampaignFilter {
        status,
        kind: q.string("type"),
    };
    let org = p.org_id.clone();
    Ok(Paged(
        app.store
            .read(move |c| campaigns::list(c, &org, &filter, page))
            .await?,
    ))
}

/// One campaign with `audience_stats`.
#[utoipa::path(get, path = "/campaigns/{id}", tag = "campaigns", operation_id = "getCampaign",
    params(("id" = String, Path, format = "uuid", description = "Campaign id")),
    responses(
        (status = 200, description = "The campaign", body = crate::http::schemas::Envelope<CampaignWithStats>),
        (status = 404, description = "`RESOURCE_NOT_FOUND`"),
    ))]
pub async fn get_one(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    Path(id): Path<String>,
) -> ApiResult<Data<CampaignWithStats>> {
    p.require_any(&[Scope::Campaigns])?;
    let id = record_id(&id, "Campaign")?;
    let org = p.org_id.clone();
    let out = app
        .store
        .read(move |c| {
            let campaign = campaigns::require(c, &org, &id)?;
            let mut audience_stats = campaigns::audience_stats(c, &id)?;
            audience_stats.failed = None;
            Ok(CampaignWithStats {
                campaign,
                audience_stats,
            })
        })
        .await?;
    Ok(Data(out))
}

/// Change a campaign's name, status, type, mode, config or steps.
#[utoipa::path(patch, path = "/campaigns/{id}", tag = "campaigns", operation_id = "updateCampaign",
    params(("id" = String, Path, format = "uuid", description = "Campaign id")),
    request_body = crate::http::schemas::CampaignPatch,
    responses(
        (status = 200, description = "The updated campaign", body = crate::http::schemas::Envelope<Campaign>),
        (status = 404, description = "`RESOURCE_NOT_FOUND`"),
    ))]
pub async fn update(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Data<Campaign>> {
    p.require_any(&[Scope::Campaigns])?;
    let id = record_id(&id, "Campaign")?;
    let mut f = Fields::new("", &body)?;
    let changes = CampaignChanges::from_json(&mut f)?;
    let org = p.org_id.clone();
    Ok(Data(
        app.store
            .write_for(&org.clone(), move |tx| {
                let before = campaigns::require(tx, &org, &id)?;
                let after = campaigns::update(tx, &org, &id, &changes)?;
                webhooks::campaign_status_changed(tx, &org, before.status, &after)?;
                Ok(after)
            })
            .await?,
    ))
}

/// `POST /campaigns/{id}/trigger` answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Triggered {
    /// Always true.
    pub triggered: bool,
    pub campaign_id: String,
    pub contact_id: String,
    /// True when the contact was already in the audience (nothing changed).
    pub already_in_campaign: bool,
}

/// `GET /campaigns/{id}/status` answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CampaignReport {
    pub campaign_id: String,
    pub name: String,
    pub status: CampaignStatus,
    pub audience: AudienceBreakdown,
}

/// Audience members by state.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AudienceBreakdown {
    pub total: u64,
    pub active: u64,
    pub completed: u64,
    pub paused: u64,
    pub bounced: u64,
    pub failed: u64,
}

/// `{ contact_id }` or `{ email, first_name?, last_name?, company? }`.
enum TriggerTarget {
    Existing(String),
    ByEmail(Box<ContactFields>),
}

fn parse_trigger(body: &Value) -> ApiResult<TriggerTarget> {
    let mut f = Fields::new("", body)?;
    if let Some(Patch::Set(id)) = f.string("contact_id", 64)? {
        return Ok(TriggerTarget::Existing(id));
    }
    let mut f = Fields::new("", body)?;
    let _ = f.string("contact_id", 64)?;
    let fields = ContactFields::from_json(&mut f)?;
    match fields.email {
        Some(Patch::Set(_)) => Ok(TriggerTarget::ByEmail(Box::new(fields))),
        _ => Err(ApiError::validation(
            "contact_id",
            "send contact_id, or email to create the contact",
        )),
    }
}

/// Add a contact to the campaign's audience (creating the contact by email when new).
#[utoipa::path(post, path = "/campaigns/{id}/trigger", tag = "campaigns", operation_id = "triggerCampaign",
    params(("id" = String, Path, format = "uuid", description = "Campaign id")),
    request_body = crate::http::schemas::TriggerInput,
    responses(
        (status = 200, description = "The contact is in the audience", body = crate::http::schemas::Envelope<Triggered>),
        (status = 400, description = "`CAMPAIGN_NOT_ACTIVE`: the campaign is draft, paused or completed"),
        (status = 404, description = "`RESOURCE_NOT_FOUND`: no such campaign or contact"),
        (status = 409, description = "`DUPLICATE_RESOURCE`"),
    ))]
pub async fn trigger(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Data<Triggered>> {
    p.require_any(&[Scope::Campaigns])?;
    let id = record_id(&id, "Campaign")?;
    let target = parse_trigger(&body)?;
    let org = p.org_id.clone();
    let (campaign_id, contact_id, already) = app
        .store
        .write_for(&org.clone(), move |tx| {
            let campaign = campaigns::require(tx, &org, &id)?;
            campaigns::ensure_active(&campaign)?;
            let contact = match target {
                TriggerTarget::Existing(cid) => {
                    let cid = record_id(&cid, "Contact")?;
                    contacts::require(tx, &org, &cid)?
                }
                TriggerTarget::ByEmail(fields) => {
                    // Creates the contact if new; an existing one keeps its data.
                    let email = match &fields.email {
                        Some(Patch::Set(e)) => e.clone(),
                        _ => return Err(ApiError::validation("email", "missing")),
                    };
                    match contacts::find_by_email(tx, &org, &email)? {
                        Some(c) => c,
                        None => {
                            let created = contacts::insert(tx, &org, &fields)?;
                            webhooks::contact_created(tx, &org, &created)?;
                            created
                        }
                    }
                }
            };
            let (_, added) = campaigns::add_to_audience(tx, &org, &campaign, &contact.id)?;
            Ok((
                campaign.id,
                contact.id,
                added == campaigns::Added::AlreadyIn,
            ))
        })
        .await?;
    Ok(Data(Triggered {
        triggered: true,
        campaign_id,
        contact_id,
        already_in_campaign: already,
    }))
}

/// The campaign's status and audience breakdown.
#[utoipa::path(get, path = "/campaigns/{id}/status", tag = "campaigns", operation_id = "getCampaignStatus",
    params(("id" = String, Path, format = "uuid", description = "Campaign id")),
    responses(
        (status = 200, description = "Status and audience", body = crate::http::schemas::Envelope<CampaignReport>),
        (status = 404, description = "`RESOURCE_NOT_FOUND`"),
    ))]
pub async fn status(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    Path(id): Path<String>,
) -> ApiResult<Data<CampaignReport>> {
    p.require_any(&[Scope::Campaigns])?;
    let id = record_id(&id, "Campaign")?;
    let org = p.org_id.clone();
    let (c, stats) = app
        .store
        .read(move |conn| {
            let c = campaigns::require(conn, &org, &id)?;
            let stats = campaigns::audience_stats(conn, &id)?;
            Ok((c, stats))
        })
        .await?;
    Ok(Data(CampaignReport {
        campaign_id: c.id,
        name: c.name,
        status: c.status,
        audience: AudienceBreakdown {
            total: stats.total,
            active: stats.active,
            completed: stats.completed,
            paused: stats.paused,
            bounced: stats.bounced,
            failed: stats.failed.unwrap_or(0),
        },
    }))
}
