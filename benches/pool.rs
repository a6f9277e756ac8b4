//! The pool's checkout/checkin path, which every proxied request takes once.
//!
//! Uncontended (one task on a current-thread runtime):
//! - `reuse_idle`: checkout of the most recently used idle connection, then release back to idle;
//! - `open_close`: checkout on an empty pool (a slot to connect), `established`, then drop
//!   (closed), which is the bookkeeping around every new upstream connection.
//!
//! Contended (tasks on a multi-thread runtime, each holding its connection across a yield so
//! holders interleave): wall time per checkout+release over all tasks.
//! - `tasks_eq_cap`: as many tasks as connections, so the mutex is shared but no one queues;
//! - `tasks_4x_cap`: four tasks per connection, so most checkouts wait in the FIFO queue and are
//!   handed a connection by a release.
//!
//! Run: `cargo bench --bench pool` (about a minute).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sidepool::metrics::Metrics;
use sidepool::pool::{Acquired, Pool, PoolLimits, PoolSet, Poolable, Pooled, Want};

/// A connection that never closes: the pool is measured, not I/O.
struct Conn;

impl Poolable for Conn {
    fn is_closed(&self) -> bool {
        false
    }
}

/// One upstream with `cap` connections, the same shape the proxy builds.
fn pool(cap: usize) -> (PoolSet<Conn>, Arc<Pool<Conn>>) {
    let metrics = Metrics::new(cap);
    let name: Arc<str> = Arc::from("exchange");
    let upstream = metrics.upstream(&name, cap);
    let limits = PoolLimits {
        max_connections: cap,
        idle_timeout: Duration::from_secs(30),
        queue_timeout: Duration::from_secs(5),
        max_waiting: None,
        warm_connections: 0,
        warm_refresh: Duration::from_secs(50),
    };
    let set = PoolSet::new(cap, [(name, limits, upstream)]);
    let pool = set.pools()[0].clone();
    (set, pool)
}

async fn get(pool: &Arc<Pool<Conn>>) -> Pooled<Conn> {
    match pool.checkout(Want::Any).await.expect("checkout within 5 s") {
        Acquired::Reused(pooled) => pooled,
        Acquired::Connect(connecting) => connecting.established(Conn),
    }
}

/// Opens `n` connections and leaves them idle.
async fn fill(pool: &Arc<Pool<Conn>>, n: usize) {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(get(pool).await);
    }
    for pooled in held {
        pooled.release();
    }
}

fn uncontended(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("uncontended");
    group.throughput(Throughput::Elements(1));

    let (_set, reuse) = pool(30);
    rt.block_on(fill(&reuse, 30));
    group.bench_function("reuse_idle", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    match reuse.checkout(Want::Any).await {
                        Ok(Acquired::Reused(pooled)) => black_box(pooled).release(),
                        _ => unreachable!("an idle connection is always there"),
                    }
                }
                start.elapsed()
            })
        });
    });

    let (_set2, empty) = pool(30);
    group.bench_function("open_close", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    match empty.checkout(Want::Any).await {
                        Ok(Acquired::Connect(connecting)) => drop(connecting.established(Conn)),
                        _ => unreachable!("the pool has no idle connection"),
                    }
                }
                start.elapsed()
            })
        });
    });
    group.finish();
}

fn contended(c: &mut Criterion) {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("contended");
    group.throughput(Throughput::Elements(1));
    let cap = 8;
    for (label, tasks) in [("tasks_eq_cap", cap), ("tasks_4x_cap", 4 * cap)] {
        let (_set, shared) = pool(cap);
        rt.block_on(fill(&shared, cap));
        group.bench_function(label, |b| {
            b.iter_custom(|iters| {
                let per_task = iters.div_ceil(tasks as u64);
                rt.block_on(async {
                    let start = Instant::now();
                    let handles: Vec<_> = (0..tasks)
                        .map(|_| {
                            let pool = shared.clone();
                            tokio::spawn(async move {
                                for _ in 0..per_task {
                                    let pooled = get(&pool).await;
                                    // The request is in flight: let other tasks run.
                                    tokio::task::yield_now().await;
                                    pooled.release();
                                }
                            })
                        })
                        .collect();
                    for handle in handles {
                        handle.await.expect("bench task");
                    }
                    // Time per checkout+release, all tasks together.
                    start
                        .elapsed()
                        .mul_f64(iters as f64 / (per_task * tasks as u64) as f64)
                })
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = uncontended, contended
}
criterion_main!(benches);
