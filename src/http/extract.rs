//! Extractors that turn bad input into our 4xx envelope instead of axum's plain-text rejections:
//! JSON bodies (content type, size, syntax, field paths) and query strings.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::domain::ContactStatus;
use crate::error::{ApiError, ErrorCode};
use crate::ids::{parse_rfc3339, to_rfc3339};
use crate::store::PageRequest;

/// A JSON body deserialised into `T`; errors name the field path (`action.campaignRef: ...`).
pub struct ApiJson<T>(pub T);

fn is_json_content_type(parts_ct: Option<&header::HeaderValue>) -> bool {
    let Some(ct) = parts_ct.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Reads the body bytes, enforcing JSON content type and the body limit.
pub async fn json_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    if !is_json_content_type(req.headers().get(header::CONTENT_TYPE)) {
        return Err(
            ApiError::new(ErrorCode::UnsupportedMediaType, "Request body must be JSON")
                .with_details("Content-Type: application/json is required"),
        );
    }
    Bytes::from_request(req, state).await.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            payload_too_large()
        } else {
            ApiError::validation("body", rej.body_text())
        }
    })
}

pub fn payload_too_large() -> ApiError {
    ApiError::new(ErrorCode::PayloadTooLarge, "Request body is too large")
        .with_details("the body limit is 64 KiB unless configured otherwise")
        .with_spoken("That request was too large for me.")
}

/// Deserialises JSON bytes, reporting the failing field path.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::validation("body", format!("malformed JSON: {inner}"))
                .with_spoken("That request wasn't valid JSON.")
        } else {
            let path = if path == "." {
                "body".to_string()
            } else {
                path
            };
            ApiError::validation(&path, strip_position(&inner.to_string()))
        }
    })?;
    // Anything after the value (`{...}}`, `{...} x`) makes the body malformed, not ignorable.
    de.end().map_err(|e| {
        ApiError::validation("body", format!("malformed JSON: {e}"))
            .with_spoken("That request wasn't valid JSON.")
    })?;
    Ok(value)
}

/// A body as an untyped JSON value (the native endpoint, WebSocket frames). Only its syntax
/// can be wrong, so unlike [`parse_json`] no field path is tracked; the errors read the same.
pub fn parse_json_value(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::validation("body", format!("malformed JSON: {e}"))
            .with_spoken("That request wasn't valid JSON.")
    })
}

/// serde_json appends " at line 1 column 42" to data errors; the field path says more.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = json_bytes(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Query-string parameters with typed getters whose errors name the parameter.
pub struct QueryParams(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        QueryParams::parse(parts.uri.query().unwrap_or(""))
    }
}

impl QueryParams {
    pub fn parse(q: &str) -> Result<Self, ApiError> {
        serde_urlencoded::from_str::<Vec<(String, String)>>(q)
            .map(QueryParams)
            .map_err(|e| ApiError::validation("query", e))
    }

    /// The last non-empty value of `name`, trimmed.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    pub fn string(&self, name: &str) -> Option<String> {
        self.str(name).map(str::to_string)
    }

    /// An integer for paging. Digits beyond `i64` saturate instead of failing, so a huge
    /// `limit` is clamped like any other limit above the cap.
    fn count(&self, name: &str) -> Result<Option<i64>, ApiError> {
        if let Some(v) = self.str(name) {
            let digits = v.strip_prefix('+').unwrap_or(v);
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                return Ok(Some(digits.parse::<i64>().unwrap_or(i64::MAX)));
            }
        }
        self.i64(name)
    }

    pub fn i64(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.str(name)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| ApiError::validation(name, format!("'{v}' is not an integer")))
            })
            .transpose()
    }

    pub fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        self.str(name)
            .map(|v| match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(ApiError::validation(
                    name,
                    format!("'{v}' is not true or false"),
                )),
            })
            .transpose()
    }

    /// An RFC 3339 timestamp, normalised to the stored UTC format so it compares as text.
    pub fn timestamp(&self, name: &str) -> Result<Option<String>, ApiError> {
        self.str(name)
            .map(|v| {
                parse_rfc3339(v).map(to_rfc3339).ok_or_else(|| {
                    ApiError::validation(
                        name,
                        format!("'{v}' is not an RFC 3339 timestamp (e.g. 2026-05-01T00:00:00Z)"),
                    )
                })
            })
            .transpose()
    }

    pub fn contact_status(&self, name: &str) -> Result<Option<ContactStatus>, ApiError> {
        self.str(name)
            .map(|v| v.parse().map_err(|e: String| ApiError::validation(name, e)))
            .transpose()
    }

    /// `limit` and `offset`. A limit above `cap` is clamped to `cap` (and `meta.limit` says so);
    /// a limit below 1, a negative offset or a non-number is a 422.
    pub fn page(&self, cap: u32) -> Result<PageRequest, ApiError> {
        let limit = match self.count("limit")? {
            None => DEFAULT_PAGE_SIZE.min(cap),
            Some(l) if l < 1 => return Err(ApiError::validation("limit", "must be at least 1")),
            Some(l) => l.min(cap as i64) as u32,
        };
        let offset = match self.count("offset")? {
            None => 0,
            Some(o) if o < 0 => return Err(ApiError::validation("offset", "must not be negative")),
            Some(o) => o as u64,
        };
        Ok(PageRequest { limit, offset })
    }
}

/// Page size when the client sends no `limit`.
pub const DEFAULT_PAGE_SIZE: u32 = 50;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_rules() {
        let p = QueryParams::parse("limit=500&offset=3")
            .unwrap()
            .page(200)
            .unwrap();
        assert_eq!((p.limit, p.offset), (200, 3));
        let p = QueryParams::parse("").unwrap().page(100).unwrap();
        assert_eq!((p.limit, p.offset), (50, 0));
        let e = QueryParams::parse("limit=0")
            .unwrap()
            .page(100)
            .unwrap_err();
        assert_eq!(e.details.as_deref(), Some("limit: must be at least 1"));
        assert!(QueryParams::parse("limit=abc").unwrap().page(100).is_err());
        assert!(QueryParams::parse("offset=-1").unwrap().page(100).is_err());
        assert!(QueryParams::parse("limit=%2B").unwrap().page(100).is_err());
        let p = QueryParams::parse("limit=99999999999999999999&offset=99999999999999999999")
            .unwrap()
            .page(100)
            .unwrap();
        assert_eq!((p.limit, p.offset), (100, i64::MAX as u64));
    }

    #[test]
    fn typed_getters() {
        let q =
            QueryParams::parse("a=%20x%20&b=&since=2026-05-01T00:00:00Z&f=no&s=qualified").unwrap();
        assert_eq!(q.str("a"), Some("x"));
        assert_eq!(q.str("b"), None);
        assert_eq!(
            q.timestamp("since").unwrap().as_deref(),
            Some("2026-05-01T00:00:00.000Z")
        );
        assert_eq!(q.bool("f").unwrap(), Some(false));
        assert_eq!(
            q.contact_status("s").unwrap(),
            Some(ContactStatus::Qualified)
        );
        assert!(QueryParams::parse("since=yesterday")
            .unwrap()
            .timestamp("since")
            .is_err());
    }

    #[test]
    fn json_errors_name_paths() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Inner {
            n: u32,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Outer {
            inner: Inner,
        }
        let e = parse_json::<Outer>(br#"{"inner":{"n":"x"}}"#).unwrap_err();
        assert!(e
            .details
            .as_deref()
            .unwrap()
            .starts_with("inner.n: invalid type"));
        let e = parse_json::<Outer>(br#"{"inner":{"n":1}}}"#).unwrap_err();
        assert!(e
            .details
            .as_deref()
            .unwrap()
            .starts_with("body: malformed JSON"));
        let e = parse_json::<Outer>(b"{nope").unwrap_err();
        assert!(e
            .details
            .as_deref()
            .unwrap()
            .starts_with("body: malformed JSON"));
    }
}
