//! The renderer's TOML config in two stages: [`RawConfig`] is what serde
//! reads (typos in key names are errors), [`Config`] is what the program
//! uses. Validation reports every problem at once, so an operator fixes
//! the file in one pass.
//!
//! ```toml
//! [consul]                       # all optional; the CONSUL_* environment
//! address = "https://127.0.0.1:8501"  # variables apply where unset
//! token_file = "/etc/successover/consul.token"
//! ca_file = "/etc/successover/consul-ca.pem"
//! client_cert = "/etc/successover/client.pem"
//! client_key = "/etc/successover/client-key.pem"
//! datacenter = "dc1"
//!
//! [kv]
//! prefix = "mysql/"
//!
//! [haproxy]
//! config = "/etc/haproxy/haproxy.cfg"       # the file the renderer owns
//! binary = "/usr/sbin/haproxy"              # for haproxy -c
//! admin_socket = "/run/haproxy/admin.sock"  # level admin, current worker
//! master_socket = "/run/haproxy-master.sock"  # -S; "" to disable
//! reload_command = ["systemctl", "reload", "haproxy"]  # default: master CLI
//! bind_address = "0.0.0.0"
//! mysql_check_user = "haproxy_check"        # default: no health check
//! hard_stop_after = "1h"
//! check_timeout = "10s"
//! command_timeout = "2s"
//! reload_timeout = "15s"
//!
//! [template]
//! path = "/etc/successover/haproxy.cfg.j2"  # default: built-in
//! vars = { environment = "prod" }           # `vars.*` in the template
//!
//! [metrics]
//! listen = "127.0.0.1:9105"                 # default: no metrics server
//!
//! [watch]
//! wait = "5m"             # how long Consul holds a blocking query
//! min_interval = "0s"     # rate limit between two renders
//! retry_interval = "5s"   # retry after a failed render or apply
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use successover_common::consul::{ConsulConfig, ConsulError, Token};
use successover_common::contract::{Keys, DEFAULT_PREFIX};

use crate::apply::ReloadMethod;
use crate::template::HaproxySettings;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/successover/render.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub consul: RawConsul,
    #[serde(default)]
    pub kv: RawKv,
    #[serde(default)]
    pub haproxy: RawHaproxy,
    #[serde(default)]
    pub template: RawTemplate,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub watch: RawWatch,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsul {
    pub address: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub datacenter: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKv {
    pub prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHaproxy {
    pub config: Option<PathBuf>,
    pub binary: Option<PathBuf>,
    pub admin_socket: Option<PathBuf>,
    pub master_socket: Option<PathBuf>,
    pub reload_command: Option<Vec<String>>,
    pub bind_address: Option<String>,
    pub mysql_check_user: Option<String>,
    pub hard_stop_after: Option<String>,
    pub check_timeout: Option<String>,
    pub command_timeout: Option<String>,
    pub reload_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTemplate {
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWatch {
    pub wait: Option<String>,
    pub min_interval: Option<String>,
    pub retry_interval: Option<String>,
}

/// Consul settings from the file; applied over the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsulOverrides {
    pub address: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub datacenter: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxyConfig {
    pub config: PathBuf,
    pub binary: PathBuf,
    pub admin_socket: PathBuf,
    pub master_socket: Option<PathBuf>,
    pub reload: ReloadMethod,
    pub check_timeout: Duration,
    pub command_timeout: Duration,
    pub reload_timeout: Duration,
    /// What templates see as `haproxy.*`.
    pub template: HaproxySettings,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchConfig {
    pub wait: Duration,
    pub min_interval: Duration,
    pub retry_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub consul: ConsulOverrides,
    pub keys: Keys,
    pub haproxy: HaproxyConfig,
    pub template_path: Option<PathBuf>,
    pub template_vars: BTreeMap<String, String>,
    pub metrics_listen: Option<SocketAddr>,
    pub watch: WatchConfig,
}

/// One problem with one key of the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The value does not have the expected shape.
    Expected(&'static str),
    /// Two settings contradict each other.
    Conflict(&'static str),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            Problem::Expected(what) => write!(f, "{}: expected {what}", self.key),
            Problem::Conflict(what) => write!(f, "{}: {what}", self.key),
        }
    }
}

/// Everything wrong with a config file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML for this program")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("config file {path} has {} error(s):\n  {}", .errors.len(), join(.errors))]
    Invalid {
        path: PathBuf,
        errors: Vec<ConfigError>,
    },
}

fn join(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// Reads and validates a config file. A missing file at the default path
/// means "all defaults"; a missing file named by the operator is an error.
pub fn load(path: &Path, explicit: bool) -> Result<Config, LoadError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => String::new(),
        Err(source) => {
            return Err(LoadError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let raw: RawConfig = toml::from_str(&text).map_err(|source| LoadError::Parse {
        path: path.to_owned(),
        source,
    })?;
    validate(raw).map_err(|errors| LoadError::Invalid {
        path: path.to_owned(),
        errors,
    })
}

/// "250ms", "5s", "2m", "1h", "1d"; a bare "0" is zero.
pub fn parse_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "s" => n.checked_mul(1_000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// A value that lands in the HAProxy config or on its CLI: no whitespace,
/// quotes, `#` or control characters.
fn haproxy_safe(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_graphic() && !matches!(c, '#' | '"' | '\'' | '\\' | ';' | '$' | '`')
        })
}

struct Checker {
    errors: Vec<ConfigError>,
}

impl Checker {
    fn fail(&mut self, key: &str, problem: Problem) {
        self.errors.push(ConfigError {
            key: key.to_owned(),
            problem,
        });
    }

    fn duration(&mut self, key: &str, value: Option<&str>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(v) => parse_duration(v).unwrap_or_else(|| {
                self.fail(
                    key,
                    Problem::Expected("a duration like \"500ms\", \"5s\", \"2m\" or \"1h\""),
                );
                default
            }),
        }
    }

    fn socket_path(&mut self, key: &str, value: Option<PathBuf>, default: &str) -> PathBuf {
        let path = value.unwrap_or_else(|| PathBuf::from(default));
        let ok = path.is_absolute() && path.to_str().is_some_and(haproxy_safe);
        if !ok {
            self.fail(
                key,
                Problem::Expected("an absolute path without spaces, quotes, '#' or ';'"),
            );
        }
        path
    }
}

pub fn validate(raw: RawConfig) -> Result<Config, Vec<ConfigError>> {
    let mut c = Checker { errors: Vec::new() };

    // [consul]
    if let Some(addr) = &raw.consul.address {
        let ok = (addr.starts_with("http://") || addr.starts_with("https://"))
            && url::Url::parse(addr).is_ok_and(|u| u.host().is_some());
        if !ok {
            c.fail(
                "consul.address",
                Problem::Expected("an http:// or https:// URL"),
            );
        }
    }
    if raw.consul.client_cert.is_some() != raw.consul.client_key.is_some() {
        c.fail(
            "consul.client_cert",
            Problem::Conflict("client_cert and client_key go together"),
        );
    }

    // [kv]
    let keys = match Keys::new(raw.kv.prefix.as_deref().unwrap_or(DEFAULT_PREFIX)) {
        Ok(k) => k,
        Err(_) => {
            c.fail(
                "kv.prefix",
                Problem::Expected("path segments of [A-Za-z0-9_.-] like \"mysql/\""),
            );
            Keys::default()
        }
    };

    // [haproxy]
    let h = raw.haproxy;
    let config = h
        .config
        .unwrap_or_else(|| PathBuf::from("/etc/haproxy/haproxy.cfg"));
    if config.file_name().is_none() {
        c.fail("haproxy.config", Problem::Expected("a file path"));
    }
    let binary = h
        .binary
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/haproxy"));
    let admin_socket = c.socket_path(
        "haproxy.admin_socket",
        h.admin_socket,
        "/run/haproxy/admin.sock",
    );
    let master_socket = match h.master_socket {
        Some(p) if p.as_os_str().is_empty() => None,
        other => Some(c.socket_path("haproxy.master_socket", other, "/run/haproxy-master.sock")),
    };
    let reload = match h.reload_command {
        None => {
            if master_socket.is_none() {
                c.fail(
                    "haproxy.reload_command",
                    Problem::Conflict(
                        "needed when master_socket is disabled: nothing else can reload HAProxy",
                    ),
                );
            }
            ReloadMethod::MasterSocket
        }
        Some(argv) if argv.is_empty() || argv[0].is_empty() => {
            c.fail(
                "haproxy.reload_command",
                Problem::Expected("a non-empty command as an array of strings"),
            );
            ReloadMethod::MasterSocket
        }
        Some(argv) => ReloadMethod::Command(argv),
    };
    let bind_address = match h
        .bind_address
        .as_deref()
        .unwrap_or("0.0.0.0")
        .parse::<IpAddr>()
    {
        Ok(ip) => ip,
        Err(_) => {
            c.fail(
                "haproxy.bind_address",
                Problem::Expected("an IPv4 or IPv6 address"),
            );
            IpAddr::from([0, 0, 0, 0])
        }
    };
    if let Some(user) = &h.mysql_check_user {
        let ok = !user.is_empty()
            && user.len() <= 32
            && user.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            c.fail(
                "haproxy.mysql_check_user",
                Problem::Expected("a MySQL user name of [A-Za-z0-9_], at most 32 characters"),
            );
        }
    }
    let hard_stop_after = h.hard_stop_after.unwrap_or_else(|| "1h".to_owned());
    if !matches!(parse_duration(&hard_stop_after), Some(d) if !d.is_zero()) {
        c.fail(
            "haproxy.hard_stop_after",
            Problem::Expected("a non-zero duration like \"30m\" or \"1h\""),
        );
    }
    let check_timeout = c.duration(
        "haproxy.check_timeout",
        h.check_timeout.as_deref(),
        Duration::from_secs(10),
    );
    let command_timeout = c.duration(
        "haproxy.command_timeout",
        h.command_timeout.as_deref(),
        Duration::from_secs(2),
    );
    let reload_timeout = c.duration(
        "haproxy.reload_timeout",
        h.reload_timeout.as_deref(),
        Duration::from_secs(15),
    );
    for (key, d) in [
        ("haproxy.check_timeout", check_timeout),
        ("haproxy.command_timeout", command_timeout),
        ("haproxy.reload_timeout", reload_timeout),
    ] {
        if d.is_zero() {
            c.fail(key, Problem::Expected("a non-zero duration"));
        }
    }

    // [template]
    for (name, value) in &raw.template.vars {
        let name_ok = name
            .chars()
            .next()
            .is_some_and(|ch| ch.is_ascii_alphabetic() || ch == '_')
            && name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
        if !name_ok {
            c.fail(
                &format!("template.vars.{name}"),
                Problem::Expected("a name of [A-Za-z0-9_] not starting with a digit"),
            );
        }
        if value.chars().any(char::is_control) {
            c.fail(
                &format!("template.vars.{name}"),
                Problem::Expected("a single line (no control characters)"),
            );
        }
    }

    // [metrics]
    let metrics_listen = match raw.metrics.listen.as_deref() {
        None | Some("") => None,
        Some(s) => match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                c.fail(
                    "metrics.listen",
                    Problem::Expected("an address like \"127.0.0.1:9105\" or \"[::]:9105\""),
                );
                None
            }
        },
    };

    // [watch]
    let wait = c.duration(
        "watch.wait",
        raw.watch.wait.as_deref(),
        Duration::from_secs(300),
    );
    if wait.is_zero() || wait > Duration::from_secs(600) {
        // Consul caps blocking queries at 10 minutes.
        c.fail("watch.wait", Problem::Expected("a duration from 1s to 10m"));
    }
    let min_interval = c.duration(
        "watch.min_interval",
        raw.watch.min_interval.as_deref(),
        Duration::ZERO,
    );
    let retry_interval = c.duration(
        "watch.retry_interval",
        raw.watch.retry_interval.as_deref(),
        Duration::from_secs(5),
    );
    if retry_interval.is_zero() {
        c.fail(
            "watch.retry_interval",
            Problem::Expected("a non-zero duration"),
        );
    }

    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    Ok(Config {
        consul: ConsulOverrides {
            address: raw.consul.address,
            token_file: raw.consul.token_file,
            ca_file: raw.consul.ca_file,
            client_cert: raw.consul.client_cert,
            client_key: raw.consul.client_key,
            datacenter: raw.consul.datacenter,
        },
        keys,
        haproxy: HaproxyConfig {
            config,
            binary,
            template: HaproxySettings {
                admin_socket: admin_socket.display().to_string(),
                bind_address,
                mysql_check_user: h.mysql_check_user,
                hard_stop_after,
            },
            admin_socket,
            master_socket,
            reload,
            check_timeout,
            command_timeout,
            reload_timeout,
        },
        template_path: raw.template.path,
        template_vars: raw.template.vars,
        metrics_listen,
        watch: WatchConfig {
            wait,
            min_interval,
            retry_interval,
        },
    })
}

impl ConsulOverrides {
    /// The environment (`CONSUL_HTTP_ADDR`, `CONSUL_HTTP_TOKEN[_FILE]`, …)
    /// with this file's settings on top. The token only ever comes from a
    /// file or the environment, never from this config, so it cannot leak
    /// through a config dump.
    pub fn consul_config(&self) -> Result<ConsulConfig, ConsulError> {
        let mut cfg = ConsulConfig::from_env()?;
        if let Some(addr) = &self.address {
            cfg.addr = addr.trim_end_matches('/').to_owned();
        }
        if let Some(path) = &self.token_file {
            cfg.token = Some(Token::from_file(path)?);
        }
        if let Some(ca) = &self.ca_file {
            cfg.tls.ca_file = Some(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            cfg.tls.client_cert = Some(cert.clone());
            cfg.tls.client_key = Some(key.clone());
        }
        if let Some(dc) = &self.datacenter {
            cfg.datacenter = Some(dc.clone());
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> Result<Config, Vec<ConfigError>> {
        validate(toml::from_str(text).expect("valid TOML"))
    }

    #[test]
    fn defaults() {
        let c = from_toml("").unwrap();
        assert_eq!(c.keys, Keys::default());
        assert_eq!(c.haproxy.config, PathBuf::from("/etc/haproxy/haproxy.cfg"));
        assert_eq!(
            c.haproxy.master_socket,
            Some(PathBuf::from("/run/haproxy-master.sock"))
        );
        assert_eq!(c.haproxy.reload, ReloadMethod::MasterSocket);
        assert_eq!(c.haproxy.template.bind_address.to_string(), "0.0.0.0");
        assert_eq!(c.haproxy.template.hard_stop_after, "1h");
        assert_eq!(c.metrics_listen, None);
        assert_eq!(c.watch.retry_interval, Duration::from_secs(5));
        assert_eq!(c.template_path, None);
    }

    #[test]
    fn full_file() {
        let c = from_toml(
            r#"
            [consul]
            address = "https://consul.example:8501"
            token_file = "/etc/t"
            [kv]
            prefix = "dc1/mysql"
            [haproxy]
            config = "/tmp/h.cfg"
            admin_socket = "/tmp/a.sock"
            master_socket = ""
            reload_command = ["systemctl", "reload", "haproxy"]
            bind_address = "::"
            mysql_check_user = "haproxy_check"
            [template]
            path = "/etc/t.j2"
            vars = { env = "prod" }
            [metrics]
            listen = "127.0.0.1:9105"
            [watch]
            min_interval = "250ms"
            "#,
        )
        .unwrap();
        assert_eq!(c.keys.prefix(), "dc1/mysql/");
        assert_eq!(c.haproxy.master_socket, None);
        assert_eq!(
            c.haproxy.reload,
            ReloadMethod::Command(vec!["systemctl".into(), "reload".into(), "haproxy".into()])
        );
        assert_eq!(c.haproxy.template.bind_address.to_string(), "::");
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9105".parse().unwrap()));
        assert_eq!(c.watch.min_interval, Duration::from_millis(250));
        assert_eq!(c.template_vars["env"], "prod");
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let errors = from_toml(
            r#"
            [consul]
            address = "consul:8500"
            client_cert = "/c.pem"
            [kv]
            prefix = "/mysql"
            [haproxy]
            admin_socket = "relative.sock"
            master_socket = "/run/x y.sock"
            bind_address = "0.0.0.0:80"
            mysql_check_user = "bad user"
            hard_stop_after = "soon"
            check_timeout = "10 s"
            [template]
            vars = { "1x" = "a\nb" }
            [metrics]
            listen = "localhost"
            [watch]
            wait = "11m"
            retry_interval = "0"
            "#,
        )
        .unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "consul.address",
                "consul.client_cert",
                "kv.prefix",
                "haproxy.admin_socket",
                "haproxy.master_socket",
                "haproxy.bind_address",
                "haproxy.mysql_check_user",
                "haproxy.hard_stop_after",
                "haproxy.check_timeout",
                "template.vars.1x",
                "template.vars.1x",
                "metrics.listen",
                "watch.wait",
                "watch.retry_interval",
            ]
        );
    }

    #[test]
    fn master_socket_or_reload_command_is_needed() {
        let errors = from_toml("[haproxy]\nmaster_socket = \"\"\n").unwrap_err();
        assert_eq!(errors[0].key, "haproxy.reload_command");
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<RawConfig>("[haproxy]\nconfg = \"/x\"\n").is_err());
        assert!(toml::from_str::<RawConfig>("[hapxory]\n").is_err());
    }

    #[test]
    fn load_reports_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("render.toml");
        // A missing default file means defaults; a named one is an error.
        assert!(load(&path, false).is_ok());
        assert!(matches!(load(&path, true), Err(LoadError::Read { .. })));
        std::fs::write(&path, "[watch]\nwait = \"x\"\nretry_interval = \"y\"\n").unwrap();
        let err = load(&path, true).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("2 error(s)"), "{text}");
        assert!(text.contains("watch.wait") && text.contains("watch.retry_interval"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        for bad in ["", "s", "5", "5 s", "-5s", "5sec", "1.5s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }
}
