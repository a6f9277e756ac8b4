//! The exchanges' own signals (Bybit's retCode 10006 and 403, Binance's 418 body, Hyperliquid's
//! body weights) and budgets paced against a fake exchange that bans bots ignoring its 429s.

use super::*;

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
