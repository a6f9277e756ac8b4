//! The state type alone: no pool, no runtime, no metrics. Each test drives transitions by hand
//! and does the caller's after-unlock part itself where it matters.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::time::{Duration, Instant};

use super::*;
use crate::ratelimit::Class;

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
    let (checkout, after) = state.checkout(Want::Any, Class::Normal, global, no_eviction);
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
    let mut state = PoolState::new(0, 2, None, 0);
    connect(&mut state, &global);
    assert_eq!((state.counts(), global.open()), (counts(1, 0, 0, 0), 1));
    let after = state.checkin(Conn::open(), 7, Instant::now(), &global);
    assert!(after.closed.is_empty() && after.free == 0 && !after.hand_out);
    assert_eq!(state.counts(), counts(0, 1, 0, 0));
    let (checkout, _) = state.checkout(Want::Any, Class::Normal, &global, no_eviction);
    assert!(matches!(checkout, Checkout::Reuse(_, 7)));
    assert_eq!((state.counts(), global.open()), (counts(1, 0, 0, 0), 1));
}

#[test]
fn a_closed_idle_connection_is_closed_and_its_slot_reused_for_a_new_one() {
    let global = GlobalCap::new(1);
    let mut state = PoolState::new(0, 1, None, 0);
    connect(&mut state, &global);
    let conn = Conn::open();
    let closed = conn.0.clone();
    let _ = state.checkin(conn, 1, Instant::now(), &global);
    closed.store(true, Ordering::SeqCst);
    let (checkout, after) = state.checkout(Want::Any, Class::Normal, &global, no_eviction);
    assert!(matches!(checkout, Checkout::Connect));
    assert_eq!(after.closed.len(), 1);
    assert_eq!(after.closed[0].1, CloseReason::UpstreamClosed);
    assert_eq!(after.free, 0, "the slot passed to the new connection");
    assert_eq!((state.counts(), global.open()), (counts(0, 0, 1, 0), 1));
}

#[test]
fn at_the_cap_a_checkout_queues_and_a_checkin_hands_over_the_connection() {
    let global = GlobalCap::new(10);
    let mut state = PoolState::new(0, 1, None, 0);
    connect(&mut state, &global);
    let (_, mut rx) = queued(
        state
            .checkout(Want::Any, Class::Normal, &global, no_eviction)
            .0,
    );
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
fn a_high_waiter_is_served_before_older_normal_and_low_ones() {
    let global = GlobalCap::new(10);
    let mut state = PoolState::new(0, 1, None, 0);
    connect(&mut state, &global);
    let mut wait = |class| queued(state.checkout(Want::Any, class, &global, no_eviction).0).1;
    let (mut low, mut normal, mut high) =
        (wait(Class::Low), wait(Class::Normal), wait(Class::High));
    let _ = state.checkin(Conn::open(), 1, Instant::now(), &global);
    assert!(
        matches!(high.try_recv(), Ok(Grant::Conn(_, 1))),
        "high first"
    );
    assert!(normal.try_recv().is_err() && low.try_recv().is_err());
    let _ = state.checkin(Conn::open(), 1, Instant::now(), &global);
    assert!(
        matches!(normal.try_recv(), Ok(Grant::Conn(_, 1))),
        "then normal"
    );
    let _ = state.checkin(Conn::open(), 1, Instant::now(), &global);
    assert!(matches!(low.try_recv(), Ok(Grant::Conn(_, 1))), "low last");
    assert_eq!(state.counts(), counts(1, 0, 0, 0));
}

#[test]
fn a_departed_waiter_is_skipped_and_the_connection_goes_idle() {
    let global = GlobalCap::new(10);
    let mut state = PoolState::new(0, 1, None, 0);
    connect(&mut state, &global);
    let (_, rx) = queued(
        state
            .checkout(Want::Any, Class::Normal, &global, no_eviction)
            .0,
    );
    drop(rx);
    let _ = state.checkin(Conn::open(), 1, Instant::now(), &global);
    assert_eq!(state.counts(), counts(0, 1, 0, 0));
}

#[test]
fn new_only_at_the_cap_closes_the_least_recently_used_idle_one() {
    let global = GlobalCap::new(10);
    let mut state = PoolState::new(0, 2, None, 0);
    connect(&mut state, &global);
    connect(&mut state, &global);
    let _ = state.checkin(Conn::open(), 1, Instant::now(), &global);
    let _ = state.checkin(Conn::open(), 2, Instant::now(), &global);
    let (checkout, after) = state.checkout(Want::NewOnly, Class::Normal, &global, no_eviction);
    assert!(matches!(checkout, Checkout::Connect));
    assert_eq!(after.closed.len(), 1);
    assert_eq!(after.closed[0].1, CloseReason::Evicted);
    assert_eq!(state.idle()[0].id, 2, "the most recently used one stays");
    assert_eq!((state.counts(), global.open()), (counts(0, 1, 1, 0), 2));
}

#[test]
fn a_new_only_waiter_gets_a_slot_when_a_connection_comes_back() {
    let global = GlobalCap::new(10);
    let mut state = PoolState::new(0, 1, None, 0);
    connect(&mut state, &global);
    let (_, mut rx) = queued(
        state
            .checkout(Want::NewOnly, Class::Normal, &global, no_eviction)
            .0,
    );
    let after = state.checkin(Conn::open(), 1, Instant::now(), &global);
    assert_eq!(after.closed[0].1, CloseReason::Evicted);
    assert!(matches!(rx.try_recv(), Ok(Grant::Slot)));
    assert_eq!(state.counts(), counts(0, 0, 1, 0));
}

#[test]
fn a_full_queue_refuses() {
    let global = GlobalCap::new(10);
    let mut state = PoolState::new(0, 1, Some(1), 0);
    connect(&mut state, &global);
    let (id, _rx) = queued(
        state
            .checkout(Want::Any, Class::Normal, &global, no_eviction)
            .0,
    );
    assert!(matches!(
        state
            .checkout(Want::Any, Class::Normal, &global, no_eviction)
            .0,
        Checkout::Full
    ));
    assert!(state.waiter_left(id, &global).is_some());
    assert!(state.waiter_left(id, &global).is_none(), "already gone");
    assert_eq!(state.counts(), counts(1, 0, 0, 0));
}

#[test]
fn closing_idle_connections_frees_their_slots() {
    let global = GlobalCap::new(10);
    let mut state = PoolState::new(0, 3, None, 0);
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
    let mut a = PoolState::<Conn>::new(0, 1, None, 0);
    let mut b = PoolState::<Conn>::new(1, 1, None, 0);
    assert!(matches!(
        a.checkout(Want::Any, Class::Normal, &global, no_eviction).0,
        Checkout::Connect
    ));
    let (id, mut rx) = queued(b.checkout(Want::Any, Class::Normal, &global, no_eviction).0);
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
    let mut a = PoolState::<Conn>::new(0, 1, None, 0);
    let mut b = PoolState::<Conn>::new(1, 2, None, 0);
    connect(&mut a, &global);
    connect(&mut b, &global);
    // b (under its cap, at the global one) queues first, then a (at its own cap).
    let (b_id, _b_rx) = queued(b.checkout(Want::Any, Class::Normal, &global, no_eviction).0);
    let (_, mut a_rx) = queued(a.checkout(Want::Any, Class::Normal, &global, no_eviction).0);
    let after = a.checkin(Conn::open(), 1, Instant::now(), &global);
    assert_eq!(after.free, 1, "the slot is owed to b's older waiter");
    assert_eq!(after.closed[0].1, CloseReason::Evicted);
    assert!(a_rx.try_recv().is_err(), "a's younger waiter waits on");
    assert_eq!(global.oldest(), Some(b_id));
}

/// A pool of `cap` with a warm floor of `warm`, armed by one request that opened a connection
/// and checked it in at `at` as connection 1.
fn armed(cap: usize, warm: usize, global: &GlobalCap, at: Instant) -> PoolState<Conn> {
    let mut state = PoolState::new(0, cap, None, warm);
    assert!(!state.wants_warm(), "the floor waits for a first request");
    connect(&mut state, global);
    let after = state.checkin(Conn::open(), 1, at, global);
    assert!(after.closed.is_empty());
    state
}

#[test]
fn the_floor_opens_after_a_first_request_and_counts_as_connecting_then_idle() {
    let global = GlobalCap::new(10);
    let now = Instant::now();
    let mut state = armed(4, 2, &global, now);
    // One idle of two: one more is wanted.
    assert!(state.wants_warm());
    assert!(state.start_warm(&global));
    assert_eq!((state.counts(), state.warming()), (counts(0, 1, 1, 0), 1));
    assert!(
        !state.start_warm(&global),
        "idle + warming already make the floor"
    );
    let after = state.warm_connected(Conn::open(), 2, now, &global);
    assert!(after.closed.is_empty() && after.free == 0);
    assert_eq!((state.counts(), state.warming()), (counts(0, 2, 0, 0), 0));
    assert_eq!(global.open(), 2);
    // A failed warm connect frees its slot.
    let (checkout, _) = state.checkout(Want::Any, Class::Normal, &global, no_eviction);
    assert!(matches!(checkout, Checkout::Reuse(_, 2)));
    assert!(state.start_warm(&global));
    let after = state.warm_abandoned(&global);
    assert_eq!((after.free, state.counts()), (1, counts(1, 1, 0, 0)));
}

#[test]
fn the_floor_never_takes_a_slot_a_request_could_use() {
    let now = Instant::now();
    // A request waits in this pool (at its cap): no refill.
    let global = GlobalCap::new(10);
    let mut state = armed(1, 1, &global, now);
    let (checkout, _) = state.checkout(Want::Any, Class::Normal, &global, no_eviction);
    assert!(matches!(checkout, Checkout::Reuse(..)));
    let (waiting, _rx) = queued(
        state
            .checkout(Want::Any, Class::Normal, &global, no_eviction)
            .0,
    );
    assert!(!state.wants_warm() && !state.start_warm(&global));
    let _ = state.waiter_left(waiting, &global);
    // Another pool's request is starved for a global slot: no refill either.
    let global = GlobalCap::new(2);
    let mut state = armed(2, 2, &global, now);
    global.register(1, 99);
    assert!(global.try_take() && state.wants_warm());
    global.free();
    assert!(
        !state.start_warm(&global),
        "the free global slot is owed to pool 1"
    );
    assert_eq!(global.open(), 1);
}

#[test]
fn a_warm_connection_that_opens_while_a_request_waits_goes_to_the_request() {
    let global = GlobalCap::new(10);
    let now = Instant::now();
    let mut state = armed(2, 1, &global, now);
    let (checkout, _) = state.checkout(Want::Any, Class::Normal, &global, no_eviction);
    assert!(matches!(checkout, Checkout::Reuse(..)));
    assert!(state.start_warm(&global));
    // The pool is at its cap (one active, one warming): the next request queues.
    let (_, mut rx) = queued(
        state
            .checkout(Want::Any, Class::Normal, &global, no_eviction)
            .0,
    );
    let _ = state.warm_connected(Conn::open(), 2, now, &global);
    assert!(matches!(rx.try_recv(), Ok(Grant::Conn(_, 2))));
    assert_eq!(state.counts(), counts(2, 0, 0, 0));
}

#[test]
fn the_reaper_keeps_the_floor_and_closes_the_rest() {
    let global = GlobalCap::new(10);
    let start = Instant::now();
    let timeout = Duration::from_secs(30);
    let mut state = armed(4, 1, &global, start);
    let (reused, _) = state.checkout(Want::Any, Class::Normal, &global, no_eviction);
    assert!(matches!(reused, Checkout::Reuse(_, 1)));
    connect(&mut state, &global);
    connect(&mut state, &global);
    for id in 1..=3 {
        let _ = state.checkin(Conn::open(), id, start, &global);
    }
    let (after, next) = state.reap(start + timeout, timeout);
    let closed: Vec<_> = after.closed.iter().map(|(_, r)| *r).collect();
    assert_eq!(closed, [CloseReason::IdleTimeout; 2]);
    assert_eq!((after.free, state.counts()), (2, counts(0, 1, 0, 0)));
    assert_eq!(next, None, "only the floor is left");
    assert_eq!(state.idle()[0].id, 3, "the most recently used one is kept");
    // Without a floor, the reaper closes everything.
    let mut plain = armed(4, 0, &global, start);
    let (after, _) = plain.reap(start + timeout, timeout);
    assert_eq!(after.free, 1);
}

#[test]
fn a_refresh_opens_the_replacement_before_closing_the_stale_connection() {
    let global = GlobalCap::new(10);
    let start = Instant::now();
    let refresh = Duration::from_secs(50);
    let mut state = armed(2, 1, &global, start);
    assert_eq!(state.next_stale(refresh), Some(start + refresh));
    let (none, _) = state.start_refresh(start + refresh / 2, refresh, &global);
    assert!(none.is_none(), "not stale yet");
    let later = start + refresh;
    let (slot, after) = state.start_refresh(later, refresh, &global);
    assert_eq!(slot, Some(Refresh { old: Some(1) }));
    assert!(after.closed.is_empty());
    assert_eq!(
        state.counts(),
        counts(0, 1, 1, 0),
        "the old one is still ready"
    );
    assert_eq!(state.next_stale(refresh), None, "being refreshed");
    let after = state.refresh_connected(Conn::open(), 2, later, slot.unwrap(), &global);
    let closed: Vec<_> = after.closed.iter().map(|(_, r)| *r).collect();
    assert_eq!(
        (closed.as_slice(), after.free),
        ([CloseReason::Refreshed].as_slice(), 1)
    );
    assert_eq!(state.counts(), counts(0, 1, 0, 0));
    assert_eq!(state.idle()[0].id, 2);
}

#[test]
fn a_refresh_at_the_cap_closes_the_stale_connection_first_and_keeps_its_slot() {
    let global = GlobalCap::new(10);
    let start = Instant::now();
    let refresh = Duration::from_secs(50);
    let mut state = armed(1, 1, &global, start);
    let (slot, after) = state.start_refresh(start + refresh, refresh, &global);
    assert_eq!(slot, Some(Refresh { old: None }));
    assert_eq!((after.closed.len(), after.free), (1, 0));
    assert_eq!((state.counts(), global.open()), (counts(0, 0, 1, 0), 1));
    let after = state.refresh_abandoned(slot.unwrap(), &global);
    assert_eq!((after.free, state.counts()), (1, counts(0, 0, 0, 0)));
}

#[test]
fn a_stale_connection_used_during_its_refresh_is_kept() {
    let global = GlobalCap::new(10);
    let start = Instant::now();
    let refresh = Duration::from_secs(50);
    let mut state = armed(3, 1, &global, start);
    let (slot, _) = state.start_refresh(start + refresh, refresh, &global);
    let (checkout, _) = state.checkout(Want::Any, Class::Normal, &global, no_eviction);
    let Checkout::Reuse(conn, 1) = checkout else {
        panic!("the stale one is still usable");
    };
    let _ = state.checkin(conn, 1, start + refresh, &global);
    let after = state.refresh_connected(Conn::open(), 2, start + refresh, slot.unwrap(), &global);
    assert!(after.closed.is_empty(), "it was used: not stale any more");
    assert_eq!(state.counts(), counts(0, 2, 0, 0));
}

#[test]
fn a_probe_takes_a_stale_floor_connection_out_and_holds_its_place_in_the_floor() {
    let global = GlobalCap::new(10);
    let start = Instant::now();
    let refresh = Duration::from_secs(50);
    let mut state = armed(2, 1, &global, start);
    let (none, _) = state.take_for_probe(start, refresh);
    assert!(none.is_none());
    let (taken, _) = state.take_for_probe(start + refresh, refresh);
    let (conn, id) = taken.expect("stale");
    assert_eq!(state.counts(), counts(1, 0, 0, 0));
    assert!(
        !state.wants_warm(),
        "the probed connection still counts for the floor"
    );
    let _ = state.checkin(conn, id, start + refresh, &global);
    state.probe_done();
    assert_eq!(state.counts(), counts(0, 1, 0, 0));
    assert_eq!(state.next_stale(refresh), Some(start + refresh * 2));
    // A stale connection found closed is closed, not probed.
    let dead = Conn::open();
    dead.0.store(true, Ordering::SeqCst);
    let (checkout, _) = state.checkout(Want::Any, Class::Normal, &global, no_eviction);
    assert!(matches!(checkout, Checkout::Reuse(..)));
    let _ = state.checkin(dead, 9, start, &global);
    let (taken, after) = state.take_for_probe(start + refresh, refresh);
    assert!(taken.is_none());
    assert_eq!(
        (after.free, after.closed[0].1),
        (1, CloseReason::UpstreamClosed)
    );
}
