//! Conformance with the clients people run, from their own bytes.
//!
//! `tests/recordings/` holds what gogoc 1.2 and aiccu 2007.01.15, built unmodified from
//! their public sources, sent to `broker run` in this lab (each file says how it was
//! made; docs/TSP.md and docs/SIXXS.md say which versions and when). The tests replay the
//! client's side against the real broker, from the recorded addresses, and check every
//! answer against a model of what that client reads: [`gogoc`] and [`aiccu`]. The models
//! are written from reading the clients' sources, not copied from them; each check names
//! what the client does with a field, so that a field the server stops sending fails a
//! test here before it crashes a client.
#![allow(dead_code)]

pub mod aiccu;
pub mod gogoc;
pub mod recording;
