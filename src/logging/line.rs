//! The request line, formatted straight into a reused buffer.
//!
//! The line is the trader's audit trail, written once per request, so it skips `tracing`'s
//! generic path (a field visitor per value, a fresh event and dispatch) and writes the same
//! bytes `tracing`'s text or JSON formatter would: a unit test compares the two.

use std::cell::RefCell;
use std::fmt::Write as _;

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

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

thread_local! {
    /// One buffer per thread, reused by every line that thread writes.
    static BUFFER: RefCell<String> = const { RefCell::new(String::new()) };
}

impl RequestLine<'_> {
    /// Formats the line (with its newline) and hands it to `sink`.
    pub fn write_with(&self, format: LogFormat, sink: impl FnOnce(&[u8])) {
        BUFFER.with(|buffer| {
            let mut buffer = buffer.borrow_mut();
            buffer.clear();
            match format {
                LogFormat::Text => self.text(&mut buffer),
                LogFormat::Json => self.json(&mut buffer),
            }
            buffer.push('\n');
            sink(buffer.as_bytes());
        });
    }

    fn text(&self, out: &mut String) {
        let _ = SystemTime.format_time(&mut Writer::new(out));
        let _ = write!(
            out,
            "  INFO {}: request upstream={} method={} path={} status={} duration_ms={:?} \
             conn=\"{}\" queue_ms={:?} retry=\"{}\" outcome={:?}",
            self.target,
            self.upstream,
            self.method,
            self.path,
            self.status,
            self.duration_ms,
            self.conn,
            self.queue_ms,
            self.retry,
            self.outcome,
        );
    }

    fn json(&self, out: &mut String) {
        let mut timestamp = String::new();
        let _ = SystemTime.format_time(&mut Writer::new(&mut timestamp));
        out.push_str("{\"timestamp\":");
        json_str(out, &timestamp);
        out.push_str(",\"level\":\"INFO\",\"message\":\"request\",\"upstream\":");
        json_str(out, self.upstream);
        out.push_str(",\"method\":");
        json_str(out, self.method);
        out.push_str(",\"path\":");
        json_str(out, self.path);
        let _ = write!(out, ",\"status\":{},\"duration_ms\":", self.status);
        json_f64(out, self.duration_ms);
        out.push_str(",\"conn\":");
        json_str(out, self.conn);
        out.push_str(",\"queue_ms\":");
        json_f64(out, self.queue_ms);
        out.push_str(",\"retry\":");
        json_str(out, self.retry);
        out.push_str(",\"outcome\":");
        json_str(out, self.outcome);
        out.push_str(",\"target\":");
        json_str(out, self.target);
        out.push('}');
    }
}

fn json_str(out: &mut String, value: &str) {
    // serde_json's escaping, so the line parses exactly as tracing's JSON formatter wrote it.
    out.push_str(&serde_json::Value::from(value).to_string());
}

fn json_f64(out: &mut String, value: f64) {
    out.push_str(&serde_json::Value::from(value).to_string());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

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
