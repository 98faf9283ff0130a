//! Queued work: `start_research` and `enrich_contact` create jobs that the background worker
//! (`native::workers`) runs after a short hold, so `undo_last` can still cancel them.

use rusqlite::Connection;
use serde_json::json;

use super::{contact_or_clarify, optional_contact, reply, ExecCtx, Executed};
use crate::error::{ApiError, ApiResult};
use crate::native::action::{ContactOnly, StartResearch};
use crate::native::plan::{Plan, Step};
use crate::native::reply::{NativeReply, ReplyMode};
use crate::native::speech;
use crate::native::undo::UndoOp;
use crate::store::contacts::Contact;
use crate::store::{contacts, native as rows};

pub fn plan_research(conn: &Connection, org: &str, a: &StartResearch) -> ApiResult<Step> {
    let contact = match optional_contact(conn, org, a.contact.as_deref(), a.company.as_deref())? {
        Ok(c) => c,
        Err(clarification) => return reply(clarification),
    };
    Ok(research_step(contact, a))
}

/// Research on a resolved contact and/or a company (the contact's own when none is named).
pub(crate) fn research_step(contact: Option<Contact>, a: &StartResearch) -> Step {
    let company = a
        .company
        .clone()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| contact.as_ref().and_then(|c| c.company.clone()));
    Step::Execute(Plan::StartResearch {
        contact,
        company,
        topic: a.topic.clone(),
    })
}

pub fn plan_enrich(conn: &Connection, org: &str, a: &ContactOnly) -> ApiResult<Step> {
    match contact_or_clarify(conn, org, a.contact.as_deref(), a.company.as_deref())? {
        Ok(contact) => Ok(Step::Execute(Plan::EnrichContact { contact })),
        Err(clarification) => reply(clarification),
    }
}

pub fn execute(conn: &Connection, ctx: &ExecCtx<'_>, plan: Plan) -> ApiResult<Executed> {
    match plan {
        Plan::StartResearch {
            contact,
            company,
            topic,
        } => {
            let contact = match contact {
                Some(c) => Some(contacts::require(conn, ctx.org, &c.id)?),
                None => None,
            };
            let job = rows::insert_job(
                conn,
                ctx.org,
                "research",
                contact.as_ref().map(|c| c.id.as_str()),
                company.as_deref(),
                topic.as_deref(),
            )?;
            crate::store::events::set_job_owner(conn, &job.id, ctx.key_id)?;
            let subject = match (&contact, &company) {
                (Some(c), _) => speech::name(c.display_name()),
                (None, Some(co)) => speech::name(co),
                (None, None) => "that".to_string(),
            };
            let about = topic
                .as_deref()
                .map(|t| format!(" about {}", speech::quote(t, 60)))
                .unwrap_or_default();
            let mut r = NativeReply::new(
                ReplyMode::Queued,
                format!("I started research on {subject}{about}. It will be ready shortly."),
                json!({ "job": job }),
            )
            .with_id("job_id", job.id.clone());
            if let Some(c) = &contact {
                r = r.with_id("contact_id", c.id.clone());
            }
            Ok(Executed {
                reply: r,
                undo: Some((
                    format!("I cancelled the research on {subject}."),
                    UndoOp::CancelJob { job_id: job.id },
                )),
            })
        }
        Plan::EnrichContact { contact } => {
            let contact = contacts::require(conn, ctx.org, &contact.id)?;
            let job = rows::insert_job(
                conn,
                ctx.org,
                "enrichment",
                Some(&contact.id),
                contact.company.as_deref(),
                None,
            )?;
            crate::store::events::set_job_owner(conn, &job.id, ctx.key_id)?;
            let name = speech::name(contact.display_name());
            let r = NativeReply::new(
                ReplyMode::Queued,
                format!("I'm enriching {name}'s details now."),
                json!({ "job": job }),
            )
            .with_id("job_id", job.id.clone())
            .with_id("contact_id", contact.id.clone());
            Ok(Executed {
                reply: r,
                undo: Some((
                    format!("{name}'s details are back to what they were."),
                    UndoOp::RevertEnrichment {
                        job_id: job.id,
                        contact_id: contact.id,
                    },
                )),
            })
        }
        other => Err(ApiError::internal(format!(
            "jobs::execute got {}",
            other.action_type()
        ))),
    }
}
