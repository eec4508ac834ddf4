//! Planned successover: a zero-loss switch of the writable source, as the
//! next step from what is recorded.
//!
//! Order of steps, and why:
//! 1. pre-checks ([`plan`], [`errant`]): refuse rather than guess (rule 7);
//! 2. old source `read_only` (the executor kills its client connections
//!    from then until the end: clients may bypass the proxy);
//! 3. fence at the proxies;
//! 4. wait until the target applied everything the old source committed
//!    (GTID), else roll back;
//! 5. the target stops replicating from the old source and gets the
//!    semi-sync source flag; the replica chosen for semi-sync is repointed
//!    first, so the target's first commits find an ACKing replica;
//! 6. publish the new `master` keys and lift the fence in one txn guarded
//!    by the lock, then make the target writable (in that order: a target
//!    writable while the cluster is still fenced would be self-fenced by
//!    its own agent);
//! 7. repoint the remaining replicas, record the outcome.
//!
//! A step that fails before the publish rolls the switch back. A
//! coordinator that finds a switch it did not start has no plan: it
//! finishes a published switch or rolls back an unpublished one
//! ([`recover`]); either way there is never a second writable node, since
//! the old source is only made writable while the target is read-only.

use successover_common::consul::KvPair;
use successover_common::procedure::{HistoryEntry, Outcome, ProcedureKind, SwitchoverRequest};

use super::{ClusterView, HostPort, Input, NodeView, Step};
use crate::mysql::{gtid::binlog_state_not_in, GtidSet, GtidState, Uuid};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub from: String,
    pub from_addr: HostPort,
    pub to: String,
    pub to_addr: HostPort,
    /// The old source replicates from the target: a primary-primary pair,
    /// whose target keeps replicating from the old source afterwards.
    pub pair: bool,
    /// Replicas to repoint to the target (the old source included unless
    /// it is already the target's replica).
    pub repoint: Vec<String>,
    /// The replica that gets the semi-sync flag under the new source.
    pub semi_sync: String,
    pub skip_catchup: bool,
}

/// Steps whose failure rolls an unpublished switch back.
const BEFORE_PUBLISH: [&str; 5] = [
    "read_only_old_source",
    "fence",
    "catch_up",
    "prepare_target",
    "publish",
];

/// No transaction on the target that the source lacks: a switch would
/// otherwise fork history or lose those transactions. The target's position
/// must be read before the source's, or a commit in between makes a healthy
/// replica look ahead (the coordinator observes the source last).
///
/// That order is not enough on MySQL: a commit enters `@@gtid_executed` only
/// after its semi-sync ACK (AFTER_SYNC), so a replica may hold, even have
/// applied, a GTID its live source does not show yet (seen on MySQL 9.7
/// under writes). A GTID named with the source's own `source_uuid` was
/// written by the source and is in its binlog (`sync_binlog=1`), so it is
/// never one the source lacks.
pub fn check_errant(
    target: &GtidState,
    source: &GtidState,
    source_uuid: Option<Uuid>,
    to: &str,
    from: &str,
) -> Result<(), String> {
    let mut errant = target.not_in(source).map_err(|e| e.to_string())?;
    if let (GtidState::MySql(set), Some(own)) = (&errant, source_uuid) {
        let mut others = GtidSet::new();
        for (uuid, tag, intervals) in set.iter().filter(|(u, _, _)| *u != own) {
            for iv in intervals {
                others.add_interval(uuid, tag, *iv);
            }
        }
        errant = GtidState::MySql(others);
    }
    if errant.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{to} has transactions {from} does not ({errant}): switching would lose or fork them"
        ))
    }
}

/// Positions, then (MariaDB) the binlog state per server id: positions can
/// hide a diverged transaction with the same domain and sequence number.
/// `Err` names what `node` holds that `source` lacks.
pub fn errant(node: &NodeView, source: &NodeView) -> Result<(), String> {
    let (Some(n), Some(s)) = (&node.gtid_executed, &source.gtid_executed) else {
        return Err(format!(
            "the GTID positions of {} and {} are unknown",
            node.name, source.name
        ));
    };
    check_errant(n, s, source.server_uuid, &node.name, &source.name)?;
    let (Some(n), Some(s)) = (&node.binlog_state, &source.binlog_state) else {
        return Ok(());
    };
    let extra = binlog_state_not_in(n, s);
    if extra.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} has transactions {} does not ({}): switching would lose or fork them",
        node.name,
        source.name,
        extra
            .iter()
            .map(|(d, srv, q)| format!("{d}-{srv}-{q}"))
            .collect::<Vec<_>>()
            .join(",")
    ))
}

/// Pure pre-checks: the plan, or the reason to refuse.
pub fn plan(
    req: &SwitchoverRequest,
    view: &ClusterView,
    default_max_lag: u32,
) -> Result<Plan, String> {
    let published = view
        .published
        .as_ref()
        .ok_or("no published source (master key absent or invalid)")?;
    let from = view
        .node_at(published)
        .ok_or_else(|| format!("published source {published} is not a node with an agent"))?;
    if !from.reachable {
        return Err(format!(
            "source {} is unreachable: that is a failover, not a successover",
            from.name
        ));
    }
    if from.read_only {
        return Err(format!("source {} is read-only", from.name));
    }
    let max_lag = req.max_lag_seconds.unwrap_or(default_max_lag);
    let lag_of = |n: &NodeView| n.replica.as_ref().and_then(|r| r.seconds_behind_source);
    let to = match &req.target {
        Some(t) => {
            let node = view
                .node(t)
                .ok_or_else(|| format!("{t} is not a node of {} with an agent", view.cluster))?;
            if node.name == from.name {
                return Err(format!("{t} is already the source"));
            }
            if node.quarantined {
                return Err(format!("{t} is quarantined"));
            }
            if !node.reachable {
                return Err(format!("{t} is unreachable"));
            }
            if !node.healthy_replica_of(&from.addr) {
                return Err(format!(
                    "{t} is not replicating from {} (IO and SQL threads must run)",
                    from.name
                ));
            }
            node
        }
        // The semi-sync replica holds every acknowledged transaction; among
        // the rest, the least lagging, then by name for a stable choice.
        None => view
            .nodes
            .iter()
            .filter(|n| n.name != from.name && n.healthy_replica_of(&from.addr))
            .min_by_key(|n| {
                (
                    !n.semi_sync_replica_active,
                    lag_of(n).unwrap_or(u64::MAX),
                    n.name.clone(),
                )
            })
            .ok_or("no healthy replica to switch to")?,
    };
    match lag_of(to) {
        Some(l) if l <= u64::from(max_lag) => {}
        _ if req.force => {}
        Some(l) => {
            return Err(format!(
                "{} lags {l} s behind {} (limit {max_lag} s; force to override)",
                to.name, from.name
            ))
        }
        None => return Err(format!("{} reports no lag figure", to.name)),
    }
    let semi_ok = from.semi.source_status_on && from.semi.clients > 0;
    if !semi_ok && !req.force {
        return Err(format!(
            "semi-sync is not healthy on {} (status {}, {} ACKing replica(s)); force to override",
            from.name,
            if from.semi.source_status_on {
                "ON"
            } else {
                "OFF"
            },
            from.semi.clients
        ));
    }
    let pair = from.replicates_from(&to.addr);
    let mut repoint: Vec<String> = view
        .nodes
        .iter()
        .filter(|n| n.name != to.name && n.name != from.name && n.reachable && !n.quarantined)
        .map(|n| n.name.clone())
        .collect();
    if !pair {
        repoint.push(from.name.clone());
    }
    // Keep the flag where it is if that replica stays a replica; otherwise
    // the old source, which is fully caught up by construction.
    let semi_sync = view
        .nodes
        .iter()
        .find(|n| {
            n.name != to.name
                && n.name != from.name
                && n.semi_sync_replica_active
                && n.healthy_replica_of(&from.addr)
        })
        .map(|n| n.name.clone())
        .unwrap_or_else(|| from.name.clone());
    Ok(Plan {
        from: from.name.clone(),
        from_addr: from.addr.clone(),
        to: to.name.clone(),
        to_addr: to.addr.clone(),
        pair,
        repoint,
        semi_sync,
        skip_catchup: req.skip_catchup,
    })
}

/// A request scheduled for later (`not_before_ms` ahead of the
/// coordinator's clock): why it waits. A malformed request does not wait:
/// [`start`] consumes it with its refusal.
pub fn waits(input: &Input<'_>, request: &KvPair) -> Option<String> {
    let req = SwitchoverRequest::parse(request.value.as_deref().unwrap_or_default()).ok()?;
    let at = req.not_before_ms.filter(|&t| input.wall_ms < t)?;
    Some(format!(
        "a switchover to {} is scheduled in {} s",
        req.target.as_deref().unwrap_or("the best candidate"),
        (at - input.wall_ms).div_ceil(1000)
    ))
}

/// A pending request: the step that consumes it, starting the switch or
/// recording why not. The request key is consumed (CAS on its modify
/// index) in the same txn, so it is acted on exactly once.
pub fn start(input: &Input<'_>, request: &KvPair) -> (Step, String) {
    let parsed = SwitchoverRequest::parse(request.value.as_deref().unwrap_or_default());
    let mut entry = HistoryEntry::start(
        ProcedureKind::Switchover,
        &input.view.cluster,
        input.coordinator,
        input.wall_ms,
    );
    entry.request = parsed.as_ref().ok().cloned();
    let planned = match &parsed {
        Err(e) => Err(format!("malformed request in {}: {e}", request.key)),
        Ok(req) if req.not_after_ms.is_some_and(|t| input.wall_ms > t) => Err(format!(
            "its window closed {} s before the coordinator could start it",
            (input.wall_ms - req.not_after_ms.unwrap_or_default()).div_ceil(1000)
        )),
        Ok(req) => plan(req, input.view, input.kv.max_lag_seconds),
    };
    let planned = planned.and_then(|p| {
        let (Some(to), Some(from)) = (input.view.node(&p.to), input.view.node(&p.from)) else {
            return Err("target or source vanished".to_owned());
        };
        errant(to, from).map(|()| p)
    });
    match planned {
        Err(reason) => {
            entry.outcome = Outcome::Refused;
            entry.reason = reason.clone();
            entry.finished_ms = Some(input.wall_ms);
            (
                Step::StartSwitch {
                    request: request.clone(),
                    entry: Box::new(entry),
                    plan: None,
                },
                format!("switchover refused: {reason}"),
            )
        }
        Ok(plan) => {
            entry.from = Some(plan.from.clone());
            entry.to = Some(plan.to.clone());
            entry.reason = format!("switching {} -> {}", plan.from, plan.to);
            let reason = format!("switchover started: {} -> {}", plan.from, plan.to);
            (
                Step::StartSwitch {
                    request: request.clone(),
                    entry: Box::new(entry),
                    plan: Some(Box::new(plan)),
                },
                reason,
            )
        }
    }
}

fn finish(outcome: Outcome, reason: String) -> (Option<Step>, String) {
    (
        Some(Step::Finish {
            outcome,
            reason: reason.clone(),
            counted: false,
            restart_io: Vec::new(),
            lift_fence: false,
        }),
        format!("switchover {}: {reason}", outcome.as_str()),
    )
}

/// After a roll-back step: the outcome it leaves.
fn after_roll_back(entry: &HistoryEntry) -> Option<(Option<Step>, String)> {
    let at = entry.steps.iter().rposition(|s| s.name == "roll_back")?;
    let rb = &entry.steps[at];
    let why = entry.steps[..at]
        .iter()
        .rev()
        .find(|s| !s.ok)
        .map(|s| format!("{}: {}", s.name, s.detail))
        .unwrap_or_else(|| "the coordinator changed mid-switch".to_owned());
    Some(if rb.ok {
        finish(Outcome::Aborted, format!("rolled back: {why}"))
    } else {
        finish(
            Outcome::Failed,
            format!("roll back after '{why}' incomplete: {}", rb.detail),
        )
    })
}

fn failed(entry: &HistoryEntry, name: &str) -> bool {
    entry
        .steps
        .iter()
        .rev()
        .find(|s| s.name == name)
        .is_some_and(|s| !s.ok)
}

/// The next step of the switch this coordinator runs under `plan`.
pub fn next(input: &Input<'_>, entry: &HistoryEntry, plan: &Plan) -> (Option<Step>, String) {
    if let Some(done) = after_roll_back(entry) {
        return done;
    }
    let view = input.view;
    let (Some(from), Some(to)) = (view.node(&plan.from), view.node(&plan.to)) else {
        return (None, "switchover: a node of the plan vanished".into());
    };
    let published_to = view
        .published
        .as_ref()
        .is_some_and(|p| p.same(&plan.to_addr));
    if !published_to {
        if let Some(s) = entry.steps.last().filter(|s| {
            !s.ok && (BEFORE_PUBLISH.contains(&s.name.as_str()) || s.name.ends_with("_semi_sync"))
        }) {
            return (
                Some(Step::RollBack {
                    plan: plan.clone(),
                    target_touched: entry.steps.iter().any(|s| s.name == "prepare_target"),
                    why: format!("{}: {}", s.name, s.detail),
                }),
                format!("rolling back: {} failed", s.name),
            );
        }
        if let Some(s) = entry
            .steps
            .iter()
            .rev()
            .find(|s| s.name == "converge")
            .filter(|s| !s.ok)
        {
            return finish(
                Outcome::Aborted,
                format!("converge: {}; nothing was changed", s.detail),
            );
        }
        if !from.read_only && !plan.skip_catchup && !entry.has_step("converge") {
            return (
                Some(Step::Converge {
                    from: plan.from.clone(),
                    to: plan.to.clone(),
                }),
                format!(
                    "{} catches up with {} while it takes writes",
                    plan.to, plan.from
                ),
            );
        }
        if !from.read_only {
            return (
                Some(Step::ReadOnlyOldSource {
                    node: plan.from.clone(),
                }),
                format!("{} stops taking writes", plan.from),
            );
        }
        if !(view.fenced && input.kv.fence_is(&entry.id)) {
            return (
                Some(Step::Fence),
                "fencing the cluster at the proxies".into(),
            );
        }
        if !entry.has_step("catch_up") {
            return (
                Some(Step::CatchUp {
                    from: plan.from.clone(),
                    to: plan.to.clone(),
                    skip_wait: plan.skip_catchup,
                }),
                format!("{} catches up with {}", plan.to, plan.from),
            );
        }
        let prepared =
            (plan.pair || to.replica.is_none()) && to.semi_sync_source && !to.semi_sync_replica;
        if !prepared {
            return (
                Some(Step::PrepareTarget {
                    node: plan.to.clone(),
                    pair: plan.pair,
                }),
                format!("preparing {}", plan.to),
            );
        }
        let semi = view.node(&plan.semi_sync);
        let semi_done = semi.is_some_and(|n| {
            n.replicates_from(&plan.to_addr) && n.semi_sync_replica && !n.semi_sync_source
        });
        if !semi_done {
            return (
                Some(Step::Repoint {
                    node: plan.semi_sync.clone(),
                    source: plan.to_addr.clone(),
                    semi_sync: true,
                    was_source: plan.semi_sync == plan.from,
                }),
                format!("repointing {} (semi-sync) to {}", plan.semi_sync, plan.to),
            );
        }
        return (
            Some(Step::Publish {
                node: plan.to.clone(),
                addr: plan.to_addr.clone(),
                quarantine: None,
                acker: to
                    .gtid_executed
                    .clone()
                    .map(|f| (plan.semi_sync.clone(), f)),
            }),
            format!("publishing {}", plan.to),
        );
    }
    if let Some((step, reason)) = super::open_published(to, "writable_target") {
        return (Some(step), reason);
    }
    for name in plan.repoint.iter().filter(|n| **n != plan.semi_sync) {
        let Some(n) = view.node(name).filter(|n| n.reachable) else {
            continue;
        };
        let step = Step::Repoint {
            node: name.clone(),
            source: plan.to_addr.clone(),
            semi_sync: false,
            was_source: *name == plan.from,
        };
        if !n.replicates_from(&plan.to_addr) && !failed(entry, &step.name()) {
            return (Some(step), format!("repointing {name} to {}", plan.to));
        }
    }
    finish(
        Outcome::Done,
        format!("{} is the source (was {})", plan.to, plan.from),
    )
}

/// A switch found under way that this coordinator did not start (the
/// previous one died or lost its lock). What KV and the servers show
/// decides: published already → finish it; not published → roll it back.
pub fn recover(input: &Input<'_>, entry: &HistoryEntry) -> (Option<Step>, String) {
    if let Some(done) = after_roll_back(entry) {
        return done;
    }
    let view = input.view;
    let (Some(from), Some(to)) = (entry.from.clone(), entry.to.clone()) else {
        return finish(
            Outcome::Failed,
            format!("dropped unreadable in-progress marker {}", entry.id),
        );
    };
    let (Some(from_addr), Some(to_addr)) = (view.addr_of(&from), view.addr_of(&to)) else {
        return (
            None,
            format!(
                "interrupted switch {}: {from} or {to} has no agent report; waiting",
                entry.id
            ),
        );
    };
    let published = view.published.as_ref();
    if published.is_some_and(|p| p.same(&to_addr)) {
        let Some(t) = view.node(&to).filter(|n| n.reachable) else {
            return (
                None,
                format!("interrupted switch: waiting for {to} to answer"),
            );
        };
        if let Some((step, reason)) = super::open_published(t, "writable_target") {
            return (Some(step), reason);
        }
        for n in view.nodes.iter().filter(|n| n.reachable && n.name != to) {
            let step = Step::Repoint {
                node: n.name.clone(),
                source: to_addr.clone(),
                semi_sync: false,
                was_source: n.name == from,
            };
            if !n.replicates_from(&to_addr) && !failed(entry, &step.name()) {
                return (Some(step), format!("repointing {} to {to}", n.name));
            }
        }
        if view.fenced && input.kv.fence_is(&entry.id) {
            return (Some(Step::LiftFence), "lifting the switch's fence".into());
        }
        return finish(
            Outcome::Done,
            format!(
                "{to} is the source; finished by {} after the coordinator changed",
                input.coordinator
            ),
        );
    }
    if published.is_some_and(|p| p.same(&from_addr)) {
        let target_moved = view
            .node(&to)
            .is_none_or(|n| !n.replicates_from(&from_addr));
        let plan = Plan {
            from: from.clone(),
            from_addr,
            to: to.clone(),
            to_addr,
            pair: false,
            repoint: Vec::new(),
            semi_sync: to,
            skip_catchup: false,
        };
        return (
            Some(Step::RollBack {
                plan,
                target_touched: target_moved,
                why: "the coordinator changed mid-switch".into(),
            }),
            "rolling back an interrupted switch".into(),
        );
    }
    finish(
        Outcome::Failed,
        format!("master key names neither {from} nor {to}; an operator changed it"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::fixtures::{self, addr, healthy, pos};
    use crate::decide::{KvInputs, ReplicaView};
    use successover_common::procedure::Step as Recorded;

    /// db1 source; db2 semi-sync replica; db3 async replica lagging `lag3`.
    fn cluster(lag3: u64) -> ClusterView {
        let mut v = healthy();
        for (i, n) in v.nodes.iter_mut().enumerate() {
            n.addr = addr(i as u16 + 1);
        }
        v.published = Some(addr(1));
        for n in v.nodes.iter_mut().skip(1) {
            n.replica.as_mut().unwrap().source = addr(1);
        }
        let r3 = v.nodes[2].replica.as_mut().unwrap();
        r3.seconds_behind_source = Some(lag3);
        v.nodes[2].gtid_executed = Some(pos("0-1-9"));
        v
    }

    fn req(target: Option<&str>) -> SwitchoverRequest {
        SwitchoverRequest {
            target: target.map(str::to_owned),
            ..SwitchoverRequest::default()
        }
    }

    #[test]
    fn no_target_picks_the_semi_sync_replica() {
        let p = plan(&req(None), &cluster(0), 10).unwrap();
        assert_eq!((p.from.as_str(), p.to.as_str()), ("db1", "db2"));
        assert!(!p.pair);
        assert_eq!(p.repoint, vec!["db3".to_owned(), "db1".to_owned()]);
        // The old source takes the semi-sync flag: db2, which had it, is
        // the new source.
        assert_eq!(p.semi_sync, "db1");
    }

    #[test]
    fn switching_to_the_async_replica_keeps_the_semi_sync_replica() {
        let p = plan(&req(Some("db3")), &cluster(0), 10).unwrap();
        assert_eq!(p.to, "db3");
        assert_eq!(p.semi_sync, "db2");
    }

    #[test]
    fn refusals() {
        let view = cluster(30);
        let err = plan(&req(Some("db3")), &view, 10).unwrap_err();
        assert_eq!(
            err,
            "db3 lags 30 s behind db1 (limit 10 s; force to override)"
        );
        let mut forced = req(Some("db3"));
        forced.force = true;
        assert!(
            plan(&forced, &view, 10).is_ok(),
            "force skips the lag refusal"
        );
        assert_eq!(
            plan(&req(Some("db9")), &view, 10).unwrap_err(),
            "db9 is not a node of c1 with an agent"
        );
        assert_eq!(
            plan(&req(Some("db1")), &view, 10).unwrap_err(),
            "db1 is already the source"
        );

        let mut view = cluster(0);
        view.nodes[2].replica.as_mut().unwrap().sql_running = false;
        assert_eq!(
            plan(&req(Some("db3")), &view, 10).unwrap_err(),
            "db3 is not replicating from db1 (IO and SQL threads must run)"
        );

        let mut view = cluster(0);
        view.nodes[0].reachable = false;
        assert!(plan(&req(None), &view, 10)
            .unwrap_err()
            .contains("that is a failover"));

        let mut view = cluster(0);
        view.nodes[1].quarantined = true;
        assert_eq!(
            plan(&req(Some("db2")), &view, 10).unwrap_err(),
            "db2 is quarantined"
        );
    }

    #[test]
    fn unhealthy_semi_sync_refuses_unless_forced() {
        let mut view = cluster(0);
        view.nodes[0].semi.clients = 0;
        let err = plan(&req(Some("db2")), &view, 10).unwrap_err();
        assert!(err.starts_with("semi-sync is not healthy on db1"), "{err}");
        let mut forced = req(Some("db2"));
        forced.force = true;
        assert!(plan(&forced, &view, 10).is_ok());
    }

    #[test]
    fn a_primary_primary_pair_is_detected() {
        let mut view = cluster(0);
        view.nodes[0].replica = Some(ReplicaView {
            source: addr(2),
            ..view.nodes[1].replica.clone().unwrap()
        });
        let p = plan(&req(Some("db2")), &view, 10).unwrap();
        assert!(p.pair);
        assert_eq!(p.repoint, vec!["db3".to_owned()], "db1 already follows db2");
    }

    #[test]
    fn errant_transactions_on_the_target_refuse() {
        let target = pos("0-1-10,1-2-3");
        let source = pos("0-1-12");
        let err = check_errant(&target, &source, None, "db2", "db1").unwrap_err();
        assert!(
            err.starts_with("db2 has transactions db1 does not (1-2-3)"),
            "{err}"
        );
        assert!(check_errant(&pos("0-1-10"), &source, None, "db2", "db1").is_ok());
        // Same position, another server id: only the binlog state tells.
        let mut v = cluster(0);
        v.nodes[0].binlog_state = Some(vec![(0, 1, 10)]);
        v.nodes[1].binlog_state = Some(vec![(0, 1, 9), (0, 7, 10)]);
        let err = errant(&v.nodes[1], &v.nodes[0]).unwrap_err();
        assert!(err.contains("0-7-10"), "{err}");
    }

    /// MySQL 9.7 under writes: the replica holds the source's GTID 11 while
    /// the source's gtid_executed, read after it, still ends at 10.
    #[test]
    fn a_mysql_source_commit_awaiting_its_ack_is_not_errant_on_the_target() {
        const SOURCE: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        const OTHER: &str = "8b2c4a10-1111-11e1-9e33-c80aa9429562";
        let set = |s: &str| GtidState::MySql(GtidSet::parse(s).unwrap());
        let uuid = Some(Uuid::parse(SOURCE).unwrap());
        let source = set(&format!("{SOURCE}:1-10"));
        let target = set(&format!("{SOURCE}:1-11"));
        assert!(check_errant(&target, &source, uuid, "db2", "db1").is_ok());
        // Without the source's UUID nothing tells it from a fork.
        assert!(check_errant(&target, &source, None, "db2", "db1").is_err());
        // Another server's GTID is still errant, and is the one named.
        let target = set(&format!("{SOURCE}:1-11,{OTHER}:1"));
        let err = check_errant(&target, &source, uuid, "db2", "db1").unwrap_err();
        assert!(err.contains(&format!("{OTHER}:1")), "{err}");
        assert!(!err.contains(SOURCE), "{err}");
        // Through `errant`, from the views' own fields.
        let mut v = cluster(0);
        v.nodes[0].gtid_executed = Some(source.clone());
        v.nodes[0].server_uuid = uuid;
        v.nodes[1].gtid_executed = Some(set(&format!("{SOURCE}:1-12")));
        assert_eq!(errant(&v.nodes[1], &v.nodes[0]), Ok(()));
        v.nodes[0].server_uuid = Some(Uuid::parse(OTHER).unwrap());
        assert!(errant(&v.nodes[1], &v.nodes[0]).is_err());
    }

    fn input<'a>(v: &'a ClusterView, kv: &'a KvInputs, me: &'a str) -> Input<'a> {
        fixtures::input(v, kv, me, 0)
    }

    fn record(e: &mut HistoryEntry, name: &str, ok: bool) {
        e.steps.push(Recorded {
            name: name.into(),
            started_ms: 0,
            duration_ms: 1,
            ok,
            detail: if ok { String::new() } else { "boom".into() },
        });
    }

    /// A scheduled request waits in KV (the cluster is kept meanwhile),
    /// starts once its time comes, and is refused past its window.
    #[test]
    fn a_scheduled_request_waits_for_its_time_and_not_past_its_window() {
        use crate::decide::{decide, Intent, Memory};
        let v = cluster(0);
        let wall = |now_ms: u64| 1_700_000_000_000 + now_ms;
        let mut kv = KvInputs {
            max_lag_seconds: 10,
            ..KvInputs::default()
        };
        let pair = |value: String| KvPair {
            key: "mysql/switchover/c1".into(),
            value: Some(value.into_bytes()),
            flags: 0,
            session: None,
            create_index: 1,
            modify_index: 7,
            lock_index: 0,
        };
        kv.switchover = Some(pair(format!(
            r#"{{"target": "db2", "not_before_ms": {}, "not_after_ms": {}}}"#,
            wall(60_000),
            wall(120_000)
        )));
        let early = decide(&fixtures::input(&v, &kv, "db3", 1_000), &Memory::default());
        assert!(
            !matches!(early.intent, Intent::Step(_)),
            "{:?}",
            early.intent
        );
        assert!(
            early
                .reason
                .contains("a switchover to db2 is scheduled in 59 s"),
            "{}",
            early.reason
        );
        let due = decide(&fixtures::input(&v, &kv, "db3", 60_000), &Memory::default());
        let Intent::Step(Step::StartSwitch { entry, plan, .. }) = due.intent else {
            panic!("{:?}", due.intent)
        };
        assert!(plan.is_some(), "{}", entry.reason);
        let late = decide(
            &fixtures::input(&v, &kv, "db3", 125_000),
            &Memory::default(),
        );
        let Intent::Step(Step::StartSwitch { entry, plan, .. }) = late.intent else {
            panic!("{:?}", late.intent)
        };
        assert!(plan.is_none());
        assert_eq!(entry.outcome, Outcome::Refused);
        assert!(
            entry.reason.contains("window closed 5 s"),
            "{}",
            entry.reason
        );
    }

    /// Each step, then the view as the executor leaves it, in order.
    #[test]
    fn the_steps_of_a_switch_in_order() {
        let mut v = cluster(0);
        let mut kv = KvInputs {
            max_lag_seconds: 10,
            ..KvInputs::default()
        };
        let request = KvPair {
            key: "mysql/switchover/c1".into(),
            value: Some(b"db2".to_vec()),
            flags: 0,
            session: None,
            create_index: 1,
            modify_index: 7,
            lock_index: 0,
        };
        let (s, _) = start(&input(&v, &kv, "db3"), &request);
        let Step::StartSwitch {
            entry,
            plan: Some(plan),
            ..
        } = s
        else {
            panic!("{s:?}")
        };
        let mut e = *entry;
        let step = |v: &ClusterView, kv: &KvInputs, e: &HistoryEntry| {
            next(&input(v, kv, "db3"), e, &plan).0.unwrap()
        };
        assert_eq!(
            step(&v, &kv, &e),
            Step::Converge {
                from: "db1".into(),
                to: "db2".into()
            }
        );
        record(&mut e, "converge", true);
        assert_eq!(
            step(&v, &kv, &e),
            Step::ReadOnlyOldSource { node: "db1".into() }
        );
        v.nodes[0].read_only = true;
        assert_eq!(step(&v, &kv, &e), Step::Fence);
        v.fenced = true;
        kv.fence = Some(format!("switchover {}", e.id));
        assert!(matches!(step(&v, &kv, &e), Step::CatchUp { .. }));
        record(&mut e, "catch_up", true);
        assert!(matches!(
            step(&v, &kv, &e),
            Step::PrepareTarget { pair: false, .. }
        ));
        v.nodes[1].replica = None;
        v.nodes[1].semi_sync_source = true;
        v.nodes[1].semi_sync_replica = false;
        // db2 was the semi-sync replica: the old source takes the flag.
        assert_eq!(
            step(&v, &kv, &e),
            Step::Repoint {
                node: "db1".into(),
                source: addr(2),
                semi_sync: true,
                was_source: true,
            }
        );
        v.nodes[0].replica = v.nodes[2].replica.clone().map(|mut r| {
            r.source = addr(2);
            r
        });
        v.nodes[0].semi_sync_replica = true;
        v.nodes[0].semi_sync_source = false;
        assert!(matches!(
            step(&v, &kv, &e),
            Step::Publish {
                quarantine: None,
                ..
            }
        ));
        v.published = Some(addr(2));
        v.fenced = false;
        assert!(matches!(step(&v, &kv, &e), Step::MakeWritable { .. }));
        v.nodes[1].read_only = false;
        assert!(
            matches!(step(&v, &kv, &e), Step::Repoint { ref node, semi_sync: false, .. } if node == "db3")
        );
        v.nodes[2].replica.as_mut().unwrap().source = addr(2);
        assert!(matches!(
            step(&v, &kv, &e),
            Step::Finish {
                outcome: Outcome::Done,
                ..
            }
        ));
    }

    #[test]
    fn a_failed_catch_up_rolls_back_then_aborts() {
        let mut v = cluster(0);
        v.nodes[0].read_only = true;
        v.fenced = true;
        let plan = plan(&req(Some("db2")), &cluster(0), 10).unwrap();
        let mut e = HistoryEntry::start(ProcedureKind::Switchover, "c1", "db3", 1);
        let kv = KvInputs {
            fence: Some(format!("switchover {}", e.id)),
            ..KvInputs::default()
        };
        record(&mut e, "catch_up", false);
        let (s, _) = next(&input(&v, &kv, "db3"), &e, &plan);
        assert!(
            matches!(s, Some(Step::RollBack { target_touched: false, ref why, .. }) if why.starts_with("catch_up")),
            "{s:?}"
        );
        record(&mut e, "roll_back", true);
        let (s, reason) = next(&input(&v, &kv, "db3"), &e, &plan);
        assert!(
            matches!(
                s,
                Some(Step::Finish {
                    outcome: Outcome::Aborted,
                    ..
                })
            ),
            "{s:?}"
        );
        assert!(reason.contains("rolled back: catch_up: boom"), "{reason}");
    }

    /// A target that cannot get close behind the old source while it
    /// takes writes ends the switch before anything changed: no read-only
    /// window, nothing to roll back.
    #[test]
    fn a_target_that_cannot_converge_ends_the_switch_with_nothing_changed() {
        let v = cluster(0);
        let plan = plan(&req(Some("db2")), &v, 10).unwrap();
        let mut e = HistoryEntry::start(ProcedureKind::Switchover, "c1", "db3", 1);
        let kv = KvInputs::default();
        record(&mut e, "converge", false);
        let (s, reason) = next(&input(&v, &kv, "db3"), &e, &plan);
        assert!(
            matches!(
                s,
                Some(Step::Finish {
                    outcome: Outcome::Aborted,
                    ..
                })
            ),
            "{s:?}"
        );
        assert!(reason.contains("converge: boom"), "{reason}");
        assert!(reason.contains("nothing was changed"), "{reason}");
    }

    #[test]
    fn recovery_finishes_a_published_switch_and_rolls_back_an_unpublished_one() {
        let mut e = HistoryEntry::start(ProcedureKind::Switchover, "c1", "gone", 1);
        e.from = Some("db1".into());
        e.to = Some("db2".into());
        let kv = KvInputs::default();
        // Unpublished: roll back.
        let v = cluster(0);
        let (s, _) = recover(&input(&v, &kv, "db3"), &e);
        assert!(
            matches!(
                s,
                Some(Step::RollBack {
                    target_touched: false,
                    ..
                })
            ),
            "{s:?}"
        );
        // Published: finish.
        let mut v = cluster(0);
        v.published = Some(addr(2));
        v.nodes[1].replica = None;
        v.nodes[1].semi_sync_source = true;
        v.nodes[1].semi_sync_replica = false;
        let (s, _) = recover(&input(&v, &kv, "db3"), &e);
        assert!(matches!(s, Some(Step::MakeWritable { .. })), "{s:?}");
        v.nodes[1].read_only = false;
        let (s, _) = recover(&input(&v, &kv, "db3"), &e);
        assert!(
            matches!(s, Some(Step::Repoint { ref node, .. }) if node == "db1"),
            "{s:?}"
        );
        // Neither: an operator moved the key.
        let mut v = cluster(0);
        v.published = Some(addr(3));
        let (s, _) = recover(&input(&v, &kv, "db3"), &e);
        assert!(
            matches!(
                s,
                Some(Step::Finish {
                    outcome: Outcome::Failed,
                    ..
                })
            ),
            "{s:?}"
        );
    }
}
