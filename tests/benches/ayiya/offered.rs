//! `AYIYA_BENCH=offered`: how much of what it is offered the AF_XDP worker delivers, at
//! paced rates up to 1 Mpps into one receive queue, and flat out (issue 12).
//!
//! The fixture's data plane on its veths, the worker handed every size. A live-frames
//! generator pinned to CPU 0 writes `CHUNK` frames at a time on a wall-clock schedule
//! into one veth; the counting sinks' veths poll from NAPI threads pinned to CPU 0 too,
//! real-time: a sink is another machine, and CPU 1 is left to the worker, as a PoP gives
//! a worker thread a core of its own. Delivered is what the sink counted over what was sent;
//! "ring drops" is what the kernel could not put in the worker's RX ring.
//!
//! Never asserted: printed, and appended with the rest of the section.
use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use broker_common::consts::program_names;
use broker_userspace::dataplane::{aux::Aux, AyiyaWorker};

use crate::{load_frames, median, sizes, support::*};

/// Offered rates, frames per second (0: as fast as the generator goes).
const RATES: [u64; 5] = [250_000, 500_000, 750_000, 1_000_000, 0];
/// How long each point offers its rate.
const POINT: Duration = Duration::from_millis(800);
/// Frames per generator call: a call costs ~30 µs besides its frames (the generator kept
/// in the dispatcher), and a burst this short fits any ring.
const CHUNK: u32 = 256;
const ROUNDS: usize = 3;

#[derive(Clone, Copy, Default)]
struct Point {
    offered_pps: f64,
    delivered: f64,
    ring_drops: f64,
    worker_ns: f64,
}

pub fn run(fx: &mut Fixture, key: &[u8; 20]) -> String {
    let mut aux = Aux::load().expect("loading the helper programs");
    let (peer4, peer6) = (ifindex("peer4"), ifindex("peer6"));
    aux.attach(program_names::BENCH_SINK, peer4).unwrap();
    aux.attach(program_names::BENCH_SINK, peer6).unwrap();
    let _dispatched = aux.keep_generator_dispatched().unwrap();
    broker_tests::cpu::threaded_napi(&["peer4", "peer6"], true).expect("threaded NAPI");
    pin_napi_threads(&["peer4", "peer6"], 0);
    let cases: Vec<(usize, bool)> = sizes()
        .into_iter()
        .flat_map(|size| [(size, true), (size, false)])
        .collect();
    let mut all: Vec<Vec<Vec<Point>>> = vec![vec![Vec::new(); RATES.len()]; cases.len()];
    for _ in 0..ROUNDS {
        for (c, &(size, decap)) in cases.iter().enumerate() {
            let [frame, _] = load_frames(size, decap, key);
            let gen_if = if decap { peer4 } else { peer6 };
            aux.set_generated(&frame).unwrap();
            let worker = fx
                .dp
                .start_ayiya_worker(&["eth4".into(), "eth6".into()], 0)
                .expect("starting the AF_XDP worker");
            for (r, &rate) in RATES.iter().enumerate() {
                let p = point(&aux, &worker, &frame, gen_if, rate);
                eprintln!(
                    "AYIYA offered {size} B {}: {:.2} Mpps offered, {:.1}% delivered, ring drops {:.1}%, worker {:.0} ns",
                    if decap { "decap" } else { "encap" },
                    p.offered_pps / 1e6,
                    p.delivered * 100.0,
                    p.ring_drops * 100.0,
                    p.worker_ns
                );
                all[c][r].push(p);
            }
            fx.dp.stop_ayiya_worker(worker).unwrap();
        }
    }
    broker_tests::cpu::threaded_napi(&["peer4", "peer6"], false).expect("NAPI back");
    report(&cases, &all)
}

/// Offers `rate` frames per second of `frame` for `POINT`, then waits until the sink has
/// seen the last of what gets through.
fn point(aux: &Aux, worker: &AyiyaWorker, frame: &[u8], gen_if: u32, rate: u64) -> Point {
    let sink0 = aux.sink_count().unwrap().packets;
    let drops0 = worker.kernel_rx_dropped();
    let cpu0 = worker.cpu_time();
    let (sent, secs) = std::thread::scope(|s| {
        s.spawn(|| {
            broker_tests::cpu::pin_this_thread(0).expect("pinning the generator");
            let start = Instant::now();
            let mut sent = 0u64;
            let total = if rate == 0 {
                u64::MAX
            } else {
                rate * POINT.as_millis() as u64 / 1000
            };
            while sent < total && start.elapsed() < POINT {
                aux.send_generated(frame, gen_if, CHUNK, 64).unwrap();
                sent += u64::from(CHUNK);
                if rate > 0 {
                    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                    // Spun, not slept: a sleep overshoots by more than a chunk lasts.
                    while start.elapsed() < due {
                        std::hint::spin_loop();
                    }
                }
            }
            (sent, start.elapsed().as_secs_f64())
        })
        .join()
        .expect("the generator")
    });
    let mut last = aux.sink_count().unwrap().packets;
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = aux.sink_count().unwrap().packets;
        if now == last {
            break;
        }
        last = now;
    }
    let got = last - sink0;
    Point {
        offered_pps: sent as f64 / secs,
        delivered: got as f64 / sent as f64,
        ring_drops: (worker.kernel_rx_dropped() - drops0) as f64 / sent as f64,
        worker_ns: (worker.cpu_time() - cpu0).as_nanos() as f64 / got.max(1) as f64,
    }
}

/// Pins the NAPI threads of `devs` to `cpu`, real-time: a sink is another machine, which
/// the generator spinning on the same CPU must not hold up.
fn pin_napi_threads(devs: &[&str], cpu: usize) {
    let threads = broker_tests::cpu::napi_threads(devs).expect("listing NAPI threads");
    assert!(
        threads.len() >= devs.len(),
        "found {} NAPI threads of {devs:?}",
        threads.len()
    );
    for (pid, comm) in threads {
        broker_tests::cpu::pin(pid, cpu).expect("pinning a NAPI thread");
        let param = libc::sched_param { sched_priority: 50 };
        // SAFETY: a valid sched_param, for a kernel thread of ours.
        let rc = unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &param) };
        assert_eq!(
            rc,
            0,
            "making {comm} real-time: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn report(cases: &[(usize, bool)], all: &[Vec<Vec<Point>>]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### The AF_XDP worker at offered rates\n\n\
The fixture's data plane on its veths, the worker handed every size (one receive queue, \
one worker thread per socket). A live-frames generator pinned to CPU 0 offers each rate \
for {} ms, {CHUNK} frames at a time on a wall-clock schedule (\"flat out\": unpaced); the \
counting sinks' veths poll from NAPI threads pinned to CPU 0 as well, real-time (a sink is \
another machine: the generator must not hold it up), leaving CPU 1 to the worker. {ROUNDS} rounds, medians. Delivered: what the sink counted over what was sent. \
Ring drops: what the kernel could not put in the worker's RX ring. Worker: its threads' CPU \
time per delivered packet (user and system: its sends). Target: at least 95% delivered up \
to 1 Mpps offered.\n",
        POINT.as_millis()
    );
    let _ = writeln!(
        s,
        "| size | direction | offered | delivered | ring drops | worker per packet |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for (c, &(size, decap)) in cases.iter().enumerate() {
        for (r, &rate) in RATES.iter().enumerate() {
            let pts = &all[c][r];
            let m = |f: fn(&Point) -> f64| median(&pts.iter().map(f).collect::<Vec<_>>());
            let offered = if rate == 0 {
                format!("flat out ({:.2} Mpps)", m(|p| p.offered_pps) / 1e6)
            } else {
                format!("{:.2} Mpps", m(|p| p.offered_pps) / 1e6)
            };
            let _ = writeln!(
                s,
                "| {size} B | {} | {offered} | {:.1}% | {:.1}% | {:.0} ns |",
                if decap { "verify+decap" } else { "encap+sign" },
                m(|p| p.delivered) * 100.0,
                m(|p| p.ring_drops) * 100.0,
                m(|p| p.worker_ns),
            );
        }
    }
    s
}
