//! successover-agent against three real MariaDB servers and Consul: the
//! coordinator restores the cluster's invariants, survives the loss of its
//! own agent, and moves the semi-sync flag off a dead replica.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use successover_common::consul::{Consul, ConsulConfig};
use successover_tests::agent::{AgentOptions, AgentProc};
use successover_tests::consul::{ConsulCluster, ConsulDev};
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

/// Agents on every server of `topo`, once the invariants hold.
async fn healthy_agents(cluster: &str, topo: &Topology) -> Vec<AgentProc> {
    let agents = start_agents(cluster, topo).await;
    wait_until(Duration::from_secs(40), || async {
        invariants_hold(topo).await
    })
    .await
    .unwrap_or_else(|_| panic!("cluster never healthy\n{}", dump_logs(&agents)));
    agents
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
    let agents = healthy_agents("c-ro", &topo).await;
    let c = client().await;
    wait_until(Duration::from_secs(10), || async {
        c.kv_get("mysql/master/c-ro").await.ok().flatten().is_some()
    })
    .await
    .unwrap();

    let db3 = topo.server(2);
    // An application connected directly to db3 while it was writable. It
    // connects first: connected after the agent's fix, it would rightly
    // survive and prove nothing.
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
    db3.exec("SET GLOBAL read_only = 0").await.unwrap();
    let started = Instant::now();
    // The agent's kill loop may cut a poll's own connection (seen on
    // MariaDB 10.11): a failed look, not a failed test.
    let fixed = wait_until(Duration::from_secs(10), || async {
        let Ok(mut c) = db3.conn().await else {
            return false;
        };
        global_var(&mut c, "read_only").await.ok().as_deref() == Some("1")
    })
    .await;
    assert!(fixed.is_ok(), "db3 stayed writable\n{}", dump_logs(&agents));
    eprintln!("writable replica fenced after {:?}", started.elapsed());
    // Its client connection is cut, so it cannot keep writing. The
    // coordinator sets read_only, then kills clients (two statements):
    // read_only may be seen between them.
    let mut killed = false;
    for _ in 0..50 {
        if app.query_drop("SELECT 1").await.is_err() {
            killed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        killed,
        "the direct client connection to db3 must be killed\n{}",
        dump_logs(&agents)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_resume_after_the_semi_sync_replica_dies() {
    writes_resume_after_losing_the_semi_sync_replica("c-dead", false).await;
}

/// #12 item 1: a hung semi-sync replica stays connected as the source
/// sees it (nothing closes its socket), so the source keeps counting it as
/// a semi-sync client, and no flag is granted while it does. Without the
/// coordinator ending the replicas' connections once commits stand still,
/// they would wait for that replica until it woke.
#[tokio::test(flavor = "multi_thread")]
async fn writes_resume_after_the_semi_sync_replica_hangs() {
    writes_resume_after_losing_the_semi_sync_replica("c-hung", true).await;
}

async fn writes_resume_after_losing_the_semi_sync_replica(cluster: &str, hang: bool) {
    let mut topo = Topology::source_with_replicas(2).await;
    topo.source()
        .exec("CREATE DATABASE IF NOT EXISTS successover_check; CREATE TABLE successover_check.t2 (id BIGINT PRIMARY KEY)")
        .await
        .unwrap();
    let agents = healthy_agents(cluster, &topo).await;
    let flags = semi_flags(&topo).await;
    let semi = (1..3).find(|&i| flags[i].1).expect("one semi-sync replica");
    let other = if semi == 1 { 2 } else { 1 };

    // A writer on the source, as the application account: its commits wait
    // once the ACKing replica dies and must be released when the flag moves
    // to the other replica (by an ACK, or, when that replica had already
    // received them, by killing the connection: an error, never an OK).
    let source_url = format!(
        "mysql://{APP_USER}:{APP_PASSWORD}@{}/",
        topo.source().addr()
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let acked: Arc<Mutex<Vec<(u64, Instant, Duration)>>> = Arc::default();
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let (stop, acked, errors) = (stop.clone(), acked.clone(), errors.clone());
        tokio::spawn(async move {
            let opts = mysql_async::Opts::from_url(&source_url).unwrap();
            let mut conn = None;
            let mut id = 0u64;
            while !stop.is_cancelled() {
                // A connection the agent's kill loop cut while it was
                // still authenticating fails to open: try again.
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match mysql_async::Conn::new(opts.clone()).await {
                        Ok(c) => conn.insert(c),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                let t = Instant::now();
                match c
                    .query_drop(format!("INSERT INTO successover_check.t2 VALUES ({id})"))
                    .await
                {
                    Ok(()) => acked.lock().unwrap().push((id, t, t.elapsed())),
                    // A commit stalled on an ACK that cannot come is
                    // released by killing its connection: an error, never
                    // an OK. The writer reconnects and goes on.
                    Err(_) => {
                        errors.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        conn = None;
                    }
                }
                id += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    wait_until(Duration::from_secs(10), || async {
        !acked.lock().unwrap().is_empty()
    })
    .await
    .expect("the writer commits on the source");
    let no_tx_before = status(topo.source(), "Rpl_semi_sync_master_no_tx").await;
    let killed_at = Instant::now();
    if hang {
        topo.server_mut(semi).sigstop().unwrap();
    } else {
        topo.server_mut(semi).kill9().await;
    }
    // Commits resume once the flag has moved to the other replica: the
    // assertion below wants more than ten started after the kill, and the
    // test gives them 5 s (15 s for a hang: the stall is seen first).
    let limit = Duration::from_secs(if hang { 15 } else { 5 });
    let _ = wait_until(limit, || async {
        let acked = acked.lock().unwrap();
        acked.iter().filter(|(_, t, _)| *t > killed_at).count() > 10
    })
    .await;
    stop.cancel();
    if let Ok(joined) = tokio::time::timeout(Duration::from_secs(60), writer).await {
        joined.unwrap();
    } else {
        let mut c = topo.source().conn().await.unwrap();
        let semi: Vec<(String, String)> = c
            .query("SHOW GLOBAL STATUS LIKE 'Rpl_semi%'")
            .await
            .unwrap();
        panic!(
            "a commit on the source never returned\nsemi-sync: {semi:?}\n{}",
            dump_logs(&agents)
        )
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    // Rule 1: no commit may have been acknowledged without a replica's ACK.
    // A released commit counts in no_tx too, but its client got an error.
    let no_tx_after: u64 = status(topo.source(), "Rpl_semi_sync_master_no_tx")
        .await
        .parse()
        .unwrap();
    let no_tx_before: u64 = no_tx_before.parse().unwrap();
    let errors = errors.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        no_tx_after - no_tx_before <= errors,
        "commits went asynchronous: no_tx {no_tx_before} -> {no_tx_after}, {errors} released with an error"
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
    // The dead replica's agent says it is not ready (its `/ready` probe),
    // and why.
    if !hang {
        let dead = &agents[semi];
        let down = wait_until(Duration::from_secs(15), || async {
            dead.ready()
                .await
                .is_some_and(|(status, body)| status == 503 && body.contains("local server"))
        })
        .await;
        assert!(
            down.is_ok(),
            "{}'s /ready: {:?}",
            dead.opts.node,
            dead.ready().await
        );
    }
    // The flag moved to the surviving replica, and it holds every write.
    // (The hung replica answers nothing: only the other one is asked.)
    let survivor_flags = (
        var(topo.server(other), "rpl_semi_sync_slave_enabled").await,
        status(topo.server(other), "Rpl_semi_sync_slave_status").await,
    );
    assert_eq!(
        (survivor_flags.0.as_str(), survivor_flags.1.as_str()),
        ("1", "ON")
    );
    let survivor = topo.server(other);
    wait_until(Duration::from_secs(10), || async {
        let mut c = survivor.conn().await.unwrap();
        let ids: Vec<u64> = c
            .query("SELECT id FROM successover_check.t2")
            .await
            .unwrap();
        let ids: std::collections::HashSet<u64> = ids.into_iter().collect();
        acked.iter().all(|(id, _, _)| ids.contains(id))
    })
    .await
    .expect("the surviving replica has every acknowledged write");
    if hang {
        // Woken, it reconnects with its flag: the coordinator takes one
        // flag off, and the source ends with one semi-sync client.
        topo.server_mut(semi).sigcont().unwrap();
        let settled = wait_until(Duration::from_secs(30), || async {
            status(topo.source(), "Rpl_semi_sync_master_clients").await == "1"
                && semi_flags(&topo).await.iter().filter(|f| f.1).count() == 1
        })
        .await;
        if settled.is_err() {
            panic!(
                "flags never settled after the wake: {:?}\n{}",
                semi_flags(&topo).await,
                dump_logs(&agents)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn another_agent_takes_over_when_the_coordinator_dies() {
    let topo = Topology::source_with_replicas(2).await;
    let mut agents = healthy_agents("c-lock", &topo).await;
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

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_restarted_at_once_ends_its_dead_predecessors_session() {
    let topo = Topology::source_with_replicas(2).await;
    let mut agents = healthy_agents("c-restart", &topo).await;
    let c = client().await;
    // Holder and session from one read: the lock may move between two
    // (the source's agent hands it on). The session is the agent
    // process's own, whoever holds the lock later.
    let (holder, old_session) = wait_for(Duration::from_secs(20), || async {
        let kv = c.kv_get("mysql/lock/c-restart").await.ok()??;
        let session = kv.session.clone()?;
        Some((kv.value_str()?.to_owned(), session))
    })
    .await
    .unwrap();
    let dead = holder.trim_start_matches("c-restart/").to_owned();
    let idx: usize = dead.trim_start_matches("db").parse::<usize>().unwrap() - 1;

    // Killed and restarted well within the 3 s liveness TTL, as systemd's
    // Restart= would: the new process passes the same liveness check.
    let killed_at = Instant::now();
    agents[idx].kill9().await;
    let opts = agents[idx].opts.clone();
    agents[idx] = AgentProc::start(opts, topo.server(idx)).await;

    // The dead process's session ends within seconds, not the session TTL.
    wait_until(Duration::from_secs(8), || async {
        c.session_info(&old_session).await.ok().flatten().is_none()
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the dead process's session lived on\n{}",
            dump_logs(&agents)
        )
    });
    let report = wait_for(Duration::from_secs(10), || async {
        c.kv_get(&format!("mysql/agent/c-restart/{dead}"))
            .await
            .ok()?
    })
    .await
    .expect("the restarted agent reports again");
    assert_ne!(report.session.as_deref(), Some(old_session.as_str()));
    eprintln!(
        "restarted agent took over from its predecessor after {:?}",
        killed_at.elapsed()
    );
}

/// The Consul server the agents talk to (in production, their local
/// Consul agent) dies and comes back on its data directory. Once it is
/// back, every agent has a live session and a health report again, and a
/// coordinator holds the lock, within the session TTL: an agent does not
/// wait for its old session to expire.
#[tokio::test(flavor = "multi_thread")]
async fn agents_have_a_session_again_soon_after_their_consul_server_returns() {
    let mut consul = ConsulCluster::start(3).await;
    let leader = consul.leader_index().await;
    let theirs = (leader + 1) % consul.len();
    let ours = (leader + 2) % consul.len();
    let topo = Topology::source_with_replicas(2).await;
    let mut agents = Vec::new();
    for (i, db) in topo.servers().iter().enumerate() {
        let opts = AgentOptions::new(
            "c-consul-back",
            &format!("db{}", i + 1),
            &consul.http_addr(theirs),
        );
        agents.push(AgentProc::start(opts, db).await);
    }
    let c = Consul::new(ConsulConfig::new(consul.http_addr(ours))).unwrap();
    let all_live = || async {
        let reports = c
            .kv_get_recurse("mysql/agent/c-consul-back/")
            .await
            .unwrap_or_default();
        let lock = c.kv_get("mysql/lock/c-consul-back").await.ok().flatten();
        reports.len() == 3
            && reports.iter().all(|r| r.session.is_some())
            && lock.is_some_and(|l| l.session.is_some())
    };
    wait_until(Duration::from_secs(40), all_live)
        .await
        .unwrap_or_else(|_| panic!("agents never settled\n{}", dump_logs(&agents)));
    consul.kill_node(theirs).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    consul.start_node(theirs).await;
    consul.wait_for_leader().await;
    let back = Instant::now();
    wait_until(Duration::from_secs(60), all_live)
        .await
        .unwrap_or_else(|_| panic!("agents never got a session again\n{}", dump_logs(&agents)));
    let took = back.elapsed();
    eprintln!(
        "every agent had a session and a report again {took:?} after its Consul server was back"
    );
    assert!(
        took < Duration::from_secs(10),
        "{took:?}: as long as an old session's TTL\n{}",
        dump_logs(&agents)
    );
}

/// Two agents for one node would each take the other's session for a dead
/// predecessor's and end it: the second stops at start instead.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_agent_for_the_same_node_refuses_to_start() {
    let topo = Topology::source_with_replicas(1).await;
    let agents = start_agents("c-twice", &topo).await;
    // The first one runs (and so holds its lock) once it reports.
    let c = client().await;
    wait_for(Duration::from_secs(20), || async {
        c.kv_get("mysql/agent/c-twice/db1").await.ok()?
    })
    .await
    .unwrap_or_else(|_| panic!("db1's agent never reported\n{}", dump_logs(&agents)));
    let out =
        tokio::process::Command::new(successover_tests::agent::workspace_bin("successover-agent"))
            .arg("--config")
            .arg(agents[0].config_path())
            .env("RUNTIME_DIRECTORY", successover_tests::agent::runtime_dir())
            .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .expect("the second agent stopped at once")
        .expect("run successover-agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("another successover-agent for c-twice/db1 is running"),
        "{stderr}"
    );
}

/// Rule 1's settings were reported as drift and never set: with
/// `wait_no_slave=OFF` stopping the last ACKer turns the source
/// asynchronous, and a short timeout does the same after a blip.
#[tokio::test(flavor = "multi_thread")]
async fn drifted_semi_sync_settings_are_set_back() {
    let topo = Topology::source_with_replicas(2).await;
    let agents = healthy_agents("c-rule1", &topo).await;
    topo.source()
        .exec(
            "SET GLOBAL rpl_semi_sync_master_wait_no_slave = OFF, \
             rpl_semi_sync_master_timeout = 1000, \
             rpl_semi_sync_master_wait_point = AFTER_COMMIT",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let settings = || async {
        (
            var(topo.source(), "rpl_semi_sync_master_wait_no_slave").await,
            var(topo.source(), "rpl_semi_sync_master_timeout").await,
            var(topo.source(), "rpl_semi_sync_master_wait_point").await,
        )
    };
    wait_until(Duration::from_secs(20), || async {
        let (no_slave, timeout, point) = settings().await;
        matches!(no_slave.as_str(), "ON" | "1") && timeout == "4294967295" && point == "AFTER_SYNC"
    })
    .await
    .unwrap_or_else(|_| panic!("rule 1 settings never set back\n{}", dump_logs(&agents)));
    eprintln!("settings now {:?}", settings().await);
    eprintln!("rule 1 settings set back after {:?}", started.elapsed());
}

/// The semi-sync replica hangs with a commit pending, the other replica
/// receives that commit asynchronously, then the hung one dies: the new
/// semi-sync replica reconnects past the pending commit and has nothing to
/// acknowledge. The stall clears — by a later commit's ACK (an OK), or by
/// the release that kills the waiting connection (an error, never an OK;
/// only once the replica that now ACKs holds the commit) — writes resume,
/// and no client gets an OK without an ACK.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_pending_on_a_dead_acker_clears_and_writes_resume() {
    let mut topo = Topology::source_with_replicas(2).await;
    topo.source()
        .exec("CREATE DATABASE IF NOT EXISTS successover_check; CREATE TABLE successover_check.t3 (id BIGINT PRIMARY KEY)")
        .await
        .unwrap();
    let agents = healthy_agents("c-pending", &topo).await;
    let flags = semi_flags(&topo).await;
    let semi = (1..3).find(|&i| flags[i].1).expect("one semi-sync replica");
    let other = if semi == 1 { 2 } else { 1 };
    let no_tx_before = status(topo.source(), "Rpl_semi_sync_master_no_tx").await;

    topo.server_mut(semi).sigstop().unwrap();
    // An application account: the agent spares its own account's
    // connections (it is the harness's root here).
    let url = format!(
        "mysql://{}:{}@{}",
        successover_tests::mariadb::APP_USER,
        successover_tests::mariadb::APP_PASSWORD,
        topo.source().addr()
    );
    let pending = tokio::spawn(async move {
        let mut c = mysql_async::Conn::new(mysql_async::Opts::from_url(&url).unwrap())
            .await
            .unwrap();
        c.query_drop("INSERT INTO successover_check.t3 VALUES (1)")
            .await
    });
    // The other replica receives the pending commit.
    wait_until(Duration::from_secs(20), || async {
        let Ok(mut c) = topo.server(other).conn().await else {
            return false;
        };
        c.query_first::<u64, _>("SELECT COUNT(*) FROM successover_check.t3")
            .await
            .ok()
            .flatten()
            == Some(1)
    })
    .await
    .expect("the other replica receives the pending commit");
    let killed_at = Instant::now();
    topo.server_mut(semi).kill9().await;

    let outcome = tokio::time::timeout(Duration::from_secs(30), pending)
        .await
        .unwrap_or_else(|_| panic!("the pending commit never returned\n{}", dump_logs(&agents)))
        .unwrap();
    let returned = killed_at.elapsed();
    // Writes resume on a new connection.
    let mut c = topo.source().conn().await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        c.query_drop("INSERT INTO successover_check.t3 VALUES (2)"),
    )
    .await
    .unwrap_or_else(|_| panic!("writes never resumed\n{}", dump_logs(&agents)))
    .unwrap();
    let no_tx: u64 = status(topo.source(), "Rpl_semi_sync_master_no_tx")
        .await
        .parse()
        .unwrap();
    let no_tx_before: u64 = no_tx_before.parse().unwrap();
    match &outcome {
        // An OK came from an ACK: nothing went asynchronous.
        Ok(()) => assert_eq!(
            no_tx, no_tx_before,
            "a commit was acknowledged without an ACK"
        ),
        // Released by killing its connection: the server counts that
        // commit as not acknowledged (its client got an error, not an OK),
        // and the replica that now ACKs holds it.
        Err(_) => {
            assert!(no_tx <= no_tx_before + 1, "no_tx {no_tx_before} -> {no_tx}");
            let mut c = topo.server(other).conn().await.unwrap();
            let n: Option<u64> = c
                .query_first("SELECT COUNT(*) FROM successover_check.t3 WHERE id = 1")
                .await
                .unwrap();
            assert_eq!(n, Some(1), "the released commit is on the ACKing replica");
        }
    }
    eprintln!(
        "pending commit returned {} {returned:?} after the ACKer died; writes resumed after {:?}",
        if outcome.is_ok() { "OK" } else { "an error" },
        killed_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_semi_sync_replica_whose_applier_stopped_keeps_the_ack_role() {
    // A replica ACKs from its IO thread: a stopped applier (a long ALTER,
    // a DBA's pause) is no reason to move the role, and moving it stalls
    // commits while the new ACKer reconnects.
    let topo = Topology::source_with_replicas(2).await;
    topo.source()
        .exec("CREATE DATABASE IF NOT EXISTS successover_check; CREATE TABLE successover_check.t3 (id BIGINT PRIMARY KEY)")
        .await
        .unwrap();
    let agents = healthy_agents("c-applier", &topo).await;
    let flags = semi_flags(&topo).await;
    let semi = (1..3).find(|&i| flags[i].1).expect("one semi-sync replica");
    topo.server(semi)
        .exec("STOP SLAVE SQL_THREAD")
        .await
        .unwrap();
    let no_tx_before = status(topo.source(), "Rpl_semi_sync_master_no_tx").await;
    // Commits for well over three of the agents' cycles (tick 300 ms).
    let mut c = topo.source().conn().await.unwrap();
    for id in 0..30 {
        c.query_drop(format!("INSERT INTO successover_check.t3 VALUES ({id})"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = semi_flags(&topo).await;
    assert!(
        after[semi].1 && after[semi].2,
        "the semi-sync flag left db{} whose IO thread still ACKs: {after:?}",
        semi + 1
    );
    assert_eq!(
        after.iter().skip(1).filter(|f| f.1).count(),
        1,
        "exactly one flagged replica: {after:?}"
    );
    assert_eq!(
        status(topo.source(), "Rpl_semi_sync_master_no_tx").await,
        no_tx_before,
        "a commit went unacknowledged"
    );
    topo.server(semi)
        .exec("START SLAVE SQL_THREAD")
        .await
        .unwrap();
    drop(agents);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_of_the_semi_sync_replica_under_writers_loses_no_ack() {
    // Patching the ACKing replica: its clean restart moves the role to the
    // other replica, which already received the pending commits
    // asynchronously; they are released (the new ACKer holds them), and
    // no commit is ever acknowledged without a replica's ACK.
    acker_restart_under_writers("c-acker-restart", false).await;
}

/// #13 item 7: drained first (`drain/<cluster>/<node>`, what `successover
/// drain` writes), the ACK role moves make before break: the other replica
/// is connected in semi-sync mode before the drained one's flag goes, so
/// the source always has an ACKer (its semi-sync client count, read as
/// fast as one connection goes through the move, never drops to 0), no commit is released with an
/// error, and the restart that follows costs the writers nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_drained_acker_hands_over_its_role_before_its_restart() {
    acker_restart_under_writers("c-acker-drain", true).await;
}

async fn acker_restart_under_writers(cluster: &str, drain: bool) {
    let mut topo = Topology::source_with_replicas(2).await;
    topo.source()
        .exec("CREATE DATABASE IF NOT EXISTS successover_check; CREATE TABLE successover_check.t4 (id BIGINT PRIMARY KEY)")
        .await
        .unwrap();
    let agents = healthy_agents(cluster, &topo).await;
    let flags = semi_flags(&topo).await;
    let semi = (1..3).find(|&i| flags[i].1).expect("one semi-sync replica");
    let source_url = format!(
        "mysql://{APP_USER}:{APP_PASSWORD}@{}/",
        topo.source().addr()
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let acked: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (stop, acked, url) = (stop.clone(), acked.clone(), source_url.clone());
        let errors = errors.clone();
        writers.push(tokio::spawn(async move {
            let opts = mysql_async::Opts::from_url(&url).unwrap();
            let mut conn = None;
            let mut id = w << 40;
            while !stop.is_cancelled() {
                id += 1;
                if conn.is_none() {
                    conn = mysql_async::Conn::new(opts.clone()).await.ok();
                }
                let Some(c) = conn.as_mut() else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                match c
                    .query_drop(format!("INSERT INTO successover_check.t4 VALUES ({id})"))
                    .await
                {
                    Ok(()) => acked.lock().unwrap().push((id, Instant::now())),
                    // A released commit: an error, never an OK.
                    Err(_) => {
                        errors.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        conn = None;
                    }
                }
            }
        }));
    }
    wait_until(Duration::from_secs(10), || async {
        acked.lock().unwrap().len() > 20
    })
    .await
    .expect("the writers commit");
    let other = if semi == 1 { 2 } else { 1 };
    let no_tx_before: u64 = status(topo.source(), "Rpl_semi_sync_master_no_tx")
        .await
        .parse()
        .unwrap();
    if drain {
        let consul = client().await;
        let node = topo.server(semi).name().to_owned();
        let key = format!("mysql/drain/{cluster}/{node}");
        // The source's semi-sync clients, read as fast as one connection
        // goes, from before the request until the role has moved.
        let looking = tokio_util::sync::CancellationToken::new();
        let sampler = {
            let (looking, opts) = (looking.clone(), topo.source().opts());
            tokio::spawn(async move {
                let mut c = mysql_async::Conn::new(opts).await.unwrap();
                let (mut fewest, mut looks) = (u32::MAX, 0u32);
                while !looking.is_cancelled() {
                    let clients: u32 = status_var(&mut c, "Rpl_semi_sync_master_clients")
                        .await
                        .unwrap()
                        .parse()
                        .unwrap();
                    fewest = fewest.min(clients);
                    looks += 1;
                }
                (fewest, looks)
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        consul.kv_put(&key, "{\"by\": \"test\"}").await.unwrap();
        let asked = Instant::now();
        loop {
            let flags = semi_flags(&topo).await;
            if !flags[semi].1 && flags[other].1 && flags[other].2 {
                break;
            }
            assert!(
                asked.elapsed() < Duration::from_secs(30),
                "the ACK role never left the drained {node}: {flags:?}\n{}",
                dump_logs(&agents)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let moved = asked.elapsed();
        tokio::time::sleep(Duration::from_millis(100)).await;
        looking.cancel();
        let (fewest, looks) = sampler.await.unwrap();
        eprintln!(
            "drained {node}: the ACK role moved in {moved:?}; the source's semi-sync clients never below {fewest} ({looks} looks)"
        );
        assert!(
            fewest >= 1,
            "the source had no ACKer during the move\n{}",
            dump_logs(&agents)
        );
        assert_eq!(
            errors.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "a commit was released with an error during the move"
        );
    }
    let restarted = Instant::now();
    topo.server_mut(semi).restart().await;
    let resumed = wait_until(Duration::from_secs(20), || async {
        acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t)| *t > restarted)
            .count()
            > 100
    })
    .await;
    stop.cancel();
    for w in writers {
        let _ = tokio::time::timeout(Duration::from_secs(20), w).await;
    }
    assert!(
        resumed.is_ok(),
        "commits did not resume after the restart\n{}",
        dump_logs(&agents)
    );
    let no_tx: u64 = status(topo.source(), "Rpl_semi_sync_master_no_tx")
        .await
        .parse()
        .unwrap();
    let errors = errors.load(std::sync::atomic::Ordering::SeqCst);
    if drain {
        // Nothing waited, so nothing was ended: the source counts no
        // commit without an ACK. (Without the drain the count also takes
        // in the agent's own writes ended with the stalled ones.)
        assert_eq!(
            no_tx, no_tx_before,
            "the source counted commits without an ACK across a drained restart"
        );
        // The drained node restarted holding no role: nothing stalled, so
        // nothing was released, and the role did not come back to it.
        assert_eq!(
            errors, 0,
            "a commit was released with an error across the restart"
        );
        let flags = semi_flags(&topo).await;
        assert!(!flags[semi].1 && flags[other].1, "{flags:?}");
    }
    // Every acknowledged commit is on every server once they caught up.
    topo.wait_replicated(Duration::from_secs(30)).await.unwrap();
    let acked_ids: Vec<u64> = acked.lock().unwrap().iter().map(|(id, _)| *id).collect();
    for db in topo.servers() {
        let mut c = db.conn().await.unwrap();
        let present: Vec<u64> = c
            .query("SELECT id FROM successover_check.t4")
            .await
            .unwrap();
        let present: std::collections::HashSet<u64> = present.into_iter().collect();
        let lost = acked_ids.iter().filter(|id| !present.contains(id)).count();
        assert_eq!(lost, 0, "{} misses acknowledged commits", db.name());
    }
    let mut a: Vec<Instant> = acked.lock().unwrap().iter().map(|(_, t)| *t).collect();
    a.sort();
    let longest = a
        .windows(2)
        .filter(|w| w[1] > restarted)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    eprintln!(
        "longest commit gap across the {}ACKer's restart: {longest:?}",
        if drain { "drained " } else { "" }
    );
}

/// The agent's account with exactly the privileges the Ansible role grants
/// (`ansible/roles/successover_database/templates/users.sql.j2`; keep the two
/// alike): every read and every repair the agent makes works with no more.
const AGENT_USER: &str = "successover";
const AGENT_PASSWORD: &str = "agent-pw";
const MARIADB_AGENT_GRANTS: &str = "GRANT READ_ONLY ADMIN, REPLICATION MASTER ADMIN, \
    REPLICATION SLAVE ADMIN, SLAVE MONITOR, BINLOG MONITOR, CONNECTION ADMIN, PROCESS, RELOAD \
    ON *.* TO 'successover'@'%'";
const MYSQL_AGENT_GRANTS: &str = "GRANT SYSTEM_VARIABLES_ADMIN, REPLICATION_SLAVE_ADMIN, \
    REPLICATION CLIENT, CONNECTION_ADMIN, PROCESS, RELOAD ON *.* TO 'successover'@'%'; \
    GRANT SELECT ON performance_schema.replication_connection_status TO 'successover'@'%'";

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_with_the_ansible_roles_grants_repairs_the_cluster() {
    let topo = Topology::source_with_replicas(2).await;
    let mysql = topo.source().flavour().is_mysql();
    for db in topo.servers() {
        // Not through the binlog: a replica must not hold a GTID the source
        // never had. super_read_only also stops root on MySQL replicas.
        let (open, close) = match (mysql, db.name() == topo.source().name()) {
            (true, false) => (
                "SET GLOBAL super_read_only = 0; ",
                "; SET GLOBAL super_read_only = 1",
            ),
            _ => ("", ""),
        };
        db.exec(&format!(
            "{open}SET SESSION sql_log_bin = 0; \
             CREATE USER '{AGENT_USER}'@'%' IDENTIFIED BY '{AGENT_PASSWORD}'; {}; \
             GRANT CREATE, INSERT, DELETE ON `successover`.* TO '{AGENT_USER}'@'%'{close}",
            if mysql {
                MYSQL_AGENT_GRANTS
            } else {
                MARIADB_AGENT_GRANTS
            }
        ))
        .await
        .unwrap();
        // Broken as in the first test: every server carries the source flag.
        db.exec("SET GLOBAL rpl_semi_sync_master_enabled = 1")
            .await
            .unwrap();
    }
    let addr = consul().await.http_addr();
    let mut agents = Vec::new();
    for (i, db) in topo.servers().iter().enumerate() {
        let mut opts = AgentOptions::new("c-grants", &format!("db{}", i + 1), &addr);
        opts.account = Some((AGENT_USER.to_owned(), AGENT_PASSWORD.to_owned()));
        agents.push(AgentProc::start(opts, db).await);
    }
    let restored = wait_until(Duration::from_secs(40), || async {
        invariants_hold(&topo).await
    })
    .await;
    assert!(
        restored.is_ok(),
        "invariants not restored: {:?}\n{}",
        semi_flags(&topo).await,
        dump_logs(&agents)
    );
    // A replica made writable by hand is set back (read_only, and on MySQL
    // super_read_only).
    let db3 = topo.server(2);
    db3.exec("SET GLOBAL read_only = 0").await.unwrap();
    let fixed = wait_until(Duration::from_secs(10), || async {
        let Ok(mut c) = db3.conn().await else {
            return false;
        };
        let ro = global_var(&mut c, "read_only").await.ok();
        let sro = if mysql {
            global_var(&mut c, "super_read_only").await.ok()
        } else {
            Some("1".to_owned())
        };
        ro.as_deref() == Some("1") && sro.as_deref() == Some("1")
    })
    .await;
    assert!(fixed.is_ok(), "db3 stayed writable\n{}", dump_logs(&agents));
    // Nothing the agents logged says a privilege was missing.
    for a in &agents {
        let log = a.log_tail(400);
        assert!(
            !log.contains("denied"),
            "{}: a privilege is missing\n{log}",
            a.opts.node
        );
    }
}

/// What a coordinator records of a possible ACKer's run of its server
/// (when the server started) must be the same on every connection to one
/// run and differ after a restart: a refused failover resumes for an ACKer
/// only in the run it was seen ACKing in, and a restarted one may have lost
/// acknowledged events from its relay log. Read with the agent's own
/// connection code, on every flavour.
#[tokio::test(flavor = "multi_thread")]
async fn a_servers_start_time_names_one_run_of_it() {
    use successover_agent::mysql::{Node, NodeConfig};
    use successover_tests::mariadb::{MariaDbOptions, ROOT_PASSWORD, ROOT_USER};
    let mut db = MariaDb::start(MariaDbOptions::new("started", 1)).await;
    let read = async |db: &MariaDb| {
        let mut node = Node::new(NodeConfig::new(
            db.host().to_string(),
            db.port(),
            ROOT_USER,
            ROOT_PASSWORD,
        ));
        let started = node.server_info().await.unwrap().started_s;
        node.close().await;
        started
    };
    let first = read(&db).await.expect("the server says when it started");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        first <= now && now - first < 600,
        "started {first}, now {now}"
    );
    // Readings across several seconds of the same run agree exactly.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(read(&db).await, Some(first));
    }
    db.restart().await;
    let again = read(&db).await.expect("the server says when it started");
    assert!(again > first, "restarted: {again}, first run {first}");
}

/// #15 item 2: every replica's report names how it applies (the harness,
/// like the Ansible role, runs parallel appliers), and a setting that
/// would let a GTID position lie about what a server applied is reported
/// as drift: MariaDB without `gtid_strict_mode`, MySQL's parallel
/// workers without `replica_preserve_commit_order`.
/// The coordinator keeps `plan/<cluster>`: who a failover would promote if
/// the source died now. With the ACKer dead, nobody (it may hold commits
/// no other replica has, and cannot be read); with it back and seen
/// again, a node again. The coordinator's gauge says the same.
#[tokio::test(flavor = "multi_thread")]
async fn the_failover_plan_changes_when_the_semi_sync_replica_dies() {
    use successover_common::contract::FailoverPlan;
    let mut topo = Topology::source_with_replicas(2).await;
    let agents = healthy_agents("c-plan", &topo).await;
    let kv = client().await;
    let plan = || {
        let kv = kv.clone();
        async move {
            let pair = kv.kv_get("mysql/plan/c-plan").await.ok()??;
            FailoverPlan::parse(pair.value.as_deref()?).ok()
        }
    };
    let Ok(ready) = wait_for(Duration::from_secs(30), || async {
        plan().await.filter(|p| p.ready)
    })
    .await
    else {
        panic!("no ready plan: {:?}\n{}", plan().await, dump_logs(&agents));
    };
    let acker = ready.candidate.clone().unwrap();
    assert_eq!(ready.source.as_deref(), Some("db1"), "{ready:?}");
    let i: usize = acker[2..].parse::<usize>().unwrap() - 1;
    assert!(
        var(topo.server(i), "rpl_semi_sync_slave_enabled").await == "1",
        "the plan names {acker}, not the semi-sync replica"
    );
    let gauge = || async {
        for a in &agents {
            let m = a.metrics().await.unwrap_or_default();
            if let Some(v) = m
                .lines()
                .find_map(|l| l.strip_prefix("successover_failover_ready "))
            {
                return Some(v.trim().to_owned());
            }
        }
        None
    };
    assert_eq!(gauge().await.as_deref(), Some("1"));

    topo.server_mut(i).kill9().await;
    let Ok(refused) = wait_for(Duration::from_secs(30), || async {
        plan().await.filter(|p| !p.ready)
    })
    .await
    else {
        panic!("the plan stayed {:?}\n{}", plan().await, dump_logs(&agents));
    };
    assert!(refused.reason.contains(&acker), "{refused:?}");
    assert_eq!(refused.candidate, None);
    let zero = wait_until(Duration::from_secs(10), || async {
        gauge().await.as_deref() == Some("0")
    })
    .await;
    assert!(zero.is_ok(), "gauge {:?}", gauge().await);

    topo.server_mut(i).start_again().await;
    let again = wait_for(Duration::from_secs(60), || async {
        plan().await.filter(|p| p.ready)
    })
    .await;
    assert!(
        again.is_ok(),
        "no node again after {acker} came back: {:?}\n{}",
        plan().await,
        dump_logs(&agents)
    );
}

/// The coordinator runs where losing its host stops no commit: not on the
/// source, not on the ACKer (whose loss stalls every commit until the
/// coordinator moves the ACK role, and a coordinator lost with it must
/// first have its lock expire), but on the replica that does neither; and
/// it moves there again when the ACK role moves to its host.
#[tokio::test(flavor = "multi_thread")]
async fn the_coordinator_runs_on_the_replica_that_neither_takes_writes_nor_acks() {
    let topo = Topology::source_with_replicas(2).await;
    let agents = healthy_agents("c-place", &topo).await;
    let kv = client().await;
    let holder = || {
        let kv = kv.clone();
        async move {
            let pair = kv.kv_get("mysql/lock/c-place").await.ok()??;
            pair.session.as_ref()?;
            let v = String::from_utf8(pair.value?).ok()?;
            Some(v.trim().rsplit('/').next()?.to_owned())
        }
    };
    let acker = || async {
        for (i, name) in [(1, "db2"), (2, "db3")] {
            let mut c = topo.server(i).conn().await.ok()?;
            if global_var(&mut c, "rpl_semi_sync_slave_enabled")
                .await
                .ok()?
                == "1"
            {
                return Some(name);
            }
        }
        None
    };
    let spare = |a: &str| if a == "db2" { "db3" } else { "db2" };
    // Every agent of a healthy cluster is ready (its `/ready` probe).
    for a in &agents {
        let ready = wait_until(Duration::from_secs(10), || async {
            a.ready().await.is_some_and(|(status, _)| status == 200)
        })
        .await;
        assert!(
            ready.is_ok(),
            "{} not ready: {:?}",
            a.opts.node,
            a.ready().await
        );
    }
    let placed = wait_until(Duration::from_secs(30), || async {
        match (acker().await, holder().await) {
            (Some(a), Some(h)) => h == spare(a),
            _ => false,
        }
    })
    .await;
    assert!(
        placed.is_ok(),
        "the coordinator is on {:?}, the ACKer is {:?}\n{}",
        holder().await,
        acker().await,
        dump_logs(&agents)
    );
    // Drain the ACKer: the role moves to the coordinator's host, and the
    // lock follows to the replica that no longer ACKs.
    let first = acker().await.unwrap();
    kv.kv_put(
        &format!("mysql/drain/c-place/{first}"),
        "{\"by\": \"test\"}",
    )
    .await
    .unwrap();
    let moved = wait_until(Duration::from_secs(30), || async {
        acker().await == Some(spare(first)) && holder().await.as_deref() == Some(first)
    })
    .await;
    assert!(
        moved.is_ok(),
        "after draining {first}: the coordinator is on {:?}, the ACKer is {:?}\n{}",
        holder().await,
        acker().await,
        dump_logs(&agents)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_report_their_appliers_and_a_loose_gtid_setting_is_drift() {
    let topo = Topology::source_with_replicas(2).await;
    let mysql = topo.source().flavour().is_mysql();
    let loose = if mysql {
        "STOP REPLICA SQL_THREAD; SET GLOBAL replica_preserve_commit_order = OFF; START REPLICA SQL_THREAD"
    } else {
        "SET GLOBAL gtid_strict_mode = OFF"
    };
    topo.server(2).exec(loose).await.unwrap();
    let agents = healthy_agents("c-apply", &topo).await;
    let kv = client().await;
    let report = |node: &'static str| {
        let kv = kv.clone();
        async move {
            let pair = kv
                .kv_get(&format!("mysql/agent/c-apply/{node}"))
                .await
                .ok()??;
            serde_json::from_slice::<successover_common::contract::HealthReport>(
                pair.value.as_deref()?,
            )
            .ok()
        }
    };
    let seen = wait_until(Duration::from_secs(20), || async {
        let (a, b) = (report("db2").await, report("db3").await);
        a.is_some_and(|r| r.parallel_apply.is_some())
            && b.is_some_and(|r| r.parallel_apply.is_some())
    })
    .await;
    assert!(
        seen.is_ok(),
        "no applier in the reports\n{}",
        dump_logs(&agents)
    );
    let strict = report("db2").await.unwrap();
    let loose = report("db3").await.unwrap();
    assert_eq!(
        strict.parallel_apply.as_deref(),
        Some(if mysql {
            "4 parallel workers"
        } else {
            "4 parallel workers, optimistic"
        }),
        "{strict:?}"
    );
    assert!(strict.drift.is_empty(), "{:?}", strict.drift);
    let want = if mysql {
        "commit out of order"
    } else {
        "gtid_strict_mode is OFF"
    };
    assert!(
        loose.drift.iter().any(|d| d.contains(want)),
        "db3's drift {:?} does not name {want}",
        loose.drift
    );

    // What a failover to a replica would wait for: with its applier
    // stopped, its report and its agent's metrics show the backlog and no
    // time to apply it; running again, it catches up to nothing left.
    let sql_thread = |verb: &str| {
        if mysql {
            format!("{verb} REPLICA SQL_THREAD")
        } else {
            format!("{verb} SLAVE SQL_THREAD")
        }
    };
    topo.server(2).exec(&sql_thread("STOP")).await.unwrap();
    topo.source()
        .exec(
            "CREATE DATABASE IF NOT EXISTS successover_check; \
             CREATE TABLE IF NOT EXISTS successover_check.lag (id BIGINT PRIMARY KEY)",
        )
        .await
        .unwrap();
    for id in 0..50 {
        insert(topo.source(), "lag", id).await.unwrap();
    }
    let apply = |node: &'static str| {
        let report = &report;
        async move { report(node).await.and_then(|r| r.replication) }
    };
    // The report is rewritten on coarse steps only (a backlog crossing
    // 1,000, no time to apply turning up): it shows a backlog and no time.
    // The metrics follow every cycle.
    let stalled = wait_until(Duration::from_secs(20), || async {
        apply("db3")
            .await
            .is_some_and(|r| r.apply_backlog >= Some(1) && r.expected_apply_ms.is_none())
    })
    .await;
    assert!(
        stalled.is_ok(),
        "db3's report never showed its stopped applier's backlog: {:?}\n{}",
        apply("db3").await,
        dump_logs(&agents)
    );
    let db3 = agents.iter().find(|a| a.opts.node == "db3").unwrap();
    let backlog = || async {
        let metrics = db3.metrics().await.unwrap_or_default();
        let backlog: Option<u64> = metrics
            .lines()
            .find_map(|l| l.strip_prefix("successover_agent_apply_backlog_transactions "))
            .and_then(|v| v.trim().parse().ok());
        let timed = metrics.contains("\nsuccessover_agent_expected_apply_seconds ");
        (backlog, timed, metrics)
    };
    let seen = wait_until(Duration::from_secs(20), || async {
        let (n, timed, _) = backlog().await;
        n >= Some(50) && !timed
    })
    .await;
    assert!(
        seen.is_ok(),
        "db3's metrics never showed a backlog of 50 without an apply time:\n{}",
        backlog().await.2
    );
    topo.server(2).exec(&sql_thread("START")).await.unwrap();
    // Running again: the report gets an apply time back (a material
    // change; the backlog's last few transactions are not), and the
    // metrics show the backlog gone.
    let timed = wait_until(Duration::from_secs(20), || async {
        apply("db3")
            .await
            .is_some_and(|r| r.expected_apply_ms.is_some() && r.apply_backlog < Some(1_000))
    })
    .await;
    assert!(
        timed.is_ok(),
        "db3's report never showed its applier running again: {:?}",
        apply("db3").await
    );
    let caught_up = wait_until(Duration::from_secs(20), || async {
        let (n, timed, _) = backlog().await;
        n == Some(0) && timed
    })
    .await;
    assert!(
        caught_up.is_ok(),
        "db3's metrics never showed it caught up:\n{}",
        backlog().await.2
    );
}

/// The fence of an old source whose `read_only` waits behind orphaned ACK
/// waits (MySQL keeps a killed session waiting) ends them by turning the
/// semi-sync source flag off. A commit queued behind such a wait is not
/// itself waiting for an ACK (MySQL's group commit parks it at the commit
/// stage until the leader's wait ends), so it is released too, with no
/// wait of its own: its client must be gone by then, whatever its account.
/// Here it is an account the fence spares (a DBA's under the agent's, say;
/// an application's connection made after the kill passes is the same
/// case), on a source with no replica to ACK.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_queued_behind_an_orphaned_ack_wait_is_not_acknowledged_by_the_fence() {
    use successover_agent::mysql::{Node, NodeConfig};
    use successover_tests::mariadb::{
        MariaDbOptions, APP_PASSWORD, APP_USER, ROOT_PASSWORD, ROOT_USER,
    };
    let db = MariaDb::start(MariaDbOptions::new("fence-queue", 1)).await;
    db.exec(
        "CREATE DATABASE IF NOT EXISTS successover_check; \
         CREATE TABLE successover_check.q (id BIGINT PRIMARY KEY)",
    )
    .await
    .unwrap();
    let cfg = NodeConfig::new(db.host().to_string(), db.port(), ROOT_USER, ROOT_PASSWORD);
    let mut node = Node::new(cfg);
    node.set_semi_sync_source(true).await.unwrap();
    let insert = |user: &'static str, password: &'static str, id: u64| {
        let (host, port) = (db.host().to_string(), db.port());
        tokio::spawn(async move {
            let opts = mysql_async::OptsBuilder::default()
                .ip_or_hostname(host)
                .tcp_port(port)
                .user(Some(user))
                .pass(Some(password))
                .prefer_socket(false);
            let mut c = mysql_async::Conn::new(opts).await?;
            c.query_drop(format!("INSERT INTO successover_check.q VALUES ({id})"))
                .await?;
            anyhow::Ok(())
        })
    };
    let waiting = || async {
        let mut c = db.conn().await.unwrap();
        let rows: Vec<(u64, String, Option<String>)> = c
            .query("SELECT ID, USER, STATE FROM information_schema.PROCESSLIST")
            .await
            .unwrap();
        rows.into_iter()
            .filter(|(_, _, s)| {
                s.as_deref()
                    .is_some_and(|s| s.to_ascii_lowercase().contains("semi-sync ack"))
            })
            .count()
    };
    let a = insert(APP_USER, APP_PASSWORD, 1);
    wait_until(Duration::from_secs(10), || async { waiting().await == 1 })
        .await
        .expect("the application's commit never waited for an ACK");
    let x = insert(ROOT_USER, ROOT_PASSWORD, 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !x.is_finished(),
        "the second commit did not wait: {:?}",
        x.await
    );

    let fenced = successover_agent::fence::fence_local(&mut node, &[ROOT_USER]).await;
    assert!(fenced.is_ok(), "{fenced:?}");
    let told = tokio::time::timeout(Duration::from_secs(20), x)
        .await
        .expect("the queued commit still hangs after the fence")
        .unwrap();
    assert!(
        told.is_err(),
        "a commit no replica received was acknowledged to its client by the fence"
    );
    let told_a = tokio::time::timeout(Duration::from_secs(20), a).await;
    assert!(
        matches!(told_a, Ok(Ok(Err(_)))),
        "the application's commit: {told_a:?}"
    );
    let ro = var(&db, "read_only").await;
    assert!(matches!(ro.as_str(), "1" | "ON"), "read_only is {ro}");
    node.close().await;
}
