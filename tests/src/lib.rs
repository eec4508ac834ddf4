//! Test harness for successover's integration tests: real Consul, MariaDB and
//! HAProxy processes plus network-namespace "hosts", each with its own
//! loopback ports and scratch directory so tests run in parallel, and torn
//! down (processes killed, directories removed) when dropped, also on panic.
//!
//! Starting an instance panics with the instance's log tail when it fails:
//! a test cannot do anything useful without it, and the panic message is the
//! first thing a reader of a CI log sees. Operations a test may want to see
//! fail (admin commands, queries) return `anyhow::Result` with context.
//!
//! Environment knobs:
//! - `SUCCESSOVER_CONSUL`, `SUCCESSOVER_MARIADBD`, `SUCCESSOVER_MARIADB_INSTALL_DB`,
//!   `SUCCESSOVER_HAPROXY`, `SUCCESSOVER_IP`: explicit binary paths.
//! - `SUCCESSOVER_FLAVOUR`: the database servers' flavour, `mariadb-10.11`
//!   (default), `mariadb-11.4` or `mysql-9.7` (see [`flavour`]).
//! - `SUCCESSOVER_KEEP_DIRS=1`: keep scratch directories (logs, configs,
//!   datadirs) after the test, for debugging.
//! - `RUST_LOG`: filter for [`init_tracing`].

pub mod agent;
pub mod bins;
pub mod chaos;
pub mod cli;
pub mod consul;
pub mod flavour;
pub mod haproxy;
pub mod mariadb;
pub mod netns;
pub mod ports;
pub mod process;
pub mod relay;
pub mod render_config;
pub mod scenario;
pub mod stack;
mod wait;
pub mod writer;

pub use consul::{ConsulCluster, ConsulDev, ConsulDevOptions};
pub use flavour::Flavour;
pub use haproxy::HaProxy;
pub use mariadb::{global_var, status_var, MariaDb, MariaDbOptions, Topology};
pub use netns::NetHost;
pub use ports::{reserve_port, PortLease};
pub use process::{Proc, Scratch};
pub use relay::Relay;
pub use render_config::RenderConfig;
pub use wait::{wait_for, wait_until, TimedOut};

/// Installs a `tracing` subscriber that writes through the test harness's
/// captured output, filtered by `RUST_LOG` (default `info`). Safe to call from
/// every test: only the first call in a process installs anything.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
