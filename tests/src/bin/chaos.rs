//! `successover-chaos`: random faults against a whole local system while
//! writers go through HAProxy, with the invariants checked after every
//! fault (see `successover_tests::chaos` and docs/chaos.md).
//!
//! ```text
//! successover-chaos --minutes 30 --seed 1 [--faults kill9,sigstop,agent,render,leader,partition,switch]
//!                   [--writers 2] [--max-faults N] [--no-netns] [--logs DIR] [--sabotage]
//! ```
//!
//! `--sabotage` first breaks two invariants on purpose (a switchover while
//! the renderer is stopped, the old source writable next to the new one) to
//! show that the checks report them; such a run exits 1.
//!
//! The servers are MariaDB 10.11 unless `SUCCESSOVER_FLAVOUR` says
//! `mariadb-11.4` or `mysql-9.7`.
//!
//! Prints a line per fault and a summary table; exits 1 on any violation.
//! Needs root (network namespaces) unless `--no-netns` (which drops the
//! `partition` fault). Build first: `cargo build --workspace --bins`.

use std::path::PathBuf;
use std::time::Duration;

use successover_tests::chaos::{self, ChaosOptions, FaultKind};

const USAGE: &str = "usage: successover-chaos --minutes N [--seed S] \
[--faults kill9,sigstop,agent,render,leader,partition,switch] [--writers N] \
[--max-faults N] [--no-netns] [--logs DIR] [--sabotage]";

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("successover-chaos: {e:#}\n{USAGE}");
            std::process::ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<bool> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut minutes: Option<f64> = None;
    let mut seed: Option<u64> = None;
    let mut faults = FaultKind::ALL.to_vec();
    let mut writers = 2;
    let mut max_faults = None;
    let mut netns = true;
    let mut logs: Option<PathBuf> = None;
    let mut faults_given = false;
    let mut sabotage = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--minutes" => minutes = Some(value()?.parse()?),
            "--seed" => seed = Some(value()?.parse()?),
            "--faults" => {
                faults = FaultKind::parse_list(&value()?)?;
                faults_given = true;
            }
            "--writers" => writers = value()?.parse()?,
            "--max-faults" => max_faults = Some(value()?.parse()?),
            "--no-netns" => netns = false,
            "--sabotage" => sabotage = true,
            "--logs" => logs = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(true);
            }
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    let minutes = minutes.ok_or_else(|| anyhow::anyhow!("--minutes is required"))?;
    anyhow::ensure!(minutes > 0.0, "--minutes must be positive");
    if !netns {
        anyhow::ensure!(
            !(faults_given && faults.contains(&FaultKind::Partition)),
            "partition faults need network namespaces (drop --no-netns)"
        );
        faults.retain(|k| *k != FaultKind::Partition);
    }
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
    });
    let logs = logs.unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
            "../target/chaos/seed-{seed}-{}",
            successover_tests::writer::unix_ms() / 1000
        ))
    });
    let mut opts = ChaosOptions::new(Duration::from_secs_f64(minutes * 60.0), seed, logs);
    opts.faults = faults;
    opts.writers = writers;
    opts.max_faults = max_faults;
    opts.netns = netns;
    opts.sabotage = sabotage;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // Ctrl-C: finish the fault under way (its repair and check), then
        // report.
        let stop = opts.stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: finishing the current fault, then reporting");
                stop.cancel();
            }
        });
        let report = chaos::run(opts).await?;
        println!("\n{}", report.table());
        anyhow::Ok(report.ok())
    })
}
