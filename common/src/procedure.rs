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
//!
//! Also here: the rejoin request (`rejoin/<cluster>/<node>`, see
//! [`RejoinRequest`]) and the markers beside the history entries
//! (`history/<cluster>/in-progress`, `history/<cluster>/last-failover`, see
//! [`LastFailover`]).

use serde::{Deserialize, Serialize};

use crate::contract::time::at_ms_or_legacy;
use crate::contract::{valid_node_name, ClusterName, Keys, NodeName, ValueError};

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
    /// A scheduled switch: not started before this time (Unix ms, the
    /// coordinator's clock). Until then the request waits in KV, where a
    /// new coordinator finds it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    /// Not started after this time (Unix ms): past it the coordinator
    /// consumes the request and records a refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after_ms: Option<u64>,
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
        if let (Some(from), Some(until)) = (req.not_before_ms, req.not_after_ms) {
            if until <= from {
                return Err(ValueError::OutOfRange {
                    field: "not_after_ms",
                    expected: "later than not_before_ms",
                });
            }
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
    /// Observe mode: what a failover would have done, recorded; nothing
    /// was touched.
    Simulated,
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
            Outcome::Simulated => "simulated",
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

/// Which of the history keys under `prefix` (`history/<cluster>/`, as
/// `kv_keys` lists them) to delete so that the newest `keep` remain. Ids
/// sort by start time; `spare` (a procedure running, say) is never
/// deleted, nor is any key but an entry's (`in-progress` and
/// `last-failover` share the prefix).
pub fn history_to_prune(keys: &[String], prefix: &str, keep: usize, spare: &[&str]) -> Vec<String> {
    let is_entry_id = |id: &str| {
        let (time, kind) = id.split_at(id.len().min(15));
        time.len() == 15
            && time.bytes().all(|b| b.is_ascii_digit())
            && kind.len() > 1
            && kind.starts_with('-')
            && !kind.contains('/')
    };
    let mut entries: Vec<&String> = keys
        .iter()
        .filter(|k| k.strip_prefix(prefix).is_some_and(is_entry_id))
        .collect();
    entries.sort();
    let excess = entries.len().saturating_sub(keep);
    entries
        .into_iter()
        .take(excess)
        .filter(|k| !spare.iter().any(|id| k.strip_prefix(prefix) == Some(*id)))
        .cloned()
        .collect()
}

/// Entry ids sort by start time: milliseconds, zero-padded.
pub fn history_id(started_ms: u64, kind: ProcedureKind) -> String {
    format!("{started_ms:015}-{}", kind.as_str())
}

/// `rejoin/<cluster>/<node>`: a request to bring a quarantined node back
/// as a replica, written by `successover rejoin` (or by hand) and consumed
/// by the coordinator, which records the outcome as a history entry of kind
/// [`ProcedureKind::Rejoin`] with the request's `id` under
/// [`EVIDENCE_REQUEST_ID`] in its evidence.
///
/// ```json
/// {"id": "cli-1764000000000-4242", "at_ms": 1764000000000}
/// ```
///
/// Every field is optional and unknown fields are ignored: the node is in
/// the key, so `consul kv put mysql/rejoin/c1/db1 ""` asks too. Readers
/// also accept the value as written before the `*_ms` rule,
/// `{"at": <unix ms>, "id": …}` (see [`crate::contract::time`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "RejoinRequestJson")]
pub struct RejoinRequest {
    /// Chosen by the requester to find the outcome; a valid node name,
    /// since it is echoed into history.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// When it was asked, Unix milliseconds; 0 when the value did not say.
    pub at_ms: u64,
}

#[derive(Deserialize)]
struct RejoinRequestJson {
    #[serde(default)]
    id: Option<String>,
    at_ms: Option<u64>,
    at: Option<u64>,
}

impl From<RejoinRequestJson> for RejoinRequest {
    fn from(j: RejoinRequestJson) -> RejoinRequest {
        RejoinRequest {
            id: j.id,
            at_ms: at_ms_or_legacy(j.at_ms, j.at).unwrap_or(0),
        }
    }
}

/// The evidence key of a rejoin's history entry that carries the request's
/// id.
pub const EVIDENCE_REQUEST_ID: &str = "request_id";

impl RejoinRequest {
    pub fn new(id: impl Into<String>, at_ms: u64) -> RejoinRequest {
        RejoinRequest {
            id: Some(id.into()),
            at_ms,
        }
    }

    /// An empty value is a request without an id; anything else must be a
    /// JSON object whose `id`, if any, is a valid node name.
    pub fn parse(value: &[u8]) -> Result<RejoinRequest, ValueError> {
        let text = std::str::from_utf8(value)
            .map_err(|_| ValueError::NotUtf8)?
            .trim();
        if text.is_empty() {
            return Ok(RejoinRequest::default());
        }
        let req: RejoinRequest =
            serde_json::from_str(text).map_err(|e| ValueError::Json(e.to_string()))?;
        if let Some(id) = &req.id {
            valid_node_name(id)?;
        }
        Ok(req)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a rejoin request serializes: strings and numbers only")
    }
}

/// `history/<cluster>/last-failover`: the last automatic failover, for the
/// cooldown (`failover_cooldown_seconds`); deleting the key acknowledges it.
///
/// ```json
/// {"id": "001764000000000-failover", "at_ms": 1764000000950}
/// ```
///
/// Readers also accept a legacy `at` (see [`crate::contract::time`]); a
/// value with no time at all is an error, left to the reader to judge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "LastFailoverJson")]
pub struct LastFailover {
    /// The failover's history entry id.
    pub id: String,
    /// When it finished, Unix milliseconds.
    pub at_ms: u64,
}

#[derive(Deserialize)]
struct LastFailoverJson {
    #[serde(default)]
    id: String,
    at_ms: Option<u64>,
    at: Option<u64>,
}

impl TryFrom<LastFailoverJson> for LastFailover {
    type Error = &'static str;
    fn try_from(j: LastFailoverJson) -> Result<LastFailover, &'static str> {
        Ok(LastFailover {
            id: j.id,
            at_ms: at_ms_or_legacy(j.at_ms, j.at).ok_or("missing field `at_ms`")?,
        })
    }
}

impl LastFailover {
    pub fn new(id: impl Into<String>, at_ms: u64) -> LastFailover {
        LastFailover {
            id: id.into(),
            at_ms,
        }
    }

    pub fn parse(value: &[u8]) -> Result<LastFailover, ValueError> {
        serde_json::from_slice(value).map_err(|e| ValueError::Json(e.to_string()))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a marker serializes: strings and numbers only")
    }
}

/// `semi-sync/<cluster>`: per replica, the source's GTID position when the
/// coordinator granted it the semi-sync replica flag, written before the
/// flag is set. A semi-sync replica vouches only for commits acknowledged
/// after its grant: commits before it were acknowledged by another replica
/// (one that died, or that is now the source), so a failover may trust it
/// only once it has received its floor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckFloors {
    /// Node name → GTID position in the server's own text form.
    pub floors: std::collections::BTreeMap<String, String>,
    /// When the last grant was recorded, Unix milliseconds.
    #[serde(default)]
    pub at_ms: u64,
    /// Node name → when its server started (Unix seconds, that server's
    /// own clock), as last seen while it replicated from a live source. A
    /// member that reports the same start after a failover was refused for
    /// want of it has not restarted since: what it reports received still
    /// covers every ACK it sent.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub started: std::collections::BTreeMap<String, u64>,
}

impl AckFloors {
    pub fn parse(value: &[u8]) -> Result<AckFloors, ValueError> {
        let floors: AckFloors =
            serde_json::from_slice(value).map_err(|e| ValueError::Json(e.to_string()))?;
        for node in floors.floors.keys().chain(floors.started.keys()) {
            valid_node_name(node)?;
        }
        Ok(floors)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("floors serialize: strings and numbers only")
    }
}

impl Keys {
    /// `semi-sync/<cluster>`, holding [`AckFloors`].
    pub fn ack_floors_key(&self, cluster: &ClusterName) -> String {
        format!("{}semi-sync/{cluster}", self.prefix())
    }

    pub fn history_key(&self, cluster: &ClusterName, id: &str) -> String {
        format!("{}{id}", self.history_prefix(cluster))
    }

    /// `rejoin/<cluster>/<node>`: a request to bring a quarantined node
    /// back as a replica (`successover rejoin`).
    pub fn rejoin_prefix(&self, cluster: &ClusterName) -> String {
        format!("{}rejoin/{cluster}/", self.prefix())
    }

    /// `rejoin/<cluster>/<node>`, holding a [`RejoinRequest`].
    pub fn rejoin_key(&self, cluster: &ClusterName, node: &NodeName) -> String {
        format!("{}{node}", self.rejoin_prefix(cluster))
    }

    /// `history/<cluster>/last-failover`, holding a [`LastFailover`].
    pub fn last_failover_key(&self, cluster: &ClusterName) -> String {
        format!("{}last-failover", self.history_prefix(cluster))
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
    fn ack_floors_round_trip_and_reject_bad_names() {
        let mut f = AckFloors::default();
        f.floors.insert("db3".into(), "0-2-123".into());
        f.at_ms = 5;
        assert_eq!(AckFloors::parse(f.to_json().as_bytes()).unwrap(), f);
        assert!(!f.to_json().contains("started"), "{}", f.to_json());
        f.started.insert("db3".into(), 1_764_000_000);
        assert_eq!(AckFloors::parse(f.to_json().as_bytes()).unwrap(), f);
        assert!(AckFloors::parse(br#"{"floors":{"db 3":"0-1-1"}}"#).is_err());
        assert!(AckFloors::parse(br#"{"floors":{},"started":{"db 3":1}}"#).is_err());
        assert!(AckFloors::parse(b"nonsense").is_err());
        let keys = Keys::default();
        let c1 = ClusterName::parse("c1").unwrap();
        assert_eq!(keys.ack_floors_key(&c1), "mysql/semi-sync/c1");
    }

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
            b"{\"not_before_ms\": 2000, \"not_after_ms\": 2000}",
            b"{\"not_before_ms\": -1}",
            b"\xff",
        ] {
            assert!(SwitchoverRequest::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rejoin_requests() {
        let r = RejoinRequest::new("cli-1764000000000-4242", 1_764_000_000_000);
        assert_eq!(
            r.to_json(),
            r#"{"id":"cli-1764000000000-4242","at_ms":1764000000000}"#
        );
        assert_eq!(RejoinRequest::parse(r.to_json().as_bytes()).unwrap(), r);
        // What `successover rejoin` wrote before the `*_ms` rule: `at` in ms.
        assert_eq!(
            RejoinRequest::parse(br#"{"at": 1764000000000, "id": "cli-1764000000000-4242"}"#)
                .unwrap(),
            r
        );
        // By hand: no id, `at` in seconds, or nothing at all.
        assert_eq!(
            RejoinRequest::parse(br#"{"at": 1764000000}"#).unwrap(),
            RejoinRequest {
                id: None,
                at_ms: 1_764_000_000_000
            }
        );
        assert_eq!(
            RejoinRequest::parse(b" \n").unwrap(),
            RejoinRequest::default()
        );
        assert_eq!(RejoinRequest::default().to_json(), r#"{"at_ms":0}"#);
        for bad in [
            &br#"{"id": "../x"}"#[..],
            br#"{"id": "a\nb"}"#,
            b"yes",
            b"\xff",
        ] {
            assert!(RejoinRequest::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn last_failover_markers() {
        // Written by agent/src/failover.rs: already `at_ms`.
        let m = LastFailover::parse(br#"{"id":"001764000000000-failover","at_ms":1764000000950}"#)
            .unwrap();
        assert_eq!(
            m,
            LastFailover::new("001764000000000-failover", 1_764_000_000_950)
        );
        assert_eq!(
            m.to_json(),
            r#"{"id":"001764000000000-failover","at_ms":1764000000950}"#
        );
        assert_eq!(
            LastFailover::parse(br#"{"id":"x","at":1764000000}"#)
                .unwrap()
                .at_ms,
            1_764_000_000_000
        );
        let err = LastFailover::parse(br#"{"id":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("at_ms"), "{err}");
        assert!(LastFailover::parse(b"").is_err());
    }

    #[test]
    fn marker_and_request_keys() {
        let keys = Keys::default();
        let c1 = ClusterName::parse("c1").unwrap();
        let db1 = NodeName::parse("db1").unwrap();
        assert_eq!(keys.rejoin_key(&c1, &db1), "mysql/rejoin/c1/db1");
        assert_eq!(
            keys.last_failover_key(&c1),
            "mysql/history/c1/last-failover"
        );
        assert_eq!(keys.in_progress_key(&c1), "mysql/history/c1/in-progress");
    }

    #[test]
    fn history_ids_sort_by_time() {
        let a = history_id(999, ProcedureKind::Switchover);
        let b = history_id(1_000, ProcedureKind::Failover);
        assert!(a < b, "{a} {b}");
    }

    #[test]
    fn history_keeps_the_newest_entries_and_never_a_running_one() {
        let p = "mysql/history/c1/";
        let keys: Vec<String> = [5u64, 1, 4, 2, 3]
            .iter()
            .map(|t| format!("{p}{}", history_id(*t, ProcedureKind::Failover)))
            .chain(
                [
                    "mysql/history/c1/x/y",
                    "mysql/history/c1/",
                    "mysql/history/c1/in-progress",
                    "mysql/history/c1/last-failover",
                    "mysql/history/c1/000000000000000-failover/x",
                ]
                .map(str::to_owned),
            )
            .collect();
        // Keeping one deletes four entries and nothing else.
        assert_eq!(history_to_prune(&keys, p, 1, &[]).len(), 4);
        assert!(history_to_prune(&keys, p, 1, &[])
            .iter()
            .all(|k| k[p.len()..].starts_with("0000")));
        let pruned = history_to_prune(&keys, p, 2, &[]);
        let ids: Vec<&str> = pruned.iter().map(|k| &k[p.len()..]).collect();
        assert_eq!(
            ids,
            [1u64, 2, 3]
                .iter()
                .map(|t| history_id(*t, ProcedureKind::Failover))
                .collect::<Vec<_>>()
        );
        let running = history_id(2, ProcedureKind::Failover);
        assert_eq!(history_to_prune(&keys, p, 2, &[&running]).len(), 2);
        assert!(history_to_prune(&keys, p, 5, &[]).is_empty());
        assert!(history_to_prune(&keys, p, 100, &[]).is_empty());
    }
}
