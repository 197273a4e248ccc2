//! A PoP's life among others on a shared store (docs/MULTI-POP.md): it reports itself
//! every [`REPORT_EVERY`], and follows the changes other PoPs make to its tunnels.
use std::{sync::Arc, time::Duration};

use tokio::sync::{mpsc::UnboundedReceiver, Mutex};
use tracing::{debug, warn};

use crate::{
    broker::{error_chain, Broker, Projection, RouteOps},
    store::{self, Heard, Notified, PopReport, Store},
};

/// How often a PoP refreshes its row (placement counts a PoP silent for
/// [`crate::broker::placement::HEALTHY_WITHIN_SECS`] as unhealthy).
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// How often a pending catch-up (the listener connected again, a change could not be
/// applied) is retried while the store is away.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// A tick every `period`; after a stall, one tick rather than a burst of the missed ones.
fn every(period: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Refreshes this PoP's row every [`REPORT_EVERY`]; `report` says what it is now.
pub async fn report<S, P, R>(
    broker: Arc<Mutex<Broker<S, P, R>>>,
    report: impl Fn(&Broker<S, P, R>) -> PopReport + Send,
) where
    S: Store,
    P: Projection,
    R: RouteOps,
{
    let mut tick = every(REPORT_EVERY);
    loop {
        tick.tick().await;
        let mut b = broker.lock().await;
        let r = report(&b);
        if let Err(e) = b.store.report_pop(&r, store::now()) {
            debug!(error = %error_chain(&e), "reporting this PoP to the store failed");
        }
    }
}

/// Applies what the store's listener hears ([`Broker::follow_notified`]); catches up
/// after the listener (re)connects, and every `check_every` makes sure nothing notified
/// was missed ([`Broker::catch_up`]).
pub async fn follow<S, P, R>(
    broker: Arc<Mutex<Broker<S, P, R>>>,
    mut heard: UnboundedReceiver<Heard>,
    check_every: Duration,
) where
    S: Store,
    P: Projection,
    R: RouteOps,
{
    let mut retry = every(RETRY_EVERY);
    // Endpoints learnt while the store was away wait for it (`Broker::flush_deferred`).
    let mut flush = every(RETRY_EVERY);
    let mut check = every(check_every);
    // The first tick of each is at once: skip it.
    check.tick().await;
    let mut pending = false;
    loop {
        let mut periodic = false;
        tokio::select! {
            h = heard.recv() => {
                let Some(h) = h else { return };
                let mut batch = vec![h];
                while let Ok(h) = heard.try_recv() {
                    batch.push(h);
                }
                let changes: Vec<Notified> = batch
                    .iter()
                    .filter_map(|h| match h {
                        Heard::Changed(n) => Some(*n),
                        Heard::Listening => None,
                    })
                    .collect();
                pending |= batch.contains(&Heard::Listening);
                let mut b = broker.lock().await;
                if let Err(e) = b.follow_notified(&changes).await {
                    warn!(error = %error_chain(&e), "applying changes made on other PoPs failed: catching up");
                    pending = true;
                }
            }
            _ = retry.tick(), if pending => {}
            _ = check.tick() => periodic = true,
            _ = flush.tick() => {
                let mut b = broker.lock().await;
                if let Err(e) = b.flush_deferred().await {
                    debug!(error = %error_chain(&e), "the store is still away: endpoints keep waiting");
                }
            }
        }
        if pending || periodic {
            let mut b = broker.lock().await;
            match b.catch_up(!pending).await {
                Ok(_) => pending = false,
                Err(e) => {
                    debug!(error = %error_chain(&e), "catching up with the store failed: trying again");
                    pending = true;
                }
            }
        }
    }
}
