//! Link-layer frames on AF_PACKET sockets (CAP_NET_RAW): who answers for an
//! address (RFC 5227 ARP probe, DAD-style neighbour solicitation), and the
//! announcements after a takeover (gratuitous ARP, unsolicited neighbour
//! advertisement). Blocking calls: the engine runs them on a blocking thread.
//!
//! Each socket carries a classic BPF filter, so the kernel queues only frames a
//! probe can use (ARP replies and announcements, neighbour advertisements) and
//! drops the rest of the segment's ARP and IPv6 traffic in softirq, instead of
//! waking nobody and filling the socket's buffer between probes.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const BROADCAST: [u8; 6] = [0xff; 6];
const ICMPV6_NS: u8 = 135;
const ICMPV6_NA: u8 = 136;

/// One interface, as the frames need it.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub index: u32,
    pub mac: [u8; 6],
}

struct PacketSocket {
    fd: OwnedFd,
    link: Link,
    proto: u16,
}

impl PacketSocket {
    fn open(link: Link, proto: u16, filter: &[libc::sock_filter]) -> io::Result<Self> {
        // Protocol 0: the socket receives nothing until `bind` names one, so no
        // frame reaches it before its filter is attached.
        // SAFETY: plain socket(2); the descriptor is owned right after.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr().cast_mut(),
        };
        // SAFETY: `prog` points at `filter`, valid for the call; the kernel copies it.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&prog as *const libc::sock_fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let sll = sockaddr_ll(link, proto, &[0; 6]);
        // SAFETY: `sll` is a valid sockaddr_ll of the size given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let s = Self { fd, link, proto };
        // Whatever was queued before the filter held (nothing, with protocol 0 at
        // socket(2); kept in case a kernel ever queues earlier) goes unread.
        s.drain()?;
        Ok(s)
    }

    /// Discards every queued frame; returns how many incoming ones there were.
    fn drain(&self) -> io::Result<usize> {
        let mut buf = [0u8; 1600];
        let mut n = 0;
        while self.recv_now(&mut buf)?.is_some() {
            n += 1;
        }
        Ok(n)
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        let sll = sockaddr_ll(self.link, self.proto, &frame[0..6]);
        // SAFETY: valid buffer and address of the given sizes.
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The next queued incoming frame (not one this host sent); `None` when the
    /// queue is empty.
    fn recv_now(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            // SAFETY: zeroed sockaddr_ll is a valid out-parameter.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: valid buffer and out-parameters of the given sizes.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => return Ok(None),
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(e),
                }
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            return Ok(Some(n as usize));
        }
    }
}

// Classic BPF (linux/filter.h): offsets are from the start of the Ethernet header.
const LD_H: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16;
const LD_B: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
const LD_W: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JEQ_X: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_X) as u16;
const TAX: u16 = (libc::BPF_MISC | libc::BPF_TAX) as u16;
const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

const fn op(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// A jump: `jt` / `jf` count the instructions skipped.
const fn jeq(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

const ACCEPT: libc::sock_filter = op(RET, u32::MAX);
const DROP: libc::sock_filter = op(RET, 0);

/// ARP replies (what a probe's target answers) and announcements (requests whose
/// sender and target address are the same: gratuitous ARP, e.g. a peer's takeover
/// racing this probe). Requests that merely resolve an address, the bulk of a
/// segment's ARP, are dropped.
const ARP_FILTER: [libc::sock_filter; 11] = [
    op(LD_H, 12),                     // 0: ethertype
    jeq(JEQ, ETH_P_ARP as u32, 0, 8), // 1: ARP, else drop
    op(LD_H, 20),                     // 2: opcode
    jeq(JEQ, 2, 5, 0),                // 3: reply: accept
    jeq(JEQ, 1, 0, 5),                // 4: request, else drop
    op(LD_W, 28),                     // 5: sender IPv4 address
    op(TAX, 0),                       // 6
    op(LD_W, 38),                     // 7: target IPv4 address
    jeq(JEQ_X, 0, 0, 1),              // 8: the same: accept, else drop
    ACCEPT,                           // 9
    DROP,                             // 10
];

/// Neighbour advertisements: IPv6 whose next header is ICMPv6 (neighbour
/// discovery carries no extension headers), hop limit 255 (RFC 4861: sent
/// on-link), ICMPv6 type 136.
const ND_FILTER: [libc::sock_filter; 10] = [
    op(LD_H, 12),                      // 0: ethertype
    jeq(JEQ, ETH_P_IPV6 as u32, 0, 7), // 1: IPv6, else drop
    op(LD_B, 20),                      // 2: next header
    jeq(JEQ, 58, 0, 5),                // 3: ICMPv6, else drop
    op(LD_B, 21),                      // 4: hop limit
    jeq(JEQ, 255, 0, 3),               // 5: 255, else drop
    op(LD_B, 54),                      // 6: ICMPv6 type
    jeq(JEQ, ICMPV6_NA as u32, 0, 1),  // 7: advertisement: accept, else drop
    ACCEPT,                            // 8
    DROP,                              // 9
];

fn sockaddr_ll(link: Link, proto: u16, dst: &[u8]) -> libc::sockaddr_ll {
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto.to_be();
    sll.sll_ifindex = link.index as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&dst[..6]);
    sll
}

fn ethernet(dst: [u8; 6], src: [u8; 6], proto: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(90);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&proto.to_be_bytes());
    f
}

/// An ARP request from `mac`; `sender` 0.0.0.0 makes it an RFC 5227 probe (no
/// cache anywhere learns from it), `sender == target` a gratuitous ARP.
fn arp_request(mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = ethernet(BROADCAST, mac, ETH_P_ARP);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// The IPv4 address an ARP frame claims (its sender), if it is ARP for IPv4.
fn arp_sender(f: &[u8]) -> Option<Ipv4Addr> {
    if f.len() < 42 || f[12..14] != ETH_P_ARP.to_be_bytes() || f[14..20] != [0, 1, 8, 0, 6, 4] {
        return None;
    }
    let spa = Ipv4Addr::new(f[28], f[29], f[30], f[31]);
    (!spa.is_unspecified()).then_some(spa)
}

fn solicited_node(t: Ipv6Addr) -> Ipv6Addr {
    let o = t.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

fn multicast_mac(ip: Ipv6Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

fn checksum_icmpv6(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from(c[0]) << 8
            };
            sum += u32::from(w);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(icmp.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(icmp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv6_icmp(
    mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    mut icmp: Vec<u8>,
) -> Vec<u8> {
    let c = checksum_icmpv6(src, dst, &icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = ethernet(dst_mac, mac, ETH_P_IPV6);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&icmp);
    f
}

/// Duplicate-address-detection style solicitation: from `::`, so nobody learns
/// anything from it, and an owner answers to all-nodes.
fn dad_solicitation(mac: [u8; 6], target: Ipv6Addr) -> Vec<u8> {
    let dst = solicited_node(target);
    let mut icmp = vec![ICMPV6_NS, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&target.octets());
    ipv6_icmp(mac, multicast_mac(dst), Ipv6Addr::UNSPECIFIED, dst, icmp)
}

/// Unsolicited advertisement with the override flag: neighbours replace the old
/// link-layer address of `target` with `mac`.
fn unsolicited_advert(mac: [u8; 6], target: Ipv6Addr) -> Vec<u8> {
    let dst = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut icmp = vec![ICMPV6_NA, 0, 0, 0, 0x20, 0, 0, 0];
    icmp.extend_from_slice(&target.octets());
    icmp.extend_from_slice(&[2, 1]);
    icmp.extend_from_slice(&mac);
    ipv6_icmp(mac, multicast_mac(dst), target, dst, icmp)
}

/// The target of a neighbour advertisement, if `f` is one (no extension headers:
/// neighbour discovery never carries any).
fn advert_target(f: &[u8]) -> Option<Ipv6Addr> {
    if f.len() < 14 + 40 + 24 || f[12..14] != ETH_P_IPV6.to_be_bytes() || f[14 + 6] != 58 {
        return None;
    }
    let icmp = &f[54..];
    if icmp[0] != ICMPV6_NA {
        return None;
    }
    Some(Ipv6Addr::from(<[u8; 16]>::try_from(&icmp[8..24]).ok()?))
}

/// The open packet sockets of one interface. Opened once: binding an AF_PACKET
/// socket (and closing one) waits for an RCU grace period, 10-20 ms on a busy
/// box, which a probe per takeover cannot afford.
pub struct Prober {
    link: Link,
    arp: PacketSocket,
    nd: PacketSocket,
}

impl Prober {
    pub fn open(link: Link) -> io::Result<Self> {
        Ok(Self {
            link,
            arp: PacketSocket::open(link, ETH_P_ARP, &ARP_FILTER)?,
            nd: PacketSocket::open(link, ETH_P_IPV6, &ND_FILTER)?,
        })
    }

    pub fn link(&self) -> Link {
        self.link
    }

    /// Sends probes for every target at the start and half-way through `wait`,
    /// and returns which targets answered. Returns early once all have. Frames
    /// queued before the call are discarded (old answers prove nothing now).
    pub fn probe(&self, targets: &[IpAddr], wait: Duration) -> io::Result<Vec<bool>> {
        let link = self.link;
        let mut answered = vec![false; targets.len()];
        let socks = [(&self.arp, true), (&self.nd, false)];
        let mut buf = [0u8; 1600];
        self.drain()?;
        let send_all = || -> io::Result<()> {
            for t in targets {
                let r = match t {
                    IpAddr::V4(a) => {
                        self.arp
                            .send(&arp_request(link.mac, Ipv4Addr::UNSPECIFIED, *a))
                    }
                    IpAddr::V6(a) => self.nd.send(&dad_solicitation(link.mac, *a)),
                };
                // A link without carrier refuses to send: nothing can answer then.
                match r {
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENETDOWN | libc::ENXIO)) => {}
                    other => other?,
                }
            }
            Ok(())
        };
        let start = Instant::now();
        let (half, end) = (start + wait / 2, start + wait);
        let mut resent = false;
        send_all()?;
        loop {
            // Drain before looking at the clock: answers that arrived while this
            // thread waited for a CPU still count.
            for (s, is_arp) in &socks {
                while let Some(n) = s.recv_now(&mut buf)? {
                    let f = &buf[..n];
                    let claimed = if *is_arp {
                        arp_sender(f).map(IpAddr::V4)
                    } else {
                        advert_target(f).map(IpAddr::V6)
                    };
                    for (i, t) in targets.iter().enumerate() {
                        if claimed == Some(*t) {
                            answered[i] = true;
                        }
                    }
                }
            }
            if answered.iter().all(|a| *a) {
                break;
            }
            let now = Instant::now();
            if now >= end {
                break;
            }
            if !resent && now >= half {
                send_all()?;
                resent = true;
            }
            let until = if resent { end } else { half };
            let ms = until
                .saturating_duration_since(now)
                .as_millis()
                .clamp(1, 10_000) as i32;
            let mut pfds: Vec<libc::pollfd> = socks
                .iter()
                .map(|(s, _)| libc::pollfd {
                    fd: s.fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: a valid array of pollfds of the given length.
            let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
        Ok(answered)
    }

    /// Discards what the sockets queued since the last probe (the filter lets
    /// only answers and announcements through) and returns how many frames the
    /// ARP and the IPv6 socket held.
    pub fn drain(&self) -> io::Result<[usize; 2]> {
        Ok([self.arp.drain()?, self.nd.drain()?])
    }

    /// Tells the segment that `addrs` now live at this interface's MAC.
    pub fn announce(&self, addrs: &[IpAddr]) -> io::Result<()> {
        for a in addrs {
            match a {
                IpAddr::V4(v4) => self.arp.send(&arp_request(self.link.mac, *v4, *v4))?,
                IpAddr::V6(v6) => self.nd.send(&unsolicited_advert(self.link.mac, *v6))?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a filter of the instructions above over a frame, as the kernel does
    /// (a load past the end drops the frame).
    fn run(filter: &[libc::sock_filter], f: &[u8]) -> bool {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        loop {
            let i = filter[pc];
            let k = i.k as usize;
            pc += 1;
            let load = |n: usize| {
                f.get(k..k + n)
                    .map(|b| b.iter().fold(0u32, |v, c| v << 8 | u32::from(*c)))
            };
            match i.code {
                LD_B | LD_H | LD_W => {
                    let n = [(LD_B, 1), (LD_H, 2), (LD_W, 4)]
                        .iter()
                        .find(|(c, _)| *c == i.code)
                        .unwrap()
                        .1;
                    match load(n) {
                        Some(v) => a = v,
                        None => return false,
                    }
                }
                TAX => x = a,
                JEQ | JEQ_X => {
                    let y = if i.code == JEQ { i.k } else { x };
                    pc += usize::from(if a == y { i.jt } else { i.jf });
                }
                RET => return i.k != 0,
                c => panic!("instruction {c:#x} not in this interpreter"),
            }
        }
    }

    #[test]
    fn the_filters_pass_answers_and_announcements_only() {
        let mac = [2, 0, 0, 0, 0, 1];
        let (a, b) = (Ipv4Addr::new(192, 0, 2, 10), Ipv4Addr::new(192, 0, 2, 1));
        let mut reply = arp_request(mac, a, b);
        reply[21] = 2;
        assert!(run(&ARP_FILTER, &reply), "ARP reply");
        assert!(run(&ARP_FILTER, &arp_request(mac, a, a)), "gratuitous ARP");
        assert!(
            !run(&ARP_FILTER, &arp_request(mac, b, a)),
            "a request resolving an address"
        );
        assert!(
            !run(&ARP_FILTER, &arp_request(mac, Ipv4Addr::UNSPECIFIED, a)),
            "a probe"
        );
        let mut other = reply.clone();
        other[21] = 3; // RARP request
        assert!(!run(&ARP_FILTER, &other));
        // The filter sorts, the parser validates: a short reply passes here and
        // is refused by `arp_sender`; a short request cannot be compared.
        assert!(
            !run(&ARP_FILTER, &arp_request(mac, a, a)[..40]),
            "truncated"
        );

        let t: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let na = unsolicited_advert(mac, t);
        assert!(run(&ND_FILTER, &na), "neighbour advertisement");
        assert!(!run(&ND_FILTER, &dad_solicitation(mac, t)), "solicitation");
        let mut hop = na.clone();
        hop[21] = 64;
        assert!(!run(&ND_FILTER, &hop), "hop limit below 255: not on-link");
        let mut echo = na.clone();
        echo[54] = 128;
        assert!(!run(&ND_FILTER, &echo), "echo request");
        let mut udp = na.clone();
        udp[20] = 17;
        assert!(!run(&ND_FILTER, &udp), "UDP");
        assert!(!run(&ND_FILTER, &reply), "ARP on the IPv6 socket");
        assert!(!run(&ARP_FILTER, &na), "IPv6 on the ARP socket");
    }

    #[test]
    fn frames_have_the_expected_shape() {
        let mac = [2, 0, 0, 0, 0, 1];
        let p = arp_request(mac, Ipv4Addr::UNSPECIFIED, Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(p.len(), 42);
        assert_eq!(arp_sender(&p), None, "a probe claims no address");
        let g = arp_request(
            mac,
            Ipv4Addr::new(192, 0, 2, 10),
            Ipv4Addr::new(192, 0, 2, 10),
        );
        assert_eq!(arp_sender(&g), Some(Ipv4Addr::new(192, 0, 2, 10)));

        let t: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let ns = dad_solicitation(mac, t);
        assert_eq!(&ns[0..6], &[0x33, 0x33, 0xff, 0, 0, 0x10]);
        assert_eq!(advert_target(&ns), None);
        let na = unsolicited_advert(mac, t);
        assert_eq!(advert_target(&na), Some(t));
        // A correct checksum sums (with the pseudo-header) to 0xffff: recomputing
        // over the filled-in message gives zero.
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(&na[22..38]).unwrap());
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&na[38..54]).unwrap());
        assert_eq!(checksum_icmpv6(src, dst, &na[54..]), 0);
    }
}
