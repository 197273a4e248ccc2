//! User-space tunnel clients: the client side of a tunnel for hosts whose kernel lacks it
//! (no `sit` module) and for the lab. `proto41` is the RFC 4213 endpoint, `tsp` a TSP
//! client that negotiates its tunnel and runs it (with `keepalive`), `ayiya` the SixXS
//! AYIYA endpoint (signed IPv6 in UDP, as AICCU), `tic` aiccu's side of TIC and
//! `heartbeat` a SixXS `6in4-heartbeat` client built from the two.

pub mod ayiya;
pub mod heartbeat;
pub mod keepalive;
pub mod proto41;
pub mod tic;
pub mod tsp;
pub mod tun;
