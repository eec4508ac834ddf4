//! `successover history <cluster> [-n <count>] [<id>]`: the audit trail the
//! coordinator keeps under `history/<cluster>/<id>`.
//!
//! Entry ids sort by start time (`procedure::history_id`), so the newest
//! entries are found from the key names alone and only those are read.
//!
//! `--json`, a list:
//!
//! ```json
//! {"cluster": "c1",
//!  "entries": [<HistoryEntry>, …],                 // newest first, as stored
//!  "unreadable": [{"key": "mysql/history/c1/x", "problem": "…"}]}
//! ```
//!
//! and one entry (`<id>` is an entry id, or the id of the request that
//! started it, as `successover switchover` prints):
//!
//! ```json
//! {"cluster": "c1", "key": "mysql/history/c1/<entry id>",
//!  "entry": <HistoryEntry> | null,
//!  "pending_request": <SwitchoverRequest> | null}  // not taken by a coordinator yet
//! ```
//!
//! `<HistoryEntry>` is the stored JSON (`common::procedure::HistoryEntry`).

use serde::Serialize;
use successover_common::consul::KvPair;
use successover_common::contract::{valid_node_name, ClusterName};
use successover_common::procedure::{HistoryEntry, Outcome, Step, SwitchoverRequest};

use crate::format::{clean, fields, or_dash, utc, Table};
use crate::status::render::{kind_word, outcome_word, request_line};
use crate::{print_json, Ctx, Exit, Failure};

#[derive(Debug, Serialize)]
struct ListDoc<'a> {
    cluster: &'a str,
    entries: Vec<HistoryEntry>,
    unreadable: Vec<Unreadable>,
}

#[derive(Debug, Serialize)]
struct Unreadable {
    key: String,
    problem: String,
}

#[derive(Debug, Serialize)]
struct EntryDoc<'a> {
    cluster: &'a str,
    key: Option<String>,
    entry: Option<HistoryEntry>,
    pending_request: Option<SwitchoverRequest>,
}

pub fn parse_entry(pair: &KvPair) -> Result<HistoryEntry, String> {
    serde_json::from_slice(pair.value.as_deref().unwrap_or_default())
        .map_err(|e| format!("{}: not a history entry: {e}", pair.key))
}

/// The newest `limit` entry ids among `names` (the key names under the
/// cluster's history prefix), newest first. Entry ids start with their
/// zero-padded start time; markers the coordinator keeps beside them
/// (`in-progress`, `last-failover`) do not, and are no entries.
pub fn newest_ids<'a>(prefix: &str, names: &'a [String], limit: usize) -> Vec<&'a str> {
    let mut ids: Vec<&str> = names
        .iter()
        .filter_map(|k| k.strip_prefix(prefix))
        .filter(|id| id.starts_with(|c: char| c.is_ascii_digit()) && !id.contains('/'))
        .collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    ids.truncate(limit);
    ids
}

pub async fn run(
    ctx: &Ctx,
    cluster: &ClusterName,
    limit: usize,
    id: Option<&str>,
) -> Result<Exit, Failure> {
    match id {
        Some(id) => show(ctx, cluster, id).await,
        None => list(ctx, cluster, limit).await,
    }
}

async fn list(ctx: &Ctx, cluster: &ClusterName, limit: usize) -> Result<Exit, Failure> {
    let prefix = ctx.keys.history_prefix(cluster);
    let names = ctx.consul.kv_keys(&prefix, None).await?;
    let mut entries = Vec::new();
    let mut unreadable = Vec::new();
    for id in newest_ids(&prefix, &names, limit) {
        let key = ctx.keys.history_key(cluster, id);
        // Gone between the listing and the read: pruned, nothing to show.
        let Some(pair) = ctx.consul.kv_get(&key).await? else {
            continue;
        };
        match parse_entry(&pair) {
            Ok(e) => entries.push(e),
            Err(problem) => unreadable.push(Unreadable { key, problem }),
        }
    }
    if ctx.json {
        print_json(&ListDoc {
            cluster: cluster.as_str(),
            entries,
            unreadable,
        })?;
    } else if entries.is_empty() && unreadable.is_empty() {
        println!("no history for {cluster} (nothing under {prefix})");
    } else {
        print!("{}", list_table(&entries));
        for u in &unreadable {
            println!("unreadable: {}", clean(&u.problem));
        }
    }
    Ok(Exit::Ok)
}

async fn show(ctx: &Ctx, cluster: &ClusterName, id: &str) -> Result<Exit, Failure> {
    valid_node_name(id).map_err(|e| Failure::usage(format!("history id {id:?}: {e}")))?;
    let key = ctx.keys.history_key(cluster, id);
    let found = match ctx.consul.kv_get(&key).await? {
        Some(pair) => Some((key, parse_entry(&pair).map_err(Failure::failed)?)),
        None => find_by_request_id(ctx, cluster, id).await?,
    };
    let pending = if found.is_none() {
        pending_request(ctx, cluster, id).await?
    } else {
        None
    };
    if found.is_none() && pending.is_none() {
        return Err(Failure::failed(format!(
            "no history entry {id} for {cluster}: neither an entry id nor the id of a \
             request under {} (list them with `successover history {cluster}`)",
            ctx.keys.history_prefix(cluster)
        )));
    }
    if ctx.json {
        let (key, entry) = found.unzip();
        print_json(&EntryDoc {
            cluster: cluster.as_str(),
            key,
            entry,
            pending_request: pending,
        })?;
    } else if let Some((_, entry)) = &found {
        print!("{}", render_entry(entry));
    } else {
        println!(
            "request {id} is pending in {}: no coordinator has taken it yet",
            ctx.keys.switchover_key(cluster)
        );
    }
    Ok(Exit::Ok)
}

/// The newest entry started by the request with this id.
async fn find_by_request_id(
    ctx: &Ctx,
    cluster: &ClusterName,
    id: &str,
) -> Result<Option<(String, HistoryEntry)>, Failure> {
    let pairs = ctx
        .consul
        .kv_get_recurse(&ctx.keys.history_prefix(cluster))
        .await?;
    Ok(pairs
        .iter()
        .filter_map(|p| Some((p.key.clone(), parse_entry(p).ok()?)))
        .filter(|(_, e)| e.request.as_ref().and_then(|r| r.id.as_deref()) == Some(id))
        .max_by_key(|(_, e)| e.started_ms))
}

/// The request in `switchover/<cluster>` when it carries this id.
pub async fn pending_request(
    ctx: &Ctx,
    cluster: &ClusterName,
    id: &str,
) -> Result<Option<SwitchoverRequest>, Failure> {
    let pair = ctx.consul.kv_get(&ctx.keys.switchover_key(cluster)).await?;
    Ok(pair
        .and_then(|p| SwitchoverRequest::parse(p.value.as_deref().unwrap_or_default()).ok())
        .filter(|r| r.id.as_deref() == Some(id)))
}

/// Entries newest first, one line each.
pub fn list_table(entries: &[HistoryEntry]) -> String {
    let mut t = Table::new(&[
        "STARTED",
        "ID",
        "KIND",
        "OUTCOME",
        "FROM → TO",
        "WRITES UNAVAILABLE",
        "REASON",
    ]);
    for e in entries {
        t.row(&[
            utc(e.started_ms),
            e.id.clone(),
            kind_word(e.kind).to_owned(),
            outcome_word(e.outcome).to_owned(),
            from_to(e),
            e.write_unavailable_ms
                .map_or("-".to_owned(), |ms| format!("{ms} ms")),
            e.reason.clone(),
        ]);
    }
    t.render("")
}

fn from_to(e: &HistoryEntry) -> String {
    format!(
        "{} → {}",
        or_dash(e.from.as_deref()),
        or_dash(e.to.as_deref())
    )
}

/// One entry in full: summary, steps, evidence.
pub fn render_entry(e: &HistoryEntry) -> String {
    let mut f: Vec<(&str, String)> = vec![
        ("id", e.id.clone()),
        ("cluster", e.cluster.clone()),
        ("kind", kind_word(e.kind).to_owned()),
        ("outcome", outcome_word(e.outcome).to_owned()),
        ("reason", e.reason.clone()),
        ("from → to", from_to(e)),
        ("coordinator", e.coordinator.clone()),
        ("started", utc(e.started_ms)),
    ];
    if let Some(done) = e.finished_ms {
        f.push((
            "finished",
            format!(
                "{} ({} ms in all)",
                utc(done),
                done.saturating_sub(e.started_ms)
            ),
        ));
    }
    if let Some(w) = e.write_unavailable_ms {
        f.push(("writes unavailable", format!("{w} ms")));
    }
    if let Some(r) = &e.request {
        f.push(("request", request_line(r)));
    }
    let mut out = fields(&f);
    if !e.steps.is_empty() {
        out.push_str("\nsteps\n");
        let mut t = Table::new(&["AT", "TOOK", "RESULT", "STEP", "DETAIL"]);
        for s in &e.steps {
            t.row(&[
                // Steps carry absolute Unix milliseconds, like the entry.
                format!("+{} ms", s.started_ms.saturating_sub(e.started_ms)),
                format!("{} ms", s.duration_ms),
                step_result(s).to_owned(),
                s.name.clone(),
                s.detail.clone(),
            ]);
        }
        out.push_str(&t.render("  "));
    }
    if !e.evidence.is_empty() {
        out.push_str("\nevidence\n");
        let mut t = Table::default();
        for (k, v) in &e.evidence {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            t.row(&[k.clone(), v]);
        }
        out.push_str(&t.render("  "));
    }
    out
}

fn step_result(s: &Step) -> &'static str {
    if s.ok {
        "ok"
    } else {
        "FAILED"
    }
}

/// A step as `switchover --wait` prints it when it appears.
pub fn step_line(s: &Step) -> String {
    let mut line = format!(
        "{:>7} ms  {}  {}",
        s.duration_ms,
        clean(&s.name),
        step_result(s)
    );
    if !s.detail.is_empty() {
        line.push_str(&format!("  {}", clean(&s.detail)));
    }
    line
}

/// The last line of `switchover --wait`: outcome, reason, and the numbers
/// an operator is asked about afterwards.
pub fn outcome_line(e: &HistoryEntry) -> String {
    let mut extra = Vec::new();
    if e.from.is_some() || e.to.is_some() {
        extra.push(from_to(e));
    }
    if let Some(w) = e.write_unavailable_ms {
        extra.push(format!("writes unavailable {w} ms"));
    }
    if let Some(done) = e.finished_ms {
        extra.push(format!("{} ms in all", done.saturating_sub(e.started_ms)));
    }
    let mut line = format!("{}: {}", outcome_word(e.outcome), clean(&e.reason));
    if !extra.is_empty() {
        line.push_str(&format!(" ({})", extra.join(", ")));
    }
    line
}

/// The exit status an entry's outcome maps to, `None` while it runs.
pub fn outcome_exit(o: Outcome) -> Option<Exit> {
    match o {
        Outcome::Running => None,
        Outcome::Done | Outcome::Simulated => Some(Exit::Ok),
        Outcome::Aborted | Outcome::Refused | Outcome::Failed => Some(Exit::Failed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry() -> HistoryEntry {
        serde_json::from_value(json!({
            "id": "001700000000000-switchover", "kind": "switchover", "cluster": "c1",
            "outcome": "done", "reason": "switched db1 -> db2",
            "from": "db1", "to": "db2",
            "request": {"target": "db2", "force": true, "max_lag_seconds": 30,
                        "skip_catchup": false, "id": "cli-1"},
            "coordinator": "db3",
            "started_ms": 1_700_000_000_000u64, "finished_ms": 1_700_000_001_834u64,
            "write_unavailable_ms": 412,
            "steps": [
                {"name": "fence", "started_ms": 1_700_000_000_010u64, "duration_ms": 4, "ok": true},
                {"name": "read_only_old_source", "started_ms": 1_700_000_000_020u64,
                 "duration_ms": 12, "ok": true},
                {"name": "kill_old_connections", "started_ms": 1_700_000_000_040u64,
                 "duration_ms": 3, "ok": false, "detail": "db1 unreachable\n"}
            ],
            "evidence": {"old_gtid": "0-1-42", "target_lag_s": 0}
        }))
        .unwrap()
    }

    #[test]
    fn list_of_entries() {
        let mut refused = entry();
        refused.id = "001699999990000-switchover".into();
        refused.started_ms = 1_699_999_990_000;
        refused.outcome = Outcome::Refused;
        refused.reason = "db2 lags 40 s (max 10)".into();
        refused.from = None;
        refused.to = None;
        refused.write_unavailable_ms = None;
        assert_eq!(
            list_table(&[entry(), refused]),
            "\
STARTED               ID                          KIND        OUTCOME  FROM → TO  WRITES UNAVAILABLE  REASON
2023-11-14 22:13:20Z  001700000000000-switchover  switchover  done     db1 → db2  412 ms              switched db1 -> db2
2023-11-14 22:13:10Z  001699999990000-switchover  switchover  refused  - → -      -                   db2 lags 40 s (max 10)
"
        );
    }

    #[test]
    fn one_entry_in_full() {
        assert_eq!(
            render_entry(&entry()),
            "\
id                  001700000000000-switchover
cluster             c1
kind                switchover
outcome             done
reason              switched db1 -> db2
from → to           db1 → db2
coordinator         db3
started             2023-11-14 22:13:20Z
finished            2023-11-14 22:13:21Z (1834 ms in all)
writes unavailable  412 ms
request             target db2, force, max lag 30 s, id cli-1

steps
  AT      TOOK   RESULT  STEP                  DETAIL
  +10 ms  4 ms   ok      fence
  +20 ms  12 ms  ok      read_only_old_source
  +40 ms  3 ms   FAILED  kill_old_connections  db1 unreachable\\n

evidence
  old_gtid      0-1-42
  target_lag_s  0
"
        );
    }

    #[test]
    fn live_lines() {
        let e = entry();
        assert_eq!(
            step_line(&e.steps[1]),
            "     12 ms  read_only_old_source  ok"
        );
        assert_eq!(
            step_line(&e.steps[2]),
            "      3 ms  kill_old_connections  FAILED  db1 unreachable\\n"
        );
        assert_eq!(
            outcome_line(&e),
            "done: switched db1 -> db2 (db1 → db2, writes unavailable 412 ms, 1834 ms in all)"
        );
        let mut refused = e;
        refused.outcome = Outcome::Refused;
        refused.reason = "db2 lags 40 s".into();
        refused.from = None;
        refused.to = None;
        refused.write_unavailable_ms = None;
        refused.finished_ms = None;
        assert_eq!(outcome_line(&refused), "refused: db2 lags 40 s");
    }

    #[test]
    fn exits_by_outcome() {
        assert_eq!(outcome_exit(Outcome::Running), None);
        assert_eq!(outcome_exit(Outcome::Done), Some(Exit::Ok));
        for o in [Outcome::Aborted, Outcome::Refused, Outcome::Failed] {
            assert_eq!(outcome_exit(o), Some(Exit::Failed));
        }
    }

    #[test]
    fn newest_ids_skip_the_marker() {
        let p = "mysql/history/c1/";
        let names: Vec<String> = [
            "001-switchover",
            "003-failover",
            "in-progress",
            "last-failover",
            "002-switchover",
            "sub/x",
        ]
        .iter()
        .map(|n| format!("{p}{n}"))
        .collect();
        assert_eq!(newest_ids(p, &names, 2), ["003-failover", "002-switchover"]);
        assert_eq!(newest_ids(p, &names, 10).len(), 3);
    }
}
