//! The 17 actions, one file per family: `plan_*` resolves references on a read connection and
//! either answers (reads, clarifications, no-ops) or returns a [`Plan`]; `execute` runs a plan
//! inside the write transaction and says how to undo it.

pub mod campaigns;
pub mod contacts;
pub mod jobs;
pub mod lookup;
pub mod messages;
pub mod undo_last;

#[cfg(test)]
mod sentence_tests;

use rusqlite::Connection;
use serde_json::json;

use super::action::Action;
use super::plan::{Plan, Step};
use super::reply::{NativeReply, ReplyMode};
use super::resolve::{self, Ambiguity, Resolved};
use super::speech;
use super::undo::UndoOp;
use crate::error::ApiResult;
use crate::store::campaigns::Campaign;
use crate::store::contacts::Contact;

/// Who is acting, for execution.
pub struct ExecCtx<'a> {
    pub org: &'a str,
    pub key_id: &'a str,
    pub outbox_hold_secs: u64,
    pub undo_window_secs: u64,
}

/// A plan's effect: the reply and, when undoable, how to undo it (with a short summary).
pub struct Executed {
    pub reply: NativeReply,
    pub undo: Option<(String, UndoOp)>,
}

/// Resolves an action's references and answers reads.
pub fn plan(conn: &Connection, org: &str, action: &Action) -> ApiResult<Step> {
    match action {
        Action::LookupPerson(a) => lookup::lookup_person(conn, org, a),
        Action::LookupCompany(a) => lookup::lookup_company(conn, org, a),
        Action::RecentSignals(a) => lookup::recent_signals(conn, org, a),
        Action::ReplyInbox(a) => lookup::reply_inbox(conn, org, a),
        Action::CampaignStats(a) => campaigns::stats(conn, org, a),
        Action::AddToCampaign(a) => campaigns::plan_add(conn, org, a),
        Action::RemoveFromCampaign(a) => campaigns::plan_remove(conn, org, a),
        Action::PauseCampaign(a) => campaigns::plan_pause(conn, org, a),
        Action::ResumeCampaign(a) => campaigns::plan_resume(conn, org, a),
        Action::DraftMessage(a) => messages::plan_draft(conn, org, a),
        Action::SendMessage(a) => messages::plan_send(conn, org, a),
        Action::BookMeeting(a) => contacts::plan_meeting(conn, org, a),
        Action::MarkStatus(a) => contacts::plan_status(conn, org, a),
        Action::NoteOnContact(a) => contacts::plan_note(conn, org, a),
        Action::StartResearch(a) => jobs::plan_research(conn, org, a),
        Action::EnrichContact(a) => jobs::plan_enrich(conn, org, a),
        Action::UndoLast(_) => Ok(Step::Execute(Plan::UndoLast)),
    }
}

/// Runs a plan inside the caller's write transaction.
pub fn execute(conn: &Connection, ctx: &ExecCtx<'_>, plan: Plan) -> ApiResult<Executed> {
    match plan {
        Plan::AddToCampaign { contact, campaign } => {
            campaigns::execute_add(conn, ctx, contact, campaign)
        }
        Plan::RemoveFromCampaign { contact, campaign } => {
            campaigns::execute_remove(conn, ctx, contact, campaign)
        }
        Plan::SetCampaignStatus { campaign, to } => {
            campaigns::execute_set_status(conn, ctx, campaign, to)
        }
        Plan::DraftMessage { .. } | Plan::ReviewMessage { .. } | Plan::SendMessage { .. } => {
            messages::execute(conn, ctx, plan)
        }
        Plan::BookMeeting { .. } | Plan::MarkStatus { .. } | Plan::NoteOnContact { .. } => {
            contacts::execute(conn, ctx, plan)
        }
        Plan::StartResearch { .. } | Plan::EnrichContact { .. } => jobs::execute(conn, ctx, plan),
        Plan::UndoLast => undo_last::execute(conn, ctx),
    }
}

/// A resolved contact, or the clarification reply to send instead.
pub(crate) fn contact_or_clarify(
    conn: &Connection,
    org: &str,
    reference: Option<&str>,
    company: Option<&str>,
) -> ApiResult<Result<Contact, NativeReply>> {
    let reference = reference.unwrap_or("").trim();
    match resolve::contact(conn, org, reference, company)? {
        Resolved::One(c) => Ok(Ok(c)),
        Resolved::Ambiguous(candidates) => Ok(Err(clarify("contactRef", reference, candidates))),
    }
}

/// Like [`contact_or_clarify`] for actions where the contact is optional: `Ok(None)` when no
/// reference was given.
pub(crate) fn optional_contact(
    conn: &Connection,
    org: &str,
    reference: Option<&str>,
    company: Option<&str>,
) -> ApiResult<Result<Option<Contact>, NativeReply>> {
    match reference.filter(|r| !r.trim().is_empty()) {
        None => Ok(Ok(None)),
        Some(r) => Ok(contact_or_clarify(conn, org, Some(r), company)?.map(Some)),
    }
}

pub(crate) fn campaign_or_clarify(
    conn: &Connection,
    org: &str,
    reference: Option<&str>,
) -> ApiResult<Result<Campaign, NativeReply>> {
    let reference = reference.unwrap_or("").trim();
    match resolve::campaign(conn, org, reference)? {
        Resolved::One(c) => Ok(Ok(c)),
        Resolved::Ambiguous(candidates) => Ok(Err(clarify("campaignRef", reference, candidates))),
    }
}

/// "Which Sarah do you mean: Sarah Chen at Notion or Sarah Kim at Figma?" — or, when more fit
/// than are offered, "There are 7 people called Uma; the first five are …. Which one?"
/// `data.total_candidates` says how many fit; `candidates` holds the ones named.
pub(crate) fn clarify(field: &str, query: &str, found: Ambiguity) -> NativeReply {
    let Ambiguity { candidates, total } = found;
    let kind = match field {
        "contactRef" => ("person", "people"),
        "campaignRef" => ("campaign", "campaigns"),
        _ => ("company", "companies"),
    };
    let echoed = speech::echo(query);
    let question = |with_company: bool| {
        let options: Vec<String> = candidates
            .iter()
            .map(|c| match &c.company {
                Some(co) if with_company && field == "contactRef" => {
                    format!("{} at {}", speech::name(&c.name), speech::name(co))
                }
                _ => speech::name(&c.name),
            })
            .collect();
        let joined = match options.as_slice() {
            [a, b] => format!("{a} or {b}"),
            _ => {
                let (last, rest) = options
                    .split_last()
                    .map(|(l, r)| (l.clone(), r.to_vec()))
                    .unwrap_or_default();
                format!("{}, or {}", rest.join(", "), last)
            }
        };
        if total > candidates.len() {
            let called = echoed
                .as_ref()
                .map(|q| format!(" called {q}"))
                .unwrap_or_else(|| " that fit".to_string());
            format!(
                "There are {total} {}{called}; the first {} are {joined}. Which one do you mean?",
                kind.1,
                speech::number_word(candidates.len())
            )
        } else {
            match &echoed {
                Some(q) => format!("Which {q} do you mean: {joined}?"),
                None => format!("Which {} do you mean: {joined}?", kind.0),
            }
        }
    };
    // Companies help tell people apart, but the whole question must fit in one summary.
    let mut spoken = question(true);
    if spoken.chars().count() > speech::MAX_SPOKEN {
        spoken = question(false);
    }
    let mut reply = NativeReply::new(
        ReplyMode::ClarificationRequired,
        spoken,
        json!({ "field": field, "query": query, "total_candidates": total }),
    );
    reply.candidates = candidates;
    reply
}

/// Shorthand for a finished step.
pub(crate) fn reply(r: NativeReply) -> ApiResult<Step> {
    Ok(Step::Reply(r))
}
