//! The error a failed attempt is answered with: which timeout, whether anything was sent, the
//! address of the connection, and the causes hyper gives only in its source chain.

use std::net::SocketAddr;

use tokio::time::Instant;

use super::{SendError, Upstream};
use crate::error::{ErrorKind, ProxyError};
use crate::proxy::body::ClientBodyError;

/// The error answered for a failed attempt; `peer` is the address the connection went to.
pub(super) fn failure(
    upstream: &Upstream,
    cause: SendError,
    reused: bool,
    peer: SocketAddr,
    deadline: Instant,
) -> ProxyError {
    let limits = &upstream.limits;
    let conn = if reused { "a reused" } else { "a new" };
    let error = match cause {
        SendError::Elapsed if Instant::now() >= deadline => ProxyError::new(
            ErrorKind::RequestTimeout,
            format!(
                "no response from {peer} within request_timeout ({:?}); the request may have reached the upstream and was not re-sent",
                limits.request_timeout
            ),
        ),
        SendError::Elapsed => ProxyError::new(
            ErrorKind::ReadTimeout,
            format!(
                "no response from {peer} within read_timeout ({:?}); the request may have reached the upstream and was not re-sent",
                limits.read_timeout
            ),
        ),
        SendError::Unsent(err) => ProxyError::new(
            ErrorKind::UpstreamFailed,
            format!(
                "{conn} connection to {peer} closed before the request was written ({}); nothing was sent on it, and the request is sent again at most once",
                chain(&err)
            ),
        )
        .with_cause(err),
        SendError::Sent(err) => {
            let client_body = std::iter::successors(std::error::Error::source(&err), |e| e.source())
                .find_map(|e| e.downcast_ref::<ClientBodyError>());
            let error = match client_body {
                Some(body) => ProxyError::new(
                    ErrorKind::BadRequest,
                    format!("{body}; the upstream got an incomplete request, which was not re-sent"),
                ),
                None => ProxyError::new(
                    ErrorKind::UpstreamFailed,
                    format!(
                        "{conn} connection to {peer} failed after the request was sent ({}); it may have reached the upstream, so it was not re-sent",
                        chain(&err)
                    ),
                ),
            };
            error.with_cause(err)
        }
    };
    error.with_upstream(&upstream.name)
}

/// An error and its causes, joined with `: ` (hyper's own text is only the outermost layer).
fn chain(err: &dyn std::error::Error) -> String {
    let mut detail = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    detail
}
