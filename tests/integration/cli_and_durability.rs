//! The real binary: `org` and `keys` commands (DESIGN §12), keys created and revoked by the CLI
//! while a server process runs, `serve --demo`, and durability of acknowledged writes across a
//! `kill -9` (DESIGN §11).

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Client, Resp};
use serde_json::{json, Value};

/// The binary with a clean `PILOT_BRIDGE_*` environment and quiet logs.
fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pilot-bridge"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PILOT_BRIDGE_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// Runs a CLI command against `dir` and returns its output.
fn cli(dir: &Path, args: &[&str]) -> Output {
    let out = bin()
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run pilot-bridge");
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command that must succeed.
fn cli_ok(dir: &Path, args: &[&str]) -> Output {
    let o = cli(dir, args);
    assert!(
        o.status.success(),
        "{args:?} failed: {}{}",
        stdout(&o),
        stderr(&o)
    );
    o
}

/// `keys create`: returns (raw key, key id). Checks stdout holds the key and nothing else.
fn create_key(dir: &Path, org: &str, scopes: Option<&str>) -> (String, String) {
    let mut args = vec!["keys", "create", "--org", org];
    if let Some(s) = scopes {
        args.extend(["--scopes", s]);
    }
    let o = cli_ok(dir, &args);
    let out = stdout(&o);
    let key = out.strip_suffix('\n').expect("newline-terminated key");
    assert!(
        !key.contains('\n'),
        "stdout holds more than the key: {out:?}"
    );
    assert!(key.starts_with("op_live_"), "{key}");
    assert_eq!(key.len(), 48, "{key}");
    assert!(key[8..].chars().all(|c| c.is_ascii_alphanumeric()), "{key}");
    let err = stderr(&o);
    let id = err
        .split_whitespace()
        .skip_while(|w| *w != "key")
        .nth(1)
        .unwrap_or_else(|| panic!("no key id in stderr: {err}"))
        .to_string();
    assert!(!err.contains(key), "the raw key leaked to stderr");
    (key.to_string(), id)
}

use common::free_port;

/// A `serve` child process, killed (SIGKILL) and reaped when dropped.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `serve` on a free port with `dir` as data directory.
    fn spawn(
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> (Server, Option<std::process::ChildStdout>) {
        let port = free_port();
        let mut args = vec![
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--data-dir".to_string(),
            dir.to_str().expect("utf-8 path").to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        Server::spawn_raw(dir, port, &args, env)
    }

    /// Starts `serve ARGS` expecting it to listen on `port`; logs go to a file in `log_dir`.
    fn spawn_raw(
        log_dir: &Path,
        port: u16,
        args: &[String],
        env: &[(&str, &str)],
    ) -> (Server, Option<std::process::ChildStdout>) {
        let log = log_dir.join(format!("serve-{port}.log"));
        let mut cmd = bin();
        cmd.arg("serve")
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let mut child = cmd.spawn().expect("spawn serve");
        let out = child.stdout.take();
        (Server { child, port, log }, out)
    }

    fn root(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn client(&self, key: &str) -> Client {
        Client::new(
            format!("{}/api/v1", self.root()),
            Some(format!("Bearer {key}")),
        )
    }

    /// Polls `/healthz` until it answers 200 (10 s at most).
    async fn wait_ready(&mut self) {
        let c = Client::new(self.root(), None);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "serve exited with {status}: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if let Some(r) = try_get(&c, "/healthz").await {
                if r.status == 200 {
                    r.ok(200);
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "serve not ready after 10 s: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGKILL, then reap.
    fn kill9(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }
}

/// A GET that returns `None` while nothing listens yet.
async fn try_get(c: &Client, path: &str) -> Option<Resp> {
    let url = format!("{}{path}", c.base);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .ok()?;
    let r = http.get(url).send().await.ok()?;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.ok()?;
    Some(Resp {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    })
}

/// Polls `GET /credits` with `c` until its status is `want`, at most `within`; returns the
/// response and how long it took.
async fn until_status(c: &Client, want: u16, within: Duration) -> (Resp, Duration) {
    let start = Instant::now();
    loop {
        let r = c.get("/credits").await;
        if r.status == want {
            return (r, start.elapsed());
        }
        assert!(
            start.elapsed() < within,
            "still {} after {within:?}: {}",
            r.status,
            r.text
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn org_and_keys_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();

    let o = cli_ok(d, &["org", "create", "acme", "--rate-limit", "0"]);
    let org: Value = serde_json::from_str(&stdout(&o)).expect("org create prints JSON");
    assert_eq!(org["id"], "acme");
    assert_eq!(org["plan"], "pro");
    assert_eq!(org["rate_limit"], 0);

    let o = cli(d, &["org", "create", "acme"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert!(!cli(d, &["org", "create", "Not A Slug"]).status.success());
    assert!(!cli(d, &["org", "create", "x", "--plan", "gold"])
        .status
        .success());

    let o = cli_ok(
        d,
        &[
            "org",
            "create",
            "beta",
            "--plan",
            "scale",
            "--pilot-mode",
            "auto",
        ],
    );
    let beta: Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    assert_eq!(
        (beta["plan"].as_str(), beta["pilot_mode"].as_str()),
        (Some("scale"), Some("auto"))
    );

    let (key, id) = create_key(d, "acme", None);
    let (key2, _) = create_key(d, "acme", Some("contacts,native"));
    assert_ne!(key, key2);

    for bad in [
        vec!["keys", "create", "--org", "nope"],
        vec!["keys", "create", "--org", "acme", "--scopes", "admin"],
        vec!["keys", "create", "--org", "acme", "--scopes", ""],
    ] {
        let o = cli(d, &bad);
        assert!(!o.status.success(), "{bad:?} succeeded");
        assert!(stdout(&o).is_empty(), "{bad:?} printed {}", stdout(&o));
    }

    let o = cli_ok(d, &["keys", "list", "--org", "acme"]);
    let list = stdout(&o);
    assert!(list.contains(&id));
    assert!(list.contains(&key[..12]), "the prefix identifies the key");
    assert!(
        !list.contains(&key) && !list.contains(&key2),
        "raw keys are never listed"
    );
    assert!(list.contains("contacts,native"));

    cli_ok(d, &["keys", "revoke", &id]);
    let o = cli_ok(d, &["keys", "list"]);
    assert!(stdout(&o).contains("revoked"));
    assert!(!cli(d, &["keys", "revoke", "no-such-key"]).status.success());

    let o = cli_ok(
        d,
        &["org", "set", "acme", "--plan", "free", "--rate-limit", "5"],
    );
    let changed: Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    assert_eq!(changed["plan"], "free");
    assert_eq!(changed["rate_limit"], 5);
    let o = cli_ok(d, &["org", "show", "acme"]);
    let shown: Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    assert_eq!(shown["plan"], "free");
    assert_eq!(shown["pilot_mode"], "review");
    assert!(!cli(d, &["org", "show", "nope"]).status.success());
    assert!(!cli(d, &["org", "set", "nope", "--plan", "pro"])
        .status
        .success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_keys_take_effect_on_a_running_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let config = d.join("pilot-bridge.toml");
    std::fs::write(&config, "[auth]\nkey_cache_ttl_secs = 1\n").expect("write config");
    let config = config.to_str().expect("utf-8 path").to_string();
    cli_ok(d, &["org", "create", "acme", "--rate-limit", "0"]);
    let (mut server, _) = Server::spawn(d, &["--config", &config], &[("RUST_LOG", "debug")]);
    server.wait_ready().await;

    // A key created while the server runs works within a second, with every scope.
    let (key, id) = create_key(d, "acme", None);
    let c = server.client(&key);
    let (r, took) = until_status(&c, 200, Duration::from_secs(1)).await;
    r.ok(200);
    assert!(took < Duration::from_secs(1), "took {took:?}");
    c.post("/contacts", json!({"email": "live@acme.com"}))
        .await
        .ok(201);
    for path in ["/signals", "/campaigns", "/settings", "/webhooks"] {
        c.get(path).await.ok(200);
    }

    // Scopes given on the command line are enforced.
    let (native, _) = create_key(d, "acme", Some("native"));
    let n = server.client(&native);
    until_status(&n, 403, Duration::from_secs(1))
        .await
        .0
        .err(403, "SCOPE_DENIED");
    n.get("/signals").await.page();

    // Revoking by id stops the key within the configured cache TTL (1 s) plus slack.
    cli_ok(d, &["keys", "revoke", &id]);
    let (r, _) = until_status(&c, 401, Duration::from_secs(3)).await;
    r.err(401, "INVALID_API_KEY");
    // Revoking by the raw value works too.
    cli_ok(d, &["keys", "revoke", &native]);
    let (r, _) = until_status(&n, 401, Duration::from_secs(3)).await;
    r.err(401, "INVALID_API_KEY");

    // A plan change reaches the server as well.
    let (key3, _) = create_key(d, "acme", None);
    let c3 = server.client(&key3);
    until_status(&c3, 200, Duration::from_secs(1)).await;
    cli_ok(d, &["org", "set", "acme", "--plan", "free"]);
    let (r, _) = until_status(&c3, 403, Duration::from_secs(3)).await;
    r.err(403, "PLAN_REQUIRED");

    // Raw keys never reach the logs, even at debug level.
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    for k in [&key, &native, &key3] {
        assert!(
            !log.contains(k.as_str()),
            "a raw key appears in the server log"
        );
    }
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_beat_env_beat_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (file_dir, env_dir) = (dir.path().join("from-file"), dir.path().join("from-env"));

    // PILOT_BRIDGE_DATA_DIR stands in for --data-dir.
    for d in [&file_dir, &env_dir] {
        let o = bin()
            .args(["org", "create", "acme"])
            .env("PILOT_BRIDGE_DATA_DIR", d)
            .output()
            .expect("run");
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let (file_key, _) = create_key(&file_dir, "acme", None);
    let (env_key, _) = create_key(&env_dir, "acme", None);

    let (file_port, env_port) = (free_port(), free_port());
    let config = dir.path().join("pilot-bridge.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{file_port}\"\ndata_dir = {:?}\n[limits]\ndefault_rate_limit = 2\n",
            file_dir.to_str().expect("utf-8")
        ),
    )
    .expect("write config");
    let cfg = config.to_str().expect("utf-8").to_string();

    // The file alone decides listen address, data directory and default rate limit.
    let (mut server, _) = Server::spawn_raw(
        dir.path(),
        file_port,
        &["--config".into(), cfg.clone()],
        &[],
    );
    server.wait_ready().await;
    let r = server.client(&file_key).get("/credits").await;
    r.ok(200);
    assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
    server.kill9();

    // Env beats the file.
    let env_listen = format!("127.0.0.1:{env_port}");
    let env_data = env_dir.to_str().expect("utf-8").to_string();
    let env = [
        ("PILOT_BRIDGE_LISTEN", env_listen.as_str()),
        ("PILOT_BRIDGE_DATA_DIR", env_data.as_str()),
        ("PILOT_BRIDGE_DEFAULT_RATE_LIMIT", "3"),
    ];
    let (mut server, _) = Server::spawn_raw(
        dir.path(),
        env_port,
        &["--config".into(), cfg.clone()],
        &env,
    );
    server.wait_ready().await;
    let r = server.client(&env_key).get("/credits").await;
    r.ok(200);
    assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
    server
        .client(&file_key)
        .get("/credits")
        .await
        .err(401, "INVALID_API_KEY");
    server.kill9();

    // Flags beat env.
    let flag_port = free_port();
    let args: Vec<String> = [
        "--config",
        &cfg,
        "--listen",
        &format!("127.0.0.1:{flag_port}"),
        "--data-dir",
        file_dir.to_str().expect("utf-8"),
        "--default-rate-limit",
        "4",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let (mut server, _) = Server::spawn_raw(dir.path(), flag_port, &args, &env);
    server.wait_ready().await;
    let r = server.client(&file_key).get("/credits").await;
    r.ok(200);
    assert_eq!(r.header("x-ratelimit-limit"), Some("4"));
}

/// Reads the child's stdout on a thread until a line starting with "API key: " appears.
fn read_demo_banner(out: std::process::ChildStdout) -> (String, String) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut banner = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no API key line in: {banner}"));
        banner.push_str(&line);
        banner.push('\n');
        if let Some(key) = line.strip_prefix("API key: ") {
            return (key.trim().to_string(), banner);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_demo_prints_a_working_key_and_keeps_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (mut server, out) = Server::spawn(d, &["--demo"], &[]);
    let (key, banner) = read_demo_banner(out.expect("stdout"));
    assert!(banner.contains("created"), "{banner}");
    assert!(key.starts_with("op_live_"), "{key}");
    server.wait_ready().await;

    let c = server.client(&key);
    let r = c.get("/contacts?search=sarah").await;
    let mut names: Vec<&str> = r
        .page()
        .iter()
        .filter_map(|x| x["full_name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["Sarah Chen", "Sarah Kim"]);
    assert_eq!(
        r.header("x-ratelimit-limit"),
        Some("60"),
        "demo org: 60/min"
    );
    assert_eq!(c.get("/contacts").await.total(), 206);
    assert_eq!(c.get("/campaigns").await.total(), 3);
    assert_eq!(c.get("/settings").await.ok(200)["pilot_mode"], "auto");
    c.post("/contacts", json!({"email": "added@later.io"}))
        .await
        .ok(201);
    server.kill9();

    // Restarting with --demo leaves the data alone; PILOT_BRIDGE_DEMO_KEY fixes the key.
    let fixed = "op_live_FixedDemoKeyForTheIntegrationTests0001";
    let (mut server, out) = Server::spawn(d, &["--demo"], &[("PILOT_BRIDGE_DEMO_KEY", fixed)]);
    let (key2, banner) = read_demo_banner(out.expect("stdout"));
    assert!(banner.contains("already present"), "{banner}");
    assert_eq!(key2, fixed);
    server.wait_ready().await;
    let c2 = server.client(fixed);
    assert_eq!(c2.get("/contacts").await.total(), 207);
    let r = c2.get("/contacts?search=added@later.io").await;
    assert_eq!(r.page().len(), 1);
    // The first key still works.
    server.client(&key).get("/credits").await.ok(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    cli_ok(d, &["org", "create", "acme", "--rate-limit", "0"]);
    let (key, _) = create_key(d, "acme", Some("contacts"));
    let (mut server, _) = Server::spawn(d, &[], &[]);
    server.wait_ready().await;
    let c = server.client(&key);

    // Sequential acknowledged writes: contacts, then a note on each with an idempotency key.
    let mut contacts = Vec::new();
    for i in 0..20 {
        let email = format!("durable{i}@acme.com");
        let r = c
            .post(
                "/contacts",
                json!({"email": email, "first_name": format!("D{i}")}),
            )
            .await;
        let id = r.ok(201)["contacts"][0]["id"].as_str().unwrap().to_string();
        contacts.push((id, email));
    }
    let mut notes = Vec::new();
    for (i, (cid, _)) in contacts.iter().enumerate() {
        let body = json!({"contact_id": cid, "note": format!("note {i}"),
                          "idempotency_key": format!("debrief-{i}")});
        let r = c.post("/notes", body.clone()).await;
        let id = r.ok(201)["id"].as_str().unwrap().to_string();
        notes.push((id, body));
    }
    let r = c
        .put(
            &format!("/contacts/{}", contacts[0].0),
            json!({"title": "Survivor"}),
        )
        .await;
    r.ok(200);

    // Writes still in flight when the process dies: only acknowledged ones are checked.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let writer = {
        let (c, acked) = (c.clone(), acked.clone());
        tokio::spawn(async move {
            for i in 0.. {
                let email = format!("inflight{i}@acme.com");
                let Some(r) = try_post(&c, "/contacts", json!({ "email": email })).await else {
                    return;
                };
                if r.status != 201 {
                    return;
                }
                acked.lock().unwrap().push(email);
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while acked.lock().unwrap().len() < 10 {
        assert!(
            Instant::now() < deadline,
            "background writes are not acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();
    writer.await.expect("writer task");
    let acked = acked.lock().unwrap().clone();

    let (mut server, _) = Server::spawn(d, &[], &[]);
    server.wait_ready().await;
    let c = server.client(&key);
    for (id, email) in &contacts {
        let r = c.get(&format!("/contacts/{id}")).await;
        assert_eq!(r.ok(200)["email"], email.as_str());
    }
    assert_eq!(
        c.get(&format!("/contacts/{}", contacts[0].0)).await.ok(200)["title"],
        "Survivor"
    );
    for (id, body) in &notes {
        let r = c
            .get(&format!(
                "/notes?contact_id={}",
                body["contact_id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(r.page().len(), 1);
        assert_eq!(r.page()[0]["id"], id.as_str());
        // The idempotency key is durable too: the retry after the crash is a replay.
        let again = c.post("/notes", body.clone()).await;
        assert_eq!(again.ok(200)["id"], id.as_str());
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
    }
    let mut stored = Vec::new();
    let mut offset = 0;
    loop {
        let r = c.get(&format!("/contacts?limit=200&offset={offset}")).await;
        let page = r.page();
        stored.extend(
            page.iter()
                .filter_map(|x| x["email"].as_str().map(str::to_string)),
        );
        if !r.body["meta"]["has_more"].as_bool().unwrap_or(false) {
            break;
        }
        offset += 200;
    }
    for email in &acked {
        assert!(stored.contains(email), "acknowledged {email} was lost");
    }
    assert!(stored.len() >= contacts.len() + acked.len());
}

/// A POST that returns `None` when the connection fails (the server was killed).
async fn try_post(c: &Client, path: &str, body: Value) -> Option<Resp> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .ok()?;
    let mut req = http.post(format!("{}{path}", c.base)).json(&body);
    if let Some(a) = &c.authorization {
        req = req.header("authorization", a);
    }
    let r = req.send().await.ok()?;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.ok()?;
    Some(Resp {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    })
}

/// SIGTERM: `/readyz` turns 503 at once while the server keeps serving for
/// `--shutdown-delay-ms` (liveness stays 200, work is still answered), then it drains and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readiness_off_first_then_drains_and_exits_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (mut server, _out) = Server::spawn(d, &["--demo", "--shutdown-delay-ms", "1500"], &[]);
    server.wait_ready().await;
    let root = Client::new(server.root(), None);
    root.get("/readyz").await.ok(200);
    let pid = server.child.id().to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(sent.success());
    let t = Instant::now();
    loop {
        let r = root.get("/readyz").await;
        if r.status == 503 {
            r.err(503, "SERVICE_UNAVAILABLE");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "still ready after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    root.get("/healthz").await.ok(200);
    let api = server.client(pilot_bridge::cli::DEFAULT_DEMO_KEY);
    api.get("/credits").await.ok(200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
    assert!(
        t.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        t.elapsed()
    );
}

/// Conversation state is durable (DESIGN §15): a keyed native write retried after `kill -9`
/// replays instead of running again, and a pending action asked before a SIGTERM or a `kill -9`
/// is confirmed after the restart — once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_state_survives_sigterm_and_kill_9() {
    const KEY: &str = "op_live_StateSurvivesRestarts0123456789abcdefgh";
    const NATIVE: &str = "/native/outreachpilot";
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let env = [("PILOT_BRIDGE_DEMO_KEY", KEY)];
    let (mut server, _) = Server::spawn(d, &["--demo"], &env);
    server.wait_ready().await;
    cli_ok(d, &["org", "set", "demo", "--rate-limit", "0"]);
    let c = server.client(KEY);
    let note = json!({ "action": { "type": "note_on_contact", "contactRef": "Sarah Chen",
                                   "note": "Survives kill -9" },
                       "idempotencyKey": "kill9-note" });
    let first = c.post(NATIVE, note.clone()).await;
    let note_id = first.ok(200)["ids"]["note_id"].clone();
    let ask = |campaign: &str| json!({ "action": { "type": "add_to_campaign", "contactRef": "John Smith", "campaignRef": campaign } });
    let asked = c.post(NATIVE, ask("Seed founders")).await;
    let pid_kill = asked.ok(200)["pending_action_id"]
        .as_str()
        .unwrap()
        .to_string();
    server.kill9();

    let (mut server, _) = Server::spawn(d, &["--demo"], &env);
    server.wait_ready().await;
    let c = server.client(KEY);
    let again = c.post(NATIVE, note).await;
    let data = again.ok(200);
    assert_eq!(data["mode"], "duplicate", "{data}");
    assert_eq!(data["ids"]["note_id"], note_id);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let confirmed = c
        .post(
            NATIVE,
            json!({ "pendingActionId": pid_kill, "confirmed": true }),
        )
        .await;
    assert_eq!(confirmed.ok(200)["mode"], "result", "{}", confirmed.text);
    // Asked now, confirmed after a graceful restart.
    let asked = c
        .post(
            NATIVE,
            json!({ "action": { "type": "pause_campaign", "campaignRef": "Seed founders" } }),
        )
        .await;
    let pid_term = asked.ok(200)["pending_action_id"]
        .as_str()
        .unwrap()
        .to_string();
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM")
        .success());
    let status = server.child.wait().expect("wait");
    assert!(status.success(), "exit status {status}");
    drop(server);

    let (mut server, _) = Server::spawn(d, &["--demo"], &env);
    server.wait_ready().await;
    let c = server.client(KEY);
    let confirmed = c
        .post(
            NATIVE,
            json!({ "pendingActionId": pid_term, "confirmed": true }),
        )
        .await;
    assert_eq!(confirmed.ok(200)["mode"], "result", "{}", confirmed.text);
    for pid in [&pid_kill, &pid_term] {
        let twice = c
            .post(NATIVE, json!({ "pendingActionId": pid, "confirmed": true }))
            .await;
        assert_eq!(twice.ok(200)["mode"], "duplicate", "{}", twice.text);
    }
    server.kill9();
}

// ---------------------------------------------------------------------------------------------
// First run: nothing is created by commands that only read or change existing records.

#[test]
fn read_only_commands_never_create_a_data_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nonexistent");
    for args in [
        vec!["keys", "list"],
        vec!["org", "show", "acme"],
        vec!["keys", "revoke", "some-id"],
        vec!["org", "set", "acme", "--plan", "pro"],
        vec!["keys", "create", "--org", "acme"],
    ] {
        let o = cli(&missing, &args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(
            stderr(&o).contains("does not exist"),
            "{args:?}: {}",
            stderr(&o)
        );
        assert!(stdout(&o).is_empty(), "{args:?}: {}", stdout(&o));
        assert!(!missing.exists(), "{args:?} created {}", missing.display());
    }
    // An existing directory without a database is not a workspace either.
    let o = cli(dir.path(), &["keys", "list"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no pilot-bridge database"),
        "{}",
        stderr(&o)
    );
    assert!(!dir.path().join("pilot-bridge.db").exists());
}

#[test]
fn keys_list_shows_created_and_last_used_and_revoke_says_when_already_done() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    cli_ok(d, &["org", "create", "acme"]);
    let (_key, id) = create_key(d, "acme", None);
    let list = stdout(&cli_ok(d, &["keys", "list"]));
    let header = list.lines().next().unwrap_or("");
    assert!(
        header.contains("CREATED") && header.contains("LAST USED"),
        "{list}"
    );
    let row = list.lines().find(|l| l.contains(&id)).expect("key row");
    assert!(row.contains("never"), "{row}");
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert!(row.contains(&today), "{row}");

    let first = cli_ok(d, &["keys", "revoke", &id]);
    assert!(stderr(&first).contains(&format!("revoked key {id}")));
    let again = cli_ok(d, &["keys", "revoke", &id]);
    assert!(
        stderr(&again).contains("was already revoked at"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn org_timezone_is_set_from_the_cli_and_validated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let o = cli_ok(
        d,
        &["org", "create", "acme", "--timezone", "America/New_York"],
    );
    let org: Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    assert_eq!(org["timezone"], "America/New_York");
    let o = cli_ok(d, &["org", "set", "acme", "--timezone", "europe/berlin"]);
    let org: Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    assert_eq!(org["timezone"], "Europe/Berlin", "canonical spelling");
    let o = cli(d, &["org", "set", "acme", "--timezone", "Berlin"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("is not an IANA time zone name"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn help_documents_every_argument_and_the_scopes() {
    let o = bin()
        .args(["keys", "create", "--help"])
        .output()
        .expect("run");
    let help = stdout(&o);
    assert!(
        help.contains("contacts, campaigns, chat, native, credits, settings"),
        "{help}"
    );
    for cmd in [
        vec!["keys", "revoke", "--help"],
        vec!["org", "set", "--help"],
        vec!["org", "show", "--help"],
    ] {
        let help = stdout(&bin().args(&cmd).output().expect("run"));
        for line in help.lines().filter(|l| l.trim_start().starts_with('<')) {
            assert!(
                line.split_whitespace().count() > 1,
                "{cmd:?}: argument without a description: {line}"
            );
        }
    }
    let help = stdout(&bin().args(["org", "set", "--help"]).output().expect("run"));
    assert!(help.contains("--timezone"), "{help}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_binds_before_it_seeds_and_one_data_directory_has_one_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A busy port: nothing is created or printed before the bind fails.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let data = dir.path().join("data");
    let o = bin()
        .args(["serve", "--demo", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(&data)
        .stdin(Stdio::null())
        .output()
        .expect("run serve");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cannot listen on"), "{}", stderr(&o));
    assert!(!stdout(&o).contains("Try:"), "{}", stdout(&o));
    assert!(!data.exists(), "nothing seeded before the bind");
    drop(busy);

    // A second server on a data directory a live one holds is refused.
    std::fs::create_dir_all(&data).expect("mkdir");
    let (mut first, _out) = Server::spawn(&data, &[], &[]);
    first.wait_ready().await;
    let port2 = free_port();
    let o = bin()
        .args(["serve", "--listen", &format!("127.0.0.1:{port2}")])
        .arg("--data-dir")
        .arg(&data)
        .stdin(Stdio::null())
        .output()
        .expect("run serve");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("is in use by another pilot-bridge process"),
        "{}",
        stderr(&o)
    );
    // After the holder dies (even by SIGKILL) the directory is free again.
    first.kill9();
    let (mut again, _out) = Server::spawn(&data, &[], &[]);
    again.wait_ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_at_info_with_route_template_and_request_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (mut server, out) = Server::spawn(d, &["--demo"], &[("RUST_LOG", "info")]);
    let (key, _) = read_demo_banner(out.expect("stdout"));
    server.wait_ready().await;
    let c = server.client(&key);
    let id = c.get("/contacts?search=sarah").await.page()[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let r = c.get(&format!("/contacts/{id}")).await;
    r.ok(200);
    let request_id = r.header("x-request-id").expect("request id").to_string();
    let turn = c
        .post(
            "/native/outreachpilot",
            json!({ "action": { "type": "note_on_contact", "contactId": id, "note": "secret plans" },
                    "transcript": "note that secret plans" }),
        )
        .await;
    turn.ok(200);
    server.kill9();
    let log = std::fs::read_to_string(log_path(d)).expect("log");
    let line = log
        .lines()
        .find(|l| l.contains(&request_id))
        .unwrap_or_else(|| panic!("no access line for {request_id}: {log}"));
    assert!(line.contains("INFO"), "{line}");
    assert!(line.contains("route=/api/v1/contacts/{id}"), "{line}");
    assert!(
        line.contains("method=GET") && line.contains("status=200"),
        "{line}"
    );
    assert!(line.contains("elapsed_ms="), "{line}");
    assert!(
        !line.contains(&id),
        "route template, not the raw path: {line}"
    );
    assert!(
        !log.contains("secret plans"),
        "notes and transcripts stay out of INFO logs: {log}"
    );

    // Sampling 0 turns the access lines off.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let (mut quiet, out) = Server::spawn(
        dir2.path(),
        &["--demo", "--access-log-sample", "0"],
        &[("RUST_LOG", "info")],
    );
    let (key, _) = read_demo_banner(out.expect("stdout"));
    quiet.wait_ready().await;
    quiet.client(&key).get("/credits").await.ok(200);
    quiet.kill9();
    let log = std::fs::read_to_string(log_path(dir2.path())).expect("log");
    assert!(!log.contains("route=/api/v1/credits"), "{log}");
}

/// The one `serve-*.log` a test server wrote into `dir`.
fn log_path(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("serve-") && n.ends_with(".log"))
        })
        .expect("serve log")
}
