//! `successover-bench-consul [--clusters N] [--idle-secs S] [--switch-secs S] [--switch-every S]`:
//! what the agents and renderers cost Consul. N clusters (default 5), each
//! three MariaDB servers with their agents on the daemon's shipped
//! defaults, one renderer and HAProxy per cluster, one Consul dev agent.
//! After 15 s of settling, S seconds idle (default 60), then S seconds
//! with a successover requested in every cluster every `--switch-every`
//! seconds (default 5). Each daemon counts the requests it sends
//! (`successover_consul_requests_total`, by operation); the benchmark
//! reads them at each phase's start and end and prints requests per
//! daemon per minute by operation, the coordinators apart, and the
//! projection to 10,000 clusters.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use successover_common::procedure::Outcome;
use successover_tests::agent::{parse_consul_requests, scrape};
use successover_tests::cli::arg;
use successover_tests::consul::ConsulDev;
use successover_tests::stack::{Stack, StackOptions};

type Counts = BTreeMap<String, u64>;

/// One daemon's counts at one moment.
#[derive(Clone)]
struct Sample {
    who: String,
    coordinator: bool,
    renderer: bool,
    counts: Counts,
}

async fn sample(stacks: &[Stack]) -> anyhow::Result<Vec<Sample>> {
    let mut out = Vec::new();
    for stack in stacks {
        for agent in &stack.agents {
            let text = agent
                .metrics()
                .await
                .ok_or_else(|| anyhow::anyhow!("no metrics from agent {}", agent.opts.node))?;
            out.push(Sample {
                who: format!("{}/{}", stack.cluster, agent.opts.node),
                coordinator: text.lines().any(|l| l == "successover_agent_coordinator 1"),
                renderer: false,
                counts: parse_consul_requests(&text),
            });
        }
        let text = scrape(stack.renderer_metrics.port())
            .await
            .ok_or_else(|| anyhow::anyhow!("no metrics from the renderer of {}", stack.cluster))?;
        out.push(Sample {
            who: format!("{}/render", stack.cluster),
            coordinator: false,
            renderer: true,
            counts: parse_consul_requests(&text),
        });
    }
    Ok(out)
}

/// Per-daemon request counts between two samples, by kind of daemon.
struct Phase {
    name: &'static str,
    secs: f64,
    members: Vec<Counts>,
    coordinators: Vec<Counts>,
    renderers: Vec<Counts>,
}

fn diff(name: &'static str, secs: f64, a: &[Sample], b: &[Sample]) -> Phase {
    let mut p = Phase {
        name,
        secs,
        members: Vec::new(),
        coordinators: Vec::new(),
        renderers: Vec::new(),
    };
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.who, y.who);
        let mut d = Counts::new();
        for (op, n) in &y.counts {
            let before = x.counts.get(op).copied().unwrap_or(0);
            if *n > before {
                d.insert(op.clone(), n - before);
            }
        }
        // A daemon that coordinated at either end counts as a coordinator.
        if y.renderer {
            p.renderers.push(d);
        } else if x.coordinator || y.coordinator {
            p.coordinators.push(d);
        } else {
            p.members.push(d);
        }
    }
    p
}

fn per_minute(group: &[Counts], secs: f64) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for c in group {
        for (op, n) in c {
            *out.entry(op.clone()).or_insert(0.0) += *n as f64;
        }
    }
    let daemons = group.len().max(1) as f64;
    for v in out.values_mut() {
        *v = *v / daemons * 60.0 / secs;
    }
    out
}

/// Requests that reach the Consul servers: a check pass is answered by the
/// local Consul agent (it syncs a check's status only when it changes).
fn to_servers(ops: &BTreeMap<String, f64>) -> f64 {
    ops.iter()
        .filter(|(op, _)| !op.starts_with("check "))
        .map(|(_, v)| v)
        .sum()
}

fn print_phase(p: &Phase, clusters: usize) {
    println!("\n### {} ({:.0} s)\n", p.name, p.secs);
    let groups = [
        ("agent, not coordinating", &p.members),
        ("agent, coordinating", &p.coordinators),
        ("renderer", &p.renderers),
    ];
    let mut ops: Vec<String> = groups
        .iter()
        .flat_map(|(_, g)| g.iter().flat_map(|c| c.keys().cloned()))
        .collect();
    ops.sort();
    ops.dedup();
    let rates: Vec<BTreeMap<String, f64>> =
        groups.iter().map(|(_, g)| per_minute(g, p.secs)).collect();
    print!("| requests per daemon per minute |");
    for (name, g) in &groups {
        print!(" {name} ({}) |", g.len());
    }
    println!("\n|---|---|---|---|");
    for op in &ops {
        print!("| {op} |");
        for r in &rates {
            print!(" {:.1} |", r.get(op).copied().unwrap_or(0.0));
        }
        println!();
    }
    print!("| **to the Consul servers** (all but check passes) |");
    for r in &rates {
        print!(" **{:.1}** |", to_servers(r));
    }
    println!();
    // Per cluster: two members and a coordinator; a renderer per cluster
    // here (a proxy host serves many clusters in production).
    let agents_per_cluster_s = (2.0 * to_servers(&rates[0]) + to_servers(&rates[1])) / 60.0;
    let all_agents: f64 = p
        .members
        .iter()
        .chain(&p.coordinators)
        .map(|c| {
            c.iter()
                .filter(|(op, _)| !op.starts_with("check "))
                .map(|(_, n)| *n as f64)
                .sum::<f64>()
        })
        .sum();
    println!(
        "\nagents' requests to the Consul servers: {:.1}/s for {clusters} clusters ({:.2}/s per cluster measured, {:.2}/s per cluster from the per-role rates); projected to 10,000 clusters: {:.0}/s",
        all_agents / p.secs,
        all_agents / p.secs / clusters as f64,
        agents_per_cluster_s,
        all_agents / p.secs / clusters as f64 * 10_000.0,
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let clusters: usize = arg(&args, "--clusters", 5)?;
    let idle: u64 = arg(&args, "--idle-secs", 60)?;
    let switching: u64 = arg(&args, "--switch-secs", 60)?;
    let every: u64 = arg(&args, "--switch-every", 5)?;
    anyhow::ensure!(
        clusters > 0 && every > 0,
        "--clusters and --switch-every must be positive"
    );
    let consul = ConsulDev::start().await;
    let mut stacks = Vec::new();
    for i in 0..clusters {
        let mut opts = StackOptions::new(&format!("load{i}"), &consul.http_addr());
        // The figures are about the shipped configuration.
        opts.shipped_timing = true;
        stacks.push(Stack::start_with(opts).await);
        eprintln!("cluster load{i} up");
    }
    tokio::time::sleep(Duration::from_secs(15)).await;

    let s0 = sample(&stacks).await?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(idle)).await;
    let s1 = sample(&stacks).await?;
    let idle_phase = diff("idle", t0.elapsed().as_secs_f64(), &s0, &s1);

    let t1 = Instant::now();
    let mut requested = 0;
    let mut next = Instant::now();
    while t1.elapsed() < Duration::from_secs(switching) {
        for stack in &stacks {
            let Some(source) = stack.published_node().await else {
                continue;
            };
            let target = if source == "db1" { "db2" } else { "db1" };
            stack
                .consul
                .kv_put(&format!("mysql/switchover/{}", stack.cluster), target)
                .await?;
            requested += 1;
        }
        next += Duration::from_secs(every);
        tokio::time::sleep_until(next.into()).await;
    }
    let s2 = sample(&stacks).await?;
    let switch_phase = diff(
        "a switch requested every few seconds",
        t1.elapsed().as_secs_f64(),
        &s1,
        &s2,
    );
    let mut done = 0;
    for stack in &stacks {
        done += successover_tests::scenario::history_of(
            stack,
            successover_common::procedure::ProcedureKind::Switchover,
        )
        .await
        .iter()
        .filter(|e| e.outcome == Outcome::Done)
        .count();
    }

    println!(
        "\nConsul load benchmark: {clusters} clusters × 3 agents (shipped defaults), one renderer per cluster, {}",
        successover_tests::Flavour::from_env().name()
    );
    print_phase(&idle_phase, clusters);
    print_phase(&switch_phase, clusters);
    println!(
        "\nswitches: {requested} requested every {every} s per cluster, {done} done (a request made while one runs is refused)"
    );
    Ok(())
}
