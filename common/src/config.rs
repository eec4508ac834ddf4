//! The config vocabulary every successover daemon shares: the `[consul]`,
//! `[kv]` and `[metrics]` sections, duration syntax ("250ms", "1s", "5m"),
//! and one error type.
//!
//! A daemon's config is read in two stages. Serde fills a raw struct of
//! optional values (the file as written); the daemon's `validate` turns it
//! into the config the program uses and reports *every* problem at once:
//! unknown keys, keys of an older vocabulary (with the key that replaced
//! them), missing and invalid values. An operator fixes the file in one
//! pass, and a rollout fails on its first host with the whole list.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::consul::{normalize_addr, ConsulConfig, Token};
use crate::contract::{Keys, DEFAULT_PREFIX};

/// Looks up an environment variable. Validation takes one instead of
/// reading the process environment, so its rules are testable.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment as validation sees it: a variable set to the
/// empty string counts as unset, as in Consul's own CLI.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Everything wrong with one config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "config file {} has {} problem{}:{}",
        .path.display(),
        .problems.len(),
        if .problems.len() == 1 { "" } else { "s" },
        List(.problems)
    )]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The problems found, empty when the file could not be read.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

struct List<'a>(&'a [Problem]);

impl fmt::Display for List<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in self.0 {
            // A TOML syntax error spans several lines; keep them under
            // their bullet.
            write!(
                f,
                "\n  - {}",
                p.to_string().trim_end().replace('\n', "\n    ")
            )?;
        }
        Ok(())
    }
}

/// One thing wrong with one key. `key` is the dotted path in the file
/// (`timing.tick`), or the environment variable a value came from.
#[derive(Debug)]
pub struct Problem {
    pub key: String,
    pub kind: ProblemKind,
}

#[derive(Debug)]
pub enum ProblemKind {
    /// The file does not parse, or a value has the wrong TOML type; the
    /// parser's message names the line.
    Syntax(toml::de::Error),
    Unknown,
    /// A key of an older vocabulary; `by` is the key and value to write
    /// instead, e.g. `timing.tick = "300ms"`.
    Replaced {
        by: String,
    },
    Missing,
    /// Neither this key nor its alternative (named here) is set.
    MissingEither(&'static str),
    /// The value does not have the expected shape.
    Expected(&'static str),
    /// Not a duration at all.
    Duration(humantime::DurationError),
    /// A duration outside what the setting allows.
    OutOfRange {
        min: Duration,
        max: Duration,
    },
    /// Two settings contradict each other.
    Conflict(&'static str),
    /// A file or variable the value names cannot be used.
    Unusable(Box<dyn std::error::Error + Send + Sync>),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = &self.key;
        match &self.kind {
            ProblemKind::Syntax(e) => write!(f, "{e}"),
            ProblemKind::Unknown => write!(f, "`{key}` is not a known key"),
            ProblemKind::Replaced { by } => write!(f, "`{key}` was replaced by `{by}`"),
            ProblemKind::Missing => write!(f, "`{key}` is required"),
            ProblemKind::MissingEither(other) => write!(f, "`{key}` or `{other}` is required"),
            ProblemKind::Expected(what) => write!(f, "`{key}`: expected {what}"),
            ProblemKind::Duration(e) => write!(
                f,
                "`{key}`: expected a duration like \"250ms\", \"5s\" or \"2m\" ({e})"
            ),
            ProblemKind::OutOfRange { min, max } => write!(
                f,
                "`{key}`: must be from {} to {}",
                humantime::format_duration(*min),
                humantime::format_duration(*max)
            ),
            ProblemKind::Conflict(what) => write!(f, "`{key}`: {what}"),
            ProblemKind::Unusable(e) => {
                // Inline, whole chain: a problem is printed as one line of
                // a list, never walked as an error chain.
                write!(f, "`{key}`: {e}")?;
                let mut source = e.source();
                while let Some(s) = source {
                    write!(f, ": {s}")?;
                    source = s.source();
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Problem {}

/// Collects problems while a daemon validates its raw config.
#[derive(Debug, Default)]
pub struct Problems(Vec<Problem>);

impl Problems {
    pub fn new() -> Self {
        Problems::default()
    }

    pub fn push(&mut self, key: impl Into<String>, kind: ProblemKind) {
        self.0.push(Problem {
            key: key.into(),
            kind,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `value`, or a "required" problem and `T::default()` so validation
    /// can go on to the next key.
    pub fn required<T: Default>(&mut self, key: &str, value: Option<T>) -> T {
        value.unwrap_or_else(|| {
            self.push(key, ProblemKind::Missing);
            T::default()
        })
    }

    /// A duration setting: absent means `default`; present must parse and
    /// lie within `min..=max`.
    pub fn duration(
        &mut self,
        key: &str,
        value: Option<&str>,
        default: Duration,
        (min, max): (Duration, Duration),
    ) -> Duration {
        let Some(text) = value else {
            return default;
        };
        match parse_duration(text) {
            Ok(d) if d >= min && d <= max => d,
            Ok(_) => {
                self.push(key, ProblemKind::OutOfRange { min, max });
                default
            }
            Err(e) => {
                self.push(key, ProblemKind::Duration(e));
                default
            }
        }
    }

    /// `ok` when nothing was found, every problem otherwise.
    pub fn finish<T>(self, ok: T) -> Result<T, Vec<Problem>> {
        if self.0.is_empty() {
            Ok(ok)
        } else {
            Err(self.0)
        }
    }
}

/// The one duration syntax of every config: humantime's ("250ms", "5s",
/// "2m", "1h 30m"); a bare "0" is zero.
pub fn parse_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text.trim())
}

/// How a daemon's older key maps onto the current vocabulary.
#[derive(Debug, Clone, Copy)]
pub struct Replaced {
    /// Dotted path of the old key.
    pub old: &'static str,
    /// Dotted path of the key to write instead.
    pub new: &'static str,
    pub unit: OldUnit,
}

/// What the old key's value was, so the message can show the new value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldUnit {
    /// Same value, new place.
    Same,
    /// An integer of milliseconds, now a duration string.
    Millis,
    /// An integer of seconds, now a duration string.
    Secs,
}

/// Keys of the shared sections that an older vocabulary spelled
/// differently.
pub const SHARED_REPLACED: &[Replaced] = &[Replaced {
    old: "consul.addr",
    new: "consul.address",
    unit: OldUnit::Same,
}];

/// Parses a daemon's config text into its raw struct `R` and validates
/// it. Unknown and replaced keys are problems reported together with
/// whatever `validate` finds, so one run lists everything.
pub fn from_str<R, C>(
    text: &str,
    replaced: &[Replaced],
    validate: impl FnOnce(R) -> Result<C, Vec<Problem>>,
) -> Result<C, Vec<Problem>>
where
    R: DeserializeOwned,
{
    let mut problems = Vec::new();
    let mut ignored = Vec::new();
    let parsed: Result<R, toml::de::Error> =
        serde_ignored::deserialize(toml::Deserializer::new(text), |path| {
            ignored.push(path.to_string())
        });
    if !ignored.is_empty() {
        // Parses whenever the typed pass got far enough to ignore keys.
        let table: toml::Table = toml::from_str(text).unwrap_or_default();
        for key in ignored {
            let old = SHARED_REPLACED
                .iter()
                .chain(replaced)
                .find(|r| r.old == key);
            let kind = match old {
                Some(r) => ProblemKind::Replaced {
                    by: replacement(r, lookup(&table, r.old)),
                },
                None => ProblemKind::Unknown,
            };
            problems.push(Problem { key, kind });
        }
    }
    match parsed {
        Ok(raw) => match validate(raw) {
            Ok(cfg) if problems.is_empty() => return Ok(cfg),
            Ok(_) => {}
            Err(found) => problems.extend(found),
        },
        Err(e) => problems.push(Problem {
            key: String::new(),
            kind: ProblemKind::Syntax(e),
        }),
    }
    Err(problems)
}

fn lookup<'a>(table: &'a toml::Table, dotted: &str) -> Option<&'a toml::Value> {
    let mut parts = dotted.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

/// `timing.tick = "300ms"` for `timing.tick_ms = 300`.
fn replacement(r: &Replaced, old: Option<&toml::Value>) -> String {
    let as_duration = |d: Duration| format!("{} = \"{}\"", r.new, humantime::format_duration(d));
    match (r.unit, old) {
        (OldUnit::Same, Some(v)) => format!("{} = {v}", r.new),
        (OldUnit::Millis, Some(toml::Value::Integer(n))) if *n >= 0 => {
            as_duration(Duration::from_millis(*n as u64))
        }
        (OldUnit::Secs, Some(toml::Value::Integer(n))) if *n >= 0 => {
            as_duration(Duration::from_secs(*n as u64))
        }
        (OldUnit::Same, _) => r.new.to_owned(),
        _ => format!("{} = \"<duration, e.g. 1s>\"", r.new),
    }
}

/// `[consul]`: the same keys in every daemon. Each key left out falls back
/// to the environment variable Consul's own CLI reads, so a host's existing
/// Consul setup works unchanged; a key set here wins over its variable.
///
/// | key | variable |
/// |---|---|
/// | `address` | `CONSUL_HTTP_ADDR` (+ `CONSUL_HTTP_SSL`) |
/// | `token_file` | `CONSUL_HTTP_TOKEN`, `CONSUL_HTTP_TOKEN_FILE` |
/// | `ca_file` | `CONSUL_CACERT` |
/// | `client_cert`, `client_key` | `CONSUL_CLIENT_CERT`, `CONSUL_CLIENT_KEY` |
/// | `datacenter` | `CONSUL_DATACENTER` |
///
/// The token itself never goes in a config file, so a config can be
/// shown whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RawConsul {
    pub address: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub datacenter: Option<String>,
}

impl RawConsul {
    pub fn validate(self, env: Env<'_>, p: &mut Problems) -> ConsulConfig {
        let mut cfg = ConsulConfig::default();
        let ssl = env("CONSUL_HTTP_SSL")
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"));
        let address = match self.address {
            Some(a) => Some(("consul.address", a)),
            None => env("CONSUL_HTTP_ADDR").map(|a| ("CONSUL_HTTP_ADDR", a)),
        };
        match address {
            Some((key, a)) => match checked_addr(&a, ssl) {
                Some(addr) => cfg.addr = addr,
                None => p.push(
                    key,
                    ProblemKind::Expected("host:port or an http:// or https:// URL"),
                ),
            },
            None if ssl => cfg.addr = "https://127.0.0.1:8501".to_owned(),
            None => {}
        }
        let token = match self.token_file {
            Some(path) => Some(("consul.token_file", Token::from_file(&path))),
            None => match (env("CONSUL_HTTP_TOKEN"), env("CONSUL_HTTP_TOKEN_FILE")) {
                (Some(t), _) => Some(("CONSUL_HTTP_TOKEN", Ok(Token::new(t.trim())))),
                (None, Some(path)) => {
                    Some(("CONSUL_HTTP_TOKEN_FILE", Token::from_file(Path::new(&path))))
                }
                (None, None) => None,
            },
        };
        match token {
            Some((_, Ok(t))) => cfg.token = Some(t),
            Some((key, Err(e))) => p.push(key, ProblemKind::Unusable(Box::new(e))),
            None => {}
        }
        let path = |v: Option<PathBuf>, var: &str| v.or_else(|| env(var).map(PathBuf::from));
        cfg.tls.ca_file = path(self.ca_file, "CONSUL_CACERT");
        cfg.tls.client_cert = path(self.client_cert, "CONSUL_CLIENT_CERT");
        cfg.tls.client_key = path(self.client_key, "CONSUL_CLIENT_KEY");
        if cfg.tls.client_cert.is_some() != cfg.tls.client_key.is_some() {
            p.push(
                "consul.client_cert",
                ProblemKind::Conflict(
                    "client_cert and client_key go together (here or as CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY)",
                ),
            );
        }
        let datacenter = match self.datacenter {
            Some(dc) => Some(("consul.datacenter", dc)),
            None => env("CONSUL_DATACENTER").map(|dc| ("CONSUL_DATACENTER", dc)),
        };
        if let Some((key, dc)) = datacenter {
            let ok = !dc.is_empty()
                && dc
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if ok {
                cfg.datacenter = Some(dc);
            } else {
                p.push(
                    key,
                    ProblemKind::Expected("a datacenter name of [A-Za-z0-9_.-]"),
                );
            }
        }
        cfg
    }
}

/// `host:port` gets a scheme the way Consul's CLI gives it one; anything
/// that names another scheme (`unix://`) is not for this client.
fn checked_addr(addr: &str, ssl: bool) -> Option<String> {
    let addr = addr.trim();
    if addr.contains("://") && !(addr.starts_with("http://") || addr.starts_with("https://")) {
        return None;
    }
    let addr = normalize_addr(addr, ssl);
    let url = url::Url::parse(&addr).ok()?;
    (url.host().is_some() && url.path() == "/" && url.query().is_none()).then_some(addr)
}

/// `[kv]`: where under Consul's KV the contract lives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RawKv {
    pub prefix: Option<String>,
}

impl RawKv {
    pub fn validate(self, p: &mut Problems) -> Keys {
        match Keys::new(self.prefix.as_deref().unwrap_or(DEFAULT_PREFIX)) {
            Ok(k) => k,
            Err(_) => {
                p.push(
                    "kv.prefix",
                    ProblemKind::Expected("path segments of [A-Za-z0-9_.-] like \"mysql/\""),
                );
                Keys::default()
            }
        }
    }
}

/// `[metrics]`: where `/metrics` is served; absent or "" = nowhere.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RawMetrics {
    pub listen: Option<String>,
}

impl RawMetrics {
    pub fn validate(self, p: &mut Problems) -> Option<SocketAddr> {
        match self.listen.as_deref() {
            None | Some("") => None,
            Some(s) => match s.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    p.push(
                        "metrics.listen",
                        ProblemKind::Expected(
                            "an address like \"127.0.0.1:9105\" or \"[::]:9105\"",
                        ),
                    );
                    None
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Debug, Default, Deserialize)]
    struct Raw {
        #[serde(default)]
        consul: RawConsul,
        #[serde(default)]
        kv: RawKv,
        #[serde(default)]
        metrics: RawMetrics,
        wait: Option<String>,
    }

    const OLD: &[Replaced] = &[
        Replaced {
            old: "wait_ms",
            new: "wait",
            unit: OldUnit::Millis,
        },
        Replaced {
            old: "wait_s",
            new: "wait",
            unit: OldUnit::Secs,
        },
        Replaced {
            old: "prefix",
            new: "kv.prefix",
            unit: OldUnit::Same,
        },
    ];

    fn check(text: &str, vars: &[(&str, &str)]) -> Result<ConsulConfig, Vec<String>> {
        let env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = |name: &str| env.get(name).cloned();
        from_str(text, OLD, |raw: Raw| {
            let mut p = Problems::new();
            let consul = raw.consul.validate(&env, &mut p);
            raw.kv.validate(&mut p);
            raw.metrics.validate(&mut p);
            p.duration(
                "wait",
                raw.wait.as_deref(),
                Duration::ZERO,
                (Duration::ZERO, Duration::from_secs(60)),
            );
            p.finish(consul)
        })
        .map_err(|problems| problems.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn durations_parse() {
        for (text, ms) in [
            ("250ms", 250),
            ("1s", 1000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("1m 30s", 90_000),
            ("1.5s", 1500),
            ("0", 0),
            ("0s", 0),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text:?}"
            );
        }
        for bad in ["", "s", "5", "-5s", "5 parsecs", "soon"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn replaced_keys_name_their_successor_with_the_value() {
        let errors = check(
            "prefix = \"dc1/\"\nwait_ms = 300\nwait_s = 90\n[consul]\naddr = \"c:8500\"\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "`prefix` was replaced by `kv.prefix = \"dc1/\"`",
                "`wait_ms` was replaced by `wait = \"300ms\"`",
                "`wait_s` was replaced by `wait = \"1m 30s\"`",
                "`consul.addr` was replaced by `consul.address = \"c:8500\"`",
            ]
        );
    }

    #[test]
    fn unknown_replaced_and_invalid_are_reported_together() {
        let errors = check(
            "wait = \"2h\"\nwait_ms = 1\nbogus = 1\n[metrics]\nlisten = \"x\"\n[consul]\naddress = \"unix:///c.sock\"\n[kv]\nprefix = \"/\"\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(errors.len(), 6, "{errors:#?}");
        assert!(errors.contains(&"`bogus` is not a known key".to_owned()));
        assert!(errors
            .iter()
            .any(|e| e.starts_with("`wait_ms` was replaced")));
        assert!(errors
            .iter()
            .any(|e| e.starts_with("`consul.address`: expected")));
        assert!(errors
            .iter()
            .any(|e| e.starts_with("`kv.prefix`: expected")));
        assert!(errors
            .iter()
            .any(|e| e.starts_with("`metrics.listen`: expected")));
        assert!(errors.contains(&"`wait`: must be from 0s to 1m".to_owned()));
    }

    #[test]
    fn a_wrong_type_is_reported_with_the_keys_found_before_it() {
        let errors = check("wait_ms = 5\nwait = 300\n", &[]).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(errors[0].starts_with("`wait_ms` was replaced"));
        assert!(errors[1].contains("line 2"), "{}", errors[1]);
    }

    #[test]
    fn consul_environment_fills_what_the_file_leaves_out() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "from-file\n").unwrap();
        let env = [
            ("CONSUL_HTTP_ADDR", "10.0.0.1:8501"),
            ("CONSUL_HTTP_SSL", "true"),
            ("CONSUL_HTTP_TOKEN", "from-env"),
            ("CONSUL_CACERT", "/env/ca.pem"),
            ("CONSUL_CLIENT_CERT", "/env/c.pem"),
            ("CONSUL_CLIENT_KEY", "/env/k.pem"),
            ("CONSUL_DATACENTER", "dc2"),
        ];
        let c = check("", &env).unwrap();
        assert_eq!(c.addr, "https://10.0.0.1:8501");
        assert_eq!(c.token.unwrap().expose(), "from-env");
        assert_eq!(c.tls.ca_file, Some(PathBuf::from("/env/ca.pem")));
        assert_eq!(c.tls.client_key, Some(PathBuf::from("/env/k.pem")));
        assert_eq!(c.datacenter.as_deref(), Some("dc2"));

        let c = check(
            &format!(
                "[consul]\naddress = \"http://c:8500/\"\ntoken_file = \"{}\"\nca_file = \"/f/ca.pem\"\ndatacenter = \"dc1\"\n",
                token.display()
            ),
            &env,
        )
        .unwrap();
        assert_eq!(c.addr, "http://c:8500");
        assert_eq!(c.token.unwrap().expose(), "from-file");
        assert_eq!(c.tls.ca_file, Some(PathBuf::from("/f/ca.pem")));
        assert_eq!(c.tls.client_cert, Some(PathBuf::from("/env/c.pem")));
        assert_eq!(c.datacenter.as_deref(), Some("dc1"));
        // Same rules as the CLI and the test clients use.
        let from_env = ConsulConfig::from_lookup(|k| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
        .unwrap();
        assert_eq!(from_env, check("", &env).unwrap());
    }

    #[test]
    fn consul_problems_name_where_the_value_came_from() {
        let errors = check(
            "[consul]\nclient_key = \"/k.pem\"\ndatacenter = \"dc 1\"\n",
            &[
                ("CONSUL_HTTP_ADDR", "unix:///run/consul.sock"),
                ("CONSUL_HTTP_TOKEN_FILE", "/nonexistent/so-token"),
            ],
        )
        .unwrap_err();
        assert_eq!(errors.len(), 4, "{errors:#?}");
        assert!(errors[0].starts_with("`CONSUL_HTTP_ADDR`: expected"));
        assert!(
            errors[1].starts_with("`CONSUL_HTTP_TOKEN_FILE`: ")
                && errors[1].contains("/nonexistent/so-token"),
            "{}",
            errors[1]
        );
        assert!(errors[2].starts_with("`consul.client_cert`: client_cert and client_key"));
        assert!(errors[3].starts_with("`consul.datacenter`: expected"));
    }

    #[test]
    fn config_error_lists_every_problem() {
        let err = ConfigError::Invalid {
            path: "/etc/x.toml".into(),
            problems: vec![
                Problem {
                    key: "a".into(),
                    kind: ProblemKind::Missing,
                },
                Problem {
                    key: "b".into(),
                    kind: ProblemKind::Unknown,
                },
            ],
        };
        assert_eq!(
            err.to_string(),
            "config file /etc/x.toml has 2 problems:\n  - `a` is required\n  - `b` is not a known key"
        );
    }
}
