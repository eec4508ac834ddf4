//! The cluster's KV state, kept by blocking queries instead of read every
//! cycle. One long-poll per prefix the agent reads; each returns when
//! something under it changes (or after [`HOLD`]), so an idle cluster
//! costs Consul a handful of requests per agent per minute, and a change
//! (a fence, a request, a new source) reaches every agent in milliseconds
//! and wakes its loop.
//!
//! Prefixes that are empty in a healthy cluster (requests, quarantine,
//! a procedure under way) cannot be watched cheaply (see [`EMPTY_PAUSE`]):
//! they are read together in one request per cycle ([`KvCache::poll`]).
//!
//! A prefix answers from the cache only while it is *clean*: its watch has
//! answered and did not fail since, and this agent wrote nothing under it
//! since that answer (its own write is in Consul, perhaps not yet in the
//! cache: a decision must see what it just wrote). Anything else is read
//! from Consul directly, as before, and the answer (with its index) goes
//! into the cache.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use successover_common::consul::{backoff_delay, next_index, Consul, ConsulError, KvPair};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// How long Consul holds a blocking query with no change (it allows ten
/// minutes at most): an idle watch costs one request per this.
pub const HOLD: Duration = Duration::from_secs(300);

/// A watched prefix that is empty gets Consul's whole-store index, so its
/// blocking query returns on every write anywhere: it asks again only
/// after this (a change meanwhile is seen then, at once).
const EMPTY_PAUSE: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Entry {
    index: u64,
    pairs: Vec<KvPair>,
    /// The watch answered, nothing failed since and no own write is newer.
    clean: bool,
    /// The write count when this agent last wrote under the prefix.
    touched: u64,
}

#[derive(Clone, Default)]
pub struct KvCache {
    entries: Arc<Mutex<BTreeMap<String, Entry>>>,
    /// This agent's KV writes so far: an answer to a request sent before
    /// the last write under its prefix may not hold that write.
    writes: Arc<std::sync::atomic::AtomicU64>,
}

impl KvCache {
    /// Starts one watch per prefix; each change after the first answer
    /// notifies `wake`. Watches end with `cancel`.
    pub fn watch(
        &self,
        consul: &Consul,
        prefixes: &[String],
        wake: Arc<Notify>,
        cancel: &CancellationToken,
    ) {
        for prefix in prefixes {
            self.entries
                .lock()
                .expect("kv cache")
                .entry(prefix.clone())
                .or_default();
            let (cache, consul, prefix, wake, cancel) = (
                self.clone(),
                consul.clone(),
                prefix.clone(),
                wake.clone(),
                cancel.clone(),
            );
            tokio::spawn(
                async move {
                    let mut failures = 0u32;
                    loop {
                        let index = cache.index_of(&prefix);
                        let sent = cache.write_count();
                        let answer = tokio::select! {
                            _ = cancel.cancelled() => return,
                            a = consul.kv_list(&prefix, next_index(0, index), Some(HOLD)) => a,
                        };
                        match answer {
                            Ok((returned, pairs)) => {
                                failures = 0;
                                let empty = pairs.is_empty();
                                if cache.store(&prefix, returned, pairs, sent) {
                                    wake.notify_one();
                                }
                                if empty {
                                    tokio::select! {
                                        _ = cancel.cancelled() => return,
                                        _ = tokio::time::sleep(EMPTY_PAUSE) => {}
                                    }
                                }
                            }
                            Err(e) => {
                                cache.fail(&prefix);
                                tracing::debug!(prefix, error = %e, "KV watch failed");
                                tokio::select! {
                                    _ = cancel.cancelled() => return,
                                    _ = tokio::time::sleep(backoff_delay(failures)) => {}
                                }
                                failures = failures.saturating_add(1);
                            }
                        }
                    }
                }
                .in_current_span(),
            );
        }
    }

    /// Reads the `polled` prefixes in one request and caches them, clean
    /// until this agent writes under one or the next poll fails.
    pub async fn poll(&self, consul: &Consul, polled: &[String]) -> Result<(), ConsulError> {
        let sent = self.write_count();
        let pairs = match consul.kv_read_trees(polled).await {
            Ok(p) => p,
            Err(e) => {
                for prefix in polled {
                    self.fail(prefix);
                }
                return Err(e);
            }
        };
        for prefix in polled {
            let mine: Vec<KvPair> = pairs
                .iter()
                .filter(|kv| kv.key.starts_with(prefix.as_str()))
                .cloned()
                .collect();
            let mut entries = self.entries.lock().expect("kv cache");
            let e = entries.entry(prefix.clone()).or_default();
            e.pairs = mine;
            e.clean = sent >= e.touched;
        }
        Ok(())
    }

    fn write_count(&self) -> u64 {
        self.writes.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn index_of(&self, prefix: &str) -> u64 {
        self.entries
            .lock()
            .expect("kv cache")
            .get(prefix)
            .map_or(0, |e| e.index)
    }

    /// Takes an answer (from the watch or a direct read) to a request sent
    /// at write count `sent`, unless an answer with a higher index is
    /// already there; true when the pairs changed. It is clean unless an own
    /// write under the prefix came after the request was sent.
    fn store(&self, prefix: &str, index: u64, pairs: Vec<KvPair>, sent: u64) -> bool {
        let mut entries = self.entries.lock().expect("kv cache");
        let e = entries.entry(prefix.to_owned()).or_default();
        if index < e.index {
            return false;
        }
        let changed = e.pairs != pairs;
        e.index = index;
        e.pairs = pairs;
        e.clean = sent >= e.touched;
        changed
    }

    fn fail(&self, prefix: &str) {
        if let Some(e) = self.entries.lock().expect("kv cache").get_mut(prefix) {
            e.clean = false;
        }
    }

    /// This agent wrote `key` (empty: keys it cannot name, as in a
    /// transaction): every prefix that may hold it is read directly until
    /// its watch or a direct read brings the write back.
    /// Called once the write is done (answered or failed): a request sent
    /// before that may miss it.
    pub fn touched(&self, key: &str) {
        let mut entries = self.entries.lock().expect("kv cache");
        let now = self
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        for (prefix, e) in entries.iter_mut() {
            // A recursive delete names a prefix, which may hold watched ones.
            if key.is_empty() || key.starts_with(prefix.as_str()) || prefix.starts_with(key) {
                e.clean = false;
                e.touched = now;
            }
        }
    }

    /// The pairs under a watched `prefix` while it is clean.
    fn cached_list(&self, prefix: &str) -> Option<Vec<KvPair>> {
        let entries = self.entries.lock().expect("kv cache");
        entries
            .get(prefix)
            .filter(|e| e.clean)
            .map(|e| e.pairs.clone())
    }

    /// The watched prefix that holds `key`, if any.
    fn covering(&self, key: &str) -> Option<String> {
        let entries = self.entries.lock().expect("kv cache");
        entries
            .keys()
            .filter(|p| key.starts_with(p.as_str()))
            .max_by_key(|p| p.len())
            .cloned()
    }

    /// `prefix` recursively: from the cache while clean, else from Consul
    /// (and then cached, if watched).
    pub async fn list(&self, consul: &Consul, prefix: &str) -> Result<Vec<KvPair>, ConsulError> {
        if let Some(pairs) = self.cached_list(prefix) {
            return Ok(pairs);
        }
        let sent = self.write_count();
        let (index, pairs) = consul.kv_list(prefix, 0, None).await?;
        if self.entries.lock().expect("kv cache").contains_key(prefix) {
            self.store(prefix, index, pairs.clone(), sent);
        }
        Ok(pairs)
    }

    /// One key: from the watched prefix that holds it while that is clean,
    /// else from Consul.
    pub async fn get(&self, consul: &Consul, key: &str) -> Result<Option<KvPair>, ConsulError> {
        if let Some(prefix) = self.covering(key) {
            let pairs = self.list(consul, &prefix).await?;
            return Ok(pairs.into_iter().find(|kv| kv.key == key));
        }
        consul.kv_get(key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(key: &str, index: u64) -> KvPair {
        KvPair {
            key: key.to_owned(),
            value: Some(b"v".to_vec()),
            create_index: index,
            modify_index: index,
            lock_index: 0,
            flags: 0,
            session: None,
        }
    }

    #[test]
    fn a_prefix_is_clean_from_an_answer_until_a_failure_or_an_own_write_under_it() {
        let c = KvCache::default();
        c.entries
            .lock()
            .unwrap()
            .insert("m/c1".into(), Entry::default());
        c.entries
            .lock()
            .unwrap()
            .insert("a/c1/".into(), Entry::default());
        assert_eq!(c.cached_list("m/c1"), None, "never answered");
        assert!(c.store("m/c1", 10, vec![pair("m/c1", 10)], 0));
        c.store("a/c1/", 10, vec![], 0);
        assert_eq!(c.cached_list("a/c1/"), Some(vec![]));
        assert_eq!(c.cached_list("m/c1").unwrap().len(), 1);
        // An older answer (a direct read that raced the watch) is ignored.
        assert!(!c.store("m/c1", 9, vec![], 0));
        assert_eq!(c.cached_list("m/c1").unwrap().len(), 1);
        // An own write under one prefix dirties that one only.
        let before = c.write_count();
        c.touched("a/c1/db1");
        assert_eq!(c.cached_list("a/c1/"), None);
        assert!(c.cached_list("m/c1").is_some());
        // An answer to a request sent before that write may not hold it.
        c.store("a/c1/", 11, vec![], before);
        assert_eq!(c.cached_list("a/c1/"), None);
        // A transaction's keys are not named: everything is dirty.
        c.store("a/c1/", 12, vec![pair("a/c1/db1", 12)], c.write_count());
        assert!(c.cached_list("a/c1/").is_some());
        c.touched("");
        assert_eq!(c.cached_list("a/c1/"), None);
        assert_eq!(c.cached_list("m/c1"), None);
        c.store("m/c1", 13, vec![], c.write_count());
        assert!(c.cached_list("m/c1").is_some());
        c.fail("m/c1");
        assert_eq!(c.cached_list("m/c1"), None, "a failed watch");
        // The longest watched prefix holds a key.
        c.entries
            .lock()
            .unwrap()
            .insert("m/c1/failed".into(), Entry::default());
        assert_eq!(c.covering("m/c1/failed").as_deref(), Some("m/c1/failed"));
        assert_eq!(c.covering("m/c1/port").as_deref(), Some("m/c1"));
        assert_eq!(c.covering("x/c1"), None);
    }
}
