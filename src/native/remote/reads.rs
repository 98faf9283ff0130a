//! Reads answered from the REST v1 endpoints the reference's briefing table names: people,
//! companies, signals, the inbox and campaign stats.

use std::collections::HashSet;

use futures_util::future::join_all;
use serde_json::{json, Map};

use super::resolve::{campaign, company, contact, optional_contact};
use super::wire::{CampaignStatusAnswer, Envelope};
use super::{q, Remote};
use crate::error::ApiResult;
use crate::ids::to_rfc3339;
use crate::native::action::{CampaignOnly, LookupCompany, LookupPerson, RecentSignals, ReplyInbox};
use crate::native::actions::{campaigns as campaign_actions, lookup, reply};
use crate::native::plan::Step;
use crate::store::companies::Company;
use crate::store::contacts::Contact;
use crate::store::interactions::Interaction;
use crate::store::signals::Signal;
// Every id placed in an upstream path goes through this (ids come from clients and from
// upstream data alike).
use crate::upstream::path_segment as seg;

/// A person, their account and their last three interactions.
pub(super) async fn lookup_person(r: &Remote<'_>, a: &LookupPerson) -> ApiResult<Step> {
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

/// A company, a few of its people and its latest signals.
pub(super) async fn lookup_company(r: &Remote<'_>, a: &LookupCompany) -> ApiResult<Step> {
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

/// Buying signals, filtered as the action asks.
pub(super) async fn recent_signals(r: &Remote<'_>, a: &RecentSignals) -> ApiResult<Step> {
    let mut query = vec![q("limit", a.limit.unwrap_or(5))];
    // The upstream org's time zone is unknown here: a date alone is read as UTC midnight.
    if let Some(since) = a
        .since
        .as_deref()
        .and_then(|s| crate::native::action::parse_since(s, crate::domain::TimeZone::UTC))
    {
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

/// Inbound replies with their senders.
pub(super) async fn reply_inbox(r: &Remote<'_>, a: &ReplyInbox) -> ApiResult<Step> {
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

/// A campaign's audience counts.
pub(super) async fn campaign_stats(r: &Remote<'_>, a: &CampaignOnly) -> ApiResult<Step> {
    let c = match campaign(r, a.campaign.as_deref()).await? {
        Ok(c) => c,
        Err(clarification) => return reply(clarification),
    };
    let path = format!("/campaigns/{}/status", seg(&c.id));
    let status: Envelope<CampaignStatusAnswer> = r.get("campaigns.status", &path, &[]).await?;
    let stats = status.data.audience;
    Ok(Step::Reply(campaign_actions::stats_reply(c, stats)))
}
