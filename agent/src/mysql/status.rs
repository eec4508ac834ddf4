//! Typed views of what servers print, parsed from rows by column name. Pure: the tests feed
//! rows shaped exactly as MariaDB 10.11 and MySQL 8.0/8.4 print them.

use std::collections::BTreeMap;
use std::str::FromStr;

use mysql_async::{Row, Value};

use super::dialect::{Dialect, GtidColumns, SemiSyncNaming, SemiSyncPlugins};
use super::gtid::{GtidParseError, GtidPos, GtidSet, GtidState, Uuid};

/// Server output that does not have the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("column {0} is missing")]
    MissingColumn(String),
    #[error("column {column} has unexpected value {value:?}")]
    BadValue { column: String, value: String },
    #[error("column {column} is not a valid GTID value")]
    Gtid {
        column: String,
        #[source]
        source: GtidParseError,
    },
    #[error("the query returned no row")]
    NoRow,
    #[error("replication channels {0:?} exist but not the default channel")]
    NoDefaultChannel(Vec<String>),
}

/// One result row as (column name, value) pairs in column order; SQL NULL is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowMap {
    cols: Vec<(String, Option<String>)>,
}

impl RowMap {
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, Option<V>)>,
    ) -> Self {
        RowMap {
            cols: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.map(Into::into)))
                .collect(),
        }
    }

    /// Converts a driver row; the text protocol sends everything as bytes, the binary protocol
    /// typed numbers, and both become text here.
    pub fn from_row(row: &Row) -> Self {
        let cols = row
            .columns_ref()
            .iter()
            .enumerate()
            .map(|(i, col)| {
                let v = match row.as_ref(i) {
                    None | Some(Value::NULL) => None,
                    Some(Value::Bytes(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                    Some(Value::Int(n)) => Some(n.to_string()),
                    Some(Value::UInt(n)) => Some(n.to_string()),
                    Some(Value::Float(n)) => Some(n.to_string()),
                    Some(Value::Double(n)) => Some(n.to_string()),
                    Some(other) => Some(other.as_sql(true)),
                };
                (col.name_str().into_owned(), v)
            })
            .collect();
        RowMap { cols }
    }

    /// `None` when the column does not exist, `Some(None)` when it is NULL.
    pub fn get(&self, name: &str) -> Option<Option<&str>> {
        self.cols
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    /// The value of the i-th column, for `SELECT @@a, @@b` whose column names are expressions.
    pub fn at(&self, i: usize) -> Option<Option<&str>> {
        self.cols.get(i).map(|(_, v)| v.as_deref())
    }

    pub fn len(&self) -> usize {
        self.cols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cols.is_empty()
    }

    fn column(&self, name: &str) -> Result<Option<&str>, ParseError> {
        self.get(name)
            .ok_or_else(|| ParseError::MissingColumn(name.to_owned()))
    }

    /// Text of a column; NULL reads as empty.
    fn text(&self, name: &str) -> Result<String, ParseError> {
        Ok(self.column(name)?.unwrap_or_default().to_owned())
    }

    fn number<T: FromStr>(&self, name: &str) -> Result<Option<T>, ParseError> {
        match self.column(name)? {
            None => Ok(None),
            Some(v) if v.trim().is_empty() => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| bad(name, v)),
        }
    }
}

fn bad(column: &str, value: &str) -> ParseError {
    ParseError::BadValue {
        column: column.to_owned(),
        value: value.chars().take(200).collect(),
    }
}

fn yes_no(column: &str, v: &str) -> Result<bool, ParseError> {
    match v {
        "Yes" => Ok(true),
        "No" => Ok(false),
        _ => Err(bad(column, v)),
    }
}

fn on_off(column: &str, v: &str) -> Result<bool, ParseError> {
    match v.to_ascii_uppercase().as_str() {
        "ON" | "1" | "YES" => Ok(true),
        "OFF" | "0" | "NO" => Ok(false),
        _ => Err(bad(column, v)),
    }
}

// ---------------------------------------------------------------------------------------------
// Server identity
// ---------------------------------------------------------------------------------------------

/// The columns of [`super::dialect::SERVER_INFO`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfoRow {
    pub version: String,
    pub version_comment: String,
    pub server_id: u32,
    pub connection_id: u64,
    pub sql_mode: String,
}

impl ServerInfoRow {
    pub fn parse(row: &RowMap) -> Result<Self, ParseError> {
        let at = |i: usize, what: &str| -> Result<String, ParseError> {
            row.at(i)
                .ok_or_else(|| ParseError::MissingColumn(what.to_owned()))
                .map(|v| v.unwrap_or_default().to_owned())
        };
        let num = |i: usize, what: &str| -> Result<u64, ParseError> {
            let v = at(i, what)?;
            v.parse().map_err(|_| bad(what, &v))
        };
        let server_id = num(2, "@@server_id")?;
        Ok(ServerInfoRow {
            version: at(0, "@@version")?,
            version_comment: at(1, "@@version_comment")?,
            server_id: u32::try_from(server_id)
                .map_err(|_| bad("@@server_id", &server_id.to_string()))?,
            connection_id: num(3, "CONNECTION_ID()")?,
            sql_mode: at(4, "@@sql_mode")?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Replica status
// ---------------------------------------------------------------------------------------------

/// `Slave_IO_Running` / `Replica_IO_Running`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoRunning {
    Yes,
    /// Configured and trying; also shown while the source is down.
    Connecting,
    No,
    /// A value neither flavour documents; kept verbatim rather than guessed at.
    Other(String),
}

impl IoRunning {
    fn parse(v: &str) -> Self {
        match v {
            "Yes" => IoRunning::Yes,
            "Connecting" => IoRunning::Connecting,
            "No" => IoRunning::No,
            other => IoRunning::Other(other.to_owned()),
        }
    }
}

/// MariaDB `Using_Gtid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsingGtid {
    No,
    SlavePos,
    CurrentPos,
}

/// The GTID side of replica status, which differs in meaning per flavour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaGtid {
    MariaDb {
        using_gtid: UsingGtid,
        /// Everything the IO thread has received (into the relay log).
        io_pos: GtidPos,
    },
    MySql {
        auto_position: bool,
        /// Everything the IO thread has received since the relay log was last reset.
        retrieved: GtidSet,
        executed: GtidSet,
        /// Empty until the IO thread first connects.
        source_uuid: Option<Uuid>,
    },
}

/// The default replication channel's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub source_host: String,
    pub source_port: u16,
    pub source_user: String,
    /// 0 until the IO thread first connects.
    pub source_server_id: u32,
    pub io_running: IoRunning,
    pub sql_running: bool,
    pub io_state: String,
    pub sql_running_state: String,
    /// NULL (None) whenever the SQL or IO thread is not running — not "no lag".
    pub seconds_behind_source: Option<u64>,
    pub last_io_errno: u32,
    pub last_io_error: String,
    pub last_sql_errno: u32,
    pub last_sql_error: String,
    /// (source binlog file, position read up to); `None` before the IO
    /// thread first read anything.
    pub read_position: Option<(String, u64)>,
    pub gtid: ReplicaGtid,
}

impl ReplicaStatus {
    /// Parses the output of [`Dialect::show_replica_status`]: `None` for no rows (not a
    /// replica, or after `RESET REPLICA ALL`). Only the default channel is read; a MySQL server
    /// replicating only through named channels is refused rather than half-understood.
    pub fn parse(dialect: Dialect, rows: &[RowMap]) -> Result<Option<Self>, ParseError> {
        let c = dialect.replica_columns();
        let row = match &c.gtid {
            GtidColumns::MySql { channel, .. } if rows.len() > 1 => {
                let mut names = Vec::new();
                let mut found = None;
                for r in rows {
                    let name = r.text(channel)?;
                    if name.is_empty() {
                        found = Some(r);
                    }
                    names.push(name);
                }
                match found {
                    Some(r) => r,
                    None => return Err(ParseError::NoDefaultChannel(names)),
                }
            }
            GtidColumns::MySql { channel, .. } => match rows.first() {
                None => return Ok(None),
                Some(r) => {
                    let name = r.text(channel)?;
                    if !name.is_empty() {
                        return Err(ParseError::NoDefaultChannel(vec![name]));
                    }
                    r
                }
            },
            // MariaDB's SHOW SLAVE STATUS shows only the default connection.
            GtidColumns::MariaDb { .. } => match rows.first() {
                None => return Ok(None),
                Some(r) => r,
            },
        };

        let gtid = match &c.gtid {
            GtidColumns::MariaDb { using_gtid, io_pos } => {
                let ug = row.text(using_gtid)?;
                let using_gtid = match ug.as_str() {
                    "No" => UsingGtid::No,
                    "Slave_Pos" => UsingGtid::SlavePos,
                    "Current_Pos" => UsingGtid::CurrentPos,
                    _ => return Err(bad(using_gtid, &ug)),
                };
                ReplicaGtid::MariaDb {
                    using_gtid,
                    io_pos: gtid_pos(row, io_pos)?,
                }
            }
            GtidColumns::MySql {
                retrieved,
                executed,
                auto_position,
                source_uuid,
                ..
            } => {
                let ap = row.text(auto_position)?;
                let uuid = row.text(source_uuid)?;
                ReplicaGtid::MySql {
                    auto_position: match ap.as_str() {
                        "1" => true,
                        "0" => false,
                        _ => return Err(bad(auto_position, &ap)),
                    },
                    retrieved: gtid_set(row, retrieved)?,
                    executed: gtid_set(row, executed)?,
                    source_uuid: if uuid.is_empty() {
                        None
                    } else {
                        Some(Uuid::parse(&uuid).map_err(|e| ParseError::Gtid {
                            column: (*source_uuid).to_owned(),
                            source: e,
                        })?)
                    },
                }
            }
        };

        let sql = row.text(c.sql_running)?;
        Ok(Some(ReplicaStatus {
            source_host: row.text(c.source_host)?,
            source_port: row.number(c.source_port)?.unwrap_or(0),
            source_user: row.text(c.source_user)?,
            source_server_id: row.number(c.source_server_id)?.unwrap_or(0),
            io_running: IoRunning::parse(&row.text(c.io_running)?),
            sql_running: yes_no(c.sql_running, &sql)?,
            io_state: row.text(c.io_state)?,
            sql_running_state: row.text(c.sql_running_state)?,
            seconds_behind_source: row.number(c.seconds_behind)?,
            last_io_errno: row.number(c.last_io_errno)?.unwrap_or(0),
            last_io_error: row.text(c.last_io_error)?,
            last_sql_errno: row.number(c.last_sql_errno)?.unwrap_or(0),
            last_sql_error: row.text(c.last_sql_error)?,
            read_position: {
                let file = row.text(c.read_file)?;
                match row.number(c.read_pos)? {
                    Some(pos) if !file.is_empty() => Some((file, pos)),
                    _ => None,
                }
            },
            gtid,
        }))
    }

    /// What the replica holds, applied or waiting in its relay log: the target of rule 4's wait
    /// before the replica may become writable, and what failover candidates are compared by.
    /// MariaDB: `Gtid_IO_Pos`. MySQL: `Retrieved_Gtid_Set` with `Executed_Gtid_Set`, because
    /// the retrieved set starts empty at every `CHANGE REPLICATION SOURCE TO`: after a
    /// switchover it held only what came from the new source, and a failover refused the
    /// replica that had everything (MySQL 9.7, kill_9_after_a_switchover_...).
    pub fn received(&self) -> GtidState {
        match &self.gtid {
            ReplicaGtid::MariaDb { io_pos, .. } => GtidState::MariaDb(io_pos.clone()),
            ReplicaGtid::MySql {
                retrieved,
                executed,
                ..
            } => GtidState::MySql(retrieved.union(executed)),
        }
    }

    /// Whether the IO thread runs or tries to (it may collect semi-sync ACK duties).
    pub fn io_thread_active(&self) -> bool {
        matches!(self.io_running, IoRunning::Yes | IoRunning::Connecting)
    }
}

fn gtid_pos(row: &RowMap, col: &str) -> Result<GtidPos, ParseError> {
    GtidPos::parse(&row.text(col)?).map_err(|e| ParseError::Gtid {
        column: col.to_owned(),
        source: e,
    })
}

fn gtid_set(row: &RowMap, col: &str) -> Result<GtidSet, ParseError> {
    GtidSet::parse(&row.text(col)?).map_err(|e| ParseError::Gtid {
        column: col.to_owned(),
        source: e,
    })
}

// ---------------------------------------------------------------------------------------------
// Binary log status
// ---------------------------------------------------------------------------------------------

/// The current binlog coordinates (`SHOW MASTER STATUS` / `SHOW BINARY LOG STATUS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinlogStatus {
    pub file: String,
    pub position: u64,
}

impl BinlogStatus {
    /// `None` when binary logging is off (the statement returns no row).
    pub fn parse(rows: &[RowMap]) -> Result<Option<Self>, ParseError> {
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        Ok(Some(BinlogStatus {
            file: row.text("File")?,
            position: row.number("Position")?.ok_or_else(|| bad("Position", ""))?,
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Read-only
// ---------------------------------------------------------------------------------------------

/// `read_only` and, on MySQL, `super_read_only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOnly {
    pub read_only: bool,
    /// `None` on MariaDB, which has no such variable.
    pub super_read_only: Option<bool>,
}

impl ReadOnly {
    pub fn parse(dialect: Dialect, row: &RowMap) -> Result<Self, ParseError> {
        let flag = |i: usize, name: &str| -> Result<bool, ParseError> {
            match row.at(i) {
                Some(Some(v)) => on_off(name, v),
                _ => Err(ParseError::MissingColumn(name.to_owned())),
            }
        };
        Ok(ReadOnly {
            read_only: flag(0, "@@read_only")?,
            super_read_only: if dialect.is_mariadb() {
                None
            } else {
                Some(flag(1, "@@super_read_only")?)
            },
        })
    }

    /// Whether even accounts with admin privileges are refused writes: only MySQL's
    /// `super_read_only` does that; MariaDB lets READ_ONLY ADMIN holders write through.
    pub fn is_fully_read_only(&self) -> bool {
        self.read_only && self.super_read_only.unwrap_or(false)
    }
}

// ---------------------------------------------------------------------------------------------
// Executed GTIDs
// ---------------------------------------------------------------------------------------------

/// Parses the row of [`Dialect::gtid_executed_query`]. On MariaDB the executed state is
/// `gtid_current_pos`: `gtid_binlog_pos` misses replicated transactions when
/// `log_slave_updates` is off, and `gtid_slave_pos` misses the server's own writes.
pub fn parse_gtid_executed(dialect: Dialect, row: &RowMap) -> Result<GtidState, ParseError> {
    let at = |i: usize, name: &str| -> Result<String, ParseError> {
        row.at(i)
            .ok_or_else(|| ParseError::MissingColumn(name.to_owned()))
            .map(|v| v.unwrap_or_default().to_owned())
    };
    if dialect.is_mariadb() {
        let v = at(0, "@@gtid_current_pos")?;
        GtidPos::parse(&v)
            .map(GtidState::MariaDb)
            .map_err(|e| ParseError::Gtid {
                column: "@@gtid_current_pos".into(),
                source: e,
            })
    } else {
        let v = at(0, "@@gtid_executed")?;
        GtidSet::parse(&v)
            .map(GtidState::MySql)
            .map_err(|e| ParseError::Gtid {
                column: "@@gtid_executed".into(),
                source: e,
            })
    }
}

/// MariaDB's three GTID positions, for diagnosis and rejoin checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MariaDbPositions {
    pub current_pos: GtidPos,
    pub binlog_pos: GtidPos,
    pub slave_pos: GtidPos,
}

impl MariaDbPositions {
    pub fn parse(row: &RowMap) -> Result<Self, ParseError> {
        let pos = |i: usize, name: &str| -> Result<GtidPos, ParseError> {
            let v = row
                .at(i)
                .ok_or_else(|| ParseError::MissingColumn(name.to_owned()))?
                .unwrap_or_default();
            GtidPos::parse(v).map_err(|e| ParseError::Gtid {
                column: name.to_owned(),
                source: e,
            })
        };
        Ok(MariaDbPositions {
            current_pos: pos(0, "@@gtid_current_pos")?,
            binlog_pos: pos(1, "@@gtid_binlog_pos")?,
            slave_pos: pos(2, "@@gtid_slave_pos")?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Semi-sync
// ---------------------------------------------------------------------------------------------

/// `rpl_semi_sync_*_wait_point`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitPoint {
    /// Lossless: the source waits for the ACK before committing to the storage engine.
    AfterSync,
    AfterCommit,
}

/// Semi-sync settings and counters of one server. A side whose plugin is not loaded reads as
/// disabled with its settings `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SemiSyncState {
    pub plugins: SemiSyncPlugins,
    pub source_enabled: bool,
    pub replica_enabled: bool,
    /// Whether the source currently runs semi-synchronously (it turns OFF after a timeout).
    pub source_status_on: bool,
    /// Whether this replica's IO thread currently ACKs (needs an IO thread restart after
    /// enabling).
    pub replica_status_on: bool,
    /// Semi-sync replicas connected to this source.
    pub clients: u64,
    pub yes_tx: u64,
    /// Commits waiting for an ACK right now.
    pub wait_sessions: u64,
    /// Counts commits that ended without an ACK, including ones whose
    /// session was killed while waiting (MariaDB): those got no OK.
    pub no_tx: u64,
    /// Times semi-sync was switched off (a timeout, or the flag turned off).
    pub no_times: u64,
    pub wait_point: Option<WaitPoint>,
    pub timeout_ms: Option<u64>,
    pub wait_no_replica: Option<bool>,
    /// MySQL only.
    pub wait_for_replica_count: Option<u32>,
}

/// A source's ACK counters at one moment. Sessions waiting while neither
/// count moves is a source whose commits get no ACK: a busy healthy source
/// always has some session waiting, but its `yes_tx` rises with every ACK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckCounters {
    pub wait_sessions: u64,
    pub yes_tx: u64,
    pub no_tx: u64,
}

impl AckCounters {
    /// From [`super::dialect::SHOW_SEMI_SYNC_STATUS`] output, either
    /// naming (`master` or `source`); `None` without a source plugin.
    pub fn from_status(status: &BTreeMap<String, String>) -> Option<AckCounters> {
        let read = |what: &str| {
            ["rpl_semi_sync_master_", "rpl_semi_sync_source_"]
                .iter()
                .find_map(|p| status.get(&format!("{p}{what}")))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Some(AckCounters {
            wait_sessions: read("wait_sessions")?,
            yes_tx: read("yes_tx")?,
            no_tx: read("no_tx")?,
        })
    }
}

/// `Variable_name`/`Value` rows (`SHOW VARIABLES`, `SHOW STATUS`) as a map with lowercase keys:
/// MySQL prints status names capitalised and variable names lowercase.
pub fn name_values(rows: &[RowMap]) -> Result<BTreeMap<String, String>, ParseError> {
    rows.iter()
        .map(|r| {
            Ok((
                r.text("Variable_name")?.to_ascii_lowercase(),
                r.text("Value")?,
            ))
        })
        .collect()
}

/// How a replica applies what it receives, and whether GTIDs keep the
/// order the lossless checks rely on (a `contains` of GTID positions means
/// "applied everything up to" only when sequence numbers never go back).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplySettings {
    /// Parallel applier threads; 0 is one applier.
    pub workers: u64,
    /// MariaDB's `slave_parallel_mode`.
    pub mode: Option<String>,
    /// Commits in the source's order: always on MariaDB, MySQL's
    /// `replica_preserve_commit_order` (or one applier).
    pub ordered: bool,
    /// MariaDB `gtid_strict_mode`; MySQL `gtid_mode=ON` with
    /// `enforce_gtid_consistency=ON`.
    pub gtid_strict: bool,
}

impl ApplySettings {
    /// From [`super::dialect::SHOW_APPLY_SETTINGS`] as returned by
    /// [`name_values`]; either flavour's names.
    pub fn parse(v: &BTreeMap<String, String>) -> Result<Self, ParseError> {
        let on = |name: &str| {
            v.get(name)
                .is_some_and(|x| x.eq_ignore_ascii_case("on") || x == "1")
        };
        if let Some(threads) = v.get("slave_parallel_threads") {
            return Ok(ApplySettings {
                workers: threads
                    .parse()
                    .map_err(|_| bad("slave_parallel_threads", threads))?,
                mode: v.get("slave_parallel_mode").cloned(),
                ordered: true,
                gtid_strict: on("gtid_strict_mode"),
            });
        }
        let (name, workers) = ["replica_parallel_workers", "slave_parallel_workers"]
            .iter()
            .find_map(|n| v.get(*n).map(|w| (*n, w)))
            .ok_or_else(|| ParseError::MissingColumn("replica_parallel_workers".into()))?;
        let workers: u64 = workers.parse().map_err(|_| bad(name, workers))?;
        let ordered = workers <= 1
            || on("replica_preserve_commit_order")
            || on("slave_preserve_commit_order");
        Ok(ApplySettings {
            workers,
            mode: None,
            ordered,
            gtid_strict: on("gtid_mode") && on("enforce_gtid_consistency"),
        })
    }

    /// As the report and `status` show it.
    pub fn describe(&self) -> String {
        let mut out = match self.workers {
            0 | 1 => "one applier".to_owned(),
            n => format!("{n} parallel workers"),
        };
        if let Some(m) = &self.mode {
            if self.workers > 1 {
                out.push_str(&format!(", {m}"));
            }
        }
        if self.workers > 1 && !self.ordered {
            out.push_str(", commit order not kept");
        }
        out
    }
}

impl SemiSyncState {
    /// Parses [`super::dialect::SHOW_SEMI_SYNC_VARIABLES`] and
    /// [`super::dialect::SHOW_SEMI_SYNC_STATUS`] output, as returned by [`name_values`].
    pub fn parse(
        variables: &BTreeMap<String, String>,
        status: &BTreeMap<String, String>,
    ) -> Result<Self, ParseError> {
        let plugins = SemiSyncPlugins::detect(variables.keys().map(String::as_str));
        let get = |m: &BTreeMap<String, String>, name: &str| -> Option<String> {
            m.get(&name.to_ascii_lowercase()).cloned()
        };
        let flag = |m: &BTreeMap<String, String>, name: &str| -> Result<Option<bool>, ParseError> {
            get(m, name).map(|v| on_off(name, &v)).transpose()
        };
        let num = |m: &BTreeMap<String, String>, name: &str| -> Result<Option<u64>, ParseError> {
            get(m, name)
                .map(|v| v.trim().parse().map_err(|_| bad(name, &v)))
                .transpose()
        };

        let mut st = SemiSyncState {
            plugins,
            source_enabled: false,
            replica_enabled: false,
            source_status_on: false,
            replica_status_on: false,
            clients: 0,
            yes_tx: 0,
            wait_sessions: 0,
            no_tx: 0,
            no_times: 0,
            wait_point: None,
            timeout_ms: None,
            wait_no_replica: None,
            wait_for_replica_count: None,
        };
        if let Some(n) = plugins.source {
            st.source_enabled = flag(variables, n.source_enabled())?.unwrap_or(false);
            st.source_status_on = flag(status, n.source_status())?.unwrap_or(false);
            st.clients = num(status, n.source_clients())?.unwrap_or(0);
            st.yes_tx = num(status, n.source_yes_tx())?.unwrap_or(0);
            st.wait_sessions = num(status, n.source_wait_sessions())?.unwrap_or(0);
            st.no_tx = num(status, n.source_no_tx())?.unwrap_or(0);
            st.no_times = num(status, n.source_no_times())?.unwrap_or(0);
            st.timeout_ms = num(variables, n.source_timeout())?;
            st.wait_no_replica = flag(variables, n.source_wait_no_replica())?;
            st.wait_for_replica_count = num(variables, n.source_wait_for_replica_count())?
                .map(|c| u32::try_from(c).unwrap_or(u32::MAX));
            st.wait_point = match get(variables, n.source_wait_point()) {
                None => None,
                Some(v) => Some(match v.to_ascii_uppercase().as_str() {
                    "AFTER_SYNC" => WaitPoint::AfterSync,
                    "AFTER_COMMIT" => WaitPoint::AfterCommit,
                    _ => return Err(bad(n.source_wait_point(), &v)),
                }),
            };
        }
        if let Some(n) = plugins.replica {
            st.replica_enabled = flag(variables, n.replica_enabled())?.unwrap_or(false);
            st.replica_status_on = flag(status, n.replica_status())?.unwrap_or(false);
        }
        Ok(st)
    }

    pub fn source_naming(&self) -> Option<SemiSyncNaming> {
        self.plugins.source
    }

    pub fn replica_naming(&self) -> Option<SemiSyncNaming> {
        self.plugins.replica
    }
}

// ---------------------------------------------------------------------------------------------
// Processlist
// ---------------------------------------------------------------------------------------------

/// A connection from `SHOW FULL PROCESSLIST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientThread {
    pub id: u64,
    pub user: String,
    pub host: String,
    pub db: Option<String>,
    pub command: String,
    pub time: Option<u64>,
    pub state: Option<String>,
    pub info: Option<String>,
}

/// Threads of the server itself, whatever account they show: MariaDB and MySQL replica threads
/// run as "system user", the event scheduler as "event_scheduler".
const SERVER_USERS: [&str; 2] = ["system user", "event_scheduler"];

/// Commands that are never a client's: replicas' dump threads on a source (killing them only
/// makes the replica reconnect, and costs its semi-sync ACK), replica applier threads
/// (MariaDB names them; MySQL shows them as "Connect"/"Query" under "system user"), and daemons.
const SERVER_COMMANDS: [&str; 8] = [
    "Binlog Dump",
    "Binlog Dump GTID",
    "Register Slave",
    "Slave_IO",
    "Slave_SQL",
    "Slave_worker",
    "Daemon",
    "Delayed insert",
];

impl ClientThread {
    pub fn parse(row: &RowMap) -> Result<Self, ParseError> {
        let opt = |name: &str| -> Result<Option<String>, ParseError> {
            Ok(row.column(name)?.map(str::to_owned))
        };
        Ok(ClientThread {
            id: row.number("Id")?.ok_or_else(|| bad("Id", ""))?,
            user: row.text("User")?,
            host: row.text("Host")?,
            db: opt("db")?,
            command: row.text("Command")?,
            // Some MySQL threads print a negative or NULL time; it is informational only.
            time: row.column("Time")?.and_then(|t| t.trim().parse().ok()),
            state: opt("State")?,
            info: opt("Info")?,
        })
    }

    /// Replication, scheduler and other server-internal threads.
    pub fn is_server_thread(&self) -> bool {
        SERVER_USERS.contains(&self.user.as_str())
            || SERVER_COMMANDS.contains(&self.command.as_str())
    }
}

/// The ids of the binlog dump threads in a processlist: one per connected
/// replica (`Binlog Dump`, or `Binlog Dump GTID` on MySQL).
pub fn binlog_dump_threads(rows: &[RowMap]) -> Result<Vec<u64>, ParseError> {
    let mut out = Vec::new();
    for r in rows {
        let t = ClientThread::parse(r)?;
        if t.command.starts_with("Binlog Dump") {
            out.push(t.id);
        }
    }
    Ok(out)
}

/// The client connections in a processlist: not server threads, not `own_id` (our connection).
pub fn client_threads(rows: &[RowMap], own_id: u64) -> Result<Vec<ClientThread>, ParseError> {
    let mut out = Vec::new();
    for r in rows {
        let t = ClientThread::parse(r)?;
        if t.id != own_id && !t.is_server_thread() {
            out.push(t);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {

    #[test]
    fn ack_counters_read_either_naming_and_nothing_without_a_source_plugin() {
        let map = |rows: &[(&str, &str)]| -> BTreeMap<String, String> {
            rows.iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned()))
                .collect()
        };
        let old = map(&[
            ("Rpl_semi_sync_master_wait_sessions", "3"),
            ("Rpl_semi_sync_master_yes_tx", "120"),
            ("Rpl_semi_sync_master_no_tx", "2"),
        ]);
        assert_eq!(
            AckCounters::from_status(&old),
            Some(AckCounters {
                wait_sessions: 3,
                yes_tx: 120,
                no_tx: 2
            })
        );
        let new = map(&[
            ("Rpl_semi_sync_source_wait_sessions", "0"),
            ("Rpl_semi_sync_source_yes_tx", "7"),
            ("Rpl_semi_sync_source_no_tx", "0"),
        ]);
        assert_eq!(
            AckCounters::from_status(&new),
            Some(AckCounters {
                wait_sessions: 0,
                yes_tx: 7,
                no_tx: 0
            })
        );
        let replica_only = map(&[("Rpl_semi_sync_slave_status", "ON")]);
        assert_eq!(AckCounters::from_status(&replica_only), None);
    }
    use super::*;

    fn row(pairs: &[(&str, Option<&str>)]) -> RowMap {
        RowMap::from_pairs(pairs.iter().map(|(k, v)| (*k, v.map(str::to_owned))))
    }

    /// `SHOW SLAVE STATUS` on MariaDB 10.11.19, captured from a replica in GTID mode.
    fn mariadb_replica_row(io: &str, sql: &str, behind: Option<&str>) -> RowMap {
        row(&[
            ("Slave_IO_State", Some("Waiting for master to send event")),
            ("Master_Host", Some("127.0.0.1")),
            ("Master_User", Some("repl")),
            ("Master_Port", Some("33061")),
            ("Connect_Retry", Some("1")),
            ("Master_Log_File", Some("bin.000001")),
            ("Read_Master_Log_Pos", Some("1098")),
            ("Relay_Log_File", Some("p2-relay-bin.000002")),
            ("Relay_Log_Pos", Some("1391")),
            ("Relay_Master_Log_File", Some("bin.000001")),
            ("Slave_IO_Running", Some(io)),
            ("Slave_SQL_Running", Some(sql)),
            ("Replicate_Do_DB", Some("")),
            ("Replicate_Ignore_DB", Some("")),
            ("Replicate_Do_Table", Some("")),
            ("Replicate_Ignore_Table", Some("")),
            ("Replicate_Wild_Do_Table", Some("")),
            ("Replicate_Wild_Ignore_Table", Some("")),
            ("Last_Errno", Some("0")),
            ("Last_Error", Some("")),
            ("Skip_Counter", Some("0")),
            ("Exec_Master_Log_Pos", Some("1098")),
            ("Relay_Log_Space", Some("1697")),
            ("Until_Condition", Some("None")),
            ("Until_Log_File", Some("")),
            ("Until_Log_Pos", Some("0")),
            ("Master_SSL_Allowed", Some("No")),
            ("Master_SSL_CA_File", Some("")),
            ("Master_SSL_CA_Path", Some("")),
            ("Master_SSL_Cert", Some("")),
            ("Master_SSL_Cipher", Some("")),
            ("Master_SSL_Key", Some("")),
            ("Seconds_Behind_Master", behind),
            ("Master_SSL_Verify_Server_Cert", Some("No")),
            ("Last_IO_Errno", Some("0")),
            ("Last_IO_Error", Some("")),
            ("Last_SQL_Errno", Some("0")),
            ("Last_SQL_Error", Some("")),
            ("Replicate_Ignore_Server_Ids", Some("")),
            ("Master_Server_Id", Some("1")),
            ("Master_SSL_Crl", Some("")),
            ("Master_SSL_Crlpath", Some("")),
            ("Using_Gtid", Some("Slave_Pos")),
            ("Gtid_IO_Pos", Some("0-1-5")),
            ("Replicate_Do_Domain_Ids", Some("")),
            ("Replicate_Ignore_Domain_Ids", Some("")),
            ("Parallel_Mode", Some("optimistic")),
            ("SQL_Delay", Some("0")),
            ("SQL_Remaining_Delay", None),
            (
                "Slave_SQL_Running_State",
                Some("Slave has read all relay log; waiting for more updates"),
            ),
            ("Slave_DDL_Groups", Some("4")),
            ("Slave_Non_Transactional_Groups", Some("0")),
            ("Slave_Transactional_Groups", Some("1")),
            ("Replicate_Rewrite_DB", Some("")),
        ])
    }

    const SRC_UUID: &str = "a8e3b8f2-5c1e-11ee-8c99-0242ac120002";

    /// `SHOW REPLICA STATUS` on MySQL 8.0.3x / 8.4 (same column set), default channel.
    fn mysql_replica_row(io: &str, sql: &str, channel: &str) -> RowMap {
        row(&[
            ("Replica_IO_State", Some("Waiting for source to send event")),
            ("Source_Host", Some("db1.example.com")),
            ("Source_User", Some("repl")),
            ("Source_Port", Some("3306")),
            ("Connect_Retry", Some("1")),
            ("Source_Log_File", Some("binlog.000003")),
            ("Read_Source_Log_Pos", Some("2341")),
            ("Relay_Log_File", Some("db2-relay-bin.000002")),
            ("Relay_Log_Pos", Some("1735")),
            ("Relay_Source_Log_File", Some("binlog.000003")),
            ("Replica_IO_Running", Some(io)),
            ("Replica_SQL_Running", Some(sql)),
            ("Replicate_Do_DB", Some("")),
            ("Replicate_Ignore_DB", Some("")),
            ("Replicate_Do_Table", Some("")),
            ("Replicate_Ignore_Table", Some("")),
            ("Replicate_Wild_Do_Table", Some("")),
            ("Replicate_Wild_Ignore_Table", Some("")),
            ("Last_Errno", Some("0")),
            ("Last_Error", Some("")),
            ("Skip_Counter", Some("0")),
            ("Exec_Source_Log_Pos", Some("2341")),
            ("Relay_Log_Space", Some("1950")),
            ("Until_Condition", Some("None")),
            ("Until_Log_File", Some("")),
            ("Until_Log_Pos", Some("0")),
            ("Source_SSL_Allowed", Some("No")),
            ("Source_SSL_CA_File", Some("")),
            ("Source_SSL_CA_Path", Some("")),
            ("Source_SSL_Cert", Some("")),
            ("Source_SSL_Cipher", Some("")),
            ("Source_SSL_Key", Some("")),
            ("Seconds_Behind_Source", Some("0")),
            ("Source_SSL_Verify_Server_Cert", Some("No")),
            ("Last_IO_Errno", Some("0")),
            ("Last_IO_Error", Some("")),
            ("Last_SQL_Errno", Some("0")),
            ("Last_SQL_Error", Some("")),
            ("Replicate_Ignore_Server_Ids", Some("")),
            ("Source_Server_Id", Some("1")),
            ("Source_UUID", Some(SRC_UUID)),
            ("Source_Info_File", Some("mysql.slave_master_info")),
            ("SQL_Delay", Some("0")),
            ("SQL_Remaining_Delay", None),
            (
                "Replica_SQL_Running_State",
                Some("Replica has read all relay log; waiting for more updates"),
            ),
            ("Source_Retry_Count", Some("86400")),
            ("Source_Bind", Some("")),
            ("Last_IO_Error_Timestamp", Some("")),
            ("Last_SQL_Error_Timestamp", Some("")),
            ("Source_SSL_Crl", Some("")),
            ("Source_SSL_Crlpath", Some("")),
            (
                "Retrieved_Gtid_Set",
                Some("a8e3b8f2-5c1e-11ee-8c99-0242ac120002:1-7"),
            ),
            (
                "Executed_Gtid_Set",
                Some("a8e3b8f2-5c1e-11ee-8c99-0242ac120002:1-7,\nc1f5e3a4-5c1e-11ee-9a3d-0242ac120003:1-2"),
            ),
            ("Auto_Position", Some("1")),
            ("Replicate_Rewrite_DB", Some("")),
            ("Channel_Name", Some(channel)),
            ("Source_TLS_Version", Some("")),
            ("Source_public_key_path", Some("")),
            ("Get_Source_public_key", Some("1")),
            ("Network_Namespace", Some("")),
        ])
    }

    fn set_col(r: &mut RowMap, name: &str, v: Option<&str>) {
        for (k, val) in r.cols.iter_mut() {
            if k == name {
                *val = v.map(str::to_owned);
                return;
            }
        }
        panic!("no column {name}");
    }

    #[test]
    fn mariadb_replica_status_running() {
        let st = ReplicaStatus::parse(
            Dialect::MariaDb,
            &[mariadb_replica_row("Yes", "Yes", Some("0"))],
        )
        .unwrap()
        .unwrap();
        assert_eq!(st.source_host, "127.0.0.1");
        assert_eq!(st.source_port, 33061);
        assert_eq!(st.source_user, "repl");
        assert_eq!(st.source_server_id, 1);
        assert_eq!(st.io_running, IoRunning::Yes);
        assert!(st.sql_running);
        assert!(st.io_thread_active());
        assert_eq!(st.seconds_behind_source, Some(0));
        assert_eq!(
            st.gtid,
            ReplicaGtid::MariaDb {
                using_gtid: UsingGtid::SlavePos,
                io_pos: GtidPos::parse("0-1-5").unwrap()
            }
        );
        assert_eq!(st.received().to_string(), "0-1-5");
        assert_eq!(
            st.sql_running_state,
            "Slave has read all relay log; waiting for more updates"
        );
    }

    #[test]
    fn mariadb_replica_status_broken() {
        let mut r = mariadb_replica_row("Connecting", "No", None);
        set_col(&mut r, "Last_IO_Errno", Some("2003"));
        set_col(
            &mut r,
            "Last_IO_Error",
            Some("error reconnecting to master 'repl@127.0.0.1:33061' - retry-time: 1  maximum-retries: 100000  message: Can't connect to server on '127.0.0.1' (111 \"Connection refused\")"),
        );
        set_col(&mut r, "Last_SQL_Errno", Some("1062"));
        set_col(&mut r, "Gtid_IO_Pos", Some(""));
        set_col(&mut r, "Using_Gtid", Some("Current_Pos"));
        let st = ReplicaStatus::parse(Dialect::MariaDb, &[r])
            .unwrap()
            .unwrap();
        assert_eq!(st.io_running, IoRunning::Connecting);
        assert!(st.io_thread_active());
        assert!(!st.sql_running);
        assert_eq!(st.seconds_behind_source, None);
        assert_eq!(st.last_io_errno, 2003);
        assert!(st.last_io_error.contains("Connection refused"));
        assert_eq!(st.last_sql_errno, 1062);
        assert!(st.received().is_empty());
        assert!(matches!(
            st.gtid,
            ReplicaGtid::MariaDb {
                using_gtid: UsingGtid::CurrentPos,
                ..
            }
        ));
        let stopped = mariadb_replica_row("No", "Yes", None);
        let st = ReplicaStatus::parse(Dialect::MariaDb, &[stopped])
            .unwrap()
            .unwrap();
        assert!(!st.io_thread_active());
    }

    #[test]
    fn no_rows_is_not_a_replica() {
        for d in [Dialect::MariaDb, Dialect::MySql80, Dialect::MySql84] {
            assert_eq!(ReplicaStatus::parse(d, &[]), Ok(None));
        }
    }

    #[test]
    fn mysql_replica_status() {
        for d in [Dialect::MySql80, Dialect::MySql84] {
            let st = ReplicaStatus::parse(d, &[mysql_replica_row("Yes", "Yes", "")])
                .unwrap()
                .unwrap();
            assert_eq!(st.source_host, "db1.example.com");
            assert_eq!(st.source_port, 3306);
            assert_eq!(st.io_running, IoRunning::Yes);
            assert!(st.sql_running);
            assert_eq!(st.seconds_behind_source, Some(0));
            let ReplicaGtid::MySql {
                auto_position,
                retrieved,
                executed,
                source_uuid,
            } = &st.gtid
            else {
                panic!("MySQL status parsed as MariaDB");
            };
            assert!(auto_position);
            assert_eq!(retrieved.count(), 7);
            assert_eq!(executed.count(), 9);
            assert!(executed.contains(retrieved));
            assert_eq!(source_uuid.unwrap().to_string(), SRC_UUID);
            assert_eq!(st.received(), GtidState::MySql(executed.clone()));
        }
    }

    /// Repointed: the retrieved set holds only the new source's GTIDs, while the replica
    /// applied the old source's long before.
    #[test]
    fn a_repointed_mysql_replica_has_received_what_it_executed() {
        const OLD: &str = "c1f5e3a4-5c1e-11ee-9a3d-0242ac120003";
        let mut r = mysql_replica_row("Yes", "Yes", "");
        set_col(
            &mut r,
            "Retrieved_Gtid_Set",
            Some(&format!("{SRC_UUID}:5-9")),
        );
        let executed = format!("{OLD}:1-100,\n{SRC_UUID}:1-7");
        set_col(&mut r, "Executed_Gtid_Set", Some(&executed));
        let st = ReplicaStatus::parse(Dialect::MySql84, &[r])
            .unwrap()
            .unwrap();
        let want = GtidSet::parse(&format!("{OLD}:1-100,{SRC_UUID}:1-9")).unwrap();
        assert_eq!(st.received(), GtidState::MySql(want));
    }

    #[test]
    fn mysql_replica_status_never_connected() {
        let mut r = mysql_replica_row("Connecting", "Yes", "");
        set_col(&mut r, "Source_UUID", Some(""));
        set_col(&mut r, "Source_Server_Id", Some("0"));
        set_col(&mut r, "Retrieved_Gtid_Set", Some(""));
        set_col(&mut r, "Seconds_Behind_Source", None);
        set_col(&mut r, "Last_IO_Errno", Some("2003"));
        set_col(&mut r, "Last_IO_Error", Some("Error connecting to source 'repl@db1.example.com:3306'. This was attempt 3/86400, with a delay of 1 seconds between attempts. Message: Can't connect to MySQL server on 'db1.example.com:3306' (111)"));
        let st = ReplicaStatus::parse(Dialect::MySql84, &[r])
            .unwrap()
            .unwrap();
        assert_eq!(st.io_running, IoRunning::Connecting);
        assert_eq!(st.source_server_id, 0);
        assert_eq!(st.seconds_behind_source, None);
        assert!(matches!(
            st.gtid,
            ReplicaGtid::MySql {
                source_uuid: None,
                ..
            }
        ));
        // Nothing came from the source: what it holds is what it executed.
        let ReplicaGtid::MySql { executed, .. } = &st.gtid else {
            unreachable!()
        };
        assert_eq!(st.received(), GtidState::MySql(executed.clone()));
    }

    #[test]
    fn mysql_replica_status_channels() {
        let rows = [
            mysql_replica_row("Yes", "Yes", "analytics"),
            mysql_replica_row("No", "No", ""),
        ];
        let st = ReplicaStatus::parse(Dialect::MySql80, &rows)
            .unwrap()
            .unwrap();
        assert_eq!(st.io_running, IoRunning::No);
        let only_named = [mysql_replica_row("Yes", "Yes", "analytics")];
        assert_eq!(
            ReplicaStatus::parse(Dialect::MySql80, &only_named),
            Err(ParseError::NoDefaultChannel(vec!["analytics".into()]))
        );
    }

    #[test]
    fn replica_status_rejects_wrong_flavour_and_bad_values() {
        // MariaDB columns read with the MySQL dialect: a missing column, not a silent default.
        assert!(matches!(
            ReplicaStatus::parse(
                Dialect::MySql80,
                &[mariadb_replica_row("Yes", "Yes", Some("0"))]
            ),
            Err(ParseError::MissingColumn(_))
        ));
        let mut r = mariadb_replica_row("Yes", "Yes", Some("0"));
        set_col(&mut r, "Gtid_IO_Pos", Some("0-1"));
        assert!(matches!(
            ReplicaStatus::parse(Dialect::MariaDb, &[r]),
            Err(ParseError::Gtid { .. })
        ));
        let mut r = mariadb_replica_row("Yes", "Maybe", Some("0"));
        assert!(matches!(
            ReplicaStatus::parse(Dialect::MariaDb, &[r.clone()]),
            Err(ParseError::BadValue { .. })
        ));
        set_col(&mut r, "Slave_SQL_Running", Some("Yes"));
        set_col(&mut r, "Seconds_Behind_Master", Some("-3"));
        assert!(matches!(
            ReplicaStatus::parse(Dialect::MariaDb, &[r]),
            Err(ParseError::BadValue { .. })
        ));
        let mut r = mysql_replica_row("Yes", "Yes", "");
        set_col(&mut r, "Auto_Position", Some("yes"));
        assert!(ReplicaStatus::parse(Dialect::MySql84, &[r]).is_err());
    }

    #[test]
    fn binlog_status() {
        // MariaDB 10.11 SHOW MASTER STATUS.
        let m = row(&[
            ("File", Some("bin.000001")),
            ("Position", Some("1098")),
            ("Binlog_Do_DB", Some("")),
            ("Binlog_Ignore_DB", Some("")),
        ]);
        assert_eq!(
            BinlogStatus::parse(&[m]).unwrap(),
            Some(BinlogStatus {
                file: "bin.000001".into(),
                position: 1098
            })
        );
        // MySQL 8.4 SHOW BINARY LOG STATUS adds Executed_Gtid_Set.
        let y = row(&[
            ("File", Some("binlog.000003")),
            ("Position", Some("2341")),
            ("Binlog_Do_DB", Some("")),
            ("Binlog_Ignore_DB", Some("")),
            (
                "Executed_Gtid_Set",
                Some("a8e3b8f2-5c1e-11ee-8c99-0242ac120002:1-7"),
            ),
        ]);
        assert_eq!(BinlogStatus::parse(&[y]).unwrap().unwrap().position, 2341);
        assert_eq!(BinlogStatus::parse(&[]).unwrap(), None);
    }

    #[test]
    fn server_info_row() {
        let r = row(&[
            ("@@version", Some("10.11.19-MariaDB-0+deb12u1-log")),
            ("@@version_comment", Some("Debian 12")),
            ("@@global.server_id", Some("2")),
            ("CONNECTION_ID()", Some("17")),
            (
                "@@session.sql_mode",
                Some("STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_AUTO_CREATE_USER,NO_ENGINE_SUBSTITUTION"),
            ),
        ]);
        let info = ServerInfoRow::parse(&r).unwrap();
        assert_eq!(info.server_id, 2);
        assert_eq!(info.connection_id, 17);
        assert_eq!(info.version_comment, "Debian 12");
        let bad_id = row(&[
            ("a", Some("8.0.36")),
            ("b", Some("")),
            ("c", Some("4294967296")),
            ("d", Some("1")),
            ("e", Some("")),
        ]);
        assert!(ServerInfoRow::parse(&bad_id).is_err());
    }

    #[test]
    fn read_only_rows() {
        let m = row(&[("@@global.read_only", Some("1"))]);
        assert_eq!(
            ReadOnly::parse(Dialect::MariaDb, &m).unwrap(),
            ReadOnly {
                read_only: true,
                super_read_only: None
            }
        );
        assert!(!ReadOnly::parse(Dialect::MariaDb, &m)
            .unwrap()
            .is_fully_read_only());
        let y = row(&[
            ("@@global.read_only", Some("1")),
            ("@@global.super_read_only", Some("1")),
        ]);
        let ro = ReadOnly::parse(Dialect::MySql84, &y).unwrap();
        assert!(ro.is_fully_read_only());
        // The MySQL dialect requires super_read_only.
        assert!(ReadOnly::parse(Dialect::MySql80, &m).is_err());
        let w = row(&[
            ("@@global.read_only", Some("0")),
            ("@@global.super_read_only", Some("0")),
        ]);
        assert_eq!(
            ReadOnly::parse(Dialect::MySql80, &w).unwrap(),
            ReadOnly {
                read_only: false,
                super_read_only: Some(false)
            }
        );
    }

    #[test]
    fn gtid_executed_rows() {
        // A MariaDB replica without log_slave_updates: nothing in its binlog, all in slave_pos.
        let m = row(&[
            ("@@global.gtid_current_pos", Some("0-1-5")),
            ("@@global.gtid_binlog_pos", Some("")),
            ("@@global.gtid_slave_pos", Some("0-1-5")),
        ]);
        assert_eq!(
            parse_gtid_executed(Dialect::MariaDb, &m).unwrap(),
            GtidState::MariaDb(GtidPos::parse("0-1-5").unwrap())
        );
        let p = MariaDbPositions::parse(&m).unwrap();
        assert!(p.binlog_pos.is_empty());
        assert_eq!(p.slave_pos, p.current_pos);
        let y = row(&[(
            "@@global.gtid_executed",
            Some("a8e3b8f2-5c1e-11ee-8c99-0242ac120002:1-7,\nc1f5e3a4-5c1e-11ee-9a3d-0242ac120003:1-2"),
        )]);
        let GtidState::MySql(s) = parse_gtid_executed(Dialect::MySql84, &y).unwrap() else {
            panic!("MySQL parsed as MariaDB");
        };
        assert_eq!(s.count(), 9);
        let bad = row(&[("@@global.gtid_executed", Some("0-1-5"))]);
        assert!(parse_gtid_executed(Dialect::MySql80, &bad).is_err());
    }

    fn nv(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        name_values(
            &pairs
                .iter()
                .map(|(k, v)| row(&[("Variable_name", Some(k)), ("Value", Some(v))]))
                .collect::<Vec<_>>(),
        )
        .unwrap()
    }

    #[test]
    fn apply_settings_of_both_flavours() {
        let m = ApplySettings::parse(&nv(&[
            ("slave_parallel_threads", "4"),
            ("slave_parallel_mode", "optimistic"),
            ("gtid_strict_mode", "ON"),
        ]))
        .unwrap();
        assert_eq!(m.describe(), "4 parallel workers, optimistic");
        assert!(m.ordered && m.gtid_strict);
        let loose = ApplySettings::parse(&nv(&[
            ("slave_parallel_threads", "0"),
            ("slave_parallel_mode", "optimistic"),
            ("gtid_strict_mode", "OFF"),
        ]))
        .unwrap();
        assert_eq!(loose.describe(), "one applier");
        assert!(!loose.gtid_strict);
        let my = ApplySettings::parse(&nv(&[
            ("replica_parallel_workers", "4"),
            ("replica_preserve_commit_order", "ON"),
            ("gtid_mode", "ON"),
            ("enforce_gtid_consistency", "ON"),
        ]))
        .unwrap();
        assert_eq!(my.describe(), "4 parallel workers");
        assert!(my.ordered && my.gtid_strict);
        let unordered = ApplySettings::parse(&nv(&[
            ("replica_parallel_workers", "8"),
            ("replica_preserve_commit_order", "OFF"),
            ("gtid_mode", "ON_PERMISSIVE"),
            ("enforce_gtid_consistency", "ON"),
        ]))
        .unwrap();
        assert_eq!(
            unordered.describe(),
            "8 parallel workers, commit order not kept"
        );
        assert!(!unordered.ordered && !unordered.gtid_strict);
        assert!(ApplySettings::parse(&nv(&[("gtid_mode", "ON")])).is_err());
        assert!(ApplySettings::parse(&nv(&[("slave_parallel_threads", "many")])).is_err());
    }

    #[test]
    fn semi_sync_mariadb() {
        // MariaDB 10.11 source with one semi-sync replica connected, as captured.
        let vars = nv(&[
            ("rpl_semi_sync_master_enabled", "ON"),
            ("rpl_semi_sync_master_timeout", "10000"),
            ("rpl_semi_sync_master_trace_level", "32"),
            ("rpl_semi_sync_master_wait_no_slave", "ON"),
            ("rpl_semi_sync_master_wait_point", "AFTER_COMMIT"),
            ("rpl_semi_sync_slave_delay_master", "OFF"),
            ("rpl_semi_sync_slave_enabled", "OFF"),
            ("rpl_semi_sync_slave_kill_conn_timeout", "5"),
            ("rpl_semi_sync_slave_trace_level", "32"),
        ]);
        let status = nv(&[
            ("Rpl_semi_sync_master_clients", "1"),
            ("Rpl_semi_sync_master_get_ack", "1"),
            ("Rpl_semi_sync_master_net_avg_wait_time", "0"),
            ("Rpl_semi_sync_master_net_wait_time", "0"),
            ("Rpl_semi_sync_master_net_waits", "0"),
            ("Rpl_semi_sync_master_no_times", "0"),
            ("Rpl_semi_sync_master_no_tx", "0"),
            ("Rpl_semi_sync_master_request_ack", "1"),
            ("Rpl_semi_sync_master_status", "ON"),
            ("Rpl_semi_sync_master_timefunc_failures", "0"),
            ("Rpl_semi_sync_master_tx_avg_wait_time", "0"),
            ("Rpl_semi_sync_master_tx_wait_time", "0"),
            ("Rpl_semi_sync_master_tx_waits", "0"),
            ("Rpl_semi_sync_master_wait_pos_backtraverse", "0"),
            ("Rpl_semi_sync_master_wait_sessions", "0"),
            ("Rpl_semi_sync_master_yes_tx", "1"),
            ("Rpl_semi_sync_slave_send_ack", "0"),
            ("Rpl_semi_sync_slave_status", "OFF"),
        ]);
        let st = SemiSyncState::parse(&vars, &status).unwrap();
        assert_eq!(st.source_naming(), Some(SemiSyncNaming::MasterSlave));
        assert_eq!(st.replica_naming(), Some(SemiSyncNaming::MasterSlave));
        assert!(st.source_enabled && st.source_status_on);
        assert!(!st.replica_enabled && !st.replica_status_on);
        assert_eq!((st.clients, st.yes_tx, st.no_tx), (1, 1, 0));
        assert_eq!(st.wait_point, Some(WaitPoint::AfterCommit));
        assert_eq!(st.timeout_ms, Some(10000));
        assert_eq!(st.wait_no_replica, Some(true));
        assert_eq!(st.wait_for_replica_count, None);
    }

    #[test]
    fn semi_sync_mysql80_old_plugins() {
        // MySQL 8.0 with semisync_master.so and semisync_slave.so, replica side.
        let vars = nv(&[
            ("rpl_semi_sync_master_enabled", "OFF"),
            ("rpl_semi_sync_master_timeout", "31536000000"),
            ("rpl_semi_sync_master_trace_level", "32"),
            ("rpl_semi_sync_master_wait_for_slave_count", "1"),
            ("rpl_semi_sync_master_wait_no_slave", "ON"),
            ("rpl_semi_sync_master_wait_point", "AFTER_SYNC"),
            ("rpl_semi_sync_slave_enabled", "ON"),
            ("rpl_semi_sync_slave_trace_level", "32"),
        ]);
        let status = nv(&[
            ("Rpl_semi_sync_master_clients", "0"),
            ("Rpl_semi_sync_master_net_avg_wait_time", "0"),
            ("Rpl_semi_sync_master_no_tx", "0"),
            ("Rpl_semi_sync_master_status", "OFF"),
            ("Rpl_semi_sync_master_yes_tx", "0"),
            ("Rpl_semi_sync_slave_status", "ON"),
        ]);
        let st = SemiSyncState::parse(&vars, &status).unwrap();
        assert!(!st.source_enabled && !st.source_status_on);
        assert!(st.replica_enabled && st.replica_status_on);
        assert_eq!(st.wait_point, Some(WaitPoint::AfterSync));
        assert_eq!(st.timeout_ms, Some(31_536_000_000));
        assert_eq!(st.wait_for_replica_count, Some(1));
    }

    #[test]
    fn semi_sync_mysql84_source_only() {
        // MySQL 8.4 source with only semisync_source.so loaded, after a timeout fell back.
        let vars = nv(&[
            ("rpl_semi_sync_source_enabled", "ON"),
            ("rpl_semi_sync_source_timeout", "10000"),
            ("rpl_semi_sync_source_trace_level", "32"),
            ("rpl_semi_sync_source_wait_for_replica_count", "1"),
            ("rpl_semi_sync_source_wait_no_replica", "ON"),
            ("rpl_semi_sync_source_wait_point", "AFTER_SYNC"),
        ]);
        let status = nv(&[
            ("Rpl_semi_sync_source_clients", "0"),
            ("Rpl_semi_sync_source_net_avg_wait_time", "0"),
            ("Rpl_semi_sync_source_no_times", "1"),
            ("Rpl_semi_sync_source_no_tx", "3"),
            ("Rpl_semi_sync_source_status", "OFF"),
            ("Rpl_semi_sync_source_yes_tx", "120"),
        ]);
        let st = SemiSyncState::parse(&vars, &status).unwrap();
        assert_eq!(st.source_naming(), Some(SemiSyncNaming::SourceReplica));
        assert_eq!(st.replica_naming(), None);
        assert!(st.source_enabled && !st.source_status_on);
        assert_eq!((st.clients, st.yes_tx, st.no_tx), (0, 120, 3));
        assert!(!st.replica_enabled);
    }

    #[test]
    fn semi_sync_no_plugins_and_bad_values() {
        let st = SemiSyncState::parse(&BTreeMap::new(), &BTreeMap::new()).unwrap();
        assert_eq!(st.plugins, SemiSyncPlugins::default());
        assert!(!st.source_enabled && !st.replica_enabled);
        assert_eq!(st.timeout_ms, None);
        let vars = nv(&[
            ("rpl_semi_sync_master_enabled", "ON"),
            ("rpl_semi_sync_master_wait_point", "AFTER_LUNCH"),
        ]);
        assert!(SemiSyncState::parse(&vars, &BTreeMap::new()).is_err());
        let vars = nv(&[("rpl_semi_sync_master_enabled", "MAYBE")]);
        assert!(SemiSyncState::parse(&vars, &BTreeMap::new()).is_err());
    }

    fn pl(
        id: &str,
        user: &str,
        host: &str,
        command: &str,
        state: &str,
        info: Option<&str>,
    ) -> RowMap {
        row(&[
            ("Id", Some(id)),
            ("User", Some(user)),
            ("Host", Some(host)),
            ("db", None),
            ("Command", Some(command)),
            ("Time", Some("1")),
            ("State", Some(state)),
            ("Info", info),
            ("Progress", Some("0.000")),
        ])
    }

    #[test]
    fn processlist_mariadb() {
        // MariaDB 10.11: a replica (system user threads) and a source (Binlog Dump), captured.
        let rows = [
            pl(
                "5",
                "system user",
                "",
                "Slave_IO",
                "Waiting for master to send event",
                None,
            ),
            pl(
                "6",
                "system user",
                "",
                "Slave_SQL",
                "Slave has read all relay log; waiting for more updates",
                None,
            ),
            pl(
                "6",
                "repl",
                "127.0.0.1:35018",
                "Binlog Dump",
                "Master has sent all binlog to slave; waiting for more updates",
                None,
            ),
            pl(
                "7",
                "root",
                "localhost",
                "Query",
                "starting",
                Some("SHOW FULL PROCESSLIST"),
            ),
            pl("9", "app", "10.0.0.5:51234", "Sleep", "", None),
            pl(
                "10",
                "app",
                "10.0.0.5:51236",
                "Query",
                "Waiting for semi-sync ACK from slave",
                Some("COMMIT"),
            ),
            pl(
                "11",
                "unauthenticated user",
                "10.0.0.9:40000",
                "Connect",
                "login",
                None,
            ),
            pl(
                "12",
                "event_scheduler",
                "localhost",
                "Daemon",
                "Waiting on empty queue",
                None,
            ),
        ];
        let clients = client_threads(&rows, 7).unwrap();
        let ids: Vec<u64> = clients.iter().map(|c| c.id).collect();
        assert_eq!(ids, [9, 10, 11]);
        assert_eq!(clients[1].info.as_deref(), Some("COMMIT"));
        assert_eq!(clients[0].db, None);
    }

    #[test]
    fn processlist_mysql() {
        // MySQL 8.0 replica: applier threads run as "system user" with Connect/Query commands.
        let rows = [
            pl(
                "5",
                "event_scheduler",
                "localhost",
                "Daemon",
                "Waiting on empty queue",
                None,
            ),
            pl(
                "12",
                "system user",
                "connecting host",
                "Connect",
                "Waiting for source to send event",
                None,
            ),
            pl(
                "13",
                "system user",
                "",
                "Query",
                "Replica has read all relay log; waiting for more updates",
                None,
            ),
            pl(
                "14",
                "system user",
                "",
                "Connect",
                "Waiting for an event from Coordinator",
                None,
            ),
            pl(
                "21",
                "repl",
                "10.0.0.3:40312",
                "Binlog Dump GTID",
                "Source has sent all binlog to replica; waiting for more updates",
                None,
            ),
            pl(
                "30",
                "agent",
                "10.0.0.2:5555",
                "Query",
                "init",
                Some("SHOW FULL PROCESSLIST"),
            ),
            pl(
                "31",
                "app",
                "10.0.0.5:51234",
                "Query",
                "executing",
                Some("SELECT SLEEP(100)"),
            ),
        ];
        let ids: Vec<u64> = client_threads(&rows, 30)
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ids, [31]);
        // Our own connection is only excluded by id.
        let ids: Vec<u64> = client_threads(&rows, 0)
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ids, [30, 31]);
    }

    #[test]
    fn processlist_bad_row() {
        let mut r = pl("x", "app", "h", "Sleep", "", None);
        assert!(client_threads(std::slice::from_ref(&r), 0).is_err());
        set_col(&mut r, "Id", Some("3"));
        set_col(&mut r, "Time", None);
        assert_eq!(client_threads(&[r], 0).unwrap()[0].time, None);
    }

    #[test]
    fn row_map_lookup() {
        let r = row(&[("Variable_name", Some("x")), ("Value", None)]);
        assert_eq!(r.get("variable_name"), Some(Some("x")));
        assert_eq!(r.get("Value"), Some(None));
        assert_eq!(r.get("nope"), None);
        assert_eq!(r.at(1), Some(None));
        assert_eq!(r.len(), 2);
        assert!(!r.is_empty());
    }
}
