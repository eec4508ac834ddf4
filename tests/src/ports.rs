//! Free loopback ports that no other test, in this process or another test
//! binary running in parallel, is handed at the same time.
//!
//! Binding port 0 and closing the socket again is racy across processes, and
//! the ports it returns come from the ephemeral range, where outgoing
//! connections take their local ports too. So ports come from a range below
//! the ephemeral one, and each handed-out port is held by an exclusive
//! `flock` on a per-port file in a directory all test processes share: the
//! kernel drops the lock when the holder dies, so a crashed test binary
//! leaks nothing. A bind check on top skips ports some unrelated program uses.

use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use nix::fcntl::{Flock, FlockArg};

const LOW: u16 = 20000;
const HIGH: u16 = 32000;

/// A reserved port; the reservation ends when this is dropped.
#[derive(Debug)]
pub struct PortLease {
    port: u16,
    _lock: Flock<File>,
}

impl PortLease {
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Reserves a port that is free on 127.0.0.1 for both TCP and UDP (Consul's
/// serf ports use both). Panics when the whole range is taken.
pub fn reserve_port() -> PortLease {
    let (low, high) = range();
    let span = usize::from(high - low);
    static CURSOR: OnceLock<AtomicUsize> = OnceLock::new();
    // Different processes start at different places so they rarely even
    // contend for the same lock file.
    let cursor = CURSOR.get_or_init(|| AtomicUsize::new(std::process::id() as usize * 7919));
    let dir = lock_dir();
    for _ in 0..span {
        let port = low + (cursor.fetch_add(1, Ordering::Relaxed) % span) as u16;
        let Ok(file) = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("port-{port}")))
        else {
            continue;
        };
        let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        if bindable(port) {
            return PortLease { port, _lock: lock };
        }
    }
    panic!(
        "no free port in {low}..{high} on 127.0.0.1 (lock files in {})",
        dir.display()
    );
}

fn bindable(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpListener::bind(addr).is_ok() && UdpSocket::bind(addr).is_ok()
}

/// Stays below the kernel's ephemeral range, wherever it has been configured.
fn range() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(HIGH);
    let high = HIGH.min(ephemeral_low);
    let low = if high > LOW + 1000 { LOW } else { 10000 };
    (low, high)
}

pub(crate) fn lock_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join("successover-locks");
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("creating lock directory {}: {e}", dir.display()));
        // Shared by every user's test runs on the machine.
        let _ =
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o1777));
        dir
    })
    .clone()
}
