//! Who applies what: a static interface belongs to netd (netlink), a DHCP interface
//! to systemd-networkd (a rendered `.network` file). Routes and gateways follow the
//! interface their next hop lies on. VLAN links are netd's to create and remove in
//! either mode; only their addressing follows the rule above.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use keel_api::{AddressMode, NetConfig, VlanConfig};

/// One route as netd wants it in the kernel's main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlan {
    pub destination: IpNetwork,
    pub gateway: IpAddr,
    /// Index into `NetConfig::interfaces`.
    pub iface: usize,
    /// That interface's name.
    pub link: String,
    pub metric: Option<u32>,
}

/// A static, netd-owned interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPlan {
    pub name: String,
    pub enabled: bool,
    pub mtu: Option<u32>,
    pub addresses: Vec<IpNetwork>,
    /// Never added, never removed (the failover shared IP).
    pub keep: Vec<IpAddr>,
    /// A VLAN's parent link (its MTU bounds the VLAN's).
    pub parent: Option<String>,
}

/// A VLAN link netd creates (and removes when the configuration drops it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VlanPlan {
    pub name: String,
    pub parent: String,
    pub id: u16,
    pub mtu: Option<u32>,
    /// Bring it up on creation: an enabled DHCP VLAN (networkd takes it from there).
    /// A static one comes up through its `LinkPlan`, once its addresses are on.
    pub up: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelPlan {
    /// Every VLAN of the configuration, whichever mode its interface has.
    pub vlans: Vec<VlanPlan>,
    /// Ports first, then VLANs: a parent's MTU grows before its VLANs' do.
    pub links: Vec<LinkPlan>,
    /// Links netd owned under the previous configuration and no longer does, with
    /// the addresses it had put there (removed before networkd takes over).
    pub released: Vec<(String, Vec<IpNetwork>)>,
    /// Routes over netd-owned links (gateways included as default routes).
    pub routes: Vec<RoutePlan>,
}

fn is_link_local_v6(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// The interface (index in `cfg.interfaces`) a next hop is reached through.
pub fn next_hop_interface(cfg: &NetConfig, gateway: IpAddr, via: Option<&str>) -> Option<usize> {
    let enabled = |i: &usize| cfg.interfaces[*i].enabled;
    if let Some(name) = via {
        return cfg
            .interfaces
            .iter()
            .position(|i| i.name == name && i.enabled);
    }
    if is_link_local_v6(gateway) {
        let mut on: Vec<usize> = (0..cfg.interfaces.len()).filter(enabled).collect();
        return (on.len() == 1).then(|| on.remove(0));
    }
    (0..cfg.interfaces.len()).filter(enabled).find(|&i| {
        cfg.interfaces[i]
            .addresses
            .iter()
            .any(|a| a.contains(gateway))
    })
}

/// Gateways and static routes of `cfg`, each with the interface it goes out of.
pub fn all_routes(cfg: &NetConfig) -> Vec<RoutePlan> {
    let mut out = Vec::new();
    let defaults = [
        cfg.gateway4.map(|g| {
            (
                IpNetwork::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0),
                IpAddr::V4(g),
            )
        }),
        cfg.gateway6.map(|g| {
            (
                IpNetwork::new(std::net::Ipv6Addr::UNSPECIFIED.into(), 0),
                IpAddr::V6(g),
            )
        }),
    ];
    for (dst, gw) in defaults.into_iter().flatten() {
        if let (Ok(dst), Some(iface)) = (dst, next_hop_interface(cfg, gw, None)) {
            out.push(RoutePlan {
                destination: dst,
                gateway: gw,
                iface,
                link: cfg.interfaces[iface].name.clone(),
                metric: None,
            });
        }
    }
    for r in &cfg.routes {
        if let Some(iface) = next_hop_interface(cfg, r.gateway, r.interface.as_deref()) {
            out.push(RoutePlan {
                destination: IpNetwork::new(r.destination.network(), r.destination.prefix())
                    .unwrap_or(r.destination),
                gateway: r.gateway,
                iface,
                link: cfg.interfaces[iface].name.clone(),
                metric: r.metric,
            });
        }
    }
    out
}

fn static_names(cfg: &NetConfig) -> impl Iterator<Item = &keel_api::InterfaceConfig> {
    cfg.interfaces
        .iter()
        .filter(|i| i.mode == AddressMode::Static)
}

/// The VLAN of `cfg` that interface `name` is, if it is one.
pub fn vlan_of<'a>(cfg: &'a NetConfig, name: &str) -> Option<&'a VlanConfig> {
    cfg.vlans.iter().find(|v| v.link_name() == name)
}

/// The kernel's share of `cfg`; `previous` says what netd may have to clean up.
pub fn kernel_plan(cfg: &NetConfig, previous: Option<&NetConfig>) -> KernelPlan {
    let mut links: Vec<LinkPlan> = static_names(cfg)
        .map(|i| LinkPlan {
            name: i.name.clone(),
            enabled: i.enabled,
            mtu: i.mtu,
            addresses: i.addresses.clone(),
            keep: i.shared_address.iter().map(|a| a.ip()).collect(),
            parent: vlan_of(cfg, &i.name).map(|v| v.parent.clone()),
        })
        .collect();
    links.sort_by_key(|l| l.parent.is_some());
    let vlans = cfg
        .vlans
        .iter()
        .map(|v| {
            let name = v.link_name();
            let iface = cfg.interfaces.iter().find(|i| i.name == name);
            VlanPlan {
                parent: v.parent.clone(),
                id: v.id,
                mtu: iface.and_then(|i| i.mtu),
                up: iface.is_some_and(|i| i.enabled && i.mode == AddressMode::Dhcp),
                name,
            }
        })
        .collect();
    let released = previous
        .map(|p| {
            static_names(p)
                .filter(|old| !links.iter().any(|l| l.name == old.name))
                .map(|old| (old.name.clone(), old.addresses.clone()))
                .collect()
        })
        .unwrap_or_default();
    let routes = all_routes(cfg)
        .into_iter()
        .filter(|r| cfg.interfaces[r.iface].mode == AddressMode::Static)
        .collect();
    KernelPlan {
        vlans,
        links,
        released,
        routes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlans_are_planned_after_their_parents() {
        let c: NetConfig = serde_json::from_value(serde_json::json!({
            "interfaces": [
                {"name": "eth0.100", "mode": "static", "addresses": ["192.0.2.10/24"], "mtu": 1400},
                {"name": "eth0", "mode": "static", "addresses": ["10.0.0.2/24"], "mtu": 9000},
                {"name": "guest", "mode": "dhcp"}
            ],
            "vlans": [{"parent": "eth0", "id": 100}, {"parent": "eth0", "id": 7, "name": "guest"}]
        }))
        .unwrap();
        let p = kernel_plan(&c, None);
        let names: Vec<&str> = p.links.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["eth0", "eth0.100"]);
        assert_eq!(p.links[1].parent.as_deref(), Some("eth0"));
        assert_eq!(
            p.vlans,
            [
                VlanPlan {
                    name: "eth0.100".into(),
                    parent: "eth0".into(),
                    id: 100,
                    mtu: Some(1400),
                    up: false
                },
                VlanPlan {
                    name: "guest".into(),
                    parent: "eth0".into(),
                    id: 7,
                    mtu: None,
                    up: true
                }
            ]
        );
    }
}
