//! `/campaigns`: list, get with `audience_stats`, PATCH, trigger (add a contact, creating it by
//! email if needed) and status with the audience breakdown.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Extension;
use serde::Serialize;
use serde_json::{json, Value};

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

#[derive(Serialize)]
pub struct CampaignWithStats {
    #[serde(flatten)]
    pub campaign: Campaign,
    pub audience_stats: AudienceStats,
}

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
            .write(move |tx| campaigns::update(tx, &org, &id, &changes))
            .await?,
    ))
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

pub async fn trigger(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Data<Value>> {
    p.require_any(&[Scope::Campaigns])?;
    let id = record_id(&id, "Campaign")?;
    let target = parse_trigger(&body)?;
    let org = p.org_id.clone();
    let (campaign_id, contact_id, already) = app
        .store
        .write(move |tx| {
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
                        None => contacts::insert(tx, &org, &fields)?,
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
    Ok(Data(json!({
        "triggered": true,
        "campaign_id": campaign_id,
        "contact_id": contact_id,
        "already_in_campaign": already,
    })))
}

pub async fn status(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    Path(id): Path<String>,
) -> ApiResult<Data<Value>> {
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
    Ok(Data(json!({
        "campaign_id": c.id,
        "name": c.name,
        "status": c.status,
        "audience": {
            "total": stats.total,
            "active": stats.active,
            "completed": stats.completed,
            "paused": stats.paused,
            "bounced": stats.bounced,
            "failed": stats.failed.unwrap_or(0),
        },
    })))
}
