//! The systemd notify protocol (`sd_notify(3)`), spoken directly: both
//! daemons run as `Type=notify` units with `WatchdogSec=`, and linking
//! libsystemd for a handful of datagrams would tie the binaries to the
//! build host's systemd.
//!
//! The protocol: systemd passes a unix datagram socket in `$NOTIFY_SOCKET`
//! (a path, or `@name` for Linux's abstract namespace) and the service
//! sends newline-separated `KEY=VALUE` assignments to it:
//!
//! | message | when |
//! |---|---|
//! | `READY=1` | the first cycle did its job: `systemctl start` returns, ordered units start |
//! | `WATCHDOG=1` | from the main loop, at half of `$WATCHDOG_USEC`: a hung loop stops sending and gets restarted |
//! | `RELOADING=1` + `MONOTONIC_USEC=…` | SIGHUP received; `READY=1` follows when the reload is done |
//! | `STOPPING=1` | shutdown began |
//! | `STATUS=…` | one line shown by `systemctl status` |
//!
//! Outside systemd (no `$NOTIFY_SOCKET`) every call does nothing, so the
//! daemons and tests run unchanged by hand.

use std::future::Future;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// How long one notification may block. The receiving queue of systemd is
/// large, so a send that waits at all means PID 1 is stuck; the daemon's
/// own work must not stall behind it.
const SEND_TIMEOUT: Duration = Duration::from_millis(500);

/// Where notifications go, and the watchdog interval systemd asked for.
#[derive(Debug)]
pub struct Notifier {
    addr: Option<SocketAddr>,
    watchdog: Option<Duration>,
    /// `READY=1` was sent once; after that a reload ends with `READY=1`.
    ready: AtomicBool,
    /// `STOPPING=1` was sent: several shutdown paths may report it.
    stopping: AtomicBool,
}

impl Notifier {
    /// A notifier that sends nothing (not run by systemd).
    pub fn disabled() -> Notifier {
        Notifier {
            addr: None,
            watchdog: None,
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        }
    }

    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID` without
    /// changing the environment.
    pub fn from_env() -> Notifier {
        Notifier::from_lookup(|name| std::env::var(name).ok(), std::process::id())
    }

    /// Like [`Notifier::from_env`], with the variables from `lookup` and
    /// `pid` as this process's id (for tests). A socket value that is
    /// neither an absolute path nor `@name` is ignored with a warning: such
    /// a value cannot come from systemd, and guessing could send to a
    /// stranger's socket.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>, pid: u32) -> Notifier {
        let addr =
            lookup("NOTIFY_SOCKET")
                .filter(|s| !s.is_empty())
                .and_then(|s| match parse_socket(&s) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        tracing::warn!(value = s, error = %e, "ignoring NOTIFY_SOCKET");
                        None
                    }
                });
        let watchdog = watchdog_from(lookup("WATCHDOG_USEC"), lookup("WATCHDOG_PID"), pid);
        Notifier {
            addr,
            watchdog,
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        }
    }

    /// Sends to `addr` (for tests: a socket bound by the test).
    pub fn with_socket(addr: SocketAddr, watchdog: Option<Duration>) -> Notifier {
        Notifier {
            addr: Some(addr),
            watchdog,
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        }
    }

    /// Whether notifications go anywhere.
    pub fn enabled(&self) -> bool {
        self.addr.is_some()
    }

    /// How often systemd expects `WATCHDOG=1`, if it does (`WatchdogSec=`
    /// set and the watchdog meant for this process). Ping at half of it.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Whether [`Notifier::ready`] was called.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Sends `state` (newline-separated assignments) as one datagram.
    /// `Ok(false)`: no socket configured, nothing sent.
    pub fn notify(&self, state: &str) -> io::Result<bool> {
        let Some(addr) = &self.addr else {
            return Ok(false);
        };
        // A fresh unbound socket per message, as libsystemd does: nothing
        // to keep open, and the kernel attaches our credentials, which is
        // how systemd tells the main process's messages from others'.
        let socket = UnixDatagram::unbound()?;
        socket.set_write_timeout(Some(SEND_TIMEOUT))?;
        let sent = socket.send_to_addr(state.as_bytes(), addr)?;
        if sent != state.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short notify datagram: {sent} of {} bytes", state.len()),
            ));
        }
        Ok(true)
    }

    /// `READY=1`: start-up is complete.
    pub fn ready(&self) -> io::Result<bool> {
        self.ready.store(true, Ordering::Relaxed);
        self.notify("READY=1")
    }

    /// `WATCHDOG=1`: the main loop is alive.
    pub fn watchdog(&self) -> io::Result<bool> {
        self.notify("WATCHDOG=1")
    }

    /// `RELOADING=1` with the monotonic timestamp systemd ≥ 253 uses to
    /// match the reload to the `READY=1` that ends it (older versions
    /// ignore the timestamp).
    pub fn reloading(&self) -> io::Result<bool> {
        self.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            monotonic_usec()?
        ))
    }

    /// Ends a reload with `READY=1` — but only once start-up was reported:
    /// a SIGHUP before the first successful cycle must not make systemd
    /// believe the daemon is up. `Ok(false)` when nothing was sent.
    pub fn reloaded(&self) -> io::Result<bool> {
        if !self.is_ready() {
            return Ok(false);
        }
        self.notify("READY=1")
    }

    /// `STOPPING=1`: shutdown began. Sent once; `Ok(false)` after that.
    pub fn stopping(&self) -> io::Result<bool> {
        if self.stopping.swap(true, Ordering::Relaxed) {
            return Ok(false);
        }
        self.notify("STOPPING=1")
    }

    /// Awaits `work` in the caller's own task, sending `WATCHDOG=1` at half
    /// the watchdog interval while it runs, but for no longer than
    /// `budget`. Work that is slow for a reason (a failover waiting for a
    /// relay log to be applied) keeps the daemon alive; work stuck past the
    /// longest it can legitimately take stops the pings, and so does a
    /// blocked thread (nothing polls the timer), so systemd restarts the
    /// daemon either way. Pings come from this future only: a watchdog fed
    /// by a task of its own would go on while the main loop hangs.
    pub async fn watch<F: Future>(&self, work: F, budget: Duration) -> F::Output {
        let Some(interval) = self.watchdog.filter(|_| self.enabled()) else {
            return work.await;
        };
        let every = interval / 2;
        let deadline = tokio::time::Instant::now() + budget;
        let mut next = tokio::time::Instant::now() + every;
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = tokio::time::sleep_until(next), if next <= deadline => {
                    logged("WATCHDOG", self.watchdog());
                    next += every;
                }
            }
        }
    }

    /// `STATUS=<line>`, shown by `systemctl status`. Control characters
    /// become spaces: a newline would start a new assignment.
    pub fn status(&self, line: &str) -> io::Result<bool> {
        let clean: String = line
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        self.notify(&format!("STATUS={clean}"))
    }
}

/// `/path` or `@abstract-name`. systemd ≥ 254 also hands out `vsock:`
/// addresses, which only matter for VMs notifying their host.
fn parse_socket(value: &str) -> io::Result<SocketAddr> {
    if let Some(name) = value.strip_prefix('@') {
        return SocketAddr::from_abstract_name(name.as_bytes());
    }
    if value.starts_with('/') {
        return SocketAddr::from_pathname(value);
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        "not an absolute path or @abstract name",
    ))
}

/// `$WATCHDOG_USEC` applies to this process only when `$WATCHDOG_PID` is
/// unset or names it: a child that inherited the variables must not think
/// it is being watched.
fn watchdog_from(usec: Option<String>, pid: Option<String>, me: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(me) {
            return None;
        }
    }
    match usec?.trim().parse::<u64>() {
        Ok(0) | Err(_) => None,
        Ok(us) => Some(Duration::from_micros(us)),
    }
}

/// `CLOCK_MONOTONIC` in microseconds: the clock systemd compares
/// `MONOTONIC_USEC` against. `std::time::Instant` reads the same clock but
/// does not expose its value.
fn monotonic_usec() -> io::Result<u64> {
    let ts =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_err(io::Error::from)?;
    Ok(ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1_000)
}

static GLOBAL: OnceLock<Notifier> = OnceLock::new();

/// Reads the notify variables once for the whole process and removes them
/// from the environment, so that programs the daemon starts (`haproxy -c`,
/// a reload command) neither notify on its behalf nor believe they are
/// watched. Call first thing in `main`, before any thread exists: changing
/// the environment races with threads reading it.
pub fn init() -> &'static Notifier {
    let notifier = GLOBAL.get_or_init(Notifier::from_env);
    for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        std::env::remove_var(name);
    }
    notifier
}

/// The process-wide notifier: what [`init`] read, or the environment as it
/// is when `init` was never called.
pub fn notifier() -> &'static Notifier {
    GLOBAL.get_or_init(Notifier::from_env)
}

fn logged(what: &str, result: io::Result<bool>) -> bool {
    match result {
        Ok(sent) => sent,
        Err(e) => {
            tracing::warn!(error = %e, "cannot notify systemd ({what})");
            false
        }
    }
}

/// [`Notifier::ready`] on the process-wide notifier; errors are logged.
pub fn ready() -> bool {
    logged("READY", notifier().ready())
}

/// [`Notifier::watchdog`] on the process-wide notifier. Also for a long
/// step inside a cycle that is making progress and must not be mistaken
/// for a hang.
pub fn watchdog() -> bool {
    logged("WATCHDOG", notifier().watchdog())
}

/// [`Notifier::reloading`] on the process-wide notifier.
pub fn reloading() -> bool {
    logged("RELOADING", notifier().reloading())
}

/// [`Notifier::reloaded`] on the process-wide notifier.
pub fn reloaded() -> bool {
    logged("READY after reload", notifier().reloaded())
}

/// [`Notifier::stopping`] on the process-wide notifier.
pub fn stopping() -> bool {
    logged("STOPPING", notifier().stopping())
}

/// [`Notifier::status`] on the process-wide notifier.
pub fn status(line: &str) -> bool {
    logged("STATUS", notifier().status(line))
}

/// [`Notifier::watch`] on the process-wide notifier.
pub async fn watch<F: Future>(work: F, budget: Duration) -> F::Output {
    notifier().watch(work, budget).await
}

/// [`Notifier::watchdog_interval`] of the process-wide notifier.
pub fn watchdog_interval() -> Option<Duration> {
    notifier().watchdog_interval()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::atomic::AtomicU32;

    /// A bound receiver standing in for systemd.
    struct Receiver {
        socket: UnixDatagram,
        dir: Option<PathBuf>,
    }

    impl Receiver {
        fn at_path() -> (Receiver, String) {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "so-notify-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("notify");
            let socket = UnixDatagram::bind(&path).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let value = path.to_str().unwrap().to_owned();
            (
                Receiver {
                    socket,
                    dir: Some(dir),
                },
                value,
            )
        }

        fn abstract_ns() -> (Receiver, String) {
            static N: AtomicU32 = AtomicU32::new(0);
            let name = format!(
                "successover-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            );
            let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
            let socket = UnixDatagram::bind_addr(&addr).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            (Receiver { socket, dir: None }, format!("@{name}"))
        }

        fn recv(&self) -> String {
            let mut buf = [0u8; 4096];
            let n = self.socket.recv(&mut buf).unwrap();
            String::from_utf8(buf[..n].to_vec()).unwrap()
        }

        fn nothing_queued(&self) -> bool {
            self.socket.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 64];
            let empty = matches!(
                self.socket.recv(&mut buf),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            );
            self.socket.set_nonblocking(false).unwrap();
            empty
        }
    }

    impl Drop for Receiver {
        fn drop(&mut self) {
            if let Some(dir) = &self.dir {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn sends_each_message_to_a_path_socket() {
        let (rx, path) = Receiver::at_path();
        let n = Notifier::from_lookup(env(&[("NOTIFY_SOCKET", &path)]), 1);
        assert!(n.enabled());
        assert!(n.ready().unwrap());
        assert_eq!(rx.recv(), "READY=1");
        assert!(n.watchdog().unwrap());
        assert_eq!(rx.recv(), "WATCHDOG=1");
        assert!(n.stopping().unwrap());
        assert_eq!(rx.recv(), "STOPPING=1");
        assert!(!n.stopping().unwrap(), "once is enough");
        assert!(n.status("line one\nWATCHDOG=trigger").unwrap());
        assert_eq!(rx.recv(), "STATUS=line one WATCHDOG=trigger");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let (rx, name) = Receiver::abstract_ns();
        assert!(name.starts_with('@'));
        let n = Notifier::from_lookup(env(&[("NOTIFY_SOCKET", &name)]), 1);
        assert!(n.ready().unwrap());
        assert_eq!(rx.recv(), "READY=1");
    }

    #[test]
    fn reloading_carries_a_monotonic_timestamp_and_ends_with_ready() {
        let (rx, path) = Receiver::at_path();
        let n = Notifier::from_lookup(env(&[("NOTIFY_SOCKET", &path)]), 1);
        // A SIGHUP during start-up: no READY=1 until start-up is done.
        assert!(n.reloading().unwrap());
        let msg = rx.recv();
        assert!(!n.reloaded().unwrap());
        assert!(rx.nothing_queued());
        let mut lines = msg.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let usec: u64 = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .expect("MONOTONIC_USEC line")
            .parse()
            .unwrap();
        assert!(usec > 0);

        n.ready().unwrap();
        assert_eq!(rx.recv(), "READY=1");
        n.reloading().unwrap();
        let _ = rx.recv();
        assert!(n.reloaded().unwrap());
        assert_eq!(rx.recv(), "READY=1");
    }

    #[test]
    fn monotonic_clock_moves_like_instant() {
        let t0 = std::time::Instant::now();
        let a = monotonic_usec().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let b = monotonic_usec().unwrap();
        let elapsed = t0.elapsed().as_micros() as u64;
        assert!(b - a >= 20_000, "{a} -> {b}");
        assert!(
            b - a <= elapsed + 1_000,
            "{a} -> {b}, Instant saw {elapsed}"
        );
    }

    #[test]
    fn without_a_socket_nothing_is_sent() {
        let n = Notifier::from_lookup(env(&[]), 1);
        assert!(!n.enabled());
        assert!(!n.ready().unwrap());
        assert!(!n.watchdog().unwrap());
        assert!(!n.reloading().unwrap());
        assert_eq!(n.watchdog_interval(), None);
        assert!(!Notifier::disabled().stopping().unwrap());
        // Relative paths and vsock addresses are not ours to guess at.
        for bad in ["notify.sock", "vsock:2:1234"] {
            assert!(!Notifier::from_lookup(env(&[("NOTIFY_SOCKET", bad)]), 1).enabled());
        }
    }

    #[test]
    fn a_vanished_socket_is_an_error() {
        let (rx, path) = Receiver::at_path();
        let n = Notifier::from_lookup(env(&[("NOTIFY_SOCKET", &path)]), 1);
        drop(rx);
        assert!(n.ready().is_err());
    }

    /// Counts the `WATCHDOG=1` datagrams queued so far.
    fn pings(rx: &Receiver) -> usize {
        rx.socket.set_nonblocking(true).unwrap();
        let mut n = 0;
        let mut buf = [0u8; 64];
        while let Ok(len) = rx.socket.recv(&mut buf) {
            assert_eq!(&buf[..len], b"WATCHDOG=1");
            n += 1;
        }
        rx.socket.set_nonblocking(false).unwrap();
        n
    }

    #[tokio::test]
    async fn watch_pings_while_the_work_runs_within_its_budget() {
        let (rx, path) = Receiver::at_path();
        let n = Notifier::from_lookup(
            env(&[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "100000")]),
            1,
        );
        // 50 ms apart over 330 ms: 6 pings.
        let out = n
            .watch(
                async {
                    tokio::time::sleep(Duration::from_millis(330)).await;
                    7
                },
                Duration::from_secs(10),
            )
            .await;
        assert_eq!(out, 7);
        let within = pings(&rx);
        assert!((3..=7).contains(&within), "{within} pings");

        // Past its budget, stuck work gets no more pings.
        n.watch(
            tokio::time::sleep(Duration::from_millis(400)),
            Duration::from_millis(120),
        )
        .await;
        let stuck = pings(&rx);
        assert!((1..=3).contains(&stuck), "{stuck} pings");

        // Without a watchdog the work simply runs.
        let plain = Notifier::from_lookup(env(&[("NOTIFY_SOCKET", &path)]), 1);
        plain
            .watch(
                tokio::time::sleep(Duration::from_millis(60)),
                Duration::from_secs(1),
            )
            .await;
        assert_eq!(pings(&rx), 0);
    }

    #[test]
    fn watchdog_interval_is_only_for_the_named_process() {
        let usec = "30000000";
        let for_pid = |pid: Option<&str>, me| {
            let mut pairs = vec![("WATCHDOG_USEC", usec)];
            if let Some(p) = pid {
                pairs.push(("WATCHDOG_PID", p));
            }
            Notifier::from_lookup(env(&pairs), me).watchdog_interval()
        };
        assert_eq!(for_pid(None, 42), Some(Duration::from_secs(30)));
        assert_eq!(for_pid(Some("42"), 42), Some(Duration::from_secs(30)));
        assert_eq!(for_pid(Some("41"), 42), None);
        assert_eq!(for_pid(Some("x"), 42), None);
        for bad in ["0", "", "-5", "30s"] {
            let n = Notifier::from_lookup(env(&[("WATCHDOG_USEC", bad)]), 1);
            assert_eq!(n.watchdog_interval(), None, "{bad:?}");
        }
    }
}
