//! Consul agents: a single dev-mode agent, or a three-server cluster whose
//! leader can be killed.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::ports::{reserve_port, PortLease};
use crate::process::{dump_on_panic, Proc, Scratch};
use crate::{bins, wait_for};

/// Generous: two cores may be busy starting MariaDB servers at the same time.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const LOG_LINES: usize = 40;

static INSTANCE: AtomicUsize = AtomicUsize::new(0);

fn next_instance() -> usize {
    INSTANCE.fetch_add(1, Ordering::Relaxed)
}

fn http_client() -> reqwest::Client {
    http_client_with(None)
}

/// With `token`, every request carries it: an agent with ACLs that deny by
/// default answers nothing to anonymous readiness checks.
fn http_client_with(token: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        headers.insert(
            "X-Consul-Token",
            reqwest::header::HeaderValue::from_str(t).expect("token is a header value"),
        );
    }
    reqwest::Client::builder()
        // An HTTP(S)_PROXY in the environment must not capture loopback calls.
        .no_proxy()
        .default_headers(headers)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("building an HTTP client")
}

/// Options for [`ConsulDev::start_with`].
#[derive(Debug, Clone, Default)]
pub struct ConsulDevOptions {
    /// Addresses the HTTP API listens on besides 127.0.0.1, e.g. a
    /// [`crate::NetHost::host_side_addr`] so agents inside namespace hosts
    /// reach Consul. They must exist before the agent starts.
    pub extra_client_addrs: Vec<IpAddr>,
    /// More agent configuration (HCL), in a second config file that Consul
    /// merges over the harness's: ACLs, TLS, an HTTPS port.
    pub extra_hcl: Option<String>,
    /// The token the harness's own readiness checks send (with ACLs on).
    pub token: Option<String>,
}

/// One `consul agent` process with its own ports.
#[derive(Debug)]
struct Agent {
    name: String,
    http: PortLease,
    serf_lan: PortLease,
    serf_wan: PortLease,
    server: PortLease,
    config: PathBuf,
    log: PathBuf,
    dev: bool,
    extra_config: Option<PathBuf>,
    proc: Option<Proc>,
}

impl Agent {
    fn new(name: String, dir: &Path, dev: bool) -> Agent {
        Agent {
            config: dir.join(format!("{name}.hcl")),
            log: dir.join(format!("{name}.log")),
            name,
            http: reserve_port(),
            serf_lan: reserve_port(),
            serf_wan: reserve_port(),
            server: reserve_port(),
            dev,
            extra_config: None,
            proc: None,
        }
    }

    fn http_addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.http.port())
    }

    /// The common part of the agent configuration. Update checks and
    /// anonymous signatures are off: tests must not talk to anything beyond
    /// this machine. gRPC and DNS are off: nothing uses them, and every
    /// listener is another port that can collide.
    fn base_config(&self, extra_client_addrs: &[IpAddr]) -> String {
        let mut client = String::from("127.0.0.1");
        for addr in extra_client_addrs {
            let _ = write!(client, " {addr}");
        }
        format!(
            r#"node_name = "{name}"
datacenter = "dc1"
bind_addr = "127.0.0.1"
advertise_addr = "127.0.0.1"
client_addr = "{client}"
ports {{
  http = {http}
  https = -1
  grpc = -1
  grpc_tls = -1
  dns = -1
  serf_lan = {serf_lan}
  serf_wan = {serf_wan}
  server = {server}
}}
disable_update_check = true
disable_anonymous_signature = true
enable_script_checks = false
log_level = "INFO"
# Every agent and renderer of every test here comes from 127.0.0.1, each
# holding a blocking query per watched prefix: far more than one host's
# share (Consul's default is 200 connections per client address).
limits {{
  http_max_conns_per_client = 5000
}}
"#,
            name = self.name,
            http = self.http.port(),
            serf_lan = self.serf_lan.port(),
            serf_wan = self.serf_wan.port(),
            server = self.server.port(),
        )
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = std::process::Command::new(bins::consul());
        cmd.arg("agent");
        if self.dev {
            cmd.arg("-dev");
        }
        cmd.arg(format!("-config-file={}", self.config.display()));
        if let Some(extra) = &self.extra_config {
            cmd.arg(format!("-config-file={}", extra.display()));
        }
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .and_then(|mut f| {
                use std::io::Write;
                writeln!(f, "===== successover-tests: starting {} =====", self.name)
            });
        self.proc = Some(Proc::spawn(&self.name, cmd, &self.log).await?);
        Ok(())
    }

    fn is_running(&self) -> bool {
        self.proc.as_ref().is_some_and(|p| !p.has_exited())
    }

    fn log_tail(&self) -> String {
        crate::process::log_tail(&self.log, LOG_LINES)
    }

    /// Fails fast with the log tail when the process has died, so a bad flag
    /// does not cost the whole start timeout.
    fn check_alive(&self) -> anyhow::Result<()> {
        if !self.is_running() {
            bail!(
                "consul agent {} exited; last lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
        Ok(())
    }
}

/// The leader as `/v1/status/leader` reports it (`"127.0.0.1:8300"`); empty
/// while there is none.
async fn leader_of(client: &reqwest::Client, http_addr: &str) -> anyhow::Result<String> {
    let url = format!("{http_addr}/v1/status/leader");
    let resp = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body = resp.text().await.with_context(|| format!("GET {url}"))?;
    if !status.is_success() {
        bail!("GET {url}: {status}: {body}");
    }
    serde_json::from_str::<String>(&body).with_context(|| format!("GET {url}: body {body:?}"))
}

async fn kv_put_works(client: &reqwest::Client, http_addr: &str, key: &str) -> bool {
    let url = format!("{http_addr}/v1/kv/successover-harness/{key}");
    match client.put(&url).body("ready").send().await {
        Ok(resp) if resp.status().is_success() => {
            resp.text().await.is_ok_and(|b| b.trim() == "true")
        }
        _ => false,
    }
}

/// Whether a session can be created: a server that has a leader and takes
/// KV writes may not have registered its own node yet, and sessions need
/// it ("Missing node registration").
async fn sessions_work(client: &reqwest::Client, http_addr: &str) -> bool {
    let create = client
        .put(format!("{http_addr}/v1/session/create"))
        .body(r#"{"TTL": "10s", "Name": "successover-harness-ready"}"#)
        .send()
        .await;
    let Ok(resp) = create else { return false };
    if !resp.status().is_success() {
        return false;
    }
    let Ok(body) = resp.json::<serde_json::Value>().await else {
        return false;
    };
    let Some(id) = body["ID"].as_str() else {
        return false;
    };
    let _ = client
        .put(format!("{http_addr}/v1/session/destroy/{id}"))
        .send()
        .await;
    true
}

/// A single `consul agent -dev` (in-memory server, elects itself).
#[derive(Debug)]
pub struct ConsulDev {
    agent: Agent,
    token: Option<String>,
    // Dropped after `agent`, whose process writes into it.
    dir: Scratch,
}

impl ConsulDev {
    /// Starts an agent on 127.0.0.1 and waits until it has a leader and
    /// accepts a KV write. Panics (with the log tail) if it does not within
    /// 60 s.
    pub async fn start() -> ConsulDev {
        Self::start_with(ConsulDevOptions::default()).await
    }

    pub async fn start_with(opts: ConsulDevOptions) -> ConsulDev {
        let dir = Scratch::new("consul");
        let name = format!("so-dev-{}-{}", std::process::id(), next_instance());
        let mut agent = Agent::new(name, dir.path(), true);
        let config = agent.base_config(&opts.extra_client_addrs);
        std::fs::write(&agent.config, config)
            .unwrap_or_else(|e| panic!("writing {}: {e}", agent.config.display()));
        if let Some(hcl) = &opts.extra_hcl {
            let path = dir.path().join("extra.hcl");
            std::fs::write(&path, hcl)
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            agent.extra_config = Some(path);
        }
        if let Err(e) = agent.spawn().await {
            panic!("starting consul dev agent: {e:#}");
        }
        let dev = ConsulDev {
            agent,
            dir,
            token: opts.token.clone(),
        };
        if let Err(e) = dev.wait_ready().await {
            panic!(
                "consul dev agent {} did not become ready: {e:#}",
                dev.agent.name
            );
        }
        tracing::info!(
            name = dev.agent.name,
            http = dev.http_addr(),
            "consul dev agent ready"
        );
        dev
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let client = http_client_with(self.token.as_deref());
        let addr = self.http_addr();
        let last_error = Mutex::new(String::new());
        let result = wait_for(START_TIMEOUT, || {
            let client = &client;
            let addr = &addr;
            let last_error = &last_error;
            async move {
                if let Err(e) = self.agent.check_alive() {
                    return Some(Err(e));
                }
                match leader_of(client, addr).await {
                    Ok(leader) if !leader.is_empty() => {
                        if !kv_put_works(client, addr, "ready").await {
                            *last_error.lock().unwrap() = "KV put did not succeed".into();
                        } else if !sessions_work(client, addr).await {
                            *last_error.lock().unwrap() = "no session could be created".into();
                        } else {
                            return Some(Ok(()));
                        }
                    }
                    Ok(_) => *last_error.lock().unwrap() = "no leader yet".into(),
                    Err(e) => *last_error.lock().unwrap() = format!("{e:#}"),
                }
                None
            }
        })
        .await;
        match result {
            Ok(r) => r,
            Err(t) => bail!(
                "{t} (last: {}); last lines of {}:\n{}",
                last_error.lock().unwrap(),
                self.agent.log.display(),
                self.agent.log_tail()
            ),
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn http_addr(&self) -> String {
        self.agent.http_addr()
    }

    pub fn http_port(&self) -> u16 {
        self.agent.http.port()
    }

    pub fn node_name(&self) -> &str {
        &self.agent.name
    }

    pub fn pid(&self) -> u32 {
        self.agent.proc.as_ref().map_or(0, Proc::pid)
    }

    pub fn log_path(&self) -> &Path {
        &self.agent.log
    }

    pub fn log_tail(&self) -> String {
        self.agent.log_tail()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ConsulDev {
    fn drop(&mut self) {
        dump_on_panic(&self.agent.name, &[&self.agent.log]);
    }
}

/// A Consul datacenter of server agents on 127.0.0.1 with tight Raft timing
/// (`raft_multiplier = 1`), for leader-loss tests.
#[derive(Debug)]
pub struct ConsulCluster {
    nodes: Vec<Agent>,
    client: reqwest::Client,
    // Dropped after `nodes`, whose processes write into it.
    dir: Scratch,
}

impl ConsulCluster {
    /// Starts `n` servers (`bootstrap_expect = n`) that join each other, and
    /// waits until they agree on a leader and accept KV writes. Panics (with
    /// the log tails) if that takes more than 60 s.
    pub async fn start(n: usize) -> ConsulCluster {
        assert!(n >= 1, "a Consul cluster needs at least one server");
        let dir = Scratch::new("consul-cluster");
        let id = format!("so-c{}-{}", std::process::id(), next_instance());
        let nodes: Vec<Agent> = (0..n)
            .map(|i| Agent::new(format!("{id}-{i}"), dir.path(), false))
            .collect();
        for (i, node) in nodes.iter().enumerate() {
            let data_dir = dir.path().join(format!("data-{i}"));
            std::fs::create_dir_all(&data_dir)
                .unwrap_or_else(|e| panic!("creating {}: {e}", data_dir.display()));
            let join: Vec<String> = nodes
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, other)| format!("\"127.0.0.1:{}\"", other.serf_lan.port()))
                .collect();
            let mut config = node.base_config(&[]);
            let _ = write!(
                config,
                r#"server = true
bootstrap_expect = {n}
data_dir = "{data_dir}"
retry_join = [{join}]
retry_interval = "1s"
leave_on_terminate = false
skip_leave_on_interrupt = true
performance {{
  raft_multiplier = 1
}}
"#,
                data_dir = data_dir.display(),
                join = join.join(", "),
            );
            std::fs::write(&node.config, config)
                .unwrap_or_else(|e| panic!("writing {}: {e}", node.config.display()));
        }
        let mut cluster = ConsulCluster {
            nodes,
            client: http_client(),
            dir,
        };
        for i in 0..n {
            if let Err(e) = cluster.nodes[i].spawn().await {
                panic!("starting consul server {i}: {e:#}");
            }
        }
        if let Err(e) = cluster.try_wait_for_leader().await {
            panic!("consul cluster {id} did not elect a leader: {e:#}");
        }
        tracing::info!(id, http = ?cluster.http_addrs(), "consul cluster ready");
        cluster
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// `http://127.0.0.1:PORT` of every server, stopped ones included.
    pub fn http_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(Agent::http_addr).collect()
    }

    pub fn http_addr(&self, i: usize) -> String {
        self.nodes[i].http_addr()
    }

    pub fn node_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].is_running()
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].proc.as_ref().map(Proc::pid)
    }

    pub fn log_tail(&self, i: usize) -> String {
        self.nodes[i].log_tail()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The leader the running servers agree on right now, if they do.
    pub async fn current_leader(&self) -> Option<usize> {
        self.agreed_leader().await.ok()
    }

    /// The leader the running servers agree on; waits (up to 60 s) while an
    /// election is in progress. Panics if none emerges.
    pub async fn leader_index(&self) -> usize {
        let last = Mutex::new(String::new());
        let result = wait_for(START_TIMEOUT, || {
            let last = &last;
            async move {
                match self.agreed_leader().await {
                    Ok(i) => Some(i),
                    Err(e) => {
                        *last.lock().unwrap() = format!("{e:#}");
                        None
                    }
                }
            }
        })
        .await;
        result.unwrap_or_else(|t| panic!("{}", self.describe_failure(t, &last.lock().unwrap())))
    }

    /// Waits until the running servers agree on a running leader and a KV
    /// write succeeds through every running server; returns the leader.
    pub async fn wait_for_leader(&self) -> usize {
        self.try_wait_for_leader()
            .await
            .unwrap_or_else(|e| panic!("consul cluster: no usable leader: {e:#}"))
    }

    async fn try_wait_for_leader(&self) -> anyhow::Result<usize> {
        let last = Mutex::new(String::new());
        let result = wait_for(START_TIMEOUT, || {
            let last = &last;
            async move {
                let leader = match self.agreed_leader().await {
                    Ok(i) => i,
                    Err(e) => {
                        *last.lock().unwrap() = format!("{e:#}");
                        return None;
                    }
                };
                for (i, node) in self.nodes.iter().enumerate() {
                    if node.is_running()
                        && !kv_put_works(&self.client, &node.http_addr(), "ready").await
                    {
                        *last.lock().unwrap() = format!(
                            "leader is server {leader}, but a KV put via server {i} failed"
                        );
                        return None;
                    }
                }
                Some(leader)
            }
        })
        .await;
        result.map_err(|t| anyhow::anyhow!(self.describe_failure(t, &last.lock().unwrap())))
    }

    fn describe_failure(&self, t: crate::TimedOut, last: &str) -> String {
        let mut msg = format!("{t}; last: {last}");
        for node in &self.nodes {
            let _ = write!(
                msg,
                "\n--- {} ({}), last lines of {}:\n{}",
                node.name,
                if node.is_running() {
                    "running"
                } else {
                    "stopped"
                },
                node.log.display(),
                node.log_tail()
            );
        }
        msg
    }

    /// Asks every running server for the leader; succeeds only if all name
    /// the same running server. A server that was just killed is still named
    /// by the others until they time it out, and must not count.
    async fn agreed_leader(&self) -> anyhow::Result<usize> {
        let mut agreed: Option<usize> = None;
        let mut asked = 0;
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.is_running() {
                continue;
            }
            asked += 1;
            let leader = leader_of(&self.client, &node.http_addr())
                .await
                .with_context(|| format!("asking server {i} ({})", node.name))?;
            if leader.is_empty() {
                bail!("server {i} ({}) knows no leader", node.name);
            }
            let idx = self
                .index_of_server_addr(&leader)
                .with_context(|| format!("server {i} names unknown leader {leader}"))?;
            if !self.nodes[idx].is_running() {
                bail!("server {i} still names stopped server {idx} as leader");
            }
            match agreed {
                Some(a) if a != idx => bail!("servers disagree on the leader ({a} vs {idx})"),
                _ => agreed = Some(idx),
            }
        }
        match agreed {
            Some(i) => Ok(i),
            None if asked == 0 => bail!("no server is running"),
            None => bail!("no leader"),
        }
    }

    fn index_of_server_addr(&self, addr: &str) -> Option<usize> {
        let port: u16 = addr.rsplit_once(':')?.1.parse().ok()?;
        self.nodes.iter().position(|n| n.server.port() == port)
    }

    /// Moves Raft leadership to server `i` (if it does not lead already)
    /// and waits until every running server agrees on it. Tests that point
    /// their clients at followers use it so an election during setup cannot
    /// turn "the leader stops" into "a client's only server stops".
    pub async fn make_leader(&self, i: usize) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            match self.agreed_leader().await {
                Ok(l) if l == i => return Ok(()),
                Ok(_) => {
                    if let Err(e) = self.request_transfer(i).await {
                        last = format!("{e:#}");
                    }
                }
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("server {i} did not become the Consul leader; last: {last}")
    }

    async fn request_transfer(&self, i: usize) -> anyhow::Result<()> {
        let via = self.http_addr(i);
        let url = format!("{via}/v1/operator/raft/configuration");
        let conf: serde_json::Value = self
            .client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?
            .error_for_status()
            .with_context(|| format!("GET {url}"))?
            .json()
            .await
            .with_context(|| format!("GET {url}"))?;
        let id = conf["Servers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| {
                s["Address"]
                    .as_str()
                    .and_then(|a| self.index_of_server_addr(a))
                    == Some(i)
            })
            .and_then(|s| s["ID"].as_str())
            .with_context(|| format!("server {i} is not in the Raft configuration: {conf}"))?
            .to_owned();
        let url = format!("{via}/v1/operator/raft/transfer-leader?id={id}");
        let resp = self
            .client
            .post(&url)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            bail!("POST {url}: {status}: {body}");
        }
        Ok(())
    }

    /// SIGKILLs the current leader (a crash, not a graceful leave) and
    /// returns its index. Use [`ConsulCluster::wait_for_leader`] for the new one.
    pub async fn stop_leader(&mut self) -> usize {
        let leader = self.leader_index().await;
        self.kill_node(leader).await;
        leader
    }

    /// SIGKILLs server `i`.
    pub async fn kill_node(&mut self, i: usize) {
        if let Some(proc) = self.nodes[i].proc.as_mut() {
            proc.kill9().await;
        }
        tracing::info!(node = self.nodes[i].name, "consul server killed");
    }

    /// Stops server `i` gracefully (SIGTERM; it does not leave the cluster,
    /// as `leave_on_terminate = false`).
    pub async fn stop_node(&mut self, i: usize) {
        if let Some(proc) = self.nodes[i].proc.as_mut() {
            proc.stop().await;
        }
        tracing::info!(node = self.nodes[i].name, "consul server stopped");
    }

    /// Starts stopped server `i` again with its data dir and ports; it
    /// rejoins the others by itself. Panics if it dies at once.
    pub async fn start_node(&mut self, i: usize) {
        assert!(
            !self.nodes[i].is_running(),
            "consul server {i} ({}) is already running",
            self.nodes[i].name
        );
        if let Err(e) = self.nodes[i].spawn().await {
            panic!("restarting consul server {i}: {e:#}");
        }
        let node = &self.nodes[i];
        let client = &self.client;
        let started = wait_for(START_TIMEOUT, || async move {
            if let Err(e) = node.check_alive() {
                return Some(Err(e));
            }
            leader_of(client, &node.http_addr())
                .await
                .ok()
                .filter(|l| !l.is_empty())
                .map(|_| Ok(()))
        })
        .await;
        match started {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("restarting consul server {i}: {e:#}"),
            Err(t) => panic!(
                "restarted consul server {i} ({}) found no leader: {t}; last lines of its log:\n{}",
                node.name,
                node.log_tail()
            ),
        }
    }
}

impl Drop for ConsulCluster {
    fn drop(&mut self) {
        let logs: Vec<&Path> = self.nodes.iter().map(|n| n.log.as_path()).collect();
        dump_on_panic("consul cluster", &logs);
    }
}
