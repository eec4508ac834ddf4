use base64::Engine;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::kv::KvPair;
use super::{decode, status_error, Consul, ConsulError};

/// One KV operation of a `/v1/txn`. Consul applies all or none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    Set {
        key: String,
        value: Vec<u8>,
    },
    /// Set only if the modify index is still `index` (0: key must not exist).
    Cas {
        key: String,
        value: Vec<u8>,
        index: u64,
    },
    Get {
        key: String,
    },
    /// Every key under a prefix (none is no error, unlike `Get`).
    GetTree {
        prefix: String,
    },
    Delete {
        key: String,
    },
    DeleteTree {
        prefix: String,
    },
    DeleteCas {
        key: String,
        index: u64,
    },
    /// Aborts the transaction unless `session` holds the lock on `key`: how
    /// a coordinator makes sure it still owns the cluster while it writes.
    CheckSession {
        key: String,
        session: String,
    },
    /// Aborts unless `key` exists with modify index `index`.
    CheckIndex {
        key: String,
        index: u64,
    },
    /// Aborts if `key` exists.
    CheckNotExists {
        key: String,
    },
    /// Sets `key` and takes its lock for `session` in the same step.
    Lock {
        key: String,
        value: Vec<u8>,
        session: String,
    },
    Unlock {
        key: String,
        value: Vec<u8>,
        session: String,
    },
}

impl TxnOp {
    pub fn set(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        TxnOp::Set {
            key: key.into(),
            value: value.into(),
        }
    }

    pub fn delete(key: impl Into<String>) -> Self {
        TxnOp::Delete { key: key.into() }
    }

    pub fn check_session(key: impl Into<String>, session: impl Into<String>) -> Self {
        TxnOp::CheckSession {
            key: key.into(),
            session: session.into(),
        }
    }

    fn key(&self) -> &str {
        match self {
            TxnOp::Set { key, .. }
            | TxnOp::Cas { key, .. }
            | TxnOp::Get { key }
            | TxnOp::Delete { key }
            | TxnOp::DeleteCas { key, .. }
            | TxnOp::CheckSession { key, .. }
            | TxnOp::CheckIndex { key, .. }
            | TxnOp::CheckNotExists { key }
            | TxnOp::Lock { key, .. }
            | TxnOp::Unlock { key, .. } => key,
            TxnOp::DeleteTree { prefix } | TxnOp::GetTree { prefix } => prefix,
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
        let kv = match self {
            TxnOp::Set { key, value } => json!({"Verb": "set", "Key": key, "Value": b64(value)}),
            TxnOp::Cas { key, value, index } => {
                json!({"Verb": "cas", "Key": key, "Value": b64(value), "Index": index})
            }
            TxnOp::Get { key } => json!({"Verb": "get", "Key": key}),
            TxnOp::GetTree { prefix } => json!({"Verb": "get-tree", "Key": prefix}),
            TxnOp::Delete { key } => json!({"Verb": "delete", "Key": key}),
            TxnOp::DeleteTree { prefix } => json!({"Verb": "delete-tree", "Key": prefix}),
            TxnOp::DeleteCas { key, index } => {
                json!({"Verb": "delete-cas", "Key": key, "Index": index})
            }
            TxnOp::CheckSession { key, session } => {
                json!({"Verb": "check-session", "Key": key, "Session": session})
            }
            TxnOp::CheckIndex { key, index } => {
                json!({"Verb": "check-index", "Key": key, "Index": index})
            }
            TxnOp::CheckNotExists { key } => json!({"Verb": "check-not-exists", "Key": key}),
            TxnOp::Lock {
                key,
                value,
                session,
            } => json!({"Verb": "lock", "Key": key, "Value": b64(value), "Session": session}),
            TxnOp::Unlock {
                key,
                value,
                session,
            } => json!({"Verb": "unlock", "Key": key, "Value": b64(value), "Session": session}),
        };
        json!({ "KV": kv })
    }
}

/// Why a transaction was rolled back: which operation and Consul's reason.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TxnError {
    pub op_index: usize,
    pub what: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every operation applied; `Get`/`Set` results in order.
    Committed(Vec<KvPair>),
    /// Nothing applied.
    RolledBack(Vec<TxnError>),
}

impl TxnOutcome {
    pub fn is_committed(&self) -> bool {
        matches!(self, TxnOutcome::Committed(_))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawTxnReply {
    #[serde(default)]
    results: Option<Vec<RawResult>>,
    #[serde(default)]
    errors: Option<Vec<TxnError>>,
}

#[derive(Deserialize)]
struct RawResult {
    #[serde(rename = "KV")]
    kv: Option<serde_json::Value>,
}

impl Consul {
    /// Several prefixes in one request (`get-tree` ops only): what a
    /// blocking query cannot watch cheaply. Consul answers a blocking read
    /// of an empty prefix with the whole KV store's index, so such a watch
    /// returns on every write anywhere in the datacenter.
    pub async fn kv_read_trees(&self, prefixes: &[String]) -> Result<Vec<KvPair>, ConsulError> {
        let ops: Vec<TxnOp> = prefixes
            .iter()
            .map(|p| TxnOp::GetTree { prefix: p.clone() })
            .collect();
        match self.txn_as("txn read", &ops).await? {
            TxnOutcome::Committed(pairs) => Ok(pairs),
            TxnOutcome::RolledBack(errors) => Err(ConsulError::Decode {
                op: "txn read",
                target: prefixes.join(","),
                source: format!("read-only transaction rolled back: {errors:?}").into(),
            }),
        }
    }

    /// Applies `ops` atomically. A rollback (HTTP 409) is an `Ok` outcome,
    /// not an error: a failed `check-session` is an expected answer.
    pub async fn txn(&self, ops: &[TxnOp]) -> Result<TxnOutcome, ConsulError> {
        self.txn_as("txn", ops).await
    }

    /// `op` names the request in errors and counts ("txn read" is no
    /// write: the KV write hook is not told).
    async fn txn_as(&self, op: &'static str, ops: &[TxnOp]) -> Result<TxnOutcome, ConsulError> {
        #[allow(non_snake_case)]
        let OP = op;
        let target = ops.iter().map(TxnOp::key).collect::<Vec<_>>().join(",");
        let body = serde_json::to_vec(&ops.iter().map(TxnOp::to_json).collect::<Vec<_>>())
            .map_err(|e| ConsulError::Decode {
                op: OP,
                target: target.clone(),
                source: Box::new(e),
            })?;
        let reply = self
            .call(OP, &target, Method::PUT, "/v1/txn", &[], Some(body), None)
            .await?;
        match reply.status {
            StatusCode::OK | StatusCode::CONFLICT => {}
            _ => return Err(status_error(OP, &target, &reply)),
        }
        let raw: RawTxnReply = decode(OP, &target, &reply.body)?;
        if reply.status == StatusCode::CONFLICT
            || raw.errors.as_ref().is_some_and(|e| !e.is_empty())
        {
            return Ok(TxnOutcome::RolledBack(raw.errors.unwrap_or_default()));
        }
        let mut pairs = Vec::new();
        for result in raw.results.unwrap_or_default() {
            if let Some(kv) = result.kv {
                let body = serde_json::to_vec(&[kv]).unwrap_or_default();
                pairs.extend(super::kv::decode_pairs(OP, &target, &body)?);
            }
        }
        Ok(TxnOutcome::Committed(pairs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_serialize_with_base64_values() {
        let op = TxnOp::set("mysql/master/c1", "db2:3306");
        assert_eq!(
            op.to_json(),
            json!({"KV": {"Verb": "set", "Key": "mysql/master/c1", "Value": "ZGIyOjMzMDY="}})
        );
        let op = TxnOp::check_session("mysql/lock/c1", "sess");
        assert_eq!(
            op.to_json(),
            json!({"KV": {"Verb": "check-session", "Key": "mysql/lock/c1", "Session": "sess"}})
        );
    }
}
