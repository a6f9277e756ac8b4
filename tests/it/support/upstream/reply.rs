//! The reply language: what a handler is given ([`Received`]) and what it answers ([`Reply`]).

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};

pub const STALL_BODY_CHUNK: &[u8] = b"{\"partial\":";

/// What a handler gets: one request, fully read.
#[derive(Clone, Debug)]
pub struct Received {
    /// Which connection it came on, numbered from 1 in accept order.
    pub conn_id: u64,
    /// Method, e.g. `"GET"`.
    pub method: String,
    /// Path and query, e.g. `"/api/v3/time?x=1"` (`"/"` if the target had none).
    pub path_and_query: String,
    /// The request target exactly as sent: differs from `path_and_query` only for
    /// absolute-form (`http://host/path`) or authority-form targets.
    pub target: String,
    /// Headers with lowercase names, in order (repeated names are grouped together,
    /// which is how `http::HeaderMap` iterates).
    pub headers: Vec<(String, String)>,
    /// The complete request body.
    pub body: Vec<u8>,
}

impl Received {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as text (lossy UTF-8).
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A response body as the handler describes it.
#[derive(Clone, Debug)]
pub enum BodySpec {
    /// A fixed body, sent with `content-length`.
    Fixed(Bytes),
    /// `chunks` chunks of `chunk_size` bytes each, generated one at a time as the client reads
    /// (a 5 MB body is never held in memory). Chunk `k` is `chunk_size` copies of the byte
    /// `b'a' + k % 26`; [`stream_bytes`] builds the expected whole body. Sent with chunked
    /// transfer encoding.
    Stream {
        /// Number of chunks.
        chunks: usize,
        /// Bytes per chunk.
        chunk_size: usize,
    },
}

/// A normal response, possibly delayed.
#[derive(Clone, Debug)]
pub struct ResponseSpec {
    /// Status code.
    pub status: StatusCode,
    /// Response headers. `content-length`/`transfer-encoding` are added by hyper from the body.
    pub headers: HeaderMap,
    /// The body.
    pub body: BodySpec,
    /// Wait this long before sending the response head.
    pub delay: Option<Duration>,
}

/// What the fake exchange does with a request (after reading and recording it completely).
#[derive(Clone, Debug)]
pub enum Reply {
    /// Answer normally.
    Ok(ResponseSpec),
    /// Never answer; keep the connection open. Answered with the default reply after
    /// [`TestUpstream::release_stalled`]. The client closing the connection ends it too.
    Stall,
    /// Send a 200 head (chunked) and [`STALL_BODY_CHUNK`], then stall until
    /// [`TestUpstream::release_stalled`], which ends the body cleanly.
    StallBody,
    /// Abort the TCP connection with RST (SO_LINGER 0, then close), writing no response
    /// and no TLS close_notify. The client sees ECONNRESET.
    Reset,
    /// Close the connection without a response: TLS close_notify, then FIN.
    /// The client sees a clean EOF before any response byte.
    Close,
    /// Take the connection over from hyper and write `bytes` exactly as given (inside TLS),
    /// then end it as `then` says. For responses hyper would never send: a head
    /// whose body is cut short, bytes that are not HTTP at all. [`Reply::raw`] builds it.
    Raw {
        /// Written and flushed as they are; nothing is added.
        bytes: Bytes,
        /// What happens to the connection afterwards.
        then: AfterRaw,
    },
}

/// How a connection ends after a [`Reply::Raw`] response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterRaw {
    /// TLS close_notify, then FIN: the client reads the bytes, then a clean EOF.
    Close,
    /// RST once [`TestUpstream::release_stalled`] is called, so a test can first see the
    /// bytes arrive at the client: a reset right after a write may overtake the data still
    /// on its way and make the client lose it.
    ResetWhenReleased,
    /// Keep the connection open, reading and discarding whatever comes, until the client
    /// closes it: the client has to act on the bytes alone.
    Hold,
}

impl Reply {
    /// Writes `bytes` raw, then ends the connection as `then` says (see [`Reply::Raw`]).
    pub fn raw(bytes: impl Into<Bytes>, then: AfterRaw) -> Self {
        Reply::Raw {
            bytes: bytes.into(),
            then,
        }
    }

    /// `status` with `content-type: application/json` and `body`.
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Self::fixed(status, "application/json", Bytes::from(body.into()))
    }

    /// `status` with `content-type: text/plain` and `body`.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::fixed(status, "text/plain", Bytes::from(body.into()))
    }

    /// `status` with an empty body and no content type.
    pub fn status(status: u16) -> Self {
        Reply::Ok(ResponseSpec {
            status: status_code(status),
            headers: HeaderMap::new(),
            body: BodySpec::Fixed(Bytes::new()),
            delay: None,
        })
    }

    /// 200, `application/octet-stream`, `chunks` x `chunk_size` bytes generated while sending,
    /// with chunked transfer encoding. See [`BodySpec::Stream`] for the content.
    pub fn stream(chunks: usize, chunk_size: usize) -> Self {
        let mut reply = Reply::status(200).header("content-type", "application/octet-stream");
        reply.spec_mut("stream").body = BodySpec::Stream { chunks, chunk_size };
        reply
    }

    /// What the default handler answers: for a request with a body, 200 echoing it byte for
    /// byte (with the request's content type, else `application/octet-stream`); otherwise
    /// 200 `{"ok":true,"path":"<path and query>"}` as JSON.
    pub fn default_for(r: &Received) -> Self {
        if r.body.is_empty() {
            let path = json_escape(&r.path_and_query);
            Self::json(200, format!("{{\"ok\":true,\"path\":\"{path}\"}}"))
        } else {
            let ct = r
                .header("content-type")
                .unwrap_or("application/octet-stream");
            Self::fixed(200, ct, Bytes::from(r.body.clone()))
        }
    }

    /// Adds a response header (appended, so it may repeat).
    ///
    /// # Panics
    /// If the name or value is invalid, or `self` is not `Reply::Ok`. Called inside a handler,
    /// the request gets a 500 and the test fails with the panic's message.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::from_bytes(name.as_bytes())
            .unwrap_or_else(|e| panic!("invalid header name {name:?}: {e}"));
        let value = HeaderValue::from_str(value)
            .unwrap_or_else(|e| panic!("invalid header value {value:?}: {e}"));
        self.spec_mut("header").headers.append(name, value);
        self
    }

    /// Adds `connection: close`: hyper then closes the connection after this response.
    ///
    /// # Panics
    /// If `self` is not `Reply::Ok`.
    pub fn close(self) -> Self {
        self.header("connection", "close")
    }

    /// Waits `delay` before sending the response head.
    ///
    /// # Panics
    /// If `self` is not `Reply::Ok`.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.spec_mut("delay").delay = Some(delay);
        self
    }

    fn fixed(status: u16, content_type: &str, body: Bytes) -> Self {
        Reply::status(status)
            .header(CONTENT_TYPE.as_str(), content_type)
            .with_body(body)
    }

    fn with_body(mut self, body: Bytes) -> Self {
        self.spec_mut("body").body = BodySpec::Fixed(body);
        self
    }

    fn spec_mut(&mut self, what: &str) -> &mut ResponseSpec {
        match self {
            Reply::Ok(spec) => spec,
            other => panic!("Reply::{what} needs Reply::Ok, got {other:?}"),
        }
    }
}

impl From<ResponseSpec> for Reply {
    fn from(spec: ResponseSpec) -> Self {
        Reply::Ok(spec)
    }
}

/// The whole body that [`Reply::stream`]`(chunks, chunk_size)` sends, for comparisons.
pub fn stream_bytes(chunks: usize, chunk_size: usize) -> Vec<u8> {
    (0..chunks)
        .flat_map(|k| std::iter::repeat_n(chunk_fill(k), chunk_size))
        .collect()
}

pub(super) fn chunk_fill(k: usize) -> u8 {
    b'a' + (k % 26) as u8
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or_else(|_| panic!("invalid status code {status}"))
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}
