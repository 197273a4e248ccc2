//! A TSP session fed what a client (or anyone) sends: UDP datagrams (header and payload)
//! or a TCP stream cut by the server's framer, answered as the server answers (a user
//! with a password, tunnels refused or offered). The first byte picks the transport;
//! 0xff bytes separate messages.
#![no_main]

use broker_userspace::{
    config::{TspAuth, TspTunnelType},
    secret::UserSecrets,
    tsp::{
        frame::{self, TcpFramer},
        session::{Policy, Session, Step, Transport},
        status::Status,
        xml::{Offer, RequestedType},
    },
};
use libfuzzer_sys::fuzz_target;

fn policy() -> Policy {
    Policy {
        auth: vec![TspAuth::DigestMd5, TspAuth::Plain, TspAuth::Anonymous],
        tunnel_types: vec![
            TspTunnelType::V6V4,
            TspTunnelType::V6UdpV4,
            TspTunnelType::V4V6,
        ],
        realm: "broker".into(),
        keepalive_secs: 30,
    }
}

/// What the store keeps of the user's password (fixed, so the run is deterministic).
fn kept() -> UserSecrets {
    UserSecrets {
        password_hash:
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA"
                .into(),
        tic_md5: "5ebe2294ecd0e0f08eab7690d2a6ee69".into(),
        digest_realm: "broker".into(),
        digest_ha1: "00112233445566778899aabbccddeeff".into(),
    }
}

fn offer() -> Offer {
    Offer {
        tunnel_type: RequestedType::V6UdpV4,
        lifetime: 86400,
        mtu: 1280,
        server_ipv4: "192.0.2.1".parse().unwrap(),
        server_ipv6: "2001:db8::1".parse().unwrap(),
        client_ipv4: "198.51.100.10".parse().unwrap(),
        client_ipv6: "2001:db8::2".parse().unwrap(),
        dns_server: std::net::Ipv6Addr::UNSPECIFIED,
        keepalive: Some((30, "2001:db8::1".parse().unwrap())),
        router_prefix: None,
    }
}

fn drive(s: &mut Session, msg: &[u8], n: usize) {
    let mut step = s.input(msg);
    for _ in 0..8 {
        step = match step {
            Step::NeedPassword { .. } => s.password(Some(&kept())),
            // argon2 is not what is fuzzed here: a fixed verdict.
            Step::VerifyPlain { password, .. } => s.plain_checked(password.len() % 2 == 0),
            Step::NeedTunnel(_) if n % 3 == 0 => s.offered(Err(Status::NoTunnels)),
            Step::NeedTunnel(_) => s.offered(Ok((1, offer()))),
            _ => return,
        };
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let peer = "198.51.100.7:40000".parse().unwrap();
    if first & 1 == 0 {
        let mut s = Session::new(Transport::Udp, peer, policy());
        for (n, d) in rest.split(|b| *b == 0xff).enumerate() {
            if let Ok((_, payload)) = frame::parse_datagram(d) {
                drive(&mut s, payload, n);
            }
        }
    } else {
        let mut s = Session::new(Transport::Tcp, peer, policy());
        let mut framer = TcpFramer::default();
        for (n, chunk) in rest.split(|b| *b == 0xff).enumerate() {
            framer.push(chunk);
            while let Ok(Some(msg)) = framer.next(4096) {
                drive(&mut s, &msg, n);
            }
        }
    }
});
