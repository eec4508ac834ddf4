//! `quarantine/<cluster>/<node>`: a failed source that must get no traffic
//! and must not rejoin (DESIGN.md rule 5).

use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::time::at_ms_or_legacy;
use super::{ClusterName, Host, HostPort, Keys, NodeName, ValueError};
use crate::consul::TxnOp;

/// A failed source that must get no traffic and must not rejoin. JSON in
/// `mysql/quarantine/<cluster>/<node>`, written by the coordinator:
///
/// ```json
/// {"node": "db1", "addr": "db1.example.com:3306", "reason": "failover to db2", "at_ms": 1700000000000}
/// ```
///
/// Readers also accept the value as written before the `*_ms` rule, with
/// `"at": <unix seconds>` (see [`super::time`]).
///
/// The node named in the key is quarantined even when the value cannot be
/// read: refusing traffic to a healthy server is recoverable, routing it to
/// a failed one is not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "QuarantineJson")]
pub struct Quarantine {
    pub node: NodeName,
    /// The server's MySQL endpoint, as the `master` key named it.
    pub addr: HostPort,
    pub reason: String,
    /// When the node was quarantined, Unix milliseconds; 0 when the value
    /// did not say.
    pub at_ms: u64,
}

/// Every shape a reader accepts.
#[derive(Deserialize)]
struct QuarantineJson {
    node: NodeName,
    addr: HostPort,
    #[serde(default)]
    reason: String,
    at_ms: Option<u64>,
    at: Option<u64>,
}

impl From<QuarantineJson> for Quarantine {
    fn from(j: QuarantineJson) -> Quarantine {
        Quarantine {
            node: j.node,
            addr: j.addr,
            reason: j.reason,
            at_ms: at_ms_or_legacy(j.at_ms, j.at).unwrap_or(0),
        }
    }
}

impl Quarantine {
    pub fn new(node: NodeName, addr: HostPort, reason: impl Into<String>, at_ms: u64) -> Self {
        Quarantine {
            node,
            addr,
            reason: reason.into(),
            at_ms,
        }
    }

    pub fn parse(value: &[u8]) -> Result<Quarantine, ValueError> {
        serde_json::from_slice(value).map_err(|e| ValueError::Json(e.to_string()))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a quarantine serializes: strings and numbers only")
    }

    /// True when traffic to `source` would reach the quarantined server:
    /// the same `host:port`, or a hostname equal to the node name (or whose
    /// first label is, so `db1.example.com` matches node `db1`).
    pub fn matches(&self, source: &HostPort) -> bool {
        (self.addr.host.same_as(&source.host) && self.addr.port == source.port)
            || host_is_node(&source.host, self.node.as_str())
    }
}

impl Keys {
    /// Sets `quarantine/<cluster>/<node>` for the node the value names; for
    /// the failover's publishing txn, so that the new source and the old
    /// one's quarantine appear together.
    pub fn quarantine_op(&self, cluster: &ClusterName, quarantine: &Quarantine) -> TxnOp {
        TxnOp::set(
            self.quarantine_key(cluster, &quarantine.node),
            quarantine.to_json(),
        )
    }
}

/// Whether a source host names this node: exact (case-insensitive) or by
/// its first label. Over-matching blackholes a cluster; under-matching
/// sends writes to a failed source, so the looser rule wins.
pub fn host_is_node(host: &Host, node: &str) -> bool {
    match host {
        Host::Name(name) => {
            name.eq_ignore_ascii_case(node)
                || name
                    .split('.')
                    .next()
                    .is_some_and(|first| first.eq_ignore_ascii_case(node))
        }
        Host::Ip(ip) => IpAddr::from_str(node).is_ok_and(|n| n == *ip),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::parse_host_port;

    #[test]
    fn quarantine_shape_and_matching() {
        let q = Quarantine::parse(
            br#"{"node":"db1","addr":"db1.example.com:3306","reason":"failover","at_ms":1700000000000}"#,
        )
        .unwrap();
        assert_eq!(q.node.as_str(), "db1");
        assert_eq!(q.addr.port, 3306);
        assert_eq!(q.at_ms, 1_700_000_000_000);
        let json = q.to_json();
        assert_eq!(
            json,
            r#"{"node":"db1","addr":"db1.example.com:3306","reason":"failover","at_ms":1700000000000}"#
        );
        assert_eq!(Quarantine::parse(json.as_bytes()).unwrap(), q);

        let hp = |s: &str| parse_host_port(s).unwrap();
        assert!(q.matches(&hp("db1.example.com:3306")));
        assert!(q.matches(&hp("DB1.example.com:3306")));
        assert!(q.matches(&hp("db1:3306")), "node name");
        assert!(q.matches(&hp("db1.other:3307")), "first label is the node");
        assert!(!q.matches(&hp("db2.example.com:3306")));
        assert!(!q.matches(&hp("db10:3306")));

        let by_ip = Quarantine::parse(br#"{"node":"db1","addr":"10.0.0.1:3306"}"#).unwrap();
        assert!(by_ip.matches(&hp("10.0.0.1:3306")));
        assert!(!by_ip.matches(&hp("10.0.0.1:3307")));
        assert!(!by_ip.matches(&hp("10.0.0.2:3306")));
        assert_eq!(by_ip.at_ms, 0);
        assert_eq!(by_ip.reason, "");

        for bad in [
            &br#"{"node":"db1\n","addr":"db1:3306"}"#[..],
            br#"{"node":"db1","addr":"db1:0"}"#,
            br#"{"node":"db1","addr":"db1 #:3306"}"#,
            br#"{"addr":"db1:3306"}"#,
            // What a failover whose old source had no known address wrote:
            // unreadable, and the key still quarantines db1.
            br#"{"node":"db1","addr":"","reason":"failed source","at":1700000000}"#,
            b"db1:3306",
        ] {
            assert!(
                Quarantine::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn quarantine_as_written_before_the_ms_rule() {
        // agent/src/failover.rs, before the `*_ms` rule: `at` in seconds.
        let q = Quarantine::parse(
            br#"{"node":"db1","addr":"10.0.1.11:3306","reason":"failed source, failover 001764000000000-failover","at":1764000000}"#,
        )
        .unwrap();
        assert_eq!(q.at_ms, 1_764_000_000_000);
        assert_eq!(q.reason, "failed source, failover 001764000000000-failover");
        // Both present: the new field wins.
        let q =
            Quarantine::parse(br#"{"node":"db1","addr":"db1:3306","at":1,"at_ms":1764000000123}"#)
                .unwrap();
        assert_eq!(q.at_ms, 1_764_000_000_123);
    }

    #[test]
    fn quarantine_op_writes_the_node_key() {
        let keys = Keys::default();
        let c1 = ClusterName::parse("c1").unwrap();
        let q = Quarantine::new(
            NodeName::parse("db1").unwrap(),
            parse_host_port("db1:3306").unwrap(),
            "failed source, failover 1",
            1_764_000_000_000,
        );
        assert_eq!(
            keys.quarantine_op(&c1, &q),
            TxnOp::set("mysql/quarantine/c1/db1", q.to_json())
        );
    }
}
