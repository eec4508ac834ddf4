//! Background monitors: routes through HAProxy, `@@read_only` of every
//! server, and the routing state in KV, sampled over the whole run.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mysql_async::prelude::*;
use successover_common::consul::{Consul, ConsulConfig};
use tokio_util::sync::CancellationToken;

use super::analysis::{KvState, Sample};
use super::world::World;
use super::{KV_INTERVAL, PREFIX, ROUTE_INTERVAL, SAMPLE_INTERVAL};

const NO_TX_INTERVAL: Duration = Duration::from_millis(250);
use crate::mariadb::{APP_PASSWORD, APP_USER};
use crate::writer::unix_ms;

#[derive(Default)]
pub(super) struct MonitorData {
    /// (connection started, server id that answered).
    pub(super) routes: Vec<(u64, u32)>,
    /// Per server (index = server id - 1).
    pub(super) samples: Vec<Vec<Sample>>,
    pub(super) kv: Vec<KvState>,
    /// A writable server switched semi-sync off (`no_times` rose within
    /// one lifetime): it may have acknowledged a commit no replica had
    /// ACKed (rule 1). (unix ms, server, what was read).
    pub(super) no_tx_rises: Vec<(u64, String, String)>,
    /// Commits that ended without an ACK, summed over rises of `no_tx`
    /// (killed waiting commits among them).
    pub(super) no_tx_rises_counted: u64,
    /// How many (server, sample) pairs the no_tx sampler read.
    pub(super) no_tx_samples: u64,
}

pub(super) struct Monitors {
    pub(super) data: Arc<Mutex<MonitorData>>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Monitors {
    pub(super) fn start(w: &World) -> Monitors {
        let data = Arc::new(Mutex::new(MonitorData {
            samples: vec![Vec::new(); w.topo.servers().len()],
            ..MonitorData::default()
        }));
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(route_monitor(
            w.proxy_port.port(),
            data.clone(),
            stop.clone(),
        )));
        for (i, db) in w.topo.servers().iter().enumerate() {
            tasks.push(tokio::spawn(writable_sampler(
                i,
                db.opts(),
                data.clone(),
                stop.clone(),
            )));
            tasks.push(tokio::spawn(no_tx_sampler(
                db.name().to_owned(),
                db.opts(),
                data.clone(),
                stop.clone(),
            )));
        }
        let addrs = w.addrs();
        tasks.push(tokio::spawn(kv_poller(
            w.consul.http_addrs(),
            w.cluster.clone(),
            addrs,
            data.clone(),
            stop.clone(),
        )));
        Monitors { data, stop, tasks }
    }

    pub(super) async fn finish(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn route_monitor(port: u16, data: Arc<Mutex<MonitorData>>, stop: CancellationToken) {
    let opts: mysql_async::Opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some(APP_USER))
        .pass(Some(APP_PASSWORD))
        .prefer_socket(false)
        .into();
    while !stop.is_cancelled() {
        let started = unix_ms();
        let probe = async {
            let mut c = mysql_async::Conn::new(opts.clone()).await.ok()?;
            let id: Option<u32> = c.query_first("SELECT @@server_id").await.ok()?;
            let _ = c.disconnect().await;
            id
        };
        if let Ok(Some(id)) = tokio::time::timeout(Duration::from_millis(500), probe).await {
            data.lock().unwrap().routes.push((started, id));
        }
        tokio::select! {
            _ = tokio::time::sleep(ROUTE_INTERVAL) => {}
            _ = stop.cancelled() => {}
        }
    }
}

async fn writable_sampler(
    index: usize,
    opts: mysql_async::Opts,
    data: Arc<Mutex<MonitorData>>,
    stop: CancellationToken,
) {
    let mut conn: Option<mysql_async::Conn> = None;
    while !stop.is_cancelled() {
        let sent_ms = unix_ms();
        let read = async {
            if conn.is_none() {
                conn = Some(mysql_async::Conn::new(opts.clone()).await.ok()?);
            }
            let c = conn.as_mut()?;
            let ro: Option<u8> = c.query_first("SELECT @@GLOBAL.read_only").await.ok()?;
            ro
        };
        let writable = match tokio::time::timeout(Duration::from_millis(400), read).await {
            Ok(Some(ro)) => Some(ro == 0),
            _ => {
                // Dropping a connection to a hung server must not block.
                if let Some(c) = conn.take() {
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(Duration::from_secs(1), c.disconnect()).await;
                    });
                }
                None
            }
        };
        data.lock().unwrap().samples[index].push(Sample {
            sent_ms,
            recv_ms: unix_ms(),
            writable,
        });
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_INTERVAL) => {}
            _ = stop.cancelled() => {}
        }
    }
}

/// Reads `Rpl_semi_sync_*_no_times`, `…_no_tx`, `Uptime` and
/// `read_only` every [`NO_TX_INTERVAL`]. A writable server that switched
/// semi-sync off (`no_times` rose within one server lifetime, writable at
/// both looks) may have acknowledged commits without an ACK: recorded as
/// a rise. `no_tx` rises are only counted: MariaDB also counts commits
/// killed while they waited, which got no OK.
async fn no_tx_sampler(
    name: String,
    opts: mysql_async::Opts,
    data: Arc<Mutex<MonitorData>>,
    stop: CancellationToken,
) {
    let mut conn: Option<mysql_async::Conn> = None;
    // (uptime, no_times, no_tx, writable)
    let mut last: Option<(u64, u64, u64, bool)> = None;
    while !stop.is_cancelled() {
        let read = async {
            if conn.is_none() {
                conn = Some(mysql_async::Conn::new(opts.clone()).await.ok()?);
            }
            let c = conn.as_mut()?;
            let rows: Vec<(String, String)> = c
                .query(
                    "SHOW GLOBAL STATUS WHERE Variable_name IN ('Uptime', \
                     'Rpl_semi_sync_master_no_times', 'Rpl_semi_sync_source_no_times', \
                     'Rpl_semi_sync_master_no_tx', 'Rpl_semi_sync_source_no_tx')",
                )
                .await
                .ok()?;
            let ro: Option<u8> = c.query_first("SELECT @@GLOBAL.read_only").await.ok()?;
            let get = |suffix: &str| -> Option<u64> {
                rows.iter()
                    .find(|(k, _)| k.to_ascii_lowercase().ends_with(suffix))
                    .and_then(|(_, v)| v.parse().ok())
            };
            Some((get("uptime")?, get("_no_times")?, get("_no_tx")?, ro? == 0))
        };
        match tokio::time::timeout(Duration::from_millis(400), read).await {
            Ok(Some(now)) => {
                let (uptime, no_times, no_tx, writable) = now;
                let mut d = data.lock().unwrap();
                d.no_tx_samples += 1;
                if let Some((up0, times0, tx0, writable0)) = last {
                    if uptime >= up0 {
                        if no_tx > tx0 {
                            d.no_tx_rises_counted += no_tx - tx0;
                        }
                        if no_times > times0 && writable && writable0 {
                            d.no_tx_rises.push((
                                unix_ms(),
                                name.clone(),
                                format!(
                                    "writable, semi-sync switched off {times0} -> {no_times} times, no_tx {tx0} -> {no_tx} (uptime {up0} -> {uptime} s)"
                                ),
                            ));
                        }
                    }
                }
                last = Some(now);
            }
            _ => {
                // Unseen for a while (a fence kills every connection, this
                // one too): the next look starts afresh, as "writable at
                // both looks" no longer says writable in between.
                last = None;
                if let Some(c) = conn.take() {
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(Duration::from_secs(1), c.disconnect()).await;
                    });
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(NO_TX_INTERVAL) => {}
            _ = stop.cancelled() => {}
        }
    }
}

/// A Consul client that fails fast: the monitors move on to the next
/// server instead of waiting for a dead one.
fn quick_client(addr: &str) -> Consul {
    let mut cfg = ConsulConfig::new(addr);
    cfg.request_timeout = Duration::from_secs(1);
    cfg.retry_for = Duration::ZERO;
    Consul::new(cfg).expect("consul client")
}

async fn kv_poller(
    servers: Vec<String>,
    cluster: String,
    addrs: Vec<(String, String)>,
    data: Arc<Mutex<MonitorData>>,
    stop: CancellationToken,
) {
    let clients: Vec<Consul> = servers.iter().map(|a| quick_client(a)).collect();
    let master = format!("{PREFIX}master/{cluster}");
    let quarantine = format!("{PREFIX}quarantine/{cluster}/");
    let mut current = 0;
    let mut last_ok = 0u64;
    while !stop.is_cancelled() {
        let mut state = None;
        for k in 0..clients.len() {
            let c = &clients[(current + k) % clients.len()];
            let read = async {
                let m = c.kv_get_recurse(&master).await.ok()?;
                let q = c.kv_get_recurse(&quarantine).await.ok()?;
                Some((m, q))
            };
            if let Ok(Some((m, q))) = tokio::time::timeout(Duration::from_secs(2), read).await {
                current = (current + k) % clients.len();
                state = Some((m, q));
                break;
            }
        }
        let now = unix_ms();
        if let Some((m, q)) = state {
            let published = m
                .iter()
                .find(|kv| kv.key == master)
                .and_then(|kv| kv.value_str())
                .and_then(|v| addrs.iter().find(|(a, _)| a == v.trim()))
                .map(|(_, n)| n.clone());
            let fenced = m.iter().any(|kv| kv.key == format!("{master}/failed"));
            let quarantined = q
                .iter()
                .filter_map(|kv| kv.key.strip_prefix(&quarantine).map(str::to_owned))
                .collect();
            let mut d = data.lock().unwrap();
            let changed = d.kv.last().is_none_or(|l| {
                l.published != published || l.fenced != fenced || l.quarantined != quarantined
            });
            if changed {
                d.kv.push(KvState {
                    seen_ms: now,
                    prev_poll_ms: last_ok,
                    published,
                    fenced,
                    quarantined,
                });
            }
            last_ok = now;
        }
        tokio::select! {
            _ = tokio::time::sleep(KV_INTERVAL) => {}
            _ = stop.cancelled() => {}
        }
    }
}
