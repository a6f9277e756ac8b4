//! The connection pool: per-upstream caps, the global cap, the FIFO wait queue, the idle set,
//! reaping, and the **only** writes to the pool gauges.
//!
//! Knows nothing of HTTP, DNS or TLS: a pooled connection is any [`Poolable`]. The proxy asks
//! [`Pool::checkout`] for a connection and gets a guard back whose existence *is* the state:
//!
//! - [`Connecting`]: a reserved slot while the caller dials (counts toward both caps);
//! - [`Pooled`]: a connection carrying a request (active); dropped, it goes back to idle, to
//!   the oldest waiter, or is closed, and the slot is freed;
//! - a waiter (inside [`Pool::checkout`]) that leaves the queue when its future is dropped.
//!
//! Waiters are served in arrival order: within a pool by its FIFO queue, and across pools
//! when the global cap is what blocks them: a slot freed in one pool goes to an older waiter
//! of another pool that is starved by the global cap before this pool's own younger waiters,
//! so one busy upstream cannot starve the others.
//!
//! Every state change happens under the upstream's own mutex, which is never held across an
//! `.await`, and the gauges are set from the counts in that same critical section, so they are
//! exact at every moment. The global cap is an atomic counter of reserved slots; only the slow
//! path (global cap reached) touches the shared queue of starved waiters.
//!
//! # Concurrency note
//! Lock order is "one upstream, then the starved queue". Code that needs another upstream's
//! lock while holding its own (eviction) only `try_lock`s it and skips it when contended, so the
//! least-recently-used choice across upstreams is best effort; correctness of caps and gauges
//! does not depend on it.

mod guard;
mod reaper;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

pub use guard::{Acquired, Connecting, Pooled};
pub use reaper::spawn_reaper;

use crate::metrics::{CloseReason, UpstreamMetrics};
use guard::Waiter;

/// A connection the pool can hold.
pub trait Poolable: Send + 'static {
    /// True once the connection can never carry another request (peer closed, error).
    fn is_closed(&self) -> bool;

    /// True when the connection works but must not be reused (its address left the
    /// upstream's DNS answer): it finishes its request and is then closed.
    fn is_retired(&self) -> bool {
        false
    }
}

/// Why a checkout failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckoutError {
    /// No connection became free within the queue timeout.
    QueueTimeout,
    /// The queue already holds `max_waiting` requests.
    QueueFull,
    /// The pool is gone (shutdown).
    Closed,
}

/// The per-upstream settings the pool enforces.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    /// Cap on connecting + idle + active connections to this upstream.
    pub max_connections: usize,
    /// Idle connections older than this are closed by the reaper.
    pub idle_timeout: Duration,
    /// Longest wait in the queue.
    pub queue_timeout: Duration,
    /// Cap on queued requests (`None`: only `queue_timeout` bounds the queue).
    pub max_waiting: Option<usize>,
}

/// All upstream pools plus the global cap they share.
pub struct PoolSet<C: Poolable> {
    global: Arc<Global<C>>,
    pools: Vec<Arc<Pool<C>>>,
}

impl<C: Poolable> PoolSet<C> {
    /// One pool per `(name, limits, metrics)`, sharing a cap of `max_connections` in total.
    pub fn new(
        max_connections: usize,
        upstreams: impl IntoIterator<Item = (Arc<str>, PoolLimits, UpstreamMetrics)>,
    ) -> PoolSet<C> {
        let global = Arc::new(Global {
            max: max_connections,
            open: AtomicUsize::new(0),
            starved: Mutex::new(VecDeque::new()),
            starved_len: AtomicUsize::new(0),
            next_waiter: AtomicU64::new(1),
            pools: OnceLock::new(),
        });
        let pools: Vec<Arc<Pool<C>>> = upstreams
            .into_iter()
            .enumerate()
            .map(|(index, (name, limits, metrics))| {
                let pool = Arc::new(Pool {
                    index,
                    name,
                    limits,
                    metrics,
                    global: global.clone(),
                    next_id: AtomicU64::new(1),
                    state: Mutex::new(State::default()),
                });
                pool.publish(&mut pool.lock());
                pool
            })
            .collect();
        let weak = pools.iter().map(Arc::downgrade).collect();
        let _ = global.pools.set(weak);
        PoolSet { global, pools }
    }

    /// The pools, in the order they were given.
    pub fn pools(&self) -> &[Arc<Pool<C>>] {
        &self.pools
    }

    /// Connections open (or being opened) over all upstreams; never above the global cap.
    pub fn open_total(&self) -> usize {
        self.global.open.load(Ordering::SeqCst)
    }

    /// Closes every idle connection now (shutdown).
    pub fn close_idle(&self) {
        for pool in &self.pools {
            pool.close_idle(CloseReason::Shutdown);
        }
    }
}

/// State shared by all pools: the global cap and the waiters starved by it.
struct Global<C: Poolable> {
    max: usize,
    /// Slots reserved over all pools (connecting + idle + active). Reserved before a pool's own
    /// counts go up and released after they go down, so it never undercounts.
    open: AtomicUsize,
    /// Waiters (pool index, waiter id) that are under their pool's cap but blocked by the
    /// global cap, oldest (lowest id) first.
    starved: Mutex<VecDeque<(usize, u64)>>,
    /// Length of `starved`, readable without the lock on the hot path.
    starved_len: AtomicUsize,
    /// Waiter ids, in arrival order over all pools, so "oldest" means the same everywhere.
    next_waiter: AtomicU64,
    pools: OnceLock<Vec<Weak<Pool<C>>>>,
}

impl<C: Poolable> Global<C> {
    fn try_reserve(&self) -> bool {
        self.open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |open| {
                (open < self.max).then_some(open + 1)
            })
            .is_ok()
    }

    /// A slot was given up: hand it to the oldest starved waiter, if any.
    fn release(&self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
        self.hand_out_free_slots();
    }

    /// Gives free global slots to starved waiters, oldest first.
    fn hand_out_free_slots(&self) {
        // Pairs with the re-check in `Pool::enqueue`: either that waiter sees the freed slot or
        // we see its registration (both sides use SeqCst).
        while self.starved_len.load(Ordering::SeqCst) > 0 {
            if !self.try_reserve() {
                return;
            }
            if !self.grant_reserved_slot() {
                self.open.fetch_sub(1, Ordering::SeqCst);
                return;
            }
        }
    }

    /// Gives one already reserved slot to the oldest starved waiter that can still use it.
    fn grant_reserved_slot(&self) -> bool {
        let Some(pools) = self.pools.get() else {
            return false;
        };
        loop {
            let entry = {
                let mut starved = lock(&self.starved);
                let entry = starved.pop_front();
                if entry.is_some() {
                    self.starved_len.fetch_sub(1, Ordering::SeqCst);
                }
                entry
            };
            let Some((index, waiter)) = entry else {
                return false;
            };
            if let Some(pool) = pools.get(index).and_then(Weak::upgrade)
                && pool.grant_slot_to_starved(waiter)
            {
                return true;
            }
        }
    }

    /// Adds a waiter in arrival order (a waiter may become starved after younger ones did).
    fn register_starved(&self, index: usize, waiter: u64) {
        let mut starved = lock(&self.starved);
        let pos = starved
            .iter()
            .rposition(|e| e.1 < waiter)
            .map_or(0, |p| p + 1);
        starved.insert(pos, (index, waiter));
        self.starved_len.fetch_add(1, Ordering::SeqCst);
    }

    /// The id of the oldest waiter starved by the global cap, if any.
    fn oldest_starved(&self) -> Option<u64> {
        if self.starved_len.load(Ordering::SeqCst) == 0 {
            return None;
        }
        lock(&self.starved).front().map(|e| e.1)
    }

    fn unregister_starved(&self, index: usize, waiter: u64) {
        let mut starved = lock(&self.starved);
        if let Some(pos) = starved.iter().position(|e| *e == (index, waiter)) {
            starved.remove(pos);
            self.starved_len.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Closes the least recently used idle connection of another pool and keeps its global
    /// slot for the caller. Only `try_lock`s other pools (see the module's concurrency note).
    fn evict_idle_elsewhere(&self, except: usize) -> bool {
        let Some(pools) = self.pools.get() else {
            return false;
        };
        let mut oldest: Option<(Instant, &Weak<Pool<C>>)> = None;
        for (index, weak) in pools.iter().enumerate() {
            if index == except {
                continue;
            }
            let Some(pool) = weak.upgrade() else { continue };
            let Ok(state) = pool.state.try_lock() else {
                continue;
            };
            if let Some(first) = state.idle.first()
                && oldest.is_none_or(|(since, _)| first.since < since)
            {
                oldest = Some((first.since, weak));
            }
        }
        let Some(pool) = oldest.and_then(|(_, weak)| weak.upgrade()) else {
            return false;
        };
        let Ok(mut state) = pool.state.try_lock() else {
            return false;
        };
        if state.idle.is_empty() {
            return false;
        }
        let evicted = state.idle.remove(0);
        pool.metrics.connection_closed(CloseReason::Evicted);
        pool.publish(&mut state);
        drop(state);
        drop(evicted);
        true
    }
}

/// The pool of one upstream.
pub struct Pool<C: Poolable> {
    index: usize,
    name: Arc<str>,
    limits: PoolLimits,
    metrics: UpstreamMetrics,
    global: Arc<Global<C>>,
    next_id: AtomicU64,
    state: Mutex<State<C>>,
}

struct State<C> {
    /// Least recently used first; reuse pops the most recently used from the back.
    idle: Vec<Idle<C>>,
    active: usize,
    connecting: usize,
    waiters: VecDeque<WaiterEntry<C>>,
    /// The gauge values last set: (active, idle, connecting, waiting).
    published: [usize; 4],
}

impl<C> Default for State<C> {
    fn default() -> Self {
        State {
            idle: Vec::new(),
            active: 0,
            connecting: 0,
            waiters: VecDeque::new(),
            published: [usize::MAX; 4],
        }
    }
}

impl<C> State<C> {
    fn open(&self) -> usize {
        self.idle.len() + self.active + self.connecting
    }
}

struct Idle<C> {
    conn: C,
    id: u64,
    since: Instant,
}

struct WaiterEntry<C> {
    id: u64,
    /// Wants a new connection (a re-send), never a reused one.
    fresh: bool,
    /// Registered in the global starved queue.
    starved: bool,
    tx: oneshot::Sender<Grant<C>>,
}

/// Why a checkout could not be served at once.
enum Queued<C: Poolable> {
    /// In the queue.
    Waiting(Waiter<C>),
    /// Refused: the queue is at `max_waiting`.
    Full,
}

/// What a waiter is handed when it leaves the queue.
enum Grant<C> {
    /// A connection, already counted active.
    Conn(C, u64),
    /// A slot, already counted connecting.
    Slot,
}

/// Snapshot of one pool's counts (the same numbers the gauges show).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolCounts {
    /// Connections carrying a request.
    pub active: usize,
    /// Kept-alive connections waiting for reuse.
    pub idle: usize,
    /// Handshakes in progress.
    pub connecting: usize,
    /// Requests queued.
    pub waiting: usize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the counts half-updated in a way that matters
    // more than stopping the sidecar would, so keep serving.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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

    /// Current counts.
    pub fn counts(&self) -> PoolCounts {
        let state = self.lock();
        PoolCounts {
            active: state.active,
            idle: state.idle.len(),
            connecting: state.connecting,
            waiting: state.waiters.len(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<C>> {
        lock(&self.state)
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sets the gauges from the counts; called in every critical section that changes them.
    /// Gauges that fall are set before gauges that rise, so a scrape taken between two of the
    /// stores never shows more connections than exist (active + idle + connecting stays within
    /// the cap in every scrape).
    fn publish(&self, state: &mut State<C>) {
        let now = [
            state.active,
            state.idle.len(),
            state.connecting,
            state.waiters.len(),
        ];
        let gauges = [
            &self.metrics.active,
            &self.metrics.idle,
            &self.metrics.connecting,
            &self.metrics.waiting,
        ];
        for rising in [false, true] {
            for ((gauge, value), before) in gauges.iter().zip(now).zip(state.published) {
                if value != before && (value > before) == rising {
                    gauge.set(value as f64);
                }
            }
        }
        state.published = now;
        debug_assert!(state.open() <= self.limits.max_connections);
        debug_assert!(state.waiters.is_empty() || state.idle.is_empty());
    }

    /// A connection to use: the most recently used idle one, or a slot to open a new one, or,
    /// when neither is free, a place in the FIFO queue for up to `queue_timeout`. With `fresh`,
    /// only a new connection will do (for a re-send).
    pub async fn checkout(self: &Arc<Self>, fresh: bool) -> Result<Acquired<C>, CheckoutError> {
        self.checkout_timed(fresh).await.0
    }

    /// [`Pool::checkout`], with how long the caller waited in the queue: exactly zero, and no
    /// clock read, when a connection or a slot was free at once (the common case, on every
    /// request's path).
    pub async fn checkout_timed(
        self: &Arc<Self>,
        fresh: bool,
    ) -> (Result<Acquired<C>, CheckoutError>, Duration) {
        let mut waiter = match self.try_checkout(fresh) {
            Ok(acquired) => return (Ok(acquired), Duration::ZERO),
            Err(Queued::Waiting(waiter)) => waiter,
            Err(Queued::Full) => return (Err(CheckoutError::QueueFull), Duration::ZERO),
        };
        let queued = Instant::now();
        let granted = tokio::time::timeout(self.limits.queue_timeout, waiter.granted()).await;
        let waited = queued.elapsed();
        let acquired = match granted {
            Ok(Some(grant)) => Ok(self.acquired_from(grant)),
            Ok(None) => Err(CheckoutError::Closed),
            Err(_elapsed) => Err(CheckoutError::QueueTimeout),
        };
        (acquired, waited)
    }

    fn acquired_from(self: &Arc<Self>, grant: Grant<C>) -> Acquired<C> {
        match grant {
            Grant::Conn(conn, id) => Acquired::Reused(Pooled::new(self.clone(), conn, id, true)),
            Grant::Slot => Acquired::Connect(Connecting::new(self.clone(), self.next_id())),
        }
    }

    fn try_checkout(self: &Arc<Self>, fresh: bool) -> Result<Acquired<C>, Queued<C>> {
        let mut state = self.lock();
        let mut freed = 0;
        if !fresh {
            while let Some(idle) = state.idle.pop() {
                if idle.conn.is_closed() {
                    self.metrics.connection_closed(CloseReason::UpstreamClosed);
                    freed += 1;
                    continue;
                }
                if idle.conn.is_retired() {
                    self.metrics.connection_closed(CloseReason::DnsChanged);
                    freed += 1;
                    continue;
                }
                state.active += 1;
                self.publish(&mut state);
                drop(state);
                self.release_global(freed);
                return Ok(Acquired::Reused(Pooled::new(
                    self.clone(),
                    idle.conn,
                    idle.id,
                    true,
                )));
            }
        }
        // Slots freed by closed idle connections are ours to reuse directly.
        let reserved = if freed > 0 {
            freed -= 1;
            true
        } else {
            false
        };
        let slot = if !state.waiters.is_empty() {
            false
        } else if state.open() < self.limits.max_connections
            && (reserved
                || self.global.try_reserve()
                || self.global.evict_idle_elsewhere(self.index))
        {
            true
        } else if fresh && !state.idle.is_empty() {
            // A re-send may not reuse, so the least recently used idle connection makes room.
            state.idle.remove(0);
            self.metrics.connection_closed(CloseReason::Evicted);
            true
        } else {
            false
        };
        if reserved && !slot {
            freed += 1;
        }
        if slot {
            state.connecting += 1;
            self.publish(&mut state);
            drop(state);
            self.release_global(freed);
            return Ok(Acquired::Connect(Connecting::new(
                self.clone(),
                self.next_id(),
            )));
        }
        let waiter = self.enqueue(&mut state, fresh);
        drop(state);
        self.release_global(freed);
        waiter
    }

    /// Joins the queue. A waiter under its own cap is blocked by the global cap ("starved") and
    /// registers globally, then re-checks the global counter so a slot freed meanwhile is not lost.
    fn enqueue(
        self: &Arc<Self>,
        state: &mut State<C>,
        fresh: bool,
    ) -> Result<Acquired<C>, Queued<C>> {
        let starved = state.open() < self.limits.max_connections;
        if self
            .limits
            .max_waiting
            .is_some_and(|max| state.waiters.len() >= max)
        {
            // A full queue refuses at once, unless a global slot was freed just now.
            if starved && self.global.try_reserve() {
                state.connecting += 1;
                self.publish(state);
                return Ok(Acquired::Connect(Connecting::new(
                    self.clone(),
                    self.next_id(),
                )));
            }
            return Err(Queued::Full);
        }
        let id = self.global.next_waiter.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        state.waiters.push_back(WaiterEntry {
            id,
            fresh,
            starved,
            tx,
        });
        if starved {
            self.global.register_starved(self.index, id);
            if self.global.try_reserve() {
                state.waiters.pop_back();
                self.global.unregister_starved(self.index, id);
                state.connecting += 1;
                self.publish(state);
                return Ok(Acquired::Connect(Connecting::new(
                    self.clone(),
                    self.next_id(),
                )));
            }
        }
        self.publish(state);
        Err(Queued::Waiting(Waiter::new(self.clone(), id, rx)))
    }

    fn release_global(&self, slots: usize) {
        for _ in 0..slots {
            self.global.release();
        }
    }

    /// One of this pool's slots was freed (a connection closed or a connect failed), with its
    /// counts already lowered: give it to the oldest waiter, or give it back globally.
    /// Returns the number of global slots the caller must release after unlocking.
    fn slot_freed(&self, state: &mut State<C>) -> usize {
        if self.other_pool_waits_longer(state) {
            self.mark_starved(state);
            return 1;
        }
        while let Some(waiter) = state.waiters.pop_front() {
            if waiter.starved {
                self.global.unregister_starved(self.index, waiter.id);
            }
            state.connecting += 1;
            match waiter.tx.send(Grant::Slot) {
                Ok(()) => return 0,
                // The waiter is gone (its receiver dropped): undo and try the next one.
                Err(_) => state.connecting -= 1,
            }
        }
        1
    }

    /// True when another pool's waiter, starved by the global cap, arrived before this pool's
    /// oldest waiter: a slot freed here is owed to it.
    fn other_pool_waits_longer(&self, state: &State<C>) -> bool {
        let Some(front) = state.waiters.front() else {
            return false;
        };
        // Equal ids mean the oldest starved waiter is this pool's own front waiter.
        self.global
            .oldest_starved()
            .is_some_and(|oldest| oldest < front.id)
    }

    /// After this pool gave a slot away, as many of its oldest waiters as it now has room for
    /// under its own cap are blocked only by the global cap: they join the starved queue.
    /// Returns whether any waiter was newly registered.
    fn mark_starved(&self, state: &mut State<C>) -> bool {
        let room = self.limits.max_connections.saturating_sub(state.open());
        let mut registered = false;
        for waiter in state.waiters.iter_mut().take(room) {
            if !waiter.starved {
                waiter.starved = true;
                self.global.register_starved(self.index, waiter.id);
                registered = true;
            }
        }
        registered
    }

    /// An active connection is done and may be reused: to the oldest waiter, or to idle.
    fn checkin(&self, conn: C, id: u64, now: Instant) {
        let mut state = self.lock();
        state.active -= 1;
        let mut freed = 0;
        let mut returned = Some(conn);
        while let Some(conn) = returned.take() {
            if self.other_pool_waits_longer(&state) {
                // Arrival order across upstreams: the slot goes to the older waiter elsewhere.
                self.metrics.connection_closed(CloseReason::Evicted);
                drop(conn);
                freed += 1;
                self.mark_starved(&mut state);
                break;
            }
            let Some(waiter) = state.waiters.pop_front() else {
                returned = Some(conn);
                break;
            };
            if waiter.starved {
                self.global.unregister_starved(self.index, waiter.id);
            }
            if waiter.fresh {
                // A re-send needs a new connection: this one makes room for it.
                self.metrics.connection_closed(CloseReason::Evicted);
                drop(conn);
                state.connecting += 1;
                if waiter.tx.send(Grant::Slot).is_err() {
                    state.connecting -= 1;
                    freed += self.slot_freed(&mut state);
                }
            } else {
                state.active += 1;
                if let Err(Grant::Conn(conn, _)) = waiter.tx.send(Grant::Conn(conn, id)) {
                    // That waiter is gone: offer the connection to the next one.
                    state.active -= 1;
                    returned = Some(conn);
                }
            }
        }
        if let Some(conn) = returned {
            if self.global.starved_len.load(Ordering::SeqCst) > 0 {
                // Another upstream waits for a global slot: this idle connection makes room.
                self.metrics.connection_closed(CloseReason::Evicted);
                drop(conn);
                freed += 1;
            } else {
                // `now` was read just before the lock, so `idle` stays ordered by `since` up to
                // that gap (microseconds), which is all the reaper's ordered scan can be late by.
                state.idle.push(Idle {
                    conn,
                    id,
                    since: now,
                });
            }
        }
        self.settle(state, freed);
    }

    /// Ends a critical section that freed room under this pool's cap or served a starved
    /// waiter: the waiters that room now covers join the starved queue, the gauges are set,
    /// and `freed` global slots are released. Any free global slot then goes to the oldest
    /// starved waiter, so none waits while a slot is free.
    fn settle(&self, mut state: MutexGuard<'_, State<C>>, freed: usize) {
        let registered = self.mark_starved(&mut state);
        self.publish(&mut state);
        drop(state);
        self.release_global(freed);
        if registered {
            self.global.hand_out_free_slots();
        }
    }

    /// An active connection is closed (not reusable).
    fn close_active(&self, reason: CloseReason) {
        let mut state = self.lock();
        state.active -= 1;
        self.metrics.connection_closed(reason);
        let freed = self.slot_freed(&mut state);
        self.settle(state, freed);
    }

    /// A connection moved from connecting to active.
    fn connected(&self) {
        let mut state = self.lock();
        state.connecting -= 1;
        state.active += 1;
        self.publish(&mut state);
    }

    /// A reserved slot was not used (connect failed or was cancelled).
    fn connect_abandoned(&self) {
        let mut state = self.lock();
        state.connecting -= 1;
        let freed = self.slot_freed(&mut state);
        self.settle(state, freed);
    }

    /// The connection with `id` ended on its own (the upstream closed it). If it was idle, it
    /// leaves the pool now, so the idle gauge never counts a dead connection for long.
    pub fn connection_lost(&self, id: u64) {
        let mut state = self.lock();
        let Some(pos) = state.idle.iter().position(|idle| idle.id == id) else {
            return;
        };
        let lost = state.idle.remove(pos);
        self.metrics.connection_closed(CloseReason::UpstreamClosed);
        self.publish(&mut state);
        drop(state);
        drop(lost);
        self.release_global(1);
    }

    /// A slot freed by the global queue: give it to waiter `id` if it is still queued and
    /// under this pool's cap.
    fn grant_slot_to_starved(&self, id: u64) -> bool {
        let mut state = self.lock();
        let Some(pos) = state.waiters.iter().position(|w| w.id == id) else {
            return false;
        };
        if state.open() >= self.limits.max_connections {
            // Now blocked by its own cap; this pool's own releases will serve it.
            state.waiters[pos].starved = false;
            return false;
        }
        let Some(waiter) = state.waiters.remove(pos) else {
            return false;
        };
        state.connecting += 1;
        let sent = waiter.tx.send(Grant::Slot).is_ok();
        if !sent {
            state.connecting -= 1;
        }
        // Called from the global hand-out loop, which serves whoever registers here next.
        self.mark_starved(&mut state);
        self.publish(&mut state);
        sent
    }

    /// A waiter leaves: removed from the queue, or, if a grant raced its departure, the grant
    /// is given back.
    fn waiter_dropped(&self, id: u64, late_grant: impl FnOnce() -> Option<Grant<C>>) {
        let mut state = self.lock();
        if let Some(pos) = state.waiters.iter().position(|w| w.id == id) {
            if let Some(waiter) = state.waiters.remove(pos)
                && waiter.starved
            {
                self.global.unregister_starved(self.index, id);
            }
            // A starved waiter's room under this pool's cap passes to the next waiter.
            self.settle(state, 0);
            return;
        }
        drop(state);
        match late_grant() {
            Some(Grant::Conn(conn, conn_id)) => self.checkin(conn, conn_id, Instant::now()),
            Some(Grant::Slot) => self.connect_abandoned(),
            None => {}
        }
    }

    /// Closes idle connections idle since before `now - idle_timeout`. Returns the earliest
    /// time another one may expire.
    fn reap(&self, now: Instant) -> Option<Instant> {
        let mut state = self.lock();
        let expired = state
            .idle
            .iter()
            .take_while(|idle| idle.since + self.limits.idle_timeout <= now)
            .count();
        let closed: Vec<Idle<C>> = state.idle.drain(..expired).collect();
        for _ in &closed {
            self.metrics.connection_closed(CloseReason::IdleTimeout);
        }
        let next = state
            .idle
            .first()
            .map(|idle| idle.since + self.limits.idle_timeout);
        if !closed.is_empty() {
            self.publish(&mut state);
        }
        drop(state);
        drop(closed);
        self.release_global(expired);
        next
    }

    /// Closes the idle connections that [`Poolable::is_retired`] says must not be reused.
    pub fn close_retired_idle(&self) {
        let mut state = self.lock();
        let retired: Vec<Idle<C>> = state
            .idle
            .extract_if(.., |idle| idle.conn.is_retired())
            .collect();
        if retired.is_empty() {
            return;
        }
        for _ in &retired {
            self.metrics.connection_closed(CloseReason::DnsChanged);
        }
        self.publish(&mut state);
        drop(state);
        let count = retired.len();
        drop(retired);
        self.release_global(count);
    }

    /// Open connections (connecting, idle or active).
    pub fn open(&self) -> usize {
        self.lock().open()
    }

    fn close_idle(&self, reason: CloseReason) {
        let mut state = self.lock();
        let closed: Vec<Idle<C>> = state.idle.drain(..).collect();
        for _ in &closed {
            self.metrics.connection_closed(reason);
        }
        self.publish(&mut state);
        drop(state);
        let count = closed.len();
        drop(closed);
        self.release_global(count);
    }
}

#[cfg(test)]
mod tests;
