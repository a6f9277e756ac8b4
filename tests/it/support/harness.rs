//! sidepool under test: started in-process on ephemeral loopback ports, or as the built binary;
//! a plain HTTP/1.1 client toward it; `/metrics` scraping.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use sidepool::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::certs;
use super::eventually::{Text, eventually};
use super::upstream::TestUpstream;

/// Upper bound for every wait in these tests.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// One `[upstreams.NAME]` entry.
pub struct UpstreamSpec {
    pub name: &'static str,
    pub url: String,
    pub extra: &'static str,
}

/// `https://exchange.test:PORT` (resolved to 127.0.0.1 through `dns.static`).
pub fn https(name: &'static str, host: &str, port: u16) -> UpstreamSpec {
    UpstreamSpec {
        name,
        url: format!("https://{host}:{port}"),
        extra: "",
    }
}

/// A config with test-friendly timeouts; `pool` lines go into `[pool]`.
pub fn config_toml(pool: &str, upstreams: &[UpstreamSpec]) -> String {
    let ca = certs::trusted().ca_file.display().to_string();
    // Test-friendly timeouts, unless the test sets its own.
    let defaults: String = [
        ("queue_timeout", "\"3s\""),
        ("connect_timeout", "\"3s\""),
        ("read_timeout", "\"5s\""),
        ("request_timeout", "\"10s\""),
        // Off unless a test is about it: most tests count connections exactly.
        ("warm_connections", "0"),
    ]
    .iter()
    .filter(|(key, _)| !pool.contains(&format!("{key} =")))
    .map(|(key, value)| format!("{key} = {value}\n"))
    .collect();
    let mut toml = format!(
        r#"
[listen]
proxy = "127.0.0.1:0"
admin = "127.0.0.1:0"
drain_timeout = "5s"

[pool]
{pool}
{defaults}

[dns.static]
"exchange.test" = "127.0.0.1"
"other.test" = "127.0.0.1"

[tls]
ca_files = [{ca:?}]
"#
    );
    for u in upstreams {
        toml.push_str(&format!(
            "\n[upstreams.{}]\nurl = {:?}\n{}\n",
            u.name, u.url, u.extra
        ));
    }
    toml
}

/// sidepool running inside the test process.
pub struct Sidepool {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Sidepool {
    /// Starts sidepool with `toml` (listen addresses should be port 0).
    pub async fn start(toml: &str) -> Sidepool {
        let config = Config::from_toml_str(toml).unwrap_or_else(|e| panic!("config: {e}\n{toml}"));
        let server = sidepool::Server::bind(config).await.expect("bind");
        let (proxy, admin) = (server.proxy_addr(), server.admin_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Sidepool {
            proxy,
            admin,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Starts sidepool with one upstream `ex` (`https://exchange.test:PORT`) pointing at
    /// `upstream`; `pool` lines go into `[pool]` as in [`config_toml`].
    pub async fn for_upstream(upstream: &TestUpstream, pool: &str) -> Sidepool {
        Sidepool::start(&config_toml(
            pool,
            &[https("ex", "exchange.test", upstream.port())],
        ))
        .await
    }

    /// The whole `/metrics` text.
    pub async fn metrics(&self) -> String {
        let (status, _, body) = send_fresh(self.admin, get("/metrics")).await;
        assert_eq!(status, StatusCode::OK);
        String::from_utf8(body.to_vec()).expect("utf-8 metrics")
    }

    /// The value of `name{labels}` (labels in the exporter's order), or None when absent.
    pub async fn metric(&self, name: &str, labels: &str) -> Option<f64> {
        metric_value(&self.metrics().await, name, labels)
    }

    /// The four pool gauges of `upstream`: (active, idle, connecting, waiting).
    pub async fn gauges(&self, upstream: &str) -> (f64, f64, f64, f64) {
        let text = self.metrics().await;
        let label = format!("upstream=\"{upstream}\"");
        let get = |name: &str| metric_value(&text, name, &label).unwrap_or(f64::NAN);
        (
            get("http_pool_connections_active"),
            get("http_pool_connections_idle"),
            get("http_pool_connections_connecting"),
            get("http_pool_requests_waiting"),
        )
    }

    /// Waits until the gauges of `upstream` equal `expected` (bounded by [`PATIENCE`]).
    /// The gauges change when connection tasks and the reaper run, so this polls `/metrics`.
    pub async fn wait_gauges(&self, upstream: &str, expected: (f64, f64, f64, f64)) {
        let what = format!(
            "gauges of {upstream} (active, idle, connecting, waiting) equal to {expected:?}"
        );
        eventually(&what, async || {
            let now = self.gauges(upstream).await;
            if now == expected { Ok(()) } else { Err(now) }
        })
        .await;
    }

    /// Stops it (like SIGTERM) and waits for the drain to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(PATIENCE, task)
                .await
                .expect("drained in time")
                .expect("no panic");
        }
    }
}

impl Drop for Sidepool {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Finds `name{labels} value` in Prometheus text.
pub fn metric_value(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// A GET request for `target` (origin-form path or absolute URL).
pub fn get(target: &str) -> Request<Full<Bytes>> {
    request("GET", target, Bytes::new())
}

/// A request with a body.
pub fn request(method: &str, target: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(target)
        .header("host", "sidepool.test")
        .body(Full::new(body.into()))
        .expect("valid request")
}

/// A keep-alive client connection to sidepool.
pub struct Client {
    send: http1::SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
}

impl Client {
    /// Opens a connection to `addr`.
    pub async fn connect(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.expect("connect to sidepool");
        let (send, conn) = http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Client { send, task }
    }

    /// Sends and reads the whole response.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, Bytes) {
        self.send.ready().await.expect("client connection ready");
        let response = tokio::time::timeout(PATIENCE, self.send.send_request(req))
            .await
            .expect("response in time")
            .expect("response");
        collect(response).await
    }

    /// Sends and returns the response head with its streaming body.
    pub async fn send_streaming(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Response<hyper::body::Incoming> {
        self.send.ready().await.expect("client connection ready");
        self.send.send_request(req).await.expect("response")
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads a whole response.
pub async fn collect(response: Response<hyper::body::Incoming>) -> (StatusCode, HeaderMap, Bytes) {
    let (head, body) = response.into_parts();
    let body = tokio::time::timeout(PATIENCE, body.collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    (head.status, head.headers, body)
}

/// One request on a new client connection (a naive bot).
pub async fn send_fresh(
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
) -> (StatusCode, HeaderMap, Bytes) {
    Client::connect(addr).await.send(req).await
}

/// Writes raw bytes and reads until the peer closes or `PATIENCE` passes; returns the text.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
        if out.len() > 1 << 20 {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The JSON `error` field of a sidepool error body.
pub fn error_kind(body: &Bytes) -> String {
    let json: serde_json::Value =
        serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    json["error"].as_str().unwrap_or_default().to_owned()
}

/// The built `sidepool` binary.
pub fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sidepool"))
}

/// Writes `toml` to a fresh file in the test temp dir.
pub fn config_file(name: &str, toml: &str) -> PathBuf {
    certs::write_file(name, toml.as_bytes())
}

/// A port on 127.0.0.1 with nothing listening (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// sidepool as a child process with stderr captured to a file.
pub struct Process {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl Process {
    /// Runs the binary with `toml` (whose listen addresses are `127.0.0.1:0`: free ports are
    /// chosen here, since the child cannot report them) and `envs`; waits until `/readyz`.
    pub async fn start(tag: &str, toml: &str, envs: &[(&str, &str)]) -> Process {
        let (proxy_port, admin_port) = (closed_port(), closed_port());
        let toml = toml
            .replace(
                "proxy = \"127.0.0.1:0\"",
                &format!("proxy = \"127.0.0.1:{proxy_port}\""),
            )
            .replace(
                "admin = \"127.0.0.1:0\"",
                &format!("admin = \"127.0.0.1:{admin_port}\""),
            );
        let path = config_file(&format!("{tag}.toml"), &toml);
        let log = certs::temp_dir().join(format!("{tag}.log"));
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut command = binary();
        command
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(stderr)
            .env_remove("RUST_LOG");
        for (k, v) in envs {
            command.env(k, v);
        }
        let child = command.spawn().expect("spawn sidepool");
        let process = Process {
            child,
            proxy: SocketAddr::from(([127, 0, 0, 1], proxy_port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            log,
        };
        eventually("sidepool ready (/readyz 200)", async || {
            // Connect first: send_fresh fails the test on a port that is not open yet.
            let seen = match TcpStream::connect(process.admin).await {
                Err(e) => format!("admin port not open ({e})"),
                Ok(_) => match send_fresh(process.admin, get("/readyz")).await.0 {
                    StatusCode::OK => return Ok(()),
                    status => format!("/readyz answered {status}"),
                },
            };
            Err(Text(format!("{seen}; log:\n{}", process.log_text())))
        })
        .await;
        process
    }

    /// What it wrote to stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal by name (TERM, INT).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the exit code (bounded).
    pub async fn wait_exit(&mut self) -> Option<i32> {
        eventually("sidepool exited", async || {
            match self.child.try_wait().expect("try_wait") {
                Some(status) => Ok(status.code()),
                None => Err("still running"),
            }
        })
        .await
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
