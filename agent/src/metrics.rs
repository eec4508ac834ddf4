//! Agent metrics in the Prometheus text format.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `successover_agent_cycles_total` | counter | `role`: coordinator, member |
//! | `successover_agent_actions_total` | counter | `action`, `outcome`: ok, error |
//! | `successover_agent_errors_total` | counter | `stage`: mysql, consul, report, lock |
//! | `successover_agent_self_fences_total` | counter | |
//! | `successover_agent_sessions_lost_total` | counter | |
//! | `successover_agent_report_writes_total` | counter | |
//! | `successover_agent_coordinator` | gauge | 1 while this agent holds the cluster lock |
//! | `successover_agent_mysql_up` | gauge | 1 when the local server answered this tick |
//! | `successover_agent_last_cycle_timestamp_seconds` | gauge | |
//! | `successover_failover_ready` | gauge | on the coordinator: 1 when a failover would find a node to promote |
//! | `successover_agent_apply_backlog_transactions` | gauge | on a replica: received, not yet applied |
//! | `successover_agent_applied_transactions_per_second` | gauge | on a replica, over the last 10 s |
//! | `successover_agent_expected_apply_seconds` | gauge | on a replica: the backlog at that rate (absent while the applier is stalled with work to do) |
//! | `successover_consul_requests_total` | counter | `op`: kv get, kv list, kv list blocking, txn, session renew, check pass, … |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Default)]
struct Inner {
    cycles: BTreeMap<&'static str, u64>,
    actions: BTreeMap<(&'static str, &'static str), u64>,
    errors: BTreeMap<&'static str, u64>,
    self_fences: u64,
    sessions_lost: u64,
    report_writes: u64,
    coordinator: bool,
    mysql_up: bool,
    reached_consul: bool,
    last_cycle: f64,
    /// When the last cycle ended, on the monotonic clock.
    last_cycle_at: Option<std::time::Instant>,
    apply: Option<crate::observe::ApplyLag>,
    failover_ready: Option<bool>,
}

#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// The agent's Consul client, whose request counts are exposed too.
    consul: std::sync::OnceLock<successover_common::consul::Consul>,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    pub fn cycle(&self, coordinator: bool, mysql_up: bool, reached_consul: bool) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.with(|m| {
            let role = if coordinator { "coordinator" } else { "member" };
            *m.cycles.entry(role).or_default() += 1;
            m.coordinator = coordinator;
            m.mysql_up = mysql_up;
            m.reached_consul = reached_consul;
            m.last_cycle = now;
            m.last_cycle_at = Some(std::time::Instant::now());
        });
    }

    /// Ready when a cycle ended within `stale`, reached Consul and read
    /// the local server.
    pub fn readiness(&self, stale: std::time::Duration) -> Result<(), String> {
        self.with(|m| match m.last_cycle_at {
            None => Err("no cycle finished yet".to_owned()),
            Some(at) if at.elapsed() > stale => Err(format!(
                "no cycle finished for {:.1} s",
                at.elapsed().as_secs_f64()
            )),
            Some(_) if !m.reached_consul => Err("the last cycle did not reach Consul".to_owned()),
            Some(_) if !m.mysql_up => Err("the local server did not answer".to_owned()),
            Some(_) => Ok(()),
        })
    }

    pub fn action(&self, action: &'static str, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.with(|m| *m.actions.entry((action, outcome)).or_default() += 1);
    }

    pub fn error(&self, stage: &'static str) {
        self.with(|m| *m.errors.entry(stage).or_default() += 1);
    }

    pub fn self_fence(&self) {
        self.with(|m| m.self_fences += 1);
    }

    pub fn session_lost(&self) {
        self.with(|m| m.sessions_lost += 1);
    }

    /// On the coordinator: whether a failover would find a node to promote
    /// now (the plan); `None` elsewhere.
    pub fn failover_ready(&self, ready: Option<bool>) {
        self.with(|m| m.failover_ready = ready);
    }

    /// The local replica's apply lag this cycle; `None` on a source.
    pub fn apply_lag(&self, lag: Option<&crate::observe::ApplyLag>) {
        self.with(|m| m.apply = lag.copied());
    }

    pub fn report_write(&self) {
        self.with(|m| m.report_writes += 1);
    }

    pub fn set_consul(&self, consul: successover_common::consul::Consul) {
        let _ = self.consul.set(consul);
    }

    pub fn exposition(&self) -> String {
        let consul = self
            .consul
            .get()
            .map(successover_common::telemetry::consul_requests_exposition)
            .unwrap_or_default();
        self.exposition_of_counters() + &consul
    }

    fn exposition_of_counters(&self) -> String {
        self.with(|m| {
            let mut out = String::new();
            let mut line = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} {kind}");
                for (labels, value) in samples {
                    let _ = writeln!(out, "{name}{labels} {value}");
                }
            };
            line(
                "successover_agent_cycles_total",
                "counter",
                "Agent cycles by role.",
                m.cycles
                    .iter()
                    .map(|(r, v)| (format!("{{role=\"{r}\"}}"), v.to_string()))
                    .collect(),
            );
            line(
                "successover_agent_actions_total",
                "counter",
                "Coordinator actions by kind and outcome.",
                m.actions
                    .iter()
                    .map(|((a, o), v)| {
                        (format!("{{action=\"{a}\",outcome=\"{o}\"}}"), v.to_string())
                    })
                    .collect(),
            );
            line(
                "successover_agent_errors_total",
                "counter",
                "Failures by stage.",
                m.errors
                    .iter()
                    .map(|(s, v)| (format!("{{stage=\"{s}\"}}"), v.to_string()))
                    .collect(),
            );
            let plain = |v: u64| vec![(String::new(), v.to_string())];
            line(
                "successover_agent_self_fences_total",
                "counter",
                "Times the local server was made read-only because it is not the published source.",
                plain(m.self_fences),
            );
            line(
                "successover_agent_sessions_lost_total",
                "counter",
                "Consul sessions found gone (coordinator work stopped each time).",
                plain(m.sessions_lost),
            );
            line(
                "successover_agent_report_writes_total",
                "counter",
                "Health report writes to Consul KV.",
                plain(m.report_writes),
            );
            line(
                "successover_agent_coordinator",
                "gauge",
                "1 while this agent holds the cluster's coordinator lock.",
                plain(m.coordinator as u64),
            );
            line(
                "successover_agent_mysql_up",
                "gauge",
                "1 when the local server answered in the last cycle.",
                plain(m.mysql_up as u64),
            );
            // Only a replica has an applier: on a source the families
            // are announced without samples.
            let apply = m.apply.as_ref();
            line(
                "successover_agent_apply_backlog_transactions",
                "gauge",
                "Transactions the local replica received and has not applied.",
                apply.map(|a| plain(a.backlog)).unwrap_or_default(),
            );
            line(
                "successover_agent_applied_transactions_per_second",
                "gauge",
                "Transactions the local replica applied per second over the last 10 s.",
                apply
                    .and_then(|a| a.per_second)
                    .map(plain)
                    .unwrap_or_default(),
            );
            line(
                "successover_agent_expected_apply_seconds",
                "gauge",
                "How long the local replica takes to apply its backlog at that rate: what a failover to it waits.",
                apply
                    .and_then(|a| a.expected)
                    .map(|d| vec![(String::new(), format!("{:.3}", d.as_secs_f64()))])
                    .unwrap_or_default(),
            );
            line(
                "successover_failover_ready",
                "gauge",
                "On the coordinator: 1 when a failover would find a node to promote now (plan/<cluster>), 0 when none would.",
                m.failover_ready
                    .map(|r| plain(r as u64))
                    .unwrap_or_default(),
            );
            line(
                "successover_agent_last_cycle_timestamp_seconds",
                "gauge",
                "When the last cycle finished.",
                vec![(String::new(), format!("{:.3}", m.last_cycle))],
            );
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_each_family() {
        let m = Metrics::default();
        m.cycle(true, true, true);
        m.action("set_read_only", true);
        m.action("publish", false);
        m.error("consul");
        let text = m.exposition();
        assert!(text.contains("successover_agent_cycles_total{role=\"coordinator\"} 1"));
        assert!(text
            .contains("successover_agent_actions_total{action=\"publish\",outcome=\"error\"} 1"));
        assert!(text.contains("successover_agent_coordinator 1"));
        assert!(text.contains("successover_agent_errors_total{stage=\"consul\"} 1"));
        assert!(!text.contains("\nsuccessover_agent_apply_backlog_transactions "));
        let second = std::time::Duration::from_secs(1);
        assert_eq!(m.readiness(second), Ok(()));
        m.cycle(false, false, true);
        assert_eq!(
            m.readiness(second),
            Err("the local server did not answer".into())
        );
        m.cycle(false, true, false);
        assert!(m.readiness(second).unwrap_err().contains("Consul"));
        assert!(m
            .readiness(std::time::Duration::ZERO)
            .unwrap_err()
            .contains("no cycle finished for"));
        assert!(Metrics::default().readiness(second).is_err());
        m.apply_lag(Some(&crate::observe::ApplyLag {
            backlog: 1200,
            per_second: Some(400),
            expected: Some(std::time::Duration::from_secs(3)),
        }));
        let text = m.exposition();
        assert!(text.contains("successover_agent_apply_backlog_transactions 1200"));
        assert!(text.contains("successover_agent_applied_transactions_per_second 400"));
        assert!(text.contains("successover_agent_expected_apply_seconds 3.000"));
    }
}
