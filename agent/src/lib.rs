//! successover agent library: the building blocks the `successover-agent`
//! binary runs.

pub mod cli;
pub mod cluster;
pub mod config;
pub mod decide;
pub mod failover;
pub mod membership;
pub mod metrics;
pub mod mysql;
pub mod observe;
pub mod rejoin;
pub mod report;
pub mod run;
pub mod switchover;
pub mod wake;
