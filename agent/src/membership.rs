//! The agent's Consul session and the cluster's coordinator lock.
//!
//! One session per agent holds both the agent's health report (so the
//! report disappears when the agent dies: behavior `delete`) and, when this
//! agent coordinates, the lock key. The session is renewed at a third of
//! its TTL by a background task; when a renewal finds it gone, the
//! `lost` token fires at once so coordinator work in flight stops before it
//! publishes anything (every publish is also guarded by `check-session`).

use std::time::Duration;

use successover_common::consul::{
    keep_alive, Consul, ConsulError, SessionBehavior, SessionRequest,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long the agent's liveness check stays passing without a ping. The
/// session is tied to it, so a dead agent's lock and report go within
/// this long (plus the lock-delay), not after the session TTL.
const LIVENESS_TTL: Duration = Duration::from_secs(3);

pub struct Membership {
    consul: Consul,
    pub session: String,
    check_id: String,
    /// Fires when the session is gone (renewal 404 or a TTL without a
    /// successful renewal). A new session is needed after that.
    pub lost: CancellationToken,
    stop: CancellationToken,
    renewer: JoinHandle<()>,
}

impl Membership {
    pub async fn create(
        consul: &Consul,
        name: String,
        check_id: String,
        ttl: Duration,
        lock_delay: Duration,
    ) -> Result<Membership, ConsulError> {
        consul
            .check_register_ttl(&check_id, &name, LIVENESS_TTL)
            .await?;
        // Re-registering a check keeps its status: after a kill -9 and a
        // restart more than LIVENESS_TTL later it is still critical, and
        // Consul refuses a session tied to it ("Check … is in critical
        // state") on every attempt.
        consul.check_pass(&check_id).await?;
        let mut req = SessionRequest::new(name, ttl);
        req.lock_delay = lock_delay;
        req.behavior = SessionBehavior::Delete;
        req.node_checks.push(check_id.clone());
        let session = consul.session_create(&req).await?;
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let renewer = {
            let (consul, session, lost, stop) =
                (consul.clone(), session.clone(), lost.clone(), stop.clone());
            let check = check_id.clone();
            tokio::spawn(async move {
                // The liveness check is pinged from here, not from the main
                // loop: a long failover step must not cost the lock. A hung
                // main loop is the systemd watchdog's to catch.
                let pinger = {
                    let (consul, stop) = (consul.clone(), stop.clone());
                    async move {
                        loop {
                            if let Err(err) = consul.check_pass(&check).await {
                                tracing::warn!(error = %err, "cannot refresh the agent liveness check");
                            }
                            tokio::select! {
                                _ = stop.cancelled() => return,
                                _ = tokio::time::sleep(LIVENESS_TTL / 3) => {}
                            }
                        }
                    }
                };
                tokio::select! {
                    r = keep_alive(&consul, &session, ttl, &stop) => {
                        if let Err(err) = r {
                            tracing::error!(session, error = %err, "Consul session lost: coordinator work stops");
                            lost.cancel();
                        }
                    }
                    _ = pinger => {}
                }
            })
        };
        Ok(Membership {
            consul: consul.clone(),
            session,
            check_id,
            lost,
            stop,
            renewer,
        })
    }

    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Takes the lock if it is free. `Ok(true)` when this session holds it
    /// afterwards (also when it already did).
    pub async fn try_lock(&self, key: &str, holder: &str) -> Result<bool, ConsulError> {
        if self.is_lost() {
            return Ok(false);
        }
        self.consul.kv_acquire(key, holder, &self.session).await
    }

    pub async fn holds(&self, key: &str) -> Result<bool, ConsulError> {
        if self.is_lost() {
            return Ok(false);
        }
        Ok(self
            .consul
            .kv_get(key)
            .await?
            .and_then(|kv| kv.session)
            .as_deref()
            == Some(self.session.as_str()))
    }

    pub async fn unlock(&self, key: &str) -> Result<bool, ConsulError> {
        self.consul.kv_release(key, "", &self.session).await
    }

    /// Explicit shutdown: stop renewing and destroy the session, which
    /// releases the lock and deletes the health report at once instead of
    /// after the TTL.
    pub async fn destroy(self) -> Result<(), ConsulError> {
        self.stop.cancel();
        let _ = self.renewer.await;
        let destroyed = self.consul.session_destroy(&self.session).await;
        let _ = self.consul.check_deregister(&self.check_id).await;
        destroyed
    }
}
