use std::collections::HashSet;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::harness::{
    Client, PATIENCE, Sidepool, UpstreamSpec, config_toml, error_kind, get, metric_value, request,
};
use crate::support::upstream::{Received, Reply, TestUpstream};

/// An upstream that serves the first request on each connection and breaks the connection on
/// the next one (`broken`), after reading it: the stale keep-alive race, made deterministic.
fn second_request_breaks(broken: Reply) -> impl Fn(&Received) -> Reply + Send + Sync + 'static {
    let seen = Arc::new(Mutex::new(HashSet::new()));
    move |r: &Received| {
        if seen.lock().unwrap().insert(r.conn_id) {
            Reply::json(200, "{\"first\":true}")
        } else {
            broken.clone()
        }
    }
}

#[tokio::test]
async fn get_survives_a_connection_that_dies_on_reuse() {
    let upstream = TestUpstream::builder()
        .handler(second_request_breaks(Reply::Close))
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(&upstream, "").await;
    let mut client = Client::connect(sidepool.proxy).await;
    assert_eq!(client.send(get("/ex/a")).await.0, StatusCode::OK);
    let (status, _, body) = client.send(get("/ex/b")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "re-sent on a fresh connection: {body:?}"
    );
    let paths: Vec<String> = upstream
        .received()
        .iter()
        .map(|r| r.path_and_query.clone())
        .collect();
    assert_eq!(
        paths,
        ["/a", "/b", "/b"],
        "the GET went a second time, on a new connection"
    );
    assert_eq!(upstream.stats().tcp_connections, 2);
    let text = sidepool.metrics().await;
    assert!(
        text.contains("http_pool_retries_total{upstream=\"ex\",reason=\"idempotent\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn post_is_never_sent_twice_when_its_connection_dies() {
    for (label, broken) in [("close", Reply::Close), ("reset", Reply::Reset)] {
        let upstream = TestUpstream::builder()
            .handler(second_request_breaks(broken))
            .start()
            .await;
        let sidepool = Sidepool::for_upstream(&upstream, "").await;
        let mut client = Client::connect(sidepool.proxy).await;
        assert_eq!(
            client.send(request("POST", "/ex/order", "order-1")).await.0,
            StatusCode::OK
        );
        let (status, headers, body) = client.send(request("POST", "/ex/order", "order-2")).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{label}");
        assert_eq!(headers["x-sidepool-error"], "upstream_failed", "{label}");
        assert_eq!(error_kind(&body), "upstream_failed");
        let bodies: Vec<Vec<u8>> = upstream.received().iter().map(|r| r.body.clone()).collect();
        assert_eq!(
            bodies,
            [b"order-1".to_vec(), b"order-2".to_vec()],
            "{label}: each order reached the upstream exactly once"
        );
        let text = sidepool.metrics().await;
        assert!(
            !text.contains("http_pool_retries_total{upstream=\"ex\",reason=\"idempotent\"} 1"),
            "{text}"
        );
        sidepool.wait_gauges("ex", (0.0, 0.0, 0.0, 0.0)).await;
    }
}

#[tokio::test]
async fn idle_connections_closed_by_the_upstream_are_not_used_for_orders() {
    let upstream = TestUpstream::builder()
        .idle_close_after(Duration::from_millis(100))
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(&upstream, "").await;
    let mut client = Client::connect(sidepool.proxy).await;
    assert_eq!(client.send(get("/ex/warm")).await.0, StatusCode::OK);
    sidepool.wait_gauges("ex", (0.0, 1.0, 0.0, 0.0)).await;
    upstream.wait_open(0).await;
    // sidepool notices the close and drops the idle connection without sending on it.
    sidepool.wait_gauges("ex", (0.0, 0.0, 0.0, 0.0)).await;
    assert_eq!(client.send(get("/ex/after-close")).await.0, StatusCode::OK);
    for order in ["order-1", "order-2"] {
        upstream.wait_open(0).await;
        sidepool.wait_gauges("ex", (0.0, 0.0, 0.0, 0.0)).await;
        assert_eq!(
            client.send(request("POST", "/ex/order", order)).await.0,
            StatusCode::OK
        );
    }
    let orders: Vec<Vec<u8>> = upstream
        .received()
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.body.clone())
        .collect();
    assert_eq!(
        orders,
        [b"order-1".to_vec(), b"order-2".to_vec()],
        "each order arrived exactly once"
    );
}

/// A socket's state and unread bytes as the kernel reports them, from /proc/net/tcp (IPv4
/// loopback): (state, rx_queue).
fn kernel_socket(local_port: u16, remote_port: u16) -> Option<(u8, u32)> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!("0100007F:{local_port:04X}");
    let remote = format!("0100007F:{remote_port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&local.as_str()) || fields.get(2) != Some(&remote.as_str()) {
            return None;
        }
        let state = u8::from_str_radix(fields[3], 16).ok()?;
        let rx = u32::from_str_radix(fields[4].split(':').nth(1)?, 16).ok()?;
        Some((state, rx))
    })
}

/// Waits, without yielding to the runtime, until the kernel shows `cond` for a socket.
fn wait_kernel(what: &str, local_port: u16, remote_port: u16, cond: impl Fn((u8, u32)) -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !kernel_socket(local_port, remote_port).is_some_and(&cond) {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {:?}",
            kernel_socket(local_port, remote_port)
        );
        std::thread::yield_now();
    }
}

/// Reads one bodiless request head from `tcp`; returns its request line.
fn read_head(tcp: &mut std::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tcp.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!("the request head broke off ({other:?}): {head:?}"),
        }
    }
    String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// hyper hands a request back unsent when the connection it was given to closes before
/// writing it: the connection task reads the upstream's FIN first, stops, and returns the
/// queued request. Made deterministic on one thread: the bot's request reaches sidepool's
/// socket, then the upstream closes the idle connection, both before sidepool's runtime next
/// asks the kernel for events; so the request is checked out onto the connection (still
/// looking open) before its task sees the close.
#[tokio::test]
async fn a_request_handed_back_unsent_goes_once_on_a_new_connection() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let upstream_port = listener.local_addr().expect("addr").port();
    let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
    let (closed_tx, closed_rx) = std::sync::mpsc::channel::<u16>();
    // A plain HTTP/1.1 upstream on a thread of its own, so that it acts while the test's
    // runtime is held still.
    let upstream = std::thread::spawn(move || {
        const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let mut seen = Vec::new();
        let (mut first, sidepool_end) = listener.accept().expect("accept");
        first.set_read_timeout(Some(PATIENCE)).unwrap();
        seen.push(read_head(&mut first));
        first.write_all(OK).unwrap();
        close_rx.recv().expect("told to close");
        first.shutdown(std::net::Shutdown::Write).unwrap();
        closed_tx.send(sidepool_end.port()).unwrap();
        let (mut second, _) = listener.accept().expect("accept the new connection");
        second.set_read_timeout(Some(PATIENCE)).unwrap();
        seen.push(read_head(&mut second));
        second.write_all(OK).unwrap();
        // Anything sidepool wrote on the closed connection would be here before its EOF.
        let mut rest = Vec::new();
        let _ = first.read_to_end(&mut rest);
        (seen, rest)
    });
    let sidepool = Sidepool::start(&config_toml(
        "",
        &[UpstreamSpec {
            name: "ex",
            url: format!("http://exchange.test:{upstream_port}"),
            extra: "",
        }],
    ))
    .await;
    let mut bot = tokio::net::TcpStream::connect(sidepool.proxy)
        .await
        .expect("connect");
    let bot_port = bot.local_addr().unwrap().port();
    let read_response = async |bot: &mut tokio::net::TcpStream| {
        let mut response = Vec::new();
        let mut buf = [0u8; 1024];
        while !response.ends_with(b"\r\n\r\nok") {
            let n = tokio::time::timeout(PATIENCE, bot.read(&mut buf))
                .await
                .expect("a response in time")
                .expect("read");
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&response));
            response.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&response).into_owned()
    };
    bot.write_all(b"GET /ex/first HTTP/1.1\r\nHost: s\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut bot).await.starts_with("HTTP/1.1 200"));
    sidepool.wait_gauges("ex", (0.0, 1.0, 0.0, 0.0)).await;

    // From here to the next `.await`, sidepool's runtime (this thread) does not run.
    let second = b"GET /ex/second HTTP/1.1\r\nHost: s\r\n\r\n";
    assert_eq!(
        bot.try_write(second).expect("written at once"),
        second.len()
    );
    wait_kernel(
        "the request waits in sidepool's socket",
        sidepool.proxy.port(),
        bot_port,
        |(_, rx)| rx > 0,
    );
    close_tx.send(()).unwrap();
    let sidepool_end = closed_rx.recv_timeout(PATIENCE).expect("closed");
    const CLOSE_WAIT: u8 = 0x08;
    wait_kernel(
        "the upstream's FIN reached sidepool",
        sidepool_end,
        upstream_port,
        |(state, _)| state == CLOSE_WAIT,
    );

    let response = read_response(&mut bot).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let (seen, on_the_closed_connection) = upstream.join().expect("upstream thread");
    assert_eq!(
        seen,
        ["GET /first HTTP/1.1", "GET /second HTTP/1.1"],
        "the upstream saw the request exactly once, on the new connection"
    );
    assert!(
        on_the_closed_connection.is_empty(),
        "{on_the_closed_connection:?}"
    );
    let text = sidepool.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            "http_pool_retries_total",
            "upstream=\"ex\",reason=\"unsent\""
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "http_pool_retries_total",
            "upstream=\"ex\",reason=\"idempotent\""
        ),
        Some(0.0),
        "{text}"
    );
}
