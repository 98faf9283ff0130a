//! Companies (accounts): unique per org by domain; unknown fields live in `context`; contacts are
//! linked to them by email domain.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::sql::{json_col, like_escape, Filter};
use super::{contacts, Page, PageRequest};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::ids::{new_id, now_rfc3339};
use crate::input::{merge_object, patched, Fields, Patch};
use crate::text::{normalize, normalize_domain};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Company {
    pub id: String,
    pub name: Option<String>,
    pub domain: Option<String>,
    pub industry: Option<String>,
    pub size: Option<String>,
    #[serde(default)]
    pub context: Value,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub updated_at: String,
}

impl Company {
    pub fn display_name(&self) -> &str {
        self.name
            .as_deref()
            .or(self.domain.as_deref())
            .unwrap_or("that company")
    }
}

#[derive(Debug, Clone, Default)]
pub struct CompanyFields {
    pub name: Option<Patch<String>>,
    pub domain: Option<Patch<String>>,
    pub industry: Option<Patch<String>>,
    pub size: Option<Patch<String>>,
    /// Merged into `context`: an explicit `context` object plus every unrecognised field.
    pub context: Map<String, Value>,
}

const CONTROL_FIELDS: &[&str] = &["upsert", "id", "created_at", "updated_at"];

impl CompanyFields {
    pub fn from_json(f: &mut Fields<'_>) -> ApiResult<Self> {
        let mut c = CompanyFields {
            name: f.string("name", 200)?,
            domain: f.string("domain", 253)?,
            industry: f.string("industry", 200)?,
            size: None,
            context: Map::new(),
        };
        // `size` is commonly sent as a number ("size": 250) or a band ("51-200").
        c.size = match f.raw("size") {
            None => None,
            Some(Value::Null) => Some(Patch::Clear),
            Some(Value::String(s)) if s.trim().is_empty() => Some(Patch::Clear),
            Some(Value::String(s)) => Some(Patch::Set(s.trim().to_string())),
            Some(Value::Number(n)) => Some(Patch::Set(n.to_string())),
            Some(_) => {
                return Err(ApiError::validation(
                    &f.field_path("size"),
                    "expected a string or a number",
                ))
            }
        };
        if let Some(Patch::Set(d)) = &c.domain {
            let d = normalize_domain(d);
            if !crate::text::looks_like_domain(&d) {
                return Err(ApiError::validation(
                    &f.field_path("domain"),
                    format!("'{d}' is not a domain"),
                ));
            }
            c.domain = Some(Patch::Set(d));
        }
        match f.raw("context") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => c.context.extend(m.clone()),
            Some(_) => {
                return Err(ApiError::validation(
                    &f.field_path("context"),
                    "expected an object",
                ))
            }
        }
        for (k, v) in f.rest() {
            if !CONTROL_FIELDS.contains(&k.as_str()) {
                c.context.insert(k, v);
            }
        }
        Ok(c)
    }

    pub fn named(name: &str, domain: Option<&str>) -> Self {
        CompanyFields {
            name: Some(Patch::Set(name.to_string())),
            domain: domain.map(|d| Patch::Set(d.to_string())),
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct CompanyFilter {
    pub search: Option<String>,
    pub domain: Option<String>,
}

const COLUMNS: &str = "id, name, domain, industry, size, context, created_at, updated_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Company> {
    from_row_at(r, 0)
}

/// A company read from [`COLUMNS`] starting at column `at`, for a query that reads another
/// record's columns before it (a contact and its company in one statement).
pub(super) fn from_row_at(r: &Row<'_>, at: usize) -> rusqlite::Result<Company> {
    Ok(Company {
        id: r.get(at)?,
        name: r.get(at + 1)?,
        domain: r.get(at + 2)?,
        industry: r.get(at + 3)?,
        size: r.get(at + 4)?,
        context: json_col(r.get(at + 5)?, Value::Object(Map::new())),
        created_at: r.get(at + 6)?,
        updated_at: r.get(at + 7)?,
    })
}

pub fn get(conn: &Connection, org: &str, id: &str) -> ApiResult<Option<Company>> {
    let sql = format!("SELECT {COLUMNS} FROM companies WHERE id = ?1 AND org_id = ?2");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([id, org], from_row)
        .optional()?)
}

pub fn require(conn: &Connection, org: &str, id: &str) -> ApiResult<Company> {
    get(conn, org, id)?.ok_or_else(|| ApiError::not_found("Company"))
}

pub fn find_by_domain(conn: &Connection, org: &str, domain: &str) -> ApiResult<Option<Company>> {
    let sql = format!("SELECT {COLUMNS} FROM companies WHERE org_id = ?1 AND domain = ?2");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([org, &normalize_domain(domain)], from_row)
        .optional()?)
}

/// Companies whose normalised name equals `name_norm`, or starts with it when `prefix`.
pub fn find_by_name(
    conn: &Connection,
    org: &str,
    name_norm: &str,
    prefix: bool,
    cap: usize,
) -> ApiResult<Vec<Company>> {
    let mut stmt;
    let rows = if prefix {
        let mut upper = name_norm.to_string();
        upper.push(char::MAX);
        stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM companies WHERE org_id = ?1 AND name_norm >= ?2 AND name_norm < ?3 \
             ORDER BY name_norm LIMIT ?4"
        ))?;
        stmt.query_map(params![org, name_norm, upper, cap as i64], from_row)?
    } else {
        stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM companies WHERE org_id = ?1 AND name_norm = ?2 ORDER BY id LIMIT ?3"
        ))?;
        stmt.query_map(params![org, name_norm, cap as i64], from_row)?
    };
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn list(
    conn: &Connection,
    org: &str,
    filter: &CompanyFilter,
    page: PageRequest,
) -> ApiResult<Page<Company>> {
    let mut f = Filter::new("org_id = ?", org.to_string());
    if let Some(d) = &filter.domain {
        f.push("domain = ?", normalize_domain(d));
    }
    if let Some(s) = filter
        .search
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let raw = format!("%{}%", like_escape(&s.to_lowercase()));
        let norm = normalize(s);
        if norm.is_empty() {
            f.push("domain LIKE ? ESCAPE '\\'", raw);
        } else {
            f.clauses.push(
                "(name_norm LIKE ? ESCAPE '\\' OR domain LIKE ? ESCAPE '\\' OR lower(industry) LIKE ? ESCAPE '\\')"
                    .into(),
            );
            f.params.push(format!("%{}%", like_escape(&norm)).into());
            f.params.push(raw.clone().into());
            f.params.push(raw.into());
        }
    }
    f.page(conn, "companies", COLUMNS, "created_at", page, from_row)
}

fn apply(base: &Company, f: &CompanyFields) -> Company {
    let mut c = base.clone();
    c.name = patched(&base.name, &f.name);
    c.domain = patched(&base.domain, &f.domain);
    c.industry = patched(&base.industry, &f.industry);
    c.size = patched(&base.size, &f.size);
    if !f.context.is_empty() {
        c.context = merge_object(&c.context, &f.context);
    }
    c.updated_at = now_rfc3339();
    c
}

fn duplicate(domain: &str) -> ApiError {
    ApiError::new(
        ErrorCode::DuplicateResource,
        "A company with that domain already exists",
    )
    .with_details(format!(
        "domain: {domain} already exists; send upsert: true to update it"
    ))
    .with_spoken("A company with that domain already exists.")
}

fn save(conn: &Connection, org: &str, c: &Company, insert: bool) -> ApiResult<()> {
    let name_norm = c.name.as_deref().map(normalize).unwrap_or_default();
    let res = if insert {
        conn.prepare_cached(
            "INSERT INTO companies (id, org_id, name, name_norm, domain, industry, size, context, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            c.id,
            org,
            c.name,
            name_norm,
            c.domain,
            c.industry,
            c.size,
            c.context.to_string(),
            c.created_at,
            c.updated_at
        ])
    } else {
        conn.prepare_cached(
            "UPDATE companies SET name = ?3, name_norm = ?4, domain = ?5, industry = ?6, size = ?7,
                    context = ?8, updated_at = ?9 WHERE id = ?1 AND org_id = ?2",
        )?
        .execute(params![
            c.id,
            org,
            c.name,
            name_norm,
            c.domain,
            c.industry,
            c.size,
            c.context.to_string(),
            c.updated_at
        ])
    };
    match res {
        Ok(_) => {}
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            return Err(duplicate(c.domain.as_deref().unwrap_or("")))
        }
        Err(e) => return Err(e.into()),
    }
    if let Some(d) = &c.domain {
        contacts::link_domain(conn, org, d, &c.id, c.name.as_deref())?;
    }
    Ok(())
}

/// Creates each company, or with `upsert` updates the one with the same domain (or, without a
/// domain, the same name).
pub fn create_many(
    conn: &Connection,
    org: &str,
    items: &[CompanyFields],
    upsert: bool,
) -> ApiResult<Vec<Company>> {
    let mut out = Vec::with_capacity(items.len());
    for (i, f) in items.iter().enumerate() {
        let name = match &f.name {
            Some(Patch::Set(n)) => Some(n.clone()),
            _ => None,
        };
        let domain = match &f.domain {
            Some(Patch::Set(d)) => Some(d.clone()),
            _ => None,
        };
        if name.is_none() && domain.is_none() {
            let path = if items.len() > 1 {
                format!("companies[{i}]")
            } else {
                "body".into()
            };
            return Err(ApiError::validation(&path, "name or domain is required"));
        }
        let existing = match (&domain, &name) {
            (Some(d), _) => find_by_domain(conn, org, d)?,
            (None, Some(n)) if upsert => find_by_name(conn, org, &normalize(n), false, 1)?
                .into_iter()
                .next(),
            _ => None,
        };
        let company = match existing {
            Some(base) if upsert => {
                let c = apply(&base, f);
                save(conn, org, &c, false)?;
                c
            }
            Some(_) => return Err(duplicate(domain.as_deref().unwrap_or(""))),
            None => {
                let now = now_rfc3339();
                let base = Company {
                    id: new_id(),
                    name: None,
                    domain: None,
                    industry: None,
                    size: None,
                    context: Value::Object(Map::new()),
                    created_at: now.clone(),
                    updated_at: now,
                };
                let c = apply(&base, f);
                save(conn, org, &c, true)?;
                c
            }
        };
        out.push(company);
    }
    Ok(out)
}

pub fn update(conn: &Connection, org: &str, id: &str, f: &CompanyFields) -> ApiResult<Company> {
    let base = require(conn, org, id)?;
    let c = apply(&base, f);
    if c.name.is_none() && c.domain.is_none() {
        return Err(ApiError::validation(
            "body",
            "a company needs a name or a domain",
        ));
    }
    save(conn, org, &c, false)?;
    Ok(c)
}

/// Deletes a company; its contacts keep existing with `account_id` set to null (FK rule).
pub fn delete(conn: &Connection, org: &str, id: &str) -> ApiResult<bool> {
    let n = conn.execute(
        "DELETE FROM companies WHERE id = ?1 AND org_id = ?2",
        [id, org],
    )?;
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{orgs, test_store};
    use serde_json::json;

    fn fields(v: Value) -> CompanyFields {
        let mut f = Fields::new("", &v).unwrap();
        CompanyFields::from_json(&mut f).unwrap()
    }

    #[test]
    fn unknown_fields_go_to_context_and_upsert_by_domain() {
        let (_d, store) = test_store();
        store
            .write_sync(|tx| {
                orgs::create(tx, &orgs::NewOrg::named("o"))?;
                let c = create_many(tx, "o", &[fields(json!({"name":"Acme Corp","domain":"https://www.acme.com","hq":"Berlin","size":40}))], false)?;
                assert_eq!(c[0].domain.as_deref(), Some("acme.com"));
                assert_eq!(c[0].size.as_deref(), Some("40"));
                assert_eq!(c[0].context, json!({"hq":"Berlin"}));
                let dup = create_many(tx, "o", &[fields(json!({"domain":"acme.com"}))], false);
                assert_eq!(dup.unwrap_err().code, ErrorCode::DuplicateResource);
                let up = create_many(tx, "o", &[fields(json!({"domain":"acme.com","industry":"Software","tier":1}))], true)?;
                assert_eq!(up[0].id, c[0].id);
                assert_eq!(up[0].context, json!({"hq":"Berlin","tier":1}));
                let u = update(tx, "o", &c[0].id, &fields(json!({"hq": null})))?;
                assert_eq!(u.context, json!({"tier":1}));
                assert_eq!(u.industry.as_deref(), Some("Software"));
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn delete_nulls_linked_contacts() {
        let (_d, store) = test_store();
        store
            .write_sync(|tx| {
                orgs::create(tx, &orgs::NewOrg::named("o"))?;
                let co = create_many(
                    tx,
                    "o",
                    &[CompanyFields::named("Acme", Some("acme.com"))],
                    false,
                )?;
                let c =
                    contacts::insert(tx, "o", &contacts::ContactFields::with_email("j@acme.com"))?;
                assert_eq!(c.account_id.as_deref(), Some(co[0].id.as_str()));
                assert!(delete(tx, "o", &co[0].id)?);
                let after = contacts::require(tx, "o", &c.id)?;
                assert_eq!(after.account_id, None);
                Ok(())
            })
            .unwrap();
    }
}
