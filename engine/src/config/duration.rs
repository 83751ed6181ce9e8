//! How a [`Duration`] is written in a config file: an integer followed by
//! its unit, `us`, `ms`, `s`, `m` or `h` (`"100us"`, `"500ms"`, `"10s"`,
//! `"2m"`).
//!
//! # Design
//!
//! Bare integers are refused so that a unit is never guessed; fractions and
//! signs are refused so that there is one way to write each value. Use it
//! on a field with `#[serde(with = "shoal_engine::config::duration")]`.
//! Serializing writes the largest unit that divides the value, so what is
//! written reads back the same; a duration that is not a whole number of
//! microseconds cannot be written.

use std::fmt;
use std::time::Duration;

/// Units from the largest, with their length in microseconds.
const UNITS: [(&str, u64); 5] = [
    ("h", 3_600_000_000),
    ("m", 60_000_000),
    ("s", 1_000_000),
    ("ms", 1_000),
    ("us", 1),
];

/// Reads `"<integer><unit>"`.
pub fn parse(s: &str) -> Result<Duration, String> {
    const WHICH: &str = "the unit must be us, ms, s, m or h (e.g. \"500ms\", \"10s\")";
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. \"500ms\", \"10s\", \"2m\""))?;
    let d = match unit.trim() {
        "us" | "µs" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("invalid duration {s:?}: {WHICH}")),
    };
    Ok(d)
}

/// Writes `d` in the largest unit that divides it (`"0s"` for zero), or
/// `None` if it is not a whole number of microseconds.
pub fn format(d: Duration) -> Option<String> {
    let nanos = d.as_nanos();
    let us = u64::try_from(nanos / 1_000).ok()?;
    if u128::from(us) * 1_000 != nanos {
        return None;
    }
    if us == 0 {
        return Some("0s".to_string());
    }
    UNITS
        .iter()
        .find(|(_, len)| us / len * len == us)
        .map(|(unit, len)| format!("{}{unit}", us / len))
}

/// serde `with` target: serializes as [`format()`] does.
pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    match format(*d) {
        Some(text) => s.serialize_str(&text),
        None => Err(serde::ser::Error::custom(format!(
            "{d:?} is not a whole number of microseconds"
        ))),
    }
}

/// serde `with` target: deserializes as [`parse`] does.
pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct Text;
    impl serde::de::Visitor<'_> for Text {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration string such as \"500ms\", \"10s\" or \"2m\"")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            parse(v).map_err(E::custom)
        }
    }
    d.deserialize_str(Text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_integers_with_a_unit_only() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse(" 2m "), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("100us"), Ok(Duration::from_micros(100)));
        assert!(parse("10").is_err());
        assert!(parse("s").is_err());
        assert!(parse("1.5s").is_err());
        assert!(parse("-1s").is_err());
    }

    #[test]
    fn formats_in_the_largest_dividing_unit_and_reads_back() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_micros(100), "100us"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(10), "10s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(7200), "2h"),
        ] {
            assert_eq!(format(d).as_deref(), Some(text));
            assert_eq!(parse(text), Ok(d));
        }
        assert_eq!(format(Duration::from_nanos(1500)), None);
    }
}
