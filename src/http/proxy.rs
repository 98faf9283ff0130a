//! REST v1 in upstream mode: requests are forwarded to the upstream as they came (the caller's
//! key, method, path, query and body), and its answers returned as they are, so REST and the
//! native bridge see the same records. Only the native endpoints are served by the gateway.

use axum::body::Bytes;
use axum::extract::{OriginalUri, State};
use axum::http::{header, HeaderMap, HeaderName, Method};
use axum::response::{IntoResponse, Response};

use crate::app::AppState;
use crate::error::{ApiError, ErrorCode};

/// Upstream response headers worth passing on; hop-by-hop and framing headers are not.
/// `Location` is passed on separately, rewritten to point at this gateway.
const PASSED_HEADERS: &[&str] = &[
    "content-type",
    "cache-control",
    "allow",
    "idempotent-replayed",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "retry-after",
];

pub async fn forward(
    State(app): State<AppState>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(upstream) = app.upstream() else {
        return ApiError::internal("REST proxy without an upstream").into_response();
    };
    let path = uri.path();
    let relative = path.strip_prefix("/api/v1").unwrap_or(path);
    if escapes_api(relative) {
        // The upstream URL is `<base>/api/v1` + this path: dot segments would let a caller
        // reach the upstream's operator endpoints or leave a base-URL path prefix.
        return ApiError::new(ErrorCode::ResourceNotFound, "No such route")
            .with_details(format!("{method} {path} does not exist"))
            .into_response();
    }
    let is_write = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    // Whose cached native reads a write may make stale: the caller's tenant.
    let tenant = match is_write {
        true => headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::auth::upstream_tenant),
        false => None,
    };
    let path_and_query = match uri.query() {
        Some(q) => format!("{relative}?{q}"),
        None => relative.to_string(),
    };
    let result = upstream
        .proxy(
            method,
            headers.get(header::AUTHORIZATION),
            headers.get(header::CONTENT_TYPE),
            &path_and_query,
            body,
        )
        .await;
    if let Some(tenant) = &tenant {
        // Whatever it changed upstream, the caller's native reads cached before it are stale
        // now, on every replica.
        app.bridge.invalidate_reads(tenant).await;
    }
    match result {
        Ok(resp) if resp.status.as_u16() >= 400 && !is_json(&resp.headers) => {
            // A load balancer's HTML error page, say: answer in our envelope instead.
            crate::upstream::upstream_error(resp.status, &resp.headers, None).into_response()
        }
        Ok(resp) => {
            let mut out = Response::builder().status(resp.status.as_u16());
            for name in PASSED_HEADERS {
                if let Some(v) = resp.headers.get(*name) {
                    out = out.header(HeaderName::from_static(name), v.as_bytes());
                }
            }
            if let Some(location) = resp.headers.get(header::LOCATION) {
                out = out.header(
                    header::LOCATION,
                    our_location(location.as_bytes(), upstream.api_base()),
                );
            }
            out.body(axum::body::Body::from(with_our_request_id(resp.body)))
                .unwrap_or_else(|e| ApiError::internal(e).into_response())
        }
        Err(e) => e.into_response(),
    }
}

/// The upstream's envelope with `meta.request_id` set to this request's id (the one in our
/// `X-Request-Id`), keeping the upstream's own as `meta.upstream_request_id` for tracing.
fn with_our_request_id(body: Bytes) -> Bytes {
    let Ok(serde_json::Value::Object(mut env)) = serde_json::from_slice(&body) else {
        return body;
    };
    if let Some(serde_json::Value::Object(meta)) = env.get_mut("meta") {
        let ours = serde_json::Value::String(super::envelope::request_id());
        if let Some(theirs) = meta.insert("request_id".into(), ours) {
            meta.insert("upstream_request_id".into(), theirs);
        }
    }
    serde_json::to_vec(&env).map(Bytes::from).unwrap_or(body)
}

/// An upstream `Location` as a client of this gateway must follow it: an absolute URL into the
/// upstream's REST v1 becomes the same path under our `/api/v1`; anything else (a relative
/// reference, another host) is passed on as it is.
fn our_location(location: &[u8], upstream_api_base: &str) -> Vec<u8> {
    match location.strip_prefix(upstream_api_base.as_bytes()) {
        Some(rest) if rest.is_empty() || rest.starts_with(b"/") || rest.starts_with(b"?") => {
            [b"/api/v1".as_slice(), rest].concat()
        }
        _ => location.to_vec(),
    }
}

fn is_json(h: &reqwest::header::HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Dot segments (plain or percent-encoded) or backslashes in a path that is appended to the
/// upstream's `/api/v1`.
fn escapes_api(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains('\\')
        || lower.contains("%2e")
        || lower.contains("%2f")
        || lower.contains("%5c")
        || lower.split('/').any(|seg| seg == "." || seg == "..")
}

#[cfg(test)]
mod tests {
    use super::{escapes_api, our_location};

    #[test]
    fn upstream_locations_point_at_the_gateway() {
        let base = "http://10.0.0.5:8080/api/v1";
        for (theirs, ours) in [
            (
                "http://10.0.0.5:8080/api/v1/contacts/abc",
                "/api/v1/contacts/abc",
            ),
            ("http://10.0.0.5:8080/api/v1?x=1", "/api/v1?x=1"),
            ("/api/v1/notes/n1", "/api/v1/notes/n1"),
            ("https://elsewhere.example/x", "https://elsewhere.example/x"),
            (
                "http://10.0.0.5:8080/api/v10/x",
                "http://10.0.0.5:8080/api/v10/x",
            ),
        ] {
            assert_eq!(
                our_location(theirs.as_bytes(), base),
                ours.as_bytes(),
                "{theirs}"
            );
        }
    }

    #[test]
    fn dot_segments_cannot_leave_the_api() {
        for bad in [
            "/../metrics",
            "/contacts/../../healthz",
            "/%2e%2e/metrics",
            "/%2E./x",
            "/contacts/..",
            "/a/./b",
            "/a%2fb",
            "/a\\b",
        ] {
            assert!(escapes_api(bad), "{bad}");
        }
        for good in [
            "/contacts",
            "/contacts/abc",
            "/notes",
            "/campaigns/x/status",
            "/a..b",
        ] {
            assert!(!escapes_api(good), "{good}");
        }
    }
}
