//! Automatic lossless failover against the whole system, with a writer
//! going through HAProxy that records every acknowledged write. Each
//! scenario checks: every acknowledged write is on the new source, the old
//! source gets no routed traffic after the fence, and there are never two
//! writable published sources.

use std::net::IpAddr;
use std::time::Duration;

use mysql_async::prelude::*;

use successover_common::procedure::{HistoryEntry, Outcome};
use successover_tests::agent::AgentProc;
use successover_tests::consul::{ConsulCluster, ConsulDev, ConsulDevOptions};
use successover_tests::mariadb::{global_var, gtids_contain, ROOT_PASSWORD, ROOT_USER};
use successover_tests::netns::NetHost;
use successover_tests::scenario::{
    check, failovers, finished_failover, in_progress, phases, wait_routed_to, writes_land,
    DirectClient, RouteMonitor,
};
use successover_tests::stack::{NodeOptions, Stack, StackOptions};
use successover_tests::writer::{self, unix_ms, WriterProc};
use successover_tests::{wait_for, wait_until};
use tokio::sync::OnceCell;

static CONSUL: OnceCell<ConsulDev> = OnceCell::const_new();

async fn consul_addr() -> String {
    CONSUL
        .get_or_init(|| async { ConsulDev::start().await })
        .await
        .http_addr()
}

/// The writers' table on db1, replicated, then four writers through
/// HAProxy, each with writes landed on db1.
async fn four_writers_on_db1(stack: &Stack) -> Vec<WriterProc> {
    writer::prepare(&stack.node("db1").url()).await.unwrap();
    stack
        .topo
        .wait_replicated(Duration::from_secs(20))
        .await
        .unwrap();
    let mut writers = Vec::new();
    for id in 1..=4 {
        writers.push(WriterProc::start(stack.proxy_port.port(), id).await);
    }
    for id in 1..=4 {
        writes_land(stack, "db1", id).await;
    }
    writers
}

async fn prepared(cluster: &str) -> (Stack, WriterProc) {
    let stack = Stack::start(cluster, &consul_addr().await).await;
    writer::prepare(&stack.node("db1").url()).await.unwrap();
    stack
        .topo
        .wait_replicated(Duration::from_secs(20))
        .await
        .unwrap();
    let w = WriterProc::start(stack.proxy_port.port(), 1).await;
    writes_land(&stack, "db1", 1).await;
    (stack, w)
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_the_source_fails_over_without_losing_a_write() {
    let (mut stack, w) = prepared("c-f-kill").await;
    let routes = RouteMonitor::start(&stack);
    let crash_ms = unix_ms();
    stack.topo.server_mut(0).kill9().await;
    let entry = finished_failover(&stack, Duration::from_secs(60)).await;
    writes_land(&stack, entry.to.as_deref().unwrap(), 1).await;
    let log = w.finish().await.unwrap();
    let routes = routes.finish().await;
    let c = check(&stack, &entry, &log, &routes, crash_ms).await;
    // The old source is quarantined.
    let q = stack
        .consul
        .kv_get(&format!("mysql/quarantine/{}/db1", stack.cluster))
        .await
        .unwrap();
    assert!(q.is_some(), "old source must be quarantined");
    assert!(
        entry.evidence.contains_key("candidate_received_gtid"),
        "{:?}",
        entry.evidence
    );
    // #13 item 12: the cooldown runs on Consul's clock: the marker is held
    // by a session with the cooldown as its TTL (the stack's default,
    // 3600 s), no node check and `delete` behaviour.
    let marker = stack
        .consul
        .kv_get(&format!("mysql/history/{}/last-failover", stack.cluster))
        .await
        .unwrap()
        .expect("the last-failover marker");
    let session = marker
        .session
        .expect("the marker is held by its cooldown session");
    let info = stack
        .consul
        .session_info(&session)
        .await
        .unwrap()
        .expect("the cooldown session");
    assert_eq!(info.ttl, "3600000ms");
    assert_eq!(
        info.behavior,
        successover_common::consul::SessionBehavior::Delete
    );
    eprintln!(
        "kill -9: crash -> first acknowledged write on {} after {} ms; {}",
        entry.to.as_deref().unwrap(),
        c.crash_to_first_write_ms,
        phases(&entry, crash_ms)
    );
}

/// Every agent restarts (a rollout) while the source's host is down: the
/// new processes never saw the source's health report, which its session
/// took with it. The coordinator must still know the source from the
/// membership recorded in KV, see it dead and fail over; a coordinator
/// that knew nodes only from live reports called the cluster healthy.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_that_died_while_every_agent_restarted_is_failed_over() {
    let (mut stack, w) = prepared("c-f-rollout").await;
    for agent in &mut stack.agents {
        agent.stop().await;
    }
    let crash_ms = unix_ms();
    stack.topo.server_mut(0).kill9().await;
    let report = format!("mysql/agent/{}/db1", stack.cluster);
    assert!(
        stack.consul.kv_get(&report).await.unwrap().is_none(),
        "a stopped agent's report goes with its session"
    );
    for i in 1..stack.agents.len() {
        let opts = stack.agents[i].opts.clone();
        stack.agents[i] = AgentProc::start(opts, stack.topo.server(i)).await;
    }
    let entry = finished_failover(&stack, Duration::from_secs(60)).await;
    assert_eq!(entry.from.as_deref(), Some("db1"));
    writes_land(&stack, entry.to.as_deref().unwrap(), 1).await;
    let log = w.finish().await.unwrap();
    check(&stack, &entry, &log, &[], crash_ms).await;
    eprintln!(
        "every agent restarted while the source died: {} promoted {} ms after the crash",
        entry.to.as_deref().unwrap(),
        entry.started_ms.saturating_sub(crash_ms)
    );
}

/// A failover after a planned switch: the replicas were repointed, so
/// what MySQL reports as received (`Retrieved_Gtid_Set`) holds only what
/// came from the new source, not what they held before.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_after_a_switchover_fails_over_without_losing_a_write() {
    let (mut stack, w) = prepared("c-f-after-sw").await;
    let key = format!("mysql/switchover/{}", stack.cluster);
    stack.consul.kv_put(&key, "db2").await.unwrap();
    wait_until(Duration::from_secs(60), || async {
        stack.published_node().await.as_deref() == Some("db2") && stack.semi_sync_healthy().await
    })
    .await
    .unwrap_or_else(|_| panic!("the switch to db2 never settled\n{}", stack.logs()));
    writes_land(&stack, "db2", 1).await;
    let routes = RouteMonitor::start(&stack);
    let crash_ms = unix_ms();
    stack.topo.server_mut(1).kill9().await;
    let entry = finished_failover(&stack, Duration::from_secs(60)).await;
    assert_eq!(
        entry.outcome,
        Outcome::Done,
        "{}\n{}",
        entry.reason,
        stack.logs()
    );
    writes_land(&stack, entry.to.as_deref().unwrap(), 1).await;
    let log = w.finish().await.unwrap();
    let routes = routes.finish().await;
    let c = check(&stack, &entry, &log, &routes, crash_ms).await;
    eprintln!(
        "kill -9 after a switchover: crash -> first acknowledged write on {} after {} ms; {}",
        entry.to.as_deref().unwrap(),
        c.crash_to_first_write_ms,
        phases(&entry, crash_ms)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_source_is_failed_over_and_stays_fenced_when_it_wakes() {
    let (mut stack, w) = prepared("c-f-stop").await;
    let routes = RouteMonitor::start(&stack);
    let crash_ms = unix_ms();
    stack.topo.server_mut(0).sigstop().unwrap();
    let entry = finished_failover(&stack, Duration::from_secs(60)).await;
    // The hung source wakes up: it must not take writes or traffic.
    stack.topo.server_mut(0).sigcont().unwrap();
    let db1 = stack.node("db1");
    wait_until(Duration::from_secs(15), || async {
        let Ok(mut c) = db1.conn().await else {
            return false;
        };
        global_var(&mut c, "read_only").await.ok().as_deref() == Some("1")
    })
    .await
    .unwrap_or_else(|_| panic!("woken old source stayed writable\n{}", stack.logs()));
    // Not a wait for something to happen: the route monitor watches for
    // 2 s whether the woken source gets traffic, which it must not.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = w.finish().await.unwrap();
    let routes = routes.finish().await;
    let c = check(&stack, &entry, &log, &routes, crash_ms).await;
    eprintln!(
        "SIGSTOP: crash -> first acknowledged write on {} after {} ms; {}",
        entry.to.as_deref().unwrap(),
        c.crash_to_first_write_ms,
        phases(&entry, crash_ms)
    );
}

/// The source hangs (SIGSTOP) while its replicas are in the middle of
/// receiving one large transaction: their relay logs end inside it, and
/// their IO threads are blocked on a source that sends nothing. The
/// failover must stop them for real, promote a replica with everything it
/// received complete and applied, and lose no acknowledged write; the
/// large transaction, never acknowledged, may be gone.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_hung_while_a_replica_reads_one_large_transaction() {
    let (mut stack, w) = prepared("c-f-midevent").await;
    let db1 = stack.node("db1");
    db1.exec(
        "CREATE TABLE successover_check.big (id INT PRIMARY KEY, pad LONGTEXT); \
         CREATE TABLE successover_check.digit (n INT PRIMARY KEY); \
         INSERT INTO successover_check.digit VALUES (0),(1),(2),(3),(4),(5),(6),(7),(8),(9)",
    )
    .await
    .unwrap();
    stack
        .topo
        .wait_replicated(Duration::from_secs(20))
        .await
        .unwrap();
    let read_pos = |db: &successover_tests::mariadb::MariaDb| {
        let opts = db.opts();
        async move {
            let mut c = mysql_async::Conn::new(opts).await.ok()?;
            let s = successover_tests::mariadb::replica_status(&mut c)
                .await
                .ok()??;
            s.get("Read_Master_Log_Pos")
                .or_else(|| s.get("Read_Source_Log_Pos"))?
                .parse::<u64>()
                .ok()
        }
    };
    let before = read_pos(stack.node("db2"))
        .await
        .expect("db2 reads from db1");
    // About 80 MB in one transaction, many row events.
    let big = {
        let opts = db1.opts();
        tokio::spawn(async move {
            let mut c = mysql_async::Conn::new(opts)
                .await
                .map_err(|e| e.to_string())?;
            c.query_drop(
                "INSERT INTO successover_check.big \
                 SELECT a.n * 10000 + b.n * 1000 + c.n * 100 + d.n * 10 + e.n, REPEAT('x', 4096) \
                 FROM successover_check.digit a, successover_check.digit b, \
                 successover_check.digit c, successover_check.digit d, successover_check.digit e \
                 WHERE a.n < 2",
            )
            .await
            .map_err(|e| e.to_string())
        })
    };
    // Hang the source once db2 has read part of it, not all.
    let started = wait_for(Duration::from_secs(60), || async {
        let pos = read_pos(stack.node("db2")).await?;
        (pos > before + 4_000_000).then_some(pos)
    })
    .await
    .expect("db2 started reading the large transaction");
    let crash_ms = unix_ms();
    stack.topo.server_mut(0).sigstop().unwrap();
    // MySQL's STOP REPLICA waited up to 60 s while its applier was inside
    // a transaction whose end never arrives, at every step that stops a
    // replica: 131 s to the first write before the agent ended the applier.
    let entry = finished_failover(&stack, Duration::from_secs(90)).await;
    let to = entry.to.clone().unwrap_or_default();
    writes_land(&stack, &to, 1).await;
    let log = w.finish().await.unwrap();
    let c = check(&stack, &entry, &log, &[], crash_ms).await;
    stack.topo.server_mut(0).sigcont().unwrap();
    let acknowledged = tokio::time::timeout(Duration::from_secs(30), big)
        .await
        .map(|r| r.unwrap().is_ok())
        .unwrap_or(false);
    let mut conn = stack.node(&to).conn().await.unwrap();
    let rows: Option<u64> = conn
        .query_first("SELECT COUNT(*) FROM successover_check.big")
        .await
        .unwrap();
    if acknowledged {
        assert_eq!(
            rows,
            Some(20_000),
            "the acknowledged large transaction is lost"
        );
    } else {
        assert!(
            matches!(rows, Some(0) | Some(20_000)),
            "a part of one transaction on {to}: {rows:?} rows"
        );
    }
    eprintln!(
        "SIGSTOP with db2 mid-transaction (read {} bytes of it): {to} promoted, first write after {} ms; large transaction acknowledged: {acknowledged}, rows on {to}: {rows:?}; {}",
        started - before,
        c.crash_to_first_write_ms,
        phases(&entry, crash_ms)
    );
}

/// The semi-sync replica dies first; before its flag can move, the source
/// dies too, while the other replica had stopped replicating and lacks
/// what the source committed since: no replica provably holds every
/// acknowledged write. Returns the semi-sync replica's and the other
/// replica's index.
async fn kill_the_only_acker_and_the_source(stack: &mut Stack) -> (usize, usize) {
    // Stop the coordinator from moving the flag by killing both at once.
    let flags = {
        let mut v = Vec::new();
        for db in stack.topo.servers() {
            let mut c = db.conn().await.unwrap();
            v.push(
                global_var(&mut c, "rpl_semi_sync_slave_enabled")
                    .await
                    .unwrap()
                    == "1",
            );
        }
        v
    };
    let semi = flags.iter().position(|f| *f).expect("a semi-sync replica");
    let other = if semi == 1 { 2 } else { 1 };
    // The other replica falls behind: its SQL thread and IO thread stop,
    // and the source commits what it will never receive.
    stack.topo.server(other).exec("STOP SLAVE").await.unwrap();
    let other_pos = {
        let mut c = stack.topo.server(other).conn().await.unwrap();
        global_var(&mut c, "gtid_current_pos").await.unwrap()
    };
    wait_until(Duration::from_secs(10), || async {
        let Ok(mut c) = stack.topo.server(0).conn().await else {
            return false;
        };
        let Ok(pos) = global_var(&mut c, "gtid_binlog_pos").await else {
            return false;
        };
        gtids_contain(&mut c, &other_pos, &pos)
            .await
            .is_ok_and(|has_all| !has_all)
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the source wrote nothing past db{}\n{}",
            other + 1,
            stack.logs()
        )
    });
    stack.topo.server_mut(semi).kill9().await;
    stack.topo.server_mut(0).kill9().await;
    (semi, other)
}

#[tokio::test(flavor = "multi_thread")]
async fn no_safe_candidate_is_a_written_refusal_and_nothing_is_promoted() {
    let (mut stack, w) = prepared("c-f-none").await;
    let (_, other) = kill_the_only_acker_and_the_source(&mut stack).await;
    let _ = w.finish().await;
    let entry = finished_failover(&stack, Duration::from_secs(60)).await;
    assert_eq!(
        entry.outcome,
        Outcome::Refused,
        "{entry:?}\n{}",
        stack.logs()
    );
    assert!(entry.reason.contains("semi-sync"), "{}", entry.reason);
    // Nothing promoted: the master key still names db1, the survivor is
    // read-only, and the cluster stays fenced for an operator.
    assert_eq!(stack.published_node().await.as_deref(), Some("db1"));
    let mut c = stack.topo.server(other).conn().await.unwrap();
    assert_eq!(global_var(&mut c, "read_only").await.unwrap(), "1");
    assert!(stack
        .consul
        .kv_get(&format!("mysql/master/{}/failed", stack.cluster))
        .await
        .unwrap()
        .is_some());
    eprintln!("no safe candidate: {}", entry.reason);
}

/// Rule 1 broken on the source for a moment (a DBA's short semi-sync
/// timeout and no replica connected): it acknowledged a write that no
/// replica has. The coordinator saw `no_tx` rise; when the source then
/// dies, the failover refuses, where promoting the best replica would have
/// lost that write.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_that_acknowledged_without_an_ack_is_not_failed_over() {
    let (mut stack, w) = prepared("c-f-unacked").await;
    let _ = w.finish().await;
    let db1 = stack.node("db1");
    db1.exec("CREATE TABLE successover_check.unacked (id INT PRIMARY KEY)")
        .await
        .unwrap();
    stack
        .topo
        .wait_replicated(Duration::from_secs(20))
        .await
        .unwrap();
    // Maintenance: the coordinator watches but repairs nothing, so it
    // neither moves the semi-sync flag (restarting an IO thread, whose ACK
    // would come) nor sets the timeout back before the write.
    stack.set_maintenance(true).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for name in ["db2", "db3"] {
        stack.node(name).exec("STOP SLAVE IO_THREAD").await.unwrap();
    }
    db1.exec("SET GLOBAL rpl_semi_sync_master_timeout = 200")
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        db1.exec("INSERT INTO successover_check.unacked VALUES (1)"),
    )
    .await
    .expect("the insert returns once the short timeout runs out")
    .unwrap();
    let mut c = db1.conn().await.unwrap();
    let no_times: u64 =
        successover_tests::mariadb::status_var(&mut c, "Rpl_semi_sync_master_no_times")
            .await
            .unwrap()
            .parse()
            .unwrap();
    assert!(no_times > 0, "semi-sync switched off on the timeout");
    drop(c);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.set_maintenance(false).await;
    // The coordinator looks at its source every cycle (300 ms here).
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.topo.server_mut(0).kill9().await;
    let entry = finished_failover(&stack, Duration::from_secs(60)).await;
    assert_eq!(
        entry.outcome,
        Outcome::Refused,
        "{entry:?}\n{}",
        stack.logs()
    );
    assert!(
        entry.reason.contains("without a semi-sync ACK"),
        "{}",
        entry.reason
    );
    assert_eq!(stack.published_node().await.as_deref(), Some("db1"));
    eprintln!(
        "unacknowledged commits: {}; evidence {:?}",
        entry.reason,
        entry.evidence.get("source_semi_sync")
    );
}

/// A refused failover used to leave the cluster fenced until an operator
/// acted, even once the failed source was back with every acknowledged
/// write: now the failover is taken up again, aborts (nothing was
/// promoted), lifts its fence, and the old source takes writes again.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_failover_ends_when_the_source_returns() {
    let (mut stack, w) = prepared("c-f-back").await;
    let (semi, _) = kill_the_only_acker_and_the_source(&mut stack).await;
    let refused = finished_failover(&stack, Duration::from_secs(60)).await;
    assert_eq!(
        refused.outcome,
        Outcome::Refused,
        "{refused:?}\n{}",
        stack.logs()
    );

    let back = std::time::Instant::now();
    stack.topo.server_mut(semi).start_again().await;
    stack.topo.server_mut(0).start_again().await;
    let aborted = wait_for(Duration::from_secs(60), || async {
        successover_tests::scenario::history(&stack)
            .await
            .into_iter()
            .find(|e| e.id == refused.id && e.outcome == Outcome::Aborted)
    })
    .await
    .unwrap_or_else(|_| panic!("the refused failover was never taken up\n{}", stack.logs()));
    assert!(
        aborted.reason.contains("answers again"),
        "{}",
        aborted.reason
    );
    assert_eq!(stack.published_node().await.as_deref(), Some("db1"));
    writes_land(&stack, "db1", 1).await;
    eprintln!(
        "refused failover aborted and db1 took writes again {:?} after both servers were back",
        back.elapsed()
    );
    let log = w.finish().await.unwrap();
    let lost = writer::missing(&stack.node("db1").url(), &log)
        .await
        .unwrap();
    assert!(lost.is_empty(), "lost acknowledged writes: {lost:?}");
    assert!(stack
        .consul
        .kv_get(&format!("mysql/master/{}/failed", stack.cluster))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_coordinators_agent_killed_during_the_failover() {
    let (mut stack, w) = prepared("c-f-coord").await;
    let cluster = stack.cluster.clone();
    let routes = RouteMonitor::start(&stack);
    let crash_ms = unix_ms();
    stack.topo.server_mut(0).kill9().await;
    // Kill the coordinator as soon as the failover starts.
    let coordinator = wait_for(Duration::from_secs(30), || async {
        let in_progress = stack
            .consul
            .kv_get(&format!("mysql/history/{cluster}/in-progress"))
            .await
            .ok()??;
        in_progress.value.as_ref()?;
        let lock = stack
            .consul
            .kv_get(&format!("mysql/lock/{cluster}"))
            .await
            .ok()??;
        lock.value_str()?.rsplit('/').next().map(str::to_owned)
    })
    .await;
    if let Ok(name) = &coordinator {
        let idx: usize = name.trim_start_matches("db").parse::<usize>().unwrap() - 1;
        stack.agents[idx].kill9().await;
    }
    let entry = finished_failover(&stack, Duration::from_secs(90)).await;
    writes_land(&stack, entry.to.as_deref().unwrap(), 1).await;
    let log = w.finish().await.unwrap();
    let routes = routes.finish().await;
    let c = check(&stack, &entry, &log, &routes, crash_ms).await;
    eprintln!(
        "coordinator killed mid-failover ({:?}): crash -> first write after {} ms; {}",
        coordinator.ok(),
        c.crash_to_first_write_ms,
        entry.reason
    );
}

/// A three-server Consul whose followers serve the agents and the renderer
/// (in production each host talks to its local Consul agent), and the
/// stack on top, with the writer and route monitor running.
/// Stops Consul server `leader`, the one no agent or renderer talks to.
/// Elections under load can move leadership during the stack's setup; if
/// the test then stopped whichever server led, it could be a server two
/// agents depend on, which is a different fault (an agent's Consul gone for
/// good). Leadership is moved back before the crash, so a move can only
/// happen in the few milliseconds in between; the output says if it did.
async fn stop_unused_leader(consul: &mut ConsulCluster, leader: usize) -> usize {
    if consul.current_leader().await != Some(leader) {
        eprintln!("the Consul leader moved away from server {leader} just before it was stopped");
    }
    consul.kill_node(leader).await;
    leader
}

async fn stack_on_consul_cluster(
    cluster: &str,
) -> (ConsulCluster, usize, Stack, WriterProc, RouteMonitor) {
    let consul = ConsulCluster::start(3).await;
    let leader = consul.leader_index().await;
    let followers: Vec<String> = (0..consul.len())
        .filter(|i| *i != leader)
        .map(|i| consul.http_addr(i))
        .collect();
    let mut opts = StackOptions::new(cluster, &followers[0]);
    opts.render_consul_addr = Some(followers[1].clone());
    for (i, node) in opts.nodes.iter_mut().enumerate() {
        node.consul_addr = Some(followers[i % 2].clone());
    }
    let stack = Stack::start_with(opts).await;
    writer::prepare(&stack.node("db1").url()).await.unwrap();
    stack
        .topo
        .wait_replicated(Duration::from_secs(20))
        .await
        .unwrap();
    let w = WriterProc::start(stack.proxy_port.port(), 1).await;
    writes_land(&stack, "db1", 1).await;
    let routes = RouteMonitor::start(&stack);
    (consul, leader, stack, w, routes)
}

/// The step of `entry` that was running at `at_ms` (or what came before
/// or after it), for the test's output.
fn step_at(entry: &HistoryEntry, at_ms: u64) -> String {
    if at_ms < entry.started_ms {
        return format!(
            "before the failover started ({} ms)",
            entry.started_ms - at_ms
        );
    }
    for s in &entry.steps {
        if at_ms <= s.started_ms + s.duration_ms {
            return format!("during or before step {}", s.name);
        }
    }
    "after the last step".to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn consul_leader_stopped_at_the_crash() {
    let (mut consul, leader, mut stack, w, routes) =
        stack_on_consul_cluster("c-f-leader-crash").await;
    consul.make_leader(leader).await.unwrap();
    stack.topo.server_mut(0).kill9().await;
    let crash_ms = unix_ms();
    let stopped = stop_unused_leader(&mut consul, leader).await;
    let stopped_ms = unix_ms();
    let entry = finished_failover(&stack, Duration::from_secs(60)).await;
    let new_leader = consul.wait_for_leader().await;
    wait_routed_to(
        &stack,
        entry.to.as_deref().unwrap(),
        Duration::from_secs(30),
    )
    .await;
    writes_land(&stack, entry.to.as_deref().unwrap(), 1).await;
    let log = w.finish().await.unwrap();
    let routes = routes.finish().await;
    let c = check(&stack, &entry, &log, &routes, crash_ms).await;
    eprintln!(
        "consul leader {stopped} stopped at the crash ({}), new leader {new_leader}: \
         crash -> first write on {} after {} ms; {}",
        step_at(&entry, stopped_ms),
        entry.to.as_deref().unwrap(),
        c.crash_to_first_write_ms,
        phases(&entry, crash_ms)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn consul_leader_stopped_as_the_failover_starts() {
    let (mut consul, leader, mut stack, w, routes) =
        stack_on_consul_cluster("c-f-leader-mid").await;
    consul.make_leader(leader).await.unwrap();
    stack.topo.server_mut(0).kill9().await;
    let crash_ms = unix_ms();
    // Poll tightly: the whole procedure after the fence takes ~100 ms.
    let started = tokio::time::timeout(Duration::from_secs(30), async {
        while in_progress(&stack).await.is_none() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert!(started.is_ok(), "no failover started\n{}", stack.logs());
    let stopped = stop_unused_leader(&mut consul, leader).await;
    let stopped_ms = unix_ms();
    let entry = finished_failover(&stack, Duration::from_secs(60)).await;
    let new_leader = consul.wait_for_leader().await;
    wait_routed_to(
        &stack,
        entry.to.as_deref().unwrap(),
        Duration::from_secs(30),
    )
    .await;
    writes_land(&stack, entry.to.as_deref().unwrap(), 1).await;
    let log = w.finish().await.unwrap();
    let routes = routes.finish().await;
    let c = check(&stack, &entry, &log, &routes, crash_ms).await;
    eprintln!(
        "consul leader {stopped} stopped as the failover started ({}), new leader {new_leader}: \
         crash -> first write on {} after {} ms; {}; {}",
        step_at(&entry, stopped_ms),
        entry.to.as_deref().unwrap(),
        c.crash_to_first_write_ms,
        phases(&entry, crash_ms),
        entry.reason
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_host_cut_off_the_network_is_failed_over_and_fenced_when_it_returns() {
    // db1 and its agent live in a namespace host; Consul, HAProxy, db2,
    // db3 and their agents on loopback.
    let host = NetHost::create("db1").await;
    let consul = ConsulDev::start_with(ConsulDevOptions {
        extra_client_addrs: vec![host.host_side_addr().into()],
        ..ConsulDevOptions::default()
    })
    .await;
    let mut opts = StackOptions::new("c-f-cut", &consul.http_addr());
    opts.nodes[0] = NodeOptions::in_host(&host, consul.http_port());
    let stack = Stack::start_with(opts).await;
    let db1 = stack.node("db1");
    assert_eq!(db1.host(), IpAddr::from(host.addr()));
    writer::prepare(&db1.url()).await.unwrap();
    stack
        .topo
        .wait_replicated(Duration::from_secs(20))
        .await
        .unwrap();
    let w = WriterProc::start(stack.proxy_port.port(), 1).await;
    // An application that bypasses the proxy.
    let direct = DirectClient::start(db1.host().to_string(), db1.port(), 2);
    // And one on db1's own host, on its side of the cut.
    let local = WriterProc::start_in(&host, &db1.host().to_string(), db1.port(), 3).await;
    writes_land(&stack, "db1", 1).await;
    writes_land(&stack, "db1", 2).await;
    writes_land(&stack, "db1", 3).await;
    let routes = RouteMonitor::start(&stack);

    let cut_ms = unix_ms();
    host.cut().await.unwrap();
    // `ip link set down` takes a moment on a loaded machine: writes that
    // started before it returned may still have been acknowledged.
    let cut_done_ms = unix_ms();
    // Watched from db1's side of the cut, from the cut on.
    let fenced_in_cut = {
        let (ns, addr, port) = (
            host.ns_name().to_owned(),
            db1.host().to_string(),
            db1.port(),
        );
        tokio::spawn(async move {
            let seen = wait_until(Duration::from_secs(30), || async {
                let out = tokio::process::Command::new(successover_tests::bins::ip())
                    .args(["netns", "exec", &ns, "mariadb", "--connect-timeout=2"])
                    .args(["-h", &addr, "-P", &port.to_string(), "-u", ROOT_USER])
                    .arg(format!("-p{ROOT_PASSWORD}"))
                    .args(["-N", "-e", "SELECT @@global.read_only"])
                    .output()
                    .await;
                out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "1")
            })
            .await;
            seen.ok().map(|_| unix_ms())
        })
    };
    let entry = finished_failover(&stack, Duration::from_secs(60)).await;
    let done_ms = unix_ms();
    wait_routed_to(
        &stack,
        entry.to.as_deref().unwrap(),
        Duration::from_secs(30),
    )
    .await;
    writes_land(&stack, entry.to.as_deref().unwrap(), 1).await;

    // Cut off from Consul, its commits waiting for ACKs nobody sends, db1
    // fences itself while the cut lasts (rule 6a): the application on its
    // side gets errors, not a server that hangs or looks writable.
    let fenced_in_cut_ms = fenced_in_cut.await.unwrap();
    assert!(
        fenced_in_cut_ms.is_some(),
        "db1 stayed writable while cut off\n{}",
        stack.logs()
    );

    // The host comes back: its agent must fence its server at once.
    let heal_ms = unix_ms();
    host.heal().await.unwrap();
    wait_until(Duration::from_secs(20), || async {
        let Ok(Ok(mut c)) = tokio::time::timeout(Duration::from_secs(2), db1.conn()).await else {
            return false;
        };
        global_var(&mut c, "read_only").await.ok().as_deref() == Some("1")
    })
    .await
    .unwrap_or_else(|_| panic!("db1 stayed writable after the heal\n{}", stack.logs()));
    let read_only_ms = unix_ms();
    // Let the direct client try the returned host for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let direct = direct.finish().await;
    let local = local.finish().await.unwrap();
    let log = w.finish().await.unwrap();
    let routes = routes.finish().await;
    // Measured from when the cut took effect: db1 can acknowledge nothing
    // through HAProxy after that.
    let c = check(&stack, &entry, &log, &routes, cut_done_ms).await;
    assert_eq!(entry.from.as_deref(), Some("db1"));
    assert!(
        read_only_ms - heal_ms < 15_000,
        "db1 took {} ms after the heal to become read-only",
        read_only_ms - heal_ms
    );

    // The direct client: everything it was told was committed is on the new
    // source, and nothing it started after the cut was acknowledged.
    let new_source = stack.node(entry.to.as_deref().unwrap());
    assert!(
        direct.acked.iter().any(|d| d.acked_ms < cut_ms),
        "the direct client never wrote before the cut"
    );
    let lost = writer::missing(&new_source.url(), &direct.as_writer_log())
        .await
        .unwrap();
    assert!(
        lost.is_empty(),
        "{} writes acknowledged to the direct client are not on {}: {lost:?}",
        lost.len(),
        new_source.name()
    );
    let after_cut: Vec<_> = direct
        .acked
        .iter()
        .filter(|d| d.started_ms > cut_done_ms)
        .collect();
    assert!(
        after_cut.is_empty(),
        "writes started after the cut were acknowledged to the direct client: {after_cut:?}"
    );
    let lost = writer::missing(&new_source.url(), &local).await.unwrap();
    if !lost.is_empty() {
        let servers: Vec<(&str, String)> = ["db1", "db2", "db3"]
            .iter()
            .map(|n| (*n, stack.node(n).url()))
            .collect();
        panic!(
            "{} writes acknowledged to the application on db1's host are not on {}: {lost:?}\n\
             cut at {cut_ms}..{cut_done_ms} ms, db1 read-only in the cut at {fenced_in_cut_ms:?}\n{}\
             failover: {entry:?}\n{}",
            lost.len(),
            new_source.name(),
            writer::whereabouts(&servers, &local, &lost).await,
            stack.logs()
        );
    }
    // db1 stays out: quarantined and not routed.
    assert!(stack
        .consul
        .kv_get(&format!("mysql/quarantine/{}/db1", stack.cluster))
        .await
        .unwrap()
        .is_some());
    eprintln!(
        "source host cut: cut -> failover done {} ms, cut -> first write on {} after {} ms; \
         cut -> db1 read-only (seen from its host) {} ms; heal -> db1 read-only {} ms; \
         direct client: {} acked before the cut, {} failed attempts; {}",
        done_ms - cut_done_ms,
        entry.to.as_deref().unwrap(),
        c.crash_to_first_write_ms,
        fenced_in_cut_ms.unwrap() - cut_done_ms,
        read_only_ms - heal_ms,
        direct.acked.len(),
        direct.failed,
        phases(&entry, cut_done_ms)
    );
}

/// Rule 6a's other half: Consul unresponsive (its process stopped) under
/// four writers costs nothing. The replicas' ACKs are the source's lease:
/// it stays writable, no write fails, and no failover follows.
#[tokio::test(flavor = "multi_thread")]
async fn a_consul_outage_alone_costs_the_writers_nothing() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let consul = ConsulDev::start().await;
    let stack = Stack::start("c-f-cout", &consul.http_addr()).await;
    let db1 = stack.node("db1");
    let writers = four_writers_on_db1(&stack).await;
    let pid = Pid::from_raw(consul.pid() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let outage = std::time::Instant::now();
    let mut looks = 0;
    while outage.elapsed() < Duration::from_secs(12) {
        let mut c = db1.conn().await.unwrap();
        let ro = global_var(&mut c, "read_only").await.unwrap();
        if ro != "0" {
            kill(pid, Signal::SIGCONT).unwrap();
            panic!(
                "db1 read-only {:?} into a Consul outage\n{}",
                outage.elapsed(),
                stack.logs()
            );
        }
        looks += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    kill(pid, Signal::SIGCONT).unwrap();
    // Writes still land through the proxy after Consul is back.
    for id in 1..=4 {
        writes_land(&stack, "db1", id).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut acked = 0;
    for w in writers {
        let log = w.finish().await.unwrap();
        assert_eq!(log.failed, 0, "a write failed during the Consul outage");
        assert!(writer::missing(&db1.url(), &log).await.unwrap().is_empty());
        acked += log.acked.len();
    }
    let failovers = successover_tests::scenario::failovers(&stack).await;
    assert!(failovers.is_empty(), "{failovers:?}");
    assert!(looks > 20);
    eprintln!("consul stopped 12 s under 4 writers: db1 writable at {looks} looks, {acked} writes acknowledged, none failed");
}

/// #14 item 1: a source that is slow, not dead, is not failed over. db1's
/// mysqld is held at full CPU (more CPU-bound queries than the machine has
/// cores) while four writers commit through HAProxy, for 20 s, with the
/// agents on the shipped defaults. Its answers and its ACKs slow down; the
/// probe's looks still answer within the read timeout and the replicas
/// still receive, so the coordinator must neither fail it over nor move
/// writes anywhere.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_at_full_cpu_under_heavy_load_is_not_failed_over() {
    let mut opts = StackOptions::new("c-f-cpu", &consul_addr().await);
    opts.shipped_timing = true;
    let stack = Stack::start_with(opts).await;
    let db1 = stack.node("db1");
    let writers = four_writers_on_db1(&stack).await;
    let pid = db1.pid().expect("db1 runs");
    let cpu_ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // utime and stime: fields 14 and 15, after the parenthesised name.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    // (busy, total) jiffies of the whole machine, from /proc/stat.
    let machine = || -> (u64, u64) {
        let stat = std::fs::read_to_string("/proc/stat").unwrap();
        let f: Vec<u64> = stat.lines().next().unwrap()["cpu".len()..]
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        let total: u64 = f.iter().sum();
        // idle and iowait
        (total - f[3] - f[4], total)
    };
    let burn = Duration::from_secs(20);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (ticks0, machine0, started) = (cpu_ticks(), machine(), std::time::Instant::now());
    let mut burners = Vec::new();
    for _ in 0..cores * 3 {
        let mut c = db1.conn().await.unwrap();
        burners.push(tokio::spawn(async move {
            let mut calls = 0u32;
            while started.elapsed() < burn {
                // A few seconds of one core per call on this machine.
                c.query_drop("SELECT BENCHMARK(500000, SHA2(RAND(), 256))")
                    .await
                    .unwrap();
                calls += 1;
            }
            calls
        }));
    }
    let mut calls = 0;
    for b in burners {
        calls += b.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Clock ticks are 1/100 s on Linux.
    let used = (cpu_ticks() - ticks0) as f64 / 100.0 / elapsed;
    let machine1 = machine();
    let busy = (machine1.0 - machine0.0) as f64 / (machine1.1 - machine0.1) as f64;
    // Saturated: no CPU left on the machine, and db1 held a large share of
    // it (other tests may run alongside and take the rest).
    assert!(
        busy >= 0.9 && used >= 0.5,
        "the machine was {:.0} % busy and db1's mysqld used {used:.2} cores: the test did not saturate it",
        busy * 100.0
    );
    for id in 1..=4 {
        writes_land(&stack, "db1", id).await;
    }
    let failovers = successover_tests::scenario::failovers(&stack).await;
    assert!(failovers.is_empty(), "{failovers:?}\n{}", stack.logs());
    let mut acked = 0;
    for w in writers {
        let log = w.finish().await.unwrap();
        assert!(writer::missing(&db1.url(), &log).await.unwrap().is_empty());
        acked += log.acked.len();
    }
    let suspected: usize = stack
        .agents
        .iter()
        .map(|a| {
            std::fs::read_to_string(a.log_path())
                .unwrap_or_default()
                .matches("source looks dead")
                .count()
        })
        .sum();
    eprintln!(
        "db1 at {used:.2} cores, the machine {:.0} % busy, for {elapsed:.1} s ({calls} CPU-bound queries): no failover, \
         {acked} writes acknowledged, {suspected} agent log line(s) suspecting the source",
        busy * 100.0
    );
}

/// #13 item 13: after a switch and a failover (every path that sends the
/// replication password: repoints, promotion, the old source's replicas)
/// no agent or renderer log and no KV value holds a MySQL password, in
/// any form a statement or an error could carry it.
#[tokio::test(flavor = "multi_thread")]
async fn no_password_reaches_a_log_or_kv() {
    use successover_tests::mariadb::REPL_PASSWORD;
    let (mut stack, w) = prepared("c-f-secret").await;
    stack
        .consul
        .kv_put(&format!("mysql/switchover/{}", stack.cluster), "db2")
        .await
        .unwrap();
    wait_until(Duration::from_secs(60), || async {
        successover_tests::scenario::history(&stack)
            .await
            .iter()
            .any(|e| e.outcome == Outcome::Done)
    })
    .await
    .unwrap_or_else(|_| panic!("the switch never finished\n{}", stack.logs()));
    writes_land(&stack, "db2", 1).await;
    stack.topo.server_mut(1).kill9().await;
    let entry = finished_failover(&stack, Duration::from_secs(60)).await;
    assert_eq!(entry.outcome, Outcome::Done, "{}", entry.reason);
    writes_land(&stack, entry.to.as_deref().unwrap(), 1).await;
    w.finish().await.unwrap();

    let mut texts = Vec::new();
    for a in &stack.agents {
        texts.push((
            format!("agent {} log", a.opts.node),
            std::fs::read_to_string(a.log_path()).unwrap(),
        ));
    }
    texts.push((
        "renderer log".into(),
        std::fs::read_to_string(stack.render_log_path()).unwrap(),
    ));
    for kv in stack.consul.kv_get_recurse("mysql/").await.unwrap() {
        let value = String::from_utf8_lossy(kv.value.as_deref().unwrap_or_default()).into_owned();
        texts.push((format!("KV {}", kv.key), value));
    }
    assert!(
        texts.iter().any(|(_, t)| t.contains("repoint")),
        "no log line mentions a repoint"
    );
    for secret in [ROOT_PASSWORD, REPL_PASSWORD] {
        // As given, SQL-quoted, and JSON-escaped.
        let forms = [
            secret.to_owned(),
            secret.replace('\'', "''"),
            serde_json::to_string(secret).unwrap(),
        ];
        for (what, text) in &texts {
            for form in &forms {
                assert!(!text.contains(form.as_str()), "{what} holds a password");
            }
        }
    }
}

/// #12 item 6, the whole fault as a user met it: two proxies, the second
/// reaching Consul through a relay that is cut, then the source hung
/// (SIGSTOP), failed over, and woken. Before, a new connection through the
/// second proxy landed on the old source. Now the coordinator opens the
/// new source only once the cut-off proxy's session is gone, and that
/// proxy, checking its source directly, took the unanswering old source
/// out and keeps it out: after the new source is writable no connection
/// through either proxy reaches the old one.
#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_cut_from_consul_during_a_failover_sends_nobody_to_the_old_source() {
    let (mut stack, w) = prepared("c-f-2px").await;
    let consul_sock: std::net::SocketAddr = stack
        .consul_addr
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let relay = successover_tests::Relay::start(consul_sock).await;
    let edge2 = stack
        .start_proxy("edge2", "127.0.0.2", &relay.http_addr())
        .await;
    let through_edge2 = || async {
        let opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.2")
            .tcp_port(edge2.port)
            .user(Some(successover_tests::mariadb::APP_USER))
            .pass(Some(successover_tests::mariadb::APP_PASSWORD))
            .prefer_socket(false);
        let mut c = mysql_async::Conn::new(opts).await.ok()?;
        c.query_first::<u32, _>("SELECT @@server_id").await.ok()?
    };
    wait_until(Duration::from_secs(30), || async {
        through_edge2().await == Some(1)
    })
    .await
    .unwrap_or_else(|_| panic!("edge2 never routed to db1\n{}", edge2.renderer.log_tail(30)));
    let routes1 = RouteMonitor::start(&stack);
    let routes2 = RouteMonitor::start_at(&edge2.bind, edge2.port);

    relay.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let crash_ms = unix_ms();
    stack.topo.server_mut(0).sigstop().unwrap();
    let entry = finished_failover(&stack, Duration::from_secs(60)).await;
    assert_eq!(entry.outcome, Outcome::Done, "{}", entry.reason);
    let to = entry.to.clone().unwrap();
    let writable = entry
        .steps
        .iter()
        .find(|s| s.name == "writable" && s.ok)
        .map(|s| s.started_ms + s.duration_ms)
        .expect("a writable step");
    writes_land(&stack, &to, 1).await;
    stack.topo.server_mut(0).sigcont().unwrap();
    let woken_ms = unix_ms();
    // The woken old source and both proxies, for a while.
    tokio::time::sleep(Duration::from_secs(5)).await;
    relay.resume();
    let new_id = stack.node(&to).server_id();
    wait_until(Duration::from_secs(30), || async {
        through_edge2().await == Some(new_id)
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "edge2 never followed the failover\n{}",
            edge2.renderer.log_tail(30)
        )
    });
    let log = w.finish().await.unwrap();
    let (routes1, routes2) = (routes1.finish().await, routes2.finish().await);
    let c = check(&stack, &entry, &log, &routes1, crash_ms).await;
    for (proxy, routes) in [("edge1", &routes1), ("edge2", &routes2)] {
        let stray: Vec<_> = routes
            .iter()
            .filter(|(at, id)| *at > writable && *id == 1)
            .collect();
        assert!(
            stray.is_empty(),
            "{proxy} sent {} connection(s) to the old source after {to} was writable, first at +{} ms\n{}",
            stray.len(),
            stray[0].0 - writable,
            edge2.renderer.log_tail(30)
        );
    }
    assert!(
        routes2.iter().any(|(at, _)| *at > woken_ms),
        "nothing went through edge2 after the old source woke"
    );
    eprintln!(
        "edge2 cut from Consul, db1 hung: crash -> first write on {to} after {} ms; proxies waited {} ms; {}",
        c.crash_to_first_write_ms,
        entry
            .evidence
            .get("proxies_acknowledged_ms")
            .map_or("-".to_owned(), |v| v.to_string()),
        phases(&entry, crash_ms)
    );
}

/// The node whose agent holds the coordinator lock (a session on it).
async fn lock_holder(stack: &Stack) -> Option<String> {
    let lock = stack
        .consul
        .kv_get(&format!("mysql/lock/{}", stack.cluster))
        .await
        .ok()??;
    lock.session.as_ref()?;
    lock.value_str()?.rsplit('/').next().map(str::to_owned)
}

/// #12 item 7: a coordinator paused mid-failover (SIGSTOP: a stalled VM)
/// past its lease. The replicas' appliers are held (a table lock), so the
/// failover waits in its relay-log step; the coordinator is paused there,
/// another agent takes the lock and finishes the failover, and the paused
/// one, resumed, makes no MySQL change: its log shows no step and no
/// action after it wakes (its local lease, measured from when its last
/// liveness pass was sent, ran out before Consul could hand the lock on).
#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_paused_mid_failover_touches_nothing_when_it_wakes() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let (mut stack, w) = prepared("c-f-pause").await;
    writes_land(&stack, "db1", 1).await;
    let mut holds = Vec::new();
    for name in ["db2", "db3"] {
        let mut c = stack.node(name).conn().await.unwrap();
        c.query_drop("LOCK TABLES successover_check.writes READ")
            .await
            .unwrap();
        holds.push(c);
    }
    // Something for the held appliers to wait on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let crash_ms = unix_ms();
    stack.topo.server_mut(0).kill9().await;
    // The coordinator is in the failover once its replicas are stopped.
    let coordinator = wait_for(Duration::from_secs(30), || async {
        let h = successover_tests::scenario::history(&stack).await;
        let e = h.iter().rev().find(|e| e.outcome == Outcome::Running)?;
        e.has_step("stop_io_threads").then_some(())?;
        lock_holder(&stack).await
    })
    .await
    .unwrap_or_else(|_| panic!("the failover never reached its replicas\n{}", stack.logs()));
    let idx: usize = coordinator
        .trim_start_matches("db")
        .parse::<usize>()
        .unwrap()
        - 1;
    let pid = Pid::from_raw(stack.agents[idx].pid() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let paused_at = std::time::Instant::now();
    // Another agent takes over; then the appliers may go on.
    let successor = wait_for(Duration::from_secs(60), || async {
        lock_holder(&stack).await.filter(|h| *h != coordinator)
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "nobody took the lock from the paused {coordinator}\n{}",
            stack.logs()
        )
    });
    let took_over = paused_at.elapsed();
    for mut c in holds {
        c.query_drop("UNLOCK TABLES").await.unwrap();
    }
    let entry = finished_failover(&stack, Duration::from_secs(90)).await;
    assert_eq!(entry.outcome, Outcome::Done, "{}", entry.reason);
    writes_land(&stack, entry.to.as_deref().unwrap(), 1).await;
    let log_path = stack.agents[idx].log_path().to_path_buf();
    let before = std::fs::read_to_string(&log_path).unwrap().len();
    kill(pid, Signal::SIGCONT).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = std::fs::read_to_string(&log_path).unwrap();
    let woke = &after[before..];
    let acted: Vec<&str> = woke
        .lines()
        .filter(|l| l.contains(" step=") || l.contains("executed") || l.contains("self-fenced"))
        .collect();
    assert!(
        acted.is_empty(),
        "{coordinator} acted after waking from its pause:\n{}",
        acted.join("\n")
    );
    assert!(
        woke.contains("lock lost") || woke.contains("local lease ran out"),
        "{coordinator} did not notice it had lost the lock:\n{woke}"
    );
    let log = w.finish().await.unwrap();
    let c = check(&stack, &entry, &log, &[], crash_ms).await;
    eprintln!(
        "coordinator {coordinator} paused in the failover's relay-log step; {successor} took the lock after {took_over:?} and finished: crash -> first write on {} after {} ms; the woken {coordinator} touched nothing",
        entry.to.as_deref().unwrap(),
        c.crash_to_first_write_ms,
    );
}

/// #12 item 1, as a new user met it: the semi-sync replica drops out of the
/// coordinator's sight (it is advertised through a relay, and the relay
/// stops) while it goes on replicating from the source and ACKing. Before,
/// the flag moved to db3 within seconds: the source had two semi-sync
/// clients, two servers whose ACK released a commit, one of them out of
/// the coordinator's sight. Now no flag moves while the source counts a
/// client nobody sees. The source killed under four writers, the failover
/// is refused while the hidden replica cannot be read (it may hold
/// acknowledged commits db3 lacks), and that replica holds every
/// acknowledged write.
/// db2, the semi-sync replica, is advertised through a TCP relay, and the
/// coordinator is db3's agent: stopping the relay takes db2 out of the
/// coordinator's sight while it goes on replicating and ACKing.
async fn acker_behind_a_relay(cluster: &str) -> Stack {
    let mut opts = StackOptions::new(cluster, &consul_addr().await);
    opts.nodes[1].relayed = true;
    let mut stack = Stack::start_with(opts).await;
    wait_until(Duration::from_secs(30), || async {
        semi_flag(&stack, "db2").await.as_deref() == Some("1")
    })
    .await
    .unwrap_or_else(|_| panic!("db2 never got the semi-sync flag\n{}", stack.logs()));
    // The coordinator observes its own server directly: it must be
    // another agent for db2 to leave its sight, and not db1's, which hands
    // the lock on (possibly to db2) because it runs on the source.
    let settle = std::time::Instant::now();
    loop {
        match lock_holder(&stack).await.as_deref() {
            Some("db3") => break,
            Some("db2") => {
                let opts = stack.agents[1].opts.clone();
                stack.agents[1].stop().await;
                wait_until(Duration::from_secs(30), || async {
                    lock_holder(&stack).await.is_some_and(|h| h != "db2")
                })
                .await
                .expect("another agent takes the lock");
                stack.agents[1] = AgentProc::start(opts, stack.topo.server(1)).await;
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
        assert!(
            settle.elapsed() < Duration::from_secs(90),
            "db3 never held the lock\n{}",
            stack.logs()
        );
    }
    stack
}

async fn semi_flag(stack: &Stack, node: &str) -> Option<String> {
    let mut c = stack.node(node).conn().await.ok()?;
    global_var(&mut c, "rpl_semi_sync_slave_enabled").await.ok()
}

/// The coordinator's own words in its report (`successover status` shows
/// them as "it says"), once they contain `needle`.
async fn coordinator_says(stack: &Stack, needle: &str, limit: Duration) -> Option<String> {
    wait_for(limit, || async {
        let holder = lock_holder(stack).await?;
        let kv = stack
            .consul
            .kv_get(&format!("mysql/agent/{}/{holder}", stack.cluster))
            .await
            .ok()??;
        let report =
            successover_common::contract::HealthReport::parse(kv.value.as_deref()?).ok()?;
        report.coordinating.filter(|s| s.contains(needle))
    })
    .await
    .ok()
}

/// The last failover that is no longer running.
async fn failover_decided(stack: &Stack, limit: Duration) -> Option<HistoryEntry> {
    wait_for(limit, || async {
        successover_tests::scenario::failovers(stack)
            .await
            .into_iter()
            .rev()
            .find(|e| e.outcome != Outcome::Running)
    })
    .await
    .ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_semi_sync_replica_out_of_the_coordinators_sight_stays_the_only_acker() {
    let mut stack = acker_behind_a_relay("c-f-sight").await;
    let flag = semi_flag;
    let db1 = stack.node("db1");
    let writers = four_writers_on_db1(&stack).await;

    stack.relays["db2"].stop();
    let hidden = std::time::Instant::now();
    let mut looks = 0;
    while hidden.elapsed() < Duration::from_secs(20) {
        let mut c = db1.conn().await.unwrap();
        let clients: u32 =
            successover_tests::mariadb::status_var(&mut c, "Rpl_semi_sync_master_clients")
                .await
                .unwrap()
                .parse()
                .unwrap();
        assert!(
            clients <= 1,
            "db1 has {clients} semi-sync clients for 1 slot {:?} after db2 left the coordinator's sight; db3's flag: {:?}\n{}",
            hidden.elapsed(),
            flag(&stack, "db3").await,
            stack.logs()
        );
        looks += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(flag(&stack, "db3").await.as_deref(), Some("0"));
    assert_eq!(flag(&stack, "db2").await.as_deref(), Some("1"));
    // The coordinator says why in its report (`successover status` shows
    // it as "it says").
    let says = coordinator_says(
        &stack,
        "semi-sync client(s) the coordinator cannot see",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        says.is_some(),
        "the coordinator's report never said why\n{}",
        stack.logs()
    );
    // Writes went on: db2 still ACKs.
    for id in 1..=4 {
        writes_land(&stack, "db1", id).await;
    }

    stack.topo.server_mut(0).kill9().await;
    // db2 may hold acknowledged commits db3 lacks: while it cannot be read
    // nothing is promoted; the failover is refused, naming it.
    let Some(refused) = failover_decided(&stack, Duration::from_secs(30)).await else {
        panic!("no failover decision after the kill\n{}", stack.logs())
    };
    assert_eq!(
        refused.outcome,
        Outcome::Refused,
        "{refused:?}\n{}",
        stack.logs()
    );
    assert!(
        refused.reason.contains("possible ACKer db2"),
        "{}",
        refused.reason
    );
    assert_eq!(stack.published_node().await.as_deref(), Some("db1"));
    let waits = coordinator_says(
        &stack,
        "possible ACKer db2 to answer",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        waits.is_some(),
        "the coordinator never said what the refused failover waits for\n{}",
        stack.logs()
    );
    let mut logs = Vec::new();
    for w in writers {
        logs.push(w.finish().await.unwrap());
    }
    let (mut acked, mut only_db2) = (0, 0);
    for log in &logs {
        acked += log.acked.len();
        only_db2 += writer::missing(&stack.node("db3").url(), log)
            .await
            .unwrap()
            .len();
    }
    // db2 answers again, as it ran when it was last seen ACKing: what it
    // reports received covers what it acknowledged, the refused failover is
    // taken up and promotes it.
    stack.relays["db2"].resume();
    let done = wait_for(Duration::from_secs(60), || async {
        successover_tests::scenario::failovers(&stack)
            .await
            .into_iter()
            .find(|e| e.id == refused.id && e.outcome == Outcome::Done)
    })
    .await;
    let Ok(done) = done else {
        panic!(
            "the refused failover was not taken up when db2 returned\n{}",
            stack.logs()
        )
    };
    // The ACKer, or db3 when it received a commit more than db2 at the
    // crash (sent to both, never acknowledged): the candidate must hold
    // everything any replica received.
    let to = done
        .to
        .clone()
        .expect("a failover that is done names its target");
    assert!(
        to == "db2" || (to == "db3" && done.reason.contains("possible ACKers (db2)")),
        "{done:?}"
    );
    assert_eq!(stack.published_node().await.as_deref(), Some(to.as_str()));
    let new_source = stack.node(&to).url();
    let mut lost = 0;
    for log in &logs {
        lost += writer::missing(&new_source, log).await.unwrap().len();
    }
    assert_eq!(
        lost,
        0,
        "acknowledged writes not on the new source {to}\n{}",
        stack.logs()
    );
    let mut c = stack.node(&to).conn().await.unwrap();
    assert_eq!(global_var(&mut c, "read_only").await.unwrap(), "0");
    eprintln!(
        "db2 out of the coordinator's sight 20 s under 4 writers: db1 never had more than 1 semi-sync client ({looks} looks), db3 never got the flag; db1 killed: failover refused ({}); db2 back: failover taken up and done to {to} ({}); {acked} acknowledged writes, 0 lost, {only_db2} of them were on db2 only",
        refused.reason, done.reason
    );
}

/// The same refusal, but the ACKer's server restarts before it answers
/// again: a restarted GTID replica's relay log is purged, so what it
/// reports received may be less than what it acknowledged. The failover
/// stays refused and the coordinator says why; the old source's return
/// ends it (nothing was promoted) with every acknowledged write.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_failover_stays_refused_when_its_acker_restarted() {
    let mut stack = acker_behind_a_relay("c-f-restarted").await;
    let writers = four_writers_on_db1(&stack).await;
    stack.relays["db2"].stop();
    let says = coordinator_says(
        &stack,
        "semi-sync client(s) the coordinator cannot see",
        Duration::from_secs(20),
    )
    .await;
    assert!(
        says.is_some(),
        "db2 never left the coordinator's sight\n{}",
        stack.logs()
    );
    stack.topo.server_mut(0).kill9().await;
    let Some(refused) = failover_decided(&stack, Duration::from_secs(30)).await else {
        panic!("no failover decision after the kill\n{}", stack.logs())
    };
    assert_eq!(
        refused.outcome,
        Outcome::Refused,
        "{refused:?}\n{}",
        stack.logs()
    );
    let mut logs = Vec::new();
    for w in writers {
        logs.push(w.finish().await.unwrap());
    }
    stack.topo.server_mut(1).restart().await;
    stack.relays["db2"].resume();
    let why = coordinator_says(
        &stack,
        "possible ACKer db2 restarted",
        Duration::from_secs(30),
    )
    .await;
    assert!(
        why.is_some(),
        "the coordinator never said the ACKer restarted\n{}",
        stack.logs()
    );
    // Still refused, nothing promoted, a few cycles later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = successover_tests::scenario::failovers(&stack)
        .await
        .into_iter()
        .find(|e| e.id == refused.id)
        .expect("the refused failover's entry");
    assert_eq!(
        still.outcome,
        Outcome::Refused,
        "{still:?}\n{}",
        stack.logs()
    );
    assert_eq!(stack.published_node().await.as_deref(), Some("db1"));
    // The old source back: the failover aborts, db1 serves again with
    // every acknowledged write.
    stack.topo.server_mut(0).start_again().await;
    let aborted = wait_for(Duration::from_secs(60), || async {
        successover_tests::scenario::failovers(&stack)
            .await
            .into_iter()
            .find(|e| e.id == refused.id && e.outcome == Outcome::Aborted)
    })
    .await;
    assert!(
        aborted.is_ok(),
        "db1's return did not end the refusal\n{}",
        stack.logs()
    );
    let after = WriterProc::start(stack.proxy_port.port(), 5).await;
    writes_land(&stack, "db1", 5).await;
    after.finish().await.unwrap();
    let db1 = stack.node("db1").url();
    let mut lost = 0;
    for log in &logs {
        lost += writer::missing(&db1, log).await.unwrap().len();
    }
    assert_eq!(lost, 0, "{}", stack.logs());
}

/// A coordinator that stopped hearing its source sees it again once it
/// answers: while it suspects the source it still probes it, and a probe
/// that answers ends the suspicion. With automatic failover off, a source
/// hung for a few seconds and woken is found healthy again (it was not:
/// once two probes had failed the source was no longer looked at, and the
/// probe did not run while the coordinator suspected it).
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_source_that_wakes_is_seen_again() {
    let opts = StackOptions::new("c-f-wakes", &consul_addr().await).setting("auto_failover", false);
    let mut stack = Stack::start_with(opts).await;
    assert!(
        coordinator_says(&stack, "healthy: db1", Duration::from_secs(60))
            .await
            .is_some(),
        "never healthy\n{}",
        stack.logs()
    );
    stack.topo.server_mut(0).sigstop().unwrap();
    let suspected = coordinator_says(&stack, "db1 does not answer", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack.topo.server_mut(0).sigcont().unwrap();
    assert!(
        suspected.is_some(),
        "the coordinator never found db1 unreachable\n{}",
        stack.logs()
    );
    assert!(
        coordinator_says(&stack, "healthy: db1", Duration::from_secs(20))
            .await
            .is_some(),
        "db1 answers again but the coordinator does not see it\n{}",
        stack.logs()
    );
}

/// Observe mode (`auto_failover` off, `observe_failover` on): a dead source
/// is recorded once as a simulated failover naming the node a failover
/// would have promoted, and nothing is touched: no fence, the `master` key
/// unchanged, every replica still read-only and a replica of the dead
/// source.
#[tokio::test(flavor = "multi_thread")]
async fn observe_mode_records_a_simulated_failover_and_changes_nothing() {
    let opts = StackOptions::new("c-f-observe", &consul_addr().await)
        .setting("auto_failover", false)
        .setting("observe_failover", true);
    let mut stack = Stack::start_with(opts).await;
    stack
        .topo
        .wait_replicated(Duration::from_secs(20))
        .await
        .unwrap();
    stack.topo.server_mut(0).kill9().await;
    let Ok(entry) = wait_for(Duration::from_secs(60), || async {
        failovers(&stack)
            .await
            .into_iter()
            .find(|e| e.outcome != Outcome::Running)
    })
    .await
    else {
        panic!("no simulated failover recorded\n{}", stack.logs());
    };
    assert_eq!(entry.outcome, Outcome::Simulated, "{}", entry.reason);
    let to = entry
        .to
        .clone()
        .expect("the simulated failover names a node");
    assert!(["db2", "db3"].contains(&to.as_str()), "{to}");
    assert!(
        entry.reason.contains("would have promoted"),
        "{}",
        entry.reason
    );
    // A few more cycles: still one entry, and nothing touched.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        failovers(&stack).await.len(),
        1,
        "recorded once per incident"
    );
    assert_eq!(stack.published_node().await.as_deref(), Some("db1"));
    assert!(
        stack
            .consul
            .kv_get(&format!("mysql/master/{}/failed", stack.cluster))
            .await
            .unwrap()
            .is_none(),
        "observe mode fenced the cluster"
    );
    let db1_port = stack.topo.server(0).port().to_string();
    for i in [1, 2] {
        let mut c = stack.topo.server(i).conn().await.unwrap();
        assert_eq!(global_var(&mut c, "read_only").await.unwrap(), "1");
        let status = successover_tests::mariadb::replica_status(&mut c)
            .await
            .unwrap()
            .expect("still a replica");
        let port = status
            .get("Master_Port")
            .or_else(|| status.get("Source_Port"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(port, db1_port, "db{} was repointed", i + 1);
    }
}
