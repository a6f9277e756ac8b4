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

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    Figment, Metadata, Source,
    error::Kind,
    providers::{Env, Format, Serialized, Toml},
    value::Value,
};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Prefix of the environment variables that override config keys (`__` separates nesting levels).
const ENV_PREFIX: &str = "SIDEPOOL_";
/// Source label for problems in text given to [`Config::from_toml_str`].
const STRING_SOURCE: &str = "toml";
/// Top-level tables of the schema.
const SECTIONS: &[&str] = &[
    "listen",
    "pool",
    "dns",
    "tls",
    "log",
    "runtime",
    "upstreams",
];
/// `[pool]` keys that an upstream may override (everything but the global `max_connections`).
const OVERRIDABLE: &[&str] = &[
    "max_connections_per_host",
    "idle_timeout",
    "connect_timeout",
    "read_timeout",
    "request_timeout",
    "queue_timeout",
    "max_waiting",
];

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
    /// Caps and timeouts, `[pool]` with this upstream's overrides.
    pub limits: Limits,
}

/// Per-upstream pool limits: the `[pool]` values with the upstream's overrides applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Cap on connecting + idle + active connections to this upstream.
    pub max_connections_per_host: usize,
    /// Idle kept-alive connections are closed after this.
    pub idle_timeout: Duration,
    /// DNS + TCP + TLS handshake.
    pub connect_timeout: Duration,
    /// Longest gap between bytes from the upstream.
    pub read_timeout: Duration,
    /// Whole exchange, first byte sent to last byte received.
    pub request_timeout: Duration,
    /// Longest wait for a free connection.
    pub queue_timeout: Duration,
    /// Cap on queued requests; beyond it a request gets `503 queue_full` at once. `None`: no
    /// cap other than `queue_timeout`.
    pub max_waiting: Option<usize>,
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

/// One problem: `source: key: message` when displayed.
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

// ---- raw (unvalidated) schema -------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    // Strings, not SocketAddr, so a bad address is reported by our own check with a hint.
    proxy: String,
    admin: String,
    #[serde(with = "humantime_serde")]
    drain_timeout: Duration,
    #[serde(with = "humantime_serde")]
    header_read_timeout: Duration,
    max_client_connections: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    max_connections: usize,
    max_connections_per_host: usize,
    #[serde(with = "humantime_serde")]
    idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    request_timeout: Duration,
    #[serde(with = "humantime_serde")]
    queue_timeout: Duration,
    // Unset by default (no cap); an absent key is how "unset" is written in TOML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_waiting: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    #[serde(with = "humantime_serde")]
    max_ttl: Duration,
    #[serde(rename = "static")]
    static_hosts: BTreeMap<String, String>,
    nameservers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_files: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    #[serde(with = "humantime_serde")]
    busy_poll: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: String,
    format: String,
}

/// The built-in defaults, merged first so `find_metadata` can tell a default from a set value.
#[derive(Serialize)]
struct RawDefaults {
    listen: RawListen,
    pool: RawPool,
    dns: RawDns,
    tls: RawTls,
    log: RawLog,
    runtime: RawRuntime,
}

impl Default for RawDefaults {
    fn default() -> Self {
        RawDefaults {
            listen: RawListen {
                proxy: "127.0.0.1:8080".into(),
                admin: "127.0.0.1:9901".into(),
                drain_timeout: Duration::from_secs(30),
                header_read_timeout: Duration::from_secs(30),
                max_client_connections: 1024,
            },
            pool: RawPool {
                max_connections: 100,
                max_connections_per_host: 30,
                idle_timeout: Duration::from_secs(30),
                connect_timeout: Duration::from_secs(10),
                read_timeout: Duration::from_secs(30),
                request_timeout: Duration::from_secs(60),
                queue_timeout: Duration::from_secs(5),
                max_waiting: None,
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
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: String,
    #[serde(default)]
    max_connections_per_host: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    read_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    request_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    queue_timeout: Option<Duration>,
    #[serde(default)]
    max_waiting: Option<usize>,
}

// ---- loading ------------------------------------------------------------------------------------

impl Config {
    /// defaults < file (must exist: missing file is a problem with key "config") < SIDEPOOL_ env.
    ///
    /// `SIDEPOOL_CONFIG` is ignored (reserved: it is not a config key; the file comes from
    /// `--config`); every other `SIDEPOOL_` variable must map to a key. Lists from env are TOML-like: `SIDEPOOL_TLS__CA_FILES='["a.pem"]'`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let label = path.display().to_string();
        if !path.is_file() {
            let what = if path.exists() {
                "is not a regular file"
            } else {
                "not found"
            };
            return Err(ConfigErrors(vec![ConfigProblem {
                key: "config".into(),
                source: label.clone(),
                message: format!("config file `{label}` {what}; pass --config FILE"),
            }]));
        }
        // file_exact: `Toml::file` would search parent directories and ignore a missing file.
        let figment = Figment::from(Serialized::defaults(RawDefaults::default()))
            .merge(Toml::file_exact(path))
            .merge(Env::prefixed(ENV_PREFIX).split("__").ignore(&["config"]));
        Loader::new(figment, label).run()
    }

    /// defaults < the given TOML text; no environment (for tests and embedding).
    pub fn from_toml_str(toml: &str) -> Result<Config, ConfigErrors> {
        let figment =
            Figment::from(Serialized::defaults(RawDefaults::default())).merge(Toml::string(toml));
        Loader::new(figment, STRING_SOURCE.into()).run()
    }

    /// Smallest idle_timeout over all upstreams (the idle reaper's granularity).
    /// The default idle timeout (30s) when there are no upstreams.
    pub fn min_idle_timeout(&self) -> Duration {
        self.upstreams
            .iter()
            .map(|u| u.limits.idle_timeout)
            .min()
            .unwrap_or(Duration::from_secs(30))
    }
}

/// Key path as segments; segments may contain dots (`dns.static."api.example.com"`).
type Key = Vec<String>;

fn key(parts: &[&str]) -> Key {
    parts.iter().map(|p| p.to_string()).collect()
}

/// `a.b."c.d"`: dotted, with TOML-style quotes around segments that are not bare keys.
fn key_text(key: &[String]) -> String {
    if key.is_empty() {
        return "config".into();
    }
    let bare = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    let parts: Vec<String> = key
        .iter()
        .map(|s| if bare(s) { s.clone() } else { format!("{s:?}") })
        .collect();
    parts.join(".")
}

/// Figment messages (TOML parse errors in particular) can span lines; a problem is one line.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        // Drop the source-snippet lines of TOML parse errors (`|`, `1 | x =`, `  ^`).
        .filter(|l| {
            let numbered = l
                .split_once(" |")
                .is_some_and(|(n, _)| n.parse::<u32>().is_ok());
            !(l.is_empty() || l.starts_with(['|', '^']) || numbered)
        })
        .collect();
    lines.join("; ")
}

/// Hides `user:password@` in a URL before it is echoed in a message or dump.
fn redact_url(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    match url[start..end].rfind('@') {
        Some(at) => format!("{}***@{}", &url[..start], &url[start + at + 1..]),
        None => url.to_string(),
    }
}

/// Collects problems while validating one layered figment.
struct Loader {
    figment: Figment,
    /// The merged tree, tags intact, for looking up where a key's value came from.
    root: Value,
    /// File path as given (or [`STRING_SOURCE`]): the fallback source.
    label: String,
    problems: Vec<ConfigProblem>,
}

impl Loader {
    fn new(figment: Figment, label: String) -> Self {
        Loader {
            figment,
            root: Value::from(figment::value::Dict::new()),
            label,
            problems: vec![],
        }
    }

    fn run(mut self) -> Result<Config, ConfigErrors> {
        // A file that cannot be read or parsed breaks every key: report that alone.
        match self.figment.find_value("") {
            Ok(root) => self.root = root,
            Err(err) => {
                self.figment_errors(&[], err);
                return Err(ConfigErrors(self.problems));
            }
        }
        if let Some(dict) = self.root.as_dict() {
            let unknown: Vec<String> = dict
                .keys()
                .filter(|k| !SECTIONS.contains(&k.as_str()))
                .cloned()
                .collect();
            for name in unknown {
                let message = Kind::UnknownField(name.clone(), SECTIONS).to_string();
                self.problem(vec![name], message);
            }
        }

        let listen = self
            .section::<RawListen>("listen")
            .and_then(|l| self.listen(l));
        let pool = self.section::<RawPool>("pool");
        if let Some(pool) = &pool {
            self.pool(pool);
        }
        let dns = self.section::<RawDns>("dns").and_then(|d| self.dns(d));
        let tls = self.section::<RawTls>("tls").and_then(|t| self.tls(t));
        let log = self.section::<RawLog>("log").and_then(|l| self.log(l));
        let runtime = self
            .section::<RawRuntime>("runtime")
            .and_then(|r| self.runtime(r));
        let upstreams = self.upstreams(pool.as_ref());

        match (listen, pool, dns, tls, log, runtime, upstreams) {
            (
                Some(listen),
                Some(pool),
                Some(dns),
                Some(tls),
                Some(log),
                Some(runtime),
                Some(upstreams),
            ) if self.problems.is_empty() => Ok(Config {
                listen,
                max_connections: pool.max_connections,
                upstreams,
                dns,
                tls,
                log,
                runtime,
            }),
            _ => Err(ConfigErrors(self.problems)),
        }
    }

    fn problem(&mut self, key: Key, message: impl Into<String>) {
        let source = self.source(&key);
        self.problems.push(ConfigProblem {
            key: key_text(&key),
            source,
            message: message.into(),
        });
    }

    /// The value at `key` in the merged tree, walking segments (which may contain dots).
    fn value_at(&self, key: &[String]) -> Option<&Value> {
        key.iter()
            .try_fold(&self.root, |v, seg| v.as_dict()?.get(seg))
    }

    /// Where the value of `key` came from. An upstream override that is not set falls back to
    /// the `[pool]` key it inherits; anything else not found falls back to the file.
    fn source(&self, path: &[String]) -> String {
        let found = |k: &[String]| {
            let md = self.figment.get_metadata(self.value_at(k)?.tag())?;
            Some(self.describe(md, k))
        };
        if !path.is_empty()
            && let Some(source) = found(path)
        {
            return source;
        }
        if path.len() == 3
            && path[0] == "upstreams"
            && OVERRIDABLE.contains(&path[2].as_str())
            && let Some(source) = found(&key(&["pool", &path[2]]))
        {
            return source;
        }
        self.label.clone()
    }

    fn describe(&self, md: &Metadata, key: &[String]) -> String {
        match &md.source {
            Some(Source::File(_)) => self.label.clone(),
            Some(Source::Code(_)) => "default".into(),
            _ if md.name.contains("environment") => {
                let name: Vec<String> = key.iter().map(|s| s.to_ascii_uppercase()).collect();
                format!("env {ENV_PREFIX}{}", name.join("__"))
            }
            _ => self.label.clone(),
        }
    }

    /// Records every error in a figment error chain; `prefix` is the focused table's key.
    fn figment_errors(&mut self, prefix: &[&str], err: figment::Error) {
        for e in err {
            let mut path = e.path.clone();
            if prefix.is_empty() && path.first().is_some_and(|p| p == "default") {
                path.remove(0); // the profile name, not a key
            }
            let mut full = key(prefix);
            full.extend(path);
            // Name the missing key itself, not the table that lacks it.
            if let Kind::MissingField(field) = &e.kind
                && full.last().is_none_or(|last| last != field.as_ref())
            {
                full.push(field.to_string());
            }
            let mut message = one_line(&e.kind.to_string());
            if matches!(&e.kind, Kind::UnknownField(f, _) if f == "max_connections")
                && full.first().is_some_and(|s| s == "upstreams")
            {
                message.push_str("; max_connections is global; use max_connections_per_host");
            }
            let source = match (&e.metadata, full.is_empty()) {
                (Some(md), true) => self.describe(md, &full),
                _ => self.source(&full),
            };
            self.problems.push(ConfigProblem {
                key: key_text(&full),
                source,
                message,
            });
        }
    }

    /// Extracts one table on its own, so one bad section does not hide problems in the others.
    fn section<T: DeserializeOwned>(&mut self, name: &str) -> Option<T> {
        if let Some(v) = self
            .value_at(&[name.to_string()])
            .filter(|v| v.as_dict().is_none())
        {
            let message = Kind::InvalidType(v.to_actual(), "a table".into()).to_string();
            self.problem(vec![name.to_string()], message);
            return None;
        }
        match self.figment.focus(name).extract::<T>() {
            Ok(v) => Some(v),
            Err(err) => {
                let prefix: Vec<&str> = name.split('.').collect();
                self.figment_errors(&prefix, err);
                None
            }
        }
    }

    fn positive(&mut self, key: Key, d: Duration) {
        if d.is_zero() {
            self.problem(
                key,
                "must be greater than 0; use a duration such as \"250ms\" or \"30s\"",
            );
        }
    }

    fn socket_addr(&mut self, name: &str, value: &str) -> Option<SocketAddr> {
        match value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                let message = format!(
                    "invalid address `{value}`: expected IP:PORT such as 127.0.0.1:8080 \
                     (host names are not resolved here)"
                );
                self.problem(key(&["listen", name]), message);
                None
            }
        }
    }

    fn listen(&mut self, raw: RawListen) -> Option<ListenConfig> {
        self.positive(key(&["listen", "drain_timeout"]), raw.drain_timeout);
        self.positive(
            key(&["listen", "header_read_timeout"]),
            raw.header_read_timeout,
        );
        if raw.max_client_connections == 0 {
            self.problem(
                key(&["listen", "max_client_connections"]),
                "must be at least 1",
            );
        }
        let proxy = self.socket_addr("proxy", &raw.proxy);
        let admin = self.socket_addr("admin", &raw.admin);
        let (proxy, admin) = (proxy?, admin?);
        // Port 0 (any free port, used by tests) never collides; an unspecified IP binds every one.
        let overlap =
            proxy.ip() == admin.ip() || proxy.ip().is_unspecified() || admin.ip().is_unspecified();
        if proxy.port() == admin.port() && proxy.port() != 0 && overlap {
            let message = format!(
                "`{admin}` collides with listen.proxy `{proxy}`; give each listener its own port"
            );
            self.problem(key(&["listen", "admin"]), message);
        }
        Some(ListenConfig {
            proxy,
            admin,
            drain_timeout: raw.drain_timeout,
            header_read_timeout: raw.header_read_timeout,
            max_client_connections: raw.max_client_connections,
        })
    }

    fn pool(&mut self, raw: &RawPool) {
        for (name, value) in [
            ("max_connections", raw.max_connections),
            ("max_connections_per_host", raw.max_connections_per_host),
        ] {
            if value == 0 {
                self.problem(key(&["pool", name]), "must be at least 1");
            }
        }
        for (name, d) in [
            ("idle_timeout", raw.idle_timeout),
            ("connect_timeout", raw.connect_timeout),
            ("read_timeout", raw.read_timeout),
            ("request_timeout", raw.request_timeout),
            ("queue_timeout", raw.queue_timeout),
        ] {
            self.positive(key(&["pool", name]), d);
        }
    }

    fn dns(&mut self, raw: RawDns) -> Option<DnsConfig> {
        self.positive(key(&["dns", "max_ttl"]), raw.max_ttl);
        let mut static_hosts = HashMap::new();
        let mut ok = true;
        for (host, ip) in &raw.static_hosts {
            let k = key(&["dns", "static", host]);
            match ip.parse::<IpAddr>() {
                Ok(addr) => {
                    // Host names are case-insensitive: two spellings must agree.
                    if let Some(prev) = static_hosts.insert(host.to_ascii_lowercase(), addr)
                        && prev != addr
                    {
                        let message = format!(
                            "`{host}` maps to {addr} but another spelling of it maps to {prev}; \
                             host names are case-insensitive, keep one entry"
                        );
                        self.problem(k, message);
                        ok = false;
                    }
                }
                Err(_) => {
                    let message =
                        format!("invalid IP address `{ip}`; use e.g. \"127.0.0.1\" or \"::1\"");
                    self.problem(k, message);
                    ok = false;
                }
            }
        }
        let mut nameservers = Vec::new();
        for text in &raw.nameservers {
            match parse_nameserver(text) {
                Some(addr) => nameservers.push(addr),
                None => {
                    let message = format!(
                        "invalid name server `{text}`: expected an IP address, optionally with a \
                         port, such as \"10.0.0.2\", \"10.0.0.2:5353\" or \"[fd00::2]:53\""
                    );
                    self.problem(key(&["dns", "nameservers"]), message);
                    ok = false;
                }
            }
        }
        ok.then_some(DnsConfig {
            max_ttl: raw.max_ttl,
            static_hosts,
            nameservers,
        })
    }

    fn tls(&mut self, raw: RawTls) -> Option<TlsConfig> {
        let mut ca_certs = Vec::new();
        let mut ok = true;
        for path in &raw.ca_files {
            match read_ca_file(path) {
                Ok(certs) => ca_certs.extend(certs),
                Err(message) => {
                    self.problem(key(&["tls", "ca_files"]), message);
                    ok = false;
                }
            }
        }
        ok.then_some(TlsConfig {
            ca_files: raw.ca_files,
            ca_certs,
        })
    }

    fn log(&mut self, raw: RawLog) -> Option<LogConfig> {
        let format = match raw.format.as_str() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            other => {
                self.problem(
                    key(&["log", "format"]),
                    format!("unknown log format `{other}`; use \"text\" or \"json\""),
                );
                None
            }
        };
        let level_ok = match tracing_subscriber::EnvFilter::try_new(&raw.level) {
            Ok(_) => true,
            Err(e) => {
                let message = format!(
                    "invalid log filter `{}`: {e}; use e.g. \"info\" or \"sidepool=debug,info\"",
                    raw.level
                );
                self.problem(key(&["log", "level"]), message);
                false
            }
        };
        let format = format?;
        level_ok.then_some(LogConfig {
            level: raw.level,
            format,
        })
    }

    fn runtime(&mut self, raw: RawRuntime) -> Option<RuntimeConfig> {
        if raw.busy_poll > MAX_BUSY_POLL {
            self.problem(
                key(&["runtime", "busy_poll"]),
                format!(
                    "{:?} is longer than the {:?} maximum; a window of about the upstream's response \
                     time (e.g. \"200us\" on a local network) gets the benefit, \"0s\" turns it off",
                    raw.busy_poll, MAX_BUSY_POLL
                ),
            );
            return None;
        }
        Some(RuntimeConfig {
            busy_poll: (!raw.busy_poll.is_zero()).then_some(raw.busy_poll),
        })
    }

    fn upstreams(&mut self, pool: Option<&RawPool>) -> Option<Vec<UpstreamConfig>> {
        let names: Vec<String> = match self.value_at(&key(&["upstreams"])) {
            None => Vec::new(),
            Some(Value::Dict(_, d)) => d.keys().cloned().collect(),
            Some(v) => {
                let message = Kind::InvalidType(v.to_actual(), "a table".into()).to_string();
                self.problem(key(&["upstreams"]), message);
                return None;
            }
        };
        if names.is_empty() {
            let message = "no upstreams configured; add one, e.g. [upstreams.bybit] \
                           url = \"https://api.bybit.com\"";
            self.problem(key(&["upstreams"]), message);
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for name in names {
            let valid_name = !name.is_empty()
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !valid_name {
                let message = format!(
                    "invalid upstream name `{name}`: use only lowercase letters, digits, '-' and '_' \
                     (it is the route prefix /<name>/)"
                );
                self.problem(key(&["upstreams", &name]), message);
                ok = false;
            }
            // focus() splits on dots, so such a name cannot be looked into (it is invalid anyway).
            if name.is_empty() || name.contains('.') {
                continue;
            }
            let raw = self.section::<RawUpstream>(&format!("upstreams.{name}"));
            // Checked even when [pool] is broken, so its url problems are not hidden.
            match raw.and_then(|raw| self.upstream(&name, raw, pool)) {
                Some(u) if valid_name => out.push(u),
                _ => ok = false,
            }
        }
        if let Some(pool) = pool {
            // Inherited per-host caps are checked once, on the [pool] key, not once per upstream.
            let inheriting = self.inheriting_upstreams();
            let over =
                pool.max_connections > 0 && pool.max_connections_per_host > pool.max_connections;
            if over && !inheriting.is_empty() {
                let message = format!(
                    "{} is more than pool.max_connections ({}) for upstreams {}; lower it or raise \
                     pool.max_connections",
                    pool.max_connections_per_host,
                    pool.max_connections,
                    inheriting.join(", ")
                );
                self.problem(key(&["pool", "max_connections_per_host"]), message);
            }
        }
        let mut seen: BTreeMap<(String, u16), String> = BTreeMap::new();
        for u in &out {
            if let Some(first) = seen.insert((u.host.clone(), u.port), u.name.clone()) {
                let addr = SocketAddrText(&u.host, u.port);
                let message = format!(
                    "upstreams `{first}` and `{}` both point at {addr}; forward-proxy mode could \
                     not choose between them: keep one",
                    u.name
                );
                self.problem(key(&["upstreams", &u.name, "url"]), message);
                ok = false;
            }
        }
        ok.then_some(out)
    }

    /// Names of upstreams (as far as they parsed) that do not override max_connections_per_host.
    fn inheriting_upstreams(&self) -> Vec<String> {
        let Some(Value::Dict(_, d)) = self.value_at(&key(&["upstreams"])) else {
            return Vec::new();
        };
        d.iter()
            .filter(|(_, v)| {
                v.as_dict()
                    .is_some_and(|t| !t.contains_key("max_connections_per_host"))
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Validates one upstream; without a valid `[pool]` it reports problems but builds nothing.
    fn upstream(
        &mut self,
        name: &str,
        raw: RawUpstream,
        pool: Option<&RawPool>,
    ) -> Option<UpstreamConfig> {
        let k = |field: &str| key(&["upstreams", name, field]);
        let mut ok = true;
        if let Some(cap) = raw.max_connections_per_host {
            if cap == 0 {
                self.problem(k("max_connections_per_host"), "must be at least 1");
                ok = false;
            } else if let Some(max) = pool.map(|p| p.max_connections)
                && max > 0
                && cap > max
            {
                let message = format!(
                    "{cap} is more than pool.max_connections ({max}); lower it or raise \
                     pool.max_connections"
                );
                self.problem(k("max_connections_per_host"), message);
                ok = false;
            }
        }
        for (field, d) in [
            ("idle_timeout", raw.idle_timeout),
            ("connect_timeout", raw.connect_timeout),
            ("read_timeout", raw.read_timeout),
            ("request_timeout", raw.request_timeout),
            ("queue_timeout", raw.queue_timeout),
        ] {
            if let Some(d) = d {
                ok &= !d.is_zero();
                self.positive(k(field), d);
            }
        }
        let target = match parse_upstream_url(&raw.url) {
            Ok(t) => Some(t),
            Err(messages) => {
                for m in messages {
                    self.problem(k("url"), m);
                }
                None
            }
        };
        let (target, pool) = (target?, pool?);
        let limits = Limits {
            max_connections_per_host: raw
                .max_connections_per_host
                .unwrap_or(pool.max_connections_per_host),
            idle_timeout: raw.idle_timeout.unwrap_or(pool.idle_timeout),
            connect_timeout: raw.connect_timeout.unwrap_or(pool.connect_timeout),
            read_timeout: raw.read_timeout.unwrap_or(pool.read_timeout),
            request_timeout: raw.request_timeout.unwrap_or(pool.request_timeout),
            queue_timeout: raw.queue_timeout.unwrap_or(pool.queue_timeout),
            max_waiting: raw.max_waiting.or(pool.max_waiting),
        };
        ok.then(|| UpstreamConfig {
            name: name.to_string(),
            tls: target.tls,
            host: target.host,
            port: target.port,
            authority: target.authority,
            limits,
        })
    }
}

/// `host:port`, with an IPv6 host bracketed.
/// `IP` (port 53) or `IP:PORT`; IPv6 with a port needs brackets.
fn parse_nameserver(text: &str) -> Option<SocketAddr> {
    let text = text.trim();
    text.parse::<SocketAddr>().ok().or_else(|| {
        let bare = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text);
        bare.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

struct SocketAddrText<'a>(&'a str, u16);

impl fmt::Display for SocketAddrText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.contains(':') {
            true => write!(f, "[{}]:{}", self.0, self.1),
            false => write!(f, "{}:{}", self.0, self.1),
        }
    }
}

/// What an upstream url contributes to [`UpstreamConfig`].
struct Target {
    tls: bool,
    host: String,
    port: u16,
    authority: String,
}

/// Parses `scheme://host[:port][/]`; returns every problem found, each a full message.
fn parse_upstream_url(url: &str) -> Result<Target, Vec<String>> {
    let shown = redact_url(url);
    let uri: http::Uri = url.parse().map_err(|e| {
        vec![format!(
            "invalid url `{shown}`: {e}; expected e.g. \"https://api.example.com\""
        )]
    })?;
    let mut errs = Vec::new();
    let tls = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => true,
        Some(s) if s.eq_ignore_ascii_case("http") => false,
        Some(s) => {
            errs.push(format!("url `{shown}` has scheme `{s}`; use http or https"));
            false
        }
        None => {
            errs.push(format!(
                "url `{shown}` has no scheme; write e.g. \"https://{shown}\""
            ));
            false
        }
    };
    let authority = uri.authority().filter(|a| !a.host().is_empty());
    if authority.is_none() {
        errs.push(format!(
            "url `{shown}` has no host; write e.g. \"https://api.example.com\""
        ));
    }
    if authority.is_some_and(|a| a.as_str().contains('@')) {
        errs.push(format!(
            "url `{shown}` contains userinfo (user@); credentials do not belong in the upstream url"
        ));
    }
    if authority.is_some_and(|a| a.port_u16() == Some(0)) {
        errs.push(format!(
            "url `{shown}` has port 0; give a real port or none"
        ));
    }
    if uri.query().is_some() || url.contains('#') {
        errs.push(format!(
            "url `{shown}` has a query or fragment; the upstream url takes none (send the query \
             with each request)"
        ));
    }
    let path = uri.path();
    if !(path.is_empty() || path == "/") {
        errs.push(format!(
            "url `{shown}` has the path `{path}`; a base path is not supported: use \
             scheme://host[:port] and put the full path in each request"
        ));
    }
    let Some(authority) = authority.filter(|_| errs.is_empty()) else {
        return Err(errs);
    };
    let raw_host = authority.host().to_ascii_lowercase();
    let mut host = raw_host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    // Canonical IP literals ("[0::1]" is "::1"), so equal addresses match and compare equal.
    if let Ok(ip) = host.parse::<IpAddr>() {
        host = ip.to_string();
    }
    let bracketed = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let default_port = if tls { 443 } else { 80 };
    let port = authority.port_u16().unwrap_or(default_port);
    let authority = if port == default_port {
        bracketed
    } else {
        format!("{bracketed}:{port}")
    };
    Ok(Target {
        tls,
        host,
        port,
        authority,
    })
}

/// Reads every certificate of a PEM file and checks that each is usable as a trust anchor.
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read CA file `{shown}`: {e}"))?;
    let mut certs = Vec::new();
    for item in iter {
        let cert = item.map_err(|e| format!("cannot read CA file `{shown}`: {e}"))?;
        // Parse now so a corrupt certificate fails `sidepool check`, not the first TLS connect.
        rustls::RootCertStore::empty()
            .add(cert.clone())
            .map_err(|e| {
                format!(
                    "CA file `{shown}`: certificate {} is not usable as a root: {e}",
                    certs.len() + 1
                )
            })?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(format!(
            "CA file `{shown}` holds no PEM certificate (expected a -----BEGIN CERTIFICATE----- block)"
        ));
    }
    Ok(certs)
}

// ---- effective-config dump ------------------------------------------------------------------------

#[derive(Serialize)]
struct View<'a> {
    listen: ListenView,
    pool: PoolView,
    dns: DnsView,
    tls: TlsView,
    log: LogView<'a>,
    runtime: RuntimeView,
    upstreams: BTreeMap<&'a str, UpstreamView>,
}

#[derive(Serialize)]
struct ListenView {
    proxy: String,
    admin: String,
    #[serde(with = "humantime_serde")]
    drain_timeout: Duration,
    #[serde(with = "humantime_serde")]
    header_read_timeout: Duration,
    max_client_connections: usize,
}

/// Only the global cap: every other pool key is shown resolved in each upstream.
#[derive(Serialize)]
struct PoolView {
    max_connections: usize,
}

#[derive(Serialize)]
struct DnsView {
    #[serde(with = "humantime_serde")]
    max_ttl: Duration,
    #[serde(rename = "static")]
    static_hosts: BTreeMap<String, String>,
    nameservers: Vec<String>,
}

#[derive(Serialize)]
struct TlsView {
    ca_files: Vec<String>,
}

#[derive(Serialize)]
struct LogView<'a> {
    level: &'a str,
    format: &'static str,
}

#[derive(Serialize)]
struct RuntimeView {
    #[serde(with = "humantime_serde")]
    busy_poll: Duration,
}

#[derive(Serialize)]
struct UpstreamView {
    url: String,
    max_connections_per_host: usize,
    #[serde(with = "humantime_serde")]
    idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    request_timeout: Duration,
    #[serde(with = "humantime_serde")]
    queue_timeout: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_waiting: Option<usize>,
}

impl Config {
    /// The effective configuration as TOML, every key present (per-upstream limits fully resolved),
    /// for `sidepool check`. `[pool]` shows only `max_connections`, the one pool key that is not
    /// per upstream. Upstream urls are rebuilt from scheme and authority, so no userinfo can appear.
    pub fn to_toml(&self) -> String {
        let upstreams = self
            .upstreams
            .iter()
            .map(|u| {
                let scheme = if u.tls { "https" } else { "http" };
                let l = u.limits;
                let view = UpstreamView {
                    url: redact_url(&format!("{scheme}://{}", u.authority)),
                    max_connections_per_host: l.max_connections_per_host,
                    idle_timeout: l.idle_timeout,
                    connect_timeout: l.connect_timeout,
                    read_timeout: l.read_timeout,
                    request_timeout: l.request_timeout,
                    queue_timeout: l.queue_timeout,
                    max_waiting: l.max_waiting,
                };
                (u.name.as_str(), view)
            })
            .collect();
        let view = View {
            listen: ListenView {
                proxy: self.listen.proxy.to_string(),
                admin: self.listen.admin.to_string(),
                drain_timeout: self.listen.drain_timeout,
                header_read_timeout: self.listen.header_read_timeout,
                max_client_connections: self.listen.max_client_connections,
            },
            pool: PoolView {
                max_connections: self.max_connections,
            },
            dns: DnsView {
                max_ttl: self.dns.max_ttl,
                static_hosts: self
                    .dns
                    .static_hosts
                    .iter()
                    .map(|(h, ip)| (h.clone(), ip.to_string()))
                    .collect(),
                nameservers: self.dns.nameservers.iter().map(|a| a.to_string()).collect(),
            },
            tls: TlsView {
                ca_files: self
                    .tls
                    .ca_files
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
            },
            log: LogView {
                level: &self.log.level,
                format: match self.log.format {
                    LogFormat::Text => "text",
                    LogFormat::Json => "json",
                },
            },
            runtime: RuntimeView {
                busy_poll: self.runtime.busy_poll.unwrap_or(Duration::ZERO),
            },
            upstreams,
        };
        toml::to_string(&view).unwrap_or_else(|e| format!("# cannot render the config: {e}\n"))
    }
}

#[cfg(test)]
// `Jail::expect_with` closures must return `figment::Result`, whose error is large.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    const MINIMAL: &str = "[upstreams.bybit]\nurl = \"https://api.bybit.com\"\n";

    fn problems(toml: &str) -> Vec<ConfigProblem> {
        match Config::from_toml_str(toml) {
            Ok(c) => panic!("expected problems, got {c:?}"),
            Err(e) => e.0,
        }
    }

    /// The single problem reported for `key`, failing if there is none or several.
    fn one<'a>(problems: &'a [ConfigProblem], key: &str) -> &'a ConfigProblem {
        let found: Vec<_> = problems.iter().filter(|p| p.key == key).collect();
        assert_eq!(found.len(), 1, "one problem for {key} in {problems:#?}");
        found[0]
    }

    fn upstream<'a>(c: &'a Config, name: &str) -> &'a UpstreamConfig {
        c.upstreams
            .iter()
            .find(|u| u.name == name)
            .expect("upstream present")
    }

    fn load_jailed(jail: &mut Jail, toml: &str) -> Result<Config, ConfigErrors> {
        jail.create_file("sidepool.toml", toml)
            .expect("write config");
        Config::load(Path::new("sidepool.toml"))
    }

    #[test]
    fn minimal_file_gets_every_default() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("SIDEPOOL_CONFIG", "elsewhere.toml"); // names the file; not a key
            let c = load_jailed(jail, MINIMAL).expect("valid");
            assert_eq!(c.listen.proxy, "127.0.0.1:8080".parse().unwrap());
            assert_eq!(c.listen.admin, "127.0.0.1:9901".parse().unwrap());
            assert_eq!(c.listen.drain_timeout, Duration::from_secs(30));
            assert_eq!(c.listen.header_read_timeout, Duration::from_secs(30));
            assert_eq!(c.max_connections, 100);
            assert_eq!(c.dns.max_ttl, Duration::from_secs(300));
            assert!(c.dns.static_hosts.is_empty());
            assert!(c.tls.ca_files.is_empty() && c.tls.ca_certs.is_empty());
            assert_eq!(c.log.level, "info");
            assert_eq!(c.log.format, LogFormat::Text);
            let u = upstream(&c, "bybit");
            let expected = Limits {
                max_connections_per_host: 30,
                idle_timeout: Duration::from_secs(30),
                connect_timeout: Duration::from_secs(10),
                read_timeout: Duration::from_secs(30),
                request_timeout: Duration::from_secs(60),
                queue_timeout: Duration::from_secs(5),
                max_waiting: None,
            };
            assert_eq!(u.limits, expected);
            assert!(c.dns.nameservers.is_empty());
            assert_eq!(c.listen.max_client_connections, 1024);
            assert_eq!(c.runtime.busy_poll, None, "busy polling is off by default");
            assert_eq!(c.min_idle_timeout(), Duration::from_secs(30));
            Ok(())
        });
    }

    #[test]
    fn file_values_and_overrides_apply_and_upstreams_are_sorted() {
        let c = Config::from_toml_str(
            r#"
            [listen]
            proxy = "0.0.0.0:18080"
            header_read_timeout = "2s"
            [pool]
            max_connections = 50
            idle_timeout = "20s"
            [dns.static]
            "API.Bybit.com" = "127.0.0.1"
            [log]
            level = "sidepool=debug,info"
            format = "json"
            [upstreams.okx]
            url = "https://www.okx.com"
            idle_timeout = "250ms"
            max_connections_per_host = 7
            [upstreams.bybit]
            url = "https://api.bybit.com"
            "#,
        )
        .expect("valid");
        let names: Vec<_> = c.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["bybit", "okx"]);
        assert_eq!(c.listen.proxy.port(), 18080);
        assert_eq!(c.listen.header_read_timeout, Duration::from_secs(2));
        assert_eq!(c.max_connections, 50);
        assert_eq!(
            upstream(&c, "bybit").limits.idle_timeout,
            Duration::from_secs(20)
        );
        let okx = upstream(&c, "okx").limits;
        assert_eq!(
            (okx.idle_timeout, okx.max_connections_per_host),
            (Duration::from_millis(250), 7)
        );
        assert_eq!(
            okx.connect_timeout,
            Duration::from_secs(10),
            "not overridden: inherited"
        );
        assert_eq!(c.min_idle_timeout(), Duration::from_millis(250));
        assert_eq!(
            c.dns.static_hosts["api.bybit.com"],
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn unknown_key_in_file_names_key_and_file() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            let err = load_jailed(jail, &format!("[pool]\nmax_totl = 3\n{MINIMAL}")).unwrap_err();
            let p = one(&err.0, "pool.max_totl");
            assert_eq!(p.source, "sidepool.toml");
            assert!(p.message.contains("unknown field: found `max_totl`"), "{p}");
            assert!(
                p.to_string()
                    .starts_with("sidepool.toml: pool.max_totl: unknown field")
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_top_level_key_is_reported() {
        let ps = problems(&format!("[pol]\nmax_connections = 3\n{MINIMAL}"));
        assert!(
            one(&ps, "pol")
                .message
                .contains("unknown field: found `pol`")
        );
    }

    #[test]
    fn unknown_key_in_upstream_and_global_cap_hint() {
        let ps = problems(
            "[upstreams.a]\nurl = \"https://a.example\"\nurll = 1\n\
             [upstreams.b]\nurl = \"https://b.example\"\nmax_connections = 5\n",
        );
        assert!(
            one(&ps, "upstreams.a.urll")
                .message
                .contains("unknown field: found `urll`")
        );
        let p = one(&ps, "upstreams.b.max_connections");
        assert!(
            p.message
                .contains("max_connections is global; use max_connections_per_host"),
            "{p}"
        );
        assert_eq!(p.source, STRING_SOURCE);
    }

    #[test]
    fn bad_duration_names_the_key() {
        let ps = problems(&format!("[pool]\nidle_timeout = \"30 parsecs\"\n{MINIMAL}"));
        let p = one(&ps, "pool.idle_timeout");
        assert!(p.message.contains("expected a duration"), "{p}");
        assert_eq!(ps.len(), 1);
    }

    #[test]
    fn zero_durations_and_caps_are_rejected() {
        let ps = problems(
            "[listen]\ndrain_timeout = \"0s\"\n[pool]\nmax_connections = 0\nqueue_timeout = \"0ms\"\n\
             [dns]\nmax_ttl = \"0s\"\n\
             [upstreams.a]\nurl = \"https://a.example\"\nread_timeout = \"0s\"\nmax_connections_per_host = 0\n",
        );
        for k in [
            "listen.drain_timeout",
            "pool.max_connections",
            "pool.queue_timeout",
            "dns.max_ttl",
            "upstreams.a.read_timeout",
            "upstreams.a.max_connections_per_host",
        ] {
            assert!(!one(&ps, k).message.is_empty());
        }
    }

    #[test]
    fn missing_url_names_the_url_key() {
        let ps = problems("[upstreams.a]\nidle_timeout = \"1s\"\n");
        assert!(
            one(&ps, "upstreams.a.url")
                .message
                .contains("missing field `url`")
        );
    }

    #[test]
    fn env_overrides_file_and_env_problems_name_the_variable() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("SIDEPOOL_LISTEN__PROXY", "127.0.0.1:18080");
            jail.set_env("SIDEPOOL_UPSTREAMS__BYBIT__MAX_CONNECTIONS_PER_HOST", "5");
            let toml = format!(
                "[listen]\nproxy = \"127.0.0.1:7000\"\n{MINIMAL}max_connections_per_host = 9\n"
            );
            let c = load_jailed(jail, &toml).expect("valid");
            assert_eq!(c.listen.proxy, "127.0.0.1:18080".parse().unwrap());
            assert_eq!(upstream(&c, "bybit").limits.max_connections_per_host, 5);

            jail.set_env("SIDEPOOL_POOL__MAX_CONNECTIONS", "0");
            jail.set_env("SIDEPOOL_DNS__MAX_TTL", "forever");
            let err = load_jailed(jail, &toml).unwrap_err();
            let p = one(&err.0, "pool.max_connections");
            assert_eq!(p.source, "env SIDEPOOL_POOL__MAX_CONNECTIONS");
            assert_eq!(
                p.to_string(),
                "env SIDEPOOL_POOL__MAX_CONNECTIONS: pool.max_connections: must be at least 1"
            );
            assert_eq!(
                one(&err.0, "dns.max_ttl").source,
                "env SIDEPOOL_DNS__MAX_TTL"
            );
            // Env and file problems side by side, each naming its own source.
            jail.set_env("SIDEPOOL_POOL__MAX_CONNECTIONS", "3");
            let err = load_jailed(jail, &format!("{toml}[log]\nformat = \"xml\"\n")).unwrap_err();
            let p = one(&err.0, "upstreams.bybit.max_connections_per_host");
            assert_eq!(
                p.source,
                "env SIDEPOOL_UPSTREAMS__BYBIT__MAX_CONNECTIONS_PER_HOST"
            );
            assert_eq!(one(&err.0, "log.format").source, "sidepool.toml");
            Ok(())
        });
    }

    #[test]
    fn unset_override_takes_the_source_of_the_pool_key() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("SIDEPOOL_POOL__IDLE_TIMEOUT", "5s");
            jail.create_file("sidepool.toml", MINIMAL)?;
            let figment = Figment::from(Serialized::defaults(RawDefaults::default()))
                .merge(Toml::file_exact("sidepool.toml"))
                .merge(Env::prefixed(ENV_PREFIX).split("__"));
            let mut loader = Loader::new(figment, "sidepool.toml".into());
            loader.root = loader.figment.find_value("")?;
            let source = |k: &[&str]| loader.source(&key(k));
            assert_eq!(
                source(&["upstreams", "bybit", "idle_timeout"]),
                "env SIDEPOOL_POOL__IDLE_TIMEOUT"
            );
            assert_eq!(source(&["upstreams", "bybit", "read_timeout"]), "default");
            assert_eq!(source(&["upstreams", "bybit", "url"]), "sidepool.toml");
            assert_eq!(source(&["upstreams", "bybit", "nope"]), "sidepool.toml");
            Ok(())
        });
    }

    #[test]
    fn stray_env_variable_is_an_unknown_key() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("SIDEPOOL_POOL__MAX_TOTAL", "5");
            let err = load_jailed(jail, MINIMAL).unwrap_err();
            assert_eq!(
                one(&err.0, "pool.max_total").source,
                "env SIDEPOOL_POOL__MAX_TOTAL"
            );
            Ok(())
        });
    }

    #[test]
    fn per_host_cap_above_max_connections() {
        // Explicit override: reported on the upstream key.
        let ps = problems(&format!(
            "[pool]\nmax_connections = 10\n{MINIMAL}max_connections_per_host = 11\n"
        ));
        let p = one(&ps, "upstreams.bybit.max_connections_per_host");
        assert!(
            p.message.contains("more than pool.max_connections (10)"),
            "{p}"
        );
        // Inherited default (30 > 10): reported once, on the pool key, naming who inherits it.
        let ps = problems(&format!("[pool]\nmax_connections = 10\n{MINIMAL}"));
        let p = one(&ps, "pool.max_connections_per_host");
        assert!(p.message.contains("bybit") && p.source == "default", "{p}");
        // Nobody inherits the pool value: fine.
        let ok = Config::from_toml_str(&format!(
            "[pool]\nmax_connections = 10\n{MINIMAL}max_connections_per_host = 10\n"
        ));
        assert!(ok.is_ok());
    }

    #[test]
    fn duplicate_host_port_names_both() {
        let ps = problems(
            "[upstreams.one]\nurl = \"https://API.example.com\"\n\
             [upstreams.two]\nurl = \"https://api.example.com:443/\"\n\
             [upstreams.three]\nurl = \"http://api.example.com\"\n",
        );
        let p = one(&ps, "upstreams.two.url");
        assert_eq!(ps.len(), 1, "{ps:#?}");
        assert!(
            p.message.contains("`one` and `two`") && p.message.contains("api.example.com:443"),
            "{p}"
        );
    }

    #[test]
    fn duplicate_ipv6_with_explicit_port() {
        let ps = problems(
            "[upstreams.a]\nurl = \"https://[::1]:8443\"\n[upstreams.b]\nurl = \"https://[0::1]:8443\"\n",
        );
        assert!(
            one(&ps, "upstreams.b.url")
                .message
                .contains("`a` and `b` both point at [::1]:8443")
        );
    }

    #[test]
    fn bad_urls_are_explained() {
        let ps = problems(
            "[upstreams.ftp]\nurl = \"ftp://files.example.com\"\n\
             [upstreams.query]\nurl = \"https://q.example.com?x=1\"\n\
             [upstreams.path]\nurl = \"https://p.example.com/v5\"\n\
             [upstreams.nohost]\nurl = \"http://:80\"\n\
             [upstreams.noscheme]\nurl = \"s.example.com\"\n\
             [upstreams.user]\nurl = \"https://bob:hunter2@u.example.com\"\n\
             [upstreams.garbage]\nurl = \"https://exa mple.com\"\n",
        );
        assert!(
            one(&ps, "upstreams.ftp.url")
                .message
                .contains("scheme `ftp`")
        );
        assert!(one(&ps, "upstreams.query.url").message.contains("query"));
        assert!(
            one(&ps, "upstreams.path.url")
                .message
                .contains("base path is not supported")
        );
        assert!(one(&ps, "upstreams.nohost.url").message.contains("no host"));
        assert!(
            one(&ps, "upstreams.noscheme.url")
                .message
                .contains("no scheme")
        );
        let p = one(&ps, "upstreams.user.url");
        assert!(
            p.message.contains("userinfo") && !p.message.contains("hunter2"),
            "{p}"
        );
        assert!(
            one(&ps, "upstreams.garbage.url")
                .message
                .contains("invalid url")
        );
    }

    #[test]
    fn upstream_names_must_be_route_safe() {
        let ps = problems(
            "[upstreams.Bybit]\nurl = \"https://a.example\"\n[upstreams.\"a/b\"]\nurl = \"https://b.example\"\n",
        );
        assert!(
            one(&ps, "upstreams.Bybit")
                .message
                .contains("invalid upstream name")
        );
        assert!(
            one(&ps, "upstreams.\"a/b\"")
                .message
                .contains("invalid upstream name")
        );
        assert!(Config::from_toml_str("[upstreams.a-1_b]\nurl = \"https://a.example\"\n").is_ok());
    }

    #[test]
    fn no_upstreams_is_a_problem() {
        let ps = problems("");
        assert!(
            one(&ps, "upstreams")
                .message
                .contains("no upstreams configured")
        );
    }

    #[test]
    fn bad_static_ip() {
        let ps = problems(&format!(
            "[dns.static]\n\"api.example.com\" = \"10.0.0.300\"\n{MINIMAL}"
        ));
        let p = one(&ps, "dns.static.\"api.example.com\"");
        assert!(p.message.contains("invalid IP address `10.0.0.300`"), "{p}");
        assert_eq!(p.source, STRING_SOURCE);
    }

    #[test]
    fn nameservers_take_an_ip_with_an_optional_port() {
        let c = Config::from_toml_str(&format!(
            "[dns]\nnameservers = [\"10.0.0.2\", \"127.0.0.1:5353\", \"[fd00::2]:54\", \"fd00::3\"]\n{MINIMAL}"
        ))
        .unwrap();
        let expected: Vec<SocketAddr> = [
            "10.0.0.2:53",
            "127.0.0.1:5353",
            "[fd00::2]:54",
            "[fd00::3]:53",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        assert_eq!(c.dns.nameservers, expected);
        assert!(
            c.to_toml().contains("nameservers = [\"10.0.0.2:53\""),
            "{}",
            c.to_toml()
        );
        let ps = problems(&format!("[dns]\nnameservers = [\"dns.google\"]\n{MINIMAL}"));
        let p = one(&ps, "dns.nameservers");
        assert!(
            p.message.contains("invalid name server `dns.google`"),
            "{p}"
        );
    }

    #[test]
    fn max_waiting_is_unset_by_default_and_overridable_per_upstream() {
        let c = Config::from_toml_str(&format!(
            "[pool]\nmax_waiting = 50\n{MINIMAL}[upstreams.okx]\nurl = \"https://www.okx.com\"\nmax_waiting = 0\n"
        ))
        .unwrap();
        assert_eq!(upstream(&c, "bybit").limits.max_waiting, Some(50));
        assert_eq!(upstream(&c, "okx").limits.max_waiting, Some(0));
        let shown = c.to_toml();
        assert!(
            shown.contains("max_waiting = 50") && shown.contains("max_waiting = 0"),
            "{shown}"
        );
        let unset = Config::from_toml_str(MINIMAL).unwrap();
        assert_eq!(upstream(&unset, "bybit").limits.max_waiting, None);
        assert!(!unset.to_toml().contains("max_waiting"));
    }

    #[test]
    fn busy_poll_is_a_window_up_to_one_second_and_zero_turns_it_off() {
        let on = Config::from_toml_str(&format!("[runtime]\nbusy_poll = \"250us\"\n{MINIMAL}"))
            .expect("valid");
        assert_eq!(on.runtime.busy_poll, Some(Duration::from_micros(250)));
        assert!(on.to_toml().contains("[runtime]\nbusy_poll = \"250us\""));
        let off = Config::from_toml_str(&format!("[runtime]\nbusy_poll = \"0s\"\n{MINIMAL}"))
            .expect("valid");
        assert_eq!(off.runtime.busy_poll, None);
        let ps = problems(&format!("[runtime]\nbusy_poll = \"2s\"\n{MINIMAL}"));
        let p = one(&ps, "runtime.busy_poll");
        assert!(
            p.message.contains("longer than the 1s maximum"),
            "{}",
            p.message
        );
        let ps = problems(&format!("[runtime]\nbusy_wait = \"1ms\"\n{MINIMAL}"));
        assert!(
            one(&ps, "runtime.busy_wait")
                .message
                .contains("unknown field")
        );
    }

    #[test]
    fn client_connection_cap_must_be_positive() {
        let ps = problems(&format!("[listen]\nmax_client_connections = 0\n{MINIMAL}"));
        assert!(
            one(&ps, "listen.max_client_connections")
                .message
                .contains("at least 1")
        );
    }

    #[test]
    fn listen_addresses_must_parse_and_differ() {
        let ps = problems(&format!("[listen]\nproxy = \"localhost:8080\"\n{MINIMAL}"));
        assert!(
            one(&ps, "listen.proxy")
                .message
                .contains("expected IP:PORT")
        );
        let ps = problems(&format!(
            "[listen]\nproxy = \"0.0.0.0:9000\"\nadmin = \"127.0.0.1:9000\"\n{MINIMAL}"
        ));
        assert!(
            one(&ps, "listen.admin")
                .message
                .contains("collides with listen.proxy")
        );
        // Port 0 means "any free port": both may use it (tests do).
        let ok = Config::from_toml_str(&format!(
            "[listen]\nproxy = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{MINIMAL}"
        ));
        assert!(ok.is_ok());
    }

    #[test]
    fn log_settings_are_checked() {
        let ps = problems(&format!(
            "[log]\nlevel = \"sidepool=loud\"\nformat = \"xml\"\n{MINIMAL}"
        ));
        assert!(one(&ps, "log.level").message.contains("invalid log filter"));
        assert!(
            one(&ps, "log.format")
                .message
                .contains("use \"text\" or \"json\"")
        );
    }

    #[test]
    fn ca_files_missing_empty_and_valid() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            let cert =
                rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
            jail.create_file("ca.pem", &cert.cert.pem())?;
            jail.create_file("empty.pem", "not a certificate\n")?;
            let toml = format!(
                "[tls]\nca_files = [\"ca.pem\", \"missing.pem\", \"empty.pem\"]\n{MINIMAL}"
            );
            let err = load_jailed(jail, &toml).unwrap_err();
            let msgs: Vec<_> = err
                .0
                .iter()
                .filter(|p| p.key == "tls.ca_files")
                .map(|p| &p.message)
                .collect();
            assert_eq!(msgs.len(), 2, "{err}");
            assert!(
                msgs[0].contains("cannot read CA file `missing.pem`"),
                "{}",
                msgs[0]
            );
            assert!(
                msgs[1].contains("`empty.pem` holds no PEM certificate"),
                "{}",
                msgs[1]
            );

            let c = load_jailed(jail, &format!("[tls]\nca_files = [\"ca.pem\"]\n{MINIMAL}"))
                .expect("valid");
            assert_eq!(c.tls.ca_certs.len(), 1);
            assert_eq!(c.tls.ca_certs[0].as_ref(), cert.cert.der().as_ref());
            Ok(())
        });
    }

    #[test]
    fn several_problems_are_reported_together_one_line_each() {
        let err = Config::from_toml_str(
            "[listen]\nadmin = \"nope\"\n[pool]\nmax_totl = 1\n[log]\nformat = \"xml\"\n\
             [dns.static]\nx = \"y\"\n[upstreams.a]\nurl = \"ftp://a\"\n",
        )
        .unwrap_err();
        for k in [
            "listen.admin",
            "pool.max_totl",
            "log.format",
            "dns.static.x",
            "upstreams.a.url",
        ] {
            one(&err.0, k);
        }
        let text = err.to_string();
        assert_eq!(text.lines().count(), err.0.len());
        assert!(text.lines().all(|l| l.starts_with("toml: ")), "{text}");
    }

    #[test]
    fn toml_syntax_error_is_one_line() {
        let ps = problems("[pool\nmax_connections = 1\n");
        assert_eq!(ps.len(), 1);
        assert_eq!(ps[0].key, "config");
        assert!(
            ps[0].message.contains("line 1") && !ps[0].message.contains('\n'),
            "{}",
            ps[0]
        );
    }

    #[test]
    fn missing_config_file() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_dir("sub")?;
            // Toml::file would have found this one in the parent directory.
            jail.create_file("sidepool.toml", MINIMAL)?;
            jail.change_dir("sub")?;
            let err = Config::load(Path::new("sidepool.toml")).unwrap_err();
            assert_eq!(err.0.len(), 1);
            assert_eq!(err.0[0].key, "config");
            assert!(
                err.0[0].message.contains("`sidepool.toml` not found"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn authority_and_port_derivation() {
        let c = Config::from_toml_str(
            "[upstreams.a]\nurl = \"https://API.Example.com\"\n\
             [upstreams.b]\nurl = \"https://b.example.com:8443/\"\n\
             [upstreams.c]\nurl = \"http://c.example.com\"\n\
             [upstreams.d]\nurl = \"https://[2001:DB8::1]:9443\"\n\
             [upstreams.e]\nurl = \"http://[::1]\"\n",
        )
        .expect("valid");
        let got = |n: &str| {
            let u = upstream(&c, n);
            (u.tls, u.host.as_str(), u.port, u.authority.as_str())
        };
        assert_eq!(got("a"), (true, "api.example.com", 443, "api.example.com"));
        assert_eq!(
            got("b"),
            (true, "b.example.com", 8443, "b.example.com:8443")
        );
        assert_eq!(got("c"), (false, "c.example.com", 80, "c.example.com"));
        assert_eq!(got("d"), (true, "2001:db8::1", 9443, "[2001:db8::1]:9443"));
        assert_eq!(got("e"), (false, "::1", 80, "[::1]"));
    }

    #[test]
    fn to_toml_is_complete_and_round_trips() {
        let c = Config::from_toml_str(&format!(
            "[pool]\nidle_timeout = \"1m\"\n[dns.static]\n\"a.example\" = \"::1\"\n\
             {MINIMAL}queue_timeout = \"250ms\"\n[upstreams.alt]\nurl = \"http://[::1]:81\"\n"
        ))
        .expect("valid");
        let text = c.to_toml();
        for needle in [
            "proxy = \"127.0.0.1:8080\"",
            "header_read_timeout = \"30s\"",
            "max_connections = 100",
            "\"a.example\" = \"::1\"",
            "format = \"text\"",
            "url = \"https://api.bybit.com\"",
            "idle_timeout = \"1m\"",
            "queue_timeout = \"250ms\"",
            "url = \"http://[::1]:81\"",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        let again = Config::from_toml_str(&text).expect("the dump is a valid config");
        assert_eq!(again.to_toml(), text);
        assert_eq!(
            upstream(&again, "bybit").limits,
            upstream(&c, "bybit").limits
        );
    }

    #[test]
    fn redact_url_hides_userinfo_only() {
        assert_eq!(
            redact_url("https://u:p@h.example:1/x@y"),
            "https://***@h.example:1/x@y"
        );
        assert_eq!(redact_url("https://h.example/a@b"), "https://h.example/a@b");
    }
}
