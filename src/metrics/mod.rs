//! Metric names, descriptions and the per-upstream handles that record them.
//!
//! Every metric name lives here, once. Handles are registered up front (per upstream, per label
//! value) so the hot path only touches atomics: no registry lookup, no label allocation. Each
//! sidepool instance owns its recorder instead of installing a global one, so several instances
//! (tests) never share series.
//!
//! The four pool gauges (active, idle, connecting, waiting) are not in the registry: nothing can
//! set them. A scrape reads them from the pools themselves ([`PoolGaugeSource`]), all pools of a
//! set in one consistent snapshot, and appends them to the registry's text, so every scrape shows
//! counts that existed together (within every cap) rather than four values read at different
//! moments.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::error::ErrorKind;
use crate::pool::PoolCounts;

mod describe;
mod labels;
mod rate_limit;

pub use labels::{CloseReason, DnsResult, DrainResult, RetryReason, WarmResult};
pub use rate_limit::{
    GuardGaugeSource, GuardView, RATE_LIMIT_BUDGET_LIMIT, RATE_LIMIT_BUDGET_USED,
    RATE_LIMIT_COOLDOWN, RATE_LIMIT_HELD, RATE_LIMIT_REFUSED, RATE_LIMIT_SIGNALS,
    RATE_LIMIT_WAITING, RateLimitMetrics, Waiting,
};

/// Gauge: connections carrying a request now.
pub const CONNECTIONS_ACTIVE: &str = "http_pool_connections_active";
/// Gauge: open kept-alive connections waiting for reuse.
pub const CONNECTIONS_IDLE: &str = "http_pool_connections_idle";
/// Gauge: DNS + TCP + TLS handshakes in progress (they count toward the caps).
pub const CONNECTIONS_CONNECTING: &str = "http_pool_connections_connecting";
/// Gauge: requests queued for a free connection.
pub const REQUESTS_WAITING: &str = "http_pool_requests_waiting";
/// Gauge: the configured per-upstream cap.
pub const CONNECTIONS_LIMIT: &str = "http_pool_connections_limit";
/// Gauge, no upstream label: the configured cap over all upstreams together.
pub const CONNECTIONS_MAX: &str = "http_pool_connections_max";
/// Counter: upstream connections opened (handshake completed).
pub const CONNECTIONS_OPENED: &str = "http_pool_connections_opened_total";
/// Counter: requests sent on a connection that had served a request before.
pub const CONNECTIONS_REUSED: &str = "http_pool_connections_reused_total";
/// Counter, label `reason`: upstream connections closed.
pub const CONNECTIONS_CLOSED: &str = "http_pool_connections_closed_total";
/// Counter, label `status_class`: requests answered, by the status the client received.
pub const REQUESTS: &str = "http_pool_requests_total";
/// Counter, label `kind`: requests sidepool answered with its own error.
pub const ERRORS: &str = "http_pool_errors_total";
/// Counter, label `reason`: requests sent a second time (on a fresh connection).
pub const RETRIES: &str = "http_pool_retries_total";
/// Counter, label `result`: responses a client left before their end, read to the end in the
/// background to keep the connection (`kept`), or not (`too_large`, `timeout`, `error`).
pub const ABORT_DRAINS: &str = "http_pool_abort_drains_total";
/// Counter, label `result` (`ok`, `failed`): warm connections opened in the background (the
/// warm floor, its refills and refreshes).
pub const WARM_CONNECTS: &str = "http_pool_warm_connects_total";
/// Counter, label `result` (`ok`, `failed`): `warm_probe` GETs sent on idle warm connections.
pub const WARM_PROBES: &str = "http_pool_warm_probes_total";
/// Histogram: how long a connection had been idle when the upstream closed it (the exchange's
/// idle cutoff, learnt; `warm_refresh` should stay below it).
pub const IDLE_CUTOFF: &str = "http_pool_idle_cutoff_seconds";
/// Histogram: seconds from the request's arrival to the last response byte.
pub const REQUEST_DURATION: &str = "http_pool_request_duration_seconds";
/// Histogram: seconds a request waited for a connection (0 when one was free).
pub const QUEUE_WAIT: &str = "http_pool_queue_wait_seconds";
/// Histogram: seconds to open a connection (DNS + TCP + TLS).
pub const CONNECT_DURATION: &str = "http_pool_connect_duration_seconds";
/// Counter, label `result` (`hit`, `miss`, `static`): address lookups for new connections.
pub const DNS_LOOKUPS: &str = "http_pool_dns_lookups_total";
/// Gauge, no upstream label: client connections open on the proxy listener.
pub const CLIENT_CONNECTIONS: &str = "http_pool_client_connections";
/// Gauge, no upstream label: the configured cap on client connections.
pub const CLIENT_CONNECTIONS_MAX: &str = "http_pool_client_connections_max";
/// Gauge, no upstream label: worker threads polling for network events instead of sleeping
/// (`runtime.busy_poll`; always 0 when it is off).
pub const BUSY_POLL_THREADS: &str = "http_pool_busy_poll_threads";

/// Counter, no labels: log lines dropped because stderr fell behind (`crate::logging`).
pub const LOG_LINES_DROPPED: &str = "http_pool_log_lines_dropped_total";

/// Histogram buckets in seconds: sub-millisecond pool hits up to minute-long exchanges.
const BUCKETS: [f64; 16] = [
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    60.0,
];

/// Buckets for [`IDLE_CUTOFF`]: the idle cutoffs exchanges and their load balancers use
/// (seconds to minutes).
const IDLE_CUTOFF_BUCKETS: [f64; 14] = [
    1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0,
];

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The four pool gauges in the order a snapshot lists them, with their descriptions.
const POOL_GAUGES: [(&str, &str); 4] = [
    (
        CONNECTIONS_ACTIVE,
        "Upstream connections carrying a request now.",
    ),
    (
        CONNECTIONS_IDLE,
        "Open kept-alive upstream connections waiting for reuse.",
    ),
    (
        CONNECTIONS_CONNECTING,
        "Upstream handshakes (DNS + TCP + TLS) in progress; they count toward the caps.",
    ),
    (
        REQUESTS_WAITING,
        "Requests queued for a free upstream connection.",
    ),
];

/// Where a scrape reads the pool gauges: a set of pools, implemented by `pool` only.
pub trait PoolGaugeSource: Send + Sync {
    /// Appends `(upstream, counts)` for every pool, all read in one consistent cut.
    fn snapshot(&self, out: &mut Vec<(Arc<str>, PoolCounts)>);
}

/// The pool sets a scrape reads, in the order they attached.
type PoolSources = Arc<Mutex<Vec<Weak<dyn PoolGaugeSource>>>>;

fn lock_sources(
    sources: &PoolSources,
) -> std::sync::MutexGuard<'_, Vec<Weak<dyn PoolGaugeSource>>> {
    lock_list(sources)
}

fn lock_list<T>(list: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The lists are only pushed to and read: a panic elsewhere cannot leave one inconsistent.
    list.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The metrics of one sidepool instance: its own recorder and the handle that renders it.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    pool_sources: PoolSources,
    /// The rate-limit guards a scrape reads (cooldowns left, budgets used).
    guard_sources: Mutex<Vec<Weak<dyn GuardGaugeSource>>>,
    /// Errors for requests that matched no upstream (label `upstream=""`).
    unrouted: UpstreamMetrics,
    /// Open client connections (changed by increments, so concurrent updates never reorder).
    client_connections: Gauge,
    /// Spinners in a polling window (`runtime.busy_poll`).
    busy_poll_threads: Gauge,
}

impl Metrics {
    /// A fresh registry with descriptions and histogram buckets set.
    pub fn new(max_connections: usize) -> Arc<Metrics> {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .expect("the bucket list is a non-empty constant")
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(IDLE_CUTOFF.to_string()),
                &IDLE_CUTOFF_BUCKETS,
            )
            .expect("the bucket list is a non-empty constant")
            .build_recorder();
        let handle = recorder.handle();
        let pool_sources = PoolSources::default();
        let (unrouted, client_connections, busy_poll_threads) =
            metrics::with_local_recorder(&recorder, || {
                describe::describe_all();
                rate_limit::describe();
                metrics::gauge!(CONNECTIONS_MAX).set(max_connections as f64);
                let client_connections = metrics::gauge!(CLIENT_CONNECTIONS);
                client_connections.set(0.0);
                let busy_poll_threads = metrics::gauge!(BUSY_POLL_THREADS);
                busy_poll_threads.set(0.0);
                (
                    UpstreamMetrics::register_unrouted(pool_sources.clone()),
                    client_connections,
                    busy_poll_threads,
                )
            });
        Arc::new(Metrics {
            recorder,
            handle,
            pool_sources,
            guard_sources: Mutex::new(Vec::new()),
            unrouted,
            client_connections,
            busy_poll_threads,
        })
    }

    /// Registers (or returns again) every series of one upstream.
    pub fn upstream(&self, name: &Arc<str>, limit: usize) -> UpstreamMetrics {
        metrics::with_local_recorder(&self.recorder, || {
            UpstreamMetrics::register(name.clone(), limit, self.pool_sources.clone())
        })
    }

    /// Metrics for requests that matched no upstream.
    pub fn unrouted(&self) -> &UpstreamMetrics {
        &self.unrouted
    }

    /// Publishes the configured cap on client connections.
    pub fn set_client_connections_max(&self, max: usize) {
        metrics::with_local_recorder(&self.recorder, || {
            metrics::gauge!(CLIENT_CONNECTIONS_MAX).set(max as f64);
        });
    }

    /// The gauge of open client connections.
    pub fn client_connections(&self) -> &Gauge {
        &self.client_connections
    }

    /// The gauge of worker threads kept polling by `runtime.busy_poll`.
    pub fn busy_poll_threads(&self) -> &Gauge {
        &self.busy_poll_threads
    }

    /// Prometheus text format 0.0.4: the registry, then the pool gauges from one snapshot of
    /// each attached pool set, taken now.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut text = self.handle.render();
        let mut counts = Vec::new();
        let sources: Vec<_> = lock_sources(&self.pool_sources)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for source in sources {
            source.snapshot(&mut counts);
        }
        render_pool_gauges(&mut text, &counts);
        let guards: Vec<_> = lock_list(&self.guard_sources)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let mut views = Vec::new();
        for source in guards {
            source.snapshot(&mut views);
        }
        rate_limit::render_guard_gauges(&mut text, &views);
        // Kept by the log writer, which is process-wide and outlives any one recorder.
        let _ = write!(
            text,
            "# HELP {LOG_LINES_DROPPED} Log lines dropped because stderr fell behind the log writer.\n\
             # TYPE {LOG_LINES_DROPPED} counter\n{LOG_LINES_DROPPED} {}\n",
            crate::logging::dropped_lines()
        );
        text
    }

    /// Drains histogram buffers; call periodically.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// Handles for one upstream's series, registered once; cloning shares the same series.
#[derive(Clone)]
pub struct UpstreamMetrics {
    /// Where this upstream's pool attaches itself, so a scrape reads its gauges.
    pool_sources: PoolSources,
    opened: Counter,
    reused: Counter,
    closed: [Counter; CloseReason::ALL.len()],
    requests: [Counter; STATUS_CLASSES.len()],
    errors: [Counter; ErrorKind::ALL.len()],
    retries: [Counter; 2],
    drains: [Counter; DrainResult::ALL.len()],
    warm_connects: [Counter; 2],
    warm_probes: [Counter; 2],
    idle_cutoff: Histogram,
    dns: [Counter; 3],
    request_duration: Histogram,
    queue_wait: Histogram,
    connect_duration: Histogram,
}

impl UpstreamMetrics {
    fn register(name: Arc<str>, limit: usize, pool_sources: PoolSources) -> UpstreamMetrics {
        let label = move || name.clone();
        metrics::gauge!(CONNECTIONS_LIMIT, "upstream" => label()).set(limit as f64);
        UpstreamMetrics {
            pool_sources,
            opened: metrics::counter!(CONNECTIONS_OPENED, "upstream" => label()),
            reused: metrics::counter!(CONNECTIONS_REUSED, "upstream" => label()),
            closed: CloseReason::ALL.map(|reason| {
                metrics::counter!(CONNECTIONS_CLOSED, "upstream" => label(), "reason" => reason.as_str())
            }),
            requests: STATUS_CLASSES.map(|class| {
                metrics::counter!(REQUESTS, "upstream" => label(), "status_class" => class)
            }),
            errors: ErrorKind::ALL
                .map(|kind| metrics::counter!(ERRORS, "upstream" => label(), "kind" => kind.as_str())),
            retries: [RetryReason::Unsent, RetryReason::Idempotent].map(|reason| {
                metrics::counter!(RETRIES, "upstream" => label(), "reason" => reason.as_str())
            }),
            drains: DrainResult::ALL.map(|result| {
                metrics::counter!(ABORT_DRAINS, "upstream" => label(), "result" => result.as_str())
            }),
            warm_connects: [WarmResult::Ok, WarmResult::Failed].map(|result| {
                metrics::counter!(WARM_CONNECTS, "upstream" => label(), "result" => result.as_str())
            }),
            warm_probes: [WarmResult::Ok, WarmResult::Failed].map(|result| {
                metrics::counter!(WARM_PROBES, "upstream" => label(), "result" => result.as_str())
            }),
            idle_cutoff: metrics::histogram!(IDLE_CUTOFF, "upstream" => label()),
            dns: ["hit", "miss", "static"]
                .map(|result| metrics::counter!(DNS_LOOKUPS, "upstream" => label(), "result" => result)),
            request_duration: metrics::histogram!(REQUEST_DURATION, "upstream" => label()),
            queue_wait: metrics::histogram!(QUEUE_WAIT, "upstream" => label()),
            connect_duration: metrics::histogram!(CONNECT_DURATION, "upstream" => label()),
        }
    }

    /// Only the request series, labelled `upstream=""`: requests that matched no upstream have
    /// no pool, so they get no pool gauges or connection counters.
    fn register_unrouted(pool_sources: PoolSources) -> UpstreamMetrics {
        let label = || "";
        UpstreamMetrics {
            pool_sources,
            opened: Counter::noop(),
            reused: Counter::noop(),
            closed: CloseReason::ALL.map(|_| Counter::noop()),
            requests: STATUS_CLASSES.map(
                |class| metrics::counter!(REQUESTS, "upstream" => label(), "status_class" => class),
            ),
            errors: ErrorKind::ALL.map(
                |kind| metrics::counter!(ERRORS, "upstream" => label(), "kind" => kind.as_str()),
            ),
            retries: [Counter::noop(), Counter::noop()],
            drains: DrainResult::ALL.map(|_| Counter::noop()),
            warm_connects: [Counter::noop(), Counter::noop()],
            warm_probes: [Counter::noop(), Counter::noop()],
            idle_cutoff: Histogram::noop(),
            dns: [Counter::noop(), Counter::noop(), Counter::noop()],
            request_duration: metrics::histogram!(REQUEST_DURATION, "upstream" => label()),
            queue_wait: Histogram::noop(),
            connect_duration: Histogram::noop(),
        }
    }

    /// Makes a scrape read this upstream's pool gauges from `source` (once per source).
    pub(crate) fn attach_pool_gauges(&self, source: &Weak<dyn PoolGaugeSource>) {
        let mut sources = lock_sources(&self.pool_sources);
        sources.retain(|s| s.strong_count() > 0);
        if !sources.iter().any(|s| Weak::ptr_eq(s, source)) {
            sources.push(source.clone());
        }
    }

    /// A connection finished its handshake.
    pub fn connection_opened(&self, took: Duration) {
        self.opened.increment(1);
        self.connect_duration.record(took);
    }

    /// A request goes out on a connection that served one before.
    pub fn connection_reused(&self) {
        self.reused.increment(1);
    }

    /// A connection was closed.
    pub fn connection_closed(&self, reason: CloseReason) {
        // `ALL` lists the variants in declaration order (a test checks it).
        self.closed[reason as usize].increment(1);
    }

    /// A request was answered with `status` after `took`.
    pub fn request_done(&self, status: u16, took: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[class].increment(1);
        self.request_duration.record(took);
    }

    /// A request got a connection after waiting `wait` (zero when one was free at once).
    pub fn queue_waited(&self, wait: Duration) {
        self.queue_wait.record(wait);
    }

    /// sidepool answered with its own error.
    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].increment(1);
    }

    /// A request was sent a second time.
    pub fn retried(&self, reason: RetryReason) {
        self.retries[reason as usize].increment(1);
    }

    /// A response the client left was drained (or not) to keep its connection.
    pub fn abort_drained(&self, result: DrainResult) {
        self.drains[result as usize].increment(1);
    }

    /// A background warm connection attempt ended.
    pub fn warm_connected(&self, result: WarmResult) {
        self.warm_connects[result as usize].increment(1);
    }

    /// A `warm_probe` GET ended.
    pub fn warm_probed(&self, result: WarmResult) {
        self.warm_probes[result as usize].increment(1);
    }

    /// The upstream closed a connection that had been idle for `idle`.
    pub fn idle_cut_off(&self, idle: Duration) {
        self.idle_cutoff.record(idle);
    }

    /// An address lookup for a new connection.
    pub fn dns_lookup(&self, result: DnsResult) {
        self.dns[result as usize].increment(1);
    }
}

/// Appends the four pool gauge families (HELP, TYPE, one line per pool), in the exporter's
/// format.
fn render_pool_gauges(text: &mut String, counts: &[(Arc<str>, PoolCounts)]) {
    use metrics_exporter_prometheus::formatting::{
        sanitize_label_value, write_help_line, write_type_line,
    };
    use std::fmt::Write;
    if counts.is_empty() {
        return;
    }
    for (i, (name, help)) in POOL_GAUGES.iter().enumerate() {
        write_help_line(text, name, None, None, help);
        write_type_line(text, name, None, None, "gauge");
        for (upstream, c) in counts {
            let value = [c.active, c.idle, c.connecting, c.waiting][i];
            let upstream = sanitize_label_value(upstream);
            let _ = writeln!(text, "{name}{{upstream=\"{upstream}\"}} {value}");
        }
        text.push('\n');
    }
}

#[cfg(test)]
mod tests;
