//! The executor: performs what [`crate::decide`] decided and records what
//! happened. Nothing here chooses between alternatives; each function does
//! one step's I/O, times it into the working history entry, and applies
//! the step's definite result to the coordinator's copy of the view, so
//! the next decision within the same cycle sees it without another round
//! of observation. A step that fails leaves the view as it was; the next
//! cycle observes everything again.
//!
//! All of it goes through one [`Coordinator`] handle, which carries the
//! lock lease: every KV write is a txn that checks the coordinator's
//! session on the lock key, and the lease is checked before every step.

mod failover;
mod proxies;
mod rejoin;
mod switchover;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use successover_common::consul::{Consul, TxnOp, TxnOutcome};
use successover_common::contract::{ClusterName, Fence, Keys, NodeName, Quarantine};
use successover_common::procedure::{
    HistoryEntry, LastFailover, Outcome, ProcedureKind, Step as Recorded,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::decide::{Action, ClusterView, HostPort, KvInputs, Running, Step};
use crate::metrics::Metrics;
use crate::mysql::{Node, NodeConfig, NodeError, SourceSpec};
use crate::observe::{node_view, observe};

/// Connections to every node this agent talks to: its own server and, as
/// coordinator, the peers.
pub struct Nodes {
    pub local_name: String,
    pub local: Node,
    pub peers: BTreeMap<String, Node>,
    /// Looks at peers that did not answer the last one and outlived the
    /// cycle's short wait for them: a hung server holds a look until its
    /// timeouts run out, and the cycle — every decision — must not wait on
    /// it again and again. While one runs, its peer is unreachable.
    pub pending: BTreeMap<String, PendingLook>,
    /// Peers whose last look failed.
    pub suspect: std::collections::BTreeSet<String>,
}

pub type PendingLook = tokio::task::JoinHandle<(
    Node,
    Result<crate::observe::Observation, crate::mysql::NodeError>,
)>;

impl Nodes {
    pub fn get(&self, name: &str) -> Option<&Node> {
        if name == self.local_name {
            Some(&self.local)
        } else {
            self.peers.get(name)
        }
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Node> {
        if name == self.local_name {
            Some(&mut self.local)
        } else {
            self.peers.get_mut(name)
        }
    }

    pub async fn close(self) {
        for (_, node) in self.peers {
            node.close().await;
        }
        self.local.close().await;
    }
}

pub(crate) fn node_config(cfg: &Config, host: &str, port: u16) -> NodeConfig {
    let mut nc = NodeConfig::new(host, port, cfg.user.clone(), cfg.password.expose());
    nc.connect_timeout = cfg.connect_timeout;
    nc.query_timeout = cfg.query_timeout;
    nc.read_timeout = cfg.read_timeout;
    nc
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// A procedure under way on this coordinator: the decision's input
/// ([`Running`]) and what only the executor holds (the kill loop, the
/// start of the write-unavailability window).
pub struct Active {
    pub running: Running,
    killer: Option<(CancellationToken, JoinHandle<usize>)>,
    unavailable_from: Option<Instant>,
    /// The connection holding the old source's commit block during a
    /// switch (see [`Node::block_commits`]).
    commit_block: Option<Node>,
}

impl Active {
    fn new(entry: HistoryEntry, plan: Option<crate::decide::Plan>) -> Active {
        Active {
            running: Running { entry, plan },
            killer: None,
            unavailable_from: None,
            commit_block: None,
        }
    }

    fn entry(&mut self) -> &mut HistoryEntry {
        &mut self.running.entry
    }

    async fn stop_killer(&mut self) {
        if let Some((stop, task)) = self.killer.take() {
            stop.cancel();
            let killed = task.await.unwrap_or(0);
            self.running
                .entry
                .evidence
                .insert("client_connections_killed".into(), killed.into());
        }
    }
}

/// Why a step did not complete.
#[derive(Debug)]
pub enum StepError {
    /// The coordinator lost its lock: it must touch nothing more; the
    /// next coordinator recovers from KV and the servers.
    LockLost(String),
    Failed(String),
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepError::LockLost(e) => write!(f, "lock lost: {e}"),
            StepError::Failed(e) => f.write_str(e),
        }
    }
}

/// A step's wall-clock start and monotonic timer, for the audit.
struct Timer {
    at: Instant,
    ms: u64,
}

impl Timer {
    fn start() -> Timer {
        Timer {
            at: Instant::now(),
            ms: now_ms(),
        }
    }

    fn record<T>(self, entry: &mut HistoryEntry, name: &str, result: &Result<T, String>) {
        entry.steps.push(Recorded {
            name: name.to_owned(),
            started_ms: self.ms,
            duration_ms: self.at.elapsed().as_millis() as u64,
            ok: result.is_ok(),
            detail: result.as_ref().err().cloned().unwrap_or_default(),
        });
    }
}

/// The coordinator's handle: everything a step needs, and the lease.
pub struct Coordinator<'a> {
    pub consul: &'a Consul,
    pub keys: &'a Keys,
    pub cluster: &'a ClusterName,
    pub me: &'a str,
    pub cfg: &'a Config,
    pub metrics: &'a Metrics,
    pub nodes: &'a mut Nodes,
    /// The session that holds the lock, and the token that fires when it
    /// is gone.
    pub session: String,
    pub lost: CancellationToken,
    /// The local lease (see [`crate::membership::Lease`]).
    pub lease: crate::membership::Lease,
}

impl Coordinator<'_> {
    /// The session is known lost, or the local lease ran out: Consul may
    /// have given the lock to another coordinator already.
    pub fn lost_lock(&self) -> bool {
        self.lost.is_cancelled() || !self.lease.valid_at(std::time::Instant::now())
    }

    fn protected_users(&self) -> [String; 2] {
        [self.cfg.user.clone(), self.cfg.replication_user.clone()]
    }

    /// A txn that only commits while this coordinator holds the lock.
    pub async fn guarded_txn(&self, mut ops: Vec<TxnOp>) -> Result<(), String> {
        if self.lost_lock() {
            return Err("coordinator session lost".into());
        }
        ops.insert(
            0,
            TxnOp::check_session(self.keys.lock_key(self.cluster), &self.session),
        );
        match self.consul.txn(&ops).await {
            Ok(TxnOutcome::Committed(_)) => Ok(()),
            Ok(TxnOutcome::RolledBack(errors)) => Err(format!(
                "KV update rolled back (lock lost?): {}",
                errors
                    .iter()
                    .map(|e| e.what.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Deletes the cluster's oldest history entries beyond
    /// `history.keep`, never `running`'s. Best effort: an entry left over
    /// goes with the next procedure's pruning.
    pub async fn prune_history(&self, running: &[&str]) {
        let prefix = self.keys.history_prefix(self.cluster);
        let keys = match self.consul.kv_keys(&prefix, None).await {
            Ok(k) => k,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list the history to prune it");
                return;
            }
        };
        let old = successover_common::procedure::history_to_prune(
            &keys,
            &prefix,
            self.cfg.history_keep as usize,
            running,
        );
        // A Consul transaction takes 64 operations; one is the lock check.
        for chunk in old.chunks(63) {
            let ops = chunk.iter().map(TxnOp::delete).collect();
            if let Err(e) = self.guarded_txn(ops).await {
                tracing::warn!(error = e, "cannot delete old history entries");
                return;
            }
        }
        if !old.is_empty() {
            tracing::info!(
                deleted = old.len(),
                keep = self.cfg.history_keep,
                "pruned the history"
            );
        }
    }

    pub fn history_op(&self, entry: &HistoryEntry) -> TxnOp {
        TxnOp::set(
            self.keys.history_key(self.cluster, &entry.id),
            serde_json::to_vec(entry).unwrap_or_default(),
        )
    }

    fn fence(&self, kind: ProcedureKind, id: &str) -> Fence {
        Fence::for_procedure(kind, id, self.me, now_ms())
    }

    /// The three `master` keys, in txn ops.
    fn publish_ops(&self, addr: &HostPort) -> Vec<TxnOp> {
        self.keys.publish_ops(self.cluster, addr)
    }

    /// The txn ops that lift the fence procedure `id` set. A fence with
    /// another reason (an operator fenced the cluster while the procedure
    /// ran) stays: lifting it would undo their decision.
    async fn lift_own_fence(&self, id: &str) -> Vec<TxnOp> {
        let key = self.keys.failed_key(self.cluster);
        match self.consul.kv_get(&key).await {
            Ok(Some(kv)) if Fence::read(kv.value.as_deref().unwrap_or_default()).belongs_to(id) => {
                vec![TxnOp::DeleteCas {
                    key,
                    index: kv.modify_index,
                }]
            }
            Ok(Some(_)) => {
                tracing::warn!(
                    key,
                    "the fence is not this procedure's; leaving it in place"
                );
                Vec::new()
            }
            Ok(None) => Vec::new(),
            // The txn that would carry it fails the same way.
            Err(_) => vec![TxnOp::delete(key)],
        }
    }

    pub(crate) async fn on_node<'b, T>(
        &'b mut self,
        name: &str,
        f: impl AsyncFnOnce(&'b mut Node) -> Result<T, NodeError>,
    ) -> Result<T, String> {
        let node = self
            .nodes
            .get_mut(name)
            .ok_or_else(|| format!("no connection to {name}"))?;
        f(node)
            .await
            .map_err(|e| successover_common::telemetry::report(&e))
    }

    /// A fresh look at one node, into the view.
    async fn reobserve(&mut self, view: &mut ClusterView, name: &str) {
        let Some(node) = self.nodes.get_mut(name) else {
            return;
        };
        let obs = observe(node).await.ok();
        if let Some(n) = view.node_mut(name) {
            *n = node_view(name, n.addr.clone(), obs.as_ref(), n.quarantined);
        }
    }

    /// Points `name` at `source` with GTID auto-positioning; `semi_sync`
    /// sets its replica flag before the IO thread starts, so it connects in
    /// the right mode without a restart.
    async fn repoint(
        &mut self,
        name: &str,
        source: &HostPort,
        semi_sync: bool,
        was_source: bool,
    ) -> Result<(), String> {
        self.repoint_from(name, source, semi_sync, was_source, false)
            .await
    }

    /// [`Coordinator::repoint`]; `blocked`: the node's commits are blocked,
    /// so it resumes from `gtid_current_pos` instead of aligning
    /// `gtid_slave_pos`.
    pub(crate) async fn repoint_from(
        &mut self,
        name: &str,
        source: &HostPort,
        semi_sync: bool,
        was_source: bool,
        blocked: bool,
    ) -> Result<(), String> {
        let mut spec = SourceSpec::new(
            source.host.to_string(),
            source.port,
            self.cfg.replication_user.clone(),
            self.cfg.replication_password.expose(),
        );
        spec.from_current_pos = blocked;
        spec.tls = self.cfg.replication_tls;
        spec.public_key_path = self
            .cfg
            .replication_public_key_file
            .as_ref()
            .map(|p| p.display().to_string());
        self.on_node(name, async |n: &mut Node| {
            n.stop_replica().await?;
            if !blocked {
                n.align_gtid_slave_pos().await?;
            }
            n.change_source(&spec).await?;
            if was_source {
                n.set_semi_sync_source(false).await?;
            }
            n.set_semi_sync_replica(semi_sync).await?;
            n.start_replica().await
        })
        .await
    }

    /// Performs one step of a procedure. `active` is the procedure's
    /// working state (created by a start step, dropped by a finishing
    /// one); `view` and `kv` receive the step's definite result. Returns a
    /// sentence when the step ended the procedure.
    pub async fn perform(
        &mut self,
        step: &Step,
        why: &str,
        active: &mut Option<Active>,
        view: &mut ClusterView,
        kv: &mut KvInputs,
    ) -> Result<Option<String>, StepError> {
        if self.lost_lock() {
            return Err(StepError::LockLost(format!("before {}", step.name())));
        }
        // Logged only once it is performed: a coordinator that wakes past
        // its lease still decides, but touches nothing.
        tracing::debug!(step = step.name(), "{why}");
        if active.is_none() && !starts_procedure(step) {
            // A procedure another coordinator left: adopt its stored entry.
            match (&kv.in_progress, step) {
                (Some((_, Some(entry))), _) => *active = Some(Active::new(entry.clone(), None)),
                // A marker naming no readable entry: nothing to finish but
                // the marker itself, which would otherwise hold every
                // other rule back for good.
                (Some((id, None)), Step::Finish { reason, .. }) => {
                    let id = id.clone();
                    self.guarded_txn(vec![TxnOp::delete(self.keys.in_progress_key(self.cluster))])
                        .await
                        .map_err(|e| self.failure(format!("cannot drop marker {id}: {e}")))?;
                    tracing::warn!(id, "{reason}");
                    kv.in_progress = None;
                    view.procedure_running = false;
                    return Ok(Some(reason.clone()));
                }
                _ => return Err(StepError::Failed("no procedure to continue".into())),
            }
        }
        match step {
            Step::StartFailover { entry } => self.start_failover(entry, active, view, kv).await,
            Step::ReopenFailover { entry } => self.reopen_failover(entry, active, view, kv).await,
            Step::StartSwitch {
                request,
                entry,
                plan,
            } => {
                self.start_switch(request, entry, plan.as_deref(), active, kv)
                    .await
            }
            Step::Rejoin {
                request,
                node,
                source,
                source_addr,
                evidence,
            } => {
                self.rejoin(request, node, source, source_addr, evidence, kv)
                    .await
            }
            Step::RefuseRejoin {
                request,
                node,
                why,
                evidence,
            } => self.refuse_rejoin(request, node, why, evidence, kv).await,
            Step::Finish {
                outcome,
                reason,
                counted,
                restart_io,
                lift_fence,
            } => {
                let mut a = active.take().expect("adopted above");
                let cooldown_ms = kv.failover_cooldown_ms;
                let r = self
                    .finish(
                        &mut a,
                        *outcome,
                        reason,
                        counted.then_some(cooldown_ms),
                        restart_io,
                        *lift_fence,
                    )
                    .await;
                view.procedure_running = false;
                kv.in_progress = None;
                Ok(Some(r))
            }
            _ => {
                let a = active.as_mut().expect("adopted above");
                self.perform_within(step, a, view, kv).await.map(|()| None)
            }
        }
    }

    async fn perform_within(
        &mut self,
        step: &Step,
        a: &mut Active,
        view: &mut ClusterView,
        kv: &mut KvInputs,
    ) -> Result<(), StepError> {
        let name = step.name();
        let t = Timer::start();
        let r = match step {
            Step::StopIoThreads { nodes, old_source } => {
                self.stop_io_threads(nodes, old_source.as_ref(), view).await
            }
            Step::RecordCandidate { to, evidence } => {
                // The audit names the candidate before anything touches
                // it; until that is stored the working entry has no
                // candidate either, so the step is decided again.
                let mut named = a.running.entry.clone();
                named.to = Some(to.clone());
                named.evidence.extend(evidence.clone());
                Timer::start().record(&mut named, &name, &Ok::<(), String>(()));
                match self.guarded_txn(vec![self.history_op(&named)]).await {
                    Ok(()) => {
                        let e = a.entry();
                        e.to = Some(to.clone());
                        e.evidence.extend(evidence.clone());
                        Ok(())
                    }
                    Err(e) => Err(format!("failover interrupted: {e}")),
                }
            }
            Step::ApplyRelayLog { node, target } => {
                self.apply_relay_log(node, target, a.entry(), view).await
            }
            Step::Promote { node } | Step::PrepareTarget { node, .. } => 'prepare: {
                let keep = matches!(step, Step::PrepareTarget { pair: true, .. });
                if !keep && matches!(step, Step::PrepareTarget { .. }) {
                    if let Err(e) = self.received_all_applied(node).await {
                        break 'prepare Err(e);
                    }
                }
                let r = self
                    .on_node(node, async |n: &mut Node| {
                        if !keep {
                            n.stop_replica().await?;
                            n.reset_replica_all().await?;
                        }
                        n.set_semi_sync_replica(false).await?;
                        n.set_semi_sync_source(true).await
                    })
                    .await;
                if r.is_ok() {
                    if let Some(v) = view.node_mut(node) {
                        if !keep {
                            v.replica = None;
                        }
                        v.semi_sync_replica = false;
                        v.semi_sync_replica_active = false;
                        v.semi_sync_source = true;
                    }
                }
                r
            }
            Step::Repoint {
                node,
                source,
                semi_sync,
                was_source,
            } => {
                // The old source's commits stay blocked until the switch
                // ends; setting its gtid_slave_pos is a commit the block
                // would hold, so it resumes from its own position.
                let blocked = a.commit_block.is_some()
                    && a.running.plan.as_ref().is_some_and(|p| p.from == *node);
                let r = self
                    .repoint_from(node, source, *semi_sync, *was_source, blocked)
                    .await;
                if r.is_ok() {
                    if let Some(v) = view.node_mut(node) {
                        let received = v
                            .replica
                            .as_ref()
                            .map(|r| r.received.clone())
                            .or_else(|| v.gtid_executed.clone());
                        v.replica = received.map(|received| crate::decide::ReplicaView {
                            source: source.clone(),
                            io_running: true,
                            io_stopped: false,
                            sql_running: true,
                            received,
                            seconds_behind_source: Some(0),
                            heartbeats: None,
                            read_position: None,
                            last_io_errno: 0,
                            last_sql_errno: 0,
                            observed_ms: None,
                        });
                        v.semi_sync_replica = *semi_sync;
                        v.semi_sync_replica_active = *semi_sync;
                        if *was_source {
                            v.semi_sync_source = false;
                        }
                    }
                }
                r
            }
            Step::Publish {
                node,
                addr,
                quarantine,
                acker,
            } => {
                self.publish(node, addr, quarantine.as_ref(), acker.as_ref(), a, view, kv)
                    .await
            }
            Step::MakeWritable { node, .. } => {
                let opening = view.node(node).map(|v| v.addr.clone());
                if let Some(addr) = opening {
                    let waited = self.proxies_acknowledge(&addr).await;
                    match waited {
                        Ok(evidence) => {
                            for (k, v) in evidence {
                                a.entry().evidence.insert(k, v);
                            }
                        }
                        Err(e) => {
                            let r = Err(e);
                            t.record(a.entry(), &name, &r);
                            return r.map_err(|e| self.failure(e));
                        }
                    }
                }
                let mut r = Err(String::new());
                // Never open a source that would acknowledge commits
                // without a replica's ACK: the decision restores the flag
                // first, and a flag not seen on is set here again.
                let flag_on = view.node(node).is_some_and(|v| v.semi_sync_source);
                // Published already: retrying is the only way forward.
                for _ in 0..3 {
                    r = self
                        .on_node(node, async |n: &mut Node| {
                            if !flag_on {
                                n.set_semi_sync_source(true).await?;
                            }
                            n.set_read_only(false).await
                        })
                        .await;
                    if r.is_ok() {
                        break;
                    }
                }
                if r.is_ok() {
                    if let Some(v) = view.node_mut(node) {
                        v.read_only = false;
                    }
                    if let Some(from) = a.unavailable_from {
                        a.entry().write_unavailable_ms = Some(from.elapsed().as_millis() as u64);
                    }
                }
                r
            }
            Step::LiftFence => {
                let id = a.running.entry.id.clone();
                let ops = self.lift_own_fence(&id).await;
                let r = self.guarded_txn(ops).await;
                if r.is_ok() {
                    view.fenced = false;
                    kv.fence = None;
                }
                r
            }
            Step::ReadOnlyOldSource { node } => self.read_only_old_source(node, a, view).await,
            Step::Fence => {
                let fence = self.fence(a.running.entry.kind, &a.running.entry.id);
                let mut staged = a.running.entry.clone();
                Timer::start().record(&mut staged, "fence", &Ok::<(), String>(()));
                let ops = vec![
                    self.keys.fence_op(self.cluster, &fence),
                    self.history_op(&staged),
                ];
                let r = self.guarded_txn(ops).await;
                if r.is_ok() {
                    view.fenced = true;
                    kv.fence = Some(fence.to_json());
                }
                r
            }
            Step::Converge { from, to } => self.converge(from, to, a).await,
            Step::CatchUp {
                from,
                to,
                skip_wait,
            } => self.catch_up(from, to, *skip_wait, a, view).await,
            Step::RollBack {
                plan,
                target_touched,
                why,
            } => self.roll_back(plan, *target_touched, why, a).await,
            Step::StartFailover { .. }
            | Step::ReopenFailover { .. }
            | Step::StartSwitch { .. }
            | Step::Rejoin { .. }
            | Step::RefuseRejoin { .. }
            | Step::Finish { .. } => unreachable!("performed by perform()"),
        };
        t.record(a.entry(), &name, &r);
        r.map_err(|e| self.failure(e))
    }

    /// Stops `name`'s replication and checks it applied everything it
    /// received: `RESET SLAVE ALL` would throw away the rest, commits the
    /// old source may already have counted as acknowledged.
    async fn received_all_applied(&mut self, name: &str) -> Result<(), String> {
        let (received, executed) = self
            .on_node(name, async |n: &mut Node| {
                n.stop_replica().await?;
                let received = n.replica_status().await?.map(|s| s.received());
                Ok((received, n.gtid_executed().await?))
            })
            .await?;
        let Some(received) = received else {
            return Ok(());
        };
        match received.not_in(&executed) {
            Ok(missing) if missing.is_empty() => Ok(()),
            Ok(missing) => Err(format!(
                "{name} received {missing} but has not applied it; resetting its replication would discard it"
            )),
            Err(_) => Err(format!("{name} reports GTIDs of two flavours")),
        }
    }

    /// Lifts the old source's commit block. A block whose release fails is
    /// lifted anyway when its connection closes.
    async fn release_commit_block(&mut self, a: &mut Active) {
        let Some(mut block) = a.commit_block.take() else {
            return;
        };
        if let Err(e) = block.release_commits().await {
            tracing::debug!(error = %e, "commit block released by closing its connection");
        }
        block.close().await;
    }

    fn failure(&self, e: String) -> StepError {
        if self.lost_lock() {
            StepError::LockLost(e)
        } else {
            StepError::Failed(e)
        }
    }

    /// Writes the working entry, so the audit shows a failed step while
    /// the procedure waits for the next cycle.
    pub async fn save(&self, a: &Active) {
        if let Err(e) = self
            .guarded_txn(vec![self.history_op(&a.running.entry)])
            .await
        {
            tracing::warn!(error = e, "cannot record the procedure's progress");
        }
    }

    async fn finish(
        &mut self,
        a: &mut Active,
        outcome: Outcome,
        reason: &str,
        cooldown_ms: Option<u64>,
        restart_io: &[String],
        lift_fence: bool,
    ) -> String {
        for name in restart_io {
            let _ = self
                .on_node(name, async |n: &mut Node| n.start_io_thread().await)
                .await;
        }
        match (outcome, a.commit_block.take()) {
            (Outcome::Done, Some(block)) => {
                let node = a.running.plan.as_ref().map(|p| p.from.clone());
                switchover::linger_commit_block(
                    block,
                    node.unwrap_or_default(),
                    self.protected_users(),
                );
            }
            (_, block) => {
                a.commit_block = block;
                self.release_commit_block(a).await;
            }
        }
        a.stop_killer().await;
        let entry = a.entry();
        entry.outcome = outcome;
        entry.reason = reason.to_owned();
        entry.finished_ms = Some(now_ms());
        let entry = entry.clone();
        let mut ops = vec![
            self.history_op(&entry),
            TxnOp::delete(self.keys.in_progress_key(self.cluster)),
        ];
        if lift_fence {
            ops.extend(self.lift_own_fence(&entry.id).await);
        }
        if let Some(cooldown_ms) = cooldown_ms {
            let key = self.keys.last_failover_key(self.cluster);
            let value = LastFailover::new(entry.id.clone(), now_ms()).to_json();
            ops.push(match self.cooldown_session(cooldown_ms).await {
                Some(session) => TxnOp::Lock {
                    key,
                    value: value.into_bytes(),
                    session,
                },
                None => TxnOp::set(key, value),
            });
        }
        if let Err(e) = self.guarded_txn(ops).await {
            tracing::warn!(error = e, "cannot record the procedure's outcome");
        } else {
            self.prune_history(&[]).await;
        }
        let kind = entry.kind.as_str();
        match outcome {
            Outcome::Done => {
                tracing::warn!(id = entry.id, unavailable_ms = ?entry.write_unavailable_ms, "{kind} done: {reason}")
            }
            _ => tracing::error!(
                id = entry.id,
                ?outcome,
                "{kind} {}: {reason}",
                outcome.as_str()
            ),
        }
        format!("{kind} {}: {reason}", outcome.as_str())
    }

    /// A session that ends the cooldown on Consul's clock: TTL = the
    /// cooldown, never renewed, bound to no node check, `delete` behaviour.
    /// The `last-failover` marker held by it disappears between one and two
    /// cooldowns later (Consul lets a session live up to twice its TTL, and
    /// restarts the count on a new leader), whatever the agents' wall clocks
    /// say. `None` outside Consul's TTL range (10 s to 24 h) or when Consul
    /// refuses: the marker is then written unbound and its `at_ms` compared
    /// with the coordinator's wall clock, as before.
    async fn cooldown_session(&self, cooldown_ms: u64) -> Option<String> {
        let ttl = Duration::from_millis(cooldown_ms);
        if ttl < Duration::from_secs(10) || ttl > Duration::from_secs(86_400) {
            return None;
        }
        let mut req = successover_common::consul::SessionRequest::new(
            format!("successover cooldown {}", self.cluster),
            Some(ttl),
        );
        req.behavior = successover_common::consul::SessionBehavior::Delete;
        req.node_checks = Vec::new();
        req.lock_delay = Duration::ZERO;
        match self.consul.session_create(&req).await {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!(error = %e, "cannot create the cooldown session; the cooldown follows wall clocks");
                None
            }
        }
    }

    /// Records `node`'s ACK floor before it is granted the semi-sync flag
    /// (see [`successover_common::procedure::AckFloors`]).
    async fn record_floor(
        &self,
        node: &str,
        floor: &crate::mysql::GtidState,
        kv: &mut KvInputs,
    ) -> Result<(), String> {
        let floors = raise_floor(&kv.ack_floors, node, floor);
        self.record_ackers(&floors, kv)
            .await
            .map_err(|e| format!("cannot record {node}'s ACK floor: {e}"))
    }

    /// Writes the set of possible ACKers with their floors.
    async fn record_ackers(
        &self,
        ackers: &BTreeMap<String, Option<crate::mysql::GtidState>>,
        kv: &mut KvInputs,
    ) -> Result<(), String> {
        let started = self.members_started(ackers, &kv.acker_started);
        self.guarded_txn(vec![self.ackers_op(ackers, &started)])
            .await?;
        kv.ack_floors = ackers.clone();
        kv.acker_started = started;
        Ok(())
    }

    /// Records when the possible ACKers' servers started (see
    /// [`successover_common::procedure::AckFloors::started`]).
    async fn record_started(
        &self,
        started: &BTreeMap<String, u64>,
        kv: &mut KvInputs,
    ) -> Result<(), String> {
        self.guarded_txn(vec![self.ackers_op(&kv.ack_floors, started)])
            .await?;
        kv.acker_started = started.clone();
        Ok(())
    }

    /// When each member's server started: as recorded, and for a member
    /// without a record (one joining now, as its flag is granted or first
    /// seen) the run the coordinator's connection to it sees. The coordinator
    /// looked at it this cycle, and it ACKs nothing before it joins, so
    /// every ACK it sends as a member comes from that run or a later one.
    pub(super) fn members_started(
        &self,
        ackers: &BTreeMap<String, Option<crate::mysql::GtidState>>,
        started: &BTreeMap<String, u64>,
    ) -> BTreeMap<String, u64> {
        ackers
            .keys()
            .filter_map(|n| {
                let s = started
                    .get(n)
                    .copied()
                    .or_else(|| self.nodes.get(n).and_then(Node::cached_started))?;
                Some((n.clone(), s))
            })
            .collect()
    }

    /// The record of the possible ACKers; a start time is kept only for a
    /// member.
    fn ackers_op(
        &self,
        ackers: &BTreeMap<String, Option<crate::mysql::GtidState>>,
        started: &BTreeMap<String, u64>,
    ) -> TxnOp {
        let value = successover_common::procedure::AckFloors {
            floors: ackers
                .iter()
                .map(|(n, p)| {
                    (
                        n.clone(),
                        p.as_ref().map(|p| p.to_string()).unwrap_or_default(),
                    )
                })
                .collect(),
            at_ms: now_ms(),
            started: started
                .iter()
                .filter(|(n, _)| ackers.contains_key(*n))
                .map(|(n, s)| (n.clone(), *s))
                .collect(),
        };
        TxnOp::set(self.keys.ack_floors_key(self.cluster), value.to_json())
    }

    /// Restores the invariants; returns what failed. The next cycle
    /// observes everything again, so a failed or half-done action is
    /// simply decided again from fresh state.
    pub async fn enforce(
        &mut self,
        actions: &[Action],
        view: &ClusterView,
        kv: &mut KvInputs,
    ) -> Vec<String> {
        let mut failures = Vec::new();
        let protected = self.protected_users();
        for action in actions {
            let (label, result) = match action {
                Action::Publish { node, addr } => {
                    ("publish", self.publish_absent(node, addr).await)
                }
                Action::SetReadOnly { node, read_only } => (
                    "set_read_only",
                    self.on_node(node, async |n: &mut Node| n.set_read_only(*read_only).await)
                        .await,
                ),
                Action::KillClients { node } => {
                    let except: Vec<&str> = protected.iter().map(String::as_str).collect();
                    (
                        "kill_clients",
                        self.on_node(node, async |n: &mut Node| {
                            n.kill_client_connections(&except).await.map(|_| ())
                        })
                        .await,
                    )
                }
                Action::SetSemiSyncSource { node, enabled } => (
                    "set_semi_sync_source",
                    self.on_node(node, async |n: &mut Node| {
                        if !*enabled {
                            // Turning the flag off hands every commit still
                            // waiting for an ACK its OK: end them first, so
                            // their clients get an error instead.
                            n.kill_ack_waiters(&[]).await?;
                        }
                        n.set_semi_sync_source(*enabled).await
                    })
                    .await,
                ),
                Action::SetSemiSyncReplica {
                    node,
                    enabled,
                    floor,
                } => {
                    let recorded = match floor {
                        Some(f) => self.record_floor(node, f, kv).await,
                        None => Ok(()),
                    };
                    let r = match recorded {
                        Ok(()) => {
                            self.on_node(node, async |n: &mut Node| {
                                n.set_semi_sync_replica(*enabled).await.map(|_| ())
                            })
                            .await
                        }
                        Err(e) => Err(e),
                    };
                    ("set_semi_sync_replica", r)
                }
                Action::SetLosslessSemiSync { node } => (
                    "set_lossless_semi_sync",
                    self.on_node(node, async |n: &mut Node| n.set_semi_sync_lossless().await)
                        .await,
                ),
                Action::Open { node } => {
                    let addr = view.node(node).map(|v| v.addr.clone());
                    let acknowledged = match addr {
                        Some(addr) => self.proxies_acknowledge(&addr).await.map(|_| ()),
                        None => Ok(()),
                    };
                    let r = match acknowledged {
                        Ok(()) => {
                            self.on_node(node, async |n: &mut Node| {
                                n.set_semi_sync_source(true).await?;
                                n.set_read_only(false).await
                            })
                            .await
                        }
                        Err(e) => Err(e),
                    };
                    ("open", r)
                }
                Action::Repoint { node, source } => {
                    ("repoint", self.repoint(node, source, false, false).await)
                }
                Action::RecordAckers { ackers } => {
                    ("record_ackers", self.record_ackers(ackers, kv).await)
                }
                Action::RecordStarted { started } => {
                    ("record_started", self.record_started(started, kv).await)
                }
                Action::CutReplicaConnections { node } => (
                    "cut_replica_connections",
                    self.on_node(node, async |n: &mut Node| {
                        let cut = n.kill_binlog_dumps().await?;
                        tracing::warn!(
                            node,
                            connections = cut.len(),
                            "ended replica connections on the source"
                        );
                        Ok(())
                    })
                    .await,
                ),
                Action::RestartIoThread { node } => (
                    "restart_io_thread",
                    self.on_node(node, async |n: &mut Node| {
                        n.stop_io_thread().await?;
                        n.start_io_thread().await
                    })
                    .await,
                ),
            };
            self.metrics.action(label, result.is_ok());
            match result {
                Ok(()) => tracing::info!(action = ?action, "executed"),
                Err(e) => {
                    tracing::warn!(action = ?action, error = %e, "action failed");
                    failures.push(format!("{label}: {e}"));
                }
            }
        }
        // After a replica got the semi-sync flag (or its IO thread was
        // restarted into semi-sync mode), commits already waiting on the
        // source need a later transaction for that replica to acknowledge;
        // without it, a writer stuck behind a dead semi-sync replica stays
        // stuck.
        let moved = actions.iter().any(|a| {
            matches!(
                a,
                Action::SetSemiSyncReplica { enabled: true, .. } | Action::RestartIoThread { .. }
            )
        });
        let granted = actions.iter().find_map(|a| match a {
            Action::SetSemiSyncReplica {
                node,
                enabled: true,
                ..
            } => Some(node.clone()),
            _ => None,
        });
        if let Some(source) = view.source().filter(|n| moved && n.reachable) {
            let (name, waiting) = (source.name.clone(), source.semi.wait_sessions);
            // The new ACKer reconnects past what it already received, and
            // with AFTER_SYNC no later commit reaches the binlog while those
            // wait: if it holds the source's whole binlog, nothing will ever
            // acknowledge the waiting commits. Released now, not after the
            // stall rule's looks (the role moved when its old holder
            // restarted, say: a patch).
            // A drain grants the flag while the drained replica still
            // ACKs: nothing is stalled then, and a release would end
            // commits that are about to get their ACK.
            let still_acked = crate::decide::invariants::seen_ackers(view, source)
                .any(|n| Some(&n.name) != granted.as_ref());
            if let Some(acker) = granted.filter(|_| waiting > 0 && !still_acked) {
                let outcome = self.release_stalled(&name, &acker, waiting).await;
                tracing::info!(source = name, acker, "{outcome}");
            }
            if let Err(e) = self
                .on_node(&name, async |n: &mut Node| n.write_heartbeat().await)
                .await
            {
                self.metrics.error("mysql");
                failures.push(format!("heartbeat write on {name}: {e}"));
            }
        }
        failures
    }

    /// Publishes `master` where it is absent, in one txn that only commits
    /// while this coordinator holds the lock and the key is still absent:
    /// an operator who wrote the key meanwhile wins.
    async fn publish_absent(&self, node: &str, addr: &HostPort) -> Result<(), String> {
        let mut ops = vec![TxnOp::CheckNotExists {
            key: self.keys.master_key(self.cluster),
        }];
        ops.extend(self.publish_ops(addr));
        self.guarded_txn(ops).await?;
        tracing::info!(node, %addr, "published source");
        Ok(())
    }

    /// Records that a dead source is not failed over.
    pub async fn record_refusal(&self, entry: &HistoryEntry) {
        if let Err(e) = self.guarded_txn(vec![self.history_op(entry)]).await {
            tracing::warn!(error = e, "cannot record the failover refusal");
        }
        let source = entry.from.as_deref().unwrap_or_default();
        if entry.outcome == Outcome::Simulated {
            tracing::warn!(source, id = entry.id, "source is dead: {}", entry.reason);
        } else {
            tracing::error!(
                source,
                "source is dead but not failing over: {}",
                entry.reason
            );
        }
    }

    /// Releases commits stalled on an ACK that cannot come — only when the
    /// ACKing replica's received position, read after the source's binlog
    /// position, covers it, and the binlog has not moved since — by killing
    /// the connections whose commit waits: their clients get an error,
    /// never an OK, and the source flag stays on (toggling it instead
    /// acknowledged whatever committed in between, and a coordinator dying
    /// between the two statements left the source asynchronous).
    pub async fn release_stalled(&mut self, source: &str, acker: &str, waiting: u64) -> String {
        let binlog = match self
            .on_node(source, async |n: &mut Node| n.gtid_executed().await)
            .await
        {
            Ok(p) => p,
            Err(e) => return format!("stalled commits: cannot read {source}: {e}"),
        };
        let received = match self
            .on_node(acker, async |n: &mut Node| n.replica_status().await)
            .await
        {
            Ok(Some(r)) => r.received(),
            Ok(None) => return format!("stalled commits: {acker} no longer replicates"),
            Err(e) => return format!("stalled commits: cannot read {acker}: {e}"),
        };
        if !received.contains(&binlog).unwrap_or(false) {
            return format!(
                "{waiting} commit(s) on {source} wait for an ACK; {acker} has not received {binlog} yet"
            );
        }
        match self
            .on_node(source, async |n: &mut Node| n.gtid_executed().await)
            .await
        {
            Ok(again) if again == binlog => {}
            Ok(_) => return format!("commits on {source} moved on: no stall"),
            Err(e) => return format!("stalled commits: cannot read {source}: {e}"),
        }
        let protected = self.protected_users();
        let except: Vec<&str> = protected.iter().map(String::as_str).collect();
        let released = self
            .on_node(source, async |n: &mut Node| {
                n.kill_ack_waiters(&except).await
            })
            .await;
        self.metrics
            .action("release_stalled_commits", released.is_ok());
        match released {
            Ok(ids) => {
                tracing::warn!(source, acker, %binlog, killed = ids.len(), "released commits stalled on an ACK that could not come: their connections were killed; the ACKing replica holds them");
                format!(
                    "released {} session(s) stalled on {source}: {acker} had received all of {binlog}",
                    ids.len()
                )
            }
            Err(e) => format!("releasing stalled commits on {source} failed: {e}"),
        }
    }
}

/// The set of possible ACKers with `node` in it, its floor raised to
/// `floor`.
pub(crate) fn raise_floor(
    ackers: &BTreeMap<String, Option<crate::mysql::GtidState>>,
    node: &str,
    floor: &crate::mysql::GtidState,
) -> BTreeMap<String, Option<crate::mysql::GtidState>> {
    let mut next = ackers.clone();
    let raised = match next.get(node) {
        Some(Some(old)) => old.union(floor).unwrap_or_else(|_| floor.clone()),
        _ => floor.clone(),
    };
    next.insert(node.to_owned(), Some(raised));
    next
}

/// Steps that create the procedure's working state rather than continue
/// one.
fn starts_procedure(step: &Step) -> bool {
    matches!(
        step,
        Step::StartFailover { .. }
            | Step::ReopenFailover { .. }
            | Step::StartSwitch { .. }
            | Step::Rejoin { .. }
            | Step::RefuseRejoin { .. }
    )
}

/// A connection of its own to a node, for work that must never hold up
/// the steps (a hung server blocks its connection).
fn own_connection(cfg: &Config, addr: &HostPort) -> Node {
    Node::new(node_config(cfg, &addr.host.to_string(), addr.port))
}

/// Quarantines a failed source. Its address comes from the view; a node
/// whose address is unknown is still quarantined by its key alone.
fn quarantine_op(
    keys: &Keys,
    cluster: &ClusterName,
    node: &str,
    addr: Option<&HostPort>,
    id: &str,
) -> Option<TxnOp> {
    let name = NodeName::parse(node).ok()?;
    let reason = format!("failed source, failover {id}");
    Some(match addr {
        Some(addr) => keys.quarantine_op(
            cluster,
            &Quarantine::new(name, addr.clone(), reason, now_ms()),
        ),
        None => TxnOp::set(
            keys.quarantine_key(cluster, &name),
            serde_json::json!({"node": node, "reason": reason, "at_ms": now_ms()}).to_string(),
        ),
    })
}
