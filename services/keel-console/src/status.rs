//! Facts about the running system for *Status › Basics*, read from the kernel.

use std::net::IpAddr;

use keel_api::{InterfaceAddress, ProcessMemory};

/// Active root slot from `keel.slot=` on the kernel command line.
pub fn slot_from_cmdline(cmdline: &str) -> String {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("keel.slot="))
        .unwrap_or("unknown")
        .to_owned()
}

/// Whether `/` is mounted read-only, from a mountinfo table (last mount on `/` wins).
pub fn root_readonly(mountinfo: &str) -> bool {
    mountinfo
        .lines()
        .rev()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(4) == Some(&"/")).then(|| fields.get(5).copied().unwrap_or(""))
        })
        .next()
        .is_some_and(|opts| opts.split(',').any(|o| o == "ro"))
}

pub fn uptime_seconds(proc_uptime: &str) -> u64 {
    proc_uptime
        .split_whitespace()
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .map(|f| f as u64)
        .unwrap_or(0)
}

/// Every address on every interface but loopback, in CIDR form.
pub fn addresses() -> Vec<InterfaceAddress> {
    let mut out = Vec::new();
    let Ok(ifaddrs) = nix::ifaddrs::getifaddrs() else {
        return out;
    };
    for ifa in ifaddrs {
        let (Some(addr), Some(mask)) = (ifa.address, ifa.netmask) else {
            continue;
        };
        let pair = if let (Some(a), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
            Some((IpAddr::V4(a.ip()), IpAddr::V4(m.ip())))
        } else if let (Some(a), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
            Some((IpAddr::V6(a.ip()), IpAddr::V6(m.ip())))
        } else {
            None
        };
        let Some((ip, mask)) = pair else { continue };
        if ip.is_loopback() {
            continue;
        }
        if let Ok(net) = ipnetwork::IpNetwork::with_netmask(ip, mask) {
            out.push(InterfaceAddress {
                interface: ifa.interface_name.clone(),
                address: format!("{}/{}", ip, net.prefix()),
            });
        }
    }
    out
}

/// What tells a [`Watched`] value that it may have changed.
enum Events {
    /// rtnetlink multicast groups (address and link changes).
    Netlink(std::os::fd::OwnedFd),
    /// inotify on a directory (its files written, renamed, removed).
    Files(nix::sys::inotify::Inotify),
    /// Nothing to listen to: every use reads the value again.
    None,
}

impl Events {
    fn addresses() -> nix::Result<Self> {
        use nix::sys::socket::{
            bind, socket, AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType,
        };
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        let groups = (nix::libc::RTMGRP_LINK
            | nix::libc::RTMGRP_IPV4_IFADDR
            | nix::libc::RTMGRP_IPV6_IFADDR) as u32;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &NetlinkAddr::new(0, groups),
        )?;
        Ok(Self::Netlink(fd))
    }

    fn files_in(dir: &std::path::Path) -> nix::Result<Self> {
        use nix::sys::inotify::{AddWatchFlags as F, InitFlags, Inotify};
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        inotify.add_watch(
            dir,
            F::IN_CLOSE_WRITE
                | F::IN_MODIFY
                | F::IN_CREATE
                | F::IN_DELETE
                | F::IN_MOVED_TO
                | F::IN_MOVED_FROM
                | F::IN_DELETE_SELF
                | F::IN_MOVE_SELF,
        )?;
        Ok(Self::Files(inotify))
    }

    /// Whether anything was announced since the last call (drained; a full queue
    /// counts as a change: events were lost). At most `DRAIN_READS` reads: a source
    /// that never runs dry (a directory written all the time) is a change, not a
    /// request that never ends.
    fn changed(&self) -> bool {
        use nix::errno::Errno;
        const DRAIN_READS: usize = 16;
        match self {
            Events::None => true,
            Events::Netlink(fd) => {
                let mut buf = [0u8; 8192];
                let mut changed = false;
                for _ in 0..DRAIN_READS {
                    match nix::sys::socket::recv(
                        std::os::fd::AsRawFd::as_raw_fd(fd),
                        &mut buf,
                        nix::sys::socket::MsgFlags::MSG_DONTWAIT,
                    ) {
                        Ok(0) => return true,
                        Ok(_) | Err(Errno::ENOBUFS) => changed = true,
                        Err(Errno::EINTR) => {}
                        Err(Errno::EAGAIN) => return changed,
                        Err(_) => return true,
                    }
                }
                true
            }
            Events::Files(inotify) => {
                let mut changed = false;
                for _ in 0..DRAIN_READS {
                    match inotify.read_events() {
                        Ok(events) if events.is_empty() => return changed,
                        Ok(_) => changed = true,
                        Err(Errno::EINTR) => {}
                        Err(Errno::EAGAIN) => return changed,
                        Err(_) => return true,
                    }
                }
                true
            }
        }
    }
}

/// A value read again only after the kernel announced a change: the event source
/// is drained (one non-blocking read) before each use, so a monitoring poll of
/// `/status` reads no netlink dump and no file, and a takeover by keel-failover,
/// a change by netd or a trial's end shows at once.
pub struct Watched<T> {
    events: Events,
    read: fn() -> T,
    /// The value and its version (counts the reads).
    value: std::sync::Mutex<Option<(u64, T)>>,
}

impl<T: Clone> Watched<T> {
    /// Subscribed before the first read, so no change can fall between the two.
    fn new(events: nix::Result<Events>, what: &str, read: fn() -> T) -> Self {
        let events = events.unwrap_or_else(|e| {
            tracing::warn!("no change events for {what} ({e}): read per request");
            Events::None
        });
        Self {
            events,
            read,
            value: std::sync::Mutex::new(None),
        }
    }

    /// `f` of the value as it is now and its version (another version: another
    /// value).
    fn with<R>(&self, f: impl FnOnce(u64, &T) -> R) -> R {
        let mut value = self.value.lock().unwrap_or_else(|p| p.into_inner());
        // Drained before the read: an event after it is still queued for the next.
        if self.events.changed() || value.is_none() {
            let version = value.as_ref().map_or(1, |(v, _)| v + 1);
            *value = Some((version, (self.read)()));
        }
        let (v, t) = value.as_ref().expect("read above");
        f(*v, t)
    }

    /// The value as it is now, with its version: one drain of the event source
    /// for both (a version and a value taken apart could straddle a change).
    pub fn current(&self) -> (u64, T) {
        self.with(|v, t| (v, t.clone()))
    }

    pub fn get(&self) -> T {
        self.with(|_, t| t.clone())
    }
}

/// What `/status` reads live on every request (see `AppState::live`), and its
/// last answer encoded.
#[derive(Default)]
pub struct Live {
    pub addresses: AddressWatch,
    pub boot: BootWatch,
    answer: std::sync::Mutex<Option<(AnswerKey, axum::body::Bytes)>>,
}

/// Everything an encoded `/status` answer was made from: the same key, the same
/// bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AnswerKey {
    /// Which kept status (`Reused::kept_serial`).
    pub status: u64,
    pub unix_second: i64,
    pub uptime_seconds: u64,
    pub addresses: u64,
    pub boot: u64,
}

impl Live {
    /// The answer encoded for `key`, if it was the last one made.
    pub fn answer(&self, key: &AnswerKey) -> Option<axum::body::Bytes> {
        match &*self.answer.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((k, bytes)) if k == key => Some(bytes.clone()),
            _ => None,
        }
    }

    pub fn keep_answer(&self, key: AnswerKey, bytes: axum::body::Bytes) {
        *self.answer.lock().unwrap_or_else(|p| p.into_inner()) = Some((key, bytes));
    }
}

/// The kernel's addresses (see [`addresses`]), watched over rtnetlink.
pub type AddressWatch = Watched<Vec<InterfaceAddress>>;

impl Default for AddressWatch {
    fn default() -> Self {
        Self::new(Events::addresses(), "addresses", addresses)
    }
}

/// The boot state file (see [`crate::boot::read`]), watched in its directory.
pub type BootWatch = Watched<Option<keel_api::BootState>>;

impl Default for BootWatch {
    fn default() -> Self {
        let file = crate::boot::state_file();
        let dir = file.parent().unwrap_or(std::path::Path::new("/"));
        Self::new(Events::files_in(dir), "the boot state", crate::boot::read)
    }
}

/// Seconds since boot (CLOCK_BOOTTIME, the clock of /proc/uptime): no file read.
pub fn uptime_now() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec().max(0) as u64)
        .unwrap_or_else(|_| uptime_seconds(&read_trimmed("/proc/uptime")))
}

/// Addresses worth putting in a certificate or a console URL: not loopback and,
/// for IPv6, not link-local (a URL with a zone index works in no browser).
pub fn reachable_ips(addrs: &[InterfaceAddress]) -> Vec<IpAddr> {
    addrs
        .iter()
        .filter_map(|a| a.address.split('/').next()?.parse::<IpAddr>().ok())
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !v4.is_loopback(),
            IpAddr::V6(v6) => !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80,
        })
        .collect()
}

pub fn console_url(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("https://{v4}/appliance"),
        IpAddr::V6(v6) => format!("https://[{v6}]/appliance"),
    }
}

/// Resident memory of every Keel process (name starting with `keel`).
pub fn keel_processes() -> Vec<ProcessMemory> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // `comm` is one short read; the whole `status` only for keel processes (the
        // box runs ~100 others, kernel threads included, on every status request).
        let is_keel =
            std::fs::read(entry.path().join("comm")).is_ok_and(|c| c.starts_with(b"keel"));
        if !is_keel {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        if let Some(p) = parse_proc_status(pid, &status) {
            out.push(p);
        }
    }
    out.sort_by_key(|p| p.pid);
    out
}

fn parse_proc_status(pid: u32, status: &str) -> Option<ProcessMemory> {
    let mut name = None;
    let mut rss = 0;
    let mut peak = 0;
    let kib = |v: &str| v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("Name:") {
            name = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("VmRSS:") {
            rss = kib(v);
        } else if let Some(v) = line.strip_prefix("VmHWM:") {
            peak = kib(v);
        }
    }
    let name = name.filter(|n| n.starts_with("keel"))?;
    Some(ProcessMemory {
        name,
        pid,
        rss_kib: rss,
        peak_rss_kib: peak,
    })
}

/// Total and free bytes of the filesystem at `path`.
pub fn filesystem_bytes(path: &std::path::Path) -> (u64, u64) {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => {
            let frag = s.fragment_size();
            (s.blocks() * frag, s.blocks_available() * frag)
        }
        Err(_) => (0, 0),
    }
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A Unix time in RFC 3339, whole seconds (`2026-12-01T18:00:00Z`).
pub fn rfc3339(unix_second: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_second)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

pub fn unix_second_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

pub fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The status, reused for up to `STATUS_TTL` and until the next change made
/// through the console (`Reused::invalidate`): computing it walks /proc and reads
/// grubenv, statvfs and the certificate store (the addresses are read each time),
/// which made `/status` 60× slower than `/health` under a monitoring poll. A change
/// through any other front end shows within the TTL.
pub type StatusCache = Reused<keel_api::Status>;

/// How old a reused status may be.
pub const STATUS_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// A value made at most once per `STATUS_TTL` and per invalidation.
pub struct Reused<T> {
    /// When made, the generation it was made in, its serial, the value.
    entry: std::sync::Mutex<Option<(std::time::Instant, u64, u64, T)>>,
    changes: std::sync::atomic::AtomicU64,
    made: std::sync::atomic::AtomicU64,
}

impl<T: Clone> Reused<T> {
    pub const fn new() -> Self {
        Self {
            entry: std::sync::Mutex::new(None),
            changes: std::sync::atomic::AtomicU64::new(0),
            made: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `f` of the value kept and its serial, if it is still good.
    fn with_kept<R>(&self, f: impl FnOnce(u64, &T) -> R) -> Option<R> {
        let generation = self.changes.load(std::sync::atomic::Ordering::Acquire);
        let entry = self.entry.lock().unwrap_or_else(|p| p.into_inner());
        match &*entry {
            Some((at, g, serial, v)) if *g == generation && at.elapsed() < STATUS_TTL => {
                Some(f(*serial, v))
            }
            _ => None,
        }
    }

    /// The value kept, if it is still good.
    pub fn kept(&self) -> Option<T> {
        self.with_kept(|_, v| v.clone())
    }

    /// Which value is kept, if one is still good (each value made has its own).
    pub fn kept_serial(&self) -> Option<u64> {
        self.with_kept(|serial, _| serial)
    }

    /// The value kept, or `make`'s when it is too old or invalidated since.
    pub fn get(&self, make: impl FnOnce() -> T) -> T {
        use std::sync::atomic::Ordering;
        let generation = self.changes.load(Ordering::Acquire);
        let now = std::time::Instant::now();
        {
            let entry = self.entry.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, g, _, v)) = &*entry {
                if *g == generation && now.duration_since(*at) < STATUS_TTL {
                    return v.clone();
                }
            }
        }
        // Made outside the lock: concurrent misses each compute, none waits. A
        // value made across an invalidation carries the generation from before
        // it, so it is not reused.
        let fresh = make();
        let serial = self.made.fetch_add(1, Ordering::AcqRel) + 1;
        *self.entry.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((now, generation, serial, fresh.clone()));
        fresh
    }

    /// The next `get` makes the value anew.
    pub fn invalidate(&self) {
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl<T: Clone> Default for Reused<T> {
    fn default() -> Self {
        Self::new()
    }
}

pub use keel_core::release::{os_release_version, running_version};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_reused_until_invalidated_or_its_ttl() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let cache = Reused::<u32>::new();
        let made = AtomicU32::new(0);
        let make = || made.fetch_add(1, Ordering::SeqCst) + 1;
        assert_eq!(cache.kept(), None);
        assert_eq!(cache.get(make), 1);
        assert_eq!(cache.get(make), 1, "reused within the TTL");
        assert_eq!(cache.kept(), Some(1));
        let first = cache.kept_serial().expect("kept");
        cache.invalidate();
        assert_eq!(cache.kept_serial(), None);
        assert_eq!(cache.kept(), None, "not after a change");
        assert_eq!(cache.get(make), 2, "made anew after a change");
        assert_ne!(
            cache.kept_serial(),
            Some(first),
            "another value, another serial"
        );
        std::thread::sleep(STATUS_TTL);
        assert_eq!(cache.get(make), 3, "made anew after the TTL");
    }

    /// The boot state's watch: each kind of write to a file in the directory is
    /// announced once, and nothing else.
    #[test]
    fn file_events_announce_writes_renames_and_removals() {
        let dir = tempfile::tempdir().unwrap();
        let events = Events::files_in(dir.path()).unwrap();
        assert!(!events.changed(), "nothing yet");
        let file = dir.path().join("state.json");
        std::fs::write(&file, b"{}").unwrap();
        assert!(events.changed(), "written");
        assert!(!events.changed(), "drained");
        keel_core::store::write_atomic(&file, b"{\"a\":1}", 0o644).unwrap();
        assert!(events.changed(), "replaced by a rename");
        let _ = std::fs::read(&file).unwrap();
        assert!(!events.changed(), "a read is no change");
        std::fs::remove_file(&file).unwrap();
        assert!(events.changed(), "removed");
    }

    /// In a network namespace of its own (this thread only): an address added or
    /// removed by `ip` shows in the very next read, with no read in between.
    #[test]
    fn the_address_list_follows_the_kernel_at_once() {
        std::thread::spawn(|| {
            if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                eprintln!("skipped: no network namespace ({e}; needs root)");
                return;
            }
            let ip = |args: &str| {
                let ok = std::process::Command::new("ip")
                    .args(args.split_whitespace())
                    .status()
                    .expect("ip runs")
                    .success();
                assert!(ok, "ip {args}");
            };
            let watch = AddressWatch::default();
            assert!(
                matches!(watch.events, Events::Netlink(_)),
                "subscribed to address events"
            );
            let has = |w: &AddressWatch, a: &str| w.get().iter().any(|x| x.address == a);
            assert!(!has(&watch, "192.0.2.9/24"));
            // Loopback: the one device every kernel has (no dummy module here).
            ip("link set lo up");
            ip("address add 192.0.2.9/24 dev lo");
            assert!(has(&watch, "192.0.2.9/24"), "added: {:?}", watch.get());
            assert_eq!(watch.get(), watch.get(), "unchanged: the same list");
            let (version, list) = watch.current();
            assert_eq!(
                watch.current(),
                (version, list),
                "unchanged: no new version"
            );
            ip("address del 192.0.2.9/24 dev lo");
            let (after, list) = watch.current();
            assert!(after > version, "a change is a new version");
            assert!(
                !list.iter().any(|x| x.address == "192.0.2.9/24"),
                "removed: {list:?}"
            );
        })
        .join()
        .expect("the namespace test passed");
    }

    #[test]
    fn slot_and_readonly_root() {
        assert_eq!(
            slot_from_cmdline("root=PARTLABEL=root-b ro keel.slot=b quiet"),
            "b"
        );
        assert_eq!(slot_from_cmdline("quiet"), "unknown");
        let mi = "22 1 0:21 / / ro,relatime shared:1 - squashfs /dev/vda3 ro\n\
                  23 22 0:22 / /data rw,relatime shared:2 - ext4 /dev/vda5 rw\n";
        assert!(root_readonly(mi));
        let rw = "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n";
        assert!(!root_readonly(rw));
        // An overlay mounted over / later decides.
        assert!(!root_readonly(&format!(
            "{mi}30 22 0:30 / / rw - overlay o rw\n"
        )));
    }

    #[test]
    fn this_machine_has_sane_facts() {
        // Real /proc of the test host: the values must parse, not be defaults.
        assert!(uptime_seconds(&read_trimmed("/proc/uptime")) > 0);
        assert!(!read_trimmed("/proc/sys/kernel/osrelease").is_empty());
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(mi.lines().any(|l| l.split_whitespace().nth(4) == Some("/")));
    }

    #[test]
    fn proc_status_parsing() {
        let s = "Name:\tkeel-console\nUmask:\t0022\nVmHWM:\t   20480 kB\nVmRSS:\t    9123 kB\n";
        assert_eq!(
            parse_proc_status(7, s),
            Some(ProcessMemory {
                name: "keel-console".into(),
                pid: 7,
                rss_kib: 9123,
                peak_rss_kib: 20480,
            })
        );
        assert_eq!(parse_proc_status(7, "Name:\tsshd\nVmRSS:\t1 kB\n"), None);
    }

    #[test]
    fn urls_skip_link_local_v6() {
        let addrs = vec![
            InterfaceAddress {
                interface: "e".into(),
                address: "10.0.2.15/24".into(),
            },
            InterfaceAddress {
                interface: "e".into(),
                address: "fe80::1/64".into(),
            },
            InterfaceAddress {
                interface: "e".into(),
                address: "2001:db8::2/64".into(),
            },
        ];
        let urls: Vec<String> = reachable_ips(&addrs).into_iter().map(console_url).collect();
        assert_eq!(
            urls,
            vec![
                "https://10.0.2.15/appliance",
                "https://[2001:db8::2]/appliance"
            ]
        );
    }
}
