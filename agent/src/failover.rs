//! Lossless automatic failover.
//!
//! Detection classifies what the coordinator sees into a named code
//! ([`classify`], pure); the code maps to a recovery in one `match`
//! ([`Agent::watch_source`]). Recovery follows DESIGN.md's rules 3–5:
//! fence first, stop every replica's IO thread (a source that is merely
//! hung can then acknowledge nothing more), choose a candidate that provably
//! holds every acknowledged transaction or refuse, apply its relay log,
//! promote, repoint, publish and unfence in one txn with the old source
//! quarantined, then open the new source for writes.
//!
//! Every step is idempotent and the history entry names the candidate as
//! soon as it is chosen, so a coordinator that dies mid-failover leaves
//! enough for the next one to resume ([`Agent::recover_failover`]).

use std::time::Duration;

use successover_common::consul::TxnOp;
use successover_common::procedure::{HistoryEntry, Outcome, ProcedureKind};

use crate::cluster::{same_addr, ClusterKv};
use crate::config::Detection;
use crate::decide::{Addr, ClusterView, NodeView};
use crate::mysql::{GtidState, Node};
use crate::run::Agent;
use crate::switchover::{now_ms, Observations, Recorder, Timer};

/// Three heartbeat periods (the agents set the period to one second when
/// they point a replica at a source).
const SILENT_AFTER: Duration = Duration::from_secs(3);

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
    let Some(source) = view.nodes.iter().find(|n| same_addr(&n.addr, published)) else {
        return (FailureCode::Healthy, "published source has no agent".into());
    };
    if source.reachable {
        return (FailureCode::Healthy, format!("{} answers", source.name));
    }
    let replicas: Vec<&NodeView> = view
        .nodes
        .iter()
        .filter(|n| n.reachable && n.name != source.name)
        .filter(|n| {
            n.replica
                .as_ref()
                .is_some_and(|r| same_addr(&r.source, &source.addr))
        })
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

/// One replica after its IO thread was stopped: what it has received and
/// whether it was the semi-sync replica.
#[derive(Clone, Debug)]
pub struct CandidateView {
    pub name: String,
    pub received: GtidState,
    pub semi_sync: bool,
}

/// Pure: the candidate that provably holds every acknowledged transaction.
///
/// Under AFTER_SYNC a commit is acknowledged only after the semi-sync
/// replica received it, so the semi-sync replica holds every acknowledged
/// transaction — if exactly one replica had the flag (the coordinator's
/// invariant). Any replica that received at least as much is as good; the
/// most advanced one is chosen so no other replica holds transactions the
/// new source lacks. Without a live semi-sync replica nothing can be
/// proved, and the answer is a refusal.
pub fn choose_candidate(replicas: &[CandidateView]) -> Result<(String, String), String> {
    let semi: Vec<&CandidateView> = replicas.iter().filter(|r| r.semi_sync).collect();
    let semi = match semi.as_slice() {
        [one] => *one,
        [] => {
            return Err(
                "no live semi-sync replica: no replica provably holds every acknowledged transaction"
                    .into(),
            )
        }
        many => {
            return Err(format!(
                "{} replicas have the semi-sync flag ({}): cannot tell which holds every acknowledged transaction",
                many.len(),
                many.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ")
            ))
        }
    };
    let covers_all = |c: &CandidateView| {
        replicas
            .iter()
            .all(|r| c.received.contains(&r.received).unwrap_or(false))
    };
    if covers_all(semi) {
        return Ok((
            semi.name.clone(),
            format!(
                "{} was the semi-sync replica and received everything any replica did ({})",
                semi.name, semi.received
            ),
        ));
    }
    let mut better: Vec<&CandidateView> = replicas
        .iter()
        .filter(|c| c.received.contains(&semi.received).unwrap_or(false) && covers_all(c))
        .collect();
    better.sort_by(|a, b| a.name.cmp(&b.name));
    match better.first() {
        Some(c) => Ok((
            c.name.clone(),
            format!(
                "{} received everything the semi-sync replica {} did and more ({})",
                c.name, semi.name, c.received
            ),
        )),
        None => Err(format!(
            "no replica received both what the semi-sync replica {} did and what the others did",
            semi.name
        )),
    }
}

impl Agent {
    /// Runs detection for the published source; returns a reason when the
    /// cycle was spent on a failure (confirming, refusing or failing over).
    pub(crate) async fn watch_source(
        &mut self,
        kv: &ClusterKv,
        view: &ClusterView,
        observations: &Observations,
    ) -> Option<String> {
        if view.fenced {
            // A fence set by hand means an operator is acting.
            self.suspect = None;
            return None;
        }
        let source_agent_up = view
            .published
            .as_ref()
            .and_then(|p| view.nodes.iter().find(|n| same_addr(&n.addr, p)))
            .map(|n| kv.reports.get(&n.name).is_some_and(|r| r.up));
        let view = &self.hearing(view, observations);
        let (code, evidence) = classify(view, self.cfg.detection, source_agent_up.filter(|up| *up));
        // Consecutive cycles in which the coordinator could not reach the
        // source count from the first one, while the replicas' silence
        // builds up in parallel: detection takes the longer of the two,
        // not their sum.
        let source = view
            .published
            .as_ref()
            .and_then(|p| view.nodes.iter().find(|n| same_addr(&n.addr, p)))
            .map(|n| n.name.clone());
        if code == FailureCode::Healthy {
            self.suspect = None;
            self.incident_recorded = false;
            return None;
        }
        let source = source?;
        // A confirmation is a fresh look: cycles woken early by KV changes
        // count once per tick, so N confirmations span N ticks.
        let now = tokio::time::Instant::now();
        let count = match &self.suspect {
            Some((name, n, at)) if *name == source && now.duration_since(*at) < self.cfg.tick => *n,
            Some((name, n, _)) if *name == source => n + 1,
            _ => 1,
        };
        let at = match &self.suspect {
            Some((name, n, at)) if *name == source && *n == count => *at,
            _ => now,
        };
        self.suspect = Some((source.clone(), count, at));
        match code {
            FailureCode::Healthy => None,
            FailureCode::UnreachableSource
            | FailureCode::SourceAgentDisagrees
            | FailureCode::NoWitness => Some(format!("not failing over ({count}): {evidence}")),
            FailureCode::DeadSource => {
                if count < self.cfg.confirmations {
                    return Some(format!(
                        "source looks dead ({count}/{}): {evidence}",
                        self.cfg.confirmations
                    ));
                }
                if let Some(why) = self.failover_forbidden(kv).await {
                    if !self.incident_recorded {
                        self.incident_recorded = true;
                        self.record_refusal(&source, &why, &evidence).await;
                    }
                    return Some(format!("source is dead but not failing over: {why}"));
                }
                self.suspect = None;
                Some(
                    self.start_failover(kv, view, observations, source, evidence)
                        .await,
                )
            }
        }
    }

    /// The view with every replica that has heard nothing from its source
    /// (no new event, no heartbeat) for [`SILENT_AFTER`] counted as not
    /// receiving, whatever its IO thread state says: a hung or cut-off
    /// source leaves the IO thread "running" until `slave_net_timeout`.
    fn hearing(&mut self, view: &ClusterView, observations: &Observations) -> ClusterView {
        let now = tokio::time::Instant::now();
        let mut view = view.clone();
        for node in view.nodes.iter_mut() {
            let Some(o) = observations.get(&node.name).and_then(|(_, o)| o.as_ref()) else {
                continue;
            };
            let Some(r) = &o.replica else { continue };
            let signal = (r.received().to_string(), o.heartbeats);
            let entry =
                self.progress
                    .entry(node.name.clone())
                    .or_insert((signal.0.clone(), signal.1, now));
            if (entry.0.as_str(), entry.1) != (signal.0.as_str(), signal.1) {
                *entry = (signal.0, signal.1, now);
            }
            if now.duration_since(entry.2) >= SILENT_AFTER {
                if let Some(rv) = node.replica.as_mut() {
                    rv.io_running = false;
                }
            }
        }
        view
    }

    /// Per-cluster switch and anti-flapping.
    async fn failover_forbidden(&self, kv: &ClusterKv) -> Option<String> {
        let settings = kv.settings.as_ref();
        if settings.is_some_and(|s| !s.auto_failover) {
            return Some("auto_failover is off for this cluster".into());
        }
        let cooldown = settings
            .map(|s| s.failover_cooldown_seconds)
            .unwrap_or(3600);
        let key = self.last_failover_key();
        if let Ok(Some(last)) = self.consul.kv_get(&key).await {
            let at = last
                .value
                .as_deref()
                .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
                .and_then(|v| v["at_ms"].as_u64())
                .unwrap_or(0);
            let age = Duration::from_millis(now_ms().saturating_sub(at));
            if age < Duration::from_secs(cooldown) {
                return Some(format!(
                    "the last failover was {}s ago (cooldown {cooldown}s); acknowledge it by deleting {key}",
                    age.as_secs()
                ));
            }
        }
        None
    }

    pub(crate) fn last_failover_key(&self) -> String {
        format!("{}last-failover", self.keys.history_prefix(&self.cluster))
    }

    fn new_failover_entry(&self, from: &str, evidence: &str) -> HistoryEntry {
        let mut entry = self.new_entry(ProcedureKind::Failover);
        entry.reason = format!("failing over from {from}");
        entry.from = Some(from.to_owned());
        entry.evidence.insert("detection".into(), evidence.into());
        entry
    }

    async fn record_refusal(&self, from: &str, why: &str, evidence: &str) {
        let mut entry = self.new_failover_entry(from, evidence);
        entry.outcome = Outcome::Refused;
        entry.reason = why.to_owned();
        entry.finished_ms = Some(now_ms());
        if let Err(e) = self.guarded_txn(vec![self.history_op(&entry)]).await {
            tracing::warn!(error = e, "cannot record the failover refusal");
        }
        tracing::error!(source = from, "source is dead but not failing over: {why}");
    }

    async fn start_failover(
        &mut self,
        kv: &ClusterKv,
        view: &ClusterView,
        observations: &Observations,
        from: String,
        evidence: String,
    ) -> String {
        let entry = self.new_failover_entry(&from, &evidence);
        let mut rec = Recorder { entry };
        // Rule 3: fence before anything else, in the same txn that marks
        // the procedure as under way.
        let t = Timer::start();
        let fence = serde_json::json!({
            "reason": format!("failover {}", rec.entry.id),
            "by": self.node.as_str(),
            "at": now_ms() / 1000,
        });
        // The entry stored with the fence already names the step: the txn
        // is atomic, so if it commits the fence is in place, and a
        // coordinator that resumes from the stored entry (this one lost
        // Consul right after) must not show a failover without its fence.
        let mut staged = Recorder {
            entry: rec.entry.clone(),
        };
        staged.record("fence", Timer::start(), &Ok::<(), String>(()));
        let r = self
            .guarded_txn(vec![
                TxnOp::set(self.keys.failed_key(&self.cluster), fence.to_string()),
                self.history_op(&staged.entry),
                TxnOp::set(
                    self.keys.in_progress_key(&self.cluster),
                    rec.entry.id.clone(),
                ),
            ])
            .await;
        rec.record("fence", t, &r);
        if let Err(e) = r {
            return format!("failover not started: {e}");
        }
        tracing::warn!(
            id = rec.entry.id,
            source = from,
            "failover started: {evidence}"
        );
        self.metrics.action("failover", true);
        self.continue_failover(kv, view, observations, rec).await
    }

    /// Steps after the fence; also the resume path of a new coordinator.
    async fn continue_failover(
        &mut self,
        _kv: &ClusterKv,
        view: &ClusterView,
        observations: &Observations,
        mut rec: Recorder,
    ) -> String {
        let from = rec.entry.from.clone().unwrap_or_default();
        let from_addr = observations.get(&from).map(|(a, _)| a.clone());
        let replicas: Vec<String> = view
            .nodes
            .iter()
            .filter(|n| n.reachable && n.name != from && !n.quarantined)
            .map(|n| n.name.clone())
            .collect();

        // Best effort on the old source, from a connection of its own so a
        // hung server cannot hold the procedure up.
        if let Some(addr) = from_addr.clone() {
            let mut node = Node::new(crate::run::node_config(&self.cfg, &addr.host, addr.port));
            let protected = [self.cfg.user.clone(), self.cfg.replication_user.clone()];
            tokio::spawn(async move {
                let except: Vec<&str> = protected.iter().map(String::as_str).collect();
                if node.set_read_only(true).await.is_ok() {
                    let _ = node.kill_client_connections(&except).await;
                }
                node.close().await;
            });
        }

        // Stop every replica's IO thread: the old source, if only hung, can
        // collect no more ACKs and so acknowledge nothing more.
        let t = Timer::start();
        let mut problems = Vec::new();
        let promoted_already = rec.entry.to.clone();
        // All at once, each on a connection of its own: stopping an IO
        // thread that is blocked reading from a hung source takes about a
        // second per replica.
        let mut stops = tokio::task::JoinSet::new();
        for name in &replicas {
            if Some(name) == promoted_already.as_ref() {
                continue;
            }
            let Some((addr, _)) = observations.get(name) else {
                continue;
            };
            let mut node = Node::new(crate::run::node_config(&self.cfg, &addr.host, addr.port));
            let name = name.clone();
            stops.spawn(async move {
                let r = node.stop_io_thread().await;
                node.close().await;
                (name, r)
            });
        }
        while let Some(joined) = stops.join_next().await {
            match joined {
                Ok((_, Ok(()))) => {}
                Ok((name, Err(e))) => problems.push(format!("{name}: {e}")),
                Err(e) => problems.push(e.to_string()),
            }
        }
        let r = if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        };
        rec.record("stop_io_threads", t, &r);

        // Choose the candidate from what each replica has received now
        // that nothing more can arrive.
        let t = Timer::start();
        let mut views = Vec::new();
        for name in &replicas {
            let status = self
                .on_node(name, async |n: &mut Node| {
                    let r = n.replica_status().await?;
                    let s = n.semi_sync().await?;
                    Ok((r, s))
                })
                .await;
            if let Ok((Some(r), s)) = status {
                views.push(CandidateView {
                    name: name.clone(),
                    received: r.received(),
                    semi_sync: s.replica_enabled,
                });
            }
        }
        let chosen = match &promoted_already {
            Some(to) if !views.iter().any(|v| &v.name == to) => {
                // The candidate no longer replicates: promoted by the
                // coordinator that died. Carry on from there.
                Ok((
                    to.clone(),
                    "promoted by the previous coordinator".to_owned(),
                ))
            }
            _ => choose_candidate(&views),
        };
        let (to, why) = match chosen {
            Ok(c) => c,
            Err(reason) => {
                let r: Result<(), String> = Err(reason.clone());
                rec.record("choose_candidate", t, &r);
                // Nothing promoted. The cluster stays fenced for an
                // operator; replicas resume receiving in case the source
                // comes back.
                for name in &replicas {
                    let _ = self
                        .on_node(name, async |n: &mut Node| n.start_io_thread().await)
                        .await;
                }
                return self
                    .finish_failover(rec, Outcome::Refused, reason, false)
                    .await;
            }
        };
        let received = views
            .iter()
            .find(|v| v.name == to)
            .map(|v| v.received.clone());
        rec.entry.to = Some(to.clone());
        rec.entry
            .evidence
            .insert("candidate_reason".into(), why.clone().into());
        if let Some(r) = &received {
            rec.entry
                .evidence
                .insert("candidate_received_gtid".into(), r.to_string().into());
        }
        rec.entry.evidence.insert(
            "replicas_received".into(),
            serde_json::Value::Object(
                views
                    .iter()
                    .map(|v| {
                        (
                            v.name.clone(),
                            serde_json::Value::from(v.received.to_string()),
                        )
                    })
                    .collect(),
            ),
        );
        let r: Result<(), String> = Ok(());
        rec.record("choose_candidate", t, &r);
        // Name the candidate in the audit before touching it.
        if let Err(e) = self.guarded_txn(vec![self.history_op(&rec.entry)]).await {
            return format!("failover interrupted: {e}");
        }

        // Rule 4: apply everything received before accepting writes.
        if let Some(target) = received {
            let t = Timer::start();
            let timeout = self.cfg.apply_timeout;
            let r = match self
                .on_node(&to, async |n: &mut Node| {
                    n.wait_for_gtid(&target, timeout).await
                })
                .await
            {
                Ok(true) => Ok(()),
                Ok(false) => Err(format!(
                    "{to} did not apply its relay log within {timeout:?}"
                )),
                Err(e) => Err(e),
            };
            rec.record("apply_relay_log", t, &r);
            if let Err(e) = r {
                return self.retry_later(rec, e).await;
            }
            if let Ok(p) = self
                .on_node(&to, async |n: &mut Node| n.gtid_executed().await)
                .await
            {
                rec.entry.evidence.insert(
                    "candidate_applied_gtid_at_open".into(),
                    p.to_string().into(),
                );
            }
        }

        // Promote: no longer a replica, semi-sync source flag on.
        let t = Timer::start();
        let r = self
            .on_node(&to, async |n: &mut Node| {
                n.stop_replica().await?;
                n.reset_replica_all().await?;
                n.set_semi_sync_replica(false).await?;
                n.set_semi_sync_source(true).await
            })
            .await;
        rec.record("promote", t, &r);
        if let Err(e) = r {
            return self
                .finish_failover(rec, Outcome::Failed, format!("promote {to}: {e}"), false)
                .await;
        }
        let Some(to_addr) = observations.get(&to).map(|(a, _)| a.clone()) else {
            return self
                .finish_failover(rec, Outcome::Failed, format!("no address for {to}"), false)
                .await;
        };

        // The other replicas follow the new source; the first gets the
        // semi-sync flag before the new source opens, so its first commits
        // find an ACK.
        let others: Vec<String> = replicas.iter().filter(|n| **n != to).cloned().collect();
        for (i, name) in others.iter().enumerate() {
            let t = Timer::start();
            let r = self.repoint(name, &to_addr, i == 0, false).await;
            rec.record(&format!("repoint_{name}"), t, &r);
        }

        // Publish, unfence and quarantine the old source in one txn.
        let t = Timer::start();
        let master = self.keys.master_key(&self.cluster);
        let mut ops = vec![
            TxnOp::set(master.clone(), to_addr.to_string()),
            TxnOp::set(format!("{master}/hostname"), to_addr.host.clone()),
            TxnOp::set(format!("{master}/port"), to_addr.port.to_string()),
        ];
        ops.extend(self.lift_own_fence(&rec.entry.id).await);
        if let Some(op) = self.quarantine_op(&from, from_addr.as_ref(), &rec.entry.id) {
            ops.push(op);
        }
        ops.push(self.history_op(&rec.entry));
        let r = self.guarded_txn(ops).await;
        rec.record("publish", t, &r);
        if let Err(e) = r {
            return format!("failover interrupted at publish: {e}");
        }
        let t = Timer::start();
        let mut r = Err(String::new());
        for _ in 0..3 {
            r = self
                .on_node(&to, async |n: &mut Node| n.set_read_only(false).await)
                .await;
            if r.is_ok() {
                break;
            }
        }
        rec.record("writable", t, &r);
        if let Err(e) = r {
            return self
                .finish_failover(
                    rec,
                    Outcome::Failed,
                    format!("{to} published but not writable: {e}"),
                    true,
                )
                .await;
        }
        let reason = format!("{to} is the source; {from} is quarantined ({why})");
        self.finish_failover(rec, Outcome::Done, reason, true).await
    }

    /// A step failed in a way the next cycle may get past (a connection
    /// refused, a relay log still being applied): the procedure stays in
    /// progress, the audit shows the failed step, and the next cycle resumes
    /// it. The cluster stays fenced meanwhile.
    async fn retry_later(&mut self, rec: Recorder, why: String) -> String {
        if let Err(e) = self.guarded_txn(vec![self.history_op(&rec.entry)]).await {
            return format!("failover interrupted: {e}");
        }
        tracing::warn!(
            id = rec.entry.id,
            "failover step failed, resuming next cycle: {why}"
        );
        format!("failover resumes next cycle: {why}")
    }

    fn quarantine_op(&self, node: &str, addr: Option<&Addr>, id: &str) -> Option<TxnOp> {
        let node_name = successover_common::contract::NodeName::parse(node).ok()?;
        let value = serde_json::json!({
            "node": node,
            "addr": addr.map(|a| a.to_string()).unwrap_or_default(),
            "reason": format!("failed source, failover {id}"),
            "at": now_ms() / 1000,
        });
        Some(TxnOp::set(
            self.keys.quarantine_key(&self.cluster, &node_name),
            value.to_string(),
        ))
    }

    async fn finish_failover(
        &mut self,
        mut rec: Recorder,
        outcome: Outcome,
        reason: String,
        counted: bool,
    ) -> String {
        rec.entry.outcome = outcome;
        rec.entry.reason = reason.clone();
        rec.entry.finished_ms = Some(now_ms());
        let mut ops = vec![
            self.history_op(&rec.entry),
            TxnOp::delete(self.keys.in_progress_key(&self.cluster)),
        ];
        if counted {
            let last = serde_json::json!({"id": rec.entry.id, "at_ms": now_ms()});
            ops.push(TxnOp::set(self.last_failover_key(), last.to_string()));
        }
        if let Err(e) = self.guarded_txn(ops).await {
            tracing::warn!(error = e, "cannot record the failover outcome");
        }
        match outcome {
            Outcome::Done => tracing::warn!(id = rec.entry.id, "failover done: {reason}"),
            _ => tracing::error!(
                id = rec.entry.id,
                ?outcome,
                "failover {}: {reason}",
                outcome.as_str()
            ),
        }
        format!("failover {}: {reason}", outcome.as_str())
    }

    /// A failover interrupted by a coordinator change: finished if the new
    /// source was published, rolled back if the old source answers again
    /// and nothing was promoted, resumed otherwise.
    pub(crate) async fn recover_failover(
        &mut self,
        kv: &ClusterKv,
        entry: HistoryEntry,
        view: &ClusterView,
        observations: &Observations,
    ) -> String {
        let from = entry.from.clone().unwrap_or_default();
        let to_addr = entry
            .to
            .as_ref()
            .and_then(|to| observations.get(to))
            .map(|(a, _)| a.clone());
        let published_to = match (&kv.published, &to_addr) {
            (Some(p), Some(a)) => same_addr(p, a),
            _ => false,
        };
        let rec = Recorder {
            entry: entry.clone(),
        };
        if published_to {
            let to = entry.to.clone().unwrap_or_default();
            let mut problems = Vec::new();
            if let Err(e) = self
                .on_node(&to, async |n: &mut Node| n.set_read_only(false).await)
                .await
            {
                problems.push(format!("make {to} writable: {e}"));
            }
            if kv.fenced {
                if let Err(e) = self.guarded_txn(self.lift_own_fence(&entry.id).await).await {
                    problems.push(format!("unfence: {e}"));
                }
            }
            let (outcome, reason) = if problems.is_empty() {
                (
                    Outcome::Done,
                    format!(
                        "{to} is the source; finished by {} after the coordinator changed",
                        self.node
                    ),
                )
            } else {
                (Outcome::Failed, problems.join("; "))
            };
            return self.finish_failover(rec, outcome, reason, true).await;
        }
        let from_alive = observations.get(&from).is_some_and(|(_, o)| o.is_some());
        if from_alive && entry.to.is_none() {
            // A false alarm caught in time: nothing was promoted.
            let replicas: Vec<String> = view
                .nodes
                .iter()
                .filter(|n| n.reachable && n.name != from)
                .map(|n| n.name.clone())
                .collect();
            for name in &replicas {
                let _ = self
                    .on_node(name, async |n: &mut Node| n.start_io_thread().await)
                    .await;
            }
            let _ = self.guarded_txn(self.lift_own_fence(&entry.id).await).await;
            return self
                .finish_failover(
                    rec,
                    Outcome::Aborted,
                    format!("{from} answers again and nothing was promoted"),
                    false,
                )
                .await;
        }
        tracing::warn!(id = entry.id, "resuming an interrupted failover");
        self.continue_failover(kv, view, observations, rec).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::ReplicaView;
    use crate::mysql::GtidPos;

    fn addr(port: u16) -> Addr {
        Addr {
            host: "127.0.0.1".into(),
            port,
        }
    }

    fn node(name: &str, port: u16, reachable: bool, source: Option<(u16, bool)>) -> NodeView {
        NodeView {
            name: name.into(),
            addr: addr(port),
            reachable,
            read_only: source.is_some(),
            replica: source.map(|(p, io)| ReplicaView {
                source: addr(p),
                io_running: io,
                sql_running: true,
            }),
            semi_sync_source: false,
            semi_sync_replica: false,
            semi_sync_replica_active: false,
            quarantined: false,
        }
    }

    fn view(db1_up: bool, db2_io: bool, db3_io: bool) -> ClusterView {
        ClusterView {
            cluster: "c1".into(),
            nodes: vec![
                node("db1", 1, db1_up, None),
                node("db2", 2, true, Some((1, db2_io))),
                node("db3", 3, true, Some((1, db3_io))),
            ],
            published: Some(addr(1)),
            fenced: false,
            procedure_running: false,
            maintenance: false,
            semi_sync_replicas: 1,
        }
    }

    #[test]
    fn classification_table() {
        let p = Detection::ProbeAndReplicas;
        assert_eq!(
            classify(&view(true, true, true), p, None).0,
            FailureCode::Healthy
        );
        assert_eq!(
            classify(&view(false, false, false), p, None).0,
            FailureCode::DeadSource
        );
        let (code, why) = classify(&view(false, true, false), p, None);
        assert_eq!(code, FailureCode::UnreachableSource);
        assert_eq!(
            why,
            "db1 does not answer the coordinator but db2 still receive(s) from it"
        );
        assert_eq!(
            classify(&view(false, false, false), Detection::All, Some(true)).0,
            FailureCode::SourceAgentDisagrees
        );
        assert_eq!(
            classify(&view(false, false, false), Detection::All, None).0,
            FailureCode::DeadSource
        );
        let mut lonely = view(false, false, false);
        lonely.nodes.truncate(1);
        assert_eq!(classify(&lonely, p, None).0, FailureCode::NoWitness);
    }

    fn cand(name: &str, received: &str, semi: bool) -> CandidateView {
        CandidateView {
            name: name.into(),
            received: GtidState::MariaDb(GtidPos::parse(received).unwrap()),
            semi_sync: semi,
        }
    }

    #[test]
    fn the_semi_sync_replica_is_chosen() {
        let (c, why) =
            choose_candidate(&[cand("db2", "0-1-100", true), cand("db3", "0-1-98", false)])
                .unwrap();
        assert_eq!(c, "db2");
        assert!(why.contains("semi-sync replica"), "{why}");
    }

    #[test]
    fn a_replica_that_received_more_than_the_semi_sync_one_is_preferred() {
        // db3 received a transaction the semi-sync replica had not ACKed
        // yet: promoting db2 would leave db3 with an errant transaction.
        let (c, _) =
            choose_candidate(&[cand("db2", "0-1-100", true), cand("db3", "0-1-101", false)])
                .unwrap();
        assert_eq!(c, "db3");
    }

    #[test]
    fn no_live_semi_sync_replica_is_a_refusal() {
        let err = choose_candidate(&[cand("db3", "0-1-90", false)]).unwrap_err();
        assert!(err.starts_with("no live semi-sync replica"), "{err}");
        let err = choose_candidate(&[cand("db2", "0-1-9", true), cand("db3", "0-1-9", true)])
            .unwrap_err();
        assert!(err.contains("2 replicas have the semi-sync flag"), "{err}");
    }
}
