//! Integration tests: sidepool over real loopback sockets against an in-process TLS exchange.
//! One test binary keeps link time down; one module per feature.

mod support;

/// A client that leaves mid-response: the rest drained to keep the connection, within bounds.
mod abort;
/// Route mode, forward-proxy mode, Host rewrite, hop-by-hop headers, byte-exact queries.
mod addressing;
/// Byte-exact bodies both ways: fixed, chunked, 5 MB streamed, Expect: 100-continue.
mod bodies;
/// runtime.busy_poll: workers poll for the window after a request, then sleep.
mod busy_poll;
/// Config errors and env overrides through the built binary (`sidepool check`).
mod cli;
/// DNS through a resolver on loopback: failures, caching, address changes.
mod dns;
/// 400, 403, 405, 431 and the 502/503/504 kinds.
mod errors;
/// Upstream faults: resets, early closes, stalls, bad certificates, garbage, restarts.
mod faults;
/// Gauges exact during and after load, after cancellations and after idle_timeout.
mod gauges;
/// Hostile clients: smuggling, SSRF attempts, bodies that never end.
mod hostile;
/// CONNECT interception: TLS terminated with the local CA, requests pooled like plain ones.
mod intercept;
// The invariants of ARCHITECTURE.md that are about where code may do something.
mod invariants;
/// max_waiting (queue_full) and the cap on client connections (too_many_clients).
mod limits;
/// Secrets never reach the logs, at trace level.
mod logs;
/// Numbered POST orders through upstream faults: exactly once, nothing lost.
mod orders;
/// Connection reuse, per-host and global caps.
mod pooling;
/// Drop-in addressing: prefix form, its encoded twin, CONNECT :80 tunnels.
mod prefix;
/// The queue under 10x demand: FIFO, bounded waits, fair sharing of the global cap.
mod queueing;
/// The rate-limit guard: cooldowns, holds, budgets, classes, deadlines, against a fake exchange.
mod rate_limit;
/// Secrets in queries (plain or percent-encoded names) and headers stay out of every log line.
mod redaction;
/// The re-send rule: a GET survives a stale connection, a POST is never sent twice.
mod retries;
/// listen.server_timing: queue, connect, upstream, reused or new, on answers and errors.
mod server_timing;
/// Shared budgets on a real redis-server: one budget, one cooldown, outages survived.
mod shared_budget;
/// SIGTERM drains in-flight requests.
mod shutdown;
/// The soak (ignored; `bench/soak` runs it): flat memory and descriptors, nothing lost.
mod soak;
/// The warm floor: refills, prewarm, refresh before the exchange's cutoff, probes, back-off.
mod warm;
