//! A private L2 segment for VMs that must see each other (a failover pair): a Linux
//! bridge inside a network namespace this harness creates, one tap per VM on it,
//! and the host itself as an observer on the bridge. The observer is a real client
//! on the segment: it reaches addresses only the guests hold (a shared IP after a
//! takeover), which QEMU's user network cannot forward to.
//!
//! Needs root (network namespaces, taps). Each tap is opened inside the namespace
//! and handed to QEMU as an open file descriptor, so QEMU itself runs in the host's
//! namespace, where its user-network port forwards stay on the host's loopback.
//! The taps are not persistent: they vanish with their last descriptor, and the
//! namespace with the `Segment`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use keel_certs::pinning::FingerprintVerifier;

static SEGMENTS: AtomicU32 = AtomicU32::new(0);

/// The bridge inside the namespace.
const BRIDGE: &str = "seg";

pub struct Segment {
    netns: String,
    /// The observer's address on the bridge, CIDR form.
    observer: String,
    taps: AtomicU32,
}

/// A tap on the segment, opened for one VM; QEMU gets it as `-netdev tap,fd=N`.
pub struct SegmentNic {
    pub(crate) fd: OwnedFd,
    /// Guest-side MAC, distinct per VM of the segment.
    pub mac: String,
}

impl Segment {
    /// A new namespace (named after this process, so parallel runs never share
    /// one) with the bridge up and `observer_cidr` (e.g. `198.51.100.1/24`) on it.
    pub fn new(observer_cidr: &str) -> Result<Self> {
        let n = SEGMENTS.fetch_add(1, Ordering::Relaxed);
        let netns = format!("keel-seg-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &netns]).context("a network namespace (needs root)")?;
        let seg = Segment {
            netns,
            observer: observer_cidr.into(),
            taps: AtomicU32::new(0),
        };
        seg.ip(&["link", "set", "lo", "up"])?;
        seg.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        seg.ip(&["addr", "add", observer_cidr, "dev", BRIDGE])?;
        seg.ip(&["link", "set", BRIDGE, "up"])?;
        Ok(seg)
    }

    /// `new`, or `None` (with the reason printed) when the test should be skipped:
    /// not root. With `KEEL_QEMU_TESTS=1` that is a failure, as in `image_or_skip`.
    pub fn new_or_skip(observer_cidr: &str) -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            let why = "a private segment needs root (network namespace, taps)";
            if std::env::var("KEEL_QEMU_TESTS").is_ok_and(|v| v == "1") {
                panic!("KEEL_QEMU_TESTS=1 but {why}");
            }
            eprintln!("SKIPPED: {why}; set KEEL_QEMU_TESTS=1 to make this a failure");
            return None;
        }
        Some(Self::new(observer_cidr).expect("the private segment"))
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The observer's address (without the prefix length).
    pub fn observer_ip(&self) -> &str {
        self.observer.split('/').next().unwrap_or(&self.observer)
    }

    /// `ip -n NETNS ARGS...`, failing with its stderr.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.netns.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A tap on the bridge for one more VM; its guest MAC is derived from the
    /// tap's number (locally administered, QEMU's 52:54:00 prefix).
    pub fn nic(&self) -> Result<SegmentNic> {
        let n = self.taps.fetch_add(1, Ordering::Relaxed);
        let name = format!("tap{n}");
        let fd = self.in_netns(|| open_tap(&name))??;
        self.ip(&["link", "set", &name, "master", BRIDGE])?;
        self.ip(&["link", "set", &name, "up"])?;
        Ok(SegmentNic {
            fd,
            mac: format!("52:54:00:5e:00:{:02x}", n + 0x10),
        })
    }

    /// Runs `f` on a thread that has joined the namespace: sockets it opens are
    /// on the segment. The calling thread's namespace is untouched.
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        in_netns(&self.netns, f)
    }

    /// GET `https://{addr}{path}` from the observer: status, body, and the DER of
    /// the certificate the server presented (recorded, not verified: the test
    /// compares it itself).
    pub async fn https_get(&self, addr: &str, path: &str) -> Result<(u16, String, Vec<u8>)> {
        let url = format!("https://{addr}{path}");
        // The namespace is per thread: a current-thread runtime on a thread inside
        // it opens the connection there (an IP literal: nothing is resolved).
        let netns = self.netns.clone();
        tokio::task::spawn_blocking(move || {
            in_netns(&netns, || -> Result<(u16, String, Vec<u8>)> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    let verifier = FingerprintVerifier::record_any();
                    let client = reqwest::Client::builder()
                        .use_preconfigured_tls(verifier.client_config())
                        .timeout(Duration::from_secs(10))
                        .pool_max_idle_per_host(0)
                        .build()?;
                    let resp = client.get(&url).send().await?;
                    let status = resp.status().as_u16();
                    let body = resp.text().await?;
                    let der = verifier
                        .seen_der()
                        .ok_or_else(|| anyhow::anyhow!("no certificate seen"))?;
                    Ok((status, body, der))
                })
            })?
        })
        .await?
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "delete", &self.netns]);
    }
}

/// Runs `f` on a new thread that joined network namespace `netns` (by name).
fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = format!("/run/netns/{netns}");
    let ns = std::fs::File::open(&path).with_context(|| path.clone())?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this thread only, with a namespace fd we hold open.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread inside {path} panicked"))?
    })
}

fn run(cmd: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| cmd.to_owned())?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Creates tap `name` in the calling thread's network namespace (TUNSETIFF) and
/// returns its descriptor (close-on-exec: only the QEMU it is handed to gets it).
fn open_tap(name: &str) -> Result<OwnedFd> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TAP: libc::c_short = 0x0002;
    const IFF_NO_PI: libc::c_short = 0x1000;
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    // SAFETY: plain open(2); the result is checked before it is owned.
    let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("/dev/net/tun");
    }
    // SAFETY: `raw` is a descriptor we just opened and nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI,
        _pad: [0; 22],
    };
    if name.len() >= libc::IFNAMSIZ {
        bail!("tap name {name:?} too long");
    }
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which IfReq lays out.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("TUNSETIFF {name}"));
    }
    Ok(fd)
}
