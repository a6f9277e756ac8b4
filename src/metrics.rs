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

use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::error::ErrorKind;
use crate::pool::PoolCounts;

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

/// What became of a response its client left (the `result` label of `ABORT_DRAINS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainResult {
    /// Read to its end within the bounds; the connection went back to the pool.
    Kept,
    /// More of it than the byte bound; the connection was closed.
    TooLarge,
    /// Its rest did not arrive within the time bound; the connection was closed.
    Timeout,
    /// The body failed while draining; the connection was closed.
    Error,
}

impl DrainResult {
    const ALL: [DrainResult; 4] = [
        DrainResult::Kept,
        DrainResult::TooLarge,
        DrainResult::Timeout,
        DrainResult::Error,
    ];

    /// The `result` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DrainResult::Kept => "kept",
            DrainResult::TooLarge => "too_large",
            DrainResult::Timeout => "timeout",
            DrainResult::Error => "error",
        }
    }
}

/// Why an upstream connection was closed (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Idle longer than `idle_timeout`.
    IdleTimeout,
    /// The upstream closed it (seen while idle or at checkout).
    UpstreamClosed,
    /// The upstream answered `Connection: close` (or HTTP/1.0).
    ConnectionClose,
    /// The response body was not read to the end (client gone, upstream body error).
    Incomplete,
    /// An I/O or protocol error while a request was on it.
    Error,
    /// A read or request timeout fired while a request was on it.
    Timeout,
    /// Closed while idle to free a slot for another upstream under the global cap.
    Evicted,
    /// The pool was shut down.
    Shutdown,
    /// Its address left the upstream's DNS answer (the name now points elsewhere).
    DnsChanged,
}

impl CloseReason {
    const ALL: [CloseReason; 9] = [
        CloseReason::IdleTimeout,
        CloseReason::UpstreamClosed,
        CloseReason::ConnectionClose,
        CloseReason::Incomplete,
        CloseReason::Error,
        CloseReason::Timeout,
        CloseReason::Evicted,
        CloseReason::Shutdown,
        CloseReason::DnsChanged,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::UpstreamClosed => "upstream_closed",
            CloseReason::ConnectionClose => "connection_close",
            CloseReason::Incomplete => "incomplete",
            CloseReason::Error => "error",
            CloseReason::Timeout => "timeout",
            CloseReason::Evicted => "evicted",
            CloseReason::Shutdown => "shutdown",
            CloseReason::DnsChanged => "dns_changed",
        }
    }
}

/// Why a request was sent a second time (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// hyper handed the request back: not one byte of it left the process.
    Unsent,
    /// A bodiless GET/HEAD/OPTIONS whose reused connection failed before any response.
    Idempotent,
}

impl RetryReason {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            RetryReason::Unsent => "unsent",
            RetryReason::Idempotent => "idempotent",
        }
    }
}

/// How the address for a new connection was found (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsResult {
    /// Served from the cache.
    Hit,
    /// Resolved through DNS (successfully or not).
    Miss,
    /// From `dns.static`.
    Static,
}

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
    // The list is only pushed to and read: a panic elsewhere cannot leave it inconsistent.
    sources
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The metrics of one sidepool instance: its own recorder and the handle that renders it.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    pool_sources: PoolSources,
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
            .build_recorder();
        let handle = recorder.handle();
        let pool_sources = PoolSources::default();
        let (unrouted, client_connections, busy_poll_threads) =
            metrics::with_local_recorder(&recorder, || {
                describe_all();
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

fn describe_all() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        CONNECTIONS_LIMIT,
        "Configured cap on open connections to this upstream."
    );
    describe_gauge!(
        CONNECTIONS_MAX,
        "Configured cap on open upstream connections, all upstreams together."
    );
    describe_counter!(CONNECTIONS_OPENED, "Upstream connections opened.");
    describe_counter!(
        CONNECTIONS_REUSED,
        "Requests sent on a kept-alive connection that served a request before."
    );
    describe_counter!(
        CONNECTIONS_CLOSED,
        "Upstream connections closed, by reason."
    );
    describe_counter!(
        REQUESTS,
        "Requests answered, by the status class the client received."
    );
    describe_counter!(
        ERRORS,
        "Requests answered with an error made by sidepool, by kind."
    );
    describe_counter!(
        RETRIES,
        "Requests sent a second time on a fresh connection, by reason."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time from a request's arrival to the last byte of its response."
    );
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time a request waited for a free connection."
    );
    describe_histogram!(
        CONNECT_DURATION,
        Unit::Seconds,
        "Time to open an upstream connection (DNS + TCP + TLS)."
    );
    describe_gauge!(
        CLIENT_CONNECTIONS,
        "Client connections open on the proxy listener."
    );
    describe_gauge!(
        CLIENT_CONNECTIONS_MAX,
        "Configured cap on client connections (listen.max_client_connections)."
    );
    describe_gauge!(
        BUSY_POLL_THREADS,
        "Worker threads polling for network events instead of sleeping (runtime.busy_poll)."
    );
    describe_counter!(
        ABORT_DRAINS,
        "Responses a client left before their end: the rest read to keep the connection (kept), or the connection closed (too_large, timeout, error)."
    );
    describe_counter!(
        DNS_LOOKUPS,
        "Address lookups for new connections: cache hit, miss (resolved) or static."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_arrays_are_indexed_by_discriminant() {
        for (i, reason) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i);
        }
        for (i, kind) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, i);
        }
        assert_eq!(RetryReason::Idempotent as usize, 1);
        assert_eq!(DnsResult::Static as usize, 2);
        for (i, result) in DrainResult::ALL.iter().enumerate() {
            assert_eq!(*result as usize, i);
        }
    }

    #[test]
    fn instances_are_isolated_and_render_labelled_series() {
        let a = Metrics::new(100);
        let b = Metrics::new(100);
        let name: Arc<str> = Arc::from("bybit");
        let m = a.upstream(&name, 30);
        struct Fixed;
        impl PoolGaugeSource for Fixed {
            fn snapshot(&self, out: &mut Vec<(Arc<str>, PoolCounts)>) {
                let counts = PoolCounts {
                    active: 3,
                    idle: 1,
                    connecting: 0,
                    waiting: 2,
                };
                out.push((Arc::from("bybit"), counts));
            }
        }
        let source: Arc<dyn PoolGaugeSource> = Arc::new(Fixed);
        m.attach_pool_gauges(&Arc::downgrade(&source));
        m.attach_pool_gauges(&Arc::downgrade(&source));
        m.connection_closed(CloseReason::Evicted);
        m.request_done(204, Duration::from_millis(3));
        let text = a.render();
        assert!(
            text.contains("http_pool_connections_active{upstream=\"bybit\"} 3"),
            "{text}"
        );
        assert_eq!(
            text.matches("http_pool_connections_active{").count(),
            1,
            "a source attached twice is read once: {text}"
        );
        assert!(
            text.contains("# TYPE http_pool_requests_waiting gauge\n")
                && text.contains("http_pool_requests_waiting{upstream=\"bybit\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("http_pool_connections_limit{upstream=\"bybit\"} 30"),
            "{text}"
        );
        assert!(
            text.contains(
                "http_pool_connections_closed_total{upstream=\"bybit\",reason=\"evicted\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("http_pool_requests_total{upstream=\"bybit\",status_class=\"2xx\"} 1"),
            "{text}"
        );
        assert!(!b.render().contains("upstream=\"bybit\""));
        drop(source);
        assert!(
            !a.render().contains("http_pool_connections_active"),
            "a pool set that is gone is not rendered"
        );
        assert!(
            !text.contains("http_pool_connections_active{upstream=\"\"}"),
            "requests that matched no upstream have no pool gauges: {text}"
        );
    }
}
