//! The value forms every concern shares: durations, sizes and socket addresses, parsed and shown.

use std::net::SocketAddr;
use std::time::Duration;

/// The accepted form of a socket address, for error messages.
pub const SOCKET_FORM: &str = "an IP address and port like 0.0.0.0:8080 or [::]:8080";
/// The accepted form of a duration, for error messages.
pub const DURATION_FORM: &str = "a duration like 250ms, 5s, 2m or 1h";
/// The accepted form of a size, for error messages.
pub const SIZE_FORM: &str = "a size in bytes like 1048576, 512KiB, 16MiB or 1GiB";

/// `0.0.0.0:8080`, `[::]:8080`, `localhost:8080`.
pub fn parse_socket_addr(v: &str) -> Option<SocketAddr> {
    if let Ok(addr) = v.parse() {
        return Some(addr);
    }
    let (host, port) = v.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if host.eq_ignore_ascii_case("localhost") {
        return Some(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    None
}

/// `250ms`, `5s`, `2m`, `1h`; a bare number is seconds.
pub fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let split = v
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

/// `1048576`, `512KiB`, `16MiB`, `1GiB`, also `KB`/`MB`/`GB` (decimal) and `k`/`M`/`G` (binary).
pub fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "k" | "K" | "Ki" => 1 << 10,
        "MiB" | "M" | "Mi" => 1 << 20,
        "GiB" | "G" | "Gi" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// A size the way a person writes it in a variable: `64KiB`, `1MiB`, `16 bytes`.
pub fn show_size(n: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n >= 1 << shift && n % (1 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}

/// A duration in the largest unit that shows it whole: `250ms`, `10s`, `2m`, `1h`.
pub fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, per) in [("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms >= per && ms % per == 0 {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        for bad in ["", "s", "5x", "-1s", "5 parsecs", "ms5", "1e9999s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("512KiB"), Some(512 << 10));
        assert_eq!(parse_size("16MiB"), Some(16 << 20));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        for bad in [
            "",
            "MiB",
            "1.5MiB",
            "-3",
            "16 parsecs",
            "99999999999999999999GiB",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn shown_forms_parse_back() {
        for (n, shown) in [
            (16, "16 bytes"),
            (8192, "8KiB"),
            (1 << 20, "1MiB"),
            (1536, "1536 bytes"),
        ] {
            assert_eq!(show_size(n), shown);
        }
        for (ms, shown) in [
            (1, "1ms"),
            (1500, "1500ms"),
            (10_000, "10s"),
            (120_000, "2m"),
            (3_600_000, "1h"),
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(show_duration(d), shown);
            assert_eq!(parse_duration(&show_duration(d)), Some(d));
        }
    }

    #[test]
    fn socket_addresses() {
        assert_eq!(
            parse_socket_addr("localhost:80"),
            Some(SocketAddr::from(([127, 0, 0, 1], 80)))
        );
        assert!(parse_socket_addr("[::]:8080").is_some());
        for bad in ["8080", "example.com:80", "0.0.0.0:99999"] {
            assert_eq!(parse_socket_addr(bad), None, "{bad}");
        }
    }
}
