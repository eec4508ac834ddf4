//! Test fixtures shared by the decision tables and the simulator.

use super::{
    ClusterView, HostPort, Input, KvInputs, NodeView, ReplicaView, SemiSyncView, Settings,
};
use crate::config::Detection;
use crate::mysql::{GtidPos, GtidState};

pub fn addr(port: u16) -> HostPort {
    HostPort::reported("127.0.0.1", port)
}

pub fn pos(s: &str) -> GtidState {
    GtidState::MariaDb(GtidPos::parse(s).unwrap())
}

pub fn source(name: &str, port: u16) -> NodeView {
    NodeView {
        name: name.into(),
        addr: addr(port),
        reachable: true,
        read_only: false,
        replica: None,
        semi_sync_source: true,
        semi_sync_replica: false,
        semi_sync_replica_active: false,
        semi: SemiSyncView {
            source_status_on: true,
            clients: 1,
            ..SemiSyncView::default()
        },
        gtid_executed: Some(pos("0-1-10")),
        binlog_state: None,
        server_uuid: None,
        started_s: None,
        quarantined: false,
    }
}

pub fn replica(name: &str, port: u16, of: u16, semi: bool) -> NodeView {
    NodeView {
        name: name.into(),
        addr: addr(port),
        reachable: true,
        read_only: true,
        replica: Some(ReplicaView {
            source: addr(of),
            io_running: true,
            io_stopped: false,
            sql_running: true,
            received: pos("0-1-10"),
            seconds_behind_source: Some(0),
            heartbeats: Some(1),
            read_position: None,
            last_io_errno: 0,
            last_sql_errno: 0,
            observed_ms: None,
        }),
        semi_sync_source: false,
        semi_sync_replica: semi,
        semi_sync_replica_active: semi,
        semi: SemiSyncView::default(),
        gtid_executed: Some(pos("0-1-10")),
        binlog_state: None,
        server_uuid: None,
        started_s: None,
        quarantined: false,
    }
}

/// db1 source, db2 semi-sync replica, db3 async replica, published.
pub fn healthy() -> ClusterView {
    ClusterView {
        cluster: "c1".into(),
        nodes: vec![
            source("db1", 3301),
            replica("db2", 3302, 3301, true),
            replica("db3", 3303, 3301, false),
        ],
        published: Some(addr(3301)),
        fenced: false,
        procedure_running: false,
        maintenance: false,
        semi_sync_replicas: 1,
        drained: Default::default(),
    }
}

/// A decision's input at monotonic `now_ms` (wall clock a fixed offset
/// from it), with the shipped detection settings at a one-second tick.
pub fn input<'a>(v: &'a ClusterView, kv: &'a KvInputs, me: &'a str, now_ms: u64) -> Input<'a> {
    Input {
        view: v,
        kv,
        running: None,
        probe_failures: 0,
        probe_stall: None,
        settings: Settings {
            detection: Detection::ProbeAndReplicas,
            confirmations: 3,
            tick_ms: 1000,
            probe_ms: 1000,
        },
        now_ms,
        coordinator: me,
        wall_ms: 1_700_000_000_000 + now_ms,
    }
}
