//! Drop-in addressing for unchanged clients: prefix form (`/https://host/path`, ccxt's
//! `proxyUrl`), its percent-encoded twin, and `CONNECT host:80` tunnels read as plain HTTP.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::harness::{
    PATIENCE, Process, Sidepool, collect, config_toml, error_kind, get, https, raw, request,
    send_fresh,
};
use crate::support::upstream::{Reply, TestUpstream};

/// Two upstreams on the same test exchange: `ex` (exchange.test) and `other` (other.test).
async fn two_upstreams(upstream: &TestUpstream) -> Sidepool {
    Sidepool::start(&config_toml(
        "",
        &[
            https("ex", "exchange.test", upstream.port()),
            https("other", "other.test", upstream.port()),
        ],
    ))
    .await
}

#[tokio::test]
async fn prefix_form_reaches_the_upstream_by_host_and_port_whatever_the_scheme() {
    let upstream = TestUpstream::start().await;
    let sidepool = two_upstreams(&upstream).await;
    let port = upstream.port();
    let query = "/api/v3/ticker/price?symbol=BTC%2FUSDT&x=a+b&&empty=";
    for (target, host) in [
        (format!("/https://other.test:{port}{query}"), "other.test"),
        (
            format!("/http://exchange.test:{port}{query}"),
            "exchange.test",
        ),
        // No port named: the host's only upstream.
        (format!("/https://OTHER.test{query}"), "other.test"),
    ] {
        let (status, _, _) = send_fresh(sidepool.proxy, get(&target)).await;
        assert_eq!(status, StatusCode::OK, "{target}");
        let got = upstream.received().pop().unwrap();
        assert_eq!(got.path_and_query, query, "{target}: query bytes kept");
        assert_eq!(got.header("host"), Some(format!("{host}:{port}").as_str()));
    }
    let text = sidepool.metrics().await;
    assert!(
        text.contains("http_pool_requests_total{upstream=\"other\",status_class=\"2xx\"} 2"),
        "{text}"
    );
    // Route form and absolute form are unaffected, on the same listener.
    let (status, _, _) = send_fresh(sidepool.proxy, get("/ex/v5/x?a=1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        upstream.received().pop().unwrap().path_and_query,
        "/v5/x?a=1"
    );
    let absolute = format!("http://other.test:{port}/v5/y?b=2");
    let (status, _, _) = send_fresh(sidepool.proxy, get(&absolute)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        upstream.received().pop().unwrap().path_and_query,
        "/v5/y?b=2"
    );
}

#[tokio::test]
async fn encoded_prefix_form_sends_the_url_the_bot_signed_decoded_once() {
    let upstream = TestUpstream::start().await;
    let sidepool = two_upstreams(&upstream).await;
    let port = upstream.port();
    // What the bot built and signed; its own escapes (%2F, %3D, %20) must reach the exchange.
    let signed = "/v5/order/list?category=spot&symbol=BTC%2FUSDT&note=a%20b+c&signature=Ab%2Bc%3D";
    // ccxt: `proxyUrl + encodeURIComponent(url)` when the url has a query.
    let url = format!("https://other.test:{port}{signed}");
    let target = format!("/{}", encode_uri_component(&url));
    assert!(
        target.contains("%252F"),
        "the test encodes like ccxt: {target}"
    );
    let (status, _, _) = send_fresh(sidepool.proxy, get(&target)).await;
    assert_eq!(status, StatusCode::OK);
    let got = upstream.received().pop().unwrap();
    assert_eq!(got.path_and_query, signed, "byte for byte");
    assert_eq!(
        got.header("host"),
        Some(format!("other.test:{port}").as_str())
    );
    // A POST with a body goes the same way, the body untouched.
    let url = format!("http://exchange.test:{port}/v5/order/create?sig=x%2By");
    let post = request(
        "POST",
        &format!("/{}", encode_uri_component(&url)),
        "{\"qty\":\"1\"}",
    );
    let (status, _, _) = send_fresh(sidepool.proxy, post).await;
    assert_eq!(status, StatusCode::OK);
    let got = upstream.received().pop().unwrap();
    assert_eq!(got.path_and_query, "/v5/order/create?sig=x%2By");
    assert_eq!(got.body_str(), "{\"qty\":\"1\"}");
}

#[tokio::test]
async fn prefix_form_refuses_anything_not_configured_and_nothing_leaves() {
    let upstream = TestUpstream::start().await;
    let sidepool = two_upstreams(&upstream).await;
    let port = upstream.port();
    let closed = port.wrapping_add(1);
    for (target, status, kind) in [
        ("/https://evil.example/x".to_owned(), 403, "not_allowed"),
        ("/https://127.0.0.1/x".to_owned(), 403, "not_allowed"),
        (
            format!("/https://exchange.test.evil.example:{port}/x"),
            403,
            "not_allowed",
        ),
        (
            format!("/https://exchange.test:{closed}/x"),
            403,
            "not_allowed",
        ),
        (
            format!("/https%3A%2F%2Fevil.example%3A{port}%2Fx%3Fa%3D1"),
            403,
            "not_allowed",
        ),
        (
            "/https://exchange.test:99999/x".to_owned(),
            400,
            "bad_request",
        ),
        (
            format!("/https://u:p@exchange.test:{port}/x"),
            400,
            "bad_request",
        ),
        ("/https:///x".to_owned(), 400, "bad_request"),
        (
            "/https%3A%2F%2Fexchange.test%2Fx%3Fa%3D%zz".to_owned(),
            400,
            "bad_request",
        ),
        // CR LF decoded would split the request line: refused, never sent.
        (
            format!("/https%3A%2F%2Fexchange.test%3A{port}%2Fx%0D%0AX-Injected:%201"),
            400,
            "bad_request",
        ),
    ] {
        let (got, _, body) = send_fresh(sidepool.proxy, get(&target)).await;
        assert_eq!(got.as_u16(), status, "{target}");
        assert_eq!(error_kind(&body), kind, "{target}");
    }
    assert_eq!(upstream.stats().tcp_connections, 0, "nothing left sidepool");
}

#[tokio::test]
async fn an_encoded_signature_in_a_refused_target_never_reaches_the_logs() {
    let upstream = TestUpstream::start().await;
    let mut sidepool = Process::start(
        "prefix-logs",
        &config_toml("", &[https("ex", "exchange.test", upstream.port())]),
        &[("RUST_LOG", "trace")],
    )
    .await;
    let request = "GET /https%3A%2F%2Fevil.example%2Fv5%3Fsignature%3DSECRET-SIGNATURE HTTP/1.1\r\n\
        Host: sidepool.test\r\nConnection: close\r\n\r\n";
    let response = raw(sidepool.proxy, request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    sidepool.signal("TERM");
    assert_eq!(sidepool.wait_exit().await, Some(0));
    let log = sidepool.log_text();
    assert!(log.contains("request refused"), "{log}");
    assert!(!log.contains("SECRET"), "a secret reached the log:\n{log}");
}

/// `encodeURIComponent` as ccxt has it (Python: `quote(s, safe="~()*!.'")`).
fn encode_uri_component(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'~'
            | b'!'
            | b'*'
            | b'\''
            | b'('
            | b')' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sends `CONNECT target` and reads the response head, byte by byte so that nothing of what
/// follows is consumed. Returns the head and the stream.
async fn connect(addr: SocketAddr, target: &str) -> (String, TcpStream) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, tcp.read(&mut byte))
            .await
            .expect("CONNECT answered in time")
            .expect("read");
        if n == 0 {
            break;
        }
        got.push(byte[0]);
    }
    (String::from_utf8_lossy(&got).into_owned(), tcp)
}

/// An HTTP/1.1 client over an open tunnel.
async fn client_over(tcp: TcpStream) -> http1::SendRequest<Full<Bytes>> {
    let (send, conn) = http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

fn in_tunnel(
    method: &str,
    target: &str,
    host: &str,
    body: &'static str,
) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(target)
        .header("host", host)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn connect_to_port_80_of_a_configured_host_is_read_as_plain_requests() {
    let upstream = TestUpstream::start().await;
    let sidepool = two_upstreams(&upstream).await;
    let (head, tcp) = connect(sidepool.proxy, "other.test:80").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut send = client_over(tcp).await;
    // ccxt on Node sends origin form with the Host it tunnels to.
    for (method, target, body) in [
        (
            "GET",
            "/v5/market/tickers?category=spot&symbol=BTC%2FUSDT",
            "",
        ),
        ("POST", "/v5/order/create?x=a+b", "{\"qty\":\"1\"}"),
        ("GET", "/bybit/v5?a=1", ""),
    ] {
        send.ready().await.unwrap();
        let response = send
            .send_request(in_tunnel(method, target, "other.test", body))
            .await
            .expect("response");
        let (status, _, _) = collect(response).await;
        assert_eq!(status, StatusCode::OK, "{method} {target}");
        let got = upstream.received().pop().unwrap();
        assert_eq!(got.method, method);
        assert_eq!(
            got.path_and_query, target,
            "the path is the exchange's, as sent"
        );
        assert_eq!(got.body_str(), body);
        assert_eq!(
            got.header("host"),
            Some(format!("other.test:{}", upstream.port()).as_str())
        );
    }
    // Same pools as any other request: one upstream connection served all three.
    assert_eq!(upstream.stats().tcp_connections, 1);
    let text = sidepool.metrics().await;
    assert!(
        text.contains("http_pool_requests_total{upstream=\"other\",status_class=\"2xx\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("http_pool_client_connections 1\n"),
        "the tunnel still counts as the client connection it is: {text}"
    );
    drop(send);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while sidepool.metric("http_pool_client_connections", "").await != Some(0.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tunnel's place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn inside_a_tunnel_only_its_own_host_is_reachable() {
    let upstream = TestUpstream::start().await;
    let sidepool = two_upstreams(&upstream).await;
    let port = upstream.port();
    let (head, tcp) = connect(sidepool.proxy, "exchange.test:80").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut send = client_over(tcp).await;
    let other = format!("http://other.test:{port}/x");
    for (target, host, status) in [
        ("/x", "other.test", 403),
        ("/x", "exchange.test:8080", 403),
        (other.as_str(), "other.test", 403),
        ("/x", "exchange.test:80", 200),
        ("/x", "EXCHANGE.TEST", 200),
    ] {
        send.ready().await.unwrap();
        let response = send
            .send_request(in_tunnel("GET", target, host, ""))
            .await
            .expect("response");
        let (got, _, _) = collect(response).await;
        assert_eq!(got.as_u16(), status, "{target} Host: {host}");
    }
    let received = upstream.received();
    assert_eq!(received.len(), 2);
    assert!(
        received
            .iter()
            .all(|r| r.header("host") == Some(format!("exchange.test:{port}").as_str()))
    );
    // No tunnel inside a tunnel.
    send.ready().await.unwrap();
    let nested = http::Request::builder()
        .method("CONNECT")
        .uri("exchange.test:80")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (got, _, _) = collect(send.send_request(nested).await.unwrap()).await;
    assert_eq!(got, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn every_other_connect_is_405_and_opens_nothing() {
    let upstream = TestUpstream::start().await;
    let sidepool = two_upstreams(&upstream).await;
    let port = upstream.port();
    for target in [
        "evil.example:80".to_owned(),
        "127.0.0.1:80".to_owned(),
        format!("exchange.test:{port}"),
        "exchange.test:443".to_owned(),
        "exchange.test:8080".to_owned(),
    ] {
        let (head, mut tcp) = connect(sidepool.proxy, &target).await;
        assert!(head.starts_with("HTTP/1.1 405"), "{target}: {head}");
        assert!(
            head.contains("x-sidepool-error: connect_not_supported"),
            "{head}"
        );
        // The connection is not a tunnel: what follows is read as HTTP, not relayed.
        tcp.write_all(b"GET /ex/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut rest = String::new();
        let _ = tokio::time::timeout(PATIENCE, tcp.read_to_string(&mut rest)).await;
        assert!(
            rest.contains("HTTP/1.1 200") || rest.is_empty(),
            "{target}: {rest}"
        );
    }
    assert!(upstream.received().iter().all(|r| r.path_and_query == "/x"));
}

#[tokio::test]
async fn draining_lets_a_tunnel_finish_its_request_and_closes_idle_ones() {
    let upstream = TestUpstream::builder()
        .handler(|r| {
            let reply = Reply::json(200, "{\"filled\":true}");
            if r.path_and_query == "/slow" {
                reply.delay(Duration::from_millis(400))
            } else {
                reply
            }
        })
        .start()
        .await;
    let sidepool = two_upstreams(&upstream).await;
    let (_, idle) = connect(sidepool.proxy, "exchange.test:80").await;
    let (head, busy) = connect(sidepool.proxy, "other.test:80").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut send = client_over(busy).await;
    send.ready().await.unwrap();
    let order = tokio::spawn(send.send_request(in_tunnel("POST", "/slow", "other.test", "o")));
    upstream.wait_requests(1).await;
    let stopping = tokio::spawn(sidepool.shutdown());
    let (status, _, body) = collect(order.await.unwrap().expect("response")).await;
    assert_eq!(status, StatusCode::OK, "the in-flight request finished");
    assert_eq!(body.as_ref(), b"{\"filled\":true}");
    tokio::time::timeout(PATIENCE, stopping)
        .await
        .expect("the drain ended with the tunnels")
        .unwrap();
    let mut idle = idle;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, idle.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the idle tunnel was closed"
    );
}
