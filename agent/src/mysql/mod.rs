//! The flavour-aware MySQL layer: MariaDB, MySQL 8.0 (≥ 8.0.23) and MySQL 8.4 behind one API.
//!
//! * [`flavor`]: which server it is, from `@@version`.
//! * [`dialect`]: the SQL text per flavour, input validation and quoting (pure).
//! * [`gtid`]: MariaDB GTID positions and MySQL GTID sets, parsed and compared in Rust (pure).
//! * [`status`]: typed replica / semi-sync / processlist views parsed by column name (pure).
//! * [`node`]: the async connection to one server that puts these together, with timeouts.

pub mod dialect;
pub mod flavor;
pub mod gtid;
pub mod node;
pub mod status;

pub use dialect::{Dialect, InvalidInput, SemiSyncNaming, SemiSyncPlugins, SourceSpec};
pub use flavor::{Flavor, FlavorError, Version};
pub use gtid::{FlavourMismatch, GtidParseError, GtidPos, GtidSet, GtidState, MariaDbGtid, Uuid};
pub use node::{Node, NodeConfig, NodeError, ServerInfo};
pub use status::{
    AckCounters, BinlogStatus, ClientThread, IoRunning, MariaDbPositions, ParseError, ReadOnly,
    ReplicaGtid, ReplicaStatus, SemiSyncState, UsingGtid, WaitPoint,
};
