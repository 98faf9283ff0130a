//! Webhook subscriptions. Registration and deactivation only; delivery is not built yet.

use rusqlite::{params, Connection, Row};
use serde::Serialize;
use serde_json::Value;

use crate::error::ApiResult;
use crate::ids::{new_id, now_rfc3339};

/// Events a subscription may ask for.
pub const AVAILABLE_EVENTS: &[&str] = &[
    "contact.created",
    "contact.updated",
    "campaign.started",
    "campaign.paused",
    "campaign.completed",
    "email.sent",
    "email.opened",
    "email.clicked",
    "email.replied",
    "email.bounced",
    "linkedin.replied",
    "meeting.booked",
    "signal.detected",
    "note.created",
];

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    /// The secret itself is never returned.
    pub has_secret: bool,
    pub active: bool,
    pub created_at: String,
    pub updated_at: String,
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<Webhook> {
    let events: String = r.get(2)?;
    Ok(Webhook {
        id: r.get(0)?,
        url: r.get(1)?,
        events: serde_json::from_str::<Vec<String>>(&events).unwrap_or_default(),
        has_secret: r.get::<_, Option<String>>(3)?.is_some(),
        active: r.get(4)?,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
    })
}

pub fn list_active(conn: &Connection, org: &str) -> ApiResult<Vec<Webhook>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, url, events, secret, active, created_at, updated_at FROM webhooks
          WHERE org_id = ?1 AND active = 1 ORDER BY created_at, id",
    )?;
    let rows = stmt.query_map([org], from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn insert(
    conn: &Connection,
    org: &str,
    url: &str,
    events: &[String],
    secret: Option<&str>,
) -> ApiResult<Webhook> {
    let id = new_id();
    let now = now_rfc3339();
    conn.execute(
        "INSERT INTO webhooks (id, org_id, url, events, secret, active, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?6)",
        params![
            id,
            org,
            url,
            Value::from(events.to_vec()).to_string(),
            secret,
            now
        ],
    )?;
    Ok(Webhook {
        id,
        url: url.to_string(),
        events: events.to_vec(),
        has_secret: secret.is_some(),
        active: true,
        created_at: now.clone(),
        updated_at: now,
    })
}

/// Deactivates an active subscription; false when there is none with that id in the org.
pub fn deactivate(conn: &Connection, org: &str, id: &str) -> ApiResult<bool> {
    let n = conn.execute(
        "UPDATE webhooks SET active = 0, updated_at = ?3 WHERE id = ?1 AND org_id = ?2 AND active = 1",
        params![id, org, now_rfc3339()],
    )?;
    Ok(n > 0)
}
