//! successover-agent against three real MariaDB servers and Consul: the
//! coordinator restores the cluster's invariants, survives the loss of its
//! own agent, and moves the semi-sync flag off a dead replica.

use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use successover_common::consul::{Consul, ConsulConfig};
use successover_tests::agent::{AgentOptions, AgentProc};
use successover_tests::consul::ConsulDev;
use successover_tests::mariadb::{
    global_var, status_var, MariaDb, Topology, APP_PASSWORD, APP_USER,
};
use successover_tests::{wait_for, wait_until};
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

async fn start_agents(cluster: &str, topo: &Topology) -> Vec<AgentProc> {
    let addr = consul().await.http_addr();
    let mut agents = Vec::new();
    for (i, db) in topo.servers().iter().enumerate() {
        let opts = AgentOptions::new(cluster, &format!("db{}", i + 1), &addr);
        agents.push(AgentProc::start(opts, db).await);
    }
    agents
}

async fn var(db: &MariaDb, name: &str) -> String {
    let mut c = db.conn().await.unwrap();
    global_var(&mut c, name).await.unwrap()
}

async fn status(db: &MariaDb, name: &str) -> String {
    let mut c = db.conn().await.unwrap();
    status_var(&mut c, name).await.unwrap()
}

/// (source flag, replica flag, replica ACKing) per server.
async fn semi_flags(topo: &Topology) -> Vec<(bool, bool, bool)> {
    let mut out = Vec::new();
    for db in topo.servers() {
        if !db.is_running() {
            out.push((false, false, false));
            continue;
        }
        out.push((
            var(db, "rpl_semi_sync_master_enabled").await == "1",
            var(db, "rpl_semi_sync_slave_enabled").await == "1",
            status(db, "Rpl_semi_sync_slave_status").await == "ON",
        ));
    }
    out
}

/// Exactly one replica with the flag and ACKing, the source flag only on
/// db1, and the source sees one semi-sync client.
async fn invariants_hold(topo: &Topology) -> bool {
    let flags = semi_flags(topo).await;
    let semi_replicas = flags.iter().skip(1).filter(|f| f.1 && f.2).count();
    let source_flags = flags.iter().filter(|f| f.0).count();
    semi_replicas == 1
        && source_flags == 1
        && flags[0].0
        && status(topo.source(), "Rpl_semi_sync_master_clients").await == "1"
}

fn dump_logs(agents: &[AgentProc]) -> String {
    agents
        .iter()
        .map(|a| format!("--- {}:\n{}", a.opts.node, a.log_tail(30)))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn insert(db: &MariaDb, table: &str, id: u64) -> anyhow::Result<()> {
    let mut c = db.conn().await?;
    c.query_drop(format!(
        "INSERT INTO successover_check.{table} VALUES ({id})"
    ))
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_restore_exactly_one_semi_sync_replica_and_publish_the_source() {
    let topo = Topology::source_with_replicas(2).await;
    // The broken start the issue describes: every server has the source
    // flag, which stalls the replicas' SQL threads on MariaDB.
    for db in topo.servers() {
        db.exec("SET GLOBAL rpl_semi_sync_master_enabled = 1")
            .await
            .unwrap();
    }
    topo.source()
        .exec("CREATE DATABASE IF NOT EXISTS successover_check; CREATE TABLE successover_check.t1 (id BIGINT PRIMARY KEY)")
        .await
        .unwrap();

    let agents = start_agents("c-semi", &topo).await;
    let c = client().await;
    let ok = wait_until(Duration::from_secs(40), || async {
        invariants_hold(&topo).await
    })
    .await;
    assert!(
        ok.is_ok(),
        "invariants not restored: {:?}\n{}",
        semi_flags(&topo).await,
        dump_logs(&agents)
    );

    // The coordinator published the only writable node.
    let master = c.kv_get("mysql/master/c-semi").await.unwrap().unwrap();
    assert_eq!(master.value_str(), Some(topo.source().addr().as_str()));
    let port = c.kv_get("mysql/master/c-semi/port").await.unwrap().unwrap();
    assert_eq!(
        port.value_str(),
        Some(topo.source().port().to_string().as_str())
    );

    // Replication flows again: a write reaches both replicas.
    insert(topo.source(), "t1", 1).await.unwrap();
    topo.wait_replicated(Duration::from_secs(20)).await.unwrap();
    for db in topo.replicas() {
        let mut conn = db.conn().await.unwrap();
        let n: Option<u64> = conn
            .query_first("SELECT COUNT(*) FROM successover_check.t1")
            .await
            .unwrap();
        assert_eq!(n, Some(1));
    }
    // Every agent reports; reports carry the documented fields.
    for i in 1..=3 {
        let r = c
            .kv_get(&format!("mysql/agent/c-semi/db{i}"))
            .await
            .unwrap()
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        assert_eq!(json["node"], format!("db{i}"));
        assert_eq!(json["up"], true);
        assert!(json["semi_sync"]["timeout_ms"].as_u64().is_some());
        assert!(
            r.session.is_some(),
            "report must be bound to the agent's session"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_made_writable_by_hand_is_set_back_to_read_only() {
    let topo = Topology::source_with_replicas(2).await;
    let agents = start_agents("c-ro", &topo).await;
    wait_until(Duration::from_secs(40), || async {
        invariants_hold(&topo).await
    })
    .await
    .unwrap_or_else(|_| panic!("cluster never healthy\n{}", dump_logs(&agents)));
    let c = client().await;
    wait_until(Duration::from_secs(10), || async {
        c.kv_get("mysql/master/c-ro").await.ok().flatten().is_some()
    })
    .await
    .unwrap();

    let db3 = topo.server(2);
    db3.exec("SET GLOBAL read_only = 0").await.unwrap();
    // An application connected directly to db3 while it was writable.
    let mut app = mysql_async::Conn::new(
        mysql_async::OptsBuilder::default()
            .ip_or_hostname(db3.host().to_string())
            .tcp_port(db3.port())
            .user(Some(APP_USER))
            .pass(Some(APP_PASSWORD))
            .prefer_socket(false),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let fixed = wait_until(Duration::from_secs(10), || async {
        var(db3, "read_only").await == "1"
    })
    .await;
    assert!(fixed.is_ok(), "db3 stayed writable\n{}", dump_logs(&agents));
    eprintln!("writable replica fenced after {:?}", started.elapsed());
    // Its client connection was cut, so it cannot keep writing.
    let err = app.query_drop("SELECT 1").await;
    assert!(
        err.is_err(),
        "the direct client connection to db3 must be killed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_resume_after_the_semi_sync_replica_dies() {
    let mut topo = Topology::source_with_replicas(2).await;
    topo.source()
        .exec("CREATE DATABASE IF NOT EXISTS successover_check; CREATE TABLE successover_check.t2 (id BIGINT PRIMARY KEY)")
        .await
        .unwrap();
    let agents = start_agents("c-dead", &topo).await;
    wait_until(Duration::from_secs(40), || async {
        invariants_hold(&topo).await
    })
    .await
    .unwrap_or_else(|_| panic!("cluster never healthy\n{}", dump_logs(&agents)));
    let flags = semi_flags(&topo).await;
    let semi = (1..3).find(|&i| flags[i].1).expect("one semi-sync replica");
    let other = if semi == 1 { 2 } else { 1 };

    // A writer on the source; its commits wait once the ACKing replica dies
    // and must be released when the flag moves to the other replica.
    let source_url = topo.source().url();
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut conn =
                mysql_async::Conn::new(mysql_async::Opts::from_url(&source_url).unwrap())
                    .await
                    .unwrap();
            let mut acked: Vec<(u64, Instant, Duration)> = Vec::new();
            let mut id = 0;
            while !stop.is_cancelled() {
                let t = Instant::now();
                conn.query_drop(format!("INSERT INTO successover_check.t2 VALUES ({id})"))
                    .await
                    .unwrap();
                acked.push((id, t, t.elapsed()));
                id += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let no_tx_before = status(topo.source(), "Rpl_semi_sync_master_no_tx").await;
    let killed_at = Instant::now();
    topo.server_mut(semi).kill9().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.cancel();
    let acked = match tokio::time::timeout(Duration::from_secs(60), writer).await {
        Ok(r) => r.unwrap(),
        Err(_) => {
            let mut c = topo.source().conn().await.unwrap();
            let semi: Vec<(String, String)> = c
                .query("SHOW GLOBAL STATUS LIKE 'Rpl_semi%'")
                .await
                .unwrap();
            panic!(
                "a commit on the source never returned\nsemi-sync: {semi:?}\nflags: {:?}\n{}",
                semi_flags(&topo).await,
                dump_logs(&agents)
            )
        }
    };
    // Rule 1: no commit may have been acknowledged without a replica's ACK.
    assert_eq!(
        status(topo.source(), "Rpl_semi_sync_master_no_tx").await,
        no_tx_before,
        "commits went asynchronous"
    );
    let after: Vec<_> = acked.iter().filter(|(_, t, _)| *t > killed_at).collect();
    assert!(
        after.len() > 10,
        "only {} commits after the kill\n{}",
        after.len(),
        dump_logs(&agents)
    );
    let stall = acked.iter().map(|(_, _, d)| *d).max().unwrap();
    let resumed = after
        .iter()
        .map(|(_, t, d)| (*t + *d).duration_since(killed_at))
        .find(|_| true)
        .unwrap();
    eprintln!(
        "semi-sync replica killed -> first commit acknowledged again after {resumed:?}; longest commit {stall:?}"
    );
    // The flag moved to the surviving replica, and it holds every write.
    let flags = semi_flags(&topo).await;
    assert!(flags[other].1 && flags[other].2, "{flags:?}");
    let last_id = acked.last().unwrap().0;
    let survivor = topo.server(other);
    wait_until(Duration::from_secs(10), || async {
        let mut c = survivor.conn().await.unwrap();
        let n: Option<u64> = c
            .query_first("SELECT COUNT(*) FROM successover_check.t2")
            .await
            .unwrap();
        n == Some(last_id + 1)
    })
    .await
    .expect("the surviving replica has every acknowledged write");
}

#[tokio::test(flavor = "multi_thread")]
async fn another_agent_takes_over_when_the_coordinator_dies() {
    let topo = Topology::source_with_replicas(2).await;
    let mut agents = start_agents("c-lock", &topo).await;
    wait_until(Duration::from_secs(40), || async {
        invariants_hold(&topo).await
    })
    .await
    .unwrap_or_else(|_| panic!("cluster never healthy\n{}", dump_logs(&agents)));
    let c = client().await;
    // The coordinator is not the source's agent when others are alive.
    let holder = wait_for(Duration::from_secs(20), || async {
        let kv = c.kv_get("mysql/lock/c-lock").await.ok()??;
        kv.session.as_ref()?;
        let v = kv.value_str()?.to_owned();
        (v != "c-lock/db1").then_some(v)
    })
    .await
    .unwrap_or_else(|_| panic!("no coordinator other than db1\n{}", dump_logs(&agents)));
    let dead = holder.trim_start_matches("c-lock/").to_owned();
    let idx: usize = dead.trim_start_matches("db").parse::<usize>().unwrap() - 1;

    let killed_at = Instant::now();
    agents[idx].kill9().await;
    let new_holder = wait_for(Duration::from_secs(60), || async {
        let kv = c.kv_get("mysql/lock/c-lock").await.ok()??;
        kv.session.as_ref()?;
        let v = kv.value_str()?.to_owned();
        (v != holder).then_some(v)
    })
    .await
    .unwrap_or_else(|_| panic!("nobody took over\n{}", dump_logs(&agents)));
    eprintln!(
        "coordinator hand-over after kill -9 of {dead}: {:?} (to {new_holder})",
        killed_at.elapsed()
    );
    // The dead agent's health report went with its session.
    assert!(
        c.kv_get(&format!("mysql/agent/c-lock/{dead}"))
            .await
            .unwrap()
            .is_none(),
        "the dead agent's report must disappear"
    );
    // The new coordinator keeps the invariants: break one and watch it heal.
    let victim = if idx == 1 { 2 } else { 1 };
    topo.server(victim)
        .exec("SET GLOBAL rpl_semi_sync_master_enabled = 1")
        .await
        .unwrap();
    wait_until(Duration::from_secs(20), || async {
        var(topo.server(victim), "rpl_semi_sync_master_enabled").await == "0"
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "new coordinator did not restore the invariant\n{}",
            dump_logs(&agents)
        )
    });
}
