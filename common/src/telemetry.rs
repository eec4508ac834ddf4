//! Logging setup and the `/metrics` endpoint shared by both daemons.

use std::error::Error;
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The log format of every successover daemon: to stderr, filtered by
/// `RUST_LOG` (`default_filter` when unset or invalid), so one `journalctl`
/// reads the same for agents and renderers.
pub fn init_logging(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: under systemd they would end
        // up in the journal as escape sequences.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// An error and its causes on one line, `outer: inner: innermost`: how
/// errors whose `Display` leaves the cause to `source()` are logged.
pub fn report(err: &dyn Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `successover_consul_requests_total{op=…}`: the requests a daemon sent
/// its Consul agent, by operation (a blocking read is `kv list blocking`).
pub fn consul_requests_exposition(consul: &crate::consul::Consul) -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "# HELP successover_consul_requests_total Requests sent to Consul, by operation.\n\
         # TYPE successover_consul_requests_total counter\n",
    );
    for (op, n) in consul.requests() {
        let _ = writeln!(out, "successover_consul_requests_total{{op=\"{op}\"}} {n}");
    }
    out
}

/// Produces the Prometheus text exposition on each scrape.
pub type Exposition = Arc<dyn Fn() -> String + Send + Sync>;

/// Whether the daemon does its job now (`/ready`), or why not.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Serves until cancelled: `GET /metrics`; `GET /health`, 200 while the
/// process answers (liveness); `GET /ready`, 200 when `readiness` says so,
/// else 503 with the reason. One request per connection: a scraper or a
/// probe needs nothing more, and there is no keep-alive state to leak.
pub async fn serve_metrics(
    listener: TcpListener,
    exposition: Exposition,
    readiness: Readiness,
    cancel: CancellationToken,
) {
    loop {
        let (mut stream, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let exposition = exposition.clone();
        let readiness = readiness.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
            let Ok(Ok(n)) = read else { return };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let path = path.split('?').next().unwrap_or("");
            let (status, body) = match (request.starts_with("GET "), path) {
                (true, "/metrics") => ("200 OK", exposition()),
                (true, "/health") => ("200 OK", "ok\n".to_owned()),
                (true, "/ready") => match readiness() {
                    Ok(()) => ("200 OK", "ready\n".to_owned()),
                    Err(why) => ("503 Service Unavailable", format!("not ready: {why}\n")),
                },
                _ => ("404 Not Found", "not found\n".to_owned()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
