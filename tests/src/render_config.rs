//! `successover-render`'s config file as every test and benchmark writes
//! it: one builder, serialised by serde, so the file's vocabulary lives in
//! one place here (and a value with a quote in it cannot break the TOML).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::haproxy::{HaProxy, HaProxyPaths};

#[derive(Debug, Clone, Default, Serialize)]
pub struct RenderConfig {
    #[serde(skip_serializing_if = "ConsulSection::is_empty")]
    pub consul: ConsulSection,
    #[serde(skip_serializing_if = "KvSection::is_empty")]
    pub kv: KvSection,
    pub haproxy: HaproxySection,
    #[serde(skip_serializing_if = "TemplateSection::is_empty")]
    pub template: TemplateSection,
    #[serde(skip_serializing_if = "MetricsSection::is_empty")]
    pub metrics: MetricsSection,
    #[serde(skip_serializing_if = "WatchSection::is_empty")]
    pub watch: WatchSection,
    pub render: RenderSection,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_check: Option<SourceCheckSection>,
}

/// `[render]`: the proxy's name in KV. Every harness renderer gets its
/// own: renderers of several tests share one Consul and prefix.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RenderSection {
    pub name: String,
}

/// `[source_check]`: the account a renderer cut off from Consul checks its
/// sources with.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceCheckSection {
    pub user: String,
    pub password_file: PathBuf,
    #[serde(
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ConsulSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct KvSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HaproxySection {
    pub config: PathBuf,
    pub binary: PathBuf,
    pub admin_socket: PathBuf,
    pub master_socket: PathBuf,
    pub bind_address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mysql_check_user: Option<String>,
    #[serde(
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub hard_stop_after: Option<Duration>,
    #[serde(
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub reload_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TemplateSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MetricsSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct WatchSection {
    #[serde(
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub wait: Option<Duration>,
    #[serde(
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub retry_interval: Option<Duration>,
}

impl ConsulSection {
    fn is_empty(&self) -> bool {
        self.address.is_none()
    }
}

impl KvSection {
    fn is_empty(&self) -> bool {
        self.prefix.is_none()
    }
}

impl TemplateSection {
    fn is_empty(&self) -> bool {
        self.path.is_none() && self.vars.is_empty()
    }
}

impl MetricsSection {
    fn is_empty(&self) -> bool {
        self.listen.is_none()
    }
}

impl WatchSection {
    fn is_empty(&self) -> bool {
        self.wait.is_none() && self.retry_interval.is_none()
    }
}

impl RenderConfig {
    /// A renderer that owns the HAProxy whose files are `paths`, checking
    /// with `binary`, binding cluster ports on loopback; everything else
    /// at the renderer's defaults.
    pub fn new(paths: &HaProxyPaths, binary: &Path) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        RenderConfig {
            render: RenderSection {
                name: format!("proxy-{}-{n}", std::process::id()),
            },
            haproxy: HaproxySection {
                config: paths.cfg.clone(),
                binary: binary.to_owned(),
                admin_socket: paths.admin_socket.clone(),
                master_socket: paths.master_socket.clone(),
                bind_address: "127.0.0.1".to_owned(),
                ..HaproxySection::default()
            },
            ..RenderConfig::default()
        }
    }

    /// A renderer for a harness HAProxy talking to the Consul at
    /// `consul_addr`.
    pub fn for_harness(consul_addr: &str, haproxy: &HaProxy) -> Self {
        RenderConfig::new(haproxy.paths(), crate::bins::haproxy()).consul(consul_addr)
    }

    pub fn consul(mut self, addr: &str) -> Self {
        self.consul.address = Some(addr.to_owned());
        self
    }

    pub fn prefix(mut self, prefix: &str) -> Self {
        self.kv.prefix = Some(prefix.to_owned());
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.render.name = name.to_owned();
        self
    }

    /// The harness's check account (`CHECK_USER`, no privileges), its
    /// password written to `password_file`.
    pub fn source_check(mut self, password_file: &Path) -> Self {
        std::fs::write(
            password_file,
            format!("{}\n", crate::mariadb::CHECK_PASSWORD),
        )
        .unwrap_or_else(|e| panic!("write {}: {e}", password_file.display()));
        self.source_check = Some(SourceCheckSection {
            user: crate::mariadb::CHECK_USER.to_owned(),
            password_file: password_file.to_owned(),
            timeout: None,
        });
        self
    }

    pub fn metrics(mut self, listen: SocketAddr) -> Self {
        self.metrics.listen = Some(listen);
        self
    }

    /// What the integration tests run with: old workers gone within a
    /// minute instead of an hour, a slow reload tolerated on a loaded CI
    /// machine, a failed render retried within a second.
    pub fn test_timing(mut self) -> Self {
        self.haproxy.hard_stop_after = Some(Duration::from_secs(60));
        self.haproxy.reload_timeout = Some(Duration::from_secs(20));
        self.watch.wait = Some(Duration::from_secs(300));
        self.watch.retry_interval = Some(Duration::from_secs(1));
        self
    }

    pub fn toml(&self) -> String {
        toml::to_string(self).expect("a render config serialises")
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.toml())
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_renderers_vocabulary() {
        let paths = HaProxyPaths {
            dir: "/h".into(),
            cfg: "/h/haproxy.cfg".into(),
            admin_socket: "/h/admin.sock".into(),
            master_socket: "/h/master.sock".into(),
            pid_file: "/h/pid".into(),
        };
        let mut c = RenderConfig::new(&paths, Path::new("/usr/sbin/haproxy"))
            .consul("http://127.0.0.1:8500")
            .prefix("t1/")
            .metrics("127.0.0.1:9105".parse().unwrap())
            .test_timing();
        c.haproxy.reload_timeout = Some(Duration::from_millis(1500));
        c.template.vars.insert("rev".into(), "1".into());
        let text = c.toml();
        for line in [
            "[consul]\naddress = \"http://127.0.0.1:8500\"\n",
            "[kv]\nprefix = \"t1/\"\n",
            "[haproxy]\nconfig = \"/h/haproxy.cfg\"\n",
            "hard_stop_after = \"1m\"\n",
            "reload_timeout = \"1s 500ms\"\n",
            "[metrics]\nlisten = \"127.0.0.1:9105\"\n",
            "[watch]\nwait = \"5m\"\nretry_interval = \"1s\"\n",
            "rev = \"1\"\n",
        ] {
            assert!(text.contains(line), "no {line:?} in:\n{text}");
        }
        let bare = RenderConfig::new(&paths, Path::new("/usr/sbin/haproxy")).toml();
        assert!(bare.starts_with("[haproxy]\n"), "{bare}");
        assert!(!bare.contains("[watch]"), "{bare}");
    }
}
