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
//!     "quarantined": [{"node": "db3", "addr": "db3:3306", "reason": "…", "at": 1700000000,
//!                      "problem": null}],
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

use std::collections::BTreeMap;

use serde::Serialize;
use successover_common::consul::KvPair;
use successover_common::contract::{
    host_is_node, parse_host_port, valid_node_name, ClusterName, ClusterSettings, HostPort,
    KeyPath, Keys, Quarantine, ATTR_FAILED,
};
use successover_common::procedure::{
    HistoryEntry, Outcome, ProcedureKind, Step, SwitchoverRequest,
};
use tokio::task::JoinSet;

use super::format::{age, clean, fields, or_dash, utc, value_text, yes_no, Table};
use super::{now_ms, print_json, Ctx, Exit, Failure};
use crate::report::{HealthReport, ReplicationReport};

const IN_PROGRESS: &str = "in-progress";

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
    pub nodes: Vec<NodeStatus>,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Coordinator {
    /// The lock key's value (`<cluster>/<node>` as the agents write it);
    /// kept after a release, so it may name a past holder.
    pub holder: Option<String>,
    pub held: bool,
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
    pub at: Option<u64>,
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

impl From<&ReplicationReport> for Replication {
    fn from(r: &ReplicationReport) -> Replication {
        Replication {
            source: r.source.clone(),
            io_running: r.io_running.clone(),
            sql_running: r.sql_running,
            seconds_behind: r.seconds_behind,
            last_io_error: r.last_io_error.clone(),
            last_sql_error: r.last_sql_error.clone(),
        }
    }
}

/// Everything read for one cluster, before interpretation.
#[derive(Default)]
struct Raw<'a> {
    /// Whether a key that defines the cluster (master, settings, agent) exists.
    defined: bool,
    master: Option<&'a KvPair>,
    failed: Option<&'a KvPair>,
    settings: Option<&'a KvPair>,
    lock: Option<&'a KvPair>,
    request: Option<&'a KvPair>,
    agents: Vec<(&'a str, &'a KvPair)>,
    quarantine: Vec<(&'a str, &'a KvPair)>,
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
pub fn build(keys: &Keys, pairs: &[KvPair], only: Option<&ClusterName>, now_ms: u64) -> StatusDoc {
    let mut raw: BTreeMap<ClusterName, Raw> = BTreeMap::new();
    let mut problems = Vec::new();
    for pair in pairs {
        let Some(path) = keys.classify(&pair.key) else {
            continue;
        };
        let cluster = match path {
            KeyPath::Master { cluster, .. }
            | KeyPath::ClusterSettings { cluster }
            | KeyPath::Quarantine { cluster, .. }
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
        .map(|(name, r)| cluster_status(keys, &name, r, now_ms))
        .collect();
    StatusDoc {
        now_ms,
        clusters,
        problems,
    }
}

fn cluster_status(keys: &Keys, name: &ClusterName, r: Raw, now_ms: u64) -> ClusterStatus {
    let mut problems = Vec::new();
    // A folder-style key with no value publishes nothing.
    let source = r
        .master
        .filter(|p| p.value.is_some())
        .map(|p| value_text(p).trim().to_owned());
    let source_addr = match (&source, r.master) {
        (Some(s), Some(pair)) => match parse_host_port(s) {
            Ok(hp) => Some(hp),
            Err(e) => {
                problems.push(e.at(&pair.key).to_string());
                None
            }
        },
        _ => None,
    };
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
            problem: None,
        };
        // The key quarantines the node even when its value is unreadable
        // (see contract::Quarantine), so it is listed either way.
        match Quarantine::parse(pair.value.as_deref().unwrap_or_default()) {
            Ok(v) => {
                q.addr = Some(v.addr.to_string());
                q.reason = Some(v.reason);
                q.at = Some(v.at);
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
        },
        settings,
        switchover_request,
        procedure,
        quarantined,
        nodes,
        problems,
    }
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

/// Reads what `status` shows: one recursive read per kind of key, then the
/// in-progress marker (and the entry it names) per cluster.
pub async fn fetch(ctx: &Ctx, only: Option<&ClusterName>) -> Result<Vec<KvPair>, Failure> {
    let [master, settings, agents, locks, requests, quarantine] = [
        "master",
        "cluster",
        "agent",
        "lock",
        "switchover",
        "quarantine",
    ]
    .map(|kind| match only {
        Some(c) => format!("{}{kind}/{c}", ctx.keys.prefix()),
        None => format!("{}{kind}/", ctx.keys.prefix()),
    });
    let c = &ctx.consul;
    let read = tokio::try_join!(
        c.kv_get_recurse(&master),
        c.kv_get_recurse(&settings),
        c.kv_get_recurse(&agents),
        c.kv_get_recurse(&locks),
        c.kv_get_recurse(&requests),
        c.kv_get_recurse(&quarantine),
    )?;
    let mut pairs: Vec<KvPair> = [read.0, read.1, read.2, read.3, read.4, read.5]
        .into_iter()
        .flatten()
        .collect();
    let mut names = cluster_names(&ctx.keys, &pairs);
    if let Some(o) = only {
        names.retain(|n| n == o);
    }
    // Thousands of clusters are thousands of reads of a (usually missing)
    // key; a few at a time keeps this quick without flooding Consul.
    const IN_FLIGHT: usize = 16;
    let mut tasks = JoinSet::new();
    let mut names = names.into_iter();
    loop {
        while tasks.len() < IN_FLIGHT {
            let Some(name) = names.next() else { break };
            let (consul, keys) = (ctx.consul.clone(), ctx.keys.clone());
            tasks.spawn(async move {
                let marker = consul.kv_get(&keys.in_progress_key(&name)).await?;
                let Some(marker) = marker else {
                    return Ok(Vec::new());
                };
                let entry = match in_progress_id(marker.value.as_deref().unwrap_or_default()) {
                    Ok(id) => consul.kv_get(&keys.history_key(&name, &id)).await?,
                    // build() reports the bad marker.
                    Err(_) => None,
                };
                Ok::<_, Failure>(std::iter::once(marker).chain(entry).collect::<Vec<_>>())
            });
        }
        match tasks.join_next().await {
            Some(Ok(result)) => pairs.extend(result?),
            Some(Err(e)) => return Err(Failure::failed(format!("reading history: {e}"))),
            None => break,
        }
    }
    Ok(pairs)
}

pub async fn run(ctx: &Ctx, only: Option<&ClusterName>) -> Result<Exit, Failure> {
    let pairs = fetch(ctx, only).await?;
    let doc = build(&ctx.keys, &pairs, only, now_ms());
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
        print_json(&doc)?;
    } else {
        print!("{}", render(&doc));
    }
    Ok(Exit::Ok)
}

/// The human output: one block per cluster.
pub fn render(doc: &StatusDoc) -> String {
    let mut out = String::new();
    for (i, c) in doc.clusters.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&render_cluster(c));
    }
    if doc.clusters.is_empty() {
        out.push_str("no clusters\n");
    }
    for p in &doc.problems {
        out.push_str(&format!("problem: {}\n", clean(p)));
    }
    out
}

pub fn render_cluster(c: &ClusterStatus) -> String {
    let mut f: Vec<(&str, String)> = vec![("cluster", c.cluster.clone())];
    f.push((
        "source",
        match (&c.source, &c.source_node) {
            (Some(s), Some(n)) => format!("{s} (node {n})"),
            (Some(s), None) => format!("{s} (no reporting node has this address)"),
            (None, _) => "none published".to_owned(),
        },
    ));
    f.push((
        "fenced",
        match &c.failed {
            Some(v) if v.trim().is_empty() => "YES: every proxy blackholes this cluster".into(),
            Some(v) => format!("YES: every proxy blackholes this cluster ({})", v.trim()),
            None => "no".into(),
        },
    ));
    f.push((
        "coordinator",
        match (&c.coordinator.holder, c.coordinator.held) {
            (Some(h), true) => format!("{h} (lock held)"),
            (None, true) => "lock held".to_owned(),
            (Some(h), false) => format!("none (lock free; last holder {h})"),
            (None, false) => "none".to_owned(),
        },
    ));
    if let Some(s) = &c.settings {
        let mut line = format!(
            "proxy port {}, {} semi-sync replica(s), auto-failover {}, max lag {} s",
            s.proxy_port,
            s.semi_sync_replicas,
            if s.auto_failover { "on" } else { "off" },
            s.max_lag_seconds
        );
        if s.maintenance {
            line.push_str(", MAINTENANCE: automation suspended");
        }
        f.push(("settings", line));
    }
    f.push((
        "procedure",
        match &c.procedure {
            None => "none".to_owned(),
            Some(p) => procedure_line(p),
        },
    ));
    if let Some(r) = &c.switchover_request {
        f.push(("request", format!("pending: {}", request_line(r))));
    }
    f.push((
        "quarantined",
        if c.quarantined.is_empty() {
            "none".to_owned()
        } else {
            c.quarantined
                .iter()
                .map(|q| match (&q.addr, &q.reason) {
                    (Some(a), Some(r)) if !r.is_empty() => format!("{} ({a}: {r})", q.node),
                    (Some(a), _) => format!("{} ({a})", q.node),
                    _ => q.node.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        },
    ));
    for p in &c.problems {
        f.push(("problem", p.clone()));
    }
    let mut out = fields(&f);
    if c.nodes.is_empty() {
        out.push_str("no node reports\n");
        return out;
    }
    let mut t = Table::new(&[
        "NODE",
        "ROLE",
        "RO",
        "REPLICATION",
        "SEMI-SYNC",
        "GTID_EXECUTED",
        "AGE",
        "STATE",
    ]);
    for n in &c.nodes {
        t.row(&[
            n.node.clone(),
            or_dash(n.role.as_deref()).to_owned(),
            n.read_only.map_or("-", yes_no).to_owned(),
            n.replication
                .as_ref()
                .map_or("-".to_owned(), replication_cell),
            n.semi_sync.as_ref().map_or("-".to_owned(), semi_sync_cell),
            or_dash(n.gtid_executed.as_deref()).to_owned(),
            n.report_age_ms.map_or("-".to_owned(), age),
            state_cell(n),
        ]);
    }
    out.push('\n');
    out.push_str(&t.render(""));
    out
}

fn procedure_line(p: &Procedure) -> String {
    let mut s = format!("{} {}", p.kind.map_or("procedure", kind_word), p.id);
    if let Some(o) = p.outcome {
        s.push_str(&format!(" {}", outcome_word(o)));
    }
    if let (Some(from), Some(to)) = (&p.from, &p.to) {
        s.push_str(&format!(", {from} → {to}"));
    }
    if let Some(at) = p.started_ms {
        s.push_str(&format!(", started {}", utc(at)));
    }
    if let Some(step) = &p.last_step {
        s.push_str(&format!(
            ", last step {} {}",
            step.name,
            if step.ok { "ok" } else { "FAILED" }
        ));
    }
    if let Some(problem) = &p.problem {
        s.push_str(&format!(" ({problem})"));
    }
    s
}

pub fn request_line(r: &SwitchoverRequest) -> String {
    let mut parts = vec![format!(
        "target {}",
        r.target.as_deref().unwrap_or("best candidate")
    )];
    if r.force {
        parts.push("force".into());
    }
    if r.skip_catchup {
        parts.push("skip catch-up".into());
    }
    if let Some(l) = r.max_lag_seconds {
        parts.push(format!("max lag {l} s"));
    }
    if let Some(id) = &r.id {
        parts.push(format!("id {id}"));
    }
    parts.join(", ")
}

pub fn kind_word(k: ProcedureKind) -> &'static str {
    k.as_str()
}

pub fn outcome_word(o: Outcome) -> &'static str {
    o.as_str()
}

fn replication_cell(r: &Replication) -> String {
    let lag = r
        .seconds_behind
        .map_or("lag ?".to_owned(), |s| format!("lag {s}s"));
    format!(
        "{} io {} sql {} {lag}",
        r.source,
        r.io_running,
        if r.sql_running { "Yes" } else { "No" }
    )
}

fn semi_sync_cell(s: &SemiSync) -> String {
    let mut parts = Vec::new();
    if s.source_enabled {
        parts.push(if s.source_status_on {
            format!("source on, {} replica(s)", s.clients)
        } else {
            // Rule 1: the flag is on but the source is running async.
            "source ASYNC".to_owned()
        });
    }
    if s.replica_enabled {
        parts.push(if s.acking {
            "replica ACKing".to_owned()
        } else {
            "replica not ACKing".to_owned()
        });
    }
    if parts.is_empty() {
        "off".to_owned()
    } else {
        parts.join("; ")
    }
}

fn state_cell(n: &NodeStatus) -> String {
    let mut parts = Vec::new();
    if let Some(p) = &n.problem {
        parts.push(format!("unreadable: {p}"));
    } else if n.up {
        parts.push("up".to_owned());
    } else {
        parts.push(format!("DOWN: {}", or_dash(n.error.as_deref())));
    }
    if n.published_source {
        parts.push("published source".to_owned());
    }
    if n.quarantined {
        parts.push("QUARANTINED".to_owned());
    }
    if !n.agent_session {
        parts.push("no agent session".to_owned());
    }
    if let Some(r) = &n.replication {
        for e in [&r.last_io_error, &r.last_sql_error] {
            if !e.is_empty() {
                parts.push(e.clone());
            }
        }
    }
    parts.extend(n.drift.iter().map(|d| format!("drift: {d}")));
    parts.join(", ")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

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

    fn held(mut p: KvPair) -> KvPair {
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

    const NOW: u64 = 1_700_000_010_000;

    fn tree() -> Vec<KvPair> {
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

    #[test]
    fn one_cluster_from_kv_pairs() {
        let c1 = ClusterName::parse("c1").unwrap();
        let doc = build(&Keys::default(), &tree(), Some(&c1), NOW);
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
                held: true
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
        let doc = build(&Keys::default(), &tree(), None, NOW);
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
    fn only_defining_keys_make_a_cluster() {
        // A leftover lock or history key alone does not list a cluster.
        let pairs = vec![
            pair("mysql/lock/gone", "gone/db1"),
            pair("mysql/history/gone/in-progress", "x"),
        ];
        assert!(build(&Keys::default(), &pairs, None, NOW)
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
        let doc = build(&Keys::default(), &pairs, None, NOW);
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
        let text = render(&doc);
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
    fn human_status_table() {
        let c1 = ClusterName::parse("c1").unwrap();
        let doc = build(&Keys::default(), &tree(), Some(&c1), NOW);
        let text = render(&doc);
        let expected = "\
cluster      c1
source       db1:3306 (node db1)
fenced       YES: every proxy blackholes this cluster ({\"reason\":\"switchover\",\"by\":\"db3\"})
coordinator  c1/db3 (lock held)
settings     proxy port 13306, 1 semi-sync replica(s), auto-failover on, max lag 10 s
procedure    switchover 001700000000000-switchover running, db1 → db2, started 2023-11-14 22:13:20Z, last step fence ok
quarantined  db4 (db4:3306: failover to db1)

NODE  ROLE     RO   REPLICATION                     SEMI-SYNC                GTID_EXECUTED  AGE  STATE
db1   source   no   -                               source on, 1 replica(s)  0-1-42         1s   up, published source
db2   replica  yes  db1:3306 io Yes sql Yes lag 0s  replica ACKing           0-1-42         2s   up
db3   -        -    -                               -                        -              -    unreadable: mysql/agent/c1/db3: not a health report: key must be a string at line 1 column 2, no agent session
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn json_shape_is_stable() {
        let c1 = ClusterName::parse("c1").unwrap();
        let doc = build(&Keys::default(), &tree(), Some(&c1), NOW);
        let v = serde_json::to_value(&doc).unwrap();
        let c = &v["clusters"][0];
        let mut fields: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "cluster",
                "coordinator",
                "failed",
                "fenced",
                "nodes",
                "problems",
                "procedure",
                "quarantined",
                "settings",
                "source",
                "source_node",
                "switchover_request"
            ]
        );
        assert_eq!(c["nodes"][1]["semi_sync"]["acking"], json!(true));
        assert_eq!(c["nodes"][1]["replication"]["io_running"], json!("Yes"));
        assert_eq!(c["procedure"]["kind"], json!("switchover"));
        assert_eq!(c["procedure"]["outcome"], json!("running"));
        assert_eq!(v["now_ms"], json!(NOW));
    }
}
