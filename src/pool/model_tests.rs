//! The model test: random sequences of pool operations, generated and shrunk by proptest,
//! applied to three real pools under a global cap, with the invariants checked after each.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::tests::{FakeConn, limits, pools_with};
use super::*;
use crate::metrics::Metrics;

/// Caps of the three pools in the model test, and the global cap they share.
const MODEL_CAPS: [usize; 3] = [2, 3, 2];
const MODEL_GLOBAL: usize = 4;
/// The warm floor of each pool (one without), and how long a warm connection stays idle before
/// it is refreshed or probed (short, so that sequences reach it).
const MODEL_WARM: [usize; 3] = [1, 0, 2];
const MODEL_WARM_REFRESH: Duration = Duration::from_secs(4);
const MODEL_NAMES: [&str; 3] = ["a", "b", "c"];
/// The longest operation sequence one case runs.
const MODEL_MAX_OPS: usize = 150;

/// One thing that happens to the pools. Indices (`pick`, `conn`) select among what exists at
/// that moment (modulo its count), so any sequence is valid and shrinking keeps it so; an
/// operation with nothing to act on does nothing.
#[derive(Clone, Debug)]
enum Op {
    /// A request asks `pool` for a connection (`fresh`: a re-send, which needs a new one).
    /// It runs as its own task: served at once, or queued.
    Checkout { pool: usize, fresh: bool },
    /// A connection being opened is established and carries its request (active).
    Connected { pick: usize },
    /// A connection being opened is abandoned: the connect failed, or the client left
    /// while it was connecting (both drop the `Connecting` guard).
    ConnectAbandoned { pick: usize },
    /// A request completes and its connection is released for reuse.
    Release { pick: usize },
    /// A request ends without a reusable connection: an error, a response not read to the
    /// end, or the client leaving mid-request (all drop the `Pooled` guard).
    Close { pick: usize },
    /// A queued client goes away (its checkout task is cancelled).
    CancelWaiter { pick: usize },
    /// The upstream closes a connection, idle or busy, behind the pool's back. With
    /// `noticed`, its connection task ends and reports it (`Pool::connection_lost`).
    UpstreamClosed { conn: usize, noticed: bool },
    /// Time passes: queue timeouts fire, and the reaper runs.
    Advance { millis: u64 },
    /// The warm task asks `pool` for a slot to open a floor connection in.
    WarmSlot { pool: usize },
    /// The warm task asks `pool` for a slot to replace a stale floor connection.
    RefreshSlot { pool: usize },
    /// A warm or refresh connection opens (it goes to idle, or to a waiting request).
    WarmConnected { pick: usize },
    /// A warm or refresh connect fails (its `Connecting` guard drops).
    WarmAbandoned { pick: usize },
    /// The warm task takes a stale floor connection of `pool` out for a probe.
    ProbeCheckout { pool: usize },
    /// A probe ends: answered (`ok`, the connection goes back to idle) or failed (closed).
    ProbeDone { pick: usize, ok: bool },
    /// `prewarm`: the floor of `pool` applies before any request.
    Arm { pool: usize },
}

fn model_op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        6 => (0..MODEL_CAPS.len(), prop::bool::weighted(0.125))
            .prop_map(|(pool, fresh)| Op::Checkout { pool, fresh }),
        3 => (0..16usize).prop_map(|pick| Op::Connected { pick }),
        1 => (0..16usize).prop_map(|pick| Op::ConnectAbandoned { pick }),
        4 => (0..16usize).prop_map(|pick| Op::Release { pick }),
        2 => (0..16usize).prop_map(|pick| Op::Close { pick }),
        2 => (0..16usize).prop_map(|pick| Op::CancelWaiter { pick }),
        1 => (0..64usize, any::<bool>())
            .prop_map(|(conn, noticed)| Op::UpstreamClosed { conn, noticed }),
        2 => (0..3000u64).prop_map(|millis| Op::Advance { millis }),
        2 => (0..MODEL_CAPS.len()).prop_map(|pool| Op::WarmSlot { pool }),
        1 => (0..MODEL_CAPS.len()).prop_map(|pool| Op::RefreshSlot { pool }),
        2 => (0..16usize).prop_map(|pick| Op::WarmConnected { pick }),
        1 => (0..16usize).prop_map(|pick| Op::WarmAbandoned { pick }),
        1 => (0..MODEL_CAPS.len()).prop_map(|pool| Op::ProbeCheckout { pool }),
        1 => (0..16usize, any::<bool>()).prop_map(|(pick, ok)| Op::ProbeDone { pick, ok }),
        1 => (0..MODEL_CAPS.len()).prop_map(|pool| Op::Arm { pool }),
    ]
}

/// A checkout in progress: its task, its pool, and when it started.
struct ModelRequest {
    pool: usize,
    since: Instant,
    task: tokio::task::JoinHandle<()>,
}

/// A connection the model opened, with its upstream-side state.
struct ModelConn {
    pool: usize,
    id: u64,
    closed: Arc<AtomicBool>,
    noticed: bool,
}

type CheckoutResult = (u64, Result<Acquired<FakeConn>, CheckoutError>);

/// The real pools plus the model: what the test holds *is* the expected state. Every
/// `Pooled` it holds is one active connection, every `Connecting` one connecting slot, every
/// checkout task that has not answered one waiter; no connection is ever handed to two holders.
struct Model {
    set: Arc<PoolSet<FakeConn>>,
    metrics: Arc<Metrics>,
    tx: tokio::sync::mpsc::UnboundedSender<CheckoutResult>,
    rx: tokio::sync::mpsc::UnboundedReceiver<CheckoutResult>,
    next_seq: u64,
    /// Checkouts not answered yet, by start order.
    waiting: std::collections::BTreeMap<u64, ModelRequest>,
    connecting: Vec<(usize, Connecting<FakeConn>)>,
    /// Slots the warm task holds (floor and refresh), each one connecting slot.
    warming: Vec<(usize, Connecting<FakeConn>)>,
    active: Vec<(usize, Pooled<FakeConn>)>,
    /// Floor connections out for a probe, each one active connection.
    probes: Vec<(usize, Probe<FakeConn>)>,
    conns: Vec<ModelConn>,
}

impl Model {
    fn new() -> Model {
        let (set, metrics) = pools_with(
            MODEL_GLOBAL,
            MODEL_CAPS
                .iter()
                .zip(MODEL_WARM)
                .map(|(&cap, warm)| PoolLimits {
                    warm_connections: warm,
                    warm_refresh: MODEL_WARM_REFRESH,
                    ..limits(cap)
                }),
        );
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Model {
            set,
            metrics,
            tx,
            rx,
            next_seq: 0,
            waiting: std::collections::BTreeMap::new(),
            connecting: Vec::new(),
            warming: Vec::new(),
            active: Vec::new(),
            probes: Vec::new(),
            conns: Vec::new(),
        }
    }

    async fn apply(&mut self, op: &Op) {
        match *op {
            Op::Checkout { pool, fresh } => {
                let seq = self.next_seq;
                self.next_seq += 1;
                let p = self.set.pools()[pool].clone();
                let tx = self.tx.clone();
                let task = tokio::spawn(async move {
                    let result = p
                        .checkout(if fresh { Want::NewOnly } else { Want::Any })
                        .await;
                    let _ = tx.send((seq, result));
                });
                let since = Instant::now();
                self.waiting.insert(seq, ModelRequest { pool, since, task });
            }
            Op::Connected { pick } if !self.connecting.is_empty() => {
                let (pool, slot) = self.connecting.swap_remove(pick % self.connecting.len());
                let conn = FakeConn::new("n");
                self.conns.push(ModelConn {
                    pool,
                    id: slot.id(),
                    closed: conn.closed.clone(),
                    noticed: false,
                });
                self.active.push((pool, slot.established(conn)));
            }
            Op::ConnectAbandoned { pick } if !self.connecting.is_empty() => {
                drop(self.connecting.swap_remove(pick % self.connecting.len()));
            }
            Op::Release { pick } if !self.active.is_empty() => {
                let (_, pooled) = self.active.swap_remove(pick % self.active.len());
                pooled.release();
            }
            Op::Close { pick } if !self.active.is_empty() => {
                drop(self.active.swap_remove(pick % self.active.len()));
            }
            Op::CancelWaiter { pick } if !self.waiting.is_empty() => {
                let seq = *self
                    .waiting
                    .keys()
                    .nth(pick % self.waiting.len())
                    .expect("in range");
                let request = self.waiting.remove(&seq).expect("present");
                request.task.abort();
                let _ = request.task.await;
            }
            Op::UpstreamClosed { conn, noticed } if !self.conns.is_empty() => {
                let len = self.conns.len();
                let conn = &mut self.conns[conn % len];
                conn.closed.store(true, Ordering::SeqCst);
                if noticed && !conn.noticed {
                    conn.noticed = true;
                    self.set.pools()[conn.pool].connection_lost(conn.id);
                }
            }
            Op::WarmSlot { pool } => {
                let p = &self.set.pools()[pool];
                let waiting = p.counts().waiting;
                let starved = self.set.global().starved_now().1;
                if let Some(slot) = p.warm_slot() {
                    assert!(
                        waiting == 0 && starved == 0,
                        "a warm slot was taken while {waiting} requests waited here and {starved} elsewhere"
                    );
                    assert!(
                        MODEL_WARM[pool] > 0,
                        "a warm slot in a pool without a floor"
                    );
                    self.warming.push((pool, slot));
                }
            }
            Op::RefreshSlot { pool } => {
                if let Some(slot) = self.set.pools()[pool].refresh_slot(Instant::now()) {
                    self.warming.push((pool, slot));
                }
            }
            Op::WarmConnected { pick } if !self.warming.is_empty() => {
                let (pool, slot) = self.warming.swap_remove(pick % self.warming.len());
                let conn = FakeConn::new("w");
                self.conns.push(ModelConn {
                    pool,
                    id: slot.id(),
                    closed: conn.closed.clone(),
                    noticed: false,
                });
                slot.established_idle(conn);
            }
            Op::WarmAbandoned { pick } if !self.warming.is_empty() => {
                drop(self.warming.swap_remove(pick % self.warming.len()));
            }
            Op::ProbeCheckout { pool } => {
                if let Some(probe) = self.set.pools()[pool].probe_checkout(Instant::now()) {
                    self.probes.push((pool, probe));
                }
            }
            Op::ProbeDone { pick, ok } if !self.probes.is_empty() => {
                let (_, probe) = self.probes.swap_remove(pick % self.probes.len());
                if ok {
                    probe.release();
                }
            }
            Op::Arm { pool } => self.set.pools()[pool].arm_warm(),
            Op::Advance { millis } => {
                tokio::time::advance(Duration::from_millis(millis)).await;
                for pool in self.set.pools() {
                    pool.reap(Instant::now());
                }
            }
            _ => {}
        }
        // Let every woken checkout task run to its answer.
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    /// Takes the answers of finished checkouts; returns (start order, pool) of those served.
    fn collect_answers(&mut self, ctx: &str) -> Vec<(u64, usize)> {
        let mut served = Vec::new();
        while let Ok((seq, result)) = self.rx.try_recv() {
            let Some(request) = self.waiting.remove(&seq) else {
                // Cancelled after it had answered: the guard in the message drops here.
                continue;
            };
            match result {
                Ok(Acquired::Reused(mut pooled)) => {
                    assert!(
                        !pooled.conn().is_closed(),
                        "{ctx}: handed out a connection known to be closed"
                    );
                    self.active.push((request.pool, pooled));
                    served.push((seq, request.pool));
                }
                Ok(Acquired::Connect(slot)) => {
                    self.connecting.push((request.pool, slot));
                    served.push((seq, request.pool));
                }
                Err(CheckoutError::QueueTimeout) => {
                    let waited = Instant::now() - request.since;
                    assert!(
                        waited >= limits(1).queue_timeout,
                        "{ctx}: queue timeout after only {waited:?}"
                    );
                }
                Err(other) => panic!("{ctx}: {other:?}"),
            }
        }
        served
    }

    /// Every invariant, after every step. The gauges are compared with the rendered metrics
    /// when `render` is set (rendering is the slow part of a step).
    fn check(&self, ctx: &str, served: &[(u64, usize)], render: bool) {
        let queue_timeout = limits(1).queue_timeout;
        let now = Instant::now();
        // FIFO per pool: nobody is served while an older request of the same pool waits on.
        for &(seq, pool) in served {
            if let Some((older, _)) = self
                .waiting
                .iter()
                .find(|(s, r)| **s < seq && r.pool == pool)
            {
                panic!("{ctx}: request {seq} of pool {pool} was served before older {older}");
            }
        }
        // No connection is carried by two requests at once.
        let mut held: Vec<(usize, u64)> = self.active.iter().map(|(i, p)| (*i, p.id())).collect();
        held.sort_unstable();
        let before = held.len();
        held.dedup();
        assert_eq!(held.len(), before, "{ctx}: one connection handed out twice");
        // No wait outlives queue_timeout.
        for (seq, request) in &self.waiting {
            assert!(
                now - request.since < queue_timeout,
                "{ctx}: request {seq} still waits after {:?}",
                now - request.since
            );
        }
        let text = if render {
            self.metrics.render()
        } else {
            String::new()
        };
        let mut open_sum = 0;
        let mut states = Vec::new();
        for (index, pool) in self.set.pools().iter().enumerate() {
            let name = MODEL_NAMES[index];
            let state = pool.lock();
            let c = state.counts();
            let ctx = format!("{ctx} pool {name}: {c:?}");
            let active = self.active.iter().filter(|(i, _)| *i == index).count()
                + self.probes.iter().filter(|(i, _)| *i == index).count();
            let warming = self.warming.iter().filter(|(i, _)| *i == index).count();
            let connecting = self.connecting.iter().filter(|(i, _)| *i == index).count() + warming;
            assert_eq!(
                state.warming(),
                warming,
                "{ctx}: warming differs from the model"
            );
            // The floor never holds more than it needs: what is idle, being opened for it
            // or probed stays within the floor plus one refresh in flight per stale one.
            assert!(
                warming <= MODEL_WARM[index],
                "{ctx}: {warming} warm slots for a floor of {}",
                MODEL_WARM[index]
            );
            let waiting = self.waiting.values().filter(|r| r.pool == index).count();
            assert_eq!(
                (c.active, c.connecting, c.waiting),
                (active, connecting, waiting),
                "{ctx}: (active, connecting, waiting) differ from the model"
            );
            let open = c.active + c.idle + c.connecting;
            assert!(open <= MODEL_CAPS[index], "{ctx}: over its cap");
            open_sum += open;
            assert!(
                c.waiting == 0 || c.idle == 0,
                "{ctx}: requests wait while connections idle"
            );
            // Idle connections are this pool's, distinct, not in use, and not known dead.
            let mut ids: Vec<u64> = state.idle().iter().map(|idle| idle.id).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), c.idle, "{ctx}: a connection is idle twice");
            for id in ids {
                let conn = self.conns.iter().find(|m| m.id == id && m.pool == index);
                let conn = conn.unwrap_or_else(|| panic!("{ctx}: unknown idle connection {id}"));
                assert!(
                    !conn.noticed,
                    "{ctx}: connection {id} was lost but stays idle"
                );
                assert!(
                    !self.active.iter().any(|(i, p)| *i == index && p.id() == id),
                    "{ctx}: connection {id} is idle and active"
                );
            }
            let gauges = [
                ("http_pool_connections_active", c.active),
                ("http_pool_connections_idle", c.idle),
                ("http_pool_connections_connecting", c.connecting),
                ("http_pool_requests_waiting", c.waiting),
            ];
            for (gauge, value) in gauges {
                let line = format!("{gauge}{{upstream=\"{name}\"}} {value}\n");
                assert!(
                    !render || text.contains(&line),
                    "{ctx}: gauge {gauge} is not {value}\n{text}"
                );
            }
            let starved: Vec<u64> = state
                .waiters()
                .filter(|w| w.starved)
                .map(|w| w.id)
                .collect();
            states.push((c, starved));
        }
        assert!(open_sum <= MODEL_GLOBAL, "{ctx}: over the global cap");
        assert_eq!(
            self.set.open_total(),
            open_sum,
            "{ctx}: the global count drifted from the pools' counts"
        );
        // The global queue of starved waiters lists exactly the waiters marked starved.
        let (mut listed, listed_len) = self.set.global().starved_now();
        assert_eq!(listed_len, listed.len(), "{ctx}: starved_len drifted");
        let mut marked: Vec<(usize, u64)> = states
            .iter()
            .enumerate()
            .flat_map(|(index, (_, ids))| ids.iter().map(move |id| (index, *id)))
            .collect();
        listed.sort_unstable();
        marked.sort_unstable();
        assert_eq!(listed, marked, "{ctx}: global starved queue out of step");
        // No lost wake-up: a pool with waiters is at its own cap, or the global cap is reached
        // and no other pool has an idle connection to give up.
        for (index, (c, _)) in states.iter().enumerate() {
            if c.waiting > 0 {
                let open = c.active + c.idle + c.connecting;
                let others_idle: usize = states
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != index)
                    .map(|(_, (other, _))| other.idle)
                    .sum();
                assert!(
                    open == MODEL_CAPS[index] || (open_sum == MODEL_GLOBAL && others_idle == 0),
                    "{ctx}: pool {index} has waiters it could serve: {c:?}, open total {open_sum}"
                );
            }
        }
    }

    /// Ends every request: nothing may stay active, connecting or waiting, and the global
    /// count equals the idle connections left.
    async fn finish(mut self, ctx: &str) {
        for (_, request) in std::mem::take(&mut self.waiting) {
            request.task.abort();
            let _ = request.task.await;
        }
        while self.rx.try_recv().is_ok() {}
        self.connecting.clear();
        self.warming.clear();
        self.probes.clear();
        for (_, pooled) in self.active.drain(..) {
            pooled.release();
        }
        let mut idle = 0;
        for pool in self.set.pools() {
            let c = pool.counts();
            assert_eq!(
                (c.active, c.connecting, c.waiting),
                (0, 0, 0),
                "{ctx}: {c:?}"
            );
            idle += c.idle;
        }
        assert_eq!(self.set.open_total(), idle, "{ctx}: slots leaked");
    }
}

/// Runs one sequence against the real pools (three pools under a global cap, paused time on a
/// current-thread runtime, so a sequence always replays the same way) and checks the model
/// after every step.
fn run_model(ops: &[Op]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut model = Model::new();
        for (step, op) in ops.iter().enumerate() {
            model.apply(op).await;
            let ctx = format!("step {step} ({op:?})");
            let served = model.collect_answers(&ctx);
            model.check(&ctx, &served, step % 5 == 0 || step + 1 == ops.len());
        }
        model.finish("after the last step").await;
    });
}

/// Repeats single-operation deletions until none keeps the sequence failing. proptest deletes
/// elements in one pass and then simplifies each one; an element simplified into another
/// operation can make an earlier deletion possible again, so its result is not always minimal.
fn minimize(mut ops: Vec<Op>) -> Vec<Op> {
    let fails = |ops: &[Op]| std::panic::catch_unwind(|| run_model(ops)).is_err();
    loop {
        let before = ops.len();
        let mut i = 0;
        while i < ops.len() {
            let mut fewer = ops.clone();
            fewer.remove(i);
            if fails(&fewer) {
                ops = fewer;
            } else {
                i += 1;
            }
        }
        if ops.len() == before {
            return ops;
        }
    }
}

/// Random sequences of checkouts (plain and fresh), connects, connect failures and
/// cancelled connects, releases, closes, cancelled waiters, upstream closes (noticed or not)
/// and time jumps (queue timeouts, reaping), and the warm task's floor refills, refreshes,
/// probes and their failures, applied to three pools under a global cap. After
/// every step: active, connecting and waiting equal the model (the guards and tasks the test
/// holds); every gauge equals its count; no per-host or global cap is exceeded and the global
/// count matches the pools; each pool serves its queue in FIFO order; no wait outlives
/// queue_timeout and none times out early; no connection known to be closed is handed out or
/// kept idle; the global starved queue matches the waiters; no warm slot is taken while a
/// request waits here or is starved elsewhere, nor beyond the floor; and no waiter is left waiting
/// while a slot could serve it. After the last step, ending every request leaves nothing but
/// idle connections. A failure reports the shortest failing sequence found.
#[test]
fn random_operations_keep_counts_caps_and_gauges_exact() {
    use proptest::test_runner::{Config, TestError, TestRunner};
    let config = Config {
        // Tuned to a few seconds in a debug build; PROPTEST_CASES overrides.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(48),
        // The failing sequence is printed; nothing is written next to the sources.
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let strategy = proptest::collection::vec(model_op(), 1..=MODEL_MAX_OPS);
    match runner.run(&strategy, |ops| {
        run_model(&ops);
        Ok(())
    }) {
        Ok(()) => {}
        Err(TestError::Fail(reason, ops)) => {
            let ops = minimize(ops);
            let failure = std::panic::catch_unwind(|| run_model(&ops))
                .err()
                .and_then(|panic| {
                    panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                })
                .unwrap_or_else(|| reason.to_string());
            panic!(
                "{failure}\nminimal failing sequence ({} operations): {ops:#?}",
                ops.len()
            );
        }
        Err(TestError::Abort(reason)) => panic!("proptest aborted: {reason}"),
    }
}
