//! DNS servers that DHCP handed out, from systemd-networkd's lease files
//! (`/run/systemd/netif/leases/<ifindex>`, `KEY=value` lines). networkd offers no
//! other interface without D-Bus, which the image does not carry; `networkctl`
//! reads the same files.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use keel_api::{NetLink, NetLinkDns};

/// Where the networkd that reads `networkd_dir` (`/run/systemd/network`) keeps its
/// leases: `/run/systemd/netif/leases`. A rendered directory elsewhere (tests,
/// laptops) has a networkd of its own, or none: its leases are not the host's.
pub fn dir_for(networkd_dir: &Path) -> Option<PathBuf> {
    (networkd_dir == Path::new("/run/systemd/network"))
        .then(|| PathBuf::from("/run/systemd/netif/leases"))
}

/// The `DNS=` servers of one lease file's text.
pub fn dns_of(lease: &str) -> Vec<IpAddr> {
    lease
        .lines()
        .filter_map(|l| l.strip_prefix("DNS="))
        .flat_map(str::split_whitespace)
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// DNS servers per link from the lease files in `dir` (named by interface index);
/// links without a lease, or whose lease names none, are left out.
pub fn learned_dns(dir: &Path, links: &[NetLink]) -> Vec<NetLinkDns> {
    links
        .iter()
        .filter_map(|l| {
            let text = std::fs::read_to_string(dir.join(l.index.to_string())).ok()?;
            let servers = dns_of(&text);
            (!servers.is_empty()).then(|| NetLinkDns {
                interface: l.name.clone(),
                servers,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, index: u32) -> NetLink {
        NetLink {
            name: name.into(),
            index,
            mac: String::new(),
            kind: None,
            wired: true,
            up: true,
            mtu: 1500,
            addresses: Vec::new(),
        }
    }

    #[test]
    fn dns_from_networkd_leases() {
        let dir = tempfile::tempdir().unwrap();
        // As systemd 252 writes it.
        std::fs::write(
            dir.path().join("2"),
            "# This is private data. Do not parse.\nADDRESS=10.0.2.15\nNETMASK=255.255.255.0\n\
             ROUTER=10.0.2.2\nSERVER_ADDRESS=10.0.2.2\nDNS=10.0.2.3 192.0.2.53\nNTP=10.0.2.4\n\
             LIFETIME=86400\nCLIENTID=ffb6220feb00020000ab11\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("3"), "ADDRESS=10.9.0.5\n").unwrap();
        let got = learned_dns(
            dir.path(),
            &[
                link("lo", 1),
                link("eth0", 2),
                link("eth1", 3),
                link("eth2", 4),
            ],
        );
        assert_eq!(
            got,
            [NetLinkDns {
                interface: "eth0".into(),
                servers: vec!["10.0.2.3".parse().unwrap(), "192.0.2.53".parse().unwrap()],
            }]
        );
        assert_eq!(
            dns_of("DNS=banana 2001:db8::53\n"),
            ["2001:db8::53".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn only_the_system_networkd_has_the_system_leases() {
        assert_eq!(
            dir_for(Path::new("/run/systemd/network")).unwrap(),
            Path::new("/run/systemd/netif/leases")
        );
        assert!(dir_for(Path::new("/tmp/test/network")).is_none());
    }
}
