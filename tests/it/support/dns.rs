//! A tiny authoritative DNS server on loopback for tests: UDP and TCP on the same
//! `127.0.0.1` port, answering from a table the test changes while it runs.
//!
//! - A queries: the table's addresses with the table's TTL, or NXDOMAIN for an unknown name;
//! - AAAA (and any other type) for a known name: an empty NOERROR, so only A records matter;
//! - [`Mode::ServFail`] answers everything SERVFAIL, [`Mode::Silent`] answers nothing.
//!
//! Negative answers carry an SOA whose minimum (the negative TTL) is 1 s. Every query is
//! counted per name and type before it is answered, and published through a watch channel,
//! so tests can wait for queries and assert how often a name was looked up.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long `wait_*` methods wait before failing the test.
const WAIT_LIMIT: Duration = Duration::from_secs(10);
/// Attempts at finding a port free for both UDP and TCP.
const BIND_ATTEMPTS: usize = 20;
/// Negative answers' TTL (the SOA minimum), in seconds.
const NEGATIVE_TTL: u32 = 1;

/// How the server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// From the table (the default).
    Answer,
    /// SERVFAIL to every query.
    ServFail,
    /// No answer at all: the query is counted and dropped (TCP connections are held open).
    Silent,
}

/// One table entry: the A records of a name.
#[derive(Clone, Debug)]
struct Entry {
    addrs: Vec<Ipv4Addr>,
    ttl: u32,
}

struct Shared {
    table: Mutex<HashMap<String, Entry>>,
    mode: Mutex<Mode>,
    /// Queries per (lowercase name without the final dot, type), counted on arrival.
    queries: watch::Sender<HashMap<(String, RecordType), usize>>,
}

/// A running DNS server. Dropping it stops it.
pub struct TestDns {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl TestDns {
    /// Binds UDP and TCP on one free `127.0.0.1` port and starts answering, with an empty
    /// table.
    ///
    /// # Panics
    /// If no port is free for both after a few attempts.
    pub async fn start() -> TestDns {
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().expect("DNS UDP local_addr");
        let shared = Arc::new(Shared {
            table: Mutex::new(HashMap::new()),
            mode: Mutex::new(Mode::Answer),
            queries: watch::Sender::new(HashMap::new()),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(serve_udp(udp, Arc::clone(&shared)));
        tasks.spawn(serve_tcp(tcp, Arc::clone(&shared)));
        TestDns {
            addr,
            shared,
            tasks,
        }
    }

    /// The address (UDP and TCP), e.g. for `dns.nameservers`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the A records of `name` (replacing any), answered with `ttl` seconds.
    pub fn set(&self, name: &str, addrs: &[Ipv4Addr], ttl: u32) {
        lock(&self.shared.table).insert(
            normalize(name),
            Entry {
                addrs: addrs.to_vec(),
                ttl,
            },
        );
    }

    /// Switches how every later query is answered.
    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.shared.mode) = mode;
    }

    /// A queries received for `name` so far (answered or not).
    pub fn a_queries(&self, name: &str) -> usize {
        self.queries(name, RecordType::A)
    }

    /// Queries of type `kind` received for `name` so far (answered or not).
    pub fn queries(&self, name: &str, kind: RecordType) -> usize {
        self.shared
            .queries
            .borrow()
            .get(&(normalize(name), kind))
            .copied()
            .unwrap_or(0)
    }

    /// Waits until at least `n` A queries for `name` have arrived.
    ///
    /// # Panics
    /// After 10 s.
    pub async fn wait_a_queries(&self, name: &str, n: usize) {
        let key = (normalize(name), RecordType::A);
        let mut rx = self.shared.queries.subscribe();
        let waited = tokio::time::timeout(
            WAIT_LIMIT,
            rx.wait_for(|q| q.get(&key).copied().unwrap_or(0) >= n),
        )
        .await;
        assert!(
            matches!(waited, Ok(Ok(_))),
            "TestDns: timed out waiting for {n} A queries for {name}; got {}",
            self.a_queries(name)
        );
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Lowercase, without the final dot: how names are kept and counted.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A UDP socket on a free port and a TCP listener on the same port. The port is chosen by
/// UDP; TCP may find it taken, so try again a bounded number of times.
async fn bind_pair() -> (UdpSocket, TcpListener) {
    let mut last_error = None;
    for _ in 0..BIND_ATTEMPTS {
        let udp = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind DNS UDP on 127.0.0.1:0");
        let addr = udp.local_addr().expect("DNS UDP local_addr");
        match TcpListener::bind(addr).await {
            Ok(tcp) => return (udp, tcp),
            Err(e) => last_error = Some(e),
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1: {last_error:?}");
}

async fn serve_udp(socket: UdpSocket, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if let Some(reply) = answer(&shared, &buf[..n]) {
            // A lost UDP answer is the resolver's business (it retries), as on a real network.
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while conns.try_join_next().is_some() {}
        conns.spawn(serve_tcp_conn(stream, Arc::clone(&shared)));
    }
}

/// DNS over TCP: each message is preceded by its length as two bytes, big-endian.
async fn serve_tcp_conn(mut stream: TcpStream, shared: Arc<Shared>) {
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut query).await.is_err() {
            return;
        }
        let Some(reply) = answer(&shared, &query) else {
            // Silent: keep reading (and counting) until the client gives up.
            continue;
        };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            return;
        };
        if stream.write_all(&reply_len.to_be_bytes()).await.is_err()
            || stream.write_all(&reply).await.is_err()
        {
            return;
        }
    }
}

/// The encoded answer to one query message, or None when nothing should be sent.
fn answer(shared: &Shared, bytes: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(bytes).ok()?;
    if query.metadata.message_type != MessageType::Query {
        return None;
    }
    for q in &query.queries {
        let key = (normalize(&q.name().to_ascii()), q.query_type());
        shared
            .queries
            .send_modify(|counts| *counts.entry(key).or_insert(0) += 1);
    }
    let mode = *lock(&shared.mode);
    if mode == Mode::Silent {
        return None;
    }
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.authoritative = true;
    reply.add_queries(query.queries.clone());
    let question = match (&mode, query.metadata.op_code, query.queries.as_slice()) {
        (Mode::Answer, OpCode::Query, [one]) => one,
        (Mode::Answer, _, _) => {
            reply.metadata.response_code = ResponseCode::FormErr;
            return reply.to_vec().ok();
        }
        _ => {
            reply.metadata.response_code = ResponseCode::ServFail;
            return reply.to_vec().ok();
        }
    };
    let name = question.name().clone();
    let entry = lock(&shared.table)
        .get(&normalize(&name.to_ascii()))
        .cloned();
    match (entry, question.query_type()) {
        (Some(entry), RecordType::A) => {
            for ip in entry.addrs {
                reply.add_answer(Record::from_rdata(name.clone(), entry.ttl, RData::A(A(ip))));
            }
        }
        (Some(_), _) => {
            // The name exists, without records of this type: NOERROR, no answer.
            reply.add_authority(soa_for(&name));
        }
        (None, _) => {
            reply.metadata.response_code = ResponseCode::NXDomain;
            reply.add_authority(soa_for(&name));
        }
    }
    reply.to_vec().ok()
}

/// The SOA that makes a negative answer cacheable for [`NEGATIVE_TTL`].
fn soa_for(name: &Name) -> Record {
    let zone = name.base_name();
    let soa = SOA::new(
        Name::from_ascii("ns.test.").expect("valid name"),
        Name::from_ascii("hostmaster.test.").expect("valid name"),
        1,
        60,
        60,
        60,
        NEGATIVE_TTL,
    );
    Record::from_rdata(zone, NEGATIVE_TTL, RData::SOA(soa))
}
