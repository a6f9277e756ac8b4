//! The async runtime: which tokio scheduler runs sidepool, and optional busy polling.
//!
//! With one worker thread (`TOKIO_WORKER_THREADS=1`, or a single CPU) sidepool runs tokio's
//! current-thread scheduler, which hands work between tasks without crossing threads; otherwise
//! the multi-thread scheduler with one worker per CPU (or `TOKIO_WORKER_THREADS`).
//!
//! [`BusyPoll`] implements `runtime.busy_poll`: after each request event, the worker threads keep
//! asking the kernel for network events for a short window instead of going to sleep. A sleeping
//! thread must be woken by the kernel when the next packet arrives, and on virtual machines and
//! power-saving CPUs that wake-up costs tens of microseconds per hop; a polling thread sees the
//! packet at once. The price is CPU: each worker burns its core while a window is open. Off by
//! default, like HAProxy's `busy-polling`, which trades CPU for latency in the same way.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use metrics::Gauge;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How many tasks a worker runs between two looks at the kernel's I/O events while tasks are
/// queued (tokio's `event_interval`; its default is 61).
///
/// Under load every request makes two or three tasks ready (client connection, upstream
/// connection). Measured with 64 and 256 kept-alive clients on 2 vCPUs (docs/benchmarks.md,
/// *wake-ups per request*): with 256 instead of 61, a third fewer wake-ups of other processes
/// (the bot, the exchange) per request and about 5% less CPU per request; no change at 16
/// clients, where a burst never reaches 61 tasks. Our reading: the default cuts a burst of
/// answers in two, and its writes reach the other processes in two spread-out halves.
/// Waiting I/O is still seen after at most this many task polls, well under a millisecond.
pub const EVENT_INTERVAL: u32 = 256;

/// Builds the runtime: current-thread with one worker, multi-thread otherwise.
///
/// The worker count is `TOKIO_WORKER_THREADS` when set (tokio's own variable, read here too so
/// that `1` selects the current-thread scheduler), else the number of CPUs available.
pub fn build() -> std::io::Result<tokio::runtime::Runtime> {
    let workers = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from));
    let mut builder = if workers == Some(1) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.event_interval(EVENT_INTERVAL).enable_all().build()
}

/// Keeps the runtime's threads polling for I/O for `window` after the last request event.
///
/// Request handling calls [`BusyPoll::touch`] (a relaxed counter increment and a flag load, so
/// cheap enough for every request); [`BusyPoll::spawn`] starts one spinner task per worker thread.
/// A spinner yields to the scheduler in a loop while its window is open: a yielding task makes
/// tokio poll the kernel with a zero timeout instead of sleeping. When the window closes without
/// new events the spinner sleeps until the next `touch`, and the runtime sleeps as usual.
#[derive(Debug)]
pub struct BusyPoll {
    window: Duration,
    /// Request events so far; a spinner extends its window when this moves.
    events: AtomicU64,
    /// Set while the spinners sleep, so that only the first `touch` after that wakes them.
    asleep: AtomicBool,
    wake: Notify,
    /// How many spinners are in a polling window right now (read by tests).
    polling: AtomicU64,
    /// The highest `events` count a polling spinner has seen (read by tests: a touch whose
    /// count never shows up here was lost).
    observed: AtomicU64,
    /// The same count, exported as `http_pool_busy_poll_threads`.
    gauge: Gauge,
}

impl BusyPoll {
    /// A busy poller with the given window (`runtime.busy_poll`, non-zero), reporting how many
    /// threads poll on `gauge`.
    pub fn new(window: Duration, gauge: Gauge) -> Arc<BusyPoll> {
        Arc::new(BusyPoll {
            window,
            events: AtomicU64::new(0),
            asleep: AtomicBool::new(false),
            wake: Notify::new(),
            polling: AtomicU64::new(0),
            observed: AtomicU64::new(0),
            gauge,
        })
    }

    /// Records a request event: opens (or extends) the polling window.
    pub fn touch(&self) {
        // SeqCst on both sides of the `events`/`asleep` handshake (see `spin`): with weaker
        // orderings each side could miss the other's store and a sleeping spinner would miss
        // this event. On x86 both are the instructions a relaxed version would use anyway.
        self.events.fetch_add(1, Ordering::SeqCst);
        if self.asleep.load(Ordering::SeqCst) && self.asleep.swap(false, Ordering::SeqCst) {
            self.wake.notify_waiters();
        }
    }

    /// How many spinners are polling right now (0 when every window has closed).
    pub fn polling(&self) -> u64 {
        self.polling.load(Ordering::Acquire)
    }

    /// Starts `spinners` spinner tasks on the current runtime (one per worker thread).
    pub fn spawn(self: &Arc<Self>, spinners: usize) -> Vec<JoinHandle<()>> {
        // Counted from here, so an event between spawning and the spinner's first poll counts.
        let seen = self.events.load(Ordering::Acquire);
        (0..spinners.max(1))
            .map(|_| tokio::spawn(self.clone().spin(seen)))
            .collect()
    }

    async fn spin(self: Arc<Self>, mut seen: u64) {
        loop {
            // Sleep until a request event arrives. `asleep` is set before the final check, so a
            // `touch` racing with it either is seen by the check or finds `asleep` and wakes us
            // (we are registered with `wake` before either).
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.asleep.store(true, Ordering::SeqCst);
            let now = self.events.load(Ordering::SeqCst);
            if now == seen {
                // `touch` cleared `asleep` before waking us.
                notified.await;
            }

            // Poll until the window passes with no new event.
            self.polling.fetch_add(1, Ordering::AcqRel);
            self.gauge.increment(1.0);
            let mut deadline = Instant::now() + self.window;
            seen = self.events.load(Ordering::Acquire);
            self.observed.fetch_max(seen, Ordering::AcqRel);
            loop {
                tokio::task::yield_now().await;
                let now = self.events.load(Ordering::Acquire);
                if now != seen {
                    seen = now;
                    self.observed.fetch_max(seen, Ordering::AcqRel);
                    deadline = Instant::now() + self.window;
                } else if Instant::now() >= deadline {
                    break;
                }
            }
            self.polling.fetch_sub(1, Ordering::AcqRel);
            self.gauge.decrement(1.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lets the spinner run a few scheduler rounds.
    async fn rounds(n: usize) {
        for _ in 0..n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn polls_for_the_window_after_each_event_then_sleeps() {
        let busy = BusyPoll::new(Duration::from_millis(10), Gauge::noop());
        let spinners = busy.spawn(1);
        rounds(5).await;
        assert_eq!(busy.polling(), 0, "no event yet: the spinner sleeps");

        busy.touch();
        rounds(5).await;
        assert_eq!(busy.polling(), 1, "an event opens a polling window");

        tokio::time::advance(Duration::from_millis(6)).await;
        busy.touch();
        rounds(5).await;
        tokio::time::advance(Duration::from_millis(6)).await;
        rounds(5).await;
        assert_eq!(busy.polling(), 1, "a second event extends the window");

        tokio::time::advance(Duration::from_millis(5)).await;
        rounds(5).await;
        assert_eq!(
            busy.polling(),
            0,
            "the window closed 10 ms after the last event"
        );

        busy.touch();
        rounds(5).await;
        assert_eq!(
            busy.polling(),
            1,
            "a sleeping spinner wakes on the next event"
        );
        for s in spinners {
            s.abort();
        }
    }

    /// Touches racing with a spinner going to sleep, from another thread, many times over: a
    /// lost wake-up would leave the spinner asleep after a touch and fail the bounded wait.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_touch_is_lost_while_a_spinner_goes_to_sleep() {
        let busy = BusyPoll::new(Duration::from_micros(200), Gauge::noop());
        let spinners = busy.spawn(1);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        for round in 0..300 {
            // Touch right around the moment the window closes, at varying offsets.
            while busy.polling() != 0 && round % 3 != 0 {
                assert!(std::time::Instant::now() < deadline, "window never closed");
                tokio::task::yield_now().await;
            }
            busy.touch();
            let count = busy.events.load(Ordering::SeqCst);
            let woken = std::time::Instant::now();
            // A polling spinner saw this touch (its window may already have closed again).
            while busy.observed.load(Ordering::Acquire) < count {
                assert!(
                    woken.elapsed() < Duration::from_secs(5),
                    "round {round}: a touch was lost"
                );
                tokio::task::yield_now().await;
            }
        }
        for s in spinners {
            s.abort();
        }
    }

    /// Waits (bounded, on observable state) until `want` spinners poll.
    async fn wait_polling(busy: &BusyPoll, want: u64, what: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while busy.polling() != want {
            assert!(std::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_spinner_sleeps_when_idle_and_all_wake_on_one_event() {
        let busy = BusyPoll::new(Duration::from_millis(50), Gauge::noop());
        let spinners = busy.spawn(2);
        busy.touch();
        wait_polling(&busy, 2, "both spinners poll").await;
        wait_polling(&busy, 0, "both windows close").await;
        busy.touch();
        wait_polling(&busy, 2, "one event wakes both").await;
        for s in spinners {
            s.abort();
        }
    }
}
