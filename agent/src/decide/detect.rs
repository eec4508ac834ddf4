//! Failure detection: what the coordinator makes of the published source,
//! as a named code ([`classify`]), confirmed over several ticks, mapped to
//! a recovery in one `match` ([`watch`]).

use successover_common::procedure::{HistoryEntry, Outcome, ProcedureKind};

use super::{ClusterView, Decision, Input, Intent, Memory, NodeView, SourceSemi, Step};
use crate::config::Detection;

/// Three heartbeat periods (the agents set the period to half a second when
/// they point a replica at a source). A hung source is told from a slow one
/// by the coordinator's probe too (its read timeout), so this bound only
/// has to be long enough that a live source's heartbeats never miss it.
pub const SILENT_AFTER_MS: u64 = 1_500;

/// What the coordinator makes of the published source this cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureCode {
    Healthy,
    /// Unreachable from the coordinator, and no replica receives from it.
    DeadSource,
    /// Unreachable from the coordinator, but replicas still receive from
    /// it: a network problem between the two, not a dead source.
    UnreachableSource,
    /// The coordinator and the replicas agree, but the source's own agent
    /// reports its server up (only under [`Detection::All`]).
    SourceAgentDisagrees,
    /// Unreachable, and no reachable replica can confirm or deny.
    NoWitness,
}

/// Pure: the failure code and a sentence of evidence.
pub fn classify(
    view: &ClusterView,
    detection: Detection,
    source_agent_up: Option<bool>,
) -> (FailureCode, String) {
    let Some(published) = &view.published else {
        return (FailureCode::Healthy, "no published source".into());
    };
    let Some(source) = view.node_at(published) else {
        return (FailureCode::Healthy, "published source has no agent".into());
    };
    if source.reachable {
        return (FailureCode::Healthy, format!("{} answers", source.name));
    }
    let replicas: Vec<&NodeView> = view
        .nodes
        .iter()
        .filter(|n| n.reachable && n.name != source.name && n.replicates_from(&source.addr))
        .collect();
    if replicas.is_empty() {
        return (
            FailureCode::NoWitness,
            format!("{} does not answer and no replica of it does", source.name),
        );
    }
    let receiving: Vec<&str> = replicas
        .iter()
        .filter(|n| n.replica.as_ref().is_some_and(|r| r.io_running))
        .map(|n| n.name.as_str())
        .collect();
    if !receiving.is_empty() {
        return (
            FailureCode::UnreachableSource,
            format!(
                "{} does not answer the coordinator but {} still receive(s) from it",
                source.name,
                receiving.join(", ")
            ),
        );
    }
    if detection == Detection::All && source_agent_up == Some(true) {
        return (
            FailureCode::SourceAgentDisagrees,
            format!("{}'s own agent still reports it up", source.name),
        );
    }
    (
        FailureCode::DeadSource,
        format!(
            "{} does not answer and none of {} receives from it",
            source.name,
            replicas
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
}

/// The view with every replica that has heard nothing from its source (no
/// new event, no heartbeat) for [`SILENT_AFTER_MS`] counted as not
/// receiving, whatever its IO thread state says: a hung or cut-off source
/// leaves the IO thread "running" until `slave_net_timeout`. An event is
/// seen by the read position too: while one large transaction streams in
/// for longer than the bound, the GTID position stands still and the
/// source sends no heartbeat, but every event moves the read position.
pub fn hearing(view: &ClusterView, memory: &mut Memory, now_ms: u64) -> ClusterView {
    let mut view = view.clone();
    for node in view.nodes.iter_mut().filter(|n| n.reachable) {
        let Some(r) = node.replica.as_mut() else {
            continue;
        };
        let signal = format!("{}|{:?}|{:?}", r.received, r.heartbeats, r.read_position);
        // Silence is what lies between the read that first saw this signal
        // and the latest read that still sees it: never more than the real
        // silence, whenever the decision comes.
        let read_at = r.observed_ms.unwrap_or(now_ms).min(now_ms);
        let entry = memory
            .progress
            .entry(node.name.clone())
            .or_insert((signal.clone(), read_at));
        if entry.0 != signal {
            *entry = (signal, read_at);
        }
        if read_at.saturating_sub(entry.1) >= SILENT_AFTER_MS {
            r.io_running = false;
        }
    }
    view
}

/// Keeps [`Memory::source_semi`] up to date from a look at the published
/// source; a new source starts a new record.
pub fn note_source_semi(view: &ClusterView, memory: &mut Memory, now_ms: u64) {
    let Some(source) = view.source().filter(|n| n.reachable) else {
        return;
    };
    let semi = &source.semi;
    match memory.source_semi.as_mut() {
        Some(s) if s.node == source.name => {
            let switched_off = semi.no_times > s.last_no_times;
            let unwaited = (s.drift || semi.settings_drift) && semi.no_tx > s.last_no_tx;
            if switched_off || unwaited {
                s.unacked += 1;
            }
            s.last_no_times = semi.no_times;
            s.last_no_tx = semi.no_tx;
            s.drift = semi.settings_drift;
            s.status_on = semi.source_status_on;
            s.seen_ms = now_ms;
        }
        _ => {
            memory.source_semi = Some(SourceSemi {
                node: source.name.clone(),
                last_no_times: semi.no_times,
                last_no_tx: semi.no_tx,
                drift: semi.settings_drift,
                unacked: 0,
                status_on: semi.source_status_on,
                seen_ms: now_ms,
            })
        }
    }
}

/// Evidence key: commits the failed source acknowledged without an ACK
/// while the coordinator watched it. A failover with a non-zero count
/// refuses (rule 7): no replica provably holds those commits.
pub const UNACKED_COMMITS: &str = "source_unacked_commits";

/// A failover entry as it starts: who failed, the detection evidence and
/// what the coordinator last saw of the source's semi-sync.
pub fn failover_entry(
    input: &Input<'_>,
    memory: &Memory,
    from: &str,
    evidence: &str,
) -> HistoryEntry {
    let mut entry = HistoryEntry::start(
        ProcedureKind::Failover,
        &input.view.cluster,
        input.coordinator,
        input.wall_ms,
    );
    entry.reason = format!("failing over from {from}");
    entry.from = Some(from.to_owned());
    entry.evidence.insert("detection".into(), evidence.into());
    match memory.source_semi.as_ref().filter(|s| s.node == from) {
        Some(s) => {
            entry.evidence.insert(
                "source_semi_sync".into(),
                format!(
                    "last seen {} ms before: semi-sync {}, switched off {} time(s), no_tx {}; {} look(s) at which it may have acknowledged without an ACK while this coordinator watched",
                    input.now_ms.saturating_sub(s.seen_ms),
                    if s.status_on { "on" } else { "OFF" },
                    s.last_no_times,
                    s.last_no_tx,
                    s.unacked
                )
                .into(),
            );
            entry
                .evidence
                .insert(UNACKED_COMMITS.into(), s.unacked.into());
        }
        None => {
            entry.evidence.insert(
                "source_semi_sync".into(),
                "not seen by this coordinator".into(),
            );
        }
    }
    entry
}

/// Per-cluster switch and anti-flapping.
pub fn failover_forbidden(input: &Input<'_>) -> Option<String> {
    if !input.kv.auto_failover {
        return Some("auto_failover is off for this cluster".into());
    }
    let at = input.kv.last_failover_ms?;
    let age_ms = input.wall_ms.saturating_sub(at);
    let cooldown_ms = input.kv.failover_cooldown_ms;
    // Held by its session, the marker lasts until Consul's own clock ends
    // the cooldown: no comparison of wall clocks across hosts, whose skew
    // could cut it short.
    if input.kv.last_failover_held {
        return Some(format!(
            "the last failover was {}s ago by this host's clock and its cooldown ({}s, on Consul's clock) has not ended; acknowledge it by deleting history/{}/last-failover",
            age_ms / 1000,
            cooldown_ms / 1000,
            input.view.cluster
        ));
    }
    (age_ms < cooldown_ms).then(|| {
        format!(
            "the last failover was {}s ago (cooldown {}s); acknowledge it by deleting history/{}/last-failover",
            age_ms / 1000,
            cooldown_ms / 1000,
            input.view.cluster
        )
    })
}

/// Observe mode: a confirmed dead source is recorded once per incident as
/// a `simulated` failover, with the node a failover would have promoted
/// (by its own checks, on what the replicas show) or why it would have
/// refused; nothing is touched.
fn simulate(input: &Input<'_>, memory: &mut Memory, source: &str, evidence: &str) -> Decision {
    if memory.incident_recorded {
        return Decision::hold(
            format!("observe mode: {source} is dead; the simulated failover is recorded"),
            memory.clone(),
        );
    }
    memory.incident_recorded = true;
    let as_if = super::KvInputs {
        auto_failover: true,
        ..input.kv.clone()
    };
    let would = super::failover::plan(&Input {
        view: input.view,
        kv: &as_if,
        running: None,
        probe_failures: input.probe_failures,
        probe_stall: input.probe_stall,
        settings: input.settings,
        now_ms: input.now_ms,
        coordinator: input.coordinator,
        wall_ms: input.wall_ms,
    });
    let mut entry = failover_entry(input, memory, source, evidence);
    entry.outcome = Outcome::Simulated;
    entry.finished_ms = Some(input.wall_ms);
    entry.reason = match would {
        Ok((to, why)) => {
            entry
                .evidence
                .insert("candidate_reason".into(), why.clone().into());
            entry.to = Some(to.clone());
            format!("observe mode: a failover would have promoted {to}; nothing was touched")
        }
        Err(why) => format!("observe mode: a failover would have been refused: {why}"),
    };
    Decision {
        reason: entry.reason.clone(),
        intent: Intent::RecordRefusal {
            entry: Box::new(entry),
        },
        memory: memory.clone(),
    }
}

/// Detection for the published source: `None` when the source is healthy
/// (or a fence set by hand says an operator is acting), else the cycle's
/// decision: confirming, refusing or starting a failover.
pub fn watch(input: &Input<'_>, memory: &mut Memory) -> Option<Decision> {
    let view = input.view;
    if view.fenced {
        memory.suspect = None;
        return None;
    }
    note_source_semi(view, memory, input.now_ms);
    let source_agent_up = view
        .source()
        .map(|n| input.kv.agent_up.get(&n.name).copied().unwrap_or(false));
    let heard = hearing(view, memory, input.now_ms);
    let (code, evidence) = classify(
        &heard,
        input.settings.detection,
        source_agent_up.filter(|up| *up),
    );
    let source = heard.source().map(|n| n.name.clone());
    if code == FailureCode::Healthy {
        memory.suspect = None;
        memory.incident_recorded = false;
        return None;
    }
    let source = source?;
    // Consecutive cycles in which the coordinator could not reach the
    // source count from the first one, while the replicas' silence builds
    // up in parallel: detection takes the longer of the two, not their
    // sum. A confirmation is a fresh look: looks closer together than the
    // probe interval (a cycle woken early by a KV change) count once, so N
    // confirmations span N probe intervals.
    let now = input.now_ms;
    let tick = input.settings.probe_ms;
    let count = match &memory.suspect {
        Some((name, n, at)) if *name == source && now.saturating_sub(*at) < tick => *n,
        Some((name, n, _)) if *name == source => n + 1,
        _ => 1,
    };
    let at = match &memory.suspect {
        Some((name, n, at)) if *name == source && *n == count => *at,
        _ => now,
    };
    memory.suspect = Some((source.clone(), count, at));
    // The probe's looks overlap (each on its own connection), so against a
    // hung source they confirm sooner than the cycles, each of which waits
    // out its own look's timeout.
    let count = count.max(input.probe_failures);
    let hold = |reason: String, memory: &Memory| Some(Decision::hold(reason, memory.clone()));
    match code {
        FailureCode::Healthy => None,
        FailureCode::UnreachableSource
        | FailureCode::SourceAgentDisagrees
        | FailureCode::NoWitness => hold(format!("not failing over ({count}): {evidence}"), memory),
        FailureCode::DeadSource => {
            let needed = input.settings.confirmations;
            if count < needed {
                return hold(
                    format!("source looks dead ({count}/{needed}): {evidence}"),
                    memory,
                );
            }
            if !input.kv.auto_failover && input.kv.observe_failover {
                return Some(simulate(input, memory, &source, &evidence));
            }
            if let Some(why) = failover_forbidden(input) {
                let reason = format!("source is dead but not failing over: {why}");
                if memory.incident_recorded {
                    return hold(reason, memory);
                }
                memory.incident_recorded = true;
                let mut entry = failover_entry(input, memory, &source, &evidence);
                entry.outcome = Outcome::Refused;
                entry.reason = why;
                entry.finished_ms = Some(input.wall_ms);
                return Some(Decision {
                    intent: Intent::RecordRefusal {
                        entry: Box::new(entry),
                    },
                    reason,
                    memory: memory.clone(),
                });
            }
            memory.suspect = None;
            let entry = failover_entry(input, memory, &source, &evidence);
            Some(Decision::step(
                Step::StartFailover {
                    entry: Box::new(entry),
                },
                format!("failover started: {evidence}"),
                memory.clone(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::fixtures::{self, healthy, pos};
    use crate::decide::KvInputs;

    fn view(db1_up: bool, db2_io: bool, db3_io: bool) -> ClusterView {
        let mut v = healthy();
        v.nodes[0].reachable = db1_up;
        v.nodes[1].replica.as_mut().unwrap().io_running = db2_io;
        v.nodes[2].replica.as_mut().unwrap().io_running = db3_io;
        v
    }

    #[test]
    fn classification_table() {
        use FailureCode::*;
        let table = [
            (true, true, true, Detection::ProbeAndReplicas, None, Healthy),
            (
                false,
                true,
                false,
                Detection::ProbeAndReplicas,
                None,
                UnreachableSource,
            ),
            (
                false,
                false,
                false,
                Detection::ProbeAndReplicas,
                None,
                DeadSource,
            ),
            (
                false,
                false,
                false,
                Detection::All,
                Some(true),
                SourceAgentDisagrees,
            ),
            (false, false, false, Detection::All, None, DeadSource),
        ];
        for (up, io2, io3, det, agent, want) in table {
            let (code, why) = classify(&view(up, io2, io3), det, agent);
            assert_eq!(code, want, "{up} {io2} {io3} {det:?} {agent:?}: {why}");
        }
        let mut v = view(false, false, false);
        v.nodes[1].reachable = false;
        v.nodes[2].reachable = false;
        assert_eq!(classify(&v, Detection::ProbeAndReplicas, None).0, NoWitness);
    }

    fn input<'a>(v: &'a ClusterView, kv: &'a KvInputs, now_ms: u64) -> Input<'a> {
        fixtures::input(v, kv, "db3", now_ms)
    }

    fn kv() -> KvInputs {
        KvInputs {
            auto_failover: true,
            observe_failover: false,
            failover_cooldown_ms: 3_600_000,
            max_lag_seconds: 10,
            ..KvInputs::default()
        }
    }

    #[test]
    fn confirmations_span_ticks_then_a_failover_starts() {
        let v = view(false, false, false);
        let kv = kv();
        let mut m = Memory::default();
        // Two looks within one tick count once.
        for now in [0, 400, 1000, 1500] {
            let d = watch(&input(&v, &kv, now), &mut m).unwrap();
            assert_eq!(d.intent, Intent::Hold, "{}", d.reason);
        }
        let d = watch(&input(&v, &kv, 2000), &mut m).unwrap();
        assert!(
            matches!(d.intent, Intent::Step(Step::StartFailover { .. })),
            "{}",
            d.reason
        );
    }

    #[test]
    fn the_probes_failed_looks_confirm_but_never_alone() {
        // Overlapping looks at a hung source confirm without waiting for
        // the cycles' own looks.
        let v = view(false, false, false);
        let kv = kv();
        let mut m = Memory::default();
        let mut i = input(&v, &kv, 0);
        i.probe_failures = 2;
        assert_eq!(watch(&i, &mut m).unwrap().intent, Intent::Hold);
        let mut i = input(&v, &kv, 10);
        i.probe_failures = 3;
        let d = watch(&i, &mut m).unwrap();
        assert!(
            matches!(d.intent, Intent::Step(Step::StartFailover { .. })),
            "{}",
            d.reason
        );
        // Replicas that still receive from the source overrule the probe.
        let v = view(false, true, true);
        let mut m = Memory::default();
        let mut i = input(&v, &kv, 0);
        i.probe_failures = 10;
        let d = watch(&i, &mut m).unwrap();
        assert_eq!(d.intent, Intent::Hold, "{}", d.reason);
    }

    #[test]
    fn a_silent_replica_counts_as_not_receiving() {
        let v = view(false, true, true);
        let kv = kv();
        let mut m = Memory::default();
        let d = watch(&input(&v, &kv, 0), &mut m).unwrap();
        assert!(d.reason.contains("still receive"), "{}", d.reason);
        // Nothing received and no heartbeat for the silence bound.
        let d = watch(&input(&v, &kv, SILENT_AFTER_MS), &mut m).unwrap();
        assert!(d.reason.contains("looks dead"), "{}", d.reason);
        // A heartbeat resets the silence.
        let mut v2 = v.clone();
        v2.nodes[1].replica.as_mut().unwrap().heartbeats = Some(2);
        v2.nodes[2].replica.as_mut().unwrap().received = pos("0-1-11");
        let d = watch(&input(&v2, &kv, SILENT_AFTER_MS + 100), &mut m).unwrap();
        assert!(d.reason.contains("still receive"), "{}", d.reason);
    }

    /// A cycle that waited out a hung source's read timeout decides
    /// seconds after it read the replicas: their silence counts between
    /// reads, not up to the decision, and not from the decision either (that
    /// cost a whole extra silence bound after every stuck cycle).
    #[test]
    fn silence_counts_between_reads() {
        let v = view(false, true, true);
        let kv = kv();
        let mut m = Memory::default();
        let read = |at: u64, hb: u64| {
            let mut v = v.clone();
            for n in &mut v.nodes[1..] {
                let r = n.replica.as_mut().unwrap();
                r.observed_ms = Some(at);
                r.heartbeats = Some(hb);
            }
            v
        };
        // Last heard at the read at 1 s; decided 2 s later, same read.
        watch(&input(&read(0, 1), &kv, 0), &mut m).unwrap();
        let d = watch(&input(&read(1_000, 2), &kv, 3_000), &mut m).unwrap();
        assert!(d.reason.contains("still receive"), "{}", d.reason);
        // Read again, unchanged, the bound after the read that heard it.
        let d = watch(
            &input(&read(1_000 + SILENT_AFTER_MS, 2), &kv, 3_100),
            &mut m,
        )
        .unwrap();
        assert!(!d.reason.contains("still receive"), "{}", d.reason);
    }

    #[test]
    fn a_replica_reading_one_large_transaction_still_hears_its_source() {
        let v = view(false, true, true);
        let kv = kv();
        let mut m = Memory::default();
        let at = |pos: u64| {
            let mut v = v.clone();
            for n in &mut v.nodes[1..] {
                n.replica.as_mut().unwrap().read_position = Some(("bin.000001".into(), pos));
            }
            v
        };
        let d = watch(&input(&at(1_000), &kv, 0), &mut m).unwrap();
        assert!(d.reason.contains("still receive"), "{}", d.reason);
        // No GTID and no heartbeat for longer than the silence bound, but
        // the events of one transaction keep coming.
        for (i, now) in [1_000, 2_000, 3_000, 4_000, 5_000].into_iter().enumerate() {
            let d = watch(&input(&at(2_000 + i as u64 * 8_192), &kv, now), &mut m).unwrap();
            assert!(
                d.reason.contains("still receive"),
                "at {now} ms: {}",
                d.reason
            );
        }
        // Once the read position stands still too, the replicas are silent.
        let d = watch(
            &input(&at(2_000 + 4 * 8_192), &kv, 5_000 + SILENT_AFTER_MS),
            &mut m,
        )
        .unwrap();
        assert!(!d.reason.contains("still receive"), "{}", d.reason);
    }

    /// Observe mode: the dead source is recorded once as a simulated
    /// failover naming the node it would have promoted; nothing else.
    #[test]
    fn observe_mode_records_a_simulated_failover_once() {
        let v = view(false, false, false);
        let mut kv = kv();
        kv.auto_failover = false;
        kv.observe_failover = true;
        let mut m = Memory::default();
        let mut entries = Vec::new();
        for now in [0, 1000, 2000, 3000, 4000, 5000] {
            match watch(&input(&v, &kv, now), &mut m).unwrap().intent {
                Intent::RecordRefusal { entry } => entries.push(*entry),
                Intent::Hold => {}
                other => panic!("observe mode acted: {other:?}"),
            }
        }
        assert_eq!(entries.len(), 1);
        let e = &entries[0];
        assert_eq!(e.outcome, Outcome::Simulated);
        assert_eq!(e.to.as_deref(), Some("db2"), "{}", e.reason);
        assert!(e.reason.contains("would have promoted db2"), "{}", e.reason);
        // Without observe mode the same incident is a refusal.
        kv.observe_failover = false;
        let mut m = Memory::default();
        let refused = (0..6)
            .filter_map(
                |i| match watch(&input(&v, &kv, i * 1000), &mut m).unwrap().intent {
                    Intent::RecordRefusal { entry } => Some(entry.outcome),
                    _ => None,
                },
            )
            .collect::<Vec<_>>();
        assert_eq!(refused, vec![Outcome::Refused]);
    }

    #[test]
    fn refusals_are_recorded_once_per_incident() {
        let v = view(false, false, false);
        let mut kv = kv();
        kv.auto_failover = false;
        let mut m = Memory::default();
        let mut intents = Vec::new();
        for now in [0, 1000, 2000, 3000, 4000] {
            intents.push(watch(&input(&v, &kv, now), &mut m).unwrap().intent);
        }
        let refusals = intents
            .iter()
            .filter(|i| matches!(i, Intent::RecordRefusal { .. }))
            .count();
        assert_eq!(refusals, 1);
        // The cooldown refuses too, naming the key that acknowledges it.
        let mut kv = self::kv();
        kv.last_failover_ms = Some(1_700_000_000_000);
        let mut m = Memory::default();
        let mut last = None;
        for now in [0, 1000, 2000] {
            last = watch(&input(&v, &kv, now), &mut m);
        }
        assert!(last.unwrap().reason.contains("last-failover"));

        // #13 item 12: held by its session, the marker refuses whatever
        // this host's clock says (a clock ahead would have cut the
        // cooldown short); unheld, the wall-clock rule.
        let mut kv = self::kv();
        kv.last_failover_ms = Some(1);
        let mut m = Memory::default();
        let mut last = None;
        for now in [0, 1000, 2000] {
            last = watch(&input(&v, &kv, now), &mut m);
        }
        assert!(
            matches!(last.as_ref().map(|d| &d.intent), Some(Intent::Step(_))),
            "an old unheld marker allows the failover: {last:?}"
        );
        kv.last_failover_held = true;
        let mut m = Memory::default();
        let mut last = None;
        for now in [0, 1000, 2000] {
            last = watch(&input(&v, &kv, now), &mut m);
        }
        let last = last.unwrap();
        assert!(
            matches!(last.intent, Intent::RecordRefusal { .. }),
            "{last:?}"
        );
        assert!(last.reason.contains("on Consul's clock"), "{}", last.reason);
    }

    #[test]
    fn a_fence_by_hand_means_hands_off() {
        let mut v = view(false, false, false);
        v.fenced = true;
        let kv = kv();
        assert!(watch(&input(&v, &kv, 0), &mut Memory::default()).is_none());
    }
}
