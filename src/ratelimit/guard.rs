//! The per-upstream decision: [`UpstreamGuard::admit`] before sending, [`UpstreamGuard::observe`]
//! after each answer. It holds nothing while a request waits: the caller sleeps until the
//! instant given and asks again.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::budget::Budget;
use super::facts::{Cause, Effect, RequestFacts, ResponseFacts, endpoint_key};
use super::profile::Profile;
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

    /// Decides for a request at `now` that must be sent by `deadline`: refuse at once when the
    /// deadline ends before the cooldown, hold or window does; otherwise wait.
    pub async fn admit(
        &self,
        request: &RequestFacts<'_>,
        now: Instant,
        deadline: Instant,
    ) -> Decision {
        if self.profile.is_off() {
            return Decision::Go(Ticket { window: None });
        }
        let weight = self.profile.assess(request).weight;
        let endpoint = endpoint_key(request.method, request.path);
        let spend = self
            .budget
            .map(|b| (weight, b.window_ms(), b.effective_limit()));
        let answer = self
            .store
            .decide(Ask {
                upstream: &self.key,
                endpoint: &endpoint,
                spend,
            })
            .await;
        let (left, reason) = match answer {
            Answer::Go { window } => return Decision::Go(Ticket { window }),
            Answer::Cooldown(left) => (left, Reason::Cooldown),
            Answer::Held(left) => (left, Reason::Hold),
            Answer::Full(left) => (left, Reason::Budget),
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

    /// Reads an answer: starts cooldowns and holds, corrects the budget. Returns what started,
    /// for the warn log line ("cooldown started", upstream, cause, seconds).
    pub async fn observe(
        &self,
        request: &RequestFacts<'_>,
        ticket: Ticket,
        response: &ResponseFacts<'_>,
    ) -> Vec<Started> {
        let now = (self.wall)();
        let mut started = Vec::new();
        for effect in self.profile.read_answer(response, now) {
            match effect {
                Effect::Cooldown { duration, cause } => {
                    self.store
                        .record(Record::Cooldown(&self.key, duration))
                        .await;
                    started.push(Started {
                        upstream_wide: true,
                        cause,
                        duration,
                    });
                }
                Effect::Hold { duration, cause } => {
                    let endpoint = endpoint_key(request.method, request.path);
                    self.store
                        .record(Record::Hold(&self.key, &endpoint, duration))
                        .await;
                    started.push(Started {
                        upstream_wide: false,
                        cause,
                        duration,
                    });
                }
                Effect::UsedWeight(used) => {
                    // The header counts the exchange's 1-minute window; it corrects only a
                    // budget counted in the same windows.
                    if let (Some(b), Some(window)) = (self.budget, ticket.window)
                        && b.window_ms() == 60_000
                    {
                        self.store
                            .record(Record::Used(&self.key, window, 60_000, used))
                            .await;
                    }
                }
            }
        }
        started
    }
}
