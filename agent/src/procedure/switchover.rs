//! The I/O of a switchover's steps (the order is
//! [`crate::decide::switchover`]'s).

use std::time::{Duration, Instant};
use tracing::Instrument as _;

use successover_common::consul::{KvPair, TxnOp};
use successover_common::procedure::HistoryEntry;
use tokio_util::sync::CancellationToken;

use super::{own_connection, Active, Coordinator, StepError};
use crate::decide::{ClusterView, KvInputs, Plan};
use crate::mysql::Node;

/// How often client connections on the old source are killed during the
/// switch.
const KILL_INTERVAL: Duration = Duration::from_millis(50);

/// How long blocking the old source's commits may wait for commits already
/// under way (the kill loop ends those within [`KILL_INTERVAL`]).
const COMMIT_BLOCK_WAIT: Duration = Duration::from_secs(3);

/// After a switch, the old source's commits stay blocked until no client
/// has reached it for [`LINGER_QUIET`]: the proxies move their traffic a
/// little after the new source is published, and a client of an account
/// that writes through `read_only` would otherwise commit on the old source
/// alone. Client connections are killed meanwhile, as during the switch (a
/// commit waiting for the block is rolled back, never acknowledged); which
/// accounts write through `read_only` is not asked, since reading the grant
/// tables takes a privilege the agent's account does not need otherwise.
/// Bounded by [`LINGER_MAX`]; a coordinator that dies lifts the block with
/// its connection.
const LINGER_QUIET: Duration = Duration::from_millis(500);
const LINGER_MAX: Duration = Duration::from_secs(2);

pub(super) fn linger_commit_block(mut block: Node, node: String, except: [String; 2]) {
    tokio::spawn(
        async move {
            let except: Vec<&str> = except.iter().map(String::as_str).collect();
            let start = Instant::now();
            let mut last_seen = start;
            let mut killed = 0usize;
            while last_seen.elapsed() < LINGER_QUIET && start.elapsed() < LINGER_MAX {
                match block.kill_client_connections(&except).await {
                    Ok(ids) if !ids.is_empty() => {
                        killed += ids.len();
                        last_seen = Instant::now();
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(node, error = %e, "commit block connection failed");
                        break;
                    }
                }
                tokio::time::sleep(KILL_INTERVAL).await;
            }
            if start.elapsed() >= LINGER_MAX {
                tracing::warn!(
                    node,
                    killed,
                    "clients still reach the old source; lifting its commit block"
                );
            }
            let _ = block.release_commits().await;
            block.close().await;
            tracing::info!(
                node,
                killed,
                held_ms = start.elapsed().as_millis() as u64,
                "old source's commit block lifted"
            );
        }
        .in_current_span(),
    );
}

impl Coordinator<'_> {
    /// Consumes the request (delete-CAS on its modify index) in the same
    /// txn that records the refusal or starts the switch, so it is acted on
    /// exactly once.
    pub(super) async fn start_switch(
        &mut self,
        request: &KvPair,
        entry: &HistoryEntry,
        plan: Option<&Plan>,
        active: &mut Option<Active>,
        kv: &mut KvInputs,
    ) -> Result<Option<String>, StepError> {
        let mut ops = vec![
            TxnOp::DeleteCas {
                key: request.key.clone(),
                index: request.modify_index,
            },
            self.history_op(entry),
        ];
        let Some(plan) = plan else {
            return match self.guarded_txn(ops).await {
                Ok(()) => {
                    kv.switchover = None;
                    Ok(Some(format!("switchover refused: {}", entry.reason)))
                }
                Err(e) => Err(self.failure(format!("switchover refusal not recorded: {e}"))),
            };
        };
        ops.push(TxnOp::set(
            self.keys.in_progress_key(self.cluster),
            entry.id.clone(),
        ));
        if let Err(e) = self.guarded_txn(ops).await {
            return Err(self.failure(format!("switchover not started: {e}")));
        }
        tracing::info!(
            id = entry.id,
            from = plan.from,
            to = plan.to,
            "switchover started"
        );
        kv.switchover = None;
        kv.in_progress = Some((entry.id.clone(), Some(entry.clone())));
        *active = Some(Active::new(entry.clone(), Some(plan.clone())));
        Ok(None)
    }

    /// The old source stops taking writes. From here until the switch
    /// ends, its client connections are killed every [`KILL_INTERVAL`] from
    /// a connection of its own, so the steps never wait for it.
    pub(super) async fn read_only_old_source(
        &mut self,
        node: &str,
        a: &mut Active,
        view: &mut ClusterView,
    ) -> Result<(), String> {
        let addr = view
            .addr_of(node)
            .ok_or_else(|| format!("{node} has no address"))?;
        a.unavailable_from.get_or_insert_with(Instant::now);
        if a.killer.is_none() {
            let mut conn = own_connection(self.cfg, &addr);
            let except = self.protected_users();
            let stop = CancellationToken::new();
            let token = stop.clone();
            let task = tokio::spawn(
                async move {
                    let except: Vec<&str> = except.iter().map(String::as_str).collect();
                    let mut killed = 0usize;
                    while !token.is_cancelled() {
                        if let Ok(ids) = conn.kill_client_connections(&except).await {
                            killed += ids.len();
                        }
                        tokio::select! {
                            _ = token.cancelled() => {}
                            _ = tokio::time::sleep(KILL_INTERVAL) => {}
                        }
                    }
                    conn.close().await;
                    killed
                }
                .in_current_span(),
            );
            a.killer = Some((stop, task));
        }
        self.on_node(node, async |n: &mut Node| n.set_read_only(true).await)
            .await
            .map_err(|e| format!("cannot make {node} read-only: {e}"))?;
        if let Some(v) = view.node_mut(node) {
            v.read_only = true;
        }
        Ok(())
    }

    /// While the old source takes writes: rounds of "read its position,
    /// wait until the target applied it" until one round takes at most
    /// `converge_lag`, so what is left after read-only is a short tail.
    /// Changes nothing; past `converge_timeout` the switch ends.
    pub(super) async fn converge(
        &mut self,
        from: &str,
        to: &str,
        a: &mut Active,
    ) -> Result<(), String> {
        let started = Instant::now();
        let deadline = started + self.cfg.converge_timeout;
        let lag = self.cfg.converge_lag;
        let mut rounds = 0u32;
        let mut last: Option<Duration> = None;
        loop {
            if self.lost_lock() {
                return Err("lost the coordinator lock".into());
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(format!(
                    "{to} did not get within {lag:?} of {from} in {:?}{}: it applies slower than {from} commits",
                    self.cfg.converge_timeout,
                    last.map(|d| format!(" (last round {} ms)", d.as_millis()))
                        .unwrap_or_default(),
                ));
            }
            let pos = self
                .on_node(from, async |n: &mut Node| n.gtid_executed().await)
                .await
                .map_err(|e| format!("cannot read {from}'s GTID position: {e}"))?;
            let round = Instant::now();
            // Each round is bounded so the lock is looked at again.
            let wait = remaining.min(Duration::from_secs(2));
            let reached = self
                .on_node(to, async |n: &mut Node| n.wait_for_gtid(&pos, wait).await)
                .await?;
            rounds += 1;
            if reached {
                let took = round.elapsed();
                last = Some(took);
                if took <= lag {
                    let e = a.entry();
                    e.evidence.insert(
                        "converge".into(),
                        serde_json::json!({
                            "rounds": rounds,
                            "last_round_ms": took.as_millis() as u64,
                            "total_ms": started.elapsed().as_millis() as u64,
                        }),
                    );
                    return Ok(());
                }
            }
        }
    }

    /// The target applies everything the old source committed. The old
    /// source's position is read once its commits are blocked: `read_only`
    /// alone lets accounts with `READ_ONLY ADMIN` (MariaDB's `ALL`) commit
    /// after the position was read, and the target would miss them.
    pub(super) async fn catch_up(
        &mut self,
        from: &str,
        to: &str,
        skip_wait: bool,
        a: &mut Active,
        view: &mut ClusterView,
    ) -> Result<(), String> {
        if a.commit_block.is_none() {
            let addr = view
                .addr_of(from)
                .ok_or_else(|| format!("{from} has no address"))?;
            let started = Instant::now();
            let mut block = own_connection(self.cfg, &addr);
            let connected = block.server_info().await.map(|_| started.elapsed());
            match block.block_commits(COMMIT_BLOCK_WAIT).await {
                Ok(true) => {
                    a.commit_block = Some(block);
                    let ms = |d: Duration| d.as_millis() as u64;
                    let e = a.entry();
                    e.evidence.insert(
                        "commit_block_ms".into(),
                        serde_json::json!({
                            "connect": connected.map(ms).ok(),
                            "total": ms(started.elapsed()),
                        }),
                    );
                }
                Ok(false) => block.close().await,
                Err(e) => {
                    block.close().await;
                    let e = successover_common::telemetry::report(&e);
                    return Err(format!("cannot block commits on {from}: {e}"));
                }
            }
        }
        let entry = a.entry();
        let source_pos = self
            .on_node(from, async |n: &mut Node| n.gtid_executed().await)
            .await
            .map_err(|e| format!("cannot read {from}'s GTID position: {e}"))?;
        entry.evidence.insert(
            "old_source_gtid_executed".into(),
            source_pos.to_string().into(),
        );
        if !skip_wait {
            let target = source_pos.clone();
            let limit = self.cfg.catch_up_timeout;
            let reached = self
                .on_node(to, async |n: &mut Node| {
                    n.wait_for_gtid(&target, limit).await
                })
                .await?;
            if !reached {
                return Err(format!("{to} did not apply {source_pos} within {limit:?}"));
            }
        }
        if let Ok(p) = self
            .on_node(to, async |n: &mut Node| n.gtid_executed().await)
            .await
        {
            entry.evidence.insert(
                "target_gtid_executed_at_promotion".into(),
                p.to_string().into(),
            );
            if let Some(v) = view.node_mut(to) {
                v.gtid_executed = Some(p);
            }
        }
        Ok(())
    }

    /// Undoes a switch that has not been published: the target is made
    /// read-only first (never two writable nodes), what was repointed goes
    /// back, the fence is lifted (a writable node in a fenced cluster
    /// would fence itself), and the old source becomes writable again.
    pub(super) async fn roll_back(
        &mut self,
        plan: &Plan,
        target_touched: bool,
        why: &str,
        a: &mut Active,
    ) -> Result<(), String> {
        tracing::warn!(reason = why, "rolling back the switchover");
        let to = plan.to.clone();
        self.on_node(&to, async |n: &mut Node| n.set_read_only(true).await)
            .await
            .map_err(|e| format!("cannot make {to} read-only, leaving the cluster fenced: {e}"))?;
        // The old source stays the source: its commits may go on.
        self.release_commit_block(a).await;
        let mut problems = Vec::new();

        if target_touched {
            let back = [plan.to.clone(), plan.semi_sync.clone()];
            for name in back.iter().filter(|n| **n != plan.from) {
                let was_target = *name == plan.to;
                if let Err(e) = self.repoint(name, &plan.from_addr, false, was_target).await {
                    problems.push(format!("repoint {name} back: {e}"));
                }
            }
        }
        // The old source takes writes again only as a source. A plan
        // rebuilt by the next coordinator does not say whether the old
        // source was repointed under the target (the semi-sync repoint), so
        // its server is looked at: opened as a replica without the source
        // flag, it would acknowledge commits no replica holds.
        let restored = self
            .on_node(&plan.from, async |n: &mut Node| {
                if n.replica_status().await?.is_some() {
                    n.stop_replica().await?;
                    n.reset_replica_all().await?;
                }
                n.set_semi_sync_replica(false).await?;
                n.set_semi_sync_source(true).await
            })
            .await;
        if let Err(e) = &restored {
            problems.push(format!("restore {} as the source: {e}", plan.from));
        }
        let ops = self.lift_own_fence(&a.running.entry.id).await;
        if let Err(e) = self.guarded_txn(ops).await {
            problems.push(format!("unfence: {e}"));
        }
        if restored.is_ok() {
            if let Err(e) = self
                .on_node(&plan.from, async |n: &mut Node| {
                    n.set_read_only(false).await
                })
                .await
            {
                problems.push(format!("make {} writable: {e}", plan.from));
            }
        }
        a.stop_killer().await;
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}
