//! The writers: `successover-writer` processes going through HAProxy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;

use super::WRITER_INTERVAL_MS;
use crate::agent::workspace_bin;
use crate::mariadb::{ADMIN_APP_PASSWORD, ADMIN_APP_USER, APP_PASSWORD, APP_USER};
use crate::process::Proc;
use crate::writer::WriterLog;

/// `successover-writer` in its own process, one per writer id; a new id
/// per round so ids never collide with an earlier round's.
pub(super) struct Writer {
    id: u32,
    proc: Proc,
    out: PathBuf,
}

impl Writer {
    /// Every other writer logs in with `ALL` privileges, as many sites'
    /// applications do: on MariaDB its commits go through `read_only`.
    pub(super) async fn start(port: u16, id: u32, dir: &Path) -> Writer {
        let out = dir.join(format!("w{id}.json"));
        let (user, password) = if id.is_multiple_of(2) {
            (ADMIN_APP_USER, ADMIN_APP_PASSWORD)
        } else {
            (APP_USER, APP_PASSWORD)
        };
        let mut cmd = std::process::Command::new(workspace_bin("successover-writer"));
        cmd.args([
            "--port",
            &port.to_string(),
            "--writer-id",
            &id.to_string(),
            "--interval-ms",
            &WRITER_INTERVAL_MS.to_string(),
            "--user",
            user,
            "--password",
            password,
        ])
        .arg("--out")
        .arg(&out);
        let proc = Proc::spawn(
            format!("successover-writer {id}"),
            cmd,
            dir.join(format!("w{id}.log")),
        )
        .await
        .expect("spawn successover-writer");
        Writer { id, proc, out }
    }

    pub(super) fn id(&self) -> u32 {
        self.id
    }

    pub(super) async fn finish(mut self) -> anyhow::Result<WriterLog> {
        self.proc.signal(Signal::SIGTERM).context("signal writer")?;
        self.proc.wait(Duration::from_secs(30)).await;
        let text = std::fs::read(&self.out).with_context(|| {
            format!(
                "writer log {}: {}",
                self.out.display(),
                self.proc.log_tail(10)
            )
        })?;
        let _ = std::fs::remove_file(&self.out);
        let json: serde_json::Value = serde_json::from_slice(&text)?;
        let acked = json["acked"]
            .as_array()
            .context("acked")?
            .iter()
            .filter_map(|p| Some((p[0].as_u64()?, Duration::from_millis(p[1].as_u64()?))))
            .collect();
        Ok(WriterLog {
            acked,
            sent: Vec::new(),
            failed: json["failed"].as_u64().unwrap_or(0),
            elapsed: Duration::from_millis(json["elapsed_ms"].as_u64().unwrap_or(0)),
            start_unix_ms: json["start_unix_ms"].as_u64().unwrap_or(0),
        })
    }
}
