//! The one rule for time in KV values: a field named `*_ms` holding Unix
//! milliseconds.
//!
//! Values written before the rule used `at`, in seconds (fence,
//! quarantine) or in milliseconds (rejoin request). During a rolling
//! upgrade old agents keep writing them, so every reader still accepts
//! `at` and tells the unit apart by magnitude (see [`legacy_at_to_ms`]);
//! writers write only the `*_ms` field. An old reader of a new value loses
//! nothing it used: no reader before the rule looked at `at`.

/// The boundary between a legacy `at` in seconds and one in milliseconds.
///
/// 10^11 seconds is the year 5138; 10^11 milliseconds is 3 March 1973.
/// Every real timestamp since 1973 in milliseconds is above it, every one
/// before 5138 in seconds below it, so the unit is never ambiguous.
pub const LEGACY_SECONDS_BELOW: u64 = 100_000_000_000;

/// Reads a legacy `at` value, in seconds or in milliseconds, as Unix
/// milliseconds: below [`LEGACY_SECONDS_BELOW`] it is seconds.
pub fn legacy_at_to_ms(at: u64) -> u64 {
    if at < LEGACY_SECONDS_BELOW {
        at.saturating_mul(1000)
    } else {
        at
    }
}

/// The time a value records: its `at_ms` when present, else its legacy
/// `at` (see [`legacy_at_to_ms`]).
pub(crate) fn at_ms_or_legacy(at_ms: Option<u64>, at: Option<u64>) -> Option<u64> {
    at_ms.or(at.map(legacy_at_to_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_at_by_magnitude() {
        // What the coordinator and `successover fence` wrote: seconds.
        assert_eq!(legacy_at_to_ms(1_700_000_000), 1_700_000_000_000);
        // What `successover rejoin` wrote: milliseconds.
        assert_eq!(legacy_at_to_ms(1_700_000_000_123), 1_700_000_000_123);
        assert_eq!(legacy_at_to_ms(0), 0);
        assert_eq!(
            legacy_at_to_ms(LEGACY_SECONDS_BELOW - 1),
            (LEGACY_SECONDS_BELOW - 1) * 1000
        );
        assert_eq!(legacy_at_to_ms(LEGACY_SECONDS_BELOW), LEGACY_SECONDS_BELOW);
        assert_eq!(legacy_at_to_ms(u64::MAX), u64::MAX);
        assert_eq!(at_ms_or_legacy(Some(5), Some(1)), Some(5), "at_ms wins");
        assert_eq!(at_ms_or_legacy(None, Some(1)), Some(1_000));
        assert_eq!(at_ms_or_legacy(None, None), None);
    }
}
