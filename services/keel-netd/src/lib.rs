//! keel-netd: the appliance's network configuration, applied with commit-confirm.
//!
//! Static interfaces are driven over netlink directly (`kernel`); DHCP interfaces
//! are handed to systemd-networkd through files rendered into `/run/systemd/network`
//! (`render`). See the README for why.

pub mod api;
pub mod defaults;
pub mod fields;
pub mod files;
pub mod kernel;
pub mod leases;
pub mod netns;
pub mod plan;
pub mod render;
pub mod service;
pub mod validate;
