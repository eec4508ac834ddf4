//! The coordinator's look at its source between cycles: one `SELECT 1`
//! every `timing.probe`, each on a connection of its own, so looks at a
//! hung source overlap instead of queueing behind one another's timeouts.
//! A failed look wakes the agent's loop, and the consecutive failures count
//! as confirmations of a dead source (the replicas must still agree: see
//! `decide::detect`). No Consul request.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tracing::Instrument as _;

use crate::decide::HostPort;
use crate::mysql::{Node, NodeConfig};

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

    /// What to look at (the published source, by name and address); a new
    /// target starts with no failures.
    pub fn aim(&self, target: Option<(String, HostPort)>) {
        let mut s = self.state.lock().expect("probe state");
        if s.target != target {
            s.target = target;
            s.failures = 0;
            s.idle = None;
        }
    }

    /// Consecutive failed looks at `name`, if it is the target.
    pub fn failures_of(&self, name: &str) -> u32 {
        let s = self.state.lock().expect("probe state");
        match &s.target {
            Some((n, _)) if n == name => s.failures,
            _ => 0,
        }
    }

    /// Starts one look (unless too many are in flight); returns at once.
    pub fn look(&self, config: impl FnOnce(&HostPort) -> NodeConfig) {
        let (target, node) = {
            let mut s = self.state.lock().expect("probe state");
            let Some(target) = s.target.clone() else {
                return;
            };
            if s.outstanding >= MAX_OUTSTANDING {
                return;
            }
            s.outstanding += 1;
            let node = s.idle.take();
            (target, node)
        };
        let mut node = node.unwrap_or_else(|| Node::new(config(&target.1)));
        let (state, wake) = (self.state.clone(), self.wake.clone());
        tokio::spawn(
            async move {
                let ok = node.ping().await.is_ok();
                let mut s = state.lock().expect("probe state");
                s.outstanding -= 1;
                if s.target.as_ref() != Some(&target) {
                    return;
                }
                if ok {
                    s.failures = 0;
                    s.idle = Some(node);
                } else {
                    s.failures += 1;
                    tracing::debug!(source = target.0, failures = s.failures, "probe failed");
                    drop(s);
                    wake.notify_one();
                }
            }
            .in_current_span(),
        );
    }
}
