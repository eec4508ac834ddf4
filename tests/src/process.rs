//! Child processes that cannot outlive the test, and scratch directories.
//!
//! Every process is started in its own process group, so teardown also
//! reaches what it forked (HAProxy's workers, the server `mariadb-install-db`
//! runs), and with `PR_SET_PDEATHSIG=SIGKILL`, so it dies when the test binary
//! dies, even by `kill -9` or a harness timeout. The kernel sends that signal
//! when the *thread* that forked the child exits, not the process; test
//! threads come and go, so all forks happen on one spawner thread that lives
//! as long as the process.
//!
//! Instances kept in a `static` (one Consul agent shared by a test binary)
//! are never dropped; an `atexit` hook kills the process groups and removes
//! the scratch directories still registered when the test binary exits.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, Once, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

type Job = Box<dyn FnOnce() + Send>;

/// Process groups not yet reaped and scratch directories not yet removed,
/// for the exit hook.
static LIVE_GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());
static LIVE_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn register_exit_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // SAFETY: `on_exit` is a plain `extern "C" fn` with no arguments.
        unsafe {
            libc::atexit(on_exit);
        }
    });
}

extern "C" fn on_exit() {
    // try_lock: a thread may have died holding a lock; better to leave a
    // leftover than to hang the exit.
    if let Ok(groups) = LIVE_GROUPS.try_lock() {
        for &pgid in groups.iter() {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
    if let Ok(dirs) = LIVE_DIRS.try_lock() {
        if !keep_dirs() {
            for dir in dirs.iter() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

fn track<T: PartialEq>(list: &Mutex<Vec<T>>, item: T) {
    register_exit_hook();
    list.lock().unwrap_or_else(|e| e.into_inner()).push(item);
}

fn untrack<T: PartialEq>(list: &Mutex<Vec<T>>, item: &T) {
    list.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|x| x != item);
}

fn spawner() -> &'static mpsc::Sender<Job> {
    static TX: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("successover-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("starting the process spawner thread");
        tx
    })
}

/// Spawns `cmd` in its own process group, tied to the life of the test
/// process. The caller owns the child: prefer [`Proc`], which also reaps and
/// kills it.
pub async fn spawn_tied(mut cmd: Command) -> io::Result<Child> {
    let parent = nix::unistd::getpid();
    // SAFETY: between fork and exec only async-signal-safe calls happen here
    // (prctl, getppid, and an error conversion that does not allocate for
    // an OS error).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The parent may have died between fork and prctl; then nobody
            // would ever send the signal.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::from(nix::errno::Errno::ESRCH));
            }
            Ok(())
        });
    }
    cmd.process_group(0);
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawner()
        .send(Box::new(move || {
            let _ = tx.send(cmd.spawn());
        }))
        .map_err(|_| io::Error::other("the process spawner thread is gone"))?;
    rx.await
        .map_err(|_| io::Error::other("the process spawner thread dropped the request"))?
}

const DEFAULT_GRACE: Duration = Duration::from_secs(2);
const DROP_GRACE_CAP: Duration = Duration::from_secs(2);

/// A child process started by the harness: output goes to a log file, and
/// dropping it kills the whole process group (SIGTERM, then SIGKILL after a
/// grace period) and reaps it.
///
/// Signals only ever go to this child's pid or its own process group, and
/// only while the child is unreaped, so its pid cannot have been reused.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
    grace: Duration,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`; stdin is
    /// `/dev/null` unless the command already set it.
    pub async fn spawn(
        name: impl Into<String>,
        mut cmd: Command,
        log: impl AsRef<Path>,
    ) -> anyhow::Result<Proc> {
        let name = name.into();
        let log = log.as_ref().to_path_buf();
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("{name}: opening log {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("{name}: duplicating log handle"))?;
        cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err));
        let program = format!("{cmd:?}");
        let child = spawn_tied(cmd)
            .await
            .with_context(|| format!("{name}: spawning {program}"))?;
        tracing::debug!(name, pid = child.id(), "started {program}");
        track(&LIVE_GROUPS, child.id() as i32);
        Ok(Proc {
            name,
            child,
            log,
            status: None,
            grace: DEFAULT_GRACE,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// How long [`Proc::stop`] waits after SIGTERM before SIGKILL (`Drop`
    /// waits at most 2 s).
    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// The exit status, if the process has exited (non-blocking).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() && self.has_exited() {
            self.reap();
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// Sends `signal` to the process itself (not its group).
    pub fn signal(&mut self, signal: Signal) -> anyhow::Result<()> {
        if let Some(status) = self.exit_status() {
            bail!(
                "{}: cannot send {signal}: already exited ({status})",
                self.name
            );
        }
        kill(self.nix_pid(), signal)
            .with_context(|| format!("{}: sending {signal} to pid {}", self.name, self.pid()))
    }

    /// SIGKILLs the process group and reaps the process.
    pub async fn kill9(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            let _ = killpg(self.nix_pid(), Signal::SIGKILL);
            self.wait_exited(Duration::from_secs(10)).await;
            self.reap();
        }
        self.status
    }

    /// SIGTERMs the process group, waits up to the grace period, then
    /// SIGKILLs what is left; returns the exit status.
    pub async fn stop(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.terminate_group();
            if !self.wait_exited(self.grace).await {
                tracing::warn!(
                    name = self.name,
                    "no exit {:?} after SIGTERM, SIGKILL",
                    self.grace
                );
            }
        }
        self.kill9().await
    }

    /// Waits up to `limit` for the process to exit on its own.
    pub async fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        if self.status.is_none() && self.wait_exited(limit).await {
            self.reap();
        }
        self.status
    }

    fn nix_pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Whether the process has exited, without reaping it: as long as it is a
    /// zombie its pid and process group stay ours to signal.
    pub fn has_exited(&self) -> bool {
        if self.status.is_some() {
            return true;
        }
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        !matches!(
            waitid(Id::Pid(self.nix_pid()), flags),
            Ok(WaitStatus::StillAlive)
        )
    }

    async fn wait_exited(&self, limit: Duration) -> bool {
        crate::wait_until(limit, || async { self.has_exited() })
            .await
            .is_ok()
    }

    fn terminate_group(&self) {
        let pgid = self.nix_pid();
        let _ = killpg(pgid, Signal::SIGTERM);
        // A SIGSTOPped process would hold on to SIGTERM until continued.
        let _ = killpg(pgid, Signal::SIGCONT);
    }

    /// Kills stragglers of the group (e.g. workers whose master died), then
    /// reaps. Only called once the leader has exited or been SIGKILLed.
    fn reap(&mut self) {
        if self.status.is_some() {
            return;
        }
        let _ = killpg(self.nix_pid(), Signal::SIGKILL);
        let waited = self.child.wait();
        // Once reaped, the pid may be reused: the exit hook must forget it.
        untrack(&LIVE_GROUPS, &(self.child.id() as i32));
        match waited {
            Ok(status) => {
                tracing::debug!(name = self.name, %status, "exited");
                self.status = Some(status);
            }
            Err(e) => {
                tracing::warn!(name = self.name, "waiting for pid {}: {e}", self.pid());
                // Never signal this pid again: it is not known to be ours.
                self.status = Some(std::os::unix::process::ExitStatusExt::from_raw(255 << 8));
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        if !self.has_exited() {
            self.terminate_group();
            // Drop cannot await, so it blocks its thread: briefly, as most
            // processes are gone within milliseconds, and never for long,
            // as what a dropped instance leaves behind is disposable.
            let deadline = std::time::Instant::now() + self.grace.min(DROP_GRACE_CAP);
            while !self.has_exited() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.reap();
    }
}

/// The last `lines` lines of a log file (only its last 64 KiB are read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return format!("<no log at {}>", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A scratch directory (`$TMPDIR/so-<what>-XXXXXX`), removed on drop unless
/// `SUCCESSOVER_KEEP_DIRS=1`. Paths stay short: unix socket paths inside it
/// must fit in 108 bytes.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    pub fn new(what: &str) -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix(&format!("so-{what}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a scratch directory for {what}: {e}"));
        let path = dir.keep();
        track(&LIVE_DIRS, path.clone());
        Scratch { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        untrack(&LIVE_DIRS, &self.path);
        if keep_dirs() {
            eprintln!("successover-tests: keeping {}", self.path.display());
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                eprintln!("successover-tests: removing {}: {e}", self.path.display());
            }
        }
    }
}

fn keep_dirs() -> bool {
    std::env::var("SUCCESSOVER_KEEP_DIRS").is_ok_and(|v| v == "1")
}

/// Prints the log tails of an instance's processes when a test is failing,
/// so the reason the service misbehaved ends up next to the panic message.
pub(crate) fn dump_on_panic(instance: &str, logs: &[&Path]) {
    if !std::thread::panicking() {
        return;
    }
    for log in logs {
        eprintln!(
            "----- {instance}: last lines of {} -----\n{}\n-----",
            log.display(),
            log_tail(log, 30)
        );
    }
}
