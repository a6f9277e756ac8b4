//! Addresses as written in the config: upstream urls, name servers, `host:port` text.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

/// Hides `user:password@` in a URL before it is echoed in a message or dump.
pub(super) fn redact_url(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    match url[start..end].rfind('@') {
        Some(at) => format!("{}***@{}", &url[..start], &url[start + at + 1..]),
        None => url.to_string(),
    }
}

/// `IP` (port 53) or `IP:PORT`; IPv6 with a port needs brackets.
pub(super) fn parse_nameserver(text: &str) -> Option<SocketAddr> {
    let text = text.trim();
    text.parse::<SocketAddr>().ok().or_else(|| {
        let bare = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text);
        bare.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

/// `host:port`, with an IPv6 host bracketed.
pub(super) struct SocketAddrText<'a>(pub &'a str, pub u16);

impl fmt::Display for SocketAddrText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.contains(':') {
            true => write!(f, "[{}]:{}", self.0, self.1),
            false => write!(f, "{}:{}", self.0, self.1),
        }
    }
}

/// What an upstream url contributes to [`super::UpstreamConfig`].
pub(super) struct Target {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub authority: String,
}

/// Parses `scheme://host[:port][/]`; returns every problem found, each a full message.
pub(super) fn parse_upstream_url(url: &str) -> Result<Target, Vec<String>> {
    let shown = redact_url(url);
    let uri: http::Uri = url.parse().map_err(|e| {
        vec![format!(
            "invalid url `{shown}`: {e}; expected e.g. \"https://api.example.com\""
        )]
    })?;
    let mut errs = Vec::new();
    let tls = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => true,
        Some(s) if s.eq_ignore_ascii_case("http") => false,
        Some(s) => {
            errs.push(format!("url `{shown}` has scheme `{s}`; use http or https"));
            false
        }
        None => {
            errs.push(format!(
                "url `{shown}` has no scheme; write e.g. \"https://{shown}\""
            ));
            false
        }
    };
    let authority = uri.authority().filter(|a| !a.host().is_empty());
    if authority.is_none() {
        errs.push(format!(
            "url `{shown}` has no host; write e.g. \"https://api.example.com\""
        ));
    }
    if authority.is_some_and(|a| a.as_str().contains('@')) {
        errs.push(format!(
            "url `{shown}` contains userinfo (user@); credentials do not belong in the upstream url"
        ));
    }
    if authority.is_some_and(|a| a.port_u16() == Some(0)) {
        errs.push(format!(
            "url `{shown}` has port 0; give a real port or none"
        ));
    }
    if uri.query().is_some() || url.contains('#') {
        errs.push(format!(
            "url `{shown}` has a query or fragment; the upstream url takes none (send the query \
             with each request)"
        ));
    }
    let path = uri.path();
    if !(path.is_empty() || path == "/") {
        errs.push(format!(
            "url `{shown}` has the path `{path}`; a base path is not supported: use \
             scheme://host[:port] and put the full path in each request"
        ));
    }
    let Some(authority) = authority.filter(|_| errs.is_empty()) else {
        return Err(errs);
    };
    let raw_host = authority.host().to_ascii_lowercase();
    let mut host = raw_host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    // Canonical IP literals ("[0::1]" is "::1"), so equal addresses match and compare equal.
    if let Ok(ip) = host.parse::<IpAddr>() {
        host = ip.to_string();
    }
    let bracketed = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let default_port = if tls { 443 } else { 80 };
    let port = authority.port_u16().unwrap_or(default_port);
    let authority = if port == default_port {
        bracketed
    } else {
        format!("{bracketed}:{port}")
    };
    Ok(Target {
        tls,
        host,
        port,
        authority,
    })
}
