//! The effective configuration as TOML, for `sidepool check`: the validated config written back
//! through the same `raw` structs the file is read with, so the dump has every key the file may
//! have, and is itself a valid config that loads to the same values.

use std::time::Duration;

use super::raw::{
    RawConfig, RawDns, RawIntercept, RawListen, RawLog, RawPool, RawPriorityRule, RawRateLimit,
    RawRuntime, RawTls, RawUpstream, WithLimits,
};
use super::url::redact_url;
use super::{Config, LogFormat};

impl Config {
    /// The effective configuration as TOML, every key present (per-upstream limits fully
    /// resolved, per-host caps at their effective value), for `sidepool check`. `[pool]` shows
    /// only `max_connections`, the one pool key that is not per upstream. Upstream urls are
    /// rebuilt from scheme and authority, so no userinfo can appear.
    pub fn to_toml(&self) -> String {
        let upstreams = self
            .upstreams
            .iter()
            .map(|u| {
                let scheme = if u.tls { "https" } else { "http" };
                let own = RawUpstream {
                    url: redact_url(&format!("{scheme}://{}", u.authority)),
                    prewarm: u.prewarm,
                    warm_probe: u.warm_probe.clone().unwrap_or_default(),
                    rate_limit: u.rate_limit.profile.name.to_string(),
                    rate_limit_budget: u
                        .rate_limit
                        .budget
                        .map(|b| b.to_string())
                        .unwrap_or_default(),
                    priority_rules: u
                        .rate_limit
                        .rules
                        .iter()
                        .map(|r| RawPriorityRule {
                            method: r.method.clone().unwrap_or_default(),
                            prefix: r.prefix.clone(),
                            class: r.class.as_str().to_string(),
                        })
                        .collect(),
                };
                let table = WithLimits {
                    own,
                    limits: u.limits,
                };
                (u.name.clone(), table)
            })
            .collect();
        let view = RawConfig {
            listen: RawListen {
                proxy: self.listen.proxy.to_string(),
                admin: self.listen.admin.to_string(),
                drain_timeout: self.listen.drain_timeout,
                header_read_timeout: self.listen.header_read_timeout,
                max_client_connections: self.listen.max_client_connections,
                server_timing: self.listen.server_timing,
            },
            pool: RawPool {
                max_connections: self.max_connections,
            },
            dns: RawDns {
                max_ttl: self.dns.max_ttl,
                static_hosts: self
                    .dns
                    .static_hosts
                    .iter()
                    .map(|(h, ip)| (h.clone(), ip.to_string()))
                    .collect(),
                nameservers: self.dns.nameservers.iter().map(|a| a.to_string()).collect(),
            },
            tls: RawTls {
                ca_files: self.tls.ca_files.clone(),
            },
            log: RawLog {
                level: self.log.level.clone(),
                format: match self.log.format {
                    LogFormat::Text => "text",
                    LogFormat::Json => "json",
                }
                .into(),
            },
            runtime: RawRuntime {
                busy_poll: self.runtime.busy_poll.unwrap_or(Duration::ZERO),
            },
            intercept: RawIntercept {
                enabled: self.intercept.enabled,
                ca_dir: self.intercept.ca_dir.clone(),
            },
            rate_limit: RawRateLimit {
                store: self
                    .rate_limit
                    .redis_url
                    .as_deref()
                    .map_or_else(|| "memory".to_string(), redact_url),
                key: self.rate_limit.key.clone(),
                timeout: self.rate_limit.timeout,
                fallback_share: self.rate_limit.fallback_share,
            },
            upstreams,
        };
        toml::to_string(&view).unwrap_or_else(|e| format!("# cannot render the config: {e}\n"))
    }
}
