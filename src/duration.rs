//! Human-readable durations for specs stored as JSON and written in fleet files:
//! `"500ms"`, `"10s"`, `"2m"`, `"1h"`, `"1.5s"`, `"0"`. Pure; imports nothing of the crate.

use std::time::Duration;

/// Formats a duration with the largest unit that keeps it exact: `"1500ms"`, `"10s"`, `"2m"`.
pub(crate) fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    const UNITS: [(u128, &str); 6] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    if nanos == 0 {
        return "0s".to_string();
    }
    for (size, unit) in UNITS {
        if nanos.is_multiple_of(size) {
            return format!("{}{unit}", nanos / size);
        }
    }
    unreachable!("every duration is a whole number of nanoseconds")
}

/// Parses `"<number><unit>"` with unit one of `ns`, `us`, `ms`, `s`, `m`, `h` (a bare `0` is
/// allowed). The number may have a fractional part. Errors are lowercase phrases.
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("duration '{s}' has no unit (use ms, s, m or h)"))?;
    let (number, unit) = s.split_at(split);
    let unit_nanos: u64 = match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" | "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => {
            return Err(format!(
                "duration '{s}' has an unknown unit '{unit}' (use ms, s, m or h)"
            ));
        }
    };
    let malformed = || format!("duration '{s}' is not a number followed by a unit");
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(malformed());
    }
    if !number.contains('.') {
        // Whole numbers are exact, whatever their size.
        let n: u64 = number
            .parse()
            .map_err(|_| format!("duration '{s}' is too large"))?;
        let nanos = u128::from(n) * u128::from(unit_nanos);
        let secs = u64::try_from(nanos / 1_000_000_000)
            .map_err(|_| format!("duration '{s}' is too large"))?;
        return Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32));
    }
    let value: f64 = number.parse().map_err(|_| malformed())?;
    Duration::try_from_secs_f64(value * unit_nanos as f64 / 1e9)
        .map_err(|_| format!("duration '{s}' is too large"))
}

/// `from + d`, saturating at about a century ahead instead of overflowing: a deadline given
/// as `Duration::MAX` means "never" in practice.
pub(crate) fn deadline(from: std::time::Instant, d: Duration) -> std::time::Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    from.checked_add(d.min(CENTURY)).unwrap_or(from)
}

/// `#[serde(with = "crate::duration::serde_str")]` for a `Duration` field.
pub(crate) mod serde_str {
    use serde::{Deserialize, Deserializer, Serializer, de};
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse(&text).map_err(de::Error::custom)
    }
}

/// `#[serde(with = "crate::duration::serde_opt")]` for an `Option<Duration>` field (with
/// `default`, so that a missing key is `None`).
pub(crate) mod serde_opt {
    use serde::{Deserialize, Deserializer, Serializer, de};
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format(*d)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        super::parse(&text).map(Some).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
    }

    #[test]
    fn rejects_bad_text_with_a_reason() {
        assert!(parse("10").unwrap_err().contains("no unit"));
        assert!(parse("10 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse("s").is_err());
        assert!(parse("").is_err());
        assert!(parse("1e400s").is_err());
        assert!(parse("-1s").is_err());
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(nanos in 0u64..u64::MAX / 4) {
            let d = Duration::from_nanos(nanos);
            prop_assert_eq!(parse(&format(d)), Ok(d));
        }

        #[test]
        fn parse_never_panics(text in ".{0,24}") {
            let _ = parse(&text);
        }
    }
}
