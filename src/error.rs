//! Errors that sidepool itself answers with, and the one place that turns them into responses.
//!
//! Owns the stable error kinds of the contract (`x-sidepool-error` and the JSON body). Does not log:
//! the proxy logs each request once, with the kind, at the level the kind calls for (client
//! errors at info as `request refused`, the others at warn as `request failed`).

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// The stable identifiers of errors sidepool answers with itself. Dashboards and bots match on
/// [`ErrorKind::as_str`], so a variant is never renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// 400: the request cannot be forwarded as it is (bad target, userinfo, unsupported form).
    BadRequest,
    /// 431: request headers larger than sidepool accepts.
    HeadersTooLarge,
    /// 403: the host or route is not a configured upstream.
    NotAllowed,
    /// 405: `CONNECT`; a tunnel cannot be pooled.
    ConnectNotSupported,
    /// 502: the upstream's host name could not be resolved.
    DnsFailed,
    /// 502: no TCP connection could be made to any of the upstream's addresses.
    ConnectFailed,
    /// 502: the TLS handshake failed (untrusted or wrong certificate, protocol mismatch).
    TlsFailed,
    /// 502: the connection failed after the request may have been sent, or the upstream broke
    /// the HTTP protocol. Never retried for non-idempotent requests.
    UpstreamFailed,
    /// 503: no connection became free within `queue_timeout`.
    PoolTimeout,
    /// 503: sidepool is shutting down and takes no new requests.
    ShuttingDown,
    /// 504: DNS + TCP + TLS did not finish within `connect_timeout`.
    ConnectTimeout,
    /// 504: the upstream sent nothing for `read_timeout`.
    ReadTimeout,
    /// 504: the whole exchange took longer than `request_timeout`.
    RequestTimeout,
    /// 503: the upstream's queue already holds `max_waiting` requests; refused at once.
    QueueFull,
    /// 503: `listen.max_client_connections` client connections are open; this one is refused.
    TooManyClients,
    /// 429: the upstream cools down (the exchange said stop), an endpoint is held, or its
    /// budget is spent, past the request's deadline; nothing was sent. `Retry-After` says when.
    RateLimited,
}

impl ErrorKind {
    /// Every kind, for metrics registration and docs.
    pub const ALL: [ErrorKind; 16] = [
        ErrorKind::BadRequest,
        ErrorKind::HeadersTooLarge,
        ErrorKind::NotAllowed,
        ErrorKind::ConnectNotSupported,
        ErrorKind::DnsFailed,
        ErrorKind::ConnectFailed,
        ErrorKind::TlsFailed,
        ErrorKind::UpstreamFailed,
        ErrorKind::PoolTimeout,
        ErrorKind::ShuttingDown,
        ErrorKind::ConnectTimeout,
        ErrorKind::ReadTimeout,
        ErrorKind::RequestTimeout,
        ErrorKind::QueueFull,
        ErrorKind::TooManyClients,
        ErrorKind::RateLimited,
    ];

    /// The stable identifier used in `x-sidepool-error`, the JSON body and metric labels.
    ///
    /// ```
    /// use sidepool::error::ErrorKind;
    /// assert_eq!(ErrorKind::PoolTimeout.as_str(), "pool_timeout");
    /// assert_eq!(ErrorKind::PoolTimeout.status(), 503);
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::HeadersTooLarge => "headers_too_large",
            ErrorKind::NotAllowed => "not_allowed",
            ErrorKind::ConnectNotSupported => "connect_not_supported",
            ErrorKind::DnsFailed => "dns_failed",
            ErrorKind::ConnectFailed => "connect_failed",
            ErrorKind::TlsFailed => "tls_failed",
            ErrorKind::UpstreamFailed => "upstream_failed",
            ErrorKind::PoolTimeout => "pool_timeout",
            ErrorKind::ShuttingDown => "shutting_down",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::ReadTimeout => "read_timeout",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::QueueFull => "queue_full",
            ErrorKind::TooManyClients => "too_many_clients",
            ErrorKind::RateLimited => "rate_limited",
        }
    }

    /// The HTTP status the contract assigns to this kind.
    pub const fn status(self) -> StatusCode {
        match self {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorKind::NotAllowed => StatusCode::FORBIDDEN,
            ErrorKind::ConnectNotSupported => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::DnsFailed
            | ErrorKind::ConnectFailed
            | ErrorKind::TlsFailed
            | ErrorKind::UpstreamFailed => StatusCode::BAD_GATEWAY,
            ErrorKind::PoolTimeout
            | ErrorKind::ShuttingDown
            | ErrorKind::QueueFull
            | ErrorKind::TooManyClients => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::ConnectTimeout | ErrorKind::ReadTimeout | ErrorKind::RequestTimeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
        }
    }

    /// True for mistakes of the client (4xx): logged at info as `request refused`, not at warn
    /// as incidents.
    pub fn is_client_error(self) -> bool {
        self.status().is_client_error()
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error that caused a [`ProxyError`] (hyper's, an I/O error, rustls's), shared so that
/// the error stays cheap to clone.
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// An error answered by sidepool itself: a kind, the upstream it concerns (if any), a
/// message that says what happened and what to do, and the error that caused it (its
/// [`source`](std::error::Error::source)). Messages never carry query strings or header
/// values, so they are safe to log and to return; neither do the causes sidepool attaches
/// (hyper, I/O and TLS errors describe connections, not requests).
#[derive(Debug, Clone)]
pub struct ProxyError {
    /// What went wrong, as a stable identifier.
    pub kind: ErrorKind,
    /// The configured upstream the request was meant for, when known.
    pub upstream: Option<Arc<str>>,
    /// Human-readable explanation with a hint.
    pub message: String,
    /// The underlying error, when there is one.
    pub cause: Option<Cause>,
    /// Whole seconds for `Retry-After` (rate-limit refusals).
    pub retry_after: Option<u64>,
}

impl ProxyError {
    /// An error with no upstream attached yet.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ProxyError {
            kind,
            upstream: None,
            message: message.into(),
            cause: None,
            retry_after: None,
        }
    }

    /// Adds `Retry-After: secs` to the response.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// Attaches the upstream name.
    pub fn with_upstream(mut self, upstream: &Arc<str>) -> Self {
        self.upstream = Some(upstream.clone());
        self
    }

    /// Attaches the error that caused this one; [`std::error::Error::source`] returns it.
    pub fn with_cause(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.cause = Some(Arc::new(cause));
        self
    }

    /// The response sent to the client: the contract's status, `x-sidepool-error` header and
    /// JSON body `{"error", "message", "upstream"}`.
    pub fn to_response(&self) -> Response<Bytes> {
        let body = serde_json::json!({
            "error": self.kind.as_str(),
            "message": self.message,
            "upstream": self.upstream.as_deref(),
        });
        let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
        bytes.push(b'\n');
        let mut response = Response::new(Bytes::from(bytes));
        *response.status_mut() = self.kind.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            "x-sidepool-error",
            HeaderValue::from_static(self.kind.as_str()),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.upstream {
            Some(name) => write!(f, "{} (upstream {name:?}): {}", self.kind, self.message),
            None => write!(f, "{}: {}", self.kind, self.message),
        }
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|cause| cause as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_carries_kind_status_header_and_json_body() {
        let name: Arc<str> = Arc::from("bybit");
        let err =
            ProxyError::new(ErrorKind::PoolTimeout, "no connection free").with_upstream(&name);
        let response = err.to_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["x-sidepool-error"], "pool_timeout");
        let json: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(json["error"], "pool_timeout");
        assert_eq!(json["upstream"], "bybit");
        assert_eq!(json["message"], "no connection free");
    }

    #[test]
    fn the_cause_is_the_source_and_survives_a_clone() {
        use std::error::Error as _;
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let err =
            ProxyError::new(ErrorKind::UpstreamFailed, "the connection failed").with_cause(io);
        let copy = err.clone();
        let source = copy.source().expect("a source");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("the io error itself");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset);
        assert!(
            ProxyError::new(ErrorKind::NotAllowed, "no")
                .source()
                .is_none()
        );
    }

    #[test]
    fn kinds_map_to_contract_statuses() {
        assert_eq!(ErrorKind::NotAllowed.status(), 403);
        assert_eq!(ErrorKind::ConnectNotSupported.status(), 405);
        assert_eq!(ErrorKind::HeadersTooLarge.status(), 431);
        assert_eq!(ErrorKind::TlsFailed.status(), 502);
        assert_eq!(ErrorKind::ReadTimeout.status(), 504);
        let unique: std::collections::HashSet<_> =
            ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(unique.len(), ErrorKind::ALL.len());
    }
}
