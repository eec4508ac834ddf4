//! Which server we talk to, from `SELECT @@version, @@version_comment`.
//!
//! Three dialects cover the supported servers:
//!
//! * **MariaDB ≥ 10.3.3**: semi-sync is built into the server from 10.3.3 (earlier it is a plugin
//!   with different loading rules), and everything else we use (`MASTER_GTID_WAIT`,
//!   `Gtid_IO_Pos`, `MASTER_USE_GTID`) is older. Only 10.11 is tested against a real server.
//! * **MySQL 8.0.23 – 8.1.x** ([`Flavor::MySql80`]): 8.0.22 brought `SHOW REPLICA STATUS` with the
//!   `Replica_*`/`Source_*` columns and 8.0.23 `CHANGE REPLICATION SOURCE TO`; older servers only
//!   speak the `MASTER`/`SLAVE` syntax, which 8.4 removed, and supporting both is not worth it.
//!   8.1 still has `SHOW MASTER STATUS` and no statement of 8.4 that we need, so it is 8.0 here.
//! * **MySQL ≥ 8.2** ([`Flavor::MySql84`]): `SHOW BINARY LOG STATUS` exists from 8.2.0 and is the
//!   only form in 8.4, so the 8.2 and 8.3 innovation releases already use 8.4's statements, as do
//!   9.x innovation releases, which kept 8.4's replication syntax.
//!
//! Semi-sync naming (`rpl_semi_sync_master_*` or `rpl_semi_sync_source_*`) is not decided by the
//! flavour: MySQL 8.0.26+ loads either plugin, so it is detected from the variables that exist.

use std::fmt;

/// `major.minor.patch` from the start of `@@version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u16,
    pub minor: u16,
    pub patch: u16,
}

impl Version {
    pub const fn new(major: u16, minor: u16, patch: u16) -> Self {
        Version {
            major,
            minor,
            patch,
        }
    }

    /// Parses the leading `X.Y.Z` of strings like `10.11.19-MariaDB-0+deb12u1-log`,
    /// `8.0.36-28` (Percona) or `8.4.2`.
    pub fn parse_prefix(s: &str) -> Option<Version> {
        let end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let mut parts = s[..end].split('.');
        let mut num = || -> Option<u16> {
            let p = parts.next()?;
            if p.is_empty() {
                return None;
            }
            p.parse().ok()
        };
        Some(Version::new(num()?, num()?, num()?))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The server flavour, which picks the dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavor {
    MariaDb {
        version: Version,
    },
    /// MySQL 8.0.23 up to 8.1.x.
    MySql80 {
        version: Version,
    },
    /// MySQL 8.2 and later (8.4 LTS, the 8.2/8.3 and 9.x innovation releases).
    MySql84 {
        version: Version,
    },
}

pub const MIN_MARIADB: Version = Version::new(10, 3, 3);
pub const MIN_MYSQL: Version = Version::new(8, 0, 23);
const FIRST_MYSQL84_DIALECT: Version = Version::new(8, 2, 0);

/// A server we refuse to manage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlavorError {
    #[error("cannot read a version from @@version {version:?}")]
    Unparseable { version: String },
    #[error("MySQL {version} is too old: successover needs MySQL {MIN_MYSQL} or later (CHANGE REPLICATION SOURCE TO, SHOW REPLICA STATUS)")]
    MySqlTooOld { version: Version },
    #[error("MySQL {version} is not a version successover knows (8.0.23 to 9.x)")]
    MySqlUnknown { version: Version },
    #[error("MariaDB {version} is too old: successover needs MariaDB {MIN_MARIADB} or later (built-in semi-sync)")]
    MariaDbTooOld { version: Version },
}

impl Flavor {
    /// Classifies a server from `@@version` and `@@version_comment`.
    pub fn detect(version: &str, version_comment: &str) -> Result<Flavor, FlavorError> {
        let is_mariadb = version.to_ascii_lowercase().contains("mariadb")
            || version_comment.to_ascii_lowercase().contains("mariadb");
        // MariaDB 10.x put "5.5.5-" in front of its handshake version so old clients would not
        // treat it as MySQL 10; some proxies pass that string on as @@version.
        let v_str = if is_mariadb {
            version.strip_prefix("5.5.5-").unwrap_or(version)
        } else {
            version
        };
        let v = Version::parse_prefix(v_str).ok_or_else(|| FlavorError::Unparseable {
            version: version.chars().take(100).collect(),
        })?;
        if is_mariadb {
            if v < MIN_MARIADB {
                return Err(FlavorError::MariaDbTooOld { version: v });
            }
            return Ok(Flavor::MariaDb { version: v });
        }
        if v < MIN_MYSQL {
            return Err(FlavorError::MySqlTooOld { version: v });
        }
        if v.major > 9 {
            return Err(FlavorError::MySqlUnknown { version: v });
        }
        if v < FIRST_MYSQL84_DIALECT {
            Ok(Flavor::MySql80 { version: v })
        } else {
            Ok(Flavor::MySql84 { version: v })
        }
    }

    pub fn version(&self) -> Version {
        match *self {
            Flavor::MariaDb { version }
            | Flavor::MySql80 { version }
            | Flavor::MySql84 { version } => version,
        }
    }

    pub fn is_mariadb(&self) -> bool {
        matches!(self, Flavor::MariaDb { .. })
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Flavor::MariaDb { version } => write!(f, "MariaDB {version}"),
            Flavor::MySql80 { version } | Flavor::MySql84 { version } => {
                write!(f, "MySQL {version}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: u16, b: u16, c: u16) -> Version {
        Version::new(a, b, c)
    }

    #[test]
    fn version_prefix() {
        assert_eq!(
            Version::parse_prefix("10.11.19-MariaDB-0+deb12u1-log"),
            Some(v(10, 11, 19))
        );
        assert_eq!(Version::parse_prefix("8.0.36-28"), Some(v(8, 0, 36)));
        assert_eq!(Version::parse_prefix("8.4.2"), Some(v(8, 4, 2)));
        assert_eq!(Version::parse_prefix("8.4"), None);
        assert_eq!(Version::parse_prefix("x8.4.2"), None);
        assert_eq!(Version::parse_prefix("8..4.2"), None);
        assert_eq!(Version::parse_prefix("99999.1.1"), None);
    }

    #[test]
    fn detects_real_version_strings() {
        let cases = [
            // MariaDB 10.11 from Debian 12, with --log-bin (the "-log" suffix).
            (
                "10.11.19-MariaDB-0+deb12u1-log",
                "Debian 12",
                Flavor::MariaDb {
                    version: v(10, 11, 19),
                },
            ),
            (
                "11.4.3-MariaDB",
                "mariadb.org binary distribution",
                Flavor::MariaDb {
                    version: v(11, 4, 3),
                },
            ),
            (
                "5.5.5-10.6.18-MariaDB",
                "MariaDB Server",
                Flavor::MariaDb {
                    version: v(10, 6, 18),
                },
            ),
            (
                "8.0.23",
                "MySQL Community Server - GPL",
                Flavor::MySql80 {
                    version: v(8, 0, 23),
                },
            ),
            (
                "8.0.36-28",
                "Percona Server (GPL), Release 28, Revision 47601f19",
                Flavor::MySql80 {
                    version: v(8, 0, 36),
                },
            ),
            (
                "8.1.0",
                "MySQL Community Server - GPL",
                Flavor::MySql80 {
                    version: v(8, 1, 0),
                },
            ),
            (
                "8.2.0",
                "MySQL Community Server - GPL",
                Flavor::MySql84 {
                    version: v(8, 2, 0),
                },
            ),
            (
                "8.4.2",
                "MySQL Community Server - GPL",
                Flavor::MySql84 {
                    version: v(8, 4, 2),
                },
            ),
            (
                "9.1.0-commercial",
                "MySQL Enterprise Server - Commercial",
                Flavor::MySql84 {
                    version: v(9, 1, 0),
                },
            ),
        ];
        for (version, comment, want) in cases {
            assert_eq!(Flavor::detect(version, comment), Ok(want), "{version}");
        }
    }

    #[test]
    fn refuses_old_and_unknown_servers() {
        assert_eq!(
            Flavor::detect("8.0.22", "MySQL Community Server - GPL"),
            Err(FlavorError::MySqlTooOld {
                version: v(8, 0, 22)
            })
        );
        assert!(matches!(
            Flavor::detect("5.7.44-log", "MySQL Community Server (GPL)"),
            Err(FlavorError::MySqlTooOld { .. })
        ));
        assert!(matches!(
            Flavor::detect("10.2.44-MariaDB", ""),
            Err(FlavorError::MariaDbTooOld { .. })
        ));
        assert!(matches!(
            Flavor::detect("10.3.2-MariaDB", ""),
            Err(FlavorError::MariaDbTooOld { .. })
        ));
        assert!(matches!(
            Flavor::detect("10.0.1", "MySQL"),
            Err(FlavorError::MySqlUnknown { .. })
        ));
        assert!(matches!(
            Flavor::detect("garbage", ""),
            Err(FlavorError::Unparseable { .. })
        ));
        let msg = Flavor::detect("8.0.22", "").unwrap_err().to_string();
        assert!(msg.contains("8.0.23"), "{msg}");
    }

    #[test]
    fn display() {
        let f = Flavor::detect("10.11.19-MariaDB-0+deb12u1-log", "Debian 12").unwrap();
        assert_eq!(f.to_string(), "MariaDB 10.11.19");
        assert!(f.is_mariadb());
        assert_eq!(f.version(), v(10, 11, 19));
    }
}
