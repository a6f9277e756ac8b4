//! Leaf certificates for the configured hosts: minted on demand, short-lived, cached, and
//! replaced once two thirds of their life has passed; and the rustls resolver that serves
//! them by SNI. A host outside the configured set gets no certificate, ever.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::ca::Ca;

/// How long a leaf certificate is valid (a day: short enough that one copied from memory is
/// soon useless, long enough that minting is rare).
pub const LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How far before now a certificate's validity starts, for clients whose clock runs behind.
const BACKDATE: Duration = Duration::from_secs(300);

/// The CA and its cache of leaf certificates.
pub struct Leaves {
    ca: Ca,
    hosts: HashSet<String>,
    lifetime: Duration,
    provider: Arc<CryptoProvider>,
    cache: Mutex<HashMap<String, Leaf>>,
}

struct Leaf {
    key: Arc<CertifiedKey>,
    renew_at: SystemTime,
    not_after: SystemTime,
}

impl fmt::Debug for Leaves {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leaves")
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

impl Leaves {
    pub fn new(ca: Ca, hosts: HashSet<String>, lifetime: Duration) -> Leaves {
        Leaves {
            ca,
            hosts,
            lifetime,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    pub fn covers(&self, host: &str) -> bool {
        self.hosts.contains(host)
    }

    /// The certificate for `host` at `now`: the cached one while it is fresh, else a new one.
    /// `None` for a host that is not configured, or when minting fails (logged).
    pub fn get_at(&self, host: &str, now: SystemTime) -> Option<(Arc<CertifiedKey>, SystemTime)> {
        let host = host.to_ascii_lowercase();
        if !self.covers(&host) {
            return None;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(leaf) = cache.get(&host).filter(|l| now < l.renew_at) {
            return Some((leaf.key.clone(), leaf.not_after));
        }
        // Minting under the lock: one P-256 key and one signature (well under a millisecond),
        // and at most once per host per renewal, so concurrent handshakes never mint twice.
        match self.mint(&host, now) {
            Ok(leaf) => {
                let got = (leaf.key.clone(), leaf.not_after);
                cache.insert(host, leaf);
                Some(got)
            }
            Err(err) => {
                tracing::error!(host, error = %err, "minting an interception certificate failed");
                None
            }
        }
    }

    /// A new leaf for `host` (which the caller has checked), valid from `now`.
    fn mint(&self, host: &str, now: SystemTime) -> Result<Leaf, String> {
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params =
            CertificateParams::new(vec![host.to_owned()]).map_err(|e| e.to_string())?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, host);
        params.distinguished_name = name;
        params.not_before = x509_time(now - BACKDATE);
        let not_after = now + self.lifetime;
        params.not_after = x509_time(not_after);
        params.serial_number = Some(random_serial());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.ca.issuer)
            .map_err(|e| e.to_string())?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signer = self
            .provider
            .key_provider
            .load_private_key(der)
            .map_err(|e| e.to_string())?;
        Ok(Leaf {
            key: Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer)),
            renew_at: now + self.lifetime * 2 / 3,
            not_after,
        })
    }

    /// Mints for any name, configured or not: only for tests that check what clients do
    /// with a certificate the CA should never have signed.
    #[cfg(test)]
    pub fn mint_unchecked(&self, host: &str) -> Arc<CertifiedKey> {
        self.mint(host, SystemTime::now()).expect("mint").key
    }
}

impl ResolvesServerCert for Leaves {
    /// By SNI only: no SNI, or one that is not a configured host, and the handshake fails.
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let host = hello.server_name()?;
        self.get_at(host, SystemTime::now()).map(|(key, _)| key)
    }
}

/// `time` as X.509 wants it (whole seconds since the epoch).
pub(super) fn x509_time(time: SystemTime) -> time::OffsetDateTime {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(since.as_secs())
}

/// A random positive 128-bit serial number.
pub(super) fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // The ring provider's random source; a failure leaves zeros, which still parse.
    let _ = rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}
