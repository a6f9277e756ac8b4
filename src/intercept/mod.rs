//! CONNECT interception: a local CA that signs certificates for the configured hosts only, and
//! the rustls server side that terminates a client's TLS inside a tunnel with them.
//!
//! Owns the CA directory and the leaf cache. Knows nothing of the proxy: it takes a directory
//! and a list of host names and hands out a `ServerConfig`. The threat model (what a leaked key
//! allows, what to do) is in docs/interception.md.
//!
//! Modules: `ca` (the CA on disk), `leaf` (minting, caching and serving leaf certificates).

mod ca;
mod leaf;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{ServerName, UnixTime};

pub use ca::{CERT_FILE, KEY_FILE};
pub use leaf::LEAF_LIFETIME;
use leaf::Leaves;

/// Why the CA could not be loaded or made. No variant carries key material.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    /// Reading or writing a file of the CA directory failed.
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    /// The key file may be read by others than its owner.
    #[error(
        "{0} is readable by others (mode {1:o}); it is the CA's private key: chmod 600 it, and if others may have read it, follow docs/interception.md (the key leaked)"
    )]
    KeyMode(PathBuf, u32),
    /// The certificate exists without its key.
    #[error(
        "{0} is missing but the CA certificate next to it exists; restore the key, or move the directory aside to make a new CA (clients must then trust the new ca.pem)"
    )]
    KeyMissing(PathBuf),
    /// A file is not what it should be.
    #[error("{0}: {1}")]
    Invalid(PathBuf, &'static str),
    /// Making a key or certificate failed.
    #[error("{0}: {1}")]
    Certificate(&'static str, String),
    /// The CA on disk was made for other hosts than those configured now.
    #[error(
        "the CA in {dir} does not cover {hosts} (its name constraints were set for the upstreams configured when it was made); move {dir} aside to make a new CA for every configured host, and give clients the new ca.pem"
    )]
    NotCovered {
        /// The CA directory.
        dir: PathBuf,
        /// The hosts it does not cover.
        hosts: String,
    },
    /// No configured host is a DNS name.
    #[error("no upstream host can be intercepted (IP-address hosts cannot be)")]
    NoHosts,
}

/// The interception CA and the TLS server configuration that serves its leaf certificates.
pub struct Interceptor {
    leaves: Arc<Leaves>,
    config: Arc<ServerConfig>,
}

impl Interceptor {
    /// Loads (or makes) the CA in `ca_dir` for `hosts`, the configured upstreams' host names
    /// (IP addresses are skipped: a client sends no SNI for them). Checks that the CA signs a
    /// certificate each host verifies with, constraints included, and fails if not.
    pub fn open(ca_dir: &Path, hosts: &[String]) -> Result<Interceptor, InterceptError> {
        Interceptor::open_with(ca_dir, hosts, LEAF_LIFETIME)
    }

    /// As [`Interceptor::open`], with the leaf lifetime given.
    pub fn open_with(
        ca_dir: &Path,
        hosts: &[String],
        leaf_lifetime: Duration,
    ) -> Result<Interceptor, InterceptError> {
        let mut names: Vec<String> = hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .filter(|h| h.trim_matches(['[', ']']).parse::<IpAddr>().is_err())
            .collect();
        names.sort();
        names.dedup();
        if names.is_empty() {
            return Err(InterceptError::NoHosts);
        }
        let ca = ca::Ca::load_or_create(ca_dir, &names)?;
        let leaves = Arc::new(Leaves::new(
            ca,
            names.iter().cloned().collect::<HashSet<_>>(),
            leaf_lifetime,
        ));
        let uncovered: Vec<&str> = names
            .iter()
            .filter(|h| !verifies(&leaves, h))
            .map(String::as_str)
            .collect();
        if !uncovered.is_empty() {
            return Err(InterceptError::NotCovered {
                dir: ca_dir.to_owned(),
                hosts: uncovered.join(", "),
            });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| InterceptError::Certificate("building the TLS server", e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(leaves.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Interceptor {
            leaves,
            config: Arc::new(config),
        })
    }

    /// Whether CONNECT to `host` may be intercepted (a configured host name).
    pub fn covers(&self, host: &str) -> bool {
        self.leaves.covers(&host.to_ascii_lowercase())
    }

    /// The TLS server side for tunnels: certificates by SNI, configured hosts only.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// The CA certificate (PEM), for clients to trust.
    pub fn ca_pem(&self) -> &str {
        &self.leaves.ca().cert_pem
    }
}

/// Whether a leaf for `host` verifies against the CA certificate on disk, as a client trusting
/// only that certificate would check it (rustls's verifier, name constraints enforced).
fn verifies(leaves: &Leaves, host: &str) -> bool {
    let Some((leaf, _)) = leaves.get_at(host, SystemTime::now()) else {
        return false;
    };
    let mut roots = rustls::RootCertStore::empty();
    if roots.add(leaves.ca().cert_der.clone()).is_err() {
        return false;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Ok(verifier) =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build()
    else {
        return false;
    };
    let Ok(name) = ServerName::try_from(host.to_owned()) else {
        return false;
    };
    verifier
        .verify_server_cert(&leaf.cert[0], &[], &name, &[], UnixTime::now())
        .is_ok()
}
