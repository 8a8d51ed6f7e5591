//! The inactive root slot as a device (or, in tests, a plain file): its size, and
//! [`write_and_read_back`], the pipelined write path of an install.
//!
//! Why it is built this way (measured with scripts/bench-update.sh: a 121 MB
//! payload into a loop device, 2 cores shared with the client; `dd bs=4M
//! oflag=direct conv=fsync` 0.14 s; one SHA-256 pass 0.07–0.10 s with SHA-NI,
//! which `sha2` picks at run time). On 2 cores the limit is CPU, not the disk:
//! the client, the socket, the loop device's worker and keel-update share them,
//! so every pass over the payload keel-update saves is wall time.
//! - Writes and read-back use `O_DIRECT`: no copy into the page cache, no cache
//!   to drop afterwards, and a read that cannot be answered from memory — it goes
//!   to the device, so it checks what the device holds, not what we sent.
//! - Three stages on their own threads, handing 2 MiB buffers along: the caller's
//!   thread fills one from keel-bundle's reader (it hashes the payload in that
//!   buffer and checks the signed digest at the end), a writer writes it, a
//!   verifier reads the range back from the device into its own buffer and
//!   compares it with the one it was written from; only then is that buffer free
//!   again. Three buffers keep filling, writing and reading back going at once.
//! - The read-back is compared, not hashed a second time: the buffer holds the
//!   very bytes the reader hashed (it reads into it and hashes it in place), and
//!   it stays owned by the pipeline, unchanged, until the device's copy matched
//!   it. So the device holds the bytes whose hash was the signed one. A compare
//!   costs ~1/20 of a SHA-256 pass; the second hash was ~0.08 s of the 0.30 s
//!   of CPU keel-update spent per install (0.16 s now, with the huge pages).
//!   What only a second hash would catch — a buffer changed in RAM between
//!   hashing and writing, by a memory fault — a compare does not. The verifier
//!   tracks the offsets itself, from byte 0 without gaps, and the writer's
//!   offsets are checked against it.
//! - Each range is read back as soon as its direct write completed (the device
//!   acknowledged it) rather than in a second pass after the fsync: the same
//!   bytes from the same device. The fsync that makes it durable still comes
//!   before anything is armed.
//! - Buffers are 2 MiB-aligned on transparent huge pages: fresh memory is
//!   faulted in 2 MiB at a time, and each direct I/O pins one page, not 512
//!   (~50 ms of CPU per install less, measured). 2 MiB rather than 4: half the
//!   fresh memory to fault in, and a shorter pipeline to fill and drain.
//! - What is left on the bench is not keel-update's CPU (0.10 s per install):
//!   the client, the socket and the device's read-back. Batching the ~1850
//!   64 KiB hand-offs from the runtime thread to ~120 measured no change.
//! - Where `O_DIRECT` is refused (tmpfs), buffered I/O with `fdatasync` and
//!   `POSIX_FADV_DONTNEED` per range stands in: there is no device under it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;

use nix::fcntl::{fcntl, posix_fadvise, FcntlArg, OFlag, PosixFadviseAdvice};

/// Size of each write and read: large, and every write but the last is a whole
/// one; one huge page ([`HUGE`]).
pub const CHUNK: usize = HUGE;
/// `O_DIRECT` wants buffer address, offset and length aligned to the device's
/// logical block size; 4096 covers 512-byte and 4K devices alike.
pub const ALIGN: usize = 4096;
/// Buffers in flight: one filling, one being written, one being read back and
/// compared (it is free again only after that).
const BUFFERS: usize = 3;
/// Buffers of at least this size start on a 2 MiB boundary and ask for
/// transparent huge pages: two page faults per 4 MiB buffer instead of 1024, and
/// each direct I/O pins two pages instead of 1024.
const HUGE: usize = 2 * 1024 * 1024;

/// One slot's device.
#[derive(Debug, Clone)]
pub struct SlotDevice {
    pub path: PathBuf,
    /// `O_DIRECT` where the file system takes it (the default); off runs the
    /// buffered stand-in everywhere (tests of that path).
    pub direct: bool,
}

fn ctx(path: &Path, what: &str) -> impl FnOnce(io::Error) -> io::Error {
    let p = path.display().to_string();
    let what = what.to_string();
    move |e| io::Error::new(e.kind(), format!("{what} {p}: {e}"))
}

fn errno(path: &Path, what: &str) -> impl FnOnce(nix::errno::Errno) -> io::Error {
    let c = ctx(path, what);
    move |e| c(e.into())
}

impl SlotDevice {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            direct: true,
        }
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

    /// Opens with `O_DIRECT` if the file system takes it (older tmpfs says
    /// EINVAL), else without; tells which.
    fn open_direct(&self, o: &mut OpenOptions, flags: i32, what: &str) -> io::Result<(File, bool)> {
        if !self.direct {
            return o
                .custom_flags(flags)
                .open(&self.path)
                .map(|f| (f, false))
                .map_err(ctx(&self.path, what));
        }
        match o
            .custom_flags(flags | OFlag::O_DIRECT.bits())
            .open(&self.path)
        {
            Ok(f) => Ok((f, true)),
            Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {
                tracing::debug!("{}: no O_DIRECT here, buffered I/O", self.path.display());
                o.custom_flags(flags)
                    .open(&self.path)
                    .map(|f| (f, false))
                    .map_err(ctx(&self.path, what))
            }
            Err(e) => Err(ctx(&self.path, what)(e)),
        }
    }

    /// Opens for writing: never created, never truncated; a block device is opened
    /// with `O_EXCL`, which the kernel refuses while it is mounted.
    pub fn open_write(&self) -> io::Result<SlotWriter> {
        let excl = if self.is_block()? {
            OFlag::O_EXCL.bits()
        } else {
            0
        };
        let (f, direct) =
            self.open_direct(OpenOptions::new().write(true), excl, "opening for writing")?;
        Ok(SlotWriter {
            f,
            direct,
            path: self.path.clone(),
        })
    }

    /// Opens for reading back (beside the writer's `O_EXCL` open, which allows it).
    pub fn open_read_back(&self) -> io::Result<SlotReader> {
        let (f, direct) =
            self.open_direct(OpenOptions::new().read(true), 0, "opening for read-back")?;
        Ok(SlotReader {
            f,
            direct,
            buf: AlignedBuf::new(CHUNK),
            path: self.path.clone(),
        })
    }
}

/// A zeroed heap buffer whose start is [`ALIGN`]-aligned, as `O_DIRECT` needs
/// (over-allocated and sliced; large ones on huge pages, [`HUGE`]).
pub struct AlignedBuf {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> Self {
        let align = if len >= HUGE { HUGE } else { ALIGN };
        // Zeroed memory this large comes fresh from mmap, not yet touched: the
        // advice takes effect at the first write.
        let mem = vec![0u8; len + align];
        let start = mem.as_ptr().align_offset(align);
        if align == HUGE {
            advise_huge_pages(&mem[start..start + len]);
        }
        Self { mem, start, len }
    }
}

/// Asks for transparent huge pages under `mem` (where THP is `madvise`, the
/// default); a kernel without them ignores it, and nothing depends on it.
fn advise_huge_pages(mem: &[u8]) {
    #[cfg(target_os = "linux")]
    // SAFETY: advice about a range inside our own live allocation; MADV_HUGEPAGE
    // changes no contents and no mapping the program relies on.
    unsafe {
        nix::libc::madvise(
            mem.as_ptr() as *mut nix::libc::c_void,
            mem.len(),
            nix::libc::MADV_HUGEPAGE,
        );
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + self.len]
    }
}

/// The slot open for writing.
pub struct SlotWriter {
    f: File,
    direct: bool,
    path: PathBuf,
}

impl SlotWriter {
    /// Writes `buf` at `off` so that a read of that range from now on comes from
    /// the device. Direct writes need whole blocks: an unaligned tail (only the
    /// payload's last bytes) is written buffered — like GNU dd, by clearing
    /// `O_DIRECT` on the descriptor — then synced and dropped from the cache.
    pub fn write_at(&mut self, buf: &[u8], off: u64) -> io::Result<()> {
        let whole = if self.direct {
            buf.len() - buf.len() % ALIGN
        } else {
            0
        };
        if whole > 0 {
            self.f
                .write_all_at(&buf[..whole], off)
                .map_err(ctx(&self.path, "writing"))?;
        }
        let tail = &buf[whole..];
        if tail.is_empty() {
            return Ok(());
        }
        if self.direct {
            let fd = self.f.as_raw_fd();
            let fl = fcntl(fd, FcntlArg::F_GETFL).map_err(errno(&self.path, "F_GETFL"))?;
            let fl = OFlag::from_bits_truncate(fl) - OFlag::O_DIRECT;
            fcntl(fd, FcntlArg::F_SETFL(fl)).map_err(errno(&self.path, "clearing O_DIRECT"))?;
            self.direct = false;
        }
        let off = off + whole as u64;
        self.f
            .write_all_at(tail, off)
            .map_err(ctx(&self.path, "writing"))?;
        self.f.sync_data().map_err(ctx(&self.path, "syncing"))?;
        posix_fadvise(
            self.f.as_raw_fd(),
            off as i64,
            tail.len() as i64,
            PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .map_err(errno(&self.path, "posix_fadvise"))
    }

    /// Everything on stable storage (the device's cache flushed too).
    pub fn sync(&self) -> io::Result<()> {
        self.f.sync_all().map_err(ctx(&self.path, "syncing"))
    }
}

/// The slot open for reading back, with its own aligned buffer.
pub struct SlotReader {
    f: File,
    direct: bool,
    buf: AlignedBuf,
    path: PathBuf,
}

impl SlotReader {
    /// Reads `len` (≤ [`CHUNK`]) bytes at `off` (a multiple of [`ALIGN`]) from the
    /// device. A direct read asks for whole blocks and uses the first `len` bytes.
    pub fn read_at(&mut self, off: u64, len: usize) -> io::Result<&[u8]> {
        let want = if self.direct {
            len.div_ceil(ALIGN) * ALIGN
        } else {
            len
        };
        let buf = &mut self.buf[..want];
        let mut got = 0;
        while got < len {
            match self.f.read_at(&mut buf[got..], off + got as u64) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "reading back {}: it ends at byte {} (wanted {})",
                            self.path.display(),
                            off + got as u64,
                            off + len as u64
                        ),
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ctx(&self.path, "reading back")(e)),
            }
        }
        Ok(&self.buf[..len])
    }
}

/// Which side of [`write_and_read_back`] failed.
#[derive(Debug)]
pub enum StreamError {
    /// Reading the payload (for keel-bundle's reader: the bundle is bad).
    Source(io::Error),
    /// Writing, syncing or reading back the slot.
    Slot(io::Error),
    /// The device returned other bytes than were written, first at this offset.
    Mismatch { at: u64 },
}

/// What [`write_and_read_back`] reports as it goes; called from its threads.
pub trait StreamEvents: Sync {
    /// Bytes `0..done` are written.
    fn written(&self, done: u64);
    /// Runs before each written range is read back (tests change the slot here).
    fn before_read_back(&self, _off: u64, _len: usize) {}
    /// Bytes `0..done` are read back and found as written.
    fn read_back(&self, done: u64);
}

/// Streams `src` to its end into `dev` from offset 0, reads every written range
/// back from the device and compares it with the buffer it was written from —
/// the very bytes `src` returned (keel-bundle's reader hashed them in that
/// buffer). Returns the bytes written, after a final sync. On any error the
/// stages stop (what is queued may still be written).
pub fn write_and_read_back<R: Read>(
    dev: &SlotDevice,
    src: &mut R,
    events: &impl StreamEvents,
) -> Result<u64, StreamError> {
    let mut writer = dev.open_write().map_err(StreamError::Slot)?;
    let mut reader = dev.open_read_back().map_err(StreamError::Slot)?;
    let (free_tx, free_rx) = sync_channel::<AlignedBuf>(BUFFERS);
    for _ in 0..BUFFERS {
        free_tx
            .send(AlignedBuf::new(CHUNK))
            .expect("room for every buffer");
    }
    let (write_tx, write_rx) = sync_channel::<(AlignedBuf, usize)>(BUFFERS);
    let (check_tx, check_rx) = sync_channel::<(AlignedBuf, u64, usize)>(BUFFERS);

    std::thread::scope(|s| {
        let w = s.spawn(move || -> io::Result<u64> {
            let mut off = 0u64;
            for (buf, n) in write_rx {
                writer.write_at(&buf[..n], off)?;
                // The buffer goes on to the verifier, which frees it once compared.
                if check_tx.send((buf, off, n)).is_err() {
                    break; // the verifier stopped; its error is the answer
                }
                off += n as u64;
                events.written(off);
            }
            drop(check_tx);
            writer.sync()?;
            Ok(off)
        });
        let v = s.spawn(move || -> Result<(), StreamError> {
            // The comparison covers the device from byte 0 on, gapless, whatever
            // ranges the writer reports.
            let mut next = 0u64;
            for (buf, off, n) in check_rx {
                if off != next {
                    return Err(StreamError::Slot(io::Error::other(format!(
                        "read-back out of order: range at {off}, expected {next}"
                    ))));
                }
                events.before_read_back(off, n);
                let got = reader.read_at(off, n).map_err(StreamError::Slot)?;
                if got != &buf[..n] {
                    let i = got.iter().zip(&buf[..n]).position(|(a, b)| a != b);
                    return Err(StreamError::Mismatch {
                        at: off + i.unwrap_or(0) as u64,
                    });
                }
                // Room for every buffer; gone only if the filler stopped.
                let _ = free_tx.send(buf);
                next += n as u64;
                events.read_back(next);
            }
            Ok(())
        });
        let filled = loop {
            // No free buffer means the verifier has stopped.
            let Ok(mut buf) = free_rx.recv() else {
                break Ok(());
            };
            match fill(src, &mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    if write_tx.send((buf, n)).is_err() {
                        break Ok(());
                    }
                }
                Err(e) => break Err(e),
            }
        };
        drop(write_tx);
        // The verifier may wait for a buffer the filler no longer takes back.
        drop(free_rx);
        let panicked = |what| io::Error::other(format!("the slot {what} thread panicked"));
        let written = w.join().unwrap_or_else(|_| Err(panicked("writer")));
        let checked = v
            .join()
            .unwrap_or_else(|_| Err(StreamError::Slot(panicked("read-back"))));
        filled.map_err(StreamError::Source)?;
        checked?;
        written.map_err(StreamError::Slot)
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    struct Quiet;

    impl StreamEvents for Quiet {
        fn written(&self, _: u64) {}
        fn read_back(&self, _: u64) {}
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 253) as u8 ^ 0x3C).collect()
    }

    /// Every length around the block and buffer edges lands exactly and the
    /// rest of the slot stays as it was: with `O_DIRECT` and with the buffered
    /// stand-in.
    #[test]
    fn round_trips_direct_and_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slot");
        let size = 2 * CHUNK + 3 * ALIGN;
        let before = vec![0xA5u8; size];
        for direct in [true, false] {
            for len in [1, 511, ALIGN, ALIGN + 1, CHUNK - 1, CHUNK, CHUNK + 1, size] {
                std::fs::write(&path, &before).unwrap();
                let data = pattern(len);
                let mut dev = SlotDevice::new(&path);
                dev.direct = direct;
                let n = write_and_read_back(&dev, &mut &data[..], &Quiet).unwrap();
                let what = format!("direct={direct} len={len}");
                assert_eq!(n, len as u64, "{what}");
                let after = std::fs::read(&path).unwrap();
                assert!(after[..len] == data[..], "{what}: payload");
                assert!(after[len..] == before[len..], "{what}: past the payload");
            }
        }
    }

    /// A byte the device returns other than written is found at its offset,
    /// in the first range, a later one and the unaligned tail, with `O_DIRECT`
    /// and buffered; the ranges after it are not compared as good.
    #[test]
    fn a_changed_byte_is_found_where_it_is() {
        struct Corrupt<'a> {
            path: &'a Path,
            at: u64,
            read_back: std::sync::atomic::AtomicU64,
        }
        impl StreamEvents for Corrupt<'_> {
            fn written(&self, _: u64) {}
            fn before_read_back(&self, off: u64, len: usize) {
                if (off..off + len as u64).contains(&self.at) {
                    let f = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(self.path)
                        .unwrap();
                    let mut b = [0u8];
                    f.read_exact_at(&mut b, self.at).unwrap();
                    f.write_all_at(&[!b[0]], self.at).unwrap();
                }
            }
            fn read_back(&self, done: u64) {
                self.read_back
                    .store(done, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slot");
        let len = 2 * CHUNK + 700;
        let data = pattern(len);
        for direct in [true, false] {
            for at in [0, ALIGN as u64 + 3, CHUNK as u64 + 5, len as u64 - 1] {
                std::fs::write(&path, vec![0u8; 3 * CHUNK]).unwrap();
                let mut dev = SlotDevice::new(&path);
                dev.direct = direct;
                let ev = Corrupt {
                    path: &path,
                    at,
                    read_back: Default::default(),
                };
                let what = format!("direct={direct} at={at}");
                match write_and_read_back(&dev, &mut &data[..], &ev) {
                    Err(StreamError::Mismatch { at: found }) => assert_eq!(found, at, "{what}"),
                    other => panic!("{what}: expected a mismatch: {other:?}"),
                }
                let good = ev.read_back.load(std::sync::atomic::Ordering::SeqCst);
                assert!(good <= at, "{what}: read back as good up to {good}");
            }
        }
    }

    /// A source that fails midway is the source's error, not the slot's.
    #[test]
    fn a_failing_source_is_told_apart() {
        struct Breaks(usize);
        impl Read for Breaks {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "bad bundle"));
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(1);
                self.0 -= n;
                Ok(n)
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slot");
        std::fs::write(&path, vec![0u8; 3 * CHUNK]).unwrap();
        match write_and_read_back(&SlotDevice::new(&path), &mut Breaks(CHUNK + 5), &Quiet) {
            Err(StreamError::Source(e)) => assert!(e.to_string().contains("bad bundle"), "{e}"),
            other => panic!("expected the source's error: {other:?}"),
        }
    }

    /// A slot that cannot be opened is the slot's error, naming it.
    #[test]
    fn a_slot_that_cannot_be_opened_is_the_slots_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = SlotDevice::new(dir.path().join("none"));
        match write_and_read_back(&missing, &mut &b"x"[..], &Quiet) {
            Err(StreamError::Slot(e)) => assert!(e.to_string().contains("none"), "{e}"),
            other => panic!("expected the slot's error: {other:?}"),
        }
    }
}
