//! A WebSocket client (tokio-tungstenite) speaking either subprotocol: connecting,
//! sending and receiving here; the JSON commands in `ws/commands.rs`, the protobuf
//! ones in `ws/proto.rs`, upgrades that may be refused in `ws/upgrade.rs`.
//!
//! tungstenite answers server pings by itself while the client is reading, so a
//! `WsClient` is a well-behaved peer; use [`RawWs`](crate::RawWs) for a misbehaving one.

mod commands;
mod proto;
mod upgrade;

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use serde_json::Value;
use switchboard_proto::client::{ClientFrame, ServerFrame, server_frame::Frame};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use self::upgrade::open;
pub use self::upgrade::{Refusal, Upgrade};
use crate::RECV_TIMEOUT;

/// The JSON subprotocol.
pub const JSON_PROTOCOL: &str = "switchboard.v1.json";
/// The protobuf subprotocol.
pub const PROTO_PROTOCOL: &str = "switchboard.v1.proto";

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A connected client whose welcome has been read.
pub struct WsClient {
    ws: Stream,
    next_id: u64,
    // Frames read past while looking for a particular one (a reply, a push), kept in
    // arrival order and handed out before anything newer.
    pending_json: VecDeque<Value>,
    pending_frames: VecDeque<ServerFrame>,
    /// The subprotocol the server selected (`Sec-WebSocket-Protocol` of the 101).
    pub protocol: Option<String>,
    /// The welcome, for JSON clients.
    pub welcome: Value,
    /// The welcome, for proto clients.
    pub welcome_frame: Option<ServerFrame>,
}

impl WsClient {
    /// Connects offering `switchboard.v1.json`, reads and checks the welcome.
    pub async fn connect_json(url: &str) -> WsClient {
        WsClient::connect_json_with(url, &[JSON_PROTOCOL], &[]).await
    }

    /// Connects offering `protocols` (may be empty) with extra headers, expecting JSON
    /// framing; reads the welcome.
    pub async fn connect_json_with(
        url: &str,
        protocols: &[&str],
        headers: &[(&str, &str)],
    ) -> WsClient {
        let mut client = WsClient::open(url, protocols, headers).await;
        let welcome = client.recv_json().await;
        assert_eq!(
            welcome["type"], "welcome",
            "first frame must be the welcome, got {welcome}"
        );
        client.welcome = welcome;
        client
    }

    /// Connects with `?token=TOKEN` (the browser way of passing a JWT), JSON framing;
    /// reads the welcome.
    pub async fn connect_with_token(url: &str, token: &str) -> WsClient {
        WsClient::connect_json(&format!("{url}?token={token}")).await
    }

    /// Connects with `Authorization: Bearer TOKEN`, JSON framing; reads the welcome.
    pub async fn connect_with_bearer(url: &str, token: &str) -> WsClient {
        let auth = format!("Bearer {token}");
        WsClient::connect_json_with(url, &[JSON_PROTOCOL], &[("Authorization", &auth)]).await
    }

    /// Connects offering `switchboard.v1.proto`, reads and checks the welcome.
    pub async fn connect_proto(url: &str) -> WsClient {
        let mut client = WsClient::open(url, &[PROTO_PROTOCOL], &[]).await;
        assert_eq!(
            client.protocol.as_deref(),
            Some(PROTO_PROTOCOL),
            "server must select the proto subprotocol"
        );
        let welcome = client.recv_frame().await;
        assert!(
            matches!(welcome.frame, Some(Frame::Welcome(_))),
            "first frame must be the welcome, got {welcome:?}"
        );
        client.welcome_frame = Some(welcome);
        client
    }

    /// Connects offering no subprotocol and reads nothing (the Pusher
    /// endpoint, whose first frame is its own); panics unless the upgrade succeeds.
    pub async fn connect_plain(url: &str) -> WsClient {
        WsClient::open(url, &[], &[]).await
    }

    /// Opens the connection (panics unless the upgrade succeeds); nothing read yet.
    async fn open(url: &str, protocols: &[&str], headers: &[(&str, &str)]) -> WsClient {
        let (ws, protocol) = open(url, protocols, headers)
            .await
            .unwrap_or_else(|e| panic!("WebSocket connect to {url} failed: {e}"));
        WsClient {
            ws,
            next_id: 1,
            pending_json: VecDeque::new(),
            pending_frames: VecDeque::new(),
            protocol,
            welcome: Value::Null,
            welcome_frame: None,
        }
    }

    /// The next id for a command.
    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// "client c_... on node-x" (from the welcome), for failure messages.
    pub fn describe(&self) -> String {
        match &self.welcome_frame {
            Some(ServerFrame {
                frame: Some(Frame::Welcome(w)),
                ..
            }) => format!("proto client {} on {}", w.conn, w.node),
            _ => format!(
                "client {} on {}",
                self.welcome["conn"].as_str().unwrap_or("(before welcome)"),
                self.welcome["node"].as_str().unwrap_or("?")
            ),
        }
    }

    /// The `conn` of the JSON welcome.
    pub fn conn_id(&self) -> String {
        self.welcome["conn"].as_str().unwrap_or_default().to_owned()
    }

    /// Sends a JSON value as a text frame.
    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.send(Message::text(text)).await;
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.send(Message::binary(bytes)).await;
    }

    /// Sends a protobuf `ClientFrame` as a binary frame.
    pub async fn send_frame(&mut self, frame: &ClientFrame) {
        self.send_binary(frame.encode_to_vec()).await;
    }

    /// Sends any message (panics if the socket refuses it).
    pub async fn send(&mut self, message: Message) {
        tokio::time::timeout(RECV_TIMEOUT, self.ws.send(message))
            .await
            .expect("send timed out")
            .expect("send failed");
    }

    /// Sends a close frame with `code`.
    pub async fn close(&mut self, code: u16) {
        let frame = tungstenite::protocol::CloseFrame {
            code: code.into(),
            reason: "".into(),
        };
        let _ = self.ws.send(Message::Close(Some(frame))).await;
    }

    /// The next text/binary/close message (pings and pongs are skipped), or `None` when
    /// the stream ended. Panics after `timeout`.
    pub async fn recv_message_within(&mut self, timeout: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{}: no frame from the server within {timeout:?}",
                        self.describe()
                    )
                });
            match next {
                None => return None,
                Some(Err(e)) => panic!("{}: WebSocket read error: {e}", self.describe()),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(m)) => return Some(m),
            }
        }
    }

    /// Keeps reading for `duration` (so tungstenite answers the server's pings), and
    /// panics if anything but a ping arrives or the connection ends. Returns how many
    /// pings were seen.
    pub async fn idle_for(&mut self, duration: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + duration;
        let mut pings = 0;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return pings,
                Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
                Ok(other) => panic!("while idle, expected only pings, got {other:?}"),
            }
        }
    }

    /// The next text/binary/close message within [`RECV_TIMEOUT`].
    async fn recv_message(&mut self) -> Option<Message> {
        self.recv_message_within(RECV_TIMEOUT).await
    }

    /// The next frame as JSON (frames set aside by [`WsClient::take_json`] first);
    /// panics on timeout, binary, close or end of stream.
    pub async fn recv_json(&mut self) -> Value {
        if let Some(v) = self.pending_json.pop_front() {
            return v;
        }
        self.read_json().await
    }

    /// The next text frame exactly as sent (nothing may be set aside).
    pub async fn recv_text(&mut self) -> String {
        assert!(
            self.pending_json.is_empty(),
            "recv_text with frames set aside: {:?}",
            self.pending_json
        );
        match self.recv_message().await {
            Some(Message::Text(text)) => text.to_string(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    async fn read_json(&mut self) -> Value {
        match self.recv_message().await {
            Some(Message::Text(text)) => serde_json::from_str(text.as_str())
                .unwrap_or_else(|e| panic!("server sent invalid JSON ({e}): {text}")),
            other => panic!("expected a JSON text frame, got {other:?}"),
        }
    }

    /// The next frame as a protobuf `ServerFrame` (frames set aside first); panics
    /// otherwise.
    pub async fn recv_frame(&mut self) -> ServerFrame {
        if let Some(f) = self.pending_frames.pop_front() {
            return f;
        }
        self.read_frame().await
    }

    async fn read_frame(&mut self) -> ServerFrame {
        match self.recv_message().await {
            Some(Message::Binary(bytes)) => ServerFrame::decode(bytes)
                .unwrap_or_else(|e| panic!("server sent an undecodable ServerFrame: {e}")),
            other => panic!("expected a binary ServerFrame, got {other:?}"),
        }
    }

    /// The next JSON frame, asserting its `type`.
    pub async fn expect_type(&mut self, ty: &str) -> Value {
        let value = self.recv_json().await;
        assert_eq!(value["type"], ty, "expected a `{ty}` frame, got {value}");
        value
    }

    /// The first JSON frame satisfying `pred`; frames before it that do not match are
    /// set aside for later `recv_*` calls, in order.
    pub async fn take_json(&mut self, mut pred: impl FnMut(&Value) -> bool) -> Value {
        if let Some(pos) = self.pending_json.iter().position(&mut pred) {
            return self.pending_json.remove(pos).expect("position is in range");
        }
        loop {
            let v = self.read_json().await;
            if pred(&v) {
                return v;
            }
            self.pending_json.push_back(v);
        }
    }

    /// The first proto frame satisfying `pred`; others are set aside, in order.
    async fn take_frame(&mut self, mut pred: impl FnMut(&ServerFrame) -> bool) -> ServerFrame {
        if let Some(pos) = self.pending_frames.iter().position(&mut pred) {
            return self
                .pending_frames
                .remove(pos)
                .expect("position is in range");
        }
        loop {
            let f = self.read_frame().await;
            if pred(&f) {
                return f;
            }
            self.pending_frames.push_back(f);
        }
    }

    /// Reads JSON frames until one satisfies `pred` and returns it; frames before it are
    /// consumed and returned, in order, as the second element.
    pub async fn recv_until(
        &mut self,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> (Value, Vec<Value>) {
        let mut skipped = Vec::new();
        loop {
            let v = self.recv_json().await;
            if pred(&v) {
                return (v, skipped);
            }
            skipped.push(v);
        }
    }

    /// The reply carrying `id`; pushes before it are set aside.
    pub async fn recv_reply(&mut self, id: u64) -> Value {
        self.take_json(|v| v["id"] == id && v["type"] != "message")
            .await
    }

    /// The next `message` push; other frames before it are set aside.
    pub async fn recv_message_push(&mut self) -> Value {
        self.take_json(|v| v["type"] == "message").await
    }

    /// Reads until a close frame and returns its code and reason, skipping other frames.
    /// Panics if the stream ends without one.
    pub async fn recv_close(&mut self) -> (u16, String) {
        self.recv_close_or_end()
            .await
            .expect("connection ended without a close frame")
    }

    /// Reads until a close frame (`Some(code, reason)`) or the end of the stream (`None`).
    async fn recv_close_or_end(&mut self) -> Option<(u16, String)> {
        loop {
            match self.recv_message().await {
                None => return None,
                Some(Message::Close(frame)) => {
                    return Some(
                        frame
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new())),
                    );
                }
                Some(_) => continue,
            }
        }
    }
}
