//! The accept loop of the proxy listener and the settings of each client connection.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use super::Proxy;

/// Hard cap on a request head (start line + headers), enforced by hyper with a bare 431.
/// Requests under it but over [`super::MAX_HEADER_BYTES`] get sidepool's JSON 431.
const HARD_MAX_HEADER_BYTES: usize = 64 * 1024;

/// Serves client connections until `shutdown` resolves, then stops accepting and lets every
/// open connection finish its in-flight request (idle keep-alive connections are closed) for
/// up to `drain_timeout`.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    header_read_timeout: Duration,
    drain_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Slow or silent clients cannot pin a connection forever.
        .header_read_timeout(header_read_timeout)
        .max_header_size(HARD_MAX_HEADER_BYTES)
        // Upstream responses pass through untouched: no Date added by sidepool.
        .auto_date_header(false)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let proxy = proxy.clone();
                    let service = service_fn(move |req| {
                        let proxy = proxy.clone();
                        async move { Ok::<_, Infallible>(proxy.handle(req).await) }
                    });
                    let connection = graceful.watch(builder.serve_connection(TokioIo::new(tcp), service));
                    tokio::spawn(async move {
                        if let Err(err) = connection.await {
                            tracing::debug!(error = %err, "client connection ended with an error");
                        }
                    });
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off, keep serving the others.
                    tracing::warn!(error = %err, "accepting a client connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(
        open_connections = open,
        ?drain_timeout,
        "stopped accepting; draining"
    );
    if tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain_timeout,
            "drain_timeout elapsed; closing the remaining client connections"
        );
    }
}
