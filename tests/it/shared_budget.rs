//! Shared budgets on a real redis-server: two sidepools with one store and key spend one budget
//! and stop together; other keys are apart; Redis stopped, restarted or frozen never stops
//! the sidecars from serving.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;

use crate::support::eventually::eventually;
use crate::support::exchange::{FakeExchange, Limits};
use crate::support::harness::{Sidepool, UpstreamSpec, config_toml, get, https, send_fresh};
use crate::support::redis::TestRedis;
use crate::support::upstream::{Received, Reply, TestUpstream};

/// A sidepool for `upstream` whose `[rate_limit]` is `store`/`key`, with `extra` upstream keys.
async fn sidecar(upstream: u16, store: &str, key: &str, extra: &'static str) -> Sidepool {
    let mut toml = config_toml(
        "queue_timeout = \"300ms\"",
        &[UpstreamSpec {
            extra,
            ..https("ex", "exchange.test", upstream)
        }],
    );
    toml.push_str(&format!(
        "\n[rate_limit]\nstore = {store:?}\nkey = {key:?}\ntimeout = \"100ms\"\nfallback_share = 0.5\n"
    ));
    Sidepool::start(&toml).await
}

async fn metric(sidepool: &Sidepool, name: &str) -> f64 {
    sidepool
        .metric(name, "upstream=\"ex\"")
        .await
        .or(sidepool.metric(name, "").await)
        .unwrap_or(f64::NAN)
}

async fn wait_cooldown(sidepool: &Sidepool) {
    eventually("the cooldown reaches this sidecar", async || {
        let left = metric(sidepool, "http_pool_rate_limit_cooldown_seconds").await;
        if left > 0.0 { Ok(()) } else { Err(left) }
    })
    .await;
}

fn limited_once() -> impl Fn(&Received) -> Reply + Send + Sync + 'static {
    let first = AtomicUsize::new(0);
    move |r| {
        if r.path_and_query == "/limited" && first.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::status(429).header("retry-after", "30")
        } else {
            Reply::default_for(r)
        }
    }
}

/// A cooldown started by one sidecar's 429 reaches the other through the store, which then
/// answers for the exchange: nothing more reaches it.
#[tokio::test]
async fn a_cooldown_seen_by_one_sidecar_stops_the_other() {
    let Some(redis) = TestRedis::start().await else {
        return;
    };
    let upstream = TestUpstream::builder()
        .handler(limited_once())
        .start()
        .await;
    let a = sidecar(upstream.port(), &redis.url(), "desk", "").await;
    let b = sidecar(upstream.port(), &redis.url(), "desk", "").await;
    assert_eq!(
        send_fresh(b.proxy, get("/ex/before")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send_fresh(a.proxy, get("/ex/limited")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    wait_cooldown(&b).await;
    let (status, headers, _) = send_fresh(b.proxy, get("/ex/after")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["x-sidepool-error"], "rate_limited");
    let paths: Vec<String> = upstream
        .received()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect();
    assert_eq!(paths, ["/before", "/limited"]);

    // A sidecar started after the cooldown finds it in the store on its first decision.
    let c = sidecar(
        upstream.port(),
        &redis.url(),
        "desk",
        "rate_limit_budget = \"1000/1s\"",
    )
    .await;
    let (status, _, _) = send_fresh(c.proxy, get("/ex/late")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(upstream.received().len(), 2);
}

/// Sidecars with another key share nothing: a cooldown of key `a` (seen by another sidecar of
/// `a`, so it has been published) leaves key `b` sending.
#[tokio::test]
async fn different_keys_do_not_interfere() {
    let Some(redis) = TestRedis::start().await else {
        return;
    };
    let upstream = TestUpstream::builder()
        .handler(limited_once())
        .start()
        .await;
    let a1 = sidecar(upstream.port(), &redis.url(), "a", "").await;
    let a2 = sidecar(upstream.port(), &redis.url(), "a", "").await;
    let b = sidecar(upstream.port(), &redis.url(), "b", "").await;
    assert_eq!(
        send_fresh(a1.proxy, get("/ex/limited")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    wait_cooldown(&a2).await;
    assert_eq!(
        send_fresh(b.proxy, get("/ex/other")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        metric(&b, "http_pool_rate_limit_cooldown_seconds").await,
        0.0
    );
}

fn weight_one(_: &Received) -> u64 {
    1
}

/// A naive flood through two sidecars sharing a key: their combined rate stays within the
/// shared budget (the exchange never answers 429), though each alone would spend all of it.
#[tokio::test]
async fn two_sidecars_flooding_stay_within_the_shared_budget() {
    let Some(redis) = TestRedis::start().await else {
        return;
    };
    let exchange = FakeExchange::start(Limits {
        limit: 60,
        window_ms: 1000,
        retry_after_secs: 2,
        grace: 4,
        weight: weight_one,
    })
    .await;
    let budget = "rate_limit_budget = \"60/1s\"";
    let port = exchange.upstream.port();
    let sidecars = [
        sidecar(port, &redis.url(), "fleet", budget).await,
        sidecar(port, &redis.url(), "fleet", budget).await,
    ];
    let mut bots = Vec::new();
    for (i, s) in sidecars.iter().enumerate() {
        for bot in 0..3 {
            let proxy = s.proxy;
            bots.push(tokio::spawn(async move {
                let mut ok = 0;
                for n in 0..40 {
                    let path = format!("/ex/md?sidecar={i}&bot={bot}&n={n}");
                    let (status, headers, _) = send_fresh(proxy, get(&path)).await;
                    // Refused (429 rate_limited), or woken at its deadline by a new window and
                    // then too late to send (503 pool_timeout): never sent either way.
                    let refused = headers
                        .get("x-sidepool-error")
                        .is_some_and(|k| k == "rate_limited" || k == "pool_timeout");
                    assert!(status == StatusCode::OK || refused, "{status} {headers:?}");
                    ok += usize::from(status == StatusCode::OK);
                }
                ok
            }));
        }
    }
    let mut ok = 0;
    for bot in bots {
        ok += bot.await.unwrap();
    }
    let tally = exchange.tally();
    assert_eq!(tally.too_many, 0, "no 429 from the exchange: {tally:?}");
    assert_eq!(tally.banned, 0);
    assert_eq!(tally.ok, ok);
    for (window, used) in &tally.per_window {
        assert!(*used <= 60, "window {window} served {used}");
    }
    assert!(ok < 240, "the budget held some back");
}

/// Redis stopped: both sidecars keep serving on their fallback share, the store-up gauge
/// says so; Redis back on the same port: they return to it by themselves.
#[tokio::test]
async fn a_stopped_and_restarted_redis_keeps_sidecars_serving_and_recovers() {
    let Some(mut redis) = TestRedis::start().await else {
        return;
    };
    let upstream = TestUpstream::start().await;
    // Leases of 5: a handful of requests must ask the store.
    let budget = "rate_limit_budget = \"100/1s\"";
    let a = sidecar(upstream.port(), &redis.url(), "r", budget).await;
    let b = sidecar(upstream.port(), &redis.url(), "r", budget).await;
    for s in [&a, &b] {
        assert_eq!(send_fresh(s.proxy, get("/ex/up")).await.0, StatusCode::OK);
        assert_eq!(metric(s, "http_pool_rate_limit_store_up").await, 1.0);
    }
    redis.stop();
    for s in [&a, &b] {
        for _ in 0..20 {
            assert_eq!(send_fresh(s.proxy, get("/ex/down")).await.0, StatusCode::OK);
        }
        assert_eq!(metric(s, "http_pool_rate_limit_store_up").await, 0.0);
    }
    redis.restart().await;
    for s in [&a, &b] {
        eventually("the store is back", async || {
            let up = metric(s, "http_pool_rate_limit_store_up").await;
            if up == 1.0 { Ok(()) } else { Err(up) }
        })
        .await;
        assert_eq!(
            send_fresh(s.proxy, get("/ex/again")).await.0,
            StatusCode::OK
        );
    }
}

/// A frozen Redis (SIGSTOP: connected, silent) holds a request no longer than
/// `[rate_limit] timeout` (100 ms here); then the sidecar decides alone until it answers.
#[tokio::test]
async fn a_frozen_redis_does_not_stall_requests_beyond_the_timeout() {
    let Some(redis) = TestRedis::start().await else {
        return;
    };
    let upstream = TestUpstream::start().await;
    let s = sidecar(
        upstream.port(),
        &redis.url(),
        "f",
        "rate_limit_budget = \"20/1s\"",
    )
    .await;
    assert_eq!(send_fresh(s.proxy, get("/ex/warm")).await.0, StatusCode::OK);
    redis.freeze(true);
    for i in 0..10 {
        let from = tokio::time::Instant::now();
        let status = send_fresh(s.proxy, get(&format!("/ex/frozen/{i}"))).await.0;
        let took = from.elapsed();
        assert!(
            status == StatusCode::OK || status == StatusCode::TOO_MANY_REQUESTS,
            "{status}"
        );
        assert!(
            took < Duration::from_millis(600),
            "request {i} took {took:?}"
        );
    }
    assert_eq!(metric(&s, "http_pool_rate_limit_store_up").await, 0.0);
    redis.freeze(false);
    eventually("the store answers again", async || {
        let up = metric(&s, "http_pool_rate_limit_store_up").await;
        if up == 1.0 { Ok(()) } else { Err(up) }
    })
    .await;
}
