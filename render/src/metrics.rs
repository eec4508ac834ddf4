//! Prometheus text exposition, by hand: a handful of counters, gauges and
//! one histogram do not justify a metrics framework.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `successover_render_renders_total` | counter | `outcome`: written, unchanged, failed |
//! | `successover_render_applies_total` | counter | `path`: runtime, reload, none |
//! | `successover_render_errors_total` | counter | `stage`: consul, template, validate, write, apply |
//! | `successover_render_rejected_total` | counter | `reason`: one per model rejection, per render |
//! | `successover_render_rejected_values` | gauge | `reason`: rejections in the last render |
//! | `successover_render_clusters` | gauge | `state`: routed, fenced |
//! | `successover_render_last_success_timestamp_seconds` | gauge | last fully applied render |
//! | `successover_render_apply_latency_seconds` | histogram | KV change seen → HAProxy applied |
//! | `successover_render_config_reloads_total` | counter | `outcome`: applied, failed (SIGHUP) |
//! | `successover_consul_requests_total` | counter | `op`: kv list blocking, kv get, txn, session renew, … |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use successover_common::telemetry::{serve_metrics, Exposition, Readiness};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
struct Inner {
    renders: BTreeMap<&'static str, u64>,
    applies: BTreeMap<&'static str, u64>,
    errors: BTreeMap<&'static str, u64>,
    rejected_total: BTreeMap<&'static str, u64>,
    rejected_now: BTreeMap<&'static str, u64>,
    routed: u64,
    fenced: u64,
    last_success: Option<f64>,
    latency: Histogram,
    config_reloads: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        // A panic while holding the lock leaves plain counters behind;
        // they are still worth serving.
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    pub fn render(&self, outcome: &'static str) {
        self.with(|m| *m.renders.entry(outcome).or_default() += 1);
    }

    pub fn apply(&self, path: &'static str) {
        self.with(|m| *m.applies.entry(path).or_default() += 1);
    }

    pub fn error(&self, stage: &'static str) {
        self.with(|m| *m.errors.entry(stage).or_default() += 1);
    }

    /// A SIGHUP config reload: `applied` or `failed`.
    pub fn config_reload(&self, outcome: &'static str) {
        self.with(|m| *m.config_reloads.entry(outcome).or_default() += 1);
    }

    /// The rejections of one render, by reason.
    pub fn rejected(&self, reasons: impl IntoIterator<Item = &'static str>) {
        self.with(|m| {
            m.rejected_now.values_mut().for_each(|v| *v = 0);
            for r in reasons {
                *m.rejected_total.entry(r).or_default() += 1;
                *m.rejected_now.entry(r).or_default() += 1;
            }
        });
    }

    pub fn clusters(&self, routed: usize, fenced: usize) {
        self.with(|m| {
            m.routed = routed as u64;
            m.fenced = fenced as u64;
        });
    }

    /// A render fully applied; `latency` from the KV change that caused it.
    pub fn success(&self, latency: Option<Duration>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.with(|m| {
            m.last_success = Some(now);
            if let Some(l) = latency {
                let secs = l.as_secs_f64();
                for (i, bound) in BUCKETS.iter().enumerate() {
                    if secs <= *bound {
                        m.latency.counts[i] += 1;
                    }
                }
                m.latency.count += 1;
                m.latency.sum += secs;
            }
        });
    }

    /// Ready once a configuration read from Consul was rendered and
    /// applied to HAProxy. It stays ready through a Consul outage: the
    /// last good configuration keeps serving.
    pub fn readiness(&self) -> Result<(), String> {
        self.with(|m| match m.last_success {
            Some(_) => Ok(()),
            None => Err("no configuration from Consul applied to HAProxy yet".to_owned()),
        })
    }

    pub fn exposition(&self) -> String {
        self.with(|m| {
            let mut out = String::new();
            let counter =
                |out: &mut String, name: &str, help: &str, label: &str, values: &BTreeMap<&str, u64>| {
                    let _ = writeln!(out, "# HELP {name} {help}");
                    let _ = writeln!(out, "# TYPE {name} counter");
                    for (k, v) in values {
                        let _ = writeln!(out, "{name}{{{label}=\"{k}\"}} {v}");
                    }
                };
            counter(
                &mut out,
                "successover_render_renders_total",
                "Render cycles by outcome.",
                "outcome",
                &m.renders,
            );
            counter(
                &mut out,
                "successover_render_applies_total",
                "Applies to HAProxy by path.",
                "path",
                &m.applies,
            );
            counter(
                &mut out,
                "successover_render_errors_total",
                "Failures by stage; the last good config keeps serving.",
                "stage",
                &m.errors,
            );
            counter(
                &mut out,
                "successover_render_rejected_total",
                "KV values rejected by validation, counted per render.",
                "reason",
                &m.rejected_total,
            );
            counter(
                &mut out,
                "successover_render_config_reloads_total",
                "Config and template reloads on SIGHUP; a failed one keeps the running config.",
                "outcome",
                &m.config_reloads,
            );
            let _ = writeln!(
                out,
                "# HELP successover_render_rejected_values KV values rejected in the last render.\n# TYPE successover_render_rejected_values gauge"
            );
            for (k, v) in &m.rejected_now {
                let _ = writeln!(out, "successover_render_rejected_values{{reason=\"{k}\"}} {v}");
            }
            let _ = writeln!(
                out,
                "# HELP successover_render_clusters Clusters in the rendered config.\n# TYPE successover_render_clusters gauge\nsuccessover_render_clusters{{state=\"routed\"}} {}\nsuccessover_render_clusters{{state=\"fenced\"}} {}",
                m.routed, m.fenced
            );
            let _ = writeln!(
                out,
                "# HELP successover_render_last_success_timestamp_seconds When a render was last fully applied.\n# TYPE successover_render_last_success_timestamp_seconds gauge\nsuccessover_render_last_success_timestamp_seconds {}",
                m.last_success.unwrap_or(0.0)
            );
            let name = "successover_render_apply_latency_seconds";
            let _ = writeln!(
                out,
                "# HELP {name} From seeing a KV change to HAProxy serving it.\n# TYPE {name} histogram"
            );
            for (i, bound) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{le=\"{bound}\"}} {}",
                    m.latency.counts[i]
                );
            }
            let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", m.latency.count);
            let _ = writeln!(out, "{name}_sum {}", m.latency.sum);
            let _ = writeln!(out, "{name}_count {}", m.latency.count);
            out
        })
    }
}

/// Serves `GET /metrics` until cancelled, with the Consul client's request
/// counts (`successover_consul_requests_total`).
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    consul: successover_common::consul::Consul,
    cancel: CancellationToken,
) {
    let m = metrics.clone();
    let exposition: Exposition = Arc::new(move || {
        m.exposition() + &successover_common::telemetry::consul_requests_exposition(&consul)
    });
    let readiness: Readiness = Arc::new(move || metrics.readiness());
    serve_metrics(listener, exposition, readiness, cancel).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn exposition_format() {
        let m = Metrics::default();
        m.render("written");
        m.render("written");
        m.apply("runtime");
        m.error("consul");
        m.rejected(["invalid_value", "invalid_value", "missing_settings"]);
        m.rejected(["missing_settings"]);
        m.clusters(3, 1);
        m.success(Some(Duration::from_millis(30)));
        m.config_reload("failed");
        let text = m.exposition();
        for line in [
            "successover_render_renders_total{outcome=\"written\"} 2",
            "successover_render_applies_total{path=\"runtime\"} 1",
            "successover_render_errors_total{stage=\"consul\"} 1",
            "successover_render_rejected_total{reason=\"invalid_value\"} 2",
            "successover_render_rejected_total{reason=\"missing_settings\"} 2",
            "successover_render_rejected_values{reason=\"invalid_value\"} 0",
            "successover_render_rejected_values{reason=\"missing_settings\"} 1",
            "successover_render_clusters{state=\"fenced\"} 1",
            "successover_render_apply_latency_seconds_bucket{le=\"0.025\"} 0",
            "successover_render_apply_latency_seconds_bucket{le=\"0.05\"} 1",
            "successover_render_apply_latency_seconds_bucket{le=\"+Inf\"} 1",
            "successover_render_apply_latency_seconds_count 1",
            "successover_render_config_reloads_total{outcome=\"failed\"} 1",
            "# TYPE successover_render_apply_latency_seconds histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("last_success_timestamp_seconds 0\n"));
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::default());
        metrics.render("unchanged");
        let cancel = CancellationToken::new();
        let consul = successover_common::consul::Consul::new(
            successover_common::consul::ConsulConfig::new("http://127.0.0.1:1"),
        )
        .unwrap();
        let server = tokio::spawn(serve(listener, metrics.clone(), consul, cancel.clone()));

        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.contains("successover_render_renders_total{outcome=\"unchanged\"} 1"));
        assert!(ok.contains("# TYPE successover_consul_requests_total counter"));
        assert!(get("/").await.starts_with("HTTP/1.1 404"));
        assert!(get("/health").await.starts_with("HTTP/1.1 200 OK"));
        let not_ready = get("/ready").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        assert!(not_ready.contains("no configuration"), "{not_ready}");
        metrics.success(None);
        assert!(get("/ready").await.starts_with("HTTP/1.1 200 OK"));
        cancel.cancel();
        server.await.unwrap();
    }
}
