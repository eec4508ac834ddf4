//! successover agent library: the building blocks the `successover-agent`
//! binary runs.

pub mod cluster;
pub mod config;
pub mod decide;
pub mod fence;
pub mod isolation;
pub mod kvcache;
pub mod membership;
pub mod metrics;
pub mod mysql;
pub mod observe;
pub mod probe;
pub mod procedure;
pub mod report;
pub mod run;
