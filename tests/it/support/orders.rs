//! Numbered POST orders and the exactly-once check: every order the exchange received was
//! received once, and every order the client saw answered 2xx was received.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

use super::harness::request;
use super::upstream::Received;

/// `POST /<upstream>/order?id=<id>` with body `{"id":<id>}`.
pub fn order(upstream: &str, id: u64) -> Request<Full<Bytes>> {
    let mut req = request(
        "POST",
        &format!("/{upstream}/order?id={id}"),
        format!("{{\"id\":{id}}}"),
    );
    req.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    req
}

/// The order id of a request the exchange received, if it is an order.
pub fn order_id(r: &Received) -> Option<u64> {
    if r.method != "POST" {
        return None;
    }
    r.path_and_query
        .rsplit_once("/order?id=")
        .and_then(|(_, id)| id.parse().ok())
}

/// What the client saw, per order.
#[derive(Default)]
pub struct Ledger {
    answers: HashMap<u64, Answer>,
}

/// How one order was answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A status (2xx from the exchange, or sidepool's error kind for its own errors).
    Status(StatusCode, Option<String>),
    /// The client's connection failed before a complete answer.
    Broken,
}

impl Ledger {
    /// Records the answer to order `id`; `kind` is the `x-sidepool-error` header, if any.
    pub fn record(&mut self, id: u64, answer: Answer) {
        let previous = self.answers.insert(id, answer);
        assert!(
            previous.is_none(),
            "order {id} recorded twice by the client"
        );
    }

    /// Merges another client's ledger.
    pub fn merge(&mut self, other: Ledger) {
        for (id, answer) in other.answers {
            self.record(id, answer);
        }
    }

    /// Answers by outcome (`"200"`, `"502 upstream_failed"`, `"broken"`), for reports.
    pub fn outcomes(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for answer in self.answers.values() {
            let key = match answer {
                Answer::Status(status, Some(kind)) => format!("{} {kind}", status.as_u16()),
                Answer::Status(status, None) => status.as_u16().to_string(),
                Answer::Broken => "broken".to_string(),
            };
            *out.entry(key).or_default() += 1;
        }
        out
    }

    /// Orders answered so far.
    pub fn len(&self) -> usize {
        self.answers.len()
    }

    /// Panics unless every received order was received once and every 2xx order was received.
    /// Returns (orders received, orders answered 2xx).
    pub fn check_exactly_once(&self, received: &[Received]) -> (usize, usize) {
        let mut times: HashMap<u64, usize> = HashMap::new();
        for r in received {
            if let Some(id) = order_id(r) {
                *times.entry(id).or_default() += 1;
            }
        }
        let duplicated: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            duplicated.is_empty(),
            "orders received more than once: {duplicated:?}"
        );
        let mut ok = 0;
        for (id, answer) in &self.answers {
            if let Answer::Status(status, _) = answer
                && status.is_success()
            {
                ok += 1;
                assert!(
                    times.contains_key(id),
                    "order {id} was answered {status} but never reached the exchange"
                );
            }
        }
        let unknown: Vec<_> = times
            .keys()
            .filter(|id| !self.answers.contains_key(id))
            .collect();
        assert!(
            unknown.is_empty(),
            "the exchange received orders the client never sent: {unknown:?}"
        );
        (times.len(), ok)
    }
}
