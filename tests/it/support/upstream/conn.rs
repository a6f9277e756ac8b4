//! One connection's life: accept, the TLS handshake, idle closing, and ending it the way a
//! handler asked (RST, FIN, raw bytes first).

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::HandshakeKind;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::body::ReplyBody;
use super::handler::{handle, wait_release};
use super::reply::AfterRaw;
use super::server::{Shared, lock};

/// Bound on flushing TLS close_notify + FIN when the server closes a connection; a client
/// that stopped reading must not keep a connection task alive.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(1);

pub(super) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
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
    let acceptor = shared.tls.clone();
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
async fn handshake(shared: &Shared, acceptor: &TlsAcceptor, tcp: TcpStream) -> Option<Tls> {
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

/// A connection's byte stream once the TLS handshake is done.
type Tls = tokio_rustls::server::TlsStream<TcpStream>;

/// How a handler asked for its connection to end.
#[derive(Clone, Debug)]
pub(super) enum Kill {
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
pub(super) struct ConnState {
    pub(super) id: u64,
    /// Requests in progress on this connection, and when it last became idle.
    pub(super) activity: watch::Sender<Activity>,
    pub(super) kill: watch::Sender<Option<Kill>>,
}

#[derive(Clone, Copy)]
pub(super) struct Activity {
    pub(super) busy: usize,
    pub(super) idle_since: Instant,
}

enum End {
    Finished,
    Kill(Kill),
}

type ServiceFuture = Pin<Box<dyn Future<Output = Result<Response<ReplyBody>, Infallible>> + Send>>;

async fn serve_http(
    shared: Arc<Shared>,
    io: Tls,
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
            _ = poll_fn(|cx| conn.poll_without_shutdown(cx)) => break End::Finished,
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
        End::Kill(Kill::Close) | End::Finished => {
            // close_notify (TLS) and FIN; errors mean the peer is already gone.
            let _ = tokio::time::timeout(SHUTDOWN_LIMIT, io.shutdown()).await;
        }
    }
    drop(io);
}

/// SO_LINGER 0: the close that follows sends RST and discards unsent data.
fn abort_with_rst(io: &Tls, conn_id: u64) {
    if let Err(e) = io.get_ref().0.set_zero_linger() {
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
