//! Profiles as data: what an exchange documents about its limits, as a table of small
//! functions and lists. [`exchanges`](super::exchanges) fills them in; this file holds the
//! shape, the `auto` choice and the rules every profile shares.

use std::time::Duration;

use http::Method;

use super::WallMs;
use super::budget::Budget;
use super::exchanges;
use super::facts::{Cause, Effect, RequestFacts, ResponseFacts};
use super::signals;

/// What a profile says about one request before it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assessment {
    /// Weight it costs against the main budget.
    pub weight: u32,
    /// True for orders (placing, amending, cancelling): class `high` unless the bot says otherwise.
    pub order: bool,
}

/// A reader of one signal in an answer.
pub type Signal = fn(&ResponseFacts<'_>, WallMs) -> Option<Effect>;

/// One exchange's documented behaviour.
#[derive(Debug)]
pub struct Profile {
    /// The `rate_limit` value naming it.
    pub name: &'static str,
    /// Main budget for an upstream host, when the exchange documents one.
    pub default_budget: fn(host: &str) -> Option<Budget>,
    /// Weight and order-ness of a request.
    pub assess: fn(&RequestFacts<'_>) -> Assessment,
    /// Order endpoints (method, exact path), read by [`assess_by_table`].
    pub orders: &'static [(&'static str, &'static str)],
    /// Whether the request path must buffer this request's body for [`Profile::assess`].
    pub request_body: fn(&Method, &str) -> bool,
    /// Whether an answer with this status must be read (bounded) for the signals.
    pub response_body: fn(u16) -> bool,
    /// Signals read from every answer, in order; all effects are applied.
    pub signals: &'static [Signal],
}

/// The largest body the guard inspects (request or answer); larger ones are not buffered and
/// the profile assumes the worst it documents for them.
pub const MAX_INSPECTED_BODY: usize = 64 * 1024;

impl Profile {
    /// Whether the request path must buffer this request's body (bounded by
    /// [`MAX_INSPECTED_BODY`]) before admitting it.
    pub fn needs_request_body(&self, method: &Method, path: &str) -> bool {
        (self.request_body)(method, path)
    }

    /// Whether an answer with this status should have its body read (when it fits
    /// [`MAX_INSPECTED_BODY`]) and passed to [`Profile::read_answer`].
    pub fn wants_response_body(&self, status: u16) -> bool {
        (self.response_body)(status)
    }

    /// Weight and order-ness of a request.
    pub fn assess(&self, request: &RequestFacts<'_>) -> Assessment {
        (self.assess)(request)
    }

    /// Everything this answer says, at wall-clock time `now`.
    pub fn read_answer(&self, response: &ResponseFacts<'_>, now: WallMs) -> Vec<Effect> {
        self.signals
            .iter()
            .filter_map(|signal| signal(response, now))
            .collect()
    }

    /// True when this is the `none` profile (the guard is off).
    pub fn is_off(&self) -> bool {
        self.signals.is_empty()
    }
}

/// The profile `rate_limit = NAME` selects, `auto` resolved from the upstream's host.
/// `None` for an unknown name (the config code reports it with the list of valid names).
pub fn profile_for(name: &str, host: &str) -> Option<&'static Profile> {
    match name {
        "auto" => Some(auto_profile(host)),
        _ => PROFILES.iter().copied().find(|p| p.name == name),
    }
}

/// The valid `rate_limit` values, for error messages.
pub const PROFILE_NAMES: &[&str] = &[
    "auto",
    "binance",
    "bybit",
    "okx",
    "hyperliquid",
    "bitunix",
    "generic",
    "none",
];

const PROFILES: &[&Profile] = &[
    &exchanges::BINANCE,
    &exchanges::BYBIT,
    &exchanges::OKX,
    &exchanges::HYPERLIQUID,
    &exchanges::BITUNIX,
    &GENERIC,
    &NONE,
];

/// Host suffixes `auto` recognises (the contract's list).
const AUTO: &[(&str, &Profile)] = &[
    ("binance.com", &exchanges::BINANCE),
    ("bybit.com", &exchanges::BYBIT),
    ("bytick.com", &exchanges::BYBIT),
    ("okx.com", &exchanges::OKX),
    ("hyperliquid.xyz", &exchanges::HYPERLIQUID),
    ("bitunix.com", &exchanges::BITUNIX),
];

/// `auto`: the profile whose domain is the host or a parent of it (`api.binance.com`,
/// `binance.com`; not `notbinance.com`), else `generic`.
pub fn auto_profile(host: &str) -> &'static Profile {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    AUTO.iter()
        .find(|(suffix, _)| {
            host == *suffix
                || host
                    .strip_suffix(suffix)
                    .is_some_and(|rest| rest.ends_with('.'))
        })
        .map_or(&GENERIC, |(_, p)| *p)
}

/// `generic`: `Retry-After` on 429/418 and the IETF `RateLimit` field; no budget of its own.
pub static GENERIC: Profile = Profile {
    name: "generic",
    default_budget: no_budget,
    assess: weight_one,
    orders: &[],
    request_body: never,
    response_body: never_status,
    signals: &[retry_after_cooldown, ietf_quota_exhausted],
};

/// `none`: the guard is off; 429s pass through and start nothing.
pub static NONE: Profile = Profile {
    name: "none",
    default_budget: no_budget,
    assess: weight_zero,
    orders: &[],
    request_body: never,
    response_body: never_status,
    signals: &[],
};

/// Every profile's rule: 429 or 418 with `Retry-After` starts a cooldown for the upstream.
pub fn retry_after_cooldown(r: &ResponseFacts<'_>, now: WallMs) -> Option<Effect> {
    let cause = match r.status {
        429 => Cause::TooManyRequests,
        418 => Cause::Banned,
        _ => return None,
    };
    let duration = signals::retry_after(r.headers, now)?;
    Some(Effect::Cooldown { duration, cause })
}

/// IETF `RateLimit: ...;r=0;t=N`: no quota left for N seconds, so stop the upstream that long.
pub fn ietf_quota_exhausted(r: &ResponseFacts<'_>, _now: WallMs) -> Option<Effect> {
    match signals::ietf_ratelimit(r.headers)? {
        (0, t) if t > 0 => Some(Effect::Cooldown {
            duration: Duration::from_secs(t).min(signals::MAX_COOLDOWN),
            cause: Cause::QuotaExhausted,
        }),
        _ => None,
    }
}

/// Order-ness from the profile's table; weight 1.
pub fn assess_by_table(profile: &Profile, r: &RequestFacts<'_>) -> Assessment {
    Assessment {
        weight: 1,
        order: is_listed(profile.orders, r),
    }
}

/// True when (method, path) is in `table`.
pub fn is_listed(table: &[(&str, &str)], r: &RequestFacts<'_>) -> bool {
    table
        .iter()
        .any(|(m, p)| *m == r.method.as_str() && *p == r.path)
}

/// No main budget.
pub fn no_budget(_host: &str) -> Option<Budget> {
    None
}

fn weight_one(_r: &RequestFacts<'_>) -> Assessment {
    Assessment {
        weight: 1,
        order: false,
    }
}

fn weight_zero(_r: &RequestFacts<'_>) -> Assessment {
    Assessment {
        weight: 0,
        order: false,
    }
}

/// Never buffers request bodies.
pub fn never(_m: &Method, _p: &str) -> bool {
    false
}

/// Never reads answers' bodies.
pub fn never_status(_status: u16) -> bool {
    false
}
