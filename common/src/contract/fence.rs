//! `master/<cluster>/failed`: the fence. While the key exists every
//! renderer blackholes the cluster and every agent keeps its server
//! read-only (DESIGN.md rules 3 and 8). Any value fences; this is the shape
//! the coordinator and the CLI write, so that whoever looks next sees why.

use serde::{Deserialize, Serialize};

use super::time::at_ms_or_legacy;
use super::{ClusterName, Keys, ValueError};
use crate::consul::TxnOp;
use crate::procedure::ProcedureKind;

/// JSON in `master/<cluster>/failed`:
///
/// ```json
/// {"reason": "failover 001764000000000-failover", "by": "db2", "at_ms": 1764000000000}
/// ```
///
/// Readers also accept the value as written before the `*_ms` rule, with
/// `"at": <unix seconds>` (see [`super::time`]), and any other text through
/// [`Fence::read`]: `consul kv put mysql/master/c1/failed "disk failing"`
/// fences as well as a JSON value does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "FenceJson")]
pub struct Fence {
    /// Why; a coordinator's fence names its procedure (`failover <id>`).
    pub reason: String,
    /// The agent's node name, or `cli`.
    pub by: String,
    /// When it was written, Unix milliseconds; 0 when the value did not say.
    pub at_ms: u64,
}

/// Every JSON shape a reader accepts.
#[derive(Deserialize)]
struct FenceJson {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    by: String,
    at_ms: Option<u64>,
    at: Option<u64>,
}

impl From<FenceJson> for Fence {
    fn from(j: FenceJson) -> Fence {
        Fence {
            reason: j.reason,
            by: j.by,
            at_ms: at_ms_or_legacy(j.at_ms, j.at).unwrap_or(0),
        }
    }
}

impl Fence {
    pub fn new(reason: impl Into<String>, by: impl Into<String>, at_ms: u64) -> Fence {
        Fence {
            reason: reason.into(),
            by: by.into(),
            at_ms,
        }
    }

    /// The fence a coordinator sets for procedure `id`: the reason names
    /// the procedure, which is how [`Fence::belongs_to`] recognises it.
    pub fn for_procedure(kind: ProcedureKind, id: &str, by: &str, at_ms: u64) -> Fence {
        Fence::new(format!("{} {id}", kind.as_str()), by, at_ms)
    }

    /// A JSON fence value.
    pub fn parse(value: &[u8]) -> Result<Fence, ValueError> {
        serde_json::from_slice(value).map_err(|e| ValueError::Json(e.to_string()))
    }

    /// Any fence value: JSON as [`Fence::parse`] reads it, or else the
    /// whole text, trimmed, as the reason (an operator's `consul kv put`).
    /// Never fails: the key fences whatever its value.
    pub fn read(value: &[u8]) -> Fence {
        Fence::parse(value).unwrap_or_else(|_| Fence {
            reason: String::from_utf8_lossy(value).trim().to_owned(),
            by: String::new(),
            at_ms: 0,
        })
    }

    /// Whether procedure `id` set this fence. A coordinator lifts only its
    /// own fence: one an operator set while the procedure ran stays, since
    /// lifting it would undo their decision.
    pub fn belongs_to(&self, id: &str) -> bool {
        !id.is_empty() && self.reason.contains(id)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a fence serializes: strings and numbers only")
    }
}

impl Keys {
    /// Sets `master/<cluster>/failed`. Rule 3: a failover or switchover
    /// puts it in its first txn, before anything else changes.
    pub fn fence_op(&self, cluster: &ClusterName, fence: &Fence) -> TxnOp {
        TxnOp::set(self.failed_key(cluster), fence.to_json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_shape() {
        let f = Fence::new("patching db1\n", "cli", 1_764_000_000_123);
        assert_eq!(
            f.to_json(),
            r#"{"reason":"patching db1\n","by":"cli","at_ms":1764000000123}"#
        );
        assert_eq!(Fence::parse(f.to_json().as_bytes()).unwrap(), f);
    }

    #[test]
    fn fences_as_written_before_the_ms_rule() {
        // agent/src/failover.rs and switchover.rs: `at` in seconds.
        let f = Fence::parse(
            br#"{"reason":"failover 001764000000000-failover","by":"db2","at":1764000000}"#,
        )
        .unwrap();
        assert_eq!(
            f,
            Fence::new(
                "failover 001764000000000-failover",
                "db2",
                1_764_000_000_000
            )
        );
        assert!(f.belongs_to("001764000000000-failover"));
        assert!(!f.belongs_to("001764000000001-failover"));
        assert!(!f.belongs_to(""));
        // `successover fence`: the same shape.
        let f = Fence::parse(
            br#"{"reason":"fenced by an operator with `successover fence`","by":"cli","at":1700000000}"#,
        )
        .unwrap();
        assert_eq!(f.by, "cli");
        assert_eq!(f.at_ms, 1_700_000_000_000);
    }

    #[test]
    fn any_value_fences() {
        let f = Fence::read(b"db1 disk failing\n");
        assert_eq!(f, Fence::new("db1 disk failing", "", 0));
        assert!(Fence::parse(b"db1 disk failing").is_err());
        assert_eq!(Fence::read(b""), Fence::new("", "", 0));
        assert_eq!(Fence::read(b"{}"), Fence::new("", "", 0));
        // A JSON value that is not an object is text too.
        assert_eq!(Fence::read(b"42").reason, "42");
    }

    #[test]
    fn procedure_fence_and_op() {
        let f = Fence::for_procedure(ProcedureKind::Switchover, "001-switchover", "db3", 7);
        assert_eq!(f.reason, "switchover 001-switchover");
        assert!(f.belongs_to("001-switchover"));
        let c1 = ClusterName::parse("c1").unwrap();
        assert_eq!(
            Keys::default().fence_op(&c1, &f),
            TxnOp::set("mysql/master/c1/failed", f.to_json())
        );
    }
}
