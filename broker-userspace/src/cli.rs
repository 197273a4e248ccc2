//! The command-line client of the HTTP API (`broker tunnel ...`, `broker user ...`):
//! requests, and tables for people.
use std::fmt::Write as _;

use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::tunnels::TunnelOut;

/// Where the API is and who is asking.
pub struct ApiClient {
    base: String,
    authorization: Option<String>,
    agent: ureq::Agent,
}

/// An answer other than success, as the API gave it.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{status}: {message}")]
    Api { status: u16, message: String },
    #[error("cannot reach the API at {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: ureq::Error,
    },
    #[error("unexpected answer from the API: {0}")]
    Decode(String),
    #[error("--ca: {0}")]
    Ca(String),
}

impl ApiClient {
    /// `token` for the administrator, or `user` and `password`; `ca`: PEM certificates to
    /// trust for an `https://` API (`api.tls` with a private certificate), instead of the
    /// public roots.
    pub fn new(
        base: &str,
        token: Option<&str>,
        user: Option<(&str, &str)>,
        ca: Option<&std::path::Path>,
    ) -> Result<Self, CliError> {
        let authorization = match (token, user) {
            (Some(t), _) => Some(format!("Bearer {t}")),
            (None, Some((u, p))) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )),
            (None, None) => None,
        };
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)));
        if let Some(path) = ca {
            let pem = std::fs::read(path)
                .map_err(|e| CliError::Ca(format!("{}: {e}", path.display())))?;
            let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(CliError::Ca(format!(
                    "{} holds no certificate",
                    path.display()
                )));
            }
            let roots = ureq::tls::RootCerts::Specific(std::sync::Arc::new(certs));
            config = config.tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build());
        }
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            authorization,
            agent: config.build().new_agent(),
        })
    }

    /// Sends a request; a body is JSON. Returns the decoded answer.
    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, CliError> {
        Ok(self.call_paged(method, path, body)?.0)
    }

    /// [`Self::call`], and the path of the next page if the answer says there is one
    /// (`Link: <path>; rel="next"`).
    pub fn call_paged<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(T, Option<String>), CliError> {
        let url = format!("{}{path}", self.base);
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(a) = &self.authorization {
            req = req.header("Authorization", a);
        }
        let result = match body {
            Some(b) => self.agent.run(
                req.header("Content-Type", "application/json")
                    .body(b.to_string())
                    .map_err(|e| CliError::Decode(e.to_string()))?,
            ),
            None => self
                .agent
                .run(req.body(()).map_err(|e| CliError::Decode(e.to_string()))?),
        };
        let mut res = result.map_err(|source| CliError::Transport {
            url: url.clone(),
            source,
        })?;
        let status = res.status().as_u16();
        let next = res
            .headers()
            .get("link")
            .and_then(|v| v.to_str().ok())
            .and_then(next_link);
        let text = res
            .body_mut()
            .read_to_string()
            .map_err(|e| CliError::Decode(e.to_string()))?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(String::from))
                .unwrap_or(text);
            return Err(CliError::Api { status, message });
        }
        let text = if text.is_empty() { "null" } else { &text };
        let value =
            serde_json::from_str(text).map_err(|e| CliError::Decode(format!("{e}: {text}")))?;
        Ok((value, next))
    }
}

/// The target of a `Link` header's `rel="next"` (RFC 8288), as the API writes it.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|l| {
        let (target, params) = l.trim().split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
    })
}

/// One page of a tunnel list on stdout: table rows (the header before the first page),
/// or the elements of one JSON array spread over the pages.
pub fn print_page(json: bool, ts: &[TunnelOut], first: bool, last: bool) {
    let mut out = String::new();
    if json {
        if first {
            out.push('[');
        }
        for (i, t) in ts.iter().enumerate() {
            if !(first && i == 0) {
                out.push(',');
            }
            out.push_str(&serde_json::to_string_pretty(t).unwrap_or_default());
        }
        if last {
            out.push_str("]\n");
        }
    } else {
        let table = tunnels_table(ts);
        let rows = if first {
            table.as_str()
        } else {
            table.split_once('\n').map_or("", |(_, rows)| rows)
        };
        out.push_str(rows);
    }
    print!("{out}");
}

/// Tunnels as a table.
pub fn tunnels_table(ts: &[TunnelOut]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>6}  {:<10} {:<9} {:<9} {:<21} {:<22} {:<22} {:>5}  pop",
        "id", "owner", "kind", "state", "remote", "link", "routed", "mtu"
    );
    for t in ts {
        let _ = writeln!(
            s,
            "{:>6}  {:<10} {:<9} {:<9} {:<21} {:<22} {:<22} {:>5}  {}",
            t.id,
            t.owner.as_deref().unwrap_or("-"),
            t.kind,
            if t.asleep { "asleep" } else { t.state.as_str() },
            remote(t),
            t.link_prefix
                .clone()
                .or_else(|| t.client_ipv4.clone())
                .unwrap_or_else(|| "-".into()),
            if t.routed_prefixes.is_empty() {
                "-".to_string()
            } else {
                t.routed_prefixes.join(",")
            },
            t.mtu,
            t.pop
        );
    }
    s
}

/// PoPs as a table; the administrator's view adds version, data plane and tunnels.
pub fn pops_table(ps: &[crate::api::pops::PopOut]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<12} {:<16} {:<24} {:<8} {:<9} {:<9} {:>8}",
        "pop", "ipv4", "ipv6", "healthy", "attached", "version", "tunnels"
    );
    for p in ps {
        let d = p.detail.as_ref();
        let _ = writeln!(
            s,
            "{:<12} {:<16} {:<24} {:<8} {:<9} {:<9} {:>8}",
            format!("{}{}", p.name, if p.this { "*" } else { "" }),
            dash(p.ipv4.clone()),
            dash(p.ipv6.clone()),
            if p.healthy { "yes" } else { "no" },
            d.map_or("-", |d| if d.attached { "yes" } else { "no" }),
            dash(d.and_then(|d| d.version.clone())),
            dash(d.and_then(|d| d.tunnels.get("total")).map(u64::to_string)),
        );
    }
    s
}

fn dash(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".into())
}

/// The client's endpoint as one word: `198.51.100.10`, `198.51.100.10:40000` or an IPv6.
fn remote(t: &TunnelOut) -> String {
    match (&t.remote_ipv4, t.remote_port, &t.remote_ipv6) {
        (Some(a), Some(p), _) => format!("{a}:{p}"),
        (Some(a), None, _) => a.clone(),
        (None, _, Some(a)) => a.clone(),
        _ => "-".into(),
    }
}

/// One tunnel, every field on a line.
pub fn tunnel_detail(t: &TunnelOut) -> String {
    let mut s = String::new();
    let rows: Vec<(&str, String)> = vec![
        ("id", t.id.to_string()),
        ("pop", t.pop.clone()),
        ("owner", t.owner.clone().unwrap_or_else(|| "-".into())),
        ("origin", t.origin.clone()),
        ("kind", t.kind.clone()),
        (
            "state",
            if t.asleep {
                format!("{} (asleep: its client is silent)", t.state)
            } else {
                t.state.clone()
            },
        ),
        ("client", remote(t)),
        (
            "PoP",
            dash(t.pop_ipv4.clone().or_else(|| t.pop_ipv6_endpoint.clone())),
        ),
        ("link prefix", dash(t.link_prefix.clone())),
        ("PoP IPv6", dash(t.pop_ipv6.clone())),
        ("client IPv6", dash(t.client_ipv6.clone())),
        ("routed", t.routed_prefixes.join(", ")),
        ("PoP IPv4", dash(t.pop_ipv4_inner.clone())),
        ("client IPv4", dash(t.client_ipv4.clone())),
        ("MTU", t.mtu.to_string()),
        ("keepalive", dash(t.keepalive.map(|k| format!("{k} s")))),
        ("password", t.password.clone()),
        (
            "update key",
            t.update_key
                .clone()
                .unwrap_or_else(|| "(shown only when the tunnel is made)".into()),
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(s, "{k:<12} {v}");
    }
    if let Some(c) = &t.counters {
        let _ = writeln!(
            s,
            "{:<12} {} packets, {} bytes from the client; {} packets, {} bytes to it; {} dropped",
            "traffic",
            c.from_client_packets,
            c.from_client_bytes,
            c.to_client_packets,
            c.to_client_bytes,
            c.drop_packets
        );
    }
    s
}

/// A tunnel endpoint on the command line: `198.51.100.10`, `198.51.100.10:40000` or an
/// IPv6 address, as the API's `remote_ipv4`, `remote_port` and `remote_ipv6` fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remote {
    Ipv4(std::net::Ipv4Addr),
    Udp4(std::net::SocketAddrV4),
    Ipv6(std::net::Ipv6Addr),
}

impl std::str::FromStr for Remote {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(a) = s.parse() {
            return Ok(Remote::Ipv4(a));
        }
        if let Ok(a) = s.parse() {
            return Ok(Remote::Udp4(a));
        }
        if let Ok(a) = s.parse() {
            return Ok(Remote::Ipv6(a));
        }
        Err(format!(
            "{s:?} is not an IPv4 address, IPv4:port or IPv6 address"
        ))
    }
}

impl Remote {
    /// The request fields.
    pub fn json(&self) -> serde_json::Value {
        match self {
            Remote::Ipv4(a) => serde_json::json!({ "remote_ipv4": a.to_string() }),
            Remote::Udp4(a) => serde_json::json!({
                "remote_ipv4": a.ip().to_string(),
                "remote_port": a.port(),
            }),
            Remote::Ipv6(a) => serde_json::json!({ "remote_ipv6": a.to_string() }),
        }
    }
}

#[cfg(test)]
mod remote_tests {
    use super::Remote;

    #[test]
    fn endpoints_parse_into_the_api_fields() {
        let r: Remote = "198.51.100.10:40000".parse().unwrap();
        assert_eq!(
            r.json(),
            serde_json::json!({"remote_ipv4": "198.51.100.10", "remote_port": 40000})
        );
        let r: Remote = "2001:db8::6".parse().unwrap();
        assert_eq!(r.json(), serde_json::json!({"remote_ipv6": "2001:db8::6"}));
        let r: Remote = "198.51.100.10".parse().unwrap();
        assert_eq!(
            r.json(),
            serde_json::json!({"remote_ipv4": "198.51.100.10"})
        );
        assert!("host.example".parse::<Remote>().is_err());
    }

    #[test]
    fn the_longest_kind_keeps_the_table_aligned() {
        let t: crate::api::tunnels::TunnelOut = serde_json::from_value(serde_json::json!({
            "id": 6, "owner": "bob", "origin": "api", "kind": "heartbeat", "state": "up",
            "remote_ipv4": "198.51.100.170", "remote_port": null, "remote_ipv6": null,
            "pop_ipv4": "192.0.2.1", "pop_ipv6_endpoint": null,
            "link_prefix": "2001:db8:20::/64", "pop_ipv6": "2001:db8:20::1",
            "client_ipv6": "2001:db8:20::2", "routed_prefixes": [], "client_ipv4": null,
            "pop_ipv4_inner": null, "mtu": 1480, "keepalive": null, "expires_at": null,
            "password": "p", "update_key": "k", "created_at": 0, "updated_at": 0
        }))
        .unwrap();
        let table = super::tunnels_table(&[t]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0].find("state"), lines[1].find("up "), "{table}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_next_page_among_links() {
        assert_eq!(
            next_link(r#"</api/v1/tunnels?after=9&limit=2>; rel="next""#).as_deref(),
            Some("/api/v1/tunnels?after=9&limit=2")
        );
        assert_eq!(
            next_link(r#"</a>; rel="prev", </b>; rel="next""#).as_deref(),
            Some("/b")
        );
        assert_eq!(next_link(r#"</a>; rel="prev""#), None);
    }
}
