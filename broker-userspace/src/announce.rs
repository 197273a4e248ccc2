//! The PoP's pools as a routing daemon announces them (docs/MULTI-POP.md, "BGP"): one
//! blackhole route per pool in a kernel table of their own (`routes.announce_table`),
//! present only while the XDP program is attached. The per-tunnel routes make
//! forwarding work; these aggregates exist only to be announced, and their going away
//! is what withdraws a PoP whose data plane is gone.
use std::{collections::BTreeSet, sync::Arc, time::Duration};

use ipnet::Ipv6Net;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::{
    broker::RouteOps,
    routes::{RouteSettings, Routes},
};

/// How often the data plane's attachment is checked: a detached PoP's aggregates go
/// within this, then within BIRD's timers from its peers.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The aggregates and whether they are in the kernel now.
pub struct Announcer {
    routes: Routes,
    pools: BTreeSet<Ipv6Net>,
    announced: Option<bool>,
}

impl Announcer {
    /// Announces `pools` (link and routed) in `table`, marked with `protocol`.
    pub fn new(table: u32, protocol: u8, pools: BTreeSet<Ipv6Net>) -> anyhow::Result<Self> {
        let routes = Routes::connect(RouteSettings {
            table,
            protocol,
            device: None,
        })?;
        Ok(Self {
            routes,
            pools,
            announced: None,
        })
    }

    /// Makes the table hold the pools if `attached`, nothing otherwise (only when that
    /// changed, or the last attempt failed).
    pub async fn follow(&mut self, attached: bool) {
        if self.announced == Some(attached) {
            return;
        }
        let wanted = if attached {
            self.pools.clone()
        } else {
            BTreeSet::new()
        };
        match RouteOps::reconcile(&self.routes, &wanted).await {
            Ok(_) => {
                info!(
                    attached,
                    aggregates = wanted.len(),
                    "announced pools follow the data plane"
                );
                self.announced = Some(attached);
            }
            Err(e) => {
                warn!(
                    error = e,
                    "writing the announced aggregates failed; trying again"
                );
                self.announced = None;
            }
        }
    }
}

/// Every [`CHECK_EVERY`], makes the announcement follow whether the program is on every
/// interface of `ifaces` (`broker dataplane detach` takes it off).
pub async fn run(
    mut a: Announcer,
    broker: Arc<Mutex<crate::daemon::Running>>,
    ifaces: Vec<String>,
) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let attached = broker.lock().await.maps.attached_to(&ifaces);
        a.follow(attached).await;
    }
}
