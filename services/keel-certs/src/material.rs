//! Reading what an admin uploads — PEM (certificates, keys, chains, encrypted
//! PKCS#8), DER certificates, PKCS#12 — into certificates and PKCS#8 keys, then
//! matching the key to its certificate and putting the chain in order.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::SigningKey;
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use crate::{pem, CertError};

/// Largest file accepted for import (a chain of a dozen RSA-4096 certificates
/// is far below this; anything bigger is not what we are looking for).
pub const MAX_FILE_BYTES: usize = 256 * 1024;
/// At most this many files in one import.
pub const MAX_FILES: usize = 8;
/// At most this many certificates in one import.
pub const MAX_CERTS: usize = 16;

/// A private key, always held as unencrypted PKCS#8 DER. Never printed.
#[derive(Clone)]
pub struct PrivateKey {
    der: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl PrivateKey {
    /// Takes PKCS#8 DER and checks that rustls (ring) can sign with it.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, CertError> {
        let key = Self {
            der: Zeroizing::new(der.to_vec()),
        };
        key.signing_key()?;
        Ok(key)
    }

    /// Reads the first private key of a PEM text (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(text: &str) -> Result<Self, CertError> {
        let sections = pem::parse(text.as_bytes(), "key")?;
        for s in &sections {
            if let Some(der) = unencrypted_key_to_pkcs8(&s.label, &s.der)? {
                return Self::from_pkcs8_der(&der);
            }
        }
        Err(CertError::NoKey)
    }

    pub fn pkcs8_der(&self) -> &[u8] {
        &self.der
    }

    /// Unencrypted PKCS#8 PEM (what the store keeps on disk, mode 0600).
    pub fn to_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(pem::encode("PRIVATE KEY", &self.der))
    }

    pub fn signing_key(&self) -> Result<Arc<dyn SigningKey>, CertError> {
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.der.to_vec()));
        rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| {
            CertError::Key(format!(
                "{e} (supported: RSA 2048–8192 bits, ECDSA P-256/P-384, Ed25519)"
            ))
        })
    }

    /// The key's SubjectPublicKeyInfo (DER), to compare with a certificate's.
    pub fn public_key_spki(&self) -> Result<Vec<u8>, CertError> {
        let signing = self.signing_key()?;
        signing
            .public_key()
            .map(|spki| spki.as_ref().to_vec())
            .ok_or_else(|| CertError::Key("cannot derive the public key".into()))
    }

    /// Does this key belong to the certificate `cert_der`?
    pub fn matches(&self, cert_der: &[u8]) -> Result<bool, CertError> {
        let spki = self.public_key_spki()?;
        let (_, cert) = parse_cert(cert_der)?;
        Ok(same_public_key(&spki, cert.public_key().raw))
    }

    /// Encrypted PKCS#8 PEM (PBES2: PBKDF2-HMAC-SHA256 + AES-256-CBC, which
    /// OpenSSL, Java and Windows all read).
    pub fn to_encrypted_pem(&self, passphrase: &str) -> Result<String, CertError> {
        use ring::rand::SecureRandom;
        let rng = ring::rand::SystemRandom::new();
        let mut salt = [0u8; 16];
        let mut iv = [0u8; 16];
        rng.fill(&mut salt)
            .and_then(|_| rng.fill(&mut iv))
            .map_err(|_| CertError::Key("no randomness".into()))?;
        let params = pkcs8::pkcs5::pbes2::Parameters::generate_pbkdf2_sha256_aes256cbc(
            PBKDF2_ROUNDS,
            &salt,
            iv,
        )
        .map_err(|e| CertError::Key(e.to_string()))?;
        let info = pkcs8::PrivateKeyInfoRef::try_from(self.der.as_slice())
            .map_err(|e| CertError::Key(e.to_string()))?;
        let doc = info
            .encrypt_with_params(params, passphrase.as_bytes())
            .map_err(|e| CertError::Key(e.to_string()))?;
        Ok(pem::encode("ENCRYPTED PRIVATE KEY", doc.as_bytes()))
    }
}

/// PBKDF2 rounds for exported keys: slows guessing, still instant to import.
pub const PBKDF2_ROUNDS: u32 = 100_000;

/// Compares two SubjectPublicKeyInfos by algorithm and key bits (encodings of
/// the algorithm parameters differ between tools).
pub(crate) fn same_public_key(a: &[u8], b: &[u8]) -> bool {
    use x509_parser::x509::SubjectPublicKeyInfo;
    match (
        SubjectPublicKeyInfo::from_der(a),
        SubjectPublicKeyInfo::from_der(b),
    ) {
        (Ok((_, a)), Ok((_, b))) => {
            a.algorithm.algorithm == b.algorithm.algorithm
                && a.subject_public_key.data == b.subject_public_key.data
        }
        _ => false,
    }
}

pub(crate) fn parse_cert(der: &[u8]) -> Result<(&[u8], X509Certificate<'_>), CertError> {
    X509Certificate::from_der(der).map_err(|e| CertError::X509(e.to_string()))
}

/// What one or more uploaded files contain.
#[derive(Default)]
pub struct Material {
    /// DER certificates in the order they were found, duplicates removed.
    pub certs: Vec<CertificateDer<'static>>,
    pub keys: Vec<PrivateKey>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("certs", &self.certs.len())
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// One file as uploaded.
pub struct Input<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
}

/// Reads every file; nothing is stored here. A passphrase is used for encrypted
/// PKCS#8 keys and PKCS#12 files.
pub fn read_inputs(inputs: &[Input<'_>], passphrase: Option<&str>) -> Result<Material, CertError> {
    if inputs.is_empty() {
        return Err(CertError::Invalid("no file given".into()));
    }
    if inputs.len() > MAX_FILES {
        return Err(CertError::Invalid(format!(
            "too many files ({}; at most {MAX_FILES})",
            inputs.len()
        )));
    }
    let mut m = Material::default();
    for input in inputs {
        read_one(input, passphrase, &mut m)?;
    }
    if m.certs.len() > MAX_CERTS {
        return Err(CertError::Invalid(format!(
            "too many certificates ({}; at most {MAX_CERTS})",
            m.certs.len()
        )));
    }
    // The same key may come twice (say, in a .p12 and a .key file).
    let mut keys: Vec<PrivateKey> = Vec::new();
    for k in m.keys.drain(..) {
        if !keys.iter().any(|o| o.der == k.der) {
            keys.push(k);
        }
    }
    m.keys = keys;
    Ok(m)
}

fn file_name(input: &Input<'_>) -> String {
    if input.name.is_empty() {
        "file".into()
    } else {
        input.name.chars().take(80).collect()
    }
}

fn push_cert(m: &mut Material, der: &[u8], file: &str) -> Result<(), CertError> {
    let (rest, _) = X509Certificate::from_der(der).map_err(|e| {
        CertError::Malformed(format!(
            "{file}: a certificate is damaged or truncated ({e})"
        ))
    })?;
    if !rest.is_empty() {
        return Err(CertError::Malformed(format!(
            "{file}: a certificate has trailing bytes"
        )));
    }
    if !m.certs.iter().any(|c| c.as_ref() == der) {
        m.certs.push(CertificateDer::from(der.to_vec()));
    }
    Ok(())
}

fn read_one(
    input: &Input<'_>,
    passphrase: Option<&str>,
    m: &mut Material,
) -> Result<(), CertError> {
    let file = file_name(input);
    if input.data.len() > MAX_FILE_BYTES {
        return Err(CertError::TooLarge {
            what: file,
            limit: MAX_FILE_BYTES,
        });
    }
    if input.data.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(CertError::Malformed(format!("{file}: the file is empty")));
    }
    if pem::looks_like_pem(input.data) {
        return read_pem(input.data, &file, passphrase, m);
    }
    if input.data[0] != 0x30 {
        return Err(CertError::Malformed(format!(
            "{file}: not a certificate, key or PKCS#12 file (expected PEM text or DER)"
        )));
    }
    if let Some(declared) = der_total_len(input.data) {
        if declared > input.data.len() {
            return Err(CertError::Malformed(format!(
                "{file}: the file is truncated ({} of {declared} bytes)",
                input.data.len()
            )));
        }
    }
    // DER: a certificate, else PKCS#12.
    if let Ok((rest, _)) = X509Certificate::from_der(input.data) {
        if rest.is_empty() {
            return push_cert(m, input.data, &file);
        }
    }
    read_pkcs12(input.data, &file, passphrase, m)
}

/// Total length (header included) that a DER value at the start of `data` declares.
fn der_total_len(data: &[u8]) -> Option<usize> {
    let first = *data.get(1)?;
    if first < 0x80 {
        return Some(2 + first as usize);
    }
    let n = (first & 0x7f) as usize;
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for i in 0..n {
        len = (len << 8) | *data.get(2 + i)? as usize;
    }
    Some(2 + n + len)
}

fn read_pem(
    data: &[u8],
    file: &str,
    passphrase: Option<&str>,
    m: &mut Material,
) -> Result<(), CertError> {
    let sections = pem::parse(data, file)?;
    for s in sections {
        match s.label.as_str() {
            "CERTIFICATE" | "X509 CERTIFICATE" => push_cert(m, &s.der, file)?,
            "TRUSTED CERTIFICATE" => {
                return Err(CertError::Unsupported(format!(
                "{file}: OpenSSL \"TRUSTED CERTIFICATE\" format; export it as a plain certificate"
            )))
            }
            "ENCRYPTED PRIVATE KEY" => {
                let pass = passphrase.filter(|p| !p.is_empty()).ok_or_else(|| {
                    CertError::PassphraseRequired(format!("{file} holds an encrypted private key"))
                })?;
                let info =
                    pkcs8::EncryptedPrivateKeyInfoRef::try_from(&s.der[..]).map_err(|e| {
                        CertError::Malformed(format!(
                            "{file}: encrypted private key is damaged ({e})"
                        ))
                    })?;
                let plain = info.decrypt(pass.as_bytes()).map_err(|e| match e {
                    pkcs8::Error::EncryptedPrivateKey(pkcs8::pkcs5::Error::AlgorithmParametersInvalid { .. })
                    | pkcs8::Error::EncryptedPrivateKey(pkcs8::pkcs5::Error::UnsupportedAlgorithm { .. }) => {
                        CertError::Unsupported(format!(
                            "{file}: the key's encryption scheme is not supported ({e}); re-encrypt it with \
                             `openssl pkcs8 -topk8 -v2 aes-256-cbc`"
                        ))
                    }
                    _ => CertError::WrongPassphrase,
                })?;
                m.keys.push(
                    PrivateKey::from_pkcs8_der(plain.as_bytes()).map_err(|e| match e {
                        // Decrypted to garbage: almost always a wrong passphrase.
                        CertError::Key(_) => CertError::WrongPassphrase,
                        e => e,
                    })?,
                );
            }
            label if s.legacy_encrypted && label.ends_with("PRIVATE KEY") => {
                return Err(CertError::Unsupported(format!(
                    "{file}: the key uses OpenSSL's legacy encryption; convert it with \
                     `openssl pkcs8 -topk8 -v2 aes-256-cbc -in OLD.key -out NEW.key`"
                )))
            }
            label => {
                if let Some(der) = unencrypted_key_to_pkcs8(label, &s.der)? {
                    m.keys
                        .push(PrivateKey::from_pkcs8_der(&der).map_err(|e| match e {
                            CertError::Key(msg) => CertError::Key(format!("{file}: {msg}")),
                            e => e,
                        })?);
                }
                // Anything else (EC PARAMETERS, CERTIFICATE REQUEST, ...) is ignored.
            }
        }
    }
    Ok(())
}

const OID_RSA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// PKCS#8 PrivateKeyInfo around a key of `alg_id` (an AlgorithmIdentifier's content).
fn wrap_pkcs8(alg_id_content: &[u8], key: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend(der_tlv(0x30, alg_id_content));
    body.extend(Zeroizing::new(der_tlv(0x04, key)).iter());
    let out = Zeroizing::new(der_tlv(0x30, &body));
    drop(Zeroizing::new(body));
    out
}

/// PKCS#8 DER of an unencrypted key section, `None` if the label is no key.
fn unencrypted_key_to_pkcs8(
    label: &str,
    der: &[u8],
) -> Result<Option<Zeroizing<Vec<u8>>>, CertError> {
    Ok(match label {
        "PRIVATE KEY" => Some(Zeroizing::new(der.to_vec())),
        "RSA PRIVATE KEY" => {
            let mut alg = OID_RSA.to_vec();
            alg.extend([0x05, 0x00]);
            Some(wrap_pkcs8(&alg, der))
        }
        "EC PRIVATE KEY" => {
            // The curve sits in the key's [0] parameters; P-256 and P-384 are
            // the ones ring signs with.
            let curve = if contains(der, OID_P256) {
                OID_P256
            } else if contains(der, OID_P384) {
                OID_P384
            } else {
                return Err(CertError::Unsupported(
                    "EC key on a curve other than P-256/P-384 (or without a named curve)".into(),
                ));
            };
            let mut alg = OID_EC_PUBLIC_KEY.to_vec();
            alg.extend_from_slice(curve);
            Some(wrap_pkcs8(&alg, der))
        }
        _ => None,
    })
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn read_pkcs12(
    data: &[u8],
    file: &str,
    passphrase: Option<&str>,
    m: &mut Material,
) -> Result<(), CertError> {
    use p12_keystore::error::Error as P12;
    // A .p12 without a password still has one: the empty one.
    let archive = p12_keystore::Pkcs12Archive::from_pkcs12(data, passphrase.unwrap_or(""))
        .map_err(|e| match e {
            P12::MacError(_) | P12::UnpadError | P12::Pkcs5Error(_) => {
                if passphrase.is_none_or(str::is_empty) {
                    CertError::PassphraseRequired(format!("{file} is a PKCS#12 file"))
                } else {
                    CertError::WrongPassphrase
                }
            }
            P12::DerError(_) | P12::InvalidVersion | P12::InvalidData | P12::InvalidLength => {
                CertError::Malformed(format!(
                    "{file}: not a certificate, key or PKCS#12 file, or it is damaged ({e})"
                ))
            }
            e => CertError::Unsupported(format!("{file}: PKCS#12 not supported: {e}")),
        })?;
    for c in &archive.certs {
        push_cert(m, c.cert.as_der(), file)?;
    }
    for k in &archive.keys {
        m.keys.push(PrivateKey::from_pkcs8_der(k.key.as_der())?);
    }
    Ok(())
}

/// A certificate with its key and ordered chain, ready to store.
pub struct Bundle {
    /// Leaf first, then each issuer.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKey,
    /// The input was not in leaf→root order.
    pub reordered: bool,
    /// Certificates that belong to no link of the chain (left out).
    pub dropped: usize,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("chain", &self.chain.len())
            .field("key", &self.key)
            .field("reordered", &self.reordered)
            .field("dropped", &self.dropped)
            .finish()
    }
}

impl Bundle {
    /// Chooses, among `certs`, the one `key` belongs to and builds its chain.
    pub fn assemble(certs: &[CertificateDer<'static>], key: PrivateKey) -> Result<Self, CertError> {
        if certs.is_empty() {
            return Err(CertError::NoCertificate);
        }
        let spki = key.public_key_spki()?;
        let mut leaf = None;
        for (i, c) in certs.iter().enumerate() {
            let (_, parsed) = parse_cert(c)?;
            if same_public_key(&spki, parsed.public_key().raw) {
                leaf = Some(i);
                break;
            }
        }
        let leaf = leaf.ok_or_else(|| {
            CertError::KeyMismatch(
                "the private key does not belong to the certificate (nor to any certificate given)"
                    .into(),
            )
        })?;
        let (order, dropped) = order_chain(certs, leaf)?;
        let reordered = {
            let mut sorted = order.clone();
            sorted.sort_unstable();
            sorted != order
        };
        Ok(Self {
            chain: order.iter().map(|&i| certs[i].clone()).collect(),
            key,
            reordered,
            dropped,
        })
    }

    pub fn chain_pem(&self) -> String {
        chain_to_pem(&self.chain)
    }
}

pub fn chain_to_pem(chain: &[CertificateDer<'_>]) -> String {
    chain
        .iter()
        .map(|c| pem::encode("CERTIFICATE", c))
        .collect()
}

/// Indexes of the chain starting at `leaf` (following issuer names and key
/// identifiers), and how many certificates were left out.
pub(crate) fn order_chain(
    certs: &[CertificateDer<'_>],
    leaf: usize,
) -> Result<(Vec<usize>, usize), CertError> {
    let parsed: Vec<X509Certificate<'_>> = certs
        .iter()
        .map(|c| parse_cert(c).map(|(_, p)| p))
        .collect::<Result<_, _>>()?;
    let mut order = vec![leaf];
    loop {
        let cur = &parsed[*order.last().expect("not empty")];
        if is_self_issued(cur) {
            break;
        }
        let next = (0..parsed.len()).find(|j| !order.contains(j) && issued_by(cur, &parsed[*j]));
        match next {
            Some(j) => order.push(j),
            None => break,
        }
    }
    let dropped = certs.len() - order.len();
    Ok((order, dropped))
}

pub(crate) fn is_self_issued(c: &X509Certificate<'_>) -> bool {
    c.subject().as_raw() == c.issuer().as_raw()
}

/// Was `child` issued by `parent`? Names must match; where both carry key
/// identifiers, those must match too (a re-keyed CA keeps its name).
pub(crate) fn issued_by(child: &X509Certificate<'_>, parent: &X509Certificate<'_>) -> bool {
    use x509_parser::extensions::ParsedExtension;
    if child.issuer().as_raw() != parent.subject().as_raw() {
        return false;
    }
    let aki = child
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0),
            _ => None,
        });
    let ski = parent
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0),
            _ => None,
        });
    match (aki, ski) {
        (Some(a), Some(s)) => a == s,
        _ => true,
    }
}
