//! The HELP text of every registered metric (the pool gauges' own are in `POOL_GAUGES`).

use metrics::Unit;

use super::*;

pub(super) fn describe_all() {
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
        WARM_CONNECTS,
        "Warm connections opened in the background (floor, refill, refresh), by result."
    );
    describe_counter!(
        WARM_PROBES,
        "warm_probe GETs sent on idle warm connections to keep them open, by result."
    );
    describe_histogram!(
        IDLE_CUTOFF,
        Unit::Seconds,
        "How long a connection had been idle when the upstream closed it (set warm_refresh below this)."
    );
    describe_counter!(
        DNS_LOOKUPS,
        "Address lookups for new connections: cache hit, miss (resolved) or static."
    );
}
