//! `successover-bench-failover [--failovers N] [--fault kill9|sigstop|cut] [--writers W --load-secs S]`:
//! time from `kill -9` (or SIGSTOP: a hung host; or `cut`: the source's
//! host cut off the network, its link down so that packets are dropped and
//! connections hang) of the source's mysqld to the first write
//! acknowledged through HAProxy by the
//! new source, over N automatic failovers (default 10), with where the time
//! went: detection (crash → failover started, from the history entry), each
//! recorded step, and the proxy (end of the `publish` step → first
//! acknowledged write; it overlaps the `writable` step). A writer in its
//! own process goes through HAProxy during each failover; every write it
//! was told was committed must be on the new source (asserted).
//!
//! With `--fault sigstop` the hung source is woken (SIGCONT) once the
//! failover is done, and the time until it reads back `read_only=1` is
//! measured too: a woken old source has commits waiting for an ACK that
//! will never come, and `read_only=1` waits behind them unless its clients
//! are killed first. With `--fault cut` every database host (server and
//! agent) lives in a network namespace of its own; the cut host's link
//! comes back once the failover is done, and the time until its server
//! reads back `read_only=1` is measured the same way (its agent, cut from
//! Consul, fences it on its own side of the cut).
//!
//! With `--writers W` (default 0), W more writers, each in its own process,
//! write through HAProxy as fast as they go for `--load-secs` (default 1)
//! before the fault and on through the failover: the replicas fall behind,
//! and the failover has their backlog to apply first. Their writes are
//! checked for losses like the measuring writer's.
//!
//! Between failovers the cluster is made whole again the way an operator
//! would: the dead server is rebuilt from an empty datadir and replicates
//! the new source from the beginning, its quarantine key and the anti-flap
//! marker are deleted, and the next crash waits until the rebuilt replica
//! caught up, its agent reports it and semi-sync is healthy.

use std::time::Duration;

use successover_common::procedure::Outcome;
use successover_tests::cli::arg;
use successover_tests::consul::{ConsulDev, ConsulDevOptions};
use successover_tests::mariadb::{global_var, replica_status, wait_for_gtids};
use successover_tests::netns::NetHost;
use successover_tests::scenario::{
    failovers, finished_failover_after, phase_split, wait_routed_to,
};
use successover_tests::stack::{NodeOptions, Stack, StackOptions};
use successover_tests::writer::{self, unix_ms, WriterLog, WriterProc};
use successover_tests::{wait_for, wait_until};

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn row(name: &str, mut v: Vec<u64>) {
    if v.is_empty() {
        return;
    }
    v.sort_unstable();
    println!(
        "| {name:<44} | {:>6} | {:>6} | {:>6} | {:>6} |",
        v[0],
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        v[v.len() - 1]
    );
}

const PHASES: &[&str] = &[
    "detect",
    "fence",
    "stop_io_threads",
    "choose_candidate",
    "apply_relay_log",
    "promote",
    "repoint",
    "publish",
    "writable",
    "proxy",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill9,
    Sigstop,
    Cut,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = arg(&args, "--failovers", 10)?;
    anyhow::ensure!(rounds > 0, "--failovers must be at least 1");
    let fault = match arg(&args, "--fault", "kill9".to_owned())?.as_str() {
        "kill9" => Fault::Kill9,
        "sigstop" => Fault::Sigstop,
        "cut" => Fault::Cut,
        other => anyhow::bail!("--fault {other:?}: kill9, sigstop or cut"),
    };
    let load_writers: u64 = arg(&args, "--writers", 0)?;
    let load_secs: u64 = arg(&args, "--load-secs", 1)?;
    let hang = fault != Fault::Kill9;
    let mut woken_read_only: Vec<u64> = Vec::new();
    let mut hosts = Vec::new();
    if fault == Fault::Cut {
        for i in 1..=3 {
            hosts.push(NetHost::create(&format!("db{i}")).await);
        }
    }
    let consul = ConsulDev::start_with(ConsulDevOptions {
        extra_client_addrs: hosts.iter().map(|h| h.host_side_addr().into()).collect(),
        ..ConsulDevOptions::default()
    })
    .await;
    // The anti-flap cooldown would refuse the second failover: a cluster
    // failing over every few seconds is the point of the benchmark.
    let mut opts =
        StackOptions::new("benchf", &consul.http_addr()).setting("failover_cooldown_seconds", 0);
    for (i, host) in hosts.iter().enumerate() {
        opts.nodes[i] = NodeOptions::in_host(host, consul.http_port());
    }
    let mut stack = Stack::start_with(opts).await;
    writer::prepare(&stack.node("db1").url()).await?;
    stack.topo.wait_replicated(Duration::from_secs(20)).await?;

    let mut total = Vec::new();
    let mut phases: Vec<Vec<(String, u64)>> = Vec::new();
    let mut logs: Vec<WriterLog> = Vec::new();
    for round in 0..rounds {
        let source = stack
            .published_node()
            .await
            .ok_or_else(|| anyhow::anyhow!("round {round}: no published source"))?;
        let idx: usize = source.trim_start_matches("db").parse::<usize>()? - 1;
        let before = failovers(&stack).await.len();
        let w = WriterProc::start(stack.proxy_port.port(), round as u32 + 1).await;
        let mut load = Vec::new();
        for k in 0..load_writers {
            let id = 1000 + round as u32 * 64 + k as u32;
            load.push(WriterProc::start(stack.proxy_port.port(), id).await);
        }
        tokio::time::sleep(Duration::from_secs(load_secs.max(1))).await;

        match fault {
            Fault::Kill9 => stack.topo.server_mut(idx).kill9().await,
            Fault::Sigstop => stack.topo.server_mut(idx).sigstop()?,
            Fault::Cut => hosts[idx].cut().await?,
        }
        // After the process is gone or stopped: nothing it acknowledges can
        // count as the new source's first write.
        let crash_ms = unix_ms();
        let entry = finished_failover_after(&stack, before, Duration::from_secs(60)).await;
        anyhow::ensure!(
            entry.outcome == Outcome::Done,
            "round {round}: failover {:?}: {}\n{}",
            entry.outcome,
            entry.reason,
            stack.logs()
        );
        let to = entry.to.clone().unwrap_or_default();
        if hang {
            match fault {
                Fault::Cut => hosts[idx].heal().await?,
                _ => stack.topo.server_mut(idx).sigcont()?,
            }
            let woke = std::time::Instant::now();
            let old = stack.topo.server(idx);
            wait_until(Duration::from_secs(30), || async {
                let Ok(mut c) = old.conn().await else {
                    return false;
                };
                global_var(&mut c, "read_only").await.ok().as_deref() == Some("1")
            })
            .await
            .map_err(|_| {
                anyhow::anyhow!("round {round}: the woken (healed) old source stayed writable")
            })?;
            woken_read_only.push(woke.elapsed().as_millis() as u64);
        }
        wait_routed_to(&stack, &to, Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let log = w.finish().await?;
        let mut load_acked = 0;
        for lw in load {
            let l = lw.finish().await?;
            let lost = writer::missing(&stack.node(&to).url(), &l).await?;
            anyhow::ensure!(
                lost.is_empty(),
                "round {round}: {} writes acknowledged to a load writer are not on {to}",
                lost.len()
            );
            load_acked += l.acked.len();
            logs.push(l);
        }
        let lost = writer::missing(&stack.node(&to).url(), &log).await?;
        anyhow::ensure!(
            lost.is_empty(),
            "round {round}: {} acknowledged writes are not on {to}: {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        // The first write sent after the crash: one in flight at it may be
        // acknowledged by the old source just after (a SIGSTOP lands
        // between two writes' round trips).
        let first = log
            .acked
            .iter()
            .zip(&log.sent)
            .map(|((_, at), sent)| {
                let unix = |d: &Duration| log.start_unix_ms + d.as_millis() as u64;
                (unix(at), unix(sent))
            })
            .find(|(_, sent)| *sent > crash_ms)
            .map(|(at, _)| at)
            .ok_or_else(|| {
                anyhow::anyhow!("round {round}: no write acknowledged after the crash")
            })?;
        let split = phase_split(&entry, crash_ms, first);
        println!(
            "failover {:>2}: {source} -> {to}: crash -> first write {:>5} ms ({}); {} writes acknowledged, {} failed attempts; load writers {load_acked} acknowledged",
            round + 1,
            first - crash_ms,
            split
                .iter()
                .map(|(n, ms)| format!("{n} {ms}"))
                .collect::<Vec<_>>()
                .join(", "),
            log.acked.len(),
            log.failed,
        );
        total.push(first - crash_ms);
        phases.push(split);
        logs.push(log);

        if round + 1 < rounds {
            rejoin_rebuilt(&mut stack, idx, &source, &to).await?;
        }
    }

    // Every write acknowledged in any round survived every later failover.
    let source = stack.published_node().await.unwrap_or_default();
    let mut lost_total = 0;
    for log in &logs {
        lost_total += writer::missing(&stack.node(&source).url(), log)
            .await?
            .len();
    }
    let acked: usize = logs.iter().map(|l| l.acked.len()).sum();

    println!(
        "\nfailover benchmark: {rounds} failovers ({}) on {}, writer through HAProxy (own process){}\n",
        match fault {
            Fault::Kill9 => "kill -9 of the source's mysqld",
            Fault::Sigstop => "SIGSTOP of the source's mysqld",
            Fault::Cut => "the source's host cut off the network",
        },
        successover_tests::Flavour::from_env().name(),
        if load_writers > 0 {
            format!(", {load_writers} more writers through HAProxy for {load_secs} s before each fault")
        } else {
            String::new()
        }
    );
    println!(
        "| {:<44} | {:>6} | {:>6} | {:>6} | {:>6} |",
        "ms", "min", "p50", "p99", "max"
    );
    println!("|{:-<46}|{:->8}|{:->8}|{:->8}|{:->8}|", "", "", "", "", "");
    row("crash -> first acknowledged write (HAProxy)", total);
    for phase in PHASES {
        let values: Vec<u64> = phases
            .iter()
            .filter_map(|p| p.iter().find(|(n, _)| n == phase).map(|(_, ms)| *ms))
            .collect();
        row(&format!("  {phase}"), values);
    }
    if hang {
        let within = woken_read_only.iter().filter(|ms| **ms <= 1000).count();
        let what = if fault == Fault::Cut {
            "healed old source"
        } else {
            "woken old source"
        };
        row(&format!("{what} -> read_only=1"), woken_read_only.clone());
        println!(
            "\n{what} read-only within 1 s: {within} of {}",
            woken_read_only.len()
        );
    }
    println!(
        "\nacknowledged writes {acked}, lost acknowledged writes {lost_total} (all rounds, checked on the final source {source})"
    );
    anyhow::ensure!(lost_total == 0, "acknowledged writes lost");
    Ok(())
}

/// What an operator does after a failover: rebuild the failed server from
/// nothing as a replica of the new source, lift its quarantine and
/// acknowledge the failover; then wait until the cluster is whole again.
async fn rejoin_rebuilt(
    stack: &mut Stack,
    idx: usize,
    name: &str,
    source: &str,
) -> anyhow::Result<()> {
    let cluster = stack.cluster.clone();
    // A new server id: the rebuilt server replays history it wrote under
    // its old one (see `MariaDb::rebuild`).
    let server_id = stack.topo.server(idx).server_id() + 10;
    stack.topo.server_mut(idx).rebuild(server_id).await;
    let rebuilt = stack.topo.server(idx);
    let new_source = stack.node(source);
    rebuilt.replicate_from(new_source, false).await?;
    stack
        .consul
        .kv_delete(&format!("mysql/quarantine/{cluster}/{name}"))
        .await?;
    stack
        .consul
        .kv_delete(&format!("mysql/history/{cluster}/last-failover"))
        .await?;
    // Caught up with the new source.
    let pos = global_var(&mut new_source.conn().await?, "gtid_binlog_pos").await?;
    let mut c = rebuilt.conn().await?;
    if !wait_for_gtids(&mut c, &pos, Duration::from_secs(60)).await? {
        let status = replica_status(&mut c)
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        let get = |k: &str| status.get(k).cloned().unwrap_or_default();
        anyhow::bail!(
            "{name} did not catch up with {source} ({pos}): executed {}, IO {} ({}), SQL {} ({})",
            global_var(&mut c, "gtid_current_pos")
                .await
                .unwrap_or_default(),
            get("Slave_IO_Running"),
            get("Last_IO_Error"),
            get("Slave_SQL_Running"),
            get("Last_SQL_Error"),
        );
    }
    drop(c);
    // Its agent reports it as a replica of the new source, and the
    // coordinator restored semi-sync.
    let agent_key = format!("mysql/agent/{cluster}/{name}");
    let source_addr = new_source.addr();
    let stack = &*stack;
    wait_for(Duration::from_secs(60), || async {
        let kv = stack.consul.kv_get(&agent_key).await.ok()??;
        let report: serde_json::Value = serde_json::from_slice(kv.value.as_deref()?).ok()?;
        (report["up"] == true && report["replication"]["source"] == source_addr.as_str())
            .then_some(())
    })
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "{name}'s agent never reported it replicating from {source}\n{}",
            stack.logs()
        )
    })?;
    if wait_until(Duration::from_secs(60), || async {
        stack.semi_sync_healthy().await
            && stack.ackers_runs_recorded().await.is_ok()
            && stack
                .consul
                .kv_get(&format!("mysql/history/{cluster}/in-progress"))
                .await
                .is_ok_and(|v| v.is_none())
    })
    .await
    .is_err()
    {
        anyhow::bail!(
            "semi-sync not restored after rebuilding {name} (source's semi-sync on with one client: {}; possible ACKers' runs recorded: {:?})\n{}",
            stack.semi_sync_healthy().await,
            stack.ackers_runs_recorded().await,
            stack.logs()
        );
    }
    Ok(())
}
