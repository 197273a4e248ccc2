//! rtnetlink: interface indexes, link state, addresses and routes.
use std::net::{IpAddr, Ipv6Addr};

use futures::StreamExt;
use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::{Handle, LinkUnspec, MulticastGroup, RouteMessageBuilder};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening a netlink socket failed")]
    Connect(#[source] std::io::Error),
    #[error("no interface named {name}")]
    NoSuchInterface { name: String },
    #[error("{what} failed")]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
}

type Result<T> = std::result::Result<T, NetlinkError>;

/// A netlink connection in the caller's network namespace (needs a tokio runtime).
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    pub async fn ifindex(&self, name: &str) -> Result<u32> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(msg.header.index),
            Ok(None) | Err(rtnetlink::Error::NetlinkError(_)) => {
                Err(NetlinkError::NoSuchInterface {
                    name: name.to_string(),
                })
            }
            Err(source) => Err(NetlinkError::Request {
                what: format!("looking up {name}"),
                source,
            }),
        }
    }

    /// Sets the MTU and brings the link up.
    pub async fn up(&self, index: u32, mtu: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|source| NetlinkError::Request {
                what: format!("setting link {index} up with MTU {mtu}"),
                source,
            })
    }

    /// Adds an address without duplicate address detection (a point-to-point tunnel has
    /// no one to collide with, and DAD would delay the first packet by a second).
    pub async fn add_address(&self, index: u32, addr: IpNet) -> Result<()> {
        let mut req = self
            .handle
            .address()
            .add(index, addr.addr(), addr.prefix_len())
            .replace();
        if matches!(addr.addr(), IpAddr::V6(_)) {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute().await.map_err(|source| NetlinkError::Request {
            what: format!("adding {addr} to link {index}"),
            source,
        })
    }

    /// The IPv4 subnets of every address of this namespace (the PoP's own networks: their
    /// network and broadcast addresses are no tunnel endpoints).
    pub async fn ipv4_subnets(&self) -> Result<Vec<ipnet::Ipv4Net>> {
        let mut out = Vec::new();
        let mut addrs = self.handle.address().get().execute();
        loop {
            let msg = match addrs.try_next().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(source) => {
                    return Err(NetlinkError::Request {
                        what: "listing addresses".into(),
                        source,
                    })
                }
            };
            for a in &msg.attributes {
                if let AddressAttribute::Local(IpAddr::V4(v4)) = a {
                    if let Ok(net) = ipnet::Ipv4Net::new(*v4, msg.header.prefix_len) {
                        out.push(net.trunc());
                    }
                }
            }
        }
        Ok(out)
    }

    /// Routes a prefix (either family) out of a (point-to-point) interface.
    pub async fn add_route_dev(&self, prefix: IpNet, index: u32) -> Result<()> {
        let msg = match prefix {
            IpNet::V6(p) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(p.network(), p.prefix_len())
                .output_interface(index)
                .build(),
            IpNet::V4(p) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(p.network(), p.prefix_len())
                .output_interface(index)
                .build(),
        };
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|source| NetlinkError::Request {
                what: format!("adding route {prefix} dev {index}"),
                source,
            })
    }
}

/// Calls `changed` (at most every `debounce`) after routes, neighbours or links change
/// in this namespace, until the returned task is dropped or aborted.
pub fn watch_changes(
    debounce: std::time::Duration,
    changed: tokio::sync::mpsc::Sender<()>,
) -> Result<tokio::task::JoinHandle<()>> {
    let (conn, _handle, mut messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Neigh,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
    ])
    .map_err(NetlinkError::Connect)?;
    tokio::spawn(conn);
    Ok(tokio::spawn(async move {
        while messages.next().await.is_some() {
            // Coalesce a burst (a route flap brings many messages) into one signal.
            tokio::time::sleep(debounce).await;
            while let Ok(Some(_)) =
                tokio::time::timeout(std::time::Duration::ZERO, messages.next()).await
            {}
            if changed.send(()).await.is_err() {
                break;
            }
        }
    }))
}
