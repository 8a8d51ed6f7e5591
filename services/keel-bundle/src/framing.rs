//! The signed block shared by bundles and feeds:
//!
//! ```text
//! magic[8] | format u16 BE | body length u32 BE | body | sig length u16 BE (64) | sig[64] | key id[8]
//! ```
//!
//! Every length is checked against a fixed cap before anything is allocated, so a
//! hostile length field costs at most the cap. The signature covers
//! `context || body`; the context differs per kind of block, so a signed feed can
//! never be presented as a bundle manifest or the other way round.

use std::io::{ErrorKind, Read, Write};

use crate::keys::{KeyId, PublicKey, SecretKey, TrustedKeys};
use crate::{Error, BUNDLE_MAGIC, FORMAT_VERSION};

/// Largest manifest a bundle may carry. Real manifests are well under 4 KiB.
pub const MAX_MANIFEST_LEN: u32 = 64 * 1024;
/// Largest feed body (a few thousand entries).
pub const MAX_FEED_LEN: u32 = 1024 * 1024;
pub const FEED_MAGIC: &[u8; 8] = b"KEELFEED";

pub(crate) struct BlobKind {
    pub magic: &'static [u8; 8],
    pub what: &'static str,
    pub context: &'static [u8],
    pub max_len: u32,
}

pub(crate) const BUNDLE: BlobKind = BlobKind {
    magic: BUNDLE_MAGIC,
    what: "bundle",
    context: b"keel-bundle manifest v1\0",
    max_len: MAX_MANIFEST_LEN,
};

pub(crate) const FEED: BlobKind = BlobKind {
    magic: FEED_MAGIC,
    what: "feed",
    context: b"keel-bundle feed v1\0",
    max_len: MAX_FEED_LEN,
};

/// A block as read, not yet verified.
pub(crate) struct Signed {
    pub body: Vec<u8>,
    pub signature: [u8; 64],
    pub key_id: KeyId,
}

/// Like `read_exact`, but an early end is [`Error::Truncated`] naming the part.
pub(crate) fn read_part<R: Read>(
    r: &mut R,
    buf: &mut [u8],
    part: &'static str,
) -> Result<(), Error> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        ErrorKind::UnexpectedEof => Error::Truncated(part),
        _ => Error::Io(e),
    })
}

/// True if `r` is at its end (reads at most one byte).
pub(crate) fn at_eof<R: Read>(r: &mut R) -> Result<bool, Error> {
    let mut one = [0u8; 1];
    loop {
        match r.read(&mut one) {
            Ok(n) => return Ok(n == 0),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Io(e)),
        }
    }
}

pub(crate) fn read_signed<R: Read>(r: &mut R, kind: &BlobKind) -> Result<Signed, Error> {
    let mut magic = [0u8; 8];
    read_part(r, &mut magic, "header")?;
    if &magic != kind.magic {
        return Err(Error::BadMagic { what: kind.what });
    }
    let mut word = [0u8; 2];
    read_part(r, &mut word, "header")?;
    let format = u16::from_be_bytes(word);
    if format != FORMAT_VERSION {
        return Err(Error::UnsupportedFormat(format));
    }
    let mut len = [0u8; 4];
    read_part(r, &mut len, "header")?;
    let len = u32::from_be_bytes(len);
    if len == 0 || len > kind.max_len {
        return Err(Error::ManifestTooLarge {
            len: len.into(),
            max: kind.max_len.into(),
        });
    }
    // Bounded by the cap just checked.
    let mut body = vec![0u8; len as usize];
    read_part(r, &mut body, "signed body")?;
    read_part(r, &mut word, "signature")?;
    let sig_len = u16::from_be_bytes(word);
    if sig_len != 64 {
        return Err(Error::BadSignatureLength(sig_len));
    }
    let mut signature = [0u8; 64];
    read_part(r, &mut signature, "signature")?;
    let mut key_id = [0u8; 8];
    read_part(r, &mut key_id, "key id")?;
    Ok(Signed {
        body,
        signature,
        key_id: KeyId(key_id),
    })
}

pub(crate) fn message(kind: &BlobKind, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(kind.context.len() + body.len());
    m.extend_from_slice(kind.context);
    m.extend_from_slice(body);
    m
}

/// Checks the signature with the trusted key the block names.
pub(crate) fn verify_signed<'k>(
    signed: &Signed,
    kind: &BlobKind,
    keys: &'k TrustedKeys,
) -> Result<&'k PublicKey, Error> {
    if keys.is_empty() {
        return Err(Error::NoTrustedKeys);
    }
    let key = keys
        .get(&signed.key_id)
        .ok_or(Error::UnknownKey(signed.key_id))?;
    key.verify(&message(kind, &signed.body), &signed.signature)?;
    Ok(key)
}

pub(crate) fn write_signed<W: Write>(
    w: &mut W,
    kind: &BlobKind,
    body: &[u8],
    key: &SecretKey,
) -> Result<(), Error> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&l| l > 0 && l <= kind.max_len)
        .ok_or(Error::ManifestTooLarge {
            len: body.len() as u64,
            max: kind.max_len.into(),
        })?;
    let signature = key.sign(&message(kind, body));
    w.write_all(kind.magic)?;
    w.write_all(&FORMAT_VERSION.to_be_bytes())?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(body)?;
    w.write_all(&64u16.to_be_bytes())?;
    w.write_all(&signature)?;
    w.write_all(&key.public().id().0)?;
    Ok(())
}
