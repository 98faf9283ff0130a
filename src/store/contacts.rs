//! Contacts: people in the CRM, unique per org by email, linked to a company by email domain, and
//! indexed by name tokens so that voice lookups by name never scan the table.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::companies::{self, Company};
use super::sql::{json_col, like_escape, Filter};
use super::{Page, PageRequest};
use crate::domain::ContactStatus;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::ids::{new_id, now_rfc3339};
use crate::input::{merge_object, patched, Fields, Patch};
use crate::text::{email_domain, is_plausible_email, normalize, tokens};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Contact {
    pub id: String,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    #[serde(default)]
    pub full_name: String,
    pub company: Option<String>,
    pub title: Option<String>,
    pub linkedin_url: Option<String>,
    pub phone: Option<String>,
    pub status: ContactStatus,
    pub folder_id: Option<String>,
    pub account_id: Option<String>,
    #[serde(default)]
    pub custom_fields: Value,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub updated_at: String,
}

impl Contact {
    /// The name to say out loud: full name, else email, else "that contact".
    pub fn display_name(&self) -> &str {
        if !self.full_name.is_empty() {
            &self.full_name
        } else if let Some(e) = &self.email {
            e
        } else {
            "that contact"
        }
    }
}

/// Fields of a contact as given by a client; `None` = not given.
#[derive(Debug, Clone, Default)]
pub struct ContactFields {
    pub email: Option<Patch<String>>,
    pub first_name: Option<Patch<String>>,
    pub last_name: Option<Patch<String>>,
    pub company: Option<Patch<String>>,
    pub title: Option<Patch<String>>,
    pub linkedin_url: Option<Patch<String>>,
    pub phone: Option<Patch<String>>,
    pub folder_id: Option<Patch<String>>,
    pub status: Option<ContactStatus>,
    /// Merged into `custom_fields`; unknown body fields land here too.
    pub custom_fields: Map<String, Value>,
}

/// Body fields that are not contact attributes and must not end up in `custom_fields`.
const CONTROL_FIELDS: &[&str] = &[
    "upsert",
    "id",
    "created_at",
    "updated_at",
    "full_name",
    "account_id",
];

impl ContactFields {
    pub fn from_json(f: &mut Fields<'_>) -> ApiResult<Self> {
        let mut c = ContactFields {
            email: f.string("email", 254)?,
            first_name: f.string("first_name", 200)?,
            last_name: f.string("last_name", 200)?,
            company: f.string("company", 200)?,
            title: f.string("title", 200)?,
            linkedin_url: f.string("linkedin_url", 500)?,
            phone: f.string("phone", 50)?,
            folder_id: f.string("folder_id", 100)?,
            status: f.parsed("status")?,
            custom_fields: Map::new(),
        };
        if let Some(Patch::Set(e)) = &c.email {
            if !is_plausible_email(e) {
                return Err(ApiError::validation(
                    &f.field_path("email"),
                    format!("'{e}' is not a valid email address"),
                ));
            }
        }
        match f.raw("custom_fields") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => c.custom_fields.extend(m.clone()),
            Some(_) => {
                return Err(ApiError::validation(
                    &f.field_path("custom_fields"),
                    "expected an object",
                ))
            }
        }
        for (k, v) in f.rest() {
            if !CONTROL_FIELDS.contains(&k.as_str()) {
                c.custom_fields.insert(k, v);
            }
        }
        Ok(c)
    }

    pub fn with_email(email: &str) -> Self {
        ContactFields {
            email: Some(Patch::Set(email.to_string())),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ContactFilter {
    pub status: Option<ContactStatus>,
    pub folder_id: Option<String>,
    pub search: Option<String>,
}

/// The columns [`from_row`] reads, as a literal so fast-path queries can be spelled out with
/// `concat!` at compile time rather than formatted per call.
macro_rules! columns {
    () => {
        "id, email, first_name, last_name, company, title, linkedin_url, phone, \
         status, folder_id, account_id, custom_fields, created_at, updated_at"
    };
}
const COLUMNS: &str = columns!();

fn from_row(r: &Row<'_>) -> rusqlite::Result<Contact> {
    let first: Option<String> = r.get(2)?;
    let last: Option<String> = r.get(3)?;
    Ok(Contact {
        id: r.get(0)?,
        email: r.get(1)?,
        full_name: full_name(first.as_deref(), last.as_deref()),
        first_name: first,
        last_name: last,
        company: r.get(4)?,
        title: r.get(5)?,
        linkedin_url: r.get(6)?,
        phone: r.get(7)?,
        status: r.get(8)?,
        folder_id: r.get(9)?,
        account_id: r.get(10)?,
        custom_fields: json_col(r.get(11)?, Value::Object(Map::new())),
        created_at: r.get(12)?,
        updated_at: r.get(13)?,
    })
}

fn full_name(first: Option<&str>, last: Option<&str>) -> String {
    match (first, last) {
        (Some(f), Some(l)) => format!("{f} {l}"),
        (Some(f), None) => f.to_string(),
        (None, Some(l)) => l.to_string(),
        (None, None) => String::new(),
    }
}

pub fn get(conn: &Connection, org: &str, id: &str) -> ApiResult<Option<Contact>> {
    const SQL: &str = concat!(
        "SELECT ",
        columns!(),
        " FROM contacts WHERE id = ?1 AND org_id = ?2"
    );
    Ok(conn
        .prepare_cached(SQL)?
        .query_row([id, org], from_row)
        .optional()?)
}

pub fn require(conn: &Connection, org: &str, id: &str) -> ApiResult<Contact> {
    get(conn, org, id)?.ok_or_else(|| ApiError::not_found("Contact"))
}

pub fn find_by_email(conn: &Connection, org: &str, email: &str) -> ApiResult<Option<Contact>> {
    let sql = format!("SELECT {COLUMNS} FROM contacts WHERE org_id = ?1 AND email_lower = ?2");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([org, &email.trim().to_lowercase()], from_row)
        .optional()?)
}

/// Several contacts by id, in the order given (missing ids are skipped).
pub fn get_many(conn: &Connection, org: &str, ids: &[String]) -> ApiResult<Vec<Contact>> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(c) = get(conn, org, id)? {
            out.push(c);
        }
    }
    Ok(out)
}

pub fn list(
    conn: &Connection,
    org: &str,
    filter: &ContactFilter,
    page: PageRequest,
) -> ApiResult<Page<Contact>> {
    let mut f = Filter::new("org_id = ?", org.to_string());
    if let Some(s) = filter.status {
        f.push("status = ?", s.as_str().to_string());
    }
    if let Some(folder) = &filter.folder_id {
        f.push("folder_id = ?", folder.clone());
    }
    if let Some(search) = filter
        .search
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let raw = format!("%{}%", like_escape(&search.to_lowercase()));
        let norm = normalize(search);
        if norm.is_empty() {
            // Punctuation-only searches can only match inside email addresses.
            f.push("email_lower LIKE ? ESCAPE '\\'", raw);
        } else {
            let norm = format!("%{}%", like_escape(&norm));
            f.clauses.push(
                "(name_norm LIKE ? ESCAPE '\\' OR company_norm LIKE ? ESCAPE '\\' OR email_lower LIKE ? ESCAPE '\\')"
                    .into(),
            );
            f.params.push(norm.clone().into());
            f.params.push(norm.into());
            f.params.push(raw.into());
        }
    }
    f.page(conn, "contacts", COLUMNS, "created_at", page, from_row)
}

/// The company (account) whose domain matches the email's domain, with its name.
fn account_for_email(
    conn: &Connection,
    org: &str,
    email: Option<&str>,
) -> ApiResult<Option<(String, Option<String>)>> {
    let Some(domain) = email.and_then(email_domain) else {
        return Ok(None);
    };
    Ok(conn
        .prepare_cached("SELECT id, name FROM companies WHERE org_id = ?1 AND domain = ?2")?
        .query_row([org, &domain], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

fn reindex_name(conn: &Connection, org: &str, id: &str, name_norm: &str) -> ApiResult<()> {
    conn.prepare_cached("DELETE FROM contact_name_tokens WHERE contact_id = ?1")?
        .execute([id])?;
    let mut ins = conn.prepare_cached(
        "INSERT OR IGNORE INTO contact_name_tokens (org_id, token, contact_id) VALUES (?1, ?2, ?3)",
    )?;
    for t in tokens(name_norm) {
        ins.execute(params![org, t, id])?;
    }
    Ok(())
}

/// Writes `c` (already merged) and keeps derived columns and the name index in step.
fn save(conn: &Connection, org: &str, c: &Contact, insert: bool) -> ApiResult<()> {
    let name_norm = normalize(&c.full_name);
    let email_lower = c.email.as_ref().map(|e| e.to_lowercase());
    let domain = c.email.as_deref().and_then(email_domain);
    let company_norm = c.company.as_deref().map(normalize).unwrap_or_default();
    let custom = c.custom_fields.to_string();
    let res = if insert {
        conn.prepare_cached(
            "INSERT INTO contacts (id, org_id, email, email_lower, email_domain, first_name, last_name,
                name_norm, company, company_norm, title, linkedin_url, phone, status, folder_id,
                account_id, custom_fields, updated_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
        )?
        .execute(params![
            c.id, org, c.email, email_lower, domain, c.first_name, c.last_name, name_norm, c.company,
            company_norm, c.title, c.linkedin_url, c.phone, c.status, c.folder_id, c.account_id,
            custom, c.updated_at, c.created_at,
        ])
    } else {
        conn.prepare_cached(
            "UPDATE contacts SET email = ?3, email_lower = ?4, email_domain = ?5, first_name = ?6,
                last_name = ?7, name_norm = ?8, company = ?9, company_norm = ?10, title = ?11,
                linkedin_url = ?12, phone = ?13, status = ?14, folder_id = ?15, account_id = ?16,
                custom_fields = ?17, updated_at = ?18
             WHERE id = ?1 AND org_id = ?2",
        )?
        .execute(params![
            c.id,
            org,
            c.email,
            email_lower,
            domain,
            c.first_name,
            c.last_name,
            name_norm,
            c.company,
            company_norm,
            c.title,
            c.linkedin_url,
            c.phone,
            c.status,
            c.folder_id,
            c.account_id,
            custom,
            c.updated_at,
        ])
    };
    match res {
        Ok(_) => {}
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            return Err(ApiError::new(
                ErrorCode::DuplicateResource,
                "A contact with that email already exists",
            )
            .with_details(format!(
                "email: {} already exists",
                c.email.as_deref().unwrap_or("")
            ))
            .with_spoken("A contact with that email already exists."));
        }
        Err(e) => return Err(e.into()),
    }
    reindex_name(conn, org, &c.id, &name_norm)
}

/// Applies `fields` on top of `base` (or an empty contact) and links the account by domain.
fn merge(
    conn: &Connection,
    org: &str,
    base: Option<&Contact>,
    fields: &ContactFields,
) -> ApiResult<Contact> {
    let now = now_rfc3339();
    let empty;
    let base = match base {
        Some(b) => b,
        None => {
            empty = Contact {
                id: new_id(),
                email: None,
                first_name: None,
                last_name: None,
                full_name: String::new(),
                company: None,
                title: None,
                linkedin_url: None,
                phone: None,
                status: ContactStatus::New,
                folder_id: None,
                account_id: None,
                custom_fields: Value::Object(Map::new()),
                created_at: now.clone(),
                updated_at: now.clone(),
            };
            &empty
        }
    };
    let mut c = base.clone();
    c.email = patched(&base.email, &fields.email);
    c.first_name = patched(&base.first_name, &fields.first_name);
    c.last_name = patched(&base.last_name, &fields.last_name);
    c.company = patched(&base.company, &fields.company);
    c.title = patched(&base.title, &fields.title);
    c.linkedin_url = patched(&base.linkedin_url, &fields.linkedin_url);
    c.phone = patched(&base.phone, &fields.phone);
    c.folder_id = patched(&base.folder_id, &fields.folder_id);
    if let Some(s) = fields.status {
        c.status = s;
    }
    if !fields.custom_fields.is_empty() {
        c.custom_fields = merge_object(&c.custom_fields, &fields.custom_fields);
    }
    c.full_name = full_name(c.first_name.as_deref(), c.last_name.as_deref());
    if c.email != base.email || base.account_id.is_none() || fields.email.is_some() {
        if let Some((account_id, account_name)) = account_for_email(conn, org, c.email.as_deref())?
        {
            c.account_id = Some(account_id);
            if c.company.is_none() {
                c.company = account_name;
            }
        } else if c.email != base.email {
            c.account_id = None;
        }
    }
    c.updated_at = now;
    Ok(c)
}

/// Creates one contact. Email is required and unique per org.
pub fn insert(conn: &Connection, org: &str, fields: &ContactFields) -> ApiResult<Contact> {
    if !matches!(fields.email, Some(Patch::Set(_))) {
        return Err(ApiError::validation("email", "missing"));
    }
    let c = merge(conn, org, None, fields)?;
    save(conn, org, &c, true)?;
    Ok(c)
}

/// Changes only the given fields.
pub fn update(
    conn: &Connection,
    org: &str,
    id: &str,
    fields: &ContactFields,
) -> ApiResult<Contact> {
    let base = require(conn, org, id)?;
    if matches!(fields.email, Some(Patch::Clear)) {
        return Err(ApiError::validation("email", "cannot be removed"));
    }
    let c = merge(conn, org, Some(&base), fields)?;
    save(conn, org, &c, false)?;
    Ok(c)
}

/// Creates each contact, or with `upsert` updates the one with the same email.
pub fn create_many(
    conn: &Connection,
    org: &str,
    items: &[ContactFields],
    upsert: bool,
) -> ApiResult<Vec<Contact>> {
    Ok(upsert_many(conn, org, items, upsert)?
        .into_iter()
        .map(|(c, _)| c)
        .collect())
}

/// Like [`create_many`], pairing each contact with what it was before the call (`None` for
/// a contact this call created).
pub fn upsert_many(
    conn: &Connection,
    org: &str,
    items: &[ContactFields],
    upsert: bool,
) -> ApiResult<Vec<(Contact, Option<Contact>)>> {
    let mut out = Vec::with_capacity(items.len());
    for (i, fields) in items.iter().enumerate() {
        let email = match &fields.email {
            Some(Patch::Set(e)) => e.clone(),
            _ => {
                let path = if items.len() > 1 {
                    format!("contacts[{i}].email")
                } else {
                    "email".into()
                };
                return Err(ApiError::validation(&path, "missing"));
            }
        };
        let existing = find_by_email(conn, org, &email)?;
        let c = match existing {
            Some(base) if upsert => {
                let c = merge(conn, org, Some(&base), fields)?;
                save(conn, org, &c, false)?;
                (c, Some(base))
            }
            Some(_) => {
                return Err(ApiError::new(
                    ErrorCode::DuplicateResource,
                    "A contact with that email already exists",
                )
                .with_details(format!(
                    "email: {email} already exists; send upsert: true to update it"
                ))
                .with_spoken("A contact with that email already exists."))
            }
            None => (insert(conn, org, fields)?, None),
        };
        out.push(c);
    }
    Ok(out)
}

pub fn delete(conn: &Connection, org: &str, id: &str) -> ApiResult<bool> {
    let n = conn.execute(
        "DELETE FROM contacts WHERE id = ?1 AND org_id = ?2",
        [id, org],
    )?;
    Ok(n > 0)
}

pub fn set_status(conn: &Connection, org: &str, id: &str, status: ContactStatus) -> ApiResult<()> {
    conn.prepare_cached(
        "UPDATE contacts SET status = ?3, updated_at = ?4 WHERE id = ?1 AND org_id = ?2",
    )?
    .execute(params![id, org, status, now_rfc3339()])?;
    Ok(())
}

/// Links every unlinked contact of `domain` to `company_id` (after a company is created or
/// its domain changes), filling `company` where it was empty.
pub fn link_domain(
    conn: &Connection,
    org: &str,
    domain: &str,
    company_id: &str,
    name: Option<&str>,
) -> ApiResult<usize> {
    let n = conn.execute(
        "UPDATE contacts SET account_id = ?3,
                company = COALESCE(company, ?4),
                company_norm = CASE WHEN company IS NULL THEN ?5 ELSE company_norm END,
                updated_at = ?6
          WHERE org_id = ?1 AND email_domain = ?2 AND (account_id IS NULL OR account_id != ?3)",
        params![
            org,
            domain,
            company_id,
            name,
            name.map(normalize).unwrap_or_default(),
            now_rfc3339()
        ],
    )?;
    Ok(n)
}

/// How many contacts are linked to a company, and the first `cap` of them.
pub fn by_account(
    conn: &Connection,
    org: &str,
    account_id: &str,
    cap: usize,
) -> ApiResult<(u64, Vec<Contact>)> {
    let total: i64 = conn
        .prepare_cached("SELECT count(*) FROM contacts WHERE account_id = ?1 AND org_id = ?2")?
        .query_row([account_id, org], |r| r.get(0))?;
    let sql = format!("SELECT {COLUMNS} FROM contacts WHERE account_id = ?1 AND org_id = ?2 ORDER BY created_at, id LIMIT ?3");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![account_id, org, cap as i64], from_row)?;
    Ok((total as u64, rows.collect::<rusqlite::Result<_>>()?))
}

/// Contacts whose normalized name is exactly `name_norm`, at most `cap`, by id (the index's
/// order, so no sort).
pub fn by_exact_name(
    conn: &Connection,
    org: &str,
    name_norm: &str,
    cap: usize,
) -> ApiResult<Vec<Contact>> {
    const SQL: &str = concat!(
        "SELECT ",
        columns!(),
        " FROM contacts WHERE org_id = ?1 AND name_norm = ?2 ORDER BY id LIMIT ?3"
    );
    let mut stmt = conn.prepare_cached(SQL)?;
    let rows = stmt.query_map(params![org, name_norm, cap as i64], from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A contact and the company it is linked to (`account_id`), read together.
#[derive(Debug, Clone, PartialEq)]
pub struct WithAccount {
    pub contact: Contact,
    pub account: Option<Company>,
}

impl std::borrow::Borrow<Contact> for WithAccount {
    fn borrow(&self) -> &Contact {
        &self.contact
    }
}

/// Like [`by_exact_name`], with each contact's company read in the same statement. The company
/// is a primary-key probe either way; a second statement would add its fixed cost (statement
/// cache, binding, stepping, reset), which on the uncached `lookup_person` path is as large as
/// the probe itself.
pub fn by_exact_name_with_account(
    conn: &Connection,
    org: &str,
    name_norm: &str,
    cap: usize,
) -> ApiResult<Vec<WithAccount>> {
    // The contact's columns in `from_row`'s order, then the company's in
    // `companies::from_row_at`'s. `a.org_id = c.org_id` keeps another org's company out, as
    // `companies::get` does with its org.
    const SQL: &str = "SELECT c.id, c.email, c.first_name, c.last_name, c.company, c.title, \
         c.linkedin_url, c.phone, c.status, c.folder_id, c.account_id, c.custom_fields, \
         c.created_at, c.updated_at, \
         a.id, a.name, a.domain, a.industry, a.size, a.context, a.created_at, a.updated_at \
         FROM contacts c LEFT JOIN companies a ON a.id = c.account_id AND a.org_id = c.org_id \
         WHERE c.org_id = ?1 AND c.name_norm = ?2 ORDER BY c.id LIMIT ?3";
    let mut stmt = conn.prepare_cached(SQL)?;
    let rows = stmt.query_map(params![org, name_norm, cap as i64], |r| {
        // A contact without a company has NULL in every company column.
        let account = match r.get_ref(ACCOUNT_AT)? {
            rusqlite::types::ValueRef::Null => None,
            _ => Some(companies::from_row_at(r, ACCOUNT_AT)?),
        };
        Ok(WithAccount {
            contact: from_row(r)?,
            account,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The first company column of [`by_exact_name_with_account`]'s rows.
const ACCOUNT_AT: usize = 14;

/// Ids of contacts whose normalised full name is exactly `name_norm`.
pub fn ids_by_exact_name(
    conn: &Connection,
    org: &str,
    name_norm: &str,
    cap: usize,
) -> ApiResult<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id FROM contacts WHERE org_id = ?1 AND name_norm = ?2 ORDER BY id LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![org, name_norm, cap as i64], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Ids of contacts having a name token that starts with `prefix` (index range scan).
pub fn ids_by_token_prefix(
    conn: &Connection,
    org: &str,
    prefix: &str,
    cap: usize,
) -> ApiResult<Vec<(String, String)>> {
    let mut upper = prefix.to_string();
    upper.push(char::MAX);
    let mut stmt = conn.prepare_cached(
        "SELECT contact_id, token FROM contact_name_tokens
          WHERE org_id = ?1 AND token >= ?2 AND token < ?3 LIMIT ?4",
    )?;
    let rows = stmt.query_map(params![org, prefix, upper, cap as i64], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Normalised names of the given contacts, for fuzzy scoring.
pub fn name_norms(
    conn: &Connection,
    org: &str,
    ids: &[String],
) -> ApiResult<Vec<(String, String, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT name_norm, company_norm FROM contacts WHERE id = ?1 AND org_id = ?2",
    )?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some((n, c)) = stmt
            .query_row([id.as_str(), org], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .optional()?
        {
            out.push((id.clone(), n, c));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{companies, orgs, test_store};
    use serde_json::json;

    fn fields(v: Value) -> ContactFields {
        let mut f = Fields::new("", &v).unwrap();
        ContactFields::from_json(&mut f).unwrap()
    }

    #[test]
    fn create_upsert_update_delete() {
        let (_d, store) = test_store();
        store
            .write_sync(|tx| {
                orgs::create(tx, &orgs::NewOrg::named("o"))?;
                let c = insert(
                    tx,
                    "o",
                    &fields(json!({"email":"John@Acme.com","first_name":"John","shoe":"42"})),
                )?;
                assert_eq!(c.full_name, "John");
                assert_eq!(c.custom_fields, json!({"shoe":"42"}));
                let dup = create_many(tx, "o", &[fields(json!({"email":"john@acme.com"}))], false);
                assert_eq!(dup.unwrap_err().code, ErrorCode::DuplicateResource);
                let up = create_many(
                    tx,
                    "o",
                    &[fields(json!({"email":"john@acme.com","last_name":"Smith"}))],
                    true,
                )?;
                assert_eq!(up[0].id, c.id);
                assert_eq!(up[0].full_name, "John Smith");
                let u = update(tx, "o", &c.id, &fields(json!({"title":"CTO"})))?;
                assert_eq!(u.title.as_deref(), Some("CTO"));
                assert_eq!(u.last_name.as_deref(), Some("Smith"));
                assert!(get(tx, "other", &c.id)?.is_none());
                assert!(delete(tx, "o", &c.id)?);
                assert!(!delete(tx, "o", &c.id)?);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn links_accounts_by_domain_both_ways() {
        let (_d, store) = test_store();
        store
            .write_sync(|tx| {
                orgs::create(tx, &orgs::NewOrg::named("o"))?;
                let before = insert(tx, "o", &fields(json!({"email":"a@notion.so"})))?;
                assert_eq!(before.account_id, None);
                let co = companies::create_many(
                    tx,
                    "o",
                    &[companies::CompanyFields::named("Notion", Some("notion.so"))],
                    false,
                )?;
                let linked = require(tx, "o", &before.id)?;
                assert_eq!(linked.account_id.as_deref(), Some(co[0].id.as_str()));
                assert_eq!(linked.company.as_deref(), Some("Notion"));
                let after = insert(tx, "o", &fields(json!({"email":"b@notion.so"})))?;
                assert_eq!(after.account_id.as_deref(), Some(co[0].id.as_str()));
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn name_index_supports_exact_and_prefix() {
        let (_d, store) = test_store();
        store
            .write_sync(|tx| {
                orgs::create(tx, &orgs::NewOrg::named("o"))?;
                let c = insert(
                    tx,
                    "o",
                    &fields(json!({"email":"s@n.so","first_name":"Sárah","last_name":"Chen"})),
                )?;
                assert_eq!(
                    ids_by_exact_name(tx, "o", "sarah chen", 5)?,
                    vec![c.id.clone()]
                );
                let p = ids_by_token_prefix(tx, "o", "sar", 10)?;
                assert_eq!(p, vec![(c.id.clone(), "sarah".to_string())]);
                update(tx, "o", &c.id, &fields(json!({"first_name":"Sara"})))?;
                assert!(ids_by_exact_name(tx, "o", "sarah chen", 5)?.is_empty());
                assert_eq!(ids_by_exact_name(tx, "o", "sara chen", 5)?.len(), 1);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn list_filters_and_pages() {
        let (_d, store) = test_store();
        store
            .write_sync(|tx| {
                orgs::create(tx, &orgs::NewOrg::named("o"))?;
                for i in 0..5 {
                    insert(tx, "o", &fields(json!({"email": format!("p{i}@x.io"), "first_name": format!("P{i}"), "status": if i % 2 == 0 {"new"} else {"qualified"}})))?;
                }
                let all = list(tx, "o", &ContactFilter::default(), PageRequest { limit: 2, offset: 0 })?;
                assert_eq!((all.total, all.items.len(), all.has_more()), (5, 2, true));
                let q = list(tx, "o", &ContactFilter { status: Some(ContactStatus::Qualified), ..Default::default() }, PageRequest { limit: 10, offset: 0 })?;
                assert_eq!(q.total, 2);
                let s = list(tx, "o", &ContactFilter { search: Some("p3".into()), ..Default::default() }, PageRequest { limit: 10, offset: 0 })?;
                assert_eq!(s.total, 1);
                let pct = list(tx, "o", &ContactFilter { search: Some("%".into()), ..Default::default() }, PageRequest { limit: 10, offset: 0 })?;
                assert_eq!(pct.total, 0);
                Ok(())
            })
            .unwrap();
    }
}
