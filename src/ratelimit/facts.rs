//! What the guard is told about a request and an answer, and what it concludes from an answer.

use std::time::Duration;

use http::{HeaderMap, Method};

/// A request as the bot sent it. Everything borrows the exact bytes that will be forwarded.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The path as sent upstream, without the query (e.g. `/api/v3/depth`).
    pub path: &'a str,
    /// The query as sent, without `?` (never decoded and re-encoded).
    pub query: Option<&'a str>,
    /// The buffered body, only for requests whose profile asks for it
    /// ([`Profile::needs_request_body`](crate::ratelimit::Profile::needs_request_body)) and whose
    /// body fits [`MAX_INSPECTED_BODY`](crate::ratelimit::MAX_INSPECTED_BODY); `None` otherwise.
    pub body: Option<&'a [u8]>,
}

impl<'a> RequestFacts<'a> {
    /// The query parameter `name`'s raw value (first occurrence), as sent.
    pub fn query_param(&self, name: &str) -> Option<&'a str> {
        self.query?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }
}

/// An answer from the exchange.
#[derive(Debug, Clone, Copy)]
pub struct ResponseFacts<'a> {
    /// Its status code.
    pub status: u16,
    /// Its headers.
    pub headers: &'a HeaderMap,
    /// The body, when the profile asked for it
    /// ([`Profile::wants_response_body`](crate::ratelimit::Profile::wants_response_body)) and it
    /// is small enough to have been read whole; `None` otherwise.
    pub body: Option<&'a [u8]>,
}

/// Why a cooldown or hold started: a stable label for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// 429 with `Retry-After`.
    TooManyRequests,
    /// 418 (Binance: the IP is banned).
    Banned,
    /// Bybit 403 "access too frequent".
    AccessTooFrequent,
    /// A per-endpoint limit reached (Bybit retCode 10006 or `X-Bapi-Limit-Status: 0`).
    EndpointLimit,
    /// OKX 429 with code 50011.
    OkxTooManyRequests,
    /// Hyperliquid's per-address limit ("Too many cumulative requests sent").
    AddressLimit,
    /// Bitunix code 10005 or 10006.
    BitunixTooFrequent,
    /// The IETF `RateLimit` field says no quota is left.
    QuotaExhausted,
}

impl Cause {
    /// Every cause, in declaration order (metrics index by discriminant).
    pub const ALL: [Cause; 8] = [
        Cause::TooManyRequests,
        Cause::Banned,
        Cause::AccessTooFrequent,
        Cause::EndpointLimit,
        Cause::OkxTooManyRequests,
        Cause::AddressLimit,
        Cause::BitunixTooFrequent,
        Cause::QuotaExhausted,
    ];

    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::TooManyRequests => "too_many_requests",
            Cause::Banned => "banned",
            Cause::AccessTooFrequent => "access_too_frequent",
            Cause::EndpointLimit => "endpoint_limit",
            Cause::OkxTooManyRequests => "okx_too_many_requests",
            Cause::AddressLimit => "address_limit",
            Cause::BitunixTooFrequent => "bitunix_too_frequent",
            Cause::QuotaExhausted => "quota_exhausted",
        }
    }
}

/// One thing an answer tells the guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Stop the whole upstream for this long.
    Cooldown {
        /// How long from the answer.
        duration: Duration,
        /// Why.
        cause: Cause,
    },
    /// Stop this request's endpoint (method + path) for this long; others keep flowing.
    Hold {
        /// How long from the answer.
        duration: Duration,
        /// Why.
        cause: Cause,
    },
    /// The exchange's count of weight used in the main budget's current 1-minute window
    /// (`X-MBX-USED-WEIGHT-1M`).
    UsedWeight(u64),
}

/// The key of a per-endpoint hold: method and path, without the query.
pub fn endpoint_key(method: &Method, path: &str) -> String {
    let mut key = String::with_capacity(method.as_str().len() + 1 + path.len());
    key.push_str(method.as_str());
    key.push(' ');
    key.push_str(path);
    key
}
