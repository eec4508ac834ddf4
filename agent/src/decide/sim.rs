//! A seeded simulator: the real decision core ([`super::decide`]) driving an
//! in-memory cluster — N servers with binlogs, relay logs, IO and SQL
//! threads, semi-sync flags and ACKs, `read_only`, clients whose commits
//! are acknowledged or not — and an in-memory KV store, under random
//! faults: crash, hang, a server cut off from everyone, lost KV writes, a
//! change of coordinator between any two steps, operator requests.
//!
//! After every event it checks the lossless claims:
//! - no acknowledged commit is missing from the published source once it
//!   is open for writes;
//! - never two servers that can acknowledge a commit (writable, and either
//!   asynchronous or with an ACKing replica attached);
//! - a quarantined server is never published.
//!
//! Everything is deterministic (no wall clock, no threads, no real
//! sleeps): a failing seed prints its trace and replays exactly with
//! `SIM_SEED=<seed> cargo test -p successover-agent sim::replay`.
//!
//! The executor here mirrors `crate::procedure` step for step, on the
//! model: what each step does to the servers and to KV, and where the
//! working history entry is stored.

use std::collections::{BTreeMap, BTreeSet};

use successover_common::consul::KvPair;
use successover_common::procedure::{HistoryEntry, Step as Recorded};

use super::member::{self, OwnState};
use super::{
    decide, Action, ClusterView, HostPort, Input, Intent, KvInputs, Memory, NodeView, ReplicaView,
    Running, SemiSyncView, Settings, Step,
};
use crate::config::Detection;
use crate::mysql::{GtidPos, GtidState, MariaDbGtid};

/// xorshift64*: small, fast, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// True with probability `pct` percent.
    fn pct(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Up,
    /// Stopped (SIGSTOP, a hung host): answers nothing, keeps its state.
    Hung,
    Down,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Txn {
    id: u64,
    server: u32,
    seq: u64,
}

#[derive(Clone, Debug)]
struct Server {
    name: String,
    port: u16,
    server_id: u32,
    life: Life,
    /// Cut off the network: reaches no peer, no proxy, no Consul.
    cut: bool,
    /// Cut off from the coordinator and Consul only: it still replicates
    /// (and ACKs), but nobody can observe or change it.
    hidden: bool,
    /// Cut off from the other database servers only: no replication to
    /// or from it, while the coordinator still sees it.
    isolated: bool,
    read_only: bool,
    /// The binlog (every server logs what it applies).
    log: Vec<Txn>,
    /// The ids in `log`, for the checks.
    ids: std::collections::HashSet<u64>,
    /// Received, not yet applied.
    relay: Vec<Txn>,
    source: Option<usize>,
    io_on: bool,
    io_error: bool,
    sql_on: bool,
    semi_source: bool,
    semi_replica: bool,
    /// The replica flag as it was when the IO thread connected.
    semi_active: bool,
    heartbeats: u64,
    /// Client commits in the binlog waiting for an ACK.
    pending: Vec<u64>,
    no_tx: u64,
    /// When the server started, in seconds: each restart moves it on.
    started_s: u64,
}

impl Server {
    fn up(&self) -> bool {
        self.life == Life::Up && !self.cut
    }
    /// Observable and reachable by the coordinator.
    fn visible(&self) -> bool {
        self.up() && !self.hidden
    }
    fn received_last(&self) -> Option<&Txn> {
        self.relay.last().or(self.log.last())
    }
    fn has(&self, id: u64) -> bool {
        self.ids.contains(&id) || self.relay.iter().any(|t| t.id == id)
    }
    fn addr(&self) -> HostPort {
        HostPort::reported("127.0.0.1", self.port)
    }
}

fn pos_of(t: Option<&Txn>) -> GtidState {
    let mut p = GtidPos::new();
    if let Some(t) = t {
        p.insert(MariaDbGtid {
            domain: 0,
            server_id: t.server,
            seq: t.seq,
        });
    }
    GtidState::MariaDb(p)
}

#[derive(Default)]
struct Kv {
    master: Option<usize>,
    fence: Option<String>,
    quarantine: BTreeSet<usize>,
    in_progress: Option<String>,
    history: BTreeMap<String, HistoryEntry>,
    switchover: Option<KvPair>,
    rejoins: Vec<KvPair>,
    last_failover_ms: Option<u64>,
    ack_floors: BTreeMap<String, Option<GtidState>>,
    /// `semi-sync/c1`'s `started`.
    acker_started: BTreeMap<String, u64>,
    /// `drain/c1/<node>`: an operator moving the ACK role off a node.
    drained: BTreeSet<String>,
    index: u64,
}

impl Kv {
    fn pair(&mut self, key: String, value: &str) -> KvPair {
        self.index += 1;
        KvPair {
            key,
            value: Some(value.as_bytes().to_vec()),
            flags: 0,
            session: None,
            create_index: self.index,
            modify_index: self.index,
            lock_index: 0,
        }
    }
}

/// A bug planted in a copy of a rule, to show the simulator catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plant {
    None,
    /// Candidate choice that ignores which replica had the semi-sync flag.
    AnyCandidate,
    /// Promotion without applying the relay log first (rule 4 dropped).
    SkipRelayApply,
}

struct Sim {
    rng: Rng,
    servers: Vec<Server>,
    kv: Kv,
    next_txn: u64,
    acked: Vec<u64>,
    /// The published source, whether it was open, and how many
    /// acknowledged commits were already found on it at the last check.
    checked: (Option<usize>, bool, usize),
    now_ms: u64,
    memory: Memory,
    running: Option<Running>,
    /// The switchover's kill loop: clients on this server are cut.
    killing: Option<usize>,
    trace: Vec<String>,
    plant: Plant,
    /// Per cent chance that a guarded KV write is lost.
    kv_loss: u64,
    steps: u64,
}

const TICK_MS: u64 = 300;

impl Sim {
    fn new(seed: u64, plant: Plant) -> Sim {
        let mut servers = Vec::new();
        for i in 0..3u16 {
            servers.push(Server {
                name: format!("db{}", i + 1),
                port: 3301 + i,
                server_id: u32::from(i) + 1,
                life: Life::Up,
                cut: false,
                hidden: false,
                isolated: false,
                read_only: i != 0,
                log: Vec::new(),
                ids: Default::default(),
                relay: Vec::new(),
                source: (i != 0).then_some(0),
                io_on: i != 0,
                io_error: false,
                sql_on: i != 0,
                semi_source: i == 0,
                semi_replica: i == 1,
                semi_active: i == 1,
                heartbeats: 0,
                pending: Vec::new(),
                no_tx: 0,
                started_s: 1_764_000_000,
            });
        }
        let mut rng = Rng::new(seed);
        let kv_loss = rng.below(4);
        Sim {
            rng,
            servers,
            // As a coordinator that granted db2 its flag left the set.
            kv: Kv {
                master: Some(0),
                ack_floors: BTreeMap::from([("db2".to_owned(), None)]),
                ..Kv::default()
            },
            next_txn: 1,
            acked: Vec::new(),
            checked: (None, false, 0),
            now_ms: 0,
            memory: Memory::default(),
            running: None,
            killing: None,
            trace: Vec::new(),
            plant,
            kv_loss,
            steps: 0,
        }
    }

    fn log(&mut self, line: String) {
        self.trace.push(format!("{:>6} ms  {line}", self.now_ms));
    }

    fn idx(&self, name: &str) -> Option<usize> {
        self.servers.iter().position(|s| s.name == name)
    }

    fn idx_at(&self, addr: &HostPort) -> Option<usize> {
        self.servers.iter().position(|s| s.addr().same(addr))
    }

    // — the world moving on its own —

    /// A client commit, through the proxy (the published, unfenced,
    /// unquarantined source) or straight to a server.
    fn client_commit(&mut self) {
        let target = if self.rng.pct(85) {
            match self.kv.master {
                Some(m) if self.kv.fence.is_none() && !self.kv.quarantine.contains(&m) => m,
                _ => return,
            }
        } else {
            self.rng.below(self.servers.len() as u64) as usize
        };
        self.commit_on(target, true);
    }

    fn commit_on(&mut self, target: usize, client: bool) {
        if Some(target) == self.killing && client {
            return;
        }
        let s = &self.servers[target];
        if !s.up() || (s.read_only && client) {
            return;
        }
        let seq = s.log.iter().map(|t| t.seq).max().unwrap_or(0) + 1;
        let txn = Txn {
            id: self.next_txn,
            server: s.server_id,
            seq,
        };
        self.next_txn += 1;
        let id = txn.id;
        let s = &mut self.servers[target];
        s.ids.insert(txn.id);
        s.log.push(txn);
        if !client {
            return;
        }
        if s.semi_source {
            s.pending.push(id);
        } else {
            // Acknowledged without any replica holding it: what the
            // lossless rules exist to prevent, counted as no_tx.
            s.no_tx += 1;
            self.acked.push(id);
        }
    }

    fn replicate(&mut self) {
        for r in 0..self.servers.len() {
            let Some(src) = self.servers[r].source else {
                continue;
            };
            let (rs, ss) = (&self.servers[r], &self.servers[src]);
            let linked = rs.life == Life::Up
                && !rs.cut
                && !ss.cut
                && !rs.isolated
                && !ss.isolated
                && ss.life == Life::Up
                && rs.io_on
                && !rs.io_error;
            if linked {
                let start = match rs.received_last() {
                    None => Some(0),
                    Some(last) => ss.log.iter().position(|t| t.id == last.id).map(|j| j + 1),
                };
                match start {
                    // The source does not have the replica's position: the
                    // real server refuses it (error 1236).
                    None => self.servers[r].io_error = true,
                    Some(j) => {
                        let n = 1 + self.rng.below(4) as usize;
                        let batch: Vec<Txn> = ss.log.iter().skip(j).take(n).cloned().collect();
                        let rs = &mut self.servers[r];
                        rs.relay.extend(batch);
                        rs.heartbeats += 1;
                        if rs.semi_active {
                            self.ack(src, r);
                        }
                    }
                }
            }
            let rs = &mut self.servers[r];
            if rs.life == Life::Up && rs.sql_on && !rs.relay.is_empty() {
                let n = (1 + self.rng.below(3) as usize).min(rs.relay.len());
                let applied: Vec<Txn> = rs.relay.drain(..n).collect();
                rs.ids.extend(applied.iter().map(|t| t.id));
                rs.log.extend(applied);
            }
        }
    }

    /// AFTER_SYNC: a pending commit is acknowledged once an ACKing replica
    /// received it.
    fn ack(&mut self, src: usize, replica: usize) {
        let held: Vec<u64> = self.servers[src]
            .pending
            .iter()
            .copied()
            .filter(|id| self.servers[replica].has(*id))
            .collect();
        if held.is_empty() {
            return;
        }
        self.servers[src].pending.retain(|id| !held.contains(id));
        self.acked.extend(held);
    }

    /// Client connections on a server are cut: their pending commits are
    /// never acknowledged.
    fn kill_clients(&mut self, i: usize) {
        self.servers[i].pending.clear();
    }

    /// Each live agent keeps its own server read-only when KV says so
    /// (rule 8).
    fn agents_self_fence(&mut self) {
        for i in 0..self.servers.len() {
            let s = &self.servers[i];
            if !s.visible() {
                continue;
            }
            let master = self.kv.master.map(|m| self.servers[m].addr());
            let own = OwnState {
                fenced: self.kv.fence.is_some(),
                quarantined: self.kv.quarantine.contains(&i),
                published: master.as_ref(),
            };
            if let Some(why) = member::self_fence(s.read_only, &s.addr(), &own) {
                self.servers[i].read_only = true;
                self.kill_clients(i);
                let name = self.servers[i].name.clone();
                self.log(format!("{name} self-fenced: {why}"));
            }
        }
    }

    fn fault(&mut self) {
        let n = self.servers.len();
        let i = self.rng.below(n as u64) as usize;
        let name = self.servers[i].name.clone();
        let down = self
            .servers
            .iter()
            .filter(|s| s.life != Life::Up || s.cut || s.hidden || s.isolated)
            .count();
        match self.rng.below(12) {
            0 | 1 if down < 2 && self.servers[i].life == Life::Up => {
                let s = &mut self.servers[i];
                s.life = Life::Down;
                s.pending.clear();
                self.log(format!("FAULT crash {name}"));
            }
            2 if down < 2 && self.servers[i].life == Life::Up => {
                self.servers[i].life = Life::Hung;
                self.log(format!("FAULT hang {name}"));
            }
            3 if down < 2 && !self.servers[i].cut => {
                self.servers[i].cut = true;
                self.log(format!("FAULT cut {name} off the network"));
            }
            4 => self.heal(i),
            11 => {
                if self.kv.drained.remove(&name) {
                    self.log(format!("REQUEST undrain {name}"));
                } else {
                    self.kv.drained.insert(name.clone());
                    self.log(format!("REQUEST drain {name}"));
                }
            }
            10 if down < 2 && !self.servers[i].isolated => {
                self.servers[i].isolated = true;
                self.log(format!("FAULT cut {name} off from the other servers"));
            }
            8 if down < 2 && !self.servers[i].hidden => {
                self.servers[i].hidden = true;
                self.log(format!(
                    "FAULT cut {name} off from the coordinator and Consul"
                ));
            }
            5 => {
                self.memory = Memory::default();
                self.running = None;
                self.killing = None;
                self.log("FAULT coordinator replaced".into());
            }
            6 if self.kv.switchover.is_none() => {
                let target = if self.rng.pct(50) {
                    name.clone()
                } else {
                    self.servers[self.rng.below(n as u64) as usize].name.clone()
                };
                let pair = self.kv.pair("mysql/switchover/c1".into(), &target);
                self.kv.switchover = Some(pair);
                self.log(format!("REQUEST switchover to {target}"));
            }
            7 | 9 if self.kv.quarantine.contains(&i) && self.kv.rejoins.is_empty() => {
                let pair = self.kv.pair(format!("mysql/rejoin/c1/{name}"), "{}");
                self.kv.rejoins.push(pair);
                self.log(format!("REQUEST rejoin {name}"));
            }
            _ => {}
        }
    }

    fn heal(&mut self, i: usize) {
        let name = self.servers[i].name.clone();
        let s = &mut self.servers[i];
        match s.life {
            Life::Down => {
                // A restart: read_only and both semi-sync flags off at
                // boot, replication threads started (the settings the
                // Ansible role ships).
                s.life = Life::Up;
                s.read_only = true;
                s.semi_source = false;
                s.semi_replica = false;
                s.semi_active = false;
                // A GTID replica's relay log is purged when its threads
                // start: what it received and had not applied is gone,
                // acknowledged or not.
                s.relay.clear();
                s.started_s += 1_000;
                s.io_on = s.source.is_some();
                s.sql_on = s.source.is_some();
                self.log(format!("HEAL restart {name}"));
            }
            Life::Hung => {
                s.life = Life::Up;
                // Its IO thread reconnects if its connection was ended.
                s.semi_active = s.semi_replica;
                self.log(format!("HEAL resume {name}"));
            }
            Life::Up if s.cut || s.hidden || s.isolated => {
                s.cut = false;
                s.hidden = false;
                s.isolated = false;
                self.log(format!("HEAL reconnect {name}"));
            }
            Life::Up => {}
        }
    }

    // — the coordinator —

    fn view(&self) -> ClusterView {
        let nodes = self
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let quarantined = self.kv.quarantine.contains(&i);
                if !s.visible() {
                    return NodeView::unreachable(&s.name, s.addr(), quarantined);
                }
                let replica = s.source.map(|src| {
                    let ss = &self.servers[src];
                    let io_stopped = !s.io_on || s.io_error;
                    ReplicaView {
                        source: ss.addr(),
                        // A hung or cut-off source leaves the IO thread
                        // "running"; a dead one (or a broken link, once
                        // the connection dropped) leaves it connecting.
                        io_running: !io_stopped
                            && ss.life != Life::Down
                            && !s.isolated
                            && !ss.isolated,
                        io_stopped,
                        sql_running: s.sql_on,
                        received: pos_of(s.received_last()),
                        seconds_behind_source: Some(s.relay.len() as u64),
                        heartbeats: Some(s.heartbeats),
                        read_position: None,
                        last_io_errno: if s.io_error { 1236 } else { 0 },
                        last_sql_errno: 0,
                        observed_ms: None,
                    }
                });
                let clients = self.semi_clients(i);
                let mut per_server: BTreeMap<u32, u64> = BTreeMap::new();
                for t in &s.log {
                    let e = per_server.entry(t.server).or_default();
                    *e = (*e).max(t.seq);
                }
                NodeView {
                    name: s.name.clone(),
                    addr: s.addr(),
                    reachable: true,
                    read_only: s.read_only,
                    replica,
                    semi_sync_source: s.semi_source,
                    semi_sync_replica: s.semi_replica,
                    semi_sync_replica_active: s.semi_active && s.io_on && !s.io_error,
                    semi: SemiSyncView {
                        source_status_on: s.semi_source,
                        clients,
                        wait_sessions: s.pending.len() as u64,
                        yes_tx: 0,
                        no_tx: s.no_tx,
                        // The simulated source acknowledges without an ACK
                        // only the way a real one does: switched off.
                        no_times: s.no_tx,
                        settings_drift: false,
                    },
                    gtid_executed: Some(pos_of(s.log.last())),
                    binlog_state: Some(
                        per_server.into_iter().map(|(srv, q)| (0, srv, q)).collect(),
                    ),
                    server_uuid: None,
                    started_s: Some(s.started_s),
                    quarantined,
                }
            })
            .collect();
        ClusterView {
            cluster: "c1".into(),
            nodes,
            published: self.kv.master.map(|m| self.servers[m].addr()),
            fenced: self.kv.fence.is_some(),
            procedure_running: self.kv.in_progress.is_some(),
            maintenance: false,
            semi_sync_replicas: 1,
            drained: self.kv.drained.clone(),
        }
    }

    fn kv_inputs(&self) -> KvInputs {
        KvInputs {
            fence: self.kv.fence.clone(),
            in_progress: self
                .kv
                .in_progress
                .as_ref()
                .map(|id| (id.clone(), self.kv.history.get(id).cloned())),
            fence_entry: self
                .kv
                .fence
                .as_deref()
                .and_then(|f| f.strip_prefix("failover "))
                .and_then(|id| self.kv.history.get(id).cloned()),
            switchover: self.kv.switchover.clone(),
            rejoins: self.kv.rejoins.clone(),
            last_failover_ms: self.kv.last_failover_ms,
            last_failover_held: false,
            auto_failover: true,
            observe_failover: false,
            // Short, so a run sees several failovers.
            failover_cooldown_ms: 2_000,
            max_lag_seconds: 10,
            agent_up: self
                .servers
                .iter()
                .filter(|s| s.visible())
                .map(|s| (s.name.clone(), true))
                .collect(),
            published_invalid: None,
            ack_floors: self.kv.ack_floors.clone(),
            // Written with the floors, for members only.
            acker_started: self
                .kv
                .acker_started
                .iter()
                .filter(|(n, _)| self.kv.ack_floors.contains_key(*n))
                .map(|(n, s)| (n.clone(), *s))
                .collect(),
        }
    }

    /// One coordinator cycle: decide and perform until the decision holds
    /// or a step fails, with faults possible between any two steps.
    fn coordinate(&mut self) {
        let mut last_failed: Option<String> = None;
        for _ in 0..64 {
            let view = self.view();
            let kv = self.kv_inputs();
            let input = Input {
                view: &view,
                kv: &kv,
                running: self.running.as_ref(),
                probe_failures: 0,
                probe_stall: None,
                settings: Settings {
                    detection: Detection::ProbeAndReplicas,
                    confirmations: 3,
                    tick_ms: TICK_MS,
                    probe_ms: TICK_MS,
                },
                now_ms: self.now_ms,
                coordinator: "sim",
                wall_ms: 1_700_000_000_000 + self.now_ms,
            };
            let d = decide(&input, &self.memory);
            self.memory = d.memory;
            let step = match d.intent {
                Intent::Hold => return,
                Intent::Enforce(actions) => {
                    self.log(format!("enforce: {}", d.reason));
                    for a in &actions {
                        self.enforce(a);
                    }
                    return;
                }
                Intent::RecordRefusal { entry } => {
                    self.log(format!("refusal: {}", entry.reason));
                    return;
                }
                Intent::ReleaseStalled { source, acker, .. } => {
                    self.release(&source, &acker);
                    return;
                }
                Intent::Step(step) => self.plant(step, &view),
            };
            let name = step.name();
            if last_failed.as_deref() == Some(name.as_str()) {
                self.save();
                return;
            }
            // Faults land between any two steps.
            if self.rng.pct(6) {
                self.fault();
                self.check();
            }
            self.log(format!("step {name}: {}", d.reason));
            let r = self.perform(&step);
            self.steps += 1;
            self.check();
            match r {
                Ok(true) => return,
                Ok(false) => last_failed = None,
                Err(e) => {
                    self.log(format!("step {name} failed: {e}"));
                    last_failed = Some(name);
                }
            }
        }
    }

    /// The planted bug, if any, rewrites the decided step.
    fn plant(&self, step: Step, view: &ClusterView) -> Step {
        match (self.plant, step) {
            (Plant::AnyCandidate, Step::RecordCandidate { mut evidence, to }) => {
                let Some(first) = view
                    .nodes
                    .iter()
                    .find(|n| n.reachable && n.replica.is_some() && !n.quarantined)
                else {
                    return Step::RecordCandidate { to, evidence };
                };
                // The evidence a rule like that would write: its own
                // choice's received position.
                if let Some(r) = &first.replica {
                    evidence.insert(
                        "candidate_received_gtid".into(),
                        r.received.to_string().into(),
                    );
                }
                Step::RecordCandidate {
                    to: first.name.clone(),
                    evidence,
                }
            }
            (Plant::SkipRelayApply, Step::ApplyRelayLog { node, .. }) => Step::Promote { node },
            (_, step) => step,
        }
    }

    fn kv_write_lost(&mut self) -> bool {
        let lost = self.rng.pct(self.kv_loss);
        if lost {
            self.log("KV write lost".into());
        }
        lost
    }

    fn entry(&mut self) -> &mut HistoryEntry {
        &mut self.running.as_mut().expect("a procedure runs").entry
    }

    fn record(&mut self, name: &str, r: &Result<(), String>) {
        self.entry().steps.push(Recorded {
            name: name.to_owned(),
            started_ms: 0,
            duration_ms: 0,
            ok: r.is_ok(),
            detail: r.clone().err().unwrap_or_default(),
        });
    }

    fn save(&mut self) {
        if self.running.is_some() && !self.kv_write_lost() {
            let e = self.entry().clone();
            self.kv.history.insert(e.id.clone(), e);
        }
    }

    fn reachable(&self, name: &str) -> Result<usize, String> {
        let i = self.idx(name).ok_or(format!("no node {name}"))?;
        if self.servers[i].visible() {
            Ok(i)
        } else {
            Err(format!("{name} does not answer"))
        }
    }

    fn repoint(
        &mut self,
        node: &str,
        source: &HostPort,
        semi: bool,
        was_source: bool,
    ) -> Result<(), String> {
        let i = self.reachable(node)?;
        let src = self.idx_at(source).ok_or("unknown source")?;
        let s = &mut self.servers[i];
        // CHANGE MASTER with GTID: the relay log is discarded and the IO
        // thread starts again from what the server has applied.
        s.relay.clear();
        s.source = Some(src);
        s.io_on = true;
        s.io_error = false;
        s.sql_on = true;
        if was_source {
            s.semi_source = false;
        }
        s.semi_replica = semi;
        s.semi_active = semi;
        Ok(())
    }

    fn raise_floor(&mut self, node: &str, floor: &GtidState) {
        let raised = match self.kv.ack_floors.get(node) {
            Some(Some(old)) => old.union(floor).unwrap_or_else(|_| floor.clone()),
            _ => floor.clone(),
        };
        self.kv.ack_floors.insert(node.to_owned(), Some(raised));
    }

    fn lift_own_fence(&mut self, id: &str) {
        if self.kv.fence.as_deref().is_some_and(|f| f.contains(id)) {
            self.kv.fence = None;
        }
    }

    /// Returns whether the step ended the procedure (or the cycle).
    fn perform(&mut self, step: &Step) -> Result<bool, String> {
        if self.running.is_none() {
            if let Some(id) = self.kv.in_progress.clone() {
                match self.kv.history.get(&id) {
                    Some(e) => {
                        self.running = Some(Running {
                            entry: e.clone(),
                            plan: None,
                        })
                    }
                    None if !matches!(step, Step::Finish { .. }) => {
                        return Err("no procedure to continue".into())
                    }
                    None => {}
                }
            }
        }
        let name = step.name();
        match step {
            Step::StartFailover { entry } => {
                if self.kv_write_lost() {
                    return Err("failover not started".into());
                }
                let mut e = (**entry).clone();
                e.steps.push(Recorded {
                    name: "fence".into(),
                    started_ms: 0,
                    duration_ms: 0,
                    ok: true,
                    detail: String::new(),
                });
                self.kv.fence = Some(format!("failover {}", e.id));
                self.kv.in_progress = Some(e.id.clone());
                self.kv.history.insert(e.id.clone(), e.clone());
                self.running = Some(Running {
                    entry: e,
                    plan: None,
                });
                Ok(false)
            }
            Step::ReopenFailover { entry } => {
                if self.kv_write_lost() {
                    return Err("refused failover not taken up".into());
                }
                let mut e = (**entry).clone();
                e.outcome = successover_common::procedure::Outcome::Running;
                self.kv.in_progress = Some(e.id.clone());
                self.kv.history.insert(e.id.clone(), e.clone());
                self.running = Some(Running {
                    entry: e,
                    plan: None,
                });
                Ok(false)
            }
            Step::StartSwitch {
                request,
                entry,
                plan,
            } => {
                if self.kv_write_lost() {
                    return Err("switchover not started".into());
                }
                if self.kv.switchover.as_ref().map(|p| p.modify_index) != Some(request.modify_index)
                {
                    return Err("request changed".into());
                }
                self.kv.switchover = None;
                self.kv.history.insert(entry.id.clone(), (**entry).clone());
                match plan {
                    None => Ok(true),
                    Some(plan) => {
                        self.kv.in_progress = Some(entry.id.clone());
                        self.running = Some(Running {
                            entry: (**entry).clone(),
                            plan: Some((**plan).clone()),
                        });
                        Ok(false)
                    }
                }
            }
            Step::Rejoin {
                request,
                node,
                source,
                ..
            } => {
                self.kv.rejoins.retain(|r| r.key != request.key);
                let i = self.reachable(node)?;
                let src = self.reachable(source)?;
                // The servers' verdict: the node's binlog must be a prefix
                // of the source's.
                let prefix = self.servers[i]
                    .log
                    .iter()
                    .zip(&self.servers[src].log)
                    .all(|(a, b)| a == b)
                    && self.servers[i].log.len() <= self.servers[src].log.len();
                if prefix {
                    let addr = self.servers[src].addr();
                    self.repoint(node, &addr, false, true)?;
                    self.kv.quarantine.remove(&i);
                    self.log(format!("{node} rejoined"));
                }
                Ok(true)
            }
            Step::RefuseRejoin { request, .. } => {
                self.kv.rejoins.retain(|r| r.key != request.key);
                Ok(true)
            }
            Step::Finish {
                outcome,
                reason,
                counted,
                restart_io,
                lift_fence,
            } => {
                for n in restart_io {
                    if let Ok(i) = self.reachable(n) {
                        self.servers[i].io_on = true;
                    }
                }
                if self.kv_write_lost() {
                    return Err("outcome not recorded".into());
                }
                let id = self.running.as_ref().map(|r| r.entry.id.clone());
                if let Some(id) = &id {
                    if *lift_fence {
                        self.lift_own_fence(id);
                    }
                    let e = self.entry();
                    e.outcome = *outcome;
                    e.reason = reason.clone();
                    let e = e.clone();
                    self.kv.history.insert(id.clone(), e);
                }
                if *counted {
                    self.kv.last_failover_ms = Some(1_700_000_000_000 + self.now_ms);
                }
                self.kv.in_progress = None;
                self.running = None;
                self.killing = None;
                self.log(format!("finished {}: {reason}", outcome.as_str()));
                Ok(true)
            }
            _ => {
                let r = self.perform_within(step);
                if self.running.is_some() {
                    self.record(&name, &r);
                }
                if matches!(step, Step::RecordCandidate { .. }) {
                    self.save();
                }
                r.map(|()| false)
            }
        }
    }

    fn perform_within(&mut self, step: &Step) -> Result<(), String> {
        match step {
            Step::StopIoThreads { nodes, old_source } => {
                if let Some(i) = old_source.as_ref().and_then(|a| self.idx_at(a)) {
                    if self.servers[i].visible() {
                        self.kill_clients(i);
                        self.servers[i].read_only = true;
                    }
                }
                let mut problems = Vec::new();
                for n in nodes {
                    match self.reachable(n) {
                        Ok(i) => self.servers[i].io_on = false,
                        Err(e) => problems.push(e),
                    }
                }
                if problems.is_empty() {
                    Ok(())
                } else {
                    Err(problems.join("; "))
                }
            }
            Step::RecordCandidate { to, evidence } => {
                let e = self.entry();
                e.to = Some(to.clone());
                e.evidence.extend(evidence.clone());
                Ok(())
            }
            Step::ApplyRelayLog { node, .. } => {
                let i = self.reachable(node)?;
                let s = &mut self.servers[i];
                let relay: Vec<Txn> = s.relay.drain(..).collect();
                s.ids.extend(relay.iter().map(|t| t.id));
                s.log.extend(relay);
                Ok(())
            }
            Step::Promote { node } | Step::PrepareTarget { node, .. } => {
                let keep = matches!(step, Step::PrepareTarget { pair: true, .. });
                let i = self.reachable(node)?;
                let s = &mut self.servers[i];
                if !keep {
                    // RESET SLAVE ALL: whatever was not applied is gone.
                    s.relay.clear();
                    s.source = None;
                    s.io_on = false;
                    s.sql_on = false;
                }
                s.semi_replica = false;
                s.semi_active = false;
                s.semi_source = true;
                Ok(())
            }
            Step::Repoint {
                node,
                source,
                semi_sync,
                was_source,
            } => self.repoint(node, source, *semi_sync, *was_source),
            Step::Publish {
                node,
                quarantine,
                acker,
                ..
            } => {
                if self.kv_write_lost() {
                    return Err("publish rolled back".into());
                }
                if let Some((n, f)) = acker {
                    self.raise_floor(n, f);
                }
                let i = self.idx(node).ok_or("unknown node")?;
                let id = self.entry().id.clone();
                self.kv.master = Some(i);
                self.lift_own_fence(&id);
                if let Some((from, _)) = quarantine {
                    if let Some(f) = self.idx(from) {
                        self.kv.quarantine.insert(f);
                    }
                }
                let e = self.entry().clone();
                self.kv.history.insert(id, e);
                // The txn was applied, but its answer was lost (a Consul
                // leader lost mid-request): the executor re-reads the key.
                if self.rng.pct(self.kv_loss) {
                    self.log("publish applied, answer lost".into());
                    if self.kv.master != Some(i) {
                        return Err("publish answer lost".into());
                    }
                }
                Ok(())
            }
            Step::MakeWritable { node, .. } => {
                let i = self.reachable(node)?;
                self.servers[i].semi_source = true;
                self.servers[i].read_only = false;
                Ok(())
            }
            Step::LiftFence => {
                if self.kv_write_lost() {
                    return Err("unfence rolled back".into());
                }
                let id = self.entry().id.clone();
                self.lift_own_fence(&id);
                Ok(())
            }
            Step::ReadOnlyOldSource { node } => {
                let i = self.idx(node).ok_or("unknown node")?;
                self.killing = Some(i);
                let i = self.reachable(node)?;
                self.kill_clients(i);
                self.servers[i].read_only = true;
                Ok(())
            }
            Step::Fence => {
                if self.kv_write_lost() {
                    return Err("fence rolled back".into());
                }
                let e = self.entry().clone();
                self.kv.fence = Some(format!("{} {}", e.kind.as_str(), e.id));
                self.kv.history.insert(e.id.clone(), e);
                Ok(())
            }
            Step::Converge { from, to } => {
                // Replication runs while the old source is still open; the
                // real step changes nothing either.
                self.reachable(from)?;
                self.reachable(to)?;
                self.replicate();
                Ok(())
            }
            Step::CatchUp {
                from,
                to,
                skip_wait,
            } => {
                let f = self.reachable(from)?;
                let t = self.reachable(to)?;
                let target = self.servers[f].log.last().map(|t| t.id);
                if !skip_wait {
                    // The wait: replication runs until the target applied
                    // the old source's last transaction, or times out.
                    for _ in 0..30 {
                        if target.is_none_or(|id| self.servers[t].log.iter().any(|x| x.id == id)) {
                            break;
                        }
                        self.replicate();
                    }
                    if !target.is_none_or(|id| self.servers[t].log.iter().any(|x| x.id == id)) {
                        return Err(format!("{to} did not catch up"));
                    }
                }
                Ok(())
            }
            Step::RollBack {
                plan,
                target_touched,
                ..
            } => {
                let to = self.reachable(&plan.to)?;
                self.servers[to].read_only = true;
                let mut problems = Vec::new();
                if *target_touched {
                    for name in [plan.to.clone(), plan.semi_sync.clone()] {
                        if name != plan.from {
                            let was_target = name == plan.to;
                            if let Err(e) = self.repoint(&name, &plan.from_addr, false, was_target)
                            {
                                problems.push(e);
                            }
                        }
                    }
                }
                // As the real executor: the old source is made a source
                // again whatever the plan says (a recovered plan does not
                // know it was repointed), and opens only as one.
                let restored = match self.reachable(&plan.from) {
                    Ok(f) => {
                        let s = &mut self.servers[f];
                        if s.source.is_some() {
                            s.relay.clear();
                            s.source = None;
                            s.io_on = false;
                        }
                        s.semi_replica = false;
                        s.semi_active = false;
                        s.semi_source = true;
                        Some(f)
                    }
                    Err(e) => {
                        problems.push(e);
                        None
                    }
                };
                if self.kv_write_lost() {
                    problems.push("unfence rolled back".into());
                } else {
                    let id = self.entry().id.clone();
                    self.lift_own_fence(&id);
                }
                if let Some(f) = restored {
                    self.servers[f].read_only = false;
                }
                self.killing = None;
                if problems.is_empty() {
                    Ok(())
                } else {
                    Err(problems.join("; "))
                }
            }
            _ => unreachable!("performed by perform()"),
        }
    }

    fn enforce(&mut self, action: &Action) {
        let by = |s: &Sim, n: &str| s.idx(n).filter(|i| s.servers[*i].visible());
        match action {
            Action::Publish { node, .. } => {
                if self.kv.master.is_none() && !self.kv_write_lost() {
                    self.kv.master = self.idx(node);
                }
            }
            Action::SetReadOnly { node, read_only } => {
                if let Some(i) = by(self, node) {
                    self.servers[i].read_only = *read_only;
                }
            }
            Action::KillClients { node } => {
                if let Some(i) = by(self, node) {
                    self.kill_clients(i);
                }
            }
            Action::SetSemiSyncSource { node, enabled } => {
                if let Some(i) = by(self, node) {
                    let s = &mut self.servers[i];
                    s.semi_source = *enabled;
                    if !enabled {
                        // Turning the flag off releases the waiting
                        // commits without an ACK.
                        s.no_tx += s.pending.len() as u64;
                        let released: Vec<u64> = s.pending.drain(..).collect();
                        self.acked.extend(released);
                    }
                }
            }
            Action::SetSemiSyncReplica {
                node,
                enabled,
                floor,
            } => {
                if let Some(f) = floor {
                    if self.kv_write_lost() {
                        return;
                    }
                    self.raise_floor(node, f);
                }
                if let Some(i) = by(self, node) {
                    // #12 item 1: a flag granted while the source already
                    // counts a client for its one slot (one the coordinator
                    // may not see) makes a second server whose ACK can
                    // release a commit.
                    let src = self.servers[i].source;
                    if let Some(src) = src.filter(|_| *enabled) {
                        let unseen = self.semi_clients_out_of_sight(src);
                        if unseen >= 1 {
                            self.violation(format!(
                                "{node} got the semi-sync flag while {} counts {unseen} semi-sync client(s) out of the coordinator's sight",
                                self.servers[src].name
                            ));
                        }
                    }
                    // A drain moves the role make before break: the
                    // drained ACKer's flag goes only while another replica
                    // of its source ACKs.
                    if let Some(src) = src.filter(|_| !*enabled && self.kv.drained.contains(node)) {
                        let (me, ss) = (&self.servers[i], &self.servers[src]);
                        let acking = me.semi_active
                            && me.io_on
                            && !me.io_error
                            && me.up()
                            && !me.isolated
                            && ss.up()
                            && !ss.isolated;
                        let others = self
                            .servers
                            .iter()
                            .enumerate()
                            .filter(|(j, r)| {
                                *j != i
                                    && r.source == Some(src)
                                    && r.semi_active
                                    && r.io_on
                                    && !r.io_error
                                    && r.up()
                                    && !r.isolated
                            })
                            .count();
                        if acking && others == 0 {
                            self.violation(format!(
                                "drained {node} lost the semi-sync flag before another replica of {} ACKed",
                                self.servers[src].name
                            ));
                        }
                    }
                    let s = &mut self.servers[i];
                    s.semi_replica = *enabled;
                    s.semi_active = *enabled;
                }
            }
            Action::SetLosslessSemiSync { .. } => {}
            Action::Open { node } => {
                if let Some(i) = by(self, node) {
                    self.servers[i].semi_source = true;
                    self.servers[i].read_only = false;
                }
            }
            Action::Repoint { node, source } => {
                if by(self, node).is_some() {
                    let _ = self.repoint(node, source, false, false);
                }
            }
            Action::RecordAckers { ackers } => {
                if !self.kv_write_lost() {
                    self.kv.ack_floors = ackers.clone();
                }
            }
            Action::RecordStarted { started } => {
                if !self.kv_write_lost() {
                    self.kv.acker_started = started.clone();
                }
            }
            Action::CutReplicaConnections { node } => {
                if let Some(src) = by(self, node) {
                    // Live replicas reconnect at once with their flag; a
                    // hung one is disconnected until it wakes.
                    for r in self.servers.iter_mut().filter(|r| r.source == Some(src)) {
                        if r.life == Life::Hung {
                            r.semi_active = false;
                        }
                    }
                }
            }
            Action::RestartIoThread { node } => {
                if let Some(i) = by(self, node) {
                    let s = &mut self.servers[i];
                    s.io_on = true;
                    s.semi_active = s.semi_replica;
                }
            }
        }
        // The heartbeat write after a semi-sync move.
        if let Some(m) = self.kv.master {
            self.commit_on(m, false);
        }
    }

    /// The guarded release: only when the ACKing replica holds the
    /// source's whole binlog; the waiting clients' connections are killed,
    /// so their commits are never acknowledged.
    fn release(&mut self, source: &str, acker: &str) {
        let (Some(s), Some(a)) = (self.idx(source), self.idx(acker)) else {
            return;
        };
        if !self.servers[s].visible() || !self.servers[a].visible() {
            return;
        }
        let last = self.servers[s].log.last().map(|t| t.id);
        if last.is_none_or(|id| self.servers[a].has(id)) {
            let n = self.servers[s].pending.len();
            self.kill_clients(s);
            self.log(format!(
                "released {n} stalled commit(s) on {source} by killing their connections"
            ));
        }
    }

    // — the claims —

    fn violation(&self, what: String) -> ! {
        panic!(
            "{what}\nstate: {:#?}\nkv master {:?} fence {:?} quarantine {:?} in_progress {:?}\ntrace:\n{}",
            self.servers
                .iter()
                .map(|s| format!(
                    "{} {:?} cut={} ro={} src={:?} io={} err={} semi(src={} rep={} act={}) log={:?} relay={:?} pending={:?}",
                    s.name, s.life, s.cut, s.read_only, s.source, s.io_on, s.io_error, s.semi_source,
                    s.semi_replica, s.semi_active,
                    s.log.iter().map(|t| t.id).collect::<Vec<_>>(),
                    s.relay.iter().map(|t| t.id).collect::<Vec<_>>(), s.pending
                ))
                .collect::<Vec<_>>(),
            self.kv.master,
            self.kv.fence,
            self.kv.quarantine,
            self.kv.in_progress,
            self.trace.join("\n")
        )
    }

    /// Replicas the source counts as semi-sync clients: a hung one stays
    /// connected (nothing closes its socket) though it ACKs nothing.
    fn semi_clients_where(&self, i: usize, also: impl Fn(&Server) -> bool) -> u64 {
        self.servers
            .iter()
            .filter(|r| {
                r.source == Some(i)
                    && r.semi_active
                    && r.io_on
                    && !r.io_error
                    && matches!(r.life, Life::Up | Life::Hung)
                    && !r.cut
                    && !r.isolated
                    && also(r)
            })
            .count() as u64
    }

    fn semi_clients(&self, i: usize) -> u64 {
        self.semi_clients_where(i, |_| true)
    }

    fn semi_clients_out_of_sight(&self, i: usize) -> u64 {
        self.semi_clients_where(i, |r| !r.visible())
    }

    fn check(&mut self) {
        // Servers that could acknowledge a commit right now.
        let ackers: Vec<&str> = self
            .servers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.up() && !s.read_only)
            .filter(|(i, s)| {
                !s.semi_source
                    || self.servers.iter().any(|r| {
                        r.source == Some(*i) && r.semi_active && r.io_on && !r.io_error && r.up()
                    })
            })
            .map(|(_, s)| s.name.as_str())
            .collect();
        if ackers.len() > 1 {
            self.violation(format!("two servers can acknowledge commits: {ackers:?}"));
        }
        if let Some(m) = self.kv.master {
            if self.kv.quarantine.contains(&m) {
                self.violation(format!("quarantined {} is published", self.servers[m].name));
            }
            let s = &self.servers[m];
            let open = s.up() && !s.read_only;
            let from = match self.checked {
                (Some(c), true, n) if c == m && open => n,
                _ => 0,
            };
            if open {
                if let Some(lost) = self.acked[from..].iter().find(|id| !s.ids.contains(id)) {
                    self.violation(format!(
                        "acknowledged commit {lost} is missing from the published source {}",
                        s.name
                    ));
                }
            }
            self.checked = (Some(m), open, self.acked.len());
        }
    }

    fn tick(&mut self, faults: bool) {
        self.now_ms += TICK_MS;
        for _ in 0..1 + self.rng.below(4) {
            self.client_commit();
        }
        self.replicate();
        self.check();
        if faults && self.rng.pct(12) {
            self.fault();
            self.check();
        }
        self.agents_self_fence();
        self.check();
        self.coordinate();
    }
}

/// Runs one seed: faults for a while, then everything healed and quiet
/// until the cluster settles. Returns the number of procedure steps run.
pub fn run(seed: u64, plant: Plant) -> u64 {
    let mut sim = Sim::new(seed, plant);
    for _ in 0..120 {
        sim.tick(true);
    }
    for i in 0..sim.servers.len() {
        sim.heal(i);
        sim.heal(i);
    }
    for _ in 0..60 {
        sim.tick(false);
    }
    sim.steps
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEEDS: u64 = 10_000;
    /// Seeds split over a few tests so they run on every core.
    const SHARDS: u64 = 4;

    fn shard(k: u64) {
        let mut steps = 0;
        for seed in (k..SEEDS).step_by(SHARDS as usize) {
            let r = std::panic::catch_unwind(|| run(seed, Plant::None));
            match r {
                Ok(s) => steps += s,
                Err(e) => {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .unwrap_or_else(|| "panic".into());
                    panic!("seed {seed} (replay: SIM_SEED={seed} cargo test -p successover-agent sim::tests::replay -- --nocapture):\n{msg}");
                }
            }
        }
        assert!(
            steps > SEEDS / SHARDS,
            "the seeds ran procedures ({steps} steps)"
        );
    }

    #[test]
    fn seeds_0() {
        shard(0)
    }
    #[test]
    fn seeds_1() {
        shard(1)
    }
    #[test]
    fn seeds_2() {
        shard(2)
    }
    #[test]
    fn seeds_3() {
        shard(3)
    }

    #[test]
    fn replay() {
        if let Ok(seed) = std::env::var("SIM_SEED") {
            run(seed.parse().expect("SIM_SEED is a number"), Plant::None);
        }
    }

    fn caught(plant: Plant) -> Option<u64> {
        (0..2_000).find(|seed| std::panic::catch_unwind(|| run(*seed, plant)).is_err())
    }

    #[test]
    fn a_candidate_rule_that_ignores_the_semi_sync_flag_is_caught() {
        let seed = caught(Plant::AnyCandidate);
        assert!(seed.is_some(), "no seed caught the planted bug");
    }

    #[test]
    fn promotion_without_applying_the_relay_log_is_caught() {
        let seed = caught(Plant::SkipRelayApply);
        assert!(seed.is_some(), "no seed caught the planted bug");
    }
}
