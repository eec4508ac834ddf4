//! `haproxy -c` on the rendered text before it replaces the live file.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("cannot write a temporary file in {dir} for haproxy -c")]
    TempFile {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {binary}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("haproxy -c did not finish within {0:?}")]
    Timeout(Duration),
    #[error("haproxy -c rejected the rendered config: {alerts}")]
    Rejected { alerts: String },
}

#[derive(Debug, Clone)]
pub struct Validator {
    pub binary: PathBuf,
    pub timeout: Duration,
}

impl Validator {
    /// Checks `text` as a config file placed in `dir` (the live file's
    /// directory, so relative paths in it mean what they will mean live).
    pub async fn check(&self, text: &str, dir: &Path) -> Result<(), ValidateError> {
        let temp_err = |source| ValidateError::TempFile {
            dir: dir.to_owned(),
            source,
        };
        let file = tempfile::Builder::new()
            .prefix(".successover-check-")
            .suffix(".cfg")
            .tempfile_in(dir)
            .map_err(temp_err)?;
        std::fs::write(file.path(), text).map_err(temp_err)?;

        let run = Command::new(&self.binary)
            .arg("-c")
            .arg("-f")
            .arg(file.path())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| ValidateError::Timeout(self.timeout))?
            .map_err(|source| ValidateError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        if output.status.success() {
            for line in text.lines().filter(|l| l.contains("[WARNING]")) {
                tracing::debug!(warning = %line, "haproxy -c");
            }
            return Ok(());
        }
        let temp_name = file.path().display().to_string();
        let alerts: Vec<String> = text
            .lines()
            .filter(|l| l.contains("[ALERT]"))
            .map(|l| l.replace(&temp_name, "<rendered>"))
            .collect();
        let mut alerts = if alerts.is_empty() {
            format!("exit {} without alerts", output.status)
        } else {
            alerts.join(" | ")
        };
        alerts.truncate(2000);
        Err(ValidateError::Rejected { alerts })
    }
}
