//! The `broker` controller: loads the XDP data plane, fills its maps from the
//! configuration, and runs the user-space side of tunnels where the kernel has none.
//!
//! One module per concern; only [`dataplane`] touches aya.

pub mod announce;
pub mod api;
pub mod ayiya;
pub mod broker;
pub mod cli;
pub mod client;
pub mod clientconf;
pub mod config;
pub mod conns;
pub mod daemon;
pub mod dataplane;
pub mod endpoints;
pub mod failpoint;
pub mod heartbeat;
pub mod history;
pub mod liveness;
pub mod logs;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod pop;
pub mod portal;
pub mod ratelimit;
pub mod report;
pub mod routes;
pub mod secret;
pub mod sha1x16;
pub mod store;
pub mod sysctl;
pub mod tic;
pub mod tls;
pub mod tsp;
