//! End-to-end tests of `successover-render`: the real daemon, as its own
//! process, between a real Consul, a real HAProxy (master-worker, reloads
//! through the master socket) and real MariaDB servers. Every check goes
//! through the proxy port the way an application would: which server
//! answers `SELECT @@server_id`, and whether a connection fails.
//!
//! The three MariaDB servers and one Consul agent are shared by the tests in
//! this binary (tests only route to the servers; each test has its own KV
//! prefix). Each test has its own HAProxy and its own renderer. The outage
//! test has Consul agents of its own, as it stops one.
//!
//! The renderer binary is the one cargo built in this workspace (see
//! [`bins::successover_render`]); `scripts/test.sh` builds it first.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};
use nix::sys::signal::Signal;
use successover_common::consul::{Consul, ConsulConfig};
use successover_tests::mariadb::{ROOT_PASSWORD, ROOT_USER};
use successover_tests::process::log_tail;
use successover_tests::{
    bins, init_tracing, reserve_port, wait_until, ConsulDev, HaProxy, PortLease, Proc,
    RenderConfig, Scratch, Topology,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OnceCell};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// Long enough for two busy cores; a healthy run takes a fraction of it.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// db1, db2, db3: server ids 1, 2, 3.
async fn dbs() -> &'static Topology {
    static DBS: OnceCell<Topology> = OnceCell::const_new();
    DBS.get_or_init(|| Topology::source_with_replicas(2)).await
}

/// The Consul agent of the tests that do not stop theirs.
async fn shared_consul() -> &'static ConsulDev {
    static CONSUL: OnceCell<ConsulDev> = OnceCell::const_new();
    CONSUL.get_or_init(ConsulDev::start).await
}

fn consul_client(http_addr: &str) -> Consul {
    Consul::new(ConsulConfig::new(http_addr)).expect("consul client")
}

// ---------------------------------------------------------------------------
// MySQL through the proxy

fn proxy_opts(port: u16) -> Opts {
    OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some(ROOT_USER))
        .pass(Some(ROOT_PASSWORD))
        // A 127.0.0.1 connection would otherwise switch to the server's
        // unix socket and bypass HAProxy.
        .prefer_socket(false)
        .into()
}

async fn connect(port: u16) -> anyhow::Result<Conn> {
    Ok(timeout(CONNECT_TIMEOUT, Conn::new(proxy_opts(port))).await??)
}

async fn server_id(conn: &mut Conn) -> anyhow::Result<u32> {
    let id: Option<u32> =
        timeout(CONNECT_TIMEOUT, conn.query_first("SELECT @@server_id")).await??;
    id.ok_or_else(|| anyhow::anyhow!("SELECT @@server_id returned no row"))
}

/// Which server a new connection through `port` lands on.
async fn new_server_id(port: u16) -> anyhow::Result<u32> {
    let mut conn = connect(port).await?;
    let id = server_id(&mut conn).await;
    let _ = conn.disconnect().await;
    id
}

async fn wait_routed(port: u16, want: u32, what: &str) -> Duration {
    let start = Instant::now();
    let last = Mutex::new(String::new());
    let routed = wait_until(ROUTE_TIMEOUT, || async {
        let got = new_server_id(port).await;
        let hit = matches!(got, Ok(id) if id == want);
        *last.lock().unwrap() = format!("{got:?}");
        hit
    })
    .await;
    assert!(
        routed.is_ok(),
        "{what}: port {port} did not route to server {want} within {ROUTE_TIMEOUT:?} (last: {})",
        last.lock().unwrap()
    );
    start.elapsed()
}

/// Keeps checking one cluster in the background: a connection opened at the
/// start must keep answering, and new connections must land on `want`.
struct Monitor {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<MonitorReport>,
}

#[derive(Debug, Default)]
struct MonitorReport {
    rounds: u64,
    failures: Vec<String>,
}

impl Monitor {
    async fn start(port: u16, want: u32) -> Monitor {
        let mut held = connect(port).await.expect("monitor connection");
        assert_eq!(server_id(&mut held).await.unwrap(), want);
        let stop = CancellationToken::new();
        let cancel = stop.clone();
        let task = tokio::spawn(async move {
            let mut report = MonitorReport::default();
            while !cancel.is_cancelled() {
                report.rounds += 1;
                match server_id(&mut held).await {
                    Ok(id) if id == want => {}
                    other => report.failures.push(format!("held connection: {other:?}")),
                }
                match new_server_id(port).await {
                    Ok(id) if id == want => {}
                    other => report.failures.push(format!("new connection: {other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = held.disconnect().await;
            report
        });
        Monitor { stop, task }
    }

    /// Stops and asserts that every round succeeded.
    async fn assert_unaffected(self, what: &str) {
        self.stop.cancel();
        let report = self.task.await.expect("monitor task");
        assert!(report.rounds > 0, "{what}: the monitor never ran");
        assert!(
            report.failures.is_empty(),
            "{what}: {} of {} rounds failed, first: {}",
            report.failures.len(),
            report.rounds,
            report.failures[0]
        );
    }
}

// ---------------------------------------------------------------------------
// The renderer daemon

struct Renderer {
    proc: Proc,
    metrics_port: u16,
}

/// `successover-render -c <config>`.
fn render_command(config: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(bins::successover_render());
    cmd.arg("-c").arg(config).env("RUST_LOG", "info");
    // The config file says which Consul to use; nothing from the
    // environment of whoever runs the tests may add to it.
    for var in [
        "CONSUL_HTTP_ADDR",
        "CONSUL_HTTP_SSL",
        "CONSUL_HTTP_TOKEN",
        "CONSUL_HTTP_TOKEN_FILE",
        "CONSUL_CACERT",
        "CONSUL_CLIENT_CERT",
        "CONSUL_CLIENT_KEY",
        "CONSUL_DATACENTER",
        "SUCCESSOVER_RENDER_CONFIG",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

impl Renderer {
    async fn start(config: &Path, metrics_port: u16, log: &Path) -> Renderer {
        let cmd = render_command(config);
        let proc = Proc::spawn("successover-render", cmd, log)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        Renderer { proc, metrics_port }
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.proc.exit_status() {
            panic!(
                "successover-render exited ({status}); last lines of its log:\n{}",
                self.proc.log_tail(40)
            );
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.proc.log_path()).unwrap_or_default()
    }

    async fn metrics(&self) -> anyhow::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics_port)).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await?;
        let mut out = String::new();
        timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await??;
        let (_, body) = out
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow::anyhow!("not an HTTP answer: {out:?}"))?;
        Ok(body.to_owned())
    }

    /// One series, e.g. `successover_render_errors_total{stage="consul"}`;
    /// 0 when absent (counters appear at their first increment).
    async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await.unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    async fn wait_metric_at_least(&self, series: &str, min: f64) {
        let ok = wait_until(ROUTE_TIMEOUT, || async { self.metric(series).await >= min }).await;
        assert!(
            ok.is_ok(),
            "{series} did not reach {min} within {ROUTE_TIMEOUT:?}: {}\nlast lines of the renderer's log:\n{}",
            self.metric(series).await,
            self.proc.log_tail(30)
        );
    }
}

impl Drop for Renderer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- successover-render: last lines of {} -----\n{}\n-----",
                self.proc.log_path().display(),
                self.proc.log_tail(60)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// One test's setup: c1 -> db1 and c2 -> db3 behind a HAProxy of its own,
// driven by a renderer of its own.

struct Rig {
    consul: Consul,
    prefix: String,
    c1: PortLease,
    c2: PortLease,
    renderer: Renderer,
    config: RenderConfig,
    config_path: PathBuf,
    haproxy: HaProxy,
    _metrics: PortLease,
    // Dropped last: it holds the renderer's log and config.
    dir: Scratch,
}

struct RigOptions {
    /// Consul address the renderer uses (may differ from `kv_addr` when a
    /// forwarder sits in between).
    consul_addr: String,
    /// Where the test writes keys.
    kv_addr: String,
    prefix: String,
    template: Option<String>,
    wait: Duration,
    /// Configure `[source_check]` with the harness's check account.
    source_check: bool,
}

impl RigOptions {
    async fn shared(prefix: &str) -> RigOptions {
        let addr = shared_consul().await.http_addr();
        RigOptions {
            consul_addr: addr.clone(),
            kv_addr: addr,
            prefix: format!("{prefix}/mysql/"),
            template: None,
            wait: Duration::from_secs(300),
            source_check: false,
        }
    }
}

impl Rig {
    async fn start(opts: RigOptions) -> Rig {
        init_tracing();
        let dbs = dbs().await;
        let haproxy = HaProxy::start("").await;
        let dir = Scratch::new("render-e2e");
        let template = opts.template.as_ref().map(|text| {
            let path = dir.path().join("haproxy.cfg.j2");
            std::fs::write(&path, text).unwrap();
            path
        });
        let metrics = reserve_port();
        let mut config = RenderConfig::for_harness(&opts.consul_addr, &haproxy)
            .prefix(&opts.prefix)
            .metrics(SocketAddr::from(([127, 0, 0, 1], metrics.port())))
            .test_timing();
        config.watch.wait = Some(opts.wait);
        if opts.source_check {
            config = config.source_check(&dir.path().join("check.pw"));
        }
        config.template.path = template;
        config.template.vars.insert("rev".into(), "1".into());
        let config_path = dir.path().join("render.toml");
        std::fs::write(&config_path, config.toml()).unwrap();

        let consul = consul_client(&opts.kv_addr);
        let (c1, c2) = (reserve_port(), reserve_port());
        put_cluster(
            &consul,
            &opts.prefix,
            "c1",
            c1.port(),
            &dbs.server(0).addr(),
        )
        .await;
        put_cluster(
            &consul,
            &opts.prefix,
            "c2",
            c2.port(),
            &dbs.server(2).addr(),
        )
        .await;

        let renderer =
            Renderer::start(&config_path, metrics.port(), &dir.path().join("render.log")).await;
        let mut rig = Rig {
            consul,
            prefix: opts.prefix,
            c1,
            c2,
            renderer,
            config,
            config_path,
            haproxy,
            dir,
            _metrics: metrics,
        };
        wait_routed(rig.c1.port(), 1, "initial c1").await;
        wait_routed(rig.c2.port(), 3, "initial c2").await;
        // The new worker serves before the reload is over for the master
        // (its CLI refuses connections for a moment); the renderer says
        // when it is.
        rig.renderer
            .wait_metric_at_least("successover_render_applies_total{path=\"reload\"}", 1.0)
            .await;
        rig.renderer.assert_running();
        rig
    }

    /// The current HAProxy workers, waiting out a master CLI that is busy
    /// reloading.
    async fn workers(&self) -> Vec<u32> {
        let got = successover_tests::wait_for(ROUTE_TIMEOUT, || async {
            self.haproxy
                .worker_pids()
                .await
                .ok()
                .filter(|w| !w.is_empty())
        })
        .await;
        got.unwrap_or_else(|e| panic!("haproxy master CLI: show proc: {e}"))
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    async fn put(&self, rest: &str, value: &str) {
        self.consul
            .kv_put(&self.key(rest), value.as_bytes().to_vec())
            .await
            .unwrap_or_else(|e| panic!("kv put {rest}: {e}"));
    }

    async fn delete(&self, rest: &str) {
        self.consul
            .kv_delete(&self.key(rest))
            .await
            .unwrap_or_else(|e| panic!("kv delete {rest}: {e}"));
    }

    fn rendered(&self) -> String {
        std::fs::read_to_string(self.haproxy.cfg_path()).unwrap()
    }

    fn rewrite_config(&self, config: &RenderConfig) {
        std::fs::write(&self.config_path, config.toml()).unwrap();
    }
}

async fn put_cluster(consul: &Consul, prefix: &str, name: &str, port: u16, source: &str) {
    consul
        .kv_put(
            &format!("{prefix}cluster/{name}"),
            format!(r#"{{"proxy_port": {port}}}"#),
        )
        .await
        .expect("kv put settings");
    consul
        .kv_put(&format!("{prefix}master/{name}"), source)
        .await
        .expect("kv put master");
}

/// A query on a connection the proxy should have closed.
async fn assert_closed(conn: &mut Conn, what: &str) {
    let result = timeout(Duration::from_secs(5), conn.query_drop("SELECT 1")).await;
    assert!(
        matches!(result, Ok(Err(_))),
        "{what}: a query on the connection to the old source did not fail: {result:?}"
    );
}

// ---------------------------------------------------------------------------
// The tests

/// `kv put master/c1 <db2>`: new connections land on db2 within a runtime-API
/// switch (no HAProxy reload), the connection still open to db1 is cut, c2
/// does not notice.
#[tokio::test(flavor = "multi_thread")]
async fn source_change_moves_new_connections_and_cuts_old_ones() {
    let rig = Rig::start(RigOptions::shared("switch").await).await;
    let db2 = dbs().await.server(1).addr();
    let mut old = connect(rig.c1.port()).await.unwrap();
    assert_eq!(server_id(&mut old).await.unwrap(), 1);
    let workers = rig.workers().await;
    let runtime_before = rig
        .renderer
        .metric("successover_render_applies_total{path=\"runtime\"}")
        .await;
    let c2 = Monitor::start(rig.c2.port(), 3).await;

    rig.put("master/c1", &db2).await;
    let took = wait_routed(rig.c1.port(), 2, "c1 after the switch").await;
    eprintln!("switch: KV put -> new connections on db2 in {took:?}");

    assert_closed(&mut old, "c1").await;
    assert!(rig.rendered().contains(&format!("server source {db2} ")));
    assert_eq!(
        rig.workers().await,
        workers,
        "a source change must not reload HAProxy"
    );
    // The apply is counted once HAProxy answered its last command, which
    // may be a moment after the old connection saw its end.
    let counted = wait_until(Duration::from_secs(5), || async {
        rig.renderer
            .metric("successover_render_applies_total{path=\"runtime\"}")
            .await
            > runtime_before
    })
    .await;
    assert!(
        counted.is_ok(),
        "the switch was not counted as a runtime apply"
    );
    c2.assert_unaffected("c2 during c1's switch").await;
}

/// `master/c1/failed`: c1 is blackholed (open connections cut, new ones
/// fail at once), deleting the key restores it; c2 works throughout.
#[tokio::test(flavor = "multi_thread")]
async fn fence_blackholes_one_cluster_and_unfence_restores_it() {
    let mut rig = Rig::start(RigOptions::shared("fence").await).await;
    let port = rig.c1.port();
    let mut open = connect(port).await.unwrap();
    assert_eq!(server_id(&mut open).await.unwrap(), 1);
    let c2 = Monitor::start(rig.c2.port(), 3).await;

    rig.put("master/c1/failed", "").await;
    let fenced = wait_until(ROUTE_TIMEOUT, || async {
        new_server_id(port).await.is_err()
    })
    .await;
    assert!(fenced.is_ok(), "c1 still routed after master/c1/failed");
    assert_closed(&mut open, "fenced c1").await;
    // Fast, not a connect timeout: the application sees an error at once
    // and its retry logic can take over.
    for _ in 0..5 {
        let start = Instant::now();
        let result = new_server_id(port).await;
        let took = start.elapsed();
        assert!(result.is_err(), "fenced c1 answered: {result:?}");
        assert!(
            took < Duration::from_millis(500),
            "a connection to fenced c1 took {took:?} to fail ({result:?})"
        );
    }
    assert!(rig.rendered().contains(" disabled\n"), "{}", rig.rendered());
    rig.renderer.assert_running();

    rig.delete("master/c1/failed").await;
    wait_routed(port, 1, "c1 after deleting failed").await;
    assert!(!rig.rendered().contains(" disabled\n"));
    c2.assert_unaffected("c2 while c1 was fenced and unfenced")
        .await;
}

/// A value carrying a newline and a server line is refused: the file never
/// holds it, c1 keeps routing (its open connection too), c2 is untouched,
/// `/metrics` counts the rejection, and the next valid value still applies.
#[tokio::test(flavor = "multi_thread")]
async fn injected_value_is_rejected_and_last_good_routing_stays() {
    let mut rig = Rig::start(RigOptions::shared("inject").await).await;
    let db1 = dbs().await.server(0).addr();
    // Checks the file throughout, not just at the end: it is replaced
    // atomically, so every read sees one complete version.
    let seen_evil = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let watcher = {
        let (path, seen, reads, stop) = (
            rig.haproxy.cfg_path().to_path_buf(),
            seen_evil.clone(),
            reads.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                if let Ok(text) = tokio::fs::read_to_string(&path).await {
                    reads.fetch_add(1, Ordering::Relaxed);
                    if text.contains("evil") {
                        seen.store(true, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut open = connect(rig.c1.port()).await.unwrap();
    let c2 = Monitor::start(rig.c2.port(), 3).await;
    let rejected = "successover_render_rejected_total{reason=\"invalid_value\"}";
    let before = rig.renderer.metric(rejected).await;

    rig.put("master/c1", "127.0.0.1:3306\n  server evil 127.0.0.1:1")
        .await;
    rig.renderer
        .wait_metric_at_least(rejected, before + 1.0)
        .await;
    // A settings value trying the same through c2's port.
    rig.put(
        "cluster/c2",
        r#"{"proxy_port": "1\n  server evil 127.0.0.1:1"}"#,
    )
    .await;
    rig.renderer
        .wait_metric_at_least(rejected, before + 3.0)
        .await;

    let text = rig.rendered();
    assert!(!text.contains("evil"), "{text}");
    assert!(text.contains(&format!("server source {db1} ")), "{text}");
    let state = rig.haproxy.admin("show servers state").await.unwrap();
    assert!(!state.contains("evil"), "{state}");
    assert_eq!(
        server_id(&mut open).await.unwrap(),
        1,
        "c1's open connection"
    );
    assert_eq!(new_server_id(rig.c1.port()).await.unwrap(), 1);
    rig.renderer.assert_running();

    // Not stuck on the bad values: a valid change still goes through.
    let db2 = dbs().await.server(1).addr();
    rig.put("master/c1", &db2).await;
    wait_routed(rig.c1.port(), 2, "c1 after a valid value").await;

    stop.cancel();
    watcher.await.unwrap();
    assert!(reads.load(Ordering::Relaxed) > 0);
    assert!(
        !seen_evil.load(Ordering::Relaxed),
        "the rendered file held the injected line at some point"
    );
    c2.assert_unaffected("c2 while values were injected").await;
}

/// A new cluster whose proxy port another program holds on this host: the
/// renderer leaves it out instead of asking HAProxy to bind it (a reload
/// that fails to bind pauses every listener for about a second, then
/// refuses the whole file: measured while writing this test), reports it,
/// and adds it once the port is free. The other clusters see nothing.
#[tokio::test(flavor = "multi_thread")]
async fn cluster_on_a_port_another_program_holds_waits_for_it() {
    let mut rig = Rig::start(RigOptions::shared("squat").await).await;
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let workers = rig.workers().await;
    let in_use = "successover_render_rejected_values{reason=\"port_in_use\"}";
    let c1 = Monitor::start(rig.c1.port(), 1).await;
    let c2 = Monitor::start(rig.c2.port(), 3).await;

    put_cluster(
        &rig.consul,
        &rig.prefix,
        "c3",
        taken,
        &dbs().await.server(1).addr(),
    )
    .await;
    rig.renderer.wait_metric_at_least(in_use, 1.0).await;
    assert!(!rig.rendered().contains("listen c3"), "{}", rig.rendered());
    assert_eq!(rig.workers().await, workers, "nothing to reload for");
    assert!(rig.renderer.log().contains("is in use by another program"));
    assert_eq!(
        rig.renderer
            .metric("successover_render_errors_total{stage=\"apply\"}")
            .await,
        0.0
    );
    c1.assert_unaffected("c1 while c3 waited for its port")
        .await;

    drop(squatter);
    wait_routed(taken, 2, "c3 once its port is free").await;
    assert!(rig.rendered().contains("listen c3"));
    assert_eq!(rig.renderer.metric(in_use).await, 0.0);
    rig.renderer.assert_running();
    c2.assert_unaffected("c2 while c3 waited for its port")
        .await;
}

/// The default template with a marker line, so a test can tell which
/// template (and which `vars.rev`) rendered the live file.
fn operator_template() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/haproxy.cfg.j2");
    let default = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    format!("# rev {{{{ vars.rev }}}}\n{default}")
}

/// A template `haproxy -c` rejects although minijinja renders it.
fn haproxy_rejected_template() -> String {
    let good = operator_template();
    let bad = good.replace(
        "    bind {{ c.bind }}\n",
        "    bind {{ c.bind }}\n    no-such-directive-for-test\n",
    );
    assert_ne!(
        good, bad,
        "the default template no longer has the bind line"
    );
    bad
}

/// Broken templates and config files, given to the running daemon (SIGHUP)
/// and to `--once` against the same files, never replace the live file:
/// HAProxy keeps serving the last good config and the daemon keeps
/// following KV with its old template. A good template then goes live with
/// a reload.
#[tokio::test(flavor = "multi_thread")]
async fn broken_templates_and_configs_leave_the_running_config_serving() {
    let mut opts = RigOptions::shared("template").await;
    opts.template = Some(operator_template());
    let mut rig = Rig::start(opts).await;
    let template_path = rig.config.template.path.clone().unwrap();
    let good = rig.rendered();
    assert!(good.starts_with("# rev 1\n"), "{good}");
    let c2 = Monitor::start(rig.c2.port(), 3).await;
    let failed = "successover_render_config_reloads_total{outcome=\"failed\"}";
    let applied = "successover_render_config_reloads_total{outcome=\"applied\"}";

    // (what, template, what the renderer's log says about it)
    let broken: [(&str, String, &str); 3] = [
        (
            "syntax error",
            format!("{}{{% for c in clusters %}}\n", operator_template()),
            "does not compile: syntax error",
        ),
        (
            "undefined variable",
            format!("{}# {{{{ no_such_variable }}}}\n", operator_template()),
            "failed to render: undefined value",
        ),
        (
            "rejected by haproxy -c",
            haproxy_rejected_template(),
            "haproxy -c rejected the rendered config",
        ),
    ];
    let mut failures = 0.0;
    for (what, text, logged) in &broken {
        std::fs::write(&template_path, text).unwrap();
        rig.renderer.proc.signal(Signal::SIGHUP).unwrap();
        failures += 1.0;
        rig.renderer.wait_metric_at_least(failed, failures).await;
        rig.renderer.assert_running();
        assert!(
            rig.renderer.log().contains(logged),
            "{what}: no {logged:?} in the log"
        );
        assert_eq!(rig.rendered(), good, "{what}: the live file changed");
        assert_eq!(new_server_id(rig.c1.port()).await.unwrap(), 1, "{what}");
    }
    // A config file with a typo in a key.
    std::fs::write(
        &rig.config_path,
        rig.config
            .toml()
            .replace("hard_stop_after", "hard_stop_aftr"),
    )
    .unwrap();
    rig.renderer.proc.signal(Signal::SIGHUP).unwrap();
    failures += 1.0;
    rig.renderer.wait_metric_at_least(failed, failures).await;
    rig.renderer.assert_running();
    assert_eq!(rig.rendered(), good);
    assert_eq!(rig.renderer.metric(applied).await, 0.0);
    assert!(rig
        .renderer
        .log()
        .contains("`haproxy.hard_stop_aftr` is not a known key"));

    // `--once` with the broken templates, same files: exit 2 for a template
    // that does not render, 1 for one HAProxy rejects; the file stays.
    for (i, want) in [(0, 2), (2, 1)] {
        let (what, text, _) = &broken[i];
        let path = rig.dir.path().join(format!("once-{i}.j2"));
        std::fs::write(&path, text).unwrap();
        let mut config = rig.config.clone();
        config.template.path = Some(path);
        config.metrics.listen = None;
        let config_path = rig.dir.path().join(format!("once-{i}.toml"));
        std::fs::write(&config_path, config.toml()).unwrap();
        let mut cmd = render_command(&config_path);
        cmd.arg("--once");
        let log = rig.dir.path().join(format!("once-{i}.log"));
        let mut once = Proc::spawn("successover-render --once", cmd, &log)
            .await
            .unwrap();
        let status = once.wait(Duration::from_secs(30)).await;
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(want),
            "--once with a template with a {what}: {status:?}\n{}",
            log_tail(&log, 20)
        );
        assert_eq!(
            rig.rendered(),
            good,
            "--once ({what}) changed the live file"
        );
    }

    // The daemon still follows KV, with the template it had.
    let db2 = dbs().await.server(1).addr();
    rig.put("master/c1", &db2).await;
    wait_routed(rig.c1.port(), 2, "c1 after the failed reloads").await;
    let text = rig.rendered();
    assert!(text.starts_with("# rev 1\n") && !text.contains("no-such-directive"));

    // A good template and config: swapped in, written, and HAProxy reloaded
    // so that it serves what the file says.
    let workers = rig.workers().await;
    std::fs::write(&template_path, operator_template()).unwrap();
    rig.config.template.vars.insert("rev".into(), "2".into());
    rig.rewrite_config(&rig.config);
    rig.renderer.proc.signal(Signal::SIGHUP).unwrap();
    rig.renderer.wait_metric_at_least(applied, 1.0).await;
    let reloaded = wait_until(ROUTE_TIMEOUT, || async {
        rig.rendered().starts_with("# rev 2\n")
            && rig
                .haproxy
                .worker_pids()
                .await
                .is_ok_and(|w| !w.is_empty() && w != workers)
    })
    .await;
    assert!(
        reloaded.is_ok(),
        "the good template did not go live:\n{}",
        rig.rendered()
    );
    assert_eq!(new_server_id(rig.c1.port()).await.unwrap(), 2);
    rig.renderer.assert_running();
    c2.assert_unaffected("c2 through broken and good reloads")
        .await;
}

/// A TCP forwarder standing in for "Consul's address": it can point at one
/// Consul agent, then (after that one is gone) at another, which is how a
/// Consul coming back at the same address looks to the renderer.
struct Forwarder {
    port: PortLease,
    upstream: watch::Sender<Option<SocketAddr>>,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start(upstream: SocketAddr) -> Forwarder {
        let port = reserve_port();
        let listener = TcpListener::bind(("127.0.0.1", port.port())).await.unwrap();
        let (tx, rx) = watch::channel(Some(upstream));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let target = *rx.borrow();
                tokio::spawn(async move {
                    // No upstream or a dead one: the client sees its
                    // connection closed, as with a stopped agent.
                    let Some(target) = target else { return };
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        Forwarder {
            port,
            upstream: tx,
            task,
        }
    }

    fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port.port())
    }

    fn point_at(&self, upstream: Option<SocketAddr>) {
        self.upstream.send_replace(upstream);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn http_socket(consul: &ConsulDev) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], consul.http_port()))
}

/// Consul goes away: HAProxy keeps serving the last good config, the
/// renderer logs and counts the errors and keeps running. A new (empty)
/// Consul at the same address, with the keys written again and c1 moved,
/// is picked up, although its indexes are lower than the old agent's.
#[tokio::test(flavor = "multi_thread")]
async fn consul_outage_keeps_the_last_good_config_serving() {
    init_tracing();
    let (first, dbs) = tokio::join!(ConsulDev::start(), dbs());
    // Many writes, so the first agent's indexes are well above what the
    // second one will have: the renderer's blocking queries must notice
    // the index going backwards and start over.
    let filler = consul_client(&first.http_addr());
    for i in 0..60 {
        filler
            .kv_put(&format!("filler/{}", i % 5), i.to_string())
            .await
            .unwrap();
    }
    let forwarder = Forwarder::start(http_socket(&first)).await;
    let opts = RigOptions {
        consul_addr: forwarder.addr(),
        kv_addr: first.http_addr(),
        prefix: "mysql/".into(),
        template: None,
        // Short, so a query blocking on an index the new agent has not
        // reached yet returns soon.
        wait: Duration::from_secs(2),
        source_check: false,
    };
    let mut rig = Rig::start(opts).await;
    let mut open = connect(rig.c1.port()).await.unwrap();
    let consul_errors = "successover_render_errors_total{stage=\"consul\"}";

    let stopped_at = Instant::now();
    forwarder.point_at(None);
    drop(first);
    rig.renderer.wait_metric_at_least(consul_errors, 1.0).await;
    // Keeps serving and keeps trying for a while, through several retries.
    while stopped_at.elapsed() < Duration::from_secs(4) {
        rig.renderer.assert_running();
        assert_eq!(new_server_id(rig.c1.port()).await.unwrap(), 1);
        assert_eq!(new_server_id(rig.c2.port()).await.unwrap(), 3);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(server_id(&mut open).await.unwrap(), 1, "open connection");
    assert!(rig.renderer.metric(consul_errors).await >= 2.0);
    assert!(
        rig.renderer.log().contains("watch failed"),
        "{}",
        log_tail(rig.renderer.proc.log_path(), 20)
    );

    // A new agent: the keys are written before it becomes reachable at the
    // renderer's address, so the renderer never sees an empty store.
    let second = ConsulDev::start().await;
    rig.consul = consul_client(&second.http_addr());
    put_cluster(
        &rig.consul,
        &rig.prefix,
        "c1",
        rig.c1.port(),
        &dbs.server(1).addr(),
    )
    .await;
    put_cluster(
        &rig.consul,
        &rig.prefix,
        "c2",
        rig.c2.port(),
        &dbs.server(2).addr(),
    )
    .await;
    forwarder.point_at(Some(http_socket(&second)));
    let took = wait_routed(rig.c1.port(), 2, "c1 from the new Consul").await;
    eprintln!("consul back: c1 moved {took:?} after the new agent became reachable");
    assert_eq!(new_server_id(rig.c2.port()).await.unwrap(), 3);
    assert_closed(&mut open, "c1 after the move").await;
    rig.renderer.assert_running();
}

/// `proxy/<name>`, what this proxy serves, bound to the renderer's own
/// session.
async fn proxy_record(rig: &Rig) -> Option<(successover_common::contract::ProxyServing, bool)> {
    let key = rig.key(&format!("proxy/{}", rig.config.render.name));
    let kv = rig.consul.kv_get(&key).await.ok()??;
    let record = successover_common::contract::ProxyServing::parse(kv.value.as_deref()?).ok()?;
    Some((record, kv.session.is_some()))
}

async fn wait_record(
    rig: &Rig,
    what: &str,
    f: impl Fn(&successover_common::contract::ServedCluster) -> bool,
) {
    let c1 = successover_common::contract::ClusterName::parse("c1").unwrap();
    let ok = wait_until(ROUTE_TIMEOUT, || async {
        proxy_record(rig)
            .await
            .is_some_and(|(r, live)| live && r.clusters.get(&c1).is_some_and(&f))
    })
    .await;
    assert!(
        ok.is_ok(),
        "{what}: proxy record is {:?}\n{}",
        proxy_record(rig).await,
        rig.renderer.proc.log_tail(30)
    );
}

/// DESIGN.md rule 10b: every renderer publishes what its HAProxy serves
/// under its own session, follows each source change and fence, and its
/// key goes with the renderer (at once on SIGTERM, within seconds on
/// kill -9), so a coordinator never waits for a dead proxy.
#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_record_follows_what_haproxy_serves() {
    let mut rig = Rig::start(RigOptions::shared("record").await).await;
    let dbs = dbs().await;
    let (db1, db2) = (dbs.server(0).addr(), dbs.server(1).addr());
    let is = |addr: &str| {
        let want = successover_common::contract::HostPort::parse(addr).unwrap();
        move |c: &successover_common::contract::ServedCluster| {
            !c.fenced && c.source.as_ref().is_some_and(|s| s.same(&want))
        }
    };
    wait_record(&rig, "at start", is(&db1)).await;
    let (first, _) = proxy_record(&rig).await.unwrap();
    assert_eq!(first.proxy.as_str(), rig.config.render.name);
    assert!(first.kv_index > 0);

    rig.put("master/c1", &db2).await;
    wait_record(&rig, "after the switch", is(&db2)).await;
    wait_routed(rig.c1.port(), 2, "c1 on db2").await;
    rig.put("master/c1/failed", "").await;
    wait_record(&rig, "fenced", |c| c.fenced).await;
    rig.delete("master/c1/failed").await;
    wait_record(&rig, "unfenced", is(&db2)).await;

    let key = rig.key(&format!("proxy/{}", rig.config.render.name));
    rig.renderer.proc.stop().await;
    let gone = Instant::now();
    wait_until(Duration::from_secs(3), || async {
        rig.consul.kv_get(&key).await.is_ok_and(|k| k.is_none())
    })
    .await
    .unwrap_or_else(|_| panic!("{key} outlived a SIGTERM"));
    eprintln!("SIGTERM -> proxy key gone in {:?}", gone.elapsed());

    rig.renderer = Renderer::start(
        &rig.config_path,
        rig.renderer.metrics_port,
        &rig.dir.path().join("render-2.log"),
    )
    .await;
    wait_record(&rig, "after a restart", is(&db2)).await;
    rig.renderer.proc.kill9().await;
    let killed = Instant::now();
    wait_until(Duration::from_secs(20), || async {
        rig.consul.kv_get(&key).await.is_ok_and(|k| k.is_none())
    })
    .await
    .unwrap_or_else(|_| panic!("{key} outlived the renderer"));
    eprintln!("kill -9 -> proxy key gone in {:?}", killed.elapsed());
    rig.put("master/c1", &db1).await;
}

/// DESIGN.md rule 10c: cut off from Consul, a renderer keeps routing a
/// cluster only to a source it sees writable itself. A Consul outage alone
/// changes nothing; a source that turns read-only or stops answering goes
/// into maintenance and stays there, even if it turns writable again,
/// until Consul answers; then KV decides.
#[tokio::test(flavor = "multi_thread")]
async fn cut_off_from_consul_a_renderer_routes_only_to_writable_sources() {
    let consul = shared_consul().await;
    let relay = successover_tests::Relay::start(http_socket(consul)).await;
    let dbs = dbs().await;
    // c2 also goes to db1 (the only writable server), through a relay
    // the test stops to make that source unreachable for c2 only.
    let db1 = dbs.server(0);
    let db1_relay =
        successover_tests::Relay::start(SocketAddr::from(([127, 0, 0, 1], db1.port()))).await;
    let mut opts = RigOptions::shared("cutoff").await;
    opts.consul_addr = relay.http_addr();
    opts.source_check = true;
    let mut rig = Rig::start(opts).await;
    rig.put("master/c2", &db1_relay.addr().to_string()).await;
    wait_routed(rig.c2.port(), 1, "c2 through its relay").await;
    let c1 = successover_common::contract::ClusterName::parse("c1").unwrap();
    wait_until(ROUTE_TIMEOUT, || async {
        proxy_record(&rig)
            .await
            .is_some_and(|(r, _)| r.clusters.contains_key(&c1))
    })
    .await
    .unwrap();

    relay.stop();
    let cut = Instant::now();
    // Consul away, sources writable: nothing changes.
    while cut.elapsed() < Duration::from_secs(4) {
        assert_eq!(
            new_server_id(rig.c1.port()).await.unwrap(),
            1,
            "c1 during the outage"
        );
        assert_eq!(
            new_server_id(rig.c2.port()).await.unwrap(),
            1,
            "c2 during the outage"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // c2's source unreachable: maintenance; c1 keeps routing.
    db1_relay.stop();
    wait_until(ROUTE_TIMEOUT, || async {
        new_server_id(rig.c2.port()).await.is_err()
    })
    .await
    .unwrap_or_else(|_| panic!("c2 still routed to an unreachable source"));
    db1_relay.resume();
    assert_eq!(new_server_id(rig.c1.port()).await.unwrap(), 1);

    // db1 read-only: c1 goes into maintenance.
    db1.set_read_only(true).await.unwrap();
    let ro = Instant::now();
    let out = wait_until(ROUTE_TIMEOUT, || async {
        new_server_id(rig.c1.port()).await.is_err()
    })
    .await;
    db1.set_read_only(false).await.unwrap();
    out.unwrap_or_else(|_| {
        panic!(
            "c1 still routed to a read-only db1\n{}",
            rig.renderer.proc.log_tail(30)
        )
    });
    eprintln!(
        "cut off: db1 read-only -> c1 in maintenance in {:?}",
        ro.elapsed()
    );

    // Sticky: writable and reachable again, but only KV may say so.
    let sticky = Instant::now();
    while sticky.elapsed() < Duration::from_secs(3) {
        assert!(
            new_server_id(rig.c1.port()).await.is_err(),
            "c1 routed again while cut off"
        );
        assert!(
            new_server_id(rig.c2.port()).await.is_err(),
            "c2 routed again while cut off"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        rig.renderer.log().contains("in maintenance"),
        "{}",
        rig.renderer.proc.log_tail(30)
    );

    // Meanwhile c1 moved to db2 in KV. Once Consul answers, c1 goes
    // straight to db2: a render from what the watches held before the cut
    // would have routed it to db1 again first.
    let db2 = dbs.server(1);
    rig.put("master/c1", &db2.addr()).await;
    relay.resume();
    let back = Instant::now();
    let mut seen = Vec::new();
    while back.elapsed() < ROUTE_TIMEOUT {
        let id = new_server_id(rig.c1.port()).await.ok();
        seen.push(id);
        if id == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen.last(), Some(&Some(2)), "c1 never followed KV to db2");
    assert!(
        !seen.contains(&Some(1)),
        "c1 went back to db1 on stale KV after Consul answered: {seen:?}"
    );
    eprintln!("Consul back -> c1 on db2 in {:?}", back.elapsed());
    wait_routed(rig.c2.port(), 1, "c2 once Consul answers").await;
    rig.renderer.assert_running();
}
