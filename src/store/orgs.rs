//! Organisations: plan, rate limit, pilot mode and credits.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use crate::domain::{PilotMode, Plan, TimeZone};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::ids::now_rfc3339;

#[derive(Debug, Clone, Serialize)]
pub struct Org {
    pub id: String,
    pub name: String,
    pub plan: Plan,
    /// Requests per minute; `None` means the server-wide default, `Some(0)` means unlimited.
    pub rate_limit: Option<u32>,
    pub pilot_mode: PilotMode,
    /// IANA time zone in which times are spoken.
    pub timezone: TimeZone,
    pub credits_monthly: i64,
    pub credits_remaining: i64,
    pub credits_reset_at: String,
    pub created_at: String,
}

#[derive(Debug, Clone)]
pub struct NewOrg {
    pub id: String,
    pub plan: Plan,
    pub rate_limit: Option<u32>,
    pub pilot_mode: PilotMode,
}

impl NewOrg {
    pub fn named(id: &str) -> Self {
        NewOrg {
            id: id.to_string(),
            plan: Plan::Pro,
            rate_limit: None,
            pilot_mode: PilotMode::Review,
        }
    }
}

/// Changes for `org set`; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct OrgChanges {
    pub plan: Option<Plan>,
    pub rate_limit: Option<u32>,
    pub pilot_mode: Option<PilotMode>,
    pub timezone: Option<TimeZone>,
}

const COLUMNS: &str =
    "id, name, plan, rate_limit, pilot_mode, credits_monthly, credits_remaining, \
                       credits_reset_at, created_at, timezone";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Org> {
    Ok(Org {
        id: r.get(0)?,
        name: r.get(1)?,
        plan: r.get(2)?,
        rate_limit: r.get(3)?,
        pilot_mode: r.get(4)?,
        credits_monthly: r.get(5)?,
        credits_remaining: r.get(6)?,
        credits_reset_at: r.get(7)?,
        created_at: r.get(8)?,
        timezone: r.get(9)?,
    })
}

/// Org ids are short slugs so they can be typed on the command line.
pub fn validate_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "org id '{id}' must be 1-64 characters of a-z, 0-9, '-' or '_'"
        ))
    }
}

fn next_reset(now: chrono::DateTime<chrono::Utc>) -> String {
    use chrono::Datelike;
    let (y, m) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    chrono::NaiveDate::from_ymd_opt(y, m, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| crate::ids::to_rfc3339(d.and_utc()))
        .unwrap_or_else(now_rfc3339)
}

pub fn create(conn: &Connection, new: &NewOrg) -> ApiResult<Org> {
    validate_id(&new.id).map_err(|e| ApiError::validation("org", e))?;
    if get(conn, &new.id)?.is_some() {
        return Err(ApiError::new(
            ErrorCode::DuplicateResource,
            format!("org '{}' already exists", new.id),
        ));
    }
    let now = now_rfc3339();
    let credits = new.plan.monthly_credits();
    conn.execute(
        "INSERT INTO orgs (id, name, plan, rate_limit, pilot_mode, credits_monthly, credits_remaining,
                           credits_reset_at, created_at, updated_at)
         VALUES (?1, ?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?7)",
        params![
            new.id,
            new.plan,
            new.rate_limit,
            new.pilot_mode,
            credits,
            next_reset(chrono::Utc::now()),
            now
        ],
    )?;
    get(conn, &new.id)?.ok_or_else(|| ApiError::internal("org vanished after insert"))
}

pub fn get(conn: &Connection, id: &str) -> ApiResult<Option<Org>> {
    let sql = format!("SELECT {COLUMNS} FROM orgs WHERE id = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([id], from_row)
        .optional()?)
}

pub fn list(conn: &Connection) -> ApiResult<Vec<Org>> {
    let sql = format!("SELECT {COLUMNS} FROM orgs ORDER BY id");
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([], from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn update(conn: &Connection, id: &str, changes: &OrgChanges) -> ApiResult<Org> {
    let org = get(conn, id)?.ok_or_else(|| {
        ApiError::new(ErrorCode::OrgNotFound, format!("org '{id}' does not exist"))
    })?;
    let plan = changes.plan.unwrap_or(org.plan);
    let rate_limit = changes.rate_limit.or(org.rate_limit);
    let pilot_mode = changes.pilot_mode.unwrap_or(org.pilot_mode);
    let timezone = changes.timezone.unwrap_or(org.timezone);
    let monthly = if plan != org.plan {
        plan.monthly_credits()
    } else {
        org.credits_monthly
    };
    conn.execute(
        "UPDATE orgs SET plan = ?2, rate_limit = ?3, pilot_mode = ?4, credits_monthly = ?5,
                         updated_at = ?6, timezone = ?7 WHERE id = ?1",
        params![
            id,
            plan,
            rate_limit,
            pilot_mode,
            monthly,
            now_rfc3339(),
            timezone
        ],
    )?;
    get(conn, id)?.ok_or_else(|| ApiError::internal("org vanished after update"))
}

pub fn pilot_mode(conn: &Connection, id: &str) -> ApiResult<PilotMode> {
    conn.prepare_cached("SELECT pilot_mode FROM orgs WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| ApiError::new(ErrorCode::OrgNotFound, "organization not found"))
}

/// The org's time zone (UTC unless set).
pub fn timezone(conn: &Connection, id: &str) -> ApiResult<TimeZone> {
    conn.prepare_cached("SELECT timezone FROM orgs WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| ApiError::new(ErrorCode::OrgNotFound, "organization not found"))
}

pub fn set_timezone(conn: &Connection, id: &str, zone: TimeZone) -> ApiResult<()> {
    set_one(
        conn,
        id,
        "UPDATE orgs SET timezone = ?2, updated_at = ?3 WHERE id = ?1",
        &zone,
    )
}

pub fn set_pilot_mode(conn: &Connection, id: &str, mode: PilotMode) -> ApiResult<()> {
    set_one(
        conn,
        id,
        "UPDATE orgs SET pilot_mode = ?2, updated_at = ?3 WHERE id = ?1",
        &mode,
    )
}

/// Runs one org setting's `UPDATE` (`?1` id, `?2` value, `?3` now); an unknown org is an error.
fn set_one(conn: &Connection, id: &str, sql: &str, value: &dyn rusqlite::ToSql) -> ApiResult<()> {
    let n = conn.execute(sql, params![id, value, now_rfc3339()])?;
    if n == 0 {
        return Err(ApiError::new(
            ErrorCode::OrgNotFound,
            "organization not found",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_store;

    #[test]
    fn create_get_update() {
        let (_d, store) = test_store();
        store
            .write_sync(|tx| {
                let org = create(tx, &NewOrg::named("acme"))?;
                assert_eq!(org.plan, Plan::Pro);
                assert_eq!(org.credits_remaining, 5000);
                assert!(create(tx, &NewOrg::named("acme")).is_err());
                let changed = update(
                    tx,
                    "acme",
                    &OrgChanges {
                        plan: Some(Plan::Free),
                        rate_limit: Some(0),
                        pilot_mode: Some(PilotMode::Auto),
                        timezone: Some(
                            "Europe/Berlin"
                                .parse()
                                .map_err(|e: String| ApiError::validation("timezone", e))?,
                        ),
                    },
                )?;
                assert_eq!(timezone(tx, "acme")?.name(), "Europe/Berlin");
                assert_eq!(changed.plan, Plan::Free);
                assert_eq!(changed.rate_limit, Some(0));
                assert_eq!(pilot_mode(tx, "acme")?, PilotMode::Auto);
                assert_eq!(
                    update(tx, "nope", &OrgChanges::default()).unwrap_err().code,
                    ErrorCode::OrgNotFound
                );
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn org_ids_are_slugs() {
        assert!(validate_id("demo").is_ok());
        assert!(validate_id("Demo Org").is_err());
        assert!(validate_id("").is_err());
    }
}
