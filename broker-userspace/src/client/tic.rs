//! aiccu's side of TIC: log in with the account, pick a tunnel, read its `tunnel show`.
//! The dialogue is pure ([`Dialogue`]: a server line in, the next client line out) and is
//! unit-tested against the server's session in memory; [`fetch`] is the TCP around it.
//!
//! Like aiccu (`common/tic.c`, `unix-console/main.c`): the clock is checked against
//! `get unixtime` (more than 120 s off aborts), the response is
//! md5hex(challenge + md5hex(password)), and without a tunnel id the first listed tunnel
//! is taken. Unlike aiccu (which then refuses when there are several) this takes the
//! first; `starttls` is not tried (the login is a challenge-response either way).
use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use anyhow::Context;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

use crate::heartbeat::message::md5_hex;

/// How far the server's clock may be from ours (aiccu `CLOCK_OFF`).
pub const CLOCK_OFF: u64 = 120;
/// The whole exchange must finish within this.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A tunnel as `tunnel show` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicTunnel {
    pub id: u32,
    /// `6in4`, `6in4-heartbeat` or `ayiya`.
    pub kind: String,
    pub ipv6_endpoint: Ipv6Addr,
    pub ipv6_pop: Ipv6Addr,
    pub prefix_len: u8,
    pub pop_id: String,
    /// The client's IPv4, or `heartbeat` / `ayiya` for dynamic tunnels.
    pub ipv4_endpoint: String,
    pub ipv4_pop: Ipv4Addr,
    pub admin_state: String,
    pub user_state: String,
    /// The tunnel's own password (heartbeat and AYIYA signatures).
    pub password: String,
    pub heartbeat_interval: u32,
    pub mtu: u16,
}

/// A fetched tunnel for the clients' tests: enabled, link `2001:db8:10:<id>::/64`, PoP
/// 192.0.2.1, password `pw`, interval 60, MTU 1280.
#[cfg(test)]
pub fn sample(id: u32, kind: &str) -> TicTunnel {
    TicTunnel {
        id,
        kind: kind.into(),
        ipv6_endpoint: format!("2001:db8:10:{id:x}::2").parse().unwrap(),
        ipv6_pop: format!("2001:db8:10:{id:x}::1").parse().unwrap(),
        prefix_len: 64,
        pop_id: "pop1".into(),
        ipv4_endpoint: if kind == "6in4" { "198.51.100.9" } else { kind }.into(),
        ipv4_pop: "192.0.2.1".parse().unwrap(),
        admin_state: "enabled".into(),
        user_state: "enabled".into(),
        password: "pw".into(),
        heartbeat_interval: 60,
        mtu: 1280,
    }
}

impl TicTunnel {
    /// aiccu runs a tunnel only when both states say `enabled`.
    pub fn enabled(&self) -> bool {
        self.admin_state == "enabled" && self.user_state == "enabled"
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicError {
    #[error("the TIC server refused {step}: {line}")]
    Refused { step: &'static str, line: String },
    #[error("the clock is off by {secs} seconds (more than {CLOCK_OFF}): sync it with NTP")]
    ClockSkew { secs: u64 },
    #[error("the account has no tunnel")]
    NoTunnel,
    #[error("`tunnel show` lacks {key:?}")]
    Missing { key: &'static str },
    #[error("`tunnel show`: {key} {value:?} is not valid")]
    Invalid { key: &'static str, value: String },
    #[error("unexpected line from the TIC server: {line:?}")]
    Unexpected { line: String },
}

/// What the client does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this line (without its `\n`).
    Send(String),
    /// Read another line.
    Wait,
    /// Finished: send `QUIT` and close.
    Done(TicTunnel),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Banner,
    Client,
    Time,
    Username,
    Challenge,
    Authenticate,
    ListStart,
    List,
    ShowStart,
    Show,
    Done,
}

/// The client's side of one TIC session.
pub struct Dialogue {
    username: String,
    password: String,
    tunnel: Option<u32>,
    now: u64,
    os: String,
    step: Step,
    first_listed: Option<u32>,
    fields: HashMap<String, String>,
}

impl Dialogue {
    /// `now`: our clock, seconds since the epoch (compared with the server's).
    pub fn new(username: &str, password: &str, tunnel: Option<u32>, now: u64) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
            tunnel,
            now,
            os: "Linux/unknown".into(),
            step: Step::Banner,
            first_listed: None,
            fields: HashMap::new(),
        }
    }

    /// The `<os>/<release>` of the `client` line.
    pub fn with_os(mut self, os: String) -> Self {
        self.os = os;
        self
    }

    /// One line from the server (without its line end).
    pub fn line(&mut self, line: &str) -> Result<Action, TicError> {
        let ok = line.starts_with('2');
        let code = line.get(..3).unwrap_or(line);
        let rest = line.get(4..).unwrap_or("").trim();
        let refused = |step| TicError::Refused {
            step,
            line: line.to_string(),
        };
        let send = |s: String| Ok(Action::Send(s));
        match self.step {
            Step::Banner => {
                if !ok {
                    return Err(refused("the connection"));
                }
                self.step = Step::Client;
                send(format!(
                    "client TIC/draft-00 broker/{} {}",
                    env!("CARGO_PKG_VERSION"),
                    self.os
                ))
            }
            Step::Client => {
                if !ok {
                    return Err(refused("the client identification"));
                }
                self.step = Step::Time;
                send("get unixtime".into())
            }
            Step::Time => {
                if !ok {
                    return Err(refused("get unixtime"));
                }
                let theirs: u64 = rest.parse().map_err(|_| TicError::Unexpected {
                    line: line.to_string(),
                })?;
                let secs = theirs.abs_diff(self.now);
                if secs > CLOCK_OFF {
                    return Err(TicError::ClockSkew { secs });
                }
                self.step = Step::Username;
                send(format!("username {}", self.username))
            }
            Step::Username => {
                if !ok {
                    return Err(refused("the username"));
                }
                self.step = Step::Challenge;
                send("challenge md5".into())
            }
            Step::Challenge => {
                if !ok {
                    return Err(refused("challenge md5"));
                }
                // Everything after "200 " is the challenge (aiccu takes `&buf[4]`).
                let challenge = line.get(4..).unwrap_or("");
                let inner = md5_hex(&[self.password.as_bytes()]);
                let response = md5_hex(&[challenge.as_bytes(), inner.as_bytes()]);
                self.step = Step::Authenticate;
                send(format!("authenticate md5 {response}"))
            }
            Step::Authenticate => {
                if !ok {
                    return Err(refused("the login"));
                }
                match self.tunnel {
                    Some(id) => {
                        self.step = Step::ShowStart;
                        send(format!("tunnel show T{id}"))
                    }
                    None => {
                        self.step = Step::ListStart;
                        send("tunnel list".into())
                    }
                }
            }
            Step::ListStart | Step::ShowStart if code != "201" => {
                Err(refused(if self.step == Step::ListStart {
                    "tunnel list"
                } else {
                    "tunnel show"
                }))
            }
            Step::ListStart => {
                self.step = Step::List;
                Ok(Action::Wait)
            }
            Step::List if code == "202" => {
                let id = self.first_listed.ok_or(TicError::NoTunnel)?;
                self.tunnel = Some(id);
                self.step = Step::ShowStart;
                send(format!("tunnel show T{id}"))
            }
            Step::List => {
                // `T<id> <ipv6> <ipv4> <popid>`: aiccu wants exactly four fields.
                let fields: Vec<&str> = line.split_whitespace().collect();
                let id = match fields[..] {
                    [id, _, _, _] => parse_id(id),
                    _ => None,
                };
                let id = id.ok_or_else(|| TicError::Unexpected {
                    line: line.to_string(),
                })?;
                self.first_listed.get_or_insert(id);
                Ok(Action::Wait)
            }
            Step::ShowStart => {
                self.step = Step::Show;
                Ok(Action::Wait)
            }
            Step::Show if code == "202" => {
                self.step = Step::Done;
                Ok(Action::Done(self.tunnel_from_fields()?))
            }
            Step::Show => {
                // `Key: value`; lines aiccu does not know are ignored, as it does.
                if let Some((k, v)) = line.split_once(": ") {
                    self.fields.insert(k.to_string(), v.trim().to_string());
                }
                Ok(Action::Wait)
            }
            Step::Done => Err(TicError::Unexpected {
                line: line.to_string(),
            }),
        }
    }

    fn tunnel_from_fields(&self) -> Result<TicTunnel, TicError> {
        let get = |key: &'static str| {
            self.fields
                .get(key)
                .map(String::as_str)
                .ok_or(TicError::Missing { key })
        };
        fn parse<T: std::str::FromStr>(key: &'static str, v: &str) -> Result<T, TicError> {
            v.parse().map_err(|_| TicError::Invalid {
                key,
                value: v.to_string(),
            })
        }
        let id_text = get("TunnelId")?;
        let id = parse_id(id_text).ok_or(TicError::Invalid {
            key: "TunnelId",
            value: id_text.to_string(),
        })?;
        Ok(TicTunnel {
            id,
            kind: get("Type")?.to_string(),
            ipv6_endpoint: parse("IPv6 Endpoint", get("IPv6 Endpoint")?)?,
            ipv6_pop: parse("IPv6 POP", get("IPv6 POP")?)?,
            prefix_len: parse("IPv6 PrefixLength", get("IPv6 PrefixLength")?)?,
            pop_id: get("POP Id")?.to_string(),
            ipv4_endpoint: get("IPv4 Endpoint")?.to_string(),
            ipv4_pop: parse("IPv4 POP", get("IPv4 POP")?)?,
            admin_state: get("AdminState")?.to_string(),
            user_state: get("UserState")?.to_string(),
            password: get("Password")?.to_string(),
            heartbeat_interval: parse("Heartbeat_Interval", get("Heartbeat_Interval")?)?,
            mtu: parse("Tunnel MTU", get("Tunnel MTU")?)?,
        })
    }
}

/// `T123` or `123`.
fn parse_id(s: &str) -> Option<u32> {
    let digits = s.strip_prefix('T').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Logs in to the TIC server at `server` and returns `tunnel` (or the first listed).
pub async fn fetch(
    server: SocketAddr,
    username: &str,
    password: &str,
    tunnel: Option<u32>,
) -> anyhow::Result<TicTunnel> {
    tokio::time::timeout(TIMEOUT, fetch_inner(server, username, password, tunnel))
        .await
        .with_context(|| format!("the TIC server {server} took longer than {TIMEOUT:?}"))?
}

async fn fetch_inner(
    server: SocketAddr,
    username: &str,
    password: &str,
    tunnel: Option<u32>,
) -> anyhow::Result<TicTunnel> {
    let stream = TcpStream::connect(server)
        .await
        .with_context(|| format!("connecting to the TIC server {server}"))?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let os = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| format!("Linux/{}", r.trim()))
        .unwrap_or_else(|_| "Linux/unknown".into());
    let mut d = Dialogue::new(username, password, tunnel, crate::store::now()).with_os(os);
    loop {
        let line = lines
            .next_line()
            .await?
            .context("the TIC server closed the connection")?;
        let action = match d.line(line.trim_end_matches('\r')) {
            Ok(a) => a,
            Err(e) => {
                let quit = match &e {
                    TicError::ClockSkew { secs } => {
                        format!("QUIT Aborting: Clock is off by {secs} seconds\n")
                    }
                    _ => "QUIT Giving up\n".into(),
                };
                let _ = write.write_all(quit.as_bytes()).await;
                return Err(e.into());
            }
        };
        match action {
            Action::Send(l) => write.write_all(format!("{l}\n").as_bytes()).await?,
            Action::Wait => {}
            Action::Done(t) => {
                let _ = write
                    .write_all(b"QUIT Thank you for the information\n")
                    .await;
                return Ok(t);
            }
        }
    }
}

#[cfg(test)]
mod tests;
