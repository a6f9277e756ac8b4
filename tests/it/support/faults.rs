//! Building blocks for fault tests: raw response bytes for [`Reply::raw`], reading a body
//! that is expected to break, and waits for the pool to settle after a fault.
//!
//! [`Reply::raw`]: super::upstream::Reply::raw

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::eventually::eventually;
use super::harness::{PATIENCE, Sidepool};
use super::upstream::TestUpstream;

/// The body bytes the raw responses below send: recognisable in a failure message.
pub const BODY_BYTE: u8 = b'x';

/// A 200 head announcing `content_length` body bytes, followed by only the first `sent`.
pub fn sized_head_then(content_length: usize, sent: usize) -> Bytes {
    assert!(sent <= content_length, "a short body, not a long one");
    let mut raw = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {content_length}\r\n\r\n"
    )
    .into_bytes();
    raw.resize(raw.len() + sent, BODY_BYTE);
    Bytes::from(raw)
}

/// A chunked 200 head followed by one chunk of `sent` bytes (none if 0) and no last chunk.
pub fn chunked_head_then(sent: usize) -> Bytes {
    let mut raw = b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    if sent > 0 {
        raw.extend_from_slice(format!("{sent:x}\r\n").as_bytes());
        raw.resize(raw.len() + sent, BODY_BYTE);
        raw.extend_from_slice(b"\r\n");
    }
    Bytes::from(raw)
}

/// Answers that are not HTTP/1.1 responses, by name: another protocol's banner, binary
/// noise, and a head whose framing cannot be parsed.
pub fn garbage() -> [(&'static str, Bytes); 3] {
    [
        (
            "ssh banner",
            Bytes::from_static(b"SSH-2.0-OpenSSH_9.6 garbage\r\n"),
        ),
        (
            "binary",
            Bytes::from_static(b"\x00\xff\x13\x37\xde\xad\xbe\xef\r\n\r\n"),
        ),
        (
            "bad content-length",
            Bytes::from_static(b"HTTP/1.1 200 OK\r\ncontent-length: nope\r\n\r\n{}"),
        ),
    ]
}

/// One request on a new connection to `addr`, returning the response head with its
/// streaming body, or the error when no complete head arrived (where
/// [`Client::send_streaming`] would panic).
///
/// [`Client::send_streaming`]: super::harness::Client::send_streaming
pub async fn try_send_streaming(
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
) -> hyper::Result<Response<Incoming>> {
    let tcp = TcpStream::connect(addr).await.expect("connect to sidepool");
    let (mut send, conn) = http1::handshake(TokioIo::new(tcp)).await?;
    // Ends by itself when the connection closes.
    tokio::spawn(conn);
    tokio::time::timeout(PATIENCE, send.send_request(req))
        .await
        .expect("response or error in time")
}

/// How a response body that was read as far as it goes ended.
#[derive(Debug)]
pub struct BodyEnd {
    /// The data received before the end.
    pub data: Vec<u8>,
    /// The error the body ended with; `None` when it ended as a complete body.
    pub error: Option<String>,
}

/// Reads data frames until at least `n` bytes have arrived (bounded by [`PATIENCE`]).
///
/// # Panics
/// If the body ends or fails first.
pub async fn read_at_least(body: &mut Incoming, n: usize) -> Vec<u8> {
    let mut data = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while data.len() < n {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(bytes) = frame.into_data() {
                        data.extend_from_slice(&bytes);
                    }
                }
                Some(Err(e)) => panic!("body failed after {} bytes: {e}", data.len()),
                None => panic!("body ended after {} of {n} bytes", data.len()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{n} body bytes did not arrive in time"));
    data
}

/// Reads the rest of a body to its end or its error (bounded by [`PATIENCE`]).
pub async fn read_to_end(body: &mut Incoming) -> BodyEnd {
    let mut data = Vec::new();
    let error = tokio::time::timeout(PATIENCE, async {
        loop {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(bytes) = frame.into_data() {
                        data.extend_from_slice(&bytes);
                    }
                }
                Some(Err(e)) => return Some(e.to_string()),
                None => return None,
            }
        }
    })
    .await
    .expect("the body ended or failed in time");
    BodyEnd { data, error }
}

/// `http_pool_connections_closed_total` of upstream `name` for `reason` (0 when absent).
pub async fn closed(sidepool: &Sidepool, name: &str, reason: &str) -> f64 {
    counter(
        sidepool,
        "http_pool_connections_closed_total",
        name,
        "reason",
        reason,
    )
    .await
}

/// `http_pool_errors_total` of upstream `name` for `kind` (0 when absent).
pub async fn errors(sidepool: &Sidepool, name: &str, kind: &str) -> f64 {
    counter(sidepool, "http_pool_errors_total", name, "kind", kind).await
}

/// `http_pool_retries_total` of upstream `name` for `reason` (0 when absent).
pub async fn retries(sidepool: &Sidepool, name: &str, reason: &str) -> f64 {
    counter(sidepool, "http_pool_retries_total", name, "reason", reason).await
}

async fn counter(sidepool: &Sidepool, metric: &str, name: &str, label: &str, value: &str) -> f64 {
    sidepool
        .metric(metric, &format!("upstream=\"{name}\",{label}=\"{value}\""))
        .await
        .unwrap_or(0.0)
}

/// Waits until upstream `name` has nothing active, connecting or waiting, and exactly as
/// many idle connections as `upstream` has open sockets: every connection that survived is
/// pooled, and every one sidepool dropped is really closed. Returns that count.
///
/// For bursts whose number of surviving connections depends on timing; both sides change
/// as connection tasks run, so this polls (bounded by [`PATIENCE`]).
pub async fn wait_settled(sidepool: &Sidepool, name: &str, upstream: &TestUpstream) -> usize {
    let what = format!(
        "{name} settled: gauges (active, idle, connecting, waiting) = (0, upstream sockets open, 0, 0)"
    );
    eventually(&what, async || {
        let gauges = sidepool.gauges(name).await;
        let open = upstream.stats().open_now;
        if gauges == (0.0, open as f64, 0.0, 0.0) {
            Ok(open)
        } else {
            Err((gauges, open))
        }
    })
    .await
}
