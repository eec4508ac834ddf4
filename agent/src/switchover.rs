//! Planned successover: a zero-loss switch of the writable source, run by
//! the coordinator under its lock.
//!
//! Order of steps, and why:
//! 1. pre-checks (pure, [`plan`]): refuse rather than guess (rule 7);
//! 2. old source `read_only`; 3. fence at the proxies; 4. kill client
//!    connections on the old source, and keep killing until the end
//!    (clients may bypass the proxy);
//! 5. wait until the target applied everything the old source committed
//!    (GTID), else roll back;
//! 6. the target stops replicating from the old source and gets the
//!    semi-sync source flag; the replica chosen for semi-sync is repointed
//!    first, so the target's first commits find an ACKing replica;
//! 7. publish the new `master` keys and lift the fence in one txn guarded
//!    by the lock, then make the target writable (in that order: a target
//!    writable while the cluster is still fenced would be self-fenced by its
//!    own agent);
//! 8. repoint the remaining replicas, stop killing, record the outcome.
//!
//! Every KV write checks the coordinator's session, and the lock is checked
//! before each step; a coordinator that loses it stops at once and the next
//! one finishes or rolls back from what KV and the servers show
//! ([`Agent::recover`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use successover_common::consul::{KvPair, TxnOp, TxnOutcome};
use successover_common::procedure::{
    HistoryEntry, Outcome, ProcedureKind, Step, SwitchoverRequest,
};
use tokio_util::sync::CancellationToken;

use crate::cluster::{same_addr, ClusterKv};
use crate::decide::{Addr, ClusterView, NodeView};
use crate::mysql::{GtidState, Node, SourceSpec};
use crate::observe::Observation;
use crate::run::{node_config, Agent};

/// How long the target may take to apply what it received before the
/// switch is rolled back.
const CATCHUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often client connections on the old source are killed during the
/// switch.
const KILL_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub from: String,
    pub from_addr: Addr,
    pub to: String,
    pub to_addr: Addr,
    /// The old source replicates from the target: a primary-primary pair,
    /// whose target keeps replicating from the old source afterwards.
    pub pair: bool,
    /// Replicas to repoint to the target (the old source included unless
    /// it is already the target's replica).
    pub repoint: Vec<String>,
    /// The replica that gets the semi-sync flag under the new source.
    pub semi_sync: String,
    pub skip_catchup: bool,
}

pub type Observations = BTreeMap<String, (Addr, Option<Observation>)>;

fn obs<'a>(o: &'a Observations, name: &str) -> Option<&'a Observation> {
    o.get(name).and_then(|(_, obs)| obs.as_ref())
}

fn healthy_replica_of(view: &NodeView, source: &Addr) -> bool {
    view.reachable
        && !view.quarantined
        && view
            .replica
            .as_ref()
            .is_some_and(|r| same_addr(&r.source, source) && r.io_running && r.sql_running)
}

/// No transaction on the target that the source lacks: a switch would
/// otherwise fork history or lose those transactions. The target's position
/// must be read before the source's, or a commit in between makes a healthy
/// replica look ahead.
pub fn check_errant(
    target: &GtidState,
    source: &GtidState,
    to: &str,
    from: &str,
) -> Result<(), String> {
    let errant = target.not_in(source).map_err(|e| e.to_string())?;
    if errant.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{to} has transactions {from} does not ({errant}): switching would lose or fork them"
        ))
    }
}

/// Pure pre-checks: the plan, or the reason to refuse.
pub fn plan(
    req: &SwitchoverRequest,
    view: &ClusterView,
    observations: &Observations,
    default_max_lag: u32,
) -> Result<Plan, String> {
    let published = view
        .published
        .as_ref()
        .ok_or("no published source (master key absent or invalid)")?;
    let from = view
        .nodes
        .iter()
        .find(|n| same_addr(&n.addr, published))
        .ok_or_else(|| format!("published source {published} is not a node with an agent"))?;
    if !from.reachable {
        return Err(format!(
            "source {} is unreachable: that is a failover, not a successover",
            from.name
        ));
    }
    let source_obs = obs(observations, &from.name).ok_or("source not observed")?;
    if source_obs.read_only.read_only {
        return Err(format!("source {} is read-only", from.name));
    }
    let max_lag = req.max_lag_seconds.unwrap_or(default_max_lag);
    let candidates: Vec<&NodeView> = view
        .nodes
        .iter()
        .filter(|n| n.name != from.name && healthy_replica_of(n, &from.addr))
        .collect();
    let to = match &req.target {
        Some(t) => {
            let node =
                view.nodes.iter().find(|n| &n.name == t).ok_or_else(|| {
                    format!("{t} is not a node of {} with an agent", view.cluster)
                })?;
            if node.name == from.name {
                return Err(format!("{t} is already the source"));
            }
            if node.quarantined {
                return Err(format!("{t} is quarantined"));
            }
            if !node.reachable {
                return Err(format!("{t} is unreachable"));
            }
            if !healthy_replica_of(node, &from.addr) {
                return Err(format!(
                    "{t} is not replicating from {} (IO and SQL threads must run)",
                    from.name
                ));
            }
            node
        }
        // The semi-sync replica holds every acknowledged transaction; among
        // the rest, the least lagging, then by name for a stable choice.
        None => candidates
            .iter()
            .copied()
            .min_by_key(|n| {
                let lag = obs(observations, &n.name)
                    .and_then(|o| o.replica.as_ref())
                    .and_then(|r| r.seconds_behind_source)
                    .unwrap_or(u64::MAX);
                (!n.semi_sync_replica_active, lag, n.name.clone())
            })
            .ok_or("no healthy replica to switch to")?,
    };
    let target_obs = obs(observations, &to.name).ok_or("target not observed")?;
    let lag = target_obs
        .replica
        .as_ref()
        .and_then(|r| r.seconds_behind_source);
    match lag {
        Some(l) if l <= u64::from(max_lag) => {}
        _ if req.force => {}
        Some(l) => {
            return Err(format!(
                "{} lags {l} s behind {} (limit {max_lag} s; force to override)",
                to.name, from.name
            ))
        }
        None => return Err(format!("{} reports no lag figure", to.name)),
    }
    let semi_ok = source_obs.semi_sync.source_status_on && source_obs.semi_sync.clients > 0;
    if !semi_ok && !req.force {
        return Err(format!(
            "semi-sync is not healthy on {} (status {}, {} ACKing replica(s)); force to override",
            from.name,
            if source_obs.semi_sync.source_status_on {
                "ON"
            } else {
                "OFF"
            },
            source_obs.semi_sync.clients
        ));
    }
    let pair = from
        .replica
        .as_ref()
        .is_some_and(|r| same_addr(&r.source, &to.addr));
    let mut repoint: Vec<String> = view
        .nodes
        .iter()
        .filter(|n| n.name != to.name && n.name != from.name && n.reachable && !n.quarantined)
        .map(|n| n.name.clone())
        .collect();
    if !pair {
        repoint.push(from.name.clone());
    }
    // Keep the flag where it is if that replica stays a replica; otherwise
    // the old source, which is fully caught up by construction.
    let semi_sync = view
        .nodes
        .iter()
        .find(|n| {
            n.name != to.name
                && n.name != from.name
                && n.semi_sync_replica_active
                && healthy_replica_of(n, &from.addr)
        })
        .map(|n| n.name.clone())
        .unwrap_or_else(|| from.name.clone());
    Ok(Plan {
        from: from.name.clone(),
        from_addr: from.addr.clone(),
        to: to.name.clone(),
        to_addr: to.addr.clone(),
        pair,
        repoint,
        semi_sync,
        skip_catchup: req.skip_catchup,
    })
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Step recorder: timings for the audit entry.
pub(crate) struct Recorder {
    pub(crate) entry: HistoryEntry,
}

impl Recorder {
    pub(crate) fn record<T>(&mut self, name: &str, t: Timer, result: &Result<T, String>) {
        self.entry.steps.push(Step {
            name: name.to_owned(),
            started_ms: t.ms,
            duration_ms: t.at.elapsed().as_millis() as u64,
            ok: result.is_ok(),
            detail: result.as_ref().err().cloned().unwrap_or_default(),
        });
    }
}

impl Agent {
    pub(crate) fn lost_lock(&self) -> bool {
        self.membership.as_ref().is_none_or(|m| m.is_lost())
    }

    pub(crate) fn session_id(&self) -> Option<String> {
        self.membership
            .as_ref()
            .filter(|m| !m.is_lost())
            .map(|m| m.session.clone())
    }

    /// A txn that only commits while this agent holds the cluster lock.
    pub(crate) async fn guarded_txn(&self, mut ops: Vec<TxnOp>) -> Result<(), String> {
        let session = self.session_id().ok_or("coordinator session lost")?;
        ops.insert(
            0,
            TxnOp::check_session(self.keys.lock_key(&self.cluster), session),
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

    pub(crate) fn history_op(&self, entry: &HistoryEntry) -> TxnOp {
        TxnOp::set(
            self.keys.history_key(&self.cluster, &entry.id),
            serde_json::to_vec(entry).unwrap_or_default(),
        )
    }

    pub(crate) fn new_entry(&self, kind: ProcedureKind) -> HistoryEntry {
        HistoryEntry::start(kind, self.cluster.as_str(), self.node.as_str(), now_ms())
    }

    /// Handles a pending request: refuses it or runs it. The request key is
    /// consumed (CAS on its modify index) in the same txn that records the
    /// outcome or starts the procedure, so it is acted on exactly once.
    pub(crate) async fn handle_switchover(
        &mut self,
        kv: &ClusterKv,
        request: KvPair,
        view: &ClusterView,
        observations: &Observations,
    ) -> String {
        let consume = TxnOp::DeleteCas {
            key: request.key.clone(),
            index: request.modify_index,
        };
        let parsed = SwitchoverRequest::parse(request.value.as_deref().unwrap_or_default());
        let mut entry = self.new_entry(ProcedureKind::Switchover);
        entry.request = parsed.as_ref().ok().cloned();
        let default_lag = kv
            .settings
            .as_ref()
            .map(|s| s.max_lag_seconds)
            .unwrap_or(10);
        let planned = match &parsed {
            Err(e) => Err(format!("malformed request in {}: {e}", request.key)),
            Ok(_) if kv.in_progress.is_some() => Err("another switch is running".to_owned()),
            Ok(req) => plan(req, view, observations, default_lag),
        };
        let planned = match planned {
            Ok(plan) => self.errant_check(&plan).await.map(|()| plan),
            Err(e) => Err(e),
        };
        let plan = match planned {
            Ok(p) => p,
            Err(reason) => {
                entry.outcome = Outcome::Refused;
                entry.reason = reason.clone();
                entry.finished_ms = Some(now_ms());
                let op = self.history_op(&entry);
                return match self.guarded_txn(vec![consume, op]).await {
                    Ok(()) => format!("switchover refused: {reason}"),
                    Err(e) => format!("switchover refusal not recorded: {e}"),
                };
            }
        };
        entry.from = Some(plan.from.clone());
        entry.to = Some(plan.to.clone());
        entry.reason = format!("switching {} -> {}", plan.from, plan.to);
        let start = vec![
            consume,
            self.history_op(&entry),
            TxnOp::set(self.keys.in_progress_key(&self.cluster), entry.id.clone()),
        ];
        if let Err(e) = self.guarded_txn(start).await {
            return format!("switchover not started: {e}");
        }
        tracing::info!(
            id = entry.id,
            from = plan.from,
            to = plan.to,
            "switchover started"
        );
        self.run_switchover(plan, entry).await
    }

    async fn run_switchover(&mut self, plan: Plan, entry: HistoryEntry) -> String {
        let mut rec = Recorder { entry };
        let unavailable_from = Instant::now();
        // Clients killed on the old source until the switch is over, from
        // a connection of its own so the steps never wait for it.
        let kill_stop = CancellationToken::new();
        let killer = {
            let mut node = Node::new(node_config(
                &self.cfg,
                &plan.from_addr.host,
                plan.from_addr.port,
            ));
            let except = [self.cfg.user.clone(), self.cfg.replication_user.clone()];
            let stop = kill_stop.clone();
            tokio::spawn(async move {
                let except: Vec<&str> = except.iter().map(String::as_str).collect();
                let mut killed = 0usize;
                while !stop.is_cancelled() {
                    if let Ok(ids) = node.kill_client_connections(&except).await {
                        killed += ids.len();
                    }
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(KILL_INTERVAL) => {}
                    }
                }
                node.close().await;
                killed
            })
        };

        let outcome = self.switch_steps(&plan, &mut rec, unavailable_from).await;
        kill_stop.cancel();
        let killed = killer.await.unwrap_or(0);
        rec.entry
            .evidence
            .insert("client_connections_killed".into(), killed.into());

        let (outcome, reason) = match outcome {
            Ok(()) => (
                Outcome::Done,
                format!("{} is the source (was {})", plan.to, plan.from),
            ),
            Err(StepFailure::LockLost(why)) => {
                // The next coordinator recovers from KV; touch nothing.
                return format!("switchover interrupted, lock lost: {why}");
            }
            Err(StepFailure::RolledBack(why)) => (Outcome::Aborted, why),
            Err(StepFailure::Stuck(why)) => (Outcome::Failed, why),
        };
        rec.entry.outcome = outcome;
        rec.entry.reason = reason.clone();
        rec.entry.finished_ms = Some(now_ms());
        let ops = vec![
            self.history_op(&rec.entry),
            TxnOp::delete(self.keys.in_progress_key(&self.cluster)),
        ];
        if let Err(e) = self.guarded_txn(ops).await {
            tracing::warn!(error = e, "cannot record the switchover outcome");
        }
        tracing::info!(id = rec.entry.id, ?outcome, unavailable_ms = ?rec.entry.write_unavailable_ms, "switchover finished: {reason}");
        format!("switchover {}: {reason}", outcome.as_str())
    }

    async fn errant_check(&mut self, plan: &Plan) -> Result<(), String> {
        let target = self
            .on_node(&plan.to, async |n: &mut Node| n.gtid_executed().await)
            .await?;
        let source = self
            .on_node(&plan.from, async |n: &mut Node| n.gtid_executed().await)
            .await?;
        check_errant(&target, &source, &plan.to, &plan.from)?;
        self.binlog_state_check(&plan.to, &plan.from).await
    }

    /// MariaDB positions can hide a diverged transaction (same domain and
    /// sequence number, another server id); the binlog state, per server
    /// id, cannot. `Err` names what `node` holds that `source` lacks.
    pub(crate) async fn binlog_state_check(
        &mut self,
        node: &str,
        source: &str,
    ) -> Result<(), String> {
        let n = self
            .on_node(node, async |n: &mut Node| n.mariadb_binlog_state().await)
            .await?;
        let s = self
            .on_node(source, async |n: &mut Node| n.mariadb_binlog_state().await)
            .await?;
        let (Some(n), Some(s)) = (n, s) else {
            return Ok(());
        };
        let extra = crate::mysql::gtid::binlog_state_not_in(&n, &s);
        if extra.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{node} has transactions {source} does not ({}): switching would lose or fork them",
            extra
                .iter()
                .map(|(d, srv, q)| format!("{d}-{srv}-{q}"))
                .collect::<Vec<_>>()
                .join(",")
        ))
    }

    /// The txn ops that lift the fence procedure `id` set. A fence with
    /// another reason (an operator fenced the cluster while the procedure
    /// ran) stays: lifting it would undo their decision.
    pub(crate) async fn lift_own_fence(&self, id: &str) -> Vec<TxnOp> {
        let key = self.keys.failed_key(&self.cluster);
        match self.consul.kv_get(&key).await {
            Ok(Some(kv)) if kv.value_str().is_some_and(|v| v.contains(id)) => {
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

    pub(crate) fn check_lock(&self, before: &str) -> Result<(), StepFailure> {
        if self.lost_lock() {
            Err(StepFailure::LockLost(format!("before {before}")))
        } else {
            Ok(())
        }
    }

    pub(crate) async fn on_node<'a, T>(
        &'a mut self,
        name: &str,
        f: impl AsyncFnOnce(&'a mut Node) -> Result<T, crate::mysql::NodeError>,
    ) -> Result<T, String> {
        let node = if name == self.node.as_str() {
            &mut self.local
        } else {
            self.peers
                .get_mut(name)
                .ok_or_else(|| format!("no connection to {name}"))?
        };
        f(node).await.map_err(|e| e.to_string())
    }

    /// Points `name` at `source` with GTID auto-positioning; `semi_sync`
    /// sets its replica flag before the IO thread starts, so it connects in
    /// the right mode without a restart.
    pub(crate) async fn repoint(
        &mut self,
        name: &str,
        source: &Addr,
        semi_sync: bool,
        was_source: bool,
    ) -> Result<(), String> {
        let spec = SourceSpec::new(
            source.host.clone(),
            source.port,
            self.cfg.replication_user.clone(),
            self.cfg.replication_password.expose(),
        );
        self.on_node(name, async |n: &mut Node| {
            n.stop_replica().await?;
            n.align_gtid_slave_pos().await?;
            n.change_source(&spec).await?;
            if was_source {
                n.set_semi_sync_source(false).await?;
            }
            n.set_semi_sync_replica(semi_sync).await?;
            n.start_replica().await
        })
        .await
    }

    async fn switch_steps(
        &mut self,
        plan: &Plan,
        rec: &mut Recorder,
        unavailable_from: Instant,
    ) -> Result<(), StepFailure> {
        // 2. The old source stops taking writes.
        self.check_lock("read_only_old_source")?;
        let t = Timer::start();
        let r = self
            .on_node(&plan.from, async |n: &mut Node| n.set_read_only(true).await)
            .await;
        rec.record("read_only_old_source", t, &r);
        if let Err(e) = r {
            return Err(self
                .roll_back(
                    plan,
                    rec,
                    false,
                    format!("cannot make {} read-only: {e}", plan.from),
                )
                .await);
        }

        // 3. Fence at the proxies: no client reaches either node meanwhile.
        self.check_lock("fence")?;
        let t = Timer::start();
        let fence = serde_json::json!({
            "reason": format!("switchover {}", rec.entry.id),
            "by": self.node.as_str(),
            "at": now_ms() / 1000,
        });
        let ops = vec![
            TxnOp::set(self.keys.failed_key(&self.cluster), fence.to_string()),
            self.history_op(&rec.entry),
        ];
        let r = self.guarded_txn(ops).await;
        rec.record("fence", t, &r);
        if let Err(e) = r {
            return Err(self
                .roll_back(plan, rec, false, format!("cannot fence: {e}"))
                .await);
        }

        // 5. The target applies everything the old source committed.
        self.check_lock("catch_up")?;
        let t = Timer::start();
        let source_pos = match self
            .on_node(&plan.from, async |n: &mut Node| n.gtid_executed().await)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                let r: Result<(), String> = Err(e.clone());
                rec.record("catch_up", t, &r);
                return Err(self
                    .roll_back(
                        plan,
                        rec,
                        false,
                        format!("cannot read {}'s GTID position: {e}", plan.from),
                    )
                    .await);
            }
        };
        rec.entry.evidence.insert(
            "old_source_gtid_executed".into(),
            source_pos.to_string().into(),
        );
        let r = if plan.skip_catchup {
            Ok(())
        } else {
            let target = source_pos.clone();
            match self
                .on_node(&plan.to, async |n: &mut Node| {
                    n.wait_for_gtid(&target, CATCHUP_TIMEOUT).await
                })
                .await
            {
                Ok(true) => Ok(()),
                Ok(false) => Err(format!(
                    "{} did not apply {source_pos} within {CATCHUP_TIMEOUT:?}",
                    plan.to
                )),
                Err(e) => Err(e),
            }
        };
        rec.record("catch_up", t, &r);
        if let Err(e) = r {
            return Err(self.roll_back(plan, rec, false, e).await);
        }
        if let Ok(p) = self
            .on_node(&plan.to, async |n: &mut Node| n.gtid_executed().await)
            .await
        {
            rec.entry.evidence.insert(
                "target_gtid_executed_at_promotion".into(),
                p.to_string().into(),
            );
        }

        // 6. The target becomes a source in waiting: no longer a replica
        //    (unless it is half of a pair), semi-sync source flag on.
        self.check_lock("prepare_target")?;
        let t = Timer::start();
        let pair = plan.pair;
        let r = self
            .on_node(&plan.to, async |n: &mut Node| {
                if !pair {
                    n.stop_replica().await?;
                    n.reset_replica_all().await?;
                }
                n.set_semi_sync_replica(false).await?;
                n.set_semi_sync_source(true).await
            })
            .await;
        rec.record("prepare_target", t, &r);
        if let Err(e) = r {
            return Err(self
                .roll_back(plan, rec, true, format!("cannot prepare {}: {e}", plan.to))
                .await);
        }
        // The semi-sync replica first, so the new source's first commits
        // find an ACK waiting.
        self.check_lock("repoint_semi_sync_replica")?;
        let t = Timer::start();
        let semi = plan.semi_sync.clone();
        let r = self
            .repoint(&semi, &plan.to_addr, true, semi == plan.from)
            .await;
        rec.record(&format!("repoint_{semi}_semi_sync"), t, &r);
        if let Err(e) = r {
            return Err(self
                .roll_back(plan, rec, true, format!("cannot repoint {semi}: {e}"))
                .await);
        }

        // 7. Publish and unfence in one txn, then open the target for writes.
        self.check_lock("publish")?;
        let t = Timer::start();
        let master = self.keys.master_key(&self.cluster);
        let ops = vec![
            TxnOp::set(master.clone(), plan.to_addr.to_string()),
            TxnOp::set(format!("{master}/hostname"), plan.to_addr.host.clone()),
            TxnOp::set(format!("{master}/port"), plan.to_addr.port.to_string()),
            self.history_op(&rec.entry),
        ];
        let ops = [ops, self.lift_own_fence(&rec.entry.id).await].concat();
        let r = self.guarded_txn(ops).await;
        rec.record("publish", t, &r);
        if let Err(e) = r {
            if self.lost_lock() {
                return Err(StepFailure::LockLost(format!("publish: {e}")));
            }
            return Err(self
                .roll_back(plan, rec, true, format!("cannot publish: {e}"))
                .await);
        }
        let t = Timer::start();
        let mut r = Err(String::new());
        // Published already: retrying is the only way forward.
        for _ in 0..3 {
            r = self
                .on_node(&plan.to, async |n: &mut Node| n.set_read_only(false).await)
                .await;
            if r.is_ok() {
                break;
            }
        }
        rec.record("writable_target", t, &r);
        if let Err(e) = r {
            return Err(StepFailure::Stuck(format!(
                "{} is published but could not be made writable: {e}",
                plan.to
            )));
        }
        rec.entry.write_unavailable_ms = Some(unavailable_from.elapsed().as_millis() as u64);

        // 8. The remaining replicas follow the new source.
        for name in plan.repoint.iter().filter(|n| **n != plan.semi_sync) {
            let t = Timer::start();
            let r = self
                .repoint(name, &plan.to_addr, false, *name == plan.from)
                .await;
            rec.record(&format!("repoint_{name}"), t, &r);
            if let Err(e) = r {
                // The switch itself is done; decide() restores the rest.
                tracing::warn!(node = name, error = e, "repoint after switchover failed");
            }
        }
        Ok(())
    }

    /// Undoes a switch that has not been published: the old source becomes
    /// writable again, the fence is lifted first (a writable node in a
    /// fenced cluster would fence itself), and what was repointed goes back.
    async fn roll_back(
        &mut self,
        plan: &Plan,
        rec: &mut Recorder,
        target_touched: bool,
        why: String,
    ) -> StepFailure {
        if self.lost_lock() {
            return StepFailure::LockLost(why);
        }
        tracing::warn!(reason = why, "rolling back the switchover");
        let t = Timer::start();
        let mut problems = Vec::new();
        if target_touched {
            let back = [plan.to.clone(), plan.semi_sync.clone()];
            for name in back.iter().filter(|n| **n != plan.from) {
                let was_target = *name == plan.to;
                if let Err(e) = self.repoint(name, &plan.from_addr, false, was_target).await {
                    problems.push(format!("repoint {name} back: {e}"));
                }
            }
            if plan.semi_sync == plan.from {
                if let Err(e) = self
                    .on_node(&plan.from, async |n: &mut Node| {
                        n.stop_replica().await?;
                        n.reset_replica_all().await?;
                        n.set_semi_sync_replica(false).await?;
                        n.set_semi_sync_source(true).await
                    })
                    .await
                {
                    problems.push(format!("restore {}: {e}", plan.from));
                }
            }
        }
        let ops = self.lift_own_fence(&rec.entry.id).await;
        if let Err(e) = self.guarded_txn(ops).await {
            problems.push(format!("unfence: {e}"));
        }
        if let Err(e) = self
            .on_node(&plan.from, async |n: &mut Node| {
                n.set_read_only(false).await
            })
            .await
        {
            problems.push(format!("make {} writable: {e}", plan.from));
        }
        let r = if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        };
        rec.record("roll_back", t, &r);
        match r {
            Ok(()) => StepFailure::RolledBack(format!("rolled back: {why}")),
            Err(p) => StepFailure::Stuck(format!("roll back after '{why}' incomplete: {p}")),
        }
    }
}

pub(crate) struct Timer {
    at: Instant,
    ms: u64,
}

impl Timer {
    pub(crate) fn start() -> Timer {
        Timer {
            at: Instant::now(),
            ms: now_ms(),
        }
    }
}

pub(crate) enum StepFailure {
    LockLost(String),
    RolledBack(String),
    Stuck(String),
}

impl Agent {
    /// A coordinator found a switch under way that it did not start (the
    /// previous coordinator died or lost its lock). What KV and the servers
    /// show decides: published already → finish it; not published → roll it
    /// back. Either way there is never a second writable node: the old
    /// source is only made writable while the target is read-only.
    pub(crate) async fn recover(
        &mut self,
        kv: &ClusterKv,
        id: &str,
        view: &ClusterView,
        observations: &Observations,
    ) -> String {
        let key = self.keys.history_key(&self.cluster, id);
        let entry = match self.consul.kv_get(&key).await {
            Ok(Some(kv)) => {
                serde_json::from_slice::<HistoryEntry>(kv.value.as_deref().unwrap_or_default()).ok()
            }
            Ok(None) => None,
            Err(e) => return format!("cannot read interrupted procedure {id}: {e}"),
        };
        if let Some(e) = entry.as_ref().filter(|e| e.kind == ProcedureKind::Failover) {
            return self
                .recover_failover(kv, e.clone(), view, observations)
                .await;
        }
        let Some(mut entry) = entry.filter(|e| e.from.is_some() && e.to.is_some()) else {
            let _ = self
                .guarded_txn(vec![TxnOp::delete(
                    self.keys.in_progress_key(&self.cluster),
                )])
                .await;
            return format!("dropped unreadable in-progress marker {id}");
        };
        let from = entry.from.clone().unwrap_or_default();
        let to = entry.to.clone().unwrap_or_default();
        let addr = |name: &str| observations.get(name).map(|(a, _)| a.clone());
        let (Some(from_addr), Some(to_addr)) = (addr(&from), addr(&to)) else {
            return format!("interrupted switch {id}: {from} or {to} has no agent report; waiting");
        };
        let mut rec = Recorder {
            entry: entry.clone(),
        };
        let t = Timer::start();
        let published_to = kv
            .published
            .as_ref()
            .is_some_and(|p| same_addr(p, &to_addr));
        let published_from = kv
            .published
            .as_ref()
            .is_some_and(|p| same_addr(p, &from_addr));
        let (outcome, reason) = if published_to {
            let mut problems = Vec::new();
            if let Err(e) = self
                .on_node(&to, async |n: &mut Node| {
                    n.set_semi_sync_source(true).await?;
                    n.set_read_only(false).await
                })
                .await
            {
                problems.push(format!("make {to} writable: {e}"));
            }
            for (name, (_, o)) in observations.iter() {
                if *name == to {
                    continue;
                }
                let follows = o
                    .as_ref()
                    .and_then(|o| o.replica.as_ref())
                    .is_some_and(|r| {
                        r.source_host.eq_ignore_ascii_case(&to_addr.host)
                            && r.source_port == to_addr.port
                    });
                if o.is_some() && !follows {
                    if let Err(e) = self.repoint(name, &to_addr, false, *name == from).await {
                        problems.push(format!("repoint {name}: {e}"));
                    }
                }
            }
            if kv.fenced {
                if let Err(e) = self.guarded_txn(self.lift_own_fence(&entry.id).await).await {
                    problems.push(format!("unfence: {e}"));
                }
            }
            if problems.is_empty() {
                (
                    Outcome::Done,
                    format!(
                        "{to} is the source; finished by {} after the coordinator changed",
                        self.node
                    ),
                )
            } else {
                (
                    Outcome::Failed,
                    format!(
                        "finishing the switch to {to} failed: {}",
                        problems.join("; ")
                    ),
                )
            }
        } else if published_from {
            let plan = Plan {
                from: from.clone(),
                from_addr: from_addr.clone(),
                to: to.clone(),
                to_addr: to_addr.clone(),
                pair: false,
                repoint: Vec::new(),
                semi_sync: to.clone(),
                skip_catchup: false,
            };
            // The target must be read-only before the old source opens.
            let target_ro = self
                .on_node(&to, async |n: &mut Node| n.set_read_only(true).await)
                .await;
            let target_moved = observations
                .get(&to)
                .and_then(|(_, o)| o.as_ref())
                .is_none_or(|o| {
                    o.replica.as_ref().is_none_or(|r| {
                        !(r.source_host.eq_ignore_ascii_case(&from_addr.host)
                            && r.source_port == from_addr.port)
                    })
                });
            match target_ro {
                Err(e) => (
                    Outcome::Failed,
                    format!("cannot make {to} read-only, leaving the cluster fenced: {e}"),
                ),
                Ok(()) => match self
                    .roll_back(
                        &plan,
                        &mut rec,
                        target_moved,
                        "the coordinator changed mid-switch".into(),
                    )
                    .await
                {
                    StepFailure::RolledBack(why) => (Outcome::Aborted, why),
                    StepFailure::Stuck(why) | StepFailure::LockLost(why) => (Outcome::Failed, why),
                },
            }
        } else {
            (
                Outcome::Failed,
                format!("master key names neither {from} nor {to}; an operator changed it"),
            )
        };
        let r: Result<(), String> = Ok(());
        rec.record("recover", t, &r);
        entry = rec.entry;
        entry.outcome = outcome;
        entry.reason = reason.clone();
        entry.finished_ms = Some(now_ms());
        let ops = vec![
            self.history_op(&entry),
            TxnOp::delete(self.keys.in_progress_key(&self.cluster)),
        ];
        if let Err(e) = self.guarded_txn(ops).await {
            return format!("recovery of {id} not recorded: {e}");
        }
        tracing::warn!(id, ?outcome, "recovered interrupted switch: {reason}");
        format!("interrupted switch {id} {}: {reason}", outcome.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mysql::{
        Flavor, GtidPos, IoRunning, ReadOnly, ReplicaGtid, ReplicaStatus, SemiSyncPlugins,
        SemiSyncState, ServerInfo, UsingGtid, Version,
    };
    use crate::observe::node_view;

    fn addr(port: u16) -> Addr {
        Addr {
            host: "127.0.0.1".into(),
            port,
        }
    }

    fn pos(s: &str) -> GtidPos {
        GtidPos::parse(s).unwrap()
    }

    fn observation(
        replica_of: Option<(u16, u64)>,
        read_only: bool,
        gtid: &str,
        semi_source: bool,
        semi_replica: bool,
    ) -> Observation {
        Observation {
            info: ServerInfo {
                flavor: Flavor::MariaDb {
                    version: Version::new(10, 11, 19),
                },
                version_string: "10.11.19-MariaDB".into(),
                version_comment: "Debian 12".into(),
                server_id: 1,
                server_uuid: None,
                connection_id: 1,
                backslash_escapes: true,
            },
            read_only: ReadOnly {
                read_only,
                super_read_only: None,
            },
            replica: replica_of.map(|(port, lag)| ReplicaStatus {
                source_host: "127.0.0.1".into(),
                source_port: port,
                source_user: "repl".into(),
                source_server_id: 1,
                io_running: IoRunning::Yes,
                sql_running: true,
                io_state: String::new(),
                sql_running_state: String::new(),
                seconds_behind_source: Some(lag),
                last_io_errno: 0,
                last_io_error: String::new(),
                last_sql_errno: 0,
                last_sql_error: String::new(),
                gtid: ReplicaGtid::MariaDb {
                    using_gtid: UsingGtid::SlavePos,
                    io_pos: pos(gtid),
                },
            }),
            gtid_executed: GtidState::MariaDb(pos(gtid)),
            semi_sync: SemiSyncState {
                plugins: SemiSyncPlugins::default(),
                source_enabled: semi_source,
                replica_enabled: semi_replica,
                source_status_on: semi_source,
                replica_status_on: semi_replica,
                clients: u64::from(semi_source),
                yes_tx: 0,
                wait_sessions: 0,
                no_tx: 0,
                wait_point: None,
                timeout_ms: None,
                wait_no_replica: None,
                wait_for_replica_count: None,
            },
            client_connections: 0,
            heartbeats: None,
        }
    }

    /// db1 source; db2 semi-sync replica; db3 async replica lagging `lag3`.
    fn cluster(lag3: u64) -> (ClusterView, Observations) {
        let mut obs = Observations::new();
        obs.insert(
            "db1".into(),
            (
                addr(1),
                Some(observation(None, false, "0-1-10", true, false)),
            ),
        );
        obs.insert(
            "db2".into(),
            (
                addr(2),
                Some(observation(Some((1, 0)), true, "0-1-10", false, true)),
            ),
        );
        obs.insert(
            "db3".into(),
            (
                addr(3),
                Some(observation(Some((1, lag3)), true, "0-1-9", false, false)),
            ),
        );
        let view = ClusterView {
            cluster: "c1".into(),
            nodes: obs
                .iter()
                .map(|(n, (a, o))| node_view(n, a.clone(), o.as_ref(), false))
                .collect(),
            published: Some(addr(1)),
            fenced: false,
            procedure_running: false,
            maintenance: false,
            semi_sync_replicas: 1,
        };
        (view, obs)
    }

    fn req(target: Option<&str>) -> SwitchoverRequest {
        SwitchoverRequest {
            target: target.map(str::to_owned),
            ..SwitchoverRequest::default()
        }
    }

    #[test]
    fn no_target_picks_the_semi_sync_replica() {
        let (view, obs) = cluster(0);
        let p = plan(&req(None), &view, &obs, 10).unwrap();
        assert_eq!((p.from.as_str(), p.to.as_str()), ("db1", "db2"));
        assert!(!p.pair);
        assert_eq!(p.repoint, vec!["db3".to_owned(), "db1".to_owned()]);
        // The old source takes the semi-sync flag: db2, which had it, is
        // the new source.
        assert_eq!(p.semi_sync, "db1");
    }

    #[test]
    fn switching_to_the_async_replica_keeps_the_semi_sync_replica() {
        let (view, obs) = cluster(0);
        let p = plan(&req(Some("db3")), &view, &obs, 10).unwrap();
        assert_eq!(p.to, "db3");
        assert_eq!(p.semi_sync, "db2");
    }

    #[test]
    fn refusals() {
        let (view, obs) = cluster(30);
        let err = plan(&req(Some("db3")), &view, &obs, 10).unwrap_err();
        assert_eq!(
            err,
            "db3 lags 30 s behind db1 (limit 10 s; force to override)"
        );
        let mut forced = req(Some("db3"));
        forced.force = true;
        assert!(
            plan(&forced, &view, &obs, 10).is_ok(),
            "force skips the lag refusal"
        );

        assert_eq!(
            plan(&req(Some("db9")), &view, &obs, 10).unwrap_err(),
            "db9 is not a node of c1 with an agent"
        );
        assert_eq!(
            plan(&req(Some("db1")), &view, &obs, 10).unwrap_err(),
            "db1 is already the source"
        );

        let (mut view, obs) = cluster(0);
        view.nodes[2].replica.as_mut().unwrap().sql_running = false;
        assert_eq!(
            plan(&req(Some("db3")), &view, &obs, 10).unwrap_err(),
            "db3 is not replicating from db1 (IO and SQL threads must run)"
        );

        let (mut view, obs) = cluster(0);
        view.nodes[0].reachable = false;
        assert!(plan(&req(None), &view, &obs, 10)
            .unwrap_err()
            .contains("that is a failover"));

        let (mut view, obs) = cluster(0);
        view.nodes[1].quarantined = true;
        assert_eq!(
            plan(&req(Some("db2")), &view, &obs, 10).unwrap_err(),
            "db2 is quarantined"
        );
    }

    #[test]
    fn unhealthy_semi_sync_refuses_unless_forced() {
        let (view, mut obs) = cluster(0);
        let source = obs.get_mut("db1").unwrap().1.as_mut().unwrap();
        source.semi_sync.clients = 0;
        let err = plan(&req(Some("db2")), &view, &obs, 10).unwrap_err();
        assert!(err.starts_with("semi-sync is not healthy on db1"), "{err}");
        let mut forced = req(Some("db2"));
        forced.force = true;
        assert!(plan(&forced, &view, &obs, 10).is_ok());
    }

    #[test]
    fn a_primary_primary_pair_is_detected() {
        let (mut view, obs) = cluster(0);
        view.nodes[0].replica = Some(crate::decide::ReplicaView {
            source: addr(2),
            io_running: true,
            sql_running: true,
        });
        let p = plan(&req(Some("db2")), &view, &obs, 10).unwrap();
        assert!(p.pair);
        assert_eq!(p.repoint, vec!["db3".to_owned()], "db1 already follows db2");
    }

    #[test]
    fn errant_transactions_on_the_target_refuse() {
        let target = GtidState::MariaDb(pos("0-1-10,1-2-3"));
        let source = GtidState::MariaDb(pos("0-1-12"));
        let err = check_errant(&target, &source, "db2", "db1").unwrap_err();
        assert!(
            err.starts_with("db2 has transactions db1 does not (1-2-3)"),
            "{err}"
        );
        assert!(check_errant(&GtidState::MariaDb(pos("0-1-10")), &source, "db2", "db1").is_ok());
    }
}
