//! Opening upstream connections: DNS (cached, with static overrides), TCP, TLS.
//!
//! Owns the resolver, the DNS cache policy, the rustls client config and the connect timeout.
//! Returns an open byte stream or a typed [`ConnectError`]; knows nothing of pools or HTTP.
//! Certificates are always verified: trust is the web PKI roots plus `tls.ca_files`, and no
//! code path turns verification off.

mod dns;
mod stream;
mod tls;

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;

pub use dns::{Addresses, DnsCache, Resolver};
pub use stream::UpstreamStream;
pub use tls::{TlsSetupError, client_config};

use crate::StartError;
use crate::config::{Config, UpstreamConfig};
use crate::error::{ErrorKind, ProxyError};
use crate::metrics::UpstreamMetrics;

/// Why a connection could not be opened. The kind maps to the contract's 502/504 kinds.
#[derive(Debug, Clone)]
pub struct ConnectError {
    /// `DnsFailed`, `ConnectFailed`, `TlsFailed` or `ConnectTimeout`.
    pub kind: ErrorKind,
    /// What failed, with the address involved and a hint.
    pub message: String,
}

impl ConnectError {
    fn new(kind: ErrorKind, message: String) -> Self {
        ConnectError { kind, message }
    }

    /// The error answered to the client.
    pub fn into_proxy_error(self, upstream: &Arc<str>) -> ProxyError {
        ProxyError::new(self.kind, self.message).with_upstream(upstream)
    }
}

/// What is shared by every upstream's connector.
pub struct Shared {
    resolver: Resolver,
    tls: Arc<rustls::ClientConfig>,
}

impl Shared {
    /// Builds the resolver and the TLS client config from the validated config.
    pub fn new(config: &Config) -> Result<Arc<Shared>, tls::TlsSetupError> {
        Ok(Arc::new(Shared {
            resolver: Resolver::new(config.dns.max_ttl, &config.dns.nameservers),
            tls: client_config(&config.tls.ca_certs)?,
        }))
    }
}

/// Opens connections to one upstream.
pub struct Connector {
    shared: Arc<Shared>,
    host: String,
    port: u16,
    server_name: Option<ServerName<'static>>,
    /// From `dns.static`, or the host itself when it is an IP literal.
    fixed_ip: Option<IpAddr>,
    dns: DnsCache,
    metrics: UpstreamMetrics,
}

/// A new connection and where it goes.
pub struct Connected {
    /// The byte stream (TLS for https upstreams).
    pub stream: UpstreamStream,
    /// DNS + TCP + TLS time.
    pub took: Duration,
    /// The address it was made to.
    pub peer: IpAddr,
    /// The address epoch read before the lookup that chose `peer` (see [`Addresses`]).
    pub epoch: u64,
}

/// The step a connect attempt was in, for timeout messages.
#[derive(Debug, Clone, Copy)]
enum Step {
    Resolve,
    Tcp,
    Tls(SocketAddr),
}

impl Connector {
    /// A connector for `upstream`, with its DNS override if `dns.static` names its host.
    pub fn new(
        shared: Arc<Shared>,
        upstream: &UpstreamConfig,
        config: &Config,
        metrics: UpstreamMetrics,
    ) -> Result<Connector, StartError> {
        let server_name = if upstream.tls {
            Some(
                ServerName::try_from(upstream.host.clone()).map_err(|source| {
                    StartError::ServerName {
                        upstream: upstream.name.clone(),
                        host: upstream.host.clone(),
                        source,
                    }
                })?,
            )
        } else {
            None
        };
        let fixed_ip = config
            .dns
            .static_hosts
            .get(&upstream.host)
            .copied()
            .or_else(|| upstream.host.parse().ok());
        Ok(Connector {
            shared,
            host: upstream.host.clone(),
            port: upstream.port,
            server_name,
            fixed_ip,
            dns: DnsCache::default(),
            metrics,
        })
    }

    /// The upstream's current DNS addresses; `None` when its address is fixed (`dns.static`
    /// or an IP literal), so it never changes.
    pub fn addresses(&self) -> Option<&Arc<Addresses>> {
        self.fixed_ip.is_none().then(|| self.dns.addresses())
    }

    /// When the cached DNS answer expires; `None` for a fixed address or before the first
    /// lookup.
    pub fn dns_expires(&self) -> Option<Instant> {
        self.fixed_ip
            .is_none()
            .then(|| self.dns.expires())
            .flatten()
    }

    /// Resolves when a DNS answer is stored.
    pub async fn dns_stored(&self) {
        self.dns.stored().await;
    }

    /// Looks the name up again if the cached answer has expired, so a changed answer is seen
    /// even while no new connection is needed. Failures keep the last good answer.
    pub async fn refresh_dns(&self) {
        if self.fixed_ip.is_none() {
            let (_, outcome) = self.dns.lookup(&self.shared.resolver, &self.host).await;
            self.metrics.dns_lookup(outcome);
        }
    }

    /// DNS + TCP + TLS within `timeout`.
    pub async fn connect(&self, timeout: Duration) -> Result<Connected, ConnectError> {
        let started = Instant::now();
        let epoch = self.dns.addresses().epoch();
        let mut step = Step::Resolve;
        match tokio::time::timeout(timeout, self.connect_steps(started + timeout, &mut step)).await
        {
            Ok(Ok((stream, peer))) => Ok(Connected {
                stream,
                took: started.elapsed(),
                peer: peer.ip(),
                epoch,
            }),
            Ok(Err(err)) => Err(err),
            Err(_elapsed) => {
                let during = match step {
                    Step::Resolve => format!("resolving {}", self.host),
                    Step::Tcp => format!("connecting to {}:{}", self.host, self.port),
                    Step::Tls(addr) => format!("the TLS handshake with {addr}"),
                };
                Err(ConnectError::new(
                    ErrorKind::ConnectTimeout,
                    format!("connect_timeout ({timeout:?}) elapsed during {during}"),
                ))
            }
        }
    }

    async fn connect_steps(
        &self,
        deadline: Instant,
        step: &mut Step,
    ) -> Result<(UpstreamStream, SocketAddr), ConnectError> {
        let addrs = self.resolve().await?;
        *step = Step::Tcp;
        let (tcp, addr) = self.dial(&addrs, deadline).await?;
        match &self.server_name {
            None => Ok((UpstreamStream::Plain(tcp), addr)),
            Some(name) => {
                *step = Step::Tls(addr);
                let connector = tokio_rustls::TlsConnector::from(self.shared.tls.clone());
                match connector.connect(name.clone(), tcp).await {
                    Ok(tls) => Ok((UpstreamStream::Tls(Box::new(tls)), addr)),
                    Err(err) => Err(ConnectError::new(
                        ErrorKind::TlsFailed,
                        tls::describe_handshake_error(&self.host, addr, &err),
                    )),
                }
            }
        }
    }

    async fn resolve(&self) -> Result<Arc<[IpAddr]>, ConnectError> {
        if let Some(ip) = self.fixed_ip {
            self.metrics.dns_lookup(crate::metrics::DnsResult::Static);
            return Ok(Arc::from([ip]));
        }
        let (result, outcome) = self.dns.lookup(&self.shared.resolver, &self.host).await;
        self.metrics.dns_lookup(outcome);
        result.map_err(|message| ConnectError::new(ErrorKind::DnsFailed, message))
    }

    /// Tries every address in turn; each attempt gets an equal share of the time left, so one
    /// black-holed address cannot use up the whole connect timeout.
    async fn dial(
        &self,
        addrs: &[IpAddr],
        deadline: Instant,
    ) -> Result<(TcpStream, SocketAddr), ConnectError> {
        let mut failures = String::new();
        for (i, ip) in addrs.iter().enumerate() {
            let addr = SocketAddr::new(*ip, self.port);
            let left = deadline.saturating_duration_since(Instant::now());
            let share = left / u32::try_from(addrs.len() - i).unwrap_or(u32::MAX);
            match tokio::time::timeout(share, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => {
                    // Small requests and responses: do not wait for Nagle.
                    let _ = tcp.set_nodelay(true);
                    return Ok((tcp, addr));
                }
                Ok(Err(err)) => {
                    let _ = write!(
                        failures,
                        "{}{addr}: {err}",
                        if failures.is_empty() { "" } else { "; " }
                    );
                }
                Err(_) => {
                    let _ = write!(
                        failures,
                        "{}{addr}: no answer within {share:?}",
                        if failures.is_empty() { "" } else { "; " }
                    );
                }
            }
        }
        Err(ConnectError::new(
            ErrorKind::ConnectFailed,
            format!(
                "could not connect to {} port {} ({failures}); check that the upstream is up and reachable",
                self.host, self.port
            ),
        ))
    }
}
