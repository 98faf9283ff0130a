//! Background work of the embedded backend: delivering queued messages once their hold expires,
//! and running research and enrichment jobs. Both poll the database, so work queued before a
//! restart is picked up after it.

use std::time::Duration;

use serde_json::{json, Value};

use crate::domain::ContactStatus;
use crate::error::ApiResult;
use crate::ids::{now_rfc3339, to_rfc3339};
use crate::store::interactions::{self, ActivityFilter, NewInteraction};
use crate::store::signals::{self, SignalFilter};
use crate::store::{companies, contacts, native as rows, PageRequest, Store};
use crate::webhooks::{self, EventType};

/// How often the workers look for due work.
const TICK: Duration = Duration::from_millis(250);
/// Writes after which a checkpoint runs even without a quiet moment (a few tens of MB of WAL).
const CHECKPOINT_AFTER_WRITES: u64 = 2_000;
/// Jobs wait this long before they start, so `undo_last` can still cancel them.
pub const JOB_HOLD: Duration = Duration::from_secs(3);

/// Spawns the worker loop; it ends when `shutdown` fires.
pub fn spawn(
    store: Store,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen_generation = store.generation();
        let mut checkpointed_generation = seen_generation;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            // A checkpoint fsyncs the WAL, and on ext4 a commit appending to the WAL meanwhile
            // waits for that fsync (~10 ms here, seen as write stalls in benches/latency.rs).
            // So checkpoints wait for a quiet tick, unless too many writes piled up.
            let generation = store.generation();
            let quiet = generation == seen_generation;
            seen_generation = generation;
            let pending = generation - checkpointed_generation;
            if pending > 0 && (quiet || pending >= CHECKPOINT_AFTER_WRITES) {
                checkpointed_generation = generation;
                let store = store.clone();
                match tokio::task::spawn_blocking(move || store.checkpoint_sync()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "WAL checkpoint failed"),
                    Err(e) => tracing::warn!(error = %e, "WAL checkpoint task failed"),
                }
            }
            if let Err(e) = deliver_if_due(&store).await {
                tracing::warn!(error = %e, "outbox delivery failed");
            }
            if let Err(e) = run_due_jobs(&store).await {
                tracing::warn!(error = %e, "job run failed");
            }
        }
    })
}

/// Delivers due messages, opening a write transaction only when there are some: every commit
/// bumps the store's write generation and so empties the native read cache.
async fn deliver_if_due(store: &Store) -> ApiResult<()> {
    let now = now_rfc3339();
    let any_due = store
        .read(move |c| Ok(!rows::due_outbox(c, &now, 1)?.is_empty()))
        .await?;
    if any_due {
        store.write(|tx| deliver_due_messages(tx)).await?;
    }
    Ok(())
}

/// Marks due messages sent and records them as outbound interactions.
pub fn deliver_due_messages(conn: &rusqlite::Connection) -> ApiResult<usize> {
    let due = rows::due_outbox(conn, &now_rfc3339(), 100)?;
    let mut n = 0;
    for (org, m) in due {
        if !rows::mark_sent(conn, &m.id)? {
            continue;
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
        if let Some(cid) = &m.contact_id {
            if let Some(c) = contacts::get(conn, &org, cid)? {
                if c.status == ContactStatus::New {
                    contacts::set_status(conn, &org, cid, ContactStatus::Contacted)?;
                    webhooks::contact_changed_since(conn, &org, &c)?;
                }
            }
        }
        n += 1;
    }
    Ok(n)
}

async fn run_due_jobs(store: &Store) -> ApiResult<()> {
    let cutoff =
        to_rfc3339(chrono::Utc::now() - chrono::Duration::from_std(JOB_HOLD).unwrap_or_default());
    let due = store.read(move |c| rows::due_jobs(c, &cutoff, 20)).await?;
    for (org, job) in due {
        // The work (several queries) runs on a reader; only the short update holds the writer,
        // so a job never makes a voice turn's write wait.
        let (o, j) = (org.clone(), job.clone());
        let prepared = store.read(move |c| prepare_job(c, &o, &j)).await?;
        store
            .write(move |tx| apply_job(tx, &org, &job, prepared))
            .await?;
    }
    Ok(())
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
    })
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
