//! Rules across entries, checked after deserialisation. Errors are (key path, message).
use std::collections::HashMap;

use broker_common::maps::{MAX_PREFIX_LENS, MAX_ROUTED};
use ipnet::Ipv6Net;

use super::{Config, TspTunnelType, TunnelKind};

type Invalid = (String, String);

pub fn validate(c: &Config) -> Result<(), Invalid> {
    instance(&c.instance)?;
    pop_name(c)?;
    store(c)?;
    interfaces(c)?;
    limits(c)?;
    rates(c)?;
    pools(c)?;
    announce(c)?;
    api(c)?;
    portal(c)?;
    tsp(c)?;
    ayiya(c)?;
    tic(c)?;
    heartbeat(c)?;
    ports(c)?;
    tunnels(c)
}

/// No two services on one port of one address: a listener that cannot bind fails at
/// start, and a UDP port XDP consumes (AYIYA) silently starves whatever else is there.
fn ports(c: &Config) -> Result<(), Invalid> {
    use std::net::IpAddr;
    #[derive(PartialEq, Clone, Copy)]
    enum Proto {
        Tcp,
        Udp,
    }
    let pop4 = IpAddr::V4(c.pop.ipv4.0);
    let pop6 = c.pop.ipv6.map(|a| IpAddr::V6(a.0));
    let mut used: Vec<(Proto, IpAddr, u16, &str)> = Vec::new();
    let api = c.api.listen;
    used.push((Proto::Tcp, api.ip(), api.port(), "api.listen"));
    if let Some(p) = c.api.public_listen {
        used.push((Proto::Tcp, p.ip(), p.port(), "api.public_listen"));
    }
    if let Some(p) = c.portal.listen.filter(|_| c.portal.enabled) {
        used.push((Proto::Tcp, p.ip(), p.port(), "portal.listen"));
    }
    if let Some(t) = &c.tsp {
        for ip in std::iter::once(pop4).chain(pop6) {
            used.push((Proto::Tcp, ip, t.port, "tsp.port"));
            used.push((Proto::Udp, ip, t.port, "tsp.port"));
        }
    }
    if let Some(t) = &c.tic {
        used.push((Proto::Tcp, pop4, t.port, "tic.port"));
    }
    if let Some(h) = &c.heartbeat {
        used.push((Proto::Udp, pop4, h.port, "heartbeat.port"));
    }
    if let Some(a) = &c.ayiya {
        used.push((Proto::Udp, pop4, a.port, "ayiya.port"));
    }
    for (i, (proto, ip, port, key)) in used.iter().enumerate() {
        let clash = used[..i].iter().find(|(p2, ip2, port2, key2)| {
            p2 == proto
                && port2 == port
                && key2 != key
                && (ip2 == ip || ip.is_unspecified() || ip2.is_unspecified())
        });
        if let Some((p2, _, _, key2)) = clash {
            let proto = if *p2 == Proto::Tcp { "TCP" } else { "UDP" };
            return Err((
                key.to_string(),
                format!("{proto} port {port} is already {key2}'s"),
            ));
        }
    }
    Ok(())
}

fn rates(c: &Config) -> Result<(), Invalid> {
    let d = &c.dataplane;
    for (key, rate) in [
        ("dataplane.icmp_rate", d.icmp_rate),
        ("dataplane.neighbour_rate", d.neighbour_rate),
    ] {
        if !(1..=1_000_000).contains(&rate) {
            return Err((
                key.into(),
                format!("{rate} is outside 1-1000000 per second"),
            ));
        }
    }
    for (key, burst) in [
        ("dataplane.icmp_burst", d.icmp_burst),
        ("dataplane.neighbour_burst", d.neighbour_burst),
    ] {
        if burst > 1_000_000 {
            return Err((key.into(), format!("{burst} is more than 1000000")));
        }
    }
    Ok(())
}

fn ayiya(c: &Config) -> Result<(), Invalid> {
    let Some(a) = &c.ayiya else {
        return Ok(());
    };
    if a.port == 0 {
        return Err(("ayiya.port".into(), "0 is not a port".into()));
    }
    Ok(())
}

fn tsp(c: &Config) -> Result<(), Invalid> {
    if let Some(pool) = c.pools.v4v6 {
        if pool.0.prefix_len() > 30 {
            return Err((
                "pools.v4v6".into(),
                format!(
                    "{pool:?} leaves no room: at most /30 (the first host is the PoP's)",
                    pool = pool.0
                ),
            ));
        }
        if c.pop.ipv6.is_none() {
            return Err((
                "pools.v4v6".into(),
                "v4v6 tunnels end on pop.ipv6, which is not set".into(),
            ));
        }
    }
    let Some(t) = &c.tsp else {
        return Ok(());
    };
    if t.port == 0 {
        return Err(("tsp.port".into(), "0 is not a port".into()));
    }
    if t.auth.is_empty() {
        return Err(("tsp.auth".into(), "at least one mechanism is needed".into()));
    }
    if t.tunnel_types.is_empty() {
        return Err((
            "tsp.tunnel_types".into(),
            "at least one type is needed".into(),
        ));
    }
    if t.tunnel_types.contains(&TspTunnelType::V4V6) && c.pools.v4v6.is_none() {
        return Err((
            "tsp.tunnel_types".into(),
            "v4v6 needs pools.v4v6 (and pop.ipv6)".into(),
        ));
    }
    let carries_ipv6 = t.tunnel_types.iter().any(|k| *k != TspTunnelType::V4V6);
    if carries_ipv6 && c.pools.link.is_empty() {
        return Err((
            "tsp.tunnel_types".into(),
            "v6v4 and v6udpv4 need pools.link to give clients their /64".into(),
        ));
    }
    if t.keepalive_secs < 5 || t.keepalive_secs > 3600 {
        return Err((
            "tsp.keepalive_secs".into(),
            format!("{} is outside 5-3600", t.keepalive_secs),
        ));
    }
    if t.realm.is_empty() || t.realm.contains(['"', ',', '\\']) {
        return Err((
            "tsp.realm".into(),
            "must be non-empty, without quotes, commas or backslashes".into(),
        ));
    }
    if !(512..=65_536).contains(&t.max_message) {
        return Err((
            "tsp.max_message".into(),
            format!("{} is outside 512-65536", t.max_message),
        ));
    }
    let d = t.dns_server;
    if d.is_multicast() || d.is_loopback() || d.to_ipv4_mapped().is_some() {
        return Err((
            "tsp.dns_server".into(),
            format!("{d} is not a unicast IPv6 address (:: offers none)"),
        ));
    }
    if t.anonymous_per_source == 0 {
        return Err((
            "tsp.anonymous_per_source".into(),
            "must be at least 1".into(),
        ));
    }
    if t.negotiation_timeout_secs == 0 || t.sessions_per_source == 0 {
        let key = if t.negotiation_timeout_secs == 0 {
            "tsp.negotiation_timeout_secs"
        } else {
            "tsp.sessions_per_source"
        };
        return Err((key.into(), "must be at least 1".into()));
    }
    Ok(())
}

fn announce(c: &Config) -> Result<(), Invalid> {
    match c.routes.announce_table {
        Some(t) if t == c.routes.table || [0, 253, 254, 255].contains(&t) => Err((
            "routes.announce_table".into(),
            format!(
                "{t}: a table of its own (not 0, 253-255, nor routes.table), for the aggregates a routing daemon announces"
            ),
        )),
        _ => Ok(()),
    }
}

/// `pop.name` (an instance name, its default, is always a valid one).
fn pop_name(c: &Config) -> Result<(), Invalid> {
    let name = c.pop_name();
    if !crate::store::valid_pop_name(&name) {
        return Err((
            "pop.name".into(),
            format!(
                "{name:?} must be 1-64 characters of a-z, A-Z, 0-9, '.', '_', '-' (the PoP's name)"
            ),
        ));
    }
    Ok(())
}

fn tic(c: &Config) -> Result<(), Invalid> {
    let Some(t) = &c.tic else {
        return Ok(());
    };
    if t.port == 0 {
        return Err(("tic.port".into(), "0 is not a port".into()));
    }
    let id = c.tic_pop_id();
    // aiccu splits `tunnel list` lines on spaces and prints the id in its logs.
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err((
            "tic.pop_id".into(),
            format!("{id:?} must be 1-64 printable characters without spaces"),
        ));
    }
    if t.idle_timeout_secs == 0 || t.idle_timeout_secs > 3600 {
        return Err((
            "tic.idle_timeout_secs".into(),
            format!("{} is outside 1-3600", t.idle_timeout_secs),
        ));
    }
    if !(128..=65_536).contains(&t.max_line) {
        return Err((
            "tic.max_line".into(),
            format!("{} is outside 128-65536", t.max_line),
        ));
    }
    match (&t.certificate, &t.key) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(("tic.key".into(), "tic.certificate needs a key".into())),
        (None, Some(_)) => Err((
            "tic.certificate".into(),
            "tic.key needs a certificate".into(),
        )),
        (Some(cert), Some(key)) => crate::tls::load(cert, key)
            .map(|_| ())
            .map_err(|e| (e.key("tic"), e.to_string())),
    }
}

fn heartbeat(c: &Config) -> Result<(), Invalid> {
    let Some(h) = &c.heartbeat else {
        return Ok(());
    };
    if h.port == 0 {
        return Err(("heartbeat.port".into(), "0 is not a port".into()));
    }
    if !(10..=3600).contains(&h.interval_secs) {
        return Err((
            "heartbeat.interval_secs".into(),
            format!("{} is outside 10-3600", h.interval_secs),
        ));
    }
    // A tunnel beating on time must never time out between two beats.
    if h.timeout_secs <= u64::from(h.interval_secs) || h.timeout_secs > 86_400 {
        return Err((
            "heartbeat.timeout_secs".into(),
            format!(
                "{} must be more than interval_secs ({}) and at most 86400",
                h.timeout_secs, h.interval_secs
            ),
        ));
    }
    Ok(())
}

/// One store, and a PostgreSQL password never in the configuration (which more people
/// read than a secret should reach).
fn store(c: &Config) -> Result<(), Invalid> {
    let s = &c.store;
    if s.reconcile_interval_secs
        .is_some_and(|n| !(1..=3600).contains(&n))
    {
        return Err((
            "store.reconcile_interval_secs".into(),
            "must be 1-3600 seconds".into(),
        ));
    }
    match &s.url {
        Some(_) if s.path.is_some() => Err((
            "store.url".into(),
            "store.path and store.url exclude each other: SQLite or PostgreSQL".into(),
        )),
        Some(url) => {
            let parsed: postgres::Config = url.parse().map_err(|e| {
                (
                    "store.url".to_string(),
                    format!("not a PostgreSQL URL: {e}"),
                )
            })?;
            if parsed.get_password().is_some() {
                return Err((
                    "store.url".into(),
                    "holds a password: put it in store.password_file or $BROKER_STORE_PASSWORD"
                        .into(),
                ));
            }
            if parsed.get_dbname().is_none() {
                return Err(("store.url".into(), "names no database (dbname)".into()));
            }
            if parsed.get_ssl_mode() == postgres::config::SslMode::Require
                && s.tls_ca_file.is_none()
            {
                return Err((
                    "store.tls_ca_file".into(),
                    "sslmode=require needs the CA to verify the server against (TLS without verification is not offered)".into(),
                ));
            }
            if let Some(ca) = &s.tls_ca_file {
                crate::store::PgTls::from_ca_file(Some(ca))
                    .map_err(|e| ("store.tls_ca_file".to_string(), e.to_string()))?;
            }
            Ok(())
        }
        None if s.password_file.is_some() => Err((
            "store.password_file".into(),
            "is for store.url (PostgreSQL), which is not set".into(),
        )),
        None if s.tls_ca_file.is_some() => Err((
            "store.tls_ca_file".into(),
            "is for store.url (PostgreSQL), which is not set".into(),
        )),
        None => Ok(()),
    }
}

fn api(c: &Config) -> Result<(), Invalid> {
    if let Some(t) = &c.api.tls {
        crate::tls::load(&t.certificate, &t.key).map_err(|e| (e.key("api.tls"), e.to_string()))?;
    }
    match &c.api.admin_token {
        Some(t) if t.len() < 16 => Err((
            "api.admin_token".into(),
            "shorter than 16 characters; use a random token".into(),
        )),
        Some(t) if t.chars().collect::<std::collections::BTreeSet<_>>().len() < 8 => Err((
            "api.admin_token".into(),
            "fewer than 8 different characters; use a random token (openssl rand -hex 24)".into(),
        )),
        _ => Ok(()),
    }
}

fn portal(c: &Config) -> Result<(), Invalid> {
    let p = &c.portal;
    if p.signup == super::Signup::Invite && p.invite_codes.is_empty() {
        return Err((
            "portal.invite_codes".into(),
            "signup: invite needs at least one code".into(),
        ));
    }
    for (i, code) in p.invite_codes.iter().enumerate() {
        if code.len() < 12 || code.len() > 128 || code.chars().any(|c| !c.is_ascii_graphic()) {
            return Err((
                format!("portal.invite_codes[{i}]"),
                "12-128 printable characters without spaces; use a random code".into(),
            ));
        }
    }
    for (i, name) in p.operators.iter().enumerate() {
        if !crate::broker::valid_user_name(name) {
            return Err((
                format!("portal.operators[{i}]"),
                format!("{name:?} is not a user name"),
            ));
        }
    }
    if !(1..=720).contains(&p.session_hours) {
        return Err((
            "portal.session_hours".into(),
            format!("{} is outside 1-720", p.session_hours),
        ));
    }
    if p.history_hours > 48 {
        return Err((
            "portal.history_hours".into(),
            format!("{} is more than 48", p.history_hours),
        ));
    }
    Ok(())
}

fn pools(c: &Config) -> Result<(), Invalid> {
    let p = &c.pools;
    for (i, pool) in p.link.iter().enumerate() {
        if pool.0.prefix_len() > 64 {
            return Err((
                format!("pools.link[{i}]"),
                format!("{pool} is longer than /64; link /64s are carved from it"),
            ));
        }
    }
    let mut lens = p.routed_lengths.clone();
    lens.sort_unstable();
    lens.dedup();
    if lens.len() != p.routed_lengths.len() {
        return Err((
            "pools.routed_lengths".into(),
            "lengths are listed twice".into(),
        ));
    }
    for (i, len) in p.routed_lengths.iter().enumerate() {
        if !(1..=64).contains(len) {
            return Err((
                format!("pools.routed_lengths[{i}]"),
                format!("/{len} is outside /1-/64"),
            ));
        }
    }
    let shortest = p.routed_lengths.iter().copied().min().unwrap_or(64);
    for (i, pool) in p.routed.iter().enumerate() {
        if pool.0.prefix_len() > shortest {
            return Err((
                format!("pools.routed[{i}]"),
                format!("{pool} is longer than the shortest routed length /{shortest}"),
            ));
        }
    }
    Ok(())
}

fn instance(name: &str) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err((
            "instance".into(),
            format!("{name:?} must be 1-32 characters of a-z, 0-9, '-' and '_' (it names the pin directory)"),
        ))
    }
}

fn interfaces(c: &Config) -> Result<(), Invalid> {
    if c.interfaces.is_empty() {
        return Err((
            "interfaces".into(),
            "at least one interface is needed".into(),
        ));
    }
    let mut seen = HashMap::new();
    for (i, iface) in c.interfaces.iter().enumerate() {
        let key = format!("interfaces[{i}].name");
        if iface.name.is_empty() || iface.name.len() > 15 || iface.name.contains(['/', ' ']) {
            return Err((
                key,
                format!("{:?} is not a valid interface name", iface.name),
            ));
        }
        if let Some(first) = seen.insert(iface.name.as_str(), i) {
            return Err((
                key,
                format!("{} is already listed as interfaces[{first}]", iface.name),
            ));
        }
    }
    Ok(())
}

fn limits(c: &Config) -> Result<(), Invalid> {
    let l = &c.dataplane;
    if l.max_tunnels == 0 || l.max_tunnels > 1 << 24 {
        return Err((
            "dataplane.max_tunnels".into(),
            format!("{} is outside 1-16777216", l.max_tunnels),
        ));
    }
    if l.max_prefixes < l.max_tunnels {
        return Err((
            "dataplane.max_prefixes".into(),
            format!(
                "{} is less than max_tunnels ({}): every tunnel has a link prefix",
                l.max_prefixes, l.max_tunnels
            ),
        ));
    }
    let e = &l.max_endpoints;
    for (kind, n) in [
        ("proto41", e.proto41),
        ("v6udpv4", e.v6udpv4),
        ("v4v6", e.v4v6),
        ("ayiya", e.ayiya),
    ] {
        if let Some(n) = n.filter(|n| *n == 0 || *n > l.max_tunnels) {
            return Err((
                format!("dataplane.max_endpoints.{kind}"),
                format!("{n} is outside 1-{} (max_tunnels)", l.max_tunnels),
            ));
        }
    }
    if !(1..=60_000).contains(&l.nexthop_max_age_ms) {
        return Err((
            "dataplane.nexthop_max_age_ms".into(),
            format!("{} is outside 1-60000", l.nexthop_max_age_ms),
        ));
    }
    if c.tunnels.len() > l.max_tunnels as usize {
        return Err((
            "tunnels".into(),
            format!(
                "{} tunnels do not fit dataplane.max_tunnels = {}",
                c.tunnels.len(),
                l.max_tunnels
            ),
        ));
    }
    let prefixes: usize = c.tunnels.iter().map(|t| 1 + t.routed_prefixes.len()).sum();
    if prefixes > l.max_prefixes as usize {
        return Err((
            "tunnels".into(),
            format!(
                "{prefixes} prefixes do not fit dataplane.max_prefixes = {}",
                l.max_prefixes
            ),
        ));
    }
    Ok(())
}

fn tunnels(c: &Config) -> Result<(), Invalid> {
    let pop = c.pop.ipv4.0;
    let mut ids = HashMap::new();
    let mut endpoints = HashMap::new();
    // (prefix, key path, tunnel id) of every prefix, for the overlap check.
    let mut prefixes: Vec<(Ipv6Net, String, u32)> = Vec::new();
    for (i, t) in c.tunnels.iter().enumerate() {
        let at = |k: &str| format!("tunnels[{i}].{k}");
        if t.id == 0 {
            return Err((at("id"), "tunnel ids start at 1".into()));
        }
        if let Some(first) = ids.insert(t.id, i) {
            return Err((
                at("id"),
                format!("id {} is already used by tunnels[{first}]", t.id),
            ));
        }
        if t.kind != TunnelKind::Proto41 {
            return Err((
                at("kind"),
                "static tunnels are proto41; the other kinds come from TSP sessions or the API"
                    .into(),
            ));
        }
        let remote = t.remote_ipv4.0;
        let local = crate::endpoints::Local {
            ipv4: Some(pop),
            ipv6: c.pop.ipv6.map(|a| a.0),
            subnets: Vec::new(),
            private_allowed: c.pop.private_endpoints,
        };
        let origin = crate::endpoints::Origin::Named;
        if let Some(why) = crate::endpoints::problem(remote.into(), &local, origin) {
            return Err((at("remote_ipv4"), why));
        }
        if let Some(first) = endpoints.insert(remote, i) {
            return Err((
                at("remote_ipv4"),
                format!(
                    "{remote} is already the endpoint of tunnels[{first}]; proto-41 tells tunnels apart by endpoint"
                ),
            ));
        }
        if t.routed_prefixes.len() > MAX_ROUTED {
            return Err((
                at("routed_prefixes"),
                format!(
                    "{} routed prefixes; a tunnel has at most {MAX_ROUTED}",
                    t.routed_prefixes.len()
                ),
            ));
        }
        prefixes.push((t.link_prefix.0, at("link_prefix"), t.id));
        for (j, p) in t.routed_prefixes.iter().enumerate() {
            let key = format!("tunnels[{i}].routed_prefixes[{j}]");
            if p.0.prefix_len() > 64 {
                return Err((
                    key,
                    format!("{p} is longer than /64; routed prefixes are /64 or shorter"),
                ));
            }
            prefixes.push((p.0, key, t.id));
        }
    }
    lengths(&prefixes)?;
    // Pools take part in the overlap check: a static prefix inside a pool could be
    // allocated a second time.
    for (i, pool) in c.pools.link.iter().enumerate() {
        prefixes.push((pool.0, format!("pools.link[{i}]"), 0));
    }
    for (i, pool) in c.pools.routed.iter().enumerate() {
        prefixes.push((pool.0, format!("pools.routed[{i}]"), 0));
    }
    overlaps(prefixes)
}

/// Every distinct prefix length costs the data plane one hash probe per packet.
fn lengths(prefixes: &[(Ipv6Net, String, u32)]) -> Result<(), Invalid> {
    let mut seen: Vec<u8> = Vec::new();
    for (p, key, _) in prefixes {
        if !seen.contains(&p.prefix_len()) {
            seen.push(p.prefix_len());
            if seen.len() > MAX_PREFIX_LENS {
                return Err((
                    key.clone(),
                    format!(
                        "/{} would be the {}th distinct prefix length; at most {MAX_PREFIX_LENS} are supported",
                        p.prefix_len(),
                        seen.len()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Sorted by start address (shorter first on ties), a prefix overlaps an earlier one
/// exactly when it starts inside the widest range seen so far.
fn overlaps(mut prefixes: Vec<(Ipv6Net, String, u32)>) -> Result<(), Invalid> {
    prefixes.sort_by_key(|(p, _, _)| (p.network(), p.prefix_len()));
    let mut widest: Option<&(Ipv6Net, String, u32)> = None;
    for entry in &prefixes {
        if let Some(w) = widest {
            if w.0.contains(&entry.0.network()) {
                let owner = if w.2 == 0 {
                    "the pool".to_string()
                } else {
                    format!("tunnel {}", w.2)
                };
                return Err((
                    entry.1.clone(),
                    format!("{} overlaps {} of {owner} ({})", entry.0, w.0, w.1),
                ));
            }
        }
        if widest.is_none_or(|w| entry.0.broadcast() > w.0.broadcast()) {
            widest = Some(entry);
        }
    }
    Ok(())
}
