//! State-machine tests with fake connections: no sockets, paused time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::*;
use crate::metrics::Metrics;
use tokio::time::Instant;

#[derive(Clone)]
pub(super) struct FakeConn {
    name: &'static str,
    pub(super) closed: Arc<AtomicBool>,
}

impl FakeConn {
    pub(super) fn new(name: &'static str) -> Self {
        FakeConn {
            name,
            closed: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Poolable for FakeConn {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

pub(super) fn limits(cap: usize) -> PoolLimits {
    PoolLimits {
        max_connections: cap,
        idle_timeout: Duration::from_secs(30),
        queue_timeout: Duration::from_secs(5),
        max_waiting: None,
        warm_connections: 0,
        warm_refresh: Duration::from_secs(50),
    }
}

fn pools(global: usize, caps: &[usize]) -> (Arc<PoolSet<FakeConn>>, Arc<Metrics>) {
    pools_with(global, caps.iter().map(|&cap| limits(cap)))
}

/// Pools named a, b, c, ... with these limits, under a global cap.
pub(super) fn pools_with(
    global: usize,
    limits: impl IntoIterator<Item = PoolLimits>,
) -> (Arc<PoolSet<FakeConn>>, Arc<Metrics>) {
    let metrics = Metrics::new(global);
    let names = ["a", "b", "c", "d"];
    let set = PoolSet::new(
        global,
        limits.into_iter().enumerate().map(|(i, limits)| {
            let name: Arc<str> = Arc::from(names[i]);
            let m = metrics.upstream(&name, limits.max_connections);
            (name, limits, m)
        }),
    );
    (Arc::new(set), metrics)
}

fn counts(active: usize, idle: usize, connecting: usize, waiting: usize) -> PoolCounts {
    PoolCounts {
        active,
        idle,
        connecting,
        waiting,
    }
}

async fn connect(pool: &Arc<Pool<FakeConn>>, name: &'static str) -> Pooled<FakeConn> {
    match pool.checkout(Want::Any).await.expect("checkout") {
        Acquired::Connect(slot) => slot.established(FakeConn::new(name)),
        Acquired::Reused(_) => panic!("expected a new connection"),
    }
}

fn reused(acquired: Result<Acquired<FakeConn>, CheckoutError>) -> Pooled<FakeConn> {
    match acquired.expect("checkout") {
        Acquired::Reused(pooled) => pooled,
        Acquired::Connect(_) => panic!("expected a reused connection"),
    }
}

fn gauge_line(metrics: &Metrics, name: &str, upstream: &str) -> f64 {
    let text = metrics.render();
    let prefix = format!("{name}{{upstream=\"{upstream}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
}

#[tokio::test(start_paused = true)]
async fn released_connection_is_reused_most_recent_first() {
    let (set, metrics) = pools(10, &[5]);
    let pool = &set.pools()[0];
    let first = connect(pool, "first").await;
    let second = connect(pool, "second").await;
    assert_eq!(pool.counts(), counts(2, 0, 0, 0));
    first.release();
    second.release();
    assert_eq!(pool.counts(), counts(0, 2, 0, 0));
    assert_eq!(gauge_line(&metrics, "http_pool_connections_idle", "a"), 2.0);
    let mut again = reused(pool.checkout(Want::Any).await);
    assert_eq!(
        again.conn().name,
        "second",
        "most recently used comes first"
    );
    assert!(again.is_reused());
    assert_eq!(pool.counts(), counts(1, 1, 0, 0));
    assert_eq!(
        gauge_line(&metrics, "http_pool_connections_active", "a"),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn dropped_without_release_closes_and_frees_the_slot() {
    let (set, _metrics) = pools(10, &[1]);
    let pool = &set.pools()[0];
    let pooled = connect(pool, "x").await;
    drop(pooled);
    assert_eq!(pool.counts(), counts(0, 0, 0, 0));
    assert_eq!(set.open_total(), 0);
}

#[tokio::test(start_paused = true)]
async fn closed_idle_connection_is_skipped_at_checkout() {
    let (set, _metrics) = pools(10, &[2]);
    let pool = &set.pools()[0];
    let pooled = connect(pool, "x").await;
    let mut pooled = pooled;
    let closed = pooled.conn().closed.clone();
    pooled.release();
    closed.store(true, Ordering::SeqCst);
    assert!(matches!(
        pool.checkout(Want::Any).await,
        Ok(Acquired::Connect(_))
    ));
    assert_eq!(set.open_total(), 0, "the connect slot was dropped again");
    assert_eq!(pool.counts(), counts(0, 0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn waiter_gets_the_released_connection_in_fifo_order() {
    let (set, metrics) = pools(10, &[1]);
    let pool = set.pools()[0].clone();
    let held = connect(&pool, "only").await;
    let p1 = pool.clone();
    let first = tokio::spawn(async move { reused(p1.checkout(Want::Any).await).conn().name });
    tokio::task::yield_now().await;
    let p2 = pool.clone();
    let second = tokio::spawn(async move { p2.checkout(Want::Any).await.is_ok() });
    tokio::task::yield_now().await;
    assert_eq!(pool.counts(), counts(1, 0, 0, 2));
    assert_eq!(gauge_line(&metrics, "http_pool_requests_waiting", "a"), 2.0);
    held.release();
    assert_eq!(first.await.unwrap(), "only");
    // The first waiter's guard was dropped without release: closed, and the slot went to the
    // second waiter as a new-connection slot, which it dropped in turn.
    assert!(second.await.unwrap());
    assert_eq!(pool.counts(), counts(0, 0, 0, 0));
    assert_eq!(set.open_total(), 0);
}

#[tokio::test(start_paused = true)]
async fn queue_timeout_leaves_the_queue() {
    let (set, metrics) = pools(10, &[1]);
    let pool = &set.pools()[0];
    let _held = connect(pool, "only").await;
    let result = pool.checkout(Want::Any).await;
    assert!(matches!(result, Err(CheckoutError::QueueTimeout)));
    assert_eq!(pool.counts(), counts(1, 0, 0, 0));
    assert_eq!(gauge_line(&metrics, "http_pool_requests_waiting", "a"), 0.0);
}

#[tokio::test(start_paused = true)]
async fn checkout_timed_reports_the_queue_wait_and_zero_without_one() {
    let (set, _metrics) = pools(10, &[1]);
    let pool = set.pools()[0].clone();
    let (acquired, waited) = pool.checkout_timed(Want::Any).await;
    assert!(matches!(acquired, Ok(Acquired::Connect(_))));
    assert_eq!(waited, Duration::ZERO, "a free slot means no wait");
    drop(acquired);
    let held = connect(&pool, "only").await;
    let p = pool.clone();
    let queued = tokio::spawn(async move {
        let (acquired, waited) = p.checkout_timed(Want::Any).await;
        (reused(acquired).conn().name, waited)
    });
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_millis(250)).await;
    held.release();
    assert_eq!(
        queued.await.unwrap(),
        ("only", Duration::from_millis(250)),
        "the wait is from entering the queue to the grant"
    );
    // The task dropped its connection without releasing it (closed): the one slot is free.
    let _busy = connect(&pool, "second").await;
    let (timed_out, waited) = pool.checkout_timed(Want::Any).await;
    assert!(matches!(timed_out, Err(CheckoutError::QueueTimeout)));
    assert_eq!(waited, limits(1).queue_timeout);
}

#[tokio::test(start_paused = true)]
async fn release_at_counts_idle_time_from_the_given_instant() {
    let (set, _metrics) = pools(10, &[1]);
    let pool = &set.pools()[0];
    let conn = connect(pool, "x").await;
    let released = Instant::now();
    tokio::time::advance(Duration::from_secs(10)).await;
    conn.release_at(released);
    // Idle since `released`, not since the call: it expires 30 s after that.
    assert_eq!(
        pool.reap(Instant::now()),
        Some(released + Duration::from_secs(30))
    );
    tokio::time::advance(Duration::from_secs(20)).await;
    assert_eq!(pool.reap(Instant::now()), None);
    assert_eq!(pool.counts(), counts(0, 0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn cancelled_waiter_leaves_the_queue() {
    let (set, _metrics) = pools(10, &[1]);
    let pool = set.pools()[0].clone();
    let held = connect(&pool, "only").await;
    let p = pool.clone();
    let waiting = tokio::spawn(async move { p.checkout(Want::Any).await.is_ok() });
    tokio::task::yield_now().await;
    assert_eq!(pool.counts().waiting, 1);
    waiting.abort();
    let _ = waiting.await;
    assert_eq!(pool.counts(), counts(1, 0, 0, 0));
    held.release();
    assert_eq!(pool.counts(), counts(0, 1, 0, 0), "no waiter received it");
}

#[tokio::test(start_paused = true)]
async fn failed_connect_hands_its_slot_to_the_next_waiter() {
    let (set, _metrics) = pools(10, &[1]);
    let pool = set.pools()[0].clone();
    let Acquired::Connect(slot) = pool.checkout(Want::Any).await.unwrap() else {
        panic!("expected a slot")
    };
    let p = pool.clone();
    let waiting = tokio::spawn(async move {
        matches!(p.checkout(Want::Any).await, Ok(Acquired::Connect(slot)) if slot.id() > 0)
    });
    tokio::task::yield_now().await;
    assert_eq!(pool.counts(), counts(0, 0, 1, 1));
    drop(slot);
    assert!(waiting.await.unwrap());
    assert_eq!(pool.counts(), counts(0, 0, 0, 0));
    assert_eq!(set.open_total(), 0);
}

#[tokio::test(start_paused = true)]
async fn global_cap_evicts_least_recently_used_idle_of_another_upstream() {
    let (set, _metrics) = pools(2, &[2, 2]);
    let (a, b) = (&set.pools()[0], &set.pools()[1]);
    let old = connect(a, "old").await;
    let new = connect(a, "new").await;
    old.release();
    new.release();
    assert_eq!(a.counts(), counts(0, 2, 0, 0));
    let pooled = connect(b, "b1").await;
    assert_eq!(a.counts(), counts(0, 1, 0, 0));
    let mut survivor = reused(a.checkout(Want::Any).await);
    assert_eq!(survivor.conn().name, "new");
    assert_eq!(set.open_total(), 2);
    drop((pooled, survivor));
    assert_eq!(set.open_total(), 0);
}

#[tokio::test(start_paused = true)]
async fn starved_waiter_gets_a_slot_freed_by_another_upstream() {
    let (set, _metrics) = pools(2, &[2, 2]);
    let a = set.pools()[0].clone();
    let b = set.pools()[1].clone();
    let a1 = connect(&a, "a1").await;
    let a2 = connect(&a, "a2").await;
    let bb = b.clone();
    let waiting =
        tokio::spawn(
            async move { matches!(bb.checkout(Want::Any).await, Ok(Acquired::Connect(_))) },
        );
    tokio::task::yield_now().await;
    assert_eq!(b.counts(), counts(0, 0, 0, 1));
    // Going idle while another upstream is starved closes the connection to make room.
    a1.release();
    assert!(waiting.await.unwrap());
    assert_eq!(a.counts(), counts(1, 0, 0, 0));
    drop(a2);
    assert_eq!(set.open_total(), 0);
    assert_eq!(b.counts(), counts(0, 0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn full_queue_refuses_at_once_at_either_cap() {
    let metrics = Metrics::new(2);
    let bounded = |cap: usize, name: &str| {
        let name: Arc<str> = Arc::from(name);
        let m = metrics.upstream(&name, cap);
        let mut l = limits(cap);
        l.max_waiting = Some(1);
        (name, l, m)
    };
    let set = PoolSet::new(2, [bounded(1, "a"), bounded(2, "b")]);
    let (a, b) = (set.pools()[0].clone(), set.pools()[1].clone());
    // At its own cap: one request may wait, the next is refused without waiting.
    let a1 = connect(&a, "a1").await;
    let aa = a.clone();
    let queued = tokio::spawn(async move { aa.checkout(Want::Any).await.is_ok() });
    tokio::task::yield_now().await;
    assert_eq!(a.counts(), counts(1, 0, 0, 1));
    assert_eq!(
        a.checkout(Want::Any).await.err(),
        Some(CheckoutError::QueueFull)
    );
    // Under its own cap but at the global one (starved): the same bound applies.
    let b1 = connect(&b, "b1").await;
    let bb = b.clone();
    let starved = tokio::spawn(async move { bb.checkout(Want::Any).await.is_ok() });
    tokio::task::yield_now().await;
    assert_eq!(b.counts(), counts(1, 0, 0, 1));
    assert_eq!(
        b.checkout(Want::Any).await.err(),
        Some(CheckoutError::QueueFull)
    );
    assert_eq!(
        a.counts(),
        counts(1, 0, 0, 1),
        "a refusal leaves the queue as it was"
    );
    // Older first: a's waiter arrived before b's, so a's freed slot goes to a's own waiter.
    a1.release();
    assert!(queued.await.unwrap());
    drop(b1);
    assert!(starved.await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn caps_hold_under_concurrent_checkouts() {
    let (set, _metrics) = pools(5, &[4, 4]);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let pool = set.pools()[i % 2].clone();
        let set = set.clone();
        tasks.push(tokio::spawn(async move {
            let pooled = match pool.checkout(Want::Any).await.expect("checkout") {
                Acquired::Connect(slot) => {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    slot.established(FakeConn::new("n"))
                }
                Acquired::Reused(p) => p,
            };
            let c = pool.counts();
            assert!(c.active + c.idle + c.connecting <= 4);
            assert!(set.open_total() <= 5);
            tokio::time::sleep(Duration::from_millis(10)).await;
            pooled.release();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for pool in set.pools() {
        let c = pool.counts();
        assert_eq!((c.active, c.connecting, c.waiting), (0, 0, 0));
    }
    assert!(set.open_total() <= 5);
}

#[tokio::test(start_paused = true)]
async fn reaper_closes_idle_connections_after_idle_timeout() {
    let (set, metrics) = pools(10, &[2]);
    let pool = &set.pools()[0];
    connect(pool, "x").await.release();
    let now = Instant::now();
    assert!(pool.reap(now).is_some());
    assert_eq!(pool.counts().idle, 1);
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(pool.reap(Instant::now()), None);
    assert_eq!(pool.counts(), counts(0, 0, 0, 0));
    assert_eq!(set.open_total(), 0);
    assert!(metrics.render().contains("reason=\"idle_timeout\"} 1"));
}

#[tokio::test(start_paused = true)]
async fn fresh_checkout_at_cap_replaces_an_idle_connection() {
    let (set, _metrics) = pools(10, &[1]);
    let pool = &set.pools()[0];
    connect(pool, "x").await.release();
    assert!(matches!(
        pool.checkout(Want::NewOnly).await,
        Ok(Acquired::Connect(_))
    ));
    assert_eq!(pool.counts(), counts(0, 0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn connection_lost_while_idle_leaves_the_pool() {
    let (set, _metrics) = pools(10, &[2]);
    let pool = &set.pools()[0];
    let pooled = connect(pool, "x").await;
    let id = pooled.id();
    pooled.release();
    pool.connection_lost(id);
    assert_eq!(pool.counts(), counts(0, 0, 0, 0));
    assert_eq!(set.open_total(), 0);
}
