//! Shared test support: the fake exchange (`upstream`), its PKI (`certs`), and `harness`
//! (sidepool in-process or as the built binary, a small HTTP client, metric scraping);
//! `faults` (raw broken responses, reading broken bodies, settling waits) and `dns` (a DNS
//! server on loopback) for the fault and DNS tests; `eventually` (bounded polling) and
//! `orders` (numbered POSTs and the exactly-once check); `exchange` (a fake exchange that
//! limits weight per window and bans bots that ignore its 429s); `redis` (a real redis-server on
//! loopback, for the shared budgets).
pub mod certs;
pub mod dns;
pub mod eventually;
pub mod exchange;
pub mod faults;
pub mod harness;
pub mod orders;
pub mod redis;
pub mod upstream;
