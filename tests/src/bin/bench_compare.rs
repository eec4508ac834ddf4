//! successover-render against the setup it replaces, side by side in one
//! run: consul-template rendering the same HAProxy file and reloading
//! HAProxy the way Debian's `systemctl reload haproxy` does (`haproxy -c`,
//! then SIGUSR2 to the master).
//!
//! One Consul dev agent, two MariaDB servers and two independent HAProxy
//! instances:
//!
//! - A: HAProxy driven by `successover-render` (runtime API, sessions to
//!   the old source shut down), watching `cmp-a/mysql/`;
//! - B: HAProxy driven by `consul-template` (file + reload), watching
//!   `cmp-b/mysql/master/c1`.
//!
//! Each proxy has its own key, so neither wakes for the other's change and
//! each switch is measured on an otherwise quiet machine; every switch
//! writes the same value to both keys, one after the other (A first on even
//! switches, B first on odd ones). For each it measures the time from just
//! before the KV put to the first new connection through that proxy that
//! lands on the new server (connect, `SELECT @@server_id`, one attempt
//! after the other), and whether a connection opened through the proxy
//! before the switch is still open to the old server one second after.
//! Then it reports RSS and CPU of both daemons and both HAProxy instances.
//!
//! Last, three `successover-agent` processes run a three-server cluster
//! and their RSS and CPU are sampled over `--idle-seconds` of idle (the two
//! renderers keep running, so their idle cost is shown too).
//!
//! ```text
//! SUCCESSOVER_SETUP_BENCH=1 scripts/setup.sh
//! cargo build -p successover-render -p successover-agent
//! cargo run -p successover-tests --bin successover-bench-compare -- --switches 30
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use successover_common::consul::{Consul, ConsulConfig};
use successover_tests::agent::{AgentOptions, AgentProc};
use successover_tests::mariadb::{global_var, status_var, ROOT_PASSWORD, ROOT_USER};
use successover_tests::{
    bins, reserve_port, wait_until, ConsulDev, HaProxy, MariaDb, MariaDbOptions, Proc,
    RenderConfig, Scratch, Topology,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USAGE: &str = "usage: successover-bench-compare [--switches N] [--idle-seconds S]";

/// How long after the traffic moved the connection opened before the
/// switch is checked.
const SURVIVAL_CHECK_AFTER: Duration = Duration::from_secs(1);
/// Between two switches, so each starts from a quiet system.
const PAUSE: Duration = Duration::from_millis(200);
/// The agent's production timing (agent/src/config.rs defaults), not the
/// harness's faster test timing.
const AGENT_TICK: Duration = Duration::from_secs(1);
const AGENT_SESSION_TTL: Duration = Duration::from_secs(10);
const AGENT_LOCK_DELAY: Duration = Duration::from_secs(1);
const IDLE_SETTLE: Duration = Duration::from_secs(10);

const KEY_A_PREFIX: &str = "cmp-a/mysql/";
const KEY_B: &str = "cmp-b/mysql/master/c1";

struct Args {
    switches: usize,
    idle_seconds: u64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut out = Args {
        switches: 30,
        idle_seconds: 30,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--switches" => {
                let n = args.next().context(USAGE)?;
                out.switches = n
                    .parse()
                    .with_context(|| format!("--switches {n}: {USAGE}"))?;
            }
            "--idle-seconds" => {
                let n = args.next().context(USAGE)?;
                out.idle_seconds = n
                    .parse()
                    .with_context(|| format!("--idle-seconds {n}: {USAGE}"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}\n  --idle-seconds 0 skips the agent idle measurement");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    if out.switches == 0 {
        bail!("--switches must be at least 1");
    }
    Ok(out)
}

fn opts(port: u16) -> OptsBuilder {
    OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some(ROOT_USER))
        .pass(Some(ROOT_PASSWORD))
        .prefer_socket(false)
}

/// Which server a new connection through the proxy lands on; `None` while
/// the proxy refuses or the server is not reachable.
async fn landed_on(port: u16) -> Option<u32> {
    let attempt = async {
        let mut conn = Conn::new(opts(port)).await.ok()?;
        let id: Option<u32> = conn.query_first("SELECT @@server_id").await.ok()?;
        let _ = conn.disconnect().await;
        id
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
}

/// A connection through the proxy and the server it landed on.
async fn open(port: u16) -> anyhow::Result<(Conn, u32)> {
    let attempt = async {
        let mut conn = Conn::new(opts(port)).await?;
        let id: Option<u32> = conn.query_first("SELECT @@server_id").await?;
        anyhow::Ok((conn, id.context("no @@server_id")?))
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .context("timed out")?
}

/// Whether `conn` still reaches server `id`.
async fn still_on(conn: &mut Conn, id: u32) -> bool {
    let query = conn.query_first::<u32, _>("SELECT @@server_id");
    matches!(
        tokio::time::timeout(Duration::from_secs(2), query).await,
        Ok(Ok(Some(got))) if got == id
    )
}

async fn metrics(port: u16) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// What `/proc` says about one process.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    rss_kib: u64,
    hwm_kib: u64,
    /// utime + stime, seconds.
    cpu: f64,
    /// cutime + cstime: children it has waited for (`haproxy -c`, reload
    /// commands, old HAProxy workers), seconds.
    children_cpu: f64,
}

impl Usage {
    fn add(self, other: Usage) -> Usage {
        Usage {
            rss_kib: self.rss_kib + other.rss_kib,
            hwm_kib: self.hwm_kib + other.hwm_kib,
            cpu: self.cpu + other.cpu,
            children_cpu: self.children_cpu + other.children_cpu,
        }
    }

    fn total_cpu(&self) -> f64 {
        self.cpu + self.children_cpu
    }
}

/// A `Name:   1234 kB` field of `/proc/<pid>/status`, in KiB.
fn status_kib(status: &str, name: &str) -> anyhow::Result<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {name} in /proc/<pid>/status"))
}

fn usage(pid: u32) -> anyhow::Result<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("/proc/{pid}/status"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields are counted
    // after its closing parenthesis; utime, stime, cutime and cstime are
    // fields 14 to 17.
    let rest = &stat[stat.rfind(')').context("malformed /proc/<pid>/stat")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(i - 3)
            .context("short /proc/<pid>/stat")?
            .parse()?)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(Usage {
        rss_kib: status_kib(&status, "VmRSS")?,
        hwm_kib: status_kib(&status, "VmHWM")?,
        cpu: (ticks(14)? + ticks(15)?) as f64 / hz,
        children_cpu: (ticks(16)? + ticks(17)?) as f64 / hz,
    })
}

/// Master plus current workers of an HAProxy instance. The master's
/// children time holds the old workers that have exited (and, for B, none
/// of the reload commands: those are consul-template's children).
async fn haproxy_usage(h: &HaProxy) -> anyhow::Result<Usage> {
    let mut total = usage(h.pid())?;
    for pid in h.worker_pids().await? {
        if let Ok(u) = usage(pid) {
            total = total.add(u);
        }
    }
    // A sum of peaks would mean nothing: only RSS is reported.
    total.hwm_kib = 0;
    Ok(total)
}

/// The master's reload count from `show proc`.
async fn haproxy_reloads(h: &HaProxy) -> anyhow::Result<u64> {
    let proc = h.master_cmd("show proc").await?;
    proc.lines()
        .find(|l| l.split_whitespace().nth(1) == Some("master"))
        .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
        .context("no master line in `show proc`")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// First line of `program arg`, stdout or else stderr.
async fn version(program: &Path, arg: &str) -> String {
    let Ok(out) = tokio::process::Command::new(program)
        .arg(arg)
        .output()
        .await
    else {
        return String::new();
    };
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// `/proc/loadavg`'s 1-minute figure: other work on the machine skews
/// the latencies.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                Some(
                    l.strip_prefix("model name")?
                        .split_once(':')?
                        .1
                        .trim()
                        .to_owned(),
                )
            })
        })
        .unwrap_or_default()
}

/// HAProxy B's file as consul-template renders it: the renderer's default
/// template (templates/haproxy.cfg.j2) for one cluster without a health
/// check, with the source from the KV key. `source` None gives the
/// consul-template template itself.
fn config_b(admin_socket: &Path, port: u16, source: Option<&str>) -> String {
    let key = format!(r#"{{{{ key "{KEY_B}" }}}}"#);
    format!(
        "# Written by consul-template (successover-bench-compare).
global
    master-worker
    stats socket {admin} mode 600 level admin expose-fd listeners
    stats timeout 30s
    hard-stop-after 1h

defaults
    mode tcp
    timeout connect 1s
    timeout client 8h
    timeout server 8h
    timeout check 2s
    retries 1
    default-server init-addr libc,none
    option tcpka

listen c1
    bind 127.0.0.1:{port}
    server source {server} on-marked-down shutdown-sessions
",
        admin = admin_socket.display(),
        server = source.unwrap_or(&key),
    )
}

/// One proxy under test and what was measured through it.
struct Side {
    name: &'static str,
    key: String,
    port: u16,
    put_to_route: Vec<Duration>,
    put_only: Vec<Duration>,
    survived: usize,
    probes: u64,
    failed_probes: u64,
}

impl Side {
    fn new(name: &'static str, key: String, port: u16, switches: usize) -> Side {
        Side {
            name,
            key,
            port,
            put_to_route: Vec::with_capacity(switches),
            put_only: Vec::with_capacity(switches),
            survived: 0,
            probes: 0,
            failed_probes: 0,
        }
    }

    /// Moves this proxy's source from `from` to `to` and measures.
    async fn switch(
        &mut self,
        consul: &Consul,
        from: &MariaDb,
        to: &MariaDb,
        log: impl Fn() -> String,
    ) -> anyhow::Result<()> {
        // An application connection on the old source, from before the
        // switch.
        let (mut old, on) = open(self.port)
            .await
            .with_context(|| format!("{}: connecting through the proxy", self.name))?;
        ensure!(
            on == from.server_id(),
            "{}: a connection before the switch landed on server {on}, not {}",
            self.name,
            from.name()
        );
        let t0 = Instant::now();
        consul.kv_put(&self.key, to.addr()).await?;
        self.put_only.push(t0.elapsed());
        loop {
            self.probes += 1;
            match landed_on(self.port).await {
                Some(id) if id == to.server_id() => break,
                Some(_) => {}
                None => self.failed_probes += 1,
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!(
                    "{}: traffic did not move to {} within 30 s; log:\n{}",
                    self.name,
                    to.name(),
                    log()
                );
            }
        }
        let took = t0.elapsed();
        self.put_to_route.push(took);
        eprintln!(
            "   {:<26} {} -> {}: {} ms",
            self.name,
            from.name(),
            to.name(),
            ms(took)
        );
        tokio::time::sleep(SURVIVAL_CHECK_AFTER).await;
        if still_on(&mut old, from.server_id()).await {
            self.survived += 1;
        }
        // Closing it lets an old HAProxy worker that kept it exit.
        let _ = tokio::time::timeout(Duration::from_secs(2), old.disconnect()).await;
        Ok(())
    }
}

fn row(label: &str, samples: &mut [Duration]) {
    samples.sort();
    println!(
        "  {:<38} {:>8} {:>8} {:>8} {:>8}",
        label,
        ms(samples[0]),
        ms(percentile(samples, 50.0)),
        ms(percentile(samples, 99.0)),
        ms(*samples.last().expect("at least one switch")),
    );
}

fn without_consul_env(cmd: &mut std::process::Command) {
    for var in [
        "CONSUL_HTTP_ADDR",
        "CONSUL_HTTP_TOKEN",
        "CONSUL_HTTP_TOKEN_FILE",
        "CONSUL_HTTP_SSL",
        "CONSUL_CACERT",
        "CONSUL_TOKEN",
    ] {
        cmd.env_remove(var);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let switches = args.switches;
    // Fail before starting anything if a binary is missing.
    let render_bin = bins::successover_render();
    let ct_bin = bins::consul_template();

    eprintln!("== starting Consul, two MariaDB servers and two HAProxy instances");
    let (consul_agent, db1, db2) = tokio::join!(
        ConsulDev::start(),
        MariaDb::start(MariaDbOptions::new("db1", 1)),
        MariaDb::start(MariaDbOptions::new("db2", 2)),
    );
    let servers = [&db1, &db2];
    let consul = Consul::new(ConsulConfig::new(consul_agent.http_addr()))?;
    let dir = Scratch::new("bench-compare");

    // A: successover-render.
    let haproxy_a = HaProxy::start("").await;
    let port_a = reserve_port();
    let metrics_port = reserve_port();
    consul
        .kv_put(
            &format!("{KEY_A_PREFIX}cluster/c1"),
            format!(r#"{{"proxy_port": {}}}"#, port_a.port()),
        )
        .await?;
    let key_a = format!("{KEY_A_PREFIX}master/c1");
    consul.kv_put(&key_a, db1.addr()).await?;
    let render_config = dir.path().join("render.toml");
    RenderConfig::for_harness(&consul_agent.http_addr(), &haproxy_a)
        .prefix(KEY_A_PREFIX)
        .metrics(SocketAddr::from(([127, 0, 0, 1], metrics_port.port())))
        .write(&render_config);
    let mut cmd = std::process::Command::new(render_bin);
    cmd.arg("-c").arg(&render_config).env("RUST_LOG", "warn");
    without_consul_env(&mut cmd);
    let mut renderer =
        Proc::spawn("successover-render", cmd, dir.path().join("render.log")).await?;

    // B: consul-template. HAProxy starts from the file consul-template
    // would render for db1, so its first render changes nothing and runs
    // no reload.
    let port_b = reserve_port();
    consul.kv_put(KEY_B, db1.addr()).await?;
    let haproxy_b = HaProxy::start_with(|paths| {
        config_b(&paths.admin_socket, port_b.port(), Some(&db1.addr()))
    })
    .await;
    let pb = haproxy_b.paths();
    let ctmpl = dir.path().join("haproxy.cfg.ctmpl");
    std::fs::write(&ctmpl, config_b(&pb.admin_socket, port_b.port(), None))?;
    // Debian's `systemctl reload haproxy` is ExecReload=haproxy -c -q -f
    // $CONFIG, then kill -USR2 $MAINPID: the same, without systemd. No
    // `wait` block: consul-template's default, render at once.
    let reload = format!(
        "{haproxy} -c -q -f {cfg} && kill -USR2 {pid}",
        haproxy = bins::haproxy().display(),
        cfg = pb.cfg.display(),
        pid = haproxy_b.pid(),
    );
    let ct_config = dir.path().join("consul-template.hcl");
    std::fs::write(
        &ct_config,
        format!(
            r#"consul {{
  address = "127.0.0.1:{port}"
}}

template {{
  source      = "{src}"
  destination = "{dst}"
  command     = "{reload}"
}}
"#,
            port = consul_agent.http_port(),
            src = ctmpl.display(),
            dst = pb.cfg.display(),
        ),
    )?;
    let mut cmd = std::process::Command::new(ct_bin);
    cmd.arg("-config").arg(&ct_config);
    without_consul_env(&mut cmd);
    let mut ct = Proc::spawn(
        "consul-template",
        cmd,
        dir.path().join("consul-template.log"),
    )
    .await?;

    let routed = wait_until(Duration::from_secs(30), || async {
        landed_on(port_a.port()).await == Some(1) && landed_on(port_b.port()).await == Some(1)
    })
    .await;
    if routed.is_err() {
        bail!(
            "c1 never routed to db1 through both proxies; renderer log:\n{}\nconsul-template log:\n{}",
            renderer.log_tail(30),
            ct.log_tail(30)
        );
    }
    // consul-template's first render and its first blocking query.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reloads_b_start = haproxy_reloads(&haproxy_b).await?;
    let reloads_a_start = haproxy_reloads(&haproxy_a).await?;
    let started = Instant::now();
    let load_start = load_average();
    let (render_start, ct_start) = (usage(renderer.pid())?, usage(ct.pid())?);
    let (ha_start, hb_start) = (
        haproxy_usage(&haproxy_a).await?,
        haproxy_usage(&haproxy_b).await?,
    );

    eprintln!("== {switches} switches of c1 between db1 and db2 through each proxy");
    let mut a = Side::new("successover-render", key_a, port_a.port(), switches);
    let mut b = Side::new(
        "consul-template + reload",
        KEY_B.to_owned(),
        port_b.port(),
        switches,
    );
    for i in 0..switches {
        let (from, to) = (servers[i % 2], servers[(i + 1) % 2]);
        for first_a in [i % 2 == 0, i % 2 != 0] {
            if first_a {
                a.switch(&consul, from, to, || renderer.log_tail(30))
                    .await?;
            } else {
                b.switch(&consul, from, to, || ct.log_tail(30)).await?;
            }
            tokio::time::sleep(PAUSE).await;
        }
    }
    let switch_seconds = started.elapsed().as_secs_f64();
    let load_end = load_average();

    let text = metrics(metrics_port.port()).await.unwrap_or_default();
    let (render_end, ct_end) = (usage(renderer.pid())?, usage(ct.pid())?);
    let (ha_end, hb_end) = (
        haproxy_usage(&haproxy_a).await?,
        haproxy_usage(&haproxy_b).await?,
    );
    let reloads_a = haproxy_reloads(&haproxy_a).await? - reloads_a_start;
    let reloads_b = haproxy_reloads(&haproxy_b).await? - reloads_b_start;
    let runtime_applies = metric(&text, "successover_render_applies_total{path=\"runtime\"}");
    let render_errors: u64 = text
        .lines()
        .filter(|l| l.starts_with("successover_render_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    if renderer.exit_status().is_some() {
        bail!("the renderer exited; log:\n{}", renderer.log_tail(30));
    }
    if ct.exit_status().is_some() {
        bail!("consul-template exited; log:\n{}", ct.log_tail(30));
    }

    let haproxy_version = version(bins::haproxy(), "-v").await;
    let mariadb_version = version(bins::mariadbd(), "--version").await;
    let ct_version = version(ct_bin, "-version").await;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!("KV put -> first new connection through the proxy on the new server");
    println!(
        "  {switches} switches of c1 between two MariaDB servers through each proxy; {cores} cores, {}",
        cpu_model()
    );
    println!("  load average (1 min) {load_start} before the switches, {load_end} after");
    println!("  {haproxy_version}");
    println!("  {mariadb_version}");
    println!(
        "  {ct_version} (no `wait`: its default; reload = haproxy -c, then SIGUSR2 to the master)"
    );
    println!();
    println!(
        "  {:<38} {:>8} {:>8} {:>8} {:>8}",
        "(ms)", "min", "p50", "p99", "max"
    );
    row(a.name, &mut a.put_to_route);
    row(b.name, &mut b.put_to_route);
    row("  of which the KV put (render)", &mut a.put_only);
    row("  of which the KV put (consul-template)", &mut b.put_only);
    println!();
    for s in [&a, &b] {
        println!(
            "  {:<26} old connection still on the old server {} s later: {}/{switches} switches; \
             probes {} ({:.1} per switch), {} without an answer",
            s.name,
            SURVIVAL_CHECK_AFTER.as_secs(),
            s.survived,
            s.probes,
            s.probes as f64 / switches as f64,
            s.failed_probes,
        );
    }
    println!(
        "  HAProxy reloads during the switches: {reloads_a} (render: {runtime_applies} runtime-API applies, \
         {render_errors} errors), {reloads_b} (consul-template)"
    );
    println!();
    println!("Resources at the end ({switches} switches each, {switch_seconds:.0} s)");
    println!(
        "  {:<38} {:>8} {:>9} {:>14} {:>18}",
        "", "RSS MiB", "peak MiB", "CPU switches s", "+ children s"
    );
    for (label, start, end) in [
        ("successover-render", render_start, render_end),
        ("consul-template", ct_start, ct_end),
        ("HAProxy A (master + worker)", ha_start, ha_end),
        ("HAProxy B (master + worker)", hb_start, hb_end),
    ] {
        println!(
            "  {:<38} {:>8} {:>9} {:>14.2} {:>18.2}",
            label,
            mib(end.rss_kib),
            if label.starts_with("HAProxy") {
                "-".to_owned()
            } else {
                mib(end.hwm_kib)
            },
            end.cpu - start.cpu,
            end.total_cpu() - start.total_cpu(),
        );
    }
    println!(
        "  (children: `haproxy -c` for the renderer, `sh -c 'haproxy -c && kill -USR2'` for \
         consul-template, exited old workers for HAProxy)"
    );

    if args.idle_seconds > 0 {
        idle(
            &consul,
            &consul_agent,
            args.idle_seconds,
            &[
                ("successover-render", renderer.pid()),
                ("consul-template", ct.pid()),
            ],
        )
        .await?;
    }

    renderer.stop().await;
    ct.stop().await;
    drop(haproxy_a);
    drop(haproxy_b);
    Ok(())
}

/// Three agents on a three-server cluster, idle: RSS and CPU over
/// `seconds`, together with `others` (the two renderers, also idle).
async fn idle(
    consul: &Consul,
    consul_agent: &ConsulDev,
    seconds: u64,
    others: &[(&str, u32)],
) -> anyhow::Result<()> {
    const CLUSTER: &str = "idle";
    eprintln!("== three agents on a three-server cluster, then {seconds} s of idle");
    let topo = Topology::source_with_replicas(2).await;
    let proxy_port = reserve_port();
    consul
        .kv_put(
            &format!("mysql/cluster/{CLUSTER}"),
            format!(
                r#"{{"proxy_port": {}, "semi_sync_replicas": 1, "max_lag_seconds": 10}}"#,
                proxy_port.port()
            ),
        )
        .await?;
    let mut agents = Vec::new();
    for (i, db) in topo.servers().iter().enumerate() {
        let mut opts =
            AgentOptions::new(CLUSTER, &format!("db{}", i + 1), &consul_agent.http_addr());
        opts.tick = AGENT_TICK;
        opts.session_ttl = AGENT_SESSION_TTL;
        opts.lock_delay = AGENT_LOCK_DELAY;
        agents.push(AgentProc::start(opts, db).await);
    }
    let logs = |agents: &[AgentProc]| {
        agents
            .iter()
            .map(|a| format!("--- agent {}:\n{}", a.opts.node, a.log_tail(30)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let source = topo.source();
    let healthy = wait_until(Duration::from_secs(60), || async {
        let published = consul
            .kv_get(&format!("mysql/master/{CLUSTER}"))
            .await
            .ok()
            .flatten()
            .and_then(|kv| kv.value_str().map(str::to_owned));
        if published.as_deref() != Some(source.addr().as_str()) {
            return false;
        }
        let Ok(mut c) = source.conn().await else {
            return false;
        };
        let clients = status_var(&mut c, "Rpl_semi_sync_master_clients")
            .await
            .ok();
        let on = global_var(&mut c, "rpl_semi_sync_master_enabled")
            .await
            .ok();
        clients.as_deref() == Some("1") && on.as_deref() == Some("1")
    })
    .await;
    if healthy.is_err() {
        bail!("the idle cluster never became healthy\n{}", logs(&agents));
    }
    tokio::time::sleep(IDLE_SETTLE).await;
    let coordinator = consul
        .kv_get(&format!("mysql/lock/{CLUSTER}"))
        .await?
        .and_then(|kv| kv.value_str().map(str::to_owned))
        .unwrap_or_default();
    let log_size = |a: &AgentProc| {
        a.config_path()
            .parent()
            .and_then(|d| std::fs::metadata(d.join("agent.log")).ok())
            .map_or(0, |m| m.len())
    };

    let mut pids: Vec<(String, u32)> = agents
        .iter()
        .map(|a| {
            let mut label = format!("agent {}", a.opts.node);
            if a.opts.node == "db1" {
                label.push_str(" (source)");
            }
            if coordinator.ends_with(&format!("/{}", a.opts.node)) {
                label.push_str(" (coordinator)");
            }
            (label, a.pid())
        })
        .collect();
    pids.extend(others.iter().map(|(l, p)| (format!("{l}, idle"), *p)));
    let logged_before: Vec<u64> = agents.iter().map(log_size).collect();
    let before = pids
        .iter()
        .map(|(_, p)| usage(*p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let wall = t0.elapsed().as_secs_f64();
    let after = pids
        .iter()
        .map(|(_, p)| usage(*p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for a in agents.iter_mut() {
        if !a.is_running() {
            bail!("agent {} exited\n{}", a.opts.node, a.log_tail(30));
        }
    }
    let logged: Vec<u64> = agents
        .iter()
        .zip(&logged_before)
        .map(|(a, b)| log_size(a).saturating_sub(*b))
        .collect();

    println!();
    println!(
        "Idle: {seconds} s, 3 agents (tick {}, session TTL {}), \
         cluster {CLUSTER:?}, load average (1 min) {}",
        humantime::format_duration(AGENT_TICK),
        humantime::format_duration(AGENT_SESSION_TTL),
        load_average()
    );
    println!(
        "  {:<38} {:>8} {:>9} {:>16}",
        "", "RSS MiB", "peak MiB", "CPU % of a core"
    );
    for ((label, _), (b, a)) in pids.iter().zip(before.iter().zip(&after)) {
        println!(
            "  {:<38} {:>8} {:>9} {:>16.2}",
            label,
            mib(a.rss_kib),
            mib(a.hwm_kib),
            (a.cpu - b.cpu) / wall * 100.0,
        );
    }
    println!(
        "  agent log written while idle (RUST_LOG=info,successover_agent=debug): {} bytes/s (all three)",
        logged.iter().sum::<u64>() as f64 / wall
    );
    for mut a in agents {
        a.stop().await;
    }
    drop(topo);
    Ok(())
}
