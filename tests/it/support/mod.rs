//! Shared test support: the fake exchange (`upstream`), its PKI (`certs`), and `harness`
//! (sidepool in-process or as the built binary, a small HTTP client, metric scraping).
pub mod certs;
pub mod harness;
pub mod orders;
pub mod upstream;
