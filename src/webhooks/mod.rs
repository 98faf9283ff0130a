//! Webhook delivery (Standard Webhooks 1.0): events are written by [`emit`] inside the
//! transaction of the effect they report (a transactional outbox), and the worker in
//! [`worker`] POSTs them, signed ([`signing`]), to targets the SSRF guard allows ([`target`]),
//! retrying on the configured schedule. Subscriptions live in `store::webhooks`.

pub mod signing;
pub mod target;
pub mod worker;

use rusqlite::Connection;
use serde::Serialize;

use crate::domain::{CampaignStatus, ContactStatus};
use crate::error::{ApiError, ApiResult};
use crate::ids::to_rfc3339;
use crate::store::campaigns::Campaign;
use crate::store::contacts::{self, Contact};
use crate::store::webhooks::{self, NewEvent};

/// Every event type a subscription can ask for (`store::webhooks::AVAILABLE_EVENTS` lists the
/// same names; a unit test keeps the two equal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    ContactCreated,
    ContactUpdated,
    CampaignStarted,
    CampaignPaused,
    CampaignCompleted,
    EmailSent,
    EmailOpened,
    EmailClicked,
    EmailReplied,
    EmailBounced,
    LinkedinReplied,
    MeetingBooked,
    SignalDetected,
    NoteCreated,
    JobCompleted,
    MessageCancelled,
    ContactStatusChanged,
}

impl EventType {
    pub const ALL: [EventType; 17] = [
        EventType::ContactCreated,
        EventType::ContactUpdated,
        EventType::CampaignStarted,
        EventType::CampaignPaused,
        EventType::CampaignCompleted,
        EventType::EmailSent,
        EventType::EmailOpened,
        EventType::EmailClicked,
        EventType::EmailReplied,
        EventType::EmailBounced,
        EventType::LinkedinReplied,
        EventType::MeetingBooked,
        EventType::SignalDetected,
        EventType::NoteCreated,
        EventType::JobCompleted,
        EventType::MessageCancelled,
        EventType::ContactStatusChanged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ContactCreated => "contact.created",
            EventType::ContactUpdated => "contact.updated",
            EventType::CampaignStarted => "campaign.started",
            EventType::CampaignPaused => "campaign.paused",
            EventType::CampaignCompleted => "campaign.completed",
            EventType::EmailSent => "email.sent",
            EventType::EmailOpened => "email.opened",
            EventType::EmailClicked => "email.clicked",
            EventType::EmailReplied => "email.replied",
            EventType::EmailBounced => "email.bounced",
            EventType::LinkedinReplied => "linkedin.replied",
            EventType::MeetingBooked => "meeting.booked",
            EventType::SignalDetected => "signal.detected",
            EventType::NoteCreated => "note.created",
            EventType::JobCompleted => "job.completed",
            EventType::MessageCancelled => "message.cancelled",
            EventType::ContactStatusChanged => "contact.status_changed",
        }
    }

    /// The event a campaign moving to `status` reports, if any (a campaign back in draft has
    /// none).
    pub fn for_campaign_status(status: CampaignStatus) -> Option<EventType> {
        match status {
            CampaignStatus::Active => Some(EventType::CampaignStarted),
            CampaignStatus::Paused => Some(EventType::CampaignPaused),
            CampaignStatus::Completed => Some(EventType::CampaignCompleted),
            CampaignStatus::Draft => None,
        }
    }
}

/// The body every delivery sends: `{"type", "timestamp", "data"}`.
#[derive(Serialize)]
struct Body<'a, T: Serialize> {
    #[serde(rename = "type")]
    event_type: &'static str,
    timestamp: &'a str,
    data: &'a T,
}

/// `msg_` and 32 hex digits of a time-ordered UUID: the `webhook-id` of an event.
fn new_event_id() -> String {
    format!("msg_{}", uuid::Uuid::now_v7().simple())
}

/// Queues `event` with `data` (the record as REST v1 returns it) for every active subscription
/// of `org` that wants it, on `conn`: called inside the transaction of the effect, so the
/// event commits or rolls back with it. Without such a subscription this is one indexed read
/// and nothing is serialised or written.
pub fn emit(
    conn: &Connection,
    org: &str,
    event: EventType,
    data: &impl Serialize,
) -> ApiResult<()> {
    let subscribers = webhooks::subscribers(conn, org, event.as_str())?;
    if subscribers.is_empty() {
        return Ok(());
    }
    let now = chrono::Utc::now();
    let timestamp = to_rfc3339(now);
    let payload = serde_json::to_string(&Body {
        event_type: event.as_str(),
        timestamp: &timestamp,
        data,
    })
    .map_err(ApiError::internal)?;
    let id = new_event_id();
    webhooks::insert_event(
        conn,
        &NewEvent {
            id: &id,
            org,
            event_type: event.as_str(),
            payload: &payload,
            created_at: &timestamp,
            first_attempt_ms: now.timestamp_millis(),
        },
        &subscribers,
    )
}

/// Like [`emit`], building `data` only when some subscription wants the event (for data that
/// costs a read to assemble).
pub fn emit_with<T: Serialize>(
    conn: &Connection,
    org: &str,
    event: EventType,
    data: impl FnOnce() -> ApiResult<Option<T>>,
) -> ApiResult<()> {
    if webhooks::subscribers(conn, org, event.as_str())?.is_empty() {
        return Ok(());
    }
    match data()? {
        Some(d) => emit(conn, org, event, &d),
        None => Ok(()),
    }
}

// ---- the event mapping: which effect reports what (README "Webhooks" lists the same) -------

/// `contact.status_changed` data: the contact as REST v1 returns it, plus its status before.
#[derive(Serialize)]
struct StatusChanged<'a> {
    #[serde(flatten)]
    contact: &'a Contact,
    previous_status: ContactStatus,
}

pub fn contact_created(conn: &Connection, org: &str, contact: &Contact) -> ApiResult<()> {
    emit(conn, org, EventType::ContactCreated, contact)
}

/// A contact went from `before` to `after`: `contact.updated` when any field but `updated_at`
/// changed, and `contact.status_changed` as well when the status did.
pub fn contact_changed(
    conn: &Connection,
    org: &str,
    before: &Contact,
    after: &Contact,
) -> ApiResult<()> {
    let unchanged = Contact {
        updated_at: after.updated_at.clone(),
        ..before.clone()
    } == *after;
    if unchanged {
        return Ok(());
    }
    emit(conn, org, EventType::ContactUpdated, after)?;
    if before.status != after.status {
        emit(
            conn,
            org,
            EventType::ContactStatusChanged,
            &StatusChanged {
                contact: after,
                previous_status: before.status,
            },
        )?;
    }
    Ok(())
}

/// A contact was changed in place since `before` was read: reads it again (only when a
/// subscription wants `contact.updated` or `contact.status_changed`) and reports the change.
pub fn contact_changed_since(conn: &Connection, org: &str, before: &Contact) -> ApiResult<()> {
    let wanted = [EventType::ContactUpdated, EventType::ContactStatusChanged]
        .into_iter()
        .map(|e| webhooks::subscribers(conn, org, e.as_str()))
        .collect::<ApiResult<Vec<_>>>()?
        .iter()
        .any(|subs| !subs.is_empty());
    if !wanted {
        return Ok(());
    }
    match contacts::get(conn, org, &before.id)? {
        Some(after) => contact_changed(conn, org, before, &after),
        None => Ok(()),
    }
}

/// A campaign's status changed: `campaign.started` (to active), `campaign.paused` or
/// `campaign.completed`, with the campaign as it is now.
pub fn campaign_status_changed(
    conn: &Connection,
    org: &str,
    from: CampaignStatus,
    campaign: &Campaign,
) -> ApiResult<()> {
    match EventType::for_campaign_status(campaign.status) {
        Some(event) if campaign.status != from => emit(conn, org, event, campaign),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{orgs, test_store, webhooks::AVAILABLE_EVENTS};

    #[test]
    fn event_types_are_the_available_events() {
        let names: Vec<&str> = EventType::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(names, AVAILABLE_EVENTS);
    }

    #[test]
    fn emit_writes_only_for_subscribers_and_rolls_back_with_the_effect() {
        let (_dir, store) = test_store();
        let hook = store
            .write_sync(|tx| {
                orgs::create(tx, &orgs::NewOrg::named("acme"))?;
                webhooks::insert(
                    tx,
                    "acme",
                    "https://a.example",
                    &["note.created".into()],
                    "s",
                )
            })
            .unwrap();
        let count = |s: &crate::store::Store| {
            s.read_sync(|c| {
                Ok(c.query_row("SELECT count(*) FROM webhook_events", [], |r| {
                    r.get::<_, i64>(0)
                })?)
            })
            .unwrap()
        };
        store
            .write_sync(|tx| emit(tx, "acme", EventType::ContactCreated, &"x"))
            .unwrap();
        assert_eq!(count(&store), 0, "no subscriber wants contact.created");
        let failed: ApiResult<()> = store.write_sync(|tx| {
            emit(
                tx,
                "acme",
                EventType::NoteCreated,
                &serde_json::json!({"id": "n1"}),
            )?;
            Err(ApiError::validation("x", "the effect failed"))
        });
        assert!(failed.is_err());
        assert_eq!(count(&store), 0, "the event rolled back with its effect");
        store
            .write_sync(|tx| {
                emit(
                    tx,
                    "acme",
                    EventType::NoteCreated,
                    &serde_json::json!({"id": "n1"}),
                )
            })
            .unwrap();
        let (id, payload, webhook_id): (String, String, String) = store
            .read_sync(|c| {
                Ok(c.query_row(
                    "SELECT e.id, e.payload, d.webhook_id FROM webhook_events e
                       JOIN webhook_deliveries d ON d.event_id = e.id",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?)
            })
            .unwrap();
        assert!(id.starts_with("msg_") && id.len() == 36, "{id}");
        assert_eq!(webhook_id, hook.id);
        let body: serde_json::Value = serde_json::from_str(&payload).unwrap();
        let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["type", "timestamp", "data"]);
        assert_eq!(body["type"], "note.created");
        assert_eq!(body["data"]["id"], "n1");
    }
}
