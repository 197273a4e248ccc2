//! The AF_XDP engine of AYIYA with live frames: the fixture's data plane attached to its
//! veths, the worker's sockets on both, frames written into the far ends (AF_PACKET) and
//! read where the PoP sends them. A signed AYIYA packet comes out decapsulated, a forged
//! one does not, a native packet into the tunnel comes out signed; an asleep tunnel's
//! packets are verified in XDP; with the worker stopped, XDP does the same by itself.
#[path = "support/mod.rs"]
mod support;

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use broker_common::consts::program_names;
use broker_userspace::{ayiya, config::AttachMode, dataplane::aux::Aux, model::State};
use etherparse::EtherType;
use support::*;

const PASSWORD: &str = "afxdp";
const CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 51, 100, 80), 40080);
const ETH_P_ALL: u16 = 0x0003;

/// An AF_PACKET socket on one interface: writes frames into it, reads what it receives.
struct Wire(OwnedFd);

impl Wire {
    fn open(ifindex: u32) -> Self {
        // SAFETY: plain syscalls on a descriptor we own.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ALL.to_be()),
            );
            assert!(fd >= 0, "AF_PACKET socket");
            let fd = OwnedFd::from_raw_fd(fd);
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = ETH_P_ALL.to_be();
            sll.sll_ifindex = ifindex as i32;
            let rc = libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "binding the AF_PACKET socket");
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            Self(fd)
        }
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: a buffer of the length passed.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(n, frame.len() as isize, "frame written");
    }

    /// The first received frame `pick` accepts within `wait`.
    fn expect(&self, wait: Duration, pick: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        let end = Instant::now() + wait;
        let mut buf = vec![0u8; 2048];
        while Instant::now() < end {
            // SAFETY: a buffer of the length passed.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 && pick(&buf[..n as usize]) {
                return Some(buf[..n as usize].to_vec());
            }
        }
        None
    }
}

fn ethertype(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[12], f[13]])
}

#[test]
fn ayiya_forwarded_through_the_af_xdp_worker() {
    std::thread::spawn(run)
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
}

fn run() {
    let mut fx = Fixture::new();
    fx.dp
        .upsert(&ayiya_spec(8, State::Up, Some(CLIENT), PASSWORD))
        .unwrap();
    fx.dp.attach("eth4", AttachMode::Driver).unwrap();
    fx.dp.attach("eth6", AttachMode::Driver).unwrap();
    let mut aux = Aux::load().unwrap();
    let (peer4, peer6) = (ifindex("peer4"), ifindex("peer6"));
    // The peers take what the PoP redirects into them natively and pass it on.
    aux.attach(program_names::PASS, peer4).unwrap();
    aux.attach(program_names::PASS, peer6).unwrap();
    let (isp, inet) = (Wire::open(peer4), Wire::open(peer6));
    let key = ayiya_key(PASSWORD);
    let worker = fx
        .dp
        .start_ayiya_worker(&["eth4".into(), "eth6".into()], 0)
        .unwrap();
    let stats = worker.stats();

    // Client to the internet: verified, decapsulated, hop limit decremented by the worker.
    let inner = udp6(link_addr(8, 2), INET_HOST, 64, b"signed by the client");
    let signed = ayiya_payload(link_addr(8, 2), unix_now(), 1, 41, &inner, &key);
    let want = ether(
        POP6_MAC,
        INET_MAC,
        EtherType::IPV6,
        &hop_decremented(&inner),
    );
    let before = fx.snapshot();
    isp.send(&from_ayiya_client(CLIENT, &signed));
    let got = inet
        .expect(Duration::from_secs(2), |f| f == want)
        .expect("the decapsulated packet out of eth6");
    assert_bytes(&got, &want, "decapsulated by the worker");
    assert_eq!(stats.verified.load(Ordering::Relaxed), 1);
    let d = before.tunnel_delta(&fx.snapshot(), 8);
    assert_eq!(
        (d.from_client_packets, d.drop_packets),
        (1, 0),
        "XDP counted it"
    );

    // A forged one (another key) goes no further.
    let forged = ayiya_payload(link_addr(8, 2), unix_now(), 1, 41, &inner, &[9; 20]);
    isp.send(&from_ayiya_client(CLIENT, &forged));
    assert!(
        inet.expect(Duration::from_millis(500), |f| f == want)
            .is_none(),
        "a forged packet came out"
    );
    assert_eq!(stats.bad_signature.load(Ordering::Relaxed), 1);
    assert_eq!(stats.verified.load(Ordering::Relaxed), 1);

    // An asleep tunnel's packets stay in XDP, which counts them as the client's only once
    // verified: a forged one from the client's own address and port neither reaches the
    // worker nor counts towards waking the tunnel; a signed one does.
    fx.dp
        .upsert(&ayiya_spec(8, State::Down, Some(CLIENT), PASSWORD))
        .unwrap();
    let before = fx.snapshot();
    isp.send(&from_ayiya_client(CLIENT, &forged));
    isp.send(&from_ayiya_client(CLIENT, &signed));
    inet.expect(Duration::from_secs(2), |f| f == want)
        .expect("decapsulated by XDP, the tunnel asleep");
    let d = before.tunnel_delta(&fx.snapshot(), 8);
    assert_eq!(
        (d.from_client_packets, d.drop_packets),
        (1, 1),
        "only the signed packet counts as the client's"
    );
    assert_eq!(stats.bad_signature.load(Ordering::Relaxed), 1);
    assert_eq!(stats.verified.load(Ordering::Relaxed), 1);
    fx.dp
        .upsert(&ayiya_spec(8, State::Up, Some(CLIENT), PASSWORD))
        .unwrap();

    // Internet to the client: encapsulated by XDP, signed by the worker.
    let native = udp6(INET_HOST, link_addr(8, 2), 64, b"to the client");
    inet.send(&from_internet(&native));
    let got = isp
        .expect(Duration::from_secs(2), |f| {
            ethertype(f) == 0x0800 && f.len() > 42 + 44 && f[23] == 17
        })
        .expect("the encapsulated packet out of eth4");
    assert_eq!(&got[..6], &ISP_MAC, "to the gateway");
    assert_eq!(&got[30..34], &CLIENT.0.octets(), "to the client");
    assert_eq!(u16::from_be_bytes([got[36], got[37]]), CLIENT.1);
    let ay = &got[42..];
    assert!(ayiya::verify(ay, &key), "signed with the tunnel's key");
    assert_eq!(&ay[44..], &hop_decremented(&native)[..], "the inner packet");
    assert_eq!(stats.signed.load(Ordering::Relaxed), 1);

    // Packets hashing fewer bytes than the worker's minimum stay in XDP.
    fx.dp.stop_ayiya_worker(worker).unwrap();
    let worker = fx
        .dp
        .start_ayiya_worker(&["eth4".into(), "eth6".into()], 1500)
        .unwrap();
    let signed = ayiya_payload(link_addr(8, 2), unix_now(), 1, 41, &inner, &key);
    isp.send(&from_ayiya_client(CLIENT, &signed));
    inet.expect(Duration::from_secs(2), |f| f == want)
        .expect("decapsulated by XDP, below the worker's minimum");
    assert_eq!(worker.stats().verified.load(Ordering::Relaxed), 0);

    // Without the worker, XDP hashes again: the same packet still gets through.
    fx.dp.stop_ayiya_worker(worker).unwrap();
    let signed = ayiya_payload(link_addr(8, 2), unix_now(), 1, 41, &inner, &key);
    isp.send(&from_ayiya_client(CLIENT, &signed));
    inet.expect(Duration::from_secs(2), |f| f == want)
        .expect("decapsulated by XDP once the worker is gone");
}
