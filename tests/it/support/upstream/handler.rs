//! One request: read and record it, run the test's handler, and act on its [`Reply`].

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::body::{BodyState, ReplyBody};
use super::conn::{ConnState, Kill};
use super::reply::{BodySpec, Received, Reply, STALL_BODY_CHUNK};
use super::server::{Shared, lock};

/// Marks one request in progress (connection busy, `in_flight`) until dropped. It lives in
/// the service future, then in the response body, so it ends when the body is finished or
/// the request is abandoned.
pub(super) struct RequestGuard {
    pub(super) shared: Arc<Shared>,
    pub(super) conn: Arc<ConnState>,
}

impl RequestGuard {
    pub(super) fn new(shared: &Arc<Shared>, conn: &Arc<ConnState>) -> Self {
        conn.activity.send_modify(|a| a.busy += 1);
        shared.update(|s| {
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
        });
        RequestGuard {
            shared: Arc::clone(shared),
            conn: Arc::clone(conn),
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.conn.activity.send_modify(|a| {
            a.busy -= 1;
            a.idle_since = Instant::now();
        });
        self.shared.update(|s| s.in_flight -= 1);
    }
}

pub(super) async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnState>,
    req: Request<Incoming>,
) -> Result<Response<ReplyBody>, Infallible> {
    // Read before counting the request in flight, so release_stalled() called after a test
    // saw it in flight covers it.
    let release_generation = *shared.release.borrow();
    let guard = RequestGuard::new(&shared, &conn);
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        // The client went away mid-body; hyper is closing the connection anyway.
        Err(_) => return Ok(plain_response(StatusCode::BAD_REQUEST, guard)),
    };
    let received = Received {
        conn_id: conn.id,
        method: parts.method.to_string(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
        target: parts.uri.to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    };
    // Recorded before it is counted, so a test woken by wait_requests(n) sees n entries.
    lock(&shared.received).push(received.clone());
    shared.update(|s| s.requests += 1);

    let reply = match std::panic::catch_unwind(AssertUnwindSafe(|| (shared.handler)(&received))) {
        Ok(reply) => reply,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".to_owned());
            // Answered, so that nothing waits on this request; the test fails all the same.
            shared.handler_panicked(msg.clone());
            Reply::text(500, format!("test upstream handler panicked: {msg}"))
        }
    };

    let spec = match reply {
        Reply::Ok(spec) => spec,
        Reply::Stall => {
            wait_release(&shared, release_generation).await;
            match Reply::default_for(&received) {
                Reply::Ok(spec) => spec,
                _ => unreachable!("default_for always answers Reply::Ok"),
            }
        }
        Reply::StallBody => {
            let release = Box::pin(async move {
                wait_release(&shared, release_generation).await;
            });
            let body = ReplyBody {
                state: BodyState::StallAfter {
                    first: Some(Bytes::from_static(STALL_BODY_CHUNK)),
                    release,
                },
                _guard: guard,
            };
            return Ok(Response::builder()
                .header(CONTENT_TYPE, "application/json")
                .body(body)
                .expect("static response parts are valid"));
        }
        Reply::Reset => return kill_and_wait(&conn, Kill::Reset).await,
        Reply::Close => return kill_and_wait(&conn, Kill::Close).await,
        Reply::Raw { bytes, then } => {
            let kill = Kill::Raw {
                bytes,
                then,
                release_seen: release_generation,
            };
            return kill_and_wait(&conn, kill).await;
        }
    };

    if let Some(delay) = spec.delay {
        tokio::time::sleep(delay).await;
    }
    let state = match spec.body {
        BodySpec::Fixed(bytes) => BodyState::Fixed(Some(bytes)),
        BodySpec::Stream { chunks, chunk_size } => BodyState::Stream {
            next: 0,
            chunks,
            chunk_size,
        },
    };
    let mut response = Response::new(ReplyBody {
        state,
        _guard: guard,
    });
    *response.status_mut() = spec.status;
    *response.headers_mut() = spec.headers;
    Ok(response)
}

/// Asks the connection task to end the connection; it drops this request's future with it.
async fn kill_and_wait(conn: &ConnState, kill: Kill) -> Result<Response<ReplyBody>, Infallible> {
    conn.kill.send_replace(Some(kill));
    std::future::pending().await
}

pub(super) async fn wait_release(shared: &Shared, seen: u64) {
    let mut rx = shared.release.subscribe();
    // The sender lives in `shared`, so this cannot fail; stall forever if it somehow does.
    if rx.wait_for(|g| *g != seen).await.is_err() {
        std::future::pending::<()>().await;
    }
}

pub(super) fn plain_response(status: StatusCode, guard: RequestGuard) -> Response<ReplyBody> {
    let mut response = Response::new(ReplyBody {
        state: BodyState::Fixed(None),
        _guard: guard,
    });
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}
