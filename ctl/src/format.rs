//! Text helpers for the human output: aligned tables, values from KV made
//! safe for a terminal, times and durations.

use std::borrow::Cow;

use successover_common::consul::KvPair;

/// A value read from KV, fit for a terminal. Anyone with KV write access
/// could otherwise put escape sequences or newlines into an operator's
/// terminal, or fake extra table rows; control characters are shown
/// escaped (`\n`, `\u{1b}`).
pub fn clean(s: &str) -> Cow<'_, str> {
    if s.chars().any(char::is_control) {
        Cow::Owned(
            s.chars()
                .map(|c| {
                    if c.is_control() {
                        c.escape_debug().to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect(),
        )
    } else {
        Cow::Borrowed(s)
    }
}

/// A KV value as text (lossy: a stray byte should not hide the rest).
pub fn value_text(pair: &KvPair) -> String {
    String::from_utf8_lossy(pair.value.as_deref().unwrap_or_default()).into_owned()
}

/// Rows of cells printed in columns two spaces apart; every cell goes
/// through [`clean`], so callers can pass KV values as they are.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: AsRef<str>>(header: &[S]) -> Table {
        let mut t = Table::default();
        t.row(header);
        t
    }

    pub fn row<S: AsRef<str>>(&mut self, cells: &[S]) {
        self.rows.push(
            cells
                .iter()
                .map(|c| clean(c.as_ref()).into_owned())
                .collect(),
        );
    }

    pub fn is_empty(&self) -> bool {
        self.rows.len() <= 1
    }

    /// The table, each line prefixed with `indent`, without trailing spaces.
    pub fn render(&self, indent: &str) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::from(indent);
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = widths[i] - cell.chars().count();
                line.push_str(&" ".repeat(pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `label  value` lines with the labels aligned, values cleaned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (label, value) in pairs {
        out.push_str(&format!("{label:<width$}  {}", clean(value)));
        let trimmed = out.trim_end_matches(' ').len();
        out.truncate(trimmed);
        out.push('\n');
    }
    out
}

/// A Unix time in milliseconds as UTC, `2023-11-14 22:13:20Z`: history is
/// read across time zones, and UTC is what the logs of every host agree on.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`), so the CLI needs no date crate for one format.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A short age or duration: `850ms`, `12s`, `3m04s`, `2h05m`, `3d04h`.
pub fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

pub fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

pub fn or_dash(s: Option<&str>) -> &str {
    s.unwrap_or("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert!(matches!(clean("db1:3306"), Cow::Borrowed("db1:3306")));
        assert_eq!(clean("db1\n  server evil"), "db1\\n  server evil");
        assert_eq!(clean("\u{1b}[31mred"), "\\u{1b}[31mred");
    }

    #[test]
    fn tables_align_on_characters() {
        let mut t = Table::new(&["NODE", "FROM → TO", "X"]);
        t.row(&["db1", "a → b", ""]);
        t.row(&["db10\n", "-", "z"]);
        assert_eq!(
            t.render("  "),
            "  NODE    FROM → TO  X\n  db1     a → b\n  db10\\n  -          z\n"
        );
        assert!(!t.is_empty());
        assert!(Table::new(&["A"]).is_empty());
    }

    #[test]
    fn aligned_fields() {
        assert_eq!(
            fields(&[("source", "db1:3306".into()), ("fenced", "".into())]),
            "source  db1:3306\nfenced\n"
        );
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14 22:13:20Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00Z");
        assert_eq!(utc(4_107_542_399_000), "2100-02-28 23:59:59Z");
    }

    #[test]
    fn ages() {
        assert_eq!(age(850), "850ms");
        assert_eq!(age(12_400), "12s");
        assert_eq!(age(184_000), "3m04s");
        assert_eq!(age(7_500_000), "2h05m");
        assert_eq!(age(3 * 86_400_000 + 4 * 3_600_000), "3d04h");
    }
}
