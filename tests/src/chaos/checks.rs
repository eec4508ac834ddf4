//! The invariants checked after each fault: acknowledged writes, errant
//! GTIDs, one writable server, and the background monitors' findings.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;
use mysql_async::prelude::*;

use super::analysis::{
    errant, longest_gap_ms, overlaps, parse_binlog_state, route_allowed, state_at,
    writable_intervals, KvState,
};
use super::report::FaultRecord;
use super::runner::Runner;
use super::{ROUTE_GRACE_MS, SELF_FENCE_GRACE_MS};
use crate::mariadb::{
    conn_is_mysql, global_var, gtid_subtract, replica_status, status_var, MariaDb,
};
use crate::writer::{self, unix_ms, WriterLog};

impl Runner {
    /// The invariants, after the system is healthy again (or not).
    pub(super) async fn check(&mut self, rec: &mut FaultRecord, logs: &[WriterLog], healthy: bool) {
        let n = rec.n;
        for log in logs {
            self.acked.extend(log.acked.iter().map(|(id, _)| *id));
            self.report.writes_acked += log.acked.len() as u64;
            self.report.writes_failed_attempts += log.failed;
            rec.worst_gap_ms = rec.worst_gap_ms.max(longest_gap_ms(log));
        }
        let silent = logs.iter().filter(|l| l.acked.is_empty()).count();
        if silent > 0 {
            self.violation(format!(
                "fault #{n}: {silent} writer(s) got no write acknowledged in the whole round"
            ));
        }
        if healthy {
            self.check_data(n).await;
        }
        self.check_monitors(n).await;
    }

    /// Acknowledged writes on the published source; no errant GTIDs; the
    /// published source is the only writable node.
    async fn check_data(&mut self, n: usize) {
        let Some(source) = self.w.published().await else {
            self.violation(format!("fault #{n}: no published source at the check"));
            return;
        };
        let (present, others, s) = {
            let sdb = self.w.topo.server(self.w.index_of(&source));
            let present = async {
                let mut c = sdb.conn().await?;
                let ids: Vec<u64> = c
                    .query(format!("SELECT id FROM {}.writes", writer::SCHEMA))
                    .await?;
                c.disconnect().await.ok();
                anyhow::Ok(ids.into_iter().collect::<HashSet<u64>>())
            }
            .await;
            // Errant GTIDs: read the source last (its state only grows).
            let mut others = Vec::new();
            for db in self.w.topo.servers() {
                if db.name() != source {
                    others.push((db.name().to_owned(), node_state(db).await));
                }
            }
            (present, others, node_state(sdb).await)
        };
        match present {
            Ok(present) => {
                let missing: Vec<u64> = self
                    .acked
                    .iter()
                    .filter(|id| !present.contains(id) && !self.lost.contains(id))
                    .copied()
                    .collect();
                if !missing.is_empty() {
                    self.report.writes_lost += missing.len() as u64;
                    self.lost.extend(missing.iter().copied());
                    self.violation(format!(
                        "fault #{n}: {} acknowledged writes missing on {source}, e.g. {:?} (writer {})",
                        missing.len(),
                        &missing[..missing.len().min(5)],
                        missing[0] >> 40
                    ));
                }
            }
            Err(e) => self.violation(format!("fault #{n}: reading writes on {source}: {e:#}")),
        }
        let s = match s {
            Ok(s) => s,
            Err(e) => {
                self.violation(format!("fault #{n}: reading the source {source}: {e:#}"));
                return;
            }
        };
        if s.read_only {
            self.violation(format!(
                "fault #{n}: the published source {source} is read-only"
            ));
        }
        for (name, st) in others {
            match st {
                Ok(st) => {
                    let sdb = self.w.topo.server(self.w.index_of(&source));
                    match errant_gtids(&st.binlog_state, &s.binlog_state, sdb).await {
                        Ok(None) => {}
                        Ok(Some(extra)) => self.violation(format!(
                            "fault #{n}: errant GTIDs on {name} (not on {source}): {extra}"
                        )),
                        Err(e) => self.violation(format!(
                            "fault #{n}: comparing the GTIDs of {name} and {source}: {e:#}"
                        )),
                    }
                    if !st.read_only {
                        self.violation(format!(
                            "fault #{n}: {name} is writable but {source} is the published source"
                        ));
                    }
                }
                Err(e) => self.violation(format!("fault #{n}: reading {name}: {e:#}")),
            }
        }
    }

    /// Findings of the background monitors since the last check.
    async fn check_monitors(&mut self, n: usize) {
        let Some(mon) = &self.mon else { return };
        let now = unix_ms();
        // Writers and probes only report what finished; let the slowest
        // in-flight reading land.
        let until = now.saturating_sub(1000);
        let (routes, per_node, kv) = {
            let d = mon.data.lock().unwrap();
            let routes: Vec<(u64, u32)> = d
                .routes
                .iter()
                .filter(|(t, _)| *t >= self.checked_until_ms && *t < until)
                .copied()
                .collect();
            let per_node: Vec<(String, Vec<(u64, u64)>)> = d
                .samples
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    (
                        self.w.topo.server(i).name().to_owned(),
                        writable_intervals(s),
                    )
                })
                .collect();
            (routes, per_node, d.kv.clone())
        };
        self.report.route_probes += routes.len() as u64;
        let rises: Vec<(u64, String, String)> = {
            let mut d = mon.data.lock().unwrap();
            self.report.no_tx_samples = d.no_tx_samples;
            self.report.unacked_commits = d.no_tx_rises_counted;
            std::mem::take(&mut d.no_tx_rises)
        };
        for (at, node, what) in rises {
            self.violation(format!(
                "fault #{n}: {node} may have acknowledged commits without a semi-sync ACK at {at} (unix ms): {what}"
            ));
        }
        let mut stray: BTreeMap<String, (u64, u64, usize)> = BTreeMap::new();
        for (at, id) in &routes {
            let node = self
                .server_names
                .get(id)
                .cloned()
                .unwrap_or_else(|| format!("server id {id}"));
            if !route_allowed(&kv, &node, *at, ROUTE_GRACE_MS) {
                let e = stray.entry(node).or_insert((*at, *at, 0));
                e.1 = *at;
                e.2 += 1;
            }
        }
        for (node, (first, last, count)) in stray {
            let state = state_at(&kv, first.saturating_sub(ROUTE_GRACE_MS))
                .map(KvState::describe)
                .unwrap_or_default();
            self.violation(format!(
                "fault #{n}: {count} connection(s) through HAProxy answered by {node} between {first} and {last} (unix ms) while KV said: {state}"
            ));
        }
        for o in overlaps(&per_node) {
            if o.to_ms < self.checked_until_ms.saturating_sub(5000) {
                continue;
            }
            let key = (o.a.clone(), o.b.clone(), o.from_ms);
            if !self.reported_overlaps.insert(key) {
                continue;
            }
            let revived = |node: &str| {
                self.revived.iter().any(|(r, at)| {
                    r == node && *at <= o.from_ms + 500 && o.to_ms <= at + SELF_FENCE_GRACE_MS
                })
            };
            // A returning old source is exempt only while KV never made it
            // the routable source (published, unfenced, not quarantined)
            // during the overlap; a failover may still be running when it
            // wakes up, with the cluster fenced.
            let routable = |x: &str| route_allowed(&kv, x, o.to_ms, o.to_ms - o.from_ms);
            let published = state_at(&kv, o.from_ms)
                .map(KvState::describe)
                .unwrap_or_default();
            let stale = [&o.a, &o.b]
                .into_iter()
                .find(|x| revived(x) && !routable(x));
            match stale {
                Some(node) => {
                    // The old source came back and stayed writable until
                    // its agent fenced it; see SELF_FENCE_GRACE_MS.
                    let since = self
                        .revived
                        .iter()
                        .filter(|(r, at)| r == node && *at <= o.from_ms + 500)
                        .map(|(_, at)| *at)
                        .max()
                        .unwrap_or(o.from_ms);
                    self.report.longest_self_fence_ms = self
                        .report
                        .longest_self_fence_ms
                        .max(o.to_ms.saturating_sub(since));
                }
                None => self.violation(format!(
                    "fault #{n}: {} and {} both writable from {} to {} ({} ms; KV: {published})",
                    o.a,
                    o.b,
                    o.from_ms,
                    o.to_ms,
                    o.to_ms - o.from_ms,
                )),
            }
        }
        self.checked_until_ms = until;
    }

    /// Everything a reader of a failed run wants first.
    pub(super) async fn describe(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "published {:?}, quarantined {:?}, coordinator {:?}",
            self.w.published().await,
            self.w.quarantined().await,
            self.w.coordinator().await
        );
        for db in self.w.topo.servers() {
            let _ = writeln!(out, "{}: {:?}", db.name(), node_state(db).await);
        }
        for (i, a) in self.w.agents.iter().enumerate() {
            let _ = writeln!(
                out,
                "--- agent {}:\n{}",
                self.w.agent_opts[i].node,
                a.log_tail(15)
            );
        }
        let _ = writeln!(out, "--- renderer:\n{}", self.w.renderer.log_tail(10));
        out
    }
}

/// GTIDs as one server reports them.
#[derive(Debug, Clone)]
pub(super) enum Gtids {
    /// A MariaDB position or binlog state: (domain, server id, seq).
    MariaDb(Vec<(u32, u32, u64)>),
    /// A MySQL GTID set, as the server prints it (without line breaks).
    MySql(String),
}

impl Gtids {
    fn read(mysql: bool, text: &str) -> anyhow::Result<Gtids> {
        Ok(if mysql {
            Gtids::MySql(text.replace('\n', ""))
        } else {
            Gtids::MariaDb(parse_binlog_state(text)?)
        })
    }
}

/// The GTIDs `node` holds and `source` (read from `source_db` after the
/// node) does not, described; `None` when there are none. MariaDB:
/// [`errant`] on binlog states. MySQL: the executed sets' difference,
/// computed by the source.
pub(super) async fn errant_gtids(
    node: &Gtids,
    source: &Gtids,
    source_db: &MariaDb,
) -> anyhow::Result<Option<String>> {
    match (node, source) {
        (Gtids::MariaDb(node), Gtids::MariaDb(source)) => {
            let extra = errant(node, source);
            Ok((!extra.is_empty()).then(|| format!("{extra:?}")))
        }
        (Gtids::MySql(node), Gtids::MySql(source)) => {
            let extra = subtract_on(source_db, node, source).await?;
            if extra.is_empty() {
                return Ok(None);
            }
            // MySQL shows a commit in gtid_executed only once its semi-sync
            // ACK came (AFTER_SYNC), so a replica may apply a GTID (an
            // agent's heartbeat) before its source shows it; unlike
            // MariaDB's binlog state, reading the source last does not
            // cover that. Such a GTID shows on the source moments later,
            // an errant one never does.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = node_state(source_db).await?.binlog_state;
            let Gtids::MySql(now) = now else {
                anyhow::bail!("{}: not a MySQL GTID set: {now:?}", source_db.name());
            };
            let extra = subtract_on(source_db, &extra, &now).await?;
            Ok((!extra.is_empty()).then_some(extra))
        }
        _ => anyhow::bail!("GTIDs of two flavours: {node:?} and {source:?}"),
    }
}

/// `set` minus `minus` (MySQL sets), computed by `db`.
pub(super) async fn subtract_on(db: &MariaDb, set: &str, minus: &str) -> anyhow::Result<String> {
    let run = async {
        let mut c = tokio::time::timeout(Duration::from_secs(3), db.conn())
            .await
            .context("connect timed out")??;
        let rest = gtid_subtract(&mut c, set, minus).await?;
        c.disconnect().await.ok();
        anyhow::Ok(rest)
    };
    tokio::time::timeout(Duration::from_secs(8), run)
        .await
        .with_context(|| format!("{}: GTID_SUBTRACT timed out", db.name()))?
}

/// What the checks read from one server.
#[derive(Debug)]
pub(super) struct NodeState {
    /// `@@read_only`: ordinary accounts cannot write (on both flavours
    /// accounts with more privileges may; see [`MariaDb::set_read_only`]).
    pub(super) read_only: bool,
    pub(super) semi_sync_source: bool,
    pub(super) semi_sync_clients: u32,
    /// (source host, port, IO running, SQL running).
    pub(super) replicating: Option<(String, u16, bool, bool)>,
    /// Every GTID in its binlog: MariaDB's `@@gtid_binlog_state`, MySQL's
    /// `@@gtid_executed`.
    pub(super) binlog_state: Gtids,
    /// What it wrote and what it holds, applied or written: MariaDB's
    /// `@@gtid_binlog_pos` and `@@gtid_current_pos`; on MySQL both are
    /// `@@gtid_executed`, which with `log_replica_updates` is both.
    pub(super) binlog_pos: Gtids,
    pub(super) current_pos: Gtids,
}

pub(super) async fn node_state(db: &MariaDb) -> anyhow::Result<NodeState> {
    let read = async {
        let mut c = tokio::time::timeout(Duration::from_secs(3), db.conn())
            .await
            .context("connect timed out")??;
        let mysql = conn_is_mysql(&c);
        let read_only = global_var(&mut c, "read_only").await? == "1";
        let semi_sync_source = global_var(&mut c, "rpl_semi_sync_master_enabled").await? == "1";
        let semi_sync_clients = status_var(&mut c, "Rpl_semi_sync_master_clients")
            .await?
            .parse()
            .unwrap_or(0);
        let replicating = replica_status(&mut c).await?.map(|s| {
            let get = |k: &str| s.get(k).cloned().unwrap_or_default();
            (
                get("Master_Host"),
                get("Master_Port").parse().unwrap_or(0),
                get("Slave_IO_Running") == "Yes",
                get("Slave_SQL_Running") == "Yes",
            )
        });
        let (binlog_state, binlog_pos, current_pos) = if mysql {
            // One set stands for all three; read once, so they agree.
            let executed = Gtids::read(true, &global_var(&mut c, "gtid_executed").await?)?;
            (executed.clone(), executed.clone(), executed)
        } else {
            (
                Gtids::read(false, &global_var(&mut c, "gtid_binlog_state").await?)?,
                Gtids::read(false, &global_var(&mut c, "gtid_binlog_pos").await?)?,
                Gtids::read(false, &global_var(&mut c, "gtid_current_pos").await?)?,
            )
        };
        c.disconnect().await.ok();
        anyhow::Ok(NodeState {
            read_only,
            semi_sync_source,
            semi_sync_clients,
            replicating,
            binlog_state,
            binlog_pos,
            current_pos,
        })
    };
    tokio::time::timeout(Duration::from_secs(8), read)
        .await
        .context("timed out")?
}
