//! `successover-bench-ack-move [--restarts N] [--drain | --hang | --cut]`:
//! what patching the ACKing replica costs the writers. With `--hang` the
//! ACKer is not restarted but hung (SIGSTOP, a hung host), and woken once
//! commits resumed: the gap is what a hung ACKer costs. With `--cut` (root:
//! every database host is a network namespace) the ACKer's host, its agent
//! included, is cut off the network instead, and healed once commits
//! resumed. With `--drain` each restart is
//! preceded by `drain/<cluster>/<node>` (what `successover drain` writes),
//! as the rolling-upgrade runbook says, and the gap is measured from the
//! drain request through the restart. Four writers commit as fast as they can,
//! straight to the source (as the application account); the replica that
//! holds the semi-sync flag is restarted cleanly, the flag moves to the
//! other replica, and the longest wait between two acknowledged commits
//! across the restart is recorded. Also checks that no acknowledged commit
//! is missing on any server at the end.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use successover_tests::cli::arg;
use successover_tests::consul::{ConsulDev, ConsulDevOptions};
use successover_tests::mariadb::{global_var, status_var, APP_PASSWORD, APP_USER};
use successover_tests::netns::NetHost;
use successover_tests::stack::{NodeOptions, Stack, StackOptions};
use successover_tests::wait_until;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let restarts: usize = arg(&args, "--restarts", 10)?;
    let drain = args.iter().any(|a| a == "--drain");
    let hang = args.iter().any(|a| a == "--hang");
    let cut = args.iter().any(|a| a == "--cut");
    anyhow::ensure!(
        [drain, hang, cut].iter().filter(|&&f| f).count() <= 1,
        "--drain, --hang and --cut exclude each other"
    );
    let fault = if hang {
        ("hang", "hangs (SIGSTOP)")
    } else if cut {
        ("cut", "cuts off the network")
    } else {
        ("restart", "clean restarts")
    };
    let mut hosts = Vec::new();
    if cut {
        for i in 1..=3 {
            hosts.push(NetHost::create(&format!("db{i}")).await);
        }
    }
    let consul = ConsulDev::start_with(ConsulDevOptions {
        extra_client_addrs: hosts.iter().map(|h| h.host_side_addr().into()).collect(),
        ..ConsulDevOptions::default()
    })
    .await;
    let mut opts = StackOptions::new("bench-ack", &consul.http_addr());
    for (i, host) in hosts.iter().enumerate() {
        opts.nodes[i] = NodeOptions::in_host(host, consul.http_port());
    }
    let mut stack = Stack::start_with(opts).await;
    let source = stack.node("db1");
    source
        .exec("CREATE DATABASE IF NOT EXISTS successover_check; CREATE TABLE IF NOT EXISTS successover_check.ack (id BIGINT PRIMARY KEY)")
        .await?;
    let url = format!("mysql://{APP_USER}:{APP_PASSWORD}@{}/", source.addr());
    let stop = tokio_util::sync::CancellationToken::new();
    let acked: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (stop, acked, url) = (stop.clone(), acked.clone(), url.clone());
        writers.push(tokio::spawn(async move {
            let opts = mysql_async::Opts::from_url(&url).unwrap();
            let mut conn = None;
            let mut id = w << 40;
            while !stop.is_cancelled() {
                id += 1;
                if conn.is_none() {
                    conn = mysql_async::Conn::new(opts.clone()).await.ok();
                }
                let Some(c) = conn.as_mut() else { continue };
                match c
                    .query_drop(format!("INSERT INTO successover_check.ack VALUES ({id})"))
                    .await
                {
                    Ok(()) => acked.lock().unwrap().push((id, Instant::now())),
                    Err(_) => conn = None,
                }
            }
        }));
    }
    let mut longest = Vec::new();
    for round in 0..restarts {
        wait_until(Duration::from_secs(30), || async {
            stack.semi_sync_healthy().await
        })
        .await
        .map_err(|_| anyhow::anyhow!("semi-sync never healthy before round {round}"))?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The ACKer is the replica whose IO thread runs semi-sync now: a
        // flag set on a replica that was out of reach may still read 1
        // until the coordinator turns it off.
        let acking = || async {
            let mut on = Vec::new();
            for name in ["db2", "db3"] {
                let Ok(mut c) = stack.node(name).conn().await else {
                    continue;
                };
                if status_var(&mut c, "Rpl_semi_sync_slave_status")
                    .await
                    .is_ok_and(|v| v == "ON")
                {
                    on.push(name);
                }
            }
            on
        };
        wait_until(Duration::from_secs(30), || async {
            acking().await.len() == 1
        })
        .await
        .map_err(|_| anyhow::anyhow!("round {round}: not exactly one ACKing replica"))?;
        let name = acking().await[0];
        let i: usize = name[2..].parse::<usize>()? - 1;
        // Where the coordinator runs decides what losing the ACKer's host
        // costs: the lock must move first when it is that host's.
        let coordinator = stack.coordinator_node().await.unwrap_or_default();
        let restarted = Instant::now();
        let drain_key = format!("mysql/drain/{}/{name}", stack.cluster);
        if drain {
            stack
                .consul
                .kv_put(&drain_key, "{\"by\": \"bench\"}")
                .await?;
            wait_until(Duration::from_secs(30), || async {
                let Ok(mut c) = stack.node(name).conn().await else {
                    return false;
                };
                global_var(&mut c, "rpl_semi_sync_slave_enabled")
                    .await
                    .is_ok_and(|v| v == "0")
                    && stack.semi_sync_healthy().await
            })
            .await
            .map_err(|_| anyhow::anyhow!("the ACK role never left the drained {name}"))?;
        }
        if hang {
            stack.topo.server_mut(i).sigstop()?;
        } else if cut {
            hosts[i].cut().await?;
        } else {
            stack.topo.server_mut(i).restart().await;
        }
        wait_until(Duration::from_secs(30), || async {
            acked
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, t)| *t > restarted)
                .count()
                > 200
        })
        .await
        .map_err(|_| anyhow::anyhow!("commits never resumed after restarting {name}"))?;
        if drain {
            stack.consul.kv_delete(&drain_key).await?;
        }
        if hang {
            stack.topo.server_mut(i).sigcont()?;
        }
        if cut {
            hosts[i].heal().await?;
        }
        let mut at: Vec<Instant> = acked
            .lock()
            .unwrap()
            .iter()
            .map(|(_, t)| *t)
            .filter(|t| *t > restarted - Duration::from_secs(1))
            .collect();
        at.sort();
        let gap = at.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
        eprintln!(
            "{} {round} of {name} (coordinator on {coordinator}): longest commit gap {gap:?}",
            fault.0
        );
        longest.push(gap.as_millis() as u64);
    }
    stop.cancel();
    for w in writers {
        let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
    }
    stack.topo.wait_replicated(Duration::from_secs(60)).await?;
    let ids: Vec<u64> = acked.lock().unwrap().iter().map(|(id, _)| *id).collect();
    let mut lost = 0;
    for db in stack.topo.servers() {
        let mut c = db.conn().await?;
        let present: Vec<u64> = c.query("SELECT id FROM successover_check.ack").await?;
        let present: HashSet<u64> = present.into_iter().collect();
        lost += ids.iter().filter(|id| !present.contains(id)).count();
    }
    longest.sort();
    println!(
        "\nsuccessover benchmark: {restarts} {} of the ACKing replica{}, 4 writers straight at the source\n\
         longest commit gap per restart (ms): min {} p50 {} p99 {} max {}\n\
         acknowledged commits {}, missing on some server {lost}",
        fault.1,
        if drain { ", each drained first" } else { "" },
        longest[0],
        percentile(&longest, 0.5),
        percentile(&longest, 0.99),
        longest[longest.len() - 1],
        ids.len()
    );
    anyhow::ensure!(lost == 0, "acknowledged commits lost");
    Ok(())
}
