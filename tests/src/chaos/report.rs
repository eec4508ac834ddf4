//! The report: one record per fault and the summary table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// One fault and what followed it.
#[derive(Clone, Debug, Default)]
pub struct FaultRecord {
    pub n: usize,
    /// Kind and variant: `kill9-source`, `agent-sigstop`, …
    pub label: String,
    pub target: String,
    pub started_ms: u64,
    pub finished_ms: u64,
    /// What happened, in order.
    pub notes: Vec<String>,
    /// Longest gap between two acknowledged writes of one writer this round.
    pub worst_gap_ms: u64,
    /// From the end of the repair to healthy again.
    pub recovery_ms: u64,
    pub failovers: u32,
    pub switches: u32,
    pub refusals: u32,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub netns: bool,
    pub elapsed: Duration,
    pub faults: Vec<FaultRecord>,
    pub failovers: u32,
    pub failovers_refused: u32,
    /// Ended with nothing promoted: the source answered again (a refused
    /// failover taken up again ends so).
    pub failovers_aborted: u32,
    pub switches: u32,
    pub switches_refused: u32,
    pub switches_aborted: u32,
    pub procedures_failed: u32,
    pub rejoins: u32,
    pub rebuilds: u32,
    pub writes_acked: u64,
    pub writes_failed_attempts: u64,
    pub writes_lost: u64,
    pub route_probes: u64,
    pub read_only_samples: u64,
    pub kv_changes: u64,
    /// Semi-sync counter readings (rule 1: a writable server never switches
    /// semi-sync off).
    pub no_tx_samples: u64,
    /// Commits that ended without an ACK (`no_tx` rises): killed while
    /// waiting, their clients got no OK.
    pub unacked_commits: u64,
    /// Longest time a returning old source stayed writable before its agent
    /// fenced it (never able to acknowledge, see
    /// [`SELF_FENCE_GRACE_MS`](super::SELF_FENCE_GRACE_MS)).
    pub longest_self_fence_ms: u64,
    pub violations: Vec<String>,
    pub log_dir: PathBuf,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn refusals(&self) -> u32 {
        self.failovers_refused + self.switches_refused
    }

    /// The longest write gap and the fault it belongs to.
    pub fn worst_gap(&self) -> Option<&FaultRecord> {
        self.faults.iter().max_by_key(|f| f.worst_gap_ms)
    }

    /// The summary table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "successover chaos: seed {}, {} faults in {}, database hosts {}",
            self.seed,
            self.faults.len(),
            fmt_duration(self.elapsed),
            if self.netns {
                "in network namespaces"
            } else {
                "on loopback"
            }
        );
        let _ = writeln!(
            out,
            "\n{:<18} {:>6} {:>10} {:>9} {:>9} {:>12} {:>14}",
            "fault", "count", "failovers", "switches", "refusals", "worst gap", "worst recovery"
        );
        let mut by_label: BTreeMap<&str, (u32, u32, u32, u32, u64, u64)> = BTreeMap::new();
        for f in &self.faults {
            let e = by_label.entry(f.label.as_str()).or_default();
            e.0 += 1;
            e.1 += f.failovers;
            e.2 += f.switches;
            e.3 += f.refusals;
            e.4 = e.4.max(f.worst_gap_ms);
            e.5 = e.5.max(f.recovery_ms);
        }
        for (label, (count, fo, sw, rf, gap, rec)) in &by_label {
            let _ = writeln!(
                out,
                "{label:<18} {count:>6} {fo:>10} {sw:>9} {rf:>9} {:>12} {:>14}",
                fmt_ms(*gap),
                fmt_ms(*rec)
            );
        }
        let _ = writeln!(out);
        let mut row = |k: &str, v: String| {
            let _ = writeln!(out, "{k:<34} {v}");
        };
        row("faults", self.faults.len().to_string());
        row(
            "failovers",
            format!(
                "{} done, {} refused, {} aborted",
                self.failovers, self.failovers_refused, self.failovers_aborted
            ),
        );
        row(
            "switches",
            format!(
                "{} done, {} refused, {} aborted",
                self.switches, self.switches_refused, self.switches_aborted
            ),
        );
        row("refusals", self.refusals().to_string());
        row("procedures failed", self.procedures_failed.to_string());
        row(
            "rejoins / rebuilds",
            format!("{} / {}", self.rejoins, self.rebuilds),
        );
        row(
            "writes acknowledged",
            format!(
                "{} ({} failed attempts, retried)",
                self.writes_acked, self.writes_failed_attempts
            ),
        );
        row("writes lost", self.writes_lost.to_string());
        row(
            "worst write unavailability",
            match self.worst_gap() {
                Some(f) => format!(
                    "{} (fault #{} {} {})",
                    fmt_ms(f.worst_gap_ms),
                    f.n,
                    f.label,
                    f.target
                ),
                None => "-".to_owned(),
            },
        );
        row(
            "longest self-fence window",
            fmt_ms(self.longest_self_fence_ms),
        );
        row(
            "monitor samples",
            format!(
                "{} routes through HAProxy, {} read_only readings, {} KV changes, {} semi-sync counter readings ({} commits ended without an ACK: killed while waiting)",
                self.route_probes, self.read_only_samples, self.kv_changes, self.no_tx_samples, self.unacked_commits
            ),
        );
        row("violations", self.violations.len().to_string());
        for v in &self.violations {
            let _ = writeln!(out, "  VIOLATION: {v}");
        }
        let _ = writeln!(
            out,
            "\nlogs: {}\nreproduce the fault sequence: --seed {}",
            self.log_dir.display(),
            self.seed
        );
        out
    }
}

pub(super) fn fmt_ms(ms: u64) -> String {
    if ms >= 1000 {
        format!("{:.2} s", ms as f64 / 1000.0)
    } else {
        format!("{ms} ms")
    }
}

pub(super) fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}m {:02}s", s / 60, s % 60)
}
