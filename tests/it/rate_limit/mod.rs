//! The rate-limit guard end to end: cooldowns from 429/418 `Retry-After` (seconds and HTTP
//! dates), the priority and deadline headers, classes in the queue, and `none`. The exchanges'
//! own signals and budgets against a fake exchange that bans naive bots are in `profiles`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

use crate::support::exchange::{FakeExchange, Limits};
use crate::support::harness::{
    Sidepool, UpstreamSpec, config_toml, error_kind, get, https, request, send_fresh,
};
use crate::support::upstream::{Received, Reply, TestUpstream};

fn with(mut req: Request<Full<Bytes>>, headers: &[(&'static str, &str)]) -> Request<Full<Bytes>> {
    for (name, value) in headers {
        req.headers_mut().insert(*name, value.parse().unwrap());
    }
    req
}

/// A deadline shorter than every cooldown these tests start, so blocked requests are refused.
const SHORT_DEADLINE: &str = "queue_timeout = \"500ms\"";

fn ex(port: u16, extra: &'static str) -> UpstreamSpec {
    UpstreamSpec {
        extra,
        ..https("ex", "exchange.test", port)
    }
}

async fn sidepool(upstream: &TestUpstream, pool: &str, extra: &'static str) -> Sidepool {
    Sidepool::start(&config_toml(pool, &[ex(upstream.port(), extra)])).await
}

/// An upstream answering `/limited` with `reply` the first time, everything else (and
/// `/limited` again) with 200.
async fn limited_once(reply: impl Fn() -> Reply + Send + Sync + 'static) -> TestUpstream {
    let first = AtomicUsize::new(0);
    TestUpstream::builder()
        .handler(move |r| {
            if r.path_and_query.starts_with("/limited") && first.fetch_add(1, Ordering::SeqCst) == 0
            {
                reply()
            } else {
                Reply::default_for(r)
            }
        })
        .start()
        .await
}

/// A 429 with `Retry-After` passes to the bot untouched and starts a cooldown: every request
/// during it is answered by sidepool (429 `rate_limited`, `Retry-After`), none reaches the
/// exchange; one whose deadline outlasts the cooldown waits and is then sent.
#[tokio::test]
async fn a_429_starts_a_cooldown_during_which_nothing_reaches_the_exchange() {
    let upstream =
        limited_once(|| Reply::json(429, r#"{"msg":"slow down"}"#).header("retry-after", "2"))
            .await;
    // Requests wait for a cooldown that ends before their deadline (queue_timeout here).
    let sidepool = sidepool(&upstream, SHORT_DEADLINE, "").await;
    let (status, headers, body) = send_fresh(sidepool.proxy, get("/ex/limited")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body, Bytes::from_static(br#"{"msg":"slow down"}"#));
    assert_eq!(headers["retry-after"], "2");
    assert!(
        !headers.contains_key("x-sidepool-error"),
        "the exchange's own answer"
    );

    for path in ["/ex/a", "/ex/limited", "/ex/b?x=1"] {
        let (status, headers, body) = send_fresh(sidepool.proxy, get(path)).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{path}");
        assert_eq!(headers["x-sidepool-error"], "rate_limited");
        assert_eq!(error_kind(&body), "rate_limited");
        let left: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=2).contains(&left), "Retry-After {left}");
    }
    assert_eq!(
        upstream.received().len(),
        1,
        "nothing sent during the cooldown"
    );
    let cooldown = sidepool
        .metric("http_pool_rate_limit_cooldown_seconds", "upstream=\"ex\"")
        .await
        .unwrap();
    assert!(cooldown > 0.0 && cooldown <= 2.0, "{cooldown}");
    let refused = "upstream=\"ex\",reason=\"cooldown\",class=\"normal\"";
    assert_eq!(
        sidepool
            .metric("http_pool_rate_limit_refused_total", refused)
            .await,
        Some(3.0)
    );
    let cause = "upstream=\"ex\",cause=\"too_many_requests\"";
    assert_eq!(
        sidepool
            .metric("http_pool_rate_limit_signals_total", cause)
            .await,
        Some(1.0)
    );

    // A deadline past the cooldown's end: it waits (holding no connection), then goes.
    let waited_from = tokio::time::Instant::now();
    let patient = with(get("/ex/after"), &[("x-sidepool-deadline-ms", "5000")]);
    let (status, _, _) = send_fresh(sidepool.proxy, patient).await;
    assert_eq!(status, StatusCode::OK);
    assert!(waited_from.elapsed() >= Duration::from_millis(900));
    let received = upstream.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[1].path_and_query, "/after");
    let held = "upstream=\"ex\",reason=\"cooldown\",class=\"normal\"";
    assert_eq!(
        sidepool
            .metric("http_pool_rate_limit_held_total", held)
            .await,
        Some(1.0)
    );
    assert_eq!(
        sidepool
            .metric("http_pool_rate_limit_waiting", "upstream=\"ex\"")
            .await,
        Some(0.0)
    );
    sidepool.wait_gauges("ex", (0.0, 1.0, 0.0, 0.0)).await;
}

/// `Retry-After` as an HTTP date starts a cooldown until that time.
#[tokio::test]
async fn an_http_date_retry_after_cools_down_until_that_time() {
    let upstream = limited_once(|| {
        let at = SystemTime::now() + Duration::from_secs(3);
        Reply::status(429).header("retry-after", &httpdate(at))
    })
    .await;
    let sidepool = sidepool(&upstream, SHORT_DEADLINE, "").await;
    assert_eq!(
        send_fresh(sidepool.proxy, get("/ex/limited")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    let (status, headers, _) = send_fresh(sidepool.proxy, get("/ex/next")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["x-sidepool-error"], "rate_limited");
    let left: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    // The date has whole seconds, so 2 to 3 s remain.
    assert!((2..=3).contains(&left), "Retry-After {left}");
    assert_eq!(upstream.received().len(), 1);
}

/// An IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn httpdate(at: SystemTime) -> String {
    let secs = at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{weekday}, {day:02} {} {year} {h:02}:{m:02}:{s:02} GMT",
        months[(month - 1) as usize]
    )
}

/// `rate_limit = "none"`: a 429 passes through and starts nothing.
#[tokio::test]
async fn none_passes_429s_through_and_starts_nothing() {
    let upstream = limited_once(|| Reply::status(429).header("retry-after", "30")).await;
    let sidepool = sidepool(&upstream, "", "rate_limit = \"none\"").await;
    assert_eq!(
        send_fresh(sidepool.proxy, get("/ex/limited")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        send_fresh(sidepool.proxy, get("/ex/next")).await.0,
        StatusCode::OK
    );
    assert_eq!(upstream.received().len(), 2);
    assert_eq!(
        sidepool
            .metric("http_pool_rate_limit_cooldown_seconds", "upstream=\"ex\"")
            .await,
        None,
        "no guard, no gauge"
    );
}

/// Every `x-sidepool-*` header is removed before forwarding; a bad priority or deadline is
/// the bot's mistake (400) and reaches nothing.
#[tokio::test]
async fn reserved_headers_never_reach_the_exchange() {
    let upstream = TestUpstream::start().await;
    let sidepool = sidepool(&upstream, "", "").await;
    let req = with(
        get("/ex/x"),
        &[
            ("x-sidepool-priority", "high"),
            ("x-sidepool-deadline-ms", "2000"),
            ("x-sidepool-trace", "anything"),
            ("x-mbx-apikey", "kept"),
        ],
    );
    assert_eq!(send_fresh(sidepool.proxy, req).await.0, StatusCode::OK);
    for bad in [
        ("x-sidepool-priority", "urgent"),
        ("x-sidepool-deadline-ms", "soon"),
    ] {
        let (status, _, body) = send_fresh(sidepool.proxy, with(get("/ex/bad"), &[bad])).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}");
        assert!(String::from_utf8_lossy(&body).contains(bad.1));
    }
    let received = upstream.received();
    assert_eq!(received.len(), 1);
    let names: Vec<&str> = received[0]
        .headers
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with("x-sidepool-")),
        "{names:?}"
    );
    assert_eq!(received[0].header("x-mbx-apikey"), Some("kept"));
}

/// With the one connection busy, waiting requests are served by class, then arrival: `high`
/// before the older `normal` and `low` ones.
#[tokio::test]
async fn waiting_requests_are_served_by_class_under_a_saturated_cap() {
    let upstream = TestUpstream::stalling().await;
    let sidepool = sidepool(&upstream, "max_connections_per_host = 1", "").await;
    let proxy = sidepool.proxy;
    let holder = tokio::spawn(async move { send_fresh(proxy, get("/ex/hold")).await.0 });
    upstream.wait_in_flight(1).await;
    let mut waiting = Vec::new();
    for (i, class) in ["low", "normal", "high", "low", "high"].iter().enumerate() {
        let req = with(
            get(&format!("/ex/{class}/{i}")),
            &[("x-sidepool-priority", class)],
        );
        waiting.push(tokio::spawn(async move { send_fresh(proxy, req).await.0 }));
        sidepool
            .wait_gauges("ex", (1.0, 0.0, 0.0, (i + 1) as f64))
            .await;
    }
    upstream.release_stalled();
    assert_eq!(holder.await.unwrap(), StatusCode::OK);
    for task in waiting {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    let order: Vec<String> = upstream
        .received()
        .into_iter()
        .skip(1)
        .map(|r| r.path_and_query)
        .collect();
    assert_eq!(
        order,
        ["/high/2", "/high/4", "/normal/1", "/low/0", "/low/3"]
    );
    sidepool.wait_gauges("ex", (0.0, 1.0, 0.0, 0.0)).await;
}

/// A request that cannot get a connection before its `x-sidepool-deadline-ms` is answered
/// 503 `pool_timeout` at its deadline and never sent; during a cooldown one whose deadline
/// ends first is refused at once.
#[tokio::test]
async fn deadline_refusals_never_reach_the_exchange() {
    let upstream = TestUpstream::stalling().await;
    let sidepool = sidepool(
        &upstream,
        "max_connections_per_host = 1\nqueue_timeout = \"5s\"",
        "",
    )
    .await;
    let proxy = sidepool.proxy;
    let holder = tokio::spawn(async move { send_fresh(proxy, get("/ex/hold")).await.0 });
    upstream.wait_in_flight(1).await;
    let from = tokio::time::Instant::now();
    let late = with(get("/ex/late"), &[("x-sidepool-deadline-ms", "200")]);
    let (status, headers, body) = send_fresh(proxy, late).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["x-sidepool-error"], "pool_timeout");
    assert!(String::from_utf8_lossy(&body).contains("x-sidepool-deadline-ms 200"));
    let took = from.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(4),
        "{took:?}"
    );
    upstream.release_stalled();
    assert_eq!(holder.await.unwrap(), StatusCode::OK);
    let paths: Vec<String> = upstream
        .received()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect();
    assert_eq!(paths, ["/hold"]);
    sidepool.wait_gauges("ex", (0.0, 1.0, 0.0, 0.0)).await;
}

/// A request admitted before a cooldown started, still waiting for its connection when the
/// 429 arrives, is checked again once it has the connection: it is not sent into the
/// cooldown, and the connection goes back to the pool.
#[tokio::test]
async fn a_cooldown_that_starts_while_a_request_queues_stops_it_before_sending() {
    let upstream = TestUpstream::builder()
        .handler(|r| {
            if r.path_and_query == "/first" {
                Reply::status(429)
                    .header("retry-after", "5")
                    .delay(Duration::from_secs(1))
            } else {
                Reply::default_for(r)
            }
        })
        .start()
        .await;
    let sidepool = sidepool(&upstream, "max_connections_per_host = 1", "").await;
    let proxy = sidepool.proxy;
    let first = tokio::spawn(async move { send_fresh(proxy, get("/ex/first")).await.0 });
    upstream.wait_in_flight(1).await;
    let queued = tokio::spawn(async move { send_fresh(proxy, get("/ex/second")).await });
    sidepool.wait_gauges("ex", (1.0, 0.0, 0.0, 1.0)).await;
    assert_eq!(first.await.unwrap(), StatusCode::TOO_MANY_REQUESTS);
    let (status, headers, _) = queued.await.unwrap();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["x-sidepool-error"], "rate_limited");
    let paths: Vec<String> = upstream
        .received()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect();
    assert_eq!(paths, ["/first"]);
    sidepool.wait_gauges("ex", (0.0, 1.0, 0.0, 0.0)).await;
}

mod profiles;
