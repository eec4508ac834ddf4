//! The procedure history in KV: reading it and counting what finished.

use std::collections::HashSet;

use successover_common::procedure::{HistoryEntry, Outcome, ProcedureKind};

use super::report::FaultRecord;
use super::runner::Runner;
use super::PREFIX;

impl Runner {
    pub(super) async fn history_ids(&self) -> HashSet<String> {
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
    pub(super) async fn history(&mut self) -> Vec<HistoryEntry> {
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
    pub(super) async fn count_procedures(&mut self, rec: &mut FaultRecord) {
        for e in self.history().await {
            // A refused failover can be taken up again and end otherwise
            // under the same id: each outcome counts.
            if e.outcome == Outcome::Running
                || !self.counted.insert(format!("{}:{:?}", e.id, e.outcome))
            {
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
                (ProcedureKind::Failover, Outcome::Aborted) => {
                    self.report.failovers_aborted += 1;
                    rec.notes
                        .push(format!("failover {} aborted: {}", e.id, e.reason));
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
                && !rec.label.starts_with("bigtxn-source")
                && !rec.label.starts_with("proxycut-source")
                && !rec.label.starts_with("hide-source")
            {
                rec.notes.push(format!(
                    "unexpected failover {} ({:?}): {}",
                    e.id, e.outcome, e.reason
                ));
            }
        }
    }
}
