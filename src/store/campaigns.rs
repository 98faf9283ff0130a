//! Campaigns and their audiences (which contacts are in which campaign, in what state).

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::sql::{json_col, Filter};
use super::{Page, PageRequest};
use crate::domain::{AudienceStatus, CampaignStatus};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::ids::{new_id, now_rfc3339};
use crate::input::{Fields, Patch};
use crate::text::normalize;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Campaign {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub status: CampaignStatus,
    #[serde(rename = "type")]
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub campaign_mode: String,
    #[serde(default)]
    pub config: Value,
    #[serde(default)]
    pub steps: Value,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub updated_at: String,
}

/// Audience counts by state. `failed` is only shown by `GET /campaigns/:id/status`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct AudienceStats {
    pub total: u64,
    pub active: u64,
    pub completed: u64,
    pub paused: u64,
    pub bounced: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AudienceMember {
    pub id: String,
    pub campaign_id: String,
    pub contact_id: String,
    pub status: AudienceStatus,
    pub added_at: String,
}

/// Campaign types we accept; free text would make `?type=` filters unreliable.
pub const CAMPAIGN_TYPES: &[&str] = &["email", "linkedin", "multichannel", "call"];

#[derive(Debug, Clone, Default)]
pub struct CampaignChanges {
    pub name: Option<String>,
    pub status: Option<CampaignStatus>,
    pub kind: Option<String>,
    pub campaign_mode: Option<String>,
    pub config: Option<Value>,
    pub steps: Option<Value>,
}

impl CampaignChanges {
    pub fn from_json(f: &mut Fields<'_>) -> ApiResult<Self> {
        let name = match f.string("name", 200)? {
            None => None,
            Some(Patch::Set(n)) => Some(n),
            Some(Patch::Clear) => return Err(ApiError::validation("name", "must not be empty")),
        };
        let status = f.parsed::<CampaignStatus>("status")?;
        let kind = match f.string("type", 32)? {
            None => None,
            Some(Patch::Set(t)) if CAMPAIGN_TYPES.contains(&t.as_str()) => Some(t),
            Some(_) => {
                return Err(ApiError::validation(
                    "type",
                    format!("must be one of: {}", CAMPAIGN_TYPES.join(", ")),
                ))
            }
        };
        let campaign_mode = match f.string("campaign_mode", 64)? {
            None => None,
            Some(Patch::Set(m)) => Some(m),
            Some(Patch::Clear) => {
                return Err(ApiError::validation("campaign_mode", "must not be empty"))
            }
        };
        let config = match f.raw("config") {
            None => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(_) => return Err(ApiError::validation("config", "expected an object")),
        };
        let steps = match f.raw("steps") {
            None => None,
            Some(v @ Value::Array(_)) => Some(v.clone()),
            Some(_) => return Err(ApiError::validation("steps", "expected an array")),
        };
        let unknown: Vec<String> = f.rest().keys().cloned().collect();
        if let Some(k) = unknown.first() {
            return Err(ApiError::validation(
                k,
                "unknown field; expected name, status, type, config, steps or campaign_mode",
            ));
        }
        Ok(CampaignChanges {
            name,
            status,
            kind,
            campaign_mode,
            config,
            steps,
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct CampaignFilter {
    pub status: Option<CampaignStatus>,
    pub kind: Option<String>,
}

const COLUMNS: &str =
    "id, name, status, type, campaign_mode, config, steps, created_at, updated_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Campaign> {
    Ok(Campaign {
        id: r.get(0)?,
        name: r.get(1)?,
        status: r.get(2)?,
        kind: r.get(3)?,
        campaign_mode: r.get(4)?,
        config: json_col(r.get(5)?, Value::Object(Map::new())),
        steps: json_col(r.get(6)?, Value::Array(vec![])),
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
    })
}

pub fn get(conn: &Connection, org: &str, id: &str) -> ApiResult<Option<Campaign>> {
    let sql = format!("SELECT {COLUMNS} FROM campaigns WHERE id = ?1 AND org_id = ?2");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([id, org], from_row)
        .optional()?)
}

pub fn require(conn: &Connection, org: &str, id: &str) -> ApiResult<Campaign> {
    get(conn, org, id)?.ok_or_else(|| ApiError::not_found("Campaign"))
}

/// Campaigns whose normalised name equals `name_norm`, or starts with it when `prefix`.
pub fn find_by_name(
    conn: &Connection,
    org: &str,
    name_norm: &str,
    prefix: bool,
    cap: usize,
) -> ApiResult<Vec<Campaign>> {
    let mut stmt;
    let rows = if prefix {
        let mut upper = name_norm.to_string();
        upper.push(char::MAX);
        stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM campaigns WHERE org_id = ?1 AND name_norm >= ?2 AND name_norm < ?3 \
             ORDER BY name_norm LIMIT ?4"
        ))?;
        stmt.query_map(params![org, name_norm, upper, cap as i64], from_row)?
    } else {
        stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM campaigns WHERE org_id = ?1 AND name_norm = ?2 ORDER BY id LIMIT ?3"
        ))?;
        stmt.query_map(params![org, name_norm, cap as i64], from_row)?
    };
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// All campaign names of an org with their ids, for fuzzy matching (orgs have few campaigns).
pub fn all_names(conn: &Connection, org: &str, cap: usize) -> ApiResult<Vec<(String, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, name_norm FROM campaigns WHERE org_id = ?1 ORDER BY created_at DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![org, cap as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn list(
    conn: &Connection,
    org: &str,
    filter: &CampaignFilter,
    page: PageRequest,
) -> ApiResult<Page<Campaign>> {
    let mut f = Filter::new("org_id = ?", org.to_string());
    if let Some(s) = filter.status {
        f.push("status = ?", s.as_str().to_string());
    }
    if let Some(t) = &filter.kind {
        f.push("type = ?", t.clone());
    }
    f.page(conn, "campaigns", COLUMNS, "created_at", page, from_row)
}

pub struct NewCampaign<'a> {
    pub name: &'a str,
    pub status: CampaignStatus,
    pub kind: &'a str,
    pub steps: Value,
}

pub fn create(conn: &Connection, org: &str, new: &NewCampaign<'_>) -> ApiResult<Campaign> {
    let id = new_id();
    let now = now_rfc3339();
    conn.execute(
        "INSERT INTO campaigns (id, org_id, name, name_norm, status, type, steps, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
        params![
            id,
            org,
            new.name,
            normalize(new.name),
            new.status,
            new.kind,
            new.steps.to_string(),
            now
        ],
    )?;
    require(conn, org, &id)
}

pub fn update(conn: &Connection, org: &str, id: &str, ch: &CampaignChanges) -> ApiResult<Campaign> {
    let c = require(conn, org, id)?;
    let name = ch.name.clone().unwrap_or(c.name);
    conn.execute(
        "UPDATE campaigns SET name = ?3, name_norm = ?4, status = ?5, type = ?6, campaign_mode = ?7,
                config = ?8, steps = ?9, updated_at = ?10 WHERE id = ?1 AND org_id = ?2",
        params![
            id,
            org,
            name,
            normalize(&name),
            ch.status.unwrap_or(c.status),
            ch.kind.clone().unwrap_or(c.kind),
            ch.campaign_mode.clone().unwrap_or(c.campaign_mode),
            ch.config.as_ref().unwrap_or(&c.config).to_string(),
            ch.steps.as_ref().unwrap_or(&c.steps).to_string(),
            now_rfc3339()
        ],
    )?;
    require(conn, org, id)
}

pub fn set_status(conn: &Connection, org: &str, id: &str, status: CampaignStatus) -> ApiResult<()> {
    conn.prepare_cached(
        "UPDATE campaigns SET status = ?3, updated_at = ?4 WHERE id = ?1 AND org_id = ?2",
    )?
    .execute(params![id, org, status, now_rfc3339()])?;
    Ok(())
}

/// Counts audience members by state (removed members are not counted).
pub fn audience_stats(conn: &Connection, campaign_id: &str) -> ApiResult<AudienceStats> {
    let mut stmt = conn.prepare_cached(
        "SELECT status, count(*) FROM campaign_audiences WHERE campaign_id = ?1 GROUP BY status",
    )?;
    let mut s = AudienceStats {
        failed: Some(0),
        ..Default::default()
    };
    let rows = stmt.query_map([campaign_id], |r| {
        Ok((r.get::<_, AudienceStatus>(0)?, r.get::<_, i64>(1)?))
    })?;
    for row in rows {
        let (status, n) = row?;
        let n = n as u64;
        match status {
            AudienceStatus::Active => s.active += n,
            AudienceStatus::Completed => s.completed += n,
            AudienceStatus::Paused => s.paused += n,
            AudienceStatus::Bounced => s.bounced += n,
            AudienceStatus::Failed => *s.failed.get_or_insert(0) += n,
            AudienceStatus::Removed => continue,
        }
        s.total += n;
    }
    Ok(s)
}

pub fn audience_member(
    conn: &Connection,
    campaign_id: &str,
    contact_id: &str,
) -> ApiResult<Option<AudienceMember>> {
    Ok(conn
        .prepare_cached(
            "SELECT id, campaign_id, contact_id, status, added_at FROM campaign_audiences
              WHERE campaign_id = ?1 AND contact_id = ?2",
        )?
        .query_row([campaign_id, contact_id], |r| {
            Ok(AudienceMember {
                id: r.get(0)?,
                campaign_id: r.get(1)?,
                contact_id: r.get(2)?,
                status: r.get(3)?,
                added_at: r.get(4)?,
            })
        })
        .optional()?)
}

/// Whether `add_to_audience` added someone new or found them already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    New,
    AlreadyIn,
}

/// Puts a contact in a campaign's audience (re-activating a removed member). The campaign must
/// be active.
pub fn add_to_audience(
    conn: &Connection,
    org: &str,
    campaign: &Campaign,
    contact_id: &str,
) -> ApiResult<(AudienceMember, Added)> {
    ensure_active(campaign)?;
    if let Some(m) = audience_member(conn, &campaign.id, contact_id)? {
        if m.status != AudienceStatus::Removed {
            return Ok((m, Added::AlreadyIn));
        }
    }
    let now = now_rfc3339();
    conn.prepare_cached(
        "INSERT INTO campaign_audiences (id, org_id, campaign_id, contact_id, status, added_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, 'active', ?5, ?5)
         ON CONFLICT (campaign_id, contact_id) DO UPDATE SET status = 'active', updated_at = ?5",
    )?
    .execute(params![new_id(), org, campaign.id, contact_id, now])?;
    let m = audience_member(conn, &campaign.id, contact_id)?
        .ok_or_else(|| ApiError::internal("audience row vanished"))?;
    Ok((m, Added::New))
}

/// Marks a member removed; returns the state they had, or `None` when they were not in it.
pub fn remove_from_audience(
    conn: &Connection,
    campaign_id: &str,
    contact_id: &str,
) -> ApiResult<Option<AudienceStatus>> {
    let Some(m) = audience_member(conn, campaign_id, contact_id)? else {
        return Ok(None);
    };
    if m.status == AudienceStatus::Removed {
        return Ok(None);
    }
    conn.prepare_cached(
        "UPDATE campaign_audiences SET status = 'removed', updated_at = ?3 WHERE campaign_id = ?1 AND contact_id = ?2",
    )?
    .execute(params![campaign_id, contact_id, now_rfc3339()])?;
    Ok(Some(m.status))
}

/// Restores a member to `status` (undo of a remove).
pub fn restore_member(
    conn: &Connection,
    campaign_id: &str,
    contact_id: &str,
    status: AudienceStatus,
) -> ApiResult<()> {
    conn.prepare_cached(
        "UPDATE campaign_audiences SET status = ?3, updated_at = ?4 WHERE campaign_id = ?1 AND contact_id = ?2",
    )?
    .execute(params![campaign_id, contact_id, status, now_rfc3339()])?;
    Ok(())
}

/// A contact's place in a campaign, as `lookup_person` shows it. Fields in the order of the
/// reply's JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Membership {
    pub campaign_id: String,
    pub name: String,
    pub status: String,
    pub audience_status: String,
    pub added_at: String,
}

/// The campaigns a contact is in (removed memberships excluded), newest first. Typed records
/// rather than JSON values: the reply serializes them straight into its text.
pub fn memberships(conn: &Connection, org: &str, contact_id: &str) -> ApiResult<Vec<Membership>> {
    let mut stmt = conn.prepare_cached(
        "SELECT c.id, c.name, c.status, a.status, a.added_at FROM campaign_audiences a
           JOIN campaigns c ON c.id = a.campaign_id
          WHERE a.contact_id = ?1 AND a.org_id = ?2 AND a.status != 'removed'
          ORDER BY a.added_at DESC",
    )?;
    let rows = stmt.query_map([contact_id, org], |r| {
        Ok(Membership {
            campaign_id: r.get(0)?,
            name: r.get(1)?,
            status: r.get(2)?,
            audience_status: r.get(3)?,
            added_at: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Adding people is only possible while a campaign runs (DESIGN §5).
pub fn ensure_active(c: &Campaign) -> ApiResult<()> {
    if c.status == CampaignStatus::Active {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::CampaignNotActive,
        format!("Campaign is {}", c.status),
    )
    .with_details(format!("campaign {} has status {}", c.id, c.status))
    .with_spoken(format!(
        "{} is {}, so I can't add anyone to it.",
        c.name,
        match c.status {
            CampaignStatus::Draft => "still a draft",
            other => other.as_str(),
        }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{contacts, orgs, test_store};

    #[test]
    fn audience_add_remove_and_stats() {
        let (_d, store) = test_store();
        store
            .write_sync(|tx| {
                orgs::create(tx, &orgs::NewOrg::named("o"))?;
                let c = create(
                    tx,
                    "o",
                    &NewCampaign {
                        name: "Seed founders",
                        status: CampaignStatus::Active,
                        kind: "email",
                        steps: Value::Array(vec![]),
                    },
                )?;
                let p = contacts::insert(tx, "o", &contacts::ContactFields::with_email("a@b.io"))?;
                let (_, added) = add_to_audience(tx, "o", &c, &p.id)?;
                assert_eq!(added, Added::New);
                let (_, again) = add_to_audience(tx, "o", &c, &p.id)?;
                assert_eq!(again, Added::AlreadyIn);
                let s = audience_stats(tx, &c.id)?;
                assert_eq!((s.total, s.active), (1, 1));
                assert_eq!(
                    remove_from_audience(tx, &c.id, &p.id)?,
                    Some(AudienceStatus::Active)
                );
                assert_eq!(audience_stats(tx, &c.id)?.total, 0);
                assert_eq!(remove_from_audience(tx, &c.id, &p.id)?, None);
                set_status(tx, "o", &c.id, CampaignStatus::Paused)?;
                let paused = require(tx, "o", &c.id)?;
                assert_eq!(
                    add_to_audience(tx, "o", &paused, &p.id).unwrap_err().code,
                    ErrorCode::CampaignNotActive
                );
                assert_eq!(find_by_name(tx, "o", "seed", true, 5)?.len(), 1);
                assert_eq!(find_by_name(tx, "o", "seed founders", false, 5)?.len(), 1);
                Ok(())
            })
            .unwrap();
    }
}
