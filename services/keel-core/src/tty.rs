//! Local terminals (tty1, the serial line) for the banner and technician prompts.
//!
//! A serial port whose modem lines show no carrier blocks `open()` until one
//! appears, unless CLOCAL is set — and nothing sets it when the kernel runs quiet
//! and no getty owns the port. So: open non-blocking, without becoming the
//! controlling terminal, set CLOCAL, then switch back to blocking I/O.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::termios::{tcgetattr, tcsetattr, ControlFlags, SetArg};

/// Opens a terminal for reading and writing without waiting for carrier.
pub fn open(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits())
        .open(path)?;
    // Not every path is a terminal (tests pass plain files): then leave it be.
    if let Ok(mut t) = tcgetattr(file.as_fd()) {
        t.control_flags |= ControlFlags::CLOCAL;
        let _ = tcsetattr(file.as_fd(), SetArg::TCSANOW, &t);
    }
    let flags = fcntl(file.as_raw_fd(), FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    let mut flags = OFlag::from_bits_truncate(flags);
    flags.remove(OFlag::O_NONBLOCK);
    fcntl(file.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(std::io::Error::from)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    #[test]
    fn plain_files_open_too() {
        let f = tempfile::NamedTempFile::new().unwrap();
        use std::io::Write;
        super::open(f.path()).unwrap().write_all(b"x").unwrap();
        assert_eq!(std::fs::read(f.path()).unwrap(), b"x");
    }
}
