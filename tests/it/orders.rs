use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::support::eventually::eventually;
use crate::support::harness::{PATIENCE, Sidepool, config_toml, get, https};
use crate::support::orders::{Answer, Ledger, order, order_id};
use crate::support::upstream::{Received, Reply, TestUpstream};

/// How the fake exchange treats order `id`: a fixed mix of faults, so every run is the same.
pub(crate) fn faulty_exchange(r: &Received) -> Reply {
    let Some(id) = order_id(r) else {
        return Reply::default_for(r);
    };
    match id % 20 {
        // The connection dies after the order was read: it reached the exchange, no answer.
        3 | 13 => Reply::Reset,
        7 => Reply::Close,
        // Slower than read_timeout: sidepool gives up; the exchange still has the order.
        11 => Reply::json(200, format!("{{\"id\":{id},\"late\":true}}"))
            .delay(Duration::from_millis(800)),
        // Answered, then the exchange closes the connection.
        5 | 15 => Reply::json(201, format!("{{\"id\":{id}}}")).close(),
        _ => Reply::json(200, format!("{{\"id\":{id}}}")),
    }
}

/// Sends orders `ids` one after another on one keep-alive client connection (a new one after
/// a broken connection), recording each answer.
pub(crate) async fn place_orders(proxy: SocketAddr, ids: impl Iterator<Item = u64>) -> Ledger {
    place_orders_with(proxy, None, ids).await
}

/// Like [`place_orders`], starting on an already open client connection.
async fn place_orders_on(
    proxy: SocketAddr,
    send: http1::SendRequest<Full<Bytes>>,
    ids: impl Iterator<Item = u64>,
) -> Ledger {
    place_orders_with(proxy, Some(send), ids).await
}

async fn place_orders_with(
    proxy: SocketAddr,
    mut conn: Option<http1::SendRequest<Full<Bytes>>>,
    ids: impl Iterator<Item = u64>,
) -> Ledger {
    let mut ledger = Ledger::default();
    for id in ids {
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            let tcp = TcpStream::connect(proxy)
                .await
                .expect("connect to sidepool");
            let (send, connection) = http1::handshake(TokioIo::new(tcp))
                .await
                .expect("handshake");
            tokio::spawn(connection);
            conn = Some(send);
        }
        let send = conn.as_mut().expect("connected above");
        let answer = tokio::time::timeout(PATIENCE, async {
            send.ready().await.ok()?;
            let response = send.send_request(order("ex", id)).await.ok()?;
            let status = response.status();
            let kind = response
                .headers()
                .get("x-sidepool-error")
                .map(|v| v.to_str().unwrap_or_default().to_owned());
            response.into_body().collect().await.ok()?;
            Some(Answer::Status(status, kind))
        })
        .await
        .expect("every order is answered in time")
        .unwrap_or(Answer::Broken);
        if answer == Answer::Broken {
            conn = None;
        }
        ledger.record(id, answer);
    }
    ledger
}

/// Numbered POST orders through resets, early closes, read timeouts, `Connection: close`
/// answers and connections the exchange closes while idle, from eight clients at once: every
/// order the exchange received was received exactly once, every order answered 2xx was
/// received, no order was re-sent, reads interleaved with them still succeed, and every gauge
/// returns to zero.
#[tokio::test]
async fn orders_are_received_exactly_once_through_upstream_faults() {
    const CLIENTS: u64 = 8;
    const PER_CLIENT: u64 = 40;
    let upstream = TestUpstream::builder()
        .handler(faulty_exchange)
        .idle_close_after(Duration::from_millis(30))
        .start()
        .await;
    let sidepool = Sidepool::for_upstream(
        &upstream,
        "max_connections_per_host = 4\nread_timeout = \"300ms\"",
    )
    .await;
    let proxy = sidepool.proxy;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            tokio::spawn(place_orders(
                proxy,
                (0..PER_CLIENT).map(move |k| k * CLIENTS + c),
            ))
        })
        .collect();
    let reader = tokio::spawn(async move {
        let mut statuses = Vec::new();
        for i in 0..40 {
            let (status, _, _) =
                crate::support::harness::send_fresh(proxy, get(&format!("/ex/ticker?i={i}"))).await;
            statuses.push(status);
        }
        statuses
    });
    let mut ledger = Ledger::default();
    for client in clients {
        ledger.merge(client.await.unwrap());
    }
    assert_eq!(ledger.len() as u64, CLIENTS * PER_CLIENT);
    let reads = reader.await.unwrap();
    assert!(reads.iter().all(|s| *s == StatusCode::OK), "{reads:?}");

    let (received, ok) = ledger.check_exactly_once(&upstream.received());
    let outcomes = ledger.outcomes();
    // The faults really happened, and each got the answer the error contract gives it.
    assert_eq!(outcomes.get("broken"), None, "{outcomes:?}");
    assert!(
        outcomes.get("502 upstream_failed").copied().unwrap_or(0)
            >= 3 * CLIENTS as usize * PER_CLIENT as usize / 20,
        "{outcomes:?}"
    );
    assert!(
        outcomes.get("504 read_timeout").copied().unwrap_or(0)
            >= CLIENTS as usize * PER_CLIENT as usize / 20,
        "{outcomes:?}"
    );
    assert!(
        outcomes.get("201").copied().unwrap_or(0) > 0,
        "{outcomes:?}"
    );
    assert!(ok > 0 && received >= ok, "{received} received, {ok} ok");
    println!("orders: {received} received, {ok} answered 2xx, outcomes {outcomes:?}");
    sidepool.wait_gauges("ex", (0.0, 0.0, 0.0, 0.0)).await;
}

/// An exchange that takes a moment per order, so orders pile up behind the caps.
fn slow_faulty_exchange(r: &Received) -> Reply {
    match faulty_exchange(r) {
        Reply::Ok(spec) if spec.delay.is_none() => Reply::Ok(spec).delay(Duration::from_millis(15)),
        other => other,
    }
}

/// Orders under pressure on every limit at once: per-host cap 2 with a queue bounded by
/// `max_waiting` (`queue_full`) and by `queue_timeout` (`pool_timeout`), the exchange's faults
/// from above, and a flood of extra client connections against `max_client_connections`
/// (`too_many_clients`). Every order received was received once, every 2xx was received,
/// refusals never reach the exchange, and every gauge returns to zero.
#[tokio::test]
async fn orders_are_received_exactly_once_under_pressure_on_every_limit() {
    const CLIENTS: u64 = 10;
    const PER_CLIENT: u64 = 20;
    let upstream = TestUpstream::builder()
        .handler(slow_faulty_exchange)
        .start()
        .await;
    let toml = config_toml(
        "max_connections_per_host = 2\nmax_waiting = 4\nqueue_timeout = \"150ms\"\n\
         read_timeout = \"300ms\"",
        &[https("ex", "exchange.test", upstream.port())],
    )
    .replace("[listen]\n", "[listen]\nmax_client_connections = 12\n");
    let sidepool = Sidepool::start(&toml).await;
    let proxy = sidepool.proxy;
    // The order clients connect first (10 of the 12 places), then the flood takes the rest.
    let mut senders = Vec::new();
    for _ in 0..CLIENTS {
        let tcp = TcpStream::connect(proxy).await.expect("connect");
        let (send, connection) = http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        senders.push(send);
    }
    let flood = tokio::spawn(async move {
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..30 {
            let mut tcp = TcpStream::connect(proxy).await.expect("connect");
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = tcp
                .write_all(b"GET /ex/flood HTTP/1.1\r\nhost: x\r\n\r\n")
                .await;
            let mut buf = [0u8; 512];
            let n = tokio::time::timeout(PATIENCE, tcp.read(&mut buf))
                .await
                .expect("an answer in time")
                .unwrap_or(0);
            if String::from_utf8_lossy(&buf[..n]).contains("too_many_clients") {
                refused += 1;
            } else {
                held.push(tcp);
            }
        }
        (refused, held)
    });
    let clients: Vec<_> = senders
        .into_iter()
        .zip(0..CLIENTS)
        .map(|(send, c)| {
            tokio::spawn(place_orders_on(
                proxy,
                send,
                (0..PER_CLIENT).map(move |k| k * CLIENTS + c),
            ))
        })
        .collect();
    let mut ledger = Ledger::default();
    for client in clients {
        ledger.merge(client.await.unwrap());
    }
    let (refused, held) = flood.await.unwrap();
    drop(held);
    let (received, ok) = ledger.check_exactly_once(&upstream.received());
    let outcomes = ledger.outcomes();
    println!(
        "orders under pressure: {received} received, {ok} answered 2xx, {refused} flood connections refused, outcomes {outcomes:?}"
    );
    // At most the two free places (plus any an order client gave back when done) admitted it.
    assert!(
        refused >= 30 - 12,
        "the flood was not held to the cap: {refused} refused"
    );
    let queue_refusals = outcomes.get("503 queue_full").copied().unwrap_or(0)
        + outcomes.get("503 pool_timeout").copied().unwrap_or(0);
    assert!(
        queue_refusals > 0,
        "the queue limits were never reached: {outcomes:?}"
    );
    assert_eq!(outcomes.get("broken"), None, "{outcomes:?}");
    assert!(ok > 0, "{outcomes:?}");
    // Refused orders never reached the exchange.
    assert!(
        received as u64 <= CLIENTS * PER_CLIENT - queue_refusals as u64,
        "{received} received with {queue_refusals} refused"
    );
    // Nothing active, connecting or waiting; what stays idle depends on which faults came last.
    let what = "gauges (active, idle, connecting, waiting) settle at (0, <= 2, 0, 0)";
    eventually(what, async || {
        let gauges = sidepool.gauges("ex").await;
        let (active, idle, connecting, waiting) = gauges;
        if (active, connecting, waiting) == (0.0, 0.0, 0.0) && idle <= 2.0 {
            Ok(())
        } else {
            Err(gauges)
        }
    })
    .await;
}
