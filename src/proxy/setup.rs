//! Building the proxy from a validated config: pools, connectors, routes, the rate-limit guards
//! and the store they share, and the interception CA.

use std::sync::Arc;

use http::header::HeaderValue;
use http::uri::PathAndQuery;

use super::rate_limit::{GuardGauges, Guarded};
use super::route::Routes;
use super::{Proxy, Upstream};
use crate::StartError;
use crate::config::Config;
use crate::connect::{self, Connector};
use crate::intercept::Interceptor;
use crate::metrics::Metrics;
use crate::pool::{PoolLimits, PoolSet};
use crate::ratelimit::{AnyStore, MemoryStore};
use crate::runtime::BusyPoll;

impl Proxy {
    /// Builds the pools, connectors and routes from a validated config.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Proxy, StartError> {
        let shared = connect::Shared::new(config).map_err(StartError::Tls)?;
        let pools = Arc::new(PoolSet::new(
            config.max_connections,
            config.upstreams.iter().map(|u| {
                let name: Arc<str> = Arc::from(u.name.as_str());
                let upstream_metrics = metrics.upstream(&name, u.limits.max_connections_per_host);
                let limits = PoolLimits {
                    max_connections: u.limits.max_connections_per_host,
                    idle_timeout: u.limits.idle_timeout,
                    queue_timeout: u.limits.queue_timeout,
                    max_waiting: u.limits.max_waiting,
                    warm_connections: u.limits.warm_connections,
                    warm_refresh: u.limits.warm_refresh,
                };
                (name, limits, upstream_metrics)
            }),
        ));
        let wall = crate::ratelimit::system_wall_clock();
        let store = Arc::new(open_store(config, &metrics, &wall)?);
        let upstreams = config
            .upstreams
            .iter()
            .zip(pools.pools())
            .map(|(u, pool)| {
                let rate_limit = (!u.rate_limit.profile.is_off()).then(|| {
                    let name = pool.name().clone();
                    let budget = u.rate_limit.budget;
                    let window = budget.map(|b| {
                        let w = humantime_serde::re::humantime::format_duration(b.window);
                        (w.to_string(), b.limit)
                    });
                    Arc::new(Guarded {
                        guard: crate::ratelimit::UpstreamGuard::new(
                            format!("{}/{name}", config.rate_limit.key),
                            u.rate_limit.profile,
                            &u.host,
                            budget,
                            store.clone(),
                            wall.clone(),
                        ),
                        rules: u.rate_limit.rules.clone(),
                        metrics: metrics.rate_limit(&name, window),
                        name,
                    })
                });
                let authority = HeaderValue::from_str(&u.authority).map_err(|source| {
                    StartError::Authority {
                        upstream: u.name.clone(),
                        authority: u.authority.clone(),
                        source,
                    }
                })?;
                let connector = Connector::new(shared.clone(), u, config, pool.metrics().clone())?;
                Ok(Upstream {
                    name: pool.name().clone(),
                    authority,
                    limits: u.limits,
                    pool: pool.clone(),
                    connector,
                    prewarm: u.prewarm,
                    rate_limit,
                    warm_probe: match &u.warm_probe {
                        None => None,
                        Some(path) => {
                            Some(PathAndQuery::try_from(path.as_str()).map_err(|source| {
                                StartError::WarmProbe {
                                    upstream: u.name.clone(),
                                    source,
                                }
                            })?)
                        }
                    },
                })
            })
            .collect::<Result<Vec<_>, StartError>>()?;
        let interceptor = if config.intercept.enabled {
            let hosts: Vec<String> = config.upstreams.iter().map(|u| u.host.clone()).collect();
            let interceptor = Interceptor::open(&config.intercept.ca_dir, &hosts)
                .map_err(StartError::Intercept)?;
            Some(Arc::new(interceptor))
        } else {
            None
        };
        let guard_gauges = Arc::new(GuardGauges(
            upstreams
                .iter()
                .filter_map(|u| u.rate_limit.clone())
                .collect(),
        ));
        let source: Arc<dyn crate::metrics::GuardGaugeSource> = guard_gauges.clone();
        metrics.attach_guard_gauges(Arc::downgrade(&source));
        Ok(Proxy {
            _guard_gauges: guard_gauges,
            interceptor,
            server_timing: config.listen.server_timing,
            routes: Routes::new(&config.upstreams),
            upstreams,
            pools,
            busy_poll: config
                .runtime
                .busy_poll
                .map(|window| BusyPoll::new(window, metrics.busy_poll_threads().clone())),
            metrics,
        })
    }
}

/// The store the guards share: this sidecar's memory, or Redis (`[rate_limit] store`).
fn open_store(
    config: &Config,
    metrics: &Metrics,
    wall: &crate::ratelimit::WallClock,
) -> Result<AnyStore, StartError> {
    let shared = &config.rate_limit;
    let up = metrics.store_up();
    let Some(url) = &shared.redis_url else {
        return Ok(AnyStore::Memory(MemoryStore::new(wall.clone())));
    };
    let settings = crate::ratelimit::RedisSettings {
        url: url.clone(),
        key: shared.key.clone(),
        timeout: shared.timeout,
        fallback_share: shared.fallback_share,
    };
    let store = crate::ratelimit::RedisStore::open(&settings, wall.clone(), up)
        .map_err(StartError::Store)?;
    Ok(AnyStore::Redis(store))
}
