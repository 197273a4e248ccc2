//! TSP (RFC 5572), the Tunnel Setup Protocol of gogoc/gw6c clients: pure protocol code
//! (framing, SASL, XML, the session state machine) with unit tests on the exact bytes of
//! the deployed clients, and the thin I/O around it.
//!
//! - [`frame`] — UDP headers and the TCP message stream;
//! - [`sasl`] — PLAIN and DIGEST-MD5;
//! - [`xml`] — requests, offers, accept;
//! - [`status`] — the status codes;
//! - [`session`] — one session, messages in and replies out;
//! - [`provider`] — a session's request made into a tunnel through the broker core;
//! - [`limits`] — per-source limits;
//! - [`server`] — the sockets.
pub mod frame;
pub mod limits;
pub mod provider;
pub mod sasl;
pub mod server;
pub mod session;
pub mod status;
pub mod xml;
