use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;

use crate::support::harness::{Client, Sidepool, error_kind, get, request};
use crate::support::upstream::{Received, Reply, TestUpstream};

/// An upstream that serves the first request on each connection and breaks the connection on
/// the next one (`broken`), after reading it: the stale keep-alive race, made deterministic.
fn second_request_breaks(broken: Reply) -> impl Fn(&Received) -> Reply + Send + Sync + 'static {
    let seen = Arc::new(Mutex::new(HashSet::new()));
    move |r: &Received| {
        if seen.lock().unwrap().insert(r.conn_id) {
            Reply::json(200, "{\"first\":true}")
        } else {
            broken.clone()
        }
    }
}

#[tokio::test]
async fn get_survives_a_connection_that_dies_on_reuse() {
    let upstream = TestUpstream::builder()
        .handler(second_request_breaks(Reply::Close))
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(&upstream, "").await;
    let mut client = Client::connect(sidepool.proxy).await;
    assert_eq!(client.send(get("/ex/a")).await.0, StatusCode::OK);
    let (status, _, body) = client.send(get("/ex/b")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "re-sent on a fresh connection: {body:?}"
    );
    let paths: Vec<String> = upstream
        .received()
        .iter()
        .map(|r| r.path_and_query.clone())
        .collect();
    assert_eq!(
        paths,
        ["/a", "/b", "/b"],
        "the GET went a second time, on a new connection"
    );
    assert_eq!(upstream.stats().tcp_connections, 2);
    let text = sidepool.metrics().await;
    assert!(
        text.contains("http_pool_retries_total{upstream=\"ex\",reason=\"idempotent\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn post_is_never_sent_twice_when_its_connection_dies() {
    for (label, broken) in [("close", Reply::Close), ("reset", Reply::Reset)] {
        let upstream = TestUpstream::builder()
            .handler(second_request_breaks(broken))
            .start()
            .await;
        let sidepool = Sidepool::for_upstream(&upstream, "").await;
        let mut client = Client::connect(sidepool.proxy).await;
        assert_eq!(
            client.send(request("POST", "/ex/order", "order-1")).await.0,
            StatusCode::OK
        );
        let (status, headers, body) = client.send(request("POST", "/ex/order", "order-2")).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{label}");
        assert_eq!(headers["x-sidepool-error"], "upstream_failed", "{label}");
        assert_eq!(error_kind(&body), "upstream_failed");
        let bodies: Vec<Vec<u8>> = upstream.received().iter().map(|r| r.body.clone()).collect();
        assert_eq!(
            bodies,
            [b"order-1".to_vec(), b"order-2".to_vec()],
            "{label}: each order reached the upstream exactly once"
        );
        let text = sidepool.metrics().await;
        assert!(
            !text.contains("http_pool_retries_total{upstream=\"ex\",reason=\"idempotent\"} 1"),
            "{text}"
        );
        sidepool.wait_gauges("ex", (0.0, 0.0, 0.0, 0.0)).await;
    }
}

#[tokio::test]
async fn idle_connections_closed_by_the_upstream_are_not_used_for_orders() {
    let upstream = TestUpstream::builder()
        .idle_close_after(Duration::from_millis(100))
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(&upstream, "").await;
    let mut client = Client::connect(sidepool.proxy).await;
    assert_eq!(client.send(get("/ex/warm")).await.0, StatusCode::OK);
    sidepool.wait_gauges("ex", (0.0, 1.0, 0.0, 0.0)).await;
    upstream.wait_open(0).await;
    // sidepool notices the close and drops the idle connection without sending on it.
    sidepool.wait_gauges("ex", (0.0, 0.0, 0.0, 0.0)).await;
    assert_eq!(client.send(get("/ex/after-close")).await.0, StatusCode::OK);
    for order in ["order-1", "order-2"] {
        upstream.wait_open(0).await;
        sidepool.wait_gauges("ex", (0.0, 0.0, 0.0, 0.0)).await;
        assert_eq!(
            client.send(request("POST", "/ex/order", order)).await.0,
            StatusCode::OK
        );
    }
    let orders: Vec<Vec<u8>> = upstream
        .received()
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.body.clone())
        .collect();
    assert_eq!(
        orders,
        [b"order-1".to_vec(), b"order-2".to_vec()],
        "each order arrived exactly once"
    );
}
