//! The invariants a coordinator enforces when no procedure runs: a pure
//! function from its view of a cluster to the actions that restore them,
//! plus one sentence saying why.
//!
//! Invariants (DESIGN.md, lossless rules 2, 6 and 8):
//! - exactly one published source; every other node `read_only`;
//! - the semi-sync source flag only on the source;
//! - the replica flag on exactly N healthy replicas of the source, moved
//!   away from a replica that died or stopped replicating so the source
//!   does not block forever;
//! - `master` is published when absent, naming the only writable node.

use std::collections::BTreeMap;

use super::{ClusterView, HostPort, NodeView};
use crate::mysql::GtidState;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    SetReadOnly {
        node: String,
        read_only: bool,
    },
    KillClients {
        node: String,
    },
    SetSemiSyncSource {
        node: String,
        enabled: bool,
    },
    /// Also restarts the IO thread: the flag only takes effect on a new
    /// replication connection.
    SetSemiSyncReplica {
        node: String,
        enabled: bool,
        /// When granting: the source's position now. Commits before it
        /// were acknowledged by another replica, so this one holds every
        /// acknowledged commit only once it has received this much; the
        /// floor is recorded in KV before the flag is set.
        floor: Option<GtidState>,
    },
    RestartIoThread {
        node: String,
    },
    /// Sets rule 1's semi-sync settings again (AFTER_SYNC, wait with no
    /// replica, the longest timeout): they were reported, never set.
    SetLosslessSemiSync {
        node: String,
    },
    /// Opens the published source: semi-sync source flag on, then
    /// `read_only=0` (a source that restarted, or was self-fenced while an
    /// operator's fence stood, stays read-only otherwise).
    Open {
        node: String,
    },
    /// Points a replica that follows another server at the source (a
    /// repoint that failed during a procedure, or one done by hand).
    Repoint {
        node: String,
        source: HostPort,
    },
    /// Records the set of possible ACKers with their floors (see
    /// [`super::KvInputs::ack_floors`]): a replica seen with the flag is
    /// added, one seen with it off leaves, and what it had received raises
    /// the floors of those that stay.
    RecordAckers {
        ackers: BTreeMap<String, Option<GtidState>>,
    },
    /// Ends every replica's binlog dump connection on the source. A
    /// replica the coordinator cannot see that the source still counts as
    /// a semi-sync client (a hung host keeps its socket open) is then
    /// provably no ACKer until it connects again; the replicas that are
    /// alive reconnect at once.
    CutReplicaConnections {
        node: String,
    },
    /// Writes when the possible ACKers' servers started
    /// ([`super::KvInputs::acker_started`]), each as seen while it
    /// replicated from a live source.
    RecordStarted {
        started: BTreeMap<String, u64>,
    },
    /// Writes `master` (+ `/hostname`, `/port`) in one txn guarded by the
    /// coordinator lock.
    Publish {
        node: String,
        addr: HostPort,
    },
}

/// The actions that restore the invariants, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enforcement {
    pub actions: Vec<Action>,
    pub reason: String,
}

impl Enforcement {
    fn idle(reason: impl Into<String>) -> Self {
        Enforcement {
            actions: Vec::new(),
            reason: reason.into(),
        }
    }
}

pub fn enforce(view: &ClusterView, ackers: &BTreeMap<String, Option<GtidState>>) -> Enforcement {
    if view.maintenance {
        return Enforcement::idle("maintenance mode: automation suspended");
    }
    if view.procedure_running {
        return Enforcement::idle("a switchover or failover is running: invariants wait");
    }
    if view.fenced {
        return Enforcement::idle(
            "cluster is fenced: nothing to enforce until the fence is lifted",
        );
    }

    let (source, mut actions, mut reasons) = match &view.published {
        Some(addr) => match view.node_at(addr) {
            Some(node) => (node, Vec::new(), Vec::new()),
            None => {
                return Enforcement::idle(format!(
                    "published source {addr} is not a known node of {}",
                    view.cluster
                ))
            }
        },
        None => match unpublished_source(view) {
            Ok(node) => (
                node,
                vec![Action::Publish {
                    node: node.name.clone(),
                    addr: node.addr.clone(),
                }],
                vec![format!(
                    "published {} as source (master key was absent)",
                    node.name
                )],
            ),
            Err(why) => return Enforcement::idle(why),
        },
    };
    if !source.reachable {
        // Failure detection owns this case; moving semi-sync flags away
        // from replicas that lost a dead source would destroy the evidence
        // of which one holds every acknowledged transaction.
        return Enforcement::idle(format!("published source {} is unreachable", source.name));
    }
    if source.quarantined {
        return Enforcement::idle(format!(
            "published source {} is quarantined: refusing to enforce invariants around it",
            source.name
        ));
    }

    for node in view
        .nodes
        .iter()
        .filter(|n| n.reachable && n.semi.settings_drift)
    {
        actions.push(Action::SetLosslessSemiSync {
            node: node.name.clone(),
        });
        reasons.push(format!(
            "{} had semi-sync settings that can acknowledge a commit no replica holds",
            node.name
        ));
    }
    if source.read_only {
        if let Some(held) = open_withheld(view, source) {
            return held;
        }
        actions.push(Action::Open {
            node: source.name.clone(),
        });
        reasons.push(format!(
            "published source {} was read-only with no procedure running",
            source.name
        ));
    }
    if let Some(next) = possible_ackers(view, source, ackers) {
        reasons.push(format!(
            "possible ACKers now {}",
            if next.is_empty() {
                "none".to_owned()
            } else {
                next.keys().cloned().collect::<Vec<_>>().join(", ")
            }
        ));
        actions.insert(0, Action::RecordAckers { ackers: next });
    }
    for node in view
        .nodes
        .iter()
        .filter(|n| n.reachable && n.name != source.name)
    {
        if !node.read_only {
            fence_writable(node, &mut actions, &mut reasons);
        }
        if let Some(r) = node
            .replica
            .as_ref()
            .filter(|r| !r.source.same(&source.addr))
        {
            if node.quarantined {
                // A quarantined node follows nobody until it rejoins.
            } else {
                match super::switchover::errant(node, source) {
                    Ok(()) => {
                        actions.push(Action::Repoint {
                            node: node.name.clone(),
                            source: source.addr.clone(),
                        });
                        reasons.push(format!(
                            "{} replicated from {} instead of the source {}",
                            node.name, r.source, source.name
                        ));
                    }
                    Err(why) => reasons.push(format!(
                        "{} replicates from {} and cannot follow {}: {why}",
                        node.name, r.source, source.name
                    )),
                }
            }
        }
        // An IO thread that stopped on an error (MySQL 9.7 once ended a
        // replica's with "Failed to run 'after_read_event' hook" as its
        // semi-sync flag changed) receives nothing until someone starts it;
        // one that an operator stopped has no error and is left alone.
        if let Some(r) = node
            .replica
            .as_ref()
            .filter(|r| r.source.same(&source.addr) && r.io_stopped && r.last_io_errno != 0)
        {
            if !node.quarantined {
                actions.push(Action::RestartIoThread {
                    node: node.name.clone(),
                });
                reasons.push(format!(
                    "{}'s IO thread stopped on error {}",
                    node.name, r.last_io_errno
                ));
            }
        }
        // Turning the flag off releases every commit waiting for an ACK
        // with an OK, though no replica holds it: on a writable node (an old
        // source that came back) that acknowledges writes a failover already
        // left behind. Read-only first (it waits for those commits, whose
        // connections are killed); the flag goes once read_only reads back.
        // Seen on MySQL 9.7, where killing a session waiting for its ACK
        // does not end the wait: a_source_host_cut_off_the_network_...
        // Nor, on a node that replicates from nobody (an old source back),
        // while a commit still waits: a session the kills did not end (the
        // agent's own account is spared; MySQL's killed sessions keep
        // waiting) would get its OK. On a replica the waiting commit is its
        // applier's (MariaDB stalls it on the flag), with no client to tell,
        // and turning the flag off is what frees it. A quarantined node
        // follows nobody, so its flag can stay on until a rejoin.
        if node.semi_sync_source && node.quarantined {
            reasons.push(format!(
                "{} is quarantined and keeps its semi-sync source flag",
                node.name
            ));
        } else if node.semi_sync_source
            && node.read_only
            && node.replica.is_none()
            && node.semi.wait_sessions > 0
        {
            reasons.push(format!(
                "{} keeps its semi-sync source flag while {} commit(s) wait for an ACK",
                node.name, node.semi.wait_sessions
            ));
        } else if node.semi_sync_source && node.read_only {
            actions.push(Action::SetSemiSyncSource {
                node: node.name.clone(),
                enabled: false,
            });
            reasons.push(format!("{} had the semi-sync source flag", node.name));
        } else if node.semi_sync_source {
            reasons.push(format!(
                "{} keeps its semi-sync source flag until it is read-only",
                node.name
            ));
        }
    }
    if source.reachable && !source.semi_sync_source {
        actions.push(Action::SetSemiSyncSource {
            node: source.name.clone(),
            enabled: true,
        });
        reasons.push(format!(
            "source {} lacked the semi-sync source flag",
            source.name
        ));
    }
    if source.reachable && source.semi_sync_replica {
        actions.push(Action::SetSemiSyncReplica {
            node: source.name.clone(),
            enabled: false,
            floor: None,
        });
        reasons.push(format!(
            "source {} had the semi-sync replica flag",
            source.name
        ));
    }

    let (semi, why) = semi_sync_replicas(view, source);
    actions.extend(semi);
    reasons.extend(why);

    if reasons.is_empty() {
        Enforcement::idle(format!("healthy: {} is the source", source.name))
    } else {
        Enforcement {
            actions,
            reason: reasons.join("; "),
        }
    }
}

/// The set of possible ACKers as it should be recorded, when it differs
/// from `current`. A node seen with the semi-sync flag (set, or its IO
/// thread connected in semi-sync mode) joins with the source's position
/// as its floor (a flag nobody granted through the set: what it ACKed
/// before is unknown); a reachable node seen with both off leaves, and
/// what it had received (applied, on a source) raises the floors of the
/// others, since it may have acknowledged all of it. An unreachable member
/// stays: it may still be connected and ACKing.
pub fn possible_ackers(
    view: &ClusterView,
    source: &NodeView,
    current: &BTreeMap<String, Option<GtidState>>,
) -> Option<BTreeMap<String, Option<GtidState>>> {
    let mut next = current.clone();
    for n in view.nodes.iter().filter(|n| n.reachable) {
        let flagged = n.semi_sync_replica || n.semi_sync_replica_active;
        if flagged && !next.contains_key(&n.name) {
            next.insert(n.name.clone(), source.gtid_executed.clone());
        }
    }
    let left: Vec<(String, Option<GtidState>)> = view
        .nodes
        .iter()
        .filter(|n| n.reachable && !n.semi_sync_replica && !n.semi_sync_replica_active)
        .filter(|n| next.contains_key(&n.name))
        .map(|n| {
            let had = n
                .replica
                .as_ref()
                .map(|r| r.received.clone())
                .or_else(|| n.gtid_executed.clone());
            (n.name.clone(), had)
        })
        .collect();
    for (name, _) in &left {
        next.remove(name);
    }
    for (_, had) in left {
        let Some(had) = had else { continue };
        for floor in next.values_mut() {
            *floor = Some(match floor.take() {
                Some(f) => f.union(&had).unwrap_or(f),
                None => had.clone(),
            });
        }
    }
    (next != *current).then_some(next)
}

/// Whether two readings of a server's start time name the same run of it
/// (see [`crate::mysql::Dialect::started_query`]: exact, whole seconds; a
/// server cannot stop and start again within the second it started).
pub fn same_start(a: u64, b: u64) -> bool {
    a == b
}

/// When the possible ACKers' servers started, each as seen while it
/// replicates from the live, published source; `Some` when that changes
/// the record. Taken only then: a member seen after the source died may
/// have restarted and lost acknowledged events a failover must account
/// for, and a refused failover resumes for it only if it still runs as it
/// did when it was last seen here.
pub fn acker_started(
    view: &ClusterView,
    ackers: &BTreeMap<String, Option<GtidState>>,
    recorded: &BTreeMap<String, u64>,
) -> Option<BTreeMap<String, u64>> {
    if view.maintenance || view.procedure_running || view.fenced {
        return None;
    }
    let source = view.node_at(view.published.as_ref()?)?;
    if !source.reachable || source.quarantined {
        return None;
    }
    let mut next: BTreeMap<String, u64> = recorded
        .iter()
        .filter(|(n, _)| ackers.contains_key(*n))
        .map(|(n, s)| (n.clone(), *s))
        .collect();
    let mut changed = false;
    for n in view
        .nodes
        .iter()
        .filter(|n| ackers.contains_key(&n.name) && acking_replica_of(n, source))
    {
        let Some(s) = n.started_s else { continue };
        if !next.get(&n.name).is_some_and(|r| same_start(*r, s)) {
            next.insert(n.name.clone(), s);
            changed = true;
        }
    }
    changed.then_some(next)
}

/// A writable node that is not the source: read-only, then its clients cut.
fn fence_writable(node: &NodeView, actions: &mut Vec<Action>, reasons: &mut Vec<String>) {
    actions.push(Action::SetReadOnly {
        node: node.name.clone(),
        read_only: true,
    });
    actions.push(Action::KillClients {
        node: node.name.clone(),
    });
    reasons.push(format!("{} was writable but is not the source", node.name));
}

/// A read-only published source that no procedure made (a `master` key
/// written by hand) may be a replica that lacks acknowledged commits, next
/// to a writable old source. It opens only once nothing else takes writes
/// and it holds everything every other node does. Until then nothing but
/// fencing the other writable nodes happens: no flag moves, no repoint.
/// The source flag on a replica that is still applying would stall its
/// applier (MariaDB waits for an ACK for each applied commit), so it would
/// never catch up.
fn open_withheld(view: &ClusterView, source: &NodeView) -> Option<Enforcement> {
    let others = || {
        view.nodes
            .iter()
            .filter(|n| n.reachable && !n.quarantined && n.name != source.name)
    };
    let writable: Vec<&NodeView> = others().filter(|n| !n.read_only).collect();
    let why = if !writable.is_empty() {
        format!(
            "published source {} stays read-only while {} is writable",
            source.name,
            writable
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        let lacks = others().find_map(|n| super::switchover::errant(n, source).err())?;
        format!(
            "published source {} stays read-only: it lacks transactions another node holds ({lacks})",
            source.name
        )
    };
    let mut actions = Vec::new();
    let mut reasons = vec![why];
    for n in writable {
        fence_writable(n, &mut actions, &mut reasons);
    }
    Some(Enforcement {
        actions,
        reason: reasons.join("; "),
    })
}

/// With no `master` key, the source is the single writable node that does
/// not itself replicate. Anything else is ambiguous: publishing a guess
/// could route writes to the wrong node, so the coordinator waits for an
/// operator.
fn unpublished_source(view: &ClusterView) -> Result<&NodeView, String> {
    let writable: Vec<&NodeView> = view
        .nodes
        .iter()
        .filter(|n| n.reachable && !n.read_only && !n.quarantined)
        .collect();
    match writable.as_slice() {
        [one] => {
            if one
                .replica
                .as_ref()
                .is_some_and(|r| r.io_running || r.sql_running)
            {
                Err(format!(
                    "no master key and the only writable node {} is replicating: refusing to publish",
                    one.name
                ))
            } else {
                Ok(one)
            }
        }
        [] => Err("no master key and no writable node: nothing to publish".to_owned()),
        many => Err(format!(
            "no master key and {} writable nodes ({}): refusing to guess",
            many.len(),
            many.iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// A replica that ACKs and also applies: one the flag may be given to.
fn healthy_replica_of(node: &NodeView, source: &NodeView) -> bool {
    acking_replica_of(node, source) && node.replica.as_ref().is_some_and(|r| r.sql_running)
}

/// A replica that can go on ACKing: its ACKs come from its IO thread, so
/// a stopped applier (a long ALTER, a DBA's pause) is no reason to move the
/// role, and moving it stalls commits while the new ACKer connects.
fn acking_replica_of(node: &NodeView, source: &NodeView) -> bool {
    node.reachable
        && !node.quarantined
        && node.name != source.name
        && node
            .replica
            .as_ref()
            .is_some_and(|r| r.source.same(&source.addr) && r.io_running)
}

/// Semi-sync clients the source counts that no replica the coordinator
/// sees accounts for: replicas it cannot observe (advertised through a
/// path that broke, a hung host) that may still be connected and ACKing.
/// A flag granted while they are there would make the source wait for
/// more ACKers than `semi_sync_replicas`, one of them out of sight.
pub fn unseen_semi_clients(view: &ClusterView, source: &NodeView) -> u64 {
    let seen = seen_ackers(view, source).count() as u64;
    source.semi.clients.saturating_sub(seen)
}

/// The replicas the coordinator sees connected to `source` in semi-sync
/// mode: those whose ACK can release a commit there now.
pub fn seen_ackers<'a>(
    view: &'a ClusterView,
    source: &'a NodeView,
) -> impl Iterator<Item = &'a NodeView> + 'a {
    view.nodes.iter().filter(move |n| {
        n.reachable
            && n.name != source.name
            && n.semi_sync_replica_active
            && n.replica
                .as_ref()
                .is_some_and(|r| r.source.same(&source.addr) && r.io_running)
    })
}

/// Keeps the replica flag on exactly `N` replicas: those that have it and
/// still ACK keep it (moving it costs an IO-thread restart), the
/// rest lose it, and healthy replicas without it fill the gap in name order
/// so the choice is stable.
fn semi_sync_replicas(view: &ClusterView, source: &NodeView) -> (Vec<Action>, Vec<String>) {
    let mut actions = Vec::new();
    let mut reasons = Vec::new();
    let want = view.semi_sync_replicas;
    let mut replicas: Vec<&NodeView> = view
        .nodes
        .iter()
        .filter(|n| n.reachable && n.name != source.name)
        .collect();
    replicas.sort_by(|a, b| a.name.cmp(&b.name));

    let drained = |n: &NodeView| view.drained.contains(&n.name);
    let mut keep: Vec<&NodeView> = replicas
        .iter()
        .copied()
        .filter(|n| n.semi_sync_replica && acking_replica_of(n, source) && !drained(n))
        .collect();
    keep.truncate(want);
    // Make before break: a drained ACKer keeps its flag until replicas
    // that are not drained hold every slot and ACK (connected in
    // semi-sync mode), so no commit waits while the role moves.
    let ready = keep.iter().filter(|n| n.semi_sync_replica_active).count() >= want;
    let draining: Vec<&NodeView> = replicas
        .iter()
        .copied()
        .filter(|n| n.semi_sync_replica && acking_replica_of(n, source) && drained(n))
        .take(if ready { 0 } else { want })
        .collect();
    for node in &draining {
        reasons.push(format!(
            "{} is drained and keeps the semi-sync flag until another replica ACKs",
            node.name
        ));
    }
    let unseen = usize::try_from(unseen_semi_clients(view, source)).unwrap_or(usize::MAX);
    let missing = want.saturating_sub(keep.len());
    let grantable = missing.saturating_sub(unseen);
    if grantable < missing {
        reasons.push(format!(
            "{} counts {unseen} semi-sync client(s) the coordinator cannot see: no replica gets the flag while they may ACK",
            source.name
        ));
    }
    let additions: Vec<&NodeView> = replicas
        .iter()
        .copied()
        .filter(|n| !n.semi_sync_replica && healthy_replica_of(n, source) && !drained(n))
        .take(grantable)
        .collect();
    // A flagged replica that does not ACK now (its IO thread still
    // connecting after a repoint, or stopped) keeps the flag while no
    // healthy replica can take its slot: taking it gains nothing, and the
    // replica ACKs again the moment it connects. A drained ACKer holds no
    // slot here: like a grant, the replica replacing it keeps its flag
    // beside the drained one's until it ACKs (make before break).
    let waiting: Vec<&NodeView> = replicas
        .iter()
        .copied()
        .filter(|n| n.semi_sync_replica && !acking_replica_of(n, source) && !drained(n))
        .take(missing.saturating_sub(additions.len()))
        .collect();
    for node in replicas.iter().filter(|n| n.semi_sync_replica) {
        if waiting.iter().any(|k| k.name == node.name) {
            reasons.push(format!(
                "semi-sync replica {} is not replicating from the source; it keeps the flag, no healthy replica can take it",
                node.name
            ));
        } else if !keep.iter().chain(&draining).any(|k| k.name == node.name) {
            actions.push(Action::SetSemiSyncReplica {
                node: node.name.clone(),
                enabled: false,
                floor: None,
            });
            reasons.push(if drained(node) {
                format!(
                    "{} is drained and another replica ACKs: its semi-sync flag goes",
                    node.name
                )
            } else if acking_replica_of(node, source) {
                format!(
                    "{} was a semi-sync replica beyond the {want} wanted",
                    node.name
                )
            } else {
                format!(
                    "semi-sync replica {} is not replicating from the source",
                    node.name
                )
            });
        }
    }
    for node in &keep {
        if !node.semi_sync_replica_active {
            actions.push(Action::RestartIoThread {
                node: node.name.clone(),
            });
            reasons.push(format!(
                "semi-sync replica {} has the flag but its IO thread is not in semi-sync mode",
                node.name
            ));
        }
    }
    for node in &additions {
        actions.push(Action::SetSemiSyncReplica {
            node: node.name.clone(),
            enabled: true,
            floor: source.gtid_executed.clone(),
        });
        reasons.push(format!("{} chosen as semi-sync replica", node.name));
    }
    if keep.len() + additions.len() + unseen + draining.len() < want {
        reasons.push(format!(
            "only {} healthy replica(s) for {want} semi-sync slot(s): commits on {} wait for an ACK",
            keep.len() + additions.len(),
            source.name
        ));
    }
    (actions, reasons)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::fixtures::{addr, healthy, pos};

    /// A member's start is recorded while it replicates from the live
    /// source, again when it changes, and never while the source is dead or
    /// the cluster fenced: a start seen then may be a restart that lost
    /// acknowledged events, which a refused failover must not take for the
    /// run it saw ACKing.
    #[test]
    fn a_possible_ackers_start_is_recorded_only_while_it_replicates_from_a_live_source() {
        let mut v = healthy();
        v.nodes[1].started_s = Some(1_000);
        v.nodes[2].started_s = Some(2_000);
        let members = BTreeMap::from([("db2".to_owned(), None)]);
        let none = BTreeMap::new();
        assert_eq!(
            acker_started(&v, &members, &none),
            Some(BTreeMap::from([("db2".to_owned(), 1_000)]))
        );
        // The same run, read again: nothing to write.
        let rec = BTreeMap::from([("db2".to_owned(), 1_000)]);
        assert_eq!(acker_started(&v, &members, &rec), None);
        // A restart it came back from, replicating again: the new run.
        v.nodes[1].started_s = Some(9_000);
        assert_eq!(
            acker_started(&v, &members, &rec),
            Some(BTreeMap::from([("db2".to_owned(), 9_000)]))
        );
        // Source dead, fenced, or the member not receiving: kept as it was.
        let mut dead = v.clone();
        dead.nodes[0].reachable = false;
        assert_eq!(acker_started(&dead, &members, &rec), None);
        let mut fenced = v.clone();
        fenced.fenced = true;
        assert_eq!(acker_started(&fenced, &members, &rec), None);
        let mut stopped = v.clone();
        stopped.nodes[1].replica.as_mut().unwrap().io_running = false;
        assert_eq!(acker_started(&stopped, &members, &rec), None);
    }

    /// With the set of possible ACKers already recorded as the view shows
    /// it, so each table row tests one invariant.
    fn enforce(v: &ClusterView) -> Enforcement {
        let source = v.source().or_else(|| unpublished_source(v).ok());
        let settled = source
            .and_then(|s| possible_ackers(v, s, &BTreeMap::new()))
            .unwrap_or_default();
        super::enforce(v, &settled)
    }

    /// Rule 1 was only reported: with `wait_no_slave=OFF`, stopping the
    /// last ACKer turned the source asynchronous.
    #[test]
    fn drifted_semi_sync_settings_are_set_again() {
        let mut v = healthy();
        v.nodes[0].semi.settings_drift = true;
        v.nodes[2].semi.settings_drift = true;
        let d = enforce(&v);
        for node in ["db1", "db3"] {
            assert!(
                d.actions
                    .contains(&Action::SetLosslessSemiSync { node: node.into() }),
                "{d:?}"
            );
        }
    }

    /// Nothing reopened a published, unfenced source that was read-only
    /// (restarted, or self-fenced under an operator's fence that was then
    /// lifted): the cluster stayed unwritable.
    #[test]
    fn a_read_only_published_source_is_opened() {
        let mut v = healthy();
        v.nodes[0].read_only = true;
        v.nodes[0].semi_sync_source = false;
        let d = enforce(&v);
        assert!(
            d.actions.contains(&Action::Open { node: "db1".into() }),
            "{d:?}"
        );
        v.fenced = true;
        assert!(enforce(&v).actions.is_empty(), "not while fenced");
    }

    /// `consul kv put mysql/master/c1 <db2>` by hand while db1 takes
    /// writes: db2 is read-only and behind. Opening it at once would take
    /// writes on a node that lacks acknowledged ones, next to a writable
    /// db1. First db1 goes read-only; db2 opens only once nothing else is
    /// writable and it holds everything every other node does.
    #[test]
    fn a_hand_published_replica_is_opened_only_once_it_holds_everything() {
        let mut v = healthy();
        v.published = Some(addr(3302));
        v.nodes[1].read_only = true;
        v.nodes[0].gtid_executed = Some(pos("0-1-12"));
        v.nodes[1].gtid_executed = Some(pos("0-1-11"));
        let d = enforce(&v);
        assert!(
            !d.actions.contains(&Action::Open { node: "db2".into() }),
            "{d:?}"
        );
        assert!(
            d.actions.contains(&Action::SetReadOnly {
                node: "db1".into(),
                read_only: true
            }),
            "{d:?}"
        );
        // db1 read-only, db2 still behind: not yet.
        v.nodes[0].read_only = true;
        let d = enforce(&v);
        assert!(
            !d.actions.contains(&Action::Open { node: "db2".into() }),
            "{d:?}"
        );
        assert!(d.reason.contains("lacks"), "{}", d.reason);
        // Caught up: opened.
        v.nodes[1].gtid_executed = Some(pos("0-1-12"));
        let d = enforce(&v);
        assert!(
            d.actions.contains(&Action::Open { node: "db2".into() }),
            "{d:?}"
        );
    }

    /// An old source that came back read-only with a commit still
    /// waiting for its ACK: turning its flag off would answer that commit
    /// OK though no replica has it (a SIGSTOPped source woken mid-commit,
    /// its session not killed). The flag stays while a commit waits, and
    /// on a quarantined node for good.
    #[test]
    fn an_old_source_keeps_its_flag_while_a_commit_waits_or_quarantined() {
        let mut v = healthy();
        v.nodes.push(crate::decide::fixtures::source("db4", 3304));
        v.nodes[3].read_only = true;
        v.nodes[3].semi.wait_sessions = 1;
        let off = Action::SetSemiSyncSource {
            node: "db4".into(),
            enabled: false,
        };
        let d = enforce(&v);
        assert!(!d.actions.contains(&off), "{d:?}");
        assert!(d.reason.contains("wait for an ACK"), "{}", d.reason);
        v.nodes[3].quarantined = true;
        v.nodes[3].semi.wait_sessions = 0;
        assert!(!enforce(&v).actions.contains(&off));
        v.nodes[3].quarantined = false;
        assert!(enforce(&v).actions.contains(&off));
        // A replica with the flag: what waits is its applier, which only
        // the flag going off frees.
        v.nodes[2].semi_sync_source = true;
        v.nodes[2].semi.wait_sessions = 1;
        assert!(
            enforce(&v).actions.contains(&Action::SetSemiSyncSource {
                node: "db3".into(),
                enabled: false
            }),
            "{:?}",
            enforce(&v)
        );
    }

    #[test]
    fn a_replica_of_another_server_is_pointed_at_the_source() {
        let mut v = healthy();
        v.nodes[2].replica.as_mut().unwrap().source = addr(3399);
        let d = enforce(&v);
        assert!(
            d.actions.contains(&Action::Repoint {
                node: "db3".into(),
                source: addr(3301)
            }),
            "{d:?}"
        );
        // Not when it holds what the source lacks, nor when quarantined.
        v.nodes[2].gtid_executed = Some(pos("0-1-11"));
        let d = enforce(&v);
        assert!(
            !d.actions
                .iter()
                .any(|a| matches!(a, Action::Repoint { .. })),
            "{d:?}"
        );
        assert!(d.reason.contains("cannot follow"), "{}", d.reason);
    }

    #[test]
    fn the_set_of_possible_ackers() {
        let v = healthy();
        let source = v.source().unwrap().clone();
        let empty = BTreeMap::new();
        // A flag nobody recorded joins at the source's position.
        let set = possible_ackers(&v, &source, &empty).unwrap();
        assert_eq!(
            set,
            BTreeMap::from([("db2".to_owned(), Some(pos("0-1-10")))])
        );
        assert_eq!(possible_ackers(&v, &source, &set), None, "nothing changed");
        // db3 joined with a floor; db2 is seen with the flag off and leaves,
        // raising db3's floor to what db2 had received.
        let mut v2 = v.clone();
        v2.nodes[1].semi_sync_replica = false;
        v2.nodes[1].semi_sync_replica_active = false;
        v2.nodes[1].replica.as_mut().unwrap().received = pos("0-1-12");
        let mut set2 = set.clone();
        set2.insert("db3".into(), Some(pos("0-1-11")));
        v2.nodes[2].semi_sync_replica = true;
        let next = possible_ackers(&v2, &source, &set2).unwrap();
        assert_eq!(
            next,
            BTreeMap::from([("db3".to_owned(), Some(pos("0-1-12")))])
        );
        // An unreachable member stays: it may still be connected and ACKing.
        let mut v3 = v.clone();
        v3.nodes[1].reachable = false;
        v3.nodes[1].semi_sync_replica = false;
        assert_eq!(possible_ackers(&v3, &source, &set), None);
        // The invariants record a changed set before anything else.
        let d = super::enforce(&v, &empty);
        assert!(
            matches!(d.actions.first(), Some(Action::RecordAckers { .. })),
            "{d:?}"
        );
    }

    fn node<'a>(v: &'a mut ClusterView, name: &str) -> &'a mut NodeView {
        v.nodes.iter_mut().find(|n| n.name == name).unwrap()
    }

    fn semi(node: &str, enabled: bool) -> Action {
        Action::SetSemiSyncReplica {
            node: node.into(),
            enabled,
            floor: enabled.then(|| crate::decide::fixtures::pos("0-1-10")),
        }
    }

    #[test]
    fn healthy_cluster_needs_nothing() {
        let d = enforce(&healthy());
        assert_eq!(d.actions, vec![]);
        assert_eq!(d.reason, "healthy: db1 is the source");
    }

    #[test]
    fn table_of_broken_invariants() {
        struct Case {
            name: &'static str,
            breaks: fn(&mut ClusterView),
            actions: Vec<Action>,
            reason: &'static str,
        }
        let cases = vec![
            Case {
                name: "a replica is writable",
                breaks: |v| node(v, "db3").read_only = false,
                actions: vec![
                    Action::SetReadOnly {
                        node: "db3".into(),
                        read_only: true,
                    },
                    Action::KillClients { node: "db3".into() },
                ],
                reason: "db3 was writable but is not the source",
            },
            Case {
                name: "source lost its semi-sync flag",
                breaks: |v| node(v, "db1").semi_sync_source = false,
                actions: vec![Action::SetSemiSyncSource {
                    node: "db1".into(),
                    enabled: true,
                }],
                reason: "source db1 lacked the semi-sync source flag",
            },
            Case {
                name: "a replica has the source flag (it would stall its SQL thread)",
                breaks: |v| node(v, "db3").semi_sync_source = true,
                actions: vec![Action::SetSemiSyncSource {
                    node: "db3".into(),
                    enabled: false,
                }],
                reason: "db3 had the semi-sync source flag",
            },
            Case {
                name: "a writable non-source with the source flag (an old source back)",
                breaks: |v| {
                    let n = node(v, "db3");
                    n.semi_sync_source = true;
                    n.read_only = false;
                },
                actions: vec![
                    Action::SetReadOnly {
                        node: "db3".into(),
                        read_only: true,
                    },
                    Action::KillClients { node: "db3".into() },
                ],
                reason: "db3 was writable but is not the source; db3 keeps its semi-sync source flag until it is read-only",
            },
            Case {
                name: "no semi-sync replica",
                breaks: |v| {
                    let n = node(v, "db2");
                    n.semi_sync_replica = false;
                    n.semi_sync_replica_active = false;
                    node(v, "db1").semi.clients = 0;
                },
                actions: vec![semi("db2", true)],
                reason: "db2 chosen as semi-sync replica",
            },
            Case {
                name: "two semi-sync replicas where one is wanted",
                breaks: |v| {
                    let n = node(v, "db3");
                    n.semi_sync_replica = true;
                    n.semi_sync_replica_active = true;
                },
                actions: vec![semi("db3", false)],
                reason: "db3 was a semi-sync replica beyond the 1 wanted",
            },
            Case {
                name: "semi-sync replica stopped replicating: flag moves",
                breaks: |v| {
                    node(v, "db2").replica.as_mut().unwrap().io_running = false;
                    node(v, "db1").semi.clients = 0;
                },
                actions: vec![semi("db2", false), semi("db3", true)],
                reason: "semi-sync replica db2 is not replicating from the source; db3 chosen as semi-sync replica",
            },
            Case {
                name: "semi-sync replica died: flag moves to the live one",
                breaks: |v| {
                    node(v, "db2").reachable = false;
                    node(v, "db1").semi.clients = 0;
                },
                actions: vec![semi("db3", true)],
                reason: "db3 chosen as semi-sync replica",
            },
            // #12 item 1: the flag moved when the coordinator merely could
            // not observe the semi-sync replica, while it still ACKed: two
            // servers whose ACK releases a commit, one out of sight.
            Case {
                name: "semi-sync replica out of the coordinator's sight, still counted by the source: no flag moves",
                breaks: |v| node(v, "db2").reachable = false,
                actions: vec![],
                reason: "db1 counts 1 semi-sync client(s) the coordinator cannot see: no replica gets the flag while they may ACK",
            },
            Case {
                name: "flag set but IO thread not restarted",
                breaks: |v| node(v, "db2").semi_sync_replica_active = false,
                actions: vec![Action::RestartIoThread { node: "db2".into() }],
                reason: "semi-sync replica db2 has the flag but its IO thread is not in semi-sync mode",
            },
            Case {
                name: "master key absent: the only writable node is published",
                breaks: |v| v.published = None,
                actions: vec![Action::Publish {
                    node: "db1".into(),
                    addr: addr(3301),
                }],
                reason: "published db1 as source (master key was absent)",
            },
            Case {
                name: "two writable with master published: the unpublished one is made read-only",
                breaks: |v| {
                    let n = node(v, "db2");
                    n.read_only = false;
                },
                actions: vec![
                    Action::SetReadOnly {
                        node: "db2".into(),
                        read_only: true,
                    },
                    Action::KillClients { node: "db2".into() },
                ],
                reason: "db2 was writable but is not the source",
            },
        ];
        for case in cases {
            let mut view = healthy();
            (case.breaks)(&mut view);
            let d = enforce(&view);
            assert_eq!(d.actions, case.actions, "{}", case.name);
            assert_eq!(d.reason, case.reason, "{}", case.name);
        }
    }

    #[test]
    fn refuses_to_guess_without_master_key() {
        let mut v = healthy();
        v.published = None;
        node(&mut v, "db2").read_only = false;
        let d = enforce(&v);
        assert!(d.actions.is_empty());
        assert_eq!(
            d.reason,
            "no master key and 2 writable nodes (db1, db2): refusing to guess"
        );

        let mut v = healthy();
        v.published = None;
        node(&mut v, "db1").read_only = true;
        let d = enforce(&v);
        assert!(d.actions.is_empty());
        assert_eq!(
            d.reason,
            "no master key and no writable node: nothing to publish"
        );
    }

    #[test]
    fn fenced_maintenance_or_running_procedure_means_hands_off() {
        for (f, reason) in [
            (
                (|v: &mut ClusterView| v.fenced = true) as fn(&mut ClusterView),
                "cluster is fenced: nothing to enforce until the fence is lifted",
            ),
            (
                |v: &mut ClusterView| v.maintenance = true,
                "maintenance mode: automation suspended",
            ),
            (
                |v: &mut ClusterView| v.procedure_running = true,
                "a switchover or failover is running: invariants wait",
            ),
        ] {
            let mut v = healthy();
            node(&mut v, "db3").read_only = false;
            f(&mut v);
            let d = enforce(&v);
            assert!(d.actions.is_empty(), "{reason}");
            assert_eq!(d.reason, reason);
        }
    }

    #[test]
    fn no_healthy_replica_keeps_the_source_waiting_and_says_so() {
        let mut v = healthy();
        node(&mut v, "db2").reachable = false;
        node(&mut v, "db1").semi.clients = 0;
        node(&mut v, "db3").replica.as_mut().unwrap().sql_running = false;
        let d = enforce(&v);
        assert!(d.actions.is_empty());
        assert_eq!(
            d.reason,
            "only 0 healthy replica(s) for 1 semi-sync slot(s): commits on db1 wait for an ACK"
        );
    }

    #[test]
    fn a_semi_sync_replica_whose_applier_stopped_keeps_the_flag() {
        // It still ACKs from its IO thread; a replica without the flag
        // and with its applier stopped is not chosen for it.
        let mut v = healthy();
        node(&mut v, "db2").replica.as_mut().unwrap().sql_running = false;
        let d = enforce(&v);
        assert!(d.actions.is_empty(), "{:?}", d.actions);

        let mut v = healthy();
        node(&mut v, "db2").reachable = false;
        node(&mut v, "db3").replica.as_mut().unwrap().sql_running = false;
        assert!(enforce(&v).actions.is_empty());
    }

    /// Right after a switch the repointed replicas' IO threads are still
    /// connecting. Taking the flag from the semi-sync replica then gained
    /// nothing (no replica could take it) and left the new source's commits
    /// waiting for an ACK nobody would send; on MySQL those commits hold the
    /// lock `super_read_only` needs, so the next switch rolled back
    /// (`accounts_with_all_privileges_lose_nothing_through_switches`).
    #[test]
    fn a_connecting_semi_sync_replica_keeps_the_flag_when_no_replica_can_take_it() {
        let mut v = healthy();
        node(&mut v, "db2").replica.as_mut().unwrap().io_running = false;
        node(&mut v, "db3").replica.as_mut().unwrap().io_running = false;
        node(&mut v, "db1").semi.clients = 0;
        let d = enforce(&v);
        assert!(d.actions.is_empty(), "{:?}", d.actions);
        assert!(d.reason.contains("keeps the flag"), "{}", d.reason);

        // With a healthy replica to take it, the flag moves.
        node(&mut v, "db3").replica.as_mut().unwrap().io_running = true;
        let d = enforce(&v);
        assert_eq!(d.actions, vec![semi("db2", false), semi("db3", true)]);
    }

    /// #13 item 7: patching the ACKer stopped every commit until the
    /// coordinator noticed and moved the flag. Drained first, the role
    /// moves make before break: the other replica is granted the flag
    /// while the drained one keeps ACKing, and the drained one's flag goes
    /// only once the new ACKer is connected in semi-sync mode.
    #[test]
    fn a_drained_acker_keeps_its_flag_until_another_replica_acks() {
        let mut v = healthy();
        v.drained.insert("db2".into());
        let d = enforce(&v);
        assert_eq!(d.actions, vec![semi("db3", true)], "{}", d.reason);
        assert!(
            d.reason.contains("db2 is drained and keeps"),
            "{}",
            d.reason
        );

        // Granted, its IO thread not yet in semi-sync mode: db2 stays.
        {
            let n = node(&mut v, "db3");
            n.semi_sync_replica = true;
            n.semi_sync_replica_active = false;
        }
        let d = enforce(&v);
        assert!(
            !d.actions.contains(&semi("db2", false)),
            "{:?}: {}",
            d.actions,
            d.reason
        );

        // Its IO thread reconnecting to take the flag into account (on
        // MySQL that outlasts a cycle): db3 keeps the flag it was just
        // granted. Taking it flapped the grant for as long as the drain
        // lasted (seen in CI on MySQL 9.7).
        node(&mut v, "db3").replica.as_mut().unwrap().io_running = false;
        let d = enforce(&v);
        assert!(
            !d.actions.contains(&semi("db3", false)) && !d.actions.contains(&semi("db2", false)),
            "{:?}: {}",
            d.actions,
            d.reason
        );
        node(&mut v, "db3").replica.as_mut().unwrap().io_running = true;

        // db3 ACKs: the drained db2 loses the flag.
        node(&mut v, "db3").semi_sync_replica_active = true;
        v.nodes[0].semi.clients = 2;
        let d = enforce(&v);
        assert_eq!(d.actions, vec![semi("db2", false)], "{}", d.reason);
        assert!(
            d.reason.contains("db2 is drained and another replica ACKs"),
            "{}",
            d.reason
        );

        // With no replica to take the role, the drained ACKer keeps it.
        let mut v = healthy();
        v.drained.insert("db2".into());
        node(&mut v, "db3").replica.as_mut().unwrap().sql_running = false;
        let d = enforce(&v);
        assert!(d.actions.is_empty(), "{:?}", d.actions);
        assert!(
            d.reason.contains("db2 is drained and keeps"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn an_io_thread_stopped_on_an_error_is_started_again() {
        let mut v = healthy();
        {
            let r = node(&mut v, "db3").replica.as_mut().unwrap();
            r.io_running = false;
            r.io_stopped = true;
            r.last_io_errno = 13117;
        }
        let d = enforce(&v);
        assert_eq!(
            d.actions,
            vec![Action::RestartIoThread { node: "db3".into() }]
        );
        // Stopped by an operator: no error, left alone.
        node(&mut v, "db3").replica.as_mut().unwrap().last_io_errno = 0;
        assert!(enforce(&v).actions.is_empty(), "{:?}", enforce(&v).actions);
    }

    #[test]
    fn quarantined_published_source_is_not_enforced() {
        let mut v = healthy();
        node(&mut v, "db1").quarantined = true;
        let d = enforce(&v);
        assert!(d.actions.is_empty());
        assert!(d.reason.contains("quarantined"), "{}", d.reason);
    }

    #[test]
    fn unknown_published_source_is_reported() {
        let mut v = healthy();
        v.published = Some(addr(9999));
        let d = enforce(&v);
        assert!(d.actions.is_empty());
        assert_eq!(
            d.reason,
            "published source 127.0.0.1:9999 is not a known node of c1"
        );
    }

    #[test]
    fn a_replica_with_a_foreign_source_is_not_chosen() {
        let mut v = healthy();
        {
            let n = node(&mut v, "db2");
            n.semi_sync_replica = false;
            n.semi_sync_replica_active = false;
            n.replica.as_mut().unwrap().source = addr(4444);
        }
        node(&mut v, "db1").semi.clients = 0;
        let d = enforce(&v);
        assert_eq!(
            d.actions,
            vec![
                Action::Repoint {
                    node: "db2".into(),
                    source: addr(3301)
                },
                semi("db3", true)
            ],
            "repointed this cycle, a semi-sync candidate from the next"
        );
    }
}
