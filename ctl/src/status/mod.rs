//! `successover status [<cluster>]`: what the KV tree says about one
//! cluster or all of them. Clusters are the names under `master/`,
//! `cluster/` and `agent/`.
//!
//! `--json` prints one document; the shape is stable (fields are only ever
//! added), and is the same whether one cluster or all were asked for:
//!
//! ```json
//! {
//!   "now_ms": 1700000000000,
//!   "clusters": [{
//!     "cluster": "c1",
//!     "source": "db1:3306",            // master/<cluster>, null when absent
//!     "source_node": "db1",            // the reporting node it names, or null
//!     "fenced": false,                 // master/<cluster>/failed exists
//!     "failed": null,                  // that key's value when fenced
//!     "coordinator": {"holder": "c1/db2", "held": true},  // lock key value; held = a session holds it
//!     "settings": {"proxy_port": 13306, "semi_sync_replicas": 1,
//!                  "auto_failover": true, "max_lag_seconds": 10},   // or null
//!     "switchover_request": null,      // a pending request (SwitchoverRequest), or null
//!     "procedure": null,               // see below
//!     "quarantined": [{"node": "db3", "addr": "db3:3306", "reason": "…",
//!                      "at": 1700000000,          // Unix seconds, as before the `*_ms` rule
//!                      "at_ms": 1700000000000, "problem": null}],
//!     "nodes": [{
//!       "node": "db2", "addr": "10.0.0.2:3306",
//!       "agent_session": true,         // the report is bound to a live agent session
//!       "published_source": false, "quarantined": false,
//!       "up": true,                    // the agent could read its server
//!       "error": null,                 // the agent's error when it could not
//!       "role": "replica", "read_only": true,
//!       "replication": {"source": "db1:3306", "io_running": "Yes", "sql_running": true,
//!                       "seconds_behind": 0, "last_io_error": "", "last_sql_error": ""},
//!       "semi_sync": {"source_enabled": false, "replica_enabled": true,
//!                     "source_status_on": false, "replica_status_on": true,
//!                     "clients": 0, "acking": true},
//!       "gtid_executed": "0-1-42",
//!       "observed_at_ms": 1699999998500, "report_age_ms": 1500,
//!       "drift": [],
//!       "problem": null                // the report could not be read (then most fields are null)
//!     }],
//!     "proxies": [{"proxy": "edge1", // proxy/<name> records that list this cluster
//!                  "live": true,        // its renderer's session holds the key
//!                  "source": "db1:3306", "fenced": false,
//!                  "routes_to_source": true, "at_ms": 1699999999000}],
//!     "problems": []                   // values that could not be read, each naming its key
//!   }],
//!   "problems": []                     // keys whose cluster name is invalid
//! }
//! ```
//!
//! `procedure`, when `history/<cluster>/in-progress` exists: `{"id",
//! "kind", "outcome", "from", "to", "started_ms", "reason", "request_id",
//! "last_step": {"name", "started_ms", "duration_ms", "ok", "detail"},
//! "problem"}`; everything but `id` is null when the entry it names cannot
//! be read (then `problem` says why).
//!
//! Three stages, one file each: [`fetch`] does every KV read and returns
//! them as they came ([`fetch::Snapshot`]); [`build`] interprets them into
//! the model ([`model::StatusDoc`], which is also the JSON document);
//! [`render`] turns the model into text or JSON. Only `fetch` talks to
//! Consul, so the other two are tested on fixed inputs.

pub mod build;
pub mod fetch;
pub mod model;
pub mod render;

use successover_common::contract::ClusterName;

use crate::{Ctx, Exit, Failure};

pub async fn run(ctx: &Ctx, only: Option<&ClusterName>) -> Result<Exit, Failure> {
    let snapshot = fetch::fetch(ctx, only).await?;
    let doc = build::build(&ctx.keys, &snapshot, only);
    if let Some(c) = only {
        if doc.clusters.is_empty() {
            return Err(Failure::failed(format!(
                "cluster {c} is unknown: nothing under {}master/{c}, {}cluster/{c} or {}agent/{c}/",
                ctx.keys.prefix(),
                ctx.keys.prefix(),
                ctx.keys.prefix()
            )));
        }
    }
    if ctx.json {
        println!("{}", render::json(&doc)?);
    } else {
        print!("{}", render::text(&doc));
    }
    Ok(Exit::Ok)
}

#[cfg(test)]
pub(crate) mod fixtures {
    use serde_json::json;
    use successover_common::consul::KvPair;

    use super::fetch::Snapshot;

    pub(crate) fn pair(key: &str, value: &str) -> KvPair {
        KvPair {
            key: key.to_owned(),
            value: Some(value.as_bytes().to_vec()),
            flags: 0,
            session: None,
            create_index: 1,
            modify_index: 1,
            lock_index: 0,
        }
    }

    pub(crate) fn held(mut p: KvPair) -> KvPair {
        p.session = Some("6c1e3d7e-0000-0000-0000-000000000001".into());
        p
    }

    pub(crate) fn report(node: &str, role: &str, observed_at_ms: u64) -> serde_json::Value {
        let replica = role == "replica";
        json!({
            "format": 1, "cluster": "c1", "node": node, "addr": format!("{node}:3306"),
            "agent_version": "0.1.0", "observed_at_ms": observed_at_ms,
            "up": true, "error": null,
            "flavor": "MariaDB 10.11.19", "version": "10.11.19-MariaDB",
            "server_id": 1, "server_uuid": null,
            "role": role, "read_only": replica, "super_read_only": null,
            "replication": if replica { json!({
                "source": "db1:3306", "io_running": "Yes", "sql_running": true,
                "seconds_behind": 0, "last_io_error": "", "last_sql_error": "",
                "received_gtid": "0-1-42"
            }) } else { json!(null) },
            "gtid_executed": "0-1-42",
            "semi_sync": {
                "source_enabled": !replica, "replica_enabled": node == "db2",
                "source_status_on": !replica, "replica_status_on": node == "db2",
                "clients": if replica { 0 } else { 1 }, "yes_tx": 42, "no_tx": 0,
                "wait_point": "AFTER_SYNC", "timeout_ms": 3_600_000u64
            },
            "client_connections": 3,
            "drift": []
        })
    }

    pub(crate) const NOW: u64 = 1_700_000_010_000;

    pub(crate) fn tree() -> Vec<KvPair> {
        let entry = json!({
            "id": "001700000000000-switchover", "kind": "switchover", "cluster": "c1",
            "outcome": "running", "reason": "switching db1 -> db2",
            "from": "db1", "to": "db2",
            "request": {"target": "db2", "force": false, "max_lag_seconds": null,
                        "skip_catchup": false, "id": "cli-1"},
            "coordinator": "db3", "started_ms": 1_700_000_000_000u64, "finished_ms": null,
            "steps": [{"name": "fence", "started_ms": 1_700_000_000_001u64,
                       "duration_ms": 4, "ok": true}]
        });
        vec![
            pair("mysql/master/", ""),
            pair("mysql/master/c1", "db1:3306"),
            pair("mysql/master/c1/hostname", "db1"),
            pair("mysql/master/c1/port", "3306"),
            pair("mysql/master/c10", "db9:3306"),
            pair(
                "mysql/master/c1/failed",
                r#"{"reason":"switchover","by":"db3"}"#,
            ),
            pair("mysql/cluster/c1", r#"{"proxy_port": 13306}"#),
            held(pair("mysql/lock/c1", "c1/db3")),
            held(pair(
                "mysql/agent/c1/db1",
                &report("db1", "source", NOW - 1_500).to_string(),
            )),
            held(pair(
                "mysql/agent/c1/db2",
                &report("db2", "replica", NOW - 2_000).to_string(),
            )),
            pair("mysql/agent/c1/db3", "{not json"),
            pair(
                "mysql/quarantine/c1/db4",
                r#"{"node":"db4","addr":"db4:3306","reason":"failover to db1","at":1}"#,
            ),
            pair("mysql/history/c1/in-progress", "001700000000000-switchover"),
            pair(
                "mysql/history/c1/001700000000000-switchover",
                &entry.to_string(),
            ),
            pair("mysql/master/c 2", "x:1"),
            pair("other/master/c3", "db1:3306"),
        ]
    }

    pub(crate) fn snapshot(pairs: Vec<KvPair>) -> Snapshot {
        Snapshot { now_ms: NOW, pairs }
    }
}
