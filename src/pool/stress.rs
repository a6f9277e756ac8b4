//! The pool on a multi-thread runtime: checkouts race check-ins, closes, abandoned connects and
//! cancelled waits across worker threads, while a monitor takes scrape snapshots. Bounded
//! iterations; the invariants are checked in every snapshot and at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{Acquired, PoolLimits, PoolSet, Poolable, Want};
use crate::metrics::{Metrics, PoolGaugeSource};

struct Conn;

impl Poolable for Conn {
    fn is_closed(&self) -> bool {
        false
    }
}

const CAPS: [usize; 3] = [3, 2, 4];
const GLOBAL: usize = 5;
const TASKS: u64 = 12;
const ROUNDS: u64 = 1500;

/// A small deterministic generator per task (xorshift), so a failure replays alike per seed.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn caps_counts_and_snapshots_hold_across_worker_threads() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let metrics = Metrics::new(GLOBAL);
        let set = Arc::new(PoolSet::<Conn>::new(
            GLOBAL,
            CAPS.iter().enumerate().map(|(i, cap)| {
                let name: Arc<str> = Arc::from(format!("p{i}"));
                let m = metrics.upstream(&name, *cap);
                let limits = PoolLimits {
                    max_connections: *cap,
                    idle_timeout: Duration::from_secs(60),
                    queue_timeout: Duration::from_secs(10),
                    max_waiting: None,
                    warm_connections: 0,
                    warm_refresh: Duration::from_secs(50),
                };
                (name, limits, m)
            }),
        ));
        let done = Arc::new(AtomicBool::new(false));
        let monitor = {
            let (set, done) = (set.clone(), done.clone());
            tokio::spawn(async move {
                let mut snapshots = 0u64;
                let mut out = Vec::new();
                while !done.load(Ordering::SeqCst) || snapshots == 0 {
                    out.clear();
                    set.shared.snapshot(&mut out);
                    let mut sum = 0;
                    for (i, (_, c)) in out.iter().enumerate() {
                        let open = c.active + c.idle + c.connecting;
                        assert!(open <= CAPS[i], "snapshot over cap {}: {c:?}", CAPS[i]);
                        assert!(c.waiting == 0 || c.idle == 0, "waiting beside idle: {c:?}");
                        sum += open;
                    }
                    assert!(sum <= GLOBAL, "snapshot over the global cap: {out:?}");
                    snapshots += 1;
                    tokio::task::yield_now().await;
                }
                snapshots
            })
        };
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let set = set.clone();
            tasks.push(tokio::spawn(async move {
                let mut seed = 0x9E37_79B9_7F4A_7C15 ^ (t + 1);
                for _ in 0..ROUNDS {
                    let r = next(&mut seed);
                    let pool = set.pools()[(r % 3) as usize].clone();
                    let want = if r.is_multiple_of(8) {
                        Want::NewOnly
                    } else {
                        Want::Any
                    };
                    // Some waits are cut short: a cancelled waiter, racing its grant.
                    let acquired = if r.is_multiple_of(5) {
                        match tokio::time::timeout(
                            Duration::from_micros(r % 300),
                            pool.checkout(want),
                        )
                        .await
                        {
                            Ok(acquired) => acquired,
                            Err(_) => continue,
                        }
                    } else {
                        pool.checkout(want).await
                    };
                    let pooled = match acquired.expect("no queue timeout in this test") {
                        Acquired::Reused(pooled) => pooled,
                        Acquired::Connect(slot) => {
                            tokio::task::yield_now().await;
                            if r.is_multiple_of(7) {
                                // The connect failed: the slot is handed on.
                                drop(slot);
                                continue;
                            }
                            slot.established(Conn)
                        }
                    };
                    tokio::task::yield_now().await;
                    if r.is_multiple_of(6) {
                        // Not reusable: closed, and its slot handed on.
                        drop(pooled);
                    } else {
                        pooled.release();
                    }
                    if r.is_multiple_of(11) {
                        pool.close_retired_idle();
                        set.close_idle();
                    }
                }
            }));
        }
        for task in tasks {
            task.await.expect("a worker task panicked");
        }
        done.store(true, Ordering::SeqCst);
        let snapshots = monitor.await.expect("the monitor panicked");
        assert!(snapshots > 0);
        let mut idle = 0;
        for pool in set.pools() {
            let c = pool.counts();
            assert_eq!((c.active, c.connecting, c.waiting), (0, 0, 0), "{c:?}");
            idle += c.idle;
        }
        assert_eq!(set.open_total(), idle, "global slots leaked");
        let (starved, len) = set.global().starved_now();
        assert!(
            starved.is_empty() && len == 0,
            "starved queue left: {starved:?}"
        );
        // The rendered scrape agrees with the final counts.
        let text = metrics.render();
        for (i, pool) in set.pools().iter().enumerate() {
            let line = format!(
                "http_pool_connections_idle{{upstream=\"p{i}\"}} {}\n",
                pool.counts().idle
            );
            assert!(text.contains(&line), "{line} not in\n{text}");
        }
    });
}
