//! Sending one request upstream: get a connection (reused, or opened), send, and apply the
//! re-send rule.
//!
//! **A request is sent a second time only when that is provably safe**, at most once, and
//! always on a fresh connection:
//! - hyper handed the request back unsent (`TrySendError::take_message`): not one byte left;
//! - a GET, HEAD or OPTIONS without a body, on a *reused* connection that failed before the
//!   response head arrived (the classic stale keep-alive race; these methods are idempotent).
//!
//! Everything else that fails after bytes may have left (a POST order above all) is answered
//! 502 and never re-sent.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::body::{ClientBodyError, RequestBody};
use super::{Upstream, UpstreamConn};
use crate::error::{ErrorKind, ProxyError};
use crate::metrics::{CloseReason, RetryReason};
use crate::pool::{Acquired, CheckoutError, Connecting, Pooled, Want};

/// How many dead idle connections a request may skip before it insists on a new one.
const STALE_SKIPS: usize = 4;

/// A response head from the upstream, with the connection it came on.
pub struct Sent {
    pub response: Response<Incoming>,
    pub pooled: Pooled<UpstreamConn>,
    pub queue_wait: Duration,
    pub retried: Option<RetryReason>,
    /// When the whole exchange must be over (`request_timeout` after the first send).
    pub deadline: Instant,
}

/// A failure, with how long the request had waited in the queue.
pub struct Failed {
    pub error: ProxyError,
    pub queue_wait: Duration,
}

/// Sends the request in `outgoing` to `upstream` under the re-send rule above, taking it out
/// when it goes on the wire (hyper hands back one that was not sent, and it goes back in).
///
/// Borrowed rather than owned: an async fn keeps a by-value argument in a slot of its own, so
/// the request would be stored twice in the request's future, which hyper copies for every
/// request.
pub async fn send(
    upstream: &Upstream,
    outgoing: &mut Option<Request<RequestBody>>,
) -> Result<Sent, Failed> {
    let limits = &upstream.limits;
    let mut fresh = false;
    let mut retried = None;
    let mut queue_wait = Duration::ZERO;
    let mut deadline = None;
    for attempt in 0..2 {
        let (mut pooled, waited) = acquire(upstream, fresh)
            .await
            .map_err(|error| Failed { error, queue_wait })?;
        queue_wait += waited;
        let now = Instant::now();
        let deadline = *deadline.get_or_insert(now + limits.request_timeout);
        let head_deadline = (now + limits.read_timeout).min(deadline);
        // A block of its own, so that the moved-out request takes no room in the future while
        // the response is awaited. The copy for a re-send is boxed: rarely used, kept small.
        let (replay, sending) = {
            // Empty only when the caller passed no request: nothing to send.
            let Some(req) = outgoing.take() else {
                break;
            };
            let replay =
                (pooled.is_reused() && is_replayable(&req)).then(|| Box::new(replay_of(&req)));
            (replay, pooled.conn().send.try_send_request(req))
        };
        match tokio::time::timeout_at(head_deadline, sending).await {
            Ok(Ok(response)) => {
                return Ok(Sent {
                    response,
                    pooled,
                    queue_wait,
                    retried,
                    deadline,
                });
            }
            Ok(Err(mut err)) => {
                pooled.set_close_reason(CloseReason::Error);
                let reused = pooled.is_reused();
                drop(pooled);
                if attempt == 0 {
                    if let Some(unsent) = err.take_message() {
                        upstream.pool.metrics().retried(RetryReason::Unsent);
                        tracing::debug!(upstream = %upstream.name, error = %err.error(), "request was not sent; sending it on a new connection");
                        *outgoing = Some(unsent);
                        retried = Some(RetryReason::Unsent);
                        fresh = true;
                        continue;
                    }
                    if let Some(again) = replay
                        && connection_broke(err.error())
                    {
                        upstream.pool.metrics().retried(RetryReason::Idempotent);
                        tracing::debug!(upstream = %upstream.name, error = %err.error(), "reused connection failed before a response; re-sending the idempotent request on a new connection");
                        *outgoing = Some(*again);
                        retried = Some(RetryReason::Idempotent);
                        fresh = true;
                        continue;
                    }
                }
                return Err(Failed {
                    error: sent_failure(upstream, err.error(), reused),
                    queue_wait,
                });
            }
            Err(_elapsed) => {
                pooled.set_close_reason(CloseReason::Timeout);
                drop(pooled);
                let error = if Instant::now() >= deadline {
                    ProxyError::new(
                        ErrorKind::RequestTimeout,
                        format!(
                            "no response within request_timeout ({:?}); the request may have reached the upstream and was not re-sent",
                            limits.request_timeout
                        ),
                    )
                } else {
                    ProxyError::new(
                        ErrorKind::ReadTimeout,
                        format!(
                            "no response within read_timeout ({:?}); the request may have reached the upstream and was not re-sent",
                            limits.read_timeout
                        ),
                    )
                };
                return Err(Failed {
                    error: error.with_upstream(&upstream.name),
                    queue_wait,
                });
            }
        }
    }
    Err(Failed {
        error: ProxyError::new(ErrorKind::UpstreamFailed, "the request could not be sent")
            .with_upstream(&upstream.name),
        queue_wait,
    })
}

/// A connection ready to carry a request, and how long the caller queued for it.
async fn acquire(
    upstream: &Upstream,
    fresh: bool,
) -> Result<(Pooled<UpstreamConn>, Duration), ProxyError> {
    let metrics = upstream.pool.metrics();
    let mut waited = Duration::ZERO;
    for skip in 0..=STALE_SKIPS {
        let fresh = fresh || skip == STALE_SKIPS;
        let (acquired, queued) = upstream
            .pool
            .checkout_timed(if fresh { Want::NewOnly } else { Want::Any })
            .await;
        waited += queued;
        let acquired = acquired.map_err(|err| match err {
            CheckoutError::QueueTimeout => {
                metrics.queue_waited(waited);
                ProxyError::new(
                ErrorKind::PoolTimeout,
                format!(
                    "no connection became free within queue_timeout ({:?}); all {} connections are busy (raise max_connections_per_host or max_connections, or send fewer requests at once)",
                    upstream.limits.queue_timeout, upstream.limits.max_connections_per_host
                ),
            )
            }
            CheckoutError::QueueFull => ProxyError::new(
                ErrorKind::QueueFull,
                format!(
                    "all {} connections are busy and {} requests are already queued (max_waiting); retry later, send fewer requests at once, or raise max_waiting",
                    upstream.limits.max_connections_per_host,
                    upstream.limits.max_waiting.unwrap_or_default()
                ),
            ),
            CheckoutError::Closed => ProxyError::new(ErrorKind::ShuttingDown, "sidepool is shutting down"),
        })
        .map_err(|e| e.with_upstream(&upstream.name))?;
        match acquired {
            Acquired::Connect(slot) => {
                metrics.queue_waited(waited);
                // Boxed: opening a connection (DNS, TCP, TLS, HTTP/1 setup) is a large future on
                // a rare path. Inline, it would make every request's future, which hyper copies
                // for each request, 2.2 KB instead of 984 bytes.
                return Ok((Box::pin(open(upstream, slot)).await?, waited));
            }
            Acquired::Reused(mut pooled) => {
                // hyper finishes reading the previous response in the connection task; wait for
                // it, and skip a connection that turns out closed (nothing was sent on it).
                // Usually it already is; only then is a timer worth arming.
                let ready = pooled.conn().send.is_ready()
                    || matches!(
                        tokio::time::timeout(
                            upstream.limits.connect_timeout,
                            pooled.conn().send.ready()
                        )
                        .await,
                        Ok(Ok(()))
                    );
                if ready {
                    metrics.queue_waited(waited);
                    metrics.connection_reused();
                    return Ok((pooled, waited));
                }
                pooled.set_close_reason(CloseReason::UpstreamClosed);
            }
        }
    }
    Err(
        ProxyError::new(ErrorKind::UpstreamFailed, "no usable connection")
            .with_upstream(&upstream.name),
    )
}

/// Opens a connection in a reserved slot. On failure the slot is dropped, which hands it on.
async fn open(
    upstream: &Upstream,
    slot: Connecting<UpstreamConn>,
) -> Result<Pooled<UpstreamConn>, ProxyError> {
    let connected = upstream
        .connector
        .connect(upstream.limits.connect_timeout)
        .await
        .map_err(|err| err.into_proxy_error(&upstream.name))?;
    let (send, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(connected.stream))
        .await
        .map_err(|err| {
            ProxyError::new(
                ErrorKind::UpstreamFailed,
                format!("HTTP/1.1 setup failed: {err}"),
            )
            .with_upstream(&upstream.name)
        })?;
    let id = slot.id();
    let pool = Arc::downgrade(slot.pool());
    let name = upstream.name.clone();
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(upstream = %name, error = %err, "upstream connection ended with an error");
        }
        if let Some(pool) = pool.upgrade() {
            pool.connection_lost(id);
        }
    });
    upstream.pool.metrics().connection_opened(connected.took);
    Ok(slot.established(UpstreamConn {
        send,
        peer: connected.peer,
        addresses: upstream.connector.addresses().cloned(),
        epoch: AtomicU64::new(connected.epoch),
    }))
}

/// GET, HEAD and OPTIONS without a body may be sent again.
fn is_replayable(req: &Request<RequestBody>) -> bool {
    matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        && matches!(req.body(), RequestBody::Empty)
}

fn replay_of(req: &Request<RequestBody>) -> Request<RequestBody> {
    let mut again = Request::new(RequestBody::Empty);
    *again.method_mut() = req.method().clone();
    *again.uri_mut() = req.uri().clone();
    *again.version_mut() = req.version();
    *again.headers_mut() = req.headers().clone();
    again
}

/// The connection broke (closed, reset) rather than the upstream answering badly or slowly.
fn connection_broke(err: &hyper::Error) -> bool {
    !(err.is_parse() || err.is_timeout() || err.is_user())
}

fn sent_failure(upstream: &Upstream, err: &hyper::Error, reused: bool) -> ProxyError {
    let client_body = std::iter::successors(std::error::Error::source(err), |e| e.source())
        .find_map(|e| e.downcast_ref::<ClientBodyError>());
    if let Some(body) = client_body {
        return ProxyError::new(
            ErrorKind::BadRequest,
            format!("{body}; the upstream got an incomplete request, which was not re-sent"),
        )
        .with_upstream(&upstream.name);
    }
    let mut detail = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    let conn = if reused { "a reused" } else { "a new" };
    ProxyError::new(
        ErrorKind::UpstreamFailed,
        format!("{conn} connection failed after the request was sent ({detail}); it may have reached the upstream, so it was not re-sent"),
    )
    .with_upstream(&upstream.name)
}
