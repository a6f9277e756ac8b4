//! Logging: text or JSON lines on stderr, written in batches by one thread.
//!
//! Every line goes through [`batch::Batch`]: `tracing`'s formatter for most lines, and the
//! request line, written once per request, through [`line::RequestLine`], which formats the same
//! bytes without `tracing`'s generic field path. `RUST_LOG` wins over `log.level`, and the
//! request line obeys the same filter (its call site checks `tracing::enabled!`).

mod batch;
mod line;

use std::sync::{Arc, OnceLock};

pub use batch::{FLUSH_INTERVAL, MAX_PENDING_BYTES, WriterGuard};
pub use line::RequestLine;

use crate::config::{LogConfig, LogFormat};
use batch::{Batch, BatchWriter};

/// The process's batch and format, once logging is set up (not in library use or in tests that
/// run sidepool in process, where the request line goes through `tracing` as any other line).
static FAST: OnceLock<(Arc<Batch>, LogFormat)> = OnceLock::new();

/// Sets up logging for the process. Keep the guard alive: dropping it writes every pending line
/// and stops the writer thread (at exit, after the drain).
pub fn init(log: &LogConfig) -> Option<WriterGuard> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let batch = Batch::new();
    let guard = match batch::spawn_writer(&batch, Box::new(std::io::stderr())) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("warning: cannot start the log writer thread: {err}");
            return None;
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(BatchWriter(batch.clone()))
        .with_ansi(ansi);
    let result = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    if let Err(err) = result {
        eprintln!("warning: logging was already set up: {err}");
        return None;
    }
    // Colours are for a person at a terminal: there, `tracing` formats the request line too.
    if !ansi {
        let _ = FAST.set((batch, log.format));
    }
    Some(guard)
}

/// Writes a request line on the fast path. False when there is none (logging not set up by
/// [`init`], or a terminal): the caller then logs it through `tracing`.
pub fn request_line(line: &RequestLine<'_>) -> bool {
    let Some((batch, format)) = FAST.get() else {
        return false;
    };
    line.write_with(*format, |bytes| batch.append(bytes));
    true
}

/// Log lines dropped because stderr fell behind (the `http_pool_log_lines_dropped_total` counter).
pub fn dropped_lines() -> u64 {
    FAST.get().map_or(0, |(batch, _)| batch.dropped())
}
