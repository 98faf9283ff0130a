//! JSON Schemas for the OpenAPI document that derives cannot sit on directly: the store's record
//! types (described here by mirror structs, so `store` stays free of documentation concerns and
//! a test below checks each mirror against what the real type serialises), the envelope, and
//! the loosely-typed REST request bodies that handlers read field by field.

use std::borrow::Cow;

use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use crate::domain::{CampaignStatus, ContactStatus};

/// Gives a store type the schema of its mirror (same name in the document).
macro_rules! mirrored {
    ($($real:ty => $doc:ty),+ $(,)?) => {$(
        impl PartialSchema for $real {
            fn schema() -> RefOr<Schema> {
                <$doc as PartialSchema>::schema()
            }
        }
        impl ToSchema for $real {
            fn name() -> Cow<'static, str> {
                <$doc as ToSchema>::name()
            }
            fn schemas(out: &mut Vec<(String, RefOr<Schema>)>) {
                <$doc as ToSchema>::schemas(out)
            }
        }
    )+};
}

mirrored! {
    crate::store::contacts::Contact => ContactDoc,
    crate::store::companies::Company => CompanyDoc,
    crate::store::campaigns::Campaign => CampaignDoc,
    crate::store::campaigns::AudienceStats => AudienceStatsDoc,
    crate::store::interactions::Interaction => InteractionDoc,
    crate::store::interactions::Note => NoteDoc,
    crate::store::signals::Signal => SignalDoc,
    crate::store::webhooks::Webhook => WebhookDoc,
    crate::store::webhooks::LastDelivery => LastDeliveryDoc,
    crate::store::native::Job => JobDoc,
}

/// A contact.
#[derive(ToSchema)]
#[schema(as = Contact)]
#[allow(dead_code)]
pub struct ContactDoc {
    #[schema(format = "uuid")]
    id: String,
    #[schema(required = true)]
    email: Option<String>,
    #[schema(required = true)]
    first_name: Option<String>,
    #[schema(required = true)]
    last_name: Option<String>,
    /// First and last name joined (empty when neither is known).
    full_name: String,
    #[schema(required = true)]
    company: Option<String>,
    #[schema(required = true)]
    title: Option<String>,
    #[schema(required = true)]
    linkedin_url: Option<String>,
    #[schema(required = true)]
    phone: Option<String>,
    status: ContactStatus,
    #[schema(required = true)]
    folder_id: Option<String>,
    /// The company record this contact belongs to.
    #[schema(required = true)]
    account_id: Option<String>,
    /// Any other fields given on create or update.
    #[schema(value_type = Object)]
    custom_fields: (),
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
}

/// A company (account).
#[derive(ToSchema)]
#[schema(as = Company)]
#[allow(dead_code)]
pub struct CompanyDoc {
    #[schema(format = "uuid")]
    id: String,
    #[schema(required = true)]
    name: Option<String>,
    /// Normalised: lower case, no scheme, no `www.`.
    #[schema(required = true)]
    domain: Option<String>,
    #[schema(required = true)]
    industry: Option<String>,
    /// Head count or band, as given ("250", "51-200").
    #[schema(required = true)]
    size: Option<String>,
    /// Any other fields given on create or update.
    #[schema(value_type = Object)]
    context: (),
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
}

/// A campaign.
#[derive(ToSchema)]
#[schema(as = Campaign)]
#[allow(dead_code)]
pub struct CampaignDoc {
    #[schema(format = "uuid")]
    id: String,
    name: String,
    status: CampaignStatus,
    /// `email`, `linkedin`, `multichannel` or `call`.
    #[schema(rename = "type")]
    kind: String,
    campaign_mode: String,
    #[schema(value_type = Object)]
    config: (),
    /// The sequence steps.
    #[schema(value_type = Vec<Value>)]
    steps: (),
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
}

/// Audience members of a campaign by state.
#[derive(ToSchema)]
#[schema(as = AudienceStats)]
#[allow(dead_code)]
pub struct AudienceStatsDoc {
    total: u64,
    active: u64,
    completed: u64,
    paused: u64,
    bounced: u64,
    /// Only in some views.
    #[serde(skip_serializing_if = "Option::is_none")]
    failed: Option<u64>,
}

/// One interaction: an email, a LinkedIn message, a call or a note.
#[derive(ToSchema)]
#[schema(as = Interaction)]
#[allow(dead_code)]
pub struct InteractionDoc {
    #[schema(format = "uuid")]
    id: String,
    #[schema(required = true)]
    contact_id: Option<String>,
    #[schema(required = true)]
    campaign_id: Option<String>,
    /// `inbound`, `outbound` or `internal`.
    direction: String,
    /// `email`, `linkedin`, `call`, `note`, ...
    channel: String,
    #[schema(required = true)]
    subject: Option<String>,
    content: String,
    #[schema(value_type = Object)]
    metadata: (),
    is_read: bool,
    #[schema(format = DateTime)]
    created_at: String,
}

/// A note on a contact.
#[derive(ToSchema)]
#[schema(as = Note)]
#[allow(dead_code)]
pub struct NoteDoc {
    #[schema(format = "uuid")]
    id: String,
    #[schema(required = true)]
    contact_id: Option<String>,
    content: String,
    #[schema(value_type = Object)]
    metadata: (),
    #[schema(format = DateTime)]
    created_at: String,
}

/// A buying signal.
#[derive(ToSchema)]
#[schema(as = Signal)]
#[allow(dead_code)]
pub struct SignalDoc {
    #[schema(format = "uuid")]
    id: String,
    #[schema(required = true)]
    contact_id: Option<String>,
    #[schema(required = true)]
    company: Option<String>,
    platform: String,
    #[schema(rename = "type")]
    signal_type: String,
    title: String,
    #[schema(required = true)]
    content: Option<String>,
    #[schema(required = true)]
    url: Option<String>,
    /// 0-100.
    intent_score: i64,
    status: String,
    #[schema(format = DateTime)]
    detected_at: String,
}

/// A webhook subscription (the secret itself is never returned).
#[derive(ToSchema)]
#[schema(as = Webhook)]
#[allow(dead_code)]
pub struct WebhookDoc {
    #[schema(format = "uuid")]
    id: String,
    url: String,
    events: Vec<String>,
    has_secret: bool,
    /// False once the receiver answered 410 Gone: nothing more is sent to it.
    active: bool,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    /// The most recently attempted delivery to this subscription (before any attempt, the
    /// newest queued one); null before the first event.
    #[schema(required = true)]
    last_delivery: Option<LastDeliveryDoc>,
}

/// The most recently attempted delivery to a webhook subscription.
#[derive(ToSchema)]
#[schema(as = LastDelivery)]
#[allow(dead_code)]
pub struct LastDeliveryDoc {
    /// `pending` (queued or waiting for a retry), `succeeded`, or `failed` (retries exhausted,
    /// 410 from the receiver, or the subscription was deactivated).
    #[schema(pattern = "^(pending|succeeded|failed)$")]
    status: String,
    /// Attempts made so far.
    attempts: u32,
    /// HTTP status of the latest attempt; null before the first and when no answer came.
    #[schema(required = true)]
    response_status: Option<u16>,
    /// When the latest attempt was made, or when the delivery was queued.
    #[schema(format = DateTime)]
    at: String,
}

/// A research or enrichment job started by a native action.
#[derive(ToSchema)]
#[schema(as = Job)]
#[allow(dead_code)]
pub struct JobDoc {
    #[schema(format = "uuid")]
    id: String,
    /// `research` or `enrichment`.
    kind: String,
    #[schema(required = true)]
    contact_id: Option<String>,
    #[schema(required = true)]
    company: Option<String>,
    #[schema(required = true)]
    topic: Option<String>,
    /// `queued`, `running`, `completed`, `failed` or `cancelled`. A job whose attempt fails
    /// stays `queued` and is retried with exponential backoff; after its last attempt it is
    /// `failed`.
    status: String,
    /// The job's output once it completed; for a `failed` job
    /// `{"error": {"code", "message"}, "attempts"}`.
    #[schema(value_type = Option<Object>, required = true)]
    result: (),
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(required = true)]
    started_at: Option<String>,
    #[schema(required = true)]
    finished_at: Option<String>,
    /// Failed attempts so far (shown while a job waits for its retry, and once it failed).
    attempts: u32,
    /// When a job that failed an attempt is tried again; null otherwise.
    #[schema(format = DateTime, required = true)]
    next_attempt_at: Option<String>,
    /// The last failure, `{"code", "message"}`; null while nothing failed.
    #[schema(value_type = Option<Object>, required = true)]
    last_error: (),
}

// ---- the envelope ---------------------------------------------------------------------------

/// `meta` of every response.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Meta {
    /// Also sent as the `X-Request-Id` header.
    request_id: String,
    #[schema(format = DateTime)]
    timestamp: String,
}

/// `meta` of a list response: the request's meta plus paging.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PageMeta {
    request_id: String,
    #[schema(format = DateTime)]
    timestamp: String,
    /// Records matching the filters.
    total: u64,
    /// True when records follow this page.
    has_more: bool,
    /// The page size used (a larger `limit` is clamped to the cap).
    limit: u32,
    offset: u64,
}

/// `{ ok: true, data, meta }`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Envelope<T: ToSchema> {
    /// Always true.
    ok: bool,
    data: T,
    meta: Meta,
}

/// `{ ok: true, data: [...], meta: { total, has_more, limit, offset, ... } }`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PageEnvelope<T: ToSchema> {
    /// Always true.
    ok: bool,
    data: Vec<T>,
    meta: PageMeta,
}

/// `meta` of a native reply: the request's meta plus the server time (and, on errors, the
/// `performance` block).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NativeMeta {
    request_id: String,
    #[schema(format = DateTime)]
    timestamp: String,
    /// Equals the `total` in `Server-Timing`.
    server_elapsed_ms: f64,
    /// Only on error replies.
    #[serde(skip_serializing_if = "Option::is_none")]
    performance: Option<crate::native::reply::Performance>,
}

/// A successful native turn.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NativeEnvelope {
    /// Always true.
    ok: bool,
    data: crate::native::reply::NativeReply,
    meta: NativeMeta,
}

/// `data` of `/healthz` and `/readyz`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Status {
    /// `ok` (liveness) or `ready` (readiness).
    status: String,
}

// ---- REST request bodies ----------------------------------------------------------------------

/// Names for schemas whose rules (one of two shapes, "this or that field") JSON Schema can say but
/// a derive cannot: each starts as a marked placeholder, and `http::openapi` composes the real
/// schema from the derived parts. A test checks that no placeholder is left.
macro_rules! composed {
    ($($(#[doc = $doc:literal])+ $name:ident;)+) => {$(
        $(#[doc = $doc])+
        pub struct $name;
        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                let mut ext = utoipa::openapi::extensions::Extensions::default();
                ext.insert("x-composed".into(), serde_json::Value::Bool(true));
                utoipa::openapi::schema::ObjectBuilder::new()
                    .extensions(Some(ext))
                    .into()
            }
        }
        impl ToSchema for $name {}
    )+};
}

composed! {
    /// `POST /contacts`: one contact (`email` required), or `{ contacts: [...] }` (1 to 500, each
    /// with `email`); `upsert: true` updates contacts whose email exists instead of failing.
    ContactsCreate;
    /// `POST /companies`: one company, or `{ companies: [...] }` (1 to 500); `upsert: true`
    /// updates companies whose domain exists instead of failing.
    CompaniesCreate;
    /// `PUT /companies/{id}`: the fields to change. A company keeps a name or a domain, so a
    /// request cannot clear both.
    CompanyUpdate;
    /// `POST /campaigns/{id}/trigger`: `{ contact_id }` for an existing contact, or
    /// `{ email, first_name?, last_name?, company? }` (the contact is created when new).
    TriggerInput;
    /// The native request (DESIGN §3): an `action`, or a confirmation (`pendingActionId` +
    /// `confirmed`), or both.
    NativeRequestBody;
    /// One of the 17 native actions, told apart by `type`.
    NativeAction;
}

/// Contact fields. Strings are trimmed; an empty string or null clears a field on update. Any
/// field not listed here is kept in `custom_fields`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ContactInput {
    /// Required on create; cannot be removed.
    #[schema(max_length = 254, required = false)]
    email: String,
    #[schema(max_length = 200)]
    first_name: Option<String>,
    #[schema(max_length = 200)]
    last_name: Option<String>,
    #[schema(max_length = 200)]
    company: Option<String>,
    #[schema(max_length = 200)]
    title: Option<String>,
    #[schema(max_length = 500)]
    linkedin_url: Option<String>,
    #[schema(max_length = 50)]
    phone: Option<String>,
    #[schema(max_length = 100)]
    folder_id: Option<String>,
    #[schema(required = false)]
    status: ContactStatus,
    /// Merged into the contact's custom fields (a null value removes a key).
    #[schema(value_type = Option<Object>, required = false)]
    custom_fields: (),
}

/// Company fields. Any field not listed here is kept in `context`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CompanyInput {
    #[schema(max_length = 200)]
    name: Option<String>,
    /// A domain or URL; stored normalised (`https://www.Acme.com/x` → `acme.com`).
    #[schema(max_length = 253)]
    domain: Option<String>,
    #[schema(max_length = 200)]
    industry: Option<String>,
    /// Head count (a number) or a band such as `51-200`.
    #[schema(schema_with = size_schema, required = false)]
    size: (),
    /// Merged into the company's context (a null value removes a key).
    #[schema(value_type = Option<Object>, required = false)]
    context: (),
}

/// `PATCH /campaigns/{id}`: any of these fields; other fields are rejected.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct CampaignPatch {
    #[schema(max_length = 200, pattern = "\\S", required = false)]
    name: String,
    #[schema(required = false)]
    status: CampaignStatus,
    #[schema(rename = "type", required = false, schema_with = campaign_type_schema)]
    kind: (),
    #[schema(max_length = 64, pattern = "\\S", required = false)]
    campaign_mode: String,
    #[schema(value_type = Object, required = false)]
    config: (),
    #[schema(value_type = Vec<Value>, required = false)]
    steps: (),
}

/// `POST /notes`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NoteInput {
    /// The contact's id.
    #[schema(max_length = 64, pattern = "\\S")]
    contact_id: String,
    #[schema(max_length = 10000, pattern = "\\S")]
    note: String,
    /// A retry with the same key and the same note returns the first note (200,
    /// `Idempotent-Replayed: true`); the same key with another note is a 422.
    #[schema(min_length = 1, max_length = 255)]
    idempotency_key: Option<String>,
}

/// `POST /webhooks`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct WebhookInput {
    /// An `http://` or `https://` URL.
    #[schema(max_length = 2048, pattern = "^https?://[^\\s/?#]+[^\\s]*$")]
    url: String,
    /// One or more of the events listed by `GET /webhooks`.
    #[schema(min_items = 1)]
    events: Vec<String>,
    /// The key deliveries are signed with (Standard Webhooks): `whsec_<base64>` is decoded,
    /// any other string is used as raw bytes. Without one the server generates a `whsec_`
    /// secret and returns it once, in the creation reply.
    #[schema(max_length = 256)]
    secret: Option<String>,
}

fn size_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            utoipa::openapi::schema::Type::String,
            utoipa::openapi::schema::Type::Number,
            utoipa::openapi::schema::Type::Null,
        ]))
        .build()
}

/// `type` of a campaign: one of `store::campaigns::CAMPAIGN_TYPES`.
fn campaign_type_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(
            crate::store::campaigns::CAMPAIGN_TYPES.iter().copied(),
        ))
        .description(Some("`email`, `linkedin`, `multichannel` or `call`"))
        .build()
}

/// `PATCH /settings`.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct SettingsPatch {
    /// off | review | auto
    pilot_mode: Option<crate::domain::PilotMode>,
    /// IANA time zone name, e.g. Europe/Berlin
    timezone: Option<crate::domain::TimeZone>,
}

#[cfg(test)]
mod tests {
    use serde::Serialize;
    use serde_json::{json, Value};
    use utoipa::openapi::schema::{Schema, SchemaType, Type};
    use utoipa::openapi::RefOr;
    use utoipa::PartialSchema;

    use crate::domain::{CampaignStatus, ContactStatus};
    use crate::store;

    /// The mirror of `T` must list exactly the keys a `T` serialises to, require exactly those
    /// that are always present, and be nullable where the value is null.
    fn check<T: Serialize + PartialSchema>(name: &str, sample: T) {
        let v = serde_json::to_value(&sample).unwrap();
        let Value::Object(obj) = v else {
            panic!("{name}: not an object")
        };
        let RefOr::T(Schema::Object(schema)) = T::schema() else {
            panic!("{name}: schema is not an object")
        };
        for p in schema.properties.keys() {
            assert!(
                obj.contains_key(p) || !schema.required.contains(p),
                "{name}.{p}: required in the schema but not serialised"
            );
        }
        for (k, val) in &obj {
            assert!(
                schema.properties.contains_key(k),
                "{name}.{k} missing in the schema"
            );
            assert!(schema.required.contains(k), "{name}.{k} must be required");
            if val.is_null() {
                let RefOr::T(Schema::Object(p)) = &schema.properties[k] else {
                    continue;
                };
                let nullable = matches!(&p.schema_type, SchemaType::Array(ts) if ts.contains(&Type::Null))
                    || matches!(&p.schema_type, SchemaType::AnyValue);
                assert!(
                    nullable,
                    "{name}.{k} is null in the sample but not nullable"
                );
            }
        }
    }

    fn s(x: &str) -> String {
        x.to_string()
    }

    #[test]
    fn mirrors_match_the_store_types() {
        check(
            "Contact",
            store::contacts::Contact {
                id: s("i"),
                email: None,
                first_name: None,
                last_name: None,
                full_name: s("n"),
                company: None,
                title: None,
                linkedin_url: None,
                phone: None,
                status: ContactStatus::New,
                folder_id: None,
                account_id: None,
                custom_fields: json!({}),
                created_at: s("t"),
                updated_at: s("t"),
            },
        );
        check(
            "Company",
            store::companies::Company {
                id: s("i"),
                name: None,
                domain: None,
                industry: None,
                size: None,
                context: json!({}),
                created_at: s("t"),
                updated_at: s("t"),
            },
        );
        check(
            "Campaign",
            store::campaigns::Campaign {
                id: s("i"),
                name: s("n"),
                status: CampaignStatus::Active,
                kind: s("email"),
                campaign_mode: s("m"),
                config: json!({}),
                steps: json!([]),
                created_at: s("t"),
                updated_at: s("t"),
            },
        );
        check(
            "AudienceStats",
            store::campaigns::AudienceStats {
                failed: None,
                ..Default::default()
            },
        );
        check(
            "Interaction",
            store::interactions::Interaction {
                id: s("i"),
                contact_id: None,
                campaign_id: None,
                direction: s("inbound"),
                channel: s("email"),
                subject: None,
                content: s("c"),
                metadata: json!({}),
                is_read: false,
                created_at: s("t"),
            },
        );
        check(
            "Note",
            store::interactions::Note {
                id: s("i"),
                contact_id: None,
                content: s("c"),
                metadata: json!({}),
                created_at: s("t"),
            },
        );
        check(
            "Signal",
            store::signals::Signal {
                id: s("i"),
                contact_id: None,
                company: None,
                platform: s("p"),
                signal_type: s("t"),
                title: s("t"),
                content: None,
                url: None,
                intent_score: 1,
                status: s("new"),
                detected_at: s("t"),
            },
        );
        check(
            "Webhook",
            store::webhooks::Webhook {
                id: s("i"),
                url: s("u"),
                events: vec![],
                has_secret: false,
                active: true,
                created_at: s("t"),
                updated_at: s("t"),
                last_delivery: None,
            },
        );
        check(
            "LastDelivery",
            store::webhooks::LastDelivery {
                status: s("pending"),
                attempts: 1,
                response_status: None,
                at: s("t"),
            },
        );
        check(
            "Job",
            store::native::Job {
                id: s("i"),
                kind: s("research"),
                contact_id: None,
                company: None,
                topic: None,
                status: s("queued"),
                result: None,
                created_at: s("t"),
                started_at: None,
                finished_at: None,
                attempts: 0,
                next_attempt_at: None,
                last_error: None,
            },
        );
    }
}
