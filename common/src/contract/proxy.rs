//! `proxy/<proxy>`: what one renderer's HAProxy serves right now, so that a
//! coordinator can tell when every live proxy has stopped routing to a
//! source it is replacing (DESIGN.md rule 6).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ClusterName, HostPort, Keys, NodeName, ValueError};

/// JSON in `mysql/proxy/<proxy>`, written by that renderer after every
/// HAProxy change it applied (and when it starts), bound to the renderer's
/// own session: a renderer that dies or loses Consul loses its key with its
/// session, and a coordinator then no longer waits for it.
///
/// ```json
/// {"proxy": "proxy1", "at_ms": 1700000000000, "kv_index": 4711,
///  "clusters": {"shop": {"source": "10.0.1.11:3306", "fenced": false}}}
/// ```
///
/// The value states what HAProxy serves, not what KV asks for: a change the
/// renderer could not apply is not in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyServing {
    pub proxy: NodeName,
    /// When the renderer wrote the value, Unix milliseconds.
    pub at_ms: u64,
    /// The Consul index of the KV state HAProxy serves.
    #[serde(default)]
    pub kv_index: u64,
    /// Every cluster this proxy has a listen block for.
    #[serde(default)]
    pub clusters: BTreeMap<ClusterName, ServedCluster>,
}

/// One cluster's listen block as HAProxy runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedCluster {
    /// The published source (`master/<cluster>` as read) the block's server
    /// points at; `None` when it points at no server.
    pub source: Option<HostPort>,
    /// The block is blackholed (the cluster is fenced, or its source is
    /// quarantined): no connection reaches any server.
    pub fenced: bool,
}

impl ServedCluster {
    /// Whether a new connection through this block can reach `server`.
    pub fn routes_to(&self, server: &HostPort) -> bool {
        !self.fenced && self.source.as_ref().is_some_and(|s| s.same(server))
    }
}

impl ProxyServing {
    pub fn parse(value: &[u8]) -> Result<ProxyServing, ValueError> {
        serde_json::from_slice(value).map_err(|e| ValueError::Json(e.to_string()))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a proxy record serializes: strings and numbers only")
    }

    /// Whether a new connection for `cluster` through this proxy can reach
    /// `server`. A cluster the proxy has no block for routes nowhere.
    pub fn routes_to(&self, cluster: &ClusterName, server: &HostPort) -> bool {
        self.clusters
            .get(cluster)
            .is_some_and(|c| c.routes_to(server))
    }
}

impl Keys {
    /// `proxy/`: one key per live renderer.
    pub fn proxy_prefix(&self) -> String {
        format!("{}proxy/", self.prefix())
    }

    pub fn proxy_key(&self, proxy: &NodeName) -> String {
        format!("{}proxy/{proxy}", self.prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(s: &str) -> HostPort {
        HostPort::parse(s).unwrap()
    }

    #[test]
    fn a_record_round_trips_and_says_where_it_routes() {
        let shop = ClusterName::parse("shop").unwrap();
        let mut clusters = BTreeMap::new();
        clusters.insert(
            shop.clone(),
            ServedCluster {
                source: Some(hp("10.0.1.11:3306")),
                fenced: false,
            },
        );
        let rec = ProxyServing {
            proxy: NodeName::parse("proxy1").unwrap(),
            at_ms: 1,
            kv_index: 7,
            clusters,
        };
        let back = ProxyServing::parse(rec.to_json().as_bytes()).unwrap();
        assert_eq!(back, rec);
        assert!(back.routes_to(&shop, &hp("10.0.1.11:3306")));
        assert!(!back.routes_to(&shop, &hp("10.0.1.12:3306")));
        assert!(!back.routes_to(&ClusterName::parse("other").unwrap(), &hp("10.0.1.11:3306")));
        let mut fenced = back.clone();
        fenced.clusters.get_mut(&shop).unwrap().fenced = true;
        assert!(!fenced.routes_to(&shop, &hp("10.0.1.11:3306")));
    }

    #[test]
    fn a_record_with_an_injected_source_is_refused() {
        let bad = br#"{"proxy":"p1","at_ms":1,"clusters":{"shop":{"source":"x:1\nserver y","fenced":false}}}"#;
        assert!(ProxyServing::parse(bad).is_err());
        let bad_name = br#"{"proxy":"p 1","at_ms":1}"#;
        assert!(ProxyServing::parse(bad_name).is_err());
    }
}
