//! The protobuf commands of `switchboard.v1.proto`, each sent and its reply awaited.

use switchboard_proto::client::{
    ClientFrame, PingRequest, PublishRequest, ServerFrame, SubscribeRequest, UnsubscribeRequest,
    client_frame::Command, server_frame::Frame,
};

use super::WsClient;

impl WsClient {
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
    async fn recv_frame_reply(&mut self, id: u64) -> ServerFrame {
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
}
