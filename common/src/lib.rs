//! Shared by the successover agent, renderer and CLI: the Consul HTTP client
//! and the KV contract (key paths and the JSON shapes both daemons read and
//! write).

pub mod consul;
pub mod contract;
pub mod procedure;
pub mod secret;
pub mod systemd;
pub mod telemetry;
