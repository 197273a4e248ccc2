//! `BPF_PROG_TEST_RUN` of the loaded program: how the kernel-program tests and the
//! benchmark run packets through it without a network.
use std::time::Duration;

use aya::programs::{TestRun, TestRunOptions};
use broker_common::consts::program_names;

use super::{Dataplane, DataplaneError};

/// Room for the program to grow a frame (encapsulation adds 20 bytes, Packet Too Big
/// shrinks it).
const HEADROOM_OUT: usize = 256;

/// What one run returned.
#[derive(Debug, Clone)]
pub struct TestRunOutput {
    /// The XDP action (`XDP_DROP` = 1, `XDP_PASS` = 2, `XDP_TX` = 3, `XDP_REDIRECT` = 4).
    pub action: u32,
    /// The frame as the program left it.
    pub data: Vec<u8>,
    /// The kernel's mean time per run.
    pub duration: Duration,
}

impl Dataplane {
    /// Runs `frame` through the program `repeat` times, as if received on interface
    /// `ingress_ifindex` of the calling thread's network namespace (0: none, which makes
    /// every FIB lookup fail). With `repeat > 1` each run sees the frame as the previous
    /// one left it, so only programs that do not rewrite may be repeated.
    pub fn test_run(
        &self,
        frame: &[u8],
        ingress_ifindex: u32,
        repeat: u32,
    ) -> Result<TestRunOutput, DataplaneError> {
        let prog = self.program()?;
        run(prog, frame, ingress_ifindex, repeat, program_names::BROKER)
    }
}

pub(super) fn run(
    prog: &aya::programs::Xdp,
    frame: &[u8],
    ingress_ifindex: u32,
    repeat: u32,
    name: &'static str,
) -> Result<TestRunOutput, DataplaneError> {
    let mut out = vec![0u8; frame.len() + HEADROOM_OUT];
    let ctx = xdp_md(frame.len(), ingress_ifindex);
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: (ingress_ifindex != 0).then_some(&ctx[..]),
        repeat,
        ..TestRunOptions::default()
    };
    let r = prog
        .test_run(opts)
        .map_err(|source| DataplaneError::Program { name, source })?;
    out.truncate(r.data_size_out as usize);
    Ok(TestRunOutput {
        action: r.return_value,
        data: out,
        duration: r.duration,
    })
}

/// `struct xdp_md` as the kernel accepts it for a test run: data at 0, data_end at the
/// frame length, no metadata, the ingress interface, queue 0.
fn xdp_md(len: usize, ingress_ifindex: u32) -> [u8; 24] {
    let fields: [u32; 6] = [0, len as u32, 0, ingress_ifindex, 0, 0];
    let mut b = [0u8; 24];
    for (i, f) in fields.iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&f.to_ne_bytes());
    }
    b
}
