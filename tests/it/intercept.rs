//! CONNECT interception: the client's TLS is terminated with a leaf from the local CA, and the
//! requests inside go through the pools like plain ones; anything else gets no tunnel.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::certs::temp_dir;
use crate::support::harness::{Sidepool, config_toml, https};
use crate::support::upstream::TestUpstream;

const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

async fn start(
    tag: &str,
    upstream: &TestUpstream,
    enabled: bool,
) -> (Sidepool, std::path::PathBuf) {
    let dir = temp_dir().join(format!("intercept-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    let toml = config_toml("", &[https("ex", "exchange.test", upstream.port())])
        + &format!(
            "\n[intercept]\nenabled = {enabled}\nca_dir = {:?}\n",
            dir.display().to_string()
        );
    (Sidepool::start(&toml).await, dir)
}

/// Sends `CONNECT target` and reads the response head byte by byte (nothing after it).
async fn connect(addr: SocketAddr, target: &str) -> (String, TcpStream) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, tcp.read(&mut byte))
            .await
            .expect("CONNECT answered in time")
            .expect("read");
        if n == 0 {
            break;
        }
        got.push(byte[0]);
    }
    (String::from_utf8_lossy(&got).into_owned(), tcp)
}

/// A TLS client that trusts only the interception CA in `dir`.
fn connector(dir: &Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::from_pem_file(dir.join("ca.pem")).expect("ca.pem");
    roots.add(ca).expect("CA as a root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls_client(
    tcp: TcpStream,
    dir: &Path,
    sni: &str,
) -> std::io::Result<http1::SendRequest<Full<Bytes>>> {
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let tls = connector(dir).connect(name, tcp).await?;
    let (send, conn) = http1::handshake(TokioIo::new(tls))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

async fn send(
    client: &mut http1::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: &'static [u8],
) -> (StatusCode, Bytes) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "exchange.test")
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    client.ready().await.expect("ready");
    let response = tokio::time::timeout(PATIENCE, client.send_request(req))
        .await
        .expect("answer in time")
        .expect("answer");
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn requests_inside_an_intercepted_tunnel_are_pooled_like_plain_ones() {
    let upstream = TestUpstream::builder().start().await;
    let (sidepool, dir) = start("pooled", &upstream, true).await;
    let target = format!("exchange.test:{}", upstream.port());
    for round in 0..3 {
        let (head, tcp) = connect(sidepool.proxy, &target).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let mut client = tls_client(tcp, &dir, "exchange.test").await.expect("TLS");
        let (status, _) = send(&mut client, "GET", "/v5/market/time?a=%2F&b=1", b"").await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = send(&mut client, "POST", "/v5/order/create", b"{\"n\":1}").await;
        assert_eq!(status, StatusCode::OK, "round {round}");
    }
    let received = upstream.received();
    assert_eq!(received.len(), 6);
    assert_eq!(
        received[0].path_and_query, "/v5/market/time?a=%2F&b=1",
        "query bytes kept"
    );
    assert_eq!(received[1].body, b"{\"n\":1}", "body byte-exact");
    let connections: std::collections::HashSet<u64> = received.iter().map(|r| r.conn_id).collect();
    assert_eq!(
        connections.len(),
        1,
        "three client tunnels, one pooled exchange connection"
    );
    sidepool.shutdown().await;
}

#[tokio::test]
async fn only_configured_hosts_and_ports_are_intercepted() {
    let upstream = TestUpstream::builder().start().await;
    let (sidepool, dir) = start("refused", &upstream, true).await;
    for target in [
        "evil.test:443".to_owned(),
        format!("exchange.test:{}", upstream.port() + 1),
        format!("127.0.0.1:{}", upstream.port()),
    ] {
        let (head, _) = connect(sidepool.proxy, &target).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{target}: {head}");
        assert!(head.contains("not_allowed"), "{head}");
    }
    // The tunnel's SNI must be the CONNECT host: another name gets no certificate.
    let (head, tcp) = connect(
        sidepool.proxy,
        &format!("exchange.test:{}", upstream.port()),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(tls_client(tcp, &dir, "other.test").await.is_err());
    // Garbage instead of TLS: the tunnel closes.
    let (_, mut tcp) = connect(
        sidepool.proxy,
        &format!("exchange.test:{}", upstream.port()),
    )
    .await;
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: exchange.test\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the tunnel is closed, not left hanging");
    assert!(!String::from_utf8_lossy(&rest).contains("200"), "{rest:?}");
    assert!(
        upstream.received().is_empty(),
        "nothing reached the exchange"
    );
    sidepool.shutdown().await;
}

#[tokio::test]
async fn with_interception_off_connect_stays_405() {
    let upstream = TestUpstream::builder().start().await;
    let (sidepool, dir) = start("off", &upstream, false).await;
    let (head, _) = connect(
        sidepool.proxy,
        &format!("exchange.test:{}", upstream.port()),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    assert!(!dir.exists(), "no CA is made while interception is off");
    sidepool.shutdown().await;
}

/// Inside an intercepted tunnel, a Host header naming another host is refused (403): the
/// tunnel reaches its own upstream only. A client that opens a tunnel and never finishes its
/// TLS handshake is closed after `header_read_timeout`; others are served meanwhile.
#[tokio::test]
async fn a_tunnel_reaches_only_its_host_and_a_stalled_handshake_is_closed() {
    let upstream = TestUpstream::builder().start().await;
    let dir = temp_dir().join("intercept-hostile");
    let _ = std::fs::remove_dir_all(&dir);
    let toml = config_toml("", &[https("ex", "exchange.test", upstream.port())]).replace(
        "drain_timeout = \"5s\"",
        "drain_timeout = \"5s\"\nheader_read_timeout = \"500ms\"",
    ) + &format!(
        "\n[intercept]\nenabled = true\nca_dir = {:?}\n",
        dir.display().to_string()
    );
    let sidepool = Sidepool::start(&toml).await;
    let target = format!("exchange.test:{}", upstream.port());

    let (head, stalled) = connect(sidepool.proxy, &target).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (_, tcp) = connect(sidepool.proxy, &target).await;
    let mut client = tls_client(tcp, &dir, "exchange.test").await.expect("TLS");
    let req = Request::builder()
        .uri("/v5/market/time")
        .header("host", "other.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    client.ready().await.expect("ready");
    let response = client.send_request(req).await.expect("answer");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let (status, _) = send(&mut client, "GET", "/v5/market/time", b"").await;
    assert_eq!(status, StatusCode::OK, "its own host still works");

    let mut stalled = stalled;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, stalled.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a handshake that never comes is cut off");
    let paths: Vec<String> = upstream
        .received()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect();
    assert_eq!(paths, ["/v5/market/time"]);
    sidepool.shutdown().await;
}

/// The interception CA's private key never reaches the logs, even at trace level.
#[tokio::test]
async fn the_ca_key_never_reaches_the_logs_at_trace_level() {
    use crate::support::harness::Process;
    let upstream = TestUpstream::builder().start().await;
    let dir = temp_dir().join("intercept-logs");
    let _ = std::fs::remove_dir_all(&dir);
    let toml = config_toml("", &[https("ex", "exchange.test", upstream.port())])
        + &format!(
            "\n[intercept]\nenabled = true\nca_dir = {:?}\n",
            dir.display().to_string()
        );
    let mut sidepool = Process::start("intercept-logs", &toml, &[("RUST_LOG", "trace")]).await;
    let (head, tcp) = connect(
        sidepool.proxy,
        &format!("exchange.test:{}", upstream.port()),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut client = tls_client(tcp, &dir, "exchange.test").await.expect("TLS");
    assert_eq!(send(&mut client, "GET", "/x", b"").await.0, StatusCode::OK);
    sidepool.signal("TERM");
    assert_eq!(sidepool.wait_exit().await, Some(0));
    let key = std::fs::read_to_string(dir.join("ca.key")).expect("ca.key");
    let log = sidepool.log_text();
    assert!(log.contains("TRACE"), "trace logging was on");
    for line in key
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
    {
        assert!(!log.contains(line), "a line of the CA key is in the log");
    }
    assert!(!log.contains("PRIVATE KEY"), "a key block is in the log");
}
