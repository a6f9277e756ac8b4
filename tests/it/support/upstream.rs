//! A fake exchange: an in-process HTTP/1.1 server on loopback (TLS by default, or plain)
//! that records every request, counts connections and requests, and misbehaves on demand.
//!
//! Tests synchronise through the `wait_*` methods, never through sleeps: every counter is
//! published through one `tokio::sync::watch` channel, so a waiter wakes on each change.
//! Do not use these waits under `tokio::time::pause()`: with paused time the runtime
//! auto-advances the 10 s guard while it waits for real socket I/O.
// Each integration test uses a different subset of this module.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::HandshakeKind;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::certs::{self, TestPki};

/// How long every `wait_*` method waits before failing the test.
const WAIT_LIMIT: Duration = Duration::from_secs(10);
/// Bound on flushing TLS close_notify + FIN when the server closes a connection; a client
/// that stopped reading must not keep a connection task alive.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(1);
/// The one chunk sent by [`Reply::StallBody`] before it stalls.
pub const STALL_BODY_CHUNK: &[u8] = b"{\"partial\":";

/// What a handler gets: one request, fully read.
#[derive(Clone, Debug)]
pub struct Received {
    /// Which connection it came on, numbered from 1 in accept order.
    pub conn_id: u64,
    /// Method, e.g. `"GET"`.
    pub method: String,
    /// Path and query, e.g. `"/api/v3/time?x=1"` (`"/"` if the target had none).
    pub path_and_query: String,
    /// The request target exactly as sent: differs from `path_and_query` only for
    /// absolute-form (`http://host/path`) or authority-form targets.
    pub target: String,
    /// HTTP version of the request line.
    pub version: Version,
    /// Headers with lowercase names, in order (repeated names are grouped together,
    /// which is how `http::HeaderMap` iterates).
    pub headers: Vec<(String, String)>,
    /// The complete request body.
    pub body: Vec<u8>,
}

impl Received {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as text (lossy UTF-8).
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A response body as the handler describes it.
#[derive(Clone, Debug)]
pub enum BodySpec {
    /// A fixed body, sent with `content-length`.
    Fixed(Bytes),
    /// `chunks` chunks of `chunk_size` bytes each, generated one at a time as the client reads
    /// (a 5 MB body is never held in memory). Chunk `k` is `chunk_size` copies of the byte
    /// `b'a' + k % 26`; [`stream_bytes`] builds the expected whole body. With
    /// `content_length` the total length is announced, otherwise chunked encoding is used.
    Stream {
        /// Number of chunks.
        chunks: usize,
        /// Bytes per chunk.
        chunk_size: usize,
        /// Send `content-length` instead of `transfer-encoding: chunked`.
        content_length: bool,
    },
}

/// A normal response, possibly delayed.
#[derive(Clone, Debug)]
pub struct ResponseSpec {
    /// Status code.
    pub status: StatusCode,
    /// Response headers. `content-length`/`transfer-encoding` are added by hyper from the body.
    pub headers: HeaderMap,
    /// The body.
    pub body: BodySpec,
    /// Wait this long before sending the response head.
    pub delay: Option<Duration>,
}

/// What the fake exchange does with a request (after reading and recording it completely).
#[derive(Clone, Debug)]
pub enum Reply {
    /// Answer normally.
    Ok(ResponseSpec),
    /// Never answer; keep the connection open. Answered with the default reply after
    /// [`TestUpstream::release_stalled`]. The client closing the connection ends it too.
    Stall,
    /// Send a 200 head (chunked) and [`STALL_BODY_CHUNK`], then stall until
    /// [`TestUpstream::release_stalled`], which ends the body cleanly.
    StallBody,
    /// Abort the TCP connection with RST (SO_LINGER 0, then close), writing no response.
    /// For TLS no close_notify is sent either. The client sees ECONNRESET.
    Reset,
    /// Close the connection without a response: TLS close_notify (if TLS), then FIN.
    /// The client sees a clean EOF before any response byte.
    Close,
    /// Take the connection over from hyper and write `bytes` exactly as given (inside TLS
    /// if TLS), then end it as `then` says. For responses hyper would never send: a head
    /// whose body is cut short, bytes that are not HTTP at all. [`Reply::raw`] builds it.
    Raw {
        /// Written and flushed as they are; nothing is added.
        bytes: Bytes,
        /// What happens to the connection afterwards.
        then: AfterRaw,
    },
}

/// How a connection ends after a [`Reply::Raw`] response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterRaw {
    /// RST at once (SO_LINGER 0), no TLS close_notify: like [`Reply::Reset`].
    Reset,
    /// TLS close_notify (if TLS), then FIN: the client reads the bytes, then a clean EOF.
    Close,
    /// RST once [`TestUpstream::release_stalled`] is called, so a test can first see the
    /// bytes arrive at the client: a reset right after a write may overtake the data still
    /// on its way and make the client lose it.
    ResetWhenReleased,
    /// Keep the connection open, reading and discarding whatever comes, until the client
    /// closes it: the client has to act on the bytes alone.
    Hold,
}

impl Reply {
    /// Writes `bytes` raw, then ends the connection as `then` says (see [`Reply::Raw`]).
    pub fn raw(bytes: impl Into<Bytes>, then: AfterRaw) -> Self {
        Reply::Raw {
            bytes: bytes.into(),
            then,
        }
    }

    /// `status` with `content-type: application/json` and `body`.
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Self::fixed(status, "application/json", Bytes::from(body.into()))
    }

    /// `status` with `content-type: text/plain` and `body`.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::fixed(status, "text/plain", Bytes::from(body.into()))
    }

    /// `status` with `content-type: application/octet-stream` and `body`.
    pub fn bytes(status: u16, body: impl Into<Bytes>) -> Self {
        Self::fixed(status, "application/octet-stream", body.into())
    }

    /// `status` with an empty body and no content type.
    pub fn status(status: u16) -> Self {
        Reply::Ok(ResponseSpec {
            status: status_code(status),
            headers: HeaderMap::new(),
            body: BodySpec::Fixed(Bytes::new()),
            delay: None,
        })
    }

    /// 200, `application/octet-stream`, `chunks` x `chunk_size` bytes generated while sending,
    /// with chunked transfer encoding. See [`BodySpec::Stream`] for the content.
    pub fn stream(chunks: usize, chunk_size: usize) -> Self {
        Self::streamed(chunks, chunk_size, false)
    }

    /// Like [`Reply::stream`], but announces the total with `content-length`.
    pub fn stream_sized(chunks: usize, chunk_size: usize) -> Self {
        Self::streamed(chunks, chunk_size, true)
    }

    /// What the default handler answers: for a request with a body, 200 echoing it byte for
    /// byte (with the request's content type, else `application/octet-stream`); otherwise
    /// 200 `{"ok":true,"path":"<path and query>"}` as JSON.
    pub fn default_for(r: &Received) -> Self {
        if r.body.is_empty() {
            let path = json_escape(&r.path_and_query);
            Self::json(200, format!("{{\"ok\":true,\"path\":\"{path}\"}}"))
        } else {
            let ct = r
                .header("content-type")
                .unwrap_or("application/octet-stream");
            Self::fixed(200, ct, Bytes::from(r.body.clone()))
        }
    }

    /// Adds a response header (appended, so it may repeat).
    ///
    /// # Panics
    /// If the name or value is invalid, or `self` is not `Reply::Ok`. Called inside a handler,
    /// the panic becomes a 500 and is counted in [`Stats::handler_panics`].
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::from_bytes(name.as_bytes())
            .unwrap_or_else(|e| panic!("invalid header name {name:?}: {e}"));
        let value = HeaderValue::from_str(value)
            .unwrap_or_else(|e| panic!("invalid header value {value:?}: {e}"));
        self.spec_mut("header").headers.append(name, value);
        self
    }

    /// Adds `connection: close`: hyper then closes the connection after this response.
    ///
    /// # Panics
    /// If `self` is not `Reply::Ok`.
    pub fn close(self) -> Self {
        self.header("connection", "close")
    }

    /// Waits `delay` before sending the response head.
    ///
    /// # Panics
    /// If `self` is not `Reply::Ok`.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.spec_mut("delay").delay = Some(delay);
        self
    }

    fn fixed(status: u16, content_type: &str, body: Bytes) -> Self {
        Reply::status(status)
            .header(CONTENT_TYPE.as_str(), content_type)
            .with_body(body)
    }

    fn streamed(chunks: usize, chunk_size: usize, content_length: bool) -> Self {
        let mut reply = Reply::status(200).header("content-type", "application/octet-stream");
        reply.spec_mut("stream").body = BodySpec::Stream {
            chunks,
            chunk_size,
            content_length,
        };
        reply
    }

    fn with_body(mut self, body: Bytes) -> Self {
        self.spec_mut("body").body = BodySpec::Fixed(body);
        self
    }

    fn spec_mut(&mut self, what: &str) -> &mut ResponseSpec {
        match self {
            Reply::Ok(spec) => spec,
            other => panic!("Reply::{what} needs Reply::Ok, got {other:?}"),
        }
    }
}

impl From<ResponseSpec> for Reply {
    fn from(spec: ResponseSpec) -> Self {
        Reply::Ok(spec)
    }
}

/// The whole body that [`Reply::stream`]`(chunks, chunk_size)` sends, for comparisons.
pub fn stream_bytes(chunks: usize, chunk_size: usize) -> Vec<u8> {
    (0..chunks)
        .flat_map(|k| std::iter::repeat_n(chunk_fill(k), chunk_size))
        .collect()
}

/// A snapshot of the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// TCP connections accepted.
    pub tcp_connections: usize,
    /// TLS handshakes completed (0 for a plain upstream).
    pub tls_handshakes: usize,
    /// Of those, handshakes that resumed an earlier session.
    pub tls_resumed: usize,
    /// TLS handshakes that failed (e.g. the client rejected the certificate).
    pub tls_failures: usize,
    /// TCP connections open now (from accept until the socket is closed).
    pub open_now: usize,
    /// Most connections open at once.
    pub max_open: usize,
    /// Requests being handled now: from the request head until the response body has been
    /// handed to the connection completely, or the request was abandoned.
    pub in_flight: usize,
    /// Most requests in flight at once.
    pub max_in_flight: usize,
    /// Requests received (recorded; bodies complete).
    pub requests: usize,
    /// Times the idle timer (`idle_close_after`) closed a connection, including connections
    /// that sent nothing during the TLS handshake for that long.
    pub idle_closes: usize,
    /// Handler panics (each answered with a 500).
    pub handler_panics: usize,
}

type Handler = Box<dyn Fn(&Received) -> Reply + Send + Sync + 'static>;

/// Configures a [`TestUpstream`]. Defaults: TLS with [`certs::trusted()`], no idle close,
/// [`Reply::default_for`] as the handler.
pub struct TestUpstreamBuilder {
    pki: Option<&'static TestPki>,
    idle_close_after: Option<Duration>,
    handler: Handler,
    bind: SocketAddr,
    hold_handshakes: bool,
}

impl TestUpstreamBuilder {
    /// Serve plain HTTP instead of TLS (a later `.pki()` turns TLS back on).
    pub fn plain(mut self) -> Self {
        self.pki = None;
        self
    }

    /// Serve TLS with this PKI's certificate, e.g. [`certs::untrusted()`].
    pub fn pki(mut self, pki: &'static TestPki) -> Self {
        self.pki = Some(pki);
        self
    }

    /// Close a kept-alive connection after it has been idle this long (no request in flight,
    /// no response being sent), like an exchange's keep-alive timeout. The close is graceful
    /// (TLS close_notify, then FIN). A request whose head hyper has already started to parse
    /// when the timer fires is still answered, with `connection: close`. The same limit
    /// bounds the TLS handshake, so a client that connects and sends nothing is closed too.
    pub fn idle_close_after(mut self, idle: Duration) -> Self {
        self.idle_close_after = Some(idle);
        self
    }

    /// How to answer each request. Runs synchronously on the connection's task after the
    /// request body has been read and recorded.
    pub fn handler(mut self, handler: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> Self {
        self.handler = Box::new(handler);
        self
    }

    /// Listen on `addr` instead of `127.0.0.1:0`, e.g. another loopback address on the port
    /// of a first upstream, so that one host name can point at either. See
    /// [`TestUpstreamBuilder::try_start`] for a port that may be taken.
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Accept TCP connections but hold each one before the TLS handshake (the client's
    /// hello is never answered) until [`TestUpstream::resume_handshakes`]; like an exchange
    /// whose TLS terminator is overloaded. Held connections count in `tcp_connections` and
    /// `open_now`. Has no effect on a plain upstream.
    pub fn hold_handshakes(mut self) -> Self {
        self.hold_handshakes = true;
        self
    }

    /// Binds (`127.0.0.1:0` unless [`TestUpstreamBuilder::bind`] said otherwise) and starts
    /// accepting.
    ///
    /// # Panics
    /// If the listener cannot be bound.
    pub async fn start(self) -> TestUpstream {
        let bind = self.bind;
        self.try_start()
            .await
            .unwrap_or_else(|e| panic!("bind test upstream on {bind}: {e}"))
    }

    /// Like [`TestUpstreamBuilder::start`], but returns the bind error (e.g. the port is
    /// taken on that address), so a caller can pick another port and try again.
    pub async fn try_start(self) -> std::io::Result<TestUpstream> {
        let listener = TcpListener::bind(self.bind).await?;
        let addr = listener.local_addr().expect("test upstream local_addr");
        let shared = Arc::new(Shared {
            handler: self.handler,
            tls: self
                .pki
                .map(|pki| TlsAcceptor::from(certs::server_tls_config(pki))),
            idle_close_after: self.idle_close_after,
            next_conn_id: AtomicU64::new(1),
            stats: watch::Sender::new(Stats::default()),
            received: Mutex::new(Vec::new()),
            release: watch::Sender::new(0),
            conns: Mutex::new(Some(JoinSet::new())),
            restarts: watch::Sender::new(0),
            handshakes_held: watch::Sender::new(self.hold_handshakes),
        });
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(TestUpstream {
            addr,
            shared,
            accept_task,
        })
    }
}

/// A running fake exchange. Dropping it stops accepting and aborts every connection.
pub struct TestUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl TestUpstream {
    /// Starts configuring one; finish with [`TestUpstreamBuilder::start`].
    pub fn builder() -> TestUpstreamBuilder {
        TestUpstreamBuilder {
            pki: Some(certs::trusted()),
            idle_close_after: None,
            handler: Box::new(Reply::default_for),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            hold_handshakes: false,
        }
    }

    /// A TLS upstream with the trusted PKI and the default handler.
    pub async fn start() -> TestUpstream {
        Self::builder().start().await
    }

    /// The bound address (`127.0.0.1` unless [`TestUpstreamBuilder::bind`] chose another).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        *self.shared.stats.borrow()
    }

    /// Every request received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared.received).clone()
    }

    /// Answers every request stalled so far ([`Reply::Stall`] gets the default reply,
    /// [`Reply::StallBody`] ends its body). Covers every request whose head had arrived when
    /// this was called, even if its handler had not run yet; later stalls stall again.
    pub fn release_stalled(&self) {
        self.shared
            .release
            .send_modify(|generation| *generation += 1);
    }

    /// Like a crashed and restarted exchange: every open connection is aborted at once, with
    /// RST (SO_LINGER 0, no TLS close_notify) for connections past the TLS handshake, and
    /// dropped for those still in it. The listener stays on the same port and keeps
    /// accepting. Waits until all of them are closed, so call it while no request is being
    /// sent (a connection accepted meanwhile would be waited for too).
    pub async fn restart(&self) -> Stats {
        self.shared
            .restarts
            .send_modify(|generation| *generation += 1);
        self.wait_open(0).await
    }

    /// Ends [`TestUpstreamBuilder::hold_handshakes`]: held connections and all later ones
    /// go on with the TLS handshake.
    pub fn resume_handshakes(&self) {
        self.shared.handshakes_held.send_replace(false);
    }

    /// Waits until at least `n` requests have been received (and recorded).
    pub async fn wait_requests(&self, n: usize) -> Stats {
        self.wait_until(&format!("requests >= {n}"), |s| s.requests >= n)
            .await
    }

    /// Waits until exactly `n` connections are open. Meant for settled states: a value
    /// that holds only briefly may be skipped.
    pub async fn wait_open(&self, n: usize) -> Stats {
        self.wait_until(&format!("open_now == {n}"), |s| s.open_now == n)
            .await
    }

    /// Waits until exactly `n` requests are in flight. Meant for settled states (e.g. n
    /// stalled requests, or 0 when all are answered): a value that holds only briefly may be
    /// skipped.
    pub async fn wait_in_flight(&self, n: usize) -> Stats {
        self.wait_until(&format!("in_flight == {n}"), |s| s.in_flight == n)
            .await
    }

    /// Waits until at least `n` TCP connections have been accepted.
    pub async fn wait_tcp_connections(&self, n: usize) -> Stats {
        self.wait_until(&format!("tcp_connections >= {n}"), |s| {
            s.tcp_connections >= n
        })
        .await
    }

    /// Waits until `cond` holds for the counters, and returns the snapshot that satisfied it.
    ///
    /// # Panics
    /// After 10 s, naming `what` and showing the last counters.
    pub async fn wait_until(&self, what: &str, mut cond: impl FnMut(&Stats) -> bool) -> Stats {
        let mut rx = self.shared.stats.subscribe();
        let waited = tokio::time::timeout(WAIT_LIMIT, async {
            // The sender lives in `self.shared`, so `wait_for` cannot fail while we run.
            rx.wait_for(|s| cond(s)).await.map(|s| *s)
        })
        .await;
        match waited {
            Ok(Ok(stats)) => stats,
            Ok(Err(_)) => unreachable!("stats sender dropped while TestUpstream is alive"),
            Err(_) => panic!(
                "TestUpstream on {}: timed out after {WAIT_LIMIT:?} waiting for {what}; stats now: {:?}",
                self.addr,
                self.stats()
            ),
        }
    }
}

impl TestUpstream {
    /// Stops like a crash (as dropping does), waits until every connection task has ended,
    /// and returns every request received. Nothing can be received after the snapshot, so a
    /// response that got out is always in it.
    pub async fn stop(self) -> Vec<Received> {
        self.accept_task.abort();
        let conns = lock(&self.shared.conns).take();
        if let Some(mut conns) = conns {
            conns.abort_all();
            while conns.join_next().await.is_some() {}
        }
        lock(&self.shared.received).clone()
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.accept_task.abort();
        // Taking the set under the lock also stops a concurrently running accept loop from
        // spawning into it afterwards; dropping a JoinSet aborts all of its tasks.
        let conns = lock(&self.shared.conns).take();
        if let Some(mut conns) = conns {
            conns.abort_all();
        }
    }
}

struct Shared {
    handler: Handler,
    tls: Option<TlsAcceptor>,
    idle_close_after: Option<Duration>,
    next_conn_id: AtomicU64,
    stats: watch::Sender<Stats>,
    received: Mutex<Vec<Received>>,
    /// Bumped by `release_stalled`; a stalled request waits for a value other than the one
    /// it saw when its head arrived.
    release: watch::Sender<u64>,
    /// Connection tasks; `None` once the upstream is dropped.
    conns: Mutex<Option<JoinSet<()>>>,
    /// Bumped by `restart`; every connection open at that moment is aborted.
    restarts: watch::Sender<u64>,
    /// True while new connections wait before the TLS handshake.
    handshakes_held: watch::Sender<bool>,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut Stats)) {
        self.stats.send_modify(f);
    }
}

/// Locks ignoring poisoning: the data stays usable, and server tasks must not panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _peer)) => tcp,
            Err(e) => {
                // e.g. EMFILE: back off instead of spinning; this is not synchronisation.
                eprintln!("TestUpstream: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Small responses and chunks should not wait for delayed ACKs.
        let _ = tcp.set_nodelay(true);
        let open = OpenGuard::new(&shared);
        let conn_id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let mut conns = lock(&shared.conns);
        let Some(set) = conns.as_mut() else {
            return; // dropped: the socket closes here
        };
        // Reap finished tasks so the set does not grow with the test's length.
        while set.try_join_next().is_some() {}
        // Subscribed here, not in the task, so a restart right after the accept reaches it.
        let restarts = shared.restarts.subscribe();
        set.spawn(serve_tcp(Arc::clone(&shared), tcp, conn_id, open, restarts));
    }
}

/// Counts a connection as open until dropped. Declared before the socket in the connection
/// task, so it is dropped after the socket is closed.
struct OpenGuard(Arc<Shared>);

impl OpenGuard {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.update(|s| {
            s.tcp_connections += 1;
            s.open_now += 1;
            s.max_open = s.max_open.max(s.open_now);
        });
        OpenGuard(Arc::clone(shared))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.update(|s| s.open_now -= 1);
    }
}

async fn serve_tcp(
    shared: Arc<Shared>,
    tcp: TcpStream,
    conn_id: u64,
    open: OpenGuard,
    mut restarts: watch::Receiver<u64>,
) {
    let _open = open;
    let Some(acceptor) = shared.tls.clone() else {
        return serve_http(shared, tcp, conn_id, restarts).await;
    };
    let mut held = shared.handshakes_held.subscribe();
    let tls = tokio::select! {
        tls = async {
            // The sender lives in `shared`, so this cannot fail.
            let _ = held.wait_for(|held| !held).await;
            handshake(&shared, &acceptor, tcp).await
        } => tls,
        // Dropping the handshake closes the socket without RST; the client sees its
        // handshake fail either way.
        _ = restarts.changed() => None,
    };
    if let Some(tls) = tls {
        let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
        shared.update(|s| {
            s.tls_handshakes += 1;
            s.tls_resumed += usize::from(resumed);
        });
        serve_http(shared, tls, conn_id, restarts).await;
    }
}

/// The TLS handshake, limited by `idle_close_after` if set (a client that connects and sends
/// nothing is idle too). Failures are counted, not reported: tests cause them on purpose
/// (the client rejects the certificate, or hangs up).
async fn handshake(
    shared: &Shared,
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let accept = acceptor.accept(tcp);
    let result = match shared.idle_close_after {
        None => accept.await,
        Some(idle) => match tokio::time::timeout(idle, accept).await {
            Ok(result) => result,
            Err(_) => {
                shared.update(|s| s.idle_closes += 1);
                return None;
            }
        },
    };
    match result {
        Ok(tls) => Some(tls),
        Err(_) => {
            shared.update(|s| s.tls_failures += 1);
            None
        }
    }
}

/// A connection's byte stream, plain or TLS, with access to its socket (to set SO_LINGER).
trait ConnIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    fn tcp(&self) -> &TcpStream;
}

impl ConnIo for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl ConnIo for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// How a handler asked for its connection to end.
#[derive(Clone, Debug)]
enum Kill {
    Reset,
    Close,
    /// [`Reply::Raw`]; `release_seen` is the release generation when the request arrived.
    Raw {
        bytes: Bytes,
        then: AfterRaw,
        release_seen: u64,
    },
}

/// Per-connection state shared between the connection task and its requests.
struct ConnState {
    id: u64,
    /// Requests in progress on this connection, and when it last became idle.
    activity: watch::Sender<Activity>,
    kill: watch::Sender<Option<Kill>>,
}

#[derive(Clone, Copy)]
struct Activity {
    busy: usize,
    idle_since: Instant,
}

enum End {
    Finished(hyper::Result<()>),
    Kill(Kill),
}

type ServiceFuture = Pin<Box<dyn Future<Output = Result<Response<ReplyBody>, Infallible>> + Send>>;

async fn serve_http<I: ConnIo>(
    shared: Arc<Shared>,
    io: I,
    conn_id: u64,
    mut restarts: watch::Receiver<u64>,
) {
    let conn_state = Arc::new(ConnState {
        id: conn_id,
        activity: watch::Sender::new(Activity {
            busy: 0,
            idle_since: Instant::now(),
        }),
        kill: watch::Sender::new(None),
    });
    let service = {
        let shared = Arc::clone(&shared);
        let conn_state = Arc::clone(&conn_state);
        service_fn(move |req| -> ServiceFuture {
            Box::pin(handle(Arc::clone(&shared), Arc::clone(&conn_state), req))
        })
    };
    // No timer is set, so hyper's own header_read_timeout is off: idle closing is ours.
    let mut conn = http1::Builder::new().serve_connection(TokioIo::new(io), service);
    let mut kill_rx = conn_state.kill.subscribe();
    let mut idle_fired = false;

    // poll_without_shutdown leaves the socket to us, so Reset can abort it; the loop runs at
    // most twice (the idle branch fires once, then is disabled).
    let end = loop {
        tokio::select! {
            res = poll_fn(|cx| conn.poll_without_shutdown(cx)) => break End::Finished(res),
            kill = kill_rx.wait_for(Option::is_some) => {
                // The sender lives in conn_state; the value is Some by the predicate.
                break End::Kill(kill.ok().and_then(|k| k.clone()).unwrap_or(Kill::Close));
            }
            _ = restarts.changed() => break End::Kill(Kill::Reset),
            () = idle_expired(&conn_state, shared.idle_close_after), if !idle_fired => {
                idle_fired = true;
                shared.update(|s| s.idle_closes += 1);
                // Closes at once if hyper is between requests; a request whose head it has
                // started reading is still answered (with connection: close).
                Pin::new(&mut conn).graceful_shutdown();
            }
        }
    };

    let mut io = conn.into_parts().io.into_inner();
    match end {
        End::Kill(Kill::Reset) => abort_with_rst(&io, conn_id),
        End::Kill(Kill::Raw {
            bytes,
            then,
            release_seen,
        }) => {
            // A failed write means the client is gone; the test sees that on its side.
            let _ = io.write_all(&bytes).await;
            let _ = io.flush().await;
            match then {
                AfterRaw::Reset => abort_with_rst(&io, conn_id),
                AfterRaw::ResetWhenReleased => {
                    wait_release(&shared, release_seen).await;
                    abort_with_rst(&io, conn_id);
                }
                AfterRaw::Close => {
                    let _ = tokio::time::timeout(SHUTDOWN_LIMIT, io.shutdown()).await;
                }
                AfterRaw::Hold => {
                    // Until the client closes (EOF) or resets (error).
                    let _ = tokio::io::copy(&mut io, &mut tokio::io::sink()).await;
                }
            }
        }
        End::Kill(Kill::Close) | End::Finished(_) => {
            // close_notify (TLS) and FIN; errors mean the peer is already gone.
            let _ = tokio::time::timeout(SHUTDOWN_LIMIT, io.shutdown()).await;
        }
    }
    drop(io);
}

/// SO_LINGER 0: the close that follows sends RST and discards unsent data.
fn abort_with_rst<I: ConnIo>(io: &I, conn_id: u64) {
    if let Err(e) = io.tcp().set_zero_linger() {
        eprintln!("TestUpstream: set_zero_linger failed on conn {conn_id}: {e}");
    }
}

/// Resolves once the connection has had no request in progress for `idle` (never if None).
async fn idle_expired(conn: &ConnState, idle: Option<Duration>) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    let mut rx = conn.activity.subscribe();
    // Each pass restarts after some activity; passes are bounded by the number of requests.
    loop {
        // Copy out of the watch guard at once: it must not live across an await.
        let since = match rx.wait_for(|a| a.busy == 0).await {
            Ok(a) => Some(a.idle_since),
            Err(_) => None,
        };
        let Some(since) = since else {
            return std::future::pending().await;
        };
        tokio::select! {
            () = tokio::time::sleep_until(since + idle) => return,
            _ = rx.changed() => {}
        }
    }
}

/// Marks one request in progress (connection busy, `in_flight`) until dropped. It lives in
/// the service future, then in the response body, so it ends when the body is finished or
/// the request is abandoned.
struct RequestGuard {
    shared: Arc<Shared>,
    conn: Arc<ConnState>,
}

impl RequestGuard {
    fn new(shared: &Arc<Shared>, conn: &Arc<ConnState>) -> Self {
        conn.activity.send_modify(|a| a.busy += 1);
        shared.update(|s| {
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
        });
        RequestGuard {
            shared: Arc::clone(shared),
            conn: Arc::clone(conn),
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.conn.activity.send_modify(|a| {
            a.busy -= 1;
            a.idle_since = Instant::now();
        });
        self.shared.update(|s| s.in_flight -= 1);
    }
}

async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnState>,
    req: Request<Incoming>,
) -> Result<Response<ReplyBody>, Infallible> {
    // Read before counting the request in flight, so release_stalled() called after a test
    // saw it in flight covers it.
    let release_generation = *shared.release.borrow();
    let guard = RequestGuard::new(&shared, &conn);
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        // The client went away mid-body; hyper is closing the connection anyway.
        Err(_) => return Ok(plain_response(StatusCode::BAD_REQUEST, guard)),
    };
    let received = Received {
        conn_id: conn.id,
        method: parts.method.to_string(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
        target: parts.uri.to_string(),
        version: parts.version,
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    };
    // Recorded before it is counted, so a test woken by wait_requests(n) sees n entries.
    lock(&shared.received).push(received.clone());
    shared.update(|s| s.requests += 1);

    let reply = match std::panic::catch_unwind(AssertUnwindSafe(|| (shared.handler)(&received))) {
        Ok(reply) => reply,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".to_owned());
            eprintln!("TestUpstream: handler panicked: {msg}");
            shared.update(|s| s.handler_panics += 1);
            Reply::text(500, format!("test upstream handler panicked: {msg}"))
        }
    };

    let spec = match reply {
        Reply::Ok(spec) => spec,
        Reply::Stall => {
            wait_release(&shared, release_generation).await;
            match Reply::default_for(&received) {
                Reply::Ok(spec) => spec,
                _ => unreachable!("default_for always answers Reply::Ok"),
            }
        }
        Reply::StallBody => {
            let release = Box::pin(async move {
                wait_release(&shared, release_generation).await;
            });
            let body = ReplyBody {
                state: BodyState::StallAfter {
                    first: Some(Bytes::from_static(STALL_BODY_CHUNK)),
                    release,
                },
                _guard: guard,
            };
            return Ok(Response::builder()
                .header(CONTENT_TYPE, "application/json")
                .body(body)
                .expect("static response parts are valid"));
        }
        Reply::Reset => return kill_and_wait(&conn, Kill::Reset).await,
        Reply::Close => return kill_and_wait(&conn, Kill::Close).await,
        Reply::Raw { bytes, then } => {
            let kill = Kill::Raw {
                bytes,
                then,
                release_seen: release_generation,
            };
            return kill_and_wait(&conn, kill).await;
        }
    };

    if let Some(delay) = spec.delay {
        tokio::time::sleep(delay).await;
    }
    let state = match spec.body {
        BodySpec::Fixed(bytes) => BodyState::Fixed(Some(bytes)),
        BodySpec::Stream {
            chunks,
            chunk_size,
            content_length,
        } => BodyState::Stream {
            next: 0,
            chunks,
            chunk_size,
            content_length,
        },
    };
    let mut response = Response::new(ReplyBody {
        state,
        _guard: guard,
    });
    *response.status_mut() = spec.status;
    *response.headers_mut() = spec.headers;
    Ok(response)
}

/// Asks the connection task to end the connection; it drops this request's future with it.
async fn kill_and_wait(conn: &ConnState, kill: Kill) -> Result<Response<ReplyBody>, Infallible> {
    conn.kill.send_replace(Some(kill));
    std::future::pending().await
}

async fn wait_release(shared: &Shared, seen: u64) {
    let mut rx = shared.release.subscribe();
    // The sender lives in `shared`, so this cannot fail; stall forever if it somehow does.
    if rx.wait_for(|g| *g != seen).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn plain_response(status: StatusCode, guard: RequestGuard) -> Response<ReplyBody> {
    let mut response = Response::new(ReplyBody {
        state: BodyState::Fixed(None),
        _guard: guard,
    });
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Response body; holds the request's [`RequestGuard`] until hyper drops it (done or aborted).
struct ReplyBody {
    state: BodyState,
    _guard: RequestGuard,
}

enum BodyState {
    Fixed(Option<Bytes>),
    Stream {
        next: usize,
        chunks: usize,
        chunk_size: usize,
        content_length: bool,
    },
    StallAfter {
        first: Option<Bytes>,
        release: Pin<Box<dyn Future<Output = ()> + Send>>,
    },
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        match &mut this.state {
            BodyState::Fixed(bytes) => Poll::Ready(
                bytes
                    .take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            BodyState::Stream {
                next,
                chunks,
                chunk_size,
                ..
            } => {
                if *next >= *chunks || *chunk_size == 0 {
                    return Poll::Ready(None);
                }
                let chunk = Bytes::from(vec![chunk_fill(*next); *chunk_size]);
                *next += 1;
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            BodyState::StallAfter { first, release } => {
                if let Some(chunk) = first.take() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                release.as_mut().poll(cx).map(|()| None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            BodyState::Fixed(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
            BodyState::Stream {
                next,
                chunks,
                chunk_size,
                ..
            } => *next >= *chunks || *chunk_size == 0,
            BodyState::StallAfter { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            BodyState::Fixed(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            BodyState::Stream {
                next,
                chunks,
                chunk_size,
                content_length: true,
            } => SizeHint::with_exact((chunks.saturating_sub(*next) * chunk_size) as u64),
            BodyState::Stream { .. } | BodyState::StallAfter { .. } => SizeHint::default(),
        }
    }
}

fn chunk_fill(k: usize) -> u8 {
    b'a' + (k % 26) as u8
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or_else(|_| panic!("invalid status code {status}"))
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}
