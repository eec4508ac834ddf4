//! The SQL text for each flavour: pure functions, so every statement is unit-tested without a
//! server.
//!
//! Values reach SQL in one of two ways. Where the server accepts placeholders (`SELECT` of a
//! function) they are bound parameters. `CHANGE MASTER TO` / `CHANGE REPLICATION SOURCE TO`
//! cannot be prepared on either flavour, so host, port and user are validated to characters with
//! no meaning inside a string literal, and the password is quoted as a literal with escaping that
//! matches the session's `sql_mode`.

use std::time::Duration;

use mysql_async::Value;

use super::flavor::Flavor;

/// The statement set to use; derived from [`Flavor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    MariaDb,
    MySql80,
    MySql84,
}

impl From<Flavor> for Dialect {
    fn from(f: Flavor) -> Self {
        match f {
            Flavor::MariaDb { .. } => Dialect::MariaDb,
            Flavor::MySql80 { .. } => Dialect::MySql80,
            Flavor::MySql84 { .. } => Dialect::MySql84,
        }
    }
}

/// Run once per connection; flavour-independent, so it can run before the flavour is known.
pub const SERVER_INFO: &str =
    "SELECT @@version, @@version_comment, @@global.server_id, CONNECTION_ID(), @@session.sql_mode";

/// The replica's applier and GTID settings, under either flavour's names
/// ([`super::status::ApplySettings`]).
pub const SHOW_APPLY_SETTINGS: &str = "SHOW GLOBAL VARIABLES WHERE Variable_name IN \
     ('slave_parallel_threads', 'slave_parallel_mode', 'gtid_strict_mode', \
     'replica_parallel_workers', 'slave_parallel_workers', 'replica_preserve_commit_order', \
     'slave_preserve_commit_order', 'gtid_mode', 'enforce_gtid_consistency')";

/// `SHOW FULL PROCESSLIST` has the same columns on every flavour (MariaDB adds `Progress`), and
/// unlike `information_schema.PROCESSLIST` it is not deprecated on MySQL 8.4.
pub const SHOW_PROCESSLIST: &str = "SHOW FULL PROCESSLIST";

/// The accounts granted MariaDB's `READ_ONLY ADMIN` (part of `ALL`), whose
/// commits go through `read_only=1`.
pub const READ_ONLY_WRITERS: &str = "SELECT DISTINCT GRANTEE AS grantee FROM information_schema.USER_PRIVILEGES WHERE PRIVILEGE_TYPE = 'READ_ONLY ADMIN'";

/// The user name of a `GRANTEE` value (`'app'@'%'`).
pub fn grantee_user(grantee: &str) -> Option<String> {
    let rest = grantee.strip_prefix('\'')?;
    let end = rest.rfind("'@'")?;
    Some(rest[..end].replace("''", "'"))
}

/// `LIKE` uses `_` as a wildcard, which here only ever matches the literal underscores.
pub const SHOW_SEMI_SYNC_VARIABLES: &str = "SHOW GLOBAL VARIABLES LIKE 'rpl_semi_sync_%'";
pub const SHOW_SEMI_SYNC_STATUS: &str = "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_%'";

/// MySQL error 1094, `ER_NO_SUCH_THREAD`: the connection ended before we killed it.
pub const ER_NO_SUCH_THREAD: u16 = 1094;

/// `KILL CONNECTION <id>`; the id is a number, so there is nothing to quote.
pub fn kill_connection(id: u64) -> String {
    format!("KILL CONNECTION {id}")
}

impl Dialect {
    pub fn is_mariadb(self) -> bool {
        self == Dialect::MariaDb
    }

    pub fn show_replica_status(self) -> &'static str {
        match self {
            Dialect::MariaDb => "SHOW SLAVE STATUS",
            Dialect::MySql80 | Dialect::MySql84 => "SHOW REPLICA STATUS",
        }
    }

    pub fn show_binary_log_status(self) -> &'static str {
        match self {
            // MariaDB keeps SHOW MASTER STATUS through 11.x; SHOW BINLOG STATUS is only 10.5.2+.
            Dialect::MariaDb | Dialect::MySql80 => "SHOW MASTER STATUS",
            // 8.4 removed SHOW MASTER STATUS.
            Dialect::MySql84 => "SHOW BINARY LOG STATUS",
        }
    }

    pub fn stop_replica(self) -> &'static str {
        match self {
            Dialect::MariaDb => "STOP SLAVE",
            Dialect::MySql80 | Dialect::MySql84 => "STOP REPLICA",
        }
    }

    pub fn start_replica(self) -> &'static str {
        match self {
            Dialect::MariaDb => "START SLAVE",
            Dialect::MySql80 | Dialect::MySql84 => "START REPLICA",
        }
    }

    /// Statements that block every commit on the server for as long as
    /// the session holds them, those of accounts that write through
    /// `read_only` (MariaDB's `READ_ONLY ADMIN`, part of `ALL`) included.
    /// MySQL needs none: `super_read_only` already stops those accounts.
    pub fn block_commits(self) -> Option<&'static str> {
        match self {
            Dialect::MariaDb => Some("BACKUP STAGE START; BACKUP STAGE BLOCK_COMMIT"),
            Dialect::MySql80 | Dialect::MySql84 => None,
        }
    }

    pub fn release_commits(self) -> Option<&'static str> {
        match self {
            Dialect::MariaDb => Some("BACKUP STAGE END"),
            Dialect::MySql80 | Dialect::MySql84 => None,
        }
    }

    pub fn start_sql_thread(self) -> &'static str {
        match self {
            Dialect::MariaDb => "START SLAVE SQL_THREAD",
            Dialect::MySql80 | Dialect::MySql84 => "START REPLICA SQL_THREAD",
        }
    }

    pub fn stop_io_thread(self) -> &'static str {
        match self {
            Dialect::MariaDb => "STOP SLAVE IO_THREAD",
            Dialect::MySql80 | Dialect::MySql84 => "STOP REPLICA IO_THREAD",
        }
    }

    pub fn start_io_thread(self) -> &'static str {
        match self {
            Dialect::MariaDb => "START SLAVE IO_THREAD",
            Dialect::MySql80 | Dialect::MySql84 => "START REPLICA IO_THREAD",
        }
    }

    pub fn reset_replica_all(self) -> &'static str {
        match self {
            Dialect::MariaDb => "RESET SLAVE ALL",
            Dialect::MySql80 | Dialect::MySql84 => "RESET REPLICA ALL",
        }
    }

    /// Points replication at `spec` with GTID auto-positioning. The replica threads must be
    /// stopped first (both flavours refuse to change the host of a running IO thread).
    pub fn change_source(
        self,
        spec: &SourceSpec,
        backslash_escapes: bool,
    ) -> Result<String, InvalidInput> {
        spec.validate()?;
        let password = quote_string(&spec.password, backslash_escapes)?;
        let heartbeat = format!(
            "{}.{:03}",
            spec.heartbeat_period.as_secs(),
            spec.heartbeat_period.subsec_millis()
        );
        let retry = connect_retry_secs(spec.connect_retry);
        let ssl = |word: &str| match spec.tls {
            Some(on) => format!(", {word}={}", u8::from(on)),
            None => String::new(),
        };
        Ok(match self {
            // slave_pos: the replica resumes from what its SQL thread applied. (current_pos
            // would also count local writes in the binlog, turning an errant transaction into
            // a replication error far from its cause.)
            Dialect::MariaDb => format!(
                "CHANGE MASTER TO MASTER_HOST='{}', MASTER_PORT={}, MASTER_USER='{}', \
                 MASTER_PASSWORD={password}, MASTER_USE_GTID={}, \
                 MASTER_HEARTBEAT_PERIOD={heartbeat}, MASTER_CONNECT_RETRY={retry}{}",
                spec.host,
                spec.port,
                spec.user,
                if spec.from_current_pos {
                    "current_pos"
                } else {
                    "slave_pos"
                },
                ssl("MASTER_SSL")
            ),
            // TLS unless told otherwise: MySQL servers have certificates by default, and
            // caching_sha2_password (MySQL 8's default) sends the password in full over any
            // connection whose cache is cold. Without TLS only a pinned key is used, never one
            // fetched over the same unauthenticated connection (GET_SOURCE_PUBLIC_KEY).
            Dialect::MySql80 | Dialect::MySql84 => {
                let key = match (spec.tls, &spec.public_key_path) {
                    (Some(false), Some(path)) => format!(
                        ", SOURCE_PUBLIC_KEY_PATH={}",
                        quote_string(path, backslash_escapes)?
                    ),
                    _ => String::new(),
                };
                format!(
                    "CHANGE REPLICATION SOURCE TO SOURCE_HOST='{}', SOURCE_PORT={}, SOURCE_USER='{}', \
                     SOURCE_PASSWORD={password}, SOURCE_AUTO_POSITION=1, \
                     SOURCE_HEARTBEAT_PERIOD={heartbeat}, SOURCE_CONNECT_RETRY={retry}, \
                     SOURCE_SSL={}{key}",
                    spec.host,
                    spec.port,
                    spec.user,
                    u8::from(spec.tls.unwrap_or(true)),
                )
            }
        })
    }

    /// `SELECT` returning `read_only` and, on MySQL, `super_read_only`.
    pub fn read_only_query(self) -> &'static str {
        match self {
            Dialect::MariaDb => "SELECT @@global.read_only",
            Dialect::MySql80 | Dialect::MySql84 => {
                "SELECT @@global.read_only, @@global.super_read_only"
            }
        }
    }

    /// The statements, in order, that make the server read-only or writable.
    pub fn set_read_only(self, on: bool) -> &'static [&'static str] {
        match (self, on) {
            // MariaDB has no super_read_only. Note that in 10.11 an account with ALL
            // PRIVILEGES (READ_ONLY ADMIN) still writes through read_only.
            (Dialect::MariaDb, true) => &["SET GLOBAL read_only = ON"],
            (Dialect::MariaDb, false) => &["SET GLOBAL read_only = OFF"],
            // super_read_only also stops accounts with SUPER / CONNECTION_ADMIN, which are
            // exactly the clients that bypass the proxy.
            (_, true) => &[
                "SET GLOBAL read_only = ON",
                "SET GLOBAL super_read_only = ON",
            ],
            // super_read_only = OFF alone leaves read_only set, so both are needed. Clearing it
            // first means a failure between the two statements leaves the server read-only
            // for ordinary clients.
            (_, false) => &[
                "SET GLOBAL super_read_only = OFF",
                "SET GLOBAL read_only = OFF",
            ],
        }
    }

    /// `SELECT` of the executed GTIDs. MariaDB: `gtid_current_pos, gtid_binlog_pos,
    /// gtid_slave_pos`; MySQL: `gtid_executed`.
    pub fn gtid_executed_query(self) -> &'static str {
        match self {
            Dialect::MariaDb => {
                "SELECT @@global.gtid_current_pos, @@global.gtid_binlog_pos, @@global.gtid_slave_pos"
            }
            Dialect::MySql80 | Dialect::MySql84 => "SELECT @@global.gtid_executed",
        }
    }

    /// Waits until the given GTIDs are applied; two placeholders: GTIDs, timeout.
    pub fn gtid_wait(self) -> &'static str {
        match self {
            // Waits on gtid_slave_pos only: on the server that wrote the transactions (a source)
            // it never returns for its own writes (Node::wait_for_gtid leaves those out).
            Dialect::MariaDb => "SELECT MASTER_GTID_WAIT(?, ?)",
            Dialect::MySql80 | Dialect::MySql84 => "SELECT WAIT_FOR_EXECUTED_GTID_SET(?, ?)",
        }
    }

    /// The timeout argument of [`Dialect::gtid_wait`].
    pub fn gtid_wait_timeout(self, timeout: Duration) -> Value {
        match self {
            // MariaDB takes fractional seconds; 0 means "check once, do not wait".
            Dialect::MariaDb => Value::Double(timeout.as_secs_f64()),
            // MySQL specifies this timeout in whole seconds (WL#7796). Round up, and never send
            // 0, so a short wait can never turn into "no limit".
            Dialect::MySql80 | Dialect::MySql84 => {
                let whole = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
                Value::UInt(whole.max(1))
            }
        }
    }

    /// Reads the wait function's result: `Some(true)` reached, `Some(false)` timed out, `None`
    /// anything else (NULL on a bad argument, MySQL's 2 when the query was killed).
    pub fn gtid_wait_reached(self, result: Option<i64>) -> Option<bool> {
        match (self, result) {
            (_, Some(0)) => Some(true),
            (Dialect::MariaDb, Some(-1)) => Some(false),
            (Dialect::MySql80 | Dialect::MySql84, Some(1)) => Some(false),
            _ => None,
        }
    }

    /// MariaDB has no server UUID.
    pub fn server_uuid_query(self) -> Option<&'static str> {
        match self {
            Dialect::MariaDb => None,
            Dialect::MySql80 | Dialect::MySql84 => Some("SELECT @@global.server_uuid"),
        }
    }

    /// When the server started, Unix seconds. Both terms come from one
    /// statement's start time (`Uptime` is that time minus the server's
    /// start), so the difference is the start itself, exactly, on every
    /// reading of one run of the server: no jitter to allow for, and no
    /// other host's clock involved.
    pub fn started_query(self) -> &'static str {
        match self {
            Dialect::MariaDb => "SELECT UNIX_TIMESTAMP() - VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'UPTIME'",
            Dialect::MySql80 | Dialect::MySql84 => "SELECT UNIX_TIMESTAMP() - VARIABLE_VALUE FROM performance_schema.global_status WHERE VARIABLE_NAME = 'Uptime'",
        }
    }

    /// The replica status columns this flavour prints.
    pub fn replica_columns(self) -> &'static ReplicaColumns {
        match self {
            Dialect::MariaDb => &MARIADB_REPLICA_COLUMNS,
            Dialect::MySql80 | Dialect::MySql84 => &MYSQL_REPLICA_COLUMNS,
        }
    }
}

/// Replica status column names; read by name because their positions differ between releases.
#[derive(Debug, PartialEq, Eq)]
pub struct ReplicaColumns {
    pub io_state: &'static str,
    pub source_host: &'static str,
    pub source_user: &'static str,
    pub source_port: &'static str,
    pub io_running: &'static str,
    pub sql_running: &'static str,
    pub seconds_behind: &'static str,
    pub last_io_errno: &'static str,
    pub last_io_error: &'static str,
    pub last_sql_errno: &'static str,
    pub last_sql_error: &'static str,
    pub source_server_id: &'static str,
    pub sql_running_state: &'static str,
    /// The source's binlog file and the position in it the IO thread has
    /// read up to: it moves with every event, also inside one transaction.
    pub read_file: &'static str,
    pub read_pos: &'static str,
    pub gtid: GtidColumns,
}

/// The GTID columns, which have different meanings, not just names, per flavour.
#[derive(Debug, PartialEq, Eq)]
pub enum GtidColumns {
    MariaDb {
        using_gtid: &'static str,
        io_pos: &'static str,
    },
    MySql {
        retrieved: &'static str,
        executed: &'static str,
        auto_position: &'static str,
        source_uuid: &'static str,
        channel: &'static str,
    },
}

/// MariaDB kept the MASTER/SLAVE column names even where it accepts `SHOW REPLICA STATUS`.
pub const MARIADB_REPLICA_COLUMNS: ReplicaColumns = ReplicaColumns {
    io_state: "Slave_IO_State",
    source_host: "Master_Host",
    source_user: "Master_User",
    source_port: "Master_Port",
    io_running: "Slave_IO_Running",
    sql_running: "Slave_SQL_Running",
    seconds_behind: "Seconds_Behind_Master",
    last_io_errno: "Last_IO_Errno",
    last_io_error: "Last_IO_Error",
    last_sql_errno: "Last_SQL_Errno",
    last_sql_error: "Last_SQL_Error",
    source_server_id: "Master_Server_Id",
    sql_running_state: "Slave_SQL_Running_State",
    read_file: "Master_Log_File",
    read_pos: "Read_Master_Log_Pos",
    gtid: GtidColumns::MariaDb {
        using_gtid: "Using_Gtid",
        io_pos: "Gtid_IO_Pos",
    },
};

/// MySQL 8.0.22+ `SHOW REPLICA STATUS`.
pub const MYSQL_REPLICA_COLUMNS: ReplicaColumns = ReplicaColumns {
    io_state: "Replica_IO_State",
    source_host: "Source_Host",
    source_user: "Source_User",
    source_port: "Source_Port",
    io_running: "Replica_IO_Running",
    sql_running: "Replica_SQL_Running",
    seconds_behind: "Seconds_Behind_Source",
    last_io_errno: "Last_IO_Errno",
    last_io_error: "Last_IO_Error",
    last_sql_errno: "Last_SQL_Errno",
    last_sql_error: "Last_SQL_Error",
    source_server_id: "Source_Server_Id",
    sql_running_state: "Replica_SQL_Running_State",
    read_file: "Source_Log_File",
    read_pos: "Read_Source_Log_Pos",
    gtid: GtidColumns::MySql {
        retrieved: "Retrieved_Gtid_Set",
        executed: "Executed_Gtid_Set",
        auto_position: "Auto_Position",
        source_uuid: "Source_UUID",
        channel: "Channel_Name",
    },
};

// ---------------------------------------------------------------------------------------------
// Semi-sync
// ---------------------------------------------------------------------------------------------

/// Which semi-sync variable names a side of the server uses. MariaDB (built in) and MySQL's
/// `semisync_master`/`semisync_slave` plugins use `master`/`slave`; MySQL 8.0.26+'s
/// `semisync_source`/`semisync_replica` plugins (the only ones in 8.4) use `source`/`replica`.
/// A MySQL server may load one plugin of each naming, so each side is detected separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SemiSyncNaming {
    /// `rpl_semi_sync_master_*` / `rpl_semi_sync_slave_*`
    MasterSlave,
    /// `rpl_semi_sync_source_*` / `rpl_semi_sync_replica_*`
    SourceReplica,
}

impl SemiSyncNaming {
    pub fn source_enabled(self) -> &'static str {
        match self {
            SemiSyncNaming::MasterSlave => "rpl_semi_sync_master_enabled",
            SemiSyncNaming::SourceReplica => "rpl_semi_sync_source_enabled",
        }
    }
    pub fn source_timeout(self) -> &'static str {
        match self {
            SemiSyncNaming::MasterSlave => "rpl_semi_sync_master_timeout",
            SemiSyncNaming::SourceReplica => "rpl_semi_sync_source_timeout",
        }
    }
    pub fn source_wait_point(self) -> &'static str {
        match self {
            SemiSyncNaming::MasterSlave => "rpl_semi_sync_master_wait_point",
            SemiSyncNaming::SourceReplica => "rpl_semi_sync_source_wait_point",
        }
    }
    pub fn source_wait_no_replica(self) -> &'static str {
        match self {
            SemiSyncNaming::MasterSlave => "rpl_semi_sync_master_wait_no_slave",
            SemiSyncNaming::SourceReplica => "rpl_semi_sync_source_wait_no_replica",
        }
    }
    /// MySQL only; MariaDB 10.11 always waits for one ACK.
    pub fn source_wait_for_replica_count(self) -> &'static str {
        match self {
            SemiSyncNaming::MasterSlave => "rpl_semi_sync_master_wait_for_slave_count",
            SemiSyncNaming::SourceReplica => "rpl_semi_sync_source_wait_for_replica_count",
        }
    }
    pub fn replica_enabled(self) -> &'static str {
        match self {
            SemiSyncNaming::MasterSlave => "rpl_semi_sync_slave_enabled",
            SemiSyncNaming::SourceReplica => "rpl_semi_sync_replica_enabled",
        }
    }
    pub fn source_status(self) -> &'static str {
        match self {
            SemiSyncNaming::MasterSlave => "Rpl_semi_sync_master_status",
            SemiSyncNaming::SourceReplica => "Rpl_semi_sync_source_status",
        }
    }
    pub fn source_clients(self) -> &'static str {
        match self {
            SemiSyncNaming::MasterSlave => "Rpl_semi_sync_master_clients",
            SemiSyncNaming::SourceReplica => "Rpl_semi_sync_source_clients",
        }
    }
    pub fn source_yes_tx(self) -> &'static str {
        match self {
            SemiSyncNaming::MasterSlave => "Rpl_semi_sync_master_yes_tx",
            SemiSyncNaming::SourceReplica => "Rpl_semi_sync_source_yes_tx",
        }
    }
    pub fn source_wait_sessions(self) -> &'static str {
        match self {
            SemiSyncNaming::MasterSlave => "Rpl_semi_sync_master_wait_sessions",
            SemiSyncNaming::SourceReplica => "Rpl_semi_sync_source_wait_sessions",
        }
    }
    /// How often the source switched semi-sync off: a timeout turned it
    /// asynchronous, or its flag was turned off.
    pub fn source_no_times(self) -> &'static str {
        match self {
            SemiSyncNaming::MasterSlave => "Rpl_semi_sync_master_no_times",
            SemiSyncNaming::SourceReplica => "Rpl_semi_sync_source_no_times",
        }
    }
    pub fn source_no_tx(self) -> &'static str {
        match self {
            SemiSyncNaming::MasterSlave => "Rpl_semi_sync_master_no_tx",
            SemiSyncNaming::SourceReplica => "Rpl_semi_sync_source_no_tx",
        }
    }
    pub fn replica_status(self) -> &'static str {
        match self {
            SemiSyncNaming::MasterSlave => "Rpl_semi_sync_slave_status",
            SemiSyncNaming::SourceReplica => "Rpl_semi_sync_replica_status",
        }
    }

    pub fn set_source_enabled(self, on: bool) -> String {
        format!("SET GLOBAL {} = {}", self.source_enabled(), on_off(on))
    }

    pub fn set_replica_enabled(self, on: bool) -> String {
        format!("SET GLOBAL {} = {}", self.replica_enabled(), on_off(on))
    }

    /// Rule 1 on the source side: wait for the ACK after the binlog sync
    /// (a crash then loses nothing acknowledged), keep waiting with no
    /// semi-sync replica connected, and never fall back to asynchronous
    /// replication within any span an operator would notice.
    pub fn set_lossless(self) -> [String; 3] {
        [
            format!("SET GLOBAL {} = AFTER_SYNC", self.source_wait_point()),
            format!("SET GLOBAL {} = ON", self.source_wait_no_replica()),
            format!(
                "SET GLOBAL {} = {LOSSLESS_TIMEOUT_MS}",
                self.source_timeout()
            ),
        ]
    }
}

/// The semi-sync timeout the agent sets: 2^32 - 1 ms (49.7 days), the
/// largest value every supported server accepts (MySQL's maximum; MariaDB
/// takes more).
pub const LOSSLESS_TIMEOUT_MS: u64 = 4_294_967_295;

/// Which semi-sync sides a server offers, and under which names; `None` = plugin not loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SemiSyncPlugins {
    pub source: Option<SemiSyncNaming>,
    pub replica: Option<SemiSyncNaming>,
}

impl SemiSyncPlugins {
    /// Detects from the names returned by [`SHOW_SEMI_SYNC_VARIABLES`].
    pub fn detect<'a>(variable_names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut found = SemiSyncPlugins::default();
        for name in variable_names {
            let name = name.to_ascii_lowercase();
            for naming in [SemiSyncNaming::MasterSlave, SemiSyncNaming::SourceReplica] {
                // MySQL refuses to load both namings of the same side; if a fork ever allowed
                // it, the newer names win because they are the ones that stay.
                if name == naming.source_enabled()
                    && found.source != Some(SemiSyncNaming::SourceReplica)
                {
                    found.source = Some(naming);
                }
                if name == naming.replica_enabled()
                    && found.replica != Some(SemiSyncNaming::SourceReplica)
                {
                    found.replica = Some(naming);
                }
            }
        }
        found
    }
}

fn on_off(on: bool) -> &'static str {
    if on {
        "ON"
    } else {
        "OFF"
    }
}

// ---------------------------------------------------------------------------------------------
// Input validation and quoting
// ---------------------------------------------------------------------------------------------

/// A value that must not be put into SQL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    #[error("source host {0:?} is not a hostname or IP address")]
    Host(String),
    #[error("source port must not be 0")]
    Port,
    #[error("replication user {0:?} must be 1-128 characters of [A-Za-z0-9_.-]")]
    User(String),
    // The password itself is never printed.
    #[error("the replication password contains a NUL byte")]
    PasswordNul,
    #[error("heartbeat period {0:?} is above the servers' limit of 4294967 s")]
    Heartbeat(Duration),
    #[error("connect retry {0:?} is above the servers' limit of 31536000 s")]
    ConnectRetry(Duration),
}

/// Where and how a replica connects.
#[derive(Clone, PartialEq, Eq)]
pub struct SourceSpec {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    /// How often the source sends a heartbeat to an idle replica. Short, so that the replica's
    /// `slave_net_timeout` can be a few seconds and the replicas' view of a dead source is fresh.
    pub heartbeat_period: Duration,
    /// How long a disconnected IO thread waits before reconnecting. Short, so that replicas
    /// repointed by a successover reconnect within a second rather than MariaDB's default 60 s.
    pub connect_retry: Duration,
    /// MariaDB: resume from `gtid_current_pos` (the server's own binlog
    /// included) instead of `gtid_slave_pos`. For a server whose commits
    /// are blocked, where setting `gtid_slave_pos` (a commit itself) would
    /// wait for the block.
    pub from_current_pos: bool,
    /// `MASTER_SSL` / `SOURCE_SSL`; `None` leaves the server's default. It must be said when
    /// the sources run without TLS: MariaDB 11.4 asks for TLS to the source by default, and a
    /// replica that never replicated (a former source) gets that default on every repoint.
    pub tls: Option<bool>,
    /// MySQL without TLS: the source's RSA public key, pinned in a file on
    /// the replica's host (`SOURCE_PUBLIC_KEY_PATH`), for accounts on
    /// `caching_sha2_password`. The key is never fetched from the source
    /// (`GET_SOURCE_PUBLIC_KEY=1`): over a connection without TLS an
    /// on-path attacker could hand over its own key and read the
    /// replication password.
    pub public_key_path: Option<String>,
}

impl SourceSpec {
    pub fn new(
        host: impl Into<String>,
        port: u16,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        SourceSpec {
            host: host.into(),
            port,
            user: user.into(),
            password: password.into(),
            heartbeat_period: Duration::from_millis(500),
            connect_retry: Duration::from_secs(1),
            from_current_pos: false,
            tls: None,
            public_key_path: None,
        }
    }

    pub fn validate(&self) -> Result<(), InvalidInput> {
        if !valid_host(&self.host) {
            return Err(InvalidInput::Host(truncated(&self.host)));
        }
        if self.port == 0 {
            return Err(InvalidInput::Port);
        }
        if !valid_user(&self.user) {
            return Err(InvalidInput::User(truncated(&self.user)));
        }
        if self.password.contains('\0') {
            return Err(InvalidInput::PasswordNul);
        }
        if self.heartbeat_period > Duration::from_secs(4_294_967) {
            return Err(InvalidInput::Heartbeat(self.heartbeat_period));
        }
        if self.connect_retry > Duration::from_secs(31_536_000) {
            return Err(InvalidInput::ConnectRetry(self.connect_retry));
        }
        Ok(())
    }
}

impl std::fmt::Debug for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceSpec")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("heartbeat_period", &self.heartbeat_period)
            .field("connect_retry", &self.connect_retry)
            .field("tls", &self.tls)
            .finish()
    }
}

fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Hostnames and IPv4/IPv6 addresses (IPv6 without brackets, as `MASTER_HOST` takes it).
/// Underscores are allowed because real internal hostnames have them.
pub fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && !h.starts_with('-')
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
}

pub fn valid_user(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 128
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Whether string literals in a session with this `sql_mode` treat backslash as an escape.
pub fn backslash_escapes(sql_mode: &str) -> bool {
    !sql_mode
        .split(',')
        .any(|m| m.trim().eq_ignore_ascii_case("NO_BACKSLASH_ESCAPES"))
}

/// Quotes `s` as a single-quoted SQL string literal.
///
/// A quote is always doubled (`''`), which both modes read as one quote. A backslash is doubled
/// only when the session treats it as an escape: under `NO_BACKSLASH_ESCAPES`, `\'` would end the
/// literal, and `\\` would be two backslashes. Control characters are escaped like
/// `mysql_real_escape_string` does so logs stay on one line; NUL is refused because it cannot be
/// written under `NO_BACKSLASH_ESCAPES`. The connection charset is utf8mb4, whose multi-byte
/// characters never contain the bytes of `'` or `\`, so byte-wise escaping is sound.
pub fn quote_string(s: &str, backslash_escapes: bool) -> Result<String, InvalidInput> {
    if s.contains('\0') {
        return Err(InvalidInput::PasswordNul);
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' if backslash_escapes => out.push_str("\\\\"),
            '\n' if backslash_escapes => out.push_str("\\n"),
            '\r' if backslash_escapes => out.push_str("\\r"),
            '\x1a' if backslash_escapes => out.push_str("\\Z"),
            c => out.push(c),
        }
    }
    out.push('\'');
    Ok(out)
}

fn connect_retry_secs(d: Duration) -> u64 {
    // Whole seconds; MariaDB treats 0 as 1 anyway and MySQL's 0 would spin.
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Dialect; 3] = [Dialect::MariaDb, Dialect::MySql80, Dialect::MySql84];

    #[test]
    fn lossless_semi_sync_settings_for_both_namings() {
        assert_eq!(
            SemiSyncNaming::MasterSlave.set_lossless(),
            [
                "SET GLOBAL rpl_semi_sync_master_wait_point = AFTER_SYNC".to_owned(),
                "SET GLOBAL rpl_semi_sync_master_wait_no_slave = ON".to_owned(),
                "SET GLOBAL rpl_semi_sync_master_timeout = 4294967295".to_owned(),
            ]
        );
        assert_eq!(
            SemiSyncNaming::SourceReplica.set_lossless()[1],
            "SET GLOBAL rpl_semi_sync_source_wait_no_replica = ON"
        );
    }

    #[test]
    fn dialect_from_flavor() {
        use super::super::flavor::Version;
        let v = Version::new(8, 0, 36);
        assert_eq!(
            Dialect::from(Flavor::MariaDb { version: v }),
            Dialect::MariaDb
        );
        assert_eq!(
            Dialect::from(Flavor::MySql80 { version: v }),
            Dialect::MySql80
        );
        assert_eq!(
            Dialect::from(Flavor::MySql84 { version: v }),
            Dialect::MySql84
        );
    }

    #[test]
    fn replication_statements_per_flavour() {
        let table: [(Dialect, [&str; 7]); 3] = [
            (
                Dialect::MariaDb,
                [
                    "SHOW SLAVE STATUS",
                    "SHOW MASTER STATUS",
                    "STOP SLAVE",
                    "START SLAVE",
                    "STOP SLAVE IO_THREAD",
                    "START SLAVE IO_THREAD",
                    "RESET SLAVE ALL",
                ],
            ),
            (
                Dialect::MySql80,
                [
                    "SHOW REPLICA STATUS",
                    "SHOW MASTER STATUS",
                    "STOP REPLICA",
                    "START REPLICA",
                    "STOP REPLICA IO_THREAD",
                    "START REPLICA IO_THREAD",
                    "RESET REPLICA ALL",
                ],
            ),
            (
                Dialect::MySql84,
                [
                    "SHOW REPLICA STATUS",
                    "SHOW BINARY LOG STATUS",
                    "STOP REPLICA",
                    "START REPLICA",
                    "STOP REPLICA IO_THREAD",
                    "START REPLICA IO_THREAD",
                    "RESET REPLICA ALL",
                ],
            ),
        ];
        for (d, want) in table {
            let got = [
                d.show_replica_status(),
                d.show_binary_log_status(),
                d.stop_replica(),
                d.start_replica(),
                d.stop_io_thread(),
                d.start_io_thread(),
                d.reset_replica_all(),
            ];
            assert_eq!(got, want, "{d:?}");
        }
    }

    #[test]
    fn no_removed_syntax_on_84() {
        // 8.4 removed the MASTER/SLAVE statements; none of its SQL may use them.
        let d = Dialect::MySql84;
        let spec = SourceSpec::new("db1", 3306, "repl", "pw");
        let mut all = vec![
            d.show_replica_status().to_owned(),
            d.show_binary_log_status().to_owned(),
            d.stop_replica().to_owned(),
            d.start_replica().to_owned(),
            d.stop_io_thread().to_owned(),
            d.start_io_thread().to_owned(),
            d.reset_replica_all().to_owned(),
            d.change_source(&spec, true).unwrap(),
            d.gtid_wait().to_owned(),
        ];
        all.extend(d.set_read_only(true).iter().map(|s| s.to_string()));
        for sql in all {
            let upper = sql.to_uppercase();
            assert!(
                !upper.contains("MASTER") && !upper.contains("SLAVE"),
                "{sql}"
            );
        }
    }

    #[test]
    fn change_source_mariadb() {
        let mut spec = SourceSpec::new("db2.example.com", 3307, "repl", "s3cret");
        spec.heartbeat_period = Duration::from_millis(1500);
        spec.connect_retry = Duration::from_secs(2);
        assert_eq!(
            Dialect::MariaDb.change_source(&spec, true).unwrap(),
            "CHANGE MASTER TO MASTER_HOST='db2.example.com', MASTER_PORT=3307, \
             MASTER_USER='repl', MASTER_PASSWORD='s3cret', MASTER_USE_GTID=slave_pos, \
             MASTER_HEARTBEAT_PERIOD=1.500, MASTER_CONNECT_RETRY=2"
        );
    }

    #[test]
    fn change_source_says_tls_only_when_configured() {
        let mut spec = SourceSpec::new("db1", 3306, "repl", "pw");
        let sql = Dialect::MariaDb.change_source(&spec, true).unwrap();
        assert!(!sql.contains("_SSL"), "{sql}");
        spec.tls = Some(false);
        let sql = Dialect::MariaDb.change_source(&spec, true).unwrap();
        assert!(
            sql.ends_with("MASTER_CONNECT_RETRY=1, MASTER_SSL=0"),
            "{sql}"
        );
        spec.tls = Some(true);
        let sql = Dialect::MariaDb.change_source(&spec, true).unwrap();
        assert!(sql.ends_with(", MASTER_SSL=1"), "{sql}");
    }

    /// Never `GET_SOURCE_PUBLIC_KEY`: without TLS a fetched key can be an
    /// attacker's, who then reads the replication password.
    #[test]
    fn mysql_replication_uses_tls_or_a_pinned_key_never_a_fetched_one() {
        let mut spec = SourceSpec::new("db1", 3306, "repl", "pw");
        for d in [Dialect::MySql80, Dialect::MySql84] {
            spec.tls = None;
            spec.public_key_path = Some("/etc/successover/source.pem".into());
            let sql = d.change_source(&spec, true).unwrap();
            assert!(sql.ends_with(", SOURCE_SSL=1"), "{sql}");
            spec.tls = Some(false);
            let sql = d.change_source(&spec, true).unwrap();
            assert!(
                sql.ends_with(
                    ", SOURCE_SSL=0, SOURCE_PUBLIC_KEY_PATH='/etc/successover/source.pem'"
                ),
                "{sql}"
            );
            spec.public_key_path = None;
            let sql = d.change_source(&spec, true).unwrap();
            assert!(sql.ends_with(", SOURCE_SSL=0"), "{sql}");
            for tls in [None, Some(true), Some(false)] {
                spec.tls = tls;
                let sql = d.change_source(&spec, true).unwrap();
                assert!(!sql.contains("GET_SOURCE_PUBLIC_KEY"), "{sql}");
            }
            spec.public_key_path = Some("/tmp/x' , SOURCE_HOST='evil".into());
            spec.tls = Some(false);
            let sql = d.change_source(&spec, true).unwrap();
            assert!(
                sql.ends_with("SOURCE_PUBLIC_KEY_PATH='/tmp/x'' , SOURCE_HOST=''evil'"),
                "{sql}"
            );
        }
    }

    #[test]
    fn change_source_mysql() {
        let spec = SourceSpec::new("10.0.0.7", 3306, "repl_user", "pw");
        for d in [Dialect::MySql80, Dialect::MySql84] {
            assert_eq!(
                d.change_source(&spec, true).unwrap(),
                "CHANGE REPLICATION SOURCE TO SOURCE_HOST='10.0.0.7', SOURCE_PORT=3306, \
                 SOURCE_USER='repl_user', SOURCE_PASSWORD='pw', SOURCE_AUTO_POSITION=1, \
                 SOURCE_HEARTBEAT_PERIOD=0.500, SOURCE_CONNECT_RETRY=1, SOURCE_SSL=1"
            );
        }
        let v6 = SourceSpec::new("fd00::1:7", 3306, "repl", "pw");
        assert!(Dialect::MySql84
            .change_source(&v6, true)
            .unwrap()
            .contains("SOURCE_HOST='fd00::1:7'"));
    }

    #[test]
    fn change_source_refuses_injection() {
        let ok = SourceSpec::new("db1", 3306, "repl", "pw");
        let bad_hosts = [
            "",
            "db1' , MASTER_USER='root",
            "db1\n",
            "db 1",
            "-db1",
            "db1;DROP",
            "db1\\",
            "[fd00::1]",
        ];
        for h in bad_hosts {
            let spec = SourceSpec {
                host: h.into(),
                ..ok.clone()
            };
            for d in ALL {
                assert!(
                    matches!(d.change_source(&spec, true), Err(InvalidInput::Host(_))),
                    "{h:?}"
                );
            }
        }
        for u in ["", "re'pl", "repl user", "repl@%", "r\\", &"u".repeat(129)] {
            let spec = SourceSpec {
                user: u.into(),
                ..ok.clone()
            };
            assert!(matches!(
                Dialect::MariaDb.change_source(&spec, true),
                Err(InvalidInput::User(_))
            ));
        }
        let spec = SourceSpec {
            port: 0,
            ..ok.clone()
        };
        assert_eq!(
            Dialect::MySql80.change_source(&spec, true),
            Err(InvalidInput::Port)
        );
        let spec = SourceSpec {
            password: "a\0b".into(),
            ..ok.clone()
        };
        assert_eq!(
            Dialect::MariaDb.change_source(&spec, true),
            Err(InvalidInput::PasswordNul)
        );
        let spec = SourceSpec {
            heartbeat_period: Duration::from_secs(4_294_968),
            ..ok.clone()
        };
        assert!(matches!(
            Dialect::MariaDb.change_source(&spec, true),
            Err(InvalidInput::Heartbeat(_))
        ));
    }

    #[test]
    fn change_source_quotes_password() {
        let spec = SourceSpec::new("db1", 3306, "repl", r"it's\a'; DROP TABLE t; --");
        let sql = Dialect::MariaDb.change_source(&spec, true).unwrap();
        assert!(
            sql.contains(r"MASTER_PASSWORD='it''s\\a''; DROP TABLE t; --', MASTER_USE_GTID"),
            "{sql}"
        );
        let sql = Dialect::MySql84.change_source(&spec, false).unwrap();
        assert!(
            sql.contains(r"SOURCE_PASSWORD='it''s\a''; DROP TABLE t; --', SOURCE_AUTO"),
            "{sql}"
        );
    }

    #[test]
    fn source_spec_debug_hides_password() {
        let spec = SourceSpec::new("db1", 3306, "repl", "hunter2");
        let dbg = format!("{spec:?}");
        assert!(
            !dbg.contains("hunter2") && dbg.contains("<redacted>"),
            "{dbg}"
        );
        let err = SourceSpec {
            password: "hunter2\0".into(),
            ..spec
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(!err.contains("hunter2"));
    }

    /// Reads a literal back the way the server's lexer does, to check the escaping round-trips.
    fn unquote(lit: &str, backslash_escapes: bool) -> String {
        let inner = lit.strip_prefix('\'').unwrap().strip_suffix('\'').unwrap();
        let mut out = String::new();
        let mut it = inner.chars().peekable();
        while let Some(c) = it.next() {
            match c {
                '\'' => {
                    assert_eq!(it.next(), Some('\''), "lone quote ends the literal: {lit}");
                    out.push('\'');
                }
                '\\' if backslash_escapes => match it.next().unwrap() {
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    'Z' => out.push('\x1a'),
                    '0' => out.push('\0'),
                    other => out.push(other),
                },
                c => out.push(c),
            }
        }
        out
    }

    #[test]
    fn quote_string_escaping() {
        assert_eq!(quote_string("", true).unwrap(), "''");
        assert_eq!(quote_string("plain", true).unwrap(), "'plain'");
        assert_eq!(quote_string("a'b", true).unwrap(), "'a''b'");
        assert_eq!(quote_string(r"a\b", true).unwrap(), r"'a\\b'");
        assert_eq!(quote_string(r"a\b", false).unwrap(), r"'a\b'");
        assert_eq!(quote_string(r"\'", true).unwrap(), r"'\\'''");
        assert_eq!(quote_string(r"\'", false).unwrap(), r"'\'''");
        assert_eq!(quote_string("l1\nl2\r\x1a", true).unwrap(), r"'l1\nl2\r\Z'");
        assert_eq!(quote_string("l1\nl2", false).unwrap(), "'l1\nl2'");
        assert_eq!(quote_string("pässwörd\"`", true).unwrap(), "'pässwörd\"`'");
        assert_eq!(quote_string("x\0", true), Err(InvalidInput::PasswordNul));
        let nasty = [
            r"'; DROP TABLE t; --",
            r"\",
            r"\\'",
            r"'\''\",
            "\u{5c}\u{27}",
            "tab\tand\nnewline",
            "emoji 🦀 ' \\",
        ];
        for s in nasty {
            for mode in [true, false] {
                assert_eq!(unquote(&quote_string(s, mode).unwrap(), mode), s, "{s:?}");
            }
        }
    }

    #[test]
    fn sql_mode_backslash_detection() {
        assert!(backslash_escapes(
            "STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_AUTO_CREATE_USER,NO_ENGINE_SUBSTITUTION"
        ));
        assert!(backslash_escapes(""));
        assert!(!backslash_escapes("STRICT_ALL_TABLES,NO_BACKSLASH_ESCAPES"));
        assert!(!backslash_escapes("no_backslash_escapes"));
    }

    #[test]
    fn read_only_per_flavour() {
        assert_eq!(
            Dialect::MariaDb.set_read_only(true),
            ["SET GLOBAL read_only = ON"]
        );
        assert_eq!(
            Dialect::MariaDb.set_read_only(false),
            ["SET GLOBAL read_only = OFF"]
        );
        assert_eq!(
            Dialect::MariaDb.read_only_query(),
            "SELECT @@global.read_only"
        );
        for d in [Dialect::MySql80, Dialect::MySql84] {
            assert_eq!(
                d.set_read_only(true),
                [
                    "SET GLOBAL read_only = ON",
                    "SET GLOBAL super_read_only = ON"
                ]
            );
            // super_read_only is cleared first.
            assert_eq!(
                d.set_read_only(false),
                [
                    "SET GLOBAL super_read_only = OFF",
                    "SET GLOBAL read_only = OFF"
                ]
            );
            assert_eq!(
                d.read_only_query(),
                "SELECT @@global.read_only, @@global.super_read_only"
            );
        }
    }

    #[test]
    fn gtid_statements_per_flavour() {
        assert_eq!(
            Dialect::MariaDb.gtid_wait(),
            "SELECT MASTER_GTID_WAIT(?, ?)"
        );
        assert_eq!(
            Dialect::MariaDb.gtid_executed_query(),
            "SELECT @@global.gtid_current_pos, @@global.gtid_binlog_pos, @@global.gtid_slave_pos"
        );
        for d in [Dialect::MySql80, Dialect::MySql84] {
            assert_eq!(d.gtid_wait(), "SELECT WAIT_FOR_EXECUTED_GTID_SET(?, ?)");
            assert_eq!(d.gtid_executed_query(), "SELECT @@global.gtid_executed");
            assert_eq!(d.server_uuid_query(), Some("SELECT @@global.server_uuid"));
        }
        assert_eq!(Dialect::MariaDb.server_uuid_query(), None);
    }

    #[test]
    fn gtid_wait_arguments_and_results() {
        let ms = Duration::from_millis;
        assert_eq!(
            Dialect::MariaDb.gtid_wait_timeout(ms(250)),
            Value::Double(0.25)
        );
        assert_eq!(
            Dialect::MariaDb.gtid_wait_timeout(ms(0)),
            Value::Double(0.0)
        );
        for d in [Dialect::MySql80, Dialect::MySql84] {
            assert_eq!(d.gtid_wait_timeout(ms(0)), Value::UInt(1));
            assert_eq!(d.gtid_wait_timeout(ms(250)), Value::UInt(1));
            assert_eq!(d.gtid_wait_timeout(ms(2000)), Value::UInt(2));
            assert_eq!(d.gtid_wait_timeout(ms(2001)), Value::UInt(3));
            assert_eq!(d.gtid_wait_reached(Some(0)), Some(true));
            assert_eq!(d.gtid_wait_reached(Some(1)), Some(false));
            assert_eq!(d.gtid_wait_reached(Some(2)), None);
            assert_eq!(d.gtid_wait_reached(Some(-1)), None);
            assert_eq!(d.gtid_wait_reached(None), None);
        }
        let m = Dialect::MariaDb;
        assert_eq!(m.gtid_wait_reached(Some(0)), Some(true));
        assert_eq!(m.gtid_wait_reached(Some(-1)), Some(false));
        assert_eq!(m.gtid_wait_reached(Some(1)), None);
        assert_eq!(m.gtid_wait_reached(None), None);
    }

    #[test]
    fn replica_columns_per_flavour() {
        let m = Dialect::MariaDb.replica_columns();
        assert_eq!(m.io_running, "Slave_IO_Running");
        assert_eq!(m.sql_running, "Slave_SQL_Running");
        assert_eq!(m.seconds_behind, "Seconds_Behind_Master");
        assert_eq!(m.source_host, "Master_Host");
        assert_eq!(m.source_port, "Master_Port");
        assert_eq!(m.sql_running_state, "Slave_SQL_Running_State");
        assert!(matches!(
            m.gtid,
            GtidColumns::MariaDb {
                io_pos: "Gtid_IO_Pos",
                using_gtid: "Using_Gtid"
            }
        ));
        for d in [Dialect::MySql80, Dialect::MySql84] {
            let c = d.replica_columns();
            assert_eq!(c.io_running, "Replica_IO_Running");
            assert_eq!(c.sql_running, "Replica_SQL_Running");
            assert_eq!(c.seconds_behind, "Seconds_Behind_Source");
            assert_eq!(c.source_host, "Source_Host");
            assert_eq!(c.source_port, "Source_Port");
            assert!(matches!(
                c.gtid,
                GtidColumns::MySql {
                    retrieved: "Retrieved_Gtid_Set",
                    executed: "Executed_Gtid_Set",
                    auto_position: "Auto_Position",
                    ..
                }
            ));
        }
    }

    #[test]
    fn semi_sync_names() {
        let old = SemiSyncNaming::MasterSlave;
        let new = SemiSyncNaming::SourceReplica;
        assert_eq!(
            old.set_source_enabled(true),
            "SET GLOBAL rpl_semi_sync_master_enabled = ON"
        );
        assert_eq!(
            old.set_replica_enabled(false),
            "SET GLOBAL rpl_semi_sync_slave_enabled = OFF"
        );
        assert_eq!(
            new.set_source_enabled(false),
            "SET GLOBAL rpl_semi_sync_source_enabled = OFF"
        );
        assert_eq!(
            new.set_replica_enabled(true),
            "SET GLOBAL rpl_semi_sync_replica_enabled = ON"
        );
        assert_eq!(old.source_status(), "Rpl_semi_sync_master_status");
        assert_eq!(old.source_clients(), "Rpl_semi_sync_master_clients");
        assert_eq!(old.source_yes_tx(), "Rpl_semi_sync_master_yes_tx");
        assert_eq!(old.source_no_tx(), "Rpl_semi_sync_master_no_tx");
        assert_eq!(new.source_status(), "Rpl_semi_sync_source_status");
        assert_eq!(new.source_clients(), "Rpl_semi_sync_source_clients");
        assert_eq!(new.replica_status(), "Rpl_semi_sync_replica_status");
        assert_eq!(
            new.source_wait_for_replica_count(),
            "rpl_semi_sync_source_wait_for_replica_count"
        );
    }

    #[test]
    fn semi_sync_plugin_detection() {
        // MariaDB 10.11: built in, always both sides, old names.
        let mariadb = [
            "rpl_semi_sync_master_enabled",
            "rpl_semi_sync_master_timeout",
            "rpl_semi_sync_master_trace_level",
            "rpl_semi_sync_master_wait_no_slave",
            "rpl_semi_sync_master_wait_point",
            "rpl_semi_sync_slave_delay_master",
            "rpl_semi_sync_slave_enabled",
            "rpl_semi_sync_slave_kill_conn_timeout",
            "rpl_semi_sync_slave_trace_level",
        ];
        assert_eq!(
            SemiSyncPlugins::detect(mariadb),
            SemiSyncPlugins {
                source: Some(SemiSyncNaming::MasterSlave),
                replica: Some(SemiSyncNaming::MasterSlave)
            }
        );
        // MySQL 8.4 with only semisync_source loaded.
        let mysql84_source = [
            "rpl_semi_sync_source_enabled",
            "rpl_semi_sync_source_timeout",
            "rpl_semi_sync_source_trace_level",
            "rpl_semi_sync_source_wait_for_replica_count",
            "rpl_semi_sync_source_wait_no_replica",
            "rpl_semi_sync_source_wait_point",
        ];
        assert_eq!(
            SemiSyncPlugins::detect(mysql84_source),
            SemiSyncPlugins {
                source: Some(SemiSyncNaming::SourceReplica),
                replica: None
            }
        );
        // MySQL 8.0.30 with semisync_source and the old semisync_slave.
        let mixed = [
            "rpl_semi_sync_slave_enabled",
            "rpl_semi_sync_slave_trace_level",
            "rpl_semi_sync_source_enabled",
            "rpl_semi_sync_source_timeout",
        ];
        assert_eq!(
            SemiSyncPlugins::detect(mixed),
            SemiSyncPlugins {
                source: Some(SemiSyncNaming::SourceReplica),
                replica: Some(SemiSyncNaming::MasterSlave)
            }
        );
        // No plugin loaded.
        assert_eq!(SemiSyncPlugins::detect([]), SemiSyncPlugins::default());
    }

    #[test]
    fn grantee_names_the_user() {
        assert_eq!(grantee_user("'appadmin'@'%'").as_deref(), Some("appadmin"));
        assert_eq!(grantee_user("'o''neil'@'10.%'").as_deref(), Some("o'neil"));
        assert_eq!(grantee_user("'a@b'@'localhost'").as_deref(), Some("a@b"));
        assert_eq!(grantee_user("appadmin"), None);
    }

    #[test]
    fn kill_and_fixed_queries() {
        assert_eq!(kill_connection(42), "KILL CONNECTION 42");
        assert_eq!(SHOW_PROCESSLIST, "SHOW FULL PROCESSLIST");
        assert!(SERVER_INFO.contains("CONNECTION_ID()"));
    }
}
