//! Who is calling: Bearer API keys resolved by SHA-256 to a principal (org, key, scopes, plan),
//! plan and scope checks, and the per-org rate limiter.
//!
//! Transport-neutral: adapters hand over the raw `Authorization` value (or a WebSocket auth
//! frame's token) and get a [`Principal`] or an [`ApiError`] back.

pub mod connections;
pub mod rate_limit;

use std::sync::Arc;
use std::time::Duration;

use subtle::ConstantTimeEq;

use crate::config::AuthConfig;
use crate::domain::{Plan, Scope};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::store::{keys, Store};
use crate::upstream::{KeyCheck, Upstream};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub org_id: String,
    pub key_id: String,
    pub scopes: Vec<Scope>,
    pub plan: Plan,
    /// The org's own limit; `None` means the server default.
    pub rate_limit: Option<u32>,
    /// The caller's own key, kept only with the upstream backend, which forwards it.
    pub upstream_key: Option<Credential>,
    /// The key's `two_step` policy (DESIGN §21): a dangerous action always asks first, and only
    /// a later request naming the pending action executes it.
    pub two_step: bool,
}

/// A raw API key held in memory to forward upstream. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential(Arc<str>);

impl Credential {
    pub fn new(raw: &str) -> Self {
        Credential(Arc::from(raw))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(***)")
    }
}

impl Principal {
    /// Passes when the key holds at least one of `any_of`.
    pub fn require_any(&self, any_of: &[Scope]) -> ApiResult<()> {
        if any_of.iter().any(|s| self.scopes.contains(s)) {
            return Ok(());
        }
        let needed = any_of
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" or ");
        Err(ApiError::new(
            ErrorCode::ScopeDenied,
            "API key is missing the scope this endpoint needs",
        )
        .with_details(format!("required scope: {needed}")))
    }
}

/// The verdict cached per key hash.
type Verdict = Result<Principal, ErrorCode>;

/// Resolves keys to principals, caching verdicts briefly so a hot voice session never waits on
/// the database, while new keys work within `negative_cache_ttl_ms` and revoked keys stop within
/// `key_cache_ttl_secs`.
#[derive(Clone)]
pub struct Authenticator {
    source: KeySource,
    /// Key ids given the `two_step` policy by configuration (`[control] two_step_key_ids`).
    two_step_ids: Arc<std::collections::HashSet<String>>,
    valid: moka::sync::Cache<[u8; 32], Arc<Principal>>,
    invalid: moka::sync::Cache<[u8; 32], ErrorCode>,
}

/// Longest `Authorization` value we bother hashing; anything longer is not one of our keys.
const MAX_TOKEN_LEN: usize = 512;

/// Who decides whether a key is valid.
#[derive(Clone)]
enum KeySource {
    /// The keys table of the embedded store.
    Store(Store),
    /// The upstream API, asked once per key and cache period (`Upstream::check_key`).
    Upstream(Arc<Upstream>),
}

impl Authenticator {
    pub fn new(store: Store, cfg: &AuthConfig) -> Self {
        Self::with_source(KeySource::Store(store), cfg, cfg.key_cache_ttl_secs)
    }

    /// Keys checked against the upstream; verdicts trusted for `ttl_secs`.
    pub fn upstream(upstream: Arc<Upstream>, cfg: &AuthConfig, ttl_secs: u64) -> Self {
        Self::with_source(KeySource::Upstream(upstream), cfg, ttl_secs)
    }

    fn with_source(source: KeySource, cfg: &AuthConfig, valid_ttl_secs: u64) -> Self {
        Authenticator {
            source,
            two_step_ids: Arc::default(),
            valid: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(valid_ttl_secs))
                .build(),
            invalid: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_millis(cfg.negative_cache_ttl_ms))
                .build(),
        }
    }

    /// Gives the keys with these ids the `two_step` policy, on top of the keys table. The only
    /// way to mark a key in upstream mode, where keys live upstream.
    pub fn with_two_step_keys(mut self, ids: &[String]) -> Self {
        self.two_step_ids = Arc::new(ids.iter().map(|id| id.trim().to_string()).collect());
        self
    }

    /// Authenticates an `Authorization` header value (`None` when the header is absent).
    pub async fn authenticate_header(&self, header: Option<&str>) -> ApiResult<Arc<Principal>> {
        let Some(value) = header else {
            return Err(
                ApiError::new(ErrorCode::MissingAuth, "No Authorization header provided")
                    .with_details("send Authorization: Bearer op_live_..."),
            );
        };
        let token = parse_bearer(value).ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidApiKey, "Malformed Authorization header")
                .with_details("expected: Bearer <api key>")
        })?;
        self.authenticate_token(token).await
    }

    /// Authenticates a raw API key.
    pub async fn authenticate_token(&self, token: &str) -> ApiResult<Arc<Principal>> {
        let token = token.trim();
        if token.is_empty() {
            return Err(ApiError::new(ErrorCode::MissingAuth, "Empty API key"));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(invalid_key());
        }
        let hash = keys::hash_key(token);
        if let Some(p) = self.valid.get(&hash) {
            return Ok(p);
        }
        if let Some(code) = self.invalid.get(&hash) {
            return Err(verdict_error(code));
        }
        let verdict = match &self.source {
            KeySource::Store(store) => store.read(move |conn| Ok(lookup(conn, &hash))).await??,
            KeySource::Upstream(up) => match up.check_key(token).await? {
                KeyCheck::Valid { native } => Ok(upstream_principal(token, &hash, native)),
                KeyCheck::Refused(e) => {
                    // Cache the verdict, but answer with the upstream's own words.
                    self.invalid.insert(hash, e.code);
                    return Err(e);
                }
            },
        };
        match verdict {
            Ok(mut p) => {
                p.two_step |= self.two_step_ids.contains(&p.key_id);
                let p = Arc::new(p);
                self.valid.insert(hash, p.clone());
                self.record_use(&p);
                Ok(p)
            }
            Err(code) => {
                self.invalid.insert(hash, code);
                Err(verdict_error(code))
            }
        }
    }
}

impl Authenticator {
    /// Notes when a stored key was last used, for `keys list`. It runs once per key each time
    /// the key cache reloads it (so it is accurate to the cache's lifetime), in the background:
    /// the request never waits for this write, and a failure only leaves an older time.
    fn record_use(&self, p: &Principal) {
        let KeySource::Store(store) = &self.source else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, key_id) = (store.clone(), p.key_id.clone());
        runtime.spawn(async move {
            let now = crate::ids::now_rfc3339();
            if let Err(e) = store
                .write_bookkeeping(move |tx| keys::touch(tx, &key_id, &now))
                .await
            {
                tracing::debug!(error = %e, "cannot record when a key was last used");
            }
        });
    }
}

fn lookup(conn: &rusqlite::Connection, hash: &[u8; 32]) -> ApiResult<Verdict> {
    let Some((stored, rec)) = keys::find_by_hash(conn, hash)? else {
        return Ok(Err(ErrorCode::InvalidApiKey));
    };
    // The index lookup already matched; comparing again in constant time keeps the final
    // decision free of timing differences.
    if !bool::from(stored.as_slice().ct_eq(hash.as_slice())) || rec.revoked {
        return Ok(Err(ErrorCode::InvalidApiKey));
    }
    let Some(org) = rec.org else {
        return Ok(Err(ErrorCode::OrgNotFound));
    };
    if !org.plan.has_api_access() {
        return Ok(Err(ErrorCode::PlanRequired));
    }
    Ok(Ok(Principal {
        org_id: rec.org_id,
        key_id: rec.key_id,
        scopes: rec.scopes,
        plan: org.plan,
        rate_limit: org.rate_limit,
        upstream_key: None,
        two_step: rec.policy == crate::domain::KeyPolicy::TwoStep,
    }))
}

/// The principal of a key the upstream accepted. The upstream does not say which org a key
/// belongs to, so the key itself (by hash) is the tenant: idempotency keys, pending actions and
/// undo are scoped per key. Of the scopes, only whether the key may use the native bridge is
/// known (and enforced here, as in embedded mode); the upstream enforces the rest, and its rate
/// limit, on every call.
fn upstream_principal(token: &str, hash: &[u8; 32], native: bool) -> Principal {
    let id = upstream_tenant_of(hash);
    Principal {
        org_id: id.clone(),
        key_id: id,
        scopes: Scope::ALL
            .iter()
            .copied()
            .filter(|s| native || !matches!(s, Scope::Native | Scope::Chat))
            .collect(),
        plan: Plan::Pro,
        rate_limit: Some(0),
        upstream_key: Some(Credential::new(token)),
        two_step: false,
    }
}

fn invalid_key() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidApiKey,
        "API key not found, revoked, or malformed",
    )
}

fn verdict_error(code: ErrorCode) -> ApiError {
    match code {
        ErrorCode::PlanRequired => {
            ApiError::new(code, "Organization is not on a Pro or Scale plan")
                .with_details("API access requires the pro or scale plan")
        }
        ErrorCode::OrgNotFound => ApiError::new(code, "Organization deleted or invalid"),
        _ => invalid_key(),
    }
}

/// The tenant (org and key id) a key is in upstream mode, from its hash.
fn upstream_tenant_of(hash: &[u8; 32]) -> String {
    format!("key_{}", hex::encode(&hash[..12]))
}

/// The tenant an `Authorization` header names in upstream mode (see `upstream_principal`),
/// whether or not the key is valid; `None` without a bearer token.
pub fn upstream_tenant(authorization: &str) -> Option<String> {
    let token = parse_bearer(authorization)?;
    Some(upstream_tenant_of(&keys::hash_key(token.trim())))
}

/// Extracts the token from `Bearer <token>` (scheme case-insensitive).
pub fn parse_bearer(value: &str) -> Option<&str> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{orgs, test_store};

    #[test]
    fn bearer_parsing() {
        assert_eq!(parse_bearer("Bearer op_live_x"), Some("op_live_x"));
        assert_eq!(parse_bearer("bearer   op_live_x "), Some("op_live_x"));
        assert_eq!(parse_bearer("Basic abc"), None);
        assert_eq!(parse_bearer("Bearer "), None);
        assert_eq!(parse_bearer("op_live_x"), None);
    }

    #[tokio::test]
    async fn verdicts() {
        let (_d, store) = test_store();
        let raw = keys::generate_raw_key();
        let free_raw = keys::generate_raw_key();
        let r2 = raw.clone();
        let f2 = free_raw.clone();
        store
            .write(move |tx| {
                orgs::create(tx, &orgs::NewOrg::named("o"))?;
                let mut free = orgs::NewOrg::named("f");
                free.plan = Plan::Free;
                orgs::create(tx, &free)?;
                keys::insert(tx, "o", "k", &[Scope::Contacts], &r2)?;
                keys::insert(tx, "f", "k", &[Scope::Contacts], &f2)?;
                Ok(())
            })
            .await
            .unwrap();
        let auth = Authenticator::new(store, &AuthConfig::default());
        let p = auth
            .authenticate_header(Some(&format!("Bearer {raw}")))
            .await
            .unwrap();
        assert_eq!(p.org_id, "o");
        assert!(p.require_any(&[Scope::Contacts, Scope::Native]).is_ok());
        assert_eq!(
            p.require_any(&[Scope::Campaigns]).unwrap_err().code,
            ErrorCode::ScopeDenied
        );
        let e = |h: Option<String>| {
            let auth = auth.clone();
            async move {
                auth.authenticate_header(h.as_deref())
                    .await
                    .unwrap_err()
                    .code
            }
        };
        assert_eq!(e(None).await, ErrorCode::MissingAuth);
        assert_eq!(e(Some("Basic x".into())).await, ErrorCode::InvalidApiKey);
        assert_eq!(
            e(Some("Bearer op_live_nope".into())).await,
            ErrorCode::InvalidApiKey
        );
        assert_eq!(
            e(Some(format!("Bearer {free_raw}"))).await,
            ErrorCode::PlanRequired
        );
    }
}
