//! The state type alone: no pool, no runtime, no metrics. Each test drives transitions by hand
//! and does the caller's after-unlock part itself where it matters.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::time::Instant;

use super::*;

struct Conn(Arc<AtomicBool>);

impl Conn {
    fn open() -> Conn {
        Conn(Arc::new(AtomicBool::new(false)))
    }
}

impl Poolable for Conn {
    fn is_closed(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

fn counts(active: usize, idle: usize, connecting: usize, waiting: usize) -> PoolCounts {
    PoolCounts {
        active,
        idle,
        connecting,
        waiting,
    }
}

fn no_eviction() -> bool {
    false
}

/// Checks out, expecting a slot, and establishes a connection in it (active).
fn connect(state: &mut PoolState<Conn>, global: &GlobalCap) {
    let (checkout, after) = state.checkout(Want::Any, global, no_eviction);
    assert!(matches!(checkout, Checkout::Connect));
    assert!(after.closed.is_empty() && after.free == 0);
    state.connected();
}

fn queued(checkout: Checkout<Conn>) -> (u64, oneshot::Receiver<Grant<Conn>>) {
    match checkout {
        Checkout::Queued(id, rx) => (id, rx),
        _ => panic!("expected to queue"),
    }
}

#[test]
fn slot_then_idle_then_reuse_of_the_same_connection() {
    let global = GlobalCap::new(10);
    let mut state = PoolState::new(0, 2, None);
    connect(&mut state, &global);
    assert_eq!((state.counts(), global.open()), (counts(1, 0, 0, 0), 1));
    let after = state.checkin(Conn::open(), 7, Instant::now(), &global);
    assert!(after.closed.is_empty() && after.free == 0 && !after.hand_out);
    assert_eq!(state.counts(), counts(0, 1, 0, 0));
    let (checkout, _) = state.checkout(Want::Any, &global, no_eviction);
    assert!(matches!(checkout, Checkout::Reuse(_, 7)));
    assert_eq!((state.counts(), global.open()), (counts(1, 0, 0, 0), 1));
}

#[test]
fn a_closed_idle_connection_is_closed_and_its_slot_reused_for_a_new_one() {
    let global = GlobalCap::new(1);
    let mut state = PoolState::new(0, 1, None);
    connect(&mut state, &global);
    let conn = Conn::open();
    let closed = conn.0.clone();
    let _ = state.checkin(conn, 1, Instant::now(), &global);
    closed.store(true, Ordering::SeqCst);
    let (checkout, after) = state.checkout(Want::Any, &global, no_eviction);
    assert!(matches!(checkout, Checkout::Connect));
    assert_eq!(after.closed.len(), 1);
    assert_eq!(after.closed[0].1, CloseReason::UpstreamClosed);
    assert_eq!(after.free, 0, "the slot passed to the new connection");
    assert_eq!((state.counts(), global.open()), (counts(0, 0, 1, 0), 1));
}

#[test]
fn at_the_cap_a_checkout_queues_and_a_checkin_hands_over_the_connection() {
    let global = GlobalCap::new(10);
    let mut state = PoolState::new(0, 1, None);
    connect(&mut state, &global);
    let (_, mut rx) = queued(state.checkout(Want::Any, &global, no_eviction).0);
    assert_eq!(state.counts(), counts(1, 0, 0, 1));
    let after = state.checkin(Conn::open(), 3, Instant::now(), &global);
    assert!(after.closed.is_empty() && after.free == 0);
    assert!(matches!(rx.try_recv(), Ok(Grant::Conn(_, 3))));
    assert_eq!(
        state.counts(),
        counts(1, 0, 0, 0),
        "still active, for the waiter"
    );
}

#[test]
fn a_departed_waiter_is_skipped_and_the_connection_goes_idle() {
    let global = GlobalCap::new(10);
    let mut state = PoolState::new(0, 1, None);
    connect(&mut state, &global);
    let (_, rx) = queued(state.checkout(Want::Any, &global, no_eviction).0);
    drop(rx);
    let _ = state.checkin(Conn::open(), 1, Instant::now(), &global);
    assert_eq!(state.counts(), counts(0, 1, 0, 0));
}

#[test]
fn new_only_at_the_cap_closes_the_least_recently_used_idle_one() {
    let global = GlobalCap::new(10);
    let mut state = PoolState::new(0, 2, None);
    connect(&mut state, &global);
    connect(&mut state, &global);
    let _ = state.checkin(Conn::open(), 1, Instant::now(), &global);
    let _ = state.checkin(Conn::open(), 2, Instant::now(), &global);
    let (checkout, after) = state.checkout(Want::NewOnly, &global, no_eviction);
    assert!(matches!(checkout, Checkout::Connect));
    assert_eq!(after.closed.len(), 1);
    assert_eq!(after.closed[0].1, CloseReason::Evicted);
    assert_eq!(state.idle()[0].id, 2, "the most recently used one stays");
    assert_eq!((state.counts(), global.open()), (counts(0, 1, 1, 0), 2));
}

#[test]
fn a_new_only_waiter_gets_a_slot_when_a_connection_comes_back() {
    let global = GlobalCap::new(10);
    let mut state = PoolState::new(0, 1, None);
    connect(&mut state, &global);
    let (_, mut rx) = queued(state.checkout(Want::NewOnly, &global, no_eviction).0);
    let after = state.checkin(Conn::open(), 1, Instant::now(), &global);
    assert_eq!(after.closed[0].1, CloseReason::Evicted);
    assert!(matches!(rx.try_recv(), Ok(Grant::Slot)));
    assert_eq!(state.counts(), counts(0, 0, 1, 0));
}

#[test]
fn a_full_queue_refuses() {
    let global = GlobalCap::new(10);
    let mut state = PoolState::new(0, 1, Some(1));
    connect(&mut state, &global);
    let (id, _rx) = queued(state.checkout(Want::Any, &global, no_eviction).0);
    assert!(matches!(
        state.checkout(Want::Any, &global, no_eviction).0,
        Checkout::Full
    ));
    assert!(state.waiter_left(id, &global).is_some());
    assert!(state.waiter_left(id, &global).is_none(), "already gone");
    assert_eq!(state.counts(), counts(1, 0, 0, 0));
}

#[test]
fn closing_idle_connections_frees_their_slots() {
    let global = GlobalCap::new(10);
    let mut state = PoolState::new(0, 3, None);
    for _ in 1..=3 {
        connect(&mut state, &global);
    }
    for id in 1..=3 {
        let _ = state.checkin(Conn::open(), id, Instant::now(), &global);
    }
    let after = state.close_idle(CloseReason::Shutdown, |idle| idle.id != 2);
    assert_eq!((after.closed.len(), after.free), (2, 2));
    let evicted = state.evict_lru().expect("one idle left");
    assert_eq!(
        (evicted.closed.len(), evicted.free),
        (1, 0),
        "eviction keeps the slot"
    );
    assert!(state.evict_lru().is_none());
    assert_eq!(state.counts(), counts(0, 0, 0, 0));
}

#[test]
fn a_waiter_blocked_by_the_global_cap_is_starved_and_served_from_it() {
    let global = GlobalCap::new(1);
    let mut a = PoolState::<Conn>::new(0, 1, None);
    let mut b = PoolState::<Conn>::new(1, 1, None);
    assert!(matches!(
        a.checkout(Want::Any, &global, no_eviction).0,
        Checkout::Connect
    ));
    let (id, mut rx) = queued(b.checkout(Want::Any, &global, no_eviction).0);
    assert_eq!(global.starved_now(), (vec![(1, id)], 1));
    // a gives its slot up; with no waiter of its own, it is freed globally...
    let after = a.connect_abandoned(&global);
    assert_eq!(after.free, 1);
    // ...and the caller's hand-out gives it to b's starved waiter.
    global.free();
    assert!(global.try_take());
    assert_eq!(global.pop_oldest(), Some((1, id)));
    assert!(b.grant_to_starved(id, &global));
    assert!(matches!(rx.try_recv(), Ok(Grant::Slot)));
    assert_eq!(b.counts(), counts(0, 0, 1, 0));
}

#[test]
fn a_slot_freed_here_goes_to_an_older_starved_waiter_elsewhere() {
    let global = GlobalCap::new(2);
    let mut a = PoolState::<Conn>::new(0, 1, None);
    let mut b = PoolState::<Conn>::new(1, 2, None);
    connect(&mut a, &global);
    connect(&mut b, &global);
    // b (under its cap, at the global one) queues first, then a (at its own cap).
    let (b_id, _b_rx) = queued(b.checkout(Want::Any, &global, no_eviction).0);
    let (_, mut a_rx) = queued(a.checkout(Want::Any, &global, no_eviction).0);
    let after = a.checkin(Conn::open(), 1, Instant::now(), &global);
    assert_eq!(after.free, 1, "the slot is owed to b's older waiter");
    assert_eq!(after.closed[0].1, CloseReason::Evicted);
    assert!(a_rx.try_recv().is_err(), "a's younger waiter waits on");
    assert_eq!(global.oldest(), Some(b_id));
}
