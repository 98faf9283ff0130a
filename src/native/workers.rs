//! Background work of the embedded backend: delivering queued messages once their hold expires,
//! running research and enrichment jobs, and publishing the events (`crate::events`) those and
//! other committed changes left in the event outbox. All poll the database, so work queued
//! before a restart is picked up after it.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::domain::ContactStatus;
use crate::error::ApiResult;
use crate::events::{Event, EventBus, EventKind};
use crate::ids::{now_rfc3339, to_rfc3339};
use crate::store::interactions::{self, ActivityFilter, NewInteraction};
use crate::store::jobs::{self, AfterFailure, RetryPolicy};
use crate::store::signals::{self, SignalFilter};
use crate::store::{companies, contacts, events as event_rows, native as rows, PageRequest, Store};
use crate::webhooks::{self, EventType};

/// How often the workers look for due work.
const TICK: Duration = Duration::from_millis(250);
/// Jobs wait this long before they start, so `undo_last` can still cancel them.
pub const JOB_HOLD: Duration = Duration::from_secs(3);
/// Events published per tick at most (the rest wait for the next tick).
const EVENTS_PER_TICK: usize = 500;
/// Characters of a message body an event carries; the full text is over REST.
const BODY_PREVIEW_CHARS: usize = 500;

/// Spawns the worker loop; it ends when `shutdown` fires.
pub fn spawn(
    store: Store,
    events: Arc<dyn EventBus>,
    retry: RetryPolicy,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            if let Err(e) = deliver_if_due(&store).await {
                tracing::warn!(error = %e, "outbox delivery failed");
            }
            if let Err(e) = run_due_jobs(&store, &retry).await {
                tracing::warn!(error = %e, "job run failed");
            }
            if let Err(e) = publish_waiting_events(&store, events.as_ref()).await {
                tracing::warn!(error = %e, "event publication failed");
            }
        }
    })
}

/// Publishes the events committed since the last tick, then deletes them. Opens a write
/// transaction only when there are some.
pub async fn publish_waiting_events(store: &Store, bus: &dyn EventBus) -> ApiResult<usize> {
    let waiting = store
        .read(|c| event_rows::waiting(c, EVENTS_PER_TICK))
        .await?;
    let Some(last) = waiting.last().map(|(seq, _)| *seq) else {
        return Ok(0);
    };
    let n = waiting.len();
    // Delete first: an event is a notification for open sessions, so losing one to a crash
    // between these two steps is better than announcing it twice after a restart.
    // The event outbox is not something a read answer shows: no org's cache goes stale.
    store
        .write_bookkeeping(move |tx| event_rows::delete_through(tx, last))
        .await?;
    for event in waiting.into_iter().filter_map(|(_, e)| e) {
        bus.publish(event);
    }
    Ok(n)
}

/// "email" or "LinkedIn message", for a stored channel.
fn message_word(channel: &str) -> &'static str {
    match channel {
        "linkedin" => "LinkedIn message",
        _ => "email",
    }
}

/// `message.sent` or `message.cancelled` for a queued message, with a preview of its body.
pub fn message_event(
    kind: EventKind,
    key_id: String,
    message: &rows::OutboxMessage,
    contact: Option<&contacts::Contact>,
) -> Event {
    let word = message_word(&message.channel);
    let to = contact
        .map(|c| format!(" to {}", c.display_name()))
        .unwrap_or_default();
    let spoken_summary = match kind {
        EventKind::MessageCancelled => {
            format!("Your {word}{to} was cancelled before it went out.")
        }
        _ => format!("Your {word}{to} went out."),
    };
    let preview = crate::native::speech::snippet(&message.body, BODY_PREVIEW_CHARS);
    Event {
        kind,
        key_id,
        data: json!({
            "message": {
                "id": message.id,
                "contact_id": message.contact_id,
                "draft_id": message.draft_id,
                "channel": message.channel,
                "subject": message.subject,
                "body_preview": preview,
                "body_truncated": message.body.chars().count() > BODY_PREVIEW_CHARS,
                "status": message.status,
                "created_at": message.created_at,
                "sent_at": message.sent_at,
            },
            "contact": contact.map(|c| json!({ "id": c.id, "name": c.display_name(), "company": c.company })),
        }),
        spoken_summary: crate::native::speech::snippet(&spoken_summary, 200),
    }
}

/// `job.completed` with the job's findings.
fn job_event(
    key_id: String,
    job: &rows::Job,
    result: &Value,
    contact: Option<&contacts::Contact>,
) -> Event {
    let subject = contact
        .map(|c| c.display_name().to_string())
        .or_else(|| job.company.clone())
        .unwrap_or_else(|| "the account".into());
    let spoken = match job.kind.as_str() {
        "enrichment" => {
            let fields: Vec<&str> = result["updated_fields"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if fields.is_empty() {
                format!("I finished enriching {subject}; there was nothing new to add.")
            } else {
                format!(
                    "I finished enriching {subject}: updated {}.",
                    fields.join(" and ").replace('_', " ")
                )
            }
        }
        _ => {
            // The research summary starts with the subject ("Notion: 2 recent signals ...").
            let summary = result["summary"].as_str().unwrap_or("");
            let findings = summary
                .split_once(": ")
                .map(|(_, rest)| rest)
                .unwrap_or(summary);
            format!("Research on {subject} is ready: {findings}")
        }
    };
    Event {
        kind: EventKind::JobCompleted,
        key_id,
        data: json!({
            "job": {
                "id": job.id,
                "kind": job.kind,
                "status": "completed",
                "contact_id": job.contact_id,
                "company": job.company,
                "topic": job.topic,
                "created_at": job.created_at,
            },
            "findings": result,
        }),
        spoken_summary: crate::native::speech::snippet(&spoken, 200),
    }
}

/// Delivers due messages, opening a write transaction only when there are some. Only the orgs
/// whose messages went out have their cached reads dropped.
async fn deliver_if_due(store: &Store) -> ApiResult<()> {
    let now = now_rfc3339();
    let any_due = store
        .read(move |c| Ok(!rows::due_outbox(c, &now, 1)?.is_empty()))
        .await?;
    if any_due {
        let orgs = store
            .write_bookkeeping(|tx| deliver_due_messages(tx))
            .await?;
        for org in orgs {
            store.touched(&org);
        }
    }
    Ok(())
}

/// Marks due messages sent and records them as outbound interactions; returns the orgs whose
/// records changed (once each).
pub fn deliver_due_messages(conn: &rusqlite::Connection) -> ApiResult<Vec<String>> {
    let due = rows::due_outbox(conn, &now_rfc3339(), 100)?;
    let mut orgs: Vec<String> = Vec::new();
    for (org, m) in due {
        if !rows::mark_sent(conn, &m.id)? {
            continue;
        }
        if !orgs.contains(&org) {
            orgs.push(org.clone());
        }
        let sent = interactions::insert(
            conn,
            &org,
            &NewInteraction {
                contact_id: m.contact_id.as_deref(),
                campaign_id: None,
                direction: "outbound",
                channel: &m.channel,
                subject: m.subject.as_deref(),
                content: &m.body,
                metadata: json!({ "message_id": m.id, "source": "native" }),
                is_read: true,
                idempotency_key: None,
                created_at: None,
            },
        )?;
        // The outbound message as `GET /activity` lists it. No event type exists for LinkedIn
        // messages going out.
        if m.channel == "email" {
            webhooks::emit(conn, &org, EventType::EmailSent, &sent)?;
        }
        let contact = match &m.contact_id {
            Some(cid) => contacts::get(conn, &org, cid)?,
            None => None,
        };
        if let Some(c) = &contact {
            if c.status == ContactStatus::New {
                contacts::set_status(conn, &org, &c.id, ContactStatus::Contacted)?;
                webhooks::contact_changed_since(conn, &org, c)?;
            }
        }
        if let Some(key_id) = event_rows::message_owner(conn, &m.id)? {
            let sent = rows::get_outbox(conn, &org, &m.id)?.unwrap_or(m);
            let event = message_event(EventKind::MessageSent, key_id, &sent, contact.as_ref());
            event_rows::enqueue(conn, &event)?;
        }
    }
    Ok(orgs)
}

/// Runs the jobs that are due. One job's failure never stops the others: it is counted against
/// that job, which waits out its backoff (so it cannot hog the queue) and is marked `failed`
/// after its last attempt. Only failing to read the queue at all ends this round early.
async fn run_due_jobs(store: &Store, retry: &RetryPolicy) -> ApiResult<()> {
    let cutoff =
        to_rfc3339(chrono::Utc::now() - chrono::Duration::from_std(JOB_HOLD).unwrap_or_default());
    let now = now_rfc3339();
    let due = store.read(move |c| jobs::due(c, &cutoff, &now, 20)).await?;
    for (org, job) in due {
        let (id, job_org) = (job.id.clone(), org.clone());
        let Err(e) = run_job(store, org, job).await else {
            continue;
        };
        let (policy, err) = (*retry, e.clone());
        let job_id = id.clone();
        match store
            .write_for(&job_org, move |tx| {
                jobs::record_failure(tx, &job_id, &err, &policy)
            })
            .await
        {
            Ok(AfterFailure::RetryAt(at)) => {
                tracing::warn!(job_id = %id, error = %e, retry_at = %at, "job failed; will retry")
            }
            Ok(AfterFailure::Failed) => {
                tracing::error!(job_id = %id, error = %e, "job failed for good")
            }
            Ok(AfterFailure::Gone) => {}
            Err(e2) => tracing::warn!(job_id = %id, error = %e2, "cannot record job failure"),
        }
    }
    Ok(())
}

async fn run_job(store: &Store, org: String, job: rows::Job) -> ApiResult<()> {
    // The work (several queries) runs on a reader; only the short update holds the writer,
    // so a job never makes a voice turn's write wait.
    let (o, j) = (org.clone(), job.clone());
    let prepared = store.read(move |c| prepare_job(c, &o, &j)).await?;
    store
        .write_for(&org.clone(), move |tx| apply_job(tx, &org, &job, prepared))
        .await
}

/// What a job produced, computed without writing anything.
pub struct PreparedJob {
    result: Value,
    /// The contact fields an enrichment overwrites, kept so `undo_last` can restore them.
    previous: Option<Value>,
    /// (contact id, company, account id) to write, for an enrichment that found something.
    contact_update: Option<(String, Option<String>, Option<String>)>,
}

/// Computes a job's result on a read connection.
pub fn prepare_job(
    conn: &rusqlite::Connection,
    org: &str,
    job: &rows::Job,
) -> ApiResult<PreparedJob> {
    match job.kind.as_str() {
        "enrichment" => enrich(conn, org, job),
        _ => Ok(PreparedJob {
            result: research(conn, org, job)?,
            previous: None,
            contact_update: None,
        }),
    }
}

/// Claims the job and stores its result in one short transaction; a job cancelled by
/// `undo_last` in the meantime is left alone.
pub fn apply_job(
    conn: &rusqlite::Connection,
    org: &str,
    job: &rows::Job,
    prepared: PreparedJob,
) -> ApiResult<()> {
    if !rows::transition_job(conn, &job.id, "queued", "running")? {
        return Ok(());
    }
    if let Some((contact_id, company, account_id)) = &prepared.contact_update {
        let before = contacts::get(conn, org, contact_id)?;
        conn.execute(
            "UPDATE contacts SET company = ?3, company_norm = ?4, account_id = ?5, updated_at = ?6 WHERE id = ?1 AND org_id = ?2",
            rusqlite::params![
                contact_id,
                org,
                company,
                company.as_deref().map(crate::text::normalize).unwrap_or_default(),
                account_id,
                now_rfc3339()
            ],
        )?;
        if let Some(before) = before {
            webhooks::contact_changed_since(conn, org, &before)?;
        }
    }
    rows::finish_job(
        conn,
        &job.id,
        "completed",
        &prepared.result,
        prepared.previous.as_ref(),
    )?;
    // The job as `GET /jobs/{id}` returns it, with its result.
    webhooks::emit_with(conn, org, EventType::JobCompleted, || {
        rows::get_job(conn, org, &job.id)
    })?;
    if let Some(key_id) = event_rows::job_owner(conn, &job.id)? {
        let contact = match &job.contact_id {
            Some(id) => contacts::get(conn, org, id)?,
            None => None,
        };
        let event = job_event(key_id, job, &prepared.result, contact.as_ref());
        event_rows::enqueue(conn, &event)?;
    }
    Ok(())
}

/// Works out what can be derived locally: the company from the email domain and the account
/// link.
fn enrich(conn: &rusqlite::Connection, org: &str, job: &rows::Job) -> ApiResult<PreparedJob> {
    let Some(contact) = job
        .contact_id
        .as_deref()
        .map(|id| contacts::get(conn, org, id))
        .transpose()?
        .flatten()
    else {
        return Ok(PreparedJob {
            result: json!({ "updated_fields": [], "reason": "contact no longer exists" }),
            previous: None,
            contact_update: None,
        });
    };
    let previous = json!({ "company": contact.company, "account_id": contact.account_id });
    let domain = contact.email.as_deref().and_then(crate::text::email_domain);
    let account = match &domain {
        Some(d) => companies::find_by_domain(conn, org, d)?,
        None => None,
    };
    let company = contact
        .company
        .clone()
        .or_else(|| account.as_ref().and_then(|a| a.name.clone()))
        .or_else(|| {
            domain
                .as_deref()
                .and_then(|d| d.split('.').next())
                .filter(|s| !s.is_empty())
                .map(|stem| {
                    let mut c = stem.chars();
                    c.next()
                        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                        .unwrap_or_default()
                })
        });
    let account_id = contact
        .account_id
        .clone()
        .or_else(|| account.as_ref().map(|a| a.id.clone()));
    let mut updated = Vec::new();
    if company != contact.company {
        updated.push("company");
    }
    if account_id != contact.account_id {
        updated.push("account_id");
    }
    let contact_update =
        (!updated.is_empty()).then(|| (contact.id.clone(), company.clone(), account_id.clone()));
    Ok(PreparedJob {
        result: json!({ "updated_fields": updated, "company": company, "account_id": account_id, "email_domain": domain }),
        previous: Some(previous),
        contact_update,
    })
}

/// A briefing assembled from what the CRM already knows.
fn research(conn: &rusqlite::Connection, org: &str, job: &rows::Job) -> ApiResult<Value> {
    let contact = job
        .contact_id
        .as_deref()
        .map(|id| contacts::get(conn, org, id))
        .transpose()?
        .flatten();
    let company_name = job
        .company
        .clone()
        .or_else(|| contact.as_ref().and_then(|c| c.company.clone()));
    let company = match &company_name {
        Some(n) => match crate::native::resolve::company(conn, org, n) {
            Ok(crate::native::resolve::Resolved::One(c)) => Some(c),
            _ => None,
        },
        None => None,
    };
    let page = PageRequest {
        limit: 5,
        offset: 0,
    };
    let sigs = signals::list(
        conn,
        org,
        &SignalFilter {
            contact_id: contact
                .as_ref()
                .filter(|_| company_name.is_none())
                .map(|c| c.id.clone()),
            company: company_name.clone(),
            ..Default::default()
        },
        page,
    )?
    .items;
    let activity = match &contact {
        Some(c) => {
            interactions::list(
                conn,
                org,
                &ActivityFilter {
                    contact_id: Some(c.id.clone()),
                    ..Default::default()
                },
                page,
            )?
            .items
        }
        None => vec![],
    };
    let subject = contact
        .as_ref()
        .map(|c| c.display_name().to_string())
        .or(company_name.clone())
        .unwrap_or_else(|| "the account".into());
    let summary = format!(
        "{subject}: {} recent signals and {} recent interactions on record.",
        sigs.len(),
        activity.len()
    );
    Ok(json!({
        "summary": summary,
        "topic": job.topic,
        "contact": contact,
        "company": company,
        "signals": sigs,
        "recent_activity": activity,
    }))
}
