//! `successover rejoin`: a quarantined old source comes back as a replica
//! only when it holds nothing the new source lacks.

use std::process::Command;
use std::time::Duration;

use successover_common::procedure::{HistoryEntry, Outcome, ProcedureKind};
use successover_tests::bins;
use successover_tests::consul::ConsulDev;
use successover_tests::mariadb::global_var;
use successover_tests::stack::Stack;
use successover_tests::{wait_for, wait_until};

async fn failed_over(stack: &Stack) -> HistoryEntry {
    wait_for(Duration::from_secs(60), || async {
        stack
            .consul
            .kv_get_recurse(&format!("mysql/history/{}/", stack.cluster))
            .await
            .ok()?
            .into_iter()
            .filter_map(|kv| serde_json::from_slice::<HistoryEntry>(kv.value.as_deref()?).ok())
            .find(|e| e.kind == ProcedureKind::Failover && e.outcome == Outcome::Done)
    })
    .await
    .unwrap_or_else(|_| panic!("no failover\n{}", stack.logs()))
}

fn rejoin(stack: &Stack, node: &str) -> (i32, String) {
    let out = Command::new(bins::successover())
        .args([
            "--consul-addr",
            &stack.consul_addr,
            "rejoin",
            &stack.cluster,
            node,
            "--wait",
            "--timeout",
            "60",
        ])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_old_source_rejoins_and_a_diverged_one_needs_a_rebuild() {
    let consul = ConsulDev::start().await;
    let mut stack = Stack::start("c-rejoin", &consul.http_addr()).await;
    stack
        .topo
        .wait_replicated(Duration::from_secs(20))
        .await
        .unwrap();
    stack.topo.server_mut(0).kill9().await;
    let entry = failed_over(&stack).await;
    let new_source = entry.to.clone().unwrap();
    stack.topo.server_mut(0).start_again().await;

    // The restarted old source is quarantined: its agent keeps it read-only.
    let db1 = stack.node("db1");
    wait_until(Duration::from_secs(20), || async {
        let Ok(mut c) = db1.conn().await else {
            return false;
        };
        global_var(&mut c, "read_only").await.ok().as_deref() == Some("1")
    })
    .await
    .expect("quarantined db1 must be read-only");

    // Nothing was written while it was down or after: it can rejoin.
    let (code, out) = rejoin(&stack, "db1");
    assert_eq!(code, 0, "{out}\n{}", stack.logs());
    assert!(out.contains("done"), "{out}");
    assert!(stack
        .consul
        .kv_get(&format!("mysql/quarantine/{}/db1", stack.cluster))
        .await
        .unwrap()
        .is_none());
    let new_db = stack.node(&new_source);
    new_db
        .exec("CREATE DATABASE IF NOT EXISTS after_rejoin")
        .await
        .unwrap();
    wait_until(Duration::from_secs(20), || async {
        let Ok(mut c) = db1.conn().await else { return false };
        use mysql_async::prelude::*;
        let n: Option<u64> = c
            .query_first("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'after_rejoin'")
            .await
            .ok()
            .flatten();
        n == Some(1)
    })
    .await
    .expect("db1 replicates from the new source");

    // Now diverge db1: a transaction of its own that the source never saw.
    let published = stack.published_node().await.unwrap();
    let quarantine =
        serde_json::json!({"node": "db1", "addr": db1.addr(), "reason": "test", "at": 0});
    stack
        .consul
        .kv_put(
            &format!("mysql/quarantine/{}/db1", stack.cluster),
            quarantine.to_string(),
        )
        .await
        .unwrap();
    // Its agent would make it read-only again at once; stop it first.
    stack.agents[0].stop().await;
    let db1 = stack.node("db1");
    db1.exec(
        "STOP SLAVE; SET GLOBAL read_only = 0; CREATE DATABASE diverged; SET GLOBAL read_only = 1",
    )
    .await
    .unwrap();
    let (code, out) = rejoin(&stack, "db1");
    assert_eq!(code, 1, "{out}\n{}", stack.logs());
    assert!(out.contains("rebuild required"), "{out}");
    assert_eq!(
        stack.published_node().await.as_deref(),
        Some(published.as_str())
    );
    assert!(
        stack
            .consul
            .kv_get(&format!("mysql/quarantine/{}/db1", stack.cluster))
            .await
            .unwrap()
            .is_some(),
        "a refused rejoin keeps the quarantine"
    );
}
