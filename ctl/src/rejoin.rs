//! `successover rejoin <cluster> <node> [--wait] [--timeout <s>]`: asks the
//! coordinator to bring a quarantined node back as a replica. The
//! coordinator checks that the node holds no transaction the source lacks
//! and repoints it, or refuses with "rebuild required" (the node must then
//! be rebuilt from a copy of the source). Writes
//! `<prefix>rejoin/<cluster>/<node>` = a [`RejoinRequest`], `{"id":
//! "<id>", "at_ms": <unix ms>}`; the outcome is a history entry of kind
//! `rejoin` whose `evidence.request_id` is that id.
//!
//! `--json`: `{"cluster", "node", "key", "result": "done"|"refused"|null,
//! "entry": <HistoryEntry>|null}`.

use std::time::Duration;

use serde_json::json;
use successover_common::consul::Watch;
use successover_common::contract::{ClusterName, NodeName};
use successover_common::procedure::{
    HistoryEntry, Outcome, ProcedureKind, RejoinRequest, EVIDENCE_REQUEST_ID,
};

use crate::{ensure_known, now_ms, print_json, Ctx, Exit, Failure};

pub async fn run(
    ctx: &Ctx,
    cluster: &ClusterName,
    node: &str,
    wait: bool,
    timeout: Duration,
) -> Result<Exit, Failure> {
    let node = NodeName::parse(node).map_err(|e| Failure::usage(format!("node {node:?}: {e}")))?;
    ensure_known(ctx, cluster).await?;
    let quarantine = ctx.keys.quarantine_key(cluster, &node);
    if ctx.consul.kv_get(&quarantine).await?.is_none() {
        return Err(Failure::failed(format!(
            "{node} is not quarantined ({quarantine} is absent): nothing to rejoin"
        )));
    }
    let key = ctx.keys.rejoin_key(cluster, &node);
    let asked_ms = now_ms();
    let id = format!("cli-{asked_ms}-{}", std::process::id());
    let written = ctx
        .consul
        .kv_cas(&key, RejoinRequest::new(id.clone(), asked_ms).to_json(), 0)
        .await?;
    if !written {
        return Err(Failure::failed(format!(
            "a rejoin of {node} is already pending ({key}); delete it to withdraw"
        )));
    }
    if !wait {
        if ctx.json {
            print_json(
                &json!({"cluster": cluster.as_str(), "node": node.as_str(), "key": key, "result": null, "entry": null}),
            )?;
        } else {
            println!(
                "rejoin of {node} requested ({key}); follow with `successover history {cluster}`"
            );
        }
        return Ok(Exit::Ok);
    }
    let mut watch = Watch::prefix(ctx.consul.clone(), ctx.keys.history_prefix(cluster))
        .with_wait(Duration::from_secs(5));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let pairs = match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Failure {
                    exit: Exit::Timeout,
                    message: format!("no outcome for the rejoin of {node} within {timeout:?}; the request may still be pending ({key})"),
                })
            }
        };
        let entry = pairs
            .iter()
            .filter_map(|kv| serde_json::from_slice::<HistoryEntry>(kv.value.as_deref()?).ok())
            .filter(|e| e.kind == ProcedureKind::Rejoin && e.to.as_deref() == Some(node.as_str()))
            .filter(|e| {
                e.evidence.get(EVIDENCE_REQUEST_ID).and_then(|v| v.as_str()) == Some(id.as_str())
            })
            .filter(|e| e.outcome != Outcome::Running)
            .max_by(|a, b| a.id.cmp(&b.id));
        if let Some(e) = entry {
            let done = e.outcome == Outcome::Done;
            if ctx.json {
                print_json(
                    &json!({"cluster": cluster.as_str(), "node": node.as_str(), "key": key,
                    "result": if done { "done" } else { "refused" }, "entry": e}),
                )?;
            } else {
                println!("{}: {}", if done { "done" } else { "refused" }, e.reason);
            }
            return Ok(if done { Exit::Ok } else { Exit::Failed });
        }
    }
}
