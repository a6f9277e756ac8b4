//! The proxy listener: plain HTTP/1.1 from local clients, forwarded over the pools.
//!
//! Owns addressing (forward-proxy absolute-form and route mode), header rules, the re-send
//! rule and the per-request log line. Asks the pool for connections and gets guards back; never
//! touches pool state or gauges itself.
//!
//! Modules: `route` (which upstream), `headers` (hop-by-hop, limits, secrets), `forward`
//! (checkout, connect, send, re-send rule), `body` (streaming bodies with timeouts), `log`
//! (one line per request), `listener` (accept loop, client cap and connection settings),
//! `refresh` (DNS changes retire connections to old addresses).

mod body;
mod forward;
mod headers;
mod listener;
mod log;
mod refresh;
mod route;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1::SendRequest;
use tokio::time::Instant;

pub use body::{ProxyBody, RequestBody};
pub use headers::{MAX_HEADER_BYTES, is_secret_header, redact_path};
pub use listener::serve;
pub use refresh::spawn_dns_refreshers;

use crate::config::{Config, Limits};
use crate::connect::{self, Addresses, Connector};
use crate::error::{ErrorKind, ProxyError};
use crate::metrics::Metrics;
use crate::pool::{Pool, PoolLimits, PoolSet, Poolable};
use crate::runtime::BusyPoll;
use body::UpstreamBody;
use log::Completion;
use route::Routes;

/// A kept-alive HTTP/1.1 client connection to an upstream, as held by the pool.
pub struct UpstreamConn {
    send: SendRequest<RequestBody>,
    /// The address it goes to, checked against the upstream's DNS answer.
    peer: IpAddr,
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
        let current = addresses.contains(self.peer);
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
}

/// Everything a request needs, shared by all client connections.
pub struct Proxy {
    routes: Routes,
    upstreams: Vec<Upstream>,
    pools: Arc<PoolSet<UpstreamConn>>,
    metrics: Arc<Metrics>,
    busy_poll: Option<Arc<BusyPoll>>,
}

impl Proxy {
    /// Builds the pools, connectors and routes from a validated config.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Proxy, String> {
        let shared = connect::Shared::new(config)?;
        let pools = Arc::new(PoolSet::new(
            config.max_connections,
            config.upstreams.iter().map(|u| {
                let name: Arc<str> = Arc::from(u.name.as_str());
                let upstream_metrics = metrics.upstream(&name, u.limits.max_connections_per_host);
                let limits = PoolLimits {
                    max_connections: u.limits.max_connections_per_host,
                    idle_timeout: u.limits.idle_timeout,
                    queue_timeout: u.limits.queue_timeout,
                    max_waiting: u.limits.max_waiting,
                };
                (name, limits, upstream_metrics)
            }),
        ));
        let upstreams = config
            .upstreams
            .iter()
            .zip(pools.pools())
            .map(|(u, pool)| {
                let authority = HeaderValue::from_str(&u.authority).map_err(|_| {
                    format!("upstream {:?}: invalid authority {:?}", u.name, u.authority)
                })?;
                let connector = Connector::new(shared.clone(), u, config, pool.metrics().clone())?;
                Ok(Upstream {
                    name: pool.name().clone(),
                    authority,
                    limits: u.limits,
                    pool: pool.clone(),
                    connector,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Proxy {
            routes: Routes::new(&config.upstreams),
            upstreams,
            pools,
            busy_poll: config
                .runtime
                .busy_poll
                .map(|window| BusyPoll::new(window, metrics.busy_poll_threads().clone())),
            metrics,
        })
    }

    /// The pools (for the reaper and shutdown).
    pub fn pools(&self) -> &Arc<PoolSet<UpstreamConn>> {
        &self.pools
    }

    /// The busy poller, when `runtime.busy_poll` is set (its spinners are started by the server).
    pub fn busy_poll(&self) -> Option<&Arc<BusyPoll>> {
        self.busy_poll.as_ref()
    }

    /// Answers one client request: forwarded, or refused with sidepool's own error.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        if let Some(busy) = &self.busy_poll {
            busy.touch();
        }
        if tracing::enabled!(tracing::Level::TRACE) {
            tracing::trace!(method = %req.method(), path = %redact_path(req.uri().path_and_query().map_or("", |p| p.as_str())), headers = %headers::redacted_headers(req.headers()), "request received");
        }
        let method = req.method().clone();
        let (upstream, path) = match self.admit(&req) {
            Ok(route) => (&self.upstreams[route.upstream], route.path_and_query),
            Err(err) => {
                let path = req.uri().path_and_query().map_or("", |p| p.as_str());
                log::error_done(&err, self.metrics.unrouted(), &method, path, started, None);
                return local_error(&err);
            }
        };
        let (mut parts, body) = req.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        // sidepool answers `Expect: 100-continue` itself (hyper sends the 100 when the body is
        // first read); the upstream gets the body without waiting.
        parts.headers.remove(header::EXPECT);
        parts
            .headers
            .insert(header::HOST, upstream.authority.clone());
        parts.uri = Uri::from(path.clone());
        parts.version = Version::HTTP_11;
        let body = if body.is_end_stream() {
            RequestBody::Empty
        } else {
            RequestBody::Client(body)
        };
        let sent = forward::send(upstream, Request::from_parts(parts, body)).await;
        // The answer is about to be written and the bot's next request is likely close behind.
        if let Some(busy) = &self.busy_poll {
            busy.touch();
        }
        match sent {
            Ok(sent) => {
                let (mut head, incoming) = sent.response.into_parts();
                let reusable =
                    !headers::strip_hop_by_hop(&mut head.headers).says_close(head.version);
                head.version = Version::HTTP_11;
                let completion = Completion {
                    started,
                    pool: upstream.pool.clone(),
                    method,
                    path,
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
                );
                Response::from_parts(head, ProxyBody::Upstream(Box::new(body)))
            }
            Err(failed) => {
                log::error_done(
                    &failed.error,
                    upstream.pool.metrics(),
                    &method,
                    path.as_str(),
                    started,
                    Some(failed.queue_wait),
                );
                local_error(&failed.error)
            }
        }
    }

    /// The checks before anything is forwarded: method, header size, route.
    fn admit(&self, req: &Request<Incoming>) -> Result<route::Route, ProxyError> {
        if req.method() == Method::CONNECT {
            return Err(ProxyError::new(
                ErrorKind::ConnectNotSupported,
                "CONNECT tunnels cannot be pooled; use an http:// base URL with HTTP_PROXY, or route mode http://<sidepool>/<upstream>/<path>",
            ));
        }
        let target_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
        headers::check_size(req.headers(), target_len)?;
        self.routes.resolve(req.uri())
    }
}

fn local_error(err: &ProxyError) -> Response<ProxyBody> {
    err.to_response().map(ProxyBody::local)
}
