//! The client side of an intercepted tunnel, acknowledging every read at once (`TCP_QUICKACK`,
//! Linux).
//!
//! Some clients write a request's head and body separately with Nagle's algorithm on: Python's
//! urllib3 leaves `TCP_NODELAY` off on the sockets it tunnels through a proxy. Inside a TLS
//! tunnel those writes become two records, and the second waits in the client's kernel until
//! the first is acknowledged, while this side's kernel delays that acknowledgement by up to
//! 40 ms because it has nothing to send until the request is complete. Asking for an immediate
//! ACK after each read removes the stall, for one `setsockopt` per read on intercepted tunnels
//! only (plain connections come from clients that set `TCP_NODELAY` or send one buffer).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The client's byte stream under an intercepted tunnel's TLS.
pub(super) enum TunnelIo {
    /// The client's own socket, taken back from hyper, with what hyper had read past the
    /// CONNECT head.
    Tcp { tcp: TcpStream, unread: Bytes },
    /// Anything else hyper hands over (not a plain socket): read as it is.
    Other(TokioIo<Upgraded>),
}

impl TunnelIo {
    pub(super) fn new(upgraded: Upgraded) -> TunnelIo {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => TunnelIo::Tcp {
                tcp: parts.io.into_inner(),
                unread: parts.read_buf,
            },
            Err(upgraded) => TunnelIo::Other(TokioIo::new(upgraded)),
        }
    }
}

#[cfg(target_os = "linux")]
fn ack_now(tcp: &TcpStream) {
    // A failure only leaves delayed ACKs on.
    let _ = socket2::SockRef::from(tcp).set_tcp_quickack(true);
}

#[cfg(not(target_os = "linux"))]
fn ack_now(_tcp: &TcpStream) {}

impl AsyncRead for TunnelIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TunnelIo::Tcp { tcp, unread } => {
                if !unread.is_empty() {
                    let n = unread.len().min(buf.remaining());
                    buf.put_slice(&unread[..n]);
                    unread.advance(n);
                    return Poll::Ready(Ok(()));
                }
                let before = buf.filled().len();
                let polled = Pin::new(&mut *tcp).poll_read(cx, buf);
                if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
                    ack_now(tcp);
                }
                polled
            }
            TunnelIo::Other(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TunnelIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TunnelIo::Tcp { tcp, .. } => Pin::new(tcp).poll_write(cx, buf),
            TunnelIo::Other(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TunnelIo::Tcp { tcp, .. } => Pin::new(tcp).poll_flush(cx),
            TunnelIo::Other(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TunnelIo::Tcp { tcp, .. } => Pin::new(tcp).poll_shutdown(cx),
            TunnelIo::Other(io) => Pin::new(io).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TunnelIo::Tcp { tcp, .. } => Pin::new(tcp).poll_write_vectored(cx, bufs),
            TunnelIo::Other(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            TunnelIo::Tcp { tcp, .. } => tcp.is_write_vectored(),
            TunnelIo::Other(io) => io.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What hyper read past the CONNECT head comes first, then the socket; writes go out.
    #[tokio::test]
    async fn unread_bytes_come_first_then_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut io = TunnelIo::Tcp {
            tcp: server,
            unread: Bytes::from_static(b"hello "),
        };
        client.write_all(b"world").await.unwrap();
        let mut got = vec![0u8; 11];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello world");
        io.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
    }
}
