//! Bodies on both hops, streamed frame by frame, never buffered whole.
//!
//! [`RequestBody`] is what goes upstream: the client's body as it arrives, or nothing.
//! [`ProxyBody`] is what goes back to the client: sidepool's own small reply, or the upstream's
//! body wrapped so that the read and request timeouts keep running while it streams, and so
//! the connection goes back to the pool exactly when its response has been read to the end.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::log::Completion;
use super::rate_limit::AnswerReader;
use crate::error::ErrorKind;
use crate::metrics::CloseReason;
use crate::pool::Pooled;

use super::{UpstreamConn, drain};

/// Errors a body can end with: hyper's, or a timeout while streaming.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body sent upstream.
pub enum RequestBody {
    /// The client's body, streamed as it arrives.
    Client(Incoming),
    /// The client's body, read whole first because the rate-limit profile weighs requests by
    /// their body (Hyperliquid); the exact bytes the client sent, taken when sent.
    Full(Option<Bytes>),
    /// No body.
    Empty,
}

/// The client's request body failed (malformed chunked framing, or the client went away
/// mid-body): the client's fault, not the upstream's.
#[derive(Debug)]
pub struct ClientBodyError(hyper::Error);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the client's request body failed: {}", self.0)
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            RequestBody::Client(body) => Pin::new(body).poll_frame(cx).map_err(ClientBodyError),
            RequestBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client(body) => body.is_end_stream(),
            RequestBody::Full(bytes) => bytes.is_none(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client(body) => body.size_hint(),
            RequestBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// The body sent back to the client.
pub enum ProxyBody {
    /// A reply made by sidepool (errors, admin pages).
    Local(Option<Bytes>),
    /// The upstream's response body.
    Upstream(Box<UpstreamBody>),
}

/// An empty local body.
impl Default for ProxyBody {
    fn default() -> Self {
        ProxyBody::Local(None)
    }
}

impl ProxyBody {
    /// A complete local body.
    pub fn local(bytes: impl Into<Bytes>) -> Self {
        ProxyBody::Local(Some(bytes.into()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Local(bytes) => Poll::Ready(
                bytes
                    .take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            ProxyBody::Upstream(body) => Pin::new(body.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Local(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
            ProxyBody::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ProxyBody::Upstream(body) => body.size_hint(),
        }
    }
}

/// A timeout while the upstream's body was streaming; the client's connection is aborted
/// because the status line has already been sent.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: the upstream body stalled or took too long; the response was cut short")]
pub struct BodyTimeout {
    /// `ReadTimeout` or `RequestTimeout`.
    pub kind: ErrorKind,
}

/// The upstream's response body plus the connection it arrives on.
pub struct UpstreamBody {
    /// Taken only when the body is dropped before its end, to drain the rest.
    inner: Option<Incoming>,
    /// Held until the body ends; then released for reuse (or closed).
    pooled: Option<Pooled<UpstreamConn>>,
    /// May the connection be reused once the body is read to the end?
    reusable: bool,
    /// Fires at the earlier of the read and request deadlines; armed only when the body first
    /// has to wait (a small response usually never does), and re-armed lazily.
    timer: Option<Pin<Box<Sleep>>>,
    read_timeout: Duration,
    deadline: Instant,
    /// The last frame, or the first wait: set only once the body has had to wait, so that a
    /// body that arrives whole (the usual small JSON answer) costs no clock reads.
    last_progress: Option<Instant>,
    completion: Option<Completion>,
    /// The client may have the response head: a data frame went out with it, or the body had
    /// to wait, and hyper flushes the head while it waits.
    head_out: bool,
    /// The rate-limit guard reads this answer's body (a ban or limit code in it).
    answer: Option<Box<AnswerReader>>,
}

impl UpstreamBody {
    /// Wraps `inner`, arriving on `pooled`, under the read timeout and the request `deadline`.
    pub fn new(
        inner: Incoming,
        pooled: Pooled<UpstreamConn>,
        reusable: bool,
        read_timeout: Duration,
        deadline: Instant,
        completion: Completion,
        answer: Option<Box<AnswerReader>>,
    ) -> Self {
        let end = inner.is_end_stream();
        let mut body = UpstreamBody {
            inner: Some(inner),
            pooled: Some(pooled),
            reusable,
            timer: None,
            read_timeout,
            deadline,
            last_progress: None,
            completion: Some(completion),
            head_out: false,
            answer,
        };
        if end {
            body.finish(true);
        }
        body
    }

    /// Ends the exchange: the connection is reused only after a complete, reusable response.
    fn finish(&mut self, complete: bool) {
        if let Some(answer) = self.answer.take() {
            answer.done(complete);
        }
        // One clock reading for both: the connection's idle time and the request's duration.
        let now = Instant::now();
        if let Some(pooled) = self.pooled.take() {
            if complete && self.reusable {
                pooled.release_at(now);
            } else {
                let mut pooled = pooled;
                if complete {
                    pooled.set_close_reason(CloseReason::ConnectionClose);
                }
                drop(pooled);
            }
        }
        if let Some(completion) = self.completion.take() {
            completion.finish_at(now, if complete { "complete" } else { "incomplete" });
        }
    }

    /// Ends the exchange early. `status_if_nothing_sent` replaces the exchange's status in the
    /// log and metrics when the head cannot have gone out: hyper then drops it with the
    /// connection, so the client never saw that status.
    fn fail(&mut self, reason: CloseReason, outcome: &'static str, status_if_nothing_sent: u16) {
        if let Some(answer) = self.answer.take() {
            answer.done(false);
        }
        if let Some(mut pooled) = self.pooled.take() {
            pooled.set_close_reason(reason);
        }
        if let Some(mut completion) = self.completion.take() {
            if !self.head_out {
                completion.status = status_if_nothing_sent;
            }
            completion.finish(outcome);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let (Some(inner), Some(_)) = (this.inner.as_mut(), this.completion.as_ref()) else {
            // Finished, failed or timed out: nothing more will come.
            return Poll::Ready(None);
        };
        match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if this.last_progress.is_some() {
                    this.last_progress = Some(Instant::now());
                }
                if let (Some(answer), Some(data)) = (this.answer.as_mut(), frame.data_ref()) {
                    answer.feed(data);
                }
                this.head_out |= frame.is_data();
                // hyper stops polling a body whose length is known once it reports its end, so
                // the exchange is complete now, not at a final `None` that may never be asked for.
                if inner.is_end_stream() {
                    this.finish(true);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                this.fail(CloseReason::Error, "upstream_body_error", 502);
                Poll::Ready(Some(Err(err.into())))
            }
            Poll::Ready(None) => {
                this.finish(true);
                Poll::Ready(None)
            }
            Poll::Pending => loop {
                this.head_out = true;
                // Until now nothing was waited for, so the silence starts here.
                let last_progress = *this.last_progress.get_or_insert_with(Instant::now);
                let read_deadline = last_progress + this.read_timeout;
                let timer = this.timer.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(read_deadline.min(this.deadline)))
                });
                ready!(timer.as_mut().poll(cx));
                let now = Instant::now();
                if now >= this.deadline || now >= read_deadline {
                    let kind = if now >= this.deadline {
                        ErrorKind::RequestTimeout
                    } else {
                        ErrorKind::ReadTimeout
                    };
                    this.fail(CloseReason::Timeout, kind.as_str(), kind.status().as_u16());
                    return Poll::Ready(Some(Err(Box::new(BodyTimeout { kind }))));
                }
                // Bytes arrived since the timer was armed: move it instead of firing.
                timer.as_mut().reset(read_deadline.min(this.deadline));
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Not read to the end: the client left (or hyper stopped polling). Its request is
        // over, and its line says so; the connection is saved by reading the rest of the
        // response in the background when it may be reused, and closed otherwise.
        if let Some(answer) = self.answer.take() {
            answer.done(false);
        }
        if let Some(completion) = self.completion.take() {
            completion.finish("client_gone");
        }
        if let Some(pooled) = self.pooled.take() {
            match self.inner.take() {
                Some(inner) if self.reusable => drain::spawn(inner, pooled),
                _ => {
                    let mut pooled = pooled;
                    pooled.set_close_reason(CloseReason::Incomplete);
                }
            }
        }
    }
}
