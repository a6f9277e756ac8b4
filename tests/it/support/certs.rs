//! Test PKI generated with rcgen at test time: nothing secret or expiring is checked in.
//!
//! Two independent CAs exist per test process. [`trusted()`] is the one tests configure
//! sidepool to trust; [`untrusted()`] issues a leaf with exactly the same names, so a test
//! can show that a valid-looking certificate from an unknown CA is refused. [`expired()`]
//! is a second leaf of the trusted CA, right in every way but its validity period.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, date_time_ymd,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Names every leaf certificate is valid for.
pub const SERVER_NAMES: [&str; 4] = ["exchange.test", "other.test", "localhost", "127.0.0.1"];

/// A CA plus one leaf certificate (and its key) signed by it.
pub struct TestPki {
    /// The CA certificate (PEM) written to a file in the per-process temp dir, for configs
    /// that take a path.
    pub ca_file: PathBuf,
    /// Chain the server presents: just the leaf, as the CA is the trust anchor.
    pub server_certs: Vec<CertificateDer<'static>>,
    /// The leaf's private key (PKCS#8). `PrivateKeyDer` is not `Clone`: use `clone_key()`.
    pub server_key: PrivateKeyDer<'static>,
}

/// The PKI that tests configure as trusted. Generated once per process.
pub fn trusted() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| issue_leaf(trusted_ca(), Validity::Current))
}

/// A second, unrelated CA whose leaf has the same names as [`trusted()`]'s. Never configure
/// it as trusted: a server using it must fail certificate verification.
pub fn untrusted() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ca = generate_ca("sidepool-test-untrusted-ca", "untrusted-ca.pem");
        issue_leaf(&ca, Validity::Current)
    })
}

/// The trusted CA (same `ca_file` as [`trusted()`]) with a leaf
/// for the same names that expired long ago (valid in the year 2000 only): a server using
/// it must fail verification although its chain and names are right.
pub fn expired() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| issue_leaf(trusted_ca(), Validity::Expired))
}

/// A CA, kept to issue further leaves.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    file: PathBuf,
}

/// When a leaf is valid.
#[derive(Clone, Copy)]
enum Validity {
    /// rcgen's default: 1975 to 4096.
    Current,
    /// The year 2000 only.
    Expired,
}

fn trusted_ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| generate_ca("sidepool-test-trusted-ca", "trusted-ca.pem"))
}

/// The per-process scratch directory (`<temp>/sidepool-it-<pid>`), created on first use.
///
/// Per process because test binaries may run concurrently (e.g. several `cargo test`
/// invocations); nothing in it is shared between processes.
pub fn temp_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sidepool-it-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("creating test temp dir {}: {e}", dir.display()));
        dir
    })
    .clone()
}

/// Writes `contents` to `name` inside [`temp_dir()`] (overwriting) and returns the path.
pub fn write_file(name: &str, contents: &[u8]) -> PathBuf {
    let path = temp_dir().join(name);
    std::fs::write(&path, contents)
        .unwrap_or_else(|e| panic!("writing test file {}: {e}", path.display()));
    path
}

/// A rustls server config presenting `pki`'s leaf, offering ALPN `http/1.1` only.
///
/// The ring provider is passed explicitly: the process-default provider is ambiguous or
/// absent depending on feature unification, and relying on it panics at runtime.
pub fn server_tls_config(pki: &TestPki) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_no_client_auth()
    .with_single_cert(pki.server_certs.clone(), pki.server_key.clone_key())
    .expect("test server certificate and key are valid");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

fn generate_ca(ca_name: &str, ca_file_name: &str) -> Ca {
    // Generation cannot fail with these fixed, valid inputs; a panic here is a bug in this file.
    let ca_key = KeyPair::generate().expect("generate CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let issuer = CertifiedIssuer::self_signed(ca_params, ca_key).expect("self-sign CA");
    let pem = issuer.pem();
    let file = write_file(ca_file_name, pem.as_bytes());
    Ca { issuer, file }
}

fn issue_leaf(ca: &Ca, validity: Validity) -> TestPki {
    let leaf_key = KeyPair::generate().expect("generate leaf key");
    let mut leaf_params =
        CertificateParams::new(SERVER_NAMES.map(String::from).to_vec()).expect("leaf params");
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "exchange.test");
    leaf_params.is_ca = IsCa::ExplicitNoCa;
    leaf_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.use_authority_key_identifier_extension = true;
    if let Validity::Expired = validity {
        leaf_params.not_before = date_time_ymd(2000, 1, 1);
        leaf_params.not_after = date_time_ymd(2001, 1, 1);
    }
    let leaf = leaf_params
        .signed_by(&leaf_key, &ca.issuer)
        .expect("sign leaf certificate");

    TestPki {
        ca_file: ca.file.clone(),
        server_certs: vec![leaf.der().clone()],
        server_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    }
}
