//! [`eventually`]: poll a condition until it holds, for a bounded time, and fail the test with
//! what was last seen when it never does.
//!
//! For state that changes without an event a test could await: gauges that connection tasks
//! and the reaper update, a process's exit, a cache entry that expires. Where an event exists
//! (the upstream's `wait_*`), wait for it instead.

use std::fmt::Debug;
use std::time::Duration;

use tokio::time::Instant;

use super::harness::PATIENCE;

/// How often [`eventually`] looks again: short against the changes it waits for (a scrape, a
/// task wake-up), long enough not to busy the 2 cores CI has.
const EVERY: Duration = Duration::from_millis(10);

/// Calls `check` every 10 ms until it returns `Ok`, and returns that value.
///
/// `check` returns `Err(seen)` with what it saw while the condition does not hold yet.
///
/// # Panics
/// After [`PATIENCE`] (10 s), with `what` and the last `seen`.
pub async fn eventually<T, E: Debug>(what: &str, check: impl AsyncFnMut() -> Result<T, E>) -> T {
    eventually_within(PATIENCE, EVERY, what, check).await
}

/// [`eventually`] with its own time limit and polling interval: for a condition that cannot
/// hold sooner than a known time (an expiry), or a check that is costly (a large scrape).
///
/// # Panics
/// After `within`, with `what` and the last `seen`.
pub async fn eventually_within<T, E: Debug>(
    within: Duration,
    every: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let started = Instant::now();
    let deadline = started + within;
    loop {
        let seen = match check().await {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        assert!(
            Instant::now() < deadline,
            "{what}: still not so after {:?}; last seen: {seen:?}",
            started.elapsed()
        );
        tokio::time::sleep(every).await;
    }
}

/// Text shown as it is in [`eventually`]'s failure message (a log, a scrape), not escaped on
/// one line as `Debug` would show a `String`.
pub struct Text(pub String);

impl Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\n{}", self.0)
    }
}
