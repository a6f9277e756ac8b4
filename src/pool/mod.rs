//! The connection pool: per-upstream caps, the global cap, the wait queue, the idle set,
//! reaping, and the pool gauges (rendered from pool state, so nothing else can set them).
//!
//! Knows nothing of HTTP, DNS or TLS: a pooled connection is any [`Poolable`]. The proxy asks
//! [`Pool::checkout`] for a connection and gets a guard back whose existence *is* the state:
//!
//! - [`Connecting`]: a slot held while the caller dials (counts toward both caps);
//! - [`Pooled`]: a connection carrying a request (active); released, it goes back to idle or
//!   to the oldest waiter; dropped unreleased, it is closed and its slot is freed;
//! - a waiter (inside [`Pool::checkout`]) that leaves the queue when its future is dropped.
//!
//! Waiters are served by class (`high`, `normal`, `low`), then arrival, within a pool (with
//! an anti-starvation rule, `waiters`), and in arrival order across pools
//! when the global cap is what blocks them: a slot freed in one pool goes to an older waiter
//! of another pool that is starved by the global cap before this pool's own younger waiters,
//! so one busy upstream cannot starve the others.
//!
//! Layout, by role:
//! - `state`: one upstream's counts, idle list and queue, and every transition of them; no
//!   `Arc`, no metrics. Transitions return what must happen after the unlock.
//! - `global`: the global cap and the queue of waiters it starves.
//! - `waiters`: one upstream's queue in service order.
//! - `upstream`: [`Pool`], the lock around a state and the after-unlock work.
//! - `set`: [`PoolSet`], what the pools share: the hand-out of freed global slots to starved
//!   waiters, eviction across pools, and the gauge snapshot a scrape takes.
//! - `guard`: the guards; `reaper`: the idle reaper.
//! - `warm` (and `state_warm`): the warm floor, refreshes and probes, for the background task
//!   in `proxy::warm`, which opens the connections.
//!
//! # Locks
//! Every state change happens under the upstream's own mutex, which is never held across an
//! `.await`. The order is "one upstream, then the starved queue". While holding its own lock,
//! a pool only `try_lock`s another (eviction) and skips it when contended. Another pool's lock
//! is waited for only with no lock held (handing a freed global slot to a starved waiter), and
//! by a scrape, which takes every pool's lock in index order and holds them together for one
//! consistent snapshot; since nobody else waits for a second pool lock, this cannot deadlock.

mod global;
mod guard;
mod reaper;
mod set;
mod state;
mod upstream;
mod waiters;
mod warm;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

pub use guard::{Acquired, Connecting, Pooled};
pub use reaper::spawn_reaper;
pub use set::PoolSet;
pub use upstream::Pool;
pub use warm::Probe;

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

/// Why `conn` can carry no further request, if so: closed by the peer, or retired (its address
/// left the DNS answer). Checked in this order wherever a connection could be reused.
fn unusable<C: Poolable>(conn: &C) -> Option<crate::metrics::CloseReason> {
    use crate::metrics::CloseReason;
    if conn.is_closed() {
        Some(CloseReason::UpstreamClosed)
    } else if conn.is_retired() {
        Some(CloseReason::DnsChanged)
    } else {
        None
    }
}

/// Which connections a checkout accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// A kept-alive idle one, or a new one.
    Any,
    /// Only a new connection (a re-send must not land on a reused one).
    NewOnly,
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
    /// Idle connections kept ready once the pool has carried a request (0: off).
    pub warm_connections: usize,
    /// A warm connection idle this long is refreshed or probed.
    pub warm_refresh: Duration,
}

/// Snapshot of one pool's counts (the numbers its gauges show).
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

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod stress;
#[cfg(test)]
mod tests;
