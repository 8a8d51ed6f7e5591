//! The inactive root slot as a device (or, in tests, a plain file): its size,
//! streaming the payload in with large aligned writes, fsync, dropping its page
//! cache and reading it back.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Size of each write and read: large, and every write starts at a multiple of it.
pub const CHUNK: usize = 4 * 1024 * 1024;

nix::ioctl_none!(blkflsbuf, 0x12, 97);

/// One slot's device.
#[derive(Debug, Clone)]
pub struct SlotDevice {
    pub path: PathBuf,
}

fn ctx(path: &Path, what: &str) -> impl FnOnce(io::Error) -> io::Error {
    let p = path.display().to_string();
    let what = what.to_string();
    move |e| io::Error::new(e.kind(), format!("{what} {p}: {e}"))
}

impl SlotDevice {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    fn is_block(&self) -> io::Result<bool> {
        Ok(std::fs::metadata(&self.path)
            .map_err(ctx(&self.path, "stat"))?
            .file_type()
            .is_block_device())
    }

    /// Its size in bytes (opened read-only; seeking to the end works for block
    /// devices and files alike).
    pub fn size(&self) -> io::Result<u64> {
        let mut f = File::open(&self.path).map_err(ctx(&self.path, "opening"))?;
        f.seek(SeekFrom::End(0)).map_err(ctx(&self.path, "sizing"))
    }

    /// Refuses a device that is the root filesystem's (the running slot), whatever
    /// the path template says.
    pub fn check_not_root(&self) -> io::Result<()> {
        let meta = std::fs::metadata(&self.path).map_err(ctx(&self.path, "stat"))?;
        if meta.file_type().is_block_device() {
            let root = std::fs::metadata("/")?.dev();
            if meta.rdev() == root {
                return Err(io::Error::other(format!(
                    "{} is the device of the running root filesystem",
                    self.path.display()
                )));
            }
        }
        Ok(())
    }

    /// Opens for writing: never created, never truncated; a block device is opened
    /// with `O_EXCL`, which the kernel refuses while it is mounted.
    pub fn open_write(&self) -> io::Result<File> {
        let mut o = OpenOptions::new();
        o.write(true);
        if self.is_block()? {
            o.custom_flags(libc_o_excl());
        }
        o.open(&self.path)
            .map_err(ctx(&self.path, "opening for writing"))
    }

    /// After fsync: the kernel forgets the cached pages, so the read-back comes
    /// from the disk. `posix_fadvise(DONTNEED)` for any file, and `BLKFLSBUF` for a
    /// block device (its buffer cache).
    pub fn drop_cache(&self, f: &File) -> io::Result<()> {
        nix::fcntl::posix_fadvise(
            f.as_raw_fd(),
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .map_err(|e| io::Error::other(format!("posix_fadvise {}: {e}", self.path.display())))?;
        if self.is_block()? {
            // SAFETY: BLKFLSBUF takes no argument; the fd is open.
            unsafe { blkflsbuf(f.as_raw_fd()) }
                .map_err(|e| io::Error::other(format!("BLKFLSBUF {}: {e}", self.path.display())))?;
        }
        Ok(())
    }

    /// Reads the first `len` bytes back and hashes them; `progress(done)` after
    /// each chunk.
    pub fn read_back(&self, len: u64, mut progress: impl FnMut(u64)) -> io::Result<[u8; 32]> {
        let f = File::open(&self.path).map_err(ctx(&self.path, "opening for read-back"))?;
        // Sequential, once: no need to keep it cached either.
        let _ = nix::fcntl::posix_fadvise(
            f.as_raw_fd(),
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
        );
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut done = 0u64;
        while done < len {
            let want = usize::try_from(len - done).unwrap_or(CHUNK).min(CHUNK);
            f.read_exact_at(&mut buf[..want], done)
                .map_err(ctx(&self.path, "reading back"))?;
            hasher.update(&buf[..want]);
            done += want as u64;
            progress(done);
        }
        let _ = nix::fcntl::posix_fadvise(
            f.as_raw_fd(),
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
        Ok(hasher.finalize().into())
    }
}

fn libc_o_excl() -> i32 {
    nix::fcntl::OFlag::O_EXCL.bits()
}

/// Fills `buf` from `r` as far as it goes: a full buffer, or less at the end.
/// An error is returned as is (the payload reader's refusal of the last chunk).
pub fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
