//! Upstream hygiene of the REST pass-through, against a real local HTTP server playing the
//! upstream: answers over `upstream.max_response_bytes` become 502 `UPSTREAM_UNAVAILABLE` (with
//! and without a `Content-Length`), `Location` and `Cache-Control` are passed on, and the
//! gateway's request id travels upstream as `X-Request-Id`.

use crate::common;

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use pilot_bridge::config::BackendKind;
use serde_json::json;

const CAP: u64 = 64 * 1024;

/// What the fake upstream saw: (path and query, `X-Request-Id`) per request.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

struct FakeUpstream {
    url: String,
    seen: Seen,
}

fn envelope(data: serde_json::Value) -> String {
    json!({ "ok": true, "data": data, "meta": { "request_id": "req_upstream", "timestamp": "2026-01-01T00:00:00Z" } })
        .to_string()
}

async fn fake_upstream() -> FakeUpstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let seen: Seen = Arc::default();
    let base = url.clone();
    let app = Router::new()
        // Just over the cap, with a Content-Length.
        .route(
            "/api/v1/contacts",
            get(|| async {
                let filler = "x".repeat(CAP as usize);
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    envelope(json!({ "filler": filler })),
                )
            })
            .post(move || {
                let base = base.clone();
                async move {
                    (
                        StatusCode::CREATED,
                        [
                            (header::CONTENT_TYPE, "application/json".to_string()),
                            (header::LOCATION, format!("{base}/api/v1/contacts/c-42")),
                            (header::CACHE_CONTROL, "no-store".to_string()),
                        ],
                        envelope(json!({ "id": "c-42" })),
                    )
                }
            }),
        )
        // Over the cap in chunks, without a Content-Length.
        .route(
            "/api/v1/signals",
            get(|| async {
                let chunks = (0..40).map(|_| Ok::<_, std::io::Error>(vec![b' '; 4096]));
                Response::builder()
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from_stream(futures_util::stream::iter(chunks)))
                    .expect("response")
            }),
        )
        // Small and cacheable.
        .route(
            "/api/v1/credits",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "application/json"),
                        (header::CACHE_CONTROL, "private, max-age=30"),
                    ],
                    envelope(json!({ "balance": 7 })),
                )
            }),
        )
        .route(
            "/api/v1/campaigns",
            post(|| async { StatusCode::NO_CONTENT }),
        )
        .layer(axum::middleware::from_fn({
            let seen = seen.clone();
            move |req: Request, next: axum::middleware::Next| {
                let seen = seen.clone();
                async move {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let path = req
                        .uri()
                        .path_and_query()
                        .map(|p| p.as_str().to_string())
                        .unwrap_or_default();
                    seen.lock().expect("seen").push((path, id));
                    next.run(req).await.into_response()
                }
            }
        }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    FakeUpstream { url, seen }
}

async fn gateway(up: &FakeUpstream) -> common::TestServer {
    let base = up.url.clone();
    common::start_with(move |c| {
        c.backend = BackendKind::Upstream;
        c.upstream.base_url = base;
        c.upstream.max_response_bytes = CAP;
    })
    .await
}

fn key_client(s: &common::TestServer) -> common::Client {
    s.client("op_live_AnyKeyTheUpstreamJudges0123456789abcdefgh")
}

#[tokio::test]
async fn answers_over_the_cap_are_a_502_in_our_envelope() {
    let up = fake_upstream().await;
    let s = gateway(&up).await;
    let api = key_client(&s);
    for path in ["/contacts", "/signals"] {
        let r = api.get(path).await;
        let e = r.err(502, "UPSTREAM_UNAVAILABLE");
        assert!(
            e["details"]
                .as_str()
                .unwrap_or_default()
                .contains("max_response_bytes"),
            "{path}: {e}"
        );
    }
    // A small answer under the same cap passes, with its Cache-Control.
    let r = api.get("/credits").await;
    assert_eq!(r.ok(200)["balance"], 7);
    assert_eq!(r.header("cache-control"), Some("private, max-age=30"));
}

#[tokio::test]
async fn location_and_cache_control_are_passed_on_and_the_request_id_goes_upstream() {
    let up = fake_upstream().await;
    let s = gateway(&up).await;
    let api = key_client(&s);
    let r = api.post("/contacts", json!({ "email": "a@b.co" })).await;
    assert_eq!(r.ok(201)["id"], "c-42");
    // The upstream's absolute URL becomes this gateway's path.
    assert_eq!(r.header("location"), Some("/api/v1/contacts/c-42"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let ours = r.header("x-request-id").expect("x-request-id").to_string();
    assert_eq!(r.body["meta"]["request_id"], ours.as_str());
    assert_eq!(r.body["meta"]["upstream_request_id"], "req_upstream");
    let seen = up.seen.lock().expect("seen").clone();
    let (path, sent) = seen.last().expect("upstream saw the request");
    assert_eq!(path, "/api/v1/contacts");
    assert_eq!(sent.as_deref(), Some(ours.as_str()));
}

#[tokio::test]
async fn an_empty_answer_passes_through() {
    let up = fake_upstream().await;
    let s = gateway(&up).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/api/v1/campaigns", s.root))
        .header("authorization", "Bearer op_live_x")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 204);
    let headers: HeaderMap = r.headers().clone();
    assert!(headers.get("x-request-id").is_some());
}
