//! CONNECT: `CONNECT <configured host>:80` read as plain HTTP/1.1 for that upstream, and, with
//! `[intercept] enabled`, TLS terminated for a configured upstream's host and port. Every other
//! CONNECT is refused and no tunnel opens.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::listener::ClientConn;
use super::{Admission, Proxy, ProxyBody, headers};
use crate::error::{ErrorKind, ProxyError};

/// A CONNECT tunnel's target: every request inside it goes to this upstream.
#[derive(Clone)]
pub(super) struct Tunnel {
    /// Index into [`Proxy::upstreams`].
    pub(super) upstream: usize,
    /// The port the client asked for (a Host header inside may name it).
    pub(super) port: u16,
    /// Intercepted: the client's TLS is terminated here, with a leaf for this host (the SNI
    /// the client must send).
    pub(super) tls: Option<String>,
}

impl Proxy {
    /// `CONNECT host:80` to a configured upstream's host: answered 200, and the tunnel is read
    /// as plain HTTP/1.1 requests for that upstream. Every other CONNECT is refused.
    pub(super) fn connect(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        started: Instant,
        client: &ClientConn,
    ) -> Admission {
        let tunnel = match self.admit_connect(&req, client) {
            Ok(tunnel) => tunnel,
            Err(err) => return self.refuse(&req, &err, started),
        };
        tracing::debug!(upstream = %self.upstreams[tunnel.upstream].name, port = tunnel.port, "tunnel opened");
        let on = hyper::upgrade::on(&mut req);
        client.open_tunnel(self.clone(), on, tunnel);
        Admission::Refused(Response::new(ProxyBody::local(bytes::Bytes::new())))
    }

    fn admit_connect(
        &self,
        req: &Request<Incoming>,
        client: &ClientConn,
    ) -> Result<Tunnel, ProxyError> {
        let not_supported = || {
            ProxyError::new(
                ErrorKind::ConnectNotSupported,
                "CONNECT tunnels cannot be pooled, except CONNECT <configured host>:80 for plain http:// URLs; use an http:// base URL with HTTP_PROXY, or route mode http://<sidepool>/<upstream>/<path>",
            )
        };
        if client.tunnel.is_some() {
            return Err(not_supported());
        }
        headers::check_size(req.headers(), 0)?;
        let authority = req.uri().authority().ok_or_else(|| {
            ProxyError::new(ErrorKind::BadRequest, "CONNECT needs a host:port target")
        })?;
        if authority.port_u16() == Some(80)
            && let Ok(upstream) = self.routes.plain_tunnel(authority)
        {
            return Ok(Tunnel {
                upstream,
                port: 80,
                tls: None,
            });
        }
        let Some(interceptor) = &self.interceptor else {
            return Err(not_supported());
        };
        // Intercepted: only a configured upstream's own host and port, and a host the CA
        // covers; anything else is refused and no tunnel opens.
        let host = authority
            .host()
            .trim_matches(['[', ']'])
            .to_ascii_lowercase();
        match self.routes.exact(authority) {
            Some(upstream) if interceptor.covers(&host) => Ok(Tunnel {
                upstream,
                port: authority.port_u16().unwrap_or(443),
                tls: Some(host),
            }),
            _ => Err(ProxyError::new(
                ErrorKind::NotAllowed,
                "CONNECT target is not a configured upstream's host and port",
            )),
        }
    }
}
