//! Interactions: the activity history of contacts (emails, LinkedIn messages, meetings, calls) and
//! notes, which are interactions with channel `note`.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::sql::{json_col, Filter};
use super::{Page, PageRequest};
use crate::error::ApiResult;
use crate::ids::{new_id, now_rfc3339};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Interaction {
    pub id: String,
    pub contact_id: Option<String>,
    pub campaign_id: Option<String>,
    #[serde(default)]
    pub direction: String,
    #[serde(default)]
    pub channel: String,
    pub subject: Option<String>,
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub metadata: Value,
    #[serde(default)]
    pub is_read: bool,
    #[serde(default)]
    pub created_at: String,
}

/// The REST shape of a note.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Note {
    pub id: String,
    pub contact_id: Option<String>,
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub metadata: Value,
    pub created_at: String,
}

impl From<Interaction> for Note {
    fn from(i: Interaction) -> Self {
        Note {
            id: i.id,
            contact_id: i.contact_id,
            content: i.content,
            metadata: i.metadata,
            created_at: i.created_at,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ActivityFilter {
    pub contact_id: Option<String>,
    pub campaign_id: Option<String>,
    pub direction: Option<String>,
    pub channel: Option<String>,
    pub since: Option<String>,
    pub include_notes: bool,
    /// Only unread inbound messages (for `reply_inbox`).
    pub unread_only: bool,
}

impl Default for ActivityFilter {
    fn default() -> Self {
        ActivityFilter {
            contact_id: None,
            campaign_id: None,
            direction: None,
            channel: None,
            since: None,
            include_notes: true,
            unread_only: false,
        }
    }
}

/// The columns [`from_row`] reads, as a literal for `concat!`.
macro_rules! columns {
    () => {
        "id, contact_id, campaign_id, direction, channel, subject, content, metadata, is_read, created_at"
    };
}
const COLUMNS: &str = columns!();

fn from_row(r: &Row<'_>) -> rusqlite::Result<Interaction> {
    Ok(Interaction {
        id: r.get(0)?,
        contact_id: r.get(1)?,
        campaign_id: r.get(2)?,
        direction: r.get(3)?,
        channel: r.get(4)?,
        subject: r.get(5)?,
        content: r.get(6)?,
        metadata: json_col(r.get(7)?, Value::Object(Map::new())),
        is_read: r.get(8)?,
        created_at: r.get(9)?,
    })
}

/// Newest first.
pub fn list(
    conn: &Connection,
    org: &str,
    filter: &ActivityFilter,
    page: PageRequest,
) -> ApiResult<Page<Interaction>> {
    activity_filter(org, filter).page(conn, "interactions", COLUMNS, "created_at", page, from_row)
}

/// A contact's newest `limit` interactions, notes included (what `lookup_person` shows),
/// without the total [`list`] counts: counting walks every match, and this is the fast path.
pub fn latest_for_contact(
    conn: &Connection,
    org: &str,
    contact_id: &str,
    limit: u32,
) -> ApiResult<Vec<Interaction>> {
    const SQL: &str = concat!(
        "SELECT ",
        columns!(),
        " FROM interactions WHERE org_id = ?1 AND contact_id = ?2
          ORDER BY created_at DESC, id DESC LIMIT ?3"
    );
    let mut stmt = conn.prepare_cached(SQL)?;
    let rows = stmt.query_map(rusqlite::params![org, contact_id, limit], from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn activity_filter(org: &str, filter: &ActivityFilter) -> Filter {
    let mut f = Filter::new("org_id = ?", org.to_string());
    if let Some(c) = &filter.contact_id {
        f.push("contact_id = ?", c.clone());
    }
    if let Some(c) = &filter.campaign_id {
        f.push("campaign_id = ?", c.clone());
    }
    if let Some(d) = &filter.direction {
        f.push("direction = ?", d.to_lowercase());
    }
    if let Some(c) = &filter.channel {
        f.push("channel = ?", c.to_lowercase());
    }
    if let Some(s) = &filter.since {
        f.push("created_at >= ?", s.clone());
    }
    if !filter.include_notes {
        f.push_raw("channel != 'note'");
    }
    if filter.unread_only {
        f.push_raw("is_read = 0");
    }
    f
}

pub fn get(conn: &Connection, org: &str, id: &str) -> ApiResult<Option<Interaction>> {
    let sql = format!("SELECT {COLUMNS} FROM interactions WHERE id = ?1 AND org_id = ?2");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([id, org], from_row)
        .optional()?)
}

/// The interaction written earlier with this idempotency key, if any.
pub fn find_by_idempotency_key(
    conn: &Connection,
    org: &str,
    key: &str,
) -> ApiResult<Option<Interaction>> {
    let sql =
        format!("SELECT {COLUMNS} FROM interactions WHERE org_id = ?1 AND idempotency_key = ?2");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([org, key], from_row)
        .optional()?)
}

pub struct NewInteraction<'a> {
    pub contact_id: Option<&'a str>,
    pub campaign_id: Option<&'a str>,
    pub direction: &'a str,
    pub channel: &'a str,
    pub subject: Option<&'a str>,
    pub content: &'a str,
    pub metadata: Value,
    pub is_read: bool,
    pub idempotency_key: Option<&'a str>,
    /// `None` = now.
    pub created_at: Option<&'a str>,
}

impl<'a> NewInteraction<'a> {
    pub fn note(contact_id: &'a str, content: &'a str, metadata: Value) -> Self {
        NewInteraction {
            contact_id: Some(contact_id),
            campaign_id: None,
            direction: "internal",
            channel: "note",
            subject: None,
            content,
            metadata,
            is_read: true,
            idempotency_key: None,
            created_at: None,
        }
    }
}

pub fn insert(conn: &Connection, org: &str, n: &NewInteraction<'_>) -> ApiResult<Interaction> {
    let id = new_id();
    let created = n.created_at.map(str::to_string).unwrap_or_else(now_rfc3339);
    conn.prepare_cached(
        "INSERT INTO interactions (id, org_id, contact_id, campaign_id, direction, channel, subject,
                                   content, metadata, is_read, idempotency_key, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        id,
        org,
        n.contact_id,
        n.campaign_id,
        n.direction,
        n.channel,
        n.subject,
        n.content,
        n.metadata.to_string(),
        n.is_read,
        n.idempotency_key,
        created
    ])?;
    Ok(Interaction {
        id,
        contact_id: n.contact_id.map(str::to_string),
        campaign_id: n.campaign_id.map(str::to_string),
        direction: n.direction.to_string(),
        channel: n.channel.to_string(),
        subject: n.subject.map(str::to_string),
        content: n.content.to_string(),
        metadata: n.metadata.clone(),
        is_read: n.is_read,
        created_at: created,
    })
}

pub fn delete(conn: &Connection, org: &str, id: &str) -> ApiResult<bool> {
    Ok(conn.execute(
        "DELETE FROM interactions WHERE id = ?1 AND org_id = ?2",
        [id, org],
    )? > 0)
}

/// Deletes a note (an interaction on the `note` channel); false when there is no such note.
pub fn delete_note(conn: &Connection, org: &str, id: &str) -> ApiResult<bool> {
    Ok(conn.execute(
        "DELETE FROM interactions WHERE id = ?1 AND org_id = ?2 AND channel = 'note'",
        [id, org],
    )? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{contacts, orgs, test_store};
    use serde_json::json;

    #[test]
    fn notes_are_interactions_and_filterable() {
        let (_d, store) = test_store();
        store
            .write_sync(|tx| {
                orgs::create(tx, &orgs::NewOrg::named("o"))?;
                let c = contacts::insert(tx, "o", &contacts::ContactFields::with_email("a@b.io"))?;
                insert(tx, "o", &NewInteraction::note(&c.id, "hello", json!({})))?;
                insert(
                    tx,
                    "o",
                    &NewInteraction {
                        direction: "inbound",
                        channel: "email",
                        is_read: false,
                        ..NewInteraction::note(&c.id, "re: hi", json!({}))
                    },
                )?;
                let page = PageRequest {
                    limit: 10,
                    offset: 0,
                };
                assert_eq!(list(tx, "o", &ActivityFilter::default(), page)?.total, 2);
                let no_notes = ActivityFilter {
                    include_notes: false,
                    ..Default::default()
                };
                assert_eq!(list(tx, "o", &no_notes, page)?.total, 1);
                let unread = ActivityFilter {
                    unread_only: true,
                    ..Default::default()
                };
                assert_eq!(list(tx, "o", &unread, page)?.items[0].content, "re: hi");
                assert_eq!(list(tx, "x", &ActivityFilter::default(), page)?.total, 0);
                Ok(())
            })
            .unwrap();
    }
}
