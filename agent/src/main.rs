//! `successover-agent`: runs on every database host.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use successover_agent::config;
use successover_agent::metrics::Metrics;
use successover_agent::run::Agent;
use successover_common::telemetry::{serve_metrics, Exposition};
use tokio::signal::unix::{signal, SignalKind};
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
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
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
    tracing::info!("agent started");
    loop {
        let outcome = agent.cycle().await;
        // One line per change of situation, not per tick.
        if outcome.reason != last_reason || !outcome.actions.is_empty() {
            tracing::info!(coordinator = outcome.coordinator, "{}", outcome.reason);
            last_reason = outcome.reason;
        }
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                match config::load(&args.config) {
                    Ok(new) => match agent.reload(new) {
                        Ok(()) => tracing::info!("configuration reloaded"),
                        Err(e) => tracing::error!("configuration not reloaded: {e}"),
                    },
                    Err(errors) => tracing::error!("configuration not reloaded: {errors}"),
                }
            }
            _ = tokio::time::sleep(agent.tick()) => {}
            _ = wake.notified() => {}
        }
    }
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
