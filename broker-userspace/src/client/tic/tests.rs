use std::collections::VecDeque;

use super::*;
use crate::tic::session::{
    tests::{session, Fake, NOW},
    Directory, Session,
};

/// Runs the client dialogue against the server's session in memory.
fn converse(mut d: Dialogue, s: &mut Session, dir: &Fake) -> Result<TicTunnel, TicError> {
    let mut inbox: VecDeque<String> = VecDeque::from([s.banner(&dir.pop())]);
    loop {
        let line = inbox.pop_front().expect("the server went quiet");
        match d.line(&line)? {
            Action::Send(l) => inbox.extend(s.input(&l, NOW, dir).lines),
            Action::Wait => {}
            Action::Done(t) => return Ok(t),
        }
    }
}

fn fetch_mem(
    user: &str,
    password: &str,
    tunnel: Option<u32>,
    now: u64,
) -> Result<TicTunnel, TicError> {
    converse(
        Dialogue::new(user, password, tunnel, now),
        &mut session(),
        &Fake::new(),
    )
}

#[test]
fn fetches_a_named_tunnel() {
    let t = fetch_mem("alice", "wonderland", Some(2), NOW).unwrap();
    assert_eq!(
        t,
        TicTunnel {
            id: 2,
            kind: "6in4-heartbeat".into(),
            ipv6_endpoint: "2001:db8:10:2::2".parse().unwrap(),
            ipv6_pop: "2001:db8:10:2::1".parse().unwrap(),
            prefix_len: 64,
            pop_id: "pop1".into(),
            ipv4_endpoint: "heartbeat".into(),
            ipv4_pop: "192.0.2.1".parse().unwrap(),
            admin_state: "enabled".into(),
            user_state: "enabled".into(),
            password: "tunnelpw2".into(),
            heartbeat_interval: 60,
            mtu: 1280,
        }
    );
    assert!(t.enabled());
}

#[test]
fn without_an_id_takes_the_first_listed() {
    let t = fetch_mem("alice", "wonderland", None, NOW).unwrap();
    assert_eq!((t.id, t.kind.as_str()), (1, "6in4"));
    assert_eq!(t.ipv4_endpoint, "198.51.100.1");
    let t = fetch_mem("bob", "builder", None, NOW).unwrap();
    assert_eq!(t.id, 5);
    assert!(!t.enabled(), "bob's tunnel is down");
}

#[test]
fn clock_skew_aborts_both_ways() {
    assert_eq!(
        fetch_mem("alice", "wonderland", None, NOW + 121),
        Err(TicError::ClockSkew { secs: 121 })
    );
    assert_eq!(
        fetch_mem("alice", "wonderland", None, NOW - 200),
        Err(TicError::ClockSkew { secs: 200 })
    );
    assert!(fetch_mem("alice", "wonderland", None, NOW + 120).is_ok());
}

#[test]
fn refusals_are_errors() {
    assert!(matches!(
        fetch_mem("alice", "wrong", None, NOW),
        Err(TicError::Refused {
            step: "the login",
            ..
        })
    ));
    assert!(matches!(
        fetch_mem("alice", "wonderland", Some(5), NOW),
        Err(TicError::Refused {
            step: "tunnel show",
            ..
        })
    ));
    let mut empty = Fake::new();
    empty.tunnels.retain(|t| t.owner.as_deref() != Some("bob"));
    assert_eq!(
        converse(
            Dialogue::new("bob", "builder", None, NOW),
            &mut session(),
            &empty
        ),
        Err(TicError::NoTunnel)
    );
}

#[test]
fn a_show_without_a_key_names_it() {
    let mut d = Dialogue::new("u", "p", Some(7), NOW);
    for l in [
        "200 hello",
        "200 ok",
        "200 1700000000",
        "200 ok",
        "200 abc",
        "200 in",
        "201 here",
        "TunnelId: T7",
        "Type: 6in4",
    ] {
        assert!(
            matches!(d.line(l), Ok(Action::Send(_) | Action::Wait)),
            "{l}"
        );
    }
    assert_eq!(
        d.line("202 Done"),
        Err(TicError::Missing {
            key: "IPv6 Endpoint"
        })
    );
}

#[test]
fn the_login_response_is_aiccus() {
    let mut d = Dialogue::new("alice", "wonderland", None, NOW);
    for l in ["200 hi", "200 ok", "200 1700000000", "200 ok"] {
        d.line(l).unwrap();
    }
    // md5hex(challenge + md5hex("wonderland")), computed with Python's hashlib.
    assert_eq!(
        d.line("200 4d1a9c0ff6c24f0e9d7b3a2c1e5f6a7b"),
        Ok(Action::Send(
            "authenticate md5 09876c64daa8f4fdc32c14294d200c33".into()
        ))
    );
}
