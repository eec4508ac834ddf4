//! The runner: its state, the loop, and one round (writers, fault, repair,
//! healthy, check).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use successover_common::procedure::HistoryEntry;

use super::monitors::Monitors;
use super::options::{ChaosOptions, FaultKind, Rng};
use super::report::{fmt_duration, fmt_ms, FaultRecord, Report};
use super::say::Say;
use super::world::World;
use super::writers::Writer;
use super::WRITES_LAND_TIMEOUT;
use crate::writer::{self, unix_ms, WriterLog};

/// A fault that ended the run: the system did not come back.
#[derive(Debug)]
pub(super) struct Fatal(pub(super) String);

pub(super) struct Runner {
    pub(super) opts: ChaosOptions,
    pub(super) rng: Rng,
    pub(super) w: World,
    pub(super) mon: Option<Monitors>,
    pub(super) say: Say,
    pub(super) report: Report,
    /// Every acknowledged write id so far.
    pub(super) acked: Vec<u64>,
    pub(super) lost: HashSet<u64>,
    pub(super) next_writer_id: u32,
    pub(super) writers_dir: PathBuf,
    /// (node, unix ms) of every SIGCONT of a mysqld and heal of a host.
    pub(super) revived: Vec<(String, u64)>,
    /// Finished history entries already counted, by id and outcome.
    pub(super) counted: HashSet<String>,
    pub(super) history_cache: HashMap<String, HistoryEntry>,
    pub(super) deck: Vec<FaultKind>,
    pub(super) seen: HashSet<FaultKind>,
    /// Monitor findings before this time were reported by an earlier check.
    pub(super) checked_until_ms: u64,
    pub(super) reported_overlaps: HashSet<(String, String, u64)>,
    pub(super) agent_generation: usize,
    /// Every server id ever used → node (a rebuilt server gets a new id).
    pub(super) server_names: HashMap<u32, String>,
    pub(super) next_server_id: u32,
    /// Rebuilt servers running with relaxed flush settings until they
    /// caught up.
    pub(super) relaxed: HashSet<usize>,
}

/// Runs the chaos loop and returns the report; violations are in
/// [`Report::violations`] (the run itself only fails when the system
/// cannot be started).
pub async fn run(opts: ChaosOptions) -> anyhow::Result<Report> {
    anyhow::ensure!(
        opts.netns || !opts.faults.contains(&FaultKind::Partition),
        "partition faults need the database hosts in network namespaces"
    );
    std::fs::create_dir_all(&opts.log_dir)
        .with_context(|| format!("creating {}", opts.log_dir.display()))?;
    let writers_dir = opts.log_dir.join("writers");
    std::fs::create_dir_all(&writers_dir)?;
    let say = Say::new(&opts.log_dir);
    say.line(format!(
        "chaos: seed {}, {} of faults ({}), {} writer(s), logs in {}",
        opts.seed,
        fmt_duration(opts.duration),
        opts.faults
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(","),
        opts.writers,
        opts.log_dir.display()
    ));
    let w = World::start(&opts, &say).await;
    let mut r = Runner {
        rng: Rng::new(opts.seed),
        report: Report {
            seed: opts.seed,
            netns: opts.netns,
            log_dir: opts.log_dir.clone(),
            ..Report::default()
        },
        mon: None,
        w,
        say,
        acked: Vec::new(),
        lost: HashSet::new(),
        next_writer_id: 1,
        writers_dir,
        revived: Vec::new(),
        counted: HashSet::new(),
        history_cache: HashMap::new(),
        deck: Vec::new(),
        seen: HashSet::new(),
        checked_until_ms: 0,
        reported_overlaps: HashSet::new(),
        agent_generation: 0,
        server_names: HashMap::new(),
        next_server_id: 0,
        relaxed: HashSet::new(),
        opts,
    };
    for db in r.w.topo.servers() {
        r.server_names.insert(db.server_id(), db.name().to_owned());
        r.next_server_id = r.next_server_id.max(db.server_id() + 1);
    }
    let started = Instant::now();
    let result = r.run_loop(started).await;
    if let Err(Fatal(why)) = result {
        r.violation(format!("run stopped: {why}"));
        r.say
            .line(format!("state at the stop:\n{}", r.describe().await));
    }
    r.report.elapsed = started.elapsed();
    if let Some(m) = r.mon.take() {
        {
            let d = m.data.lock().unwrap();
            r.report.read_only_samples = d.samples.iter().map(|s| s.len() as u64).sum();
            r.report.kv_changes = d.kv.len() as u64;
        }
        m.finish().await;
    }
    r.w.collect_logs(&r.opts.log_dir);
    r.say.line("logs collected");
    Ok(r.report)
}

impl Runner {
    pub(super) fn violation(&mut self, v: String) {
        self.say.line(format!("VIOLATION: {v}"));
        self.report.violations.push(v);
    }

    async fn run_loop(&mut self, started: Instant) -> Result<(), Fatal> {
        self.wait_healthy("start").await?;
        self.mon = Some(Monitors::start(&self.w));
        self.checked_until_ms = unix_ms();
        // Count nothing that happened before the first fault.
        for e in self.history().await {
            self.counted.insert(format!("{}:{:?}", e.id, e.outcome));
        }
        if self.opts.sabotage {
            self.round(0, None).await?;
        }
        let mut n = 0;
        while started.elapsed() < self.opts.duration
            && self.opts.max_faults.is_none_or(|m| n < m)
            && !self.opts.stop.is_cancelled()
        {
            n += 1;
            let kind = self.next_kind();
            self.round(n, Some(kind)).await?;
        }
        Ok(())
    }

    /// Writers, a fault (`None`: the sabotage), repair, healthy, check.
    async fn round(&mut self, n: usize, kind: Option<FaultKind>) -> Result<(), Fatal> {
        let writers = self.start_writers().await;
        tokio::time::sleep(self.rng.millis(800, 1500)).await;
        let mut rec = FaultRecord {
            n,
            started_ms: unix_ms(),
            ..FaultRecord::default()
        };
        let outcome = match kind {
            Some(kind) => self.fault(kind, &mut rec).await,
            None => self.sabotage(&mut rec).await,
        };
        let outcome = match outcome {
            Ok(()) => self.repair(&mut rec).await,
            Err(e) => Err(e),
        };
        let repaired = Instant::now();
        let outcome = match outcome {
            Ok(()) => self.wait_healthy(&rec.label).await,
            Err(e) => Err(e),
        };
        rec.recovery_ms = repaired.elapsed().as_millis() as u64;
        if outcome.is_ok() {
            rec.notes
                .push(format!("healthy {} ms after the repair", rec.recovery_ms));
            self.writes_land(&writers).await;
        }
        let logs = self.stop_writers(writers).await;
        self.count_procedures(&mut rec).await;
        rec.finished_ms = unix_ms();
        self.check(&mut rec, &logs, outcome.is_ok()).await;
        self.say.line(format!(
            "#{n} {} {}: {} | worst write gap {}",
            rec.label,
            rec.target,
            rec.notes.join("; "),
            fmt_ms(rec.worst_gap_ms)
        ));
        self.report.faults.push(rec);
        outcome
    }

    async fn start_writers(&mut self) -> Vec<Writer> {
        let mut out = Vec::new();
        for _ in 0..self.opts.writers {
            let id = self.next_writer_id;
            self.next_writer_id += 1;
            out.push(Writer::start(self.w.proxy_port.port(), id, &self.writers_dir).await);
        }
        out
    }

    /// Waits until each writer's writes land on the published source, so
    /// every writer ends the round on the healthy system (its log then
    /// holds writes after the repair, and its longest gap is the fault's).
    /// A writer that does not get there is left to the checks.
    async fn writes_land(&self, writers: &[Writer]) {
        let Ok((si, _)) = self.source().await else {
            return;
        };
        let url = self.w.topo.server(si).url();
        for w in writers {
            let _ = writer::wait_writes_land(&url, w.id(), WRITES_LAND_TIMEOUT).await;
        }
    }

    async fn stop_writers(&mut self, writers: Vec<Writer>) -> Vec<WriterLog> {
        let mut logs = Vec::new();
        for w in writers {
            match w.finish().await {
                Ok(log) => logs.push(log),
                Err(e) => self.violation(format!("a writer's log is unreadable: {e:#}")),
            }
        }
        logs
    }

    pub(super) async fn source(&self) -> Result<(usize, String), Fatal> {
        let name = self
            .w
            .published()
            .await
            .ok_or_else(|| Fatal("no published source".into()))?;
        Ok((self.w.index_of(&name), name))
    }
}

pub(super) fn fatal(e: impl std::fmt::Display) -> Fatal {
    Fatal(e.to_string())
}
