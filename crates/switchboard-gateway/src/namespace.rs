//! Namespaces: per-channel-family settings (history, presence, client publish).

use std::collections::HashMap;
use std::time::Duration;

use crate::policy::channel;

/// What a namespace allows and keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// Messages kept per channel; 0 means no history.
    pub history_size: usize,
    /// How long a channel's history lives after its last publish.
    pub history_ttl: Duration,
    /// Whether presence queries are answered.
    pub presence: bool,
    /// Whether join/leave events are pushed to subscribers.
    pub join_leave: bool,
    /// Whether clients may publish (the server API always may).
    pub client_publish: bool,
}

impl Default for Namespace {
    /// The settings of channels in no configured namespace.
    fn default() -> Self {
        Namespace {
            history_size: 0,
            history_ttl: Duration::from_secs(300),
            presence: false,
            join_leave: false,
            client_publish: true,
        }
    }
}

impl Namespace {
    /// Whether channels of this namespace keep history.
    pub fn has_history(&self) -> bool {
        self.history_size > 0
    }
}

/// Every configured namespace, and the defaults for the rest.
#[derive(Clone, Debug, Default)]
pub struct Namespaces {
    by_name: HashMap<String, Namespace>,
    default: Namespace,
}

impl Namespaces {
    /// Namespaces by name; channels in none of them get [`Namespace::default`].
    pub fn new(by_name: HashMap<String, Namespace>) -> Self {
        Namespaces {
            by_name,
            default: Namespace::default(),
        }
    }

    /// The settings that apply to a channel.
    pub fn of(&self, channel_name: &str) -> &Namespace {
        self.by_name
            .get(channel::namespace(channel_name))
            .unwrap_or(&self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_take_their_namespace_or_the_defaults() {
        let chat = Namespace {
            history_size: 10,
            presence: true,
            ..Namespace::default()
        };
        let ns = Namespaces::new(HashMap::from([("chat".to_owned(), chat.clone())]));
        assert_eq!(ns.of("chat:lobby"), &chat);
        assert_eq!(
            ns.of("chat"),
            &Namespace::default(),
            "no colon: no namespace"
        );
        assert_eq!(ns.of("news:x"), &Namespace::default());
    }
}
