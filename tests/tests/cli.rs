//! The `successover` CLI against a real Consul: status of a realistic KV
//! tree, switchover requests (one at a time, followed live with --wait),
//! history, fence and unfence, and the exit codes scripts rely on.
//!
//! A test plays the coordinator by writing history entries itself; the
//! coordinator proper is tested in `switchover.rs`. Each test uses its own
//! `--prefix`, so they share one Consul dev agent and run in parallel.

use std::process::Output;
use std::time::Duration;

use serde_json::{json, Value};
use successover_common::consul::{Consul, ConsulConfig, SessionRequest};
use successover_common::procedure::SwitchoverRequest;
use successover_tests::bins;
use successover_tests::consul::ConsulDev;
use successover_tests::wait_for;
use tokio::process::Command;
use tokio::sync::OnceCell;

static CONSUL: OnceCell<ConsulDev> = OnceCell::const_new();

async fn consul() -> &'static ConsulDev {
    CONSUL
        .get_or_init(|| async { ConsulDev::start().await })
        .await
}

async fn client() -> Consul {
    Consul::new(ConsulConfig::new(consul().await.http_addr())).unwrap()
}

/// The CLI with `--consul-addr` and `--prefix` set and the environment's
/// Consul settings removed, so an operator's shell cannot leak in.
async fn command(prefix: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(bins::successover());
    cmd.arg("--consul-addr")
        .arg(consul().await.http_addr())
        .arg("--prefix")
        .arg(prefix)
        .args(args)
        .kill_on_drop(true);
    for var in [
        "CONSUL_HTTP_ADDR",
        "CONSUL_HTTP_TOKEN",
        "CONSUL_HTTP_TOKEN_FILE",
        "CONSUL_HTTP_SSL",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().expect("exited, not killed"),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

async fn cli(prefix: &str, args: &[&str]) -> Run {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        command(prefix, args).await.output(),
    )
    .await
    .expect("the CLI finished within 60 s")
    .expect("run successover");
    Run::from(out)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A health report as the agent writes it (`successover_common::contract::HealthReport`).
fn report(node: &str, source: bool, semi_sync_replica: bool) -> Value {
    json!({
        "format": 1, "cluster": "c1", "node": node, "addr": format!("{node}:3306"),
        "agent_version": "0.1.0", "observed_at_ms": now_ms() - 1_000,
        "up": true, "error": null,
        "flavor": "MariaDB 10.11.19", "version": "10.11.19-MariaDB-0+deb12u1",
        "server_id": 1, "server_uuid": null,
        "role": if source { "source" } else { "replica" },
        "read_only": !source, "super_read_only": null,
        "replication": if source { Value::Null } else { json!({
            "source": "db1:3306", "io_running": "Yes", "sql_running": true,
            "seconds_behind": 0, "last_io_error": "", "last_sql_error": "",
            "received_gtid": "0-1-42"
        }) },
        "gtid_executed": "0-1-42",
        "semi_sync": {
            "source_enabled": source, "replica_enabled": semi_sync_replica,
            "source_status_on": source, "replica_status_on": semi_sync_replica,
            "clients": u64::from(source), "yes_tx": 42, "no_tx": 0,
            "wait_point": "AFTER_SYNC", "timeout_ms": 3_600_000u64
        },
        "client_connections": 4,
        "drift": []
    })
}

fn entry(request_id: &str, outcome: &str, steps: &[(&str, u64)], started_ms: u64) -> Value {
    let steps: Vec<Value> = steps
        .iter()
        .enumerate()
        .map(|(i, (name, ms))| {
            json!({"name": name, "started_ms": started_ms + 10 * i as u64,
                   "duration_ms": ms, "ok": true})
        })
        .collect();
    let done = outcome != "running";
    json!({
        "id": format!("{started_ms:015}-switchover"), "kind": "switchover", "cluster": "c1",
        "outcome": outcome,
        "reason": if done { "switched db1 -> db2" } else { "switching db1 -> db2" },
        "from": "db1", "to": "db2",
        "request": {"target": "db2", "force": false, "max_lag_seconds": null,
                    "skip_catchup": false, "id": request_id},
        "coordinator": "db3", "started_ms": started_ms,
        "finished_ms": if done { json!(started_ms + 900) } else { Value::Null },
        "write_unavailable_ms": if done { json!(412) } else { Value::Null },
        "steps": steps,
        "evidence": {"old_gtid": "0-1-42"}
    })
}

/// A cluster c1 as agents and a coordinator leave it: db1 the source, db2
/// the semi-sync replica, db3 a replica holding the lock; reports and the
/// lock bound to sessions; one past switchover in the history.
async fn realistic_tree(prefix: &str) {
    let c = client().await;
    let session = c
        .session_create(&SessionRequest::new(
            format!("cli-test-{prefix}"),
            Some(Duration::from_secs(120)),
        ))
        .await
        .unwrap();
    c.kv_put(&format!("{prefix}master/c1"), "db1:3306")
        .await
        .unwrap();
    c.kv_put(&format!("{prefix}master/c1/hostname"), "db1")
        .await
        .unwrap();
    c.kv_put(&format!("{prefix}master/c1/port"), "3306")
        .await
        .unwrap();
    c.kv_put(
        &format!("{prefix}cluster/c1"),
        r#"{"proxy_port": 13306, "semi_sync_replicas": 1, "max_lag_seconds": 10}"#,
    )
    .await
    .unwrap();
    for (node, source, semi) in [
        ("db1", true, false),
        ("db2", false, true),
        ("db3", false, false),
    ] {
        let body = report(node, source, semi).to_string();
        assert!(c
            .kv_acquire(&format!("{prefix}agent/c1/{node}"), body, &session)
            .await
            .unwrap());
    }
    assert!(c
        .kv_acquire(&format!("{prefix}lock/c1"), "c1/db3", &session)
        .await
        .unwrap());
    let past = entry(
        "cli-past",
        "done",
        &[("read_only_old_source", 12), ("publish", 8)],
        1_700_000_000_000,
    );
    c.kv_put(
        &format!("{prefix}history/c1/001700000000000-switchover"),
        past.to_string(),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_source_nodes_and_coordinator() {
    let p = "t-cli-status/";
    realistic_tree(p).await;

    let all = cli(p, &["status", "--json"]).await;
    assert_eq!(all.code, 0, "{all}");
    let doc = all.json();
    assert_eq!(doc["clusters"].as_array().unwrap().len(), 1, "{all}");
    let c1 = &doc["clusters"][0];
    assert_eq!(c1["cluster"], "c1");
    assert_eq!(c1["source"], "db1:3306");
    assert_eq!(c1["source_node"], "db1");
    assert_eq!(c1["fenced"], false);
    assert_eq!(c1["failed"], Value::Null);
    assert_eq!(
        c1["coordinator"],
        json!({"holder": "c1/db3", "held": true, "says": null})
    );
    assert_eq!(c1["settings"]["proxy_port"], 13306);
    assert_eq!(c1["procedure"], Value::Null);
    assert_eq!(c1["problems"], json!([]));
    let nodes = c1["nodes"].as_array().unwrap();
    let names: Vec<&str> = nodes.iter().map(|n| n["node"].as_str().unwrap()).collect();
    assert_eq!(names, ["db1", "db2", "db3"]);
    assert_eq!(nodes[0]["published_source"], true);
    assert_eq!(nodes[0]["role"], "source");
    assert_eq!(nodes[0]["agent_session"], true);
    assert_eq!(nodes[1]["role"], "replica");
    assert_eq!(nodes[1]["semi_sync"]["acking"], true);
    assert_eq!(nodes[1]["replication"]["source"], "db1:3306");
    assert_eq!(nodes[2]["semi_sync"]["acking"], false);
    assert_eq!(nodes[2]["gtid_executed"], "0-1-42");
    let age = nodes[0]["report_age_ms"].as_u64().unwrap();
    assert!((1_000..60_000).contains(&age), "{age}");

    // One cluster: the same document with one entry.
    let one = cli(p, &["status", "c1", "--json"]).await;
    assert_eq!(one.code, 0, "{one}");
    assert_eq!(one.json()["clusters"][0]["cluster"], "c1");

    let text = cli(p, &["status", "c1"]).await;
    assert_eq!(text.code, 0, "{text}");
    for expected in [
        "source       db1:3306 (node db1)",
        "fenced       no",
        "coordinator  c1/db3 (lock held)",
        "replica ACKing",
        "up, published source",
    ] {
        assert!(text.stdout.contains(expected), "{expected:?} in\n{text}");
    }
    for node in ["db1", "db2", "db3"] {
        assert!(
            text.stdout.lines().any(|l| l.starts_with(node)),
            "{node} row in\n{text}"
        );
    }

    let unknown = cli(p, &["status", "c9"]).await;
    assert_eq!(unknown.code, 1, "{unknown}");
    assert!(
        unknown.stderr.contains("cluster c9 is unknown"),
        "{unknown}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_pending_switchover_request_at_a_time() {
    let p = "t-cli-switch/";
    realistic_tree(p).await;
    let c = client().await;
    let key = format!("{p}switchover/c1");

    let first = cli(p, &["switchover", "c1", "--to", "db2"]).await;
    assert_eq!(first.code, 0, "{first}");
    let stored = c.kv_get(&key).await.unwrap().expect("request written");
    let req = SwitchoverRequest::parse(stored.value.as_deref().unwrap()).unwrap();
    assert_eq!(req.target.as_deref(), Some("db2"));
    assert!(!req.force && !req.skip_catchup);
    let id = req.id.clone().expect("request id");
    assert!(id.starts_with("cli-"), "{id}");
    assert!(first.stdout.contains(&id), "the id is printed: {first}");
    assert!(
        first.stdout.contains("successover history c1"),
        "how to follow: {first}"
    );

    let second = cli(p, &["switchover", "c1", "--to", "db3", "--force"]).await;
    assert_eq!(second.code, 1, "{second}");
    assert!(
        second
            .stderr
            .contains(&format!("{key} already holds a pending request")),
        "{second}"
    );
    assert!(
        second.stderr.contains(&id),
        "names the pending one: {second}"
    );
    let still = c.kv_get(&key).await.unwrap().unwrap();
    assert_eq!(still.modify_index, stored.modify_index, "left unchanged");

    // The pending request is visible in status and history.
    let status = cli(p, &["status", "c1", "--json"]).await;
    assert_eq!(
        status.json()["clusters"][0]["switchover_request"]["id"],
        json!(id)
    );
    let pending = cli(p, &["history", "c1", &id]).await;
    assert_eq!(pending.code, 0, "{pending}");
    assert!(pending.stdout.contains("is pending"), "{pending}");

    // Unknown clusters are refused before anything is written.
    let unknown = cli(p, &["switchover", "c9"]).await;
    assert_eq!(unknown.code, 1, "{unknown}");
    assert!(
        unknown.stderr.contains("cluster c9 is unknown"),
        "{unknown}"
    );
    assert!(c
        .kv_get(&format!("{p}switchover/c9"))
        .await
        .unwrap()
        .is_none());
}

/// A scheduled request carries its window, shows in `status`, and
/// `cancel` withdraws it (and says so when there is nothing to withdraw).
#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_switch_request_is_shown_and_cancelled() {
    let p = "t-cli-sched/";
    realistic_tree(p).await;
    let c = client().await;
    let key = format!("{p}switchover/c1");
    let asked = cli(
        p,
        &[
            "switchover",
            "c1",
            "--to",
            "db2",
            "--at",
            "+1h",
            "--not-after",
            "+2h",
        ],
    )
    .await;
    assert_eq!(asked.code, 0, "{asked}");
    let stored = c.kv_get(&key).await.unwrap().expect("request written");
    let req = SwitchoverRequest::parse(stored.value.as_deref().unwrap()).unwrap();
    let (from, until) = (req.not_before_ms.unwrap(), req.not_after_ms.unwrap());
    let hour = 3_600_000;
    assert!(from.abs_diff(now_ms() + hour) < 60_000, "{req:?}");
    assert!(until.abs_diff(now_ms() + 2 * hour) < 60_000, "{req:?}");
    let status = cli(p, &["status", "c1"]).await;
    assert!(status.stdout.contains("not before 20"), "{status}");
    let cancelled = cli(p, &["cancel", "c1", "--json"]).await;
    assert_eq!(cancelled.code, 0, "{cancelled}");
    assert_eq!(cancelled.json()["cancelled"], json!(true));
    assert_eq!(cancelled.json()["request"]["target"], json!("db2"));
    assert!(c.kv_get(&key).await.unwrap().is_none(), "request withdrawn");
    let nothing = cli(p, &["cancel", "c1"]).await;
    assert_eq!(nothing.code, 0, "{nothing}");
    assert!(
        nothing.stdout.contains("no switch request is pending"),
        "{nothing}"
    );
}

/// Plays the coordinator for the request the CLI writes: takes it, then
/// writes the entry as it progresses.
async fn coordinate(prefix: &str, steps: &[(&str, u64)], outcome: &str) -> String {
    let c = client().await;
    let key = format!("{prefix}switchover/c1");
    let req = wait_for(Duration::from_secs(20), || {
        let (c, key) = (&c, &key);
        async move {
            let pair = c.kv_get(key).await.ok()??;
            SwitchoverRequest::parse(pair.value.as_deref()?).ok()
        }
    })
    .await
    .expect("the CLI wrote a request");
    let id = req.id.expect("request id");
    // Not a wait for anything: a coordinator takes a moment, so the CLI is
    // already following the history when the entry appears.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = now_ms();
    let entry_key = format!("{prefix}history/c1/{started:015}-switchover");
    c.kv_delete(&key).await.unwrap();
    c.kv_put(
        &format!("{prefix}history/c1/in-progress"),
        format!("{started:015}-switchover"),
    )
    .await
    .unwrap();
    if outcome == "refused" {
        let mut e = entry(&id, "refused", &[], started);
        e["reason"] = json!("db2 lags 40 s (max 10)");
        c.kv_put(&entry_key, e.to_string()).await.unwrap();
    } else {
        for n in 1..=steps.len() {
            let e = entry(&id, "running", &steps[..n], started);
            c.kv_put(&entry_key, e.to_string()).await.unwrap();
            // Paced so the CLI sees each version of the rewritten entry
            // (and must print each step once).
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        c.kv_put(&entry_key, entry(&id, outcome, steps, started).to_string())
            .await
            .unwrap();
    }
    c.kv_delete(&format!("{prefix}history/c1/in-progress"))
        .await
        .unwrap();
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn switchover_wait_prints_steps_and_the_outcome() {
    let p = "t-cli-wait/";
    realistic_tree(p).await;
    let child = command(
        p,
        &[
            "switchover",
            "c1",
            "--to",
            "db2",
            "--wait",
            "--timeout",
            "30",
        ],
    )
    .await
    .output();
    let steps = [("read_only_old_source", 12), ("wait_catchup", 31)];
    let (out, id) = tokio::join!(child, coordinate(p, &steps, "done"));
    let run = Run::from(out.unwrap());
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains(&id), "{run}");
    assert!(run.stdout.contains("taken by coordinator db3"), "{run}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    let step1 = lines
        .iter()
        .position(|l| l.trim() == "12 ms  read_only_old_source  ok")
        .unwrap_or_else(|| panic!("first step in\n{run}"));
    let step2 = lines
        .iter()
        .position(|l| l.trim() == "31 ms  wait_catchup  ok")
        .unwrap_or_else(|| panic!("second step in\n{run}"));
    assert!(step1 < step2, "{run}");
    assert_eq!(
        lines.last().copied(),
        Some("done: switched db1 -> db2 (db1 → db2, writes unavailable 412 ms, 900 ms in all)"),
        "{run}"
    );
    // Each step once, even though the entry was rewritten several times.
    assert_eq!(
        run.stdout.matches("read_only_old_source").count(),
        1,
        "{run}"
    );

    // The entry is in the history, found by the request id too.
    let shown = cli(p, &["history", "c1", &id]).await;
    assert_eq!(shown.code, 0, "{shown}");
    assert!(shown.stdout.contains("outcome             done"), "{shown}");
    assert!(shown.stdout.contains("wait_catchup"), "{shown}");
    let list = cli(p, &["history", "c1", "--json"]).await;
    let entries = list.json()["entries"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 2, "{list}");
    assert_eq!(
        entries[0]["request"]["id"],
        json!(id),
        "newest first: {list}"
    );
    let text = cli(p, &["history", "c1", "-n", "1"]).await;
    assert_eq!(
        text.stdout.lines().count(),
        2,
        "header and one entry: {text}"
    );
    assert!(text.stdout.contains("db1 → db2  412 ms"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn switchover_wait_exit_codes_for_refusal_and_timeout() {
    let p = "t-cli-refused/";
    realistic_tree(p).await;
    let child = command(p, &["switchover", "c1", "--wait", "--json"])
        .await
        .output();
    let (out, id) = tokio::join!(child, coordinate(p, &[], "refused"));
    let run = Run::from(out.unwrap());
    assert_eq!(run.code, 1, "{run}");
    let doc = run.json();
    assert_eq!(doc["result"], "refused", "{run}");
    assert_eq!(doc["id"], json!(id));
    assert_eq!(doc["entry"]["reason"], "db2 lags 40 s (max 10)");

    // Nobody takes the next request: timeout, and the request stays.
    let run = cli(p, &["switchover", "c1", "--wait", "--timeout", "1"]).await;
    assert_eq!(run.code, 3, "{run}");
    assert!(run.stderr.contains("timed out after 1 s"), "{run}");
    assert!(run.stderr.contains("still pending"), "{run}");
    assert!(client()
        .await
        .kv_get(&format!("{p}switchover/c1"))
        .await
        .unwrap()
        .is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn fence_and_unfence() {
    let p = "t-cli-fence/";
    realistic_tree(p).await;
    let c = client().await;
    let key = format!("{p}master/c1/failed");

    let before = now_ms();
    let run = cli(p, &["fence", "c1", "--reason", "patching the racks"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout.contains(&format!("fenced c1: wrote {key}")),
        "{run}"
    );
    assert!(run.stderr.contains("every proxy blackholes c1"), "{run}");
    let stored = c.kv_get(&key).await.unwrap().expect("fence written");
    let v: Value = serde_json::from_slice(stored.value.as_deref().unwrap()).unwrap();
    assert_eq!(v["reason"], "patching the racks");
    assert_eq!(v["by"], "cli");
    assert!(v["at_ms"].as_u64().unwrap() >= before, "{v}");

    // Fencing again keeps the first fence and its reason.
    let again = cli(p, &["fence", "c1", "--json"]).await;
    assert_eq!(again.code, 0, "{again}");
    assert_eq!(again.json()["changed"], false);
    assert_eq!(
        c.kv_get(&key).await.unwrap().unwrap().modify_index,
        stored.modify_index
    );
    let status = cli(p, &["status", "c1", "--json"]).await;
    assert_eq!(status.json()["clusters"][0]["fenced"], true);

    let run = cli(p, &["unfence", "c1"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout.contains(&format!("unfenced c1: deleted {key}")),
        "{run}"
    );
    assert!(run.stderr.contains("routes c1 to db1:3306 again"), "{run}");
    assert!(c.kv_get(&key).await.unwrap().is_none());
    let run = cli(p, &["unfence", "c1"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("c1 was not fenced"), "{run}");

    // A procedure under way: its fence stays unless forced.
    c.kv_put(&key, "").await.unwrap();
    c.kv_put(
        &format!("{p}history/c1/in-progress"),
        "000000000000001-failover",
    )
    .await
    .unwrap();
    let run = cli(p, &["unfence", "c1"]).await;
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stderr
            .contains("000000000000001-failover is in progress"),
        "{run}"
    );
    assert!(
        c.kv_get(&key).await.unwrap().is_some(),
        "the fence must stay"
    );
    let run = cli(p, &["unfence", "c1", "--force"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stderr.contains("fenced it on purpose"), "{run}");
    assert!(c.kv_get(&key).await.unwrap().is_none());
    c.kv_delete(&format!("{p}history/c1/in-progress"))
        .await
        .unwrap();

    let run = cli(p, &["fence", "c9"]).await;
    assert_eq!(run.code, 1, "{run}");
    assert!(c
        .kv_get(&format!("{p}master/c9/failed"))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_errors_exit_2_and_write_nothing() {
    let p = "t-cli-usage/";
    realistic_tree(p).await;
    let run = cli(p, &["switchover", "c1", "--to", "db2", "--skip-catchup"]).await;
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("--skip-catchup needs --force"), "{run}");
    for args in [
        &["switchover", "c 1"][..],
        &["switchover", "c1", "--to", "db2;drop"],
        &["fence", "-x"],
        &["history", "c1", "../../master/c1"],
    ] {
        let run = cli(p, args).await;
        assert_eq!(run.code, 2, "{args:?}: {run}");
    }
    assert!(client()
        .await
        .kv_get(&format!("{p}switchover/c1"))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_and_undrain() {
    let p = "t-cli-drain/";
    realistic_tree(p).await;
    let c = client().await;
    let key = format!("{p}drain/c1/db2");

    let run = cli(p, &["drain", "c1", "db2", "--json"]).await;
    assert_eq!(run.code, 0, "{run}");
    let doc = run.json();
    assert_eq!(doc["drained"], true, "{doc}");
    assert_eq!(doc["acker"], true, "db2's report shows the flag: {doc}");
    let stored = c.kv_get(&key).await.unwrap().expect("drain key written");
    let v: Value = serde_json::from_slice(stored.value.as_deref().unwrap()).unwrap();
    assert_eq!(v["by"], "cli");
    let status = cli(p, &["status", "c1", "--json"]).await;
    assert_eq!(status.json()["clusters"][0]["drained"], json!(["db2"]));
    let status = cli(p, &["status", "c1"]).await;
    assert!(status.stdout.contains("drained"), "{status}");

    // Nobody takes the role in this tree: --wait runs out.
    let run = cli(p, &["drain", "c1", "db2", "--wait", "--timeout", "1"]).await;
    assert_eq!(run.code, 3, "{run}");
    assert!(run.stdout.contains("still holds the ACK role"), "{run}");

    // Its agent reports the flag off: --wait returns.
    c.kv_put(
        &format!("{p}agent/c1/db2"),
        report("db2", false, false).to_string(),
    )
    .await
    .unwrap();
    let run = cli(p, &["drain", "c1", "db2", "--wait", "--timeout", "10"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("holds no ACK role"), "{run}");

    let run = cli(p, &["drain", "c1", "db2", "--undo"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(c.kv_get(&key).await.unwrap().is_none());

    let run = cli(p, &["drain", "c9", "db2"]).await;
    assert_eq!(run.code, 1, "{run}");
    assert!(c
        .kv_get(&format!("{p}drain/c9/db2"))
        .await
        .unwrap()
        .is_none());
    let run = cli(p, &["drain", "c1", "db 2"]).await;
    assert_eq!(run.code, 2, "{run}");
}
