//! Request classes (`high`, `normal`, `low`), the `x-sidepool-priority` and
//! `x-sidepool-deadline-ms` headers, config rules, and the anti-starvation constant the pool's
//! wait queue applies.

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
/// is served next, whatever its class (the pool's wait queue applies it). So `high` gets at
/// least 7 of 8 grants under contention, and a `low` waiter is never passed over forever:
/// with `k` waiters older than it, it is served within `FAIR_EVERY * (k + 1)` grants.
pub const FAIR_EVERY: u32 = 8;

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
}
