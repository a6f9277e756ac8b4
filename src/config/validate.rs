//! The rule for every section: each reads its raw table and returns its validated value, or
//! records one problem per broken rule and returns `None`.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use figment::{error::Kind, value::Value};

use rustls::pki_types::{CertificateDer, pem::PemObject};

use super::limits::{AT_LEAST_ONE, POSITIVE};
use super::load::{Key, Loader, key};
use super::raw::{
    self, RawDns, RawIntercept, RawListen, RawLog, RawPool, RawRateLimit, RawRuntime, RawTls,
    RawUpstream,
};
use super::url::{SocketAddrText, parse_nameserver, parse_upstream_url};
use super::{
    Config, DnsConfig, InterceptConfig, Limits, ListenConfig, LogConfig, LogFormat, MAX_BUSY_POLL,
    RuntimeConfig, TlsConfig, UpstreamConfig,
};

impl Loader {
    /// Every section, each checked even when another is broken, so all problems show at once.
    pub(super) fn sections(&mut self) -> Option<Config> {
        let listen = self
            .section::<RawListen>("listen")
            .and_then(|l| self.listen(l));
        let pool = self.pool();
        let dns = self.section::<RawDns>("dns").and_then(|d| self.dns(d));
        let tls = self.section::<RawTls>("tls").and_then(|t| self.tls(t));
        let log = self.section::<RawLog>("log").and_then(|l| self.log(l));
        let runtime = self
            .section::<RawRuntime>("runtime")
            .and_then(|r| self.runtime(r));
        let intercept = self
            .section::<RawIntercept>("intercept")
            .and_then(|i| self.intercept(i));
        let rate_limit = self
            .section::<RawRateLimit>("rate_limit")
            .and_then(|r| self.rate_limit_section(r));
        let upstreams = self.upstreams(pool.as_ref());
        let (max_connections, _) = pool?;
        Some(Config {
            listen: listen?,
            max_connections,
            upstreams: upstreams?,
            dns: dns?,
            tls: tls?,
            log: log?,
            runtime: runtime?,
            intercept: intercept?,
            rate_limit: rate_limit?,
            warnings: Vec::new(),
            notes: Vec::new(),
        })
    }

    fn positive(&mut self, key: Key, d: Duration) {
        if d.is_zero() {
            self.problem(key, POSITIVE);
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
        // Valid (a container shares its network namespace this way), but the proxy has no
        // authentication, so the operator should know who can reach it.
        if !proxy.ip().is_loopback() {
            let warning = format!(
                "`{proxy}` is not a loopback address and the proxy has no authentication: \
                 whoever can reach it can send requests to every configured upstream; bind \
                 127.0.0.1 unless a firewall or a shared network namespace limits who can"
            );
            let found = self.finding(key(&["listen", "proxy"]), warning);
            self.warnings.push(found);
        }
        Some(ListenConfig {
            proxy,
            admin,
            drain_timeout: raw.drain_timeout,
            header_read_timeout: raw.header_read_timeout,
            max_client_connections: raw.max_client_connections,
            server_timing: raw.server_timing,
        })
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

    fn intercept(&mut self, raw: RawIntercept) -> Option<InterceptConfig> {
        if raw.ca_dir.as_os_str().is_empty() {
            self.problem(
                key(&["intercept", "ca_dir"]),
                "must not be empty; give the folder for ca.pem and ca.key, e.g. \"/var/lib/sidepool/ca\"",
            );
            return None;
        }
        Some(InterceptConfig {
            enabled: raw.enabled,
            ca_dir: raw.ca_dir,
        })
    }

    /// `[pool]`: the global cap and the limits every upstream inherits.
    fn pool(&mut self) -> Option<(usize, Limits)> {
        let (own, limits, _) =
            self.split_table::<RawPool>(&["pool"], raw::pool_keys(), &Limits::default())?;
        if let Some(own) = &own
            && own.max_connections == 0
        {
            self.problem(key(&["pool", "max_connections"]), AT_LEAST_ONE);
        }
        if let Some(limits) = &limits {
            for (name, message) in limits.problems() {
                self.problem(key(&["pool", name]), message);
            }
        }
        Some((own?.max_connections, limits?))
    }

    fn upstreams(&mut self, pool: Option<&(usize, Limits)>) -> Option<Vec<UpstreamConfig>> {
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
            // Checked even when [pool] is broken, so its url problems are not hidden.
            match self.upstream(&name, pool) {
                Some(u) if valid_name => out.push(u),
                _ => ok = false,
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

    /// Validates one upstream: its own keys, and `[pool]` with its overrides laid over it (the
    /// built-in defaults when `[pool]` is broken, so its own problems are still found). A rule
    /// broken by an inherited value is reported once, on the `[pool]` key.
    fn upstream(&mut self, name: &str, pool: Option<&(usize, Limits)>) -> Option<UpstreamConfig> {
        let k = |field: &str| key(&["upstreams", name, field]);
        let base = pool.map_or_else(Limits::default, |(_, limits)| *limits);
        let (own, limits, set) =
            self.split_table::<RawUpstream>(&["upstreams", name], raw::upstream_keys(), &base)?;
        let mut limits = limits?;
        let mut ok = true;
        for (field, message) in limits.problems() {
            if set.contains_key(field) {
                self.problem(k(field), message);
                ok = false;
            }
        }
        let own = own?;
        let warm_probe = match own.warm_probe.as_str() {
            "" => None,
            path if valid_probe_path(path) => Some(path.to_string()),
            _ => {
                let message =
                    "must be a path starting with '/' (an optional ?query), no spaces or \
                               fragment, e.g. \"/v5/market/time\"; empty for no probe"
                        .to_string();
                self.problem(k("warm_probe"), message);
                ok = false;
                None
            }
        };
        let target = match parse_upstream_url(&own.url) {
            Ok(t) => Some(t),
            Err(messages) => {
                for m in messages {
                    self.problem(k("url"), m);
                }
                None
            }
        };
        let (target, (max_connections, _)) = (target?, pool?);
        let rate_limit = self.rate_limit(name, &own, &target.host);
        // The caps are independent bounds: a per-host cap above the global one is reached
        // never, so the effective cap is the smaller one (and the metrics report that).
        if limits.max_connections_per_host > *max_connections {
            let note = format!(
                "{} is above pool.max_connections; the effective cap is {max_connections}",
                limits.max_connections_per_host
            );
            let found = self.finding(k("max_connections_per_host"), note);
            self.notes.push(found);
            limits.max_connections_per_host = *max_connections;
        }
        if limits.warm_connections > limits.max_connections_per_host {
            let note = format!(
                "{} is above the effective per-host cap; {} connections are kept warm",
                limits.warm_connections, limits.max_connections_per_host
            );
            let found = self.finding(k("warm_connections"), note);
            self.notes.push(found);
            limits.warm_connections = limits.max_connections_per_host;
        }
        let rate_limit = rate_limit?;
        ok.then(|| UpstreamConfig {
            name: name.to_string(),
            tls: target.tls,
            host: target.host,
            port: target.port,
            authority: target.authority,
            limits,
            prewarm: own.prewarm,
            warm_probe,
            rate_limit,
        })
    }
}

/// A probe path is sent as written, so it must be a valid origin-form request target: `/`,
/// then visible ASCII with no fragment.
fn valid_probe_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains('#')
        && path.bytes().all(|b| b.is_ascii_graphic())
        && path.parse::<http::uri::PathAndQuery>().is_ok()
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
