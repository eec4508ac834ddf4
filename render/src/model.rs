//! KV tree → clusters to render. Pure: no I/O, no clock.
//!
//! Rules, in the order they apply to one cluster:
//!
//! 1. **Source.** A non-empty `master/<c>` value (`host:port`) wins. It is
//!    the key operators edit by hand (`consul kv put mysql/master/c1
//!    db2:3306`) without touching the children, so on disagreement the
//!    children are stale. Only when the value is absent or empty are the
//!    `/hostname` + `/port` children used.
//! 2. **IP.** `set server … addr` needs an IP. An IP literal source is its
//!    own IP; for a hostname, the `/ipv4` (else `/ipv6`) child is used, but
//!    only when `/hostname` and `/port` name the same server as the chosen
//!    source, so a stale child cannot route to the old source.
//! 3. **Invalid source.** The key is reported. A cluster that rendered
//!    before keeps its last good source (losing routing for every client
//!    because of one bad put is worse); one that never rendered is left out.
//! 4. **Fence.** `master/<c>/failed` present, whatever its value, fences the
//!    cluster. So does a source that matches a `quarantine/<c>/<node>`
//!    entry (its `addr`, or the node name as the source's hostname). A
//!    fenced cluster keeps its listen block and is blackholed.
//! 5. **Bind.** `cluster/<c>` must hold valid settings with `proxy_port`.
//!    Missing settings: reported and left out. Invalid settings: reported,
//!    and the last good port is kept if there is one.
//! 6. **Port collisions.** HAProxy binds with SO_REUSEPORT, so two listen
//!    blocks on one port would silently split one cluster's clients across
//!    two databases. The cluster that already held the port keeps it; the
//!    others fall back to their last good port or are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use successover_common::contract::{
    self, ClusterName, ClusterSettings, HostPort, KeyPath, Keys, MasterKeys, MasterProblem,
    NodeName, PublishedSource, Quarantine, ValueError,
};

/// Raw KV contents: key → value (`None` for a key without a value).
pub type Tree = BTreeMap<String, Option<Vec<u8>>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub addr: HostPort,
    /// Known IP of the source, if the model can tell without resolving.
    pub ip: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fence {
    /// `master/<cluster>/failed` is present.
    Failed,
    /// The source matches `quarantine/<cluster>/<node>`.
    Quarantined { node: String },
}

impl fmt::Display for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fence::Failed => f.write_str("failed"),
            Fence::Quarantined { node } => write!(f, "quarantined ({node})"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub name: ClusterName,
    pub bind_port: u16,
    pub source: Source,
    pub fence: Option<Fence>,
}

impl Cluster {
    pub fn fenced(&self) -> bool {
        self.fence.is_some()
    }
}

/// The clusters to render, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    pub clusters: BTreeMap<ClusterName, Cluster>,
}

impl Model {
    pub fn get(&self, name: &ClusterName) -> Option<&Cluster> {
        self.clusters.get(name)
    }

    pub fn binds(&self) -> BTreeMap<String, u16> {
        self.clusters
            .values()
            .map(|c| (c.name.to_string(), c.bind_port))
            .collect()
    }
}

/// Why a key was not used as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The value (or the name in the key) failed validation.
    Invalid(ValueError),
    /// A cluster has `master` keys but no `cluster/<c>` settings.
    MissingSettings,
    /// Neither a `master` value nor `/hostname` + `/port` children.
    NoSource,
    /// `/hostname`/`/port` disagree with the `master` value, which wins.
    ChildrenDisagree { children: String },
    /// Another cluster holds this proxy port.
    PortTaken { port: u16, by: String },
    /// Another program on this host holds this proxy port.
    PortInUse { port: u16 },
}

impl Reason {
    /// Label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Reason::Invalid(_) => "invalid_value",
            Reason::MissingSettings => "missing_settings",
            Reason::NoSource => "no_source",
            Reason::ChildrenDisagree { .. } => "children_disagree",
            Reason::PortTaken { .. } => "port_taken",
            Reason::PortInUse { .. } => "port_in_use",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Invalid(e) => write!(f, "{e}"),
            Reason::MissingSettings => {
                f.write_str("no cluster settings (proxy_port); not rendered")
            }
            Reason::NoSource => f.write_str("no master value and no hostname/port children"),
            Reason::ChildrenDisagree { children } => {
                write!(
                    f,
                    "hostname/port children say {children}; the master value wins"
                )
            }
            Reason::PortTaken { port, by } => {
                write!(f, "proxy_port {port} is already bound by cluster {by}")
            }
            Reason::PortInUse { port } => write!(
                f,
                "proxy_port {port} is in use by another program on this host; checked again every retry_interval"
            ),
        }
    }
}

/// A key that could not be used, with what the model did instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub key: String,
    pub reason: Reason,
    /// What happened to the cluster as a result.
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Only informational: the cluster renders as the rules say.
    Noted,
    /// The cluster renders with its last good value for this field.
    KeptLastGood,
    /// The cluster is not rendered.
    Omitted,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys come from KV too: escape them so a log line stays one line.
        write!(f, "{}: {}", self.key.escape_debug(), self.reason)?;
        match self.outcome {
            Outcome::Noted => Ok(()),
            Outcome::KeptLastGood => f.write_str(" (keeping the last good value)"),
            Outcome::Omitted => f.write_str(" (cluster not rendered)"),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Built {
    pub model: Model,
    pub rejected: Vec<Rejected>,
}

#[derive(Default)]

struct QuarantineEntry {
    /// The node named in the key, if it is a valid name. An invalid one
    /// cannot equal a valid host anyway, and must not reach a template.
    node: Option<NodeName>,
    parsed: Option<Quarantine>,
}

impl QuarantineEntry {
    fn matches(&self, source: &HostPort) -> bool {
        self.node
            .as_ref()
            .is_some_and(|n| contract::host_is_node(&source.host, n.as_str()))
            || self.parsed.as_ref().is_some_and(|p| p.matches(source))
    }

    fn label(&self) -> String {
        match (&self.node, &self.parsed) {
            (Some(n), _) => n.to_string(),
            (None, Some(p)) => p.node.to_string(),
            (None, None) => String::new(),
        }
    }
}

/// Builds the model from a KV snapshot. `previous` is the last model that
/// rendered successfully; it only supplies fallbacks for invalid values.
pub fn build(keys: &Keys, tree: &Tree, previous: &Model) -> Built {
    let mut rejected = Vec::new();
    let mut reject = |key: &str, reason: Reason, outcome: Outcome| {
        rejected.push(Rejected {
            key: key.to_owned(),
            reason,
            outcome,
        })
    };

    let mut masters: BTreeMap<ClusterName, MasterKeys> = BTreeMap::new();
    let mut settings: BTreeMap<ClusterName, (&str, &[u8])> = BTreeMap::new();
    let mut quarantines: BTreeMap<ClusterName, Vec<QuarantineEntry>> = BTreeMap::new();
    let mut bad_names: BTreeSet<&str> = BTreeSet::new();

    for (key, value) in tree {
        let Some(path) = keys.classify(key) else {
            continue;
        };
        let value = value.as_deref().unwrap_or_default();
        let cluster_segment = match path {
            KeyPath::Master { cluster, .. }
            | KeyPath::ClusterSettings { cluster }
            | KeyPath::Quarantine { cluster, .. } => cluster,
            _ => continue,
        };
        let cluster = match ClusterName::parse(cluster_segment) {
            Ok(c) => c,
            Err(e) => {
                // One report per bad name is enough; its children would
                // repeat it.
                if bad_names.insert(cluster_segment) {
                    reject(key, Reason::Invalid(e), Outcome::Omitted);
                }
                continue;
            }
        };
        match path {
            KeyPath::Master { attr, .. } => {
                masters
                    .entry(cluster)
                    .or_default()
                    .add(key.as_str(), attr, value);
            }
            KeyPath::ClusterSettings { .. } => {
                settings.insert(cluster, (key.as_str(), value));
            }
            KeyPath::Quarantine { node, .. } => {
                let parsed = match Quarantine::parse(value) {
                    Ok(q) => Some(q),
                    Err(e) => {
                        reject(key, Reason::Invalid(e), Outcome::Noted);
                        None
                    }
                };
                let node = match NodeName::parse(node) {
                    Ok(n) => Some(n),
                    Err(e) => {
                        reject(key, Reason::Invalid(e), Outcome::Noted);
                        None
                    }
                };
                quarantines
                    .entry(cluster)
                    .or_default()
                    .push(QuarantineEntry { node, parsed });
            }
            _ => unreachable!("filtered above"),
        }
    }

    let mut clusters: BTreeMap<ClusterName, Cluster> = BTreeMap::new();
    for (name, entry) in &masters {
        let prev = previous.get(name);
        let source = match choose_source(entry, &mut reject) {
            Ok(source) => source,
            Err((key, reason)) => match prev {
                Some(prev) => {
                    reject(key, reason, Outcome::KeptLastGood);
                    prev.source.clone()
                }
                None => {
                    reject(key, reason, Outcome::Omitted);
                    continue;
                }
            },
        };

        let settings_key = keys.cluster_settings_key(name);
        let bind_port = match settings.get(name) {
            None => {
                reject(&settings_key, Reason::MissingSettings, Outcome::Omitted);
                continue;
            }
            Some((key, value)) => match ClusterSettings::parse(value) {
                Ok(s) => s.proxy_port,
                Err(e) => match prev {
                    Some(prev) => {
                        reject(key, Reason::Invalid(e), Outcome::KeptLastGood);
                        prev.bind_port
                    }
                    None => {
                        reject(key, Reason::Invalid(e), Outcome::Omitted);
                        continue;
                    }
                },
            },
        };

        let fence = if entry.failed {
            Some(Fence::Failed)
        } else {
            quarantines
                .get(name)
                .into_iter()
                .flatten()
                .find(|q| q.matches(&source.addr))
                .map(|q| Fence::Quarantined { node: q.label() })
        };
        clusters.insert(
            name.clone(),
            Cluster {
                name: name.clone(),
                bind_port,
                source,
                fence,
            },
        );
    }

    resolve_port_collisions(keys, &mut clusters, previous, &mut reject);

    rejected.sort_by(|a, b| a.key.cmp(&b.key));
    Built {
        model: Model { clusters },
        rejected,
    }
}

type SourceError<'a> = (&'a str, Reason);

/// The source of a `master` subtree, read as every other reader reads it
/// ([`MasterKeys::source`]); problems that do not stop the choice are noted.
fn choose_source<'a>(
    entry: &MasterKeys<'a>,
    reject: &mut impl FnMut(&str, Reason, Outcome),
) -> Result<Source, SourceError<'a>> {
    let chosen =
        entry.source(&mut |key, problem| reject(key, Reason::from(problem), Outcome::Noted));
    match chosen {
        Ok(PublishedSource { addr, ip }) => Ok(Source { addr, ip }),
        Err((key, problem)) => Err((key, Reason::from(problem))),
    }
}

impl From<MasterProblem> for Reason {
    fn from(p: MasterProblem) -> Reason {
        match p {
            MasterProblem::Invalid(e) => Reason::Invalid(e),
            MasterProblem::NoSource => Reason::NoSource,
            MasterProblem::ChildrenDisagree { children } => Reason::ChildrenDisagree { children },
        }
    }
}

fn resolve_port_collisions(
    keys: &Keys,
    clusters: &mut BTreeMap<ClusterName, Cluster>,
    previous: &Model,
    reject: &mut impl FnMut(&str, Reason, Outcome),
) {
    // Two passes: a loser that falls back to its old port can collide with
    // a newcomer on that port; whatever still collides after that is out.
    for pass in 0..2 {
        let mut by_port: BTreeMap<u16, Vec<ClusterName>> = BTreeMap::new();
        for c in clusters.values() {
            by_port.entry(c.bind_port).or_default().push(c.name.clone());
        }
        for (port, names) in by_port.into_iter().filter(|(_, n)| n.len() > 1) {
            let holder = names
                .iter()
                .find(|n| previous.get(n).is_some_and(|p| p.bind_port == port))
                .cloned();
            for name in &names {
                if Some(name) == holder.as_ref() {
                    continue;
                }
                let by = holder
                    .as_ref()
                    .unwrap_or_else(|| names.iter().find(|n| *n != name).expect("len > 1"))
                    .to_string();
                let key = keys.cluster_settings_key(name);
                let reason = Reason::PortTaken { port, by };
                let fallback = previous
                    .get(name)
                    .map(|p| p.bind_port)
                    .filter(|p| *p != port && pass == 0);
                match fallback {
                    Some(old) => {
                        reject(&key, reason, Outcome::KeptLastGood);
                        if let Some(c) = clusters.get_mut(name) {
                            c.bind_port = old;
                        }
                    }
                    None => {
                        reject(&key, reason, Outcome::Omitted);
                        clusters.remove(name);
                    }
                }
            }
        }
    }
}

/// Holds back the clusters that would bind a port another program holds on
/// this host (`in_use` probes a port): a cluster HAProxy already runs keeps
/// the port it runs on, a new one is left out. `running` is what HAProxy
/// binds now (cluster → port); those ports are HAProxy's own and never
/// probed. Returns whether a cluster was held back, so the caller looks
/// again later.
///
/// Why not let HAProxy find out: a reload pauses every listener while it
/// retries the bind (about a second in 2.6, measured), then refuses the
/// whole file. Each retry would be a blip for every cluster on the host,
/// and the file on disk one HAProxy could not start from.
pub fn hold_back_taken_ports(
    keys: &Keys,
    built: &mut Built,
    running: &BTreeMap<String, u16>,
    mut in_use: impl FnMut(u16) -> bool,
) -> bool {
    let ours: BTreeSet<u16> = running.values().copied().collect();
    let taken: Vec<(ClusterName, u16)> = built
        .model
        .clusters
        .values()
        .filter(|c| running.get(c.name.as_str()) != Some(&c.bind_port))
        .filter(|c| !ours.contains(&c.bind_port))
        .filter(|c| in_use(c.bind_port))
        .map(|c| (c.name.clone(), c.bind_port))
        .collect();
    for (name, port) in &taken {
        let clusters = &mut built.model.clusters;
        let fallback = running.get(name.as_str()).copied().filter(|old| {
            !clusters
                .values()
                .any(|c| c.name != *name && c.bind_port == *old)
        });
        let outcome = match (fallback, clusters.get_mut(name)) {
            (Some(old), Some(c)) => {
                c.bind_port = old;
                Outcome::KeptLastGood
            }
            _ => {
                clusters.remove(name);
                Outcome::Omitted
            }
        };
        built.rejected.push(Rejected {
            key: keys.cluster_settings_key(name),
            reason: Reason::PortInUse { port: *port },
            outcome,
        });
    }
    built.rejected.sort_by(|a, b| a.key.cmp(&b.key));
    !taken.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_held_by_other_programs_hold_clusters_back() {
        let keys = Keys::default();
        let kv = [
            ("mysql/master/new", "10.0.0.1:3306"),
            ("mysql/cluster/new", r#"{"proxy_port": 5001}"#),
            ("mysql/master/moved", "10.0.0.2:3306"),
            ("mysql/cluster/moved", r#"{"proxy_port": 5002}"#),
            ("mysql/master/heir", "10.0.0.3:3306"),
            ("mysql/cluster/heir", r#"{"proxy_port": 4000}"#),
            ("mysql/master/same", "10.0.0.4:3306"),
            ("mysql/cluster/same", r#"{"proxy_port": 4004}"#),
        ];
        let mut built = build(&keys, &tree(&kv), &Model::default());
        // `heir` takes over the port a removed cluster ran on: HAProxy's
        // own, handed over by the reload, never probed.
        let running: BTreeMap<String, u16> = [("moved", 4002), ("gone", 4000), ("same", 4004)]
            .into_iter()
            .map(|(n, p)| (n.to_owned(), p))
            .collect();
        let mut probed = Vec::new();
        let held = hold_back_taken_ports(&keys, &mut built, &running, |port| {
            probed.push(port);
            port == 5001 || port == 5002
        });
        assert!(held);
        assert_eq!(probed, [5002, 5001], "only new ports are probed");
        let ports: Vec<(&str, u16)> = built
            .model
            .clusters
            .values()
            .map(|c| (c.name.as_str(), c.bind_port))
            .collect();
        assert_eq!(ports, [("heir", 4000), ("moved", 4002), ("same", 4004)]);
        let rejected: Vec<String> = built.rejected.iter().map(|r| r.to_string()).collect();
        assert_eq!(rejected.len(), 2, "{rejected:?}");
        assert!(rejected[0].starts_with("mysql/cluster/moved: proxy_port 5002 is in use"));
        assert!(rejected[0].ends_with("(keeping the last good value)"));
        assert!(rejected[1].starts_with("mysql/cluster/new: proxy_port 5001 is in use"));
        assert!(rejected[1].ends_with("(cluster not rendered)"));
        assert_eq!(built.rejected[0].reason.kind(), "port_in_use");

        let mut again = build(&keys, &tree(&kv), &Model::default());
        assert!(!hold_back_taken_ports(&keys, &mut again, &running, |_| {
            false
        }));
        assert_eq!(again.model.clusters.len(), 4);
    }

    fn tree(entries: &[(&str, &str)]) -> Tree {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), Some(v.as_bytes().to_vec())))
            .collect()
    }

    fn name(s: &str) -> ClusterName {
        ClusterName::parse(s).unwrap()
    }

    fn build_from(entries: &[(&str, &str)], previous: &Model) -> Built {
        build(&Keys::default(), &tree(entries), previous)
    }

    fn settings(port: u16) -> String {
        format!(r#"{{"proxy_port": {port}}}"#)
    }

    fn source_of(built: &Built, cluster: &str) -> Option<String> {
        built
            .model
            .get(&name(cluster))
            .map(|c| c.source.addr.to_string())
    }

    #[test]
    fn table() {
        let s1 = settings(13306);
        let s2 = settings(13307);
        struct Case<'a> {
            what: &'a str,
            kv: Vec<(&'a str, &'a str)>,
            source: Option<&'a str>,
            ip: Option<&'a str>,
            fence: Option<Fence>,
            rejected: &'a [(&'a str, &'a str)],
        }
        let cases = [
            Case {
                what: "plain host:port",
                kv: vec![("mysql/master/c1", "db1:3306"), ("mysql/cluster/c1", &s1)],
                source: Some("db1:3306"),
                ip: None,
                fence: None,
                rejected: &[],
            },
            Case {
                what: "ip literal is its own ip",
                kv: vec![
                    ("mysql/master/c1", "10.0.0.1:3306"),
                    ("mysql/cluster/c1", &s1),
                ],
                source: Some("10.0.0.1:3306"),
                ip: Some("10.0.0.1"),
                fence: None,
                rejected: &[],
            },
            Case {
                what: "orchestrator layout with consistent children",
                kv: vec![
                    ("mysql/master/c1", "db1:3306"),
                    ("mysql/master/c1/hostname", "db1"),
                    ("mysql/master/c1/port", "3306"),
                    ("mysql/master/c1/ipv4", "10.0.0.1"),
                    ("mysql/master/c1/ipv6", ""),
                    ("mysql/cluster/c1", &s1),
                ],
                source: Some("db1:3306"),
                ip: Some("10.0.0.1"),
                fence: None,
                rejected: &[],
            },
            Case {
                what: "hand-edited master wins over stale children, stale ipv4 unused",
                kv: vec![
                    ("mysql/master/c1", "db2:3306"),
                    ("mysql/master/c1/hostname", "db1"),
                    ("mysql/master/c1/port", "3306"),
                    ("mysql/master/c1/ipv4", "10.0.0.1"),
                    ("mysql/cluster/c1", &s1),
                ],
                source: Some("db2:3306"),
                ip: None,
                fence: None,
                rejected: &[("mysql/master/c1", "children_disagree")],
            },
            Case {
                what: "children only",
                kv: vec![
                    ("mysql/master/c1/hostname", "db1"),
                    ("mysql/master/c1/port", "3307"),
                    ("mysql/master/c1/ipv6", "2001:db8::1"),
                    ("mysql/cluster/c1", &s1),
                ],
                source: Some("db1:3307"),
                ip: Some("2001:db8::1"),
                fence: None,
                rejected: &[],
            },
            Case {
                what: "empty master value falls back to children",
                kv: vec![
                    ("mysql/master/c1", ""),
                    ("mysql/master/c1/hostname", "db1"),
                    ("mysql/master/c1/port", "3307"),
                    ("mysql/cluster/c1", &s1),
                ],
                source: Some("db1:3307"),
                ip: None,
                fence: None,
                rejected: &[],
            },
            Case {
                what: "failed child fences, any value",
                kv: vec![
                    ("mysql/master/c1", "db1:3306"),
                    ("mysql/master/c1/failed", ""),
                    ("mysql/cluster/c1", &s1),
                ],
                source: Some("db1:3306"),
                ip: None,
                fence: Some(Fence::Failed),
                rejected: &[],
            },
            Case {
                what: "quarantined by addr",
                kv: vec![
                    ("mysql/master/c1", "db1.example.com:3306"),
                    ("mysql/cluster/c1", &s1),
                    (
                        "mysql/quarantine/c1/old",
                        r#"{"node":"old","addr":"db1.example.com:3306"}"#,
                    ),
                ],
                source: Some("db1.example.com:3306"),
                ip: None,
                fence: Some(Fence::Quarantined { node: "old".into() }),
                rejected: &[],
            },
            Case {
                what: "quarantined by node name even with an unreadable value",
                kv: vec![
                    ("mysql/master/c1", "db1.example.com:3306"),
                    ("mysql/cluster/c1", &s1),
                    ("mysql/quarantine/c1/db1", "garbage"),
                ],
                source: Some("db1.example.com:3306"),
                ip: None,
                fence: Some(Fence::Quarantined { node: "db1".into() }),
                rejected: &[("mysql/quarantine/c1/db1", "invalid_value")],
            },
            Case {
                what: "quarantine of another node or cluster does not fence",
                kv: vec![
                    ("mysql/master/c1", "db2:3306"),
                    ("mysql/cluster/c1", &s1),
                    (
                        "mysql/quarantine/c1/db1",
                        r#"{"node":"db1","addr":"db1:3306"}"#,
                    ),
                    (
                        "mysql/quarantine/c2/db2",
                        r#"{"node":"db2","addr":"db2:3306"}"#,
                    ),
                ],
                source: Some("db2:3306"),
                ip: None,
                fence: None,
                rejected: &[],
            },
            Case {
                what: "missing settings: not rendered",
                kv: vec![("mysql/master/c1", "db1:3306")],
                source: None,
                ip: None,
                fence: None,
                rejected: &[("mysql/cluster/c1", "missing_settings")],
            },
            Case {
                what: "settings without a master: nothing to render, nothing to say",
                kv: vec![("mysql/cluster/c1", &s1)],
                source: None,
                ip: None,
                fence: None,
                rejected: &[],
            },
            Case {
                what: "injection in master value, never rendered before",
                kv: vec![
                    ("mysql/master/c1", "db1\n  server evil 6.6.6.6:3306"),
                    ("mysql/cluster/c1", &s1),
                ],
                source: None,
                ip: None,
                fence: None,
                rejected: &[("mysql/master/c1", "invalid_value")],
            },
            Case {
                what: "injection in hostname child",
                kv: vec![
                    ("mysql/master/c1/hostname", "db1 #"),
                    ("mysql/master/c1/port", "3306"),
                    ("mysql/cluster/c1", &s1),
                ],
                source: None,
                ip: None,
                fence: None,
                rejected: &[("mysql/master/c1/hostname", "invalid_value")],
            },
            Case {
                what: "hostname without port",
                kv: vec![
                    ("mysql/master/c1/hostname", "db1"),
                    ("mysql/cluster/c1", &s1),
                ],
                source: None,
                ip: None,
                fence: None,
                rejected: &[("mysql/master/c1/hostname", "no_source")],
            },
            Case {
                what: "only a failed key",
                kv: vec![("mysql/master/c1/failed", ""), ("mysql/cluster/c1", &s1)],
                source: None,
                ip: None,
                fence: None,
                rejected: &[("mysql/master/c1/failed", "no_source")],
            },
            Case {
                what: "invalid ipv4 child is noted, source still renders",
                kv: vec![
                    ("mysql/master/c1", "db1:3306"),
                    ("mysql/master/c1/hostname", "db1"),
                    ("mysql/master/c1/port", "3306"),
                    ("mysql/master/c1/ipv4", "10.0.0.1\nserver x"),
                    ("mysql/cluster/c1", &s1),
                ],
                source: Some("db1:3306"),
                ip: None,
                fence: None,
                rejected: &[("mysql/master/c1/ipv4", "invalid_value")],
            },
            Case {
                what: "bad settings json, never rendered",
                kv: vec![
                    ("mysql/master/c1", "db1:3306"),
                    ("mysql/cluster/c1", r#"{"proxy_port": 70000}"#),
                ],
                source: None,
                ip: None,
                fence: None,
                rejected: &[("mysql/cluster/c1", "invalid_value")],
            },
            Case {
                what: "other prefixes and folder keys are ignored",
                kv: vec![
                    ("mysql/", ""),
                    ("mysql/master/", ""),
                    ("mysql/master/c1", "db1:3306"),
                    ("mysql/master/c1/", ""),
                    ("mysql/master/c1/some-orchestrator-thing", "x y z"),
                    ("mysql/agent/c1/db1", "{}"),
                    ("mysql/cluster/c1", &s2),
                ],
                source: Some("db1:3306"),
                ip: None,
                fence: None,
                rejected: &[],
            },
        ];
        for case in cases {
            let built = build_from(&case.kv, &Model::default());
            assert_eq!(
                source_of(&built, "c1").as_deref(),
                case.source,
                "{}",
                case.what
            );
            if let Some(c) = built.model.get(&name("c1")) {
                assert_eq!(
                    c.source.ip.map(|ip| ip.to_string()).as_deref(),
                    case.ip,
                    "{}",
                    case.what
                );
                assert_eq!(c.fence, case.fence, "{}", case.what);
            }
            let got: Vec<(&str, &str)> = built
                .rejected
                .iter()
                .map(|r| (r.key.as_str(), r.reason.kind()))
                .collect();
            assert_eq!(got, case.rejected, "{}", case.what);
        }
    }

    #[test]
    fn bad_cluster_does_not_affect_others() {
        let s = settings(13306);
        let s2 = settings(13307);
        let built = build_from(
            &[
                ("mysql/master/c1", "db1;:3306"),
                ("mysql/cluster/c1", &s),
                ("mysql/master/c2", "db2:3306"),
                ("mysql/cluster/c2", &s2),
                ("mysql/master/bad name", "db3:3306"),
                ("mysql/master/bad name/hostname", "db3"),
                ("mysql/master/x\n  server evil 6.6.6.6:3306", "db3:3306"),
            ],
            &Model::default(),
        );
        assert_eq!(
            built
                .model
                .clusters
                .keys()
                .map(|k| k.as_str())
                .collect::<Vec<_>>(),
            ["c2"]
        );
        let keys: Vec<&str> = built.rejected.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "mysql/master/bad name",
                "mysql/master/c1",
                "mysql/master/x\n  server evil 6.6.6.6:3306"
            ]
        );
        for r in &built.rejected {
            assert_eq!(r.outcome, Outcome::Omitted);
            assert!(!r.to_string().contains('\n'), "{r}");
        }
    }

    #[test]
    fn invalid_put_keeps_last_good_state() {
        let s = settings(13306);
        let good = build_from(
            &[("mysql/master/c1", "db1:3306"), ("mysql/cluster/c1", &s)],
            &Model::default(),
        );
        assert!(good.rejected.is_empty());

        let bad = build_from(
            &[
                ("mysql/master/c1", "db2:33o6"),
                ("mysql/master/c1/failed", ""),
                ("mysql/cluster/c1", r#"{"proxy_port": "x"}"#),
            ],
            &good.model,
        );
        let c1 = bad.model.get(&name("c1")).expect("kept");
        assert_eq!(c1.source.addr.to_string(), "db1:3306");
        assert_eq!(c1.bind_port, 13306);
        // The fence is read from the current tree, not the fallback.
        assert_eq!(c1.fence, Some(Fence::Failed));
        assert!(bad
            .rejected
            .iter()
            .all(|r| r.outcome == Outcome::KeptLastGood));
        assert_eq!(bad.rejected.len(), 2);

        // A kept source that is quarantined is still blackholed.
        let q = build_from(
            &[
                ("mysql/master/c1", "db2:33o6"),
                ("mysql/cluster/c1", &s),
                (
                    "mysql/quarantine/c1/db1",
                    r#"{"node":"db1","addr":"db1:3306"}"#,
                ),
            ],
            &good.model,
        );
        assert_eq!(
            q.model.get(&name("c1")).unwrap().fence,
            Some(Fence::Quarantined { node: "db1".into() })
        );

        // Deleting the master key removes the cluster: that is intent.
        let gone = build_from(&[("mysql/cluster/c1", &s)], &good.model);
        assert!(gone.model.clusters.is_empty());
        // So does deleting its settings.
        let gone = build_from(&[("mysql/master/c1", "db1:3306")], &good.model);
        assert!(gone.model.clusters.is_empty());
    }

    #[test]
    fn port_collisions() {
        let s = settings(13306);
        let before = build_from(
            &[("mysql/master/c1", "db1:3306"), ("mysql/cluster/c1", &s)],
            &Model::default(),
        );
        // A newcomer on c1's port is refused; c1 keeps it.
        let after = build_from(
            &[
                ("mysql/master/c1", "db1:3306"),
                ("mysql/cluster/c1", &s),
                ("mysql/master/c2", "db2:3306"),
                ("mysql/cluster/c2", &s),
            ],
            &before.model,
        );
        assert_eq!(after.model.get(&name("c1")).unwrap().bind_port, 13306);
        assert!(after.model.get(&name("c2")).is_none());
        assert_eq!(after.rejected.len(), 1);
        assert_eq!(after.rejected[0].key, "mysql/cluster/c2");
        assert_eq!(after.rejected[0].reason.kind(), "port_taken");

        // Two newcomers on one port: neither wins.
        let fresh = build_from(
            &[
                ("mysql/master/c1", "db1:3306"),
                ("mysql/cluster/c1", &s),
                ("mysql/master/c2", "db2:3306"),
                ("mysql/cluster/c2", &s),
            ],
            &Model::default(),
        );
        assert!(fresh.model.clusters.is_empty());

        // An existing cluster moved onto a taken port keeps its own.
        let two = build_from(
            &[
                ("mysql/master/c1", "db1:3306"),
                ("mysql/cluster/c1", &s),
                ("mysql/master/c2", "db2:3306"),
                ("mysql/cluster/c2", &settings(13307)),
            ],
            &Model::default(),
        );
        let moved = build_from(
            &[
                ("mysql/master/c1", "db1:3306"),
                ("mysql/cluster/c1", &s),
                ("mysql/master/c2", "db2:3306"),
                ("mysql/cluster/c2", &s),
            ],
            &two.model,
        );
        assert_eq!(moved.model.get(&name("c1")).unwrap().bind_port, 13306);
        assert_eq!(moved.model.get(&name("c2")).unwrap().bind_port, 13307);
        assert_eq!(moved.rejected[0].outcome, Outcome::KeptLastGood);
    }

    #[test]
    fn quarantine_with_a_bad_key_name_uses_the_value() {
        let s = settings(1);
        let built = build_from(
            &[
                ("mysql/master/c1", "db1:3306"),
                ("mysql/cluster/c1", &s),
                (
                    "mysql/quarantine/c1/db1 #",
                    r#"{"node":"db1","addr":"db1:3306"}"#,
                ),
            ],
            &Model::default(),
        );
        assert_eq!(
            built.model.get(&name("c1")).unwrap().fence,
            Some(Fence::Quarantined { node: "db1".into() })
        );
        assert_eq!(built.rejected.len(), 1);
        assert_eq!(built.rejected[0].outcome, Outcome::Noted);
    }

    #[test]
    fn custom_prefix() {
        let keys = Keys::new("dc1/db").unwrap();
        let built = build(
            &keys,
            &tree(&[
                ("dc1/db/master/c1", "db1:3306"),
                ("dc1/db/cluster/c1", &settings(1)),
                ("mysql/master/c2", "db2:3306"),
            ]),
            &Model::default(),
        );
        assert_eq!(built.model.clusters.len(), 1);
        assert!(built.rejected.is_empty());
    }

    #[test]
    fn non_utf8_value_is_rejected() {
        let mut t = tree(&[("mysql/cluster/c1", &settings(1))]);
        t.insert("mysql/master/c1".into(), Some(vec![0xff, b':', b'1']));
        let built = build(&Keys::default(), &t, &Model::default());
        assert!(built.model.clusters.is_empty());
        assert_eq!(
            built.rejected[0].reason,
            Reason::Invalid(ValueError::NotUtf8)
        );
    }
}
