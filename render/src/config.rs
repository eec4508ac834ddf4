//! The renderer's TOML config in two stages: [`RawConfig`] is what serde
//! reads, [`Config`] is what the program uses. Sections, duration syntax
//! and errors are the ones every successover daemon shares
//! (`successover_common::config`): unknown keys are errors, and validation
//! reports every problem at once, so an operator fixes the file in one
//! pass.
//!
//! ```toml
//! [consul]                       # shared with successover-agent; every
//! address = "https://127.0.0.1:8501"  # key falls back to its CONSUL_* variable
//! token_file = "/etc/successover/consul.token"
//! ca_file = "/etc/successover/consul-ca.pem"
//! client_cert = "/etc/successover/client.pem"
//! client_key = "/etc/successover/client-key.pem"
//! datacenter = "dc1"
//!
//! [kv]
//! prefix = "mysql/"
//!
//! [render]
//! name = "proxy1"          # this proxy in KV (proxy/<name>); default: the hostname
//!
//! [source_check]           # cut off from Consul: route only to sources seen writable
//! user = "successover_check"   # an account with no privileges (USAGE) is enough
//! password_file = "/etc/successover/mysql-check.password"   # or password_env
//! timeout = "1s"           # a source that does not answer within this goes into maintenance
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
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use successover_common::config::{
    self as common, ConfigError, Env, Problem, ProblemKind, Problems, RawConsul, RawKv, RawMetrics,
};
use successover_common::consul::ConsulConfig;
use successover_common::contract::{Keys, NodeName};
use successover_common::secret::{Secret, SecretSource};

use crate::apply::ReloadMethod;
use crate::template::HaproxySettings;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/successover/render.toml";

#[derive(Debug, Default, Deserialize)]
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
    #[serde(default)]
    pub render: RawRender,
    pub source_check: Option<RawSourceCheck>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRender {
    pub name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawSourceCheck {
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    pub timeout: Option<String>,
}

/// The account a renderer cut off from Consul checks its sources with
/// (see [`crate::fallback`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceCheck {
    pub user: String,
    pub password: Secret,
    pub timeout: Duration,
}

#[derive(Debug, Default, Deserialize)]
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
pub struct RawTemplate {
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawWatch {
    pub wait: Option<String>,
    pub min_interval: Option<String>,
    pub retry_interval: Option<String>,
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
    /// The file's `[consul]` over the `CONSUL_*` environment.
    pub consul: ConsulConfig,
    pub keys: Keys,
    pub haproxy: HaproxyConfig,
    pub template_path: Option<PathBuf>,
    pub template_vars: BTreeMap<String, String>,
    pub metrics_listen: Option<SocketAddr>,
    pub watch: WatchConfig,
    /// This proxy's name in KV (`proxy/<name>`).
    pub name: NodeName,
    pub source_check: Option<SourceCheck>,
}

/// Reads and validates a config file. A missing file at the default path
/// means "all defaults"; a missing file named by the operator is an error.
pub fn load(path: &Path, explicit: bool) -> Result<Config, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => String::new(),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    from_str(&text, &common::process_env).map_err(|problems| ConfigError::Invalid {
        path: path.to_owned(),
        problems,
    })
}

/// Parses and validates a config file's text; `env` supplies the
/// `CONSUL_*` variables.
pub fn from_str(text: &str, env: Env<'_>) -> Result<Config, Vec<Problem>> {
    common::from_str(text, &[], |raw| validate(raw, env))
}

/// A value that lands in the HAProxy config or on its CLI: no whitespace,
/// quotes, `#` or control characters.
fn haproxy_safe(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_graphic() && !matches!(c, '#' | '"' | '\'' | '\\' | ';' | '$' | '`')
        })
}

fn socket_path(p: &mut Problems, key: &str, value: Option<PathBuf>, default: &str) -> PathBuf {
    let path = value.unwrap_or_else(|| PathBuf::from(default));
    let ok = path.is_absolute() && path.to_str().is_some_and(haproxy_safe);
    if !ok {
        p.push(
            key,
            ProblemKind::Expected("an absolute path without spaces, quotes, '#' or ';'"),
        );
    }
    path
}

/// A duration in HAProxy's own syntax (one number, one unit), so the
/// operator writes the same duration syntax here as everywhere else.
fn haproxy_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, per) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if (ms / per) * per == ms {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

const SECOND: Duration = Duration::from_secs(1);

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}
/// No HAProxy or Consul operation the renderer waits for takes a day.
const DAY: Duration = Duration::from_secs(86_400);

pub fn validate(raw: RawConfig, env: Env<'_>) -> Result<Config, Vec<Problem>> {
    let mut p = Problems::new();

    let consul = raw.consul.validate(env, &mut p);
    let keys = raw.kv.validate(&mut p);

    // [haproxy]
    let h = raw.haproxy;
    let config = h
        .config
        .unwrap_or_else(|| PathBuf::from("/etc/haproxy/haproxy.cfg"));
    if config.file_name().is_none() {
        p.push("haproxy.config", ProblemKind::Expected("a file path"));
    }
    let binary = h
        .binary
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/haproxy"));
    let admin_socket = socket_path(
        &mut p,
        "haproxy.admin_socket",
        h.admin_socket,
        "/run/haproxy/admin.sock",
    );
    let master_socket = match h.master_socket {
        Some(path) if path.as_os_str().is_empty() => None,
        other => Some(socket_path(
            &mut p,
            "haproxy.master_socket",
            other,
            "/run/haproxy-master.sock",
        )),
    };
    let reload = match h.reload_command {
        None => {
            if master_socket.is_none() {
                p.push(
                    "haproxy.reload_command",
                    ProblemKind::Conflict(
                        "needed when master_socket is disabled: nothing else can reload HAProxy",
                    ),
                );
            }
            ReloadMethod::MasterSocket
        }
        Some(argv) if argv.is_empty() || argv[0].is_empty() => {
            p.push(
                "haproxy.reload_command",
                ProblemKind::Expected("a non-empty command as an array of strings"),
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
            p.push(
                "haproxy.bind_address",
                ProblemKind::Expected("an IPv4 or IPv6 address"),
            );
            IpAddr::from([0, 0, 0, 0])
        }
    };
    if let Some(user) = &h.mysql_check_user {
        let ok = !user.is_empty()
            && user.len() <= 32
            && user.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            p.push(
                "haproxy.mysql_check_user",
                ProblemKind::Expected("a MySQL user name of [A-Za-z0-9_], at most 32 characters"),
            );
        }
    }
    let hard_stop_after = p.duration(
        "haproxy.hard_stop_after",
        h.hard_stop_after.as_deref(),
        Duration::from_secs(3600),
        (SECOND, 30 * DAY),
    );
    let check_timeout = p.duration(
        "haproxy.check_timeout",
        h.check_timeout.as_deref(),
        10 * SECOND,
        (Duration::from_millis(1), DAY),
    );
    let command_timeout = p.duration(
        "haproxy.command_timeout",
        h.command_timeout.as_deref(),
        2 * SECOND,
        (Duration::from_millis(1), DAY),
    );
    let reload_timeout = p.duration(
        "haproxy.reload_timeout",
        h.reload_timeout.as_deref(),
        15 * SECOND,
        (Duration::from_millis(1), DAY),
    );

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
            p.push(
                format!("template.vars.{name}"),
                ProblemKind::Expected("a name of [A-Za-z0-9_] not starting with a digit"),
            );
        }
        if value.chars().any(char::is_control) {
            p.push(
                format!("template.vars.{name}"),
                ProblemKind::Expected("a single line (no control characters)"),
            );
        }
    }

    let metrics_listen = raw.metrics.validate(&mut p);

    // [watch]
    let w = raw.watch;
    // Consul caps blocking queries at 10 minutes.
    let wait = p.duration(
        "watch.wait",
        w.wait.as_deref(),
        Duration::from_secs(300),
        (SECOND, Duration::from_secs(600)),
    );
    let min_interval = p.duration(
        "watch.min_interval",
        w.min_interval.as_deref(),
        Duration::ZERO,
        (Duration::ZERO, Duration::from_secs(600)),
    );
    let retry_interval = p.duration(
        "watch.retry_interval",
        w.retry_interval.as_deref(),
        5 * SECOND,
        (Duration::from_millis(1), Duration::from_secs(600)),
    );

    // [render]
    let name = match raw.render.name {
        Some(n) => NodeName::parse(&n).unwrap_or_else(|_| {
            p.push(
                "render.name",
                ProblemKind::Expected("a name of letters, digits, '.', '_' or '-'"),
            );
            NodeName::parse("invalid").expect("a valid name")
        }),
        None => {
            let host = hostname();
            NodeName::parse(&host).unwrap_or_else(|_| {
                p.push(
                    "render.name",
                    ProblemKind::Conflict("the hostname is no valid proxy name: set one"),
                );
                NodeName::parse("invalid").expect("a valid name")
            })
        }
    };

    // [source_check]
    let source_check = raw.source_check.map(|c| {
        let user = p.required("source_check.user", c.user);
        let well_formed =
            user.len() <= 80 && user.chars().all(|ch| ch.is_ascii_graphic() && ch != '\'');
        if !user.is_empty() && !well_formed {
            p.push(
                "source_check.user",
                ProblemKind::Expected("a MySQL user name without quotes or spaces"),
            );
        }
        let src = SecretSource {
            file: c.password_file,
            env: c.password_env,
        };
        let password = match src.load(env) {
            Ok(Some(s)) => s,
            Ok(None) => {
                p.push(
                    "source_check.password_file",
                    ProblemKind::MissingEither("source_check.password_env"),
                );
                Secret::new("")
            }
            Err(e) => {
                p.push(
                    "source_check.password_file",
                    ProblemKind::Unusable(Box::new(e)),
                );
                Secret::new("")
            }
        };
        let timeout = p.duration(
            "source_check.timeout",
            c.timeout.as_deref(),
            SECOND,
            (Duration::from_millis(100), 30 * SECOND),
        );
        SourceCheck {
            user,
            password,
            timeout,
        }
    });

    p.finish(Config {
        name,
        source_check,
        consul,
        keys,
        haproxy: HaproxyConfig {
            config,
            binary,
            template: HaproxySettings {
                admin_socket: admin_socket.display().to_string(),
                bind_address,
                mysql_check_user: h.mysql_check_user,
                hard_stop_after: haproxy_duration(hard_stop_after),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> Result<Config, Vec<Problem>> {
        from_str(text, &|_| None)
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
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t0k\n").unwrap();
        let c = from_toml(&format!(
            r#"
            [consul]
            address = "https://consul.example:8501"
            token_file = "{}"
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
            vars = {{ env = "prod" }}
            [metrics]
            listen = "127.0.0.1:9105"
            [watch]
            min_interval = "250ms"
            "#,
            token.display()
        ))
        .unwrap();
        assert_eq!(c.consul.addr, "https://consul.example:8501");
        assert_eq!(c.consul.token.as_ref().unwrap().expose(), "t0k");
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
            address = "unix:///run/consul.sock"
            client_cert = "/c.pem"
            [kv]
            prefix = "/mysql"
            [haproxy]
            admin_socket = "relative.sock"
            master_socket = "/run/x y.sock"
            bind_address = "0.0.0.0:80"
            mysql_check_user = "bad user"
            hard_stop_after = "soon"
            check_timeout = "ten seconds"
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
    fn unknown_and_replaced_keys_are_errors() {
        let errors =
            from_toml("[hapxory]\n[haproxy]\nconfg = \"/x\"\n[consul]\naddr = \"c:8500\"\n")
                .unwrap_err();
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            text,
            [
                "`hapxory` is not a known key",
                "`haproxy.confg` is not a known key",
                "`consul.addr` was replaced by `consul.address = \"c:8500\"`",
            ]
        );
    }

    #[test]
    fn consul_environment_applies_under_the_file() {
        // The same section and rules as the agent's (common::config).
        let env = |name: &str| match name {
            "CONSUL_HTTP_ADDR" => Some("10.0.0.9:8501".to_owned()),
            "CONSUL_HTTP_SSL" => Some("1".to_owned()),
            "CONSUL_HTTP_TOKEN" => Some("t0k".to_owned()),
            "CONSUL_DATACENTER" => Some("dc2".to_owned()),
            _ => None,
        };
        let c = from_str("", &env).unwrap();
        assert_eq!(c.consul.addr, "https://10.0.0.9:8501");
        assert_eq!(c.consul.token.as_ref().unwrap().expose(), "t0k");
        assert_eq!(c.consul.datacenter.as_deref(), Some("dc2"));
        let c = from_str(
            "[consul]\naddress = \"c:8500\"\ndatacenter = \"dc1\"\n",
            &env,
        )
        .unwrap();
        assert_eq!(c.consul.addr, "https://c:8500");
        assert_eq!(c.consul.datacenter.as_deref(), Some("dc1"));
        assert_eq!(c.consul.token.as_ref().unwrap().expose(), "t0k");
    }

    #[test]
    fn load_reports_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("render.toml");
        // A missing default file means defaults; a named one is an error.
        assert!(load(&path, false).is_ok());
        assert!(matches!(load(&path, true), Err(ConfigError::Read { .. })));
        std::fs::write(&path, "[watch]\nwait = \"x\"\nretry_interval = \"y\"\n").unwrap();
        let err = load(&path, true).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("2 problems"), "{text}");
        assert!(text.contains("watch.wait") && text.contains("watch.retry_interval"));
    }

    #[test]
    fn durations() {
        let c = from_toml(
            r#"
            [haproxy]
            hard_stop_after = "90m"
            check_timeout = "1.5s"
            [watch]
            wait = "2m 30s"
            min_interval = "250ms"
            retry_interval = "1s"
            "#,
        )
        .unwrap();
        // HAProxy's syntax has no "90m" problem, but no "1h 30m" either.
        assert_eq!(c.haproxy.template.hard_stop_after, "90m");
        assert_eq!(c.haproxy.check_timeout, Duration::from_millis(1500));
        assert_eq!(c.watch.wait, Duration::from_secs(150));
        assert_eq!(c.watch.min_interval, Duration::from_millis(250));
        assert_eq!(c.watch.retry_interval, Duration::from_secs(1));
        for (d, text) in [
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(5400), "90m"),
            (Duration::from_secs(86_400), "1d"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(61), "61s"),
        ] {
            assert_eq!(haproxy_duration(d), text);
        }
    }

    #[test]
    fn the_proxy_name_and_the_source_check() {
        let c = from_toml("").unwrap();
        assert_eq!(c.name.as_str(), hostname());
        assert_eq!(c.source_check, None);
        let c = from_str(
            "[render]\nname = \"edge-1\"\n[source_check]\nuser = \"so_check\"\npassword_env = \"CHECK_PW\"\ntimeout = \"500ms\"\n",
            &|v| (v == "CHECK_PW").then(|| "s3cret".to_owned()),
        )
        .unwrap();
        assert_eq!(c.name.as_str(), "edge-1");
        let check = c.source_check.unwrap();
        assert_eq!(check.user, "so_check");
        assert_eq!(check.password.expose(), "s3cret");
        assert_eq!(check.timeout, Duration::from_millis(500));
        assert!(!format!("{check:?}").contains("s3cret"));
        let errors: Vec<String> =
            from_toml("[render]\nname = \"bad name\"\n[source_check]\nuser = \"o'neil\"\n")
                .unwrap_err()
                .iter()
                .map(|p| p.to_string())
                .collect();
        let all = errors.join("\n");
        assert!(all.contains("render.name"), "{all}");
        assert!(all.contains("source_check.user"), "{all}");
        assert!(all.contains("source_check.password_file"), "{all}");
    }
}
