//! `successover drain <cluster> <node> [--wait] [--timeout <s>]` and
//! `successover drain <cluster> <node> --undo`: the `drain/<cluster>/<node>`
//! key. Before a node is taken down (a patch, a reboot), draining moves the
//! semi-sync ACK role off it make before break: the coordinator grants the
//! flag to another replica, waits until that one is connected in semi-sync
//! mode, and only then takes the drained node's flag. No commit waits for
//! the move. A drained node is never chosen as ACKer while the key exists;
//! `--undo` deletes it. The key alone drains; the CLI writes `{"by": "cli",
//! "at_ms": <unix ms>}`.
//!
//! `--wait` waits until the node's agent reports its replica flag off and
//! its IO thread out of semi-sync mode (exit 3 on timeout).
//!
//! `--json`: `{"cluster", "node", "key", "drained": bool, "acker": bool|null}`
//! (`acker`: the node still holds the ACK role as its last report says;
//! null without a report).

use std::time::Duration;

use serde_json::json;
use successover_common::contract::{ClusterName, HealthReport, NodeName};

use crate::{ensure_known, now_ms, print_json, Ctx, Exit, Failure};

/// Whether the node holds the ACK role, as its agent last reported.
async fn acker(ctx: &Ctx, cluster: &ClusterName, node: &NodeName) -> Result<Option<bool>, Failure> {
    let key = ctx.keys.agent_key(cluster, node);
    Ok(ctx
        .consul
        .kv_get(&key)
        .await?
        .and_then(|p| HealthReport::parse(p.value.as_deref().unwrap_or_default()).ok())
        .and_then(|r| r.semi_sync)
        .map(|s| s.replica_enabled || s.replica_status_on))
}

pub async fn run(
    ctx: &Ctx,
    cluster: &ClusterName,
    node: &str,
    undo: bool,
    wait: bool,
    timeout: Duration,
) -> Result<Exit, Failure> {
    let node = NodeName::parse(node).map_err(|e| Failure::usage(format!("node {node:?}: {e}")))?;
    ensure_known(ctx, cluster).await?;
    let key = ctx.keys.drain_key(cluster, &node);
    if undo {
        ctx.consul.kv_delete(&key).await?;
        if ctx.json {
            print_json(
                &json!({"cluster": cluster.as_str(), "node": node.as_str(), "key": key,
                "drained": false, "acker": acker(ctx, cluster, &node).await?}),
            )?;
        } else {
            println!("{node} is no longer drained ({key} deleted): it may hold the ACK role again");
        }
        return Ok(Exit::Ok);
    }
    let value = json!({"by": "cli", "at_ms": now_ms()}).to_string();
    ctx.consul.kv_put(&key, value).await?;
    let mut holds = acker(ctx, cluster, &node).await?;
    let mut exit = Exit::Ok;
    if wait {
        let deadline = tokio::time::Instant::now() + timeout;
        while holds != Some(false) {
            if tokio::time::Instant::now() >= deadline {
                exit = Exit::Timeout;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            holds = acker(ctx, cluster, &node).await?;
        }
    }
    if ctx.json {
        print_json(
            &json!({"cluster": cluster.as_str(), "node": node.as_str(), "key": key,
            "drained": true, "acker": holds}),
        )?;
    } else {
        match (holds, exit) {
            (Some(false), _) => println!(
                "{node} is drained ({key}) and holds no ACK role: take it down; `successover drain {cluster} {node} --undo` when it is back"
            ),
            (_, Exit::Timeout) => println!(
                "{node} is drained ({key}) but still holds the ACK role after {}s: another replica must be healthy to take it (`successover status {cluster}`)",
                timeout.as_secs()
            ),
            _ => println!(
                "{node} is drained ({key}); the ACK role moves off it once another replica ACKs (`--wait` waits for that)"
            ),
        }
    }
    Ok(exit)
}
