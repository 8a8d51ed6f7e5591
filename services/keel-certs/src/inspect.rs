//! What the console shows about a certificate, and the warnings it raises.

use std::net::IpAddr;

use keel_api::{CertWarning, CertWarningCode};
use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;
use x509_parser::public_key::PublicKey;

use crate::material::{is_self_issued, issued_by, parse_cert, same_public_key, PrivateKey};
use crate::{fingerprint, CertError};

/// Certificates expiring sooner than this are flagged.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// Facts about a leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Details {
    pub subject: String,
    pub issuer: String,
    /// `DNS:name` / `IP:address`.
    pub sans: Vec<String>,
    pub not_before: time::OffsetDateTime,
    pub not_after: time::OffsetDateTime,
    pub key_type: String,
    pub sha256_fingerprint: String,
    pub self_signed: bool,
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Details {
    pub fn not_before_rfc3339(&self) -> String {
        rfc3339(self.not_before)
    }
    pub fn not_after_rfc3339(&self) -> String {
        rfc3339(self.not_after)
    }
}

pub fn details(der: &[u8]) -> Result<Details, CertError> {
    let (_, c) = parse_cert(der)?;
    Ok(Details {
        subject: c.subject().to_string(),
        issuer: c.issuer().to_string(),
        sans: sans(&c),
        not_before: c.validity().not_before.to_datetime(),
        not_after: c.validity().not_after.to_datetime(),
        key_type: key_type(&c),
        sha256_fingerprint: fingerprint(der),
        self_signed: is_self_issued(&c),
    })
}

fn sans(c: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(ext)) = c.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(format!("DNS:{d}")),
            GeneralName::IPAddress(b) => ip_from_bytes(b).map(|ip| format!("IP:{ip}")),
            _ => None,
        })
        .collect()
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

/// `RSA 2048`, `ECDSA P-256`, `Ed25519`, ...
fn key_type(c: &X509Certificate<'_>) -> String {
    let spki = c.public_key();
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => format!("RSA {}", rsa.key_size()),
        Ok(PublicKey::EC(point)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| match oid.to_id_string().as_str() {
                    "1.2.840.10045.3.1.7" => "P-256".to_owned(),
                    "1.3.132.0.34" => "P-384".to_owned(),
                    "1.3.132.0.35" => "P-521".to_owned(),
                    other => other.to_owned(),
                })
                .unwrap_or_else(|| format!("{} bits", point.key_size()));
            format!("ECDSA {curve}")
        }
        Ok(PublicKey::Unknown(_)) if spki.algorithm.algorithm.to_id_string() == "1.3.101.112" => {
            "Ed25519".into()
        }
        _ => spki.algorithm.algorithm.to_id_string(),
    }
}

/// Bits of security-relevant key size: RSA modulus bits or EC curve bits.
fn weak_key(c: &X509Certificate<'_>) -> Option<String> {
    match c.public_key().parsed() {
        Ok(PublicKey::RSA(rsa)) if rsa.key_size() < 2048 => Some(format!(
            "RSA {} bits (at least 2048 needed)",
            rsa.key_size()
        )),
        Ok(PublicKey::EC(p)) if p.key_size() < 256 => {
            Some(format!("EC {} bits (at least 256 needed)", p.key_size()))
        }
        _ => None,
    }
}

fn weak_signature(c: &X509Certificate<'_>) -> Option<&'static str> {
    match c.signature_algorithm.algorithm.to_id_string().as_str() {
        "1.2.840.113549.1.1.5" | "1.2.840.10045.4.1" | "1.2.840.10040.4.3" | "1.3.14.3.2.29" => {
            Some("SHA-1")
        }
        "1.2.840.113549.1.1.4" => Some("MD5"),
        "1.2.840.113549.1.1.2" => Some("MD2"),
        _ => None,
    }
}

/// Where a certificate is served (or would be).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Ip(IpAddr),
    Hostname(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Ip(ip) => write!(f, "ip:{ip}"),
            Target::Hostname(h) => write!(f, "host:{h}"),
        }
    }
}

/// Does a DNS SAN (maybe `*.example.com`) cover `name`?
fn dns_matches(pattern: &str, name: &str) -> bool {
    let (pattern, name) = (pattern.to_ascii_lowercase(), name.to_ascii_lowercase());
    let name = name.trim_end_matches('.');
    let pattern = pattern.trim_end_matches('.');
    if let Some(suffix) = pattern.strip_prefix("*.") {
        return name
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix);
    }
    pattern == name
}

/// Does the leaf name `target` in its SANs?
pub fn covers(sans: &[String], target: &Target) -> bool {
    sans.iter().any(|san| match (target, san.split_once(':')) {
        (Target::Ip(ip), Some(("IP", v))) => v
            .parse::<IpAddr>()
            .is_ok_and(|v| v.to_canonical() == ip.to_canonical()),
        (Target::Hostname(h), Some(("DNS", v))) => dns_matches(v, h),
        _ => false,
    })
}

fn warn(code: CertWarningCode, message: String) -> CertWarning {
    CertWarning { code, message }
}

/// Everything worth telling about `chain` (leaf first) served with `key` at
/// `targets`, as of `now`.
pub fn warnings(
    chain: &[CertificateDer<'_>],
    key: Option<&PrivateKey>,
    targets: &[Target],
    now: time::OffsetDateTime,
) -> Vec<CertWarning> {
    let mut out = Vec::new();
    let parsed: Vec<X509Certificate<'_>> = chain
        .iter()
        .filter_map(|c| parse_cert(c).ok().map(|(_, p)| p))
        .collect();
    let Some(leaf) = parsed.first() else {
        return out;
    };
    let Ok(d) = details(&chain[0]) else {
        return out;
    };
    if d.not_after < now {
        out.push(warn(
            CertWarningCode::Expired,
            format!("expired on {}", d.not_after_rfc3339()),
        ));
    } else if d.not_after < now + time::Duration::days(EXPIRY_WARNING_DAYS) {
        let days = (d.not_after - now).whole_days();
        out.push(warn(
            CertWarningCode::ExpiringSoon,
            format!("expires in {days} days, on {}", d.not_after_rfc3339()),
        ));
    }
    if d.not_before > now {
        out.push(warn(
            CertWarningCode::NotYetValid,
            format!("not valid before {}", d.not_before_rfc3339()),
        ));
    }
    if let Some(key) = key {
        let matches = key
            .public_key_spki()
            .map(|spki| same_public_key(&spki, leaf.public_key().raw))
            .unwrap_or(false);
        if !matches {
            out.push(warn(
                CertWarningCode::KeyMismatch,
                "the private key does not match the certificate".into(),
            ));
        }
    }
    // Links: each certificate must be issued by the next one.
    for (i, pair) in parsed.windows(2).enumerate() {
        if !issued_by(&pair[0], &pair[1]) {
            out.push(warn(
                CertWarningCode::ChainOutOfOrder,
                format!(
                    "certificate {} of the chain ({}) is not issued by the next one ({})",
                    i + 1,
                    pair[0].subject(),
                    pair[1].subject()
                ),
            ));
            break;
        }
    }
    // A leaf alone, issued by someone else: clients that lack the issuing
    // (intermediate) certificate cannot build a path.
    if parsed.len() == 1 && !is_self_issued(leaf) {
        out.push(warn(
            CertWarningCode::ChainIncomplete,
            format!(
                "the chain holds no issuer certificate: unless \"{}\" is a root that clients trust, \
                 import the intermediate certificate(s) too",
                leaf.issuer()
            ),
        ));
    }
    for c in &parsed {
        if let Some(w) = weak_key(c) {
            out.push(warn(
                CertWarningCode::WeakKey,
                format!("weak key in \"{}\": {w}", c.subject()),
            ));
        }
        // A root's own signature is never checked by clients.
        if !is_self_issued(c) {
            if let Some(alg) = weak_signature(c) {
                out.push(warn(
                    CertWarningCode::WeakSignature,
                    format!(
                        "\"{}\" is signed with {alg}, which clients reject",
                        c.subject()
                    ),
                ));
            }
        }
    }
    for t in targets {
        if !covers(&d.sans, t) {
            let what = match t {
                Target::Ip(ip) => format!("the address {ip}"),
                Target::Hostname(h) => format!("the name {h}"),
            };
            out.push(warn(
                CertWarningCode::NameNotInSans,
                format!("{what} is not among the certificate's names (subject alternative names)"),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(dns_matches("*.example.com", "a.example.com"));
        assert!(dns_matches("*.Example.com", "A.example.com."));
        assert!(!dns_matches("*.example.com", "example.com"));
        assert!(!dns_matches("*.example.com", "a.b.example.com"));
        let sans = vec!["DNS:keel".to_owned(), "IP:127.0.0.1".to_owned()];
        assert!(covers(&sans, &Target::Ip("127.0.0.1".parse().unwrap())));
        assert!(covers(
            &sans,
            &Target::Ip("::ffff:127.0.0.1".parse().unwrap())
        ));
        assert!(!covers(&sans, &Target::Ip("127.0.0.2".parse().unwrap())));
        assert!(covers(&sans, &Target::Hostname("KEEL".into())));
    }
}
