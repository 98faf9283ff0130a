//! One error type for the whole service: a stable machine code, its HTTP status, a message, a
//! diagnostic `details` string and a sentence a voice client can speak.
//!
//! The core returns `ApiError`; transports render it into the JSON envelope (`http::envelope`) or
//! a WebSocket error frame. Nothing here knows about axum.

use std::fmt;

/// Stable error codes. The first block is the reference's table; the rest are ours (DESIGN §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    MissingAuth,
    InvalidApiKey,
    PlanRequired,
    ScopeDenied,
    /// A browser `Origin` (or a `Host`) that `/mcp` does not accept.
    OriginNotAllowed,
    OrgNotFound,
    ResourceNotFound,
    ValidationError,
    DuplicateResource,
    InsufficientCredits,
    CampaignNotActive,
    InternalError,
    RateLimited,
    PayloadTooLarge,
    UnsupportedMediaType,
    MethodNotAllowed,
    IdempotencyKeyReused,
    IdempotencyKeyInUse,
    PendingActionExpired,
    UpstreamUnavailable,
    UpstreamTimeout,
    ServiceUnavailable,
    StateUnavailable,
    /// A WebSocket request cancelled by a `cancel` frame before it took effect (DESIGN §21).
    Cancelled,
}

impl ErrorCode {
    /// Every code, for documentation (the OpenAPI error schemas) and tests.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::MissingAuth,
        ErrorCode::InvalidApiKey,
        ErrorCode::PlanRequired,
        ErrorCode::ScopeDenied,
        ErrorCode::OriginNotAllowed,
        ErrorCode::OrgNotFound,
        ErrorCode::ResourceNotFound,
        ErrorCode::ValidationError,
        ErrorCode::DuplicateResource,
        ErrorCode::InsufficientCredits,
        ErrorCode::CampaignNotActive,
        ErrorCode::InternalError,
        ErrorCode::RateLimited,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::MethodNotAllowed,
        ErrorCode::IdempotencyKeyReused,
        ErrorCode::IdempotencyKeyInUse,
        ErrorCode::PendingActionExpired,
        ErrorCode::UpstreamUnavailable,
        ErrorCode::UpstreamTimeout,
        ErrorCode::ServiceUnavailable,
        ErrorCode::StateUnavailable,
        ErrorCode::Cancelled,
    ];

    /// The wire spelling, e.g. `VALIDATION_ERROR`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MissingAuth => "MISSING_AUTH",
            ErrorCode::InvalidApiKey => "INVALID_API_KEY",
            ErrorCode::PlanRequired => "PLAN_REQUIRED",
            ErrorCode::ScopeDenied => "SCOPE_DENIED",
            ErrorCode::OriginNotAllowed => "ORIGIN_NOT_ALLOWED",
            ErrorCode::OrgNotFound => "ORG_NOT_FOUND",
            ErrorCode::ResourceNotFound => "RESOURCE_NOT_FOUND",
            ErrorCode::ValidationError => "VALIDATION_ERROR",
            ErrorCode::DuplicateResource => "DUPLICATE_RESOURCE",
            ErrorCode::InsufficientCredits => "INSUFFICIENT_CREDITS",
            ErrorCode::CampaignNotActive => "CAMPAIGN_NOT_ACTIVE",
            ErrorCode::InternalError => "INTERNAL_ERROR",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            ErrorCode::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ErrorCode::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            ErrorCode::IdempotencyKeyInUse => "IDEMPOTENCY_KEY_IN_USE",
            ErrorCode::PendingActionExpired => "PENDING_ACTION_EXPIRED",
            ErrorCode::UpstreamUnavailable | ErrorCode::UpstreamTimeout => "UPSTREAM_UNAVAILABLE",
            ErrorCode::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            ErrorCode::StateUnavailable => "STATE_UNAVAILABLE",
            ErrorCode::Cancelled => "CANCELLED",
        }
    }

    /// The code for a wire spelling, e.g. from an upstream's error envelope
    /// (`UPSTREAM_UNAVAILABLE` reads as [`ErrorCode::UpstreamUnavailable`]).
    pub fn from_wire(code: &str) -> Option<ErrorCode> {
        Self::ALL.iter().copied().find(|c| c.as_str() == code)
    }

    /// The HTTP status that goes with the code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::MissingAuth | ErrorCode::InvalidApiKey => 401,
            ErrorCode::PlanRequired | ErrorCode::ScopeDenied | ErrorCode::OriginNotAllowed => 403,
            ErrorCode::OrgNotFound | ErrorCode::ResourceNotFound => 404,
            ErrorCode::ValidationError | ErrorCode::IdempotencyKeyReused => 422,
            ErrorCode::DuplicateResource | ErrorCode::IdempotencyKeyInUse => 409,
            ErrorCode::InsufficientCredits => 402,
            ErrorCode::CampaignNotActive => 400,
            ErrorCode::InternalError => 500,
            ErrorCode::RateLimited => 429,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::PendingActionExpired => 410,
            ErrorCode::UpstreamUnavailable => 502,
            ErrorCode::UpstreamTimeout => 504,
            ErrorCode::ServiceUnavailable | ErrorCode::StateUnavailable => 503,
            // Only WebSocket replies carry it; the request lost to the client's own cancel.
            ErrorCode::Cancelled => 409,
        }
    }

    /// A default sentence to speak when the failing code path has nothing more specific.
    pub fn default_spoken(self) -> &'static str {
        match self {
            ErrorCode::MissingAuth => "I'm not signed in to OutreachPilot. Please add an API key.",
            ErrorCode::InvalidApiKey => "That OutreachPilot API key doesn't work. Please check it.",
            ErrorCode::PlanRequired => "API access needs a Pro or Scale plan.",
            ErrorCode::ScopeDenied => "This API key isn't allowed to do that.",
            ErrorCode::OriginNotAllowed => "This app isn't allowed to connect to OutreachPilot.",
            ErrorCode::OrgNotFound => "I couldn't find your OutreachPilot workspace.",
            ErrorCode::ResourceNotFound => "I couldn't find that.",
            ErrorCode::ValidationError => "Something in that request was missing or invalid.",
            ErrorCode::DuplicateResource => "That already exists.",
            ErrorCode::InsufficientCredits => "You're out of credits for that.",
            ErrorCode::CampaignNotActive => "That campaign isn't active.",
            ErrorCode::InternalError => "Something went wrong on my side. Please try again.",
            ErrorCode::RateLimited => "Too many requests right now. Please try again in a moment.",
            ErrorCode::PayloadTooLarge => "That request was too large.",
            ErrorCode::UnsupportedMediaType => "That request wasn't sent as JSON.",
            ErrorCode::MethodNotAllowed => "That isn't supported here.",
            ErrorCode::IdempotencyKeyReused => {
                "That request ID was already used for something else."
            }
            ErrorCode::IdempotencyKeyInUse => {
                "I'm still working on that request. Please try again in a moment."
            }
            ErrorCode::PendingActionExpired => "That confirmation expired. Please ask again.",
            ErrorCode::UpstreamUnavailable | ErrorCode::UpstreamTimeout => {
                "OutreachPilot isn't answering right now. Please try again shortly."
            }
            ErrorCode::ServiceUnavailable => "The service is shutting down. Please try again.",
            ErrorCode::StateUnavailable => {
                "I can't save changes right now, so I didn't do that. Please try again in a moment."
            }
            ErrorCode::Cancelled => "Okay, I stopped that before it happened.",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as the client sees it.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<String>,
    pub spoken_summary: String,
    /// Seconds the client should wait before retrying (429, 409 in-use, 503).
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            details: None,
            spoken_summary: code.default_spoken().to_string(),
            retry_after: None,
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = Some(details.into());
        self
    }

    pub fn with_spoken(mut self, spoken: impl Into<String>) -> Self {
        self.spoken_summary = spoken.into();
        self
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// 422 naming the offending field path, e.g. `validation("action.campaignRef", "missing")`.
    pub fn validation(path: &str, problem: impl fmt::Display) -> Self {
        ApiError::new(ErrorCode::ValidationError, "Invalid request")
            .with_details(format!("{path}: {problem}"))
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::new(ErrorCode::ResourceNotFound, format!("{what} not found"))
            .with_spoken(format!("I couldn't find that {}.", what.to_lowercase()))
    }

    /// An unexpected failure. The cause is logged here and never shown to the client.
    pub fn internal(cause: impl fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        ApiError::new(ErrorCode::InternalError, "Unexpected server error")
    }

    pub fn status(&self) -> u16 {
        self.code.status()
    }

    pub fn docs_url(&self) -> String {
        format!("/docs#{}", self.code.as_str().to_ascii_lowercase())
    }

    /// The `error` object of the envelope. `details` is always a string (DESIGN §4), empty when
    /// there is nothing to add to the message.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.body()).unwrap_or(serde_json::Value::Null)
    }

    /// The `error` object as a serializable view, for writing replies without building a
    /// `serde_json::Value` first.
    pub fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            code: self.code.as_str(),
            message: &self.message,
            details: self.details.as_deref().unwrap_or(""),
            docs_url: self.docs_url(),
            spoken_summary: &self.spoken_summary,
        }
    }
}

/// The wire form of an error (see [`ApiError::body`]).
#[derive(Debug, serde::Serialize)]
pub struct ErrorBody<'a> {
    pub code: &'static str,
    pub message: &'a str,
    pub details: &'a str,
    pub docs_url: String,
    pub spoken_summary: &'a str,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(d) = &self.details {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        ApiError::internal(format!("sqlite: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_field() {
        let e = ApiError::validation("action.campaignRef", "missing");
        assert_eq!(e.status(), 422);
        assert_eq!(e.details.as_deref(), Some("action.campaignRef: missing"));
        assert_eq!(e.to_json()["docs_url"], "/docs#validation_error");
        assert_eq!(ApiError::not_found("Contact").to_json()["details"], "");
    }

    #[test]
    fn all_lists_every_code() {
        // Exhaustive: a new variant does not compile until it gets the next number here, and
        // then this test fails until it is in `ALL` too.
        fn number(c: ErrorCode) -> usize {
            use ErrorCode::*;
            match c {
                MissingAuth => 0,
                InvalidApiKey => 1,
                PlanRequired => 2,
                ScopeDenied => 3,
                OrgNotFound => 4,
                ResourceNotFound => 5,
                ValidationError => 6,
                DuplicateResource => 7,
                InsufficientCredits => 8,
                CampaignNotActive => 9,
                InternalError => 10,
                RateLimited => 11,
                PayloadTooLarge => 12,
                UnsupportedMediaType => 13,
                MethodNotAllowed => 14,
                IdempotencyKeyReused => 15,
                IdempotencyKeyInUse => 16,
                PendingActionExpired => 17,
                UpstreamUnavailable => 18,
                UpstreamTimeout => 19,
                ServiceUnavailable => 20,
                StateUnavailable => 21,
                OriginNotAllowed => 22,
                Cancelled => 23,
            }
        }
        let mut seen: Vec<usize> = ErrorCode::ALL.iter().map(|c| number(*c)).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..=23).collect::<Vec<_>>());
    }

    #[test]
    fn upstream_codes_share_wire_name() {
        assert_eq!(ErrorCode::UpstreamTimeout.as_str(), "UPSTREAM_UNAVAILABLE");
        assert_eq!(ErrorCode::UpstreamTimeout.status(), 504);
        assert_eq!(ErrorCode::UpstreamUnavailable.status(), 502);
    }
}
