//! Buying signals (job changes, funding news, website visits, …) for briefing cards.

use rusqlite::{params, Connection, Row};
use serde::{Deserialize, Serialize};

use super::sql::Filter;
use super::{Page, PageRequest};
use crate::error::ApiResult;
use crate::ids::new_id;
use crate::text::normalize;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Signal {
    pub id: String,
    pub contact_id: Option<String>,
    pub company: Option<String>,
    #[serde(default)]
    pub platform: String,
    #[serde(rename = "type")]
    #[serde(default)]
    pub signal_type: String,
    #[serde(default)]
    pub title: String,
    pub content: Option<String>,
    pub url: Option<String>,
    #[serde(default)]
    pub intent_score: i64,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub detected_at: String,
}

#[derive(Debug, Clone, Default)]
pub struct SignalFilter {
    /// RFC 3339, already normalised to UTC millis so it compares as text.
    pub since: Option<String>,
    pub platform: Option<String>,
    pub status: Option<String>,
    pub contact_id: Option<String>,
    pub company: Option<String>,
    pub min_intent_score: Option<i64>,
}

const COLUMNS: &str = "id, contact_id, company, platform, signal_type, title, content, url, \
                       intent_score, status, detected_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Signal> {
    Ok(Signal {
        id: r.get(0)?,
        contact_id: r.get(1)?,
        company: r.get(2)?,
        platform: r.get(3)?,
        signal_type: r.get(4)?,
        title: r.get(5)?,
        content: r.get(6)?,
        url: r.get(7)?,
        intent_score: r.get(8)?,
        status: r.get(9)?,
        detected_at: r.get(10)?,
    })
}

/// Newest first.
pub fn list(
    conn: &Connection,
    org: &str,
    filter: &SignalFilter,
    page: PageRequest,
) -> ApiResult<Page<Signal>> {
    let mut f = Filter::new("org_id = ?", org.to_string());
    if let Some(s) = &filter.since {
        f.push("detected_at >= ?", s.clone());
    }
    if let Some(p) = &filter.platform {
        f.push("platform = ?", p.to_lowercase());
    }
    if let Some(s) = &filter.status {
        f.push("status = ?", s.to_lowercase());
    }
    if let Some(c) = &filter.contact_id {
        f.push("contact_id = ?", c.clone());
    }
    if let Some(c) = &filter.company {
        f.push("company_norm = ?", normalize(c));
    }
    if let Some(m) = filter.min_intent_score {
        f.push("intent_score >= ?", m);
    }
    f.page(conn, "signals", COLUMNS, "detected_at", page, from_row)
}

pub struct NewSignal<'a> {
    pub contact_id: Option<&'a str>,
    pub company: Option<&'a str>,
    pub platform: &'a str,
    pub signal_type: &'a str,
    pub title: &'a str,
    pub content: Option<&'a str>,
    pub url: Option<&'a str>,
    pub intent_score: i64,
    pub detected_at: &'a str,
}

pub fn insert(conn: &Connection, org: &str, s: &NewSignal<'_>) -> ApiResult<String> {
    let id = new_id();
    conn.prepare_cached(
        "INSERT INTO signals (id, org_id, contact_id, company, company_norm, platform, signal_type,
                              title, content, url, intent_score, status, detected_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'new', ?12)",
    )?
    .execute(params![
        id,
        org,
        s.contact_id,
        s.company,
        s.company.map(normalize).unwrap_or_default(),
        s.platform,
        s.signal_type,
        s.title,
        s.content,
        s.url,
        s.intent_score.clamp(0, 100),
        s.detected_at
    ])?;
    Ok(id)
}
