//! The global cap: slots held over all pools, and the queue of waiters it starves.
//!
//! A waiter is *starved* when it is under its own pool's cap but the global cap blocks it. The
//! starved queue lists them over all pools, oldest first, so a slot freed anywhere goes to the
//! oldest of them. Knows nothing of pools beyond their index; handing a slot to a pool's waiter
//! is `set`'s job.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::lock;

/// A starved waiter: (pool index, waiter id).
pub(super) type StarvedEntry = (usize, u64);

pub(super) struct GlobalCap {
    max: usize,
    /// Slots held over all pools (connecting + idle + active): taken before a pool's own counts
    /// go up and freed after they go down, so it never undercounts them.
    open: AtomicUsize,
    /// Starved waiters, oldest (lowest id) first.
    starved: Mutex<VecDeque<StarvedEntry>>,
    /// Length of `starved`, readable without its lock on the hot path.
    starved_len: AtomicUsize,
    /// Waiter ids, in arrival order over all pools, so "oldest" means the same everywhere.
    next_waiter: AtomicU64,
}

impl GlobalCap {
    pub(super) fn new(max: usize) -> GlobalCap {
        GlobalCap {
            max,
            open: AtomicUsize::new(0),
            starved: Mutex::new(VecDeque::new()),
            starved_len: AtomicUsize::new(0),
            next_waiter: AtomicU64::new(1),
        }
    }

    /// Slots held now.
    pub(super) fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Takes a slot if one is free.
    pub(super) fn try_take(&self) -> bool {
        self.open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |open| {
                (open < self.max).then_some(open + 1)
            })
            .is_ok()
    }

    /// Gives a slot back (the caller then offers free slots to starved waiters).
    pub(super) fn free(&self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }

    pub(super) fn next_waiter_id(&self) -> u64 {
        self.next_waiter.fetch_add(1, Ordering::Relaxed)
    }

    /// True when some waiter is starved. Pairs with the re-check after [`Self::register`]:
    /// either that waiter sees a freed slot or the freeing side sees its registration (both
    /// sides use SeqCst).
    pub(super) fn has_starved(&self) -> bool {
        self.starved_len.load(Ordering::SeqCst) > 0
    }

    /// Adds a waiter in arrival order (a waiter may become starved after younger ones did).
    pub(super) fn register(&self, index: usize, waiter: u64) {
        let mut starved = lock(&self.starved);
        let pos = starved
            .iter()
            .rposition(|e| e.1 < waiter)
            .map_or(0, |p| p + 1);
        starved.insert(pos, (index, waiter));
        self.starved_len.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn unregister(&self, index: usize, waiter: u64) {
        let mut starved = lock(&self.starved);
        if let Some(pos) = starved.iter().position(|e| *e == (index, waiter)) {
            starved.remove(pos);
            self.starved_len.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Takes the oldest starved waiter out of the queue.
    pub(super) fn pop_oldest(&self) -> Option<StarvedEntry> {
        let mut starved = lock(&self.starved);
        let entry = starved.pop_front();
        if entry.is_some() {
            self.starved_len.fetch_sub(1, Ordering::SeqCst);
        }
        entry
    }

    /// The id of the oldest starved waiter, if any.
    pub(super) fn oldest(&self) -> Option<u64> {
        if !self.has_starved() {
            return None;
        }
        lock(&self.starved).front().map(|e| e.1)
    }

    /// The starved queue as it is now, and the length counter (tests check they agree).
    #[cfg(test)]
    pub(super) fn starved_now(&self) -> (Vec<StarvedEntry>, usize) {
        let starved = lock(&self.starved);
        (
            starved.iter().copied().collect(),
            self.starved_len.load(Ordering::SeqCst),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_stop_at_the_cap_and_come_back() {
        let cap = GlobalCap::new(2);
        assert!(cap.try_take() && cap.try_take());
        assert!(!cap.try_take(), "a third slot is over the cap");
        cap.free();
        assert_eq!(cap.open(), 1);
        assert!(cap.try_take());
    }

    #[test]
    fn starved_queue_keeps_arrival_order_whatever_the_registration_order() {
        let cap = GlobalCap::new(1);
        cap.register(0, 5);
        cap.register(1, 2);
        cap.register(2, 9);
        assert_eq!(cap.oldest(), Some(2));
        cap.unregister(0, 5);
        assert_eq!(cap.starved_now(), (vec![(1, 2), (2, 9)], 2));
        assert_eq!(cap.pop_oldest(), Some((1, 2)));
        assert_eq!(cap.pop_oldest(), Some((2, 9)));
        assert_eq!(cap.pop_oldest(), None);
        assert!(!cap.has_starved());
    }
}
