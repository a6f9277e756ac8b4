//! The pool's side of the warm floor: what the background task (`proxy::warm`) asks for, and
//! the guards it gets back. The task opens connections; the pool decides when one is wanted,
//! so the floor can never take a slot a request could use and the gauges stay exact (a warm
//! connection being opened is `connecting`, a ready one `idle`, one out for a probe `active`).

use std::sync::Arc;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::guard::SlotKind;
use super::{Connecting, Pool, Poolable, Pooled};
use crate::metrics::CloseReason;

impl<C: Poolable> Pool<C> {
    /// Starts the floor before any request (`prewarm`).
    pub fn arm_warm(&self) {
        let mut state = self.lock();
        state.arm_warm();
        self.finish(state, Default::default());
    }

    /// Notified whenever the floor misses a connection (a permit is kept if nobody waits).
    pub fn warm_wanted(&self) -> &Notify {
        &self.warm_wanted
    }

    /// A slot to open a floor connection in, when one is missing and no request could use the
    /// slot. Dropped unused, the slot is freed.
    pub fn warm_slot(self: &Arc<Self>) -> Option<Connecting<C>> {
        let mut state = self.lock();
        let taken = state.start_warm(&self.shared.cap);
        state.debug_check();
        drop(state);
        taken.then(|| Connecting::new(self.clone(), self.next_id(), SlotKind::Warm))
    }

    /// A slot to open the replacement of a floor connection idle for `warm_refresh` at `now`.
    pub fn refresh_slot(self: &Arc<Self>, now: Instant) -> Option<Connecting<C>> {
        let mut state = self.lock();
        let (refresh, after) = state.start_refresh(now, self.limits.warm_refresh, &self.shared.cap);
        self.finish(state, after);
        refresh.map(|refresh| {
            Connecting::new(self.clone(), self.next_id(), SlotKind::Refresh(refresh))
        })
    }

    /// A floor connection idle for `warm_refresh` at `now`, taken out (active) for a probe.
    pub fn probe_checkout(self: &Arc<Self>, now: Instant) -> Option<Probe<C>> {
        let mut state = self.lock();
        let (taken, after) = state.take_for_probe(now, self.limits.warm_refresh);
        self.finish(state, after);
        let (conn, id) = taken?;
        Some(Probe {
            pooled: Some(Pooled::new(self.clone(), conn, id, true)),
            pool: self.clone(),
        })
    }

    /// When the next floor connection is due for a refresh or probe.
    pub fn next_refresh(&self) -> Option<Instant> {
        self.lock().next_stale(self.limits.warm_refresh)
    }

    /// A warm slot's connection is open.
    pub(super) fn warm_established(&self, conn: C, id: u64, kind: SlotKind) {
        let now = Instant::now();
        let mut state = self.lock();
        let after = match kind {
            SlotKind::Refresh(refresh) => {
                state.refresh_connected(conn, id, now, refresh, &self.shared.cap)
            }
            SlotKind::Warm | SlotKind::Request => {
                state.warm_connected(conn, id, now, &self.shared.cap)
            }
        };
        self.finish(state, after);
    }

    /// A warm slot was given up.
    pub(super) fn warm_abandoned(&self, kind: SlotKind) {
        let mut state = self.lock();
        let after = match kind {
            SlotKind::Refresh(refresh) => state.refresh_abandoned(refresh, &self.shared.cap),
            SlotKind::Warm | SlotKind::Request => state.warm_abandoned(&self.shared.cap),
        };
        self.finish(state, after);
    }

    fn probe_done(&self) {
        let mut state = self.lock();
        state.probe_done();
        self.finish(state, Default::default());
    }
}

/// A floor connection out for a `warm_probe` GET (counted active). Released, it goes back to
/// idle as just used; dropped, it is closed and the floor refills.
pub struct Probe<C: Poolable> {
    pooled: Option<Pooled<C>>,
    pool: Arc<Pool<C>>,
}

impl<C: Poolable> Probe<C> {
    /// The connection.
    pub fn conn(&mut self) -> &mut C {
        self.pooled
            .as_mut()
            .expect("taken only by release() or drop")
            .conn()
    }

    /// The probe was answered in full: the connection is idle again.
    pub fn release(mut self) {
        if let Some(pooled) = self.pooled.take() {
            pooled.release();
        }
    }

    /// Records why the connection will be closed when this guard drops.
    pub fn set_close_reason(&mut self, reason: CloseReason) {
        if let Some(pooled) = self.pooled.as_mut() {
            pooled.set_close_reason(reason);
        }
    }
}

impl<C: Poolable> Drop for Probe<C> {
    fn drop(&mut self) {
        // The connection first (back to idle, or closed), then the count that held the floor.
        drop(self.pooled.take());
        self.pool.probe_done();
    }
}
