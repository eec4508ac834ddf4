//! `successover-agent`: runs on every database host.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use successover_agent::config;
use successover_agent::metrics::Metrics;
use successover_agent::run::Agent;
use successover_common::systemd;
use successover_common::telemetry::{serve_metrics, Exposition};
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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

fn main() -> ExitCode {
    // While the process has one thread: it takes the notify variables out
    // of the environment (see systemd::init).
    systemd::init();
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: under systemd they would end
        // up in the journal as escape sequences.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // Configuration problems are usage errors: reported all at once, before
    // any port is bound or any connection made.
    let cfg = match config::load(&args.config) {
        Ok(cfg) => cfg,
        Err(errors) => {
            eprintln!("{}: {errors}", args.config.display());
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("{}: configuration is valid", args.config.display());
        return ExitCode::SUCCESS;
    }
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
    runtime.block_on(run(args, cfg))
}

async fn run(args: Args, cfg: config::Config) -> ExitCode {
    let metrics = Arc::new(Metrics::default());
    let cancel = CancellationToken::new();
    if let Some(addr) = cfg.metrics_listen {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                let m = metrics.clone();
                let exposition: Exposition = Arc::new(move || m.exposition());
                tokio::spawn(serve_metrics(listener, exposition, cancel.clone()));
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
    let wake = successover_agent::wake::spawn(
        agent.consul().clone(),
        agent.keys().clone(),
        agent.cluster().clone(),
        cancel.clone(),
    );
    let mut last_reason = String::new();
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
        // One line per change of situation, not per tick.
        if outcome.reason != last_reason || !outcome.actions.is_empty() {
            tracing::info!(coordinator = outcome.coordinator, "{}", outcome.reason);
            systemd::status(&outcome.reason);
            last_reason = outcome.reason;
        }
        let next_cycle = Instant::now() + agent.tick();
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
                        Err(errors) => tracing::error!("configuration not reloaded: {errors}"),
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
    if tokio::time::timeout(std::time::Duration::from_secs(10), agent.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown timed out");
    }
    ExitCode::SUCCESS
}

/// The longest one cycle may legitimately take. A coordinator's failover
/// waits up to `failover.apply_timeout_s` for the candidate's relay log;
/// every other step is bounded by the MySQL and Consul client timeouts, a
/// minute together at most. A cycle still running after this is stuck,
/// and the watchdog pings stop.
fn cycle_budget(cfg: &config::Config) -> Duration {
    cfg.apply_timeout + Duration::from_secs(60)
}
