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

/// Why a configured secret cannot be used. The caller names the setting.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is empty", .path.display())]
    Empty { path: PathBuf },
    #[error("environment variable {var} is not set")]
    Unset { var: String },
}

impl SecretSource {
    /// `Ok(None)` when neither source is configured. `env` looks up
    /// environment variables, so that config validation can be tested
    /// without touching the process environment.
    pub fn load(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Secret>, SecretError> {
        if let Some(path) = &self.file {
            return read_secret_file(path).map(Some);
        }
        if let Some(var) = &self.env {
            return match env(var) {
                Some(v) if !v.is_empty() => Ok(Some(Secret(v))),
                _ => Err(SecretError::Unset { var: var.clone() }),
            };
        }
        Ok(None)
    }
}

fn read_secret_file(path: &Path) -> Result<Secret, SecretError> {
    let raw = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
        path: path.to_owned(),
        source,
    })?;
    let value = raw.trim_end_matches(['\r', '\n']);
    if value.is_empty() {
        return Err(SecretError::Empty {
            path: path.to_owned(),
        });
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
        let s = src.load(&|_| None).unwrap().unwrap();
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
        let err = src.load(&|_| None).unwrap_err();
        assert_eq!(err.to_string(), "cannot read /nonexistent/pw");
        let src = SecretSource {
            file: None,
            env: Some("SUCCESSOVER_TEST_UNSET_VARIABLE".into()),
        };
        assert_eq!(
            src.load(&|_| None).unwrap_err().to_string(),
            "environment variable SUCCESSOVER_TEST_UNSET_VARIABLE is not set"
        );
        let set = src.load(&|_| Some("from-env".into())).unwrap().unwrap();
        assert_eq!(set.expose(), "from-env");
        assert_eq!(SecretSource::default().load(&|_| None).unwrap(), None);
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("so-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
