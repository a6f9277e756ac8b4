//! Which upstream a request is for: forward-proxy absolute-form (`GET http://host/path`) by host
//! and port, or route mode (`GET /<upstream>/<path>`) by name. Anything else is refused: only
//! configured upstreams are reachable.

use std::collections::HashMap;

use http::Uri;
use http::uri::PathAndQuery;

use crate::config::UpstreamConfig;
use crate::error::{ErrorKind, ProxyError};

/// The routing table, built once from the config.
pub struct Routes {
    by_name: HashMap<String, usize>,
    /// host -> (port, upstream index); several entries when one host has several ports.
    by_host: HashMap<String, Vec<(u16, usize)>>,
    names: String,
}

/// Where a request goes: the upstream's index and the origin-form target to send.
#[derive(Debug, PartialEq, Eq)]
pub struct Route {
    /// Index into the upstream list.
    pub upstream: usize,
    /// Path and query for the upstream, query kept byte for byte.
    pub path_and_query: PathAndQuery,
}

impl Routes {
    /// Indexes upstreams by name and by host.
    pub fn new(upstreams: &[UpstreamConfig]) -> Routes {
        let mut by_name = HashMap::new();
        let mut by_host: HashMap<String, Vec<(u16, usize)>> = HashMap::new();
        for (index, upstream) in upstreams.iter().enumerate() {
            by_name.insert(upstream.name.clone(), index);
            by_host
                .entry(upstream.host.clone())
                .or_default()
                .push((upstream.port, index));
        }
        let names = upstreams
            .iter()
            .map(|u| u.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        Routes {
            by_name,
            by_host,
            names,
        }
    }

    /// Resolves a request target to a configured upstream, or explains why not.
    pub fn resolve(&self, uri: &Uri) -> Result<Route, ProxyError> {
        match uri.authority() {
            Some(authority) => self.absolute_form(uri, authority),
            None => self.route_form(uri),
        }
    }

    fn absolute_form(
        &self,
        uri: &Uri,
        authority: &http::uri::Authority,
    ) -> Result<Route, ProxyError> {
        // `http://` is what HTTP_PROXY clients send; `https://` without CONNECT asks the proxy
        // to fetch the TLS URL itself, which is exactly what sidepool does. Nothing else.
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(ProxyError::new(
                ErrorKind::BadRequest,
                format!(
                    "unsupported scheme {:?}; use http:// URLs through the proxy",
                    uri.scheme_str().unwrap_or("")
                ),
            ));
        }
        if authority.as_str().contains('@') {
            return Err(ProxyError::new(
                ErrorKind::BadRequest,
                "request target has userinfo; credentials in URLs are not forwarded, send them in headers",
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let not_allowed = || {
            ProxyError::new(
                ErrorKind::NotAllowed,
                format!(
                    "{} is not a configured upstream (configured: {}); add it under [upstreams] to allow it",
                    authority.as_str(),
                    self.names
                ),
            )
        };
        let candidates = self.by_host.get(&host).ok_or_else(not_allowed)?;
        // `host:99999` names a port, just not one that exists: never read it as "no port".
        let names_port = authority.as_str().len() > authority.host().len();
        if names_port && authority.port_u16().is_none() {
            return Err(ProxyError::new(
                ErrorKind::BadRequest,
                format!("invalid port in {}", authority.as_str()),
            ));
        }
        let upstream = match authority.port_u16() {
            Some(port) => candidates
                .iter()
                .find(|(p, _)| *p == port)
                .map(|(_, index)| *index)
                .ok_or_else(not_allowed)?,
            // A client using HTTP_PROXY with an http:// URL names no port; the upstream's own
            // (usually 443) is meant. With several ports for one host, prefer 443.
            None => match candidates.as_slice() {
                [(_, index)] => *index,
                many => many
                    .iter()
                    .find(|(p, _)| *p == 443)
                    .map(|(_, index)| *index)
                    .ok_or_else(|| {
                        ProxyError::new(
                            ErrorKind::NotAllowed,
                            format!(
                                "{host} has several configured ports; name the port in the URL"
                            ),
                        )
                    })?,
            },
        };
        // `http://host`, `http://host#x` and `http://host?q` have no path: the root is meant.
        // A missing path reads as "/" but is stored empty and would be sent as an empty
        // request-target, so the root is built afresh.
        let path_and_query = match uri.path_and_query() {
            Some(pq) if pq.as_str() == "/" => PathAndQuery::from_static("/"),
            Some(pq) if pq.as_str().starts_with('/') => pq.clone(),
            Some(pq) => PathAndQuery::try_from(format!("/{}", pq.as_str()))
                .map_err(|_| ProxyError::new(ErrorKind::BadRequest, "invalid request path"))?,
            None => PathAndQuery::from_static("/"),
        };
        Ok(Route {
            upstream,
            path_and_query,
        })
    }

    fn route_form(&self, uri: &Uri) -> Result<Route, ProxyError> {
        let target = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let Some(rest) = target.strip_prefix('/') else {
            return Err(ProxyError::new(
                ErrorKind::BadRequest,
                format!(
                    "unsupported request target {target:?}; use /<upstream>/<path> or an absolute http:// URL through HTTP_PROXY"
                ),
            ));
        };
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (name, tail) = rest.split_at(end);
        let Some(&upstream) = self.by_name.get(name) else {
            return Err(ProxyError::new(
                ErrorKind::NotAllowed,
                format!(
                    "no upstream named {name:?} (configured: {}); address requests as /<upstream>/<path>",
                    self.names
                ),
            ));
        };
        let path_and_query = if tail.starts_with('/') {
            PathAndQuery::try_from(tail)
        } else {
            // "/bybit" or "/bybit?x=1": the upstream's root.
            PathAndQuery::try_from(format!("/{tail}"))
        }
        .map_err(|_| ProxyError::new(ErrorKind::BadRequest, "invalid request path"))?;
        Ok(Route {
            upstream,
            path_and_query,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;
    use std::time::Duration;

    fn upstream(name: &str, host: &str, port: u16) -> UpstreamConfig {
        let d = Duration::from_secs(1);
        UpstreamConfig {
            name: name.into(),
            tls: true,
            host: host.into(),
            port,
            authority: host.into(),
            limits: Limits {
                max_connections_per_host: 1,
                idle_timeout: d,
                connect_timeout: d,
                read_timeout: d,
                request_timeout: d,
                queue_timeout: d,
                max_waiting: None,
            },
        }
    }

    fn routes() -> Routes {
        Routes::new(&[
            upstream("bybit", "api.bybit.com", 443),
            upstream("local", "exchange.test", 8443),
            upstream("local2", "exchange.test", 9443),
        ])
    }

    fn resolve(target: &str) -> Result<(usize, String), ErrorKind> {
        routes()
            .resolve(&target.parse().unwrap())
            .map(|r| (r.upstream, r.path_and_query.as_str().to_owned()))
            .map_err(|e| e.kind)
    }

    #[test]
    fn route_mode_strips_the_name_and_keeps_the_query() {
        assert_eq!(
            resolve("/bybit/v5/market/tickers?category=spot&symbol=BTCUSDT"),
            Ok((0, "/v5/market/tickers?category=spot&symbol=BTCUSDT".into()))
        );
        assert_eq!(resolve("/bybit"), Ok((0, "/".into())));
        assert_eq!(resolve("/bybit?x=1"), Ok((0, "/?x=1".into())));
        assert_eq!(resolve("/unknown/x"), Err(ErrorKind::NotAllowed));
        assert_eq!(resolve("/"), Err(ErrorKind::NotAllowed));
        assert_eq!(resolve("/bybitx/v5"), Err(ErrorKind::NotAllowed));
    }

    /// What goes on the wire: an origin-form `Uri` built from the route's path.
    fn wire_target(target: &str) -> String {
        let route = routes().resolve(&target.parse().unwrap()).unwrap();
        Uri::from(route.path_and_query).to_string()
    }

    #[test]
    fn absolute_form_without_a_path_is_sent_as_the_root() {
        assert_eq!(wire_target("http://api.bybit.com"), "/");
        assert_eq!(wire_target("http://api.bybit.com#frag"), "/");
        assert_eq!(wire_target("http://api.bybit.com?x=1"), "/?x=1");
        assert_eq!(wire_target("http://api.bybit.com/v5?x=1"), "/v5?x=1");
    }

    #[test]
    fn a_port_that_does_not_parse_is_refused_not_ignored() {
        assert_eq!(
            resolve("http://api.bybit.com:99999/x"),
            Err(ErrorKind::BadRequest)
        );
        assert_eq!(
            resolve("http://api.bybit.com:66979/x"),
            Err(ErrorKind::BadRequest)
        );
        assert_eq!(resolve("http://api.bybit.com:443/x"), Ok((0, "/x".into())));
    }

    #[test]
    fn absolute_form_matches_host_and_port() {
        assert_eq!(
            resolve("http://API.BYBIT.COM/v5/x?a=b"),
            Ok((0, "/v5/x?a=b".into()))
        );
        assert_eq!(resolve("http://exchange.test:9443/p"), Ok((2, "/p".into())));
        assert_eq!(
            resolve("http://exchange.test:1234/p"),
            Err(ErrorKind::NotAllowed)
        );
        assert_eq!(
            resolve("http://exchange.test/p"),
            Err(ErrorKind::NotAllowed),
            "ambiguous without a port"
        );
        assert_eq!(resolve("http://evil.example/p"), Err(ErrorKind::NotAllowed));
        assert_eq!(
            resolve("http://api.bybit.com.evil.example/p"),
            Err(ErrorKind::NotAllowed)
        );
        assert_eq!(resolve("http://127.0.0.1/p"), Err(ErrorKind::NotAllowed));
        assert_eq!(
            resolve("http://user:pw@api.bybit.com/p"),
            Err(ErrorKind::BadRequest)
        );
        assert_eq!(resolve("http://api.bybit.com"), Ok((0, "/".into())));
        assert_eq!(resolve("https://api.bybit.com/x"), Ok((0, "/x".into())));
        assert_eq!(resolve("ftp://api.bybit.com/x"), Err(ErrorKind::BadRequest));
    }
}
