//! The verifier. One pass over one open reader: header, manifest, signature
//! checked, manifest parsed from the verified bytes only, then the payload
//! streamed through a hashing reader. Nothing is read twice, so what was checked
//! is what gets installed.

use std::fs::File;
use std::io::{self, BufReader, ErrorKind, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::framing::{self, at_eof, read_signed, verify_signed, BUNDLE};
use crate::keys::{KeyId, TrustedKeys};
use crate::manifest::{Manifest, Sha256Digest};
use crate::policy::check_validity;
use crate::timestamp::Timestamp;
use crate::{Error, DEFAULT_SKEW};

/// Verifies bundles (and feeds, see [`crate::verify_feed`]) for one product at
/// one point in time. The caller supplies `now`: the appliance's clock, or the
/// vendor's.
#[derive(Debug, Clone)]
pub struct Verifier<'k> {
    pub(crate) keys: &'k TrustedKeys,
    pub(crate) product: String,
    pub(crate) now: Timestamp,
    pub(crate) skew: time::Duration,
}

impl<'k> Verifier<'k> {
    pub fn new(keys: &'k TrustedKeys, product: &str, now: Timestamp) -> Self {
        Verifier {
            keys,
            product: product.to_string(),
            now,
            skew: DEFAULT_SKEW,
        }
    }

    /// How far `created` may lie ahead of `now` (default [`DEFAULT_SKEW`]).
    pub fn with_skew(mut self, skew: time::Duration) -> Self {
        self.skew = skew;
        self
    }

    /// Reads and verifies everything before the payload. The returned bundle's
    /// manifest is authentic and current; the payload is not verified until its
    /// [`PayloadReader`] has reached the end.
    pub fn open<R: Read>(&self, mut reader: R) -> Result<Bundle<R>, Error> {
        // Before reading a byte: there is no unverified mode.
        if self.keys.is_empty() {
            return Err(Error::NoTrustedKeys);
        }
        let signed = read_signed(&mut reader, &BUNDLE)?;
        verify_signed(&signed, &BUNDLE, self.keys)?;
        let manifest = Manifest::parse(&signed.body)?;
        // The unsigned key id in the framing only picked the key; the signed one
        // must agree, so a bundle names its signer in the authenticated part.
        if manifest.key_id != signed.key_id {
            return Err(Error::ManifestInvalid(
                "key id in the manifest differs from the signing key".into(),
            ));
        }
        if manifest.product != self.product {
            return Err(Error::ProductMismatch {
                expected: self.product.clone(),
                found: manifest.product,
            });
        }
        check_validity(manifest.created, manifest.expires, self.now, self.skew)?;
        Ok(Bundle {
            manifest,
            manifest_bytes: signed.body,
            key_id: signed.key_id,
            reader,
        })
    }
}

/// A bundle whose manifest is verified; its payload is next in the reader.
#[derive(Debug)]
pub struct Bundle<R> {
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    key_id: KeyId,
    reader: R,
}

impl<R: Read> Bundle<R> {
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The exact signed manifest bytes (e.g. to keep beside the installed slot).
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The payload, as a reader that hashes what it returns.
    pub fn payload(self) -> PayloadReader<R> {
        PayloadReader {
            manifest: self.manifest,
            inner: self.reader,
            hasher: Sha256::new(),
            read: 0,
            state: State::Reading,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Failure {
    Truncated { got: u64 },
    Trailing,
    Hash,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Reading,
    Done,
    Failed(Failure),
}

/// Streams the payload: at most the declared size, hashed on the way. The read
/// that would return the last bytes instead returns an error if the hash differs
/// or more data follows, so a consumer never sees a clean end of a bad payload.
/// Failures are sticky. Call [`PayloadReader::finish`] afterwards: only it
/// yields the [`VerifiedPayload`] that says the payload is the signed one.
#[derive(Debug)]
pub struct PayloadReader<R> {
    manifest: Manifest,
    inner: R,
    hasher: Sha256,
    read: u64,
    state: State,
}

impl<R: Read> PayloadReader<R> {
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Payload bytes returned so far.
    pub fn position(&self) -> u64 {
        self.read
    }

    fn failure_error(&self, f: Failure) -> Error {
        match f {
            Failure::Truncated { got } => Error::PayloadTruncated {
                expected: self.manifest.payload_size,
                got,
            },
            Failure::Trailing => Error::TrailingData,
            Failure::Hash => Error::PayloadHashMismatch,
        }
    }

    fn fail(&mut self, f: Failure) -> io::Error {
        self.state = State::Failed(f);
        let kind = match f {
            Failure::Truncated { .. } => ErrorKind::UnexpectedEof,
            _ => ErrorKind::InvalidData,
        };
        io::Error::new(kind, self.failure_error(f))
    }

    /// At the declared end: nothing may follow, and the hash must match.
    fn conclude(&mut self) -> io::Result<()> {
        match at_eof(&mut self.inner) {
            Ok(true) => {}
            Ok(false) => return Err(self.fail(Failure::Trailing)),
            Err(Error::Io(e)) => return Err(e),
            Err(e) => return Err(io::Error::other(e)),
        }
        let digest: [u8; 32] = self.hasher.clone().finalize().into();
        if Sha256Digest(digest) != self.manifest.payload_sha256 {
            return Err(self.fail(Failure::Hash));
        }
        self.state = State::Done;
        Ok(())
    }

    /// Checks that the payload was read to its end and was the signed one.
    /// Errors if the caller stopped early: bytes it never read were not written
    /// anywhere, so "verified" would be a lie about the slot.
    pub fn finish(self) -> Result<VerifiedPayload, Error> {
        match self.state {
            State::Done => Ok(VerifiedPayload {
                sha256: self.manifest.payload_sha256,
                size: self.read,
                manifest: self.manifest,
            }),
            State::Failed(f) => Err(self.failure_error(f)),
            State::Reading => Err(Error::PayloadNotConsumed {
                read: self.read,
                expected: self.manifest.payload_size,
            }),
        }
    }

    /// Reads the rest of the payload (discarding it) and finishes: for checking a
    /// bundle without installing it.
    pub fn drain(mut self) -> Result<VerifiedPayload, Error> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match self.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(match self.state {
                        State::Failed(f) => self.failure_error(f),
                        _ => Error::Io(e),
                    })
                }
            }
        }
        self.finish()
    }
}

impl<R: Read> Read for PayloadReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.state {
            State::Done => return Ok(0),
            State::Failed(f) => return Err(self.fail(f)),
            State::Reading => {}
        }
        let remaining = self.manifest.payload_size - self.read;
        if remaining == 0 {
            self.conclude()?;
            return Ok(0);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let n = loop {
            match self.inner.read(&mut buf[..want]) {
                Ok(n) => break n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return Err(self.fail(Failure::Truncated { got: self.read }));
        }
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        if self.read == self.manifest.payload_size {
            // Withhold the last chunk unless the whole payload checks out.
            self.conclude()?;
        }
        Ok(n)
    }
}

/// Proof that a payload was read whole and matched its signed manifest. Only
/// [`PayloadReader::finish`] makes one.
#[derive(Debug, Clone)]
pub struct VerifiedPayload {
    manifest: Manifest,
    sha256: Sha256Digest,
    size: u64,
}

impl VerifiedPayload {
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn sha256(&self) -> Sha256Digest {
        self.sha256
    }
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// Verifies a bundle file completely (signature, validity, payload hash); what
/// `keel-bundle verify` runs.
pub fn verify_file(path: &Path, verifier: &Verifier) -> Result<VerifiedPayload, Error> {
    let file = File::open(path).map_err(|source| Error::File {
        path: path.into(),
        source,
    })?;
    verifier.open(BufReader::new(file))?.payload().drain()
}

/// Header and manifest WITHOUT checking the signature, for display (`inspect`)
/// and vendor-side planning over the vendor's own files. Never install from it.
pub fn read_unverified<R: Read>(mut reader: R) -> Result<(Manifest, KeyId), Error> {
    let signed = read_signed(&mut reader, &framing::BUNDLE)?;
    Ok((Manifest::parse(&signed.body)?, signed.key_id))
}
