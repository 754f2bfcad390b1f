//! Small value types of the metadata: rates, human durations, byte sizes and secret references.
//!
//! Each parses from the text an admin writes (`10/s`, `30s`, `1MB`, `${env:TOKEN}`) and refuses
//! anything else with a message that shows a correct example. A [`Secret`] never shows its
//! value in `Debug` or `Display`; a [`SecretRef`] is only the reference, never the value.

use std::borrow::Cow;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use secrecy::{ExposeSecret, SecretString};
use serde::de::{self, Deserialize, Deserializer};

use super::yaml::quote;

/// A rate limit: `count` calls per `per`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub count: f64,
    pub per: Duration,
}

impl Rate {
    /// Parses `10/s`, `600/min`, `5/h`, `0.5/s`.
    ///
    /// # Errors
    /// A message naming the bad text and showing the expected form.
    pub fn parse(text: &str) -> Result<Rate, String> {
        let bad = || {
            format!(
                "{} is not a rate; expected <number>/<s|min|h>, like \"10/s\"",
                quote(text)
            )
        };
        let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: f64 = count.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "min" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if !count.is_finite() || count <= 0.0 {
            return Err(format!(
                "{} is not a rate above zero; expected <number>/<s|min|h>, like \"10/s\"",
                quote(text)
            ));
        }
        Ok(Rate { count, per })
    }

    /// Calls per second.
    pub fn per_second(&self) -> f64 {
        self.count / self.per.as_secs_f64()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Rate::parse(&text).map_err(de::Error::custom)
    }
}

impl JsonSchema for Rate {
    fn schema_name() -> Cow<'static, str> {
        "Rate".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*/\\s*(s|min|h)\\s*$",
            "description": "Calls allowed per second, minute or hour, like `10/s` or `600/min`.",
            "examples": ["10/s", "600/min"]
        })
    }
}

/// A duration written the human way: `500ms`, `30s`, `10m`, `2h`, `1d`, or a sum like `1m30s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// # Errors
    /// A message naming the bad text and showing the expected form.
    pub fn parse(text: &str) -> Result<HumanDuration, String> {
        let bad = || {
            format!(
                "{} is not a duration; expected <number><ms|s|m|h|d>, like \"30s\" or \"10m\"",
                quote(text)
            )
        };
        let s = text.trim();
        if s.is_empty() {
            return Err(bad());
        }
        let mut total = Duration::ZERO;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(bad());
            }
            let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            let millis_per = match &rest[..unit_len] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                _ => return Err(bad()),
            };
            rest = &rest[unit_len..];
            let part = number.checked_mul(millis_per).ok_or_else(bad)?;
            total = total
                .checked_add(Duration::from_millis(part))
                .ok_or_else(bad)?;
        }
        Ok(HumanDuration(total))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else if ms.is_multiple_of(3_600_000) && ms > 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) && ms > 0 {
            write!(f, "{}m", ms / 60_000)
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        HumanDuration::parse(&text).map_err(de::Error::custom)
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^\\s*([0-9]+(ms|s|m|h|d))+\\s*$",
            "description": "A duration like `500ms`, `30s`, `10m`, `2h`, `1d` or `1m30s`.",
            "examples": ["30s", "10m"]
        })
    }
}

/// A size in bytes written the way PostgreSQL takes it: `1048576`, `512B`, `64KB`, `1MB`,
/// `5GB`, or with a decimal point when that makes whole bytes (`1.5MB`). Units are powers of
/// 1024, so `KB`, `kB` and `KiB` are all 1024 bytes (`MB`/`MiB`, `GB`/`GiB` alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

const SIZE_EXPECTED: &str = "expected a number of bytes or <number><B|KB|MB|GB>, like \"1MB\"";

impl ByteSize {
    pub const KIB: u64 = 1024;
    pub const MIB: u64 = 1024 * 1024;
    pub const GIB: u64 = 1024 * 1024 * 1024;
    pub const TIB: u64 = 1024 * 1024 * 1024 * 1024;

    /// Parses `1048576`, `512B`, `64KB`, `64KiB`, `64kB`, `1 MB`, `1.5MB`, `5GiB`.
    ///
    /// # Errors
    /// A message naming the bad text and showing the expected form.
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let bad = || format!("{} is not a size; {SIZE_EXPECTED}", quote(text));
        let s = text.trim();
        let number_len = s
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        let (number, unit) = s.split_at(number_len);
        // The unit as a power of two.
        let shift: u32 = match unit.trim_start() {
            "" | "B" => 0,
            "KB" | "kB" | "KiB" => 10,
            "MB" | "MiB" => 20,
            "GB" | "GiB" => 30,
            _ => return Err(bad()),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let has_point = number.contains('.');
        if whole.is_empty() || (has_point && fraction.is_empty()) || fraction.contains('.') {
            return Err(bad());
        }
        let too_large = || format!("{} is too large a size; {SIZE_EXPECTED}", quote(text));
        let whole: u64 = whole.parse().map_err(|_| too_large())?;
        let whole = whole.checked_mul(1 << shift).ok_or_else(too_large)?;
        // The fraction, exactly: `0.f × 2^shift` is whole only when the fraction, without its
        // trailing zeros, has at most `shift` digits (1/2^k has k decimals) and `f` is a
        // multiple of 5^digits; then it is `f / 5^digits × 2^(shift - digits)`.
        let fraction = fraction.trim_end_matches('0');
        let digits = u32::try_from(fraction.len()).unwrap_or(u32::MAX);
        let part = if fraction.is_empty() {
            0
        } else {
            let not_whole = || {
                format!(
                    "{} is not a whole number of bytes; {SIZE_EXPECTED}",
                    quote(text)
                )
            };
            if digits > shift {
                return Err(not_whole());
            }
            let f: u128 = fraction.parse().map_err(|_| bad())?;
            let five = 5u128.pow(digits);
            if !f.is_multiple_of(five) {
                return Err(not_whole());
            }
            // Below 2^shift, so it fits.
            u64::try_from((f / five) << (shift - digits)).map_err(|_| bad())?
        };
        whole.checked_add(part).map(ByteSize).ok_or_else(too_large)
    }
}

impl fmt::Display for ByteSize {
    /// The largest unit that shows the size exactly: `1MB`, `1536KB`, `100B`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, size) in [("GB", Self::GIB), ("MB", Self::MIB), ("KB", Self::KIB)] {
            if n > 0 && n.is_multiple_of(size) {
                return write!(f, "{}{unit}", n / size);
            }
        }
        write!(f, "{n}B")
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Size;
        impl de::Visitor<'_> for Size {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size, like \"1MB\"")
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(n))
            }

            fn visit_i64<E: de::Error>(self, n: i64) -> Result<ByteSize, E> {
                self.visit_str(&n.to_string())
            }

            fn visit_f64<E: de::Error>(self, n: f64) -> Result<ByteSize, E> {
                self.visit_str(&n.to_string())
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<ByteSize, E> {
                ByteSize::parse(text).map_err(E::custom)
            }
        }
        d.deserialize_str(Size)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": ["integer", "string"],
            "minimum": 0,
            "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*(B|KB|kB|KiB|MB|MiB|GB|GiB)?\\s*$",
            "description": "A size: a number of bytes, or a number and a unit, `B`, `KB`, `MB` or `GB` (powers of 1024), like `512KB` or `1.5MB`.",
            "examples": ["1MB", "64KB", 1048576]
        })
    }
}

/// Where a secret comes from. Holds the reference, never the value.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// `${env:NAME}`: the environment variable NAME.
    Env(String),
    /// `${file:PATH}`: the contents of PATH (relative to the metadata file), trailing newline
    /// removed.
    File(String),
}

const SECRET_EXPECTED: &str = "expected a secret reference like \"${env:BILLING_TOKEN}\" or \"${file:secrets/billing_token}\"";

impl SecretRef {
    /// Parses `${env:NAME}` or `${file:PATH}`.
    ///
    /// # Errors
    /// The message never repeats the text: it may be a secret typed in by mistake.
    pub fn parse(text: &str) -> Result<SecretRef, String> {
        let literal = || format!("a literal secret is not allowed here; {SECRET_EXPECTED}");
        let inner = text
            .trim()
            .strip_prefix("${")
            .and_then(|t| t.strip_suffix('}'))
            .ok_or_else(literal)?;
        let malformed = || format!("this is not a valid secret reference; {SECRET_EXPECTED}");
        if let Some(name) = inner.strip_prefix("env:") {
            let ok = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            return if ok {
                Ok(SecretRef::Env(name.to_string()))
            } else {
                Err(malformed())
            };
        }
        if let Some(path) = inner.strip_prefix("file:") {
            return if path.trim().is_empty() {
                Err(malformed())
            } else {
                Ok(SecretRef::File(path.to_string()))
            };
        }
        Err(malformed())
    }

    /// Reads the secret. `env` looks up environment variables; relative file paths are taken
    /// from `base_dir`.
    ///
    /// # Errors
    /// A message that names the reference and why it cannot be read, never a value.
    pub fn resolve(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
        base_dir: &Path,
    ) -> Result<Secret, String> {
        match self {
            SecretRef::Env(name) => env(name)
                .map(Secret::new)
                .ok_or_else(|| format!("secret reference `{self}` cannot be resolved: environment variable {name} is not set")),
            SecretRef::File(path) => {
                let full = base_dir.join(path);
                match std::fs::read_to_string(&full) {
                    Ok(mut text) => {
                        while text.ends_with('\n') || text.ends_with('\r') {
                            text.pop();
                        }
                        Ok(Secret::new(text))
                    }
                    Err(err) => Err(format!(
                        "secret reference `{self}` cannot be resolved: cannot read {}: {}",
                        full.display(),
                        err.kind()
                    )),
                }
            }
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "${{env:{name}}}"),
            SecretRef::File(path) => write!(f, "${{file:{path}}}"),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretRef({self})")
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        SecretRef::parse(&text).map_err(de::Error::custom)
    }
}

impl JsonSchema for SecretRef {
    fn schema_name() -> Cow<'static, str> {
        "SecretRef".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^\\$\\{(env:[A-Za-z_][A-Za-z0-9_]*|file:.+)\\}$",
            "description": "A reference to a secret, never the secret itself: `${env:NAME}` reads an environment variable, `${file:PATH}` a file (relative to the metadata file).",
            "examples": ["${env:BILLING_TOKEN}", "${file:secrets/billing_token}"]
        })
    }
}

/// The value of a connection setting (`settings: { account_id: A-17 }`): text, a number or
/// a boolean, which templates read as `settings.NAME`. Never a secret: templates print what
/// they read, so a secret reference is refused here and belongs under `auth`.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingValue(pub serde_json::Value);

const SETTING_EXPECTED: &str = "a plain value: text, a number or true/false";

impl<'de> Deserialize<'de> for SettingValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Plain;
        impl<'de> de::Visitor<'de> for Plain {
            type Value = SettingValue;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(SETTING_EXPECTED)
            }

            fn visit_bool<E: de::Error>(self, b: bool) -> Result<SettingValue, E> {
                Ok(SettingValue(b.into()))
            }

            fn visit_i64<E: de::Error>(self, n: i64) -> Result<SettingValue, E> {
                Ok(SettingValue(n.into()))
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<SettingValue, E> {
                Ok(SettingValue(n.into()))
            }

            fn visit_f64<E: de::Error>(self, n: f64) -> Result<SettingValue, E> {
                serde_json::Number::from_f64(n)
                    .map(|n| SettingValue(serde_json::Value::Number(n)))
                    .ok_or_else(|| E::custom(format!("{n} is not a number a template can use; expected a finite number, like 1.5")))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<SettingValue, E> {
                if text.contains("${env:") || text.contains("${file:") {
                    // The text is not echoed: the reference may hide a secret typed in by mistake.
                    return Err(E::custom(
                        "a secret reference is not allowed in `settings`: templates can print settings; expected a plain value, and secrets under `auth`, like `auth: { type: bearer, token: \"${env:TOKEN}\" }`",
                    ));
                }
                Ok(SettingValue(text.into()))
            }
        }
        d.deserialize_any(Plain)
    }
}

impl JsonSchema for SettingValue {
    fn schema_name() -> Cow<'static, str> {
        "SettingValue".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": ["string", "number", "boolean"],
            "not": { "type": "string", "pattern": "\\$\\{(env|file):" },
            "description": "A plain, non-secret value templates read as `settings.NAME`: text, a number or true/false. Secrets belong under `auth`.",
            "examples": ["A-17", "2024-01", 3]
        })
    }
}

/// A secret value. `Debug` and `Display` print `***`; only [`Secret::expose`] gives the value.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(SecretString::from(value.into()))
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_in_each_unit() {
        assert_eq!(Rate::parse("10/s").map(|r| r.per_second()), Ok(10.0));
        assert_eq!(Rate::parse("600/min").map(|r| r.per_second()), Ok(10.0));
        assert_eq!(Rate::parse("36/h").map(|r| r.per_second()), Ok(0.01));
        assert_eq!(
            Rate::parse("ten per second"),
            Err(
                "\"ten per second\" is not a rate; expected <number>/<s|min|h>, like \"10/s\""
                    .into()
            )
        );
        assert!(Rate::parse("0/s").is_err());
        assert!(Rate::parse("10/day").is_err());
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(
            HumanDuration::parse("30s"),
            Ok(HumanDuration(Duration::from_secs(30)))
        );
        assert_eq!(
            HumanDuration::parse("1m30s"),
            Ok(HumanDuration(Duration::from_secs(90)))
        );
        assert_eq!(
            HumanDuration::parse("250ms"),
            Ok(HumanDuration(Duration::from_millis(250)))
        );
        assert_eq!(HumanDuration(Duration::from_secs(600)).to_string(), "10m");
        assert_eq!(
            HumanDuration::parse("10 minutes"),
            Err("\"10 minutes\" is not a duration; expected <number><ms|s|m|h|d>, like \"30s\" or \"10m\"".into())
        );
        assert!(HumanDuration::parse("99999999999999999d").is_err());
    }

    #[test]
    fn sizes_parse_in_each_unit() {
        let size = |text: &str| ByteSize::parse(text).map(|s| s.0);
        assert_eq!(size("1048576"), Ok(1_048_576));
        assert_eq!(size("512B"), Ok(512));
        assert_eq!(size("64KB"), Ok(64 * 1024));
        assert_eq!(size("64KiB"), Ok(64 * 1024));
        assert_eq!(size("64kB"), Ok(64 * 1024));
        assert_eq!(size("1MB"), Ok(1024 * 1024));
        assert_eq!(size("1MiB"), Ok(1024 * 1024));
        assert_eq!(size("5GB"), Ok(5 * 1024 * 1024 * 1024));
        assert_eq!(size("5GiB"), Ok(5 * 1024 * 1024 * 1024));
        assert_eq!(size(" 8 MB "), Ok(8 * 1024 * 1024));
        assert_eq!(size("0"), Ok(0));
    }

    #[test]
    fn sizes_take_decimals_that_make_whole_bytes() {
        let size = |text: &str| ByteSize::parse(text).map(|s| s.0);
        assert_eq!(size("1.5MB"), Ok(1_572_864));
        assert_eq!(size("0.5KB"), Ok(512));
        assert_eq!(size("2.50GB"), Ok(2_684_354_560));
        assert_eq!(size("3.0B"), Ok(3));
        assert_eq!(size("0.0009765625MB"), Ok(1024));
        assert_eq!(
            size("1.1KB"),
            Err("\"1.1KB\" is not a whole number of bytes; expected a number of bytes or <number><B|KB|MB|GB>, like \"1MB\"".into())
        );
        assert!(size("1.5").is_err());
        assert!(size("0.00000000000000000000000000000000001GB").is_err());
    }

    #[test]
    fn sizes_refuse_other_text_with_an_example() {
        assert_eq!(
            ByteSize::parse("10 megs"),
            Err("\"10 megs\" is not a size; expected a number of bytes or <number><B|KB|MB|GB>, like \"1MB\"".into())
        );
        for text in [
            "", "MB", "-1", "1..5MB", "1.MB", ".5MB", "1mb", "5TB", "1MB2",
        ] {
            assert!(ByteSize::parse(text).is_err(), "{text:?} parsed");
        }
        assert_eq!(
            ByteSize::parse("99999999999GB"),
            Err("\"99999999999GB\" is too large a size; expected a number of bytes or <number><B|KB|MB|GB>, like \"1MB\"".into())
        );
    }

    #[test]
    fn sizes_print_in_the_largest_exact_unit() {
        assert_eq!(ByteSize(1024 * 1024).to_string(), "1MB");
        assert_eq!(ByteSize(1536).to_string(), "1536B");
        assert_eq!(ByteSize(1_572_864).to_string(), "1536KB");
        assert_eq!(ByteSize(5 * ByteSize::TIB).to_string(), "5120GB");
        assert_eq!(ByteSize(100).to_string(), "100B");
        assert_eq!(ByteSize(0).to_string(), "0B");
        for size in [ByteSize(1), ByteSize(1536), ByteSize(3 * ByteSize::GIB)] {
            assert_eq!(ByteSize::parse(&size.to_string()), Ok(size));
        }
    }

    #[test]
    fn secret_references_parse_and_never_echo_literals() {
        assert_eq!(
            SecretRef::parse("${env:TOKEN}"),
            Ok(SecretRef::Env("TOKEN".into()))
        );
        assert_eq!(
            SecretRef::parse("${file:s/t}"),
            Ok(SecretRef::File("s/t".into()))
        );
        let err = SecretRef::parse("hunter2-canary").expect_err("literal");
        assert!(!err.contains("hunter2"), "{err}");
        let err = SecretRef::parse("${env:hunter2-canary}").expect_err("malformed");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn resolving_names_the_reference_not_the_value() {
        let env = |name: &str| (name == "SET").then(|| "canary-value".to_string());
        let ok = SecretRef::Env("SET".into())
            .resolve(&env, Path::new("."))
            .expect("set");
        assert_eq!(ok.expose(), "canary-value");
        assert_eq!(format!("{ok:?} {ok}"), "Secret(***) ***");
        let err = SecretRef::Env("UNSET".into())
            .resolve(&env, Path::new("."))
            .expect_err("unset");
        assert_eq!(
            err,
            "secret reference `${env:UNSET}` cannot be resolved: environment variable UNSET is not set"
        );
    }
}
