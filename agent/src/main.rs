//! `successover-agent`: runs on every database host.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use successover_agent::config;
use successover_agent::metrics::Metrics;
use successover_agent::run::Agent;
use successover_common::systemd;
use successover_common::telemetry::{init_logging, report, serve_metrics, Exposition, Readiness};
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

#[derive(Parser)]
#[command(version, about = "successover database-host agent")]
struct Args {
    /// Configuration file (TOML).
    #[arg(
        short,
        long,
        env = "SUCCESSOVER_AGENT_CONFIG",
        default_value = "/etc/successover/agent.toml"
    )]
    config: PathBuf,
    /// Validate the configuration, print every problem, and exit.
    #[arg(long)]
    check_config: bool,
    /// Run one cycle, print its outcome and exit.
    #[arg(long)]
    once: bool,
}

/// Cycles at most in a row at the probe interval after acting.
const QUICK_AFTER_ACTING: u32 = 3;

fn main() -> ExitCode {
    // While the process has one thread: it takes the notify variables out
    // of the environment (see systemd::init).
    systemd::init();
    let args = Args::parse();
    init_logging("info");
    // Configuration problems are usage errors: reported all at once, before
    // any port is bound or any connection made.
    let cfg = match config::load(&args.config) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("successover-agent: {}", report(&e));
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("{}: configuration is valid", args.config.display());
        return ExitCode::SUCCESS;
    }
    // Held for the life of the process: a second agent for the same node
    // stops here, and the first's session can be ended by a successor as
    // soon as this lock is free (see `Agent::ensure_membership`).
    let _instance = match instance_lock(&cfg) {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("successover-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Every line the agent logs says which cluster and node it is about:
    // the journal of a host running agents of several clusters stays readable.
    let span = tracing::info_span!("agent", cluster = %cfg.cluster, node = %cfg.node);
    runtime.block_on(run(args, cfg).instrument(span))
}

/// An exclusive lock on `successover-agent-<cluster>-<node>.lock` in the
/// runtime directory (`$RUNTIME_DIRECTORY` under systemd, which keeps it
/// across restarts; the temporary directory otherwise). The kernel drops
/// it when the process dies, however it dies.
fn instance_lock(cfg: &config::Config) -> Result<nix::fcntl::Flock<std::fs::File>, String> {
    let dir = std::env::var_os("RUNTIME_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!(
        "successover-agent-{}-{}.lock",
        cfg.cluster, cfg.node
    ));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| match errno {
            nix::errno::Errno::EWOULDBLOCK => format!(
                "another successover-agent for {}/{} is running (it holds {})",
                cfg.cluster,
                cfg.node,
                path.display()
            ),
            e => format!("cannot lock {}: {e}", path.display()),
        },
    )
}

async fn run(args: Args, cfg: config::Config) -> ExitCode {
    let metrics = Arc::new(Metrics::default());
    let cancel = CancellationToken::new();
    if let Some(addr) = cfg.metrics_listen {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                let m = metrics.clone();
                let exposition: Exposition = Arc::new(move || m.exposition());
                let m = metrics.clone();
                // A cycle takes a tick plus its reads: three ticks and the
                // read timeout without one is a stalled agent.
                let stale = cfg.tick * 3 + cfg.query_timeout;
                let readiness: Readiness = Arc::new(move || m.readiness(stale));
                tokio::spawn(
                    serve_metrics(listener, exposition, readiness, cancel.clone())
                        .in_current_span(),
                );
            }
            Err(e) => {
                eprintln!("cannot listen on {addr} for metrics: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut budget = cycle_budget(&cfg);
    let mut agent = match Agent::new(cfg, metrics) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if args.once {
        let outcome = agent.cycle().await;
        println!("{}", outcome.reason);
        agent.shutdown().await;
        return ExitCode::SUCCESS;
    }
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        eprintln!("cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    let wake = Arc::new(tokio::sync::Notify::new());
    agent.start_watching(wake.clone(), &cancel);
    let isolation = agent.spawn_isolation_watchdog(cancel.clone());
    let mut last_reason = String::new();
    // Cycles in a row that came at the probe interval after acting.
    let mut quick_in_a_row = 0u32;
    // The watchdog is fed from this loop only, never from a task of its
    // own: a loop that hangs must stop the pings so systemd restarts the
    // agent. While a cycle runs, pings go on for at most `budget` (see
    // cycle_budget); between cycles, at half the interval.
    let ping_every = systemd::watchdog_interval().map(|w| w / 2);
    let mut next_ping = Instant::now();
    tracing::info!("agent started");
    loop {
        let outcome = systemd::watch(agent.cycle(), budget).await;
        if !systemd::notifier().is_ready() && outcome.reached_consul {
            systemd::ready();
        }
        let new_situation = outcome.reason != last_reason;
        // One line per change of situation, not per tick.
        if new_situation || !outcome.actions.is_empty() {
            tracing::info!(coordinator = outcome.coordinator, "{}", outcome.reason);
            systemd::status(&outcome.reason);
            last_reason = outcome.reason;
        }
        // A coordinator that suspects its source looks again after the
        // probe interval, not the tick; one that does not still has its
        // probe look at the source on that interval (see `probe`), which
        // runs a cycle as soon as the source does not answer or its commits
        // get no ACK. A coordinator that acted, or whose
        // situation changed, looks again soon too: what it did (a flag set,
        // connections ended) or what it just saw (a replica gone, commits
        // waiting) is what the next decision needs to see again, and a lost
        // ACKer stalls every commit meanwhile. A few in a row at most, so an
        // action that fails each time does not spin.
        let acted = outcome.coordinator && (!outcome.actions.is_empty() || new_situation);
        quick_in_a_row = if acted && quick_in_a_row < QUICK_AFTER_ACTING {
            quick_in_a_row + 1
        } else {
            0
        };
        let next_cycle = Instant::now()
            + if agent.suspects_source() || quick_in_a_row > 0 {
                agent.probe_interval()
            } else {
                agent.tick()
            };
        let stop = loop {
            if let Some(every) = ping_every {
                let now = Instant::now();
                if now >= next_ping {
                    systemd::watchdog();
                    next_ping = now + every;
                }
            }
            // A tick longer than half the watchdog interval is slept in
            // pieces, pinging in between.
            let wake_at = match ping_every {
                Some(_) => next_cycle.min(next_ping),
                None => next_cycle,
            };
            tokio::select! {
                _ = term.recv() => break true,
                _ = int.recv() => break true,
                _ = hup.recv() => {
                    systemd::reloading();
                    match config::load(&args.config) {
                        Ok(new) => {
                            let new_budget = cycle_budget(&new);
                            match agent.reload(new) {
                                Ok(()) => {
                                    budget = new_budget;
                                    tracing::info!("configuration reloaded");
                                }
                                Err(e) => tracing::error!("configuration not reloaded: {e}"),
                            }
                        }
                        Err(e) => tracing::error!("configuration not reloaded: {}", report(&e)),
                    }
                    // Done either way: a rejected file leaves the running
                    // configuration in place.
                    systemd::reloaded();
                    break false;
                }
                _ = tokio::time::sleep_until(wake_at) => {
                    if Instant::now() >= next_cycle {
                        break false;
                    }
                }
                _ = wake.notified() => break false,
            }
        };
        if stop {
            break;
        }
    }
    systemd::stopping();
    tracing::info!("shutting down");
    cancel.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), isolation).await;
    if tokio::time::timeout(std::time::Duration::from_secs(10), agent.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown timed out");
    }
    ExitCode::SUCCESS
}

/// The longest one cycle may legitimately take. A coordinator's failover
/// waits up to `failover.apply_timeout` for the candidate's relay log;
/// every other step is bounded by the MySQL and Consul client timeouts, a
/// minute together at most. A cycle still running after this is stuck,
/// and the watchdog pings stop.
fn cycle_budget(cfg: &config::Config) -> Duration {
    cfg.apply_timeout + Duration::from_secs(60)
}
