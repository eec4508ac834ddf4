//! Helpers shared by the failover scenarios and the failover benchmark:
//! reading the failover history, watching where HAProxy routes, and the
//! invariants every failover must keep.

use std::time::Duration;

use successover_common::procedure::{HistoryEntry, Outcome, ProcedureKind};
use tokio_util::sync::CancellationToken;

use crate::mariadb::{global_var, APP_PASSWORD, APP_USER};
use crate::stack::Stack;
use crate::writer::{self, unix_ms, WriterLog};
use crate::{wait_for, wait_until};

/// Every history entry of the stack's cluster, oldest first (the
/// `in-progress` and `last-failover` markers are not entries).
pub async fn history(stack: &Stack) -> Vec<HistoryEntry> {
    let prefix = format!("mysql/history/{}/", stack.cluster);
    let mut out: Vec<HistoryEntry> = stack
        .consul
        .kv_get_recurse(&prefix)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|kv| serde_json::from_slice::<HistoryEntry>(kv.value.as_deref()?).ok())
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Every history entry of one kind, oldest first.
pub async fn history_of(stack: &Stack, kind: ProcedureKind) -> Vec<HistoryEntry> {
    let mut out = history(stack).await;
    out.retain(|e| e.kind == kind);
    out
}

/// Every failover history entry of the stack's cluster (refusals included),
/// oldest first.
pub async fn failovers(stack: &Stack) -> Vec<HistoryEntry> {
    history_of(stack, ProcedureKind::Failover).await
}

/// Waits for the latest failover entry to be finished (any outcome).
pub async fn finished_failover(stack: &Stack, limit: Duration) -> HistoryEntry {
    finished_failover_after(stack, 0, limit).await
}

/// Waits for a finished failover entry beyond the first `before` entries
/// (the count of [`failovers`] before the incident).
pub async fn finished_failover_after(
    stack: &Stack,
    before: usize,
    limit: Duration,
) -> HistoryEntry {
    wait_for(limit, || async {
        let all = failovers(stack).await;
        if all.len() <= before {
            return None;
        }
        all.last()
            .filter(|e| e.outcome != Outcome::Running)
            .cloned()
    })
    .await
    .unwrap_or_else(|_| panic!("no finished failover\n{}", stack.logs()))
}

/// The id in `mysql/history/<cluster>/in-progress`, once there is one.
pub async fn in_progress(stack: &Stack) -> Option<String> {
    stack
        .consul
        .kv_get(&format!("mysql/history/{}/in-progress", stack.cluster))
        .await
        .ok()??
        .value_str()
        .map(str::to_owned)
}

/// Waits until new connections through HAProxy reach `node` (`dbN`, by its
/// `server_id`); after
/// a Consul outage the renderer's watches may still be in their backoff
/// when the failover is already done.
pub async fn wait_routed_to(stack: &Stack, node: &str, limit: Duration) {
    let id = stack.node(node).server_id();
    wait_until(limit, || async {
        stack.proxied_server_id().await == Some(id)
    })
    .await
    .unwrap_or_else(|_| panic!("HAProxy never routed to {node}\n{}", stack.logs()));
}

/// Waits until writes of writer `writer` (a [`writer::WriterProc`] through
/// HAProxy, or a [`DirectClient`]) land on `node` and are acknowledged
/// (see [`writer::wait_writes_land`]).
pub async fn writes_land(stack: &Stack, node: &str, writer: u32) {
    writer::wait_writes_land(&stack.node(node).url(), writer, Duration::from_secs(30))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "writes of writer {writer} never landed on {node}\n{}",
                stack.logs()
            )
        });
}

/// Polls through HAProxy and records (wall ms, server id) of every
/// connection that got an answer.
pub struct RouteMonitor {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<(u64, u32)>>,
}

impl RouteMonitor {
    pub fn start(stack: &Stack) -> RouteMonitor {
        RouteMonitor::start_at("127.0.0.1", stack.proxy_port.port())
    }

    /// Through the proxy listening on `host:port`.
    pub fn start_at(host: &str, port: u16) -> RouteMonitor {
        let host = host.to_owned();
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            use mysql_async::prelude::*;
            let mut seen = Vec::new();
            while !s.is_cancelled() {
                let opts = mysql_async::OptsBuilder::default()
                    .ip_or_hostname(host.clone())
                    .tcp_port(port)
                    .user(Some(APP_USER))
                    .pass(Some(APP_PASSWORD))
                    .prefer_socket(false);
                let probe = async {
                    let mut c = mysql_async::Conn::new(opts).await.ok()?;
                    let id: Option<u32> = c.query_first("SELECT @@server_id").await.ok()?;
                    let _ = c.disconnect().await;
                    id
                };
                if let Ok(Some(id)) = tokio::time::timeout(Duration::from_millis(500), probe).await
                {
                    seen.push((unix_ms(), id));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        });
        RouteMonitor { stop, task }
    }

    pub async fn finish(self) -> Vec<(u64, u32)> {
        self.stop.cancel();
        self.task.await.unwrap()
    }
}

pub struct Checked {
    /// Crash → first write acknowledged through HAProxy after it.
    pub crash_to_first_write_ms: u64,
    /// Wall clock of that first write.
    pub first_write_unix_ms: u64,
}

/// The invariants every failover scenario must keep: the failover is done
/// and published, every acknowledged write is on the new source, writes
/// were acknowledged after the crash, no routed traffic reached the old
/// source after the fence, and exactly one running server is writable: the
/// published one.
pub async fn check(
    stack: &Stack,
    entry: &HistoryEntry,
    log: &WriterLog,
    routes: &[(u64, u32)],
    crash_ms: u64,
) -> Checked {
    assert_eq!(
        entry.outcome,
        Outcome::Done,
        "{}\n{}",
        entry.reason,
        stack.logs()
    );
    let new_source = entry.to.clone().unwrap();
    assert_eq!(
        stack.published_node().await.as_deref(),
        Some(new_source.as_str())
    );
    let new_db = stack.node(&new_source);
    let lost = writer::missing(&new_db.url(), log).await.unwrap();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    // Writes acknowledged after the crash landed on the new source.
    let after: Vec<_> = log
        .acked
        .iter()
        .filter(|(_, at)| log.start_unix_ms + at.as_millis() as u64 > crash_ms)
        .collect();
    assert!(
        !after.is_empty(),
        "no write acknowledged after the crash\n{}",
        stack.logs()
    );
    // No routed traffic to the old source after the fence was applied
    // (the fence key is written at the first step; allow the renderer a
    // second to apply it).
    // The fence txn is the first thing after `started_ms` (a failover
    // resumed by another coordinator may not show it as a step).
    let fence_ms = entry.started_ms;
    let old_id = stack.node(entry.from.as_deref().unwrap()).server_id();
    let stray: Vec<_> = routes
        .iter()
        .filter(|(at, id)| *at > fence_ms + 1000 && *id == old_id)
        .collect();
    assert!(
        stray.is_empty(),
        "routed to the old source after the fence: {stray:?}"
    );
    // Exactly one writable server among those running, the published one.
    for (i, db) in stack.topo.servers().iter().enumerate() {
        let name = format!("db{}", i + 1);
        if !db.is_running() {
            continue;
        }
        let Ok(mut c) = tokio::time::timeout(Duration::from_secs(3), db.conn())
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timeout")))
        else {
            continue;
        };
        let ro = global_var(&mut c, "read_only").await.unwrap();
        assert_eq!(
            ro == "0",
            name == new_source,
            "{name} read_only={ro}\n{}",
            stack.logs()
        );
    }
    let first_after = after[0].1.as_millis() as u64 + log.start_unix_ms;
    Checked {
        crash_to_first_write_ms: first_after.saturating_sub(crash_ms),
        first_write_unix_ms: first_after,
    }
}

/// Where the time between the crash and the first write went: `detect`
/// (crash → failover started), each recorded step, and `proxy` (end of the
/// `publish` step → first acknowledged write through HAProxy). Steps named
/// `repoint_<node>` are reported as `repoint`.
pub fn phase_split(entry: &HistoryEntry, crash_ms: u64, first_write_ms: u64) -> Vec<(String, u64)> {
    let mut out = vec![(
        "detect".to_owned(),
        entry.started_ms.saturating_sub(crash_ms),
    )];
    for s in &entry.steps {
        let name = if s.name.starts_with("repoint_") {
            "repoint".to_owned()
        } else {
            s.name.clone()
        };
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, ms)) => *ms += s.duration_ms,
            None => out.push((name, s.duration_ms)),
        }
    }
    if let Some(publish) = entry.steps.iter().rev().find(|s| s.name == "publish") {
        let end = publish.started_ms + publish.duration_ms;
        out.push(("proxy".to_owned(), first_write_ms.saturating_sub(end)));
    }
    out
}

/// One line for a test's output: detection and each step.
pub fn phases(entry: &HistoryEntry, crash_ms: u64) -> String {
    let mut out = vec![format!(
        "detect {} ms",
        entry.started_ms.saturating_sub(crash_ms)
    )];
    for s in &entry.steps {
        if s.ok {
            out.push(format!("{} {} ms", s.name, s.duration_ms));
        } else {
            out.push(format!(
                "{} {} ms (failed: {})",
                s.name, s.duration_ms, s.detail
            ));
        }
    }
    out.join(", ")
}

/// One write of a [`DirectClient`].
#[derive(Clone, Copy, Debug)]
pub struct DirectWrite {
    pub id: u64,
    /// Wall clock when the attempt started.
    pub started_ms: u64,
    /// Wall clock when the server acknowledged it.
    pub acked_ms: u64,
}

/// The acknowledged writes of a [`DirectClient`] and how many attempts
/// failed.
#[derive(Clone, Debug, Default)]
pub struct DirectLog {
    pub acked: Vec<DirectWrite>,
    pub failed: u64,
}

impl DirectLog {
    /// As a [`WriterLog`], for [`writer::missing`].
    pub fn as_writer_log(&self) -> WriterLog {
        WriterLog {
            acked: self
                .acked
                .iter()
                .map(|w| (w.id, Duration::from_millis(w.acked_ms)))
                .collect(),
            sent: Vec::new(),
            failed: self.failed,
            elapsed: Duration::ZERO,
            start_unix_ms: 0,
        }
    }
}

/// An application that bypasses the proxy and writes to one server
/// directly (as the app user, so `read_only` stops it), recording when each
/// attempt started: a write started after its server was fenced off must
/// never be acknowledged. Attempts time out after 3 s and reconnect, like a
/// pool with a query timeout.
pub struct DirectClient {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<DirectLog>,
}

impl DirectClient {
    /// Writes ids `writer << 40 | n` into the writer's table every 20 ms.
    pub fn start(host: String, port: u16, writer: u32) -> DirectClient {
        use mysql_async::prelude::*;
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let opts: mysql_async::Opts = mysql_async::OptsBuilder::default()
                .ip_or_hostname(host)
                .tcp_port(port)
                .user(Some(APP_USER))
                .pass(Some(APP_PASSWORD))
                .prefer_socket(false)
                .into();
            let mut log = DirectLog::default();
            let mut conn: Option<mysql_async::Conn> = None;
            let mut next_id = u64::from(writer) << 40;
            while !s.is_cancelled() {
                next_id += 1;
                let id = next_id;
                let started_ms = unix_ms();
                let attempt = async {
                    if conn.is_none() {
                        conn = Some(mysql_async::Conn::new(opts.clone()).await?);
                    }
                    let c = conn.as_mut().expect("connected above");
                    c.exec_drop(
                        format!(
                            "INSERT INTO {}.writes (id, writer, at_ms) VALUES (?, ?, ?)",
                            writer::SCHEMA
                        ),
                        (id, writer, started_ms),
                    )
                    .await
                };
                let result = tokio::select! {
                    r = tokio::time::timeout(Duration::from_secs(3), attempt) => r,
                    _ = s.cancelled() => break,
                };
                match result {
                    Ok(Ok(())) => log.acked.push(DirectWrite {
                        id,
                        started_ms,
                        acked_ms: unix_ms(),
                    }),
                    _ => {
                        log.failed += 1;
                        conn = None;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            log
        });
        DirectClient { stop, task }
    }

    pub async fn finish(self) -> DirectLog {
        self.stop.cancel();
        self.task.await.unwrap()
    }
}
