//! The HAProxy config template: minijinja with strict undefined variables,
//! so a typo in a custom template is an error instead of an empty string in
//! the middle of a server line.

use std::collections::BTreeMap;
use std::net::IpAddr;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Serialize;
use successover_common::contract::{Host, HostPort};

use crate::apply::SERVER_NAME;
use crate::model::{Cluster, Model};

/// The default template, compiled in so the binary works without files.
pub const DEFAULT_TEMPLATE: &str = include_str!("../../templates/haproxy.cfg.j2");

const NAME: &str = "haproxy.cfg";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read template {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("template {origin} does not compile")]
    Compile {
        origin: String,
        #[source]
        source: minijinja::Error,
    },
    #[error("template {origin} failed to render")]
    Render {
        origin: String,
        #[source]
        source: minijinja::Error,
    },
}

/// Values from the renderer's config that templates may use.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HaproxySettings {
    pub admin_socket: String,
    pub bind_address: IpAddr,
    pub mysql_check_user: Option<String>,
    pub hard_stop_after: String,
}

/// Everything a template sees.
#[derive(Debug, Serialize)]
pub struct Context<'a> {
    pub clusters: Vec<ClusterContext>,
    pub haproxy: &'a HaproxySettings,
    /// Free-form `[template.vars]` from the renderer's config.
    pub vars: &'a BTreeMap<String, String>,
    pub server_name: &'static str,
}

/// One cluster as a template sees it. Every string here was validated by
/// the model, so none can carry a newline or a `#`.
#[derive(Debug, Serialize)]
pub struct ClusterContext {
    pub name: String,
    pub bind_port: u16,
    /// `addr:port` to bind, brackets around an IPv6 address.
    pub bind: String,
    /// The source as KV names it, `host:port`.
    pub source: String,
    /// What HAProxy connects to: the IP when known, else the hostname.
    pub server_address: String,
    pub server_port: u16,
    /// `server_address:server_port`, brackets around an IPv6 address.
    pub server: String,
    pub fenced: bool,
    /// `failed` or `quarantined (<node>)`; none when not fenced.
    pub fence_reason: Option<String>,
}

impl ClusterContext {
    pub fn new(cluster: &Cluster, bind_address: IpAddr) -> Self {
        let server = HostPort {
            host: match cluster.source.ip {
                Some(ip) => Host::Ip(ip),
                None => cluster.source.addr.host.clone(),
            },
            port: cluster.source.addr.port,
        };
        let bind = HostPort {
            host: Host::Ip(bind_address),
            port: cluster.bind_port,
        };
        ClusterContext {
            name: cluster.name.to_string(),
            bind_port: cluster.bind_port,
            bind: bind.to_string(),
            source: cluster.source.addr.to_string(),
            server_address: server.host.to_string(),
            server_port: server.port,
            server: server.to_string(),
            fenced: cluster.fenced(),
            fence_reason: cluster.fence.as_ref().map(|f| f.to_string()),
        }
    }
}

pub struct Template {
    env: Environment<'static>,
    origin: String,
}

impl Template {
    /// Compiles a template; `origin` names it in errors (a path, or
    /// "built-in").
    pub fn compile(source: String, origin: impl Into<String>) -> Result<Self, TemplateError> {
        let origin = origin.into();
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // HAProxy config is not HTML: never escape.
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(true);
        env.add_template_owned(NAME, source)
            .map_err(|source| TemplateError::Compile {
                origin: origin.clone(),
                source,
            })?;
        Ok(Template { env, origin })
    }

    pub fn builtin() -> Self {
        Self::compile(DEFAULT_TEMPLATE.to_owned(), "built-in").expect("built-in template compiles")
    }

    pub fn from_file(path: &std::path::Path) -> Result<Self, TemplateError> {
        let source = std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::compile(source, path.display().to_string())
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn render(&self, ctx: &Context<'_>) -> Result<String, TemplateError> {
        let render_err = |source| TemplateError::Render {
            origin: self.origin.clone(),
            source,
        };
        self.env
            .get_template(NAME)
            .and_then(|t| t.render(ctx))
            .map_err(render_err)
    }

    /// Renders a model with the given settings.
    pub fn render_model(
        &self,
        model: &Model,
        haproxy: &HaproxySettings,
        vars: &BTreeMap<String, String>,
    ) -> Result<String, TemplateError> {
        let ctx = Context {
            clusters: model
                .clusters
                .values()
                .map(|c| ClusterContext::new(c, haproxy.bind_address))
                .collect(),
            haproxy,
            vars,
            server_name: SERVER_NAME,
        };
        self.render(&ctx)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{Fence, Source};
    use successover_common::contract::{parse_host_port, ClusterName};

    pub fn settings() -> HaproxySettings {
        HaproxySettings {
            admin_socket: "/run/haproxy/admin.sock".into(),
            bind_address: "127.0.0.1".parse().unwrap(),
            mysql_check_user: None,
            hard_stop_after: "1h".into(),
        }
    }

    pub fn cluster(name: &str, port: u16, source: &str, fence: Option<Fence>) -> Cluster {
        let addr = parse_host_port(source).unwrap();
        Cluster {
            name: ClusterName::parse(name).unwrap(),
            bind_port: port,
            source: Source {
                ip: addr.host.ip(),
                addr,
            },
            fence,
        }
    }

    pub fn model(clusters: Vec<Cluster>) -> Model {
        Model {
            clusters: clusters.into_iter().map(|c| (c.name.clone(), c)).collect(),
        }
    }

    fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.contains(needle)).collect()
    }

    #[test]
    fn default_template_renders_listen_blocks() {
        let m = model(vec![
            cluster("c1", 13306, "10.0.0.1:3306", None),
            cluster("c2", 13307, "db2.example.com:3307", Some(Fence::Failed)),
            cluster("c3", 13308, "[2001:db8::1]:3306", None),
        ]);
        let out = Template::builtin()
            .render_model(&m, &settings(), &BTreeMap::new())
            .unwrap();
        assert!(out.contains("stats socket /run/haproxy/admin.sock mode 600 level admin"));
        assert!(out.contains("    retries 1\n"));
        assert!(out.contains("master-worker"));
        assert_eq!(lines_with(&out, "listen ").len(), 3);
        assert!(out.contains(
            "listen c1\n    bind 127.0.0.1:13306\n    server source 10.0.0.1:3306 on-marked-down shutdown-sessions\n"
        ), "{out}");
        assert!(out.contains(
            "    server source db2.example.com:3307 on-marked-down shutdown-sessions disabled\n"
        ), "{out}");
        assert!(out.contains("# c2: source db2.example.com:3307, FENCED (failed)\n"));
        assert!(out.contains("server source [2001:db8::1]:3306 "), "{out}");
        assert!(!out.contains("mysql-check"));
        assert!(out.ends_with('\n'));
    }

    #[test]
    fn mysql_check_when_a_check_user_is_configured() {
        let mut s = settings();
        s.mysql_check_user = Some("haproxy_check".into());
        let m = model(vec![cluster("c1", 13306, "10.0.0.1:3306", None)]);
        let out = Template::builtin()
            .render_model(&m, &s, &BTreeMap::new())
            .unwrap();
        assert!(out.contains("option mysql-check user haproxy_check post-41\n"));
        assert!(out.contains(
            "server source 10.0.0.1:3306 check inter 1s fall 2 rise 1 on-marked-down shutdown-sessions\n"
        ), "{out}");
    }

    #[test]
    fn empty_model_renders_globals_only() {
        let out = Template::builtin()
            .render_model(&Model::default(), &settings(), &BTreeMap::new())
            .unwrap();
        assert!(out.contains("defaults"));
        assert!(!out.contains("\nlisten "), "{out}");
    }

    #[test]
    fn strict_undefined_is_an_error() {
        let t = Template::compile(
            "{% for c in clusters %}listen {{ c.nmae }}\n{% endfor %}".into(),
            "test",
        )
        .unwrap();
        let m = model(vec![cluster("c1", 1, "10.0.0.1:3306", None)]);
        let err = t
            .render_model(&m, &settings(), &BTreeMap::new())
            .unwrap_err();
        assert!(matches!(err, TemplateError::Render { .. }), "{err:?}");

        let t = Template::compile("{{ nope }}".into(), "test").unwrap();
        assert!(t
            .render_model(&Model::default(), &settings(), &BTreeMap::new())
            .is_err());
    }

    #[test]
    fn vars_are_available_and_nothing_is_escaped() {
        let t = Template::compile(
            "{{ vars.greeting }} {{ haproxy.admin_socket }} <&>\n".into(),
            "test",
        )
        .unwrap();
        let vars = BTreeMap::from([("greeting".to_owned(), "a<b>&c".to_owned())]);
        let out = t
            .render_model(&Model::default(), &settings(), &vars)
            .unwrap();
        assert_eq!(out, "a<b>&c /run/haproxy/admin.sock <&>\n");
    }

    #[test]
    fn syntax_error_is_a_compile_error() {
        assert!(matches!(
            Template::compile("{% for %}".into(), "bad"),
            Err(TemplateError::Compile { .. })
        ));
    }
}
