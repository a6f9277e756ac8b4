//! The label values of the metrics that have one, each an enum indexed by discriminant.

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
    pub(super) const ALL: [DrainResult; 4] = [
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
    /// A warm connection idle for `warm_refresh`, replaced by a fresh one.
    Refreshed,
}

impl CloseReason {
    pub(super) const ALL: [CloseReason; 10] = [
        CloseReason::IdleTimeout,
        CloseReason::UpstreamClosed,
        CloseReason::ConnectionClose,
        CloseReason::Incomplete,
        CloseReason::Error,
        CloseReason::Timeout,
        CloseReason::Evicted,
        CloseReason::Shutdown,
        CloseReason::DnsChanged,
        CloseReason::Refreshed,
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
            CloseReason::Refreshed => "refreshed",
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

/// How a background warm-connection attempt ended (the `result` label of `WARM_CONNECTS` and
/// `WARM_PROBES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarmResult {
    /// The connection opened (or the probe got its whole answer).
    Ok,
    /// It failed; the next attempt backs off.
    Failed,
}

impl WarmResult {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            WarmResult::Ok => "ok",
            WarmResult::Failed => "failed",
        }
    }
}
