//! `keelctl netd-reload` (root, started by keel-netd-reload.path): carries out what
//! keel-netd (unprivileged, no D-Bus) asked for in its reload request. Only fixed
//! actions run, whatever the file says: restart networkd, restart resolved, set the
//! kernel hostname from netd's hostname file, filtered again.
//!
//! The directory (`/run/keel/netd`) is netd's: a compromised netd can put links,
//! FIFOs or huge files there. Root therefore opens nothing there that is not a small
//! regular file of netd's (or root's), and never through a link — else netd could
//! point `hostname` at a root-only file and have its first line become the hostname.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use nix::fcntl::OFlag;

/// The request: words `networkd`, `resolved`, `hostname`, one a line.
pub const REQUEST: &str = "reload-request";
/// Renamed to this while it is carried out: a request written meanwhile is a new
/// file, and a new run.
pub const TAKEN: &str = "reload-request.taken";
/// The host name netd wants (one line).
pub const HOSTNAME: &str = "hostname";
/// Far more than netd writes to either file (three words; one host name).
pub const MAX_SIZE: u64 = 4096;
/// The kernel takes at most this many bytes (HOST_NAME_MAX).
const HOSTNAME_MAX: usize = 64;

/// Where the actions go; tests substitute a temp file and a recorder.
pub struct Reload<'a> {
    /// netd's runtime directory.
    pub dir: PathBuf,
    /// The service user whose files are read there (root's are too).
    pub owner_uid: u32,
    /// `/proc/sys/kernel/hostname`.
    pub kernel_hostname: PathBuf,
    /// Runs `systemctl` with these arguments.
    pub systemctl: &'a mut dyn FnMut(&[&str]) -> anyhow::Result<()>,
}

/// Opens a file that a service wrote, for root to read: not through a link
/// (`O_NOFOLLOW`), without blocking on a FIFO (`O_NONBLOCK`), and only if what was
/// opened (fstat) is a regular file with one name, owned by `owner_uid` or root, of
/// at most `max` bytes. Returns its content.
pub fn read_service_file(path: &Path, owner_uid: u32, max: u64) -> anyhow::Result<Vec<u8>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits())
        .open(path)
        .map_err(|e| {
            // ELOOP is what O_NOFOLLOW answers for a link.
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                anyhow::anyhow!("{}: refused: a symbolic link", path.display())
            } else {
                anyhow::Error::new(e).context(format!("opening {}", path.display()))
            }
        })?;
    check_opened(&file, path, owner_uid, max)?;
    let mut bytes = Vec::new();
    // The file may grow after the check: never read more than `max` + 1.
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > max {
        bail!("{}: refused: larger than {max} bytes", path.display());
    }
    Ok(bytes)
}

fn check_opened(file: &File, path: &Path, owner_uid: u32, max: u64) -> anyhow::Result<()> {
    let meta = file
        .metadata()
        .with_context(|| format!("fstat {}", path.display()))?;
    let refuse = |why: String| anyhow::anyhow!("{}: refused: {why}", path.display());
    if !meta.file_type().is_file() {
        return Err(refuse("not a regular file".into()));
    }
    if meta.uid() != 0 && meta.uid() != owner_uid {
        return Err(refuse(format!(
            "owned by uid {}, not {owner_uid} or root",
            meta.uid()
        )));
    }
    // A second name: a hard link to a file that lives elsewhere.
    if meta.nlink() != 1 {
        return Err(refuse(format!("{} hard links", meta.nlink())));
    }
    if meta.len() > max {
        return Err(refuse(format!("{} bytes, more than {max}", meta.len())));
    }
    Ok(())
}

/// The host name as the shell version took it: the first 64 bytes, then only
/// letters, digits, dots and dashes.
pub fn filter_hostname(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(HOSTNAME_MAX)
        .filter(|b| b.is_ascii_alphanumeric() || **b == b'.' || **b == b'-')
        .map(|b| char::from(*b))
        .collect()
}

/// Takes the request and carries it out. Every word is tried; the error names
/// all that failed or was refused.
pub fn run(r: Reload<'_>) -> anyhow::Result<()> {
    let request = r.dir.join(REQUEST);
    let taken = r.dir.join(TAKEN);
    // rename acts on the directory entry itself, never on a link's target.
    match std::fs::rename(&request, &taken) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("taking {}", request.display())),
    }
    let content = read_service_file(&taken, r.owner_uid, MAX_SIZE);
    // unlink does not follow links either.
    if let Err(e) = std::fs::remove_file(&taken) {
        eprintln!("removing {}: {e}", taken.display());
    }
    let content = content?;
    let mut words: Vec<&str> = Vec::new();
    let text = String::from_utf8_lossy(&content);
    for w in text.split_whitespace() {
        if !words.contains(&w) {
            words.push(w);
        }
    }
    let mut failed = Vec::new();
    for w in words {
        let done = match w {
            "networkd" => (r.systemctl)(&["try-restart", "systemd-networkd.service"]),
            "resolved" => (r.systemctl)(&["try-restart", "systemd-resolved.service"]),
            "hostname" => set_hostname(&r),
            other => {
                eprintln!("ignoring unknown reload request {other:?}");
                Ok(())
            }
        };
        if let Err(e) = done {
            eprintln!("{w}: {e:#}");
            failed.push(format!("{w}: {e:#}"));
        }
    }
    if !failed.is_empty() {
        bail!("netd reload incomplete: {}", failed.join("; "));
    }
    Ok(())
}

fn set_hostname(r: &Reload<'_>) -> anyhow::Result<()> {
    let path = r.dir.join(HOSTNAME);
    let bytes = match read_service_file(&path, r.owner_uid, MAX_SIZE) {
        Ok(b) => b,
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound) =>
        {
            // As before: no file, no change.
            eprintln!("{}: missing, hostname left as it is", path.display());
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let name = filter_hostname(&bytes);
    if name.is_empty() {
        return Ok(());
    }
    std::fs::write(&r.kernel_hostname, name.as_bytes())
        .with_context(|| format!("writing {}", r.kernel_hostname.display()))?;
    println!("hostname set to {name}");
    Ok(())
}

/// `systemctl ARGS…`, waiting for it (as the shell version did).
pub fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new("systemctl")
        .args(args)
        .status()
        .context("running systemctl")?;
    if !status.success() {
        bail!("systemctl {} failed: {status}", args.join(" "));
    }
    Ok(())
}

/// The uid of a service user (`keel-netd`).
pub fn uid_of(user: &str) -> anyhow::Result<u32> {
    nix::unistd::User::from_name(user)
        .with_context(|| format!("looking up user {user}"))?
        .map(|u| u.uid.as_raw())
        .with_context(|| format!("no user {user}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Fixture {
        dir: tempfile::TempDir,
        calls: Vec<String>,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("netd")).unwrap();
            std::fs::write(dir.path().join("kernel-hostname"), b"old").unwrap();
            Self {
                dir,
                calls: Vec::new(),
            }
        }

        fn netd(&self, name: &str) -> PathBuf {
            self.dir.path().join("netd").join(name)
        }

        fn kernel_hostname(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("kernel-hostname")).unwrap()
        }

        fn run(&mut self) -> anyhow::Result<()> {
            let calls = &mut self.calls;
            let mut systemctl = |args: &[&str]| {
                calls.push(args.join(" "));
                Ok(())
            };
            run(Reload {
                dir: self.dir.path().join("netd"),
                owner_uid: nix::unistd::getuid().as_raw(),
                kernel_hostname: self.dir.path().join("kernel-hostname"),
                systemctl: &mut systemctl,
            })
        }
    }

    #[test]
    fn regular_files_do_what_they_say() {
        let mut f = Fixture::new();
        std::fs::write(f.netd(HOSTNAME), b"box-1.example\n").unwrap();
        std::fs::write(
            f.netd(REQUEST),
            b"networkd\nresolved\nhostname\nformat-disk\n",
        )
        .unwrap();
        f.run().unwrap();
        assert_eq!(
            f.calls,
            [
                "try-restart systemd-networkd.service",
                "try-restart systemd-resolved.service"
            ]
        );
        assert_eq!(f.kernel_hostname(), "box-1.example");
        // Taken and gone; nothing to do without a request.
        assert!(!f.netd(REQUEST).exists() && !f.netd(TAKEN).exists());
        f.run().unwrap();
        assert_eq!(f.calls.len(), 2);
    }

    #[test]
    fn the_hostname_is_filtered_as_before() {
        assert_eq!(filter_hostname(b"a b;c$(x)\n"), "abcx");
        assert_eq!(filter_hostname(&[b'h'; 100]).len(), 64);
        let mut f = Fixture::new();
        std::fs::write(f.netd(HOSTNAME), b";;\n").unwrap();
        std::fs::write(f.netd(REQUEST), b"hostname\n").unwrap();
        f.run().unwrap();
        assert_eq!(f.kernel_hostname(), "old");
    }

    #[test]
    fn a_linked_hostname_is_not_read() {
        let mut f = Fixture::new();
        // The setup code of a root-only file would pass the hostname filter.
        let secret = f.dir.path().join("root-only");
        std::fs::write(&secret, b"ABCD-EFGH-JKLM\n").unwrap();
        symlink(&secret, f.netd(HOSTNAME)).unwrap();
        std::fs::write(f.netd(REQUEST), b"hostname\nnetworkd\n").unwrap();
        let err = f.run().unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(f.kernel_hostname(), "old");
        // The other words are still carried out.
        assert_eq!(f.calls, ["try-restart systemd-networkd.service"]);
    }

    #[test]
    fn a_linked_request_is_not_read() {
        let mut f = Fixture::new();
        let elsewhere = f.dir.path().join("elsewhere");
        std::fs::write(&elsewhere, b"networkd\n").unwrap();
        symlink(&elsewhere, f.netd(REQUEST)).unwrap();
        let err = f.run().unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(f.calls.is_empty());
        // The link is gone, its target untouched.
        assert!(!f.netd(TAKEN).exists() && !f.netd(REQUEST).exists());
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"networkd\n");
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let mut f = Fixture::new();
        nix::unistd::mkfifo(
            &f.netd(HOSTNAME),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        std::fs::write(f.netd(REQUEST), b"hostname\n").unwrap();
        // A blocking open would wait for a writer forever: run it on a thread.
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let r = f.run().map_err(|e| e.to_string());
            tx.send((r, f.kernel_hostname())).unwrap();
        });
        let (result, hostname) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("netd-reload blocked on a FIFO");
        handle.join().unwrap();
        let err = result.unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
        assert_eq!(hostname, "old");

        let mut f = Fixture::new();
        nix::unistd::mkfifo(
            &f.netd(REQUEST),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let err = f.run().unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        assert!(f.calls.is_empty());
    }

    #[test]
    fn oversized_files_are_refused() {
        let mut f = Fixture::new();
        let mut big = b"networkd\n".to_vec();
        big.resize(MAX_SIZE as usize + 1, b' ');
        std::fs::write(f.netd(REQUEST), &big).unwrap();
        let err = f.run().unwrap_err().to_string();
        assert!(err.contains("more than"), "{err}");
        assert!(f.calls.is_empty());

        let mut f = Fixture::new();
        let mut big = b"big\n".to_vec();
        big.resize(MAX_SIZE as usize + 1, b'a');
        std::fs::write(f.netd(HOSTNAME), &big).unwrap();
        std::fs::write(f.netd(REQUEST), b"hostname\n").unwrap();
        assert!(f.run().is_err());
        assert_eq!(f.kernel_hostname(), "old");
    }

    #[test]
    fn hard_links_and_strangers_files_are_refused() {
        let mut f = Fixture::new();
        let outside = f.dir.path().join("outside");
        std::fs::write(&outside, b"stolen\n").unwrap();
        std::fs::hard_link(&outside, f.netd(HOSTNAME)).unwrap();
        std::fs::write(f.netd(REQUEST), b"hostname\n").unwrap();
        let err = f.run().unwrap_err().to_string();
        assert!(err.contains("hard links"), "{err}");
        assert_eq!(f.kernel_hostname(), "old");

        // Another user's file (only root can make one here).
        let mut f = Fixture::new();
        std::fs::write(f.netd(HOSTNAME), b"other\n").unwrap();
        let stranger = nix::unistd::Uid::from_raw(4242);
        if nix::unistd::chown(&f.netd(HOSTNAME), Some(stranger), None).is_ok() {
            std::fs::write(f.netd(REQUEST), b"hostname\n").unwrap();
            let err = f.run().unwrap_err().to_string();
            assert!(err.contains("owned by uid 4242"), "{err}");
            assert_eq!(f.kernel_hostname(), "old");
        }
    }

    #[test]
    fn a_failed_restart_fails_the_run() {
        let f = Fixture::new();
        std::fs::write(f.netd(REQUEST), b"networkd\n").unwrap();
        let mut systemctl = |_: &[&str]| -> anyhow::Result<()> { bail!("exit status: 1") };
        let err = run(Reload {
            dir: f.dir.path().join("netd"),
            owner_uid: nix::unistd::getuid().as_raw(),
            kernel_hostname: f.dir.path().join("kernel-hostname"),
            systemctl: &mut systemctl,
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("networkd: exit status: 1"), "{err}");
    }
}
