//! Address lookups through hickory-resolver, cached per upstream for min(record TTL,
//! `dns.max_ttl`); failures are cached briefly so a dead DNS server is not hammered.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::time::Instant;

use crate::metrics::DnsResult;

/// How long a failed lookup is remembered.
const NEGATIVE_TTL: Duration = Duration::from_secs(1);

/// The shared resolver (system configuration from `/etc/resolv.conf`).
pub struct Resolver {
    inner: TokioResolver,
    max_ttl: Duration,
}

impl Resolver {
    /// Reads the system configuration; without one, only `/etc/hosts`, IP literals and
    /// `dns.static` resolve (and a warning says so).
    pub fn new(max_ttl: Duration) -> Resolver {
        let mut builder = match TokioResolver::builder_tokio() {
            Ok(builder) => builder,
            Err(err) => {
                tracing::warn!(error = %err, "no usable system DNS configuration; only dns.static, /etc/hosts and IP literals will resolve");
                TokioResolver::builder_with_config(
                    ResolverConfig::default(),
                    TokioRuntimeProvider::default(),
                )
            }
        };
        let options = builder.options_mut();
        // Both families, IPv4 first: every address is tried in turn.
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.positive_max_ttl = Some(max_ttl);
        options.negative_max_ttl = Some(NEGATIVE_TTL);
        let inner = match builder.build() {
            Ok(resolver) => resolver,
            Err(err) => {
                tracing::warn!(error = %err, "DNS resolver setup failed; falling back to an empty configuration");
                TokioResolver::builder_with_config(
                    ResolverConfig::default(),
                    TokioRuntimeProvider::default(),
                )
                .build()
                .expect("a resolver with an empty configuration always builds")
            }
        };
        Resolver { inner, max_ttl }
    }
}

#[derive(Clone)]
struct Entry {
    result: Result<Arc<[IpAddr]>, String>,
    expires: Instant,
}

/// The cached answer for one upstream host.
#[derive(Default)]
pub struct DnsCache {
    entry: Mutex<Option<Entry>>,
}

impl DnsCache {
    /// The addresses of `host`, from the cache while fresh, else from DNS.
    pub async fn lookup(
        &self,
        resolver: &Resolver,
        host: &str,
    ) -> (Result<Arc<[IpAddr]>, String>, DnsResult) {
        let now = Instant::now();
        if let Some(entry) = self.cached(now) {
            return (entry.result, DnsResult::Hit);
        }
        let entry = match resolver.inner.lookup_ip(host).await {
            Ok(lookup) => {
                let addrs: Arc<[IpAddr]> = lookup.iter().collect();
                let ttl = lookup
                    .valid_until()
                    .saturating_duration_since(std::time::Instant::now())
                    .min(resolver.max_ttl);
                if addrs.is_empty() {
                    Entry {
                        result: Err(format!("DNS lookup of {host} returned no addresses")),
                        expires: now + NEGATIVE_TTL,
                    }
                } else {
                    Entry {
                        result: Ok(addrs),
                        expires: now + ttl,
                    }
                }
            }
            Err(err) => Entry {
                result: Err(format!(
                    "DNS lookup of {host} failed: {err}; check the upstream url, the DNS setup, or pin an address in dns.static"
                )),
                expires: now + NEGATIVE_TTL.min(resolver.max_ttl),
            },
        };
        let result = entry.result.clone();
        *self.entry.lock().unwrap_or_else(|p| p.into_inner()) = Some(entry);
        (result, DnsResult::Miss)
    }

    fn cached(&self, now: Instant) -> Option<Entry> {
        let guard = self.entry.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().filter(|entry| entry.expires > now).cloned()
    }
}
