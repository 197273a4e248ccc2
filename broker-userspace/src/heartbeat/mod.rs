//! The SixXS heartbeat protocol (UDP 3740): clients of `6in4-heartbeat` tunnels say
//! where they are every `Heartbeat_Interval`; a valid beat sets the tunnel's endpoint and
//! keeps it awake, silence puts it to sleep.
//!
//! - [`message`] — parsing, checks and signatures, and the client's beat;
//! - [`tracker`] — last beats and timeouts;
//! - [`server`] — the socket and the broker calls.
pub mod message;
pub mod server;
pub mod tracker;
