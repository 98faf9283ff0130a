//! `/webhooks`: list subscriptions (active, or disabled by a 410; with their last delivery) and the available events,
//! register (SSRF-checked, with a signing secret generated when none is given), deactivate.

use std::sync::Arc;

use axum::extract::State;
use axum::Extension;
use serde::Serialize;
use serde_json::Value;

use super::Deleted;
use crate::app::AppState;
use crate::auth::Principal;
use crate::domain::Scope;
use crate::error::{ApiError, ApiResult};
use crate::http::envelope::{Created, Data};
use crate::http::extract::{ApiJson, QueryParams};
use crate::input::Fields;
use crate::store::webhooks::{self, Webhook, AVAILABLE_EVENTS};
use crate::webhooks::signing::{self, SigningKey};
use crate::webhooks::target;

/// `GET /webhooks` answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<Webhook>,
    /// Every event a webhook can subscribe to.
    pub available_events: Vec<&'static str>,
}

/// Webhook subscriptions (active, or disabled by a 410 Gone) and the events available.
#[utoipa::path(get, path = "/webhooks", tag = "webhooks", operation_id = "listWebhooks",
    responses((status = 200, description = "Subscriptions", body = crate::http::schemas::Envelope<WebhookList>)))]
pub async fn list(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
) -> ApiResult<Data<WebhookList>> {
    p.require_any(&[Scope::Campaigns])?;
    let org = p.org_id.clone();
    let hooks = app.store.read(move |c| webhooks::list(c, &org)).await?;
    Ok(Data(WebhookList {
        webhooks: hooks,
        available_events: AVAILABLE_EVENTS.to_vec(),
    }))
}

fn valid_url(u: &str) -> bool {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"));
    match rest {
        Some(r) => {
            let host = r.split(['/', '?', '#']).next().unwrap_or("");
            !host.is_empty() && !u.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

/// `POST /webhooks` answer: the subscription, and the signing secret when the server
/// generated it (the only time it is ever shown).
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub webhook: Webhook,
    /// The generated `whsec_` signing secret; present only when the request gave none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// Register a webhook.
#[utoipa::path(post, path = "/webhooks", tag = "webhooks", operation_id = "createWebhook",
    request_body = crate::http::schemas::WebhookInput,
    responses(
        (status = 201, description = "Registered", body = crate::http::schemas::Envelope<CreatedWebhook>),
        (status = 422, description = "`VALIDATION_ERROR`, also for a target that resolves to a loopback, private, link-local or cloud-metadata address"),
    ))]
pub async fn create(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Created<CreatedWebhook>> {
    p.require_any(&[Scope::Campaigns])?;
    let mut f = Fields::new("", &body)?;
    let url = f.required_string("url", 2048)?;
    let parsed = match reqwest::Url::parse(&url) {
        Ok(u) if valid_url(&url) && u.host_str().is_some_and(|h| !h.is_empty()) => u,
        _ => {
            return Err(ApiError::validation(
                "url",
                "must be an http:// or https:// URL",
            ))
        }
    };
    let events = match f.raw("events") {
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, e)| match e.as_str() {
                Some(s) if AVAILABLE_EVENTS.contains(&s) => Ok(s.to_string()),
                Some(s) => Err(ApiError::validation(
                    &format!("events[{i}]"),
                    format!(
                        "unknown event '{s}'; available: {}",
                        AVAILABLE_EVENTS.join(", ")
                    ),
                )),
                None => Err(ApiError::validation(
                    &format!("events[{i}]"),
                    "expected a string",
                )),
            })
            .collect::<ApiResult<Vec<_>>>()?,
        Some(Value::Array(_)) => return Err(ApiError::validation("events", "must not be empty")),
        Some(_) => {
            return Err(ApiError::validation(
                "events",
                "expected an array of event names",
            ))
        }
        None => return Err(ApiError::validation("events", "missing")),
    };
    // Drop repeated events, keeping the order in which they were first given.
    let mut events = events;
    let mut seen = std::collections::HashSet::new();
    events.retain(|e| seen.insert(e.clone()));
    let given = f.string("secret", 256)?.and_then(|p| p.into_option());
    if let Some(s) = &given {
        SigningKey::from_secret(s).map_err(|e| ApiError::validation("secret", e))?;
    }
    if !app.config.webhooks.allow_private_targets {
        target::check_registration(&parsed).await.map_err(|r| {
            ApiError::validation(
                "url",
                format!("{r}; webhook targets must be public (loopback, private, link-local and cloud-metadata addresses are refused)"),
            )
            .with_spoken("That webhook address points to a private network, so I can't use it.")
        })?;
    }
    let generated = given.is_none().then(signing::generate_secret);
    let secret = given.or_else(|| generated.clone()).unwrap_or_default();
    let org = p.org_id.clone();
    let webhook = app
        .store
        .write_for(&org.clone(), move |tx| {
            webhooks::insert(tx, &org, &url, &events, &secret)
        })
        .await?;
    Ok(Created(CreatedWebhook {
        webhook,
        secret: generated,
    }))
}

/// Delete a webhook (active or disabled).
#[utoipa::path(delete, path = "/webhooks", tag = "webhooks", operation_id = "deleteWebhook",
    params(("id" = String, Query, pattern = "\\S", description = "Webhook id")),
    responses(
        (status = 200, description = "Deactivated", body = crate::http::schemas::Envelope<Deleted>),
        (status = 404, description = "`RESOURCE_NOT_FOUND`"),
    ))]
pub async fn delete(
    State(app): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    q: QueryParams,
) -> ApiResult<Data<Deleted>> {
    p.require_any(&[Scope::Campaigns])?;
    let id = q
        .string("id")
        .ok_or_else(|| ApiError::validation("id", "missing query parameter"))?;
    let org = p.org_id.clone();
    let id2 = id.clone();
    if !app
        .store
        .write_for(&org.clone(), move |tx| webhooks::deactivate(tx, &org, &id2))
        .await?
    {
        return Err(ApiError::not_found("Webhook"));
    }
    Ok(Data(Deleted { deleted: true, id }))
}
