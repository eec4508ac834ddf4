//! KV shapes of planned switches and failovers: the request an operator
//! writes, and the audit entry the coordinator keeps under
//! `<prefix>history/<cluster>/<id>` while it works and after.
//!
//! Request (`mysql/switchover/<cluster>`), either a bare node name:
//!
//! ```text
//! consul kv put mysql/switchover/c1 db2
//! ```
//!
//! or JSON (every field optional; no target = the best candidate):
//!
//! ```json
//! {"target": "db2", "force": false, "max_lag_seconds": 10,
//!  "skip_catchup": false, "id": "cli-7f3a"}
//! ```
//!
//! `force` skips the lag refusal only. `skip_catchup` (which also needs
//! `force`) skips waiting for the target to apply everything the old source
//! committed: it can lose acknowledged writes and is for a source that will
//! not come back. An empty value asks for the best candidate.

use serde::{Deserialize, Serialize};

use crate::contract::{valid_node_name, ClusterName, Keys, ValueError};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchoverRequest {
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub max_lag_seconds: Option<u32>,
    #[serde(default)]
    pub skip_catchup: bool,
    /// Chosen by the requester to find its history entry.
    #[serde(default)]
    pub id: Option<String>,
}

impl SwitchoverRequest {
    pub fn parse(value: &[u8]) -> Result<SwitchoverRequest, ValueError> {
        let text = std::str::from_utf8(value)
            .map_err(|_| ValueError::NotUtf8)?
            .trim();
        let req = if text.is_empty() {
            SwitchoverRequest::default()
        } else if text.starts_with('{') {
            serde_json::from_str(text).map_err(|e| ValueError::Json(e.to_string()))?
        } else {
            SwitchoverRequest {
                target: Some(text.to_owned()),
                ..SwitchoverRequest::default()
            }
        };
        if let Some(t) = &req.target {
            valid_node_name(t)?;
        }
        if let Some(id) = &req.id {
            valid_node_name(id)?;
        }
        if req.skip_catchup && !req.force {
            return Err(ValueError::OutOfRange {
                field: "skip_catchup",
                expected: "accompanied by force: true",
            });
        }
        Ok(req)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcedureKind {
    Switchover,
    Failover,
    /// A quarantined node brought back as a replica.
    Rejoin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Under way; the entry named by the `in-progress` key.
    Running,
    Done,
    /// Started, then undone: the old source is the source again.
    Aborted,
    /// Refused before anything changed.
    Refused,
    /// Stopped in a state an operator must look at.
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub started_ms: u64,
    pub duration_ms: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// `<prefix>history/<cluster>/<id>`: one switch or failover.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub id: String,
    pub kind: ProcedureKind,
    pub cluster: String,
    pub outcome: Outcome,
    /// One sentence: why it was refused, aborted, or what it did.
    pub reason: String,
    pub from: Option<String>,
    pub to: Option<String>,
    #[serde(default)]
    pub request: Option<SwitchoverRequest>,
    /// The agent that ran it.
    pub coordinator: String,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    /// Old source read-only → new source writable.
    #[serde(default)]
    pub write_unavailable_ms: Option<u64>,
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Evidence for the audit: GTID positions and why the target was safe.
    #[serde(default)]
    pub evidence: serde_json::Map<String, serde_json::Value>,
}

impl ProcedureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcedureKind::Switchover => "switchover",
            ProcedureKind::Failover => "failover",
            ProcedureKind::Rejoin => "rejoin",
        }
    }
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Done => "done",
            Outcome::Aborted => "aborted",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

impl HistoryEntry {
    /// A new entry, running, with its id from the start time.
    pub fn start(kind: ProcedureKind, cluster: &str, coordinator: &str, started_ms: u64) -> Self {
        HistoryEntry {
            id: history_id(started_ms, kind),
            kind,
            cluster: cluster.to_owned(),
            outcome: Outcome::Running,
            reason: String::new(),
            from: None,
            to: None,
            request: None,
            coordinator: coordinator.to_owned(),
            started_ms,
            finished_ms: None,
            write_unavailable_ms: None,
            steps: Vec::new(),
            evidence: serde_json::Map::new(),
        }
    }

    pub fn last_step(&self) -> Option<&Step> {
        self.steps.last()
    }

    pub fn has_step(&self, name: &str) -> bool {
        self.steps.iter().any(|s| s.name == name && s.ok)
    }
}

/// Entry ids sort by start time: milliseconds, zero-padded.
pub fn history_id(started_ms: u64, kind: ProcedureKind) -> String {
    format!("{started_ms:015}-{}", kind.as_str())
}

impl Keys {
    pub fn history_key(&self, cluster: &ClusterName, id: &str) -> String {
        format!("{}{id}", self.history_prefix(cluster))
    }

    /// `rejoin/<cluster>/<node>`: a request to bring a quarantined node
    /// back as a replica (`successover rejoin`).
    pub fn rejoin_prefix(&self, cluster: &ClusterName) -> String {
        format!("{}rejoin/{cluster}/", self.prefix())
    }

    /// Names the history entry of the procedure under way, if any. A new
    /// coordinator reads it first: an interrupted procedure is finished or
    /// rolled back before anything else happens.
    pub fn in_progress_key(&self, cluster: &ClusterName) -> String {
        format!("{}in-progress", self.history_prefix(cluster))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_node_name_json_and_empty_requests() {
        assert_eq!(
            SwitchoverRequest::parse(b"db2\n")
                .unwrap()
                .target
                .as_deref(),
            Some("db2")
        );
        assert_eq!(
            SwitchoverRequest::parse(b"").unwrap(),
            SwitchoverRequest::default()
        );
        let r = SwitchoverRequest::parse(br#"{"target":"db3","force":true,"id":"cli-1"}"#).unwrap();
        assert!(r.force);
        assert_eq!(r.id.as_deref(), Some("cli-1"));
    }

    #[test]
    fn malformed_requests_are_refused_with_a_reason() {
        for bad in [
            &b"db2\nserver evil"[..],
            b"{\"target\": 3}",
            b"{\"tagret\": \"db2\"}",
            b"{\"skip_catchup\": true}",
            b"\xff",
        ] {
            assert!(SwitchoverRequest::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn history_ids_sort_by_time() {
        let a = history_id(999, ProcedureKind::Switchover);
        let b = history_id(1_000, ProcedureKind::Failover);
        assert!(a < b, "{a} {b}");
    }
}
