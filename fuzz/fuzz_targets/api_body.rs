//! Request bodies of the API (after authentication), every type it takes.
#![no_main]

use broker_userspace::api::{body, tunnels, users};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = body::parse::<tunnels::CreateIn>(data);
    let _ = body::parse::<tunnels::ChangeIn>(data);
    let _ = body::parse::<users::CreateIn>(data);
});
