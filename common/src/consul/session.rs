use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{decode, expect_ok, Consul, ConsulError};

/// What happens to keys a session holds when it is invalidated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionBehavior {
    /// Locks are released; the keys stay.
    Release,
    /// Held keys are deleted: right for health reports that must vanish
    /// with their agent.
    Delete,
}

/// Body of `PUT /v1/session/create`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionRequest {
    pub name: String,
    /// `None`: no TTL, the session lives until one of its checks fails or
    /// it is destroyed, and costs Consul nothing while it does.
    #[serde(
        rename = "TTL",
        serialize_with = "as_go_duration_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    #[serde(serialize_with = "as_go_duration")]
    pub lock_delay: Duration,
    pub behavior: SessionBehavior,
    /// Node health checks the session is tied to. Consul's default is
    /// `["serfHealth"]`; an empty list ties the session to its TTL only.
    pub node_checks: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl SessionRequest {
    pub fn new(name: impl Into<String>, ttl: Option<Duration>) -> Self {
        SessionRequest {
            name: name.into(),
            ttl,
            lock_delay: Duration::from_secs(1),
            behavior: SessionBehavior::Release,
            node_checks: vec!["serfHealth".to_owned()],
            node: None,
        }
    }
}

fn as_go_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}

fn as_go_duration_opt<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => as_go_duration(d, s),
        None => s.serialize_none(),
    }
}

/// `GET /v1/session/info/<id>`, the fields callers use.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionInfo {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub node: String,
    #[serde(rename = "TTL")]
    pub ttl: String,
    pub behavior: SessionBehavior,
}

#[derive(Deserialize)]
struct Created {
    #[serde(rename = "ID")]
    id: String,
}

impl Consul {
    /// Creates a session and returns its id.
    pub async fn session_create(&self, req: &SessionRequest) -> Result<String, ConsulError> {
        const OP: &str = "session create";
        let body = serde_json::to_vec(req).map_err(|e| ConsulError::Decode {
            op: OP,
            target: req.name.clone(),
            source: Box::new(e),
        })?;
        let reply = self
            .call(
                OP,
                &req.name,
                Method::PUT,
                "/v1/session/create",
                &[],
                Some(body),
                None,
            )
            .await?;
        let reply = expect_ok(OP, &req.name, reply)?;
        let created: Created = decode(OP, &req.name, &reply.body)?;
        Ok(created.id)
    }

    /// Renews a session's TTL. A 404 means the session is gone (expired or
    /// destroyed), and with it every lock it held: returned as
    /// [`ConsulError::SessionGone`] so callers stop acting as lock holders.
    pub async fn session_renew(&self, id: &str) -> Result<(), ConsulError> {
        const OP: &str = "session renew";
        let reply = self
            .call(
                OP,
                id,
                Method::PUT,
                &format!("/v1/session/renew/{id}"),
                &[],
                None,
                None,
            )
            .await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Err(ConsulError::SessionGone { id: id.to_owned() });
        }
        let reply = expect_ok(OP, id, reply)?;
        // Older Consul versions answer 200 with `null` for a gone session.
        let infos: Option<Vec<serde_json::Value>> = decode(OP, id, &reply.body)?;
        match infos {
            Some(v) if !v.is_empty() => Ok(()),
            _ => Err(ConsulError::SessionGone { id: id.to_owned() }),
        }
    }

    pub async fn session_destroy(&self, id: &str) -> Result<(), ConsulError> {
        const OP: &str = "session destroy";
        let reply = self
            .call(
                OP,
                id,
                Method::PUT,
                &format!("/v1/session/destroy/{id}"),
                &[],
                None,
                None,
            )
            .await?;
        expect_ok(OP, id, reply).map(|_| ())
    }

    /// The sessions of Consul node `node` (a host's sessions, a short list).
    pub async fn session_list_node(&self, node: &str) -> Result<Vec<SessionInfo>, ConsulError> {
        const OP: &str = "session list node";
        let reply = self
            .call(
                OP,
                node,
                Method::GET,
                &format!("/v1/session/node/{node}"),
                &[],
                None,
                None,
            )
            .await?;
        let reply = expect_ok(OP, node, reply)?;
        let infos: Option<Vec<SessionInfo>> = decode(OP, node, &reply.body)?;
        Ok(infos.unwrap_or_default())
    }

    /// `None` when the session does not exist.
    pub async fn session_info(&self, id: &str) -> Result<Option<SessionInfo>, ConsulError> {
        Ok(self.session_info_blocking(id, 0, None).await?.1)
    }

    /// [`Self::session_info`] as a blocking query: with `index > 0` Consul
    /// holds the request until the session table changes past `index` or
    /// `wait` passes. Returns the new index with the answer.
    pub async fn session_info_blocking(
        &self,
        id: &str,
        index: u64,
        wait: Option<Duration>,
    ) -> Result<(u64, Option<SessionInfo>), ConsulError> {
        const OP: &str = "session info";
        let mut query = Vec::new();
        let timeout = self.blocking(&mut query, index, wait);
        let reply = self
            .call(
                OP,
                id,
                Method::GET,
                &format!("/v1/session/info/{id}"),
                &query,
                None,
                timeout,
            )
            .await?;
        let reply = expect_ok(OP, id, reply)?;
        let index = reply.index.unwrap_or(0);
        let infos: Option<Vec<SessionInfo>> = decode(OP, id, &reply.body)?;
        Ok((index, infos.and_then(|v| v.into_iter().next())))
    }
}

/// Keeps `session` until `cancel` fires (returns `Ok`) or the session is
/// lost (returns the error).
///
/// With a TTL it is renewed every `ttl / 2`; a renewal that fails for a
/// transient reason is retried quickly, and the session is declared lost
/// only on a 404 or once a full TTL has passed without a successful
/// renewal, since by then Consul has invalidated it anyway.
///
/// Without one there is nothing to renew: Consul ends the session when a
/// check it is tied to fails. A blocking read of the session (held up to
/// [`SESSION_WATCH_HOLD`]) notices that at once, for about one request per
/// hold while nothing changes. Errors are retried with backoff and never
/// count as a loss: what the holder may do meanwhile is bounded by its
/// own lease, not by this.
pub async fn keep_alive(
    consul: &Consul,
    session: &str,
    ttl: Option<Duration>,
    cancel: &CancellationToken,
) -> Result<(), ConsulError> {
    let Some(ttl) = ttl else {
        return watch_session(consul, session, cancel).await;
    };
    // Consul invalidates a session no sooner than its TTL after the last
    // renewal (in practice twice that); a failed renewal is retried within
    // half a second, so half the TTL leaves room for several attempts.
    let interval = ttl / 2;
    let mut last_ok = tokio::time::Instant::now();
    let mut delay = interval;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
        match consul.session_renew(session).await {
            Ok(()) => {
                last_ok = tokio::time::Instant::now();
                delay = interval;
            }
            Err(err @ ConsulError::SessionGone { .. }) => return Err(err),
            Err(err) if last_ok.elapsed() >= ttl => return Err(err),
            Err(err) => {
                tracing::warn!(session, error = %err, "session renewal failed; retrying");
                delay = Duration::from_millis(500).min(interval);
            }
        }
    }
}

/// How long one blocking read of a session without a TTL is held.
pub const SESSION_WATCH_HOLD: Duration = Duration::from_secs(600);

async fn watch_session(
    consul: &Consul,
    session: &str,
    cancel: &CancellationToken,
) -> Result<(), ConsulError> {
    let mut index = 0u64;
    let mut failures = 0u32;
    loop {
        let answer = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            a = consul.session_info_blocking(session, super::next_index(0, index), Some(SESSION_WATCH_HOLD)) => a,
        };
        match answer {
            Ok((_, None)) => {
                return Err(ConsulError::SessionGone {
                    id: session.to_owned(),
                })
            }
            Ok((returned, Some(_))) => {
                failures = 0;
                index = returned;
            }
            Err(err) => {
                tracing::debug!(session, error = %err, "session watch failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(super::backoff_delay(failures)) => {}
                }
                failures = failures.saturating_add(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_serializes_as_consul_expects() {
        let mut req = SessionRequest::new("agent db1", Some(Duration::from_secs(10)));
        req.behavior = SessionBehavior::Delete;
        req.node_checks.clear();
        let json: serde_json::Value = serde_json::to_value(&req).unwrap();
        assert_eq!(json["Name"], "agent db1");
        assert_eq!(json["TTL"], "10000ms");
        assert_eq!(json["LockDelay"], "1000ms");
        assert_eq!(json["Behavior"], "delete");
        assert_eq!(json["NodeChecks"], serde_json::json!([]));
        assert!(json.get("Node").is_none());
        let req = SessionRequest::new("agent db1", None);
        let json: serde_json::Value = serde_json::to_value(&req).unwrap();
        assert!(json.get("TTL").is_none(), "{json}");
        assert_eq!(json["NodeChecks"], serde_json::json!(["serfHealth"]));
    }
}
