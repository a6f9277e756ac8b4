//! A client that leaves mid-response does not cost the upstream connection: when the rest of
//! the response is small and arrives promptly, it is read to the end in a task of its own and
//! the connection goes back to the pool.
//!
//! An HTTP/1.1 connection can carry the next request only once the previous response has been
//! read to its end, so without this every abort (a bot's timeout, a load generator that
//! stops, a script killed mid-request) closes the connection, and the next request pays a
//! new TCP + TLS handshake. The rest is read and thrown away, bounded by [`DRAIN_MAX_BYTES`]
//! and [`DRAIN_MAX_TIME`]; beyond either, the connection is closed as before.
//!
//! While it drains, the connection stays checked out (`active` in the gauges, counted toward
//! both caps): it is not usable by anyone else until its response has ended.

use std::time::Duration;

use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::UpstreamConn;
use crate::metrics::{CloseReason, DrainResult};
use crate::pool::Pooled;

/// The most body bytes read to save one connection: exchange answers (JSON) are a few KiB;
/// a larger rest costs more to read than a new handshake would.
pub const DRAIN_MAX_BYTES: u64 = 64 * 1024;

/// The longest the rest may take to arrive. It is on loopback-near exchanges' time scale:
/// a rest still missing after this is a slow stream, not a response about to end.
pub const DRAIN_MAX_TIME: Duration = Duration::from_millis(500);

/// Reads the rest of `body` in the background and releases `pooled` when it ends within the
/// bounds, or closes it. The caller has checked that the connection may be reused. Without a
/// runtime (at shutdown), the connection is closed.
pub fn spawn(body: Incoming, pooled: Pooled<UpstreamConn>) {
    if exceeds_bound(&body) {
        close(pooled, DrainResult::TooLarge);
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(drain(body, pooled));
        }
        Err(_) => close(pooled, DrainResult::Timeout),
    }
}

/// True when the rest is known to be larger than the byte bound.
fn exceeds_bound(body: &Incoming) -> bool {
    body.size_hint().lower() > DRAIN_MAX_BYTES
}

async fn drain(mut body: Incoming, pooled: Pooled<UpstreamConn>) {
    let outcome = tokio::time::timeout(DRAIN_MAX_TIME, read_to_end(&mut body)).await;
    match outcome {
        Ok(DrainResult::Kept) => {
            pooled.pool().metrics().abort_drained(DrainResult::Kept);
            pooled.release_at(Instant::now());
        }
        Ok(other) => close(pooled, other),
        Err(_elapsed) => close(pooled, DrainResult::Timeout),
    }
}

/// Reads frames until the body ends, or until more than the byte bound has come.
pub(super) async fn read_to_end(body: &mut Incoming) -> DrainResult {
    let mut read = 0u64;
    // Bounded: every turn reads at least one frame, and the total is capped in bytes (and,
    // by the caller, in time).
    while !body.is_end_stream() {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    read += data.len() as u64;
                    if read > DRAIN_MAX_BYTES {
                        return DrainResult::TooLarge;
                    }
                }
            }
            Some(Err(_)) => return DrainResult::Error,
        }
    }
    DrainResult::Kept
}

fn close(mut pooled: Pooled<UpstreamConn>, result: DrainResult) {
    pooled.pool().metrics().abort_drained(result);
    pooled.set_close_reason(CloseReason::Incomplete);
}
