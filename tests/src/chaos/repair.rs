//! Repair after a fault: wait out a procedure, recover a fenced cluster,
//! restart what died, rejoin or rebuild quarantined nodes.

use std::time::Duration;

use super::checks::node_state;
use super::report::FaultRecord;
use super::runner::{fatal, Fatal, Runner};
use super::{PREFIX, PROCEDURE_TIMEOUT};
use crate::agent::workspace_bin;

impl Runner {
    /// After the fault's own undo: let a procedure under way finish, bring
    /// back quarantined nodes, restart anything that died on its own.
    pub(super) async fn repair(&mut self, rec: &mut FaultRecord) -> Result<(), Fatal> {
        // A failover may still be coming (a server stopped for a while, a
        // host cut briefly): give detection a moment, then wait for the
        // procedure to end.
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.wait_no_procedure().await?;
        self.recover_refused_failover(rec).await?;
        for i in 0..self.w.agents.len() {
            if !self.w.agents[i].is_running() {
                let name = self.w.agent_opts[i].node.clone();
                self.violation(format!("fault #{}: agent {name} exited on its own", rec.n));
                self.agent_generation += 1;
                let g = self.agent_generation;
                let dir = self.opts.log_dir.clone();
                self.w.restart_agent(i, &dir, g).await;
            }
        }
        if !self.w.renderer.is_running() {
            self.violation("the renderer exited on its own".into());
            self.w.restart_renderer().await;
        }
        for q in self.w.quarantined().await {
            self.bring_back(&q, rec).await?;
        }
        Ok(())
    }

    async fn wait_no_procedure(&mut self) -> Result<(), Fatal> {
        let key = format!("{PREFIX}history/{}/in-progress", self.w.cluster);
        crate::wait_until(PROCEDURE_TIMEOUT, || async {
            !self.w.key_exists(&key).await
        })
        .await
        .map_err(|_| {
            Fatal(format!(
                "a procedure is still in progress after {PROCEDURE_TIMEOUT:?}"
            ))
        })
    }

    /// A refused failover leaves the cluster fenced for an operator; do
    /// what one would: make the published (surviving) source writable,
    /// restart replication, lift the fence.
    async fn recover_refused_failover(&mut self, rec: &mut FaultRecord) -> Result<(), Fatal> {
        let failed = format!("{PREFIX}master/{}/failed", self.w.cluster);
        if !self.w.key_exists(&failed).await {
            return Ok(());
        }
        rec.notes
            .push("cluster left fenced: recovering as an operator".into());
        let (si, source) = self.source().await?;
        let db = self.w.topo.server(si);
        if !db.is_running() {
            return Err(Fatal(format!("fenced, and the source {source} is down")));
        }
        db.set_read_only(false).await.map_err(fatal)?;
        for (i, r) in self.w.topo.servers().iter().enumerate() {
            if i != si {
                let _ = r.exec("START SLAVE").await;
            }
        }
        self.w.kv().kv_delete(&failed).await.map_err(fatal)?;
        Ok(())
    }

    /// `successover rejoin`, or on "rebuild required" a rebuild from
    /// nothing, replicating from the current source.
    async fn bring_back(&mut self, node: &str, rec: &mut FaultRecord) -> Result<(), Fatal> {
        let i = self.w.index_of(node);
        if !self.w.topo.server(i).is_running() {
            self.w.topo.server_mut(i).start_again().await;
        }
        // An operator rejoins a node once its agent has fenced it.
        let db = self.w.topo.server(i);
        let fenced = crate::wait_until(Duration::from_secs(20), || async {
            node_state(db).await.is_ok_and(|s| s.read_only)
        })
        .await;
        if fenced.is_err() {
            rec.notes
                .push(format!("{node} still writable 20 s after it came back"));
        }
        let mut last = String::new();
        for attempt in 0..3 {
            let out = tokio::time::timeout(
                Duration::from_secs(90),
                tokio::process::Command::new(workspace_bin("successover"))
                    .args([
                        "--consul-addr",
                        &self.w.kv_addr(),
                        "rejoin",
                        &self.w.cluster,
                        node,
                        "--wait",
                        "--timeout",
                        "60",
                    ])
                    .kill_on_drop(true)
                    .output(),
            )
            .await;
            let (code, text) = match out {
                Ok(Ok(o)) => (
                    o.status.code().unwrap_or(-1),
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                    .trim()
                    .to_owned(),
                ),
                Ok(Err(e)) => (-1, format!("running successover: {e}")),
                Err(_) => (-1, "successover rejoin hung for 90 s".to_owned()),
            };
            if code == 0 {
                self.report.rejoins += 1;
                rec.notes.push(format!("rejoin {node}: {text}"));
                return Ok(());
            }
            if text.contains("rebuild required") {
                rec.notes.push(format!("rejoin {node}: {text}"));
                return self.rebuild(i, rec).await;
            }
            last = text;
            self.say.line(format!(
                "rejoin {node} attempt {attempt}: exit {code}: {last}"
            ));
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        self.violation(format!(
            "fault #{}: rejoin of {node} neither worked nor asked for a rebuild: {last}",
            rec.n
        ));
        self.rebuild(i, rec).await
    }

    async fn rebuild(&mut self, i: usize, rec: &mut FaultRecord) -> Result<(), Fatal> {
        let (si, _) = self.source().await?;
        let name = self.w.topo.server(i).name().to_owned();
        // A new server id: the history holds this server's old writes
        // under the old one, which a replica would skip as its own.
        let id = self.next_server_id;
        self.next_server_id += 1;
        self.server_names.insert(id, name.clone());
        self.w.topo.server_mut(i).rebuild(id).await;
        // It replays the whole history; without two fsyncs per
        // transaction that takes a fraction of the time. Restored once it
        // has caught up (before the next fault).
        self.w
            .topo
            .server(i)
            .exec("SET GLOBAL sync_binlog = 0; SET GLOBAL innodb_flush_log_at_trx_commit = 2")
            .await
            .map_err(fatal)?;
        self.relaxed.insert(i);
        let topo = &self.w.topo;
        topo.server(i)
            .replicate_from(topo.server(si), false)
            .await
            .map_err(fatal)?;
        self.w
            .kv()
            .kv_delete(&format!("{PREFIX}quarantine/{}/{name}", self.w.cluster))
            .await
            .map_err(fatal)?;
        self.report.rebuilds += 1;
        rec.notes.push(format!(
            "{name} rebuilt from nothing as server id {id}, replicating from {}",
            topo.server(si).name()
        ));
        Ok(())
    }

    /// Puts back the flush settings of rebuilt servers that have caught up.
    pub(super) async fn restore_durability(&mut self) {
        for i in std::mem::take(&mut self.relaxed) {
            let db = self.w.topo.server(i);
            if let Err(e) = db
                .exec("SET GLOBAL sync_binlog = 1; SET GLOBAL innodb_flush_log_at_trx_commit = 1")
                .await
            {
                self.violation(format!(
                    "restoring the flush settings of {}: {e:#}",
                    self.w.topo.server(i).name()
                ));
            }
        }
    }
}
