use std::time::Duration;

use http::StatusCode;

use crate::support::certs;
use crate::support::harness::{
    Client, Sidepool, UpstreamSpec, closed_port, config_toml, error_kind, get, https, raw, request,
    send_fresh,
};
use crate::support::upstream::{Reply, TestUpstream};

#[tokio::test]
async fn unknown_route_or_host_is_403_and_nothing_leaves() {
    let upstream = TestUpstream::builder().start().await;
    let sidepool = Sidepool::for_upstream(&upstream, "").await;
    for target in [
        "/nope/v5/market/tickers".to_owned(),
        "http://evil.example/steal".to_owned(),
        format!("http://127.0.0.1:{}/direct-ip", upstream.port()),
        format!(
            "http://exchange.test.evil.example:{}/lookalike",
            upstream.port()
        ),
        format!("http://exchange.test:{}/other-port", closed_port()),
    ] {
        let (status, headers, body) = send_fresh(sidepool.proxy, get(&target)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{target}");
        assert_eq!(headers["x-sidepool-error"], "not_allowed");
        assert_eq!(error_kind(&body), "not_allowed");
    }
    assert_eq!(upstream.stats().requests, 0);
}

#[tokio::test]
async fn connect_is_405_with_a_hint() {
    let upstream = TestUpstream::builder().start().await;
    let sidepool = Sidepool::for_upstream(&upstream, "").await;
    let text = raw(
        sidepool.proxy,
        b"CONNECT exchange.test:443 HTTP/1.1\r\nHost: exchange.test:443\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");
    assert!(
        text.contains("x-sidepool-error: connect_not_supported"),
        "{text}"
    );
    assert!(
        text.contains("http://"),
        "the message says what to use instead: {text}"
    );
    assert_eq!(upstream.stats().tcp_connections, 0);
}

#[tokio::test]
async fn malformed_requests_are_400_and_the_proxy_keeps_serving() {
    let upstream = TestUpstream::builder().start().await;
    let sidepool = Sidepool::for_upstream(&upstream, "").await;
    let framing = raw(
        sidepool.proxy,
        b"GET /ex/x HTTP/1.1\r\nHost: a\r\nContent-Length: nope\r\n\r\n",
    )
    .await;
    assert!(framing.starts_with("HTTP/1.1 400"), "{framing}");
    let garbage = raw(sidepool.proxy, b"\x16\x03\x01 not http at all\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    let userinfo = format!("http://user:pw@exchange.test:{}/x", upstream.port());
    let (status, _, body) = send_fresh(sidepool.proxy, get(&userinfo)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_kind(&body), "bad_request");
    assert_eq!(
        upstream.stats().requests,
        0,
        "nothing malformed reached the upstream"
    );
    let (status, _, _) = send_fresh(sidepool.proxy, get("/ex/still-serving")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn oversized_headers_are_431() {
    let upstream = TestUpstream::builder().start().await;
    let sidepool = Sidepool::for_upstream(&upstream, "").await;
    let mut req = get("/ex/x");
    req.headers_mut()
        .insert("x-big", "a".repeat(20 * 1024).parse().unwrap());
    let (status, headers, body) = send_fresh(sidepool.proxy, req).await;
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(headers["x-sidepool-error"], "headers_too_large");
    assert_eq!(error_kind(&body), "headers_too_large");
    // Beyond the hard limit hyper refuses while parsing, still with 431.
    let huge = format!(
        "GET /ex/x HTTP/1.1\r\nHost: a\r\nX-Huge: {}\r\n\r\n",
        "b".repeat(100 * 1024)
    );
    let text = raw(sidepool.proxy, huge.as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    assert_eq!(upstream.stats().requests, 0);
}

#[tokio::test]
async fn refused_connect_is_502_connect_failed() {
    let port = closed_port();
    let sidepool = Sidepool::start(&config_toml("", &[https("ex", "exchange.test", port)])).await;
    let (status, headers, body) = send_fresh(sidepool.proxy, get("/ex/x")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["x-sidepool-error"], "connect_failed");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["upstream"], "ex");
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .contains(&port.to_string()),
        "{json}"
    );
    sidepool.wait_gauges("ex", (0.0, 0.0, 0.0, 0.0)).await;
}

#[tokio::test]
async fn untrusted_certificate_is_502_tls_failed() {
    let upstream = TestUpstream::builder()
        .pki(certs::untrusted())
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(&upstream, "").await;
    let (status, headers, body) =
        send_fresh(sidepool.proxy, request("POST", "/ex/order", "x")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["x-sidepool-error"], "tls_failed");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        json["message"].as_str().unwrap().contains("tls.ca_files"),
        "{json}"
    );
    assert_eq!(
        upstream.stats().requests,
        0,
        "no request over an unverified connection"
    );
    sidepool.wait_gauges("ex", (0.0, 0.0, 0.0, 0.0)).await;
}

#[tokio::test]
async fn wrong_host_certificate_is_502_tls_failed() {
    let upstream = TestUpstream::builder().start().await;
    // The certificate names exchange.test, other.test and localhost, not this host.
    let toml = config_toml("", &[https("ex", "wrong.test", upstream.port())]).replace(
        "\"other.test\" = \"127.0.0.1\"",
        "\"other.test\" = \"127.0.0.1\"\n\"wrong.test\" = \"127.0.0.1\"",
    );
    let sidepool = Sidepool::start(&toml).await;
    let (status, headers, _) = send_fresh(sidepool.proxy, get("/ex/x")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["x-sidepool-error"], "tls_failed");
    assert_eq!(upstream.stats().requests, 0);
}

#[tokio::test]
async fn stalled_upstream_is_504_read_timeout_and_the_connection_is_not_reused() {
    let upstream = TestUpstream::builder()
        .handler(|r| {
            if r.path_and_query == "/stall" {
                Reply::Stall
            } else {
                Reply::json(200, "{}")
            }
        })
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(&upstream, "read_timeout = \"300ms\"").await;
    let mut client = Client::connect(sidepool.proxy).await;
    let (status, headers, _) = client.send(get("/ex/stall")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(headers["x-sidepool-error"], "read_timeout");
    sidepool.wait_gauges("ex", (0.0, 0.0, 0.0, 0.0)).await;
    let (status, _, _) = client.send(get("/ex/fine")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        upstream.stats().tcp_connections,
        2,
        "the timed-out connection was closed, not reused"
    );
}

#[tokio::test]
async fn slow_exchange_is_504_request_timeout() {
    let upstream = TestUpstream::builder()
        .handler(|_| Reply::Stall)
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(
        &upstream,
        "read_timeout = \"5s\"\nrequest_timeout = \"300ms\"",
    )
    .await;
    let (status, headers, _) = send_fresh(sidepool.proxy, get("/ex/slow")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(headers["x-sidepool-error"], "request_timeout");
    sidepool.wait_gauges("ex", (0.0, 0.0, 0.0, 0.0)).await;
}

#[tokio::test]
async fn body_stalling_past_the_deadline_is_cut_and_the_connection_closed() {
    let upstream = TestUpstream::builder()
        .handler(|_| Reply::StallBody)
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(
        &upstream,
        "read_timeout = \"5s\"\nrequest_timeout = \"300ms\"",
    )
    .await;
    let mut client = Client::connect(sidepool.proxy).await;
    let response = client.send_streaming(get("/ex/slow-body")).await;
    // The head arrived in time, so the status is the upstream's; the body is cut at the deadline.
    assert_eq!(response.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(response.into_body()).await;
    assert!(
        body.is_err(),
        "the client sees a truncated body, not a complete one"
    );
    sidepool.wait_gauges("ex", (0.0, 0.0, 0.0, 0.0)).await;
    let text = sidepool.metrics().await;
    assert!(
        text.contains("http_pool_connections_closed_total{upstream=\"ex\",reason=\"timeout\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn queue_timeout_is_503_pool_timeout() {
    let upstream = TestUpstream::builder()
        .handler(|r| {
            if r.path_and_query == "/hold" {
                Reply::Stall
            } else {
                Reply::json(200, "{}")
            }
        })
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(
        &upstream,
        "max_connections_per_host = 1\nqueue_timeout = \"200ms\"\nread_timeout = \"10s\"",
    )
    .await;
    let proxy = sidepool.proxy;
    let holder = tokio::spawn(async move { send_fresh(proxy, get("/ex/hold")).await });
    upstream.wait_in_flight(1).await;
    let (status, headers, body) = send_fresh(sidepool.proxy, get("/ex/queued")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["x-sidepool-error"], "pool_timeout");
    assert_eq!(error_kind(&body), "pool_timeout");
    assert_eq!(sidepool.gauges("ex").await, (1.0, 0.0, 0.0, 0.0));
    holder.abort();
    let _ = tokio::time::timeout(Duration::from_secs(1), holder).await;
}

#[tokio::test]
async fn dead_upstream_does_not_disturb_the_others() {
    let healthy = TestUpstream::builder().start().await;
    let dead_port = closed_port();
    let toml = config_toml(
        "",
        &[
            https("ex", "exchange.test", healthy.port()),
            UpstreamSpec {
                name: "dead",
                url: format!("https://other.test:{dead_port}"),
                extra: "",
            },
        ],
    );
    let sidepool = Sidepool::start(&toml).await;
    let (status, _, _) = send_fresh(sidepool.proxy, get("/dead/x")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let (status, _, _) = send_fresh(sidepool.proxy, get("/ex/x")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn slow_client_is_disconnected_after_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = TestUpstream::builder().start().await;
    let toml = config_toml("", &[https("ex", "exchange.test", upstream.port())]).replace(
        "drain_timeout = \"5s\"",
        "drain_timeout = \"5s\"\nheader_read_timeout = \"300ms\"",
    );
    let sidepool = Sidepool::start(&toml).await;
    let mut slow = tokio::net::TcpStream::connect(sidepool.proxy)
        .await
        .unwrap();
    slow.write_all(b"GET /ex/x HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the half-sent request was not cut off");
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert_eq!(upstream.stats().requests, 0);
    let (status, _, _) = send_fresh(sidepool.proxy, get("/ex/others-still-served")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn ambiguous_framing_is_never_forwarded_ambiguously() {
    let upstream = TestUpstream::builder().start().await;
    let sidepool = Sidepool::for_upstream(&upstream, "").await;
    // Two different lengths: refused while parsing, nothing leaves.
    let text = raw(
        sidepool.proxy,
        b"POST /ex/order HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(
        upstream.stats().tcp_connections,
        0,
        "no upstream connection was even opened"
    );
    // Content-Length with Transfer-Encoding: chunked framing wins (RFC 9112 6.3) and the
    // Content-Length is dropped, so the exchange sees one unambiguous body.
    let text = raw(
        sidepool.proxy,
        b"POST /ex/order HTTP/1.1\r\nHost: a\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let got = upstream.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, b"hello");
    assert!(
        got[0].header("content-length").is_none_or(|v| v == "5"),
        "{:?}",
        got[0].headers
    );
}

#[tokio::test]
async fn upstream_failed_names_the_address_and_never_the_query() {
    let upstream = TestUpstream::builder()
        .handler(|_| Reply::Reset)
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(&upstream, "").await;
    let (status, headers, body) = send_fresh(
        sidepool.proxy,
        request("POST", "/ex/order?signature=SECRET-SIG", "order"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["x-sidepool-error"], "upstream_failed");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let message = json["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!(
            "a new connection to 127.0.0.1:{}",
            upstream.port()
        )),
        "{message}"
    );
    assert!(
        !message.contains("SECRET") && !message.contains('?'),
        "{message}"
    );
    assert_eq!(upstream.stats().requests, 1, "sent once, never again");
}
