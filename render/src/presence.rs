//! The renderer's own Consul session and `proxy/<name>`: what this
//! proxy's HAProxy serves, for coordinators to wait on before a new source
//! opens for writes (DESIGN.md rule 6).
//!
//! The session is tied to a TTL check of [`LIVENESS_TTL`] pinged every
//! second, with behaviour `delete`: a renderer that dies, hangs or loses
//! Consul loses its key within seconds, and coordinators stop waiting for
//! it. A renderer cut off from Consul is then on its own: it checks its
//! sources directly ([`crate::fallback`]). Every successful exchange with
//! Consul also renews [`Contact`], the clock the fallback goes by.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use successover_common::consul::{keep_alive, Consul, SessionBehavior, SessionRequest};
use successover_common::contract::{Keys, NodeName, ProxyServing};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long the liveness check stays passing without a ping.
pub const LIVENESS_TTL: Duration = Duration::from_secs(3);
const PING_EVERY: Duration = Duration::from_secs(1);
/// No TTL: the liveness check ends the session, and a session without a
/// TTL costs Consul no renewals.
const SESSION_TTL: Option<Duration> = None;
/// Between two attempts at a session while Consul refuses one.
const RETRY: Duration = Duration::from_secs(1);

/// When this renderer last exchanged anything with Consul.
#[derive(Clone, Debug)]
pub struct Contact(Arc<Mutex<Instant>>);

impl Default for Contact {
    fn default() -> Self {
        Contact(Arc::new(Mutex::new(Instant::now())))
    }
}

impl Contact {
    pub fn touch(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    pub fn since(&self) -> Duration {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).elapsed()
    }
}

/// What the engine last made HAProxy serve, or `None` before the first
/// successful apply (nothing is published before it).
pub type Served = Option<ProxyServing>;

/// Keeps the session and the key until `cancel`, then destroys the session
/// (which deletes the key at once).
pub async fn run(
    consul: Consul,
    keys: Keys,
    name: NodeName,
    contact: Contact,
    mut served: watch::Receiver<Served>,
    cancel: CancellationToken,
) {
    let check = format!("successover-render:{name}");
    let key = keys.proxy_key(&name);
    let mut warned = false;
    while !cancel.is_cancelled() {
        let session = match open(&consul, &name, &check).await {
            Ok(s) => {
                contact.touch();
                warned = false;
                tracing::info!(key, "publishing what this proxy serves");
                s
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "cannot create this renderer's Consul session; coordinators will not wait for this proxy until it has one");
                    warned = true;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => continue,
                }
            }
        };
        let lost = CancellationToken::new();
        let renew = {
            let (consul, session, lost, cancel) = (
                consul.clone(),
                session.clone(),
                lost.clone(),
                cancel.clone(),
            );
            tokio::spawn(async move {
                if let Err(e) = keep_alive(&consul, &session, SESSION_TTL, &cancel).await {
                    tracing::warn!(error = %e, "this renderer's Consul session is gone");
                    lost.cancel();
                }
            })
        };
        // Published at once (a new session has no key yet), then on every
        // change of what HAProxy serves; a failed write is tried again at
        // the next ping.
        let mut pending = true;
        let mut next_ping = Instant::now() + PING_EVERY;
        loop {
            if pending {
                let record = served.borrow_and_update().clone();
                pending = match record {
                    Some(record) => !publish(&consul, &key, &session, &record, &contact).await,
                    None => false,
                };
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = lost.cancelled() => break,
                r = served.changed() => match r {
                    Ok(()) => pending = true,
                    Err(_) => break,
                },
                _ = tokio::time::sleep_until(next_ping) => {
                    next_ping = Instant::now() + PING_EVERY;
                    match consul.check_pass(&check).await {
                        Ok(()) => contact.touch(),
                        Err(e) => tracing::debug!(error = %e, "cannot refresh the renderer liveness check"),
                    }
                }
            }
        }
        renew.abort();
        if cancel.is_cancelled() {
            // Clean stop: the key goes now, not when the check expires.
            match consul.session_destroy(&session).await {
                Ok(()) => tracing::info!(key, "session destroyed, {key} deleted"),
                Err(e) => tracing::warn!(error = %e, "cannot destroy this renderer's session"),
            }
            let _ = consul.check_deregister(&check).await;
            return;
        }
    }
}

async fn open(
    consul: &Consul,
    name: &NodeName,
    check: &str,
) -> Result<String, successover_common::consul::ConsulError> {
    let label = format!("successover-render {name}");
    consul
        .check_register_ttl(check, &label, LIVENESS_TTL)
        .await?;
    // A re-registered check keeps its status: a critical one (the
    // renderer was away longer than the TTL) would refuse the session.
    consul.check_pass(check).await?;
    let mut req = SessionRequest::new(label, SESSION_TTL);
    req.behavior = SessionBehavior::Delete;
    req.lock_delay = Duration::ZERO;
    req.node_checks.push(check.to_owned());
    consul.session_create(&req).await
}

/// Whether the record is in KV.
async fn publish(
    consul: &Consul,
    key: &str,
    session: &str,
    record: &ProxyServing,
    contact: &Contact,
) -> bool {
    match consul
        .kv_acquire(key, record.to_json().into_bytes(), session)
        .await
    {
        Ok(true) => {
            contact.touch();
            tracing::debug!(
                key,
                kv_index = record.kv_index,
                "published what HAProxy serves"
            );
            true
        }
        Ok(false) => {
            // Held by this renderer's previous process (restarted within
            // the session TTL, its session alive on the same check): that
            // process is gone, and its record may name an old source.
            // Anything else is a second renderer with the same name.
            let holder = consul
                .kv_get(key)
                .await
                .ok()
                .flatten()
                .and_then(|kv| kv.session);
            let info = match &holder {
                Some(h) => consul.session_info(h).await.ok().flatten(),
                None => None,
            };
            let own_label = format!("successover-render {}", record.proxy);
            match (holder, info) {
                (Some(old), Some(i)) if i.name == own_label && old != session => {
                    match consul.session_destroy(&old).await {
                        Ok(()) => tracing::info!(
                            key,
                            session = old,
                            "ended the session of this renderer's previous process"
                        ),
                        Err(e) => {
                            tracing::warn!(key, error = %e, "cannot end the previous process's session")
                        }
                    }
                }
                _ => tracing::error!(
                    key,
                    "another session holds this proxy's key: is [render] name unique?"
                ),
            }
            false
        }
        Err(e) => {
            tracing::warn!(key, error = %e, "cannot publish what HAProxy serves; trying again");
            false
        }
    }
}
