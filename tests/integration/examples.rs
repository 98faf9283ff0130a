//! The client examples under `examples/` run against a real `serve --demo` process: the Python
//! voice turn over HTTP, the Node wearable over WebSocket, and the curl quickstart. Each must
//! exit 0 (they assert what they hear). Where an interpreter is not installed the example is
//! skipped with a note, except under CI (`CI=true`), where a missing interpreter fails.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A `serve --demo` child, killed when dropped.
struct Serve(std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve_demo(dir: &Path, port: u16) -> Serve {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pilot-bridge"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PILOT_BRIDGE_") {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .args(["serve", "--demo", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let serve = Serve(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "serve --demo did not listen");
        std::thread::sleep(Duration::from_millis(25));
    }
    serve
}

fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Node's major version, to decide whether the built-in WebSocket needs its flag (< 22).
fn node_major() -> Option<u32> {
    let out = Command::new("node").arg("--version").output().ok()?;
    let v = String::from_utf8_lossy(&out.stdout);
    v.trim()
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()
}

fn run_example(program: &str, args: &[&str], port: u16) {
    if !installed(program) {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(!ci, "{program} is needed to run the examples in CI");
        eprintln!("skipping {args:?}: {program} is not installed");
        return;
    }
    let out = Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PILOT_BRIDGE_URL", format!("http://127.0.0.1:{port}"))
        .env_remove("PILOT_BRIDGE_KEY")
        .stdin(Stdio::null())
        .output()
        .expect("run example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("Sarah Chen"), "{stdout}");
}

#[test]
fn client_examples_run_against_serve_demo() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _server = serve_demo(dir.path(), port);
    run_example("python3", &["examples/voice_turn.py"], port);
    run_example("bash", &["examples/quickstart.sh"], port);
    let mut node_args = vec!["examples/wearable.mjs"];
    if node_major().is_some_and(|v| v < 22) {
        node_args.insert(0, "--experimental-websocket");
    }
    run_example("node", &node_args, port);
}

/// README and `docs/` stand on their own: every relative link points at a file of this
/// repository, and nothing cites the design notes outside it.
#[test]
fn readme_and_docs_cite_only_files_in_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        assert!(
            !text.contains("shared/DESIGN") && !text.contains("DESIGN §"),
            "{} cites the design notes outside the repository",
            file.display()
        );
        // Markdown links `](target)` that are not URLs or anchors must exist.
        for part in text.split("](").skip(1) {
            let target = part.split(')').next().unwrap_or("");
            let target = target.split('#').next().unwrap_or("");
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let dir = file.parent().expect("parent");
            let resolved = dir.join(target);
            assert!(
                resolved.exists(),
                "{} links to {target}, which does not exist",
                file.display()
            );
            let canonical = resolved.canonicalize().expect("canonical");
            assert!(
                canonical.starts_with(root.canonicalize().expect("root")),
                "{} links outside the repository: {target}",
                file.display()
            );
        }
    }
}
