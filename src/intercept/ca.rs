//! The interception CA on disk: `ca.pem` (the certificate clients trust) and `ca.key` (mode
//! 0600), made on first use and reused ever after.
//!
//! Files are written to a temporary name and hard-linked into place, which fails rather than
//! overwrites when the name exists: two processes starting at once on one directory end up
//! with one CA. The key is linked first; a key found without a certificate is an interrupted
//! first start (no client can trust a certificate that was never written), and gets its
//! certificate. A certificate without its key is an error: the CA cannot sign.
//!
//! The key's bytes never leave this module except into the signer; no error message or
//! `Debug` output carries them.

use std::fmt;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType, GeneralSubtree,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::InterceptError;

/// The certificate file, for clients to trust.
pub const CERT_FILE: &str = "ca.pem";
/// The private key file (PKCS#8 PEM, mode 0600).
pub const KEY_FILE: &str = "ca.key";
/// How long a new CA certificate is valid. Long, because every client must be given it again
/// when it changes; the name constraints, not the lifetime, are what limit a leaked key.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A loaded CA: its certificate and the issuer that signs leaf certificates.
pub struct Ca {
    pub(super) cert_der: CertificateDer<'static>,
    pub(super) cert_pem: String,
    pub(super) issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads the CA in `dir`, making it (and `dir`, mode 0700) when absent. A new CA's name
    /// constraints permit exactly `hosts` (and their subdomains, as X.509 defines them).
    pub fn load_or_create(dir: &Path, hosts: &[String]) -> Result<Ca, InterceptError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io_error(dir, e))?;
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        if !key_path.exists() {
            if cert_path.exists() {
                return Err(InterceptError::KeyMissing(key_path));
            }
            let key = KeyPair::generate().map_err(|e| cert_error("generating the CA key", e))?;
            write_new(dir, KEY_FILE, key.serialize_pem().as_bytes(), 0o600)?;
        }
        let key = load_key(&key_path)?;
        if !cert_path.exists() {
            let cert = ca_params(&key, hosts, SystemTime::now())
                .self_signed(&key)
                .map_err(|e| cert_error("making the CA certificate", e))?;
            write_new(dir, CERT_FILE, cert.pem().as_bytes(), 0o644)?;
        }
        let cert_pem = fs::read_to_string(&cert_path).map_err(|e| io_error(&cert_path, e))?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| InterceptError::Invalid(cert_path.clone(), "not a PEM certificate"))?;
        // What the issuer needs (subject, key identifier method, key usages) follows from the
        // key alone, so the one on disk is rebuilt without parsing it; `Interceptor::open`
        // then proves the pair works by verifying a leaf against the certificate.
        let issuer = Issuer::new(ca_params(&key, &[], SystemTime::now()), key);
        Ok(Ca {
            cert_der,
            cert_pem,
            issuer,
        })
    }
}

/// The CA's parameters. The subject names the key (a prefix of its key identifier), so two
/// sidepool CAs in one trust store are told apart, and it can be rebuilt from the key.
fn ca_params(key: &KeyPair, hosts: &[String], now: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let id: String = params
        .key_identifier(key)
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "sidepool");
    name.push(DnType::CommonName, format!("sidepool interception CA {id}"));
    params.distinguished_name = name;
    // Path length 0: it signs leaf certificates, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = super::leaf::x509_time(now - Duration::from_secs(3600));
    params.not_after = super::leaf::x509_time(now + CA_LIFETIME);
    params.serial_number = Some(super::leaf::random_serial());
    if !hosts.is_empty() {
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: hosts
                .iter()
                .map(|h| GeneralSubtree::DnsName(h.clone()))
                .collect(),
            // Without an IP subtree, IP addresses would be unconstrained: exclude them all.
            excluded_subtrees: vec![
                GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])),
                GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])),
            ],
        });
    }
    params
}

/// Reads the key, refusing one that others than its owner may read.
fn load_key(path: &Path) -> Result<KeyPair, InterceptError> {
    let mode = fs::metadata(path)
        .map_err(|e| io_error(path, e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(InterceptError::KeyMode(path.to_owned(), mode & 0o777));
    }
    let pem = fs::read_to_string(path).map_err(|e| io_error(path, e))?;
    KeyPair::from_pem(&pem)
        .map_err(|_| InterceptError::Invalid(path.to_owned(), "not a PEM private key"))
}

/// Writes `name` in `dir` with `mode` unless it exists (then leaves the existing file alone).
fn write_new(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<(), InterceptError> {
    let unique = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let temp = dir.join(format!(".{name}.{}.{unique}.tmp", std::process::id()));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()
    })();
    let linked = written.and_then(|()| match fs::hard_link(&temp, dir.join(name)) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    });
    let _ = fs::remove_file(&temp);
    linked.map_err(|e| io_error(&dir.join(name), e))?;
    // The new name is durable only once the directory is.
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

fn io_error(path: &Path, source: io::Error) -> InterceptError {
    InterceptError::Io(PathBuf::from(path), source)
}

fn cert_error(what: &'static str, e: rcgen::Error) -> InterceptError {
    InterceptError::Certificate(what, e.to_string())
}
