//! Every read the agent makes of a MySQL server, gathered into one plain
//! value per node per tick. Decisions work on these values only.

use crate::decide::{HostPort, NodeView, ReplicaView, SemiSyncView};
use crate::mysql::{
    GtidState, IoRunning, Node, NodeError, ReadOnly, ReplicaStatus, SemiSyncState, ServerInfo,
    WaitPoint,
};

#[derive(Clone, Debug)]
pub struct Observation {
    pub info: ServerInfo,
    pub read_only: ReadOnly,
    pub replica: Option<ReplicaStatus>,
    pub gtid_executed: GtidState,
    pub semi_sync: SemiSyncState,
    pub client_connections: u64,
    /// Client connections per account.
    pub clients_by_user: std::collections::BTreeMap<String, u64>,
    /// Heartbeats received from the source, on a replica.
    pub heartbeats: Option<u64>,
    /// MariaDB's `@@gtid_binlog_state` (domain, server id, seq).
    pub binlog_state: Option<Vec<(u32, u32, u64)>>,
}

impl Observation {
    pub fn role(&self) -> &'static str {
        match (&self.replica, self.read_only.read_only) {
            (Some(_), _) => "replica",
            (None, false) => "source",
            (None, true) => "unknown",
        }
    }
}

/// A replica's apply progress over the last few cycles. A lossless
/// failover applies everything the candidate received before it opens, so
/// what a replica holds unapplied, and how fast it applies, is what a
/// failover to it would wait: `status` and the metrics show both.
#[derive(Debug, Default)]
pub struct ApplyMeter {
    /// When each cycle saw which transactions applied, oldest first; the
    /// front is the newest one at least [`ApplyMeter::WINDOW`] old.
    samples: std::collections::VecDeque<(std::time::Instant, GtidState)>,
}

/// What [`ApplyMeter::observe`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyLag {
    /// Transactions received and not yet applied.
    pub backlog: u64,
    /// Transactions applied per second over the window; `None` until the
    /// window spans a second.
    pub per_second: Option<u64>,
    /// `backlog` at that rate; zero with nothing to apply, `None` when
    /// the applier made no progress over the window (stalled, or just
    /// started) with work to do.
    pub expected: Option<std::time::Duration>,
}

impl ApplyMeter {
    /// Long enough to smooth one group commit's burst, short enough that a
    /// stalled applier shows within seconds.
    pub const WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

    /// `None` on a server that does not replicate (the samples start over
    /// when it does again), or whose positions mix flavours.
    pub fn observe(&mut self, now: std::time::Instant, o: &Observation) -> Option<ApplyLag> {
        let received = o.replica.as_ref().map(|r| r.received());
        self.measure(now, received.as_ref(), &o.gtid_executed)
    }

    fn measure(
        &mut self,
        now: std::time::Instant,
        received: Option<&GtidState>,
        applied: &GtidState,
    ) -> Option<ApplyLag> {
        let Some(received) = received else {
            self.samples.clear();
            return None;
        };
        let backlog = received.transactions_beyond(applied).ok()?;
        self.samples.push_back((now, applied.clone()));
        while self.samples.len() > 2
            && now.saturating_duration_since(self.samples[1].0) >= Self::WINDOW
        {
            self.samples.pop_front();
        }
        let (since, then) = self.samples.front()?;
        let span = now.saturating_duration_since(*since);
        let per_second = match applied.transactions_beyond(then) {
            Ok(applied) if span >= std::time::Duration::from_secs(1) => {
                Some((applied as f64 / span.as_secs_f64()).round() as u64)
            }
            _ => None,
        };
        let expected = if backlog == 0 {
            Some(std::time::Duration::ZERO)
        } else {
            per_second
                .filter(|&n| n > 0)
                .map(|n| std::time::Duration::from_secs_f64(backlog as f64 / n as f64))
        };
        Some(ApplyLag {
            backlog,
            per_second,
            expected,
        })
    }
}

pub async fn observe(node: &mut Node) -> Result<Observation, NodeError> {
    let info = node.server_info().await?.clone();
    let read_only = node.read_only().await?;
    let replica = node.replica_status().await?;
    let gtid_executed = node.gtid_executed().await?;
    let semi_sync = node.semi_sync().await?;
    let clients = node.processlist_clients().await?;
    let client_connections = clients.len() as u64;
    let mut clients_by_user = std::collections::BTreeMap::new();
    for c in clients {
        *clients_by_user.entry(c.user).or_insert(0) += 1;
    }
    let heartbeats = match &replica {
        Some(_) => node.received_heartbeats().await?,
        None => None,
    };
    let binlog_state = node.mariadb_binlog_state().await?;
    Ok(Observation {
        info,
        read_only,
        replica,
        gtid_executed,
        semi_sync,
        client_connections,
        clients_by_user,
        heartbeats,
        binlog_state,
    })
}

/// The decision function's view of one node. A node that could not be
/// observed is kept (by name and address) but marked unreachable, so the
/// decision never acts on stale state.
pub fn node_view(
    name: &str,
    addr: HostPort,
    obs: Option<&Observation>,
    quarantined: bool,
) -> NodeView {
    let Some(o) = obs else {
        return NodeView::unreachable(name, addr, quarantined);
    };
    NodeView {
        name: name.to_owned(),
        addr,
        reachable: true,
        read_only: o.read_only.read_only,
        replica: o.replica.as_ref().map(|r| ReplicaView {
            source: HostPort::reported(&r.source_host, r.source_port),
            io_running: r.io_running == IoRunning::Yes,
            io_stopped: r.io_running == IoRunning::No,
            sql_running: r.sql_running,
            received: r.received(),
            seconds_behind_source: r.seconds_behind_source,
            heartbeats: o.heartbeats,
            read_position: r.read_position.clone(),
            last_io_errno: r.last_io_errno,
            last_sql_errno: r.last_sql_errno,
            observed_ms: None,
        }),
        semi_sync_source: o.semi_sync.source_enabled,
        semi_sync_replica: o.semi_sync.replica_enabled,
        semi_sync_replica_active: o.semi_sync.replica_status_on,
        semi: SemiSyncView {
            source_status_on: o.semi_sync.source_status_on,
            clients: o.semi_sync.clients,
            wait_sessions: o.semi_sync.wait_sessions,
            yes_tx: o.semi_sync.yes_tx,
            no_tx: o.semi_sync.no_tx,
            no_times: o.semi_sync.no_times,
            settings_drift: o.semi_sync.plugins.source.is_some()
                && (o.semi_sync.wait_point == Some(WaitPoint::AfterCommit)
                    || o.semi_sync.wait_no_replica == Some(false)
                    || o.semi_sync.timeout_ms.is_some_and(|t| {
                        t < successover_common::contract::MIN_SEMI_SYNC_TIMEOUT_MS
                    })),
        },
        gtid_executed: Some(o.gtid_executed.clone()),
        binlog_state: o.binlog_state.clone(),
        server_uuid: o.info.server_uuid,
        started_s: o.info.started_s,
        quarantined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_replica_behind_shows_its_backlog_and_how_long_it_takes_to_apply() {
        let g = |s: &str| GtidState::parse_any(s).unwrap();
        let mut m = ApplyMeter::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // The first look has no rate yet: the time is unknown.
        let first = m
            .measure(at(0), Some(&g("0-1-5000")), &g("0-1-1000"))
            .unwrap();
        assert_eq!(
            (first.backlog, first.per_second, first.expected),
            (4000, None, None)
        );
        // 500 applied a second: 3,000 left take 6 s.
        let lag = m
            .measure(at(2), Some(&g("0-1-5000")), &g("0-1-2000"))
            .unwrap();
        assert_eq!(lag.per_second, Some(500));
        assert_eq!(lag.expected, Some(Duration::from_secs(6)));
        // The window moves on: the rate is that of the last 10 s.
        for s in 3..=12 {
            m.measure(
                at(s),
                Some(&g("0-1-9000")),
                &g(&format!("0-1-{}", 2000 + (s - 2) * 100)),
            );
        }
        let lag = m
            .measure(at(13), Some(&g("0-1-9000")), &g("0-1-3100"))
            .unwrap();
        assert_eq!(lag.per_second, Some(100));
        assert_eq!(lag.backlog, 5900);
        assert_eq!(lag.expected, Some(Duration::from_secs(59)));
        // A stalled applier with work to do: no time can be given.
        for s in 14..=30 {
            m.measure(at(s), Some(&g("0-1-9000")), &g("0-1-3100"));
        }
        let stalled = m
            .measure(at(31), Some(&g("0-1-9000")), &g("0-1-3100"))
            .unwrap();
        assert_eq!((stalled.per_second, stalled.expected), (Some(0), None));
        // Caught up: nothing to wait for, whatever the rate.
        let done = m
            .measure(at(32), Some(&g("0-1-9000")), &g("0-1-9000"))
            .unwrap();
        assert_eq!(done.expected, Some(Duration::ZERO));
        // A source has no backlog, and a replica again starts afresh.
        assert_eq!(m.measure(at(33), None, &g("0-1-9000")), None);
        let again = m
            .measure(at(34), Some(&g("0-1-9500")), &g("0-1-9000"))
            .unwrap();
        assert_eq!(again.per_second, None);
    }
}
