//! The chaos runner: for a given time, random faults against a whole local
//! system (three database hosts, a three-server Consul, HAProxy driven by
//! `successover-render`, a `successover-agent` per host) while writers go
//! through HAProxy, each fault followed by a repair and a check of the
//! invariants. `successover-chaos` (tests/src/bin/chaos.rs) is the command
//! line; tests/tests/chaos.rs a short run; docs/chaos.md the description.
//!
//! One round:
//!
//! 1. start the writers (each round new processes with new writer ids, so
//!    the log of every acknowledged write is complete when read);
//! 2. apply a fault drawn from a seeded RNG (the sequence of faults, their
//!    targets and durations is reproducible with the seed; the timing of
//!    the system under test is not);
//! 3. let the system react (a failover finishes, a switch is decided, or
//!    some seconds pass), then repair what the fault broke: restart what was
//!    killed, SIGCONT what was stopped, heal the partition, restart the
//!    Consul server, and bring a quarantined old source back with
//!    `successover rejoin`, or, on "rebuild required", rebuild it from
//!    nothing and replicate it from the current source;
//! 4. wait until the cluster is healthy again (published source routed by
//!    HAProxy, semi-sync with exactly one ACKing replica, every other node
//!    replicating from it, no fence, no quarantine, no procedure running);
//! 5. stop the writers and check the invariants: every write ever
//!    acknowledged is on the published source; no node has a GTID the source
//!    lacks; the published source is the only writable node. Background
//!    monitors add two checks over the whole time line: never two writable
//!    servers at once, and no connection through HAProxy answered by a node
//!    that was fenced, quarantined or not the published source.
//!
//! Database hosts live in network namespaces ([`NetHost`](crate::NetHost))
//! when [`ChaosOptions::netns`] is set (needed for partitions); agents there
//! reach their Consul server through a TCP forwarder on the host's
//! root-side address, as Consul only listens on 127.0.0.1.
//!
//! The servers are of the flavour `SUCCESSOVER_FLAVOUR` picks
//! ([`crate::Flavour`]); the checks state the same facts on each (MariaDB's
//! GTID positions, MySQL's GTID sets compared by the server).
//!
//! One file per part: `options` (fault kinds, options, the seeded RNG),
//! `world` (the system under test, and the renderer's configuration),
//! `writers`, `monitors` (background samplers), `runner` (the loop and one
//! round), `faults` (the deck and each fault), `repair`, `health`,
//! `history` (procedure history in KV), `checks` (the invariants),
//! `analysis` (the pure functions behind the checks, unit-tested), `report`
//! and `say` (output).

use std::time::Duration;

mod analysis;
mod checks;
mod faults;
mod health;
mod history;
mod monitors;
mod options;
mod repair;
mod report;
mod runner;
mod say;
mod world;
mod writers;

pub use analysis::{
    errant, longest_gap_ms, overlaps, parse_binlog_state, route_allowed, writable_intervals,
    KvState, Overlap, Sample,
};
pub use options::{ChaosOptions, FaultKind, Rng};
pub use report::{FaultRecord, Report};
pub use runner::run;

const PREFIX: &str = "mysql/";
/// The health reason when a write through HAProxy does not commit in 3 s.
const WRITES_STALLED: &str = "a write through HAProxy did not commit within 3 s";
/// How long writes may stall on a configuration the coordinator calls
/// healthy before the runner releases them as an operator would.
const STALL_LIMIT: Duration = Duration::from_secs(20);
/// The health reason of a replica working through a backlog; waiting for
/// it may take longer than [`HEALTHY_TIMEOUT`] (a rebuilt server replays
/// the whole history), up to [`CATCH_UP_TIMEOUT`].
const CATCHING_UP: &str = "catching up";
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(1200);
/// The renderer needs a moment to apply a KV change to HAProxy.
const ROUTE_GRACE_MS: u64 = 1_000;
/// How long an old source that comes back (SIGCONT, healed partition) may
/// stay writable before its agent self-fences it (rule 8). While it is, it
/// cannot acknowledge a write: its replicas stopped their IO threads in the
/// failover, so no semi-sync ACK can come.
const SELF_FENCE_GRACE_MS: u64 = 10_000;
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(120);
const PROCEDURE_TIMEOUT: Duration = Duration::from_secs(90);
const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
const ROUTE_INTERVAL: Duration = Duration::from_millis(50);
const KV_INTERVAL: Duration = Duration::from_millis(100);
/// Writers pause this long between writes: fast enough to measure gaps to
/// the tens of milliseconds, slow enough to leave the two cores to the
/// system under test.
const WRITER_INTERVAL_MS: u64 = 10;
/// After a round's repair, how long each writer has to get writes through
/// again before the writers stop (those that do not are left to the checks).
const WRITES_LAND_TIMEOUT: Duration = Duration::from_secs(10);
