use std::time::{Duration, Instant};

use http::StatusCode;

use crate::support::eventually::{Text, eventually};
use crate::support::harness::{
    Client, Sidepool, UpstreamSpec, closed_port, config_toml, get, https, metric_value,
};
use crate::support::upstream::{Reply, TestUpstream};

const WARM_CONNECTS: &str = "http_pool_warm_connects_total";
const WARM_PROBES: &str = "http_pool_warm_probes_total";
const REUSED: &str = "http_pool_connections_reused_total";
const CLOSED: &str = "http_pool_connections_closed_total";

/// Upstream `ex` with these extra keys (`prewarm`, `warm_probe`, overrides).
fn ex(port: u16, extra: &'static str) -> UpstreamSpec {
    UpstreamSpec {
        extra,
        ..https("ex", "exchange.test", port)
    }
}

/// Waits until `name{labels}` is at least `value`, and returns the scrape.
async fn wait_at_least(sidepool: &Sidepool, name: &str, labels: &str, value: f64) -> String {
    eventually(&format!("{name}{{{labels}}} >= {value}"), async || {
        let text = sidepool.metrics().await;
        match metric_value(&text, name, labels) {
            Some(now) if now >= value => Ok(text),
            _ => Err(Text(text)),
        }
    })
    .await
}

async fn get_ok(sidepool: &Sidepool, target: &str) {
    let mut client = Client::connect(sidepool.proxy).await;
    let (status, _, body) = client.send(get(target)).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
}

async fn metric(sidepool: &Sidepool, name: &str, labels: &str) -> f64 {
    sidepool.metric(name, labels).await.unwrap_or(f64::NAN)
}

#[tokio::test]
async fn the_floor_refills_after_the_exchange_closes_an_idle_connection() {
    let upstream = TestUpstream::builder()
        .idle_close_after(Duration::from_millis(400))
        .start()
        .await;
    let toml = config_toml(
        "warm_connections = 1\nwarm_refresh = \"60s\"",
        &[ex(upstream.port(), "")],
    );
    let sidepool = Sidepool::start(&toml).await;
    sidepool.wait_gauges("ex", (0.0, 0.0, 0.0, 0.0)).await;
    assert_eq!(
        upstream.stats().tcp_connections,
        0,
        "no floor before a request"
    );
    get_ok(&sidepool, "/ex/first").await;
    // The exchange cuts the idle connection; sidepool opens another one behind it.
    upstream
        .wait_until("the exchange closed one and a second was opened", |s| {
            s.idle_closes >= 1 && s.tcp_connections >= 2
        })
        .await;
    let text = wait_at_least(
        &sidepool,
        WARM_CONNECTS,
        "upstream=\"ex\",result=\"ok\"",
        1.0,
    )
    .await;
    // How long the exchange let it idle is learnt (one observation, about 400 ms).
    let count = metric_value(
        &text,
        "http_pool_idle_cutoff_seconds_count",
        "upstream=\"ex\"",
    );
    let sum = metric_value(
        &text,
        "http_pool_idle_cutoff_seconds_sum",
        "upstream=\"ex\"",
    );
    assert!(count >= Some(1.0), "{text}");
    assert!(sum.is_some_and(|s| s >= 0.3), "{text}");
    sidepool.wait_gauges("ex", (0.0, 1.0, 0.0, 0.0)).await;
    let reused = metric(&sidepool, REUSED, "upstream=\"ex\"").await;
    get_ok(&sidepool, "/ex/after-the-quiet-spell").await;
    assert_eq!(
        metric(&sidepool, REUSED, "upstream=\"ex\"").await,
        reused + 1.0,
        "the request after the cutoff went out on the warm connection"
    );
    sidepool.shutdown().await;
}

#[tokio::test]
async fn without_a_floor_the_request_after_the_cutoff_opens_a_connection() {
    let upstream = TestUpstream::builder()
        .idle_close_after(Duration::from_millis(300))
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(&upstream, "warm_connections = 0").await;
    get_ok(&sidepool, "/ex/first").await;
    upstream
        .wait_until("the exchange closed it", |s| s.idle_closes == 1)
        .await;
    sidepool.wait_gauges("ex", (0.0, 0.0, 0.0, 0.0)).await;
    assert_eq!(upstream.stats().tcp_connections, 1, "nothing reopened it");
    get_ok(&sidepool, "/ex/cold").await;
    assert_eq!(upstream.stats().tcp_connections, 2);
    assert_eq!(metric(&sidepool, REUSED, "upstream=\"ex\"").await, 0.0);
    sidepool.shutdown().await;
}

#[tokio::test]
async fn prewarm_opens_the_floor_at_start_and_a_burst_of_that_size_pays_no_handshake() {
    let upstream = TestUpstream::start().await;
    let toml = config_toml(
        "warm_connections = 3",
        &[ex(upstream.port(), "prewarm = true")],
    );
    let sidepool = Sidepool::start(&toml).await;
    sidepool.wait_gauges("ex", (0.0, 3.0, 0.0, 0.0)).await;
    let stats = upstream.stats();
    assert_eq!((stats.tls_handshakes, stats.requests), (3, 0));
    let burst = start_burst(&sidepool, 3, "/ex/order/");
    for status in futures_join(burst).await {
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(
        metric(&sidepool, REUSED, "upstream=\"ex\"").await,
        3.0,
        "every request of the burst went out on a ready connection"
    );
    sidepool.shutdown().await;
}

/// Starts `n` requests at once, each on its own client connection, to `prefix` + its number.
fn start_burst(
    sidepool: &Sidepool,
    n: usize,
    prefix: &'static str,
) -> Vec<tokio::task::JoinHandle<StatusCode>> {
    (0..n)
        .map(|i| {
            let proxy = sidepool.proxy;
            tokio::spawn(async move {
                let mut client = Client::connect(proxy).await;
                client.send(get(&format!("{prefix}{i}"))).await.0
            })
        })
        .collect()
}

/// Awaits every task, in order.
async fn futures_join<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.expect("task"));
    }
    out
}

#[tokio::test]
async fn a_burst_that_takes_the_floor_is_refilled_and_the_reaper_keeps_only_the_floor() {
    let upstream = TestUpstream::builder()
        .handler(|r| {
            if r.path_and_query.starts_with("/slow") {
                Reply::json(200, "{}").delay(Duration::from_millis(600))
            } else {
                Reply::default_for(r)
            }
        })
        .start()
        .await;
    let toml = config_toml(
        "warm_connections = 2\nidle_timeout = \"300ms\"",
        &[ex(upstream.port(), "prewarm = true")],
    );
    let sidepool = Sidepool::start(&toml).await;
    sidepool.wait_gauges("ex", (0.0, 2.0, 0.0, 0.0)).await;
    let burst = start_burst(&sidepool, 2, "/ex/slow/");
    // While the burst is out on the floor's two connections, two more are made ready.
    sidepool.wait_gauges("ex", (2.0, 2.0, 0.0, 0.0)).await;
    for status in futures_join(burst).await {
        assert_eq!(status, StatusCode::OK);
    }
    // Four idle, then idle_timeout closes the two beyond the floor.
    sidepool.wait_gauges("ex", (0.0, 2.0, 0.0, 0.0)).await;
    let text = wait_at_least(
        &sidepool,
        CLOSED,
        "upstream=\"ex\",reason=\"idle_timeout\"",
        2.0,
    )
    .await;
    assert_eq!(
        metric_value(&text, CLOSED, "upstream=\"ex\",reason=\"idle_timeout\""),
        Some(2.0),
        "the floor itself is never reaped: {text}"
    );
    sidepool.shutdown().await;
}

#[tokio::test]
async fn a_burst_that_hands_the_floor_back_at_once_opens_no_refill() {
    let upstream = TestUpstream::builder().start().await;
    let toml = config_toml(
        "warm_connections = 2",
        &[ex(upstream.port(), "prewarm = true")],
    );
    let sidepool = Sidepool::start(&toml).await;
    sidepool.wait_gauges("ex", (0.0, 2.0, 0.0, 0.0)).await;
    for status in futures_join(start_burst(&sidepool, 2, "/ex/quick")).await {
        assert_eq!(status, StatusCode::OK);
    }
    // The refill waits 250 ms for the connections to come back. (A warm task that spun on the
    // pool's notifications meanwhile held the burst until the refill: this fails then too.)
    // Nothing to await: a refill would happen in the background. Give it well over the settle
    // time and check that the burst's two connections were all there was.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let text = sidepool.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            "http_pool_connections_opened_total",
            "upstream=\"ex\""
        ),
        Some(2.0),
        "a refill competed with a burst that came back at once: {text}"
    );
    sidepool.wait_gauges("ex", (0.0, 2.0, 0.0, 0.0)).await;
    sidepool.shutdown().await;
}

#[tokio::test]
async fn a_floor_the_global_cap_cannot_fill_does_not_hold_other_requests() {
    let first = TestUpstream::builder().start().await;
    let second = TestUpstream::builder().start().await;
    let toml = config_toml(
        "warm_connections = 1\nmax_connections = 1",
        &[
            ex(first.port(), "prewarm = true"),
            UpstreamSpec {
                extra: "",
                ..https("other", "exchange.test", second.port())
            },
        ],
    );
    let sidepool = Sidepool::start(&toml).await;
    sidepool.wait_gauges("ex", (0.0, 1.0, 0.0, 0.0)).await;
    // The only global slot goes from ex's warm connection to this request; ex's floor then
    // misses a connection it cannot open. (Its warm task once spun on that, holding every
    // request on its thread: the second request here never got through.)
    for _ in 0..2 {
        let mut client = Client::connect(sidepool.proxy).await;
        assert_eq!(client.send(get("/other/x")).await.0, StatusCode::OK);
    }
    sidepool.wait_gauges("other", (0.0, 1.0, 0.0, 0.0)).await;
    sidepool.wait_gauges("ex", (0.0, 0.0, 0.0, 0.0)).await;
    sidepool.shutdown().await;
}

#[tokio::test]
async fn a_refresh_replaces_warm_connections_before_the_exchange_cuts_them() {
    let upstream = TestUpstream::builder()
        .idle_close_after(Duration::from_millis(1500))
        .start()
        .await;
    let toml = config_toml(
        "warm_connections = 1\nwarm_refresh = \"300ms\"",
        &[ex(upstream.port(), "prewarm = true")],
    );
    let sidepool = Sidepool::start(&toml).await;
    // Make before break: every scrape shows a ready connection, while they are replaced.
    let what = "three refreshes, each scrape with a ready connection";
    eventually(what, async || {
        let text = sidepool.metrics().await;
        let idle = metric_value(&text, "http_pool_connections_idle", "upstream=\"ex\"");
        let refreshed = metric_value(&text, CLOSED, "upstream=\"ex\",reason=\"refreshed\"");
        if refreshed.is_some_and(|r| r >= 1.0) {
            assert!(
                idle >= Some(1.0),
                "no ready connection during a refresh: {text}"
            );
        }
        if refreshed >= Some(3.0) {
            Ok(())
        } else {
            Err(Text(text))
        }
    })
    .await;
    let stats = upstream.stats();
    assert_eq!(stats.idle_closes, 0, "the exchange never had to cut one");
    assert!(stats.tcp_connections >= 4, "{stats:?}");
    let reused = metric(&sidepool, REUSED, "upstream=\"ex\"").await;
    get_ok(&sidepool, "/ex/order").await;
    assert_eq!(
        metric(&sidepool, REUSED, "upstream=\"ex\"").await,
        reused + 1.0
    );
    assert_eq!(upstream.stats().idle_closes, 0);
    assert!(
        upstream
            .received()
            .iter()
            .all(|r| r.path_and_query == "/order"),
        "refreshes send nothing"
    );
    sidepool.shutdown().await;
}

#[tokio::test]
async fn a_probe_keeps_the_warm_connection_open_with_a_get_of_its_path() {
    let upstream = TestUpstream::builder()
        .idle_close_after(Duration::from_millis(1500))
        .start()
        .await;
    let toml = config_toml(
        "warm_connections = 1\nwarm_refresh = \"300ms\"",
        &[ex(
            upstream.port(),
            "prewarm = true\nwarm_probe = \"/v5/market/time?probe=1\"",
        )],
    );
    let sidepool = Sidepool::start(&toml).await;
    wait_at_least(&sidepool, WARM_PROBES, "upstream=\"ex\",result=\"ok\"", 3.0).await;
    let stats = upstream.stats();
    assert_eq!(
        (stats.tcp_connections, stats.idle_closes),
        (1, 0),
        "one connection, kept open by its probes"
    );
    let received = upstream.received();
    assert!(received.len() >= 3);
    for r in &received {
        assert_eq!(
            (r.method.as_str(), r.path_and_query.as_str()),
            ("GET", "/v5/market/time?probe=1")
        );
        assert_eq!(r.header("user-agent"), Some("sidepool-warm-probe"));
        assert_eq!(
            r.header("host"),
            Some(format!("exchange.test:{}", upstream.port()).as_str())
        );
        assert!(
            r.headers
                .iter()
                .all(|(name, _)| !name.starts_with("x-sidepool"))
        );
        assert!(r.body.is_empty());
    }
    let text = sidepool.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            "http_pool_requests_total",
            "upstream=\"ex\",status_class=\"2xx\""
        ),
        Some(0.0),
        "probes are not bot requests: {text}"
    );
    sidepool.shutdown().await;
}

#[tokio::test]
async fn a_dead_exchange_is_retried_with_back_off_and_sidepool_stays_ready() {
    let port = closed_port();
    let toml = config_toml(
        "warm_connections = 1\nconnect_timeout = \"1s\"",
        &[ex(port, "prewarm = true")],
    );
    let started = Instant::now();
    let sidepool = Sidepool::start(&toml).await;
    let failed = "upstream=\"ex\",result=\"failed\"";
    let text = wait_at_least(&sidepool, WARM_CONNECTS, failed, 4.0).await;
    let elapsed = started.elapsed();
    // Waits of at least 75, 150 and 300 ms (100 ms doubling, less a quarter of jitter).
    assert!(
        elapsed >= Duration::from_millis(500),
        "4 attempts in {elapsed:?}: not backing off"
    );
    let attempts = metric_value(&text, WARM_CONNECTS, failed).unwrap_or_default();
    assert!(attempts <= 6.0, "{attempts} attempts in {elapsed:?}");
    // Meanwhile requests still get their answer at once, and sidepool is ready.
    let mut client = Client::connect(sidepool.proxy).await;
    let (status, _, _) = client.send(get("/ex/order")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let mut admin = Client::connect(sidepool.admin).await;
    assert_eq!(admin.send(get("/readyz")).await.0, StatusCode::OK);
    // The exchange comes back: the floor opens at the next attempt.
    let upstream = TestUpstream::builder()
        .bind(format!("127.0.0.1:{port}").parse().expect("addr"))
        .start()
        .await;
    sidepool.wait_gauges("ex", (0.0, 1.0, 0.0, 0.0)).await;
    assert_eq!(upstream.stats().requests, 0);
    sidepool.shutdown().await;
}

#[tokio::test]
async fn warm_connections_stay_within_the_caps_under_a_burst() {
    let upstream = TestUpstream::builder()
        .handler(|_| Reply::json(200, "{}").delay(Duration::from_millis(50)))
        .start()
        .await;
    let toml = config_toml(
        "max_connections_per_host = 2\nwarm_connections = 2",
        &[ex(upstream.port(), "prewarm = true")],
    );
    let sidepool = Sidepool::start(&toml).await;
    sidepool.wait_gauges("ex", (0.0, 2.0, 0.0, 0.0)).await;
    let burst = start_burst(&sidepool, 8, "/ex/b/");
    for status in futures_join(burst).await {
        assert_eq!(
            status,
            StatusCode::OK,
            "no request lost its slot to the floor"
        );
    }
    sidepool.wait_gauges("ex", (0.0, 2.0, 0.0, 0.0)).await;
    let stats = upstream.stats();
    assert_eq!(stats.max_open, 2, "{stats:?}");
    assert_eq!(
        stats.tcp_connections, 2,
        "the floor was the burst's connections: {stats:?}"
    );
    sidepool.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_the_warm_task_and_closes_the_floor() {
    let upstream = TestUpstream::start().await;
    let toml = config_toml(
        "warm_connections = 2",
        &[ex(upstream.port(), "prewarm = true")],
    );
    let sidepool = Sidepool::start(&toml).await;
    sidepool.wait_gauges("ex", (0.0, 2.0, 0.0, 0.0)).await;
    sidepool.shutdown().await;
    let stats = upstream
        .wait_until("every connection closed", |s| s.open_now == 0)
        .await;
    assert_eq!(
        stats.tcp_connections, 2,
        "nothing reopened the floor at shutdown"
    );
}

/// During a rate-limit cooldown no probe is sent: warm connections are refreshed by
/// reconnecting instead, which sends the exchange nothing.
#[tokio::test]
async fn probes_stop_during_a_cooldown_and_connections_are_refreshed_instead() {
    let upstream = TestUpstream::builder()
        .handler(|r| {
            if r.path_and_query == "/limited" {
                Reply::status(429).header("retry-after", "30")
            } else {
                Reply::default_for(r)
            }
        })
        .start()
        .await;
    let toml = config_toml(
        "warm_connections = 1\nwarm_refresh = \"300ms\"\nqueue_timeout = \"500ms\"",
        &[ex(
            upstream.port(),
            "prewarm = true\nwarm_probe = \"/probe\"",
        )],
    );
    let sidepool = Sidepool::start(&toml).await;
    wait_at_least(&sidepool, WARM_PROBES, "upstream=\"ex\",result=\"ok\"", 1.0).await;
    let mut client = Client::connect(sidepool.proxy).await;
    let (status, _, _) = client.send(get("/ex/limited")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let connects = "upstream=\"ex\",result=\"ok\"";
    let before = sidepool.metric(WARM_CONNECTS, connects).await.unwrap();
    // Once the floor is refreshed by reconnecting, no probe is in flight any more.
    wait_at_least(&sidepool, WARM_CONNECTS, connects, before + 1.0).await;
    let probes = |r: &Vec<crate::support::upstream::Received>| {
        r.iter().filter(|r| r.path_and_query == "/probe").count()
    };
    let probed = probes(&upstream.received());
    wait_at_least(&sidepool, WARM_CONNECTS, connects, before + 3.0).await;
    assert_eq!(
        probes(&upstream.received()),
        probed,
        "no probe during the cooldown"
    );
}
