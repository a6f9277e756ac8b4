//! The keys an upstream inherits from `[pool]` and may override: one struct for the `[pool]`
//! defaults, the upstream overrides, the validated limits and the `check` dump.
//!
//! An upstream's value is the `[pool]` table with the upstream's own keys laid over it and read
//! as one [`Limits`] (see `load.rs`), so there is no struct of `Option`s to keep in step and no
//! merge function. Adding an overridable key is a field here (with its default in
//! [`Limits::default`]) and, if it has a rule, a line in [`Limits::problems`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Per-upstream pool limits: the `[pool]` values with the upstream's overrides applied.
///
/// `max_connections_per_host` is the effective cap: never above `pool.max_connections` (a
/// larger value is accepted and lowered at load, since the two are independent bounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Cap on connecting + idle + active connections to this upstream.
    pub max_connections_per_host: usize,
    /// Idle kept-alive connections are closed after this.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// DNS + TCP + TLS handshake.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest gap between bytes from the upstream.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Whole exchange, first byte sent to last byte received.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Longest wait for a free connection.
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// Cap on queued requests; beyond it a request gets `503 queue_full` at once. `None`: no
    /// cap other than `queue_timeout`. An absent key is how "unset" is written in TOML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_waiting: Option<usize>,
    /// Idle connections kept ready once the upstream has carried a request (0: off). Counted
    /// in both caps; at most the effective per-host cap (a larger value is lowered at load).
    pub warm_connections: usize,
    /// A warm connection idle this long is replaced (or probed, with `warm_probe`), before
    /// the exchange's own idle cutoff can close it.
    #[serde(with = "humantime_serde")]
    pub warm_refresh: Duration,
}

impl Default for Limits {
    /// The built-in `[pool]` defaults.
    fn default() -> Self {
        Limits {
            max_connections_per_host: 30,
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            queue_timeout: Duration::from_secs(5),
            max_waiting: None,
            // One ready connection: the first order after a quiet spell pays no handshake,
            // for the price of one connection held (docs/tuning.md, "Warm connections").
            warm_connections: 1,
            // Under the 60 s idle cutoff of the load balancers most exchanges sit behind.
            warm_refresh: Duration::from_secs(50),
        }
    }
}

/// The message for a zero duration that must be positive.
pub(super) const POSITIVE: &str =
    "must be greater than 0; use a duration such as \"250ms\" or \"30s\"";
/// The message for a zero count that must be at least 1.
pub(super) const AT_LEAST_ONE: &str = "must be at least 1";

impl Limits {
    /// Every rule broken, as (key, message). The loader reports each under the table the value
    /// was written in: `[pool]`, or the upstream that overrides it.
    pub(super) fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.max_connections_per_host == 0 {
            out.push(("max_connections_per_host", AT_LEAST_ONE.to_string()));
        }
        for (key, d) in [
            ("idle_timeout", self.idle_timeout),
            ("connect_timeout", self.connect_timeout),
            ("read_timeout", self.read_timeout),
            ("request_timeout", self.request_timeout),
            ("queue_timeout", self.queue_timeout),
            ("warm_refresh", self.warm_refresh),
        ] {
            if d.is_zero() {
                out.push((key, POSITIVE.to_string()));
            }
        }
        out
    }

    /// The key names, as serde reads them (the split of a table into its own keys and these).
    pub(super) fn keys() -> &'static [&'static str] {
        super::raw::field_names::<Limits>()
    }
}
