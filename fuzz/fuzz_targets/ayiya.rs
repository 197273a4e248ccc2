//! AYIYA packets as userspace reads them: the header parser (`broker client ayiya` reads
//! the PoP's), the signature check, and the AF_XDP worker's handling of a frame XDP
//! handed over (verify, or sign), with the key and operation from the input.
#![no_main]

use broker_common::maps::XskMeta;
use broker_userspace::{ayiya, dataplane::xsk::frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = ayiya::key("secret");
    if let Ok(h) = ayiya::parse(data) {
        let _ = h;
        let _ = ayiya::carries(data, &key);
    }
    let Some((&op, rest)) = data.split_first() else {
        return;
    };
    let meta = XskMeta {
        key,
        slot: 1,
        egress_ifindex: 2,
        op: match op % 3 {
            0 => XskMeta::OP_VERIFY,
            1 => XskMeta::OP_SIGN,
            _ => u32::from(op),
        },
    };
    let mut frame_bytes = rest.to_vec();
    let _ = frame::handle(&meta, &mut frame_bytes);
});
