//! The kernel side: links, addresses and routes over rtnetlink, in whatever network
//! namespace the socket was opened in.
//!
//! Applying is a sync, not a replay: netd reads what the kernel has and changes only
//! the difference, so applying the same plan twice does nothing the second time, and
//! a periodic re-apply repairs links that appeared late or were changed by hand.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use futures_util::TryStreamExt;
use ipnetwork::IpNetwork;
use keel_api::NetLink;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoVlan, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkVlan, RouteMessageBuilder};

use crate::plan::{KernelPlan, LinkPlan, RoutePlan, VlanPlan};

/// Route protocol number that marks netd's routes (`ip route` shows `proto 77`):
/// netd removes stale routes of its own and never touches anyone else's.
pub const KEEL_PROTO: u8 = 77;

/// Link alias that marks the VLANs netd created (`ip link show` prints `alias keel-netd`):
/// netd removes such links when its configuration no longer has them, and never a
/// link without it. Kept by the kernel, so it survives a restart of netd.
pub const KEEL_ALIAS: &str = "keel-netd";

/// A VLAN link as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelVlan {
    pub name: String,
    pub index: u32,
    /// The parent link's name (empty when it lives in another namespace).
    pub parent: String,
    pub id: u16,
    /// Created by netd: it carries `KEEL_ALIAS`.
    pub netd: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("interface {0} does not exist")]
    NoSuchLink(String),
    /// A link netd would create exists already and is not netd's: it is left alone.
    #[error("{0}")]
    Foreign(String),
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> KernelError {
    let what = what.into();
    move |source| KernelError::Netlink { what, source }
}

/// A route-netlink connection.
#[derive(Clone)]
pub struct Kernel {
    handle: Handle,
    /// The kernel runs one dump per netlink socket and refuses a second with EBUSY
    /// until the first is read out; the console's status reads, a change and the
    /// periodic re-apply share this socket, so dumps take turns. Held from before the
    /// request is sent (rtnetlink sends at `execute`) until its last message.
    dumps: Arc<tokio::sync::Mutex<()>>,
    /// Write `/proc/sys/net` knobs (off where the caller's `/proc` is another namespace's).
    sysctl: bool,
}

#[derive(Debug, Clone)]
struct KernelAddress {
    net: IpNetwork,
    msg: AddressMessage,
}

impl Kernel {
    /// Opens a connection in the calling thread's network namespace; its I/O task
    /// runs on the current tokio runtime.
    pub fn connect() -> Result<Self, KernelError> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Self {
            handle,
            sysctl: true,
            dumps: Arc::default(),
        })
    }

    /// Opens a connection in the network namespace at `netns` from any thread: the
    /// socket is made on a short-lived thread that entered the namespace (a socket
    /// keeps the namespace it was made in). `/proc/sys/net` is left alone, since
    /// this process's view of it is another namespace's.
    pub fn connect_in(netns: &std::path::Path) -> Result<Self, KernelError> {
        use std::os::fd::{FromRawFd, IntoRawFd};
        let path = netns.to_path_buf();
        let fd = std::thread::spawn(move || -> std::io::Result<std::os::fd::OwnedFd> {
            crate::netns::enter(&path)?;
            let socket = rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)?;
            // SAFETY: the fd was just taken out of the socket, which no longer owns it.
            Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(socket.into_raw_fd()) })
        })
        .join()
        .map_err(|_| std::io::Error::other("namespace thread panicked"))??;
        // SAFETY: `fd` is an open netlink socket owned by nobody else from here on.
        let socket = unsafe { rtnetlink::sys::TokioSocket::from_raw_fd(fd.into_raw_fd()) };
        let (conn, handle, _) = rtnetlink::from_socket(socket);
        tokio::spawn(conn);
        Ok(Self {
            handle,
            sysctl: false,
            dumps: Arc::default(),
        })
    }

    /// Every link with its addresses, sorted by index.
    pub async fn links(&self) -> Result<Vec<NetLink>, KernelError> {
        Ok(self.inventory().await?.0)
    }

    /// Every link (sorted by index) and, of those, the VLANs with parent and ID.
    pub async fn inventory(&self) -> Result<(Vec<NetLink>, Vec<KernelVlan>), KernelError> {
        let dump = self.dumps.lock().await;
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing links"))?;
        drop(dump);
        let addrs = self.addresses(None).await?;
        // (link, its IFLA_LINK parent index, VLAN ID, alias) while names are still unknown.
        let mut vlans: Vec<(u32, Option<u32>, u16, bool)> = Vec::new();
        let mut out: Vec<NetLink> = msgs
            .iter()
            .map(|m| {
                let mut name = String::new();
                let mut mac = String::new();
                let mut mtu = 0;
                let mut kind = None;
                let mut vlan_id = None;
                let mut parent = None;
                let mut ours = false;
                for a in &m.attributes {
                    match a {
                        LinkAttribute::IfName(n) => name = n.clone(),
                        LinkAttribute::Address(b) => {
                            mac = b
                                .iter()
                                .map(|x| format!("{x:02x}"))
                                .collect::<Vec<_>>()
                                .join(":")
                        }
                        LinkAttribute::Mtu(v) => mtu = *v,
                        LinkAttribute::Link(i) => parent = Some(*i),
                        // A parent in another namespace: its index means nothing here.
                        LinkAttribute::LinkNetNsId(_) => parent = Some(0),
                        LinkAttribute::IfAlias(a) => ours = a == KEEL_ALIAS,
                        LinkAttribute::LinkInfo(infos) => {
                            for i in infos {
                                match i {
                                    LinkInfo::Kind(k) => kind = Some(k.to_string()),
                                    LinkInfo::Data(InfoData::Vlan(data)) => {
                                        vlan_id = data.iter().find_map(|d| match d {
                                            InfoVlan::Id(id) => Some(*id),
                                            _ => None,
                                        })
                                    }
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
                let is_vlan = kind.as_deref() == Some("vlan");
                if is_vlan {
                    vlans.push((m.header.index, parent, vlan_id.unwrap_or(0), ours));
                }
                let ether = m.header.link_layer_type == LinkLayerType::Ether;
                // Hardware ports have no link kind; test namespaces name veths eth*.
                // A VLAN (eth0.100) is never a port of its own, whatever its name.
                let wired = ether
                    && !is_vlan
                    && (kind.is_none() || name.starts_with("eth") || name.starts_with("en"));
                NetLink {
                    index: m.header.index,
                    up: m.header.flags.contains(LinkFlags::Up),
                    addresses: addrs
                        .iter()
                        .filter(|a| a.msg.header.index == m.header.index)
                        .map(|a| a.net.to_string())
                        .collect(),
                    name,
                    mac,
                    kind,
                    wired,
                    mtu,
                }
            })
            .collect();
        out.sort_by_key(|l| l.index);
        let name_of = |index: u32| {
            out.iter()
                .find(|l| l.index == index)
                .map(|l| l.name.clone())
                .unwrap_or_default()
        };
        let vlans = vlans
            .into_iter()
            .map(|(index, parent, id, netd)| KernelVlan {
                name: name_of(index),
                index,
                parent: parent.filter(|p| *p != 0).map(name_of).unwrap_or_default(),
                id,
                netd,
            })
            .collect();
        Ok((out, vlans))
    }

    async fn addresses(&self, index: Option<u32>) -> Result<Vec<KernelAddress>, KernelError> {
        let mut req = self.handle.address().get();
        if let Some(i) = index {
            req = req.set_link_index_filter(i);
        }
        let _dump = self.dumps.lock().await;
        let msgs: Vec<AddressMessage> = req
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing addresses"))?;
        Ok(msgs
            .into_iter()
            .filter_map(|msg| {
                // IPv4 puts the local address in IFA_LOCAL (IFA_ADDRESS is the peer).
                let local = msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                });
                let addr = msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                });
                let ip = local.or(addr)?;
                let net = IpNetwork::new(ip, msg.header.prefix_len).ok()?;
                Some(KernelAddress { net, msg })
            })
            .collect())
    }

    fn index_of(links: &HashMap<String, u32>, name: &str) -> Result<u32, KernelError> {
        links
            .get(name)
            .copied()
            .ok_or_else(|| KernelError::NoSuchLink(name.to_owned()))
    }

    async fn link_indexes(&self) -> Result<HashMap<String, u32>, KernelError> {
        Ok(self
            .links()
            .await?
            .into_iter()
            .map(|l| (l.name, l.index))
            .collect())
    }

    /// Brings the kernel to `plan`. Goes on past a missing link (it may appear later:
    /// the periodic re-apply picks it up) and reports the first error at the end.
    pub async fn apply(&self, plan: &KernelPlan) -> Result<(), KernelError> {
        let (all, vlans) = self.inventory().await?;
        let mut links: HashMap<String, u32> =
            all.iter().map(|l| (l.name.clone(), l.index)).collect();
        let mut first_err: Option<KernelError> = None;
        let mut note = |r: Result<(), KernelError>| {
            if let Err(e) = r {
                tracing::warn!("apply: {e}");
                first_err.get_or_insert(e);
            }
        };
        let wanted = |links: &HashMap<String, u32>| -> Vec<(RoutePlan, u32)> {
            plan.routes
                .iter()
                .filter_map(|r| links.get(&r.link).map(|i| (r.clone(), *i)))
                .collect()
        };

        // Stale routes first: a route through an address about to go would block nothing,
        // but one through a released link must not outlive netd's claim on it.
        note(self.remove_stale_routes(&wanted(&links)).await);

        for (name, addrs) in &plan.released {
            if let Some(&index) = links.get(name) {
                note(self.release(index, addrs).await);
            }
        }
        let (changed, errors) = self.sync_vlans(&plan.vlans, &all, &vlans).await;
        for e in errors {
            note(Err(e));
        }
        if changed {
            links = self.link_indexes().await?;
        }
        for l in &plan.links {
            let r = match Self::index_of(&links, &l.name) {
                Ok(index) => self.apply_link(index, l).await,
                Err(e) => Err(e),
            };
            note(r);
        }
        for (r, index) in &wanted(&links) {
            note(self.add_route(r, *index).await);
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Removes the VLANs netd made that `want` no longer has (or has with another
    /// parent or ID), then creates the missing ones. Links without netd's alias are
    /// never removed. Returns whether a link came or went, and every error.
    async fn sync_vlans(
        &self,
        want: &[VlanPlan],
        links: &[NetLink],
        vlans: &[KernelVlan],
    ) -> (bool, Vec<KernelError>) {
        let mut changed = false;
        let mut errors = Vec::new();
        let same =
            |k: &KernelVlan, w: &VlanPlan| k.name == w.name && k.parent == w.parent && k.id == w.id;
        for k in vlans.iter().filter(|k| k.netd) {
            if want.iter().any(|w| same(k, w)) {
                continue;
            }
            match self.handle.link().del(k.index).execute().await {
                Ok(()) => {
                    tracing::info!(link = %k.name, parent = %k.parent, id = k.id, "VLAN removed");
                    changed = true;
                }
                Err(e) => errors.push(nl(format!("removing VLAN {}", k.name))(e)),
            }
        }
        for w in want {
            if let Some(k) = vlans.iter().find(|k| k.name == w.name) {
                if k.netd && same(k, w) {
                    continue;
                }
                if !k.netd {
                    errors.push(KernelError::Foreign(format!(
                        "{} exists already (VLAN {} on {}) and was not created by keel-netd; it is left alone",
                        w.name, k.id, k.parent
                    )));
                    continue;
                }
            } else if links.iter().any(|l| l.name == w.name) {
                errors.push(KernelError::Foreign(format!(
                    "{} exists already and is not a VLAN of keel-netd; it is left alone",
                    w.name
                )));
                continue;
            }
            if let Some(k) = vlans
                .iter()
                .find(|k| !k.netd && k.parent == w.parent && k.id == w.id)
            {
                errors.push(KernelError::Foreign(format!(
                    "VLAN {} on {} exists already as {}, not created by keel-netd; it is left alone",
                    w.id, w.parent, k.name
                )));
                continue;
            }
            let Some(parent) = links.iter().find(|l| l.name == w.parent) else {
                errors.push(KernelError::NoSuchLink(w.parent.clone()));
                continue;
            };
            match self.create_vlan(w, parent).await {
                Ok(()) => changed = true,
                Err(e) => errors.push(e),
            }
        }
        (changed, errors)
    }

    async fn create_vlan(&self, w: &VlanPlan, parent: &NetLink) -> Result<(), KernelError> {
        let mut b = LinkVlan::new(&w.name, parent.index, w.id);
        // The kernel refuses to create a VLAN larger than its parent; a larger MTU waits
        // for the parent (`apply_link` sets it once the parent has grown).
        if let Some(m) = w.mtu.filter(|m| *m <= parent.mtu) {
            b = b.mtu(m);
        }
        if w.up {
            b = b.up();
        }
        self.handle
            .link()
            .add(b.build())
            .execute()
            .await
            .map_err(nl(format!(
                "creating VLAN {} (ID {} on {})",
                w.name, w.id, w.parent
            )))?;
        // The mark goes on with a second message (creation ignores IFLA_IFALIAS). Without
        // it netd would never remove the link: take it away again if marking fails.
        let index = self.link_indexes().await?.get(&w.name).copied();
        let Some(index) = index else {
            return Err(KernelError::NoSuchLink(w.name.clone()));
        };
        let marked = self
            .handle
            .link()
            .set(LinkUnspec::new_with_index(index).alias(KEEL_ALIAS).build())
            .execute()
            .await;
        if let Err(e) = marked {
            let _ = self.handle.link().del(index).execute().await;
            return Err(nl(format!("marking VLAN {}", w.name))(e));
        }
        tracing::info!(link = %w.name, parent = %w.parent, id = w.id, "VLAN created");
        Ok(())
    }

    async fn release(&self, index: u32, addrs: &[IpNetwork]) -> Result<(), KernelError> {
        for a in self.addresses(Some(index)).await? {
            if addrs
                .iter()
                .any(|x| x.ip() == a.net.ip() && x.prefix() == a.net.prefix())
            {
                self.handle
                    .address()
                    .del(a.msg)
                    .execute()
                    .await
                    .map_err(nl(format!("removing {}", a.net)))?;
            }
        }
        Ok(())
    }

    async fn apply_link(&self, index: u32, l: &LinkPlan) -> Result<(), KernelError> {
        let current = self
            .handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await
            .map_err(nl(format!("reading {}", l.name)))?;
        let (up, mtu) = current
            .map(|m| {
                let mtu = m.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Mtu(v) => Some(*v),
                    _ => None,
                });
                (m.header.flags.contains(LinkFlags::Up), mtu)
            })
            .unwrap_or((false, None));
        if l.enabled {
            // No router advertisements on a static interface: its addresses are the list.
            self.sysctl_v6(&l.name, "accept_ra", "0");
        }
        let mut mtu_want = l.mtu.filter(|m| Some(*m) != mtu);
        if let (Some(want), Some(parent)) = (mtu_want, &l.parent) {
            // Validation keeps a VLAN within its parent's MTU; a parent that networkd
            // (DHCP) is about to raise is not there yet: the periodic re-apply finishes.
            let parent_mtu = self.mtu_of(parent).await?;
            if parent_mtu.is_some_and(|p| want > p) {
                tracing::warn!(
                    "MTU {want} of {} waits for its parent {parent} (MTU {})",
                    l.name,
                    parent_mtu.unwrap_or_default()
                );
                mtu_want = None;
            }
        }
        if let Some(want) = mtu_want {
            self.handle
                .link()
                .set(LinkUnspec::new_with_index(index).mtu(want).build())
                .execute()
                .await
                .map_err(nl(format!("setting MTU {want} on {}", l.name)))?;
        }

        let present = self.addresses(Some(index)).await?;
        let want: &[IpNetwork] = if l.enabled { &l.addresses } else { &[] };
        for a in &present {
            let ip = a.net.ip();
            let is_ll6 = matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
            if is_ll6 || l.keep.contains(&ip) {
                continue;
            }
            if !want
                .iter()
                .any(|w| w.ip() == ip && w.prefix() == a.net.prefix())
            {
                self.handle
                    .address()
                    .del(a.msg.clone())
                    .execute()
                    .await
                    .map_err(nl(format!("removing {} from {}", a.net, l.name)))?;
            }
        }
        for w in want {
            if present
                .iter()
                .any(|a| a.net.ip() == w.ip() && a.net.prefix() == w.prefix())
            {
                continue;
            }
            let mut req = self.handle.address().add(index, w.ip(), w.prefix());
            if w.is_ipv6() {
                // Usable at once: no 1–2 s of duplicate detection before the console
                // can answer from it (commit-confirm needs the new address live).
                let m = req.message_mut();
                m.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            req.execute()
                .await
                .map_err(nl(format!("adding {w} to {}", l.name)))?;
        }

        if l.enabled != up {
            let msg = if l.enabled {
                LinkUnspec::new_with_index(index).up().build()
            } else {
                LinkUnspec::new_with_index(index).down().build()
            };
            self.handle
                .link()
                .set(msg)
                .execute()
                .await
                .map_err(nl(format!("setting {} up/down", l.name)))?;
        }
        Ok(())
    }

    async fn mtu_of(&self, name: &str) -> Result<Option<u32>, KernelError> {
        let msg = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_next()
            .await
            .map_err(nl(format!("reading {name}")))?;
        Ok(msg.and_then(|m| {
            m.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::Mtu(v) => Some(v),
                _ => None,
            })
        }))
    }

    fn sysctl_v6(&self, link: &str, key: &str, value: &str) {
        if !self.sysctl {
            return;
        }
        let path = format!("/proc/sys/net/ipv6/conf/{link}/{key}");
        if let Err(e) = std::fs::write(&path, value) {
            // IPv6 may be disabled; the addresses still apply.
            tracing::debug!("{path}: {e}");
        }
    }

    /// The default routes of the main table, with the link they leave by and who
    /// put them there (networkd's DHCP client, router advertisements, netd).
    pub async fn default_gateways(
        &self,
        links: &[NetLink],
    ) -> Result<Vec<keel_api::NetGateway>, KernelError> {
        const MAIN_TABLE: u32 = 254;
        let mut out = Vec::new();
        for r in self.routes().await? {
            if r.header.destination_prefix_length != 0 {
                continue;
            }
            let mut table = u32::from(r.header.table);
            let (mut gw, mut oif) = (None, None);
            for a in &r.attributes {
                match a {
                    RouteAttribute::Table(t) => table = *t,
                    RouteAttribute::Gateway(RouteAddress::Inet(x)) => gw = Some(IpAddr::V4(*x)),
                    RouteAttribute::Gateway(RouteAddress::Inet6(x)) => gw = Some(IpAddr::V6(*x)),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            let (Some(gateway), true) = (gw, table == MAIN_TABLE) else {
                continue;
            };
            let source = match r.header.protocol {
                RouteProtocol::Dhcp => "dhcp",
                RouteProtocol::Ra => "ra",
                RouteProtocol::Other(KEEL_PROTO) => "config",
                _ => "other",
            };
            let interface = oif
                .and_then(|i| links.iter().find(|l| l.index == i))
                .map(|l| l.name.clone())
                .unwrap_or_default();
            out.push(keel_api::NetGateway {
                gateway,
                interface,
                source: source.into(),
            });
        }
        Ok(out)
    }

    async fn routes(&self) -> Result<Vec<RouteMessage>, KernelError> {
        let mut all = Vec::new();
        for msg in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let _dump = self.dumps.lock().await;
            let mut v: Vec<RouteMessage> = self
                .handle
                .route()
                .get(msg)
                .execute()
                .try_collect()
                .await
                .map_err(nl("listing routes"))?;
            all.append(&mut v);
        }
        Ok(all)
    }

    async fn remove_stale_routes(&self, wanted: &[(RoutePlan, u32)]) -> Result<(), KernelError> {
        for r in self.routes().await? {
            if r.header.protocol != RouteProtocol::Other(KEEL_PROTO) {
                continue;
            }
            if wanted.iter().any(|(w, i)| route_matches(&r, w, *i)) {
                continue;
            }
            self.handle
                .route()
                .del(r)
                .execute()
                .await
                .map_err(nl("removing a stale route"))?;
        }
        Ok(())
    }

    async fn add_route(&self, r: &RoutePlan, index: u32) -> Result<(), KernelError> {
        if self.routes().await?.iter().any(|k| {
            k.header.protocol == RouteProtocol::Other(KEEL_PROTO) && route_matches(k, r, index)
        }) {
            return Ok(());
        }
        let msg = match (r.destination, r.gateway) {
            (IpNetwork::V4(d), IpAddr::V4(g)) => {
                let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(d.network(), d.prefix())
                    .gateway(g)
                    .output_interface(index)
                    .protocol(RouteProtocol::Other(KEEL_PROTO));
                if let Some(m) = r.metric {
                    b = b.priority(m);
                }
                b.build()
            }
            (IpNetwork::V6(d), IpAddr::V6(g)) => {
                let mut b = RouteMessageBuilder::<Ipv6Addr>::new()
                    .destination_prefix(d.network(), d.prefix())
                    .gateway(g)
                    .output_interface(index)
                    .protocol(RouteProtocol::Other(KEEL_PROTO));
                if let Some(m) = r.metric {
                    b = b.priority(m);
                }
                b.build()
            }
            _ => return Ok(()), // validation refuses mixed families
        };
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(nl(format!(
                "adding route to {} via {}",
                r.destination, r.gateway
            )))
    }
}

/// Does kernel route `k` say what `w` (out of link `index`) says?
fn route_matches(k: &RouteMessage, w: &RoutePlan, index: u32) -> bool {
    let fam = if w.destination.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    if k.header.address_family != fam
        || k.header.destination_prefix_length != w.destination.prefix()
    {
        return false;
    }
    let mut dst = None;
    let mut gw = None;
    let mut oif = None;
    let mut prio = None;
    for a in &k.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(x)) => dst = Some(IpAddr::V4(*x)),
            RouteAttribute::Destination(RouteAddress::Inet6(x)) => dst = Some(IpAddr::V6(*x)),
            RouteAttribute::Gateway(RouteAddress::Inet(x)) => gw = Some(IpAddr::V4(*x)),
            RouteAttribute::Gateway(RouteAddress::Inet6(x)) => gw = Some(IpAddr::V6(*x)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => prio = Some(*p),
            _ => {}
        }
    }
    let want_dst = if w.destination.prefix() == 0 {
        None
    } else {
        Some(w.destination.network())
    };
    // The kernel gives IPv6 routes without a metric 1024, IPv4 ones 0.
    let default_metric = if w.destination.is_ipv4() { 0 } else { 1024 };
    let dst_ok = match (dst, want_dst) {
        (None, None) => true,
        (Some(d), None) => d.is_unspecified(),
        (Some(d), Some(wd)) => d == wd,
        (None, Some(_)) => false,
    };
    dst_ok
        && gw == Some(w.gateway)
        && oif == Some(index)
        && prio.unwrap_or(default_metric) == w.metric.unwrap_or(default_metric)
}
