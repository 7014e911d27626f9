//! [`Reader`]: one variable in, one typed value out, with the error or warning the variable's
//! family calls for.

use std::cell::RefCell;
use std::fmt::Display;
use std::net::SocketAddr;
use std::ops::{RangeFrom, RangeInclusive};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::value::{
    DURATION_FORM, SIZE_FORM, SOCKET_FORM, parse_duration, parse_size, parse_socket_addr,
    show_duration, show_size,
};
use super::{ConfigError, Source};

/// The bounds a value must lie within; shown in the error message.
pub trait Bounds<T> {
    /// Whether `v` is within.
    fn holds(&self, v: &T) -> bool;
    /// The bounds for a person: `, at least 1` or ` between 1 and 10`, each value via `show`.
    fn describe(&self, show: impl Fn(&T) -> String) -> String;
}

impl<T: PartialOrd> Bounds<T> for RangeFrom<T> {
    fn holds(&self, v: &T) -> bool {
        self.contains(v)
    }
    fn describe(&self, show: impl Fn(&T) -> String) -> String {
        format!(" of at least {}", show(&self.start))
    }
}

impl<T: PartialOrd> Bounds<T> for RangeInclusive<T> {
    fn holds(&self, v: &T) -> bool {
        self.contains(v)
    }
    fn describe(&self, show: impl Fn(&T) -> String) -> String {
        format!(" between {} and {}", show(self.start()), show(self.end()))
    }
}

/// Reads variables from a [`Source`]. `RAGSCOPE_*` readers return a [`ConfigError`] for a bad
/// value; `OTEL_*` problems are collected with [`Reader::warn`] and never stop start-up.
pub struct Reader<'a, S: Source + ?Sized> {
    source: &'a S,
    warnings: RefCell<Vec<String>>,
}

impl<'a, S: Source + ?Sized> Reader<'a, S> {
    /// A reader over `source`.
    pub fn new(source: &'a S) -> Self {
        Reader {
            source,
            warnings: RefCell::new(Vec::new()),
        }
    }

    /// The trimmed value of `var`; unset and empty are both `None`.
    pub fn get(&self, var: &str) -> Option<String> {
        self.source
            .get(var)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    /// Records that `var=value` was invalid and ignored (the OpenTelemetry rule for `OTEL_*`).
    /// A generic variable read for each signal is warned about once.
    pub fn warn(&self, var: &str, value: &str, expected: &str) {
        let line = format!("ignoring invalid {var}={value:?}: expected {expected}");
        let mut warnings = self.warnings.borrow_mut();
        if !warnings.contains(&line) {
            warnings.push(line);
        }
    }

    /// Every warning recorded so far, to be logged once logging is up.
    pub fn into_warnings(self) -> Vec<String> {
        self.warnings.into_inner()
    }

    /// `var` through `parse`, `default` when unset or empty; a value `parse` rejects is an
    /// error showing `expected`. The base every other `RAGSCOPE_*` reader is built on.
    pub fn parse<T>(
        &self,
        var: &'static str,
        default: &str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<T, ConfigError> {
        let given = self.get(var);
        let raw = given.as_deref().unwrap_or(default);
        parse(raw).ok_or_else(|| ConfigError::new(var, raw, expected))
    }

    /// Like [`Reader::parse`], but `off` (any case) is `None`.
    pub fn optional<T>(
        &self,
        var: &'static str,
        default: &str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, ConfigError> {
        self.parse(var, default, expected, |v| {
            if v.eq_ignore_ascii_case("off") {
                Some(None)
            } else {
                parse(v).map(Some)
            }
        })
    }

    /// A file path; `None` when unset.
    pub fn path(&self, var: &str) -> Option<PathBuf> {
        self.get(var).map(PathBuf::from)
    }

    /// `true` or `false`, any case.
    pub fn boolean(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        self.one_of(
            var,
            if default { "true" } else { "false" },
            &[("true", true), ("false", false)],
        )
    }

    /// `on` or `off` (also `true`/`false`), any case.
    pub fn on_off(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        let default = if default { "on" } else { "off" };
        self.parse(var, default, "on or off", |v| {
            match v.to_ascii_lowercase().as_str() {
                "on" | "true" => Some(true),
                "off" | "false" => Some(false),
                _ => None,
            }
        })
    }

    /// One of `choices` by name, any case; the error lists the names (`json or text`).
    pub fn one_of<T: Clone>(
        &self,
        var: &'static str,
        default: &str,
        choices: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        let expected = match names.split_last() {
            Some((last, [])) => (*last).to_owned(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        self.parse(var, default, &expected, |v| {
            choices
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(v))
                .map(|(_, t)| t.clone())
        })
    }

    /// An IP address and port (or `localhost:PORT`).
    pub fn socket_addr(&self, var: &'static str, default: &str) -> Result<SocketAddr, ConfigError> {
        self.parse(var, default, SOCKET_FORM, parse_socket_addr)
    }

    /// A whole number of `unit` within `bounds`: "a whole number of keys, at least 1".
    pub fn count_in<T>(
        &self,
        var: &'static str,
        default: T,
        unit: &str,
        bounds: impl Bounds<T>,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + Display,
    {
        let range = bounds.describe(|n| n.to_string());
        // "of at least" reads badly after a unit: "a whole number of keys, at least 1".
        let range = match range.strip_prefix(" of at least") {
            Some(lo) => format!(", at least{lo}"),
            None => range,
        };
        let expected = format!("a whole number of {unit}{range}");
        self.parse(var, &default.to_string(), &expected, |v| {
            v.parse::<T>().ok().filter(|n| bounds.holds(n))
        })
    }

    /// A duration (`250ms`, `5s`, `2m`, `1h`), any length.
    pub fn duration(&self, var: &'static str, default: &str) -> Result<Duration, ConfigError> {
        self.parse(var, default, DURATION_FORM, parse_duration)
    }

    /// A duration within `bounds`: "a duration between 1ms and 10s, like 50ms".
    pub fn duration_in(
        &self,
        var: &'static str,
        default: Duration,
        bounds: impl Bounds<Duration>,
    ) -> Result<Duration, ConfigError> {
        let default = show_duration(default);
        let expected = format!(
            "a duration{}, like {default}",
            bounds.describe(|d| show_duration(*d))
        );
        self.parse(var, &default, &expected, |v| {
            parse_duration(v).filter(|d| bounds.holds(d))
        })
    }

    /// A size in bytes (`1048576`, `512KiB`, `16MiB`), any size.
    pub fn size(&self, var: &'static str, default: &str) -> Result<u64, ConfigError> {
        self.parse(var, default, SIZE_FORM, parse_size)
    }

    /// A size within `bounds`: "a size between 8KiB and 1MiB, like 64KiB".
    pub fn size_in(
        &self,
        var: &'static str,
        default: usize,
        bounds: RangeInclusive<usize>,
    ) -> Result<usize, ConfigError> {
        let default = show_size(default as u64);
        let expected = format!(
            "a size{}, like {default}",
            bounds.describe(|n| show_size(*n as u64))
        );
        self.parse(var, &default, &expected, |v| {
            parse_size(v)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| bounds.contains(n))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err<T: std::fmt::Debug>(r: Result<T, ConfigError>) -> String {
        r.expect_err("rejected").to_string()
    }

    #[test]
    fn unset_and_empty_mean_the_default() {
        let vars = [("A", " "), ("B", " 7 ")];
        let r = Reader::new(vars.as_slice());
        assert_eq!(r.count_in("A", 3u32, "things", 1..), Ok(3));
        assert_eq!(r.count_in("B", 3u32, "things", 1..), Ok(7), "trimmed");
        assert_eq!(r.count_in("C", 3u32, "things", 1..), Ok(3));
    }

    #[test]
    fn bounded_readers_say_the_range_and_an_example() {
        let vars = [
            ("N", "0"),
            ("M", "11"),
            ("S", "2MiB"),
            ("T", "16"),
            ("D", "5ms"),
            ("E", "1m"),
            ("F", "xml"),
            ("G", "yes"),
            ("H", "8080"),
        ];
        let r = Reader::new(vars.as_slice());
        assert_eq!(
            err(r.count_in("N", 1usize, "keys", 1..)),
            "invalid N=\"0\": expected a whole number of keys, at least 1"
        );
        assert_eq!(
            err(r.count_in("M", 2u32, "consecutive checks", 1..=10)),
            "invalid M=\"11\": expected a whole number of consecutive checks between 1 and 10"
        );
        assert_eq!(
            err(r.size_in("S", 64 << 10, 8192..=1 << 20)),
            "invalid S=\"2MiB\": expected a size between 8KiB and 1MiB, like 64KiB"
        );
        assert_eq!(r.size_in("T", 8192, 16..=1 << 20), Ok(16));
        assert_eq!(
            err(r.duration_in("D", Duration::from_secs(10), Duration::from_millis(100)..)),
            "invalid D=\"5ms\": expected a duration of at least 100ms, like 10s"
        );
        assert_eq!(
            err(r.duration_in(
                "E",
                Duration::from_millis(50),
                Duration::from_millis(1)..=Duration::from_secs(10)
            )),
            "invalid E=\"1m\": expected a duration between 1ms and 10s, like 50ms"
        );
        assert_eq!(
            err(r.one_of("F", "json", &[("json", 1), ("text", 2)])),
            "invalid F=\"xml\": expected json or text"
        );
        assert_eq!(
            err(r.boolean("G", false)),
            "invalid G=\"yes\": expected true or false"
        );
        assert!(err(r.socket_addr("H", "0.0.0.0:1")).contains("0.0.0.0:8080"));
    }

    #[test]
    fn choices_and_switches_ignore_case() {
        let vars = [("F", "TEXT"), ("B", "True"), ("O", "OFF"), ("P", "off")];
        let r = Reader::new(vars.as_slice());
        assert_eq!(r.one_of("F", "json", &[("json", 1), ("text", 2)]), Ok(2));
        assert_eq!(r.boolean("B", false), Ok(true));
        assert_eq!(r.on_off("O", true), Ok(false));
        assert_eq!(r.on_off("unset", true), Ok(true));
        assert_eq!(
            r.optional("P", "x", "x or off", |v| Some(v.len())),
            Ok(None)
        );
        assert_eq!(
            r.optional("unset", "abc", "x or off", |v| Some(v.len())),
            Ok(Some(3))
        );
    }

    #[test]
    fn warnings_are_collected_not_raised() {
        let vars: [(&str, &str); 0] = [];
        let r = Reader::new(vars.as_slice());
        r.warn("OTEL_X", "bad", "good");
        assert_eq!(
            r.into_warnings(),
            ["ignoring invalid OTEL_X=\"bad\": expected good"]
        );
    }
}
