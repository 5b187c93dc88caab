//! A WebSocket client (tokio-tungstenite) speaking either subprotocol.
//!
//! tungstenite answers server pings by itself while the client is reading, so a
//! `WsClient` is a well-behaved peer; use [`super::RawWs`] for a misbehaving one.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use serde_json::{Value, json};
use switchboard_proto::client::{
    ClientFrame, PingRequest, PublishRequest, ServerFrame, SubscribeRequest, UnsubscribeRequest,
    client_frame::Command, server_frame::Frame,
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::RECV_TIMEOUT;

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

/// An upgrade refused with an HTTP answer.
#[derive(Debug)]
pub struct Refusal {
    /// The status.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl Refusal {
    /// The first header of that (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How an upgrade attempt ended.
#[derive(Debug)]
pub enum Upgrade {
    /// 101 Switching Protocols; the selected subprotocol, if any.
    Accepted(Option<String>),
    /// Refused with this HTTP status (and body).
    Refused(u16, String),
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
        let (ws, protocol) = open(url, protocols, headers)
            .await
            .unwrap_or_else(|e| panic!("WebSocket connect to {url} failed: {e}"));
        let mut client = WsClient {
            ws,
            next_id: 1,
            pending_json: VecDeque::new(),
            pending_frames: VecDeque::new(),
            protocol,
            welcome: Value::Null,
            welcome_frame: None,
        };
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
        let (ws, protocol) = open(url, &[PROTO_PROTOCOL], &[])
            .await
            .unwrap_or_else(|e| panic!("WebSocket connect to {url} failed: {e}"));
        assert_eq!(
            protocol.as_deref(),
            Some(PROTO_PROTOCOL),
            "server must select the proto subprotocol"
        );
        let mut client = WsClient {
            ws,
            next_id: 1,
            pending_json: VecDeque::new(),
            pending_frames: VecDeque::new(),
            protocol,
            welcome: Value::Null,
            welcome_frame: None,
        };
        let welcome = client.recv_frame().await;
        assert!(
            matches!(welcome.frame, Some(Frame::Welcome(_))),
            "first frame must be the welcome, got {welcome:?}"
        );
        client.welcome_frame = Some(welcome);
        client
    }

    /// Attempts an upgrade and reports how it ended, without reading any frame.
    pub async fn try_upgrade(url: &str, protocols: &[&str], headers: &[(&str, &str)]) -> Upgrade {
        match open(url, protocols, headers).await {
            Ok((_ws, protocol)) => Upgrade::Accepted(protocol),
            Err(tungstenite::Error::Http(response)) => {
                let body = response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Upgrade::Refused(response.status().as_u16(), body)
            }
            Err(e) => panic!("upgrade at {url} failed below HTTP: {e}"),
        }
    }

    /// Attempts an upgrade; `None` when it was accepted (the connection is dropped),
    /// else the refusal with its headers.
    pub async fn refusal(
        url: &str,
        protocols: &[&str],
        headers: &[(&str, &str)],
    ) -> Option<Refusal> {
        match open(url, protocols, headers).await {
            Ok(_) => None,
            Err(tungstenite::Error::Http(response)) => Some(Refusal {
                status: response.status().as_u16(),
                headers: response
                    .headers()
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_ascii_lowercase(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
                body: response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default(),
            }),
            Err(e) => panic!("upgrade at {url} failed below HTTP: {e}"),
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

    // ---- sending ----

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

    // ---- receiving ----

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
    pub async fn recv_message(&mut self) -> Option<Message> {
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
    pub async fn take_frame(&mut self, mut pred: impl FnMut(&ServerFrame) -> bool) -> ServerFrame {
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

    /// Subscribes and waits for the `subscribed` reply; panics on anything else.
    pub async fn subscribe(&mut self, channel: &str) -> Value {
        let id = self.next_id();
        self.send_json(&json!({"type": "subscribe", "id": id, "channel": channel}))
            .await;
        let reply = self.recv_reply(id).await;
        assert_eq!(reply["type"], "subscribed", "subscribe {channel}: {reply}");
        assert_eq!(reply["channel"], channel, "subscribe {channel}: {reply}");
        reply
    }

    /// Unsubscribes and waits for the `unsubscribed` reply.
    pub async fn unsubscribe(&mut self, channel: &str) -> Value {
        let id = self.next_id();
        self.send_json(&json!({"type": "unsubscribe", "id": id, "channel": channel}))
            .await;
        let reply = self.recv_reply(id).await;
        assert_eq!(
            reply["type"], "unsubscribed",
            "unsubscribe {channel}: {reply}"
        );
        assert_eq!(reply["channel"], channel, "unsubscribe {channel}: {reply}");
        reply
    }

    /// Publishes and returns the reply (`published` or `error`), skipping pushes.
    pub async fn publish(&mut self, channel: &str, data: Value) -> Value {
        let id = self.next_id();
        self.send_json(&json!({"type": "publish", "id": id, "channel": channel, "data": data}))
            .await;
        self.recv_reply(id).await
    }

    /// Publishes and asserts the reply is `published`.
    pub async fn publish_ok(&mut self, channel: &str, data: Value) -> Value {
        let reply = self.publish(channel, data).await;
        assert_eq!(reply["type"], "published", "publish to {channel}: {reply}");
        reply
    }

    /// Sends `command` with a fresh `id` added, and returns the reply carrying that id
    /// (pushes before it are set aside).
    pub async fn request(&mut self, mut command: Value) -> Value {
        let id = self.next_id();
        command["id"] = json!(id);
        self.send_json(&command).await;
        self.recv_reply(id).await
    }

    /// Subscribes with `recover: {"epoch": epoch, "offset": offset}` and waits for the
    /// `subscribed` reply (panics on anything else). Recovered messages follow it.
    pub async fn subscribe_recover(&mut self, channel: &str, epoch: &str, offset: u64) -> Value {
        let reply = self
            .request(json!({
                "type": "subscribe",
                "channel": channel,
                "recover": {"epoch": epoch, "offset": offset},
            }))
            .await;
        assert_eq!(
            reply["type"],
            "subscribed",
            "{}: subscribe {channel} recovering from {epoch}/{offset}: {reply}",
            self.describe()
        );
        assert_eq!(reply["channel"], channel, "subscribe {channel}: {reply}");
        reply
    }

    /// The reply to `history` (a `history` frame or an `error`).
    pub async fn history(
        &mut self,
        channel: &str,
        limit: Option<u64>,
        since: Option<(&str, u64)>,
    ) -> Value {
        let mut command = json!({"type": "history", "channel": channel});
        if let Some(limit) = limit {
            command["limit"] = json!(limit);
        }
        if let Some((epoch, offset)) = since {
            command["since"] = json!({"epoch": epoch, "offset": offset});
        }
        self.request(command).await
    }

    /// The reply to `presence` (a `presence` frame or an `error`).
    pub async fn presence(&mut self, channel: &str) -> Value {
        self.request(json!({"type": "presence", "channel": channel}))
            .await
    }

    /// The next `n` `message` pushes of `channel`, in order; other frames are set aside.
    pub async fn recv_channel_messages(&mut self, channel: &str, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(
                self.take_json(|v| v["type"] == "message" && v["channel"] == channel)
                    .await,
            );
        }
        out
    }

    /// Sends a JSON text frame; false instead of a panic if the socket refuses it (the
    /// server may already have closed the connection).
    pub async fn try_send_json(&mut self, value: &Value) -> bool {
        matches!(
            tokio::time::timeout(RECV_TIMEOUT, self.ws.send(Message::text(value.to_string())))
                .await,
            Ok(Ok(()))
        )
    }

    /// Sends a ping and asserts the very next frame is its pong: proves nothing else was
    /// queued for this connection before it.
    pub async fn ping_pong(&mut self) {
        let id = self.next_id();
        self.send_json(&json!({"type": "ping", "id": id})).await;
        let reply = self.recv_json().await;
        assert_eq!(
            reply,
            json!({"type": "pong", "id": id}),
            "expected only the pong, got {reply}"
        );
    }

    /// Reads until a close frame and returns its code and reason, skipping other frames.
    /// Panics if the stream ends without one.
    pub async fn recv_close(&mut self) -> (u16, String) {
        self.recv_close_or_end()
            .await
            .expect("connection ended without a close frame")
    }

    /// Reads until a close frame (`Some(code, reason)`) or the end of the stream (`None`).
    pub async fn recv_close_or_end(&mut self) -> Option<(u16, String)> {
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

    /// Expects the JSON `disconnect` push with `code` (skipping `message` pushes before
    /// it), then a close frame with the same code. Returns the disconnect push.
    pub async fn expect_disconnect(&mut self, code: u16) -> Value {
        let (disconnect, skipped) = self.recv_until(|v| v["type"] != "message").await;
        let _ = skipped;
        assert_eq!(
            disconnect["type"], "disconnect",
            "expected a disconnect {code}, got {disconnect}"
        );
        assert_eq!(disconnect["code"], code, "disconnect frame: {disconnect}");
        let (close_code, _reason) = self.recv_close().await;
        assert_eq!(close_code, code, "close code after {disconnect}");
        disconnect
    }

    // ---- protobuf helpers ----

    /// Sends a proto command with a fresh id and returns the id.
    pub async fn send_command(&mut self, command: Command) -> u64 {
        let id = self.next_id();
        self.send_frame(&ClientFrame {
            id,
            command: Some(command),
        })
        .await;
        id
    }

    /// The proto reply with `id`; pushes before it are set aside.
    pub async fn recv_frame_reply(&mut self, id: u64) -> ServerFrame {
        self.take_frame(|f| f.id == id && !matches!(f.frame, Some(Frame::Message(_))))
            .await
    }

    /// The next proto `Message` push; other frames before it are set aside.
    pub async fn recv_frame_message(&mut self) -> switchboard_proto::client::Message {
        match self
            .take_frame(|f| matches!(f.frame, Some(Frame::Message(_))))
            .await
            .frame
        {
            Some(Frame::Message(m)) => m,
            _ => unreachable!("take_frame matched a Message"),
        }
    }

    /// Proto subscribe; asserts `Subscribed`.
    pub async fn proto_subscribe(&mut self, channel: &str) {
        let id = self
            .send_command(Command::Subscribe(SubscribeRequest {
                channel: channel.to_owned(),
                recover: None,
            }))
            .await;
        let reply = self.recv_frame_reply(id).await;
        match reply.frame {
            Some(Frame::Subscribed(s)) => assert_eq!(s.channel, channel),
            other => panic!("proto subscribe {channel}: got {other:?}"),
        }
    }

    /// Proto unsubscribe; asserts `Unsubscribed`.
    pub async fn proto_unsubscribe(&mut self, channel: &str) {
        let id = self
            .send_command(Command::Unsubscribe(UnsubscribeRequest {
                channel: channel.to_owned(),
            }))
            .await;
        let reply = self.recv_frame_reply(id).await;
        match reply.frame {
            Some(Frame::Unsubscribed(s)) => assert_eq!(s.channel, channel),
            other => panic!("proto unsubscribe {channel}: got {other:?}"),
        }
    }

    /// Proto publish; returns the reply frame.
    pub async fn proto_publish(&mut self, channel: &str, data: &[u8]) -> ServerFrame {
        let id = self
            .send_command(Command::Publish(PublishRequest {
                channel: channel.to_owned(),
                data: bytes::Bytes::copy_from_slice(data),
            }))
            .await;
        self.recv_frame_reply(id).await
    }

    /// Proto ping; asserts the very next frame is its `Pong`.
    pub async fn proto_ping_pong(&mut self) {
        let id = self.send_command(Command::Ping(PingRequest {})).await;
        let reply = self.recv_frame().await;
        assert_eq!(reply.id, id, "expected the pong, got {reply:?}");
        assert!(
            matches!(reply.frame, Some(Frame::Pong(_))),
            "expected the pong, got {reply:?}"
        );
    }

    /// Reads one `missed` push per channel (in any order: channels fan out
    /// independently) and asserts each names `reason`.
    pub async fn expect_missed(&mut self, channels: &[&str], reason: &str) {
        let mut want: Vec<String> = channels.iter().map(|c| (*c).to_owned()).collect();
        while !want.is_empty() {
            let m = self.recv_json().await;
            assert_eq!(
                (&m["type"], &m["reason"]),
                (&serde_json::json!("missed"), &serde_json::json!(reason)),
                "{}: expected a missed push for {want:?}: {m}",
                self.describe()
            );
            let channel = m["channel"].as_str().unwrap_or_default();
            let at = want
                .iter()
                .position(|c| c == channel)
                .unwrap_or_else(|| panic!("missed push for an unexpected channel: {m}"));
            want.remove(at);
        }
    }
}

/// Opens a WebSocket, offering `protocols`, with extra request headers.
async fn open(
    url: &str,
    protocols: &[&str],
    headers: &[(&str, &str)],
) -> Result<(Stream, Option<String>), tungstenite::Error> {
    let mut request = url.into_client_request()?;
    if !protocols.is_empty() {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(&protocols.join(", ")).expect("protocol header"),
        );
    }
    for (name, value) in headers {
        request.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    let (ws, response) =
        tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(request))
            .await
            .unwrap_or_else(|_| panic!("WebSocket handshake with {url} timed out"))?;
    let protocol = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((ws, protocol))
}
