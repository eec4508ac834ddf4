//! successover-render as a library: the binary is a thin CLI over these
//! modules, and integration tests drive the same code against a real
//! HAProxy.

pub mod apply;
pub mod config;
pub mod engine;
pub mod fallback;
pub mod metrics;
pub mod model;
pub mod presence;
pub mod template;
pub mod validate;
pub mod watch;
pub mod write;
