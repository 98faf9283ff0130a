//! Webhook subscriptions and their delivery outbox: one event row per effect that a
//! subscription wants (written in the effect's own transaction), one delivery row per
//! subscription, and the state of every delivery's attempts.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::ids::{new_id, now_rfc3339};

/// Events a subscription may ask for: the reference's fourteen, then `job.completed`,
/// `message.cancelled` and `contact.status_changed`.
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
    "job.completed",
    "message.cancelled",
    "contact.status_changed",
];

/// Where a subscription's deliveries stand: its most recently attempted delivery, or, before
/// any attempt, its newest one (so a new event waiting for its first attempt does not hide
/// how the previous one went).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LastDelivery {
    /// `pending` (queued or waiting for a retry), `succeeded` or `failed` (retries exhausted,
    /// refused by the receiver with 410, or the subscription was deactivated).
    pub status: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// HTTP status of the latest attempt; null before the first one and when no answer came.
    pub response_status: Option<u16>,
    /// When the latest attempt was made, or when the delivery was queued if none was yet.
    pub at: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    /// The secret itself is never returned (except once, when the server generated it).
    pub has_secret: bool,
    /// False once the receiver answered 410 Gone: nothing more is sent to it.
    pub active: bool,
    pub created_at: String,
    pub updated_at: String,
    /// The most recently attempted delivery to this subscription (the newest queued one before
    /// any attempt); null when it has had no event yet.
    pub last_delivery: Option<LastDelivery>,
}

const LIST_SQL: &str =
    "SELECT w.id, w.url, w.events, w.secret IS NOT NULL, w.active, w.created_at, w.updated_at,
        d.status, d.attempts, d.response_status, COALESCE(d.last_attempt_at, d.created_at)
   FROM webhooks w
   LEFT JOIN webhook_deliveries d ON d.seq = COALESCE(
        (SELECT a.seq FROM webhook_deliveries a
          WHERE a.webhook_id = w.id AND a.last_attempt_at IS NOT NULL
          ORDER BY a.last_attempt_at DESC, a.seq DESC LIMIT 1),
        (SELECT max(n.seq) FROM webhook_deliveries n WHERE n.webhook_id = w.id))
  WHERE w.org_id = ?1 AND w.deleted_at IS NULL ORDER BY w.created_at, w.id";

fn from_row(r: &Row<'_>) -> rusqlite::Result<(Webhook, String)> {
    let events: String = r.get(2)?;
    let last_delivery = match r.get::<_, Option<String>>(7)? {
        Some(status) => Some(LastDelivery {
            status,
            attempts: r.get(8)?,
            response_status: r.get(9)?,
            at: r.get(10)?,
        }),
        None => None,
    };
    Ok((
        Webhook {
            id: r.get(0)?,
            url: r.get(1)?,
            events: Vec::new(),
            has_secret: r.get(3)?,
            active: r.get(4)?,
            created_at: r.get(5)?,
            updated_at: r.get(6)?,
            last_delivery,
        },
        events,
    ))
}

/// The stored event list; an unreadable one is an error, never an empty subscription.
fn parse_events(id: &str, raw: &str) -> ApiResult<Vec<String>> {
    serde_json::from_str(raw)
        .map_err(|e| ApiError::internal(format!("webhook {id}: unreadable events column: {e}")))
}

/// The org's subscriptions that were not deleted: the active ones and those a 410 disabled.
pub fn list(conn: &Connection, org: &str) -> ApiResult<Vec<Webhook>> {
    let mut stmt = conn.prepare_cached(LIST_SQL)?;
    let rows = stmt
        .query_map([org], from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(mut w, events)| {
            w.events = parse_events(&w.id, &events)?;
            Ok(w)
        })
        .collect()
}

pub fn insert(
    conn: &Connection,
    org: &str,
    url: &str,
    events: &[String],
    secret: &str,
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
        has_secret: true,
        active: true,
        created_at: now.clone(),
        updated_at: now,
        last_delivery: None,
    })
}

/// Deletes a subscription (active or disabled by a 410): it stops receiving, leaves the
/// listing and gives up its pending deliveries. The row stays, so its delivery history does
/// too, until pruned. False when the org has no such subscription.
pub fn deactivate(conn: &Connection, org: &str, id: &str) -> ApiResult<bool> {
    let n = conn.execute(
        "UPDATE webhooks SET active = 0, deleted_at = ?3, updated_at = ?3
          WHERE id = ?1 AND org_id = ?2 AND deleted_at IS NULL",
        params![id, org, now_rfc3339()],
    )?;
    if n > 0 {
        fail_pending(conn, id, "subscription deactivated")?;
    }
    Ok(n > 0)
}

/// Disables a subscription whose receiver answered 410 Gone; it stays listed, inactive.
pub fn disable(conn: &Connection, id: &str) -> ApiResult<()> {
    conn.execute(
        "UPDATE webhooks SET active = 0, updated_at = ?2 WHERE id = ?1",
        params![id, now_rfc3339()],
    )?;
    fail_pending(
        conn,
        id,
        "the receiver answered 410 Gone; subscription disabled",
    )
}

fn fail_pending(conn: &Connection, webhook_id: &str, why: &str) -> ApiResult<()> {
    conn.execute(
        "UPDATE webhook_deliveries SET status = 'failed', last_error = ?2
          WHERE webhook_id = ?1 AND status = 'pending'",
        params![webhook_id, why],
    )?;
    Ok(())
}

// ---- the outbox -----------------------------------------------------------------------------

/// Ids of the org's active subscriptions that want `event_type`. Reads only the org's active
/// subscriptions (index `webhooks_org`), so an org without webhooks costs one index probe.
pub fn subscribers(conn: &Connection, org: &str, event_type: &str) -> ApiResult<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT w.id FROM webhooks w
          WHERE w.org_id = ?1 AND w.active = 1
            AND EXISTS (SELECT 1 FROM json_each(w.events) e WHERE e.value = ?2)
          ORDER BY w.created_at, w.id",
    )?;
    let ids = stmt
        .query_map(params![org, event_type], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(ids)
}

/// An event to store with its deliveries.
pub struct NewEvent<'a> {
    pub id: &'a str,
    pub org: &'a str,
    pub event_type: &'a str,
    pub payload: &'a str,
    pub created_at: &'a str,
    /// Unix milliseconds of the first attempt.
    pub first_attempt_ms: i64,
}

/// Stores an event and one pending delivery per subscription in `webhook_ids`.
pub fn insert_event(conn: &Connection, e: &NewEvent<'_>, webhook_ids: &[String]) -> ApiResult<()> {
    conn.prepare_cached(
        "INSERT INTO webhook_events (id, org_id, type, payload, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![e.id, e.org, e.event_type, e.payload, e.created_at])?;
    let mut stmt = conn.prepare_cached(
        "INSERT INTO webhook_deliveries (event_id, webhook_id, org_id, status, attempts, next_attempt_ms, created_at)
         VALUES (?1, ?2, ?3, 'pending', 0, ?4, ?5)",
    )?;
    for w in webhook_ids {
        stmt.execute(params![e.id, w, e.org, e.first_attempt_ms, e.created_at])?;
    }
    Ok(())
}

/// A delivery that is due: its row and its subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct Due {
    pub seq: i64,
    pub webhook_id: String,
}

/// For each active subscription whose next pending delivery is due at `now_ms`, that
/// delivery; soonest first. One per subscription, so a subscription with a long backlog cannot
/// crowd the others out; the cost grows with the number of subscriptions, not of deliveries.
pub fn due(conn: &Connection, now_ms: i64, limit: usize) -> ApiResult<Vec<Due>> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.seq, d.webhook_id FROM webhooks w
           JOIN webhook_deliveries d ON d.seq = (
                SELECT n.seq FROM webhook_deliveries n
                 WHERE n.webhook_id = w.id AND n.status = 'pending'
                 ORDER BY n.next_attempt_ms, n.seq LIMIT 1)
          WHERE w.active = 1 AND d.next_attempt_ms <= ?1
          ORDER BY d.next_attempt_ms, d.seq LIMIT ?2",
    )?;
    let rows = stmt
        .query_map(
            params![now_ms, i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| {
                Ok(Due {
                    seq: r.get(0)?,
                    webhook_id: r.get(1)?,
                })
            },
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Everything one attempt needs.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub seq: i64,
    pub event_id: String,
    pub event_type: String,
    pub payload: String,
    pub webhook_id: String,
    pub url: String,
    pub secret: Option<String>,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// The attempt for delivery `seq`, if it is still pending and its subscription active.
pub fn attempt(conn: &Connection, seq: i64) -> ApiResult<Option<Attempt>> {
    Ok(conn
        .prepare_cached(
            "SELECT d.seq, d.event_id, e.type, e.payload, d.webhook_id, w.url, w.secret, d.attempts
               FROM webhook_deliveries d
               JOIN webhook_events e ON e.id = d.event_id
               JOIN webhooks w ON w.id = d.webhook_id
              WHERE d.seq = ?1 AND d.status = 'pending' AND w.active = 1",
        )?
        .query_row([seq], |r| {
            Ok(Attempt {
                seq: r.get(0)?,
                event_id: r.get(1)?,
                event_type: r.get(2)?,
                payload: r.get(3)?,
                webhook_id: r.get(4)?,
                url: r.get(5)?,
                secret: r.get(6)?,
                attempts: r.get(7)?,
            })
        })
        .optional()?)
}

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    Succeeded,
    /// Failed; try again at this unix millisecond.
    RetryAt(i64),
    /// Failed for good.
    Failed,
}

/// Records an attempt of delivery `seq`.
pub fn record_attempt(
    conn: &Connection,
    seq: i64,
    response_status: Option<u16>,
    error: Option<&str>,
    settled: &Settled,
) -> ApiResult<()> {
    let (status, next) = match settled {
        Settled::Succeeded => ("succeeded", None),
        Settled::RetryAt(ms) => ("pending", Some(*ms)),
        Settled::Failed => ("failed", None),
    };
    conn.prepare_cached(
        "UPDATE webhook_deliveries
            SET attempts = attempts + 1, status = ?2, response_status = ?3, last_error = ?4,
                last_attempt_at = ?5, next_attempt_ms = COALESCE(?6, next_attempt_ms)
          WHERE seq = ?1 AND status = 'pending'",
    )?
    // Only a pending delivery: one given up meanwhile (its subscription was deactivated while
    // this attempt was in flight) stays given up.
    .execute(params![
        seq,
        status,
        response_status,
        error,
        now_rfc3339(),
        next
    ])?;
    Ok(())
}

/// Deliveries waiting to be sent or retried.
pub fn queue_depth(conn: &Connection) -> ApiResult<u64> {
    let n: i64 = conn
        .prepare_cached("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'")?
        .query_row([], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Deletes finished deliveries created before `before` (RFC 3339), keeping each
/// subscription's newest one and its most recently attempted one (either can be its
/// `last_delivery`), then events left without deliveries. Returns the deliveries deleted.
pub fn prune(conn: &Connection, before: &str) -> ApiResult<usize> {
    let n = conn.execute(
        "DELETE FROM webhook_deliveries
          WHERE status != 'pending' AND created_at < ?1
            AND seq NOT IN (SELECT max(seq) FROM webhook_deliveries GROUP BY webhook_id)
            AND seq IS NOT (SELECT a.seq FROM webhook_deliveries a
                             WHERE a.webhook_id = webhook_deliveries.webhook_id
                               AND a.last_attempt_at IS NOT NULL
                             ORDER BY a.last_attempt_at DESC, a.seq DESC LIMIT 1)",
        [before],
    )?;
    conn.execute(
        "DELETE FROM webhook_events
          WHERE created_at < ?1
            AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = webhook_events.id)",
        [before],
    )?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{orgs, test_store};

    /// A subscription of `org` to `note.created` at `url`.
    fn subscribe(tx: &Connection, org: &str, url: &str) -> ApiResult<Webhook> {
        insert(tx, org, url, &["note.created".into()], "s")
    }

    fn event<'a>(id: &'a str, org: &'a str) -> NewEvent<'a> {
        NewEvent {
            id,
            org,
            event_type: "note.created",
            payload: "{}",
            created_at: "2026-01-01T00:00:00.000Z",
            first_attempt_ms: 0,
        }
    }

    #[test]
    fn subscribers_match_event_org_and_activity() {
        let (_dir, store) = test_store();
        store
            .write_sync(|tx| {
                orgs::create(tx, &orgs::NewOrg::named("acme"))?;
                orgs::create(tx, &orgs::NewOrg::named("other"))?;
                let a = subscribe(tx, "acme", "https://a.example")?;
                insert(
                    tx,
                    "acme",
                    "https://b.example",
                    &["contact.created".into()],
                    "s",
                )?;
                subscribe(tx, "other", "https://c.example")?;
                assert_eq!(subscribers(tx, "acme", "note.created")?, [a.id.as_str()]);
                assert!(subscribers(tx, "acme", "email.sent")?.is_empty());
                assert!(deactivate(tx, "acme", &a.id)?);
                assert!(subscribers(tx, "acme", "note.created")?.is_empty());
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn deliveries_settle_and_show_as_last_delivery() {
        let (_dir, store) = test_store();
        store
            .write_sync(|tx| {
                orgs::create(tx, &orgs::NewOrg::named("acme"))?;
                let w = subscribe(tx, "acme", "https://a.example")?;
                assert_eq!(list(tx, "acme")?[0].last_delivery, None);
                insert_event(tx, &event("msg_1", "acme"), std::slice::from_ref(&w.id))?;
                assert_eq!(queue_depth(tx)?, 1);
                let due_now = due(tx, 10, 10)?;
                assert_eq!(due_now.len(), 1);
                let a = attempt(tx, due_now[0].seq)?.expect("pending");
                assert_eq!((a.event_id.as_str(), a.attempts), ("msg_1", 0));
                record_attempt(
                    tx,
                    a.seq,
                    Some(500),
                    Some("HTTP 500"),
                    &Settled::RetryAt(99),
                )?;
                assert!(due(tx, 98, 10)?.is_empty(), "not due before its retry");
                assert_eq!(due(tx, 99, 10)?.len(), 1);
                let last = list(tx, "acme")?[0].last_delivery.clone().expect("last");
                assert_eq!(
                    (last.status.as_str(), last.attempts, last.response_status),
                    ("pending", 1, Some(500))
                );
                record_attempt(tx, a.seq, Some(204), None, &Settled::Succeeded)?;
                assert_eq!(queue_depth(tx)?, 0);
                assert!(attempt(tx, a.seq)?.is_none());
                let last = list(tx, "acme")?[0].last_delivery.clone().expect("last");
                assert_eq!((last.status.as_str(), last.attempts), ("succeeded", 2));
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn last_delivery_is_the_latest_attempt_not_the_newest_event() {
        let (_dir, store) = test_store();
        store
            .write_sync(|tx| {
                orgs::create(tx, &orgs::NewOrg::named("acme"))?;
                let w = subscribe(tx, "acme", "https://a.example")?;
                let ids = std::slice::from_ref(&w.id);
                let last = |tx: &Connection| -> ApiResult<LastDelivery> {
                    Ok(list(tx, "acme")?[0].last_delivery.clone().expect("last"))
                };
                insert_event(tx, &event("msg_1", "acme"), ids)?;
                let first = due(tx, 10, 10)?[0].seq;
                assert_eq!(
                    (last(tx)?.status.as_str(), last(tx)?.attempts),
                    ("pending", 0),
                    "before any attempt: the queued delivery"
                );
                record_attempt(tx, first, Some(500), Some("HTTP 500"), &Settled::Failed)?;
                // A newer event waiting for its first attempt does not hide that failure.
                insert_event(tx, &event("msg_2", "acme"), ids)?;
                let l = last(tx)?;
                assert_eq!(
                    (l.status.as_str(), l.attempts, l.response_status),
                    ("failed", 1, Some(500))
                );
                // Pruned long after, the failure is still what the listing shows.
                assert_eq!(prune(tx, "2030-01-01T00:00:00.000Z")?, 0);
                assert_eq!(last(tx)?.status, "failed");
                let second = due(tx, 10, 10)?[0].seq;
                assert_ne!(second, first);
                record_attempt(tx, second, Some(204), None, &Settled::Succeeded)?;
                let l = last(tx)?;
                assert_eq!(
                    (l.status.as_str(), l.response_status),
                    ("succeeded", Some(204))
                );
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn deleted_subscriptions_leave_the_listing_disabled_ones_stay() {
        let (_dir, store) = test_store();
        store
            .write_sync(|tx| {
                orgs::create(tx, &orgs::NewOrg::named("acme"))?;
                let gone = subscribe(tx, "acme", "https://a.example")?;
                let kept = subscribe(tx, "acme", "https://b.example")?;
                disable(tx, &gone.id)?;
                let active: Vec<(String, bool)> = list(tx, "acme")?
                    .into_iter()
                    .map(|w| (w.id, w.active))
                    .collect();
                assert_eq!(active, [(gone.id.clone(), false), (kept.id.clone(), true)]);
                assert!(!deactivate(tx, "other", &gone.id)?, "another org's id");
                assert!(
                    deactivate(tx, "acme", &gone.id)?,
                    "a disabled one can be deleted"
                );
                assert!(deactivate(tx, "acme", &kept.id)?);
                assert!(!deactivate(tx, "acme", &kept.id)?, "deleted once");
                assert!(list(tx, "acme")?.is_empty());
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn due_takes_the_next_delivery_of_each_subscription() {
        let (_dir, store) = test_store();
        store
            .write_sync(|tx| {
                orgs::create(tx, &orgs::NewOrg::named("acme"))?;
                let busy = subscribe(tx, "acme", "https://a.example")?;
                let quiet = subscribe(tx, "acme", "https://b.example")?;
                for i in 0..50 {
                    let id = format!("msg_busy_{i}");
                    insert_event(tx, &event(&id, "acme"), std::slice::from_ref(&busy.id))?;
                }
                let mut late = event("msg_quiet", "acme");
                late.first_attempt_ms = 5;
                insert_event(tx, &late, std::slice::from_ref(&quiet.id))?;
                let hooks = |now| -> ApiResult<Vec<String>> {
                    Ok(due(tx, now, 10)?
                        .into_iter()
                        .map(|d| d.webhook_id)
                        .collect())
                };
                assert_eq!(
                    hooks(4)?,
                    [busy.id.as_str()],
                    "the quiet one is not due yet"
                );
                assert_eq!(
                    hooks(5)?,
                    [busy.id.as_str(), quiet.id.as_str()],
                    "never crowded out"
                );
                let first = due(tx, 5, 10)?[0].clone();
                record_attempt(tx, first.seq, Some(500), None, &Settled::RetryAt(1_000))?;
                let next = due(tx, 5, 10)?[0].clone();
                assert_ne!(
                    next.seq, first.seq,
                    "a delivery waiting to retry does not block later ones"
                );
                deactivate(tx, "acme", &busy.id)?;
                record_attempt(tx, next.seq, Some(204), None, &Settled::Succeeded)?;
                assert_eq!(hooks(5)?, [quiet.id.as_str()]);
                let status: String = tx.query_row(
                    "SELECT status FROM webhook_deliveries WHERE seq = ?1",
                    [next.seq],
                    |r| r.get(0),
                )?;
                assert_eq!(
                    status, "failed",
                    "an attempt finishing after deactivation changes nothing"
                );
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn disabling_fails_pending_deliveries_and_prune_keeps_the_newest() {
        let (_dir, store) = test_store();
        store
            .write_sync(|tx| {
                orgs::create(tx, &orgs::NewOrg::named("acme"))?;
                let w = subscribe(tx, "acme", "https://a.example")?;
                let ids = std::slice::from_ref(&w.id);
                insert_event(tx, &event("msg_1", "acme"), ids)?;
                insert_event(tx, &event("msg_2", "acme"), ids)?;
                disable(tx, &w.id)?;
                assert_eq!(queue_depth(tx)?, 0);
                let listed = list(tx, "acme")?;
                assert_eq!(listed.len(), 1, "a disabled subscription stays listed");
                assert!(!listed[0].active);
                assert!(subscribers(tx, "acme", "note.created")?.is_empty());
                assert_eq!(prune(tx, "2030-01-01T00:00:00.000Z")?, 1);
                let left: i64 =
                    tx.query_row("SELECT count(*) FROM webhook_events", [], |r| r.get(0))?;
                assert_eq!(left, 1, "the newest delivery and its event stay");
                Ok(())
            })
            .unwrap();
    }
}
