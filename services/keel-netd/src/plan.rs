//! Who applies what: a static interface belongs to netd (netlink), a DHCP interface
//! to systemd-networkd (a rendered `.network` file). Routes and gateways follow the
//! interface their next hop lies on.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use keel_api::{AddressMode, NetConfig};

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
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelPlan {
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

/// The kernel's share of `cfg`; `previous` says what netd may have to clean up.
pub fn kernel_plan(cfg: &NetConfig, previous: Option<&NetConfig>) -> KernelPlan {
    let links: Vec<LinkPlan> = static_names(cfg)
        .map(|i| LinkPlan {
            name: i.name.clone(),
            enabled: i.enabled,
            mtu: i.mtu,
            addresses: i.addresses.clone(),
            keep: i.shared_address.iter().map(|a| a.ip()).collect(),
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
        links,
        released,
        routes,
    }
}
