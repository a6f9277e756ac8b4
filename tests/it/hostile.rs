//! Hostile clients: request smuggling, SSRF and open-proxy attempts, bodies that never end,
//! slowloris. The rule throughout: nothing the client did not frame unambiguously, and nothing
//! addressed to an unconfigured destination, ever reaches an upstream.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::harness::{
    PATIENCE, Sidepool, config_toml, error_kind, get, https, raw, send_fresh,
};
use crate::support::upstream::TestUpstream;

/// sidepool in front of two exchanges: `ex` (exchange.test) and `other` (other.test).
async fn two_upstreams(ex: &TestUpstream, other: &TestUpstream, pool: &str) -> Sidepool {
    Sidepool::start(&config_toml(
        pool,
        &[
            https("ex", "exchange.test", ex.port()),
            https("other", "other.test", other.port()),
        ],
    ))
    .await
}

/// Writes `bytes` on a new connection and reads until sidepool closes it (bounded by
/// [`PATIENCE`]). Returns what was read and whether the connection was closed.
async fn until_closed(addr: SocketAddr, bytes: &[u8]) -> (String, bool) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(bytes).await.expect("write");
    read_until_closed(&mut tcp).await
}

async fn read_until_closed(tcp: &mut TcpStream) -> (String, bool) {
    let deadline = Instant::now() + PATIENCE;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// The status code of the first response in `text` (0 when there is none).
fn status_of(text: &str) -> u16 {
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// One request head for `target`, on its own connection that closes after the response.
async fn one_shot(addr: SocketAddr, target: &str) -> String {
    raw(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: sidepool.test\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
}

/// Framing that hyper refuses while parsing the head: conflicting or unsupported
/// Transfer-Encoding, Transfer-Encoding in HTTP/1.0, and Content-Length values that are lists,
/// signed, hexadecimal, garbage or overflowing. Each gets a bare 400, the connection is closed
/// (the bytes after the head are never read as a second request), and no upstream connection
/// is even opened.
#[tokio::test]
async fn conflicting_or_invalid_framing_is_400_and_nothing_leaves() {
    let ex = TestUpstream::start().await;
    let other = TestUpstream::start().await;
    let sidepool = two_upstreams(&ex, &other, "").await;
    let body = "5\r\nhello\r\n0\r\n\r\nGET /ex/smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let heads = [
        // chunked must be the final coding; anything else leaves the length unknown.
        "POST /ex/a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked, identity",
        "POST /ex/a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked",
        "POST /ex/a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity",
        "POST /ex/a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked",
        // obs-fold: a folded Transfer-Encoding line.
        "POST /ex/a HTTP/1.1\r\nHost: a\r\nX-Fold: 1\r\n Transfer-Encoding: chunked",
        // HTTP/1.0 has no Transfer-Encoding.
        "POST /ex/a HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked",
        "POST /ex/a HTTP/1.0\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked",
        // Content-Length lists (even of equal values), signs, hex, garbage, overflow.
        "POST /ex/a HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6",
        "POST /ex/a HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5",
        "POST /ex/a HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5",
        "POST /ex/a HTTP/1.1\r\nHost: a\r\nContent-Length: +5",
        "POST /ex/a HTTP/1.1\r\nHost: a\r\nContent-Length: -5",
        "POST /ex/a HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5",
        "POST /ex/a HTTP/1.1\r\nHost: a\r\nContent-Length: 5x",
        "POST /ex/a HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999",
    ];
    for head in heads {
        let (text, closed) =
            until_closed(sidepool.proxy, format!("{head}\r\n\r\n{body}").as_bytes()).await;
        assert_eq!(status_of(&text), 400, "{head:?}: {text:?}");
        assert!(
            text.contains("connection: close"),
            "{head:?}: bare 400 from the parser: {text:?}"
        );
        assert_eq!(
            text.matches("HTTP/1.1 ").count(),
            1,
            "{head:?}: one response, nothing after it was parsed: {text:?}"
        );
        assert!(closed, "{head:?}: the connection stays open");
    }
    assert_eq!(
        ex.stats().tcp_connections,
        0,
        "nothing reached the exchange"
    );
    assert_eq!(other.stats().tcp_connections, 0);
    let (status, _, _) = send_fresh(sidepool.proxy, get("/ex/after")).await;
    assert_eq!(status, StatusCode::OK, "the path to the exchange works");
    assert_eq!(ex.stats().requests, 1);
}

/// Content-Length together with Transfer-Encoding: chunked, in either order (the classic
/// CL.TE / TE.CL smuggling shapes): the body is framed by chunked and the Content-Length is
/// not forwarded, and because such a message may be an attack the connection is closed after
/// the response (RFC 9112 6.1), so the bytes behind the chunked body, a complete request, are
/// never parsed. (errors.rs covers the body; this pins the close and the smuggled request.)
#[tokio::test]
async fn request_smuggled_behind_a_conflicting_length_never_reaches_the_upstream() {
    let ex = TestUpstream::start().await;
    let other = TestUpstream::start().await;
    let sidepool = two_upstreams(&ex, &other, "").await;
    let smuggled = "GET /ex/smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let requests = [
        format!(
            "POST /ex/cl-te HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
            5 + smuggled.len()
        ),
        format!(
            "POST /ex/te-cl HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n{smuggled}"
        ),
    ];
    for request in &requests {
        let (text, closed) = until_closed(sidepool.proxy, request.as_bytes()).await;
        assert_eq!(status_of(&text), 200, "{text:?}");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text:?}");
        assert!(
            closed,
            "the connection was kept open after an ambiguous request"
        );
    }
    let got = ex.received();
    let paths: Vec<&str> = got.iter().map(|r| r.path_and_query.as_str()).collect();
    assert_eq!(paths, ["/cl-te", "/te-cl"]);
    assert_eq!(got[0].body, b"");
    assert_eq!(got[1].body, b"hello");
    for r in &got {
        assert!(
            r.header("content-length")
                .is_none_or(|v| v == r.body.len().to_string()),
            "a stale Content-Length travelled on: {:?}",
            r.headers
        );
    }
    assert_eq!(other.stats().tcp_connections, 0);
}

/// A chunked body whose chunk framing is broken (a non-hex size, a 20-digit size that
/// overflows 64 bits, a size with leading space, data not followed by CRLF), with a complete
/// request pipelined behind it: the head has already been forwarded when the body turns out
/// broken, so the upstream connection is aborted mid-body, never terminated as if the body were
/// complete. The upstream never records a request, the pipelined one never reaches it, the
/// client gets an error and its connection is closed, and the aborted upstream connection is
/// closed rather than pooled. The client's error is reported as such: 400 `bad_request`, not
/// an upstream failure.
#[tokio::test]
async fn broken_chunked_body_is_never_completed_upstream() {
    let ex = TestUpstream::start().await;
    let other = TestUpstream::start().await;
    let sidepool = two_upstreams(&ex, &other, "").await;
    let smuggled = "GET /ex/smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let bodies = [
        "zz\r\nhello\r\n0\r\n\r\n",
        "10000000000000000005\r\nhello\r\n0\r\n\r\n",
        " 5\r\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXX0\r\n\r\n",
        "5\nhello\n0\n\n",
    ];
    for body in bodies {
        let request = format!(
            "POST /ex/order HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{body}{smuggled}"
        );
        let (text, closed) = until_closed(sidepool.proxy, request.as_bytes()).await;
        assert_eq!(status_of(&text), 400, "{body:?}: {text:?}");
        assert!(
            text.contains("x-sidepool-error: bad_request"),
            "{body:?}: {text:?}"
        );
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{body:?}: {text:?}");
        assert!(
            closed,
            "{body:?}: the connection stays open after a broken body"
        );
        sidepool.wait_gauges("ex", (0.0, 0.0, 0.0, 0.0)).await;
    }
    assert_eq!(ex.stats().requests, 0, "{:?}", ex.received());
    ex.wait_open(0).await;
    let (status, _, _) = send_fresh(sidepool.proxy, get("/ex/after")).await;
    assert_eq!(status, StatusCode::OK);
    let paths: Vec<String> = ex
        .received()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect();
    assert_eq!(paths, ["/after"]);
}

/// Absolute-form targets naming anything but a configured host and port: IP literals of the
/// machine the exchange runs on (IPv6, IPv4-mapped, decimal, hex, octal, short forms),
/// `localhost` (named in the test certificate), the default port 80 of a configured host,
/// one configured host at another upstream's port, look-alike hosts, a trailing-dot FQDN (the
/// allow-list is matched by exact name, case-insensitively; `exchange.test.` is not
/// normalised to `exchange.test`, so it is refused, which fails closed) and `https://` to
/// an unconfigured host. Each is 403 `not_allowed` and no upstream sees a connection.
#[tokio::test]
async fn absolute_form_to_unconfigured_destinations_is_403() {
    let ex = TestUpstream::start().await;
    let other = TestUpstream::start().await;
    let sidepool = two_upstreams(&ex, &other, "").await;
    let (p, op) = (ex.port(), other.port());
    let targets = [
        format!("http://[::1]:{p}/x"),
        format!("http://[::ffff:127.0.0.1]:{p}/x"),
        format!("http://2130706433:{p}/x"),
        format!("http://0x7f000001:{p}/x"),
        format!("http://0177.0.0.1:{p}/x"),
        format!("http://127.1:{p}/x"),
        format!("http://localhost:{p}/x"),
        "http://exchange.test:80/x".to_owned(),
        format!("http://other.test:{p}/x"),
        format!("http://exchange.test:{op}/x"),
        format!("http://exchange.test.evil.test:{p}/x"),
        format!("http://exchange.tes:{p}/x"),
        format!("http://xexchange.test:{p}/x"),
        format!("http://exchange.test.:{p}/x"),
        "https://evil.test/x".to_owned(),
    ];
    for target in &targets {
        let text = one_shot(sidepool.proxy, target).await;
        assert_eq!(status_of(&text), 403, "{target}: {text:?}");
        assert!(
            text.contains("x-sidepool-error: not_allowed"),
            "{target}: {text:?}"
        );
        assert!(text.contains("\"upstream\":null"), "{target}: {text:?}");
    }
    // The same refusal through an ordinary client, with sidepool's JSON body.
    let (status, headers, body) = send_fresh(sidepool.proxy, get("http://[::1]/x")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(headers["x-sidepool-error"], "not_allowed");
    assert_eq!(error_kind(&body), "not_allowed");
    assert_eq!(ex.stats().tcp_connections, 0, "nothing reached ex");
    assert_eq!(other.stats().tcp_connections, 0, "nothing reached other");
    for target in [
        format!("http://exchange.test:{p}/ok"),
        format!("http://other.test:{op}/ok"),
    ] {
        assert_eq!(status_of(&one_shot(sidepool.proxy, &target).await), 200);
    }
    assert_eq!((ex.stats().requests, other.stats().requests), (1, 1));
}

/// A userinfo in a proxy request is never honoured, whichever side of the `@` the configured
/// host is on: `exchange.test@evil.test` (host evil.test, which a naive parser would take for
/// exchange.test) and `evil.test@exchange.test` (credentials `evil.test` for exchange.test)
/// are both 400 `bad_request`, so no credentials are forwarded and no host is guessed; a
/// backslash variant is refused by the parser. Nothing reaches an upstream.
#[tokio::test]
async fn userinfo_in_a_proxy_request_is_refused() {
    let ex = TestUpstream::start().await;
    let other = TestUpstream::start().await;
    let sidepool = two_upstreams(&ex, &other, "").await;
    let p = ex.port();
    for target in [
        "http://exchange.test@evil.test/x".to_owned(),
        format!("http://evil.test@exchange.test:{p}/x"),
        format!("http://exchange.test:{p}@evil.test/x"),
        format!("https://evil.test:pw@exchange.test:{p}/x"),
    ] {
        let text = one_shot(sidepool.proxy, &target).await;
        assert_eq!(status_of(&text), 400, "{target}: {text:?}");
        assert!(
            text.contains("x-sidepool-error: bad_request"),
            "{target}: {text:?}"
        );
    }
    let text = one_shot(sidepool.proxy, "http://exchange.test\\@evil.test/x").await;
    assert_eq!(status_of(&text), 400, "{text:?}");
    assert_eq!(ex.stats().tcp_connections, 0);
    assert_eq!(other.stats().tcp_connections, 0);
    let text = one_shot(sidepool.proxy, &format!("http://exchange.test:{p}/ok")).await;
    assert_eq!(status_of(&text), 200);
}

/// What legitimately routes in absolute form: the host is matched case-insensitively (RFC
/// 9110 4.2.3), `https://` is fetched by sidepool itself, and a URL without a port means the
/// upstream's own port. In each case the exchange receives the origin-form path and the
/// upstream's own authority as Host, never the spelling the client used.
#[tokio::test]
async fn absolute_form_host_match_is_case_insensitive_and_host_is_rewritten() {
    let ex = TestUpstream::start().await;
    let other = TestUpstream::start().await;
    let sidepool = two_upstreams(&ex, &other, "").await;
    let p = ex.port();
    for target in [
        format!("http://EXCHANGE.TEST:{p}/upper"),
        format!("https://exchange.test:{p}/https"),
        "http://Exchange.Test/no-port".to_owned(),
    ] {
        assert_eq!(
            status_of(&one_shot(sidepool.proxy, &target).await),
            200,
            "{target}"
        );
    }
    let got = ex.received();
    let paths: Vec<&str> = got.iter().map(|r| r.path_and_query.as_str()).collect();
    assert_eq!(paths, ["/upper", "/https", "/no-port"]);
    let authority = format!("exchange.test:{p}");
    for r in &got {
        assert_eq!(r.target, r.path_and_query, "origin form upstream");
        assert_eq!(r.header_all("host"), [authority.as_str()]);
    }
    assert_eq!(other.stats().tcp_connections, 0);
}

/// Route-mode tricks: a scheme-relative `//evil.test/x`, a percent-encoded upstream name
/// (names are not decoded), dot segments in place of the name, `name@host`, a differently
/// cased name (route names are exact): each 403 `not_allowed`. Dot segments after a valid
/// name stay within that upstream: `/ex/../other/x` goes to `ex`, verbatim, never to `other`.
#[tokio::test]
async fn route_mode_tricks_never_escape_the_named_upstream() {
    let ex = TestUpstream::start().await;
    let other = TestUpstream::start().await;
    let sidepool = two_upstreams(&ex, &other, "").await;
    for target in [
        "//evil.test/x",
        "//other.test/x",
        "/%65x/x",
        "/%6Fther/x",
        "/../x",
        "/./ex/x",
        "/..%2fex/x",
        "/ex@evil.test/x",
        "/ex:443/x",
        "/EX/x",
    ] {
        let text = one_shot(sidepool.proxy, target).await;
        assert_eq!(status_of(&text), 403, "{target}: {text:?}");
        assert!(
            text.contains("x-sidepool-error: not_allowed"),
            "{target}: {text:?}"
        );
    }
    assert_eq!(ex.stats().tcp_connections, 0);
    assert_eq!(other.stats().tcp_connections, 0);
    assert_eq!(
        status_of(&one_shot(sidepool.proxy, "/ex/../other/x").await),
        200
    );
    let got = ex.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path_and_query, "/../other/x");
    assert_eq!(other.stats().tcp_connections, 0, "other never reached");
}

/// The Host header never selects the upstream: in route mode the name wins, in absolute form
/// the URL's authority wins (RFC 9112 3.2.2), and either way the Host the exchange receives is
/// rewritten to the upstream's own authority, not the client's.
#[tokio::test]
async fn host_header_naming_another_upstream_is_ignored_and_rewritten() {
    let ex = TestUpstream::start().await;
    let other = TestUpstream::start().await;
    let sidepool = two_upstreams(&ex, &other, "").await;
    let (p, op) = (ex.port(), other.port());
    for target in [
        "/ex/route".to_owned(),
        format!("http://exchange.test:{p}/absolute"),
    ] {
        let mut req = get(&target);
        req.headers_mut()
            .insert("host", format!("other.test:{op}").parse().unwrap());
        let (status, _, _) = send_fresh(sidepool.proxy, req).await;
        assert_eq!(status, StatusCode::OK, "{target}");
    }
    let got = ex.received();
    let paths: Vec<&str> = got.iter().map(|r| r.path_and_query.as_str()).collect();
    assert_eq!(paths, ["/route", "/absolute"]);
    let authority = format!("exchange.test:{p}");
    for r in &got {
        assert_eq!(r.header_all("host"), [authority.as_str()]);
    }
    assert_eq!(other.stats().tcp_connections, 0, "other never reached");
}

/// A request body that never ends (Content-Length 1000, 10 bytes sent, then silence): the
/// exchange cannot answer an incomplete request, so `read_timeout` bounds it with 504
/// read_timeout and the client connection is closed; the upstream connection carrying the
/// half body is closed (reason `timeout`), never pooled; the exchange never records the
/// request; gauges return to exact values; another client is served meanwhile.
#[tokio::test]
async fn request_body_that_never_ends_is_cut_at_read_timeout() {
    let ex = TestUpstream::start().await;
    let other = TestUpstream::start().await;
    let sidepool = two_upstreams(
        &ex,
        &other,
        "max_connections_per_host = 2\nread_timeout = \"700ms\"\nrequest_timeout = \"30s\"",
    )
    .await;
    let mut slow = TcpStream::connect(sidepool.proxy).await.unwrap();
    slow.write_all(b"POST /ex/order HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n0123456789")
        .await
        .unwrap();
    let started = Instant::now();
    // The head reached the exchange, which waits for the rest of the body.
    ex.wait_in_flight(1).await;
    sidepool.wait_gauges("ex", (1.0, 0.0, 0.0, 0.0)).await;
    let (status, _, _) = send_fresh(sidepool.proxy, get("/ex/meanwhile")).await;
    assert_eq!(status, StatusCode::OK, "another client is served meanwhile");
    let (text, closed) = read_until_closed(&mut slow).await;
    let took = started.elapsed();
    assert_eq!(status_of(&text), 504, "{text:?}");
    assert!(text.contains("x-sidepool-error: read_timeout"), "{text:?}");
    assert!(
        closed,
        "the client connection with the unfinished body was closed"
    );
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(5),
        "cut after {took:?}"
    );
    sidepool.wait_gauges("ex", (0.0, 1.0, 0.0, 0.0)).await;
    ex.wait_open(1).await;
    let paths: Vec<String> = ex
        .received()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect();
    assert_eq!(paths, ["/meanwhile"], "the half body was never a request");
    let text = sidepool.metrics().await;
    assert!(
        text.contains("http_pool_connections_closed_total{upstream=\"ex\",reason=\"timeout\"} 1"),
        "{text}"
    );
    // The surviving connection is reused; the aborted one is gone.
    let (status, _, _) = send_fresh(sidepool.proxy, get("/ex/after")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ex.stats().tcp_connections, 2);
}

/// Slowloris: a client that keeps sending header bytes, one every 100 ms, never finishing the
/// head, is cut off at `header_read_timeout` (500 ms here) even though bytes keep coming (the
/// timer is not reset by progress), without a response or with 408; another client is served
/// meanwhile; nothing from the trickling client reaches the exchange.
#[tokio::test]
async fn slowloris_trickling_header_bytes_is_cut_at_header_read_timeout() {
    let ex = TestUpstream::start().await;
    let toml = config_toml("", &[https("ex", "exchange.test", ex.port())]).replace(
        "drain_timeout = \"5s\"",
        "drain_timeout = \"5s\"\nheader_read_timeout = \"500ms\"",
    );
    let sidepool = Sidepool::start(&toml).await;
    let mut slow = TcpStream::connect(sidepool.proxy).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /ex/slow HTTP/1.1\r\nHost: a\r\nX-Pad: ")
        .await
        .unwrap();
    let mut sent = 0;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let mut meanwhile = None;
    // At most 100 bytes (10 s); each pause is a read that returns early when sidepool closes.
    let cut = 'trickle: {
        for _ in 0..100 {
            match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break 'trickle true,
                Ok(Ok(n)) => {
                    got.extend_from_slice(&buf[..n]);
                    continue;
                }
                Err(_) => {}
            }
            if slow.write_all(b"a").await.is_err() {
                break 'trickle true;
            }
            sent += 1;
            if sent == 2 {
                let proxy = sidepool.proxy;
                meanwhile = Some(tokio::spawn(async move {
                    send_fresh(proxy, get("/ex/meanwhile")).await.0
                }));
            }
        }
        false
    };
    let took = started.elapsed();
    assert!(cut, "still connected after {took:?} and {sent} bytes");
    assert!(sent >= 3, "bytes kept coming until the cut: {sent}");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "cut after {took:?}"
    );
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    let meanwhile = meanwhile.expect("a second client was started");
    assert_eq!(meanwhile.await.unwrap(), StatusCode::OK);
    let paths: Vec<String> = ex
        .received()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect();
    assert_eq!(paths, ["/meanwhile"]);
}

/// An absolute-form target whose authority is followed directly by a fragment
/// (`http://exchange.test:PORT#x`) is never forwarded with an empty request-target
/// (`GET  HTTP/1.1`): the exchange gets `GET / HTTP/1.1` (the fragment dropped, as it is for
/// `/ex#x` in route mode), or the client a 400.
#[tokio::test]
async fn fragment_after_the_authority_is_not_forwarded_as_an_empty_target() {
    let ex = TestUpstream::start().await;
    let other = TestUpstream::start().await;
    let sidepool = two_upstreams(&ex, &other, "").await;
    let text = one_shot(
        sidepool.proxy,
        &format!("http://exchange.test:{}#@evil.test/x", ex.port()),
    )
    .await;
    match status_of(&text) {
        400 => assert!(text.contains("x-sidepool-error: bad_request"), "{text:?}"),
        200 => assert_eq!(ex.received()[0].path_and_query, "/"),
        _ => panic!("the exchange got a request it could not parse: {text:?}"),
    }
    assert_eq!(other.stats().tcp_connections, 0);
}

/// A port that is not a valid u16 (`http://exchange.test:99999/`) is never taken as "no
/// port" (which would send the request to exchange.test's configured port): it is refused.
#[tokio::test]
async fn out_of_range_port_is_refused() {
    let ex = TestUpstream::start().await;
    let other = TestUpstream::start().await;
    let sidepool = two_upstreams(&ex, &other, "").await;
    for target in [
        "http://exchange.test:99999/x".to_owned(),
        format!("http://exchange.test:{}/x", u32::from(ex.port()) + 65536),
    ] {
        let text = one_shot(sidepool.proxy, &target).await;
        assert!(matches!(status_of(&text), 400 | 403), "{target}: {text:?}");
    }
    assert_eq!(ex.stats().tcp_connections, 0);
}
