//! Shared by the successover agent, renderer and CLI: the Consul HTTP client,
//! the KV contract (key paths and the JSON shapes both daemons read and
//! write), the config vocabulary and logging.

pub mod config;
pub mod consul;
pub mod contract;
pub mod procedure;
pub mod secret;
pub mod systemd;
pub mod telemetry;
