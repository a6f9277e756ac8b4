//! The idle reaper: closes connections idle past their upstream's `idle_timeout`.
//!
//! It holds only `Weak` references, so it ends by itself when the pools are dropped.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::{PoolSet, Poolable};

/// The longest the reaper sleeps, so a pool that gains idle connections after a quiet spell is
/// looked at again within this bound even when no earlier expiry is known.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Spawns the reaper. Each idle connection is closed within `idle_timeout` plus the smaller of
/// one eighth of the smallest `idle_timeout` and one second, so gauges fall back promptly
/// without the reaper waking on every request.
pub fn spawn_reaper<C: Poolable>(pools: &Arc<PoolSet<C>>) -> tokio::task::JoinHandle<()> {
    let weak: Weak<PoolSet<C>> = Arc::downgrade(pools);
    let tick = pools
        .pools()
        .iter()
        .map(|pool| pool.limits().idle_timeout / 8)
        .min()
        .unwrap_or(MAX_SLEEP)
        .clamp(Duration::from_millis(5), MAX_SLEEP);
    tokio::spawn(async move {
        loop {
            let Some(pools) = weak.upgrade() else { return };
            let now = Instant::now();
            let next = pools.pools().iter().filter_map(|pool| pool.reap(now)).min();
            drop(pools);
            // Wake at the next known expiry, but at least every `tick`, since a connection
            // that goes idle later expires later than any known deadline plus `tick`.
            let wake = next.map_or(now + tick, |at| at.min(now + tick).max(now));
            tokio::time::sleep_until(wake).await;
        }
    })
}
