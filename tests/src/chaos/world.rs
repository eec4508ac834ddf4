//! The system under test: three database hosts (of the flavour
//! `SUCCESSOVER_FLAVOUR` picks), a three-server Consul,
//! HAProxy driven by `successover-render`, an agent per host; how each is
//! started and configured, and what the runner asks of it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mysql_async::prelude::*;
use successover_common::consul::{Consul, ConsulConfig};

use super::options::ChaosOptions;
use super::say::Say;
use super::{PREFIX, WRITES_STALLED};
use crate::agent::{AgentOptions, AgentProc};
use crate::consul::ConsulCluster;
use crate::haproxy::HaProxy;
use crate::mariadb::{MariaDbOptions, Topology, APP_PASSWORD, APP_USER};
use crate::netns::NetHost;
use crate::process::{Proc, Scratch};
use crate::writer::{self, unix_ms};
use crate::{bins, reserve_port, PortLease};

/// Which Consul server the renderer talks to; agent `i` talks to server `i`.
pub(super) const RENDER_CONSUL: usize = 1;

pub(super) struct World {
    pub(super) cluster: String,
    pub(super) agents: Vec<AgentProc>,
    pub(super) agent_opts: Vec<AgentOptions>,
    pub(super) renderer: Proc,
    pub(super) render_config: PathBuf,
    pub(super) render_log: PathBuf,
    pub(super) haproxy: HaProxy,
    pub(super) proxy_port: PortLease,
    pub(super) topo: Topology,
    pub(super) consul: ConsulCluster,
    /// Consul client per server (defaults: 5 s timeout, retried while there
    /// is no leader).
    pub(super) clients: Vec<Consul>,
    _forwards: Vec<crate::Relay>,
    /// Between the renderer and its Consul server.
    pub(super) render_relay: crate::Relay,
    /// Each server is advertised through its own relay (on its host's
    /// root-side address): the `hide` fault stops one, and the server
    /// drops out of every agent's sight (the coordinator's among them)
    /// while its replication, which the relays of the others carry, goes
    /// on.
    pub(super) relays: Vec<crate::Relay>,
    // Dropped after the processes that live in them.
    pub(super) hosts: Vec<NetHost>,
    _dir: Scratch,
}

impl World {
    pub(super) async fn start(opts: &ChaosOptions, say: &Say) -> World {
        let n = 3;
        let mut hosts = Vec::new();
        if opts.netns {
            for i in 0..n {
                hosts.push(NetHost::create(&format!("db{}", i + 1)).await);
            }
        }
        let consul = ConsulCluster::start(3).await;
        let clients: Vec<Consul> = consul.http_addrs().iter().map(|a| client(a)).collect();
        let mut forwards = Vec::new();
        let mut agent_consul = Vec::new();
        for i in 0..n {
            let server = i % consul.len();
            let http = consul.http_addr(server);
            if let Some(host) = hosts.get(i) {
                let port: u16 = http.rsplit(':').next().unwrap().parse().unwrap();
                // Agents in namespaces cannot reach 127.0.0.1: they reach
                // their Consul server through the host's root-side address.
                let relay = crate::Relay::start_on(
                    host.host_side_addr().into(),
                    SocketAddr::from(([127, 0, 0, 1], port)),
                )
                .await;
                agent_consul.push(relay.http_addr());
                forwards.push(relay);
            } else {
                agent_consul.push(http);
            }
        }
        let servers = (0..n)
            .map(|i| {
                // Production boots read-only (ansible successover.cnf): a
                // server that restarts may be a failed old source.
                let mut o =
                    MariaDbOptions::new(format!("db{}", i + 1), i as u32 + 1).arg("--read-only=1");
                if o.flavour.is_mysql() {
                    // As ansible's successover.cnf: read_only alone lets
                    // accounts with SUPER write.
                    o = o.arg("--super-read-only=1");
                }
                if let Some(h) = hosts.get(i) {
                    o.netns = Some(h.ns_name().to_owned());
                    o.bind_address = h.addr().into();
                }
                o
            })
            .collect();
        let topo = Topology::start_with(servers).await;
        writer::prepare(&topo.source().url())
            .await
            .expect("writer table");
        topo.source()
            .exec(&format!(
                "CREATE TABLE IF NOT EXISTS {}.chaos_probe (id BIGINT AUTO_INCREMENT PRIMARY KEY, at_ms BIGINT NOT NULL) ENGINE=InnoDB",
                writer::SCHEMA
            ))
            .await
            .expect("probe table");
        topo.wait_replicated(Duration::from_secs(30))
            .await
            .expect("replicated");
        let proxy_port = reserve_port();
        let settings = serde_json::json!({
            "proxy_port": proxy_port.port(),
            "semi_sync_replicas": 1,
            "max_lag_seconds": 10,
            "failover_cooldown_seconds": 0,
        });
        clients[0]
            .kv_put(
                &format!("{PREFIX}cluster/{}", opts.cluster),
                settings.to_string(),
            )
            .await
            .expect("cluster settings");
        let haproxy = HaProxy::start("").await;
        let dir = Scratch::new("chaos");
        let render_config = dir.path().join("render.toml");
        // The renderer reaches its Consul server through a relay the
        // `proxycut` fault stops.
        let render_relay = crate::Relay::start(
            consul
                .http_addr(RENDER_CONSUL)
                .trim_start_matches("http://")
                .parse()
                .expect("a Consul HTTP address"),
        )
        .await;
        std::fs::write(
            &render_config,
            render_config_text(
                &render_relay.http_addr(),
                &haproxy,
                &dir.path().join("check.pw"),
            ),
        )
        .expect("render config");
        let render_log = dir.path().join("render.log");
        let renderer = spawn_renderer(&render_config, &render_log).await;
        let mut relays = Vec::new();
        for (i, db) in topo.servers().iter().enumerate() {
            let on = hosts
                .get(i)
                .map_or(std::net::IpAddr::from([127, 0, 0, 1]), |h| {
                    h.host_side_addr().into()
                });
            relays.push(crate::Relay::start_on(on, SocketAddr::new(db.host(), db.port())).await);
        }
        let mut agents = Vec::new();
        let mut agent_opts = Vec::new();
        for (i, db) in topo.servers().iter().enumerate() {
            let mut o = AgentOptions::new(&opts.cluster, db.name(), &agent_consul[i]);
            o.netns = hosts.get(i).map(|h| h.ns_name().to_owned());
            o.advertise = Some(relays[i].addr());
            agents.push(AgentProc::start(o.clone(), db).await);
            agent_opts.push(o);
        }
        say.line(format!(
            "system up: consul servers {:?}, proxy 127.0.0.1:{}, {}",
            consul.http_addrs(),
            proxy_port.port(),
            topo.servers()
                .iter()
                .map(|d| format!("{} {}", d.name(), d.addr()))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        World {
            cluster: opts.cluster.clone(),
            agents,
            agent_opts,
            renderer,
            render_config,
            render_log,
            haproxy,
            proxy_port,
            topo,
            consul,
            clients,
            _forwards: forwards,
            render_relay,
            relays,
            hosts,
            _dir: dir,
        }
    }

    /// A client for a running Consul server.
    pub(super) fn kv(&self) -> &Consul {
        let i = (0..self.consul.len())
            .find(|i| self.consul.is_running(*i))
            .unwrap_or(0);
        &self.clients[i]
    }

    pub(super) fn kv_addr(&self) -> String {
        let i = (0..self.consul.len())
            .find(|i| self.consul.is_running(*i))
            .unwrap_or(0);
        self.consul.http_addr(i)
    }

    pub(super) fn index_of(&self, node: &str) -> usize {
        self.topo
            .servers()
            .iter()
            .position(|d| d.name() == node)
            .unwrap_or_else(|| panic!("unknown node {node}"))
    }

    fn node_of_addr(&self, addr: &str) -> Option<String> {
        self.addrs()
            .into_iter()
            .find(|(a, _)| a == addr.trim())
            .map(|(_, name)| name)
    }

    /// Every address a server is known by: its own, and its relay's.
    pub(super) fn addrs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (d, r) in self.topo.servers().iter().zip(&self.relays) {
            out.push((d.addr(), d.name().to_owned()));
            out.push((r.addr().to_string(), d.name().to_owned()));
        }
        out
    }

    pub(super) async fn published(&self) -> Option<String> {
        let kv = self
            .kv()
            .kv_get(&format!("{PREFIX}master/{}", self.cluster))
            .await
            .ok()??;
        self.node_of_addr(kv.value_str()?)
    }

    pub(super) async fn key_exists(&self, key: &str) -> bool {
        matches!(self.kv().kv_get(key).await, Ok(Some(_)))
    }

    pub(super) async fn quarantined(&self) -> Vec<String> {
        let prefix = format!("{PREFIX}quarantine/{}/", self.cluster);
        self.kv()
            .kv_keys(&prefix, None)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
            .filter(|k| !k.is_empty())
            .collect()
    }

    /// The agent holding the coordinator lock (`<cluster>/<node>`).
    pub(super) async fn coordinator(&self) -> Option<String> {
        let kv = self
            .kv()
            .kv_get(&format!("{PREFIX}lock/{}", self.cluster))
            .await
            .ok()??;
        kv.session.as_ref()?;
        kv.value_str()?.rsplit('/').next().map(str::to_owned)
    }

    /// `@@server_id` of a new connection through HAProxy.
    pub(super) async fn proxied_server_id(&self) -> Option<u32> {
        let opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.proxy_port.port())
            .user(Some(APP_USER))
            .pass(Some(APP_PASSWORD))
            .prefer_socket(false);
        let fut = async {
            let mut c = mysql_async::Conn::new(opts).await.ok()?;
            let id: Option<u32> = c.query_first("SELECT @@server_id").await.ok()?;
            let _ = c.disconnect().await;
            id
        };
        tokio::time::timeout(Duration::from_secs(2), fut)
            .await
            .ok()?
    }

    /// One write through HAProxy as the application: does the published
    /// source commit?
    pub(super) async fn probe_write(&self) -> Result<(), String> {
        let opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.proxy_port.port())
            .user(Some(APP_USER))
            .pass(Some(APP_PASSWORD))
            .prefer_socket(false);
        let fut = async {
            let mut c = mysql_async::Conn::new(opts).await?;
            c.exec_drop(
                format!(
                    "INSERT INTO {}.chaos_probe (at_ms) VALUES (?)",
                    writer::SCHEMA
                ),
                (unix_ms(),),
            )
            .await?;
            let _ = c.disconnect().await;
            anyhow::Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(3), fut).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("a write through HAProxy failed: {e:#}")),
            Err(_) => Err(WRITES_STALLED.to_owned()),
        }
    }

    /// Autopilot says every server is healthy and one may fail.
    pub(super) async fn consul_stable(&self) -> Result<(), String> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| e.to_string())?;
        let health: serde_json::Value = http
            .get(format!("{}/v1/operator/autopilot/health", self.kv_addr()))
            .send()
            .await
            .map_err(|e| format!("autopilot health: {e}"))?
            .json()
            .await
            .map_err(|e| format!("autopilot health: {e}"))?;
        let healthy = health["Healthy"].as_bool() == Some(true);
        let tolerance = health["FailureTolerance"].as_u64().unwrap_or(0);
        if healthy && tolerance >= 1 {
            Ok(())
        } else {
            Err(format!(
                "consul not stable: autopilot healthy {healthy}, failure tolerance {tolerance}"
            ))
        }
    }

    /// Sessions per agent name (`successover-agent <cluster>/<node>`): more
    /// than one means a dead agent's session still holds what it held.
    pub(super) async fn agent_sessions(&self) -> Result<HashMap<String, usize>, String> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| e.to_string())?;
        let list: serde_json::Value = http
            .get(format!("{}/v1/session/list", self.kv_addr()))
            .send()
            .await
            .map_err(|e| format!("session list: {e}"))?
            .json()
            .await
            .map_err(|e| format!("session list: {e}"))?;
        let mut out = HashMap::new();
        for s in list.as_array().into_iter().flatten() {
            if let Some(name) = s["Name"].as_str() {
                *out.entry(name.to_owned()).or_insert(0) += 1;
            }
        }
        Ok(out)
    }

    fn agent_log(&self, i: usize) -> PathBuf {
        self.agents[i]
            .config_path()
            .parent()
            .expect("agent dir")
            .join("agent.log")
    }

    /// Replaces agent `i` with a new process (same options); the old one's
    /// log is kept in `archive`.
    pub(super) async fn restart_agent(&mut self, i: usize, archive: &Path, generation: usize) {
        let old_log = self.agent_log(i);
        self.agents[i].kill9().await;
        let _ = std::fs::copy(
            &old_log,
            archive.join(format!(
                "agent-{}.{generation}.log",
                self.agent_opts[i].node
            )),
        );
        let new = AgentProc::start(self.agent_opts[i].clone(), self.topo.server(i)).await;
        self.agents[i] = new;
    }

    pub(super) async fn restart_renderer(&mut self) {
        self.renderer.kill9().await;
        self.renderer = spawn_renderer(&self.render_config, &self.render_log).await;
    }

    /// Copies every log into `dir`.
    pub(super) fn collect_logs(&self, dir: &Path) {
        let copy = |from: &Path, name: String| {
            let _ = std::fs::copy(from, dir.join(name));
        };
        for (i, _) in self.agents.iter().enumerate() {
            copy(
                &self.agent_log(i),
                format!("agent-{}.log", self.agent_opts[i].node),
            );
        }
        copy(&self.render_log, "render.log".into());
        copy(
            &self.haproxy.dir().join("haproxy.log"),
            "haproxy.log".into(),
        );
        let _ = std::fs::copy(self.haproxy.cfg_path(), dir.join("haproxy.cfg"));
        for db in self.topo.servers() {
            copy(db.log_path(), format!("mariadb-{}.log", db.name()));
        }
        if let Ok(entries) = std::fs::read_dir(self.consul.dir()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".log") {
                    copy(&e.path(), format!("consul-{name}"));
                }
            }
        }
    }
}

fn client(addr: &str) -> Consul {
    Consul::new(ConsulConfig::new(addr)).expect("consul client")
}

async fn spawn_renderer(config: &Path, log: &Path) -> Proc {
    let mut cmd = std::process::Command::new(bins::successover_render());
    cmd.arg("-c").arg(config).env("RUST_LOG", "info");
    Proc::spawn("successover-render", cmd, log)
        .await
        .expect("spawn successover-render")
}

fn render_config_text(consul_addr: &str, haproxy: &HaProxy, check_pw: &Path) -> String {
    crate::RenderConfig::for_harness(consul_addr, haproxy)
        .test_timing()
        .name("chaos-proxy")
        .source_check(check_pw)
        .toml()
}
