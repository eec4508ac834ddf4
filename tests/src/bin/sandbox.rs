//! The local sandbox and demo: Consul, three MariaDB servers (source + two
//! replicas, GTID, lossless semi-sync), HAProxy driven by
//! successover-render, a successover-agent per database, and a writer going
//! through HAProxy in its own process. It performs a planned successover
//! and an automatic failover (kill -9 of the source) and prints each
//! write-unavailability window and the count of lost acknowledged writes.
//!
//! `--hold` keeps everything running afterwards until Ctrl-C.

use std::time::Duration;

use successover_common::procedure::{HistoryEntry, Outcome, ProcedureKind};
use successover_tests::consul::ConsulDev;
use successover_tests::mariadb::{ROOT_PASSWORD, ROOT_USER};
use successover_tests::scenario::history_of;
use successover_tests::stack::{Stack, StackOptions};
use successover_tests::writer::{self, unix_ms, WriterProc};
use successover_tests::{wait_for, wait_until};

const CLUSTER: &str = "demo";

async fn wait_entry(
    stack: &Stack,
    kind: ProcedureKind,
    after: usize,
) -> anyhow::Result<HistoryEntry> {
    wait_for(Duration::from_secs(90), || async {
        history_of(stack, kind)
            .await
            .into_iter()
            .nth(after)
            .filter(|e| e.outcome != Outcome::Running)
    })
    .await
    .map_err(|_| anyhow::anyhow!("no {kind:?} finished\n{}", stack.logs()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let hold = std::env::args().any(|a| a == "--hold");

    println!("== starting Consul, 3 MariaDB (db1 source, db2 semi-sync replica, db3 replica), HAProxy + successover-render, 3 successover-agents (release build, shipped defaults)");
    let consul = ConsulDev::start().await;
    // The daemons' shipped defaults (tick 1 s, probe 250 ms, session TTL
    // 10 s), as the Ansible role installs them: the figures it prints are
    // what a user gets.
    let mut opts = StackOptions::new(CLUSTER, &consul.http_addr());
    opts.shipped_timing = true;
    let mut stack = Stack::start_with(opts).await;
    println!(
        "   cluster {CLUSTER}: source {} published, routed by HAProxy on 127.0.0.1:{}",
        stack.published_node().await.unwrap_or_default(),
        stack.proxy_port.port()
    );
    writer::prepare(&stack.node("db1").url()).await?;
    stack.topo.wait_replicated(Duration::from_secs(30)).await?;

    println!("== writer: inserting through HAProxy as an application would (its own process)");
    let w = WriterProc::start(stack.proxy_port.port(), 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    println!("== planned successover: consul kv put mysql/switchover/{CLUSTER} db2");
    let switch_at = unix_ms();
    stack
        .consul
        .kv_put(&format!("mysql/switchover/{CLUSTER}"), "db2")
        .await?;
    let sw = wait_entry(&stack, ProcedureKind::Switchover, 0).await?;
    println!("   {:?}: {}", sw.outcome, sw.reason);
    for s in &sw.steps {
        println!("     {:>5} ms  {}", s.duration_ms, s.name);
    }
    wait_until(Duration::from_secs(30), || async {
        stack.semi_sync_healthy().await
    })
    .await
    .map_err(|_| anyhow::anyhow!("semi-sync did not settle\n{}", stack.logs()))?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let source = stack.published_node().await.unwrap_or_default();
    let idx: usize = source.trim_start_matches("db").parse::<usize>()? - 1;
    println!("== failover: kill -9 of {source}'s mysqld");
    let crash_at = unix_ms();
    stack.topo.server_mut(idx).kill9().await;
    let fo = wait_entry(&stack, ProcedureKind::Failover, 0).await?;
    println!("   {:?}: {}", fo.outcome, fo.reason);
    println!(
        "     {:>5} ms  detect",
        fo.started_ms.saturating_sub(crash_at)
    );
    for s in &fo.steps {
        println!("     {:>5} ms  {}", s.duration_ms, s.name);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = w.finish().await?;

    let new_source = stack.published_node().await.unwrap_or_default();
    let lost = writer::missing(&stack.node(&new_source).url(), &log).await?;
    // The longest stretch without an acknowledged write that overlaps
    // [from, to]: the unavailability window of the event in between.
    let window = |from_ms: u64, to_ms: u64| -> Option<u64> {
        let lo = from_ms.saturating_sub(log.start_unix_ms);
        let hi = to_ms.saturating_sub(log.start_unix_ms);
        log.acked
            .windows(2)
            .map(|w| (w[0].1.as_millis() as u64, w[1].1.as_millis() as u64))
            .filter(|(a, b)| *b >= lo && *a <= hi)
            .map(|(a, b)| b - a)
            .max()
    };
    println!("\n== what happened");
    println!(
        "   writes acknowledged: {} ({} failed attempts, retried)",
        log.acked.len(),
        log.failed
    );
    println!(
        "   successover db1 -> db2: write unavailability {} ms (coordinator: old source read-only -> new writable {} ms)",
        window(switch_at, crash_at - 1000).map(|v| v.to_string()).unwrap_or("?".into()),
        sw.write_unavailable_ms.unwrap_or(0)
    );
    // The first write sent after the crash: one in flight at the kill is
    // acknowledged after it but says nothing about the failover.
    let first_after_crash = log
        .acked
        .iter()
        .zip(&log.sent)
        .find(|(_, sent)| log.start_unix_ms + sent.as_millis() as u64 > crash_at)
        .map(|((_, at), _)| log.start_unix_ms + at.as_millis() as u64);
    println!(
        "   failover {source} -> {new_source}: crash -> first acknowledged write {} ms; write unavailability {} ms",
        first_after_crash.map(|t| (t - crash_at).to_string()).unwrap_or("?".into()),
        window(crash_at, unix_ms()).map(|v| v.to_string()).unwrap_or("?".into()),
    );
    println!("   acknowledged writes lost: {}", lost.len());

    if hold {
        println!("\n== sandbox is up (Ctrl-C to stop and clean up)");
        println!(
            "   Consul HTTP    {}   (consul kv get -recurse mysql/ with CONSUL_HTTP_ADDR set)",
            consul.http_addr()
        );
        for (i, db) in stack.topo.servers().iter().enumerate() {
            if db.is_running() {
                println!(
                    "   db{}           mysql -h127.0.0.1 -P{} -u{ROOT_USER} -p{ROOT_PASSWORD}",
                    i + 1,
                    db.port()
                );
            }
        }
        println!(
            "   HAProxy {CLUSTER}    mysql -h127.0.0.1 -P{} -uapp -papp",
            stack.proxy_port.port()
        );
        println!(
            "   CLI            successover --consul-addr {} status",
            consul.http_addr()
        );
        tokio::signal::ctrl_c().await?;
    }
    anyhow::ensure!(lost.is_empty(), "{} acknowledged writes lost", lost.len());
    anyhow::ensure!(
        sw.outcome == Outcome::Done && fo.outcome == Outcome::Done,
        "a procedure did not complete"
    );
    Ok(())
}
