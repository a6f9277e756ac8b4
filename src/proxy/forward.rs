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

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::body::RequestBody;
use super::rate_limit::Guarded;
use super::{About, Upstream, UpstreamConn};
use crate::connect::UpstreamStream;
use crate::error::{ErrorKind, ProxyError};
use crate::metrics::{CloseReason, RetryReason};
use crate::pool::{Acquired, CheckoutError, Connecting, Pooled, Want};
use crate::ratelimit::{Class, Reason};

/// How many dead idle connections a request may skip before it insists on a new one.
const STALE_SKIPS: usize = 4;

/// A response head from the upstream, with the connection it came on.
pub struct Sent {
    pub response: Response<Incoming>,
    pub pooled: Pooled<UpstreamConn>,
    pub queue_wait: Duration,
    /// DNS + TCP + TLS + HTTP/1.1 setup this request paid for (zero when it reused one).
    pub connect: Duration,
    /// From handing the request to the connection to the response head (the last attempt).
    pub upstream_time: Duration,
    pub retried: Option<RetryReason>,
    /// When the whole exchange must be over (`request_timeout` after the first send).
    pub deadline: Instant,
}

/// A failure, with how long the request had waited in the queue.
pub struct Failed {
    pub error: ProxyError,
    pub queue_wait: Duration,
    /// Connection setup paid before the failure.
    pub connect: Duration,
    /// Nothing was sent because a rate-limit cooldown or hold started while the request took
    /// its connection (which went back to the pool): how long it lasts, and which.
    pub blocked: Option<(Duration, Reason)>,
}

/// What the request path decided before sending: the class and deadline of the request, and
/// the rate-limit check to repeat once it holds a connection.
pub struct Gate<'a> {
    /// Its class in the pool's queue.
    pub class: Class,
    /// The rate-limit guard, asked again once the request holds a connection whether a
    /// cooldown or hold blocks it now.
    pub guard: Option<&'a Guarded>,
    /// The request's method, path and deadline (it is sent by then or not at all).
    pub about: &'a About,
}

impl Gate<'_> {
    /// Where the deadline came from, for messages.
    pub fn source(&self, queue_timeout: Duration) -> String {
        deadline_source(self.about.asked.deadline, queue_timeout)
    }
}

/// Where a deadline came from, for messages: the bot's header, else `queue_timeout`.
pub fn deadline_source(asked: Option<Duration>, queue_timeout: Duration) -> String {
    match asked {
        Some(d) => format!("x-sidepool-deadline-ms {}", d.as_millis()),
        None => format!("queue_timeout {queue_timeout:?}"),
    }
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
    gate: &Gate<'_>,
) -> Result<Sent, Failed> {
    let limits = &upstream.limits;
    let mut new_only = false;
    let mut retried = None;
    let mut queue_wait = Duration::ZERO;
    let mut connect = Duration::ZERO;
    let mut deadline = None;
    // Ends: the rule allows one re-send, and the second attempt is never `first`.
    loop {
        let got = acquire(upstream, new_only, gate, &mut connect).await;
        let (mut pooled, waited) = got.map_err(|error| Failed {
            error,
            queue_wait,
            connect,
            blocked: None,
        })?;
        queue_wait += waited;
        let now = Instant::now();
        let block = gate
            .guard
            .and_then(|guard| guard.blocked(&gate.about.method, gate.about.path.path()));
        if let Some(block) = block {
            // A cooldown started while this request waited: it must not go into it. The
            // connection carried nothing and goes back to the pool.
            pooled.release_at(now);
            return Err(Failed {
                error: ProxyError::new(ErrorKind::RateLimited, "rate limited")
                    .with_upstream(&upstream.name),
                queue_wait,
                connect,
                blocked: Some(block),
            });
        }
        if now > gate.about.deadline {
            pooled.release_at(now);
            return Err(Failed {
                error: ProxyError::new(
                    ErrorKind::PoolTimeout,
                    format!(
                        "the request's deadline ({}) passed while its connection was being opened; nothing was sent, since a late order is rejected anyway",
                        gate.source(limits.queue_timeout)
                    ),
                )
                .with_upstream(&upstream.name),
                queue_wait,
                connect,
                blocked: None,
            });
        }
        let deadline = *deadline.get_or_insert(now + limits.request_timeout);
        let head_deadline = (now + limits.read_timeout).min(deadline);
        // A block of its own, so that the moved-out request takes no room in the future while
        // the response is awaited. The copy for a re-send is boxed: rarely used, kept small.
        let (tried, replay, sending) = {
            // Empty only when the caller passed no request: nothing to send.
            let Some(req) = outgoing.take() else {
                return Err(Failed {
                    error: ProxyError::new(
                        ErrorKind::UpstreamFailed,
                        "the request could not be sent",
                    )
                    .with_upstream(&upstream.name),
                    queue_wait,
                    connect,
                    blocked: None,
                });
            };
            let tried = Tried {
                first: retried.is_none(),
                reused: pooled.is_reused(),
                replayable: is_replayable(&req),
            };
            let replay = tried.may_replay().then(|| Box::new(replay_of(&req)));
            (tried, replay, pooled.conn().send.try_send_request(req))
        };
        let outcome = match tokio::time::timeout_at(head_deadline, sending).await {
            Ok(Ok(response)) => Outcome::Answered(response),
            Ok(Err(mut err)) => {
                pooled.set_close_reason(CloseReason::Error);
                match err.take_message() {
                    Some(unsent) => {
                        *outgoing = Some(unsent);
                        Outcome::Unsent(SendError::Unsent(err.into_error()))
                    }
                    None => {
                        let err = err.into_error();
                        if connection_broke(&err) {
                            Outcome::Broke(SendError::Sent(err))
                        } else {
                            Outcome::Failed(SendError::Sent(err))
                        }
                    }
                }
            }
            Err(_elapsed) => {
                pooled.set_close_reason(CloseReason::Timeout);
                Outcome::Failed(SendError::Elapsed)
            }
        };
        let peer = pooled.conn().peer;
        match judge(outcome, tried) {
            Attempt::Done(response) => {
                return Ok(Sent {
                    response,
                    pooled,
                    queue_wait,
                    connect,
                    upstream_time: now.elapsed(),
                    retried,
                    deadline,
                });
            }
            Attempt::SendAgain(reason, cause) => {
                drop(pooled);
                upstream.pool.metrics().retried(reason);
                tracing::debug!(upstream = %upstream.name, %peer, reason = reason.as_str(), error = %cause, "the request is sent again on a new connection");
                if reason == RetryReason::Idempotent {
                    *outgoing = replay.map(|again| *again);
                }
                retried = Some(reason);
                new_only = true;
            }
            Attempt::Fail(cause) => {
                drop(pooled);
                return Err(Failed {
                    error: failure(upstream, cause, tried.reused, peer, deadline),
                    queue_wait,
                    connect,
                    blocked: None,
                });
            }
        }
    }
}

/// What the re-send rule needs to know about an attempt, besides how it ended.
#[derive(Debug, Clone, Copy)]
struct Tried {
    /// No re-send has happened yet (there is at most one).
    first: bool,
    /// It went out on a connection that had carried a request before.
    reused: bool,
    /// A GET, HEAD or OPTIONS without a body.
    replayable: bool,
}

impl Tried {
    /// True when a connection that breaks would let this request be sent again, so a copy of
    /// it must be kept.
    fn may_replay(self) -> bool {
        self.first && self.reused && self.replayable
    }
}

/// How one attempt ended, as the re-send rule sees it. `E` is the failure, kept for the
/// error message (or the debug line of a re-send).
#[derive(Debug)]
enum Outcome<R, E> {
    /// The response head arrived.
    Answered(R),
    /// hyper handed the request back: not one byte of it left the process.
    Unsent(E),
    /// The connection closed or reset before the response head arrived; the request may
    /// have reached the upstream.
    Broke(E),
    /// Anything else (a response that breaks HTTP, the client's body failing, a timeout):
    /// the request may have reached the upstream.
    Failed(E),
}

/// What to do after one attempt.
#[derive(Debug, PartialEq)]
enum Attempt<R, E> {
    /// Pass the response on.
    Done(R),
    /// Send the request again, on a new connection.
    SendAgain(RetryReason, E),
    /// Answer with an error made from the failure.
    Fail(E),
}

/// The re-send rule: an unsent request, or a bodiless GET, HEAD or OPTIONS whose reused
/// connection broke before the response head, is sent once more; nothing else is, and nothing
/// is sent a third time.
fn judge<R, E>(outcome: Outcome<R, E>, tried: Tried) -> Attempt<R, E> {
    match outcome {
        Outcome::Answered(response) => Attempt::Done(response),
        Outcome::Unsent(cause) if tried.first => Attempt::SendAgain(RetryReason::Unsent, cause),
        Outcome::Broke(cause) if tried.may_replay() => {
            Attempt::SendAgain(RetryReason::Idempotent, cause)
        }
        Outcome::Unsent(cause) | Outcome::Broke(cause) | Outcome::Failed(cause) => {
            Attempt::Fail(cause)
        }
    }
}

/// Why an attempt failed.
#[derive(Debug)]
enum SendError {
    /// hyper handed the request back unsent.
    Unsent(hyper::Error),
    /// The request, or part of it, may have been written.
    Sent(hyper::Error),
    /// No response head before `read_timeout` or the request deadline.
    Elapsed,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Unsent(err) | SendError::Sent(err) => write!(f, "{err}"),
            SendError::Elapsed => f.write_str("no response head in time"),
        }
    }
}

/// A connection ready to carry a request, and how long the caller queued for it. The time
/// spent opening a connection, when one is opened, is added to `connect`.
async fn acquire(
    upstream: &Upstream,
    fresh: bool,
    gate: &Gate<'_>,
    connect: &mut Duration,
) -> Result<(Pooled<UpstreamConn>, Duration), ProxyError> {
    let metrics = upstream.pool.metrics();
    let mut waited = Duration::ZERO;
    for skip in 0..=STALE_SKIPS {
        let fresh = fresh || skip == STALE_SKIPS;
        let want = if fresh { Want::NewOnly } else { Want::Any };
        let (acquired, queued) = upstream
            .pool
            .checkout_queued(want, gate.class, Some(gate.about.deadline))
            .await;
        waited += queued;
        let acquired = acquired.map_err(|err| match err {
            CheckoutError::QueueTimeout => {
                metrics.queue_waited(waited);
                ProxyError::new(
                ErrorKind::PoolTimeout,
                format!(
                    "no connection became free before the request's deadline ({}); all {} connections are busy (raise max_connections_per_host or max_connections, or send fewer requests at once)",
                    gate.source(upstream.limits.queue_timeout), upstream.limits.max_connections_per_host
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
                let began = Instant::now();
                let opened = Box::pin(open(upstream, slot)).await;
                *connect += began.elapsed();
                return Ok((opened?, waited));
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
    let conn = dial(upstream, slot.id()).await?;
    Ok(slot.established(conn))
}

/// Opens a connection to `upstream` (DNS, TCP, TLS, HTTP/1.1 setup) that will be connection
/// `id` of its pool, and starts its connection task, which tells the pool when it ends.
pub(super) async fn dial(upstream: &Upstream, id: u64) -> Result<UpstreamConn, ProxyError> {
    let connected = upstream
        .connector
        .connect(upstream.limits.connect_timeout)
        .await
        .map_err(|err| err.into_proxy_error(&upstream.name))?;
    // The port comes from the socket: the connector knows it, but only the address travels
    // with the connection. Failing here means the peer is already gone; the handshake says so.
    let peer = match &connected.stream {
        UpstreamStream::Plain(tcp) => tcp.peer_addr(),
        UpstreamStream::Tls(tls) => tls.get_ref().0.peer_addr(),
    }
    .unwrap_or(SocketAddr::new(connected.peer, 0));
    let (send, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(connected.stream))
        .await
        .map_err(|err| {
            ProxyError::new(
                ErrorKind::UpstreamFailed,
                format!("HTTP/1.1 setup failed with {peer}: {err}; nothing was sent"),
            )
            .with_cause(err)
            .with_upstream(&upstream.name)
        })?;
    let pool = Arc::downgrade(&upstream.pool);
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
    Ok(UpstreamConn {
        send,
        peer,
        addresses: upstream.connector.addresses().cloned(),
        epoch: AtomicU64::new(connected.epoch),
    })
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

mod failure;

use failure::failure;

#[cfg(test)]
mod tests;
