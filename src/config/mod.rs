//! Configuration: loading, validation and the effective-config dump.
//!
//! Owns the TOML schema of the external contract, the figment layering (built-in defaults < TOML
//! file < `SIDEPOOL_` environment, `__` nesting) and every validation rule. It produces a typed
//! [`Config`] that cannot hold invalid values, or a [`ConfigErrors`] that lists every problem found,
//! one line each, naming the key and where its value came from (file, env var or default).
//!
//! It reads only the config file, the environment and the CA files named in `tls.ca_files`. It does
//! not open sockets, resolve names, build TLS client configs or install logging: other modules do
//! that from the validated values.
//!
//! Split by role:
//! - this file: the validated types, problems and the entry points;
//! - `raw`: the TOML schema as serde reads it, the built-in defaults, and the dump's shape;
//! - `limits`: [`Limits`], the keys an upstream inherits from `[pool]` and may override;
//! - `load`: the figment layering, where each value came from, and splitting tables;
//! - `validate`: the rule for every section;
//! - `rate_limit`: the rules of `[rate_limit]` and of each upstream's rate-limit keys;
//! - `url`: upstream urls and other addresses;
//! - `dump`: the effective config as TOML, for `sidepool check`.
//!
//! Adding a key: an overridable pool key is a field of [`Limits`] (plus its rule in
//! `Limits::problems`); a key of one section is a field of its `raw` struct, of its validated
//! struct here, a rule in `validate` and a line in `dump`; a new section is a `raw` struct, a
//! field of `RawConfig` and of [`Config`], and its name in `raw::SECTIONS`.

mod dump;
mod limits;
mod load;
mod rate_limit;
mod raw;
#[cfg(test)]
mod tests;
mod url;
mod validate;

pub use limits::Limits;

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use rustls::pki_types::CertificateDer;

/// Validated configuration. Cannot hold invalid values.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[listen]`.
    pub listen: ListenConfig,
    /// pool.max_connections: cap on open upstream connections, all upstreams together.
    pub max_connections: usize,
    /// Sorted by name.
    pub upstreams: Vec<UpstreamConfig>,
    /// `[dns]`.
    pub dns: DnsConfig,
    /// `[tls]`.
    pub tls: TlsConfig,
    /// `[log]`.
    pub log: LogConfig,
    /// `[runtime]`.
    pub runtime: RuntimeConfig,
    /// `[intercept]`.
    pub intercept: InterceptConfig,
    /// `[rate_limit]`.
    pub rate_limit: SharedRateLimit,
    /// Settings that are valid but deserve attention (a listener off loopback), one line
    /// each: `sidepool check` prints them, `run` logs them at start.
    pub warnings: Vec<ConfigProblem>,
    /// Values lowered to their effective value (a per-host cap above the global one): `check`
    /// prints them next to the dump, which shows the effective value.
    pub notes: Vec<ConfigProblem>,
}

/// `[listen]`: where the proxy and admin listeners bind, and their timeouts.
#[derive(Debug, Clone)]
pub struct ListenConfig {
    /// Plain HTTP/1.1 listener for local clients.
    pub proxy: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub admin: SocketAddr,
    /// How long in-flight requests may run after SIGTERM/SIGINT.
    pub drain_timeout: Duration,
    /// Longest time a client may take to send a request's headers; also how long an idle
    /// kept-alive client connection stays open (hyper times both with one timer).
    pub header_read_timeout: Duration,
    /// Cap on open client connections; clients beyond it get `503 too_many_clients`.
    pub max_client_connections: usize,
    /// Every response to a client carries sidepool's `Server-Timing` field (queue, connect,
    /// upstream, reused or new).
    pub server_timing: bool,
}

/// One `[upstreams.<name>]` entry, with its url split up and its limits resolved.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Route prefix (`/<name>/...`) and metrics label.
    pub name: String,
    /// true for https.
    pub tls: bool,
    /// Lowercase host, IPv6 literals WITHOUT brackets (used for DNS/SNI/matching).
    pub host: String,
    /// Effective port (443 for https, 80 for http when not given).
    pub port: u16,
    /// Value for the Host header: host, or host:port when the port is not the scheme default; IPv6 bracketed.
    pub authority: String,
    /// Caps and timeouts, `[pool]` with this upstream's overrides; the per-host cap is the
    /// effective one (at most `pool.max_connections`), and so is `warm_connections` (at most
    /// the per-host cap).
    pub limits: Limits,
    /// `prewarm`: open the warm connections at start, before the first request.
    pub prewarm: bool,
    /// `warm_probe`: an origin-form path (with an optional query) GET on idle warm connections
    /// to keep them alive instead of replacing them; `None`: replace them.
    pub warm_probe: Option<String>,
    /// The rate-limit guard's settings for this upstream.
    pub rate_limit: RateLimitConfig,
}

/// `rate_limit`, `rate_limit_budget` and `priority_rules` of one upstream.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// The profile in force (`auto` already resolved from the host).
    pub profile: &'static crate::ratelimit::Profile,
    /// The main budget in force: the override, else the profile's default for the host.
    pub budget: Option<crate::ratelimit::Budget>,
    /// Classes by method and path prefix, in the order written.
    pub rules: Vec<crate::ratelimit::ClassRule>,
}

/// `[dns]`: cache policy and static host entries.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Answers are cached for min(record TTL, max_ttl).
    pub max_ttl: Duration,
    /// `[dns.static]`, like curl --resolve; keys lowercased.
    pub static_hosts: HashMap<String, IpAddr>,
    /// Name servers to ask instead of the system's (`/etc/resolv.conf`); empty: the system's.
    pub nameservers: Vec<SocketAddr>,
}

/// `[tls]`: extra trust roots, added to the built-in web PKI roots.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// As configured (relative paths are relative to the working directory).
    pub ca_files: Vec<PathBuf>,
    /// Parsed from ca_files.
    pub ca_certs: Vec<CertificateDer<'static>>,
}

/// `[log]`: filter and output format.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// An `EnvFilter` directive string (already checked to parse).
    pub level: String,
    /// Text or JSON lines.
    pub format: LogFormat,
}

/// `[runtime]`: how the async runtime waits for network events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// After each request event, keep polling for network events this long instead of
    /// sleeping (lower latency, one busy core per worker while polling); `None`: off.
    pub busy_poll: Option<Duration>,
}

/// `[intercept]`: CONNECT interception with a local CA, off by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterceptConfig {
    /// Terminate the client's TLS inside `CONNECT` to a configured upstream; `false`: CONNECT
    /// other than to port 80 is refused.
    pub enabled: bool,
    /// Holds `ca.pem` and `ca.key`, made on first start when absent. Not read or checked at
    /// load: the interception module owns the files.
    pub ca_dir: PathBuf,
}

/// `[rate_limit]`: where budgets, cooldowns and holds live, and under which key.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedRateLimit {
    /// `None`: this sidecar's memory; `Some(url)`: a Redis server shared with other sidecars.
    pub redis_url: Option<String>,
    /// Sidecars with the same store and key spend one budget.
    pub key: String,
    /// Longest wait for one store call; then the store counts as down.
    pub timeout: Duration,
    /// Share of each budget a sidecar spends alone while the store is down.
    pub fallback_share: f64,
}

/// Longest `[rate_limit] timeout`: the store is on the request path.
pub const MAX_STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest `runtime.busy_poll` accepted: beyond it the window never closes under steady
/// traffic, and a longer one only burns CPU.
pub const MAX_BUSY_POLL: Duration = Duration::from_secs(1);

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// One problem (or warning, or note): `source: key: message` when displayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key path (`pool.idle_timeout`), or `config` for the file itself.
    pub key: String,
    /// Where the value came from: the file path, `env SIDEPOOL_...` or `default`.
    pub source: String,
    /// What is wrong, with a hint.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.source, self.key, self.message)
    }
}

/// All problems found; Display prints one line per problem.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// defaults < file (must exist: missing file is a problem with key "config") < SIDEPOOL_ env.
    ///
    /// `SIDEPOOL_CONFIG` is ignored (reserved: it is not a config key; the file comes from
    /// `--config`); every other `SIDEPOOL_` variable must map to a key. Lists from env are
    /// TOML-like: `SIDEPOOL_TLS__CA_FILES='["a.pem"]'`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        load::from_file(path)
    }

    /// defaults < the given TOML text; no environment (for tests and embedding).
    pub fn from_toml_str(toml: &str) -> Result<Config, ConfigErrors> {
        load::from_str(toml)
    }

    /// Smallest idle_timeout over all upstreams (the idle reaper's granularity).
    /// The default idle timeout (30s) when there are no upstreams.
    pub fn min_idle_timeout(&self) -> Duration {
        self.upstreams
            .iter()
            .map(|u| u.limits.idle_timeout)
            .min()
            .unwrap_or(Limits::default().idle_timeout)
    }
}
