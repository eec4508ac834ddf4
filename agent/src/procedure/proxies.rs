//! Before a new source opens for writes: every live proxy must have stopped
//! routing the cluster anywhere else (DESIGN.md rule 6). A renderer that
//! still sends new connections to the old source would let clients write
//! on two servers the moment the old one accepts writes again (a hung
//! source that wakes up before its agent fences it).
//!
//! Each renderer publishes what its HAProxy serves under `proxy/<name>`,
//! bound to its own session ([`ProxyServing`]). A key without a session is
//! a dead renderer's leftover (its session ended with it) and is ignored;
//! so is a renderer cut off from Consul once its session is invalidated,
//! and that renderer checks its source directly instead.

use std::time::{Duration, Instant};

use successover_common::consul::KvPair;
use successover_common::contract::{ClusterName, HostPort, ProxyServing};

/// Live proxies that may still route `cluster` to a server other than
/// `opening`, each with why; empty when the node may open.
pub fn still_routing_elsewhere(
    pairs: &[KvPair],
    cluster: &ClusterName,
    opening: &HostPort,
) -> Vec<String> {
    let mut waiting = Vec::new();
    for pair in pairs.iter().filter(|p| p.session.is_some()) {
        let name = pair.key.rsplit('/').next().unwrap_or(&pair.key);
        let record = match ProxyServing::parse(pair.value.as_deref().unwrap_or_default()) {
            Ok(r) => r,
            // What it serves is unknown, so it may serve the old source.
            Err(e) => {
                waiting.push(format!("{name}: unreadable record ({e})"));
                continue;
            }
        };
        let Some(served) = record.clusters.get(cluster) else {
            continue;
        };
        if served.fenced {
            continue;
        }
        match &served.source {
            Some(s) if !s.same(opening) => waiting.push(format!("{name}: routes to {s}")),
            _ => {}
        }
    }
    waiting
}

/// How the wait ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ProxyWait {
    /// No live proxy routes elsewhere.
    Acknowledged { waited: Duration },
    /// Past the bound; these proxies were still routing elsewhere (or could
    /// not be read: the last error).
    TimedOut {
        waited: Duration,
        waiting: Vec<String>,
    },
}

impl super::Coordinator<'_> {
    /// [`Self::wait_for_proxies`] with its outcome logged and returned as
    /// history evidence. `proxy_ack_timeout = 0` skips the wait.
    pub(crate) async fn proxies_acknowledge(
        &self,
        opening: &HostPort,
    ) -> Result<Vec<(String, serde_json::Value)>, String> {
        if self.cfg.proxy_ack_timeout.is_zero() {
            return Ok(Vec::new());
        }
        Ok(match self.wait_for_proxies(opening).await? {
            ProxyWait::Acknowledged { waited } => {
                tracing::debug!(
                    waited_ms = waited.as_millis() as u64,
                    "every live proxy acknowledged"
                );
                vec![(
                    "proxies_acknowledged_ms".into(),
                    (waited.as_millis() as u64).into(),
                )]
            }
            ProxyWait::TimedOut { waited, waiting } => {
                tracing::warn!(
                    waited_ms = waited.as_millis() as u64,
                    proxies = waiting.join("; "),
                    "opening {opening} although live proxies did not acknowledge within timing.proxy_ack_timeout"
                );
                vec![(
                    "proxies_not_acknowledged".into(),
                    waiting.into_iter().map(serde_json::Value::from).collect(),
                )]
            }
        })
    }

    /// Waits, bounded by `[timing] proxy_ack_timeout`, until no live proxy
    /// routes this cluster to a server other than `opening`. Each look is a
    /// blocking read of `proxy/`, so a renderer's update or a session's end
    /// is seen at once. Fails only when the lock is lost.
    pub(crate) async fn wait_for_proxies(&self, opening: &HostPort) -> Result<ProxyWait, String> {
        let bound = self.cfg.proxy_ack_timeout;
        let start = Instant::now();
        let prefix = self.keys.proxy_prefix();
        let mut index = 0u64;
        let mut waiting: Vec<String>;
        loop {
            if self.lost_lock() {
                return Err("coordinator session lost while waiting for the proxies".into());
            }
            let left = bound.saturating_sub(start.elapsed());
            // Short holds: the lease is checked between them.
            let hold = left.min(Duration::from_millis(500));
            match self.consul.kv_list(&prefix, index, Some(hold)).await {
                Ok((next, pairs)) => {
                    waiting = still_routing_elsewhere(&pairs, self.cluster, opening);
                    if waiting.is_empty() {
                        return Ok(ProxyWait::Acknowledged {
                            waited: start.elapsed(),
                        });
                    }
                    index = successover_common::consul::next_index(index, next);
                }
                Err(e) => {
                    waiting = vec![format!("cannot read {prefix}: {e}")];
                    index = 0;
                    tokio::time::sleep(Duration::from_millis(50).min(left)).await;
                }
            }
            if start.elapsed() >= bound {
                return Ok(ProxyWait::TimedOut {
                    waited: start.elapsed(),
                    waiting,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use successover_common::contract::{NodeName, ServedCluster};

    fn cluster() -> ClusterName {
        "shop".parse().unwrap()
    }

    fn addr(s: &str) -> HostPort {
        HostPort::parse(s).unwrap()
    }

    fn record(name: &str, session: Option<&str>, served: Option<ServedCluster>) -> KvPair {
        let mut clusters = std::collections::BTreeMap::new();
        if let Some(s) = served {
            clusters.insert(cluster(), s);
        }
        let value = ProxyServing {
            proxy: name.parse::<NodeName>().unwrap(),
            at_ms: 1,
            kv_index: 7,
            clusters,
        };
        KvPair {
            key: format!("mysql/proxy/{name}"),
            value: Some(value.to_json().into_bytes()),
            flags: 0,
            session: session.map(str::to_owned),
            create_index: 1,
            modify_index: 1,
            lock_index: 1,
        }
    }

    fn serving(source: &str, fenced: bool) -> Option<ServedCluster> {
        Some(ServedCluster {
            source: Some(addr(source)),
            fenced,
        })
    }

    #[test]
    fn a_live_proxy_on_the_old_source_holds_the_open() {
        let pairs = [
            record("p1", Some("s1"), serving("10.0.0.2:3306", false)),
            record("p2", Some("s2"), serving("10.0.0.1:3306", false)),
        ];
        let waiting = still_routing_elsewhere(&pairs, &cluster(), &addr("10.0.0.2:3306"));
        assert_eq!(waiting, ["p2: routes to 10.0.0.1:3306"]);
    }

    #[test]
    fn fenced_dead_or_unrelated_proxies_do_not_hold_it() {
        let mut other = record("p4", Some("s4"), None);
        other.value = Some(
            br#"{"proxy":"p4","at_ms":1,"clusters":{"other":{"source":"10.0.0.1:3306","fenced":false}}}"#
                .to_vec(),
        );
        let pairs = [
            record("p1", Some("s1"), serving("10.0.0.1:3306", true)),
            // A dead renderer's leftover: no session.
            record("p2", None, serving("10.0.0.1:3306", false)),
            record(
                "p3",
                Some("s3"),
                Some(ServedCluster {
                    source: None,
                    fenced: false,
                }),
            ),
            other,
        ];
        assert!(still_routing_elsewhere(&pairs, &cluster(), &addr("10.0.0.2:3306")).is_empty());
    }

    #[test]
    fn an_unreadable_live_record_holds_it() {
        let mut bad = record("p1", Some("s1"), None);
        bad.value = Some(b"not json".to_vec());
        let waiting = still_routing_elsewhere(&[bad], &cluster(), &addr("10.0.0.2:3306"));
        assert_eq!(waiting.len(), 1);
        assert!(
            waiting[0].starts_with("p1: unreadable record"),
            "{waiting:?}"
        );
    }
}
