//! The I/O of a failover's steps (the order is [`crate::decide::failover`]'s).

use successover_common::consul::TxnOp;
use successover_common::procedure::{HistoryEntry, ProcedureKind};
use tracing::Instrument as _;

use super::{own_connection, quarantine_op, Active, Coordinator, StepError, Timer};
use crate::decide::{ClusterView, HostPort, KvInputs};
use crate::mysql::{GtidState, Node};

impl Coordinator<'_> {
    /// Rule 3: the fence comes first, in the same txn that marks the
    /// procedure as under way. The stored entry already names the step:
    /// the txn is atomic, so if it commits the fence is in place, and a
    /// coordinator that resumes from the stored entry must not see a
    /// failover without its fence.
    pub(super) async fn start_failover(
        &mut self,
        entry: &HistoryEntry,
        active: &mut Option<Active>,
        view: &mut ClusterView,
        kv: &mut KvInputs,
    ) -> Result<Option<String>, StepError> {
        let t = Timer::start();
        let fence = self.fence(ProcedureKind::Failover, &entry.id);
        let mut staged = entry.clone();
        Timer::start().record(&mut staged, "fence", &Ok::<(), String>(()));
        let r = self
            .guarded_txn(vec![
                self.keys.fence_op(self.cluster, &fence),
                self.history_op(&staged),
                TxnOp::set(self.keys.in_progress_key(self.cluster), entry.id.clone()),
            ])
            .await;
        let mut entry = entry.clone();
        t.record(&mut entry, "fence", &r);
        if let Err(e) = r {
            return Err(self.failure(format!("failover not started: {e}")));
        }
        tracing::warn!(
            id = entry.id,
            source = entry.from.as_deref().unwrap_or_default(),
            "failover started: {}",
            entry
                .evidence
                .get("detection")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
        );
        self.metrics.action("failover", true);
        view.fenced = true;
        view.procedure_running = true;
        kv.fence = Some(fence.to_json());
        kv.in_progress = Some((entry.id.clone(), Some(entry.clone())));
        *active = Some(Active::new(entry, None));
        Ok(None)
    }

    /// A refused failover runs again under the fence it left: the entry is
    /// marked running and named by the in-progress key in one txn.
    pub(super) async fn reopen_failover(
        &mut self,
        entry: &HistoryEntry,
        active: &mut Option<Active>,
        view: &mut ClusterView,
        kv: &mut KvInputs,
    ) -> Result<Option<String>, StepError> {
        let t = Timer::start();
        let mut entry = entry.clone();
        entry.outcome = successover_common::procedure::Outcome::Running;
        entry.finished_ms = None;
        let mut staged = entry.clone();
        Timer::start().record(&mut staged, "reopen", &Ok::<(), String>(()));
        let r = self
            .guarded_txn(vec![
                self.history_op(&staged),
                TxnOp::set(self.keys.in_progress_key(self.cluster), entry.id.clone()),
            ])
            .await;
        t.record(&mut entry, "reopen", &r);
        if let Err(e) = r {
            return Err(self.failure(format!("refused failover not taken up: {e}")));
        }
        tracing::warn!(id = entry.id, "refused failover taken up again");
        view.procedure_running = true;
        kv.fence_entry = None;
        kv.in_progress = Some((entry.id.clone(), Some(entry.clone())));
        *active = Some(Active::new(entry, None));
        Ok(None)
    }

    /// Every listed replica's IO thread stopped, all at once, each on a
    /// connection of its own: stopping an IO thread that is blocked reading
    /// from a hung source takes about a second per replica. Best effort on
    /// the old source meanwhile, from a connection of its own so a hung
    /// server cannot hold the procedure up. The replicas are then observed
    /// again: what they received is what the candidate is chosen from, and
    /// only an IO thread read back as stopped counts.
    pub(super) async fn stop_io_threads(
        &mut self,
        nodes: &[String],
        old_source: Option<&HostPort>,
        view: &mut ClusterView,
    ) -> Result<(), String> {
        if let Some(addr) = old_source {
            let mut node = own_connection(self.cfg, addr);
            let protected = self.protected_users();
            tokio::spawn(
                async move {
                    let except: Vec<&str> = protected.iter().map(String::as_str).collect();
                    // Clients first: `read_only=1` waits behind commits that
                    // wait for an ACK.
                    let _ = node.kill_client_connections(&except).await;
                    if node.set_read_only(true).await.is_ok() {
                        let _ = node.kill_client_connections(&except).await;
                    }
                    node.close().await;
                }
                .in_current_span(),
            );
        }
        let mut stops = tokio::task::JoinSet::new();
        for name in nodes {
            let Some(addr) = view.addr_of(name) else {
                continue;
            };
            let mut node = own_connection(self.cfg, &addr);
            let name = name.clone();
            stops.spawn(
                async move {
                    let r = node.stop_io_thread().await;
                    node.close().await;
                    (name, r)
                }
                .in_current_span(),
            );
        }
        let mut problems = Vec::new();
        while let Some(joined) = stops.join_next().await {
            match joined {
                Ok((_, Ok(()))) => {}
                Ok((name, Err(e))) => problems.push(format!("{name}: {e}")),
                Err(e) => problems.push(e.to_string()),
            }
        }
        for name in nodes {
            self.reobserve(view, name).await;
        }
        let still: Vec<&str> = nodes
            .iter()
            .filter(|n| {
                view.node(n).is_none_or(|v| {
                    !v.reachable || v.replica.as_ref().is_some_and(|r| !r.io_stopped)
                })
            })
            .map(String::as_str)
            .collect();
        if still.is_empty() {
            if !problems.is_empty() {
                tracing::warn!(
                    "IO threads read back as stopped after errors: {}",
                    problems.join("; ")
                );
            }
            Ok(())
        } else {
            Err(format!(
                "IO thread not stopped on {} ({})",
                still.join(", "),
                problems.join("; ")
            ))
        }
    }

    /// Rule 4: everything received is applied before writes.
    pub(super) async fn apply_relay_log(
        &mut self,
        node: &str,
        target: &GtidState,
        entry: &mut HistoryEntry,
        view: &mut ClusterView,
    ) -> Result<(), String> {
        let timeout = self.cfg.apply_timeout;
        match self
            .on_node(node, async |n: &mut Node| {
                // A candidate may keep the ACK role with its applier
                // stopped (a DBA's pause): its relay log still has to be
                // applied. Its IO thread stays stopped.
                n.start_sql_thread().await?;
                n.wait_for_gtid(target, timeout).await
            })
            .await?
        {
            true => {}
            false => {
                return Err(format!(
                    "{node} did not apply its relay log within {timeout:?}"
                ))
            }
        }
        let applied = self
            .on_node(node, async |n: &mut Node| n.gtid_executed().await)
            .await?;
        entry.evidence.insert(
            "candidate_applied_gtid_at_open".into(),
            applied.to_string().into(),
        );
        if let Some(v) = view.node_mut(node) {
            v.gtid_executed = Some(applied);
        }
        Ok(())
    }

    /// Publish, unfence and (after a failover) quarantine the old source in
    /// one txn guarded by the lock.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn publish(
        &mut self,
        node: &str,
        addr: &HostPort,
        quarantine: Option<&(String, Option<HostPort>)>,
        acker: Option<&(String, GtidState)>,
        a: &mut Active,
        view: &mut ClusterView,
        kv: &mut KvInputs,
    ) -> Result<(), String> {
        let id = a.running.entry.id.clone();
        let mut ops = self.publish_ops(addr);
        let ackers = acker.map(|(n, f)| {
            let floors = super::raise_floor(&kv.ack_floors, n, f);
            let started = self.members_started(&floors, &kv.acker_started);
            (floors, started)
        });
        if let Some((floors, started)) = &ackers {
            ops.push(self.ackers_op(floors, started));
        }
        let unfence = self.lift_own_fence(&id).await;
        let lifts = !unfence.is_empty();
        ops.extend(unfence);
        if let Some((from, from_addr)) = quarantine {
            ops.extend(quarantine_op(
                self.keys,
                self.cluster,
                from,
                from_addr.as_ref(),
                &id,
            ));
        }
        ops.push(self.history_op(&a.running.entry));
        if let Err(e) = self.guarded_txn(ops).await {
            // An error can hide a txn that was applied (Consul's leader lost
            // mid-request): what KV holds now is the definite result.
            let landed = self
                .consul
                .kv_get(&self.keys.master_key(self.cluster))
                .await
                .ok()
                .flatten()
                .and_then(|kv| kv.value_str().and_then(|v| HostPort::parse(v.trim()).ok()))
                .is_some_and(|p| p.same(addr));
            if !landed {
                return Err(e);
            }
            tracing::warn!(node, %addr, error = e, "the publish answered an error but KV holds it");
        }
        tracing::info!(node, %addr, "published source");
        view.published = Some(addr.clone());
        if let Some((floors, started)) = ackers {
            kv.ack_floors = floors;
            kv.acker_started = started;
        }
        if lifts {
            view.fenced = false;
            kv.fence = None;
        }
        if let Some((from, _)) = quarantine {
            if let Some(v) = view.node_mut(from) {
                v.quarantined = true;
            }
        }
        Ok(())
    }
}
