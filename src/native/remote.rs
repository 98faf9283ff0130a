//! The 17 actions against the upstream backend (`backend = "upstream"`). References are resolved
//! from REST v1 searches with the same matching rules as the embedded store; reads come from the
//! REST v1 endpoints the reference's briefing table names; writes go to the REST endpoint made
//! for them (notes, campaign trigger, `PATCH` campaign, `PUT` contact) or, where REST v1 has
//! none, to the upstream's own native endpoint as an action the gateway already confirmed.
//! Answers are rendered by the same functions as in embedded mode, so both modes sound alike.
//!
//! Independent upstream calls run concurrently; every call shares the turn's deadline.

use std::collections::HashSet;

use futures_util::future::join_all;
use reqwest::Method;
// Every id placed in an upstream path goes through this (ids come from clients and from
// upstream data alike).
use crate::upstream::path_segment as seg;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use super::action::{Action, ContactCampaign};
use super::actions::{
    campaigns as campaign_actions, clarify, contacts as contact_actions, jobs, lookup, messages,
    reply, Executed,
};
use super::plan::{Plan, Step};
use super::reply::{NativeReply, ReplyMode};
use super::resolve::{self, Resolved};
use super::undo::UndoOp;
use crate::domain::{CampaignStatus, ContactStatus, PilotMode};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::ids::{is_uuid, parse_rfc3339, to_rfc3339};
use crate::store::campaigns::{AudienceStats, Campaign};
use crate::store::companies::Company;
use crate::store::contacts::Contact;
use crate::store::interactions::{Interaction, Note};
use crate::store::signals::Signal;
use crate::text::{normalize, tokens};
use crate::upstream::{Deadline, Upstream};

/// Most records one resolution search asks for.
const SEARCH_LIMIT: u32 = 100;
/// Most single-token searches tried when the whole reference found nobody.
const TOKEN_SEARCHES: usize = 3;

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

// ---- resolution -------------------------------------------------------------------------

/// A resolved contact, or the clarification to send instead.
async fn contact(
    r: &Remote<'_>,
    reference: Option<&str>,
    company: Option<&str>,
) -> ApiResult<Result<Contact, NativeReply>> {
    let reference = reference.unwrap_or("").trim();
    let pool: Vec<Contact> = if is_uuid(reference) {
        let path = format!("/contacts/{}", seg(&reference.to_ascii_lowercase()));
        match r.one("contacts.get", &path).await {
            Ok(c) => c.into_iter().collect(),
            Err(e) if e.code == ErrorCode::ScopeDenied => {
                return contact_via_native(r, reference, company).await
            }
            Err(e) => return Err(e),
        }
    } else if normalize(reference).is_empty() && !reference.contains('@') {
        Vec::new()
    } else {
        match search_contacts(r, reference).await {
            Ok((pool, _)) => pool,
            Err(e) if e.code == ErrorCode::ScopeDenied => {
                return contact_via_native(r, reference, company).await
            }
            Err(e) => return Err(e),
        }
    };
    let found = match resolve::contact_among(reference, company, pool) {
        Err(e)
            if e.code == ErrorCode::ResourceNotFound
                && !is_uuid(reference)
                && !reference.contains('@') =>
        {
            // The whole name matched nobody ("sara chen"): search each word and match fuzzily.
            let words: Vec<String> = {
                let norm = normalize(reference);
                let mut t = tokens(&norm);
                t.sort_by_key(|w| std::cmp::Reverse(w.len()));
                t.into_iter()
                    .filter(|w| w.len() >= 2)
                    .take(TOKEN_SEARCHES)
                    .map(str::to_string)
                    .collect()
            };
            if words.is_empty() {
                return Err(e);
            }
            let results = join_all(words.iter().map(|w| search_contacts(r, w))).await;
            let mut seen = HashSet::new();
            let mut pool = Vec::new();
            for res in results {
                for c in res?.0 {
                    if seen.insert(c.id.clone()) {
                        pool.push(c);
                    }
                }
            }
            resolve::contact_among(reference, company, pool)?
        }
        other => other?,
    };
    Ok(match found {
        Resolved::One(c) => Ok(c),
        Resolved::Ambiguous(candidates) => Err(clarify("contactRef", reference, candidates)),
    })
}

/// Resolution for a key without the `contacts` scope: the upstream's own `lookup_person`
/// resolves the reference (its clarification, if any, is passed on as it is).
async fn contact_via_native(
    r: &Remote<'_>,
    reference: &str,
    company: Option<&str>,
) -> ApiResult<Result<Contact, NativeReply>> {
    let mut action = json!({ "type": "lookup_person", "contactRef": reference });
    if let (Some(c), Value::Object(m)) = (company, &mut action) {
        m.insert("company".into(), c.into());
    }
    resolve_via_native(r, action, "contact").await
}

/// Campaign resolution for a key without the `campaigns` scope, through the upstream's own
/// `campaign_stats`.
async fn campaign_via_native(
    r: &Remote<'_>,
    reference: &str,
) -> ApiResult<Result<Campaign, NativeReply>> {
    let action = json!({ "type": "campaign_stats", "campaignRef": reference });
    resolve_via_native(r, action, "campaign").await
}

/// Asks the upstream's native endpoint a read and takes the record at `data.<field>` from its
/// answer, or its clarification.
async fn resolve_via_native<T: DeserializeOwned>(
    r: &Remote<'_>,
    action: Value,
    field: &str,
) -> ApiResult<Result<T, NativeReply>> {
    let answer = ask_native(r, "native.resolve", action, false, None).await?;
    if answer.mode != ReplyMode::Result {
        return Ok(Err(answer));
    }
    let record = answer.data.get(field).cloned().unwrap_or(Value::Null);
    serde_json::from_value(record)
        .map(Ok)
        .map_err(|e| unexpected_shape("native.resolve", e))
}

async fn search_contacts(r: &Remote<'_>, search: &str) -> ApiResult<(Vec<Contact>, u64)> {
    r.list(
        "contacts.search",
        "/contacts",
        &[q("search", search), q("limit", SEARCH_LIMIT)],
    )
    .await
}

/// Like [`contact`] when the reference is optional.
async fn optional_contact(
    r: &Remote<'_>,
    reference: Option<&str>,
    company: Option<&str>,
) -> ApiResult<Result<Option<Contact>, NativeReply>> {
    match reference.filter(|s| !s.trim().is_empty()) {
        None => Ok(Ok(None)),
        Some(s) => Ok(contact(r, Some(s), company).await?.map(Some)),
    }
}

async fn campaign(
    r: &Remote<'_>,
    reference: Option<&str>,
) -> ApiResult<Result<Campaign, NativeReply>> {
    let reference = reference.unwrap_or("").trim();
    let listed = if is_uuid(reference) {
        let path = format!("/campaigns/{}", seg(&reference.to_ascii_lowercase()));
        r.one::<Campaign>("campaigns.get", &path)
            .await
            .map(|c| c.into_iter().collect())
    } else {
        r.list("campaigns.list", "/campaigns", &[q("limit", 200)])
            .await
            .map(|(pool, _)| pool)
    };
    let pool: Vec<Campaign> = match listed {
        Ok(pool) => pool,
        Err(e) if e.code == ErrorCode::ScopeDenied => {
            return campaign_via_native(r, reference).await
        }
        Err(e) => return Err(e),
    };
    Ok(match resolve::campaign_among(reference, pool)? {
        Resolved::One(c) => Ok(c),
        Resolved::Ambiguous(c) => Err(clarify("campaignRef", reference, c)),
    })
}

async fn company(r: &Remote<'_>, reference: &str) -> ApiResult<Result<Company, NativeReply>> {
    let reference = reference.trim();
    let pool: Vec<Company> = if is_uuid(reference) {
        r.one(
            "companies.get",
            &format!("/companies/{}", seg(&reference.to_ascii_lowercase())),
        )
        .await?
        .into_iter()
        .collect()
    } else if crate::text::looks_like_domain(reference) {
        r.list(
            "companies.search",
            "/companies",
            &[q("domain", reference), q("limit", 5)],
        )
        .await?
        .0
    } else if normalize(reference).is_empty() {
        Vec::new()
    } else {
        r.list(
            "companies.search",
            "/companies",
            &[q("search", reference), q("limit", SEARCH_LIMIT)],
        )
        .await?
        .0
    };
    let found = match resolve::company_among(reference, pool) {
        Err(e) if e.code == ErrorCode::ResourceNotFound && !normalize(reference).is_empty() => {
            // Fuzzy ("Figmaa"): names sharing the first two letters, as the embedded index does.
            let stem: String = normalize(reference).chars().take(2).collect();
            let (near, _) = r
                .list::<Company>(
                    "companies.search",
                    "/companies",
                    &[q("search", stem), q("limit", 200)],
                )
                .await?;
            resolve::company_among(reference, near)?
        }
        other => other?,
    };
    Ok(match found {
        Resolved::One(c) => Ok(c),
        Resolved::Ambiguous(c) => Err(clarify("company", reference, c)),
    })
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
        Action::LookupPerson(a) => {
            let c = match contact(r, a.contact.as_deref(), a.company.as_deref()).await? {
                Ok(c) => c,
                Err(clarification) => return reply(clarification),
            };
            let activity_query = [q("contact_id", &c.id), q("limit", 3)];
            let activity = r.list::<Interaction>("activity.list", "/activity", &activity_query);
            let account = async {
                match &c.account_id {
                    Some(id) => {
                        r.one::<Company>("companies.get", &format!("/companies/{}", seg(id)))
                            .await
                    }
                    None => Ok(None),
                }
            };
            let (activity, account) = tokio::join!(activity, account);
            // REST v1 has no "campaigns of a contact" endpoint; the list stays empty upstream.
            Ok(Step::Reply(lookup::person_reply(
                c,
                account?,
                json!([]),
                activity?.0,
            )))
        }
        Action::LookupCompany(a) => {
            let reference = a
                .company_id
                .as_deref()
                .or(a.company.as_deref())
                .unwrap_or("");
            let co = match company(r, reference).await? {
                Ok(c) => c,
                Err(clarification) => return reply(clarification),
            };
            let name = co.display_name().to_string();
            let people_query = [q("search", &name), q("limit", 5)];
            let people = r.list::<Contact>("contacts.search", "/contacts", &people_query);
            let signals = async {
                match &co.name {
                    Some(n) => {
                        r.list::<Signal>(
                            "signals.list",
                            "/signals",
                            &[q("company", n), q("limit", 3)],
                        )
                        .await
                    }
                    None => Ok((vec![], 0)),
                }
            };
            let (people, signals) = tokio::join!(people, signals);
            let (people, total) = people?;
            Ok(Step::Reply(lookup::company_reply(
                co, total, people, signals?.0,
            )))
        }
        Action::RecentSignals(a) => {
            let mut query = vec![q("limit", a.limit.unwrap_or(5))];
            if let Some(since) = a.since.as_deref().and_then(parse_rfc3339) {
                query.push(q("since", to_rfc3339(since)));
            }
            if let Some(c) = &a.company {
                query.push(q("company", c));
            }
            if let Some(m) = a.min_intent_score {
                query.push(q("min_intent_score", m));
            }
            let mut ids = Map::new();
            match optional_contact(r, a.contact.as_deref(), None).await? {
                Err(clarification) => return reply(clarification),
                Ok(None) => {}
                Ok(Some(c)) => {
                    ids.insert("contact_id".into(), c.id.clone().into());
                    query.push(q("contact_id", c.id));
                }
            }
            let (items, total) = r.list::<Signal>("signals.list", "/signals", &query).await?;
            Ok(Step::Reply(lookup::signals_reply(
                a.company.as_deref(),
                items,
                total,
                ids,
            )))
        }
        Action::ReplyInbox(a) => {
            let unread_only = a.unread_only.unwrap_or(false);
            let limit = a.limit.unwrap_or(5);
            // REST v1 cannot filter by read state: read a full page and filter here.
            let mut query = vec![
                q("direction", "inbound"),
                q("include_notes", "false"),
                q("limit", if unread_only { 100 } else { limit }),
            ];
            let mut ids = Map::new();
            match optional_contact(r, a.contact.as_deref(), a.company.as_deref()).await? {
                Err(clarification) => return reply(clarification),
                Ok(None) => {}
                Ok(Some(c)) => {
                    ids.insert("contact_id".into(), c.id.clone().into());
                    query.push(q("contact_id", c.id));
                }
            }
            let (mut items, mut total) = r
                .list::<Interaction>("activity.list", "/activity", &query)
                .await?;
            if unread_only {
                items.retain(|i| !i.is_read);
                total = items.len() as u64;
                items.truncate(limit as usize);
            }
            let senders: Vec<String> = {
                let mut seen = HashSet::new();
                items
                    .iter()
                    .filter_map(|i| i.contact_id.clone())
                    .filter(|id| seen.insert(id.clone()))
                    .collect()
            };
            let paths: Vec<String> = senders
                .iter()
                .map(|id| format!("/contacts/{}", seg(id)))
                .collect();
            let found = join_all(paths.iter().map(|p| r.one::<Contact>("contacts.get", p))).await;
            let mut by_id = std::collections::HashMap::new();
            for c in found {
                if let Some(c) = c? {
                    by_id.insert(c.id.clone(), c);
                }
            }
            let replies = items
                .into_iter()
                .map(|i| {
                    let who = i.contact_id.as_ref().and_then(|id| by_id.get(id).cloned());
                    (i, who)
                })
                .collect();
            Ok(Step::Reply(lookup::inbox_reply(
                replies,
                total,
                unread_only,
                ids,
            )))
        }
        Action::CampaignStats(a) => {
            let c = match campaign(r, a.campaign.as_deref()).await? {
                Ok(c) => c,
                Err(clarification) => return reply(clarification),
            };
            let v = r
                .get(
                    "campaigns.status",
                    &format!("/campaigns/{}/status", seg(&c.id)),
                    &[],
                )
                .await?;
            let stats: AudienceStats = v
                .pointer("/data/audience")
                .cloned()
                .and_then(|a| serde_json::from_value(a).ok())
                .unwrap_or_default();
            Ok(Step::Reply(campaign_actions::stats_reply(c, stats)))
        }
        Action::AddToCampaign(a) => {
            let (contact, campaign) = match contact_and_campaign(r, a).await? {
                Ok(x) => x,
                Err(clarification) => return reply(clarification),
            };
            crate::store::campaigns::ensure_active(&campaign)?;
            if let Some(no_op) = probe_membership(r, "add_to_campaign", &contact, &campaign).await?
            {
                return reply(no_op);
            }
            Ok(Step::Execute(Plan::AddToCampaign { contact, campaign }))
        }
        Action::RemoveFromCampaign(a) => {
            let (contact, campaign) = match contact_and_campaign(r, a).await? {
                Ok(x) => x,
                Err(clarification) => return reply(clarification),
            };
            if let Some(no_op) =
                probe_membership(r, "remove_from_campaign", &contact, &campaign).await?
            {
                return reply(no_op);
            }
            Ok(Step::Execute(Plan::RemoveFromCampaign {
                contact,
                campaign,
            }))
        }
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
        Action::SendMessage(a) => {
            let settings = r.get("settings.get", "/settings", &[]);
            let (c, settings) = tokio::join!(
                contact(r, a.contact.as_deref(), a.company.as_deref()),
                settings
            );
            let c = match c? {
                Ok(c) => c,
                Err(clarification) => return reply(clarification),
            };
            let settings = match settings {
                // Without the settings scope the pilot mode is unknown: ask as in auto mode;
                // the upstream applies its real mode when the confirmed send reaches it.
                Err(e) if e.code == ErrorCode::ScopeDenied => {
                    json!({ "data": { "pilot_mode": "auto" } })
                }
                other => other?,
            };
            let mode: PilotMode = settings
                .pointer("/data/pilot_mode")
                .and_then(Value::as_str)
                .and_then(|m| m.parse().ok())
                .unwrap_or(PilotMode::Review);
            let draft_id = a.draft_id.clone().filter(|d| !d.trim().is_empty());
            // A draft's text lives upstream; the upstream fills it in when the send runs.
            let body = a
                .body
                .clone()
                .filter(|b| !b.trim().is_empty())
                .or_else(|| draft_id.as_ref().map(|_| String::new()));
            messages::send_step(c, a.channel, a.subject.clone(), body, draft_id, mode)
        }
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

/// Both references of a membership action, looked up concurrently.
async fn contact_and_campaign(
    r: &Remote<'_>,
    a: &ContactCampaign,
) -> ApiResult<Result<(Contact, Campaign), NativeReply>> {
    let (c, k) = tokio::join!(
        contact(r, a.contact.as_deref(), a.company.as_deref()),
        campaign(r, a.campaign.as_deref())
    );
    let c = match c? {
        Ok(c) => c,
        Err(clarification) => return Ok(Err(clarification)),
    };
    Ok(match k? {
        Ok(k) => Ok((c, k)),
        Err(clarification) => Err(clarification),
    })
}

/// REST v1 cannot tell whether a contact is in a campaign, so the upstream's own native
/// endpoint is asked the unconfirmed question: it answers "already in" / "isn't in" itself
/// (returned here, so the user is never asked a pointless question), or asks for confirmation,
/// which the gateway then does on its own (the upstream's pending action simply expires).
async fn probe_membership(
    r: &Remote<'_>,
    action_type: &str,
    contact: &Contact,
    campaign: &Campaign,
) -> ApiResult<Option<NativeReply>> {
    let action =
        json!({ "type": action_type, "contactId": contact.id, "campaignRef": campaign.id });
    // A fresh key: the upstream's keyless dedupe window would replay an earlier answer.
    let fresh = format!("pb_probe_{}", crate::ids::new_id());
    let answer = ask_native(r, "native.probe", action, false, Some(&fresh)).await?;
    Ok((answer.mode == ReplyMode::Result).then_some(answer))
}

// ---- execution --------------------------------------------------------------------------

/// Runs a confirmed (or harmless) plan upstream. `UndoLast` is the caller's: the undo stack
/// lives in the gateway.
pub async fn execute(r: &Remote<'_>, ctx: &RemoteCtx<'_>, plan: Plan) -> ApiResult<Executed> {
    match plan {
        Plan::AddToCampaign { contact, campaign } => {
            let sent = rest_or_native(
                r,
                ctx,
                RestWrite {
                    op: "campaigns.trigger",
                    method: Method::POST,
                    path: format!("/campaigns/{}/trigger", seg(&campaign.id)),
                    body: json!({ "contact_id": contact.id }),
                },
                json!({ "type": "add_to_campaign", "contactId": contact.id, "campaignRef": campaign.id }),
            )
            .await?;
            let v = match sent {
                Ok(v) => v,
                Err(forwarded) => return Ok(forwarded),
            };
            let already = v
                .pointer("/data/already_in_campaign")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let name = contact.display_name().to_string();
            let spoken = if already {
                format!("{name} is already in {}.", campaign.name)
            } else {
                format!("{name} is now in {}.", campaign.name)
            };
            let reply = campaign_actions::membership_ids(
                &contact,
                &campaign,
                NativeReply::result(spoken, v.get("data").cloned().unwrap_or(Value::Null)),
            );
            let undo = (!already).then(|| {
                (
                    format!("{name} is out of {} again.", campaign.name),
                    UndoOp::RemoveFromCampaign {
                        campaign_id: campaign.id.clone(),
                        contact_id: contact.id.clone(),
                    },
                )
            });
            Ok(Executed { reply, undo })
        }
        Plan::RemoveFromCampaign { contact, campaign } => {
            let reply = forward(
                r,
                ctx.effect_key,
                json!({ "type": "remove_from_campaign", "contactId": contact.id, "campaignRef": campaign.id }),
            )
            .await?;
            // Forwarded, so the upstream's own undo_last reverses it (keeping both stacks in step).
            let removed = reply.data.get("removed").and_then(Value::as_bool) == Some(true);
            if removed {
                return Ok(undone_upstream(
                    reply,
                    &format!("the removal from {}", campaign.name),
                ));
            }
            Ok(Executed { reply, undo: None })
        }
        Plan::SetCampaignStatus { campaign, to } => {
            let kind = if to == CampaignStatus::Paused {
                "pause_campaign"
            } else {
                "resume_campaign"
            };
            let sent = rest_or_native(
                r,
                ctx,
                RestWrite {
                    op: "campaigns.update",
                    method: Method::PATCH,
                    path: format!("/campaigns/{}", seg(&campaign.id)),
                    body: json!({ "status": to }),
                },
                json!({ "type": kind, "campaignRef": campaign.id }),
            )
            .await?;
            let v = match sent {
                Ok(v) => v,
                Err(forwarded) => return Ok(forwarded),
            };
            let updated: Campaign = data(&v, "campaigns.update")?;
            Ok(campaign_actions::status_set(updated, campaign.status, to))
        }
        Plan::MarkStatus { contact, status } => {
            let sent = rest_or_native(
                r,
                ctx,
                RestWrite {
                    op: "contacts.update",
                    method: Method::PUT,
                    path: format!("/contacts/{}", seg(&contact.id)),
                    body: json!({ "status": status }),
                },
                json!({ "type": "mark_status", "contactId": contact.id, "status": status }),
            )
            .await?;
            let v = match sent {
                Ok(v) => v,
                Err(forwarded) => return Ok(forwarded),
            };
            let updated: Contact = data(&v, "contacts.update")?;
            Ok(contact_actions::status_marked(
                &updated,
                contact.status,
                status,
            ))
        }
        Plan::NoteOnContact { contact, note } => {
            let v = r
                .send(
                    "notes.create",
                    Method::POST,
                    "/notes",
                    &json!({ "contact_id": contact.id, "note": note, "idempotency_key": ctx.effect_key }),
                )
                .await?;
            let saved: Note = data(&v, "notes.create")?;
            Ok(contact_actions::noted(&contact, saved))
        }
        Plan::DraftMessage {
            contact,
            channel,
            subject,
            instructions,
            ..
        } => {
            let reply = forward(
                r,
                ctx.effect_key,
                json!({ "type": "draft_message", "contactId": contact.id, "channel": channel,
                        "subject": subject, "instructions": instructions }),
            )
            .await?;
            Ok(undone_upstream(reply, "the draft"))
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
            // Absent and null are the same to the native parser; an empty body means "the
            // draft's text", which the upstream fills in.
            let action = json!({ "type": "send_message", "contactId": contact.id, "channel": channel,
                                 "subject": subject, "body": body, "draftId": draft_id });
            let reply = forward(r, ctx.effect_key, action).await?;
            Ok(undone_upstream(reply, "the message"))
        }
        Plan::BookMeeting {
            contact,
            start_time,
            duration_minutes,
            title,
        } => {
            let reply = forward(
                r,
                ctx.effect_key,
                json!({ "type": "book_meeting", "contactId": contact.id, "startTime": start_time,
                        "durationMinutes": duration_minutes, "title": title }),
            )
            .await?;
            // Booked meetings involve another person's calendar: not undoable (DESIGN §5).
            Ok(Executed { reply, undo: None })
        }
        Plan::StartResearch {
            contact,
            company,
            topic,
        } => {
            let action = json!({ "type": "start_research", "contactId": contact.map(|c| c.id),
                                 "company": company, "topic": topic });
            let reply = forward(r, ctx.effect_key, action).await?;
            Ok(undone_upstream(reply, "the research"))
        }
        Plan::EnrichContact { contact } => {
            let reply = forward(
                r,
                ctx.effect_key,
                json!({ "type": "enrich_contact", "contactId": contact.id }),
            )
            .await?;
            Ok(undone_upstream(reply, "the enrichment"))
        }
        Plan::UndoLast => Err(ApiError::internal("remote::execute got undo_last")),
    }
}

/// One REST v1 write.
struct RestWrite {
    op: &'static str,
    method: Method,
    path: String,
    body: Value,
}

/// Sends `write` to its REST endpoint: `Ok(answer)`; or, when the key may not use that endpoint
/// (a voice key without `campaigns` or `contacts` scope), sends `native_action` to the upstream's
/// native endpoint instead, which such a key may use: `Err(executed)` with its answer, undone
/// through the upstream's own stack.
async fn rest_or_native(
    r: &Remote<'_>,
    ctx: &RemoteCtx<'_>,
    write: RestWrite,
    native_action: Value,
) -> ApiResult<Result<Value, Executed>> {
    match r
        .send(write.op, write.method, &write.path, &write.body)
        .await
    {
        Err(e) if e.code == ErrorCode::ScopeDenied => {
            let reply = forward(r, ctx.effect_key, native_action).await?;
            Ok(Err(undone_upstream(reply, "that change")))
        }
        other => other.map(Ok),
    }
}

/// A forwarded write is undone by the upstream's own `undo_last` for the same key, which holds
/// it as its newest undoable write (the gateway's REST writes never enter that stack).
fn undone_upstream(reply: NativeReply, what: &str) -> Executed {
    Executed {
        reply,
        undo: Some((format!("I undid {what}."), UndoOp::UpstreamUndoLast)),
    }
}

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

/// Applies one undo entry upstream and returns the sentence to speak.
pub async fn undo(
    r: &Remote<'_>,
    effect_key: &str,
    op: &UndoOp,
    summary: &str,
) -> ApiResult<String> {
    let done = format!("Undone. {summary}");
    match op {
        UndoOp::RemoveFromCampaign {
            campaign_id,
            contact_id,
        } => {
            forward(
                r,
                effect_key,
                json!({ "type": "remove_from_campaign", "contactId": contact_id, "campaignRef": campaign_id }),
            )
            .await?;
            Ok(done)
        }
        UndoOp::RestoreAudience {
            campaign_id,
            contact_id,
            ..
        } => {
            r.send(
                "campaigns.trigger",
                Method::POST,
                &format!("/campaigns/{}/trigger", seg(campaign_id)),
                &json!({ "contact_id": contact_id }),
            )
            .await?;
            Ok(done)
        }
        UndoOp::SetCampaignStatus {
            campaign_id,
            status,
        } => {
            r.send(
                "campaigns.update",
                Method::PATCH,
                &format!("/campaigns/{}", seg(campaign_id)),
                &json!({ "status": status }),
            )
            .await?;
            Ok(done)
        }
        UndoOp::RestoreStatus { contact_id, status } => {
            let status: ContactStatus = status.parse().map_err(ApiError::internal)?;
            r.send(
                "contacts.update",
                Method::PUT,
                &format!("/contacts/{}", seg(contact_id)),
                &json!({ "status": status }),
            )
            .await?;
            Ok(done)
        }
        UndoOp::DeleteNote { note_id } => {
            r.send(
                "notes.delete",
                Method::DELETE,
                &format!("/notes/{}", seg(note_id)),
                &json!({}),
            )
            .await?;
            Ok(done)
        }
        UndoOp::UpstreamUndoLast => {
            let action = json!({ "type": "undo_last" });
            let answer = ask_native(r, "native.forward", action, false, Some(effect_key)).await?;
            Ok(answer.spoken_summary)
        }
        UndoOp::DeleteDraft { .. }
        | UndoOp::CancelMessage { .. }
        | UndoOp::CancelJob { .. }
        | UndoOp::RevertEnrichment { .. } => Ok("I couldn't undo that.".to_string()),
    }
}

// ---- undo -------------------------------------------------------------------------------

/// Most undo entries kept per key; older ones fall off.
const UNDO_DEPTH: usize = 32;
/// Entries older than this are dropped whenever the key writes again (the undo window is at
/// most this long in practice; `native.undo_window_secs` defaults to 600).
const UNDO_KEEP_SECS: u64 = 3600;

/// The gateway's undo stack in upstream mode, per (org, key), in memory like pending actions.
#[derive(Default)]
pub struct UndoStack {
    entries: dashmap::DashMap<(String, String), Vec<UndoEntry>>,
}

#[derive(Debug, Clone)]
struct UndoEntry {
    id: String,
    action_type: &'static str,
    summary: String,
    op: UndoOp,
    at: tokio::time::Instant,
    created_at: String,
}

impl UndoStack {
    pub fn push(
        &self,
        org: &str,
        key: &str,
        action_type: &'static str,
        summary: String,
        op: UndoOp,
    ) {
        let mut stack = self
            .entries
            .entry((org.to_string(), key.to_string()))
            .or_default();
        let window = std::time::Duration::from_secs(UNDO_KEEP_SECS);
        stack.retain(|e| e.at.elapsed() <= window);
        if stack.len() >= UNDO_DEPTH {
            stack.remove(0);
        }
        stack.push(UndoEntry {
            id: crate::ids::new_id(),
            action_type,
            summary,
            op,
            at: tokio::time::Instant::now(),
            created_at: crate::ids::now_rfc3339(),
        });
    }

    /// The newest entry inside `window`, taken off the stack.
    fn pop(&self, org: &str, key: &str, window: std::time::Duration) -> Option<UndoEntry> {
        let mut stack = self.entries.get_mut(&(org.to_string(), key.to_string()))?;
        stack.retain(|e| e.at.elapsed() <= window);
        stack.pop()
    }

    /// Puts an entry back after its undo failed upstream, so asking again can still undo it.
    fn restore(&self, org: &str, key: &str, entry: UndoEntry) {
        let mut stack = self
            .entries
            .entry((org.to_string(), key.to_string()))
            .or_default();
        // Back in its place by age: a write that landed meanwhile stays on top.
        let at = stack.partition_point(|e| e.at <= entry.at);
        stack.insert(at, entry);
        if stack.len() > UNDO_DEPTH {
            stack.remove(0);
        }
    }
}

/// `undo_last` in upstream mode: reverses the newest undoable write of the same key made
/// through this gateway inside the window, answered as in embedded mode.
pub async fn undo_last(
    r: &Remote<'_>,
    stack: &UndoStack,
    org: &str,
    key: &str,
    window: std::time::Duration,
) -> ApiResult<NativeReply> {
    let Some(entry) = stack.pop(org, key, window) else {
        return Ok(NativeReply::result(
            "There's nothing to undo.",
            json!({ "undone": false }),
        ));
    };
    // Keyed by the entry, not the request: a retry after a lost answer (the entry is put back)
    // reaches the upstream as the same undo, never as a second one.
    let entry_key = effect_key(key, &format!("undo:{}", entry.id));
    match undo(r, &entry_key, &entry.op, &entry.summary).await {
        Ok(spoken) => Ok(NativeReply::result(
            spoken,
            json!({ "undone": true, "undone_action": entry.action_type, "summary": entry.summary, "done_at": entry.created_at }),
        )
        .with_id("undo_id", entry.id)),
        Err(e) => {
            stack.restore(org, key, entry);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn op(n: &str) -> UndoOp {
        UndoOp::DeleteNote { note_id: n.into() }
    }

    #[tokio::test(start_paused = true)]
    async fn undo_stack_is_per_key_newest_first_and_windowed() {
        let s = UndoStack::default();
        s.push("o", "k1", "note_on_contact", "a".into(), op("1"));
        s.push("o", "k1", "note_on_contact", "b".into(), op("2"));
        s.push("o", "k2", "note_on_contact", "c".into(), op("3"));
        let w = Duration::from_secs(600);
        assert_eq!(s.pop("o", "k1", w).map(|e| e.summary), Some("b".into()));
        tokio::time::advance(Duration::from_secs(601)).await;
        assert!(s.pop("o", "k1", w).is_none(), "older than the window");
        assert!(s.pop("o", "k2", w).is_none());
        s.push("o", "k2", "note_on_contact", "d".into(), op("4"));
        let e = s.pop("o", "k2", w).unwrap();
        s.restore("o", "k2", e);
        assert_eq!(s.pop("o", "k2", w).map(|e| e.summary), Some("d".into()));
    }

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
