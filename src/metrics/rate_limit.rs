//! The rate-limit guard's metrics: counters of requests held and refused (by reason and
//! class) and of signals that started cooldowns or holds (by cause), the gauge of requests
//! waiting on the guard now, the budget's limit, and, read from the guard at scrape time,
//! the cooldown left and the budget used.

use std::fmt::Write as _;
use std::sync::{Arc, Weak};

use metrics::{Counter, Gauge};

use super::Metrics;
use crate::ratelimit::{Cause, Class, Reason};

/// Counter, labels `reason` (`cooldown`, `hold`, `budget`) and `class`: requests that waited
/// on the guard before being sent.
pub const RATE_LIMIT_HELD: &str = "http_pool_rate_limit_held_total";
/// Counter, labels `reason` and `class`: requests answered 429 `rate_limited` by sidepool
/// (nothing sent) because the block outlasted their deadline.
pub const RATE_LIMIT_REFUSED: &str = "http_pool_rate_limit_refused_total";
/// Counter, label `cause`: exchange answers that started a cooldown or an endpoint hold.
pub const RATE_LIMIT_SIGNALS: &str = "http_pool_rate_limit_signals_total";
/// Gauge: requests waiting on the guard now (holding no connection).
pub const RATE_LIMIT_WAITING: &str = "http_pool_rate_limit_waiting";
/// Gauge, label `window`: the main budget's limit per window, as configured or documented.
pub const RATE_LIMIT_BUDGET_LIMIT: &str = "http_pool_rate_limit_budget_limit";
/// Gauge, label `window`: weight counted in the main budget's current window (read at scrape).
pub const RATE_LIMIT_BUDGET_USED: &str = "http_pool_rate_limit_budget_used";
/// Gauge: seconds left in the upstream's cooldown, 0 when none (read at scrape).
pub const RATE_LIMIT_COOLDOWN: &str = "http_pool_rate_limit_cooldown_seconds";

/// Gauge, no labels: 1 while the rate-limit store answers (always 1 for `memory`), 0 while
/// sidecars fall back to their own budgets.
pub const RATE_LIMIT_STORE_UP: &str = "http_pool_rate_limit_store_up";

const REASONS: [Reason; 3] = [Reason::Cooldown, Reason::Hold, Reason::Budget];
const CLASSES: [Class; 3] = [Class::High, Class::Normal, Class::Low];

/// One upstream's guard as a scrape sees it.
pub struct GuardView {
    /// The upstream.
    pub upstream: Arc<str>,
    /// Seconds of cooldown left.
    pub cooldown_secs: f64,
    /// The budget's window label (`1m`) and the weight counted in its current window.
    pub budget_used: Option<(String, u64)>,
}

/// Where a scrape reads the guards' state: implemented by the proxy.
pub trait GuardGaugeSource: Send + Sync {
    /// Appends one view per guarded upstream.
    fn snapshot(&self, out: &mut Vec<GuardView>);
}

/// Handles for one upstream's rate-limit series.
#[derive(Clone)]
pub struct RateLimitMetrics {
    held: [[Counter; 3]; 3],
    refused: [[Counter; 3]; 3],
    signals: [Counter; Cause::ALL.len()],
    waiting: Gauge,
}

impl RateLimitMetrics {
    /// A request of `class` starts waiting for `reason`; the returned guard counts it in the
    /// waiting gauge until dropped.
    pub fn held(&self, reason: Reason, class: Class) -> Waiting {
        self.held[reason as usize][class as usize].increment(1);
        self.waiting.increment(1.0);
        Waiting(self.waiting.clone())
    }

    /// A request of `class` was refused for `reason`.
    pub fn refused(&self, reason: Reason, class: Class) {
        self.refused[reason as usize][class as usize].increment(1);
    }

    /// An answer started a cooldown or hold.
    pub fn signal(&self, cause: Cause) {
        self.signals[cause as usize].increment(1);
    }
}

/// A request counted in the waiting gauge; dropping it ends the wait (whatever ends it).
pub struct Waiting(Gauge);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl Metrics {
    /// Registers the rate-limit series of one upstream; `budget` is its window label and limit.
    pub fn rate_limit(&self, name: &Arc<str>, budget: Option<(String, u32)>) -> RateLimitMetrics {
        metrics::with_local_recorder(&self.recorder, || {
            let up = || name.clone();
            if let Some((window, limit)) = budget {
                metrics::gauge!(RATE_LIMIT_BUDGET_LIMIT, "upstream" => up(), "window" => window)
                    .set(f64::from(limit));
            }
            let by = |family: &'static str| {
                REASONS.map(|reason| {
                    CLASSES.map(|class| {
                        metrics::counter!(family, "upstream" => up(), "reason" => reason.as_str(), "class" => class.as_str())
                    })
                })
            };
            let waiting = metrics::gauge!(RATE_LIMIT_WAITING, "upstream" => up());
            waiting.set(0.0);
            RateLimitMetrics {
                held: by(RATE_LIMIT_HELD),
                refused: by(RATE_LIMIT_REFUSED),
                signals: Cause::ALL.map(|cause| {
                    metrics::counter!(RATE_LIMIT_SIGNALS, "upstream" => up(), "cause" => cause.as_str())
                }),
                waiting,
            }
        })
    }

    /// The store-up gauge, at 1 until the store says otherwise.
    pub fn store_up(&self) -> Gauge {
        metrics::with_local_recorder(&self.recorder, || {
            let gauge = metrics::gauge!(RATE_LIMIT_STORE_UP);
            gauge.set(1.0);
            gauge
        })
    }

    /// Makes a scrape read the guards' cooldowns and budgets from `source`.
    pub fn attach_guard_gauges(&self, source: Weak<dyn GuardGaugeSource>) {
        super::lock_list(&self.guard_sources).push(source);
    }
}

/// Appends the two scrape-time guard gauge families.
pub(super) fn render_guard_gauges(text: &mut String, views: &[GuardView]) {
    use metrics_exporter_prometheus::formatting::{
        sanitize_label_value, write_help_line, write_type_line,
    };
    if views.is_empty() {
        return;
    }
    write_help_line(
        text,
        RATE_LIMIT_COOLDOWN,
        None,
        None,
        "Seconds left in the upstream's rate-limit cooldown (0: none); nothing is sent meanwhile.",
    );
    write_type_line(text, RATE_LIMIT_COOLDOWN, None, None, "gauge");
    for v in views {
        let up = sanitize_label_value(&v.upstream);
        let _ = writeln!(
            text,
            "{RATE_LIMIT_COOLDOWN}{{upstream=\"{up}\"}} {}",
            v.cooldown_secs
        );
    }
    text.push('\n');
    if views.iter().all(|v| v.budget_used.is_none()) {
        return;
    }
    write_help_line(
        text,
        RATE_LIMIT_BUDGET_USED,
        None,
        None,
        "Weight counted in the rate-limit budget's current window.",
    );
    write_type_line(text, RATE_LIMIT_BUDGET_USED, None, None, "gauge");
    for v in views {
        if let Some((window, used)) = &v.budget_used {
            let up = sanitize_label_value(&v.upstream);
            let window = sanitize_label_value(window);
            let _ = writeln!(
                text,
                "{RATE_LIMIT_BUDGET_USED}{{upstream=\"{up}\",window=\"{window}\"}} {used}"
            );
        }
    }
    text.push('\n');
}

pub(super) fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        RATE_LIMIT_HELD,
        "Requests that waited on the rate-limit guard (holding no connection) before being sent, by reason and class."
    );
    describe_counter!(
        RATE_LIMIT_REFUSED,
        "Requests answered 429 rate_limited by sidepool, nothing sent, by reason and class."
    );
    describe_counter!(
        RATE_LIMIT_SIGNALS,
        "Exchange answers that started a rate-limit cooldown or endpoint hold, by cause."
    );
    describe_gauge!(
        RATE_LIMIT_WAITING,
        "Requests waiting on the rate-limit guard now."
    );
    describe_gauge!(
        RATE_LIMIT_STORE_UP,
        "1 while the rate-limit store answers; 0 while each sidecar spends its own fallback share."
    );
    describe_gauge!(
        RATE_LIMIT_BUDGET_LIMIT,
        "The rate-limit budget's weight per window (configured or the exchange's documented limit)."
    );
}
