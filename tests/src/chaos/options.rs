//! Options, fault kinds and the seeded RNG.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

/// The kinds of fault, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// `kill -9` of a mysqld.
    Kill9,
    /// SIGSTOP of a mysqld, SIGCONT later.
    SigStop,
    /// `kill -9` or SIGSTOP of an agent.
    Agent,
    /// `kill -9` or SIGSTOP of the renderer.
    Render,
    /// `kill -9` of the Consul leader.
    Leader,
    /// A database host cut off the network.
    Partition,
    /// A planned-switch request.
    Switch,
    /// A DBA loosens rule 1 on the source: a short semi-sync timeout and
    /// no wait without a replica (#12 item 5). The coordinator must set
    /// both back.
    Drift,
    /// The source hung (SIGSTOP) while a replica reads one large
    /// transaction (#12 item 4): a commit that waits for its ACK must
    /// never be answered OK unless the new source has it.
    BigTxn,
    /// The renderer cut from Consul (#12 item 6); half the time the source
    /// hangs meanwhile and is failed over.
    ProxyCut,
    /// The semi-sync replica out of the coordinator's sight (its relay
    /// stops) while it goes on replicating and ACKing (#12 item 1); half
    /// the time the source hangs meanwhile. The source must never count
    /// more semi-sync clients than its one slot.
    Hide,
}

impl FaultKind {
    pub const ALL: [FaultKind; 11] = [
        FaultKind::Kill9,
        FaultKind::SigStop,
        FaultKind::Agent,
        FaultKind::Render,
        FaultKind::Leader,
        FaultKind::Partition,
        FaultKind::Switch,
        FaultKind::Drift,
        FaultKind::BigTxn,
        FaultKind::ProxyCut,
        FaultKind::Hide,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill9 => "kill9",
            FaultKind::SigStop => "sigstop",
            FaultKind::Agent => "agent",
            FaultKind::Render => "render",
            FaultKind::Leader => "leader",
            FaultKind::Partition => "partition",
            FaultKind::Switch => "switch",
            FaultKind::Drift => "drift",
            FaultKind::BigTxn => "bigtxn",
            FaultKind::ProxyCut => "proxycut",
            FaultKind::Hide => "hide",
        }
    }

    /// `kill9,sigstop,…` (or `all`).
    pub fn parse_list(s: &str) -> anyhow::Result<Vec<FaultKind>> {
        if s.trim() == "all" {
            return Ok(FaultKind::ALL.to_vec());
        }
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let kind = FaultKind::ALL
                .into_iter()
                .find(|k| k.name() == part)
                .with_context(|| {
                    format!(
                        "unknown fault {part:?}; known: {}",
                        FaultKind::ALL.map(FaultKind::name).join(",")
                    )
                })?;
            if !out.contains(&kind) {
                out.push(kind);
            }
        }
        anyhow::ensure!(!out.is_empty(), "no fault kinds given");
        Ok(out)
    }
}

#[derive(Clone, Debug)]
pub struct ChaosOptions {
    /// No new fault starts after this long (the one running finishes,
    /// with its repair and check).
    pub duration: Duration,
    pub seed: u64,
    pub faults: Vec<FaultKind>,
    /// Stop after this many faults even if time is left.
    pub max_faults: Option<usize>,
    /// Writers through HAProxy (each its own process).
    pub writers: u32,
    /// Database hosts in network namespaces (required for `partition`).
    pub netns: bool,
    pub cluster: String,
    /// Where every log ends up (runner, agents, renderer, HAProxy, MariaDB,
    /// Consul, writers).
    pub log_dir: PathBuf,
    /// Cancelled: start no new fault, finish the current one and report.
    pub stop: CancellationToken,
    /// Before the faults, break two invariants on purpose (route to a
    /// fenced node, two writable servers) to prove the checks see them: the
    /// run then reports those violations.
    pub sabotage: bool,
}

impl ChaosOptions {
    pub fn new(duration: Duration, seed: u64, log_dir: impl Into<PathBuf>) -> ChaosOptions {
        ChaosOptions {
            duration,
            seed,
            faults: FaultKind::ALL.to_vec(),
            max_faults: None,
            writers: 2,
            netns: true,
            cluster: "chaos".to_owned(),
            log_dir: log_dir.into(),
            stop: CancellationToken::new(),
            sabotage: false,
        }
    }
}

/// SplitMix64: tiny, and the same sequence for a seed whatever version of
/// the `rand` crate is in the lock file.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rng_is_reproducible() {
        let a: Vec<u64> = {
            let mut r = Rng::new(1);
            (0..5).map(|_| r.below(1000)).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(1);
            (0..5).map(|_| r.below(1000)).collect()
        };
        assert_eq!(a, b);
        let mut v: Vec<u32> = (0..7).collect();
        Rng::new(3).shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn fault_lists_parse() {
        assert_eq!(FaultKind::parse_list("all").unwrap().len(), 11);
        assert_eq!(
            FaultKind::parse_list("kill9, switch,kill9").unwrap(),
            vec![FaultKind::Kill9, FaultKind::Switch]
        );
        assert!(FaultKind::parse_list("kill9,nope").is_err());
        assert!(FaultKind::parse_list("").is_err());
    }
}
