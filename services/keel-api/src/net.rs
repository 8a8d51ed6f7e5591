//! Network configuration (keel-netd): *Networking › IP configuration*,
//! `/appliance/api/v1/net/...`, `keelctl net`. One model for service, console and CLI.
//!
//! Every change is commit-confirm: netd applies it at once and reverts to the last
//! confirmed configuration unless the change is confirmed within a window.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// Default confirmation window of a change.
pub const NET_CONFIRM_SECONDS: u64 = 120;

/// The fixed IPv4 link-local address the factory default puts on the first wired
/// interface, beside DHCP: a technician's laptop on a cable always finds the box here.
pub const NET_FALLBACK_ADDRESS: &str = "169.254.1.1/16";

/// The whole network configuration (`/data/net/config.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    #[serde(default)]
    pub interfaces: Vec<InterfaceConfig>,
    /// 802.1Q VLAN sub-interfaces netd creates. Each is also an interface: its
    /// addressing, MTU and enabled flag are its entry in `interfaces` (by name).
    /// Left out of the JSON when empty, so configurations without VLANs read as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vlans: Vec<VlanConfig>,
    /// Default IPv4 gateway; must lie in a subnet of a static address.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub gateway4: Option<Ipv4Addr>,
    /// Default IPv6 gateway; a link-local one needs exactly one interface.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub gateway6: Option<Ipv6Addr>,
    #[serde(default)]
    pub routes: Vec<StaticRoute>,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// NTP servers (host names or addresses, optionally `:port`); netd writes them to
    /// `/data/net/ntp-servers.json` (`NtpServers`) for keel-timed.
    #[serde(default)]
    pub ntp_servers: Vec<String>,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            vlans: Vec::new(),
            gateway4: None,
            gateway6: None,
            routes: Vec::new(),
            dns: DnsConfig::default(),
            hostname: default_hostname(),
            ntp_servers: Vec::new(),
        }
    }
}

pub fn default_hostname() -> String {
    "keel".into()
}

fn yes() -> bool {
    true
}

/// How an interface gets its addresses.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AddressMode {
    /// DHCPv4 and IPv6 router advertisements (SLAAC), plus any `addresses` listed.
    #[default]
    Dhcp,
    /// Exactly the listed addresses.
    Static,
}

impl AddressMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressMode::Dhcp => "dhcp",
            AddressMode::Static => "static",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    /// Kernel name, e.g. `ens3`.
    pub name: String,
    /// When set, the interface must carry this MAC (`52:54:00:12:34:56`), so a
    /// configuration never lands on the wrong port after a hardware change.
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub mode: AddressMode,
    /// Addresses in CIDR form (`192.0.2.10/24`, `2001:db8::10/64`).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub addresses: Vec<IpNetwork>,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The *shared IP* of a failover pair: stored here, never brought up by netd
    /// (keel-failover takes it over on the primary).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub shared_address: Option<IpNetwork>,
}

/// Lowest and highest usable 802.1Q VLAN ID (0 and 4095 are reserved).
pub const VLAN_ID_MIN: u16 = 1;
pub const VLAN_ID_MAX: u16 = 4094;

/// A VLAN link netd creates on a port (`ip link add link eth0 name eth0.100 type vlan id 100`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct VlanConfig {
    /// Kernel name (at most 15 characters); `<parent>.<id>` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The interface the tagged frames go out of: an entry of `interfaces` that is
    /// not itself a VLAN.
    pub parent: String,
    /// 802.1Q VLAN ID, 1–4094.
    pub id: u16,
}

impl VlanConfig {
    /// The link's name: `name`, or `<parent>.<id>`.
    pub fn link_name(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => format!("{}.{}", self.parent, self.id),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StaticRoute {
    /// Destination network, e.g. `10.20.0.0/16`.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub destination: IpNetwork,
    /// Next hop; must lie in a connected subnet (or be link-local with `interface`).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub gateway: IpAddr,
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default)]
    pub metric: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub servers: Vec<IpAddr>,
    /// Search domains.
    #[serde(default)]
    pub search: Vec<String>,
}

/// One network interface as the kernel has it now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetLink {
    pub name: String,
    pub index: u32,
    /// Lowercase, colon-separated; empty when the link has none.
    pub mac: String,
    /// The driver kind of a virtual link (`veth`, `bridge`, `vlan`, ...); `None` for hardware.
    pub kind: Option<String>,
    /// A physical (or physical-looking) Ethernet port: gets DHCP by default.
    pub wired: bool,
    /// Administratively up.
    pub up: bool,
    pub mtu: u32,
    /// CIDR form, as the kernel lists them.
    pub addresses: Vec<String>,
}

/// A change waiting for confirmation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetPending {
    /// Who made it (`console`, `keelctl`): only the same front end may confirm it.
    pub owner: String,
    /// When the change is reverted unless confirmed, RFC 3339 UTC.
    pub deadline: String,
    pub seconds_left: u64,
    pub window_seconds: u64,
    /// Applied now.
    pub proposed: NetConfig,
    /// What comes back on revert (the last confirmed configuration).
    pub previous: NetConfig,
}

/// Answer of netd's `GET /state` and the console's `GET /net/config`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetState {
    /// In force now: the pending change if there is one, else the confirmed one.
    pub running: NetConfig,
    pub confirmed: NetConfig,
    /// `file` (`/data/net/config.json`) or `default` (factory: DHCP everywhere).
    pub source: String,
    pub pending: Option<NetPending>,
    pub links: Vec<NetLink>,
    /// What the appliance runs with but was not told by this configuration: the
    /// default gateways in force and DNS servers from DHCP leases.
    #[serde(default)]
    pub learned: NetLearned,
}

/// Gateways and DNS servers in force, whoever set them (netd's running state).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetLearned {
    /// Default routes of the kernel's main table.
    #[serde(default)]
    pub gateways: Vec<NetGateway>,
    /// DNS servers per DHCP-configured interface, from its lease.
    #[serde(default)]
    pub dns: Vec<NetLinkDns>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetGateway {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub gateway: IpAddr,
    pub interface: String,
    /// `dhcp`, `ra` (IPv6 router advertisement), `config` (this configuration's
    /// `gateway4`/`gateway6`) or `other` (set by hand or another program).
    pub source: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetLinkDns {
    pub interface: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub servers: Vec<IpAddr>,
}

/// Body of netd's `PUT /config`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NetChangeRequest {
    pub config: NetConfig,
    /// The front end making the change (set by the console or keelctl, not by users).
    #[serde(default)]
    pub owner: String,
    /// Confirmation window; netd's default (120 s) when absent.
    #[serde(default)]
    pub confirm_seconds: Option<u64>,
}

/// Body of netd's `POST /confirm` and `POST /cancel`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetConfirmRequest {
    #[serde(default)]
    pub owner: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_takes_defaults() {
        let c: NetConfig = serde_json::from_str(
            r#"{"interfaces":[{"name":"eth0","mode":"static","addresses":["192.0.2.10/24"]}]}"#,
        )
        .unwrap();
        assert_eq!(c.hostname, "keel");
        assert!(c.interfaces[0].enabled);
        assert_eq!(c.interfaces[0].addresses[0].prefix(), 24);
        assert_eq!(
            c.interfaces[0].addresses[0].ip().to_string(),
            "192.0.2.10",
            "host part kept"
        );
        let back: NetConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn vlans_are_optional_and_named_after_parent_and_id() {
        let c: NetConfig = serde_json::from_str(
            r#"{"interfaces":[{"name":"eth0","mode":"dhcp"},
                {"name":"eth0.100","mode":"static","addresses":["192.0.2.10/24"]}],
                "vlans":[{"parent":"eth0","id":100},{"parent":"eth0","id":7,"name":"mgmt"}]}"#,
        )
        .unwrap();
        assert_eq!(c.vlans[0].link_name(), "eth0.100");
        assert_eq!(c.vlans[1].link_name(), "mgmt");
        let back: NetConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        // Without VLANs the JSON is what it was before they existed.
        let json = serde_json::to_string(&NetConfig::default()).unwrap();
        assert!(!json.contains("vlans"), "{json}");
        // An ID beyond 16 bits is a JSON error (validation refuses 0 and 4095).
        assert!(
            serde_json::from_str::<NetConfig>(r#"{"vlans":[{"parent":"eth0","id":70000}]}"#)
                .is_err()
        );
    }

    #[test]
    fn malformed_cidr_and_unknown_fields_are_refused() {
        assert!(serde_json::from_str::<NetConfig>(
            r#"{"interfaces":[{"name":"eth0","addresses":["10.0.0.1/33"]}]}"#
        )
        .is_err());
        assert!(serde_json::from_str::<NetConfig>(r#"{"gateway":"10.0.0.1"}"#).is_err());
    }
}
