//! `listen.server_timing`: the latency breakdown of one request, for the bot, in the W3C
//! `Server-Timing` syntax:
//!
//! `Server-Timing: queue;dur=0.02, connect;dur=0, upstream;dur=21.3, conn;desc="reused"`
//!
//! - `queue`: the wait for a connection (pool queue and cap);
//! - `connect`: DNS + TCP + TLS + HTTP/1.1 setup paid by this request (0 when it reused one;
//!   the sum of both when a re-send needed a second connection);
//! - `upstream`: from the moment the request was handed to the connection to the response
//!   head;
//! - `conn`: `"reused"` or `"new"`, the connection that carried the answer.
//!
//! sidepool's own error answers carry what is known (`queue` and `connect`). An exchange's own
//! `Server-Timing` field is kept: sidepool appends its field as a separate line, which the
//! syntax defines as the same list continued.

use std::fmt::Write as _;
use std::time::Duration;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

pub static SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

/// What sidepool measured for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timing {
    pub queue: Duration,
    pub connect: Duration,
    /// `None` on sidepool's own error answers.
    pub answered: Option<Answered>,
}

/// The part only an upstream answer has.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Answered {
    pub upstream: Duration,
    pub reused: bool,
}

impl Timing {
    /// The field value, durations in milliseconds with microsecond resolution.
    pub fn value(&self) -> HeaderValue {
        let mut out = String::with_capacity(80);
        out.push_str("queue;dur=");
        push_millis(&mut out, self.queue);
        out.push_str(", connect;dur=");
        push_millis(&mut out, self.connect);
        if let Some(answered) = self.answered {
            out.push_str(", upstream;dur=");
            push_millis(&mut out, answered.upstream);
            out.push_str(if answered.reused {
                ", conn;desc=\"reused\""
            } else {
                ", conn;desc=\"new\""
            });
        }
        HeaderValue::from_str(&out).expect("digits, letters and punctuation only")
    }

    /// Adds sidepool's field line after any the upstream sent.
    pub fn append_to(&self, headers: &mut HeaderMap) {
        headers.append(SERVER_TIMING.clone(), self.value());
    }
}

/// `d` in milliseconds, e.g. `21.3`, `0.02`, `0`: three decimals at most, no trailing zeros.
fn push_millis(out: &mut String, d: Duration) {
    let micros = d.as_micros();
    let (whole, frac) = (micros / 1000, micros % 1000);
    let _ = write!(out, "{whole}");
    if frac != 0 {
        let _ = write!(out, ".{frac:03}");
        out.truncate(out.trim_end_matches('0').len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(micros: u64) -> Duration {
        Duration::from_micros(micros)
    }

    #[test]
    fn an_answer_carries_all_four_metrics_in_w3c_syntax() {
        let timing = Timing {
            queue: ms(20),
            connect: Duration::ZERO,
            answered: Some(Answered {
                upstream: ms(21_300),
                reused: true,
            }),
        };
        assert_eq!(
            timing.value(),
            "queue;dur=0.02, connect;dur=0, upstream;dur=21.3, conn;desc=\"reused\""
        );
    }

    #[test]
    fn a_new_connection_says_so_and_what_it_cost() {
        let timing = Timing {
            queue: Duration::ZERO,
            connect: ms(63_125),
            answered: Some(Answered {
                upstream: ms(1_000_001),
                reused: false,
            }),
        };
        assert_eq!(
            timing.value(),
            "queue;dur=0, connect;dur=63.125, upstream;dur=1000.001, conn;desc=\"new\""
        );
    }

    #[test]
    fn an_error_answer_carries_what_is_known() {
        let timing = Timing {
            queue: Duration::from_secs(5),
            connect: Duration::from_nanos(999),
            answered: None,
        };
        assert_eq!(timing.value(), "queue;dur=5000, connect;dur=0");
    }

    #[test]
    fn the_upstreams_own_field_is_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(&SERVER_TIMING, HeaderValue::from_static("db;dur=3"));
        Timing::default().append_to(&mut headers);
        let lines: Vec<_> = headers.get_all(&SERVER_TIMING).iter().collect();
        assert_eq!(lines, ["db;dur=3", "queue;dur=0, connect;dur=0"]);
    }
}
