//! The factory default: DHCP on every wired interface, plus a fixed link-local
//! address on the first one (`keel_api::NET_FALLBACK_ADDRESS`, 169.254.1.1/16), so a
//! technician with a laptop and a cable reaches the console at a known address even
//! where no DHCP server answers.

use keel_api::{AddressMode, InterfaceConfig, NetConfig, NetLink, NET_FALLBACK_ADDRESS};

/// The default configuration for the links the kernel has now.
pub fn default_config(links: &[NetLink]) -> NetConfig {
    let mut wired: Vec<&NetLink> = links.iter().filter(|l| l.wired).collect();
    // "First" is the lowest interface index: the port the firmware enumerated first.
    wired.sort_by_key(|l| l.index);
    let interfaces = wired
        .iter()
        .enumerate()
        .map(|(n, l)| InterfaceConfig {
            name: l.name.clone(),
            mac: None,
            enabled: true,
            mode: AddressMode::Dhcp,
            addresses: if n == 0 {
                vec![NET_FALLBACK_ADDRESS.parse().expect("constant CIDR")]
            } else {
                Vec::new()
            },
            mtu: None,
            shared_address: None,
        })
        .collect();
    NetConfig {
        interfaces,
        ..NetConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, index: u32, wired: bool) -> NetLink {
        NetLink {
            name: name.into(),
            index,
            mac: String::new(),
            kind: None,
            wired,
            up: true,
            mtu: 1500,
            addresses: vec![],
        }
    }

    #[test]
    fn dhcp_everywhere_fallback_on_the_first() {
        let c = default_config(&[
            link("lo", 1, false),
            link("ens4", 3, true),
            link("ens3", 2, true),
        ]);
        assert_eq!(c.interfaces.len(), 2);
        assert_eq!(c.interfaces[0].name, "ens3");
        assert!(c.interfaces.iter().all(|i| i.mode == AddressMode::Dhcp));
        assert_eq!(c.interfaces[0].addresses[0].to_string(), "169.254.1.1/16");
        assert!(c.interfaces[1].addresses.is_empty());
        // It passes validation as is.
        crate::validate::validate(&c, &[link("ens3", 2, true), link("ens4", 3, true)], &[])
            .unwrap();
    }
}
