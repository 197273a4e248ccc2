use std::net::SocketAddrV4;

use super::*;
use crate::{
    model::{Endpoint, TunnelSpec},
    store::Origin,
};

pub(crate) const CHALLENGE: &str = "4d1a9c0ff6c24f0e9d7b3a2c1e5f6a7b";
pub(crate) const NOW: u64 = 1_700_000_000;

/// Two users; alice has one tunnel of every kind, bob one proto-41 tunnel.
pub(crate) struct Fake {
    pub tunnels: Vec<TunnelRecord>,
}

fn record(id: u32, owner: &str, kind: Kind, state: State, keepalive: Option<u32>) -> TunnelRecord {
    let endpoint = match kind {
        Kind::Proto41 => Endpoint::Ipv4(Ipv4Addr::new(198, 51, 100, id as u8)),
        Kind::V6Udp4 => Endpoint::Udp4(SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 9), 4000)),
        k => Endpoint::unspecified(k),
    };
    TunnelRecord {
        spec: TunnelSpec {
            id,
            kind,
            state,
            endpoint,
            link_prefix: Some(format!("2001:db8:10:{id:x}::/64").parse().unwrap()),
            routed_prefixes: vec![],
            client_v4: None,
            mtu: 1280,
            keepalive,
            ayiya_key: None,
        },
        pop: crate::store::DEFAULT_POP.into(),
        owner: Some(owner.into()),
        origin: Origin::Api,
        password: format!("tunnelpw{id}"),
        update_key: None,
        update_key_hash: crate::secret::hash_key("k"),
        created_at: 0,
        updated_at: 0,
        expires_at: None,
    }
}

impl Fake {
    pub(crate) fn new() -> Self {
        Self {
            tunnels: vec![
                record(1, "alice", Kind::Proto41, State::Up, None),
                record(2, "alice", Kind::Heartbeat, State::Up, None),
                record(3, "alice", Kind::Ayiya, State::Disabled, Some(30)),
                record(4, "alice", Kind::V6Udp4, State::Up, None),
                record(5, "bob", Kind::Proto41, State::Down, None),
            ],
        }
    }
}

impl Directory for Fake {
    fn user_password_md5(&self, user: &str) -> Option<String> {
        let password = match user {
            "alice" => "wonderland",
            "bob" => "builder",
            _ => return None,
        };
        Some(md5_hex(&[password.as_bytes()]))
    }

    fn user_tunnels(&self, user: &str) -> Vec<TunnelRecord> {
        self.tunnels
            .iter()
            .filter(|t| t.owner.as_deref() == Some(user))
            .cloned()
            .collect()
    }

    fn pop(&self) -> PopFacts {
        PopFacts {
            pop_id: "pop1".into(),
            ipv4: Ipv4Addr::new(192, 0, 2, 1),
            ipv6: None,
            heartbeat_interval: 60,
            heartbeat: true,
        }
    }

    fn pop_of(&self, t: &TunnelRecord) -> PopFacts {
        match t.pop.as_str() {
            "ams1" => ams1(),
            _ => self.pop(),
        }
    }

    fn pops(&self) -> Vec<PopFacts> {
        let mut pops = vec![self.pop()];
        if self.tunnels.iter().any(|t| t.pop == "ams1") {
            pops.push(ams1());
        }
        pops
    }
}

pub(crate) fn session() -> Session {
    Session::new(
        "198.51.100.77".parse().unwrap(),
        false,
        Box::new(|| CHALLENGE.to_string()),
    )
}

/// Sends `line` and returns the reply lines joined with `\n`.
fn say(s: &mut Session, line: &str) -> String {
    s.input(line, NOW, &Fake::new()).lines.join("\n")
}

fn response(password: &str) -> String {
    md5_hex(&[
        CHALLENGE.as_bytes(),
        md5_hex(&[password.as_bytes()]).as_bytes(),
    ])
}

fn logged_in(user: &str, password: &str) -> Session {
    let mut s = session();
    say(&mut s, &format!("username {user}"));
    say(&mut s, "challenge md5");
    let r = s.input(
        &format!("authenticate md5 {}", response(password)),
        NOW,
        &Fake::new(),
    );
    assert_eq!(r.event, Event::LoggedIn(user.into()), "{r:?}");
    s
}

#[test]
fn the_aiccu_transcript() {
    let dir = Fake::new();
    let mut s = session();
    assert_eq!(
        s.banner(&dir.pop()),
        "200 broker TIC Service on pop1 ready (TIC/draft-00)"
    );
    let transcript: &[(&str, &str)] = &[
        (
            "client TIC/draft-00 AICCU/2007.01.15-console Linux/6.1.0",
            "200 Client Identity accepted",
        ),
        ("get unixtime", "200 1700000000"),
        ("starttls", "400 This service is not TLS enabled"),
        (
            "username alice",
            "200 Choose your authentication challenge please",
        ),
        ("challenge md5", "200 4d1a9c0ff6c24f0e9d7b3a2c1e5f6a7b"),
    ];
    for (line, want) in transcript {
        assert_eq!(say(&mut s, line), *want, "after {line:?}");
    }
    // md5hex(challenge + md5hex("wonderland")), computed outside this code:
    // python3 -c 'import hashlib as h; m=lambda s: h.md5(s.encode()).hexdigest();
    //   print(m("4d1a9c0ff6c24f0e9d7b3a2c1e5f6a7b" + m("wonderland")))'
    let auth = "authenticate md5 09876c64daa8f4fdc32c14294d200c33";
    assert_eq!(auth[17..], response("wonderland"));
    let r = s.input(auth, NOW, &dir);
    assert_eq!(
        r.lines,
        vec!["200 Successfully logged in using md5 as alice from 198.51.100.77"]
    );
    assert_eq!(r.event, Event::LoggedIn("alice".into()));
    assert_eq!(s.user(), Some("alice"));
    assert_eq!(
        say(&mut s, "tunnel list"),
        "201 Listing tunnels\n\
         T1 2001:db8:10:1::2 198.51.100.1 pop1\n\
         T2 2001:db8:10:2::2 heartbeat pop1\n\
         T3 2001:db8:10:3::2 ayiya pop1\n\
         202 <tunnel_id> <ipv6_endpoint> <ipv4_endpoint> <pop_name>"
    );
    assert_eq!(
        say(&mut s, "tunnel show T2"),
        "201 Showing tunnel information for T2\n\
         TunnelId: T2\n\
         Type: 6in4-heartbeat\n\
         IPv6 Endpoint: 2001:db8:10:2::2\n\
         IPv6 POP: 2001:db8:10:2::1\n\
         IPv6 PrefixLength: 64\n\
         POP Id: pop1\n\
         IPv4 Endpoint: heartbeat\n\
         IPv4 POP: 192.0.2.1\n\
         UserState: enabled\n\
         AdminState: enabled\n\
         Password: tunnelpw2\n\
         Heartbeat_Interval: 60\n\
         Tunnel MTU: 1280\n\
         202 Done"
    );
    let r = s.input("QUIT Tschau!", NOW, &dir);
    assert_eq!(r.lines, vec!["200 Thank you for using this TIC service"]);
    assert_eq!(r.next, Next::Close);
}

#[test]
fn md5_hex_against_known_digests() {
    assert_eq!(md5_hex(&[b""]), "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(md5_hex(&[b"abc"]), "900150983cd24fb0d6963f7d28e17f72");
    assert_eq!(
        md5_hex(&[b"wonder", b"land"]),
        "4cecaff2b30bbe75ce7322109164cfb5"
    );
}

#[test]
fn show_keys_for_static_and_other_states() {
    let mut s = logged_in("alice", "wonderland");
    let show = say(&mut s, "tunnel show 1");
    assert!(show.contains("\nType: 6in4\n"), "{show}");
    assert!(show.contains("\nIPv4 Endpoint: 198.51.100.1\n"), "{show}");
    let show = say(&mut s, "tunnel show t3");
    assert!(show.contains("\nType: ayiya\n"), "{show}");
    assert!(show.contains("\nIPv4 Endpoint: ayiya\n"), "{show}");
    // Its own keepalive, not the default.
    assert!(show.contains("\nHeartbeat_Interval: 30\n"), "{show}");
    assert!(
        show.contains("\nUserState: enabled\nAdminState: disabled\n"),
        "{show}"
    );
    let mut b = logged_in("bob", "builder");
    let show = say(&mut b, "tunnel show T5");
    assert!(
        show.contains("\nUserState: disabled\nAdminState: enabled\n"),
        "{show}"
    );
}

#[test]
fn wrong_password_unknown_user_and_the_third_failure() {
    let mut s = session();
    say(&mut s, "username alice");
    say(&mut s, "challenge md5");
    let r = s.input(
        &format!("authenticate md5 {}", response("guess")),
        NOW,
        &Fake::new(),
    );
    assert_eq!(r.lines, vec!["400 Login failed, login/password mismatch"]);
    assert_eq!(r.event, Event::AuthFailed);
    assert_eq!(r.next, Next::Continue);
    assert_eq!(s.user(), None);
    // The challenge was used up: the right answer to it no longer works.
    assert_eq!(
        say(
            &mut s,
            &format!("authenticate md5 {}", response("wonderland"))
        ),
        "400 Ask for a challenge first"
    );
    // An unknown user fails exactly like a wrong password.
    say(&mut s, "username mallory");
    say(&mut s, "challenge md5");
    let r = s.input(
        &format!("authenticate md5 {}", response("wonderland")),
        NOW,
        &Fake::new(),
    );
    assert_eq!(r.lines, vec!["400 Login failed, login/password mismatch"]);
    assert_eq!(r.event, Event::AuthFailed);
    // Bob's password for alice: the account's password counts, nothing else.
    say(&mut s, "username alice");
    say(&mut s, "challenge md5");
    let r = s.input(
        &format!("authenticate md5 {}", response("builder")),
        NOW,
        &Fake::new(),
    );
    assert_eq!(r.event, Event::AuthFailed);
    assert_eq!(r.next, Next::Close, "third failure ends the session");
}

#[test]
fn the_tunnel_password_is_not_the_login() {
    let mut s = session();
    say(&mut s, "username alice");
    say(&mut s, "challenge md5");
    let r = s.input(
        &format!("authenticate md5 {}", response("tunnelpw1")),
        NOW,
        &Fake::new(),
    );
    assert_eq!(r.event, Event::AuthFailed);
}

#[test]
fn unknown_and_foreign_tunnels_look_the_same() {
    let mut s = logged_in("alice", "wonderland");
    assert_eq!(
        say(&mut s, "tunnel show T5"),
        "400 Unknown tunnel endpoint T5"
    );
    assert_eq!(
        say(&mut s, "tunnel show T99"),
        "400 Unknown tunnel endpoint T99"
    );
    // Her own v6udpv4 tunnel is not a TIC tunnel.
    assert_eq!(
        say(&mut s, "tunnel show T4"),
        "400 Unknown tunnel endpoint T4"
    );
    assert_eq!(
        say(&mut s, "tunnel show Tx"),
        "400 Given tunnel id 'Tx' is not valid"
    );
    assert_eq!(
        say(&mut s, "tunnel show T-1"),
        "400 Given tunnel id 'T-1' is not valid"
    );
    let mut b = logged_in("bob", "builder");
    assert_eq!(
        say(&mut b, "tunnel show T1"),
        "400 Unknown tunnel endpoint T1"
    );
    assert_eq!(
        say(&mut b, "tunnel list"),
        "201 Listing tunnels\nT5 2001:db8:10:5::2 198.51.100.5 pop1\n\
         202 <tunnel_id> <ipv6_endpoint> <ipv4_endpoint> <pop_name>"
    );
}

#[test]
fn unknown_commands() {
    let mut s = session();
    assert_eq!(
        say(&mut s, "frobnicate now"),
        "400 Unknown command: frobnicate"
    );
    assert_eq!(
        say(&mut s, "get weather"),
        "400 No such option 'weather' to get"
    );
    assert_eq!(
        say(&mut s, "client AICCU"),
        "400 A valid client identifier is expected"
    );
    assert_eq!(
        say(&mut s, "challenge sha256"),
        "400 Send your username first"
    );
    say(&mut s, "username alice");
    assert_eq!(
        say(&mut s, "challenge sha256"),
        "400 Unknown authentication type: sha256"
    );
    let mut s = logged_in("alice", "wonderland");
    assert_eq!(
        say(&mut s, "tunnel frob"),
        "400 Unknown command: tunnel frob"
    );
    assert_eq!(say(&mut s, "route list"), "400 Unknown command: route");
    assert_eq!(say(&mut s, "username bob"), "400 Already logged in");
    assert_eq!(
        say(&mut s, "starttls"),
        "400 STARTTLS is only possible before logging in"
    );
}

#[test]
fn commands_before_login() {
    let mut s = session();
    for line in ["tunnel list", "tunnel show T1", "pop show pop1", "pop list"] {
        assert_eq!(say(&mut s, line), "400 You need to log in first", "{line}");
    }
    say(&mut s, "username alice");
    assert_eq!(say(&mut s, "tunnel list"), "400 You need to log in first");
    assert_eq!(
        say(
            &mut s,
            &format!("authenticate md5 {}", response("wonderland"))
        ),
        "400 Ask for a challenge first"
    );
    // get unixtime works at any time.
    assert_eq!(say(&mut s, "get unixtime"), "200 1700000000");
}

#[test]
fn overlong_lines_close() {
    let mut s = session();
    let r = s.overlong();
    assert_eq!(r.lines, vec!["400 Line too long"]);
    assert_eq!(r.next, Next::Close);
}

#[test]
fn starttls_when_available() {
    let mut s = Session::new(
        "198.51.100.77".parse().unwrap(),
        true,
        Box::new(|| CHALLENGE.to_string()),
    );
    let r = s.input("starttls", NOW, &Fake::new());
    assert_eq!(r.lines, vec!["200 Go ahead with TLS"]);
    assert_eq!(r.next, Next::StartTls);
    s.tls_started();
    assert_eq!(say(&mut s, "starttls"), "400 TLS is already active");
}

/// A second PoP, for tunnels that live there.
fn ams1() -> PopFacts {
    PopFacts {
        pop_id: "ams1".into(),
        ipv4: Ipv4Addr::new(192, 0, 2, 99),
        ipv6: None,
        heartbeat_interval: 60,
        heartbeat: true,
    }
}

#[test]
fn a_tunnel_on_another_pop_is_shown_with_that_pops_facts() {
    let mut dir = Fake::new();
    dir.tunnels[0].pop = "ams1".into();
    let mut s = logged_in("alice", "wonderland");
    let list = s.input("tunnel list", NOW, &dir).lines.join("\n");
    assert!(
        list.contains("T1 2001:db8:10:1::2 198.51.100.1 ams1\n"),
        "{list}"
    );
    assert!(
        list.contains("T2 2001:db8:10:2::2 heartbeat pop1\n"),
        "{list}"
    );
    let show = s.input("tunnel show T1", NOW, &dir).lines.join("\n");
    assert!(show.contains("\nPOP Id: ams1\n"), "{show}");
    assert!(show.contains("\nIPv4 POP: 192.0.2.99\n"), "{show}");
    assert_eq!(
        s.input("pop list", NOW, &dir).lines,
        vec!["201 Listing PoPs", "pop1", "ams1", "202 <pop_name>"]
    );
    let show = s.input("pop show ams1", NOW, &dir).lines.join("\n");
    assert!(show.contains("\nIPv4: 192.0.2.99\n"), "{show}");
}

#[test]
fn pop_show_and_list() {
    let mut s = logged_in("alice", "wonderland");
    assert_eq!(
        say(&mut s, "pop show pop1"),
        "201 Showing PoP information for pop1\nPOPId: pop1\nIPv4: 192.0.2.1\n\
         Heartbeat Support: Y\nTinc Support: N\nMulticast Support: N\n202 Done"
    );
    assert_eq!(say(&mut s, "pop show pop2"), "400 Unknown PoP 'pop2'");
    assert_eq!(
        say(&mut s, "pop list"),
        "201 Listing PoPs\npop1\n202 <pop_name>"
    );
}
