//! A commit stalled on an ACK that cannot come, as a named case.
//!
//! The semi-sync replica died with a commit pending, and the replica that
//! took over its flag had already received that commit asynchronously, so
//! it reconnects past it and never acknowledges it; with AFTER_SYNC the
//! commits behind it cannot reach the binlog either, so no later ACK
//! comes. Waiting sessions alone are no sign of that: on a busy healthy
//! source some session nearly always waits for its ACK. A stall is the
//! binlog position, `yes_tx` and `no_tx` all standing still for
//! [`STALLED_CYCLES`] looks while sessions wait. Then, and only with a
//! single possible ACKer, the executor checks that this replica holds the
//! source's whole binlog (its received position, read after the source's,
//! which is read again to be sure it did not move) and releases the
//! waiting sessions by killing their connections: their clients get an
//! error, never an OK, and the source flag stays on.

use std::collections::BTreeMap;

use super::{ClusterView, Intent, Memory};
use crate::mysql::GtidState;

/// Looks at a standing-still source before a release is considered.
pub const STALLED_CYCLES: u32 = 3;

/// Looks before the replicas' connections are ended behind a client the
/// coordinator cannot see: two, one interval apart. Ending them costs a
/// live replica only a reconnect, and every look waits out the hidden
/// replica's read timeout, so each is already slow.
pub const UNSEEN_STALLED_CYCLES: u32 = 2;

/// How long the probe has seen commits wait on the source with no ACK.
/// With a client out of sight this stands for the second look: the probe
/// looked several times across it, with the same counters as the cycle's.
pub const UNSEEN_STALL_MS: u64 = 500;

/// The coordinator's probe saw the source's commits waiting while its ACK
/// counters stood still, for `for_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeStall {
    pub yes_tx: u64,
    pub no_tx: u64,
    pub for_ms: u64,
}

/// `None`: no stall. `Some(Ok)`: release, and why. `Some(Err)`: stalled but
/// nothing can be released safely, and why.
pub fn check(
    view: &ClusterView,
    ackers: &BTreeMap<String, Option<GtidState>>,
    probe: Option<ProbeStall>,
    memory: &mut Memory,
) -> Option<Result<(Intent, String), String>> {
    let Some(source) = view.source().filter(|n| n.reachable) else {
        memory.stalled_cycles = 0;
        memory.stall_sample = None;
        return None;
    };
    let waiting = source.semi.wait_sessions;
    let sample = (
        source.name.clone(),
        source
            .gtid_executed
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        source.semi.yes_tx,
        source.semi.no_tx,
    );
    let still = memory.stall_sample.as_ref() == Some(&sample);
    memory.stall_sample = Some(sample);
    if waiting == 0 {
        memory.stalled_cycles = 0;
        return None;
    }
    memory.stalled_cycles = if still { memory.stalled_cycles + 1 } else { 1 };
    let unseen = super::invariants::unseen_semi_clients(view, source);
    let probed = probe.is_some_and(|p| {
        p.for_ms >= UNSEEN_STALL_MS
            && p.yes_tx == source.semi.yes_tx
            && p.no_tx == source.semi.no_tx
    });
    let needed = match (unseen > 0, probed) {
        (true, true) => 1,
        (true, false) => UNSEEN_STALLED_CYCLES,
        (false, _) => STALLED_CYCLES,
    };
    if memory.stalled_cycles < needed {
        return None;
    }
    // A client the source counts and the coordinator cannot see holds
    // the ACK slot (no flag is granted while it is there): when commits
    // stand still, it is a hung replica, and ending its connection is what
    // frees the slot. One that is alive connects again and goes on ACKing.
    if unseen > 0 {
        memory.stalled_cycles = 0;
        return Some(Ok((
            Intent::Enforce(vec![super::Action::CutReplicaConnections {
                node: source.name.clone(),
            }]),
            format!(
                "{waiting} commit(s) on {} stalled while it counts {unseen} semi-sync client(s) the coordinator cannot see; ending its replicas' connections",
                source.name
            ),
        )));
    }
    let mut possible: Vec<&str> = ackers
        .keys()
        .map(String::as_str)
        .filter(|n| *n != source.name)
        .collect();
    for n in view
        .nodes
        .iter()
        .filter(|n| n.reachable && (n.semi_sync_replica || n.semi_sync_replica_active))
    {
        if !possible.contains(&n.name.as_str()) {
            possible.push(&n.name);
        }
    }
    let acker = match possible.as_slice() {
        [one] => view.node(one).filter(|n| {
            n.reachable
                && n.semi_sync_replica_active
                && n.replica
                    .as_ref()
                    .is_some_and(|r| r.source.same(&source.addr) && r.io_running)
        }),
        _ => None,
    };
    let Some(acker) = acker else {
        return Some(Err(format!(
            "{waiting} commit(s) on {} wait for an ACK and no single ACKing replica can be checked (possible ACKers: {})",
            source.name,
            if possible.is_empty() { "none".to_owned() } else { possible.join(", ") }
        )));
    };
    memory.stalled_cycles = 0;
    Some(Ok((
        Intent::ReleaseStalled {
            source: source.name.clone(),
            acker: acker.name.clone(),
            waiting,
        },
        format!(
            "{waiting} commit(s) on {} stalled on an ACK; checking whether {} holds them",
            source.name, acker.name
        ),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::fixtures::{healthy, pos};

    fn set(names: &[&str]) -> BTreeMap<String, Option<GtidState>> {
        names.iter().map(|n| ((*n).to_owned(), None)).collect()
    }

    #[test]
    fn a_standing_still_source_with_waiting_sessions_is_released_after_three_looks() {
        let mut v = healthy();
        v.nodes[0].semi.wait_sessions = 2;
        let mut m = Memory::default();
        let ackers = set(&["db2"]);
        for _ in 1..STALLED_CYCLES {
            assert!(check(&v, &ackers, None, &mut m).is_none());
        }
        let Some(Ok((Intent::ReleaseStalled { acker, waiting, .. }, _))) =
            check(&v, &ackers, None, &mut m)
        else {
            panic!()
        };
        assert_eq!((acker.as_str(), waiting), ("db2", 2));
    }

    /// Seen with eight writers on a healthy source (≈ 2,100 commits/s):
    /// sessions always wait for their ACK, and the release fired on a
    /// source that was not stalled.
    #[test]
    fn waiting_sessions_on_a_moving_binlog_are_no_stall() {
        let mut v = healthy();
        v.nodes[0].semi.wait_sessions = 3;
        let mut m = Memory::default();
        let ackers = set(&["db2"]);
        for seq in 11..40 {
            v.nodes[0].gtid_executed = Some(pos(&format!("0-1-{seq}")));
            v.nodes[0].semi.yes_tx = seq;
            assert!(
                check(&v, &ackers, None, &mut m).is_none(),
                "released at {seq}"
            );
        }
        // ACKs coming with the binlog still are no stall either.
        for yes in 100..110 {
            v.nodes[0].semi.yes_tx = yes;
            assert!(check(&v, &ackers, None, &mut m).is_none());
        }
    }

    /// #12 item 1: no flag is granted while the source counts a client
    /// the coordinator cannot see; when that client is a hung replica the
    /// source's commits would wait for it forever. Its connection is ended
    /// once the source stands still, and only then.
    #[test]
    fn a_stall_behind_a_client_out_of_sight_ends_the_replica_connections() {
        let mut v = healthy();
        v.nodes[1].reachable = false;
        v.nodes[0].semi.wait_sessions = 2;
        let mut m = Memory::default();
        let ackers = set(&["db2"]);
        for _ in 1..UNSEEN_STALLED_CYCLES {
            assert!(check(&v, &ackers, None, &mut m).is_none());
        }
        let Some(Ok((Intent::Enforce(actions), why))) = check(&v, &ackers, None, &mut m) else {
            panic!()
        };
        assert_eq!(
            actions,
            vec![crate::decide::Action::CutReplicaConnections { node: "db1".into() }]
        );
        assert!(why.contains("cannot see"), "{why}");
        // With the client gone the stall is the ordinary kind again.
        v.nodes[0].semi.clients = 0;
        let mut last = None;
        for _ in 0..=STALLED_CYCLES {
            last = check(&v, &ackers, None, &mut m);
        }
        assert!(matches!(last, Some(Err(_))), "{last:?}");
    }

    /// #14 item 2: the probe looked at the standing-still source across
    /// half a second, with the counters this look shows: the cycle's one
    /// look is the confirmation. A probe stall with other counters (an ACK
    /// came since), or too short, is not.
    #[test]
    fn a_stall_the_probe_saw_ends_the_connections_at_the_first_look() {
        let mut v = healthy();
        v.nodes[1].reachable = false;
        v.nodes[0].semi.wait_sessions = 2;
        v.nodes[0].semi.yes_tx = 40;
        let ackers = set(&["db2"]);
        let probe = |yes_tx, for_ms| {
            Some(ProbeStall {
                yes_tx,
                no_tx: 0,
                for_ms,
            })
        };
        for p in [None, probe(39, 900), probe(40, UNSEEN_STALL_MS - 1)] {
            let mut m = Memory::default();
            assert!(check(&v, &ackers, p, &mut m).is_none(), "{p:?}");
        }
        let mut m = Memory::default();
        let Some(Ok((Intent::Enforce(actions), _))) =
            check(&v, &ackers, probe(40, UNSEEN_STALL_MS), &mut m)
        else {
            panic!()
        };
        assert_eq!(
            actions,
            vec![crate::decide::Action::CutReplicaConnections { node: "db1".into() }]
        );
        // With every client in sight the probe changes nothing: the
        // release of a single ACKer's stall keeps its three looks.
        v.nodes[1].reachable = true;
        let mut m = Memory::default();
        assert!(check(&v, &ackers, probe(40, 5_000), &mut m).is_none());
    }

    #[test]
    fn two_possible_ackers_release_nothing() {
        let mut v = healthy();
        v.nodes[0].semi.wait_sessions = 1;
        let mut m = Memory::default();
        let mut last = None;
        for _ in 0..=STALLED_CYCLES {
            last = check(&v, &set(&["db2", "db3"]), None, &mut m);
        }
        assert!(
            matches!(last, Some(Err(ref why)) if why.contains("no single ACKing replica")),
            "{last:?}"
        );
    }
}
