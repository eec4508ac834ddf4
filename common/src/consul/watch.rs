use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use super::kv::KvPair;
use super::{Consul, ConsulError};

/// Exponential backoff from 100 ms to 2 s with jitter, so a fleet of
/// watchers that lost Consul together does not come back in lockstep. The
/// cap is low on purpose: a leader election takes a few seconds, and a
/// proxy that waits longer than that to retry keeps routing to a source
/// that failed over meanwhile.
pub fn backoff_delay(attempt: u32) -> Duration {
    let cap_ms = 100u64.saturating_mul(1u64 << attempt.min(6)).min(2_000);
    let ms = rand::thread_rng().gen_range(cap_ms / 2..=cap_ms);
    Duration::from_millis(ms)
}

/// The index to send with the next blocking query, per Consul's rules: if
/// the returned index went backwards (a snapshot restore, a new leader with
/// a different log) start over from 0; never block on an index below 1, or
/// the query returns at once forever.
pub fn next_index(previous: u64, returned: u64) -> u64 {
    if returned < previous {
        0
    } else {
        returned.max(1)
    }
}

/// Follows a key or prefix with blocking queries. [`Watch::next`] returns
/// the current contents at once the first time, then only when the index
/// moves. Errors are returned to the caller (to log and count) and the next
/// call waits a jittered backoff before asking again.
pub struct Watch {
    consul: Consul,
    prefix: String,
    index: u64,
    wait: Duration,
    min_interval: Duration,
    failures: u32,
    last_return: Option<Instant>,
    /// (key, modify index) of the last result. The index of a missing key
    /// or an empty prefix is the whole KV store's, so it moves with every
    /// write anywhere; only a change in this signature is a change here.
    last_seen: Option<Vec<(String, u64)>>,
}

impl Watch {
    /// Watches everything under `prefix` (recursive).
    pub fn prefix(consul: Consul, prefix: impl Into<String>) -> Self {
        Watch {
            consul,
            prefix: prefix.into(),
            index: 0,
            wait: Duration::from_secs(60),
            min_interval: Duration::ZERO,
            failures: 0,
            last_return: None,
            last_seen: None,
        }
    }

    /// How long Consul holds each blocking query (default 60 s).
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Rate limit: no two results closer together than this. Consul's docs
    /// ask watchers to limit how often they act on wake-ups; changes that
    /// happen inside the interval are folded into the next result.
    pub fn with_min_interval(mut self, interval: Duration) -> Self {
        self.min_interval = interval;
        self
    }

    pub fn key(&self) -> &str {
        &self.prefix
    }

    /// The index of the last result (0 before the first).
    pub fn index(&self) -> u64 {
        self.index
    }

    pub async fn next(&mut self) -> Result<Vec<KvPair>, ConsulError> {
        if self.failures > 0 {
            tokio::time::sleep(backoff_delay(self.failures - 1)).await;
        }
        if let Some(last) = self.last_return {
            let due = last + self.min_interval;
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
        }
        loop {
            let first = self.index == 0;
            let result = self
                .consul
                .kv_list(&self.prefix, self.index, Some(self.wait))
                .await;
            let (returned, pairs) = match result {
                Ok(ok) => ok,
                Err(err) => {
                    self.failures = self.failures.saturating_add(1);
                    return Err(err);
                }
            };
            self.failures = 0;
            let previous = self.index;
            self.index = next_index(previous, returned);
            // A wake-up with an unchanged index is the wait timing out.
            if !first && returned == previous {
                continue;
            }
            let seen: Vec<(String, u64)> = pairs
                .iter()
                .map(|kv| (kv.key.clone(), kv.modify_index))
                .collect();
            if self.last_seen.as_ref() == Some(&seen) {
                continue;
            }
            self.last_seen = Some(seen);
            self.last_return = Some(Instant::now());
            return Ok(pairs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_rules() {
        assert_eq!(next_index(0, 0), 1, "never block on index 0");
        assert_eq!(next_index(0, 42), 42);
        assert_eq!(next_index(42, 42), 42);
        assert_eq!(next_index(42, 50), 50);
        assert_eq!(next_index(42, 7), 0, "went backwards: reset");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 0..20 {
            let d = backoff_delay(attempt);
            let cap = (100u64 << attempt.min(6)).min(2_000);
            assert!(d >= Duration::from_millis(cap / 2), "{attempt}: {d:?}");
            assert!(d <= Duration::from_millis(cap), "{attempt}: {d:?}");
        }
    }
}
