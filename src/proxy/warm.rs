//! Keeping connections warm: one background task per upstream with `warm_connections > 0`
//! opens the connections the pool's warm floor misses, replaces (or probes) the ones idle for
//! `warm_refresh`, and backs off when the upstream cannot be reached.
//!
//! The pool decides what is wanted (`pool::warm`): a refill never takes a slot a request could
//! use, and every connection counts in the gauges while it is opened. Nothing here touches a
//! bot's request: a probe is a GET sidepool makes itself, on an idle warm connection.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Uri};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::body::RequestBody;
use super::drain::read_to_end;
use super::forward::dial;
use super::{Proxy, Upstream, UpstreamConn};
use crate::metrics::{CloseReason, DrainResult, WarmResult};
use crate::pool::{Connecting, Probe};

/// First wait after a failed warm connect; doubled per failure up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest wait between attempts against an upstream that keeps failing.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Added to a refresh deadline so that one timer serves connections that went idle together.
const TIMER_SLACK: Duration = Duration::from_millis(50);
/// How long a missing floor connection is given to come back before a refill opens another.
/// A burst hands its connections back within a round trip or two; opening replacements while
/// it is in flight would spend CPU on TLS handshakes (here and at the exchange) that the burst
/// itself needs, and would leave more idle connections than the floor once it is back.
const REFILL_SETTLE: Duration = Duration::from_millis(250);
/// The `user-agent` of probes, so an exchange's logs (and a test) can tell them apart.
const PROBE_USER_AGENT: &str = "sidepool-warm-probe";

/// Starts the warm task of every upstream that keeps connections warm, opening the floor at
/// once for those with `prewarm`. The tasks run until aborted (shutdown).
pub fn spawn_warmers(proxy: &Arc<Proxy>) -> Vec<JoinHandle<()>> {
    (0..proxy.upstreams.len())
        .filter(|&index| proxy.upstreams[index].pool.limits().warm_connections > 0)
        .map(|index| {
            let upstream = &proxy.upstreams[index];
            if upstream.prewarm {
                upstream.pool.arm_warm();
            }
            tokio::spawn(keep_warm(proxy.clone(), index))
        })
        .collect()
}

/// How a background attempt ended: a failed connect hands its slot back, so that the
/// back-off is set before the slot is freed (freeing it asks for a refill at once).
type Dialled = Result<(), (Connecting<UpstreamConn>, String)>;

async fn keep_warm(proxy: Arc<Proxy>, index: usize) {
    let upstream = &proxy.upstreams[index];
    let pool = &upstream.pool;
    let mut dials: JoinSet<Dialled> = JoinSet::new();
    let mut probes: JoinSet<Result<(), String>> = JoinSet::new();
    let mut backoff = Backoff::default();
    // When the floor first missed a connection, plus REFILL_SETTLE: the refill is due then.
    let mut refill_at: Option<Instant> = None;
    // Ends when the task is aborted. Each turn starts what is due, then sleeps until the pool
    // wants a connection, an attempt ends, or a deadline passes.
    loop {
        let now = Instant::now();
        let wake = match backoff.until {
            Some(until) if until > now => Some(until),
            _ => {
                if !pool.warm_missing() {
                    refill_at = None;
                } else if *refill_at.get_or_insert(now + REFILL_SETTLE) <= now {
                    refill_at = None;
                    while let Some(slot) = pool.warm_slot() {
                        dials.spawn(warm_dial(proxy.clone(), index, slot));
                    }
                }
                // No probe during a cooldown: the connections are refreshed by reconnecting,
                // which sends the exchange nothing.
                let cooling = upstream.rate_limit.as_ref().is_some_and(|g| g.cooling());
                match &upstream.warm_probe {
                    Some(path) if !cooling => {
                        while let Some(mut taken) = pool.probe_checkout(now) {
                            let admitted = upstream
                                .rate_limit
                                .as_ref()
                                .is_none_or(|g| g.admit_probe(path));
                            if admitted {
                                probes.spawn(probe(proxy.clone(), index, taken));
                            } else {
                                // The budget has no room: replaced by a new connection instead.
                                taken.set_close_reason(CloseReason::Refreshed);
                            }
                        }
                    }
                    _ => {
                        while let Some(slot) = pool.refresh_slot(now) {
                            dials.spawn(warm_dial(proxy.clone(), index, slot));
                        }
                    }
                }
                let refresh = pool.next_refresh().map(|at| at + TIMER_SLACK);
                match (refresh, refill_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        };
        let due = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // Off while a refill settles: the pool notifies at every change while the floor
            // misses a connection, and a Notify never makes a task yield, so listening then
            // would spin this task and starve the requests on its thread. The timer is set.
            () = pool.warm_wanted().notified(), if refill_at.is_none() => {}
            Some(done) = dials.join_next(), if !dials.is_empty() => match done {
                Ok(Ok(())) => backoff.succeeded(upstream),
                Ok(Err((slot, error))) => {
                    backoff.failed(upstream, &error);
                    drop(slot);
                }
                Err(_cancelled) => {}
            },
            Some(done) = probes.join_next(), if !probes.is_empty() => match done {
                Ok(Ok(())) => backoff.succeeded(upstream),
                Ok(Err(error)) => backoff.failed(upstream, &error),
                Err(_cancelled) => {}
            },
            () = due => {}
        }
    }
}

async fn warm_dial(proxy: Arc<Proxy>, index: usize, slot: Connecting<UpstreamConn>) -> Dialled {
    let upstream = &proxy.upstreams[index];
    let metrics = upstream.pool.metrics();
    match dial(upstream, slot.id()).await {
        Ok(conn) => {
            metrics.warm_connected(WarmResult::Ok);
            slot.established_idle(conn);
            Ok(())
        }
        Err(error) => {
            metrics.warm_connected(WarmResult::Failed);
            Err((slot, error.to_string()))
        }
    }
}

/// Sends the `warm_probe` GET on an idle warm connection and reads the answer to its end; the
/// connection then goes back to idle as just used. Any failure closes it (the floor refills).
async fn probe(
    proxy: Arc<Proxy>,
    index: usize,
    mut taken: Probe<UpstreamConn>,
) -> Result<(), String> {
    let upstream = &proxy.upstreams[index];
    let metrics = upstream.pool.metrics();
    let outcome = probe_once(upstream, &mut taken).await;
    match &outcome {
        Ok(()) => {
            metrics.warm_probed(WarmResult::Ok);
            taken.release();
        }
        Err(_) => {
            metrics.warm_probed(WarmResult::Failed);
            taken.set_close_reason(CloseReason::Error);
        }
    }
    outcome
}

async fn probe_once(upstream: &Upstream, taken: &mut Probe<UpstreamConn>) -> Result<(), String> {
    let path = upstream.warm_probe.clone().ok_or("no warm_probe path")?;
    let limits = &upstream.limits;
    let mut request = Request::new(RequestBody::Empty);
    *request.uri_mut() = Uri::from(path);
    let headers = request.headers_mut();
    headers.insert(header::HOST, upstream.authority.clone());
    headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static(PROBE_USER_AGENT),
    );
    let send = &mut taken.conn().send;
    let exchange = async {
        send.ready()
            .await
            .map_err(|e| format!("connection closed: {e}"))?;
        let response = send
            .send_request(request)
            .await
            .map_err(|e| format!("probe failed: {e}"))?;
        let status = response.status();
        let mut body = response.into_body();
        match read_to_end(&mut body).await {
            DrainResult::Kept => Ok(status),
            DrainResult::TooLarge => Err("the probe's answer is over 64 KiB".to_string()),
            DrainResult::Timeout | DrainResult::Error => {
                Err("the probe's answer broke off".to_string())
            }
        }
    };
    let status = tokio::time::timeout(limits.read_timeout, exchange)
        .await
        .map_err(|_| {
            format!(
                "no answer to the probe within read_timeout ({:?})",
                limits.read_timeout
            )
        })??;
    tracing::debug!(upstream = %upstream.name, %status, "warm probe answered");
    Ok(())
}

/// Exponential back-off with jitter between failed background attempts, reset by a success.
#[derive(Default)]
struct Backoff {
    /// Failures in a row.
    failures: u32,
    /// No attempt before this.
    until: Option<Instant>,
}

impl Backoff {
    fn failed(&mut self, upstream: &Upstream, error: &str) {
        self.failures = self.failures.saturating_add(1);
        let delay = backoff_delay(self.failures, jitter());
        self.until = Some(Instant::now() + delay);
        if self.failures == 1 {
            tracing::warn!(upstream = %upstream.name, %error, "a warm connection failed; retrying with back-off (requests are not affected)");
        } else {
            tracing::debug!(upstream = %upstream.name, %error, failures = self.failures, retry_in = ?delay, "a warm connection failed again");
        }
    }

    fn succeeded(&mut self, upstream: &Upstream) {
        if self.failures > 0 {
            tracing::info!(upstream = %upstream.name, failures = self.failures, "warm connections work again");
        }
        self.failures = 0;
        self.until = None;
    }
}

/// The wait after `failures` failures in a row: `BACKOFF_MIN` doubled per failure, capped at
/// `BACKOFF_MAX`, then spread by ±25% (`jitter` in `[0, 1)`), so sidecars that lost the same
/// exchange do not retry in step.
fn backoff_delay(failures: u32, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    let step = BACKOFF_MIN.saturating_mul(1 << doublings).min(BACKOFF_MAX);
    step.mul_f64(0.75 + jitter / 2.0)
}

/// A number in `[0, 1)`, from the process's random hasher keys and the clock.
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let bits = RandomState::new().hash_one(nanos);
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_from_100ms_to_30s_spread_by_a_quarter() {
        assert_eq!(backoff_delay(1, 0.5), Duration::from_millis(100));
        assert_eq!(backoff_delay(1, 0.0), Duration::from_millis(75));
        assert!(backoff_delay(1, 0.999) < Duration::from_millis(125));
        assert_eq!(backoff_delay(2, 0.5), Duration::from_millis(200));
        assert_eq!(backoff_delay(4, 0.5), Duration::from_millis(800));
        assert_eq!(backoff_delay(40, 0.5), BACKOFF_MAX);
        assert_eq!(backoff_delay(u32::MAX, 0.0), BACKOFF_MAX.mul_f64(0.75));
    }

    #[test]
    fn jitter_is_in_the_unit_interval_and_varies() {
        let draws: Vec<f64> = (0..64).map(|_| jitter()).collect();
        assert!(draws.iter().all(|j| (0.0..1.0).contains(j)));
        assert!(draws.windows(2).any(|w| w[0] != w[1]));
    }
}
