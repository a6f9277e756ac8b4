//! sidepool: an HTTP connection-pooling sidecar for trading bots.
//!
//! Local clients speak plain HTTP/1.1 to sidepool (forward-proxy absolute-form through
//! `HTTP_PROXY`, or route mode `/<upstream>/<path>`); sidepool forwards each request over a
//! per-upstream pool of kept-alive, verified TLS connections, enforcing per-upstream and global
//! caps with a bounded wait queue, and exports exact gauges on `/metrics`.
//!
//! Layout, one module per concern:
//! - [`config`]: figment loading and validation into a typed [`config::Config`].
//! - [`proxy`]: the proxy listener, routing, header rules, forwarding and the re-send rule.
//! - [`pool`]: caps, the wait queue, idle reuse and reaping; the only writer of pool gauges.
//! - [`connect`]: DNS (cached) + TCP + TLS to an upstream.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`metrics`]: every metric name, registered once per instance.
//! - [`error`]: the error kinds and their responses.
//! - [`intercept`]: the CONNECT interception CA and its leaf certificates.
//! - [`runtime`]: which tokio scheduler runs sidepool, and optional busy polling.
//! - [`cli`]: the command line (`run`, `check`, `health`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod connect;
pub mod error;
pub mod intercept;
pub mod logging;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod ratelimit;
pub mod runtime;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::AdminState;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::Proxy;

/// Why sidepool could not start. `Display` says what failed; `source()` keeps the cause (the
/// OS error of a failed bind, the parse error of a bad server name), and `cli` prints the whole
/// chain on exit.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind (`key` is `listen.proxy` or `listen.admin`).
    #[error("{key}: cannot listen on {addr}")]
    Listen {
        /// The config key of the listener.
        key: &'static str,
        /// The address it was to bind.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The TLS client configuration could not be built.
    #[error("TLS client configuration")]
    Tls(#[source] crate::connect::TlsSetupError),
    /// An upstream's host is not a valid TLS server name.
    #[error("upstream {upstream:?}: host {host:?} is not a valid TLS server name")]
    ServerName {
        /// The upstream's name.
        upstream: String,
        /// Its host.
        host: String,
        /// Why the name is refused.
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    /// `[intercept] enabled = true`, and the CA in `ca_dir` could not be loaded or made.
    #[error("intercept.ca_dir")]
    Intercept(#[source] crate::intercept::InterceptError),
    /// `[rate_limit] store` names a Redis server that cannot be used (the config check refuses
    /// most of these; nothing is connected at start).
    #[error("rate_limit.store")]
    Store(#[source] redis::RedisError),
    /// An upstream's `warm_probe` is not a request target (the config check refuses these).
    #[error("upstream {upstream:?}: warm_probe is not a valid path")]
    WarmProbe {
        /// The upstream's name.
        upstream: String,
        /// Why it is not one.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// An upstream's authority cannot be a Host header.
    #[error("upstream {upstream:?}: invalid authority {authority:?}")]
    Authority {
        /// The upstream's name.
        upstream: String,
        /// The authority as configured.
        authority: String,
        /// Why it is not a header value.
        #[source]
        source: http::header::InvalidHeaderValue,
    },
}

impl StartError {
    /// The error and each of its causes, joined by `: ` (one line, for the exit message).
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(err) = cause {
            text.push_str(": ");
            text.push_str(&err.to_string());
            cause = err.source();
        }
        text
    }
}

/// How often histogram buffers are drained into their buckets.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// A sidecar with its listeners bound, ready to [`Server::run`].
pub struct Server {
    config: Config,
    proxy_listener: TcpListener,
    admin_listener: TcpListener,
    proxy: Arc<Proxy>,
    admin: Arc<AdminState>,
}

impl Server {
    /// Builds pools, connectors and metrics and binds both listeners.
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        let metrics = Metrics::new(config.max_connections);
        let proxy = Arc::new(Proxy::new(&config, metrics.clone())?);
        let listen = |key: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Listen { key, addr, source })
        };
        let proxy_listener = listen("listen.proxy", config.listen.proxy).await?;
        let admin_listener = listen("listen.admin", config.listen.admin).await?;
        Ok(Server {
            config,
            proxy_listener,
            admin_listener,
            proxy,
            admin: Arc::new(AdminState {
                metrics,
                ready: AtomicBool::new(false),
            }),
        })
    }

    /// The bound proxy address (useful when the config asked for port 0).
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_listener
            .local_addr()
            .unwrap_or(self.config.listen.proxy)
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .unwrap_or(self.config.listen.admin)
    }

    /// Serves until `shutdown` resolves, then drains: `/readyz` turns 503, the proxy stops
    /// accepting, in-flight requests finish within `listen.drain_timeout`, idle upstream
    /// connections are closed.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (proxy_addr, admin_addr) = (self.proxy_addr(), self.admin_addr());
        let Server {
            config,
            proxy_listener,
            admin_listener,
            proxy,
            admin,
        } = self;
        let (admin_stop, mut admin_stopped) = watch::channel(false);
        let admin_task = tokio::spawn(admin::serve(admin_listener, admin.clone(), async move {
            let _ = admin_stopped.wait_for(|stop| *stop).await;
        }));
        let reaper = pool::spawn_reaper(proxy.pools());
        let spinners = proxy.busy_poll().map_or_else(Vec::new, |busy| {
            busy.spawn(tokio::runtime::Handle::current().metrics().num_workers())
        });
        let refreshers = proxy::spawn_dns_refreshers(&proxy);
        let warmers = proxy::spawn_warmers(&proxy);
        let upkeep_metrics = admin.metrics.clone();
        let upkeep = tokio::spawn(async move {
            let mut tick = tokio::time::interval(METRICS_UPKEEP);
            loop {
                tick.tick().await;
                upkeep_metrics.run_upkeep();
            }
        });
        admin.ready.store(true, Ordering::SeqCst);
        tracing::info!(
            proxy = %proxy_addr,
            admin = %admin_addr,
            upstreams = config.upstreams.len(),
            "sidepool ready"
        );
        let ready = admin.clone();
        let draining = async move {
            shutdown.await;
            ready.ready.store(false, Ordering::SeqCst);
        };
        proxy::serve(proxy_listener, proxy.clone(), &config.listen, draining).await;
        // Stopped before the idle connections close, so none is opened again behind them.
        warmers.iter().for_each(JoinHandle::abort);
        for warmer in warmers {
            let _ = warmer.await;
        }
        proxy.pools().close_idle();
        let _ = admin_stop.send(true);
        let _ = admin_task.await;
        reaper.abort();
        refreshers.iter().for_each(JoinHandle::abort);
        spinners.iter().for_each(JoinHandle::abort);
        upkeep.abort();
        tracing::info!("sidepool stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_bind_keeps_the_os_error_as_its_source() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let config = Config::from_toml_str(&format!(
            "[listen]\nproxy = \"{addr}\"\nadmin = \"127.0.0.1:0\"\n\
             [upstreams.a]\nurl = \"http://127.0.0.1:1\"\n"
        ))
        .expect("valid");
        let Err(err) = Server::bind(config).await else {
            panic!("bound a port that is taken");
        };
        assert!(
            matches!(&err, StartError::Listen { key: "listen.proxy", addr: a, .. } if *a == addr),
            "{err:?}"
        );
        let source = std::error::Error::source(&err).expect("a source");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("the OS error");
        assert_eq!(io.kind(), std::io::ErrorKind::AddrInUse);
        assert_eq!(
            err.chain(),
            format!("listen.proxy: cannot listen on {addr}: {io}")
        );
    }
}
