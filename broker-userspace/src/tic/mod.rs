//! TIC, the Tunnel Information and Control protocol (TCP 3874) of SixXS: aiccu logs in
//! with its user's account and reads its tunnel's settings (`tunnel show`).
//!
//! - [`session`] — the dialogue, a pure state machine behind [`session::Directory`];
//! - [`directory`] — that directory over the store;
//! - `crate::tls` — the optional `starttls` certificate;
//! - [`server`] — the sockets, timeouts and per-source limits.
pub mod directory;
pub mod server;
pub mod session;
