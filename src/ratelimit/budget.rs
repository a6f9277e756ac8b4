//! The main budget of an upstream (`rate_limit_budget = "N/DURATION"`) and its fixed windows.

use std::time::Duration;

use crate::ratelimit::{Class, WallMs};

/// Longest window a budget may have: exchanges count per second, minute or day.
const MAX_WINDOW: Duration = Duration::from_secs(86_400);

/// A weight budget: at most `limit` weight per fixed window of `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Weight allowed per window, as the exchange counts it.
    pub limit: u32,
    /// Window length; windows are aligned to the Unix epoch (so minute windows start on the
    /// minute, like Binance's).
    pub window: Duration,
}

impl Budget {
    /// A budget of `limit` per `window`.
    pub const fn new(limit: u32, window: Duration) -> Budget {
        Budget { limit, window }
    }

    /// The weight sidepool lets through per window: the limit less a safety margin of 5%
    /// (at least 1) for traffic the exchange counts but sidepool does not see (another
    /// client on the same IP, clock skew at the window edge).
    pub fn effective_limit(&self) -> u32 {
        let margin = (self.limit / 20).max(1);
        self.limit.saturating_sub(margin).max(1)
    }

    /// The weight a request of `class` may bring the window's count up to: `high` the whole
    /// effective limit, other classes all but a reserve of 10% of it (none below 10), so a
    /// flood of market data cannot take the last of a window from the orders.
    pub fn limit_for(&self, class: Class) -> u32 {
        let effective = self.effective_limit();
        match class {
            Class::High => effective,
            Class::Normal | Class::Low => effective - effective / 10,
        }
    }

    /// Window length in milliseconds (at least 1).
    pub fn window_ms(&self) -> u64 {
        (self.window.as_millis() as u64).max(1)
    }

    /// Index of the window holding wall-clock time `now`.
    pub fn window_index(&self, now: WallMs) -> u64 {
        now / self.window_ms()
    }
}

/// `N/DURATION` as `rate_limit_budget` takes it, e.g. `6000/1m`.
impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let window = humantime_serde::re::humantime::format_duration(self.window);
        write!(f, "{}/{window}", self.limit)
    }
}

/// Parses `rate_limit_budget = "N/DURATION"`, e.g. `"6000/1m"`, `"600/5s"`, `"20/2s"`.
/// `N` is a whole number from 1; the duration is humantime syntax (`1m`, `5s`, `500ms`),
/// from 1 ms up to 1 day, whole milliseconds. The error says what is wrong, for the config
/// code to prefix with the key's path.
pub fn parse_budget(text: &str) -> Result<Budget, String> {
    let text = text.trim();
    let Some((count, duration)) = text.split_once('/') else {
        return Err(format!(
            "`{text}` is not N/DURATION (e.g. \"6000/1m\" or \"600/5s\")"
        ));
    };
    let count = count.trim();
    let limit: u32 = match count.parse() {
        Ok(0) => return Err(format!("`{text}`: the count must be at least 1")),
        Ok(n) => n,
        Err(_) => {
            return Err(format!(
                "`{text}`: `{count}` is not a whole number from 1 to {}",
                u32::MAX
            ));
        }
    };
    let duration = duration.trim();
    let window = humantime_serde::re::humantime::parse_duration(duration)
        .map_err(|e| format!("`{text}`: `{duration}` is not a duration ({e}); use e.g. 1m, 5s"))?;
    if window < Duration::from_millis(1) || window > MAX_WINDOW {
        return Err(format!(
            "`{text}`: the window must be from 1ms to 1d, not {duration}"
        ));
    }
    if window.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!(
            "`{text}`: the window must be whole milliseconds, not {duration}"
        ));
    }
    Ok(Budget { limit, window })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_documented_budgets() {
        assert_eq!(
            parse_budget("6000/1m"),
            Ok(Budget::new(6000, Duration::from_secs(60)))
        );
        assert_eq!(
            parse_budget(" 600 / 5s "),
            Ok(Budget::new(600, Duration::from_secs(5)))
        );
        assert_eq!(
            parse_budget("20/500ms"),
            Ok(Budget::new(20, Duration::from_millis(500)))
        );
    }

    #[test]
    fn rejects_bad_budgets_with_a_reason() {
        for (bad, says) in [
            ("6000", "N/DURATION"),
            ("0/1m", "at least 1"),
            ("-5/1m", "whole number"),
            ("abc/1m", "whole number"),
            ("10/soon", "not a duration"),
            ("10/0s", "from 1ms"),
            ("10/2d", "from 1ms"),
            ("10/1500us", "whole milliseconds"),
        ] {
            let err = parse_budget(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn margin_and_windows() {
        let b = Budget::new(6000, Duration::from_secs(60));
        assert_eq!(b.effective_limit(), 5700);
        assert_eq!(Budget::new(10, Duration::from_secs(1)).effective_limit(), 9);
        assert_eq!(Budget::new(1, Duration::from_secs(1)).effective_limit(), 1);
        assert_eq!(b.limit_for(Class::High), 5700);
        assert_eq!(b.limit_for(Class::Low), 5130);
        assert_eq!(
            Budget::new(10, Duration::from_secs(1)).limit_for(Class::Low),
            9
        );
        // Minute windows start on the minute.
        assert_eq!(b.window_index(59_999), 0);
        assert_eq!(b.window_index(60_000), 1);
    }
}
