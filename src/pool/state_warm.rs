//! The warm floor's transitions: refills, refreshes and probes of idle connections.
//!
//! The floor is the `warm` most recently used idle connections (the back of `idle`). Once armed
//! (the upstream carried a request, or `prewarm`), the pool wants `warm` connections idle or
//! being opened for it; the background task opens what is missing through
//! [`PoolState::start_warm`]. It never takes a slot a request could use: not while a request
//! waits, not a global slot another pool's waiter is starved for, and never by evicting.
//!
//! A floor connection idle for `warm_refresh` is replaced make-before-break
//! ([`PoolState::start_refresh`]) or taken out for a probe ([`PoolState::take_for_probe`]).

use tokio::time::{Duration, Instant};

use super::{After, GlobalCap, Idle, PoolState};
use crate::metrics::CloseReason;
use crate::pool::Poolable;

/// A refresh slot, counted `connecting`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::pool) struct Refresh {
    /// The stale connection to close once the replacement is idle; `None` when it was closed
    /// first because no other slot was free.
    pub(in crate::pool) old: Option<u64>,
}

impl<C: Poolable> PoolState<C> {
    /// The floor applies from now on (a request was carried, or `prewarm`).
    pub(in crate::pool) fn arm_warm(&mut self) {
        self.warm_armed = self.warm > 0;
    }

    /// Floor connections neither idle nor being opened nor out for a probe.
    fn warm_missing(&self) -> usize {
        if !self.warm_armed {
            return 0;
        }
        self.warm
            .saturating_sub(self.idle.len() + self.warming + self.probing)
    }

    /// True when the background task should open a floor connection now: one is missing, no
    /// request waits, and this pool is under its cap.
    pub(in crate::pool) fn wants_warm(&self) -> bool {
        self.warm_missing() > 0 && self.waiters.is_empty() && self.open() < self.cap
    }

    /// Takes a slot for a floor connection, counted `connecting`. False when none is wanted,
    /// or when the only free slots are owed to requests (here or starved in another pool).
    pub(in crate::pool) fn start_warm(&mut self, global: &GlobalCap) -> bool {
        if !self.wants_warm() || global.has_starved() || !global.try_take() {
            return false;
        }
        self.connecting += 1;
        self.warming += 1;
        true
    }

    /// A floor or refresh connection is open: it is checked in like a released one (a
    /// request that queued meanwhile gets it first).
    pub(in crate::pool) fn warm_connected(
        &mut self,
        conn: C,
        id: u64,
        now: Instant,
        global: &GlobalCap,
    ) -> After<C> {
        self.warming -= 1;
        self.connecting -= 1;
        self.active += 1;
        self.checkin(conn, id, now, global)
    }

    /// A floor or refresh slot was given up (the connect failed or the task stopped).
    pub(in crate::pool) fn warm_abandoned(&mut self, global: &GlobalCap) -> After<C> {
        self.warming -= 1;
        self.connect_abandoned(global)
    }

    /// The floor's part of `idle`: its most recently used `warm` entries.
    fn floor_start(&self) -> usize {
        let kept = if self.warm_armed { self.warm } else { 0 };
        self.idle.len().saturating_sub(kept)
    }

    /// The floor connection due soonest for a refresh or probe (not already being refreshed).
    fn stale_position(&self) -> Option<usize> {
        let start = self.floor_start();
        (start..self.idle.len())
            .filter(|&i| !self.idle[i].refreshing)
            .min_by_key(|&i| self.idle[i].since)
    }

    /// When the next floor connection turns stale after `refresh` idle.
    pub(in crate::pool) fn next_stale(&self, refresh: Duration) -> Option<Instant> {
        self.stale_position().map(|i| self.idle[i].since + refresh)
    }

    fn due(&self, now: Instant, refresh: Duration) -> Option<usize> {
        self.stale_position()
            .filter(|&i| self.idle[i].since + refresh <= now)
    }

    /// Starts replacing the stalest floor connection idle for `refresh`: a slot for the new
    /// one, counted `connecting`. Make before break: the old one stays idle (and usable) until
    /// the replacement is ready, unless no slot is free, in which case it is closed now and its
    /// slot is the replacement's.
    pub(in crate::pool) fn start_refresh(
        &mut self,
        now: Instant,
        refresh: Duration,
        global: &GlobalCap,
    ) -> (Option<Refresh>, After<C>) {
        let mut after = After::default();
        let Some(i) = self.due(now, refresh) else {
            return (None, after);
        };
        let old = if self.open() < self.cap && !global.has_starved() && global.try_take() {
            self.idle[i].refreshing = true;
            Some(self.idle[i].id)
        } else {
            let stale = self.idle.remove(i);
            after.close(stale.conn, CloseReason::Refreshed);
            None
        };
        self.connecting += 1;
        self.warming += 1;
        (Some(Refresh { old }), after)
    }

    /// A refresh's replacement is open: it is checked in, and the stale connection it replaces
    /// closes if it is still idle and not used since (a request that took it meanwhile made it
    /// fresh again).
    pub(in crate::pool) fn refresh_connected(
        &mut self,
        conn: C,
        id: u64,
        now: Instant,
        refresh: Refresh,
        global: &GlobalCap,
    ) -> After<C> {
        let mut after = self.warm_connected(conn, id, now, global);
        if let Some(old) = refresh.old {
            let closed = self.close_idle(CloseReason::Refreshed, |idle| {
                idle.id == old && idle.refreshing
            });
            after.closed.extend(closed.closed);
            after.free += closed.free;
        }
        after
    }

    /// A refresh's replacement failed: the stale connection may be refreshed again later.
    pub(in crate::pool) fn refresh_abandoned(
        &mut self,
        refresh: Refresh,
        global: &GlobalCap,
    ) -> After<C> {
        if let Some(old) = refresh.old
            && let Some(idle) = self.idle.iter_mut().find(|idle| idle.id == old)
        {
            idle.refreshing = false;
        }
        self.warm_abandoned(global)
    }

    /// Takes the stalest floor connection idle for `refresh` out for a probe, counted active
    /// and `probing`. One found closed is closed instead (the floor refills it).
    pub(in crate::pool) fn take_for_probe(
        &mut self,
        now: Instant,
        refresh: Duration,
    ) -> (Option<(C, u64)>, After<C>) {
        let mut after = After::default();
        let Some(i) = self.due(now, refresh) else {
            return (None, after);
        };
        let Idle { conn, id, .. } = self.idle.remove(i);
        if let Some(reason) = crate::pool::unusable(&conn) {
            after.close(conn, reason);
            after.free += 1;
            return (None, after);
        }
        self.active += 1;
        self.probing += 1;
        (Some((conn, id)), after)
    }

    /// A probe is over (its connection was released or closed).
    pub(in crate::pool) fn probe_done(&mut self) {
        self.probing -= 1;
    }

    /// Closes idle connections beyond the floor idle since before `now - timeout`. Returns the
    /// earliest time another may expire.
    pub(in crate::pool) fn reap(
        &mut self,
        now: Instant,
        timeout: Duration,
    ) -> (After<C>, Option<Instant>) {
        let mut closable = self.floor_start();
        let after = self.close_idle(CloseReason::IdleTimeout, |idle| {
            let expired = closable > 0 && idle.since + timeout <= now;
            if expired {
                closable -= 1;
            } else {
                // `idle` is ordered by `since`: nothing after this one has expired either.
                closable = 0;
            }
            expired
        });
        let next = (self.floor_start() > 0).then(|| self.idle[0].since + timeout);
        (after, next)
    }

    /// Slots being opened in the background.
    #[cfg(test)]
    pub(in crate::pool) fn warming(&self) -> usize {
        self.warming
    }
}
