//! A real `redis-server` on a loopback port, started by the test: stopped, restarted on the same
//! port, or frozen with SIGSTOP.
//!
//! Without the binary a test is skipped with a note, except under `CI=true`, where `.ci/run`
//! installs it and a missing one is a failure.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

use super::eventually::eventually;

pub struct TestRedis {
    port: u16,
    child: Option<Child>,
}

impl TestRedis {
    /// A fresh server, or `None` (with a note on stderr) when `redis-server` is not installed.
    pub async fn start() -> Option<TestRedis> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok();
        if !found {
            assert!(
                std::env::var("CI").is_err(),
                "redis-server is missing (the CI script installs it)"
            );
            eprintln!("skipped: redis-server is not installed");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut redis = TestRedis { port, child: None };
        redis.run().await;
        Some(redis)
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let port = self.port;
        eventually("redis-server accepts connections", async || {
            std::net::TcpStream::connect(("127.0.0.1", port)).map(|_| ())
        })
        .await;
    }

    /// Stops the server (its data is gone: it keeps none).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        self.run().await;
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): connections stay open, nothing is answered.
    pub fn freeze(&self, frozen: bool) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill").args([signal, &pid]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill {signal} {pid}");
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.stop();
    }
}
