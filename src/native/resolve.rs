//! Reference resolution (DESIGN §5): turns what the user said into records. A UUID is an id, a
//! string with `@` is an email, anything else is a name matched case- and accent-insensitively —
//! exactly, then by token prefix, then fuzzily (Jaro–Winkler ≥ 0.9) — narrowed by company.
//! Every step is an index lookup; nothing scans a table.

use std::borrow::Borrow;
use std::collections::HashSet;

use rusqlite::Connection;

use super::reply::Candidate;
use crate::error::{ApiError, ApiResult};
use crate::ids::is_uuid;
use crate::store::campaigns::{self, Campaign};
use crate::store::companies::{self, Company};
use crate::store::contacts::{self, Contact, WithAccount};
use crate::text::{looks_like_domain, normalize, tokens};

/// Most candidates offered back for clarification.
pub const MAX_CANDIDATES: usize = 5;
/// Similarity needed for a fuzzy match.
pub const FUZZY_THRESHOLD: f64 = 0.9;
/// Upper bound of rows read per index probe, so a very common name cannot make a lookup slow.
const PROBE_CAP: usize = 1_000;

/// One record, or several that fit equally well.
#[derive(Debug)]
pub enum Resolved<T> {
    One(T),
    Ambiguous(Ambiguity),
}

/// Several records fit a reference: the first [`MAX_CANDIDATES`] to offer back, and how many
/// fit in all (so the question can say "there are 7 people called Uma").
#[derive(Debug, Clone, PartialEq)]
pub struct Ambiguity {
    pub candidates: Vec<Candidate>,
    pub total: usize,
}

/// `None` when nothing was found, the record when exactly one was, else up to
/// [`MAX_CANDIDATES`] candidates to offer back with the number found.
fn pick<T>(found: Vec<T>, candidate: impl Fn(&T) -> Candidate) -> Option<Resolved<T>> {
    match found.len() {
        0 => None,
        1 => found.into_iter().next().map(Resolved::One),
        total => Some(Resolved::Ambiguous(Ambiguity {
            candidates: found.iter().take(MAX_CANDIDATES).map(candidate).collect(),
            total,
        })),
    }
}

/// Shortest name query (in letters or digits) matched by prefix or fuzzily. A single letter
/// fits a large part of any CRM, so offering five of them back would be a pointless question;
/// such a query only matches a record whose whole name it is.
pub const MIN_PREFIX_CHARS: usize = 2;

fn too_short(normalized: &str) -> bool {
    normalized.chars().filter(|c| !c.is_whitespace()).count() < MIN_PREFIX_CHARS
}

/// The answer to a one-letter reference that matched no whole name.
fn too_short_error(field: &str, what: &str) -> ApiError {
    ApiError::validation(
        &format!("action.{field}"),
        format!(
            "too short to find a {what} by name: give at least {MIN_PREFIX_CHARS} letters, an email or an id"
        ),
    )
    .with_spoken(format!(
        "Which {what} do you mean? I need more than one letter of the name."
    ))
}

fn contact_candidate(c: &Contact) -> Candidate {
    Candidate {
        id: c.id.clone(),
        name: c.display_name().to_string(),
        company: c.company.clone(),
        title: c.title.clone(),
    }
}

fn campaign_candidate(c: &Campaign) -> Candidate {
    Candidate {
        id: c.id.clone(),
        name: c.name.clone(),
        company: None,
        title: Some(c.status.to_string()),
    }
}

fn company_candidate(c: &Company) -> Candidate {
    Candidate {
        id: c.id.clone(),
        name: c.display_name().to_string(),
        company: c.domain.clone(),
        title: c.industry.clone(),
    }
}

/// Resolves a contact reference, narrowed by `company` when given.
pub fn contact(
    conn: &Connection,
    org: &str,
    reference: &str,
    company: Option<&str>,
) -> ApiResult<Resolved<Contact>> {
    contact_rows(
        conn,
        org,
        reference,
        company,
        |query| contacts::by_exact_name(conn, org, query, PROBE_CAP),
        Ok,
    )
}

/// Like [`contact`], with the contact's company (for `lookup_person`). An exact name, the
/// common case, reads both in one statement.
pub fn contact_with_account(
    conn: &Connection,
    org: &str,
    reference: &str,
    company: Option<&str>,
) -> ApiResult<Resolved<WithAccount>> {
    contact_rows(
        conn,
        org,
        reference,
        company,
        |query| contacts::by_exact_name_with_account(conn, org, query, PROBE_CAP),
        |contact| {
            let account = match &contact.account_id {
                Some(id) => companies::get(conn, org, id)?,
                None => None,
            };
            Ok(WithAccount { contact, account })
        },
    )
}

/// [`contact`]'s steps, over rows of type `T`: what `exact` reads for an exact name, else a
/// contact found another way and completed by `complete` (only once it is the one picked).
fn contact_rows<T: Borrow<Contact>>(
    conn: &Connection,
    org: &str,
    reference: &str,
    company: Option<&str>,
    exact: impl Fn(&str) -> ApiResult<Vec<T>>,
    complete: impl Fn(Contact) -> ApiResult<T>,
) -> ApiResult<Resolved<T>> {
    let reference = reference.trim();
    let not_found = || contact_not_found(reference, company);
    let one = |found: Option<Contact>| match found {
        Some(c) => Ok(Resolved::One(complete(c)?)),
        None => Err(not_found()),
    };
    if is_uuid(reference) {
        return one(contacts::get(conn, org, &reference.to_ascii_lowercase())?);
    }
    if reference.contains('@') {
        return one(contacts::find_by_email(conn, org, reference)?);
    }
    let query = normalize(reference);
    if query.is_empty() {
        return Err(
            ApiError::validation("action.contactRef", "needs letters or digits")
                .with_spoken("I need to know which contact you mean."),
        );
    }
    let company_norm = company.map(normalize).filter(|c| !c.is_empty());
    let fits_company = |c: &Contact| fits_company(company_norm.as_deref(), c);
    // The rows at once: an exact name is the common case, and one query is cheaper than ids
    // and then a query per id.
    let found: Vec<T> = exact(&query)?
        .into_iter()
        .filter(|r| fits_company(r.borrow()))
        .collect();
    if let Some(r) = pick(found, |r| contact_candidate(r.borrow())) {
        return Ok(r);
    }
    if too_short(&query) {
        return Err(too_short_error("contactRef", "contact"));
    }
    // Then by token prefix, then fuzzily: each step finds ids, read in one query.
    let steps: [MatchIds; 2] = [prefix_matches, fuzzy_matches];
    for ids_of in steps {
        let matches = contacts::get_many(conn, org, &ids_of(conn, org, &query)?)?;
        let found: Vec<Contact> = matches.into_iter().filter(|c| fits_company(c)).collect();
        match pick(found, contact_candidate) {
            Some(Resolved::One(c)) => return Ok(Resolved::One(complete(c)?)),
            Some(Resolved::Ambiguous(a)) => return Ok(Resolved::Ambiguous(a)),
            None => {}
        }
    }
    Err(not_found())
}

fn contact_not_found(reference: &str, company: Option<&str>) -> ApiError {
    let at = company.map(|c| format!(" at {c}")).unwrap_or_default();
    let spoken_at = company
        .and_then(crate::native::speech::echo)
        .map(|c| format!(" at {c}"))
        .unwrap_or_default();
    ApiError::not_found("Contact")
        .with_details(format!(
            "no contact matches '{}'{at}",
            crate::text::clip(reference, 80)
        ))
        .with_spoken(format!(
            "I couldn't find {}{spoken_at}.",
            spoken_ref(reference, "that contact")
        ))
}

/// Does the contact work at the company the user named (by name or email domain)?
fn fits_company(company_norm: Option<&str>, c: &Contact) -> bool {
    let Some(q) = company_norm else {
        return true;
    };
    let name = c.company.as_deref().map(normalize).unwrap_or_default();
    let domain = c
        .email
        .as_deref()
        .and_then(crate::text::email_domain)
        .unwrap_or_default();
    (!name.is_empty() && (name == q || name.starts_with(q) || q.starts_with(name.as_str())))
        || (!domain.is_empty()
            && (domain == q || domain.starts_with(&format!("{}.", q.replace(' ', "")))))
}

/// Resolves a contact reference among `pool`, the records a remote search returned, with the
/// same rules as [`contact`]: id, email, then exact name, token prefix and fuzzy match.
pub fn contact_among(
    reference: &str,
    company: Option<&str>,
    pool: Vec<Contact>,
) -> ApiResult<Resolved<Contact>> {
    let reference = reference.trim();
    let not_found = || contact_not_found(reference, company);
    if is_uuid(reference) {
        return by_id(pool, reference, |c| &c.id).ok_or_else(not_found);
    }
    if reference.contains('@') {
        return pool
            .into_iter()
            .find(|c| {
                c.email
                    .as_deref()
                    .is_some_and(|e| e.eq_ignore_ascii_case(reference))
            })
            .map(Resolved::One)
            .ok_or_else(not_found);
    }
    let query = normalize(reference);
    if query.is_empty() {
        return Err(
            ApiError::validation("action.contactRef", "needs letters or digits")
                .with_spoken("I need to know which contact you mean."),
        );
    }
    let company_norm = company.map(normalize).filter(|c| !c.is_empty());
    let pool: Vec<(String, Contact)> = pool
        .into_iter()
        .filter(|c| fits_company(company_norm.as_deref(), c))
        .map(|c| (normalize(c.display_name()), c))
        .collect();
    let q_tokens = tokens(&query);
    let short = too_short(&query);
    let exact: Vec<&Contact> = pool
        .iter()
        .filter(|(n, _)| *n == query)
        .map(|(_, c)| c)
        .collect();
    let prefix: Vec<&Contact> = pool
        .iter()
        .filter(|(n, _)| !short && every_token_prefixes(&q_tokens, n))
        .map(|(_, c)| c)
        .collect();
    for found in [exact, prefix] {
        if let Some(r) = pick(found.into_iter().cloned().collect(), contact_candidate) {
            return Ok(r);
        }
    }
    if short {
        return Err(too_short_error("contactRef", "contact"));
    }
    let fuzzy = best_fuzzy(pool.into_iter().map(|(n, c)| (similarity(&query, &n), c)));
    pick(fuzzy, contact_candidate).ok_or_else(not_found)
}

/// Resolves a campaign reference among `pool` (the org's campaigns as listed by a remote API).
pub fn campaign_among(reference: &str, pool: Vec<Campaign>) -> ApiResult<Resolved<Campaign>> {
    let reference = reference.trim();
    let not_found = || campaign_not_found(reference);
    if is_uuid(reference) {
        return by_id(pool, reference, |c| &c.id).ok_or_else(not_found);
    }
    let named = pool.into_iter().map(|c| (normalize(&c.name), c)).collect();
    by_name(reference, named, campaign_candidate).ok_or_else(not_found)
}

/// Resolves a company reference among `pool` (a remote search's results).
pub fn company_among(reference: &str, pool: Vec<Company>) -> ApiResult<Resolved<Company>> {
    let reference = reference.trim();
    let not_found = || company_not_found(reference);
    if is_uuid(reference) {
        return by_id(pool, reference, |c| &c.id).ok_or_else(not_found);
    }
    if looks_like_domain(reference) {
        let d = crate::text::normalize_domain(reference);
        if let Some(c) = pool.iter().find(|c| {
            c.domain
                .as_deref()
                .map(crate::text::normalize_domain)
                .as_ref()
                == Some(&d)
        }) {
            return Ok(Resolved::One(c.clone()));
        }
    }
    let named = pool
        .into_iter()
        .map(|c| (normalize(c.display_name()), c))
        .collect();
    by_name(reference, named, company_candidate).ok_or_else(not_found)
}

/// The record with this id (ids compare in lower case).
fn by_id<T>(pool: Vec<T>, reference: &str, id: impl Fn(&T) -> &String) -> Option<Resolved<T>> {
    let wanted = reference.to_ascii_lowercase();
    pool.into_iter()
        .find(|r| *id(r) == wanted)
        .map(Resolved::One)
}

/// Exact name, then name prefix, then fuzzy, over records paired with their normalised names
/// (the steps the embedded store takes with its indexes for campaigns and companies).
fn by_name<T: Clone>(
    reference: &str,
    named: Vec<(String, T)>,
    candidate: impl Fn(&T) -> Candidate,
) -> Option<Resolved<T>> {
    let q = normalize(reference);
    if q.is_empty() {
        return None;
    }
    let prefixes: &[bool] = if too_short(&q) {
        &[false]
    } else {
        &[false, true]
    };
    for prefix in prefixes.iter().copied() {
        let found: Vec<T> = named
            .iter()
            .filter(|(n, _)| if prefix { n.starts_with(&q) } else { *n == q })
            .map(|(_, r)| r.clone())
            .collect();
        if let Some(r) = pick(found, &candidate) {
            return Some(r);
        }
    }
    if too_short(&q) {
        return None;
    }
    let found = best_fuzzy(named.into_iter().map(|(n, r)| (similarity(&q, &n), r)));
    pick(found, candidate)
}

/// A resolution step after the exact name: the ids of the contacts it matches.
type MatchIds = fn(&Connection, &str, &str) -> ApiResult<Vec<String>>;

/// Every query token is a prefix of one of the name's tokens ("sara ch" → "sarah chen").
fn every_token_prefixes(q_tokens: &[&str], name: &str) -> bool {
    let n_tokens = tokens(name);
    q_tokens
        .iter()
        .all(|q| n_tokens.iter().any(|n| n.starts_with(q)))
}

/// Contacts where every query token is a prefix of one of the name's tokens ("sara ch" →
/// "Sarah Chen"). Probes the index with the longest query token.
fn prefix_matches(conn: &Connection, org: &str, query: &str) -> ApiResult<Vec<String>> {
    let q_tokens = tokens(query);
    let Some(longest) = q_tokens.iter().max_by_key(|t| t.len()) else {
        return Ok(vec![]);
    };
    let hits = contacts::ids_by_token_prefix(conn, org, longest, PROBE_CAP)?;
    let mut seen = HashSet::new();
    let ids: Vec<String> = hits
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| seen.insert(id.clone()))
        .collect();
    if q_tokens.len() == 1 {
        return Ok(ids);
    }
    let names = contacts::name_norms(conn, org, &ids)?;
    Ok(names
        .into_iter()
        .filter(|(_, name, _)| every_token_prefixes(&q_tokens, name))
        .map(|(id, _, _)| id)
        .collect())
}

/// Contacts whose name is within Jaro–Winkler [`FUZZY_THRESHOLD`] of the query. Candidates come
/// from names sharing the first two letters of a query token (an index range), best first.
fn fuzzy_matches(conn: &Connection, org: &str, query: &str) -> ApiResult<Vec<String>> {
    let q_tokens = tokens(query);
    let mut candidate_ids: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    for t in &q_tokens {
        let stem: String = t.chars().take(2).collect();
        if stem.is_empty() {
            continue;
        }
        for (id, _) in contacts::ids_by_token_prefix(conn, org, &stem, PROBE_CAP)? {
            if seen.insert(id.clone()) {
                candidate_ids.push(id);
            }
        }
    }
    let names = contacts::name_norms(conn, org, &candidate_ids)?;
    Ok(best_fuzzy(
        names
            .into_iter()
            .map(|(id, name, _)| (similarity(query, &name), id)),
    ))
}

/// The items scoring at least [`FUZZY_THRESHOLD`], best first, keeping only the best-scoring
/// tier so that one clearly better match is not reported as ambiguous.
fn best_fuzzy<T>(scored: impl Iterator<Item = (f64, T)>) -> Vec<T> {
    let mut scored: Vec<(f64, T)> = scored.filter(|(s, _)| *s >= FUZZY_THRESHOLD).collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let best = scored.first().map(|s| s.0).unwrap_or(0.0);
    scored
        .into_iter()
        .filter(|(s, _)| best - *s < 0.02)
        .map(|(_, item)| item)
        .collect()
}

/// Similarity every word of a multi-word query needs with some word of the name.
pub const TOKEN_FLOOR: f64 = 0.85;

/// The better of whole-string and token-wise Jaro–Winkler similarity.
pub fn similarity(query: &str, name: &str) -> f64 {
    let whole = strsim::jaro_winkler(query, name);
    let q = tokens(query);
    let n = tokens(name);
    if q.is_empty() || n.is_empty() || q.len() > n.len() {
        return whole;
    }
    let best: Vec<f64> = q
        .iter()
        .map(|qt| {
            n.iter()
                .map(|nt| strsim::jaro_winkler(qt, nt))
                .fold(0.0, f64::max)
        })
        .collect();
    let tokenwise = best.iter().sum::<f64>() / q.len() as f64;
    // A shared first name lifts the whole-string score of "tobias wagner" against "tobias weber"
    // over the threshold; a word that resembles no word of the name means another person.
    if q.len() > 1 && best.iter().any(|s| *s < TOKEN_FLOOR) {
        return whole.min(tokenwise);
    }
    // A one-word query must not fuzzily match a two-word name better than the exact name would.
    let coverage = q.len() as f64 / n.len() as f64;
    whole.max(tokenwise * (0.9 + 0.1 * coverage))
}

/// Resolves a campaign by id or name.
pub fn campaign(conn: &Connection, org: &str, reference: &str) -> ApiResult<Resolved<Campaign>> {
    let reference = reference.trim();
    let not_found = || campaign_not_found(reference);
    if is_uuid(reference) {
        return campaigns::get(conn, org, &reference.to_ascii_lowercase())?
            .map(Resolved::One)
            .ok_or_else(not_found);
    }
    let q = normalize(reference);
    if q.is_empty() {
        return Err(not_found());
    }
    // Exact name first, then name prefix.
    for prefix in [false, true] {
        if prefix && too_short(&q) {
            return Err(too_short_error("campaignRef", "campaign"));
        }
        let found = campaigns::find_by_name(conn, org, &q, prefix, PROBE_CAP)?;
        if let Some(r) = pick(found, campaign_candidate) {
            return Ok(r);
        }
    }
    // Campaign lists are short; fuzzy-match over all names (e.g. "seed founder", "q4 enterprize").
    let names = campaigns::all_names(conn, org, PROBE_CAP)?;
    let ids = best_fuzzy(
        names
            .into_iter()
            .map(|(id, name)| (similarity(&q, &name), id)),
    );
    let mut found = Vec::new();
    for id in ids {
        if let Some(c) = campaigns::get(conn, org, &id)? {
            found.push(c);
        }
    }
    pick(found, campaign_candidate).ok_or_else(not_found)
}

/// Resolves a company by id, domain or name.
pub fn company(conn: &Connection, org: &str, reference: &str) -> ApiResult<Resolved<Company>> {
    let reference = reference.trim();
    let not_found = || company_not_found(reference);
    if is_uuid(reference) {
        return companies::get(conn, org, &reference.to_ascii_lowercase())?
            .map(Resolved::One)
            .ok_or_else(not_found);
    }
    if looks_like_domain(reference) {
        if let Some(c) = companies::find_by_domain(conn, org, reference)? {
            return Ok(Resolved::One(c));
        }
    }
    let q = normalize(reference);
    if q.is_empty() {
        return Err(not_found());
    }
    // Exact name first, then name prefix.
    for prefix in [false, true] {
        if prefix && too_short(&q) {
            return Err(too_short_error("company", "company"));
        }
        let found = companies::find_by_name(conn, org, &q, prefix, PROBE_CAP)?;
        if let Some(r) = pick(found, company_candidate) {
            return Ok(r);
        }
    }
    let stem: String = q.chars().take(2).collect();
    let near = companies::find_by_name(conn, org, &stem, true, PROBE_CAP)?;
    let found = best_fuzzy(
        near.into_iter()
            .map(|c| (similarity(&q, &normalize(c.display_name())), c)),
    );
    pick(found, company_candidate).ok_or_else(not_found)
}

fn campaign_not_found(reference: &str) -> ApiError {
    let spoken = match crate::native::speech::echo(reference).filter(|_| !is_uuid(reference)) {
        Some(name) => format!("I couldn't find a campaign called {name}."),
        None => "I couldn't find that campaign.".to_string(),
    };
    ApiError::not_found("Campaign")
        .with_details(format!(
            "no campaign matches '{}'",
            crate::text::clip(reference, 80)
        ))
        .with_spoken(spoken)
}

fn company_not_found(reference: &str) -> ApiError {
    ApiError::not_found("Company")
        .with_details(format!(
            "no company matches '{}'",
            crate::text::clip(reference, 80)
        ))
        .with_spoken(format!(
            "I couldn't find {} in your CRM.",
            spoken_ref(reference, "that company")
        ))
}

/// How a reference is said back: a name as given when it reads like one, a plausible email as
/// given, anything else (ids, code, markup) as `fallback` ("that contact").
fn spoken_ref(reference: &str, fallback: &str) -> String {
    if is_uuid(reference) {
        return fallback.to_string();
    }
    if crate::text::is_plausible_email(reference)
        && reference
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '@' | '.' | '-' | '+' | '_'))
    {
        return reference.trim().to_string();
    }
    crate::native::speech::echo(reference).unwrap_or_else(|| fallback.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_store;

    fn demo() -> (tempfile::TempDir, crate::store::Store) {
        let (d, s) = test_store();
        s.write_sync(|tx| crate::demo::seed(tx)).unwrap();
        (d, s)
    }

    fn name(r: Resolved<Contact>) -> String {
        match r {
            Resolved::One(c) => c.full_name,
            Resolved::Ambiguous(a) => format!("ambiguous:{}", a.total),
        }
    }

    #[test]
    fn contacts_by_every_kind_of_reference() {
        let (_d, s) = demo();
        s.read_sync(|c| {
            assert_eq!(name(contact(c, "demo", "Sarah Chen", None)?), "Sarah Chen");
            assert_eq!(
                name(contact(c, "demo", "sarah chen", Some("Notion"))?),
                "Sarah Chen"
            );
            assert_eq!(name(contact(c, "demo", "sara chen", None)?), "Sarah Chen");
            assert_eq!(name(contact(c, "demo", "Sarah Chem", None)?), "Sarah Chen");
            assert_eq!(name(contact(c, "demo", "Sarah", None)?), "ambiguous:2");
            assert_eq!(
                name(contact(c, "demo", "Sarah", Some("Figma"))?),
                "Sarah Kim"
            );
            assert_eq!(
                name(contact(c, "demo", "JOHN@ACME.COM", None)?),
                "John Smith"
            );
            assert_eq!(name(contact(c, "demo", "Jöhn Smith", None)?), "John Smith");
            let id = contacts::find_by_email(c, "demo", "john@acme.com")?
                .unwrap()
                .id;
            assert_eq!(name(contact(c, "demo", &id, None)?), "John Smith");
            let e = contact(c, "demo", "Nobody Anywhere", None).unwrap_err();
            assert_eq!(e.code, crate::error::ErrorCode::ResourceNotFound);
            assert_eq!(e.spoken_summary, "I couldn't find Nobody Anywhere.");
            assert!(contact(c, "demo", "Sarah Chen", Some("Acme")).is_err());
            assert!(contact(c, "other-org", "Sarah Chen", None).is_err());
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn campaigns_and_companies() {
        let (_d, s) = demo();
        s.read_sync(|c| {
            let one = |r: Resolved<Campaign>| match r {
                Resolved::One(c) => c.name,
                Resolved::Ambiguous(_) => "ambiguous".into(),
            };
            assert_eq!(one(campaign(c, "demo", "Seed founders")?), "Seed founders");
            assert_eq!(one(campaign(c, "demo", "seed")?), "Seed founders");
            assert_eq!(one(campaign(c, "demo", "q4 enterprize")?), "Q4 Enterprise");
            assert!(campaign(c, "demo", "Winter sale").is_err());
            let co = |r: Resolved<Company>| match r {
                Resolved::One(c) => c.display_name().to_string(),
                Resolved::Ambiguous(_) => "ambiguous".into(),
            };
            assert_eq!(co(company(c, "demo", "notion.so")?), "Notion");
            assert_eq!(co(company(c, "demo", "ACME")?), "Acme");
            assert_eq!(co(company(c, "demo", "Figmaa")?), "Figma");
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn similarity_prefers_full_names() {
        assert!(similarity("sara chen", "sarah chen") > 0.95);
        assert!(similarity("sarah", "sarah kim") < similarity("sarah kim", "sarah kim"));
        assert!(similarity("john smith", "jon smyth") >= 0.85);
        assert!(similarity("sarah chem", "sarah chen") >= FUZZY_THRESHOLD);
        assert!(similarity("kofi berg", "kofi weber") < FUZZY_THRESHOLD);
        assert!(similarity("tobias wagner", "tobias weber") < FUZZY_THRESHOLD);
    }
}
