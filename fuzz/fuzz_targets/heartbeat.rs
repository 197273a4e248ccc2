//! A heartbeat datagram: parsed, checked against a source and the clock, verified.
#![no_main]

use broker_userspace::heartbeat::message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(beat) = message::parse(data) {
        let _ = beat.check("198.51.100.7".parse().unwrap(), 1_700_000_000);
        let _ = beat.verify("hartslag");
    }
});
