//! The MySQL layer against real MariaDB 10.11 servers started by the test itself.
//!
//! A small local harness (throwaway datadirs, free ports on 127.0.0.1, killed on drop); it will
//! be replaced by the shared harness in `tests/`. A missing MariaDB is a failure, never a skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use successover_agent::mysql::{
    Flavor, GtidPos, GtidSet, GtidState, IoRunning, Node, NodeConfig, NodeError, ReplicaGtid,
    SourceSpec, UsingGtid, WaitPoint,
};
use tokio::time::{sleep, Instant};

/// The replication password, with a quote and a backslash to prove the quoting on the server.
const REPL_PASSWORD: &str = r"r3pl'pa\ss";
/// The same password as a literal the test writes by hand (default sql_mode).
const REPL_PASSWORD_SQL: &str = r"'r3pl''pa\\ss'";

fn find_binary(name: &str, extra_dirs: &[&str]) -> PathBuf {
    for dir in extra_dirs {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "{name} not found (looked in {extra_dirs:?} and PATH): install MariaDB 10.11 with \
         scripts/setup.sh"
    );
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().unwrap().port()
}

fn spawn_mariadbd(mariadbd: &Path, d: &Path, port: u16, server_id: u32) -> Child {
    Command::new(mariadbd)
        .arg("--no-defaults")
        .arg("--user=root")
        .arg(format!("--datadir={}", d.join("data").display()))
        .arg(format!("--port={port}"))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--socket={}", d.join("sock").display()))
        .arg(format!("--pid-file={}", d.join("pid").display()))
        .arg(format!("--log-error={}", d.join("error.log").display()))
        .arg(format!("--tmpdir={}", d.join("tmp").display()))
        .arg(format!("--log-basename=db{server_id}"))
        .arg("--log-bin")
        .arg("--log-slave-updates")
        .arg("--gtid-strict-mode=1")
        .arg(format!("--server-id={server_id}"))
        .arg("--skip-name-resolve")
        .arg("--innodb-buffer-pool-size=16M")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mariadbd")
}

/// One throwaway mariadbd. Killed (SIGKILL, by pid, only this child) when dropped.
struct MariaDb {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl MariaDb {
    async fn start(server_id: u32) -> MariaDb {
        let install = find_binary("mariadb-install-db", &["/usr/bin"]);
        let mariadbd = find_binary("mariadbd", &["/usr/sbin"]);
        // Short prefix: the unix socket path must fit in 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("so-mdb")
            .tempdir()
            .expect("tempdir");
        let data = dir.path().join("data");
        // Its own tmpdir: concurrent bootstraps sharing /tmp trip over each other's temporary
        // tables ("Could not remove temporary table").
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("create tmpdir");
        let out = tokio::process::Command::new(&install)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg("--user=root")
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            .arg(format!("--tmpdir={}", tmp.display()))
            .output()
            .await
            .expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let port = free_port();
        let child = spawn_mariadbd(&mariadbd, dir.path(), port, server_id);
        let mut db = MariaDb { child, dir, port };
        let mut attempts = 1;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(conn) = Conn::new(db.opts("root", "")).await {
                let _ = conn.disconnect().await;
                return db;
            }
            if let Ok(Some(status)) = db.child.try_wait() {
                // free_port() releases the port before mariadbd binds it; a parallel test may
                // take it in between.
                let log = db.error_log();
                if log.contains("Do you already have another server running on port")
                    && attempts < 3
                {
                    attempts += 1;
                    db.port = free_port();
                    db.child = spawn_mariadbd(&mariadbd, db.dir.path(), db.port, server_id);
                    continue;
                }
                panic!("mariadbd exited with {status}: {log}");
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd did not accept connections within 60 s: {}",
                db.error_log()
            );
            sleep(Duration::from_millis(100)).await;
        }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    fn opts(&self, user: &str, password: &str) -> OptsBuilder {
        OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.port)
            .user(Some(user))
            .pass(Some(password))
            .prefer_socket(false)
    }

    async fn conn(&self, user: &str, password: &str) -> Conn {
        Conn::new(self.opts(user, password))
            .await
            .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
    }

    fn node(&self) -> Node {
        let mut cfg = NodeConfig::new("127.0.0.1", self.port, "root", "");
        cfg.connect_timeout = Duration::from_secs(5);
        cfg.query_timeout = Duration::from_secs(10);
        Node::new(cfg)
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Whether every thread of the server is in the stopped state (after SIGSTOP).
    fn all_threads_stopped(&self) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.child.id())) else {
            return false;
        };
        tasks.flatten().all(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            // The state follows the parenthesised command name, which may contain spaces.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
        })
    }

    /// Accounts every server needs, created without binlogging: a GTID written here on the
    /// replica would be an errant transaction that gtid_strict_mode refuses later.
    async fn create_users(&self) {
        let mut c = self.conn("root", "").await;
        for sql in [
            "SET SESSION sql_log_bin = 0",
            &format!("CREATE USER 'repl'@'127.0.0.1' IDENTIFIED BY {REPL_PASSWORD_SQL}"),
            "GRANT REPLICATION SLAVE ON *.* TO 'repl'@'127.0.0.1'",
            "CREATE USER 'app'@'127.0.0.1' IDENTIFIED BY 'app'",
            "GRANT SELECT, INSERT ON t.* TO 'app'@'127.0.0.1'",
        ] {
            c.query_drop(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        c.disconnect().await.unwrap();
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `$cond` (an expression that may `.await`) every 50 ms for up to 20 s.
macro_rules! eventually {
    ($what:expr, $cond:expr) => {{
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if $cond {
                break;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {}", $what);
            sleep(Duration::from_millis(50)).await;
        }
    }};
}

async fn executed(node: &mut Node) -> GtidState {
    node.gtid_executed().await.expect("gtid_executed")
}

async fn insert(db: &MariaDb, v: &str) {
    let mut c = db.conn("root", "").await;
    c.exec_drop("INSERT INTO t.a (v) VALUES (?)", (v,))
        .await
        .expect("insert");
    c.disconnect().await.unwrap();
}

/// Waits for the replica's IO and SQL threads to run, failing fast on a replication error.
async fn wait_replicating(node: &mut Node) {
    eventually!("replication to run", {
        let st = node
            .replica_status()
            .await
            .unwrap()
            .expect("configured replica");
        assert_eq!(st.last_io_errno, 0, "IO error: {}", st.last_io_error);
        assert_eq!(st.last_sql_errno, 0, "SQL error: {}", st.last_sql_error);
        st.io_running == IoRunning::Yes && st.sql_running
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_pair() {
    let (a, b) = tokio::join!(MariaDb::start(1), MariaDb::start(2));
    tokio::join!(a.create_users(), b.create_users());
    let mut na = a.node();
    let mut nb = b.node();

    // --- flavour detection ---
    let info = na.server_info().await.unwrap().clone();
    let Flavor::MariaDb { version } = info.flavor else {
        panic!("detected {:?}", info.flavor);
    };
    assert_eq!((version.major, version.minor), (10, 11), "{info:?}");
    assert!(info.version_string.contains("MariaDB"));
    assert!(info.backslash_escapes);
    assert_eq!(na.server_uuid().await.unwrap(), None);
    assert_eq!(na.server_id().await.unwrap(), 1);
    assert_eq!(nb.server_id().await.unwrap(), 2);
    assert_eq!(nb.version().await.unwrap(), version);
    assert!(na.binary_log_status().await.unwrap().is_some());
    assert_eq!(nb.replica_status().await.unwrap(), None);

    // --- change_source + start replica + a replicated write ---
    {
        let mut c = a.conn("root", "").await;
        c.query_drop("CREATE DATABASE t").await.unwrap();
        c.query_drop("CREATE TABLE t.a (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(20))")
            .await
            .unwrap();
        c.disconnect().await.unwrap();
    }
    insert(&a, "one").await;
    let spec = SourceSpec::new("127.0.0.1", a.port, "repl", REPL_PASSWORD);
    nb.change_source(&spec).await.unwrap();
    nb.start_replica().await.unwrap();
    wait_replicating(&mut nb).await;
    let st = nb.replica_status().await.unwrap().unwrap();
    assert_eq!(st.source_host, "127.0.0.1");
    assert_eq!(st.source_port, a.port);
    assert_eq!(st.source_user, "repl");
    assert!(matches!(
        st.gtid,
        ReplicaGtid::MariaDb {
            using_gtid: UsingGtid::SlavePos,
            ..
        }
    ));
    eventually!("B to apply A's writes", {
        let ea = executed(&mut na).await;
        executed(&mut nb).await.contains(&ea).unwrap()
    });
    {
        let mut c = b.conn("app", "app").await;
        let n: Option<i64> = c.query_first("SELECT COUNT(*) FROM t.a").await.unwrap();
        assert_eq!(n, Some(1));
        c.disconnect().await.unwrap();
    }
    // B received exactly what A has; with log_slave_updates the positions are equal.
    let ea = executed(&mut na).await;
    let eb = executed(&mut nb).await;
    assert_eq!(ea, eb);
    assert!(ea.contains(&eb).unwrap());
    assert_eq!(nb.replica_status().await.unwrap().unwrap().received(), ea);
    // The read position (how a replica still hearing a long transaction is
    // told from a silent one) moves with every event read.
    let read_before = nb.replica_status().await.unwrap().unwrap().read_position;
    let (file, before) = read_before.expect("a read position once events arrived");
    assert!(!file.is_empty() && before > 0, "{file}:{before}");
    let pos = nb.mariadb_gtid_positions().await.unwrap().unwrap();
    assert_eq!(GtidState::MariaDb(pos.slave_pos.clone()), ea);
    assert_eq!(pos.current_pos, pos.slave_pos);

    // --- wait_for_gtid: reached, timed out, wrong flavour ---
    insert(&a, "two").await;
    let target = executed(&mut na).await;
    assert!(nb
        .wait_for_gtid(&target, Duration::from_secs(10))
        .await
        .unwrap());
    let after = nb.replica_status().await.unwrap().unwrap().read_position;
    assert!(
        after
            .as_ref()
            .is_some_and(|(f, p)| *f != file || *p > before),
        "read position {file}:{before} -> {after:?}"
    );
    let GtidState::MariaDb(p) = &target else {
        panic!("MariaDB GTIDs expected");
    };
    let mut ahead = GtidPos::new();
    for mut g in p.iter() {
        g.seq += 100;
        ahead.insert(g);
    }
    let started = Instant::now();
    let reached = nb
        .wait_for_gtid(&GtidState::MariaDb(ahead), Duration::from_millis(300))
        .await
        .unwrap();
    assert!(!reached);
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(started.elapsed() < Duration::from_secs(5));
    // MASTER_GTID_WAIT compares with gtid_slave_pos, which never holds a server's own
    // writes; what the server holds counts without a wait, so the source that wrote them
    // has reached them (a switch back to it with nothing written since).
    assert!(na
        .wait_for_gtid(&target, Duration::from_millis(100))
        .await
        .unwrap());
    let mysql_set =
        GtidState::MySql(GtidSet::parse("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5").unwrap());
    assert!(matches!(
        nb.wait_for_gtid(&mysql_set, Duration::from_millis(10))
            .await,
        Err(NodeError::WrongGtidFlavour { .. })
    ));
    assert!(nb
        .wait_for_gtid(&GtidState::MariaDb(GtidPos::new()), Duration::ZERO)
        .await
        .unwrap());

    // --- semi-sync on: source flag on A, replica flag on B (IO thread restart) ---
    let s = na.semi_sync().await.unwrap();
    assert!(!s.source_enabled && !s.replica_enabled);
    assert_eq!(s.wait_point, Some(WaitPoint::AfterCommit), "10.11 default");
    na.set_semi_sync_source(true).await.unwrap();
    assert!(
        nb.set_semi_sync_replica(true).await.unwrap(),
        "IO thread restarted"
    );
    eventually!(
        "A to see one semi-sync client",
        na.semi_sync().await.unwrap().clients == 1
    );
    let before = na.semi_sync().await.unwrap();
    assert!(before.source_enabled && before.source_status_on);
    insert(&a, "acked").await;
    let after = na.semi_sync().await.unwrap();
    assert_eq!(after.yes_tx, before.yes_tx + 1);
    assert_eq!(after.no_tx, before.no_tx);
    let sb = nb.semi_sync().await.unwrap();
    assert!(sb.replica_enabled && sb.replica_status_on);
    // Already in effect: no second restart.
    assert!(!nb.set_semi_sync_replica(true).await.unwrap());

    // --- semi-sync off (source first, so A never waits for an ACK that cannot come) ---
    na.set_semi_sync_source(false).await.unwrap();
    assert!(nb.set_semi_sync_replica(false).await.unwrap());
    eventually!(
        "A to see no semi-sync client",
        na.semi_sync().await.unwrap().clients == 0
    );
    let s = na.semi_sync().await.unwrap();
    assert!(!s.source_enabled && !s.source_status_on);
    assert!(!nb.semi_sync().await.unwrap().replica_status_on);
    wait_replicating(&mut nb).await;

    // --- read_only ---
    let mut app = a.conn("app", "app").await;
    na.set_read_only(true).await.unwrap();
    let ro = na.read_only().await.unwrap();
    assert!(ro.read_only && ro.super_read_only.is_none());
    let err = app
        .query_drop("INSERT INTO t.a (v) VALUES ('refused')")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, mysql_async::Error::Server(e) if e.code == 1290),
        "{err}"
    );
    // MariaDB 10.11: ALL PRIVILEGES includes READ_ONLY ADMIN, so root writes through
    // read_only. This is why fencing also kills client connections.
    insert(&a, "root writes").await;
    na.set_read_only(false).await.unwrap();
    assert!(!na.read_only().await.unwrap().read_only);
    app.query_drop("INSERT INTO t.a (v) VALUES ('allowed')")
        .await
        .unwrap();

    // --- processlist and kill_client_connections ---
    let app_id = u64::from(app.id());
    let clients = na.processlist_clients().await.unwrap();
    let own = na.server_info().await.unwrap().connection_id;
    assert!(clients.iter().any(|c| c.id == app_id), "{clients:?}");
    assert!(clients.iter().all(|c| c.id != own));
    assert!(
        clients.iter().all(|c| c.command != "Binlog Dump"),
        "{clients:?}"
    );
    assert!(
        nb.processlist_clients()
            .await
            .unwrap()
            .iter()
            .all(|c| c.user != "system user"),
        "replica threads are not clients"
    );
    assert!(na
        .kill_client_connections(&["app"])
        .await
        .unwrap()
        .is_empty());
    app.query_drop("SELECT 1")
        .await
        .expect("spared by except_users");
    let killed = na.kill_client_connections(&[]).await.unwrap();
    assert_eq!(killed, vec![app_id]);
    assert!(app.query_drop("SELECT 1").await.is_err(), "app was killed");
    drop(app);
    na.read_only().await.expect("our own connection survives");
    // The replica's dump thread was spared: replication still flows.
    insert(&a, "after kill").await;
    let target = executed(&mut na).await;
    assert!(nb
        .wait_for_gtid(&target, Duration::from_secs(10))
        .await
        .unwrap());
    wait_replicating(&mut nb).await;

    // --- IO thread stopped: B falls behind, contains() says so ---
    nb.stop_io_thread().await.unwrap();
    let st = nb.replica_status().await.unwrap().unwrap();
    assert_eq!(st.io_running, IoRunning::No);
    assert!(st.sql_running);
    assert!(!st.io_thread_active());
    // A stopped IO thread stays stopped when the replica flag changes (it may be a fence).
    assert!(!nb.set_semi_sync_replica(true).await.unwrap());
    assert_eq!(
        nb.replica_status().await.unwrap().unwrap().io_running,
        IoRunning::No
    );
    assert!(!nb.set_semi_sync_replica(false).await.unwrap());
    insert(&a, "not received").await;
    let ea = executed(&mut na).await;
    let eb = executed(&mut nb).await;
    assert!(!eb.contains(&ea).unwrap());
    assert!(ea.contains(&eb).unwrap());
    let missing = ea.not_in(&eb).unwrap();
    assert_eq!(missing, ea, "the one domain moved on");
    nb.start_io_thread().await.unwrap();
    eventually!("B to catch up", {
        let ea = executed(&mut na).await;
        executed(&mut nb).await.contains(&ea).unwrap()
    });

    // --- CHANGE MASTER from a NO_BACKSLASH_ESCAPES session: same password, other quoting ---
    nb.stop_replica().await.unwrap();
    nb.reset_replica_all().await.unwrap();
    assert_eq!(nb.replica_status().await.unwrap(), None);
    let mut nb_nbe = {
        let mut c = b.conn("root", "").await;
        c.query_drop("SET GLOBAL sql_mode = CONCAT(@@global.sql_mode, ',NO_BACKSLASH_ESCAPES')")
            .await
            .unwrap();
        let mut n = b.node();
        assert!(!n.server_info().await.unwrap().backslash_escapes);
        c.query_drop(
            "SET GLOBAL sql_mode = REPLACE(@@global.sql_mode, ',NO_BACKSLASH_ESCAPES', '')",
        )
        .await
        .unwrap();
        c.disconnect().await.unwrap();
        n
    };
    nb_nbe.change_source(&spec).await.unwrap();
    nb_nbe.start_replica().await.unwrap();
    wait_replicating(&mut nb_nbe).await;
    nb_nbe.stop_replica().await.unwrap();
    nb_nbe.reset_replica_all().await.unwrap();
    assert_eq!(nb_nbe.replica_status().await.unwrap(), None);

    // --- a refused statement keeps the connection; errors name the operation ---
    let bad = SourceSpec::new("127.0.0.1' , MASTER_USER='root", a.port, "repl", "x");
    let err = nb.change_source(&bad).await.unwrap_err();
    assert!(matches!(err, NodeError::Invalid { .. }), "{err}");
    let err = nb.start_replica().await.unwrap_err();
    assert!(err.server_error_code().is_some(), "{err:?}");
    assert_eq!(err.op(), "start_replica");
    assert!(nb.is_connected());

    na.close().await;
    nb.close().await;
    nb_nbe.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_server_times_out_and_recovers() {
    let db = MariaDb::start(3).await;
    let mut cfg = NodeConfig::new("127.0.0.1", db.port, "root", "");
    cfg.connect_timeout = Duration::from_millis(500);
    cfg.query_timeout = Duration::from_millis(500);
    let mut node = Node::new(cfg);
    assert!(!node.read_only().await.unwrap().read_only);

    kill(db.pid(), Signal::SIGSTOP).expect("SIGSTOP our mariadbd");
    // kill() returns before every thread has stopped; a thread still running could answer.
    eventually!("all mariadbd threads to stop", db.all_threads_stopped());
    let started = Instant::now();
    let err = node.read_only().await.unwrap_err();
    assert!(
        matches!(
            err,
            NodeError::Timeout {
                op: "read_only",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!node.is_connected(), "a timed-out connection is dropped");
    // Reconnecting to a frozen server: the kernel completes the TCP handshake, the server
    // never sends its greeting.
    let started = Instant::now();
    let err = node.semi_sync().await.unwrap_err();
    assert!(matches!(err, NodeError::ConnectTimeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    kill(db.pid(), Signal::SIGCONT).expect("SIGCONT our mariadbd");
    eventually!("the node to answer again", node.read_only().await.is_ok());
    assert!(node.is_connected());
    node.close().await;
}
