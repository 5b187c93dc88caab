//! One subscriber connection on the Pusher Channels protocol 7 (docs/PUSHER.md, "The WebSocket
//! protocol"): the endpoint's URL, the `pusher:connection_established` greeting, a public
//! channel's `pusher:subscribe` and its `pusher_internal:subscription_succeeded`, and what the
//! other frames a subscriber may get mean.

use anyhow::{Context, bail};
use futures_util::SinkExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::clients::ws::{self, Ws};

/// The greeting every connection starts with.
pub const CONNECTION_ESTABLISHED: &str = "pusher:connection_established";

/// The reply to a successful subscribe.
pub const SUBSCRIPTION_SUCCEEDED: &str = "pusher_internal:subscription_succeeded";

/// The endpoint for the app `key` on the node of `url`: `url` itself when its path is
/// already `/app/...`, else `ws://HOST:PORT/app/KEY?protocol=7` (so the native endpoint's URL
/// names the node).
pub fn endpoint_url(url: &str, key: &str) -> anyhow::Result<String> {
    let Some(rest) = url.strip_prefix("ws://") else {
        bail!("only ws:// URLs are supported: {url}");
    };
    let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    if authority.is_empty() {
        bail!("no host in --ws URL {url}");
    }
    if path.starts_with("/app/") {
        return Ok(url.to_owned());
    }
    Ok(format!("ws://{authority}/app/{key}?protocol=7"))
}

/// docs/PUSHER.md: a channel name is 1 to 164 bytes of `A-Z a-z 0-9 _ - = @ , . ;`.
pub fn valid_channel(name: &str) -> bool {
    (1..=164).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b))
}

/// The `pusher:subscribe` event of a public channel, `event` first as the client libraries
/// write it.
pub fn subscribe_event(channel: &str) -> String {
    format!(
        r#"{{"event":"pusher:subscribe","data":{{"channel":{}}}}}"#,
        Value::from(channel)
    )
}

/// Opens a connection to the Pusher endpoint `url`, reads its greeting, subscribes to the
/// public `channel` and waits for the subscription to succeed; returns the socket and that
/// reply. Nothing of the channel arrives before the reply.
pub async fn connect_and_subscribe(
    url: &str,
    ws_config: WebSocketConfig,
    channel: &str,
) -> anyhow::Result<(Ws, Value)> {
    let (mut ws, _) = ws::upgrade(url, ws_config, None).await?;
    let hello = ws::next_json(&mut ws)
        .await
        .context("waiting for pusher:connection_established")?;
    if hello["event"] != CONNECTION_ESTABLISHED {
        bail!("first frame is not {CONNECTION_ESTABLISHED}: {hello}");
    }
    ws.send(Message::text(subscribe_event(channel)))
        .await
        .context("sending pusher:subscribe")?;
    loop {
        let v = ws::next_json(&mut ws)
            .await
            .context("waiting for pusher_internal:subscription_succeeded")?;
        match v["event"].as_str() {
            Some(SUBSCRIPTION_SUCCEEDED) if v["channel"] == channel => return Ok((ws, v)),
            Some("pusher:subscription_error") => bail!("subscribe refused: {v}"),
            Some("pusher:error") => bail!("error while subscribing: {v}"),
            _ => {}
        }
    }
}

/// What a frame without a stamp means to a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// `pusher:error`: the node is about to close the connection, for this reason.
    Closing(String),
    /// Liveness (`pusher:ping`, `pusher:pong`): not an error.
    Liveness,
    /// Anything else (`switchboard:missed`, a late reply...): unexpected in a benchmark.
    Unexpected,
}

/// Classifies a parsed Pusher frame that carried no stamp.
pub fn notice(v: &Value) -> Notice {
    match v["event"].as_str() {
        Some("pusher:error") => {
            let data = &v["data"];
            Notice::Closing(format!("pusher:error {} {}", data["code"], data["message"]))
        }
        Some("pusher:ping" | "pusher:pong") => Notice::Liveness,
        _ => Notice::Unexpected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn endpoint_urls() {
        let key = "bench-key";
        assert_eq!(
            endpoint_url("ws://127.0.0.1:8080/ws", key).unwrap(),
            "ws://127.0.0.1:8080/app/bench-key?protocol=7"
        );
        assert_eq!(
            endpoint_url("ws://h:1", key).unwrap(),
            "ws://h:1/app/bench-key?protocol=7"
        );
        // A Pusher URL is taken as it is (another key, another version: the node judges).
        let given = "ws://h:1/app/other?protocol=7&client=js";
        assert_eq!(endpoint_url(given, key).unwrap(), given);
        assert!(endpoint_url("wss://h/ws", key).is_err());
        assert!(endpoint_url("ws:///ws", key).is_err());
    }

    #[test]
    fn channel_names() {
        assert!(valid_channel("room-1"));
        assert!(valid_channel("a,b;c=d@e.f_g"));
        assert!(!valid_channel("a:b"));
        assert!(!valid_channel(""));
        assert!(!valid_channel(&"a".repeat(165)));
    }

    #[test]
    fn subscribe_events() {
        assert_eq!(
            subscribe_event("room-1"),
            r#"{"event":"pusher:subscribe","data":{"channel":"room-1"}}"#
        );
    }

    #[test]
    fn notices() {
        let error: Value = serde_json::from_str(
            r#"{"event":"pusher:error","data":{"code":4100,"message":"slow consumer"}}"#,
        )
        .unwrap();
        assert_eq!(
            notice(&error),
            Notice::Closing(r#"pusher:error 4100 "slow consumer""#.into())
        );
        assert_eq!(
            notice(&json!({"event": "pusher:ping", "data": {}})),
            Notice::Liveness
        );
        let missed = json!({"event": "switchboard:missed", "channel": "c", "data": "{}"});
        assert_eq!(notice(&missed), Notice::Unexpected);
    }
}
