//! The faults: the deck they are drawn from, their targets, and each kind
//! of fault with its own undo; also the deliberate sabotage.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::Signal;
use successover_common::procedure::{Outcome, ProcedureKind};

use super::options::FaultKind;
use super::report::FaultRecord;
use super::runner::{fatal, Fatal, Runner};
use super::world::RENDER_CONSUL;
use super::PREFIX;
use crate::writer::unix_ms;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Source,
    Replica,
}

impl Runner {
    /// Breaks two invariants on purpose: a switchover while the renderer
    /// is stopped (HAProxy keeps routing to the old, fenced source), and the
    /// old source made writable again while every agent is stopped (two
    /// writable servers). The checks must report both.
    pub(super) async fn sabotage(&mut self, rec: &mut FaultRecord) -> Result<(), Fatal> {
        rec.label = "sabotage".into();
        let (si, source) = self.source().await?;
        let ti = (si + 1) % self.w.topo.servers().len();
        let target = self.w.topo.server(ti).name().to_owned();
        rec.target = format!("{source} -> {target}");
        self.w.renderer.signal(Signal::SIGSTOP).map_err(fatal)?;
        let before = self.history_ids().await;
        let key = format!("{PREFIX}switchover/{}", self.w.cluster);
        self.w
            .kv()
            .kv_put(&key, target.clone())
            .await
            .map_err(fatal)?;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            let done = self.history().await.into_iter().any(|e| {
                e.kind == ProcedureKind::Switchover
                    && !before.contains(&e.id)
                    && e.outcome != Outcome::Running
            });
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        self.w.renderer.signal(Signal::SIGCONT).map_err(fatal)?;
        rec.notes
            .push("switched over with the renderer stopped for 3 s".into());
        // The renderer catches up: HAProxy routes to the published source.
        let _ = crate::wait_until(Duration::from_secs(10), || async {
            let Some(published) = self.w.published().await else {
                return false;
            };
            let id = self.w.topo.server(self.w.index_of(&published)).server_id();
            self.w.proxied_server_id().await == Some(id)
        })
        .await;
        for a in &self.w.agents {
            signal_pid(a.pid(), Signal::SIGSTOP).map_err(fatal)?;
        }
        let old = self.w.topo.server(si);
        old.set_read_only(false).await.map_err(fatal)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        old.set_read_only(true).await.map_err(fatal)?;
        for a in &self.w.agents {
            signal_pid(a.pid(), Signal::SIGCONT).map_err(fatal)?;
        }
        rec.notes
            .push(format!("{source} writable for 2 s next to {target}"));
        Ok(())
    }

    /// Each enabled kind once per deck, in a shuffled order: every kind
    /// comes up within `faults.len()` faults.
    pub(super) fn next_kind(&mut self) -> FaultKind {
        if self.deck.is_empty() {
            self.deck = self.opts.faults.clone();
            self.rng.shuffle(&mut self.deck);
        }
        self.deck.pop().expect("non-empty deck")
    }

    /// The first fault of each database kind hits the source; later ones
    /// the source or a replica at random.
    fn role(&mut self, kind: FaultKind) -> Role {
        let first = self.seen.insert(kind);
        let coin = self.rng.chance(50);
        if first || coin {
            Role::Source
        } else {
            Role::Replica
        }
    }

    /// A node of `role`: the published source, or a random other node.
    async fn pick(&mut self, role: Role) -> Result<(usize, String), Fatal> {
        let (si, s) = self.source().await?;
        Ok(match role {
            Role::Source => (si, s),
            Role::Replica => {
                let others: Vec<usize> = (0..self.w.topo.servers().len())
                    .filter(|i| *i != si)
                    .collect();
                let i = others[self.rng.below(others.len() as u64) as usize];
                (i, self.w.topo.server(i).name().to_owned())
            }
        })
    }

    pub(super) async fn fault(
        &mut self,
        kind: FaultKind,
        rec: &mut FaultRecord,
    ) -> Result<(), Fatal> {
        match kind {
            FaultKind::Kill9 | FaultKind::SigStop | FaultKind::Partition => {
                self.mysql_fault(kind, rec).await
            }
            FaultKind::Agent => self.agent_fault(rec).await,
            FaultKind::Render => self.render_fault(rec).await,
            FaultKind::Leader => self.leader_fault(rec).await,
            FaultKind::Switch => self.switch_fault(rec).await,
            FaultKind::Drift => self.drift_fault(rec).await,
            FaultKind::BigTxn => self.big_txn_fault(rec).await,
            FaultKind::ProxyCut => self.proxy_cut_fault(rec).await,
            FaultKind::Hide => self.hide_fault(rec).await,
        }
    }

    async fn mysql_fault(&mut self, kind: FaultKind, rec: &mut FaultRecord) -> Result<(), Fatal> {
        let role = self.role(kind);
        let (i, name) = self.pick(role).await?;
        let role_name = match role {
            Role::Source => "source",
            Role::Replica => "replica",
        };
        rec.label = format!("{}-{role_name}", kind.name());
        rec.target = name.clone();
        let before = self.history_ids().await;
        match kind {
            FaultKind::Kill9 => {
                self.w.topo.server_mut(i).kill9().await;
                if role == Role::Source {
                    self.await_failover(&before, rec).await?;
                } else {
                    tokio::time::sleep(self.rng.millis(2000, 6000)).await;
                }
                self.w.topo.server_mut(i).start_again().await;
                rec.notes.push(format!("{name} restarted"));
            }
            FaultKind::SigStop => {
                self.w.topo.server_mut(i).sigstop().map_err(fatal)?;
                // Half the time the stop lasts until a failover finished
                // (or no failover came), half the time a random 1–10 s:
                // the server may wake during detection or mid-failover.
                if role == Role::Source && self.rng.chance(50) {
                    self.await_failover(&before, rec).await?;
                    tokio::time::sleep(self.rng.millis(0, 2000)).await;
                } else {
                    let hold = self.rng.millis(1000, 10_000);
                    rec.notes.push(format!("stopped {} ms", hold.as_millis()));
                    tokio::time::sleep(hold).await;
                }
                self.w.topo.server_mut(i).sigcont().map_err(fatal)?;
                self.revived.push((name.clone(), unix_ms()));
                rec.notes.push(format!("{name} continued"));
            }
            FaultKind::Partition => {
                let host = &self.w.hosts[i];
                host.cut().await.map_err(fatal)?;
                if role == Role::Source && self.rng.chance(70) {
                    self.await_failover(&before, rec).await?;
                    tokio::time::sleep(self.rng.millis(0, 3000)).await;
                } else {
                    let hold = self.rng.millis(1000, 10_000);
                    rec.notes.push(format!("cut {} ms", hold.as_millis()));
                    tokio::time::sleep(hold).await;
                }
                self.w.hosts[i].heal().await.map_err(fatal)?;
                self.revived.push((name.clone(), unix_ms()));
                rec.notes.push(format!("{name} healed"));
            }
            _ => unreachable!(),
        }
        Ok(())
    }

    /// Waits for a failover that is not in `before` to finish.
    async fn await_failover(
        &mut self,
        before: &HashSet<String>,
        rec: &mut FaultRecord,
    ) -> Result<(), Fatal> {
        let t = Instant::now();
        let deadline = t + Duration::from_secs(60);
        loop {
            let entries = self.history().await;
            if let Some(e) = entries.iter().find(|e| {
                e.kind == ProcedureKind::Failover
                    && !before.contains(&e.id)
                    && e.outcome != Outcome::Running
            }) {
                rec.notes.push(format!(
                    "failover {:?} {} -> {} after {} ms: {}",
                    e.outcome,
                    e.from.as_deref().unwrap_or("?"),
                    e.to.as_deref().unwrap_or("?"),
                    t.elapsed().as_millis(),
                    e.reason
                ));
                return Ok(());
            }
            if Instant::now() > deadline {
                self.violation(format!(
                    "fault #{} {}: no failover finished within 60 s",
                    rec.n, rec.label
                ));
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn agent_fault(&mut self, rec: &mut FaultRecord) -> Result<(), Fatal> {
        // Draw unconditionally: the sequence of draws must not depend on
        // the state of the system, or a seed would not replay the faults.
        let prefer_coordinator = self.rng.chance(50);
        let random = self.rng.below(self.w.agents.len() as u64) as usize;
        let coordinator = self.w.coordinator().await;
        let i = match coordinator.filter(|_| prefer_coordinator) {
            Some(c) => self.w.index_of(&c),
            None => random,
        };
        let name = self.w.agent_opts[i].node.clone();
        let was_coordinator = self.w.coordinator().await.as_deref() == Some(name.as_str());
        let kill = self.rng.chance(50);
        // Either side of the 10 s session TTL.
        let hold = self.rng.millis(2000, 15_000);
        rec.label = format!("agent-{}", if kill { "kill9" } else { "sigstop" });
        rec.target = format!(
            "{name}{}",
            if was_coordinator {
                " (coordinator)"
            } else {
                ""
            }
        );
        if kill {
            self.w.agents[i].kill9().await;
        } else {
            signal_pid(self.w.agents[i].pid(), Signal::SIGSTOP).map_err(fatal)?;
        }
        rec.notes.push(format!("held {} ms", hold.as_millis()));
        tokio::time::sleep(hold).await;
        if kill {
            self.agent_generation += 1;
            let g = self.agent_generation;
            let dir = self.opts.log_dir.clone();
            self.w.restart_agent(i, &dir, g).await;
            rec.notes.push(format!("agent {name} restarted"));
        } else {
            signal_pid(self.w.agents[i].pid(), Signal::SIGCONT).map_err(fatal)?;
            rec.notes.push(format!("agent {name} continued"));
        }
        Ok(())
    }

    async fn render_fault(&mut self, rec: &mut FaultRecord) -> Result<(), Fatal> {
        let kill = self.rng.chance(50);
        let hold = self.rng.millis(1000, 8000);
        rec.label = format!("render-{}", if kill { "kill9" } else { "sigstop" });
        rec.target = "renderer".into();
        if kill {
            self.w.renderer.kill9().await;
        } else {
            self.w.renderer.signal(Signal::SIGSTOP).map_err(fatal)?;
        }
        rec.notes.push(format!("held {} ms", hold.as_millis()));
        tokio::time::sleep(hold).await;
        if kill {
            self.w.restart_renderer().await;
            rec.notes.push("renderer restarted".into());
        } else {
            self.w.renderer.signal(Signal::SIGCONT).map_err(fatal)?;
            rec.notes.push("renderer continued".into());
        }
        Ok(())
    }

    async fn leader_fault(&mut self, rec: &mut FaultRecord) -> Result<(), Fatal> {
        let hold = self.rng.millis(2000, 12_000);
        rec.label = "leader".into();
        let leader = self.w.consul.stop_leader().await;
        let users: Vec<String> = (0..self.w.agents.len())
            .filter(|i| i % self.w.consul.len() == leader)
            .map(|i| format!("agent {}", self.w.agent_opts[i].node))
            .chain((leader == RENDER_CONSUL).then(|| "renderer".to_owned()))
            .collect();
        rec.target = format!("consul server {leader} (serves {})", users.join(", "));
        let new_leader = tokio::time::timeout(Duration::from_secs(60), async {
            self.w.consul.wait_for_leader().await
        })
        .await
        .map_err(|_| Fatal("consul elected no new leader".into()))?;
        rec.notes.push(format!(
            "server {new_leader} leads; restarting {leader} after {} ms",
            hold.as_millis()
        ));
        tokio::time::sleep(hold).await;
        self.w.consul.start_node(leader).await;
        self.w.consul.wait_for_leader().await;
        Ok(())
    }

    /// The timeout stays far above an ACK's time, so the drift itself
    /// cannot switch a healthy source off; what is checked is that the
    /// coordinator puts rule 1 back.
    async fn drift_fault(&mut self, rec: &mut FaultRecord) -> Result<(), Fatal> {
        let (si, source) = self.source().await?;
        rec.label = "drift".into();
        rec.target = source.clone();
        let db = self.w.topo.server(si);
        let sql = db.flavour().sql(
            "SET GLOBAL rpl_semi_sync_master_timeout = 10000; \
             SET GLOBAL rpl_semi_sync_master_wait_no_slave = OFF",
        );
        db.exec(&sql).await.map_err(fatal)?;
        let t = Instant::now();
        let restored = crate::wait_until(Duration::from_secs(20), || async {
            let Ok(mut c) = db.conn().await else {
                return false;
            };
            let timeout = crate::mariadb::global_var(&mut c, "rpl_semi_sync_master_timeout").await;
            let wait =
                crate::mariadb::global_var(&mut c, "rpl_semi_sync_master_wait_no_slave").await;
            timeout.is_ok_and(|v| v.parse::<u64>().is_ok_and(|ms| ms > 10_000))
                && wait.is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("on"))
        })
        .await;
        match restored {
            Ok(()) => rec.notes.push(format!(
                "timeout 10 s and wait_no_slave OFF on {source}; set back after {} ms",
                t.elapsed().as_millis()
            )),
            Err(_) => self.violation(format!(
                "fault #{}: {source} still runs the drifted semi-sync settings 20 s later",
                rec.n
            )),
        }
        Ok(())
    }

    /// About 40 MB in one transaction through the source; once a replica
    /// has read 4 MB of it the source is stopped until the failover ends.
    /// If the transaction's client was told OK, all of it must be on the
    /// new source.
    async fn big_txn_fault(&mut self, rec: &mut FaultRecord) -> Result<(), Fatal> {
        const ROWS: u64 = 10_000;
        let (si, source) = self.source().await?;
        rec.label = "bigtxn-source".into();
        rec.target = source.clone();
        let base = rec.n as u64 * 1_000_000;
        let db = self.w.topo.server(si);
        db.exec(
            "CREATE TABLE IF NOT EXISTS successover_check.chaos_big \
               (id BIGINT PRIMARY KEY, pad LONGTEXT); \
             CREATE TABLE IF NOT EXISTS successover_check.chaos_digit (n INT PRIMARY KEY); \
             INSERT IGNORE INTO successover_check.chaos_digit \
               VALUES (0),(1),(2),(3),(4),(5),(6),(7),(8),(9)",
        )
        .await
        .map_err(fatal)?;
        let replica = (0..self.w.topo.servers().len())
            .find(|i| *i != si)
            .expect("a replica");
        let read_pos = |i: usize| {
            let opts = self.w.topo.server(i).opts();
            async move {
                let mut c = mysql_async::Conn::new(opts).await.ok()?;
                let s = crate::mariadb::replica_status(&mut c).await.ok()??;
                s.get("Read_Master_Log_Pos")
                    .or_else(|| s.get("Read_Source_Log_Pos"))?
                    .parse::<u64>()
                    .ok()
            }
        };
        let Some(before) = read_pos(replica).await else {
            rec.notes
                .push("no replica reads from the source: skipped".into());
            return Ok(());
        };
        let opts = db.opts();
        let big = tokio::spawn(async move {
            use mysql_async::prelude::Queryable;
            let mut c = mysql_async::Conn::new(opts)
                .await
                .map_err(|e| e.to_string())?;
            c.query_drop(format!(
                "INSERT INTO successover_check.chaos_big \
                 SELECT {base} + a.n * 1000 + b.n * 100 + c.n * 10 + d.n, REPEAT('x', 4096) \
                 FROM successover_check.chaos_digit a, successover_check.chaos_digit b, \
                 successover_check.chaos_digit c, successover_check.chaos_digit d"
            ))
            .await
            .map_err(|e| e.to_string())
        });
        let reading = crate::wait_until(Duration::from_secs(60), || async {
            read_pos(replica)
                .await
                .is_some_and(|p| p > before + 4_000_000)
        })
        .await;
        let before_ids = self.history_ids().await;
        self.w.topo.server_mut(si).sigstop().map_err(fatal)?;
        if reading.is_err() {
            rec.notes
                .push("the replica had not read 4 MB of it within 60 s".into());
        }
        self.await_failover(&before_ids, rec).await?;
        self.w.topo.server_mut(si).sigcont().map_err(fatal)?;
        self.revived.push((source.clone(), unix_ms()));
        let acknowledged = tokio::time::timeout(Duration::from_secs(30), big)
            .await
            .map(|r| r.is_ok_and(|r| r.is_ok()))
            .unwrap_or(false);
        let Some(published) = self.w.published().await else {
            return Ok(());
        };
        let rows: Option<u64> = {
            use mysql_async::prelude::Queryable;
            let opts = self.w.topo.server(self.w.index_of(&published)).opts();
            match mysql_async::Conn::new(opts).await {
                Ok(mut c) => c
                    .query_first(format!(
                        "SELECT COUNT(*) FROM successover_check.chaos_big \
                         WHERE id BETWEEN {base} AND {}",
                        base + ROWS - 1
                    ))
                    .await
                    .ok()
                    .flatten(),
                Err(_) => None,
            }
        };
        rec.notes.push(format!(
            "{source} continued; the large transaction was {}acknowledged, {} of {ROWS} rows on {published}",
            if acknowledged { "" } else { "not " },
            rows.map_or("?".to_owned(), |r| r.to_string())
        ));
        if acknowledged && rows != Some(ROWS) {
            self.violation(format!(
                "fault #{}: the acknowledged large transaction is not on {published} ({rows:?} of {ROWS} rows)",
                rec.n
            ));
        }
        Ok(())
    }

    /// The renderer loses Consul (its relay stops). Half the time the
    /// source hangs meanwhile (SIGSTOP) until a failover has finished and
    /// then wakes, the proxy still cut off: it must send nobody to the old
    /// source (the route checks), having taken it out by its own look.
    /// The replica with the semi-sync flag (another replica if none has
    /// it) drops out of every agent's sight for 3–12 s: its relay stops,
    /// and its replication, carried by the source's relay, goes on. Half
    /// the time the source hangs 1–3 s in, until the end: a failover must
    /// then refuse (the hidden replica may hold acknowledged commits) and
    /// be taken up once the source answers. While the source runs, its
    /// semi-sync clients are counted every 200 ms: more than one is a
    /// second server whose ACK releases a commit.
    async fn hide_fault(&mut self, rec: &mut FaultRecord) -> Result<(), Fatal> {
        let (si, source) = self.source().await?;
        let mut flagged = None;
        for (i, db) in self.w.topo.servers().iter().enumerate() {
            if i == si {
                continue;
            }
            let Ok(mut c) = db.conn().await else { continue };
            let on = crate::mariadb::global_var(&mut c, "rpl_semi_sync_slave_enabled").await;
            if on.is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("on")) {
                flagged = Some(i);
            }
        }
        let (i, name) = match flagged {
            Some(i) => (i, self.w.topo.server(i).name().to_owned()),
            None => self.pick(Role::Replica).await?,
        };
        let hang = self.rng.chance(50);
        let hold = self.rng.millis(3000, 12_000);
        let hang_at = self.rng.millis(1000, 3000);
        rec.label = if hang { "hide-source" } else { "hide" }.into();
        rec.target = if hang {
            format!("{name}, {source} hung")
        } else {
            name.clone()
        };
        self.w.relays[i].stop();
        let t = Instant::now();
        let (mut hung, mut looks, mut most) = (false, 0, 0);
        while t.elapsed() < hold {
            if hang && !hung && t.elapsed() >= hang_at {
                self.w.topo.server_mut(si).sigstop().map_err(fatal)?;
                hung = true;
            }
            if !hung {
                if let Ok(st) = super::checks::node_state(self.w.topo.server(si)).await {
                    looks += 1;
                    most = most.max(st.semi_sync_clients);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.w.relays[i].resume();
        if hung {
            self.w.topo.server_mut(si).sigcont().map_err(fatal)?;
            self.revived.push((source.clone(), unix_ms()));
        }
        rec.notes.push(format!(
            "{name} hidden {} ms; {source} had at most {most} semi-sync client(s) in {looks} looks",
            hold.as_millis()
        ));
        if most > 1 {
            self.violation(format!(
                "fault #{}: {source} had {most} semi-sync clients while {name} was out of the coordinator's sight",
                rec.n
            ));
        }
        Ok(())
    }

    async fn proxy_cut_fault(&mut self, rec: &mut FaultRecord) -> Result<(), Fatal> {
        let hang = self.rng.chance(50);
        let hold = self.rng.millis(2000, 12_000);
        let after = self.rng.millis(0, 3000);
        let (si, source) = self.source().await?;
        rec.label = if hang { "proxycut-source" } else { "proxycut" }.into();
        rec.target = if hang {
            format!("renderer and {source}")
        } else {
            "renderer".into()
        };
        self.w.render_relay.stop();
        if hang {
            let before = self.history_ids().await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            self.w.topo.server_mut(si).sigstop().map_err(fatal)?;
            self.await_failover(&before, rec).await?;
            self.w.topo.server_mut(si).sigcont().map_err(fatal)?;
            self.revived.push((source.clone(), unix_ms()));
            rec.notes
                .push(format!("{source} continued, the renderer still cut off"));
            tokio::time::sleep(after).await;
        } else {
            rec.notes.push(format!("cut {} ms", hold.as_millis()));
            tokio::time::sleep(hold).await;
        }
        self.w.render_relay.resume();
        rec.notes.push("renderer reaches Consul again".into());
        Ok(())
    }

    async fn switch_fault(&mut self, rec: &mut FaultRecord) -> Result<(), Fatal> {
        let (si, source) = self.source().await?;
        let roll = self.rng.below(100);
        let target = if roll < 10 {
            // Refused: already the source.
            source.clone()
        } else if roll < 20 {
            // The best candidate.
            String::new()
        } else {
            let others: Vec<usize> = (0..self.w.topo.servers().len())
                .filter(|i| *i != si)
                .collect();
            let i = others[self.rng.below(others.len() as u64) as usize];
            self.w.topo.server(i).name().to_owned()
        };
        rec.label = "switch".into();
        rec.target = format!(
            "{source} -> {}",
            if target.is_empty() {
                "best"
            } else {
                target.as_str()
            }
        );
        let before = self.history_ids().await;
        let key = format!("{PREFIX}switchover/{}", self.w.cluster);
        self.w.kv().kv_put(&key, target).await.map_err(fatal)?;
        let t = Instant::now();
        loop {
            let entries = self.history().await;
            if let Some(e) = entries.iter().find(|e| {
                e.kind == ProcedureKind::Switchover
                    && !before.contains(&e.id)
                    && e.outcome != Outcome::Running
            }) {
                rec.notes.push(format!(
                    "switchover {:?} after {} ms (old read-only -> new writable {}): {}",
                    e.outcome,
                    t.elapsed().as_millis(),
                    e.write_unavailable_ms
                        .map_or("-".to_owned(), |ms| format!("{ms} ms")),
                    e.reason
                ));
                return Ok(());
            }
            if t.elapsed() > Duration::from_secs(60) {
                self.violation(format!(
                    "fault #{}: switchover request not answered within 60 s",
                    rec.n
                ));
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn signal_pid(pid: u32, sig: Signal) -> anyhow::Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)
        .with_context(|| format!("sending {sig} to {pid}"))
}
