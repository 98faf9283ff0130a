//! The 17 actions against the upstream backend (`backend = "upstream"`): one turn's view of the
//! upstream, the HTTP helpers every action shares, and the dispatch of plans and executions to
//! the concerns that hold them: [`resolve`] (references), [`reads`], [`writes`] and [`undo`].
//! Answers are rendered by the same functions as in embedded mode, so both modes sound alike.
//!
//! Independent upstream calls run concurrently; every call shares the turn's deadline.

mod reads;
mod resolve;
mod undo;
mod writes;

pub use self::undo::undo;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use self::resolve::{campaign, contact, optional_contact};
use super::action::Action;
use super::actions::{
    campaigns as campaign_actions, contacts as contact_actions, jobs, messages, reply, Executed,
};
use super::plan::{Plan, Step};
use super::reply::{NativeReply, ReplyMode};
use crate::domain::CampaignStatus;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::upstream::{Deadline, Upstream};

/// One turn's view of the upstream: the client, the caller's key and the turn's deadline.
pub struct Remote<'a> {
    pub up: &'a Upstream,
    pub token: &'a str,
    pub deadline: Deadline,
}

/// The idempotency key sent upstream with a write: the same for every retry of one logical
/// write by one key, distinct between keys, and of fixed length whatever the client sent.
pub fn effect_key(key_id: &str, effect: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(key_id.as_bytes())
        .chain_update(b":")
        .chain_update(effect.as_bytes())
        .finalize();
    format!("pb_{}", hex::encode(&digest[..16]))
}

/// Who is acting, for execution against the upstream.
pub struct RemoteCtx<'a> {
    /// The idempotency key sent upstream with the write, stable across retries of the same
    /// logical write, so a retry after a lost answer cannot apply it twice.
    pub effect_key: &'a str,
}

impl Remote<'_> {
    async fn get(
        &self,
        op: &'static str,
        path: &str,
        query: &[(&str, String)],
    ) -> ApiResult<Value> {
        self.up
            .get(op, self.token, path, query, self.deadline)
            .await
    }

    /// A list endpoint's items and `meta.total`.
    async fn list<T: DeserializeOwned>(
        &self,
        op: &'static str,
        path: &str,
        query: &[(&str, String)],
    ) -> ApiResult<(Vec<T>, u64)> {
        let v = self.get(op, path, query).await?;
        let items: Vec<T> = data(&v, op)?;
        let total = v
            .pointer("/meta/total")
            .and_then(Value::as_u64)
            .unwrap_or(items.len() as u64);
        Ok((items, total))
    }

    /// One record, `None` when the upstream says 404.
    async fn one<T: DeserializeOwned>(&self, op: &'static str, path: &str) -> ApiResult<Option<T>> {
        match self.get(op, path, &[]).await {
            Ok(v) => data(&v, op).map(Some),
            Err(e) if e.code == ErrorCode::ResourceNotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn send(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        body: &Value,
    ) -> ApiResult<Value> {
        self.up
            .send(op, method, self.token, path, body, self.deadline)
            .await
    }
}

/// The `data` of an upstream envelope as `T`.
fn data<T: DeserializeOwned>(v: &Value, op: &str) -> ApiResult<T> {
    let d = v.get("data").cloned().unwrap_or(Value::Null);
    serde_json::from_value(d).map_err(|e| unexpected_shape(op, e))
}

fn unexpected_shape(op: &str, e: serde_json::Error) -> ApiError {
    ApiError::new(
        ErrorCode::UpstreamUnavailable,
        "Upstream CRM sent an answer of an unexpected shape",
    )
    .with_details(format!("{op}: {e}"))
}

fn q(k: &'static str, v: impl ToString) -> (&'static str, String) {
    (k, v.to_string())
}

// ---- planning ---------------------------------------------------------------------------

/// Resolves an action's references and answers reads, as `actions::plan` does on SQLite.
///
/// A key may hold the `native` scope without `contacts` or `campaigns` (the usual voice key):
/// the REST reads it cannot make are then answered by the upstream's native endpoint instead,
/// which that key may use.
pub async fn plan(r: &Remote<'_>, action: &Action, action_json: &Value) -> ApiResult<Step> {
    match plan_with_rest(r, action).await {
        Err(e) if e.code == ErrorCode::ScopeDenied && action.is_read() => {
            let answer = ask_native(r, "native.read", action_json.clone(), false, None).await?;
            Ok(Step::Reply(answer))
        }
        other => other,
    }
}

async fn plan_with_rest(r: &Remote<'_>, action: &Action) -> ApiResult<Step> {
    match action {
        Action::LookupPerson(a) => reads::lookup_person(r, a).await,
        Action::LookupCompany(a) => reads::lookup_company(r, a).await,
        Action::RecentSignals(a) => reads::recent_signals(r, a).await,
        Action::ReplyInbox(a) => reads::reply_inbox(r, a).await,
        Action::CampaignStats(a) => reads::campaign_stats(r, a).await,
        Action::AddToCampaign(a) => writes::plan_add_to_campaign(r, a).await,
        Action::RemoveFromCampaign(a) => writes::plan_remove_from_campaign(r, a).await,
        Action::PauseCampaign(a) | Action::ResumeCampaign(a) => {
            let to = if matches!(action, Action::PauseCampaign(_)) {
                CampaignStatus::Paused
            } else {
                CampaignStatus::Active
            };
            match campaign(r, a.campaign.as_deref()).await? {
                Ok(c) => campaign_actions::switch_step(c, to),
                Err(clarification) => reply(clarification),
            }
        }
        Action::DraftMessage(a) => {
            match contact(r, a.contact.as_deref(), a.company.as_deref()).await? {
                Ok(c) => Ok(messages::draft_step(c, a)),
                Err(clarification) => reply(clarification),
            }
        }
        Action::SendMessage(a) => writes::plan_send_message(r, a).await,
        Action::BookMeeting(a) => {
            match contact(r, a.contact.as_deref(), a.company.as_deref()).await? {
                Ok(c) => contact_actions::meeting_step(c, a),
                Err(clarification) => reply(clarification),
            }
        }
        Action::MarkStatus(a) => {
            match contact(r, a.contact.as_deref(), a.company.as_deref()).await? {
                Ok(c) => contact_actions::status_step(c, a),
                Err(clarification) => reply(clarification),
            }
        }
        Action::NoteOnContact(a) => {
            match contact(r, a.contact.as_deref(), a.company.as_deref()).await? {
                Ok(contact) => Ok(Step::Execute(Plan::NoteOnContact {
                    contact,
                    note: a.note.clone().unwrap_or_default().trim().to_string(),
                })),
                Err(clarification) => reply(clarification),
            }
        }
        Action::StartResearch(a) => {
            match optional_contact(r, a.contact.as_deref(), a.company.as_deref()).await? {
                Ok(c) => Ok(jobs::research_step(c, a)),
                Err(clarification) => reply(clarification),
            }
        }
        Action::EnrichContact(a) => {
            match contact(r, a.contact.as_deref(), a.company.as_deref()).await? {
                Ok(contact) => Ok(Step::Execute(Plan::EnrichContact { contact })),
                Err(clarification) => reply(clarification),
            }
        }
        Action::UndoLast(_) => Ok(Step::Execute(Plan::UndoLast)),
    }
}

// ---- execution --------------------------------------------------------------------------

/// Runs a confirmed (or harmless) plan upstream. `UndoLast` is the caller's: the undo stack
/// lives in the gateway.
pub async fn execute(r: &Remote<'_>, ctx: &RemoteCtx<'_>, plan: Plan) -> ApiResult<Executed> {
    match plan {
        Plan::AddToCampaign { contact, campaign } => {
            writes::add_to_campaign(r, ctx, contact, campaign).await
        }
        Plan::RemoveFromCampaign { contact, campaign } => {
            writes::remove_from_campaign(r, ctx, contact, campaign).await
        }
        Plan::SetCampaignStatus { campaign, to } => {
            writes::set_campaign_status(r, ctx, campaign, to).await
        }
        Plan::MarkStatus { contact, status } => writes::mark_status(r, ctx, contact, status).await,
        Plan::NoteOnContact { contact, note } => {
            writes::note_on_contact(r, ctx, contact, note).await
        }
        Plan::DraftMessage {
            contact,
            channel,
            subject,
            instructions,
            ..
        } => writes::draft_message(r, ctx, contact, channel, subject, instructions).await,
        Plan::ReviewMessage {
            contact,
            channel,
            subject,
            body,
            draft_id,
        }
        | Plan::SendMessage {
            contact,
            channel,
            subject,
            body,
            draft_id,
        } => writes::send_message(r, ctx, contact, channel, subject, body, draft_id).await,
        Plan::BookMeeting {
            contact,
            start_time,
            duration_minutes,
            title,
        } => writes::book_meeting(r, ctx, contact, start_time, duration_minutes, title).await,
        Plan::StartResearch {
            contact,
            company,
            topic,
        } => writes::start_research(r, ctx, contact, company, topic).await,
        Plan::EnrichContact { contact } => writes::enrich_contact(r, ctx, contact).await,
        Plan::UndoLast => Err(ApiError::internal("remote::execute got undo_last")),
    }
}

// ---- the upstream's native endpoint -------------------------------------------------------

/// Sends an action the gateway resolved and confirmed to the upstream's native endpoint, as a
/// one-step confirmed write with the gateway's effect key, and takes its answer as ours.
async fn forward(r: &Remote<'_>, effect_key: &str, action: Value) -> ApiResult<NativeReply> {
    ask_native(r, "native.forward", action, true, Some(effect_key)).await
}

/// Sends `action` to the upstream's own native endpoint in fast mode and reads its answer as a
/// reply of ours; `confirmed` runs a dangerous action in one step, `idempotency_key` names it.
async fn ask_native(
    r: &Remote<'_>,
    op: &'static str,
    action: Value,
    confirmed: bool,
    idempotency_key: Option<&str>,
) -> ApiResult<NativeReply> {
    let mut body = json!({ "action": action, "executionMode": "fast" });
    if let Value::Object(m) = &mut body {
        if confirmed {
            m.insert("confirmed".into(), Value::Bool(true));
        }
        if let Some(k) = idempotency_key {
            m.insert("idempotencyKey".into(), k.into());
        }
    }
    let v = r
        .send(op, Method::POST, "/native/outreachpilot", &body)
        .await?;
    native_reply(&v)
}

/// Reads an upstream native envelope's `data` into a reply of ours.
fn native_reply(v: &Value) -> ApiResult<NativeReply> {
    let d = v.get("data").unwrap_or(&Value::Null);
    let mode = match d.get("mode").and_then(Value::as_str) {
        Some("queued") => ReplyMode::Queued,
        Some("confirmation_required") => ReplyMode::ConfirmationRequired,
        Some("clarification_required") => ReplyMode::ClarificationRequired,
        // "duplicate" is the upstream replaying our own earlier attempt of this same write.
        _ => ReplyMode::Result,
    };
    let spoken = d
        .get("spoken_summary")
        .and_then(Value::as_str)
        .unwrap_or("Done.");
    let mut reply = NativeReply::new(mode, spoken, d.get("data").cloned().unwrap_or(Value::Null));
    if let Some(Value::Object(ids)) = d.get("ids") {
        reply.ids = ids.clone();
    }
    if let Some(candidates) = d.get("candidates") {
        reply.candidates = serde_json::from_value(candidates.clone()).unwrap_or_default();
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_replies_from_upstream_become_ours() {
        let v = json!({"ok": true, "data": {"mode": "duplicate", "spoken_summary": "Noted on Sarah Chen.",
                        "data": {"x": 1}, "ids": {"note_id": "n1"}}});
        let r = native_reply(&v).unwrap();
        assert_eq!(r.mode, ReplyMode::Result);
        assert_eq!(r.spoken_summary, "Noted on Sarah Chen.");
        assert_eq!(r.ids.get("note_id"), Some(&json!("n1")));
    }
}
