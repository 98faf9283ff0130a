//! A real `redis-server` for tests: started on a free loopback port without persistence, killed
//! when dropped, restartable on the same port (to test an outage). Tests skip with a printed
//! notice only when the binary is missing; CI installs it (`.ci/run`).
//!
//! Included from a test file as `#[path = "common/redis.rs"] mod redis_common;`.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct TestRedis {
    child: Option<Child>,
    pub port: u16,
}

fn spawn(port: u16) -> std::io::Result<Child> {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl TestRedis {
    /// `None`, after printing why, when `redis-server` is not installed.
    pub fn start() -> Option<TestRedis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        match spawn(port) {
            Ok(child) => {
                wait_listening(port);
                Some(TestRedis {
                    child: Some(child),
                    port,
                })
            }
            Err(e) => {
                eprintln!("SKIPPED: redis-server is not installed ({e}); `apt-get install redis-server` runs this test");
                None
            }
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (an outage); `restart` brings it back, empty, on the same port.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.child = Some(spawn(self.port).expect("restart redis-server"));
        wait_listening(self.port);
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
