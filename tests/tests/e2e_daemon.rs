//! `broker run` as an operator drives it: SIGHUP applies config changes and refuses bad
//! ones, SIGTERM detaches and unpins, route changes reach the data plane's next-hop cache
//! at once.
use std::time::Duration;

use broker_tests::eventually;
use broker_tests::{
    lab::{Lab, INET6_HOST},
    process::Proc,
};
use serde_json::Value;

fn lab(tag: &str, clients: u32, dir: &tempfile::TempDir, extra: &str) -> Lab {
    broker_tests::require_root();
    let prefix = format!("bd{}{tag}", std::process::id());
    Lab::start(&prefix, clients, dir.path(), extra).expect("starting the lab")
}

fn stats(lab: &Lab) -> Value {
    serde_json::from_str(&lab.stats(true).expect("broker stats")).expect("stats JSON")
}

#[test]
fn sigterm_leaves_forwarding_and_detach_takes_it_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = lab("term", 1, &dir, "");
    let instance = lab.instance.clone().unwrap();
    let pins = std::path::Path::new("/sys/fs/bpf/broker").join(&instance);
    assert!(
        lab.broker().stop(Duration::from_secs(10)),
        "broker run exits 0 on SIGTERM:\n{}",
        lab.broker_log()
    );
    // No controller, and the data plane forwards on.
    lab.ping(1, INET6_HOST, 3, "0.1")
        .expect("forwarding without the controller");
    for iface in ["eth4", "eth6"] {
        let link = lab.pop.ip(&["link", "show", iface]).unwrap();
        assert!(link.contains("xdp"), "{iface} lost its XDP program: {link}");
    }
    assert!(pins.join("links/eth4").exists());
    // Taken down explicitly.
    let out = broker_tests::lab::detach(&instance).unwrap();
    assert!(out.contains("removed link"), "{out}");
    for iface in ["eth4", "eth6"] {
        let link = lab.pop.ip(&["link", "show", iface]).unwrap();
        assert!(!link.contains("xdp"), "{iface} still has XDP: {link}");
    }
    assert!(!pins.exists(), "pins left behind at {}", pins.display());
    assert!(
        lab.ping(1, INET6_HOST, 1, "0.2").is_err(),
        "forwarding without a data plane?"
    );
}

#[test]
fn sighup_applies_tunnel_changes_and_refuses_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut lab = lab("hup", 2, &dir, "");
    let instance = lab.instance.clone().unwrap();
    let original = lab.config_yaml(&instance);

    // A config that does not validate changes nothing.
    lab.reload(&original.replace("mtu: 1480", "mtu: 9000"))
        .unwrap();
    eventually(5, "the rejection logged", || {
        lab.broker_log().contains("config reload rejected")
    });
    lab.ping(2, INET6_HOST, 2, "0.1")
        .expect("tunnel 2 still forwards");

    // Tunnel 2 removed, tunnel 1's MTU lowered.
    let two_start = original.find("  - id: 2").unwrap();
    let changed = original[..two_start].replacen("mtu: 1480", "mtu: 1280", 1);
    lab.reload(&changed).unwrap();
    eventually(5, "tunnel 2 gone from the data plane", || {
        stats(&lab)["tunnels"]
            .as_array()
            .is_some_and(|t| t.len() == 1)
    });
    assert!(
        lab.ping(2, INET6_HOST, 1, "0.2").is_err(),
        "removed tunnel still forwards"
    );
    // 1300 bytes do not fit tunnel 1 any more: the sender learns MTU 1280.
    let out = lab
        .inet6
        .cmd("ping")
        .args(["-6", "-n", "-c", "1", "-W", "2", "-s", "1252", "-M", "do"])
        .arg(lab.clients[0].address().to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("mtu=1280"),
        "expected Packet Too Big with MTU 1280: {text}"
    );
    lab.ping(1, INET6_HOST, 2, "0.1")
        .expect("tunnel 1 still forwards");
}

#[test]
fn a_route_change_reaches_the_next_hop_cache_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // Cached next hops would otherwise live for a minute.
    let lab = lab(
        "route",
        1,
        &dir,
        "dataplane:\n  nexthop_max_age_ms: 60000\n",
    );
    // Warm the per-CPU caches.
    lab.ping(1, INET6_HOST, 10, "0.05").unwrap();
    let host = format!("{INET6_HOST}/128");
    lab.pop
        .ip(&["-6", "route", "add", "blackhole", &host])
        .unwrap();
    eventually(5, "the blackhole route used by the data plane", || {
        lab.ping(1, INET6_HOST, 1, "0.2").is_err()
    });
    // Every CPU's cached hop is gone, not just the one that happened to look again.
    let no_route = || {
        stats(&lab)["drops"]["no_route"]["packets"]
            .as_u64()
            .unwrap()
    };
    let before = no_route();
    let out = lab.clients[0]
        .ns
        .cmd("ping")
        .args(["-6", "-n", "-c", "10", "-i", "0.05", "-W", "1"])
        .arg(INET6_HOST.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" 0 received"),
        "pings got through a blackhole route: {text}"
    );
    assert_eq!(
        no_route() - before,
        10,
        "each echo request dropped as no_route"
    );
    lab.pop
        .ip(&["-6", "route", "del", "blackhole", &host])
        .unwrap();
    eventually(5, "forwarding again after the route is gone", || {
        lab.ping(1, INET6_HOST, 1, "0.2").is_ok()
    });
}

#[test]
fn under_ip_netns_exec_it_says_its_pins_die_with_it() {
    broker_tests::require_root();
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("bd{}ipx", std::process::id());
    let lab = Lab::create(&prefix, 1, dir.path()).expect("the lab");
    std::fs::write(lab.config_path(), lab.config_yaml(&prefix)).unwrap();
    // `ip netns exec` gives its command a mount namespace of its own, with a fresh /sys:
    // no bpffs there, so the broker mounts one that only it can see.
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", lab.pop.name()])
        .arg(broker_tests::broker_bin().unwrap())
        .args(["run", "--config"])
        .arg(lab.config_path());
    let log = dir.path().join("ip-netns-exec.log");
    let mut broker = Proc::spawn("broker run under ip netns exec", cmd, &log).unwrap();
    eventually(30, "broker running", || {
        broker.log().contains("broker running")
    });
    let said = broker.log();
    assert!(
        said.contains("mount namespace of its own") && said.contains("nsenter --net="),
        "no clear word about the pins at start:\n{said}"
    );
    let xdp = || {
        lab.pop
            .ip(&["link", "show", "eth4"])
            .unwrap()
            .contains("xdp")
    };
    assert!(xdp(), "the data plane is attached");
    assert!(broker.stop(Duration::from_secs(10)), "{}", broker.log());
    // As it said: its pins went with it, and the data plane with them.
    eventually(10, "XDP gone with the controller", || !xdp());
}
