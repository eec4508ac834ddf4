//! The server flavours the harness runs: MariaDB 10.11 (Debian's package),
//! MariaDB 11.4 and MySQL 9.7 (both unpacked into the setup cache by
//! `scripts/setup.sh`, not installed).
//!
//! A test picks one with [`crate::MariaDbOptions::flavour`]; otherwise
//! `SUCCESSOVER_FLAVOUR` decides (`mariadb-10.11`, the default,
//! `mariadb-11.4` or `mysql-9.7`), so one test binary runs on another
//! flavour without change.
//!
//! Tests and the harness write their own SQL in MariaDB's vocabulary
//! (`rpl_semi_sync_master_enabled`, `STOP SLAVE`, `Slave_IO_Running`, …).
//! [`Flavour::sql`], [`Flavour::var`] and the helpers in [`crate::mariadb`]
//! turn it into MySQL's, so one assertion states one fact on every flavour.
//! What has no one-to-one counterpart (GTID positions and sets) has its own
//! helpers there.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::bins;

/// The environment variable that picks the flavour of servers whose test did
/// not choose one.
pub const FLAVOUR_ENV: &str = "SUCCESSOVER_FLAVOUR";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavour {
    MariaDb1011,
    MariaDb114,
    MySql97,
}

impl Flavour {
    pub const ALL: [Flavour; 3] = [Flavour::MariaDb1011, Flavour::MariaDb114, Flavour::MySql97];

    /// `SUCCESSOVER_FLAVOUR`, or MariaDB 10.11 when unset. An unknown value
    /// panics: a typo must not quietly test the default flavour instead.
    pub fn from_env() -> Flavour {
        static F: OnceLock<Flavour> = OnceLock::new();
        *F.get_or_init(|| match std::env::var(FLAVOUR_ENV) {
            Err(_) => Flavour::MariaDb1011,
            Ok(v) if v.is_empty() => Flavour::MariaDb1011,
            Ok(v) => Flavour::parse(&v).unwrap_or_else(|| {
                panic!(
                    "{FLAVOUR_ENV}={v:?} is not a flavour; use one of {}",
                    Flavour::ALL.map(Flavour::name).join(", ")
                )
            }),
        })
    }

    pub fn parse(s: &str) -> Option<Flavour> {
        Flavour::ALL.into_iter().find(|f| f.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            Flavour::MariaDb1011 => "mariadb-10.11",
            Flavour::MariaDb114 => "mariadb-11.4",
            Flavour::MySql97 => "mysql-9.7",
        }
    }

    pub fn is_mysql(self) -> bool {
        self == Flavour::MySql97
    }

    /// The cache directory `scripts/setup.sh` unpacks this flavour into
    /// (`None` for the system's MariaDB 10.11).
    fn unpacked_root(self) -> Option<PathBuf> {
        match self {
            Flavour::MariaDb1011 => None,
            Flavour::MariaDb114 | Flavour::MySql97 => {
                Some(bins::cache_dir().join("flavours").join(self.name()))
            }
        }
    }

    /// Where the server's files live: `/usr` for MariaDB 10.11, else the
    /// unpacked tree. Panics naming `scripts/setup.sh` when it is missing.
    pub fn root(self) -> PathBuf {
        match self.unpacked_root() {
            None => PathBuf::from("/usr"),
            Some(root) => {
                let server = self.server_in(&root);
                assert!(
                    server.is_file(),
                    "{FLAVOUR_ENV}={}: {} is missing; run scripts/setup.sh, which unpacks \
                     MariaDB 11.4 and MySQL 9.7 into {}",
                    self.name(),
                    server.display(),
                    bins::cache_dir().join("flavours").display()
                );
                root
            }
        }
    }

    fn server_in(self, root: &Path) -> PathBuf {
        match self {
            Flavour::MariaDb1011 => bins::mariadbd().to_path_buf(),
            Flavour::MariaDb114 => root.join("bin/mariadbd"),
            Flavour::MySql97 => root.join("usr/sbin/mysqld"),
        }
    }

    /// The server binary.
    pub fn server(self) -> PathBuf {
        self.server_in(&self.root())
    }

    /// A command that runs `program` of this flavour. MySQL 9.7 comes from
    /// Debian sid and needs sid's glibc, so it runs through sid's loader
    /// with sid's libraries first; the machine's are left alone.
    pub fn command(self, program: &Path) -> Command {
        match self {
            Flavour::MySql97 => {
                let mut cmd = Command::new(self.loader());
                cmd.args(self.loader_args()).arg(program);
                cmd
            }
            _ => Command::new(program),
        }
    }

    /// [`Flavour::command`] split into a program and its leading arguments,
    /// for wrappers such as `ip netns exec`.
    pub fn loader(self) -> PathBuf {
        match self {
            Flavour::MySql97 => self
                .root()
                .join("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
            _ => self.server(),
        }
    }

    pub fn loader_args(self) -> Vec<String> {
        match self {
            Flavour::MySql97 => {
                let lib = self.root().join("usr/lib/x86_64-linux-gnu");
                vec![
                    "--library-path".into(),
                    format!("{}:/lib/x86_64-linux-gnu", lib.display()),
                ]
            }
            _ => Vec::new(),
        }
    }

    /// The flags that tell an unpacked server where its own files are.
    pub fn location_args(self, scratch: &Path) -> Vec<String> {
        match self {
            Flavour::MariaDb1011 => Vec::new(),
            Flavour::MariaDb114 => {
                let root = self.root();
                vec![
                    format!("--basedir={}", root.display()),
                    format!("--lc-messages-dir={}", root.join("share").display()),
                ]
            }
            Flavour::MySql97 => {
                let root = self.root();
                vec![
                    format!("--basedir={}", root.join("usr").display()),
                    format!(
                        "--lc-messages-dir={}",
                        root.join("usr/share/mysql").display()
                    ),
                    format!(
                        "--plugin-dir={}",
                        root.join("usr/lib/mysql/plugin").display()
                    ),
                    // Its compiled-in default is /var/lib/mysql-files, which
                    // must exist; a test server gets its own.
                    format!("--secure-file-priv={}", scratch.display()),
                ]
            }
        }
    }

    /// A statement written in MariaDB's vocabulary, in this flavour's.
    pub fn sql(self, mariadb: &str) -> String {
        if !self.is_mysql() {
            return mariadb.to_owned();
        }
        let mut out = mariadb.to_owned();
        for (from, to) in MYSQL_WORDS {
            out = replace_ignoring_case(&out, from, to);
        }
        out
    }

    /// A variable or status name written in MariaDB's vocabulary, in this
    /// flavour's.
    pub fn var(self, mariadb: &str) -> String {
        if !self.is_mysql() {
            return mariadb.to_owned();
        }
        match mariadb.to_ascii_lowercase().as_str() {
            // MySQL has one set for all three: what the server executed,
            // its own writes and replicated ones alike.
            "gtid_binlog_pos" | "gtid_current_pos" | "gtid_binlog_state" => {
                "gtid_executed".to_owned()
            }
            _ => self.sql(mariadb),
        }
    }
}

/// MariaDB words and their MySQL 8.4+ replacements, longest first where one
/// contains another.
const MYSQL_WORDS: &[(&str, &str)] = &[
    (
        "rpl_semi_sync_master_wait_no_slave",
        "rpl_semi_sync_source_wait_no_replica",
    ),
    ("rpl_semi_sync_master_", "rpl_semi_sync_source_"),
    ("rpl_semi_sync_slave_", "rpl_semi_sync_replica_"),
    ("STOP SLAVE", "STOP REPLICA"),
    ("START SLAVE", "START REPLICA"),
    ("RESET SLAVE", "RESET REPLICA"),
    ("SHOW SLAVE STATUS", "SHOW REPLICA STATUS"),
    ("CHANGE MASTER TO", "CHANGE REPLICATION SOURCE TO"),
    ("MASTER_DELAY", "SOURCE_DELAY"),
];

fn replace_ignoring_case(haystack: &str, from: &str, to: &str) -> String {
    let lower = haystack.to_ascii_lowercase();
    let needle = from.to_ascii_lowercase();
    let mut out = String::with_capacity(haystack.len());
    let mut last = 0;
    for (i, _) in lower.match_indices(&needle) {
        out.push_str(&haystack[last..i]);
        out.push_str(to);
        last = i + from.len();
    }
    out.push_str(&haystack[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mariadb_statements_in_mysql_words() {
        let f = Flavour::MySql97;
        assert_eq!(
            f.sql("SET GLOBAL rpl_semi_sync_master_enabled = 1; STOP SLAVE IO_THREAD"),
            "SET GLOBAL rpl_semi_sync_source_enabled = 1; STOP REPLICA IO_THREAD"
        );
        assert_eq!(
            f.sql("SET GLOBAL rpl_semi_sync_master_wait_no_slave = OFF"),
            "SET GLOBAL rpl_semi_sync_source_wait_no_replica = OFF"
        );
        assert_eq!(
            f.sql("stop slave; CHANGE MASTER TO MASTER_DELAY = 30; start slave"),
            "STOP REPLICA; CHANGE REPLICATION SOURCE TO SOURCE_DELAY = 30; START REPLICA"
        );
        assert_eq!(
            f.var("Rpl_semi_sync_slave_status"),
            "rpl_semi_sync_replica_status"
        );
        assert_eq!(f.var("gtid_current_pos"), "gtid_executed");
        assert_eq!(f.var("read_only"), "read_only");
        for f in [Flavour::MariaDb1011, Flavour::MariaDb114] {
            assert_eq!(f.sql("STOP SLAVE"), "STOP SLAVE");
            assert_eq!(f.var("gtid_current_pos"), "gtid_current_pos");
        }
    }

    #[test]
    fn names_round_trip() {
        for f in Flavour::ALL {
            assert_eq!(Flavour::parse(f.name()), Some(f));
        }
        assert_eq!(Flavour::parse("mysql-8.0"), None);
    }
}
