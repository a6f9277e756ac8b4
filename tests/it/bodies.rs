use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::support::harness::{Client, Sidepool, get, raw, request};
use crate::support::upstream::{Reply, TestUpstream, stream_bytes};

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test]
async fn request_and_response_bodies_are_byte_exact() {
    let upstream = TestUpstream::builder().start().await;
    let sidepool = Sidepool::for_upstream(&upstream, "").await;
    let body = pattern(200_000);
    let mut client = Client::connect(sidepool.proxy).await;
    let (status, _, echoed) = client.send(request("POST", "/ex/echo", body.clone())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        upstream.received()[0].body,
        body,
        "upstream got the exact bytes"
    );
    assert_eq!(
        echoed.as_ref(),
        body.as_slice(),
        "client got the exact bytes back"
    );
}

#[tokio::test]
async fn chunked_request_body_is_streamed_upstream() {
    let upstream = TestUpstream::builder().start().await;
    let sidepool = Sidepool::for_upstream(&upstream, "").await;
    let chunks: Vec<Vec<u8>> = (0..20).map(|i| pattern(1000 + i * 17)).collect();
    let expected: Vec<u8> = chunks.concat();
    let req = Request::builder()
        .method("POST")
        .uri("/ex/chunked")
        .header("host", "sidepool.test")
        .body(Chunked(chunks.into_iter().map(Bytes::from).collect()))
        .unwrap();
    let tcp = TcpStream::connect(sidepool.proxy).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = send.send_request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let echoed = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(upstream.received()[0].body, expected);
    assert_eq!(echoed.as_ref(), expected.as_slice());
}

/// A body of several frames with no known length, so hyper sends it chunked.
struct Chunked(VecDeque<Bytes>);

impl http_body::Body for Chunked {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

#[tokio::test]
async fn five_megabyte_response_streams_through_intact() {
    const CHUNKS: usize = 320;
    const CHUNK: usize = 16 * 1024;
    let upstream = TestUpstream::builder()
        .handler(|_| Reply::stream(CHUNKS, CHUNK))
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(&upstream, "").await;
    let mut client = Client::connect(sidepool.proxy).await;
    let response = client.send_streaming(get("/ex/big")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut got = Vec::with_capacity(CHUNKS * CHUNK);
    let mut frames = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("body frame");
        if let Some(data) = frame.data_ref() {
            got.extend_from_slice(data);
            frames += 1;
        }
    }
    assert_eq!(got.len(), CHUNKS * CHUNK);
    // Compared without assert_eq!, whose message would print 5 MB.
    assert!(
        got == stream_bytes(CHUNKS, CHUNK),
        "the body's bytes differ from what the upstream sent"
    );
    assert!(frames > 1, "the body arrived in pieces, not buffered whole");
    // The connection is reused afterwards: the body was read to the end.
    let (status, _, _) = client.send(get("/ex/small")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(upstream.stats().tcp_connections, 1);
}

#[tokio::test]
async fn expect_100_continue_gets_a_continue_and_the_body_arrives() {
    let upstream = TestUpstream::builder().start().await;
    let sidepool = Sidepool::for_upstream(&upstream, "").await;
    let text = raw(
        sidepool.proxy,
        b"POST /ex/orders HTTP/1.1\r\nHost: sidepool.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert!(text.contains("200 OK"), "{text}");
    assert!(text.ends_with("hello"), "{text}");
    let got = &upstream.received()[0];
    assert_eq!(got.body, b"hello");
    assert!(
        got.header("expect").is_none(),
        "sidepool answered the expectation itself"
    );
}
