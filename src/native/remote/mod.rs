//! The 17 actions against the upstream backend (`backend = "upstream"`): one turn's view of the
//! upstream, the HTTP helpers every action shares, and the dispatch of plans and executions to
//! the concerns that hold them: [`resolve`] (references), [`reads`], [`writes`] and [`undo`].
//! Answers are rendered by the same functions as in embedded mode, so both modes sound alike.
//!
//! Independent upstream calls run concurrently; every call shares the turn's deadline.

mod reads;
mod resolve;
mod undo;
mod wire;
mod writes;

pub use self::undo::undo;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use self::resolve::{campaign, contact, optional_contact};
use self::wire::{Envelope, ListEnvelope, NativeAnswer, NativeRequest, UpstreamAction};
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
    /// `GET path?query`, its answer parsed as `T`.
    async fn get<T: DeserializeOwned>(
        &self,
        op: &'static str,
        path: &str,
        query: &[(&str, String)],
    ) -> ApiResult<T> {
        let answer = self
            .up
            .get(op, self.token, path, query, self.deadline)
            .await?;
        parse(answer, op)
    }

    /// A list endpoint's items and `meta.total`.
    async fn list<T: DeserializeOwned>(
        &self,
        op: &'static str,
        path: &str,
        query: &[(&str, String)],
    ) -> ApiResult<(Vec<T>, u64)> {
        let page: ListEnvelope<T> = self.get(op, path, query).await?;
        let total = page.meta.total.unwrap_or(page.data.len() as u64);
        Ok((page.data, total))
    }

    /// One record, `None` when the upstream says 404.
    async fn one<T: DeserializeOwned>(&self, op: &'static str, path: &str) -> ApiResult<Option<T>> {
        match self.get::<Envelope<T>>(op, path, &[]).await {
            Ok(found) => Ok(Some(found.data)),
            Err(e) if e.code == ErrorCode::ResourceNotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A write with a JSON body, its answer parsed as `T`.
    async fn send<T: DeserializeOwned>(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        body: &(impl Serialize + ?Sized),
    ) -> ApiResult<T> {
        let answer = self
            .up
            .send(op, method, self.token, path, body, self.deadline)
            .await?;
        parse(answer, op)
    }
}

/// An upstream answer as `T`, or `UPSTREAM_UNAVAILABLE` when it does not have that shape.
fn parse<T: DeserializeOwned>(answer: Value, op: &str) -> ApiResult<T> {
    serde_json::from_value(answer).map_err(|e| unexpected_shape(op, e))
}

/// A part of an upstream answer already parsed (such as a native answer's `data`) read as `T`,
/// or `UPSTREAM_UNAVAILABLE` when it does not have that shape.
fn parse_part<T: DeserializeOwned>(part: &Value, op: &str) -> ApiResult<T> {
    T::deserialize(part).map_err(|e| unexpected_shape(op, e))
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
            let answer = ask_native(r, "native.read", action_json, false, None).await?;
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
        } => {
            let action = UpstreamAction::DraftMessage {
                contact_id: &contact.id,
                channel,
                subject: subject.as_deref(),
                instructions: instructions.as_deref(),
            };
            writes::forwarded(r, ctx, &action, Some("the draft")).await
        }
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
        } => {
            // An empty body means "the draft's text", which the upstream fills in.
            let action = UpstreamAction::SendMessage {
                contact_id: &contact.id,
                channel,
                subject: subject.as_deref(),
                body: &body,
                draft_id: draft_id.as_deref(),
            };
            writes::forwarded(r, ctx, &action, Some("the message")).await
        }
        Plan::BookMeeting {
            contact,
            start_time,
            duration_minutes,
            title,
        } => {
            let action = UpstreamAction::BookMeeting {
                contact_id: &contact.id,
                start_time: &start_time,
                duration_minutes,
                title: &title,
            };
            // Booked meetings involve another person's calendar: not undoable (DESIGN §5).
            writes::forwarded(r, ctx, &action, None).await
        }
        Plan::StartResearch {
            contact,
            company,
            topic,
        } => {
            let action = UpstreamAction::StartResearch {
                contact_id: contact.as_ref().map(|c| c.id.as_str()),
                company: company.as_deref(),
                topic: topic.as_deref(),
            };
            writes::forwarded(r, ctx, &action, Some("the research")).await
        }
        Plan::EnrichContact { contact } => {
            let action = UpstreamAction::EnrichContact {
                contact_id: &contact.id,
            };
            writes::forwarded(r, ctx, &action, Some("the enrichment")).await
        }
        Plan::UndoLast => Err(ApiError::internal("remote::execute got undo_last")),
    }
}

// ---- the upstream's native endpoint -------------------------------------------------------

/// Sends an action the gateway resolved and confirmed to the upstream's native endpoint, as a
/// one-step confirmed write with the gateway's effect key, and takes its answer as ours.
async fn forward(
    r: &Remote<'_>,
    effect_key: &str,
    action: &UpstreamAction<'_>,
) -> ApiResult<NativeReply> {
    ask_native(r, "native.forward", action, true, Some(effect_key)).await
}

/// Sends `action` to the upstream's own native endpoint in fast mode and reads its answer as a
/// reply of ours; `confirmed` runs a dangerous action in one step, `idempotency_key` names it.
async fn ask_native(
    r: &Remote<'_>,
    op: &'static str,
    action: &(impl Serialize + ?Sized),
    confirmed: bool,
    idempotency_key: Option<&str>,
) -> ApiResult<NativeReply> {
    let request = NativeRequest {
        action,
        execution_mode: "fast",
        confirmed,
        idempotency_key,
    };
    let answer: Envelope<NativeAnswer> = r
        .send(op, Method::POST, "/native/outreachpilot", &request)
        .await?;
    Ok(native_reply(answer.data))
}

/// An upstream native answer as a reply of ours.
fn native_reply(answer: NativeAnswer) -> NativeReply {
    let mode = match answer.mode {
        // The upstream replaying our own earlier attempt of this same write: to our caller it
        // is this turn's result (the gateway keeps its own replay record).
        ReplyMode::Duplicate => ReplyMode::Result,
        other => other,
    };
    let mut reply = NativeReply::new(mode, answer.spoken_summary, answer.data);
    reply.ids = answer.ids;
    reply.candidates = answer.candidates;
    reply
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn answer(v: Value) -> ApiResult<NativeReply> {
        let envelope: Envelope<NativeAnswer> = parse(v, "native.test")?;
        Ok(native_reply(envelope.data))
    }

    #[test]
    fn native_replies_from_upstream_become_ours() {
        let v = json!({"ok": true, "data": {"mode": "duplicate", "spoken_summary": "Noted on Sarah Chen.",
                        "data": {"x": 1}, "ids": {"note_id": "n1"}}});
        let r = answer(v).unwrap();
        assert_eq!(r.mode, ReplyMode::Result);
        assert_eq!(r.spoken_summary, "Noted on Sarah Chen.");
        assert_eq!(r.data, json!({"x": 1}));
        assert_eq!(r.ids.get("note_id"), Some(&json!("n1")));
    }

    #[test]
    fn upstream_clarifications_keep_their_candidates() {
        let v = json!({"ok": true, "data": {"mode": "clarification_required",
            "spoken_summary": "Which Sarah?", "data": {},
            "candidates": [{"id": "c1", "name": "Sarah Chen", "company": "Notion", "title": null}]}});
        let r = answer(v).unwrap();
        assert_eq!(r.mode, ReplyMode::ClarificationRequired);
        assert_eq!(r.candidates.len(), 1);
        assert_eq!(r.candidates[0].name, "Sarah Chen");
    }

    #[test]
    fn native_answers_of_another_shape_are_upstream_unavailable() {
        for v in [
            json!({"ok": true}),
            json!({"ok": true, "data": {"spoken_summary": "No mode."}}),
            json!({"ok": true, "data": {"mode": "finished", "spoken_summary": "Unknown mode."}}),
            json!({"ok": true, "data": {"mode": "result"}}),
            json!({"ok": true, "data": {"mode": "result", "spoken_summary": "x", "candidates": [{"id": 1}]}}),
        ] {
            let e = answer(v.clone()).unwrap_err();
            assert_eq!(e.code, ErrorCode::UpstreamUnavailable, "{v}");
            assert_eq!(e.status(), 502, "{v}");
        }
    }

    #[test]
    fn list_totals_come_from_meta_or_the_page() {
        let page: ListEnvelope<u32> =
            parse(json!({"data": [1, 2], "meta": {"total": 9}}), "list.test").unwrap();
        assert_eq!(page.meta.total, Some(9));
        let page: ListEnvelope<u32> = parse(json!({"data": [1, 2]}), "list.test").unwrap();
        assert_eq!(page.meta.total, None);
        let e = parse::<ListEnvelope<u32>>(json!({"data": {"not": "a list"}}), "list.test")
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::UpstreamUnavailable);
    }
}
