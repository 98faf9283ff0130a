//! Read actions about people and activity: `lookup_person`, `lookup_company`, `recent_signals`
//! and `reply_inbox`.

use rusqlite::Connection;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::{optional_contact, reply};
use crate::error::ApiResult;
use crate::ids::to_rfc3339;
use crate::native::action::parse_since;
use crate::native::action::{LookupCompany, LookupPerson, RecentSignals, ReplyInbox};
use crate::native::plan::Step;
use crate::native::reply::{NativeReply, ReplyData};
use crate::native::resolve::{self, Resolved};
use crate::native::speech::{self, article, count, quote};
use crate::store::companies::Company;
use crate::store::contacts::{Contact, WithAccount};
use crate::store::interactions::{self, ActivityFilter, Interaction};
use crate::store::signals::{self, Signal, SignalFilter};
use crate::store::{campaigns, contacts, PageRequest};

pub fn lookup_person(conn: &Connection, org: &str, a: &LookupPerson) -> ApiResult<Step> {
    // As `contact_or_clarify`, with the company read along with the contact.
    let reference = a.contact.as_deref().unwrap_or("").trim();
    let WithAccount { contact, account } =
        match resolve::contact_with_account(conn, org, reference, a.company.as_deref())? {
            Resolved::One(c) => c,
            Resolved::Ambiguous(c) => return reply(super::clarify("contactRef", reference, c)),
        };
    let memberships = campaigns::memberships(conn, org, &contact.id)?;
    let recent = interactions::latest_for_contact(conn, org, &contact.id, 3)?;
    Ok(Step::Reply(person_reply(
        contact,
        account,
        memberships,
        recent,
    )))
}

/// `data` of the answer to `lookup_person`, serialized from the records as they are.
#[derive(Serialize)]
struct PersonData<'a, M> {
    contact: &'a Contact,
    company: &'a Option<Company>,
    campaigns: M,
    recent_activity: &'a [Interaction],
}

/// The answer to `lookup_person`, whichever backend read the records.
pub(crate) fn person_reply<M: Serialize>(
    contact: Contact,
    account: Option<Company>,
    memberships: M,
    recent: Vec<Interaction>,
) -> NativeReply {
    let name = speech::name(contact.display_name());
    let company = contact
        .company
        .clone()
        .or_else(|| account.as_ref().and_then(|c| c.name.clone()))
        .map(|c| speech::name(&c));
    let title = contact.title.as_deref().map(speech::name);
    let who = match (&title, &company) {
        (Some(t), Some(c)) => format!("{name} is {t} at {c}."),
        (Some(t), None) => format!("{name} is {t}."),
        (None, Some(c)) => format!("{name} works at {c}."),
        (None, None) => format!("{name} is in your CRM."),
    };
    let spoken = format!("{who} Status is {}.", contact.status.spoken());
    let data = ReplyData::of(&PersonData {
        contact: &contact,
        company: &account,
        campaigns: memberships,
        recent_activity: &recent,
    });
    NativeReply::result(spoken, data).with_id("contact_id", contact.id)
}

pub fn lookup_company(conn: &Connection, org: &str, a: &LookupCompany) -> ApiResult<Step> {
    let reference = a
        .company_id
        .as_deref()
        .or(a.company.as_deref())
        .unwrap_or("");
    let company = match resolve::company(conn, org, reference)? {
        Resolved::One(c) => c,
        Resolved::Ambiguous(c) => return reply(super::clarify("company", reference, c)),
    };
    let (total, people) = contacts::by_account(conn, org, &company.id, 5)?;
    let recent_signals = match &company.name {
        Some(n) => {
            signals::list(
                conn,
                org,
                &SignalFilter {
                    company: Some(n.clone()),
                    ..Default::default()
                },
                PageRequest {
                    limit: 3,
                    offset: 0,
                },
            )?
            .items
        }
        None => vec![],
    };
    Ok(Step::Reply(company_reply(
        company,
        total,
        people,
        recent_signals,
    )))
}

/// The answer to `lookup_company`.
pub(crate) fn company_reply(
    company: Company,
    total: u64,
    people: Vec<Contact>,
    recent_signals: Vec<Signal>,
) -> NativeReply {
    let name = speech::name(company.display_name());
    let what = match company.industry.as_deref().map(speech::name) {
        Some(i) => format!("{name} is {} {} company.", article(&i), i.to_lowercase()),
        None => format!("{name} is in your CRM."),
    };
    let contacts_said = if total == 0 {
        "You have no contacts there".to_string()
    } else {
        format!("You have {} there", count(total, "contact", "contacts"))
    };
    let spoken = format!(
        "{what} {contacts_said}{}",
        match recent_signals.first() {
            Some(s) => format!(", and the latest signal is: {}.", quote(&s.title, 80)),
            None => ".".into(),
        }
    );
    let company_id = company.id.clone();
    NativeReply::result(
        spoken,
        json!({ "company": company, "contacts_total": total, "contacts": people, "recent_signals": recent_signals }),
    )
    .with_id("company_id", company_id)
}

pub fn recent_signals(conn: &Connection, org: &str, a: &RecentSignals) -> ApiResult<Step> {
    let zone = crate::store::orgs::timezone(conn, org)?;
    let mut filter = SignalFilter {
        since: a
            .since
            .as_deref()
            .and_then(|s| parse_since(s, zone))
            .map(to_rfc3339),
        company: a.company.clone(),
        min_intent_score: a.min_intent_score,
        ..Default::default()
    };
    let mut reply_ids = serde_json::Map::new();
    match optional_contact(conn, org, a.contact.as_deref(), None)? {
        Err(clarification) => return reply(clarification),
        Ok(None) => {}
        Ok(Some(contact)) => {
            reply_ids.insert("contact_id".into(), contact.id.clone().into());
            filter.contact_id = Some(contact.id);
        }
    }
    let page = signals::list(
        conn,
        org,
        &filter,
        PageRequest {
            limit: a.limit.unwrap_or(5),
            offset: 0,
        },
    )?;
    Ok(Step::Reply(signals_reply(
        a.company.as_deref(),
        page.items,
        page.total,
        reply_ids,
    )))
}

/// The answer to `recent_signals`.
pub(crate) fn signals_reply(
    company: Option<&str>,
    items: Vec<Signal>,
    total: u64,
    ids: Map<String, Value>,
) -> NativeReply {
    let scope = company
        .and_then(speech::echo)
        .map(|c| format!(" for {c}"))
        .unwrap_or_default();
    let spoken = match items.first() {
        None => format!("No new signals{scope}."),
        Some(first) => format!(
            "{}{scope}. Latest: {}.",
            count(total, "signal", "signals"),
            quote(first.title.trim_end_matches('.'), 110)
        ),
    };
    let mut r = NativeReply::result(spoken, json!({ "signals": items, "total": total }));
    r.ids = ids;
    r
}

pub fn reply_inbox(conn: &Connection, org: &str, a: &ReplyInbox) -> ApiResult<Step> {
    let mut filter = ActivityFilter {
        direction: Some("inbound".into()),
        include_notes: false,
        unread_only: a.unread_only.unwrap_or(false),
        ..Default::default()
    };
    let mut ids = serde_json::Map::new();
    match optional_contact(conn, org, a.contact.as_deref(), a.company.as_deref())? {
        Err(clarification) => return reply(clarification),
        Ok(None) => {}
        Ok(Some(contact)) => {
            ids.insert("contact_id".into(), contact.id.clone().into());
            filter.contact_id = Some(contact.id);
        }
    }
    let page = interactions::list(
        conn,
        org,
        &filter,
        PageRequest {
            limit: a.limit.unwrap_or(5),
            offset: 0,
        },
    )?;
    let mut replies = Vec::with_capacity(page.items.len());
    for i in page.items {
        let who = match &i.contact_id {
            Some(id) => contacts::get(conn, org, id)?,
            None => None,
        };
        replies.push((i, who));
    }
    Ok(Step::Reply(inbox_reply(
        replies,
        page.total,
        filter.unread_only,
        ids,
    )))
}

/// Characters of an inbound reply's body that `reply_inbox` returns (DESIGN §17).
pub const INBOX_PREVIEW_CHARS: usize = 500;

/// The answer to `reply_inbox`: the replies with who sent each, bodies cut to a preview of
/// [`INBOX_PREVIEW_CHARS`] characters.
pub(crate) fn inbox_reply(
    replies: Vec<(Interaction, Option<Contact>)>,
    total: u64,
    unread_only: bool,
    ids: Map<String, Value>,
) -> NativeReply {
    let latest_from = replies
        .first()
        .and_then(|(_, who)| who.as_ref())
        .map(|c| speech::name(c.display_name()));
    let latest = replies.first().map(|(i, _)| quote(&i.content, 100));
    let items: Vec<Value> = replies
        .into_iter()
        .map(|(mut i, who)| {
            // A voice reply carries a preview; the full text is at GET /activity.
            let chars = i.content.chars().count();
            let truncated = chars > INBOX_PREVIEW_CHARS;
            if truncated {
                i.content = i.content.chars().take(INBOX_PREVIEW_CHARS).collect();
            }
            json!({
                "interaction": i,
                "content_truncated": truncated,
                "content_chars": chars,
                "contact": who.map(|c| json!({ "id": c.id, "name": c.display_name(), "company": c.company })),
            })
        })
        .collect();
    let noun = if unread_only {
        ("unread reply", "unread replies")
    } else {
        ("reply", "replies")
    };
    // The quote is marked as theirs, so a question in it is not heard as the assistant's own.
    let spoken = match latest {
        None => format!("No {} right now.", noun.1),
        Some(content) => format!(
            "You have {}. In the latest, {} wrote: {}",
            count(total, noun.0, noun.1),
            latest_from.as_deref().unwrap_or("an unknown sender"),
            content
        ),
    };
    let mut r = NativeReply::result(spoken, json!({ "replies": items, "total": total }));
    r.ids = ids;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound(content: String) -> Interaction {
        Interaction {
            id: "i1".into(),
            contact_id: None,
            campaign_id: None,
            direction: "inbound".into(),
            channel: "email".into(),
            subject: None,
            content,
            metadata: Value::Null,
            is_read: false,
            created_at: "2026-11-29T12:00:00.000Z".into(),
        }
    }

    #[test]
    fn inbox_bodies_are_previews_of_500_characters() {
        let long = "é".repeat(2_000);
        let reply = inbox_reply(
            vec![(inbound(long), None), (inbound("Sounds good".into()), None)],
            2,
            false,
            Map::new(),
        );
        let v = serde_json::to_value(&reply).unwrap();
        let items = v["data"]["replies"].as_array().expect("replies");
        let first = &items[0];
        assert_eq!(
            first["interaction"]["content"]
                .as_str()
                .unwrap()
                .chars()
                .count(),
            INBOX_PREVIEW_CHARS
        );
        assert_eq!(first["content_truncated"], true);
        assert_eq!(first["content_chars"], 2_000);
        assert_eq!(items[1]["interaction"]["content"], "Sounds good");
        assert_eq!(items[1]["content_truncated"], false);
    }
}
