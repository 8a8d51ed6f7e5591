//! The shared addresses in the kernel, over rtnetlink (CAP_NET_ADMIN): add, remove,
//! which are present, the interface's MAC and carrier, its default gateway.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use ipnetwork::IpNetwork;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage, State};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::{Handle, RouteMessageBuilder};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("netlink: {0}")]
    Connect(#[from] std::io::Error),
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("no interface {0}")]
    NoSuchLink(String),
    #[error("interface {0} has no Ethernet address")]
    NoMac(String),
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> KernelError {
    let what = what.into();
    move |source| KernelError::Netlink { what, source }
}

/// The kernel's errno in a netlink error answer, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub mac: [u8; 6],
    /// Operationally up: administratively up and with carrier.
    pub up: bool,
}

#[derive(Clone)]
pub struct Kernel {
    handle: Handle,
}

impl Kernel {
    /// A connection in the calling thread's network namespace, served by the
    /// current tokio runtime.
    pub fn connect() -> Result<Self, KernelError> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    pub async fn link(&self, name: &str) -> Result<LinkInfo, KernelError> {
        let msg: Option<LinkMessage> = match self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_next()
            .await
        {
            Ok(m) => m,
            Err(e) if errno(&e) == Some(libc::ENODEV) => None,
            Err(e) => return Err(nl(format!("reading {name}"))(e)),
        };
        let msg = msg.ok_or_else(|| KernelError::NoSuchLink(name.to_owned()))?;
        let mut mac = None;
        let mut up = false;
        for a in &msg.attributes {
            match a {
                LinkAttribute::Address(b) if b.len() == 6 => {
                    mac = Some(<[u8; 6]>::try_from(b.as_slice()).expect("6 bytes"))
                }
                LinkAttribute::OperState(s) => up = matches!(s, State::Up | State::Unknown),
                _ => {}
            }
        }
        Ok(LinkInfo {
            index: msg.header.index,
            mac: mac.ok_or_else(|| KernelError::NoMac(name.to_owned()))?,
            up,
        })
    }

    async fn addresses(&self, index: u32) -> Result<Vec<(IpAddr, AddressMessage)>, KernelError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing addresses"))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| {
                // IPv4 carries the local address in IFA_LOCAL, IPv6 in IFA_ADDRESS.
                let local = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                });
                let addr = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                });
                Some((local.or(addr)?, m))
            })
            .collect())
    }

    /// Every address of every interface, with the interface's index.
    async fn all_addresses(&self) -> Result<Vec<(IpAddr, u32)>, KernelError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing addresses"))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| {
                let ip = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                });
                let ip = ip.or_else(|| {
                    m.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    })
                })?;
                Some((ip, m.header.index))
            })
            .collect())
    }

    /// Whether `ip` is one of this node's addresses.
    pub async fn is_local(&self, ip: IpAddr) -> Result<bool, KernelError> {
        Ok(self.all_addresses().await?.iter().any(|(a, _)| *a == ip))
    }

    /// The interface holding an address of its own (not `net`'s address itself)
    /// inside `net`'s subnet: where a node serves that shared address.
    pub async fn interface_in(&self, net: IpNetwork) -> Result<Option<String>, KernelError> {
        let Some(index) = self
            .all_addresses()
            .await?
            .into_iter()
            .find(|(ip, _)| *ip != net.ip() && net.contains(*ip))
            .map(|(_, i)| i)
        else {
            return Ok(None);
        };
        let msg: Option<LinkMessage> = self
            .handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await
            .map_err(nl(format!("reading interface {index}")))?;
        Ok(msg.and_then(|m| {
            m.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n),
                _ => None,
            })
        }))
    }

    /// For each of `addrs`, whether it is on the interface.
    pub async fn present(&self, index: u32, addrs: &[IpNetwork]) -> Result<Vec<bool>, KernelError> {
        let have = self.addresses(index).await?;
        Ok(addrs
            .iter()
            .map(|a| have.iter().any(|(ip, _)| *ip == a.ip()))
            .collect())
    }

    /// Adds the addresses that are missing; IPv6 without duplicate detection (the
    /// probe before takeover did that, and DAD would hold it tentative for ~1 s).
    pub async fn add(&self, index: u32, addrs: &[IpNetwork]) -> Result<(), KernelError> {
        for a in addrs {
            let mut req = self.handle.address().add(index, a.ip(), a.prefix());
            if a.is_ipv6() {
                req.message_mut()
                    .attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            match req.execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => return Err(nl(format!("adding {a}"))(e)),
            }
        }
        Ok(())
    }

    /// Removes those of `addrs` that are on the interface.
    pub async fn remove(&self, index: u32, addrs: &[IpNetwork]) -> Result<(), KernelError> {
        for (ip, msg) in self.addresses(index).await? {
            if !addrs.iter().any(|a| a.ip() == ip) {
                continue;
            }
            match self.handle.address().del(msg).execute().await {
                Ok(()) => {}
                Err(e) if matches!(errno(&e), Some(libc::EADDRNOTAVAIL | libc::ENODEV)) => {}
                Err(e) => return Err(nl(format!("removing {ip}"))(e)),
            }
        }
        Ok(())
    }

    /// The gateway of a default route out of interface `index` (IPv4 first).
    pub async fn default_gateway(&self, index: u32) -> Result<Option<IpAddr>, KernelError> {
        for msg in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let routes: Vec<RouteMessage> = self
                .handle
                .route()
                .get(msg)
                .execute()
                .try_collect()
                .await
                .map_err(nl("listing routes"))?;
            for r in routes {
                if r.header.destination_prefix_length != 0 {
                    continue;
                }
                let mut gw = None;
                let mut oif = None;
                for a in &r.attributes {
                    match a {
                        RouteAttribute::Gateway(RouteAddress::Inet(x)) => gw = Some(IpAddr::V4(*x)),
                        RouteAttribute::Gateway(RouteAddress::Inet6(x)) => {
                            gw = Some(IpAddr::V6(*x))
                        }
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        _ => {}
                    }
                }
                if oif == Some(index) && gw.is_some() {
                    return Ok(gw);
                }
            }
        }
        Ok(None)
    }
}
