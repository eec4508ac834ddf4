//! Bringing a quarantined node back (`successover rejoin <cluster> <node>`
//! writes `<prefix>rejoin/<cluster>/<node>`). The node is repointed as a
//! replica of the source only if it holds no transaction the source lacks;
//! otherwise the answer is "rebuild required". The servers' own verdict
//! follows in the executor: MariaDB positions can hide a transaction the
//! old source wrote but never sent, and with `gtid_strict_mode` the source
//! then refuses the replica.

use successover_common::consul::KvPair;
use successover_common::contract::NodeName;
use successover_common::procedure::{RejoinRequest, EVIDENCE_REQUEST_ID};

use super::{switchover::errant, Input, Step};

fn checks(
    input: &Input<'_>,
    node: &str,
    evidence: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<(String, super::HostPort), String> {
    let view = input.view;
    if NodeName::parse(node).is_err() {
        return Err(format!("{node:?} is not a valid node name"));
    }
    if view.published.is_none() {
        return Err("no published source".into());
    }
    let source = view.source().ok_or("the published source has no agent")?;
    if !source.reachable {
        return Err("the source is unreachable".into());
    }
    if source.name == node {
        return Err(format!("{node} is the source"));
    }
    let n = view
        .node(node)
        .ok_or_else(|| format!("{node} is not a known node of {}", view.cluster))?;
    if !n.reachable {
        return Err(format!("{node} is unreachable"));
    }
    if !n.quarantined {
        return Err(format!("{node} is not quarantined"));
    }
    if !n.read_only {
        return Err(format!(
            "{node} is writable; its agent keeps quarantined nodes read-only, so something is wrong"
        ));
    }
    for (key, pos) in [
        ("node_gtid_executed", &n.gtid_executed),
        ("source_gtid_executed", &source.gtid_executed),
    ] {
        if let Some(p) = pos {
            evidence.insert(key.into(), p.to_string().into());
        }
    }
    errant(n, source).map_err(|e| format!("rebuild required: {e}"))?;
    Ok((source.name.clone(), source.addr.clone()))
}

/// The step for one pending rejoin request.
pub fn step(input: &Input<'_>, request: &KvPair) -> (Step, String) {
    let node = request
        .key
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let mut evidence = serde_json::Map::new();
    // The requester finds its answer by this id.
    if let Some(id) = RejoinRequest::parse(request.value.as_deref().unwrap_or_default())
        .ok()
        .and_then(|r| r.id)
    {
        evidence.insert(EVIDENCE_REQUEST_ID.into(), id.into());
    }
    match checks(input, &node, &mut evidence) {
        Ok((source, source_addr)) => (
            Step::Rejoin {
                request: request.clone(),
                node: node.clone(),
                source: source.clone(),
                source_addr,
                evidence,
            },
            format!("rejoining {node} as a replica of {source}"),
        ),
        Err(why) => (
            Step::RefuseRejoin {
                request: request.clone(),
                node,
                why: why.clone(),
                evidence,
            },
            format!("rejoin refused: {why}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::fixtures::{self, healthy, pos};
    use crate::decide::{ClusterView, KvInputs};

    fn request(node: &str) -> KvPair {
        KvPair {
            key: format!("mysql/rejoin/c1/{node}"),
            value: Some(br#"{"id":"r1"}"#.to_vec()),
            flags: 0,
            session: None,
            create_index: 1,
            modify_index: 3,
            lock_index: 0,
        }
    }

    fn run(v: &ClusterView, node: &str) -> Step {
        let kv = KvInputs::default();
        let input = fixtures::input(v, &kv, "db2", 0);
        step(&input, &request(node)).0
    }

    #[test]
    fn a_clean_quarantined_node_rejoins_a_diverged_one_needs_a_rebuild() {
        let mut v = healthy();
        v.nodes[2].quarantined = true;
        v.nodes[2].replica = None;
        let s = run(&v, "db3");
        assert!(
            matches!(s, Step::Rejoin { ref source, ref evidence, .. } if source == "db1" && evidence["request_id"] == "r1"),
            "{s:?}"
        );
        v.nodes[2].gtid_executed = Some(pos("0-1-11"));
        let Step::RefuseRejoin { why, .. } = run(&v, "db3") else {
            panic!()
        };
        assert!(why.starts_with("rebuild required"), "{why}");
    }

    #[test]
    fn refusals() {
        let v = healthy();
        for (node, needle) in [
            ("db1", "is the source"),
            ("db3", "not quarantined"),
            ("db9", "not a known node"),
        ] {
            let Step::RefuseRejoin { why, .. } = run(&v, node) else {
                panic!("{node}")
            };
            assert!(why.contains(needle), "{node}: {why}");
        }
        let mut v = healthy();
        v.nodes[2].quarantined = true;
        v.nodes[2].read_only = false;
        let Step::RefuseRejoin { why, .. } = run(&v, "db3") else {
            panic!()
        };
        assert!(why.contains("writable"), "{why}");
    }
}
