//! Names of Switchboard's Redis keys and pub/sub channels.

/// Every Redis name a node uses, derived from one prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
    all: String,
    nodes: String,
}

impl Keys {
    /// Names under `prefix` (e.g. `switchboard`).
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
            all: format!("{prefix}:all"),
            nodes: format!("{prefix}:nodes"),
        }
    }

    /// The pub/sub channel of a client channel: `PREFIX:ch:{CHANNEL}`.
    ///
    /// The braces make the channel a Redis Cluster hash tag (client channel
    /// names cannot contain braces), so its other keys can share its slot.
    pub fn channel(&self, channel: &str) -> String {
        format!("{}:ch:{{{channel}}}", self.prefix)
    }

    /// The pub/sub channel of every connection of a user, on any node.
    pub fn user(&self, user: &str) -> String {
        format!("{}:user:{{{user}}}", self.prefix)
    }

    /// A channel's history list (same hash tag as its pub/sub channel).
    pub fn history(&self, channel: &str) -> String {
        format!("{}:hist:{{{channel}}}", self.prefix)
    }

    /// A channel's history position: a hash with `epoch` and `offset`.
    pub fn meta(&self, channel: &str) -> String {
        format!("{}:meta:{{{channel}}}", self.prefix)
    }

    /// A channel's presence: a sorted set of member entries (JSON with the
    /// owner's node id and incarnation) scored by their expiry time in
    /// milliseconds of the Redis clock (same hash tag as its pub/sub channel).
    ///
    /// Versions before per-entry expiry kept a hash under `PREFIX:presence:{C}`;
    /// the new name keeps a rolling upgrade free of `WRONGTYPE` errors.
    pub fn presence(&self, channel: &str) -> String {
        format!("{}:members:{{{channel}}}", self.prefix)
    }

    /// The index of channels with presence: a sorted set of channel names
    /// (not keys), each scored by the latest expiry written to its presence
    /// set, in milliseconds of the Redis clock. A hint, not a truth: a channel
    /// is listed while some node may hold members of it, and a channel whose
    /// score has passed is one whose members no node refreshes any more.
    ///
    /// Its own key (no hash tag): the one name not tied to a channel's slot.
    pub fn presence_index(&self) -> String {
        format!("{}:presence-index", self.prefix)
    }

    /// The pub/sub channel that reaches one node.
    pub fn node(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    /// The pub/sub channel every node listens to.
    pub fn all(&self) -> &str {
        &self.all
    }

    /// The sorted set of live nodes (score: last heartbeat in ms).
    pub fn nodes(&self) -> &str {
        &self.nodes
    }

    /// The key holding one node's registry entry (JSON, with a TTL).
    pub fn node_info(&self, node: &str) -> String {
        format!("{}:nodeinfo:{node}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_carry_a_hash_tag() {
        let k = Keys::new("sb");
        assert_eq!(k.channel("chat:lobby"), "sb:ch:{chat:lobby}");
        assert_eq!(k.all(), "sb:all");
        assert_eq!(k.node("a"), "sb:node:a");
        assert_eq!(k.node_info("a"), "sb:nodeinfo:a");
        assert_eq!(k.history("c"), "sb:hist:{c}");
        assert_eq!(k.meta("c"), "sb:meta:{c}");
        assert_eq!(k.user("u"), "sb:user:{u}");
        assert_eq!(k.presence("c"), "sb:members:{c}");
        assert_eq!(k.presence_index(), "sb:presence-index");
    }
}
