//! Network-namespace "hosts" for partition tests.
//!
//! Each host is a namespace joined to the root namespace by a veth pair with
//! its own /30 out of 10.213.0.0/16. Those addresses exist only on these
//! veths, and a host's only route is to 10.213.0.0/16 through its root-side
//! end, so no traffic leaves the machine. Hosts reach each other through the
//! root namespace: forwarding is enabled on the root-side veths only (the
//! kernel checks the flag of the interface a packet arrives on), never
//! machine-wide.
//!
//! Names carry the creating pid (`so-<pid>-<n>`, interfaces `so<pid>h<n>` /
//! `so<pid>n<n>`, at most 15 characters), so leftovers of a test process that
//! was killed before its `Drop` ran can be recognised and removed.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

use anyhow::{bail, Context};
use nix::fcntl::{Flock, FlockArg};

use crate::bins;
use crate::process::Proc;

/// Subnets are /30s in 10.213.0.0/16.
const SUBNETS: usize = 1 << 14;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A network namespace with one veth link to the root namespace.
#[derive(Debug)]
pub struct NetHost {
    name: String,
    ns: String,
    host_if: String,
    ns_if: String,
    host_addr: Ipv4Addr,
    addr: Ipv4Addr,
    _subnet: Flock<File>,
}

impl NetHost {
    /// Creates the namespace, the veth pair and the addresses, and brings
    /// everything up. `name` is a label for messages; the namespace gets a
    /// unique name. Panics (with the failing `ip` command) if that fails;
    /// this needs root.
    pub async fn create(name: &str) -> NetHost {
        static CLEANUP: Once = Once::new();
        CLEANUP.call_once(remove_stale);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let (index, lock) = reserve_subnet()
            .unwrap_or_else(|e| panic!("net host {name}: reserving a subnet: {e:#}"));
        let base = u32::from(Ipv4Addr::new(10, 213, 0, 0)) + (index as u32) * 4;
        let host = NetHost {
            name: name.to_string(),
            ns: format!("so-{pid}-{n}"),
            host_if: format!("so{pid}h{n}"),
            ns_if: format!("so{pid}n{n}"),
            host_addr: Ipv4Addr::from(base + 1),
            addr: Ipv4Addr::from(base + 2),
            _subnet: lock,
        };
        assert!(
            host.host_if.len() <= 15,
            "interface name {} too long",
            host.host_if
        );
        if let Err(e) = host.set_up().await {
            // Drop removes whatever part was created.
            panic!("net host {name}: {e:#}");
        }
        tracing::info!(
            name,
            ns = host.ns,
            addr = %host.addr,
            host_side = %host.host_addr,
            "net host ready"
        );
        host
    }

    async fn set_up(&self) -> anyhow::Result<()> {
        let (ns, h, n) = (self.ns.as_str(), self.host_if.as_str(), self.ns_if.as_str());
        let host_cidr = format!("{}/30", self.host_addr);
        let ns_cidr = format!("{}/30", self.addr);
        let gateway = self.host_addr.to_string();
        ip(&["netns", "add", ns]).await?;
        ip(&[
            "link", "add", h, "type", "veth", "peer", "name", n, "netns", ns,
        ])
        .await?;
        ip(&["addr", "add", &host_cidr, "dev", h]).await?;
        ip(&["link", "set", h, "up"]).await?;
        ip(&["-n", ns, "link", "set", "lo", "up"]).await?;
        ip(&["-n", ns, "addr", "add", &ns_cidr, "dev", n]).await?;
        ip(&["-n", ns, "link", "set", n, "up"]).await?;
        ip(&["-n", ns, "route", "add", "10.213.0.0/16", "via", &gateway]).await?;
        let forwarding = format!("/proc/sys/net/ipv4/conf/{h}/forwarding");
        std::fs::write(&forwarding, "1").with_context(|| format!("writing 1 to {forwarding}"))?;
        Ok(())
    }

    /// The label given to [`NetHost::create`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's name, for `ip netns exec` or [`crate::MariaDbOptions::netns`].
    pub fn ns_name(&self) -> &str {
        &self.ns
    }

    /// The host's address (inside the namespace).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The root namespace's end of the link: how processes in the namespace
    /// reach services in the root namespace (which must listen there).
    pub fn host_side_addr(&self) -> Ipv4Addr {
        self.host_addr
    }

    /// The root-side interface name.
    pub fn host_interface(&self) -> &str {
        &self.host_if
    }

    /// A command that runs `program` inside the namespace; for one-shot
    /// commands (`.output().await`). It is killed if dropped while running.
    pub fn run(&self, program: impl AsRef<OsStr>) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(bins::ip());
        cmd.args(["netns", "exec", &self.ns])
            .arg(program)
            .kill_on_drop(true);
        cmd
    }

    /// Wraps `cmd` so that it runs inside the namespace (program, arguments,
    /// environment and working directory are kept).
    pub fn wrap(&self, cmd: &std::process::Command) -> std::process::Command {
        let mut wrapped = std::process::Command::new(bins::ip());
        wrapped
            .args(["netns", "exec", &self.ns])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(v) => wrapped.env(key, v),
                None => wrapped.env_remove(key),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            wrapped.current_dir(dir);
        }
        wrapped
    }

    /// Starts a long-running process inside the namespace as a [`Proc`]
    /// (killed on drop and with the test process), output to `log`.
    pub async fn spawn(
        &self,
        name: &str,
        cmd: &std::process::Command,
        log: impl AsRef<std::path::Path>,
    ) -> anyhow::Result<Proc> {
        Proc::spawn(format!("{name}@{}", self.name), self.wrap(cmd), log).await
    }

    /// Partitions the host: its link goes down, packets in both directions
    /// are dropped and established connections hang rather than reset, as
    /// with a pulled cable.
    pub async fn cut(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.host_if, "down"])
            .await
            .with_context(|| format!("cutting net host {}", self.name))?;
        tracing::info!(name = self.name, "net host cut");
        Ok(())
    }

    /// Ends a [`NetHost::cut`]. Connections that did not time out meanwhile
    /// carry on.
    pub async fn heal(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.host_if, "up"])
            .await
            .with_context(|| format!("healing net host {}", self.name))?;
        // Bringing the link down dropped the connected route on the root
        // side; the kernel restores it with the link, but the forwarding flag
        // is kept, so nothing else needs redoing.
        tracing::info!(name = self.name, "net host healed");
        Ok(())
    }
}

impl Drop for NetHost {
    fn drop(&mut self) {
        // Deleting the root-side veth deletes its peer at once; namespace
        // teardown alone would remove it only asynchronously, after every
        // process inside has exited.
        let _ = std::process::Command::new(bins::ip())
            .args(["link", "del", &self.host_if])
            .output();
        let _ = std::process::Command::new(bins::ip())
            .args(["netns", "del", &self.ns])
            .output();
    }
}

async fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(bins::ip())
        .args(args)
        .output()
        .await
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Picks a /30 no other test process holds (flock, as for ports) and no
/// interface on the machine already uses.
fn reserve_subnet() -> anyhow::Result<(usize, Flock<File>)> {
    let in_use = std::process::Command::new(bins::ip())
        .args(["-o", "-4", "addr", "show"])
        .output()
        .context("listing addresses")?;
    let in_use = String::from_utf8_lossy(&in_use.stdout).into_owned();
    let dir = crate::ports::lock_dir();
    let start = std::process::id() as usize * 31;
    for k in 0..SUBNETS {
        let index = (start + k) % SUBNETS;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("net-{index}")))
            .context("opening subnet lock file")?;
        let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        let base = u32::from(Ipv4Addr::new(10, 213, 0, 0)) + (index as u32) * 4;
        let taken = (1..=2).any(|o| in_use.contains(&format!(" {}/", Ipv4Addr::from(base + o))));
        if !taken {
            return Ok((index, lock));
        }
    }
    bail!("all {SUBNETS} subnets of 10.213.0.0/16 are in use")
}

/// Removes namespaces and root-side veths named after a test process that
/// no longer exists. Only names of the harness's own pattern are touched.
fn remove_stale() {
    let dead = |pid: &str| {
        pid.parse::<u32>()
            .is_ok_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
    };
    if let Ok(out) = std::process::Command::new(bins::ip())
        .args(["-o", "link", "show"])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(ifname) = line
                .split(": ")
                .nth(1)
                .map(|s| s.split('@').next().unwrap_or(s))
            else {
                continue;
            };
            let Some((pid, _)) = ifname.strip_prefix("so").and_then(|r| r.split_once('h')) else {
                continue;
            };
            if dead(pid) {
                let _ = std::process::Command::new(bins::ip())
                    .args(["link", "del", ifname])
                    .output();
            }
        }
    }
    if let Ok(out) = std::process::Command::new(bins::ip())
        .args(["netns", "list"])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(ns) = line.split_whitespace().next() else {
                continue;
            };
            let Some((pid, _)) = ns.strip_prefix("so-").and_then(|r| r.split_once('-')) else {
                continue;
            };
            if dead(pid) {
                let _ = std::process::Command::new(bins::ip())
                    .args(["netns", "del", ns])
                    .output();
            }
        }
    }
}
