//! Header rules: hop-by-hop removal in both directions, size limits, and what counts as a
//! secret for logging.

use std::borrow::Cow;

use http::header::{self, HeaderMap, HeaderName};

use crate::error::{ErrorKind, ProxyError};

/// Most request header bytes (names + values + request target) sidepool accepts; larger
/// requests get 431 with the JSON error body.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Headers that describe one hop, never the exchange (RFC 9110 7.6.1), plus the legacy
/// `Proxy-Connection` and `Keep-Alive`. `Proxy-Authorization` is for sidepool, never forwarded.
/// `Transfer-Encoding` is also hop-by-hop here: hyper frames each hop's body itself.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::TRANSFER_ENCODING,
];

/// What a message's `Connection` header said, read while it was stripped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionOptions {
    /// The `close` option.
    pub close: bool,
    /// The `keep-alive` option (HTTP/1.0's opt-in to persistence).
    pub keep_alive: bool,
}

impl ConnectionOptions {
    /// True when the connection closes after this message, by its options and the version's
    /// default (HTTP/1.1 persists unless `close`; HTTP/1.0 closes unless `keep-alive`).
    pub fn says_close(self, version: http::Version) -> bool {
        match version {
            http::Version::HTTP_10 | http::Version::HTTP_09 => !self.keep_alive,
            _ => self.close,
        }
    }
}

/// Removes hop-by-hop headers, including every header named in `Connection`, and returns the
/// options `Connection` carried.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> ConnectionOptions {
    // Runs twice per request. Most messages carry no hop-by-hop header, or only `Connection:
    // keep-alive`, so one pass of cheap name comparisons decides which (hashed) removals to do.
    let mut present = 0u16;
    for name in headers.keys() {
        // A string match compiles to a length switch and one comparison; most names miss on
        // the length alone.
        let i = match name.as_str() {
            "connection" => 0,
            "keep-alive" => 1,
            "proxy-connection" => 2,
            "proxy-authenticate" => 3,
            "proxy-authorization" => 4,
            "te" => 5,
            "trailer" => 6,
            "upgrade" => 7,
            "transfer-encoding" => 8,
            _ => continue,
        };
        present |= 1 << i;
    }
    if present == 0 {
        return ConnectionOptions::default();
    }
    let mut options = ConnectionOptions::default();
    let mut named = Vec::new();
    let tokens = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim);
    for token in tokens {
        if token.eq_ignore_ascii_case("close") {
            options.close = true;
        } else if token.eq_ignore_ascii_case("keep-alive") {
            options.keep_alive = true;
        } else if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
            named.push(name);
        }
    }
    for name in named {
        headers.remove(name);
    }
    for (i, hop) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(hop);
        }
    }
    // Transfer-Encoding overrides Content-Length (RFC 9112 6.3); hyper framed the body by the
    // former, so the latter must not travel on to describe a body it does not match.
    if present & (1 << (HOP_BY_HOP.len() - 1)) != 0 {
        headers.remove(header::CONTENT_LENGTH);
    }
    options
}

/// 431 when the request's headers exceed [`MAX_HEADER_BYTES`]. (More than 100 header fields,
/// or a head over 64 KiB, is refused by hyper itself while parsing, with a bare 431.)
pub fn check_size(headers: &HeaderMap, target_len: usize) -> Result<(), ProxyError> {
    let bytes = target_len
        + headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    if bytes > MAX_HEADER_BYTES {
        return Err(ProxyError::new(
            ErrorKind::HeadersTooLarge,
            format!("request headers are {bytes} bytes; the limit is {MAX_HEADER_BYTES}"),
        ));
    }
    Ok(())
}

/// True for headers whose values are credentials: `Authorization`, cookies, and the exchanges'
/// key, signature and passphrase headers (`X-BAPI-*`, `X-MBX-APIKEY`, `OK-ACCESS-*`, ...).
/// Errs on the side of redacting: any name mentioning a key, a signature, a secret, a token,
/// a passphrase or auth counts.
pub fn is_secret_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    const EXACT: [&str; 4] = [
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
    ];
    const PREFIXES: [&str; 3] = ["x-bapi-", "ok-access-", "x-mbx-"];
    const PARTS: [&str; 8] = [
        "key", "sign", "secret", "token", "pass", "auth", "cookie", "nonce",
    ];
    EXACT.contains(&name.as_str())
        || PREFIXES.iter().any(|p| name.starts_with(p))
        || PARTS.iter().any(|p| name.contains(p))
}

/// True for query parameters whose values are credentials (`signature`, `sign`, keys, tokens,
/// passphrases, auth), matched case-insensitively on the name as the exchange decodes it:
/// `%73ignature` is `signature`, and so is a name encoded twice (up to four times).
///
/// Runs for every parameter of every logged request: stack buffers only, no allocation, no
/// substring searcher.
fn is_secret_param(name: &[u8]) -> bool {
    const MAX: usize = 64;
    if name.len() > MAX {
        // A name this long is nobody's field name: redact rather than look further.
        return true;
    }
    let mut buffers = [[0u8; MAX]; 2];
    buffers[0][..name.len()].copy_from_slice(name);
    let (mut current, mut len) = (0, name.len());
    for _ in 0..4 {
        let text = &mut buffers[current][..len];
        text.make_ascii_lowercase();
        if has_secret_part(text) {
            return true;
        }
        if !text.iter().any(|&b| b == b'%' || b == b'+') {
            return false;
        }
        let [first, second] = &mut buffers;
        let (from, to) = if current == 0 {
            (&first[..len], &mut second[..])
        } else {
            (&second[..len], &mut first[..])
        };
        let decoded = percent_decode_into(from, to);
        if decoded == len && from == &to[..len] {
            return false;
        }
        len = decoded;
        current ^= 1;
    }
    let text = &mut buffers[current][..len];
    text.make_ascii_lowercase();
    has_secret_part(text)
}

/// Whether a lowercase name contains "sign", "secret", "key", "token", "pass" or "auth",
/// looked up by first letter.
fn has_secret_part(name: &[u8]) -> bool {
    (0..name.len()).any(|at| {
        let rest = &name[at..];
        match rest[0] {
            b's' => rest.starts_with(b"sign") || rest.starts_with(b"secret"),
            b'k' => rest.starts_with(b"key"),
            b't' => rest.starts_with(b"token"),
            b'p' => rest.starts_with(b"pass"),
            b'a' => rest.starts_with(b"auth"),
            _ => false,
        }
    })
}

/// Decodes `%XX` escapes (and `+` as a space, as form encoding does) from `from` into `to`
/// (at least as long); an invalid escape stays as it is. Returns the decoded length.
fn percent_decode_into(from: &[u8], to: &mut [u8]) -> usize {
    let (mut i, mut len) = (0, 0);
    while i < from.len() {
        let byte = match (from[i], from.get(i + 1..i + 3)) {
            (b'%', Some(&[hi, lo])) if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => {
                i += 2;
                (hex(hi) << 4) | hex(lo)
            }
            (b'+', _) => b' ',
            (byte, _) => byte,
        };
        i += 1;
        to[len] = byte;
        len += 1;
    }
    len
}

fn hex(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

/// The name part of a `name=value` query pair.
fn param_name(pair: &[u8]) -> &[u8] {
    pair.iter()
        .position(|&b| b == b'=')
        .map_or(pair, |end| &pair[..end])
}

/// The path and query with secret query parameter values replaced by `REDACTED`, for logs
/// only: names are matched percent-decoded but written as they came, and what is forwarded is
/// never touched.
///
/// ```
/// assert_eq!(
///     sidepool::proxy::redact_path("/api/v3/order?symbol=BTCUSDT&signature=abc"),
///     "/api/v3/order?symbol=BTCUSDT&signature=REDACTED"
/// );
/// ```
pub fn redact_path(path_and_query: &str) -> Cow<'_, str> {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return Cow::Borrowed(path_and_query);
    };
    let pairs = || query.as_bytes().split(|&b| b == b'&');
    if !pairs().any(|pair| is_secret_param(param_name(pair))) {
        return Cow::Borrowed(path_and_query);
    }
    let mut out = String::with_capacity(path_and_query.len());
    out.push_str(path);
    out.push('?');
    // Split on ASCII bytes of a str, so every piece is a str again.
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        let name = pair.split_once('=').map_or(pair, |(name, _)| name);
        if is_secret_param(name.as_bytes()) {
            out.push_str(name);
            out.push_str("=REDACTED");
        } else {
            out.push_str(pair);
        }
    }
    Cow::Owned(out)
}

/// Headers formatted for trace logs, secret values replaced by `REDACTED`.
pub fn redacted_headers(headers: &HeaderMap) -> String {
    let mut out = String::new();
    for (name, value) in headers {
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(name.as_str());
        out.push_str(": ");
        if is_secret_header(name.as_str()) {
            out.push_str("REDACTED");
        } else {
            out.push_str(&String::from_utf8_lossy(value.as_bytes()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn strips_standard_and_connection_named_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Hop"),
        );
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("x-bapi-api-key", HeaderValue::from_static("k"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("x-bapi-api-key"));
    }

    #[test]
    fn close_detection_follows_version_defaults() {
        let says_close = |connection: Option<&'static str>, version| {
            let mut headers = HeaderMap::new();
            if let Some(value) = connection {
                headers.insert(header::CONNECTION, HeaderValue::from_static(value));
            }
            strip_hop_by_hop(&mut headers).says_close(version)
        };
        assert!(!says_close(None, http::Version::HTTP_11));
        assert!(says_close(None, http::Version::HTTP_10));
        assert!(says_close(Some("Close"), http::Version::HTTP_11));
        assert!(says_close(Some("x-a, close"), http::Version::HTTP_11));
        assert!(!says_close(Some("keep-alive"), http::Version::HTTP_11));
        assert!(!says_close(Some("Keep-Alive"), http::Version::HTTP_10));
        assert!(says_close(Some("x-a"), http::Version::HTTP_10));
    }

    #[test]
    fn messages_without_hop_headers_are_left_alone() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        headers.insert("x-bapi-api-key", HeaderValue::from_static("k"));
        let before = headers.clone();
        assert_eq!(strip_hop_by_hop(&mut headers), ConnectionOptions::default());
        assert_eq!(headers, before);
    }

    #[test]
    fn each_hop_header_alone_is_removed() {
        // Also checks that the name match in `strip_hop_by_hop` and the table agree: a wrong
        // index would remove an absent entry and leave this one.
        for hop in &HOP_BY_HOP {
            let mut headers = HeaderMap::new();
            headers.insert(hop.clone(), HeaderValue::from_static("x"));
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("a/b"));
            strip_hop_by_hop(&mut headers);
            assert_eq!(headers.len(), 1, "{hop}: {headers:?}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "Content-Length alone stays");
    }

    #[test]
    fn secrets_are_recognised() {
        for name in [
            "Authorization",
            "Cookie",
            "Set-Cookie",
            "X-BAPI-API-KEY",
            "X-BAPI-SIGN",
            "X-MBX-APIKEY",
            "OK-ACCESS-PASSPHRASE",
            "OK-ACCESS-SIGN",
            "api-key",
            "X-Signature",
        ] {
            assert!(is_secret_header(name), "{name}");
        }
        assert!(!is_secret_header("content-type"));
    }

    #[test]
    fn secret_query_values_are_redacted() {
        assert_eq!(
            redact_path("/api/v3/order?symbol=BTCUSDT&timestamp=1&signature=abc123"),
            "/api/v3/order?symbol=BTCUSDT&timestamp=1&signature=REDACTED"
        );
        assert_eq!(
            redact_path("/x?sign=1&apiKey=2"),
            "/x?sign=REDACTED&apiKey=REDACTED"
        );
        assert!(matches!(
            redact_path("/v5/market/tickers?category=spot"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn percent_encoded_secret_names_are_redacted_too() {
        assert_eq!(
            redact_path("/o?%73ignature=abc&%53IGN=1&api%4Bey=2&x=%73ignature"),
            "/o?%73ignature=REDACTED&%53IGN=REDACTED&api%4Bey=REDACTED&x=%73ignature"
        );
        assert_eq!(redact_path("/o?pass+phrase=1"), "/o?pass+phrase=REDACTED");
        assert_eq!(
            redact_path("/o?%2573ignature=1&%25%37%33ign=2"),
            "/o?%2573ignature=REDACTED&%25%37%33ign=REDACTED",
            "encoded twice"
        );
        assert!(matches!(redact_path("/o?q=%zz&p=%4"), Cow::Borrowed(_)));
        let long = format!("/o?{}=1", "n".repeat(100));
        assert!(
            redact_path(&long).ends_with("=REDACTED"),
            "overlong names are redacted"
        );
    }

    #[test]
    fn header_limits_give_431() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-big",
            HeaderValue::from_str(&"a".repeat(MAX_HEADER_BYTES)).unwrap(),
        );
        assert_eq!(
            check_size(&headers, 10).unwrap_err().kind,
            ErrorKind::HeadersTooLarge
        );
        assert!(check_size(&HeaderMap::new(), 10).is_ok());
    }
}
