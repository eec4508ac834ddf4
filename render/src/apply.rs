//! Making HAProxy serve the model: the runtime API where it can (source
//! change, fence toggle: milliseconds, no reload), a reload where it must
//! (listen blocks added, removed or rebound).
//!
//! The plan compares the model with what the running worker reports
//! (`show servers state`) rather than with what the renderer last wrote, so
//! a failed apply, a renderer restart or a hand-made change all converge on
//! the next cycle.
//!
//! Connections to a source that is no longer the published one are always
//! cut, in every HAProxy process: the current worker with `shutdown
//! sessions server`, and old workers that survive a reload through the
//! master CLI. Old workers refuse `shutdown sessions server` in HAProxy 2.6
//! ("Proxy is disabled."), so there each session is shut down by id.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::{sleep, timeout, Instant};

/// The server every listen block must name, so the runtime API can find it.
pub const SERVER_NAME: &str = "source";

/// What one cluster should look like in the running HAProxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub bind_port: u16,
    /// `None`: the source is a hostname that could not be resolved.
    pub addr: Option<IpAddr>,
    pub port: u16,
    pub fenced: bool,
    /// Why it is fenced, for the log line.
    pub fence_reason: Option<String>,
    /// The source as KV names it, for the log line.
    pub source: String,
    /// The source differs from the last applied one (or nothing was applied
    /// yet). Only matters when `addr` is unknown.
    pub source_changed: bool,
}

/// One `source` server as the running worker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedServer {
    /// `None` when the server has no address (unresolved at start).
    pub addr: Option<IpAddr>,
    pub port: u16,
    /// In maintenance: forced (`state maint`, `disabled`), inherited, or for
    /// lack of an address. Traffic is refused.
    pub maint: bool,
}

/// Proxy name → its `source` server.
pub type Observed = BTreeMap<String, ObservedServer>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// New address; sessions on the old one are cut; then the admin state
    /// the fence calls for.
    Switch {
        cluster: String,
        from: Option<(IpAddr, u16)>,
        to: (IpAddr, u16),
        fenced: bool,
        source: String,
    },
    /// `state maint`, then cut every session.
    Fence { cluster: String, reason: String },
    /// `state ready`.
    Unfence { cluster: String },
    /// Maintenance and cut, ahead of a reload: the listen block goes away,
    /// or its new source can only be set by the reload.
    Cut { cluster: String, why: CutReason },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutReason {
    Removed,
    Unresolved,
}

impl Step {
    pub fn cluster(&self) -> &str {
        match self {
            Step::Switch { cluster, .. }
            | Step::Fence { cluster, .. }
            | Step::Unfence { cluster }
            | Step::Cut { cluster, .. } => cluster,
        }
    }

    fn order(&self) -> u8 {
        // Taking traffic away first: a fence must not wait behind switches.
        match self {
            Step::Cut { .. } => 0,
            Step::Fence { .. } => 1,
            Step::Switch { .. } => 2,
            Step::Unfence { .. } => 3,
        }
    }
}

fn fmt_addr(addr: &Option<(IpAddr, u16)>) -> String {
    match addr {
        Some((IpAddr::V6(ip), port)) => format!("[{ip}]:{port}"),
        Some((ip, port)) => format!("{ip}:{port}"),
        None => "-".to_owned(),
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Switch {
                cluster,
                from,
                to,
                fenced,
                source,
            } => {
                let to = fmt_addr(&Some(*to));
                write!(f, "{cluster} source {} -> {to}", fmt_addr(from))?;
                if *source != to {
                    write!(f, " ({source})")?;
                }
                if *fenced {
                    f.write_str(" fenced")?;
                }
                Ok(())
            }
            Step::Fence { cluster, reason } => write!(f, "{cluster} fenced: {reason}"),
            Step::Unfence { cluster } => write!(f, "{cluster} unfenced"),
            Step::Cut { cluster, why } => match why {
                CutReason::Removed => write!(f, "{cluster} removed, sessions cut"),
                CutReason::Unresolved => {
                    write!(f, "{cluster} source unresolvable here, sessions cut")
                }
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReloadReason {
    Added(String),
    Removed(String),
    Rebound {
        cluster: String,
        from: u16,
        to: u16,
    },
    /// The running server has no address, which the runtime API cannot set.
    NoRuntimeAddress(String),
    /// The new source's hostname did not resolve here.
    Unresolved(String),
    /// First apply after start with a changed file: what the running
    /// HAProxy binds is unknown.
    FirstApply,
    /// The config file or template was reloaded (SIGHUP) and the rendered
    /// file changed: only a reload makes HAProxy serve what it now says.
    Reconfigured,
}

impl fmt::Display for ReloadReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReloadReason::Added(c) => write!(f, "{c} added"),
            ReloadReason::Removed(c) => write!(f, "{c} removed"),
            ReloadReason::Rebound { cluster, from, to } => {
                write!(f, "{cluster} bind port {from} -> {to}")
            }
            ReloadReason::NoRuntimeAddress(c) => write!(f, "{c} has no runtime address"),
            ReloadReason::Unresolved(c) => write!(f, "{c} source resolved by the reload"),
            ReloadReason::FirstApply => f.write_str("first apply since start"),
            ReloadReason::Reconfigured => f.write_str("renderer config or template reloaded"),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyPlan {
    pub steps: Vec<Step>,
    pub reload: BTreeSet<ReloadReason>,
}

impl ApplyPlan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.reload.is_empty()
    }

    /// Metrics label.
    pub fn path(&self) -> &'static str {
        if !self.reload.is_empty() {
            "reload"
        } else if !self.steps.is_empty() {
            "runtime"
        } else {
            "none"
        }
    }
}

impl fmt::Display for ApplyPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self.steps.iter().map(|s| s.to_string()).collect();
        if !self.reload.is_empty() {
            let why: Vec<String> = self.reload.iter().map(|r| r.to_string()).collect();
            parts.push(format!("reload ({})", why.join(", ")));
        }
        if parts.is_empty() {
            f.write_str("nothing to do")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

/// Decides how to get from what HAProxy runs to the targets.
///
/// `applied_binds` is what the last successful apply bound (`None` right
/// after start); `config_written` says this cycle changed the file.
pub fn plan(
    targets: &[Target],
    observed: &Observed,
    applied_binds: Option<&BTreeMap<String, u16>>,
    config_written: bool,
) -> ApplyPlan {
    let mut out = ApplyPlan::default();
    if applied_binds.is_none() && config_written {
        out.reload.insert(ReloadReason::FirstApply);
    }
    let wanted: BTreeSet<&str> = targets.iter().map(|t| t.name.as_str()).collect();

    for t in targets {
        let Some(o) = observed.get(&t.name) else {
            out.reload.insert(ReloadReason::Added(t.name.clone()));
            continue;
        };
        if let Some(&bound) = applied_binds.and_then(|b| b.get(&t.name)) {
            if bound != t.bind_port {
                out.reload.insert(ReloadReason::Rebound {
                    cluster: t.name.clone(),
                    from: bound,
                    to: t.bind_port,
                });
            }
        }
        let running = o.addr.map(|ip| (ip, o.port));
        let wanted_addr = t.addr.map(|ip| (ip, t.port));
        match (wanted_addr, running) {
            (Some(to), Some(from)) if to != from => {
                out.steps.push(Step::Switch {
                    cluster: t.name.clone(),
                    from: Some(from),
                    to,
                    fenced: t.fenced,
                    source: t.source.clone(),
                });
                continue;
            }
            (Some(_), None) => {
                // HAProxy 2.6 refuses `set server addr` on a server that
                // never had one; the reload resolves it.
                out.reload
                    .insert(ReloadReason::NoRuntimeAddress(t.name.clone()));
                if t.fenced && !o.maint {
                    out.steps.push(fence_step(t));
                }
                continue;
            }
            (None, _) if t.source_changed => {
                out.steps.push(Step::Cut {
                    cluster: t.name.clone(),
                    why: CutReason::Unresolved,
                });
                out.reload.insert(ReloadReason::Unresolved(t.name.clone()));
                continue;
            }
            _ => {}
        }
        if t.fenced && !o.maint {
            out.steps.push(fence_step(t));
        } else if !t.fenced && o.maint && o.addr.is_some() {
            out.steps.push(Step::Unfence {
                cluster: t.name.clone(),
            });
        }
    }

    for name in observed.keys() {
        if !wanted.contains(name.as_str()) {
            out.steps.push(Step::Cut {
                cluster: name.clone(),
                why: CutReason::Removed,
            });
            out.reload.insert(ReloadReason::Removed(name.clone()));
        }
    }
    out.steps.sort_by_key(Step::order);
    out
}

fn fence_step(t: &Target) -> Step {
    Step::Fence {
        cluster: t.name.clone(),
        reason: t.fence_reason.clone().unwrap_or_default(),
    }
}

/// How to reload HAProxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadMethod {
    /// `reload` on the master CLI, then wait for the new worker.
    MasterSocket,
    /// Run a command (e.g. `systemctl reload haproxy`); exit 0 = done.
    Command(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot connect to HAProxy socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("I/O on HAProxy socket {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("HAProxy socket {path} did not answer {command:?} within {timeout:?}")]
    Timeout {
        path: PathBuf,
        command: String,
        timeout: Duration,
    },
    #[error("HAProxy refused {command:?}: {answer}")]
    Refused { command: String, answer: String },
    #[error("unexpected answer to {command:?}: {answer}")]
    Unexpected { command: String, answer: String },
    #[error("no master socket configured: cannot {what}")]
    NoMasterSocket { what: &'static str },
    #[error("HAProxy reload failed (the previous config keeps serving)")]
    ReloadFailed,
    #[error("HAProxy reload did not finish within {0:?}")]
    ReloadTimeout(Duration),
    #[error("cannot run reload command {command:?}")]
    ReloadSpawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reload command {command:?} exited with {status}: {output}")]
    ReloadCommand {
        command: String,
        status: std::process::ExitStatus,
        output: String,
    },
}

/// Talks to one HAProxy: the admin socket of the current worker and,
/// optionally, the master CLI.
#[derive(Debug, Clone)]
pub struct Haproxy {
    pub admin_socket: PathBuf,
    pub master_socket: Option<PathBuf>,
    pub reload: ReloadMethod,
    pub command_timeout: Duration,
    pub reload_timeout: Duration,
}

/// What the executor did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Executed {
    pub runtime_steps: usize,
    pub reloaded: bool,
    /// Sessions shut down in old workers.
    pub old_worker_sessions: usize,
    /// Switches the runtime API refused and the reload took over.
    pub fell_back: Vec<String>,
}

async fn send(path: &Path, command: &str, limit: Duration) -> Result<String, ApiError> {
    let exchange = async {
        let mut stream = UnixStream::connect(path)
            .await
            .map_err(|source| ApiError::Connect {
                path: path.to_owned(),
                source,
            })?;
        let io = |source| ApiError::Io {
            path: path.to_owned(),
            source,
        };
        stream
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(io)?;
        // The master CLI keeps a connection open until the client is done
        // sending; the half-close says so (the worker CLI closes anyway).
        stream.shutdown().await.map_err(io)?;
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.map_err(io)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    };
    timeout(limit, exchange)
        .await
        .map_err(|_| ApiError::Timeout {
            path: path.to_owned(),
            command: command.to_owned(),
            timeout: limit,
        })?
}

fn short(answer: &str) -> String {
    let mut s: String = answer.trim().chars().take(300).collect();
    s = s.replace('\n', " | ");
    s
}

/// Commands whose success is an empty answer.
fn expect_empty(command: &str, answer: &str) -> Result<(), ApiError> {
    if answer.trim().is_empty() {
        Ok(())
    } else {
        Err(ApiError::Refused {
            command: command.to_owned(),
            answer: short(answer),
        })
    }
}

fn addr_cmd(cluster: &str, ip: IpAddr, port: u16) -> String {
    format!("set server {cluster}/{SERVER_NAME} addr {ip} port {port}")
}

fn state_cmd(cluster: &str, state: &str) -> String {
    format!("set server {cluster}/{SERVER_NAME} state {state}")
}

fn shutdown_cmd(cluster: &str) -> String {
    format!("shutdown sessions server {cluster}/{SERVER_NAME}")
}

/// Parses `show servers state` (format 1).
pub fn parse_servers_state(answer: &str) -> Result<Observed, String> {
    let mut lines = answer.lines().map(str::trim).filter(|l| !l.is_empty());
    match lines.next() {
        Some("1") => {}
        other => return Err(format!("unknown format line {other:?}")),
    }
    let mut header: Option<Vec<&str>> = None;
    let mut out = Observed::new();
    for line in lines {
        if let Some(h) = line.strip_prefix('#') {
            header = Some(h.split_whitespace().collect());
            continue;
        }
        let h = header.as_ref().ok_or("no header line")?;
        let col = |name: &str| h.iter().position(|c| *c == name);
        let (Some(be), Some(srv), Some(addr), Some(admin), Some(port)) = (
            col("be_name"),
            col("srv_name"),
            col("srv_addr"),
            col("srv_admin_state"),
            col("srv_port"),
        ) else {
            return Err("header lacks be_name/srv_name/srv_addr/srv_admin_state/srv_port".into());
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let get = |i: usize| fields.get(i).copied().ok_or(format!("short line {line:?}"));
        if get(srv)? != SERVER_NAME {
            continue;
        }
        let admin: u32 = get(admin)?
            .parse()
            .map_err(|_| format!("bad admin state in {line:?}"))?;
        // FMAINT | IMAINT | RMAINT | HMAINT. CMAINT alone (0x04) only
        // remembers `disabled` in the file; `state ready` clears FMAINT and
        // traffic flows with CMAINT still set.
        let maint = admin & 0x63 != 0;
        let addr = match get(addr)? {
            "-" => None,
            a => Some(
                a.parse::<IpAddr>()
                    .map_err(|_| format!("bad address in {line:?}"))?,
            ),
        };
        let port = get(port)?
            .parse()
            .map_err(|_| format!("bad port in {line:?}"))?;
        out.insert(get(be)?.to_owned(), ObservedServer { addr, port, maint });
    }
    Ok(out)
}

/// The master's reload counters and the worker pids from `show proc`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcList {
    pub reloads: u64,
    pub failed: u64,
    pub workers: Vec<u32>,
    pub old_workers: Vec<u32>,
}

pub fn parse_show_proc(answer: &str) -> Result<ProcList, String> {
    let mut out = ProcList::default();
    let mut section = "master";
    let mut saw_master = false;
    for line in answer.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim();
            if rest.starts_with('<') {
                continue;
            }
            section = match rest {
                "workers" => "workers",
                "old workers" => "old",
                _ => "other",
            };
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        match section {
            "master" if fields.get(1) == Some(&"master") => {
                saw_master = true;
                out.reloads = fields
                    .get(2)
                    .and_then(|r| r.parse().ok())
                    .ok_or(format!("bad master line {line:?}"))?;
                // "5 [failed: 0]" since 2.5.
                if let Some(i) = fields.iter().position(|f| *f == "[failed:") {
                    out.failed = fields
                        .get(i + 1)
                        .and_then(|f| f.trim_end_matches(']').parse().ok())
                        .ok_or(format!("bad master line {line:?}"))?;
                }
            }
            "workers" | "old" => {
                let pid = fields
                    .first()
                    .and_then(|p| p.parse().ok())
                    .ok_or(format!("bad worker line {line:?}"))?;
                if section == "workers" {
                    out.workers.push(pid);
                } else {
                    out.old_workers.push(pid);
                }
            }
            _ => {}
        }
    }
    if !saw_master {
        return Err("no master line".into());
    }
    Ok(out)
}

/// Session ids in a `show sess` answer that run through `<cluster>/source`.
pub fn sessions_of(answer: &str, cluster: &str) -> Vec<String> {
    let be = format!("be={cluster}");
    let srv = format!("srv={SERVER_NAME}");
    answer
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let id = fields.next()?.strip_suffix(':')?;
            let fields: Vec<&str> = fields.collect();
            (fields.contains(&be.as_str()) && fields.contains(&srv.as_str())).then(|| id.to_owned())
        })
        .collect()
}

impl Haproxy {
    async fn admin(&self, command: &str) -> Result<String, ApiError> {
        send(&self.admin_socket, command, self.command_timeout).await
    }

    async fn admin_expect_empty(&self, command: &str) -> Result<(), ApiError> {
        let answer = self.admin(command).await?;
        expect_empty(command, &answer)
    }

    async fn master(&self, command: &str, what: &'static str) -> Result<String, ApiError> {
        let path = self
            .master_socket
            .as_ref()
            .ok_or(ApiError::NoMasterSocket { what })?;
        send(path, command, self.command_timeout).await
    }

    /// What the current worker serves.
    pub async fn observe(&self) -> Result<Observed, ApiError> {
        const CMD: &str = "show servers state";
        let answer = self.admin(CMD).await?;
        parse_servers_state(&answer).map_err(|why| ApiError::Unexpected {
            command: CMD.into(),
            answer: why,
        })
    }

    async fn show_proc(&self) -> Result<ProcList, ApiError> {
        const CMD: &str = "show proc";
        let answer = self.master(CMD, "list HAProxy processes").await?;
        parse_show_proc(&answer).map_err(|why| ApiError::Unexpected {
            command: CMD.into(),
            answer: why,
        })
    }

    /// Shuts down, in every old worker, the sessions of these clusters.
    /// Without a master socket old workers are out of reach; their
    /// sessions end at `hard-stop-after`.
    async fn cut_old_workers(&self, clusters: &[&str]) -> Result<usize, ApiError> {
        if self.master_socket.is_none() || clusters.is_empty() {
            return Ok(0);
        }
        let procs = self.show_proc().await?;
        let mut cut = 0;
        for pid in procs.old_workers {
            let answer = match self.master(&format!("@!{pid} show sess"), "").await {
                Ok(a) => a,
                // It may have exited since `show proc`: nothing left to cut.
                Err(ApiError::Refused { .. }) => continue,
                Err(e) => return Err(e),
            };
            if answer.contains("Can't find the target PID") {
                continue;
            }
            for cluster in clusters {
                for id in sessions_of(&answer, cluster) {
                    let cmd = format!("@!{pid} shutdown session {id}");
                    let answer = self.master(&cmd, "").await?;
                    if !answer.trim().is_empty() && !answer.contains("Can't find") {
                        return Err(ApiError::Refused {
                            command: cmd,
                            answer: short(&answer),
                        });
                    }
                    cut += 1;
                }
            }
        }
        Ok(cut)
    }

    /// Maintenance and every session cut, old workers' too: a source the
    /// renderer stopped trusting while cut off from Consul (see
    /// [`crate::fallback`]).
    pub async fn maint_and_cut(&self, cluster: &str) -> Result<(), ApiError> {
        self.fence(cluster).await?;
        if self.master_socket.is_some() {
            self.cut_old_workers(&[cluster]).await?;
        }
        Ok(())
    }

    async fn fence(&self, cluster: &str) -> Result<(), ApiError> {
        self.admin_expect_empty(&state_cmd(cluster, "maint"))
            .await?;
        self.admin_expect_empty(&shutdown_cmd(cluster)).await
    }

    async fn switch(&self, cluster: &str, to: (IpAddr, u16), fenced: bool) -> Result<(), ApiError> {
        let cmd = addr_cmd(cluster, to.0, to.1);
        let answer = self.admin(&cmd).await?;
        if !(answer.contains("changed from") || answer.contains("no need to change")) {
            return Err(ApiError::Refused {
                command: cmd,
                answer: short(&answer),
            });
        }
        // Every session on this server went to the old address.
        self.admin_expect_empty(&shutdown_cmd(cluster)).await?;
        let state = if fenced { "maint" } else { "ready" };
        self.admin_expect_empty(&state_cmd(cluster, state)).await
    }

    /// Runs a plan. Old workers are cleaned before the current worker is
    /// touched: they accept no new connections, so this order leaves no
    /// window, and a failure there leaves the plan to be redone whole.
    pub async fn execute(&self, plan: &ApplyPlan) -> Result<Executed, ApiError> {
        let mut done = Executed::default();
        let mut reload = !plan.reload.is_empty();

        let cut_clusters: Vec<&str> = plan
            .steps
            .iter()
            .filter(|s| !matches!(s, Step::Unfence { .. }))
            .map(Step::cluster)
            .collect();
        done.old_worker_sessions = self.cut_old_workers(&cut_clusters).await?;

        for step in &plan.steps {
            match step {
                Step::Switch {
                    cluster,
                    to,
                    fenced,
                    ..
                } => match self.switch(cluster, *to, *fenced).await {
                    Ok(()) => {}
                    Err(ApiError::Refused { command, answer }) => {
                        // E.g. a change of address family. The reload sets
                        // the address; until then nothing reaches the old.
                        tracing::warn!(cluster = %cluster, %command, %answer, "runtime switch refused; falling back to a reload");
                        self.fence(cluster).await?;
                        done.fell_back.push(cluster.clone());
                        reload = true;
                    }
                    Err(e) => return Err(e),
                },
                Step::Fence { cluster, .. } | Step::Cut { cluster, .. } => {
                    self.fence(cluster).await?
                }
                Step::Unfence { cluster } => {
                    self.admin_expect_empty(&state_cmd(cluster, "ready"))
                        .await?
                }
            }
            done.runtime_steps += 1;
        }

        if reload {
            self.reload().await?;
            done.reloaded = true;
        }
        Ok(done)
    }

    pub async fn reload(&self) -> Result<(), ApiError> {
        match &self.reload {
            ReloadMethod::Command(argv) => self.reload_command(argv).await,
            ReloadMethod::MasterSocket => self.reload_master().await,
        }
    }

    async fn reload_command(&self, argv: &[String]) -> Result<(), ApiError> {
        let command = argv.join(" ");
        let (program, args) = argv.split_first().expect("validated non-empty");
        let child = tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = timeout(self.reload_timeout, child)
            .await
            .map_err(|_| ApiError::ReloadTimeout(self.reload_timeout))?
            .map_err(|source| ApiError::ReloadSpawn {
                command: command.clone(),
                source,
            })?;
        if output.status.success() {
            Ok(())
        } else {
            let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stdout));
            Err(ApiError::ReloadCommand {
                command,
                status: output.status,
                output: short(&text),
            })
        }
    }

    /// `reload` on the master CLI, then `show proc` until a new worker is
    /// up (success) or the failed-reload counter moves (failure). HAProxy
    /// 2.6's `reload` answers nothing and closes the connection.
    async fn reload_master(&self) -> Result<(), ApiError> {
        let before = self.show_proc().await?;
        match self.master("reload", "reload").await {
            Ok(_) | Err(ApiError::Io { .. }) => {}
            Err(e) => return Err(e),
        }
        let deadline = Instant::now() + self.reload_timeout;
        loop {
            sleep(Duration::from_millis(50)).await;
            // While the master re-executes its socket refuses connections.
            if let Ok(now) = self.show_proc().await {
                if now.reloads > before.reloads || now.failed > before.failed {
                    if now.failed > before.failed {
                        return Err(ApiError::ReloadFailed);
                    }
                    if now.workers.iter().any(|w| !before.workers.contains(w)) {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(ApiError::ReloadTimeout(self.reload_timeout));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str, port: u16, addr: &str, fenced: bool) -> Target {
        let (ip, sport) = addr.rsplit_once(':').unwrap();
        Target {
            name: name.into(),
            bind_port: port,
            addr: Some(ip.trim_matches(['[', ']']).parse().unwrap()),
            port: sport.parse().unwrap(),
            fenced,
            fence_reason: fenced.then(|| "failed".to_owned()),
            source: addr.into(),
            source_changed: false,
        }
    }

    fn obs(entries: &[(&str, &str, bool)]) -> Observed {
        entries
            .iter()
            .map(|(name, addr, maint)| {
                let (ip, port) = addr.rsplit_once(':').unwrap();
                (
                    name.to_string(),
                    ObservedServer {
                        addr: (ip != "-").then(|| ip.parse().unwrap()),
                        port: port.parse().unwrap(),
                        maint: *maint,
                    },
                )
            })
            .collect()
    }

    fn binds(entries: &[(&str, u16)]) -> BTreeMap<String, u16> {
        entries.iter().map(|(n, p)| (n.to_string(), *p)).collect()
    }

    #[test]
    fn unchanged_is_a_no_op() {
        let p = plan(
            &[target("c1", 13306, "10.0.0.1:3306", false)],
            &obs(&[("c1", "10.0.0.1:3306", false)]),
            Some(&binds(&[("c1", 13306)])),
            false,
        );
        assert!(p.is_empty());
        assert_eq!(p.path(), "none");
        assert_eq!(p.to_string(), "nothing to do");
    }

    #[test]
    fn source_change_goes_through_the_runtime_api() {
        let p = plan(
            &[target("c1", 13306, "10.0.0.2:3307", false)],
            &obs(&[("c1", "10.0.0.1:3306", false)]),
            Some(&binds(&[("c1", 13306)])),
            true,
        );
        assert_eq!(p.path(), "runtime");
        assert_eq!(
            p.steps,
            [Step::Switch {
                cluster: "c1".into(),
                from: Some(("10.0.0.1".parse().unwrap(), 3306)),
                to: ("10.0.0.2".parse().unwrap(), 3307),
                fenced: false,
                source: "10.0.0.2:3307".into(),
            }]
        );
        assert_eq!(p.to_string(), "c1 source 10.0.0.1:3306 -> 10.0.0.2:3307");
    }

    #[test]
    fn source_change_while_fenced_stays_in_maintenance() {
        let p = plan(
            &[target("c1", 13306, "10.0.0.2:3306", true)],
            &obs(&[("c1", "10.0.0.1:3306", true)]),
            Some(&binds(&[("c1", 13306)])),
            true,
        );
        assert!(matches!(p.steps[..], [Step::Switch { fenced: true, .. }]));
    }

    #[test]
    fn fence_toggles_go_through_the_runtime_api() {
        let b = binds(&[("c1", 1), ("c2", 2)]);
        let p = plan(
            &[
                target("c1", 1, "10.0.0.1:3306", true),
                target("c2", 2, "10.0.0.2:3306", false),
            ],
            &obs(&[
                ("c1", "10.0.0.1:3306", false),
                ("c2", "10.0.0.2:3306", true),
            ]),
            Some(&b),
            true,
        );
        assert_eq!(
            p.steps,
            [
                Step::Fence {
                    cluster: "c1".into(),
                    reason: "failed".into()
                },
                Step::Unfence {
                    cluster: "c2".into()
                }
            ]
        );
        assert!(p.reload.is_empty());
        assert_eq!(p.path(), "runtime");
        assert_eq!(p.to_string(), "c1 fenced: failed; c2 unfenced");
    }

    #[test]
    fn new_cluster_reloads() {
        let p = plan(
            &[
                target("c1", 1, "10.0.0.1:3306", false),
                target("c2", 2, "10.0.0.2:3306", false),
            ],
            &obs(&[("c1", "10.0.0.1:3306", false)]),
            Some(&binds(&[("c1", 1)])),
            true,
        );
        assert!(p.steps.is_empty());
        assert_eq!(
            p.reload.iter().collect::<Vec<_>>(),
            [&ReloadReason::Added("c2".into())]
        );
        assert_eq!(p.path(), "reload");
        assert_eq!(p.to_string(), "reload (c2 added)");
    }

    #[test]
    fn removed_cluster_is_cut_then_reloaded() {
        let p = plan(
            &[target("c1", 1, "10.0.0.1:3306", false)],
            &obs(&[
                ("c1", "10.0.0.1:3306", false),
                ("c2", "10.0.0.2:3306", false),
            ]),
            Some(&binds(&[("c1", 1), ("c2", 2)])),
            true,
        );
        assert_eq!(
            p.steps,
            [Step::Cut {
                cluster: "c2".into(),
                why: CutReason::Removed
            }]
        );
        assert!(p.reload.contains(&ReloadReason::Removed("c2".into())));
    }

    #[test]
    fn rebind_reloads_and_switch_happens_before() {
        let p = plan(
            &[target("c1", 2, "10.0.0.9:3306", false)],
            &obs(&[("c1", "10.0.0.1:3306", false)]),
            Some(&binds(&[("c1", 1)])),
            true,
        );
        assert!(matches!(p.steps[..], [Step::Switch { .. }]));
        assert!(p.reload.contains(&ReloadReason::Rebound {
            cluster: "c1".into(),
            from: 1,
            to: 2
        }));
    }

    #[test]
    fn first_apply_after_start() {
        let t = [target("c1", 1, "10.0.0.1:3306", false)];
        let o = obs(&[("c1", "10.0.0.1:3306", false)]);
        // File changed: binds unknown, reload.
        let p = plan(&t, &o, None, true);
        assert_eq!(
            p.reload.iter().collect::<Vec<_>>(),
            [&ReloadReason::FirstApply]
        );
        // File as HAProxy loaded it: only runtime differences matter.
        assert!(plan(&t, &o, None, false).is_empty());
    }

    #[test]
    fn unresolved_hostname() {
        let mut t = target("c1", 1, "10.0.0.1:3306", false);
        t.addr = None;
        let o = obs(&[("c1", "10.0.0.1:3306", false)]);
        let b = binds(&[("c1", 1)]);
        // Unchanged source whose name does not resolve right now: leave it.
        assert!(plan(std::slice::from_ref(&t), &o, Some(&b), false).is_empty());
        // A new source we cannot resolve: cut the old one, let the reload
        // resolve the new one.
        t.source_changed = true;
        let p = plan(&[t], &o, Some(&b), true);
        assert_eq!(
            p.steps,
            [Step::Cut {
                cluster: "c1".into(),
                why: CutReason::Unresolved
            }]
        );
        assert!(p.reload.contains(&ReloadReason::Unresolved("c1".into())));
    }

    #[test]
    fn server_without_runtime_address_reloads() {
        let p = plan(
            &[target("c1", 1, "10.0.0.1:3306", false)],
            &obs(&[("c1", "-:3306", true)]),
            Some(&binds(&[("c1", 1)])),
            true,
        );
        assert!(p.steps.is_empty(), "{p}");
        assert!(p
            .reload
            .contains(&ReloadReason::NoRuntimeAddress("c1".into())));
    }

    #[test]
    fn steps_take_traffic_away_first() {
        let p = plan(
            &[
                target("a", 1, "10.0.0.1:3306", false),
                target("b", 2, "10.0.0.9:3306", false),
                target("c", 3, "10.0.0.3:3306", true),
            ],
            &obs(&[
                ("a", "10.0.0.1:3306", true),
                ("b", "10.0.0.2:3306", false),
                ("c", "10.0.0.3:3306", false),
                ("d", "10.0.0.4:3306", false),
            ]),
            Some(&binds(&[("a", 1), ("b", 2), ("c", 3), ("d", 4)])),
            true,
        );
        let kinds: Vec<&str> = p
            .steps
            .iter()
            .map(|s| match s {
                Step::Cut { .. } => "cut",
                Step::Fence { .. } => "fence",
                Step::Switch { .. } => "switch",
                Step::Unfence { .. } => "unfence",
            })
            .collect();
        assert_eq!(kinds, ["cut", "fence", "switch", "unfence"]);
    }

    const SERVERS_STATE: &str = "1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
2 c1 1 source 127.0.0.1 0 5 1 1 1 1 0 0 8 0 0 0 - 3306 - 0 0 - - 0
3 c2 1 source ::1 2 0 1 1 1 1 0 2 0 0 0 0 - 3307 - 0 0 - - 0
4 c3 1 source - 0 32 1 1 1 1 0 0 0 0 0 0 nonexistent.invalid 3307 - 0 0 - - 0
5 c4 1 source 127.0.0.1 2 4 1 1 1 1 0 2 0 0 0 0 localhost 3307 - 0 0 - - 0
6 stats 1 other 127.0.0.1 2 0 1 1 1 1 0 2 0 0 0 0 - 80 - 0 0 - - 0

";

    #[test]
    fn parses_show_servers_state() {
        let o = parse_servers_state(SERVERS_STATE).unwrap();
        assert_eq!(o.len(), 4, "{o:?}");
        assert_eq!(
            o["c1"],
            ObservedServer {
                addr: Some("127.0.0.1".parse().unwrap()),
                port: 3306,
                maint: true
            }
        );
        assert!(!o["c2"].maint);
        assert_eq!(o["c2"].addr, Some("::1".parse().unwrap()));
        assert_eq!(o["c3"].addr, None);
        assert!(o["c3"].maint);
        assert!(!o["c4"].maint, "CMAINT alone does not block traffic");
        assert!(parse_servers_state("").is_err());
        assert!(parse_servers_state("Unknown command\n").is_err());
    }

    #[test]
    fn parses_show_proc() {
        let answer = "#<PID>          <type>          <reloads>       <uptime>        <version>
14353           master          2 [failed: 1]   0d00h00m17s     2.6.12-1+deb12u4
# workers
15001           worker          0               0d00h00m01s     2.6.12-1+deb12u4
# old workers
14674           worker          1               0d00h00m10s     2.6.12-1+deb12u4
14675           worker          3               0d00h00m10s     2.6.12-1+deb12u4
# programs
";
        assert_eq!(
            parse_show_proc(answer).unwrap(),
            ProcList {
                reloads: 2,
                failed: 1,
                workers: vec![15001],
                old_workers: vec![14674, 14675],
            }
        );
        assert!(parse_show_proc("").is_err());
    }

    #[test]
    fn finds_sessions_of_a_cluster() {
        let answer =
            "0x55b906da2e50: proto=tcpv4 src=127.0.0.1:55106 fe=c4 be=c4 srv=source ts=00 epoch=0
0x55b906da2e51: proto=tcpv4 src=127.0.0.1:55107 fe=c40 be=c40 srv=source ts=00
0x55b906eabe00: proto=sockpair src=unix:2 fe=GLOBAL be=<NONE> srv=<none> ts=00
";
        assert_eq!(sessions_of(answer, "c4"), ["0x55b906da2e50"]);
        assert!(sessions_of(answer, "c5").is_empty());
    }

    #[tokio::test]
    async fn reload_command_exit_status_decides() {
        let h = |argv: &[&str]| Haproxy {
            admin_socket: "/nonexistent".into(),
            master_socket: None,
            reload: ReloadMethod::Command(argv.iter().map(|s| s.to_string()).collect()),
            command_timeout: Duration::from_secs(1),
            reload_timeout: Duration::from_secs(5),
        };
        assert!(h(&["true"]).reload().await.is_ok());
        let err = h(&["sh", "-c", "echo nope >&2; exit 3"])
            .reload()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        assert!(matches!(
            h(&["/nonexistent/reload"]).reload().await,
            Err(ApiError::ReloadSpawn { .. })
        ));
    }

    #[tokio::test]
    async fn no_master_socket_means_no_old_worker_access() {
        let h = Haproxy {
            admin_socket: "/nonexistent".into(),
            master_socket: None,
            reload: ReloadMethod::MasterSocket,
            command_timeout: Duration::from_secs(1),
            reload_timeout: Duration::from_secs(1),
        };
        assert_eq!(h.cut_old_workers(&["c1"]).await.unwrap(), 0);
        assert!(matches!(
            h.reload().await,
            Err(ApiError::NoMasterSocket { .. })
        ));
    }

    #[test]
    fn commands() {
        assert_eq!(
            addr_cmd("c1", "::1".parse().unwrap(), 3306),
            "set server c1/source addr ::1 port 3306"
        );
        assert_eq!(state_cmd("c1", "maint"), "set server c1/source state maint");
        assert_eq!(shutdown_cmd("c1"), "shutdown sessions server c1/source");
        assert!(expect_empty("x", "\n").is_ok());
        assert!(expect_empty("x", "No such backend.\n").is_err());
    }
}
