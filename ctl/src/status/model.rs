//! What `successover status` shows, and its `--json` document: the shape
//! is stable (fields are only ever added; see the module doc of
//! [`super`]).

use serde::Serialize;
use successover_common::contract::ClusterSettings;
use successover_common::procedure::{Outcome, ProcedureKind, Step, SwitchoverRequest};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusDoc {
    pub now_ms: u64,
    pub clusters: Vec<ClusterStatus>,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterStatus {
    pub cluster: String,
    pub source: Option<String>,
    pub source_node: Option<String>,
    pub fenced: bool,
    pub failed: Option<String>,
    pub coordinator: Coordinator,
    pub settings: Option<ClusterSettings>,
    pub switchover_request: Option<SwitchoverRequest>,
    pub procedure: Option<Procedure>,
    pub quarantined: Vec<QuarantinedNode>,
    /// Nodes drained of the ACK role (`drain/<cluster>/<node>`).
    pub drained: Vec<String>,
    pub nodes: Vec<NodeStatus>,
    /// Every proxy that published what it serves for this cluster
    /// (`proxy/<name>`), by name.
    pub proxies: Vec<ProxyStatus>,
    pub problems: Vec<String>,
}

/// One proxy's listen block for the cluster, as its renderer last
/// published it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyStatus {
    pub proxy: String,
    /// Its renderer's session holds the key: coordinators wait for it.
    pub live: bool,
    pub source: Option<String>,
    pub fenced: bool,
    /// It routes new connections to the published source.
    pub routes_to_source: bool,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Coordinator {
    /// The lock key's value (`<cluster>/<node>` as the agents write it);
    /// kept after a release, so it may name a past holder.
    pub holder: Option<String>,
    pub held: bool,
    /// What the holder decided in its last cycle, from its health report:
    /// "healthy: …", or why it waits, refuses or acts.
    pub says: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Procedure {
    pub id: String,
    pub kind: Option<ProcedureKind>,
    pub outcome: Option<Outcome>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub started_ms: Option<u64>,
    pub reason: Option<String>,
    pub request_id: Option<String>,
    pub last_step: Option<Step>,
    pub problem: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuarantinedNode {
    pub node: String,
    pub addr: Option<String>,
    pub reason: Option<String>,
    /// Unix seconds: the field this document had before the KV contract's
    /// `*_ms` rule, kept for the scripts that read it.
    pub at: Option<u64>,
    pub at_ms: Option<u64>,
    pub problem: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    pub node: String,
    pub addr: Option<String>,
    pub agent_session: bool,
    pub published_source: bool,
    pub quarantined: bool,
    pub up: bool,
    pub error: Option<String>,
    pub role: Option<String>,
    pub read_only: Option<bool>,
    pub replication: Option<Replication>,
    pub semi_sync: Option<SemiSync>,
    pub gtid_executed: Option<String>,
    pub observed_at_ms: Option<u64>,
    pub report_age_ms: Option<u64>,
    pub drift: Vec<String>,
    /// Accounts whose commits go through `read_only`, with connections.
    pub read_only_writers: std::collections::BTreeMap<String, u64>,
    /// How the server applies replicated transactions, as its agent
    /// reported it ("4 parallel workers, optimistic").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apply: Option<String>,
    pub problem: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Replication {
    pub source: String,
    pub io_running: String,
    pub sql_running: bool,
    pub seconds_behind: Option<u64>,
    pub last_io_error: String,
    pub last_sql_error: String,
    /// Transactions received and not yet applied: what a failover to this
    /// replica would apply before it opens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apply_backlog: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_per_s: Option<u64>,
    /// The backlog at that rate (ms); absent while the applier is stalled
    /// with work to do, or not yet measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_apply_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SemiSync {
    pub source_enabled: bool,
    pub replica_enabled: bool,
    pub source_status_on: bool,
    pub replica_status_on: bool,
    pub clients: u64,
    /// The replica flag is set and the replica is actually sending ACKs.
    pub acking: bool,
}
