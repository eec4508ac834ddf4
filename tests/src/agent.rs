//! Runs the real `successover-agent` binary against a harness MariaDB and
//! Consul, the way a database host runs it under systemd.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::mariadb::{MariaDb, REPL_PASSWORD, REPL_USER, ROOT_PASSWORD, ROOT_USER};
use crate::process::{Proc, Scratch};

/// A binary of this workspace, built by `cargo build --workspace --bins`
/// (scripts/test.sh does that before running the tests).
pub fn workspace_bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    // SUCCESSOVER_PROFILE=release: the benchmarks measure the release
    // build, as users run it.
    let profile = std::env::var("SUCCESSOVER_PROFILE").unwrap_or_else(|_| "debug".into());
    let path = target.join(&profile).join(name);
    let build = if profile == "release" {
        "cargo build --release --workspace --bins"
    } else {
        "cargo build --workspace --bins"
    };
    assert!(
        path.exists(),
        "{} not found: run `{build}` first (scripts/test.sh does the debug build){}",
        path.display(),
        crate::bins::package_of(name)
            .map(|p| format!("; it comes from package {p}"))
            .unwrap_or_default()
    );
    path
}

/// SUCCESSOVER_AGENT_TIMING=defaults: agents run with no `[timing]`
/// section and no MySQL timeouts, i.e. the daemon's defaults, which are
/// what the Ansible role ships (tick 1 s, probe 250 ms, session TTL 10 s,
/// lock delay 1 s, connect 2 s, query 5 s, read 2 s). For benchmarks; the
/// tests keep their faster timing.
pub fn shipped_timing() -> bool {
    std::env::var("SUCCESSOVER_AGENT_TIMING").is_ok_and(|v| v == "defaults")
}

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub cluster: String,
    pub node: String,
    pub consul_addr: String,
    pub tick: Duration,
    pub session_ttl: Duration,
    pub lock_delay: Duration,
    pub prefix: String,
    /// Run the agent inside this network namespace (see
    /// [`crate::NetHost::ns_name`]); `consul_addr` must then be one Consul
    /// listens on and the namespace can reach (its `host_side_addr`).
    pub netns: Option<String>,
    /// The MySQL account the agent uses, (user, password); default root.
    pub account: Option<(String, String)>,
    /// The address the agent advertises for its server (default the
    /// server's own): a [`crate::relay::Relay`]'s, so that the other agents
    /// reach it through a path the test can cut.
    pub advertise: Option<std::net::SocketAddr>,
    /// The daemon's defaults, as [`shipped_timing`] gives every agent: for
    /// a test whose claim is about the shipped configuration.
    pub shipped: bool,
    /// `[history] keep`, when not the daemon's default.
    pub history_keep: Option<u32>,
}

impl AgentOptions {
    pub fn new(cluster: &str, node: &str, consul_addr: &str) -> Self {
        AgentOptions {
            cluster: cluster.to_owned(),
            node: node.to_owned(),
            consul_addr: consul_addr.to_owned(),
            tick: Duration::from_millis(300),
            session_ttl: Duration::ZERO,
            lock_delay: Duration::from_millis(500),
            prefix: "mysql/".to_owned(),
            netns: None,
            account: None,
            advertise: None,
            shipped: false,
            history_keep: None,
        }
    }
}

pub struct AgentProc {
    pub opts: AgentOptions,
    /// Where the agent serves `/metrics` (agents on loopback only).
    pub metrics_port: Option<crate::ports::PortLease>,
    proc: Proc,
    config: PathBuf,
    _dir: Scratch,
}

impl AgentProc {
    pub async fn start(opts: AgentOptions, db: &MariaDb) -> AgentProc {
        let dir = Scratch::new(&format!("agent-{}", opts.node));
        let pw = dir.path().join("mysql.pw");
        let repl_pw = dir.path().join("repl.pw");
        let (user, password) = opts
            .account
            .clone()
            .unwrap_or_else(|| (ROOT_USER.to_owned(), ROOT_PASSWORD.to_owned()));
        std::fs::write(&pw, format!("{password}\n")).expect("write password file");
        let shipped = opts.shipped || shipped_timing();
        let metrics_port = opts.netns.is_none().then(crate::ports::reserve_port);
        std::fs::write(&repl_pw, format!("{REPL_PASSWORD}\n")).expect("write password file");
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                r#"cluster = "{cluster}"
node = "{node}"

[kv]
prefix = "{prefix}"

[mysql]
host = "{host}"
port = {port}
advertise_host = "{advertise_host}"
advertise_port = {advertise_port}
user = "{user}"
password_file = "{pw}"
replication_user = "{REPL_USER}"
replication_password_file = "{repl_pw}"
{tls}{timeouts}
[consul]
address = "{consul}"
{metrics}
{timing}{history}"#,
                metrics = metrics_port
                    .as_ref()
                    .map(|p| format!("\n[metrics]\nlisten = \"127.0.0.1:{}\"\n", p.port()))
                    .unwrap_or_default(),
                history = opts
                    .history_keep
                    .map(|n| format!("\n[history]\nkeep = {n}\n"))
                    .unwrap_or_default(),
                cluster = opts.cluster,
                node = opts.node,
                prefix = opts.prefix,
                host = db.host(),
                port = db.port(),
                advertise_host = opts.advertise.map_or(db.host(), |a| a.ip()),
                advertise_port = opts.advertise.map_or(db.port(), |a| a.port()),
                pw = pw.display(),
                repl_pw = repl_pw.display(),
                // The harness runs MariaDB 11.4 without TLS (see
                // `MariaDb::args`), and 11.4 replicas ask for it by default.
                tls = if db.flavour() == crate::Flavour::MariaDb114 {
                    "replication_tls = false\n"
                } else {
                    ""
                },
                consul = opts.consul_addr,
                timeouts = if shipped {
                    String::new()
                } else {
                    "connect_timeout = \"1s\"\nquery_timeout = \"3s\"\nread_timeout = \"1s\"\n"
                        .to_owned()
                },
                timing = if shipped {
                    String::new()
                } else {
                    format!(
                        // A loaded test machine stretches every round trip:
                        // a switch's limits get room so a test sees a switch,
                        // not the machine's load.
                        "[timing]\ntick = \"{}\"\nsession_ttl = \"{}\"\nlock_delay = \"{}\"\nreport_heartbeat = \"60s\"\n\
                         [switchover]\nconverge_lag = \"500ms\"\ncatch_up_timeout = \"5s\"\n",
                        humantime::format_duration(opts.tick),
                        humantime::format_duration(opts.session_ttl),
                        humantime::format_duration(opts.lock_delay),
                    )
                },
            ),
        )
        .expect("write agent config");
        let mut cmd = match &opts.netns {
            Some(ns) => {
                let mut c = Command::new(crate::bins::ip());
                c.args(["netns", "exec", ns])
                    .arg(workspace_bin("successover-agent"));
                c
            }
            None => Command::new(workspace_bin("successover-agent")),
        };
        cmd.arg("--config").arg(&config);
        cmd.env("RUST_LOG", "info,successover_agent=debug");
        // The node's instance lock lives in the runtime directory (/tmp
        // without one). Test processes reuse cluster names, so two test
        // runs at once (two checkouts on one machine) would refuse each
        // other's agents; each test process gets its own directory, shared
        // by its agents so a second agent for a node still meets the lock.
        cmd.env("RUNTIME_DIRECTORY", runtime_dir());
        let log = dir.path().join("agent.log");
        let proc = Proc::spawn(format!("agent {}", opts.node), cmd, &log)
            .await
            .expect("spawn successover-agent");
        AgentProc {
            opts,
            metrics_port,
            proc,
            config,
            _dir: dir,
        }
    }

    /// The agent's `/metrics` text; `None` for an agent in a namespace or
    /// one that does not answer.
    pub async fn metrics(&self) -> Option<String> {
        let port = self.metrics_port.as_ref()?.port();
        scrape(port).await
    }

    /// `GET /ready` on the metrics listener: (status, body).
    pub async fn ready(&self) -> Option<(u16, String)> {
        let port = self.metrics_port.as_ref()?.port();
        let r = reqwest::get(format!("http://127.0.0.1:{port}/ready"))
            .await
            .ok()?;
        let status = r.status().as_u16();
        Some((status, r.text().await.ok()?))
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }

    pub fn log_path(&self) -> &std::path::Path {
        self.proc.log_path()
    }

    pub async fn kill9(&mut self) {
        self.proc.kill9().await;
    }

    /// SIGTERM and wait: the agent releases its lock and destroys its
    /// session on the way out.
    pub async fn stop(&mut self) {
        self.proc.stop().await;
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }
}

/// `RUNTIME_DIRECTORY` of the agents this test process starts: where their
/// instance locks are.
pub fn runtime_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("successover-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the agents' runtime directory");
        dir
    })
}

/// `successover_consul_requests_total{op="…"} N` lines → op → N.
pub fn parse_consul_requests(text: &str) -> std::collections::BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("successover_consul_requests_total{op=\""))
        .filter_map(|l| {
            let (op, rest) = l.split_once("\"}")?;
            Some((op.to_owned(), rest.trim().parse().ok()?))
        })
        .collect()
}

/// `GET /metrics` on 127.0.0.1:`port`.
pub async fn scrape(port: u16) -> Option<String> {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()
}
