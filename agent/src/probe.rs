//! The coordinator's look at its source, on a timer of its own so that it
//! goes on while a cycle waits on a hung server: one `SELECT 1` every
//! `timing.probe`, each on a connection of its own, so looks at a hung
//! source overlap instead of queueing behind one another's timeouts.
//! A failed look wakes the agent's loop, and the consecutive failures count
//! as confirmations of a dead source (the replicas must still agree: see
//! `decide::detect`). A look that answered also reads the source's ACK
//! counters: commits waiting while no ACK comes for [`ACK_STALL`] is a lost
//! ACKer, which wakes the loop too, and tells the cycle not to wait on a
//! replica that does not answer (see `decide::stall`). No Consul request.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::Instrument as _;

use crate::decide::{HostPort, ProbeStall};
use crate::mysql::{AckCounters, Node, NodeConfig};

/// No ACK for this long while commits wait on the source: a healthy
/// semi-sync replica ACKs in milliseconds, even behind a busy source.
pub const ACK_STALL: Duration = Duration::from_millis(500);

/// Looks in flight at most: a hung source holds each for the connect or
/// read timeout.
const MAX_OUTSTANDING: usize = 4;

#[derive(Default)]
struct State {
    target: Option<(String, HostPort)>,
    /// Consecutive failed looks at `target`.
    failures: u32,
    outstanding: usize,
    /// A connection the last good look left open, reused by the next.
    idle: Option<Node>,
    stall: Option<Stall>,
    /// How to connect to the target, as the agent's configuration says now.
    config: Option<NodeConfig>,
    every: Duration,
    /// The timer task runs (it ends once there is no target).
    ticking: bool,
}

/// Commits seen waiting on the target with the ACK counters standing still.
struct Stall {
    yes_tx: u64,
    no_tx: u64,
    /// When the first look that saw these counters ended.
    since: Instant,
    /// When the latest look that saw them started: the stall is proven
    /// from `since` to here, never longer than the looks show.
    confirmed: Instant,
    woke: bool,
}

impl Stall {
    fn span(&self) -> Duration {
        self.confirmed.saturating_duration_since(self.since)
    }
}

#[derive(Clone)]
pub struct Prober {
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
}

impl Prober {
    pub fn new(wake: Arc<Notify>) -> Prober {
        Prober {
            state: Arc::default(),
            wake,
        }
    }

    /// What to look at (the published source, by name and address), how,
    /// and how often; a new target starts with no failures. Looks go on
    /// every `every` until the target is `None`.
    pub fn aim(&self, target: Option<(String, HostPort, NodeConfig)>, every: Duration) {
        let mut s = self.state.lock().expect("probe state");
        let (target, config) = match target {
            Some((name, addr, config)) => (Some((name, addr)), Some(config)),
            None => (None, None),
        };
        if s.target != target {
            s.target = target;
            s.failures = 0;
            s.idle = None;
            s.stall = None;
        }
        s.config = config;
        s.every = every;
        if s.target.is_some() && !s.ticking {
            s.ticking = true;
            let prober = self.clone();
            tokio::spawn(
                async move {
                    loop {
                        let every = prober.state.lock().expect("probe state").every;
                        tokio::time::sleep(every).await;
                        if !prober.look() {
                            return;
                        }
                    }
                }
                .in_current_span(),
            );
        }
    }

    /// How long `name` (if it is the target) has been seen with commits
    /// waiting and no ACK, and the counters that stood still.
    pub fn stall_of(&self, name: &str) -> Option<ProbeStall> {
        let s = self.state.lock().expect("probe state");
        match (&s.target, &s.stall) {
            (Some((n, _)), Some(st)) if n == name => Some(ProbeStall {
                yes_tx: st.yes_tx,
                no_tx: st.no_tx,
                for_ms: st.span().as_millis() as u64,
            }),
            _ => None,
        }
    }

    /// Whether the target's commits have waited without an ACK for
    /// [`ACK_STALL`].
    pub fn stalled(&self) -> bool {
        let s = self.state.lock().expect("probe state");
        s.stall.as_ref().is_some_and(|st| st.span() >= ACK_STALL)
    }

    /// Whether the last look at the target failed.
    pub fn failing(&self) -> bool {
        let s = self.state.lock().expect("probe state");
        s.target.is_some() && s.failures > 0
    }

    /// Consecutive failed looks at `name`, if it is the target.
    pub fn failures_of(&self, name: &str) -> u32 {
        let s = self.state.lock().expect("probe state");
        match &s.target {
            Some((n, _)) if n == name => s.failures,
            _ => 0,
        }
    }

    /// Starts one look (unless too many are in flight) and returns at once;
    /// false when there is no target, which ends the timer.
    fn look(&self) -> bool {
        let (target, node) = {
            let mut s = self.state.lock().expect("probe state");
            let (Some(target), Some(config)) = (s.target.clone(), s.config.clone()) else {
                s.ticking = false;
                return false;
            };
            if s.outstanding >= MAX_OUTSTANDING {
                return true;
            }
            s.outstanding += 1;
            let node = s.idle.take().unwrap_or_else(|| Node::new(config));
            (target, node)
        };
        let mut node = node;
        let (state, wake) = (self.state.clone(), self.wake.clone());
        tokio::spawn(
            async move {
                let started = Instant::now();
                let ok = node.ping().await.is_ok();
                // The counters are no liveness test: a source that answers
                // `SELECT 1` is alive, however its status read goes.
                let counters = if ok {
                    node.ack_counters().await.ok().flatten()
                } else {
                    None
                };
                let mut s = state.lock().expect("probe state");
                s.outstanding -= 1;
                if s.target.as_ref() != Some(&target) {
                    return;
                }
                if ok {
                    s.failures = 0;
                    s.idle = Some(node);
                    if note_counters(&mut s.stall, counters, started) {
                        tracing::debug!(source = target.0, "commits wait with no ACK");
                        drop(s);
                        wake.notify_one();
                    }
                } else {
                    s.failures += 1;
                    tracing::debug!(source = target.0, failures = s.failures, "probe failed");
                    drop(s);
                    wake.notify_one();
                }
            }
            .in_current_span(),
        );
        true
    }
}

/// Folds one look's counters into the stall; true when the stall has just
/// lasted [`ACK_STALL`] (once per stall).
fn note_counters(
    stall: &mut Option<Stall>,
    counters: Option<AckCounters>,
    started: Instant,
) -> bool {
    let Some(c) = counters.filter(|c| c.wait_sessions > 0) else {
        *stall = None;
        return false;
    };
    match stall {
        Some(st) if st.yes_tx == c.yes_tx && st.no_tx == c.no_tx => {
            st.confirmed = started.max(st.confirmed);
        }
        _ => {
            let now = Instant::now();
            *stall = Some(Stall {
                yes_tx: c.yes_tx,
                no_tx: c.no_tx,
                since: now,
                confirmed: now,
                woke: false,
            });
        }
    }
    let st = stall.as_mut().expect("set above");
    if !st.woke && st.span() >= ACK_STALL {
        st.woke = true;
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(wait_sessions: u64, yes_tx: u64) -> Option<AckCounters> {
        Some(AckCounters {
            wait_sessions,
            yes_tx,
            no_tx: 0,
        })
    }

    /// A stall spans from the end of the first look that saw it to the
    /// start of the latest that saw it again; an ACK, or no session
    /// waiting, ends it; it wakes the loop once.
    #[test]
    fn a_stall_is_what_the_looks_prove_and_wakes_once() {
        let t0 = Instant::now();
        let mut st = None;
        assert!(!note_counters(&mut st, c(2, 10), t0));
        let since = st.as_ref().unwrap().since;
        assert!(!note_counters(
            &mut st,
            c(2, 10),
            since + Duration::from_millis(250)
        ));
        assert_eq!(st.as_ref().unwrap().span(), Duration::from_millis(250));
        assert!(note_counters(&mut st, c(3, 10), since + ACK_STALL));
        assert!(!note_counters(&mut st, c(3, 10), since + ACK_STALL * 2));
        // A look that started before the latest does not shorten it.
        assert!(!note_counters(&mut st, c(3, 10), since));
        assert_eq!(st.as_ref().unwrap().span(), ACK_STALL * 2);
        // An ACK: a new stall, if sessions still wait.
        assert!(!note_counters(&mut st, c(1, 11), since + ACK_STALL * 3));
        assert_eq!(st.as_ref().unwrap().span(), Duration::ZERO);
        assert!(!note_counters(&mut st, c(0, 11), since + ACK_STALL * 4));
        assert!(st.is_none());
        // No counters (no source plugin, or the read failed): no stall.
        assert!(!note_counters(&mut st, c(1, 11), since));
        assert!(!note_counters(&mut st, None, since));
        assert!(st.is_none());
    }
}
