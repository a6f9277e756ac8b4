//! The rate-limit guard's core: profiles of what each exchange documents, the readers of its
//! signals, budgets and their fixed windows. Knows nothing of sockets or the pool; the request
//! path hands it [`RequestFacts`] and [`ResponseFacts`] that borrow the exact bytes forwarded.
//!
//! - [`budget`]: `rate_limit_budget = "N/DURATION"` and fixed windows aligned to the epoch.
//! - [`class`]: classes, the priority and deadline headers, the anti-starvation rule.
//! - [`profile`]: the profile table, `auto`, the rules every profile shares.
//! - [`exchanges`]: Binance, Bybit, OKX, Hyperliquid, Bitunix as data plus small functions.
//! - [`signals`]: `Retry-After`, HTTP dates, ban bodies, IETF `RateLimit`, JSON codes.
//! - [`facts`]: what the guard is told and what it concludes.
//! - [`guard`]: admit / observe per upstream, refuse-or-wait against the deadline.
//! - [`store`]: the store trait (one atomic step per decision) and the in-memory store.
//! - [`redis_store`]: the shared store on Redis (leases, pub/sub cooldowns, local fallback).

pub mod budget;
pub mod class;
pub mod exchanges;
pub mod facts;
pub mod guard;
pub mod profile;
pub mod redis_store;
pub mod signals;
pub mod store;

#[cfg(test)]
mod guard_tests;
#[cfg(test)]
mod tests;

pub use budget::{Budget, parse_budget};
pub use class::{Class, ClassRule, parse_deadline, parse_priority, resolve_class};
pub use facts::{Cause, Effect, RequestFacts, ResponseFacts, endpoint_key};
pub use profile::{
    Assessment, MAX_INSPECTED_BODY, PROFILE_NAMES, Profile, auto_profile, profile_for,
};

/// Wall-clock time in milliseconds since the Unix epoch (the exchanges' own time base).
pub type WallMs = u64;
pub use guard::{Decision, Reason, Started, Ticket, UpstreamGuard, retry_after_secs};
pub use redis_store::{RedisSettings, RedisStore};
pub use store::{AnyStore, MemoryStore, Store, WallClock, system_wall_clock};
