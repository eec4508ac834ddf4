//! Passwords and tokens read from files or the environment. Never in a
//! config file, never in `Debug` output, so configs can be logged whole.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where a secret comes from: a file (trailing newline trimmed) or an
/// environment variable. The file wins when both are configured, since a
/// file can be permission-protected and an environment cannot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretSource {
    pub file: Option<PathBuf>,
    pub env: Option<String>,
}

impl SecretSource {
    /// `Ok(None)` when neither source is configured.
    pub fn load(&self, what: &str) -> Result<Option<Secret>, String> {
        if let Some(path) = &self.file {
            return read_secret_file(path, what).map(Some);
        }
        if let Some(var) = &self.env {
            return match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Some(Secret(v))),
                _ => Err(format!("{what}: environment variable {var} is not set")),
            };
        }
        Ok(None)
    }
}

fn read_secret_file(path: &Path, what: &str) -> Result<Secret, String> {
    let raw = std::fs::read_to_string(path)
        .map_err(|e| format!("{what}: cannot read {}: {e}", path.display()))?;
    let value = raw.trim_end_matches(['\r', '\n']);
    if value.is_empty() {
        return Err(format!("{what}: {} is empty", path.display()));
    }
    Ok(Secret(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_secret_is_trimmed_and_redacted() {
        let dir = tempdir();
        let path = dir.join("pw");
        std::fs::write(&path, "p@ss word\n").unwrap();
        let src = SecretSource {
            file: Some(path),
            env: None,
        };
        let s = src.load("mysql password").unwrap().unwrap();
        assert_eq!(s.expose(), "p@ss word");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_sources_are_clear_errors() {
        let src = SecretSource {
            file: Some("/nonexistent/pw".into()),
            env: None,
        };
        let err = src.load("mysql password").unwrap_err();
        assert!(
            err.starts_with("mysql password: cannot read /nonexistent/pw"),
            "{err}"
        );
        let src = SecretSource {
            file: None,
            env: Some("SUCCESSOVER_TEST_UNSET_VARIABLE".into()),
        };
        assert_eq!(
            src.load("mysql password").unwrap_err(),
            "mysql password: environment variable SUCCESSOVER_TEST_UNSET_VARIABLE is not set"
        );
        assert_eq!(SecretSource::default().load("x").unwrap(), None);
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("so-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
