//! The pool's side of the warm floor: what the background task (`proxy::warm`) asks for, and
//! the guards it gets back. The task opens connections; the pool decides when one is wanted,
//! so the floor can never take a slot a request could use and the gauges stay exact (a warm
//! connection being opened is `connecting`, a ready one `idle`, one out for a probe `active`).

use std::sync::Arc;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::guard::SlotKind;
use super::{Connecting, Pool, Poolable};
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

    /// Whether the floor misses a connection that [`Pool::warm_slot`] would open now.
    pub fn warm_missing(&self) -> bool {
        self.lock().wants_warm()
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
            conn: Some(conn),
            id,
            pool: self.clone(),
            close_reason: CloseReason::Error,
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

    /// A probe is over: its connection comes back (`Some`, answered) or was closed (`None`,
    /// already dropped, for `reason`). One transition, so the floor's count and the
    /// connection's move are never seen apart.
    fn probe_done(&self, back: Option<(C, u64)>, reason: CloseReason) {
        let now = Instant::now();
        let mut state = self.lock();
        state.probe_done();
        let after = match back {
            Some((conn, id)) => match super::unusable(&conn) {
                None => state.checkin(conn, id, now, &self.shared.cap),
                Some(reason) => {
                    drop(conn);
                    self.metrics.connection_closed(reason);
                    state.active_closed(&self.shared.cap)
                }
            },
            None => {
                self.metrics.connection_closed(reason);
                state.active_closed(&self.shared.cap)
            }
        };
        self.finish(state, after);
    }
}

/// A floor connection out for a `warm_probe` GET (counted active). Released, it goes back to
/// idle as just used; dropped, it is closed and the floor refills.
pub struct Probe<C: Poolable> {
    conn: Option<C>,
    id: u64,
    pool: Arc<Pool<C>>,
    close_reason: CloseReason,
}

impl<C: Poolable> Probe<C> {
    /// The connection.
    pub fn conn(&mut self) -> &mut C {
        self.conn.as_mut().expect("taken only by release() or drop")
    }

    /// The probe was answered in full: the connection is idle again.
    pub fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool
                .probe_done(Some((conn, self.id)), self.close_reason);
        }
    }

    /// Records why the connection will be closed when this guard drops.
    pub fn set_close_reason(&mut self, reason: CloseReason) {
        self.close_reason = reason;
    }
}

impl<C: Poolable> Drop for Probe<C> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Closed before its slot is handed on.
            drop(conn);
            self.pool.probe_done(None, self.close_reason);
        }
    }
}
