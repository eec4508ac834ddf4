//! Every read the agent makes of a MySQL server, gathered into one plain
//! value per node per tick. Decisions work on these values only.

use crate::decide::{HostPort, NodeView, ReplicaView, SemiSyncView};
use crate::mysql::{
    GtidState, IoRunning, Node, NodeError, ReadOnly, ReplicaStatus, SemiSyncState, ServerInfo,
    WaitPoint,
};

#[derive(Clone, Debug)]
pub struct Observation {
    pub info: ServerInfo,
    pub read_only: ReadOnly,
    pub replica: Option<ReplicaStatus>,
    pub gtid_executed: GtidState,
    pub semi_sync: SemiSyncState,
    pub client_connections: u64,
    /// Client connections per account.
    pub clients_by_user: std::collections::BTreeMap<String, u64>,
    /// Heartbeats received from the source, on a replica.
    pub heartbeats: Option<u64>,
    /// MariaDB's `@@gtid_binlog_state` (domain, server id, seq).
    pub binlog_state: Option<Vec<(u32, u32, u64)>>,
}

impl Observation {
    pub fn role(&self) -> &'static str {
        match (&self.replica, self.read_only.read_only) {
            (Some(_), _) => "replica",
            (None, false) => "source",
            (None, true) => "unknown",
        }
    }
}

pub async fn observe(node: &mut Node) -> Result<Observation, NodeError> {
    let info = node.server_info().await?.clone();
    let read_only = node.read_only().await?;
    let replica = node.replica_status().await?;
    let gtid_executed = node.gtid_executed().await?;
    let semi_sync = node.semi_sync().await?;
    let clients = node.processlist_clients().await?;
    let client_connections = clients.len() as u64;
    let mut clients_by_user = std::collections::BTreeMap::new();
    for c in clients {
        *clients_by_user.entry(c.user).or_insert(0) += 1;
    }
    let heartbeats = match &replica {
        Some(_) => node.received_heartbeats().await?,
        None => None,
    };
    let binlog_state = node.mariadb_binlog_state().await?;
    Ok(Observation {
        info,
        read_only,
        replica,
        gtid_executed,
        semi_sync,
        client_connections,
        clients_by_user,
        heartbeats,
        binlog_state,
    })
}

/// The decision function's view of one node. A node that could not be
/// observed is kept (by name and address) but marked unreachable, so the
/// decision never acts on stale state.
pub fn node_view(
    name: &str,
    addr: HostPort,
    obs: Option<&Observation>,
    quarantined: bool,
) -> NodeView {
    let Some(o) = obs else {
        return NodeView::unreachable(name, addr, quarantined);
    };
    NodeView {
        name: name.to_owned(),
        addr,
        reachable: true,
        read_only: o.read_only.read_only,
        replica: o.replica.as_ref().map(|r| ReplicaView {
            source: HostPort::reported(&r.source_host, r.source_port),
            io_running: r.io_running == IoRunning::Yes,
            io_stopped: r.io_running == IoRunning::No,
            sql_running: r.sql_running,
            received: r.received(),
            seconds_behind_source: r.seconds_behind_source,
            heartbeats: o.heartbeats,
            read_position: r.read_position.clone(),
            last_io_errno: r.last_io_errno,
            last_sql_errno: r.last_sql_errno,
            observed_ms: None,
        }),
        semi_sync_source: o.semi_sync.source_enabled,
        semi_sync_replica: o.semi_sync.replica_enabled,
        semi_sync_replica_active: o.semi_sync.replica_status_on,
        semi: SemiSyncView {
            source_status_on: o.semi_sync.source_status_on,
            clients: o.semi_sync.clients,
            wait_sessions: o.semi_sync.wait_sessions,
            yes_tx: o.semi_sync.yes_tx,
            no_tx: o.semi_sync.no_tx,
            no_times: o.semi_sync.no_times,
            settings_drift: o.semi_sync.plugins.source.is_some()
                && (o.semi_sync.wait_point == Some(WaitPoint::AfterCommit)
                    || o.semi_sync.wait_no_replica == Some(false)
                    || o.semi_sync.timeout_ms.is_some_and(|t| {
                        t < successover_common::contract::MIN_SEMI_SYNC_TIMEOUT_MS
                    })),
        },
        gtid_executed: Some(o.gtid_executed.clone()),
        binlog_state: o.binlog_state.clone(),
        server_uuid: o.info.server_uuid,
        started_s: o.info.started_s,
        quarantined,
    }
}
