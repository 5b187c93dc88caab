//! Which wire protocol a scenario's subscribers speak: the node's own JSON subprotocol
//! (docs/PROTOCOL.md) or Pusher Channels protocol 7 (docs/PUSHER.md). Everything that differs
//! between the two for a subscriber is decided here: the URL it connects to, the channel it
//! subscribes to and the one the API publishes to, the handshake, and how a delivery's stamp is
//! read. Publishers always use the node's own API.

use anyhow::bail;
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::clients::payload::{self, Stamp};
use crate::clients::pusher;
use crate::clients::ws::{self, Ws};
use crate::scenarios::checks;

/// The subscribers' wire protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// The node's own protocol, JSON subprotocol.
    #[default]
    Json,
    /// Pusher Channels protocol 7 on `/app/{key}`.
    Pusher,
}

/// The protocol options of the scenarios whose subscribers count deliveries (`fanout`,
/// `rooms`, `ramp`, `idle`).
#[derive(Debug, Clone, clap::Args)]
pub struct ProtocolOpts {
    /// Wire protocol of the subscribers. With `pusher`, a `--ws` URL whose path is not
    /// `/app/...` is turned into `ws://HOST:PORT/app/KEY?protocol=7`, subscribers subscribe to
    /// the channel `C` and the API publishes to `APP:C`.
    #[arg(long, value_enum, default_value_t = Protocol::Json)]
    pub protocol: Protocol,
    /// Pusher app id (`--pusher-app-id` of the nodes): the namespace of its channels.
    #[arg(long, default_value = "bench")]
    pub pusher_app: String,
    /// Pusher app key (`--pusher-key` of the nodes): the path of the endpoint.
    #[arg(long, default_value = "bench-key")]
    pub pusher_key: String,
}

impl Protocol {
    /// Its name in the reports (`json`, `pusher`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Pusher => "pusher",
        }
    }

    /// Opens a connection to `url` and subscribes to `channel`; returns the socket and the
    /// subscription's reply (`subscribed`, or `pusher_internal:subscription_succeeded`).
    pub async fn connect_and_subscribe(
        self,
        url: &str,
        ws_config: WebSocketConfig,
        channel: &str,
    ) -> anyhow::Result<(Ws, Value)> {
        match self {
            Self::Json => {
                let cmd = ws::subscribe_command(channel, None);
                let (ws, reply, _) = ws::connect_and_subscribe(url, ws_config, cmd).await?;
                Ok((ws, reply))
            }
            Self::Pusher => pusher::connect_and_subscribe(url, ws_config, channel).await,
        }
    }

    /// The stamp of a delivery, `None` for a frame without one: the per-delivery parse.
    #[inline]
    pub fn parse_stamp(self, frame: &[u8]) -> Option<Stamp> {
        match self {
            Self::Json => payload::parse_stamp(frame),
            Self::Pusher => payload::parse_string_stamp(frame),
        }
    }
}

impl ProtocolOpts {
    /// The URL subscribers connect to, from a `--ws` URL.
    pub fn ws_url(&self, given: &str) -> anyhow::Result<String> {
        match self.protocol {
            Protocol::Json => Ok(given.to_owned()),
            Protocol::Pusher => pusher::endpoint_url(given, &self.pusher_key),
        }
    }

    /// The channel the API publishes to for the subscribers' channel `channel`.
    pub fn publish_channel(&self, channel: &str) -> String {
        match self.protocol {
            Protocol::Json => channel.to_owned(),
            Protocol::Pusher => format!("{}:{channel}", self.pusher_app),
        }
    }

    /// Fails unless `channel` can be subscribed to in this protocol and its
    /// [`publish_channel`](Self::publish_channel) is a valid channel of the API.
    pub fn check_channel(&self, option: &str, channel: &str) -> anyhow::Result<()> {
        if self.protocol == Protocol::Pusher && !pusher::valid_channel(channel) {
            bail!(
                "{option} {channel:?}: a Pusher channel is 1-164 bytes of A-Z a-z 0-9 _ - = @ , . ;"
            );
        }
        checks::check_channel(option, &self.publish_channel(channel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(protocol: Protocol) -> ProtocolOpts {
        ProtocolOpts {
            protocol,
            pusher_app: "bench".into(),
            pusher_key: "bench-key".into(),
        }
    }

    #[test]
    fn channels_and_urls_per_protocol() {
        let json = opts(Protocol::Json);
        assert_eq!(json.publish_channel("room-1"), "room-1");
        assert_eq!(json.ws_url("ws://h:1/ws").unwrap(), "ws://h:1/ws");
        let pusher = opts(Protocol::Pusher);
        assert_eq!(pusher.publish_channel("room-1"), "bench:room-1");
        assert_eq!(
            pusher.ws_url("ws://h:1/ws").unwrap(),
            "ws://h:1/app/bench-key?protocol=7"
        );
        assert!(pusher.check_channel("--channel", "room-1").is_ok());
        // A `:` is native, not Pusher; a `,` is Pusher, not native (the API could not publish).
        assert!(pusher.check_channel("--channel", "a:b").is_err());
        assert!(pusher.check_channel("--channel", "a,b").is_err());
        assert!(json.check_channel("--channel", "a:b").is_ok());
    }

    #[test]
    fn stamps_per_protocol() {
        let native = br#"{"type":"message","channel":"c","data":{"seq":2,"p":1,"t":9,"pad":"x"}}"#;
        let pusher = br#"{"event":"message","channel":"c","data":"{\"seq\":2,\"p\":1,\"t\":9,\"pad\":\"x\"}"}"#;
        let stamp = Some(Stamp {
            publisher: 1,
            seq: 2,
            sent_us: 9,
        });
        assert_eq!(Protocol::Json.parse_stamp(native), stamp);
        assert_eq!(Protocol::Pusher.parse_stamp(pusher), stamp);
        // Each reads only its own framing.
        assert_eq!(Protocol::Pusher.parse_stamp(native), None);
        assert_eq!(Protocol::Json.parse_stamp(pusher), None);
    }
}
