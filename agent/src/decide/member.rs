//! What every agent decides for itself, coordinator or not: whether its own
//! server must fence itself (rule 8), and what to do about the cluster's
//! coordinator lock.

use super::HostPort;

/// What KV says that matters to one agent's own server.
pub struct OwnState<'a> {
    pub fenced: bool,
    pub quarantined: bool,
    pub published: Option<&'a HostPort>,
}

/// Rule 8: a writable server that is not the published source (or is
/// fenced, or quarantined) is made read-only and its clients are cut,
/// whatever the coordinator is doing: clients that bypass the proxy are
/// the reason. Returns why, when it must.
pub fn self_fence(read_only: bool, me: &HostPort, kv: &OwnState<'_>) -> Option<String> {
    if read_only {
        return None;
    }
    if kv.fenced {
        return Some("cluster is fenced".to_owned());
    }
    if kv.quarantined {
        return Some("this node is quarantined".to_owned());
    }
    match kv.published {
        Some(p) if !p.same(me) => Some(format!("{p} is the published source")),
        _ => None,
    }
}

/// How many cycles an agent leaves a free lock to a better placed live
/// agent (see [`Placement`]) before taking it itself.
pub const SOURCE_AGENT_LOCK_PATIENCE: u32 = 3;

/// Where an agent runs, as a place for the coordinator, best first. A
/// coordinator that loses its host with the server it must act on leaves
/// nobody to act until its lock moves (its liveness check missing 3 s of
/// passes, then the lock delay): on the source's host that delays the
/// failover, on the ACKer's host the move of the ACK role while every
/// commit waits (5.4-6.2 s measured, against 0.6-1.1 s with the
/// coordinator elsewhere).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Placement {
    /// A replica without the semi-sync replica flag: losing its host
    /// stops no commit.
    Spare,
    /// A replica with the semi-sync replica flag (an ACKer).
    Acker,
    /// The published source's host.
    Source,
    /// Its own server does not answer: every cycle pays that server's
    /// read timeout, and every decision waits for the cycle.
    ServerDown,
}

impl Placement {
    pub fn of(up: bool, on_source: bool, acker: bool) -> Placement {
        match (up, on_source, acker) {
            (false, _, _) => Placement::ServerDown,
            (true, true, _) => Placement::Source,
            (true, false, true) => Placement::Acker,
            (true, false, false) => Placement::Spare,
        }
    }
}

/// Who holds the lock, from this agent's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    Me,
    Other,
    Nobody,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMove {
    /// Coordinate this cycle.
    Keep,
    /// Hand the lock to a better placed agent.
    Release,
    /// Try to take the free lock.
    Acquire,
    /// Leave it.
    Wait,
}

/// `free_seen` counts consecutive cycles the lock was seen free, this one
/// included. `mine`: this agent's placement; `best_other`: the best
/// placement among the other live agents. A holder on the source or with
/// its server down hands the lock over at once; one on an ACKer only when
/// `may_hand_over` (no procedure of its own runs and its source is not
/// suspect), since a hand-over costs a cycle of nobody coordinating.
pub fn lock_move(
    holder: Holder,
    mine: Placement,
    best_other: Option<Placement>,
    may_hand_over: bool,
    free_seen: u32,
) -> LockMove {
    let better_elsewhere = best_other.is_some_and(|o| o < mine);
    match holder {
        Holder::Me if better_elsewhere && (mine > Placement::Acker || may_hand_over) => {
            LockMove::Release
        }
        Holder::Me => LockMove::Keep,
        Holder::Other => LockMove::Wait,
        Holder::Nobody if better_elsewhere && free_seen <= SOURCE_AGENT_LOCK_PATIENCE => {
            LockMove::Wait
        }
        Holder::Nobody => LockMove::Acquire,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::fixtures::addr;

    #[test]
    fn self_fence_table() {
        let me = addr(1);
        let other = addr(2);
        let st = |fenced, quarantined, published| OwnState {
            fenced,
            quarantined,
            published,
        };
        assert_eq!(self_fence(true, &me, &st(true, true, Some(&other))), None);
        assert_eq!(self_fence(false, &me, &st(false, false, Some(&me))), None);
        assert_eq!(self_fence(false, &me, &st(false, false, None)), None);
        assert!(self_fence(false, &me, &st(true, false, Some(&me)))
            .unwrap()
            .contains("fenced"));
        assert!(self_fence(false, &me, &st(false, true, Some(&me)))
            .unwrap()
            .contains("quarantined"));
        assert!(self_fence(false, &me, &st(false, false, Some(&other)))
            .unwrap()
            .contains("is the published source"));
    }

    #[test]
    fn lock_table() {
        use Holder::*;
        use LockMove::*;
        use Placement::*;
        // A spare replica keeps it; nobody better than it exists.
        assert_eq!(lock_move(Me, Spare, Some(Acker), false, 0), Keep);
        // The source's agent and one whose server is down leave at once.
        assert_eq!(lock_move(Me, Source, Some(Acker), false, 0), Release);
        assert_eq!(lock_move(Me, ServerDown, Some(Source), false, 0), Release);
        assert_eq!(lock_move(Me, Source, None, true, 0), Keep);
        assert_eq!(lock_move(Me, Source, Some(ServerDown), true, 0), Keep);
        // An ACKer's agent leaves to a spare one, but not mid-procedure.
        assert_eq!(lock_move(Me, Acker, Some(Spare), true, 0), Release);
        assert_eq!(lock_move(Me, Acker, Some(Spare), false, 0), Keep);
        assert_eq!(lock_move(Me, Acker, Some(Acker), true, 0), Keep);
        assert_eq!(lock_move(Other, Spare, Some(Source), true, 0), Wait);
        assert_eq!(lock_move(Nobody, Spare, Some(Acker), true, 1), Acquire);
        // A free lock: the worse placed wait for the better placed, a while.
        assert_eq!(lock_move(Nobody, Source, Some(Spare), true, 3), Wait);
        assert_eq!(lock_move(Nobody, Acker, Some(Spare), true, 3), Wait);
        assert_eq!(lock_move(Nobody, Source, Some(Spare), true, 4), Acquire);
        assert_eq!(lock_move(Nobody, Source, None, true, 1), Acquire);
        assert_eq!(lock_move(Nobody, Acker, Some(Source), true, 1), Acquire);
    }
}
