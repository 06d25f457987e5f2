//! Timestamps as the stored and published JSON carries them.
//!
//! The Python original wrote `datetime.utcnow()` values: ISO 8601 without a zone, with or
//! without microseconds. Those are read as UTC. This service writes RFC 3339 in UTC with
//! microseconds, which the original's pydantic models read back.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};

/// Parses RFC 3339, or a zone-less ISO 8601 date-time taken as UTC.
pub fn parse(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(with_zone) = DateTime::parse_from_rfc3339(text) {
        return Some(with_zone.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|naive| naive.and_utc())
}

/// RFC 3339, UTC, microseconds: `2025-01-15T10:30:00.123456Z`.
pub fn format(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Now, truncated to the microseconds that [`format()`] keeps, so a value read back equals the
/// value written.
pub fn now() -> DateTime<Utc> {
    let now = Utc::now() + test_clock::offset();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// Tests move the wall clock forward on their own thread, to see what happens "later" without
/// waiting for it.
#[cfg(test)]
pub(crate) mod test_clock {
    use std::cell::Cell;

    thread_local! {
        static OFFSET: Cell<chrono::Duration> = const { Cell::new(chrono::Duration::zero()) };
    }

    pub(crate) fn offset() -> chrono::Duration {
        OFFSET.with(Cell::get)
    }

    /// Moves this thread's clock forward by `by`.
    pub(crate) fn advance(by: std::time::Duration) {
        let by =
            chrono::Duration::from_std(by).expect("a test advances the clock by a sane amount");
        OFFSET.with(|offset| offset.set(offset.get() + by));
    }
}

#[cfg(not(test))]
mod test_clock {
    pub(super) fn offset() -> chrono::Duration {
        chrono::Duration::zero()
    }
}

/// Reads a `DateTime<Utc>` field in this format (serde `deserialize_with`).
pub(crate) mod serde_format {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, de::Error};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse(&text)
            .ok_or_else(|| D::Error::custom(format!("not an ISO 8601 date-time: {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_originals_zone_less_timestamps_as_utc() {
        let plain = parse("2025-01-15T10:30:00").unwrap();
        assert_eq!(format(plain), "2025-01-15T10:30:00.000000Z");
        let micros = parse("2025-01-15T10:30:00.123456").unwrap();
        assert_eq!(format(micros), "2025-01-15T10:30:00.123456Z");
    }

    #[test]
    fn reads_rfc3339_with_any_offset() {
        let shifted = parse("2025-01-15T12:30:00+02:00").unwrap();
        assert_eq!(format(shifted), "2025-01-15T10:30:00.000000Z");
        assert!(parse("yesterday").is_none());
        assert!(parse("2025-01-15").is_none());
    }

    #[test]
    fn now_survives_a_round_trip() {
        let at = now();
        assert_eq!(parse(&format(at)), Some(at));
    }
}
