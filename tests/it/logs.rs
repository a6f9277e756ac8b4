use http::StatusCode;

use crate::support::harness::{
    Client, Process, config_toml, get, https, metric_value, raw, send_fresh,
};
use crate::support::upstream::{Reply, TestUpstream};

#[tokio::test]
async fn secrets_never_reach_the_logs_even_at_trace_level() {
    let upstream = TestUpstream::builder()
        .handler(|_| Reply::json(200, "{}").header("set-cookie", "session=SECRET-SETCOOKIE"))
        .start()
        .await;
    let port = upstream.port();
    let mut sidepool = Process::start(
        "logs",
        &config_toml("", &[https("ex", "exchange.test", port)]),
        &[("RUST_LOG", "trace")],
    )
    .await;
    let request = "GET /ex/api/v3/order?symbol=BTCUSDT&timestamp=1&signature=SECRET-SIGNATURE HTTP/1.1\r\n\
        Host: sidepool.test\r\n\
        Authorization: Bearer SECRET-BEARER\r\n\
        Cookie: session=SECRET-COOKIE\r\n\
        X-BAPI-API-KEY: SECRET-BYBIT-KEY\r\n\
        X-BAPI-SIGN: SECRET-BYBIT-SIGN\r\n\
        X-MBX-APIKEY: SECRET-BINANCE-KEY\r\n\
        OK-ACCESS-KEY: SECRET-OKX-KEY\r\n\
        OK-ACCESS-SIGN: SECRET-OKX-SIGN\r\n\
        OK-ACCESS-PASSPHRASE: SECRET-OKX-PASSPHRASE\r\n\
        Connection: close\r\n\r\n";
    let response = raw(sidepool.proxy, request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    // The upstream did get the credentials: they are redacted in logs only.
    assert_eq!(
        upstream.received()[0].header("x-bapi-api-key"),
        Some("SECRET-BYBIT-KEY")
    );
    sidepool.signal("TERM");
    assert_eq!(sidepool.wait_exit().await, Some(0));
    let log = sidepool.log_text();
    assert!(
        log.contains("signature=REDACTED"),
        "the request line is logged, redacted:\n{log}"
    );
    assert!(
        log.contains("TRACE") && log.contains("REDACTED"),
        "trace logging was on:\n{log}"
    );
    assert!(
        !log.contains("SECRET"),
        "a secret reached the log:\n{}",
        log.lines()
            .filter(|l| l.contains("SECRET"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let _ = StatusCode::OK;
}

#[tokio::test]
async fn json_logs_carry_one_line_per_request_with_its_fields() {
    let upstream = TestUpstream::builder().start().await;
    let port = upstream.port();
    let mut sidepool = Process::start(
        "json-logs",
        &(config_toml("", &[https("ex", "exchange.test", port)]) + "\n[log]\nformat = \"json\"\n"),
        &[],
    )
    .await;
    let response = raw(
        sidepool.proxy,
        b"GET /ex/v5/market/time HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    sidepool.signal("INT");
    assert_eq!(sidepool.wait_exit().await, Some(0));
    let log = sidepool.log_text();
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "request")
        .unwrap_or_else(|| panic!("no JSON request line in:\n{log}"));
    assert_eq!(line["upstream"], "ex");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/v5/market/time");
    assert_eq!(line["status"], 200);
    assert_eq!(line["conn"], "new");
    assert!(
        line["duration_ms"].as_f64().is_some() && line["queue_ms"].as_f64().is_some(),
        "{line}"
    );
}

/// Request lines as the text format writes them, in the order they were written.
fn request_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" INFO sidepool::proxy::log: request "))
        .collect()
}

#[tokio::test]
async fn every_request_line_written_before_sigterm_is_flushed_at_exit() {
    const REQUESTS: usize = 300;
    let upstream = TestUpstream::builder().start().await;
    let mut sidepool = Process::start(
        "logs-flush",
        &config_toml("", &[https("ex", "exchange.test", upstream.port())]),
        &[],
    )
    .await;
    let mut client = Client::connect(sidepool.proxy).await;
    for i in 0..REQUESTS {
        let (status, _, _) = client.send(get(&format!("/ex/n/{i}?x=1"))).await;
        assert_eq!(status, StatusCode::OK);
    }
    drop(client);
    // Straight to SIGTERM: most lines are still in the batch, none may be lost.
    sidepool.signal("TERM");
    assert_eq!(sidepool.wait_exit().await, Some(0));
    let log = sidepool.log_text();
    let lines = request_lines(&log);
    assert_eq!(lines.len(), REQUESTS, "one line per request:\n{log}");
    for (i, line) in lines.iter().enumerate() {
        assert!(
            line.contains(&format!(
                "request upstream=ex method=GET path=/n/{i}?x=1 status=200 duration_ms="
            )),
            "line {i} has the request's fields in order: {line}"
        );
        let conn = if i == 0 {
            "conn=\"new\""
        } else {
            "conn=\"reused\""
        };
        assert!(
            line.contains(conn) && line.ends_with("outcome=\"complete\""),
            "{line}"
        );
    }
}

#[tokio::test]
async fn a_request_line_appears_promptly_without_shutdown() {
    let upstream = TestUpstream::builder().start().await;
    let sidepool = Process::start(
        "logs-prompt",
        &config_toml("", &[https("ex", "exchange.test", upstream.port())]),
        &[],
    )
    .await;
    let (status, _, _) = send_fresh(sidepool.proxy, get("/ex/prompt")).await;
    assert_eq!(status, StatusCode::OK);
    // The writer flushes on its own timer (50 ms); allow far more on a loaded machine.
    let mut seen = false;
    for _ in 0..200 {
        if request_lines(&sidepool.log_text())
            .iter()
            .any(|l| l.contains("path=/prompt "))
        {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(seen, "no request line within 2 s:\n{}", sidepool.log_text());
    let (_, _, metrics) = send_fresh(sidepool.admin, get("/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert_eq!(
        metric_value(&metrics, "http_pool_log_lines_dropped_total", ""),
        Some(0.0),
        "the overflow counter is exported:\n{metrics}"
    );
}

#[tokio::test]
async fn warn_level_writes_no_request_lines() {
    let upstream = TestUpstream::builder().start().await;
    let mut sidepool = Process::start(
        "logs-warn",
        &config_toml("", &[https("ex", "exchange.test", upstream.port())]),
        &[("RUST_LOG", "warn")],
    )
    .await;
    let (status, _, _) = send_fresh(sidepool.proxy, get("/ex/quiet")).await;
    assert_eq!(status, StatusCode::OK);
    sidepool.signal("TERM");
    assert_eq!(sidepool.wait_exit().await, Some(0));
    let log = sidepool.log_text();
    assert!(
        request_lines(&log).is_empty(),
        "RUST_LOG=warn still filters:\n{log}"
    );
    assert_eq!(upstream.received().len(), 1);
}
