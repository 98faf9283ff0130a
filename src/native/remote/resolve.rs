//! Reference resolution upstream: contacts, campaigns and companies found through REST v1
//! searches with the same matching rules as the embedded store, or through the upstream's own
//! native endpoint when the key may not search.

use std::collections::HashSet;

use futures_util::future::join_all;
use serde::de::DeserializeOwned;

use super::wire::{CampaignFound, PersonFound, UpstreamAction};
use super::{ask_native, parse_part, q, Remote};
use crate::error::{ApiResult, ErrorCode};
use crate::ids::is_uuid;
use crate::native::action::ContactCampaign;
use crate::native::actions::clarify;
use crate::native::reply::{NativeReply, ReplyMode};
use crate::native::resolve::{self, Resolved};
use crate::store::campaigns::Campaign;
use crate::store::companies::Company;
use crate::store::contacts::Contact;
use crate::text::{normalize, tokens};
// Every id placed in an upstream path goes through this (ids come from clients and from
// upstream data alike).
use crate::upstream::path_segment as seg;

/// Most records one resolution search asks for.
const SEARCH_LIMIT: u32 = 100;
/// Most single-token searches tried when the whole reference found nobody.
const TOKEN_SEARCHES: usize = 3;

/// A resolved contact, or the clarification to send instead.
pub(super) async fn contact(
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
    let action = UpstreamAction::LookupPerson {
        contact_ref: reference,
        company,
    };
    let found = resolve_via_native::<PersonFound>(r, &action).await?;
    Ok(found.map(|f| f.contact))
}

/// Campaign resolution for a key without the `campaigns` scope, through the upstream's own
/// `campaign_stats`.
async fn campaign_via_native(
    r: &Remote<'_>,
    reference: &str,
) -> ApiResult<Result<Campaign, NativeReply>> {
    let action = UpstreamAction::CampaignStats {
        campaign_ref: reference,
    };
    let found = resolve_via_native::<CampaignFound>(r, &action).await?;
    Ok(found.map(|f| f.campaign))
}

/// Asks the upstream's native endpoint a read and takes its answer's `data` as `T`, or its
/// clarification.
async fn resolve_via_native<T: DeserializeOwned>(
    r: &Remote<'_>,
    action: &UpstreamAction<'_>,
) -> ApiResult<Result<T, NativeReply>> {
    let answer = ask_native(r, "native.resolve", action, false, None).await?;
    if answer.mode != ReplyMode::Result {
        return Ok(Err(answer));
    }
    parse_part(&answer.data, "native.resolve").map(Ok)
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
pub(super) async fn optional_contact(
    r: &Remote<'_>,
    reference: Option<&str>,
    company: Option<&str>,
) -> ApiResult<Result<Option<Contact>, NativeReply>> {
    match reference.filter(|s| !s.trim().is_empty()) {
        None => Ok(Ok(None)),
        Some(s) => Ok(contact(r, Some(s), company).await?.map(Some)),
    }
}

pub(super) async fn campaign(
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

pub(super) async fn company(
    r: &Remote<'_>,
    reference: &str,
) -> ApiResult<Result<Company, NativeReply>> {
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

/// Both references of a membership action, looked up concurrently.
pub(super) async fn contact_and_campaign(
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
