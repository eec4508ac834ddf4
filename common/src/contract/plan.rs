//! `plan/<cluster>`: the failover plan the coordinator keeps, what a
//! failover would do if the published source died now. Written only when
//! what it says changes (ready or not, the candidate, the source), so it
//! costs Consul nothing at steady state; `at_ms` says when it was last
//! written, and `successover plan` shows it.

use serde::{Deserialize, Serialize};

use super::ValueError;

/// JSON in `plan/<cluster>`:
///
/// ```json
/// {"ready": true, "source": "db1", "candidate": "db2",
///  "reason": "db2 was the semi-sync replica and received everything any replica did (0-1-42)",
///  "coordinator": "c1/db3", "at_ms": 1764000000000}
/// ```
///
/// Not ready: `"candidate": null` and `reason` says why no node qualifies
/// (or why no failover would run at all: `auto_failover` off, the
/// cooldown, maintenance).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverPlan {
    pub ready: bool,
    pub source: Option<String>,
    pub candidate: Option<String>,
    pub reason: String,
    /// `<cluster>/<node>` of the coordinator that wrote it.
    pub coordinator: String,
    pub at_ms: u64,
}

impl FailoverPlan {
    pub fn parse(value: &[u8]) -> Result<FailoverPlan, ValueError> {
        serde_json::from_slice(value).map_err(|e| ValueError::Json(e.to_string()))
    }

    /// Whether `other` says something else: the reason's figures (GTID
    /// positions, seconds) move all the time and are not worth a write.
    pub fn differs_materially(&self, other: &FailoverPlan) -> bool {
        let words = |s: &str| -> String {
            s.split(|c: char| c.is_whitespace() || c == ',')
                .filter(|w| !w.chars().any(|c| c.is_ascii_digit()))
                .collect::<Vec<_>>()
                .join(" ")
        };
        (self.ready, &self.source, &self.candidate, &self.coordinator)
            != (
                other.ready,
                &other.source,
                &other.candidate,
                &other.coordinator,
            )
            || words(&self.reason) != words(&other.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_reads_back_and_changes_only_in_its_words() {
        let p = FailoverPlan {
            ready: true,
            source: Some("db1".into()),
            candidate: Some("db2".into()),
            reason:
                "db2 was the semi-sync replica and received everything any replica did (0-1-42)"
                    .into(),
            coordinator: "c1/db3".into(),
            at_ms: 1,
        };
        let text = serde_json::to_vec(&p).unwrap();
        assert_eq!(FailoverPlan::parse(&text).unwrap(), p);
        assert!(FailoverPlan::parse(b"{").is_err());
        let mut later = p.clone();
        later.at_ms = 99;
        later.reason = later.reason.replace("0-1-42", "0-1-4242");
        assert!(!p.differs_materially(&later));
        let mut other = p.clone();
        other.candidate = Some("db3".into());
        assert!(p.differs_materially(&other));
        let mut refused = p.clone();
        refused.ready = false;
        refused.candidate = None;
        refused.reason = "auto_failover is off for this cluster".into();
        assert!(p.differs_materially(&refused));
    }
}
