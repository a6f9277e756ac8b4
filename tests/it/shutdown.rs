use std::time::Duration;

use http::StatusCode;

use crate::support::eventually::eventually;
use crate::support::harness::{Process, config_toml, get, https, send_fresh};
use crate::support::upstream::{Reply, TestUpstream};

/// SIGTERM lets an in-flight request finish, then sidepool exits 0; on the multi-threaded
/// runtime and on the single-threaded one used with one worker.
#[tokio::test]
async fn sigterm_drains_an_in_flight_request_then_exits_0() {
    for workers in ["2", "1"] {
        drain_with_workers(workers).await;
    }
}

async fn drain_with_workers(workers: &str) {
    let upstream = TestUpstream::builder()
        .handler(|_| Reply::json(200, "{\"filled\":true}").delay(Duration::from_millis(500)))
        .start()
        .await;
    let port = upstream.port();
    let mut sidepool = Process::start(
        &format!("drain-{workers}"),
        &config_toml("", &[https("ex", "exchange.test", port)]),
        &[("TOKIO_WORKER_THREADS", workers)],
    )
    .await;
    let proxy = sidepool.proxy;
    let order = tokio::spawn(async move { send_fresh(proxy, get("/ex/order")).await });
    upstream.wait_requests(1).await;
    sidepool.signal("TERM");
    let (status, _, body) = order.await.unwrap();
    assert_eq!(status, StatusCode::OK, "the in-flight request finished");
    assert_eq!(body.as_ref(), b"{\"filled\":true}");
    assert_eq!(sidepool.wait_exit().await, Some(0));
    assert!(
        tokio::net::TcpStream::connect(proxy).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn readyz_turns_503_while_draining_and_healthz_stays_200() {
    use crate::support::harness::Sidepool;
    let upstream = TestUpstream::builder()
        .handler(|_| Reply::json(200, "{}").delay(Duration::from_millis(600)))
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(&upstream, "").await;
    let (admin, proxy) = (sidepool.admin, sidepool.proxy);
    assert_eq!(send_fresh(admin, get("/readyz")).await.0, StatusCode::OK);
    assert_eq!(send_fresh(admin, get("/healthz")).await.0, StatusCode::OK);
    assert_eq!(
        send_fresh(admin, get("/nope")).await.0,
        StatusCode::NOT_FOUND
    );
    let order = tokio::spawn(async move { send_fresh(proxy, get("/ex/order")).await.0 });
    upstream.wait_requests(1).await;
    let stopping = tokio::spawn(sidepool.shutdown());
    eventually(
        "/readyz turns 503 while draining",
        async || match send_fresh(admin, get("/readyz")).await.0 {
            StatusCode::SERVICE_UNAVAILABLE => Ok(()),
            status => Err(status),
        },
    )
    .await;
    assert_eq!(send_fresh(admin, get("/healthz")).await.0, StatusCode::OK);
    assert_eq!(
        order.await.unwrap(),
        StatusCode::OK,
        "the in-flight request finished"
    );
    stopping.await.unwrap();
}
