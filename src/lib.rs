//! sidepool: an HTTP connection-pooling sidecar.
pub mod error;
pub mod metrics;
pub mod pool;
