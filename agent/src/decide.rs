//! The coordinator's decision: a pure function from what it observed of a
//! cluster to the actions that restore the cluster's invariants, plus one
//! sentence saying why. No I/O happens here, so every rule is table-tested.
//!
//! Invariants (DESIGN.md, lossless rules 2, 6 and 8):
//! - exactly one published source; every other node `read_only`;
//! - the semi-sync source flag only on the source;
//! - the replica flag on exactly N healthy replicas of the source, moved
//!   away from a replica that died or stopped replicating so the source
//!   does not block forever;
//! - `master` is published when absent, naming the only writable node.

use std::fmt;

/// Where a node listens, as written in the `master` key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Addr {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A node's replication from its source, as last observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaView {
    pub source: Addr,
    pub io_running: bool,
    pub sql_running: bool,
}

/// One database node as the coordinator last saw it. `reachable == false`
/// means no fresh observation: every other field is stale and the node is
/// never chosen for anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub addr: Addr,
    pub reachable: bool,
    pub read_only: bool,
    pub replica: Option<ReplicaView>,
    pub semi_sync_source: bool,
    pub semi_sync_replica: bool,
    /// `Rpl_semi_sync_*_status`: on a replica, whether its IO thread runs
    /// in semi-sync mode (it needs an IO-thread restart after the flag
    /// changes).
    pub semi_sync_replica_active: bool,
    pub quarantined: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterView {
    pub cluster: String,
    pub nodes: Vec<NodeView>,
    /// The `master` key, if present and valid.
    pub published: Option<Addr>,
    pub fenced: bool,
    /// A switchover or failover owns the cluster; invariants wait.
    pub procedure_running: bool,
    /// Automation suspended by an operator.
    pub maintenance: bool,
    pub semi_sync_replicas: usize,
}

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
    },
    RestartIoThread {
        node: String,
    },
    /// Writes `master` (+ `/hostname`, `/port`) in one txn guarded by the
    /// coordinator lock.
    Publish {
        node: String,
        addr: Addr,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub actions: Vec<Action>,
    pub reason: String,
}

impl Decision {
    fn idle(reason: impl Into<String>) -> Self {
        Decision {
            actions: Vec::new(),
            reason: reason.into(),
        }
    }
}

pub fn decide(view: &ClusterView) -> Decision {
    if view.maintenance {
        return Decision::idle("maintenance mode: automation suspended");
    }
    if view.procedure_running {
        return Decision::idle("a switchover or failover is running: invariants wait");
    }
    if view.fenced {
        return Decision::idle("cluster is fenced: nothing to enforce until the fence is lifted");
    }

    let (source, mut actions, mut reasons) = match &view.published {
        Some(addr) => match view.nodes.iter().find(|n| &n.addr == addr) {
            Some(node) => (node, Vec::new(), Vec::new()),
            None => {
                return Decision::idle(format!(
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
            Err(why) => return Decision::idle(why),
        },
    };
    if !source.reachable {
        // Failure detection owns this case; moving semi-sync flags away
        // from replicas that lost a dead source would destroy the evidence
        // of which one holds every acknowledged transaction.
        return Decision::idle(format!("published source {} is unreachable", source.name));
    }
    if source.quarantined {
        return Decision::idle(format!(
            "published source {} is quarantined: refusing to enforce invariants around it",
            source.name
        ));
    }

    for node in view
        .nodes
        .iter()
        .filter(|n| n.reachable && n.name != source.name)
    {
        if !node.read_only {
            actions.push(Action::SetReadOnly {
                node: node.name.clone(),
                read_only: true,
            });
            actions.push(Action::KillClients {
                node: node.name.clone(),
            });
            reasons.push(format!("{} was writable but is not the source", node.name));
        }
        if node.semi_sync_source {
            actions.push(Action::SetSemiSyncSource {
                node: node.name.clone(),
                enabled: false,
            });
            reasons.push(format!("{} had the semi-sync source flag", node.name));
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
        Decision::idle(format!("healthy: {} is the source", source.name))
    } else {
        Decision {
            actions,
            reason: reasons.join("; "),
        }
    }
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

fn healthy_replica_of(node: &NodeView, source: &NodeView) -> bool {
    node.reachable
        && !node.quarantined
        && node.name != source.name
        && node
            .replica
            .as_ref()
            .is_some_and(|r| r.source == source.addr && r.io_running && r.sql_running)
}

/// Keeps the replica flag on exactly `N` healthy replicas: those that have
/// it and are healthy keep it (moving it costs an IO-thread restart), the
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

    let mut keep: Vec<&NodeView> = replicas
        .iter()
        .copied()
        .filter(|n| n.semi_sync_replica && healthy_replica_of(n, source))
        .collect();
    keep.truncate(want);
    for node in replicas.iter().filter(|n| n.semi_sync_replica) {
        if !keep.iter().any(|k| k.name == node.name) {
            actions.push(Action::SetSemiSyncReplica {
                node: node.name.clone(),
                enabled: false,
            });
            reasons.push(if healthy_replica_of(node, source) {
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
    let missing = want.saturating_sub(keep.len());
    let additions: Vec<&NodeView> = replicas
        .iter()
        .copied()
        .filter(|n| !n.semi_sync_replica && healthy_replica_of(n, source))
        .take(missing)
        .collect();
    for node in &additions {
        actions.push(Action::SetSemiSyncReplica {
            node: node.name.clone(),
            enabled: true,
        });
        reasons.push(format!("{} chosen as semi-sync replica", node.name));
    }
    if keep.len() + additions.len() < want {
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

    fn addr(port: u16) -> Addr {
        Addr {
            host: "127.0.0.1".into(),
            port,
        }
    }

    fn source(name: &str, port: u16) -> NodeView {
        NodeView {
            name: name.into(),
            addr: addr(port),
            reachable: true,
            read_only: false,
            replica: None,
            semi_sync_source: true,
            semi_sync_replica: false,
            semi_sync_replica_active: false,
            quarantined: false,
        }
    }

    fn replica(name: &str, port: u16, of: u16, semi: bool) -> NodeView {
        NodeView {
            name: name.into(),
            addr: addr(port),
            reachable: true,
            read_only: true,
            replica: Some(ReplicaView {
                source: addr(of),
                io_running: true,
                sql_running: true,
            }),
            semi_sync_source: false,
            semi_sync_replica: semi,
            semi_sync_replica_active: semi,
            quarantined: false,
        }
    }

    /// db1 source, db2 semi-sync replica, db3 async replica, published.
    fn healthy() -> ClusterView {
        ClusterView {
            cluster: "c1".into(),
            nodes: vec![
                source("db1", 3301),
                replica("db2", 3302, 3301, true),
                replica("db3", 3303, 3301, false),
            ],
            published: Some(addr(3301)),
            fenced: false,
            procedure_running: false,
            maintenance: false,
            semi_sync_replicas: 1,
        }
    }

    fn node<'a>(v: &'a mut ClusterView, name: &str) -> &'a mut NodeView {
        v.nodes.iter_mut().find(|n| n.name == name).unwrap()
    }

    fn semi(node: &str, enabled: bool) -> Action {
        Action::SetSemiSyncReplica {
            node: node.into(),
            enabled,
        }
    }

    #[test]
    fn healthy_cluster_needs_nothing() {
        let d = decide(&healthy());
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
                name: "no semi-sync replica",
                breaks: |v| {
                    let n = node(v, "db2");
                    n.semi_sync_replica = false;
                    n.semi_sync_replica_active = false;
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
                breaks: |v| node(v, "db2").replica.as_mut().unwrap().io_running = false,
                actions: vec![semi("db2", false), semi("db3", true)],
                reason: "semi-sync replica db2 is not replicating from the source; db3 chosen as semi-sync replica",
            },
            Case {
                name: "semi-sync replica died: flag moves to the live one",
                breaks: |v| node(v, "db2").reachable = false,
                actions: vec![semi("db3", true)],
                reason: "db3 chosen as semi-sync replica",
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
            let d = decide(&view);
            assert_eq!(d.actions, case.actions, "{}", case.name);
            assert_eq!(d.reason, case.reason, "{}", case.name);
        }
    }

    #[test]
    fn refuses_to_guess_without_master_key() {
        let mut v = healthy();
        v.published = None;
        node(&mut v, "db2").read_only = false;
        let d = decide(&v);
        assert!(d.actions.is_empty());
        assert_eq!(
            d.reason,
            "no master key and 2 writable nodes (db1, db2): refusing to guess"
        );

        let mut v = healthy();
        v.published = None;
        node(&mut v, "db1").read_only = true;
        let d = decide(&v);
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
            let d = decide(&v);
            assert!(d.actions.is_empty(), "{reason}");
            assert_eq!(d.reason, reason);
        }
    }

    #[test]
    fn no_healthy_replica_keeps_the_source_waiting_and_says_so() {
        let mut v = healthy();
        node(&mut v, "db2").reachable = false;
        node(&mut v, "db3").replica.as_mut().unwrap().sql_running = false;
        let d = decide(&v);
        assert!(d.actions.is_empty());
        assert_eq!(
            d.reason,
            "only 0 healthy replica(s) for 1 semi-sync slot(s): commits on db1 wait for an ACK"
        );
    }

    #[test]
    fn quarantined_published_source_is_not_enforced() {
        let mut v = healthy();
        node(&mut v, "db1").quarantined = true;
        let d = decide(&v);
        assert!(d.actions.is_empty());
        assert!(d.reason.contains("quarantined"), "{}", d.reason);
    }

    #[test]
    fn unknown_published_source_is_reported() {
        let mut v = healthy();
        v.published = Some(addr(9999));
        let d = decide(&v);
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
        let d = decide(&v);
        assert_eq!(d.actions, vec![semi("db3", true)]);
    }
}
