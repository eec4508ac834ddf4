//! Automatic lossless failover against the whole system, with a writer
//! going through HAProxy that records every acknowledged write. Each
//! scenario checks: every acknowledged write is on the new source, the old
//! source gets no routed traffic after the fence, and there are never two
//! writable published sources.

use std::time::Duration;

use successover_common::procedure::{HistoryEntry, Outcome, ProcedureKind};
use successover_tests::consul::ConsulDev;
use successover_tests::mariadb::global_var;
use successover_tests::stack::Stack;
use successover_tests::writer::{self, unix_ms, WriterLog, WriterProc};
use successover_tests::{wait_for, wait_until};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

static CONSUL: OnceCell<ConsulDev> = OnceCell::const_new();

async fn consul_addr() -> String {
    CONSUL
        .get_or_init(|| async { ConsulDev::start().await })
        .await
        .http_addr()
}

async fn failovers(stack: &Stack) -> Vec<HistoryEntry> {
    let prefix = format!("mysql/history/{}/", stack.cluster);
    let mut out: Vec<HistoryEntry> = stack
        .consul
        .kv_get_recurse(&prefix)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|kv| serde_json::from_slice::<HistoryEntry>(kv.value.as_deref()?).ok())
        .filter(|e| e.kind == ProcedureKind::Failover)
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

async fn finished_failover(stack: &Stack, limit: Duration) -> HistoryEntry {
    wait_for(limit, || async {
        failovers(stack)
            .await
            .pop()
            .filter(|e| e.outcome != Outcome::Running)
    })
    .await
    .unwrap_or_else(|_| panic!("no finished failover\n{}", stack.logs()))
}

/// Polls through HAProxy and records (wall ms, server id) of every
/// connection that got an answer.
struct RouteMonitor {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<(u64, u32)>>,
}

impl RouteMonitor {
    fn start(stack: &Stack) -> RouteMonitor {
        let port = stack.proxy_port.port();
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            use mysql_async::prelude::*;
            let mut seen = Vec::new();
            while !s.is_cancelled() {
                let opts = mysql_async::OptsBuilder::default()
                    .ip_or_hostname("127.0.0.1")
                    .tcp_port(port)
                    .user(Some("app"))
                    .pass(Some("app"))
                    .prefer_socket(false);
                let probe = async {
                    let mut c = mysql_async::Conn::new(opts).await.ok()?;
                    let id: Option<u32> = c.query_first("SELECT @@server_id").await.ok()?;
                    let _ = c.disconnect().await;
                    id
                };
                if let Ok(Some(id)) = tokio::time::timeout(Duration::from_millis(500), probe).await
                {
                    seen.push((unix_ms(), id));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        });
        RouteMonitor { stop, task }
    }

    async fn finish(self) -> Vec<(u64, u32)> {
        self.stop.cancel();
        self.task.await.unwrap()
    }
}

struct Checked {
    crash_to_first_write_ms: u64,
}

/// The invariants every scenario must keep.
async fn check(
    stack: &Stack,
    entry: &HistoryEntry,
    log: &WriterLog,
    routes: &[(u64, u32)],
    crash_ms: u64,
) -> Checked {
    assert_eq!(
        entry.outcome,
        Outcome::Done,
        "{}\n{}",
        entry.reason,
        stack.logs()
    );
    let new_source = entry.to.clone().unwrap();
    assert_eq!(
        stack.published_node().await.as_deref(),
        Some(new_source.as_str())
    );
    let new_db = stack.node(&new_source);
    let lost = writer::missing(&new_db.url(), log).await.unwrap();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    // Writes acknowledged after the crash landed on the new source.
    let after: Vec<_> = log
        .acked
        .iter()
        .filter(|(_, at)| log.start_unix_ms + at.as_millis() as u64 > crash_ms)
        .collect();
    assert!(
        !after.is_empty(),
        "no write acknowledged after the crash\n{}",
        stack.logs()
    );
    // No routed traffic to the old source after the fence was applied
    // (the fence key is written at the first step; allow the renderer a
    // second to apply it).
    let fence_ms = entry
        .steps
        .first()
        .map(|s| s.started_ms)
        .unwrap_or(entry.started_ms);
    let old_id: u32 = entry
        .from
        .as_ref()
        .unwrap()
        .trim_start_matches("db")
        .parse()
        .unwrap();
    let stray: Vec<_> = routes
        .iter()
        .filter(|(at, id)| *at > fence_ms + 1000 && *id == old_id)
        .collect();
    assert!(
        stray.is_empty(),
        "routed to the old source after the fence: {stray:?}"
    );
    // Exactly one writable server among those running, the published one.
    for (i, db) in stack.topo.servers().iter().enumerate() {
        let name = format!("db{}", i + 1);
        if !db.is_running() {
            continue;
        }
        let Ok(mut c) = tokio::time::timeout(Duration::from_secs(3), db.conn())
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timeout")))
        else {
            continue;
        };
        let ro = global_var(&mut c, "read_only").await.unwrap();
        assert_eq!(ro == "0", name == new_source, "{name} read_only={ro}");
    }
    let first_after = after[0].1.as_millis() as u64 + log.start_unix_ms;
    Checked {
        crash_to_first_write_ms: first_after.saturating_sub(crash_ms),
    }
}

fn phases(entry: &HistoryEntry, crash_ms: u64) -> String {
    let mut out = vec![format!(
        "detect {} ms",
        entry.started_ms.saturating_sub(crash_ms)
    )];
    for s in &entry.steps {
        out.push(format!("{} {} ms", s.name, s.duration_ms));
    }
    out.join(", ")
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
    tokio::time::sleep(Duration::from_millis(800)).await;
    (stack, w)
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_the_source_fails_over_without_losing_a_write() {
    let (mut stack, w) = prepared("c-f-kill").await;
    let routes = RouteMonitor::start(&stack);
    let crash_ms = unix_ms();
    stack.topo.server_mut(0).kill9().await;
    let entry = finished_failover(&stack, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
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
    eprintln!(
        "kill -9: crash -> first acknowledged write on {} after {} ms; {}",
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

#[tokio::test(flavor = "multi_thread")]
async fn no_safe_candidate_is_a_written_refusal_and_nothing_is_promoted() {
    let (mut stack, w) = prepared("c-f-none").await;
    // The semi-sync replica dies first; before its flag can move, the
    // source dies too. Stop the coordinator from moving the flag by
    // killing both at once.
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
    // The other replica falls behind: its SQL thread and IO thread stop.
    stack.topo.server(other).exec("STOP SLAVE").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.topo.server_mut(semi).kill9().await;
    stack.topo.server_mut(0).kill9().await;
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
    tokio::time::sleep(Duration::from_secs(1)).await;
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
