//! The CA on disk, its name constraints, the leaf cache, and TLS handshakes by SNI.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// A fresh, empty directory for one test (the CA directory goes inside it).
fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("sidepool-intercept-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("ca")
}

fn hosts(names: &[&str]) -> Vec<String> {
    names.iter().map(|h| h.to_string()).collect()
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Verifies `leaf` for `host` as a rustls client trusting only the CA would.
fn verify(
    ca: &CertificateDer<'static>,
    leaf: &CertificateDer<'static>,
    host: &str,
) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .unwrap();
    let name = ServerName::try_from(host.to_owned()).unwrap();
    verifier
        .verify_server_cert(leaf, &[], &name, &[], UnixTime::now())
        .map(|_| ())
}

#[test]
fn a_new_ca_has_a_private_key_and_name_constraints_for_the_configured_hosts() {
    let dir = scratch("new");
    let interceptor =
        Interceptor::open(&dir, &hosts(&["api.bybit.com", "API.Binance.com"])).unwrap();
    assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
    assert_eq!(mode(&dir), 0o700);
    assert!(
        interceptor
            .ca_pem()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert!(!interceptor.ca_pem().contains("PRIVATE KEY"));
    let key = std::fs::read_to_string(dir.join(KEY_FILE)).unwrap();
    assert!(key.contains("PRIVATE KEY"));
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    let ca = &interceptor.leaves.ca().cert_der;
    let good = interceptor
        .leaves
        .get_at("api.bybit.com", SystemTime::now())
        .unwrap()
        .0;
    verify(ca, &good.cert[0], "api.bybit.com").unwrap();
    let good = interceptor
        .leaves
        .get_at("api.binance.com", SystemTime::now())
        .unwrap()
        .0;
    verify(ca, &good.cert[0], "api.binance.com").unwrap();
    // A certificate the CA should never sign, as a leaked key could: clients that honour
    // name constraints (rustls here) refuse it.
    for other in ["evil.example", "bybit.com", "api.bybit.com.evil.example"] {
        let forged = interceptor.leaves.mint_unchecked(other);
        let err = verify(ca, &forged.cert[0], other).unwrap_err();
        assert!(
            format!("{err:?}").contains("NameConstraint")
                || format!("{err:?}").contains("NotValidForName"),
            "{other}: {err:?}"
        );
    }
}

#[test]
fn a_restart_reuses_the_same_ca() {
    let dir = scratch("reuse");
    let first = Interceptor::open(&dir, &hosts(&["api.bybit.com"])).unwrap();
    let key = std::fs::read(dir.join(KEY_FILE)).unwrap();
    let pem = first.ca_pem().to_owned();
    drop(first);
    let second = Interceptor::open(&dir, &hosts(&["api.bybit.com"])).unwrap();
    assert_eq!(second.ca_pem(), pem);
    assert_eq!(std::fs::read(dir.join(KEY_FILE)).unwrap(), key);
    // Leaves the second one signs verify against the certificate clients already trust.
    let ca = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let leaf = second
        .leaves
        .get_at("api.bybit.com", SystemTime::now())
        .unwrap()
        .0;
    verify(&ca, &leaf.cert[0], "api.bybit.com").unwrap();
}

#[test]
fn hosts_added_after_the_ca_was_made_are_reported_not_silently_served() {
    let dir = scratch("added");
    Interceptor::open(&dir, &hosts(&["api.bybit.com"])).unwrap();
    let err = Interceptor::open(&dir, &hosts(&["api.bybit.com", "api.okx.com"]))
        .err()
        .unwrap();
    assert!(
        matches!(&err, InterceptError::NotCovered { hosts, .. } if hosts == "api.okx.com"),
        "{err}"
    );
    assert!(err.to_string().contains("move"), "{err}");
    // A subset of the hosts is fine.
    Interceptor::open(&dir, &hosts(&["api.bybit.com", "10.0.0.1"])).unwrap();
}

#[test]
fn a_key_others_can_read_or_a_missing_key_is_refused() {
    let dir = scratch("modes");
    Interceptor::open(&dir, &hosts(&["api.bybit.com"])).unwrap();
    let key = dir.join(KEY_FILE);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Interceptor::open(&dir, &hosts(&["api.bybit.com"]))
        .err()
        .unwrap();
    assert!(matches!(err, InterceptError::KeyMode(_, 0o644)), "{err}");
    let secret = std::fs::read_to_string(&key).unwrap();
    let body: String = secret.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(
        !err.to_string().contains(&body[..20]),
        "the key is never in a message"
    );
    std::fs::remove_file(&key).unwrap();
    let err = Interceptor::open(&dir, &hosts(&["api.bybit.com"]))
        .err()
        .unwrap();
    assert!(matches!(err, InterceptError::KeyMissing(_)), "{err}");
    assert!(
        !key.exists(),
        "no new key is made next to an existing certificate"
    );
}

#[test]
fn a_key_without_its_certificate_gets_one_and_ip_hosts_are_skipped() {
    let dir = scratch("interrupted");
    let first = Interceptor::open(&dir, &hosts(&["api.bybit.com"])).unwrap();
    let key = std::fs::read(dir.join(KEY_FILE)).unwrap();
    drop(first);
    std::fs::remove_file(dir.join(CERT_FILE)).unwrap();
    let again = Interceptor::open(&dir, &hosts(&["api.bybit.com", "127.0.0.1"])).unwrap();
    assert_eq!(
        std::fs::read(dir.join(KEY_FILE)).unwrap(),
        key,
        "the key is kept"
    );
    assert!(!again.covers("127.0.0.1"));
    assert!(again.covers("API.BYBIT.COM"));
    assert!(matches!(
        Interceptor::open(&scratch("ips"), &hosts(&["127.0.0.1", "[::1]"])),
        Err(InterceptError::NoHosts)
    ));
}

#[test]
fn leaves_are_cached_then_replaced_before_they_expire() {
    let dir = scratch("leaves");
    let lifetime = Duration::from_secs(3600);
    let interceptor = Interceptor::open_with(&dir, &hosts(&["api.bybit.com"]), lifetime).unwrap();
    let leaves = &interceptor.leaves;
    let now = SystemTime::now();
    let (first, first_end) = leaves.get_at("api.bybit.com", now).unwrap();
    assert!(
        first_end <= now + lifetime + Duration::from_secs(1),
        "short-lived"
    );
    let (same, _) = leaves.get_at("Api.Bybit.Com", now + lifetime / 2).unwrap();
    assert!(Arc::ptr_eq(&first, &same), "cached while fresh");
    let later = now + lifetime * 3 / 4;
    assert!(
        later < first_end,
        "the old one is still valid when it is replaced"
    );
    let (next, next_end) = leaves.get_at("api.bybit.com", later).unwrap();
    assert!(!Arc::ptr_eq(&first, &next), "replaced before expiry");
    assert!(next_end > first_end);
    let (cached, _) = leaves.get_at("api.bybit.com", later).unwrap();
    assert!(Arc::ptr_eq(&next, &cached));
}

#[test]
fn no_certificate_for_a_host_that_is_not_configured() {
    let dir = scratch("unconfigured");
    let interceptor = Interceptor::open(&dir, &hosts(&["api.bybit.com"])).unwrap();
    for host in ["evil.example", "bybit.com", "x.api.bybit.com", ""] {
        assert!(
            interceptor.leaves.get_at(host, SystemTime::now()).is_none(),
            "{host}"
        );
        assert!(!interceptor.covers(host));
    }
    assert!(!format!("{:?}", interceptor.leaves).contains("PRIVATE"));
}

/// One TLS handshake over an in-memory pipe: a rustls client trusting the CA, with `sni`,
/// against the interceptor's server side. Returns whether the client got an answer.
async fn handshake(interceptor: &Interceptor, sni: &str) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(interceptor.ca_pem().as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(interceptor.server_config());
    let server = tokio::spawn(async move {
        let mut tls = acceptor
            .accept(server_io)
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(&buf).await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let name = ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let result = async {
        let mut tls = connector
            .connect(name, client_io)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"ping");
        Ok(())
    }
    .await;
    let _ = server.await;
    result
}

#[tokio::test]
async fn the_server_side_serves_configured_hosts_by_sni_and_refuses_others() {
    let dir = scratch("handshake");
    let interceptor = Interceptor::open(&dir, &hosts(&["api.bybit.com", "api.okx.com"])).unwrap();
    handshake(&interceptor, "api.bybit.com").await.unwrap();
    handshake(&interceptor, "api.okx.com").await.unwrap();
    let refused = handshake(&interceptor, "evil.example").await.unwrap_err();
    assert!(!refused.is_empty());
}
