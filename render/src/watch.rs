//! Blocking queries on the three prefixes the renderer reads. One watch on
//! the whole `mysql/` root would also wake on every agent heartbeat and
//! history entry; three narrow watches wake only on what changes the
//! config.

use std::time::Duration;

use successover_common::consul::{Consul, ConsulError, KvPair, Watch};
use successover_common::contract::Keys;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::model::Tree;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Master = 0,
    Settings = 1,
    Quarantine = 2,
}

pub const PARTS: [Part; 3] = [Part::Master, Part::Settings, Part::Quarantine];

impl Part {
    pub fn prefix(self, keys: &Keys) -> String {
        match self {
            Part::Master => keys.master_prefix(),
            Part::Settings => keys.cluster_settings_prefix(),
            Part::Quarantine => keys.quarantine_prefix(),
        }
    }
}

/// One watch result.
#[derive(Debug)]
pub struct Update {
    pub part: Part,
    pub result: Result<Vec<KvPair>, ConsulError>,
    /// When the renderer learned of it: the start of the latency metric.
    pub seen: Instant,
}

/// The latest contents of each prefix.
#[derive(Debug, Default)]
pub struct Snapshot {
    parts: [Option<Vec<KvPair>>; 3],
}

impl Snapshot {
    /// Stores a result; false when it holds the same keys and values as
    /// before. Consul answers a blocking query on an empty prefix with the
    /// whole KV store's index, so such a watch wakes on every write
    /// anywhere (agent heartbeats included); those wake-ups stop here.
    pub fn set(&mut self, part: Part, pairs: Vec<KvPair>) -> bool {
        let slot = &mut self.parts[part as usize];
        let same = slot.as_ref().is_some_and(|old| {
            old.len() == pairs.len()
                && old
                    .iter()
                    .zip(&pairs)
                    .all(|(a, b)| a.key == b.key && a.value == b.value)
        });
        *slot = Some(pairs);
        !same
    }

    /// Rendering before every prefix was read once would drop the clusters
    /// of the missing part (e.g. no settings yet → nothing renders).
    pub fn complete(&self) -> bool {
        self.parts.iter().all(Option::is_some)
    }

    /// The highest modify index of what is held: the KV state a render
    /// of [`Snapshot::tree`] stands for.
    pub fn max_index(&self) -> u64 {
        self.parts
            .iter()
            .flatten()
            .flatten()
            .map(|p| p.modify_index)
            .max()
            .unwrap_or(0)
    }

    pub fn tree(&self) -> Tree {
        to_tree(self.parts.iter().flatten().flatten())
    }
}

fn to_tree<'a>(pairs: impl Iterator<Item = &'a KvPair>) -> Tree {
    pairs.map(|p| (p.key.clone(), p.value.clone())).collect()
}

/// Reads the three prefixes once (for `--once` and `--dry-run`).
pub async fn fetch_once(consul: &Consul, keys: &Keys) -> Result<Tree, ConsulError> {
    let mut all = Vec::new();
    for part in PARTS {
        all.extend(consul.kv_get_recurse(&part.prefix(keys)).await?);
    }
    Ok(to_tree(all.iter()))
}

/// Reads every prefix afresh into `snapshot`; nothing changes unless
/// every read succeeds.
pub async fn refresh(
    consul: &Consul,
    keys: &Keys,
    snapshot: &mut Snapshot,
) -> Result<(), ConsulError> {
    let mut fresh = Vec::with_capacity(PARTS.len());
    for part in PARTS {
        fresh.push((part, consul.kv_get_recurse(&part.prefix(keys)).await?));
    }
    for (part, pairs) in fresh {
        snapshot.set(part, pairs);
    }
    Ok(())
}

/// Starts one watch task per prefix; they stop when `cancel` fires or the
/// receiver is gone.
pub fn spawn(
    consul: &Consul,
    keys: &Keys,
    wait: Duration,
    min_interval: Duration,
    tx: mpsc::Sender<Update>,
    cancel: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    PARTS
        .iter()
        .map(|&part| {
            let mut watch = Watch::prefix(consul.clone(), part.prefix(keys))
                .with_wait(wait)
                .with_min_interval(min_interval);
            let tx = tx.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                loop {
                    let result = tokio::select! {
                        _ = cancel.cancelled() => return,
                        r = watch.next() => r,
                    };
                    let update = Update {
                        part,
                        result,
                        seen: Instant::now(),
                    };
                    if tx.send(update).await.is_err() {
                        return;
                    }
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(key: &str, value: &str) -> KvPair {
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
    fn snapshot_is_complete_once_every_prefix_was_read() {
        let keys = Keys::default();
        assert_eq!(Part::Master.prefix(&keys), "mysql/master/");
        assert_eq!(Part::Settings.prefix(&keys), "mysql/cluster/");
        assert_eq!(Part::Quarantine.prefix(&keys), "mysql/quarantine/");

        let mut s = Snapshot::default();
        assert!(s.set(Part::Master, vec![pair("mysql/master/c1", "db1:3306")]));
        assert!(s.set(Part::Settings, vec![]));
        assert!(!s.complete());
        assert!(s.set(Part::Quarantine, vec![]));
        assert!(s.complete());
        assert!(!s.set(Part::Quarantine, vec![]), "same empty result");
        let mut again = pair("mysql/master/c1", "db1:3306");
        again.modify_index = 7;
        assert!(!s.set(Part::Master, vec![again]), "same value re-put");
        assert!(s.set(Part::Master, vec![pair("mysql/master/c1", "db2:3306")]));
        let tree = s.tree();
        assert_eq!(tree.len(), 1);
        assert_eq!(
            tree["mysql/master/c1"].as_deref(),
            Some(b"db2:3306".as_slice())
        );
    }
}
