//! One parser per kind of value. A setting's text is parsed by the same
//! function whichever source gave it (flag, environment, file or default), so
//! a value means the same everywhere.

use std::net::SocketAddr;
use std::time::Duration;

use super::LogFormat;

/// `host:port`; port 0 picks a free port.
pub fn addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not an address like 0.0.0.0:8080 or [::]:8080"))
}

/// Seconds, decimals allowed, above 0 and at most a day.
pub fn seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 {
        return Err(format!(
            "{s} is out of range: give seconds above 0 and at most 86400"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A whole number in `min..=max`.
pub fn count(s: &str, min: usize, max: usize) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))?;
    if n < min || n > max {
        return Err(format!("{n} is out of range {min}..={max}"));
    }
    Ok(n)
}

/// A whole number in `min..=max` that fits a `u32`.
pub fn count_u32(s: &str, min: u32, max: u32) -> Result<u32, String> {
    count(s, min as usize, max as usize).map(|n| n as u32)
}

/// A rate per second, above 0.
pub fn rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number per second"))?;
    if !rate.is_finite() || rate <= 0.0 || rate > 1e9 {
        return Err(format!("{s} is out of range: give a rate above 0"));
    }
    Ok(rate)
}

/// `true`/`false`, also `1`/`0`, `yes`/`no`, `on`/`off`.
pub fn boolean(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("{s:?}: use true or false")),
    }
}

/// Any text, as given.
pub fn text(s: &str) -> Result<String, String> {
    Ok(s.to_owned())
}

/// A Redis URL the client library accepts.
pub fn redis_url(s: &str) -> Result<String, String> {
    if !(s.starts_with("redis://")
        || s.starts_with("rediss://")
        || s.starts_with("redis+unix://")
        || s.starts_with("unix://"))
    {
        return Err(format!("{s:?} is not a Redis URL (redis://host:port/db)"));
    }
    redis::Client::open(s).map_err(|e| format!("{s:?} is not a usable Redis URL: {e}"))?;
    Ok(s.to_owned())
}

/// At most 128 characters of `A-Z a-z 0-9 - _ .`.
pub fn node_id(s: &str) -> Result<String, String> {
    if s.len() > 128
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "{s:?}: use at most 128 characters of A-Z a-z 0-9 - _ ."
        ));
    }
    Ok(s.to_owned())
}

/// A Redis key prefix: 1 to 64 characters without braces or spaces.
pub fn prefix(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 64 || s.contains(['{', '}', ' ']) {
        return Err(format!(
            "{s:?}: use 1 to 64 characters, without braces or spaces"
        ));
    }
    Ok(s.to_owned())
}

/// A Pusher app id: 1 to 64 characters of `A-Z a-z 0-9 - _ .`. The id is
/// the namespace of the app's channels, so it has no `:`.
pub fn pusher_app_id(s: &str) -> Result<String, String> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "{s:?}: use 1 to 64 characters of A-Z a-z 0-9 - _ . (the id names the app's channel namespace)"
        ));
    }
    Ok(s.to_owned())
}

/// A Pusher app key: not empty, and nothing that would end or split the URL
/// path `/app/{key}` clients connect to (`/`, `?`, `#`, spaces, control characters).
pub fn pusher_key(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.chars()
        .any(|c| matches!(c, '/' | '?' | '#') || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{s:?}: a key has no / ? # spaces or control characters (it is part of the URL path /app/KEY)"
        ));
    }
    Ok(s.to_owned())
}

/// A secret: any text but the empty one. The message never repeats the value.
pub fn secret(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(s.to_owned())
}

/// A comma-separated list of origins; `*` only as a suffix.
pub fn origins(s: &str) -> Result<Vec<String>, String> {
    let list: Vec<String> = s
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(bad) = list
        .iter()
        .find(|o| o.find('*').is_some_and(|i| i != o.len() - 1))
    {
        return Err(format!(
            "{bad:?}: `*` is allowed only at the end of an origin"
        ));
    }
    Ok(list)
}

/// `text` or `json`.
pub fn log_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(format!("{other:?}: use text or json")),
    }
}

/// Tracing filter directives.
pub fn log_level(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("{s:?} is not a log filter: {e}"))
}

/// Reads a PEM key file at start-up, so a missing file stops the node before it listens.
pub fn key_file(path: &str) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    if !pem.starts_with(b"-----BEGIN") {
        return Err(format!("{path:?} is not a PEM file"));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_take_decimals_and_refuse_zero_and_words() {
        assert_eq!(seconds("0.5").unwrap(), Duration::from_millis(500));
        assert!(seconds("0").is_err());
        assert!(seconds("-1").is_err());
        assert!(seconds("abc").is_err());
    }

    #[test]
    fn counts_keep_to_their_range() {
        assert_eq!(count("7", 1, 10), Ok(7));
        assert_eq!(count("0", 1, 10), Err("0 is out of range 1..=10".into()));
        assert_eq!(count("11", 1, 10), Err("11 is out of range 1..=10".into()));
        assert!(count("many", 1, 10).is_err());
        assert_eq!(count_u32("4096", 1, 1 << 20), Ok(4096));
    }

    #[test]
    fn origins_allow_a_star_only_at_the_end() {
        assert_eq!(
            origins(" https://a , http://localhost:*,").unwrap(),
            ["https://a", "http://localhost:*"]
        );
        assert!(origins("https://a,*").is_ok());
        assert!(origins("https://*.a").is_err());
    }

    #[test]
    fn names_and_urls_are_checked() {
        assert!(node_id("node-a_1.b").is_ok());
        assert!(node_id("node a").is_err());
        assert!(node_id(&"n".repeat(129)).is_err());
        assert!(prefix("sb").is_ok());
        assert!(prefix("a{b}").is_err());
        assert!(redis_url("redis://127.0.0.1:6379/0").is_ok());
        assert!(redis_url("http://127.0.0.1:6379").is_err());
    }

    #[test]
    fn pusher_ids_and_keys_are_checked() {
        assert!(pusher_app_id("app-1_b.c").is_ok());
        assert!(pusher_app_id(&"a".repeat(64)).is_ok());
        for bad in ["", "a:b", "a b", "a/b", "é", &"a".repeat(65)] {
            assert!(pusher_app_id(bad).is_err(), "{bad:?}");
        }
        assert!(pusher_key("278d425bdf160c739803").is_ok());
        assert!(pusher_key("k,e;y=@").is_ok());
        for bad in ["", "a/b", "a?b", "a#b", "a b", "a\tb"] {
            assert!(pusher_key(bad).is_err(), "{bad:?}");
        }
        assert_eq!(secret("s"), Ok("s".to_owned()));
        assert_eq!(secret(""), Err("must not be empty".to_owned()));
    }

    #[test]
    fn booleans_have_four_spellings_each() {
        for yes in ["true", "1", "yes", "ON"] {
            assert_eq!(boolean(yes), Ok(true), "{yes}");
        }
        for no in ["false", "0", "no", "Off"] {
            assert_eq!(boolean(no), Ok(false), "{no}");
        }
        assert!(boolean("maybe").is_err());
    }
}
