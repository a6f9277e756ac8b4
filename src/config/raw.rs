//! The TOML schema as serde reads it: one struct per table, holding values as written (addresses
//! and IPs as strings, so a bad one is reported by our own check with a hint).
//!
//! The same structs are the built-in defaults (merged first, so a problem can say a value is the
//! default) and the `check` dump (`dump.rs` converts the validated config back into them).
//! `[pool]` and each upstream table are their own keys plus the [`Limits`] keys
//! ([`WithLimits`]); the loader splits a table by [`field_names`] and reads each part.

use std::{collections::BTreeMap, path::PathBuf, sync::OnceLock, time::Duration};

use serde::{
    Deserialize, Deserializer, Serialize,
    de::{self, Visitor},
};

use super::Limits;

/// `[listen]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    pub proxy: String,
    pub admin: String,
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    pub max_client_connections: usize,
    pub server_timing: bool,
}

/// `[pool]`'s own key: the one that is not per upstream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    pub max_connections: usize,
}

/// One `[upstreams.<name>]` table's own keys (those not inherited from `[pool]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub url: String,
    /// Open the warm connections at start instead of after the first request.
    #[serde(default)]
    pub prewarm: bool,
    /// A path to GET on idle warm connections instead of replacing them; empty: off.
    #[serde(default)]
    pub warm_probe: String,
    /// The rate-limit profile: `auto`, an exchange's name, `generic` or `none`.
    #[serde(default = "auto")]
    pub rate_limit: String,
    /// `N/DURATION` replacing the profile's main budget; empty: the profile's.
    #[serde(default)]
    pub rate_limit_budget: String,
    /// Classes for requests by method and path prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub priority_rules: Vec<RawPriorityRule>,
}

/// One `priority_rules` entry: `{ method = "GET", prefix = "/api/v3/depth", class = "low" }`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPriorityRule {
    /// Empty: every method.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub method: String,
    pub prefix: String,
    pub class: String,
}

fn auto() -> String {
    "auto".into()
}

/// `[dns]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    #[serde(rename = "static")]
    pub static_hosts: BTreeMap<String, String>,
    pub nameservers: Vec<String>,
}

/// `[tls]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub ca_files: Vec<PathBuf>,
}

/// `[runtime]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRuntime {
    #[serde(with = "humantime_serde")]
    pub busy_poll: Duration,
}

/// `[intercept]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIntercept {
    pub enabled: bool,
    pub ca_dir: PathBuf,
}

/// `[rate_limit]`: where budgets and cooldowns live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    pub store: String,
    pub key: String,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub fallback_share: f64,
}

/// `[log]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub level: String,
    pub format: String,
}

/// A table of its own keys followed by the [`Limits`] keys, for writing (defaults and dump).
/// Reading goes through the loader's split instead: serde cannot deny unknown keys across a
/// flatten.
#[derive(Debug, Clone, Serialize)]
pub(super) struct WithLimits<T> {
    #[serde(flatten)]
    pub own: T,
    #[serde(flatten)]
    pub limits: Limits,
}

/// The whole file: the defaults (`P` = `[pool]` with its limits, no upstreams) or the dump
/// (`P` = the global cap only, every upstream with its limits resolved).
#[derive(Debug, Clone, Serialize)]
pub(super) struct RawConfig<P> {
    pub listen: RawListen,
    pub pool: P,
    pub dns: RawDns,
    pub tls: RawTls,
    pub log: RawLog,
    pub runtime: RawRuntime,
    pub intercept: RawIntercept,
    pub rate_limit: RawRateLimit,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub upstreams: BTreeMap<String, WithLimits<RawUpstream>>,
}

/// Top-level tables of the schema.
pub(super) const SECTIONS: &[&str] = &[
    "listen",
    "pool",
    "dns",
    "tls",
    "log",
    "runtime",
    "intercept",
    "rate_limit",
    "upstreams",
];

/// The built-in defaults.
pub(super) fn defaults() -> RawConfig<WithLimits<RawPool>> {
    RawConfig {
        listen: RawListen {
            proxy: "127.0.0.1:8080".into(),
            admin: "127.0.0.1:9901".into(),
            drain_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            max_client_connections: 1024,
            server_timing: false,
        },
        pool: WithLimits {
            own: RawPool {
                max_connections: 100,
            },
            limits: Limits::default(),
        },
        dns: RawDns {
            max_ttl: Duration::from_secs(300),
            static_hosts: BTreeMap::new(),
            nameservers: Vec::new(),
        },
        tls: RawTls {
            ca_files: Vec::new(),
        },
        log: RawLog {
            level: "info".into(),
            format: "text".into(),
        },
        runtime: RawRuntime {
            busy_poll: Duration::ZERO,
        },
        intercept: RawIntercept {
            enabled: false,
            ca_dir: PathBuf::from("/var/lib/sidepool/ca"),
        },
        rate_limit: RawRateLimit {
            store: "memory".into(),
            key: "default".into(),
            timeout: Duration::from_millis(50),
            fallback_share: 1.0,
        },
        upstreams: BTreeMap::new(),
    }
}

/// The field names serde reads for the struct `T` (its derive passes them to
/// `deserialize_struct`), so the key lists cannot drift from the structs.
pub(super) fn field_names<T: Deserialize<'static> + 'static>() -> &'static [&'static str] {
    struct Names;
    #[derive(Debug)]
    struct Found(&'static [&'static str]);
    impl std::fmt::Display for Found {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }
    impl std::error::Error for Found {}
    impl de::Error for Found {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Found(&[])
        }
    }
    impl<'de> Deserializer<'de> for Names {
        type Error = Found;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Found> {
            Err(Found(&[]))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Found> {
            Err(Found(fields))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    match T::deserialize(Names) {
        Ok(_) => &[],
        Err(Found(fields)) => fields,
    }
}

/// Every key an upstream table accepts (its own and the [`Limits`] keys), for unknown-key
/// messages. Built once: figment's message takes a `'static` list.
pub(super) fn upstream_keys() -> &'static [&'static str] {
    static KEYS: OnceLock<Vec<&'static str>> = OnceLock::new();
    KEYS.get_or_init(joined::<RawUpstream>)
}

/// Every key `[pool]` accepts.
pub(super) fn pool_keys() -> &'static [&'static str] {
    static KEYS: OnceLock<Vec<&'static str>> = OnceLock::new();
    KEYS.get_or_init(joined::<RawPool>)
}

fn joined<T: Deserialize<'static> + 'static>() -> Vec<&'static str> {
    let mut keys = field_names::<T>().to_vec();
    keys.extend(Limits::keys());
    keys
}
