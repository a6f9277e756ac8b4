use std::time::Duration;

use http::StatusCode;

use crate::support::eventually::eventually;
use crate::support::harness::{
    Client, Sidepool, config_toml, error_kind, get, https, raw, send_fresh,
};
use crate::support::upstream::TestUpstream;

/// `max_waiting` bounds the queue: with the one connection busy and the queue full, the next
/// request is refused at once with `503 queue_full` and never reaches the upstream; the queued
/// ones are still served in full when the connection frees up.
#[tokio::test]
async fn full_queue_refuses_at_once_and_the_queued_are_served() {
    let upstream = TestUpstream::stalling().await;
    let sidepool = Sidepool::for_upstream(
        &upstream,
        "max_connections_per_host = 1\nmax_waiting = 2\nqueue_timeout = \"10s\"",
    )
    .await;
    let proxy = sidepool.proxy;
    let holder = tokio::spawn(async move { send_fresh(proxy, get("/ex/hold")).await.0 });
    upstream.wait_in_flight(1).await;
    let mut queued = Vec::new();
    for i in 0..2 {
        queued.push(tokio::spawn(async move {
            send_fresh(proxy, get(&format!("/ex/queued/{i}"))).await.0
        }));
        sidepool
            .wait_gauges("ex", (1.0, 0.0, 0.0, f64::from(i + 1)))
            .await;
    }
    let refused_at = tokio::time::Instant::now();
    let (status, headers, body) = send_fresh(proxy, get("/ex/refused")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["x-sidepool-error"], "queue_full");
    assert_eq!(error_kind(&body), "queue_full");
    // Refused without waiting for queue_timeout (10 s).
    assert!(refused_at.elapsed() < Duration::from_secs(5));
    sidepool.wait_gauges("ex", (1.0, 0.0, 0.0, 2.0)).await;
    upstream.release_stalled();
    assert_eq!(holder.await.unwrap(), StatusCode::OK);
    for task in queued {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    sidepool.wait_gauges("ex", (0.0, 1.0, 0.0, 0.0)).await;
    let paths: Vec<String> = upstream
        .received()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect();
    assert_eq!(paths, ["/hold", "/queued/0", "/queued/1"]);
    assert_eq!(
        sidepool
            .metric(
                "http_pool_errors_total",
                "upstream=\"ex\",kind=\"queue_full\""
            )
            .await,
        Some(1.0)
    );
}

/// `max_waiting = 0` means no queue: a request that finds every connection busy is refused at
/// once.
#[tokio::test]
async fn zero_max_waiting_refuses_instead_of_queueing() {
    let upstream = TestUpstream::stalling().await;
    let sidepool =
        Sidepool::for_upstream(&upstream, "max_connections_per_host = 1\nmax_waiting = 0").await;
    let proxy = sidepool.proxy;
    let holder = tokio::spawn(async move { send_fresh(proxy, get("/ex/hold")).await.0 });
    upstream.wait_in_flight(1).await;
    let (status, _, body) = send_fresh(proxy, get("/ex/refused")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_kind(&body), "queue_full");
    upstream.release_stalled();
    assert_eq!(holder.await.unwrap(), StatusCode::OK);
    // With the connection free again, requests go through.
    assert_eq!(send_fresh(proxy, get("/ex/after")).await.0, StatusCode::OK);
    assert_eq!(upstream.stats().requests, 2);
}

/// `listen.max_client_connections` caps client connections: a client beyond the cap gets
/// `503 too_many_clients` with `Connection: close` and nothing it sends is forwarded, while the
/// clients already connected keep being served; once one leaves, a new client is admitted.
#[tokio::test]
async fn client_connection_cap_refuses_newcomers_without_harming_the_others() {
    let upstream = TestUpstream::start().await;
    let mut toml = config_toml("", &[https("ex", "exchange.test", upstream.port())]);
    toml = toml.replace("[listen]\n", "[listen]\nmax_client_connections = 2\n");
    let sidepool = Sidepool::start(&toml).await;
    let mut first = Client::connect(sidepool.proxy).await;
    let mut second = Client::connect(sidepool.proxy).await;
    assert_eq!(first.send(get("/ex/a")).await.0, StatusCode::OK);
    assert_eq!(second.send(get("/ex/b")).await.0, StatusCode::OK);
    assert_eq!(
        sidepool.metric("http_pool_client_connections", "").await,
        Some(2.0)
    );
    assert_eq!(
        sidepool
            .metric("http_pool_client_connections_max", "")
            .await,
        Some(2.0)
    );

    let answer = raw(
        sidepool.proxy,
        b"POST /ex/order HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(
        lower.contains("x-sidepool-error: too_many_clients"),
        "{answer}"
    );
    assert!(lower.contains("connection: close"), "{answer}");
    assert!(
        answer.contains("\"error\":\"too_many_clients\""),
        "{answer}"
    );

    // The admitted clients are unaffected, on their same connections.
    assert_eq!(first.send(get("/ex/c")).await.0, StatusCode::OK);
    assert_eq!(second.send(get("/ex/d")).await.0, StatusCode::OK);
    let paths: Vec<String> = upstream
        .received()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect();
    assert_eq!(paths, ["/a", "/b", "/c", "/d"]);
    assert_eq!(
        sidepool
            .metric(
                "http_pool_errors_total",
                "upstream=\"\",kind=\"too_many_clients\""
            )
            .await,
        Some(1.0)
    );

    // One leaves; its place is free again (the gauge shows it first).
    drop(first);
    eventually("the client gauge falls to 1", async || {
        match sidepool.metric("http_pool_client_connections", "").await {
            Some(1.0) => Ok(()),
            other => Err(other),
        }
    })
    .await;
    let mut third = Client::connect(sidepool.proxy).await;
    assert_eq!(third.send(get("/ex/e")).await.0, StatusCode::OK);
    assert_eq!(upstream.stats().requests, 5);
}
