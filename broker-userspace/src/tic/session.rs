//! One TIC session as a pure state machine: a line in, reply lines out. The challenge
//! source and the clock are passed in, and what the session needs to know (passwords,
//! tunnels, the PoP) comes through [`Directory`], so a unit test runs a fixed transcript.
//!
//! The dialogue as aiccu runs it (`common/tic.c`): banner; `client ...`; `get unixtime`;
//! `starttls` (optional); `username`; `challenge md5`; `authenticate md5 <response>`;
//! `tunnel list` / `tunnel show T<id>`; `QUIT <message>`. aiccu reads a reply's first
//! character (`2` is success) and, for lists, `201` then lines then `202`; the texts are
//! nabla's (`server/TICSession.cs`), for operators who know them.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{
    heartbeat::message::md5_hex,
    model::{Kind, State},
    store::TunnelRecord,
};

/// Authentication failures after which a session is closed (the server also delays the
/// answers per source).
pub const MAX_FAILURES: u32 = 3;

/// What this PoP tells clients about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PopFacts {
    /// `POP Id` in `tunnel show` and `tunnel list`: one word (aiccu splits on spaces).
    pub pop_id: String,
    /// `IPv4 POP`: where proto-41 and heartbeats go.
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    /// `Heartbeat_Interval` of tunnels without a keepalive of their own, seconds.
    pub heartbeat_interval: u32,
    /// Whether this PoP takes heartbeats (`pop show`'s `Heartbeat Support`).
    pub heartbeat: bool,
}

/// What the session looks up.
pub trait Directory {
    /// MD5 hex of a user's account password (TIC authenticates the account, not a
    /// tunnel, and needs no more of the password than this); `None` when there is no
    /// such user.
    fn user_password_md5(&self, user: &str) -> Option<String>;
    /// The user's tunnels, in id order (the session picks the kinds TIC knows).
    fn user_tunnels(&self, user: &str) -> Vec<TunnelRecord>;
    /// This PoP's facts.
    fn pop(&self) -> PopFacts;
    /// The facts of the PoP tunnel `t` lives on (any PoP answers TIC, with the tunnel's
    /// own PoP: docs/MULTI-POP.md).
    fn pop_of(&self, _t: &TunnelRecord) -> PopFacts {
        self.pop()
    }
    /// Every PoP's facts, this one's first.
    fn pops(&self) -> Vec<PopFacts> {
        vec![self.pop()]
    }
}

/// What the connection does after sending the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// Start the TLS handshake (the reply goes out in clear first).
    StartTls,
    Close,
}

/// What happened, for logs, metrics and the per-source limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    None,
    LoggedIn(String),
    AuthFailed,
}

/// The answer to one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Without line ends; the server ends each with `\n`.
    pub lines: Vec<String>,
    pub next: Next,
    pub event: Event,
}

impl Reply {
    fn one(line: impl Into<String>) -> Self {
        Self {
            lines: vec![line.into()],
            next: Next::Continue,
            event: Event::None,
        }
    }

    fn close(line: impl Into<String>) -> Self {
        Self {
            next: Next::Close,
            ..Self::one(line)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Login {
    Anonymous,
    Named { user: String },
    Challenged { user: String, challenge: String },
    LoggedIn { user: String },
}

/// Makes a fresh challenge (random in the server, fixed in tests).
pub type Challenges = Box<dyn FnMut() -> String + Send>;

pub struct Session {
    peer: IpAddr,
    tls_available: bool,
    tls: bool,
    login: Login,
    failures: u32,
    challenges: Challenges,
}

impl Session {
    pub fn new(peer: IpAddr, tls_available: bool, challenges: Challenges) -> Self {
        Self {
            peer,
            tls_available,
            tls: false,
            login: Login::Anonymous,
            failures: 0,
            challenges,
        }
    }

    /// The first line, sent on connect.
    pub fn banner(&self, pop: &PopFacts) -> String {
        format!(
            "200 broker TIC Service on {} ready (TIC/draft-00)",
            pop.pop_id
        )
    }

    /// The user logged in, if any.
    pub fn user(&self) -> Option<&str> {
        match &self.login {
            Login::LoggedIn { user } => Some(user),
            _ => None,
        }
    }

    /// The server finished the TLS handshake.
    pub fn tls_started(&mut self) {
        self.tls = true;
    }

    /// A line longer than the limit: refused, and the connection ends (what follows in
    /// the stream cannot be trusted to start a command).
    pub fn overlong(&mut self) -> Reply {
        Reply::close("400 Line too long")
    }

    /// One line from the client, without its line end; `now` in seconds since the epoch.
    pub fn input(&mut self, line: &str, now: u64, dir: &dyn Directory) -> Reply {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(first) = words.first() else {
            return Reply::one("200 Empty line, please enter at least something we accept");
        };
        let args = &words[1..];
        match first.to_ascii_lowercase().as_str() {
            // aiccu sends `QUIT <message>`; the message is only for logs.
            "quit" | "exit" => Reply::close("200 Thank you for using this TIC service"),
            "get" => match args {
                [what] if what.eq_ignore_ascii_case("unixtime") => Reply::one(format!("200 {now}")),
                [what] => Reply::one(format!("400 No such option '{what}' to get")),
                _ => Reply::one("400 'get' requires one argument"),
            },
            "client" => self.client(args),
            "starttls" => self.starttls(),
            "username" => self.username(args),
            "challenge" => self.challenge(args),
            "authenticate" => self.authenticate(args, dir),
            "tunnel" | "pop" if self.user().is_none() => Reply::one("400 You need to log in first"),
            "tunnel" => self.tunnel(args, dir),
            "pop" => pop(args, dir),
            _ => Reply::one(format!("400 Unknown command: {first}")),
        }
    }

    fn client(&self, args: &[&str]) -> Reply {
        // `client TIC/draft-00 AICCU/2007.01.15-console Linux/6.1`: only logged.
        match args.first() {
            Some(v) if v.starts_with("TIC/") => Reply::one("200 Client Identity accepted"),
            _ => Reply::one("400 A valid client identifier is expected"),
        }
    }

    fn starttls(&mut self) -> Reply {
        if self.tls {
            return Reply::one("400 TLS is already active");
        }
        if self.login != Login::Anonymous {
            // Upgrading after the username would have sent it in clear anyway.
            return Reply::one("400 STARTTLS is only possible before logging in");
        }
        if !self.tls_available {
            // aiccu goes on without TLS after any non-2xx answer (unless `requiretls`).
            return Reply::one("400 This service is not TLS enabled");
        }
        Reply {
            next: Next::StartTls,
            ..Reply::one("200 Go ahead with TLS")
        }
    }

    fn username(&mut self, args: &[&str]) -> Reply {
        if self.user().is_some() {
            return Reply::one("400 Already logged in");
        }
        let [user] = args else {
            return Reply::one("400 A username is expected");
        };
        self.login = Login::Named {
            user: (*user).to_string(),
        };
        Reply::one("200 Choose your authentication challenge please")
    }

    fn challenge(&mut self, args: &[&str]) -> Reply {
        let user = match &self.login {
            Login::Anonymous => return Reply::one("400 Send your username first"),
            Login::LoggedIn { .. } => return Reply::one("400 Already logged in"),
            Login::Named { user } | Login::Challenged { user, .. } => user.clone(),
        };
        match args {
            [kind] if kind.eq_ignore_ascii_case("md5") => {
                let challenge = (self.challenges)();
                let line = format!("200 {challenge}");
                self.login = Login::Challenged { user, challenge };
                Reply::one(line)
            }
            [kind] => Reply::one(format!("400 Unknown authentication type: {kind}")),
            _ => Reply::one("400 Challenge expects an authentication type"),
        }
    }

    fn authenticate(&mut self, args: &[&str], dir: &dyn Directory) -> Reply {
        let (user, challenge) = match &self.login {
            Login::Challenged { user, challenge } => (user.clone(), challenge.clone()),
            Login::LoggedIn { .. } => return Reply::one("400 Already logged in"),
            _ => return Reply::one("400 Ask for a challenge first"),
        };
        let response = match args {
            [kind, response] if kind.eq_ignore_ascii_case("md5") => response.to_ascii_lowercase(),
            [kind, _] => return Reply::one(format!("400 Unknown authentication type: {kind}")),
            _ => return Reply::one("400 Authenticate requires 2 arguments"),
        };
        // A challenge answers once: a failed try needs a new one.
        self.login = Login::Anonymous;
        // md5hex(challenge + md5hex(password)), aiccu `tic_Login`. An unknown user is
        // refused exactly like a wrong password.
        let good = dir.user_password_md5(&user).is_some_and(|inner| {
            let expected = md5_hex(&[challenge.as_bytes(), inner.as_bytes()]);
            crate::secret::same(&expected, &response)
        });
        if !good {
            self.failures += 1;
            let mut r = Reply::one("400 Login failed, login/password mismatch");
            r.event = Event::AuthFailed;
            if self.failures >= MAX_FAILURES {
                r.next = Next::Close;
            }
            return r;
        }
        let line = format!(
            "200 Successfully logged in using md5 as {user} from {}",
            self.peer
        );
        self.login = Login::LoggedIn { user: user.clone() };
        Reply {
            event: Event::LoggedIn(user),
            ..Reply::one(line)
        }
    }

    fn tunnel(&self, args: &[&str], dir: &dyn Directory) -> Reply {
        let user = self.user().unwrap_or_default();
        match args {
            [cmd] if cmd.eq_ignore_ascii_case("list") => {
                let mut lines = vec!["201 Listing tunnels".to_string()];
                for r in dir.user_tunnels(user) {
                    let Some(t) = TicView::of(&r) else { continue };
                    lines.push(format!(
                        "T{} {} {} {}",
                        t.id,
                        t.client,
                        t.ipv4_endpoint,
                        dir.pop_of(&r).pop_id
                    ));
                }
                lines.push("202 <tunnel_id> <ipv6_endpoint> <ipv4_endpoint> <pop_name>".into());
                multi(lines)
            }
            [cmd, id] if cmd.eq_ignore_ascii_case("show") => {
                let Some(n) = parse_id(id, 'T') else {
                    return Reply::one(format!("400 Given tunnel id '{id}' is not valid"));
                };
                // Someone else's tunnel is "unknown" too: ids are not to be probed.
                let tunnels = dir.user_tunnels(user);
                let Some((record, view)) = tunnels
                    .iter()
                    .filter(|t| t.spec.id == n)
                    .find_map(|t| TicView::of(t).map(|v| (t, v)))
                else {
                    return Reply::one(format!("400 Unknown tunnel endpoint T{n}"));
                };
                let mut lines = vec![format!("201 Showing tunnel information for T{n}")];
                lines.extend(show_lines(record, &view, &dir.pop_of(record)));
                lines.push("202 Done".into());
                multi(lines)
            }
            [cmd, ..] => Reply::one(format!("400 Unknown command: tunnel {cmd}")),
            [] => Reply::one("400 Unknown command: tunnel"),
        }
    }
}

fn multi(lines: Vec<String>) -> Reply {
    Reply {
        lines,
        next: Next::Continue,
        event: Event::None,
    }
}

fn pop(args: &[&str], dir: &dyn Directory) -> Reply {
    let pops = dir.pops();
    match args {
        [cmd] if cmd.eq_ignore_ascii_case("list") => {
            let mut lines = vec!["201 Listing PoPs".to_string()];
            lines.extend(pops.iter().map(|p| p.pop_id.clone()));
            lines.push("202 <pop_name>".into());
            multi(lines)
        }
        [cmd, id] if cmd.eq_ignore_ascii_case("show") => {
            let Some(facts) = pops.into_iter().find(|p| p.pop_id == *id) else {
                return Reply::one(format!("400 Unknown PoP '{id}'"));
            };
            let yn = |b: bool| if b { "Y" } else { "N" };
            let mut lines = vec![
                format!("201 Showing PoP information for {id}"),
                format!("POPId: {}", facts.pop_id),
                format!("IPv4: {}", facts.ipv4),
            ];
            if let Some(v6) = facts.ipv6 {
                lines.push(format!("IPv6: {v6}"));
            }
            lines.push(format!("Heartbeat Support: {}", yn(facts.heartbeat)));
            lines.push("Tinc Support: N".into());
            lines.push("Multicast Support: N".into());
            lines.push("202 Done".into());
            multi(lines)
        }
        [cmd, ..] => Reply::one(format!("400 Unknown command: pop {cmd}")),
        [] => Reply::one("400 Unknown command: pop"),
    }
}

/// `T123` or `123`.
fn parse_id(s: &str, letter: char) -> Option<u32> {
    let digits = s
        .strip_prefix(letter)
        .or_else(|| s.strip_prefix(letter.to_ascii_lowercase()))
        .unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A tunnel as TIC presents it; only the kinds aiccu can run.
struct TicView {
    id: u32,
    kind: &'static str,
    client: Ipv6Addr,
    pop: Ipv6Addr,
    ipv4_endpoint: String,
}

impl TicView {
    fn of(t: &TunnelRecord) -> Option<Self> {
        let s = &t.spec;
        let (kind, ipv4_endpoint) = match s.kind {
            Kind::Proto41 => ("6in4", s.endpoint.to_string()),
            Kind::Heartbeat => ("6in4-heartbeat", "heartbeat".to_string()),
            Kind::Ayiya => ("ayiya", "ayiya".to_string()),
            Kind::V6Udp4 | Kind::V4In6 => return None,
        };
        Some(Self {
            id: s.id,
            kind,
            client: s.client_v6()?,
            pop: s.pop_v6()?,
            ipv4_endpoint,
        })
    }
}

/// The `Key: value` lines aiccu's `tunnel_rules` read, in its order.
fn show_lines(t: &TunnelRecord, v: &TicView, facts: &PopFacts) -> Vec<String> {
    // aiccu runs a tunnel only when both say `enabled`. Down (the operator's, or a lapsed
    // lifetime) is the user's side; disabled the administrator's.
    let (user_state, admin_state) = match t.spec.state {
        State::Up => ("enabled", "enabled"),
        State::Down => ("disabled", "enabled"),
        State::Disabled => ("enabled", "disabled"),
    };
    let prefix_len = t.spec.link_prefix.map_or(64, |p| p.prefix_len());
    vec![
        format!("TunnelId: T{}", v.id),
        format!("Type: {}", v.kind),
        format!("IPv6 Endpoint: {}", v.client),
        format!("IPv6 POP: {}", v.pop),
        format!("IPv6 PrefixLength: {prefix_len}"),
        format!("POP Id: {}", facts.pop_id),
        format!("IPv4 Endpoint: {}", v.ipv4_endpoint),
        format!("IPv4 POP: {}", facts.ipv4),
        format!("UserState: {user_state}"),
        format!("AdminState: {admin_state}"),
        format!("Password: {}", t.password),
        format!(
            "Heartbeat_Interval: {}",
            t.spec.keepalive.unwrap_or(facts.heartbeat_interval)
        ),
        format!("Tunnel MTU: {}", t.spec.mtu),
    ]
}

#[cfg(test)]
pub(crate) mod tests;
