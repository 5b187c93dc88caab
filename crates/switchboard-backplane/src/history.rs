//! Types of history, presence and topics, shared by both backplanes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Envelope;

/// How a channel keeps its history (from its namespace).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Messages kept (the newest ones); at least 1.
    pub size: usize,
    /// How long the history lives after the channel's last publish.
    pub ttl: Duration,
}

/// A position in a channel's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// Changes whenever the channel's history is lost.
    pub epoch: String,
    /// The message's offset: 1 for the first message of an epoch.
    pub offset: u64,
}

/// Which retained messages a history read returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Since {
    /// None: only the position.
    Nothing,
    /// Every retained message.
    All,
    /// The retained messages with an offset above this one.
    After(u64),
}

/// A history read: the channel's position and the messages asked for.
#[derive(Clone, Debug, Default)]
pub struct HistoryPage {
    /// The channel's current epoch.
    pub epoch: String,
    /// The newest offset (0 when nothing was published in this epoch).
    pub offset: u64,
    /// The oldest retained offset (`offset + 1` when nothing is retained).
    pub first: u64,
    /// The messages asked for, oldest first, each with its offset and epoch.
    pub messages: Vec<Envelope>,
}

impl HistoryPage {
    /// The read of a channel that has no history (never published, expired,
    /// or lost): epoch `""`, offset 0.
    pub fn empty() -> Self {
        HistoryPage {
            epoch: String::new(),
            offset: 0,
            first: 1,
            messages: Vec::new(),
        }
    }

    /// Whether a client that has seen everything up to `(epoch, offset)` can
    /// be given every message after it from this page's history.
    ///
    /// `("", 0)` is the position of a client that subscribed while the channel
    /// had no history: every message since is still here if the history's
    /// first message is its epoch's first.
    pub fn can_recover(&self, epoch: &str, offset: u64) -> bool {
        if epoch.is_empty() {
            return offset == 0 && self.first <= 1;
        }
        epoch == self.epoch && offset.saturating_add(1) >= self.first && offset <= self.offset
    }
}

/// A connection present on a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceMember {
    /// Connection id.
    pub conn: String,
    /// User id ("" when anonymous: such a connection counts as a connection,
    /// never as a user).
    pub user: String,
    /// The node holding the connection.
    pub node: String,
    /// The member's user info, a JSON text ("" when it has none; then left
    /// out when serialized, so the native protocol's member objects stay
    /// `{"conn","user","node"}`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub info: String,
}

/// What a join changed, cluster-wide, decided atomically with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Joined {
    /// The channel had no live member before this one.
    pub channel_was_empty: bool,
    /// The member's user had no live connection in the channel before (always
    /// false for an anonymous member).
    pub user_was_absent: bool,
}

/// What a leave changed, cluster-wide, decided atomically with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Left {
    /// The user of the connection that left ("" when anonymous).
    pub user: String,
    /// The channel has no live member left.
    pub channel_now_empty: bool,
    /// The user has no live connection left in the channel (always false for
    /// an anonymous member).
    pub user_now_absent: bool,
}

/// A member removed without leaving: it expired (its node stopped refreshing
/// it) or belonged to a process that no longer holds its node id. Reported by
/// the one node whose purge removed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Departure {
    /// The channel it was removed from.
    pub channel: String,
    /// Its user ("" when anonymous).
    pub user: String,
    /// The channel has no live member left.
    pub channel_now_empty: bool,
    /// Its user has no live connection left in the channel (always false for
    /// an anonymous member).
    pub user_now_absent: bool,
}

/// What a node can be subscribed to in the backplane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic<'a> {
    /// A client channel.
    Channel(&'a str),
    /// Every connection of a user.
    User(&'a str),
}

/// A fresh random epoch: 8 hex digits.
pub(crate) fn new_epoch() -> String {
    format!("{:08x}", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_without_info_serializes_as_before() {
        let mut member = PresenceMember {
            conn: "c".into(),
            user: "u".into(),
            node: "n".into(),
            info: String::new(),
        };
        let json = serde_json::to_string(&member).unwrap();
        assert_eq!(json, r#"{"conn":"c","user":"u","node":"n"}"#);
        assert_eq!(
            serde_json::from_str::<PresenceMember>(&json).unwrap(),
            member
        );
        member.info = r#"{"a":1}"#.into();
        let json = serde_json::to_string(&member).unwrap();
        assert_eq!(
            serde_json::from_str::<PresenceMember>(&json).unwrap(),
            member
        );
    }

    #[test]
    fn recovery_needs_the_same_epoch_and_a_retained_offset() {
        let page = HistoryPage {
            epoch: "e".into(),
            offset: 10,
            first: 6,
            messages: vec![],
        };
        assert!(page.can_recover("e", 10), "nothing missed");
        assert!(page.can_recover("e", 5), "6..=10 retained");
        assert!(!page.can_recover("e", 4), "5 fell out");
        assert!(!page.can_recover("e", 11), "from the future");
        assert!(!page.can_recover("x", 10), "another epoch");
        let empty = HistoryPage {
            epoch: "e".into(),
            offset: 0,
            first: 1,
            messages: vec![],
        };
        assert!(empty.can_recover("e", 0));
        assert!(
            HistoryPage::empty().can_recover("", 0),
            "nothing, then nothing"
        );
        assert!(page.can_recover("", 0) == (page.first <= 1));
        let whole = HistoryPage {
            epoch: "e".into(),
            offset: 3,
            first: 1,
            messages: vec![],
        };
        assert!(
            whole.can_recover("", 0),
            "saw no history; all of it is still here"
        );
        assert!(
            !whole.can_recover("", 2),
            "an offset without an epoch is no position"
        );
    }
}
