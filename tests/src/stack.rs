//! The whole system on one machine: Consul, three MariaDB servers, HAProxy
//! driven by a real `successover-render`, and a real `successover-agent`
//! per database. Used by the switchover and failover tests, the sandbox and
//! the benchmarks.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use successover_common::consul::{Consul, ConsulConfig};

use crate::agent::{AgentOptions, AgentProc};
use crate::haproxy::{defaults_section, global_section, HaProxy};
use crate::mariadb::{MariaDb, Topology, APP_PASSWORD, APP_USER};
use crate::process::{Proc, Scratch};
use crate::{bins, reserve_port, wait_until, PortLease};

pub struct Stack {
    pub cluster: String,
    pub consul_addr: String,
    pub consul: Consul,
    pub topo: Topology,
    pub haproxy: HaProxy,
    pub proxy_port: PortLease,
    pub agents: Vec<AgentProc>,
    pub renderer: Proc,
    _dir: Scratch,
}

impl Stack {
    /// Brings everything up and waits until the cluster is published,
    /// routed through HAProxy and its invariants hold.
    pub async fn start(cluster: &str, consul_addr: &str) -> Stack {
        let consul = Consul::new(ConsulConfig::new(consul_addr)).expect("consul client");
        let topo = Topology::source_with_replicas(2).await;
        let proxy_port = reserve_port();
        consul
            .kv_put(
                &format!("mysql/cluster/{cluster}"),
                format!(
                    r#"{{"proxy_port": {}, "semi_sync_replicas": 1, "max_lag_seconds": 10}}"#,
                    proxy_port.port()
                ),
            )
            .await
            .expect("cluster settings");
        let haproxy = HaProxy::start_with(|paths| {
            format!(
                "{}\n{}",
                global_section(&paths.admin_socket),
                defaults_section()
            )
        })
        .await;
        let dir = Scratch::new(&format!("stack-{cluster}"));
        let config = render_config(consul_addr, &haproxy);
        let config_path = dir.path().join("render.toml");
        std::fs::write(&config_path, config).expect("write render config");
        let mut cmd = Command::new(bins::successover_render());
        cmd.arg("-c").arg(&config_path).env("RUST_LOG", "info");
        let renderer = Proc::spawn("successover-render", cmd, dir.path().join("render.log"))
            .await
            .expect("spawn successover-render");
        let mut agents = Vec::new();
        for (i, db) in topo.servers().iter().enumerate() {
            let opts = AgentOptions::new(cluster, &format!("db{}", i + 1), consul_addr);
            agents.push(AgentProc::start(opts, db).await);
        }
        let stack = Stack {
            cluster: cluster.to_owned(),
            consul_addr: consul_addr.to_owned(),
            consul,
            topo,
            haproxy,
            proxy_port,
            agents,
            renderer,
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

    /// The node the `master` key names.
    pub async fn published_node(&self) -> Option<String> {
        let kv = self
            .consul
            .kv_get(&format!("mysql/master/{}", self.cluster))
            .await
            .ok()??;
        let addr = kv.value_str()?.to_owned();
        self.topo
            .servers()
            .iter()
            .position(|s| s.addr() == addr)
            .map(|i| format!("db{}", i + 1))
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
}

fn render_config(consul_addr: &str, haproxy: &HaProxy) -> String {
    let h = haproxy.paths();
    format!(
        r#"[consul]
address = "{consul_addr}"

[haproxy]
config = "{cfg}"
binary = "{binary}"
admin_socket = "{admin}"
master_socket = "{master}"
bind_address = "127.0.0.1"
hard_stop_after = "1m"
reload_timeout = "20s"

[watch]
wait = "5m"
retry_interval = "1s"
"#,
        cfg = h.cfg.display(),
        binary = bins::haproxy().display(),
        admin = h.admin_socket.display(),
        master = h.master_socket.display(),
    )
}
