//! Agent configuration in two stages: the raw TOML as written by the
//! operator, then a validated config. Sections, duration syntax and errors
//! are the ones every successover daemon shares
//! (`successover_common::config`); validation reports every problem at
//! once, so a rollout fails on the first host with the whole list.
//!
//! ```toml
//! cluster = "shop"                 # required
//! node = "db1"                     # required; this host's name in KV
//!
//! [mysql]
//! host = "127.0.0.1"               # where the agent reaches its server
//! port = 3306
//! advertise_host = "10.0.1.11"     # required; how others reach it
//! advertise_port = 3306            # default: port
//! user = "successover"             # required
//! password_file = "/etc/successover/mysql-agent.password"   # or password_env
//! replication_user = "repl"
//! replication_password_file = "/etc/successover/mysql-replication.password"
//! replication_tls = false          # default: MariaDB the server's own (MASTER_SSL), MySQL on
//! replication_public_key_file = "/etc/mysql/source-public-key.pem"  # MySQL without TLS only
//! connect_timeout = "2s"
//! query_timeout = "5s"
//! read_timeout = "2s"              # a hung server is unreachable after this
//!
//! [consul]                         # shared with successover-render; every
//! address = "http://127.0.0.1:8500"  # key falls back to its CONSUL_* variable
//! token_file = "/etc/successover/consul.token"
//! ca_file = "/etc/successover/consul-ca.pem"
//! client_cert = "/etc/successover/client.pem"
//! client_key = "/etc/successover/client-key.pem"
//! datacenter = "dc1"
//!
//! [kv]
//! prefix = "mysql/"
//!
//! [timing]
//! tick = "1s"
//! probe = "250ms"                  # the coordinator's look at its source between ticks
//! session_ttl = "0s"               # "0s": no TTL, the session ends with the liveness
//!                                  # check (no renewals); else 10s to 24h, renewed at half
//! lock_delay = "1s"
//! report_heartbeat = "60s"
//! proxy_ack_timeout = "10s"        # before a new source opens, how long live proxies may
//!                                  # take to stop routing elsewhere; "0s": do not wait
//!
//! [failover]
//! detection = "probe_and_replicas"  # or "all"
//! confirmations = 3
//! apply_timeout = "1m"
//!
//! [switchover]
//! converge_timeout = "30s"         # the target gets close behind the open source, or no switch
//! converge_lag = "100ms"           # "close": it applies the source's position within this
//! catch_up_timeout = "500ms"       # after read-only, the rest; past it the switch rolls back
//!
//! [history]
//! keep = 100                       # entries per cluster; older ones are deleted
//!
//! [metrics]
//! listen = "127.0.0.1:9104"        # default: no metrics server
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use successover_common::config::{
    self as common, ConfigError, Env, OldUnit, Problem, ProblemKind, Problems, RawConsul, RawKv,
    RawMetrics, Replaced,
};
use successover_common::consul::ConsulConfig;
use successover_common::contract;
use successover_common::secret::{Secret, SecretSource};

#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    pub cluster: Option<String>,
    pub node: Option<String>,
    #[serde(default)]
    pub mysql: RawMysql,
    #[serde(default)]
    pub consul: RawConsul,
    #[serde(default)]
    pub kv: RawKv,
    #[serde(default)]
    pub timing: RawTiming,
    #[serde(default)]
    pub failover: RawFailover,
    #[serde(default)]
    pub switchover: RawSwitchover,
    #[serde(default)]
    pub history: RawHistory,
    #[serde(default)]
    pub metrics: RawMetrics,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawHistory {
    /// History entries kept per cluster.
    pub keep: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawSwitchover {
    pub converge_timeout: Option<String>,
    pub converge_lag: Option<String>,
    pub catch_up_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawFailover {
    /// `probe_and_replicas` (default) or `all` (the source's own agent must
    /// also report its server down or be gone).
    pub detection: Option<String>,
    pub confirmations: Option<u32>,
    pub apply_timeout: Option<String>,
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
    pub replication_tls: Option<bool>,
    /// MySQL with `replication_tls = false`: the sources' RSA public key,
    /// a file on this host (`SOURCE_PUBLIC_KEY_PATH`), for a replication
    /// account on `caching_sha2_password`. Never fetched from the source.
    pub replication_public_key_file: Option<PathBuf>,
    pub connect_timeout: Option<String>,
    pub query_timeout: Option<String>,
    pub read_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawTiming {
    pub tick: Option<String>,
    pub probe: Option<String>,
    pub session_ttl: Option<String>,
    pub lock_delay: Option<String>,
    pub report_heartbeat: Option<String>,
    pub proxy_ack_timeout: Option<String>,
}

/// Keys of the agent's first vocabulary. A file that still uses one is
/// refused with the key to write instead, rather than silently running on
/// a default.
pub const REPLACED: &[Replaced] = &[
    Replaced {
        old: "prefix",
        new: "kv.prefix",
        unit: OldUnit::Same,
    },
    Replaced {
        old: "metrics_listen",
        new: "metrics.listen",
        unit: OldUnit::Same,
    },
    Replaced {
        old: "mysql.connect_timeout_ms",
        new: "mysql.connect_timeout",
        unit: OldUnit::Millis,
    },
    Replaced {
        old: "mysql.query_timeout_ms",
        new: "mysql.query_timeout",
        unit: OldUnit::Millis,
    },
    Replaced {
        old: "mysql.read_timeout_ms",
        new: "mysql.read_timeout",
        unit: OldUnit::Millis,
    },
    Replaced {
        old: "timing.tick_ms",
        new: "timing.tick",
        unit: OldUnit::Millis,
    },
    Replaced {
        old: "timing.session_ttl_s",
        new: "timing.session_ttl",
        unit: OldUnit::Secs,
    },
    Replaced {
        old: "timing.lock_delay_ms",
        new: "timing.lock_delay",
        unit: OldUnit::Millis,
    },
    Replaced {
        old: "timing.report_heartbeat_s",
        new: "timing.report_heartbeat",
        unit: OldUnit::Secs,
    },
    Replaced {
        old: "failover.apply_timeout_s",
        new: "failover.apply_timeout",
        unit: OldUnit::Secs,
    },
];

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
    /// Whether a replica the agent repoints connects with TLS; `None`: the
    /// server's default (MariaDB 11.4's is on, which a source without TLS
    /// refuses).
    pub replication_tls: Option<bool>,
    /// MySQL with `replication_tls = false`: the sources' RSA public key,
    /// a file on this host (`SOURCE_PUBLIC_KEY_PATH`), for a replication
    /// account on `caching_sha2_password`. Never fetched from the source.
    pub replication_public_key_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub query_timeout: Duration,
    /// Each read (health probes); a hung server is declared unreachable
    /// after this long.
    pub read_timeout: Duration,
    pub consul: ConsulConfig,
    pub tick: Duration,
    /// How often the coordinator looks at its source between ticks, and
    /// how far apart the looks that confirm a dead source are.
    pub probe: Duration,
    /// `None`: the session has no TTL and lives while its liveness check
    /// and the node's `serfHealth` pass (the default: no renewals).
    pub session_ttl: Option<Duration>,
    pub lock_delay: Duration,
    pub report_heartbeat: Duration,
    /// Before a new source opens for writes: how long the coordinator waits
    /// for every live proxy (`proxy/<name>` with a session) to stop routing
    /// the cluster to another server. Past it the source opens anyway, with
    /// the proxies still waited for named in the log and the history entry.
    pub proxy_ack_timeout: Duration,
    pub detection: Detection,
    /// Consecutive cycles the source must look dead.
    pub confirmations: u32,
    /// How long a candidate may take to apply its relay log.
    pub apply_timeout: Duration,
    /// How long a switch waits, the old source still open, for the target
    /// to get within `converge_lag` of it.
    pub converge_timeout: Duration,
    pub converge_lag: Duration,
    /// After the old source is read-only: how long the target may take to
    /// apply the rest before the switch rolls back.
    pub catch_up_timeout: Duration,
    /// History entries kept per cluster: after each procedure the
    /// coordinator deletes the oldest beyond this.
    pub history_keep: u32,
    pub metrics_listen: Option<SocketAddr>,
}

pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    from_str(&text, &common::process_env).map_err(|problems| ConfigError::Invalid {
        path: path.to_owned(),
        problems,
    })
}

/// Parses and validates a config file's text; `env` supplies the
/// `CONSUL_*` variables and `*_env` secrets.
pub fn from_str(text: &str, env: Env<'_>) -> Result<Config, Vec<Problem>> {
    common::from_str(text, REPLACED, |raw| validate(raw, env))
}

const SECOND: Duration = Duration::from_secs(1);
const MILLISECOND: Duration = Duration::from_millis(1);

pub fn validate(raw: RawConfig, env: Env<'_>) -> Result<Config, Vec<Problem>> {
    let mut p = Problems::new();
    let cluster: String = p.required("cluster", raw.cluster);
    let node: String = p.required("node", raw.node);
    let user: String = p.required("mysql.user", raw.mysql.user);
    let advertise_host: String = p.required("mysql.advertise_host", raw.mysql.advertise_host);
    if !cluster.is_empty() && contract::valid_cluster_name(&cluster).is_err() {
        p.push(
            "cluster",
            ProblemKind::Expected("a cluster name of [A-Za-z0-9_.-], at most 64 characters"),
        );
    }
    if !node.is_empty() && contract::valid_node_name(&node).is_err() {
        p.push(
            "node",
            ProblemKind::Expected("a node name of [A-Za-z0-9_.-], at most 253 characters"),
        );
    }
    let prefix = raw.kv.validate(&mut p).prefix().to_owned();
    let host = raw.mysql.host.unwrap_or_else(|| "127.0.0.1".to_owned());
    let port = raw.mysql.port.unwrap_or(3306);
    for (key, h) in [
        ("mysql.host", &host),
        ("mysql.advertise_host", &advertise_host),
    ] {
        if !h.is_empty() && contract::valid_host(h).is_err() {
            p.push(key, ProblemKind::Expected("a hostname or IP address"));
        }
    }
    for (key, port) in [
        ("mysql.port", Some(port)),
        ("mysql.advertise_port", raw.mysql.advertise_port),
    ] {
        if port == Some(0) {
            p.push(key, ProblemKind::Expected("a port from 1 to 65535"));
        }
    }
    if !user.is_empty() && !crate::mysql::dialect::valid_user(&user) {
        p.push(
            "mysql.user",
            ProblemKind::Expected("a MySQL user name of [A-Za-z0-9_.-]"),
        );
    }
    let replication_user = raw
        .mysql
        .replication_user
        .unwrap_or_else(|| "repl".to_owned());
    if !crate::mysql::dialect::valid_user(&replication_user) {
        p.push(
            "mysql.replication_user",
            ProblemKind::Expected("a MySQL user name of [A-Za-z0-9_.-]"),
        );
    }
    let mut secret = |file: Option<PathBuf>, var: Option<String>, keys: (&str, &'static str)| {
        let key = if file.is_some() || var.is_none() {
            keys.0
        } else {
            keys.1
        };
        let src = SecretSource { file, env: var };
        match src.load(env) {
            Ok(Some(s)) => s,
            Ok(None) => {
                p.push(key, ProblemKind::MissingEither(keys.1));
                Secret::new("")
            }
            Err(e) => {
                p.push(key, ProblemKind::Unusable(Box::new(e)));
                Secret::new("")
            }
        }
    };
    let password = secret(
        raw.mysql.password_file,
        raw.mysql.password_env,
        ("mysql.password_file", "mysql.password_env"),
    );
    let replication_password = secret(
        raw.mysql.replication_password_file,
        raw.mysql.replication_password_env,
        (
            "mysql.replication_password_file",
            "mysql.replication_password_env",
        ),
    );
    let timeouts = (Duration::from_millis(100), Duration::from_secs(600));
    let connect_timeout = p.duration(
        "mysql.connect_timeout",
        raw.mysql.connect_timeout.as_deref(),
        2 * SECOND,
        timeouts,
    );
    let query_timeout = p.duration(
        "mysql.query_timeout",
        raw.mysql.query_timeout.as_deref(),
        5 * SECOND,
        timeouts,
    );
    let read_timeout = p.duration(
        "mysql.read_timeout",
        raw.mysql.read_timeout.as_deref(),
        2 * SECOND,
        timeouts,
    );

    let consul = raw.consul.validate(env, &mut p);

    let t = &raw.timing;
    let tick = p.duration(
        "timing.tick",
        t.tick.as_deref(),
        SECOND,
        (Duration::from_millis(100), 60 * SECOND),
    );
    let probe = p.duration(
        "timing.probe",
        t.probe.as_deref(),
        Duration::from_millis(250).min(tick),
        (Duration::from_millis(50), 60 * SECOND),
    );
    if probe > tick {
        p.push(
            "timing.probe",
            ProblemKind::Conflict("must not be longer than timing.tick"),
        );
    }
    // "0s" is no TTL; anything else within Consul's own bounds.
    let session_ttl = match t.session_ttl.as_deref() {
        Some(text)
            if successover_common::config::parse_duration(text).ok() == Some(Duration::ZERO) =>
        {
            None
        }
        None => None,
        text => Some(p.duration(
            "timing.session_ttl",
            text,
            10 * SECOND,
            (10 * SECOND, 86400 * SECOND),
        )),
    };
    let lock_delay = p.duration(
        "timing.lock_delay",
        t.lock_delay.as_deref(),
        SECOND,
        (Duration::ZERO, 60 * SECOND),
    );
    let report_heartbeat = p.duration(
        "timing.report_heartbeat",
        t.report_heartbeat.as_deref(),
        60 * SECOND,
        (SECOND, 3600 * SECOND),
    );
    if report_heartbeat < tick {
        p.push(
            "timing.report_heartbeat",
            ProblemKind::Conflict("must not be shorter than timing.tick"),
        );
    }
    let proxy_ack_timeout = p.duration(
        "timing.proxy_ack_timeout",
        t.proxy_ack_timeout.as_deref(),
        10 * SECOND,
        (Duration::ZERO, 600 * SECOND),
    );
    let detection = match raw.failover.detection.as_deref() {
        None | Some("probe_and_replicas") => Detection::ProbeAndReplicas,
        Some("all") => Detection::All,
        Some(_) => {
            p.push(
                "failover.detection",
                ProblemKind::Expected("\"probe_and_replicas\" or \"all\""),
            );
            Detection::ProbeAndReplicas
        }
    };
    let confirmations = raw.failover.confirmations.unwrap_or(3);
    if !(1..=100).contains(&confirmations) {
        p.push(
            "failover.confirmations",
            ProblemKind::Expected("a count from 1 to 100"),
        );
    }
    let apply_timeout = p.duration(
        "failover.apply_timeout",
        raw.failover.apply_timeout.as_deref(),
        60 * SECOND,
        (SECOND, 86400 * SECOND),
    );
    let converge_timeout = p.duration(
        "switchover.converge_timeout",
        raw.switchover.converge_timeout.as_deref(),
        30 * SECOND,
        (SECOND, 3600 * SECOND),
    );
    let converge_lag = p.duration(
        "switchover.converge_lag",
        raw.switchover.converge_lag.as_deref(),
        100 * MILLISECOND,
        (10 * MILLISECOND, 60 * SECOND),
    );
    let catch_up_timeout = p.duration(
        "switchover.catch_up_timeout",
        raw.switchover.catch_up_timeout.as_deref(),
        500 * MILLISECOND,
        (50 * MILLISECOND, 600 * SECOND),
    );
    let history_keep = raw.history.keep.unwrap_or(100);
    if !(1..=100_000).contains(&history_keep) {
        p.push(
            "history.keep",
            ProblemKind::Expected("a count from 1 to 100000"),
        );
    }
    let replication_public_key_file = raw.mysql.replication_public_key_file.clone();
    if let Some(path) = &replication_public_key_file {
        if raw.mysql.replication_tls != Some(false) {
            p.push(
                "mysql.replication_public_key_file",
                ProblemKind::Conflict("only used with mysql.replication_tls = false"),
            );
        }
        let text = path.to_str().unwrap_or_default();
        if !path.is_absolute() || text.contains(['\'', '\\']) || text.chars().any(char::is_control)
        {
            p.push(
                "mysql.replication_public_key_file",
                ProblemKind::Expected("an absolute path without quotes or backslashes"),
            );
        }
    }
    let metrics_listen = raw.metrics.validate(&mut p);
    p.finish(Config {
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
        replication_tls: raw.mysql.replication_tls,
        replication_public_key_file,
        connect_timeout,
        query_timeout,
        read_timeout,
        consul,
        tick,
        probe,
        session_ttl,
        lock_delay,
        report_heartbeat,
        proxy_ack_timeout,
        detection,
        confirmations,
        apply_timeout,
        converge_timeout,
        converge_lag,
        catch_up_timeout,
        history_keep,
        metrics_listen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const MINIMAL: &str = r#"
        cluster = "c1"
        node = "db1"
        [mysql]
        user = "successover"
        advertise_host = "10.0.0.1"
        password_env = "PW"
        replication_password_env = "PW"
    "#;

    fn parse_with(text: &str, vars: &[(&str, &str)]) -> Result<Config, Vec<String>> {
        let mut env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.entry("PW".into()).or_insert_with(|| "hunter2".into());
        from_str(text, &|name| env.get(name).cloned())
            .map_err(|problems| problems.iter().map(|p| p.to_string()).collect())
    }

    fn parse(text: &str) -> Result<Config, Vec<String>> {
        parse_with(text, &[])
    }

    #[test]
    fn every_old_key_names_its_replacement() {
        let errors = parse(&format!(
            r#"
            prefix = "dc1/mysql/"
            metrics_listen = "127.0.0.1:9104"
            {MINIMAL}
            connect_timeout_ms = 1000
            query_timeout_ms = 3000
            read_timeout_ms = 1500
            [consul]
            addr = "http://127.0.0.1:8500"
            [timing]
            tick_ms = 300
            session_ttl_s = 10
            lock_delay_ms = 500
            report_heartbeat_s = 30
            [failover]
            apply_timeout_s = 60
            "#
        ))
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "`prefix` was replaced by `kv.prefix = \"dc1/mysql/\"`",
                "`metrics_listen` was replaced by `metrics.listen = \"127.0.0.1:9104\"`",
                "`mysql.connect_timeout_ms` was replaced by `mysql.connect_timeout = \"1s\"`",
                "`mysql.query_timeout_ms` was replaced by `mysql.query_timeout = \"3s\"`",
                "`mysql.read_timeout_ms` was replaced by `mysql.read_timeout = \"1s 500ms\"`",
                "`consul.addr` was replaced by `consul.address = \"http://127.0.0.1:8500\"`",
                "`timing.tick_ms` was replaced by `timing.tick = \"300ms\"`",
                "`timing.session_ttl_s` was replaced by `timing.session_ttl = \"10s\"`",
                "`timing.lock_delay_ms` was replaced by `timing.lock_delay = \"500ms\"`",
                "`timing.report_heartbeat_s` was replaced by `timing.report_heartbeat = \"30s\"`",
                "`failover.apply_timeout_s` was replaced by `failover.apply_timeout = \"1m\"`",
            ]
        );
        // Every entry of the table was exercised above.
        assert_eq!(errors.len(), REPLACED.len() + 1);
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let errors = parse_with(
            r#"
            cluster = "bad name"
            tick_ms = 5
            [mysql]
            advertise_host = "db1\nserver evil"
            password_file = "/nonexistent/pw"
            [timing]
            tick = "5ms"
            lock_delay = "a while"
            [kv]
            prefix = "/abs"
            [metrics]
            listen = "localhost"
            [failover]
            detection = "vote"
            "#,
            &[("CONSUL_HTTP_TOKEN_FILE", "/nonexistent/token")],
        )
        .unwrap_err();
        let expected = [
            "`tick_ms` is not a known key",
            "`node` is required",
            "`mysql.user` is required",
            "`cluster`: expected a cluster name",
            "`kv.prefix`: expected",
            "`mysql.advertise_host`: expected a hostname or IP address",
            "`mysql.password_file`: cannot read /nonexistent/pw: ",
            "`mysql.replication_password_file` or `mysql.replication_password_env` is required",
            "`CONSUL_HTTP_TOKEN_FILE`: ",
            "`timing.tick`: must be from 100ms to 1m",
            "`timing.lock_delay`: expected a duration like",
            "`failover.detection`: expected",
            "`metrics.listen`: expected",
        ];
        for e in expected {
            assert!(
                errors.iter().any(|got| got.starts_with(e)),
                "missing {e:?} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    }

    #[test]
    fn durations_parse() {
        let cfg = parse(&format!(
            r#"{MINIMAL}
            connect_timeout = "250ms"
            query_timeout = "1m 30s"
            read_timeout = "1.5s"
            [timing]
            tick = "300ms"
            session_ttl = "15s"
            lock_delay = "0s"
            report_heartbeat = "2m"
            proxy_ack_timeout = "0s"
            [failover]
            apply_timeout = "1h"
            "#
        ))
        .unwrap();
        assert_eq!(cfg.connect_timeout, Duration::from_millis(250));
        assert_eq!(cfg.query_timeout, Duration::from_secs(90));
        assert_eq!(cfg.read_timeout, Duration::from_millis(1500));
        assert_eq!(cfg.tick, Duration::from_millis(300));
        assert_eq!(cfg.session_ttl, Some(Duration::from_secs(15)));
        assert_eq!(cfg.lock_delay, Duration::ZERO);
        assert_eq!(cfg.report_heartbeat, Duration::from_secs(120));
        assert_eq!(cfg.proxy_ack_timeout, Duration::ZERO);
        assert_eq!(cfg.apply_timeout, Duration::from_secs(3600));
    }

    #[test]
    fn a_session_ttl_of_zero_is_no_ttl_and_a_short_one_is_refused() {
        let cfg = parse(&format!("{MINIMAL}\n[timing]\nsession_ttl = \"0s\"\n")).unwrap();
        assert_eq!(cfg.session_ttl, None);
        let errors = parse(&format!("{MINIMAL}\n[timing]\nsession_ttl = \"5s\"\n")).unwrap_err();
        assert!(
            errors.iter().any(|e| e.contains("timing.session_ttl")),
            "{errors:?}"
        );
    }

    #[test]
    fn consul_environment_applies_under_the_file() {
        let env = [
            ("CONSUL_HTTP_ADDR", "10.0.0.9:8501"),
            ("CONSUL_HTTP_SSL", "1"),
            ("CONSUL_HTTP_TOKEN", "t0k"),
            ("CONSUL_DATACENTER", "dc2"),
        ];
        let cfg = parse_with(MINIMAL, &env).unwrap();
        assert_eq!(cfg.consul.addr, "https://10.0.0.9:8501");
        assert_eq!(cfg.consul.token.as_ref().unwrap().expose(), "t0k");
        assert_eq!(cfg.consul.datacenter.as_deref(), Some("dc2"));
        let cfg = parse_with(
            &format!("{MINIMAL}\n[consul]\naddress = \"c:8500\"\ndatacenter = \"dc1\"\n"),
            &env,
        )
        .unwrap();
        // CONSUL_HTTP_SSL gives a scheme-less address https, as in Consul's CLI.
        assert_eq!(cfg.consul.addr, "https://c:8500");
        assert_eq!(cfg.consul.datacenter.as_deref(), Some("dc1"));
        assert_eq!(cfg.consul.token.as_ref().unwrap().expose(), "t0k");
    }

    #[test]
    fn minimal_config_gets_sane_defaults_and_hides_secrets() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "hunter2\n").unwrap();
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
            dir.path().display()
        ))
        .unwrap();
        assert_eq!(cfg.prefix, "mysql/");
        assert_eq!(cfg.local.port, 3306);
        assert_eq!(cfg.advertise.port, 3306);
        assert_eq!(cfg.password.expose(), "hunter2");
        assert_eq!(cfg.tick, Duration::from_secs(1));
        assert_eq!(cfg.probe, Duration::from_millis(250));
        assert_eq!(cfg.session_ttl, None);
        assert_eq!(cfg.proxy_ack_timeout, Duration::from_secs(10));
        assert_eq!(cfg.apply_timeout, Duration::from_secs(60));
        assert_eq!(cfg.consul.addr, "http://127.0.0.1:8500");
        assert_eq!(cfg.metrics_listen, None);
        assert_eq!(cfg.replication_tls, None);
        assert!(!format!("{cfg:?}").contains("hunter2"));
        let cfg = parse(&format!(
            r#"
            cluster = "c1"
            node = "db1"
            [mysql]
            user = "successover"
            advertise_host = "10.0.0.1"
            password_file = "{0}/pw"
            replication_password_file = "{0}/pw"
            replication_tls = false
            replication_public_key_file = "/etc/mysql/source.pem"
            "#,
            dir.path().display()
        ))
        .unwrap();
        assert_eq!(cfg.replication_tls, Some(false));
        assert_eq!(
            cfg.replication_public_key_file.as_deref(),
            Some(Path::new("/etc/mysql/source.pem"))
        );
        for (tls, file, why) in [
            ("", "/etc/mysql/source.pem", "only used with"),
            ("replication_tls = false", "source.pem", "absolute path"),
            ("replication_tls = false", "/etc/it's.pem", "absolute path"),
        ] {
            let errors = parse_with(
                &format!("{MINIMAL}\n{tls}\nreplication_public_key_file = \"{file}\"\n"),
                &[("PW", "pw")],
            )
            .unwrap_err()
            .join("\n");
            assert!(errors.contains(why), "{errors}");
        }
    }

    #[test]
    fn the_probe_is_at_most_the_tick() {
        let env = [("PW", "pw")];
        // The default follows a short tick down.
        let cfg = parse_with(&format!("{MINIMAL}\n[timing]\ntick = \"100ms\"\n"), &env).unwrap();
        assert_eq!(cfg.probe, Duration::from_millis(100));
        let err = parse_with(
            &format!("{MINIMAL}\n[timing]\ntick = \"1s\"\nprobe = \"2s\"\n"),
            &env,
        )
        .unwrap_err()
        .join("; ");
        assert!(err.contains("timing.probe"), "{err}");
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let err = load(&path).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
        std::fs::write(&path, "[timing]\ntick_ms = 300\n").unwrap();
        let text = load(&path).unwrap_err().to_string();
        assert!(text.starts_with(&format!("config file {} has", path.display())));
        assert!(text.contains("`timing.tick = \"300ms\"`"), "{text}");
    }
}
