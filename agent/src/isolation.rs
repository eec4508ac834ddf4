//! An isolated source stops serving writes by itself (DESIGN.md rule 6a).
//!
//! A source whose agent has lost Consul cannot learn that another node was
//! promoted. Semi-sync already keeps it from acknowledging anything once no
//! replica ACKs (the failover stops the candidate's IO thread; a partition
//! stops them all), but its clients would hang on commits that never
//! return, read stale data, and a proxy cut off with it would keep sending
//! them there. So while the agent is out of contact with Consul (its local
//! lease, [`crate::membership::Lease`], has run out) a watchdog looks at its
//! server every [`INTERVAL`], and fences it (kill clients, read_only, kill
//! again) once the source has no semi-sync ACK progress:
//!
//! - commits wait for an ACK and none arrived for [`STALL`], or
//! - the semi-sync source flag is on and no semi-sync replica has been
//!   connected for [`STALL`] (no commit can complete).
//!
//! A Consul outage alone fences nothing: while replicas ACK, the source
//! keeps serving, and the ACKs are its lease. An idle isolated source
//! with its replicas connected is left alone; its next commit would wait
//! and trip the rule. The watchdog runs beside the agent's cycle, on its
//! own connection, so Consul calls that hang until their timeout do not
//! delay it. The lease ends 2.5 s after the last liveness pass Consul
//! accepted (0.5 s before Consul may invalidate the session), so a source
//! cut off with its replicas is read-only about 3 s after the cut.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::membership::Lease;
use crate::metrics::Metrics;
use crate::mysql::{Node, NodeConfig};

/// How often the watchdog looks while out of contact.
pub const INTERVAL: Duration = Duration::from_millis(250);
/// How long without ACK progress before the source fences itself.
pub const STALL: Duration = Duration::from_millis(500);

/// One look at the local server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub at: Instant,
    /// Writable and replicating from nobody: a source.
    pub writable_source: bool,
    pub source_flag: bool,
    pub clients: u64,
    pub wait_sessions: u64,
    pub yes_tx: u64,
}

/// The watchdog's memory: the first look of the current stall.
#[derive(Debug, Default)]
pub struct Watch {
    since: Option<Sample>,
}

impl Watch {
    /// Back in contact, or nothing to judge: forget the stall.
    pub fn reset(&mut self) {
        self.since = None;
    }

    /// A look while out of contact; `Some(why)` when the server must be
    /// fenced now.
    pub fn look(&mut self, s: Sample) -> Option<String> {
        if !s.writable_source {
            self.since = None;
            return None;
        }
        let waiting = s.wait_sessions > 0;
        let no_acker = s.source_flag && s.clients == 0;
        let Some(first) = self.since else {
            self.since = (waiting || no_acker).then_some(s);
            return None;
        };
        let still_waiting = waiting && first.wait_sessions > 0 && s.yes_tx == first.yes_tx;
        let still_no_acker = no_acker && first.source_flag && first.clients == 0;
        if !still_waiting && !still_no_acker {
            // An ACK arrived, or the waits ended: a new stall starts here.
            self.since = (waiting || no_acker).then_some(s);
            return None;
        }
        let stalled = s.at.saturating_duration_since(first.at);
        if stalled < STALL {
            return None;
        }
        self.since = None;
        Some(if still_waiting {
            format!(
                "cut off from Consul, and {} commit(s) waited {} ms with no semi-sync ACK",
                s.wait_sessions,
                stalled.as_millis()
            )
        } else {
            format!(
                "cut off from Consul, and no semi-sync replica connected for {} ms",
                stalled.as_millis()
            )
        })
    }
}

async fn sample(node: &mut Node) -> Result<Sample, crate::mysql::NodeError> {
    let read_only = node.read_only().await?;
    let replica = node.replica_status().await?;
    let semi = node.semi_sync().await?;
    Ok(Sample {
        at: Instant::now(),
        writable_source: !read_only.read_only && replica.is_none(),
        source_flag: semi.source_enabled,
        clients: semi.clients,
        wait_sessions: semi.wait_sessions,
        yes_tx: semi.yes_tx,
    })
}

/// Runs the watchdog until `stop`. `except`: the accounts the fence's kill
/// loop spares (the agents' and replication's).
pub async fn watchdog(
    config: NodeConfig,
    lease: Lease,
    except: Vec<String>,
    metrics: std::sync::Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut node = Node::new(config);
    let mut watch = Watch::default();
    let except: Vec<&str> = except.iter().map(String::as_str).collect();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
        if lease.valid_at(Instant::now()) {
            watch.reset();
            continue;
        }
        let s = match sample(&mut node).await {
            Ok(s) => s,
            // Down or hung: nothing to fence, and nothing can commit.
            Err(_) => {
                watch.reset();
                continue;
            }
        };
        let Some(why) = watch.look(s) else { continue };
        tracing::warn!("fencing this server: {why}");
        metrics.self_fence();
        match crate::fence::fence_local(&mut node, &except).await {
            Ok(n) => tracing::warn!(
                killed = n,
                "self-fenced: set read_only and killed {n} client connection(s) because {why}"
            ),
            Err(e) => {
                metrics.error("mysql");
                tracing::error!(error = e, "self-fence failed ({why})");
            }
        }
    }
    node.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn source(at: Instant, clients: u64, wait_sessions: u64, yes_tx: u64) -> Sample {
        Sample {
            at,
            writable_source: true,
            source_flag: true,
            clients,
            wait_sessions,
            yes_tx,
        }
    }

    #[test]
    fn commits_waiting_without_an_ack_fence_after_the_stall() {
        let t0 = Instant::now();
        let mut w = Watch::default();
        assert_eq!(w.look(source(at(t0, 0), 1, 3, 100)), None);
        assert_eq!(w.look(source(at(t0, 250), 1, 3, 100)), None);
        let why = w.look(source(at(t0, 500), 1, 4, 100)).expect("fenced");
        assert!(why.contains("no semi-sync ACK"), "{why}");
    }

    #[test]
    fn acks_flowing_never_fence_however_long_consul_is_away() {
        let t0 = Instant::now();
        let mut w = Watch::default();
        for i in 0..200u64 {
            // Commits wait at every look, but each look sees new ACKs.
            assert_eq!(w.look(source(at(t0, i * 250), 1, 2, 100 + i)), None);
        }
    }

    #[test]
    fn an_idle_source_with_its_replica_is_left_alone() {
        let t0 = Instant::now();
        let mut w = Watch::default();
        for i in 0..20u64 {
            assert_eq!(w.look(source(at(t0, i * 250), 1, 0, 100)), None);
        }
    }

    #[test]
    fn no_semi_sync_replica_connected_fences_even_when_idle() {
        let t0 = Instant::now();
        let mut w = Watch::default();
        assert_eq!(w.look(source(at(t0, 0), 0, 0, 100)), None);
        assert_eq!(w.look(source(at(t0, 250), 0, 0, 100)), None);
        let why = w.look(source(at(t0, 600), 0, 0, 100)).expect("fenced");
        assert!(why.contains("no semi-sync replica"), "{why}");
        // Without the source flag nothing waits for an ACK: not a stall.
        let mut w = Watch::default();
        let mut s = source(at(t0, 0), 0, 0, 100);
        s.source_flag = false;
        for i in 0..10u64 {
            s.at = at(t0, i * 250);
            assert_eq!(w.look(s), None);
        }
    }

    #[test]
    fn an_ack_in_between_starts_the_stall_again() {
        let t0 = Instant::now();
        let mut w = Watch::default();
        assert_eq!(w.look(source(at(t0, 0), 1, 1, 100)), None);
        assert_eq!(w.look(source(at(t0, 400), 1, 1, 101)), None);
        assert_eq!(w.look(source(at(t0, 800), 1, 1, 101)), None);
        assert!(w.look(source(at(t0, 900), 1, 1, 101)).is_some());
    }

    #[test]
    fn a_read_only_server_or_a_replica_is_never_fenced() {
        let t0 = Instant::now();
        let mut w = Watch::default();
        let mut s = source(at(t0, 0), 0, 2, 100);
        s.writable_source = false;
        for i in 0..10u64 {
            s.at = at(t0, i * 250);
            assert_eq!(w.look(s), None);
        }
    }
}
