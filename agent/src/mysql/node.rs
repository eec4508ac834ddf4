//! One database server, as the agent sees it: a single connection, its flavour detected when the
//! connection opens, and typed operations each bounded by a timeout.
//!
//! One connection rather than a pool: the agent's load is a few statements per tick, each
//! database host gets one connection per agent watching it, and `kill_client_connections` must
//! know which connection is ours. A connection that fails at the I/O level or times out is
//! thrown away; the next operation reconnects and detects the flavour again (a server may have
//! been upgraded in between).

use std::fmt;
use std::time::Duration;
use tracing::Instrument as _;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Params, Row};
use tokio::time::{timeout, timeout_at, Instant};

use super::dialect::{self, Dialect, InvalidInput, SemiSyncPlugins, SourceSpec};
use super::flavor::{Flavor, FlavorError};
use super::gtid::{GtidState, Uuid};
use super::status::{
    client_threads, name_values, parse_gtid_executed, AckCounters, BinlogStatus, ClientThread,
    MariaDbPositions, ParseError, ReadOnly, ReplicaStatus, RowMap, SemiSyncState, ServerInfoRow,
};

/// A failed operation on a node; every variant names the node and the operation.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("connecting to {addr} timed out after {after:?}")]
    ConnectTimeout { addr: String, after: Duration },
    #[error("connecting to {addr} failed")]
    Connect {
        addr: String,
        #[source]
        source: mysql_async::Error,
    },
    #[error("{addr} is not a server successover supports")]
    Unsupported {
        addr: String,
        #[source]
        source: FlavorError,
    },
    #[error("{op} on {addr} timed out after {after:?}")]
    Timeout {
        op: &'static str,
        addr: String,
        after: Duration,
    },
    #[error("{op} on {addr} failed")]
    Query {
        op: &'static str,
        addr: String,
        #[source]
        source: mysql_async::Error,
    },
    #[error("{op} on {addr} returned an unexpected result")]
    Parse {
        op: &'static str,
        addr: String,
        #[source]
        source: ParseError,
    },
    #[error("{op} on {addr} refused its input")]
    Invalid {
        op: &'static str,
        addr: String,
        #[source]
        source: InvalidInput,
    },
    #[error("{op} on {addr}: the semi-sync {side} plugin is not loaded")]
    SemiSyncUnavailable {
        op: &'static str,
        addr: String,
        side: &'static str,
    },
    #[error("{op} on {addr}: GTIDs of the other flavour given to a {flavor} server")]
    WrongGtidFlavour {
        op: &'static str,
        addr: String,
        flavor: Flavor,
    },
}

impl NodeError {
    /// The MySQL error code, when the server refused a statement.
    pub fn server_error_code(&self) -> Option<u16> {
        match self {
            NodeError::Query {
                source: mysql_async::Error::Server(e),
                ..
            }
            | NodeError::Connect {
                source: mysql_async::Error::Server(e),
                ..
            } => Some(e.code),
            _ => None,
        }
    }

    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            NodeError::Timeout { .. } | NodeError::ConnectTimeout { .. }
        )
    }

    /// The operation that failed (`"connect"` for connection failures).
    pub fn op(&self) -> &'static str {
        match self {
            NodeError::ConnectTimeout { .. }
            | NodeError::Connect { .. }
            | NodeError::Unsupported { .. } => "connect",
            NodeError::Timeout { op, .. }
            | NodeError::Query { op, .. }
            | NodeError::Parse { op, .. }
            | NodeError::Invalid { op, .. }
            | NodeError::SemiSyncUnavailable { op, .. }
            | NodeError::WrongGtidFlavour { op, .. } => op,
        }
    }
}

pub type Result<T, E = NodeError> = std::result::Result<T, E>;

/// How to reach a node.
#[derive(Clone)]
pub struct NodeConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    /// TCP connect, handshake and flavour detection together.
    pub connect_timeout: Duration,
    /// Each statement; also the server-side `lock_wait_timeout`, so a `SET GLOBAL read_only`
    /// we gave up on does not keep queueing for the global read lock (blocking every writer)
    /// for the server default of a day or a year.
    pub query_timeout: Duration,
    /// Each read. Shorter than `query_timeout`: reads are how a hung
    /// server is noticed, and the first probe after it froze runs on a
    /// connection that was healthy a moment ago.
    pub read_timeout: Duration,
}

impl NodeConfig {
    pub fn new(
        host: impl Into<String>,
        port: u16,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        NodeConfig {
            host: host.into(),
            port,
            user: user.into(),
            password: password.into(),
            connect_timeout: Duration::from_secs(2),
            query_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(2),
        }
    }
}

impl fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("connect_timeout", &self.connect_timeout)
            .field("query_timeout", &self.query_timeout)
            .field("read_timeout", &self.read_timeout)
            .finish()
    }
}

/// What the connection learnt about the server when it opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub flavor: Flavor,
    /// `@@version` verbatim.
    pub version_string: String,
    pub version_comment: String,
    pub server_id: u32,
    /// MariaDB has none.
    pub server_uuid: Option<Uuid>,
    /// Our own connection, which `kill_client_connections` spares.
    pub connection_id: u64,
    /// Whether the session's `sql_mode` lacks `NO_BACKSLASH_ESCAPES`.
    pub backslash_escapes: bool,
    /// When the server started, Unix seconds on its own clock: the same on
    /// every connection to one run of the server, so a restart shows
    /// without comparing two hosts' clocks. `None` where the account
    /// cannot read it.
    pub started_s: Option<u64>,
}

impl ServerInfo {
    pub fn dialect(&self) -> Dialect {
        self.flavor.into()
    }
}

struct Session {
    conn: Conn,
    info: ServerInfo,
}

/// A database server. Operations take `&mut self`: one statement at a time on one connection.
pub struct Node {
    cfg: NodeConfig,
    addr: String,
    session: Option<Session>,
}

/// Closes a connection we no longer trust without waiting on the server. `Conn`'s own `Drop`
/// first reads the rest of any pending result, which a frozen server never sends: that task and
/// its socket would live forever, one more on every timed-out tick. `disconnect` marks the
/// connection closed before it writes anything, so when the bounded wait below gives up, the
/// socket is simply closed.
fn discard(conn: Conn) {
    tokio::spawn(
        async move {
            let _ = timeout(Duration::from_secs(1), conn.disconnect()).await;
        }
        .in_current_span(),
    );
}

fn whole_secs_at_least_one(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// The processlist's user of a connection still authenticating.
const UNAUTHENTICATED: &str = "unauthenticated user";

impl Node {
    /// No I/O happens until the first operation.
    pub fn new(cfg: NodeConfig) -> Self {
        let addr = if cfg.host.contains(':') {
            format!("[{}]:{}", cfg.host, cfg.port)
        } else {
            format!("{}:{}", cfg.host, cfg.port)
        };
        Node {
            cfg,
            addr,
            session: None,
        }
    }

    /// `host:port`, as errors name the node.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// When the server of the open connection started, without I/O.
    pub fn cached_started(&self) -> Option<u64> {
        self.session.as_ref().and_then(|s| s.info.started_s)
    }

    pub fn is_connected(&self) -> bool {
        self.session.is_some()
    }

    /// Connects (if not connected) and returns what was detected.
    pub async fn server_info(&mut self) -> Result<&ServerInfo> {
        Ok(&self.session().await?.info)
    }

    pub async fn flavor(&mut self) -> Result<Flavor> {
        Ok(self.server_info().await?.flavor)
    }

    pub async fn version(&mut self) -> Result<super::flavor::Version> {
        Ok(self.server_info().await?.flavor.version())
    }

    pub async fn server_id(&mut self) -> Result<u32> {
        Ok(self.server_info().await?.server_id)
    }

    pub async fn server_uuid(&mut self) -> Result<Option<Uuid>> {
        Ok(self.server_info().await?.server_uuid)
    }

    /// The default channel's replica status; `None` when the server is not a replica.
    pub async fn replica_status(&mut self) -> Result<Option<ReplicaStatus>> {
        const OP: &str = "replica_status";
        let d = self.dialect().await?;
        let rows = self.query_rows(OP, d.show_replica_status()).await?;
        ReplicaStatus::parse(d, &rows).map_err(|e| self.parse_error(OP, e))
    }

    /// The current binlog file and position; `None` when binary logging is off.
    pub async fn binary_log_status(&mut self) -> Result<Option<BinlogStatus>> {
        const OP: &str = "binary_log_status";
        let d = self.dialect().await?;
        let rows = self.query_rows(OP, d.show_binary_log_status()).await?;
        BinlogStatus::parse(&rows).map_err(|e| self.parse_error(OP, e))
    }

    /// Everything this server holds: MariaDB `@@gtid_current_pos`, MySQL `@@gtid_executed`.
    pub async fn gtid_executed(&mut self) -> Result<GtidState> {
        const OP: &str = "gtid_executed";
        let d = self.dialect().await?;
        let row = self.query_first(OP, d.gtid_executed_query()).await?;
        parse_gtid_executed(d, &row).map_err(|e| self.parse_error(OP, e))
    }

    /// MariaDB `@@gtid_binlog_state`: the last GTID per (domain, server id)
    /// in the binlog, as (domain, server id, seq). `None` on MySQL, whose
    /// executed set is exact already.
    pub async fn mariadb_binlog_state(&mut self) -> Result<Option<Vec<(u32, u32, u64)>>> {
        const OP: &str = "mariadb_binlog_state";
        let d = self.dialect().await?;
        if !d.is_mariadb() {
            return Ok(None);
        }
        let row = self
            .query_first(OP, "SELECT CAST(@@GLOBAL.gtid_binlog_state AS CHAR)")
            .await?;
        let text = match row.at(0) {
            Some(Some(v)) => v.to_owned(),
            _ => String::new(),
        };
        super::gtid::parse_binlog_state(&text)
            .map(Some)
            .map_err(|e| {
                self.parse_error(
                    OP,
                    ParseError::Gtid {
                        column: "gtid_binlog_state".into(),
                        source: e,
                    },
                )
            })
    }

    /// MariaDB's binlog, slave and current positions; `None` on MySQL.
    pub async fn mariadb_gtid_positions(&mut self) -> Result<Option<MariaDbPositions>> {
        const OP: &str = "mariadb_gtid_positions";
        let d = self.dialect().await?;
        if !d.is_mariadb() {
            return Ok(None);
        }
        let row = self.query_first(OP, d.gtid_executed_query()).await?;
        MariaDbPositions::parse(&row)
            .map(Some)
            .map_err(|e| self.parse_error(OP, e))
    }

    /// MariaDB: before a server that wrote transactions of its own starts
    /// replicating with `MASTER_USE_GTID=slave_pos`, its `gtid_slave_pos`
    /// must cover what it wrote, or it asks the new source for history it
    /// already has (and fails once those binlogs are purged). No-op on
    /// MySQL, whose auto-positioning uses `gtid_executed`. The replica must
    /// be stopped.
    pub async fn align_gtid_slave_pos(&mut self) -> Result<()> {
        let d = self.dialect().await?;
        if !d.is_mariadb() {
            return Ok(());
        }
        self.query_drop(
            "align_gtid_slave_pos",
            "SET GLOBAL gtid_slave_pos = @@GLOBAL.gtid_current_pos",
        )
        .await
    }

    pub async fn read_only(&mut self) -> Result<ReadOnly> {
        const OP: &str = "read_only";
        let d = self.dialect().await?;
        let row = self.query_first(OP, d.read_only_query()).await?;
        ReadOnly::parse(d, &row).map_err(|e| self.parse_error(OP, e))
    }

    /// Read-only on: MySQL also sets `super_read_only`. Off: MySQL clears `super_read_only`
    /// first.
    pub async fn set_read_only(&mut self, on: bool) -> Result<()> {
        let d = self.dialect().await?;
        for sql in d.set_read_only(on) {
            self.query_drop("set_read_only", sql).await?;
        }
        Ok(())
    }

    pub async fn semi_sync(&mut self) -> Result<SemiSyncState> {
        const OP: &str = "semi_sync";
        let vars = self
            .query_rows(OP, dialect::SHOW_SEMI_SYNC_VARIABLES)
            .await?;
        let status = self.query_rows(OP, dialect::SHOW_SEMI_SYNC_STATUS).await?;
        let parsed = name_values(&vars).and_then(|v| {
            let s = name_values(&status)?;
            SemiSyncState::parse(&v, &s)
        });
        parsed.map_err(|e| self.parse_error(OP, e))
    }

    /// The source side's ACK counters alone (sessions waiting, commits
    /// acknowledged with and without an ACK), for the coordinator's probe:
    /// `None` where no semi-sync source plugin reports them.
    pub async fn ack_counters(&mut self) -> Result<Option<AckCounters>> {
        let rows = self
            .query_rows("ack_counters", dialect::SHOW_SEMI_SYNC_STATUS)
            .await?;
        let values = name_values(&rows).map_err(|e| self.parse_error("ack_counters", e))?;
        Ok(AckCounters::from_status(&values))
    }

    /// Heartbeats this replica has received from its source (MariaDB
    /// `Slave_received_heartbeats`, MySQL `COUNT_RECEIVED_HEARTBEATS`). With
    /// a half-second heartbeat period, a replica whose count and received
    /// position both stand still has lost its source, long before
    /// `slave_net_timeout` says so: how a hung or cut-off source is noticed
    /// in seconds.
    pub async fn received_heartbeats(&mut self) -> Result<Option<u64>> {
        const OP: &str = "received_heartbeats";
        let d = self.dialect().await?;
        let sql = if d.is_mariadb() {
            "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'SLAVE_RECEIVED_HEARTBEATS'"
        } else {
            "SELECT COUNT_RECEIVED_HEARTBEATS FROM performance_schema.replication_connection_status WHERE CHANNEL_NAME = ''"
        };
        let rows = self.query_rows(OP, sql).await?;
        Ok(rows
            .first()
            .and_then(|r| r.at(0).flatten())
            .and_then(|v| v.trim().parse().ok()))
    }

    async fn semi_sync_plugins(&mut self, op: &'static str) -> Result<SemiSyncPlugins> {
        let vars = self
            .query_rows(op, dialect::SHOW_SEMI_SYNC_VARIABLES)
            .await?;
        let names = name_values(&vars).map_err(|e| self.parse_error(op, e))?;
        Ok(SemiSyncPlugins::detect(names.keys().map(String::as_str)))
    }

    /// Enables or disables the source side. Disabling where the plugin is not loaded is a no-op
    /// (semi-sync is off either way); enabling there is an error: loading plugins is the
    /// deployment's job, not the agent's.
    pub async fn set_semi_sync_source(&mut self, on: bool) -> Result<()> {
        const OP: &str = "set_semi_sync_source";
        match self.semi_sync_plugins(OP).await?.source {
            Some(naming) => self.query_drop(OP, &naming.set_source_enabled(on)).await,
            None if !on => Ok(()),
            None => Err(NodeError::SemiSyncUnavailable {
                op: OP,
                addr: self.addr.clone(),
                side: "source",
            }),
        }
    }

    /// Sets rule 1's source-side settings (see [`dialect::SemiSyncNaming::set_lossless`]);
    /// a server without the source plugin has nothing to set.
    pub async fn set_semi_sync_lossless(&mut self) -> Result<()> {
        const OP: &str = "set_semi_sync_lossless";
        let Some(naming) = self.semi_sync_plugins(OP).await?.source else {
            return Ok(());
        };
        for statement in naming.set_lossless() {
            self.query_drop(OP, &statement).await?;
        }
        Ok(())
    }

    /// Enables or disables the replica side, and restarts the IO thread when that is what it
    /// takes: the IO thread only negotiates semi-sync when it connects, so on both flavours a
    /// running replica keeps its old mode until restarted. A stopped IO thread stays stopped —
    /// it may be stopped on purpose, to fence a source. Returns whether it restarted the thread.
    pub async fn set_semi_sync_replica(&mut self, on: bool) -> Result<bool> {
        const OP: &str = "set_semi_sync_replica";
        let Some(naming) = self.semi_sync_plugins(OP).await?.replica else {
            if on {
                return Err(NodeError::SemiSyncUnavailable {
                    op: OP,
                    addr: self.addr.clone(),
                    side: "replica",
                });
            }
            return Ok(false);
        };
        self.query_drop(OP, &naming.set_replica_enabled(on)).await?;
        let active = self
            .replica_status()
            .await?
            .is_some_and(|r| r.io_thread_active());
        if !active || self.semi_sync().await?.replica_status_on == on {
            return Ok(false);
        }
        let d = self.dialect().await?;
        self.query_drop(OP, d.stop_io_thread()).await?;
        self.query_drop(OP, d.start_io_thread()).await?;
        Ok(true)
    }

    /// Commits one small transaction (on the source). A commit waiting for
    /// a semi-sync ACK is released only by an ACK at or past its own binlog
    /// position; a replica that just became the semi-sync one reconnects
    /// past that position and has nothing to acknowledge until a later
    /// transaction arrives. After moving the flag, this is that transaction.
    pub async fn write_heartbeat(&mut self) -> Result<()> {
        const OP: &str = "write_heartbeat";
        const WRITE: &str = "REPLACE INTO successover.heartbeat (id, at) VALUES (1, NOW(6))";
        match self.query_drop(OP, WRITE).await {
            // ER_BAD_DB_ERROR, ER_NO_SUCH_TABLE: first use on this cluster.
            Err(e) if matches!(e.server_error_code(), Some(1049) | Some(1146)) => {
                self.query_drop(
                    OP,
                    "CREATE DATABASE IF NOT EXISTS successover; \
                     CREATE TABLE IF NOT EXISTS successover.heartbeat \
                     (id INT NOT NULL PRIMARY KEY, at DATETIME(6) NOT NULL) ENGINE=InnoDB",
                )
                .await?;
                self.query_drop(OP, WRITE).await
            }
            other => other,
        }
    }

    /// Blocks every commit on this server until [`Node::release_commits`]
    /// or until this connection closes (so a coordinator that dies never
    /// leaves a server blocked). `false` when the flavour needs no block
    /// (see [`Dialect::block_commits`]). Waits for commits already under
    /// way at most `wait`.
    pub async fn block_commits(&mut self, wait: Duration) -> Result<bool> {
        const OP: &str = "block_commits";
        let d = self.dialect().await?;
        let Some(sql) = d.block_commits() else {
            return Ok(false);
        };
        let secs = wait.as_secs().max(1);
        self.query_drop(OP, &format!("SET SESSION lock_wait_timeout = {secs}"))
            .await?;
        self.query_drop(OP, sql).await?;
        Ok(true)
    }

    pub async fn release_commits(&mut self) -> Result<()> {
        let d = self.dialect().await?;
        match d.release_commits() {
            Some(sql) => self.query_drop("release_commits", sql).await,
            None => Ok(()),
        }
    }

    /// Stops receiving from the source: once the only semi-sync replica has stopped its IO
    /// thread, the source can collect no more ACKs and so acknowledge no more commits.
    pub async fn stop_io_thread(&mut self) -> Result<()> {
        let d = self.dialect().await?;
        self.query_drop("stop_io_thread", d.stop_io_thread()).await
    }

    /// One round trip, bounded by the read timeout.
    pub async fn ping(&mut self) -> Result<()> {
        self.query_rows("ping", "SELECT 1").await.map(|_| ())
    }

    /// Starts the applier; a no-op (with a warning) when it runs.
    pub async fn start_sql_thread(&mut self) -> Result<()> {
        let d = self.dialect().await?;
        self.query_drop("start_sql_thread", d.start_sql_thread())
            .await
    }

    pub async fn start_io_thread(&mut self) -> Result<()> {
        let d = self.dialect().await?;
        self.query_drop("start_io_thread", d.start_io_thread())
            .await
    }

    pub async fn stop_replica(&mut self) -> Result<()> {
        let d = self.dialect().await?;
        if !d.is_mariadb() {
            self.end_stranded_applier().await?;
        }
        self.query_drop("stop_replica", d.stop_replica()).await
    }

    /// MySQL: with the IO thread already stopped, a relay log that ends
    /// inside a transaction (its source hung while sending it) leaves the
    /// applier waiting for the rest, and `STOP REPLICA` waits up to 60 s
    /// for that group to finish before it gives up; each failover step
    /// that stops a replica paid it (131 s to the first write in one
    /// run). Killing the applier threads ends the wait at once and rolls
    /// back only that partial transaction; nothing complete is lost, and
    /// what it had not applied stays in the relay log (or comes again by
    /// auto-position after a repoint).
    async fn end_stranded_applier(&mut self) -> Result<()> {
        const OP: &str = "end_stranded_applier";
        let Some(st) = self.replica_status().await? else {
            return Ok(());
        };
        if st.io_running != super::status::IoRunning::No || !st.sql_running {
            return Ok(());
        }
        let rows = self
            .query_rows(
                OP,
                "SELECT PROCESSLIST_ID FROM performance_schema.threads \
                 WHERE NAME IN ('thread/sql/replica_sql', 'thread/sql/replica_worker', \
                 'thread/sql/slave_sql', 'thread/sql/slave_worker') AND PROCESSLIST_ID IS NOT NULL",
            )
            .await?;
        for id in rows
            .iter()
            .filter_map(|r| r.at(0).flatten().and_then(|v| v.trim().parse::<u64>().ok()))
        {
            match self.query_drop(OP, &dialect::kill_connection(id)).await {
                Ok(()) => {}
                Err(e) if e.server_error_code() == Some(dialect::ER_NO_SUCH_THREAD) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub async fn start_replica(&mut self) -> Result<()> {
        let d = self.dialect().await?;
        self.query_drop("start_replica", d.start_replica()).await
    }

    /// Forgets the replication configuration entirely (the node stops being a replica).
    pub async fn reset_replica_all(&mut self) -> Result<()> {
        let d = self.dialect().await?;
        self.query_drop("reset_replica_all", d.reset_replica_all())
            .await
    }

    /// Points replication at a new source with GTID auto-positioning. Stop the replica first.
    pub async fn change_source(&mut self, spec: &SourceSpec) -> Result<()> {
        const OP: &str = "change_source";
        let (d, backslash_escapes) = {
            let info = self.server_info().await?;
            (info.dialect(), info.backslash_escapes)
        };
        let sql = d
            .change_source(spec, backslash_escapes)
            .map_err(|e| NodeError::Invalid {
                op: OP,
                addr: self.addr.clone(),
                source: e,
            })?;
        self.query_drop(OP, &sql)
            .await
            .map_err(|e| redact(e, &spec.password))
    }

    /// Waits until this server has applied `target`: `true` when it has, `false` when `wait`
    /// ran out first. What the server already holds (its own writes included) counts as
    /// applied without a wait.
    pub async fn wait_for_gtid(&mut self, target: &GtidState, wait: Duration) -> Result<bool> {
        const OP: &str = "wait_for_gtid";
        let info = self.server_info().await?;
        let d = info.dialect();
        let flavor = info.flavor;
        if matches!(target, GtidState::MariaDb(_)) != d.is_mariadb() {
            return Err(NodeError::WrongGtidFlavour {
                op: OP,
                addr: self.addr.clone(),
                flavor,
            });
        }
        // MASTER_GTID_WAIT looks at gtid_slave_pos only, which never holds the server's own
        // writes: a former source waiting for a position whose last GTID in a domain is its
        // own (a switch back with nothing written since) would wait out the limit. What the
        // server already holds is left out of the wait.
        let remaining = match target {
            GtidState::MariaDb(want) => {
                let GtidState::MariaDb(held) = self.gtid_executed().await? else {
                    return Err(NodeError::WrongGtidFlavour {
                        op: OP,
                        addr: self.addr.clone(),
                        flavor,
                    });
                };
                GtidState::MariaDb(want.not_in(&held))
            }
            GtidState::MySql(_) => target.clone(),
        };
        if remaining.is_empty() {
            return Ok(true);
        }
        let params = Params::Positional(vec![
            remaining.to_string().into(),
            d.gtid_wait_timeout(wait),
        ]);
        // The server-side wait ends first (MySQL rounds up to a whole second); the client-side
        // limit only catches a server that stopped answering.
        let limit = wait + Duration::from_secs(1) + self.cfg.query_timeout;
        let row = self.exec_first(OP, d.gtid_wait(), params, limit).await?;
        let value = row.at(0).flatten();
        let reached = value
            .map(|v| v.trim().parse::<i64>().ok())
            .and_then(|v| d.gtid_wait_reached(v));
        reached.ok_or_else(|| {
            self.parse_error(
                OP,
                ParseError::BadValue {
                    column: d.gtid_wait().to_owned(),
                    value: value.unwrap_or("NULL").to_owned(),
                },
            )
        })
    }

    /// Client connections: not replication or other server threads, not our own connection.
    /// Without the PROCESS privilege the server lists only our own account's threads, so the
    /// agent's account needs it (and CONNECTION ADMIN or SUPER to kill them).
    pub async fn processlist_clients(&mut self) -> Result<Vec<ClientThread>> {
        const OP: &str = "processlist_clients";
        let own = self.session().await?.info.connection_id;
        let rows = self.query_rows(OP, dialect::SHOW_PROCESSLIST).await?;
        client_threads(&rows, own).map_err(|e| self.parse_error(OP, e))
    }

    /// Kills every binlog dump thread (each replica's connection, as the
    /// source sees it). Returns the ids it killed.
    pub async fn kill_binlog_dumps(&mut self) -> Result<Vec<u64>> {
        const OP: &str = "kill_binlog_dumps";
        let rows = self.query_rows(OP, dialect::SHOW_PROCESSLIST).await?;
        let dumps =
            super::status::binlog_dump_threads(&rows).map_err(|e| self.parse_error(OP, e))?;
        let mut killed = Vec::new();
        for id in dumps {
            match self.query_drop(OP, &dialect::kill_connection(id)).await {
                Ok(()) => killed.push(id),
                Err(e) if e.server_error_code() == Some(dialect::ER_NO_SUCH_THREAD) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(killed)
    }

    /// Kills the client connections whose commit waits for a semi-sync ACK
    /// (their clients get an error, never an OK), except `except_users`'.
    /// Returns the ids it killed.
    pub async fn kill_ack_waiters(&mut self, except_users: &[&str]) -> Result<Vec<u64>> {
        const OP: &str = "kill_ack_waiters";
        let clients = self.processlist_clients().await?;
        let mut killed = Vec::new();
        for c in clients {
            let waiting = c
                .state
                .as_deref()
                .is_some_and(|s| s.to_ascii_lowercase().contains("semi-sync ack"));
            if !waiting || except_users.contains(&c.user.as_str()) {
                continue;
            }
            match self.query_drop(OP, &dialect::kill_connection(c.id)).await {
                Ok(()) => killed.push(c.id),
                Err(e) if e.server_error_code() == Some(dialect::ER_NO_SUCH_THREAD) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(killed)
    }

    /// Kills every client connection except ours and `spare` (by id), whatever its account.
    /// Returns the ids it killed.
    pub async fn kill_clients_but(&mut self, spare: &[u64]) -> Result<Vec<u64>> {
        const OP: &str = "kill_clients_but";
        let clients = self.processlist_clients().await?;
        let mut killed = Vec::new();
        for c in clients.into_iter().filter(|c| !spare.contains(&c.id)) {
            match self.query_drop(OP, &dialect::kill_connection(c.id)).await {
                Ok(()) => killed.push(c.id),
                Err(e) if e.server_error_code() == Some(dialect::ER_NO_SUCH_THREAD) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(killed)
    }

    /// The processlist state of connection `id`; `None` when it is gone.
    pub async fn state_of(&mut self, id: u64) -> Result<Option<String>> {
        let clients = self.processlist_clients().await?;
        Ok(clients
            .into_iter()
            .find(|c| c.id == id)
            .map(|c| c.state.unwrap_or_default()))
    }

    /// Kills every client connection except ours and those of `except_users` (peers' agents,
    /// say), sparing replication threads. Returns the ids it killed; connections that ended on
    /// their own meanwhile are skipped. A client that bypasses the proxy is exactly what this
    /// is for, so it runs after `set_read_only(true)`, not instead of it.
    pub async fn kill_client_connections(&mut self, except_users: &[&str]) -> Result<Vec<u64>> {
        const OP: &str = "kill_client_connections";
        let clients = self.processlist_clients().await?;
        let mut killed = Vec::new();
        for c in clients {
            // Still authenticating, it cannot commit yet, and it may be an
            // agent's own connection (the commit block's, say) that would
            // never get through; the next pass sees its user.
            if except_users.contains(&c.user.as_str()) || c.user == UNAUTHENTICATED {
                continue;
            }
            match self.query_drop(OP, &dialect::kill_connection(c.id)).await {
                Ok(()) => killed.push(c.id),
                Err(e) if e.server_error_code() == Some(dialect::ER_NO_SUCH_THREAD) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(killed)
    }

    /// The accounts whose commits go through `read_only`: MariaDB's
    /// `READ_ONLY ADMIN` granted directly (a grant through a role is not
    /// seen). None on MySQL, whose `super_read_only` holds every account.
    /// How this server applies replicated transactions; see
    /// [`super::status::ApplySettings`].
    pub async fn apply_settings(&mut self) -> Result<super::status::ApplySettings> {
        const OP: &str = "apply_settings";
        let rows = self.query_rows(OP, dialect::SHOW_APPLY_SETTINGS).await?;
        super::status::name_values(&rows)
            .and_then(|v| super::status::ApplySettings::parse(&v))
            .map_err(|e| self.parse_error(OP, e))
    }

    pub async fn read_only_writers(&mut self) -> Result<Vec<String>> {
        const OP: &str = "read_only_writers";
        if !self.dialect().await?.is_mariadb() {
            return Ok(Vec::new());
        }
        let rows = self.query_rows(OP, dialect::READ_ONLY_WRITERS).await?;
        let mut users: Vec<String> = rows
            .iter()
            .filter_map(|r| r.get("grantee").flatten().and_then(dialect::grantee_user))
            .collect();
        users.sort();
        users.dedup();
        Ok(users)
    }

    /// Closes the connection politely, waiting at most `connect_timeout`.
    pub async fn close(mut self) {
        if let Some(s) = self.session.take() {
            let _ = timeout(self.cfg.connect_timeout, s.conn.disconnect()).await;
        }
    }

    // -----------------------------------------------------------------------------------------

    async fn dialect(&mut self) -> Result<Dialect> {
        Ok(self.server_info().await?.dialect())
    }

    async fn session(&mut self) -> Result<&mut Session> {
        let s = match self.session.take() {
            Some(s) => s,
            None => self.open().await?,
        };
        Ok(self.session.insert(s))
    }

    async fn open(&self) -> Result<Session> {
        let deadline = Instant::now() + self.cfg.connect_timeout;
        let connect_timeout = || NodeError::ConnectTimeout {
            addr: self.addr.clone(),
            after: self.cfg.connect_timeout,
        };
        let connect_error = |e| NodeError::Connect {
            addr: self.addr.clone(),
            source: e,
        };
        let opts = OptsBuilder::default()
            .ip_or_hostname(self.cfg.host.clone())
            .tcp_port(self.cfg.port)
            .user(Some(self.cfg.user.clone()))
            .pass(Some(self.cfg.password.clone()))
            // mysql_async would otherwise switch a loopback TCP connection to the server's unix
            // socket, and the agent must see the server the way peers see it.
            .prefer_socket(false)
            .tcp_keepalive(Some(10_000u32))
            .stmt_cache_size(8);
        let mut conn = timeout_at(deadline, Conn::new(opts))
            .await
            .map_err(|_| connect_timeout())?
            .map_err(connect_error)?;

        let setup = format!(
            "SET SESSION lock_wait_timeout = {}",
            whole_secs_at_least_one(self.cfg.query_timeout)
        );
        let detected = timeout_at(deadline, async {
            conn.query_drop(setup).await?;
            let rows: Vec<Row> = conn.query(dialect::SERVER_INFO).await?;
            Ok::<_, mysql_async::Error>(rows)
        })
        .await;
        let rows = match detected {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                discard(conn);
                return Err(connect_error(e));
            }
            Err(_) => {
                discard(conn);
                return Err(connect_timeout());
            }
        };
        let parsed = rows
            .first()
            .map(RowMap::from_row)
            .ok_or(ParseError::NoRow)
            .and_then(|r| ServerInfoRow::parse(&r));
        let row = match parsed {
            Ok(r) => r,
            Err(e) => {
                discard(conn);
                return Err(NodeError::Parse {
                    op: "connect",
                    addr: self.addr.clone(),
                    source: e,
                });
            }
        };
        let flavor = match Flavor::detect(&row.version, &row.version_comment) {
            Ok(f) => f,
            Err(e) => {
                discard(conn);
                return Err(NodeError::Unsupported {
                    addr: self.addr.clone(),
                    source: e,
                });
            }
        };
        let mut info = ServerInfo {
            flavor,
            version_string: row.version,
            version_comment: row.version_comment,
            server_id: row.server_id,
            server_uuid: None,
            connection_id: row.connection_id,
            backslash_escapes: dialect::backslash_escapes(&row.sql_mode),
            started_s: None,
        };
        // An account that cannot read the status tables still works; its
        // ACKers are then never proven unrestarted (a refused failover
        // waits for an operator).
        let started = timeout_at(
            deadline,
            conn.query_first::<Option<String>, _>(info.dialect().started_query()),
        )
        .await;
        match started {
            Ok(Ok(v)) => {
                info.started_s = v.flatten().and_then(|v| {
                    // MariaDB answers a DOUBLE for the text arithmetic.
                    v.trim().parse::<f64>().ok().map(|f| f.round() as u64)
                })
            }
            Ok(Err(e)) if !e.is_fatal() => {
                tracing::debug!(node = %self.addr, error = %e, "cannot read when the server started");
            }
            Ok(Err(e)) => {
                discard(conn);
                return Err(connect_error(e));
            }
            Err(_) => {
                discard(conn);
                return Err(connect_timeout());
            }
        }
        if let Some(q) = info.dialect().server_uuid_query() {
            let uuid = match timeout_at(deadline, conn.query_first::<String, _>(q)).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    discard(conn);
                    return Err(connect_error(e));
                }
                Err(_) => {
                    discard(conn);
                    return Err(connect_timeout());
                }
            };
            match uuid.as_deref().map(Uuid::parse) {
                Some(Ok(u)) => info.server_uuid = Some(u),
                Some(Err(e)) => {
                    discard(conn);
                    return Err(NodeError::Parse {
                        op: "connect",
                        addr: self.addr.clone(),
                        source: ParseError::Gtid {
                            column: "@@server_uuid".into(),
                            source: e,
                        },
                    });
                }
                None => {}
            }
        }
        tracing::debug!(node = %self.addr, flavor = %info.flavor, server_id = info.server_id, "connected");
        Ok(Session { conn, info })
    }

    /// Turns a timed, fallible driver call into our result, dropping the connection when it can
    /// no longer be trusted: after a timeout (a reply may still be on its way) or an I/O or
    /// protocol error. A server error (the statement was refused) leaves it usable.
    fn settle<T>(
        &mut self,
        op: &'static str,
        limit: Duration,
        res: std::result::Result<
            std::result::Result<T, mysql_async::Error>,
            tokio::time::error::Elapsed,
        >,
    ) -> Result<T> {
        match res {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if e.is_fatal() {
                    self.drop_session();
                }
                Err(NodeError::Query {
                    op,
                    addr: self.addr.clone(),
                    source: e,
                })
            }
            Err(_) => {
                self.drop_session();
                Err(NodeError::Timeout {
                    op,
                    addr: self.addr.clone(),
                    after: limit,
                })
            }
        }
    }

    fn drop_session(&mut self) {
        if let Some(s) = self.session.take() {
            discard(s.conn);
        }
    }

    fn parse_error(&self, op: &'static str, e: ParseError) -> NodeError {
        NodeError::Parse {
            op,
            addr: self.addr.clone(),
            source: e,
        }
    }

    async fn query_rows(&mut self, op: &'static str, sql: &str) -> Result<Vec<RowMap>> {
        let limit = self.cfg.read_timeout.min(self.cfg.query_timeout);
        let s = self.session().await?;
        let res = timeout(limit, s.conn.query::<Row, _>(sql)).await;
        let rows = self.settle(op, limit, res)?;
        Ok(rows.iter().map(RowMap::from_row).collect())
    }

    async fn query_first(&mut self, op: &'static str, sql: &str) -> Result<RowMap> {
        let rows = self.query_rows(op, sql).await?;
        match rows.into_iter().next() {
            Some(r) => Ok(r),
            None => Err(self.parse_error(op, ParseError::NoRow)),
        }
    }

    async fn query_drop(&mut self, op: &'static str, sql: &str) -> Result<()> {
        let limit = self.cfg.query_timeout;
        let s = self.session().await?;
        let res = timeout(limit, s.conn.query_drop(sql)).await;
        self.settle(op, limit, res)
    }

    async fn exec_first(
        &mut self,
        op: &'static str,
        sql: &str,
        params: Params,
        limit: Duration,
    ) -> Result<RowMap> {
        let s = self.session().await?;
        let res = timeout(limit, s.conn.exec_first::<Row, _, _>(sql, params)).await;
        match self.settle(op, limit, res)? {
            Some(row) => Ok(RowMap::from_row(&row)),
            None => Err(self.parse_error(op, ParseError::NoRow)),
        }
    }
}

/// A server error about `CHANGE … TO` may quote the statement, password included (a syntax
/// error quotes the text near the problem); errors get logged and written to KV.
/// Every form of the password the statement carried is replaced (as given,
/// and as quoted with and without backslash escapes); a syntax error, which
/// quotes the statement from the point it stopped reading, possibly cut
/// inside the password, keeps only its code and a note.
fn redact(e: NodeError, password: &str) -> NodeError {
    const ER_PARSE_ERROR: u16 = 1064;
    match e {
        NodeError::Query {
            op,
            addr,
            source: mysql_async::Error::Server(mut se),
        } if !password.is_empty() => {
            if se.code == ER_PARSE_ERROR {
                se.message = "syntax error (the server's message is withheld: it quotes the statement, password included)".into();
            } else {
                let mut forms = vec![password.to_owned()];
                for backslash in [true, false] {
                    if let Ok(q) = dialect::quote_string(password, backslash) {
                        forms.push(q[1..q.len() - 1].to_owned());
                    }
                }
                forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
                for form in forms.iter().filter(|f| !f.is_empty()) {
                    se.message = se.message.replace(form.as_str(), "<redacted>");
                }
            }
            NodeError::Query {
                op,
                addr,
                source: mysql_async::Error::Server(se),
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_debug_hides_password() {
        let cfg = NodeConfig::new("db1", 3306, "agent", "hunter2");
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }

    #[test]
    fn addr_formats_ipv6() {
        assert_eq!(
            Node::new(NodeConfig::new("db1", 3306, "a", "")).addr(),
            "db1:3306"
        );
        assert_eq!(
            Node::new(NodeConfig::new("fd00::1", 3307, "a", "")).addr(),
            "[fd00::1]:3307"
        );
    }

    #[test]
    fn server_errors_are_redacted() {
        let e = NodeError::Query {
            op: "change_source",
            addr: "db1:3306".into(),
            source: mysql_async::Error::Server(mysql_async::ServerError {
                code: 1064,
                message: "You have an error in your SQL syntax near 's3cret', MASTER_USE_GTID"
                    .into(),
                state: "42000".into(),
            }),
        };
        let e = redact(e, "s3cret");
        let text = format!("{:?}", e);
        assert!(
            !text.contains("s3cret") && text.contains("withheld"),
            "{text}"
        );
        assert_eq!(e.server_error_code(), Some(1064));
        assert_eq!(e.op(), "change_source");

        // Other errors keep their text, every form of the password cut out:
        // as given, and as quoted (a quote doubled, a backslash escaped).
        let pw = r"it's\x";
        for shown in [r"it's\x", r"it''s\\x", r"it''s\x"] {
            let e = NodeError::Query {
                op: "change_source",
                addr: "db1:3306".into(),
                source: mysql_async::Error::Server(mysql_async::ServerError {
                    code: 1045,
                    message: format!("Access denied, password '{shown}'"),
                    state: "28000".into(),
                }),
            };
            let text = successover_common::telemetry::report(&redact(e, pw));
            assert!(
                !text.contains("it's") && !text.contains("it''s") && text.contains("Access denied"),
                "{text}"
            );
        }
    }

    #[test]
    fn lock_wait_timeout_rounds_up() {
        assert_eq!(whole_secs_at_least_one(Duration::from_millis(1)), 1);
        assert_eq!(whole_secs_at_least_one(Duration::ZERO), 1);
        assert_eq!(whole_secs_at_least_one(Duration::from_millis(5000)), 5);
        assert_eq!(whole_secs_at_least_one(Duration::from_millis(5001)), 6);
    }

    #[tokio::test]
    async fn connect_refused_is_a_typed_error() {
        // A port nothing listens on: bind, learn the port, close.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut node = Node::new(NodeConfig::new("127.0.0.1", port, "agent", "x"));
        let err = node.read_only().await.unwrap_err();
        assert!(matches!(err, NodeError::Connect { .. }), "{err:?}");
        assert_eq!(err.op(), "connect");
        assert!(!node.is_connected());
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        // Accepts TCP but never sends the handshake, like a SIGSTOPped mysqld.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hold = tokio::spawn(
            async move {
                let mut held = Vec::new();
                while let Ok((s, _)) = listener.accept().await {
                    held.push(s);
                }
            }
            .in_current_span(),
        );
        let mut cfg = NodeConfig::new("127.0.0.1", port, "agent", "x");
        cfg.connect_timeout = Duration::from_millis(200);
        let mut node = Node::new(cfg);
        let started = Instant::now();
        let err = node.replica_status().await.unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        hold.abort();
    }
}
