//! Helper XDP programs for the lab and the benchmark (object `broker-aux`): a pass program
//! for veth peers, a no-op redirect, a counting sink and a live-frames generator.
use aya::{
    maps::{Array, PerCpuArray},
    programs::{xdp::XdpLinkId, TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    Ebpf,
};
use broker_common::{
    consts::{map_names as names, program_names as progs, GEN_FRAME_LEN},
    maps::StatPair,
};

use super::{testing, DataplaneError, TestRunOutput};

static AUX_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/broker-aux"));

/// The helper programs, loaded; links live as long as this value.
pub struct Aux {
    ebpf: Ebpf,
}

impl Aux {
    pub fn load() -> Result<Self, DataplaneError> {
        let mut ebpf = Ebpf::load(AUX_OBJ).map_err(DataplaneError::Load)?;
        for name in [
            progs::PASS,
            progs::BENCH_REDIRECT,
            progs::BENCH_SINK,
            progs::BENCH_GEN,
        ] {
            super::load_xdp(prog(&mut ebpf, name)?, name)?;
        }
        Ok(Self { ebpf })
    }

    /// Attaches `program` (one of the aux program names) to the interface with this index
    /// in the calling thread's namespace, in driver mode. It stays attached until
    /// [`Aux::detach`] or until this value drops.
    pub fn attach(
        &mut self,
        program: &'static str,
        ifindex: u32,
    ) -> Result<XdpLinkId, DataplaneError> {
        let p = prog(&mut self.ebpf, program)?;
        p.attach_to_if_index(ifindex, XdpMode::Driver)
            .map_err(|source| DataplaneError::Attach {
                iface: format!("ifindex {ifindex}"),
                mode: crate::config::AttachMode::Driver,
                source,
            })
    }

    /// Keeps the generator in the kernel's XDP dispatcher for as long as this value lives,
    /// by attaching it (generic mode) to the loopback of the calling thread's namespace,
    /// where it never runs. Each `BPF_PROG_TEST_RUN` of an XDP program adds it to the
    /// dispatcher and removes it afterwards (`bpf_prog_change_xdp` in net/bpf/test_run.c);
    /// for a program attached nowhere that rebuilds the dispatcher twice, about 25 ms a
    /// run on this kernel, which a rate measurement would count as the generator's.
    pub fn keep_generator_dispatched(&mut self) -> Result<XdpLinkId, DataplaneError> {
        // SAFETY: reads a NUL-terminated string.
        let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        let p = prog(&mut self.ebpf, progs::BENCH_GEN)?;
        p.attach_to_if_index(lo, XdpMode::Skb)
            .map_err(|source| DataplaneError::Attach {
                iface: "lo".into(),
                mode: crate::config::AttachMode::Skb,
                source,
            })
    }

    pub fn detach(&mut self, program: &'static str, link: XdpLinkId) -> Result<(), DataplaneError> {
        prog(&mut self.ebpf, program)?
            .detach(link)
            .map_err(|source| DataplaneError::Program {
                name: program,
                source,
            })
    }

    /// Attaches `program` to the interface named `iface` in this process's namespace.
    pub fn attach_by_name(
        &mut self,
        program: &'static str,
        iface: &str,
    ) -> Result<XdpLinkId, DataplaneError> {
        let c = std::ffi::CString::new(iface).map_err(|_| DataplaneError::Io {
            what: format!("interface name {iface:?}"),
            source: std::io::ErrorKind::InvalidInput.into(),
        })?;
        // SAFETY: reads a NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if index == 0 {
            return Err(DataplaneError::Io {
                what: format!("looking up interface {iface}"),
                source: std::io::Error::last_os_error(),
            });
        }
        self.attach(program, index)
    }

    /// Accumulated run time and count of `program` (see [`super::enable_run_stats`]).
    pub fn run_stats(
        &self,
        program: &'static str,
    ) -> Result<(std::time::Duration, u64), DataplaneError> {
        let info =
            prog_ref(&self.ebpf, program)?
                .info()
                .map_err(|source| DataplaneError::Program {
                    name: program,
                    source,
                })?;
        Ok((info.run_time(), info.run_count()))
    }

    /// Where `bench_redirect` sends frames.
    pub fn set_redirect_target(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        let name = names::BENCH_REDIRECT;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap { name })?;
        let mut a: Array<_, u32> =
            Array::try_from(map).map_err(|source| DataplaneError::Map { name, source })?;
        a.set(0, ifindex, 0)
            .map_err(|source| DataplaneError::Map { name, source })
    }

    /// Frames `bench_sink` has consumed so far, summed over CPUs.
    pub fn sink_count(&self) -> Result<StatPair, DataplaneError> {
        let name = names::BENCH_SINK;
        let map = self
            .ebpf
            .map(name)
            .ok_or(DataplaneError::MissingMap { name })?;
        let a: PerCpuArray<_, StatPair> =
            PerCpuArray::try_from(map).map_err(|source| DataplaneError::Map { name, source })?;
        let v = a
            .get(&0, 0)
            .map_err(|source| DataplaneError::Map { name, source })?;
        Ok(v.iter().fold(StatPair::default(), |s, x| StatPair {
            packets: s.packets + x.packets,
            bytes: s.bytes + x.bytes,
        }))
    }

    /// Test run of `xdp_pass`: the no-op baseline, timed like the data plane.
    pub fn test_run_pass(
        &self,
        frame: &[u8],
        repeat: u32,
    ) -> Result<TestRunOutput, DataplaneError> {
        let p = prog_ref(&self.ebpf, progs::PASS)?;
        testing::run(p, frame, 0, repeat, progs::PASS)
    }

    /// Transmits `count` copies of `frame` (at least `GEN_FRAME_LEN` bytes) out of
    /// interface `ifindex` of the calling thread's namespace, `batch` at a time, with live
    /// frames. The generator rewrites the first `GEN_FRAME_LEN` bytes of every frame (the
    /// headers a receiver may have changed); the rest stays as `frame` set it.
    pub fn generate(
        &mut self,
        frame: &[u8],
        ifindex: u32,
        count: u32,
        batch: u32,
    ) -> Result<(), DataplaneError> {
        self.set_generated(frame)?;
        self.send_generated(frame, ifindex, count, batch)
    }

    /// Makes `frame`'s first `GEN_FRAME_LEN` bytes what the generator writes into every
    /// frame it sends.
    pub fn set_generated(&mut self, frame: &[u8]) -> Result<(), DataplaneError> {
        if frame.len() < GEN_FRAME_LEN {
            return Err(DataplaneError::Io {
                what: format!("a {}-byte generator frame", frame.len()),
                source: std::io::ErrorKind::InvalidInput.into(),
            });
        }
        let name = names::GEN_TEMPLATE;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap { name })?;
        let mut a: Array<_, [u64; GEN_FRAME_LEN / 8]> =
            Array::try_from(map).map_err(|source| DataplaneError::Map { name, source })?;
        let mut words = [0u64; GEN_FRAME_LEN / 8];
        for (w, c) in words.iter_mut().zip(frame[..GEN_FRAME_LEN].chunks_exact(8)) {
            *w = u64::from_ne_bytes(c.try_into().expect("8 bytes"));
        }
        a.set(0, words, 0)
            .map_err(|source| DataplaneError::Map { name, source })
    }

    /// [`Self::generate`] with the frame [`Self::set_generated`] set; from several threads
    /// at once (one per CPU: a veth queues what a CPU sends on that CPU's queue).
    pub fn send_generated(
        &self,
        frame: &[u8],
        ifindex: u32,
        count: u32,
        batch: u32,
    ) -> Result<(), DataplaneError> {
        let p = prog_ref(&self.ebpf, progs::BENCH_GEN)?;
        let ctx: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
        let ctx: Vec<u8> = ctx.iter().flat_map(|f| f.to_ne_bytes()).collect();
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: count,
            attrs: TestRunAttrs::new().xdp_live_frames(batch),
            ..TestRunOptions::default()
        };
        p.test_run(opts).map_err(|source| DataplaneError::Program {
            name: progs::BENCH_GEN,
            source,
        })?;
        Ok(())
    }
}

fn prog<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, DataplaneError> {
    ebpf.program_mut(name)
        .ok_or(DataplaneError::MissingProgram { name })?
        .try_into()
        .map_err(|source| DataplaneError::Program { name, source })
}

fn prog_ref<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a Xdp, DataplaneError> {
    ebpf.program(name)
        .ok_or(DataplaneError::MissingProgram { name })?
        .try_into()
        .map_err(|source| DataplaneError::Program { name, source })
}
