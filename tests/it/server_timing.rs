use std::time::Duration;

use http::{HeaderMap, StatusCode};

use crate::support::harness::{Client, Sidepool, closed_port, config_toml, get, https, send_fresh};
use crate::support::upstream::{Reply, TestUpstream};

/// sidepool with `listen.server_timing = true` and one upstream `ex` at `port`.
async fn with_server_timing(port: u16) -> Sidepool {
    let toml = config_toml("", &[https("ex", "exchange.test", port)]).replace(
        "drain_timeout = \"5s\"\n",
        "drain_timeout = \"5s\"\nserver_timing = true\n",
    );
    assert!(toml.contains("server_timing = true"));
    Sidepool::start(&toml).await
}

/// sidepool's own field line: the last `Server-Timing` line.
fn sidepool_timing(headers: &HeaderMap) -> String {
    let lines: Vec<_> = headers.get_all("server-timing").iter().collect();
    let last = lines.last().expect("a Server-Timing field");
    last.to_str().unwrap().to_owned()
}

/// The `dur` of metric `name` in milliseconds.
fn dur(field: &str, name: &str) -> f64 {
    let metric = field
        .split(", ")
        .find(|m| m.starts_with(&format!("{name};")))
        .unwrap_or_else(|| panic!("no {name} in {field:?}"));
    metric
        .strip_prefix(&format!("{name};dur="))
        .unwrap_or_else(|| panic!("{metric:?} has no dur"))
        .parse()
        .unwrap_or_else(|e| panic!("{metric:?}: {e}"))
}

#[tokio::test]
async fn off_by_default_no_field_is_added() {
    let upstream = TestUpstream::builder().start().await;
    let sidepool = Sidepool::for_upstream(&upstream, "").await;
    let (status, headers, _) = send_fresh(sidepool.proxy, get("/ex/time")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get("server-timing").is_none(), "{headers:?}");
}

#[tokio::test]
async fn a_new_connection_then_a_reused_one_each_say_what_they_paid() {
    let upstream = TestUpstream::builder()
        .handler(|_| Reply::json(200, "{}").delay(Duration::from_millis(30)))
        .start()
        .await;
    let sidepool = with_server_timing(upstream.port()).await;
    let mut client = Client::connect(sidepool.proxy).await;

    let (status, headers, _) = client.send(get("/ex/time")).await;
    assert_eq!(status, StatusCode::OK);
    let first = sidepool_timing(&headers);
    assert!(first.ends_with(", conn;desc=\"new\""), "{first}");
    assert!(
        dur(&first, "connect") > 0.0,
        "a TLS handshake was paid: {first}"
    );
    assert!(
        dur(&first, "upstream") >= 30.0,
        "the exchange took 30 ms: {first}"
    );
    assert!(dur(&first, "queue") >= 0.0);

    let (status, headers, _) = client.send(get("/ex/time")).await;
    assert_eq!(status, StatusCode::OK);
    let second = sidepool_timing(&headers);
    assert!(second.ends_with(", conn;desc=\"reused\""), "{second}");
    assert_eq!(dur(&second, "connect"), 0.0, "{second}");
    assert!(dur(&second, "upstream") >= 30.0, "{second}");
    assert_eq!(upstream.stats().tls_handshakes, 1);
}

#[tokio::test]
async fn the_exchanges_own_field_is_kept_and_ours_follows() {
    let upstream = TestUpstream::builder()
        .handler(|_| Reply::json(200, "{}").header("server-timing", "matching;dur=1.5"))
        .start()
        .await;
    let sidepool = with_server_timing(upstream.port()).await;
    let (_, headers, _) = send_fresh(sidepool.proxy, get("/ex/order")).await;
    let lines: Vec<_> = headers
        .get_all("server-timing")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0], "matching;dur=1.5");
    assert!(lines[1].starts_with("queue;dur="), "{lines:?}");
}

#[tokio::test]
async fn sidepools_own_errors_carry_what_is_known() {
    // A dead upstream: 502, after a connect attempt.
    let sidepool = with_server_timing(closed_port()).await;
    let (status, headers, _) = send_fresh(sidepool.proxy, get("/ex/time")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let field = sidepool_timing(&headers);
    assert!(
        !field.contains("conn;"),
        "no connection carried it: {field}"
    );
    assert!(!field.contains("upstream;"), "{field}");
    dur(&field, "queue");
    dur(&field, "connect");

    // Refused before routing: nothing waited, nothing opened.
    let (status, headers, _) = send_fresh(sidepool.proxy, get("/nowhere/time")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(sidepool_timing(&headers), "queue;dur=0, connect;dur=0");
}
