//! `broker run` and the debug object, as an operator in trouble uses it: the config names
//! the object (`dataplane.ebpf_log`), a restart swaps it in on the pinned links (taking
//! over the maps), the data plane's records appear in the broker's log under target
//! `xdp`, and a restart without the key puts the embedded object back.
use std::time::Duration;

use broker_tests::eventually;
use broker_tests::lab::{Lab, INET6_HOST};

/// Restarts `broker run` with `config`, letting the data plane's debug records through
/// the log filter.
fn restart(lab: &mut Lab, config: &str) {
    std::fs::write(lab.config_path(), config).unwrap();
    assert!(
        lab.broker().stop(Duration::from_secs(10)),
        "broker run exits 0 on SIGTERM:\n{}",
        lab.broker_log()
    );
    lab.spawn_broker(&[("RUST_LOG", "info,xdp=debug")])
        .expect("broker run restarted");
}

#[test]
fn broker_run_loads_the_debug_object_when_asked_and_logs_its_records() {
    broker_tests::require_root();
    let object = broker_tests::ebpf_log_object().expect("the debug object");
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("bl{}", std::process::id());
    let mut lab = Lab::start(&prefix, 1, dir.path(), "").expect("starting the lab");
    let plain = lab.config_yaml(&prefix);
    let client = lab.clients[0].address();

    // The embedded object, even with the filter open: no records.
    restart(&mut lab, &plain);
    lab.ping(1, INET6_HOST, 2, "0.1").expect("forwarding");
    assert!(
        !lab.broker_log().contains(" xdp: "),
        "records from the embedded object?\n{}",
        lab.broker_log()
    );

    // Asked for the debug object: swapped in by a restart, forwarding on, its records in
    // the log. A ping's echo request is decapsulated and redirected: recorded at debug,
    // with the inner addresses (the frame as it leaves).
    let debug = format!(
        "{plain}dataplane:\n  ebpf_log:\n    object: {}\n    level: debug\n",
        object.display()
    );
    restart(&mut lab, &debug);
    assert!(
        lab.broker_log().contains("the debug object is loaded"),
        "{}",
        lab.broker_log()
    );
    lab.ping(1, INET6_HOST, 3, "0.1")
        .expect("forwarding on the debug object");
    let want = format!("ipv6 {client} > {INET6_HOST} next 58");
    eventually(5, "the echo requests' records in the broker's log", || {
        lab.broker_log()
            .lines()
            .any(|l| l.contains("DEBUG xdp: fate action=redirect reason=- ") && l.contains(&want))
    });

    // Without the key again: the embedded object, no more records.
    restart(&mut lab, &plain);
    lab.ping(1, INET6_HOST, 2, "0.1")
        .expect("forwarding on the embedded object again");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !lab.broker_log().contains(" xdp: "),
        "records after going back to the embedded object?\n{}",
        lab.broker_log()
    );
}
