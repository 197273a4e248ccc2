//! The debug object (`cargo xtask build-ebpf --log`, broker-ebpf's feature `log`): it
//! loads, with its BTF, and every packet's verdict arrives in userspace through aya-log,
//! at the level it was written at and within the level set at load. The embedded object
//! has none of it.
//!
//! The debug object comes from `broker_tests::ebpf_log_object` (`cargo xtask test` builds
//! it first). Each test runs on its own thread in a private network namespace (the fixture
//! of the other `xdp_*` tests); the programs and maps go with the fixture.
mod support;

use broker_common::stats::{DropReason, Event, PassReason};
use broker_userspace::{
    config::{EbpfLog, EbpfLogLevel},
    dataplane::{self, ebpf_log, XdpLog, XdpRecord},
};
use etherparse::EtherType;
use support::*;
use tracing::Level;

fn debug_object() -> std::path::PathBuf {
    broker_tests::ebpf_log_object().expect("the debug object")
}

/// The fixture (its four proto-41 tunnels) on the debug object, recording up to `level`.
fn debug_fixture(level: EbpfLogLevel) -> Fixture {
    Fixture::with_options(dataplane::Options {
        ebpf_log: Some(EbpfLog {
            object: debug_object(),
            level,
        }),
        ..dataplane::Options::new("test")
    })
}

/// Runs `f` on a thread of its own (the fixture moves it into a private namespace).
fn on_own_thread(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(f)
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
}

/// Three packets and what the debug object must say about each.
struct Case {
    what: &'static str,
    frame: Vec<u8>,
    action: u32,
    reason: Reason,
    level: Level,
    record: String,
}

fn cases(fx: &Fixture) -> Vec<Case> {
    let spoofed = from_client(
        client_v4(1),
        &udp6("2001:db8:bad::1".parse().unwrap(), INET_HOST, 64, b"x"),
    );
    let good = from_client(
        client_v4(1),
        &udp6(link_addr(1, 2), INET_HOST, 64, b"decap me"),
    );
    // An ARP request: not ours, passed untouched.
    let arp = ether(ISP_MAC, [0xff; 6], EtherType::ARP, &[0u8; 28]);
    let if4 = fx.eth4;
    vec![
        Case {
            what: "a proto-41 packet with a spoofed inner source",
            record: format!(
                "fate action=drop reason=spoofed_source len={} if={if4} rxq=0 ipv4 {} > {POP_V4} proto 41",
                spoofed.len(),
                client_v4(1)
            ),
            frame: spoofed,
            action: XDP_DROP,
            reason: Reason::Drop(DropReason::SpoofedSource),
            level: Level::INFO,
        },
        Case {
            what: "a proto-41 packet decapsulated and forwarded",
            // As the frame leaves: the inner header, next header UDP.
            record: format!(
                "fate action=redirect reason=- len={} if={if4} rxq=0 ipv6 {} > {INET_HOST} next 17",
                good.len(),
                link_addr(1, 2)
            ),
            frame: good,
            action: XDP_REDIRECT,
            reason: Reason::Did(Event::Decap),
            level: Level::DEBUG,
        },
        Case {
            what: "an ARP request",
            record: format!("fate action=pass reason=not_tunnel len=42 if={if4} rxq=0 ethertype 806"),
            frame: arp,
            action: XDP_PASS,
            reason: Reason::Pass(PassReason::NotTunnel),
            level: Level::TRACE,
        },
    ]
}

/// Runs each case once (counted as the embedded object counts it) and returns what the
/// log held after each.
fn run_cases(fx: &Fixture, log: &mut XdpLog) -> Vec<(Case, Vec<XdpRecord>)> {
    assert_eq!(log.drain(), vec![], "nothing before the first packet");
    cases(fx)
        .into_iter()
        .map(|c| {
            check(fx, c.what, &c.frame, fx.eth4, c.action, c.reason, None);
            let records = log.drain();
            (c, records)
        })
        .collect()
}

#[test]
fn the_debug_object_records_every_verdict_through_aya_log() {
    on_own_thread(|| {
        let mut fx = debug_fixture(EbpfLogLevel::Trace);
        let mut log = fx
            .dp
            .take_xdp_log()
            .unwrap()
            .expect("the debug object has a log");
        assert!(fx.dp.take_xdp_log().unwrap().is_none(), "taken once");
        for (c, records) in run_cases(&fx, &mut log) {
            assert_eq!(
                records,
                vec![XdpRecord {
                    level: c.level,
                    message: c.record.clone()
                }],
                "{}: one record, at its level",
                c.what
            );
        }
        // A packet run many times is recorded as many times: one record per verdict.
        let arp = ether(ISP_MAC, [0xff; 6], EtherType::ARP, &[0u8; 28]);
        fx.dp.test_run(&arp, fx.eth4, 50).unwrap();
        assert_eq!(log.drain().len(), 50);
    });
}

#[test]
fn the_level_set_at_load_leaves_out_more_detailed_records() {
    on_own_thread(|| {
        let mut fx = debug_fixture(EbpfLogLevel::Info);
        let mut log = fx.dp.take_xdp_log().unwrap().unwrap();
        let got: Vec<(Level, Vec<XdpRecord>)> = run_cases(&fx, &mut log)
            .into_iter()
            .map(|(c, r)| (c.level, r))
            .collect();
        for (level, records) in got {
            let want = usize::from(level == Level::INFO);
            assert_eq!(
                records.len(),
                want,
                "{level} records at level info: {records:?}"
            );
        }
    });
}

#[test]
fn the_default_object_has_no_log_and_both_objects_keep_their_btf() {
    assert!(!ebpf_log::has_log(ebpf_log::embedded()).unwrap());
    let debug = std::fs::read(debug_object()).unwrap();
    assert!(ebpf_log::has_log(&debug).unwrap());
    on_own_thread(|| {
        let mut fx = Fixture::new();
        assert!(
            fx.dp.take_xdp_log().unwrap().is_none(),
            "the embedded object has no AYA_LOGS"
        );
        assert!(
            fx.dp.program_btf_id().unwrap().is_some(),
            "the embedded object is loaded with its BTF"
        );
    });
    on_own_thread(|| {
        let fx = debug_fixture(EbpfLogLevel::Info);
        assert!(
            fx.dp.program_btf_id().unwrap().is_some(),
            "the debug object is loaded with its BTF"
        );
    });
}

#[test]
fn the_debug_object_needs_one_union_name_fixed() {
    let mut debug = std::fs::read(debug_object()).unwrap();
    let renamed = ebpf_log::btf::fix_names(&mut debug).unwrap();
    assert_eq!(
        renamed,
        vec![ebpf_log::btf::Renamed {
            kind: "UNION",
            from: "MaybeUninit<u8>".into(),
            to: "MaybeUninit_u8_".into(),
        }],
        "aya-log-ebpf 0.2.0's Global<u8>, as bpf-linker 0.10 leaves it (docs/TOOLCHAIN.md)"
    );
}

/// What docs/TOOLCHAIN.md says happens without the fix, on this kernel: the kernel refuses
/// the object's BTF, aya loads the object without it, and the verifier refuses the
/// program, whose SHA-1 callback (`bpf_loop`) needs BTF function info.
#[test]
fn without_the_fix_the_kernel_refuses_the_btf_and_then_the_program() {
    broker_tests::require_root();
    let raw = std::fs::read(debug_object()).unwrap();
    let mut words = vec![0u64; raw.len().div_ceil(8)];
    // SAFETY: `words` has room for the bytes; u8 has no alignment requirement.
    let aligned = unsafe {
        std::ptr::copy_nonoverlapping(raw.as_ptr(), words.as_mut_ptr().cast(), raw.len());
        std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), raw.len())
    };
    let mut ebpf = aya::EbpfLoader::new()
        .load(aligned)
        .expect("aya loads the object, without its BTF");
    let prog: &mut aya::programs::Xdp = ebpf.program_mut("broker_xdp").unwrap().try_into().unwrap();
    let err = prog
        .load()
        .expect_err("the verifier refuses the program without BTF");
    let text = format!("{err:?}");
    assert!(
        text.contains("missing btf func_info"),
        "the verifier's reason: {}",
        &text[text.len().saturating_sub(2000)..]
    );
}
