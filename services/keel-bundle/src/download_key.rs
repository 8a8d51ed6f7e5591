//! Download keys: how an offline appliance tells the vendor what it runs. The
//! appliance signs a short-lived block with its own identity key; the vendor
//! checks the self-signature and expiry and answers with the bundles to fetch.
//!
//! Inside the armor (base64, 64 characters a line):
//!
//! ```text
//! "KEELDLKY" | format u16 BE | identity public key[32] | body length u32 BE (≤ 16 KiB)
//!   | body (JSON) | sig length u16 BE (64) | sig[64]
//! ```
//!
//! signed over `"keel-download-key v1\0" || public key || body`.

use std::io::Cursor;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::framing::{at_eof, read_part};
use crate::keys::{PublicKey, SecretKey};
use crate::policy::{check_validity, Installed};
use crate::timestamp::Timestamp;
use crate::{Error, DEFAULT_SKEW, FORMAT_VERSION};

const MAGIC: &[u8; 8] = b"KEELDLKY";
const CONTEXT: &[u8] = b"keel-download-key v1\0";
const MAX_BODY: u32 = 16 * 1024;
/// Armored text larger than this is not a download key.
const MAX_TEXT: usize = 64 * 1024;
const BEGIN: &str = "-----BEGIN KEEL DOWNLOAD KEY-----";
const END: &str = "-----END KEEL DOWNLOAD KEY-----";

/// How long a download key is valid: long enough to carry it to a connected
/// machine and paste it, short enough that an old one is useless.
pub const DOWNLOAD_KEY_LIFETIME: time::Duration = time::Duration::minutes(25);

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    format: u16,
    appliance_id: String,
    /// Base64, the same key as in the framing (so the JSON alone says who).
    public_key: String,
    installed: Installed,
    created: Timestamp,
    expires: Timestamp,
}

/// A verified download key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadKey {
    pub appliance_id: String,
    /// The appliance's identity key, which signed the block.
    pub public_key: PublicKey,
    pub installed: Installed,
    pub created: Timestamp,
    pub expires: Timestamp,
}

fn check_appliance_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    if ok {
        Ok(())
    } else {
        Err(Error::Armor(
            "appliance id must be 1-128 of letters, digits, '.', '-', '_', ':'".into(),
        ))
    }
}

fn message(public: &[u8; 32], body: &[u8]) -> Vec<u8> {
    [CONTEXT, public.as_slice(), body].concat()
}

/// The armored block an appliance shows (valid for [`DOWNLOAD_KEY_LIFETIME`]).
pub fn make_download_key(
    identity: &SecretKey,
    appliance_id: &str,
    installed: &Installed,
    now: Timestamp,
) -> Result<String, Error> {
    check_appliance_id(appliance_id)?;
    installed.validate()?;
    let public = identity.public().to_bytes();
    let body = Body {
        format: FORMAT_VERSION,
        appliance_id: appliance_id.into(),
        public_key: B64.encode(public),
        installed: installed.clone(),
        created: now,
        expires: now.plus(DOWNLOAD_KEY_LIFETIME),
    };
    let body = serde_json::to_vec(&body).map_err(|e| Error::Armor(e.to_string()))?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&l| l <= MAX_BODY)
        .ok_or_else(|| Error::Armor("too many installed components".into()))?;
    let sig = identity.sign(&message(&public, &body));
    let mut raw = Vec::with_capacity(body.len() + 120);
    raw.extend_from_slice(MAGIC);
    raw.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    raw.extend_from_slice(&public);
    raw.extend_from_slice(&len.to_be_bytes());
    raw.extend_from_slice(&body);
    raw.extend_from_slice(&64u16.to_be_bytes());
    raw.extend_from_slice(&sig);

    let b64 = B64.encode(&raw);
    let mut text = String::with_capacity(b64.len() + 100);
    text.push_str(BEGIN);
    text.push('\n');
    // ASCII base64: every 64-byte chunk is valid UTF-8.
    for line in b64.as_bytes().chunks(64) {
        text.push_str(&String::from_utf8_lossy(line));
        text.push('\n');
    }
    text.push_str(END);
    text.push('\n');
    Ok(text)
}

/// The bytes between the markers. Text around the block (an e-mail) is ignored.
fn unarmor(text: &str) -> Result<Vec<u8>, Error> {
    if text.len() > MAX_TEXT {
        return Err(Error::Armor("text too large".into()));
    }
    let mut lines = text.lines().map(str::trim);
    if !lines.any(|l| l == BEGIN) {
        return Err(Error::Armor(format!("no \"{BEGIN}\" line")));
    }
    let mut b64 = String::new();
    let mut ended = false;
    for l in lines {
        if l == END {
            ended = true;
            break;
        }
        b64.push_str(l);
    }
    if !ended {
        return Err(Error::Armor(format!("no \"{END}\" line (cut off?)")));
    }
    B64.decode(b64.as_bytes())
        .map_err(|_| Error::Armor("not valid base64 (damaged in transit?)".into()))
}

/// Verifies the self-signature, expiry (against the vendor's `now`) and, if
/// given, that the block comes from the `expected` identity key.
pub fn verify_download_key(
    text: &str,
    now: Timestamp,
    expected: Option<&PublicKey>,
) -> Result<DownloadKey, Error> {
    let raw = unarmor(text)?;
    let mut r = Cursor::new(raw.as_slice());
    let mut magic = [0u8; 8];
    read_part(&mut r, &mut magic, "header")?;
    if &magic != MAGIC {
        return Err(Error::BadMagic {
            what: "download key",
        });
    }
    let mut word = [0u8; 2];
    read_part(&mut r, &mut word, "header")?;
    let format = u16::from_be_bytes(word);
    if format != FORMAT_VERSION {
        return Err(Error::UnsupportedFormat(format));
    }
    let mut public = [0u8; 32];
    read_part(&mut r, &mut public, "public key")?;
    let mut len = [0u8; 4];
    read_part(&mut r, &mut len, "header")?;
    let len = u32::from_be_bytes(len);
    if len == 0 || len > MAX_BODY {
        return Err(Error::ManifestTooLarge {
            len: len.into(),
            max: MAX_BODY.into(),
        });
    }
    let mut body = vec![0u8; len as usize];
    read_part(&mut r, &mut body, "signed body")?;
    read_part(&mut r, &mut word, "signature")?;
    if u16::from_be_bytes(word) != 64 {
        return Err(Error::BadSignatureLength(u16::from_be_bytes(word)));
    }
    let mut sig = [0u8; 64];
    read_part(&mut r, &mut sig, "signature")?;
    if !at_eof(&mut r)? {
        return Err(Error::TrailingData);
    }

    let key = PublicKey::from_bytes(&public).map_err(|_| Error::SignatureInvalid)?;
    if expected.is_some_and(|k| *k != key) {
        return Err(Error::KeyMismatch);
    }
    key.verify(&message(&public, &body), &sig)?;

    let body: Body =
        serde_json::from_slice(&body).map_err(|e| Error::ManifestInvalid(e.to_string()))?;
    if body.format != FORMAT_VERSION {
        return Err(Error::UnsupportedFormat(body.format));
    }
    if body.public_key != B64.encode(public) {
        return Err(Error::ManifestInvalid(
            "public key in the body differs from the signing key".into(),
        ));
    }
    check_appliance_id(&body.appliance_id)?;
    body.installed
        .validate()
        .map_err(|e| Error::ManifestInvalid(e.to_string()))?;
    if body.expires <= body.created {
        return Err(Error::ManifestInvalid(
            "expires is not after created".into(),
        ));
    }
    let lifetime = body.expires.get() - body.created.get();
    if lifetime > DOWNLOAD_KEY_LIFETIME {
        return Err(Error::LifetimeTooLong {
            minutes: lifetime.whole_minutes(),
            max_minutes: DOWNLOAD_KEY_LIFETIME.whole_minutes(),
        });
    }
    check_validity(body.created, body.expires, now, DEFAULT_SKEW)?;
    Ok(DownloadKey {
        appliance_id: body.appliance_id,
        public_key: key,
        installed: body.installed,
        created: body.created,
        expires: body.expires,
    })
}
