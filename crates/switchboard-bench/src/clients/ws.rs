//! One WebSocket connection to a node on the JSON subprotocol (docs/PROTOCOL.md): open it,
//! read the `welcome`, subscribe (with `recover` when given) and close it. Every client of
//! every scenario connects through here.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The JSON subprotocol (docs/PROTOCOL.md, "Subprotocols").
pub const JSON_SUBPROTOCOL: &str = "switchboard.v1.json";

/// A client WebSocket.
pub type Ws = WebSocketStream<TcpStream>;

/// A message frame of the JSON subprotocol starts so (the node writes `type` first).
pub const MESSAGE_PREFIX: &[u8] = br#"{"type":"message""#;

/// Socket settings with a small read buffer (tungstenite's default is 128 KiB per socket),
/// for clients whose frames are small.
pub fn small_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096)
}

/// A read buffer that holds one whole message frame of `payload` bytes of data; tungstenite
/// zero-fills the buffer's free space on every read, so its 128 KiB default would cost both
/// memory and CPU.
pub fn read_buffer_size(payload: usize) -> usize {
    (payload + 512).next_power_of_two().clamp(4096, 128 * 1024)
}

/// The `subscribe` command (id 1) for `channel`, with `recover: {epoch, offset}` when given.
pub fn subscribe_command(channel: &str, recover: Option<(&str, u64)>) -> Value {
    let mut cmd = json!({"type": "subscribe", "id": 1, "channel": channel});
    if let Some((epoch, offset)) = recover {
        cmd["recover"] = json!({"epoch": epoch, "offset": offset});
    }
    cmd
}

/// How long the steps of one connect + subscribe took.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phases {
    /// TCP connect (a SYN the listener dropped shows here, as a ~1 s retransmit).
    pub tcp: Duration,
    /// WebSocket upgrade and `welcome`.
    pub upgrade: Duration,
    /// `subscribe` to `subscribed` (the history read, when recovering).
    pub subscribe: Duration,
}

/// Opens a connection to `url` and subscribes with `cmd` (see [`subscribe_command`]);
/// returns the socket, the `subscribed` reply and how long each step took.
pub async fn connect_and_subscribe(
    url: &str,
    ws_config: WebSocketConfig,
    cmd: Value,
) -> anyhow::Result<(Ws, Value, Phases)> {
    let started = Instant::now();
    let (ws, tcp) = open_timed(url, ws_config).await?;
    let opened = Instant::now();
    let (ws, reply) = subscribe(ws, cmd).await?;
    let phases = Phases {
        tcp,
        upgrade: (opened - started).saturating_sub(tcp),
        subscribe: opened.elapsed(),
    };
    Ok((ws, reply, phases))
}

/// Opens a WebSocket with the JSON subprotocol and reads the welcome.
pub async fn open(url: &str, ws_config: WebSocketConfig) -> anyhow::Result<Ws> {
    Ok(open_timed(url, ws_config).await?.0)
}

/// As [`open`], with the time the TCP connect took.
pub async fn open_timed(url: &str, ws_config: WebSocketConfig) -> anyhow::Result<(Ws, Duration)> {
    let (mut ws, connect_time) = upgrade(url, ws_config, Some(JSON_SUBPROTOCOL)).await?;
    let welcome = next_json(&mut ws).await.context("waiting for welcome")?;
    if welcome["type"] != "welcome" {
        bail!("first frame is not a welcome: {welcome}");
    }
    Ok((ws, connect_time))
}

/// Connects to `url` and upgrades, asking for `subprotocol` when given; returns the socket
/// and the time the TCP connect took. Nothing is read after the upgrade.
pub async fn upgrade(
    url: &str,
    ws_config: WebSocketConfig,
    subprotocol: Option<&'static str>,
) -> anyhow::Result<(Ws, Duration)> {
    let mut req = url.into_client_request().context("bad --ws URL")?;
    if let Some(p) = subprotocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
    }
    let uri = req.uri();
    if uri.scheme_str() != Some("ws") {
        bail!("only ws:// URLs are supported");
    }
    let host = uri.host().context("no host in --ws URL")?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let started = std::time::Instant::now();
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .context("connect")?;
    let connect_time = started.elapsed();
    tcp.set_nodelay(true)?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(ws_config))
        .await
        .context("websocket handshake")?;
    Ok((ws, connect_time))
}

/// Sends the `subscribe` command `cmd` (whose `id` is 1) and waits for its `subscribed`
/// reply, which it returns with the socket. Nothing of the channel arrives before the reply.
pub async fn subscribe(mut ws: Ws, cmd: Value) -> anyhow::Result<(Ws, Value)> {
    ws.send(Message::text(cmd.to_string()))
        .await
        .context("sending subscribe")?;
    loop {
        let v = next_json(&mut ws).await.context("waiting for subscribed")?;
        match v["type"].as_str() {
            Some("subscribed") if v["id"] == 1 => return Ok((ws, v)),
            Some("error") => bail!("subscribe refused: {v}"),
            Some("disconnect") => bail!("disconnected while subscribing: {v}"),
            _ => {}
        }
    }
}

/// The next text frame, parsed; pings and pongs are skipped.
pub async fn next_json(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        match ws.next().await.context("connection ended")?? {
            Message::Text(t) => return Ok(serde_json::from_str(&t)?),
            Message::Binary(_) => bail!("binary frame where JSON text was expected"),
            Message::Close(f) => bail!("closed: {f:?}"),
            _ => {}
        }
    }
}

/// Closes politely (a close frame, so the node counts a client close) without waiting more
/// than a second.
pub async fn close(ws: &mut Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
}

/// Sends a close frame and waits (at most a second) for the node to close too.
pub async fn close_and_wait(ws: &mut Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        if ws.close(None).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

/// What a `subscribed` reply on a channel with history says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    /// The channel's epoch.
    pub epoch: String,
    /// The newest offset when the subscription began.
    pub offset: u64,
    /// Whether the node recovered the missed messages (`false` when not asked).
    pub recovered: bool,
}

/// Reads a `subscribed` reply; fails when it lacks the fields of a channel with history.
pub fn parse_subscribed(v: &Value) -> anyhow::Result<Subscribed> {
    ensure!(v["type"] == "subscribed", "not a subscribed reply: {v}");
    let epoch = v["epoch"]
        .as_str()
        .with_context(|| format!("no epoch in {v} (does the channel's namespace keep history?)"))?;
    let offset = v["offset"]
        .as_u64()
        .with_context(|| format!("no offset in {v}"))?;
    let recovered = match &v["recovered"] {
        Value::Bool(b) => *b,
        Value::Null => false,
        other => bail!("recovered is not a boolean: {other}"),
    };
    Ok(Subscribed {
        epoch: epoch.to_owned(),
        offset,
        recovered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribed_replies() {
        let v = json!({"type":"subscribed","id":1,"channel":"hist:a","epoch":"f3a9","offset":43,"recovered":true});
        assert_eq!(
            parse_subscribed(&v).unwrap(),
            Subscribed {
                epoch: "f3a9".into(),
                offset: 43,
                recovered: true
            }
        );
        let fresh = json!({"type":"subscribed","id":1,"channel":"hist:a","epoch":"e","offset":0});
        assert!(!parse_subscribed(&fresh).unwrap().recovered);
        let plain = json!({"type":"subscribed","id":1,"channel":"plain:a"});
        assert!(
            parse_subscribed(&plain)
                .unwrap_err()
                .to_string()
                .contains("history")
        );
        assert!(parse_subscribed(&json!({"type":"error"})).is_err());
        let bad = json!({"type":"subscribed","epoch":"e","offset":1,"recovered":"yes"});
        assert!(parse_subscribed(&bad).is_err());
    }

    #[test]
    fn read_buffer_fits_a_frame() {
        assert_eq!(read_buffer_size(64), 4096);
        assert_eq!(read_buffer_size(5000), 8192);
        assert_eq!(read_buffer_size(1 << 20), 128 * 1024);
    }

    #[test]
    fn subscribe_commands() {
        assert_eq!(
            subscribe_command("c", None),
            json!({"type": "subscribe", "id": 1, "channel": "c"})
        );
        assert_eq!(
            subscribe_command("h:a", Some(("e", 7)))["recover"],
            json!({"epoch": "e", "offset": 7})
        );
    }
}
