//! A fake exchange: an in-process HTTPS (HTTP/1.1 over TLS) server on loopback
//! that records every request, counts connections and requests, and misbehaves on demand.
//!
//! Tests synchronise through the `wait_*` methods, never through sleeps: every counter is
//! published through one `tokio::sync::watch` channel, so a waiter wakes on each change.
//! Do not use these waits under `tokio::time::pause()`: with paused time the runtime
//! auto-advances the 10 s guard while it waits for real socket I/O.
//!
//! A handler that panics (a failed assertion inside it) fails the test: the request gets a
//! 500 so nothing hangs, and the panic is raised again by the next `wait_*`, by
//! [`TestUpstream::stop`] or when the upstream is dropped.
//!
//! Layout, by role:
//! - `reply`: the reply language a handler speaks ([`Reply`], [`Received`]);
//! - `server`: [`TestUpstream`], its builder, the counters and the waits;
//! - `conn`: one connection's life: accept, TLS, idle close, and killing it on demand;
//! - `handler`: one request: read and record it, run the handler, act on its reply;
//! - `body`: the response bodies, including the generated stream.

mod body;
mod conn;
mod handler;
mod reply;
mod server;
#[cfg(test)]
mod tests;

pub use reply::{AfterRaw, Received, Reply, stream_bytes};
pub use server::TestUpstream;
