//! The one log line (and the request metrics) per request, written when the response ends.
//!
//! Paths are logged with secret query values redacted; headers are logged only at trace level
//! and only through [`super::headers::redacted_headers`]. Nothing else about a request is logged.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use http::uri::PathAndQuery;
use tokio::time::Instant;

use super::UpstreamConn;
use super::headers::redact_path;
use crate::error::ProxyError;
use crate::logging::{self, RequestLine};
use crate::metrics::{RetryReason, UpstreamMetrics};
use crate::pool::Pool;

/// What is known about a forwarded request when its response starts; logged when it ends.
pub struct Completion {
    pub(super) started: Instant,
    /// The upstream's pool: its name and metrics (one reference count, not a copy of every
    /// metric handle, per request).
    pub(super) pool: Arc<Pool<UpstreamConn>>,
    pub(super) method: Method,
    pub(super) path: PathAndQuery,
    pub(super) status: u16,
    pub(super) reused: bool,
    pub(super) queue_wait: Duration,
    pub(super) retried: Option<RetryReason>,
}

impl Completion {
    /// Records the request's metrics and writes its log line. `outcome` is `complete` when the
    /// response was delivered to the end.
    pub fn finish(self, outcome: &str) {
        self.finish_at(Instant::now(), outcome);
    }

    /// [`Completion::finish`] with the response's end read from the clock by the caller.
    pub fn finish_at(self, now: Instant, outcome: &str) {
        let took = now.saturating_duration_since(self.started);
        self.pool.metrics().request_done(self.status, took);
        if !tracing::enabled!(tracing::Level::INFO) {
            return;
        }
        let path = redact_path(self.path.as_str());
        let line = RequestLine {
            target: module_path!(),
            upstream: self.pool.name(),
            method: self.method.as_str(),
            path: &path,
            status: self.status,
            duration_ms: took.as_secs_f64() * 1e3,
            conn: if self.reused { "reused" } else { "new" },
            queue_ms: self.queue_wait.as_secs_f64() * 1e3,
            retry: self.retried.map_or("none", RetryReason::as_str),
            outcome,
        };
        if !logging::request_line(&line) {
            tracing::info!(
                upstream = %line.upstream,
                method = %line.method,
                path = %line.path,
                status = line.status,
                duration_ms = line.duration_ms,
                conn = line.conn,
                queue_ms = line.queue_ms,
                retry = line.retry,
                outcome = line.outcome,
                "request"
            );
        }
    }
}

/// Records and logs a request answered with sidepool's own error.
pub fn error_done(
    err: &ProxyError,
    metrics: &UpstreamMetrics,
    method: &Method,
    path: &str,
    started: Instant,
    queue_wait: Option<Duration>,
) {
    let took = started.elapsed();
    metrics.error(err.kind);
    metrics.request_done(err.kind.status().as_u16(), took);
    let upstream = err.upstream.as_deref().unwrap_or("");
    let path = redact_path(path);
    let queue_ms = queue_wait.unwrap_or_default().as_secs_f64() * 1e3;
    if err.kind.is_client_error() {
        tracing::info!(upstream, method = %method, path = %path, status = err.kind.status().as_u16(), duration_ms = took.as_secs_f64() * 1e3, queue_ms, error = err.kind.as_str(), detail = %err.message, "request refused");
    } else {
        tracing::warn!(upstream, method = %method, path = %path, status = err.kind.status().as_u16(), duration_ms = took.as_secs_f64() * 1e3, queue_ms, error = err.kind.as_str(), detail = %err.message, "request failed");
    }
}
