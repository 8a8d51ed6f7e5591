//! Validation of a proposed configuration, before anything touches the kernel.
//! Every message names the field (`interfaces[0].addresses[1]`, `gateway4`, ...)
//! so the console can show it beside the input and keelctl users can find it.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use keel_api::{AddressMode, NetConfig, NetLink, VLAN_ID_MAX, VLAN_ID_MIN};

use crate::kernel::KernelVlan;

pub const MAX_INTERFACES: usize = 64;
pub const MAX_ADDRESSES: usize = 64;
pub const MAX_ROUTES: usize = 256;
pub const MAX_DNS_SERVERS: usize = 8;
pub const MAX_SEARCH_DOMAINS: usize = 8;
/// Same limit as keel-timed's own list: more only slow the check down.
pub const MAX_NTP_SERVERS: usize = 16;
/// The kernel allows 64 bytes (`__NEW_UTS_LEN`); a DNS label allows 63.
pub const MAX_HOSTNAME: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// All the problems found in one configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError(pub Vec<FieldError>);

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|e| e.to_string()).collect();
        f.write_str(&parts.join("; "))
    }
}

impl ValidationError {
    pub fn fields(&self) -> Vec<&str> {
        self.0.iter().map(|e| e.field.as_str()).collect()
    }
}

struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// A subnet some enabled interface is connected to through a configured address.
struct Connected {
    net: IpNetwork,
    address: IpAddr,
    iface: usize,
}

fn network_of(n: &IpNetwork) -> IpNetwork {
    IpNetwork::new(n.network(), n.prefix()).expect("prefix of a valid network")
}

fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Normalizes a MAC to lowercase `aa:bb:cc:dd:ee:ff`; `None` if it is not one.
pub fn normalize_mac(mac: &str) -> Option<String> {
    let parts: Vec<&str> = mac.split([':', '-']).collect();
    if parts.len() != 6
        || !parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return None;
    }
    Some(parts.join(":").to_ascii_lowercase())
}

/// The kernel's limit on interface names (`IFNAMSIZ` less the NUL).
pub const MAX_IFNAME: usize = 15;

/// Kernel interface names: 1–15 bytes, no `/`, no whitespace, not `.` or `..`.
fn interface_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

/// RFC 1123 host/domain name: labels of letters, digits and inner hyphens; the
/// last label not all digits (it would read as an address).
pub fn is_domain_name(name: &str, max_len: usize) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    !name.is_empty()
        && name.len() <= max_len
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && !labels
            .last()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

/// `host`, `host:port`, `1.2.3.4`, `2001:db8::1`, `[2001:db8::1]:123`, as keel-timed
/// accepts them (it reads the list netd writes).
pub fn ntp_server_ok(s: &str) -> bool {
    if s.parse::<IpAddr>().is_ok() {
        return true;
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return sa.port() != 0;
    }
    let (host, port_ok) = match s.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().is_ok_and(|p| p != 0)),
        None => (s, true),
    };
    port_ok && is_domain_name(host, 253)
}

fn usable_host_address(a: &IpNetwork) -> Result<(), String> {
    let ip = a.ip();
    if a.prefix() == 0 {
        return Err(format!("{a}: a /0 prefix is not an interface address"));
    }
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
        return Err(format!("{a}: not usable as an interface address"));
    }
    if let (IpNetwork::V4(n), IpAddr::V4(v4)) = (a, ip) {
        if v4.is_broadcast() {
            return Err(format!("{a}: not usable as an interface address"));
        }
        if n.prefix() < 31 && v4 == n.network() {
            return Err(format!(
                "{a}: is the network address of {}/{}; use a host address",
                n.network(),
                n.prefix()
            ));
        }
        if n.prefix() < 31 && v4 == n.broadcast() {
            return Err(format!("{a}: is the broadcast address of its subnet"));
        }
    }
    Ok(())
}

/// Checks `cfg` against the links the kernel has (`vlans`: those of them that are
/// VLANs); returns it normalized (MACs and names lowercased, NTP entries trimmed) or
/// every problem found.
pub fn validate(
    cfg: &NetConfig,
    links: &[NetLink],
    vlans: &[KernelVlan],
) -> Result<NetConfig, ValidationError> {
    let mut out = cfg.clone();
    let mut e = Errors(Vec::new());

    if cfg.interfaces.len() > MAX_INTERFACES {
        e.add("interfaces", format!("at most {MAX_INTERFACES} interfaces"));
    }
    let known: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
    // VLAN links netd is to create: interfaces by these names need not exist yet.
    let vlan_names: Vec<String> = cfg.vlans.iter().map(|v| v.link_name()).collect();
    let mut connected: Vec<Connected> = Vec::new();
    // (address, field) of every address seen, to catch duplicates across interfaces.
    let mut seen: Vec<(IpAddr, String)> = Vec::new();

    for (i, iface) in cfg.interfaces.iter().enumerate() {
        let f = format!("interfaces[{i}]");
        let name = iface.name.as_str();
        if !interface_name_ok(name) {
            e.add(
                format!("{f}.name"),
                format!("{name:?} is not an interface name"),
            );
        } else if name == "lo" {
            e.add(
                format!("{f}.name"),
                "the loopback interface is not configurable",
            );
        } else if cfg.interfaces[..i].iter().any(|o| o.name == iface.name) {
            e.add(
                format!("{f}.name"),
                format!("interface {name} is listed twice"),
            );
        }
        let is_vlan = vlan_names.contains(&iface.name);
        let link = links.iter().find(|l| l.name == iface.name);
        if interface_name_ok(name) && name != "lo" && link.is_none() && !is_vlan {
            let by_mac = iface
                .mac
                .as_deref()
                .and_then(normalize_mac)
                .and_then(|m| links.iter().find(|l| l.mac == m));
            let hint = match by_mac {
                Some(l) => format!(" (that MAC belongs to {})", l.name),
                None => format!(" (the appliance has: {})", known.join(", ")),
            };
            e.add(
                format!("{f}.name"),
                format!("unknown interface {name:?}{hint}"),
            );
        }
        if let (Some(_), true) = (&iface.mac, is_vlan) {
            e.add(
                format!("{f}.mac"),
                format!("{name} is a VLAN: it takes its parent's MAC; pin the MAC on the parent"),
            );
        } else if let Some(mac) = &iface.mac {
            match normalize_mac(mac) {
                None => e.add(
                    format!("{f}.mac"),
                    format!("{mac:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"),
                ),
                Some(m) => {
                    if let Some(l) = link {
                        if l.mac != m {
                            e.add(
                                format!("{f}.mac"),
                                format!("{name} has MAC {}, not {m}", l.mac),
                            );
                        }
                    }
                    out.interfaces[i].mac = Some(m);
                }
            }
        }
        if let Some(mtu) = iface.mtu {
            if !(68..=65535).contains(&mtu) {
                e.add(format!("{f}.mtu"), format!("{mtu} is outside 68–65535"));
            } else if mtu < 1280 && iface.addresses.iter().any(|a| a.is_ipv6()) {
                e.add(
                    format!("{f}.mtu"),
                    format!("{mtu} is below 1280, the minimum for IPv6"),
                );
            }
        }
        if iface.addresses.len() > MAX_ADDRESSES {
            e.add(
                format!("{f}.addresses"),
                format!("at most {MAX_ADDRESSES} addresses per interface"),
            );
        }
        let all = iface
            .addresses
            .iter()
            .enumerate()
            .map(|(j, a)| (format!("{f}.addresses[{j}]"), a))
            .chain(
                iface
                    .shared_address
                    .iter()
                    .map(|a| (format!("{f}.shared_address"), a)),
            );
        for (field, a) in all {
            if let Err(m) = usable_host_address(a) {
                e.add(&field, m);
                continue;
            }
            if let Some((_, other)) = seen.iter().find(|(ip, _)| *ip == a.ip()) {
                e.add(
                    &field,
                    format!("duplicate address {}: also in {other}", a.ip()),
                );
                continue;
            }
            seen.push((a.ip(), field.clone()));
            if field.ends_with("shared_address") || !iface.enabled {
                continue;
            }
            let net = network_of(a);
            // Two interfaces on one subnet make the kernel's route choice arbitrary.
            // Link-local subnets are per link by definition and may repeat.
            if !is_link_local(a.ip()) {
                if let Some(c) = connected
                    .iter()
                    .find(|c| c.iface != i && overlaps(&c.net, &net))
                {
                    e.add(
                        &field,
                        format!(
                            "subnet {net} overlaps {} on {}",
                            c.net, cfg.interfaces[c.iface].name
                        ),
                    );
                }
            }
            connected.push(Connected {
                net,
                address: a.ip(),
                iface: i,
            });
        }
    }

    check_vlans(cfg, links, vlans, &vlan_names, &mut e);

    // The console must keep at least one way in.
    let reachable = cfg.interfaces.iter().any(|i| {
        i.enabled
            && interface_name_ok(&i.name)
            && (i.mode == AddressMode::Dhcp || !i.addresses.is_empty())
    });
    if !reachable {
        e.add(
            "interfaces",
            "this change leaves the console with no address: keep at least one enabled \
             interface with DHCP or a static address",
        );
    }

    let enabled: Vec<usize> = (0..cfg.interfaces.len())
        .filter(|&i| cfg.interfaces[i].enabled)
        .collect();
    let describe_connected = |v4: bool| -> String {
        let nets: Vec<String> = connected
            .iter()
            .filter(|c| c.net.is_ipv4() == v4)
            .map(|c| format!("{} on {}", c.net, cfg.interfaces[c.iface].name))
            .collect();
        if nets.is_empty() {
            "no static subnet of that family is configured; DHCP interfaces get their gateway from DHCP".into()
        } else {
            format!("connected: {}", nets.join(", "))
        }
    };
    // Where a next hop is reachable: the interface of the subnet containing it.
    let next_hop = |gw: IpAddr, via: Option<&str>| -> Result<(), String> {
        if gw.is_unspecified() || gw.is_multicast() || gw.is_loopback() {
            return Err(format!("{gw} cannot be a gateway"));
        }
        if connected.iter().any(|c| c.address == gw) {
            return Err(format!("{gw} is one of the appliance's own addresses"));
        }
        if is_link_local(gw) && gw.is_ipv6() {
            return match via {
                Some(_) => Ok(()),
                None if enabled.len() == 1 => Ok(()),
                None => Err(format!(
                    "{gw} is link-local: with several interfaces, name the interface"
                )),
            };
        }
        let hit = connected
            .iter()
            .find(|c| c.net.contains(gw) && via.is_none_or(|v| cfg.interfaces[c.iface].name == v));
        match hit {
            Some(_) => Ok(()),
            None => Err(format!(
                "{gw} is outside every connected subnet{} ({})",
                via.map(|v| format!(" of {v}")).unwrap_or_default(),
                describe_connected(gw.is_ipv4())
            )),
        }
    };
    if let Some(gw) = cfg.gateway4 {
        if let Err(m) = next_hop(IpAddr::V4(gw), None) {
            e.add("gateway4", m);
        }
    }
    if let Some(gw) = cfg.gateway6 {
        if let Err(m) = next_hop(IpAddr::V6(gw), None) {
            e.add("gateway6", m);
        }
    }

    if cfg.routes.len() > MAX_ROUTES {
        e.add("routes", format!("at most {MAX_ROUTES} routes"));
    }
    for (k, r) in cfg.routes.iter().enumerate() {
        let f = format!("routes[{k}]");
        let d = &r.destination;
        if d.ip() != d.network() {
            e.add(
                format!("{f}.destination"),
                format!(
                    "{d} has host bits set: did you mean {}/{}?",
                    d.network(),
                    d.prefix()
                ),
            );
        }
        if d.prefix() == 0 {
            e.add(
                format!("{f}.destination"),
                "a default route: set gateway4 / gateway6 instead",
            );
        }
        if d.is_ipv4() != r.gateway.is_ipv4() {
            e.add(
                format!("{f}.gateway"),
                format!("{} and {d} are of different IP families", r.gateway),
            );
            continue;
        }
        if let Some(via) = &r.interface {
            if !cfg.interfaces.iter().any(|i| i.name == *via && i.enabled) {
                e.add(
                    format!("{f}.interface"),
                    format!("{via:?} is not an enabled interface of this configuration"),
                );
                continue;
            }
        }
        if let Err(m) = next_hop(r.gateway, r.interface.as_deref()) {
            e.add(format!("{f}.gateway"), m);
        }
        if cfg.routes[..k]
            .iter()
            .any(|o| network_of(&o.destination) == network_of(d) && o.metric == r.metric)
        {
            e.add(
                format!("{f}.destination"),
                format!("a route to {d} with this metric is listed twice"),
            );
        }
    }

    if cfg.dns.servers.len() > MAX_DNS_SERVERS {
        e.add(
            "dns.servers",
            format!("at most {MAX_DNS_SERVERS} DNS servers"),
        );
    }
    for (k, s) in cfg.dns.servers.iter().enumerate() {
        if s.is_unspecified() || s.is_multicast() {
            e.add(
                format!("dns.servers[{k}]"),
                format!("{s} cannot be a DNS server"),
            );
        } else if cfg.dns.servers[..k].contains(s) {
            e.add(format!("dns.servers[{k}]"), format!("{s} is listed twice"));
        }
    }
    if cfg.dns.search.len() > MAX_SEARCH_DOMAINS {
        e.add(
            "dns.search",
            format!("at most {MAX_SEARCH_DOMAINS} search domains"),
        );
    }
    for (k, d) in cfg.dns.search.iter().enumerate() {
        if !is_domain_name(d, 253) {
            e.add(
                format!("dns.search[{k}]"),
                format!("{d:?} is not a domain name"),
            );
        }
        out.dns.search[k] = d.to_ascii_lowercase();
    }

    if !is_domain_name(&cfg.hostname, MAX_HOSTNAME) {
        e.add(
            "hostname",
            format!(
                "{:?} is not a valid host name (letters, digits, inner hyphens and dots, at most {MAX_HOSTNAME} characters)",
                cfg.hostname.chars().take(80).collect::<String>()
            ),
        );
    }
    out.hostname = cfg.hostname.to_ascii_lowercase();

    let mut ntp: Vec<String> = Vec::new();
    for (k, s) in cfg.ntp_servers.iter().enumerate() {
        let t = s.trim();
        if t.is_empty() || ntp.iter().any(|o| o == t) {
            continue;
        }
        if !ntp_server_ok(t) {
            e.add(
                format!("ntp_servers[{k}]"),
                format!(
                    "{:?} is not a host name or IP address (optionally with :port)",
                    t.chars().take(80).collect::<String>()
                ),
            );
        }
        ntp.push(t.to_owned());
    }
    if ntp.len() > MAX_NTP_SERVERS {
        e.add(
            "ntp_servers",
            format!("at most {MAX_NTP_SERVERS} NTP servers"),
        );
    }
    out.ntp_servers = ntp;

    if e.0.is_empty() {
        Ok(out)
    } else {
        Err(ValidationError(e.0))
    }
}

/// VLANs: ID, parent, name, their interface entry, and what the kernel has already.
fn check_vlans(
    cfg: &NetConfig,
    links: &[NetLink],
    kernel: &[KernelVlan],
    names: &[String],
    e: &mut Errors,
) {
    if cfg.vlans.len() > MAX_INTERFACES {
        e.add("vlans", format!("at most {MAX_INTERFACES} VLANs"));
    }
    let ports: Vec<&str> = cfg
        .interfaces
        .iter()
        .map(|i| i.name.as_str())
        .filter(|n| !names.iter().any(|v| v == n))
        .collect();
    for (k, v) in cfg.vlans.iter().enumerate() {
        let f = format!("vlans[{k}]");
        let name = &names[k];
        let id_ok = (VLAN_ID_MIN..=VLAN_ID_MAX).contains(&v.id);
        if !id_ok {
            e.add(
                format!("{f}.id"),
                format!(
                    "{} is outside {VLAN_ID_MIN}–{VLAN_ID_MAX} (802.1Q reserves 0 and 4095)",
                    v.id
                ),
            );
        } else if let Some(o) = cfg.vlans[..k]
            .iter()
            .position(|o| o.parent == v.parent && o.id == v.id)
        {
            e.add(
                format!("{f}.id"),
                format!(
                    "VLAN {} on {} is listed twice (also vlans[{o}])",
                    v.id, v.parent
                ),
            );
        }

        let parent = cfg.interfaces.iter().position(|i| i.name == v.parent);
        let parent_is_vlan = names.contains(&v.parent)
            || links
                .iter()
                .any(|l| l.name == v.parent && l.kind.as_deref() == Some("vlan"));
        if parent_is_vlan {
            e.add(
                format!("{f}.parent"),
                format!(
                    "{} is itself a VLAN; a VLAN goes on a port (stacked VLANs are not supported)",
                    v.parent
                ),
            );
        } else if parent.is_none() {
            e.add(
                format!("{f}.parent"),
                format!(
                    "unknown parent {:?}: not an interface of this configuration (interfaces: {})",
                    v.parent,
                    ports.join(", ")
                ),
            );
        }

        let name_field = format!("{f}.name");
        let mut name_ok = true;
        if name.len() > MAX_IFNAME {
            name_ok = false;
            let what = if v.name.is_some() {
                format!("{name:?} is")
            } else {
                format!("the default name {name:?} (<parent>.<id>) is")
            };
            e.add(
                &name_field,
                format!(
                    "{what} longer than {MAX_IFNAME} characters, the kernel's limit: set a shorter name"
                ),
            );
        } else if !interface_name_ok(name)
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            // The name goes into networkd's `Name=`, where `*`, `?` and `[` are globs
            // that would match other links.
            name_ok = false;
            e.add(
                &name_field,
                format!(
                    "{name:?} is not a VLAN name (letters, digits, '.', '-' and '_', at most {MAX_IFNAME})"
                ),
            );
        } else if let Some(o) = names[..k].iter().position(|o| o == name) {
            name_ok = false;
            e.add(
                &name_field,
                format!("{name} is already the name of vlans[{o}]"),
            );
        }

        // Links netd did not make are never taken over (nor removed later).
        let foreign = |l: &&NetLink| !kernel.iter().any(|k| k.index == l.index && k.netd);
        if let Some(l) = links.iter().filter(foreign).find(|l| l.name == *name) {
            name_ok = false;
            let what = match kernel.iter().find(|k| k.index == l.index) {
                Some(k) => format!("a VLAN ({} on {}) ", k.id, k.parent),
                None => String::new(),
            };
            e.add(
                &name_field,
                format!(
                    "{name} exists already as {what}not created by keel-netd, which leaves it alone (remove it with `ip link del {name}` first, or choose another name)"
                ),
            );
        }
        if let Some(k) = kernel
            .iter()
            .find(|k| !k.netd && k.parent == v.parent && k.id == v.id && k.name != *name)
        {
            if id_ok {
                e.add(
                    format!("{f}.id"),
                    format!(
                        "VLAN {} on {} exists already as {}, not created by keel-netd (the kernel allows one link per ID on a port)",
                        v.id, v.parent, k.name
                    ),
                );
            }
        }
        if !name_ok {
            continue;
        }

        let Some(j) = cfg.interfaces.iter().position(|i| i.name == *name) else {
            e.add(
                &f,
                format!(
                    "VLAN {name} has no entry in interfaces: add one, e.g. {{\"name\": \"{name}\", \"mode\": \"static\", \"addresses\": [...]}}"
                ),
            );
            continue;
        };
        let iface = &cfg.interfaces[j];
        let Some(p) = parent
            .filter(|_| !parent_is_vlan)
            .map(|p| &cfg.interfaces[p])
        else {
            continue;
        };
        // The kernel refuses a VLAN larger than its parent.
        let parent_mtu = p.mtu.or_else(|| {
            links
                .iter()
                .find(|l| l.name == p.name)
                .map(|l| l.mtu)
                .filter(|m| *m > 0)
        });
        if let (Some(mtu), Some(pm)) = (iface.mtu, parent_mtu) {
            if mtu > pm {
                e.add(
                    format!("interfaces[{j}].mtu"),
                    format!(
                        "{mtu} is above the MTU of {}, the parent of VLAN {name} ({pm})",
                        p.name
                    ),
                );
            }
        }
        if iface.enabled && !p.enabled {
            e.add(
                format!("interfaces[{j}].enabled"),
                format!(
                    "VLAN {name} is enabled but its parent {} is disabled: it would carry nothing",
                    p.name
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_api::{InterfaceConfig, StaticRoute, VlanConfig};

    fn link(name: &str, mac: &str) -> NetLink {
        NetLink {
            name: name.into(),
            index: 2,
            mac: mac.into(),
            kind: None,
            wired: true,
            up: true,
            mtu: 1500,
            addresses: vec![],
        }
    }

    fn links() -> Vec<NetLink> {
        vec![
            link("eth0", "52:54:00:00:00:01"),
            link("eth1", "52:54:00:00:00:02"),
        ]
    }

    fn iface(name: &str, addrs: &[&str]) -> InterfaceConfig {
        InterfaceConfig {
            name: name.into(),
            mac: None,
            enabled: true,
            mode: AddressMode::Static,
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            mtu: None,
            shared_address: None,
        }
    }

    fn good() -> NetConfig {
        NetConfig {
            interfaces: vec![
                iface("eth0", &["192.0.2.10/24", "2001:db8::10/64"]),
                iface("eth1", &["198.51.100.5/24"]),
            ],
            gateway4: Some("192.0.2.1".parse().unwrap()),
            gateway6: Some("2001:db8::1".parse().unwrap()),
            routes: vec![StaticRoute {
                destination: "10.20.0.0/16".parse().unwrap(),
                gateway: "198.51.100.1".parse().unwrap(),
                interface: None,
                metric: None,
            }],
            hostname: "Keel-1.example.org".into(),
            ntp_servers: vec![" ntp.example.org ".into(), "192.0.2.123:123".into()],
            ..NetConfig::default()
        }
    }

    /// The fields named by the errors of `cfg`.
    fn fields(cfg: &NetConfig) -> Vec<String> {
        validate(cfg, &links(), &[])
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_good_config_passes_normalized() {
        let mut c = good();
        c.interfaces[0].mac = Some("52-54-00-00-00-01".into());
        let v = validate(&c, &links(), &[]).unwrap();
        assert_eq!(v.hostname, "keel-1.example.org");
        assert_eq!(v.interfaces[0].mac.as_deref(), Some("52:54:00:00:00:01"));
        assert_eq!(v.ntp_servers, vec!["ntp.example.org", "192.0.2.123:123"]);
    }

    #[test]
    fn overlapping_subnets_on_two_interfaces() {
        let mut c = good();
        c.interfaces[1].addresses = vec!["192.0.2.200/25".parse().unwrap()];
        c.routes.clear();
        let err = validate(&c, &links(), &[]).unwrap_err();
        assert_eq!(err.fields(), ["interfaces[1].addresses[0]"], "{err}");
        assert!(
            err.to_string().contains("overlaps 192.0.2.0/24 on eth0"),
            "{err}"
        );
        // Two addresses of one subnet on one interface are fine.
        let mut c = good();
        c.interfaces[0]
            .addresses
            .push("192.0.2.11/24".parse().unwrap());
        validate(&c, &links(), &[]).unwrap();
    }

    #[test]
    fn gateway_outside_every_connected_subnet() {
        let mut c = good();
        c.gateway4 = Some("203.0.113.1".parse().unwrap());
        let err = validate(&c, &links(), &[]).unwrap_err();
        assert_eq!(err.fields(), ["gateway4"]);
        assert!(
            err.to_string().contains("outside every connected subnet"),
            "{err}"
        );
        let mut c = good();
        c.gateway6 = Some("2001:db9::1".parse().unwrap());
        assert_eq!(fields(&c), ["gateway6"]);
        let mut c = good();
        c.routes[0].gateway = "10.99.0.1".parse().unwrap();
        assert_eq!(fields(&c), ["routes[0].gateway"]);
        // A gateway that is our own address.
        let mut c = good();
        c.gateway4 = Some("192.0.2.10".parse().unwrap());
        assert_eq!(fields(&c), ["gateway4"]);
        // A disabled interface connects nothing.
        let mut c = good();
        c.interfaces[1].enabled = false;
        assert_eq!(fields(&c), ["routes[0].gateway"]);
    }

    #[test]
    fn duplicate_addresses() {
        let mut c = good();
        c.interfaces[1]
            .addresses
            .push("192.0.2.10/24".parse().unwrap());
        let err = validate(&c, &links(), &[]).unwrap_err();
        assert_eq!(err.fields(), ["interfaces[1].addresses[1]"]);
        assert!(
            err.to_string()
                .contains("also in interfaces[0].addresses[0]"),
            "{err}"
        );
        let mut c = good();
        c.interfaces[0].shared_address = Some("2001:db8::10/64".parse().unwrap());
        assert_eq!(fields(&c), ["interfaces[0].shared_address"]);
    }

    #[test]
    fn hostile_hostnames() {
        for bad in [
            "",
            "-keel",
            "keel-",
            "ke el",
            "keel;reboot",
            "keel\nroot",
            "../etc",
            "a..b",
            "x.123",
            "ké",
            &"a".repeat(64),
        ] {
            let mut c = good();
            c.hostname = bad.into();
            assert_eq!(fields(&c), ["hostname"], "{bad:?}");
        }
    }

    #[test]
    fn no_address_left_for_the_console() {
        let mut c = good();
        for i in &mut c.interfaces {
            i.enabled = false;
        }
        c.gateway4 = None;
        c.gateway6 = None;
        c.routes.clear();
        let err = validate(&c, &links(), &[]).unwrap_err();
        assert_eq!(err.fields(), ["interfaces"]);
        assert!(err.to_string().contains("no address"), "{err}");
        let c = NetConfig::default();
        assert_eq!(fields(&c), ["interfaces"]);
        // Static without addresses on every interface: same.
        let mut c = good();
        c.gateway4 = None;
        c.gateway6 = None;
        c.routes.clear();
        for i in &mut c.interfaces {
            i.addresses.clear();
            i.shared_address = Some("192.0.2.99/24".parse().unwrap());
        }
        c.interfaces[1].shared_address = None;
        assert_eq!(fields(&c), ["interfaces"]);
        // DHCP counts.
        c.interfaces[1].mode = AddressMode::Dhcp;
        validate(&c, &links(), &[]).unwrap();
    }

    #[test]
    fn malformed_cidr_is_a_json_error_naming_the_field() {
        let body =
            r#"{"interfaces":[{"name":"eth0","addresses":["10.0.0.1/24","10.0.0.300/24"]}]}"#;
        let de = &mut serde_json::Deserializer::from_str(body);
        let err = serde_path_to_error::deserialize::<_, NetConfig>(de).unwrap_err();
        assert_eq!(err.path().to_string(), "interfaces[0].addresses[1]");
    }

    #[test]
    fn unusable_addresses() {
        for bad in [
            "192.0.2.0/24",
            "192.0.2.255/24",
            "127.0.0.2/8",
            "224.0.0.5/24",
            "0.0.0.0/8",
            "ff02::1/64",
            "::/0",
            "10.0.0.1/0",
        ] {
            let mut c = good();
            c.interfaces[1].addresses = vec![bad.parse().unwrap()];
            c.routes.clear();
            assert_eq!(fields(&c), ["interfaces[1].addresses[0]"], "{bad}");
        }
        // /31 and /32 have no network or broadcast address.
        let mut c = good();
        c.interfaces[1].addresses = vec!["198.51.100.0/31".parse().unwrap()];
        c.routes[0].gateway = "198.51.100.1".parse().unwrap();
        validate(&c, &links(), &[]).unwrap();
    }

    #[test]
    fn unknown_interface_and_wrong_mac() {
        let mut c = good();
        c.interfaces[1].name = "eth7".into();
        let err = validate(&c, &links(), &[]).unwrap_err();
        assert_eq!(err.fields(), ["interfaces[1].name"]);
        assert!(
            err.to_string().contains("appliance has: eth0, eth1"),
            "{err}"
        );
        c.interfaces[1].mac = Some("52:54:00:00:00:02".into());
        let err = validate(&c, &links(), &[]).unwrap_err();
        assert!(
            err.to_string().contains("that MAC belongs to eth1"),
            "{err}"
        );
        let mut c = good();
        c.interfaces[0].mac = Some("52:54:00:00:00:02".into());
        assert_eq!(fields(&c), ["interfaces[0].mac"]);
        let mut c = good();
        c.interfaces[0].mac = Some("52:54:00:00:00".into());
        assert_eq!(fields(&c), ["interfaces[0].mac"]);
        for bad in ["", "eth0/../x", "a b", "x".repeat(16).as_str(), "lo"] {
            let mut c = good();
            c.interfaces[1].name = bad.into();
            c.routes.clear();
            assert_eq!(fields(&c), ["interfaces[1].name"], "{bad:?}");
        }
        let mut c = good();
        c.interfaces[1].name = "eth0".into();
        c.routes.clear();
        assert!(fields(&c).contains(&"interfaces[1].name".to_string()));
    }

    /// `good()` plus VLAN 100 on eth0 (static) and `guest` (VLAN 7 on eth1, DHCP).
    fn with_vlans() -> NetConfig {
        let mut c = good();
        c.interfaces.push(iface(
            "eth0.100",
            &["203.0.113.10/24", "2001:db8:100::10/64"],
        ));
        let mut guest = iface("guest", &[]);
        guest.mode = AddressMode::Dhcp;
        c.interfaces.push(guest);
        c.vlans = vec![
            VlanConfig {
                name: None,
                parent: "eth0".into(),
                id: 100,
            },
            VlanConfig {
                name: Some("guest".into()),
                parent: "eth1".into(),
                id: 7,
            },
        ];
        c
    }

    fn kvlan(name: &str, index: u32, parent: &str, id: u16, netd: bool) -> KernelVlan {
        KernelVlan {
            name: name.into(),
            index,
            parent: parent.into(),
            id,
            netd,
        }
    }

    #[test]
    fn vlans_are_interfaces_netd_creates() {
        let c = with_vlans();
        let v = validate(&c, &links(), &[]).unwrap();
        assert_eq!(v.vlans, c.vlans);
        // Routes and gateways may go out of a VLAN like out of a port.
        let mut c = with_vlans();
        c.routes[0] = StaticRoute {
            destination: "10.30.0.0/16".parse().unwrap(),
            gateway: "203.0.113.1".parse().unwrap(),
            interface: Some("eth0.100".into()),
            metric: None,
        };
        validate(&c, &links(), &[]).unwrap();
        // One that netd made earlier is fine, even with another ID: netd replaces it.
        let mut l = links();
        l.push(NetLink {
            kind: Some("vlan".into()),
            wired: false,
            index: 9,
            ..link("eth0.100", "52:54:00:00:00:01")
        });
        validate(
            &with_vlans(),
            &l,
            &[kvlan("eth0.100", 9, "eth0", 200, true)],
        )
        .unwrap();
    }

    #[test]
    fn vlan_id_parent_and_duplicates() {
        for (id, why) in [(0, "0 is outside 1–4094"), (4095, "4095 is outside 1–4094")] {
            let mut c = with_vlans();
            c.vlans[0].id = id;
            c.interfaces[2].name = format!("eth0.{id}");
            let err = validate(&c, &links(), &[]).unwrap_err();
            assert_eq!(err.fields(), ["vlans[0].id"], "{err}");
            assert!(err.to_string().contains(why), "{err}");
        }
        let mut c = with_vlans();
        c.vlans[0].parent = "eth9".into();
        c.vlans[0].name = Some("eth0.100".into());
        let err = validate(&c, &links(), &[]).unwrap_err();
        assert_eq!(err.fields(), ["vlans[0].parent"], "{err}");
        assert!(
            err.to_string()
                .contains("unknown parent \"eth9\": not an interface of this configuration (interfaces: eth0, eth1)"),
            "{err}"
        );
        // A port the kernel has but the configuration does not list is no parent either.
        let mut l = links();
        l.push(link("eth2", "52:54:00:00:00:03"));
        c.vlans[0].parent = "eth2".into();
        assert_eq!(
            validate(&c, &l, &[]).unwrap_err().fields(),
            ["vlans[0].parent"]
        );
        // A VLAN on a VLAN.
        let mut c = with_vlans();
        c.vlans[1].parent = "eth0.100".into();
        let err = validate(&c, &links(), &[]).unwrap_err();
        assert_eq!(err.fields(), ["vlans[1].parent"], "{err}");
        assert!(err.to_string().contains("is itself a VLAN"), "{err}");
        // The same ID twice on one parent, under two names.
        let mut c = with_vlans();
        c.vlans[1].parent = "eth0".into();
        c.vlans[1].id = 100;
        let err = validate(&c, &links(), &[]).unwrap_err();
        assert_eq!(err.fields(), ["vlans[1].id"], "{err}");
        assert!(
            err.to_string()
                .contains("VLAN 100 on eth0 is listed twice (also vlans[0])"),
            "{err}"
        );
        // The same ID on two parents is fine.
        let mut c = with_vlans();
        c.vlans[1].id = 100;
        validate(&c, &links(), &[]).unwrap();
        // Two VLANs by one name.
        let mut c = with_vlans();
        c.vlans[1].name = Some("eth0.100".into());
        let err = validate(&c, &links(), &[]).unwrap_err();
        assert!(err.fields().contains(&"vlans[1].name"), "{err}");
        assert!(
            err.to_string()
                .contains("eth0.100 is already the name of vlans[0]"),
            "{err}"
        );
    }

    #[test]
    fn vlan_names() {
        // The default name <parent>.<id> may be too long for the kernel.
        let mut l = links();
        l.push(link("enx525400000003", "52:54:00:00:00:03"));
        let mut c = with_vlans();
        c.interfaces.push(iface("enx525400000003", &[]));
        c.interfaces.push(iface("enx525400000003.1000", &[]));
        c.vlans.push(VlanConfig {
            name: None,
            parent: "enx525400000003".into(),
            id: 1000,
        });
        let err = validate(&c, &l, &[]).unwrap_err();
        // Its interface entry, by the same name, is refused too.
        assert_eq!(
            err.fields(),
            ["interfaces[5].name", "vlans[2].name"],
            "{err}"
        );
        assert!(
            err.to_string().contains(
                "the default name \"enx525400000003.1000\" (<parent>.<id>) is longer than 15 characters"
            ),
            "{err}"
        );
        c.vlans[2].name = Some("lan1000".into());
        c.interfaces.last_mut().unwrap().name = "lan1000".into();
        validate(&c, &l, &[]).unwrap();
        for bad in ["a b", "x/y", "", "e*", "v[1]", "..", "a:b"] {
            let mut c = with_vlans();
            c.vlans[1].name = Some(bad.into());
            assert!(fields(&c).contains(&"vlans[1].name".to_string()), "{bad:?}");
        }
        // A VLAN needs its interface entry (its addresses, mode, MTU).
        let mut c = with_vlans();
        c.interfaces.pop();
        let err = validate(&c, &links(), &[]).unwrap_err();
        assert_eq!(err.fields(), ["vlans[1]"], "{err}");
        assert!(
            err.to_string()
                .contains("VLAN guest has no entry in interfaces"),
            "{err}"
        );
        // An interface entry for a VLAN nobody declared is an unknown interface still.
        let mut c = with_vlans();
        c.vlans.pop();
        assert_eq!(fields(&c), ["interfaces[3].name"]);
    }

    #[test]
    fn links_netd_did_not_make_are_left_alone() {
        // A port by the VLAN's name.
        let mut c = with_vlans();
        c.vlans[1].name = Some("eth1".into());
        c.interfaces[3].name = "eth1".into();
        c.interfaces.remove(1);
        c.routes.clear();
        let err = validate(&c, &links(), &[]).unwrap_err();
        assert!(err.fields().contains(&"vlans[1].name"), "{err}");
        assert!(
            err.to_string()
                .contains("eth1 exists already as not created by keel-netd"),
            "{err}"
        );
        // A VLAN someone made by hand, by the same name or with the same ID.
        let mut l = links();
        l.push(NetLink {
            kind: Some("vlan".into()),
            wired: false,
            index: 9,
            ..link("eth0.100", "52:54:00:00:00:01")
        });
        let k = [kvlan("eth0.100", 9, "eth0", 100, false)];
        let err = validate(&with_vlans(), &l, &k).unwrap_err();
        assert_eq!(err.fields(), ["vlans[0].name"], "{err}");
        assert!(err.to_string().contains("ip link del eth0.100"), "{err}");
        l[2].name = "hand".into();
        let k = [kvlan("hand", 9, "eth0", 100, false)];
        let err = validate(&with_vlans(), &l, &k).unwrap_err();
        assert_eq!(err.fields(), ["vlans[0].id"], "{err}");
        assert!(
            err.to_string()
                .contains("VLAN 100 on eth0 exists already as hand"),
            "{err}"
        );
    }

    #[test]
    fn vlan_mtu_mac_and_enabled_follow_the_parent() {
        let mut c = with_vlans();
        c.interfaces[0].mtu = Some(1400);
        c.interfaces[2].mtu = Some(1500);
        let err = validate(&c, &links(), &[]).unwrap_err();
        assert_eq!(err.fields(), ["interfaces[2].mtu"], "{err}");
        assert!(
            err.to_string()
                .contains("1500 is above the MTU of eth0, the parent of VLAN eth0.100 (1400)"),
            "{err}"
        );
        c.interfaces[2].mtu = Some(1400);
        validate(&c, &links(), &[]).unwrap();
        // Without an MTU of its own in the configuration the parent has the kernel's.
        let mut c = with_vlans();
        c.interfaces[2].mtu = Some(9000);
        assert_eq!(fields(&c), ["interfaces[2].mtu"]);
        c.interfaces[0].mtu = Some(9000);
        validate(&c, &links(), &[]).unwrap();
        // A VLAN's MAC is its parent's.
        let mut c = with_vlans();
        c.interfaces[2].mac = Some("52:54:00:00:00:01".into());
        assert_eq!(fields(&c), ["interfaces[2].mac"]);
        // A VLAN on a disabled port carries nothing.
        let mut c = with_vlans();
        c.interfaces[1].enabled = false;
        c.routes.clear();
        let err = validate(&c, &links(), &[]).unwrap_err();
        assert_eq!(err.fields(), ["interfaces[3].enabled"], "{err}");
        c.interfaces[3].enabled = false;
        validate(&c, &links(), &[]).unwrap();
    }

    #[test]
    fn vlan_id_beyond_16_bits_is_a_json_error_naming_the_field() {
        let body = r#"{"vlans":[{"parent":"eth0","id":70000}]}"#;
        let de = &mut serde_json::Deserializer::from_str(body);
        let err = serde_path_to_error::deserialize::<_, NetConfig>(de).unwrap_err();
        assert_eq!(err.path().to_string(), "vlans[0].id");
    }

    #[test]
    fn routes_mtu_dns_ntp() {
        let mut c = good();
        c.routes[0].destination = "10.20.1.0/16".parse().unwrap();
        assert_eq!(fields(&c), ["routes[0].destination"]);
        let mut c = good();
        c.routes[0].gateway = "2001:db8::1".parse().unwrap();
        assert_eq!(fields(&c), ["routes[0].gateway"]);
        let mut c = good();
        c.routes[0].interface = Some("eth0".into());
        assert_eq!(fields(&c), ["routes[0].gateway"], "gateway not on eth0");
        let mut c = good();
        c.routes.push(c.routes[0].clone());
        assert_eq!(fields(&c), ["routes[1].destination"]);
        let mut c = good();
        c.interfaces[0].mtu = Some(1000);
        assert_eq!(fields(&c), ["interfaces[0].mtu"], "IPv6 needs 1280");
        c.interfaces[0].mtu = Some(70000);
        assert_eq!(fields(&c), ["interfaces[0].mtu"]);
        let mut c = good();
        c.dns.servers = vec!["0.0.0.0".parse().unwrap()];
        c.dns.search = vec!["bad domain".into()];
        c.ntp_servers = vec!["ntp;rm -rf /".into(), "host:0".into()];
        assert_eq!(
            fields(&c),
            [
                "dns.servers[0]",
                "dns.search[0]",
                "ntp_servers[0]",
                "ntp_servers[1]"
            ]
        );
        // Link-local IPv6 gateways need the interface when there are several.
        let mut c = good();
        c.gateway6 = Some("fe80::1".parse().unwrap());
        assert_eq!(fields(&c), ["gateway6"]);
        c.interfaces[1].enabled = false;
        c.routes.clear();
        validate(&c, &links(), &[]).unwrap();
    }
}
