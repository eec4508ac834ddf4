//! The agent's Consul session and the cluster's coordinator lock.
//!
//! One session per agent holds both the agent's health report (so the
//! report disappears when the agent dies: behavior `delete`) and, when this
//! agent coordinates, the lock key. The session is renewed at half its
//! TTL by a background task; when a renewal finds it gone, the
//! `lost` token fires at once so coordinator work in flight stops before it
//! publishes anything (every publish is also guarded by `check-session`).

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument as _;

use successover_common::consul::{
    keep_alive, Consul, ConsulError, SessionBehavior, SessionRequest,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long the agent's liveness check stays passing without a ping. The
/// session is tied to it, so a dead agent's lock and report go within
/// this long (plus the lock-delay), not after the session TTL.
const LIVENESS_TTL: Duration = Duration::from_secs(3);

/// How long before Consul could invalidate the session the local lease
/// ends: request and clock slack between this process and the Consul agent.
const LEASE_MARGIN: Duration = Duration::from_millis(500);

/// The coordinator's local lease: until when this process may act on the
/// lock without asking Consul. Consul invalidates the session once the
/// liveness check goes [`LIVENESS_TTL`] without a pass, counted from when
/// the pass reached it; the lease counts from when the pass was *sent*, on
/// this process's monotonic clock, and ends [`LEASE_MARGIN`] earlier. A
/// coordinator paused (SIGSTOP, a stalled VM) past its lease touches
/// nothing more when it wakes, even before it learns the session is gone.
#[derive(Clone, Debug, Default)]
pub struct Lease(Arc<Mutex<Option<std::time::Instant>>>);

impl Lease {
    /// A pass sent at `sent` was accepted.
    pub fn renewed(&self, sent: std::time::Instant) {
        let until = sent + LIVENESS_TTL.saturating_sub(LEASE_MARGIN);
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none_or(|u| u < until) {
            *g = Some(until);
        }
    }

    pub fn valid_at(&self, now: std::time::Instant) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|u| now < u)
    }
}

/// See [`Membership::guard`].
pub struct LockGuard {
    pub session: String,
    pub token: CancellationToken,
    task: JoinHandle<()>,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct Membership {
    consul: Consul,
    pub session: String,
    pub lease: Lease,
    check_id: String,
    /// Fires when the session is gone (renewal 404 or a TTL without a
    /// successful renewal). A new session is needed after that.
    pub lost: CancellationToken,
    stop: CancellationToken,
    renewer: JoinHandle<()>,
}

impl Membership {
    /// `lease`: renewed by every liveness pass Consul accepts. The agent
    /// keeps one across its sessions (the check is the same), so that its
    /// isolation watchdog ([`crate::isolation`]) sees one clock.
    pub async fn create(
        consul: &Consul,
        name: String,
        check_id: String,
        ttl: Option<Duration>,
        lock_delay: Duration,
        lease: Lease,
    ) -> Result<Membership, ConsulError> {
        consul
            .check_register_ttl(&check_id, &name, LIVENESS_TTL)
            .await?;
        // Re-registering a check keeps its status: after a kill -9 and a
        // restart more than LIVENESS_TTL later it is still critical, and
        // Consul refuses a session tied to it ("Check … is in critical
        // state") on every attempt.
        let sent = std::time::Instant::now();
        consul.check_pass(&check_id).await?;
        lease.renewed(sent);
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
            let lease = lease.clone();
            tokio::spawn(async move {
                // The liveness check is pinged from here, not from the main
                // loop: a long failover step must not cost the lock. A hung
                // main loop is the systemd watchdog's to catch.
                let pinger = {
                    let (consul, stop) = (consul.clone(), stop.clone());
                    async move {
                        loop {
                            let sent = std::time::Instant::now();
                            match consul.check_pass(&check).await {
                                Ok(()) => lease.renewed(sent),
                                Err(err) => tracing::warn!(error = %err, "cannot refresh the agent liveness check"),
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
            }.in_current_span())
        };
        Ok(Membership {
            consul: consul.clone(),
            session,
            lease,
            check_id,
            lost,
            stop,
            renewer,
        })
    }

    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Whether the lock may be acted on now: the session is not known lost
    /// and the local lease has not run out.
    pub fn may_act(&self) -> bool {
        !self.is_lost() && self.lease.valid_at(std::time::Instant::now())
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

    /// A token that fires when this session stops holding `key`: the
    /// session is lost, or the key was deleted or taken by hand. A
    /// coordinator acts under it, so a lock deleted in the middle of a
    /// procedure stops this coordinator's next step instead of leaving two
    /// coordinators at work until its next KV write fails.
    pub fn guard(&self, key: &str) -> LockGuard {
        let token = self.lost.child_token();
        let task = {
            let (consul, key, session, token) = (
                self.consul.clone(),
                key.to_owned(),
                self.session.clone(),
                token.clone(),
            );
            tokio::spawn(
                async move {
                    let mut watch = successover_common::consul::Watch::prefix(consul, key.clone())
                        .with_wait(Duration::from_secs(30));
                    loop {
                        let pairs = tokio::select! {
                            _ = token.cancelled() => return,
                            r = watch.next() => r,
                        };
                        // Consul unreachable: the lease covers that case.
                        let Ok(pairs) = pairs else { continue };
                        let held = pairs.iter().any(|p| {
                            p.key == key && p.session.as_deref() == Some(session.as_str())
                        });
                        if !held {
                            tracing::warn!(
                                lock = key,
                                "the coordinator lock is no longer this agent's: stopping its work"
                            );
                            token.cancel();
                            return;
                        }
                    }
                }
                .in_current_span(),
            )
        };
        LockGuard {
            session: self.session.clone(),
            token,
            task,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_counts_from_when_the_pass_was_sent() {
        let lease = Lease::default();
        let t0 = std::time::Instant::now();
        assert!(!lease.valid_at(t0), "no pass yet");
        lease.renewed(t0);
        let end = t0 + LIVENESS_TTL - LEASE_MARGIN;
        assert!(lease.valid_at(end - Duration::from_millis(1)));
        assert!(
            !lease.valid_at(end),
            "a paused coordinator wakes without a lease"
        );
        // An older pass accepted late does not shorten it.
        lease.renewed(t0 - Duration::from_secs(1));
        assert!(lease.valid_at(end - Duration::from_millis(1)));
        lease.renewed(t0 + Duration::from_secs(1));
        assert!(lease.valid_at(end));
    }
}
