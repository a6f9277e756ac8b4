use http::StatusCode;

use crate::support::harness::{Client, Sidepool, config_toml, get, https, send_fresh};
use crate::support::upstream::TestUpstream;

#[tokio::test]
async fn route_mode_forwards_path_and_query_byte_for_byte() {
    let upstream = TestUpstream::builder().start().await;
    let sidepool = Sidepool::for_upstream(&upstream, "").await;
    let query = "/v5/market/tickers?category=spot&symbol=BTC%2FUSDT&x=a+b&&empty=";
    let (status, _, body) = send_fresh(sidepool.proxy, get(&format!("/ex{query}"))).await;
    assert_eq!(status, StatusCode::OK);
    let received = upstream.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].path_and_query, query);
    assert_eq!(received[0].method, "GET");
    assert_eq!(
        received[0].header("host"),
        Some(format!("exchange.test:{}", upstream.port()).as_str())
    );
    assert!(String::from_utf8_lossy(&body).contains("/v5/market/tickers"));
}

#[tokio::test]
async fn forward_proxy_absolute_form_selects_upstream_by_host_and_port() {
    let upstream = TestUpstream::builder().start().await;
    let toml = config_toml(
        "",
        &[
            https("ex", "exchange.test", upstream.port()),
            https("other", "other.test", upstream.port()),
        ],
    );
    let sidepool = Sidepool::start(&toml).await;
    let target = format!(
        "http://other.test:{}/api/v3/ticker/price?symbol=BTCUSDT",
        upstream.port()
    );
    let (status, _, _) = send_fresh(sidepool.proxy, get(&target)).await;
    assert_eq!(status, StatusCode::OK);
    let received = upstream.received();
    assert_eq!(
        received[0].path_and_query,
        "/api/v3/ticker/price?symbol=BTCUSDT"
    );
    assert_eq!(
        received[0].header("host"),
        Some(format!("other.test:{}", upstream.port()).as_str())
    );
    // Counted under the upstream the host selected.
    let text = sidepool.metrics().await;
    assert!(
        text.contains("http_pool_requests_total{upstream=\"other\",status_class=\"2xx\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_both_ways_and_nothing_is_added() {
    let upstream = TestUpstream::builder()
        .handler(|_| {
            crate::support::upstream::Reply::json(200, "{}")
                .header("connection", "x-upstream-hop")
                .header("x-upstream-hop", "1")
                .header("keep-alive", "timeout=5")
                .header("x-end-to-end", "kept")
        })
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(&upstream, "").await;
    let mut req = get("/ex/p");
    let headers = req.headers_mut();
    headers.insert("connection", "x-client-hop, keep-alive".parse().unwrap());
    headers.insert("x-client-hop", "1".parse().unwrap());
    headers.insert("keep-alive", "timeout=5".parse().unwrap());
    headers.insert("proxy-authorization", "Basic c2VjcmV0".parse().unwrap());
    headers.insert("te", "trailers".parse().unwrap());
    headers.insert("x-api-key", "kept-end-to-end".parse().unwrap());
    let mut client = Client::connect(sidepool.proxy).await;
    let (status, response_headers, _) = client.send(req).await;
    assert_eq!(status, StatusCode::OK);
    let got = &upstream.received()[0];
    for hop in [
        "connection",
        "x-client-hop",
        "keep-alive",
        "proxy-authorization",
        "te",
    ] {
        assert!(
            got.header(hop).is_none(),
            "{hop} reached the upstream: {:?}",
            got.headers
        );
    }
    assert_eq!(got.header("x-api-key"), Some("kept-end-to-end"));
    for added in ["via", "x-forwarded-for", "forwarded"] {
        assert!(got.header(added).is_none(), "sidepool added {added}");
    }
    assert!(response_headers.get("x-upstream-hop").is_none());
    assert!(response_headers.get("keep-alive").is_none());
    assert_eq!(response_headers.get("x-end-to-end").unwrap(), "kept");
}

#[tokio::test]
async fn names_resolve_through_the_resolver_and_answers_are_cached() {
    // No dns.static entry for localhost: the address comes from the resolver (hosts file).
    // Every response says `Connection: close`, so each request needs a new connection.
    let upstream = TestUpstream::builder()
        .handler(|_| crate::support::upstream::Reply::json(200, "{}").close())
        .start()
        .await;
    let sidepool = Sidepool::start(&config_toml(
        "",
        &[https("ex", "localhost", upstream.port())],
    ))
    .await;
    for path in ["/ex/first", "/ex/second"] {
        let (status, _, _) = send_fresh(sidepool.proxy, get(path)).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(upstream.stats().tcp_connections, 2);
    let text = sidepool.metrics().await;
    assert!(
        text.contains("http_pool_dns_lookups_total{upstream=\"ex\",result=\"miss\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("http_pool_dns_lookups_total{upstream=\"ex\",result=\"hit\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "http_pool_connections_closed_total{upstream=\"ex\",reason=\"connection_close\"} 2"
        ),
        "a response that says close is never pooled: {text}"
    );
    let host = format!("localhost:{}", upstream.port());
    assert_eq!(upstream.received()[0].header("host"), Some(host.as_str()));
}
