//! The agent's cycle: observe the local server, report it, fence it if it
//! is writable but not the published source, compete for the cluster's
//! coordinator lock, and — as coordinator — observe every node, decide and
//! execute. Each cycle ends in one sentence saying what it did and why.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use successover_common::consul::{Consul, ConsulError, TxnOp, TxnOutcome};
use successover_common::contract::{ClusterName, Keys, NodeName};
use tokio::time::Instant;

use crate::cluster::{self, same_addr, ClusterKv};
use crate::config::Config;
use crate::decide::{decide, Action, Addr, ClusterView};
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::mysql::{Node, NodeConfig};
use crate::observe::{node_view, observe, Observation};
use crate::report::HealthReport;

/// How many cycles the published source's agent leaves a free lock to the
/// others before taking it itself: a coordinator on the source host would
/// die with the source and leave nobody to notice quickly.
const SOURCE_AGENT_LOCK_PATIENCE: u32 = 3;

pub struct Agent {
    pub(crate) cfg: Config,
    pub(crate) consul: Consul,
    pub(crate) keys: Keys,
    pub(crate) cluster: ClusterName,
    pub(crate) node: NodeName,
    pub(crate) local: Node,
    pub(crate) peers: BTreeMap<String, Node>,
    pub(crate) membership: Option<Membership>,
    last_report: Option<HealthReport>,
    last_report_write: Option<Instant>,
    free_lock_seen: u32,
    coordinating: bool,
    /// Every node seen in a report since start, so a source whose agent
    /// vanished with its host is still probed and can be failed over.
    pub(crate) known: BTreeMap<String, Addr>,
    /// Consecutive cycles the published source looked dead.
    /// The source that looked dead, how many times, and when the count
    /// last went up.
    pub(crate) suspect: Option<(String, u32, Instant)>,
    /// A failover that could not start was already recorded for this
    /// incident; don't write the same refusal every cycle.
    pub(crate) incident_recorded: bool,
    /// Per replica: what it had received (position, heartbeats) and since
    /// when, to tell a replica that still hears its source from one that
    /// only has not timed out yet.
    pub(crate) progress: BTreeMap<String, (String, Option<u64>, Instant)>,
    /// Consecutive cycles in which commits on the source waited for an ACK.
    stalled_cycles: u32,
    pub metrics: Arc<Metrics>,
}

/// What one cycle did, for the log line and for tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CycleOutcome {
    /// Whether the cycle got as far as Consul (session and cluster state).
    pub reached_consul: bool,
    pub coordinator: bool,
    pub reason: String,
    pub actions: Vec<Action>,
}

impl Agent {
    pub fn new(cfg: Config, metrics: Arc<Metrics>) -> Result<Agent, String> {
        let consul = Consul::new(cfg.consul.clone()).map_err(|e| e.to_string())?;
        let keys = Keys::new(&cfg.prefix).map_err(|e| format!("prefix: {e}"))?;
        let cluster = ClusterName::parse(&cfg.cluster).map_err(|e| format!("cluster: {e}"))?;
        let node = NodeName::parse(&cfg.node).map_err(|e| format!("node: {e}"))?;
        let local = Node::new(node_config(&cfg, &cfg.local.host, cfg.local.port));
        Ok(Agent {
            cfg,
            consul,
            keys,
            cluster,
            node,
            local,
            peers: BTreeMap::new(),
            membership: None,
            last_report: None,
            last_report_write: None,
            free_lock_seen: 0,
            coordinating: false,
            known: BTreeMap::new(),
            suspect: None,
            incident_recorded: false,
            progress: BTreeMap::new(),
            stalled_cycles: 0,
            metrics,
        })
    }

    pub fn consul(&self) -> &Consul {
        &self.consul
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn cluster(&self) -> &ClusterName {
        &self.cluster
    }

    fn advertise(&self) -> Addr {
        Addr {
            host: self.cfg.advertise.host.clone(),
            port: self.cfg.advertise.port,
        }
    }

    fn lock_key(&self) -> String {
        self.keys.lock_key(&self.cluster)
    }

    /// Takes a new configuration on SIGHUP. Identity (cluster, node, prefix)
    /// cannot change under a running session; those need a restart.
    pub fn reload(&mut self, cfg: Config) -> Result<(), String> {
        if cfg.cluster != self.cfg.cluster
            || cfg.node != self.cfg.node
            || cfg.prefix != self.cfg.prefix
        {
            return Err(
                "cluster, node and prefix cannot change on reload; restart the agent".into(),
            );
        }
        self.consul = Consul::new(cfg.consul.clone()).map_err(|e| e.to_string())?;
        self.local = Node::new(node_config(&cfg, &cfg.local.host, cfg.local.port));
        self.peers.clear();
        self.cfg = cfg;
        Ok(())
    }

    pub fn tick(&self) -> Duration {
        self.cfg.tick
    }

    pub async fn cycle(&mut self) -> CycleOutcome {
        let outcome = self.cycle_inner().await;
        self.metrics.cycle(
            outcome.coordinator,
            self.last_report.as_ref().is_some_and(|r| r.up),
        );
        outcome
    }

    async fn cycle_inner(&mut self) -> CycleOutcome {
        let local = observe(&mut self.local).await.map_err(|e| e.to_string());
        if local.is_err() {
            self.metrics.error("mysql");
        }
        if let Err(err) = self.ensure_membership().await {
            self.metrics.error("consul");
            return self.idle(format!("cannot create a Consul session: {err}"));
        }
        let kv = match cluster::read(&self.consul, &self.keys, &self.cluster).await {
            Ok(kv) => kv,
            Err(err) => {
                self.metrics.error("consul");
                // Without a view of KV nothing may be decided; the lock
                // (if held) is kept by the session until it expires.
                return self.idle(format!("cannot read cluster state from Consul: {err}"));
            }
        };
        for (key, why) in &kv.rejected {
            tracing::warn!(key, why, "ignoring invalid KV value");
        }
        // Every agent remembers every node it has seen, so whichever one
        // becomes coordinator can still reach a node whose agent (and so
        // whose report) is gone.
        for (name, report) in &kv.reports {
            if let Ok(hp) = successover_common::contract::HostPort::parse(&report.addr) {
                self.known.insert(name.clone(), cluster::addr_of(&hp));
            }
        }
        self.report(&local).await;

        let mut reasons = Vec::new();
        if let Some(why) = self.self_fence(&local, &kv).await {
            reasons.push(why);
        }

        let coordinator = match self.coordinate_lock(&kv).await {
            Ok(c) => c,
            Err(err) => {
                self.metrics.error("lock");
                reasons.push(format!("lock: {err}"));
                false
            }
        };
        self.coordinating = coordinator;
        if !coordinator {
            if reasons.is_empty() {
                reasons.push("member: another agent coordinates".to_owned());
            }
            return CycleOutcome {
                reached_consul: true,
                coordinator: false,
                reason: reasons.join("; "),
                actions: Vec::new(),
            };
        }

        if let Some(why) = &kv.published_invalid {
            // Publishing over a value someone wrote (even a broken one)
            // could route writes to a node they did not choose.
            reasons.push(format!("master key is invalid, not acting: {why}"));
            return CycleOutcome {
                reached_consul: true,
                coordinator: true,
                reason: reasons.join("; "),
                actions: Vec::new(),
            };
        }
        let observations = self.observe_cluster(local).await;
        let view = build_view(&self.cluster, &kv, &observations);
        // A procedure owns the cluster while it runs: an interrupted one is
        // finished or rolled back first, a request is handled next, and
        // only then are the invariants enforced.
        if let Some(id) = kv.in_progress.clone() {
            reasons.push(self.recover(&kv, &id, &view, &observations).await);
            return CycleOutcome {
                reached_consul: true,
                coordinator: true,
                reason: reasons.join("; "),
                actions: Vec::new(),
            };
        }
        if view.maintenance {
            reasons.push("maintenance mode: automation suspended".to_owned());
            return CycleOutcome {
                reached_consul: true,
                coordinator: true,
                reason: reasons.join("; "),
                actions: Vec::new(),
            };
        }
        if let Some(reason) = self.watch_source(&kv, &view, &observations).await {
            reasons.push(reason);
            return CycleOutcome {
                reached_consul: true,
                coordinator: true,
                reason: reasons.join("; "),
                actions: Vec::new(),
            };
        }
        if let Some(reason) = self.handle_rejoins(&kv, &observations).await {
            reasons.push(reason);
            return CycleOutcome {
                reached_consul: true,
                coordinator: true,
                reason: reasons.join("; "),
                actions: Vec::new(),
            };
        }
        if let Some(request) = kv.switchover.clone() {
            reasons.push(
                self.handle_switchover(&kv, request, &view, &observations)
                    .await,
            );
            return CycleOutcome {
                reached_consul: true,
                coordinator: true,
                reason: reasons.join("; "),
                actions: Vec::new(),
            };
        }
        if let Some(reason) = self.release_stalled_commits(&view, &observations).await {
            reasons.push(reason);
        }
        let decision = decide(&view);
        let mut reason = decision.reason.clone();
        if !decision.actions.is_empty() {
            let mut failures = self.execute(&decision.actions).await;
            if let Some(e) = self.release_waiting_commits(&decision.actions, &view).await {
                failures.push(e);
            }
            if !failures.is_empty() {
                reason = format!("{reason}; failed: {}", failures.join("; "));
            }
        }
        reasons.push(reason);
        CycleOutcome {
            reached_consul: true,
            coordinator: true,
            reason: reasons.join("; "),
            actions: decision.actions,
        }
    }

    fn idle(&mut self, reason: String) -> CycleOutcome {
        self.coordinating = false;
        CycleOutcome {
            reached_consul: false,
            coordinator: false,
            reason,
            actions: Vec::new(),
        }
    }

    async fn ensure_membership(&mut self) -> Result<(), ConsulError> {
        if self.membership.as_ref().is_some_and(|m| !m.is_lost()) {
            return Ok(());
        }
        if let Some(old) = self.membership.take() {
            self.metrics.session_lost();
            self.last_report = None;
            let _ = old.destroy().await;
        }
        let m = Membership::create(
            &self.consul,
            format!("successover-agent {}/{}", self.cluster, self.node),
            format!("successover-agent:{}:{}", self.cluster, self.node),
            self.cfg.session_ttl,
            self.cfg.lock_delay,
        )
        .await?;
        self.membership = Some(m);
        Ok(())
    }

    fn session(&self) -> Option<&str> {
        self.membership
            .as_ref()
            .filter(|m| !m.is_lost())
            .map(|m| m.session.as_str())
    }

    /// Writes the report when it changed materially or the heartbeat is
    /// due: a KV write is a Raft round, and thousands of agents share one
    /// Consul (DESIGN.md "Scale").
    async fn report(&mut self, local: &Result<Observation, String>) {
        let Some(session) = self.session().map(str::to_owned) else {
            return;
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let report = HealthReport::new(
            self.cluster.as_str(),
            self.node.as_str(),
            &self.advertise().to_string(),
            now_ms,
            local,
        );
        let due = self
            .last_report_write
            .is_none_or(|t| t.elapsed() >= self.cfg.report_heartbeat);
        let changed = self
            .last_report
            .as_ref()
            .is_none_or(|prev| prev.differs_materially(&report));
        if !due && !changed {
            return;
        }
        let body = match serde_json::to_vec(&report) {
            Ok(b) => b,
            Err(_) => return,
        };
        let key = self.keys.agent_key(&self.cluster, &self.node);
        match self.consul.kv_acquire(&key, body, &session).await {
            Ok(true) => {
                self.metrics.report_write();
                self.last_report = Some(report);
                self.last_report_write = Some(Instant::now());
            }
            Ok(false) => {
                self.metrics.error("report");
                tracing::warn!(key, "health report key is held by another session");
            }
            Err(err) => {
                self.metrics.error("report");
                tracing::warn!(error = %err, "cannot write the health report");
            }
        }
    }

    /// Rule 8: a writable server that is not the published source (or is
    /// fenced, or quarantined) is made read-only and its clients are cut,
    /// whatever the coordinator is doing: clients that bypass the proxy are
    /// the reason.
    async fn self_fence(
        &mut self,
        local: &Result<Observation, String>,
        kv: &ClusterKv,
    ) -> Option<String> {
        let Ok(obs) = local else { return None };
        if obs.read_only.read_only {
            return None;
        }
        let me = self.advertise();
        let why = if kv.fenced {
            "cluster is fenced".to_owned()
        } else if kv.quarantined.contains(self.node.as_str()) {
            "this node is quarantined".to_owned()
        } else {
            match &kv.published {
                Some(p) if !same_addr(p, &me) => format!("{p} is the published source"),
                _ => return None,
            }
        };
        let ok_ro = self.local.set_read_only(true).await;
        let killed = self
            .local
            .kill_client_connections(&[self.cfg.user.as_str(), self.cfg.replication_user.as_str()])
            .await;
        self.metrics.self_fence();
        Some(match (ok_ro, killed) {
            (Ok(()), Ok(ids)) => format!(
                "self-fenced: set read_only and killed {} client connection(s) because {why}",
                ids.len()
            ),
            (Err(e), _) | (_, Err(e)) => {
                self.metrics.error("mysql");
                format!("self-fence failed ({why}): {e}")
            }
        })
    }

    /// Holds, takes, hands over or leaves the coordinator lock. Returns
    /// whether this agent coordinates this cycle.
    async fn coordinate_lock(&mut self, kv: &ClusterKv) -> Result<bool, ConsulError> {
        let Some(membership) = self.membership.as_ref().filter(|m| !m.is_lost()) else {
            return Ok(false);
        };
        let key = self.lock_key();
        let holder = self.consul.kv_get(&key).await?.and_then(|kv| kv.session);
        let me_source = kv
            .published
            .as_ref()
            .is_some_and(|p| same_addr(p, &self.advertise()));
        let other_live_agent = kv
            .reports
            .values()
            .any(|r| r.node != self.node.as_str() && r.up);
        match holder {
            Some(h) if h == membership.session => {
                if me_source && other_live_agent {
                    membership.unlock(&key).await?;
                    self.free_lock_seen = 0;
                    tracing::info!("handing the coordinator lock to an agent not on the source");
                    return Ok(false);
                }
                Ok(true)
            }
            Some(_) => {
                self.free_lock_seen = 0;
                Ok(false)
            }
            None => {
                self.free_lock_seen += 1;
                if me_source
                    && other_live_agent
                    && self.free_lock_seen <= SOURCE_AGENT_LOCK_PATIENCE
                {
                    return Ok(false);
                }
                let holder_info = format!("{}/{}", self.cluster, self.node);
                let got = membership.try_lock(&key, &holder_info).await?;
                if got {
                    tracing::info!(lock = key, "became coordinator");
                }
                Ok(got)
            }
        }
    }

    /// Observes every known node (the local one reuses this cycle's
    /// observation), concurrently and each with its own timeouts.
    async fn observe_cluster(
        &mut self,
        local: Result<Observation, String>,
    ) -> BTreeMap<String, (Addr, Option<Observation>)> {
        let mut out = BTreeMap::new();
        out.insert(
            self.node.as_str().to_owned(),
            (self.advertise(), local.ok()),
        );
        let mut tasks = tokio::task::JoinSet::new();
        for (name, addr) in self.known.clone() {
            if name == self.node.as_str() {
                continue;
            }
            let mut node = match self.peers.remove(&name) {
                Some(n) if n.addr() == addr.to_string() => n,
                _ => Node::new(node_config(&self.cfg, &addr.host, addr.port)),
            };
            let name = name.clone();
            tasks.spawn(async move {
                let obs = observe(&mut node).await;
                (name, addr, node, obs)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let Ok((name, addr, node, obs)) = joined else {
                continue;
            };
            if let Err(e) = &obs {
                tracing::debug!(node = name, error = %e, "cannot observe peer");
            }
            out.insert(name.clone(), (addr, obs.ok()));
            self.peers.insert(name, node);
        }
        out
    }

    fn node_mut(&mut self, name: &str) -> Option<&mut Node> {
        if name == self.node.as_str() {
            Some(&mut self.local)
        } else {
            self.peers.get_mut(name)
        }
    }

    /// Runs the decided actions in order; returns what failed. The next
    /// cycle observes everything again, so a failed or half-done action is
    /// simply decided again from fresh state.
    async fn execute(&mut self, actions: &[Action]) -> Vec<String> {
        let mut failures = Vec::new();
        let protected = [self.cfg.user.clone(), self.cfg.replication_user.clone()];
        for action in actions {
            let (label, result) = match action {
                Action::Publish { node, addr } => ("publish", self.publish(node, addr).await),
                Action::SetReadOnly { node, read_only } => {
                    let r = match self.node_mut(node) {
                        Some(n) => n.set_read_only(*read_only).await.map_err(|e| e.to_string()),
                        None => Err(format!("no connection to {node}")),
                    };
                    ("set_read_only", r)
                }
                Action::KillClients { node } => {
                    let except: Vec<&str> = protected.iter().map(String::as_str).collect();
                    let r = match self.node_mut(node) {
                        Some(n) => n
                            .kill_client_connections(&except)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                        None => Err(format!("no connection to {node}")),
                    };
                    ("kill_clients", r)
                }
                Action::SetSemiSyncSource { node, enabled } => {
                    let r = match self.node_mut(node) {
                        Some(n) => n
                            .set_semi_sync_source(*enabled)
                            .await
                            .map_err(|e| e.to_string()),
                        None => Err(format!("no connection to {node}")),
                    };
                    ("set_semi_sync_source", r)
                }
                Action::SetSemiSyncReplica { node, enabled } => {
                    let r = match self.node_mut(node) {
                        Some(n) => n
                            .set_semi_sync_replica(*enabled)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                        None => Err(format!("no connection to {node}")),
                    };
                    ("set_semi_sync_replica", r)
                }
                Action::RestartIoThread { node } => {
                    let r = match self.node_mut(node) {
                        Some(n) => match n.stop_io_thread().await {
                            Ok(()) => n.start_io_thread().await.map_err(|e| e.to_string()),
                            Err(e) => Err(e.to_string()),
                        },
                        None => Err(format!("no connection to {node}")),
                    };
                    ("restart_io_thread", r)
                }
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
        failures
    }

    /// After a replica got the semi-sync flag (or its IO thread was
    /// restarted into semi-sync mode), commits already waiting on the source
    /// need a later transaction for that replica to acknowledge; without
    /// it, a writer stuck behind a dead semi-sync replica stays stuck.
    async fn release_waiting_commits(
        &mut self,
        actions: &[Action],
        view: &ClusterView,
    ) -> Option<String> {
        let moved = actions.iter().any(|a| {
            matches!(
                a,
                Action::SetSemiSyncReplica { enabled: true, .. } | Action::RestartIoThread { .. }
            )
        });
        if !moved {
            return None;
        }
        let source = view
            .published
            .as_ref()
            .and_then(|p| view.nodes.iter().find(|n| same_addr(&n.addr, p)))
            .filter(|n| n.reachable)?
            .name
            .clone();
        let node = self.node_mut(&source)?;
        match node.write_heartbeat().await {
            Ok(()) => None,
            Err(e) => {
                self.metrics.error("mysql");
                Some(format!("heartbeat write on {source}: {e}"))
            }
        }
    }

    /// Commits on the source can wait for an ACK that never comes: the
    /// semi-sync replica died with a commit pending, and the replica that
    /// took over its flag had already received that commit asynchronously,
    /// so it reconnects past it and never acknowledges it; with AFTER_SYNC
    /// the commits behind it cannot reach the binlog either, so no later
    /// ACK comes. Once the ACKing replica provably holds everything in the
    /// source's binlog (its received position, read after the source's,
    /// covers it), the waiting commits are released by turning the source
    /// flag off and on. Commits that reach the binlog in that instant are
    /// acknowledged without waiting; the replica is streaming and receives
    /// them within milliseconds.
    async fn release_stalled_commits(
        &mut self,
        view: &ClusterView,
        observations: &BTreeMap<String, (Addr, Option<Observation>)>,
    ) -> Option<String> {
        let source = view
            .published
            .as_ref()
            .and_then(|p| view.nodes.iter().find(|n| same_addr(&n.addr, p)))
            .filter(|n| n.reachable)?
            .clone();
        let waiting = observations
            .get(&source.name)
            .and_then(|(_, o)| o.as_ref())
            .map(|o| o.semi_sync.wait_sessions)
            .unwrap_or(0);
        if waiting == 0 {
            self.stalled_cycles = 0;
            return None;
        }
        self.stalled_cycles += 1;
        if self.stalled_cycles < 3 {
            return None;
        }
        let ackers: Vec<String> = view
            .nodes
            .iter()
            .filter(|n| n.reachable && n.semi_sync_replica_active)
            .filter(|n| {
                n.replica
                    .as_ref()
                    .is_some_and(|r| same_addr(&r.source, &source.addr) && r.io_running)
            })
            .map(|n| n.name.clone())
            .collect();
        let [acker] = ackers.as_slice() else {
            return Some(format!(
                "{waiting} commit(s) on {} wait for an ACK and no single ACKing replica can be checked",
                source.name
            ));
        };
        let acker = acker.clone();
        let binlog = match self.node_mut(&source.name)?.gtid_executed().await {
            Ok(p) => p,
            Err(e) => return Some(format!("stalled commits: cannot read {}: {e}", source.name)),
        };
        let received = match self.node_mut(&acker)?.replica_status().await {
            Ok(Some(r)) => r.received(),
            Ok(None) => return None,
            Err(e) => return Some(format!("stalled commits: cannot read {acker}: {e}")),
        };
        if !received.contains(&binlog).unwrap_or(false) {
            return Some(format!(
                "{waiting} commit(s) on {} wait for an ACK; {acker} has not received {binlog} yet",
                source.name
            ));
        }
        let node = self.node_mut(&source.name)?;
        let released = match node.set_semi_sync_source(false).await {
            Ok(()) => node.set_semi_sync_source(true).await,
            Err(e) => {
                // Never leave the source asynchronous.
                let _ = node.set_semi_sync_source(true).await;
                Err(e)
            }
        };
        self.stalled_cycles = 0;
        self.metrics
            .action("release_stalled_commits", released.is_ok());
        match released {
            Ok(()) => {
                tracing::warn!(source = source.name, acker, %binlog, waiting, "released commits stalled on an ACK that could not come; the ACKing replica holds them");
                Some(format!(
                    "released {waiting} commit(s) stalled on {}: {acker} had received all of {binlog}",
                    source.name
                ))
            }
            Err(e) => Some(format!(
                "releasing stalled commits on {} failed: {e}",
                source.name
            )),
        }
    }

    /// Publishes `master` (+ `/hostname`, `/port`) in one txn that only
    /// commits while this agent's session holds the lock and the key is
    /// still absent: a coordinator that lost its lock, or an operator who
    /// wrote the key meanwhile, wins.
    async fn publish(&self, node: &str, addr: &Addr) -> Result<(), String> {
        let Some(session) = self.session() else {
            return Err("no session".into());
        };
        let master = self.keys.master_key(&self.cluster);
        let ops = vec![
            TxnOp::check_session(self.lock_key(), session),
            TxnOp::CheckNotExists {
                key: master.clone(),
            },
            TxnOp::set(master.clone(), addr.to_string()),
            TxnOp::set(format!("{master}/hostname"), addr.host.clone()),
            TxnOp::set(format!("{master}/port"), addr.port.to_string()),
        ];
        match self.consul.txn(&ops).await {
            Ok(TxnOutcome::Committed(_)) => {
                tracing::info!(node, %addr, "published source");
                Ok(())
            }
            Ok(TxnOutcome::RolledBack(errors)) => Err(format!(
                "publish rolled back: {}",
                errors
                    .iter()
                    .map(|e| e.what.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Ordered shutdown: release the lock, destroy the session (which also
    /// deletes the health report), close connections.
    pub async fn shutdown(mut self) {
        if let Some(m) = self.membership.take() {
            let key = self.lock_key();
            if self.coordinating {
                match m.unlock(&key).await {
                    Ok(_) => tracing::info!(lock = key, "released the coordinator lock"),
                    Err(e) => tracing::warn!(error = %e, "cannot release the coordinator lock"),
                }
            }
            if let Err(e) = m.destroy().await {
                tracing::warn!(error = %e, "cannot destroy the Consul session");
            }
        }
        for (_, node) in std::mem::take(&mut self.peers) {
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

pub fn build_view(
    cluster: &ClusterName,
    kv: &ClusterKv,
    observations: &BTreeMap<String, (Addr, Option<Observation>)>,
) -> ClusterView {
    ClusterView {
        cluster: cluster.as_str().to_owned(),
        nodes: observations
            .iter()
            .map(|(name, (addr, obs))| {
                node_view(
                    name,
                    addr.clone(),
                    obs.as_ref(),
                    kv.quarantined.contains(name),
                )
            })
            .collect(),
        published: kv.published.clone(),
        fenced: kv.fenced,
        procedure_running: kv.in_progress.is_some(),
        maintenance: kv.settings.as_ref().is_some_and(|s| s.maintenance),
        semi_sync_replicas: kv.semi_sync_replicas(),
    }
}
