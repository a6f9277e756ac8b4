//! Response bodies: fixed, generated chunk by chunk as the client reads, or stalled.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::handler::RequestGuard;
use super::reply::chunk_fill;

/// Response body; holds the request's [`RequestGuard`] until hyper drops it (done or aborted).
pub(super) struct ReplyBody {
    pub(super) state: BodyState,
    pub(super) _guard: RequestGuard,
}

pub(super) enum BodyState {
    Fixed(Option<Bytes>),
    Stream {
        next: usize,
        chunks: usize,
        chunk_size: usize,
    },
    StallAfter {
        first: Option<Bytes>,
        release: Pin<Box<dyn Future<Output = ()> + Send>>,
    },
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        match &mut this.state {
            BodyState::Fixed(bytes) => Poll::Ready(
                bytes
                    .take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            BodyState::Stream {
                next,
                chunks,
                chunk_size,
                ..
            } => {
                if *next >= *chunks || *chunk_size == 0 {
                    return Poll::Ready(None);
                }
                let chunk = Bytes::from(vec![chunk_fill(*next); *chunk_size]);
                *next += 1;
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            BodyState::StallAfter { first, release } => {
                if let Some(chunk) = first.take() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                release.as_mut().poll(cx).map(|()| None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            BodyState::Fixed(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
            BodyState::Stream {
                next,
                chunks,
                chunk_size,
                ..
            } => *next >= *chunks || *chunk_size == 0,
            BodyState::StallAfter { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            BodyState::Fixed(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            BodyState::Stream { .. } | BodyState::StallAfter { .. } => SizeHint::default(),
        }
    }
}
