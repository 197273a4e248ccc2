//! A TIC session fed lines (cut at `\n`, as the server cuts them), over a directory with
//! one user and tunnels of every kind and state.
#![no_main]

use broker_userspace::{
    model::{Endpoint, Kind, State, TunnelSpec},
    store::{Origin, TunnelRecord},
    tic::session::{Directory, PopFacts, Session},
};
use libfuzzer_sys::fuzz_target;

struct Fixed(Vec<TunnelRecord>);

impl Directory for Fixed {
    fn user_password_md5(&self, user: &str) -> Option<String> {
        (user == "alice").then(|| "5ebe2294ecd0e0f08eab7690d2a6ee69".into())
    }

    fn user_tunnels(&self, user: &str) -> Vec<TunnelRecord> {
        if user == "alice" {
            self.0.clone()
        } else {
            Vec::new()
        }
    }

    fn pop(&self) -> PopFacts {
        PopFacts {
            pop_id: "pop1".into(),
            ipv4: "192.0.2.1".parse().unwrap(),
            ipv6: None,
            heartbeat_interval: 60,
            heartbeat: true,
        }
    }
}

fn tunnel(id: u32, kind: Kind, state: State) -> TunnelRecord {
    TunnelRecord {
        spec: TunnelSpec {
            id,
            kind,
            state,
            endpoint: Endpoint::unspecified(kind),
            link_prefix: Some(format!("2001:db8:10:{id:x}::/64").parse().unwrap()),
            routed_prefixes: vec![],
            client_v4: None,
            mtu: 1280,
            keepalive: None,
            ayiya_key: None,
        },
        pop: "pop1".into(),
        owner: Some("alice".into()),
        origin: Origin::Api,
        password: "tunnelpw".into(),
        update_key: None,
        update_key_hash: String::new(),
        created_at: 0,
        updated_at: 0,
        expires_at: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = Fixed(vec![
        tunnel(1, Kind::Heartbeat, State::Up),
        tunnel(2, Kind::Ayiya, State::Disabled),
        tunnel(3, Kind::Proto41, State::Down),
    ]);
    let challenges = Box::new(|| "0123456789abcdef0123456789abcdef".to_string());
    let mut s = Session::new("198.51.100.7".parse().unwrap(), true, challenges);
    let text = String::from_utf8_lossy(data);
    for line in text.split('\n') {
        let _ = s.input(line.trim_end_matches('\r'), 1_700_000_000, &dir);
    }
});
