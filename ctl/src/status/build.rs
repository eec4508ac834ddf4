//! Pure: the pairs `status` read ([`Snapshot`]) → the model
//! ([`StatusDoc`]). Every value is validated here; one that fails becomes a
//! `problem` naming its key instead of stopping the command.

use std::collections::BTreeMap;

use successover_common::consul::KvPair;
use successover_common::contract::{
    host_is_node, parse_host_port, valid_node_name, ClusterName, ClusterSettings, HealthReport,
    HostPort, KeyPath, Keys, MasterKeys, MasterProblem, ProxyServing, Quarantine,
    ReplicationReport, ATTR_FAILED,
};
use successover_common::procedure::{HistoryEntry, SwitchoverRequest};

use super::fetch::Snapshot;
use super::model::{
    ClusterStatus, Coordinator, NodeStatus, Procedure, ProxyStatus, QuarantinedNode, Replication,
    SemiSync, StatusDoc,
};
use crate::format::value_text;

const IN_PROGRESS: &str = "in-progress";

impl From<&ReplicationReport> for Replication {
    fn from(r: &ReplicationReport) -> Replication {
        Replication {
            source: r.source.clone(),
            io_running: r.io_running.clone(),
            sql_running: r.sql_running,
            seconds_behind: r.seconds_behind,
            last_io_error: r.last_io_error.clone(),
            last_sql_error: r.last_sql_error.clone(),
            apply_backlog: r.apply_backlog,
            applied_per_s: r.applied_per_s,
            expected_apply_ms: r.expected_apply_ms,
        }
    }
}

/// Everything read for one cluster, before interpretation.
#[derive(Default)]
struct Raw<'a> {
    /// Whether a key that defines the cluster (master, settings, agent) exists.
    defined: bool,
    master: Option<&'a KvPair>,
    /// Every key of `master/<cluster>`, for [`MasterKeys`].
    master_keys: MasterKeys<'a>,
    failed: Option<&'a KvPair>,
    settings: Option<&'a KvPair>,
    lock: Option<&'a KvPair>,
    request: Option<&'a KvPair>,
    agents: Vec<(&'a str, &'a KvPair)>,
    quarantine: Vec<(&'a str, &'a KvPair)>,
    drained: Vec<&'a str>,
    history: BTreeMap<&'a str, &'a KvPair>,
}

/// The cluster names the pairs define (under `master/`, `cluster/`,
/// `agent/`), valid ones only, sorted.
pub fn cluster_names(keys: &Keys, pairs: &[KvPair]) -> Vec<ClusterName> {
    let mut names: Vec<ClusterName> = pairs
        .iter()
        .filter_map(|p| match keys.classify(&p.key)? {
            KeyPath::Master { cluster, .. }
            | KeyPath::ClusterSettings { cluster }
            | KeyPath::Agent { cluster, .. } => ClusterName::parse(cluster).ok(),
            _ => None,
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The entry id `history/<cluster>/in-progress` names (its whole value).
pub fn in_progress_id(value: &[u8]) -> Result<String, String> {
    let id = std::str::from_utf8(value)
        .map_err(|_| "not valid UTF-8".to_owned())?
        .trim();
    // The id becomes part of a key path: the same rule as a request's id.
    valid_node_name(id).map_err(|e| format!("entry id: {e}"))?;
    Ok(id.to_owned())
}

/// Interprets the pairs read from KV. Pure, so the whole status (and its
/// rendering) is tested without Consul. `only` restricts the result to one
/// cluster: a recursive read of `master/c1` also returns `master/c10`.
pub fn build(keys: &Keys, snapshot: &Snapshot, only: Option<&ClusterName>) -> StatusDoc {
    let Snapshot { now_ms, pairs } = snapshot;
    let now_ms = *now_ms;
    let mut raw: BTreeMap<ClusterName, Raw> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut proxies: BTreeMap<ClusterName, Vec<(ProxyServing, bool)>> = BTreeMap::new();
    let proxy_prefix = keys.proxy_prefix();
    for pair in pairs.iter().filter(|p| p.key.starts_with(&proxy_prefix)) {
        match ProxyServing::parse(pair.value.as_deref().unwrap_or_default()) {
            Ok(record) => {
                for cluster in record.clusters.keys() {
                    proxies
                        .entry(cluster.clone())
                        .or_default()
                        .push((record.clone(), pair.session.is_some()));
                }
            }
            Err(e) => problems.push(format!("{}: {e}", pair.key)),
        }
    }
    for pair in pairs {
        let Some(path) = keys.classify(&pair.key) else {
            continue;
        };
        let cluster = match path {
            KeyPath::Master { cluster, .. }
            | KeyPath::ClusterSettings { cluster }
            | KeyPath::Quarantine { cluster, .. }
            | KeyPath::Drain { cluster, .. }
            | KeyPath::Agent { cluster, .. }
            | KeyPath::Lock { cluster }
            | KeyPath::Switchover { cluster }
            | KeyPath::History { cluster, .. } => cluster,
        };
        if only.is_some_and(|o| o.as_str() != cluster) {
            continue;
        }
        let name = match ClusterName::parse(cluster) {
            Ok(name) => name,
            Err(e) => {
                problems.push(format!("{}: cluster name: {e}", pair.key));
                continue;
            }
        };
        let r = raw.entry(name).or_default();
        if let KeyPath::Master { attr, .. } = path {
            r.master_keys
                .add(&pair.key, attr, pair.value.as_deref().unwrap_or_default());
        }
        match path {
            KeyPath::Master { attr: None, .. } => {
                r.defined = true;
                r.master = Some(pair);
            }
            KeyPath::Master {
                attr: Some(ATTR_FAILED),
                ..
            } => {
                r.defined = true;
                r.failed = Some(pair);
            }
            // hostname/port/ipv4/ipv6 repeat the source for the renderer.
            KeyPath::Master { .. } => r.defined = true,
            KeyPath::ClusterSettings { .. } => {
                r.defined = true;
                r.settings = Some(pair);
            }
            KeyPath::Agent { node, .. } => {
                r.defined = true;
                r.agents.push((node, pair));
            }
            KeyPath::Quarantine { node, .. } => r.quarantine.push((node, pair)),
            KeyPath::Drain { node, .. } => r.drained.push(node),
            KeyPath::Lock { .. } => r.lock = Some(pair),
            KeyPath::Switchover { .. } => r.request = Some(pair),
            KeyPath::History { rest, .. } => {
                r.history.insert(rest, pair);
            }
        }
    }
    let clusters = raw
        .into_iter()
        .filter(|(_, r)| r.defined)
        .map(|(name, r)| {
            let served = proxies.remove(&name).unwrap_or_default();
            let mut c = cluster_status(keys, &name, r, now_ms);
            add_proxies(&mut c, &name, &served);
            c
        })
        .collect();
    StatusDoc {
        now_ms,
        clusters,
        problems,
    }
}

fn cluster_status(keys: &Keys, name: &ClusterName, r: Raw, now_ms: u64) -> ClusterStatus {
    let mut problems = Vec::new();
    // Read as the agents and the renderers read it (`MasterKeys::source`):
    // the value, or without one the `/hostname` + `/port` children. A
    // folder-style key with no value and no children publishes nothing.
    let has_source_keys = r.master.is_some_and(|p| p.value.is_some())
        || r.master_keys.hostname.is_some()
        || r.master_keys.port.is_some();
    let source_addr = if has_source_keys {
        let mut note =
            |key: &str, problem: MasterProblem| problems.push(format!("{key}: {problem}"));
        match r.master_keys.source(&mut note) {
            Ok(s) => Some(s.addr),
            Err((key, problem)) => {
                problems.push(format!("{key}: {problem}"));
                None
            }
        }
    } else {
        None
    };
    let source = source_addr.as_ref().map(ToString::to_string).or_else(|| {
        r.master
            .filter(|p| p.value.is_some())
            .map(|p| value_text(p).trim().to_owned())
    });
    let settings = r.settings.and_then(|p| {
        ClusterSettings::parse(p.value.as_deref().unwrap_or_default())
            .map_err(|e| problems.push(e.at(&p.key).to_string()))
            .ok()
    });
    let switchover_request = r.request.and_then(|p| {
        SwitchoverRequest::parse(p.value.as_deref().unwrap_or_default())
            .map_err(|e| {
                problems.push(format!(
                    "{}: a pending request the coordinator will refuse: {e}",
                    p.key
                ))
            })
            .ok()
    });

    let mut quarantined = Vec::new();
    for (node, pair) in &r.quarantine {
        let mut q = QuarantinedNode {
            node: (*node).to_owned(),
            addr: None,
            reason: None,
            at: None,
            at_ms: None,
            problem: None,
        };
        // The key quarantines the node even when its value is unreadable
        // (see contract::Quarantine), so it is listed either way.
        match Quarantine::parse(pair.value.as_deref().unwrap_or_default()) {
            Ok(v) => {
                q.addr = Some(v.addr.to_string());
                q.reason = Some(v.reason);
                q.at = Some(v.at_ms / 1000);
                q.at_ms = Some(v.at_ms);
            }
            Err(e) => q.problem = Some(e.at(&pair.key).to_string()),
        }
        quarantined.push(q);
    }
    quarantined.sort_by(|a, b| a.node.cmp(&b.node));

    let mut nodes: Vec<NodeStatus> = r
        .agents
        .iter()
        .filter_map(|(node, pair)| {
            if let Err(e) = valid_node_name(node) {
                problems.push(format!("{}: node name: {e}", pair.key));
                return None;
            }
            let quarantined = quarantined.iter().any(|q| q.node == *node);
            Some(node_status(node, pair, quarantined, now_ms))
        })
        .collect();
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    let mut source_node = None;
    if let Some(hp) = &source_addr {
        for n in &mut nodes {
            if names_node(hp, &n.node, n.addr.as_deref()) {
                n.published_source = true;
                source_node.get_or_insert_with(|| n.node.clone());
            }
        }
    }

    let procedure = r
        .history
        .get(IN_PROGRESS)
        .map(|pair| procedure(keys, name, pair, &r.history));

    ClusterStatus {
        cluster: name.to_string(),
        source,
        source_node,
        fenced: r.failed.is_some(),
        failed: r.failed.map(value_text),
        coordinator: Coordinator {
            holder: r
                .lock
                .filter(|p| p.value.is_some())
                .map(|p| value_text(p).trim().to_owned()),
            held: r.lock.is_some_and(|p| p.session.is_some()),
            says: r
                .lock
                .filter(|p| p.session.is_some())
                .and_then(|p| {
                    let holder = value_text(p);
                    let node = holder.trim().rsplit('/').next()?.to_owned();
                    let (_, report) = r.agents.iter().find(|(n, _)| **n == node)?;
                    HealthReport::parse(report.value.as_deref().unwrap_or_default())
                        .ok()?
                        .coordinating
                })
                .map(|s| crate::format::clean(&s).into_owned()),
        },
        settings,
        switchover_request,
        procedure,
        quarantined,
        drained: r.drained.iter().map(|n| (*n).to_owned()).collect(),
        nodes,
        proxies: Vec::new(),
        problems,
    }
}

/// The proxies serving `name`, and a problem for each live one that
/// routes new connections anywhere but the published source.
fn add_proxies(c: &mut ClusterStatus, name: &ClusterName, served: &[(ProxyServing, bool)]) {
    let source = c.source.as_deref().and_then(|s| parse_host_port(s).ok());
    for (record, live) in served {
        let Some(block) = record.clusters.get(name) else {
            continue;
        };
        let routes_to_source = source.as_ref().is_some_and(|s| block.routes_to(s));
        if *live && !block.fenced && !routes_to_source && !c.fenced {
            c.problems.push(format!(
                "proxy {} routes {name} to {}, not the published source",
                record.proxy,
                block
                    .source
                    .as_ref()
                    .map_or("nothing".to_owned(), ToString::to_string)
            ));
        }
        c.proxies.push(ProxyStatus {
            proxy: record.proxy.to_string(),
            live: *live,
            source: block.source.as_ref().map(ToString::to_string),
            fenced: block.fenced,
            routes_to_source,
            at_ms: record.at_ms,
        });
    }
    c.proxies.sort_by(|a, b| a.proxy.cmp(&b.proxy));
}

/// Whether the published source names this node: its reported address, or
/// the node name as the host (the contract's rule for quarantine matching).
fn names_node(source: &HostPort, node: &str, addr: Option<&str>) -> bool {
    let by_addr = addr
        .and_then(|a| parse_host_port(a).ok())
        .is_some_and(|a| a.host.same_as(&source.host) && a.port == source.port);
    by_addr || host_is_node(&source.host, node)
}

fn node_status(node: &str, pair: &KvPair, quarantined: bool, now_ms: u64) -> NodeStatus {
    let mut n = NodeStatus {
        node: node.to_owned(),
        addr: None,
        agent_session: pair.session.is_some(),
        published_source: false,
        quarantined,
        up: false,
        error: None,
        role: None,
        read_only: None,
        replication: None,
        semi_sync: None,
        gtid_executed: None,
        observed_at_ms: None,
        report_age_ms: None,
        drift: Vec::new(),
        read_only_writers: Default::default(),
        apply: None,
        problem: None,
    };
    let report: HealthReport =
        match serde_json::from_slice(pair.value.as_deref().unwrap_or_default()) {
            Ok(r) => r,
            Err(e) => {
                n.problem = Some(format!("{}: not a health report: {e}", pair.key));
                return n;
            }
        };
    n.addr = Some(report.addr);
    n.up = report.up;
    n.error = report.error;
    n.role = Some(report.role);
    n.read_only = report.read_only;
    n.replication = report.replication.as_ref().map(Replication::from);
    n.semi_sync = report.semi_sync.map(|s| SemiSync {
        acking: s.replica_enabled && s.replica_status_on,
        source_enabled: s.source_enabled,
        replica_enabled: s.replica_enabled,
        source_status_on: s.source_status_on,
        replica_status_on: s.replica_status_on,
        clients: s.clients,
    });
    n.gtid_executed = report.gtid_executed;
    n.observed_at_ms = Some(report.observed_at_ms);
    // A clock ahead of ours reads as age 0 rather than wrapping around.
    n.report_age_ms = Some(now_ms.saturating_sub(report.observed_at_ms));
    n.drift = report.drift;
    n.read_only_writers = report.read_only_writers;
    n.apply = report.parallel_apply;
    n
}

fn procedure(
    keys: &Keys,
    cluster: &ClusterName,
    marker: &KvPair,
    history: &BTreeMap<&str, &KvPair>,
) -> Procedure {
    let mut p = Procedure {
        id: value_text(marker).trim().to_owned(),
        kind: None,
        outcome: None,
        from: None,
        to: None,
        started_ms: None,
        reason: None,
        request_id: None,
        last_step: None,
        problem: None,
    };
    let id = match in_progress_id(marker.value.as_deref().unwrap_or_default()) {
        Ok(id) => id,
        Err(e) => {
            p.problem = Some(format!("{}: {e}", marker.key));
            return p;
        }
    };
    p.id = id.clone();
    let entry_key = keys.history_key(cluster, &id);
    let Some(pair) = history.get(id.as_str()) else {
        p.problem = Some(format!(
            "{} names {entry_key}, which does not exist",
            marker.key
        ));
        return p;
    };
    match serde_json::from_slice::<HistoryEntry>(pair.value.as_deref().unwrap_or_default()) {
        Ok(e) => {
            p.kind = Some(e.kind);
            p.outcome = Some(e.outcome);
            p.started_ms = Some(e.started_ms);
            p.request_id = e.request.as_ref().and_then(|r| r.id.clone());
            p.last_step = e.last_step().cloned();
            p.from = e.from;
            p.to = e.to;
            p.reason = Some(e.reason);
        }
        Err(e) => p.problem = Some(format!("{entry_key}: not a history entry: {e}")),
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::fixtures::{pair, snapshot, tree};
    use crate::status::render::text;
    use successover_common::procedure::Outcome;

    /// #13 "status shows each stall reason in words": the lock holder's
    /// report carries what it decided last.
    #[test]
    fn the_coordinators_words_come_from_its_report() {
        use crate::status::fixtures::{held, report};
        const WHY: &str =
            "only 0 healthy replica(s) for 1 semi-sync slot(s): commits on db1 wait for an ACK";
        let c1 = ClusterName::parse("c1").unwrap();
        let mut pairs = tree();
        let mut r = report("db3", "replica", crate::status::fixtures::NOW - 1_000);
        r["coordinating"] = serde_json::json!(WHY);
        for p in &mut pairs {
            if p.key == "mysql/agent/c1/db3" {
                *p = held(pair("mysql/agent/c1/db3", &r.to_string()));
            }
        }
        let doc = build(&Keys::default(), &snapshot(pairs), Some(&c1));
        let c = &doc.clusters[0];
        assert_eq!(c.coordinator.says.as_deref(), Some(WHY));
        assert!(
            text(&doc).contains(&format!("it says      {WHY}")),
            "{}",
            text(&doc)
        );
        // Another agent's words are not the coordinator's.
        let doc = build(&Keys::default(), &snapshot(tree()), Some(&c1));
        assert_eq!(doc.clusters[0].coordinator.says, None);
    }

    #[test]
    fn one_cluster_from_kv_pairs() {
        let c1 = ClusterName::parse("c1").unwrap();
        let doc = build(&Keys::default(), &snapshot(tree()), Some(&c1));
        assert_eq!(doc.clusters.len(), 1, "c10 is not c1");
        let c = &doc.clusters[0];
        assert_eq!(c.cluster, "c1");
        assert_eq!(c.source.as_deref(), Some("db1:3306"));
        assert_eq!(c.source_node.as_deref(), Some("db1"));
        assert!(c.fenced);
        assert!(c.failed.as_deref().unwrap().contains("switchover"));
        assert_eq!(
            c.coordinator,
            Coordinator {
                holder: Some("c1/db3".into()),
                held: true,
                says: None,
            }
        );
        assert_eq!(c.settings.as_ref().unwrap().proxy_port, 13306);
        assert_eq!(c.nodes.len(), 3);
        let db1 = &c.nodes[0];
        assert!(db1.published_source && db1.up && db1.agent_session);
        assert_eq!(db1.role.as_deref(), Some("source"));
        assert_eq!(db1.report_age_ms, Some(1_500));
        let db2 = &c.nodes[1];
        assert!(!db2.published_source);
        assert!(db2.semi_sync.as_ref().unwrap().acking);
        assert_eq!(db2.replication.as_ref().unwrap().seconds_behind, Some(0));
        let db3 = &c.nodes[2];
        assert!(!db3.up && !db3.agent_session);
        assert!(db3
            .problem
            .as_deref()
            .unwrap()
            .contains("mysql/agent/c1/db3"));
        assert_eq!(c.quarantined.len(), 1);
        assert_eq!(c.quarantined[0].node, "db4");
        let p = c.procedure.as_ref().unwrap();
        assert_eq!(p.outcome, Some(Outcome::Running));
        assert_eq!(p.request_id.as_deref(), Some("cli-1"));
        assert_eq!(p.last_step.as_ref().unwrap().name, "fence");
        assert!(c.problems.is_empty(), "{:?}", c.problems);
    }

    #[test]
    fn all_clusters_and_bad_names() {
        let doc = build(&Keys::default(), &snapshot(tree()), None);
        let names: Vec<&str> = doc.clusters.iter().map(|c| c.cluster.as_str()).collect();
        assert_eq!(names, ["c1", "c10"]);
        assert_eq!(doc.problems.len(), 1);
        assert!(doc.problems[0].starts_with("mysql/master/c 2: cluster name"));
        let c10 = &doc.clusters[1];
        assert_eq!(c10.source_node, None);
        assert!(c10.nodes.is_empty() && !c10.fenced && c10.procedure.is_none());
        assert_eq!(
            cluster_names(&Keys::default(), &tree())
                .iter()
                .map(ClusterName::as_str)
                .collect::<Vec<_>>(),
            ["c1", "c10"]
        );
    }

    #[test]
    fn proxies_and_the_one_that_routes_elsewhere() {
        let c10 = ClusterName::parse("c10").unwrap();
        let plain = build(&Keys::default(), &snapshot(tree()), Some(&c10));
        let source = plain.clusters[0].source.clone().expect("c10 has a source");
        let elsewhere = "10.9.9.9:3306";
        let mut pairs = tree();
        let record = |proxy: &str, source: &str, fenced: bool| {
            format!(
                r#"{{"proxy": "{proxy}", "at_ms": 1, "clusters": {{"c10": {{"source": "{source}", "fenced": {fenced}}}}}}}"#
            )
        };
        let mut live = |key: &str, value: String| {
            let mut p = pair(key, &value);
            p.session = Some("s".into());
            pairs.push(p);
        };
        live("mysql/proxy/edge1", record("edge1", &source, false));
        live("mysql/proxy/edge2", record("edge2", elsewhere, false));
        live("mysql/proxy/edge3", record("edge3", elsewhere, true));
        pairs.push(pair(
            "mysql/proxy/edge4",
            &record("edge4", elsewhere, false),
        ));
        pairs.push(pair("mysql/proxy/bad", "{"));
        let doc = build(&Keys::default(), &snapshot(pairs), Some(&c10));
        let c = &doc.clusters[0];
        let names: Vec<&str> = c.proxies.iter().map(|p| p.proxy.as_str()).collect();
        assert_eq!(names, ["edge1", "edge2", "edge3", "edge4"]);
        assert!(c.proxies[0].routes_to_source);
        // Only a live, unfenced proxy on another server is a problem.
        let routing_elsewhere: Vec<&String> = c
            .problems
            .iter()
            .filter(|p| p.starts_with("proxy "))
            .collect();
        assert_eq!(
            routing_elsewhere,
            [&format!(
                "proxy edge2 routes c10 to {elsewhere}, not the published source"
            )]
        );
        assert!(doc
            .problems
            .iter()
            .any(|p| p.starts_with("mysql/proxy/bad")));
        let shown = text(&doc);
        assert!(
            shown.contains(&format!("edge1 -> {source} (the source)")),
            "{shown}"
        );
        assert!(
            shown.contains(&format!("edge2 -> {elsewhere} (NOT the source)")),
            "{shown}"
        );
        assert!(shown.contains("edge3 -> blackholed"), "{shown}");
        assert!(
            shown.contains(&format!("edge4 -> {elsewhere} (NOT the source), gone")),
            "{shown}"
        );
    }

    #[test]
    fn only_defining_keys_make_a_cluster() {
        // A leftover lock or history key alone does not list a cluster.
        let pairs = vec![
            pair("mysql/lock/gone", "gone/db1"),
            pair("mysql/history/gone/in-progress", "x"),
        ];
        assert!(build(&Keys::default(), &snapshot(pairs), None)
            .clusters
            .is_empty());
    }

    #[test]
    fn unreadable_values_become_problems_naming_the_key() {
        let pairs = vec![
            pair("mysql/master/c1", "db1:3306\nserver evil 6.6.6.6:1"),
            pair("mysql/cluster/c1", "{}"),
            pair("mysql/switchover/c1", r#"{"skip_catchup": true}"#),
            pair("mysql/quarantine/c1/db1", "garbage"),
            pair("mysql/agent/c1/db 1", "{}"),
            pair("mysql/history/c1/in-progress", "missing-entry"),
        ];
        let doc = build(&Keys::default(), &snapshot(pairs), None);
        let c = &doc.clusters[0];
        let all = c.problems.join("\n");
        assert!(all.contains("mysql/master/c1: character '\\n'"), "{all}");
        assert!(all.contains("mysql/cluster/c1: invalid JSON"), "{all}");
        assert!(
            all.contains("mysql/switchover/c1: a pending request"),
            "{all}"
        );
        assert!(all.contains("mysql/agent/c1/db 1: node name"), "{all}");
        assert_eq!(c.source_node, None);
        assert!(c.quarantined[0].problem.is_some());
        let p = c.procedure.as_ref().unwrap();
        assert_eq!(p.id, "missing-entry");
        assert!(p
            .problem
            .as_deref()
            .unwrap()
            .contains("mysql/history/c1/missing-entry, which does not exist"));
        let text = text(&doc);
        assert!(!text.contains("\nserver evil"), "{text}");
        assert!(text.contains("db1:3306\\nserver evil"), "{text}");
    }

    #[test]
    fn in_progress_values() {
        assert_eq!(
            in_progress_id(b"001-switchover\n").unwrap(),
            "001-switchover"
        );
        assert!(in_progress_id(b"../x").is_err());
        assert!(in_progress_id(b"").is_err());
        assert!(in_progress_id(br#"{"id":"001-failover"}"#).is_err());
    }

    #[test]
    fn quarantine_times_old_and_new() {
        let pairs = vec![
            pair("mysql/master/c1", "db1:3306"),
            // Written before the `*_ms` rule: seconds.
            pair(
                "mysql/quarantine/c1/db2",
                r#"{"node":"db2","addr":"db2:3306","reason":"failed source","at":1700000000}"#,
            ),
            pair(
                "mysql/quarantine/c1/db3",
                r#"{"node":"db3","addr":"db3:3306","reason":"failed source","at_ms":1700000000123}"#,
            ),
        ];
        let doc = build(&Keys::default(), &snapshot(pairs), None);
        let q = &doc.clusters[0].quarantined;
        assert_eq!(
            (q[0].at, q[0].at_ms),
            (Some(1_700_000_000), Some(1_700_000_000_000))
        );
        assert_eq!(
            (q[1].at, q[1].at_ms),
            (Some(1_700_000_000), Some(1_700_000_000_123))
        );
    }

    #[test]
    fn report_age_is_measured_from_the_snapshot() {
        let mut report = crate::status::fixtures::report("db1", "source", 0);
        report["observed_at_ms"] = serde_json::json!(crate::status::fixtures::NOW + 5);
        let pairs = vec![pair("mysql/agent/c1/db1", &report.to_string())];
        let doc = build(&Keys::default(), &snapshot(pairs), None);
        // A clock ahead of ours reads as age 0 rather than wrapping around.
        assert_eq!(doc.clusters[0].nodes[0].report_age_ms, Some(0));
        assert_eq!(doc.now_ms, crate::status::fixtures::NOW);
    }
}
