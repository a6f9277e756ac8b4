//! Request classes (`high`, `normal`, `low`), the `x-sidepool-priority` and
//! `x-sidepool-deadline-ms` headers, config rules, and the queue order with its
//! anti-starvation rule.

use std::collections::BTreeMap;
use std::time::Duration;

/// A request's class: waiting requests are served by class, then arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Orders: served first.
    High = 0,
    /// The default.
    Normal = 1,
    /// Market data a bot can afford to delay.
    Low = 2,
}

impl Class {
    /// The label used in metrics and the header.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::High => "high",
            Class::Normal => "normal",
            Class::Low => "low",
        }
    }
}

/// Longest `x-sidepool-deadline-ms` honoured: Binance's largest receive window (60 s).
pub const MAX_DEADLINE: Duration = Duration::from_secs(60);

/// `x-sidepool-priority`: `high`, `normal` or `low`, ASCII case-insensitive, spaces trimmed.
/// Anything else is an error (the request path answers 400): a typo must not silently demote
/// an order.
pub fn parse_priority(value: &[u8]) -> Result<Class, String> {
    match value.trim_ascii().to_ascii_lowercase().as_slice() {
        b"high" => Ok(Class::High),
        b"normal" => Ok(Class::Normal),
        b"low" => Ok(Class::Low),
        _ => Err(format!(
            "x-sidepool-priority must be high, normal or low, not `{}`",
            String::from_utf8_lossy(value)
        )),
    }
}

/// `x-sidepool-deadline-ms`: whole milliseconds (up to 10 digits), capped at [`MAX_DEADLINE`].
/// Anything else is an error (400).
pub fn parse_deadline(value: &[u8]) -> Result<Duration, String> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 10 || !v.iter().all(u8::is_ascii_digit) {
        return Err(format!(
            "x-sidepool-deadline-ms must be whole milliseconds, not `{}`",
            String::from_utf8_lossy(value)
        ));
    }
    let ms: u64 = std::str::from_utf8(v).unwrap_or("0").parse().unwrap_or(0);
    Ok(Duration::from_millis(ms).min(MAX_DEADLINE))
}

/// A config rule: requests with this method (or any, when `None`) whose path starts with
/// `prefix` get `class`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassRule {
    /// Method to match, upper case; `None` matches every method.
    pub method: Option<String>,
    /// Path prefix to match.
    pub prefix: String,
    /// The class given.
    pub class: Class,
}

/// The class of a request: the bot's header first, then the longest matching config rule,
/// then the profile (orders are `high`), else `normal`.
pub fn resolve_class(
    header: Option<Class>,
    rules: &[ClassRule],
    method: &str,
    path: &str,
    order: bool,
) -> Class {
    if let Some(class) = header {
        return class;
    }
    rules
        .iter()
        .filter(|r| r.method.as_deref().is_none_or(|m| m == method) && path.starts_with(&r.prefix))
        .max_by_key(|r| r.prefix.len())
        .map(|r| r.class)
        .unwrap_or(if order { Class::High } else { Class::Normal })
}

/// After this many grants in a row that passed over an older waiter, the oldest waiter of all
/// is served next, whatever its class.
pub const FAIR_EVERY: u32 = 8;

/// Waiters in service order: by class then arrival, except that every [`FAIR_EVERY`]th grant
/// made while an older waiter of a lower class waits goes to the oldest waiter. So `high` gets
/// at least 7 of 8 grants under contention, and a `low` waiter is never passed over forever:
/// with `k` waiters older than it, it is served within `FAIR_EVERY * (k + 1)` grants.
#[derive(Debug)]
pub struct ClassQueue<T> {
    queues: [BTreeMap<u64, T>; 3],
    next_seq: u64,
    passed_over: u32,
}

impl<T> Default for ClassQueue<T> {
    fn default() -> Self {
        ClassQueue {
            queues: [BTreeMap::new(), BTreeMap::new(), BTreeMap::new()],
            next_seq: 0,
            passed_over: 0,
        }
    }
}

impl<T> ClassQueue<T> {
    /// Adds a waiter; the returned ticket removes it with [`ClassQueue::remove`].
    pub fn push(&mut self, class: Class, item: T) -> (Class, u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queues[class as usize].insert(seq, item);
        (class, seq)
    }

    /// Removes a waiter that left (deadline, client gone).
    pub fn remove(&mut self, ticket: (Class, u64)) -> Option<T> {
        self.queues[ticket.0 as usize].remove(&ticket.1)
    }

    /// Waiters now.
    pub fn len(&self) -> usize {
        self.queues.iter().map(BTreeMap::len).sum()
    }

    /// True when nobody waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waiters of one class (for the per-class waiting gauge).
    pub fn len_of(&self, class: Class) -> usize {
        self.queues[class as usize].len()
    }

    /// The next waiter to serve, removed.
    pub fn pop(&mut self) -> Option<(Class, T)> {
        let heads: Vec<(usize, u64)> = (0..3)
            .filter_map(|c| self.queues[c].keys().next().map(|s| (c, *s)))
            .collect();
        let &(by_class, class_seq) = heads.first()?;
        let &(oldest, oldest_seq) = heads.iter().min_by_key(|(_, s)| *s)?;
        let pick = if oldest_seq == class_seq {
            self.passed_over = 0;
            by_class
        } else if self.passed_over + 1 >= FAIR_EVERY {
            self.passed_over = 0;
            oldest
        } else {
            self.passed_over += 1;
            by_class
        };
        let (_, item) = self.queues[pick].pop_first()?;
        let class = [Class::High, Class::Normal, Class::Low][pick];
        Some((class, item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_or_explain() {
        assert_eq!(parse_priority(b" HIGH "), Ok(Class::High));
        assert_eq!(parse_priority(b"low"), Ok(Class::Low));
        assert!(parse_priority(b"urgent").unwrap_err().contains("urgent"));
        assert_eq!(parse_deadline(b"250"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_deadline(b"0"), Ok(Duration::ZERO));
        assert_eq!(parse_deadline(b"9999999999"), Ok(MAX_DEADLINE));
        for bad in [&b""[..], b"-1", b"1.5", b"5s", b"99999999999"] {
            assert!(parse_deadline(bad).is_err());
        }
    }

    #[test]
    fn class_resolution_order() {
        let rules = vec![
            ClassRule {
                method: None,
                prefix: "/api/v3/".into(),
                class: Class::Low,
            },
            ClassRule {
                method: Some("POST".into()),
                prefix: "/api/v3/order".into(),
                class: Class::Normal,
            },
        ];
        assert_eq!(
            resolve_class(Some(Class::Low), &rules, "POST", "/api/v3/order", true),
            Class::Low
        );
        assert_eq!(
            resolve_class(None, &rules, "POST", "/api/v3/order", true),
            Class::Normal
        );
        assert_eq!(
            resolve_class(None, &rules, "GET", "/api/v3/depth", false),
            Class::Low
        );
        assert_eq!(resolve_class(None, &[], "POST", "/x", true), Class::High);
        assert_eq!(resolve_class(None, &[], "GET", "/x", false), Class::Normal);
    }

    #[test]
    fn class_then_arrival_with_no_starvation() {
        let mut q = ClassQueue::default();
        q.push(Class::Low, "low0");
        q.push(Class::Normal, "n0");
        q.push(Class::High, "h0");
        q.push(Class::High, "h1");
        assert_eq!(q.len_of(Class::High), 2);
        assert_eq!(q.pop(), Some((Class::High, "h0")));
        assert_eq!(q.pop(), Some((Class::High, "h1")));
        assert_eq!(q.pop(), Some((Class::Normal, "n0")));
        assert_eq!(q.pop(), Some((Class::Low, "low0")));
        assert!(q.pop().is_none());

        // A flood of high: one low waiter still gets the 8th grant.
        let mut q = ClassQueue::default();
        q.push(Class::Low, 999);
        let mut served = Vec::new();
        for i in 0..20 {
            q.push(Class::High, i);
            q.push(Class::High, i + 100);
            served.push(q.pop().unwrap());
        }
        let at = served.iter().position(|(c, _)| *c == Class::Low).unwrap();
        assert_eq!(at + 1, FAIR_EVERY as usize);
        let t = q.push(Class::Normal, 5);
        assert_eq!(q.remove(t), Some(5));
    }
}
