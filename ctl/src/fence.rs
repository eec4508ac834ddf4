//! `successover fence <cluster> [--reason <text>]` and `successover unfence
//! <cluster>`: the `master/<cluster>/failed` key. While it exists every
//! renderer blackholes the cluster (no client reaches any of its servers)
//! and every agent keeps its server read-only (DESIGN.md rules 3 and 8).
//!
//! The fence value the CLI writes: a [`Fence`], `{"reason": "…", "by":
//! "cli", "at_ms": <unix ms>}`. Any value fences; the CLI never overwrites
//! an existing fence (CAS on index 0), so a coordinator's fence keeps its
//! reason.
//! Unfencing deletes only the value it showed (CAS on its modify index).
//!
//! `--json`:
//!
//! ```json
//! {"cluster": "c1", "key": "mysql/master/c1/failed",
//!  "fenced": true,        // after the command
//!  "changed": true,       // false: it already was (not) fenced
//!  "value": "{…}"}        // the fence value written, found, or removed; null if none
//! ```

use serde::Serialize;
use successover_common::contract::{ClusterName, Fence};

use crate::format::{clean, value_text};
use crate::{ensure_known, error_chain, now_ms, print_json, Ctx, Exit, Failure};

const DEFAULT_REASON: &str = "fenced by an operator with `successover fence`";

/// The fence's `by` when the CLI wrote it.
const BY: &str = "cli";

#[derive(Debug, Serialize)]
struct Doc<'a> {
    cluster: &'a str,
    key: &'a str,
    fenced: bool,
    changed: bool,
    value: Option<String>,
}

/// The procedure under way, if any: the coordinator relies on the fence
/// key while it works and deletes it when it finishes, so both commands
/// warn about it.
async fn in_progress(ctx: &Ctx, cluster: &ClusterName) -> Result<Option<String>, Failure> {
    let key = ctx.keys.in_progress_key(cluster);
    Ok(ctx
        .consul
        .kv_get(&key)
        .await?
        .map(|p| clean(value_text(&p).trim()).into_owned())
        .filter(|id| !id.is_empty()))
}

pub async fn fence(
    ctx: &Ctx,
    cluster: &ClusterName,
    reason: Option<&str>,
) -> Result<Exit, Failure> {
    ensure_known(ctx, cluster).await?;
    let key = ctx.keys.failed_key(cluster);
    let value = Fence::new(reason.unwrap_or(DEFAULT_REASON), BY, now_ms()).to_json();
    let changed = ctx
        .consul
        .kv_cas(&key, value.clone(), 0)
        .await
        .map_err(|e| {
            Failure::failed(format!(
                "{}; the fence may have been written anyway: look with `consul kv get {key}`",
                error_chain(&e)
            ))
        })?;
    let current = if changed {
        value
    } else {
        match ctx.consul.kv_get(&key).await? {
            Some(p) => value_text(&p),
            None => {
                return Err(Failure::failed(format!(
                    "{key} was removed while fencing {cluster}; nothing is fenced, run the command again"
                )))
            }
        }
    };
    if ctx.json {
        print_json(&Doc {
            cluster: cluster.as_str(),
            key: &key,
            fenced: true,
            changed,
            value: Some(current),
        })?;
    } else if changed {
        println!("fenced {cluster}: wrote {key} = {}", clean(&current));
    } else {
        println!(
            "{cluster} was already fenced: {key} = {}; left as it is",
            clean(current.trim())
        );
    }
    eprintln!(
        "warning: while {key} exists every proxy blackholes {cluster}: no client reaches any \
         of its servers. Lift the fence with `successover unfence {cluster}`."
    );
    if let Some(id) = in_progress(ctx, cluster).await? {
        eprintln!(
            "warning: procedure {id} is in progress on {cluster}; when it finishes the \
             coordinator deletes {key}, lifting this fence too"
        );
    }
    Ok(Exit::Ok)
}

pub async fn unfence(ctx: &Ctx, cluster: &ClusterName, force: bool) -> Result<Exit, Failure> {
    let key = ctx.keys.failed_key(cluster);
    let Some(existing) = ctx.consul.kv_get(&key).await? else {
        if ctx.json {
            print_json(&Doc {
                cluster: cluster.as_str(),
                key: &key,
                fenced: false,
                changed: false,
                value: None,
            })?;
        } else {
            println!("{cluster} was not fenced: there is no {key}");
        }
        return Ok(Exit::Ok);
    };
    // A procedure's fence is part of its safety: lifted mid-failover, the
    // proxies route to the failed source again until the new one is
    // published. The coordinator lifts it itself when the procedure ends.
    let running = in_progress(ctx, cluster).await?;
    if let (Some(id), false) = (&running, force) {
        return Err(Failure::failed(format!(
            "procedure {id} is in progress on {cluster} and fenced it on purpose; nothing was \
             deleted. The coordinator lifts its fence when the procedure ends; to unfence now \
             anyway, add --force"
        )));
    }
    let was = value_text(&existing);
    // Only the fence we looked at: a coordinator that fenced again in the
    // meantime (a failover starting) must keep its fence.
    if !ctx
        .consul
        .kv_delete_cas(&key, existing.modify_index)
        .await?
    {
        return Err(Failure::failed(format!(
            "{key} changed while unfencing {cluster} (a coordinator fenced it again?); \
             nothing was deleted: look with `successover status {cluster}`"
        )));
    }
    let source = ctx
        .consul
        .kv_get(&ctx.keys.master_key(cluster))
        .await?
        .map(|p| value_text(&p).trim().to_owned());
    if ctx.json {
        print_json(&Doc {
            cluster: cluster.as_str(),
            key: &key,
            fenced: false,
            changed: true,
            value: Some(was),
        })?;
    } else {
        println!(
            "unfenced {cluster}: deleted {key} (was {})",
            clean(was.trim())
        );
    }
    match source {
        Some(s) if !s.is_empty() => eprintln!(
            "warning: fencing blackholes {cluster} at every proxy; now unfenced, every proxy \
             routes {cluster} to {} again",
            clean(&s)
        ),
        _ => eprintln!(
            "warning: {cluster} is unfenced but {} publishes no source: proxies still have \
             nowhere to send it",
            ctx.keys.master_key(cluster)
        ),
    }
    if let Some(id) = running {
        eprintln!(
            "warning: procedure {id} is in progress on {cluster}: the coordinator fenced it on \
             purpose, and clients may now reach a server that is being demoted"
        );
    }
    Ok(Exit::Ok)
}
