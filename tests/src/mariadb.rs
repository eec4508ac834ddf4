//! Database servers of any [`Flavour`] (MariaDB 10.11 and 11.4, MySQL 9.7),
//! alone or as a source with semi-sync and async replicas. The type keeps
//! its first flavour's name.
//!
//! `mariadb-install-db` (`mysqld --initialize-insecure`) takes seconds, so
//! it runs once per machine and server version: the result (with the test
//! users already created) is kept as a template datadir in the cache
//! directory, and every server starts from a copy of it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Pool, Row, Value};
use nix::sys::signal::Signal;
use tokio::sync::OnceCell;
use tokio::time::{timeout, Instant};

use crate::flavour::Flavour;
use crate::ports::{reserve_port, PortLease};
use crate::process::{dump_on_panic, log_tail, Proc, Scratch};
use crate::{bins, wait_for, wait_until};

/// Superuser reachable over TCP from anywhere (`'root'@'%'`).
pub const ROOT_USER: &str = "root";
pub const ROOT_PASSWORD: &str = "Root-pw.x7Kq2";
/// Replication user (`'repl'@'%'`: REPLICATION SLAVE, REPLICATION SLAVE ADMIN,
/// BINLOG MONITOR).
pub const REPL_USER: &str = "repl";
pub const REPL_PASSWORD: &str = "Repl-pw.m4Zt8";
/// The renderers' source check (`'so_check'@'%'`, no privileges: it only
/// reads `@@global.read_only`).
pub const CHECK_USER: &str = "so_check";
pub const CHECK_PASSWORD: &str = "Check-pw.q9Lr3";
/// An application account: data privileges only. Unlike root it holds no
/// READ_ONLY ADMIN, so `read_only=1` stops its writes the way it stops a
/// real application's.
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "app";
/// An application account as many sites have one: `ALL PRIVILEGES`, which
/// on MariaDB includes `READ_ONLY ADMIN` (writes through `read_only=1`).
pub const ADMIN_APP_USER: &str = "appadmin";
pub const ADMIN_APP_PASSWORD: &str = "appadmin";

/// Long enough for a server starting next to others on two busy cores.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Hours: a network blip must never quietly turn the source asynchronous
/// (DESIGN.md, lossless rule 1).
pub const SEMI_SYNC_MASTER_TIMEOUT_MS: u64 = 3_600_000;

/// Bump when the template's content changes, so caches built by an older
/// harness are not reused.
const TEMPLATE_REV: &str = "4";

/// Flags the template is created with and every server starts with; InnoDB
/// sizes kept small because a test starts several servers.
const INNODB_ARGS: &[&str] = &[
    "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=16M",
];
/// MySQL 8.0.30+ sizes its redo log with one variable instead.
const MYSQL_INNODB_ARGS: &[&str] = &[
    "--innodb-buffer-pool-size=32M",
    "--innodb-redo-log-capacity=16M",
];

const USERS_SQL: &str = "
USE mysql;
FLUSH PRIVILEGES;
DELETE FROM mysql.global_priv WHERE Host <> 'localhost';
DELETE FROM mysql.proxies_priv WHERE Host <> 'localhost';
FLUSH PRIVILEGES;
CREATE USER 'root'@'%' IDENTIFIED BY 'Root-pw.x7Kq2';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;
CREATE USER 'repl'@'%' IDENTIFIED BY 'Repl-pw.m4Zt8';
GRANT REPLICATION SLAVE, REPLICATION SLAVE ADMIN, BINLOG MONITOR ON *.* TO 'repl'@'%';
CREATE USER 'app'@'%' IDENTIFIED BY 'app';
GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER ON *.* TO 'app'@'%';
CREATE USER 'appadmin'@'%' IDENTIFIED BY 'appadmin';
GRANT ALL PRIVILEGES ON *.* TO 'appadmin'@'%';
CREATE USER 'so_check'@'%' IDENTIFIED BY 'Check-pw.q9Lr3';
";

/// The same accounts on MySQL, run by `--initialize-insecure --init-file`
/// (binary logging is off while initialising, so they are no GTIDs). The
/// default caching_sha2_password: 9.x has no mysql_native_password unless
/// loaded; replicas connect with TLS (`SOURCE_SSL=1`), never fetching the
/// source's RSA key.
/// `REPLICATION CLIENT` stands for MariaDB's BINLOG MONITOR.
const MYSQL_USERS_SQL: &str = "
CREATE USER 'root'@'%' IDENTIFIED BY 'Root-pw.x7Kq2';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;
CREATE USER 'repl'@'%' IDENTIFIED BY 'Repl-pw.m4Zt8';
GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'repl'@'%';
CREATE USER 'app'@'%' IDENTIFIED BY 'app';
GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER ON *.* TO 'app'@'%';
CREATE USER 'appadmin'@'%' IDENTIFIED BY 'appadmin';
GRANT ALL PRIVILEGES ON *.* TO 'appadmin'@'%';
CREATE USER 'so_check'@'%' IDENTIFIED BY 'Check-pw.q9Lr3';
";

/// How to start one server.
#[derive(Debug, Clone)]
pub struct MariaDbOptions {
    /// Label for logs, scratch directory and errors ("db1").
    pub name: String,
    pub server_id: u32,
    /// Appended after the harness's flags, so they can override them.
    pub extra_args: Vec<String>,
    /// Run inside this network namespace (see [`crate::NetHost::ns_name`]);
    /// then `bind_address` should be that host's address.
    pub netns: Option<String>,
    pub bind_address: IpAddr,
    /// Default: `SUCCESSOVER_FLAVOUR` ([`Flavour::from_env`]).
    pub flavour: Flavour,
}

impl Default for MariaDbOptions {
    fn default() -> Self {
        MariaDbOptions {
            name: "db".into(),
            server_id: 1,
            extra_args: Vec::new(),
            netns: None,
            bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            flavour: Flavour::from_env(),
        }
    }
}

impl MariaDbOptions {
    pub fn new(name: impl Into<String>, server_id: u32) -> Self {
        MariaDbOptions {
            name: name.into(),
            server_id,
            ..Default::default()
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    pub fn flavour(mut self, flavour: Flavour) -> Self {
        self.flavour = flavour;
        self
    }
}

/// One `mariadbd` (or `mysqld`) with its own port, datadir and log. Binary
/// logging with GTIDs, `log_slave_updates`, row format, strict GTID mode
/// (MySQL: `gtid_mode=ON`, `enforce_gtid_consistency`), semi-sync AFTER_SYNC
/// with a timeout of hours but both semi-sync flags off: that is for the
/// topology (or the test) to decide.
#[derive(Debug)]
pub struct MariaDb {
    opts: MariaDbOptions,
    port: PortLease,
    datadir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
    // Dropped after `proc`, which writes into it.
    dir: Scratch,
}

impl MariaDb {
    /// Starts a server from a copy of the template datadir and waits until
    /// `root` can run a query over TCP. Panics with the log tail on failure.
    pub async fn start(opts: MariaDbOptions) -> MariaDb {
        let template = template_datadir(opts.flavour).await;
        let dir = Scratch::new(&opts.name);
        let datadir = dir.path().join("data");
        let tmp = dir.path().join("tmp");
        let (from, to) = (template.to_path_buf(), datadir.clone());
        tokio::task::spawn_blocking(move || {
            copy_dir(&from, &to)?;
            std::fs::create_dir_all(&tmp)
        })
        .await
        .expect("copying the datadir template panicked")
        .unwrap_or_else(|e| {
            panic!(
                "{}: copying datadir template {}: {e}",
                opts.name,
                template.display()
            )
        });
        let mut db = MariaDb {
            port: reserve_port(),
            datadir,
            socket: dir.path().join("mysqld.sock"),
            log: dir.path().join("mariadbd.log"),
            proc: None,
            opts,
            dir,
        };
        db.start_process().await;
        db
    }

    fn args(&self) -> Vec<String> {
        if self.opts.flavour.is_mysql() {
            return self.mysql_args();
        }
        let d = self.dir.path();
        let mut args = vec![
            // Must come first; keeps /etc/mysql out of the tests.
            "--no-defaults".to_string(),
            format!("--datadir={}", self.datadir.display()),
            format!("--socket={}", self.socket.display()),
            format!("--pid-file={}", d.join("mysqld.pid").display()),
            format!("--tmpdir={}", d.join("tmp").display()),
            format!("--port={}", self.port.port()),
            format!("--bind-address={}", self.opts.bind_address),
            format!("--report-host={}", self.opts.bind_address),
            format!("--report-port={}", self.port.port()),
            "--user=root".into(),
            format!("--server-id={}", self.opts.server_id),
            "--log-bin=mysql-bin".into(),
            "--relay-log=relay-bin".into(),
            "--log-slave-updates".into(),
            "--binlog-format=ROW".into(),
            "--gtid-strict-mode=1".into(),
            "--gtid-domain-id=0".into(),
            "--sync-binlog=1".into(),
            "--innodb-flush-log-at-trx-commit=1".into(),
            "--skip-name-resolve".into(),
            "--performance-schema=OFF".into(),
            "--max-connections=500".into(),
            "--rpl-semi-sync-master-enabled=0".into(),
            "--rpl-semi-sync-slave-enabled=0".into(),
            "--rpl-semi-sync-master-wait-point=AFTER_SYNC".into(),
            format!("--rpl-semi-sync-master-timeout={SEMI_SYNC_MASTER_TIMEOUT_MS}"),
            // Replicas notice a dead or silent source within seconds
            // (heartbeats come every second, see `replicate_from`).
            "--slave-net-timeout=5".into(),
            // Stopping a semi-sync replica's IO thread first kills its
            // connection on the source; against a hung source that waits
            // this long (default 5 s) and holds up a failover.
            "--rpl-semi-sync-slave-kill-conn-timeout=1".into(),
            // Parallel appliers, as the Ansible role sets them: one applier
            // thread falls behind a few writers on the source, and a switch
            // waits for what is left to apply. Optimistic mode keeps the
            // commit order (gtid_slave_pos only advances in order).
            "--slave-parallel-threads=4".into(),
            "--slave-parallel-mode=optimistic".into(),
        ];
        if self.opts.flavour == Flavour::MariaDb114 {
            // Otherwise 11.4 generates a 4096-bit RSA key at every start
            // (seconds of CPU per server). Replicas then need MASTER_SSL=0,
            // as 11.4 asks for TLS to the source by default.
            args.push("--skip-ssl".into());
        }
        args.extend(self.opts.flavour.location_args(&d.join("tmp")));
        args.extend(INNODB_ARGS.iter().map(|s| s.to_string()));
        args.extend(self.opts.extra_args.iter().cloned());
        args
    }

    /// The same settings in MySQL 8.4+'s words.
    fn mysql_args(&self) -> Vec<String> {
        let d = self.dir.path();
        let mut args = vec![
            "--no-defaults".to_string(),
            format!("--datadir={}", self.datadir.display()),
            format!("--socket={}", self.socket.display()),
            format!("--pid-file={}", d.join("mysqld.pid").display()),
            format!("--tmpdir={}", d.join("tmp").display()),
            format!("--port={}", self.port.port()),
            format!("--bind-address={}", self.opts.bind_address),
            format!("--report-host={}", self.opts.bind_address),
            format!("--report-port={}", self.port.port()),
            "--user=root".into(),
            format!("--server-id={}", self.opts.server_id),
            "--log-bin=mysql-bin".into(),
            "--relay-log=relay-bin".into(),
            "--log-replica-updates".into(),
            "--binlog-format=ROW".into(),
            "--gtid-mode=ON".into(),
            "--enforce-gtid-consistency=ON".into(),
            "--sync-binlog=1".into(),
            "--innodb-flush-log-at-trx-commit=1".into(),
            "--skip-name-resolve".into(),
            // The agent reads the replica's heartbeats there.
            "--performance-schema=ON".into(),
            "--max-connections=500".into(),
            // The X protocol would listen on 33060 in every server.
            "--mysqlx=OFF".into(),
            "--plugin-load-add=semisync_source.so".into(),
            "--plugin-load-add=semisync_replica.so".into(),
            "--rpl-semi-sync-source-enabled=0".into(),
            "--rpl-semi-sync-replica-enabled=0".into(),
            "--rpl-semi-sync-source-wait-point=AFTER_SYNC".into(),
            format!("--rpl-semi-sync-source-timeout={SEMI_SYNC_MASTER_TIMEOUT_MS}"),
            "--replica-net-timeout=5".into(),
            // MySQL's defaults since 8.0.27, stated: parallel appliers that
            // commit in the source's order.
            "--replica-parallel-workers=4".into(),
            "--replica-preserve-commit-order=ON".into(),
        ];
        args.extend(self.opts.flavour.location_args(&d.join("tmp")));
        args.extend(MYSQL_INNODB_ARGS.iter().map(|s| s.to_string()));
        args.extend(self.opts.extra_args.iter().cloned());
        args
    }

    pub fn flavour(&self) -> Flavour {
        self.opts.flavour
    }

    async fn start_process(&mut self) {
        let flavour = self.opts.flavour;
        let mut cmd = match &self.opts.netns {
            Some(ns) => {
                let mut c = std::process::Command::new(bins::ip());
                c.args(["netns", "exec", ns]).arg(flavour.loader());
                if flavour.is_mysql() {
                    c.args(flavour.loader_args()).arg(flavour.server());
                }
                c
            }
            None => flavour.command(&flavour.server()),
        };
        cmd.args(self.args());
        append_marker(&self.log, &format!("starting {}", self.opts.name));
        let mut proc = Proc::spawn(&self.opts.name, cmd, &self.log)
            .await
            .unwrap_or_else(|e| panic!("{}: {e:#}", self.opts.name));
        // Shutdown flushes InnoDB; test data is disposable, but a clean
        // shutdown keeps the log free of crash-recovery noise.
        proc.set_grace(Duration::from_secs(10));
        self.proc = Some(proc);
        if let Err(e) = self.wait_ready().await {
            panic!(
                "{} (port {}) did not start: {e:#}\nlast lines of {}:\n{}",
                self.opts.name,
                self.port.port(),
                self.log.display(),
                self.log_tail(40)
            );
        }
        tracing::info!(
            name = self.opts.name,
            port = self.port(),
            pid = self.pid(),
            "mariadb ready"
        );
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let result = wait_for(START_TIMEOUT, || async {
            if !self.is_running() {
                return Some(Err(anyhow::anyhow!("mariadbd exited")));
            }
            let mut conn = self.conn().await.ok()?;
            conn.query_drop("SELECT 1").await.ok()?;
            let _ = conn.disconnect().await;
            Some(Ok(()))
        })
        .await;
        result.map_err(anyhow::Error::from)?
    }

    pub fn name(&self) -> &str {
        &self.opts.name
    }

    pub fn server_id(&self) -> u32 {
        self.opts.server_id
    }

    pub fn port(&self) -> u16 {
        self.port.port()
    }

    /// The address it listens on (127.0.0.1 unless it runs in a namespace).
    pub fn host(&self) -> IpAddr {
        self.opts.bind_address
    }

    /// `host:port`, the form the `mysql/master/<cluster>` key holds.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.opts.bind_address, self.port())
    }

    /// `mysql://root:PASSWORD@host:port`
    pub fn url(&self) -> String {
        format!("mysql://{ROOT_USER}:{ROOT_PASSWORD}@{}", self.addr())
    }

    /// Connection options for `root` over TCP.
    pub fn opts(&self) -> Opts {
        OptsBuilder::default()
            .ip_or_hostname(self.opts.bind_address.to_string())
            .tcp_port(self.port())
            .user(Some(ROOT_USER))
            .pass(Some(ROOT_PASSWORD))
            // Otherwise mysql_async switches a 127.0.0.1 connection to the
            // unix socket, which bypasses namespace cuts and proxies.
            .prefer_socket(false)
            .into()
    }

    /// A new connection as `root` (10 s connect timeout).
    pub async fn conn(&self) -> anyhow::Result<Conn> {
        timeout(CONNECT_TIMEOUT, Conn::new(self.opts()))
            .await
            .with_context(|| format!("{}: connect to {} timed out", self.name(), self.addr()))?
            .with_context(|| format!("{}: connect to {}", self.name(), self.addr()))
    }

    /// A new pool as `root`; the caller should `disconnect()` it when done.
    pub fn pool(&self) -> Pool {
        Pool::new(self.opts())
    }

    /// Runs statements (one or several, `;`-separated) on a new connection;
    /// written in MariaDB's words, run in the server's ([`Flavour::sql`]).
    pub async fn exec(&self, sql: &str) -> anyhow::Result<()> {
        let sql = self.opts.flavour.sql(sql);
        let mut conn = self.conn().await?;
        conn.query_drop(&sql)
            .await
            .with_context(|| format!("{}: {sql}", self.name()))?;
        conn.disconnect().await.ok();
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    pub fn is_running(&self) -> bool {
        self.proc.as_ref().is_some_and(|p| !p.has_exited())
    }

    /// SIGKILL: a crash. Whatever was written to the OS survives, as after
    /// a real process crash.
    pub async fn kill9(&mut self) {
        if let Some(proc) = self.proc.as_mut() {
            proc.kill9().await;
        }
        tracing::info!(name = self.opts.name, "mariadb killed");
    }

    /// SIGSTOP: the server hangs with its connections open, like a stalled
    /// host.
    pub fn sigstop(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    pub fn sigcont(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGCONT)
    }

    fn signal(&mut self, signal: Signal) -> anyhow::Result<()> {
        let name = self.opts.name.clone();
        self.proc
            .as_mut()
            .with_context(|| format!("{name}: not started"))?
            .signal(signal)
    }

    /// Clean shutdown (SIGTERM, SIGKILL after 10 s).
    pub async fn stop(&mut self) {
        if let Some(proc) = self.proc.as_mut() {
            proc.stop().await;
        }
    }

    /// Starts the server again on the same datadir and port after
    /// [`MariaDb::kill9`] or [`MariaDb::stop`]. Replication threads start by
    /// themselves if they were configured.
    pub async fn start_again(&mut self) {
        assert!(!self.is_running(), "{} is still running", self.name());
        self.start_process().await;
    }

    /// Clean shutdown, then start again.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_process().await;
    }

    /// What an operator does to a failed source before it may serve again:
    /// stops it if it still runs, replaces its datadir with a fresh copy of
    /// the template (no data, no binlog, no replication state) and starts it
    /// on the same port and address as a new server, `server_id`. Follow
    /// with [`MariaDb::replicate_from`], which then replicates everything
    /// from the beginning of the source's binlog.
    ///
    /// The id must be new: that history holds the transactions this server
    /// wrote under its old id, and a replica skips events carrying its own
    /// id (`replicate_same_server_id` cannot be on with `log_slave_updates`),
    /// so it would skip its own old writes and break on the first later
    /// event that needs them.
    pub async fn rebuild(&mut self, server_id: u32) {
        self.kill9().await;
        self.opts.server_id = server_id;
        let template = template_datadir(self.opts.flavour).await;
        let (from, to) = (template.to_path_buf(), self.datadir.clone());
        let tmp = self.dir.path().join("tmp");
        let name = self.opts.name.clone();
        tokio::task::spawn_blocking(move || {
            if to.exists() {
                std::fs::remove_dir_all(&to)?;
            }
            copy_dir(&from, &to)?;
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp)
        })
        .await
        .expect("rebuilding the datadir panicked")
        .unwrap_or_else(|e| panic!("{name}: rebuilding the datadir: {e}"));
        append_marker(&self.log, &format!("rebuilt {}", self.opts.name));
        self.start_process().await;
    }

    pub fn datadir(&self) -> &Path {
        &self.datadir
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Makes this server a replica of `source` (GTID `slave_pos`, 1 s
    /// heartbeat and connect retry), `read_only=1`, semi-sync replica flag
    /// as asked, and starts replication.
    pub async fn replicate_from(&self, source: &MariaDb, semi_sync: bool) -> anyhow::Result<()> {
        let mut conn = self.conn().await?;
        let sql = match self.opts.flavour {
            // super_read_only: root (like any SUPER account) writes through
            // plain read_only on MySQL.
            Flavour::MySql97 => format!(
                "SET GLOBAL super_read_only = 1; \
                 SET GLOBAL rpl_semi_sync_replica_enabled = {}; \
                 CHANGE REPLICATION SOURCE TO SOURCE_HOST = '{}', SOURCE_PORT = {}, \
                   SOURCE_USER = '{REPL_USER}', SOURCE_PASSWORD = '{REPL_PASSWORD}', \
                   SOURCE_AUTO_POSITION = 1, SOURCE_HEARTBEAT_PERIOD = 1, \
                   SOURCE_CONNECT_RETRY = 1, SOURCE_SSL = 1; \
                 START REPLICA",
                u8::from(semi_sync),
                source.host(),
                source.port(),
            ),
            flavour => format!(
                "SET GLOBAL read_only = 1; \
                 SET GLOBAL rpl_semi_sync_slave_enabled = {}; \
                 CHANGE MASTER TO MASTER_HOST = '{}', MASTER_PORT = {}, \
                   MASTER_USER = '{REPL_USER}', MASTER_PASSWORD = '{REPL_PASSWORD}', \
                   MASTER_USE_GTID = slave_pos, MASTER_HEARTBEAT_PERIOD = 1, \
                   MASTER_CONNECT_RETRY = 1{}; \
                 START SLAVE",
                u8::from(semi_sync),
                source.host(),
                source.port(),
                // The sources run with --skip-ssl (see `args`).
                if flavour == Flavour::MariaDb114 {
                    ", MASTER_SSL = 0"
                } else {
                    ""
                },
            ),
        };
        conn.query_drop(&sql).await.with_context(|| {
            format!(
                "{}: setting up replication from {}",
                self.name(),
                source.name()
            )
        })?;
        conn.disconnect().await.ok();
        Ok(())
    }

    /// Makes the server read-only or writable the way the agent does:
    /// MariaDB's `read_only`; on MySQL `super_read_only` as well, which
    /// also stops accounts with SUPER (setting `read_only` alone would
    /// leave them writing).
    pub async fn set_read_only(&self, on: bool) -> anyhow::Result<()> {
        let sql = match (self.opts.flavour.is_mysql(), on) {
            (false, on) => format!("SET GLOBAL read_only = {}", u8::from(on)),
            // super_read_only = 1 sets read_only too.
            (true, true) => "SET GLOBAL super_read_only = 1".to_owned(),
            (true, false) => "SET GLOBAL super_read_only = 0; SET GLOBAL read_only = 0".to_owned(),
        };
        self.exec(&sql).await
    }

    /// Turns the semi-sync replica flag on or off on a running replica. The
    /// IO thread only reads the flag when it connects, hence the restart.
    pub async fn set_semi_sync_replica(&self, on: bool) -> anyhow::Result<()> {
        // `exec` puts it in the flavour's words.
        self.exec(&format!(
            "SET GLOBAL rpl_semi_sync_slave_enabled = {}; STOP SLAVE IO_THREAD; START SLAVE IO_THREAD",
            u8::from(on)
        ))
        .await
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        dump_on_panic(&self.opts.name, &[&self.log]);
    }
}

fn append_marker(log: &Path, what: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(f, "===== successover-tests: {what} =====");
    }
}

/// The flavour at the other end of `conn`, as far as the helpers below
/// care: MySQL's versions are below 10, MariaDB's 10 and above.
pub fn conn_is_mysql(conn: &Conn) -> bool {
    conn.server_version().0 < 10
}

/// A global status variable (`Rpl_semi_sync_master_clients`, …), named in
/// MariaDB's words and read under the server's name for it.
pub async fn status_var(conn: &mut Conn, name: &str) -> anyhow::Result<String> {
    if conn_is_mysql(conn) {
        let name = Flavour::MySql97.var(name);
        ensure!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "not a variable name: {name:?}"
        );
        // information_schema.GLOBAL_STATUS is gone from MySQL; SHOW works
        // on both, and its LIKE ignores case.
        let row: Option<(String, String)> = conn
            .query_first(format!("SHOW GLOBAL STATUS LIKE '{name}'"))
            .await
            .with_context(|| format!("reading status variable {name}"))?;
        return row
            .map(|(_, v)| v)
            .with_context(|| format!("no status variable {name}"));
    }
    let value: Option<String> = conn
        .exec_first(
            "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = UPPER(?)",
            (name,),
        )
        .await
        .with_context(|| format!("reading status variable {name}"))?;
    value.with_context(|| format!("no status variable {name}"))
}

/// A global system variable as text (`read_only` is `"1"` or `"0"`), named
/// in MariaDB's words and read under the server's name for it. The GTID
/// positions all become MySQL's `gtid_executed`, a set of another form:
/// compare those with [`gtids_contain`].
pub async fn global_var(conn: &mut Conn, name: &str) -> anyhow::Result<String> {
    let name = if conn_is_mysql(conn) {
        Flavour::MySql97.var(name)
    } else {
        name.to_owned()
    };
    let name = name.as_str();
    ensure!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "not a variable name: {name:?}"
    );
    // Not CAST to CHAR: that turns boolean variables into "ON"/"OFF",
    // while `SHOW VARIABLES` users and the agent see 1/0.
    let row: Option<Row> = conn
        .query_first(format!("SELECT @@GLOBAL.{name}"))
        .await
        .with_context(|| format!("reading @@GLOBAL.{name}"))?;
    match row.as_ref().and_then(|r| r.as_ref(0)) {
        Some(Value::NULL) | None => bail!("@@GLOBAL.{name} is NULL"),
        Some(value) => Ok(value_text(value)),
    }
}

fn value_text(value: &Value) -> String {
    match value {
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        Value::NULL => String::new(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        other => other.as_sql(true).trim_matches('\'').to_string(),
    }
}

/// `SHOW SLAVE STATUS` as column → text, or `None` on a server that is not
/// a replica. On MySQL (`SHOW REPLICA STATUS`) each `Replica_*` and
/// `Source_*` column is also there under its MariaDB name (`Slave_*`,
/// `Master_*`), so callers ask for `Slave_IO_Running` on every flavour.
pub async fn replica_status(conn: &mut Conn) -> anyhow::Result<Option<HashMap<String, String>>> {
    let mysql = conn_is_mysql(conn);
    let sql = if mysql {
        "SHOW REPLICA STATUS"
    } else {
        "SHOW SLAVE STATUS"
    };
    let row: Option<Row> = conn.query_first(sql).await.context(sql)?;
    Ok(row.map(|row| {
        let columns = row.columns();
        let mut status: HashMap<String, String> = columns
            .iter()
            .enumerate()
            .map(|(i, col)| {
                let text = row.as_ref(i).map(value_text).unwrap_or_default();
                (col.name_str().into_owned(), text)
            })
            .collect();
        if mysql {
            let aliases: Vec<(String, String)> = status
                .iter()
                .filter_map(|(k, v)| {
                    let alias = k.replace("Replica", "Slave").replace("Source", "Master");
                    (alias != *k).then(|| (alias, v.clone()))
                })
                .collect();
            status.extend(aliases);
        }
        status
    }))
}

/// Whether GTID position or set `have` holds everything in `want`: the
/// server compares (MariaDB positions per domain, MySQL's `GTID_SUBSET`).
pub async fn gtids_contain(conn: &mut Conn, have: &str, want: &str) -> anyhow::Result<bool> {
    if conn_is_mysql(conn) {
        let subset: Option<i64> = conn
            .exec_first("SELECT GTID_SUBSET(?, ?)", (want, have))
            .await
            .context("GTID_SUBSET")?;
        return Ok(subset == Some(1));
    }
    let have = parse_positions(have)?;
    let want = parse_positions(want)?;
    Ok(want
        .iter()
        .all(|(domain, seq)| have.get(domain).is_some_and(|h| h >= seq)))
}

/// The GTIDs of MySQL set `set` that `minus` lacks (`GTID_SUBTRACT`,
/// computed by the server behind `conn`); empty when `minus` holds them
/// all. MariaDB positions have no such function: compare those in Rust.
pub async fn gtid_subtract(conn: &mut Conn, set: &str, minus: &str) -> anyhow::Result<String> {
    ensure!(
        conn_is_mysql(conn),
        "GTID_SUBTRACT needs a MySQL server, not MariaDB"
    );
    let rest: Option<String> = conn
        .exec_first("SELECT GTID_SUBTRACT(?, ?)", (set, minus))
        .await
        .with_context(|| format!("GTID_SUBTRACT('{set}', '{minus}')"))?;
    Ok(rest.unwrap_or_default().replace('\n', ""))
}

/// What a replica has received from its source, from its
/// [`replica_status`]: MariaDB's `Gtid_IO_Pos`; on MySQL
/// `Retrieved_Gtid_Set` together with `Executed_Gtid_Set`, because the
/// retrieved set starts empty at every `CHANGE REPLICATION SOURCE TO` (the
/// agent reads it the same way).
pub fn received_gtids(mysql: bool, status: &HashMap<String, String>) -> String {
    let get = |k: &str| status.get(k).map_or("", |v| v.trim());
    if !mysql {
        return get("Gtid_IO_Pos").to_owned();
    }
    // A GTID set may name a source twice; the server merges the parts.
    [get("Retrieved_Gtid_Set"), get("Executed_Gtid_Set")]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(",")
        .replace('\n', "")
}

/// Where the server's binlog ends: (file, position), as a replica's
/// `Master_Log_File` and `Read_Master_Log_Pos` name what it has received.
pub async fn binlog_coordinates(conn: &mut Conn) -> anyhow::Result<(String, u64)> {
    // MySQL 8.4 removed SHOW MASTER STATUS.
    let sql = if conn_is_mysql(conn) {
        "SHOW BINARY LOG STATUS"
    } else {
        "SHOW MASTER STATUS"
    };
    let row: Row = conn
        .query_first(sql)
        .await
        .context(sql)?
        .with_context(|| format!("{sql}: binary logging is off"))?;
    let file: String = row.get("File").context("no File column")?;
    let position: u64 = row.get("Position").context("no Position column")?;
    Ok((file, position))
}

/// `domain-server-seq,…` as domain → seq.
fn parse_positions(pos: &str) -> anyhow::Result<HashMap<u32, u64>> {
    let mut out = HashMap::new();
    for gtid in pos.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        let mut parts = gtid.split('-');
        let (Some(d), Some(_), Some(seq), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            bail!("not a MariaDB GTID position: {pos:?}");
        };
        out.insert(d.parse()?, seq.parse()?);
    }
    Ok(out)
}

/// Waits up to `limit` until the server behind `conn` has applied `gtids`
/// (MariaDB `MASTER_GTID_WAIT`, MySQL `WAIT_FOR_EXECUTED_GTID_SET`); true
/// when it has.
pub async fn wait_for_gtids(conn: &mut Conn, gtids: &str, limit: Duration) -> anyhow::Result<bool> {
    let waited: Option<i64> = if conn_is_mysql(conn) {
        // Whole seconds; 0 would mean no limit.
        let secs = limit.as_secs().max(1);
        conn.exec_first("SELECT WAIT_FOR_EXECUTED_GTID_SET(?, ?)", (gtids, secs))
            .await
            .with_context(|| format!("WAIT_FOR_EXECUTED_GTID_SET('{gtids}')"))?
    } else {
        conn.exec_first(
            "SELECT MASTER_GTID_WAIT(?, ?)",
            (gtids, limit.as_secs_f64()),
        )
        .await
        .with_context(|| format!("MASTER_GTID_WAIT('{gtids}')"))?
    };
    Ok(waited == Some(0))
}

/// A source with replicas on 127.0.0.1: `db1` is the source (writable,
/// semi-sync source flag on), `db2` the one semi-sync replica, the rest
/// asynchronous replicas; all replicas `read_only`. Only the source carries
/// the source flag: on a replica with `log_slave_updates` it would stall the
/// SQL thread (DESIGN.md, lossless rule 2).
#[derive(Debug)]
pub struct Topology {
    servers: Vec<MariaDb>,
}

impl Topology {
    /// Starts `replicas + 1` servers (server ids 1, 2, …) and sets up
    /// replication; returns once the source reports semi-sync ON with exactly
    /// one semi-sync client and every replica's threads run. Panics otherwise.
    pub async fn source_with_replicas(replicas: usize) -> Topology {
        Topology::start_with(
            (0..=replicas)
                .map(|i| MariaDbOptions::new(format!("db{}", i + 1), i as u32 + 1))
                .collect(),
        )
        .await
    }

    /// Like [`Topology::source_with_replicas`] with each server's options
    /// given (a server inside a [`crate::NetHost`], extra flags): the first
    /// is the source, the second the semi-sync replica, the rest
    /// asynchronous replicas. Replicas connect to the source's
    /// `bind_address`, so a source in a namespace is replicated from
    /// through its veth.
    pub async fn start_with(servers: Vec<MariaDbOptions>) -> Topology {
        let count = servers.len();
        let mut set = tokio::task::JoinSet::new();
        for (i, opts) in servers.into_iter().enumerate() {
            set.spawn(async move { (i, MariaDb::start(opts).await) });
        }
        let mut started = Vec::with_capacity(count);
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(pair) => started.push(pair),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => panic!("starting a server: {e}"),
            }
        }
        started.sort_by_key(|(i, _)| *i);
        let topology = Topology {
            servers: started.into_iter().map(|(_, db)| db).collect(),
        };
        if let Err(e) = topology.set_up().await {
            panic!("setting up replication: {e:#}");
        }
        topology
    }

    async fn set_up(&self) -> anyhow::Result<()> {
        let source = self.source();
        let off = if source.flavour().is_mysql() {
            "SET GLOBAL super_read_only = 0; "
        } else {
            ""
        };
        source
            .exec(&format!(
                "{off}SET GLOBAL read_only = 0; SET GLOBAL rpl_semi_sync_master_enabled = 1"
            ))
            .await?;
        for (i, replica) in self.servers.iter().enumerate().skip(1) {
            replica.replicate_from(source, i == 1).await?;
        }
        for replica in self.replicas() {
            wait_replica_running(replica).await?;
        }
        if self.servers.len() > 1 {
            let conn = tokio::sync::Mutex::new(source.conn().await?);
            let ok = wait_until(START_TIMEOUT, || async {
                let conn = &mut *conn.lock().await;
                let status = status_var(conn, "Rpl_semi_sync_master_status").await;
                let clients = status_var(conn, "Rpl_semi_sync_master_clients").await;
                matches!((status, clients), (Ok(s), Ok(c)) if s == "ON" && c == "1")
            })
            .await;
            let mut conn = conn.into_inner();
            if ok.is_err() {
                let status = status_var(&mut conn, "Rpl_semi_sync_master_status").await?;
                let clients = status_var(&mut conn, "Rpl_semi_sync_master_clients").await?;
                bail!(
                    "{}: semi-sync not established (status {status}, clients {clients}, want ON and 1)",
                    source.name()
                );
            }
            conn.disconnect().await.ok();
        }
        tracing::info!(servers = self.servers.len(), "replication topology ready");
        Ok(())
    }

    /// The server the topology was built with as source (`db1`).
    pub fn source(&self) -> &MariaDb {
        &self.servers[0]
    }

    /// The replicas (`db2`, `db3`, …); `db2` is the semi-sync one.
    pub fn replicas(&self) -> &[MariaDb] {
        &self.servers[1..]
    }

    pub fn servers(&self) -> &[MariaDb] {
        &self.servers
    }

    pub fn servers_mut(&mut self) -> &mut [MariaDb] {
        &mut self.servers
    }

    /// `db{i+1}`.
    pub fn server(&self, i: usize) -> &MariaDb {
        &self.servers[i]
    }

    pub fn server_mut(&mut self, i: usize) -> &mut MariaDb {
        &mut self.servers[i]
    }

    /// Waits until every replica has applied everything in the source's
    /// binlog (`MASTER_GTID_WAIT` on the source's `@@gtid_binlog_pos`).
    pub async fn wait_replicated(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let source = self.source();
        let pos = global_var(&mut source.conn().await?, "gtid_binlog_pos").await?;
        for replica in self.replicas() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let mut conn = replica.conn().await?;
            let reached = wait_for_gtids(&mut conn, &pos, remaining)
                .await
                .with_context(|| replica.name().to_owned())?;
            if !reached {
                let status = replica_status(&mut conn)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                bail!(
                    "{} did not reach {}'s position {pos} within {limit:?}: executed {}, \
                     IO {} ({}), SQL {} ({})",
                    replica.name(),
                    source.name(),
                    global_var(&mut conn, "gtid_current_pos")
                        .await
                        .unwrap_or_default(),
                    status.get("Slave_IO_Running").map_or("?", String::as_str),
                    status.get("Last_IO_Error").map_or("", String::as_str),
                    status.get("Slave_SQL_Running").map_or("?", String::as_str),
                    status.get("Last_SQL_Error").map_or("", String::as_str),
                );
            }
            conn.disconnect().await.ok();
        }
        Ok(())
    }
}

async fn wait_replica_running(replica: &MariaDb) -> anyhow::Result<()> {
    let conn = tokio::sync::Mutex::new(replica.conn().await?);
    let last = std::sync::Mutex::new(HashMap::new());
    let ok = wait_until(START_TIMEOUT, || async {
        let Ok(Some(status)) = replica_status(&mut *conn.lock().await).await else {
            return false;
        };
        let running = status.get("Slave_IO_Running").is_some_and(|v| v == "Yes")
            && status.get("Slave_SQL_Running").is_some_and(|v| v == "Yes");
        *last.lock().unwrap() = status;
        running
    })
    .await;
    let conn = conn.into_inner();
    if ok.is_err() {
        let status = last.into_inner().unwrap();
        bail!(
            "{}: replication threads not running: IO {:?} ({:?}), SQL {:?} ({:?})",
            replica.name(),
            status.get("Slave_IO_Running"),
            status.get("Last_IO_Error"),
            status.get("Slave_SQL_Running"),
            status.get("Last_SQL_Error"),
        );
    }
    conn.disconnect().await.ok();
    Ok(())
}

/// The template datadir for this machine's server of `flavour`, built on
/// first use in this process (or by an earlier test run).
async fn template_datadir(flavour: Flavour) -> &'static Path {
    static TEMPLATES: [OnceCell<PathBuf>; 3] = [
        OnceCell::const_new(),
        OnceCell::const_new(),
        OnceCell::const_new(),
    ];
    let i = Flavour::ALL
        .iter()
        .position(|f| *f == flavour)
        .expect("every flavour is in ALL");
    TEMPLATES[i]
        .get_or_init(|| async {
            build_template(flavour).await.unwrap_or_else(|e| {
                panic!("creating the {} datadir template: {e:#}", flavour.name())
            })
        })
        .await
}

async fn build_template(flavour: Flavour) -> anyhow::Result<PathBuf> {
    let server = flavour.server();
    let out = tokio::process::Command::from(flavour.command(&server))
        .arg("--version")
        .output()
        .await
        .with_context(|| format!("running {} --version", server.display()))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(
        !version.is_empty(),
        "{} --version printed nothing: {}",
        server.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let key = if flavour.is_mysql() {
        fnv1a(&format!(
            "{TEMPLATE_REV}\n{version}\n{MYSQL_INNODB_ARGS:?}\n{MYSQL_USERS_SQL}"
        ))
    } else {
        fnv1a(&format!(
            "{TEMPLATE_REV}\n{version}\n{INNODB_ARGS:?}\n{USERS_SQL}"
        ))
    };
    let cache = bins::cache_dir();
    let done = cache.join(format!("mariadb-template-{key:016x}"));
    let datadir = done.join("data");
    // The rename below publishes a complete template atomically, so its
    // existence is the proof of completeness.
    if datadir.is_dir() {
        return Ok(datadir);
    }
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    remove_abandoned_builds(&cache);
    let work = cache.join(format!(
        ".mariadb-template-{key:016x}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let result = if flavour.is_mysql() {
        populate_mysql_template(flavour, &work).await
    } else {
        populate_template(flavour, &work).await
    };
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&work);
        return Err(e);
    }
    if std::fs::rename(&work, &done).is_err() {
        // Another test process published the same template first.
        let _ = std::fs::remove_dir_all(&work);
        ensure!(
            datadir.is_dir(),
            "publishing template {} failed",
            done.display()
        );
    }
    tracing::info!(path = %datadir.display(), "mariadb datadir template created");
    Ok(datadir)
}

async fn populate_template(flavour: Flavour, work: &Path) -> anyhow::Result<()> {
    let datadir = work.join("data");
    let log = work.join("install.log");
    let mut install = match flavour {
        Flavour::MariaDb1011 => std::process::Command::new(bins::mariadb_install_db()),
        _ => {
            let root = flavour.root();
            let mut c = std::process::Command::new(root.join("scripts/mariadb-install-db"));
            // Finds its mariadbd and SQL files under basedir.
            c.arg("--no-defaults")
                .arg(format!("--basedir={}", root.display()));
            c
        }
    };
    if flavour == Flavour::MariaDb1011 {
        install.arg("--no-defaults");
    }
    install
        .arg(format!("--datadir={}", datadir.display()))
        .args([
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--user=root",
        ])
        .args(INNODB_ARGS);
    run_to_completion("mariadb-install-db", install, &log).await?;
    // Users are created in bootstrap mode, with binary logging off: on a
    // running server they would become GTIDs that differ per server and
    // break strict-mode replication between servers copied from here.
    let sql_path = work.join("users.sql");
    std::fs::write(&sql_path, USERS_SQL)?;
    let mut bootstrap = std::process::Command::new(flavour.server());
    bootstrap
        .arg("--no-defaults")
        .arg(format!("--datadir={}", datadir.display()))
        .args(["--bootstrap", "--user=root", "--skip-log-bin"])
        .args(flavour.location_args(work))
        .args(INNODB_ARGS)
        .stdin(Stdio::from(std::fs::File::open(&sql_path)?));
    let log = work.join("bootstrap.log");
    run_to_completion("mariadbd --bootstrap", bootstrap, &log).await?;
    // A failing statement in bootstrap mode does not always show in the
    // exit status.
    let tail = log_tail(&log, 20);
    ensure!(
        !tail.contains("ERROR"),
        "mariadbd --bootstrap reported an error; last lines of {}:\n{tail}",
        log.display()
    );
    Ok(())
}

async fn populate_mysql_template(flavour: Flavour, work: &Path) -> anyhow::Result<()> {
    let datadir = work.join("data");
    let sql_path = work.join("users.sql");
    std::fs::write(&sql_path, MYSQL_USERS_SQL)?;
    let files = work.join("files");
    std::fs::create_dir_all(&files)?;
    let mut init = flavour.command(&flavour.server());
    init.arg("--no-defaults")
        .arg(format!("--datadir={}", datadir.display()))
        .args(["--initialize-insecure", "--user=root"])
        .arg(format!("--init-file={}", sql_path.display()))
        .args(flavour.location_args(&files))
        .args(MYSQL_INNODB_ARGS);
    let log = work.join("initialize.log");
    run_to_completion("mysqld --initialize-insecure", init, &log).await?;
    let tail = log_tail(&log, 20);
    ensure!(
        !tail.contains("[ERROR]"),
        "mysqld --initialize-insecure reported an error; last lines of {}:\n{tail}",
        log.display()
    );
    // auto.cnf holds the server_uuid, which names every GTID a server
    // writes: each copy must make its own at first start.
    let _ = std::fs::remove_file(datadir.join("auto.cnf"));
    let _ = std::fs::remove_dir_all(&files);
    Ok(())
}

async fn run_to_completion(
    what: &str,
    cmd: std::process::Command,
    log: &Path,
) -> anyhow::Result<()> {
    let mut proc = Proc::spawn(what, cmd, log).await?;
    match proc.wait(Duration::from_secs(180)).await {
        Some(status) if status.success() => Ok(()),
        Some(status) => bail!(
            "{what} failed ({status}); last lines of {}:\n{}",
            log.display(),
            log_tail(log, 30)
        ),
        None => bail!(
            "{what} did not finish within 180 s; last lines of {}:\n{}",
            log.display(),
            log_tail(log, 30)
        ),
    }
}

/// Build directories left behind by test processes that died mid-build.
fn remove_abandoned_builds(cache: &Path) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(".mariadb-template-") else {
            continue;
        };
        let pid = rest.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Stable across Rust versions, unlike `DefaultHasher`; the value names a
/// cache directory shared by test runs built with different toolchains.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_gtids_per_flavour() {
        let status = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let a = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let b = "4e11fa47-71ca-11e1-9e33-c80aa9429562";
        assert_eq!(
            received_gtids(
                false,
                &status(&[("Gtid_IO_Pos", "0-1-5"), ("Gtid_Slave_Pos", "0-1-4")])
            ),
            "0-1-5"
        );
        // Repointed: nothing retrieved from the new source yet.
        assert_eq!(
            received_gtids(
                true,
                &status(&[
                    ("Retrieved_Gtid_Set", ""),
                    ("Executed_Gtid_Set", &format!("{a}:1-9,\n{b}:1-3")),
                ])
            ),
            format!("{a}:1-9,{b}:1-3")
        );
        assert_eq!(
            received_gtids(
                true,
                &status(&[
                    ("Retrieved_Gtid_Set", &format!("{b}:3-7")),
                    ("Executed_Gtid_Set", &format!("{a}:1-9,\n{b}:1-3")),
                ])
            ),
            format!("{b}:3-7,{a}:1-9,{b}:1-3")
        );
    }
}
