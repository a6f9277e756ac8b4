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
mod tests;
