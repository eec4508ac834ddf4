//! A writer that goes through HAProxy like an application would and records
//! every write the server acknowledged, so a test can prove none was lost
//! and measure the write-unavailability windows.

use std::time::{Duration, Instant};

use anyhow::Context;
use mysql_async::prelude::*;
use mysql_async::{Conn, Opts, OptsBuilder};
use tokio_util::sync::CancellationToken;

use crate::{wait_for, wait_until, TimedOut};

pub const SCHEMA: &str = "successover_check";

/// The acknowledged writes of one run.
#[derive(Clone, Debug, Default)]
pub struct WriterLog {
    /// (id, when the commit was acknowledged, relative to the start).
    pub acked: Vec<(u64, Duration)>,
    /// When each acknowledged write was sent (parallel to `acked`): a
    /// write in flight at a crash is acknowledged after it, but was sent
    /// before.
    pub sent: Vec<Duration>,
    /// Attempts that failed (connect or commit).
    pub failed: u64,
    pub elapsed: Duration,
    /// Wall clock at the start, so other processes' events can be placed
    /// on the writer's time line.
    pub start_unix_ms: u64,
}

impl WriterLog {
    /// Gaps between consecutive acknowledged writes longer than `min`:
    /// (start offset, length). A switch shows up as one such window.
    pub fn gaps(&self, min: Duration) -> Vec<(Duration, Duration)> {
        self.acked
            .windows(2)
            .filter_map(|w| {
                let gap = w[1].1.saturating_sub(w[0].1);
                (gap >= min).then_some((w[0].1, gap))
            })
            .collect()
    }

    pub fn max_gap(&self) -> Duration {
        self.acked
            .windows(2)
            .map(|w| w[1].1.saturating_sub(w[0].1))
            .max()
            .unwrap_or_default()
    }
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Creates the writer's table on the source (replicated to the others).
pub async fn prepare(source_url: &str) -> anyhow::Result<()> {
    let mut conn = Conn::new(Opts::from_url(source_url)?).await?;
    conn.query_drop(format!(
        "CREATE DATABASE IF NOT EXISTS {SCHEMA}; \
         CREATE TABLE IF NOT EXISTS {SCHEMA}.writes (id BIGINT PRIMARY KEY, writer INT NOT NULL, at_ms BIGINT NOT NULL) ENGINE=InnoDB"
    ))
    .await?;
    conn.disconnect().await?;
    Ok(())
}

/// Writes one row per iteration through `host:port` until `cancel` fires.
/// A failed write is retried with a new id after reconnecting, the way an
/// application with a connection pool would; only writes whose COMMIT
/// returned OK count as acknowledged.
pub async fn run(
    host: String,
    port: u16,
    user: String,
    password: String,
    writer: u32,
    interval: Duration,
    cancel: CancellationToken,
) -> WriterLog {
    let opts: Opts = OptsBuilder::default()
        .ip_or_hostname(host)
        .tcp_port(port)
        .user(Some(user))
        .pass(Some(password))
        .prefer_socket(false)
        .wait_timeout(Some(28800))
        .into();
    let start = Instant::now();
    let mut log = WriterLog {
        start_unix_ms: unix_ms(),
        ..WriterLog::default()
    };
    let mut conn: Option<Conn> = None;
    let mut next_id = u64::from(writer) << 40;
    while !cancel.is_cancelled() {
        next_id += 1;
        let id = next_id;
        let sent = start.elapsed();
        let attempt = async {
            if conn.is_none() {
                conn = Some(Conn::new(opts.clone()).await.context("connect")?);
            }
            let c = conn.as_mut().expect("connected above");
            c.exec_drop(
                format!("INSERT INTO {SCHEMA}.writes (id, writer, at_ms) VALUES (?, ?, ?)"),
                (id, writer, start.elapsed().as_millis() as u64),
            )
            .await
            .context("insert")?;
            anyhow::Ok(())
        };
        let result = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(10), attempt) => r,
            _ = cancel.cancelled() => break,
        };
        match result {
            Ok(Ok(())) => {
                log.acked.push((id, start.elapsed()));
                log.sent.push(sent);
            }
            _ => {
                log.failed += 1;
                conn = None;
                // A refused connection fails at once; don't spin on it.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
    }
    log.elapsed = start.elapsed();
    log
}

/// How many rows of writer `writer` the server holds.
pub async fn rows_of(server_url: &str, writer: u32) -> anyhow::Result<u64> {
    let mut conn = Conn::new(Opts::from_url(server_url)?).await?;
    let n: Option<u64> = conn
        .exec_first(
            format!("SELECT COUNT(*) FROM {SCHEMA}.writes WHERE writer = ?"),
            (writer,),
        )
        .await?;
    conn.disconnect().await?;
    Ok(n.unwrap_or(0))
}

/// Waits until the server holds two more rows of writer `writer` than when
/// called: the writer's writes are landing there. A writer sends its next
/// write only once the previous one was answered, so the first of the two
/// was acknowledged after the call. Tests wait on this where a guessed
/// pause used to "let the writer get going" or "let writes resume".
pub async fn wait_writes_land(
    server_url: &str,
    writer: u32,
    limit: Duration,
) -> Result<(), TimedOut> {
    let deadline = tokio::time::Instant::now() + limit;
    let base = wait_for(limit, || async { rows_of(server_url, writer).await.ok() }).await?;
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    wait_until(left, || async {
        rows_of(server_url, writer)
            .await
            .is_ok_and(|n| n >= base + 2)
    })
    .await
    .map_err(|_| TimedOut(limit))
}

/// The acknowledged ids missing from a server: each one a lost write.
pub async fn missing(server_url: &str, log: &WriterLog) -> anyhow::Result<Vec<u64>> {
    let mut conn = Conn::new(Opts::from_url(server_url)?).await?;
    let present: Vec<u64> = conn
        .query(format!("SELECT id FROM {SCHEMA}.writes"))
        .await?;
    conn.disconnect().await?;
    let present: std::collections::HashSet<u64> = present.into_iter().collect();
    Ok(log
        .acked
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !present.contains(id))
        .collect())
}

/// For a loss report: where each of `ids` is (which of `servers` holds
/// it, unreachable ones named as such) and when the writer sent it and was
/// told it committed, on the wall clock.
pub async fn whereabouts(servers: &[(&str, String)], log: &WriterLog, ids: &[u64]) -> String {
    let mut holders: Vec<(String, std::collections::HashSet<u64>)> = Vec::new();
    for (name, url) in servers {
        let held = async {
            let mut conn = Conn::new(Opts::from_url(url)?).await?;
            let rows: Vec<u64> = conn
                .query(format!("SELECT id FROM {SCHEMA}.writes"))
                .await?;
            conn.disconnect().await?;
            anyhow::Ok(rows.into_iter().collect::<std::collections::HashSet<u64>>())
        };
        match tokio::time::timeout(Duration::from_secs(5), held).await {
            Ok(Ok(set)) => holders.push((name.to_string(), set)),
            _ => holders.push((format!("{name} (unreadable)"), Default::default())),
        }
    }
    let mut out = String::new();
    for id in ids {
        let at = log.acked.iter().position(|(i, _)| i == id);
        let (sent, acked) = at.map_or((0, 0), |k| {
            (
                log.start_unix_ms + log.sent.get(k).map_or(0, |d| d.as_millis() as u64),
                log.start_unix_ms + log.acked[k].1.as_millis() as u64,
            )
        });
        let on: Vec<&str> = holders
            .iter()
            .filter(|(_, s)| s.contains(id))
            .map(|(n, _)| n.as_str())
            .collect();
        out.push_str(&format!(
            "write {id}: sent at {sent} ms, acknowledged at {acked} ms (unix), on {on:?}\n"
        ));
    }
    out
}

/// A writer running as its own process (`successover-writer`).
pub struct WriterProc {
    proc: crate::process::Proc,
    out: std::path::PathBuf,
    _dir: crate::process::Scratch,
}

impl WriterProc {
    pub async fn start(port: u16, writer_id: u32) -> WriterProc {
        Self::start_as(
            port,
            writer_id,
            crate::mariadb::APP_USER,
            crate::mariadb::APP_PASSWORD,
        )
        .await
    }

    /// A writer logging in as `user` (e.g. an account with `ALL`).
    pub async fn start_as(port: u16, writer_id: u32, user: &str, password: &str) -> WriterProc {
        Self::start_paced(port, writer_id, user, password, Duration::ZERO).await
    }

    /// [`WriterProc::start_as`] with a pause of `interval` after each
    /// write (zero: as fast as it goes).
    pub async fn start_paced(
        port: u16,
        writer_id: u32,
        user: &str,
        password: &str,
        interval: Duration,
    ) -> WriterProc {
        let (dir, out, mut cmd) = Self::command("127.0.0.1", port, writer_id, user, password);
        if !interval.is_zero() {
            cmd.arg("--interval-ms")
                .arg(interval.as_millis().to_string());
        }
        let proc =
            crate::process::Proc::spawn("successover-writer", cmd, dir.path().join("writer.log"))
                .await
                .expect("spawn successover-writer");
        WriterProc {
            proc,
            out,
            _dir: dir,
        }
    }

    /// An application on a namespace host writing to `addr:port` directly
    /// (as the application account).
    pub async fn start_in(
        net: &crate::netns::NetHost,
        addr: &str,
        port: u16,
        writer_id: u32,
    ) -> WriterProc {
        let (dir, out, cmd) = Self::command(
            addr,
            port,
            writer_id,
            crate::mariadb::APP_USER,
            crate::mariadb::APP_PASSWORD,
        );
        let proc = net
            .spawn("successover-writer", &cmd, dir.path().join("writer.log"))
            .await
            .expect("spawn successover-writer in a net host");
        WriterProc {
            proc,
            out,
            _dir: dir,
        }
    }

    fn command(
        host: &str,
        port: u16,
        writer_id: u32,
        user: &str,
        password: &str,
    ) -> (
        crate::process::Scratch,
        std::path::PathBuf,
        std::process::Command,
    ) {
        let dir = crate::process::Scratch::new("writer");
        let out = dir.path().join("writer.json");
        let mut cmd = std::process::Command::new(crate::agent::workspace_bin("successover-writer"));
        cmd.args([
            "--host",
            host,
            "--port",
            &port.to_string(),
            "--writer-id",
            &writer_id.to_string(),
            "--user",
            user,
            "--password",
            password,
        ])
        .arg("--out")
        .arg(&out);
        (dir, out, cmd)
    }

    /// SIGTERM, then the log it wrote.
    pub async fn finish(mut self) -> anyhow::Result<WriterLog> {
        self.proc
            .signal(nix::sys::signal::Signal::SIGTERM)
            .context("signal writer")?;
        self.proc.wait(Duration::from_secs(30)).await;
        let text = std::fs::read(&self.out).with_context(|| {
            format!(
                "writer log {}: {}",
                self.out.display(),
                self.proc.log_tail(10)
            )
        })?;
        let json: serde_json::Value = serde_json::from_slice(&text)?;
        let acked = json["acked"]
            .as_array()
            .context("acked")?
            .iter()
            .filter_map(|p| Some((p[0].as_u64()?, Duration::from_millis(p[1].as_u64()?))))
            .collect();
        let sent = json["sent"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_u64().map(Duration::from_millis))
                    .collect()
            })
            .unwrap_or_default();
        Ok(WriterLog {
            acked,
            sent,
            failed: json["failed"].as_u64().unwrap_or(0),
            elapsed: Duration::from_millis(json["elapsed_ms"].as_u64().unwrap_or(0)),
            start_unix_ms: json["start_unix_ms"].as_u64().unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_measured_between_acknowledgements() {
        let ms = Duration::from_millis;
        let log = WriterLog {
            acked: vec![(1, ms(0)), (2, ms(10)), (3, ms(700)), (4, ms(710))],
            sent: Vec::new(),
            failed: 3,
            elapsed: ms(720),
            start_unix_ms: 0,
        };
        assert_eq!(log.max_gap(), ms(690));
        assert_eq!(log.gaps(ms(100)), vec![(ms(10), ms(690))]);
    }
}
