use std::time::Duration;

/// Every error names the request (`op`, e.g. "kv put") and what it was about
/// (`target`, usually the key), so a log line says which key failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    #[error("{op} {target}: cannot reach Consul at {addr}")]
    Unreachable {
        op: &'static str,
        target: String,
        addr: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{op} {target}: no answer from Consul within {timeout:?}")]
    Timeout {
        op: &'static str,
        target: String,
        timeout: Duration,
    },
    #[error("{op} {target}: Consul answered {status}: {body}")]
    Status {
        op: &'static str,
        target: String,
        status: u16,
        body: String,
    },
    #[error("{op} {target}: unexpected response from Consul")]
    Decode {
        op: &'static str,
        target: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A renew answered 404: the session expired or was destroyed, and every
    /// lock it held is gone with it.
    #[error("session {id} no longer exists")]
    SessionGone { id: String },
    #[error("Consul client configuration: {what}")]
    Config {
        what: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl ConsulError {
    pub(crate) fn config(what: impl Into<String>) -> Self {
        ConsulError::Config {
            what: what.into(),
            source: None,
        }
    }

    /// HTTP status of an error answer, if Consul answered at all.
    pub fn status(&self) -> Option<u16> {
        match self {
            ConsulError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Consul's state machine refused the request itself: the same request
    /// gets the same answer until the caller changes it (a new session,
    /// a passing check). Forwarded to the leader, such refusals arrive as
    /// `500 rpc error making call: raft apply failed: invalid session …`,
    /// which looks like a forwarding failure; retrying one for `retry_for`
    /// kept an agent whose session was gone from making a new one for 20 s.
    pub fn is_permanent(&self) -> bool {
        const REFUSALS: [&str; 4] = [
            "invalid session",
            "in critical state",
            "Missing check",
            "Permission denied",
        ];
        matches!(self, ConsulError::Status { body, .. } if REFUSALS.iter().any(|r| body.contains(r)))
    }

    /// True when the request certainly was not applied and can be sent again
    /// unchanged: the connection was never made, Consul has no leader, or it
    /// shed load. A timeout or a reset mid-request is not in this set: the
    /// write may have been committed.
    pub fn is_retryable(&self) -> bool {
        self.is_retryable_when(false)
    }

    /// Like [`ConsulError::is_retryable`]; with `idempotent`, also errors
    /// that leave the outcome unknown (a reset connection, a timeout, a
    /// forwarding RPC cut by a leader change): sending a plain put, a read,
    /// a lock acquire by the same session or a renew twice is harmless.
    pub fn is_retryable_when(&self, idempotent: bool) -> bool {
        if self.is_permanent() {
            return false;
        }
        if idempotent {
            match self {
                ConsulError::Unreachable { .. } | ConsulError::Timeout { .. } => return true,
                ConsulError::Status { status, body, .. }
                    if (*status == 500
                        && (body.contains("rpc error") || body.contains("leadership lost")))
                        || matches!(*status, 502 | 504) =>
                {
                    return true
                }
                _ => {}
            }
        }
        match self {
            ConsulError::Unreachable { source, .. } => source.is_connect(),
            ConsulError::Status { status, body, .. } => {
                *status == 429
                    || *status == 503
                    || (*status == 500 && body.contains("No cluster leader"))
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, body: &str) -> ConsulError {
        ConsulError::Status {
            op: "kv acquire",
            target: "mysql/lock/c1".into(),
            status,
            body: body.into(),
        }
    }

    #[test]
    fn a_refusal_of_the_state_machine_is_not_retried() {
        let gone = status(
            500,
            "rpc error making call: raft apply failed: invalid session \"c586943f\"",
        );
        assert!(gone.is_permanent());
        assert!(!gone.is_retryable_when(true));
        let critical = status(
            500,
            "rpc error making call: Check 'serfHealth' is in critical state",
        );
        assert!(!critical.is_retryable_when(true));
        // A forwarding failure during an election is retried when the
        // request is idempotent.
        let cut = status(500, "rpc error making call: EOF");
        assert!(!cut.is_permanent());
        assert!(cut.is_retryable_when(true));
        assert!(!cut.is_retryable_when(false));
        assert!(status(500, "No cluster leader").is_retryable_when(false));
    }
}
