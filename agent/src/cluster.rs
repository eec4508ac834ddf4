//! What the KV store says about one cluster: the published source, the
//! fence, quarantined nodes, settings and the agents' reports. Read in a
//! few requests per cycle and validated before anything acts on it.

use std::collections::{BTreeMap, BTreeSet};

use successover_common::consul::{Consul, ConsulError, KvPair};
use successover_common::contract::{
    ClusterName, ClusterSettings, HostPort, KeyPath, Keys, ATTR_FAILED,
};

use successover_common::procedure::{AckFloors, HistoryEntry, LastFailover};

use crate::mysql::GtidState;

use crate::decide::KvInputs;
use crate::kvcache::KvCache;
use crate::report::HealthReport;

#[derive(Clone, Debug, Default)]
pub struct ClusterKv {
    /// The `master` key when present and valid.
    pub published: Option<HostPort>,
    /// A `master` value that failed validation; the cluster is treated as
    /// having no usable published source and nothing is published over it.
    pub published_invalid: Option<String>,
    pub master_present: bool,
    pub fenced: bool,
    /// The fence's value, when fenced: a procedure's fence names it.
    pub fence: Option<String>,
    pub quarantined: BTreeSet<String>,
    /// Nodes to take the semi-sync ACK role from (`drain/<cluster>/<node>`).
    pub drained: BTreeSet<String>,
    pub settings: Option<ClusterSettings>,
    pub settings_error: Option<String>,
    /// Valid reports by node name.
    pub reports: BTreeMap<String, HealthReport>,
    /// Keys whose values were rejected, with why.
    pub rejected: Vec<(String, String)>,
    /// The history id of a switch or failover under way.
    pub in_progress: Option<String>,
    /// A pending switchover request, with its modify index for the CAS that
    /// consumes it exactly once.
    pub switchover: Option<KvPair>,
}

impl ClusterKv {
    pub fn semi_sync_replicas(&self) -> usize {
        self.settings
            .as_ref()
            .map(|s| s.semi_sync_replicas as usize)
            .unwrap_or(1)
    }
}

/// What only the coordinator reads: the entry of a procedure under way,
/// rejoin requests, the last failover and the fence's value; with the
/// cluster settings, the inputs of [`crate::decide::decide`] beyond the
/// view.
pub async fn coordinator_inputs(
    consul: &Consul,
    cache: &KvCache,
    keys: &Keys,
    cluster: &ClusterName,
    kv: &ClusterKv,
) -> Result<KvInputs, String> {
    let e = |e: ConsulError| e.to_string();
    let in_progress = match &kv.in_progress {
        Some(id) => {
            let entry = cache
                .get(consul, &keys.history_key(cluster, id))
                .await
                .map_err(e)?
                .and_then(|kv| {
                    serde_json::from_slice::<HistoryEntry>(kv.value.as_deref().unwrap_or_default())
                        .ok()
                });
            Some((id.clone(), entry))
        }
        None => None,
    };
    // Read with the master key's subtree this cycle already.
    let fence = kv.fence.clone();
    // A procedure's fence names it; a refused failover is taken up again
    // from its entry when what it lacked comes back.
    let fence_entry = match fence
        .as_deref()
        .map(|f| successover_common::contract::Fence::read(f.as_bytes()).reason)
        .and_then(|r| r.strip_prefix("failover ").map(str::to_owned))
    {
        Some(id) if successover_common::contract::valid_node_name(&id).is_ok() => cache
            .get(consul, &keys.history_key(cluster, &id))
            .await
            .map_err(e)?
            .and_then(|kv| {
                serde_json::from_slice::<HistoryEntry>(kv.value.as_deref().unwrap_or_default()).ok()
            }),
        _ => None,
    };
    let last_failover = cache
        .get(consul, &keys.last_failover_key(cluster))
        .await
        .map_err(e)?;
    let last_failover_held = last_failover
        .as_ref()
        .is_some_and(|kv| kv.session.is_some());
    let last_failover_ms = last_failover.map(|kv| {
        LastFailover::parse(kv.value.as_deref().unwrap_or_default())
            .map(|l| l.at_ms)
            // An unreadable marker still counts: a cooldown that is
            // too long is safer than a second failover.
            .unwrap_or(u64::MAX / 2)
    });
    let rejoins = cache
        .list(consul, &keys.rejoin_prefix(cluster))
        .await
        .map_err(e)?;
    let (ack_floors, acker_started) = match cache
        .get(consul, &keys.ack_floors_key(cluster))
        .await
        .map_err(e)?
    {
        None => (BTreeMap::new(), BTreeMap::new()),
        Some(kv) => {
            let parsed = AckFloors::parse(kv.value.as_deref().unwrap_or_default())
                .map_err(|e| e.to_string())
                .and_then(|f| {
                    let floors = f
                        .floors
                        .into_iter()
                        .map(|(n, p)| {
                            if p.trim().is_empty() {
                                return Ok((n, None));
                            }
                            GtidState::parse_any(&p)
                                .map(|p| (n, Some(p)))
                                .map_err(|e| e.to_string())
                        })
                        .collect::<Result<BTreeMap<_, _>, _>>()?;
                    Ok((floors, f.started))
                });
            match parsed {
                Ok(f) => f,
                Err(why) => {
                    // Without the floors no semi-sync replica can be
                    // trusted beyond its grant; an unreadable value must
                    // not make a laggard look safe.
                    return Err(format!("{}: {why}", keys.ack_floors_key(cluster)));
                }
            }
        }
    };
    let settings = kv.settings.as_ref();
    Ok(KvInputs {
        fence,
        fence_entry,
        in_progress,
        switchover: kv.switchover.clone(),
        rejoins,
        last_failover_ms,
        last_failover_held,
        auto_failover: settings.is_none_or(|s| s.auto_failover),
        observe_failover: settings.is_some_and(|s| s.observe_failover),
        failover_cooldown_ms: settings
            .map(|s| s.failover_cooldown_seconds)
            .unwrap_or(3600)
            .saturating_mul(1000),
        max_lag_seconds: settings.map(|s| s.max_lag_seconds).unwrap_or(10),
        agent_up: kv.reports.iter().map(|(n, r)| (n.clone(), r.up)).collect(),
        published_invalid: kv.published_invalid.clone(),
        ack_floors,
        acker_started,
    })
}

pub async fn read(
    consul: &Consul,
    cache: &KvCache,
    keys: &Keys,
    cluster: &ClusterName,
) -> Result<ClusterKv, ConsulError> {
    let master = cache.list(consul, &keys.master_key(cluster)).await?;
    let agents = cache
        .list(consul, &keys.agent_cluster_prefix(cluster))
        .await?;
    let quarantine = cache
        .list(consul, &keys.quarantine_cluster_prefix(cluster))
        .await?;
    let drain = cache
        .list(consul, &keys.drain_cluster_prefix(cluster))
        .await?;
    let settings = cache
        .get(consul, &keys.cluster_settings_key(cluster))
        .await?;
    let in_progress = cache.get(consul, &keys.in_progress_key(cluster)).await?;
    let switchover = cache.get(consul, &keys.switchover_key(cluster)).await?;
    let mut pairs = master;
    pairs.extend(agents);
    pairs.extend(quarantine);
    pairs.extend(drain);
    pairs.extend(settings);
    let mut out = interpret(keys, cluster, &pairs);
    out.in_progress = in_progress.and_then(|kv| kv.value_str().map(|v| v.trim().to_owned()));
    out.switchover = switchover;
    Ok(out)
}

/// Pure: KV pairs → the cluster's state. Keys of other clusters (a prefix
/// read of `master/c1` also returns `master/c10`) are ignored.
pub fn interpret(keys: &Keys, cluster: &ClusterName, pairs: &[KvPair]) -> ClusterKv {
    let mut out = ClusterKv::default();
    let mut master = successover_common::contract::MasterKeys::default();
    for kv in pairs {
        match keys.classify(&kv.key) {
            Some(KeyPath::Master { cluster: c, attr }) if c == cluster.as_str() => {
                match attr {
                    None => out.master_present = true,
                    Some(ATTR_FAILED) => {
                        out.fenced = true;
                        out.fence = Some(kv.value_str().unwrap_or_default().to_owned());
                    }
                    Some(_) => {}
                }
                master.add(&kv.key, attr, kv.value.as_deref().unwrap_or_default());
            }
            Some(KeyPath::Quarantine { cluster: c, node }) if c == cluster.as_str() => {
                // The key alone quarantines: an unreadable value must not
                // let a failed source back in.
                out.quarantined.insert(node.to_owned());
            }
            Some(KeyPath::Drain { cluster: c, node }) if c == cluster.as_str() => {
                if successover_common::contract::valid_node_name(node).is_ok() {
                    out.drained.insert(node.to_owned());
                } else {
                    out.rejected
                        .push((kv.key.clone(), "not a valid node name".into()));
                }
            }
            Some(KeyPath::ClusterSettings { cluster: c }) if c == cluster.as_str() => {
                match ClusterSettings::parse(kv.value.as_deref().unwrap_or_default()) {
                    Ok(s) => out.settings = Some(s),
                    Err(e) => {
                        out.settings_error = Some(e.to_string());
                        out.rejected.push((kv.key.clone(), e.to_string()));
                    }
                }
            }
            Some(KeyPath::Agent { cluster: c, node }) if c == cluster.as_str() => {
                match serde_json::from_slice::<HealthReport>(
                    kv.value.as_deref().unwrap_or_default(),
                ) {
                    Ok(r) if r.node == node && HostPort::parse(&r.addr).is_ok() => {
                        out.reports.insert(node.to_owned(), r);
                    }
                    Ok(_) => out
                        .rejected
                        .push((kv.key.clone(), "node or addr does not match the key".into())),
                    Err(e) => out.rejected.push((kv.key.clone(), e.to_string())),
                }
            }
            _ => {}
        }
    }
    // The renderers read the same subtree the same way
    // (`MasterKeys::source`): the value, or without one the `/hostname` +
    // `/port` children; an agent that read it otherwise could stop failing
    // over or self-fencing while the proxies route.
    if master.value.is_some() || master.hostname.is_some() || master.port.is_some() {
        out.master_present = true;
        let mut notes = Vec::new();
        match master.source(&mut |key, problem| notes.push((key.to_owned(), problem.to_string()))) {
            Ok(source) => out.published = Some(source.addr),
            Err((key, problem)) => {
                out.published_invalid = Some(format!("{key}: {problem}"));
                out.rejected.push((key.to_owned(), problem.to_string()));
            }
        }
        out.rejected.extend(notes);
    }
    out
}

/// Every recorded member of the cluster (`member/<cluster>/<node>`) with
/// its address; a member whose name or address is invalid is left out
/// and named in the second list, with why.
pub async fn members(
    consul: &Consul,
    cache: &KvCache,
    keys: &Keys,
    cluster: &ClusterName,
) -> Result<(BTreeMap<String, HostPort>, Vec<(String, String)>), ConsulError> {
    let pairs = cache
        .list(consul, &keys.member_cluster_prefix(cluster))
        .await?;
    Ok(parse_members(keys, cluster, &pairs))
}

/// Pure: the member keys of one cluster → node name → address.
pub fn parse_members(
    keys: &Keys,
    cluster: &ClusterName,
    pairs: &[KvPair],
) -> (BTreeMap<String, HostPort>, Vec<(String, String)>) {
    let prefix = keys.member_cluster_prefix(cluster);
    let mut out = BTreeMap::new();
    let mut rejected = Vec::new();
    for kv in pairs {
        let Some(node) = kv.key.strip_prefix(&prefix) else {
            continue;
        };
        if let Err(e) = successover_common::contract::valid_node_name(node) {
            rejected.push((kv.key.clone(), e.to_string()));
            continue;
        }
        match HostPort::parse(kv.value_str().unwrap_or_default().trim()) {
            Ok(hp) => {
                out.insert(node.to_owned(), hp);
            }
            Err(e) => rejected.push((kv.key.clone(), e.to_string())),
        }
    }
    (out, rejected)
}

/// The prefixes (or single keys) the agent reads each cycle that hold
/// keys in a healthy cluster, for [`KvCache::watch`]: the source, the
/// reports, the settings, the lock, the members and the ACK floors.
pub fn watched_prefixes(keys: &Keys, cluster: &ClusterName) -> Vec<String> {
    vec![
        keys.master_key(cluster),
        keys.agent_cluster_prefix(cluster),
        keys.cluster_settings_key(cluster),
        keys.lock_key(cluster),
        keys.member_cluster_prefix(cluster),
        keys.ack_floors_key(cluster),
    ]
}

/// The ones that are empty in a healthy cluster, read in one request per
/// cycle ([`KvCache::poll`]): quarantine, drain, a procedure under way, a
/// switch request, the last failover, rejoin requests.
pub fn polled_prefixes(keys: &Keys, cluster: &ClusterName) -> Vec<String> {
    vec![
        keys.quarantine_cluster_prefix(cluster),
        keys.drain_cluster_prefix(cluster),
        keys.in_progress_key(cluster),
        keys.switchover_key(cluster),
        keys.last_failover_key(cluster),
        keys.rejoin_prefix(cluster),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str) -> KvPair {
        KvPair {
            key: key.into(),
            value: Some(value.as_bytes().to_vec()),
            flags: 0,
            session: None,
            create_index: 1,
            modify_index: 1,
            lock_index: 0,
        }
    }

    #[test]
    fn members_are_read_and_invalid_ones_named() {
        let keys = Keys::default();
        let c1 = ClusterName::parse("c1").unwrap();
        let (members, rejected) = parse_members(
            &keys,
            &c1,
            &[
                kv("mysql/member/c1/db1", "10.0.0.1:3306"),
                kv("mysql/member/c1/db2", "[2001:db8::2]:3306"),
                kv(
                    "mysql/member/c1/db3",
                    "10.0.0.3:3306\nserver evil 1.2.3.4:3306",
                ),
                kv("mysql/member/c1/bad name", "10.0.0.4:3306"),
                kv("mysql/member/c10/db9", "10.0.0.9:3306"),
            ],
        );
        assert_eq!(members.keys().collect::<Vec<_>>(), ["db1", "db2"]);
        assert_eq!(members["db1"].to_string(), "10.0.0.1:3306");
        let keys_rejected: Vec<&str> = rejected.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys_rejected,
            ["mysql/member/c1/db3", "mysql/member/c1/bad name"]
        );
    }

    #[test]
    fn reads_master_fence_quarantine_and_ignores_other_clusters() {
        let keys = Keys::default();
        let c1 = ClusterName::parse("c1").unwrap();
        let pairs = vec![
            kv("mysql/master/c1", "10.0.0.1:3306"),
            kv("mysql/master/c1/hostname", "10.0.0.1"),
            kv("mysql/master/c1/port", "3306"),
            kv("mysql/master/c1/failed", "switchover"),
            kv("mysql/master/c10", "10.0.0.9:3306"),
            kv("mysql/quarantine/c1/db3", "garbage"),
            kv(
                "mysql/cluster/c1",
                r#"{"proxy_port": 13306, "semi_sync_replicas": 2}"#,
            ),
        ];
        let state = interpret(&keys, &c1, &pairs);
        assert_eq!(
            state.published,
            Some(HostPort::parse("10.0.0.1:3306").unwrap())
        );
        assert!(state.fenced);
        assert!(state.quarantined.contains("db3"));
        assert_eq!(state.semi_sync_replicas(), 2);
        assert!(state.rejected.is_empty(), "{:?}", state.rejected);
    }

    #[test]
    fn an_injected_master_value_is_rejected_not_used() {
        let keys = Keys::default();
        let c1 = ClusterName::parse("c1").unwrap();
        let state = interpret(
            &keys,
            &c1,
            &[kv(
                "mysql/master/c1",
                "db1:3306\n  server evil 6.6.6.6:3306",
            )],
        );
        assert_eq!(state.published, None);
        assert!(state.master_present);
        assert!(state
            .published_invalid
            .unwrap()
            .starts_with("mysql/master/c1"));
    }

    /// The renderers route an empty `master` value with children to the
    /// children (orchestrator writes them so); the agents must see the
    /// same source, or they would stop failing over and self-fencing
    /// while the proxies route.
    #[test]
    fn an_empty_master_value_with_children_names_the_children() {
        let keys = Keys::default();
        let c1 = ClusterName::parse("c1").unwrap();
        let state = interpret(
            &keys,
            &c1,
            &[
                kv("mysql/master/c1", ""),
                kv("mysql/master/c1/hostname", "10.0.0.2"),
                kv("mysql/master/c1/port", "3307"),
            ],
        );
        assert_eq!(
            state.published.map(|p| p.to_string()).as_deref(),
            Some("10.0.0.2:3307")
        );
        assert!(state.master_present && state.published_invalid.is_none());
        // A value with stray blanks reads as the value.
        let state = interpret(&keys, &c1, &[kv("mysql/master/c1", " 10.0.0.1:3306\n")]);
        assert_eq!(
            state.published.map(|p| p.to_string()).as_deref(),
            Some("10.0.0.1:3306")
        );
    }
}
