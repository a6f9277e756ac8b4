//! The request line, formatted straight into a reused buffer.
//!
//! The line is the trader's audit trail, written once per request, so it skips `tracing`'s
//! generic path (a field visitor per value, a fresh event and dispatch) and writes the same
//! bytes `tracing`'s text or JSON formatter would: a unit test compares the two.

use std::cell::RefCell;
use std::fmt::Write as _;

use crate::config::LogFormat;

/// The fields of one request line, in the order they are written.
pub struct RequestLine<'a> {
    /// The module that logs it (`tracing`'s target).
    pub target: &'static str,
    /// The upstream's name.
    pub upstream: &'a str,
    /// The client's method.
    pub method: &'a str,
    /// The upstream path and query, already redacted.
    pub path: &'a str,
    /// The status the client received.
    pub status: u16,
    /// From the request's arrival to the response's end.
    pub duration_ms: f64,
    /// `reused` or `new`.
    pub conn: &'static str,
    /// Time waited for a connection.
    pub queue_ms: f64,
    /// The re-send reason, or `none`.
    pub retry: &'static str,
    /// `complete`, or how the response ended early.
    pub outcome: &'a str,
}

/// The formatted second of the last line this thread wrote: lines within one second share
/// their timestamp's first 20 bytes, so formatting the date costs once a second, not per line.
struct Clock {
    second: u64,
    prefix: String,
}

thread_local! {
    /// One buffer per thread, reused by every line that thread writes.
    static BUFFER: RefCell<(String, Clock)> = const {
        RefCell::new((String::new(), Clock { second: u64::MAX, prefix: String::new() }))
    };
}

impl RequestLine<'_> {
    /// Formats the line (with its newline) and hands it to `sink`.
    pub fn write_with(&self, format: LogFormat, sink: impl FnOnce(&[u8])) {
        BUFFER.with(|cell| {
            let (buffer, clock) = &mut *cell.borrow_mut();
            buffer.clear();
            match format {
                LogFormat::Text => self.text(buffer, clock),
                LogFormat::Json => self.json(buffer, clock),
            }
            buffer.push('\n');
            sink(buffer.as_bytes());
        });
    }

    fn text(&self, out: &mut String, clock: &mut Clock) {
        clock.write_now(out);
        for (text, value) in [
            ("  INFO ", self.target),
            (": request upstream=", self.upstream),
            (" method=", self.method),
            (" path=", self.path),
        ] {
            out.push_str(text);
            out.push_str(value);
        }
        out.push_str(" status=");
        push_u16(out, self.status);
        out.push_str(" duration_ms=");
        push_f64(out, self.duration_ms, LogFormat::Text);
        out.push_str(" conn=\"");
        out.push_str(self.conn);
        out.push_str("\" queue_ms=");
        push_f64(out, self.queue_ms, LogFormat::Text);
        out.push_str(" retry=\"");
        out.push_str(self.retry);
        out.push_str("\" outcome=");
        if needs_escape(self.outcome) {
            let _ = write!(out, "{:?}", self.outcome);
        } else {
            out.push('"');
            out.push_str(self.outcome);
            out.push('"');
        }
    }

    fn json(&self, out: &mut String, clock: &mut Clock) {
        out.push_str("{\"timestamp\":\"");
        clock.write_now(out);
        out.push_str("\",\"level\":\"INFO\",\"message\":\"request\",\"upstream\":");
        json_str(out, self.upstream);
        out.push_str(",\"method\":");
        json_str(out, self.method);
        out.push_str(",\"path\":");
        json_str(out, self.path);
        out.push_str(",\"status\":");
        push_u16(out, self.status);
        out.push_str(",\"duration_ms\":");
        push_f64(out, self.duration_ms, LogFormat::Json);
        out.push_str(",\"conn\":");
        json_str(out, self.conn);
        out.push_str(",\"queue_ms\":");
        push_f64(out, self.queue_ms, LogFormat::Json);
        out.push_str(",\"retry\":");
        json_str(out, self.retry);
        out.push_str(",\"outcome\":");
        json_str(out, self.outcome);
        out.push_str(",\"target\":");
        json_str(out, self.target);
        out.push('}');
    }
}

impl Clock {
    /// `tracing`'s timestamp format for now: RFC 3339, UTC, microseconds (`...T08:35:46.123456Z`).
    fn write_now(&mut self, out: &mut String) {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let second = since_epoch.as_secs();
        if second != self.second {
            self.second = second;
            self.prefix.clear();
            let (year, month, day) = civil_from_days((second / 86_400) as i64);
            let in_day = second % 86_400;
            let _ = write!(
                self.prefix,
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.",
                in_day / 3600,
                in_day / 60 % 60,
                in_day % 60
            );
        }
        out.push_str(&self.prefix);
        let micros = since_epoch.subsec_micros();
        let mut digits = [b'0'; 6];
        let mut rest = micros;
        for digit in digits.iter_mut().rev() {
            *digit = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        out.push_str(std::str::from_utf8(&digits).unwrap_or("000000"));
        out.push('Z');
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn push_u16(out: &mut String, value: u16) {
    out.push_str(itoa::Buffer::new().format(value));
}

/// What `{:?}` writes for an f64 (and serde_json for a finite one), without the formatting
/// machinery: the shortest digits that read back as the same value.
fn push_f64(out: &mut String, value: f64, format: LogFormat) {
    if value.is_finite() && (value == 0.0 || (1e-4..1e15).contains(&value.abs())) {
        out.push_str(zmij::Buffer::new().format_finite(value));
        return;
    }
    // Exponent forms differ between formatters: keep the one tracing's formatter uses.
    match format {
        LogFormat::Text => {
            let _ = write!(out, "{value:?}");
        }
        LogFormat::Json => out.push_str(&serde_json::Value::from(value).to_string()),
    }
}

fn needs_escape(value: &str) -> bool {
    value
        .bytes()
        .any(|b| b == b'"' || b == b'\\' || b < 0x20 || b == 0x7f)
}

fn json_str(out: &mut String, value: &str) {
    if needs_escape(value) || !value.is_ascii() {
        // serde_json's escaping, so the line parses exactly as tracing's formatter wrote it.
        out.push_str(&serde_json::Value::from(value).to_string());
    } else {
        out.push('"');
        out.push_str(value);
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    fn sample() -> RequestLine<'static> {
        RequestLine {
            target: "sidepool::proxy::log",
            upstream: "bybit",
            method: "POST",
            path: "/v5/order/create?category=spot&sign=REDACTED&note=\"q\\",
            status: 200,
            duration_ms: 21.345678,
            conn: "reused",
            queue_ms: 0.0,
            retry: "none",
            outcome: "complete",
        }
    }

    /// The line `tracing`'s own formatter writes for the same fields (what the fast path replaced).
    fn through_tracing(format: LogFormat) -> String {
        let capture = Capture::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(capture.clone())
            .with_ansi(false);
        let line = sample();
        let emit = || {
            tracing::info!(
                target: "sidepool::proxy::log",
                upstream = %line.upstream,
                method = %line.method,
                path = %line.path,
                status = line.status,
                duration_ms = line.duration_ms,
                conn = line.conn,
                queue_ms = line.queue_ms,
                retry = line.retry,
                outcome = line.outcome,
                "request"
            )
        };
        match format {
            LogFormat::Text => tracing::subscriber::with_default(builder.finish(), emit),
            LogFormat::Json => tracing::subscriber::with_default(
                builder
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .finish(),
                emit,
            ),
        }
        String::from_utf8(capture.0.lock().unwrap().clone()).unwrap()
    }

    fn fast(format: LogFormat) -> String {
        let mut out = Vec::new();
        sample().write_with(format, |bytes| out.extend_from_slice(bytes));
        String::from_utf8(out).unwrap()
    }

    /// Everything after the timestamp (which differs by the microseconds between the two).
    fn after_timestamp(line: &str, format: LogFormat) -> &str {
        match format {
            LogFormat::Text => &line[line.find(' ').unwrap()..],
            LogFormat::Json => &line[line.find(",\"level\"").unwrap()..],
        }
    }

    #[test]
    fn the_fast_text_line_is_byte_for_byte_what_tracing_writes() {
        let (slow, fast) = (through_tracing(LogFormat::Text), fast(LogFormat::Text));
        assert_eq!(
            after_timestamp(&fast, LogFormat::Text),
            after_timestamp(&slow, LogFormat::Text),
            "\nfast: {fast}slow: {slow}"
        );
        assert_eq!(fast.find(' '), slow.find(' '), "same timestamp width");
    }

    #[test]
    fn durations_are_written_as_debug_formatting_writes_them() {
        for value in [
            0.0, 1e-6, 0.0001, 0.02, 1.5, 21.345678, 999.999, 65432.1, 1e20,
        ] {
            let (mut text, mut json) = (String::new(), String::new());
            push_f64(&mut text, value, LogFormat::Text);
            push_f64(&mut json, value, LogFormat::Json);
            assert_eq!(text, format!("{value:?}"));
            assert_eq!(json, serde_json::Value::from(value).to_string());
        }
    }

    #[test]
    fn days_become_the_calendar_date() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_789), (2026, 12, 2));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn the_cached_timestamp_has_tracing_format() {
        let mut clock = Clock {
            second: u64::MAX,
            prefix: String::new(),
        };
        let (mut first, mut second, mut reference) = (String::new(), String::new(), String::new());
        clock.write_now(&mut first);
        clock.write_now(&mut second);
        let _ = SystemTime.format_time(&mut Writer::new(&mut reference));
        for stamp in [&first, &second] {
            assert_eq!(stamp.len(), reference.len(), "{stamp} vs {reference}");
            assert_eq!(stamp[..16], reference[..16], "same date and minute");
            assert!(stamp.ends_with('Z') && stamp.as_bytes()[19] == b'.');
        }
    }

    #[test]
    fn the_fast_json_line_is_byte_for_byte_what_tracing_writes() {
        let (slow, fast) = (through_tracing(LogFormat::Json), fast(LogFormat::Json));
        assert_eq!(
            after_timestamp(&fast, LogFormat::Json),
            after_timestamp(&slow, LogFormat::Json),
            "\nfast: {fast}slow: {slow}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&fast).unwrap();
        assert_eq!(parsed["path"], sample().path);
    }
}
