//! `successover`, the operator CLI: a thin client of the KV contract
//! (DESIGN.md, "KV contract"; the types are in `successover_common`, and
//! this crate depends on nothing else of the project's). Everything it does can also be done with
//! `consul kv get/put/delete`; it adds validation, an overview, and a way to
//! follow a switchover live.
//!
//! Commands (global flags `--consul-addr`, `--prefix`, `--json`):
//!
//! - `status [<cluster>]`: see [`status`] for the JSON document.
//! - `switchover <cluster> [--to <node>] [--force] [--skip-catchup]
//!   [--max-lag <s>] [--at <time>] [--not-after <time>] [--wait]
//!   [--timeout <s>]`: see [`switchover`].
//! - `cancel <cluster>`: withdraws a pending or scheduled switch request.
//! - `plan <cluster>`: the failover plan; see [`plan`].
//! - `history <cluster> [-n <count>] [<id>]`: see [`history`].
//! - `fence <cluster> [--reason <text>]`, `unfence <cluster>`: see [`fence`].
//! - `drain <cluster> <node> [--undo] [--wait]`: see [`drain`].
//! - `rejoin <cluster> <node> [--wait] [--timeout <s>]`: see [`rejoin`].
//!
//! With `--json`, stdout carries one JSON document (shapes in each
//! module's doc); an error that stops a command prints nothing there, only
//! `error: …` on stderr. Warnings always go to stderr.
//!
//! Exit codes: 0 success (for `switchover --wait`: the switch is done);
//! 1 refused, aborted or failed, and errors talking to Consul; 2 usage
//! errors (bad flags, invalid names); 3 `switchover --wait` timed out.
//!
//! The ACL token comes only from `CONSUL_HTTP_TOKEN` or
//! `CONSUL_HTTP_TOKEN_FILE`, never from a flag: a flag would end up in shell
//! history and in `ps` output.

pub mod drain;
pub mod fence;
pub mod format;
pub mod history;
pub mod plan;
pub mod rejoin;
pub mod status;
pub mod switchover;

use std::fmt;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use successover_common::consul::{Consul, ConsulConfig, ConsulError, KvPair};
use successover_common::contract::{ClusterName, Keys, DEFAULT_PREFIX};

/// Exit statuses, part of the interface: scripts and CI jobs branch on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// Refused, aborted or failed; also an error talking to Consul.
    Failed = 1,
    Usage = 2,
    /// `switchover --wait` ran out of time; the request may still be
    /// pending or running.
    Timeout = 3,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

/// Why a command stopped early: the message for stderr and the exit code.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            exit: Exit::Usage,
            message: message.into(),
        }
    }

    pub fn failed(message: impl Into<String>) -> Failure {
        Failure {
            exit: Exit::Failed,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<ConsulError> for Failure {
    fn from(e: ConsulError) -> Failure {
        Failure::failed(error_chain(&e))
    }
}

/// An error with its sources, for one line on stderr: "cannot reach Consul"
/// alone does not say whether it was a refused connection or a TLS problem.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[derive(Parser, Debug)]
#[command(
    name = "successover",
    version,
    about = "Operator CLI for successover: status, switchover, history, fence/unfence",
    long_about = "Operator CLI for successover: a thin client of the KV contract in Consul.\n\
                  Exit codes: 0 ok, 1 refused/aborted/failed or a Consul error, \
                  2 usage error, 3 timeout of switchover --wait."
)]
pub struct Cli {
    /// Consul HTTP address (default: $CONSUL_HTTP_ADDR, else
    /// http://127.0.0.1:8500). The ACL token comes only from
    /// CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE.
    #[arg(long, global = true, value_name = "ADDR")]
    pub consul_addr: Option<String>,
    /// KV prefix every key lives under.
    #[arg(long, global = true, default_value = DEFAULT_PREFIX, value_name = "PREFIX")]
    pub prefix: String,
    /// Print one JSON document instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Source, fence, coordinator, nodes and any procedure under way, for
    /// one cluster or all.
    Status { cluster: Option<ClusterName> },
    /// Ask the coordinator for a planned switch (successover).
    Switchover(switchover::SwitchoverArgs),
    /// The failover plan: the node a failover would promote if the source
    /// died now, or why none would be (exit 1 then).
    Plan { cluster: ClusterName },
    /// Withdraw a pending or scheduled switch request (one the coordinator
    /// has not taken yet).
    Cancel { cluster: ClusterName },
    /// Past and running failovers and switchovers, newest first; with an
    /// id (an entry id or a request id), one entry in full.
    History {
        cluster: ClusterName,
        /// How many entries to list.
        #[arg(short = 'n', long = "limit", default_value_t = 10,
              value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        id: Option<String>,
    },
    /// Blackhole the cluster at every proxy (writes master/<cluster>/failed).
    Fence {
        cluster: ClusterName,
        /// Why, recorded in the key for whoever looks next.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Remove the fence (deletes master/<cluster>/failed). Refused while a
    /// procedure runs on the cluster, unless --force.
    Unfence {
        cluster: ClusterName,
        /// Unfence even while a switchover or failover is under way: its
        /// clients may then reach a server that is being demoted.
        #[arg(long)]
        force: bool,
    },
    /// Move the semi-sync ACK role off a node before taking it down (make
    /// before break: no commit waits); --undo ends the drain.
    Drain {
        cluster: ClusterName,
        node: String,
        /// End the drain (delete drain/<cluster>/<node>).
        #[arg(long)]
        undo: bool,
        /// Wait until the node holds no ACK role.
        #[arg(long)]
        wait: bool,
        /// Seconds to wait with --wait.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Bring a quarantined node back as a replica, if it holds nothing the
    /// source lacks; otherwise the answer is "rebuild required".
    Rejoin {
        cluster: ClusterName,
        node: String,
        /// Wait for the coordinator's answer.
        #[arg(long)]
        wait: bool,
        /// Seconds to wait with --wait.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
}

/// What every command needs.
pub struct Ctx {
    pub consul: Consul,
    pub keys: Keys,
    pub json: bool,
}

/// The Consul client settings: the environment Consul's own CLI reads, with
/// `--consul-addr` on top. A flag without a scheme gets https only when
/// `CONSUL_HTTP_SSL` says so, as with `consul -http-addr`.
pub fn consul_config(
    addr: Option<&str>,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<ConsulConfig, ConsulError> {
    let ssl = lookup("CONSUL_HTTP_SSL")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"));
    let mut cfg = ConsulConfig::from_lookup(lookup)?;
    if let Some(addr) = addr {
        let addr = addr.trim().trim_end_matches('/');
        cfg.addr = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.to_owned()
        } else if ssl {
            format!("https://{addr}")
        } else {
            format!("http://{addr}")
        };
    }
    // An operator at a prompt should hear about a wrong address within
    // seconds; a leader election (the case retries are for) takes less.
    cfg.retry_for = Duration::from_secs(5);
    Ok(cfg)
}

/// Entry point of the `successover` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return Exit::Failed.into();
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(exit) => exit.into(),
        Err(failure) => {
            eprintln!("error: {failure}");
            failure.exit.into()
        }
    }
}

pub async fn run(cli: Cli) -> Result<Exit, Failure> {
    let keys = Keys::new(&cli.prefix).map_err(|e| Failure::usage(format!("--prefix: {e}")))?;
    let cfg = consul_config(cli.consul_addr.as_deref(), |name| {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    })?;
    let ctx = Ctx {
        consul: Consul::new(cfg)?,
        keys,
        json: cli.json,
    };
    match cli.command {
        Command::Status { cluster } => status::run(&ctx, cluster.as_ref()).await,
        Command::Switchover(args) => switchover::run(&ctx, &args).await,
        Command::Cancel { cluster } => switchover::cancel(&ctx, &cluster).await,
        Command::Plan { cluster } => plan::run(&ctx, &cluster).await,
        Command::History { cluster, limit, id } => {
            history::run(&ctx, &cluster, limit as usize, id.as_deref()).await
        }
        Command::Fence { cluster, reason } => fence::fence(&ctx, &cluster, reason.as_deref()).await,
        Command::Unfence { cluster, force } => fence::unfence(&ctx, &cluster, force).await,
        Command::Drain {
            cluster,
            node,
            undo,
            wait,
            timeout,
        } => {
            drain::run(
                &ctx,
                &cluster,
                &node,
                undo,
                wait,
                Duration::from_secs(timeout),
            )
            .await
        }
        Command::Rejoin {
            cluster,
            node,
            wait,
            timeout,
        } => rejoin::run(&ctx, &cluster, &node, wait, Duration::from_secs(timeout)).await,
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// A JSON document as the commands print it.
pub fn json_text(value: &impl serde::Serialize) -> Result<String, Failure> {
    serde_json::to_string_pretty(value)
        .map_err(|e| Failure::failed(format!("cannot encode the JSON output: {e}")))
}

/// Prints a JSON document on stdout.
pub fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    println!("{}", json_text(value)?);
    Ok(())
}

/// Whether the contract knows the cluster: a `master` key, settings, or
/// an agent report. Writing a request or a fence for a mistyped name would
/// otherwise create a cluster nobody runs, and wait forever. Returns the
/// cluster's settings key, read on the way.
pub async fn ensure_known(ctx: &Ctx, cluster: &ClusterName) -> Result<Option<KvPair>, Failure> {
    let keys = &ctx.keys;
    let (master_key, settings_key) = (keys.master_key(cluster), keys.cluster_settings_key(cluster));
    let (master, settings) = tokio::try_join!(
        ctx.consul.kv_get(&master_key),
        ctx.consul.kv_get(&settings_key),
    )?;
    if master.is_some() || settings.is_some() {
        return Ok(settings);
    }
    let agents = ctx
        .consul
        .kv_keys(&keys.agent_cluster_prefix(cluster), None)
        .await?;
    if !agents.is_empty() {
        return Ok(None);
    }
    Err(Failure::failed(format!(
        "cluster {cluster} is unknown: there is no {}, no {} and no report under {}",
        keys.master_key(cluster),
        keys.cluster_settings_key(cluster),
        keys.agent_cluster_prefix(cluster)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("successover").chain(args.iter().copied()))
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse(&["status", "c1", "--json", "--consul-addr", "127.0.0.1:1"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.consul_addr.as_deref(), Some("127.0.0.1:1"));
        assert_eq!(cli.prefix, "mysql/");
        assert!(matches!(cli.command, Command::Status { cluster: Some(c) } if c.as_str() == "c1"));
        let cli = parse(&["--prefix", "dc1/db", "status"]).unwrap();
        assert_eq!(cli.prefix, "dc1/db");
    }

    #[test]
    fn invalid_names_are_usage_errors() {
        for args in [
            &["status", "c 1"][..],
            &["fence", "c1\nx"],
            &["switchover", "c1", "--to", "db2;"],
            &["history", "-c1"],
            &["history", "c1", "-n", "0"],
            &["switchover", "c1", "--timeout", "0"],
            &["rejoin", "c1"],
            &["switchover"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        }
        // The message says what is wrong with the name.
        let err = parse(&["status", "c 1"]).unwrap_err().to_string();
        assert!(err.contains("character ' ' at byte 1"), "{err}");
    }

    #[tokio::test]
    async fn bad_prefix_is_a_usage_error_before_any_request() {
        let cli = parse(&[
            "--prefix",
            "/mysql",
            "--consul-addr",
            "127.0.0.1:1",
            "status",
        ])
        .unwrap();
        let err = run(cli).await.unwrap_err();
        assert_eq!(err.exit, Exit::Usage);
        assert!(err.message.starts_with("--prefix: prefix must be"), "{err}");
    }

    #[test]
    fn no_token_flag() {
        assert!(parse(&["status", "--token", "x"]).is_err());
        assert!(parse(&["status", "--consul-token", "x"]).is_err());
    }

    #[test]
    fn consul_address_from_flag_or_environment() {
        let env = |vars: &[(&str, &str)]| {
            let map: HashMap<String, String> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            move |name: &str| map.get(name).cloned()
        };
        let c = consul_config(None, env(&[("CONSUL_HTTP_ADDR", "c:8500")])).unwrap();
        assert_eq!(c.addr, "http://c:8500");
        let c = consul_config(Some("d:8500/"), env(&[("CONSUL_HTTP_ADDR", "c:8500")])).unwrap();
        assert_eq!(c.addr, "http://d:8500");
        let c = consul_config(Some("d:8501"), env(&[("CONSUL_HTTP_SSL", "true")])).unwrap();
        assert_eq!(c.addr, "https://d:8501");
        let c = consul_config(Some("https://e:8501"), env(&[])).unwrap();
        assert_eq!(c.addr, "https://e:8501");
        // The token still comes from the environment when the address is a flag.
        let c = consul_config(Some("d:8500"), env(&[("CONSUL_HTTP_TOKEN", "t0k")])).unwrap();
        assert_eq!(c.token.unwrap().expose(), "t0k");
    }

    #[test]
    fn error_chain_adds_sources_once() {
        #[derive(Debug)]
        struct Inner;
        impl fmt::Display for Inner {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("connection refused")
            }
        }
        impl std::error::Error for Inner {}
        #[derive(Debug)]
        struct Outer(Inner);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("kv get k: cannot reach Consul")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        assert_eq!(
            error_chain(&Outer(Inner)),
            "kv get k: cannot reach Consul: connection refused"
        );
    }
}
