//! `broker run`: load the data plane, fill it from the config, attach, and keep it in step
//! with the config until told to stop.
use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
};

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::{
    config::{self, Config},
    dataplane::{self, Dataplane},
    model::TunnelSpec,
    netlink, sysctl,
};

/// Runs until SIGINT or SIGTERM; SIGHUP re-reads the config and applies tunnel changes.
pub async fn run(config_path: PathBuf) -> anyhow::Result<()> {
    let mut config = Config::load(&config_path)?;
    let opts = dataplane::Options {
        max_tunnels: config.dataplane.max_tunnels,
        max_prefixes: config.dataplane.max_prefixes,
        pin: true,
        nexthop_cache: config.dataplane.nexthop_cache,
        nexthop_max_age_ms: config.dataplane.nexthop_max_age_ms,
        ..dataplane::Options::new(&config.instance)
    };
    let mut dp = Dataplane::load(&opts).context("loading the data plane")?;
    apply(&mut dp, None, &config)?;
    for iface in &config.interfaces {
        prepare_interface(&iface.name);
        dp.attach(&iface.name, iface.mode)?;
    }
    let id = dp.program_id()?;
    info!(
        instance = %config.instance,
        program_id = id,
        tunnels = config.tunnels.len(),
        pins = %dp.pin_path().map(|p| p.display().to_string()).unwrap_or_default(),
        "broker running"
    );

    // The data plane caches FIB results; any route, neighbour or link change invalidates
    // them (the cache's maximum age covers the time this process is not running).
    let (changed_tx, mut changed) = tokio::sync::mpsc::channel(1);
    let _watch = netlink::watch_changes(std::time::Duration::from_millis(20), changed_tx)?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            Some(()) = changed.recv() => {
                dp.invalidate_nexthops()?;
                tracing::debug!("network changed: cached next hops invalidated");
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => match Config::load(&config_path) {
                Ok(new) => {
                    if new.interfaces != config.interfaces || new.instance != config.instance {
                        warn!("interface or instance changes need a restart; applying tunnels only");
                    }
                    apply(&mut dp, Some(&config), &new)?;
                    config = new;
                    info!(tunnels = config.tunnels.len(), "config reloaded");
                }
                Err(e) => warn!(error = %e, "config reload rejected; keeping the running config"),
            },
        }
    }
    info!("stopping: detaching and removing pins");
    dp.detach_all();
    drop(dp);
    Ok(())
}

/// Makes the data plane hold exactly `new`'s tunnels.
fn apply(dp: &mut Dataplane, old: Option<&Config>, new: &Config) -> anyhow::Result<()> {
    let pop = new.pop.ipv4.0;
    if old.map(|o| o.pop.ipv4.0) != Some(pop) {
        dp.set_pop(pop)?;
    }
    let wanted: BTreeSet<u32> = new.tunnels.iter().map(|t| t.id).collect();
    for id in dp.tunnel_ids() {
        if !wanted.contains(&id) {
            dp.remove(id)?;
            info!(id, "tunnel removed");
        }
    }
    // Tunnels as they were, if the PoP address (part of every endpoint key) is the same.
    let before: HashMap<u32, &config::Tunnel> = old
        .filter(|o| o.pop.ipv4 == new.pop.ipv4)
        .map(|o| o.tunnels.iter().map(|t| (t.id, t)).collect())
        .unwrap_or_default();
    for t in &new.tunnels {
        if before.get(&t.id) != Some(&t) {
            dp.upsert(&TunnelSpec::from(t), pop)
                .with_context(|| format!("installing tunnel {}", t.id))?;
        }
    }
    Ok(())
}

/// Kernel settings the fast path relies on for an interface.
fn prepare_interface(name: &str) {
    // Encapsulated packets handed to the kernel (neighbour not yet resolved) carry the
    // PoP's own IPv4 as source; without accept_local the kernel drops them as martians.
    if let Err(e) = sysctl::set(&format!("net.ipv4.conf.{name}.accept_local"), "1") {
        warn!(iface = name, error = %e, "cannot set accept_local");
    }
    // bpf_fib_lookup only forwards from interfaces that forward.
    for key in [
        format!("net.ipv4.conf.{name}.forwarding"),
        format!("net.ipv6.conf.{name}.forwarding"),
    ] {
        if sysctl::get(&key).ok().as_deref() != Some("1") {
            warn!(key, "forwarding is off: tunnel packets will be passed to the kernel, not forwarded in XDP");
        }
    }
}
