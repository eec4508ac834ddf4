//! `successover-writer`: the writer of `successover_tests::writer` in a
//! process of its own, so write gaps are measured without sharing a
//! runtime with the code under test. Writes through `--host:--port` until
//! SIGTERM/SIGINT or `--seconds`, then writes its log as JSON to `--out`:
//! `{"acked": [[id, ms_since_start], ...], "failed": n, "elapsed_ms": n}`.

use std::time::Duration;

use successover_tests::writer;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let host = arg("--host").unwrap_or_else(|| "127.0.0.1".into());
    let port: u16 = arg("--port")
        .ok_or_else(|| anyhow::anyhow!("--port is required"))?
        .parse()?;
    let user = arg("--user").unwrap_or_else(|| "app".into());
    let password = arg("--password").unwrap_or_else(|| "app".into());
    let id: u32 = arg("--writer-id").unwrap_or_else(|| "1".into()).parse()?;
    let out = arg("--out").ok_or_else(|| anyhow::anyhow!("--out is required"))?;
    let seconds: Option<u64> = arg("--seconds").map(|s| s.parse()).transpose()?;
    let interval =
        Duration::from_millis(arg("--interval-ms").unwrap_or_else(|| "0".into()).parse()?);

    let cancel = CancellationToken::new();
    let run = tokio::spawn(writer::run(
        host,
        port,
        user,
        password,
        id,
        interval,
        cancel.clone(),
    ));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let limit = async {
        match seconds {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = limit => {}
    }
    cancel.cancel();
    let log = run.await?;
    let json = serde_json::json!({
        "acked": log.acked.iter().map(|(id, at)| (*id, at.as_millis() as u64)).collect::<Vec<_>>(),
        "sent": log.sent.iter().map(|at| at.as_millis() as u64).collect::<Vec<_>>(),
        "failed": log.failed,
        "elapsed_ms": log.elapsed.as_millis() as u64,
        "start_unix_ms": log.start_unix_ms,
    });
    std::fs::write(&out, serde_json::to_vec(&json)?)?;
    Ok(())
}
