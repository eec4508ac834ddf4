//! What the KV store says about one cluster: the published source, the
//! fence, quarantined nodes, settings and the agents' reports. Read in a
//! few requests per cycle and validated before anything acts on it.

use std::collections::{BTreeMap, BTreeSet};

use successover_common::consul::{Consul, ConsulError, KvPair};
use successover_common::contract::{
    ClusterName, ClusterSettings, HostPort, KeyPath, Keys, ATTR_FAILED,
};

use crate::decide::Addr;
use crate::report::HealthReport;

#[derive(Clone, Debug, Default)]
pub struct ClusterKv {
    /// The `master` key when present and valid.
    pub published: Option<Addr>,
    /// A `master` value that failed validation; the cluster is treated as
    /// having no usable published source and nothing is published over it.
    pub published_invalid: Option<String>,
    pub master_present: bool,
    pub fenced: bool,
    pub quarantined: BTreeSet<String>,
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

pub async fn read(
    consul: &Consul,
    keys: &Keys,
    cluster: &ClusterName,
) -> Result<ClusterKv, ConsulError> {
    let master = consul.kv_get_recurse(&keys.master_key(cluster)).await?;
    let agents = consul
        .kv_get_recurse(&keys.agent_cluster_prefix(cluster))
        .await?;
    let quarantine = consul
        .kv_get_recurse(&keys.quarantine_cluster_prefix(cluster))
        .await?;
    let settings = consul.kv_get(&keys.cluster_settings_key(cluster)).await?;
    let in_progress = consul.kv_get(&keys.in_progress_key(cluster)).await?;
    let switchover = consul.kv_get(&keys.switchover_key(cluster)).await?;
    let mut pairs = master;
    pairs.extend(agents);
    pairs.extend(quarantine);
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
    let mut master_value = None;
    for kv in pairs {
        let text = kv.value_str().unwrap_or("").trim();
        match keys.classify(&kv.key) {
            Some(KeyPath::Master { cluster: c, attr }) if c == cluster.as_str() => match attr {
                None => {
                    out.master_present = true;
                    master_value = Some((kv.key.clone(), text.to_owned()));
                }
                Some(ATTR_FAILED) => out.fenced = true,
                Some(_) => {}
            },
            Some(KeyPath::Quarantine { cluster: c, node }) if c == cluster.as_str() => {
                // The key alone quarantines: an unreadable value must not
                // let a failed source back in.
                out.quarantined.insert(node.to_owned());
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
    if let Some((key, value)) = master_value {
        // `/hostname` and `/port` are written with the value in one txn;
        // the main key is the one every reader agrees on, so it counts.
        match HostPort::parse(&value) {
            Ok(hp) => out.published = Some(addr_of(&hp)),
            Err(e) => {
                out.published_invalid = Some(format!("{key}: {e}"));
                out.rejected.push((key, e.to_string()));
            }
        }
    }
    out
}

pub fn addr_of(hp: &HostPort) -> Addr {
    Addr {
        host: hp.host.to_string(),
        port: hp.port,
    }
}

/// Two addresses name the same server when host and port match; hostnames
/// compare case-insensitively.
pub fn same_addr(a: &Addr, b: &Addr) -> bool {
    a.port == b.port && a.host.eq_ignore_ascii_case(&b.host)
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
            Some(Addr {
                host: "10.0.0.1".into(),
                port: 3306
            })
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
}
