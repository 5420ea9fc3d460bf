//! Sizes and durations as people write them (`4M`, `512MiB`, `20ms`,
//! `never`): the one parser for flags, config files, mount options and the
//! cli, shared by the engine and its clients.

use std::time::Duration;

/// Largest size accepted anywhere (capacities, quotas, blocks): 1 EiB.
/// Sums and products of sizes stay far from u64 overflow.
pub const SIZE_BYTES_MAX: u64 = 1 << 60;

/// Parse sizes like `100G`, `512MiB`, `4k`, `1048576` (binary units), at
/// most [`SIZE_BYTES_MAX`].
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().map_err(|_| format!("bad size {s:?}: expected e.g. 100G, 512M, 4096"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("bad size {s:?}: unknown unit {unit:?} (use K, M, G, T)")),
    };
    let bytes = num * mult as f64;
    if !(bytes.is_finite() && bytes >= 0.0) {
        return Err(format!("bad size {s:?}"));
    }
    if bytes > SIZE_BYTES_MAX as f64 {
        return Err(format!("bad size {s:?}: larger than 1 EiB"));
    }
    Ok(bytes as u64)
}

/// Parse durations like `20ms`, `1.5s`, `10m`, `2h`, `never` (None).
/// Longest duration accepted anywhere (TTLs, intervals, timeouts): 100
/// years. Anything longer is `never` in practice, and bounding it keeps
/// every `Instant + duration` in range.
pub const DURATION_SECS_MAX: f64 = 100.0 * 365.25 * 86400.0;

pub fn parse_duration(s: &str) -> std::result::Result<Option<Duration>, String> {
    let t = s.trim();
    if t == "never" {
        return Ok(None);
    }
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().map_err(|_| format!("bad duration {s:?}: expected e.g. 20ms, 5s, 10m, never"))?;
    let secs = match unit {
        "us" => num / 1e6,
        "ms" => num / 1e3,
        "" | "s" => num,
        "m" => num * 60.0,
        "h" => num * 3600.0,
        "d" => num * 86400.0,
        _ => return Err(format!("bad duration {s:?}: unknown unit {unit:?} (use ms, s, m, h, d)")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("bad duration {s:?}"));
    }
    if secs > DURATION_SECS_MAX {
        return Err(format!("bad duration {s:?}: longer than 100 years (use `never`)"));
    }
    Ok(Some(Duration::from_secs_f64(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_durations_are_refused_not_panicked_on() {
        assert!(parse_duration("200000000000000d").unwrap_err().contains("100 years"));
        assert!(parse_duration("99999999999999999999999999999s").is_err());
        assert_eq!(parse_duration("36500d").unwrap(), Some(Duration::from_secs(36500 * 86400)));
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("100G"), Ok(100 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999T").unwrap_err().contains("1 EiB"));
        assert_eq!(parse_size("1048576T"), Ok(1 << 60));
        assert_eq!(parse_duration("20ms"), Ok(Some(Duration::from_millis(20))));
        assert_eq!(parse_duration("never"), Ok(None));
        assert!(parse_duration("5 fortnights").is_err());
    }
}
