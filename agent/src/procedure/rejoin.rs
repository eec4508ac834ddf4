//! The I/O of a rejoin ([`crate::decide::rejoin`] decided it may be tried).
//!
//! MariaDB GTID positions can hide a transaction the old source wrote but
//! never sent (same domain and sequence number as a different transaction
//! on the new source), so the position check is followed by the server's
//! own: with `gtid_strict_mode` the new source refuses a replica whose
//! position is not in its binlog (error 1236), and the rejoin is undone.

use std::time::Duration;

use successover_common::consul::{KvPair, TxnOp};
use successover_common::contract::NodeName;
use successover_common::procedure::{HistoryEntry, Outcome, ProcedureKind};

use super::{now_ms, Coordinator, StepError, Timer};
use crate::decide::{HostPort, KvInputs};
use crate::mysql::{IoRunning, Node};

/// How long a rejoined replica has to show a running IO thread.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

impl Coordinator<'_> {
    fn rejoin_entry(
        &self,
        node: &str,
        evidence: &serde_json::Map<String, serde_json::Value>,
    ) -> HistoryEntry {
        let mut entry = HistoryEntry::start(
            ProcedureKind::Rejoin,
            self.cluster.as_str(),
            self.me,
            now_ms(),
        );
        entry.to = Some(node.to_owned());
        entry.evidence.extend(evidence.clone());
        entry
    }

    async fn close_rejoin(
        &self,
        request: &KvPair,
        node: &str,
        mut entry: HistoryEntry,
        outcome: Outcome,
        reason: String,
        kv: &mut KvInputs,
    ) -> Result<Option<String>, StepError> {
        entry.outcome = outcome;
        entry.reason = reason.clone();
        entry.finished_ms = Some(now_ms());
        let mut ops = vec![
            TxnOp::DeleteCas {
                key: request.key.clone(),
                index: request.modify_index,
            },
            self.history_op(&entry),
        ];
        if outcome == Outcome::Done {
            if let Ok(name) = NodeName::parse(node) {
                ops.push(TxnOp::delete(self.keys.quarantine_key(self.cluster, &name)));
            }
        }
        if let Err(e) = self.guarded_txn(ops).await {
            return Err(self.failure(format!("rejoin of {node} not recorded: {e}")));
        }
        kv.rejoins.retain(|r| r.key != request.key);
        tracing::info!(node, ?outcome, "rejoin: {reason}");
        let running = kv.in_progress.as_ref().map(|(id, _)| id.as_str());
        self.prune_history(&running.into_iter().collect::<Vec<_>>())
            .await;
        Ok(Some(format!("rejoin {}: {reason}", outcome.as_str())))
    }

    pub(super) async fn refuse_rejoin(
        &mut self,
        request: &KvPair,
        node: &str,
        why: &str,
        evidence: &serde_json::Map<String, serde_json::Value>,
        kv: &mut KvInputs,
    ) -> Result<Option<String>, StepError> {
        let mut entry = self.rejoin_entry(node, evidence);
        Timer::start().record(&mut entry, "rejoin", &Err::<(), _>(why.to_owned()));
        self.close_rejoin(request, node, entry, Outcome::Refused, why.to_owned(), kv)
            .await
    }

    pub(super) async fn rejoin(
        &mut self,
        request: &KvPair,
        node: &str,
        source: &str,
        source_addr: &HostPort,
        evidence: &serde_json::Map<String, serde_json::Value>,
        kv: &mut KvInputs,
    ) -> Result<Option<String>, StepError> {
        let mut entry = self.rejoin_entry(node, evidence);
        let t = Timer::start();
        let result = self.follow(node, source, source_addr).await;
        t.record(&mut entry, "rejoin", &result);
        let (outcome, reason) = match result {
            Ok(()) => (
                Outcome::Done,
                format!("{node} replicates from {source} again"),
            ),
            Err(why) => (Outcome::Refused, why),
        };
        self.close_rejoin(request, node, entry, outcome, reason, kv)
            .await
    }

    /// Repoints `node` and waits for the servers' verdict: only a replica
    /// that reaches the source's current position counts.
    async fn follow(
        &mut self,
        node: &str,
        source: &str,
        source_addr: &HostPort,
    ) -> Result<(), String> {
        self.repoint(node, source_addr, false, true).await?;
        let target = self
            .on_node(source, async |n: &mut Node| n.gtid_executed().await)
            .await?;
        let deadline = tokio::time::Instant::now() + CONNECT_WAIT;
        let mut status;
        loop {
            status = self
                .on_node(node, async |n: &mut Node| n.replica_status().await)
                .await?;
            let failed = status
                .as_ref()
                .is_none_or(|s| s.last_io_errno != 0 || s.last_sql_errno != 0 || !s.sql_running);
            let connected = status
                .as_ref()
                .is_some_and(|s| s.io_running == IoRunning::Yes);
            if failed || connected || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let connected = status.as_ref().is_some_and(|s| {
            s.io_running == IoRunning::Yes
                && s.sql_running
                && s.last_io_errno == 0
                && s.last_sql_errno == 0
        });
        if connected {
            let wait = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .max(Duration::from_secs(1));
            let reached = self
                .on_node(node, async |n: &mut Node| {
                    n.wait_for_gtid(&target, wait).await
                })
                .await;
            if matches!(reached, Ok(true)) {
                return Ok(());
            }
        }
        let _ = self
            .on_node(node, async |n: &mut Node| n.stop_replica().await)
            .await;
        let detail = status
            .map(|s| {
                format!("{} {}", s.last_io_error, s.last_sql_error)
                    .trim()
                    .to_owned()
            })
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| format!("it did not reach {target} within {CONNECT_WAIT:?}"));
        Err(format!(
            "rebuild required: {node} cannot follow {source}: {detail}"
        ))
    }
}
