//! Sizes (`300MiB`, `1.4GiB`, `1048576`) and durations (`30s`, `20m`, `1h`).

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// The unit syntax shown in help messages.
pub const SIZE_SYNTAX: &str = "a size is a whole number of bytes or a number followed by one of \
KiB, MiB, GiB (powers of 1024) or KB, MB, GB (powers of 1000), for example `300MiB` or `1.4GiB`";

/// The duration syntax shown in help messages.
pub const DURATION_SYNTAX: &str =
    "a duration is a whole number followed by s, m or h, for example `30s`, `20m` or `1h`";

const SIZE_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)?$";
const DURATION_PATTERN: &str = r"^[0-9]+(s|m|h)$";

/// A number of bytes, written as an integer or a string with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The number of bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

/// Why a size or duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitError(pub String);

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses `1.4GiB`, `300 MiB`, `64KB`, `1024` or `1024B` into bytes, rounding down.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim_start();
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(UnitError(format!(
                "unknown size unit `{other}` in `{text}`"
            )));
        }
    };
    let bad = || UnitError(format!("`{text}` is not a size"));
    let (int_part, frac_part) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int_part.is_empty() || !int_part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if num.contains('.') && (frac_part.is_empty() || !frac_part.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad());
    }
    let too_big = || UnitError(format!("`{text}` is larger than 2^64 bytes"));
    let int: u64 = int_part.parse().map_err(|_| too_big())?;
    let mut total = int.checked_mul(mult).ok_or_else(too_big)?;
    // Exact decimal arithmetic for the fraction: floor(0.frac * mult).
    if !frac_part.is_empty() {
        let digits = &frac_part[..frac_part.len().min(18)];
        let numer: u128 = digits.parse().map_err(|_| bad())?;
        let denom: u128 = 10u128.pow(digits.len() as u32);
        let extra = (numer * mult as u128) / denom;
        total = total.checked_add(extra as u64).ok_or_else(too_big)?;
    }
    Ok(total)
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_bytes(self.0))
    }
}

/// Human form of a byte count with binary units, for example `1.40 GiB` or `512 B`.
pub fn format_bytes(n: u64) -> String {
    SizeUnits::Binary.format(n)
}

/// The kind of size units a manifest is written in: binary (`KiB`, `MiB`, `GiB`, `TiB`, the
/// default) or decimal (`KB`, `MB`, `GB`, `TB`). Messages that suggest a size use the same.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeUnits {
    #[default]
    Binary,
    Decimal,
}

impl SizeUnits {
    /// The units the sizes `written` were most likely written in: decimal when more of them are
    /// whole multiples of 1000 (and not of 1024) than the other way round, else binary.
    pub fn of(written: impl IntoIterator<Item = u64>) -> SizeUnits {
        let (mut decimal, mut binary) = (0usize, 0usize);
        for n in written {
            let by_1000 = n >= 1000 && n % 1000 == 0;
            let by_1024 = n >= 1024 && n % 1024 == 0;
            match (by_1000, by_1024) {
                (true, false) => decimal += 1,
                (false, true) => binary += 1,
                _ => {}
            }
        }
        if decimal > binary {
            SizeUnits::Decimal
        } else {
            SizeUnits::Binary
        }
    }

    /// The units, largest first.
    fn table(self) -> [(&'static str, u64); 4] {
        match self {
            SizeUnits::Binary => [
                ("TiB", 1 << 40),
                ("GiB", 1 << 30),
                ("MiB", 1 << 20),
                ("KiB", 1 << 10),
            ],
            SizeUnits::Decimal => [
                ("TB", 1_000_000_000_000),
                ("GB", 1_000_000_000),
                ("MB", 1_000_000),
                ("KB", 1_000),
            ],
        }
    }

    /// `n` in these units with two decimals, rounded to nearest (`18.00 MiB`, `18.87 MB`), or
    /// plain bytes below the smallest unit (`512 B`).
    pub fn format(self, n: u64) -> String {
        for (name, size) in self.table() {
            if n >= size {
                return format!("{:.2} {name}", n as f64 / size as f64);
            }
        }
        format!("{n} B")
    }

    /// `n` in these units with two decimals rounded down, as a manifest value (`17.99 MiB`;
    /// plain bytes, no unit, below the smallest unit): a size suggested as a limit never
    /// exceeds `n` once parsed back.
    pub fn format_floor(self, n: u64) -> String {
        for (name, unit) in self.table() {
            if n >= unit {
                let hundredths = (n as u128 * 100) / unit as u128;
                return format!("{}.{:02} {name}", hundredths / 100, hundredths % 100);
            }
        }
        n.to_string()
    }
}

/// A byte count in MiB with two decimals and no unit (a table column headed `MiB`), for
/// example `1433.60`; negative for a negative count.
pub fn format_mib(n: i128) -> String {
    format!("{:.2}", n as f64 / (1u64 << 20) as f64)
}

/// A count with its noun in the right number: `counted(1, "error")` is `1 error`,
/// `counted(2, "error")` is `2 errors`. Nouns whose plural is not `<noun>s` go through
/// [`counted_as`].
pub fn counted(n: usize, noun: &str) -> String {
    counted_as(n, noun, &format!("{noun}s"))
}

/// A count with the singular or the plural noun given: `counted_as(2, "mismatch",
/// "mismatches")` is `2 mismatches`.
pub fn counted_as(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Human form of a signed byte count (negative headroom).
pub fn format_signed_bytes(n: i64) -> String {
    if n < 0 {
        format!("-{}", format_bytes(n.unsigned_abs()))
    } else {
        format_bytes(n as u64)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(SIZE_SYNTAX)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("a size cannot be negative ({v})")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ByteSize, E> {
                if v.is_finite() && (0.0..1.8e19).contains(&v) {
                    Ok(ByteSize(v.floor() as u64))
                } else {
                    Err(E::custom(format!("`{v}` is not a size")))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(|e| E::custom(e.0))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size: whole bytes, or a number with a unit KiB, MiB, GiB (1024-based) or KB, MB, GB (1000-based), such as `300MiB` or `1.4GiB` (rounded down to whole bytes).",
            // One schema rather than `anyOf`, so that editors report the precise problem:
            // `minimum` applies to numbers only and `pattern` to strings only.
            "type": ["integer", "string"],
            "minimum": 0,
            "pattern": SIZE_PATTERN,
            "patternErrorMessage": SIZE_SYNTAX
        })
    }
}

/// A duration in whole seconds, written `30s`, `20m` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub u64);

impl Duration {
    /// The duration in seconds.
    pub fn seconds(self) -> u64 {
        self.0
    }
}

/// Parses `30s`, `20m` or `1h` into seconds.
pub fn parse_duration(text: &str) -> Result<u64, UnitError> {
    let t = text.trim();
    let bad = || UnitError(format!("`{text}` is not a duration"));
    let (num, unit) = t.split_at(t.len().saturating_sub(1));
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(bad()),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(bad)
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(3600) && self.0 > 0 {
            write!(f, "{}h", self.0 / 3600)
        } else if self.0.is_multiple_of(60) && self.0 > 0 {
            write!(f, "{}m", self.0 / 60)
        } else {
            write!(f, "{}s", self.0)
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(DURATION_SYNTAX)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                parse_duration(v).map(Duration).map_err(|e| E::custom(e.0))
            }
        }
        d.deserialize_str(V)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration: a whole number followed by s, m or h, such as `30s`, `20m` or `1h`.",
            "type": "string",
            "pattern": DURATION_PATTERN,
            "patternErrorMessage": DURATION_SYNTAX
        })
    }
}

/// `s` safe to print on a terminal: control characters (ANSI escapes, carriage returns, NUL,
/// ...) and bidirectional overrides become `\u{..}` escapes, so a name read from an untrusted
/// file cannot move the cursor, recolour the terminal or hide text.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    };
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_take_the_right_number() {
        assert_eq!(counted(0, "error"), "0 errors");
        assert_eq!(counted(1, "error"), "1 error");
        assert_eq!(counted(2, "file"), "2 files");
        assert_eq!(counted_as(1, "mismatch", "mismatches"), "1 mismatch");
        assert_eq!(counted_as(3, "mismatch", "mismatches"), "3 mismatches");
    }

    #[test]
    fn printable_escapes_terminal_controls() {
        assert_eq!(printable("model.weight"), "model.weight");
        assert_eq!(printable("a\x1b[31mred\r"), "a\\u{1b}[31mred\\u{d}");
        assert_eq!(printable("x\u{202e}y"), "x\\u{202e}y");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("300MiB").unwrap(), 300 << 20);
        assert_eq!(parse_size("1.4GiB").unwrap(), 1_503_238_553);
        assert_eq!(parse_size("64KB").unwrap(), 64_000);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("2 GiB").unwrap(), 2 << 30);
        assert!(parse_size("1.4 GiBs").is_err());
        assert!(parse_size("-3MiB").is_err());
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("1.GiB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), 30);
        assert_eq!(parse_duration("20m").unwrap(), 1200);
        assert_eq!(parse_duration("1h").unwrap(), 3600);
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("m").is_err());
    }
}
