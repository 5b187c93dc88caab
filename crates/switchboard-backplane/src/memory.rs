//! The in-process backplane: one node, no network; history and presence in memory.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::time::Instant;

use crate::departures::Departures;
use crate::envelope::now_ms;
use crate::history::new_epoch;
use crate::{
    BackplaneError, Departure, Envelope, HistoryPage, HistoryPolicy, Inbox, Joined, Left, NodeInfo,
    Position, PresenceMember, Since, StatsSource,
};

/// Publishes between sweeps of expired histories.
const SWEEP_EVERY: u64 = 1024;

/// Delivers every publish straight into this node's own inbox.
pub struct MemoryBackplane {
    node_id: String,
    started_at: u64,
    inbox: Inbox,
    stats: StatsSource,
    /// Held across the delivery into the inbox, so that offset order is
    /// delivery order (the same guarantee the Redis script gives).
    histories: tokio::sync::Mutex<Histories>,
    presence: Mutex<HashMap<String, ChannelPresence>>,
    /// Never sent to (nothing expires in one process); its receiver never yields.
    departures: Departures,
}

/// One channel's members, and how many connections each user has among them.
#[derive(Default)]
struct ChannelPresence {
    members: HashMap<String, PresenceMember>,
    /// user -> connections (anonymous members are not counted).
    users: HashMap<String, usize>,
}

impl ChannelPresence {
    fn insert(&mut self, member: &PresenceMember) {
        if let Some(old) = self.members.insert(member.conn.clone(), member.clone()) {
            self.forget_user(&old.user);
        }
        if !member.user.is_empty() {
            *self.users.entry(member.user.clone()).or_default() += 1;
        }
    }

    fn remove(&mut self, conn: &str) -> Option<PresenceMember> {
        let member = self.members.remove(conn)?;
        self.forget_user(&member.user);
        Some(member)
    }

    fn forget_user(&mut self, user: &str) {
        if let Some(n) = self.users.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                self.users.remove(user);
            }
        }
    }
}

#[derive(Default)]
struct Histories {
    channels: HashMap<String, ChannelHistory>,
    publishes: u64,
}

struct ChannelHistory {
    epoch: String,
    offset: u64,
    messages: VecDeque<Envelope>,
    expires_at: Instant,
}

impl ChannelHistory {
    fn new(policy: HistoryPolicy) -> Self {
        ChannelHistory {
            epoch: new_epoch(),
            offset: 0,
            messages: VecDeque::new(),
            expires_at: Instant::now() + policy.ttl,
        }
    }
}

impl Histories {
    /// The channel's live history, created (with a new epoch) when missing or expired.
    fn live(&mut self, channel: &str, policy: HistoryPolicy) -> &mut ChannelHistory {
        let now = Instant::now();
        let history = self
            .channels
            .entry(channel.to_owned())
            .or_insert_with(|| ChannelHistory::new(policy));
        if history.expires_at <= now {
            *history = ChannelHistory::new(policy);
        }
        history
    }
}

impl MemoryBackplane {
    /// A backplane for a node that runs alone.
    pub fn new(node_id: String, inbox: Inbox, stats: StatsSource) -> Self {
        metrics::gauge!("switchboard_backplane_up").set(1.0);
        MemoryBackplane {
            node_id,
            started_at: now_ms(),
            inbox,
            stats,
            histories: tokio::sync::Mutex::new(Histories::default()),
            presence: Mutex::new(HashMap::new()),
            departures: Departures::new(1),
        }
    }

    pub(crate) async fn publish(
        &self,
        envelope: &Envelope,
        history: Option<HistoryPolicy>,
    ) -> Result<Option<Position>, BackplaneError> {
        let (Some(policy), Some(channel)) = (history, envelope.channel()) else {
            self.inbox.deliver(envelope.clone()).await?;
            self.count();
            return Ok(None);
        };
        let mut histories = self.histories.lock().await;
        histories.publishes += 1;
        if histories.publishes % SWEEP_EVERY == 0 {
            let now = Instant::now();
            histories.channels.retain(|_, h| h.expires_at > now);
        }
        let history = histories.live(channel, policy);
        history.offset += 1;
        let mut stored = envelope.clone();
        stored.offset = history.offset;
        stored.epoch = history.epoch.clone();
        history.messages.push_back(stored.clone());
        while history.messages.len() > policy.size.max(1) {
            history.messages.pop_front();
        }
        history.expires_at = Instant::now() + policy.ttl;
        let position = Position {
            epoch: history.epoch.clone(),
            offset: history.offset,
        };
        self.inbox.deliver(stored).await?;
        self.count();
        Ok(Some(position))
    }

    fn count(&self) {
        metrics::counter!("switchboard_backplane_published_total").increment(1);
        metrics::counter!("switchboard_backplane_received_total").increment(1);
    }

    pub(crate) async fn history(&self, channel: &str, since: Since, limit: usize) -> HistoryPage {
        let histories = self.histories.lock().await;
        let Some(history) = histories
            .channels
            .get(channel)
            .filter(|h| h.expires_at > Instant::now())
        else {
            return HistoryPage::empty();
        };
        let first = history.offset + 1 - history.messages.len() as u64;
        let messages = match since {
            Since::Nothing => Vec::new(),
            Since::All => history.messages.iter().take(limit).cloned().collect(),
            Since::After(after) => history
                .messages
                .iter()
                .filter(|m| m.offset > after)
                .take(limit)
                .cloned()
                .collect(),
        };
        HistoryPage {
            epoch: history.epoch.clone(),
            offset: history.offset,
            first,
            messages,
        }
    }

    pub(crate) fn presence_join(&self, channel: &str, member: &PresenceMember) -> Joined {
        let mut presence = crate::lock(&self.presence);
        let members = presence.entry(channel.to_owned()).or_default();
        let joined = Joined {
            channel_was_empty: members.members.is_empty(),
            user_was_absent: !member.user.is_empty() && !members.users.contains_key(&member.user),
        };
        members.insert(member);
        joined
    }

    pub(crate) fn presence_leave(&self, channel: &str, conn: &str) -> Option<Left> {
        let mut presence = crate::lock(&self.presence);
        let members = presence.get_mut(channel)?;
        let member = members.remove(conn)?;
        let left = Left {
            channel_now_empty: members.members.is_empty(),
            user_now_absent: !member.user.is_empty() && !members.users.contains_key(&member.user),
            user: member.user,
        };
        if left.channel_now_empty {
            presence.remove(channel);
        }
        Some(left)
    }

    pub(crate) fn presence(&self, channel: &str) -> Vec<PresenceMember> {
        let mut members: Vec<PresenceMember> = crate::lock(&self.presence)
            .get(channel)
            .map(|m| m.members.values().cloned().collect())
            .unwrap_or_default();
        members.sort_by(|a, b| a.conn.cmp(&b.conn));
        members
    }

    pub(crate) fn presence_counts(&self, channel: &str) -> (u64, u64) {
        crate::lock(&self.presence)
            .get(channel)
            .map(|m| (m.members.len() as u64, m.users.len() as u64))
            .unwrap_or_default()
    }

    pub(crate) fn presence_channels(&self, prefix: &str) -> Vec<(String, u64, u64)> {
        let mut channels: Vec<(String, u64, u64)> = crate::lock(&self.presence)
            .iter()
            .filter(|(channel, m)| channel.starts_with(prefix) && !m.members.is_empty())
            .map(|(channel, m)| {
                (
                    channel.clone(),
                    m.members.len() as u64,
                    m.users.len() as u64,
                )
            })
            .collect();
        channels.sort();
        channels
    }

    pub(crate) fn take_departures(&self) -> Option<tokio::sync::mpsc::Receiver<Departure>> {
        self.departures.take()
    }

    pub(crate) fn node_info(&self) -> NodeInfo {
        let stats = (self.stats)();
        NodeInfo {
            id: self.node_id.clone(),
            connections: stats.connections,
            subscriptions: stats.subscriptions,
            started_at: self.started_at,
            last_seen: now_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::envelope::{PayloadEncoding, for_channel};

    const POLICY: HistoryPolicy = HistoryPolicy {
        size: 2,
        ttl: Duration::from_secs(10),
    };

    fn backplane() -> (MemoryBackplane, Vec<crate::InboxLane>) {
        let (inbox, lanes) = Inbox::new(1, 64);
        (
            MemoryBackplane::new("n".into(), inbox, Arc::new(Default::default)),
            lanes,
        )
    }

    fn message() -> Envelope {
        for_channel("n", "c", Bytes::from_static(b"1"), PayloadEncoding::Json)
    }

    #[tokio::test(start_paused = true)]
    async fn offsets_follow_publishes_and_history_expires_into_a_new_epoch() {
        let (b, mut lanes) = backplane();
        let first = b.publish(&message(), Some(POLICY)).await.unwrap().unwrap();
        let second = b.publish(&message(), Some(POLICY)).await.unwrap().unwrap();
        let third = b.publish(&message(), Some(POLICY)).await.unwrap().unwrap();
        assert_eq!((first.offset, second.offset, third.offset), (1, 2, 3));
        let crate::Inbound::Envelope(delivered) = lanes[0].recv().await.unwrap() else {
            panic!("an envelope first");
        };
        assert_eq!(delivered.offset, 1, "delivered in offset order");
        let page = b.history("c", Since::All, 10).await;
        assert_eq!((page.offset, page.first, page.messages.len()), (3, 2, 2));
        assert!(page.can_recover(&first.epoch, 1) && !page.can_recover(&first.epoch, 0));

        tokio::time::advance(Duration::from_secs(11)).await;
        let page = b.history("c", Since::All, 10).await;
        assert_eq!(page.epoch, "", "expired history reads as none");
        assert_eq!((page.offset, page.messages.len()), (0, 0));
        let fourth = b.publish(&message(), Some(POLICY)).await.unwrap().unwrap();
        assert_ne!(fourth.epoch, first.epoch, "expired history: new epoch");
        assert_eq!(fourth.offset, 1);
        let page = b.history("c", Since::After(0), 1).await;
        assert_eq!(page.messages.len(), 1, "a page holds at most its limit");
    }

    fn member(conn: &str, user: &str) -> PresenceMember {
        PresenceMember {
            conn: conn.into(),
            user: user.into(),
            node: "n".into(),
            info: String::new(),
        }
    }

    #[tokio::test]
    async fn presence_lists_members_until_they_leave() {
        let (b, _lanes) = backplane();
        b.presence_join("c", &member("c_2", "u"));
        b.presence_join("c", &member("c_1", "u"));
        assert_eq!(b.presence("c"), [member("c_1", "u"), member("c_2", "u")]);
        b.presence_leave("c", "c_1");
        b.presence_leave("c", "c_2");
        assert!(b.presence("c").is_empty());
    }

    #[tokio::test]
    async fn joins_and_leaves_say_what_they_changed() {
        let (b, _lanes) = backplane();
        let joined = |channel_was_empty, user_was_absent| Joined {
            channel_was_empty,
            user_was_absent,
        };
        let left = |user: &str, channel_now_empty, user_now_absent| {
            Some(Left {
                user: user.into(),
                channel_now_empty,
                user_now_absent,
            })
        };
        assert_eq!(
            b.presence_join("c", &member("c_1", "u")),
            joined(true, true)
        );
        assert_eq!(
            b.presence_join("c", &member("c_2", "u")),
            joined(false, false)
        );
        assert_eq!(
            b.presence_join("c", &member("c_3", "v")),
            joined(false, true)
        );
        assert_eq!(
            b.presence_join("c", &member("c_4", "")),
            joined(false, false)
        );
        assert_eq!(
            b.presence_join("c", &member("c_2", "u")),
            joined(false, false),
            "again"
        );
        assert_eq!(
            b.presence_counts("c"),
            (4, 2),
            "anonymous: a connection, no user"
        );

        assert_eq!(b.presence_leave("c", "c_1"), left("u", false, false));
        assert_eq!(b.presence_leave("c", "c_1"), None, "not a member any more");
        assert_eq!(b.presence_leave("c", "c_2"), left("u", false, true));
        assert_eq!(b.presence_leave("c", "c_4"), left("", false, false));
        assert_eq!(b.presence_leave("c", "c_3"), left("v", true, true));
        assert_eq!(b.presence_counts("c"), (0, 0));
        assert_eq!(b.presence_leave("nowhere", "c_1"), None);
    }

    #[tokio::test]
    async fn channels_are_listed_by_prefix_with_their_counts() {
        let (b, _lanes) = backplane();
        b.presence_join("app:presence-a", &member("c_1", "u"));
        b.presence_join("app:presence-a", &member("c_2", "u"));
        b.presence_join("app:b", &member("c_3", ""));
        b.presence_join("other:c", &member("c_4", "w"));
        b.presence_join("app:gone", &member("c_5", "w"));
        b.presence_leave("app:gone", "c_5");
        assert_eq!(
            b.presence_channels("app:"),
            [
                ("app:b".to_owned(), 1, 0),
                ("app:presence-a".to_owned(), 2, 1)
            ]
        );
        assert_eq!(b.presence_channels("").len(), 3);
        assert!(b.presence_channels("none").is_empty());
    }

    #[tokio::test]
    async fn nothing_departs_in_one_process() {
        let (b, _lanes) = backplane();
        let mut departures = b.take_departures().expect("taken once");
        assert!(b.take_departures().is_none());
        b.presence_join("c", &member("c_1", "u"));
        b.presence_leave("c", "c_1");
        assert!(departures.try_recv().is_err(), "open, and empty");
    }
}
