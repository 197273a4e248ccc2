//! What the pages show: the templates (`templates/portal/`, askama: every value is
//! HTML-escaped, and no template marks anything safe) and the plain values they are
//! filled with, made here from what the API's operations return. Pure.
use std::collections::{BTreeMap, HashMap};

use askama::Template;

use crate::{
    api::{pops::PopOut, tunnels::TunnelOut, ApiError},
    clientconf::{self, System},
    history::{Bar, STEP_SECS},
};

/// What every page shows of the visitor.
#[derive(Debug, Clone)]
pub struct Page {
    pub title: String,
    pub user: Option<String>,
    pub operator: bool,
    pub csrf: String,
    /// What the last action did, said once.
    pub notice: Option<String>,
}

/// A form's values as sent, and its errors, each at the field it is about.
#[derive(Debug, Clone, Default)]
pub struct Form {
    pub values: HashMap<String, String>,
    errors: BTreeMap<String, String>,
    general: Option<String>,
}

impl Form {
    pub fn with(values: HashMap<String, String>) -> Self {
        Self {
            values,
            ..Default::default()
        }
    }

    pub fn value(&self, k: &str) -> &str {
        self.values.get(k).map_or("", String::as_str)
    }

    /// Whether a select's option or a radio is the chosen one.
    pub fn is(&self, k: &str, v: &str) -> bool {
        self.value(k) == v
    }

    pub fn error(&self, k: &str) -> Option<&str> {
        self.errors.get(k).map(String::as_str)
    }

    /// An error about no one field, or about one this form does not show.
    pub fn general(&self) -> Option<&str> {
        self.general.as_deref()
    }

    pub fn is_ok(&self) -> bool {
        self.errors.is_empty() && self.general.is_none()
    }

    pub fn fail(&mut self, field: Option<&str>, message: impl Into<String>) {
        match field {
            Some(f) => {
                self.errors.insert(f.to_string(), message.into());
            }
            None => self.general = Some(message.into()),
        }
    }

    /// The API's error, at its field if this form has one by that name (`shown`).
    pub fn fail_api(&mut self, e: &ApiError, shown: &[&str]) {
        let field = e.field.as_deref().filter(|f| shown.contains(f));
        // The API's messages start with their field's name; beside the field it is said.
        let message = match field {
            Some(f) => e
                .message
                .strip_prefix(f)
                .and_then(|m| m.strip_prefix(": "))
                .unwrap_or(&e.message),
            None => &e.message,
        };
        self.fail(field, message.to_string());
    }
}

#[derive(Template)]
#[template(path = "portal/problem.html")]
pub struct Problem {
    pub page: Page,
    pub message: String,
}

#[derive(Template)]
#[template(path = "portal/login.html")]
pub struct Login {
    pub page: Page,
    pub form: Form,
    pub signup: bool,
}

#[derive(Template)]
#[template(path = "portal/signup.html")]
pub struct Signup {
    pub page: Page,
    pub form: Form,
    pub invite: bool,
}

#[derive(Template)]
#[template(path = "portal/account.html")]
pub struct Account {
    pub page: Page,
    pub form: Form,
}

#[derive(Template)]
#[template(path = "portal/tunnels.html")]
pub struct TunnelList {
    pub page: Page,
    pub rows: Vec<Row>,
    /// How a TSP client gets a tunnel, where this PoP runs TSP.
    pub tsp: Vec<ClientConfig>,
}

#[derive(Template)]
#[template(path = "portal/tunnel_new.html")]
pub struct TunnelNew {
    pub page: Page,
    pub form: Form,
    /// Where a tunnel may go, when there is a choice.
    pub pops: Vec<String>,
    pub lengths: Vec<u8>,
}

#[derive(Template)]
#[template(path = "portal/tunnel.html")]
pub struct TunnelPage {
    pub page: Page,
    pub t: TunnelOut,
    pub endpoint: String,
    pub state: StateWords,
    pub heard: String,
    pub counters: Vec<(&'static str, String)>,
    pub graph: Graph,
    pub form: Form,
    pub configs: Vec<ClientConfig>,
    pub nic_url: Option<String>,
}

#[derive(Template)]
#[template(path = "portal/op_users.html")]
pub struct OpUsers {
    pub page: Page,
    pub users: Vec<UserRow>,
    pub form: Form,
}

#[derive(Template)]
#[template(path = "portal/op_tunnels.html")]
pub struct OpTunnels {
    pub page: Page,
    pub filter: Form,
    pub rows: Vec<Row>,
    /// The query of the next page, when this one is full.
    pub next: Option<String>,
    pub pops: Vec<String>,
}

impl OpTunnels {
    /// The list's filters as a query, to come back to after an action.
    pub fn back(&self) -> String {
        let mut pairs: Vec<(&String, &String)> = self.filter.values.iter().collect();
        pairs.sort();
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    }
}

#[derive(Template)]
#[template(path = "portal/op_pops.html")]
pub struct OpPops {
    pub page: Page,
    pub pops: Vec<PopRow>,
}

#[derive(Template)]
#[template(path = "portal/op_counters.html")]
pub struct OpCounters {
    pub page: Page,
    pub sections: Vec<CounterSection>,
}

/// A tunnel in a list.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: u32,
    pub pop: String,
    pub owner: String,
    pub kind: String,
    pub state: &'static str,
    pub endpoint: String,
    pub link: String,
    pub routed: String,
    pub mtu: u16,
    pub heard: String,
    pub traffic: String,
    pub disabled: bool,
}

impl Row {
    pub fn of(t: &TunnelOut, heard: Option<u64>, now: u64) -> Self {
        let c = t.counters.as_ref();
        Self {
            id: t.id,
            pop: t.pop.clone(),
            owner: t.owner.clone().unwrap_or_else(|| "-".into()),
            kind: t.kind.clone(),
            state: StateWords::of(t).label,
            endpoint: endpoint(t),
            link: t
                .link_prefix
                .clone()
                .or(t.client_ipv4.clone())
                .unwrap_or_default(),
            routed: t.routed_prefixes.join(", "),
            mtu: t.mtu,
            heard: heard_words(heard, now),
            traffic: c.map_or_else(
                || "-".into(),
                |c| {
                    format!(
                        "↑ {} ↓ {}",
                        bytes(c.from_client_bytes),
                        bytes(c.to_client_bytes)
                    )
                },
            ),
            disabled: t.state == "disabled",
        }
    }
}

#[derive(Debug, Clone)]
pub struct UserRow {
    pub name: String,
    pub created: String,
    pub tunnels: usize,
    pub disabled: bool,
    pub operator: bool,
}

#[derive(Debug)]
pub struct PopRow {
    pub pop: PopOut,
    pub seen: String,
    pub tunnels: String,
}

impl PopRow {
    pub fn of(pop: PopOut, now: u64) -> Self {
        let d = pop.detail.as_ref();
        Self {
            seen: heard_words(d.and_then(|d| d.last_seen), now),
            tunnels: d.map_or_else(String::new, |d| {
                d.tunnels
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }),
            pop,
        }
    }

    pub fn version(&self) -> &str {
        self.pop
            .detail
            .as_ref()
            .and_then(|d| d.version.as_deref())
            .unwrap_or("-")
    }

    pub fn attached(&self) -> bool {
        self.pop.detail.as_ref().is_some_and(|d| d.attached)
    }

    pub fn pools(&self) -> String {
        self.pop.detail.as_ref().map_or_else(String::new, |d| {
            d.link_pools
                .iter()
                .chain(&d.routed_pools)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        })
    }
}

/// One table of the counters page.
#[derive(Debug, Clone)]
pub struct CounterSection {
    pub title: &'static str,
    pub about: &'static str,
    pub rows: Vec<CounterRow>,
}

#[derive(Debug, Clone)]
pub struct CounterRow {
    pub name: &'static str,
    pub packets: u64,
    pub bytes: String,
    pub meaning: &'static str,
}

/// A configuration for one system, for the tunnel's page.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub id: &'static str,
    pub title: &'static str,
    pub text: String,
}

impl ClientConfig {
    /// `user`'s TSP client's configurations, for the TSP server at `server`.
    fn of(system: System, text: String) -> Self {
        Self {
            id: system.as_str(),
            title: system.title(),
            text,
        }
    }

    pub fn tsp(user: &str, server: &str) -> Vec<Self> {
        clientconf::tsp_account(user, server)
            .into_iter()
            .map(|(s, text)| Self::of(s, text))
            .collect()
    }

    pub fn all(t: &TunnelOut) -> Vec<Self> {
        System::for_tunnel(t)
            .into_iter()
            .map(|s| Self::of(s, clientconf::render(t, s)))
            .collect()
    }
}

/// What a tunnel's state means to its user, and what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateWords {
    pub label: &'static str,
    pub meaning: &'static str,
    pub todo: &'static str,
}

impl StateWords {
    pub fn of(t: &TunnelOut) -> Self {
        match (t.state.as_str(), t.asleep) {
            ("disabled", _) => Self {
                label: "disabled",
                meaning: "Disabled by the operator: the PoP carries no traffic for it.",
                todo: "Only the operator can enable it again: ask them.",
            },
            ("down", _) => Self {
                label: "down",
                meaning: "Set down: the PoP carries no traffic for it.",
                todo: "Set it up below when you want it back.",
            },
            (_, true) => Self {
                label: "asleep",
                meaning: "Your client has fallen silent, so the PoP holds the tunnel down until it hears from it again.",
                todo: "Start your client, or check that it reaches the PoP: the tunnel wakes with its next packet or login.",
            },
            _ => Self {
                label: "up",
                meaning: "Up: the PoP carries the tunnel's traffic.",
                todo: "If nothing flows, check your end against the configuration below.",
            },
        }
    }
}

/// The rule of each drop and pass reason as docs/ARCHITECTURE.md's table words it: the
/// operator's page says what the documentation says, from the one text.
static DOCUMENTED: std::sync::LazyLock<HashMap<String, String>> = std::sync::LazyLock::new(|| {
    let text = include_str!("../../../docs/ARCHITECTURE.md");
    let mut rules = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").collect();
        let [names, _verdict, rule] = cells[..] else {
            continue;
        };
        for name in names.split(',') {
            rules.insert(
                name.trim().trim_matches('`').to_string(),
                rule.trim().replace('`', ""),
            );
        }
    }
    rules
});

/// What docs/ARCHITECTURE.md says reason `name` means.
pub fn documented(name: &str) -> Option<&'static str> {
    DOCUMENTED.get(name).map(String::as_str)
}

/// The client's endpoint, as one string.
pub fn endpoint(t: &TunnelOut) -> String {
    match (&t.remote_ipv4, t.remote_port, &t.remote_ipv6) {
        (Some(a), Some(p), _) => format!("{a}:{p}"),
        (Some(a), None, _) => a.clone(),
        (None, _, Some(a)) => a.clone(),
        _ => "learnt from the client".into(),
    }
}

/// A graph of a tunnel's bars: two polylines in a 600×120 box, and its scale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    pub from_points: String,
    pub to_points: String,
    pub peak: String,
    pub hours: u64,
    pub empty: bool,
}

pub const GRAPH_W: u64 = 600;
pub const GRAPH_H: u64 = 120;

impl Graph {
    pub fn of(bars: &[Bar]) -> Self {
        let peak = bars
            .iter()
            .map(|b| b.from_client.max(b.to_client))
            .max()
            .unwrap_or(0);
        let points = |f: fn(&Bar) -> u64| {
            let n = bars.len().max(2) as u64 - 1;
            bars.iter()
                .enumerate()
                .map(|(i, b)| {
                    let y = GRAPH_H - f(b) * GRAPH_H / peak.max(1);
                    format!("{},{y}", i as u64 * GRAPH_W / n)
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        Self {
            from_points: points(|b| b.from_client),
            to_points: points(|b| b.to_client),
            peak: rate(peak * 8 / STEP_SECS),
            hours: bars.len() as u64 * STEP_SECS / 3600,
            empty: peak == 0,
        }
    }
}

/// Bytes for people: 1.5 MiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Bits a second for people: 12.3 Mbit/s.
pub fn rate(bits: u64) -> String {
    const UNITS: [&str; 5] = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"];
    let mut v = bits as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bits} bit/s")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// "3 min ago" for a Unix time, or what not knowing means.
pub fn heard_words(at: Option<u64>, now: u64) -> String {
    let Some(at) = at else {
        return "not yet".into();
    };
    let d = now.saturating_sub(at);
    match d {
        0..60 => "within the last minute".into(),
        60..7200 => format!("{} min ago", d / 60),
        7200..172_800 => format!("{} h ago", d / 3600),
        _ => format!("{} days ago", d / 86_400),
    }
}

/// A Unix time as `2026-12-07 03:12 UTC`.
pub fn date(t: u64) -> String {
    // Days to a civil date (Howard Hinnant's algorithm).
    let days = (t / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let s = t % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        s / 3600,
        s % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_for_people() {
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(rate(12_300_000), "12.3 Mbit/s");
        assert_eq!(date(0), "1970-01-01 00:00 UTC");
        assert_eq!(date(1_796_615_520), "2026-12-07 03:52 UTC");
        assert_eq!(heard_words(None, 10), "not yet");
        assert_eq!(heard_words(Some(100), 400), "5 min ago");
    }

    #[test]
    fn every_reason_has_architectures_words() {
        use broker_common::stats::{DropReason, PassReason};
        for r in DropReason::ALL {
            assert!(documented(r.as_str()).is_some(), "{}", r.as_str());
        }
        for r in PassReason::ALL {
            assert!(documented(r.as_str()).is_some(), "{}", r.as_str());
        }
        assert!(documented("tunnel_disabled")
            .unwrap()
            .starts_with("the tunnel's state"));
        assert!(!documented("link_local").unwrap().contains('`'));
    }

    #[test]
    fn a_graph_scales_to_its_peak() {
        let bars = [
            Bar::default(),
            Bar {
                from_client: 300,
                to_client: 150,
            },
            Bar::default(),
        ];
        let g = Graph::of(&bars);
        assert_eq!(g.from_points, "0,120 300,0 600,120");
        assert_eq!(g.to_points, "0,120 300,60 600,120");
        assert_eq!(g.peak, "8 bit/s");
        assert!(!g.empty);
        assert!(Graph::of(&[Bar::default(); 72]).empty);
        assert_eq!(Graph::of(&[Bar::default(); 72]).hours, 6);
    }
}
