//! The agent's cycle: observe the local server, report it, fence it if it
//! is writable but not the published source, compete for the cluster's
//! coordinator lock, and — as coordinator — observe every node, decide and
//! execute. Each cycle ends in one sentence saying what it did and why.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::Instrument as _;

use successover_common::consul::{Consul, ConsulError};
use successover_common::contract::{ClusterName, Keys, NodeName};
use tokio::time::Instant;

use crate::cluster::{self, ClusterKv};
use crate::config::Config;
use crate::decide::member::{self, Holder, LockMove, OwnState};
use crate::decide::{
    decide, Action, ClusterView, HostPort, Input, Intent, KvInputs, Memory, Settings,
};
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::mysql::Node;
use crate::observe::{node_view, observe, Observation};
use crate::procedure::{node_config, now_ms, Active, Coordinator, Nodes, PendingLook, StepError};
use crate::report::HealthReport;

/// How long a cycle waits for a peer whose last look failed. A server that
/// woke answers a fresh look in milliseconds; a hung one would hold the
/// cycle for its connect or read timeout. The look goes on in the
/// background ([`Nodes::pending`]) and the peer counts as unreachable
/// until it answers.
const SUSPECT_WAIT: Duration = Duration::from_millis(300);

/// More steps than any procedure has: a bound, so a decision that never
/// settles cannot spin a cycle forever.
const MAX_STEPS_PER_CYCLE: usize = 64;

pub struct Agent {
    cfg: Config,
    consul: Consul,
    keys: Keys,
    cluster: ClusterName,
    node: NodeName,
    nodes: Nodes,
    membership: Option<Membership>,
    last_report: Option<HealthReport>,
    /// The last cycle's reason while this agent coordinates, for its report.
    last_reason: Option<String>,
    last_report_write: Option<Instant>,
    /// The local server's accounts that write through `read_only`, and
    /// when they were listed (grants change rarely).
    read_only_writers: Option<(Instant, Vec<String>)>,
    /// The local server's applier settings, read as often as
    /// `read_only_writers` (they change only by an operator's hand).
    apply_settings: Option<(Instant, crate::mysql::status::ApplySettings)>,
    /// The local replica's apply backlog and rate, for the report and the
    /// metrics.
    apply_meter: crate::observe::ApplyMeter,
    /// The failover plan this agent last wrote as coordinator.
    last_plan: Option<successover_common::contract::FailoverPlan>,
    /// The coordinator's looks at its source between cycles.
    prober: crate::probe::Prober,
    free_lock_seen: u32,
    coordinating: bool,
    /// Every node seen in a report since start, so a source whose agent
    /// vanished with its host is still probed and can be failed over.
    known: BTreeMap<String, HostPort>,
    /// The invalid KV values already logged: each is logged when it first
    /// appears (and again if it comes back), not every cycle.
    rejected: std::collections::BTreeSet<(String, String)>,
    /// What the decision remembers between cycles.
    memory: Memory,
    /// A procedure this agent runs as coordinator.
    active: Option<Active>,
    /// While coordinating: fires when the lock stops being this agent's.
    lock_guard: Option<crate::membership::LockGuard>,
    /// The origin of the coordinator's monotonic clock.
    started: Instant,
    /// Consul contact: renewed by every liveness pass Consul accepts, under
    /// any session (see [`crate::isolation`]).
    contact: crate::membership::Lease,
    pub metrics: Arc<Metrics>,
    /// The cluster's KV state as the watches last saw it (see
    /// [`crate::kvcache`]).
    cache: crate::kvcache::KvCache,
    /// When the prefixes no watch keeps were last read.
    last_poll: Option<Instant>,
    /// The lock was taken this cycle, after the cycle read KV.
    lock_is_new: bool,
}

/// Ticks between the coordinator's reads of the prefixes no watch keeps
/// (see [`crate::kvcache`]): how long a switch request waits at most
/// before a cycle sees it (5 s on the shipped tick).
const POLL_TICKS: u32 = 5;
/// The same for an agent that does not coordinate. Nothing it decides
/// waits on those prefixes: a quarantined node is never the published
/// source, and the `master` key (watched) already fences its server;
/// drains, rejoins and switches are the coordinator's. An agent that takes
/// the lock reads them at once.
const MEMBER_POLL_TICKS: u32 = 30;

/// What one cycle did, for the log line and for tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CycleOutcome {
    /// Whether the cycle got as far as Consul (session and cluster state).
    pub reached_consul: bool,
    pub coordinator: bool,
    pub reason: String,
    pub actions: Vec<Action>,
}

/// How often the local server's grants are read again for the report's
/// `read_only_writers`.
const READ_ONLY_WRITERS_REFRESH: Duration = Duration::from_secs(60);

impl Agent {
    pub fn new(cfg: Config, metrics: Arc<Metrics>) -> Result<Agent, String> {
        let consul = Consul::new(cfg.consul.clone()).map_err(|e| e.to_string())?;
        metrics.set_consul(consul.clone());
        let keys = Keys::new(&cfg.prefix).map_err(|e| format!("prefix: {e}"))?;
        let cluster = ClusterName::parse(&cfg.cluster).map_err(|e| format!("cluster: {e}"))?;
        let node = NodeName::parse(&cfg.node).map_err(|e| format!("node: {e}"))?;
        let cache = crate::kvcache::KvCache::default();
        {
            let cache = cache.clone();
            // No decision reads this agent's own report back, and the
            // watch brings it within milliseconds: reading it again after
            // each write (its heartbeat, say) would cost a request for
            // nothing.
            let own_report = keys.agent_key(&cluster, &node);
            consul.on_kv_write(successover_common::consul::KvWriteHook(Arc::new(
                move |key: &str| {
                    if key != own_report {
                        cache.touched(key)
                    }
                },
            )));
        }
        let local = Node::new(node_config(&cfg, &cfg.local.host, cfg.local.port));
        Ok(Agent {
            nodes: Nodes {
                local_name: node.as_str().to_owned(),
                local,
                peers: BTreeMap::new(),
                pending: BTreeMap::new(),
                suspect: Default::default(),
            },
            cfg,
            consul,
            keys,
            cluster,
            node,
            membership: None,
            last_report: None,
            last_reason: None,
            last_report_write: None,
            read_only_writers: None,
            apply_settings: None,
            apply_meter: Default::default(),
            last_plan: None,
            prober: crate::probe::Prober::new(Default::default()),
            free_lock_seen: 0,
            coordinating: false,
            known: BTreeMap::new(),
            rejected: std::collections::BTreeSet::new(),
            memory: Memory::default(),
            active: None,
            lock_guard: None,
            started: Instant::now(),
            contact: crate::membership::Lease::default(),
            metrics,
            cache,
            last_poll: None,
            lock_is_new: false,
        })
    }

    /// Starts the isolation watchdog on the local server (see
    /// [`crate::isolation`]); it runs until `stop`.
    pub fn spawn_isolation_watchdog(
        &self,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let except = vec![self.cfg.user.clone(), self.cfg.replication_user.clone()];
        tokio::spawn(
            crate::isolation::watchdog(
                node_config(&self.cfg, &self.cfg.local.host, self.cfg.local.port),
                self.contact.clone(),
                except,
                self.metrics.clone(),
                stop,
            )
            .in_current_span(),
        )
    }

    fn advertise(&self) -> HostPort {
        HostPort::reported(&self.cfg.advertise.host, self.cfg.advertise.port)
    }

    fn lock_key(&self) -> String {
        self.keys.lock_key(&self.cluster)
    }

    /// Takes a new configuration on SIGHUP. Identity (cluster, node, prefix)
    /// cannot change under a running session; those need a restart.
    pub fn reload(&mut self, cfg: Config) -> Result<(), String> {
        if cfg.cluster != self.cfg.cluster
            || cfg.node != self.cfg.node
            || cfg.prefix != self.cfg.prefix
        {
            return Err(
                "cluster, node and prefix cannot change on reload; restart the agent".into(),
            );
        }
        self.consul = Consul::new(cfg.consul.clone()).map_err(|e| e.to_string())?;
        self.nodes.local = Node::new(node_config(&cfg, &cfg.local.host, cfg.local.port));
        self.nodes.peers.clear();
        self.nodes.pending.clear();
        self.nodes.suspect.clear();
        self.cfg = cfg;
        Ok(())
    }

    pub fn tick(&self) -> Duration {
        self.cfg.tick
    }

    pub fn probe_interval(&self) -> Duration {
        self.cfg.probe
    }

    pub fn is_coordinator(&self) -> bool {
        self.coordinating
    }

    /// The coordinator's last cycle found its source unreachable.
    pub fn suspects_source(&self) -> bool {
        self.coordinating && self.memory.suspect.is_some()
    }

    /// Starts the KV watches (see [`crate::kvcache`]) and the probe; both
    /// wake the loop through `wake`: on a change in KV, and when the source
    /// does not answer or its commits get no ACK.
    pub fn start_watching(
        &mut self,
        wake: std::sync::Arc<tokio::sync::Notify>,
        cancel: &tokio_util::sync::CancellationToken,
    ) {
        let prefixes = cluster::watched_prefixes(&self.keys, &self.cluster);
        self.cache
            .watch(&self.consul, &prefixes, wake.clone(), cancel);
        self.prober = crate::probe::Prober::new(wake);
    }

    /// One request for the prefixes no watch keeps, every few ticks:
    /// they change by an operator's request (a switch, a drain, a rejoin),
    /// which waits that long at most, or by a coordinator's own write,
    /// which is read back at once (see `kvcache`). Should it fail, `read`
    /// asks for each on its own and says what failed.
    async fn poll_kv(&mut self) {
        let every = if self.coordinating {
            POLL_TICKS
        } else {
            MEMBER_POLL_TICKS
        };
        if self
            .last_poll
            .is_some_and(|t| t.elapsed() < self.cfg.tick * every)
        {
            return;
        }
        let polled = cluster::polled_prefixes(&self.keys, &self.cluster);
        match self.cache.poll(&self.consul, &polled).await {
            Ok(()) => self.last_poll = Some(Instant::now()),
            Err(e) => tracing::debug!(error = %e, "cannot read the polled prefixes in one request"),
        }
    }

    pub async fn cycle(&mut self) -> CycleOutcome {
        let outcome = self.cycle_inner().await;
        // Kept short: a KV value, rewritten whenever it changes.
        self.last_reason = outcome
            .coordinator
            .then(|| outcome.reason.chars().take(1000).collect());
        self.metrics.cycle(
            outcome.coordinator,
            self.last_report.as_ref().is_some_and(|r| r.up),
            outcome.reached_consul,
        );
        outcome
    }

    async fn cycle_inner(&mut self) -> CycleOutcome {
        let local = observe(&mut self.nodes.local)
            .await
            .map_err(|e| e.to_string());
        if local.is_err() {
            self.metrics.error("mysql");
        }
        if let Err(err) = self.ensure_membership().await {
            self.metrics.error("consul");
            return self.idle(format!("cannot create a Consul session: {err}"));
        }
        // A failover is decided on quarantine and the last failover, which
        // the polled read carries: read them fresh while the source is
        // suspect or a procedure runs, so an operator's rejoin a moment
        // before the crash is seen (it read as a two-node cluster, a
        // refusal, in the failover benchmark).
        if self.suspects_source()
            || self.active.is_some()
            || self.prober.failing()
            || self.prober.stalled()
        {
            self.last_poll = None;
        }
        self.poll_kv().await;
        let mut kv = match cluster::read(&self.consul, &self.cache, &self.keys, &self.cluster).await
        {
            Ok(kv) => kv,
            Err(err) => {
                self.metrics.error("consul");
                // Without a view of KV nothing may be decided; the lock
                // (if held) is kept by the session until it expires.
                return self.idle(format!("cannot read cluster state from Consul: {err}"));
            }
        };
        let now_rejected: std::collections::BTreeSet<(String, String)> =
            kv.rejected.iter().cloned().collect();
        for (key, why) in now_rejected.difference(&self.rejected) {
            tracing::warn!(key, why, "ignoring invalid KV value");
        }
        self.rejected = now_rejected;
        // Every agent remembers every node it has seen, so whichever one
        // becomes coordinator can still reach a node whose agent (and so
        // whose report) is gone.
        for (name, report) in &kv.reports {
            if let Ok(hp) = successover_common::contract::HostPort::parse(&report.addr) {
                self.known.insert(name.clone(), hp);
            }
        }
        self.report(&local).await;

        let mut reasons = Vec::new();
        if let Some(why) = self.self_fence(&local, &kv).await {
            reasons.push(why);
        }

        let coordinator = match self.coordinate_lock(&kv).await {
            Ok(c) => c,
            Err(err) => {
                self.metrics.error("lock");
                reasons.push(format!("lock: {err}"));
                false
            }
        };
        if coordinator && std::mem::take(&mut self.lock_is_new) {
            // This cycle's view came from the cache, read before the lock
            // was this agent's: what the last coordinator wrote (a request
            // it consumed, a procedure under way) is read from Consul for
            // the first decision.
            self.poll_kv().await;
            match cluster::read(&self.consul, &self.cache, &self.keys, &self.cluster).await {
                Ok(fresh) => kv = fresh,
                Err(err) => {
                    self.metrics.error("consul");
                    self.lock_is_new = true;
                    return self.idle(format!("cannot read cluster state from Consul: {err}"));
                }
            }
        }
        self.coordinating = coordinator;
        self.guard_lock(coordinator);
        let outcome = |reasons: Vec<String>, actions| CycleOutcome {
            reached_consul: true,
            coordinator,
            reason: reasons.join("; "),
            actions,
        };
        if !coordinator {
            // A procedure this agent ran belongs to whoever holds the lock
            // now: it recovers from KV and the servers.
            self.active = None;
            // The next term writes its plan afresh; meanwhile the
            // coordinator's gauge is someone else's.
            self.last_plan = None;
            self.metrics.failover_ready(None);
            // Failed looks counted while it last coordinated would make a
            // later term skip a source that answers again (see `skip`
            // below) before any look of its own.
            self.prober.aim(None, self.cfg.probe);
            if reasons.is_empty() {
                reasons.push("member: another agent coordinates".to_owned());
            }
            return outcome(reasons, Vec::new());
        }
        let mut inputs = match cluster::coordinator_inputs(
            &self.consul,
            &self.cache,
            &self.keys,
            &self.cluster,
            &kv,
        )
        .await
        {
            Ok(i) => i,
            Err(err) => {
                self.metrics.error("consul");
                reasons.push(format!("cannot read cluster state from Consul: {err}"));
                return outcome(reasons, Vec::new());
            }
        };
        // The recorded members: a node whose agent (and report) went away
        // before this agent ever saw it is still looked at, so a dead
        // source nobody reports is seen dead, not absent.
        match cluster::members(&self.consul, &self.cache, &self.keys, &self.cluster).await {
            Ok((members, rejected)) => {
                for (key, why) in rejected {
                    tracing::warn!(key, why, "ignoring invalid member key");
                }
                for (name, addr) in members {
                    self.known.entry(name).or_insert(addr);
                }
            }
            Err(err) => {
                self.metrics.error("consul");
                reasons.push(format!("cannot read cluster members from Consul: {err}"));
                return outcome(reasons, Vec::new());
            }
        }
        if let Some(why) = &inputs.published_invalid {
            // Publishing over a value someone wrote (even a broken one)
            // could route writes to a node they did not choose.
            reasons.push(format!("master key is invalid, not acting: {why}"));
            return outcome(reasons, Vec::new());
        }
        let source = kv.published.clone();
        // Two failed looks in a row: the source is not looked at again this
        // cycle (against a hung source each look costs the read timeout;
        // the overlapping looks carry on meanwhile).
        let skip = source.as_ref().and_then(|addr| {
            let (name, _) = self.known.iter().find(|(_, a)| a.same(addr))?;
            (self.prober.failures_of(name) >= 2).then(|| name.clone())
        });
        let (observations, read_at) = self
            .observe_cluster(local, source.as_ref(), skip.as_deref())
            .await;
        let mut view = build_view(&self.cluster, &kv, &observations);
        for n in &mut view.nodes {
            if let Some(r) = n.replica.as_mut() {
                r.observed_ms = read_at.get(&n.name).copied();
            }
        }
        let target = view.source().map(|n| {
            let config = node_config(&self.cfg, &n.addr.host.to_string(), n.addr.port);
            (n.name.clone(), n.addr.clone(), config)
        });
        self.prober.aim(target, self.cfg.probe);
        let (reason, actions) = self.coordinate(&mut view, &mut inputs).await;
        reasons.push(reason);
        outcome(reasons, actions)
    }

    fn settings(&self) -> Settings {
        Settings {
            detection: self.cfg.detection,
            confirmations: self.cfg.confirmations,
            tick_ms: self.cfg.tick.as_millis() as u64,
            probe_ms: self.cfg.probe.as_millis() as u64,
        }
    }

    /// Observe → decide → execute until the decision holds, a procedure
    /// ends, or a step fails. A procedure runs its steps back to back in
    /// one cycle: each step's result is applied to `view`, so the next
    /// decision needs no new round of observation.
    async fn coordinate(
        &mut self,
        view: &mut ClusterView,
        kv: &mut KvInputs,
    ) -> (String, Vec<Action>) {
        let Some(m) = self.membership.as_ref() else {
            return ("no session".into(), Vec::new());
        };
        if !m.may_act() {
            // Paused past the lease (or no liveness pass for that long):
            // another agent may hold the lock by now.
            self.active = None;
            return (
                "the coordinator's local lease ran out: acting on nothing until Consul confirms the session".into(),
                Vec::new(),
            );
        }
        let lost = match &self.lock_guard {
            Some(g) if g.session == m.session => g.token.clone(),
            _ => m.lost.clone(),
        };
        let (session, lease) = (m.session.clone(), m.lease.clone());
        let settings = self.settings();
        // The plan is kept while nothing moves: during a procedure or a
        // suspicion it would only describe a moment of it.
        if self.active.is_none() && kv.in_progress.is_none() && !self.suspects_source() {
            let input = Input {
                view,
                kv,
                running: None,
                probe_failures: 0,
                probe_stall: None,
                settings,
                now_ms: self.clock_ms(),
                coordinator: self.node.as_str(),
                wall_ms: now_ms(),
            };
            let plan = crate::decide::failover::plan(&input);
            let source = view.source().map(|n| n.name.clone());
            self.publish_plan(source, plan).await;
        }
        let mut last_failed: Option<String> = None;
        let mut reasons: Vec<String> = Vec::new();
        for _ in 0..MAX_STEPS_PER_CYCLE {
            let probe_failures = view
                .source()
                .map_or(0, |n| self.prober.failures_of(&n.name));
            let probe_stall = view.source().and_then(|n| self.prober.stall_of(&n.name));
            let input = Input {
                view,
                kv,
                running: self.active.as_ref().map(|a| &a.running),
                probe_failures,
                probe_stall,
                settings,
                now_ms: self.clock_ms(),
                coordinator: self.node.as_str(),
                wall_ms: now_ms(),
            };
            let d = decide(&input, &self.memory);
            self.memory = d.memory;
            let mut co = Coordinator {
                consul: &self.consul,
                keys: &self.keys,
                cluster: &self.cluster,
                me: self.node.as_str(),
                cfg: &self.cfg,
                metrics: &self.metrics,
                nodes: &mut self.nodes,
                session: session.clone(),
                lost: lost.clone(),
                lease: lease.clone(),
            };
            let step = match d.intent {
                Intent::Hold => {
                    reasons.push(d.reason);
                    break;
                }
                Intent::Enforce(actions) => {
                    let failures = co.enforce(&actions, view, kv).await;
                    let mut reason = d.reason;
                    if !failures.is_empty() {
                        reason = format!("{reason}; failed: {}", failures.join("; "));
                    }
                    reasons.push(reason);
                    return (reasons.join("; "), actions);
                }
                Intent::RecordRefusal { entry } => {
                    co.record_refusal(&entry).await;
                    reasons.push(d.reason);
                    break;
                }
                Intent::ReleaseStalled {
                    source,
                    acker,
                    waiting,
                } => {
                    reasons.push(co.release_stalled(&source, &acker, waiting).await);
                    break;
                }
                Intent::Step(step) => step,
            };
            let name = step.name();
            if last_failed.as_deref() == Some(name.as_str()) {
                // The same step again: wait for a fresh look next cycle.
                if let Some(a) = &self.active {
                    co.save(a).await;
                }
                break;
            }
            match co
                .perform(&step, &d.reason, &mut self.active, view, kv)
                .await
            {
                Ok(Some(done)) => {
                    reasons.push(done);
                    break;
                }
                Ok(None) => last_failed = None,
                Err(StepError::LockLost(e)) => {
                    self.active = None;
                    reasons.push(format!("procedure interrupted, lock lost: {e}"));
                    break;
                }
                Err(StepError::Failed(e)) => {
                    self.metrics.error("procedure");
                    tracing::warn!(step = name, error = e, "procedure step failed");
                    reasons.push(format!("{name} failed: {e}"));
                    last_failed = Some(name);
                }
            }
        }
        if reasons.is_empty() {
            reasons.push("procedure steps exhausted for this cycle".into());
        }
        (reasons.join("; "), Vec::new())
    }

    /// Keeps a [`crate::membership::LockGuard`] while this agent
    /// coordinates: a new one after each acquisition (a fired guard is not
    /// reused), none otherwise.
    fn guard_lock(&mut self, coordinator: bool) {
        let Some(m) = self.membership.as_ref().filter(|_| coordinator) else {
            self.lock_guard = None;
            return;
        };
        let current = self
            .lock_guard
            .as_ref()
            .is_some_and(|g| g.session == m.session && !g.token.is_cancelled());
        if !current {
            self.lock_guard = Some(m.guard(&self.lock_key()));
        }
    }

    fn idle(&mut self, reason: String) -> CycleOutcome {
        self.coordinating = false;
        self.lock_guard = None;
        CycleOutcome {
            reached_consul: false,
            coordinator: false,
            reason,
            actions: Vec::new(),
        }
    }

    async fn ensure_membership(&mut self) -> Result<(), ConsulError> {
        if self.membership.as_ref().is_some_and(|m| !m.is_lost()) {
            return Ok(());
        }
        if let Some(old) = self.membership.take() {
            self.metrics.session_lost();
            self.last_report = None;
            let _ = old.destroy().await;
        }
        let m = Membership::create(
            &self.consul,
            self.session_name(),
            format!("successover-agent:{}:{}", self.cluster, self.node),
            self.cfg.session_ttl,
            self.cfg.lock_delay,
            self.contact.clone(),
        )
        .await?;
        // A process restarted within the liveness TTL passes the same check
        // its dead predecessor registered, which keeps the predecessor's
        // session (and any lock it held) alive: without a TTL, for as long
        // as this process passes the check. This process holds the node's
        // instance lock (main.rs), so another session of this agent's name
        // on this Consul node is a dead predecessor's: end it now.
        self.end_predecessor_sessions(&m.session).await;
        self.membership = Some(m);
        self.record_member().await;
        Ok(())
    }

    fn session_name(&self) -> String {
        format!("successover-agent {}/{}", self.cluster, self.node)
    }

    async fn end_predecessor_sessions(&self, ours: &str) {
        let name = self.session_name();
        let node = match self.consul.session_info(ours).await {
            Ok(Some(info)) => info.node,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for a previous process's session");
                return;
            }
        };
        let sessions = match self.consul.session_list_node(&node).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for a previous process's session");
                return;
            }
        };
        for old in sessions.iter().filter(|s| s.name == name && s.id != ours) {
            match self.consul.session_destroy(&old.id).await {
                Ok(()) => tracing::info!(
                    session = old.id,
                    "ended the session of this agent's previous process"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot end the previous process's session"),
            }
        }
    }

    /// Writes `member/<cluster>/<node>` when it does not hold this agent's
    /// address yet. Best effort: the report carries the address too, and
    /// the next new session tries again.
    async fn record_member(&self) {
        let key = self.keys.member_key(&self.cluster, &self.node);
        let addr = self.advertise().to_string();
        match self.consul.kv_get(&key).await {
            Ok(Some(kv)) if kv.value_str().map(str::trim) == Some(addr.as_str()) => {}
            Ok(_) => match self.consul.kv_put(&key, addr.as_bytes()).await {
                Ok(_) => tracing::info!(key, addr, "recorded this node as a cluster member"),
                Err(e) => tracing::warn!(key, error = %e, "cannot record cluster membership"),
            },
            Err(e) => tracing::warn!(key, error = %e, "cannot read cluster membership"),
        }
    }

    /// Writes `plan/<cluster>` when what it says changed, and sets the
    /// `successover_failover_ready` gauge.
    async fn publish_plan(
        &mut self,
        source: Option<String>,
        plan: Result<(String, String), String>,
    ) {
        self.metrics.failover_ready(Some(plan.is_ok()));
        let (candidate, reason) = match plan {
            Ok((to, why)) => (Some(to), why),
            Err(why) => (None, why),
        };
        let plan = successover_common::contract::FailoverPlan {
            ready: candidate.is_some(),
            source,
            candidate,
            reason,
            coordinator: format!("{}/{}", self.cluster, self.node),
            at_ms: now_ms(),
        };
        if self
            .last_plan
            .as_ref()
            .is_some_and(|p| !p.differs_materially(&plan))
        {
            return;
        }
        let Ok(body) = serde_json::to_vec(&plan) else {
            return;
        };
        match self
            .consul
            .kv_put(&self.keys.plan_key(&self.cluster), body)
            .await
        {
            Ok(()) => {
                if plan.ready {
                    tracing::info!(candidate = plan.candidate, "failover plan: {}", plan.reason);
                } else {
                    tracing::info!("failover plan: none would be promoted: {}", plan.reason);
                }
                self.last_plan = Some(plan);
            }
            Err(e) => tracing::debug!(error = %e, "cannot write the failover plan"),
        }
    }

    fn session(&self) -> Option<&str> {
        self.membership
            .as_ref()
            .filter(|m| !m.is_lost())
            .map(|m| m.session.as_str())
    }

    /// Writes the report when it changed materially or the heartbeat is
    /// due: a KV write is a Raft round, and thousands of agents share one
    /// Consul (DESIGN.md "Scale").
    async fn report(&mut self, local: &Result<Observation, String>) {
        let lag = local
            .as_ref()
            .ok()
            .and_then(|o| self.apply_meter.observe(std::time::Instant::now(), o));
        self.metrics.apply_lag(lag.as_ref());
        let Some(session) = self.session().map(str::to_owned) else {
            return;
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let mut report = crate::report::build(
            self.cluster.as_str(),
            self.node.as_str(),
            &self.advertise().to_string(),
            now_ms,
            local,
        );
        report.coordinating = self.last_reason.clone();
        if let Ok(o) = local {
            let stale = self
                .read_only_writers
                .as_ref()
                .is_none_or(|(at, _)| at.elapsed() >= READ_ONLY_WRITERS_REFRESH);
            if stale {
                if let Ok(users) = self.nodes.local.read_only_writers().await {
                    let protected = [&self.cfg.user, &self.cfg.replication_user];
                    let users = users
                        .into_iter()
                        .filter(|u| !protected.contains(&u))
                        .collect();
                    self.read_only_writers = Some((Instant::now(), users));
                }
            }
            if self
                .apply_settings
                .as_ref()
                .is_none_or(|(at, _)| at.elapsed() >= READ_ONLY_WRITERS_REFRESH)
            {
                if let Ok(a) = self.nodes.local.apply_settings().await {
                    self.apply_settings = Some((Instant::now(), a));
                }
            }
            if let Some((_, a)) = &self.apply_settings {
                crate::report::add_apply_settings(&mut report, a);
            }
            if let Some(lag) = &lag {
                crate::report::add_apply_lag(&mut report, lag);
            }
            if let Some((_, users)) = &self.read_only_writers {
                report.read_only_writers = users
                    .iter()
                    .map(|u| (u.clone(), o.clients_by_user.get(u).copied().unwrap_or(0)))
                    .collect();
            }
        }
        let due = self
            .last_report_write
            .is_none_or(|t| t.elapsed() >= self.cfg.report_heartbeat);
        let changed = self
            .last_report
            .as_ref()
            .is_none_or(|prev| prev.differs_materially(&report));
        if !due && !changed {
            return;
        }
        let body = match serde_json::to_vec(&report) {
            Ok(b) => b,
            Err(_) => return,
        };
        let key = self.keys.agent_key(&self.cluster, &self.node);
        match self.consul.kv_acquire(&key, body, &session).await {
            Ok(true) => {
                self.metrics.report_write();
                self.last_report = Some(report);
                self.last_report_write = Some(Instant::now());
            }
            Ok(false) => {
                self.metrics.error("report");
                tracing::warn!(key, "health report key is held by another session");
            }
            Err(err) => {
                self.metrics.error("report");
                tracing::warn!(error = %err, "cannot write the health report");
            }
        }
    }

    /// Rule 8, decided by [`member::self_fence`]: clients first, since
    /// `read_only=1` waits behind commits that wait for an ACK.
    async fn self_fence(
        &mut self,
        local: &Result<Observation, String>,
        kv: &ClusterKv,
    ) -> Option<String> {
        let Ok(obs) = local else { return None };
        let me = self.advertise();
        let own = OwnState {
            fenced: kv.fenced,
            quarantined: kv.quarantined.contains(self.node.as_str()),
            published: kv.published.as_ref(),
        };
        let why = member::self_fence(obs.read_only.read_only, &me, &own)?;
        let except = [self.cfg.user.as_str(), self.cfg.replication_user.as_str()];
        let fenced = crate::fence::fence_local(&mut self.nodes.local, &except).await;
        self.metrics.self_fence();
        Some(match fenced {
            Ok(n) => format!(
                "self-fenced: set read_only and killed {n} client connection(s) because {why}"
            ),
            Err(e) => {
                self.metrics.error("mysql");
                format!("self-fence failed ({why}): {e}")
            }
        })
    }

    /// Holds, takes, hands over or leaves the coordinator lock, as
    /// [`member::lock_move`] says. Returns whether this agent coordinates
    /// this cycle.
    async fn coordinate_lock(&mut self, kv: &ClusterKv) -> Result<bool, ConsulError> {
        let Some(membership) = self.membership.as_ref().filter(|m| !m.is_lost()) else {
            return Ok(false);
        };
        let key = self.lock_key();
        let holder = match self
            .cache
            .get(&self.consul, &key)
            .await?
            .and_then(|kv| kv.session)
        {
            Some(h) if h == membership.session => Holder::Me,
            Some(_) => Holder::Other,
            None => Holder::Nobody,
        };
        self.free_lock_seen = match holder {
            Holder::Nobody => self.free_lock_seen + 1,
            _ => 0,
        };
        let on_published = |addr: &HostPort| kv.published.as_ref().is_some_and(|p| p.same(addr));
        let on_source = on_published(&self.advertise());
        let acker = |r: &HealthReport| r.semi_sync.as_ref().is_some_and(|s| s.replica_enabled);
        let mine = match self.last_report.as_ref() {
            Some(r) => member::Placement::of(r.up, on_source, acker(r)),
            None => member::Placement::of(true, on_source, false),
        };
        let best_other = kv
            .reports
            .values()
            .filter(|r| r.node != self.node.as_str() && r.up)
            .map(|r| {
                let on = successover_common::contract::HostPort::parse(&r.addr)
                    .is_ok_and(|a| on_published(&a));
                member::Placement::of(r.up, on, acker(r))
            })
            .min();
        let may_hand_over =
            self.active.is_none() && !self.suspects_source() && !self.prober.failing();
        match member::lock_move(holder, mine, best_other, may_hand_over, self.free_lock_seen) {
            LockMove::Keep => Ok(true),
            LockMove::Wait => Ok(false),
            LockMove::Release => {
                membership.unlock(&key).await?;
                self.free_lock_seen = 0;
                match mine {
                    member::Placement::Source => tracing::info!(
                        "handing the coordinator lock to an agent not on the source"
                    ),
                    member::Placement::Acker => tracing::info!(
                        "handing the coordinator lock to an agent on a replica that does not ACK"
                    ),
                    _ => tracing::info!(
                        "handing the coordinator lock to an agent whose server answers: this one's does not"
                    ),
                }
                Ok(false)
            }
            LockMove::Acquire => {
                let holder_info = format!("{}/{}", self.cluster, self.node);
                let got = membership.try_lock(&key, &holder_info).await?;
                if got {
                    tracing::info!(lock = key, "became coordinator");
                    // What the last coordinator wrote is read from Consul,
                    // not from the watches, for this first decision.
                    self.cache.touched("");
                    self.last_poll = None;
                    self.lock_is_new = true;
                }
                Ok(got)
            }
        }
    }

    /// Observes every known node, concurrently and each with its own
    /// timeouts; the published source last, so a replica's position is
    /// never read after the source's (a commit in between would make a
    /// healthy replica look ahead of its source). The local node is looked
    /// at again too (the cycle's first look, taken before KV was read, is
    /// only the fallback): a request read from KV must be judged on what
    /// the servers showed after it was read, or a replica stopped just
    /// before a switch to it was requested would still look replicating.
    async fn observe_cluster(
        &mut self,
        local: Result<Observation, String>,
        source: Option<&HostPort>,
        skip: Option<&str>,
    ) -> (
        BTreeMap<String, (HostPort, Option<Observation>)>,
        BTreeMap<String, u64>,
    ) {
        let mut out = BTreeMap::new();
        // When each look ended, on the coordinator's clock.
        let mut read_at = BTreeMap::new();
        let me = self.advertise();
        let local_is_source = source.is_some_and(|s| s.same(&me));
        let mut local = Some(local);
        if !local_is_source {
            let again = self.look_again(local.take()).await;
            read_at.insert(self.node.as_str().to_owned(), self.clock_ms());
            out.insert(self.node.as_str().to_owned(), (me.clone(), again));
        }
        let is_source = |addr: &HostPort| source.is_some_and(|s| s.same(addr));
        let (sources, others): (Vec<_>, Vec<_>) = self
            .known
            .iter()
            .filter(|(n, _)| n.as_str() != self.node.as_str())
            .map(|(n, a)| (n.clone(), a.clone()))
            .partition(|(_, a)| is_source(a));
        for batch in [others, sources] {
            let mut looks = Vec::new();
            for (name, addr) in batch {
                if skip == Some(name.as_str()) {
                    out.insert(name, (addr, None));
                    continue;
                }
                if let Some(pending) = self.nodes.pending.remove(&name) {
                    if !pending.is_finished() {
                        self.nodes.pending.insert(name.clone(), pending);
                        out.insert(name, (addr, None));
                        continue;
                    }
                    if let Ok((node, obs)) = pending.await {
                        // Answered since: it is looked at again now, with
                        // the full wait, and what it said then is not used.
                        if obs.is_ok() {
                            self.nodes.suspect.remove(&name);
                        }
                        self.nodes.peers.insert(name.clone(), node);
                    }
                }
                let mut node = match self.nodes.peers.remove(&name) {
                    Some(n) if n.addr() == addr.to_string() => n,
                    _ => Node::new(node_config(&self.cfg, &addr.host.to_string(), addr.port)),
                };
                let suspect = self.nodes.suspect.contains(&name);
                let look: PendingLook = tokio::spawn(
                    async move {
                        let obs = observe(&mut node).await;
                        (node, obs)
                    }
                    .in_current_span(),
                );
                looks.push((name, addr, suspect, look));
            }
            let short = tokio::time::Instant::now() + SUSPECT_WAIT;
            for (name, addr, suspect, mut look) in looks {
                let joined = if suspect {
                    tokio::time::timeout_at(short, &mut look).await.ok()
                } else {
                    // The probe's own look may fail first (it started
                    // earlier): from then on the source counts as not
                    // answering this cycle, as it would the next, rather
                    // than holding the cycle for the rest of a read timeout.
                    loop {
                        match tokio::time::timeout(Duration::from_millis(100), &mut look).await {
                            Ok(j) => break Some(j),
                            Err(_) if self.prober.failures_of(&name) >= 1 => break None,
                            // The source's commits wait with no ACK coming:
                            // a replica that does not answer now is the
                            // likely cause, and every commit waits while
                            // the cycle waits out its read timeout. It
                            // counts as unreachable (its look goes on), the
                            // safe reading: an unreachable ACKer stays a
                            // possible one and blocks any grant.
                            Err(_) if !is_source(&addr) && self.prober.stalled() => break None,
                            Err(_) => {}
                        }
                    }
                };
                let Some(joined) = joined else {
                    self.nodes.pending.insert(name.clone(), look);
                    self.nodes.suspect.insert(name.clone());
                    out.insert(name, (addr, None));
                    continue;
                };
                let Ok((node, obs)) = joined else {
                    continue;
                };
                read_at.insert(name.clone(), self.clock_ms());
                match &obs {
                    Ok(_) => {
                        self.nodes.suspect.remove(&name);
                    }
                    Err(e) => {
                        tracing::debug!(node = name, error = %e, "cannot observe peer");
                        self.nodes.suspect.insert(name.clone());
                    }
                }
                out.insert(name.clone(), (addr, obs.ok()));
                self.nodes.peers.insert(name, node);
            }
        }
        // A peer that left the cluster is not waited on.
        self.nodes.pending.retain(|n, _| out.contains_key(n));
        self.nodes.suspect.retain(|n| out.contains_key(n));
        if local_is_source {
            let again = self.look_again(local.take()).await;
            read_at.insert(self.node.as_str().to_owned(), self.clock_ms());
            out.insert(self.node.as_str().to_owned(), (me, again));
        }
        (out, read_at)
    }

    /// The coordinator's monotonic clock, in ms since the agent started.
    fn clock_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The local server looked at again, after KV was read. One that did
    /// not answer the cycle's first look is not asked again: a hung server
    /// would cost the cycle a second read timeout (each hung look is one),
    /// and every decision waits for the cycle.
    async fn look_again(
        &mut self,
        first: Option<Result<Observation, String>>,
    ) -> Option<Observation> {
        match first {
            Some(Ok(first)) => Some(observe(&mut self.nodes.local).await.unwrap_or(first)),
            _ => None,
        }
    }

    /// Ordered shutdown: release the lock, destroy the session (which also
    /// deletes the health report), close connections.
    pub async fn shutdown(mut self) {
        if let Some(m) = self.membership.take() {
            let key = self.lock_key();
            if self.coordinating {
                match m.unlock(&key).await {
                    Ok(_) => tracing::info!(lock = key, "released the coordinator lock"),
                    Err(e) => tracing::warn!(error = %e, "cannot release the coordinator lock"),
                }
            }
            if let Err(e) = m.destroy().await {
                tracing::warn!(error = %e, "cannot destroy the Consul session");
            }
        }
        self.nodes.close().await;
    }
}

pub fn build_view(
    cluster: &ClusterName,
    kv: &ClusterKv,
    observations: &BTreeMap<String, (HostPort, Option<Observation>)>,
) -> ClusterView {
    ClusterView {
        cluster: cluster.as_str().to_owned(),
        nodes: observations
            .iter()
            .map(|(name, (addr, obs))| {
                node_view(
                    name,
                    addr.clone(),
                    obs.as_ref(),
                    kv.quarantined.contains(name),
                )
            })
            .collect(),
        published: kv.published.clone(),
        fenced: kv.fenced,
        procedure_running: kv.in_progress.is_some(),
        maintenance: kv.settings.as_ref().is_some_and(|s| s.maintenance),
        semi_sync_replicas: kv.semi_sync_replicas(),
        drained: kv.drained.clone(),
    }
}
