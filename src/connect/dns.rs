//! Address lookups through hickory-resolver, cached per upstream for min(record TTL,
//! `dns.max_ttl`); failures are cached briefly so a dead DNS server is not hammered.
//!
//! Each cache also keeps the upstream's current address set with an epoch that changes when
//! the set does, so connections to an address that left the answer can be retired.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::time::Instant;

use crate::metrics::DnsResult;

/// How long a failed lookup is remembered.
const NEGATIVE_TTL: Duration = Duration::from_secs(1);
/// How long after the resolver's cached answer expires ours does.
const RESOLVER_CACHE_MARGIN: Duration = Duration::from_millis(20);

/// The shared resolver: `dns.nameservers` when configured, else the system configuration
/// from `/etc/resolv.conf`.
pub struct Resolver {
    inner: TokioResolver,
    max_ttl: Duration,
}

impl Resolver {
    /// With `nameservers`, asks only those (UDP, falling back to TCP for long answers).
    /// Otherwise reads the system configuration; without one, only `/etc/hosts`, IP literals
    /// and `dns.static` resolve (and a warning says so).
    pub fn new(max_ttl: Duration, nameservers: &[SocketAddr]) -> Resolver {
        let configured = (!nameservers.is_empty()).then(|| {
            let servers = nameservers
                .iter()
                .map(|addr| {
                    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                    for connection in &mut server.connections {
                        connection.port = addr.port();
                    }
                    server
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        });
        let mut builder = match configured.map_or_else(TokioResolver::builder_tokio, Ok) {
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
    current: Arc<Addresses>,
    /// Woken when an answer is stored (for the refresher).
    stored: tokio::sync::Notify,
}

/// The last successful answer and its epoch. Failures never change it: a DNS outage must not
/// retire connections that work.
#[derive(Default)]
pub struct Addresses {
    epoch: AtomicU64,
    set: Mutex<Option<Arc<[IpAddr]>>>,
}

impl Addresses {
    /// Changes whenever the address set changes.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// True when `ip` is in the current set (or no answer is known yet).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        set.as_ref().is_none_or(|set| set.contains(&ip))
    }

    /// Stores `addrs`; true when they replace a different set (the epoch moved).
    fn update(&self, addrs: &Arc<[IpAddr]>) -> bool {
        let mut set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        let changed = match set.as_ref() {
            None => false,
            Some(old) => old.len() != addrs.len() || !old.iter().all(|ip| addrs.contains(ip)),
        };
        *set = Some(addrs.clone());
        if changed {
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        changed
    }
}

impl DnsCache {
    /// The upstream's current addresses.
    pub fn addresses(&self) -> &Arc<Addresses> {
        &self.current
    }

    /// When the cached answer expires; `None` before the first lookup.
    pub fn expires(&self) -> Option<Instant> {
        let guard = self.entry.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().map(|entry| entry.expires)
    }

    /// Resolves when an answer (or failure) is stored after this call.
    pub async fn stored(&self) {
        self.stored.notified().await;
    }

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
                // Expire just after the resolver's own cache does, so a re-lookup at expiry
                // really asks the name server instead of getting the old answer back.
                let ttl = lookup
                    .valid_until()
                    .saturating_duration_since(std::time::Instant::now())
                    .min(resolver.max_ttl)
                    + RESOLVER_CACHE_MARGIN;
                if addrs.is_empty() {
                    Entry {
                        result: Err(format!("DNS lookup of {host} returned no addresses")),
                        expires: now + NEGATIVE_TTL,
                    }
                } else {
                    Entry {
                        result: Ok(addrs),
                        expires: Instant::now() + ttl,
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
        if let Ok(addrs) = &result
            && self.current.update(addrs)
        {
            tracing::info!(%host, addresses = ?addrs, "DNS answer changed");
        }
        *self.entry.lock().unwrap_or_else(|p| p.into_inner()) = Some(entry);
        self.stored.notify_waiters();
        (result, DnsResult::Miss)
    }

    fn cached(&self, now: Instant) -> Option<Entry> {
        let guard = self.entry.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().filter(|entry| entry.expires > now).cloned()
    }
}
