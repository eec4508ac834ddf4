//! Agent configuration in two stages: the raw TOML as written by the
//! operator, then a validated config. Validation reports every problem at
//! once so a rollout fails on the first try with the whole list.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use successover_common::consul::{ConsulConfig, Token};
use successover_common::contract;
use successover_common::secret::{Secret, SecretSource};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub cluster: Option<String>,
    pub node: Option<String>,
    pub prefix: Option<String>,
    #[serde(default)]
    pub mysql: RawMysql,
    #[serde(default)]
    pub consul: RawConsul,
    #[serde(default)]
    pub timing: RawTiming,
    #[serde(default)]
    pub failover: RawFailover,
    pub metrics_listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFailover {
    /// `probe_and_replicas` (default) or `all` (the source's own agent must
    /// also report its server down or be gone).
    pub detection: Option<String>,
    pub confirmations: Option<u32>,
    pub apply_timeout_s: Option<u64>,
}

/// Who must agree that a source is dead before a failover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detection {
    /// The coordinator cannot reach the source and no replica receives
    /// from it. A partitioned source host cannot veto this: its agent may
    /// be cut off from Consul with a stale report.
    ProbeAndReplicas,
    /// Also the source's agent: its report is gone or says the server is
    /// down. Slower for a partitioned host (its session must expire).
    All,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMysql {
    /// Where the agent connects to its local server.
    pub host: Option<String>,
    pub port: Option<u16>,
    /// Address other nodes, coordinators and proxies use for this server.
    pub advertise_host: Option<String>,
    pub advertise_port: Option<u16>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    pub replication_user: Option<String>,
    pub replication_password_file: Option<PathBuf>,
    pub replication_password_env: Option<String>,
    pub connect_timeout_ms: Option<u64>,
    pub query_timeout_ms: Option<u64>,
    pub read_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsul {
    pub addr: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTiming {
    pub tick_ms: Option<u64>,
    pub session_ttl_s: Option<u64>,
    pub lock_delay_ms: Option<u64>,
    pub report_heartbeat_s: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct MysqlEndpoint {
    pub host: String,
    pub port: u16,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub cluster: String,
    pub node: String,
    pub prefix: String,
    pub local: MysqlEndpoint,
    pub advertise: MysqlEndpoint,
    pub user: String,
    pub password: Secret,
    pub replication_user: String,
    pub replication_password: Secret,
    pub connect_timeout: Duration,
    pub query_timeout: Duration,
    /// Each read (health probes); a hung server is declared unreachable
    /// after this long.
    pub read_timeout: Duration,
    pub consul: ConsulConfig,
    pub tick: Duration,
    pub session_ttl: Duration,
    pub lock_delay: Duration,
    pub report_heartbeat: Duration,
    pub detection: Detection,
    /// Consecutive cycles the source must look dead.
    pub confirmations: u32,
    /// How long a candidate may take to apply its relay log.
    pub apply_timeout: Duration,
    pub metrics_listen: Option<SocketAddr>,
}

/// Every problem found, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigErrors(pub Vec<String>);

pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors(vec![format!("cannot read {}: {e}", path.display())]))?;
    let raw: RawConfig = toml::from_str(&text)
        .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
    validate(raw, |name| std::env::var(name).ok())
}

pub fn validate(
    raw: RawConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let mut need = |value: Option<String>, key: &str| -> String {
        value.unwrap_or_else(|| {
            errors.push(format!("{key} is required"));
            String::new()
        })
    };
    let cluster = need(raw.cluster, "cluster");
    let node = need(raw.node, "node");
    let user = need(raw.mysql.user, "mysql.user");
    let advertise_host = need(raw.mysql.advertise_host, "mysql.advertise_host");
    if !cluster.is_empty() && contract::valid_cluster_name(&cluster).is_err() {
        errors.push(format!("cluster {cluster:?} is not a valid cluster name"));
    }
    if !node.is_empty() && contract::valid_node_name(&node).is_err() {
        errors.push(format!("node {node:?} is not a valid node name"));
    }
    let prefix = raw
        .prefix
        .unwrap_or_else(|| contract::DEFAULT_PREFIX.to_owned());
    if !prefix.ends_with('/') || prefix.starts_with('/') {
        errors.push(format!(
            "prefix {prefix:?} must end with '/' and not start with one"
        ));
    }
    let host = raw.mysql.host.unwrap_or_else(|| "127.0.0.1".to_owned());
    let port = raw.mysql.port.unwrap_or(3306);
    for (key, h) in [
        ("mysql.host", &host),
        ("mysql.advertise_host", &advertise_host),
    ] {
        if !h.is_empty() && contract::valid_host(h).is_err() {
            errors.push(format!("{key} {h:?} is not a hostname or IP address"));
        }
    }
    for (key, p) in [
        ("mysql.port", Some(port)),
        ("mysql.advertise_port", raw.mysql.advertise_port),
    ] {
        if p == Some(0) {
            errors.push(format!("{key} must be 1-65535"));
        }
    }
    if !user.is_empty() && !crate::mysql::dialect::valid_user(&user) {
        errors.push(format!(
            "mysql.user {user:?} has characters outside [A-Za-z0-9_.-]"
        ));
    }
    let replication_user = raw
        .mysql
        .replication_user
        .unwrap_or_else(|| "repl".to_owned());
    if !crate::mysql::dialect::valid_user(&replication_user) {
        errors.push(format!(
            "mysql.replication_user {replication_user:?} has characters outside [A-Za-z0-9_.-]"
        ));
    }
    let mut secret = |file: Option<PathBuf>, env_var: Option<String>, key: &str| -> Secret {
        let src = SecretSource { file, env: env_var };
        match src.load(key) {
            Ok(Some(s)) => s,
            Ok(None) => {
                errors.push(format!("{key}: set {key}_file or {key}_env"));
                Secret::new("")
            }
            Err(e) => {
                errors.push(e);
                Secret::new("")
            }
        }
    };
    let password = secret(
        raw.mysql.password_file,
        raw.mysql.password_env,
        "mysql.password",
    );
    let replication_password = secret(
        raw.mysql.replication_password_file,
        raw.mysql.replication_password_env,
        "mysql.replication_password",
    );

    let mut consul = match ConsulConfig::from_lookup(&env) {
        Ok(c) => c,
        Err(e) => {
            errors.push(e.to_string());
            ConsulConfig::default()
        }
    };
    if let Some(addr) = raw.consul.addr {
        consul.addr = ConsulConfig::new(addr).addr;
    }
    if let Some(path) = raw.consul.token_file {
        match Token::from_file(&path) {
            Ok(t) => consul.token = Some(t),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if raw.consul.ca_file.is_some() {
        consul.tls.ca_file = raw.consul.ca_file;
    }
    if raw.consul.client_cert.is_some() {
        consul.tls.client_cert = raw.consul.client_cert;
    }
    if raw.consul.client_key.is_some() {
        consul.tls.client_key = raw.consul.client_key;
    }

    let tick = Duration::from_millis(raw.timing.tick_ms.unwrap_or(1000));
    let session_ttl = Duration::from_secs(raw.timing.session_ttl_s.unwrap_or(10));
    let lock_delay = Duration::from_millis(raw.timing.lock_delay_ms.unwrap_or(1000));
    let report_heartbeat = Duration::from_secs(raw.timing.report_heartbeat_s.unwrap_or(30));
    if tick < Duration::from_millis(100) || tick > Duration::from_secs(60) {
        errors.push("timing.tick_ms must be between 100 and 60000".to_owned());
    }
    // Consul's own bounds on a session TTL.
    if session_ttl < Duration::from_secs(10) || session_ttl > Duration::from_secs(86400) {
        errors.push("timing.session_ttl_s must be between 10 and 86400".to_owned());
    }
    if lock_delay > Duration::from_secs(60) {
        errors.push("timing.lock_delay_ms must be at most 60000".to_owned());
    }
    if report_heartbeat < tick {
        errors.push("timing.report_heartbeat_s must not be shorter than timing.tick_ms".to_owned());
    }
    let detection = match raw.failover.detection.as_deref() {
        None | Some("probe_and_replicas") => Detection::ProbeAndReplicas,
        Some("all") => Detection::All,
        Some(other) => {
            errors.push(format!(
                "failover.detection {other:?} must be \"probe_and_replicas\" or \"all\""
            ));
            Detection::ProbeAndReplicas
        }
    };
    let confirmations = raw.failover.confirmations.unwrap_or(3);
    if !(1..=100).contains(&confirmations) {
        errors.push("failover.confirmations must be between 1 and 100".to_owned());
    }
    let apply_timeout = Duration::from_secs(raw.failover.apply_timeout_s.unwrap_or(60));
    let metrics_listen = match raw.metrics_listen {
        Some(s) => match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errors.push(format!("metrics_listen {s:?} is not an ip:port"));
                None
            }
        },
        None => None,
    };
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Config {
        cluster,
        node,
        prefix,
        local: MysqlEndpoint { host, port },
        advertise: MysqlEndpoint {
            host: advertise_host,
            port: raw.mysql.advertise_port.unwrap_or(port),
        },
        user,
        password,
        replication_user,
        replication_password,
        connect_timeout: Duration::from_millis(raw.mysql.connect_timeout_ms.unwrap_or(2000)),
        query_timeout: Duration::from_millis(raw.mysql.query_timeout_ms.unwrap_or(5000)),
        read_timeout: Duration::from_millis(raw.mysql.read_timeout_ms.unwrap_or(2000)),
        consul,
        tick,
        session_ttl,
        lock_delay,
        report_heartbeat,
        detection,
        confirmations,
        apply_timeout,
        metrics_listen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        validate(toml::from_str(text).unwrap(), |_| None)
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let err = parse(
            r#"
            cluster = "bad name"
            [mysql]
            advertise_host = "db1\nserver evil"
            [timing]
            tick_ms = 5
            "#,
        )
        .unwrap_err();
        let all = err.to_string();
        for expected in [
            "node is required",
            "mysql.user is required",
            "cluster \"bad name\" is not a valid cluster name",
            "mysql.advertise_host",
            "mysql.password: set mysql.password_file or mysql.password_env",
            "timing.tick_ms must be between 100 and 60000",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
    }

    #[test]
    fn minimal_config_gets_sane_defaults_and_hides_secrets() {
        let dir = std::env::temp_dir().join(format!("so-agent-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pw"), "hunter2\n").unwrap();
        let cfg = parse(&format!(
            r#"
            cluster = "c1"
            node = "db1"
            [mysql]
            user = "successover"
            advertise_host = "10.0.0.1"
            password_file = "{0}/pw"
            replication_password_file = "{0}/pw"
            "#,
            dir.display()
        ))
        .unwrap();
        assert_eq!(cfg.prefix, "mysql/");
        assert_eq!(cfg.local.port, 3306);
        assert_eq!(cfg.advertise.port, 3306);
        assert_eq!(cfg.password.expose(), "hunter2");
        assert_eq!(cfg.tick, Duration::from_secs(1));
        assert!(!format!("{cfg:?}").contains("hunter2"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
