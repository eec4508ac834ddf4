//! Bringing a quarantined node back (`successover rejoin <cluster> <node>`
//! writes `<prefix>rejoin/<cluster>/<node>`). The coordinator repoints the
//! node as a replica of the source only if it holds no transaction the
//! source lacks; otherwise it refuses with "rebuild required".
//!
//! MariaDB GTID positions can hide a transaction the old source wrote but
//! never sent (same domain and sequence number as a different transaction
//! on the new source), so the position check is followed by the server's
//! own: with `gtid_strict_mode` the new source refuses a replica whose
//! position is not in its binlog (error 1236), and the rejoin is undone.

use std::time::Duration;

use successover_common::consul::{KvPair, TxnOp};
use successover_common::contract::NodeName;
use successover_common::procedure::{Outcome, ProcedureKind};

use crate::cluster::{same_addr, ClusterKv};
use crate::mysql::{IoRunning, Node};
use crate::run::Agent;
use crate::switchover::{check_errant, now_ms, Observations, Recorder, Timer};

/// How long a rejoined replica has to show a running IO thread.
const CONNECT_WAIT: Duration = Duration::from_secs(10);

impl Agent {
    pub(crate) async fn handle_rejoins(
        &mut self,
        kv: &ClusterKv,
        observations: &Observations,
    ) -> Option<String> {
        let prefix = self.keys.rejoin_prefix(&self.cluster);
        let requests = self.consul.kv_get_recurse(&prefix).await.ok()?;
        let request = requests.into_iter().next()?;
        Some(self.rejoin(kv, observations, request).await)
    }

    async fn rejoin(
        &mut self,
        kv: &ClusterKv,
        observations: &Observations,
        request: KvPair,
    ) -> String {
        let node = request
            .key
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let mut entry = self.new_entry(ProcedureKind::Rejoin);
        entry.to = Some(node.clone());
        let mut rec = Recorder { entry };
        // The requester finds its answer by this id.
        let request_id = request
            .value
            .as_deref()
            .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
            .and_then(|v| v["id"].as_str().map(str::to_owned))
            .filter(|id| NodeName::parse(id).is_ok());
        if let Some(id) = request_id {
            rec.entry.evidence.insert("request_id".into(), id.into());
        }
        let t = Timer::start();
        let result = self.try_rejoin(kv, observations, &node, &mut rec).await;
        rec.record("rejoin", t, &result);
        let (outcome, reason) = match result {
            Ok(source) => (
                Outcome::Done,
                format!("{node} replicates from {source} again"),
            ),
            Err(why) => (Outcome::Refused, why),
        };
        rec.entry.outcome = outcome;
        rec.entry.reason = reason.clone();
        rec.entry.finished_ms = Some(now_ms());
        let mut ops = vec![
            TxnOp::DeleteCas {
                key: request.key.clone(),
                index: request.modify_index,
            },
            self.history_op(&rec.entry),
        ];
        if outcome == Outcome::Done {
            if let Ok(name) = NodeName::parse(&node) {
                ops.push(TxnOp::delete(
                    self.keys.quarantine_key(&self.cluster, &name),
                ));
            }
        }
        if let Err(e) = self.guarded_txn(ops).await {
            return format!("rejoin of {node} not recorded: {e}");
        }
        tracing::info!(node, ?outcome, "rejoin: {reason}");
        format!("rejoin {}: {reason}", outcome.as_str())
    }

    async fn try_rejoin(
        &mut self,
        kv: &ClusterKv,
        observations: &Observations,
        node: &str,
        rec: &mut Recorder,
    ) -> Result<String, String> {
        if NodeName::parse(node).is_err() {
            return Err(format!("{node:?} is not a valid node name"));
        }
        let published = kv.published.clone().ok_or("no published source")?;
        let (source, (source_addr, source_obs)) = observations
            .iter()
            .find(|(_, (a, _))| same_addr(a, &published))
            .ok_or("the published source has no agent")?;
        let source_obs = source_obs.as_ref().ok_or("the source is unreachable")?;
        if source == node {
            return Err(format!("{node} is the source"));
        }
        let (_, node_obs) = observations
            .get(node)
            .ok_or_else(|| format!("{node} is not a known node of {}", self.cluster))?;
        let node_obs = node_obs
            .as_ref()
            .ok_or_else(|| format!("{node} is unreachable"))?;
        if !kv.quarantined.contains(node) {
            return Err(format!("{node} is not quarantined"));
        }
        // A writable node must not be pointed anywhere. Read now: the
        // cycle's observation may predate the agent's self-fence.
        let read_only = self
            .on_node(node, async |n: &mut Node| n.read_only().await)
            .await?;
        if !read_only.read_only {
            return Err(format!("{node} is writable; its agent keeps quarantined nodes read-only, so something is wrong"));
        }
        rec.entry.evidence.insert(
            "node_gtid_executed".into(),
            node_obs.gtid_executed.to_string().into(),
        );
        rec.entry.evidence.insert(
            "source_gtid_executed".into(),
            source_obs.gtid_executed.to_string().into(),
        );
        check_errant(
            &node_obs.gtid_executed,
            &source_obs.gtid_executed,
            node,
            source,
        )
        .map_err(|e| format!("rebuild required: {e}"))?;
        let source = source.clone();
        self.binlog_state_check(node, &source)
            .await
            .map_err(|e| format!("rebuild required: {e}"))?;
        let source_addr = source_addr.clone();
        self.repoint(node, &source_addr, false, true).await?;
        // The servers' own verdict. A MariaDB position can look contained
        // while naming a different transaction (same domain and sequence
        // number, another server id); the source then refuses the replica
        // (error 1236) or the replica's strict mode stops its SQL thread.
        // Only a replica that reaches the source's current position counts.
        let target = self
            .on_node(&source, async |n: &mut Node| n.gtid_executed().await)
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
                return Ok(source);
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
