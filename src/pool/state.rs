//! One upstream's pool state and every transition of it, as one type with no `Arc`, no
//! metrics and no clock of its own, so it can be tested alone.
//!
//! The caller holds the upstream's lock around a transition. A transition changes the counts,
//! sends grants to waiters (a oneshot send never blocks, and a failed one must be undone in the
//! same critical section so the next waiter is served in order), and returns an [`After`]: the
//! work that must wait until the lock is released (closing connections, freeing global slots).
//!
//! Words used throughout: a *slot* is one unit of a cap; a pool's *open* count is the slots it
//! holds (connecting + idle + active); a slot is *freed* when it leaves the pool (back to the
//! global cap, or handed to a waiter); a connection is *released* when its exchange ended and it
//! comes back for reuse ([`super::Pooled::release`]).

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::global::GlobalCap;
use super::waiters::{Queued, Waiters};
use super::{PoolCounts, Poolable, Want};
use crate::metrics::CloseReason;
use crate::ratelimit::Class;

/// A kept-alive connection waiting for reuse.
pub(super) struct Idle<C> {
    pub(super) conn: C,
    pub(super) id: u64,
    pub(super) since: Instant,
    /// A replacement is being opened for it (`warm_refresh`); it stays usable meanwhile.
    pub(super) refreshing: bool,
}

/// A queued checkout.
pub(super) struct Waiting<C> {
    pub(super) id: u64,
    want: Want,
    class: Class,
    /// Registered in the global starved queue.
    pub(super) starved: bool,
    tx: oneshot::Sender<Grant<C>>,
}

impl<C> Queued for Waiting<C> {
    fn id(&self) -> u64 {
        self.id
    }
    fn class(&self) -> Class {
        self.class
    }
}

/// What a waiter is handed when it leaves the queue.
pub(super) enum Grant<C> {
    /// A connection, already counted active.
    Conn(C, u64),
    /// A slot, already counted connecting.
    Slot,
}

/// The answer to a checkout, before the caller wraps it in a guard.
pub(super) enum Checkout<C> {
    /// An idle connection, now counted active.
    Reuse(C, u64),
    /// A slot, now counted connecting: the caller opens a connection.
    Connect,
    /// In the queue, as waiter `id`; the grant arrives on the receiver.
    Queued(u64, oneshot::Receiver<Grant<C>>),
    /// Refused: the queue is at `max_waiting`.
    Full,
}

/// What the caller must do once the lock is released, in this order.
#[must_use = "closes connections and frees slots"]
pub(super) struct After<C> {
    /// Connections that left the pool, to drop (closing them) and count by reason.
    pub(super) closed: Vec<(C, CloseReason)>,
    /// Global slots to free, each then offered to the oldest starved waiter.
    pub(super) free: usize,
    /// Waiters newly registered as starved: offer them any free global slot.
    pub(super) hand_out: bool,
}

impl<C> Default for After<C> {
    fn default() -> Self {
        After {
            closed: Vec::new(),
            free: 0,
            hand_out: false,
        }
    }
}

impl<C> After<C> {
    fn close(&mut self, conn: C, reason: CloseReason) {
        self.closed.push((conn, reason));
    }
}

pub(super) struct PoolState<C> {
    /// This pool's index in its set (its name in the global starved queue).
    index: usize,
    cap: usize,
    max_waiting: Option<usize>,
    /// Least recently used first; reuse pops the most recently used from the back.
    idle: Vec<Idle<C>>,
    active: usize,
    connecting: usize,
    waiters: Waiters<Waiting<C>>,
    /// The warm floor: idle connections kept ready once `warm_armed` (`warm_connections`).
    warm: usize,
    /// The upstream has carried a request (or `prewarm`): the floor applies.
    warm_armed: bool,
    /// Slots of `connecting` opened in the background for the floor or a refresh.
    warming: usize,
    /// Warm connections out of `idle` for a `warm_probe` GET (counted `active`).
    probing: usize,
}

impl<C: Poolable> PoolState<C> {
    pub(super) fn new(index: usize, cap: usize, max_waiting: Option<usize>, warm: usize) -> Self {
        PoolState {
            index,
            cap,
            max_waiting,
            idle: Vec::new(),
            active: 0,
            connecting: 0,
            waiters: Waiters::default(),
            warm: warm.min(cap),
            warm_armed: false,
            warming: 0,
            probing: 0,
        }
    }

    /// This pool's index in its set.
    pub(super) fn index(&self) -> usize {
        self.index
    }

    /// Slots held: connecting + idle + active.
    pub(super) fn open(&self) -> usize {
        self.idle.len() + self.active + self.connecting
    }

    /// The counts the gauges show.
    pub(super) fn counts(&self) -> PoolCounts {
        PoolCounts {
            active: self.active,
            idle: self.idle.len(),
            connecting: self.connecting,
            waiting: self.waiters.len(),
        }
    }

    /// The idle connections, least recently used first.
    pub(super) fn idle(&self) -> &[Idle<C>] {
        &self.idle
    }

    /// The queue, in service order.
    #[cfg(test)]
    pub(super) fn waiters(&self) -> impl Iterator<Item = &Waiting<C>> {
        self.waiters.iter()
    }

    /// The invariants every transition keeps (checked in debug builds after each one).
    pub(super) fn debug_check(&self) {
        debug_assert!(self.open() <= self.cap, "over the pool's cap");
        debug_assert!(
            self.waiters.is_empty() || self.idle.is_empty(),
            "requests wait while connections idle"
        );
        debug_assert!(self.warming <= self.connecting, "warming beyond connecting");
        debug_assert!(self.probing <= self.active, "probing beyond active");
    }

    /// A connection to use: the most recently used idle one (unless `want` is
    /// [`Want::NewOnly`]), or a slot to open a new one, or, when neither is free, a place in the
    /// queue, served by `class` then arrival. `evict_elsewhere` closes another pool's least recently used idle connection and
    /// keeps its global slot for this pool, when the global cap is what blocks.
    pub(super) fn checkout(
        &mut self,
        want: Want,
        class: Class,
        global: &GlobalCap,
        evict_elsewhere: impl FnOnce() -> bool,
    ) -> (Checkout<C>, After<C>) {
        let mut after = After::default();
        if want == Want::Any {
            while let Some(idle) = self.idle.pop() {
                let Some(reason) = super::unusable(&idle.conn) else {
                    self.active += 1;
                    return (Checkout::Reuse(idle.conn, idle.id), after);
                };
                after.close(idle.conn, reason);
                after.free += 1;
            }
        }
        // A slot freed by a closed idle connection is this pool's to reuse directly.
        let reused_slot = after.free > 0;
        let slot = if !self.waiters.is_empty() {
            false
        } else if self.open() < self.cap && (reused_slot || global.try_take() || evict_elsewhere())
        {
            true
        } else if want == Want::NewOnly && !self.idle.is_empty() {
            // A re-send may not reuse, so the least recently used idle connection makes room.
            let lru = self.idle.remove(0);
            after.close(lru.conn, CloseReason::Evicted);
            true
        } else {
            false
        };
        if slot {
            if reused_slot {
                after.free -= 1;
            }
            return (self.start_connecting(), after);
        }
        (self.enqueue(want, class, global), after)
    }

    fn start_connecting(&mut self) -> Checkout<C> {
        self.connecting += 1;
        Checkout::Connect
    }

    /// Joins the queue. A waiter under its own cap is blocked by the global cap (starved): it
    /// registers globally, then re-checks the global count so a slot freed meanwhile is not
    /// lost.
    fn enqueue(&mut self, want: Want, class: Class, global: &GlobalCap) -> Checkout<C> {
        let starved = self.open() < self.cap;
        if self
            .max_waiting
            .is_some_and(|max| self.waiters.len() >= max)
        {
            // A full queue refuses at once, unless a global slot was freed just now.
            if starved && global.try_take() {
                return self.start_connecting();
            }
            return Checkout::Full;
        }
        let id = global.next_waiter_id();
        let (tx, rx) = oneshot::channel();
        self.waiters.push(Waiting {
            id,
            want,
            class,
            starved,
            tx,
        });
        if starved {
            global.register(self.index, id);
            if global.try_take() {
                self.waiters.remove(id);
                global.unregister(self.index, id);
                return self.start_connecting();
            }
        }
        Checkout::Queued(id, rx)
    }

    /// Hands `waiter` a slot to open a connection. False when it is gone (its receiver
    /// dropped); the slot is then still the caller's.
    fn grant_slot(&mut self, waiter: Waiting<C>, global: &GlobalCap) -> bool {
        if waiter.starved {
            global.unregister(self.index, waiter.id);
        }
        self.connecting += 1;
        if waiter.tx.send(Grant::Slot).is_ok() {
            return true;
        }
        self.connecting -= 1;
        false
    }

    /// One of this pool's slots was freed with its counts already lowered: it goes to the
    /// oldest waiter, here or (when older) starved in another pool. Returns the global slots
    /// to free.
    fn slot_freed(&mut self, global: &GlobalCap) -> usize {
        if self.other_pool_waits_longer(global) {
            self.mark_starved(global);
            return 1;
        }
        while let Some(waiter) = self.waiters.pop() {
            if self.grant_slot(waiter, global) {
                return 0;
            }
        }
        1
    }

    /// True when another pool's starved waiter arrived before this pool's next waiter: a
    /// slot freed here is owed to it.
    fn other_pool_waits_longer(&self, global: &GlobalCap) -> bool {
        let Some(front) = self.waiters.next() else {
            return false;
        };
        // Equal ids mean the oldest starved waiter is this pool's own front waiter.
        global.oldest().is_some_and(|oldest| oldest < front.id)
    }

    /// As many of the oldest waiters as there is room for under this pool's cap are blocked
    /// only by the global cap: they join the starved queue. True when any newly did.
    fn mark_starved(&mut self, global: &GlobalCap) -> bool {
        let room = self.cap.saturating_sub(self.open());
        let mut registered = false;
        for waiter in self.waiters.iter_mut().take(room) {
            if !waiter.starved {
                waiter.starved = true;
                global.register(self.index, waiter.id);
                registered = true;
            }
        }
        registered
    }

    /// Ends a transition that freed room under this pool's cap or served a starved waiter.
    fn settle(&mut self, mut after: After<C>, free: usize, global: &GlobalCap) -> After<C> {
        after.free += free;
        after.hand_out = self.mark_starved(global);
        after
    }

    /// An active connection is done and may be reused: to the oldest waiter, or to idle.
    /// `now` is read by the caller before taking the lock, so `idle` stays ordered by `since`
    /// up to that gap (microseconds), which is all the reaper's ordered scan can be late by.
    pub(super) fn checkin(
        &mut self,
        conn: C,
        id: u64,
        now: Instant,
        global: &GlobalCap,
    ) -> After<C> {
        self.active -= 1;
        self.arm_warm();
        let mut after = After::default();
        let mut free = 0;
        let mut returned = Some(conn);
        while let Some(conn) = returned.take() {
            if self.other_pool_waits_longer(global) {
                // Arrival order across upstreams: the slot goes to the older waiter elsewhere.
                after.close(conn, CloseReason::Evicted);
                free += 1;
                self.mark_starved(global);
                break;
            }
            let Some(waiter) = self.waiters.pop() else {
                returned = Some(conn);
                break;
            };
            if waiter.want == Want::NewOnly {
                // A re-send needs a new connection: this one makes room for it.
                after.close(conn, CloseReason::Evicted);
                if !self.grant_slot(waiter, global) {
                    free += self.slot_freed(global);
                }
                continue;
            }
            if waiter.starved {
                global.unregister(self.index, waiter.id);
            }
            self.active += 1;
            if let Err(Grant::Conn(conn, _)) = waiter.tx.send(Grant::Conn(conn, id)) {
                // That waiter is gone: offer the connection to the next one.
                self.active -= 1;
                returned = Some(conn);
            }
        }
        if let Some(conn) = returned {
            if global.has_starved() {
                // Another upstream waits for a global slot: this idle connection makes room.
                after.close(conn, CloseReason::Evicted);
                free += 1;
            } else {
                self.idle.push(Idle {
                    conn,
                    id,
                    since: now,
                    refreshing: false,
                });
            }
        }
        self.settle(after, free, global)
    }

    /// An active connection was closed (the caller dropped it and counted why).
    pub(super) fn active_closed(&mut self, global: &GlobalCap) -> After<C> {
        self.active -= 1;
        self.arm_warm();
        let free = self.slot_freed(global);
        self.settle(After::default(), free, global)
    }

    /// A connection moved from connecting to active.
    pub(super) fn connected(&mut self) {
        self.connecting -= 1;
        self.active += 1;
    }

    /// A slot being connected was given up (connect failed or was cancelled).
    pub(super) fn connect_abandoned(&mut self, global: &GlobalCap) -> After<C> {
        self.connecting -= 1;
        let free = self.slot_freed(global);
        self.settle(After::default(), free, global)
    }

    /// A slot taken from the global cap for starved waiter `id`: granted if it still waits and
    /// is under this pool's cap, to this pool's next waiter in service order (`id` itself,
    /// unless a waiter of a higher class came later). False leaves the slot with the caller.
    pub(super) fn grant_to_starved(&mut self, id: u64, global: &GlobalCap) -> bool {
        let Some(waiter) = self.waiters.get_mut(id) else {
            return false;
        };
        // It left the global queue when it was picked.
        waiter.starved = false;
        if self.open() >= self.cap {
            // Now blocked by its own cap; this pool's own frees will serve it.
            return false;
        }
        // The slot is this pool's; `grant_slot` takes the next waiter off the global queue.
        let waiter = self.waiters.pop().expect("one waits");
        let sent = self.grant_slot(waiter, global);
        // The caller is the global hand-out loop, which serves whoever registers here next
        // (`id` again, when another waiter took the slot).
        self.mark_starved(global);
        sent
    }

    /// Waiter `id` leaves the queue. `None` when it is no longer queued: a grant raced its
    /// departure and the caller gives that grant back.
    pub(super) fn waiter_left(&mut self, id: u64, global: &GlobalCap) -> Option<After<C>> {
        let waiter = self.waiters.remove(id)?;
        if waiter.starved {
            global.unregister(self.index, id);
        }
        // A starved waiter's room under this pool's cap passes to the next waiter.
        Some(self.settle(After::default(), 0, global))
    }

    /// Closes the idle connections `pick` selects, for `reason`; their slots are freed. Every
    /// way an idle connection leaves the pool other than reuse goes through here.
    pub(super) fn close_idle(
        &mut self,
        reason: CloseReason,
        mut pick: impl FnMut(&Idle<C>) -> bool,
    ) -> After<C> {
        let mut after = After::default();
        for idle in self.idle.extract_if(.., |idle| pick(idle)) {
            after.close(idle.conn, reason);
            after.free += 1;
        }
        after
    }

    /// Closes the least recently used idle connection for another pool, which keeps its slot.
    pub(super) fn evict_lru(&mut self) -> Option<After<C>> {
        let mut first = true;
        let mut after = self.close_idle(CloseReason::Evicted, |_| std::mem::take(&mut first));
        if after.free == 0 {
            return None;
        }
        after.free = 0;
        Some(after)
    }
}

#[path = "state_warm.rs"]
mod warm;

pub(super) use warm::Refresh;

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
