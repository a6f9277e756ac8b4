//! Where budgets, cooldowns and holds live. The guard makes one [`Store::decide`] call per
//! decision and one [`Store::record`] per signal, with durations rather than instants, so a
//! shared store can take time from its own server clock and do each call as one atomic
//! server-side step (a Redis Lua script), lease budget slices locally, and fall back to a
//! local share when it is down, all behind this trait and without changing the guard.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::WallMs;

/// One decision asked of the store.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The upstream's key (the `[rate_limit] key` and upstream name).
    pub upstream: &'a str,
    /// The endpoint's key (method + path).
    pub endpoint: &'a str,
    /// Weight to spend, with the budget's window length and effective limit, when there is one.
    pub spend: Option<(u32, u64, u32)>,
}

/// The store's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Spent (if asked) in this window index.
    Go {
        /// The budget window the weight was counted in.
        window: Option<u64>,
    },
    /// The upstream cools down for this long still.
    Cooldown(Duration),
    /// The endpoint is held for this long still.
    Held(Duration),
    /// The budget's window is full; the next one starts in this long.
    Full(Duration),
}

/// A change to record after an answer.
#[derive(Debug, Clone, Copy)]
pub enum Record<'a> {
    /// Cool the upstream down for at least this long from now.
    Cooldown(&'a str, Duration),
    /// Hold the endpoint for at least this long from now.
    Hold(&'a str, &'a str, Duration),
    /// The exchange counts `used` in `window` (of `window_ms`): raise the local count to it.
    Used(&'a str, u64, u64, u64),
}

/// Budget and cooldown state.
pub trait Store: Send + Sync + 'static {
    /// Checks cooldown, then hold, then spends the weight: one atomic step.
    fn decide(&self, ask: Ask<'_>) -> impl Future<Output = Answer> + Send;
    /// [`Store::decide`] without waiting, when this store can answer from local state (the
    /// request path's fast lane); `None` sends the caller to [`Store::decide`].
    fn decide_local(&self, _ask: Ask<'_>) -> Option<Answer> {
        None
    }
    /// The cooldown of `upstream`, else the hold of `endpoint`, still in force: checked again
    /// once a request has its connection, so one admitted before a cooldown started is not
    /// sent into it. Spends nothing; a shared store answers from its local view.
    fn blocked(&self, upstream: &str, endpoint: &str) -> Option<Answer>;
    /// True when no cooldown or hold is in force for any upstream, so a request that spends
    /// no budget needs no lookup (the request path's common case). May say `false` when it
    /// could say `true`, never the reverse.
    fn quiet(&self) -> bool {
        false
    }
    /// Cooldown left for `upstream` (the cooldown gauge).
    fn cooldown_left(&self, upstream: &str) -> Duration;
    /// Weight counted in the current window of `upstream` (the budget gauge).
    fn used(&self, upstream: &str, window_ms: u64) -> u64;
    /// Records what an answer said. Synchronous: the request path applies it before the
    /// answer reaches the bot, so the bot's next request already sees it; a shared store
    /// applies it to its local view at once and sends it on in the background.
    /// True when the change started a cooldown or hold, or lengthened one by a second or
    /// more (the guard logs those, once per cooldown rather than once per answer).
    fn record(&self, change: Record<'_>) -> bool;
}

/// Wall-clock source (injectable for tests).
pub type WallClock = Arc<dyn Fn() -> WallMs + Send + Sync>;

/// The system wall clock in epoch milliseconds.
pub fn system_wall_clock() -> WallClock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    })
}

#[derive(Default)]
struct State {
    cooldowns: HashMap<String, WallMs>,
    holds: HashMap<(String, String), WallMs>,
    /// upstream -> (window index, used)
    used: HashMap<String, (u64, u64)>,
}

impl State {
    fn blocked(&self, upstream: &str, endpoint: &str, now: WallMs) -> Option<Answer> {
        if let Some(&until) = self.cooldowns.get(upstream).filter(|u| **u > now) {
            return Some(Answer::Cooldown(Duration::from_millis(until - now)));
        }
        if self.holds.is_empty() {
            return None;
        }
        let hold = (upstream.to_owned(), endpoint.to_owned());
        let until = *self.holds.get(&hold).filter(|u| **u > now)?;
        Some(Answer::Held(Duration::from_millis(until - now)))
    }
}

/// The in-memory store of one sidecar.
pub struct MemoryStore {
    clock: WallClock,
    state: Mutex<State>,
    /// The latest end of any cooldown or hold recorded (wall ms): before it, lookups are
    /// needed; after it, nothing is in force.
    blocks_until: AtomicU64,
}

impl MemoryStore {
    /// A store reading time from `clock`.
    pub fn new(clock: WallClock) -> MemoryStore {
        MemoryStore {
            clock,
            state: Mutex::new(State::default()),
            blocks_until: AtomicU64::new(0),
        }
    }

    fn decide_now(&self, ask: Ask<'_>) -> Answer {
        let now = (self.clock)();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(blocked) = s.blocked(ask.upstream, ask.endpoint, now) {
            return blocked;
        }
        let Some((weight, window_ms, limit)) = ask.spend else {
            return Answer::Go { window: None };
        };
        let window = now / window_ms;
        if !s.used.contains_key(ask.upstream) {
            s.used.insert(ask.upstream.to_owned(), (window, 0));
        }
        let entry = s.used.get_mut(ask.upstream).expect("inserted above");
        if entry.0 != window {
            *entry = (window, 0);
        }
        // A request heavier than the whole budget goes alone into an empty window.
        if entry.1 + u64::from(weight) > u64::from(limit) && entry.1 > 0 {
            return Answer::Full(Duration::from_millis((window + 1) * window_ms - now));
        }
        entry.1 += u64::from(weight);
        Answer::Go {
            window: Some(window),
        }
    }

    fn record_now(&self, change: Record<'_>) -> bool {
        let now = (self.clock)();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let later = |d: Duration| now.saturating_add(d.as_millis() as u64);
        // A block in force is never shortened; the answer is news when it ends a second later.
        let extend = |until: &mut WallMs, to: WallMs| {
            let news = to > now && (*until <= now || to >= *until + 1000);
            *until = (*until).max(to);
            news
        };
        match change {
            Record::Cooldown(up, d) => {
                self.blocks_until.fetch_max(later(d), Ordering::Relaxed);
                let until = s.cooldowns.entry(up.to_owned()).or_insert(0);
                extend(until, later(d))
            }
            Record::Hold(up, ep, d) => {
                self.blocks_until.fetch_max(later(d), Ordering::Relaxed);
                let until = s.holds.entry((up.to_owned(), ep.to_owned())).or_insert(0);
                extend(until, later(d))
            }
            Record::Used(up, window, window_ms, used) => {
                // Only while that window is still the current one; never lowered, because
                // answers to requests still in flight would let the guard overspend.
                if now / window_ms == window {
                    let entry = s.used.entry(up.to_owned()).or_insert((window, 0));
                    if entry.0 == window {
                        entry.1 = entry.1.max(used);
                    }
                }
                false
            }
        }
    }
}

impl Store for MemoryStore {
    fn quiet(&self) -> bool {
        (self.clock)() >= self.blocks_until.load(Ordering::Relaxed)
    }

    fn blocked(&self, upstream: &str, endpoint: &str) -> Option<Answer> {
        let now = (self.clock)();
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.blocked(upstream, endpoint, now)
    }

    /// Weight counted in the current window of `upstream` (for the budget-used gauge).
    fn used(&self, upstream: &str, window_ms: u64) -> u64 {
        let now = (self.clock)();
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.used
            .get(upstream)
            .filter(|(w, _)| *w == now / window_ms)
            .map_or(0, |(_, u)| *u)
    }

    /// Cooldown left for `upstream` (for the cooldown-seconds gauge).
    fn cooldown_left(&self, upstream: &str) -> Duration {
        let now = (self.clock)();
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.cooldowns.get(upstream).map_or(Duration::ZERO, |u| {
            Duration::from_millis(u.saturating_sub(now))
        })
    }

    fn decide(&self, ask: Ask<'_>) -> impl Future<Output = Answer> + Send {
        std::future::ready(self.decide_now(ask))
    }

    fn decide_local(&self, ask: Ask<'_>) -> Option<Answer> {
        Some(self.decide_now(ask))
    }

    fn record(&self, change: Record<'_>) -> bool {
        self.record_now(change)
    }
}

/// The store a sidecar runs with: its own memory, or Redis shared with other sidecars.
pub enum AnyStore {
    /// `[rate_limit] store = "memory"`.
    Memory(MemoryStore),
    /// `[rate_limit] store = "redis://..."`.
    Redis(Arc<super::redis_store::RedisStore>),
}

impl Store for AnyStore {
    async fn decide(&self, ask: Ask<'_>) -> Answer {
        match self {
            AnyStore::Memory(m) => m.decide_now(ask),
            AnyStore::Redis(r) => r.decide(ask).await,
        }
    }

    fn decide_local(&self, ask: Ask<'_>) -> Option<Answer> {
        match self {
            AnyStore::Memory(m) => Some(m.decide_now(ask)),
            AnyStore::Redis(r) => r.decide_local(ask),
        }
    }

    fn quiet(&self) -> bool {
        match self {
            AnyStore::Memory(m) => m.quiet(),
            AnyStore::Redis(r) => r.quiet(),
        }
    }

    fn blocked(&self, upstream: &str, endpoint: &str) -> Option<Answer> {
        match self {
            AnyStore::Memory(m) => m.blocked(upstream, endpoint),
            AnyStore::Redis(r) => r.blocked(upstream, endpoint),
        }
    }

    fn cooldown_left(&self, upstream: &str) -> Duration {
        match self {
            AnyStore::Memory(m) => m.cooldown_left(upstream),
            AnyStore::Redis(r) => r.cooldown_left(upstream),
        }
    }

    fn used(&self, upstream: &str, window_ms: u64) -> u64 {
        match self {
            AnyStore::Memory(m) => m.used(upstream, window_ms),
            AnyStore::Redis(r) => r.used(upstream, window_ms),
        }
    }

    fn record(&self, change: Record<'_>) -> bool {
        match self {
            AnyStore::Memory(m) => m.record(change),
            AnyStore::Redis(r) => r.record(change),
        }
    }
}
