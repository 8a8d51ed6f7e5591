//! Making bundles (vendor side).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::framing::{write_signed, BUNDLE};
use crate::keys::SecretKey;
use crate::manifest::{Kind, Manifest, Sha256Digest};
use crate::timestamp::Timestamp;
use crate::version::{Requirement, Version, VersionRange};
use crate::{Error, FORMAT_VERSION};

/// Everything in a manifest except what the payload and key determine.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    pub product: String,
    pub version: Version,
    pub kind: Kind,
    pub name: Option<String>,
    pub requires: Vec<Requirement>,
    pub installs_over: Vec<VersionRange>,
    pub created: Timestamp,
    pub expires: Timestamp,
}

impl BundleSpec {
    pub fn manifest(&self, key: &SecretKey, payload_size: u64, sha256: Sha256Digest) -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            product: self.product.clone(),
            version: self.version,
            kind: self.kind,
            name: self.name.clone(),
            requires: self.requires.clone(),
            installs_over: self.installs_over.clone(),
            payload_size,
            payload_sha256: sha256,
            created: self.created,
            expires: self.expires,
            key_id: key.public().id(),
        }
    }
}

/// A whole bundle in memory (tests, small payloads).
pub fn build_bundle_bytes(
    key: &SecretKey,
    spec: &BundleSpec,
    payload: &[u8],
) -> Result<Vec<u8>, Error> {
    let sha = Sha256Digest(Sha256::digest(payload).into());
    let manifest = spec.manifest(key, payload.len() as u64, sha);
    let mut out = Vec::with_capacity(payload.len() + 1024);
    write_signed(&mut out, &BUNDLE, &manifest.to_bytes()?, key)?;
    out.extend_from_slice(payload);
    Ok(out)
}

/// Copies `r` to `w`, returning size and SHA-256 of what passed.
fn copy_hashing<R: Read, W: Write>(r: &mut R, w: &mut W) -> io::Result<(u64, Sha256Digest)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        w.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok((total, Sha256Digest(hasher.finalize().into())))
}

/// Builds `out` from the payload file, streaming (images are large). The payload
/// is hashed, then copied and hashed again: if it changed in between, the build
/// fails instead of signing one file and shipping another. `out` appears
/// atomically (temp file, fsync, rename).
pub fn build_bundle_file(
    key: &SecretKey,
    spec: &BundleSpec,
    payload: &Path,
    out: &Path,
) -> Result<Manifest, Error> {
    let file_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::File { path, source }
    };
    let mut input = File::open(payload).map_err(file_err(payload))?;
    let (size, sha) = copy_hashing(&mut BufReader::new(&mut input), &mut io::sink())
        .map_err(file_err(payload))?;
    let manifest = spec.manifest(key, size, sha);
    let bytes = manifest.to_bytes()?;

    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(file_err(dir))?;
    {
        let mut w = BufWriter::new(tmp.as_file());
        write_signed(&mut w, &BUNDLE, &bytes, key)?;
        input.seek(SeekFrom::Start(0)).map_err(file_err(payload))?;
        let again = copy_hashing(&mut input, &mut w).map_err(file_err(payload))?;
        if again != (size, sha) {
            return Err(Error::Invalid(format!(
                "{}: changed while the bundle was being built",
                payload.display()
            )));
        }
        w.flush().map_err(file_err(out))?;
    }
    // Bundles are public; NamedTempFile starts at 0600.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(file_err(out))?;
    tmp.as_file().sync_all().map_err(file_err(out))?;
    tmp.persist(out).map_err(|e| Error::File {
        path: out.into(),
        source: e.error,
    })?;
    keel_core::store::sync_dir(dir)?;
    Ok(manifest)
}
