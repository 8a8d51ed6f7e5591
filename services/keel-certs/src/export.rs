//! Export as PEM or PKCS#12. A private key only ever leaves encrypted with a
//! passphrase the admin chose.

use keel_api::ExportFormat;
use rustls::pki_types::CertificateDer;

use crate::material::{chain_to_pem, PrivateKey};
use crate::CertError;

/// Shortest passphrase accepted to encrypt an exported key.
pub const MIN_PASSPHRASE: usize = 8;

/// An exported file.
pub struct Exported {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    pub file_name: String,
}

impl std::fmt::Debug for Exported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exported")
            .field("bytes", &self.bytes.len())
            .field("file_name", &self.file_name)
            .finish()
    }
}

pub struct ExportOptions<'a> {
    pub format: ExportFormat,
    pub include_key: bool,
    pub include_chain: bool,
    pub passphrase: Option<&'a str>,
    /// File name without extension.
    pub base_name: &'a str,
}

fn checked_passphrase<'a>(p: Option<&'a str>, why: &str) -> Result<&'a str, CertError> {
    let p = p
        .filter(|p| !p.is_empty())
        .ok_or_else(|| CertError::PassphraseRequired(why.to_owned()))?;
    if p.chars().count() < MIN_PASSPHRASE {
        return Err(CertError::Invalid(format!(
            "the passphrase must have at least {MIN_PASSPHRASE} characters"
        )));
    }
    Ok(p)
}

pub fn export(
    chain: &[CertificateDer<'_>],
    key: Option<&PrivateKey>,
    opts: &ExportOptions<'_>,
) -> Result<Exported, CertError> {
    let chain = if opts.include_chain {
        chain
    } else {
        &chain[..1.min(chain.len())]
    };
    if chain.is_empty() {
        return Err(CertError::NoCertificate);
    }
    let key = if opts.include_key {
        Some(key.ok_or(CertError::NoKey)?)
    } else {
        None
    };
    let base = sanitize(opts.base_name);
    match opts.format {
        ExportFormat::Pem => {
            let mut text = chain_to_pem(chain);
            if let Some(key) = key {
                let pass = checked_passphrase(
                    opts.passphrase,
                    "exporting a private key needs a passphrase to encrypt it with",
                )?;
                text.push_str(&key.to_encrypted_pem(pass)?);
            }
            Ok(Exported {
                bytes: text.into_bytes(),
                content_type: "application/x-pem-file",
                file_name: format!("{base}.pem"),
            })
        }
        ExportFormat::Pkcs12 => {
            let pass = checked_passphrase(
                opts.passphrase,
                "a PKCS#12 file is always protected by a passphrase",
            )?;
            let bytes = pkcs12(chain, key, pass, &base)?;
            Ok(Exported {
                bytes,
                content_type: "application/x-pkcs12",
                file_name: format!("{base}.p12"),
            })
        }
    }
}

fn pkcs12(
    chain: &[CertificateDer<'_>],
    key: Option<&PrivateKey>,
    passphrase: &str,
    alias: &str,
) -> Result<Vec<u8>, CertError> {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKeyChain};
    let err = |e: p12_keystore::error::Error| CertError::Key(format!("PKCS#12: {e}"));
    let certs: Vec<Certificate> = chain
        .iter()
        .map(|c| Certificate::from_der(c).map_err(err))
        .collect::<Result<_, _>>()?;
    let mut store = KeyStore::new();
    match key {
        Some(key) => {
            let pkey = p12_keystore::PrivateKey::from_der(key.pkcs8_der()).map_err(err)?;
            // The local key id ties key and certificate together for readers.
            let id =
                ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, chain[0].as_ref());
            store.add_entry(
                alias,
                KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(
                    id.as_ref().to_vec(),
                    pkey,
                    certs,
                )),
            );
        }
        None => {
            for (i, c) in certs.into_iter().enumerate() {
                store.add_entry(&format!("{alias}-{i}"), KeyStoreEntry::Certificate(c));
            }
        }
    }
    store.writer(passphrase).write().map_err(err)
}

/// A file name from a label: letters, digits, `-`, `_` and `.` only.
fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(60)
        .collect();
    let s = s.trim_matches(|c| c == '.' || c == '_').to_owned();
    if s.is_empty() {
        "certificate".into()
    } else {
        s
    }
}
