//! Every KV read `status` makes, and nothing else: the pairs come back as
//! Consul returned them, for [`super::build`] to interpret.

use successover_common::consul::KvPair;
use successover_common::contract::ClusterName;
use tokio::task::JoinSet;

use super::build::{cluster_names, in_progress_id};
use crate::{now_ms, Ctx, Failure};

/// What `status` read, as read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// When the reads finished, Unix milliseconds: report ages are
    /// measured from here.
    pub now_ms: u64,
    /// Everything under `master/`, `cluster/`, `agent/`, `lock/`,
    /// `switchover/`, `quarantine/` and `drain/` (or their `<cluster>` subtrees), and
    /// per cluster `history/<cluster>/in-progress` with the entry it names.
    pub pairs: Vec<KvPair>,
}

/// Reads what `status` shows: one recursive read per kind of key, then the
/// in-progress marker (and the entry it names) per cluster.
pub async fn fetch(ctx: &Ctx, only: Option<&ClusterName>) -> Result<Snapshot, Failure> {
    let [master, settings, agents, locks, requests, quarantine, drain] = [
        "master",
        "cluster",
        "agent",
        "lock",
        "switchover",
        "quarantine",
        "drain",
    ]
    .map(|kind| match only {
        Some(c) => format!("{}{kind}/{c}", ctx.keys.prefix()),
        None => format!("{}{kind}/", ctx.keys.prefix()),
    });
    let c = &ctx.consul;
    let read = tokio::try_join!(
        c.kv_get_recurse(&master),
        c.kv_get_recurse(&settings),
        c.kv_get_recurse(&agents),
        c.kv_get_recurse(&locks),
        c.kv_get_recurse(&requests),
        c.kv_get_recurse(&quarantine),
        c.kv_get_recurse(&drain),
    )?;
    let mut pairs: Vec<KvPair> = [read.0, read.1, read.2, read.3, read.4, read.5, read.6]
        .into_iter()
        .flatten()
        .collect();
    // One key per proxy, each listing every cluster it serves.
    pairs.extend(c.kv_get_recurse(&ctx.keys.proxy_prefix()).await?);
    let mut names = cluster_names(&ctx.keys, &pairs);
    if let Some(o) = only {
        names.retain(|n| n == o);
    }
    // Thousands of clusters are thousands of reads of a (usually missing)
    // key; a few at a time keeps this quick without flooding Consul.
    const IN_FLIGHT: usize = 16;
    let mut tasks = JoinSet::new();
    let mut names = names.into_iter();
    loop {
        while tasks.len() < IN_FLIGHT {
            let Some(name) = names.next() else { break };
            let (consul, keys) = (ctx.consul.clone(), ctx.keys.clone());
            tasks.spawn(async move {
                let marker = consul.kv_get(&keys.in_progress_key(&name)).await?;
                let Some(marker) = marker else {
                    return Ok(Vec::new());
                };
                let entry = match in_progress_id(marker.value.as_deref().unwrap_or_default()) {
                    Ok(id) => consul.kv_get(&keys.history_key(&name, &id)).await?,
                    // build() reports the bad marker.
                    Err(_) => None,
                };
                Ok::<_, Failure>(std::iter::once(marker).chain(entry).collect::<Vec<_>>())
            });
        }
        match tasks.join_next().await {
            Some(Ok(result)) => pairs.extend(result?),
            Some(Err(e)) => return Err(Failure::failed(format!("reading history: {e}"))),
            None => break,
        }
    }
    Ok(Snapshot {
        now_ms: now_ms(),
        pairs,
    })
}
