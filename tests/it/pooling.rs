use std::time::Duration;

use http::StatusCode;

use crate::support::harness::{Sidepool, config_toml, get, https, send_fresh};
use crate::support::upstream::{Reply, TestUpstream};

#[tokio::test]
async fn hundred_naive_clients_share_one_upstream_connection() {
    let upstream = TestUpstream::builder().start().await;
    let sidepool = Sidepool::for_upstream(&upstream, "").await;
    for i in 0..100 {
        let (status, _, _) = send_fresh(sidepool.proxy, get(&format!("/ex/tick?i={i}"))).await;
        assert_eq!(status, StatusCode::OK);
    }
    let stats = upstream.stats();
    assert_eq!(stats.requests, 100);
    assert_eq!(
        stats.tcp_connections, 1,
        "one kept-alive connection served all 100"
    );
    assert_eq!(stats.tls_handshakes, 1);
    let text = sidepool.metrics().await;
    assert!(
        text.contains("http_pool_connections_opened_total{upstream=\"ex\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("http_pool_connections_reused_total{upstream=\"ex\"} 99"),
        "{text}"
    );
}

#[tokio::test]
async fn per_host_cap_holds_under_fifty_concurrent_requests() {
    let upstream = TestUpstream::builder()
        .handler(|_| Reply::json(200, "{}").delay(Duration::from_millis(20)))
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(&upstream, "max_connections_per_host = 4").await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let proxy = sidepool.proxy;
        tasks.push(tokio::spawn(async move {
            send_fresh(proxy, get(&format!("/ex/o?i={i}"))).await.0
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    let stats = upstream.stats();
    assert_eq!(stats.requests, 50);
    assert!(
        stats.max_open <= 4,
        "at most 4 connections at once, saw {}",
        stats.max_open
    );
    assert!(stats.max_in_flight <= 4);
    assert!(
        stats.tcp_connections <= 4,
        "no churn: {} connections opened",
        stats.tcp_connections
    );
    sidepool
        .wait_gauges("ex", (0.0, stats.max_open as f64, 0.0, 0.0))
        .await;
}

#[tokio::test]
async fn global_cap_holds_across_two_upstreams() {
    // One server behind two upstream names, so its counters see both pools together.
    let upstream = TestUpstream::builder()
        .handler(|_| Reply::json(200, "{}").delay(Duration::from_millis(20)))
        .start()
        .await;
    let sidepool = Sidepool::start(&config_toml(
        "max_connections = 3\nmax_connections_per_host = 3",
        &[
            https("a", "exchange.test", upstream.port()),
            https("b", "other.test", upstream.port()),
        ],
    ))
    .await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let proxy = sidepool.proxy;
        let route = if i % 2 == 0 { "a" } else { "b" };
        tasks.push(tokio::spawn(async move {
            send_fresh(proxy, get(&format!("/{route}/x?i={i}"))).await.0
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    let stats = upstream.stats();
    assert_eq!(stats.requests, 40);
    // Requests on the wire at once, over both upstreams. (A connection closed to make room for
    // the other upstream may still be finishing its close in the kernel when its replacement
    // connects, so the socket count can briefly read one higher; the slots never do.)
    assert!(
        stats.max_in_flight <= 3,
        "at most 3 connections in use over both upstreams, saw {}",
        stats.max_in_flight
    );
    let hosts: std::collections::HashSet<String> = upstream
        .received()
        .iter()
        .filter_map(|r| r.header("host").map(str::to_owned))
        .collect();
    assert_eq!(hosts.len(), 2, "both upstreams were served: {hosts:?}");
}

#[tokio::test]
async fn new_connections_resume_the_tls_session() {
    // Every response closes its connection, so each request needs a new TLS handshake.
    let upstream = TestUpstream::builder()
        .handler(|_| Reply::json(200, "{}").close())
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(&upstream, "").await;
    for i in 0..3 {
        let (status, _, _) = send_fresh(sidepool.proxy, get(&format!("/ex/r?i={i}"))).await;
        assert_eq!(status, StatusCode::OK);
    }
    let stats = upstream.stats();
    assert_eq!(stats.tcp_connections, 3);
    assert!(
        stats.tls_resumed >= 2,
        "later handshakes resumed the session: {stats:?}"
    );
}
