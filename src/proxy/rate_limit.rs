//! The rate-limit guard on the request path: the bot's reserved `x-sidepool-*` headers, each
//! request's class and deadline, waiting (holding no connection) or refusing before a
//! connection is taken, and reading the exchange's answers for the signals that start
//! cooldowns and holds. The rules themselves live in [`crate::ratelimit`].
//!
//! The common case costs no allocation beyond the endpoint key and no `.await`: the in-memory
//! store decides at once ([`Guarded::clear_now`]). Reading a body to weigh it, waiting for a
//! window, or a store that must be asked over the network take the boxed slow lane
//! ([`Guarded::clear`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method};
use http_body_util::BodyExt as _;
use tokio::time::Instant;

use super::body::RequestBody;
use super::forward::deadline_source;
use super::{Outbound, Upstream, forward};
use crate::config::Limits;
use crate::error::{ErrorKind, ProxyError};
use crate::metrics::{GuardGaugeSource, GuardView, RateLimitMetrics};
use crate::ratelimit::{
    AnyStore, Class, ClassRule, Decision, MAX_INSPECTED_BODY, Reason, RequestFacts, ResponseFacts,
    Started, Ticket, UpstreamGuard, parse_deadline, parse_priority, resolve_class,
    retry_after_secs,
};

/// Every request header with this prefix is sidepool's and is removed before forwarding.
const RESERVED: &str = "x-sidepool-";
const PRIORITY: &str = "x-sidepool-priority";
const DEADLINE: &str = "x-sidepool-deadline-ms";

/// The guard of one upstream with what the request path needs around it.
pub struct Guarded {
    pub(super) name: Arc<str>,
    pub(super) guard: UpstreamGuard<AnyStore>,
    pub(super) rules: Vec<ClassRule>,
    pub(super) metrics: RateLimitMetrics,
}

/// What the bot asked of one request in its `x-sidepool-*` headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Asked {
    /// `x-sidepool-priority`.
    pub priority: Option<Class>,
    /// `x-sidepool-deadline-ms`.
    pub deadline: Option<Duration>,
}

/// Reads `x-sidepool-priority` and `x-sidepool-deadline-ms`, and removes every header whose
/// name starts with `x-sidepool-`, so none reaches the exchange. A value that does not parse
/// is the bot's mistake (400): a typo must not silently demote an order.
pub fn take_reserved(headers: &mut HeaderMap) -> Result<Asked, ProxyError> {
    if !headers.keys().any(|k| k.as_str().starts_with(RESERVED)) {
        return Ok(Asked::default());
    }
    let bad = |message: String| ProxyError::new(ErrorKind::BadRequest, message);
    let priority = headers
        .get(PRIORITY)
        .map(|v| parse_priority(v.as_bytes()))
        .transpose()
        .map_err(bad)?;
    let deadline = headers
        .get(DEADLINE)
        .map(|v| parse_deadline(v.as_bytes()))
        .transpose()
        .map_err(bad)?;
    let reserved: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(RESERVED))
        .cloned()
        .collect();
    for name in reserved {
        headers.remove(name);
    }
    Ok(Asked { priority, deadline })
}

/// A request the guard let through: its class (for the pool's queue) and what to pass back
/// with its answer.
#[derive(Debug, Clone, Copy)]
pub struct Cleared {
    pub class: Class,
    pub ticket: Ticket,
}

impl Guarded {
    fn facts<'a>(out: &'a Outbound, body: Option<&'a [u8]>) -> RequestFacts<'a> {
        RequestFacts {
            method: &out.about.method,
            path: out.about.path.path(),
            query: out.about.path.query(),
            body,
        }
    }

    /// The fast lane: `Some` when the request needs no body read and the store lets it go at
    /// once; `None` sends the caller to [`Guarded::clear`].
    pub fn clear_now(&self, out: &Outbound) -> Option<Cleared> {
        let profile = self.guard.profile();
        if profile.needs_request_body(&out.about.method, out.about.path.path()) {
            return None;
        }
        let facts = Self::facts(out, None);
        let assessment = self.guard.assess(&facts);
        let class = self.class(out, &facts, assessment.order);
        let now = Instant::now();
        match self
            .guard
            .admit_now(&facts, assessment.weight, class, now, out.about.deadline)?
        {
            Decision::Go(ticket) => Some(Cleared { class, ticket }),
            Decision::Wait { .. } | Decision::Refuse { .. } => None,
        }
    }

    fn class(&self, out: &Outbound, facts: &RequestFacts<'_>, order: bool) -> Class {
        resolve_class(
            out.about.asked.priority,
            &self.rules,
            facts.method.as_str(),
            facts.path,
            order,
        )
    }

    /// The slow lane: reads the body when the profile weighs requests by it, then waits for
    /// the cooldown, hold or window to end, or refuses when it outlasts the deadline.
    pub async fn clear(&self, out: &mut Outbound, limits: &Limits) -> Result<Cleared, ProxyError> {
        let body = self.read_body(out, limits.read_timeout).await?;
        let facts = Self::facts(out, body.as_deref());
        let assessment = self.guard.assess(&facts);
        let class = self.class(out, &facts, assessment.order);
        let mut waiting = None;
        // Ends: every wait ends at or before the deadline, and past it a block is refused.
        loop {
            let now = Instant::now();
            let decision = self
                .guard
                .admit(&facts, assessment.weight, class, now, out.about.deadline)
                .await;
            match decision {
                Decision::Go(ticket) => return Ok(Cleared { class, ticket }),
                Decision::Wait { until, reason } => {
                    waiting.get_or_insert_with(|| self.metrics.held(reason, class));
                    tokio::time::sleep_until(until).await;
                }
                Decision::Refuse {
                    retry_after,
                    reason,
                } => {
                    self.metrics.refused(reason, class);
                    return Err(self.refusal(out, retry_after, reason, limits));
                }
            }
        }
    }

    /// The refusal for a block that outlasts the request's deadline (or one that started
    /// while it took its connection).
    pub fn refusal(
        &self,
        out: &Outbound,
        left: Duration,
        reason: Reason,
        limits: &Limits,
    ) -> ProxyError {
        let secs = retry_after_secs(left);
        let why = match reason {
            Reason::Cooldown => {
                format!("the exchange told sidepool to stop; the cooldown ends in {secs}s")
            }
            Reason::Hold => format!(
                "{} {} is held after the exchange's per-endpoint limit; the hold ends in {secs}s",
                out.about.method,
                out.about.path.path()
            ),
            Reason::Budget => {
                let budget = self
                    .guard
                    .budget()
                    .map(|b| b.to_string())
                    .unwrap_or_default();
                format!("the rate-limit budget {budget} is spent; its window ends in {secs}s")
            }
        };
        ProxyError::new(
            ErrorKind::RateLimited,
            format!(
                "{why}, after the request's deadline ({}); nothing was sent (retry after Retry-After, or give a longer x-sidepool-deadline-ms to wait in sidepool)",
                deadline_source(out.about.asked.deadline, limits.queue_timeout)
            ),
        )
        .with_upstream(&self.name)
        .with_retry_after(secs)
    }

    /// True while the whole upstream cools down: warm probes stop (warm connections are
    /// refreshed by reconnecting instead, which sends no request).
    pub fn cooling(&self) -> bool {
        !self.guard.cooldown_left().is_zero()
    }

    /// Lets a `warm_probe` GET of `path` go now, spending its weight like any request's (class
    /// `low`); false when a cooldown, hold or the budget stops it.
    pub fn admit_probe(&self, path: &http::uri::PathAndQuery) -> bool {
        let facts = RequestFacts {
            method: &Method::GET,
            path: path.path(),
            query: path.query(),
            body: None,
        };
        let weight = self.guard.assess(&facts).weight;
        let now = Instant::now();
        matches!(
            self.guard.admit_now(&facts, weight, Class::Low, now, now),
            Some(Decision::Go(_))
        )
    }

    /// The cooldown or hold that blocks the request now, checked once it has a connection.
    pub fn blocked(&self, method: &Method, path: &str) -> Option<(Duration, Reason)> {
        self.guard.blocked(&RequestFacts {
            method,
            path,
            query: None,
            body: None,
        })
    }

    /// Reads the client's body whole when the profile weighs this request by it and its
    /// length is known and at most [`MAX_INSPECTED_BODY`]; the exact bytes are sent on.
    async fn read_body(
        &self,
        out: &mut Outbound,
        read_timeout: Duration,
    ) -> Result<Option<Bytes>, ProxyError> {
        if !self
            .guard
            .profile()
            .needs_request_body(&out.about.method, out.about.path.path())
        {
            return Ok(None);
        }
        let Some(request) = out.request.as_mut() else {
            return Ok(None);
        };
        let small = |body: &RequestBody| {
            http_body::Body::size_hint(body)
                .exact()
                .is_some_and(|n| n <= MAX_INSPECTED_BODY as u64)
        };
        if !matches!(request.body(), RequestBody::Client(_)) || !small(request.body()) {
            return Ok(None);
        }
        let body = std::mem::replace(request.body_mut(), RequestBody::Empty);
        let collected = tokio::time::timeout(read_timeout, body.collect()).await;
        let bytes = match collected {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(err)) => {
                return Err(ProxyError::new(
                    ErrorKind::BadRequest,
                    format!("{err}; nothing was sent"),
                )
                .with_upstream(&self.name));
            }
            Err(_) => {
                return Err(ProxyError::new(
                    ErrorKind::BadRequest,
                    format!("the client's request body did not arrive within read_timeout ({read_timeout:?}); nothing was sent"),
                )
                .with_upstream(&self.name));
            }
        };
        *request.body_mut() = RequestBody::Full(Some(bytes.clone()));
        Ok(Some(bytes))
    }

    /// Reads an answer's head. `Some` when the profile wants its body too: the returned
    /// reader collects it as it streams to the bot and reads it at the end.
    pub fn answer(
        self: &Arc<Self>,
        method: &Method,
        path: &str,
        ticket: Ticket,
        status: u16,
        headers: &HeaderMap,
    ) -> Option<Box<AnswerReader>> {
        if self.guard.profile().wants_response_body(status) {
            return Some(Box::new(AnswerReader {
                guarded: self.clone(),
                method: method.clone(),
                path: path.to_owned(),
                ticket,
                status,
                headers: headers.clone(),
                body: Vec::new(),
                too_large: false,
            }));
        }
        self.observe(method, path, ticket, status, headers, None);
        None
    }

    fn observe(
        &self,
        method: &Method,
        path: &str,
        ticket: Ticket,
        status: u16,
        headers: &HeaderMap,
        body: Option<&[u8]>,
    ) {
        let request = RequestFacts {
            method,
            path,
            query: None,
            body: None,
        };
        let response = ResponseFacts {
            status,
            headers,
            body,
        };
        for started in self.guard.observe(&request, ticket, &response) {
            self.started(method, path, status, started);
        }
    }

    fn started(&self, method: &Method, path: &str, status: u16, started: Started) {
        self.metrics.signal(started.cause);
        let seconds = started.duration.as_secs_f64();
        if started.upstream_wide {
            tracing::warn!(upstream = %self.name, cause = started.cause.as_str(), status, seconds, "rate-limit cooldown started: nothing is sent to this upstream until it ends");
        } else {
            tracing::warn!(upstream = %self.name, cause = started.cause.as_str(), status, seconds, endpoint = %format_args!("{method} {path}"), "rate-limit hold started: this endpoint waits, others keep flowing");
        }
    }
}

/// An answer whose body the profile reads (Binance's ban body, Bybit's retCode): collects
/// up to [`MAX_INSPECTED_BODY`] as the body streams to the bot, and reads it at its end.
pub struct AnswerReader {
    guarded: Arc<Guarded>,
    method: Method,
    path: String,
    ticket: Ticket,
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
    too_large: bool,
}

impl AnswerReader {
    /// A data frame went to the bot.
    pub fn feed(&mut self, data: &[u8]) {
        if self.too_large || self.body.len() + data.len() > MAX_INSPECTED_BODY {
            self.too_large = true;
            self.body = Vec::new();
            return;
        }
        self.body.extend_from_slice(data);
    }

    /// The body ended (`complete`) or was cut short: reads what the answer says, the body
    /// only when it arrived whole.
    pub fn done(self, complete: bool) {
        let body = (complete && !self.too_large).then_some(self.body.as_slice());
        self.guarded.observe(
            &self.method,
            &self.path,
            self.ticket,
            self.status,
            &self.headers,
            body,
        );
    }
}

/// The guards of every upstream, read by a scrape.
pub struct GuardGauges(pub Vec<Arc<Guarded>>);

impl GuardGaugeSource for GuardGauges {
    fn snapshot(&self, out: &mut Vec<GuardView>) {
        for g in &self.0 {
            out.push(GuardView {
                upstream: g.name.clone(),
                cooldown_secs: g.guard.cooldown_left().as_secs_f64(),
                budget_used: g.guard.budget().map(|b| {
                    let window = humantime_serde::re::humantime::format_duration(b.window);
                    (window.to_string(), g.guard.used())
                }),
            });
        }
    }
}

/// Clears the request with its upstream's rate-limit guard (when it has one), then sends it.
/// A cooldown or hold that starts while the request takes its connection sends it back to the
/// guard, which makes it wait or refuses it; nothing is sent into a cooldown.
pub(super) async fn send_guarded(
    upstream: &Upstream,
    out: &mut Outbound,
) -> Result<(forward::Sent, Option<crate::ratelimit::Ticket>), forward::Failed> {
    let guarded = upstream.rate_limit.as_deref();
    // Ends: the third time a block turns up after the checkout, the request is refused.
    let mut rounds = 0;
    loop {
        rounds += 1;
        let cleared = match guarded {
            None => None,
            Some(guarded) => Some(match guarded.clear_now(out) {
                Some(cleared) => cleared,
                // Boxed: waiting and reading bodies are the rare lane, kept out of the
                // future hyper copies for every request.
                None => Box::pin(guarded.clear(out, &upstream.limits))
                    .await
                    .map_err(|error| forward::Failed {
                        error,
                        queue_wait: std::time::Duration::ZERO,
                        connect: std::time::Duration::ZERO,
                        blocked: None,
                    })?,
            }),
        };
        let gate = forward::Gate {
            class: cleared.map_or(
                out.about
                    .asked
                    .priority
                    .unwrap_or(crate::ratelimit::Class::Normal),
                |c| c.class,
            ),
            guard: guarded,
            about: &out.about,
        };
        let failed = match forward::send(upstream, &mut out.request, &gate).await {
            Ok(sent) => return Ok((sent, cleared.map(|c| c.ticket))),
            Err(failed) => failed,
        };
        let (Some(guarded), Some(cleared), Some((left, reason))) =
            (guarded, cleared, failed.blocked)
        else {
            return Err(failed);
        };
        if rounds >= 3 {
            guarded.metrics.refused(reason, cleared.class);
            let error = guarded.refusal(out, left, reason, &upstream.limits);
            return Err(forward::Failed { error, ..failed });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_headers_are_read_and_all_removed() {
        let mut h = HeaderMap::new();
        h.insert("x-sidepool-priority", "HIGH".parse().unwrap());
        h.insert("x-sidepool-deadline-ms", "250".parse().unwrap());
        h.insert("x-sidepool-anything", "x".parse().unwrap());
        h.insert("x-mbx-apikey", "k".parse().unwrap());
        let asked = take_reserved(&mut h).unwrap();
        assert_eq!(
            asked,
            Asked {
                priority: Some(Class::High),
                deadline: Some(Duration::from_millis(250))
            }
        );
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-mbx-apikey"));
        let mut h = HeaderMap::new();
        h.insert("x-sidepool-priority", "urgent".parse().unwrap());
        let err = take_reserved(&mut h).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadRequest);
        assert!(err.message.contains("urgent"));
    }
}
