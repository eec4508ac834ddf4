//! A renderer cut off from Consul keeps routing a cluster only to a source
//! it sees writable itself (DESIGN.md rule 10c).
//!
//! Cut off, the renderer cannot learn of a failover: the coordinator stops
//! waiting for it once its session is gone (a few seconds), and opens the
//! new source. The old source fences itself once it is isolated too, or its
//! agent fences it when it comes back; either way it turns read-only, or it
//! does not answer at all (hung, crashed, cut off). So after
//! [`CUT_OFF_AFTER`] without Consul contact the renderer asks every source it
//! routes to, through a least-privilege account, `SELECT
//! @@global.read_only`; a source that is read-only, refuses or does not
//! answer within the check's timeout goes into maintenance and its sessions
//! are cut. That stays so until Consul answers again (a source can be
//! read-only for a moment and writable again as a new source's replica;
//! only KV says which server is the source), and then the next render
//! brings HAProxy back in line with KV. A Consul outage alone changes
//! nothing: the sources stay writable, and the renderer keeps routing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use successover_common::contract::{HostPort, ProxyServing};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::apply::Haproxy;
use crate::config::SourceCheck;
use crate::presence::{Contact, Served};

/// Without Consul contact for this long, the renderer checks its sources.
pub const CUT_OFF_AFTER: Duration = Duration::from_millis(1500);
/// How often it looks while cut off.
const INTERVAL: Duration = Duration::from_millis(250);
/// At most this many sources checked at once.
const PARALLEL: usize = 32;

/// Clusters the fallback put into maintenance, with why: the engine treats
/// them as fenced until Consul answers again.
#[derive(Clone, Debug, Default)]
pub struct Overrides(Arc<Mutex<BTreeMap<String, String>>>);

impl Overrides {
    pub fn get(&self, cluster: &str) -> Option<String> {
        self.lock().get(cluster).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert(&self, cluster: &str, why: String) {
        self.lock().insert(cluster.to_owned(), why);
    }

    pub fn take_all(&self) -> BTreeMap<String, String> {
        std::mem::take(&mut *self.lock())
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// What a direct look at a source found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Writable,
    ReadOnly,
    Unreachable(String),
}

/// The clusters to check now: routed (not fenced) by HAProxy, with their
/// source, and not already in maintenance by this module.
pub fn to_check(served: &ProxyServing, overrides: &Overrides) -> Vec<(String, HostPort)> {
    served
        .clusters
        .iter()
        .filter(|(_, c)| !c.fenced)
        .filter_map(|(name, c)| Some((name.to_string(), c.source.clone()?)))
        .filter(|(name, _)| overrides.get(name).is_none())
        .collect()
}

async fn look(check: &SourceCheck, source: &HostPort) -> Seen {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(source.host.to_string())
        .tcp_port(source.port)
        .user(Some(check.user.clone()))
        .pass(Some(check.password.expose().to_owned()))
        .prefer_socket(false)
        .wait_timeout(None);
    let attempt = async {
        let mut conn = mysql_async::Conn::new(opts).await?;
        let ro: Option<mysql_async::Value> = conn.query_first("SELECT @@global.read_only").await?;
        let _ = conn.disconnect().await;
        Ok::<_, mysql_async::Error>(ro)
    };
    match tokio::time::timeout(check.timeout, attempt).await {
        Ok(Ok(Some(v))) if read_only_value(&v) => Seen::ReadOnly,
        Ok(Ok(Some(_))) => Seen::Writable,
        Ok(Ok(None)) => Seen::Unreachable("no answer to SELECT @@global.read_only".into()),
        // The server's message names the account, never the password.
        Ok(Err(e)) => Seen::Unreachable(e.to_string()),
        Err(_) => Seen::Unreachable(format!("no answer within {:?}", check.timeout)),
    }
}

/// `@@global.read_only` as the server gives it: 0/1 (MariaDB 10, MySQL),
/// or, where it is an enum (MariaDB 11: OFF, ON, NO_LOCK,
/// NO_LOCK_NO_ADMIN), its name. Anything but off counts as read-only.
pub fn read_only_value(v: &mysql_async::Value) -> bool {
    use mysql_async::Value;
    match v {
        Value::Int(i) => *i != 0,
        Value::UInt(u) => *u != 0,
        Value::Bytes(b) => {
            let s = String::from_utf8_lossy(b);
            let s = s.trim();
            !(s == "0" || s.eq_ignore_ascii_case("off"))
        }
        // NULL or anything else: not a source to trust.
        _ => true,
    }
}

/// Runs until `cancel`. `poke` asks the engine for a render once Consul
/// answers again, so HAProxy follows KV even when KV did not change.
pub async fn run(
    check: Option<SourceCheck>,
    contact: Contact,
    served: watch::Receiver<Served>,
    overrides: Overrides,
    haproxy: Haproxy,
    poke: Arc<Notify>,
    cancel: CancellationToken,
) {
    let Some(check) = check else {
        tracing::warn!("no [source_check] account: if this renderer loses Consul it keeps routing to the last source it knew, even after a failover elsewhere");
        return;
    };
    let mut cut_off = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
        if contact.since() < CUT_OFF_AFTER {
            if cut_off {
                cut_off = false;
                tracing::info!("Consul answers again");
            }
            // The engine lifts the overrides only once it has read every
            // prefix afresh: a render from what the watches held before the
            // cut would route to the old source again.
            if !overrides.is_empty() {
                poke.notify_one();
            }
            continue;
        }
        if !cut_off {
            cut_off = true;
            tracing::warn!(
                since_ms = contact.since().as_millis() as u64,
                "no answer from Consul: checking every routed source directly"
            );
        }
        let Some(record) = served.borrow().clone() else {
            continue;
        };
        let targets = to_check(&record, &overrides);
        let mut seen = Vec::with_capacity(targets.len());
        for chunk in targets.chunks(PARALLEL) {
            let mut looks = tokio::task::JoinSet::new();
            for (cluster, source) in chunk.iter().cloned() {
                let check = check.clone();
                looks.spawn(async move {
                    let s = look(&check, &source).await;
                    (cluster, source, s)
                });
            }
            while let Some(Ok(r)) = looks.join_next().await {
                seen.push(r);
            }
        }
        for (cluster, source, s) in seen {
            let why = match s {
                Seen::Writable => continue,
                Seen::ReadOnly => format!("{source} is read-only"),
                Seen::Unreachable(e) => format!("{source} does not answer: {e}"),
            };
            // Consul may have come back while the looks ran: KV decides then.
            if contact.since() < CUT_OFF_AFTER {
                break;
            }
            overrides.insert(&cluster, why.clone());
            match haproxy.maint_and_cut(&cluster).await {
                Ok(()) => tracing::warn!(
                    cluster,
                    "cut off from Consul and {why}: {cluster} in maintenance, its sessions cut, until Consul answers"
                ),
                Err(e) => tracing::error!(
                    cluster,
                    error = %e,
                    "cut off from Consul and {why}, but HAProxy did not take {cluster} out"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use successover_common::contract::{ClusterName, NodeName, ServedCluster};

    fn record() -> ProxyServing {
        let mut clusters = BTreeMap::new();
        let mut add = |name: &str, source: Option<&str>, fenced: bool| {
            clusters.insert(
                ClusterName::parse(name).unwrap(),
                ServedCluster {
                    source: source.map(|s| HostPort::parse(s).unwrap()),
                    fenced,
                },
            );
        };
        add("a", Some("10.0.0.1:3306"), false);
        add("b", Some("10.0.0.2:3306"), true);
        add("c", None, false);
        add("d", Some("10.0.0.4:3306"), false);
        ProxyServing {
            proxy: NodeName::parse("p1").unwrap(),
            at_ms: 1,
            kv_index: 1,
            clusters,
        }
    }

    #[test]
    fn read_only_in_every_shape_the_servers_give_it() {
        use mysql_async::Value;
        for (v, ro) in [
            (Value::Int(0), false),
            (Value::Int(1), true),
            (Value::UInt(0), false),
            (Value::Bytes(b"0".to_vec()), false),
            (Value::Bytes(b"1".to_vec()), true),
            (Value::Bytes(b"OFF".to_vec()), false),
            (Value::Bytes(b"ON".to_vec()), true),
            (Value::Bytes(b"NO_LOCK".to_vec()), true),
            (Value::Bytes(b"NO_LOCK_NO_ADMIN".to_vec()), true),
            (Value::NULL, true),
        ] {
            assert_eq!(read_only_value(&v), ro, "{v:?}");
        }
    }

    #[test]
    fn only_routed_clusters_not_yet_taken_out_are_checked() {
        let overrides = Overrides::default();
        let names = |v: Vec<(String, HostPort)>| v.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        assert_eq!(names(to_check(&record(), &overrides)), ["a", "d"]);
        overrides.insert("d", "read-only".into());
        assert_eq!(names(to_check(&record(), &overrides)), ["a"]);
        assert_eq!(overrides.take_all().len(), 1);
        assert!(overrides.is_empty());
    }
}
