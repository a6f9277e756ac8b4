//! Guards whose existence is a pool state. Each does its bookkeeping exactly once, in `Drop`
//! unless consumed first, so a request cancelled at any `.await` leaves the counts exact.

use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::state::{Grant, Refresh};
use super::{Pool, Poolable};
use crate::metrics::CloseReason;

/// The outcome of a checkout.
pub enum Acquired<C: Poolable> {
    /// A kept-alive connection that served requests before (already active).
    Reused(Pooled<C>),
    /// A reserved slot: the caller opens the connection.
    Connect(Connecting<C>),
}

/// A reserved slot while a connection is being opened (the `connecting` state). Dropped
/// without [`Connecting::established`], the slot goes to the next waiter or back to the caps.
pub struct Connecting<C: Poolable> {
    pool: Option<Arc<Pool<C>>>,
    id: u64,
    kind: SlotKind,
}

/// Whom a slot is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotKind {
    /// A request, which carries on the connection once it is open.
    Request,
    /// The warm floor: the connection goes to idle.
    Warm,
    /// A refresh of a stale warm connection: the new one goes to idle, the old one closes.
    Refresh(Refresh),
}

impl<C: Poolable> Connecting<C> {
    pub(super) fn new(pool: Arc<Pool<C>>, id: u64, kind: SlotKind) -> Self {
        Connecting {
            pool: Some(pool),
            id,
            kind,
        }
    }

    /// The id the connection will have in the pool (for [`Pool::connection_lost`]).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The pool this slot belongs to.
    pub fn pool(&self) -> &Arc<Pool<C>> {
        self.pool
            .as_ref()
            .expect("the pool is only taken by established() or drop")
    }

    /// The connection is open: it becomes active.
    pub fn established(mut self, conn: C) -> Pooled<C> {
        debug_assert_eq!(self.kind, SlotKind::Request, "a warm slot goes to idle");
        let pool = self.pool.take().expect("established() consumes the guard");
        pool.connected();
        Pooled::new(pool, conn, self.id, false)
    }

    /// A warm connection is open: it goes to idle (or to a request that queued meanwhile).
    pub fn established_idle(mut self, conn: C) {
        let pool = self
            .pool
            .take()
            .expect("established_idle() consumes the guard");
        pool.warm_established(conn, self.id, self.kind);
    }
}

impl<C: Poolable> Drop for Connecting<C> {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            match self.kind {
                SlotKind::Request => pool.connect_abandoned(),
                kind => pool.warm_abandoned(kind),
            }
        }
    }
}

/// A connection carrying a request (the `active` state).
///
/// Dropped, it is closed unless [`Pooled::release`] said it may be reused: a connection whose
/// response was not read to the end must never serve another request.
pub struct Pooled<C: Poolable> {
    pool: Arc<Pool<C>>,
    conn: Option<C>,
    id: u64,
    reused: bool,
    close_reason: CloseReason,
}

impl<C: Poolable> Pooled<C> {
    pub(super) fn new(pool: Arc<Pool<C>>, conn: C, id: u64, reused: bool) -> Self {
        Pooled {
            pool,
            conn: Some(conn),
            id,
            reused,
            close_reason: CloseReason::Incomplete,
        }
    }

    /// The connection.
    pub fn conn(&mut self) -> &mut C {
        self.conn
            .as_mut()
            .expect("the connection is only taken by release() or drop")
    }

    /// True when the connection served a request before this one.
    pub fn is_reused(&self) -> bool {
        self.reused
    }

    /// The connection's id in its pool.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The pool this connection belongs to.
    pub fn pool(&self) -> &Arc<Pool<C>> {
        &self.pool
    }

    /// Records why the connection will be closed when this guard drops.
    pub fn set_close_reason(&mut self, reason: CloseReason) {
        self.close_reason = reason;
    }

    /// The exchange on this connection is complete: reuse it unless it has closed.
    pub fn release(self) {
        self.release_at(Instant::now());
    }

    /// [`Pooled::release`] at `now`, a clock reading the caller already has (idle time counts
    /// from it).
    pub fn release_at(mut self, now: Instant) {
        if let Some(conn) = self.conn.take() {
            match super::unusable(&conn) {
                Some(reason) => {
                    drop(conn);
                    self.pool.close_active(reason);
                }
                None => self.pool.checkin(conn, self.id, now),
            }
        }
    }
}

impl<C: Poolable> Drop for Pooled<C> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Close the connection before the slot is handed on.
            drop(conn);
            self.pool.close_active(self.close_reason);
        }
    }
}

/// A place in the queue. Dropped while queued (timeout, client gone), it leaves the queue;
/// dropped after a grant raced its departure, it gives the grant back.
pub(super) struct Waiter<C: Poolable> {
    pool: Arc<Pool<C>>,
    id: u64,
    rx: oneshot::Receiver<Grant<C>>,
    done: bool,
}

impl<C: Poolable> Waiter<C> {
    pub(super) fn new(pool: Arc<Pool<C>>, id: u64, rx: oneshot::Receiver<Grant<C>>) -> Self {
        Waiter {
            pool,
            id,
            rx,
            done: false,
        }
    }

    /// Waits for a connection or a slot; `None` if the pool went away.
    pub(super) async fn granted(&mut self) -> Option<Grant<C>> {
        let grant = (&mut self.rx).await.ok();
        self.done = true;
        grant
    }
}

impl<C: Poolable> Drop for Waiter<C> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let rx = &mut self.rx;
        self.pool.waiter_dropped(self.id, || rx.try_recv().ok());
    }
}
