//! Planned successover against the whole system: real Consul, three
//! MariaDB servers, HAProxy driven by successover-render, an agent per
//! database, and a writer going through HAProxy that records every
//! acknowledged write.

use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use successover_common::procedure::{HistoryEntry, Outcome};
use successover_tests::consul::ConsulDev;
use successover_tests::mariadb::{global_var, MariaDb, ADMIN_APP_PASSWORD, ADMIN_APP_USER};
use successover_tests::scenario::{history, writes_land};
use successover_tests::stack::Stack;
use successover_tests::writer::{self, WriterProc};
use successover_tests::{wait_for, wait_until};
use tokio::sync::OnceCell;

static CONSUL: OnceCell<ConsulDev> = OnceCell::const_new();

async fn consul_addr() -> String {
    CONSUL
        .get_or_init(|| async { ConsulDev::start().await })
        .await
        .http_addr()
}

/// Puts a request and waits for the entry it produced to finish.
async fn request(stack: &Stack, value: &str) -> HistoryEntry {
    let before = history(stack).await.len();
    let key = format!("mysql/switchover/{}", stack.cluster);
    stack.consul.kv_put(&key, value).await.unwrap();
    let entry = wait_for(Duration::from_secs(60), || async {
        let h = history(stack).await;
        h.get(before)
            .filter(|e| e.outcome != Outcome::Running)
            .cloned()
    })
    .await
    .unwrap_or_else(|_| panic!("request {value:?} never finished\n{}", stack.logs()));
    // Consumed exactly once.
    assert_eq!(
        stack.consul.kv_get(&key).await.unwrap(),
        None,
        "request key must be consumed"
    );
    entry
}

async fn writable(db: &MariaDb) -> bool {
    let mut c = db.conn().await.unwrap();
    global_var(&mut c, "read_only").await.unwrap() == "0"
}

/// For polls: a connection still authenticating shows as "unauthenticated
/// user", so the kill loops and self-fencing may cut the poll's own
/// connection. That is a failed look, not a failed test.
async fn looks_writable(db: &MariaDb) -> Option<bool> {
    let mut c = db.conn().await.ok()?;
    Some(global_var(&mut c, "read_only").await.ok()? == "0")
}

async fn replicating(db: &MariaDb) -> bool {
    let Ok(mut c) = db.conn().await else {
        return false;
    };
    match successover_tests::mariadb::replica_status(&mut c).await {
        Ok(Some(s)) => {
            s.get("Slave_IO_Running").map(String::as_str) == Some("Yes")
                && s.get("Slave_SQL_Running").map(String::as_str) == Some("Yes")
        }
        _ => false,
    }
}

/// Ready for the next switch: semi-sync healthy on the source, every other
/// node replicating.
async fn settled(stack: &Stack) -> bool {
    let Some(source) = stack.published_node().await else {
        return false;
    };
    if !stack.semi_sync_healthy().await {
        return false;
    }
    for (i, db) in stack.topo.servers().iter().enumerate() {
        if format!("db{}", i + 1) != source && !replicating(db).await {
            return false;
        }
    }
    true
}

async fn wait_settled(stack: &Stack) {
    if wait_until(Duration::from_secs(30), || async { settled(stack).await })
        .await
        .is_err()
    {
        let mut state = String::new();
        for db in stack.topo.servers() {
            let Ok(mut c) = db.conn().await else {
                state.push_str(&format!("{}: unreachable\n", db.name()));
                continue;
            };
            let status = successover_tests::mariadb::replica_status(&mut c)
                .await
                .ok()
                .flatten()
                .unwrap_or_default();
            let get = |k: &str| status.get(k).cloned().unwrap_or_default();
            state.push_str(&format!(
                "{}: read_only {:?}, source flag {:?}, clients {:?}, IO {} ({}), SQL {} ({})\n",
                db.name(),
                global_var(&mut c, "read_only").await.ok(),
                global_var(&mut c, "rpl_semi_sync_master_enabled")
                    .await
                    .ok(),
                successover_tests::mariadb::status_var(&mut c, "Rpl_semi_sync_master_clients")
                    .await
                    .ok(),
                get("Slave_IO_Running"),
                get("Last_IO_Error"),
                get("Slave_SQL_Running"),
                get("Last_SQL_Error"),
            ));
        }
        panic!(
            "cluster did not settle (published {:?})\n{state}{}",
            stack.published_node().await,
            stack.logs()
        );
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Every acknowledged write of every log is on every node, exactly one node
/// (the published one) is writable, every other node replicates, and no
/// node has a GTID the others lack.
async fn assert_lossless(stack: &Stack, logs: &[writer::WriterLog]) {
    stack
        .topo
        .wait_replicated(Duration::from_secs(30))
        .await
        .unwrap_or_else(|_| panic!("replicas never caught up\n{}", stack.logs()));
    let source = stack.published_node().await.unwrap();
    for (i, db) in stack.topo.servers().iter().enumerate() {
        for log in logs {
            let lost = writer::missing(&db.url(), log).await.unwrap();
            assert!(
                lost.is_empty(),
                "db{} misses {} of {} acknowledged writes",
                i + 1,
                lost.len(),
                log.acked.len()
            );
        }
    }
    let mut positions = Vec::new();
    for (i, db) in stack.topo.servers().iter().enumerate() {
        let name = format!("db{}", i + 1);
        assert_eq!(writable(db).await, name == source, "{name} writable state");
        let mut c = db.conn().await.unwrap();
        positions.push(global_var(&mut c, "gtid_current_pos").await.unwrap());
        if name != source {
            assert!(replicating(db).await, "{name} must replicate at the end");
        }
    }
    assert!(
        positions.windows(2).all(|w| w[0] == w[1]),
        "diverging GTIDs: {positions:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn accounts_with_all_privileges_lose_nothing_through_switches() {
    // `ALL` includes READ_ONLY ADMIN on MariaDB: these writers' commits go
    // through read_only=1, so read_only alone does not end the old source's
    // writes. Writers as fast as they go, two of them with `ALL`.
    let stack = Stack::start("c-admin", &consul_addr().await).await;
    writer::prepare(&stack.node("db1").url()).await.unwrap();
    stack
        .topo
        .wait_replicated(Duration::from_secs(20))
        .await
        .unwrap();
    let port = stack.proxy_port.port();
    let writers = vec![
        WriterProc::start(port, 1).await,
        WriterProc::start_as(port, 2, ADMIN_APP_USER, ADMIN_APP_PASSWORD).await,
        WriterProc::start_as(port, 3, ADMIN_APP_USER, ADMIN_APP_PASSWORD).await,
    ];
    writes_land(&stack, "db1", 2).await;
    // The source's health report names the account (its connection count
    // is refreshed with the report's heartbeat, not on every change).
    let key = format!("mysql/agent/{}/db1", stack.cluster);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let report: serde_json::Value = match stack.consul.kv_get(&key).await {
            Ok(Some(v)) => {
                serde_json::from_slice(v.value.as_deref().unwrap_or_default()).unwrap_or_default()
            }
            _ => serde_json::Value::Null,
        };
        let writers = &report["read_only_writers"];
        // MySQL's super_read_only holds every account: none is listed.
        if stack.node("db1").flavour().is_mysql() && report["up"] == true {
            assert!(writers.is_null(), "{writers}");
            break;
        }
        if writers.get(ADMIN_APP_USER).is_some() {
            assert!(writers.get("app").is_none(), "{writers}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "db1's report never named {ADMIN_APP_USER}: {report}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..10 {
        let target = if i % 2 == 0 { "db2" } else { "db1" };
        let entry = request(&stack, target).await;
        assert_eq!(
            entry.outcome,
            Outcome::Done,
            "switch {i} to {target}: {}\n{}",
            entry.reason,
            stack.logs()
        );
        writes_land(&stack, target, 3).await;
        wait_settled(&stack).await;
    }
    let mut logs = Vec::new();
    for w in writers {
        logs.push(w.finish().await.unwrap());
    }
    assert!(
        logs.iter().all(|l| l.acked.len() > 50),
        "writers barely wrote"
    );
    assert_lossless(&stack, &logs).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_successovers_under_writes_lose_nothing() {
    let stack = Stack::start("c-sw", &consul_addr().await).await;
    writer::prepare(&stack.node("db1").url()).await.unwrap();
    stack
        .topo
        .wait_replicated(Duration::from_secs(20))
        .await
        .unwrap();
    let w = WriterProc::start(stack.proxy_port.port(), 1).await;
    writes_land(&stack, "db1", 1).await;

    let mut unavailable = Vec::new();
    for i in 0..20 {
        let target = if i % 2 == 0 { "db2" } else { "db1" };
        let entry = request(&stack, target).await;
        assert_eq!(
            entry.outcome,
            Outcome::Done,
            "switch {i} to {target}: {}\n{}",
            entry.reason,
            stack.logs()
        );
        assert_eq!(stack.published_node().await.as_deref(), Some(target));
        unavailable.push(entry.write_unavailable_ms.unwrap());
        wait_settled(&stack).await;
    }
    writes_land(&stack, &stack.published_node().await.unwrap(), 1).await;
    let log = w.finish().await.unwrap();
    assert!(
        log.acked.len() > 100,
        "writer barely wrote: {}",
        log.acked.len()
    );

    assert_lossless(&stack, std::slice::from_ref(&log)).await;

    let gaps: Vec<u64> = log
        .gaps(Duration::from_millis(50))
        .iter()
        .map(|(_, g)| g.as_millis() as u64)
        .collect();
    let mut u = unavailable.clone();
    u.sort();
    eprintln!(
        "20 successovers: acknowledged writes {}, failed attempts {}, lost 0; coordinator-measured unavailability p50 {} ms p99 {} ms max {} ms; writer gaps > 50 ms: {:?}",
        log.acked.len(),
        log.failed,
        percentile(&u, 0.5),
        percentile(&u, 0.99),
        u.last().unwrap(),
        gaps
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_change_nothing() {
    let stack = Stack::start("c-refuse", &consul_addr().await).await;
    let checks = |entry: &HistoryEntry, needle: &str| {
        assert_eq!(entry.outcome, Outcome::Refused, "{entry:?}");
        assert!(
            entry.reason.contains(needle),
            "reason {:?} lacks {needle:?}",
            entry.reason
        );
    };

    let e = request(&stack, "db2\n  server evil 127.0.0.1:1").await;
    checks(&e, "malformed request");
    let e = request(&stack, "db9").await;
    checks(&e, "db9 is not a node");
    let e = request(&stack, "db1").await;
    checks(&e, "already the source");

    // Not replicating.
    let db3 = stack.node("db3");
    db3.exec("STOP SLAVE").await.unwrap();
    let e = request(&stack, "db3").await;
    checks(&e, "not replicating");
    db3.exec("START SLAVE").await.unwrap();
    wait_settled(&stack).await;

    // Lagging beyond the limit: a delayed replica.
    db3.exec("STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 30; START SLAVE")
        .await
        .unwrap();
    stack
        .node("db1")
        .exec("CREATE DATABASE IF NOT EXISTS lagtest")
        .await
        .unwrap();
    wait_until(Duration::from_secs(20), || async {
        let mut c = db3.conn().await.unwrap();
        let s = successover_tests::mariadb::replica_status(&mut c)
            .await
            .unwrap()
            .unwrap();
        s.get("Seconds_Behind_Master")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            >= 3
    })
    .await
    .expect("db3 never lagged");
    let e = request(&stack, r#"{"target": "db3", "max_lag_seconds": 1}"#).await;
    checks(&e, "lags");

    // Nothing changed through all of it.
    assert_eq!(stack.published_node().await.as_deref(), Some("db1"));
    assert!(writable(stack.node("db1")).await);
    assert!(!writable(stack.node("db2")).await && !writable(db3).await);
    assert_eq!(
        stack
            .consul
            .kv_get(&format!("mysql/master/{}/failed", stack.cluster))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_open_transaction_is_killed_and_the_switch_completes() {
    let stack = Stack::start("c-longtx", &consul_addr().await).await;
    writer::prepare(&stack.node("db1").url()).await.unwrap();
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(stack.proxy_port.port())
        .user(Some(successover_tests::mariadb::APP_USER))
        .pass(Some(successover_tests::mariadb::APP_PASSWORD))
        .prefer_socket(false);
    let mut tx = mysql_async::Conn::new(opts).await.unwrap();
    tx.query_drop("BEGIN").await.unwrap();
    tx.query_drop(format!(
        "INSERT INTO {}.writes VALUES (424242, 9, 0)",
        writer::SCHEMA
    ))
    .await
    .unwrap();

    let started = Instant::now();
    let entry = request(&stack, "db2").await;
    assert_eq!(
        entry.outcome,
        Outcome::Done,
        "{}\n{}",
        entry.reason,
        stack.logs()
    );
    eprintln!(
        "switch with an open transaction took {:?}",
        started.elapsed()
    );
    assert!(
        tx.query_drop("COMMIT").await.is_err(),
        "the open transaction must be killed"
    );
    let mut c = stack.node("db2").conn().await.unwrap();
    let n: Option<u64> = c
        .query_first(format!(
            "SELECT COUNT(*) FROM {}.writes WHERE id = 424242",
            writer::SCHEMA
        ))
        .await
        .unwrap();
    assert_eq!(n, Some(0), "an unacknowledged transaction must not appear");
}

/// The coordinator dies in the middle: simulated deterministically by
/// leaving the state a coordinator leaves after fencing (old source
/// read-only, cluster fenced, history entry running), then by a real
/// kill -9 racing a real switch. Either way the next coordinator finishes
/// or rolls back, and never two nodes are writable.
/// What a coordinator that died mid-switch db1 -> db2 leaves in KV: the
/// switch's fence, its running history entry and the in-progress marker.
async fn plant_interrupted_switch(stack: &Stack, id: &str) {
    let cluster = &stack.cluster;
    let entry = serde_json::json!({
        "id": id, "kind": "switchover", "cluster": cluster, "outcome": "running",
        "reason": "switching db1 -> db2", "from": "db1", "to": "db2", "request": null,
        "coordinator": "gone", "started_ms": 1, "finished_ms": null, "steps": [], "evidence": {}
    });
    let c = &stack.consul;
    c.kv_put(
        &format!("mysql/master/{cluster}/failed"),
        format!("switchover {id}"),
    )
    .await
    .unwrap();
    c.kv_put(&format!("mysql/history/{cluster}/{id}"), entry.to_string())
        .await
        .unwrap();
    c.kv_put(&format!("mysql/history/{cluster}/in-progress"), id)
        .await
        .unwrap();
}

/// The planted switch's entry once the next coordinator finished it.
async fn recovered(stack: &Stack, id: &str) -> HistoryEntry {
    wait_for(Duration::from_secs(30), || async {
        let e = history(stack).await.into_iter().find(|e| e.id == id)?;
        (e.outcome != Outcome::Running).then_some(e)
    })
    .await
    .unwrap_or_else(|_| panic!("not recovered\n{}", stack.logs()))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_next_coordinator_finishes_or_rolls_back_an_interrupted_switch() {
    let mut stack = Stack::start("c-crash", &consul_addr().await).await;
    let cluster = stack.cluster.clone();

    // 1. Interrupted after fencing: must roll back.
    stack
        .node("db1")
        .exec("SET GLOBAL read_only = 1")
        .await
        .unwrap();
    let id = "000000000000001-switchover";
    plant_interrupted_switch(&stack, id).await;
    let c = &stack.consul;
    let done = recovered(&stack, id).await;
    assert_eq!(done.outcome, Outcome::Aborted, "{}", done.reason);
    wait_until(Duration::from_secs(10), || async {
        looks_writable(stack.node("db1")).await == Some(true)
    })
    .await
    .expect("db1 writable again");
    assert!(!writable(stack.node("db2")).await);
    assert_eq!(
        c.kv_get(&format!("mysql/master/{cluster}/failed"))
            .await
            .unwrap(),
        None
    );
    wait_settled(&stack).await;
    // The rollback's reopening can cross db1's own agent still seeing the
    // fence for a cycle (it self-fences, the coordinator reopens): a request
    // in that moment is refused ("source db1 is read-only"). Wait until db1
    // stays open across a few of the agents' cycles.
    let open_since: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    wait_until(Duration::from_secs(20), || async {
        let open = looks_writable(stack.node("db1")).await == Some(true);
        let mut since = open_since.lock().unwrap();
        if !open {
            *since = None;
            return false;
        }
        since.get_or_insert_with(Instant::now).elapsed() >= Duration::from_secs(1)
    })
    .await
    .expect("db1 did not stay writable");

    // 2. A real switch with its coordinator killed as soon as it starts.
    let coordinator = wait_for(Duration::from_secs(20), || async {
        let kv = stack
            .consul
            .kv_get(&format!("mysql/lock/{cluster}"))
            .await
            .ok()??;
        kv.session.as_ref()?;
        kv.value_str()?.rsplit('/').next().map(str::to_owned)
    })
    .await
    .unwrap();
    let idx: usize = coordinator
        .trim_start_matches("db")
        .parse::<usize>()
        .unwrap()
        - 1;
    let target = if coordinator == "db2" { "db3" } else { "db2" };
    stack
        .consul
        .kv_put(&format!("mysql/switchover/{cluster}"), target)
        .await
        .unwrap();
    let _ = wait_until(Duration::from_secs(5), || async {
        stack
            .consul
            .kv_get(&format!("mysql/history/{cluster}/in-progress"))
            .await
            .ok()
            .flatten()
            .is_some()
    })
    .await;
    stack.agents[idx].kill9().await;
    // Whatever the kill interrupted, the cluster converges: no procedure
    // running, exactly one writable node, the published one.
    let converged = wait_until(Duration::from_secs(60), || async {
        let in_progress = stack
            .consul
            .kv_get(&format!("mysql/history/{cluster}/in-progress"))
            .await
            .ok()
            .flatten();
        let Some(source) = stack.published_node().await else {
            return false;
        };
        let mut writable_nodes = Vec::new();
        for (i, db) in stack.topo.servers().iter().enumerate() {
            match looks_writable(db).await {
                Some(true) => writable_nodes.push(format!("db{}", i + 1)),
                Some(false) => {}
                None => return false,
            }
        }
        in_progress.is_none() && writable_nodes == vec![source]
    })
    .await;
    assert!(converged.is_ok(), "did not converge\n{}", stack.logs());
    let last = history(&stack).await.pop().unwrap();
    eprintln!(
        "switch with its coordinator killed: {:?} ({})",
        last.outcome, last.reason
    );
    assert!(
        matches!(last.outcome, Outcome::Done | Outcome::Aborted),
        "{last:?}"
    );
}

/// An in-progress marker whose entry cannot be read names nothing to
/// finish or roll back; left in place it would hold every other rule back
/// (no switchover, no failover) for good.
#[tokio::test(flavor = "multi_thread")]
async fn an_in_progress_marker_naming_nothing_is_dropped() {
    let stack = Stack::start("c-marker", &consul_addr().await).await;
    let key = format!("mysql/history/{}/in-progress", stack.cluster);
    stack
        .consul
        .kv_put(&key, "000000000000042-switchover")
        .await
        .unwrap();
    wait_until(Duration::from_secs(20), || async {
        stack.consul.kv_get(&key).await.ok().flatten().is_none()
    })
    .await
    .unwrap_or_else(|_| panic!("the marker stayed\n{}", stack.logs()));
    // The cluster is still served by its source.
    assert_eq!(stack.published_node().await.as_deref(), Some("db1"));
}

/// A switch back to a node whose last writes were its own, with nothing
/// written since: the old source's position is the target's own last GTID.
/// On MariaDB the target's replica position never holds its own writes, so a
/// wait on it alone never returned and the switch rolled back after the
/// catch-up limit.
#[tokio::test(flavor = "multi_thread")]
async fn a_switch_back_with_no_write_in_between_completes() {
    let stack = Stack::start("c-swback", &consul_addr().await).await;
    let entry = request(&stack, "db2").await;
    assert_eq!(entry.outcome, Outcome::Done, "{}", entry.reason);
    wait_settled(&stack).await;
    // db2's own transaction, then no write anywhere.
    stack
        .node("db2")
        .exec("CREATE DATABASE IF NOT EXISTS swback")
        .await
        .unwrap();
    stack
        .topo
        .wait_replicated(Duration::from_secs(20))
        .await
        .unwrap();
    let entry = request(&stack, "db1").await;
    assert_eq!(entry.outcome, Outcome::Done, "{}", entry.reason);
    wait_settled(&stack).await;
    let entry = request(&stack, "db2").await;
    assert_eq!(
        entry.outcome,
        Outcome::Done,
        "{}\n{}",
        entry.reason,
        stack.logs()
    );
    assert_eq!(stack.published_node().await.as_deref(), Some("db2"));
}

/// A switch interrupted after the old source was repointed under the target
/// (the semi-sync repoint) and rolled back by the next coordinator, whose
/// plan is rebuilt from the history entry and does not say so: the old
/// source reopened as a replica of the target without its semi-sync
/// source flag, acknowledging commits no replica held (found by the
/// simulator, seed 4682).
#[tokio::test(flavor = "multi_thread")]
async fn a_rolled_back_switch_reopens_the_old_source_only_as_a_source() {
    let stack = Stack::start("c-rbsrc", &consul_addr().await).await;
    let (db1, db2) = (stack.node("db1"), stack.node("db2"));
    // Maintenance holds the invariants while the servers are set up (an
    // interrupted procedure is taken up all the same).
    stack.set_maintenance(true).await;
    wait_until(Duration::from_secs(20), || async {
        stack
            .logs()
            .lines()
            .any(|l| l.contains("c-rbsrc") && l.contains("maintenance mode"))
    })
    .await
    .expect("maintenance never seen");
    // What the interrupted coordinator left: db1 read-only and a semi-sync
    // replica of db2; db2 prepared (no longer a replica, source flag on).
    db1.exec("SET GLOBAL read_only = 1").await.unwrap();
    db2.exec("STOP SLAVE; RESET SLAVE ALL; SET GLOBAL rpl_semi_sync_master_enabled = 1")
        .await
        .unwrap();
    db1.exec("SET GLOBAL rpl_semi_sync_master_enabled = 0")
        .await
        .unwrap();
    db1.replicate_from(db2, true).await.unwrap();
    let id = "000000000000002-switchover";
    plant_interrupted_switch(&stack, id).await;
    let done = recovered(&stack, id).await;
    assert_eq!(done.outcome, Outcome::Aborted, "{}", done.reason);
    assert_eq!(stack.published_node().await.as_deref(), Some("db1"));
    wait_until(Duration::from_secs(10), || async {
        looks_writable(db1).await == Some(true)
    })
    .await
    .expect("db1 writable again");
    // Open, and a source: not replicating, its source flag on.
    let mut conn = db1.conn().await.unwrap();
    assert!(
        successover_tests::mariadb::replica_status(&mut conn)
            .await
            .unwrap()
            .is_none(),
        "db1 reopened as a replica\n{}",
        stack.logs()
    );
    assert_eq!(
        global_var(&mut conn, "rpl_semi_sync_master_enabled")
            .await
            .unwrap(),
        "1"
    );
    stack.set_maintenance(false).await;
    wait_settled(&stack).await;
}

/// `consul kv put mysql/master/<cluster> <db2's address>` by hand, under
/// writers, with db2 behind: not a switchover, and it used to be worse
/// than none. The invariants opened db2 at once, while it lacked db1's
/// acknowledged commits. Now db1 goes read-only first and db2 opens only
/// once it holds everything db1 has: never two writable nodes, no
/// acknowledged write lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_master_key_written_by_hand_opens_the_node_only_once_it_is_safe() {
    let stack = Stack::start("c-hand-master", &consul_addr().await).await;
    writer::prepare(&stack.node("db1").url()).await.unwrap();
    stack
        .topo
        .wait_replicated(Duration::from_secs(20))
        .await
        .unwrap();
    let port = stack.proxy_port.port();
    // Plain accounts: one with `ALL` would write on db2 through its
    // read_only while it is still a replica and stop its applier on the
    // out-of-order GTID (the kill loop of a real switch handles those).
    let writers = vec![
        WriterProc::start(port, 1).await,
        WriterProc::start(port, 2).await,
    ];
    writes_land(&stack, "db1", 1).await;
    // db2 first, then db1: db1 seen writable after db2 was is an overlap
    // (db2 never goes back to read-only here).
    let stop = tokio_util::sync::CancellationToken::new();
    let overlap = {
        let (db1, db2, stop) = (
            stack.node("db1").opts(),
            stack.node("db2").opts(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut c1 = mysql_async::Conn::new(db1).await.unwrap();
            let mut c2 = mysql_async::Conn::new(db2).await.unwrap();
            let mut seen = 0u32;
            while !stop.is_cancelled() {
                let ro2: Option<u8> = c2
                    .query_first("SELECT @@GLOBAL.read_only")
                    .await
                    .unwrap_or(None);
                let ro1: Option<u8> = c1
                    .query_first("SELECT @@GLOBAL.read_only")
                    .await
                    .unwrap_or(None);
                if ro2 == Some(0) && ro1 == Some(0) {
                    seen += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        })
    };
    // db2 falls behind: it receives, but applies nothing (a long ALTER,
    // a DBA's pause).
    stack
        .node("db2")
        .exec("STOP SLAVE SQL_THREAD")
        .await
        .unwrap();
    writes_land(&stack, "db1", 1).await;
    let db2 = stack.node("db2").addr();
    stack
        .consul
        .kv_put(&format!("mysql/master/{}", stack.cluster), db2.as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        looks_writable(stack.node("db2")).await,
        Some(false),
        "db2 opened while it lacked db1's commits\n{}",
        stack.logs()
    );
    stack
        .node("db2")
        .exec("START SLAVE SQL_THREAD")
        .await
        .unwrap();
    wait_until(Duration::from_secs(60), || async {
        looks_writable(stack.node("db2")).await == Some(true)
    })
    .await
    .unwrap_or_else(|_| panic!("db2 was never opened\n{}", stack.logs()));
    writes_land(&stack, "db2", 1).await;
    stop.cancel();
    let both = overlap.await.unwrap();
    let mut logs = Vec::new();
    for w in writers {
        logs.push(w.finish().await.unwrap());
    }
    assert_eq!(
        both,
        0,
        "db1 and db2 both writable in {both} samples\n{}",
        stack.logs()
    );
    for log in &logs {
        let lost = writer::missing(&stack.node("db2").url(), log)
            .await
            .unwrap();
        assert!(
            lost.is_empty(),
            "{} of {} acknowledged writes missing on db2",
            lost.len(),
            log.acked.len()
        );
    }
    assert!(!writable(stack.node("db1")).await);
}

/// A proxy's record, as `successover-render` writes it under its session.
fn proxy_record(cluster: &str, source: &str, fenced: bool) -> String {
    serde_json::json!({
        "proxy": "edge1",
        "at_ms": 1,
        "kv_index": 1,
        "clusters": {cluster: {"source": source, "fenced": fenced}},
    })
    .to_string()
}

/// A session standing for a renderer's: no lock-delay, so the test can
/// take the key again right after destroying one.
async fn proxy_session(stack: &Stack) -> String {
    use successover_common::consul::SessionRequest;
    stack
        .consul
        .session_create(&SessionRequest {
            lock_delay: Duration::ZERO,
            ..SessionRequest::new("edge1", Some(Duration::from_secs(120)))
        })
        .await
        .unwrap()
}

/// DESIGN.md rule 6: the target opens only once every live proxy stopped
/// routing the cluster to the old source; a proxy whose session is gone
/// is not waited for, and the wait is bounded (`timing.proxy_ack_timeout`,
/// 10 s by default). Before the coordinator waited, db2 opened at once
/// while `edge1` still sent new connections to db1.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_source_opens_only_once_every_live_proxy_stopped_routing_elsewhere() {
    let stack = Stack::start("c-pxack", &consul_addr().await).await;
    wait_settled(&stack).await;
    let (db1, db2) = (stack.node("db1"), stack.node("db2"));
    let key = "mysql/proxy/edge1";
    let session = proxy_session(&stack).await;
    let put = |source: String, fenced: bool| {
        let (consul, session, cluster) = (&stack.consul, &session, &stack.cluster);
        async move {
            let record = proxy_record(cluster, &source, fenced);
            assert!(consul.kv_acquire(key, record, session).await.unwrap());
        }
    };

    // 1. A live proxy on db1 holds db2 closed until it moves.
    put(db1.addr(), false).await;
    stack
        .consul
        .kv_put(&format!("mysql/switchover/{}", stack.cluster), "db2")
        .await
        .unwrap();
    wait_until(Duration::from_secs(30), || async {
        stack.published_node().await.as_deref() == Some("db2")
    })
    .await
    .unwrap_or_else(|_| panic!("db2 never published\n{}", stack.logs()));
    let held = Instant::now();
    while held.elapsed() < Duration::from_secs(2) {
        assert_eq!(
            looks_writable(db2).await,
            Some(false),
            "db2 opened while edge1 routed to db1\n{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    put(db1.addr(), true).await;
    let entry = wait_for(Duration::from_secs(30), || async {
        history(&stack)
            .await
            .pop()
            .filter(|e| e.outcome != Outcome::Running)
    })
    .await
    .unwrap();
    assert_eq!(entry.outcome, Outcome::Done, "{}", entry.reason);
    // The wait starts after the repoints that follow the publish, so its
    // length is not compared with the test's 2 s.
    let waited = entry.evidence["proxies_acknowledged_ms"].as_u64().unwrap();
    assert!(waited > 0, "waited {waited} ms");
    assert!(writable(db2).await);
    wait_settled(&stack).await;

    // 2. Its session gone, a proxy is not waited for.
    put(db2.addr(), false).await;
    let destroy = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        stack.consul.session_destroy(&session).await.unwrap();
    };
    let (entry, ()) = tokio::join!(request(&stack, "db1"), destroy);
    assert_eq!(entry.outcome, Outcome::Done, "{}", entry.reason);
    let waited = entry.evidence["proxies_acknowledged_ms"].as_u64().unwrap();
    assert!(
        waited < 9000,
        "waited {waited} ms: the bound, not the session's end"
    );
    // The key outlives the session (behavior "release"): a leftover only.
    let left = stack.consul.kv_get(key).await.unwrap().unwrap();
    assert_eq!(left.session, None);
    wait_settled(&stack).await;

    // 3. A live proxy that never moves delays the open by the bound only.
    let session = proxy_session(&stack).await;
    let record = proxy_record(&stack.cluster, &db1.addr(), false);
    assert!(stack
        .consul
        .kv_acquire(key, record, &session)
        .await
        .unwrap());
    // Forced: right after two switches an idle replica can report a
    // stale lag, and lag is not what this part is about.
    let entry = request(&stack, r#"{"target": "db2", "force": true}"#).await;
    assert_eq!(entry.outcome, Outcome::Done, "{}", entry.reason);
    let named = entry.evidence["proxies_not_acknowledged"].to_string();
    assert!(named.contains("edge1"), "{named}");
    assert!(writable(db2).await);
    stack.consul.session_destroy(&session).await.unwrap();
}

/// #13 item 10: the coordinator lock deleted by hand in the middle of a
/// switch. Before, the coordinator went on waiting for its target (up to
/// `converge_timeout`, 30 s) while another agent could take the free lock
/// and act too; now it stops within moments, and whoever holds the lock
/// next takes the switch up from KV.
#[tokio::test(flavor = "multi_thread")]
async fn a_lock_deleted_by_hand_mid_switch_stops_its_coordinator() {
    let stack = Stack::start("c-lockdel", &consul_addr().await).await;
    wait_settled(&stack).await;
    let (db1, db2) = (stack.node("db1"), stack.node("db2"));
    db1.exec(
        "CREATE DATABASE IF NOT EXISTS lockdel; \
         CREATE TABLE IF NOT EXISTS lockdel.t (id INT PRIMARY KEY)",
    )
    .await
    .unwrap();
    stack
        .topo
        .wait_replicated(Duration::from_secs(20))
        .await
        .unwrap();
    // db2's applier waits behind a table lock: the switch to it waits to
    // converge. A read lock: MySQL's super_read_only refuses a write lock.
    let mut hold = db2.conn().await.unwrap();
    hold.query_drop("LOCK TABLES lockdel.t READ").await.unwrap();
    db1.exec("INSERT INTO lockdel.t VALUES (1)").await.unwrap();
    stack
        .consul
        .kv_put(&format!("mysql/switchover/{}", stack.cluster), "db2")
        .await
        .unwrap();
    wait_until(Duration::from_secs(20), || async {
        history(&stack)
            .await
            .last()
            .is_some_and(|e| e.outcome == Outcome::Running)
    })
    .await
    .unwrap_or_else(|_| panic!("the switch never started\n{}", stack.logs()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let lock = format!("mysql/lock/{}", stack.cluster);
    stack.consul.kv_delete(&lock).await.unwrap();
    let deleted = Instant::now();
    let interrupted = |stack: &Stack| {
        stack.agents.iter().any(|a| {
            std::fs::read_to_string(a.log_path())
                .is_ok_and(|l| l.contains("procedure interrupted, lock lost"))
        })
    };
    wait_until(Duration::from_secs(10), || async { interrupted(&stack) })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the coordinator went on after its lock was deleted\n{}",
                stack.logs()
            )
        });
    let stopped_after = deleted.elapsed();
    hold.query_drop("UNLOCK TABLES").await.unwrap();
    drop(hold);
    // Someone holds the lock again and the switch ends one way or the other.
    let entry = wait_for(Duration::from_secs(60), || async {
        history(&stack)
            .await
            .pop()
            .filter(|e| e.outcome != Outcome::Running)
    })
    .await
    .unwrap_or_else(|_| panic!("the switch never ended\n{}", stack.logs()));
    wait_settled(&stack).await;
    let holder = stack.consul.kv_get(&lock).await.unwrap();
    assert!(
        holder.and_then(|k| k.session).is_some(),
        "nobody coordinates"
    );
    eprintln!(
        "lock deleted mid-switch: coordinator stopped after {stopped_after:?}; switch {:?}: {}",
        entry.outcome, entry.reason
    );
}

/// The history keeps the newest `history.keep` entries per cluster: a
/// finished switch deletes the oldest beyond, and nothing else under the
/// prefix.
#[tokio::test(flavor = "multi_thread")]
async fn a_finished_switch_prunes_the_history_to_its_newest_entries() {
    use successover_common::procedure::{history_id, ProcedureKind};
    use successover_tests::stack::StackOptions;
    let mut opts = StackOptions::new("c-prune", &consul_addr().await);
    opts.history_keep = Some(3);
    let stack = Stack::start_with(opts).await;
    // Five switches of long ago, and a key under the prefix that is not an
    // entry.
    let old: Vec<String> = (1..=5u64)
        .map(|t| history_id(t * 1000, ProcedureKind::Switchover))
        .collect();
    for id in &old {
        let mut e = HistoryEntry::start(ProcedureKind::Switchover, "c-prune", "c-prune/db9", 0);
        e.id = id.clone();
        e.outcome = Outcome::Done;
        stack
            .consul
            .kv_put(
                &format!("mysql/history/c-prune/{id}"),
                serde_json::to_vec(&e).unwrap(),
            )
            .await
            .unwrap();
    }
    stack
        .consul
        .kv_put(
            "mysql/history/c-prune/last-failover",
            r#"{"id": "000000000001000-failover", "at_ms": 1000}"#,
        )
        .await
        .unwrap();
    // Not `request`: the entry it waits for by position moves when the
    // older ones go.
    stack
        .consul
        .kv_put("mysql/switchover/c-prune", "db2")
        .await
        .unwrap();
    let entry = wait_for(Duration::from_secs(60), || async {
        history(&stack)
            .await
            .into_iter()
            .find(|e| !old.contains(&e.id) && e.outcome != Outcome::Running)
    })
    .await
    .unwrap_or_else(|_| panic!("the switch never finished\n{}", stack.logs()));
    assert_eq!(entry.outcome, Outcome::Done, "{}", entry.reason);
    let kept = wait_for(Duration::from_secs(20), || async {
        let ids: Vec<String> = history(&stack).await.into_iter().map(|e| e.id).collect();
        (ids.len() == 3).then_some(ids)
    })
    .await
    .unwrap_or_else(|_| panic!("history never pruned to 3\n{}", stack.logs()));
    assert_eq!(kept, vec![old[3].clone(), old[4].clone(), entry.id.clone()]);
    assert!(
        stack
            .consul
            .kv_get("mysql/history/c-prune/last-failover")
            .await
            .unwrap()
            .is_some(),
        "a key that is not an entry was pruned"
    );
}

/// A scheduled switch waits in KV until its time, the cluster kept as it
/// was, then runs; one whose window has closed is refused and changes
/// nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_switch_runs_in_its_window_and_an_expired_one_is_refused() {
    let stack = Stack::start("c-sched", &consul_addr().await).await;
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let key = "mysql/switchover/c-sched";
    let at = now() + 6_000;
    stack
        .consul
        .kv_put(
            key,
            format!(
                r#"{{"target": "db2", "not_before_ms": {at}, "not_after_ms": {}}}"#,
                at + 60_000
            ),
        )
        .await
        .unwrap();
    // Before its time: still pending, nothing started.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        stack.consul.kv_get(key).await.unwrap().is_some(),
        "taken early"
    );
    assert!(history(&stack).await.is_empty(), "started early");
    assert_eq!(stack.published_node().await.as_deref(), Some("db1"));
    let entry = wait_for(Duration::from_secs(60), || async {
        history(&stack)
            .await
            .into_iter()
            .find(|e| e.outcome != Outcome::Running)
    })
    .await
    .unwrap_or_else(|_| panic!("the scheduled switch never finished\n{}", stack.logs()));
    assert_eq!(entry.outcome, Outcome::Done, "{}", entry.reason);
    assert!(
        entry.started_ms >= at,
        "started {} ms early",
        at - entry.started_ms
    );
    assert_eq!(stack.published_node().await.as_deref(), Some("db2"));
    wait_settled(&stack).await;

    // A window that closed before the coordinator saw it.
    let past = now() - 120_000;
    let refused = request(
        &stack,
        &format!(
            r#"{{"target": "db1", "not_before_ms": {past}, "not_after_ms": {}}}"#,
            past + 60_000
        ),
    )
    .await;
    assert_eq!(refused.outcome, Outcome::Refused, "{}", refused.reason);
    assert!(
        refused.reason.contains("window closed"),
        "{}",
        refused.reason
    );
    assert_eq!(stack.published_node().await.as_deref(), Some("db2"));
}
