//! The accept loop of the proxy listener, the cap on client connections, the settings of
//! each client connection, and the tunnels that `CONNECT` opens (read as plain HTTP/1.1
//! requests for one upstream).
//!
//! Draining is done here rather than with hyper-util's `GracefulShutdown`, which cannot watch
//! a connection that allows upgrades (CONNECT): every client connection and every tunnel
//! holds a receiver of one watch channel, is told through it to finish its in-flight request,
//! and the drain is over when the last receiver is gone.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use super::quick_ack::TunnelIo;
use super::{Proxy, Tunnel};
use crate::config::ListenConfig;
use crate::error::{ErrorKind, ProxyError};
use crate::metrics::Metrics;

/// Hard cap on a request head (start line + headers), enforced by hyper with a bare 431.
/// Requests under it but over [`super::MAX_HEADER_BYTES`] get sidepool's JSON 431.
const HARD_MAX_HEADER_BYTES: usize = 64 * 1024;

/// Refused clients being answered at once; beyond this a refused socket is closed unanswered,
/// so a flood of connections cannot turn refusals into unbounded work.
const MAX_REFUSING: usize = 64;
/// How long a refused client's request is read (and discarded) before its socket is closed:
/// closing with unread input would reset the connection and could destroy the answer.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// How often, at most, refusals are logged.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Serves client connections until `shutdown` resolves, then stops accepting and lets every
/// open connection finish its in-flight request (idle keep-alive connections are closed) for
/// up to `listen.drain_timeout`.
///
/// At most `listen.max_client_connections` client connections are served at once; a client
/// beyond that gets `503 too_many_clients` with `Connection: close` and no request of it is
/// forwarded, so the clients already connected keep their service.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    listen: &ListenConfig,
    shutdown: impl Future<Output = ()>,
) {
    let (header_read_timeout, drain_timeout) = (listen.header_read_timeout, listen.drain_timeout);
    let clients = Arc::new(ClientCap::new(
        listen.max_client_connections,
        proxy.metrics.clone(),
    ));
    let refusal = refusal_response(listen.max_client_connections);
    let mut refusals = RefusalLog::default();
    let (drain, _) = watch::channel(false);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Slow or silent clients cannot pin a connection forever.
        .header_read_timeout(header_read_timeout)
        .max_header_size(HARD_MAX_HEADER_BYTES)
        // Upstream responses pass through untouched: no Date added by sidepool.
        .auto_date_header(false)
        .keep_alive(true);
    let shared = Arc::new(Shared {
        builder,
        handshake_timeout: header_read_timeout,
    });
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let Some(slot) = ClientCap::admit(&clients) else {
                        proxy.metrics.unrouted().error(ErrorKind::TooManyClients);
                        refusals.refused(peer, listen.max_client_connections);
                        clients.refuse(tcp, refusal.clone());
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    let client = ClientConn {
                        shared: shared.clone(),
                        slot: Arc::new(slot),
                        drain: drain.subscribe(),
                        tunnel: None,
                    };
                    let draining = drain.subscribe();
                    let proxy = proxy.clone();
                    let connection = shared
                        .builder
                        .serve_connection(
                            TokioIo::new(tcp),
                            service_fn(move |req| proxy.clone().handle(req, &client)),
                        )
                        .with_upgrades();
                    tokio::spawn(async move {
                        let served = until_drained(connection, |c| c.graceful_shutdown(), draining);
                        if let Err(err) = served.await {
                            tracing::debug!(error = %err, "client connection ended with an error");
                        }
                    });
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off, keep serving the others.
                    tracing::warn!(error = %err, "accepting a client connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    tracing::info!(
        open_connections = clients.open.load(Ordering::Acquire),
        ?drain_timeout,
        "stopped accepting; draining"
    );
    // Every connection and tunnel sees this, and finishes its in-flight request.
    let _ = drain.send(true);
    if tokio::time::timeout(drain_timeout, drain.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain_timeout,
            "drain_timeout elapsed; closing the remaining client connections"
        );
    }
}

/// What every client connection of one listener shares.
pub(super) struct Shared {
    builder: http1::Builder,
    /// How long a client inside an intercepted tunnel has for its TLS handshake.
    handshake_timeout: Duration,
}

/// One client connection (or a tunnel inside one), as its requests see it.
pub(super) struct ClientConn {
    shared: Arc<Shared>,
    /// Its place under `listen.max_client_connections`, held until the connection and any
    /// tunnel it opened are both gone.
    slot: Arc<ClientSlot>,
    /// Told when the listener drains; a tunnel takes its own clone.
    drain: watch::Receiver<bool>,
    /// `Some` inside a CONNECT tunnel: every request goes to that upstream.
    pub(super) tunnel: Option<Tunnel>,
}

impl ClientConn {
    /// Serves the tunnel a `CONNECT` just opened, once hyper hands over the connection (after
    /// the 200 has been written). The requests inside are read with the same settings and
    /// handled by the same proxy as any other.
    pub(super) fn open_tunnel(
        &self,
        proxy: Arc<Proxy>,
        on: hyper::upgrade::OnUpgrade,
        tunnel: Tunnel,
    ) {
        let inner = ClientConn {
            shared: self.shared.clone(),
            slot: self.slot.clone(),
            drain: self.drain.clone(),
            tunnel: Some(tunnel),
        };
        let draining = self.drain.clone();
        tokio::spawn(async move {
            let upgraded = match on.await {
                Ok(upgraded) => upgraded,
                Err(err) => {
                    tracing::debug!(error = %err, "client left before its tunnel opened");
                    return;
                }
            };
            let shared = inner.shared.clone();
            let intercept = inner.tunnel.as_ref().and_then(|t| t.tls.clone());
            let config = proxy.interceptor.as_ref().map(|i| i.server_config());
            let service = service_fn(move |req| proxy.clone().handle(req, &inner));
            let served = match (intercept, config) {
                (Some(host), Some(config)) => {
                    let Some(tls) =
                        accept_intercepted(upgraded, config, &host, shared.handshake_timeout).await
                    else {
                        return;
                    };
                    let connection = shared.builder.serve_connection(TokioIo::new(tls), service);
                    until_drained(connection, |c| c.graceful_shutdown(), draining).await
                }
                _ => {
                    let connection = shared.builder.serve_connection(upgraded, service);
                    until_drained(connection, |c| c.graceful_shutdown(), draining).await
                }
            };
            if let Err(err) = served {
                tracing::debug!(error = %err, "tunnel ended with an error");
            }
        });
    }
}

/// Terminates the client's TLS inside an intercepted tunnel, within `timeout`, with a leaf for
/// `host`: a client that sends another name (SNI), none, garbage, or nothing in time gets no
/// tunnel.
async fn accept_intercepted(
    upgraded: hyper::upgrade::Upgraded,
    config: Arc<rustls::ServerConfig>,
    host: &str,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<TunnelIo>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let client = TunnelIo::new(upgraded);
    let tls = match tokio::time::timeout(timeout, acceptor.accept(client)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            tracing::debug!(error = %err, host, "intercepted tunnel: TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(
                ?timeout,
                host,
                "intercepted tunnel: no TLS handshake in time"
            );
            return None;
        }
    };
    if tls.get_ref().1.server_name() != Some(host) {
        tracing::debug!(
            host,
            "intercepted tunnel: the client named another host (SNI) than CONNECT did"
        );
        return None;
    }
    Some(tls)
}

/// Drives a client connection until it ends; when the listener drains, it is told to finish
/// its in-flight request and close (an idle keep-alive connection closes at once).
async fn until_drained<C>(
    connection: C,
    graceful_shutdown: impl FnOnce(Pin<&mut C>),
    mut drain: watch::Receiver<bool>,
) -> hyper::Result<()>
where
    C: Future<Output = hyper::Result<()>>,
{
    tokio::pin!(connection);
    tokio::select! {
        biased;
        result = connection.as_mut() => return result,
        // A closed channel also means "drain": the listener is gone.
        _ = drain.wait_for(|draining| *draining) => {}
    }
    graceful_shutdown(connection.as_mut());
    drop(drain);
    connection.await
}

/// Counts client connections against `listen.max_client_connections` and keeps the
/// `http_pool_client_connections` gauge equal to the count.
struct ClientCap {
    max: usize,
    open: AtomicUsize,
    refusing: AtomicUsize,
    metrics: Arc<Metrics>,
}

/// One admitted client connection; dropping it frees the place.
pub(super) struct ClientSlot(Arc<ClientCap>);

impl ClientCap {
    fn new(max: usize, metrics: Arc<Metrics>) -> ClientCap {
        metrics.set_client_connections_max(max);
        ClientCap {
            max,
            open: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
            metrics,
        }
    }

    fn admit(cap: &Arc<ClientCap>) -> Option<ClientSlot> {
        cap.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < cap.max).then_some(open + 1)
            })
            .ok()?;
        // Increments, not stores: concurrent changes cannot land out of order.
        cap.metrics.client_connections().increment(1.0);
        Some(ClientSlot(cap.clone()))
    }

    /// Answers a refused client with `refusal` and closes it, without parsing what it sent.
    fn refuse(self: &Arc<Self>, tcp: TcpStream, refusal: Arc<[u8]>) {
        let refusing = self.refusing.fetch_add(1, Ordering::AcqRel);
        if refusing >= MAX_REFUSING {
            self.refusing.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let cap = self.clone();
        tokio::spawn(async move {
            let _ = answer_and_close(tcp, &refusal).await;
            cap.refusing.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.metrics.client_connections().decrement(1.0);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn answer_and_close(mut tcp: TcpStream, response: &[u8]) -> std::io::Result<()> {
    tcp.write_all(response).await?;
    tcp.shutdown().await?;
    // Read what the client sends until it closes, so the socket is not reset under the answer.
    let deadline = Instant::now() + REFUSAL_LINGER;
    let mut sink = [0u8; 4096];
    let mut drained = 0usize;
    while drained < 64 * 1024 {
        match tokio::time::timeout_at(deadline, tcp.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
    Ok(())
}

/// The whole HTTP/1.1 response a refused client gets: sidepool's JSON error, then close.
fn refusal_response(max: usize) -> Arc<[u8]> {
    let error = ProxyError::new(
        ErrorKind::TooManyClients,
        format!(
            "sidepool already serves {max} client connections (listen.max_client_connections); \
             reuse connections (keep-alive) or raise the cap"
        ),
    );
    let response = error.to_response();
    let mut bytes = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status().as_u16(),
        response.status().canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in response.headers() {
        bytes.extend_from_slice(name.as_str().as_bytes());
        bytes.extend_from_slice(b": ");
        bytes.extend_from_slice(value.as_bytes());
        bytes.extend_from_slice(b"\r\n");
    }
    let body = response.body();
    bytes.extend_from_slice(
        format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    bytes.extend_from_slice(body);
    bytes.into()
}

/// Logs refusals at most once per [`REFUSAL_LOG_EVERY`], with how many there were.
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    since_last: u64,
}

impl RefusalLog {
    fn refused(&mut self, peer: std::net::SocketAddr, max: usize) {
        self.since_last += 1;
        let now = Instant::now();
        if self.last.is_none_or(|last| now >= last + REFUSAL_LOG_EVERY) {
            tracing::warn!(
                %peer,
                refused = self.since_last,
                max_client_connections = max,
                "client connections refused: the cap on client connections is reached"
            );
            self.last = Some(now);
            self.since_last = 0;
        }
    }
}
