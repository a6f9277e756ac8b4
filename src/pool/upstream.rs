//! The pool of one upstream: its lock around a [`PoolState`], the guards it hands out, and the
//! work each transition leaves for after the unlock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::guard::{SlotKind, Waiter};
use super::set::Shared;
use super::state::{After, Checkout, Grant, Idle, PoolState};
use super::{Acquired, CheckoutError, Connecting, PoolCounts, PoolLimits, Poolable, Pooled, Want};
use crate::metrics::{CloseReason, UpstreamMetrics};
use crate::ratelimit::Class;

/// The pool of one upstream.
pub struct Pool<C: Poolable> {
    pub(super) name: Arc<str>,
    pub(super) limits: PoolLimits,
    pub(super) metrics: UpstreamMetrics,
    pub(super) shared: Arc<Shared<C>>,
    pub(super) next_id: AtomicU64,
    pub(super) state: Mutex<PoolState<C>>,
    /// Woken when the warm floor misses a connection the background task could open.
    pub(super) warm_wanted: tokio::sync::Notify,
}

impl<C: Poolable> Pool<C> {
    /// The upstream's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The limits this pool enforces.
    pub fn limits(&self) -> PoolLimits {
        self.limits
    }

    /// The metrics of this upstream.
    pub fn metrics(&self) -> &UpstreamMetrics {
        &self.metrics
    }

    /// Current counts (the numbers a scrape shows).
    pub fn counts(&self) -> PoolCounts {
        self.lock().counts()
    }

    /// Open connections (connecting, idle or active).
    pub fn open(&self) -> usize {
        self.lock().open()
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, PoolState<C>> {
        super::lock(&self.state)
    }

    pub(super) fn next_id(&self) -> u64 {
        // Ids start at 1 (0 never names a connection).
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Ends a transition: unlocks, then closes what left the pool (counting each reason),
    /// frees global slots and hands free ones to starved waiters.
    pub(super) fn finish(&self, state: MutexGuard<'_, PoolState<C>>, after: After<C>) {
        state.debug_check();
        let wants_warm = state.wants_warm();
        drop(state);
        if wants_warm {
            // Stores a permit when the task is busy, so no refill is missed.
            self.warm_wanted.notify_one();
        }
        for (conn, reason) in after.closed {
            drop(conn);
            self.metrics.connection_closed(reason);
        }
        self.shared.free(after.free);
        if after.hand_out {
            self.shared.hand_out_free_slots();
        }
    }

    /// A connection to use: the most recently used idle one, or a slot to open a new one, or,
    /// when neither is free, a place in the queue (class `normal`) for up to `queue_timeout`.
    pub async fn checkout(self: &Arc<Self>, want: Want) -> Result<Acquired<C>, CheckoutError> {
        self.checkout_timed(want).await.0
    }

    /// [`Pool::checkout`], with how long the caller waited in the queue: exactly zero, and no
    /// clock read, when a connection or a slot was free at once (the common case, on every
    /// request's path).
    pub async fn checkout_timed(
        self: &Arc<Self>,
        want: Want,
    ) -> (Result<Acquired<C>, CheckoutError>, Duration) {
        self.checkout_queued(want, Class::Normal, None).await
    }

    /// [`Pool::checkout_timed`] for a request of `class` that waits at most until `until`
    /// (`None`: `queue_timeout` from now). Waiters are served by class, then arrival.
    pub async fn checkout_queued(
        self: &Arc<Self>,
        want: Want,
        class: Class,
        until: Option<Instant>,
    ) -> (Result<Acquired<C>, CheckoutError>, Duration) {
        let mut waiter = match self.try_checkout(want, class) {
            Checkout::Reuse(conn, id) => {
                return (Ok(self.acquired(Grant::Conn(conn, id))), Duration::ZERO);
            }
            Checkout::Connect => return (Ok(self.acquired(Grant::Slot)), Duration::ZERO),
            Checkout::Full => return (Err(CheckoutError::QueueFull), Duration::ZERO),
            Checkout::Queued(id, rx) => Waiter::new(self.clone(), id, rx),
        };
        let queued = Instant::now();
        let until = until.unwrap_or(queued + self.limits.queue_timeout);
        let granted = tokio::time::timeout_at(until, waiter.granted()).await;
        let waited = queued.elapsed();
        let acquired = match granted {
            Ok(Some(grant)) => Ok(self.acquired(grant)),
            Ok(None) => Err(CheckoutError::Closed),
            Err(_elapsed) => Err(CheckoutError::QueueTimeout),
        };
        (acquired, waited)
    }

    /// The checkout transition (no `.await`: the lock stays out of the future).
    fn try_checkout(&self, want: Want, class: Class) -> Checkout<C> {
        let mut state = self.lock();
        let index = state.index();
        let (checkout, after) = state.checkout(want, class, &self.shared.cap, || {
            self.shared.evict_idle_elsewhere(index)
        });
        self.finish(state, after);
        checkout
    }

    /// Wraps what the state handed out in its guard.
    fn acquired(self: &Arc<Self>, grant: Grant<C>) -> Acquired<C> {
        match grant {
            Grant::Conn(conn, id) => Acquired::Reused(Pooled::new(self.clone(), conn, id, true)),
            Grant::Slot => Acquired::Connect(Connecting::new(
                self.clone(),
                self.next_id(),
                SlotKind::Request,
            )),
        }
    }

    /// An active connection is done and may be reused.
    pub(super) fn checkin(&self, conn: C, id: u64, now: Instant) {
        let mut state = self.lock();
        let after = state.checkin(conn, id, now, &self.shared.cap);
        self.finish(state, after);
    }

    /// An active connection was closed (already dropped by the caller), for `reason`.
    pub(super) fn close_active(&self, reason: CloseReason) {
        self.metrics.connection_closed(reason);
        let mut state = self.lock();
        let after = state.active_closed(&self.shared.cap);
        self.finish(state, after);
    }

    /// A connection moved from connecting to active.
    pub(super) fn connected(&self) {
        let mut state = self.lock();
        state.connected();
        state.debug_check();
    }

    /// A reserved slot was not used (connect failed or was cancelled).
    pub(super) fn connect_abandoned(&self) {
        let mut state = self.lock();
        let after = state.connect_abandoned(&self.shared.cap);
        self.finish(state, after);
    }

    /// A global slot taken for starved waiter `id`; see [`PoolState::grant_to_starved`].
    pub(super) fn grant_to_starved(&self, id: u64) -> bool {
        let mut state = self.lock();
        let sent = state.grant_to_starved(id, &self.shared.cap);
        state.debug_check();
        sent
    }

    /// A waiter leaves: out of the queue, or, if a grant raced its departure, the grant is
    /// given back.
    pub(super) fn waiter_dropped(&self, id: u64, late_grant: impl FnOnce() -> Option<Grant<C>>) {
        let mut state = self.lock();
        if let Some(after) = state.waiter_left(id, &self.shared.cap) {
            self.finish(state, after);
            return;
        }
        drop(state);
        match late_grant() {
            Some(Grant::Conn(conn, conn_id)) => self.checkin(conn, conn_id, Instant::now()),
            Some(Grant::Slot) => self.connect_abandoned(),
            None => {}
        }
    }

    /// Closes the idle connections `pick` selects, for `reason`.
    pub(super) fn close_idle(&self, reason: CloseReason, pick: impl FnMut(&Idle<C>) -> bool) {
        let mut state = self.lock();
        let after = state.close_idle(reason, pick);
        self.finish(state, after);
    }

    /// The connection with `id` ended on its own (the upstream closed it). If it was idle, it
    /// leaves the pool now, so the idle gauge never counts a dead connection for long.
    /// How long it had been idle is the upstream's idle cutoff, recorded for `warm_refresh`.
    pub fn connection_lost(&self, id: u64) {
        let mut since = None;
        let mut state = self.lock();
        let after = state.close_idle(CloseReason::UpstreamClosed, |idle| {
            let this = idle.id == id;
            if this {
                since = Some(idle.since);
            }
            this
        });
        self.finish(state, after);
        if let Some(since) = since {
            self.metrics.idle_cut_off(since.elapsed());
        }
    }

    /// Closes the idle connections that [`Poolable::is_retired`] says must not be reused.
    pub fn close_retired_idle(&self) {
        self.close_idle(CloseReason::DnsChanged, |idle| idle.conn.is_retired());
    }

    /// Closes idle connections idle since before `now - idle_timeout`, except the warm floor.
    /// Returns the earliest time another one may expire.
    pub(super) fn reap(&self, now: Instant) -> Option<Instant> {
        let mut state = self.lock();
        let (after, next) = state.reap(now, self.limits.idle_timeout);
        self.finish(state, after);
        next
    }
}
