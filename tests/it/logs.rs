use http::StatusCode;

use crate::support::harness::{Process, config_toml, https, raw};
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
