//! One render cycle (model → template → `haproxy -c` → write → apply) and
//! the daemon loop around it. Any failure leaves the last good config
//! serving: nothing is written before it validated, and HAProxy is only
//! touched with a config that was written.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use successover_common::contract::Host;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::apply::{self, ApiError, ApplyPlan, Executed, Haproxy, Observed, Target};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::{self, Built, Model, Tree};
use crate::template::{Template, TemplateError};
use crate::validate::{ValidateError, Validator};
use crate::watch::{self, Snapshot, Update};
use crate::write::{self, WriteError, WriteOutcome};

/// `error: cause: cause`, for log lines.
pub fn report(err: &dyn Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

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
}

impl Engine {
    pub fn new(cfg: Arc<Config>, template: Template, metrics: Arc<Metrics>) -> Self {
        let h = &cfg.haproxy;
        Engine {
            validator: Validator {
                binary: h.binary.clone(),
                timeout: h.check_timeout,
            },
            haproxy: Haproxy {
                admin_socket: h.admin_socket.clone(),
                master_socket: h.master_socket.clone(),
                reload: h.reload.clone(),
                command_timeout: h.command_timeout,
                reload_timeout: h.reload_timeout,
            },
            template,
            metrics,
            good: Model::default(),
            applied: None,
            written_since_apply: false,
            reported: BTreeSet::new(),
            cfg,
        }
    }

    fn build(&mut self, tree: &Tree) -> Built {
        let built = model::build(&self.cfg.keys, tree, &self.good);
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
        built
    }

    /// Builds and renders without touching anything (`--dry-run`).
    pub fn preview(&mut self, tree: &Tree) -> Result<String, TemplateError> {
        let built = self.build(tree);
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
        let built = self.build(tree);
        let text = self
            .render_text(&built.model)
            .map_err(CycleError::Template)?;

        let path = self.cfg.haproxy.config.clone();
        let current = tokio::fs::read(&path).await.ok();
        let written = if current.as_deref() == Some(text.as_bytes()) {
            false
        } else {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
                _ => Path::new(".").to_owned(),
            };
            self.validator
                .check(&text, &dir)
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
        let plan = apply::plan(
            &targets,
            &observed,
            binds.as_ref(),
            self.written_since_apply,
        );
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
        self.applied = Some(built.model);
        self.written_since_apply = false;
        Ok(CycleReport {
            written,
            plan,
            executed,
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
            out.push(Target {
                name,
                bind_port: c.bind_port,
                addr,
                port: c.source.addr.port,
                fenced: c.fenced(),
                fence_reason: c.fence.as_ref().map(|f| f.to_string()),
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

/// The daemon: watch, render on every change, retry failures, until
/// `cancel` fires. A cycle in flight finishes first.
pub async fn run(
    mut engine: Engine,
    consul: successover_common::consul::Consul,
    cancel: CancellationToken,
) {
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

    loop {
        let mut dirty = false;
        tokio::select! {
            _ = cancel.cancelled() => break,
            update = rx.recv() => match update {
                Some(u) => dirty |= absorb(&mut snapshot, u, &mut pending_since, &engine.metrics),
                None => break,
            },
            _ = sleep_until_opt(retry_at) => dirty = true,
        }
        // Fold in everything already queued: render the latest state once.
        while let Ok(u) = rx.try_recv() {
            dirty |= absorb(&mut snapshot, u, &mut pending_since, &engine.metrics);
        }
        if !dirty || !snapshot.complete() {
            continue;
        }
        match engine.cycle(&snapshot.tree()).await {
            Ok(_) => {
                engine
                    .metrics
                    .success(pending_since.take().map(|t| t.elapsed()));
                retry_at = None;
                retry_delay = cfg.watch.retry_interval;
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

fn absorb(
    snapshot: &mut Snapshot,
    update: Update,
    pending_since: &mut Option<Instant>,
    metrics: &Metrics,
) -> bool {
    match update.result {
        Ok(pairs) => {
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
