//! State-machine tests with fake connections: no sockets, paused time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::*;
use crate::metrics::Metrics;

#[derive(Clone)]
struct FakeConn {
    name: &'static str,
    closed: Arc<AtomicBool>,
}

impl FakeConn {
    fn new(name: &'static str) -> Self {
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

fn limits(cap: usize) -> PoolLimits {
    PoolLimits {
        max_connections: cap,
        idle_timeout: Duration::from_secs(30),
        queue_timeout: Duration::from_secs(5),
        max_waiting: None,
    }
}

fn pools(global: usize, caps: &[usize]) -> (Arc<PoolSet<FakeConn>>, Arc<Metrics>) {
    let metrics = Metrics::new(global);
    let names = ["a", "b", "c"];
    let set = PoolSet::new(
        global,
        caps.iter().enumerate().map(|(i, cap)| {
            let name: Arc<str> = Arc::from(names[i]);
            let m = metrics.upstream(&name, *cap);
            (name, limits(*cap), m)
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
    match pool.checkout(false).await.expect("checkout") {
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
    let mut again = reused(pool.checkout(false).await);
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
        pool.checkout(false).await,
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
    let first = tokio::spawn(async move { reused(p1.checkout(false).await).conn().name });
    tokio::task::yield_now().await;
    let p2 = pool.clone();
    let second = tokio::spawn(async move { p2.checkout(false).await.is_ok() });
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
    let result = pool.checkout(false).await;
    assert!(matches!(result, Err(CheckoutError::QueueTimeout)));
    assert_eq!(pool.counts(), counts(1, 0, 0, 0));
    assert_eq!(gauge_line(&metrics, "http_pool_requests_waiting", "a"), 0.0);
}

#[tokio::test(start_paused = true)]
async fn cancelled_waiter_leaves_the_queue() {
    let (set, _metrics) = pools(10, &[1]);
    let pool = set.pools()[0].clone();
    let held = connect(&pool, "only").await;
    let p = pool.clone();
    let waiting = tokio::spawn(async move { p.checkout(false).await.is_ok() });
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
    let Acquired::Connect(slot) = pool.checkout(false).await.unwrap() else {
        panic!("expected a slot")
    };
    let p = pool.clone();
    let waiting = tokio::spawn(async move {
        matches!(p.checkout(false).await, Ok(Acquired::Connect(slot)) if slot.id() > 0)
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
    let mut survivor = reused(a.checkout(false).await);
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
        tokio::spawn(async move { matches!(bb.checkout(false).await, Ok(Acquired::Connect(_))) });
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
async fn caps_hold_under_concurrent_checkouts() {
    let (set, _metrics) = pools(5, &[4, 4]);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let pool = set.pools()[i % 2].clone();
        let set = set.clone();
        tasks.push(tokio::spawn(async move {
            let pooled = match pool.checkout(false).await.expect("checkout") {
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
        pool.checkout(true).await,
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

/// A small deterministic generator, so the model test needs no extra crate and each seed
/// replays exactly.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Drives three pools under a global cap with random checkouts (plain and fresh), connects,
/// connect failures, releases, closes, cancellations, upstream closes and time jumps, and
/// checks after every step that the counts match a simple model, that no cap is exceeded,
/// that the gauges equal the counts, and that no waiter is left waiting while it could be
/// served (no lost wake-up).
#[tokio::test(start_paused = true)]
async fn random_operations_keep_counts_caps_and_gauges_exact() {
    use std::collections::HashMap;
    use tokio::sync::mpsc;

    const CAPS: [usize; 3] = [2, 3, 2];
    const GLOBAL: usize = 4;
    for seed in [1u64, 42, 98765] {
        let (set, metrics) = pools(GLOBAL, &CAPS);
        let mut rng = XorShift(seed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut pending: HashMap<u64, (usize, tokio::task::JoinHandle<()>)> = HashMap::new();
        let mut held_pooled: Vec<(usize, Pooled<FakeConn>)> = Vec::new();
        let mut held_slots: Vec<(usize, Connecting<FakeConn>)> = Vec::new();
        let mut next_task = 0u64;
        let mut flags: Vec<Arc<AtomicBool>> = Vec::new();
        for step in 0..1500 {
            match rng.below(10) {
                0..=2 => {
                    let index = rng.below(CAPS.len());
                    let fresh = rng.below(8) == 0;
                    let pool = set.pools()[index].clone();
                    let tx = tx.clone();
                    let id = next_task;
                    next_task += 1;
                    let task = tokio::spawn(async move {
                        let result = pool.checkout(fresh).await;
                        let _ = tx.send((id, index, result));
                    });
                    pending.insert(id, (index, task));
                }
                3 if !held_slots.is_empty() => {
                    let (index, slot) = held_slots.swap_remove(rng.below(held_slots.len()));
                    if rng.below(4) == 0 {
                        drop(slot); // connect failed
                    } else {
                        let conn = FakeConn::new("n");
                        flags.push(conn.closed.clone());
                        held_pooled.push((index, slot.established(conn)));
                    }
                }
                4 | 5 if !held_pooled.is_empty() => {
                    let (_, pooled) = held_pooled.swap_remove(rng.below(held_pooled.len()));
                    pooled.release();
                }
                6 if !held_pooled.is_empty() => {
                    let (_, pooled) = held_pooled.swap_remove(rng.below(held_pooled.len()));
                    drop(pooled); // not reusable
                }
                7 if !pending.is_empty() => {
                    let key = *pending.keys().nth(rng.below(pending.len())).unwrap();
                    let (_, task) = pending.remove(&key).unwrap();
                    task.abort(); // the client went away while queued
                    let _ = task.await;
                }
                8 if !flags.is_empty() => {
                    // The upstream closes a connection (idle or busy) behind the pool's back.
                    flags[rng.below(flags.len())].store(true, Ordering::SeqCst);
                }
                _ => {
                    tokio::time::advance(Duration::from_millis(rng.below(3000) as u64)).await;
                    for pool in set.pools() {
                        pool.reap(Instant::now());
                    }
                }
            }
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
            while let Ok((id, index, result)) = rx.try_recv() {
                if pending.remove(&id).is_none() {
                    // Aborted after its result was sent: the guard in the message drops here.
                    continue;
                }
                match result {
                    Ok(Acquired::Reused(mut pooled)) => {
                        assert!(
                            !pooled.conn().is_closed(),
                            "seed {seed} step {step}: handed out a closed connection"
                        );
                        held_pooled.push((index, pooled));
                    }
                    Ok(Acquired::Connect(slot)) => held_slots.push((index, slot)),
                    Err(CheckoutError::QueueTimeout) => {}
                    Err(other) => panic!("seed {seed} step {step}: {other:?}"),
                }
            }
            // Rendering is the slow part of a step; the counts are checked every step.
            let text = if step % 10 == 0 {
                metrics.render()
            } else {
                String::new()
            };
            let mut open_sum = 0;
            for (index, pool) in set.pools().iter().enumerate() {
                let c = pool.counts();
                let name = ["a", "b", "c"][index];
                let ctx = format!("seed {seed} step {step} pool {name}: {c:?}");
                let active = held_pooled.iter().filter(|(i, _)| *i == index).count();
                let connecting = held_slots.iter().filter(|(i, _)| *i == index).count();
                let waiting = pending.values().filter(|(i, _)| *i == index).count();
                assert_eq!(c.active, active, "{ctx}");
                assert_eq!(c.connecting, connecting, "{ctx}");
                assert_eq!(c.waiting, waiting, "{ctx}");
                let open = c.active + c.idle + c.connecting;
                assert!(open <= CAPS[index], "{ctx}: over its cap");
                open_sum += open;
                for (gauge, value) in [
                    ("http_pool_connections_active", c.active),
                    ("http_pool_connections_idle", c.idle),
                    ("http_pool_connections_connecting", c.connecting),
                    ("http_pool_requests_waiting", c.waiting),
                ] {
                    let line = format!("{gauge}{{upstream=\"{name}\"}} {value}\n");
                    assert!(
                        text.is_empty() || text.contains(&line),
                        "{ctx}: gauge {gauge} != {value}"
                    );
                }
            }
            assert!(
                open_sum <= GLOBAL,
                "seed {seed} step {step}: over the global cap"
            );
            assert_eq!(
                set.open_total(),
                open_sum,
                "seed {seed} step {step}: global count drifted"
            );
            for (index, pool) in set.pools().iter().enumerate() {
                let c = pool.counts();
                if c.waiting > 0 {
                    let open = c.active + c.idle + c.connecting;
                    let others_idle: usize = set
                        .pools()
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != index)
                        .map(|(_, p)| p.counts().idle)
                        .sum();
                    assert!(
                        open == CAPS[index] || (set.open_total() == GLOBAL && others_idle == 0),
                        "seed {seed} step {step}: pool {index} has waiters it could serve: {c:?}, open total {}",
                        set.open_total()
                    );
                }
            }
        }
        for (_, (_, task)) in pending.drain() {
            task.abort();
        }
    }
}
