//! The whole system on one machine: Consul, three MariaDB servers, HAProxy
//! driven by a real `successover-render`, and a real `successover-agent`
//! per database. Used by the switchover and failover tests, the sandbox and
//! the benchmarks.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use successover_common::consul::{Consul, ConsulConfig};

use crate::agent::{AgentOptions, AgentProc};
use crate::haproxy::HaProxy;
use crate::mariadb::{MariaDb, MariaDbOptions, Topology, APP_PASSWORD, APP_USER};
use crate::process::{Proc, Scratch};
use crate::relay::Relay;
use crate::{bins, reserve_port, wait_until, PortLease, RenderConfig};

pub struct Stack {
    pub cluster: String,
    pub consul_addr: String,
    pub consul: Consul,
    pub topo: Topology,
    pub haproxy: HaProxy,
    pub proxy_port: PortLease,
    pub agents: Vec<AgentProc>,
    pub renderer: Proc,
    /// Where the renderer serves `/metrics`.
    pub renderer_metrics: PortLease,
    /// The relays of the nodes advertised through one, by node name.
    pub relays: std::collections::BTreeMap<String, Relay>,
    _dir: Scratch,
}

/// Where one database host of a [`Stack`] lives.
#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// Run mysqld and the agent inside this network namespace (a
    /// [`crate::NetHost::ns_name`]); `bind_address` should then be the
    /// host's address and `consul_addr` one Consul listens on that the
    /// namespace reaches (its `host_side_addr`).
    pub netns: Option<String>,
    /// The address mysqld listens on and the agent advertises (default
    /// 127.0.0.1).
    pub bind_address: Option<IpAddr>,
    /// The Consul HTTP address this host's agent talks to (default
    /// [`StackOptions::consul_addr`]): in production, its local Consul agent.
    pub consul_addr: Option<String>,
    /// Advertise the server through a [`Relay`] on 127.0.0.1 (see
    /// [`Stack::relays`]): stopping it hides the server from every other
    /// agent (the coordinator among them) while its replication, which
    /// connects to the source directly, goes on.
    pub relayed: bool,
}

impl NodeOptions {
    /// mysqld and the agent inside `host`, the agent talking to the Consul
    /// HTTP port `consul_port` on the host's root-side address.
    pub fn in_host(host: &crate::netns::NetHost, consul_port: u16) -> NodeOptions {
        NodeOptions {
            netns: Some(host.ns_name().to_owned()),
            bind_address: Some(host.addr().into()),
            consul_addr: Some(format!("http://{}:{consul_port}", host.host_side_addr())),
            relayed: false,
        }
    }
}

/// How to build a [`Stack`]; [`Stack::start`] is `StackOptions::new`.
#[derive(Clone, Debug)]
pub struct StackOptions {
    pub cluster: String,
    /// The test's own Consul client, and the default for agents and the
    /// renderer.
    pub consul_addr: String,
    /// The Consul HTTP address the renderer talks to (default `consul_addr`).
    pub render_consul_addr: Option<String>,
    /// db1 (the source), db2 (the semi-sync replica), db3.
    pub nodes: Vec<NodeOptions>,
    /// Extra fields of `mysql/cluster/<cluster>` (e.g.
    /// `failover_cooldown_seconds`), merged over the defaults.
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// Agents on the daemon's defaults (see [`AgentOptions::shipped`]).
    pub shipped_timing: bool,
    /// The agents' `[history] keep`, when not the default.
    pub history_keep: Option<u32>,
}

impl StackOptions {
    pub fn new(cluster: &str, consul_addr: &str) -> StackOptions {
        StackOptions {
            cluster: cluster.to_owned(),
            consul_addr: consul_addr.to_owned(),
            render_consul_addr: None,
            nodes: vec![NodeOptions::default(); 3],
            settings: serde_json::Map::new(),
            shipped_timing: false,
            history_keep: None,
        }
    }

    pub fn setting(mut self, key: &str, value: impl Into<serde_json::Value>) -> StackOptions {
        self.settings.insert(key.to_owned(), value.into());
        self
    }
}

impl Stack {
    /// Brings everything up and waits until the cluster is published,
    /// routed through HAProxy and its invariants hold.
    pub async fn start(cluster: &str, consul_addr: &str) -> Stack {
        Stack::start_with(StackOptions::new(cluster, consul_addr)).await
    }

    /// [`Stack::start`] with hosts in namespaces, per-host Consul addresses
    /// or extra cluster settings. Agents of hosts in a namespace start last,
    /// once an agent on loopback holds the coordinator lock: an agent in a
    /// namespace cannot reach servers that listen on 127.0.0.1, so it must
    /// not be the first coordinator (unless every host is in a namespace).
    pub async fn start_with(opts: StackOptions) -> Stack {
        let cluster = opts.cluster.as_str();
        let consul_addr = opts.consul_addr.as_str();
        let consul = Consul::new(ConsulConfig::new(consul_addr)).expect("consul client");
        let servers = opts
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut o = MariaDbOptions::new(format!("db{}", i + 1), i as u32 + 1);
                o.netns = n.netns.clone();
                if let Some(addr) = n.bind_address {
                    o.bind_address = addr;
                }
                o
            })
            .collect();
        let topo = Topology::start_with(servers).await;
        let mut relays = std::collections::BTreeMap::new();
        for (i, n) in opts.nodes.iter().enumerate() {
            if n.relayed {
                let db = topo.server(i);
                let target = std::net::SocketAddr::new(db.host(), db.port());
                relays.insert(format!("db{}", i + 1), Relay::start(target).await);
            }
        }
        let proxy_port = reserve_port();
        let mut settings = serde_json::json!({
            "proxy_port": proxy_port.port(),
            "semi_sync_replicas": 1,
            "max_lag_seconds": 10,
        });
        for (k, v) in &opts.settings {
            settings[k] = v.clone();
        }
        consul
            .kv_put(&format!("mysql/cluster/{cluster}"), settings.to_string())
            .await
            .expect("cluster settings");
        let dir = Scratch::new(&format!("stack-{cluster}"));
        let render_consul = opts.render_consul_addr.as_deref().unwrap_or(consul_addr);
        let renderer_metrics = reserve_port();
        let metrics_addr = std::net::SocketAddr::from(([127, 0, 0, 1], renderer_metrics.port()));
        let (haproxy, renderer) = proxy_host(&dir, "successover-render", render_consul, |c| {
            c.metrics(metrics_addr)
        })
        .await;
        let agent_opts = |i: usize| {
            let n = &opts.nodes[i];
            let mut o = AgentOptions::new(
                cluster,
                &format!("db{}", i + 1),
                n.consul_addr.as_deref().unwrap_or(consul_addr),
            );
            o.netns = n.netns.clone();
            o.shipped = opts.shipped_timing;
            o.history_keep = opts.history_keep;
            o.advertise = relays
                .get(&format!("db{}", i + 1))
                .map(|r: &Relay| r.addr());
            o
        };
        let mut agents: Vec<Option<AgentProc>> = (0..opts.nodes.len()).map(|_| None).collect();
        for (i, db) in topo.servers().iter().enumerate() {
            if opts.nodes[i].netns.is_none() {
                agents[i] = Some(AgentProc::start(agent_opts(i), db).await);
            }
        }
        // With every host in a namespace they all reach one another (through
        // the root namespace), so any of them may coordinate first.
        let all_in_namespaces = opts.nodes.iter().all(|n| n.netns.is_some());
        if all_in_namespaces {
            for (i, db) in topo.servers().iter().enumerate() {
                agents[i] = Some(AgentProc::start(agent_opts(i), db).await);
            }
        } else if opts.nodes.iter().any(|n| n.netns.is_some()) {
            let lock = format!("mysql/lock/{cluster}");
            let held = wait_until(Duration::from_secs(60), || async {
                consul
                    .kv_get(&lock)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|kv| kv.session.is_some())
            })
            .await;
            assert!(
                held.is_ok(),
                "no agent on loopback took the coordinator lock"
            );
            for (i, db) in topo.servers().iter().enumerate() {
                if opts.nodes[i].netns.is_some() {
                    agents[i] = Some(AgentProc::start(agent_opts(i), db).await);
                }
            }
        }
        let stack = Stack {
            cluster: cluster.to_owned(),
            consul_addr: consul_addr.to_owned(),
            consul,
            topo,
            haproxy,
            proxy_port,
            agents: agents.into_iter().map(|a| a.expect("agent")).collect(),
            renderer,
            renderer_metrics,
            relays,
            _dir: dir,
        };
        let routed = wait_until(Duration::from_secs(60), || async {
            stack.proxied_server_id().await == Some(1) && stack.semi_sync_healthy().await
        })
        .await;
        assert!(
            routed.is_ok(),
            "stack never became healthy\n{}",
            stack.logs()
        );
        stack
    }

    pub fn node(&self, name: &str) -> &MariaDb {
        let i: usize = name.trim_start_matches("db").parse().expect("dbN");
        self.topo.server(i - 1)
    }

    /// `@@server_id` of a new connection through HAProxy, as the app user.
    pub async fn proxied_server_id(&self) -> Option<u32> {
        use mysql_async::prelude::*;
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

    /// The source has its flag and exactly one ACKing replica.
    pub async fn semi_sync_healthy(&self) -> bool {
        let Some(source) = self.published_node().await else {
            return false;
        };
        let Ok(mut c) = self.node(&source).conn().await else {
            return false;
        };
        let clients = crate::mariadb::status_var(&mut c, "Rpl_semi_sync_master_clients")
            .await
            .ok();
        let on = crate::mariadb::global_var(&mut c, "rpl_semi_sync_master_enabled")
            .await
            .ok();
        clients.as_deref() == Some("1") && on.as_deref() == Some("1")
    }

    /// Every possible ACKer in `semi-sync/<cluster>` has the run its server
    /// is in now recorded (`started`): until the coordinator saw a
    /// (re)started ACKer replicating, a failover refuses rather than trust
    /// its relay log, so an operator's "the cluster is whole again" after a
    /// rebuild includes this.
    pub async fn ackers_runs_recorded(&self) -> Result<(), String> {
        let kv = self
            .consul
            .kv_get(&format!("mysql/semi-sync/{}", self.cluster))
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no semi-sync record")?;
        let record: serde_json::Value = kv
            .value
            .as_deref()
            .and_then(|v| serde_json::from_slice(v).ok())
            .ok_or("semi-sync record is not JSON")?;
        let floors = record["floors"].as_object().ok_or("no floors")?;
        for name in floors.keys() {
            // Read with the agent's own connection code: what it records.
            let db = self.node(name);
            let mut node =
                successover_agent::mysql::Node::new(successover_agent::mysql::NodeConfig::new(
                    db.host().to_string(),
                    db.port(),
                    crate::mariadb::ROOT_USER,
                    crate::mariadb::ROOT_PASSWORD,
                ));
            let now = node
                .server_info()
                .await
                .map_err(|e| format!("{name}: {e}"))?
                .started_s;
            node.close().await;
            let recorded = record["started"][name].as_u64();
            if recorded.is_none() || now != recorded {
                return Err(format!(
                    "{name}: recorded run {recorded:?}, server started at {now:?} ({record})"
                ));
            }
        }
        Ok(())
    }

    /// The node the `master` key names.
    pub async fn published_node(&self) -> Option<String> {
        let kv = self
            .consul
            .kv_get(&format!("mysql/master/{}", self.cluster))
            .await
            .ok()??;
        let addr = kv.value_str()?.to_owned();
        if let Some((name, _)) = self
            .relays
            .iter()
            .find(|(_, r)| r.addr().to_string() == addr)
        {
            return Some(name.clone());
        }
        self.topo
            .servers()
            .iter()
            .position(|s| s.addr() == addr)
            .map(|i| format!("db{}", i + 1))
    }

    /// The node whose agent holds the coordinator lock (the lock key's
    /// value is `<cluster>/<node>`), if one does.
    pub async fn coordinator_node(&self) -> Option<String> {
        let kv = self
            .consul
            .kv_get(&format!("mysql/lock/{}", self.cluster))
            .await
            .ok()??;
        kv.session.as_ref()?;
        Some(kv.value_str()?.trim().rsplit('/').next()?.to_owned())
    }

    /// Sets `"maintenance"` in the cluster's settings, keeping the rest:
    /// the coordinator then watches but repairs nothing.
    pub async fn set_maintenance(&self, on: bool) {
        let key = format!("mysql/cluster/{}", self.cluster);
        let mut settings: serde_json::Value = self
            .consul
            .kv_get(&key)
            .await
            .unwrap()
            .and_then(|kv| serde_json::from_slice(kv.value.as_deref()?).ok())
            .unwrap_or_else(|| serde_json::json!({}));
        settings["maintenance"] = on.into();
        self.consul
            .kv_put(&key, serde_json::to_vec(&settings).unwrap())
            .await
            .unwrap();
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for a in &self.agents {
            out.push_str(&format!("--- agent {}:\n{}\n", a.opts.node, a.log_tail(40)));
        }
        out.push_str(&format!("--- renderer:\n{}\n", self.renderer.log_tail(20)));
        out
    }

    pub fn render_log_path(&self) -> PathBuf {
        self.renderer.log_path().to_path_buf()
    }

    /// Another proxy host for this cluster: its own HAProxy and renderer
    /// (named `name`), binding the cluster's port on `bind` (another
    /// loopback address, say 127.0.0.2), talking to Consul at
    /// `consul_addr`, with the harness's source-check account.
    pub async fn start_proxy(&self, name: &str, bind: &str, consul_addr: &str) -> ExtraProxy {
        let dir = Scratch::new(&format!("proxy-{name}"));
        let label = format!("successover-render {name}");
        let (haproxy, renderer) = proxy_host(&dir, &label, consul_addr, |mut c| {
            c.haproxy.bind_address = bind.to_owned();
            c.name(name)
        })
        .await;
        ExtraProxy {
            haproxy,
            renderer,
            bind: bind.to_owned(),
            port: self.proxy_port.port(),
            _dir: dir,
        }
    }
}

/// A proxy host: a HAProxy of its own (no listen blocks: the renderer's
/// first cycle adds them) and a `successover-render` driving it, with the
/// test timing and the harness's source-check account, then `adjust`;
/// its config and log in `dir`.
async fn proxy_host(
    dir: &Scratch,
    label: &str,
    consul_addr: &str,
    adjust: impl FnOnce(RenderConfig) -> RenderConfig,
) -> (HaProxy, Proc) {
    let haproxy = HaProxy::start("").await;
    let config_path = dir.path().join("render.toml");
    let config = RenderConfig::for_harness(consul_addr, &haproxy)
        .test_timing()
        .source_check(&dir.path().join("check.pw"));
    adjust(config).write(&config_path);
    let mut cmd = Command::new(bins::successover_render());
    cmd.arg("-c").arg(&config_path).env("RUST_LOG", "info");
    let renderer = Proc::spawn(label, cmd, dir.path().join("render.log"))
        .await
        .expect("spawn successover-render");
    (haproxy, renderer)
}

/// A second proxy host of a [`Stack`] ([`Stack::start_proxy`]).
pub struct ExtraProxy {
    pub haproxy: HaProxy,
    pub renderer: Proc,
    pub bind: String,
    pub port: u16,
    _dir: Scratch,
}
