//! What every scenario checks before it starts: its options, the pids it is to measure, the
//! open-file limit, channel names; and the server-API clients it publishes through.

use std::time::Duration;

use anyhow::{Context, bail, ensure};

use crate::clients::http::{ApiClient, ApiEndpoint};
use crate::measure::procstat::{self, Proc};

/// Parses every `--api` URL.
pub fn endpoints(api: &[String], api_key: Option<&str>) -> anyhow::Result<Vec<ApiEndpoint>> {
    api.iter().map(|u| ApiEndpoint::parse(u, api_key)).collect()
}

/// One connected API client per endpoint, so that the first timed publish does not pay for
/// the connect.
pub async fn api_clients(
    endpoints: &[ApiEndpoint],
    timeout: Duration,
) -> anyhow::Result<Vec<ApiClient>> {
    let mut clients = Vec::with_capacity(endpoints.len());
    for e in endpoints {
        let mut c = ApiClient::new(e.clone(), timeout);
        c.connect().await?;
        clients.push(c);
    }
    Ok(clients)
}

/// Fails unless every pid names a process whose `/proc` entry is readable.
pub fn check_pids(pids: impl IntoIterator<Item = u32>) -> anyhow::Result<()> {
    for pid in pids {
        Proc::Pid(pid)
            .sample()
            .with_context(|| format!("pid {pid}: cannot read /proc/{pid}"))?;
    }
    Ok(())
}

/// Fails unless every named value is positive and finite.
pub fn check_positive(values: &[(&str, f64)]) -> anyhow::Result<()> {
    for (name, v) in values {
        ensure!(*v > 0.0 && v.is_finite(), "{name} must be positive");
    }
    Ok(())
}

/// Fails when `connections` sockets (plus `extra` and a margin) would not fit under the
/// soft limit on open files. The scripts raise it to the hard limit (`ulimit -n`).
pub fn check_open_files(connections: usize, extra: usize, what: &str) -> anyhow::Result<()> {
    if let Some(limit) = procstat::open_files_limit() {
        let needed = (connections + extra + 64) as u64;
        ensure!(
            needed <= limit,
            "{connections} {what} need about {needed} open files but the limit is {limit}: \
             raise it (ulimit -n)"
        );
    }
    Ok(())
}

/// docs/PROTOCOL.md, "Channels": 1 to 255 bytes of `A-Z a-z 0-9 _ - . : @ / =`.
pub fn valid_channel(name: &str) -> bool {
    (1..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:@/=".contains(&b))
}

/// Fails unless `name` is a valid channel name.
pub fn check_channel(option: &str, name: &str) -> anyhow::Result<()> {
    if !valid_channel(name) {
        bail!("{option} {name:?}: a channel is 1-255 bytes of A-Z a-z 0-9 _ - . : @ / =");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        assert!(valid_channel("chat:lobby/room=1@x_y-z.w"));
        assert!(!valid_channel(""));
        assert!(!valid_channel("a b"));
        assert!(!valid_channel("a\"b"));
        assert!(!valid_channel(&"a".repeat(256)));
        assert!(check_channel("--channel", "ok").is_ok());
        assert!(check_channel("--channel", "not ok").is_err());
    }
}
