//! Builds this agent's health report from what it observed. The report's
//! type and shape are part of the KV contract
//! (`successover_common::contract::report`, `docs/kv.md`): the coordinator
//! and the CLI read it without depending on this crate.

use successover_common::contract::report::FORMAT;
use successover_common::contract::{ReplicationReport, SemiSyncReport, MIN_SEMI_SYNC_TIMEOUT_MS};
// Re-exported so that the agent's modules keep naming it from here.
pub use successover_common::contract::HealthReport;

use crate::mysql::WaitPoint;
use crate::observe::Observation;

/// The report for `<prefix>agent/<cluster>/<node>`. When the local server
/// could not be read (`obs` is the error), the report says so: `up` false,
/// `error` why, server fields null.
pub fn build(
    cluster: &str,
    node: &str,
    addr: &str,
    now_ms: u64,
    obs: &Result<Observation, String>,
) -> HealthReport {
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
        read_only_writers: Default::default(),
        coordinating: None,
        parallel_apply: None,
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
        source: crate::decide::HostPort::reported(&s.source_host, s.source_port).to_string(),
        io_running: format!("{:?}", s.io_running),
        sql_running: s.sql_running,
        seconds_behind: s.seconds_behind_source,
        last_io_error: s.last_io_error.clone(),
        last_sql_error: s.last_sql_error.clone(),
        received_gtid: s.received().to_string(),
        apply_backlog: None,
        applied_per_s: None,
        expected_apply_ms: None,
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

/// The applier line of the report, and the settings of it that break the
/// lossless checks (a candidate "has applied everything up to" a GTID
/// position only if sequence numbers never go back and commits keep the
/// source's order).
pub fn add_apply_settings(r: &mut HealthReport, a: &crate::mysql::status::ApplySettings) {
    r.parallel_apply = Some(a.describe());
    if !a.gtid_strict {
        r.drift.push(match a.mode {
            Some(_) => "gtid_strict_mode is OFF: a GTID position no longer proves what a server applied, want ON".to_owned(),
            None => "gtid_mode or enforce_gtid_consistency is not ON: GTID positions do not prove what a server applied, want both ON".to_owned(),
        });
    }
    if a.workers > 1 && !a.ordered {
        r.drift.push("parallel appliers commit out of order (replica_preserve_commit_order=OFF): a failover candidate may hold gaps, want ON".to_owned());
    }
}

/// A replica's apply backlog and rate (see [`crate::observe::ApplyMeter`]).
pub fn add_apply_lag(r: &mut HealthReport, lag: &crate::observe::ApplyLag) {
    if let Some(rep) = r.replication.as_mut() {
        rep.apply_backlog = Some(lag.backlog);
        rep.applied_per_s = lag.per_second;
        rep.expected_apply_ms = lag.expected.map(|d| d.as_millis() as u64);
    }
}

/// Settings that break the lossless rules, for the report's `drift`.
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
