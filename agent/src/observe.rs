//! Every read the agent makes of a MySQL server, gathered into one plain
//! value per node per tick. Decisions work on these values only.

use crate::decide::{Addr, NodeView, ReplicaView};
use crate::mysql::{
    GtidState, IoRunning, Node, NodeError, ReadOnly, ReplicaStatus, SemiSyncState, ServerInfo,
};

#[derive(Clone, Debug)]
pub struct Observation {
    pub info: ServerInfo,
    pub read_only: ReadOnly,
    pub replica: Option<ReplicaStatus>,
    pub gtid_executed: GtidState,
    pub semi_sync: SemiSyncState,
    pub client_connections: u64,
    /// Heartbeats received from the source, on a replica.
    pub heartbeats: Option<u64>,
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
    let client_connections = node.processlist_clients().await?.len() as u64;
    let heartbeats = match &replica {
        Some(_) => node.received_heartbeats().await?,
        None => None,
    };
    Ok(Observation {
        info,
        read_only,
        replica,
        gtid_executed,
        semi_sync,
        client_connections,
        heartbeats,
    })
}

/// The decision function's view of one node. A node that could not be
/// observed is kept (by name and address) but marked unreachable, so the
/// decision never acts on stale state.
pub fn node_view(name: &str, addr: Addr, obs: Option<&Observation>, quarantined: bool) -> NodeView {
    match obs {
        Some(o) => NodeView {
            name: name.to_owned(),
            addr,
            reachable: true,
            read_only: o.read_only.read_only,
            replica: o.replica.as_ref().map(|r| ReplicaView {
                source: Addr {
                    host: r.source_host.clone(),
                    port: r.source_port,
                },
                io_running: r.io_running == IoRunning::Yes,
                sql_running: r.sql_running,
            }),
            semi_sync_source: o.semi_sync.source_enabled,
            semi_sync_replica: o.semi_sync.replica_enabled,
            semi_sync_replica_active: o.semi_sync.replica_status_on,
            quarantined,
        },
        None => NodeView {
            name: name.to_owned(),
            addr,
            reachable: false,
            read_only: true,
            replica: None,
            semi_sync_source: false,
            semi_sync_replica: false,
            semi_sync_replica_active: false,
            quarantined,
        },
    }
}
