//! Pure analysis behind the checks (unit-tested below).

use std::collections::BTreeSet;

use crate::writer::WriterLog;

/// The longest time a writer went without an acknowledgement: between two
/// acknowledged writes, and also from its start to the first and from the
/// last to its end (a stall that lasts to the end of a round counts).
pub fn longest_gap_ms(log: &WriterLog) -> u64 {
    let mut points = vec![0u64];
    points.extend(log.acked.iter().map(|(_, at)| at.as_millis() as u64));
    points.push((log.elapsed.as_millis() as u64).max(*points.last().unwrap_or(&0)));
    points
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .max()
        .unwrap_or(0)
}

/// `@@gtid_binlog_state` as (domain, server id, seq).
pub fn parse_binlog_state(s: &str) -> anyhow::Result<Vec<(u32, u32, u64)>> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let mut parts = item.split('-');
        let (Some(d), Some(srv), Some(seq), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            anyhow::bail!("not a GTID: {item:?}");
        };
        out.push((d.parse()?, srv.parse()?, seq.parse()?));
    }
    Ok(out)
}

/// The entries of `node` that `source` does not cover: a server writes its
/// sequence numbers in order, so a later GTID of the same server in the
/// same domain covers an earlier one (as agent/src/mysql/gtid.rs
/// `binlog_state_not_in`).
pub fn errant(node: &[(u32, u32, u64)], source: &[(u32, u32, u64)]) -> Vec<(u32, u32, u64)> {
    node.iter()
        .filter(|(d, srv, q)| {
            !source
                .iter()
                .any(|(sd, ss, sq)| sd == d && ss == srv && sq >= q)
        })
        .copied()
        .collect()
}

/// One reading of `@@read_only` on one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub sent_ms: u64,
    pub recv_ms: u64,
    /// `None`: no answer (down, stopped, cut off).
    pub writable: Option<bool>,
}

/// Times a server was certainly writable: runs of at least two consecutive
/// writable readings, from the answer to the first to the question of the
/// last (the inner bound, so a switch where the old source turns read-only
/// before the new one turns writable never looks like an overlap).
pub fn writable_intervals(samples: &[Sample]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut run: Option<(u64, u64)> = None;
    for s in samples {
        match (s.writable, run.as_mut()) {
            (Some(true), Some(r)) => r.1 = s.sent_ms,
            (Some(true), None) => run = Some((s.recv_ms, s.recv_ms)),
            _ => {
                if let Some((a, b)) = run.take() {
                    if b > a {
                        out.push((a, b));
                    }
                }
            }
        }
    }
    if let Some((a, b)) = run {
        if b > a {
            out.push((a, b));
        }
    }
    out
}

/// Two servers writable at the same time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlap {
    pub a: String,
    pub b: String,
    pub from_ms: u64,
    pub to_ms: u64,
}

/// Every pair of servers whose writable intervals overlap.
pub fn overlaps(per_node: &[(String, Vec<(u64, u64)>)]) -> Vec<Overlap> {
    let mut out = Vec::new();
    for i in 0..per_node.len() {
        for j in i + 1..per_node.len() {
            for &(a0, a1) in &per_node[i].1 {
                for &(b0, b1) in &per_node[j].1 {
                    let (from, to) = (a0.max(b0), a1.min(b1));
                    if from < to {
                        out.push(Overlap {
                            a: per_node[i].0.clone(),
                            b: per_node[j].0.clone(),
                            from_ms: from,
                            to_ms: to,
                        });
                    }
                }
            }
        }
    }
    out
}

/// What the KV store said about routing, from the first poll that saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvState {
    /// The poll that first saw this state.
    pub seen_ms: u64,
    /// The last successful poll before it (which still saw the previous
    /// state): the change happened in between.
    pub prev_poll_ms: u64,
    pub published: Option<String>,
    pub fenced: bool,
    pub quarantined: BTreeSet<String>,
}

impl KvState {
    fn routable(&self, node: &str) -> bool {
        self.published.as_deref() == Some(node) && !self.fenced && !self.quarantined.contains(node)
    }

    pub(super) fn describe(&self) -> String {
        format!(
            "published {}, {}, quarantined [{}]",
            self.published.as_deref().unwrap_or("none"),
            if self.fenced { "fenced" } else { "not fenced" },
            self.quarantined
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(",")
        )
    }
}

/// A connection through HAProxy answered by `node` at `at_ms` is fine if,
/// at some time within `grace_ms` before, KV published `node` unfenced and
/// not quarantined. States are in the order seen; each possibly held from
/// just after its `prev_poll_ms` until the next one's `seen_ms`.
pub fn route_allowed(states: &[KvState], node: &str, at_ms: u64, grace_ms: u64) -> bool {
    let from = at_ms.saturating_sub(grace_ms);
    if states.is_empty() {
        return true;
    }
    states.iter().enumerate().any(|(k, s)| {
        let starts = if k == 0 { 0 } else { s.prev_poll_ms };
        let ends = states.get(k + 1).map_or(u64::MAX, |n| n.seen_ms);
        starts <= at_ms && ends >= from && s.routable(node)
    })
}

/// The state in effect at `at_ms` as far as the poller knows.
pub(super) fn state_at(states: &[KvState], at_ms: u64) -> Option<&KvState> {
    states.iter().rev().find(|s| s.seen_ms <= at_ms)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::writer::WriterLog;

    #[test]
    fn the_longest_gap_counts_a_stall_at_the_end() {
        let ms = Duration::from_millis;
        let log = WriterLog {
            acked: vec![(1, ms(100)), (2, ms(150))],
            sent: Vec::new(),
            failed: 0,
            elapsed: ms(5000),
            start_unix_ms: 0,
        };
        assert_eq!(longest_gap_ms(&log), 4850);
        let none = WriterLog {
            elapsed: ms(700),
            ..WriterLog::default()
        };
        assert_eq!(longest_gap_ms(&none), 700);
    }

    #[test]
    fn errant_gtids_are_per_domain_and_server() {
        let source = parse_binlog_state("0-1-100,0-2-50").unwrap();
        assert!(errant(&parse_binlog_state("0-1-90,0-2-50").unwrap(), &source).is_empty());
        assert!(errant(&[], &source).is_empty());
        assert_eq!(
            errant(&parse_binlog_state("0-1-101,0-3-1").unwrap(), &source),
            vec![(0, 1, 101), (0, 3, 1)]
        );
        assert!(parse_binlog_state("0-1").is_err());
    }

    fn s(sent: u64, writable: Option<bool>) -> Sample {
        Sample {
            sent_ms: sent,
            recv_ms: sent + 2,
            writable,
        }
    }

    #[test]
    fn a_clean_switch_is_no_overlap_but_two_writable_servers_are() {
        // Old source read-only at ~250, new one writable at ~260.
        let old = vec![
            s(0, Some(true)),
            s(100, Some(true)),
            s(200, Some(true)),
            s(300, Some(false)),
        ];
        let new = vec![
            s(50, Some(false)),
            s(150, Some(false)),
            s(250, Some(false)),
            s(350, Some(true)),
            s(450, Some(true)),
        ];
        let per = vec![
            ("db1".to_owned(), writable_intervals(&old)),
            ("db2".to_owned(), writable_intervals(&new)),
        ];
        assert_eq!(per[0].1, vec![(2, 200)]);
        assert_eq!(per[1].1, vec![(352, 450)]);
        assert!(overlaps(&per).is_empty());
        let both = vec![
            ("db1".to_owned(), vec![(0, 1000)]),
            ("db2".to_owned(), vec![(500, 2000)]),
        ];
        assert_eq!(
            overlaps(&both),
            vec![Overlap {
                a: "db1".into(),
                b: "db2".into(),
                from_ms: 500,
                to_ms: 1000
            }]
        );
        // One reading alone, or readings split by no answer, prove nothing.
        assert!(
            writable_intervals(&[s(0, Some(true)), s(100, None), s(200, Some(true))]).is_empty()
        );
    }

    fn st(seen: u64, prev: u64, published: &str, fenced: bool, q: &[&str]) -> KvState {
        KvState {
            seen_ms: seen,
            prev_poll_ms: prev,
            published: Some(published.to_owned()),
            fenced,
            quarantined: q.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn routes_are_checked_against_kv_with_a_grace() {
        // db1 published; fenced at ~5000; db2 published, db1 quarantined at ~6000.
        let states = vec![
            st(0, 0, "db1", false, &[]),
            st(5000, 4900, "db1", true, &[]),
            st(6000, 5900, "db2", false, &["db1"]),
        ];
        assert!(route_allowed(&states, "db1", 3000, 1000));
        // Within the grace after the fence.
        assert!(route_allowed(&states, "db1", 5500, 1000));
        // Beyond it.
        assert!(!route_allowed(&states, "db1", 6500, 1000));
        assert!(!route_allowed(&states, "db1", 9000, 1000));
        // The new source, even just before the poller saw the change.
        assert!(route_allowed(&states, "db2", 5950, 1000));
        assert!(route_allowed(&states, "db2", 9000, 1000));
        // Never published.
        assert!(!route_allowed(&states, "db3", 9000, 1000));
        // Quarantined while published: never routable.
        let q = vec![st(0, 0, "db1", false, &["db1"])];
        assert!(!route_allowed(&q, "db1", 100, 1000));
    }
}
