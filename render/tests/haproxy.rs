//! The renderer against a real HAProxy 2.6 (`/usr/sbin/haproxy`, or
//! `$HAPROXY`): `haproxy -c` on the default template, and the whole cycle
//! (model → template → check → write → runtime API / reload) with real
//! TCP backends standing in for MySQL servers.
//!
//! A missing haproxy binary fails these tests with a message saying so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use successover_render::config::{self, Config};
use successover_render::engine::{CycleError, Engine};
use successover_render::metrics::Metrics;
use successover_render::model::Tree;
use successover_render::template::Template;
use successover_render::validate::{ValidateError, Validator};
use successover_tests::haproxy::HaProxyPaths;
use successover_tests::RenderConfig;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

fn haproxy_binary() -> PathBuf {
    let path = std::env::var_os("HAPROXY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/haproxy"));
    assert!(
        path.exists(),
        "HAProxy is required for these tests and {} does not exist: run scripts/setup.sh or set HAPROXY",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn test_config(dir: &Path, bind: &str, mysql_check_user: Option<&str>) -> Config {
    let paths = HaProxyPaths {
        dir: dir.to_owned(),
        cfg: dir.join("haproxy.cfg"),
        admin_socket: dir.join("admin.sock"),
        master_socket: dir.join("master.sock"),
        pid_file: dir.join("haproxy.pid"),
    };
    let mut c = RenderConfig::new(&paths, &haproxy_binary());
    c.haproxy.bind_address = bind.to_owned();
    c.haproxy.mysql_check_user = mysql_check_user.map(str::to_owned);
    c.haproxy.hard_stop_after = Some(Duration::from_secs(60));
    c.haproxy.reload_timeout = Some(Duration::from_secs(10));
    config::from_str(&c.toml(), &|_| None).unwrap()
}

fn tree(entries: &[(&str, &str)]) -> Tree {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), Some(v.as_bytes().to_vec())))
        .collect()
}

/// A stand-in database: greets with its name, then echoes.
async fn backend(name: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if s.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 256];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    /// Connects through the proxy and returns which backend answered.
    async fn connect(port: u16) -> (Client, Option<String>) {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut c = Client {
            reader: BufReader::new(stream),
        };
        let greeting = c.line().await;
        (c, greeting)
    }

    async fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match timeout(Duration::from_secs(3), self.reader.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => Some(line.trim().to_owned()),
            Ok(_) => None,
            Err(_) => panic!("no answer and no close within 3 s"),
        }
    }

    async fn ping(&mut self) -> Option<String> {
        if self.reader.get_mut().write_all(b"ping\n").await.is_err() {
            return None;
        }
        self.line().await
    }
}

struct HaproxyProcess {
    child: Child,
}

impl HaproxyProcess {
    fn start(dir: &Path) -> HaproxyProcess {
        let child = Command::new(haproxy_binary())
            .arg("-W")
            .arg("-S")
            .arg(dir.join("master.sock"))
            .arg("-f")
            .arg(dir.join("haproxy.cfg"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        HaproxyProcess { child }
    }

    /// Until both CLIs answer: the socket files appear before HAProxy
    /// accepts on them.
    async fn wait_ready(&self, dir: &Path) {
        for _ in 0..100 {
            if answers(&dir.join("admin.sock"), "show info").await
                && answers(&dir.join("master.sock"), "show proc").await
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("haproxy did not answer on its sockets");
    }
}

async fn answers(path: &Path, command: &str) -> bool {
    let Ok(mut s) = tokio::net::UnixStream::connect(path).await else {
        return false;
    };
    if s.write_all(format!("{command}\n").as_bytes())
        .await
        .is_err()
        || s.shutdown().await.is_err()
    {
        return false;
    }
    let mut out = String::new();
    matches!(
        timeout(Duration::from_secs(1), s.read_to_string(&mut out)).await,
        Ok(Ok(n)) if n > 0
    )
}

impl Drop for HaproxyProcess {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its workers, old ones included.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn default_template_passes_haproxy_check() {
    let dir = tempfile::tempdir().unwrap();
    for (bind, extra) in [("127.0.0.1", None), ("::", Some("haproxy_check"))] {
        let cfg = test_config(dir.path(), bind, extra);
        let text = successover_render::engine::check_template(&Template::builtin(), &cfg).unwrap();
        let v = Validator {
            binary: haproxy_binary(),
            timeout: Duration::from_secs(10),
        };
        v.check(&text, dir.path())
            .await
            .unwrap_or_else(|e| panic!("{extra:?}: {e:?}\n{text}"));
    }
    // The check left no temporary file behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn haproxy_check_rejects_a_broken_config() {
    let dir = tempfile::tempdir().unwrap();
    let v = Validator {
        binary: haproxy_binary(),
        timeout: Duration::from_secs(10),
    };
    let err = v
        .check("global\n  no-such-keyword\n", dir.path())
        .await
        .unwrap_err();
    match err {
        ValidateError::Rejected { alerts } => {
            assert!(alerts.contains("no-such-keyword"), "{alerts}");
            assert!(alerts.contains("<rendered>"), "{alerts}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_config_haproxy_rejects_is_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Arc::new(test_config(dir.path(), "127.0.0.1", None));
    let live = dir.path().join("haproxy.cfg");
    std::fs::write(&live, "# last good\n").unwrap();
    let bad = Template::compile(
        "{% for c in clusters %}listen {{ c.name }}\n  bogus-directive\n{% endfor %}".into(),
        "bad",
    )
    .unwrap();
    let mut engine = Engine::new(cfg, bad, Arc::new(Metrics::default()));
    let err = engine
        .cycle(&tree(&[
            ("mysql/master/c1", "127.0.0.1:3306"),
            ("mysql/cluster/c1", r#"{"proxy_port": 13306}"#),
        ]))
        .await
        .unwrap_err();
    assert!(matches!(err, CycleError::Validate(_)), "{err:?}");
    assert_eq!(std::fs::read_to_string(&live).unwrap(), "# last good\n");
}

/// The whole cycle against a running HAProxy: runtime switch, fence,
/// unfence, reload for a new cluster, old-worker sessions cut, injection
/// refused, removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switches_fences_and_reloads_a_running_haproxy() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Arc::new(test_config(dir.path(), "127.0.0.1", None));
    let metrics = Arc::new(Metrics::default());
    let mut engine = Engine::new(cfg.clone(), Template::builtin(), metrics.clone());

    let db1 = backend("db1").await;
    let db2 = backend("db2").await;
    let (x1, x2) = (free_port(), free_port());
    let s1 = format!(r#"{{"proxy_port": {x1}}}"#);
    let s2 = format!(r#"{{"proxy_port": {x2}}}"#);
    let at1 = format!("127.0.0.1:{db1}");
    let at2 = format!("127.0.0.1:{db2}");

    let mut kv: BTreeMap<&str, String> = BTreeMap::new();
    kv.insert("mysql/master/c1", at1.clone());
    kv.insert("mysql/cluster/c1", s1.clone());
    let as_tree = |kv: &BTreeMap<&str, String>| -> Tree {
        kv.iter()
            .map(|(k, v)| (k.to_string(), Some(v.as_bytes().to_vec())))
            .collect()
    };

    // HAProxy is not running yet: the file is written, the apply fails.
    let err = engine.cycle(&as_tree(&kv)).await.unwrap_err();
    assert!(matches!(err, CycleError::Apply(_)), "{err:?}");
    let live = std::fs::read_to_string(dir.path().join("haproxy.cfg")).unwrap();
    assert!(live.contains(&format!("server source {at1} ")), "{live}");

    let haproxy = HaproxyProcess::start(dir.path());
    haproxy.wait_ready(dir.path()).await;
    let r = engine.cycle(&as_tree(&kv)).await.unwrap();
    assert!(
        !r.written,
        "the file was already written by the failed cycle"
    );

    let (mut a, hello) = Client::connect(x1).await;
    assert_eq!(hello.as_deref(), Some("db1"));

    // Source change: runtime API, no reload, the old session is cut.
    kv.insert("mysql/master/c1", at2.clone());
    let r = engine.cycle(&as_tree(&kv)).await.unwrap();
    assert!(r.written);
    assert_eq!(r.plan.path(), "runtime", "{}", r.plan);
    assert!(!r.executed.reloaded);
    assert_eq!(a.line().await, None, "session to the old source survived");
    let (mut b, hello) = Client::connect(x1).await;
    assert_eq!(hello.as_deref(), Some("db2"));
    assert_eq!(b.ping().await.as_deref(), Some("ping"));

    // Fence: existing sessions cut, new clients refused at once.
    kv.insert("mysql/master/c1/failed", String::new());
    let r = engine.cycle(&as_tree(&kv)).await.unwrap();
    assert_eq!(r.plan.to_string(), "c1 fenced: failed");
    assert_eq!(b.line().await, None);
    let (_, hello) = Client::connect(x1).await;
    assert_eq!(hello, None, "a fenced cluster let a client through");
    let live = std::fs::read_to_string(dir.path().join("haproxy.cfg")).unwrap();
    assert!(live.contains(" disabled\n"), "{live}");

    // Unfence.
    kv.remove("mysql/master/c1/failed");
    let r = engine.cycle(&as_tree(&kv)).await.unwrap();
    assert_eq!(r.plan.to_string(), "c1 unfenced");
    let (mut d, hello) = Client::connect(x1).await;
    assert_eq!(hello.as_deref(), Some("db2"));

    // New cluster: reload. The session on c1 stays with the old worker.
    kv.insert("mysql/master/c2", at1.clone());
    kv.insert("mysql/cluster/c2", s2.clone());
    let r = engine.cycle(&as_tree(&kv)).await.unwrap();
    assert!(r.executed.reloaded, "{}", r.plan);
    assert_eq!(d.ping().await.as_deref(), Some("ping"));
    let (_, hello) = Client::connect(x2).await;
    assert_eq!(hello.as_deref(), Some("db1"));

    // c1 switches again: the session held by the old worker is cut too.
    kv.insert("mysql/master/c1", at1.clone());
    let r = engine.cycle(&as_tree(&kv)).await.unwrap();
    assert_eq!(r.plan.path(), "runtime");
    assert!(r.executed.old_worker_sessions >= 1, "{:?}", r.executed);
    assert_eq!(
        d.line().await,
        None,
        "old worker kept a session to the old source"
    );
    let (_, hello) = Client::connect(x1).await;
    assert_eq!(hello.as_deref(), Some("db1"));

    // A value that would inject a server line is refused; the rest renders.
    kv.insert(
        "mysql/master/c3",
        "db3:3306\n    server evil 6.6.6.6:3306".into(),
    );
    kv.insert(
        "mysql/cluster/c3",
        format!(r#"{{"proxy_port": {}}}"#, free_port()),
    );
    let r = engine.cycle(&as_tree(&kv)).await.unwrap();
    assert!(r.plan.is_empty(), "{}", r.plan);
    let live = std::fs::read_to_string(dir.path().join("haproxy.cfg")).unwrap();
    assert!(
        !live.contains("evil") && !live.contains("listen c3"),
        "{live}"
    );
    assert!(metrics
        .exposition()
        .contains("successover_render_rejected_values{reason=\"invalid_value\"} 1"));

    // Nothing changed: no write, nothing to do.
    let r = engine.cycle(&as_tree(&kv)).await.unwrap();
    assert!(!r.written && r.plan.is_empty());

    // Quarantine of c2's source by address: blackholed without a reload.
    kv.insert(
        "mysql/quarantine/c2/db1",
        format!(r#"{{"node":"db1","addr":"{at1}","reason":"test"}}"#),
    );
    let r = engine.cycle(&as_tree(&kv)).await.unwrap();
    assert_eq!(r.plan.to_string(), "c2 fenced: quarantined (db1)");
    let (_, hello) = Client::connect(x2).await;
    assert_eq!(hello, None);

    // Removal: reload, and c1 keeps serving.
    kv.remove("mysql/master/c2");
    let r = engine.cycle(&as_tree(&kv)).await.unwrap();
    assert!(r.executed.reloaded);
    assert!(r.plan.to_string().contains("c2 removed"), "{}", r.plan);
    let (_, hello) = Client::connect(x1).await;
    assert_eq!(hello.as_deref(), Some("db1"));
    drop(haproxy);
}
