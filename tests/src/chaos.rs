//! The chaos runner: for a given time, random faults against a whole local
//! system (three MariaDB hosts, a three-server Consul, HAProxy driven by
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
//! Database hosts live in network namespaces ([`NetHost`]) when
//! [`ChaosOptions::netns`] is set (needed for partitions); agents there
//! reach their Consul server through a TCP forwarder on the host's
//! root-side address, as Consul only listens on 127.0.0.1.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use mysql_async::prelude::*;
use nix::sys::signal::Signal;
use successover_common::consul::{Consul, ConsulConfig};
use successover_common::procedure::{HistoryEntry, Outcome, ProcedureKind};
use tokio_util::sync::CancellationToken;

use crate::agent::{workspace_bin, AgentOptions, AgentProc};
use crate::consul::ConsulCluster;
use crate::haproxy::{defaults_section, global_section, HaProxy};
use crate::mariadb::{
    global_var, replica_status, status_var, MariaDb, MariaDbOptions, Topology, APP_PASSWORD,
    APP_USER,
};
use crate::netns::NetHost;
use crate::process::{Proc, Scratch};
use crate::writer::{self, unix_ms, WriterLog};
use crate::{bins, reserve_port, PortLease};

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

// ---------------------------------------------------------------------------------------------
// Options, faults, RNG
// ---------------------------------------------------------------------------------------------

/// The kinds of fault, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// `kill -9` of a mysqld.
    Kill9,
    /// SIGSTOP of a mysqld, SIGCONT later.
    SigStop,
    /// `kill -9` or SIGSTOP of an agent.
    Agent,
    /// `kill -9` or SIGSTOP of the renderer.
    Render,
    /// `kill -9` of the Consul leader.
    Leader,
    /// A database host cut off the network.
    Partition,
    /// A planned-switch request.
    Switch,
}

impl FaultKind {
    pub const ALL: [FaultKind; 7] = [
        FaultKind::Kill9,
        FaultKind::SigStop,
        FaultKind::Agent,
        FaultKind::Render,
        FaultKind::Leader,
        FaultKind::Partition,
        FaultKind::Switch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill9 => "kill9",
            FaultKind::SigStop => "sigstop",
            FaultKind::Agent => "agent",
            FaultKind::Render => "render",
            FaultKind::Leader => "leader",
            FaultKind::Partition => "partition",
            FaultKind::Switch => "switch",
        }
    }

    /// `kill9,sigstop,…` (or `all`).
    pub fn parse_list(s: &str) -> anyhow::Result<Vec<FaultKind>> {
        if s.trim() == "all" {
            return Ok(FaultKind::ALL.to_vec());
        }
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let kind = FaultKind::ALL
                .into_iter()
                .find(|k| k.name() == part)
                .with_context(|| {
                    format!(
                        "unknown fault {part:?}; known: {}",
                        FaultKind::ALL.map(FaultKind::name).join(",")
                    )
                })?;
            if !out.contains(&kind) {
                out.push(kind);
            }
        }
        anyhow::ensure!(!out.is_empty(), "no fault kinds given");
        Ok(out)
    }
}

#[derive(Clone, Debug)]
pub struct ChaosOptions {
    /// No new fault starts after this long (the one running finishes,
    /// with its repair and check).
    pub duration: Duration,
    pub seed: u64,
    pub faults: Vec<FaultKind>,
    /// Stop after this many faults even if time is left.
    pub max_faults: Option<usize>,
    /// Writers through HAProxy (each its own process).
    pub writers: u32,
    /// Database hosts in network namespaces (required for `partition`).
    pub netns: bool,
    pub cluster: String,
    /// Where every log ends up (runner, agents, renderer, HAProxy, MariaDB,
    /// Consul, writers).
    pub log_dir: PathBuf,
    /// Cancelled: start no new fault, finish the current one and report.
    pub stop: CancellationToken,
    /// Before the faults, break two invariants on purpose (route to a
    /// fenced node, two writable servers) to prove the checks see them: the
    /// run then reports those violations.
    pub sabotage: bool,
}

impl ChaosOptions {
    pub fn new(duration: Duration, seed: u64, log_dir: impl Into<PathBuf>) -> ChaosOptions {
        ChaosOptions {
            duration,
            seed,
            faults: FaultKind::ALL.to_vec(),
            max_faults: None,
            writers: 2,
            netns: true,
            cluster: "chaos".to_owned(),
            log_dir: log_dir.into(),
            stop: CancellationToken::new(),
            sabotage: false,
        }
    }
}

/// SplitMix64: tiny, and the same sequence for a seed whatever version of
/// the `rand` crate is in the lock file.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

/// One fault and what followed it.
#[derive(Clone, Debug, Default)]
pub struct FaultRecord {
    pub n: usize,
    /// Kind and variant: `kill9-source`, `agent-sigstop`, …
    pub label: String,
    pub target: String,
    pub started_ms: u64,
    pub finished_ms: u64,
    /// What happened, in order.
    pub notes: Vec<String>,
    /// Longest gap between two acknowledged writes of one writer this round.
    pub worst_gap_ms: u64,
    /// From the end of the repair to healthy again.
    pub recovery_ms: u64,
    pub failovers: u32,
    pub switches: u32,
    pub refusals: u32,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub netns: bool,
    pub elapsed: Duration,
    pub faults: Vec<FaultRecord>,
    pub failovers: u32,
    pub failovers_refused: u32,
    pub switches: u32,
    pub switches_refused: u32,
    pub switches_aborted: u32,
    pub procedures_failed: u32,
    pub rejoins: u32,
    pub rebuilds: u32,
    pub writes_acked: u64,
    pub writes_failed_attempts: u64,
    pub writes_lost: u64,
    pub route_probes: u64,
    pub read_only_samples: u64,
    pub kv_changes: u64,
    /// Longest time a returning old source stayed writable before its agent
    /// fenced it (never able to acknowledge, see [`SELF_FENCE_GRACE_MS`]).
    pub longest_self_fence_ms: u64,
    pub violations: Vec<String>,
    pub log_dir: PathBuf,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn refusals(&self) -> u32 {
        self.failovers_refused + self.switches_refused
    }

    /// The longest write gap and the fault it belongs to.
    pub fn worst_gap(&self) -> Option<&FaultRecord> {
        self.faults.iter().max_by_key(|f| f.worst_gap_ms)
    }

    /// The summary table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "successover chaos: seed {}, {} faults in {}, database hosts {}",
            self.seed,
            self.faults.len(),
            fmt_duration(self.elapsed),
            if self.netns {
                "in network namespaces"
            } else {
                "on loopback"
            }
        );
        let _ = writeln!(
            out,
            "\n{:<18} {:>6} {:>10} {:>9} {:>9} {:>12} {:>14}",
            "fault", "count", "failovers", "switches", "refusals", "worst gap", "worst recovery"
        );
        let mut by_label: BTreeMap<&str, (u32, u32, u32, u32, u64, u64)> = BTreeMap::new();
        for f in &self.faults {
            let e = by_label.entry(f.label.as_str()).or_default();
            e.0 += 1;
            e.1 += f.failovers;
            e.2 += f.switches;
            e.3 += f.refusals;
            e.4 = e.4.max(f.worst_gap_ms);
            e.5 = e.5.max(f.recovery_ms);
        }
        for (label, (count, fo, sw, rf, gap, rec)) in &by_label {
            let _ = writeln!(
                out,
                "{label:<18} {count:>6} {fo:>10} {sw:>9} {rf:>9} {:>12} {:>14}",
                fmt_ms(*gap),
                fmt_ms(*rec)
            );
        }
        let _ = writeln!(out);
        let mut row = |k: &str, v: String| {
            let _ = writeln!(out, "{k:<34} {v}");
        };
        row("faults", self.faults.len().to_string());
        row(
            "failovers",
            format!(
                "{} done, {} refused",
                self.failovers, self.failovers_refused
            ),
        );
        row(
            "switches",
            format!(
                "{} done, {} refused, {} aborted",
                self.switches, self.switches_refused, self.switches_aborted
            ),
        );
        row("refusals", self.refusals().to_string());
        row("procedures failed", self.procedures_failed.to_string());
        row(
            "rejoins / rebuilds",
            format!("{} / {}", self.rejoins, self.rebuilds),
        );
        row(
            "writes acknowledged",
            format!(
                "{} ({} failed attempts, retried)",
                self.writes_acked, self.writes_failed_attempts
            ),
        );
        row("writes lost", self.writes_lost.to_string());
        row(
            "worst write unavailability",
            match self.worst_gap() {
                Some(f) => format!(
                    "{} (fault #{} {} {})",
                    fmt_ms(f.worst_gap_ms),
                    f.n,
                    f.label,
                    f.target
                ),
                None => "-".to_owned(),
            },
        );
        row(
            "longest self-fence window",
            fmt_ms(self.longest_self_fence_ms),
        );
        row(
            "monitor samples",
            format!(
                "{} routes through HAProxy, {} read_only readings, {} KV changes",
                self.route_probes, self.read_only_samples, self.kv_changes
            ),
        );
        row("violations", self.violations.len().to_string());
        for v in &self.violations {
            let _ = writeln!(out, "  VIOLATION: {v}");
        }
        let _ = writeln!(
            out,
            "\nlogs: {}\nreproduce the fault sequence: --seed {}",
            self.log_dir.display(),
            self.seed
        );
        out
    }
}

fn fmt_ms(ms: u64) -> String {
    if ms >= 1000 {
        format!("{:.2} s", ms as f64 / 1000.0)
    } else {
        format!("{ms} ms")
    }
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}m {:02}s", s / 60, s % 60)
}

// ---------------------------------------------------------------------------------------------
// Pure analysis (unit-tested below)
// ---------------------------------------------------------------------------------------------

/// The longest time a writer went without an acknowledgement: between two
/// acknowledged writes, and also from its start to the first and from the
/// last to its end (a stall that lasts to the end of a round counts).
pub fn longest_gap_ms(log: &WriterLog) -> u64 {
    let mut points = vec![0u64];
    points.extend(log.acked.iter().map(|(_, at)| at.as_millis() as u64));
    points.push((log.elapsed.as_millis() as u64).max(*points.last().unwrap_or(&0)));
    points
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .max()
        .unwrap_or(0)
}

/// `@@gtid_binlog_state` as (domain, server id, seq).
pub fn parse_binlog_state(s: &str) -> anyhow::Result<Vec<(u32, u32, u64)>> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let mut parts = item.split('-');
        let (Some(d), Some(srv), Some(seq), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            anyhow::bail!("not a GTID: {item:?}");
        };
        out.push((d.parse()?, srv.parse()?, seq.parse()?));
    }
    Ok(out)
}

/// The entries of `node` that `source` does not cover: a server writes its
/// sequence numbers in order, so a later GTID of the same server in the
/// same domain covers an earlier one (as agent/src/mysql/gtid.rs
/// `binlog_state_not_in`).
pub fn errant(node: &[(u32, u32, u64)], source: &[(u32, u32, u64)]) -> Vec<(u32, u32, u64)> {
    node.iter()
        .filter(|(d, srv, q)| {
            !source
                .iter()
                .any(|(sd, ss, sq)| sd == d && ss == srv && sq >= q)
        })
        .copied()
        .collect()
}

/// One reading of `@@read_only` on one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub sent_ms: u64,
    pub recv_ms: u64,
    /// `None`: no answer (down, stopped, cut off).
    pub writable: Option<bool>,
}

/// Times a server was certainly writable: runs of at least two consecutive
/// writable readings, from the answer to the first to the question of the
/// last (the inner bound, so a switch where the old source turns read-only
/// before the new one turns writable never looks like an overlap).
pub fn writable_intervals(samples: &[Sample]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut run: Option<(u64, u64)> = None;
    for s in samples {
        match (s.writable, run.as_mut()) {
            (Some(true), Some(r)) => r.1 = s.sent_ms,
            (Some(true), None) => run = Some((s.recv_ms, s.recv_ms)),
            _ => {
                if let Some((a, b)) = run.take() {
                    if b > a {
                        out.push((a, b));
                    }
                }
            }
        }
    }
    if let Some((a, b)) = run {
        if b > a {
            out.push((a, b));
        }
    }
    out
}

/// Two servers writable at the same time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlap {
    pub a: String,
    pub b: String,
    pub from_ms: u64,
    pub to_ms: u64,
}

/// Every pair of servers whose writable intervals overlap.
pub fn overlaps(per_node: &[(String, Vec<(u64, u64)>)]) -> Vec<Overlap> {
    let mut out = Vec::new();
    for i in 0..per_node.len() {
        for j in i + 1..per_node.len() {
            for &(a0, a1) in &per_node[i].1 {
                for &(b0, b1) in &per_node[j].1 {
                    let (from, to) = (a0.max(b0), a1.min(b1));
                    if from < to {
                        out.push(Overlap {
                            a: per_node[i].0.clone(),
                            b: per_node[j].0.clone(),
                            from_ms: from,
                            to_ms: to,
                        });
                    }
                }
            }
        }
    }
    out
}

/// What the KV store said about routing, from the first poll that saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvState {
    /// The poll that first saw this state.
    pub seen_ms: u64,
    /// The last successful poll before it (which still saw the previous
    /// state): the change happened in between.
    pub prev_poll_ms: u64,
    pub published: Option<String>,
    pub fenced: bool,
    pub quarantined: BTreeSet<String>,
}

impl KvState {
    fn routable(&self, node: &str) -> bool {
        self.published.as_deref() == Some(node) && !self.fenced && !self.quarantined.contains(node)
    }

    fn describe(&self) -> String {
        format!(
            "published {}, {}, quarantined [{}]",
            self.published.as_deref().unwrap_or("none"),
            if self.fenced { "fenced" } else { "not fenced" },
            self.quarantined
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(",")
        )
    }
}

/// A connection through HAProxy answered by `node` at `at_ms` is fine if,
/// at some time within `grace_ms` before, KV published `node` unfenced and
/// not quarantined. States are in the order seen; each possibly held from
/// just after its `prev_poll_ms` until the next one's `seen_ms`.
pub fn route_allowed(states: &[KvState], node: &str, at_ms: u64, grace_ms: u64) -> bool {
    let from = at_ms.saturating_sub(grace_ms);
    if states.is_empty() {
        return true;
    }
    states.iter().enumerate().any(|(k, s)| {
        let starts = if k == 0 { 0 } else { s.prev_poll_ms };
        let ends = states.get(k + 1).map_or(u64::MAX, |n| n.seen_ms);
        starts <= at_ms && ends >= from && s.routable(node)
    })
}

/// The state in effect at `at_ms` as far as the poller knows.
fn state_at(states: &[KvState], at_ms: u64) -> Option<&KvState> {
    states.iter().rev().find(|s| s.seen_ms <= at_ms)
}

// ---------------------------------------------------------------------------------------------
// Background monitors
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct MonitorData {
    /// (connection started, server id that answered).
    routes: Vec<(u64, u32)>,
    /// Per server (index = server id - 1).
    samples: Vec<Vec<Sample>>,
    kv: Vec<KvState>,
}

struct Monitors {
    data: Arc<Mutex<MonitorData>>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Monitors {
    fn start(w: &World) -> Monitors {
        let data = Arc::new(Mutex::new(MonitorData {
            samples: vec![Vec::new(); w.topo.servers().len()],
            ..MonitorData::default()
        }));
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(route_monitor(
            w.proxy_port.port(),
            data.clone(),
            stop.clone(),
        )));
        for (i, db) in w.topo.servers().iter().enumerate() {
            tasks.push(tokio::spawn(writable_sampler(
                i,
                db.opts(),
                data.clone(),
                stop.clone(),
            )));
        }
        let addrs: Vec<(String, String)> = w
            .topo
            .servers()
            .iter()
            .map(|db| (db.addr(), db.name().to_owned()))
            .collect();
        tasks.push(tokio::spawn(kv_poller(
            w.consul.http_addrs(),
            w.cluster.clone(),
            addrs,
            data.clone(),
            stop.clone(),
        )));
        Monitors { data, stop, tasks }
    }

    async fn finish(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn route_monitor(port: u16, data: Arc<Mutex<MonitorData>>, stop: CancellationToken) {
    let opts: mysql_async::Opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some(APP_USER))
        .pass(Some(APP_PASSWORD))
        .prefer_socket(false)
        .into();
    while !stop.is_cancelled() {
        let started = unix_ms();
        let probe = async {
            let mut c = mysql_async::Conn::new(opts.clone()).await.ok()?;
            let id: Option<u32> = c.query_first("SELECT @@server_id").await.ok()?;
            let _ = c.disconnect().await;
            id
        };
        if let Ok(Some(id)) = tokio::time::timeout(Duration::from_millis(500), probe).await {
            data.lock().unwrap().routes.push((started, id));
        }
        tokio::select! {
            _ = tokio::time::sleep(ROUTE_INTERVAL) => {}
            _ = stop.cancelled() => {}
        }
    }
}

async fn writable_sampler(
    index: usize,
    opts: mysql_async::Opts,
    data: Arc<Mutex<MonitorData>>,
    stop: CancellationToken,
) {
    let mut conn: Option<mysql_async::Conn> = None;
    while !stop.is_cancelled() {
        let sent_ms = unix_ms();
        let read = async {
            if conn.is_none() {
                conn = Some(mysql_async::Conn::new(opts.clone()).await.ok()?);
            }
            let c = conn.as_mut()?;
            let ro: Option<u8> = c.query_first("SELECT @@GLOBAL.read_only").await.ok()?;
            ro
        };
        let writable = match tokio::time::timeout(Duration::from_millis(400), read).await {
            Ok(Some(ro)) => Some(ro == 0),
            _ => {
                // Dropping a connection to a hung server must not block.
                if let Some(c) = conn.take() {
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(Duration::from_secs(1), c.disconnect()).await;
                    });
                }
                None
            }
        };
        data.lock().unwrap().samples[index].push(Sample {
            sent_ms,
            recv_ms: unix_ms(),
            writable,
        });
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_INTERVAL) => {}
            _ = stop.cancelled() => {}
        }
    }
}

/// A Consul client that fails fast: the monitors move on to the next
/// server instead of waiting for a dead one.
fn quick_client(addr: &str) -> Consul {
    let mut cfg = ConsulConfig::new(addr);
    cfg.request_timeout = Duration::from_secs(1);
    cfg.retry_for = Duration::ZERO;
    Consul::new(cfg).expect("consul client")
}

async fn kv_poller(
    servers: Vec<String>,
    cluster: String,
    addrs: Vec<(String, String)>,
    data: Arc<Mutex<MonitorData>>,
    stop: CancellationToken,
) {
    let clients: Vec<Consul> = servers.iter().map(|a| quick_client(a)).collect();
    let master = format!("{PREFIX}master/{cluster}");
    let quarantine = format!("{PREFIX}quarantine/{cluster}/");
    let mut current = 0;
    let mut last_ok = 0u64;
    while !stop.is_cancelled() {
        let mut state = None;
        for k in 0..clients.len() {
            let c = &clients[(current + k) % clients.len()];
            let read = async {
                let m = c.kv_get_recurse(&master).await.ok()?;
                let q = c.kv_get_recurse(&quarantine).await.ok()?;
                Some((m, q))
            };
            if let Ok(Some((m, q))) = tokio::time::timeout(Duration::from_secs(2), read).await {
                current = (current + k) % clients.len();
                state = Some((m, q));
                break;
            }
        }
        let now = unix_ms();
        if let Some((m, q)) = state {
            let published = m
                .iter()
                .find(|kv| kv.key == master)
                .and_then(|kv| kv.value_str())
                .and_then(|v| addrs.iter().find(|(a, _)| a == v.trim()))
                .map(|(_, n)| n.clone());
            let fenced = m.iter().any(|kv| kv.key == format!("{master}/failed"));
            let quarantined = q
                .iter()
                .filter_map(|kv| kv.key.strip_prefix(&quarantine).map(str::to_owned))
                .collect();
            let mut d = data.lock().unwrap();
            let changed = d.kv.last().is_none_or(|l| {
                l.published != published || l.fenced != fenced || l.quarantined != quarantined
            });
            if changed {
                d.kv.push(KvState {
                    seen_ms: now,
                    prev_poll_ms: last_ok,
                    published,
                    fenced,
                    quarantined,
                });
            }
            last_ok = now;
        }
        tokio::select! {
            _ = tokio::time::sleep(KV_INTERVAL) => {}
            _ = stop.cancelled() => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The system under test
// ---------------------------------------------------------------------------------------------

/// Accepts on a namespace host's root-side address and forwards to a
/// Consul server on 127.0.0.1 (agents in namespaces cannot reach loopback).
struct Forward {
    task: tokio::task::JoinHandle<()>,
    _port: PortLease,
}

impl Forward {
    async fn start(listen: SocketAddr, target: SocketAddr, port: PortLease) -> Forward {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .unwrap_or_else(|e| panic!("forwarder on {listen}: {e}"));
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                conns.spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Forward { task, _port: port }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Which Consul server the renderer talks to; agent `i` talks to server `i`.
const RENDER_CONSUL: usize = 1;

struct World {
    cluster: String,
    agents: Vec<AgentProc>,
    agent_opts: Vec<AgentOptions>,
    renderer: Proc,
    render_config: PathBuf,
    render_log: PathBuf,
    haproxy: HaProxy,
    proxy_port: PortLease,
    topo: Topology,
    consul: ConsulCluster,
    /// Consul client per server (defaults: 5 s timeout, retried while there
    /// is no leader).
    clients: Vec<Consul>,
    _forwards: Vec<Forward>,
    // Dropped after the processes that live in them.
    hosts: Vec<NetHost>,
    _dir: Scratch,
}

impl World {
    async fn start(opts: &ChaosOptions, say: &Say) -> World {
        let n = 3;
        let mut hosts = Vec::new();
        if opts.netns {
            for i in 0..n {
                hosts.push(NetHost::create(&format!("db{}", i + 1)).await);
            }
        }
        let consul = ConsulCluster::start(3).await;
        let clients: Vec<Consul> = consul.http_addrs().iter().map(|a| client(a)).collect();
        let mut forwards = Vec::new();
        let mut agent_consul = Vec::new();
        for i in 0..n {
            let server = i % consul.len();
            let http = consul.http_addr(server);
            if let Some(host) = hosts.get(i) {
                let port: u16 = http.rsplit(':').next().unwrap().parse().unwrap();
                let lease = reserve_port();
                let listen = SocketAddr::new(host.host_side_addr().into(), lease.port());
                forwards.push(
                    Forward::start(listen, SocketAddr::from(([127, 0, 0, 1], port)), lease).await,
                );
                agent_consul.push(format!("http://{listen}"));
            } else {
                agent_consul.push(http);
            }
        }
        let servers = (0..n)
            .map(|i| {
                // Production boots read-only (ansible successover.cnf): a
                // server that restarts may be a failed old source.
                let mut o =
                    MariaDbOptions::new(format!("db{}", i + 1), i as u32 + 1).arg("--read-only=1");
                if let Some(h) = hosts.get(i) {
                    o.netns = Some(h.ns_name().to_owned());
                    o.bind_address = h.addr().into();
                }
                o
            })
            .collect();
        let topo = Topology::start_with(servers).await;
        writer::prepare(&topo.source().url())
            .await
            .expect("writer table");
        topo.source()
            .exec(&format!(
                "CREATE TABLE IF NOT EXISTS {}.chaos_probe (id BIGINT AUTO_INCREMENT PRIMARY KEY, at_ms BIGINT NOT NULL) ENGINE=InnoDB",
                writer::SCHEMA
            ))
            .await
            .expect("probe table");
        topo.wait_replicated(Duration::from_secs(30))
            .await
            .expect("replicated");
        let proxy_port = reserve_port();
        let settings = serde_json::json!({
            "proxy_port": proxy_port.port(),
            "semi_sync_replicas": 1,
            "max_lag_seconds": 10,
            "failover_cooldown_seconds": 0,
        });
        clients[0]
            .kv_put(
                &format!("{PREFIX}cluster/{}", opts.cluster),
                settings.to_string(),
            )
            .await
            .expect("cluster settings");
        let haproxy = HaProxy::start_with(|paths| {
            format!(
                "{}\n{}",
                global_section(&paths.admin_socket),
                defaults_section()
            )
        })
        .await;
        let dir = Scratch::new("chaos");
        let render_config = dir.path().join("render.toml");
        std::fs::write(
            &render_config,
            render_config_text(&consul.http_addr(RENDER_CONSUL), &haproxy),
        )
        .expect("render config");
        let render_log = dir.path().join("render.log");
        let renderer = spawn_renderer(&render_config, &render_log).await;
        let mut agents = Vec::new();
        let mut agent_opts = Vec::new();
        for (i, db) in topo.servers().iter().enumerate() {
            let mut o = AgentOptions::new(&opts.cluster, db.name(), &agent_consul[i]);
            o.netns = hosts.get(i).map(|h| h.ns_name().to_owned());
            agents.push(AgentProc::start(o.clone(), db).await);
            agent_opts.push(o);
        }
        say.line(format!(
            "system up: consul servers {:?}, proxy 127.0.0.1:{}, {}",
            consul.http_addrs(),
            proxy_port.port(),
            topo.servers()
                .iter()
                .map(|d| format!("{} {}", d.name(), d.addr()))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        World {
            cluster: opts.cluster.clone(),
            agents,
            agent_opts,
            renderer,
            render_config,
            render_log,
            haproxy,
            proxy_port,
            topo,
            consul,
            clients,
            _forwards: forwards,
            hosts,
            _dir: dir,
        }
    }

    /// A client for a running Consul server.
    fn kv(&self) -> &Consul {
        let i = (0..self.consul.len())
            .find(|i| self.consul.is_running(*i))
            .unwrap_or(0);
        &self.clients[i]
    }

    fn kv_addr(&self) -> String {
        let i = (0..self.consul.len())
            .find(|i| self.consul.is_running(*i))
            .unwrap_or(0);
        self.consul.http_addr(i)
    }

    fn index_of(&self, node: &str) -> usize {
        self.topo
            .servers()
            .iter()
            .position(|d| d.name() == node)
            .unwrap_or_else(|| panic!("unknown node {node}"))
    }

    fn node_of_addr(&self, addr: &str) -> Option<String> {
        self.topo
            .servers()
            .iter()
            .find(|d| d.addr() == addr.trim())
            .map(|d| d.name().to_owned())
    }

    async fn published(&self) -> Option<String> {
        let kv = self
            .kv()
            .kv_get(&format!("{PREFIX}master/{}", self.cluster))
            .await
            .ok()??;
        self.node_of_addr(kv.value_str()?)
    }

    async fn key_exists(&self, key: &str) -> bool {
        matches!(self.kv().kv_get(key).await, Ok(Some(_)))
    }

    async fn quarantined(&self) -> Vec<String> {
        let prefix = format!("{PREFIX}quarantine/{}/", self.cluster);
        self.kv()
            .kv_keys(&prefix, None)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
            .filter(|k| !k.is_empty())
            .collect()
    }

    /// The agent holding the coordinator lock (`<cluster>/<node>`).
    async fn coordinator(&self) -> Option<String> {
        let kv = self
            .kv()
            .kv_get(&format!("{PREFIX}lock/{}", self.cluster))
            .await
            .ok()??;
        kv.session.as_ref()?;
        kv.value_str()?.rsplit('/').next().map(str::to_owned)
    }

    /// `@@server_id` of a new connection through HAProxy.
    async fn proxied_server_id(&self) -> Option<u32> {
        let opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.proxy_port.port())
            .user(Some(APP_USER))
            .pass(Some(APP_PASSWORD))
            .prefer_socket(false);
        let fut = async {
            let mut c = mysql_async::Conn::new(opts).await.ok()?;
            let id: Option<u32> = c.query_first("SELECT @@server_id").await.ok()?;
            let _ = c.disconnect().await;
            id
        };
        tokio::time::timeout(Duration::from_secs(2), fut)
            .await
            .ok()?
    }

    /// One write through HAProxy as the application: does the published
    /// source commit?
    async fn probe_write(&self) -> Result<(), String> {
        let opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.proxy_port.port())
            .user(Some(APP_USER))
            .pass(Some(APP_PASSWORD))
            .prefer_socket(false);
        let fut = async {
            let mut c = mysql_async::Conn::new(opts).await?;
            c.exec_drop(
                format!(
                    "INSERT INTO {}.chaos_probe (at_ms) VALUES (?)",
                    writer::SCHEMA
                ),
                (unix_ms(),),
            )
            .await?;
            let _ = c.disconnect().await;
            anyhow::Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(3), fut).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("a write through HAProxy failed: {e:#}")),
            Err(_) => Err(WRITES_STALLED.to_owned()),
        }
    }

    /// Autopilot says every server is healthy and one may fail.
    async fn consul_stable(&self) -> Result<(), String> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| e.to_string())?;
        let health: serde_json::Value = http
            .get(format!("{}/v1/operator/autopilot/health", self.kv_addr()))
            .send()
            .await
            .map_err(|e| format!("autopilot health: {e}"))?
            .json()
            .await
            .map_err(|e| format!("autopilot health: {e}"))?;
        let healthy = health["Healthy"].as_bool() == Some(true);
        let tolerance = health["FailureTolerance"].as_u64().unwrap_or(0);
        if healthy && tolerance >= 1 {
            Ok(())
        } else {
            Err(format!(
                "consul not stable: autopilot healthy {healthy}, failure tolerance {tolerance}"
            ))
        }
    }

    /// Sessions per agent name (`successover-agent <cluster>/<node>`): more
    /// than one means a dead agent's session still holds what it held.
    async fn agent_sessions(&self) -> Result<HashMap<String, usize>, String> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| e.to_string())?;
        let list: serde_json::Value = http
            .get(format!("{}/v1/session/list", self.kv_addr()))
            .send()
            .await
            .map_err(|e| format!("session list: {e}"))?
            .json()
            .await
            .map_err(|e| format!("session list: {e}"))?;
        let mut out = HashMap::new();
        for s in list.as_array().into_iter().flatten() {
            if let Some(name) = s["Name"].as_str() {
                *out.entry(name.to_owned()).or_insert(0) += 1;
            }
        }
        Ok(out)
    }

    fn agent_log(&self, i: usize) -> PathBuf {
        self.agents[i]
            .config_path()
            .parent()
            .expect("agent dir")
            .join("agent.log")
    }

    /// Replaces agent `i` with a new process (same options); the old one's
    /// log is kept in `archive`.
    async fn restart_agent(&mut self, i: usize, archive: &Path, generation: usize) {
        let old_log = self.agent_log(i);
        self.agents[i].kill9().await;
        let _ = std::fs::copy(
            &old_log,
            archive.join(format!(
                "agent-{}.{generation}.log",
                self.agent_opts[i].node
            )),
        );
        let new = AgentProc::start(self.agent_opts[i].clone(), self.topo.server(i)).await;
        self.agents[i] = new;
    }

    async fn restart_renderer(&mut self) {
        self.renderer.kill9().await;
        self.renderer = spawn_renderer(&self.render_config, &self.render_log).await;
    }

    /// Copies every log into `dir`.
    fn collect_logs(&self, dir: &Path) {
        let copy = |from: &Path, name: String| {
            let _ = std::fs::copy(from, dir.join(name));
        };
        for (i, _) in self.agents.iter().enumerate() {
            copy(
                &self.agent_log(i),
                format!("agent-{}.log", self.agent_opts[i].node),
            );
        }
        copy(&self.render_log, "render.log".into());
        copy(
            &self.haproxy.dir().join("haproxy.log"),
            "haproxy.log".into(),
        );
        let _ = std::fs::copy(self.haproxy.cfg_path(), dir.join("haproxy.cfg"));
        for db in self.topo.servers() {
            copy(db.log_path(), format!("mariadb-{}.log", db.name()));
        }
        if let Ok(entries) = std::fs::read_dir(self.consul.dir()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".log") {
                    copy(&e.path(), format!("consul-{name}"));
                }
            }
        }
    }
}

fn client(addr: &str) -> Consul {
    Consul::new(ConsulConfig::new(addr)).expect("consul client")
}

async fn spawn_renderer(config: &Path, log: &Path) -> Proc {
    let mut cmd = std::process::Command::new(bins::successover_render());
    cmd.arg("-c").arg(config).env("RUST_LOG", "info");
    Proc::spawn("successover-render", cmd, log)
        .await
        .expect("spawn successover-render")
}

fn render_config_text(consul_addr: &str, haproxy: &HaProxy) -> String {
    let h = haproxy.paths();
    format!(
        r#"[consul]
address = "{consul_addr}"

[haproxy]
config = "{cfg}"
binary = "{binary}"
admin_socket = "{admin}"
master_socket = "{master}"
bind_address = "127.0.0.1"
hard_stop_after = "1m"
reload_timeout = "20s"

[watch]
wait = "5m"
retry_interval = "1s"
"#,
        cfg = h.cfg.display(),
        binary = bins::haproxy().display(),
        admin = h.admin_socket.display(),
        master = h.master_socket.display(),
    )
}

// ---------------------------------------------------------------------------------------------
// Writers
// ---------------------------------------------------------------------------------------------

/// `successover-writer` in its own process, one per writer id; a new id
/// per round so ids never collide with an earlier round's.
struct Writer {
    proc: Proc,
    out: PathBuf,
}

impl Writer {
    async fn start(port: u16, id: u32, dir: &Path) -> Writer {
        let out = dir.join(format!("w{id}.json"));
        let mut cmd = std::process::Command::new(workspace_bin("successover-writer"));
        cmd.args([
            "--port",
            &port.to_string(),
            "--writer-id",
            &id.to_string(),
            "--interval-ms",
            &WRITER_INTERVAL_MS.to_string(),
        ])
        .arg("--out")
        .arg(&out);
        let proc = Proc::spawn(
            format!("successover-writer {id}"),
            cmd,
            dir.join(format!("w{id}.log")),
        )
        .await
        .expect("spawn successover-writer");
        Writer { proc, out }
    }

    async fn finish(mut self) -> anyhow::Result<WriterLog> {
        self.proc.signal(Signal::SIGTERM).context("signal writer")?;
        self.proc.wait(Duration::from_secs(30)).await;
        let text = std::fs::read(&self.out).with_context(|| {
            format!(
                "writer log {}: {}",
                self.out.display(),
                self.proc.log_tail(10)
            )
        })?;
        let _ = std::fs::remove_file(&self.out);
        let json: serde_json::Value = serde_json::from_slice(&text)?;
        let acked = json["acked"]
            .as_array()
            .context("acked")?
            .iter()
            .filter_map(|p| Some((p[0].as_u64()?, Duration::from_millis(p[1].as_u64()?))))
            .collect();
        Ok(WriterLog {
            acked,
            failed: json["failed"].as_u64().unwrap_or(0),
            elapsed: Duration::from_millis(json["elapsed_ms"].as_u64().unwrap_or(0)),
            start_unix_ms: json["start_unix_ms"].as_u64().unwrap_or(0),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

/// Progress lines, to stdout and to `chaos.log` in the log directory.
struct Say {
    started: Instant,
    file: Mutex<Option<std::fs::File>>,
}

impl Say {
    fn new(dir: &Path) -> Say {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("chaos.log"))
            .ok();
        Say {
            started: Instant::now(),
            file: Mutex::new(file),
        }
    }

    fn line(&self, text: impl AsRef<str>) {
        use std::io::Write;
        let ms = unix_ms();
        let line = format!(
            "[{:>7.1}s {:02}:{:02}:{:02}.{:03}Z] {}",
            self.started.elapsed().as_secs_f64(),
            ms / 3_600_000 % 24,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000,
            text.as_ref()
        );
        println!("{line}");
        if let Some(f) = self.file.lock().unwrap().as_mut() {
            let _ = writeln!(f, "{line}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The runner
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Source,
    Replica,
}

/// A fault that ended the run: the system did not come back.
#[derive(Debug)]
struct Fatal(String);

struct Runner {
    opts: ChaosOptions,
    rng: Rng,
    w: World,
    mon: Option<Monitors>,
    say: Say,
    report: Report,
    /// Every acknowledged write id so far.
    acked: Vec<u64>,
    lost: HashSet<u64>,
    next_writer_id: u32,
    writers_dir: PathBuf,
    /// (node, unix ms) of every SIGCONT of a mysqld and heal of a host.
    revived: Vec<(String, u64)>,
    /// Finished history entries already counted.
    counted: HashSet<String>,
    history_cache: HashMap<String, HistoryEntry>,
    deck: Vec<FaultKind>,
    seen: HashSet<FaultKind>,
    /// Monitor findings before this time were reported by an earlier check.
    checked_until_ms: u64,
    reported_overlaps: HashSet<(String, String, u64)>,
    agent_generation: usize,
    /// Every server id ever used → node (a rebuilt server gets a new id).
    server_names: HashMap<u32, String>,
    next_server_id: u32,
    /// Rebuilt servers running with relaxed flush settings until they
    /// caught up.
    relaxed: HashSet<usize>,
}

/// Runs the chaos loop and returns the report; violations are in
/// [`Report::violations`] (the run itself only fails when the system
/// cannot be started).
pub async fn run(opts: ChaosOptions) -> anyhow::Result<Report> {
    anyhow::ensure!(
        opts.netns || !opts.faults.contains(&FaultKind::Partition),
        "partition faults need the database hosts in network namespaces"
    );
    std::fs::create_dir_all(&opts.log_dir)
        .with_context(|| format!("creating {}", opts.log_dir.display()))?;
    let writers_dir = opts.log_dir.join("writers");
    std::fs::create_dir_all(&writers_dir)?;
    let say = Say::new(&opts.log_dir);
    say.line(format!(
        "chaos: seed {}, {} of faults ({}), {} writer(s), logs in {}",
        opts.seed,
        fmt_duration(opts.duration),
        opts.faults
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(","),
        opts.writers,
        opts.log_dir.display()
    ));
    let w = World::start(&opts, &say).await;
    let mut r = Runner {
        rng: Rng::new(opts.seed),
        report: Report {
            seed: opts.seed,
            netns: opts.netns,
            log_dir: opts.log_dir.clone(),
            ..Report::default()
        },
        mon: None,
        w,
        say,
        acked: Vec::new(),
        lost: HashSet::new(),
        next_writer_id: 1,
        writers_dir,
        revived: Vec::new(),
        counted: HashSet::new(),
        history_cache: HashMap::new(),
        deck: Vec::new(),
        seen: HashSet::new(),
        checked_until_ms: 0,
        reported_overlaps: HashSet::new(),
        agent_generation: 0,
        server_names: HashMap::new(),
        next_server_id: 0,
        relaxed: HashSet::new(),
        opts,
    };
    for db in r.w.topo.servers() {
        r.server_names.insert(db.server_id(), db.name().to_owned());
        r.next_server_id = r.next_server_id.max(db.server_id() + 1);
    }
    let started = Instant::now();
    let result = r.run_loop(started).await;
    if let Err(Fatal(why)) = result {
        r.violation(format!("run stopped: {why}"));
        r.say
            .line(format!("state at the stop:\n{}", r.describe().await));
    }
    r.report.elapsed = started.elapsed();
    if let Some(m) = r.mon.take() {
        {
            let d = m.data.lock().unwrap();
            r.report.read_only_samples = d.samples.iter().map(|s| s.len() as u64).sum();
            r.report.kv_changes = d.kv.len() as u64;
        }
        m.finish().await;
    }
    r.w.collect_logs(&r.opts.log_dir);
    r.say.line("logs collected");
    Ok(r.report)
}

impl Runner {
    fn violation(&mut self, v: String) {
        self.say.line(format!("VIOLATION: {v}"));
        self.report.violations.push(v);
    }

    async fn run_loop(&mut self, started: Instant) -> Result<(), Fatal> {
        self.wait_healthy("start").await?;
        self.mon = Some(Monitors::start(&self.w));
        self.checked_until_ms = unix_ms();
        // Count nothing that happened before the first fault.
        for e in self.history().await {
            self.counted.insert(e.id);
        }
        if self.opts.sabotage {
            self.round(0, None).await?;
        }
        let mut n = 0;
        while started.elapsed() < self.opts.duration
            && self.opts.max_faults.is_none_or(|m| n < m)
            && !self.opts.stop.is_cancelled()
        {
            n += 1;
            let kind = self.next_kind();
            self.round(n, Some(kind)).await?;
        }
        Ok(())
    }

    /// Writers, a fault (`None`: the sabotage), repair, healthy, check.
    async fn round(&mut self, n: usize, kind: Option<FaultKind>) -> Result<(), Fatal> {
        let writers = self.start_writers().await;
        tokio::time::sleep(self.rng.millis(800, 1500)).await;
        let mut rec = FaultRecord {
            n,
            started_ms: unix_ms(),
            ..FaultRecord::default()
        };
        let outcome = match kind {
            Some(kind) => self.fault(kind, &mut rec).await,
            None => self.sabotage(&mut rec).await,
        };
        let outcome = match outcome {
            Ok(()) => self.repair(&mut rec).await,
            Err(e) => Err(e),
        };
        let repaired = Instant::now();
        let outcome = match outcome {
            Ok(()) => self.wait_healthy(&rec.label).await,
            Err(e) => Err(e),
        };
        rec.recovery_ms = repaired.elapsed().as_millis() as u64;
        if outcome.is_ok() {
            rec.notes
                .push(format!("healthy {} ms after the repair", rec.recovery_ms));
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        let logs = self.stop_writers(writers).await;
        self.count_procedures(&mut rec).await;
        rec.finished_ms = unix_ms();
        self.check(&mut rec, &logs, outcome.is_ok()).await;
        self.say.line(format!(
            "#{n} {} {}: {} | worst write gap {}",
            rec.label,
            rec.target,
            rec.notes.join("; "),
            fmt_ms(rec.worst_gap_ms)
        ));
        self.report.faults.push(rec);
        outcome
    }

    /// Breaks two invariants on purpose: a switchover while the renderer
    /// is stopped (HAProxy keeps routing to the old, fenced source), and the
    /// old source made writable again while every agent is stopped (two
    /// writable servers). The checks must report both.
    async fn sabotage(&mut self, rec: &mut FaultRecord) -> Result<(), Fatal> {
        rec.label = "sabotage".into();
        let (si, source) = self.source().await?;
        let ti = (si + 1) % self.w.topo.servers().len();
        let target = self.w.topo.server(ti).name().to_owned();
        rec.target = format!("{source} -> {target}");
        self.w.renderer.signal(Signal::SIGSTOP).map_err(fatal)?;
        let before = self.history_ids().await;
        let key = format!("{PREFIX}switchover/{}", self.w.cluster);
        self.w
            .kv()
            .kv_put(&key, target.clone())
            .await
            .map_err(fatal)?;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            let done = self.history().await.into_iter().any(|e| {
                e.kind == ProcedureKind::Switchover
                    && !before.contains(&e.id)
                    && e.outcome != Outcome::Running
            });
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        self.w.renderer.signal(Signal::SIGCONT).map_err(fatal)?;
        rec.notes
            .push("switched over with the renderer stopped for 3 s".into());
        tokio::time::sleep(Duration::from_secs(2)).await;
        for a in &self.w.agents {
            signal_pid(a.pid(), Signal::SIGSTOP).map_err(fatal)?;
        }
        let old = self.w.topo.server(si);
        old.exec("SET GLOBAL read_only = 0").await.map_err(fatal)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        old.exec("SET GLOBAL read_only = 1").await.map_err(fatal)?;
        for a in &self.w.agents {
            signal_pid(a.pid(), Signal::SIGCONT).map_err(fatal)?;
        }
        rec.notes
            .push(format!("{source} writable for 2 s next to {target}"));
        Ok(())
    }

    /// Each enabled kind once per deck, in a shuffled order: every kind
    /// comes up within `faults.len()` faults.
    fn next_kind(&mut self) -> FaultKind {
        if self.deck.is_empty() {
            self.deck = self.opts.faults.clone();
            self.rng.shuffle(&mut self.deck);
        }
        self.deck.pop().expect("non-empty deck")
    }

    /// The first fault of each database kind hits the source; later ones
    /// the source or a replica at random.
    fn role(&mut self, kind: FaultKind) -> Role {
        let first = self.seen.insert(kind);
        let coin = self.rng.chance(50);
        if first || coin {
            Role::Source
        } else {
            Role::Replica
        }
    }

    async fn start_writers(&mut self) -> Vec<Writer> {
        let mut out = Vec::new();
        for _ in 0..self.opts.writers {
            let id = self.next_writer_id;
            self.next_writer_id += 1;
            out.push(Writer::start(self.w.proxy_port.port(), id, &self.writers_dir).await);
        }
        out
    }

    async fn stop_writers(&mut self, writers: Vec<Writer>) -> Vec<WriterLog> {
        let mut logs = Vec::new();
        for w in writers {
            match w.finish().await {
                Ok(log) => logs.push(log),
                Err(e) => self.violation(format!("a writer's log is unreadable: {e:#}")),
            }
        }
        logs
    }

    async fn source(&self) -> Result<(usize, String), Fatal> {
        let name = self
            .w
            .published()
            .await
            .ok_or_else(|| Fatal("no published source".into()))?;
        Ok((self.w.index_of(&name), name))
    }

    /// A node of `role`: the published source, or a random other node.
    async fn pick(&mut self, role: Role) -> Result<(usize, String), Fatal> {
        let (si, s) = self.source().await?;
        Ok(match role {
            Role::Source => (si, s),
            Role::Replica => {
                let others: Vec<usize> = (0..self.w.topo.servers().len())
                    .filter(|i| *i != si)
                    .collect();
                let i = others[self.rng.below(others.len() as u64) as usize];
                (i, self.w.topo.server(i).name().to_owned())
            }
        })
    }

    async fn fault(&mut self, kind: FaultKind, rec: &mut FaultRecord) -> Result<(), Fatal> {
        match kind {
            FaultKind::Kill9 | FaultKind::SigStop | FaultKind::Partition => {
                self.mysql_fault(kind, rec).await
            }
            FaultKind::Agent => self.agent_fault(rec).await,
            FaultKind::Render => self.render_fault(rec).await,
            FaultKind::Leader => self.leader_fault(rec).await,
            FaultKind::Switch => self.switch_fault(rec).await,
        }
    }

    async fn mysql_fault(&mut self, kind: FaultKind, rec: &mut FaultRecord) -> Result<(), Fatal> {
        let role = self.role(kind);
        let (i, name) = self.pick(role).await?;
        let role_name = match role {
            Role::Source => "source",
            Role::Replica => "replica",
        };
        rec.label = format!("{}-{role_name}", kind.name());
        rec.target = name.clone();
        let before = self.history_ids().await;
        match kind {
            FaultKind::Kill9 => {
                self.w.topo.server_mut(i).kill9().await;
                if role == Role::Source {
                    self.await_failover(&before, rec).await?;
                } else {
                    tokio::time::sleep(self.rng.millis(2000, 6000)).await;
                }
                self.w.topo.server_mut(i).start_again().await;
                rec.notes.push(format!("{name} restarted"));
            }
            FaultKind::SigStop => {
                self.w.topo.server_mut(i).sigstop().map_err(fatal)?;
                // Half the time the stop lasts until a failover finished
                // (or no failover came), half the time a random 1–10 s:
                // the server may wake during detection or mid-failover.
                if role == Role::Source && self.rng.chance(50) {
                    self.await_failover(&before, rec).await?;
                    tokio::time::sleep(self.rng.millis(0, 2000)).await;
                } else {
                    let hold = self.rng.millis(1000, 10_000);
                    rec.notes.push(format!("stopped {} ms", hold.as_millis()));
                    tokio::time::sleep(hold).await;
                }
                self.w.topo.server_mut(i).sigcont().map_err(fatal)?;
                self.revived.push((name.clone(), unix_ms()));
                rec.notes.push(format!("{name} continued"));
            }
            FaultKind::Partition => {
                let host = &self.w.hosts[i];
                host.cut().await.map_err(fatal)?;
                if role == Role::Source && self.rng.chance(70) {
                    self.await_failover(&before, rec).await?;
                    tokio::time::sleep(self.rng.millis(0, 3000)).await;
                } else {
                    let hold = self.rng.millis(1000, 10_000);
                    rec.notes.push(format!("cut {} ms", hold.as_millis()));
                    tokio::time::sleep(hold).await;
                }
                self.w.hosts[i].heal().await.map_err(fatal)?;
                self.revived.push((name.clone(), unix_ms()));
                rec.notes.push(format!("{name} healed"));
            }
            _ => unreachable!(),
        }
        Ok(())
    }

    /// Waits for a failover that is not in `before` to finish.
    async fn await_failover(
        &mut self,
        before: &HashSet<String>,
        rec: &mut FaultRecord,
    ) -> Result<(), Fatal> {
        let t = Instant::now();
        let deadline = t + Duration::from_secs(60);
        loop {
            let entries = self.history().await;
            if let Some(e) = entries.iter().find(|e| {
                e.kind == ProcedureKind::Failover
                    && !before.contains(&e.id)
                    && e.outcome != Outcome::Running
            }) {
                rec.notes.push(format!(
                    "failover {:?} {} -> {} after {} ms: {}",
                    e.outcome,
                    e.from.as_deref().unwrap_or("?"),
                    e.to.as_deref().unwrap_or("?"),
                    t.elapsed().as_millis(),
                    e.reason
                ));
                return Ok(());
            }
            if Instant::now() > deadline {
                self.violation(format!(
                    "fault #{} {}: no failover finished within 60 s",
                    rec.n, rec.label
                ));
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn agent_fault(&mut self, rec: &mut FaultRecord) -> Result<(), Fatal> {
        // Draw unconditionally: the sequence of draws must not depend on
        // the state of the system, or a seed would not replay the faults.
        let prefer_coordinator = self.rng.chance(50);
        let random = self.rng.below(self.w.agents.len() as u64) as usize;
        let coordinator = self.w.coordinator().await;
        let i = match coordinator.filter(|_| prefer_coordinator) {
            Some(c) => self.w.index_of(&c),
            None => random,
        };
        let name = self.w.agent_opts[i].node.clone();
        let was_coordinator = self.w.coordinator().await.as_deref() == Some(name.as_str());
        let kill = self.rng.chance(50);
        // Either side of the 10 s session TTL.
        let hold = self.rng.millis(2000, 15_000);
        rec.label = format!("agent-{}", if kill { "kill9" } else { "sigstop" });
        rec.target = format!(
            "{name}{}",
            if was_coordinator {
                " (coordinator)"
            } else {
                ""
            }
        );
        if kill {
            self.w.agents[i].kill9().await;
        } else {
            signal_pid(self.w.agents[i].pid(), Signal::SIGSTOP).map_err(fatal)?;
        }
        rec.notes.push(format!("held {} ms", hold.as_millis()));
        tokio::time::sleep(hold).await;
        if kill {
            self.agent_generation += 1;
            let g = self.agent_generation;
            let dir = self.opts.log_dir.clone();
            self.w.restart_agent(i, &dir, g).await;
            rec.notes.push(format!("agent {name} restarted"));
        } else {
            signal_pid(self.w.agents[i].pid(), Signal::SIGCONT).map_err(fatal)?;
            rec.notes.push(format!("agent {name} continued"));
        }
        Ok(())
    }

    async fn render_fault(&mut self, rec: &mut FaultRecord) -> Result<(), Fatal> {
        let kill = self.rng.chance(50);
        let hold = self.rng.millis(1000, 8000);
        rec.label = format!("render-{}", if kill { "kill9" } else { "sigstop" });
        rec.target = "renderer".into();
        if kill {
            self.w.renderer.kill9().await;
        } else {
            self.w.renderer.signal(Signal::SIGSTOP).map_err(fatal)?;
        }
        rec.notes.push(format!("held {} ms", hold.as_millis()));
        tokio::time::sleep(hold).await;
        if kill {
            self.w.restart_renderer().await;
            rec.notes.push("renderer restarted".into());
        } else {
            self.w.renderer.signal(Signal::SIGCONT).map_err(fatal)?;
            rec.notes.push("renderer continued".into());
        }
        Ok(())
    }

    async fn leader_fault(&mut self, rec: &mut FaultRecord) -> Result<(), Fatal> {
        let hold = self.rng.millis(2000, 12_000);
        rec.label = "leader".into();
        let leader = self.w.consul.stop_leader().await;
        let users: Vec<String> = (0..self.w.agents.len())
            .filter(|i| i % self.w.consul.len() == leader)
            .map(|i| format!("agent {}", self.w.agent_opts[i].node))
            .chain((leader == RENDER_CONSUL).then(|| "renderer".to_owned()))
            .collect();
        rec.target = format!("consul server {leader} (serves {})", users.join(", "));
        let new_leader = tokio::time::timeout(Duration::from_secs(60), async {
            self.w.consul.wait_for_leader().await
        })
        .await
        .map_err(|_| Fatal("consul elected no new leader".into()))?;
        rec.notes.push(format!(
            "server {new_leader} leads; restarting {leader} after {} ms",
            hold.as_millis()
        ));
        tokio::time::sleep(hold).await;
        self.w.consul.start_node(leader).await;
        self.w.consul.wait_for_leader().await;
        Ok(())
    }

    async fn switch_fault(&mut self, rec: &mut FaultRecord) -> Result<(), Fatal> {
        let (si, source) = self.source().await?;
        let roll = self.rng.below(100);
        let target = if roll < 10 {
            // Refused: already the source.
            source.clone()
        } else if roll < 20 {
            // The best candidate.
            String::new()
        } else {
            let others: Vec<usize> = (0..self.w.topo.servers().len())
                .filter(|i| *i != si)
                .collect();
            let i = others[self.rng.below(others.len() as u64) as usize];
            self.w.topo.server(i).name().to_owned()
        };
        rec.label = "switch".into();
        rec.target = format!(
            "{source} -> {}",
            if target.is_empty() {
                "best"
            } else {
                target.as_str()
            }
        );
        let before = self.history_ids().await;
        let key = format!("{PREFIX}switchover/{}", self.w.cluster);
        self.w.kv().kv_put(&key, target).await.map_err(fatal)?;
        let t = Instant::now();
        loop {
            let entries = self.history().await;
            if let Some(e) = entries.iter().find(|e| {
                e.kind == ProcedureKind::Switchover
                    && !before.contains(&e.id)
                    && e.outcome != Outcome::Running
            }) {
                rec.notes.push(format!(
                    "switchover {:?} after {} ms (old read-only -> new writable {}): {}",
                    e.outcome,
                    t.elapsed().as_millis(),
                    e.write_unavailable_ms
                        .map_or("-".to_owned(), |ms| format!("{ms} ms")),
                    e.reason
                ));
                return Ok(());
            }
            if t.elapsed() > Duration::from_secs(60) {
                self.violation(format!(
                    "fault #{}: switchover request not answered within 60 s",
                    rec.n
                ));
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// After the fault's own undo: let a procedure under way finish, bring
    /// back quarantined nodes, restart anything that died on its own.
    async fn repair(&mut self, rec: &mut FaultRecord) -> Result<(), Fatal> {
        // A failover may still be coming (a server stopped for a while, a
        // host cut briefly): give detection a moment, then wait for the
        // procedure to end.
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.wait_no_procedure().await?;
        self.recover_refused_failover(rec).await?;
        for i in 0..self.w.agents.len() {
            if !self.w.agents[i].is_running() {
                let name = self.w.agent_opts[i].node.clone();
                self.violation(format!("fault #{}: agent {name} exited on its own", rec.n));
                self.agent_generation += 1;
                let g = self.agent_generation;
                let dir = self.opts.log_dir.clone();
                self.w.restart_agent(i, &dir, g).await;
            }
        }
        if !self.w.renderer.is_running() {
            self.violation("the renderer exited on its own".into());
            self.w.restart_renderer().await;
        }
        for q in self.w.quarantined().await {
            self.bring_back(&q, rec).await?;
        }
        Ok(())
    }

    async fn wait_no_procedure(&mut self) -> Result<(), Fatal> {
        let key = format!("{PREFIX}history/{}/in-progress", self.w.cluster);
        let t = Instant::now();
        while self.w.key_exists(&key).await {
            if t.elapsed() > PROCEDURE_TIMEOUT {
                return Err(Fatal(format!(
                    "a procedure is still in progress after {PROCEDURE_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(())
    }

    /// A refused failover leaves the cluster fenced for an operator; do
    /// what one would: make the published (surviving) source writable,
    /// restart replication, lift the fence.
    async fn recover_refused_failover(&mut self, rec: &mut FaultRecord) -> Result<(), Fatal> {
        let failed = format!("{PREFIX}master/{}/failed", self.w.cluster);
        if !self.w.key_exists(&failed).await {
            return Ok(());
        }
        rec.notes
            .push("cluster left fenced: recovering as an operator".into());
        let (si, source) = self.source().await?;
        let db = self.w.topo.server(si);
        if !db.is_running() {
            return Err(Fatal(format!("fenced, and the source {source} is down")));
        }
        db.exec("SET GLOBAL read_only = 0").await.map_err(fatal)?;
        for (i, r) in self.w.topo.servers().iter().enumerate() {
            if i != si {
                let _ = r.exec("START SLAVE").await;
            }
        }
        self.w.kv().kv_delete(&failed).await.map_err(fatal)?;
        Ok(())
    }

    /// `successover rejoin`, or on "rebuild required" a rebuild from
    /// nothing, replicating from the current source.
    async fn bring_back(&mut self, node: &str, rec: &mut FaultRecord) -> Result<(), Fatal> {
        let i = self.w.index_of(node);
        if !self.w.topo.server(i).is_running() {
            self.w.topo.server_mut(i).start_again().await;
        }
        // An operator rejoins a node once its agent has fenced it.
        let db = self.w.topo.server(i);
        let fenced = crate::wait_until(Duration::from_secs(20), || async {
            node_state(db).await.is_ok_and(|s| s.read_only)
        })
        .await;
        if fenced.is_err() {
            rec.notes
                .push(format!("{node} still writable 20 s after it came back"));
        }
        let mut last = String::new();
        for attempt in 0..3 {
            let out = tokio::time::timeout(
                Duration::from_secs(90),
                tokio::process::Command::new(workspace_bin("successover"))
                    .args([
                        "--consul-addr",
                        &self.w.kv_addr(),
                        "rejoin",
                        &self.w.cluster,
                        node,
                        "--wait",
                        "--timeout",
                        "60",
                    ])
                    .kill_on_drop(true)
                    .output(),
            )
            .await;
            let (code, text) = match out {
                Ok(Ok(o)) => (
                    o.status.code().unwrap_or(-1),
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                    .trim()
                    .to_owned(),
                ),
                Ok(Err(e)) => (-1, format!("running successover: {e}")),
                Err(_) => (-1, "successover rejoin hung for 90 s".to_owned()),
            };
            if code == 0 {
                self.report.rejoins += 1;
                rec.notes.push(format!("rejoin {node}: {text}"));
                return Ok(());
            }
            if text.contains("rebuild required") {
                rec.notes.push(format!("rejoin {node}: {text}"));
                return self.rebuild(i, rec).await;
            }
            last = text;
            self.say.line(format!(
                "rejoin {node} attempt {attempt}: exit {code}: {last}"
            ));
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        self.violation(format!(
            "fault #{}: rejoin of {node} neither worked nor asked for a rebuild: {last}",
            rec.n
        ));
        self.rebuild(i, rec).await
    }

    async fn rebuild(&mut self, i: usize, rec: &mut FaultRecord) -> Result<(), Fatal> {
        let (si, _) = self.source().await?;
        let name = self.w.topo.server(i).name().to_owned();
        // A new server id: the history holds this server's old writes
        // under the old one, which a replica would skip as its own.
        let id = self.next_server_id;
        self.next_server_id += 1;
        self.server_names.insert(id, name.clone());
        self.w.topo.server_mut(i).rebuild(id).await;
        // It replays the whole history; without two fsyncs per
        // transaction that takes a fraction of the time. Restored once it
        // has caught up (before the next fault).
        self.w
            .topo
            .server(i)
            .exec("SET GLOBAL sync_binlog = 0; SET GLOBAL innodb_flush_log_at_trx_commit = 2")
            .await
            .map_err(fatal)?;
        self.relaxed.insert(i);
        let topo = &self.w.topo;
        topo.server(i)
            .replicate_from(topo.server(si), false)
            .await
            .map_err(fatal)?;
        self.w
            .kv()
            .kv_delete(&format!("{PREFIX}quarantine/{}/{name}", self.w.cluster))
            .await
            .map_err(fatal)?;
        self.report.rebuilds += 1;
        rec.notes.push(format!(
            "{name} rebuilt from nothing as server id {id}, replicating from {}",
            topo.server(si).name()
        ));
        Ok(())
    }

    /// Healthy: one published, unfenced source routed by HAProxy, writable,
    /// with exactly one semi-sync client; every other node read-only and
    /// replicating from it; nothing quarantined or running; every process
    /// up.
    async fn health(&self) -> Result<String, String> {
        let c = &self.w.cluster;
        for i in 0..self.w.consul.len() {
            if !self.w.consul.is_running(i) {
                return Err(format!("consul server {i} is down"));
            }
        }
        // A restarted server takes a while to be a voter in step with the
        // leader again; stopping the leader before that leaves no quorum.
        self.w.consul_stable().await?;
        if self
            .w
            .key_exists(&format!("{PREFIX}master/{c}/failed"))
            .await
        {
            return Err("fenced".into());
        }
        if self
            .w
            .key_exists(&format!("{PREFIX}history/{c}/in-progress"))
            .await
        {
            return Err("a procedure is running".into());
        }
        let q = self.w.quarantined().await;
        if !q.is_empty() {
            return Err(format!("quarantined: {q:?}"));
        }
        // Every agent has a session (its report is bound to it), and the
        // lock is held by one of those sessions, not by a dead agent's.
        let reports = self
            .w
            .kv()
            .kv_get_recurse(&format!("{PREFIX}agent/{c}/"))
            .await
            .map_err(|e| format!("reading reports: {e}"))?;
        let mut sessions = HashSet::new();
        for o in &self.w.agent_opts {
            let key = format!("{PREFIX}agent/{c}/{}", o.node);
            match reports
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.session.clone())
            {
                Some(s) => sessions.insert(s),
                None => return Err(format!("agent {} has no health report", o.node)),
            };
        }
        let lock = self
            .w
            .kv()
            .kv_get(&format!("{PREFIX}lock/{c}"))
            .await
            .map_err(|e| format!("reading the lock: {e}"))?
            .and_then(|kv| kv.session);
        if !lock.is_some_and(|s| sessions.contains(&s)) {
            return Err("no live agent holds the coordinator lock".into());
        }
        let counts = self.w.agent_sessions().await?;
        for o in &self.w.agent_opts {
            let name = format!("successover-agent {c}/{}", o.node);
            let n = counts.get(&name).copied().unwrap_or(0);
            if n > 1 {
                return Err(format!(
                    "agent {}: {n} sessions (a dead agent's session is still alive)",
                    o.node
                ));
            }
        }
        let source = self.w.published().await.ok_or("no published source")?;
        let si = self.w.index_of(&source);
        let sdb = self.w.topo.server(si);
        let source_pos = node_state(sdb)
            .await
            .map_err(|e| format!("{source}: {e:#}"))?
            .binlog_pos;
        for (i, db) in self.w.topo.servers().iter().enumerate() {
            let st = node_state(db)
                .await
                .map_err(|e| format!("{}: {e:#}", db.name()))?;
            if i == si {
                if st.read_only {
                    return Err(format!("source {source} is read-only"));
                }
                if !st.semi_sync_source || st.semi_sync_clients != 1 {
                    return Err(format!(
                        "source {source}: semi-sync flag {}, {} clients",
                        st.semi_sync_source, st.semi_sync_clients
                    ));
                }
            } else {
                if !st.read_only {
                    return Err(format!("{} is writable", db.name()));
                }
                let ok = st.replicating.as_ref().is_some_and(|(h, p, io, sql)| {
                    *h == sdb.host().to_string() && *p == sdb.port() && *io && *sql
                });
                if !ok {
                    return Err(format!(
                        "{} does not replicate from {source}: {:?}",
                        db.name(),
                        st.replicating
                    ));
                }
                // Applied everything the source had a moment ago: a
                // replica still working through a backlog (a rebuilt one)
                // would make the next failover wait for it.
                let behind = source_pos
                    .iter()
                    .find(|(d, _, q)| !st.current_pos.iter().any(|(cd, _, cq)| cd == d && cq >= q));
                if let Some((d, _, q)) = behind {
                    let at = st
                        .current_pos
                        .iter()
                        .find(|(cd, _, _)| cd == d)
                        .map_or(0, |(_, _, cq)| *cq);
                    return Err(format!(
                        "{CATCHING_UP}: {} applied seq {at} of domain {d}, {source} is at {q}",
                        db.name()
                    ));
                }
            }
        }
        if self.w.proxied_server_id().await != Some(sdb.server_id()) {
            return Err(format!("HAProxy does not route to {source}"));
        }
        self.w.probe_write().await?;
        Ok(source)
    }

    async fn wait_healthy(&mut self, after: &str) -> Result<(), Fatal> {
        let t = Instant::now();
        let mut last = String::new();
        let mut stalled_since: Option<Instant> = None;
        let mut reasons: Vec<String> = Vec::new();
        let mut deadline = t + HEALTHY_TIMEOUT;
        while Instant::now() < deadline {
            match self.health().await {
                Ok(_) => {
                    self.restore_durability().await;
                    if t.elapsed() > Duration::from_secs(5) {
                        self.say.line(format!(
                            "healthy after {} ms; waited on: {}",
                            t.elapsed().as_millis(),
                            reasons.join(" / ")
                        ));
                    }
                    return Ok(());
                }
                Err(why) => {
                    if why.starts_with(CATCHING_UP) {
                        deadline = deadline
                            .max(Instant::now() + HEALTHY_TIMEOUT)
                            .min(t + CATCH_UP_TIMEOUT);
                    }
                    let short = why.split(':').next().unwrap_or_default();
                    if reasons
                        .last()
                        .is_none_or(|r| r.split(':').next() != Some(short))
                        && reasons.len() < 8
                    {
                        reasons.push(why.clone());
                    }
                    if why == WRITES_STALLED {
                        let since = *stalled_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= STALL_LIMIT {
                            self.release_stalled_source(after, since.elapsed()).await?;
                            stalled_since = None;
                        }
                    } else {
                        stalled_since = None;
                    }
                    last = why;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err(Fatal(format!(
            "not healthy {:?} after {after}: {last}",
            t.elapsed()
        )))
    }

    /// Everything else looks healthy, but commits on the source wait for a
    /// semi-sync ACK that does not come (observed on MariaDB 10.11 after the
    /// semi-sync replica died or was cut off with several sessions
    /// committing: moving the flag and the coordinator's heartbeat write do
    /// not release them). Recorded as a violation; then, to keep the run
    /// going, released the way an operator would without losing a write:
    /// only once the semi-sync replica has received everything in the
    /// source's binlog, switch the source's semi-sync flag off and on.
    async fn release_stalled_source(
        &mut self,
        after: &str,
        stalled: Duration,
    ) -> Result<(), Fatal> {
        let (si, source) = self.source().await?;
        let read = async {
            let mut c = self.w.topo.server(si).conn().await?;
            let pos = global_var(&mut c, "gtid_binlog_pos").await?;
            let waiting = status_var(&mut c, "Rpl_semi_sync_master_wait_sessions").await?;
            anyhow::Ok((pos, waiting))
        };
        let (pos, waiting) = tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .map_err(|_| Fatal(format!("{source} does not answer")))?
            .map_err(fatal)?;
        let source_pos = parse_binlog_state(&pos).map_err(fatal)?;
        let mut holder = None;
        for (i, db) in self.w.topo.servers().iter().enumerate() {
            if i == si {
                continue;
            }
            let Ok(Ok(mut c)) = tokio::time::timeout(Duration::from_secs(3), db.conn()).await
            else {
                continue;
            };
            let semi = global_var(&mut c, "rpl_semi_sync_slave_enabled")
                .await
                .unwrap_or_default()
                == "1";
            let io_pos = replica_status(&mut c)
                .await
                .ok()
                .flatten()
                .and_then(|s| s.get("Gtid_IO_Pos").cloned())
                .unwrap_or_default();
            let io = parse_binlog_state(&io_pos).unwrap_or_default();
            let covered = source_pos
                .iter()
                .all(|(d, _, q)| io.iter().any(|(id, _, iq)| id == d && iq >= q));
            if semi && covered {
                holder = Some((db.name().to_owned(), io_pos));
                break;
            }
        }
        let Some((holder, io_pos)) = holder else {
            return Err(Fatal(format!(
                "writes on {source} stalled for {} s after {after} and no semi-sync replica has received its binlog ({pos})",
                stalled.as_secs()
            )));
        };
        self.violation(format!(
            "after {after}: commits on the source {source} waited {} s for a semi-sync ACK ({waiting} session(s) waiting) although the coordinator called the cluster healthy and {holder} (semi-sync replica) had received everything ({io_pos} covers {pos}); released by switching {source}'s semi-sync source flag off and on",
            stalled.as_secs()
        ));
        self.w
            .topo
            .server(si)
            .exec("SET GLOBAL rpl_semi_sync_master_enabled = 0; SET GLOBAL rpl_semi_sync_master_enabled = 1")
            .await
            .map_err(fatal)?;
        Ok(())
    }

    /// Puts back the flush settings of rebuilt servers that have caught up.
    async fn restore_durability(&mut self) {
        for i in std::mem::take(&mut self.relaxed) {
            let db = self.w.topo.server(i);
            if let Err(e) = db
                .exec("SET GLOBAL sync_binlog = 1; SET GLOBAL innodb_flush_log_at_trx_commit = 1")
                .await
            {
                self.violation(format!(
                    "restoring the flush settings of {}: {e:#}",
                    self.w.topo.server(i).name()
                ));
            }
        }
    }

    async fn history_ids(&self) -> HashSet<String> {
        self.w
            .kv()
            .kv_keys(&format!("{PREFIX}history/{}/", self.w.cluster), None)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|k| k.rsplit('/').next().map(str::to_owned))
            .collect()
    }

    /// Every history entry, oldest first; finished ones are cached.
    async fn history(&mut self) -> Vec<HistoryEntry> {
        let prefix = format!("{PREFIX}history/{}/", self.w.cluster);
        let keys = self.w.kv().kv_keys(&prefix, None).await.unwrap_or_default();
        for key in keys {
            let id = key.trim_start_matches(&prefix).to_owned();
            if id == "in-progress" || id == "last-failover" {
                continue;
            }
            if self
                .history_cache
                .get(&id)
                .is_some_and(|e| e.outcome != Outcome::Running)
            {
                continue;
            }
            if let Ok(Some(kv)) = self.w.kv().kv_get(&key).await {
                if let Some(e) = kv
                    .value
                    .as_deref()
                    .and_then(|v| serde_json::from_slice::<HistoryEntry>(v).ok())
                {
                    self.history_cache.insert(id, e);
                }
            }
        }
        let mut out: Vec<HistoryEntry> = self.history_cache.values().cloned().collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Counts the procedures that finished since the last round.
    async fn count_procedures(&mut self, rec: &mut FaultRecord) {
        for e in self.history().await {
            if e.outcome == Outcome::Running || !self.counted.insert(e.id.clone()) {
                continue;
            }
            match (e.kind, e.outcome) {
                (ProcedureKind::Failover, Outcome::Done) => {
                    self.report.failovers += 1;
                    rec.failovers += 1;
                }
                (ProcedureKind::Failover, Outcome::Refused) => {
                    self.report.failovers_refused += 1;
                    rec.refusals += 1;
                }
                (ProcedureKind::Switchover, Outcome::Done) => {
                    self.report.switches += 1;
                    rec.switches += 1;
                }
                (ProcedureKind::Switchover, Outcome::Refused) => {
                    self.report.switches_refused += 1;
                    rec.refusals += 1;
                }
                (ProcedureKind::Switchover, Outcome::Aborted) => {
                    self.report.switches_aborted += 1;
                }
                (ProcedureKind::Rejoin, _) => {}
                (_, Outcome::Failed) => {
                    self.report.procedures_failed += 1;
                    rec.notes
                        .push(format!("{:?} {} FAILED: {}", e.kind, e.id, e.reason));
                }
                _ => {}
            }
            if matches!(e.kind, ProcedureKind::Failover)
                && !rec.label.starts_with("kill9-source")
                && !rec.label.starts_with("sigstop-source")
                && !rec.label.starts_with("partition-source")
            {
                rec.notes.push(format!(
                    "unexpected failover {} ({:?}): {}",
                    e.id, e.outcome, e.reason
                ));
            }
        }
    }

    /// The invariants, after the system is healthy again (or not).
    async fn check(&mut self, rec: &mut FaultRecord, logs: &[WriterLog], healthy: bool) {
        let n = rec.n;
        for log in logs {
            self.acked.extend(log.acked.iter().map(|(id, _)| *id));
            self.report.writes_acked += log.acked.len() as u64;
            self.report.writes_failed_attempts += log.failed;
            rec.worst_gap_ms = rec.worst_gap_ms.max(longest_gap_ms(log));
        }
        let silent = logs.iter().filter(|l| l.acked.is_empty()).count();
        if silent > 0 {
            self.violation(format!(
                "fault #{n}: {silent} writer(s) got no write acknowledged in the whole round"
            ));
        }
        if healthy {
            self.check_data(n).await;
        }
        self.check_monitors(n).await;
    }

    /// Acknowledged writes on the published source; no errant GTIDs; the
    /// published source is the only writable node.
    async fn check_data(&mut self, n: usize) {
        let Some(source) = self.w.published().await else {
            self.violation(format!("fault #{n}: no published source at the check"));
            return;
        };
        let (present, others, s) = {
            let sdb = self.w.topo.server(self.w.index_of(&source));
            let present = async {
                let mut c = sdb.conn().await?;
                let ids: Vec<u64> = c
                    .query(format!("SELECT id FROM {}.writes", writer::SCHEMA))
                    .await?;
                c.disconnect().await.ok();
                anyhow::Ok(ids.into_iter().collect::<HashSet<u64>>())
            }
            .await;
            // Errant GTIDs: read the source last (its state only grows).
            let mut others = Vec::new();
            for db in self.w.topo.servers() {
                if db.name() != source {
                    others.push((db.name().to_owned(), node_state(db).await));
                }
            }
            (present, others, node_state(sdb).await)
        };
        match present {
            Ok(present) => {
                let missing: Vec<u64> = self
                    .acked
                    .iter()
                    .filter(|id| !present.contains(id) && !self.lost.contains(id))
                    .copied()
                    .collect();
                if !missing.is_empty() {
                    self.report.writes_lost += missing.len() as u64;
                    self.lost.extend(missing.iter().copied());
                    self.violation(format!(
                        "fault #{n}: {} acknowledged writes missing on {source}, e.g. {:?} (writer {})",
                        missing.len(),
                        &missing[..missing.len().min(5)],
                        missing[0] >> 40
                    ));
                }
            }
            Err(e) => self.violation(format!("fault #{n}: reading writes on {source}: {e:#}")),
        }
        let s = match s {
            Ok(s) => s,
            Err(e) => {
                self.violation(format!("fault #{n}: reading the source {source}: {e:#}"));
                return;
            }
        };
        if s.read_only {
            self.violation(format!(
                "fault #{n}: the published source {source} is read-only"
            ));
        }
        for (name, st) in others {
            match st {
                Ok(st) => {
                    let extra = errant(&st.binlog_state, &s.binlog_state);
                    if !extra.is_empty() {
                        self.violation(format!(
                            "fault #{n}: errant GTIDs on {name} (not on {source}): {extra:?}"
                        ));
                    }
                    if !st.read_only {
                        self.violation(format!(
                            "fault #{n}: {name} is writable but {source} is the published source"
                        ));
                    }
                }
                Err(e) => self.violation(format!("fault #{n}: reading {name}: {e:#}")),
            }
        }
    }

    /// Findings of the background monitors since the last check.
    async fn check_monitors(&mut self, n: usize) {
        let Some(mon) = &self.mon else { return };
        let now = unix_ms();
        // Writers and probes only report what finished; let the slowest
        // in-flight reading land.
        let until = now.saturating_sub(1000);
        let (routes, per_node, kv) = {
            let d = mon.data.lock().unwrap();
            let routes: Vec<(u64, u32)> = d
                .routes
                .iter()
                .filter(|(t, _)| *t >= self.checked_until_ms && *t < until)
                .copied()
                .collect();
            let per_node: Vec<(String, Vec<(u64, u64)>)> = d
                .samples
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    (
                        self.w.topo.server(i).name().to_owned(),
                        writable_intervals(s),
                    )
                })
                .collect();
            (routes, per_node, d.kv.clone())
        };
        self.report.route_probes += routes.len() as u64;
        let mut stray: BTreeMap<String, (u64, u64, usize)> = BTreeMap::new();
        for (at, id) in &routes {
            let node = self
                .server_names
                .get(id)
                .cloned()
                .unwrap_or_else(|| format!("server id {id}"));
            if !route_allowed(&kv, &node, *at, ROUTE_GRACE_MS) {
                let e = stray.entry(node).or_insert((*at, *at, 0));
                e.1 = *at;
                e.2 += 1;
            }
        }
        for (node, (first, last, count)) in stray {
            let state = state_at(&kv, first.saturating_sub(ROUTE_GRACE_MS))
                .map(KvState::describe)
                .unwrap_or_default();
            self.violation(format!(
                "fault #{n}: {count} connection(s) through HAProxy answered by {node} between {first} and {last} (unix ms) while KV said: {state}"
            ));
        }
        for o in overlaps(&per_node) {
            if o.to_ms < self.checked_until_ms.saturating_sub(5000) {
                continue;
            }
            let key = (o.a.clone(), o.b.clone(), o.from_ms);
            if !self.reported_overlaps.insert(key) {
                continue;
            }
            let revived = |node: &str| {
                self.revived.iter().any(|(r, at)| {
                    r == node && *at <= o.from_ms + 500 && o.to_ms <= at + SELF_FENCE_GRACE_MS
                })
            };
            // A returning old source is exempt only while KV never made it
            // the routable source (published, unfenced, not quarantined)
            // during the overlap; a failover may still be running when it
            // wakes up, with the cluster fenced.
            let routable = |x: &str| route_allowed(&kv, x, o.to_ms, o.to_ms - o.from_ms);
            let published = state_at(&kv, o.from_ms)
                .map(KvState::describe)
                .unwrap_or_default();
            let stale = [&o.a, &o.b]
                .into_iter()
                .find(|x| revived(x) && !routable(x));
            match stale {
                Some(node) => {
                    // The old source came back and stayed writable until
                    // its agent fenced it; see SELF_FENCE_GRACE_MS.
                    let since = self
                        .revived
                        .iter()
                        .filter(|(r, at)| r == node && *at <= o.from_ms + 500)
                        .map(|(_, at)| *at)
                        .max()
                        .unwrap_or(o.from_ms);
                    self.report.longest_self_fence_ms = self
                        .report
                        .longest_self_fence_ms
                        .max(o.to_ms.saturating_sub(since));
                }
                None => self.violation(format!(
                    "fault #{n}: {} and {} both writable from {} to {} ({} ms; KV: {published})",
                    o.a,
                    o.b,
                    o.from_ms,
                    o.to_ms,
                    o.to_ms - o.from_ms,
                )),
            }
        }
        self.checked_until_ms = until;
    }

    /// Everything a reader of a failed run wants first.
    async fn describe(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "published {:?}, quarantined {:?}, coordinator {:?}",
            self.w.published().await,
            self.w.quarantined().await,
            self.w.coordinator().await
        );
        for db in self.w.topo.servers() {
            let _ = writeln!(out, "{}: {:?}", db.name(), node_state(db).await);
        }
        for (i, a) in self.w.agents.iter().enumerate() {
            let _ = writeln!(
                out,
                "--- agent {}:\n{}",
                self.w.agent_opts[i].node,
                a.log_tail(15)
            );
        }
        let _ = writeln!(out, "--- renderer:\n{}", self.w.renderer.log_tail(10));
        out
    }
}

fn fatal(e: impl std::fmt::Display) -> Fatal {
    Fatal(e.to_string())
}

fn signal_pid(pid: u32, sig: Signal) -> anyhow::Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)
        .with_context(|| format!("sending {sig} to {pid}"))
}

/// What the checks read from one server.
#[derive(Debug)]
struct NodeState {
    read_only: bool,
    semi_sync_source: bool,
    semi_sync_clients: u32,
    /// (source host, port, IO running, SQL running).
    replicating: Option<(String, u16, bool, bool)>,
    binlog_state: Vec<(u32, u32, u64)>,
    /// `@@gtid_binlog_pos` (what it wrote) and `@@gtid_current_pos` (what
    /// it holds, applied or written).
    binlog_pos: Vec<(u32, u32, u64)>,
    current_pos: Vec<(u32, u32, u64)>,
}

async fn node_state(db: &MariaDb) -> anyhow::Result<NodeState> {
    let read = async {
        let mut c = tokio::time::timeout(Duration::from_secs(3), db.conn())
            .await
            .context("connect timed out")??;
        let read_only = global_var(&mut c, "read_only").await? == "1";
        let semi_sync_source = global_var(&mut c, "rpl_semi_sync_master_enabled").await? == "1";
        let semi_sync_clients = status_var(&mut c, "Rpl_semi_sync_master_clients")
            .await?
            .parse()
            .unwrap_or(0);
        let replicating = replica_status(&mut c).await?.map(|s| {
            let get = |k: &str| s.get(k).cloned().unwrap_or_default();
            (
                get("Master_Host"),
                get("Master_Port").parse().unwrap_or(0),
                get("Slave_IO_Running") == "Yes",
                get("Slave_SQL_Running") == "Yes",
            )
        });
        let binlog_state = parse_binlog_state(&global_var(&mut c, "gtid_binlog_state").await?)?;
        let binlog_pos = parse_binlog_state(&global_var(&mut c, "gtid_binlog_pos").await?)?;
        let current_pos = parse_binlog_state(&global_var(&mut c, "gtid_current_pos").await?)?;
        c.disconnect().await.ok();
        anyhow::Ok(NodeState {
            read_only,
            semi_sync_source,
            semi_sync_clients,
            replicating,
            binlog_state,
            binlog_pos,
            current_pos,
        })
    };
    tokio::time::timeout(Duration::from_secs(8), read)
        .await
        .context("timed out")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rng_is_reproducible() {
        let a: Vec<u64> = {
            let mut r = Rng::new(1);
            (0..5).map(|_| r.below(1000)).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(1);
            (0..5).map(|_| r.below(1000)).collect()
        };
        assert_eq!(a, b);
        let mut v: Vec<u32> = (0..7).collect();
        Rng::new(3).shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn fault_lists_parse() {
        assert_eq!(FaultKind::parse_list("all").unwrap().len(), 7);
        assert_eq!(
            FaultKind::parse_list("kill9, switch,kill9").unwrap(),
            vec![FaultKind::Kill9, FaultKind::Switch]
        );
        assert!(FaultKind::parse_list("kill9,nope").is_err());
        assert!(FaultKind::parse_list("").is_err());
    }

    #[test]
    fn the_longest_gap_counts_a_stall_at_the_end() {
        let ms = Duration::from_millis;
        let log = WriterLog {
            acked: vec![(1, ms(100)), (2, ms(150))],
            failed: 0,
            elapsed: ms(5000),
            start_unix_ms: 0,
        };
        assert_eq!(longest_gap_ms(&log), 4850);
        let none = WriterLog {
            elapsed: ms(700),
            ..WriterLog::default()
        };
        assert_eq!(longest_gap_ms(&none), 700);
    }

    #[test]
    fn errant_gtids_are_per_domain_and_server() {
        let source = parse_binlog_state("0-1-100,0-2-50").unwrap();
        assert!(errant(&parse_binlog_state("0-1-90,0-2-50").unwrap(), &source).is_empty());
        assert!(errant(&[], &source).is_empty());
        assert_eq!(
            errant(&parse_binlog_state("0-1-101,0-3-1").unwrap(), &source),
            vec![(0, 1, 101), (0, 3, 1)]
        );
        assert!(parse_binlog_state("0-1").is_err());
    }

    fn s(sent: u64, writable: Option<bool>) -> Sample {
        Sample {
            sent_ms: sent,
            recv_ms: sent + 2,
            writable,
        }
    }

    #[test]
    fn a_clean_switch_is_no_overlap_but_two_writable_servers_are() {
        // Old source read-only at ~250, new one writable at ~260.
        let old = vec![
            s(0, Some(true)),
            s(100, Some(true)),
            s(200, Some(true)),
            s(300, Some(false)),
        ];
        let new = vec![
            s(50, Some(false)),
            s(150, Some(false)),
            s(250, Some(false)),
            s(350, Some(true)),
            s(450, Some(true)),
        ];
        let per = vec![
            ("db1".to_owned(), writable_intervals(&old)),
            ("db2".to_owned(), writable_intervals(&new)),
        ];
        assert_eq!(per[0].1, vec![(2, 200)]);
        assert_eq!(per[1].1, vec![(352, 450)]);
        assert!(overlaps(&per).is_empty());
        let both = vec![
            ("db1".to_owned(), vec![(0, 1000)]),
            ("db2".to_owned(), vec![(500, 2000)]),
        ];
        assert_eq!(
            overlaps(&both),
            vec![Overlap {
                a: "db1".into(),
                b: "db2".into(),
                from_ms: 500,
                to_ms: 1000
            }]
        );
        // One reading alone, or readings split by no answer, prove nothing.
        assert!(
            writable_intervals(&[s(0, Some(true)), s(100, None), s(200, Some(true))]).is_empty()
        );
    }

    fn st(seen: u64, prev: u64, published: &str, fenced: bool, q: &[&str]) -> KvState {
        KvState {
            seen_ms: seen,
            prev_poll_ms: prev,
            published: Some(published.to_owned()),
            fenced,
            quarantined: q.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn routes_are_checked_against_kv_with_a_grace() {
        // db1 published; fenced at ~5000; db2 published, db1 quarantined at ~6000.
        let states = vec![
            st(0, 0, "db1", false, &[]),
            st(5000, 4900, "db1", true, &[]),
            st(6000, 5900, "db2", false, &["db1"]),
        ];
        assert!(route_allowed(&states, "db1", 3000, 1000));
        // Within the grace after the fence.
        assert!(route_allowed(&states, "db1", 5500, 1000));
        // Beyond it.
        assert!(!route_allowed(&states, "db1", 6500, 1000));
        assert!(!route_allowed(&states, "db1", 9000, 1000));
        // The new source, even just before the poller saw the change.
        assert!(route_allowed(&states, "db2", 5950, 1000));
        assert!(route_allowed(&states, "db2", 9000, 1000));
        // Never published.
        assert!(!route_allowed(&states, "db3", 9000, 1000));
        // Quarantined while published: never routable.
        let q = vec![st(0, 0, "db1", false, &["db1"])];
        assert!(!route_allowed(&q, "db1", 100, 1000));
    }
}
