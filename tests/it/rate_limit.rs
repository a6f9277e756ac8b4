//! The rate-limit guard end to end: cooldowns from 429/418 `Retry-After` (seconds and HTTP
//! dates), Bybit's 403 and retCode 10006, budgets paced against a fake exchange that bans
//! naive bots, the priority and deadline headers, and `none`.

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

/// Bybit: retCode 10006 (HTTP 200) holds that endpoint until `X-Bapi-Limit-Reset-Timestamp`
/// while other endpoints keep flowing; a 403 "access too frequent" cools the whole upstream
/// down (10 minutes); any other 403 starts nothing.
#[tokio::test]
async fn bybit_10006_holds_one_endpoint_and_403_too_frequent_stops_all() {
    let orders = AtomicUsize::new(0);
    let upstream = TestUpstream::builder()
        .handler(move |r: &Received| match r.path_and_query.as_str() {
            "/v5/order/create" if orders.fetch_add(1, Ordering::SeqCst) == 0 => {
                let reset = SystemTime::now() + Duration::from_secs(3);
                let ms = reset
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_millis();
                Reply::json(200, r#"{"retCode":10006,"retMsg":"Too many visits!"}"#)
                    .header("x-bapi-limit-status", "0")
                    .header("x-bapi-limit-reset-timestamp", &ms.to_string())
            }
            "/region" => Reply::text(403, "Forbidden: your region is blocked"),
            "/frequent" => Reply::text(403, "access too frequent"),
            _ => Reply::default_for(r),
        })
        .start()
        .await;
    let sidepool = sidepool(&upstream, SHORT_DEADLINE, "rate_limit = \"bybit\"").await;
    let order = || request("POST", "/ex/v5/order/create", "{}");
    let (status, _, body) = send_fresh(sidepool.proxy, order()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("10006"));
    let (status, headers, _) = send_fresh(sidepool.proxy, order()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["x-sidepool-error"], "rate_limited");
    assert_eq!(
        send_fresh(sidepool.proxy, get("/ex/v5/market/time"))
            .await
            .0,
        StatusCode::OK,
        "other endpoints keep flowing"
    );
    let refused = "upstream=\"ex\",reason=\"hold\",class=\"high\"";
    assert_eq!(
        sidepool
            .metric("http_pool_rate_limit_refused_total", refused)
            .await,
        Some(1.0),
        "an order is high"
    );

    assert_eq!(
        send_fresh(sidepool.proxy, get("/ex/region")).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send_fresh(sidepool.proxy, get("/ex/v5/market/time"))
            .await
            .0,
        StatusCode::OK,
        "a blocked region starts nothing"
    );
    assert_eq!(
        send_fresh(sidepool.proxy, get("/ex/frequent")).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, headers, _) = send_fresh(sidepool.proxy, get("/ex/v5/market/time")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let left: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((599..=600).contains(&left), "Retry-After {left}");
    let paths: Vec<String> = upstream
        .received()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect();
    assert_eq!(
        paths,
        [
            "/v5/order/create",
            "/v5/market/time",
            "/region",
            "/v5/market/time",
            "/frequent"
        ]
    );
}

fn depth_weight(r: &Received) -> u64 {
    if r.path_and_query.starts_with("/api/v3/depth") {
        5
    } else {
        1
    }
}

/// Two naive bots hammer one exchange budget through sidepool: sidepool paces them inside
/// the budget, so the exchange never answers 429 or 418, and nothing it serves goes over its
/// window's limit. Requests the budget cannot fit before their deadline are refused locally.
#[tokio::test]
async fn naive_bots_sharing_a_budget_never_get_banned() {
    let exchange = FakeExchange::start(Limits {
        limit: 40,
        window_ms: 1000,
        retry_after_secs: 2,
        grace: 2,
        weight: depth_weight,
    })
    .await;
    let sidepool = sidepool(
        &exchange.upstream,
        "queue_timeout = \"1500ms\"",
        "rate_limit = \"binance\"\nrate_limit_budget = \"40/1s\"",
    )
    .await;
    let proxy = sidepool.proxy;
    let bot = |name: &'static str| {
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..40 {
                let path = if i % 2 == 0 {
                    format!("/ex/api/v3/depth?symbol=BTCUSDT&bot={name}&i={i}")
                } else {
                    format!("/ex/api/v3/time?bot={name}&i={i}")
                };
                statuses.push(send_fresh(proxy, get(&path)).await.0);
            }
            statuses
        })
    };
    let bots = [bot("a"), bot("b"), bot("c"), bot("d")];
    let mut ok = 0;
    let mut refused = 0;
    for b in bots {
        for status in b.await.unwrap() {
            match status {
                StatusCode::OK => ok += 1,
                // 429 rate_limited, or 503 pool_timeout for one woken by a new window at its
                // deadline and then too late to send: sidepool's answers, never sent.
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => refused += 1,
                other => panic!("unexpected {other}"),
            }
        }
    }
    let tally = exchange.tally();
    assert_eq!(tally.banned, 0, "no 418");
    assert_eq!(tally.too_many, 0, "no 429 from the exchange");
    assert_eq!(tally.ok, ok);
    assert!(ok > 0 && ok + refused == 160);
    for (window, used) in &tally.per_window {
        assert!(*used <= 40, "window {window} served {used}");
    }
    sidepool
        .wait_gauges("ex", (0.0, sidepool.gauges("ex").await.1, 0.0, 0.0))
        .await;
    assert_eq!(
        sidepool
            .metric("http_pool_rate_limit_waiting", "upstream=\"ex\"")
            .await,
        Some(0.0)
    );
}

/// The same naive bots without the guard get the exchange's 429s and then its 418 ban:
/// the test that shows the fake exchange bans, so the test above means something.
#[tokio::test]
async fn without_the_guard_the_same_bots_get_banned() {
    let exchange = FakeExchange::start(Limits {
        limit: 40,
        window_ms: 1000,
        retry_after_secs: 2,
        grace: 2,
        weight: depth_weight,
    })
    .await;
    let sidepool = sidepool(&exchange.upstream, "", "rate_limit = \"none\"").await;
    let proxy = sidepool.proxy;
    let hits = Arc::new(AtomicUsize::new(0));
    let mut bots = Vec::new();
    for name in ["a", "b"] {
        let hits = hits.clone();
        bots.push(tokio::spawn(async move {
            for i in 0..30 {
                let path = format!("/ex/api/v3/depth?bot={name}&i={i}");
                if send_fresh(proxy, get(&path)).await.0 == StatusCode::IM_A_TEAPOT {
                    hits.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for b in bots {
        b.await.unwrap();
    }
    let tally = exchange.tally();
    assert!(tally.too_many > 0 && tally.banned > 0, "{tally:?}");
    assert_eq!(hits.load(Ordering::SeqCst), tally.banned);
}

/// A 418 ban read from Binance's body ("banned until <ms>") stops the upstream until then,
/// even when its `Retry-After` says less.
#[tokio::test]
async fn a_binance_418_body_sets_the_cooldown() {
    let upstream = limited_once(|| {
        let until = SystemTime::now() + Duration::from_secs(90);
        let ms = until
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        Reply::json(
            418,
            format!(r#"{{"code":-1003,"msg":"Way too many requests; IP banned until {ms}."}}"#),
        )
        .header("retry-after", "5")
    })
    .await;
    let sidepool = sidepool(&upstream, SHORT_DEADLINE, "rate_limit = \"binance\"").await;
    assert_eq!(
        send_fresh(sidepool.proxy, get("/ex/limited")).await.0,
        StatusCode::IM_A_TEAPOT
    );
    let (status, headers, _) = send_fresh(sidepool.proxy, get("/ex/api/v3/time")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let left: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((88..=90).contains(&left), "Retry-After {left}");
    let cause = "upstream=\"ex\",cause=\"banned\"";
    assert_eq!(
        sidepool
            .metric("http_pool_rate_limit_signals_total", cause)
            .await,
        Some(1.0),
        "one signal, however many readers found it"
    );
}

/// Hyperliquid weighs `POST /info` by its JSON body's `type`: the body is read to weigh it
/// and forwarded byte for byte; the budget then refuses what does not fit.
#[tokio::test]
async fn hyperliquid_bodies_are_weighed_and_forwarded_exactly() {
    let upstream = TestUpstream::start().await;
    let sidepool = sidepool(
        &upstream,
        "",
        // A day's window: the test never straddles two.
        "rate_limit = \"hyperliquid\"\nrate_limit_budget = \"50/1d\"",
    )
    .await;
    // Effective limit 48 (5% margin), 44 for a normal request (10% kept for orders).
    let body = r#"{"type": "l2Book",  "coin":"BTC"}"#;
    let mut oks = 0;
    for _ in 0..30 {
        let req = request("POST", "/ex/info", body);
        let (status, _, echoed) = send_fresh(sidepool.proxy, req).await;
        if status == StatusCode::OK {
            assert_eq!(echoed, Bytes::from_static(body.as_bytes()));
            oks += 1;
        } else {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        }
    }
    assert_eq!(oks, 22, "22 x weight 2 = 44");
    assert_eq!(upstream.received().len(), 22);
    assert!(
        upstream
            .received()
            .iter()
            .all(|r| r.body == body.as_bytes())
    );
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
