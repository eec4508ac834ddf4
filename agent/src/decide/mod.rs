//! The coordinator's pure core. One function, [`decide`], takes what the
//! coordinator recorded this cycle — the cluster's KV state, its view of
//! every node, the procedure it is running and its memory of earlier
//! cycles — and returns an [`Intent`] with one sentence saying why. No I/O
//! happens here: the executor (`crate::procedure`) performs the intent's
//! step, records what happened, and asks again.
//!
//! Order of concern, highest first:
//! 1. a procedure in progress (switchover, failover, rejoin, or one a
//!    previous coordinator left behind) gets its next step;
//! 2. maintenance mode holds everything else;
//! 3. failure detection: named codes ([`detect::FailureCode`]) mapped to
//!    recoveries in one `match`;
//! 4. operator requests: rejoin, then switchover;
//! 5. a commit stalled on an ACK that cannot come ([`stall`]);
//! 6. the invariants ([`invariants`]).

pub mod detect;
pub mod failover;
pub mod invariants;
pub mod member;
pub mod rejoin;
pub mod stall;
pub mod switchover;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod sim;

use std::collections::{BTreeMap, BTreeSet};

use successover_common::consul::KvPair;
use successover_common::procedure::{HistoryEntry, ProcedureKind};

use crate::config::Detection;
use crate::mysql::{GtidState, Uuid};

pub use invariants::Action;
pub use stall::ProbeStall;
pub use switchover::Plan;

/// Where a node listens, as written in the `master` key.
pub use successover_common::contract::HostPort;

/// A node's replication from its source, as last observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaView {
    pub source: HostPort,
    pub io_running: bool,
    /// The IO thread is off (not running, not connecting): nothing more
    /// can arrive.
    pub io_stopped: bool,
    pub sql_running: bool,
    /// Everything received: applied plus still in the relay log.
    pub received: GtidState,
    pub seconds_behind_source: Option<u64>,
    /// Heartbeats received from the source, where the server counts them.
    pub heartbeats: Option<u64>,
    /// How far into the source's binlog the IO thread has read (file,
    /// position): it moves while one large transaction streams in, when
    /// neither `received` nor `heartbeats` does.
    pub read_position: Option<(String, u64)>,
    pub last_io_errno: u32,
    pub last_sql_errno: u32,
    /// When it was read, on the coordinator's clock ([`Input::now_ms`]);
    /// `None`: at decision time. A cycle that waits on a hung source decides
    /// seconds after it read the replicas, and their silence counts from
    /// the read.
    pub observed_ms: Option<u64>,
}

/// The semi-sync figures of one server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SemiSyncView {
    /// `Rpl_semi_sync_*_status` on a source: waiting for ACKs now.
    pub source_status_on: bool,
    /// Replicas connected as semi-sync clients.
    pub clients: u64,
    /// Sessions waiting for an ACK right now.
    pub wait_sessions: u64,
    pub yes_tx: u64,
    pub no_tx: u64,
    /// Times the source switched semi-sync off.
    pub no_times: u64,
    /// Rule 1's settings are not all in place: the wait point is not
    /// AFTER_SYNC, the source would stop waiting without a replica, or the
    /// timeout is short enough for a blip to turn it asynchronous.
    pub settings_drift: bool,
}

/// One database node as the coordinator last saw it. `reachable == false`
/// means no fresh observation: every other field is stale and the node is
/// never chosen for anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub addr: HostPort,
    pub reachable: bool,
    pub read_only: bool,
    pub replica: Option<ReplicaView>,
    pub semi_sync_source: bool,
    pub semi_sync_replica: bool,
    /// `Rpl_semi_sync_*_status`: on a replica, whether its IO thread runs
    /// in semi-sync mode (it needs an IO-thread restart after the flag
    /// changes).
    pub semi_sync_replica_active: bool,
    pub semi: SemiSyncView,
    pub gtid_executed: Option<GtidState>,
    /// MariaDB's `@@gtid_binlog_state`: (domain, server id, seq) triples.
    pub binlog_state: Option<Vec<(u32, u32, u64)>>,
    /// MySQL's `@@server_uuid`, the name in the GTIDs this server writes.
    pub server_uuid: Option<Uuid>,
    /// When the server started, Unix seconds on its own clock.
    pub started_s: Option<u64>,
    pub quarantined: bool,
}

impl NodeView {
    /// A node known by name and address that gave no fresh answer.
    pub fn unreachable(name: &str, addr: HostPort, quarantined: bool) -> NodeView {
        NodeView {
            name: name.to_owned(),
            addr,
            reachable: false,
            read_only: true,
            replica: None,
            semi_sync_source: false,
            semi_sync_replica: false,
            semi_sync_replica_active: false,
            semi: SemiSyncView::default(),
            gtid_executed: None,
            binlog_state: None,
            server_uuid: None,
            started_s: None,
            quarantined,
        }
    }

    pub fn replicates_from(&self, source: &HostPort) -> bool {
        self.replica.as_ref().is_some_and(|r| r.source.same(source))
    }

    pub fn healthy_replica_of(&self, source: &HostPort) -> bool {
        self.reachable
            && !self.quarantined
            && self
                .replica
                .as_ref()
                .is_some_and(|r| r.source.same(source) && r.io_running && r.sql_running)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterView {
    pub cluster: String,
    pub nodes: Vec<NodeView>,
    /// The `master` key, if present and valid.
    pub published: Option<HostPort>,
    pub fenced: bool,
    /// A switchover or failover owns the cluster; invariants wait.
    pub procedure_running: bool,
    /// Automation suspended by an operator.
    pub maintenance: bool,
    pub semi_sync_replicas: usize,
    /// Nodes an operator drains: the ACK role moves off them, a new ACKer
    /// connected before the old one's flag goes (make before break).
    pub drained: BTreeSet<String>,
}

impl ClusterView {
    pub fn node(&self, name: &str) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn node_mut(&mut self, name: &str) -> Option<&mut NodeView> {
        self.nodes.iter_mut().find(|n| n.name == name)
    }

    pub fn node_at(&self, addr: &HostPort) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.addr.same(addr))
    }

    /// The node the `master` key names, if it is a known node.
    pub fn source(&self) -> Option<&NodeView> {
        self.published.as_ref().and_then(|p| self.node_at(p))
    }

    pub fn addr_of(&self, name: &str) -> Option<HostPort> {
        self.node(name).map(|n| n.addr.clone())
    }
}

/// What KV says beyond the view: the inputs of procedures and requests.
#[derive(Clone, Debug, Default)]
pub struct KvInputs {
    /// The fence value, when fenced: its text names the procedure that
    /// set it, if one did.
    pub fence: Option<String>,
    /// The `in-progress` marker's id and the entry it names, if readable.
    pub in_progress: Option<(String, Option<HistoryEntry>)>,
    /// The history entry of the procedure whose fence stands, if the
    /// fence is a procedure's (a refused failover leaves its fence).
    pub fence_entry: Option<HistoryEntry>,
    /// A pending switchover request (raw: parsing it is part of deciding).
    pub switchover: Option<KvPair>,
    /// Pending rejoin requests.
    pub rejoins: Vec<KvPair>,
    /// When the last counted failover finished (Unix ms), if any.
    pub last_failover_ms: Option<u64>,
    /// The `last-failover` marker is held by its cooldown session: the
    /// cooldown runs on Consul's clock, until Consul deletes the marker.
    pub last_failover_held: bool,
    pub auto_failover: bool,
    /// Observe mode (with `auto_failover` off): record what a failover
    /// would have done instead of a refusal.
    pub observe_failover: bool,
    pub failover_cooldown_ms: u64,
    pub max_lag_seconds: u32,
    /// Health reports' view of their own server, by node: whether the
    /// agent says its server is up.
    pub agent_up: BTreeMap<String, bool>,
    /// The `master` value is present but invalid: publish nothing over it.
    pub published_invalid: Option<String>,
    /// The possible ACKers (`semi-sync/<cluster>`): every replica that may
    /// have the semi-sync flag, from before its flag is set until it is
    /// seen off; with each, its floor — what the source had when it was
    /// granted the flag, raised by what left ACKers had received — which it
    /// must have received before it vouches for every acknowledged commit.
    /// `None`: no floor (an ACKer from before the set was kept).
    pub ack_floors: BTreeMap<String, Option<GtidState>>,
    /// When each possible ACKer's server started, as last seen while it
    /// replicated from a live source (`semi-sync/<cluster>`'s `started`).
    pub acker_started: BTreeMap<String, u64>,
}

impl KvInputs {
    /// Whether the fence in place was set by procedure `id`.
    pub fn fence_is(&self, id: &str) -> bool {
        self.fence
            .as_deref()
            .is_some_and(|f| successover_common::contract::Fence::read(f.as_bytes()).belongs_to(id))
    }
}

/// Settings of the decision that come from the agent's config.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub detection: Detection,
    pub confirmations: u32,
    /// The coordinator's cycle.
    pub tick_ms: u64,
    /// The coordinator's look at its source: confirmations of a dead source
    /// are at least this far apart.
    pub probe_ms: u64,
}

/// A procedure this coordinator is running: the working copy of its
/// history entry, and for a switchover the plan it follows. A coordinator
/// that finds a procedure it did not start has only the stored entry and
/// no plan, and recovers instead of continuing.
#[derive(Clone, Debug)]
pub struct Running {
    pub entry: HistoryEntry,
    pub plan: Option<Plan>,
}

/// What the coordinator remembers between cycles. Plain data, so the
/// simulator can drive the same decisions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// The source that looked dead, how many confirmations, and when the
    /// count last went up (coordinator's monotonic ms).
    pub suspect: Option<(String, u32, u64)>,
    /// A failover that could not start was already recorded for this
    /// incident; the same refusal is not written every cycle.
    pub incident_recorded: bool,
    /// Per replica: what it had received (GTID position, heartbeats, read
    /// position in the source's binlog, as one signature) and since when,
    /// to tell a replica that still hears its source from one that only
    /// has not timed out yet.
    pub progress: BTreeMap<String, (String, u64)>,
    /// Consecutive cycles in which commits on the source waited for an ACK
    /// while its binlog and its ACK counters stood still, and the sample
    /// they stood still at (source, binlog position, yes_tx, no_tx).
    pub stalled_cycles: u32,
    pub stall_sample: Option<(String, String, u64, u64)>,
    /// The refused failover last reopened, and when: at most one reopen
    /// per [`failover::REOPEN_EVERY_TICKS`] ticks.
    pub reopened: Option<(String, u64)>,
    /// The published source's semi-sync as this coordinator watched it:
    /// the evidence a failover records, and what makes it refuse when the
    /// source acknowledged commits no replica had ACKed.
    pub source_semi: Option<SourceSemi>,
}

/// What the coordinator saw of its source's semi-sync counters, to tell
/// whether it may have acknowledged a commit no replica had ACKed: it
/// switched semi-sync off while published (`no_times` rose: a timeout, or
/// its flag turned off by hand), or a commit ended without an ACK while
/// rule 1's settings had drifted (`no_tx` rose with waiting-without-replica
/// off: such a commit does not wait). `no_tx` alone proves nothing: MariaDB
/// also counts commits whose session was killed while waiting, which got no
/// OK (`a_killed_commit_waiting_for_an_ack_is_no_switch_off`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceSemi {
    pub node: String,
    /// The last values read, to count rises (a value below is a restart).
    pub last_no_times: u64,
    pub last_no_tx: u64,
    /// Rule 1's settings had drifted at the last look.
    pub drift: bool,
    /// Looks at which the source may have acknowledged without an ACK,
    /// since this coordinator first saw it published with no procedure
    /// running.
    pub unacked: u64,
    /// The status (waiting for ACKs) at the last look.
    pub status_on: bool,
    /// When it was last read (coordinator's monotonic ms).
    pub seen_ms: u64,
}

/// Everything one decision reads.
pub struct Input<'a> {
    pub view: &'a ClusterView,
    pub kv: &'a KvInputs,
    pub running: Option<&'a Running>,
    /// Consecutive failed looks at the published source by the
    /// coordinator's probe since its last good one: confirmations of a
    /// dead source, as the cycles' own looks are.
    pub probe_failures: u32,
    /// The probe's sight of the published source's commits waiting with no
    /// ACK coming, between cycles.
    pub probe_stall: Option<ProbeStall>,
    pub settings: Settings,
    /// The coordinator's monotonic clock, in ms.
    pub now_ms: u64,
    /// The coordinator's node name, for the audit.
    pub coordinator: &'a str,
    /// Wall clock (Unix ms), for history ids and the cooldown.
    pub wall_ms: u64,
}

/// One step of a procedure, as data. The executor performs it and records
/// the result in the working entry; [`decide`] then looks at the entry and
/// the view to pick the next one, so a new coordinator resumes by looking,
/// not by remembering.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    // — failover —
    /// Fence the cluster and mark the procedure under way, in one txn.
    StartFailover { entry: Box<HistoryEntry> },
    /// Stop every listed replica's IO thread (the old source, if only hung,
    /// can collect no more ACKs); best effort read-only + kill on the old
    /// source.
    StopIoThreads {
        nodes: Vec<String>,
        old_source: Option<HostPort>,
    },
    /// Name the candidate (and the evidence) in the audit before touching
    /// it.
    RecordCandidate {
        to: String,
        evidence: serde_json::Map<String, serde_json::Value>,
    },
    /// Apply everything received before accepting writes (rule 4).
    ApplyRelayLog { node: String, target: GtidState },
    /// No longer a replica; semi-sync source flag on, replica flag off.
    Promote { node: String },
    /// Publish the new source, quarantine the old one (failover), lift
    /// this procedure's fence, in one txn.
    Publish {
        node: String,
        addr: HostPort,
        quarantine: Option<(String, Option<HostPort>)>,
        /// The replica given the semi-sync flag under the new source, with
        /// its floor (the new source's position): recorded as a possible
        /// ACKer in the same txn. Nothing can be acknowledged through it
        /// before the new source opens, which comes after the publish.
        acker: Option<(String, GtidState)>,
    },
    /// The published source opens for writes. `label` names the step in
    /// the audit (`writable`, `writable_target`).
    MakeWritable { node: String, label: &'static str },
    /// Point a replica at a source (GTID auto-positioning).
    Repoint {
        node: String,
        source: HostPort,
        semi_sync: bool,
        was_source: bool,
    },
    /// Lift this procedure's fence (not an operator's).
    LiftFence,
    /// Record the outcome and end the procedure.
    Finish {
        outcome: successover_common::procedure::Outcome,
        reason: String,
        /// A failover that moved the source counts for the cooldown.
        counted: bool,
        /// Replicas that resume receiving (a refused or aborted failover,
        /// in case the source comes back).
        restart_io: Vec<String>,
        /// Lift this procedure's fence (an aborted failover).
        lift_fence: bool,
    },

    /// Take up a refused failover again: its entry runs once more, under
    /// the fence it left.
    ReopenFailover { entry: Box<HistoryEntry> },

    // — switchover —
    /// Consume the request and start the switch (or record its refusal).
    StartSwitch {
        request: KvPair,
        entry: Box<HistoryEntry>,
        plan: Option<Box<Plan>>,
    },
    /// While the old source still takes writes, wait until the target is
    /// close behind it, so the window after read-only holds only a short
    /// tail to apply. Nothing changes; past its limit the switch ends.
    Converge { from: String, to: String },
    /// The old source stops taking writes; clients on it are killed until
    /// the switch ends.
    ReadOnlyOldSource { node: String },
    /// Fence at the proxies, recording the entry.
    Fence,
    /// Read the old source's executed position (it is read-only now) and
    /// wait until the target applied it.
    CatchUp {
        from: String,
        to: String,
        skip_wait: bool,
    },
    /// The target becomes a source in waiting: no longer a replica (unless
    /// it is half of a primary-primary pair), semi-sync source flag on.
    PrepareTarget { node: String, pair: bool },
    /// Undo an unpublished switch: repoint back what moved, lift the fence,
    /// reopen the old source (only once the target is read-only).
    RollBack {
        plan: Plan,
        target_touched: bool,
        why: String,
    },

    // — rejoin —
    /// Repoint a quarantined node and let the servers judge; consume the
    /// request, lift the quarantine if it follows.
    Rejoin {
        request: KvPair,
        node: String,
        source: String,
        source_addr: HostPort,
        evidence: serde_json::Map<String, serde_json::Value>,
    },
    /// Consume a rejoin request that was refused before anything changed.
    RefuseRejoin {
        request: KvPair,
        node: String,
        why: String,
        evidence: serde_json::Map<String, serde_json::Value>,
    },
}

impl Step {
    /// The name this step is recorded under in the history entry.
    pub fn name(&self) -> String {
        match self {
            Step::StartFailover { .. } => "fence".into(),
            Step::ReopenFailover { .. } => "reopen".into(),
            Step::StopIoThreads { .. } => "stop_io_threads".into(),
            Step::RecordCandidate { .. } => "choose_candidate".into(),
            Step::ApplyRelayLog { .. } => "apply_relay_log".into(),
            Step::Promote { .. } => "promote".into(),
            Step::Publish { .. } => "publish".into(),
            Step::MakeWritable { label, .. } => (*label).into(),
            Step::PrepareTarget { .. } => "prepare_target".into(),
            Step::Repoint {
                node, semi_sync, ..
            } => {
                if *semi_sync {
                    format!("repoint_{node}_semi_sync")
                } else {
                    format!("repoint_{node}")
                }
            }
            Step::LiftFence => "unfence".into(),
            Step::Finish { .. } => "finish".into(),
            Step::StartSwitch { .. } => "start".into(),
            Step::ReadOnlyOldSource { .. } => "read_only_old_source".into(),
            Step::Fence => "fence".into(),
            Step::CatchUp { .. } => "catch_up".into(),
            Step::Converge { .. } => "converge".into(),
            Step::RollBack { .. } => "roll_back".into(),
            Step::Rejoin { .. } => "rejoin".into(),
            Step::RefuseRejoin { .. } => "rejoin".into(),
        }
    }
}

/// What the coordinator does this cycle.
#[derive(Clone, Debug, PartialEq)]
pub enum Intent {
    /// Nothing to change.
    Hold,
    /// Restore the invariants.
    Enforce(Vec<Action>),
    /// Record that a dead source is not failed over, and why.
    RecordRefusal { entry: Box<HistoryEntry> },
    /// Release commits stalled on an ACK that cannot come, if the ACKing
    /// replica still provably holds the source's whole binlog when the
    /// executor re-reads both (source first).
    ReleaseStalled {
        source: String,
        acker: String,
        waiting: u64,
    },
    /// The next step of a procedure.
    Step(Step),
}

/// One decision: the intent, the sentence, and the memory to keep.
#[derive(Clone, Debug)]
pub struct Decision {
    pub intent: Intent,
    pub reason: String,
    pub memory: Memory,
}

impl Decision {
    fn hold(reason: impl Into<String>, memory: Memory) -> Decision {
        Decision {
            intent: Intent::Hold,
            reason: reason.into(),
            memory,
        }
    }

    fn step(step: Step, reason: impl Into<String>, memory: Memory) -> Decision {
        Decision {
            intent: Intent::Step(step),
            reason: reason.into(),
            memory,
        }
    }
}

/// The coordinator's decision for this cycle (or for the next step within
/// it, while a procedure runs).
pub fn decide(input: &Input<'_>, memory: &Memory) -> Decision {
    let mut memory = memory.clone();
    let view = input.view;
    if let Some(why) = &input.kv.published_invalid {
        // Publishing over a value someone wrote (even a broken one) could
        // route writes to a node they did not choose.
        return Decision::hold(format!("master key is invalid, not acting: {why}"), memory);
    }
    // A procedure owns the cluster while it runs: an interrupted one is
    // finished or rolled back first, a request is handled next, and only
    // then are the invariants enforced.
    if input.running.is_some() || input.kv.in_progress.is_some() {
        // A procedure switches flags off on purpose (a switch's old
        // source): the record of the source's semi-sync starts afresh
        // after it.
        memory.source_semi = None;
    }
    if let Some(running) = input.running {
        return procedure_step(input, running, memory);
    }
    if let Some((id, entry)) = &input.kv.in_progress {
        return match entry {
            Some(entry) => {
                let running = Running {
                    entry: entry.clone(),
                    plan: None,
                };
                procedure_step(input, &running, memory)
            }
            None => Decision::step(
                Step::Finish {
                    outcome: successover_common::procedure::Outcome::Failed,
                    reason: format!("dropped unreadable in-progress marker {id}"),
                    counted: false,
                    restart_io: Vec::new(),
                    lift_fence: false,
                },
                format!("dropped unreadable in-progress marker {id}"),
                memory,
            ),
        };
    }
    if view.maintenance {
        // Watching is not automation: what the source does meanwhile is
        // still evidence for a failover after maintenance ends.
        detect::note_source_semi(view, &mut memory, input.now_ms);
        return Decision::hold("maintenance mode: automation suspended", memory);
    }
    let mut waiting = None;
    if let Some(entry) = &input.kv.fence_entry {
        match failover::reopen(input, entry, &mut memory) {
            Some(failover::Reopen::Step(step, reason)) => {
                return Decision::step(*step, reason, memory);
            }
            Some(failover::Reopen::Wait(why)) => waiting = Some(why),
            None => {}
        }
    }
    if let Some(d) = detect::watch(input, &mut memory) {
        return d;
    }
    if let Some(req) = input.kv.rejoins.first() {
        let (step, reason) = rejoin::step(input, req);
        return Decision::step(step, reason, memory);
    }
    // A scheduled request waits in KV, and the cluster is kept meanwhile.
    let mut scheduled = None;
    if let Some(req) = &input.kv.switchover {
        match switchover::waits(input, req) {
            Some(why) => scheduled = Some(why),
            None => {
                let (step, reason) = switchover::start(input, req);
                return Decision::step(step, reason, memory);
            }
        }
    }
    let stalled = stall::check(view, &input.kv.ack_floors, input.probe_stall, &mut memory);
    let mut enforce = invariants::enforce(view, &input.kv.ack_floors);
    if let Some(started) =
        invariants::acker_started(view, &input.kv.ack_floors, &input.kv.acker_started)
    {
        enforce.actions.push(Action::RecordStarted { started });
    }
    if let Some(why) = waiting {
        // A fence left by a refused failover: what it waits for is the
        // cluster's state, not "fenced".
        enforce.reason = why;
    }
    if let Some(why) = scheduled {
        enforce.reason = format!("{}; {why}", enforce.reason);
    }
    match (stalled, enforce.actions.is_empty()) {
        // Releasing comes first: with commits stuck, nothing else the
        // invariants ask for helps the application.
        (Some(Ok((intent, why))), _) => Decision {
            intent,
            reason: format!("{why}; {}", enforce.reason),
            memory,
        },
        (Some(Err(why)), true) => Decision::hold(format!("{why}; {}", enforce.reason), memory),
        (Some(Err(why)), false) => Decision {
            intent: Intent::Enforce(enforce.actions),
            reason: format!("{why}; {}", enforce.reason),
            memory,
        },
        (None, true) => Decision::hold(enforce.reason, memory),
        (None, false) => Decision {
            intent: Intent::Enforce(enforce.actions),
            reason: enforce.reason,
            memory,
        },
    }
}

fn procedure_step(input: &Input<'_>, running: &Running, memory: Memory) -> Decision {
    let (step, reason) = match running.entry.kind {
        ProcedureKind::Failover => failover::next(input, &running.entry),
        ProcedureKind::Switchover => match &running.plan {
            Some(plan) => switchover::next(input, &running.entry, plan),
            None => switchover::recover(input, &running.entry),
        },
        // A rejoin runs within one step; an entry left running is closed.
        ProcedureKind::Rejoin => (
            Some(Step::Finish {
                outcome: successover_common::procedure::Outcome::Failed,
                reason: "rejoin interrupted; request it again".into(),
                counted: false,
                restart_io: Vec::new(),
                lift_fence: false,
            }),
            "rejoin interrupted".into(),
        ),
    };
    match step {
        Some(step) => Decision::step(step, reason, memory),
        None => Decision::hold(reason, memory),
    }
}

/// The steps that open a published target: the semi-sync source flag back
/// first (a source that restarted after the publish boots with it off, and
/// opened like that it would acknowledge commits no replica holds), then
/// writes. `None` once it is open with its flags right.
pub(crate) fn open_published(t: &NodeView, label: &'static str) -> Option<(Step, String)> {
    if !t.semi_sync_source || t.semi_sync_replica {
        return Some((
            Step::PrepareTarget {
                node: t.name.clone(),
                pair: true,
            },
            format!("{} gets the semi-sync source flag before it opens", t.name),
        ));
    }
    t.read_only.then(|| {
        (
            Step::MakeWritable {
                node: t.name.clone(),
                label,
            },
            format!("opening {} for writes", t.name),
        )
    })
}

/// Nodes a procedure may act on: reachable, not quarantined, not `except`.
pub(crate) fn live_nodes<'a>(
    view: &'a ClusterView,
    except: &'a BTreeSet<&str>,
) -> impl Iterator<Item = &'a NodeView> + 'a {
    view.nodes
        .iter()
        .filter(move |n| n.reachable && !n.quarantined && !except.contains(n.name.as_str()))
}
