//! Async Consul HTTP client: KV (with CAS, recurse, keys), blocking queries,
//! sessions and locks, and `/v1/txn`.
//!
//! Only the subset successover needs, but each part follows Consul's
//! documented rules (blocking-query index handling, 404 on session renew,
//! `X-Consul-Token` never logged).

mod check;
mod config;
mod error;
mod kv;
mod session;
mod txn;
mod watch;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};

pub(crate) use config::normalize_addr;
pub use config::{ConsulConfig, TlsFiles, Token};
pub use error::ConsulError;
pub use kv::KvPair;
pub use session::{keep_alive, SessionBehavior, SessionInfo, SessionRequest};
pub use txn::{TxnError, TxnOp, TxnOutcome};
pub use watch::{backoff_delay, next_index, Watch};

/// Writes that may be sent twice without harm, so they are retried even
/// when the first attempt's outcome is unknown. CAS, txn and session create
/// are not among them: a repeated CAS can report a false conflict, and a
/// repeated create leaks a session.
const IDEMPOTENT_OPS: &[&str] = &[
    "kv put",
    "kv delete",
    "kv delete recurse",
    "kv acquire",
    "kv release",
    "session renew",
    "session destroy",
    "check register",
    "check pass",
    "check deregister",
];

/// A cheap-to-clone handle; clones share one connection pool.
#[derive(Clone, Debug)]
pub struct Consul {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    cfg: ConsulConfig,
    /// Requests sent, by operation (`kv list blocking` for a read that
    /// waited on an index), each retry counted: what this process costs
    /// the Consul agent it talks to.
    requests: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    on_kv_write: std::sync::Mutex<Option<KvWriteHook>>,
}

/// Told the key of every KV write this client made, once it is done
/// (empty for a transaction or a session's end, whose keys it cannot name).
#[derive(Clone)]
pub struct KvWriteHook(pub Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for KvWriteHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KvWriteHook")
    }
}

/// The parts of a Consul answer the callers need.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub index: Option<u64>,
    pub body: Vec<u8>,
}

impl Consul {
    pub fn new(cfg: ConsulConfig) -> Result<Self, ConsulError> {
        let mut headers = HeaderMap::new();
        if let Some(token) = &cfg.token {
            let mut value = HeaderValue::from_str(token.expose())
                .map_err(|_| ConsulError::config("ACL token contains invalid characters"))?;
            // Keeps the token out of reqwest/hyper debug output.
            value.set_sensitive(true);
            headers.insert("X-Consul-Token", value);
        }
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(3))
            .pool_idle_timeout(Duration::from_secs(60));
        if let Some(ca) = &cfg.tls.ca_file {
            let pem = read_file(ca, "CA certificate")?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| ConsulError::Config {
                what: format!("CA certificate {} is not valid PEM", ca.display()),
                source: Some(Box::new(e)),
            })?;
            builder = builder
                .tls_built_in_root_certs(false)
                .add_root_certificate(cert);
        }
        match (&cfg.tls.client_cert, &cfg.tls.client_key) {
            (Some(cert), Some(key)) => {
                let mut pem = read_file(cert, "client certificate")?;
                pem.push(b'\n');
                pem.extend(read_file(key, "client key")?);
                let identity =
                    reqwest::Identity::from_pem(&pem).map_err(|e| ConsulError::Config {
                        what: format!(
                            "client certificate {} / key {} are not a valid PEM pair",
                            cert.display(),
                            key.display()
                        ),
                        source: Some(Box::new(e)),
                    })?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => {
                return Err(ConsulError::config(
                    "a client certificate needs both CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY",
                ))
            }
        }
        let http = builder.build().map_err(|e| ConsulError::Config {
            what: "cannot build the HTTP client".to_owned(),
            source: Some(Box::new(e)),
        })?;
        Ok(Consul {
            inner: Arc::new(Inner {
                http,
                cfg,
                requests: Default::default(),
                on_kv_write: Default::default(),
            }),
        })
    }

    pub fn from_env() -> Result<Self, ConsulError> {
        Self::new(ConsulConfig::from_env()?)
    }

    /// Calls `hook` after every KV write (see [`KvWriteHook`]); one hook per
    /// client, shared by its clones.
    pub fn on_kv_write(&self, hook: KvWriteHook) {
        *self
            .inner
            .on_kv_write
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// Requests sent since start, by operation (see [`Inner::requests`]).
    pub fn requests(&self) -> std::collections::BTreeMap<String, u64> {
        self.inner
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn config(&self) -> &ConsulConfig {
        &self.inner.cfg
    }

    /// The current Raft leader's address, empty while there is none.
    pub async fn leader(&self) -> Result<String, ConsulError> {
        let reply = self
            .call(
                "status leader",
                "",
                Method::GET,
                "/v1/status/leader",
                &[],
                None,
                None,
            )
            .await?;
        let leader: String = decode("status leader", "", &reply.body)?;
        Ok(leader)
    }

    /// Sends one request, retrying for up to `retry_for` while Consul's
    /// answer guarantees the request was not applied.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn call(
        &self,
        op: &'static str,
        target: &str,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<Reply, ConsulError> {
        let idempotent = method == Method::GET || IDEMPOTENT_OPS.contains(&op);
        let started = Instant::now();
        let mut attempt = 0u32;
        let result = loop {
            let result = self
                .call_once(
                    op,
                    target,
                    method.clone(),
                    path,
                    query,
                    body.clone(),
                    timeout,
                )
                .await;
            // Error statuses come back as replies (404 and 409 are answers
            // the callers interpret); 5xx and 429 are judged as errors here.
            let retryable = match &result {
                Ok(reply) if reply.status.is_server_error() || reply.status.as_u16() == 429 => {
                    status_error(op, target, reply).is_retryable_when(idempotent)
                }
                Ok(_) => false,
                Err(err) => err.is_retryable_when(idempotent),
            };
            if !retryable || started.elapsed() >= self.inner.cfg.retry_for {
                break result;
            }
            let delay = backoff_delay(attempt);
            tracing::debug!(op, target, ?delay, "retrying Consul request");
            tokio::time::sleep(delay).await;
            attempt += 1;
        };
        let writes_kv = method != Method::GET
            && (op.starts_with("kv ") || op == "txn" || op == "session destroy");
        if writes_kv {
            let hook = self
                .inner
                .on_kv_write
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(hook) = hook {
                let key = if op.starts_with("kv ") { target } else { "" };
                (hook.0)(key);
            }
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn call_once(
        &self,
        op: &'static str,
        target: &str,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<Reply, ConsulError> {
        let cfg = &self.inner.cfg;
        {
            let blocking = query.iter().any(|(k, _)| *k == "index");
            let label = if blocking {
                format!("{op} blocking")
            } else {
                op.to_owned()
            };
            let mut counts = self
                .inner
                .requests
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            *counts.entry(label).or_default() += 1;
        }
        let url = format!("{}{}", cfg.addr, path);
        let timeout = timeout.unwrap_or(cfg.request_timeout);
        let mut req = self
            .inner
            .http
            .request(method, &url)
            .timeout(timeout)
            .query(query);
        if let Some(dc) = &cfg.datacenter {
            req = req.query(&[("dc", dc)]);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let transport = |source: reqwest::Error| {
            if source.is_timeout() {
                ConsulError::Timeout {
                    op,
                    target: target.to_owned(),
                    timeout,
                }
            } else {
                ConsulError::Unreachable {
                    op,
                    target: target.to_owned(),
                    addr: cfg.addr.clone(),
                    source,
                }
            }
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let index = resp
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = resp.bytes().await.map_err(transport)?.to_vec();
        Ok(Reply {
            status,
            index,
            body,
        })
    }
}

impl Consul {
    /// A blocking query's parameters: with `index > 0`, Consul holds the
    /// request until its result changes past `index` or `wait` passes; the
    /// request's timeout then covers the hold (plus the up to wait/16 of
    /// jitter Consul adds). Appended to `query`; returns the timeout.
    pub(crate) fn blocking(
        &self,
        query: &mut Vec<(&'static str, String)>,
        index: u64,
        wait: Option<Duration>,
    ) -> Option<Duration> {
        if index == 0 {
            return None;
        }
        query.push(("index", index.to_string()));
        let wait = wait?;
        query.push(("wait", format!("{}ms", wait.as_millis())));
        Some(wait + wait / 16 + self.config().request_timeout)
    }
}

/// Turns a non-success reply into a typed error carrying Consul's message.
pub(crate) fn expect_ok(
    op: &'static str,
    target: &str,
    reply: Reply,
) -> Result<Reply, ConsulError> {
    if reply.status.is_success() {
        Ok(reply)
    } else {
        Err(status_error(op, target, &reply))
    }
}

pub(crate) fn status_error(op: &'static str, target: &str, reply: &Reply) -> ConsulError {
    let mut body = String::from_utf8_lossy(&reply.body).trim().to_owned();
    body.truncate(512);
    ConsulError::Status {
        op,
        target: target.to_owned(),
        status: reply.status.as_u16(),
        body,
    }
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    op: &'static str,
    target: &str,
    body: &[u8],
) -> Result<T, ConsulError> {
    serde_json::from_slice(body).map_err(|e| ConsulError::Decode {
        op,
        target: target.to_owned(),
        source: Box::new(e),
    })
}

fn read_file(path: &std::path::Path, what: &str) -> Result<Vec<u8>, ConsulError> {
    std::fs::read(path).map_err(|e| ConsulError::Config {
        what: format!("cannot read {what} {}", path.display()),
        source: Some(Box::new(e)),
    })
}

/// Keys go into the URL path; escape what would change its meaning while
/// keeping `/` as the hierarchy separator Consul expects.
pub(crate) fn key_path(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 8);
    out.push_str("/v1/kv/");
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_path_escapes_query_and_fragment_characters() {
        assert_eq!(key_path("mysql/master/c1"), "/v1/kv/mysql/master/c1");
        assert_eq!(key_path("a?b#c d"), "/v1/kv/a%3Fb%23c%20d");
    }
}
