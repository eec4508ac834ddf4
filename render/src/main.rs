//! successover-render: Consul KV → HAProxy on every proxy host.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use successover_common::consul::Consul;
use successover_common::systemd;
use successover_common::telemetry::init_logging;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use successover_render::config::{self, Config};
use successover_render::engine::{self, report, Engine, Reconfig};
use successover_render::fallback;
use successover_render::metrics::{self, Metrics};
use successover_render::presence::{self, Contact};
use successover_render::template::Template;
use successover_render::watch;

/// Usage errors and bad config: nothing was started.
const EXIT_USAGE: u8 = 2;
const EXIT_FAILURE: u8 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "successover-render",
    version,
    about = "Renders HAProxy listen blocks from Consul KV and switches HAProxy without losing writes"
)]
struct Cli {
    /// Config file (TOML). A missing file at the default path means defaults.
    #[arg(short, long, env = "SUCCESSOVER_RENDER_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,

    /// Render the current state, apply it, exit (0 on success).
    #[arg(long, conflicts_with_all = ["dry_run", "check_config"])]
    once: bool,

    /// Print the config that would be written; touch nothing.
    #[arg(long, conflicts_with = "check_config")]
    dry_run: bool,

    /// Validate the config file and the template, then exit.
    #[arg(long)]
    check_config: bool,
}

/// The config file and the template it names, both checked: what a start
/// and a SIGHUP read.
fn load(path: &Path, explicit: bool) -> Result<(Config, Template), String> {
    let cfg = config::load(path, explicit).map_err(|e| report(&e))?;
    let template = match &cfg.template_path {
        Some(p) => Template::from_file(p),
        None => Ok(Template::builtin()),
    };
    let template = template
        .and_then(|t| engine::check_template(&t, &cfg).map(|_| t))
        .map_err(|e| report(&e))?;
    Ok((cfg, template))
}

fn main() -> ExitCode {
    // While the process has one thread: it takes the notify variables out
    // of the environment, so `haproxy -c` and a reload command started
    // later do not inherit them (see systemd::init).
    systemd::init();
    let cli = Cli::parse();
    init_logging("info");

    let (path, explicit) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(config::DEFAULT_CONFIG_PATH), false),
    };
    let (cfg, template) = match load(&path, explicit) {
        Ok((c, t)) => (Arc::new(c), t),
        Err(e) => {
            eprintln!("successover-render: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut consul_cfg = cfg.consul.clone();
    if cli.check_config {
        let file = if path.exists() {
            path.display().to_string()
        } else {
            format!("(none at {}, defaults)", path.display())
        };
        println!("config {file} OK; template {} renders", template.origin());
        return ExitCode::SUCCESS;
    }
    if !(cli.once || cli.dry_run) {
        // The daemon's watches retry with their own backoff and report every
        // failure (log line, errors_total{stage="consul"}). The client's
        // retries on top would hide a Consul outage from both for
        // `retry_for` (20 s).
        consul_cfg.retry_for = Duration::ZERO;
    }
    let consul = match Consul::new(consul_cfg) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("successover-render: {}", report(&e));
            return ExitCode::from(EXIT_USAGE);
        }
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("successover-render: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let source = ConfigSource { path, explicit };
    runtime.block_on(async_main(cli, source, cfg, template, consul))
}

/// Where the config came from, to read it again on SIGHUP.
struct ConfigSource {
    path: PathBuf,
    explicit: bool,
}

async fn async_main(
    cli: Cli,
    source: ConfigSource,
    cfg: Arc<Config>,
    template: Template,
    consul: Consul,
) -> ExitCode {
    let metrics = Arc::new(Metrics::default());
    let mut engine = Engine::new(cfg.clone(), template, metrics.clone());

    if cli.dry_run || cli.once {
        let tree = match watch::fetch_once(&consul, &cfg.keys).await {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("reading Consul: {}", report(&e));
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        if cli.dry_run {
            return match engine.preview(&tree) {
                Ok(text) => {
                    let mut out = std::io::stdout().lock();
                    if out.write_all(text.as_bytes()).is_err() {
                        return ExitCode::from(EXIT_FAILURE);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!("{}", report(&e));
                    ExitCode::from(EXIT_FAILURE)
                }
            };
        }
        return match engine.cycle(&tree).await {
            Ok(r) => {
                tracing::info!(
                    written = r.written,
                    reloaded = r.executed.reloaded,
                    runtime_steps = r.executed.runtime_steps,
                    "done: {}",
                    r.plan
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(stage = e.stage(), "{}", report(&e));
                ExitCode::from(EXIT_FAILURE)
            }
        };
    }

    // Before anything else: SIGHUP's default action ends the process.
    let hangup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGHUP handler");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    let (reconfig_tx, reconfig_rx) = mpsc::channel(1);
    tasks.push(tokio::spawn(reload_on_sighup(
        hangup,
        source,
        reconfig_tx,
        metrics.clone(),
        cancel.clone(),
    )));
    if let Some(addr) = cfg.metrics_listen {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                tracing::info!(%addr, "serving /metrics");
                tasks.push(tokio::spawn(metrics::serve(
                    listener,
                    metrics.clone(),
                    consul.clone(),
                    cancel.clone(),
                )));
            }
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot bind the metrics listener");
                return ExitCode::from(EXIT_FAILURE);
            }
        }
    }
    if cfg.haproxy.master_socket.is_none() {
        tracing::warn!("no master_socket: after a reload, connections held by old HAProxy workers end only at hard-stop-after");
    }
    tasks.push(tokio::spawn(shutdown_on_signal(cancel.clone())));
    tracing::info!(
        prefix = cfg.keys.prefix(),
        config = %cfg.haproxy.config.display(),
        "watching Consul"
    );
    // Its own session and `proxy/<name>`, and the direct source checks for
    // when Consul is away (DESIGN.md rule 10).
    let contact = Contact::default();
    let poke = Arc::new(tokio::sync::Notify::new());
    let presence_stop = CancellationToken::new();
    let presence = tokio::spawn(presence::run(
        consul.clone(),
        cfg.keys.clone(),
        cfg.name.clone(),
        contact.clone(),
        engine.served(),
        presence_stop.clone(),
    ));
    tasks.push(tokio::spawn(fallback::run(
        cfg.source_check.clone(),
        contact.clone(),
        engine.served(),
        engine.overrides(),
        engine.haproxy(),
        poke.clone(),
        cancel.clone(),
    )));
    engine::run(engine, consul, reconfig_rx, contact, poke, cancel.clone()).await;
    // The proxy's key goes with its session now, not when the check expires.
    presence_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), presence).await;
    // Also when the loop ended on its own (its watches gone).
    systemd::stopping();
    cancel.cancel();
    for t in tasks {
        let _ = t.await;
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// SIGHUP: read the config file and template again and hand them to the
/// engine, which swaps them in only if they render the current state into a
/// config HAProxy accepts. Either way the daemon keeps running.
async fn reload_on_sighup(
    mut hangup: Signal,
    source: ConfigSource,
    tx: mpsc::Sender<Reconfig>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            got = hangup.recv() => if got.is_none() { return },
        }
        tracing::info!(config = %source.path.display(), "SIGHUP: reloading the config file and template");
        // RELOADING=1 now; the engine sends READY=1 once it has swapped the
        // new config in or refused it.
        systemd::reloading();
        match load(&source.path, source.explicit) {
            Ok((cfg, template)) => {
                if tx.send(Reconfig { cfg, template }).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                metrics.config_reload("failed");
                tracing::error!(
                    "config reload rejected, the running config and template stay: {e}"
                );
                systemd::reloaded();
            }
        }
    }
}

async fn shutdown_on_signal(cancel: CancellationToken) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing the current cycle"),
        _ = int.recv() => tracing::info!("SIGINT: finishing the current cycle"),
        _ = cancel.cancelled() => {}
    }
    systemd::stopping();
    cancel.cancel();
}
