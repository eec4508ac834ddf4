//! `successover-bench-switchover [--switches N] [--writers W] [--interval-ms M]`: write
//! unavailability per planned successover, measured by writers in their own
//! processes going through HAProxy (W, default 4, as fast as they go; every
//! second one logs in with an account holding `ALL`): for each writer, the
//! longest wait between two acknowledged writes that overlaps the switch.
//! Also reports the coordinator's own measurement (old source read-only →
//! new source writable) and the count of acknowledged writes lost (must
//! be 0), the commit rate the writers reached, and whether every server
//! ends with the same GTID state. `--interval-ms` paces each writer (a
//! pause after each write; default none). Runs on the flavour
//! `SUCCESSOVER_FLAVOUR` names.

use std::time::Duration;

use successover_common::procedure::Outcome;
use successover_tests::cli::arg;
use successover_tests::consul::ConsulDev;
use successover_tests::mariadb::{
    global_var, wait_for_gtids, ADMIN_APP_PASSWORD, ADMIN_APP_USER, APP_PASSWORD, APP_USER,
};
use successover_tests::scenario::history;
use successover_tests::stack::Stack;
use successover_tests::writer::{self, unix_ms, WriterProc};
use successover_tests::{wait_for, wait_until};

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn row(name: &str, mut v: Vec<u64>) {
    v.sort_unstable();
    println!(
        "{name:<52} {:>6} {:>6} {:>6} {:>6}",
        v[0],
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        v[v.len() - 1]
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: usize| arg(&args, name, default);
    let switches = flag("--switches", 20)?;
    let writers = flag("--writers", 4)?;
    let interval = Duration::from_millis(flag("--interval-ms", 0)? as u64);
    anyhow::ensure!(switches > 0, "--switches must be at least 1");
    anyhow::ensure!(writers > 0, "--writers must be at least 1");
    let consul = ConsulDev::start().await;
    let stack = Stack::start("bench", &consul.http_addr()).await;
    writer::prepare(&stack.node("db1").url()).await?;
    stack.topo.wait_replicated(Duration::from_secs(20)).await?;
    let mut procs = Vec::new();
    for i in 0..writers {
        let (user, password) = if i % 2 == 1 {
            (ADMIN_APP_USER, ADMIN_APP_PASSWORD)
        } else {
            (APP_USER, APP_PASSWORD)
        };
        procs.push(
            WriterProc::start_paced(
                stack.proxy_port.port(),
                i as u32 + 1,
                user,
                password,
                interval,
            )
            .await,
        );
    }
    // Long enough for the replicas to fall behind the writers.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // (request, finished) per switch, Unix ms.
    let mut windows: Vec<(u64, u64)> = Vec::new();

    let mut coordinator = Vec::new();
    let mut steps: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for i in 0..switches {
        let target = if i % 2 == 0 { "db2" } else { "db1" };
        let done = history(&stack).await.len();
        let requested = unix_ms();
        stack
            .consul
            .kv_put("mysql/switchover/bench", target)
            .await?;
        let entry = wait_for(Duration::from_secs(60), || async {
            let h = history(&stack).await;
            h.get(done)
                .filter(|e| e.outcome != Outcome::Running)
                .cloned()
        })
        .await
        .map_err(|_| anyhow::anyhow!("switch {i} never finished\n{}", stack.logs()))?;
        anyhow::ensure!(
            entry.outcome == Outcome::Done,
            "switch {i}: {}",
            entry.reason
        );
        windows.push((requested, unix_ms()));
        coordinator.push(entry.write_unavailable_ms.unwrap_or(0));
        for step in &entry.steps {
            let name = if step.name.starts_with("repoint_") && step.name.ends_with("_semi_sync") {
                "repoint_semi_sync".to_owned()
            } else if step.name.starts_with("repoint_") {
                "repoint".to_owned()
            } else {
                step.name.clone()
            };
            steps.entry(name).or_default().push(step.duration_ms);
        }
        // Inside catch_up: blocking the old source's commits.
        if let Some(b) = entry.evidence.get("commit_block_ms") {
            for (part, v) in [("connect", &b["connect"]), ("total", &b["total"])] {
                if let Some(ms) = v.as_u64() {
                    steps
                        .entry(format!("  catch_up: commit block {part}"))
                        .or_default()
                        .push(ms);
                }
            }
        }
        wait_until(Duration::from_secs(30), || async {
            stack.semi_sync_healthy().await
        })
        .await
        .map_err(|_| anyhow::anyhow!("did not settle after switch {i}"))?;
        // The next switch targets this one's old source: as an operator
        // would, wait until it applied what the new source had (its SQL
        // thread waits while the old source's commit block lingers).
        let old = if target == "db2" { "db1" } else { "db2" };
        let mut c = stack.node(target).conn().await?;
        let pos = global_var(&mut c, "gtid_binlog_pos").await?;
        let mut c = stack.node(old).conn().await?;
        anyhow::ensure!(
            wait_for_gtids(&mut c, &pos, Duration::from_secs(30)).await?,
            "{old} never applied {pos}"
        );
        // Let the writer show a steady stretch between switches.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut logs = Vec::new();
    for w in procs {
        logs.push(w.finish().await?);
    }
    // How long each old source's commit block outlived its switch.
    let held: Vec<String> = stack
        .logs()
        .lines()
        .filter(|l| l.contains("commit block lifted"))
        .filter_map(|l| l.split("held_ms=").nth(1))
        .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
        .collect();
    eprintln!("old source's commit block held after each switch (ms): {held:?}");
    stack.topo.wait_replicated(Duration::from_secs(30)).await?;
    // Every server ends with the same GTID state.
    let mut states = Vec::new();
    for db in stack.topo.servers() {
        let mut c = db.conn().await?;
        let var = if db.flavour().is_mysql() {
            "gtid_executed"
        } else {
            "gtid_binlog_state"
        };
        states.push((db.name().to_owned(), global_var(&mut c, var).await?));
    }
    let identical = states.windows(2).all(|w| w[0].1 == w[1].1);
    let source = stack.published_node().await.unwrap_or_default();
    let mut lost = Vec::new();
    for log in &logs {
        lost.extend(writer::missing(&stack.node(&source).url(), log).await?);
    }

    // Per switch and writer: the longest wait between two acknowledged
    // writes that overlaps the switch (request → recorded as done).
    let mut per_writer = Vec::new();
    let mut worst = Vec::new();
    for &(from, to) in &windows {
        let mut this = 0;
        for log in &logs {
            let at = |d: Duration| log.start_unix_ms + d.as_millis() as u64;
            let gap = log
                .acked
                .windows(2)
                .filter(|w| at(w[0].1) <= to && at(w[1].1) >= from)
                .map(|w| (w[1].1 - w[0].1).as_millis() as u64)
                .max();
            if let Some(g) = gap {
                per_writer.push(g);
                this = this.max(g);
            }
        }
        worst.push(this);
    }

    println!(
        "\nsuccessover benchmark: {switches} switches on {}, {writers} writer(s) through HAProxy (own processes, every second one with ALL)",
        successover_tests::Flavour::from_env().name()
    );
    println!(
        "{:<52} {:>6} {:>6} {:>6} {:>6}",
        "ms", "min", "p50", "p99", "max"
    );
    row("write unavailability, each writer", per_writer);
    row("write unavailability, the slowest writer", worst);
    row("old source read-only -> new source writable", coordinator);
    for (name, durations) in steps {
        row(&format!("  step {name}"), durations);
    }
    let acked: usize = logs.iter().map(|l| l.acked.len()).sum();
    let seconds = logs
        .iter()
        .map(|l| l.elapsed.as_secs_f64())
        .fold(0.0, f64::max);
    println!(
        "commit rate reached (all writers, whole run, switches included): {:.0}/s; GTID state identical on every server: {identical}",
        acked as f64 / seconds.max(0.001)
    );
    println!(
        "acknowledged writes {}, failed attempts {}, lost acknowledged writes {}",
        acked,
        logs.iter().map(|l| l.failed).sum::<u64>(),
        lost.len()
    );
    anyhow::ensure!(lost.is_empty(), "acknowledged writes lost");
    anyhow::ensure!(identical, "GTID states differ: {states:?}");
    Ok(())
}
