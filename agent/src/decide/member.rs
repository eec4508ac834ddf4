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

/// How many cycles the published source's agent leaves a free lock to the
/// others before taking it itself: a coordinator on the source host would
/// die with the source and leave nobody to notice quickly.
pub const SOURCE_AGENT_LOCK_PATIENCE: u32 = 3;

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
    /// Hand the lock to an agent not on the source host.
    Release,
    /// Try to take the free lock.
    Acquire,
    /// Leave it.
    Wait,
}

/// `free_seen` counts consecutive cycles the lock was seen free, this one
/// included. `unsuited`: this agent is on the published source, or its own
/// server does not answer; it leaves the lock to another live agent.
pub fn lock_move(
    holder: Holder,
    unsuited: bool,
    other_live_agent: bool,
    free_seen: u32,
) -> LockMove {
    match holder {
        Holder::Me if unsuited && other_live_agent => LockMove::Release,
        Holder::Me => LockMove::Keep,
        Holder::Other => LockMove::Wait,
        Holder::Nobody
            if unsuited && other_live_agent && free_seen <= SOURCE_AGENT_LOCK_PATIENCE =>
        {
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
        assert_eq!(lock_move(Me, false, true, 0), Keep);
        assert_eq!(lock_move(Me, true, true, 0), Release);
        assert_eq!(lock_move(Me, true, false, 0), Keep);
        assert_eq!(lock_move(Other, false, true, 0), Wait);
        assert_eq!(lock_move(Nobody, false, true, 1), Acquire);
        assert_eq!(lock_move(Nobody, true, true, 3), Wait);
        assert_eq!(lock_move(Nobody, true, true, 4), Acquire);
        assert_eq!(lock_move(Nobody, true, false, 1), Acquire);
    }
}
