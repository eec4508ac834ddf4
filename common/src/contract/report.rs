//! The health report an agent keeps under `<prefix>agent/<cluster>/<node>`,
//! bound to the agent's session so it disappears when the agent dies. The
//! agent builds it from what it observed (`agent/src/report.rs`); the
//! coordinator and the CLI read it.
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
//! "last_sql_error": "", "received_gtid": "0-1-42", "apply_backlog": 0,
//! "applied_per_s": 120, "expected_apply_ms": 0 }` (the last three absent
//! until the agent has measured them).

use serde::{Deserialize, Serialize};

use super::ValueError;

pub const FORMAT: u32 = 1;

/// Below this, a network blip turns the cluster asynchronous without
/// anyone noticing (rule 1).
pub const MIN_SEMI_SYNC_TIMEOUT_MS: u64 = 60 * 60 * 1000;

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
    /// Accounts (other than the agent's and replication's) whose commits go
    /// through `read_only` (MariaDB's `READ_ONLY ADMIN`, part of `ALL`),
    /// with their client connections now. A switch blocks their commits;
    /// a client of theirs that bypasses the proxies still reaches the
    /// server, so they are worth knowing.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub read_only_writers: std::collections::BTreeMap<String, u64>,
    /// On the coordinator's report only: what it decided in its last cycle,
    /// in the words it logs ("healthy: db1 is the source", or why it
    /// waits, refuses or acts). `successover status` shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinating: Option<String>,
    /// How the server applies replicated transactions ("4 parallel
    /// workers, optimistic", "one applier").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_apply: Option<String>,
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
    /// Transactions received and not yet applied: what a failover to this
    /// replica applies before it opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_backlog: Option<u64>,
    /// Transactions applied per second over the agent's last 10 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_per_s: Option<u64>,
    /// The backlog at that rate, in milliseconds; absent while the applier
    /// makes no progress with work to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_apply_ms: Option<u64>,
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

impl HealthReport {
    pub fn parse(value: &[u8]) -> Result<HealthReport, ValueError> {
        serde_json::from_slice(value).map_err(|e| ValueError::Json(e.to_string()))
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
            // Which accounts matter; their connection counts churn.
            for n in r.read_only_writers.values_mut() {
                *n = 0;
            }
            // Counts and times in the coordinator's words ("3 commit(s)
            // wait", "(2)") change every cycle; the heartbeat carries them.
            r.coordinating = r.coordinating.as_ref().map(|s| {
                s.chars()
                    .map(|c| if c.is_ascii_digit() { '#' } else { c })
                    .collect()
            });
            if let Some(s) = r.semi_sync.as_mut() {
                s.yes_tx = 0;
                s.no_tx = 0;
            }
            if let Some(rep) = r.replication.as_mut() {
                rep.received_gtid.clear();
                rep.applied_per_s = None;
                rep.apply_backlog = rep.apply_backlog.map(|n| match n {
                    0..=999 => 0,
                    1_000..=99_999 => 1,
                    _ => 2,
                });
                rep.expected_apply_ms = rep.expected_apply_ms.map(|ms| match ms {
                    0..=4_999 => 0,
                    5_000..=59_999 => 1,
                    _ => 2,
                });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A replica's report exactly as an agent of this format writes it.
    const REPLICA: &str = r#"{"format":1,"cluster":"c1","node":"db2","addr":"10.0.0.2:3306",
        "agent_version":"0.1.0","observed_at_ms":1790000000000,"up":true,"error":null,
        "flavor":"MariaDB 10.11.19","version":"10.11.19-MariaDB-0+deb12u1","server_id":2,
        "server_uuid":null,"role":"replica","read_only":true,"super_read_only":null,
        "replication":{"source":"10.0.0.1:3306","io_running":"Yes","sql_running":true,
          "seconds_behind":0,"last_io_error":"","last_sql_error":"","received_gtid":"0-1-42"},
        "gtid_executed":"0-1-42",
        "semi_sync":{"source_enabled":false,"replica_enabled":true,"source_status_on":false,
          "replica_status_on":true,"clients":0,"yes_tx":0,"no_tx":0,"wait_point":"AFTER_SYNC",
          "timeout_ms":3600000},
        "client_connections":3,"drift":[]}"#;

    #[test]
    fn reads_what_agents_write_and_writes_it_back_unchanged() {
        let r = HealthReport::parse(REPLICA.as_bytes()).unwrap();
        assert_eq!(r.format, FORMAT);
        assert_eq!(r.replication.as_ref().unwrap().received_gtid, "0-1-42");
        let again: serde_json::Value = serde_json::to_value(&r).unwrap();
        let original: serde_json::Value = serde_json::from_str(REPLICA).unwrap();
        assert_eq!(again, original);
        assert!(matches!(
            HealthReport::parse(b"{not json"),
            Err(ValueError::Json(_))
        ));
    }

    #[test]
    fn counters_and_small_lag_changes_are_not_material() {
        let mut a = HealthReport::parse(REPLICA.as_bytes()).unwrap();
        let rep = a.replication.as_mut().unwrap();
        rep.apply_backlog = Some(0);
        rep.applied_per_s = Some(120);
        rep.expected_apply_ms = Some(0);
        let mut b = a.clone();
        b.observed_at_ms += 30_000;
        b.client_connections = Some(40);
        b.gtid_executed = Some("0-1-99".into());
        b.semi_sync.as_mut().unwrap().yes_tx = 57;
        let rep = b.replication.as_mut().unwrap();
        rep.received_gtid = "0-1-99".into();
        rep.seconds_behind = Some(3);
        rep.apply_backlog = Some(800);
        rep.applied_per_s = Some(450);
        rep.expected_apply_ms = Some(1_800);
        assert!(!a.differs_materially(&b));
        let mut behind = b.clone();
        behind.replication.as_mut().unwrap().expected_apply_ms = Some(7_000);
        assert!(b.differs_materially(&behind), "apply time crossed a step");
        behind = b.clone();
        behind.replication.as_mut().unwrap().apply_backlog = Some(1_000);
        assert!(b.differs_materially(&behind), "backlog crossed a step");
        b.replication.as_mut().unwrap().seconds_behind = Some(5);
        assert!(a.differs_materially(&b), "lag crossed a step");
        let mut c = a.clone();
        c.read_only = Some(false);
        assert!(a.differs_materially(&c));
        let mut d = a.clone();
        d.drift.push("semi-sync timeout".into());
        assert!(a.differs_materially(&d));
        // The coordinator's words matter, their numbers do not.
        let mut e = a.clone();
        e.coordinating = Some("3 commit(s) on db1 wait (1)".into());
        assert!(a.differs_materially(&e));
        let mut f = e.clone();
        f.coordinating = Some("4 commit(s) on db1 wait (2)".into());
        assert!(!e.differs_materially(&f));
        f.coordinating = Some("healthy: db1 is the source".into());
        assert!(e.differs_materially(&f));
    }
}
