//! `successover-bench-switchover [--switches N]`: write unavailability per
//! planned successover, measured by a writer in its own process going
//! through HAProxy: last acknowledged write before the switch → first
//! acknowledged write after it. Also reports the coordinator's own
//! measurement (old source read-only → new source writable) and the count
//! of acknowledged writes lost (must be 0).

use std::time::Duration;

use successover_common::procedure::Outcome;
use successover_tests::consul::ConsulDev;
use successover_tests::scenario::history;
use successover_tests::stack::Stack;
use successover_tests::writer::{self, WriterProc};
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
    let switches: usize = args
        .iter()
        .position(|a| a == "--switches")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20);
    let consul = ConsulDev::start().await;
    let stack = Stack::start("bench", &consul.http_addr()).await;
    writer::prepare(&stack.node("db1").url()).await?;
    stack.topo.wait_replicated(Duration::from_secs(20)).await?;
    let w = WriterProc::start(stack.proxy_port.port(), 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut coordinator = Vec::new();
    for i in 0..switches {
        let target = if i % 2 == 0 { "db2" } else { "db1" };
        let done = history(&stack).await.len();
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
        coordinator.push(entry.write_unavailable_ms.unwrap_or(0));
        wait_until(Duration::from_secs(30), || async {
            stack.semi_sync_healthy().await
        })
        .await
        .map_err(|_| anyhow::anyhow!("did not settle after switch {i}"))?;
        // Let the writer show a steady stretch between switches.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = w.finish().await?;
    stack.topo.wait_replicated(Duration::from_secs(30)).await?;
    let source = stack.published_node().await.unwrap_or_default();
    let lost = writer::missing(&stack.node(&source).url(), &log).await?;

    // Each switch is one window without acknowledgements; between switches
    // the writer acknowledges every few milliseconds.
    let mut gaps: Vec<u64> = log
        .acked
        .windows(2)
        .map(|w| (w[1].1 - w[0].1).as_millis() as u64)
        .collect();
    gaps.sort_unstable_by(|a, b| b.cmp(a));
    gaps.truncate(switches);

    println!("\nsuccessover benchmark: {switches} switches, writer through HAProxy (own process)");
    println!(
        "{:<52} {:>6} {:>6} {:>6} {:>6}",
        "ms", "min", "p50", "p99", "max"
    );
    row("write unavailability seen by the writer", gaps);
    row("old source read-only -> new source writable", coordinator);
    println!(
        "acknowledged writes {}, failed attempts {}, lost acknowledged writes {}",
        log.acked.len(),
        log.failed,
        lost.len()
    );
    anyhow::ensure!(lost.is_empty(), "acknowledged writes lost");
    Ok(())
}
