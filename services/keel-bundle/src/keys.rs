//! Ed25519 keys and their one-line files, and the set of trusted update keys.
//!
//! Public key file: `keel-update-key v1 ed25519 <base64 of the 32-byte key>`.
//! Secret key file (0600): `keel-update-secret v1 ed25519 <base64 of the 32-byte seed>`.
//! Appliance identity keys (download keys) say `keel-identity-key` /
//! `keel-identity-secret` instead, so neither kind can be mistaken for the other.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::Error;

/// Key files are one line; anything bigger is not one.
const MAX_KEY_FILE: u64 = 4096;

/// What a key is for; the label in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPurpose {
    /// Signs bundles and feeds (vendor); trusted by appliances.
    Update,
    /// An appliance's own identity (signs its download keys).
    Identity,
}

impl KeyPurpose {
    fn public_label(self) -> &'static str {
        match self {
            KeyPurpose::Update => "keel-update-key",
            KeyPurpose::Identity => "keel-identity-key",
        }
    }
    fn secret_label(self) -> &'static str {
        match self {
            KeyPurpose::Update => "keel-update-secret",
            KeyPurpose::Identity => "keel-identity-secret",
        }
    }
}

/// First 8 bytes of SHA-256 over the 32-byte public key; names the key in
/// bundles so the verifier picks the right trusted key without trying all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl FromStr for KeyId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let mut id = [0u8; 8];
        // Lowercase only: one spelling (the manifest is compared byte for byte).
        if s.len() != 16 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(Error::Invalid(format!(
                "key id {s:?} is not 16 lowercase hex digits"
            )));
        }
        hex::decode_to_slice(s, &mut id)
            .map_err(|_| Error::Invalid(format!("key id {s:?} is not hex")))?;
        Ok(KeyId(id))
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An Ed25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Refuses bytes that are not a point of the curve, and weak (small-order) keys,
    /// for which signatures prove nothing.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, Error> {
        let key = VerifyingKey::from_bytes(bytes)
            .map_err(|_| Error::Invalid("not an Ed25519 public key".into()))?;
        if key.is_weak() {
            return Err(Error::Invalid("weak Ed25519 public key".into()));
        }
        Ok(PublicKey(key))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn id(&self) -> KeyId {
        let digest = Sha256::digest(self.0.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        KeyId(id)
    }

    /// Strict verification (canonical signature encoding, no small-order R): a
    /// signature has exactly one accepted form.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> Result<(), Error> {
        let sig = ed25519_dalek::Signature::from_bytes(signature);
        self.0
            .verify_strict(message, &sig)
            .map_err(|_| Error::SignatureInvalid)
    }

    /// The key file's line (with a newline).
    pub fn to_text(&self, purpose: KeyPurpose) -> String {
        format!(
            "{} v1 ed25519 {}\n",
            purpose.public_label(),
            B64.encode(self.0.as_bytes())
        )
    }

    pub fn from_text(text: &str, purpose: KeyPurpose) -> Result<Self, Error> {
        let bytes = parse_line(text, purpose.public_label())?;
        PublicKey::from_bytes(&bytes)
    }

    pub fn load(path: &Path, purpose: KeyPurpose) -> Result<Self, Error> {
        let text = read_small(path)?;
        PublicKey::from_text(&text, purpose).map_err(|e| key_file_err(path, e))
    }
}

/// An Ed25519 signing key (the seed is zeroed on drop by ed25519-dalek).
pub struct SecretKey(SigningKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.public().id())
    }
}

impl SecretKey {
    pub fn generate() -> Self {
        SecretKey(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    pub fn from_seed(seed: &[u8; 32]) -> Self {
        SecretKey(SigningKey::from_bytes(seed))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    pub fn to_text(&self, purpose: KeyPurpose) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{} v1 ed25519 {}\n",
            purpose.secret_label(),
            B64.encode(self.0.to_bytes())
        ))
    }

    pub fn from_text(text: &str, purpose: KeyPurpose) -> Result<Self, Error> {
        let seed = Zeroizing::new(parse_line(text, purpose.secret_label())?);
        Ok(SecretKey::from_seed(&seed))
    }

    /// Refuses a secret key file that group or others may read, as ssh does: a
    /// leaked signing key can sign updates for every appliance.
    pub fn load(path: &Path, purpose: KeyPurpose) -> Result<Self, Error> {
        let meta = fs::metadata(path).map_err(|source| Error::File {
            path: path.into(),
            source,
        })?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(Error::KeyFile {
                path: path.into(),
                reason: format!(
                    "secret key is accessible by others (mode {:o}); chmod 600 it",
                    meta.permissions().mode() & 0o777
                ),
            });
        }
        let text = Zeroizing::new(read_small(path)?);
        SecretKey::from_text(&text, purpose).map_err(|e| key_file_err(path, e))
    }
}

fn key_file_err(path: &Path, e: Error) -> Error {
    Error::KeyFile {
        path: path.into(),
        reason: e.to_string(),
    }
}

fn read_small(path: &Path) -> Result<String, Error> {
    let file_err = |source| Error::File {
        path: path.into(),
        source,
    };
    let file = fs::File::open(path).map_err(file_err)?;
    let mut text = String::new();
    file.take(MAX_KEY_FILE + 1)
        .read_to_string(&mut text)
        .map_err(file_err)?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(Error::KeyFile {
            path: path.into(),
            reason: "too large for a key file".into(),
        });
    }
    Ok(text)
}

/// `<label> v1 ed25519 <base64>` with an optional final newline → the 32 bytes.
fn parse_line(text: &str, label: &str) -> Result<[u8; 32], Error> {
    let line = text.strip_suffix('\n').unwrap_or(text);
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        [l, "v1", "ed25519", b64] if *l == label => {
            let bytes = B64
                .decode(b64)
                .map_err(|_| Error::Invalid("key is not valid base64".into()))?;
            bytes
                .try_into()
                .map_err(|_| Error::Invalid("key is not 32 bytes".into()))
        }
        [l, ..] if *l != label => Err(Error::Invalid(format!(
            "not a {label} file (starts with {:?})",
            l.chars().take(40).collect::<String>()
        ))),
        _ => Err(Error::Invalid(format!(
            "expected one line \"{label} v1 ed25519 <base64>\""
        ))),
    }
}

/// The public keys an appliance accepts updates from (more than one during a key
/// rotation). Empty means nothing verifies: there is no "unsigned" mode.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<KeyId, PublicKey>,
}

impl TrustedKeys {
    pub fn new() -> Self {
        TrustedKeys::default()
    }

    pub fn add(&mut self, key: PublicKey) {
        self.keys.insert(key.id(), key);
    }

    pub fn with(mut self, key: PublicKey) -> Self {
        self.add(key);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn get(&self, id: &KeyId) -> Option<&PublicKey> {
        self.keys.get(id)
    }

    pub fn ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.keys()
    }

    /// Every `*.pub` file of `dir` (e.g. `/usr/share/keel/update-keys/`); other
    /// names are ignored (a README). A malformed `.pub` file is an error rather
    /// than skipped: the directory is part of the image, a bad file is a build bug.
    pub fn load_dir(dir: &Path) -> Result<Self, Error> {
        let dir_err = |source| Error::File {
            path: dir.into(),
            source,
        };
        let mut trusted = TrustedKeys::new();
        let mut paths = Vec::new();
        for entry in fs::read_dir(dir).map_err(dir_err)? {
            let path = entry.map_err(dir_err)?.path();
            if path.extension().is_some_and(|e| e == "pub") {
                paths.push(path);
            }
        }
        paths.sort();
        for path in paths {
            trusted.add(PublicKey::load(&path, KeyPurpose::Update)?);
        }
        Ok(trusted)
    }
}
