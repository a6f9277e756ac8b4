//! [`TestUpstream`]: the builder, the running server's handle, its counters and its waits.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::conn::accept_loop;
use super::reply::{Received, Reply};
use crate::support::certs::{self, TestPki};

/// How long every `wait_*` method waits before failing the test.
const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// A snapshot of the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// TCP connections accepted.
    pub tcp_connections: usize,
    /// TLS handshakes completed.
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
}

type Handler = Box<dyn Fn(&Received) -> Reply + Send + Sync + 'static>;

/// Configures a [`TestUpstream`]. Defaults: TLS with [`certs::trusted()`], no idle close,
/// [`Reply::default_for`] as the handler.
pub struct TestUpstreamBuilder {
    pki: &'static TestPki,
    idle_close_after: Option<Duration>,
    handler: Handler,
    bind: SocketAddr,
    hold_handshakes: bool,
}

impl TestUpstreamBuilder {
    /// Serve TLS with this PKI's certificate, e.g. [`certs::untrusted()`].
    pub fn pki(mut self, pki: &'static TestPki) -> Self {
        self.pki = pki;
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
    /// `open_now`.
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
            tls: TlsAcceptor::from(certs::server_tls_config(self.pki)),
            idle_close_after: self.idle_close_after,
            next_conn_id: AtomicU64::new(1),
            stats: watch::Sender::new(Stats::default()),
            received: Mutex::new(Vec::new()),
            release: watch::Sender::new(0),
            conns: Mutex::new(Some(JoinSet::new())),
            restarts: watch::Sender::new(0),
            handshakes_held: watch::Sender::new(self.hold_handshakes),
            panic: Mutex::new(None),
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
            pki: certs::trusted(),
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

    /// One that stalls `/hold...` until [`TestUpstream::release_stalled`] and answers
    /// everything else at once (with the default handler).
    pub async fn stalling() -> TestUpstream {
        Self::builder()
            .handler(|r| {
                if r.path_and_query.starts_with("/hold") {
                    Reply::Stall
                } else {
                    Reply::default_for(r)
                }
            })
            .start()
            .await
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
    /// After 10 s, naming `what` and showing the last counters; at once if a handler
    /// panicked, with the handler's message.
    pub async fn wait_until(&self, what: &str, mut cond: impl FnMut(&Stats) -> bool) -> Stats {
        let mut rx = self.shared.stats.subscribe();
        let shared = &self.shared;
        let waited = tokio::time::timeout(WAIT_LIMIT, async {
            // The sender lives in `self.shared`, so `wait_for` cannot fail while we run.
            // A handler panic publishes a change too, so it ends the wait at once.
            rx.wait_for(|s| shared.panicked() || cond(s))
                .await
                .map(|s| *s)
        })
        .await;
        self.raise_handler_panic();
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
        self.raise_handler_panic();
        lock(&self.shared.received).clone()
    }

    /// Fails the test with the first handler panic, if there was one (once).
    fn raise_handler_panic(&self) {
        let first = lock(&self.shared.panic).take();
        if let Some(message) = first {
            panic!(
                "TestUpstream on {}: the handler panicked: {message}",
                self.addr
            );
        }
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
        // A test that is already failing keeps its own message (a second panic would abort).
        if !std::thread::panicking() {
            self.raise_handler_panic();
        }
    }
}

pub(super) struct Shared {
    pub(super) handler: Handler,
    pub(super) tls: TlsAcceptor,
    pub(super) idle_close_after: Option<Duration>,
    pub(super) next_conn_id: AtomicU64,
    pub(super) stats: watch::Sender<Stats>,
    pub(super) received: Mutex<Vec<Received>>,
    /// Bumped by `release_stalled`; a stalled request waits for a value other than the one
    /// it saw when its head arrived.
    pub(super) release: watch::Sender<u64>,
    /// Connection tasks; `None` once the upstream is dropped.
    pub(super) conns: Mutex<Option<JoinSet<()>>>,
    /// Bumped by `restart`; every connection open at that moment is aborted.
    pub(super) restarts: watch::Sender<u64>,
    /// True while new connections wait before the TLS handshake.
    pub(super) handshakes_held: watch::Sender<bool>,
    /// The first handler panic's message, until [`TestUpstream`] raises it in the test.
    pub(super) panic: Mutex<Option<String>>,
}

impl Shared {
    pub(super) fn update(&self, f: impl FnOnce(&mut Stats)) {
        self.stats.send_modify(f);
    }

    /// Keeps the first panic for the test and wakes every `wait_*`, which raises it.
    pub(super) fn handler_panicked(&self, message: String) {
        lock(&self.panic).get_or_insert(message);
        self.stats.send_modify(|_| {});
    }

    fn panicked(&self) -> bool {
        lock(&self.panic).is_some()
    }
}

/// Locks ignoring poisoning: the data stays usable, and server tasks must not panic.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
