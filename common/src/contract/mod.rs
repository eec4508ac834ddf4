//! KV contract: key paths and value shapes.
//!
//! Every daemon and the CLI go through these helpers, so the layout lives in
//! one place. The layout (default prefix `mysql/`):
//!
//! | key | value |
//! |---|---|
//! | `mysql/master/<cluster>` | current source, `host:port` (orchestrator's layout); [`Keys::publish_ops`] |
//! | `mysql/master/<cluster>/hostname`, `/port`, `/ipv4`, `/ipv6` | the same, split |
//! | `mysql/master/<cluster>/failed` | present (any value) = fenced; [`Fence`] as JSON |
//! | `mysql/cluster/<cluster>` | [`ClusterSettings`] as JSON |
//! | `mysql/quarantine/<cluster>/<node>` | [`Quarantine`] as JSON |
//! | `mysql/drain/<cluster>/<node>` | present (any value): the node gives up the semi-sync ACK role, make before break |
//! | `mysql/agent/<cluster>/<node>` | a host's [`HealthReport`] as JSON |
//! | `mysql/lock/<cluster>` | coordinator lock |
//! | `mysql/switchover/<cluster>` | planned-switch request (target node) |
//! | `mysql/rejoin/<cluster>/<node>` | rejoin request |
//! | `mysql/history/<cluster>/…` | audit trail, in-progress and last-failover markers |
//! | `mysql/proxy/<proxy>` | what a renderer's HAProxy serves; [`ProxyServing`] |
//!
//! Requests and the audit trail are in [`crate::procedure`]. Times in
//! values follow one rule, `*_ms` fields in Unix milliseconds; readers
//! still accept what was written before it (see [`time`]).
//!
//! Everything read from KV is untrusted: a value that reaches an HAProxy
//! config with a newline in it could add directives. So names, hosts and
//! ports have strict parsers here, and their errors never echo raw control
//! characters back into logs.

mod fence;
mod plan;
mod proxy;
mod quarantine;
pub mod report;
mod source;
pub mod time;

pub use fence::Fence;
pub use plan::FailoverPlan;
pub use proxy::{ProxyServing, ServedCluster};
pub use quarantine::{host_is_node, Quarantine};
pub use report::{HealthReport, ReplicationReport, SemiSyncReport, MIN_SEMI_SYNC_TIMEOUT_MS};
pub use source::{MasterKeys, MasterProblem, PublishedSource};

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The prefix every key lives under unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "mysql/";

/// Children of `master/<cluster>` in orchestrator's layout.
pub const ATTR_HOSTNAME: &str = "hostname";
pub const ATTR_PORT: &str = "port";
pub const ATTR_IPV4: &str = "ipv4";
pub const ATTR_IPV6: &str = "ipv6";
/// Our addition to the layout: present = the cluster is fenced.
pub const ATTR_FAILED: &str = "failed";

const MAX_CLUSTER_NAME: usize = 64;
const MAX_NODE_NAME: usize = 253;
const MAX_HOSTNAME: usize = 253;
const MAX_LABEL: usize = 63;

/// Why a value is not acceptable. The caller adds the key (see
/// [`KeyError`]); the offending value itself is never printed raw.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("empty")]
    Empty,
    #[error("too long ({len} bytes, at most {max})")]
    TooLong { len: usize, max: usize },
    #[error("character {ch:?} at byte {pos} is not allowed")]
    BadCharacter { ch: char, pos: usize },
    #[error("must start with a letter or digit")]
    BadStart,
    #[error("not valid UTF-8")]
    NotUtf8,
    #[error("not a hostname, IPv4 address or IPv6 address")]
    BadHost,
    #[error("port {0:?} is not a number from 1 to 65535")]
    BadPort(String),
    #[error("expected host:port or [ipv6]:port")]
    MissingPort,
    #[error("an IPv6 address with a port must be written [addr]:port")]
    UnbracketedIpv6,
    #[error("not an {family} address")]
    BadIp { family: &'static str },
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("{field} must be {expected}")]
    OutOfRange {
        field: &'static str,
        expected: &'static str,
    },
    #[error("prefix must be path segments of [A-Za-z0-9_.-], like \"mysql/\"")]
    BadPrefix,
}

/// A [`ValueError`] together with the key it was read from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct KeyError {
    pub key: String,
    pub problem: ValueError,
}

impl ValueError {
    pub fn at(self, key: impl Into<String>) -> KeyError {
        KeyError {
            key: key.into(),
            problem: self,
        }
    }
}

fn check_name(s: &str, max: usize) -> Result<(), ValueError> {
    if s.is_empty() {
        return Err(ValueError::Empty);
    }
    if s.len() > max {
        return Err(ValueError::TooLong { len: s.len(), max });
    }
    for (pos, ch) in s.char_indices() {
        if !(ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-')) {
            return Err(ValueError::BadCharacter { ch, pos });
        }
    }
    if !s.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(ValueError::BadStart);
    }
    Ok(())
}

/// `^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`: usable unquoted as a KV path segment
/// and as an HAProxy proxy name.
pub fn valid_cluster_name(s: &str) -> Result<(), ValueError> {
    check_name(s, MAX_CLUSTER_NAME)
}

/// Like a cluster name but up to 253 bytes, so a fully qualified hostname
/// can serve as a node name.
pub fn valid_node_name(s: &str) -> Result<(), ValueError> {
    check_name(s, MAX_NODE_NAME)
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $check:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, ValueError> {
                $check(s)?;
                Ok($name(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValueError;
            fn try_from(s: String) -> Result<Self, ValueError> {
                $check(&s)?;
                Ok($name(s))
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl FromStr for $name {
            type Err = ValueError;
            fn from_str(s: &str) -> Result<Self, ValueError> {
                $name::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A validated cluster name (see [`valid_cluster_name`]).
    ClusterName,
    valid_cluster_name
);
name_type!(
    /// A validated node name (see [`valid_node_name`]).
    NodeName,
    valid_node_name
);

/// A host as it may appear in a `master` value: an RFC 1123 hostname or an
/// IP literal. IPv6 zone ids (`fe80::1%eth0`) are not accepted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

impl Host {
    pub fn parse(s: &str) -> Result<Host, ValueError> {
        valid_host(s)
    }

    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::Ip(ip) => Some(*ip),
            Host::Name(_) => None,
        }
    }

    /// Same host, ignoring the case of a hostname.
    pub fn same_as(&self, other: &Host) -> bool {
        match (self, other) {
            (Host::Name(a), Host::Name(b)) => a.eq_ignore_ascii_case(b),
            (Host::Ip(a), Host::Ip(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Parses a hostname (RFC 1123 labels), an IPv4 address or an IPv6 address
/// (without brackets).
///
/// A name whose last label is all digits (`10.0.0.300`) is refused: it is a
/// mistyped address, and resolvers treat such names inconsistently.
pub fn valid_host(s: &str) -> Result<Host, ValueError> {
    if s.is_empty() {
        return Err(ValueError::Empty);
    }
    if s.len() > MAX_HOSTNAME {
        return Err(ValueError::TooLong {
            len: s.len(),
            max: MAX_HOSTNAME,
        });
    }
    if let Some((pos, ch)) = s
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':')))
    {
        return Err(ValueError::BadCharacter { ch, pos });
    }
    if s.contains(':') {
        return Ipv6Addr::from_str(s)
            .map(|ip| Host::Ip(IpAddr::V6(ip)))
            .map_err(|_| ValueError::BadHost);
    }
    if let Ok(ip) = Ipv4Addr::from_str(s) {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    let labels: Vec<&str> = s.split('.').collect();
    for label in &labels {
        let ok = !label.is_empty()
            && label.len() <= MAX_LABEL
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(ValueError::BadHost);
        }
    }
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(ValueError::BadHost);
    }
    Ok(Host::Name(s.to_owned()))
}

/// A TCP port, 1–65535, written as plain digits (no sign, no leading zero).
pub fn parse_port(s: &str) -> Result<u16, ValueError> {
    let bad = || ValueError::BadPort(truncate_for_display(s));
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) || s.starts_with('0') {
        return Err(bad());
    }
    match s.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        _ => Err(bad()),
    }
}

/// Keeps error messages short and free of control characters.
fn truncate_for_display(s: &str) -> String {
    let mut out: String = s.chars().take(16).flat_map(char::escape_debug).collect();
    if s.chars().count() > 16 {
        out.push('…');
    }
    out
}

/// A validated `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPort {
    pub host: Host,
    pub port: u16,
}

impl HostPort {
    pub fn parse(s: &str) -> Result<HostPort, ValueError> {
        parse_host_port(s)
    }

    /// An address a server reported about itself or its source (`SHOW
    /// SLAVE STATUS`): parsed when valid, kept as a name otherwise. Such a
    /// value is only compared, never written into KV or a template.
    pub fn reported(host: &str, port: u16) -> HostPort {
        HostPort {
            host: Host::parse(host).unwrap_or_else(|_| Host::Name(host.to_owned())),
            port,
        }
    }

    /// Same server: same port and [`Host::same_as`].
    pub fn same(&self, other: &HostPort) -> bool {
        self.port == other.port && self.host.same_as(&other.host)
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            host => write!(f, "{host}:{}", self.port),
        }
    }
}

impl TryFrom<String> for HostPort {
    type Error = ValueError;
    fn try_from(s: String) -> Result<Self, ValueError> {
        parse_host_port(&s)
    }
}

impl From<HostPort> for String {
    fn from(hp: HostPort) -> String {
        hp.to_string()
    }
}

/// Accepts `host:port` and `[ipv6]:port`. A bare IPv6 address with a port
/// appended is ambiguous and refused.
pub fn parse_host_port(s: &str) -> Result<HostPort, ValueError> {
    if s.is_empty() {
        return Err(ValueError::Empty);
    }
    if let Some((pos, ch)) = s.char_indices().find(|(_, c)| c.is_control() || *c == ' ') {
        // Checked before splitting so that "db1:3306\nserver x" reports the
        // newline rather than a bad port.
        return Err(ValueError::BadCharacter { ch, pos });
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or(ValueError::BadHost)?;
        let port = after.strip_prefix(':').ok_or(ValueError::MissingPort)?;
        let ip = Ipv6Addr::from_str(addr).map_err(|_| ValueError::BadHost)?;
        return Ok(HostPort {
            host: Host::Ip(IpAddr::V6(ip)),
            port: parse_port(port)?,
        });
    }
    let (host, port) = s.rsplit_once(':').ok_or(ValueError::MissingPort)?;
    if host.contains(':') {
        return Err(ValueError::UnbracketedIpv6);
    }
    Ok(HostPort {
        host: valid_host(host)?,
        port: parse_port(port)?,
    })
}

/// Parses the `/ipv4` child of a master key.
pub fn parse_ipv4(s: &str) -> Result<IpAddr, ValueError> {
    Ipv4Addr::from_str(s)
        .map(IpAddr::V4)
        .map_err(|_| ValueError::BadIp { family: "IPv4" })
}

/// Parses the `/ipv6` child of a master key (no brackets, no zone id).
pub fn parse_ipv6(s: &str) -> Result<IpAddr, ValueError> {
    Ipv6Addr::from_str(s)
        .map(IpAddr::V6)
        .map_err(|_| ValueError::BadIp { family: "IPv6" })
}

/// Key paths under a configurable prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Keys {
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

/// Where a key sits in the layout. Names are returned raw; validating them
/// is the reader's job, so that it can report the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPath<'a> {
    /// `master/<cluster>` (`attr` = None) or `master/<cluster>/<attr…>`.
    Master {
        cluster: &'a str,
        attr: Option<&'a str>,
    },
    /// `cluster/<cluster>`; anything deeper is not part of the contract.
    ClusterSettings {
        cluster: &'a str,
    },
    /// `quarantine/<cluster>/<node>`.
    Quarantine {
        cluster: &'a str,
        node: &'a str,
    },
    /// `drain/<cluster>/<node>`.
    Drain {
        cluster: &'a str,
        node: &'a str,
    },
    /// `agent/<cluster>/<node>`.
    Agent {
        cluster: &'a str,
        node: &'a str,
    },
    Lock {
        cluster: &'a str,
    },
    Switchover {
        cluster: &'a str,
    },
    History {
        cluster: &'a str,
        rest: &'a str,
    },
}

impl Keys {
    /// Accepts `mysql` or `mysql/`, nested prefixes like `dc1/mysql/`; no
    /// leading slash, no empty or odd segments.
    pub fn new(prefix: &str) -> Result<Keys, ValueError> {
        let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
        if trimmed.is_empty() {
            return Err(ValueError::BadPrefix);
        }
        for segment in trimmed.split('/') {
            if check_name(segment, MAX_NODE_NAME).is_err() {
                return Err(ValueError::BadPrefix);
            }
        }
        Ok(Keys {
            prefix: format!("{trimmed}/"),
        })
    }

    /// The prefix, always ending in `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn master_prefix(&self) -> String {
        format!("{}master/", self.prefix)
    }

    pub fn master_key(&self, cluster: &ClusterName) -> String {
        format!("{}master/{cluster}", self.prefix)
    }

    /// `master/<cluster>/<attr>`, e.g. with [`ATTR_HOSTNAME`].
    pub fn master_attr_key(&self, cluster: &ClusterName, attr: &str) -> String {
        format!("{}master/{cluster}/{attr}", self.prefix)
    }

    pub fn failed_key(&self, cluster: &ClusterName) -> String {
        self.master_attr_key(cluster, ATTR_FAILED)
    }

    pub fn cluster_settings_prefix(&self) -> String {
        format!("{}cluster/", self.prefix)
    }

    pub fn cluster_settings_key(&self, cluster: &ClusterName) -> String {
        format!("{}cluster/{cluster}", self.prefix)
    }

    pub fn quarantine_prefix(&self) -> String {
        format!("{}quarantine/", self.prefix)
    }

    pub fn quarantine_cluster_prefix(&self, cluster: &ClusterName) -> String {
        format!("{}quarantine/{cluster}/", self.prefix)
    }

    pub fn quarantine_key(&self, cluster: &ClusterName, node: &NodeName) -> String {
        format!("{}quarantine/{cluster}/{node}", self.prefix)
    }

    /// `drain/<cluster>/`: nodes an operator is about to take down (a
    /// patch, a reboot). The key alone drains; its value is free text.
    pub fn drain_cluster_prefix(&self, cluster: &ClusterName) -> String {
        format!("{}drain/{cluster}/", self.prefix)
    }

    pub fn drain_key(&self, cluster: &ClusterName, node: &NodeName) -> String {
        format!("{}drain/{cluster}/{node}", self.prefix)
    }

    pub fn agent_cluster_prefix(&self, cluster: &ClusterName) -> String {
        format!("{}agent/{cluster}/", self.prefix)
    }

    pub fn agent_key(&self, cluster: &ClusterName, node: &NodeName) -> String {
        format!("{}agent/{cluster}/{node}", self.prefix)
    }

    /// `member/<cluster>/`: every node an agent ever ran for, with the
    /// address it advertises. Not bound to a session, so a coordinator
    /// that never saw a node's health report still knows the node.
    pub fn member_cluster_prefix(&self, cluster: &ClusterName) -> String {
        format!("{}member/{cluster}/", self.prefix)
    }

    pub fn member_key(&self, cluster: &ClusterName, node: &NodeName) -> String {
        format!("{}member/{cluster}/{node}", self.prefix)
    }

    pub fn lock_key(&self, cluster: &ClusterName) -> String {
        format!("{}lock/{cluster}", self.prefix)
    }

    /// `plan/<cluster>`: the coordinator's failover plan.
    pub fn plan_key(&self, cluster: &ClusterName) -> String {
        format!("{}plan/{cluster}", self.prefix)
    }

    pub fn switchover_key(&self, cluster: &ClusterName) -> String {
        format!("{}switchover/{cluster}", self.prefix)
    }

    pub fn history_prefix(&self, cluster: &ClusterName) -> String {
        format!("{}history/{cluster}/", self.prefix)
    }

    /// Classifies a key. `None` for keys outside the prefix, folder markers
    /// (`mysql/master/`), and paths the contract does not define.
    pub fn classify<'a>(&self, key: &'a str) -> Option<KeyPath<'a>> {
        let rest = key.strip_prefix(self.prefix.as_str())?;
        let (kind, rest) = rest.split_once('/')?;
        if rest.is_empty() {
            return None;
        }
        let (first, tail) = match rest.split_once('/') {
            Some((first, tail)) => (first, Some(tail)),
            None => (rest, None),
        };
        match (kind, tail) {
            ("master", None) => Some(KeyPath::Master {
                cluster: first,
                attr: None,
            }),
            ("master", Some(attr)) if !attr.is_empty() => Some(KeyPath::Master {
                cluster: first,
                attr: Some(attr),
            }),
            ("cluster", None) => Some(KeyPath::ClusterSettings { cluster: first }),
            ("quarantine", Some(node)) if !node.is_empty() && !node.contains('/') => {
                Some(KeyPath::Quarantine {
                    cluster: first,
                    node,
                })
            }
            ("drain", Some(node)) if !node.is_empty() && !node.contains('/') => {
                Some(KeyPath::Drain {
                    cluster: first,
                    node,
                })
            }
            ("agent", Some(node)) if !node.is_empty() && !node.contains('/') => {
                Some(KeyPath::Agent {
                    cluster: first,
                    node,
                })
            }
            ("lock", None) => Some(KeyPath::Lock { cluster: first }),
            ("switchover", None) => Some(KeyPath::Switchover { cluster: first }),
            ("history", Some(rest)) if !rest.is_empty() => Some(KeyPath::History {
                cluster: first,
                rest,
            }),
            _ => None,
        }
    }
}

/// Per-cluster settings, JSON in `mysql/cluster/<cluster>`, written by
/// Ansible or an operator:
///
/// ```json
/// {"proxy_port": 13306, "semi_sync_replicas": 1, "auto_failover": true, "max_lag_seconds": 10}
/// ```
///
/// Only `proxy_port` is required. Unknown fields are ignored so that a newer
/// writer does not break older readers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    /// The port every renderer binds the cluster's listen block on.
    pub proxy_port: u16,
    /// How many replicas get the semi-sync replica flag (rule 2: exactly N).
    #[serde(default = "default_semi_sync_replicas")]
    pub semi_sync_replicas: u32,
    /// Whether the coordinator may fail over without an operator.
    #[serde(default = "default_true")]
    pub auto_failover: bool,
    /// Observe mode, with `auto_failover` off: a dead source is detected
    /// as usual, and instead of a refusal the coordinator records what a
    /// failover would have done (a `simulated` history entry with its
    /// evidence and timings), touching nothing. A separate field, so an
    /// agent that predates it reads the cluster as `auto_failover` off,
    /// which also touches nothing.
    #[serde(default)]
    pub observe_failover: bool,
    /// A successover refuses (unless forced) when the candidate lags more.
    #[serde(default = "default_max_lag_seconds")]
    pub max_lag_seconds: u32,
    /// No second automatic failover within this many seconds of the last
    /// one unless an operator acknowledged it (deleted
    /// `history/<cluster>/last-failover`): a cluster that keeps failing is
    /// a problem for a person, not for more automation.
    #[serde(default = "default_failover_cooldown_seconds")]
    pub failover_cooldown_seconds: u64,
    /// Suspends all automation for the cluster (invariants, failover,
    /// switchover requests wait). Self-fencing by the agents stays on.
    #[serde(default)]
    pub maintenance: bool,
}

fn default_failover_cooldown_seconds() -> u64 {
    3600
}

fn default_semi_sync_replicas() -> u32 {
    1
}

fn default_true() -> bool {
    true
}

fn default_max_lag_seconds() -> u32 {
    10
}

impl ClusterSettings {
    pub fn parse(value: &[u8]) -> Result<ClusterSettings, ValueError> {
        let settings: ClusterSettings =
            serde_json::from_slice(value).map_err(|e| ValueError::Json(e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), ValueError> {
        if self.proxy_port == 0 {
            return Err(ValueError::OutOfRange {
                field: "proxy_port",
                expected: "from 1 to 65535",
            });
        }
        if self.semi_sync_replicas == 0 {
            // Zero would make the cluster asynchronous: rule 1 forbids it.
            return Err(ValueError::OutOfRange {
                field: "semi_sync_replicas",
                expected: "at least 1",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INJECTIONS: &[&str] = &[
        "db1\n  server evil 6.6.6.6:3306",
        "db1 #",
        "db1;",
        "db1#x",
        "db1\r",
        "db1\tx",
        "db1/../x",
        "db1\"",
        "db1'",
        "db1{{x}}",
        "db1\0",
        "",
    ];

    #[test]
    fn cluster_names() {
        for ok in ["c1", "C", "0", "shop-db_1.eu", &"a".repeat(64)] {
            assert!(valid_cluster_name(ok).is_ok(), "{ok:?}");
        }
        for bad in INJECTIONS {
            assert!(valid_cluster_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            valid_cluster_name(&"a".repeat(65)),
            Err(ValueError::TooLong { len: 65, max: 64 })
        );
        assert_eq!(valid_cluster_name("-c"), Err(ValueError::BadStart));
        assert_eq!(valid_cluster_name(".c"), Err(ValueError::BadStart));
        assert_eq!(valid_cluster_name(""), Err(ValueError::Empty));
        assert_eq!(
            valid_cluster_name("db1\n  server evil 6.6.6.6:3306"),
            Err(ValueError::BadCharacter { ch: '\n', pos: 3 })
        );
    }

    #[test]
    fn node_names_allow_fqdns() {
        assert!(valid_node_name("db1.dc1.example.com").is_ok());
        assert!(valid_node_name(&"a".repeat(253)).is_ok());
        assert!(valid_node_name(&"a".repeat(254)).is_err());
        for bad in INJECTIONS {
            assert!(valid_node_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hosts() {
        assert_eq!(
            valid_host("db1.example.com"),
            Ok(Host::Name("db1.example.com".into()))
        );
        assert_eq!(
            valid_host("10.0.0.1"),
            Ok(Host::Ip("10.0.0.1".parse().unwrap()))
        );
        assert_eq!(valid_host("::1"), Ok(Host::Ip("::1".parse().unwrap())));
        assert_eq!(
            valid_host("2001:db8::5"),
            Ok(Host::Ip("2001:db8::5".parse().unwrap()))
        );
        for bad in [
            "10.0.0.300",
            "1.2.3",
            "-db1",
            "db1-",
            "db..1",
            "db1.",
            ".db1",
            "db_1",
            "fe80::1%eth0",
            ":::",
            &format!("{}.com", "a".repeat(64)),
            &"a.".repeat(127),
        ] {
            assert!(valid_host(bad).is_err(), "{bad:?}");
        }
        for bad in INJECTIONS {
            assert!(valid_host(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port("1"), Ok(1));
        assert_eq!(parse_port("3306"), Ok(3306));
        assert_eq!(parse_port("65535"), Ok(65535));
        for bad in [
            "0", "70000", "65536", "", "+3306", "03306", "33 06", "3306\n", "-1", "abc",
        ] {
            assert!(parse_port(bad).is_err(), "{bad:?}");
        }
        // The message escapes what it echoes.
        let msg = parse_port("1\nx").unwrap_err().to_string();
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn host_ports() {
        let hp = parse_host_port("db1:3306").unwrap();
        assert_eq!(hp.host, Host::Name("db1".into()));
        assert_eq!(hp.port, 3306);
        assert_eq!(hp.to_string(), "db1:3306");
        let v6 = parse_host_port("[2001:db8::1]:3307").unwrap();
        assert_eq!(v6.host, Host::Ip("2001:db8::1".parse().unwrap()));
        assert_eq!(v6.to_string(), "[2001:db8::1]:3307");
        assert_eq!(
            parse_host_port("10.1.2.3:3306").unwrap().to_string(),
            "10.1.2.3:3306"
        );
        assert_eq!(parse_host_port("db1"), Err(ValueError::MissingPort));
        assert_eq!(
            parse_host_port("2001:db8::1:3306"),
            Err(ValueError::UnbracketedIpv6)
        );
        assert_eq!(
            parse_host_port("db1\n  server evil 6.6.6.6:3306"),
            Err(ValueError::BadCharacter { ch: '\n', pos: 3 })
        );
        assert_eq!(
            parse_host_port("db1 #:3306"),
            Err(ValueError::BadCharacter { ch: ' ', pos: 3 })
        );
        for bad in [
            "db1:0",
            "db1:70000",
            "db1:",
            ":3306",
            "db1;:3306",
            "db1#:3306",
            "[::1]",
            "[::1]3306",
            "[db1]:3306",
            "db1:3306:3306",
            "",
        ] {
            assert!(parse_host_port(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn key_paths() {
        let keys = Keys::default();
        let c1 = ClusterName::parse("c1").unwrap();
        let db1 = NodeName::parse("db1").unwrap();
        assert_eq!(keys.master_key(&c1), "mysql/master/c1");
        assert_eq!(keys.failed_key(&c1), "mysql/master/c1/failed");
        assert_eq!(
            keys.master_attr_key(&c1, ATTR_HOSTNAME),
            "mysql/master/c1/hostname"
        );
        assert_eq!(keys.cluster_settings_key(&c1), "mysql/cluster/c1");
        assert_eq!(keys.quarantine_key(&c1, &db1), "mysql/quarantine/c1/db1");
        assert_eq!(keys.agent_key(&c1, &db1), "mysql/agent/c1/db1");
        assert_eq!(keys.lock_key(&c1), "mysql/lock/c1");
        assert_eq!(keys.switchover_key(&c1), "mysql/switchover/c1");
        assert_eq!(keys.history_prefix(&c1), "mysql/history/c1/");

        let custom = Keys::new("dc1/db").unwrap();
        assert_eq!(custom.prefix(), "dc1/db/");
        assert_eq!(custom.master_prefix(), "dc1/db/master/");
        assert_eq!(Keys::new("mysql/").unwrap(), Keys::default());
        for bad in ["", "/", "/mysql", "my sql", "a//b", "mysql\n"] {
            assert_eq!(Keys::new(bad), Err(ValueError::BadPrefix), "{bad:?}");
        }
    }

    #[test]
    fn classify_keys() {
        let keys = Keys::default();
        assert_eq!(
            keys.classify("mysql/master/c1"),
            Some(KeyPath::Master {
                cluster: "c1",
                attr: None
            })
        );
        assert_eq!(
            keys.classify("mysql/master/c1/hostname"),
            Some(KeyPath::Master {
                cluster: "c1",
                attr: Some("hostname")
            })
        );
        assert_eq!(keys.classify("mysql/master/"), None);
        assert_eq!(keys.classify("mysql/master/c1/"), None);
        assert_eq!(
            keys.classify("mysql/cluster/c1"),
            Some(KeyPath::ClusterSettings { cluster: "c1" })
        );
        assert_eq!(keys.classify("mysql/cluster/c1/x"), None);
        assert_eq!(
            keys.classify("mysql/quarantine/c1/db1"),
            Some(KeyPath::Quarantine {
                cluster: "c1",
                node: "db1"
            })
        );
        assert_eq!(
            keys.classify("mysql/drain/c1/db2"),
            Some(KeyPath::Drain {
                cluster: "c1",
                node: "db2"
            })
        );
        assert_eq!(
            keys.drain_key(
                &ClusterName::parse("c1").unwrap(),
                &NodeName::parse("db1").unwrap()
            ),
            "mysql/drain/c1/db1"
        );
        assert_eq!(keys.classify("mysql/drain/c1/db2/x"), None);
        assert_eq!(keys.classify("mysql/quarantine/c1"), None);
        assert_eq!(keys.classify("mysql/quarantine/c1/db1/x"), None);
        assert_eq!(
            keys.classify("mysql/history/c1/2024/x"),
            Some(KeyPath::History {
                cluster: "c1",
                rest: "2024/x"
            })
        );
        assert_eq!(keys.classify("other/master/c1"), None);
        // The raw segment comes back unvalidated; the reader reports it.
        assert_eq!(
            keys.classify("mysql/master/c 1"),
            Some(KeyPath::Master {
                cluster: "c 1",
                attr: None
            })
        );
    }

    #[test]
    fn cluster_settings() {
        let s = ClusterSettings::parse(br#"{"proxy_port": 13306}"#).unwrap();
        assert_eq!(
            s,
            ClusterSettings {
                proxy_port: 13306,
                semi_sync_replicas: 1,
                auto_failover: true,
                observe_failover: false,
                max_lag_seconds: 10,
                failover_cooldown_seconds: 3600,
                maintenance: false,
            }
        );
        let s = ClusterSettings::parse(
            br#"{"proxy_port": 1, "semi_sync_replicas": 2, "auto_failover": false, "future": [1]}"#,
        )
        .unwrap();
        assert_eq!(s.semi_sync_replicas, 2);
        assert!(!s.auto_failover);
        assert!(matches!(
            ClusterSettings::parse(br#"{"proxy_port": 0}"#),
            Err(ValueError::OutOfRange {
                field: "proxy_port",
                ..
            })
        ));
        assert!(matches!(
            ClusterSettings::parse(br#"{"proxy_port": 70000}"#),
            Err(ValueError::Json(_))
        ));
        assert!(matches!(
            ClusterSettings::parse(br#"{"proxy_port": "13306\n"}"#),
            Err(ValueError::Json(_))
        ));
        assert!(matches!(
            ClusterSettings::parse(br#"{"proxy_port": 3306, "semi_sync_replicas": 0}"#),
            Err(ValueError::OutOfRange { .. })
        ));
        assert!(matches!(
            ClusterSettings::parse(b"{}"),
            Err(ValueError::Json(_))
        ));
        assert!(matches!(
            ClusterSettings::parse(b""),
            Err(ValueError::Json(_))
        ));
    }

    #[test]
    fn key_error_names_the_key_once() {
        let err = ValueError::BadCharacter { ch: '\n', pos: 3 }.at("mysql/master/c1");
        assert_eq!(
            err.to_string(),
            "mysql/master/c1: character '\\n' at byte 3 is not allowed"
        );
        assert!(std::error::Error::source(&err).is_none());
    }
}
