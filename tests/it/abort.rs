use http::StatusCode;
use http_body_util::BodyExt as _;

use crate::support::eventually::{Text, eventually};
use crate::support::harness::{Client, Sidepool, get, metric_value};
use crate::support::upstream::{Reply, TestUpstream};

const DRAINS: &str = "http_pool_abort_drains_total";

/// Starts a response for `target`, reads its first body frame (so the head and some bytes
/// reached the client), then leaves: drops the response and closes the client connection.
async fn leave_mid_response(sidepool: &Sidepool, target: &str) {
    let mut client = Client::connect(sidepool.proxy).await;
    let mut response = client.send_streaming(get(target)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let first = response.body_mut().frame().await.expect("a first frame");
    assert!(first.expect("a good frame").is_data());
    drop(response);
    drop(client);
}

/// Waits until `name{labels}` reads `value`.
async fn wait_metric(sidepool: &Sidepool, name: &str, labels: &str, value: f64) {
    eventually(&format!("{name}{{{labels}}} = {value}"), async || {
        let text = sidepool.metrics().await;
        if metric_value(&text, name, labels) == Some(value) {
            Ok(())
        } else {
            Err(Text(text))
        }
    })
    .await;
}

#[tokio::test]
async fn a_client_that_leaves_costs_nothing_when_the_rest_is_small_and_prompt() {
    let upstream = TestUpstream::builder()
        .handler(|r| {
            if r.path_and_query == "/slow-tail" {
                Reply::StallBody
            } else {
                Reply::json(200, "{}")
            }
        })
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(&upstream, "").await;
    leave_mid_response(&sidepool, "/ex/slow-tail").await;
    // The request is over for the bot (its line and counters are written) while the
    // connection still carries the rest of the response: active, not usable by anyone.
    wait_metric(
        &sidepool,
        "http_pool_requests_total",
        "upstream=\"ex\",status_class=\"2xx\"",
        1.0,
    )
    .await;
    assert_eq!(sidepool.gauges("ex").await, (1.0, 0.0, 0.0, 0.0));
    // The rest arrives promptly: read to its end, and the connection goes back to idle.
    upstream.release_stalled();
    wait_metric(&sidepool, DRAINS, "upstream=\"ex\",result=\"kept\"", 1.0).await;
    sidepool.wait_gauges("ex", (0.0, 1.0, 0.0, 0.0)).await;

    let mut client = Client::connect(sidepool.proxy).await;
    let (status, _, _) = client.send(get("/ex/next")).await;
    assert_eq!(status, StatusCode::OK);
    let stats = upstream.stats();
    assert_eq!(
        stats.tcp_connections, 1,
        "the next request reused the connection"
    );
    assert_eq!(stats.tls_handshakes, 1);
    let text = sidepool.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            "http_pool_connections_closed_total",
            "upstream=\"ex\",reason=\"incomplete\""
        ),
        Some(0.0),
        "{text}"
    );
}

#[tokio::test]
async fn a_large_rest_closes_the_connection_instead_of_reading_it() {
    // 1.6 MB, generated as it is read: far beyond what is worth reading to save a handshake.
    let upstream = TestUpstream::builder()
        .handler(|_| Reply::stream(100, 16 * 1024))
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(&upstream, "").await;
    leave_mid_response(&sidepool, "/ex/candles").await;
    wait_metric(
        &sidepool,
        DRAINS,
        "upstream=\"ex\",result=\"too_large\"",
        1.0,
    )
    .await;
    sidepool.wait_gauges("ex", (0.0, 0.0, 0.0, 0.0)).await;
    upstream.wait_open(0).await;
    let text = sidepool.metrics().await;
    assert_eq!(
        metric_value(&text, DRAINS, "upstream=\"ex\",result=\"kept\""),
        Some(0.0),
        "{text}"
    );
}

#[tokio::test]
async fn a_rest_that_does_not_come_in_time_closes_the_connection() {
    let upstream = TestUpstream::builder()
        .handler(|_| Reply::StallBody)
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(&upstream, "").await;
    leave_mid_response(&sidepool, "/ex/stalls").await;
    // Never released: the drain's time bound ends it.
    wait_metric(&sidepool, DRAINS, "upstream=\"ex\",result=\"timeout\"", 1.0).await;
    sidepool.wait_gauges("ex", (0.0, 0.0, 0.0, 0.0)).await;
    upstream.wait_open(0).await;
    upstream.release_stalled();
}
