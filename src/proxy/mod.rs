//! The proxy listener: plain HTTP/1.1 from local clients, forwarded over the pools.
//!
//! Owns addressing (forward-proxy absolute-form and route mode), header rules, the re-send
//! rule and the per-request log line. Asks the pool for connections and gets guards back; never
//! touches pool state or gauges itself.
//!
//! Modules: `route` (which upstream), `headers` (hop-by-hop, limits, secrets), `forward`
//! (checkout, connect, send, re-send rule), `body` (streaming bodies with timeouts), `drain`
//! (the rest of a response a client left, read so the connection is kept), `log`
//! (one line per request), `listener` (accept loop, client cap and connection settings),
//! `setup` (building it all from the config), `tunnel` (CONNECT: port 80 and interception),
//! `quick_ack` (an intercepted tunnel's client socket, acknowledging each read at once),
//! `refresh` (DNS changes retire connections to old addresses), `server_timing` (the latency
//! breakdown a bot can read from each answer), `warm` (the background task that keeps the
//! warm floor open and fresh), `rate_limit` (the rate-limit guard on the request path: the
//! reserved headers, wait or refuse before a connection is taken, the answers' signals).

mod body;
mod drain;
mod forward;
mod headers;
mod listener;
mod log;
mod quick_ack;
mod rate_limit;
mod refresh;
mod route;
mod server_timing;
mod setup;
mod tunnel;
mod warm;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Uri, Version};
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1::SendRequest;
use tokio::time::Instant;

pub use body::{ProxyBody, RequestBody};
pub use headers::{MAX_HEADER_BYTES, is_secret_header, redact_path};
pub use listener::serve;
pub use refresh::spawn_dns_refreshers;
pub use warm::spawn_warmers;

use crate::config::Limits;
use crate::connect::{Addresses, Connector};
use crate::error::{ErrorKind, ProxyError};
use crate::intercept::Interceptor;
use crate::metrics::Metrics;
use crate::pool::{Pool, PoolSet, Poolable};
use crate::runtime::BusyPoll;
use body::UpstreamBody;
use listener::ClientConn;
use log::Completion;
use rate_limit::{Asked, GuardGauges, Guarded};
use route::Routes;
use server_timing::{Answered, Timing};
use tunnel::Tunnel;

/// A kept-alive HTTP/1.1 client connection to an upstream, as held by the pool.
pub struct UpstreamConn {
    send: SendRequest<RequestBody>,
    /// The address it goes to (its IP checked against the upstream's DNS answer, and named
    /// in error messages).
    peer: SocketAddr,
    /// `None` when the upstream's address is fixed.
    addresses: Option<Arc<Addresses>>,
    /// The address epoch at which `peer` was last known to be current.
    epoch: AtomicU64,
}

impl Poolable for UpstreamConn {
    fn is_closed(&self) -> bool {
        self.send.is_closed()
    }

    fn is_retired(&self) -> bool {
        let Some(addresses) = &self.addresses else {
            return false;
        };
        let now = addresses.epoch();
        if now == self.epoch.load(Ordering::Relaxed) {
            return false;
        }
        let current = addresses.contains(self.peer.ip());
        if current {
            self.epoch.store(now, Ordering::Relaxed);
        }
        !current
    }
}

/// One configured upstream at run time.
pub struct Upstream {
    /// The configured name (route prefix, metric label).
    pub name: Arc<str>,
    /// The Host header sent upstream.
    authority: HeaderValue,
    limits: Limits,
    pool: Arc<Pool<UpstreamConn>>,
    connector: Connector,
    /// `prewarm`: the warm floor opens at start.
    prewarm: bool,
    /// `warm_probe`: warm connections are kept alive with a GET of this instead of replaced.
    warm_probe: Option<PathAndQuery>,
    /// The rate-limit guard; `None` with `rate_limit = "none"`.
    rate_limit: Option<Arc<Guarded>>,
}

/// Everything a request needs, shared by all client connections.
pub struct Proxy {
    routes: Routes,
    upstreams: Vec<Upstream>,
    pools: Arc<PoolSet<UpstreamConn>>,
    metrics: Arc<Metrics>,
    busy_poll: Option<Arc<BusyPoll>>,
    /// `[intercept] enabled`: the CA whose leaves terminate clients' TLS inside tunnels.
    interceptor: Option<Arc<Interceptor>>,
    /// `listen.server_timing`.
    server_timing: bool,
    /// What a scrape reads the guards' gauges from (the metrics hold it weakly).
    _guard_gauges: Arc<GuardGauges>,
}

/// What becomes of a client request once it has been checked.
#[expect(
    clippy::large_enum_variant,
    reason = "the request future holds it once; boxing would cost an allocation per request"
)]
enum Admission {
    /// It goes to its upstream.
    Forward(Outbound),
    /// sidepool answers it itself.
    Refused(Response<ProxyBody>),
}

/// A request admitted and rewritten for its upstream.
struct Outbound {
    /// Index into [`Proxy::upstreams`].
    upstream: usize,
    /// The request as it goes upstream; taken when it is sent.
    request: Option<Request<RequestBody>>,
    /// What the request path knows of it besides the request itself.
    about: About,
}

/// What is known of an outbound request, apart from it (borrowed while it is sent).
struct About {
    /// The client's method and the upstream path, for the log line and the rate-limit guard.
    method: Method,
    path: PathAndQuery,
    started: Instant,
    /// The bot's `x-sidepool-*` asks.
    asked: Asked,
    /// Sent by then or not at all: `x-sidepool-deadline-ms`, else `queue_timeout`, from
    /// `started`.
    deadline: Instant,
}

impl Proxy {
    /// The pools (for the reaper and shutdown).
    pub fn pools(&self) -> &Arc<PoolSet<UpstreamConn>> {
        &self.pools
    }

    /// The busy poller, when `runtime.busy_poll` is set (its spinners are started by the server).
    pub fn busy_poll(&self) -> Option<&Arc<BusyPoll>> {
        self.busy_poll.as_ref()
    }

    /// Answers one client request: forwarded, or refused with sidepool's own error. Never
    /// fails (the `Result` is what hyper's service wants).
    ///
    /// The checks and the rewrite for the upstream run before the returned future exists, and
    /// the future keeps the rewritten request in one place until it is sent: hyper moves every
    /// request's future into its client connection's slot, so each byte of it is copied once per
    /// request, and with a few hundred clients that slot is no longer in the cache.
    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        client: &ClientConn,
    ) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static + use<>
    {
        let started = Instant::now();
        if let Some(busy) = &self.busy_poll {
            busy.touch();
        }
        if tracing::enabled!(tracing::Level::TRACE) {
            tracing::trace!(method = %req.method(), path = %redact_path(route::loggable_target(req.uri().path_and_query().map_or("", |p| p.as_str()))), headers = %headers::redacted_headers(req.headers()), "request received");
        }
        let mut admission = if req.method() == Method::CONNECT {
            self.connect(req, started, client)
        } else {
            self.admit_and_rewrite(req, started, client.tunnel.as_ref())
        };
        async move {
            Ok(match &mut admission {
                Admission::Forward(outbound) => self.forward(outbound).await,
                Admission::Refused(refusal) => std::mem::take(refusal),
            })
        }
    }

    /// Admits a request and rewrites it for its upstream, or answers it with the refusal.
    fn admit_and_rewrite(
        &self,
        mut req: Request<Incoming>,
        started: Instant,
        tunnel: Option<&Tunnel>,
    ) -> Admission {
        let (upstream, path) = match self.admit(&req, tunnel) {
            Ok(route) => (route.upstream, route.path_and_query),
            Err(err) => return self.refuse(&req, &err, started),
        };
        let asked = match rate_limit::take_reserved(req.headers_mut()) {
            Ok(asked) => asked,
            Err(err) => return self.refuse(&req, &err, started),
        };
        let limits = &self.upstreams[upstream].limits;
        let deadline = started + asked.deadline.unwrap_or(limits.queue_timeout);
        let (mut parts, body) = req.into_parts();
        let method = parts.method.clone();
        headers::strip_hop_by_hop(&mut parts.headers);
        // sidepool answers `Expect: 100-continue` itself (hyper sends the 100 when the body is
        // first read); the upstream gets the body without waiting.
        parts.headers.remove(header::EXPECT);
        parts
            .headers
            .insert(header::HOST, self.upstreams[upstream].authority.clone());
        parts.uri = Uri::from(path.clone());
        parts.version = Version::HTTP_11;
        let body = if body.is_end_stream() {
            RequestBody::Empty
        } else {
            RequestBody::Client(body)
        };
        Admission::Forward(Outbound {
            upstream,
            request: Some(Request::from_parts(parts, body)),
            about: About {
                method,
                path,
                started,
                asked,
                deadline,
            },
        })
    }

    /// Sends an admitted request and turns the upstream's answer into the client's response.
    async fn forward(&self, outbound: &mut Outbound) -> Response<ProxyBody> {
        let upstream = &self.upstreams[outbound.upstream];
        let sent = rate_limit::send_guarded(upstream, outbound).await;
        // The answer is about to be written and the bot's next request is likely close behind.
        if let Some(busy) = &self.busy_poll {
            busy.touch();
        }
        match sent {
            Ok((sent, ticket)) => {
                let (mut head, incoming) = sent.response.into_parts();
                let answer = match (&upstream.rate_limit, ticket) {
                    (Some(guarded), Some(ticket)) => guarded.answer(
                        &outbound.about.method,
                        outbound.about.path.path(),
                        ticket,
                        head.status.as_u16(),
                        &head.headers,
                    ),
                    _ => None,
                };
                let reusable =
                    !headers::strip_hop_by_hop(&mut head.headers).says_close(head.version);
                head.version = Version::HTTP_11;
                if self.server_timing {
                    let timing = Timing {
                        queue: sent.queue_wait,
                        connect: sent.connect,
                        answered: Some(Answered {
                            upstream: sent.upstream_time,
                            reused: sent.pooled.is_reused(),
                        }),
                    };
                    timing.append_to(&mut head.headers);
                }
                let completion = Completion {
                    started: outbound.about.started,
                    pool: upstream.pool.clone(),
                    method: std::mem::take(&mut outbound.about.method),
                    path: std::mem::replace(
                        &mut outbound.about.path,
                        PathAndQuery::from_static("/"),
                    ),
                    status: head.status.as_u16(),
                    reused: sent.pooled.is_reused(),
                    queue_wait: sent.queue_wait,
                    retried: sent.retried,
                };
                let body = UpstreamBody::new(
                    incoming,
                    sent.pooled,
                    reusable,
                    upstream.limits.read_timeout,
                    sent.deadline,
                    completion,
                    answer,
                );
                Response::from_parts(head, ProxyBody::Upstream(Box::new(body)))
            }
            Err(failed) => {
                log::error_done(
                    &failed.error,
                    upstream.pool.metrics(),
                    &outbound.about.method,
                    outbound.about.path.as_str(),
                    outbound.about.started,
                    Some(failed.queue_wait),
                );
                let mut response = local_error(&failed.error);
                if self.server_timing {
                    let timing = Timing {
                        queue: failed.queue_wait,
                        connect: failed.connect,
                        answered: None,
                    };
                    timing.append_to(response.headers_mut());
                }
                response
            }
        }
    }

    /// The checks before anything is forwarded: header size, route (inside a tunnel: the
    /// tunnel's upstream, and a Host that names it).
    fn admit(
        &self,
        req: &Request<Incoming>,
        tunnel: Option<&Tunnel>,
    ) -> Result<route::Route, ProxyError> {
        let target_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
        headers::check_size(req.headers(), target_len)?;
        let Some(tunnel) = tunnel else {
            return self.routes.resolve(req.uri());
        };
        if let Some(host) = req.headers().get(header::HOST) {
            let host = host.to_str().unwrap_or("");
            if !self.routes.host_matches(host, tunnel.upstream, tunnel.port) {
                return Err(ProxyError::new(
                    ErrorKind::NotAllowed,
                    "the Host header names another host than the tunnel was opened to",
                ));
            }
        }
        self.routes.in_tunnel(req.uri(), tunnel.upstream)
    }

    /// Logs a refused request (its target with any query cut or redacted) and answers it.
    fn refuse(&self, req: &Request<Incoming>, err: &ProxyError, started: Instant) -> Admission {
        let target = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .unwrap_or("");
        log::error_done(
            err,
            self.metrics.unrouted(),
            req.method(),
            route::loggable_target(target),
            started,
            None,
        );
        let mut response = local_error(err);
        if self.server_timing {
            // Refused before it was routed: it waited for nothing and opened nothing.
            Timing::default().append_to(response.headers_mut());
        }
        Admission::Refused(response)
    }
}

fn local_error(err: &ProxyError) -> Response<ProxyBody> {
    err.to_response().map(ProxyBody::local)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future a function returns, without calling it.
    fn future_size3<A, B, C, F: Future>(_: impl FnOnce(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// hyper copies each request's future into its client connection's slot, all of it, for
    /// every request: a by-value request kept in an async fn's argument slot, or a copy kept
    /// across an `.await`, shows up here. (It was 2.5 KB before the request was stored once.)
    #[test]
    fn request_future_stays_small() {
        let handle = future_size3(|p: Arc<Proxy>, r, c: &ClientConn| p.handle(r, c));
        let send = future_size3(forward::send);
        eprintln!("request future {handle} bytes, send future {send} bytes");
        assert!(handle <= 1200, "the request future grew to {handle} bytes");
        assert!(send <= 700, "the send future grew to {send} bytes");
    }
}
