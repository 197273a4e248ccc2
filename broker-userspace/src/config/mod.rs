//! The YAML configuration: typed with serde_yaml, then validated as a whole.
//!
//! Two kinds of error, both naming the key and the line:
//! - shape and value errors (unknown key, wrong type, an IPv6 address where IPv4 belongs,
//!   an MTU out of range) come from deserialisation, which knows where it is;
//! - rules across entries (duplicate ids, overlapping prefixes, duplicate endpoints) are
//!   checked afterwards and located with [`spans::SpanIndex`].
//!
//! The reference for operators is docs/CONFIGURATION.md.

mod spans;
mod types;
mod validate;

use std::{fmt, path::Path};

use serde::Deserialize;

pub use types::{Ipv4Field, LinkPrefix, Mtu, Prefix6};

/// Where XDP attaches.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mode: AttachMode,
}

/// XDP attach mode: `driver` (native, the fast one) or `skb` (generic, any device).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    #[default]
    Driver,
    Skb,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pop {
    /// Local endpoint of every tunnel.
    pub ipv4: Ipv4Field,
}

/// Data plane sizing and tuning.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneLimits {
    /// Capacity of the tunnel maps (memory is reserved up front for the arrays).
    #[serde(default = "default_max_tunnels")]
    pub max_tunnels: u32,
    /// Capacity of the prefix map (link and routed prefixes of all tunnels).
    #[serde(default = "default_max_prefixes")]
    pub max_prefixes: u32,
    /// Cache FIB lookups in XDP; invalidated on route, neighbour and link changes.
    #[serde(default = "default_true")]
    pub nexthop_cache: bool,
    /// A cached next hop is looked up again after this long at the latest.
    #[serde(default = "default_nexthop_max_age_ms")]
    pub nexthop_max_age_ms: u32,
}

impl Default for DataplaneLimits {
    fn default() -> Self {
        Self {
            max_tunnels: default_max_tunnels(),
            max_prefixes: default_max_prefixes(),
            nexthop_cache: true,
            nexthop_max_age_ms: default_nexthop_max_age_ms(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_nexthop_max_age_ms() -> u32 {
    broker_common::consts::DEFAULT_NEXTHOP_MAX_AGE_MS
}

fn default_max_tunnels() -> u32 {
    broker_common::consts::DEFAULT_MAX_TUNNELS
}

fn default_max_prefixes() -> u32 {
    broker_common::consts::DEFAULT_MAX_PREFIXES
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelKind {
    Proto41,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelState {
    #[default]
    Up,
    Down,
    Disabled,
}

/// A static tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tunnel {
    pub id: u32,
    pub kind: TunnelKind,
    #[serde(default)]
    pub state: TunnelState,
    pub remote_ipv4: Ipv4Field,
    /// The /64 on the tunnel link: `::1` is the PoP, `::2` the client.
    pub link_prefix: LinkPrefix,
    #[serde(default)]
    pub routed_prefixes: Vec<Prefix6>,
    #[serde(default)]
    pub mtu: Mtu,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Names this PoP's data plane (pins live under /sys/fs/bpf/broker/<instance>/).
    pub instance: String,
    pub interfaces: Vec<Interface>,
    pub pop: Pop,
    #[serde(default)]
    pub dataplane: DataplaneLimits,
    #[serde(default)]
    pub tunnels: Vec<Tunnel>,
}

/// A configuration error: what is wrong, at which key, on which line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending key, e.g. `tunnels[1].mtu`; empty for syntax errors.
    pub key: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.line, self.key.is_empty()) {
            (Some(l), false) => write!(f, "line {l}: {}: {}", self.key, self.message),
            (Some(l), true) => write!(f, "line {l}: {}", self.message),
            (None, false) => write!(f, "{}: {}", self.key, self.message),
            (None, true) => write!(f, "{}", self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Parses and validates YAML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let spans = spans::SpanIndex::new(text);
        let config: Config =
            serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text))
                .map_err(|e| from_serde(e, &spans))?;
        validate::validate(&config).map_err(|(key, message)| ConfigError {
            line: spans.line_of(&key),
            key,
            message,
        })?;
        Ok(config)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            key: String::new(),
            line: None,
            message: format!("cannot read {}: {e}", path.display()),
        })?;
        Self::parse(&text)
    }
}

/// A deserialisation error: serde_path_to_error knows the key, the span index its line;
/// syntax errors have no key and keep serde_yaml's position.
fn from_serde(
    e: serde_path_to_error::Error<serde_yaml::Error>,
    spans: &spans::SpanIndex,
) -> ConfigError {
    let key = e.path().to_string();
    let key = if key == "." { String::new() } else { key };
    let inner = e.into_inner();
    let mut message = inner.to_string();
    // serde_yaml appends its own position and sometimes the path; keep the message only.
    if let Some(i) = message.rfind(" at line ") {
        message.truncate(i);
    }
    // It may also prefix the path of the enclosing value ("tunnels[1]: ...").
    if let Some((path, rest)) = message.split_once(": ") {
        if !path.is_empty() && !path.contains(' ') && key.starts_with(path) {
            message = rest.to_string();
        }
    }
    let line = spans
        .line_of(&key)
        .filter(|_| !key.is_empty())
        .or_else(|| inner.location().map(|l| l.line()));
    ConfigError { key, line, message }
}

#[cfg(test)]
mod tests;
