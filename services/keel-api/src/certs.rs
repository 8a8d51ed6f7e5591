//! Certificate store (*Security › Certificates*): `/appliance/api/v1/certs...`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Id of the built-in self-signed certificate made on first boot. It is served
/// wherever nothing else is assigned and cannot be deleted.
pub const BUILTIN_CERT_ID: &str = "builtin";

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    #[default]
    EcdsaP256,
    Rsa2048,
    Rsa3072,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CertState {
    /// Certificate and key are present: can be served.
    Active,
    /// A CSR was made for a new key; waiting for the CA's answer.
    Pending,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CertWarningCode {
    Expired,
    NotYetValid,
    ExpiringSoon,
    KeyMismatch,
    ChainIncomplete,
    ChainOutOfOrder,
    /// Informational: the chain was re-ordered (or surplus certificates dropped) on import.
    ChainReordered,
    NameNotInSans,
    WeakKey,
    WeakSignature,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CertWarning {
    pub code: CertWarningCode,
    pub message: String,
}

/// One certificate of the store as listed (never carries key material).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CertificateEntry {
    pub id: String,
    pub label: String,
    pub state: CertState,
    /// The built-in self-signed certificate (cannot be deleted).
    pub builtin: bool,
    /// Empty while pending.
    pub subject: String,
    /// `DNS:name` / `IP:address` entries (the requested ones while pending).
    pub sans: Vec<String>,
    pub issuer: String,
    pub not_before: String,
    pub not_after: String,
    /// e.g. `ECDSA P-256`, `RSA 2048`.
    pub key_type: String,
    /// SHA-256 of the leaf certificate (DER), 64 lowercase hex digits; empty while pending.
    pub sha256_fingerprint: String,
    pub self_signed: bool,
    /// Certificates in the stored chain, leaf included.
    pub chain_length: usize,
    /// Where it is served: `default`, `ip:<address>`, `host:<name>`.
    pub assigned: Vec<String>,
    pub warnings: Vec<CertWarning>,
}

/// Which certificate is served where.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CertAssignments {
    /// Served where nothing more specific applies; `None`: the built-in one.
    pub default: Option<String>,
    /// By the local address a client connected to.
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, String>))]
    pub ips: BTreeMap<IpAddr, String>,
    /// By the name a client asked for (SNI), lowercase.
    pub hostnames: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CertList {
    pub certificates: Vec<CertificateEntry>,
    pub assignments: CertAssignments,
}

/// One uploaded file: PEM (certificate, key, chain), DER certificate or PKCS#12.
#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CertFile {
    #[serde(default)]
    pub name: String,
    /// File content, standard base64.
    pub data_base64: String,
}

impl std::fmt::Debug for CertFile {
    // May hold a private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertFile")
            .field("name", &self.name)
            .field(
                "data_base64",
                &format_args!("<{} chars>", self.data_base64.len()),
            )
            .finish()
    }
}

/// `POST /certs/import`, and `POST /certs/{id}/answer` (the CA's answer to a CSR).
#[derive(Clone, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CertImportRequest {
    #[serde(default)]
    pub label: String,
    pub files: Vec<CertFile>,
    /// For an encrypted PKCS#8 key or a PKCS#12 file.
    #[serde(default)]
    pub passphrase: Option<String>,
}

impl std::fmt::Debug for CertImportRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertImportRequest")
            .field("label", &self.label)
            .field("files", &self.files)
            .field(
                "passphrase",
                &self.passphrase.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// `POST /certs/self-signed` and `POST /certs/csr`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewCertRequest {
    #[serde(default)]
    pub label: String,
    /// Defaults to the first SAN.
    #[serde(default)]
    pub common_name: String,
    /// Host names and IP addresses, e.g. `["keel.example.com", "192.0.2.7"]`.
    pub sans: Vec<String>,
    #[serde(default)]
    pub key_type: KeyType,
    /// Validity of a self-signed certificate (ignored for a CSR); default 825.
    #[serde(default)]
    pub days: Option<u32>,
    /// Organization (O=) of the subject, optional.
    #[serde(default)]
    pub organization: String,
}

/// Answer of `POST /certs/csr`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CsrCreated {
    pub certificate: CertificateEntry,
    pub csr_pem: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    #[default]
    Pem,
    Pkcs12,
}

/// `POST /certs/{id}/export`; the answer is the file itself.
#[derive(Clone, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CertExportRequest {
    #[serde(default)]
    pub format: ExportFormat,
    #[serde(default)]
    pub include_key: bool,
    /// Intermediates too (default true).
    #[serde(default = "yes")]
    pub include_chain: bool,
    /// Encrypts the key (required with `include_key`, and for PKCS#12).
    #[serde(default)]
    pub passphrase: Option<String>,
}

fn yes() -> bool {
    true
}

impl std::fmt::Debug for CertExportRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertExportRequest")
            .field("format", &self.format)
            .field("include_key", &self.include_key)
            .field("include_chain", &self.include_chain)
            .field(
                "passphrase",
                &self.passphrase.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Targets of `POST /certs/{id}/assign`, `/certs/{id}/check` and `/certs/unassign`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CertTargets {
    /// Serve it (or, for unassign, stop serving a chosen one) as the default.
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub ips: Vec<IpAddr>,
    #[serde(default)]
    pub hostnames: Vec<String>,
}

/// Answer of `POST /certs/{id}/check`: what assigning would warn about.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CertCheck {
    pub warnings: Vec<CertWarning>,
}

/// `POST /certs/{id}/delete`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CertDeleteRequest {
    /// Required when the certificate is assigned: what takes over its places
    /// (another id, or `builtin`).
    #[serde(default)]
    pub replacement: Option<String>,
}

/// Answer of the local API's export (keelctl): the file, base64-encoded.
#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CertExportFile {
    pub file_name: String,
    pub content_type: String,
    pub data_base64: String,
}

impl std::fmt::Debug for CertExportFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertExportFile")
            .field("file_name", &self.file_name)
            .field("content_type", &self.content_type)
            .finish_non_exhaustive()
    }
}
