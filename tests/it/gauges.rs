use std::time::Duration;

use http::StatusCode;

use crate::support::harness::{Client, Sidepool, get, send_fresh};
use crate::support::upstream::{Reply, TestUpstream};

fn hold_then_ok() -> impl Fn(&crate::support::upstream::Received) -> Reply + Send + Sync + 'static {
    |r| {
        if r.path_and_query.starts_with("/hold") {
            Reply::json(200, "{}").delay(Duration::from_millis(300))
        } else {
            Reply::json(200, "{}")
        }
    }
}

#[tokio::test]
async fn gauges_are_exact_during_and_after_load_and_idle_expires() {
    let upstream = TestUpstream::builder()
        .handler(hold_then_ok())
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(
        &upstream,
        "max_connections_per_host = 4\nidle_timeout = \"1s\"",
    )
    .await;
    assert_eq!(sidepool.gauges("ex").await, (0.0, 0.0, 0.0, 0.0));
    assert_eq!(
        sidepool
            .metric("http_pool_connections_limit", "upstream=\"ex\"")
            .await,
        Some(4.0)
    );
    let mut tasks = Vec::new();
    for i in 0..8 {
        let proxy = sidepool.proxy;
        tasks.push(tokio::spawn(async move {
            send_fresh(proxy, get(&format!("/ex/hold?i={i}"))).await.0
        }));
    }
    upstream.wait_in_flight(4).await;
    // Four on the wire, four queued: exact, not sampled.
    sidepool.wait_gauges("ex", (4.0, 0.0, 0.0, 4.0)).await;
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    sidepool.wait_gauges("ex", (0.0, 4.0, 0.0, 0.0)).await;
    assert!(upstream.stats().max_open <= 4);
    // idle_timeout is 1 s: every idle connection is closed and the gauge falls to 0.
    sidepool.wait_gauges("ex", (0.0, 0.0, 0.0, 0.0)).await;
    upstream.wait_open(0).await;
    let text = sidepool.metrics().await;
    assert!(
        text.contains(
            "http_pool_connections_closed_total{upstream=\"ex\",reason=\"idle_timeout\"} 4"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn client_that_leaves_the_queue_leaves_the_waiting_gauge() {
    let upstream = TestUpstream::builder()
        .handler(hold_then_ok())
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(
        &upstream,
        "max_connections_per_host = 1\nqueue_timeout = \"5s\"",
    )
    .await;
    let proxy = sidepool.proxy;
    let holder = tokio::spawn(async move { send_fresh(proxy, get("/ex/hold")).await.0 });
    upstream.wait_in_flight(1).await;
    let waiting = tokio::spawn(async move { send_fresh(proxy, get("/ex/queued")).await.0 });
    sidepool.wait_gauges("ex", (1.0, 0.0, 0.0, 1.0)).await;
    // The bot gives up: its connection closes while it waits for a pooled connection.
    waiting.abort();
    let _ = waiting.await;
    sidepool.wait_gauges("ex", (1.0, 0.0, 0.0, 0.0)).await;
    assert_eq!(holder.await.unwrap(), StatusCode::OK);
    sidepool.wait_gauges("ex", (0.0, 1.0, 0.0, 0.0)).await;
    assert_eq!(
        upstream.stats().requests,
        1,
        "the abandoned request was never sent"
    );
}

#[tokio::test]
async fn client_that_leaves_mid_response_releases_the_connection_closed() {
    let upstream = TestUpstream::builder()
        .handler(|r| {
            if r.path_and_query == "/stream" {
                Reply::StallBody
            } else {
                Reply::json(200, "{}")
            }
        })
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(&upstream, "").await;
    let mut client = Client::connect(sidepool.proxy).await;
    let response = client.send_streaming(get("/ex/stream")).await;
    assert_eq!(response.status(), StatusCode::OK);
    sidepool.wait_gauges("ex", (1.0, 0.0, 0.0, 0.0)).await;
    drop(response);
    drop(client);
    // Not read to the end: closed, never returned to idle.
    sidepool.wait_gauges("ex", (0.0, 0.0, 0.0, 0.0)).await;
    upstream.wait_open(0).await;
    let text = sidepool.metrics().await;
    assert!(
        text.contains(
            "http_pool_connections_closed_total{upstream=\"ex\",reason=\"incomplete\"} 1"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn client_that_leaves_while_in_flight_releases_the_connection() {
    let upstream = TestUpstream::builder()
        .handler(|_| Reply::Stall)
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(&upstream, "read_timeout = \"30s\"").await;
    let proxy = sidepool.proxy;
    let bot = tokio::spawn(async move { send_fresh(proxy, get("/ex/stall")).await.0 });
    upstream.wait_in_flight(1).await;
    sidepool.wait_gauges("ex", (1.0, 0.0, 0.0, 0.0)).await;
    bot.abort();
    let _ = bot.await;
    sidepool.wait_gauges("ex", (0.0, 0.0, 0.0, 0.0)).await;
    upstream.wait_open(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_scrape_racing_a_load_is_within_the_cap() {
    let upstream = TestUpstream::builder()
        .handler(|_| Reply::json(200, "{}").delay(Duration::from_millis(3)))
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(
        &upstream,
        "max_connections_per_host = 4\nqueue_timeout = \"10s\"",
    )
    .await;
    let proxy = sidepool.proxy;
    let load = tokio::spawn(async move {
        let mut bots = Vec::new();
        for bot in 0..24 {
            bots.push(tokio::spawn(async move {
                for i in 0..8 {
                    let (status, _, _) = send_fresh(proxy, get(&format!("/ex/b{bot}?i={i}"))).await;
                    assert_eq!(status, StatusCode::OK);
                }
            }));
        }
        for bot in bots {
            bot.await.unwrap();
        }
    });
    let (mut scrapes, mut busy) = (0, 0);
    while !load.is_finished() {
        let (active, idle, connecting, waiting) = sidepool.gauges("ex").await;
        assert!(
            active + idle + connecting <= 4.0,
            "scrape {scrapes}: active {active} + idle {idle} + connecting {connecting} > 4"
        );
        if active > 0.0 || waiting > 0.0 {
            busy += 1;
        }
        scrapes += 1;
    }
    load.await.unwrap();
    assert!(busy > 0, "no scrape of {scrapes} saw the load");
    assert!(upstream.stats().max_open <= 4);
}
