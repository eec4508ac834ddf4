//! Pure: the model → what the operator reads. Text for a person (every
//! value from KV passes through [`clean`], so a stored newline cannot forge
//! a line), or the JSON document.

use successover_common::procedure::{Outcome, ProcedureKind, SwitchoverRequest};

use super::model::{ClusterStatus, NodeStatus, Procedure, Replication, SemiSync, StatusDoc};
use crate::format::{age, clean, fields, or_dash, utc, yes_no, Table};
use crate::{json_text, Failure};

/// The `--json` document.
pub fn json(doc: &StatusDoc) -> Result<String, Failure> {
    json_text(doc)
}

/// The human output: one block per cluster.
pub fn text(doc: &StatusDoc) -> String {
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
    if let Some(says) = &c.coordinator.says {
        f.push(("it says", says.clone()));
    }
    if let Some(s) = &c.settings {
        let mut line = format!(
            "proxy port {}, {} semi-sync replica(s), auto-failover {}, max lag {} s",
            s.proxy_port,
            s.semi_sync_replicas,
            match (s.auto_failover, s.observe_failover) {
                (true, _) => "on",
                (false, true) => "observe (simulated only)",
                (false, false) => "off",
            },
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
    if !c.drained.is_empty() {
        f.push(("drained", c.drained.join(", ")));
    }
    if !c.proxies.is_empty() {
        f.push((
            "proxies",
            c.proxies
                .iter()
                .map(|p| {
                    let what = match (&p.source, p.fenced) {
                        (_, true) => "blackholed".to_owned(),
                        (Some(s), false) if p.routes_to_source => format!("{s} (the source)"),
                        (Some(s), false) => format!("{s} (NOT the source)"),
                        (None, false) => "nothing".to_owned(),
                    };
                    let gone = if p.live { "" } else { ", gone" };
                    format!("{} -> {what}{gone}", p.proxy)
                })
                .collect::<Vec<_>>()
                .join("; "),
        ));
    }
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
    let utc = |ms: u64| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
    };
    if let Some(t) = r.not_before_ms {
        parts.push(format!("not before {}", utc(t)));
    }
    if let Some(t) = r.not_after_ms {
        parts.push(format!("not after {}", utc(t)));
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
        "{} io {} sql {} {lag}{}",
        r.source,
        r.io_running,
        if r.sql_running { "Yes" } else { "No" },
        apply_words(r)
    )
}

/// What a failover to the replica would wait for: its unapplied backlog
/// at its recent apply rate.
fn apply_words(r: &Replication) -> String {
    match (r.apply_backlog, r.expected_apply_ms) {
        (None, _) | (Some(0), _) => String::new(),
        (Some(n), Some(ms)) => format!(", {n} tx to apply (~{:.1} s)", ms as f64 / 1000.0),
        (Some(n), None) if r.applied_per_s == Some(0) => {
            format!(", {n} tx to apply, applier STALLED")
        }
        (Some(n), None) => format!(", {n} tx to apply"),
    }
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
    if n.replication.is_some() {
        if let Some(a) = &n.apply {
            parts.push(a.clone());
        }
    }
    parts.extend(n.drift.iter().map(|d| format!("drift: {d}")));
    if !n.read_only_writers.is_empty() {
        let accounts: Vec<String> = n
            .read_only_writers
            .iter()
            .map(|(user, conns)| format!("{user} ({conns})"))
            .collect();
        parts.push(format!("writes through read_only: {}", accounts.join(" ")));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use successover_common::contract::{ClusterName, ClusterSettings, Keys};

    use crate::status::build::build;
    use crate::status::fixtures::{snapshot, tree, NOW};
    use crate::status::model::{Coordinator, QuarantinedNode};

    #[test]
    fn human_status_table() {
        let c1 = ClusterName::parse("c1").unwrap();
        let doc = build(&Keys::default(), &snapshot(tree()), Some(&c1));
        let text = text(&doc);
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
        let doc = build(&Keys::default(), &snapshot(tree()), Some(&c1));
        let v = serde_json::to_value(&doc).unwrap();
        let c = &v["clusters"][0];
        let mut fields: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "cluster",
                "coordinator",
                "drained",
                "failed",
                "fenced",
                "nodes",
                "problems",
                "procedure",
                "proxies",
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

    fn node(name: &str) -> NodeStatus {
        NodeStatus {
            node: name.into(),
            addr: Some(format!("{name}:3306")),
            agent_session: true,
            published_source: false,
            quarantined: false,
            up: true,
            error: None,
            role: Some("replica".into()),
            read_only: Some(true),
            replication: None,
            semi_sync: None,
            gtid_executed: Some("0-1-7".into()),
            observed_at_ms: Some(NOW - 61_000),
            report_age_ms: Some(61_000),
            drift: Vec::new(),
            read_only_writers: Default::default(),
            apply: None,
            problem: None,
        }
    }

    /// A model written by hand: the branches the KV fixture does not reach.
    fn doc() -> StatusDoc {
        let down = NodeStatus {
            up: false,
            error: Some("connect refused\nx".into()),
            role: Some("unknown".into()),
            read_only: None,
            gtid_executed: None,
            agent_session: false,
            quarantined: true,
            ..node("db1")
        };
        let lagging = NodeStatus {
            replication: Some(Replication {
                source: "db9:3306".into(),
                io_running: "Connecting".into(),
                sql_running: false,
                seconds_behind: None,
                last_io_error: "error connecting".into(),
                last_sql_error: String::new(),
                apply_backlog: Some(4200),
                applied_per_s: Some(0),
                expected_apply_ms: None,
            }),
            semi_sync: Some(SemiSync {
                source_enabled: true,
                replica_enabled: true,
                source_status_on: false,
                replica_status_on: false,
                clients: 0,
                acking: false,
            }),
            drift: vec!["semi-sync wait point is AFTER_COMMIT".into()],
            read_only_writers: Default::default(),
            apply: Some("one applier".into()),
            ..node("db2")
        };
        let settings = ClusterSettings {
            proxy_port: 13306,
            semi_sync_replicas: 1,
            auto_failover: false,
            observe_failover: false,
            max_lag_seconds: 3,
            failover_cooldown_seconds: 3600,
            maintenance: true,
        };
        StatusDoc {
            now_ms: NOW,
            clusters: vec![
                ClusterStatus {
                    cluster: "c1".into(),
                    source: Some("db9:3306".into()),
                    source_node: None,
                    fenced: false,
                    failed: None,
                    coordinator: Coordinator {
                        holder: Some("c1/db2".into()),
                        held: false,
                        says: None,
                    },
                    settings: Some(settings),
                    switchover_request: Some(SwitchoverRequest {
                        target: None,
                        force: true,
                        max_lag_seconds: Some(30),
                        skip_catchup: true,
                        id: Some("ops-1".into()),
                        ..SwitchoverRequest::default()
                    }),
                    procedure: Some(Procedure {
                        id: "007-failover".into(),
                        kind: None,
                        outcome: None,
                        from: None,
                        to: None,
                        started_ms: None,
                        reason: None,
                        request_id: None,
                        last_step: None,
                        problem: Some("not a history entry".into()),
                    }),
                    quarantined: vec![QuarantinedNode {
                        node: "db1".into(),
                        addr: None,
                        reason: None,
                        at: None,
                        at_ms: None,
                        problem: Some("mysql/quarantine/c1/db1: invalid JSON".into()),
                    }],
                    drained: Vec::new(),
                    nodes: vec![down, lagging],
                    proxies: Vec::new(),
                    problems: vec!["mysql/cluster/c1: odd".into()],
                },
                ClusterStatus {
                    cluster: "c2".into(),
                    source: None,
                    source_node: None,
                    fenced: true,
                    failed: Some(" ".into()),
                    coordinator: Coordinator {
                        holder: None,
                        held: false,
                        says: None,
                    },
                    settings: None,
                    switchover_request: None,
                    procedure: None,
                    quarantined: Vec::new(),
                    drained: Vec::new(),
                    nodes: Vec::new(),
                    proxies: Vec::new(),
                    problems: Vec::new(),
                },
            ],
            problems: vec!["mysql/master/c 3: cluster name: bad\nline".into()],
        }
    }

    #[test]
    fn a_replica_behind_says_what_a_failover_to_it_would_apply() {
        let r = |backlog, rate, ms| Replication {
            source: "db1:3306".into(),
            io_running: "Yes".into(),
            sql_running: true,
            seconds_behind: Some(4),
            last_io_error: String::new(),
            last_sql_error: String::new(),
            apply_backlog: backlog,
            applied_per_s: rate,
            expected_apply_ms: ms,
        };
        let cell = |b, p, m| replication_cell(&r(b, p, m));
        assert_eq!(
            cell(Some(3000), Some(1200), Some(2500)),
            "db1:3306 io Yes sql Yes lag 4s, 3000 tx to apply (~2.5 s)"
        );
        assert_eq!(
            cell(Some(0), Some(900), Some(0)),
            "db1:3306 io Yes sql Yes lag 4s"
        );
        assert_eq!(cell(None, None, None), "db1:3306 io Yes sql Yes lag 4s");
        assert_eq!(
            cell(Some(12), None, None),
            "db1:3306 io Yes sql Yes lag 4s, 12 tx to apply"
        );
    }

    #[test]
    fn text_of_a_model() {
        let text = text(&doc());
        let expected = "\
cluster      c1
source       db9:3306 (no reporting node has this address)
fenced       no
coordinator  none (lock free; last holder c1/db2)
settings     proxy port 13306, 1 semi-sync replica(s), auto-failover off, max lag 3 s, MAINTENANCE: automation suspended
procedure    procedure 007-failover (not a history entry)
request      pending: target best candidate, force, skip catch-up, max lag 30 s, id ops-1
quarantined  db1
problem      mysql/cluster/c1: odd

NODE  ROLE     RO   REPLICATION                                                             SEMI-SYNC                         GTID_EXECUTED  AGE    STATE
db1   unknown  -    -                                                                       -                                 -              1m01s  DOWN: connect refused\\nx, QUARANTINED, no agent session
db2   replica  yes  db9:3306 io Connecting sql No lag ?, 4200 tx to apply, applier STALLED  source ASYNC; replica not ACKing  0-1-7          1m01s  up, error connecting, one applier, drift: semi-sync wait point is AFTER_COMMIT

cluster      c2
source       none published
fenced       YES: every proxy blackholes this cluster
coordinator  none
procedure    none
quarantined  none
no node reports
problem: mysql/master/c 3: cluster name: bad\\nline
";
        assert_eq!(text, expected, "\n{text}");
        assert_eq!(
            super::text(&StatusDoc {
                now_ms: NOW,
                clusters: Vec::new(),
                problems: Vec::new()
            }),
            "no clusters\n"
        );
    }

    #[test]
    fn json_of_a_model() {
        let v: serde_json::Value = serde_json::from_str(&json(&doc()).unwrap()).unwrap();
        assert_eq!(v["now_ms"], json!(NOW));
        let q = &v["clusters"][0]["quarantined"][0];
        assert_eq!(q["at"], json!(null));
        assert_eq!(q["at_ms"], json!(null));
        assert_eq!(
            v["clusters"][0]["switchover_request"]["skip_catchup"],
            json!(true)
        );
        assert_eq!(v["clusters"][1]["failed"], json!(" "));
        assert_eq!(
            v["problems"][0],
            json!("mysql/master/c 3: cluster name: bad\nline")
        );
    }
}
