//! The test upstream itself: a handler's failed assertion fails the test that started it.

use std::time::Duration;

use http::StatusCode;

use super::{Reply, TestUpstream};
use crate::support::harness::{Sidepool, get, send_fresh};

fn panicking_handler(r: &super::Received) -> Reply {
    assert_eq!(r.path_and_query, "/expected", "handler's own assertion");
    Reply::status(200)
}

#[tokio::test]
#[should_panic(
    expected = "the handler panicked: assertion `left == right` failed: handler's own assertion"
)]
async fn handler_panic_fails_the_test_when_the_upstream_drops() {
    let upstream = TestUpstream::builder()
        .handler(panicking_handler)
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(&upstream, "").await;
    let (status, _, _) = send_fresh(sidepool.proxy, get("/ex/other")).await;
    // The request is answered, so the test goes on to the end; the drop raises the panic.
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
#[should_panic(expected = "the handler panicked")]
async fn handler_panic_ends_a_wait_at_once() {
    let upstream = TestUpstream::builder()
        .handler(panicking_handler)
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(&upstream, "").await;
    let proxy = sidepool.proxy;
    tokio::spawn(async move { send_fresh(proxy, get("/ex/other")).await });
    // Never true: without the panic this would time out after 10 s with another message.
    let waited =
        tokio::time::timeout(Duration::from_secs(5), upstream.wait_requests(usize::MAX)).await;
    drop(waited);
    unreachable!("wait_requests(usize::MAX) returned or timed out instead of raising the panic");
}
