//! GTIDs of both flavours, parsed and compared in Rust.
//!
//! MariaDB keeps a *position*: one `domain-server_id-seq` per replication domain, and with
//! `gtid_strict_mode` every domain's sequence numbers only grow, so "has applied everything up to"
//! is a per-domain comparison. MySQL keeps a *set*: `uuid[:tag]:intervals`, possibly with holes,
//! so comparisons are set operations. Comparing in Rust (rather than with `GTID_SUBSET` on some
//! server) lets the coordinator compare nodes whose servers are down or cannot reach each other.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A GTID string that is not valid for its flavour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {input:?}: {reason}")]
pub struct GtidParseError {
    kind: &'static str,
    input: String,
    reason: &'static str,
}

impl GtidParseError {
    fn new(kind: &'static str, input: &str, reason: &'static str) -> Self {
        // Inputs come from servers and KV; keep error messages bounded.
        let input = input.chars().take(200).collect();
        GtidParseError {
            kind,
            input,
            reason,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// MariaDB
// ---------------------------------------------------------------------------------------------

/// One MariaDB GTID, `domain-server_id-seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MariaDbGtid {
    pub domain: u32,
    pub server_id: u32,
    pub seq: u64,
}

impl fmt::Display for MariaDbGtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server_id, self.seq)
    }
}

impl FromStr for MariaDbGtid {
    type Err = GtidParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| GtidParseError::new("MariaDB GTID", s, reason);
        let mut parts = s.trim().split('-');
        let (Some(d), Some(sid), Some(seq), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err("expected domain-server_id-seq"));
        };
        let num = |p: &str| -> Option<u64> {
            // `u64::from_str` accepts a leading '+', MariaDB does not.
            (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse().ok())
                .flatten()
        };
        let domain = num(d)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| err("domain is not a 32-bit number"))?;
        let server_id = num(sid)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| err("server_id is not a 32-bit number"))?;
        let seq = num(seq).ok_or_else(|| err("seq is not a 64-bit number"))?;
        Ok(MariaDbGtid {
            domain,
            server_id,
            seq,
        })
    }
}

/// A MariaDB GTID position (`@@gtid_current_pos`, `Gtid_IO_Pos`, …): the last GTID per domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct GtidPos {
    // domain → (server_id, seq)
    domains: BTreeMap<u32, (u32, u64)>,
}

impl GtidPos {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `0-1-100,1-2-5`; the empty string is the empty position.
    pub fn parse(s: &str) -> Result<Self, GtidParseError> {
        let mut pos = GtidPos::new();
        if s.trim().is_empty() {
            return Ok(pos);
        }
        for item in s.split(',') {
            let gtid: MariaDbGtid = item.parse()?;
            // MariaDB refuses a position naming a domain twice; accepting it would make
            // "the last GTID of domain d" ambiguous.
            if pos.insert(gtid).is_some() {
                return Err(GtidParseError::new(
                    "MariaDB GTID position",
                    s,
                    "a domain appears twice",
                ));
            }
        }
        Ok(pos)
    }

    /// Sets the domain's last GTID, returning the one it replaced.
    pub fn insert(&mut self, gtid: MariaDbGtid) -> Option<MariaDbGtid> {
        self.domains
            .insert(gtid.domain, (gtid.server_id, gtid.seq))
            .map(|(server_id, seq)| MariaDbGtid {
                domain: gtid.domain,
                server_id,
                seq,
            })
    }

    pub fn get(&self, domain: u32) -> Option<MariaDbGtid> {
        self.domains
            .get(&domain)
            .map(|&(server_id, seq)| MariaDbGtid {
                domain,
                server_id,
                seq,
            })
    }

    pub fn iter(&self) -> impl Iterator<Item = MariaDbGtid> + '_ {
        self.domains
            .iter()
            .map(|(&domain, &(server_id, seq))| MariaDbGtid {
                domain,
                server_id,
                seq,
            })
    }

    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    pub fn len(&self) -> usize {
        self.domains.len()
    }

    /// Whether `self` has applied everything `other` has: for every domain of `other`, `self`
    /// has that domain with a higher seq, or the very same GTID.
    ///
    /// The same seq from a different server_id is *not* contained: under `gtid_strict_mode` that
    /// can only mean two servers both wrote seq N in that domain (a split brain), so the two
    /// histories have diverged. A position cannot prove more than this; a higher seq from another
    /// server is trusted because strict mode refuses out-of-order sequence numbers.
    pub fn contains(&self, other: &GtidPos) -> bool {
        other.iter().all(|theirs| match self.get(theirs.domain) {
            None => false,
            Some(ours) => {
                ours.seq > theirs.seq
                    || (ours.seq == theirs.seq && ours.server_id == theirs.server_id)
            }
        })
    }

    /// The part of `self` that `other` does not contain (errant transactions when `self` is a
    /// replica and `other` its source): every domain of `self` that `other` lacks, is behind
    /// in, or holds a different GTID at the same seq.
    pub fn not_in(&self, other: &GtidPos) -> GtidPos {
        let mut out = GtidPos::new();
        for ours in self.iter() {
            let mut single = GtidPos::new();
            single.insert(ours);
            if !other.contains(&single) {
                out.insert(ours);
            }
        }
        out
    }
}

impl fmt::Display for GtidPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, gtid) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{gtid}")?;
        }
        Ok(())
    }
}

impl FromStr for GtidPos {
    type Err = GtidParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GtidPos::parse(s)
    }
}

// ---------------------------------------------------------------------------------------------
// MySQL
// ---------------------------------------------------------------------------------------------

/// A server UUID (MySQL `@@server_uuid`, the source part of a MySQL GTID).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid(u128);

impl Uuid {
    /// Parses the hyphenated 8-4-4-4-12 form, in either case.
    pub fn parse(s: &str) -> Result<Self, GtidParseError> {
        let err = |reason| GtidParseError::new("server UUID", s, reason);
        let b = s.as_bytes();
        if b.len() != 36 {
            return Err(err("expected 36 characters"));
        }
        let mut v: u128 = 0;
        for (i, &c) in b.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return Err(err("expected 8-4-4-4-12 hex digits"));
                }
                continue;
            }
            let d = (c as char)
                .to_digit(16)
                .ok_or_else(|| err("expected 8-4-4-4-12 hex digits"))?;
            v = (v << 4) | u128::from(d);
        }
        Ok(Uuid(v))
    }

    pub fn as_u128(self) -> u128 {
        self.0
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = format!("{:032x}", self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uuid({self})")
    }
}

impl FromStr for Uuid {
    type Err = GtidParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse(s)
    }
}

/// An inclusive range of GTID sequence numbers (MySQL calls them GNOs), `start..=end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Interval {
    pub start: u64,
    pub end: u64,
}

/// MySQL's largest GNO (`GNO_END - 1`); GNOs start at 1.
pub const MAX_GNO: u64 = i64::MAX as u64;

/// A MySQL GTID set (`@@gtid_executed`, `Retrieved_Gtid_Set`, …), normalised: per source,
/// intervals sorted, disjoint and non-adjacent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct GtidSet {
    // (uuid, tag) → intervals; the empty tag is the untagged GTIDs, which sort first as MySQL
    // prints them.
    sids: BTreeMap<(Uuid, String), Vec<Interval>>,
}

impl GtidSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses MySQL's text form: `uuid:1-5:7-9,\n uuid2:1-3`, with any whitespace around tokens,
    /// upper- or lowercase UUIDs, overlapping or unsorted intervals, and MySQL 8.4 tags
    /// (`uuid:1-5:tag_a:1-3`, a tag applying to the intervals after it).
    pub fn parse(s: &str) -> Result<Self, GtidParseError> {
        let err = |reason| GtidParseError::new("MySQL GTID set", s, reason);
        let mut set = GtidSet::new();
        // MySQL skips empty entries (`a,,b`), and prints sets with ",\n" between sources.
        for entry in s.split(',') {
            if entry.trim().is_empty() {
                continue;
            }
            let mut tokens = entry.split(':').map(str::trim);
            let uuid = Uuid::parse(tokens.next().unwrap_or_default())?;
            let mut tag = String::new();
            let mut tag_has_intervals = true;
            for tok in tokens {
                if tok.starts_with(|c: char| c.is_ascii_digit()) {
                    let iv = parse_interval(tok).ok_or_else(|| err("bad interval"))?;
                    set.add_interval(uuid, &tag, iv);
                    tag_has_intervals = true;
                } else {
                    if !tag_has_intervals {
                        return Err(err("a tag without intervals"));
                    }
                    tag = parse_tag(tok).ok_or_else(|| err("bad tag"))?;
                    tag_has_intervals = false;
                }
            }
            if !tag_has_intervals {
                return Err(err("a tag without intervals"));
            }
        }
        Ok(set)
    }

    /// Adds `start..=end` for an untagged (`tag = ""`) or tagged source.
    pub fn add_interval(&mut self, uuid: Uuid, tag: &str, iv: Interval) {
        debug_assert!(1 <= iv.start && iv.start <= iv.end && iv.end <= MAX_GNO);
        let ivs = self.sids.entry((uuid, tag.to_owned())).or_default();
        ivs.push(iv);
        normalise(ivs);
    }

    pub fn is_empty(&self) -> bool {
        self.sids.is_empty()
    }

    /// The intervals of one source (`tag = ""` for untagged GTIDs).
    pub fn intervals(&self, uuid: Uuid, tag: &str) -> &[Interval] {
        self.sids
            .get(&(uuid, tag.to_owned()))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Every (uuid, tag, intervals) in display order.
    pub fn iter(&self) -> impl Iterator<Item = (Uuid, &str, &[Interval])> + '_ {
        self.sids
            .iter()
            .map(|((u, t), ivs)| (*u, t.as_str(), ivs.as_slice()))
    }

    pub fn contains_gtid(&self, uuid: Uuid, tag: &str, gno: u64) -> bool {
        self.intervals(uuid, tag)
            .iter()
            .any(|iv| iv.start <= gno && gno <= iv.end)
    }

    /// Whether every GTID of `self` is in `other` (MySQL's `GTID_SUBSET(self, other)`).
    pub fn is_subset(&self, other: &GtidSet) -> bool {
        self.sids.iter().all(|(key, ours)| {
            let theirs = other.sids.get(key).map(Vec::as_slice).unwrap_or(&[]);
            // Both sides are normalised, so each of our intervals must sit inside one of theirs.
            ours.iter().all(|iv| {
                theirs
                    .iter()
                    .any(|t| t.start <= iv.start && iv.end <= t.end)
            })
        })
    }

    /// Whether `self` has everything `other` has.
    pub fn contains(&self, other: &GtidSet) -> bool {
        other.is_subset(self)
    }

    /// The GTIDs of `self` that are not in `other` (MySQL's `GTID_SUBTRACT(self, other)`).
    pub fn subtract(&self, other: &GtidSet) -> GtidSet {
        let mut out = GtidSet::new();
        for (key, ours) in &self.sids {
            let rest = match other.sids.get(key) {
                None => ours.clone(),
                Some(theirs) => subtract_intervals(ours, theirs),
            };
            if !rest.is_empty() {
                out.sids.insert(key.clone(), rest);
            }
        }
        out
    }

    /// Every GTID in either set.
    pub fn union(&self, other: &GtidSet) -> GtidSet {
        let mut out = self.clone();
        for (key, theirs) in &other.sids {
            let ivs = out.sids.entry(key.clone()).or_default();
            ivs.extend_from_slice(theirs);
            normalise(ivs);
        }
        out
    }

    /// The number of GTIDs in the set (saturating).
    pub fn count(&self) -> u64 {
        self.sids
            .values()
            .flatten()
            .fold(0u64, |n, iv| n.saturating_add(iv.end - iv.start + 1))
    }
}

fn parse_interval(tok: &str) -> Option<Interval> {
    let gno = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok().filter(|&n| (1..=MAX_GNO).contains(&n))
    };
    let (start, end) = match tok.split_once('-') {
        Some((a, b)) => (gno(a)?, gno(b)?),
        None => {
            let n = gno(tok)?;
            (n, n)
        }
    };
    (start <= end).then_some(Interval { start, end })
}

/// MySQL 8.4 tags: `[a-z_][a-z0-9_]{0,31}`, case-insensitive and stored lowercase.
fn parse_tag(tok: &str) -> Option<String> {
    let t = tok.to_ascii_lowercase();
    let mut chars = t.chars();
    let first = chars.next()?;
    let ok = (first.is_ascii_lowercase() || first == '_')
        && t.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    ok.then_some(t)
}

fn normalise(ivs: &mut Vec<Interval>) {
    ivs.sort_unstable();
    let mut out: Vec<Interval> = Vec::with_capacity(ivs.len());
    for iv in ivs.drain(..) {
        match out.last_mut() {
            // Adjacent intervals merge too (1-5 and 6-9 are 1-9), as MySQL prints them.
            Some(last) if iv.start <= last.end.saturating_add(1) => {
                last.end = last.end.max(iv.end);
            }
            _ => out.push(iv),
        }
    }
    *ivs = out;
}

fn subtract_intervals(ours: &[Interval], theirs: &[Interval]) -> Vec<Interval> {
    let mut out = Vec::new();
    for iv in ours {
        let mut start = iv.start;
        let mut done = false;
        for t in theirs {
            if t.end < start {
                continue;
            }
            if t.start > iv.end {
                break;
            }
            if t.start > start {
                out.push(Interval {
                    start,
                    end: t.start - 1,
                });
            }
            if t.end >= iv.end {
                done = true;
                break;
            }
            start = t.end + 1;
        }
        if !done {
            out.push(Interval { start, end: iv.end });
        }
    }
    out
}

impl fmt::Display for GtidSet {
    /// `uuid:1-5:7-9:tag:1-3,uuid2:1-3`; MySQL itself separates sources with ",\n", and accepts
    /// both.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut prev: Option<Uuid> = None;
        for ((uuid, tag), ivs) in &self.sids {
            if prev != Some(*uuid) {
                if prev.is_some() {
                    f.write_str(",")?;
                }
                write!(f, "{uuid}")?;
                prev = Some(*uuid);
            }
            if !tag.is_empty() {
                write!(f, ":{tag}")?;
            }
            for iv in ivs {
                if iv.start == iv.end {
                    write!(f, ":{}", iv.start)?;
                } else {
                    write!(f, ":{}-{}", iv.start, iv.end)?;
                }
            }
        }
        Ok(())
    }
}

impl FromStr for GtidSet {
    type Err = GtidParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GtidSet::parse(s)
    }
}

// ---------------------------------------------------------------------------------------------
// Either flavour
// ---------------------------------------------------------------------------------------------

/// Comparing a MariaDB position with a MySQL set: a caller mixed up nodes of different flavours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot compare MariaDB GTID positions with MySQL GTID sets")]
pub struct FlavourMismatch;

/// Parses MariaDB's `@@gtid_binlog_state` (`0-1-100,0-2-140,1-3-7`): every
/// (domain, server id) with the last sequence number it wrote.
pub fn parse_binlog_state(text: &str) -> Result<Vec<(u32, u32, u64)>, GtidParseError> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let pos = GtidPos::parse(part)?;
        for g in pos.iter() {
            out.push((g.domain, g.server_id, g.seq));
        }
    }
    Ok(out)
}

/// The (domain, server id, seq) entries of `node` that `source` lacks: a
/// server writes its sequence numbers in order, so holding a later GTID of
/// the same server in the same domain means holding this one.
pub fn binlog_state_not_in(
    node: &[(u32, u32, u64)],
    source: &[(u32, u32, u64)],
) -> Vec<(u32, u32, u64)> {
    node.iter()
        .filter(|(d, srv, q)| {
            !source
                .iter()
                .any(|(sd, ss, sq)| sd == d && ss == srv && sq >= q)
        })
        .copied()
        .collect()
}

/// What a server holds or has received, in its flavour's terms. On MariaDB the executed state
/// is `@@gtid_current_pos` (see `Node::gtid_executed` for why), on MySQL `@@gtid_executed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GtidState {
    MariaDb(GtidPos),
    MySql(GtidSet),
}

impl GtidState {
    /// Parses either flavour's text: MySQL sets name server UUIDs with a
    /// colon, MariaDB positions never contain one.
    pub fn parse_any(s: &str) -> Result<GtidState, GtidParseError> {
        if s.contains(':') {
            GtidSet::parse(s).map(GtidState::MySql)
        } else {
            GtidPos::parse(s).map(GtidState::MariaDb)
        }
    }

    /// Everything either holds: per domain the later position (MariaDB),
    /// the union of the sets (MySQL).
    pub fn union(&self, other: &GtidState) -> Result<GtidState, FlavourMismatch> {
        // Empty text parses as MariaDB's empty position: an empty state of
        // either flavour is the same nothing.
        if other.is_empty() {
            return Ok(self.clone());
        }
        if self.is_empty() {
            return Ok(other.clone());
        }
        match (self, other) {
            (GtidState::MariaDb(a), GtidState::MariaDb(b)) => {
                let mut p = a.clone();
                for g in b.iter() {
                    if p.get(g.domain).is_none_or(|x| x.seq < g.seq) {
                        p.insert(g);
                    }
                }
                Ok(GtidState::MariaDb(p))
            }
            (GtidState::MySql(a), GtidState::MySql(b)) => Ok(GtidState::MySql(a.union(b))),
            _ => Err(FlavourMismatch),
        }
    }

    /// Whether `self` holds everything `other` holds.
    pub fn contains(&self, other: &GtidState) -> Result<bool, FlavourMismatch> {
        if other.is_empty() || self.is_empty() {
            return Ok(other.is_empty());
        }
        match (self, other) {
            (GtidState::MariaDb(a), GtidState::MariaDb(b)) => Ok(a.contains(b)),
            (GtidState::MySql(a), GtidState::MySql(b)) => Ok(a.contains(b)),
            _ => Err(FlavourMismatch),
        }
    }

    /// What `self` holds that `other` does not (errant transactions).
    pub fn not_in(&self, other: &GtidState) -> Result<GtidState, FlavourMismatch> {
        if self.is_empty() || other.is_empty() {
            return Ok(self.clone());
        }
        match (self, other) {
            (GtidState::MariaDb(a), GtidState::MariaDb(b)) => Ok(GtidState::MariaDb(a.not_in(b))),
            (GtidState::MySql(a), GtidState::MySql(b)) => Ok(GtidState::MySql(a.subtract(b))),
            _ => Err(FlavourMismatch),
        }
    }

    /// How many transactions `self` holds beyond `other`: on a replica,
    /// received beyond applied (its apply backlog), or applied now beyond
    /// applied a moment ago (its apply progress). MariaDB counts sequence
    /// numbers per domain, which gtid_strict_mode keeps increasing by one
    /// per transaction within a domain's history; MySQL counts the GTIDs.
    pub fn transactions_beyond(&self, other: &GtidState) -> Result<u64, FlavourMismatch> {
        if self.is_empty() {
            return Ok(0);
        }
        match (self, other) {
            (GtidState::MariaDb(a), GtidState::MariaDb(b)) => Ok(a.iter().fold(0u64, |n, g| {
                let behind = b
                    .get(g.domain)
                    .map_or(g.seq, |o| g.seq.saturating_sub(o.seq));
                n.saturating_add(behind)
            })),
            (GtidState::MySql(a), GtidState::MySql(b)) => Ok(a.subtract(b).count()),
            (_, o) if o.is_empty() => Ok(match self {
                GtidState::MariaDb(a) => a.iter().fold(0u64, |n, g| n.saturating_add(g.seq)),
                GtidState::MySql(a) => a.count(),
            }),
            _ => Err(FlavourMismatch),
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            GtidState::MariaDb(p) => p.is_empty(),
            GtidState::MySql(s) => s.is_empty(),
        }
    }
}

impl fmt::Display for GtidState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GtidState::MariaDb(p) => p.fmt(f),
            GtidState::MySql(s) => s.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// xorshift64*: seeded, dependency-free randomness for the property loops.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, pct: u64) -> bool {
            self.below(100) < pct
        }
    }

    fn pos(s: &str) -> GtidPos {
        GtidPos::parse(s).unwrap()
    }

    fn set(s: &str) -> GtidSet {
        GtidSet::parse(s).unwrap()
    }

    const U1: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
    const U2: &str = "2174b383-5441-11e8-b90a-c80aa9429562";

    // --- MariaDB ---

    #[test]
    fn mariadb_pos_parses_real_values() {
        // As printed by MariaDB 10.11 for @@gtid_current_pos and Gtid_IO_Pos.
        let p = pos("0-1-100,1-2-5");
        assert_eq!(p.len(), 2);
        assert_eq!(
            p.get(0),
            Some(MariaDbGtid {
                domain: 0,
                server_id: 1,
                seq: 100
            })
        );
        assert_eq!(p.get(1).unwrap().server_id, 2);
        assert_eq!(p.to_string(), "0-1-100,1-2-5");
        assert!(pos("").is_empty());
        assert!(pos("  \n").is_empty());
        // Domains print sorted whatever the input order.
        assert_eq!(pos("7-3-9, 2-1-4").to_string(), "2-1-4,7-3-9");
        assert_eq!(
            pos("4294967295-4294967295-18446744073709551615").to_string(),
            "4294967295-4294967295-18446744073709551615"
        );
    }

    #[test]
    fn mariadb_pos_rejects_malformed() {
        for bad in [
            "0-1",
            "0-1-2-3",
            "a-1-2",
            "0-1-",
            "-0-1-2",
            "0-+1-2",
            "0-1-2,",
            "0-1-2,,1-1-1",
            "4294967296-1-1",
            "0-4294967296-1",
            "0-1-18446744073709551616",
            "0-1-5,0-2-6",
            "0 -1-5",
            "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5",
        ] {
            assert!(GtidPos::parse(bad).is_err(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn mariadb_contains() {
        assert!(pos("0-1-100").contains(&pos("0-1-99")));
        assert!(pos("0-1-100").contains(&pos("0-1-100")));
        assert!(!pos("0-1-99").contains(&pos("0-1-100")));
        // A later seq written by another server after a failover still contains the earlier one.
        assert!(pos("0-2-101").contains(&pos("0-1-100")));
        // Same seq, different server: two servers wrote seq 100 — diverged.
        assert!(!pos("0-2-100").contains(&pos("0-1-100")));
        // A missing domain is not contained, an extra one does not matter.
        assert!(!pos("0-1-100").contains(&pos("0-1-5,1-2-1")));
        assert!(pos("0-1-100,1-2-1").contains(&pos("0-1-5")));
        // Everything contains the empty position; the empty position contains only itself.
        assert!(pos("").contains(&pos("")));
        assert!(pos("0-1-1").contains(&pos("")));
        assert!(!pos("").contains(&pos("0-1-1")));
    }

    #[test]
    fn mariadb_not_in_finds_errant_domains() {
        // A replica that took a write of its own in domain 0 and a write in a new domain 5.
        let replica = pos("0-2-101,1-1-7,5-2-1");
        let source = pos("0-1-100,1-1-9");
        assert_eq!(replica.not_in(&source).to_string(), "0-2-101,5-2-1");
        assert!(source.not_in(&replica).to_string() == "1-1-9");
        assert!(pos("0-1-5").not_in(&pos("0-1-5")).is_empty());
        assert_eq!(pos("0-2-5").not_in(&pos("0-1-5")).to_string(), "0-2-5");
    }

    #[test]
    fn mariadb_property_loop() {
        let mut rng = Rng(0x5eed_0001);
        for _ in 0..2000 {
            let gen = |rng: &mut Rng| {
                let mut p = GtidPos::new();
                for d in 0..4u32 {
                    if rng.chance(70) {
                        p.insert(MariaDbGtid {
                            domain: d,
                            server_id: 1 + rng.below(2) as u32,
                            seq: rng.below(6),
                        });
                    }
                }
                p
            };
            let a = gen(&mut rng);
            let b = gen(&mut rng);
            // Display round-trips.
            assert_eq!(GtidPos::parse(&a.to_string()).unwrap(), a);
            // Reflexive, and the empty position is contained by all.
            assert!(a.contains(&a));
            assert!(a.contains(&GtidPos::new()));
            // contains ⇔ nothing of `b` is beyond `a`.
            assert_eq!(a.contains(&b), b.not_in(&a).is_empty(), "a={a} b={b}");
            // Model: per-domain rule.
            let model = b.iter().all(|g| {
                a.get(g.domain).is_some_and(|o| {
                    o.seq > g.seq || (o.seq == g.seq && o.server_id == g.server_id)
                })
            });
            assert_eq!(a.contains(&b), model);
            // Whatever is not_in is a subset of the original's entries.
            for g in a.not_in(&b).iter() {
                assert_eq!(a.get(g.domain), Some(g));
            }
        }
    }

    // --- MySQL ---

    #[test]
    fn uuid_parses_either_case_and_prints_lowercase() {
        let u = Uuid::parse("3E11FA47-71CA-11E1-9E33-C80AA9429562").unwrap();
        assert_eq!(u.to_string(), U1);
        assert_eq!(Uuid::parse(U1).unwrap(), u);
        for bad in [
            "3E11FA47-71CA-11E1-9E33-C80AA942956",
            "3E11FA4771CA11E19E33C80AA9429562",
            "3E11FA47-71CA-11E1-9E33-C80AA942956G",
            "3E11FA47+71CA-11E1-9E33-C80AA9429562",
        ] {
            assert!(Uuid::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mysql_set_parses_real_output() {
        // @@gtid_executed as MySQL 8.0 prints it: sources separated by ",\n", uppercase UUIDs in
        // older sets copied from docs, lowercase from 8.0 servers.
        let s = set("2174B383-5441-11E8-B90A-C80AA9429562:1-3,\n3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7-9");
        assert_eq!(s.to_string(), format!("{U2}:1-3,{U1}:1-5:7-9"));
        assert_eq!(s.count(), 11);
        assert!(set("").is_empty());
        assert!(set(" \n").is_empty());
        // Whitespace around every token, empty entries, unsorted and overlapping intervals.
        let messy = set(&format!(" {U1} : 7-9 : 1-5 : 3 : 6 ,, \n{U1}:12"));
        assert_eq!(messy.to_string(), format!("{U1}:1-9:12"));
        // 8.4 tags, in any case, each tag applying to the intervals after it.
        let tagged = set(&format!(
            "{U1}:1-5:Domain_1:1-3:4:domain_2:7,{U1}:domain_1:9"
        ));
        assert_eq!(
            tagged.to_string(),
            format!("{U1}:1-5:domain_1:1-4:9:domain_2:7")
        );
        let u1 = Uuid::parse(U1).unwrap();
        assert!(tagged.contains_gtid(u1, "domain_1", 9));
        assert!(!tagged.contains_gtid(u1, "", 9));
        assert_eq!(tagged.intervals(u1, "domain_2").len(), 1);
    }

    #[test]
    fn mysql_set_rejects_malformed() {
        for bad in [
            format!("{U1}:0"),
            format!("{U1}:5-3"),
            format!("{U1}:1-"),
            format!("{U1}:-1"),
            format!("{U1}:1-2-3"),
            format!("{U1}:9223372036854775808"),
            format!("{U1}:tag"),
            format!("{U1}:1-5:tag"),
            format!("{U1}:1-5:9tag:1"),
            format!("{U1}:1-5:a_tag_that_is_far_longer_than_32_chars:1"),
            format!("{U1}:t-g:1"),
            "0-1-5".to_owned(),
            "not-a-uuid:1".to_owned(),
        ] {
            assert!(GtidSet::parse(&bad).is_err(), "{bad:?} must not parse");
        }
        // The largest GNO MySQL allows parses.
        assert!(GtidSet::parse(&format!("{U1}:9223372036854775807")).is_ok());
        // A bare UUID names a source with no GTIDs, which MySQL accepts too.
        assert!(GtidSet::parse(U1).unwrap().is_empty());
    }

    #[test]
    fn mysql_subset_and_subtract() {
        let a = set(&format!("{U1}:1-5:7-9"));
        let b = set(&format!("{U1}:1-9,{U2}:1"));
        assert!(a.is_subset(&b));
        assert!(b.contains(&a));
        assert!(!b.is_subset(&a));
        assert_eq!(b.subtract(&a).to_string(), format!("{U2}:1,{U1}:6"));
        assert!(a.subtract(&b).is_empty());
        // GTID_SUBTRACT example shapes: holes in the middle and at both ends.
        let c = set(&format!("{U1}:1-100"));
        let d = set(&format!("{U1}:1-10:20-30:90-100"));
        assert_eq!(c.subtract(&d).to_string(), format!("{U1}:11-19:31-89"));
        // Tags are separate sources.
        let tagged = set(&format!("{U1}:t:1-3"));
        assert!(!tagged.is_subset(&c));
        assert_eq!(tagged.subtract(&c), tagged);
        assert_eq!(c.union(&tagged).to_string(), format!("{U1}:1-100:t:1-3"));
    }

    #[test]
    fn mysql_property_loop() {
        let uuids = [Uuid::parse(U1).unwrap(), Uuid::parse(U2).unwrap()];
        let tags = ["", "", "x"];
        type Model = BTreeSet<(Uuid, &'static str, u64)>;
        let mut rng = Rng(0x5eed_0002);
        let gen = |rng: &mut Rng| -> (String, Model) {
            let mut model = Model::new();
            let mut entries = Vec::new();
            for _ in 0..rng.below(5) {
                let uuid = uuids[rng.below(2) as usize];
                let tag = tags[rng.below(3) as usize];
                let mut text = if rng.chance(50) {
                    uuid.to_string().to_uppercase()
                } else {
                    uuid.to_string()
                };
                if !tag.is_empty() {
                    text.push_str(&format!(" :{tag}"));
                }
                for _ in 0..1 + rng.below(3) {
                    let start = 1 + rng.below(30);
                    let end = start + rng.below(6);
                    for g in start..=end {
                        model.insert((uuid, tag, g));
                    }
                    if start == end && rng.chance(50) {
                        text.push_str(&format!(":{start}"));
                    } else {
                        text.push_str(&format!(":{start}-{end}"));
                    }
                }
                entries.push(text);
            }
            let sep = if rng.chance(50) { ",\n" } else { "," };
            (entries.join(sep), model)
        };
        let expand = |s: &GtidSet| -> Model {
            let mut m = Model::new();
            for (u, t, ivs) in s.iter() {
                let t = tags.iter().find(|x| **x == t).copied().unwrap();
                for iv in ivs {
                    for g in iv.start..=iv.end {
                        m.insert((u, t, g));
                    }
                }
            }
            m
        };
        for _ in 0..2000 {
            let (ta, ma) = gen(&mut rng);
            let (tb, mb) = gen(&mut rng);
            let a = set(&ta);
            let b = set(&tb);
            assert_eq!(expand(&a), ma, "{ta}");
            // Normalised: intervals sorted, disjoint, non-adjacent.
            for (_, _, ivs) in a.iter() {
                assert!(!ivs.is_empty());
                for w in ivs.windows(2) {
                    assert!(w[0].end + 1 < w[1].start, "{a}");
                }
            }
            assert_eq!(set(&a.to_string()), a);
            assert_eq!(a.is_subset(&b), ma.is_subset(&mb), "{ta} ⊆ {tb}");
            let diff: Model = ma.difference(&mb).copied().collect();
            assert_eq!(expand(&a.subtract(&b)), diff, "{ta} - {tb}");
            let union: Model = ma.union(&mb).copied().collect();
            assert_eq!(expand(&a.union(&b)), union);
            assert_eq!(a.count(), ma.len() as u64);
        }
    }

    #[test]
    fn gtid_state_refuses_mixed_flavours() {
        let m = GtidState::MariaDb(pos("0-1-1"));
        let y = GtidState::MySql(set(&format!("{U1}:1")));
        assert_eq!(m.contains(&y), Err(FlavourMismatch));
        assert_eq!(y.not_in(&m), Err(FlavourMismatch));
        assert_eq!(m.contains(&m), Ok(true));
        assert_eq!(
            y.not_in(&GtidState::MySql(GtidSet::new())).unwrap(),
            y.clone()
        );
        assert_eq!(y.to_string(), format!("{U1}:1"));
    }

    /// Empty text parses as MariaDB's position, and evidence or a floor
    /// recorded before a MySQL replica received anything is empty text: it
    /// must compare as nothing, not as another flavour (a failover on MySQL
    /// refused its candidate as having "lost" the empty set it had).
    #[test]
    fn an_empty_state_of_either_flavour_is_nothing() {
        let empty_text = GtidState::parse_any("").unwrap();
        let y = GtidState::MySql(set(&format!("{U1}:1-5")));
        let y0 = GtidState::MySql(GtidSet::new());
        let m = GtidState::MariaDb(pos("0-1-7"));
        for held in [&y, &y0, &m] {
            assert_eq!(held.contains(&empty_text), Ok(true), "{held}");
            let same = |r: Result<GtidState, FlavourMismatch>| r.map(|g| g.to_string());
            assert_eq!(same(held.union(&empty_text)), Ok(held.to_string()));
            assert_eq!(same(empty_text.union(held)), Ok(held.to_string()));
            assert_eq!(same(held.not_in(&empty_text)), Ok(held.to_string()));
        }
        assert_eq!(empty_text.contains(&y), Ok(false));
        assert!(empty_text.not_in(&y).unwrap().is_empty());
    }

    #[test]
    fn a_backlog_counts_the_transactions_received_beyond_those_applied() {
        let m = |s: &str| GtidState::MariaDb(pos(s));
        // Two domains behind by 5 and 2; a domain only received counts whole.
        assert_eq!(
            m("0-1-105,1-2-7").transactions_beyond(&m("0-1-100,1-2-5")),
            Ok(7)
        );
        assert_eq!(
            m("0-1-105,1-2-7").transactions_beyond(&m("0-1-100")),
            Ok(12)
        );
        // Applied ahead of received (the IO thread restarted) is no backlog.
        assert_eq!(m("0-1-90").transactions_beyond(&m("0-1-100")), Ok(0));
        let y = |s: &str| GtidState::MySql(GtidSet::parse(s).unwrap());
        let u = "3E11FA47-71CA-11E1-9E33-C80AA9429562";
        assert_eq!(
            y(&format!("{u}:1-100:120-130")).transactions_beyond(&y(&format!("{u}:1-95"))),
            Ok(16)
        );
        let empty = GtidState::parse_any("").unwrap();
        assert_eq!(y(&format!("{u}:1-10")).transactions_beyond(&empty), Ok(10));
        assert_eq!(empty.transactions_beyond(&y(&format!("{u}:1-10"))), Ok(0));
        assert_eq!(
            m("0-1-5").transactions_beyond(&y(&format!("{u}:1-10"))),
            Err(FlavourMismatch)
        );
    }
}

#[cfg(test)]
mod binlog_state_tests {
    use super::*;

    #[test]
    fn a_diverged_transaction_is_found_per_server_id() {
        let source = parse_binlog_state("0-1-100,0-2-140").unwrap();
        // Same domain, lower seq than the source's latest, but from server 1
        // beyond what the source got from it: a position check misses it.
        let node = parse_binlog_state("0-1-101").unwrap();
        assert_eq!(binlog_state_not_in(&node, &source), vec![(0, 1, 101)]);
        let clean = parse_binlog_state("0-1-100,0-2-120").unwrap();
        assert!(binlog_state_not_in(&clean, &source).is_empty());
        assert!(parse_binlog_state("").unwrap().is_empty());
    }
}
