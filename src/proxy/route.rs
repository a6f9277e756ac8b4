//! Which upstream a request is for: forward-proxy absolute-form (`GET http://host/path`) by host
//! and port, or route mode (`GET /<upstream>/<path>`) by name. Anything else is refused: only
//! configured upstreams are reachable.

use std::collections::HashMap;

use http::Uri;
use http::uri::{Authority, PathAndQuery};

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
        let upstream = self.by_authority(authority)?;
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

    /// The upstream an authority (`host` or `host:port`) names: by host, and by port when one
    /// is named. Shared by absolute form, prefix form and CONNECT, so that every addressing
    /// form reaches exactly the same set of upstreams.
    pub fn by_authority(&self, authority: &Authority) -> Result<usize, ProxyError> {
        self.by_authority_or(authority, None)
    }

    /// As [`Routes::by_authority`]; a named port equal to `default_port` counts as no port
    /// unless an upstream is configured on that very port (CONNECT to port 80 means "plain
    /// HTTP to this host", whatever port its upstream uses).
    fn by_authority_or(
        &self,
        authority: &Authority,
        default_port: Option<u16>,
    ) -> Result<usize, ProxyError> {
        if authority.as_str().contains('@') {
            return Err(ProxyError::new(
                ErrorKind::BadRequest,
                "request target has userinfo; credentials in URLs are not forwarded, send them in headers",
            ));
        }
        let host = normalized_host(authority);
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
        let exact = |port: u16| {
            candidates
                .iter()
                .find(|(p, _)| *p == port)
                .map(|(_, index)| *index)
        };
        // A client using HTTP_PROXY with an http:// URL names no port; the upstream's own
        // (usually 443) is meant. With several ports for one host, prefer 443.
        let portless = || match candidates.as_slice() {
            [(_, index)] => Ok(*index),
            _ => exact(443).ok_or_else(|| {
                ProxyError::new(
                    ErrorKind::NotAllowed,
                    format!("{host} has several configured ports; name the port in the URL"),
                )
            }),
        };
        match authority.port_u16() {
            None => portless(),
            Some(port) => match exact(port) {
                Some(index) => Ok(index),
                None if default_port == Some(port) => portless(),
                None => Err(not_allowed()),
            },
        }
    }

    /// The upstream that `CONNECT host:80` tunnels to: the one on port 80 if configured, else
    /// the host's upstream as for an absolute-form URL without a port.
    pub fn plain_tunnel(&self, authority: &Authority) -> Result<usize, ProxyError> {
        self.by_authority_or(authority, Some(80))
    }

    /// Whether `authority` names a configured upstream's host and exact port (the only
    /// CONNECT targets interception accepts).
    pub fn exact(&self, authority: &Authority) -> Option<usize> {
        let port = authority.port_u16()?;
        self.by_host
            .get(&normalized_host(authority))?
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, index)| *index)
    }

    /// A request inside a CONNECT tunnel to `upstream` (whose host is `host`): origin form is a
    /// path on that upstream, taken as it is (no route or prefix form inside a tunnel); an
    /// absolute-form URL must name the same upstream.
    pub fn in_tunnel(&self, uri: &Uri, upstream: usize) -> Result<Route, ProxyError> {
        if let Some(authority) = uri.authority() {
            let route = self.absolute_form(uri, authority)?;
            if route.upstream != upstream {
                return Err(ProxyError::new(
                    ErrorKind::NotAllowed,
                    format!(
                        "{} is not the host this tunnel was opened to",
                        authority.as_str()
                    ),
                ));
            }
            return Ok(route);
        }
        match uri.path_and_query() {
            Some(pq) if pq.as_str().starts_with('/') => Ok(Route {
                upstream,
                path_and_query: pq.clone(),
            }),
            _ => Err(ProxyError::new(
                ErrorKind::BadRequest,
                "unsupported request target inside a tunnel; send origin-form paths",
            )),
        }
    }

    /// Whether `host` (a Host header's value) names the host `upstream` was reached by, with
    /// `port` or no port. A request inside a tunnel whose Host names another host is refused:
    /// it is sent to the tunnel's upstream, which is not what its client meant.
    pub fn host_matches(&self, host: &str, upstream: usize, port: u16) -> bool {
        let Ok(authority) = host.parse::<Authority>() else {
            return false;
        };
        let name = normalized_host(&authority);
        let known = self
            .by_host
            .get(&name)
            .is_some_and(|c| c.iter().any(|(_, index)| *index == upstream));
        known && authority.port_u16().is_none_or(|p| p == port)
    }

    /// `/https://host[:port]/path?query` (ccxt's `proxyUrl`), and the same URL percent-encoded
    /// as a whole (`/https%3A%2F%2Fhost%2Fpath%3Fquery`, what ccxt sends when there is a
    /// query). `None` when `rest` (the target after its leading `/`) is not in prefix form.
    /// The scheme does not matter, as in absolute form; host and port pick the upstream.
    fn prefix_form(&self, rest: &str) -> Option<Result<Route, ProxyError>> {
        let (after_scheme, encoded) = strip_scheme(rest)?;
        Some(if encoded {
            decode_once(after_scheme).and_then(|url| match strip_scheme(&url) {
                Some((after, false)) => self.prefixed(after),
                _ => Err(ProxyError::new(
                    ErrorKind::BadRequest,
                    "prefix-form target: invalid encoded URL",
                )),
            })
        } else {
            self.prefixed(after_scheme)
        })
    }

    /// `host[:port][/path][?query]`, the prefix-form URL after its scheme.
    fn prefixed(&self, url: &str) -> Result<Route, ProxyError> {
        let end = url.find(['/', '?']).unwrap_or(url.len());
        let (authority, tail) = url.split_at(end);
        let authority = Authority::try_from(authority).map_err(|_| {
            ProxyError::new(
                ErrorKind::BadRequest,
                "prefix-form target: invalid host; use /https://<host>/<path>",
            )
        })?;
        let upstream = self.by_authority(&authority)?;
        let path_and_query = if tail.starts_with('/') {
            PathAndQuery::try_from(tail)
        } else {
            PathAndQuery::try_from(format!("/{tail}"))
        }
        .map_err(|_| ProxyError::new(ErrorKind::BadRequest, "invalid request path"))?;
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
        if let Some(prefixed) = self.prefix_form(rest) {
            return prefixed;
        }
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

/// The prefix form's scheme, as written: `https://`, `http://` (any case), or their
/// percent-encoded twins (the whole target then is encoded).
fn strip_scheme(rest: &str) -> Option<(&str, bool)> {
    const PLAIN: [&str; 2] = ["https://", "http://"];
    const ENCODED: [&str; 2] = ["https%3a%2f%2f", "http%3a%2f%2f"];
    let starts = |prefix: &str| {
        rest.get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
    };
    if let Some(p) = PLAIN.iter().find(|p| starts(p)) {
        return Some((&rest[p.len()..], false));
    }
    ENCODED.iter().find(|p| starts(p)).map(|_| (rest, true))
}

/// A request target as it may be logged. In the encoded prefix form the query is encoded into
/// the path, where [`super::redact_path`] cannot see its signature: it is cut off.
pub fn loggable_target(target: &str) -> &str {
    let Some((_, true)) = target.strip_prefix('/').and_then(strip_scheme) else {
        return target;
    };
    let bytes = target.as_bytes();
    let query = (0..bytes.len().saturating_sub(2)).find(|&i| {
        bytes[i] == b'%' && bytes[i + 1] == b'3' && bytes[i + 2].eq_ignore_ascii_case(&b'f')
    });
    let end = [query, target.find('?')].into_iter().flatten().min();
    end.map_or(target, |end| &target[..end])
}

/// Percent-decodes `encoded` once: every `%XX` becomes its byte, and nothing else changes. The
/// result is never decoded again, so an escape the bot itself wrote (ccxt sends `%2F` as
/// `%252F`) reaches the exchange as the bot wrote it. Only visible ASCII may come out, and no
/// `#`: a URL built for the wire has nothing else, and a fragment would silently cut it.
fn decode_once(encoded: &str) -> Result<String, ProxyError> {
    let malformed =
        |what: &str| ProxyError::new(ErrorKind::BadRequest, format!("prefix-form target: {what}"));
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = if bytes[i] == b'%' {
            let hex = |at: usize| bytes.get(at).and_then(|b| (*b as char).to_digit(16));
            let (Some(high), Some(low)) = (hex(i + 1), hex(i + 2)) else {
                return Err(malformed("invalid percent-encoding"));
            };
            i += 3;
            (high * 16 + low) as u8
        } else {
            i += 1;
            bytes[i - 1]
        };
        if !(0x21..=0x7e).contains(&byte) || byte == b'#' {
            return Err(malformed(
                "the decoded URL has a character a request target cannot carry",
            ));
        }
        out.push(byte);
    }
    // Visible ASCII only, so always UTF-8.
    String::from_utf8(out).map_err(|_| malformed("not UTF-8"))
}

/// The host of an authority as the routing table keys it: lowercase, IPv6 brackets removed.
fn normalized_host(authority: &Authority) -> String {
    authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
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
                warm_connections: 0,
                warm_refresh: d,
            },
            prewarm: false,
            warm_probe: None,
            rate_limit: crate::config::RateLimitConfig {
                profile: &crate::ratelimit::profile::NONE,
                budget: None,
                rules: Vec::new(),
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

    #[test]
    fn prefix_form_matches_host_and_port_and_ignores_the_scheme() {
        assert_eq!(
            resolve("/https://api.bybit.com/v5/market/time"),
            Ok((0, "/v5/market/time".into()))
        );
        assert_eq!(
            resolve("/http://API.Bybit.com:443/v5?a=b"),
            Ok((0, "/v5?a=b".into()))
        );
        assert_eq!(resolve("/HTTPS://api.bybit.com"), Ok((0, "/".into())));
        assert_eq!(
            resolve("/https://api.bybit.com?x=1"),
            Ok((0, "/?x=1".into()))
        );
        assert_eq!(
            resolve("/https://exchange.test:9443/p"),
            Ok((2, "/p".into()))
        );
        assert_eq!(
            resolve("/https://exchange.test:1234/p"),
            Err(ErrorKind::NotAllowed)
        );
        assert_eq!(
            resolve("/https://exchange.test/p"),
            Err(ErrorKind::NotAllowed)
        );
        assert_eq!(
            resolve("/https://evil.example/p"),
            Err(ErrorKind::NotAllowed)
        );
        assert_eq!(
            resolve("/https://api.bybit.com.evil.example/p"),
            Err(ErrorKind::NotAllowed)
        );
        assert_eq!(resolve("/https://127.0.0.1/p"), Err(ErrorKind::NotAllowed));
        assert_eq!(
            resolve("/https://api.bybit.com:99999/p"),
            Err(ErrorKind::BadRequest)
        );
        assert_eq!(
            resolve("/https://u:p@api.bybit.com/p"),
            Err(ErrorKind::BadRequest)
        );
        assert_eq!(resolve("/https:///p"), Err(ErrorKind::BadRequest));
        // Not prefix form: route form, which names no such upstream.
        assert_eq!(
            resolve("/https:/api.bybit.com/p"),
            Err(ErrorKind::NotAllowed)
        );
        assert_eq!(
            resolve("/ftp://api.bybit.com/p"),
            Err(ErrorKind::NotAllowed)
        );
    }

    #[test]
    fn prefix_form_keeps_the_query_byte_for_byte() {
        let query = "/v5/x?category=spot&symbol=BTC%2FUSDT&x=a+b&&empty=&sig=AbC%3D";
        assert_eq!(
            resolve(&format!("/https://api.bybit.com{query}")),
            Ok((0, query.into()))
        );
    }

    #[test]
    fn encoded_prefix_form_is_decoded_exactly_once() {
        assert_eq!(
            resolve("/https%3A%2F%2Fapi.bybit.com%2Fv5%2Fmarket%2Ftickers%3Fcategory%3Dspot"),
            Ok((0, "/v5/market/tickers?category=spot".into()))
        );
        // ccxt encodes the bot's own escapes again (`%2F` as `%252F`, `+` as `%2B`): one
        // decoding gives back the URL the bot built and signed, never a second.
        assert_eq!(
            resolve(
                "/https%3a%2f%2fAPI.BYBIT.COM%3A443%2Fv5%2Fx%3Fsymbol%3DBTC%252FUSDT%26q%3Da%2Bb%2520c%26signature%3DAbC%253D"
            ),
            Ok((
                0,
                "/v5/x?symbol=BTC%2FUSDT&q=a+b%20c&signature=AbC%3D".into()
            ))
        );
        assert_eq!(
            resolve("/http%3A%2F%2Fexchange.test%3A9443%3Fa%3D1"),
            Ok((2, "/?a=1".into()))
        );
        assert_eq!(
            resolve("/https%3A%2F%2Fevil.example%2Fx%3Fa%3D1"),
            Err(ErrorKind::NotAllowed)
        );
        assert_eq!(
            resolve("/https%3A%2F%2Fexchange.test%3A1234%2Fx%3Fa%3D1"),
            Err(ErrorKind::NotAllowed)
        );
        for malformed in [
            "/https%3A%2F%2Fapi.bybit.com%2Fx%3Fa%3D%",
            "/https%3A%2F%2Fapi.bybit.com%2Fx%3Fa%3D%4",
            "/https%3A%2F%2Fapi.bybit.com%2Fx%3Fa%3D%zz",
            "/https%3A%2F%2Fapi.bybit.com%2Fx%3Fa%3D%+1",
            // Characters no request target carries: CR LF (header injection), space, fragment.
            "/https%3A%2F%2Fapi.bybit.com%2Fx%0D%0AHost:%20evil",
            "/https%3A%2F%2Fapi.bybit.com%2Fx%20y",
            "/https%3A%2F%2Fapi.bybit.com%2Fx%23frag",
            "/https%3A%2F%2Fapi.bybit.com%2Fx%C3%A9",
            "/https%3A%2F%2F%2Fx",
        ] {
            assert_eq!(
                resolve(malformed),
                Err(ErrorKind::BadRequest),
                "{malformed}"
            );
        }
        // Encoded twice is not the encoded form: route form, naming no upstream.
        assert_eq!(
            resolve("/https%3A%252F%252Fapi.bybit.com%2Fx"),
            Err(ErrorKind::NotAllowed)
        );
    }

    #[test]
    fn the_encoded_query_is_cut_from_logs() {
        assert_eq!(
            loggable_target("/https%3A%2F%2Fapi.bybit.com%2Fv5%3Fsignature%3Dsecret"),
            "/https%3A%2F%2Fapi.bybit.com%2Fv5"
        );
        assert_eq!(
            loggable_target("/http%3a%2f%2fh%2Fv5%3fsignature%3Dsecret"),
            "/http%3a%2f%2fh%2Fv5"
        );
        assert_eq!(
            loggable_target("/https%3A%2F%2Fh?sig=1"),
            "/https%3A%2F%2Fh"
        );
        assert_eq!(loggable_target("/bybit/v5?sig%3F=1"), "/bybit/v5?sig%3F=1");
    }

    #[test]
    fn tunnels_resolve_to_the_host_and_keep_paths_as_they_are() {
        let routes = routes();
        let authority = |a: &str| a.parse::<Authority>().unwrap();
        assert_eq!(
            routes.plain_tunnel(&authority("api.bybit.com:80")).ok(),
            Some(0)
        );
        assert_eq!(
            routes.plain_tunnel(&authority("exchange.test:80")).ok(),
            None
        );
        assert_eq!(
            routes.plain_tunnel(&authority("evil.example:80")).ok(),
            None
        );
        assert_eq!(routes.exact(&authority("exchange.test:9443")), Some(2));
        assert_eq!(routes.exact(&authority("api.bybit.com:80")), None);
        let inside = |target: &str| {
            routes
                .in_tunnel(&target.parse().unwrap(), 0)
                .map(|r| (r.upstream, r.path_and_query.as_str().to_owned()))
                .map_err(|e| e.kind)
        };
        // Inside a tunnel, `/bybit/...` is a path on the exchange, not route form.
        assert_eq!(inside("/bybit/v5?a=b"), Ok((0, "/bybit/v5?a=b".into())));
        assert_eq!(inside("http://api.bybit.com/v5"), Ok((0, "/v5".into())));
        assert_eq!(
            inside("http://exchange.test:8443/v5"),
            Err(ErrorKind::NotAllowed)
        );
        assert_eq!(inside("*"), Err(ErrorKind::BadRequest));
        assert!(routes.host_matches("api.bybit.com", 0, 80));
        assert!(routes.host_matches("API.bybit.com:80", 0, 80));
        assert!(!routes.host_matches("api.bybit.com:8080", 0, 80));
        assert!(!routes.host_matches("exchange.test", 0, 80));
        assert!(!routes.host_matches("evil.example", 0, 80));
    }
}
