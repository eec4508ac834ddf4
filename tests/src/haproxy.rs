//! HAProxy in master-worker mode with an admin-level stats socket (the
//! runtime API the renderer drives) and a master CLI socket (for reloads).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::timeout;

use crate::process::{dump_on_panic, Proc, Scratch};
use crate::{bins, wait_for};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// Where an instance keeps its files; handed to config builders.
#[derive(Debug, Clone)]
pub struct HaProxyPaths {
    pub dir: PathBuf,
    pub cfg: PathBuf,
    pub admin_socket: PathBuf,
    pub master_socket: PathBuf,
    pub pid_file: PathBuf,
}

/// The `global` section every harness HAProxy needs: the admin socket the
/// renderer uses, with `expose-fd listeners` so a reload hands the listening
/// sockets to the new worker instead of closing them.
pub fn global_section(admin_socket: &Path) -> String {
    format!(
        "global\n    \
         stats socket {} mode 600 level admin expose-fd listeners\n    \
         stats timeout 1m\n    \
         maxconn 2000\n",
        admin_socket.display()
    )
}

/// TCP defaults for MySQL traffic; `retries 1` because the default of 3
/// holds a client connecting during a switch for about three seconds
/// (DESIGN.md, "Measured").
pub fn defaults_section() -> String {
    "defaults\n    \
     mode tcp\n    \
     retries 1\n    \
     timeout connect 2s\n    \
     timeout client 1h\n    \
     timeout server 1h\n"
        .to_string()
}

/// A `listen` block forwarding `bind` to one server, for self-tests and
/// simple setups.
pub fn tcp_listen(name: &str, bind: SocketAddr, server_name: &str, server: SocketAddr) -> String {
    format!(
        "listen {name}\n    \
         bind {bind}\n    \
         mode tcp\n    \
         server {server_name} {server}\n"
    )
}

/// A running `haproxy -W` (master process plus worker).
#[derive(Debug)]
pub struct HaProxy {
    paths: HaProxyPaths,
    proc: Proc,
    // Dropped after `proc`, which writes into it.
    dir: Scratch,
}

impl HaProxy {
    /// Starts HAProxy with the harness's `global` and `defaults` sections
    /// followed by `body` (listen blocks, backends…). Panics (with the log)
    /// if it does not come up.
    pub async fn start(body: &str) -> HaProxy {
        let body = body.to_string();
        Self::start_with(move |paths| {
            format!(
                "{}\n{}\n{body}",
                global_section(&paths.admin_socket),
                defaults_section()
            )
        })
        .await
    }

    /// Starts HAProxy with a config built entirely by `config`. It must
    /// declare the admin socket at `paths.admin_socket` (see
    /// [`global_section`]); the master socket is added on the command line.
    pub async fn start_with(config: impl FnOnce(&HaProxyPaths) -> String) -> HaProxy {
        let dir = Scratch::new("haproxy");
        let d = dir.path();
        let paths = HaProxyPaths {
            dir: d.to_path_buf(),
            cfg: d.join("haproxy.cfg"),
            admin_socket: d.join("admin.sock"),
            master_socket: d.join("master.sock"),
            pid_file: d.join("haproxy.pid"),
        };
        let text = config(&paths);
        std::fs::write(&paths.cfg, &text)
            .unwrap_or_else(|e| panic!("writing {}: {e}", paths.cfg.display()));
        if let Err(e) = check(&paths.cfg).await {
            panic!("haproxy config does not validate: {e:#}\n--- config:\n{text}");
        }
        let mut cmd = std::process::Command::new(bins::haproxy());
        cmd.arg("-W")
            .arg("-f")
            .arg(&paths.cfg)
            .arg("-p")
            .arg(&paths.pid_file)
            .arg("-S")
            .arg(format!("{},mode,600", paths.master_socket.display()));
        let log = d.join("haproxy.log");
        let proc = Proc::spawn("haproxy", cmd, &log)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let haproxy = HaProxy { paths, proc, dir };
        if let Err(e) = haproxy.wait_ready(&[]).await {
            panic!(
                "haproxy did not start: {e:#}\nlast lines of {}:\n{}",
                log.display(),
                haproxy.log_tail(30)
            );
        }
        tracing::info!(pid = haproxy.pid(), dir = %haproxy.dir().display(), "haproxy ready");
        haproxy
    }

    /// Ready means: the master lists a worker not in `old`, and the admin
    /// socket is served by that worker.
    async fn wait_ready(&self, old: &[u32]) -> anyhow::Result<u32> {
        let limit = if old.is_empty() {
            START_TIMEOUT
        } else {
            RELOAD_TIMEOUT
        };
        let result = wait_for(limit, || async {
            if self.proc.has_exited() {
                return Some(Err(anyhow::anyhow!("the haproxy master exited")));
            }
            let workers = self.worker_pids().await.ok()?;
            let new = *workers.iter().find(|p| !old.contains(p))?;
            let info = self.admin("show info").await.ok()?;
            (info_field(&info, "Pid")? == new.to_string()).then_some(Ok(new))
        })
        .await;
        result.map_err(anyhow::Error::from)?
    }

    /// Master process pid (stays the same across reloads: the master
    /// re-executes itself in place).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn is_running(&self) -> bool {
        !self.proc.has_exited()
    }

    pub fn cfg_path(&self) -> &Path {
        &self.paths.cfg
    }

    pub fn admin_socket_path(&self) -> &Path {
        &self.paths.admin_socket
    }

    pub fn master_socket_path(&self) -> &Path {
        &self.paths.master_socket
    }

    pub fn paths(&self) -> &HaProxyPaths {
        &self.paths
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }

    /// Sends one command to the admin (runtime API) socket and returns the
    /// reply.
    pub async fn admin(&self, cmd: &str) -> anyhow::Result<String> {
        socket_command(&self.paths.admin_socket, cmd).await
    }

    /// Sends one command to the master CLI socket and returns the reply.
    pub async fn master_cmd(&self, cmd: &str) -> anyhow::Result<String> {
        socket_command(&self.paths.master_socket, cmd).await
    }

    /// Pids of the current workers (old workers still draining excluded).
    pub async fn worker_pids(&self) -> anyhow::Result<Vec<u32>> {
        let proc = self.master_cmd("show proc").await?;
        Ok(parse_current_workers(&proc))
    }

    /// Replaces the config file (validated first, written atomically).
    pub async fn write_config(&self, text: &str) -> anyhow::Result<()> {
        let tmp = self.paths.dir.join("haproxy.cfg.new");
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        check(&tmp).await?;
        std::fs::rename(&tmp, &self.paths.cfg)
            .with_context(|| format!("renaming {} into place", tmp.display()))
    }

    /// Reloads through the master CLI and waits until a new worker serves the
    /// admin socket; returns the new worker's pid. Fails if the master
    /// reports the reload as failed (it then keeps the old worker serving).
    pub async fn reload(&self) -> anyhow::Result<u32> {
        let old = self
            .worker_pids()
            .await
            .context("listing workers before reload")?;
        let failed_before = self.failed_reloads().await?;
        // The master re-executes itself on `reload`, closing the connection
        // without a reply in 2.6.
        let _ = self.master_cmd("reload").await;
        let result = wait_for(RELOAD_TIMEOUT, || async {
            if self.proc.has_exited() {
                return Some(Err(anyhow::anyhow!("the haproxy master exited")));
            }
            if let Ok(failed) = self.failed_reloads().await {
                if failed > failed_before {
                    return Some(Err(anyhow::anyhow!(
                        "the master reports a failed reload (old worker keeps serving)"
                    )));
                }
            }
            let workers = self.worker_pids().await.ok()?;
            workers.iter().any(|p| !old.contains(p)).then_some(Ok(()))
        })
        .await;
        let context = || {
            format!(
                "haproxy reload; last lines of its log:\n{}",
                self.log_tail(20)
            )
        };
        result
            .map_err(anyhow::Error::from)
            .with_context(context)?
            .with_context(context)?;
        self.wait_ready(&old).await.with_context(context)
    }

    async fn failed_reloads(&self) -> anyhow::Result<u32> {
        let proc = self.master_cmd("show proc").await?;
        Ok(parse_failed_reloads(&proc))
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        dump_on_panic("haproxy", &[self.proc.log_path()]);
    }
}

/// `haproxy -c -f path`; the error carries HAProxy's complaint.
pub async fn check(path: &Path) -> anyhow::Result<()> {
    let out = tokio::process::Command::new(bins::haproxy())
        .arg("-c")
        .arg("-f")
        .arg(path)
        .output()
        .await
        .with_context(|| format!("running haproxy -c -f {}", path.display()))?;
    if !out.status.success() {
        bail!(
            "haproxy -c -f {} failed ({}):\n{}{}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// One command per connection: HAProxy answers and closes (non-interactive
/// mode), so the reply is everything until EOF.
async fn socket_command(socket: &Path, cmd: &str) -> anyhow::Result<String> {
    let exchange = async {
        let mut stream = UnixStream::connect(socket).await?;
        stream.write_all(cmd.as_bytes()).await?;
        stream.write_all(b"\n").await?;
        // The master CLI keeps the connection open until the client is done
        // sending; the admin socket does not mind either way.
        stream.shutdown().await?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&reply).into_owned())
    };
    timeout(SOCKET_TIMEOUT, exchange)
        .await
        .with_context(|| format!("{}: {cmd:?} timed out", socket.display()))?
        .with_context(|| format!("{}: {cmd:?}", socket.display()))
}

/// A `Name: value` field of `show info`.
pub fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then_some(value.trim())
    })
}

/// Pids listed under `# workers` in the master's `show proc` (not under
/// `# old workers`).
fn parse_current_workers(show_proc: &str) -> Vec<u32> {
    let mut in_workers = false;
    let mut pids = Vec::new();
    for line in show_proc.lines() {
        let line = line.trim();
        if let Some(section) = line.strip_prefix('#') {
            let section = section.trim();
            in_workers = section == "workers";
            continue;
        }
        if in_workers {
            if let Some(pid) = line.split_whitespace().next().and_then(|p| p.parse().ok()) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// The `[failed: N]` count on the master's line of `show proc`.
fn parse_failed_reloads(show_proc: &str) -> u32 {
    show_proc
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("master"))
        .and_then(|l| l.split("failed:").nth(1))
        .and_then(|rest| rest.split(']').next()?.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW_PROC: &str =
        "#<PID>          <type>          <reloads>       <uptime>        <version>
1162            master          1 [failed: 0]   0d00h00m05s     2.6.12-1+deb12u4
# workers
1200            worker          0               0d00h00m01s     2.6.12-1+deb12u4
# old workers
1163            worker          1               0d00h00m05s     2.6.12-1+deb12u4
# programs

";

    #[test]
    fn parses_show_proc() {
        assert_eq!(parse_current_workers(SHOW_PROC), vec![1200]);
        assert_eq!(parse_failed_reloads(SHOW_PROC), 0);
        let failed = SHOW_PROC.replace("[failed: 0]", "[failed: 2]");
        assert_eq!(parse_failed_reloads(&failed), 2);
    }

    #[test]
    fn finds_info_fields() {
        let info = "Name: HAProxy\nVersion: 2.6.12\nPid: 1200\n";
        assert_eq!(info_field(info, "Pid"), Some("1200"));
        assert_eq!(info_field(info, "Nope"), None);
    }
}
