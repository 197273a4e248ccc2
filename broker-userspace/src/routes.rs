//! Routes for the tunnel prefixes (rtnetlink), in a configurable table and marked with
//! the broker's own protocol number, so that a routing daemon can redistribute them and
//! `ip -6 route show proto 200` lists exactly the broker's routes.
//!
//! The routes are a projection of the store like the maps: reconciled at start, added with
//! a tunnel, removed with it. Routes of other protocols are never touched.
use std::{collections::BTreeSet, net::Ipv6Addr};

use futures::TryStreamExt;
use ipnet::Ipv6Net;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol, RouteType};
use rtnetlink::{Handle, RouteMessageBuilder};

/// Route requests a reconcile keeps in flight at once.
const IN_FLIGHT: usize = 128;

/// `routes.protocol` when the config does not say (RTPROT values above 4 are free for
/// routing daemons; 200 is not used by any common one).
pub const DEFAULT_PROTOCOL: u8 = 200;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("opening a netlink socket failed")]
    Connect(#[source] std::io::Error),
    #[error("no interface {name} for routes.device")]
    NoDevice { name: String },
    #[error("{what} {prefix} failed")]
    Request {
        what: &'static str,
        prefix: Ipv6Net,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("listing routes failed")]
    List(#[source] rtnetlink::Error),
}

/// Where and how tunnel routes are written.
#[derive(Debug, Clone)]
pub struct RouteSettings {
    pub table: u32,
    pub protocol: u8,
    /// Interface index the routes point at; `None` makes them blackholes.
    pub device: Option<u32>,
}

/// The broker's routes in one network namespace.
pub struct Routes {
    handle: Handle,
    settings: RouteSettings,
}

impl Routes {
    /// The settings the routes are made with, as text (part of the maps' stamp).
    pub fn identity(&self) -> String {
        format!("{:?}", self.settings)
    }

    /// Connects in the caller's namespace (needs a tokio runtime).
    pub fn connect(settings: RouteSettings) -> Result<Self, RouteError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(RouteError::Connect)?;
        tokio::spawn(conn);
        Ok(Self { handle, settings })
    }

    fn message(&self, prefix: &Ipv6Net) -> netlink_packet_route::route::RouteMessage {
        let b = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(prefix.network(), prefix.prefix_len())
            .table_id(self.settings.table)
            .protocol(RouteProtocol::Other(self.settings.protocol));
        match self.settings.device {
            Some(dev) => b.output_interface(dev).build(),
            None => b.kind(RouteType::BlackHole).build(),
        }
    }

    /// Adds (or replaces) the route for `prefix`.
    pub async fn add(&self, prefix: &Ipv6Net) -> Result<(), RouteError> {
        self.handle
            .route()
            .add(self.message(prefix))
            .replace()
            .execute()
            .await
            .map_err(|source| RouteError::Request {
                what: "adding the route to",
                prefix: *prefix,
                source,
            })
    }

    /// Removes the route for `prefix`; a missing route is not an error.
    pub async fn del(&self, prefix: &Ipv6Net) -> Result<(), RouteError> {
        match self
            .handle
            .route()
            .del(self.message(prefix))
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
            Err(source) => Err(RouteError::Request {
                what: "removing the route to",
                prefix: *prefix,
                source,
            }),
        }
    }

    /// The broker's routes now in the table (its protocol, its table).
    pub async fn list(&self) -> Result<BTreeSet<Ipv6Net>, RouteError> {
        let query = RouteMessageBuilder::<Ipv6Addr>::new().build();
        let mut routes = self.handle.route().get(query).execute();
        let mut out = BTreeSet::new();
        while let Some(msg) = routes.try_next().await.map_err(RouteError::List)? {
            if u8::from(msg.header.protocol) != self.settings.protocol {
                continue;
            }
            let table = msg
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(msg.header.table));
            if table != self.settings.table {
                continue;
            }
            let dst = msg.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet6(d)) => Some(*d),
                _ => None,
            });
            if let Some(d) = dst {
                if let Ok(p) = Ipv6Net::new(d, msg.header.destination_prefix_length) {
                    out.insert(p);
                }
            }
        }
        Ok(out)
    }

    /// Makes the broker's routes exactly `wanted`; returns (added, removed).
    pub async fn reconcile(
        &self,
        wanted: &BTreeSet<Ipv6Net>,
    ) -> Result<(usize, usize), RouteError> {
        use futures::StreamExt;
        let present = self.list().await?;
        let missing: Vec<Ipv6Net> = wanted.difference(&present).copied().collect();
        let stale: Vec<Ipv6Net> = present.difference(wanted).copied().collect();
        // Many requests in flight on the one socket: a cold start installs every route,
        // and one round trip at a time would take seconds per hundred thousand.
        let added = futures::stream::iter(missing)
            .map(|p| async move { self.add(&p).await })
            .buffer_unordered(IN_FLIGHT)
            .try_fold(0, |n, ()| async move { Ok(n + 1) })
            .await?;
        let removed = futures::stream::iter(stale)
            .map(|p| async move { self.del(&p).await })
            .buffer_unordered(IN_FLIGHT)
            .try_fold(0, |n, ()| async move { Ok(n + 1) })
            .await?;
        Ok((added, removed))
    }

    /// [`Routes::reconcile`] on a thread of its own, with its own netlink socket and
    /// runtime, so that the caller writes the maps meanwhile (the kernel's work for a
    /// million routes is seconds, as is the maps'). The answer comes on the channel.
    pub fn reconcile_apart(
        &self,
        wanted: BTreeSet<Ipv6Net>,
    ) -> std::io::Result<tokio::sync::oneshot::Receiver<Result<(usize, usize), String>>> {
        let settings = self.settings.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("routes".into())
            .spawn(move || {
                let answer = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(async {
                        let routes = Routes::connect(settings)?;
                        routes.reconcile(&wanted).await
                    }),
                    Err(e) => Err(RouteError::Connect(e)),
                };
                let _ = tx.send(answer.map_err(|e| crate::broker::error_chain(&e)));
            })?;
        Ok(rx)
    }
}
