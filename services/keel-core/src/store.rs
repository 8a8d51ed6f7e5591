//! Atomic file store: a reader sees the old file or the new one, never a torn one,
//! also across a power cut (temp file, fsync, rename, fsync of the directory).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A file whose format version this build cannot read (crate::format).
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Temp files get a name no other writer uses at the same time: two threads of one
/// process (or two processes) writing the same file each have their own.
fn unique_temp(dir: &Path, name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    dir.join(format!(
        ".{name}.tmp.{}.{seq}.{nanos:08x}",
        std::process::id()
    ))
}

/// Writes `bytes` to `path` atomically with permission bits `mode` (e.g. 0o600).
///
/// The temp file is created exclusively (`O_EXCL`, `O_NOFOLLOW`): a file or link
/// planted under its name makes the write fail instead of being followed. Concurrent
/// writers of one path never share a temp file; the last rename wins whole.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = unique_temp(dir, name);
    let mut created = false;
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        created = true;
        file.write_all(bytes).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))?;
        sync_dir(dir)
    })();
    if result.is_err() && created {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes the entries of `dir` (creations, renames, deletions) durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Removes `path` so that a power cut cannot bring it back (the directory is synced
/// after the unlink). A missing file is not an error; returns whether it existed.
pub fn remove_durable(path: &Path) -> Result<bool, StoreError> {
    remove_synced(path, |p| fs::remove_file(p))
}

/// Removes a directory tree (e.g. a certificate with its private key) durably.
pub fn remove_dir_durable(path: &Path) -> Result<bool, StoreError> {
    remove_synced(path, |p| fs::remove_dir_all(p))
}

fn remove_synced(
    path: &Path,
    remove: fn(&Path) -> std::io::Result<()>,
) -> Result<bool, StoreError> {
    match remove(path) {
        Ok(()) => {
            sync_dir(path.parent().unwrap_or(Path::new(".")))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(StoreError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Serializes `value` as pretty JSON and writes it atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T, mode: u32) -> Result<(), StoreError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|source| StoreError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes, mode)
}

/// Reads a JSON file; `Ok(None)` when it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    let Some(bytes) = read_optional(path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| StoreError::Json {
            path: path.to_path_buf(),
            source,
        })
}

/// A file's bytes; `Ok(None)` when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Creates `dir` (and parents) with `mode` if missing.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .map_err(io_err(dir))?;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret.json");
        write_json(&p, &serde_json::json!({"a": 1}), 0o600).unwrap();
        write_json(&p, &serde_json::json!({"a": 2}), 0o600).unwrap();
        let v: serde_json::Value = read_json(&p).unwrap().unwrap();
        assert_eq!(v["a"], 2);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temp files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn concurrent_writers_of_one_file_never_tear_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        let threads: Vec<_> = (0..8u8)
            .map(|i| {
                let p = p.clone();
                std::thread::spawn(move || {
                    let body = vec![b'a' + i; 64 * 1024];
                    for _ in 0..50 {
                        write_atomic(&p, &body, 0o644).unwrap();
                        let seen = fs::read(&p).unwrap();
                        assert_eq!(seen.len(), body.len());
                        assert!(seen.iter().all(|b| *b == seen[0]), "torn file");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn durable_removal_reports_whether_the_file_existed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("admin.json");
        fs::write(&p, b"{}").unwrap();
        assert!(remove_durable(&p).unwrap());
        assert!(!p.exists());
        assert!(!remove_durable(&p).unwrap());
        let d = dir.path().join("cert");
        fs::create_dir(&d).unwrap();
        fs::write(d.join("key.pem"), b"k").unwrap();
        assert!(remove_dir_durable(&d).unwrap());
        assert!(!d.exists());
    }

    #[test]
    fn missing_file_is_none_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        assert!(read_json::<serde_json::Value>(&p).unwrap().is_none());
        fs::write(&p, b"{not json").unwrap();
        let err = read_json::<serde_json::Value>(&p).unwrap_err();
        assert!(err.to_string().contains("x.json"), "{err}");
    }
}
