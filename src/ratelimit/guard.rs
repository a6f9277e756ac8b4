//! The per-upstream decision: [`UpstreamGuard::admit`] before sending, [`UpstreamGuard::observe`]
//! after each answer. It holds nothing while a request waits: the caller sleeps until the
//! instant given and asks again.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::budget::Budget;
use super::class::Class;
use super::facts::{Cause, Effect, RequestFacts, ResponseFacts, endpoint_key};
use super::profile::{Assessment, Profile};
use super::store::{Answer, Ask, Record, Store, WallClock};

/// Why a request waits or is refused (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The upstream cools down.
    Cooldown,
    /// The endpoint is held.
    Hold,
    /// The budget's window is full.
    Budget,
}

impl Reason {
    /// The label used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Cooldown => "cooldown",
            Reason::Hold => "hold",
            Reason::Budget => "budget",
        }
    }
}

/// What to do with a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send it; pass the ticket to [`UpstreamGuard::observe`] with its answer.
    Go(Ticket),
    /// Wait, holding nothing, until then, and ask again.
    Wait {
        /// When to ask again.
        until: Instant,
        /// Why.
        reason: Reason,
    },
    /// Answer 429 `rate_limited` now, with `Retry-After` = `retry_after` rounded up.
    Refuse {
        /// Time until the cooldown, hold or window ends.
        retry_after: Duration,
        /// Why.
        reason: Reason,
    },
}

/// What the guard remembers of an admitted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The budget window its weight was counted in.
    pub window: Option<u64>,
}

/// A cooldown an answer started, for the warn log line and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// Whole upstream (`true`) or one endpoint.
    pub upstream_wide: bool,
    /// Why.
    pub cause: Cause,
    /// How long.
    pub duration: Duration,
}

/// Go, or wait until the block ends, or refuse when it outlasts the deadline.
fn decision(answer: Answer, now: Instant, deadline: Instant) -> Decision {
    let (left, reason) = match answer {
        Answer::Go { window } => return Decision::Go(Ticket { window }),
        blocked => blocked_by(blocked),
    };
    let until = now + left;
    if until > deadline {
        Decision::Refuse {
            retry_after: left,
            reason,
        }
    } else {
        Decision::Wait { until, reason }
    }
}

/// How long a store's refusal lasts, and why. `Go` never reaches here.
fn blocked_by(answer: Answer) -> (Duration, Reason) {
    match answer {
        Answer::Cooldown(left) => (left, Reason::Cooldown),
        Answer::Held(left) => (left, Reason::Hold),
        Answer::Full(left) => (left, Reason::Budget),
        Answer::Go { .. } => (Duration::ZERO, Reason::Budget),
    }
}

/// `Retry-After` value in whole seconds, rounded up.
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000) as u64
}

/// The guard of one upstream.
pub struct UpstreamGuard<S: Store> {
    key: String,
    profile: &'static Profile,
    budget: Option<Budget>,
    store: Arc<S>,
    wall: WallClock,
}

impl<S: Store> UpstreamGuard<S> {
    /// A guard for the upstream stored under `key`, with `budget` (the override, else the
    /// profile's default for `host`).
    pub fn new(
        key: String,
        profile: &'static Profile,
        host: &str,
        budget: Option<Budget>,
        store: Arc<S>,
        wall: WallClock,
    ) -> Self {
        let budget = budget.or_else(|| (profile.default_budget)(host));
        UpstreamGuard {
            key,
            profile,
            budget,
            store,
            wall,
        }
    }

    /// The profile in force.
    pub fn profile(&self) -> &'static Profile {
        self.profile
    }

    /// The main budget in force.
    pub fn budget(&self) -> Option<Budget> {
        self.budget
    }

    /// Weight and order-ness of a request, as the profile documents them.
    pub fn assess(&self, request: &RequestFacts<'_>) -> Assessment {
        self.profile.assess(request)
    }

    /// Decides for a request of `weight` and `class` at `now` that must be sent by
    /// `deadline`: refuse at once when the deadline ends before the cooldown, hold or window
    /// does; otherwise wait.
    pub async fn admit(
        &self,
        request: &RequestFacts<'_>,
        weight: u32,
        class: Class,
        now: Instant,
        deadline: Instant,
    ) -> Decision {
        let Some(endpoint) = self.endpoint(request) else {
            return Decision::Go(Ticket { window: None });
        };
        let answer = self.store.decide(self.ask(&endpoint, weight, class)).await;
        decision(answer, now, deadline)
    }

    /// [`UpstreamGuard::admit`] without waiting, when the store can answer from local state;
    /// `None` means the caller must use [`UpstreamGuard::admit`].
    pub fn admit_now(
        &self,
        request: &RequestFacts<'_>,
        weight: u32,
        class: Class,
        now: Instant,
        deadline: Instant,
    ) -> Option<Decision> {
        if self.budget.is_none() && self.store.quiet() {
            // No budget to spend and no cooldown or hold anywhere: nothing to ask.
            return Some(Decision::Go(Ticket { window: None }));
        }
        let Some(endpoint) = self.endpoint(request) else {
            return Some(Decision::Go(Ticket { window: None }));
        };
        let answer = self
            .store
            .decide_local(self.ask(&endpoint, weight, class))?;
        Some(decision(answer, now, deadline))
    }

    /// The key of the request's endpoint; `None` when the guard is off.
    fn endpoint(&self, request: &RequestFacts<'_>) -> Option<String> {
        (!self.profile.is_off()).then(|| endpoint_key(request.method, request.path))
    }

    fn ask<'a>(&'a self, endpoint: &'a str, weight: u32, class: Class) -> Ask<'a> {
        Ask {
            upstream: &self.key,
            endpoint,
            spend: self
                .budget
                .map(|b| (weight, b.window_ms(), b.limit_for(class))),
        }
    }

    /// The cooldown or hold that blocks `request` now, if any (checked again once it holds a
    /// connection); spends nothing.
    pub fn blocked(&self, request: &RequestFacts<'_>) -> Option<(Duration, Reason)> {
        if self.store.quiet() {
            return None;
        }
        let endpoint = self.endpoint(request)?;
        self.store.blocked(&self.key, &endpoint).map(blocked_by)
    }

    /// Cooldown left for the whole upstream.
    pub fn cooldown_left(&self) -> Duration {
        self.store.cooldown_left(&self.key)
    }

    /// Weight counted in the main budget's current window.
    pub fn used(&self) -> u64 {
        self.budget
            .map_or(0, |b| self.store.used(&self.key, b.window_ms()))
    }

    /// Reads an answer: starts cooldowns and holds, corrects the budget. Returns what started,
    /// for the warn log line ("cooldown started", upstream, cause, seconds).
    pub fn observe(
        &self,
        request: &RequestFacts<'_>,
        ticket: Ticket,
        response: &ResponseFacts<'_>,
    ) -> Vec<Started> {
        let now = (self.wall)();
        // Several signals may read the same fact (Binance's 418: `Retry-After` and the ban
        // body): per answer, the longest cooldown and the longest hold count, once each.
        let (mut cooldown, mut hold) = (None::<(Duration, Cause)>, None::<(Duration, Cause)>);
        for effect in self.profile.read_answer(response, now) {
            match effect {
                Effect::Cooldown { duration, cause } => {
                    if cooldown.is_none_or(|(d, _)| duration > d) {
                        cooldown = Some((duration, cause));
                    }
                }
                Effect::Hold { duration, cause } => {
                    if hold.is_none_or(|(d, _)| duration > d) {
                        hold = Some((duration, cause));
                    }
                }
                Effect::UsedWeight(used) => {
                    // The header counts the exchange's 1-minute window; it corrects only a
                    // budget counted in the same windows.
                    if let (Some(b), Some(window)) = (self.budget, ticket.window)
                        && b.window_ms() == 60_000
                    {
                        self.store
                            .record(Record::Used(&self.key, window, 60_000, used));
                    }
                }
            }
        }
        let mut started = Vec::new();
        if let Some((duration, cause)) = cooldown
            && self.store.record(Record::Cooldown(&self.key, duration))
        {
            started.push(Started {
                upstream_wide: true,
                cause,
                duration,
            });
        }
        if let Some((duration, cause)) = hold {
            let endpoint = endpoint_key(request.method, request.path);
            if self
                .store
                .record(Record::Hold(&self.key, &endpoint, duration))
            {
                started.push(Started {
                    upstream_wide: false,
                    cause,
                    duration,
                });
            }
        }
        started
    }
}
