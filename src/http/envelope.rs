//! The JSON envelope every response uses: `{ ok, data | error, meta }`, plus the per-request
//! context (request id, start time) that fills `meta`.

use std::time::Instant;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::ids::{new_request_id, now_rfc3339};
use crate::store::Page;

/// Set by the outermost middleware for the duration of one request.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub started: Instant,
}

tokio::task_local! {
    pub static REQUEST: RequestContext;
}

/// The current request's id (a fresh one outside a request, e.g. in unit tests).
pub fn request_id() -> String {
    REQUEST
        .try_with(|c| c.request_id.clone())
        .unwrap_or_else(|_| new_request_id())
}

pub fn meta() -> serde_json::Map<String, Value> {
    meta_for(request_id())
}

/// `meta` for an explicit request id (WebSocket frames have one each, outside any HTTP request).
pub fn meta_for(request_id: String) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("request_id".into(), Value::String(request_id));
    m.insert("timestamp".into(), Value::String(now_rfc3339()));
    m
}

pub fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response()
}

/// `200 { ok: true, data }`.
pub struct Data<T>(pub T);

/// `201 { ok: true, data }` for creations.
pub struct Created<T>(pub T);

/// `200 { ok: true, data: [...], meta: { total, has_more, limit, offset, ... } }`.
pub struct Paged<T>(pub Page<T>);

fn success(status: StatusCode, data: Value, extra_meta: Option<Value>) -> Response {
    let mut m = meta();
    if let Some(Value::Object(extra)) = extra_meta {
        m.extend(extra);
    }
    json_response(status, &json!({ "ok": true, "data": data, "meta": m }))
}

fn to_value<T: Serialize>(v: &T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(ApiError::internal)
}

impl<T: Serialize> IntoResponse for Data<T> {
    fn into_response(self) -> Response {
        match to_value(&self.0) {
            Ok(v) => success(StatusCode::OK, v, None),
            Err(e) => e.into_response(),
        }
    }
}

impl<T: Serialize> IntoResponse for Created<T> {
    fn into_response(self) -> Response {
        match to_value(&self.0) {
            Ok(v) => success(StatusCode::CREATED, v, None),
            Err(e) => e.into_response(),
        }
    }
}

impl<T: Serialize> IntoResponse for Paged<T> {
    fn into_response(self) -> Response {
        let p = self.0;
        let has_more = p.has_more();
        match to_value(&p.items) {
            Ok(v) => success(
                StatusCode::OK,
                v,
                Some(
                    json!({ "total": p.total, "has_more": has_more, "limit": p.limit, "offset": p.offset }),
                ),
            ),
            Err(e) => e.into_response(),
        }
    }
}

/// The error envelope body for `e`.
pub fn error_body(e: &ApiError) -> Value {
    error_body_for(e, request_id())
}

pub fn error_body_for(e: &ApiError, request_id: String) -> Value {
    json!({ "ok": false, "error": e.to_json(), "meta": meta_for(request_id) })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = json_response(status, &error_body(&self));
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
