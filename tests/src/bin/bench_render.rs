//! How fast does `successover-render` move traffic? Starts Consul, two
//! MariaDB servers, HAProxy and the renderer daemon (its own process, as in
//! production), then flips `mysql/master/c1` between the two servers N
//! times and measures, each time, from just before the KV put until the
//! first new connection through HAProxy lands on the new server. A client
//! polls for that as fast as it can: connect through the proxy port,
//! `SELECT @@server_id`, one attempt after the other.
//!
//! ```text
//! cargo build -p successover-render
//! cargo run -p successover-tests --bin successover-bench-render -- --switches 30
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use successover_common::consul::{Consul, ConsulConfig};
use successover_tests::mariadb::{ROOT_PASSWORD, ROOT_USER};
use successover_tests::{
    bins, reserve_port, wait_until, ConsulDev, HaProxy, MariaDb, MariaDbOptions, Proc,
    RenderConfig, Scratch,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USAGE: &str = "usage: successover-bench-render [--switches N]";

fn parse_args() -> anyhow::Result<usize> {
    let mut switches = 30;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--switches" => {
                let n = args.next().context(USAGE)?;
                switches = n
                    .parse()
                    .with_context(|| format!("--switches {n}: {USAGE}"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    if switches == 0 {
        bail!("--switches must be at least 1");
    }
    Ok(switches)
}

/// Which server a new connection through the proxy lands on; `None` while
/// the proxy refuses or the server is not reachable.
async fn landed_on(port: u16) -> Option<u32> {
    let opts = OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some(ROOT_USER))
        .pass(Some(ROOT_PASSWORD))
        .prefer_socket(false);
    let attempt = async {
        let mut conn = Conn::new(opts).await.ok()?;
        let id: Option<u32> = conn.query_first("SELECT @@server_id").await.ok()?;
        let _ = conn.disconnect().await;
        id
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
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

/// A `Name:   1234 kB` field of `/proc/<pid>/status`, in KiB.
fn status_kib(status: &str, name: &str) -> anyhow::Result<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {name} in /proc/<pid>/status"))
}

/// (VmRSS in KiB, user + system CPU seconds) of a process.
fn usage(pid: u32) -> anyhow::Result<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status_kib(&status, "VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields are counted
    // after its closing parenthesis; utime and stime are fields 14 and 15.
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
    Ok((rss_kib, (ticks(14)? + ticks(15)?) as f64 / hz))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

async fn version(program: &Path, arg: &str) -> String {
    tokio::process::Command::new(program)
        .arg(arg)
        .output()
        .await
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let switches = parse_args()?;
    let render_bin = bins::successover_render();

    eprintln!("== starting Consul, two MariaDB servers and HAProxy");
    let (consul_agent, db1, db2) = tokio::join!(
        ConsulDev::start(),
        MariaDb::start(MariaDbOptions::new("db1", 1)),
        MariaDb::start(MariaDbOptions::new("db2", 2)),
    );
    let servers = [&db1, &db2];
    let haproxy = HaProxy::start("").await;
    let consul = Consul::new(ConsulConfig::new(consul_agent.http_addr()))?;
    let proxy = reserve_port();
    let metrics_port = reserve_port();
    consul
        .kv_put(
            "mysql/cluster/c1",
            format!(r#"{{"proxy_port": {}}}"#, proxy.port()),
        )
        .await?;
    consul.kv_put("mysql/master/c1", db1.addr()).await?;

    let dir = Scratch::new("bench-render");
    let config = dir.path().join("render.toml");
    RenderConfig::for_harness(&consul_agent.http_addr(), &haproxy)
        .metrics(SocketAddr::from(([127, 0, 0, 1], metrics_port.port())))
        .write(&config);
    let mut cmd = std::process::Command::new(render_bin);
    cmd.arg("-c").arg(&config).env("RUST_LOG", "warn");
    for var in [
        "CONSUL_HTTP_ADDR",
        "CONSUL_HTTP_TOKEN",
        "CONSUL_HTTP_TOKEN_FILE",
    ] {
        cmd.env_remove(var);
    }
    let log = dir.path().join("render.log");
    let mut renderer = Proc::spawn("successover-render", cmd, &log).await?;
    let started = Instant::now();
    let routed = wait_until(Duration::from_secs(30), || async {
        landed_on(proxy.port()).await == Some(1)
    })
    .await;
    if routed.is_err() {
        bail!(
            "c1 never routed to db1; renderer log:\n{}",
            renderer.log_tail(30)
        );
    }
    let (rss_start, cpu_start) = usage(renderer.pid())?;

    eprintln!("== {switches} switches of c1 between db1 and db2");
    let mut put_to_route = Vec::with_capacity(switches);
    let mut put_only = Vec::with_capacity(switches);
    let mut attempts = 0u64;
    for i in 0..switches {
        let to = servers[(i + 1) % 2];
        let t0 = Instant::now();
        consul.kv_put("mysql/master/c1", to.addr()).await?;
        put_only.push(t0.elapsed());
        loop {
            attempts += 1;
            if landed_on(proxy.port()).await == Some(to.server_id()) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!(
                    "switch {i}: c1 did not move to {} within 30 s; renderer log:\n{}",
                    to.name(),
                    renderer.log_tail(30)
                );
            }
        }
        put_to_route.push(t0.elapsed());
        // Let the old connections drain and the renderer settle, so each
        // switch starts from a quiet system.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let text = metrics(metrics_port.port()).await.unwrap_or_default();
    let (rss_end, cpu_end) = usage(renderer.pid())?;
    let hwm_kib = status_kib(
        &std::fs::read_to_string(format!("/proc/{}/status", renderer.pid()))?,
        "VmHWM",
    )?;
    let runtime_applies = metric(&text, "successover_render_applies_total{path=\"runtime\"}");
    let reloads = metric(&text, "successover_render_applies_total{path=\"reload\"}");
    let latency_sum = metric(&text, "successover_render_apply_latency_seconds_sum");
    let latency_count = metric(&text, "successover_render_apply_latency_seconds_count");
    let errors: u64 = text
        .lines()
        .filter(|l| l.starts_with("successover_render_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    if renderer.exit_status().is_some() {
        bail!("the renderer exited; log:\n{}", renderer.log_tail(30));
    }

    let haproxy_version = version(bins::haproxy(), "-v").await;
    let mariadb_version = version(bins::mariadbd(), "--version").await;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!("successover-render: KV put -> first new connection on the new source");
    println!("  {switches} switches of c1 between two MariaDB servers, {cores} cores");
    println!("  {haproxy_version}");
    println!("  {mariadb_version}");
    println!();
    println!(
        "  {:<34} {:>8} {:>8} {:>8} {:>8}",
        "(ms)", "min", "p50", "p99", "max"
    );
    for (label, samples) in [
        ("KV put -> routed to new source", &mut put_to_route),
        ("  of which the KV put itself", &mut put_only),
    ] {
        samples.sort();
        println!(
            "  {:<34} {:>8} {:>8} {:>8} {:>8}",
            label,
            ms(samples[0]),
            ms(percentile(samples, 50.0)),
            ms(percentile(samples, 99.0)),
            ms(*samples.last().expect("at least one switch")),
        );
    }
    if latency_count > 0.0 {
        println!(
            "  {:<34} {:>8.1}   (renderer's own histogram: KV change seen -> applied)",
            "renderer apply latency, mean",
            latency_sum / latency_count * 1000.0
        );
    }
    println!();
    println!(
        "  client probes: {attempts} ({:.1} per switch)",
        attempts as f64 / switches as f64
    );
    println!(
        "  applies: {runtime_applies} through the runtime API, {reloads} reloads (the first adds c1); errors: {errors}"
    );
    println!(
        "  renderer pid {}: RSS {:.1} MiB at start, {:.1} MiB at end (peak {:.1} MiB); \
         CPU {:.2} s over {:.0} s, {:.2} s of it during the switches",
        renderer.pid(),
        rss_start as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        hwm_kib as f64 / 1024.0,
        cpu_end,
        started.elapsed().as_secs_f64(),
        cpu_end - cpu_start,
    );

    renderer.stop().await;
    drop(haproxy);
    Ok(())
}
