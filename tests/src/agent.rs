//! Runs the real `successover-agent` binary against a harness MariaDB and
//! Consul, the way a database host runs it under systemd.

use std::path::PathBuf;
use std::process::Command;

use crate::mariadb::{MariaDb, REPL_PASSWORD, REPL_USER, ROOT_PASSWORD, ROOT_USER};
use crate::process::{Proc, Scratch};

/// A binary of this workspace, built by `cargo build --workspace --bins`
/// (scripts/test.sh does that before running the tests).
pub fn workspace_bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("debug").join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub cluster: String,
    pub node: String,
    pub consul_addr: String,
    pub tick_ms: u64,
    pub session_ttl_s: u64,
    pub lock_delay_ms: u64,
    pub prefix: String,
    /// Run the agent inside this network namespace (see
    /// [`crate::NetHost::ns_name`]); `consul_addr` must then be one Consul
    /// listens on and the namespace can reach (its `host_side_addr`).
    pub netns: Option<String>,
}

impl AgentOptions {
    pub fn new(cluster: &str, node: &str, consul_addr: &str) -> Self {
        AgentOptions {
            cluster: cluster.to_owned(),
            node: node.to_owned(),
            consul_addr: consul_addr.to_owned(),
            tick_ms: 300,
            session_ttl_s: 10,
            lock_delay_ms: 500,
            prefix: "mysql/".to_owned(),
            netns: None,
        }
    }
}

pub struct AgentProc {
    pub opts: AgentOptions,
    proc: Proc,
    config: PathBuf,
    _dir: Scratch,
}

impl AgentProc {
    pub async fn start(opts: AgentOptions, db: &MariaDb) -> AgentProc {
        let dir = Scratch::new(&format!("agent-{}", opts.node));
        let pw = dir.path().join("mysql.pw");
        let repl_pw = dir.path().join("repl.pw");
        std::fs::write(&pw, format!("{ROOT_PASSWORD}\n")).expect("write password file");
        std::fs::write(&repl_pw, format!("{REPL_PASSWORD}\n")).expect("write password file");
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                r#"cluster = "{cluster}"
node = "{node}"
prefix = "{prefix}"

[mysql]
host = "{host}"
port = {port}
advertise_host = "{host}"
user = "{ROOT_USER}"
password_file = "{pw}"
replication_user = "{REPL_USER}"
replication_password_file = "{repl_pw}"
connect_timeout_ms = 1000
query_timeout_ms = 3000
read_timeout_ms = 1000

[consul]
addr = "{consul}"

[timing]
tick_ms = {tick}
session_ttl_s = {ttl}
lock_delay_ms = {delay}
report_heartbeat_s = 30
"#,
                cluster = opts.cluster,
                node = opts.node,
                prefix = opts.prefix,
                host = db.host(),
                port = db.port(),
                pw = pw.display(),
                repl_pw = repl_pw.display(),
                consul = opts.consul_addr,
                tick = opts.tick_ms,
                ttl = opts.session_ttl_s,
                delay = opts.lock_delay_ms,
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
        let log = dir.path().join("agent.log");
        let proc = Proc::spawn(format!("agent {}", opts.node), cmd, &log)
            .await
            .expect("spawn successover-agent");
        AgentProc {
            opts,
            proc,
            config,
            _dir: dir,
        }
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
