//! Certificate store of the appliance: the self-signed identity made on first
//! boot, and the store under `/data/console/certs` (import, export, generate,
//! request, assign) with what a rustls resolver needs to serve it.

pub mod export;
pub mod generate;
pub mod inspect;
pub mod material;
mod pem;
pub mod pinning;
pub mod store;

pub use material::PrivateKey;
pub use store::{CertStore, Serving};

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("no certificate found")]
    NoCertificate,
    #[error("no private key found")]
    NoKey,
    #[error("malformed PEM: {0}")]
    Pem(String),
    #[error("malformed certificate: {0}")]
    X509(String),
    #[error("private key not usable for TLS: {0}")]
    Key(String),
    #[error(transparent)]
    Store(#[from] keel_core::StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("a passphrase is needed: {0}")]
    PassphraseRequired(String),
    #[error("wrong passphrase (or the file is damaged)")]
    WrongPassphrase,
    #[error("{0}")]
    KeyMismatch(String),
    #[error("{what} is larger than the limit of {limit} bytes")]
    TooLarge { what: String, limit: usize },
    #[error("no certificate with id {0}")]
    NotFound(String),
    #[error("this certificate is already stored (id {0})")]
    Duplicate(String),
    #[error("{0}")]
    Conflict(String),
}

/// How a caller (the console's API) should classify an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input is wrong: say so (4xx), nothing was stored.
    BadInput,
    NotFound,
    /// Refused because of the store's state (in use, already stored).
    Conflict,
    /// Our fault or the disk's (5xx).
    Internal,
}

impl CertError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            CertError::Generate(_) | CertError::Store(_) => ErrorKind::Internal,
            CertError::NotFound(_) => ErrorKind::NotFound,
            CertError::Duplicate(_) | CertError::Conflict(_) => ErrorKind::Conflict,
            _ => ErrorKind::BadInput,
        }
    }
}

/// A certificate chain and its private key, PEM-encoded.
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    // Never print the key, not even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// What the console shows about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub sha256_fingerprint: String,
    pub subject: String,
    pub not_after: String,
}

/// The addresses the built-in certificate names: those passed in that a client
/// can reach by literal (not loopback, not IPv6 link-local: those need a zone a
/// browser cannot put in a URL), and always the factory fallback address
/// (`keel_api::NET_FALLBACK_ADDRESS`), which a technician's laptop uses on a cable.
pub fn builtin_san_ips(ips: &[IpAddr]) -> Vec<IpAddr> {
    let fallback: Option<IpAddr> = keel_api::NET_FALLBACK_ADDRESS
        .split('/')
        .next()
        .and_then(|a| a.parse().ok());
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in ips.iter().map(IpAddr::to_canonical).chain(fallback) {
        let usable = match ip {
            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_unspecified(),
            IpAddr::V6(v6) => {
                !v6.is_loopback() && !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80
            }
        };
        if usable && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// Makes a fresh ECDSA P-256 key and a self-signed certificate for `hostname` and
/// the addresses of [`builtin_san_ips`] (all as SANs), valid from yesterday for
/// `days` days.
pub fn generate_self_signed(
    hostname: &str,
    ips: &[IpAddr],
    days: i64,
) -> Result<Identity, CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![hostname.to_owned()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, hostname);
    // Pages add "(self-signed)" from the certificate itself; not in the name too.
    dn.push(DnType::OrganizationName, "Keel appliance");
    params.distinguished_name = dn;
    params
        .subject_alt_names
        .extend(builtin_san_ips(ips).into_iter().map(SanType::IpAddress));
    // Yesterday: a client whose clock lags a little still accepts it.
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
    let cert = params.self_signed(&key)?;
    Ok(Identity {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Certificates of a PEM bundle, leaf first.
pub fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate);
    }
    Ok(certs)
}

fn parse_key(pem: &str) -> Result<PrivateKeyDer<'static>, CertError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| CertError::Pem(e.to_string()))?
        .ok_or(CertError::NoKey)
}

/// SHA-256 fingerprint of a DER certificate, lowercase hex without separators.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// A fingerprint as browsers and `openssl x509 -fingerprint` show it, for people:
/// uppercase hex pairs separated by colons (`AB:CD:…`). Machines keep the bare
/// lowercase form of [`fingerprint`]; anything that is not hex is shown as it is.
pub fn fingerprint_display(hex: &str) -> String {
    if hex.is_empty() || !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return hex.to_owned();
    }
    hex.as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(":")
}

/// Facts about the leaf certificate of `pem`.
pub fn info(pem: &str) -> Result<CertInfo, CertError> {
    let certs = parse_certs(pem)?;
    let leaf = &certs[0];
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| CertError::X509(e.to_string()))?;
    let not_after = parsed
        .validity()
        .not_after
        .to_datetime()
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| CertError::X509(e.to_string()))?;
    Ok(CertInfo {
        sha256_fingerprint: fingerprint(leaf.as_ref()),
        subject: parsed.subject().to_string(),
        not_after,
    })
}

/// Turns an identity into what a rustls resolver serves.
pub fn certified_key(identity: &Identity) -> Result<Arc<CertifiedKey>, CertError> {
    let certs = parse_certs(&identity.cert_pem)?;
    let key = parse_key(&identity.key_pem)?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| CertError::Key(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(certs, signing)))
}

/// What rustls serves for a stored chain (leaf first) and its key; refuses a
/// key that does not belong to the leaf.
pub fn certified_key_from(
    chain: &[CertificateDer<'static>],
    key: &PrivateKey,
) -> Result<Arc<CertifiedKey>, CertError> {
    let leaf = chain.first().ok_or(CertError::NoCertificate)?;
    if !key.matches(leaf)? {
        return Err(CertError::KeyMismatch(
            "the private key does not match the certificate".into(),
        ));
    }
    Ok(Arc::new(CertifiedKey::new(
        chain.to_vec(),
        key.signing_key()?,
    )))
}

/// The appliance's default certificate under `dir` (`default.crt`, `default.key`).
pub struct DefaultIdentity {
    dir: PathBuf,
}

impl DefaultIdentity {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.join("default.crt")
    }

    fn key_path(&self) -> PathBuf {
        self.dir.join("default.key")
    }

    /// Loads the stored identity, or makes and stores a new self-signed one when
    /// none exists (first boot, or after a factory reset). Returns it and whether
    /// it was created now.
    pub fn load_or_create(
        &self,
        hostname: &str,
        ips: &[IpAddr],
    ) -> Result<(Identity, bool), CertError> {
        if let (Ok(cert_pem), Ok(key_pem)) = (
            std::fs::read_to_string(self.cert_path()),
            std::fs::read_to_string(self.key_path()),
        ) {
            let identity = Identity { cert_pem, key_pem };
            certified_key(&identity)?;
            return Ok((identity, false));
        }
        let identity = generate_self_signed(hostname, ips, 3650)?;
        keel_core::store::ensure_dir(&self.dir, 0o700)?;
        // Key first: a crash in between leaves no certificate without its key.
        keel_core::store::write_atomic(&self.key_path(), identity.key_pem.as_bytes(), 0o600)?;
        keel_core::store::write_atomic(&self.cert_path(), identity.cert_pem.as_bytes(), 0o644)?;
        tracing::info!(
            fingerprint = %fingerprint(parse_certs(&identity.cert_pem)?[0].as_ref()),
            "created self-signed certificate"
        );
        Ok((identity, true))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn self_signed_carries_hostname_and_ips() {
        let ips: Vec<IpAddr> = vec!["192.0.2.7".parse().unwrap(), "2001:db8::7".parse().unwrap()];
        let id = generate_self_signed("keel-test", &ips, 30).unwrap();
        let der = &parse_certs(&id.cert_pem).unwrap()[0];
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let text = format!("{:?}", san.value.general_names);
        assert!(text.contains("keel-test"), "{text}");
        assert!(
            text.contains("192.0.2.7") || text.contains("[192, 0, 2, 7]"),
            "{text}"
        );
        assert!(info(&id.cert_pem).unwrap().subject.contains("CN=keel-test"));
        certified_key(&id).unwrap();
        assert!(!format!("{id:?}").contains("PRIVATE KEY"));
    }

    /// The IP SANs of a PEM certificate.
    fn ip_sans(pem: &str) -> Vec<IpAddr> {
        let der = &parse_certs(pem).unwrap()[0];
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        san.value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                    4 => Some(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap())),
                    16 => Some(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap())),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    #[test]
    fn builtin_names_the_fallback_and_every_routable_ipv6() {
        let ips: Vec<IpAddr> = [
            "10.0.2.15",
            "2001:db8::15",
            "fd00:1::15",
            "fe80::5054:ff:fe12:3456",
            "::1",
            "127.0.0.1",
            "10.0.2.15",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let id = generate_self_signed("keel", &ips, 30).unwrap();
        let want: Vec<IpAddr> = ["10.0.2.15", "2001:db8::15", "fd00:1::15", "169.254.1.1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(ip_sans(&id.cert_pem), want);
        // Already there (the address is up at first boot): named once.
        let id = generate_self_signed("keel", &["169.254.1.1".parse().unwrap()], 30).unwrap();
        assert_eq!(
            ip_sans(&id.cert_pem),
            ["169.254.1.1".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn issuer_says_self_signed_once() {
        let id = generate_self_signed("keel", &[], 30).unwrap();
        let der = &parse_certs(&id.cert_pem).unwrap()[0];
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let issuer = cert.issuer().to_string();
        assert!(!issuer.contains("self-signed"), "{issuer}");
        assert!(issuer.contains("O=Keel appliance"), "{issuer}");
    }

    #[test]
    fn fingerprints_read_as_browsers_show_them() {
        let id = generate_self_signed("keel", &[], 30).unwrap();
        let hex = info(&id.cert_pem).unwrap().sha256_fingerprint;
        let shown = fingerprint_display(&hex);
        assert_eq!(shown.len(), 32 * 3 - 1);
        assert_eq!(shown.replace(':', "").to_ascii_lowercase(), hex);
        assert_eq!(fingerprint_display("ab01ff"), "AB:01:FF");
        // Not a fingerprint: untouched rather than mangled.
        assert_eq!(fingerprint_display(""), "");
        assert_eq!(fingerprint_display("abc"), "abc");
        assert_eq!(fingerprint_display("AB:CD"), "AB:CD");
    }

    #[test]
    fn default_identity_is_created_once_with_private_key_0600() {
        let dir = tempfile::tempdir().unwrap();
        let store = DefaultIdentity::new(dir.path().join("tls"));
        let (first, created) = store.load_or_create("keel", &[]).unwrap();
        assert!(created);
        let mode = std::fs::metadata(dir.path().join("tls/default.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (second, created) = store.load_or_create("keel", &[]).unwrap();
        assert!(!created);
        assert_eq!(
            info(&first.cert_pem).unwrap(),
            info(&second.cert_pem).unwrap()
        );
        // Two appliances never share an identity.
        let other = DefaultIdentity::new(dir.path().join("other"));
        let (third, _) = other.load_or_create("keel", &[]).unwrap();
        assert_ne!(
            info(&first.cert_pem).unwrap().sha256_fingerprint,
            info(&third.cert_pem).unwrap().sha256_fingerprint
        );
    }

    #[test]
    fn garbage_is_refused_clearly() {
        assert!(matches!(
            parse_certs("hello"),
            Err(CertError::NoCertificate)
        ));
        let id = Identity {
            cert_pem: generate_self_signed("k", &[], 1).unwrap().cert_pem,
            key_pem: "nope".into(),
        };
        assert!(matches!(certified_key(&id), Err(CertError::NoKey)));
    }
}
