use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Problems, RawConsul};
use crate::consul::ConsulError;

/// An ACL token. It never appears in `Debug` or `Display` output, so a config
/// struct holding one can be logged whole.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(token: impl Into<String>) -> Self {
        Token(token.into())
    }

    /// Reads a token file the way Consul's own CLI does: surrounding
    /// whitespace (a trailing newline from `echo`) is not part of the token.
    pub fn from_file(path: &Path) -> Result<Self, ConsulError> {
        let raw = std::fs::read_to_string(path).map_err(|source| ConsulError::Config {
            what: format!("cannot read token file {}", path.display()),
            source: Some(Box::new(source)),
        })?;
        let token = raw.trim();
        if token.is_empty() {
            return Err(ConsulError::config(format!(
                "token file {} is empty",
                path.display()
            )));
        }
        Ok(Token(token.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Client TLS material, all PEM files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// How to reach Consul. Built from the environment variables Consul's own
/// CLI reads, so an operator's existing shell setup works unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsulConfig {
    /// Base address, e.g. `http://127.0.0.1:8500`.
    pub addr: String,
    pub token: Option<Token>,
    pub tls: TlsFiles,
    pub datacenter: Option<String>,
    /// Timeout of one non-blocking request.
    pub request_timeout: Duration,
    /// How long a request keeps being retried while Consul says it has no
    /// leader or is rate limiting. Only answers that guarantee the request
    /// was not applied are retried, so this is safe for CAS and txn too.
    pub retry_for: Duration,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        ConsulConfig {
            addr: "http://127.0.0.1:8500".to_owned(),
            token: None,
            tls: TlsFiles::default(),
            datacenter: None,
            request_timeout: Duration::from_secs(5),
            retry_for: Duration::from_secs(20),
        }
    }
}

impl ConsulConfig {
    pub fn new(addr: impl AsRef<str>) -> Self {
        ConsulConfig {
            addr: normalize_addr(addr.as_ref(), false),
            ..ConsulConfig::default()
        }
    }

    /// `CONSUL_HTTP_ADDR`, `CONSUL_HTTP_SSL`, `CONSUL_HTTP_TOKEN`,
    /// `CONSUL_HTTP_TOKEN_FILE`, `CONSUL_CACERT`, `CONSUL_CLIENT_CERT`,
    /// `CONSUL_CLIENT_KEY`, `CONSUL_DATACENTER`.
    pub fn from_env() -> Result<Self, ConsulError> {
        Self::from_lookup(crate::config::process_env)
    }

    /// Same as [`ConsulConfig::from_env`] over any lookup function, so the
    /// rules are testable without touching the process environment. They
    /// are the rules of a daemon config's `[consul]` section left empty
    /// ([`crate::config::RawConsul`]).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConsulError> {
        let mut problems = Problems::new();
        let cfg = RawConsul::default().validate(&lookup, &mut problems);
        problems.finish(cfg).map_err(|found| {
            let what = found
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            ConsulError::config(what)
        })
    }
}

/// Consul accepts `host:port` without a scheme; `unix://` is not supported
/// by this client.
pub(crate) fn normalize_addr(addr: &str, ssl: bool) -> String {
    let addr = addr.trim().trim_end_matches('/');
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_owned()
    } else if ssl {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<ConsulConfig, ConsulError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ConsulConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_to_local_agent() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.addr, "http://127.0.0.1:8500");
        assert!(c.token.is_none());
    }

    #[test]
    fn addr_without_scheme_gets_one() {
        assert_eq!(
            cfg(&[("CONSUL_HTTP_ADDR", "10.0.0.1:8500")]).unwrap().addr,
            "http://10.0.0.1:8500"
        );
        assert_eq!(
            cfg(&[("CONSUL_HTTP_ADDR", "c:8501"), ("CONSUL_HTTP_SSL", "true")])
                .unwrap()
                .addr,
            "https://c:8501"
        );
        assert_eq!(
            cfg(&[("CONSUL_HTTP_ADDR", "https://c:8501/")])
                .unwrap()
                .addr,
            "https://c:8501"
        );
    }

    #[test]
    fn token_from_file_is_trimmed_and_redacted() {
        let dir = std::env::temp_dir().join(format!("so-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "s3cr3t-token\n").unwrap();
        let c = cfg(&[("CONSUL_HTTP_TOKEN_FILE", path.to_str().unwrap())]).unwrap();
        let token = c.token.clone().unwrap();
        assert_eq!(token.expose(), "s3cr3t-token");
        let printed = format!("{c:?}");
        assert!(!printed.contains("s3cr3t"), "token leaked: {printed}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn env_token_wins_over_file() {
        let c = cfg(&[
            ("CONSUL_HTTP_TOKEN", "from-env"),
            ("CONSUL_HTTP_TOKEN_FILE", "/nonexistent/file"),
        ])
        .unwrap();
        assert_eq!(c.token.unwrap().expose(), "from-env");
    }

    #[test]
    fn missing_token_file_is_an_error_naming_the_file() {
        let err = cfg(&[("CONSUL_HTTP_TOKEN_FILE", "/nonexistent/so-token")]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/so-token"), "{err}");
    }
}
