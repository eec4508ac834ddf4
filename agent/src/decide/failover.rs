//! Lossless automatic failover, as the next step from what is recorded.
//!
//! DESIGN.md's rules 3–5, in order: fence (with the procedure marked, one
//! txn: [`super::Step::StartFailover`]); stop every replica's IO thread, so
//! an old source that is merely hung can collect no more ACKs and so
//! acknowledge nothing more; choose a candidate that provably holds every
//! acknowledged transaction, or refuse; apply its relay log; promote;
//! repoint the other replicas (the semi-sync one first); publish, unfence
//! and quarantine the old source in one txn; open the new source.
//!
//! [`next`] derives the step from the entry (who failed, who was chosen,
//! which steps failed) and the view (IO threads, positions, flags, the
//! `master` key), so the coordinator that started the failover and one
//! that finds it interrupted run the same code.

use std::collections::{BTreeMap, BTreeSet};

use successover_common::procedure::{HistoryEntry, Outcome, ProcedureKind};

use super::{live_nodes, Input, NodeView, Step};
use crate::mysql::GtidState;

/// One replica after its IO thread was stopped: what it has received and
/// whether it has the semi-sync flag.
#[derive(Clone, Debug)]
pub struct CandidateView {
    pub name: String,
    pub received: GtidState,
    pub semi_sync: bool,
}

impl CandidateView {
    /// A replica as a candidate; `None` for a node that does not replicate.
    pub fn of(n: &NodeView) -> Option<CandidateView> {
        n.replica.as_ref().map(|r| CandidateView {
            name: n.name.clone(),
            received: r.received.clone(),
            semi_sync: n.semi_sync_replica,
        })
    }
}

/// Pure: the candidate that provably holds every acknowledged transaction.
///
/// Under AFTER_SYNC a commit is acknowledged only after a semi-sync replica
/// received it, so every acknowledged commit was received by a possible
/// ACKer: a member of the recorded set (`ackers`, with their floors), or a
/// replica seen with the flag. Every one of them must be read, or the
/// answer is a refusal: an ACKer the coordinator cannot see may hold
/// commits no other replica has. A member vouches only for what was
/// acknowledged after its grant; what came before is its floor, which the
/// candidate must also have received (after a failover the other replica
/// is repointed with the flag while it may still be far behind). Among the
/// replicas that received all of that and everything any other replica
/// did (so none holds a transaction the new source lacks), a semi-sync
/// one is preferred, then by name for a stable choice.
pub fn choose_candidate(
    replicas: &[CandidateView],
    ackers: &BTreeMap<String, Option<GtidState>>,
) -> Result<(String, String), String> {
    let mut members: BTreeMap<&str, Option<&GtidState>> = ackers
        .iter()
        .map(|(n, f)| (n.as_str(), f.as_ref()))
        .collect();
    for r in replicas.iter().filter(|r| r.semi_sync) {
        members.entry(r.name.as_str()).or_insert(None);
    }
    if members.is_empty() {
        return Err(
            "no live semi-sync replica: no replica provably holds every acknowledged transaction"
                .into(),
        );
    }
    let unread: Vec<&str> = members
        .keys()
        .copied()
        .filter(|m| !replicas.iter().any(|r| r.name == *m))
        .collect();
    if !unread.is_empty() {
        return Err(format!(
            "possible ACKer {} (a semi-sync replica) cannot be read: it may hold acknowledged commits no readable replica has",
            unread.join(", ")
        ));
    }
    let covers = |c: &CandidateView| {
        replicas
            .iter()
            .all(|r| c.received.contains(&r.received).unwrap_or(false))
            && members
                .values()
                .flatten()
                .all(|f| c.received.contains(f).unwrap_or(false))
    };
    let mut ok: Vec<&CandidateView> = replicas.iter().filter(|c| covers(c)).collect();
    ok.sort_by_key(|c| (!c.semi_sync, c.name.clone()));
    let names = members.keys().copied().collect::<Vec<_>>().join(", ");
    match ok.first() {
        Some(c) if c.semi_sync => Ok((
            c.name.clone(),
            format!(
                "{} was the semi-sync replica and received everything any replica did ({})",
                c.name, c.received
            ),
        )),
        Some(c) => Ok((
            c.name.clone(),
            format!(
                "{} received everything the possible ACKers ({names}) did and more ({})",
                c.name, c.received
            ),
        )),
        None => {
            let below = members.iter().find_map(|(m, f)| {
                let f = (*f)?;
                let r = replicas.iter().find(|r| r.name == *m)?;
                (!r.received.contains(f).unwrap_or(false)).then_some((m, f, &r.received))
            });
            Err(match below {
                Some((m, f, got)) => format!(
                    "semi-sync replica {m} got the flag at {f} and has received only {got}: commits acknowledged before it may exist only on the failed source"
                ),
                None => format!(
                    "no replica received everything the possible ACKers ({names}) and the other replicas did"
                ),
            })
        }
    }
}

/// The failover plan: the node a failover would promote if the published
/// source died now, and why, or why none would be. The same checks as a
/// failover's, on the positions the replicas show now: a failover decided
/// later reads them again with their IO threads stopped, so the plan is a
/// forecast that can only be too optimistic by what the source commits in
/// between, never a promise.
pub fn plan(input: &Input<'_>) -> Result<(String, String), String> {
    let view = input.view;
    if view.maintenance {
        return Err("maintenance mode: automation suspended".into());
    }
    if let Some(why) = super::detect::failover_forbidden(input) {
        return Err(why);
    }
    let source = view.source().ok_or("no published source")?;
    let from = source.name.as_str();
    if let Some(why) = restarted_acker(input, from) {
        return Err(why);
    }
    let except: BTreeSet<&str> = [from].into();
    let candidates: Vec<CandidateView> = live_nodes(view, &except)
        .filter(|n| {
            n.replica
                .as_ref()
                .is_some_and(|r| r.source.same(&source.addr))
        })
        .filter_map(CandidateView::of)
        .collect();
    let mut ackers = input.kv.ack_floors.clone();
    ackers.remove(from);
    let (to, why) = choose_candidate(&candidates, &ackers)?;
    if !view
        .nodes
        .iter()
        .any(|n| n.name != from && n.name != to && !n.quarantined)
    {
        return Err(format!(
            "{to} is the only other node: a two-node cluster is failed over by an operator"
        ));
    }
    Ok((to, why))
}

/// A step named `name` was tried in this procedure and failed, with no
/// success after it.
fn failed(entry: &HistoryEntry, name: &str) -> bool {
    entry
        .steps
        .iter()
        .rev()
        .find(|s| s.name == name)
        .is_some_and(|s| !s.ok)
}

/// A failover that ends with nothing promoted: the replicas resume
/// receiving (in case the source comes back), and an aborted one lifts its
/// fence; a refused one leaves it for an operator.
fn nothing_promoted(
    outcome: Outcome,
    reason: String,
    replicas: &[&NodeView],
) -> (Option<Step>, String) {
    (
        Some(Step::Finish {
            outcome,
            reason: reason.clone(),
            counted: false,
            restart_io: replicas.iter().map(|n| n.name.clone()).collect(),
            lift_fence: outcome == Outcome::Aborted,
        }),
        reason,
    )
}

/// Ticks between two reopenings of the same refused failover.
pub const REOPEN_EVERY_TICKS: u64 = 10;

/// What a refused failover does this cycle.
#[derive(Debug)]
pub enum Reopen {
    Step(Box<Step>, String),
    /// Still refused: what it waits for.
    Wait(String),
}

/// A refused failover leaves its fence and waits. It is taken up again —
/// at most once every [`REOPEN_EVERY_TICKS`] ticks — when the failed source
/// answers (nothing was promoted: it aborts, the replicas resume, the
/// fence is lifted), or when what was missing for a candidate is back:
/// every possible ACKer answers, each still in the run of its server it
/// was last seen ACKing in (`semi-sync/<cluster>`'s `started`), and the
/// replicas now prove a candidate. A member that restarted proves nothing:
/// its relay log may have lost events it had acknowledged (MariaDB purges
/// it when a GTID replica's threads start), so what it reports received
/// may be less than what it ACKed. That decision stays an operator's.
pub fn reopen(
    input: &Input<'_>,
    entry: &HistoryEntry,
    memory: &mut super::Memory,
) -> Option<Reopen> {
    if entry.kind != ProcedureKind::Failover
        || entry.outcome != Outcome::Refused
        || !input.kv.fence_is(&entry.id)
    {
        return None;
    }
    let from = entry.from.clone().unwrap_or_default();
    let why = if input.view.node(&from).is_some_and(|n| n.reachable) {
        format!(
            "{from} answers again: taking up refused failover {}",
            entry.id
        )
    } else {
        match resumable(input, entry, &from) {
            Ok(why) => format!("{why}: taking up refused failover {}", entry.id),
            Err(wait) => {
                return Some(Reopen::Wait(format!(
                    "failover {} refused; it waits for {from} to answer (it then aborts) or {wait}",
                    entry.id
                )))
            }
        }
    };
    let every = REOPEN_EVERY_TICKS * input.settings.tick_ms;
    if let Some((id, at)) = &memory.reopened {
        if *id == entry.id && input.now_ms.saturating_sub(*at) < every {
            return Some(Reopen::Wait(format!(
                "failover {} refused; taken up again shortly",
                entry.id
            )));
        }
    }
    memory.reopened = Some((entry.id.clone(), input.now_ms));
    // Taken up, it chooses afresh: a candidate chosen before the refusal
    // may be the reason for it.
    let mut entry = entry.clone();
    entry.to = None;
    entry.evidence.remove("candidate_reason");
    entry.evidence.remove("candidate_received_gtid");
    Some(Reopen::Step(
        Box::new(Step::ReopenFailover {
            entry: Box::new(entry),
        }),
        why,
    ))
}

/// The candidate no longer holds what it had received when it was chosen:
/// it restarted in between and its relay log was purged (or a replication
/// reset). Promoted, it would lack commits it was chosen for holding.
fn candidate_lost(entry: &HistoryEntry, t: &NodeView) -> Option<String> {
    let r = t.replica.as_ref()?;
    let had = entry
        .evidence
        .get("candidate_received_gtid")
        .and_then(|v| v.as_str())
        .and_then(|s| GtidState::parse_any(s).ok())?;
    let holds = match &t.gtid_executed {
        Some(e) => r.received.union(e).unwrap_or_else(|_| r.received.clone()),
        None => r.received.clone(),
    };
    (!holds.contains(&had).unwrap_or(false)).then(|| {
        format!(
            "candidate {} holds {holds}, less than the {had} it had received when it was chosen (a restart purges a GTID replica's relay log): promoted, it would lack acknowledged commits",
            t.name
        )
    })
}

/// A readable possible ACKer whose server is not in the run it was last
/// seen ACKing in (`semi-sync/<cluster>`'s `started`), or was never seen
/// replicating: it may have restarted after acknowledging events it had
/// not applied, and a restarted GTID replica's relay log is purged, so
/// what it reports received may be less than what it acknowledged.
fn restarted_acker(input: &Input<'_>, from: &str) -> Option<String> {
    input
        .kv
        .ack_floors
        .keys()
        .filter(|m| *m != from)
        .filter_map(|m| input.view.node(m).filter(|n| n.reachable))
        .find_map(|n| {
            let m = &n.name;
            match (input.kv.acker_started.get(m), n.started_s) {
                (Some(was), Some(now)) if super::invariants::same_start(*was, now) => None,
                (Some(was), Some(now)) => Some(format!(
                    "possible ACKer {m} restarted since it was last seen ACKing (its server started at {now}, not {was}): events it acknowledged may be gone from its relay log"
                )),
                (None, _) => Some(format!(
                    "possible ACKer {m} was never seen replicating since its server started: a restart that lost events it acknowledged cannot be ruled out"
                )),
                (Some(_), None) => Some(format!(
                    "possible ACKer {m} does not say when its server started"
                )),
            }
        })
}

/// With the failed source still silent: why the refused failover can now
/// prove a candidate, or what it still lacks.
fn resumable(input: &Input<'_>, entry: &HistoryEntry, from: &str) -> Result<String, String> {
    let view = input.view;
    let unacked = entry
        .evidence
        .get(super::detect::UNACKED_COMMITS)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    if unacked > 0 {
        return Err(format!(
            "an operator: {from} may have acknowledged commits without an ACK"
        ));
    }
    let members: Vec<&String> = input.kv.ack_floors.keys().filter(|m| *m != from).collect();
    if members.is_empty() {
        return Err("an operator: no replica may hold every acknowledged commit".into());
    }
    if let Some(m) = members
        .iter()
        .find(|m| !view.node(m).is_some_and(|n| n.reachable))
    {
        return Err(format!(
            "possible ACKer {m} to answer without having restarted (the failover then resumes)"
        ));
    }
    if let Some(why) = restarted_acker(input, from) {
        return Err(format!("an operator: {why}"));
    }
    let except: BTreeSet<&str> = [from].into();
    let candidates: Vec<CandidateView> = live_nodes(view, &except)
        .filter_map(CandidateView::of)
        .collect();
    let mut ackers = input.kv.ack_floors.clone();
    ackers.remove(from);
    match choose_candidate(&candidates, &ackers) {
        Ok((to, _)) => Ok(format!(
            "possible ACKer{} {} answer{} without having restarted and {to} holds what they received",
            if members.len() > 1 { "s" } else { "" },
            members.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", "),
            if members.len() > 1 { "" } else { "s" },
        )),
        Err(why) => Err(format!("a candidate: {why}")),
    }
}

/// The next step of failover `entry`, or `None` with the reason to wait.
pub fn next(input: &Input<'_>, entry: &HistoryEntry) -> (Option<Step>, String) {
    let view = input.view;
    let from = entry.from.clone().unwrap_or_default();
    let from_node = view.node(&from);
    let from_addr = from_node.map(|n| n.addr.clone());
    let except: BTreeSet<&str> = [from.as_str()].into();
    let replicas: Vec<&NodeView> = live_nodes(view, &except).collect();

    let Some(to) = entry.to.clone() else {
        if from_node.is_some_and(|n| n.reachable) {
            // A false alarm caught in time: nothing was promoted.
            return nothing_promoted(
                Outcome::Aborted,
                format!("{from} answers again and nothing was promoted"),
                &replicas,
            );
        }
        let receiving: Vec<String> = replicas
            .iter()
            .filter(|n| n.replica.as_ref().is_some_and(|r| !r.io_stopped))
            .map(|n| n.name.clone())
            .collect();
        if !receiving.is_empty() {
            return (
                Some(Step::StopIoThreads {
                    nodes: receiving,
                    old_source: from_addr,
                }),
                "stopping the replicas' IO threads".into(),
            );
        }
        let candidates: Vec<CandidateView> = replicas
            .iter()
            .filter_map(|n| CandidateView::of(n))
            .collect();
        let unacked = entry
            .evidence
            .get(super::detect::UNACKED_COMMITS)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        if unacked > 0 {
            return nothing_promoted(
                Outcome::Refused,
                format!(
                    "{from} may have acknowledged commits without a semi-sync ACK (it switched semi-sync off, or committed without waiting while rule 1's settings had drifted): no replica provably holds them; bring {from} back or fail over by hand"
                ),
                &replicas,
            );
        }
        if let Some(why) = restarted_acker(input, &from) {
            return nothing_promoted(Outcome::Refused, why, &replicas);
        }
        // The failed source acknowledged nothing as a replica of itself.
        let mut ackers = input.kv.ack_floors.clone();
        ackers.remove(&from);
        return match choose_candidate(&candidates, &ackers) {
            Ok((to, _))
                if !view
                    .nodes
                    .iter()
                    .any(|n| n.name != from && n.name != to && !n.quarantined) =>
            {
                // Promoted, it would have no replica to acknowledge its
                // commits, and the old source is never reused: every
                // commit would wait for an ACK that cannot come.
                nothing_promoted(
                    Outcome::Refused,
                    format!(
                        "{to} is the only other node: promoted it would have no replica to acknowledge its commits; a two-node cluster is failed over by an operator"
                    ),
                    &replicas,
                )
            }
            Ok((to, why)) => {
                let mut evidence = serde_json::Map::new();
                evidence.insert("candidate_reason".into(), why.clone().into());
                if let Some(c) = candidates.iter().find(|c| c.name == to) {
                    evidence.insert(
                        "candidate_received_gtid".into(),
                        c.received.to_string().into(),
                    );
                }
                evidence.insert(
                    "replicas_received".into(),
                    serde_json::Value::Object(
                        candidates
                            .iter()
                            .map(|c| (c.name.clone(), c.received.to_string().into()))
                            .collect(),
                    ),
                );
                (
                    Some(Step::RecordCandidate {
                        to: to.clone(),
                        evidence,
                    }),
                    format!("candidate {to}: {why}"),
                )
            }
            Err(reason) => nothing_promoted(Outcome::Refused, reason, &replicas),
        };
    };

    let to_node = view.node(&to);
    let Some(to_addr) = to_node.map(|n| n.addr.clone()) else {
        return (
            None,
            format!("failover: candidate {to} is not a known node"),
        );
    };
    let why = entry
        .evidence
        .get("candidate_reason")
        .and_then(|v| v.as_str())
        .unwrap_or("chosen by the previous coordinator")
        .to_owned();
    let published_to = view.published.as_ref().is_some_and(|p| p.same(&to_addr));
    let Some(t) = to_node.filter(|n| n.reachable) else {
        return (
            None,
            format!("failover: waiting for candidate {to} to answer"),
        );
    };

    if !published_to {
        if let Some(lost) = candidate_lost(entry, t) {
            return nothing_promoted(Outcome::Refused, lost, &replicas);
        }
        // Rule 4: everything received is applied before anything else.
        if let Some(r) = &t.replica {
            let applied = t
                .gtid_executed
                .as_ref()
                .is_some_and(|e| e.contains(&r.received).unwrap_or(false));
            if !applied {
                return (
                    Some(Step::ApplyRelayLog {
                        node: to.clone(),
                        target: r.received.clone(),
                    }),
                    format!("{to} applies its relay log"),
                );
            }
        }
        if t.replica.is_some() || !t.semi_sync_source || t.semi_sync_replica {
            return (
                Some(Step::Promote { node: to.clone() }),
                format!("promoting {to}"),
            );
        }
        // The other replicas follow the new source; the first gets the
        // semi-sync flag before the new source opens, so its first commits
        // find an ACK.
        let others: Vec<&&NodeView> = replicas.iter().filter(|n| n.name != to).collect();
        for (i, n) in others.iter().enumerate() {
            let semi = i == 0;
            let step = Step::Repoint {
                node: n.name.clone(),
                source: to_addr.clone(),
                semi_sync: semi,
                was_source: false,
            };
            let done = n.replicates_from(&to_addr) && (!semi || n.semi_sync_replica);
            // The semi-sync replica is tried until it follows: without it
            // the new source's commits have no ACK. Another that fails is
            // left to the invariants.
            if !done && (semi || !failed(entry, &step.name())) {
                return (Some(step), format!("repointing {} to {to}", n.name));
            }
        }
        let acker = others
            .first()
            .filter(|n| n.replicates_from(&to_addr) && n.semi_sync_replica)
            .and_then(|n| Some((n.name.clone(), t.gtid_executed.clone()?)));
        return (
            Some(Step::Publish {
                node: to.clone(),
                addr: to_addr,
                quarantine: Some((from.clone(), from_addr)),
                acker,
            }),
            format!("publishing {to}"),
        );
    }

    if let Some((step, reason)) = super::open_published(t, "writable") {
        return (Some(step), reason);
    }
    if view.fenced && input.kv.fence_is(&entry.id) {
        return (Some(Step::LiftFence), "lifting the failover's fence".into());
    }
    let reason = if entry.coordinator == input.coordinator {
        format!("{to} is the source; {from} is quarantined ({why})")
    } else {
        format!(
            "{to} is the source; finished by {} after the coordinator changed",
            input.coordinator
        )
    };
    (
        Some(Step::Finish {
            outcome: Outcome::Done,
            reason: reason.clone(),
            counted: true,
            restart_io: Vec::new(),
            lift_fence: false,
        }),
        reason,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::fixtures::{self, healthy, pos};
    use crate::decide::{ClusterView, Intent, KvInputs};
    use successover_common::procedure::{ProcedureKind, Step as Recorded};

    fn cand(name: &str, received: &str, semi: bool) -> CandidateView {
        CandidateView {
            name: name.into(),
            received: pos(received),
            semi_sync: semi,
        }
    }

    /// The plan names who a failover would promote now, or why nobody.
    #[test]
    fn the_plan_follows_the_checks_of_a_failover() {
        let mut v = healthy();
        v.nodes[1].started_s = Some(100);
        let mut kv = KvInputs {
            auto_failover: true,
            observe_failover: false,
            ..KvInputs::default()
        };
        kv.ack_floors.insert("db2".into(), Some(pos("0-1-5")));
        kv.acker_started.insert("db2".into(), 100);
        let plan_of = |v: &ClusterView, kv: &KvInputs| plan(&fixtures::input(v, kv, "db3", 0));
        assert_eq!(plan_of(&v, &kv).map(|(to, _)| to), Ok("db2".to_owned()));
        // The ACKer out of sight: it may hold what no one else does.
        let mut gone = v.clone();
        gone.nodes[1].reachable = false;
        assert!(plan_of(&gone, &kv).unwrap_err().contains("db2"));
        // Restarted since it was seen ACKing.
        let mut restarted = v.clone();
        restarted.nodes[1].started_s = Some(5_000);
        assert!(plan_of(&restarted, &kv).unwrap_err().contains("restarted"));
        // No failover at all.
        let mut off = kv.clone();
        off.auto_failover = false;
        assert!(plan_of(&v, &off)
            .unwrap_err()
            .contains("auto_failover is off"));
        let mut maint = v.clone();
        maint.maintenance = true;
        assert!(plan_of(&maint, &kv).unwrap_err().contains("maintenance"));
        // Two nodes left: an operator's call.
        let mut two = v.clone();
        two.nodes.truncate(2);
        assert!(plan_of(&two, &kv).unwrap_err().contains("two-node"));
    }

    #[test]
    fn the_semi_sync_replica_is_chosen() {
        let (to, _) = choose_candidate(
            &[cand("db2", "0-1-10", true), cand("db3", "0-1-9", false)],
            &none(),
        )
        .unwrap();
        assert_eq!(to, "db2");
    }

    #[test]
    fn a_replica_that_received_more_than_the_semi_sync_one_is_preferred() {
        let (to, why) = choose_candidate(
            &[cand("db2", "0-1-10", true), cand("db3", "0-1-12", false)],
            &none(),
        )
        .unwrap();
        assert_eq!(to, "db3", "{why}");
    }

    /// Found by the simulator (seeds 297, 511, 644, 3490 before the fix):
    /// after a failover the other replica was repointed with the flag while
    /// far behind, the new source died, and the laggard was promoted
    /// without the commits the new source had acknowledged as a replica.
    #[test]
    fn a_semi_sync_replica_below_its_floor_proves_nothing() {
        let mut db3 = cand("db3", "0-1-84", true);
        let floors = BTreeMap::from([("db3".to_owned(), Some(pos("0-2-123")))]);
        let err = choose_candidate(&[db3.clone()], &floors).unwrap_err();
        assert!(err.contains("got the flag at 0-2-123"), "{err}");
        db3.received = pos("0-2-130");
        assert_eq!(choose_candidate(&[db3], &floors).unwrap().0, "db3");
    }

    /// Found by the simulator with a replica cut off from the coordinator
    /// only (seed 100 before the fix): the flag moved away from a replica
    /// that went on ACKing; the replica that had the flag when the source
    /// died lacked what the other had acknowledged.
    #[test]
    fn every_possible_acker_must_be_read() {
        let ackers = BTreeMap::from([
            ("db2".to_owned(), None),
            ("db3".to_owned(), Some(pos("0-1-5"))),
        ]);
        let err = choose_candidate(&[cand("db2", "0-1-27", true)], &ackers).unwrap_err();
        assert!(
            err.contains("possible ACKer db3 (a semi-sync replica) cannot be read"),
            "{err}"
        );
        let (to, _) = choose_candidate(
            &[cand("db2", "0-1-27", true), cand("db3", "0-1-90", false)],
            &ackers,
        )
        .unwrap();
        assert_eq!(to, "db3", "the one holding what either acknowledged");
    }

    #[test]
    fn no_live_semi_sync_replica_is_a_refusal() {
        let err = choose_candidate(&[cand("db3", "0-1-12", false)], &none()).unwrap_err();
        assert!(err.contains("no live semi-sync replica"));
    }

    /// `semi_sync_replicas = 2`: every flagged replica is read, and the one
    /// that received what both did is promoted.
    #[test]
    fn two_semi_sync_replicas_both_read() {
        let (to, _) = choose_candidate(
            &[cand("db2", "0-1-12", true), cand("db3", "0-1-14", true)],
            &none(),
        )
        .unwrap();
        assert_eq!(to, "db3");
    }

    fn none() -> BTreeMap<String, Option<GtidState>> {
        BTreeMap::new()
    }

    fn entry(to: Option<&str>, coordinator: &str) -> HistoryEntry {
        let mut e = HistoryEntry::start(ProcedureKind::Failover, "c1", coordinator, 1);
        e.from = Some("db1".into());
        e.to = to.map(str::to_owned);
        e
    }

    /// db1 dead; db2 (semi-sync) and db3 replicas of it.
    fn dead_source() -> ClusterView {
        let mut v = healthy();
        v.nodes[0].reachable = false;
        v.fenced = true;
        v.procedure_running = true;
        v
    }

    fn next_of(v: &ClusterView, e: &HistoryEntry) -> (Option<Step>, String) {
        let kv = KvInputs {
            fence: Some(format!("failover {}", e.id)),
            ..KvInputs::default()
        };
        let input = fixtures::input(v, &kv, "db3", 0);
        next(&input, e)
    }

    fn stop_io(v: &mut ClusterView) {
        for n in v.nodes.iter_mut().skip(1) {
            let r = n.replica.as_mut().unwrap();
            r.io_running = false;
            r.io_stopped = true;
        }
    }

    /// Each step, then the view as the executor leaves it, in order.
    #[test]
    fn the_steps_of_a_failover_in_order() {
        let mut v = dead_source();
        let mut e = entry(None, "db3");
        let (s, _) = next_of(&v, &e);
        assert!(matches!(s, Some(Step::StopIoThreads { ref nodes, .. }) if nodes.len() == 2));
        stop_io(&mut v);
        v.nodes[1].replica.as_mut().unwrap().received = pos("0-1-12");
        let (s, _) = next_of(&v, &e);
        let Some(Step::RecordCandidate { to, .. }) = s else {
            panic!("{s:?}")
        };
        assert_eq!(to, "db2");
        e.to = Some(to);
        let (s, _) = next_of(&v, &e);
        assert_eq!(
            s,
            Some(Step::ApplyRelayLog {
                node: "db2".into(),
                target: pos("0-1-12")
            })
        );
        v.nodes[1].gtid_executed = Some(pos("0-1-12"));
        let (s, _) = next_of(&v, &e);
        assert!(matches!(s, Some(Step::Promote { .. })), "{s:?}");
        v.nodes[1].replica = None;
        v.nodes[1].semi_sync_source = true;
        v.nodes[1].semi_sync_replica = false;
        let (s, _) = next_of(&v, &e);
        let Some(Step::Repoint {
            node,
            semi_sync: true,
            source,
            ..
        }) = s
        else {
            panic!("{s:?}")
        };
        assert_eq!((node.as_str(), source.port), ("db3", 3302));
        v.nodes[2].replica.as_mut().unwrap().source = source.clone();
        v.nodes[2].semi_sync_replica = true;
        let (s, _) = next_of(&v, &e);
        assert!(
            matches!(s, Some(Step::Publish { ref quarantine, .. }) if quarantine.as_ref().unwrap().0 == "db1")
        );
        v.published = Some(source);
        let (s, _) = next_of(&v, &e);
        assert_eq!(
            s,
            Some(Step::MakeWritable {
                node: "db2".into(),
                label: "writable"
            })
        );
        v.nodes[1].read_only = false;
        let (s, _) = next_of(&v, &e);
        assert_eq!(s, Some(Step::LiftFence));
        v.fenced = false;
        let (s, reason) = next_of(&v, &e);
        assert!(
            matches!(
                s,
                Some(Step::Finish {
                    outcome: Outcome::Done,
                    counted: true,
                    ..
                })
            ),
            "{s:?}"
        );
        assert!(reason.contains("db1 is quarantined"), "{reason}");
    }

    /// The failover that starts after `looks` (the source's counters at
    /// each look), once the source died.
    fn failover_after(looks: &[(u64, u64, bool)]) -> HistoryEntry {
        use crate::decide::detect::watch;
        let kv = KvInputs {
            auto_failover: true,
            observe_failover: false,
            ..KvInputs::default()
        };
        let mut m = crate::decide::Memory::default();
        let mut v = healthy();
        for (i, (no_times, no_tx, drift)) in looks.iter().enumerate() {
            v.nodes[0].semi.no_times = *no_times;
            v.nodes[0].semi.no_tx = *no_tx;
            v.nodes[0].semi.settings_drift = *drift;
            let d = watch(&fixtures::input(&v, &kv, "db3", i as u64 * 500), &mut m);
            assert!(d.is_none(), "{d:?}");
        }
        v.nodes[0].reachable = false;
        for n in v.nodes.iter_mut().skip(1) {
            n.replica.as_mut().unwrap().io_running = false;
        }
        for now in (10_000..30_000).step_by(500) {
            if let Some(d) = watch(&fixtures::input(&v, &kv, "db3", now), &mut m) {
                if let Intent::Step(Step::StartFailover { entry }) = d.intent {
                    return *entry;
                }
            }
        }
        panic!("no failover started")
    }

    /// Rule 1 broken for a moment (a short timeout switched the source to
    /// asynchronous): what it acknowledged then may be on no replica. The
    /// coordinator saw the switch-off, records it when the source dies,
    /// and the failover refuses instead of promoting the best replica.
    #[test]
    fn a_source_that_acknowledged_without_an_ack_is_not_failed_over() {
        use crate::decide::detect::UNACKED_COMMITS;
        let refused = |e: &HistoryEntry| {
            let mut v = dead_source();
            stop_io(&mut v);
            let (s, reason) = next_of(&v, e);
            match s {
                Some(Step::Finish {
                    outcome: Outcome::Refused,
                    ..
                }) => {
                    assert!(reason.contains("without a semi-sync ACK"), "{reason}");
                    true
                }
                Some(Step::RecordCandidate { .. }) => false,
                other => panic!("{other:?}: {reason}"),
            }
        };
        // Switched off (a timeout): refused.
        let e = failover_after(&[(0, 0, false), (1, 1, false)]);
        assert_eq!(e.evidence[UNACKED_COMMITS], 1, "{:?}", e.evidence);
        assert!(refused(&e));
        // A commit that did not wait while the settings had drifted
        // (waiting without a replica off): refused.
        let e = failover_after(&[(0, 0, true), (0, 1, true)]);
        assert!(refused(&e));
        // Commits killed while they waited (MariaDB counts them in no_tx;
        // their clients got no OK): promoted.
        let e = failover_after(&[(0, 0, false), (0, 3, false)]);
        assert_eq!(e.evidence[UNACKED_COMMITS], 0, "{:?}", e.evidence);
        assert!(!refused(&e));
        // A restart resets the counters: no rise.
        let e = failover_after(&[(2, 5, false), (0, 0, false)]);
        assert!(!refused(&e));
    }

    /// A replica that cannot be repointed is left to the invariants — but
    /// not the one that gets the semi-sync flag: without it the new
    /// source's commits have no ACK (seen when Consul lost its leader
    /// during the failover and the floor could not be recorded).
    #[test]
    fn a_failed_repoint_is_retried_only_for_the_semi_sync_replica() {
        let mut v = dead_source();
        stop_io(&mut v);
        v.nodes
            .push(crate::decide::fixtures::replica("db4", 3304, 3301, false));
        let mut e = entry(Some("db2"), "db3");
        v.nodes[1].replica = None;
        v.nodes[1].semi_sync_source = true;
        v.nodes[1].semi_sync_replica = false;
        for name in ["repoint_db3_semi_sync", "repoint_db4"] {
            e.steps.push(Recorded {
                name: name.into(),
                started_ms: 0,
                duration_ms: 1,
                ok: false,
                detail: "boom".into(),
            });
        }
        let (s, _) = next_of(&v, &e);
        assert!(
            matches!(s, Some(Step::Repoint { ref node, semi_sync: true, .. }) if node == "db3"),
            "{s:?}"
        );
        v.nodes[2].replica.as_mut().unwrap().source = v.nodes[1].addr.clone();
        v.nodes[2].semi_sync_replica = true;
        let (s, _) = next_of(&v, &e);
        assert!(
            matches!(s, Some(Step::Publish { .. })),
            "db4 is skipped: {s:?}"
        );
    }

    #[test]
    fn the_source_answering_before_a_candidate_is_chosen_aborts() {
        let mut v = dead_source();
        v.nodes[0].reachable = true;
        let (s, reason) = next_of(&v, &entry(None, "db2"));
        assert!(
            matches!(s, Some(Step::Finish { outcome: Outcome::Aborted, lift_fence: true, ref restart_io, .. }) if restart_io.len() == 2),
            "{s:?}"
        );
        assert!(reason.contains("answers again"));
        // Once a candidate is named, the failover goes on.
        let (s, _) = next_of(&v, &entry(Some("db2"), "db2"));
        assert!(
            matches!(s, Some(Step::ApplyRelayLog { .. } | Step::Promote { .. })),
            "{s:?}"
        );
    }

    /// A refused failover left the cluster fenced until an operator
    /// acted, even once the failed source was back with every
    /// acknowledged commit.
    #[test]
    fn a_refused_failover_is_taken_up_when_the_source_answers() {
        let mut v = dead_source();
        let mut e = entry(None, "db3");
        e.outcome = Outcome::Refused;
        let kv = KvInputs {
            fence: Some(format!("failover {}", e.id)),
            fence_entry: Some(e.clone()),
            ..KvInputs::default()
        };
        let mut m = crate::decide::Memory::default();
        // A candidate alone proves nothing when nobody recorded who may
        // have ACKed: it waits, and says for what.
        let input = fixtures::input(&v, &kv, "db3", 0);
        assert!(
            matches!(reopen(&input, &e, &mut m), Some(Reopen::Wait(ref w)) if w.contains("db1 to answer")),
            "{:?}",
            reopen(&input, &e, &mut m)
        );
        v.nodes[0].reachable = true;
        let input = fixtures::input(&v, &kv, "db3", 0);
        let Some(Reopen::Step(s, reason)) = reopen(&input, &e, &mut m) else {
            panic!("not taken up")
        };
        assert!(matches!(*s, Step::ReopenFailover { .. }), "{reason}");
        // Not again at once.
        let input = fixtures::input(&v, &kv, "db3", 1000);
        assert!(matches!(reopen(&input, &e, &mut m), Some(Reopen::Wait(_))));
        // Taken up, the failover aborts and lifts its fence.
        e.outcome = Outcome::Running;
        let (s, _) = next_of(&v, &e);
        assert!(
            matches!(
                s,
                Some(Step::Finish {
                    outcome: Outcome::Aborted,
                    lift_fence: true,
                    ..
                })
            ),
            "{s:?}"
        );
    }

    /// The refusal for a possible ACKer out of sight ends when it answers
    /// again, as long as its server still runs as when it was last seen
    /// ACKing; a restarted one may have lost acknowledged events from its
    /// relay log, and the refusal stays, saying so.
    #[test]
    fn a_refused_failover_resumes_when_its_possible_acker_returns_unrestarted() {
        let mut v = dead_source();
        v.procedure_running = false;
        let db2 = v.nodes.iter_mut().find(|n| n.name == "db2").unwrap();
        db2.reachable = false;
        db2.replica.as_mut().unwrap().received = pos("0-1-12");
        db2.started_s = Some(1_764_000_000);
        let mut e = entry(None, "db3");
        e.outcome = Outcome::Refused;
        let kv = KvInputs {
            fence: Some(format!("failover {}", e.id)),
            fence_entry: Some(e.clone()),
            ack_floors: BTreeMap::from([("db2".to_owned(), Some(pos("0-1-5")))]),
            acker_started: BTreeMap::from([("db2".to_owned(), 1_764_000_000)]),
            ..KvInputs::default()
        };
        let wait = |v: &ClusterView, kv: &KvInputs| {
            let mut m = crate::decide::Memory::default();
            match reopen(&fixtures::input(v, kv, "db3", 0), &e, &mut m) {
                Some(Reopen::Wait(w)) => w,
                other => panic!("{other:?}"),
            }
        };
        let w = wait(&v, &kv);
        assert!(w.contains("possible ACKer db2 to answer"), "{w}");

        v.nodes[1].reachable = true;
        let mut m = crate::decide::Memory::default();
        let Some(Reopen::Step(s, why)) = reopen(&fixtures::input(&v, &kv, "db3", 0), &e, &mut m)
        else {
            panic!("not resumed")
        };
        assert!(matches!(*s, Step::ReopenFailover { .. }));
        assert!(
            why.contains("db2 answers without having restarted"),
            "{why}"
        );
        // Taken up, it stops the IO threads and chooses db2, which received
        // more than db3.
        let mut running = e.clone();
        running.outcome = Outcome::Running;
        let (s, _) = next_of(&v, &running);
        assert!(matches!(s, Some(Step::StopIoThreads { .. })), "{s:?}");
        stop_io(&mut v);
        let kv_running = KvInputs {
            fence: kv.fence.clone(),
            ack_floors: kv.ack_floors.clone(),
            acker_started: kv.acker_started.clone(),
            ..KvInputs::default()
        };
        let (s, reason) = next(&fixtures::input(&v, &kv_running, "db3", 0), &running);
        assert!(
            matches!(s, Some(Step::RecordCandidate { ref to, .. }) if to == "db2"),
            "{s:?} {reason}"
        );

        // Restarted: its relay log may have lost what it ACKed.
        v.nodes[1].started_s = Some(1_764_000_900);
        let w = wait(&v, &kv);
        assert!(w.contains("db2 restarted"), "{w}");
        // Never seen replicating: nothing rules a restart out.
        let mut unrecorded = kv.clone();
        unrecorded.acker_started.clear();
        let w = wait(&v, &unrecorded);
        assert!(w.contains("never seen replicating"), "{w}");
        // A source that acknowledged without an ACK only an operator ends.
        v.nodes[1].started_s = Some(1_764_000_000);
        let mut unacked = e.clone();
        unacked
            .evidence
            .insert(super::super::detect::UNACKED_COMMITS.into(), 3.into());
        let mut m = crate::decide::Memory::default();
        assert!(matches!(
            reopen(&fixtures::input(&v, &kv, "db3", 0), &unacked, &mut m),
            Some(Reopen::Wait(w)) if w.contains("without an ACK")
        ));
    }

    /// A pair: promoting the survivor would leave its commits waiting for
    /// an ACK forever (the old source is never reused).
    #[test]
    fn a_two_node_cluster_refuses() {
        let mut v = dead_source();
        v.nodes.truncate(2);
        stop_io(&mut v);
        let (s, reason) = next_of(&v, &entry(None, "db2"));
        assert!(
            matches!(
                s,
                Some(Step::Finish {
                    outcome: Outcome::Refused,
                    ..
                })
            ),
            "{s:?}"
        );
        assert!(reason.contains("two-node cluster"), "{reason}");
    }

    #[test]
    fn no_provable_candidate_refuses() {
        let mut v = dead_source();
        stop_io(&mut v);
        v.nodes[1].semi_sync_replica = false;
        let (s, reason) = next_of(&v, &entry(None, "db3"));
        assert!(
            matches!(
                s,
                Some(Step::Finish {
                    outcome: Outcome::Refused,
                    ..
                })
            ),
            "{s:?}"
        );
        assert!(reason.contains("semi-sync"), "{reason}");
    }

    #[test]
    fn a_new_coordinator_finishes_a_published_failover() {
        let mut v = dead_source();
        v.nodes[1].replica = None;
        v.published = Some(v.nodes[1].addr.clone());
        v.fenced = false;
        // Restarted after the publish: the flag is off at boot. Found by
        // the simulator (seed 8194): opened like that it acknowledged
        // commits no replica held.
        let (s, _) = next_of(&v, &entry(Some("db2"), "db9"));
        assert_eq!(
            s,
            Some(Step::PrepareTarget {
                node: "db2".into(),
                pair: true
            })
        );
        v.nodes[1].semi_sync_source = true;
        v.nodes[1].semi_sync_replica = false;
        let (s, _) = next_of(&v, &entry(Some("db2"), "db9"));
        assert_eq!(
            s,
            Some(Step::MakeWritable {
                node: "db2".into(),
                label: "writable"
            })
        );
        v.nodes[1].read_only = false;
        let (_, reason) = next_of(&v, &entry(Some("db2"), "db9"));
        assert!(reason.contains("finished by db3"), "{reason}");
    }
}
