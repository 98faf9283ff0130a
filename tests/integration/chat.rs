//! `POST /api/v1/chat` over real HTTP (DESIGN §19): the built-in provider (an action per
//! message, a question answered by the user's "yes" in the same thread), credits (one per
//! message, 402 at zero, `GET /credits`, `org set --credits`), bad input and foreign threads,
//! and the `openai` provider against a fake OpenAI-compatible server started here.

use crate::common::native as native_common;
use crate::common::{Client, Resp};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use native_common::*;
use pilot_bridge::demo::DEMO_ORG;
use pilot_bridge::domain::{Plan, Scope};
use serde_json::{json, Value};

async fn chat(d: &Demo, body: Value) -> Value {
    let r = d.c.post("/chat", body).await;
    r.ok(200).clone()
}

async fn credits(d: &Demo) -> i64 {
    d.c.get("/credits").await.ok(200)["credits_remaining"]
        .as_i64()
        .expect("credits_remaining")
}

async fn set_credits(d: &Demo, n: i64) {
    d.s.store()
        .write(move |tx| pilot_bridge::chat::store::set_credits(tx, DEMO_ORG, n))
        .await
        .expect("set credits");
}

#[tokio::test]
async fn builtin_runs_the_action_it_reads_and_passes_its_reply_through() {
    let d = demo().await;
    let before = credits(&d).await;
    let a = chat(&d, json!({ "message": "who is Sarah Chen at Notion" })).await;
    assert!(
        a["response"]
            .as_str()
            .unwrap()
            .contains("VP of Engineering"),
        "{a}"
    );
    assert_eq!(a["model"], "pilot-bridge-builtin");
    assert!(a["thread_id"].as_str().is_some_and(|t| !t.is_empty()));
    assert_eq!(
        a["usage"],
        json!({ "input_tokens": 6, "output_tokens": a["response"].as_str().unwrap().split_whitespace().count() })
    );
    let calls = a["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["name"], "lookup_person");
    assert_eq!(
        calls[0]["arguments"],
        json!({ "personName": "Sarah Chen", "company": "Notion" })
    );
    assert_eq!(calls[0]["result"]["mode"], "result");
    assert_eq!(calls[0]["result"]["spoken_summary"], a["response"]);
    assert_eq!(credits(&d).await, before - 1, "one credit per message");
    // Not understood: a hint, no tool call, still one credit.
    let a = chat(&d, json!({ "message": "sing me a song" })).await;
    assert!(
        a["response"].as_str().unwrap().contains("You can say"),
        "{a}"
    );
    assert_eq!(a["tool_calls"], json!([]));
    assert_eq!(credits(&d).await, before - 2);
}

#[tokio::test]
async fn a_question_in_a_thread_is_answered_by_the_users_next_message() {
    let d = demo().await;
    let seed = d.campaign_id("Seed founders").await;
    let total = |c: Value| c["audience_stats"]["total"].as_i64().unwrap();
    let before = total(d.campaign(&seed).await);
    let a = chat(&d, json!({ "message": "add Sarah Chen to Seed founders" })).await;
    let tid = a["thread_id"].as_str().unwrap().to_string();
    assert_eq!(
        a["tool_calls"][0]["result"]["mode"],
        "confirmation_required"
    );
    assert_eq!(a["response"], "Add Sarah Chen to Seed founders?");
    assert_eq!(total(d.campaign(&seed).await), before, "asked, not done");

    // "yes" in another thread answers nothing.
    let other = chat(&d, json!({ "message": "yes" })).await;
    assert_eq!(other["tool_calls"], json!([]));
    assert!(other["response"]
        .as_str()
        .unwrap()
        .contains("nothing waiting"));
    assert_eq!(total(d.campaign(&seed).await), before);

    let yes = chat(&d, json!({ "message": "Yes, do it.", "thread_id": tid })).await;
    assert_eq!(yes["thread_id"], tid.as_str());
    let call = &yes["tool_calls"][0];
    assert_eq!(call["name"], "confirm_pending_action");
    assert_eq!(call["arguments"]["confirmed"], true);
    assert_ne!(call["result"]["mode"], "confirmation_required", "{yes}");
    assert_eq!(total(d.campaign(&seed).await), before + 1);
    // Answered: a second "yes" has nothing left to confirm.
    let again = chat(&d, json!({ "message": "yes", "thread_id": tid })).await;
    assert_eq!(again["tool_calls"], json!([]));
    assert_eq!(total(d.campaign(&seed).await), before + 1);

    // "no" cancels, and something else said in between drops the question.
    let a = chat(
        &d,
        json!({ "message": "pause seed founders", "thread_id": tid }),
    )
    .await;
    assert_eq!(
        a["tool_calls"][0]["result"]["mode"],
        "confirmation_required"
    );
    let no = chat(&d, json!({ "message": "no", "thread_id": tid })).await;
    assert_eq!(
        no["tool_calls"][0]["result"]["data"]["cancelled"], true,
        "{no}"
    );
    chat(
        &d,
        json!({ "message": "pause seed founders", "thread_id": tid }),
    )
    .await;
    chat(&d, json!({ "message": "any replies", "thread_id": tid })).await;
    let late = chat(&d, json!({ "message": "yes", "thread_id": tid })).await;
    assert_eq!(late["tool_calls"], json!([]));
    assert_eq!(d.campaign(&seed).await["status"], "active");
}

#[tokio::test]
async fn credits_run_out_with_a_402_and_are_set_by_the_cli() {
    let d = demo().await;
    set_credits(&d, 2).await;
    chat(&d, json!({ "message": "any replies" })).await;
    assert_eq!(credits(&d).await, 1);
    chat(&d, json!({ "message": "any replies" })).await;
    assert_eq!(credits(&d).await, 0);
    let r = d.c.post("/chat", json!({ "message": "any replies" })).await;
    let e = r.err(402, "INSUFFICIENT_CREDITS");
    assert_eq!(e["spoken_summary"], "You're out of chat credits.");
    assert_eq!(credits(&d).await, 0, "never below zero");
    // Concurrent messages never overdraw.
    set_credits(&d, 3).await;
    let sends = (0..8).map(|_| d.c.post("/chat", json!({ "message": "any replies" })));
    let statuses: Vec<u16> = futures_util::future::join_all(sends)
        .await
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 402).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(credits(&d).await, 0);
}

#[test]
fn org_set_credits_sets_the_balance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run_with = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pilot-bridge"));
        for (k, _) in std::env::vars() {
            if k.starts_with("PILOT_BRIDGE_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().copied());
        let o = cmd
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .expect("run pilot-bridge");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    let run = |args: &[&str]| run_with(args, &[]);
    let (ok, out) = run(&["org", "create", "acme", "--credits", "12"]);
    assert!(ok, "{out}");
    let org: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(org["credits_remaining"], 12);
    let (ok, out) = run(&["org", "set", "acme", "--credits", "7"]);
    assert!(ok, "{out}");
    let org: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(org["credits_remaining"], 7);
    // Only the flag sets credits: a stray variable in the environment changes nothing.
    let (ok, out) = run_with(
        &["org", "set", "acme", "--rate-limit", "30"],
        &[("PILOT_BRIDGE_CREDITS", "1000")],
    );
    assert!(ok, "{out}");
    let org: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(org["credits_remaining"], 7, "{org}");
    assert!(!run(&["org", "set", "acme", "--credits", "-1"]).0);
    assert!(!run(&["org", "set", "nope", "--credits", "1"]).0);
}

#[tokio::test]
async fn bad_messages_are_422_and_cost_nothing() {
    let d = demo().await;
    let before = credits(&d).await;
    let cases = [
        (json!({ "message": "   " }), "message: must not be empty"),
        (
            json!({ "message": "x".repeat(4001) }),
            "message: longer than 4000 characters",
        ),
        // Far over the message limit, still under the 64 KiB body limit: the message's 422.
        (
            json!({ "message": "x".repeat(60_000) }),
            "message: longer than 4000 characters",
        ),
        (json!({}), "body: missing field `message`"),
        (json!({ "message": "hi", "threadId": "t" }), "threadId"),
        (json!({ "message": 5 }), "message"),
    ];
    for (body, details) in cases {
        let r = d.c.post("/chat", body.clone()).await;
        r.err(422, "VALIDATION_ERROR");
        assert!(r.details().starts_with(details), "{body}: {}", r.details());
    }
    // A body over the server's body limit is refused before it is read, as on every route.
    let r =
        d.c.post("/chat", json!({ "message": "x".repeat(70_000) }))
            .await;
    r.err(413, "PAYLOAD_TOO_LARGE");
    assert_eq!(credits(&d).await, before);
}

#[tokio::test]
async fn unknown_and_foreign_threads_are_404() {
    let d = demo().await;
    let a = chat(&d, json!({ "message": "any replies" })).await;
    let tid = a["thread_id"].as_str().unwrap().to_string();
    let before = credits(&d).await;
    let r =
        d.c.post(
            "/chat",
            json!({ "message": "hi", "thread_id": "no-such-thread" }),
        )
        .await;
    r.err(404, "RESOURCE_NOT_FOUND");
    assert!(r.details().starts_with("thread_id"), "{}", r.details());
    // Another key of the same org.
    let key2 =
        d.s.create_key(DEMO_ORG, &[Scope::Chat, Scope::Native])
            .await;
    let r =
        d.s.client(&key2)
            .post(
                "/chat",
                json!({ "message": "any replies", "thread_id": tid }),
            )
            .await;
    r.err(404, "RESOURCE_NOT_FOUND");
    // Another org.
    d.s.create_org("other", Plan::Pro, Some(0)).await;
    let key3 = d.s.create_key("other", Scope::ALL).await;
    let r =
        d.s.client(&key3)
            .post(
                "/chat",
                json!({ "message": "any replies", "thread_id": tid }),
            )
            .await;
    r.err(404, "RESOURCE_NOT_FOUND");
    assert_eq!(credits(&d).await, before, "refused messages cost nothing");
    // Without the chat scope.
    let key4 = d.s.create_key(DEMO_ORG, &[Scope::Native]).await;
    let r =
        d.s.client(&key4)
            .post("/chat", json!({ "message": "any replies" }))
            .await;
    r.err(403, "SCOPE_DENIED");
}

// ---- idempotency (DESIGN §8) ----------------------------------------------------------------

async fn keyed(c: &Client, key: &str, body: Value) -> Resp {
    c.post_with_headers("/chat", body, &[("Idempotency-Key", key)])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_message_with_an_idempotency_key_runs_and_pays_once() {
    let d = demo().await;
    let john = d.contact_id("john@acme.com").await;
    let notes_before = d.notes(&john).await.len();
    let before = credits(&d).await;
    let body = json!({ "message": "note on John Smith: wants pricing by Friday" });
    let first = keyed(&d.c, "chat-retry-1", body.clone()).await;
    let data = first.ok(200).clone();
    assert!(first.header("idempotent-replayed").is_none());
    assert_eq!(data["tool_calls"][0]["name"], "note_on_contact", "{data}");
    assert_eq!(data["tool_calls"][0]["result"]["mode"], "result", "{data}");

    let again = keyed(&d.c, "chat-retry-1", body.clone()).await;
    assert_eq!(
        again.ok(200),
        &data,
        "the same answer, thread and tool calls"
    );
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    // The body's `idempotency_key` is the same key.
    let mut in_body = body.clone();
    in_body["idempotency_key"] = json!("chat-retry-1");
    let again = d.c.post("/chat", in_body.clone()).await;
    assert_eq!(again.ok(200), &data);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(d.notes(&john).await.len(), notes_before + 1, "one note");
    assert_eq!(credits(&d).await, before - 1, "one credit");

    // The same key with another body: refused, nothing run, nothing charged.
    let other_bodies = [
        json!({ "message": "note on John Smith: wants a discount" }),
        json!({ "message": body["message"], "thread_id": data["thread_id"] }),
    ];
    for other in other_bodies {
        let r = keyed(&d.c, "chat-retry-1", other).await;
        let e = r.err(422, "IDEMPOTENCY_KEY_REUSED");
        assert_eq!(
            e["spoken_summary"],
            "That request ID was already used for something else."
        );
        assert!(
            r.details().starts_with("Idempotency-Key"),
            "{}",
            r.details()
        );
        assert!(r.header("idempotent-replayed").is_none());
    }
    // Header and body disagreeing, or a key that is no key, are 422 before anything runs.
    let r = keyed(&d.c, "chat-retry-other", in_body).await;
    r.err(422, "VALIDATION_ERROR");
    assert!(
        r.details().starts_with("idempotency_key"),
        "{}",
        r.details()
    );
    let r = keyed(&d.c, "has space", body.clone()).await;
    r.err(422, "VALIDATION_ERROR");
    assert!(
        r.details().starts_with("Idempotency-Key"),
        "{}",
        r.details()
    );
    assert_eq!(d.notes(&john).await.len(), notes_before + 1);
    assert_eq!(credits(&d).await, before - 1);

    // Concurrent twins: one runs, the others wait for it and replay its answer.
    let twin = json!({ "message": "note on John Smith: twins agree" });
    let sends = (0..4).map(|_| keyed(&d.c, "chat-twins", twin.clone()));
    let replies = futures_util::future::join_all(sends).await;
    let fresh = replies
        .iter()
        .filter(|r| r.header("idempotent-replayed").is_none())
        .count();
    assert_eq!(fresh, 1, "exactly one twin ran");
    let first = replies[0].ok(200).clone();
    for r in &replies {
        assert_eq!(r.ok(200), &first);
    }
    assert_eq!(d.notes(&john).await.len(), notes_before + 2);
    assert_eq!(credits(&d).await, before - 2);

    // Another API key's identical key is its own entry.
    let key2 = d.s.create_key(DEMO_ORG, &[Scope::Chat]).await;
    let r = keyed(
        &d.s.client(&key2),
        "chat-retry-1",
        json!({ "message": "any replies" }),
    )
    .await;
    r.ok(200);
    assert!(r.header("idempotent-replayed").is_none());
}

/// The record is in the database: a retry after a restart still replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_reply_survives_a_restart() {
    let d = demo().await;
    let dir = d.s.dir.path().to_path_buf();
    let body = json!({ "message": "add Sarah Chen to Seed founders" });
    let first = keyed(&d.c, "chat-restart-1", body.clone()).await;
    let data = first.ok(200).clone();
    assert_eq!(
        data["tool_calls"][0]["result"]["mode"],
        "confirmation_required"
    );
    let before = credits(&d).await;
    let Demo { s, .. } = d;
    let crate::common::TestServer {
        server, dir: tmp, ..
    } = s;
    server.shutdown().await;
    let config = pilot_bridge::Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir,
        ..Default::default()
    };
    let server = pilot_bridge::server::start(config, None)
        .await
        .expect("restart");
    let c = Client::new(
        format!("http://{}/api/v1", server.addr),
        Some(format!("Bearer {KEY}")),
    );
    let again = keyed(&c, "chat-restart-1", body).await;
    assert_eq!(
        again.ok(200),
        &data,
        "the same question, the same pending action"
    );
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let left = c.get("/credits").await.ok(200)["credits_remaining"].as_i64();
    assert_eq!(left, Some(before));
    server.shutdown().await;
    drop(tmp);
}

// ---- the openai provider against a fake ---------------------------------------------------

const FAKE_KEY: &str = "sk-test-fake-provider-key";
const KEY_VAR: &str = "PILOT_BRIDGE_TEST_CHAT_PROVIDER_KEY";

/// One request the fake received: its Authorization header and JSON body.
type Received = (Option<String>, Value);

/// What the fake received, in order; and whether its one "flaky" failure has happened.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Received>>>, Arc<AtomicBool>);

impl Seen {
    fn all(&self) -> Vec<Received> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

fn last_user_message(body: &Value) -> String {
    body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .rfind(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// A fake `/v1/chat/completions`: for a message about a note or a campaign it asks for one
/// tool call, and once a tool result is in the conversation it answers in words; "fail" is a
/// 500, "slow" answers after 3 s; "loop" asks for a tool call every time, however asked; a
/// message with "flaky" fails with a 500 the first time a tool result comes back.
async fn fake_completions(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Ok(mut v) = seen.0.lock() {
        v.push((auth, body.clone()));
    }
    let user = last_user_message(&body);
    let has_tool_result = body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|m| m["role"] == "tool");
    if user == "fail" {
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "model exploded"}})),
        )
            .into_response();
    }
    if user == "slow" {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if user == "loop" {
        let n = body["messages"].as_array().map_or(0, Vec::len);
        return Json(json!({
            "id": format!("c-loop-{n}"), "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "tool_calls",
                "message": {"role": "assistant", "content": null, "tool_calls": [
                    {"id": format!("call_loop_{n}"), "type": "function",
                     "function": {"name": "reply_inbox", "arguments": "{}"}}]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}
        }))
        .into_response();
    }
    if has_tool_result && user.contains("flaky") && !seen.1.swap(true, Ordering::SeqCst) {
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "flaked after the tool ran"}})),
        )
            .into_response();
    }
    if has_tool_result {
        return Json(json!({
            "id": "c2", "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Done: I saved that note on John Smith."}}],
            "usage": {"prompt_tokens": 120, "completion_tokens": 11, "total_tokens": 131}
        }))
        .into_response();
    }
    let (name, args) = if user.contains("note") {
        (
            "note_on_contact",
            json!({"contactRef": "John Smith", "note": "wants pricing by Friday"}),
        )
    } else {
        // A model trying to confirm on the user's behalf.
        (
            "add_to_campaign",
            json!({"contactRef": "Sarah Chen", "campaignRef": "Seed founders", "confirmed": true}),
        )
    };
    Json(json!({
        "id": "c1", "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": name, "arguments": args.to_string()}}]}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
    }))
    .into_response()
}

async fn fake_provider() -> (String, Seen) {
    let seen = Seen::default();
    let app = axum::Router::new()
        .route(
            "/v1/chat/completions",
            axum::routing::post(fake_completions),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind fake");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/v1"), seen)
}

static SET_KEY: Once = Once::new();

async fn openai_demo(base_url: String) -> Demo {
    // Set once, before any server of this binary reads it.
    SET_KEY.call_once(|| std::env::set_var(KEY_VAR, FAKE_KEY));
    demo_with(
        move |c| {
            c.chat.provider = pilot_bridge::config::ChatProvider::Openai;
            c.chat.base_url = base_url;
            c.chat.model = "fake-model-1".into();
            c.chat.api_key_env = KEY_VAR.into();
            c.chat.deadline_ms = 1_500;
        },
        Some(0),
    )
    .await
}

#[tokio::test]
async fn openai_provider_sends_tools_runs_them_and_passes_the_answer_through() {
    let (url, seen) = fake_provider().await;
    let d = openai_demo(url).await;
    let john = d.contact_id("john@acme.com").await;
    let notes_before = d.notes(&john).await.len();
    let a = chat(
        &d,
        json!({ "message": "add a note for John: wants pricing by Friday" }),
    )
    .await;
    assert_eq!(a["response"], "Done: I saved that note on John Smith.");
    assert_eq!(a["model"], "fake-model-1");
    assert_eq!(
        a["usage"],
        json!({ "input_tokens": 220, "output_tokens": 31 })
    );
    let call = &a["tool_calls"][0];
    assert_eq!(call["name"], "note_on_contact");
    assert_eq!(
        call["arguments"],
        json!({ "contactRef": "John Smith", "note": "wants pricing by Friday" })
    );
    assert_eq!(call["result"]["mode"], "result");
    // The tool ran against the real store.
    let notes = d.notes(&john).await;
    assert_eq!(notes.len(), notes_before + 1);
    assert_eq!(notes[0]["content"], "wants pricing by Friday");

    let requests = seen.all();
    assert_eq!(requests.len(), 2, "a tool round, then the answer");
    for (auth, body) in &requests {
        assert_eq!(auth.as_deref(), Some(format!("Bearer {FAKE_KEY}").as_str()));
        assert_eq!(body["model"], "fake-model-1");
        let tools = body["tools"].as_array().expect("tools sent");
        assert_eq!(tools.len(), 17);
        let note = tools
            .iter()
            .find(|t| t["function"]["name"] == "note_on_contact")
            .expect("note tool");
        assert_eq!(note["type"], "function");
        assert!(note["function"]["parameters"]["properties"]["note"].is_object());
        // The contact may be named several ways (contactRef, contactId, email), so only the
        // note itself is required outright.
        let required = note["function"]["parameters"]["required"]
            .as_array()
            .expect("required");
        assert!(required.contains(&json!("note")), "{required:?}");
    }
    // The tool result went back to the model, tied to its call.
    let second = &requests[1].1["messages"];
    let tool_msg = second
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .expect("a tool message");
    assert_eq!(tool_msg["tool_call_id"], "call_1");
    let result: Value = serde_json::from_str(tool_msg["content"].as_str().unwrap()).unwrap();
    assert_eq!(result["mode"], "result");
    assert_eq!(result["spoken_summary"], call["result"]["spoken_summary"]);
    let assistant = second
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "assistant")
        .expect("the assistant's tool call");
    assert_eq!(assistant["tool_calls"][0]["id"], "call_1");
}

#[tokio::test]
async fn a_model_cannot_confirm_only_the_users_yes_does() {
    let (url, seen) = fake_provider().await;
    let d = openai_demo(url).await;
    let seed = d.campaign_id("Seed founders").await;
    let total = |c: Value| c["audience_stats"]["total"].as_i64().unwrap();
    let before = total(d.campaign(&seed).await);
    let a = chat(&d, json!({ "message": "put Sarah in seed founders" })).await;
    let call = &a["tool_calls"][0];
    assert_eq!(call["name"], "add_to_campaign");
    assert!(call["arguments"].get("confirmed").is_none(), "{call}");
    assert_eq!(call["result"]["mode"], "confirmation_required");
    assert_eq!(
        total(d.campaign(&seed).await),
        before,
        "the model's confirmed was ignored"
    );
    // The model was told only the user can confirm.
    let requests = seen.all();
    let tool_msg = requests[1].1["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .cloned()
        .unwrap();
    assert!(tool_msg["content"]
        .as_str()
        .unwrap()
        .contains("only the user's next message"));
    let tid = a["thread_id"].as_str().unwrap();
    let yes = chat(&d, json!({ "message": "yes", "thread_id": tid })).await;
    assert_eq!(yes["tool_calls"][0]["name"], "confirm_pending_action");
    assert_eq!(total(d.campaign(&seed).await), before + 1);
    assert_eq!(
        seen.all().len(),
        requests.len(),
        "the user's yes needs no model call"
    );
    // The thread's history goes to the model with the next message.
    chat(
        &d,
        json!({ "message": "add a note for John: call back", "thread_id": tid }),
    )
    .await;
    let last = seen.all().pop().unwrap().1;
    let texts: Vec<String> = last["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_str().map(str::to_string))
        .collect();
    assert!(
        texts.iter().any(|t| t == "put Sarah in seed founders"),
        "{texts:?}"
    );
    assert!(texts.iter().any(|t| t == "yes"), "{texts:?}");
}

#[tokio::test]
async fn provider_failures_map_to_our_codes_and_refund_the_credit() {
    let (url, _seen) = fake_provider().await;
    let d = openai_demo(url).await;
    let before = credits(&d).await;
    let r = d.c.post("/chat", json!({ "message": "fail" })).await;
    let e = r.err(502, "UPSTREAM_UNAVAILABLE");
    assert!(r.details().contains("HTTP 500: model exploded"), "{e}");
    assert!(!r.text.contains(FAKE_KEY));
    let r = d.c.post("/chat", json!({ "message": "slow" })).await;
    r.err(504, "UPSTREAM_UNAVAILABLE");
    assert_eq!(credits(&d).await, before, "failed messages are refunded");
    // Nobody listening.
    let d2 = openai_demo("http://127.0.0.1:9/v1".into()).await;
    let r = d2.c.post("/chat", json!({ "message": "hello" })).await;
    r.err(502, "UPSTREAM_UNAVAILABLE");
}

#[tokio::test]
async fn the_tool_loop_stops_after_four_model_calls() {
    let (url, seen) = fake_provider().await;
    let d = openai_demo(url).await;
    let before = credits(&d).await;
    let a = chat(&d, json!({ "message": "loop" })).await;
    let requests = seen.all();
    assert_eq!(requests.len(), 4, "at most chat.max_rounds (4) model calls");
    let choices: Vec<&Value> = requests.iter().map(|(_, b)| &b["tool_choice"]).collect();
    assert_eq!(
        choices,
        ["auto", "auto", "auto", "none"],
        "the last round may not call tools"
    );
    // Three rounds ran their tool; the fourth round's tool call was not run, and the answer is
    // what the last tool said (the model gave no words).
    let calls = a["tool_calls"].as_array().expect("tool_calls");
    assert_eq!(calls.len(), 3, "{a}");
    assert!(calls.iter().all(|c| c["name"] == "reply_inbox"));
    assert_eq!(a["response"], calls[2]["result"]["spoken_summary"], "{a}");
    assert_eq!(
        a["usage"],
        json!({ "input_tokens": 40, "output_tokens": 4 })
    );
    assert_eq!(credits(&d).await, before - 1);
}

/// A provider failure after a tool wrote: the credit comes back, and the retry with the same
/// key replays the tool's write in the native pipeline instead of writing again.
#[tokio::test]
async fn a_retry_after_a_provider_failure_does_not_repeat_the_tools_writes() {
    let (url, seen) = fake_provider().await;
    let d = openai_demo(url).await;
    let john = d.contact_id("john@acme.com").await;
    let notes_before = d.notes(&john).await.len();
    let before = credits(&d).await;
    let body = json!({ "message": "flaky: add a note for John: wants pricing by Friday" });
    let r = keyed(&d.c, "chat-flaky-1", body.clone()).await;
    r.err(502, "UPSTREAM_UNAVAILABLE");
    assert_eq!(
        d.notes(&john).await.len(),
        notes_before + 1,
        "the tool did write"
    );
    assert_eq!(credits(&d).await, before, "no answer, no charge");
    let r = keyed(&d.c, "chat-flaky-1", body.clone()).await;
    let a = r.ok(200).clone();
    assert!(
        r.header("idempotent-replayed").is_none(),
        "a failure is not replayed"
    );
    assert_eq!(a["tool_calls"][0]["result"]["mode"], "duplicate", "{a}");
    assert_eq!(
        d.notes(&john).await.len(),
        notes_before + 1,
        "still one note"
    );
    assert_eq!(credits(&d).await, before - 1);
    // Answered now: a further retry is a replay, with no model call.
    let calls = seen.all().len();
    let r = keyed(&d.c, "chat-flaky-1", body).await;
    assert_eq!(r.ok(200), &a);
    assert_eq!(r.header("idempotent-replayed"), Some("true"));
    assert_eq!(seen.all().len(), calls);
    assert_eq!(credits(&d).await, before - 1);
}
