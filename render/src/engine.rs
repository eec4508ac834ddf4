//! One render cycle (model → template → `haproxy -c` → write → apply) and
//! the daemon loop around it. Any failure leaves the last good config
//! serving: nothing is written before it validated, and HAProxy is only
//! touched with a config that was written.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use successover_common::contract::Host;
use successover_common::systemd;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::apply::{self, ApiError, ApplyPlan, Executed, Haproxy, Observed, ReloadReason, Target};
use crate::config::{Config, WatchConfig};
use crate::fallback::Overrides;
use crate::metrics::Metrics;
use crate::model::{self, Built, Model, Tree};
use crate::presence::{Contact, Served};
use crate::template::{Template, TemplateError};
use crate::validate::{ValidateError, Validator};
use crate::watch::{self, Snapshot, Update};
use crate::write::{self, WriteError, WriteOutcome};
use successover_common::contract::{ProxyServing, ServedCluster};
use tokio::sync::{watch as tokio_watch, Notify};

/// `error: cause: cause`, for log lines.
pub use successover_common::telemetry::report;

#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error("rendering")]
    Template(#[source] TemplateError),
    #[error("validating")]
    Validate(#[source] ValidateError),
    #[error("writing")]
    Write(#[source] WriteError),
    #[error("applying to HAProxy")]
    Apply(#[source] ApiError),
}

impl CycleError {
    /// Metrics label.
    pub fn stage(&self) -> &'static str {
        match self {
            CycleError::Template(_) => "template",
            CycleError::Validate(_) => "validate",
            CycleError::Write(_) => "write",
            CycleError::Apply(_) => "apply",
        }
    }
}

/// What a successful cycle did.
#[derive(Debug, Clone)]
pub struct CycleReport {
    pub written: bool,
    pub plan: ApplyPlan,
    pub executed: Executed,
    /// A cluster waits for its proxy port to be free: look again later.
    pub held_back: bool,
}

/// A config file and template re-read on SIGHUP, for [`Engine::reconfigure`].
pub struct Reconfig {
    pub cfg: Config,
    pub template: Template,
}

pub struct Engine {
    cfg: Arc<Config>,
    template: Template,
    validator: Validator,
    haproxy: Haproxy,
    metrics: Arc<Metrics>,
    /// The last model that rendered, validated and was written: the
    /// fallback for values that fail validation.
    good: Model,
    /// The last model HAProxy was brought in line with.
    applied: Option<Model>,
    /// The file changed since the last successful apply.
    written_since_apply: bool,
    /// Rejections already logged at warn level.
    reported: BTreeSet<String>,
    /// A new config or template was swapped in since the last apply.
    reconfigured: bool,
    /// What HAProxy serves, after every successful apply: published under
    /// `proxy/<name>` ([`crate::presence`]) and watched by the fallback.
    served: tokio_watch::Sender<Served>,
    /// Clusters the fallback took out while Consul was away.
    overrides: Overrides,
    /// The highest modify index of the KV state being rendered.
    kv_index: u64,
}

fn validator(cfg: &Config) -> Validator {
    Validator {
        binary: cfg.haproxy.binary.clone(),
        timeout: cfg.haproxy.check_timeout,
    }
}

fn haproxy(cfg: &Config) -> Haproxy {
    let h = &cfg.haproxy;
    Haproxy {
        admin_socket: h.admin_socket.clone(),
        master_socket: h.master_socket.clone(),
        reload: h.reload.clone(),
        command_timeout: h.command_timeout,
        reload_timeout: h.reload_timeout,
    }
}

/// The directory `haproxy -c` runs the rendered file from: the live file's,
/// so relative paths in it mean what they will mean live.
fn config_dir(path: &Path) -> std::path::PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => Path::new(".").to_owned(),
    }
}

impl Engine {
    pub fn new(cfg: Arc<Config>, template: Template, metrics: Arc<Metrics>) -> Self {
        Engine {
            validator: validator(&cfg),
            haproxy: haproxy(&cfg),
            template,
            metrics,
            good: Model::default(),
            applied: None,
            written_since_apply: false,
            reported: BTreeSet::new(),
            reconfigured: false,
            served: tokio_watch::channel(None).0,
            overrides: Overrides::default(),
            kv_index: 0,
            cfg,
        }
    }

    /// What HAProxy serves, updated after every successful apply.
    pub fn served(&self) -> tokio_watch::Receiver<Served> {
        self.served.subscribe()
    }

    pub fn overrides(&self) -> Overrides {
        self.overrides.clone()
    }

    pub fn haproxy(&self) -> Haproxy {
        self.haproxy.clone()
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.cfg
    }

    /// The record of what `model` makes HAProxy serve.
    fn record(&self, model: &Model) -> ProxyServing {
        ProxyServing {
            proxy: self.cfg.name.clone(),
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
            kv_index: self.kv_index,
            clusters: model
                .clusters
                .values()
                .map(|c| {
                    let fenced = c.fenced() || self.overrides.get(c.name.as_str()).is_some();
                    (
                        c.name.clone(),
                        ServedCluster {
                            source: Some(c.source.addr.clone()),
                            fenced,
                        },
                    )
                })
                .collect(),
        }
    }

    /// Swaps in a re-read config and template, but only when they turn the
    /// current KV state (`tree`; `None` before every prefix was read once)
    /// into a config `haproxy -c` accepts: a template edited on a live proxy
    /// host must not get as far as the file HAProxy loads, and a daemon
    /// left with a template that fails every cycle could not follow the
    /// next failover. On error nothing changes.
    ///
    /// Settings the running daemon was started with and cannot change in
    /// place (Consul connection, KV prefix, metrics listener, watch timing:
    /// the watches and listener hold them) keep their running values; their
    /// names are returned so the caller can say a restart is needed.
    pub async fn reconfigure(
        &mut self,
        new: Reconfig,
        tree: Option<&Tree>,
    ) -> Result<Vec<&'static str>, CycleError> {
        let Reconfig { mut cfg, template } = new;
        let old = &self.cfg;
        let mut kept = Vec::new();
        if cfg.consul != old.consul {
            kept.push("consul");
            cfg.consul = old.consul.clone();
        }
        if cfg.keys != old.keys {
            kept.push("kv.prefix");
            cfg.keys = old.keys.clone();
        }
        if cfg.name != old.name {
            kept.push("render.name");
            cfg.name = old.name.clone();
        }
        if cfg.source_check != old.source_check {
            kept.push("source_check");
            cfg.source_check = old.source_check.clone();
        }
        if cfg.metrics_listen != old.metrics_listen {
            kept.push("metrics.listen");
            cfg.metrics_listen = old.metrics_listen;
        }
        if cfg.watch.wait != old.watch.wait || cfg.watch.min_interval != old.watch.min_interval {
            kept.push("watch.wait/min_interval");
            cfg.watch = WatchConfig {
                retry_interval: cfg.watch.retry_interval,
                ..old.watch.clone()
            };
        }
        if let Some(tree) = tree {
            // Pure: rejections are counted and logged by the next cycle.
            let built = model::build(&cfg.keys, tree, &self.good);
            let text = template
                .render_model(&built.model, &cfg.haproxy.template, &cfg.template_vars)
                .map_err(CycleError::Template)?;
            validator(&cfg)
                .check(&text, &config_dir(&cfg.haproxy.config))
                .await
                .map_err(CycleError::Validate)?;
        }
        let (h, o) = (&cfg.haproxy, &old.haproxy);
        if h.config != o.config
            || h.admin_socket != o.admin_socket
            || h.master_socket != o.master_socket
        {
            // Another file or another HAProxy: what it binds is unknown, as
            // after a start.
            self.applied = None;
        }
        self.validator = validator(&cfg);
        self.haproxy = haproxy(&cfg);
        self.template = template;
        self.cfg = Arc::new(cfg);
        self.reconfigured = true;
        Ok(kept)
    }

    fn report(&mut self, built: &Built) {
        let mut now = BTreeSet::new();
        for r in &built.rejected {
            let line = r.to_string();
            // Every cycle sees the same bad value again; say it once.
            if !self.reported.contains(&line) {
                tracing::warn!(reason = r.reason.kind(), "{line}");
            }
            now.insert(line);
        }
        self.reported = now;
        self.metrics
            .rejected(built.rejected.iter().map(|r| r.reason.kind()));
    }

    /// The model for a cycle: [`model::build`], then clusters whose new
    /// proxy port another program holds are held back (see
    /// [`model::hold_back_taken_ports`]). The bool says one was.
    async fn build(&mut self, tree: &Tree) -> (Built, bool) {
        let mut built = model::build(&self.cfg.keys, tree, &self.good);
        let held = match self.running_binds(&built.model).await {
            Some(running) => {
                let ip = self.cfg.haproxy.template.bind_address;
                model::hold_back_taken_ports(&self.cfg.keys, &mut built, &running, |port| {
                    port_in_use(ip, port)
                })
            }
            None => false,
        };
        self.report(&built);
        (built, held)
    }

    /// What HAProxy binds now, cluster → port: the last apply; right after
    /// a start, the running proxies the model also has, assumed on the
    /// model's ports. `None` when HAProxy cannot be asked: a probe could
    /// not tell its ports from another program's then, and nothing can be
    /// applied anyway.
    async fn running_binds(&self, model: &Model) -> Option<BTreeMap<String, u16>> {
        if let Some(applied) = &self.applied {
            return Some(applied.binds());
        }
        let observed = self.haproxy.observe().await.ok()?;
        Some(
            model
                .binds()
                .into_iter()
                .filter(|(name, _)| observed.contains_key(name))
                .collect(),
        )
    }

    /// Builds and renders without touching anything (`--dry-run`).
    pub fn preview(&mut self, tree: &Tree) -> Result<String, TemplateError> {
        let built = model::build(&self.cfg.keys, tree, &self.good);
        self.report(&built);
        self.render_text(&built.model)
    }

    fn render_text(&self, model: &Model) -> Result<String, TemplateError> {
        self.template
            .render_model(model, &self.cfg.haproxy.template, &self.cfg.template_vars)
    }

    /// One full cycle. On error the metrics are already counted; the caller
    /// logs and retries.
    pub async fn cycle(&mut self, tree: &Tree) -> Result<CycleReport, CycleError> {
        let result = self.cycle_inner(tree).await;
        match &result {
            Ok(report) => self.metrics.render(if report.written {
                "written"
            } else {
                "unchanged"
            }),
            Err(e) => {
                self.metrics.render("failed");
                self.metrics.error(e.stage());
            }
        }
        result
    }

    async fn cycle_inner(&mut self, tree: &Tree) -> Result<CycleReport, CycleError> {
        let (built, held_back) = self.build(tree).await;
        let text = self
            .render_text(&built.model)
            .map_err(CycleError::Template)?;

        let path = self.cfg.haproxy.config.clone();
        let current = tokio::fs::read(&path).await.ok();
        let written = if current.as_deref() == Some(text.as_bytes()) {
            false
        } else {
            self.validator
                .check(&text, &config_dir(&path))
                .await
                .map_err(CycleError::Validate)?;
            let bytes = text.clone().into_bytes();
            let outcome = tokio::task::spawn_blocking(move || write::write_atomic(&path, &bytes))
                .await
                .expect("write task does not panic")
                .map_err(CycleError::Write)?;
            outcome == WriteOutcome::Written
        };
        self.good = built.model.clone();
        self.written_since_apply |= written;
        let fenced = built.model.clusters.values().filter(|c| c.fenced()).count();
        self.metrics
            .clusters(built.model.clusters.len() - fenced, fenced);

        let observed = self.haproxy.observe().await.map_err(CycleError::Apply)?;
        let targets = self.targets(&built.model, &observed).await;
        let binds = self.applied.as_ref().map(Model::binds);
        let mut plan = apply::plan(
            &targets,
            &observed,
            binds.as_ref(),
            self.written_since_apply,
        );
        if self.reconfigured && self.written_since_apply {
            plan.reload.insert(ReloadReason::Reconfigured);
        }
        let executed = if plan.is_empty() {
            Executed::default()
        } else {
            self.haproxy
                .execute(&plan)
                .await
                .map_err(CycleError::Apply)?
        };
        let path = if executed.reloaded {
            "reload"
        } else {
            plan.path()
        };
        self.metrics.apply(path);
        if !plan.is_empty() {
            tracing::info!(
                path,
                old_worker_sessions = executed.old_worker_sessions,
                fell_back = ?executed.fell_back,
                "applied: {plan}"
            );
        }
        let record = self.record(&built.model);
        // Only a change of what is served is news (the time alone is not).
        self.served.send_if_modified(|old| {
            let same = old
                .as_ref()
                .is_some_and(|o| o.clusters == record.clusters && o.kv_index == record.kv_index);
            if !same {
                *old = Some(record);
            }
            !same
        });
        self.applied = Some(built.model);
        self.written_since_apply = false;
        self.reconfigured = false;
        Ok(CycleReport {
            written,
            plan,
            executed,
            held_back,
        })
    }

    /// The model as HAProxy should run it: IPs for `set server addr`.
    async fn targets(&self, model: &Model, observed: &Observed) -> Vec<Target> {
        let mut out = Vec::with_capacity(model.clusters.len());
        for c in model.clusters.values() {
            let name = c.name.to_string();
            let running = observed.get(&name).and_then(|o| o.addr);
            let previous = self
                .applied
                .as_ref()
                .and_then(|m| m.get(&c.name))
                .map(|p| &p.source.addr);
            let source_changed = previous != Some(&c.source.addr);
            let addr = match (&c.source.ip, &c.source.addr.host) {
                (Some(ip), _) => Some(*ip),
                (None, Host::Ip(ip)) => Some(*ip),
                // Unchanged name: keep what HAProxy resolved, rather than
                // cut sessions because DNS answered in another order.
                (None, Host::Name(_)) if !source_changed && running.is_some() => running,
                (None, Host::Name(host)) => self.resolve(host, c.source.addr.port, running).await,
            };
            let overridden = self.overrides.get(&name);
            out.push(Target {
                bind_port: c.bind_port,
                addr,
                port: c.source.addr.port,
                fenced: c.fenced() || overridden.is_some(),
                fence_reason: c
                    .fence
                    .as_ref()
                    .map(|f| f.to_string())
                    .or_else(|| overridden.map(|why| format!("cut off from Consul: {why}"))),
                name,
                source: c.source.addr.to_string(),
                source_changed,
            });
        }
        out
    }

    async fn resolve(&self, host: &str, port: u16, running: Option<IpAddr>) -> Option<IpAddr> {
        let lookup = tokio::net::lookup_host((host, port));
        match tokio::time::timeout(self.cfg.haproxy.command_timeout, lookup).await {
            Ok(Ok(addrs)) => {
                let ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                match running {
                    Some(r) if ips.contains(&r) => Some(r),
                    _ => ips.first().copied(),
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(host, error = %e, "cannot resolve source; a reload will");
                None
            }
            Err(_) => {
                tracing::warn!(host, "resolving source timed out; a reload will");
                None
            }
        }
    }
}

/// The daemon: watch, render on every change, retry failures, take a new
/// config from `reconfig` (SIGHUP), until `cancel` fires. A cycle in flight
/// finishes first.
pub async fn run(
    mut engine: Engine,
    consul: successover_common::consul::Consul,
    mut reconfig: mpsc::Receiver<Reconfig>,
    contact: Contact,
    poke: Arc<Notify>,
    cancel: CancellationToken,
) {
    // The watches keep the settings they start with (see `reconfigure`).
    let cfg = engine.cfg.clone();
    let (tx, mut rx) = mpsc::channel::<Update>(16);
    let watchers = watch::spawn(
        &consul,
        &cfg.keys,
        cfg.watch.wait,
        cfg.watch.min_interval,
        tx,
        cancel.clone(),
    );
    let mut snapshot = Snapshot::default();
    // When the oldest change not yet applied was seen.
    let mut pending_since: Option<Instant> = None;
    let mut retry_at: Option<Instant> = None;
    let mut retry_delay = cfg.watch.retry_interval;
    // systemd's watchdog is fed from this loop and nowhere else, so a loop
    // stuck in a cycle stops the pings and gets restarted. The loop may
    // otherwise sleep for a whole blocking query (minutes): the timer below
    // wakes it in time.
    let ping_every = systemd::watchdog_interval().map(|w| w / 2);
    let mut next_ping = Instant::now();

    loop {
        if let Some(every) = ping_every {
            let now = Instant::now();
            if now >= next_ping {
                systemd::watchdog();
                next_ping = now + every;
            }
        }
        let mut dirty = false;
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = sleep_until_opt(ping_every.map(|_| next_ping)) => continue,
            update = rx.recv() => match update {
                Some(u) => dirty |= absorb(&mut snapshot, u, &mut pending_since, &engine.metrics, &contact),
                None => break,
            },
            _ = poke.notified() => {
                if !engine.overrides.is_empty() {
                    match watch::refresh(&consul, &cfg.keys, &mut snapshot).await {
                        Ok(()) => {
                            let lifted = engine.overrides.take_all();
                            tracing::info!(clusters = ?lifted.keys().collect::<Vec<_>>(), "Consul answers again: KV read afresh, rendering from it");
                            dirty = true;
                        }
                        Err(e) => tracing::warn!("Consul answers again but KV cannot be read yet; clusters stay out: {}", report(&e)),
                    }
                }
            }
            _ = sleep_until_opt(retry_at) => dirty = true,
            Some(r) = reconfig.recv() => {
                let tree = snapshot.complete().then(|| snapshot.tree());
                match engine.reconfigure(r, tree.as_ref()).await {
                    Ok(kept) => {
                        engine.metrics.config_reload("applied");
                        if !kept.is_empty() {
                            tracing::warn!(settings = ?kept, "config reload: these take effect only at restart; the running values stay");
                        }
                        tracing::info!(template = engine.template.origin(), "config reloaded");
                        retry_delay = engine.cfg.watch.retry_interval;
                        dirty = true;
                    }
                    Err(e) => {
                        engine.metrics.config_reload("failed");
                        tracing::error!(stage = e.stage(), "config reload rejected, the running config and template stay: {}", report(&e));
                    }
                }
                // Ends the RELOADING=1 sent on SIGHUP, applied or refused.
                systemd::reloaded();
            }
        }
        // Fold in everything already queued: render the latest state once.
        while let Ok(u) = rx.try_recv() {
            dirty |= absorb(
                &mut snapshot,
                u,
                &mut pending_since,
                &engine.metrics,
                &contact,
            );
        }
        if !dirty || !snapshot.complete() {
            continue;
        }
        // Slow HAProxy (a `haproxy -c` or a reload near its timeout) keeps
        // the pings going; a cycle stuck past every timeout stops them.
        let budget = cycle_budget(&engine.cfg);
        engine.kv_index = snapshot.max_index();
        match systemd::watch(engine.cycle(&snapshot.tree()), budget).await {
            Ok(r) => {
                engine
                    .metrics
                    .success(pending_since.take().map(|t| t.elapsed()));
                // Start-up is done at the first config HAProxy serves:
                // only then does `systemctl start` return.
                if !systemd::notifier().is_ready() {
                    systemd::ready();
                }
                retry_delay = engine.cfg.watch.retry_interval;
                // Nothing in KV says when a port another program holds is
                // free again.
                retry_at = r.held_back.then(|| Instant::now() + retry_delay);
            }
            Err(e) => {
                tracing::error!(stage = e.stage(), retry_in = ?retry_delay, "render failed, last good config keeps serving: {}", report(&e));
                retry_at = Some(Instant::now() + retry_delay);
                retry_delay = (retry_delay * 2).min(Duration::from_secs(60));
            }
        }
    }
    cancel.cancel();
    for w in watchers {
        let _ = w.await;
    }
}

/// The longest one cycle may legitimately take: `haproxy -c`, a reload and
/// the runtime commands around them, each bounded by its own timeout.
fn cycle_budget(cfg: &Config) -> Duration {
    let h = &cfg.haproxy;
    h.check_timeout + h.reload_timeout + h.command_timeout * 8 + Duration::from_secs(30)
}

/// Whether another program holds `ip:port` so that HAProxy's bind would
/// fail. The probe binds without listening (no client can reach it), with
/// SO_REUSEADDR as HAProxy does, so leftovers in TIME_WAIT do not count.
/// Only EADDRINUSE counts: a port the renderer may not bind (below 1024,
/// say) is for HAProxy to judge.
pub fn port_in_use(ip: IpAddr, port: u16) -> bool {
    let socket = match ip {
        IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    };
    let Ok(socket) = socket else {
        return false;
    };
    if socket.set_reuseaddr(true).is_err() {
        return false;
    }
    matches!(
        socket.bind(std::net::SocketAddr::new(ip, port)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse
    )
}

fn absorb(
    snapshot: &mut Snapshot,
    update: Update,
    pending_since: &mut Option<Instant>,
    metrics: &Metrics,
    contact: &Contact,
) -> bool {
    match update.result {
        Ok(pairs) => {
            contact.touch();
            let changed = snapshot.set(update.part, pairs);
            if changed {
                pending_since.get_or_insert(update.seen);
            }
            changed
        }
        Err(e) => {
            metrics.error("consul");
            tracing::warn!(part = ?update.part, "watch failed, last good config keeps serving: {}", report(&e));
            false
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Checks that a template renders a representative model (`--check-config`).
pub fn check_template(template: &Template, cfg: &Config) -> Result<String, TemplateError> {
    use crate::model::{Cluster, Fence, Source};
    use successover_common::contract::{parse_host_port, ClusterName};
    let sample = |name: &str, port: u16, source: &str, fence: Option<Fence>| {
        let addr = parse_host_port(source).expect("sample address");
        Cluster {
            name: ClusterName::parse(name).expect("sample name"),
            bind_port: port,
            source: Source {
                ip: addr.host.ip(),
                addr,
            },
            fence,
        }
    };
    let clusters: BTreeMap<_, _> = [
        sample("sample-routed", 13306, "192.0.2.1:3306", None),
        sample(
            "sample-fenced",
            13307,
            "db.example.com:3306",
            Some(Fence::Failed),
        ),
    ]
    .into_iter()
    .map(|c| (c.name.clone(), c))
    .collect();
    template.render_model(
        &Model { clusters },
        &cfg.haproxy.template,
        &cfg.template_vars,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probes_ports_held_by_others() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let held = std::net::TcpListener::bind((ip, 0)).unwrap();
        let port = held.local_addr().unwrap().port();
        assert!(port_in_use(ip, port));
        assert!(port_in_use("0.0.0.0".parse().unwrap(), port), "wildcard");
        drop(held);
        // Another test may take the freed ephemeral port at once: a port
        // seen free twice in a row (the probe itself leaves nothing bound)
        // in one of a few tries is the proof.
        let free_twice = |port: u16| !port_in_use(ip, port) && !port_in_use(ip, port);
        let mut seen_free = free_twice(port);
        for _ in 0..5 {
            if seen_free {
                break;
            }
            let held = std::net::TcpListener::bind((ip, 0)).unwrap();
            let port = held.local_addr().unwrap().port();
            assert!(port_in_use(ip, port));
            drop(held);
            seen_free = free_twice(port);
        }
        assert!(seen_free, "a released port never looked free");
    }
}
