//! Publishing a cluster's source: `master/<cluster>` and its split
//! children, always together.

use super::{ClusterName, HostPort, Keys, ATTR_HOSTNAME, ATTR_PORT};
use crate::consul::TxnOp;

impl Keys {
    /// The three keys that publish `source`: `master/<cluster>` =
    /// `host:port`, `/hostname` and `/port`. They go into one txn (with the
    /// caller's lock check): a renderer that saw `master` move while
    /// `/hostname` still named the old source would route to either.
    ///
    /// `/ipv4` and `/ipv6` are left alone; they are an operator's, and the
    /// renderer uses them only while `/hostname` and `/port` name the same
    /// server as `master`.
    pub fn publish_ops(&self, cluster: &ClusterName, source: &HostPort) -> Vec<TxnOp> {
        vec![
            TxnOp::set(self.master_key(cluster), source.to_string()),
            TxnOp::set(
                self.master_attr_key(cluster, ATTR_HOSTNAME),
                source.host.to_string(),
            ),
            TxnOp::set(
                self.master_attr_key(cluster, ATTR_PORT),
                source.port.to_string(),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::parse_host_port;

    #[test]
    fn publish_writes_the_three_keys_of_orchestrators_layout() {
        let keys = Keys::new("dc1/db").unwrap();
        let c1 = ClusterName::parse("c1").unwrap();
        assert_eq!(
            keys.publish_ops(&c1, &parse_host_port("db2.example.com:3307").unwrap()),
            [
                TxnOp::set("dc1/db/master/c1", "db2.example.com:3307"),
                TxnOp::set("dc1/db/master/c1/hostname", "db2.example.com"),
                TxnOp::set("dc1/db/master/c1/port", "3307"),
            ]
        );
        // The bare address in /hostname, brackets only in host:port.
        assert_eq!(
            keys.publish_ops(&c1, &parse_host_port("[2001:db8::2]:3306").unwrap()),
            [
                TxnOp::set("dc1/db/master/c1", "[2001:db8::2]:3306"),
                TxnOp::set("dc1/db/master/c1/hostname", "2001:db8::2"),
                TxnOp::set("dc1/db/master/c1/port", "3306"),
            ]
        );
    }
}

/// The keys of one cluster's `master/<cluster>` subtree, raw: what every
/// reader (agents, renderers, the CLI) makes of them comes from
/// [`MasterKeys::source`], so none of them can route, fence or fail over on
/// a different reading than the others.
#[derive(Debug, Default, Clone)]
pub struct MasterKeys<'a> {
    /// The first key of the subtree seen, to name in an error when the
    /// main key is absent.
    pub first_key: Option<&'a str>,
    pub value: Option<(&'a str, &'a [u8])>,
    pub hostname: Option<(&'a str, &'a [u8])>,
    pub port: Option<(&'a str, &'a [u8])>,
    pub ipv4: Option<(&'a str, &'a [u8])>,
    pub ipv6: Option<(&'a str, &'a [u8])>,
    /// `master/<cluster>/failed` is present.
    pub failed: bool,
}

/// What is wrong with a `master` subtree, and which key says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterProblem {
    Invalid(super::ValueError),
    /// Neither a `master` value nor `/hostname` + `/port` children.
    NoSource,
    /// `/hostname`/`/port` disagree with the `master` value, which wins.
    ChildrenDisagree {
        children: String,
    },
}

impl std::fmt::Display for MasterProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MasterProblem::Invalid(e) => write!(f, "{e}"),
            MasterProblem::NoSource => f.write_str("no master value and no hostname/port children"),
            MasterProblem::ChildrenDisagree { children } => write!(
                f,
                "hostname/port children say {children}; the master value wins"
            ),
        }
    }
}

/// The source a `master` subtree names, and the IP it gives for it when
/// the address is a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedSource {
    pub addr: HostPort,
    pub ip: Option<std::net::IpAddr>,
}

fn text(value: &[u8]) -> Result<&str, super::ValueError> {
    std::str::from_utf8(value).map_err(|_| super::ValueError::NotUtf8)
}

impl<'a> MasterKeys<'a> {
    /// Files one key of the subtree (`attr` as [`super::KeyPath::Master`]
    /// gives it); children nobody reads are ignored.
    pub fn add(&mut self, key: &'a str, attr: Option<&str>, value: &'a [u8]) {
        self.first_key.get_or_insert(key);
        let slot = match attr {
            None => &mut self.value,
            Some(super::ATTR_HOSTNAME) => &mut self.hostname,
            Some(super::ATTR_PORT) => &mut self.port,
            Some(super::ATTR_IPV4) => &mut self.ipv4,
            Some(super::ATTR_IPV6) => &mut self.ipv6,
            Some(super::ATTR_FAILED) => {
                self.failed = true;
                return;
            }
            // Orchestrator and future writers may add children.
            Some(_) => return,
        };
        *slot = Some((key, value));
    }

    /// The source: a non-empty `master` value (`host:port`) wins; without
    /// one, `/hostname` + `/port`. `notes` receives problems that do not
    /// stop the choice (children that disagree, an unusable IP child).
    pub fn source(
        &self,
        notes: &mut impl FnMut(&'a str, MasterProblem),
    ) -> Result<PublishedSource, (&'a str, MasterProblem)> {
        let children = self.children();
        let addr = match self.value {
            Some((key, value)) if !text(value).unwrap_or("x").trim().is_empty() => {
                let addr = text(value)
                    .and_then(|v| super::parse_host_port(v.trim()))
                    .map_err(|e| (key, MasterProblem::Invalid(e)))?;
                if let Some(Ok(children)) = &children {
                    if children != &addr {
                        notes(
                            key,
                            MasterProblem::ChildrenDisagree {
                                children: children.to_string(),
                            },
                        );
                    }
                }
                addr
            }
            _ => match children {
                Some(result) => result?,
                None => {
                    let key = self
                        .value
                        .map(|(k, _)| k)
                        .or(self.first_key)
                        .unwrap_or_default();
                    return Err((key, MasterProblem::NoSource));
                }
            },
        };
        let ip = match &addr.host {
            super::Host::Ip(ip) => Some(*ip),
            super::Host::Name(_) => self.children_ip(&addr, notes),
        };
        Ok(PublishedSource { addr, ip })
    }

    /// The `/hostname` + `/port` children as one address: `None` when
    /// neither is present.
    fn children(&self) -> Option<Result<HostPort, (&'a str, MasterProblem)>> {
        match (self.hostname, self.port) {
            (None, None) => None,
            (Some((hkey, hval)), Some((pkey, pval))) => Some((|| {
                let host = text(hval)
                    .and_then(|v| super::valid_host(v.trim()))
                    .map_err(|e| (hkey, MasterProblem::Invalid(e)))?;
                let port = text(pval)
                    .and_then(|v| super::parse_port(v.trim()))
                    .map_err(|e| (pkey, MasterProblem::Invalid(e)))?;
                Ok(HostPort { host, port })
            })()),
            (Some((key, _)), None) | (None, Some((key, _))) => {
                Some(Err((key, MasterProblem::NoSource)))
            }
        }
    }

    fn children_ip(
        &self,
        addr: &HostPort,
        notes: &mut impl FnMut(&'a str, MasterProblem),
    ) -> Option<std::net::IpAddr> {
        match self.children() {
            Some(Ok(children))
                if children.host.same_as(&addr.host) && children.port == addr.port => {}
            _ => return None,
        }
        type Parse = fn(&str) -> Result<std::net::IpAddr, super::ValueError>;
        for (slot, parse) in [
            (self.ipv4, super::parse_ipv4 as Parse),
            (self.ipv6, super::parse_ipv6 as Parse),
        ] {
            let Some((key, value)) = slot else { continue };
            if value.is_empty() {
                continue;
            }
            match text(value).and_then(parse) {
                Ok(ip) => return Some(ip),
                Err(e) => notes(key, MasterProblem::Invalid(e)),
            }
        }
        None
    }
}

#[cfg(test)]
mod master_tests {
    use super::*;

    fn keys<'a>(pairs: &[(&'a str, Option<&'a str>, &'a str)]) -> MasterKeys<'a> {
        let mut m = MasterKeys::default();
        for (k, attr, v) in pairs {
            m.add(k, *attr, v.as_bytes());
        }
        m
    }

    #[test]
    fn every_reader_gets_the_same_source() {
        let mut notes = Vec::new();
        let mut note = |k: &str, p: MasterProblem| notes.push((k.to_owned(), p));
        // The value wins, children that disagree are noted.
        let m = keys(&[
            ("m/c", None, "10.0.0.1:3306"),
            ("m/c/hostname", Some("hostname"), "10.0.0.2"),
            ("m/c/port", Some("port"), "3306"),
        ]);
        assert_eq!(
            m.source(&mut note).unwrap().addr.to_string(),
            "10.0.0.1:3306"
        );
        // An empty value with children: the children (orchestrator's way).
        let m = keys(&[
            ("m/c", None, ""),
            ("m/c/hostname", Some("hostname"), "db2.example"),
            ("m/c/port", Some("port"), "3307"),
            ("m/c/ipv4", Some("ipv4"), "10.0.0.2"),
        ]);
        let s = m.source(&mut note).unwrap();
        assert_eq!(s.addr.to_string(), "db2.example:3307");
        assert_eq!(s.ip, Some("10.0.0.2".parse().unwrap()));
        // Nothing usable.
        let m = keys(&[("m/c", None, "  ")]);
        assert_eq!(m.source(&mut note).unwrap_err().1, MasterProblem::NoSource);
        let m = keys(&[("m/c", None, "db1:notaport")]);
        assert!(matches!(
            m.source(&mut note).unwrap_err(),
            ("m/c", MasterProblem::Invalid(_))
        ));

        assert_eq!(notes.len(), 1, "{notes:?}");
    }
}
