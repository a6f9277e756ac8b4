//! The queue under pressure: bounded waits at 10x the cap, FIFO order, the global cap shared
//! across upstreams, and slots freed when a client leaves while its connection is being opened.

use std::time::Duration;

use http::StatusCode;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::support::harness::{
    PATIENCE, Sidepool, config_toml, error_kind, get, https, send_fresh,
};
use crate::support::upstream::{Received, Reply, TestUpstream};

/// Stalls requests whose path starts with `/hold` until `release_stalled`; answers the rest.
fn hold_on_request(r: &Received) -> Reply {
    if r.path_and_query.starts_with("/hold") {
        Reply::Stall
    } else {
        Reply::default_for(r)
    }
}

/// One request on its own client connection: (status, error kind if any, time taken).
fn spawn_get(sidepool: &Sidepool, target: String) -> JoinHandle<(StatusCode, String, Duration)> {
    let proxy = sidepool.proxy;
    tokio::spawn(async move {
        let started = Instant::now();
        let (status, headers, body) = send_fresh(proxy, get(&target)).await;
        let kind = if headers.contains_key("x-sidepool-error") {
            error_kind(&body)
        } else {
            String::new()
        };
        (status, kind, started.elapsed())
    })
}

/// The paths the upstream received, in arrival order.
fn paths(upstream: &TestUpstream) -> Vec<String> {
    upstream
        .received()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect()
}

/// 20 concurrent requests against a per-host cap of 2, on an exchange that holds every request
/// until released: the waiting gauge shows exactly the 18 queued; three releases let exactly 6
/// more through, oldest first; the 12 still queued when `queue_timeout` passes get 503
/// `pool_timeout` no earlier than `queue_timeout` and no later than `queue_timeout` + slack;
/// the exchange never sees more than 2 requests at once, and every admitted request gets 200.
#[tokio::test]
async fn ten_times_the_cap_waits_at_most_queue_timeout() {
    const QUEUE_TIMEOUT: Duration = Duration::from_secs(3);
    let upstream = TestUpstream::builder()
        .handler(|_| Reply::Stall)
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(&upstream, "max_connections_per_host = 2\nqueue_timeout = \"3s\"\nread_timeout = \"30s\"\nrequest_timeout = \"30s\"").await;
    let tasks: Vec<_> = (0..20)
        .map(|i| spawn_get(&sidepool, format!("/ex/q/{i}")))
        .collect();
    upstream.wait_in_flight(2).await;
    sidepool.wait_gauges("ex", (2.0, 0.0, 0.0, 18.0)).await;
    for round in 1..=3 {
        upstream.release_stalled();
        upstream.wait_requests(2 + 2 * round).await;
        upstream.wait_in_flight(2).await;
    }
    sidepool.wait_gauges("ex", (2.0, 0.0, 0.0, 12.0)).await;
    // The remaining 12 leave the queue when their queue_timeout passes.
    sidepool.wait_gauges("ex", (2.0, 0.0, 0.0, 0.0)).await;
    upstream.release_stalled();
    let mut ok = 0;
    let mut timed_out = 0;
    for task in tasks {
        let (status, kind, took) = task.await.unwrap();
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(kind, "pool_timeout");
                assert!(
                    took >= QUEUE_TIMEOUT && took < QUEUE_TIMEOUT + Duration::from_millis(1500),
                    "a queued request waited {took:?} for a queue_timeout of {QUEUE_TIMEOUT:?}"
                );
                timed_out += 1;
            }
            other => panic!("unexpected {other} ({kind})"),
        }
    }
    assert_eq!((ok, timed_out), (8, 12));
    let stats = upstream.stats();
    assert_eq!(stats.requests, 8);
    assert!(stats.max_in_flight <= 2 && stats.max_open <= 2, "{stats:?}");
    sidepool.wait_gauges("ex", (0.0, 2.0, 0.0, 0.0)).await;
    let text = sidepool.metrics().await;
    assert!(
        text.contains("http_pool_errors_total{upstream=\"ex\",kind=\"pool_timeout\"} 12"),
        "{text}"
    );
}

/// FIFO without starvation: with a cap of 1, requests queued in a known order (each started
/// only once the waiting gauge shows the previous one queued) reach the exchange in exactly
/// that order, all over the one kept-alive connection.
#[tokio::test]
async fn queued_requests_are_served_in_arrival_order() {
    let upstream = TestUpstream::builder()
        .handler(hold_on_request)
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(
        &upstream,
        "max_connections_per_host = 1\nqueue_timeout = \"8s\"",
    )
    .await;
    let mut tasks = vec![spawn_get(&sidepool, "/ex/hold/0".to_owned())];
    upstream.wait_in_flight(1).await;
    sidepool.wait_gauges("ex", (1.0, 0.0, 0.0, 0.0)).await;
    for i in 1..=12 {
        tasks.push(spawn_get(&sidepool, format!("/ex/q/{i}")));
        sidepool
            .wait_gauges("ex", (1.0, 0.0, 0.0, f64::from(i)))
            .await;
    }
    upstream.release_stalled();
    for task in tasks {
        assert_eq!(task.await.unwrap().0, StatusCode::OK);
    }
    let expected: Vec<String> = std::iter::once("/hold/0".to_owned())
        .chain((1..=12).map(|i| format!("/q/{i}")))
        .collect();
    assert_eq!(paths(&upstream), expected);
    assert_eq!(upstream.stats().tcp_connections, 1);
    sidepool.wait_gauges("ex", (0.0, 1.0, 0.0, 0.0)).await;
}

/// The global cap (2) shared by two upstreams with per-host caps of 2, both names on one
/// exchange so its log shows the global order: upstream `a` takes both global slots; `b`'s
/// requests queue although `b` is under its own cap. When `a`'s requests finish, its
/// connections are closed to make room (reason `evicted`) instead of idling, and `b`'s waiters
/// get the slots: `a` ends with nothing open, `b` with two idle connections, and no more than
/// two requests were ever on the wire. A later request for `a` in turn evicts one of `b`'s idle
/// connections rather than queueing behind them.
#[tokio::test]
async fn global_cap_passes_freed_slots_to_the_starved_upstream() {
    let upstream = TestUpstream::builder()
        .handler(hold_on_request)
        .start()
        .await;
    let sidepool = Sidepool::start(&config_toml(
        "max_connections = 2\nmax_connections_per_host = 2\nqueue_timeout = \"8s\"",
        &[
            https("a", "exchange.test", upstream.port()),
            https("b", "other.test", upstream.port()),
        ],
    ))
    .await;
    let held: Vec<_> = (0..2)
        .map(|i| spawn_get(&sidepool, format!("/a/hold/{i}")))
        .collect();
    upstream.wait_in_flight(2).await;
    sidepool.wait_gauges("a", (2.0, 0.0, 0.0, 0.0)).await;
    let mut waiting = Vec::new();
    for i in 0..2 {
        waiting.push(spawn_get(&sidepool, format!("/b/q/{i}")));
        sidepool
            .wait_gauges("b", (0.0, 0.0, 0.0, f64::from(i + 1)))
            .await;
    }
    assert_eq!(upstream.stats().requests, 2, "b waits for a global slot");
    upstream.release_stalled();
    for task in held.into_iter().chain(waiting) {
        assert_eq!(task.await.unwrap().0, StatusCode::OK);
    }
    let got = paths(&upstream);
    assert_eq!(got.len(), 4);
    assert!(
        got[..2].iter().all(|p| p.starts_with("/hold/"))
            && got[2..].iter().all(|p| p.starts_with("/q/")),
        "{got:?}"
    );
    sidepool.wait_gauges("a", (0.0, 0.0, 0.0, 0.0)).await;
    sidepool.wait_gauges("b", (0.0, 2.0, 0.0, 0.0)).await;
    assert!(upstream.stats().max_in_flight <= 2);
    let text = sidepool.metrics().await;
    assert!(
        text.contains("http_pool_connections_closed_total{upstream=\"a\",reason=\"evicted\"} 2"),
        "{text}"
    );
    // Now `b` idles on both global slots: a new request for `a` closes the older of them.
    let (status, _, _) = send_fresh(sidepool.proxy, get("/a/again")).await;
    assert_eq!(status, StatusCode::OK);
    sidepool.wait_gauges("a", (0.0, 1.0, 0.0, 0.0)).await;
    sidepool.wait_gauges("b", (0.0, 1.0, 0.0, 0.0)).await;
    let text = sidepool.metrics().await;
    assert!(
        text.contains("http_pool_connections_closed_total{upstream=\"b\",reason=\"evicted\"} 1"),
        "{text}"
    );
}

/// Arrival order holds across upstreams under the global cap: `a` holds both global slots,
/// `b` queues, then `a` queues two more. The first slot `a` frees goes to `b`'s older waiter,
/// not to `a`'s later arrivals, so an upstream that keeps its own queue full cannot starve
/// another until `queue_timeout`.
#[tokio::test]
async fn later_arrivals_of_one_upstream_do_not_starve_another() {
    let upstream = TestUpstream::builder()
        .handler(hold_on_request)
        .start()
        .await;
    let sidepool = Sidepool::start(&config_toml(
        "max_connections = 2\nmax_connections_per_host = 2\nqueue_timeout = \"2s\"\nread_timeout = \"30s\"",
        &[
            https("a", "exchange.test", upstream.port()),
            https("b", "other.test", upstream.port()),
        ],
    ))
    .await;
    let mut a_tasks: Vec<_> = (0..2)
        .map(|i| spawn_get(&sidepool, format!("/a/hold/{i}")))
        .collect();
    upstream.wait_in_flight(2).await;
    let b_first = spawn_get(&sidepool, "/b/first".to_owned());
    sidepool.wait_gauges("b", (0.0, 0.0, 0.0, 1.0)).await;
    for i in 2..4 {
        a_tasks.push(spawn_get(&sidepool, format!("/a/hold/{i}")));
        sidepool
            .wait_gauges("a", (2.0, 0.0, 0.0, f64::from(i - 1)))
            .await;
    }
    upstream.release_stalled();
    let (status, kind, took) = b_first.await.unwrap();
    upstream.release_stalled();
    for task in a_tasks {
        let _ = task.await;
    }
    assert_eq!(
        status,
        StatusCode::OK,
        "b's first request ({kind}, after {took:?}) lost its turn to a's later arrivals: {:?}",
        paths(&upstream)
    );
}

/// A client that leaves while its connection is still being opened (the upstream accepts TCP
/// and never answers the TLS handshake; `connect_timeout` is long) gives back its slot at once:
/// the connecting gauge returns to 0, the half-open upstream socket is closed, and a request to
/// a healthy upstream that was queued for the one global slot gets it and succeeds.
#[tokio::test]
async fn client_leaving_during_connect_frees_the_slot() {
    let healthy = TestUpstream::start().await;
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let sidepool = Sidepool::start(&config_toml(
        "max_connections = 1\nmax_connections_per_host = 1\nconnect_timeout = \"60s\"\nqueue_timeout = \"8s\"",
        &[
            https("ex", "exchange.test", healthy.port()),
            https("silent", "other.test", silent_port),
        ],
    ))
    .await;
    let leaving = spawn_get(&sidepool, "/silent/x".to_owned());
    let (mut half_open, _) = tokio::time::timeout(PATIENCE, silent.accept())
        .await
        .expect("sidepool dials the silent upstream")
        .unwrap();
    sidepool.wait_gauges("silent", (0.0, 0.0, 1.0, 0.0)).await;
    let queued = spawn_get(&sidepool, "/ex/after".to_owned());
    sidepool.wait_gauges("ex", (0.0, 0.0, 0.0, 1.0)).await;
    leaving.abort();
    assert!(leaving.await.unwrap_err().is_cancelled());
    sidepool.wait_gauges("silent", (0.0, 0.0, 0.0, 0.0)).await;
    let (status, kind, _) = queued.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{kind}");
    sidepool.wait_gauges("ex", (0.0, 1.0, 0.0, 0.0)).await;
    assert_eq!(paths(&healthy), ["/after"]);
    // sidepool closed its end of the abandoned handshake (after the ClientHello, EOF).
    let mut sink = Vec::new();
    let read = tokio::time::timeout(PATIENCE, half_open.read_to_end(&mut sink)).await;
    assert!(
        read.is_ok(),
        "the abandoned handshake's socket is still open"
    );
    let text = sidepool.metrics().await;
    assert!(
        text.contains("http_pool_connections_opened_total{upstream=\"silent\"} 0"),
        "{text}"
    );
}
