//! The rustls client configuration: web PKI roots plus configured CA files, ALPN `http/1.1`,
//! session resumption on. One config is shared by every connection so resumption works.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// Why the TLS client configuration could not be built (the config check catches the first
/// one; both keep rustls's error as their source).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A `tls.ca_files` certificate is not usable as a root.
    #[error("tls.ca_files: a certificate cannot be used as a trust anchor")]
    Root(#[source] rustls::Error),
    /// The crypto provider refused the protocol versions.
    #[error("TLS setup failed")]
    Provider(#[source] rustls::Error),
}

/// Builds the shared client config. Uses the ring provider explicitly, never the process
/// default, so no other crate's feature choice can change or break it.
pub fn client_config(
    extra_roots: &[CertificateDer<'static>],
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra_roots {
        roots.add(cert.clone()).map_err(TlsSetupError::Root)?;
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(TlsSetupError::Provider)?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Resumption is on by default (in-memory session cache inside this shared config).
    Ok(Arc::new(config))
}

/// A message for a failed handshake that says what failed and what to do.
pub fn describe_handshake_error(host: &str, addr: SocketAddr, err: &io::Error) -> String {
    let tls = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let detail = tls.map_or_else(|| err.to_string(), ToString::to_string);
    use rustls::CertificateError as Cert;
    let hint = match tls {
        Some(rustls::Error::InvalidCertificate(cert)) => match cert {
            Cert::Expired | Cert::ExpiredContext { .. } => {
                "; the upstream's certificate has expired (or this machine's clock is wrong): \
                 check the clock, and the exchange's status page"
            }
            Cert::NotValidYet | Cert::NotValidYetContext { .. } => {
                "; the certificate is not valid yet: check this machine's clock"
            }
            Cert::NotValidForName | Cert::NotValidForNameContext { .. } => {
                "; the certificate is for another host: check that the upstream url names the \
                 exchange's real API host (a TLS-inspecting network presents its own certificates)"
            }
            _ => "; if the upstream uses a private CA, add it to tls.ca_files",
        },
        _ => "",
    };
    format!("TLS handshake with {host} ({addr}) failed: {detail}{hint}")
}
