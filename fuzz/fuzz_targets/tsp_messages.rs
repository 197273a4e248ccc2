//! TSP's parsers one by one, both sides: the request and accept XML (server), the offer
//! (`broker client tsp` reads a server's), SASL PLAIN and DIGEST-MD5 (the client's
//! response, the server's challenge and `rspauth`).
#![no_main]

use broker_userspace::tsp::{sasl, xml};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(body) = xml::unframe(data) {
        let _ = xml::parse_request(body);
        let _ = xml::parse_offer(body);
    }
    let _ = xml::parse_request(data);
    let _ = xml::parse_offer(data);
    let _ = sasl::parse_plain(data);
    let _ = sasl::parse_digest_response(data, "broker", "0123ABCD");
    let _ = sasl::digest_client_response(data, "alice", "secret", "broker.example", "1700000000");
    let _ = sasl::parse_rspauth(data);
});
