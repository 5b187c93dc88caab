//! The JSON commands of `switchboard.v1.json`, each sent and its reply awaited.

use serde_json::{Value, json};

use super::WsClient;

impl WsClient {
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
