//! One upstream's wait queue in service order: by class (`high`, `normal`, `low`), then
//! arrival, with the anti-starvation rule of [`FAIR_EVERY`]: when that many grants in a row
//! would pass over an older waiter of a lower class, the oldest waiter of all is served instead.
//!
//! Kept sorted by (class, arrival), so the front is the next waiter unless the fairness rule
//! picks the oldest; arrival is the waiter id, which only grows.

use std::collections::VecDeque;

use crate::ratelimit::Class;
use crate::ratelimit::class::FAIR_EVERY;

/// What the queue needs of a waiter.
pub(super) trait Queued {
    /// Its arrival order (unique, increasing).
    fn id(&self) -> u64;
    /// Its class.
    fn class(&self) -> Class;
}

pub(super) struct Waiters<W> {
    queue: VecDeque<W>,
    /// Waiters per class, so a queue of one class never scans for the oldest.
    per_class: [usize; 3],
    /// Grants in a row that passed over an older waiter.
    passed_over: u32,
}

impl<W> Default for Waiters<W> {
    fn default() -> Self {
        Waiters {
            queue: VecDeque::new(),
            per_class: [0; 3],
            passed_over: 0,
        }
    }
}

impl<W: Queued> Waiters<W> {
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Waiters of one class.
    #[cfg(test)]
    pub(super) fn len_of(&self, class: Class) -> usize {
        self.per_class[class as usize]
    }

    /// Adds a waiter behind every waiter of its class or a higher one.
    pub(super) fn push(&mut self, waiter: W) {
        let class = waiter.class();
        let at = self.queue.partition_point(|w| w.class() <= class);
        self.per_class[class as usize] += 1;
        self.queue.insert(at, waiter);
    }

    /// Undoes the last [`Waiters::push`] of `id` (the caller got a slot after all).
    pub(super) fn remove(&mut self, id: u64) -> Option<W> {
        let at = self.position(id)?;
        let waiter = self.queue.remove(at)?;
        self.per_class[waiter.class() as usize] -= 1;
        Some(waiter)
    }

    /// The waiter with `id`.
    pub(super) fn get_mut(&mut self, id: u64) -> Option<&mut W> {
        let at = self.position(id)?;
        self.queue.get_mut(at)
    }

    fn position(&self, id: u64) -> Option<usize> {
        self.queue.iter().position(|w| w.id() == id)
    }

    /// The waiter [`Waiters::pop`] would serve next.
    pub(super) fn next(&self) -> Option<&W> {
        self.queue.get(self.next_index()?.0)
    }

    /// Serves the next waiter: the front, unless the fairness rule owes the grant to the
    /// oldest waiter.
    pub(super) fn pop(&mut self) -> Option<W> {
        let (at, passes_over) = self.next_index()?;
        self.passed_over = if at != 0 || !passes_over {
            0
        } else {
            self.passed_over + 1
        };
        let waiter = self.queue.remove(at)?;
        self.per_class[waiter.class() as usize] -= 1;
        Some(waiter)
    }

    /// Where the next waiter is, and whether serving the front would pass over an older one.
    fn next_index(&self) -> Option<(usize, bool)> {
        let front = self.queue.front()?;
        let classes = self.per_class.iter().filter(|n| **n > 0).count();
        if classes < 2 {
            return Some((0, false));
        }
        let (oldest, oldest_waiter) = self.queue.iter().enumerate().min_by_key(|(_, w)| w.id())?;
        if oldest_waiter.id() == front.id() {
            Some((0, false))
        } else if self.passed_over + 1 >= FAIR_EVERY {
            Some((oldest, true))
        } else {
            Some((0, true))
        }
    }

    /// Waiters in service order (the fairness rule aside).
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = &W> {
        self.queue.iter()
    }

    /// Waiters in service order, mutably.
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut W> {
        self.queue.iter_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct W(u64, Class);

    impl Queued for W {
        fn id(&self) -> u64 {
            self.0
        }
        fn class(&self) -> Class {
            self.1
        }
    }

    #[test]
    fn class_then_arrival() {
        let mut q = Waiters::default();
        q.push(W(1, Class::Low));
        q.push(W(2, Class::Normal));
        q.push(W(3, Class::High));
        q.push(W(4, Class::High));
        assert_eq!(q.len_of(Class::High), 2);
        let order: Vec<u64> = std::iter::from_fn(|| q.pop().map(|w| w.0)).collect();
        assert_eq!(order, [3, 4, 2, 1]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_flood_of_high_serves_an_older_low_on_the_eighth_grant() {
        let mut q = Waiters::default();
        q.push(W(0, Class::Low));
        let mut served = Vec::new();
        for i in 0..20u64 {
            q.push(W(2 * i + 1, Class::High));
            q.push(W(2 * i + 2, Class::High));
            let next = q.next().map(|w| w.0);
            let popped = q.pop().unwrap();
            assert_eq!(next, Some(popped.0), "next() names what pop() serves");
            served.push(popped);
        }
        let at = served.iter().position(|w| w.1 == Class::Low).unwrap();
        assert_eq!(at + 1, FAIR_EVERY as usize);
        assert_eq!(q.len_of(Class::Low), 0);
    }

    #[test]
    fn remove_and_lookup_keep_the_counts() {
        let mut q = Waiters::default();
        q.push(W(1, Class::Low));
        q.push(W(2, Class::High));
        assert!(q.get_mut(1).is_some());
        assert_eq!(q.remove(1), Some(W(1, Class::Low)));
        assert_eq!(q.remove(1), None);
        assert_eq!(q.len_of(Class::Low), 0);
        assert_eq!(q.len(), 1);
        assert_eq!(q.iter().count(), 1);
    }
}
