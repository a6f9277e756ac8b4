use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use crate::support::dns::{Mode, TestDns};
use crate::support::eventually::eventually_within;
use crate::support::faults::{closed, errors};
use crate::support::harness::{
    Client, PATIENCE, Sidepool, UpstreamSpec, config_toml, error_kind, get, https, send_fresh,
};
use crate::support::upstream::{Received, Reply, TestUpstream};

const HOST: &str = "exchange.test";
const LOCALHOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
/// Where the name points first, and where it moves, in the address change test.
const OLD: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const NEW: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// A config where `exchange.test` is resolved by `dns` alone (no `dns.static` entry).
fn config_with_dns(dns: &TestDns, pool: &str, upstreams: &[UpstreamSpec]) -> String {
    let pinned = "[dns.static]\n\"exchange.test\" = \"127.0.0.1\"\n";
    let toml = config_toml(pool, upstreams);
    assert!(
        toml.contains(pinned),
        "the harness pins exchange.test: {toml}"
    );
    toml.replace(
        pinned,
        &format!(
            "[dns]\nnameservers = [\"{}\"]\n\n[dns.static]\n",
            dns.addr()
        ),
    )
}

async fn sidepool_via(dns: &TestDns, port: u16, pool: &str) -> Sidepool {
    Sidepool::start(&config_with_dns(dns, pool, &[https("ex", HOST, port)])).await
}

/// `http_pool_dns_lookups_total` of upstream `ex` for `result`.
async fn lookups(sidepool: &Sidepool, result: &str) -> f64 {
    sidepool
        .metric(
            "http_pool_dns_lookups_total",
            &format!("upstream=\"ex\",result=\"{result}\""),
        )
        .await
        .unwrap_or(0.0)
}

/// A name the DNS server does not know is 502 `dns_failed` naming the host; the failure is
/// remembered briefly, so a request right after it does not ask the server again; once the
/// name exists, requests recover by themselves when that memory expires.
#[tokio::test]
async fn unknown_name_is_502_dns_failed_cached_briefly_then_recovers() {
    let dns = TestDns::start().await;
    let upstream = TestUpstream::start().await;
    let sidepool = sidepool_via(&dns, upstream.port(), "").await;

    let (status, headers, body) = send_fresh(sidepool.proxy, get("/ex/first")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["x-sidepool-error"], "dns_failed");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"], "dns_failed");
    assert!(json["message"].as_str().unwrap().contains(HOST), "{json}");
    assert_eq!(dns.a_queries(HOST), 1);

    let (status, _, body) = send_fresh(sidepool.proxy, get("/ex/again")).await;
    assert_eq!(
        (status, error_kind(&body).as_str()),
        (StatusCode::BAD_GATEWAY, "dns_failed")
    );
    assert_eq!(
        dns.a_queries(HOST),
        1,
        "the failure was answered from the cache"
    );
    assert_eq!(lookups(&sidepool, "hit").await, 1.0);
    sidepool.wait_gauges("ex", (0.0, 0.0, 0.0, 0.0)).await;

    dns.set(HOST, &[LOCALHOST], 60);
    let mut failures = 2.0;
    // Polling, not waiting for an event: what ends the failures is a cache expiry (1 s).
    let (within, every) = (Duration::from_secs(5), Duration::from_millis(100));
    eventually_within(
        within,
        every,
        "a request succeeds after the name was added",
        async || {
            let (status, _, body) = send_fresh(sidepool.proxy, get("/ex/poll")).await;
            if status == StatusCode::OK {
                return Ok(());
            }
            assert_eq!(error_kind(&body), "dns_failed");
            failures += 1.0;
            Err(status)
        },
    )
    .await;
    assert_eq!(errors(&sidepool, "ex", "dns_failed").await, failures);
    assert_eq!(
        dns.a_queries(HOST),
        2,
        "one query after the failure expired"
    );
    assert_eq!(upstream.stats().requests, 1);
    sidepool.wait_gauges("ex", (0.0, 1.0, 0.0, 0.0)).await;
}

/// A positive answer is cached for its TTL: five requests that each need a new connection
/// (the exchange closes every one) ask the DNS server once.
#[tokio::test]
async fn answers_are_cached_within_their_ttl() {
    let dns = TestDns::start().await;
    dns.set(HOST, &[LOCALHOST], 300);
    let upstream = TestUpstream::builder()
        .handler(|_| Reply::json(200, "{}").close())
        .start()
        .await;
    let sidepool = sidepool_via(&dns, upstream.port(), "").await;
    for i in 0..5 {
        let (status, _, _) = send_fresh(sidepool.proxy, get(&format!("/ex/tick?i={i}"))).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(
        upstream.stats().tcp_connections,
        5,
        "each needed a new connection"
    );
    assert_eq!(dns.a_queries(HOST), 1, "one lookup served all five");
    assert_eq!(lookups(&sidepool, "miss").await, 1.0);
    assert_eq!(lookups(&sidepool, "hit").await, 4.0);
    sidepool.wait_gauges("ex", (0.0, 0.0, 0.0, 0.0)).await;
}

/// A DNS server that answers SERVFAIL is 502 `dns_failed`; one that does not answer at all
/// makes a new connection fail with 504 `connect_timeout` naming the resolve step, within
/// `connect_timeout` rather than the resolver's own, longer timeouts.
#[tokio::test]
async fn failing_or_silent_dns_server_is_dns_failed_or_connect_timeout() {
    let dns = TestDns::start().await;
    dns.set(HOST, &[LOCALHOST], 60);
    let upstream = TestUpstream::start().await;
    let sidepool = sidepool_via(&dns, upstream.port(), "connect_timeout = \"500ms\"").await;

    dns.set_mode(Mode::ServFail);
    let (status, headers, _) = send_fresh(sidepool.proxy, get("/ex/servfail")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["x-sidepool-error"], "dns_failed");
    assert!(dns.a_queries(HOST) >= 1);
    sidepool.wait_gauges("ex", (0.0, 0.0, 0.0, 0.0)).await;

    // A fresh sidepool: the one above remembers its failure for a second.
    let sidepool = sidepool_via(&dns, upstream.port(), "connect_timeout = \"500ms\"").await;
    dns.set_mode(Mode::Silent);
    let asked = dns.a_queries(HOST);
    let started = Instant::now();
    let (status, headers, body) = send_fresh(sidepool.proxy, get("/ex/silent")).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(headers["x-sidepool-error"], "connect_timeout");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        json["message"].as_str().unwrap().contains("resolving"),
        "{json}"
    );
    assert!(dns.a_queries(HOST) > asked, "the server was asked");
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    sidepool.wait_gauges("ex", (0.0, 0.0, 0.0, 0.0)).await;
    assert_eq!(upstream.stats().tcp_connections, 0);
}

/// While the DNS server is down, re-lookups of an expired answer fail, and that retires
/// nothing: the pooled connection to the last known address stays and is reused.
#[tokio::test]
async fn dns_outage_does_not_retire_working_connections() {
    let dns = TestDns::start().await;
    dns.set(HOST, &[LOCALHOST], 1);
    let upstream = TestUpstream::start().await;
    let sidepool = sidepool_via(&dns, upstream.port(), "").await;
    let mut client = Client::connect(sidepool.proxy).await;
    assert_eq!(client.send(get("/ex/warm")).await.0, StatusCode::OK);
    sidepool.wait_gauges("ex", (0.0, 1.0, 0.0, 0.0)).await;

    dns.set_mode(Mode::ServFail);
    let asked = dns.a_queries(HOST);
    // Two failed re-lookups: the first expiry may be served from the resolver's own cache.
    dns.wait_a_queries(HOST, asked + 2).await;
    assert_eq!(sidepool.gauges("ex").await, (0.0, 1.0, 0.0, 0.0));
    assert_eq!(client.send(get("/ex/during")).await.0, StatusCode::OK);
    assert_eq!(
        upstream.stats().tcp_connections,
        1,
        "the connection was reused"
    );
    assert_eq!(closed(&sidepool, "ex", "dns_changed").await, 0.0);
    sidepool.wait_gauges("ex", (0.0, 1.0, 0.0, 0.0)).await;
}

/// Two upstreams on the same port of 127.0.0.2 and 127.0.0.3 (the port chosen on the first,
/// then bound on the second; tried again if the second has it taken).
async fn old_and_new_address(handler: fn(&Received) -> Reply) -> (TestUpstream, TestUpstream) {
    for _ in 0..20 {
        let old = TestUpstream::builder()
            .handler(handler)
            .bind(SocketAddr::from((OLD, 0)))
            .start()
            .await;
        let new = TestUpstream::builder()
            .handler(handler)
            .bind(SocketAddr::from((NEW, old.port())))
            .try_start()
            .await;
        if let Ok(new) = new {
            return (old, new);
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

/// When the name moves to another address (checked once the answer's TTL has passed, while
/// connections are open), the idle connection to the old address is closed at once
/// (`dns_changed`), new requests go to the new address, and a request in flight on an old
/// connection during the change completes normally; that connection is then closed, not
/// reused.
#[tokio::test]
async fn address_change_moves_traffic_and_drains_the_old_connections() {
    let (old, new) = old_and_new_address(|r| {
        if r.path_and_query == "/hold" {
            Reply::Stall
        } else {
            Reply::default_for(r)
        }
    })
    .await;
    let dns = TestDns::start().await;
    dns.set(HOST, &[OLD], 1);
    let sidepool = sidepool_via(&dns, old.port(), "").await;

    // One connection to the old address carries a request across the change, one is idle.
    let proxy = sidepool.proxy;
    let in_flight = tokio::spawn(async move { send_fresh(proxy, get("/ex/hold")).await });
    old.wait_in_flight(1).await;
    assert_eq!(
        send_fresh(sidepool.proxy, get("/ex/warm")).await.0,
        StatusCode::OK
    );
    sidepool.wait_gauges("ex", (1.0, 1.0, 0.0, 0.0)).await;
    assert_eq!(old.stats().tcp_connections, 2);

    dns.set(HOST, &[NEW], 1);
    // The re-lookup after the TTL retires the idle connection; the busy one stays.
    sidepool.wait_gauges("ex", (1.0, 0.0, 0.0, 0.0)).await;
    assert_eq!(closed(&sidepool, "ex", "dns_changed").await, 1.0);
    old.wait_open(1).await;

    let (status, _, body) = send_fresh(sidepool.proxy, get("/ex/moved")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("/moved"));
    assert_eq!(new.received().len(), 1, "the new address served it");
    assert_eq!(new.received()[0].path_and_query, "/moved");

    old.release_stalled();
    let (status, _, body) = tokio::time::timeout(PATIENCE, in_flight)
        .await
        .expect("the held request finished")
        .expect("no panic");
    assert_eq!(
        status,
        StatusCode::OK,
        "the request in flight drained normally"
    );
    assert!(String::from_utf8_lossy(&body).contains("/hold"));
    // Closed after its request, not pooled: only the new address's connection is idle.
    sidepool.wait_gauges("ex", (0.0, 1.0, 0.0, 0.0)).await;
    assert_eq!(closed(&sidepool, "ex", "dns_changed").await, 2.0);
    old.wait_open(0).await;

    assert_eq!(
        send_fresh(sidepool.proxy, get("/ex/after")).await.0,
        StatusCode::OK
    );
    let paths: Vec<String> = old
        .received()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect();
    assert_eq!(
        paths,
        ["/hold", "/warm"],
        "nothing more went to the old address"
    );
    assert_eq!(new.received().len(), 2);
    assert_eq!(
        new.stats().tcp_connections,
        1,
        "the new connection is reused"
    );
    sidepool.wait_gauges("ex", (0.0, 1.0, 0.0, 0.0)).await;
}
