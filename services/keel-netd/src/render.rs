//! Files for the rest of the system: systemd-networkd `.network` files (DHCP
//! interfaces are networkd's; static ones are marked unmanaged so networkd keeps
//! off them), a systemd-resolved drop-in for DNS, and the hostname.
//!
//! netd runs without root and the image has no D-Bus, so it cannot restart
//! networkd or resolved, nor set the hostname itself (that needs CAP_SYS_ADMIN).
//! It writes the files, then names what must be reloaded in a request file; a root
//! path unit (`keel-netd-reload.path`) carries that out with fixed commands.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use keel_api::{AddressMode, NetConfig};
use keel_core::StoreError;

use crate::plan::all_routes;

/// Prefix of netd's networkd files. `10-` sorts before the image's catch-all
/// `80-keel-wired.network` (DHCP on every wired port), and networkd uses the first
/// file that matches a link.
pub const NETWORKD_PREFIX: &str = "10-keel-netd-";

/// Keeps networkd off every VLAN link no file of netd names (yet). netd creates
/// VLANs over netlink while networkd runs with the files it read at its last start;
/// without this, a new `eth0.100` would match the image's catch-all (`Name=en* eth*`,
/// DHCP) until networkd restarts, and networkd would strip netd's static addresses
/// off it. Always written, so it is loaded before the first VLAN appears. Sorts
/// after every `10-keel-netd-<if>.network` (a DHCP VLAN's own file wins once loaded)
/// and before `80-keel-wired.network`.
pub const VLAN_CATCHALL: &str = "79-keel-netd-vlans.network";

/// Where the rendered files go; `None` leaves that part alone (tests, laptops).
#[derive(Debug, Clone, Default)]
pub struct SystemFiles {
    pub networkd_dir: Option<PathBuf>,
    pub resolved_dropin: Option<PathBuf>,
    pub hostname_file: Option<PathBuf>,
    /// What to reload, one word a line (`networkd`, `resolved`, `hostname`).
    pub reload_request: Option<PathBuf>,
}

const HEADER: &str =
    "# Written by keel-netd from the appliance's network configuration; do not edit.\n";

/// File name → content of every `.network` file for `cfg`.
pub fn networkd_files(cfg: &NetConfig) -> BTreeMap<String, String> {
    let routes = all_routes(cfg);
    let mut out = BTreeMap::new();
    for (i, iface) in cfg.interfaces.iter().enumerate() {
        let mut t = String::from(HEADER);
        let _ = write!(t, "[Match]\nName={}\n", iface.name);
        if let Some(mac) = &iface.mac {
            let _ = writeln!(t, "MACAddress={mac}");
        }
        if iface.mode == AddressMode::Static {
            // netd applies this link over netlink; networkd must not flush it.
            t.push_str("\n[Link]\nUnmanaged=yes\n");
        } else {
            t.push_str("\n[Link]\n");
            if let Some(mtu) = iface.mtu {
                let _ = writeln!(t, "MTUBytes={mtu}");
            }
            let _ = writeln!(
                t,
                "ActivationPolicy={}",
                if iface.enabled { "up" } else { "down" }
            );
            t.push_str("\n[Network]\nDHCP=yes\nIPv6AcceptRA=yes\n");
            // A fixed 169.254 address replaces the random IPv4 link-local one.
            let fixed_ll = iface
                .addresses
                .iter()
                .any(|a| matches!(a.ip(), std::net::IpAddr::V4(v4) if v4.is_link_local()));
            let _ = writeln!(
                t,
                "LinkLocalAddressing={}",
                if fixed_ll { "ipv6" } else { "yes" }
            );
            for a in &iface.addresses {
                let _ = writeln!(t, "Address={a}");
            }
            // The hostname is netd's; DHCP must not change it.
            t.push_str("\n[DHCPv4]\nUseHostname=no\n");
            for r in routes.iter().filter(|r| r.iface == i) {
                let _ = write!(
                    t,
                    "\n[Route]\nDestination={}\nGateway={}\n",
                    r.destination, r.gateway
                );
                if let Some(m) = r.metric {
                    let _ = writeln!(t, "Metric={m}");
                }
            }
        }
        out.insert(format!("{NETWORKD_PREFIX}{}.network", iface.name), t);
    }
    out.insert(
        VLAN_CATCHALL.to_owned(),
        format!("{HEADER}[Match]\nKind=vlan\n\n[Link]\nUnmanaged=yes\n"),
    );
    out
}

/// The resolved drop-in, or `None` when no DNS setting is configured.
pub fn resolved_dropin(cfg: &NetConfig) -> Option<String> {
    if cfg.dns.servers.is_empty() && cfg.dns.search.is_empty() {
        return None;
    }
    let servers: Vec<String> = cfg.dns.servers.iter().map(|s| s.to_string()).collect();
    Some(format!(
        "{HEADER}[Resolve]\nDNS={}\nDomains={}\n",
        servers.join(" "),
        cfg.dns.search.join(" ")
    ))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `content` unless the file already holds it; true when it changed.
fn put(path: &Path, content: Option<&str>) -> Result<bool, StoreError> {
    let current = std::fs::read_to_string(path).ok();
    match content {
        Some(c) if current.as_deref() == Some(c) => Ok(false),
        Some(c) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io(dir))?;
            }
            keel_core::store::write_atomic(path, c.as_bytes(), 0o644)?;
            Ok(true)
        }
        None if current.is_none() => Ok(false),
        None => match std::fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(path)(e)),
        },
    }
}

/// Writes every file that differs and asks for the reloads that this needs.
/// Returns what was asked for.
pub fn write_all(files: &SystemFiles, cfg: &NetConfig) -> Result<Vec<&'static str>, StoreError> {
    let mut reload = Vec::new();
    if let Some(dir) = &files.networkd_dir {
        let want = networkd_files(cfg);
        let mut changed = false;
        for (name, content) in &want {
            changed |= put(&dir.join(name), Some(content))?;
        }
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(NETWORKD_PREFIX) && !want.contains_key(&name) {
                    changed |= put(&e.path(), None)?;
                }
            }
        }
        if changed {
            reload.push("networkd");
        }
    }
    if let Some(p) = &files.resolved_dropin {
        if put(p, resolved_dropin(cfg).as_deref())? {
            reload.push("resolved");
        }
    }
    if let Some(p) = &files.hostname_file {
        if put(p, Some(&format!("{}\n", cfg.hostname)))? {
            reload.push("hostname");
        }
    }
    if let (Some(p), false) = (&files.reload_request, reload.is_empty()) {
        // Keep words the root side has not consumed yet.
        let mut words: Vec<String> = std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        for w in &reload {
            if !words.iter().any(|x| x == w) {
                words.push((*w).to_owned());
            }
        }
        put(p, Some(&(words.join("\n") + "\n")))?;
    }
    Ok(reload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> NetConfig {
        serde_json::from_str(
            r#"{
              "interfaces": [
                {"name":"eth0","mode":"dhcp","mac":"52:54:00:00:00:01","mtu":1400,
                 "addresses":["169.254.1.1/16","10.1.0.2/24"]},
                {"name":"eth1","mode":"static","addresses":["192.0.2.10/24"]}
              ],
              "routes":[{"destination":"10.9.0.0/16","gateway":"10.1.0.1"}],
              "gateway4":"192.0.2.1",
              "dns":{"servers":["192.0.2.53","2001:db8::53"],"search":["example.org"]},
              "hostname":"box1"
            }"#,
        )
        .unwrap()
    }

    #[test]
    fn dhcp_link_is_networkds_static_link_is_not() {
        let f = networkd_files(&cfg());
        let dhcp = &f["10-keel-netd-eth0.network"];
        for line in [
            "Name=eth0\nMACAddress=52:54:00:00:00:01\n",
            "MTUBytes=1400\n",
            "DHCP=yes\n",
            "LinkLocalAddressing=ipv6\n",
            "Address=169.254.1.1/16\nAddress=10.1.0.2/24\n",
            "[Route]\nDestination=10.9.0.0/16\nGateway=10.1.0.1\n",
        ] {
            assert!(dhcp.contains(line), "{line:?} in\n{dhcp}");
        }
        let st = &f["10-keel-netd-eth1.network"];
        assert!(st.contains("Unmanaged=yes"), "{st}");
        let vlans = &f[VLAN_CATCHALL];
        assert!(
            vlans.contains("[Match]\nKind=vlan\n") && vlans.contains("Unmanaged=yes"),
            "{vlans}"
        );
        // The static link's gateway is netd's (netlink), not in any file.
        assert!(!dhcp.contains("192.0.2.1") && !st.contains("192.0.2.1"));
        assert_eq!(
            resolved_dropin(&cfg()).unwrap(),
            format!("{HEADER}[Resolve]\nDNS=192.0.2.53 2001:db8::53\nDomains=example.org\n")
        );
    }

    #[test]
    fn a_dhcp_vlan_is_networkds_by_name() {
        let mut c = cfg();
        c.interfaces.push(
            serde_json::from_value(serde_json::json!(
                {"name": "eth1.100", "mode": "dhcp", "mtu": 1400}
            ))
            .unwrap(),
        );
        c.vlans = vec![keel_api::VlanConfig {
            name: None,
            parent: "eth1".into(),
            id: 100,
        }];
        let f = networkd_files(&c);
        let v = &f["10-keel-netd-eth1.100.network"];
        assert!(
            v.contains("[Match]\nName=eth1.100\n") && v.contains("DHCP=yes\n"),
            "{v}"
        );
        assert!(v.contains("MTUBytes=1400\n"), "{v}");
        // netd made the link: the parent's file does not ask networkd for one (VLAN=).
        assert!(!f["10-keel-netd-eth1.network"].contains("VLAN="));
        // Its own file sorts before the catch-all that keeps networkd off other VLANs.
        let names: Vec<&String> = f.keys().collect();
        let own = names
            .iter()
            .position(|n| *n == "10-keel-netd-eth1.100.network");
        let all = names.iter().position(|n| *n == VLAN_CATCHALL);
        assert!(own < all, "{names:?}");
    }

    #[test]
    fn writes_only_changes_and_asks_for_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let files = SystemFiles {
            networkd_dir: Some(dir.path().join("network")),
            resolved_dropin: Some(dir.path().join("resolved.conf.d/keel-netd.conf")),
            hostname_file: Some(dir.path().join("hostname")),
            reload_request: Some(dir.path().join("reload-request")),
        };
        std::fs::create_dir_all(dir.path().join("network")).unwrap();
        std::fs::write(dir.path().join("network/10-keel-netd-old0.network"), "x").unwrap();
        std::fs::write(dir.path().join("network/80-keel-wired.network"), "x").unwrap();
        let c = cfg();
        assert_eq!(
            write_all(&files, &c).unwrap(),
            ["networkd", "resolved", "hostname"]
        );
        assert!(!dir
            .path()
            .join("network/10-keel-netd-old0.network")
            .exists());
        assert!(
            dir.path().join("network/80-keel-wired.network").exists(),
            "not ours"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("hostname")).unwrap(),
            "box1\n"
        );
        assert_eq!(
            write_all(&files, &c).unwrap(),
            Vec::<&str>::new(),
            "unchanged"
        );
        std::fs::remove_file(dir.path().join("reload-request")).unwrap();
        let mut c2 = c.clone();
        c2.dns = Default::default();
        assert_eq!(write_all(&files, &c2).unwrap(), ["resolved"]);
        assert!(!dir.path().join("resolved.conf.d/keel-netd.conf").exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("reload-request")).unwrap(),
            "resolved\n"
        );
    }
}
