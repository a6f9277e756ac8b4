//! The log writer: lines are appended to one in-memory batch, and a dedicated thread writes the
//! whole batch to stderr with one system call, at most every [`FLUSH_INTERVAL`].
//!
//! Why: handing each line to a writer thread over a channel cost a wake-up of that thread and a
//! `write` per request (docs/benchmarks.md, *The request log line*). Here a request appends its
//! line under an uncontended lock; the thread is woken only when the batch goes from empty to
//! non-empty or passes [`WAKE_AT_BYTES`], and it then waits out the rest of the interval so
//! that every line arriving meanwhile goes out in the same write.
//!
//! A slow or blocked stderr never stalls a request: past [`MAX_PENDING_BYTES`] waiting, new
//! lines are dropped and counted (`http_pool_log_lines_dropped_total`).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The longest a line waits in the batch before it is written (so a person watching sees it
/// promptly); a line arriving into an empty batch is written within this plus the write itself.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// A batch this large is written at once, without waiting out the interval.
pub const WAKE_AT_BYTES: usize = 64 * 1024;
/// Bytes that may wait for the writer before new lines are dropped (about 65,000 request lines).
pub const MAX_PENDING_BYTES: usize = 16 * 1024 * 1024;

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    closed: bool,
}

/// The batch shared by every thread that logs and the one thread that writes.
pub struct Batch {
    pending: Mutex<Pending>,
    wake: Condvar,
    dropped: AtomicU64,
}

impl Batch {
    /// An empty batch (start its writer with [`spawn_writer`]).
    pub fn new() -> Arc<Batch> {
        Arc::new(Batch {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while appending leaves at worst a partial line: keep logging.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends one or more whole lines. Never blocks on the writer: a full batch drops them.
    pub fn append(&self, line: &[u8]) {
        let mut pending = self.lock();
        let before = pending.bytes.len();
        if before + line.len() > MAX_PENDING_BYTES {
            drop(pending);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pending.bytes.extend_from_slice(line);
        let after = pending.bytes.len();
        drop(pending);
        if before == 0 || (before < WAKE_AT_BYTES && after >= WAKE_AT_BYTES) {
            self.wake.notify_one();
        }
    }

    /// Lines dropped because the writer fell [`MAX_PENDING_BYTES`] behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Asks the writer to write what is pending and stop.
    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// The writer's loop: wait for a first line, wait out the interval (or a full batch, or
    /// close), write everything pending in one go. Returns when closed and empty.
    fn write_until_closed(&self, out: &mut dyn Write) {
        let mut spare = Vec::new();
        let mut pending = self.lock();
        loop {
            while pending.bytes.is_empty() && !pending.closed {
                pending = self
                    .wake
                    .wait(pending)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            let due = Instant::now() + FLUSH_INTERVAL;
            while !pending.closed && pending.bytes.len() < WAKE_AT_BYTES {
                let left = due.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                pending = self
                    .wake
                    .wait_timeout(pending, left)
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .0;
            }
            std::mem::swap(&mut pending.bytes, &mut spare);
            let closed = pending.closed;
            drop(pending);
            // A failed write (stderr closed) loses these lines; there is nowhere to report it.
            let _ = out.write_all(&spare).and_then(|()| out.flush());
            spare.clear();
            pending = self.lock();
            if closed && pending.bytes.is_empty() {
                return;
            }
        }
    }
}

/// Writes everything pending and stops the writer thread when dropped (at exit).
pub struct WriterGuard {
    batch: Arc<Batch>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.batch.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the thread that writes `batch` to `out`.
pub fn spawn_writer(
    batch: &Arc<Batch>,
    mut out: Box<dyn Write + Send>,
) -> std::io::Result<WriterGuard> {
    let for_thread = batch.clone();
    let thread = std::thread::Builder::new()
        .name("sidepool-log".into())
        .spawn(move || for_thread.write_until_closed(&mut *out))?;
    Ok(WriterGuard {
        batch: batch.clone(),
        thread: Some(thread),
    })
}

/// `tracing`'s writer for the other log lines: the formatter hands over each line in one
/// `write_all`, which becomes one append.
#[derive(Clone)]
pub struct BatchWriter(pub Arc<Batch>);

impl Write for BatchWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = BatchWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read while the writer thread writes to it.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut sink = self.0.lock().unwrap();
            sink.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
            let mut sink = self.0.lock().unwrap();
            sink.0.extend_from_slice(buf);
            sink.1 += 1;
            Ok(())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().0.clone()).unwrap()
        }
        fn writes(&self) -> usize {
            self.0.lock().unwrap().1
        }
    }

    #[test]
    fn many_lines_go_out_in_few_writes_and_all_are_flushed_at_close() {
        let batch = Batch::new();
        let sink = Sink::default();
        let guard = spawn_writer(&batch, Box::new(sink.clone())).unwrap();
        for i in 0..1000 {
            batch.append(format!("line {i}\n").as_bytes());
        }
        drop(guard);
        let text = sink.text();
        assert_eq!(text.lines().count(), 1000, "every line is written at close");
        assert!(
            text.lines()
                .enumerate()
                .all(|(i, l)| l == format!("line {i}"))
        );
        assert!(
            sink.writes() < 100,
            "lines are batched: {} writes for 1000 lines",
            sink.writes()
        );
        assert_eq!(batch.dropped(), 0);
    }

    #[test]
    fn a_line_is_written_without_close_within_the_interval() {
        let batch = Batch::new();
        let sink = Sink::default();
        let _guard = spawn_writer(&batch, Box::new(sink.clone())).unwrap();
        batch.append(b"hello\n");
        // Bounded wait for the writer's own timer: 100 polls of 10 ms.
        for _ in 0..100 {
            if sink.text() == "hello\n" {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the line was not written within 1 s: {:?}", sink.text());
    }

    #[test]
    fn a_full_batch_drops_and_counts_instead_of_blocking() {
        let batch = Batch::new();
        // No writer: nothing drains the batch.
        let line = vec![b'x'; 1024 * 1024];
        for _ in 0..16 {
            batch.append(&line);
        }
        assert_eq!(batch.dropped(), 0, "16 MiB fit");
        batch.append(b"one more\n");
        batch.append(b"and another\n");
        assert_eq!(batch.dropped(), 2);
    }
}
