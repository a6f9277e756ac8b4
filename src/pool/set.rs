//! All upstream pools and what they share: the global cap, the hand-out of freed global slots
//! to starved waiters, eviction across pools, and the scrape-time snapshot of the gauges.

use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::time::Instant;

use super::global::GlobalCap;
use super::state::PoolState;
use super::{Pool, PoolCounts, PoolLimits, Poolable};
use crate::metrics::{CloseReason, PoolGaugeSource, UpstreamMetrics};

/// All upstream pools plus the global cap they share.
pub struct PoolSet<C: Poolable> {
    pub(super) shared: Arc<Shared<C>>,
    pools: Vec<Arc<Pool<C>>>,
}

impl<C: Poolable> PoolSet<C> {
    /// One pool per `(name, limits, metrics)`, sharing a cap of `max_connections` in total.
    /// The pools' gauges are rendered from their state at each scrape of those metrics.
    pub fn new(
        max_connections: usize,
        upstreams: impl IntoIterator<Item = (Arc<str>, PoolLimits, UpstreamMetrics)>,
    ) -> PoolSet<C> {
        let shared = Arc::new(Shared {
            cap: GlobalCap::new(max_connections),
            pools: OnceLock::new(),
        });
        let pools: Vec<Arc<Pool<C>>> = upstreams
            .into_iter()
            .enumerate()
            .map(|(index, (name, limits, metrics))| {
                Arc::new(Pool {
                    state: Mutex::new(PoolState::new(
                        index,
                        limits.max_connections,
                        limits.max_waiting,
                        limits.warm_connections,
                    )),
                    warm_wanted: Default::default(),
                    name,
                    limits,
                    metrics,
                    shared: shared.clone(),
                    next_id: Default::default(),
                })
            })
            .collect();
        let weak = pools.iter().map(Arc::downgrade).collect();
        let _ = shared.pools.set(weak);
        let source: Weak<dyn PoolGaugeSource> = Arc::downgrade(&shared) as _;
        for pool in &pools {
            pool.metrics.attach_pool_gauges(&source);
        }
        PoolSet { shared, pools }
    }

    /// The pools, in the order they were given.
    pub fn pools(&self) -> &[Arc<Pool<C>>] {
        &self.pools
    }

    /// Connections open (or being opened) over all upstreams; never above the global cap.
    pub fn open_total(&self) -> usize {
        self.shared.cap.open()
    }

    /// Closes every idle connection now (shutdown).
    pub fn close_idle(&self) {
        for pool in &self.pools {
            pool.close_idle(CloseReason::Shutdown, |_| true);
        }
    }

    #[cfg(test)]
    pub(super) fn global(&self) -> &GlobalCap {
        &self.shared.cap
    }
}

/// What the pools of one set share.
pub(super) struct Shared<C: Poolable> {
    pub(super) cap: GlobalCap,
    pools: OnceLock<Vec<Weak<Pool<C>>>>,
}

impl<C: Poolable> Shared<C> {
    fn pools(&self) -> impl Iterator<Item = (usize, Arc<Pool<C>>)> + '_ {
        self.pools
            .get()
            .into_iter()
            .flatten()
            .enumerate()
            .filter_map(|(index, weak)| weak.upgrade().map(|pool| (index, pool)))
    }

    /// Frees `slots` global slots, offering each to the oldest starved waiter. Called with no
    /// pool lock held.
    pub(super) fn free(&self, slots: usize) {
        for _ in 0..slots {
            self.cap.free();
            self.hand_out_free_slots();
        }
    }

    /// Gives free global slots to starved waiters, oldest first. Called with no pool lock
    /// held: it locks each waiter's pool in turn.
    pub(super) fn hand_out_free_slots(&self) {
        while self.cap.has_starved() {
            if !self.cap.try_take() {
                return;
            }
            if !self.grant_taken_slot() {
                self.cap.free();
                return;
            }
        }
    }

    /// Gives one already taken slot to the oldest starved waiter that can still use it.
    fn grant_taken_slot(&self) -> bool {
        let Some(pools) = self.pools.get() else {
            return false;
        };
        while let Some((index, waiter)) = self.cap.pop_oldest() {
            if let Some(pool) = pools.get(index).and_then(Weak::upgrade)
                && pool.grant_to_starved(waiter)
            {
                return true;
            }
        }
        false
    }

    /// Closes the least recently used idle connection of another pool and keeps its global
    /// slot for the caller. The caller holds its own pool's lock, so other pools are only
    /// `try_lock`ed and skipped when contended: the choice across pools is best effort, the
    /// caps and counts do not depend on it.
    pub(super) fn evict_idle_elsewhere(&self, except: usize) -> bool {
        let mut oldest: Option<(Instant, Arc<Pool<C>>)> = None;
        for (index, pool) in self.pools() {
            if index == except {
                continue;
            }
            let Ok(state) = pool.state.try_lock() else {
                continue;
            };
            if let Some(first) = state.idle().first()
                && oldest
                    .as_ref()
                    .is_none_or(|(since, _)| first.since < *since)
            {
                let since = first.since;
                drop(state);
                oldest = Some((since, pool));
            }
        }
        let Some((_, pool)) = oldest else {
            return false;
        };
        let Ok(mut state) = pool.state.try_lock() else {
            return false;
        };
        let Some(after) = state.evict_lru() else {
            return false;
        };
        // Its slot stays taken (for the caller), so nothing is freed or handed out here.
        pool.finish(state, after);
        true
    }
}

impl<C: Poolable> PoolGaugeSource for Shared<C> {
    /// Every pool's counts, read with all pools' locks held at once: the cut is consistent,
    /// so each pool is within its cap and, since a pool's count only rises with a global
    /// slot it holds, the sum is within the global cap. Locks are taken in index order, and
    /// nothing else waits for a second pool lock (eviction only `try_lock`s), so this cannot
    /// deadlock.
    fn snapshot(&self, out: &mut Vec<(Arc<str>, PoolCounts)>) {
        let pools: Vec<Arc<Pool<C>>> = self.pools().map(|(_, pool)| pool).collect();
        let states: Vec<_> = pools.iter().map(|pool| pool.lock()).collect();
        out.extend(
            pools
                .iter()
                .zip(&states)
                .map(|(pool, state)| (pool.name.clone(), state.counts())),
        );
    }
}
