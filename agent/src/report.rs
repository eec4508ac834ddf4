//! The health report an agent keeps under `<prefix>agent/<cluster>/<node>`,
//! bound to the agent's session so it disappears when the agent dies.
//!
//! Shape (JSON, `format` 1); documented in `docs/kv.md`:
//!
//! ```json
//! {
//!   "format": 1, "cluster": "c1", "node": "db1", "addr": "10.0.0.1:3306",
//!   "agent_version": "0.1.0", "observed_at_ms": 1790000000000,
//!   "up": true, "error": null,
//!   "flavor": "MariaDB 10.11.19", "version": "10.11.19-MariaDB-0+deb12u1",
//!   "server_id": 1, "server_uuid": null,
//!   "role": "source", "read_only": false, "super_read_only": null,
//!   "replication": null,
//!   "gtid_executed": "0-1-42",
//!   "semi_sync": { "source_enabled": true, "replica_enabled": false,
//!                  "source_status_on": true, "replica_status_on": false,
//!                  "clients": 1, "yes_tx": 42, "no_tx": 0,
//!                  "wait_point": "AFTER_SYNC", "timeout_ms": 3600000 },
//!   "client_connections": 12,
//!   "drift": []
//! }
//! ```
//!
//! `replication` on a replica: `{ "source": "host:port", "io_running": "Yes",
//! "sql_running": true, "seconds_behind": 0, "last_io_error": "",
//! "last_sql_error": "", "received_gtid": "0-1-42" }`.

use serde::{Deserialize, Serialize};

use crate::mysql::WaitPoint;
use crate::observe::Observation;

pub const FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    pub format: u32,
    pub cluster: String,
    pub node: String,
    /// Where coordinators, peers and proxies reach this server.
    pub addr: String,
    pub agent_version: String,
    pub observed_at_ms: u64,
    /// Whether the agent could read its local server this tick.
    pub up: bool,
    pub error: Option<String>,
    pub flavor: Option<String>,
    pub version: Option<String>,
    pub server_id: Option<u32>,
    pub server_uuid: Option<String>,
    /// `source` (writable, not replicating), `replica`, or `unknown`.
    pub role: String,
    pub read_only: Option<bool>,
    pub super_read_only: Option<bool>,
    pub replication: Option<ReplicationReport>,
    pub gtid_executed: Option<String>,
    pub semi_sync: Option<SemiSyncReport>,
    pub client_connections: Option<u64>,
    /// Settings that break the lossless rules (DESIGN.md rule 1).
    #[serde(default)]
    pub drift: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationReport {
    pub source: String,
    pub io_running: String,
    pub sql_running: bool,
    pub seconds_behind: Option<u64>,
    pub last_io_error: String,
    pub last_sql_error: String,
    pub received_gtid: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemiSyncReport {
    pub source_enabled: bool,
    pub replica_enabled: bool,
    pub source_status_on: bool,
    pub replica_status_on: bool,
    pub clients: u64,
    pub yes_tx: u64,
    pub no_tx: u64,
    pub wait_point: Option<String>,
    pub timeout_ms: Option<u64>,
}

/// Below this, a network blip turns the cluster asynchronous without
/// anyone noticing (rule 1).
pub const MIN_SEMI_SYNC_TIMEOUT_MS: u64 = 60 * 60 * 1000;

impl HealthReport {
    pub fn new(
        cluster: &str,
        node: &str,
        addr: &str,
        now_ms: u64,
        obs: &Result<Observation, String>,
    ) -> Self {
        let mut r = HealthReport {
            format: FORMAT,
            cluster: cluster.to_owned(),
            node: node.to_owned(),
            addr: addr.to_owned(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            observed_at_ms: now_ms,
            up: false,
            error: None,
            flavor: None,
            version: None,
            server_id: None,
            server_uuid: None,
            role: "unknown".to_owned(),
            read_only: None,
            super_read_only: None,
            replication: None,
            gtid_executed: None,
            semi_sync: None,
            client_connections: None,
            drift: Vec::new(),
        };
        let o = match obs {
            Ok(o) => o,
            Err(e) => {
                r.error = Some(e.clone());
                return r;
            }
        };
        r.up = true;
        r.flavor = Some(o.info.flavor.to_string());
        r.version = Some(o.info.version_string.clone());
        r.server_id = Some(o.info.server_id);
        r.server_uuid = o.info.server_uuid.as_ref().map(|u| u.to_string());
        r.read_only = Some(o.read_only.read_only);
        r.super_read_only = o.read_only.super_read_only;
        r.role = o.role().to_owned();
        r.replication = o.replica.as_ref().map(|s| ReplicationReport {
            source: crate::decide::Addr {
                host: s.source_host.clone(),
                port: s.source_port,
            }
            .to_string(),
            io_running: format!("{:?}", s.io_running),
            sql_running: s.sql_running,
            seconds_behind: s.seconds_behind_source,
            last_io_error: s.last_io_error.clone(),
            last_sql_error: s.last_sql_error.clone(),
            received_gtid: s.received().to_string(),
        });
        r.gtid_executed = Some(o.gtid_executed.to_string());
        let s = &o.semi_sync;
        r.semi_sync = Some(SemiSyncReport {
            source_enabled: s.source_enabled,
            replica_enabled: s.replica_enabled,
            source_status_on: s.source_status_on,
            replica_status_on: s.replica_status_on,
            clients: s.clients,
            yes_tx: s.yes_tx,
            no_tx: s.no_tx,
            wait_point: s.wait_point.map(|w| wait_point_name(w).to_owned()),
            timeout_ms: s.timeout_ms,
        });
        r.client_connections = Some(o.client_connections);
        r.drift = drift(o);
        r
    }

    /// Whether `other` differs in anything but timestamps and counters that
    /// move on every commit: only then is a KV write worth its Raft round
    /// (DESIGN.md "Scale").
    pub fn differs_materially(&self, other: &HealthReport) -> bool {
        let mut a = self.clone();
        let mut b = other.clone();
        for r in [&mut a, &mut b] {
            r.observed_at_ms = 0;
            r.client_connections = None;
            r.gtid_executed = None;
            if let Some(s) = r.semi_sync.as_mut() {
                s.yes_tx = 0;
                s.no_tx = 0;
            }
            if let Some(rep) = r.replication.as_mut() {
                rep.received_gtid.clear();
                // Lag is reported in coarse steps so a replica that wobbles
                // between 0 and 1 s does not write every tick.
                rep.seconds_behind = rep.seconds_behind.map(|s| match s {
                    0..=4 => 0,
                    5..=59 => 5,
                    _ => 60,
                });
            }
        }
        a != b
    }
}

fn drift(o: &Observation) -> Vec<String> {
    let mut out = Vec::new();
    let s = &o.semi_sync;
    if s.source_enabled {
        if let Some(t) = s.timeout_ms {
            if t < MIN_SEMI_SYNC_TIMEOUT_MS {
                out.push(format!(
                    "semi-sync timeout is {t} ms: a blip would silently fall back to async (want >= {MIN_SEMI_SYNC_TIMEOUT_MS})"
                ));
            }
        }
        if s.wait_point == Some(WaitPoint::AfterCommit) {
            out.push("semi-sync wait point is AFTER_COMMIT: a crash can lose acknowledged commits, want AFTER_SYNC".to_owned());
        }
        if !s.source_status_on {
            out.push("semi-sync source flag is on but the source runs asynchronously".to_owned());
        }
    }
    out
}

fn wait_point_name(w: WaitPoint) -> &'static str {
    match w {
        WaitPoint::AfterSync => "AFTER_SYNC",
        WaitPoint::AfterCommit => "AFTER_COMMIT",
    }
}
