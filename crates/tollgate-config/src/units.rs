//! Human-written durations (`250ms`, `2s`, `1m`, `1y`), sizes (`8KiB`, `10MiB`)
//! and timestamps (`2027-05-01`, `2027-05-01T12:00:00Z`).
//!
//! All serialise back to the form a person wrote, so that an exported config
//! reads like the one they wrote.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::OffsetDateTime;

/// A duration written with a unit: `ms`, `s`, `m`, `h`, `d`, `w` or `y` (365 days).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }
    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

const UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
    ("w", 7 * 86_400_000),
    ("y", 365 * 86_400_000),
];

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        let (number, unit) = s.split_at(digits);
        if number.is_empty() {
            return Err(format!(
                "invalid duration `{s}`: expected a number followed by a unit, like 250ms, 2s, 1m"
            ));
        }
        let value: u64 = number
            .parse()
            .map_err(|_| format!("invalid duration `{s}`: number too large"))?;
        let Some(&(_, factor)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(format!(
                "invalid duration `{s}`: unknown unit `{unit}` (use ms, s, m, h, d, w or y)"
            ));
        };
        let millis = value
            .checked_mul(factor)
            .ok_or_else(|| format!("invalid duration `{s}`: too large"))?;
        Ok(Duration::from_millis(millis))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis() as u64;
        if millis == 0 {
            return f.write_str("0s");
        }
        // The largest unit that divides the value exactly.
        for &(name, factor) in UNITS.iter().rev() {
            if millis.is_multiple_of(factor) {
                return write!(f, "{}{}", millis / factor, name);
            }
        }
        write!(f, "{millis}ms")
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// A byte size: a plain number of bytes, or a number with `B`, `KiB`, `MiB`, `GiB`
/// (powers of 1024) or `KB`, `MB`, `GB` (powers of 1000).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Size(pub u64);

const SIZE_UNITS: &[(&str, u64)] = &[
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("B", 1),
    ("", 1),
];

impl Size {
    pub const fn kib(n: u64) -> Self {
        Size(n << 10)
    }
    pub const fn mib(n: u64) -> Self {
        Size(n << 20)
    }
    pub fn bytes(self) -> u64 {
        self.0
    }
    /// The size as a `usize`, saturating on 32-bit targets.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        let (number, unit) = s.split_at(digits);
        let unit = unit.trim();
        if number.is_empty() {
            return Err(format!(
                "invalid size `{s}`: expected a number followed by a unit, like 8KiB or 10MiB"
            ));
        }
        let value: u64 = number
            .parse()
            .map_err(|_| format!("invalid size `{s}`: number too large"))?;
        let Some(&(_, factor)) = SIZE_UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(format!(
                "invalid size `{s}`: unknown unit `{unit}` (use B, KiB, MiB, GiB, KB, MB or GB)"
            ));
        };
        value
            .checked_mul(factor)
            .map(Size)
            .ok_or_else(|| format!("invalid size `{s}`: too large"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for unit in ["GiB", "MiB", "KiB"] {
            let (_, factor) = SIZE_UNITS.iter().find(|(n, _)| *n == unit).unwrap();
            if self.0 != 0 && self.0.is_multiple_of(*factor) {
                return write!(f, "{}{}", self.0 / factor, unit);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl de::Visitor<'_> for SizeVisitor {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 8KiB, 10MiB or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(SizeVisitor)
    }
}

/// An instant written as an RFC 3339 date-time (`2027-05-01T12:00:00Z`,
/// `2027-05-01T14:00:00+02:00`) or a plain date (`2027-05-01`, meaning its
/// midnight UTC). Serialises back in the form it was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Timestamp {
    at: OffsetDateTime,
    date_only: bool,
}

const DATE: &[time::format_description::BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]");

impl Timestamp {
    /// A date-time (not a plain date).
    pub fn from_datetime(at: OffsetDateTime) -> Self {
        Timestamp {
            at,
            date_only: false,
        }
    }

    pub fn get(self) -> OffsetDateTime {
        self.at
    }

    /// Seconds since the Unix epoch (negative before 1970).
    pub fn unix_seconds(self) -> i64 {
        self.at.unix_timestamp()
    }
}

impl FromStr for Timestamp {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(at) = OffsetDateTime::parse(s, &Rfc3339) {
            return Ok(Timestamp::from_datetime(at));
        }
        match time::Date::parse(s, DATE) {
            Ok(date) => Ok(Timestamp {
                at: date.midnight().assume_utc(),
                date_only: true,
            }),
            Err(_) => Err(format!(
                "invalid date `{s}`: expected an RFC 3339 date-time like 2027-05-01T00:00:00Z or a date like 2027-05-01"
            )),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = if self.date_only {
            self.at.date().format(DATE)
        } else {
            self.at.format(&Rfc3339)
        };
        f.write_str(&text.map_err(|_| fmt::Error)?)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        for (text, ms) in [
            ("250ms", 250),
            ("2s", 2_000),
            ("1m", 60_000),
            ("1h", 3_600_000),
            ("1y", 365 * 86_400_000),
        ] {
            let d: Duration = text.parse().unwrap();
            assert_eq!(d.get().as_millis() as u64, ms, "{text}");
            assert_eq!(d.to_string(), text);
        }
        assert_eq!("90s".parse::<Duration>().unwrap().to_string(), "90s");
        assert_eq!("120s".parse::<Duration>().unwrap().to_string(), "2m");
    }

    #[test]
    fn bad_durations_are_rejected() {
        for text in ["", "s", "10", "10 parsecs", "-1s", "1.5s"] {
            assert!(text.parse::<Duration>().is_err(), "{text}");
        }
    }

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!("8KiB".parse::<Size>().unwrap(), Size(8192));
        assert_eq!("10MiB".parse::<Size>().unwrap(), Size(10 << 20));
        assert_eq!("1MB".parse::<Size>().unwrap(), Size(1_000_000));
        assert_eq!("512".parse::<Size>().unwrap(), Size(512));
        assert_eq!(Size(32 << 10).to_string(), "32KiB");
        assert_eq!(Size(100).to_string(), "100B");
        assert!("12 furlongs".parse::<Size>().is_err());
    }

    #[test]
    fn timestamps_parse_both_forms_and_print_as_written() {
        let date: Timestamp = "2027-05-01".parse().unwrap();
        assert_eq!(date.unix_seconds(), 1_809_129_600);
        assert_eq!(date.to_string(), "2027-05-01");
        let datetime: Timestamp = "2027-05-01T02:00:00+02:00".parse().unwrap();
        assert_eq!(datetime.unix_seconds(), 1_809_129_600);
        assert_eq!(datetime.to_string(), "2027-05-01T02:00:00+02:00");
        let utc: Timestamp = "2027-05-01T00:00:00Z".parse().unwrap();
        assert_eq!(utc.get(), date.get());
        for text in [
            "",
            "tomorrow",
            "2027-13-01",
            "2027-05-01 00:00",
            "01/05/2027",
        ] {
            assert!(text.parse::<Timestamp>().is_err(), "{text}");
        }
    }
}
