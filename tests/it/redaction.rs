//! Secrets never reach the logs: not in the success line, the refused line (4xx) or the
//! failed line (5xx), in route mode and forward-proxy mode, with signature parameters named
//! plainly or percent-encoded, and credential headers, at trace level.

use crate::support::harness::{Process, config_toml, https, raw};
use crate::support::upstream::{Reply, TestUpstream};

/// Credential headers of the exchanges, each value marked SECRET.
const CREDENTIALS: &str = "Authorization: Bearer SECRET-BEARER\r\n\
    Cookie: session=SECRET-COOKIE\r\n\
    X-BAPI-API-KEY: SECRET-BYBIT-KEY\r\n\
    X-BAPI-SIGN: SECRET-BYBIT-SIGN\r\n\
    X-MBX-APIKEY: SECRET-BINANCE-KEY\r\n\
    OK-ACCESS-SIGN: SECRET-OKX-SIGN\r\n\
    OK-ACCESS-PASSPHRASE: SECRET-OKX-PASSPHRASE\r\n";

/// A query with secrets under plain, percent-encoded and doubly encoded names.
const QUERY: &str = "symbol=BTCUSDT&signature=SECRET-PLAIN&%73ignature=SECRET-ENCODED\
    &api%4Bey=SECRET-KEY&%2573ign=SECRET-TWICE&SIGN%61TURE=SECRET-UPPER";

#[tokio::test]
async fn no_secret_reaches_any_log_line_in_either_addressing_mode() {
    let upstream = TestUpstream::builder()
        .handler(|r| {
            if r.path_and_query.starts_with("/fail") {
                Reply::Reset
            } else {
                Reply::json(200, "{}")
            }
        })
        .start()
        .await;
    let port = upstream.port();
    let mut sidepool = Process::start(
        "redaction",
        &config_toml("", &[https("ex", "exchange.test", port)]),
        &[("RUST_LOG", "trace")],
    )
    .await;
    let absolute = format!("http://exchange.test:{port}");
    // The failing requests are POSTs: a GET would be re-sent once on a new connection (the
    // re-send rule), and the upstream would see it twice.
    let cases = [
        // (method, target, expected status)
        ("GET", format!("/ex/ok?{QUERY}"), "200"),
        ("GET", format!("/nope/refused?{QUERY}"), "403"),
        ("POST", format!("/ex/fail?{QUERY}"), "502"),
        ("GET", format!("{absolute}/ok?{QUERY}"), "200"),
        ("GET", format!("http://evil.example/refused?{QUERY}"), "403"),
        ("POST", format!("{absolute}/fail?{QUERY}"), "502"),
    ];
    for (method, target, status) in &cases {
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: sidepool.test\r\n{CREDENTIALS}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let response = raw(sidepool.proxy, request.as_bytes()).await;
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status}")),
            "{target}: {response}"
        );
        assert!(!response.contains("SECRET"), "{target}: {response}");
    }
    // Redaction is for the logs only: the upstream got the query byte for byte.
    let received = upstream.received();
    let forwarded: Vec<&str> = received.iter().map(|r| r.path_and_query.as_str()).collect();
    assert_eq!(
        forwarded,
        [
            format!("/ok?{QUERY}"),
            format!("/fail?{QUERY}"),
            format!("/ok?{QUERY}"),
            format!("/fail?{QUERY}"),
        ]
    );
    assert_eq!(
        received[0].header("x-bapi-api-key"),
        Some("SECRET-BYBIT-KEY")
    );
    sidepool.signal("TERM");
    assert_eq!(sidepool.wait_exit().await, Some(0));
    let log = sidepool.log_text();
    for (line, count) in [
        ("request upstream=", 2),
        ("request refused", 2),
        ("request failed", 2),
    ] {
        assert_eq!(
            log.lines()
                .filter(|l| l.contains(line) && l.contains("REDACTED"))
                .count(),
            count,
            "{line:?} lines, with the query redacted:\n{log}"
        );
    }
    assert!(
        log.contains("%73ignature=REDACTED") && log.contains("api%4Bey=REDACTED"),
        "encoded names are logged as sent, their values redacted:\n{log}"
    );
    assert!(
        log.contains("TRACE") && log.contains("x-bapi-sign: REDACTED"),
        "trace logging showed the headers, redacted:\n{log}"
    );
    let leaks: Vec<&str> = log.lines().filter(|l| l.contains("SECRET")).collect();
    assert!(
        leaks.is_empty(),
        "secrets reached the log:\n{}",
        leaks.join("\n")
    );
}
